//! Resizing float images: separable triangle (linear) filtering whose support widens with
//! the shrink factor, so shrinking averages every source pixel (no aliasing) and enlarging
//! interpolates linearly — the filter PIL calls `BILINEAR` with antialiasing.

/// `pixels` (`w`×`h`, row-major) resized to `nw`×`nh`.
pub fn resize(pixels: &[f32], w: usize, h: usize, nw: usize, nh: usize) -> Vec<f32> {
    assert_eq!(
        pixels.len(),
        w * h,
        "resize: {w}x{h} image of {} values",
        pixels.len()
    );
    if (w, h) == (nw, nh) {
        return pixels.to_vec();
    }
    let xs = weights(w, nw);
    let ys = weights(h, nh);
    // Rows first (w → nw), then columns (h → nh).
    let mut rows = vec![0f32; nw * h];
    for y in 0..h {
        let src = &pixels[y * w..(y + 1) * w];
        for (x, (first, ws)) in xs.iter().enumerate() {
            rows[y * nw + x] = ws.iter().zip(&src[*first..]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = vec![0f32; nw * nh];
    for (y, (first, ws)) in ys.iter().enumerate() {
        let dst = &mut out[y * nw..(y + 1) * nw];
        for (k, wgt) in ws.iter().enumerate() {
            let src = &rows[(first + k) * nw..(first + k + 1) * nw];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += wgt * s;
            }
        }
    }
    out
}

/// Per output index: the first source index and the normalised filter weights from there.
fn weights(n: usize, m: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n as f64 / m as f64;
    let support = scale.max(1.0); // the triangle's half-width, in source pixels
    (0..m)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let lo = ((centre - support).floor().max(0.0)) as usize;
            let hi = ((centre + support).ceil() as usize).min(n);
            let mut ws: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 + 0.5 - centre) / support).abs()).max(0.0))
                .collect();
            let total: f64 = ws.iter().sum();
            if total <= 0.0 {
                // Cannot happen for n ≥ 1 (the nearest pixel always has weight), but stay finite.
                ws = vec![1.0; hi - lo];
            }
            let total: f64 = ws.iter().sum();
            (lo, ws.into_iter().map(|v| (v / total) as f32).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_averages_and_round_trips_keep_smooth_images() {
        // A 2× shrink of a checkerboard is flat grey: every source pixel is averaged in.
        let (w, h) = (64, 48);
        let board: Vec<f32> = (0..w * h).map(|i| ((i % w + i / w) % 2) as f32).collect();
        let small = resize(&board, w, h, w / 2, h / 2);
        // Edges see a one-sided filter; the inside is exactly 0.5.
        for y in 2..h / 2 - 2 {
            for x in 2..w / 2 - 2 {
                assert!((small[y * w / 2 + x] - 0.5).abs() < 1e-5);
            }
        }
        // A smooth ramp survives enlarging and shrinking back.
        let ramp: Vec<f32> = (0..w * h).map(|i| (i % w) as f32 / w as f32).collect();
        let back = resize(
            &resize(&ramp, w, h, 3 * w / 2, 3 * h / 2),
            3 * w / 2,
            3 * h / 2,
            w,
            h,
        );
        let worst = ramp
            .iter()
            .zip(&back)
            .enumerate()
            .filter(|(i, _)| (2..w - 2).contains(&(i % w)))
            .map(|(_, (a, b))| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "ramp changed by {worst}");
        assert_eq!(resize(&ramp, w, h, w, h), ramp);
    }
}
