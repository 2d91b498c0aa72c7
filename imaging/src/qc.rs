//! Image quality measures for curation, and the plate statistics that turn them into flags:
//! robust z-scores within a plate (median/MAD) and the Z′-factor between control wells.

use crate::GrayImage;

/// Per-image, per-channel quality measures (CellProfiler's MeasureImageQuality names them so).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageQuality {
    pub mean: f64,
    pub std: f64,
    pub min: u16,
    pub max: u16,
    /// Variance over mean: low for blurred or empty fields.
    pub focus_score: f64,
    /// Variance of the 4-neighbour Laplacian: sharp edges give large values.
    pub laplacian_variance: f64,
    /// Percent of pixels at the bit depth's maximum (saturated).
    pub percent_max: f64,
    /// Percent of pixels at zero.
    pub percent_min: f64,
}

pub fn measure(img: &GrayImage) -> ImageQuality {
    let n = img.data.len().max(1) as f64;
    let (mut sum, mut sum2) = (0f64, 0f64);
    let (mut min, mut max) = (u16::MAX, 0u16);
    let (mut at_max, mut at_min) = (0usize, 0usize);
    let top = img.max_value();
    for &v in &img.data {
        let f = v as f64;
        sum += f;
        sum2 += f * f;
        min = min.min(v);
        max = max.max(v);
        at_max += usize::from(v == top);
        at_min += usize::from(v == 0);
    }
    let mean = sum / n;
    let var = (sum2 / n - mean * mean).max(0.0);
    ImageQuality {
        mean,
        std: var.sqrt(),
        min,
        max,
        focus_score: if mean > 0.0 { var / mean } else { 0.0 },
        laplacian_variance: laplacian_variance(img),
        percent_max: 100.0 * at_max as f64 / n,
        percent_min: 100.0 * at_min as f64 / n,
    }
}

fn laplacian_variance(img: &GrayImage) -> f64 {
    let (w, h) = (img.width as usize, img.height as usize);
    if w < 3 || h < 3 {
        return 0.0;
    }
    let px = |x: usize, y: usize| img.data[y * w + x] as f64;
    let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0f64);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let l = px(x - 1, y) + px(x + 1, y) + px(x, y - 1) + px(x, y + 1) - 4.0 * px(x, y);
            sum += l;
            sum2 += l * l;
            n += 1.0;
        }
    }
    let mean = sum / n;
    (sum2 / n - mean * mean).max(0.0)
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Robust z-scores: (x − median) / (1.4826 · MAD). A MAD of zero gives zeros (no spread, no
/// outlier can be called).
pub fn robust_z(values: &[f64]) -> Vec<f64> {
    let med = median(values);
    let dev: Vec<f64> = values.iter().map(|v| (v - med).abs()).collect();
    let mad = 1.4826 * median(&dev);
    values
        .iter()
        .map(|v| if mad > 0.0 { (v - med) / mad } else { 0.0 })
        .collect()
}

/// Z′-factor of an assay: 1 − 3(σp + σn) / |μp − μn|. Above 0 the controls separate; above 0.5
/// is an excellent assay. `None` with fewer than two values on a side.
pub fn z_prime(positive: &[f64], negative: &[f64]) -> Option<f64> {
    fn mean_sd(v: &[f64]) -> Option<(f64, f64)> {
        if v.len() < 2 {
            return None;
        }
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        Some((m, var.sqrt()))
    }
    let (mp, sp) = mean_sd(positive)?;
    let (mn, sn) = mean_sd(negative)?;
    Some(1.0 - 3.0 * (sp + sn) / (mp - mn).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: u32, h: u32, f: impl Fn(u32, u32) -> u16) -> GrayImage {
        GrayImage {
            width: w,
            height: h,
            bit_depth: 8,
            data: (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| f(x, y))
                .collect(),
        }
    }

    fn box_blur(img: &GrayImage, r: i32) -> GrayImage {
        let (w, h) = (img.width as i32, img.height as i32);
        image(img.width, img.height, |x, y| {
            let (mut s, mut n) = (0u32, 0u32);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (xx, yy) = (x as i32 + dx, y as i32 + dy);
                    if xx >= 0 && yy >= 0 && xx < w && yy < h {
                        s += img.get(xx as u32, yy as u32) as u32;
                        n += 1;
                    }
                }
            }
            (s / n) as u16
        })
    }

    #[test]
    fn blur_lowers_focus_measures() {
        // Bright discs on a dim background, like nuclei.
        let sharp = image(64, 64, |x, y| {
            let (dx, dy) = ((x % 16) as i32 - 8, (y % 16) as i32 - 8);
            if dx * dx + dy * dy < 20 {
                200
            } else {
                20
            }
        });
        let blurred = box_blur(&sharp, 3);
        let (s, b) = (measure(&sharp), measure(&blurred));
        assert!(
            b.laplacian_variance < s.laplacian_variance / 4.0,
            "{b:?} vs {s:?}"
        );
        assert!(b.focus_score < s.focus_score, "{b:?} vs {s:?}");
    }

    #[test]
    fn saturation_and_intensity() {
        let img = image(10, 10, |x, _| {
            if x < 2 {
                255
            } else if x == 9 {
                0
            } else {
                100
            }
        });
        let q = measure(&img);
        assert_eq!((q.min, q.max), (0, 255));
        assert!((q.percent_max - 20.0).abs() < 1e-9 && (q.percent_min - 10.0).abs() < 1e-9);
        assert!((q.mean - (2.0 * 255.0 + 7.0 * 100.0) / 10.0).abs() < 1e-9);
    }

    #[test]
    fn robust_z_flags_the_outlier_only() {
        let z = robust_z(&[10.0, 11.0, 9.0, 10.5, 9.5, 40.0]);
        assert!(z[5] > 5.0, "{z:?}");
        assert!(z[..5].iter().all(|v| v.abs() < 2.0), "{z:?}");
        assert_eq!(robust_z(&[3.0, 3.0, 3.0]), vec![0.0; 3]);
    }

    #[test]
    fn z_prime_known_values() {
        // μp = 10, μn = 0, both sample SDs √2: 1 − 3·2√2/10.
        let zp = z_prime(&[9.0, 11.0], &[-1.0, 1.0]).unwrap();
        assert!((zp - (1.0 - 3.0 * (2f64.sqrt() + 2f64.sqrt()) / 10.0)).abs() < 1e-12);
        assert!(
            z_prime(&[1.0, 2.0], &[1.5, 2.5]).unwrap() < 0.0,
            "overlapping controls"
        );
        assert_eq!(z_prime(&[1.0], &[0.0, 1.0]), None);
    }
}
