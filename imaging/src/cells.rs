//! Cells grown from nuclei: either propagated into a second channel (the cytoplasm or whole-
//! cell stain) or a fixed ring around each nucleus. A cell keeps its nucleus's number, so
//! nucleus, cell and cytoplasm tables join on the object number.

use crate::segment::{gaussian, otsu, Labels};
use crate::GrayImage;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// How the cell body is found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CellMethod {
    /// Grow each nucleus over the foreground of the cell channel, preferring paths of similar
    /// intensity (CellProfiler's "Propagation" in spirit): cells meet at intensity valleys,
    /// or half-way where the stain is flat.
    Propagate {
        /// Cost of one pixel of distance relative to a full-range intensity step; small values
        /// follow intensity edges, large ones give Voronoi-like cells. CellProfiler's 0.05.
        regularization: f64,
        /// No cell reaches further than this many nucleus radii from its nucleus.
        max_radii: f64,
    },
    /// A band of fixed width (pixels) around each nucleus: for assays without a cell stain.
    Ring { width: f64 },
}

impl Default for CellMethod {
    fn default() -> Self {
        CellMethod::Propagate {
            regularization: 0.05,
            max_radii: 4.0,
        }
    }
}

#[derive(PartialEq)]
struct Step(f64, usize);
impl Eq for Step {}
impl PartialOrd for Step {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Step {
    // Min-heap on cost; ties by index keep the result deterministic.
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0).then(o.1.cmp(&self.1))
    }
}

/// Cells for the given nuclei. `cell_image` is needed by `Propagate` (ignored by `Ring`).
pub fn segment_cells(
    nuclei: &Labels,
    cell_image: Option<&GrayImage>,
    method: CellMethod,
) -> Labels {
    let (w, h) = (nuclei.width as usize, nuclei.height as usize);
    let radius = typical_radius(nuclei);
    match (method, cell_image) {
        (
            CellMethod::Propagate {
                regularization,
                max_radii,
            },
            Some(img),
        ) => {
            let smooth = gaussian(img, 1.0);
            let t = otsu(&smooth);
            let (lo, hi) = smooth
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let range = (hi - lo).max(1e-6) as f64;
            // Foreground of the cell stain; nuclei are always part of their cell. Otsu on the
            // cell channel tends to pick bright nuclei vs the rest when the reporter is nuclear,
            // so the cutoff is lowered towards the background (half-way to the lower mode).
            let bg = background_level(&smooth, t);
            let cut = bg + 0.5 * (t - bg);
            let allowed: Vec<bool> = smooth
                .iter()
                .zip(&nuclei.data)
                .map(|(&v, &l)| v > cut || l != 0)
                .collect();
            let reach = max_radii * radius;
            grow(nuclei, &allowed, w, h, reach, |i, j, step| {
                let d = (smooth[i] - smooth[j]).abs() as f64 / range;
                d + regularization * step
            })
        }
        (CellMethod::Ring { width }, _) => {
            let allowed = vec![true; w * h];
            grow(nuclei, &allowed, w, h, width, |_, _, step| step)
        }
        (CellMethod::Propagate { .. }, None) => {
            // Without a cell channel the best honest answer is a ring of one radius.
            let allowed = vec![true; w * h];
            grow(nuclei, &allowed, w, h, radius, |_, _, step| step)
        }
    }
}

/// The mean of the values below the threshold: the background level.
fn background_level(values: &[f32], t: f32) -> f32 {
    let (s, n) = values
        .iter()
        .filter(|&&v| v <= t)
        .fold((0f64, 0usize), |(s, n), &v| (s + v as f64, n + 1));
    if n == 0 {
        t
    } else {
        (s / n as f64) as f32
    }
}

/// Median nucleus radius (from areas), at least 3 px.
pub fn typical_radius(nuclei: &Labels) -> f64 {
    let mut area = vec![0usize; nuclei.count as usize + 1];
    for &l in &nuclei.data {
        area[l as usize] += 1;
    }
    let mut a: Vec<usize> = area[1..].iter().copied().filter(|&x| x > 0).collect();
    if a.is_empty() {
        return 3.0;
    }
    a.sort_unstable();
    ((a[a.len() / 2] as f64) / std::f64::consts::PI)
        .sqrt()
        .max(3.0)
}

/// Seeded Dijkstra flood from every nucleus pixel over `allowed` pixels. `cost(i, j, step)`
/// prices the move from pixel i to neighbour j (`step` = 1 or √2). Each pixel goes to the
/// seed that reaches it cheapest; `reach` bounds the geometric distance (in pixels) walked.
fn grow(
    nuclei: &Labels,
    allowed: &[bool],
    w: usize,
    h: usize,
    reach: f64,
    cost: impl Fn(usize, usize, f64) -> f64,
) -> Labels {
    let mut labels = nuclei.data.clone();
    let mut best = vec![f64::INFINITY; w * h];
    // Geometric path length, to bound how far a cell extends.
    let mut walked = vec![0f64; w * h];
    let mut heap = BinaryHeap::new();
    for (i, &l) in nuclei.data.iter().enumerate() {
        if l != 0 {
            best[i] = 0.0;
            heap.push(Step(0.0, i));
        }
    }
    const D: f64 = std::f64::consts::SQRT_2;
    while let Some(Step(c, i)) = heap.pop() {
        if c > best[i] {
            continue;
        }
        let (x, y) = ((i % w) as isize, (i / w) as isize);
        for (dx, dy, step) in [
            (-1, 0, 1.0),
            (1, 0, 1.0),
            (0, -1, 1.0),
            (0, 1, 1.0),
            (-1, -1, D),
            (1, -1, D),
            (-1, 1, D),
            (1, 1, D),
        ] {
            let (xx, yy) = (x + dx, y + dy);
            if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                continue;
            }
            let j = yy as usize * w + xx as usize;
            // Nucleus pixels belong to their own nucleus, whatever the costs say.
            if !allowed[j] || nuclei.data[j] != 0 {
                continue;
            }
            let walk = walked[i] + step;
            if walk > reach {
                continue;
            }
            let nc = c + cost(i, j, step);
            if nc < best[j] {
                best[j] = nc;
                labels[j] = labels[i];
                walked[j] = walk;
                heap.push(Step(nc, j));
            }
        }
    }
    Labels {
        width: nuclei.width,
        height: nuclei.height,
        data: labels,
        count: nuclei.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nuclei (radius 5) inside two touching square cells of a dim stain.
    fn two_cells() -> (Labels, GrayImage) {
        let (w, h) = (60usize, 30usize);
        let mut nuc = vec![0u32; w * h];
        let mut img = vec![5u16; w * h];
        for y in 0..h {
            for x in 0..w {
                // Cell bodies: x in 2..29 and 31..58, y in 2..28; a dark valley at x = 30.
                if (2..28).contains(&y) && ((2..29).contains(&x) || (31..58).contains(&x)) {
                    img[y * w + x] = 100;
                }
                for (k, cx) in [(1u32, 15.0), (2, 45.0)] {
                    if ((x as f64 - cx).powi(2) + (y as f64 - 15.0).powi(2)).sqrt() <= 5.0 {
                        nuc[y * w + x] = k;
                        img[y * w + x] = 200;
                    }
                }
            }
        }
        let labels = Labels {
            width: w as u32,
            height: h as u32,
            data: nuc,
            count: 2,
        };
        let image = GrayImage {
            width: w as u32,
            height: h as u32,
            bit_depth: 8,
            data: img,
        };
        (labels, image)
    }

    #[test]
    fn propagation_fills_each_cell_and_stops_at_the_valley() {
        let (nuc, img) = two_cells();
        let cells = segment_cells(&nuc, Some(&img), CellMethod::default());
        let w = 60;
        // Each cell covers its body (27 x 26 pixels) and strays at most 2 px beyond it (the
        // stain is smoothed); the far background stays empty; no cell crosses the valley.
        for (l, xs) in [(1u32, 2..29), (2, 31..58)] {
            let body = (2..28)
                .flat_map(|y| xs.clone().map(move |x| y * w + x))
                .filter(|&i| cells.data[i] == l)
                .count();
            assert!(body as f64 >= 0.95 * 702.0, "cell {l} covers {body} of 702");
            for (i, &v) in cells.data.iter().enumerate() {
                let (x, y) = (i % w, i / w);
                if v == l {
                    assert!(x + 2 >= xs.start && x < xs.end + 2 && (0..30).contains(&y));
                }
            }
        }
        assert_eq!(cells.data[0], 0);
        // Nuclei keep their numbers.
        assert_eq!(cells.data[15 * w + 15], 1);
        assert_eq!(cells.data[15 * w + 45], 2);
    }

    #[test]
    fn rings_have_the_requested_width_and_do_not_overlap() {
        let (nuc, _) = two_cells();
        let cells = segment_cells(&nuc, None, CellMethod::Ring { width: 3.0 });
        let w = 60;
        // Along the row through the centres: nucleus x in 10..=20, ring reaches 7..=23.
        let row: Vec<u32> = (0..w).map(|x| cells.data[15 * w + x]).collect();
        assert_eq!(row[7], 1);
        assert_eq!(row[6], 0);
        assert_eq!(row[23], 1);
        assert_eq!(row[24], 0);
        assert_eq!(row[37], 2);
        let area1 = cells.data.iter().filter(|&&v| v == 1).count() as f64;
        // A disc of radius ~8 (5 + 3): about 200 pixels.
        assert!(
            (area1 - std::f64::consts::PI * 64.0).abs() < 30.0,
            "{area1}"
        );
    }
}
