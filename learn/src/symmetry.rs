//! The eight symmetries of a square grid (flips and a transposition) on row-major images:
//! a network predicts an image in several orientations and the maps, turned back, are
//! averaged (test-time augmentation), since it saw every orientation in training.

/// One symmetry: flipped left-right and/or top-bottom, then transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symmetry {
    pub flip_x: bool,
    pub flip_y: bool,
    pub transpose: bool,
}

impl Symmetry {
    /// The first `n` (at most 8) symmetries, the identity first: 2 adds the left-right
    /// mirror, 4 the two flips, 8 the transposed four.
    pub fn first(n: usize) -> impl Iterator<Item = Symmetry> {
        (0..n.min(8)).map(|k| Symmetry {
            flip_x: k & 1 == 1,
            flip_y: k & 2 == 2,
            transpose: k & 4 == 4,
        })
    }

    /// The image (`w` x `h`) under this symmetry: (pixels, width, height).
    pub fn apply(&self, v: &[f32], w: usize, h: usize) -> (Vec<f32>, usize, usize) {
        let flipped = self.flip(v, w, h);
        if self.transpose {
            (transposed(&flipped, w, h), h, w)
        } else {
            (flipped, w, h)
        }
    }

    /// The inverse of [`Self::apply`]: `v` is an image that `apply` made from a `w` x `h` one.
    pub fn undo(&self, v: &[f32], w: usize, h: usize) -> Vec<f32> {
        if self.transpose {
            self.flip(&transposed(v, h, w), w, h)
        } else {
            self.flip(v, w, h)
        }
    }

    /// The flips alone (each its own inverse).
    fn flip(&self, v: &[f32], w: usize, h: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(w * h);
        for y in 0..h {
            let row = &v[if self.flip_y { h - 1 - y } else { y } * w..][..w];
            if self.flip_x {
                out.extend(row.iter().rev());
            } else {
                out.extend_from_slice(row);
            }
        }
        out
    }
}

/// A `w` x `h` image transposed (to `h` x `w`).
fn transposed(v: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            out[x * h + y] = v[y * w + x];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_symmetry_is_undone_and_all_eight_differ() {
        let (w, h) = (3, 2);
        let image: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut seen = Vec::new();
        for s in Symmetry::first(8) {
            let (turned, tw, th) = s.apply(&image, w, h);
            assert_eq!(tw * th, w * h);
            assert_eq!((tw, th), if s.transpose { (h, w) } else { (w, h) });
            assert_eq!(s.undo(&turned, w, h), image, "{s:?}");
            seen.push(turned);
        }
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        seen.dedup();
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn flips_and_transposition_move_pixels_where_expected() {
        // 0 1 2
        // 3 4 5
        let image: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let s = |flip_x, flip_y, transpose| Symmetry {
            flip_x,
            flip_y,
            transpose,
        };
        assert_eq!(
            s(true, false, false).apply(&image, 3, 2).0,
            [2., 1., 0., 5., 4., 3.]
        );
        assert_eq!(
            s(false, true, false).apply(&image, 3, 2).0,
            [3., 4., 5., 0., 1., 2.]
        );
        assert_eq!(
            s(false, false, true).apply(&image, 3, 2),
            (vec![0., 3., 1., 4., 2., 5.], 2, 3)
        );
        assert_eq!(
            Symmetry::first(1).collect::<Vec<_>>(),
            [s(false, false, false)]
        );
    }
}
