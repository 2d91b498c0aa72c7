//! MeasureTexture: Haralick features from grey-level co-occurrence, per object and direction.

use super::object;
use crate::segment::Labels;
use crate::GrayImage;

/// The 13 Haralick features, in CellProfiler's order (its `Texture_<name>_...` columns).
pub const HARALICK_NAMES: &[&str] = &[
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
];

/// The four co-occurrence offsets (dy, dx) per unit of scale, in CellProfiler's direction
/// order (its column suffixes _00.._03; mahotas's `_2d_deltas`): right, down-right, down,
/// down-left. Diagonals step `scale` pixels on both axes.
pub const HARALICK_DIRECTIONS: [(i32, i32); 4] = [(0, 1), (1, 1), (1, 0), (1, -1)];

/// Grey level of each raw value, as CellProfiler computes it: the image scaled to 0..1 by
/// `top` (CellProfiler: the bit depth's largest value), converted to 8 bits with rounding
/// (scikit-image `img_as_ubyte`), then to `levels` by `rescale_intensity(in 0..255, out
/// 0..levels-1)` truncated to an integer. Values above `top` take the top level.
pub(super) fn grey_levels(top: u16, levels: u32) -> Vec<u16> {
    let maxv = top.max(1) as u64;
    (0..=maxv)
        .map(|v| {
            let byte = (2 * v * 255 + maxv) / (2 * maxv);
            (byte * (levels as u64 - 1) / 255) as u16
        })
        .collect()
}

/// The largest value of the camera depth (8, 10, 12, 14 or 16 bits) that holds `brightest`.
///
/// Cameras of 10, 12 or 14 bits write 16-bit files: grey levels spread over 0..65535 put their
/// nuclei (500–2,000 counts of 4,095) into one or two of 32 levels, and every Haralick value
/// is 0. Rounding the brightest value seen up to a camera depth (rather than using it as is)
/// keeps the levels the same over plates of one camera unless a plate is 4× dimmer.
pub fn camera_range(brightest: u16) -> u16 {
    [8u32, 10, 12, 14, 16]
        .into_iter()
        .map(|bits| ((1u32 << bits) - 1) as u16)
        .find(|&top| brightest <= top)
        .unwrap_or(u16::MAX)
}

/// Haralick features per object and direction (CellProfiler MeasureTexture, which calls
/// mahotas on each object's bounding box with the background set to 0 and `ignore_zeros`):
///
/// - grey levels as in CellProfiler: the whole image rescaled by its bit depth to
///   0..levels-1 (`levels` 2..=256; CellProfiler's default is 256, scale 3);
/// - a pair counts when both pixels belong to the same object *and both grey levels are
///   above 0*: mahotas's `ignore_zeros` cannot tell a dark object pixel from background, so
///   CellProfiler drops pixels of level 0 too, and so does this;
/// - the matrix is symmetric (each pair counted both ways) and normalised to sum 1;
/// - mahotas's formulas: log base 2, grey levels counted from 0, Correlation 1 when either
///   marginal has zero variance, DifferenceVariance the variance of the vector
///   P(|i−j| = k) over k = 0..=the object's top level (mahotas's default, not Var|i−j|).
///
/// When some direction has no pair (objects thinner than `scale`), mahotas refuses the
/// object and CellProfiler stores 0 for all its texture columns: all 0 here too.
///
/// `top` is the value given the top grey level (CellProfiler's "intensity range"):
/// `image.max_value()` is its default, the file's bit depth; see [`camera_range`] for data
/// that fill only part of it.
pub fn haralick_features_directions(
    labels: &Labels,
    image: &GrayImage,
    scale: u32,
    levels: u32,
    top: u16,
) -> Vec<[[f64; 13]; 4]> {
    let (w, h) = (labels.width as usize, labels.height as usize);
    assert_eq!(
        (image.width, image.height),
        (labels.width, labels.height),
        "image and labels differ in size"
    );
    assert!(
        (2..=256).contains(&levels),
        "Haralick grey levels must be 2..=256, not {levels}"
    );
    assert!(scale >= 1, "Haralick scale must be at least 1");
    let n_obj = labels.count as usize;
    let lut = grey_levels(top, levels);
    let top = lut.len() - 1;

    // Bounding boxes: each object is then read once from its own box.
    let mut bbox = vec![[u32::MAX, u32::MAX, 0u32, 0u32]; n_obj + 1];
    for y in 0..h {
        for x in 0..w {
            let l = object(labels, y * w + x);
            if l != 0 {
                let b = &mut bbox[l];
                b[0] = b[0].min(x as u32);
                b[1] = b[1].min(y as u32);
                b[2] = b[2].max(x as u32 + 1);
                b[3] = b[3].max(y as u32 + 1);
            }
        }
    }

    let stride = levels as usize;
    let mut cmat = vec![0u32; stride * stride];
    let mut touched: Vec<u32> = Vec::new();
    let mut crop: Vec<u16> = Vec::new();
    let mut out = vec![[[0f64; 13]; 4]; n_obj];
    for l in 1..=n_obj {
        let b = bbox[l];
        if b[2] == 0 {
            continue;
        }
        let (bw, bh) = ((b[2] - b[0]) as usize, (b[3] - b[1]) as usize);
        crop.clear();
        let mut fm1 = 1usize;
        for y in b[1] as usize..b[3] as usize {
            for x in b[0] as usize..b[2] as usize {
                let i = y * w + x;
                let g = if object(labels, i) == l {
                    lut[(image.data[i] as usize).min(top)]
                } else {
                    0
                };
                fm1 = fm1.max(g as usize + 1);
                crop.push(g);
            }
        }
        let mut result = [[0f64; 13]; 4];
        let mut complete = true;
        for (d, &(dy, dx)) in HARALICK_DIRECTIONS.iter().enumerate() {
            let (dy, dx) = (dy as isize * scale as isize, dx as isize * scale as isize);
            let mut pairs = 0u64;
            for y in 0..bh as isize - dy {
                for x in 0.max(-dx)..(bw as isize).min(bw as isize - dx) {
                    let a = crop[y as usize * bw + x as usize];
                    if a == 0 {
                        continue;
                    }
                    let c = crop[(y + dy) as usize * bw + (x + dx) as usize];
                    if c == 0 {
                        continue;
                    }
                    pairs += 1;
                    for idx in [
                        a as usize * stride + c as usize,
                        c as usize * stride + a as usize,
                    ] {
                        if cmat[idx] == 0 {
                            touched.push(idx as u32);
                        }
                        cmat[idx] += 1;
                    }
                }
            }
            if pairs == 0 {
                complete = false;
                break;
            }
            result[d] = haralick_from_cooccurrence(&cmat, &touched, stride, fm1, 2 * pairs);
            for &idx in &touched {
                cmat[idx as usize] = 0;
            }
            touched.clear();
        }
        for &idx in &touched {
            cmat[idx as usize] = 0;
        }
        touched.clear();
        if complete {
            out[l - 1] = result;
        }
    }
    out
}

/// The 13 features of one symmetric co-occurrence matrix, visiting only its non-zero cells
/// (`touched`) so the cost follows the object's size, not levels².
fn haralick_from_cooccurrence(
    cmat: &[u32],
    touched: &[u32],
    stride: usize,
    fm1: usize,
    total: u64,
) -> [f64; 13] {
    let t = total as f64;
    let mut px = vec![0f64; fm1];
    let mut py = vec![0f64; fm1];
    let mut plus = vec![0f64; 2 * fm1];
    let mut minus = vec![0f64; fm1];
    let (mut asm, mut sij, mut idm, mut entropy) = (0.0, 0.0, 0.0, 0.0);
    for &idx in touched {
        let idx = idx as usize;
        let (i, j) = (idx / stride, idx % stride);
        let p = cmat[idx] as f64 / t;
        asm += p * p;
        sij += (i * j) as f64 * p;
        let diff = i.abs_diff(j);
        idm += p / ((diff * diff) as f64 + 1.0);
        entropy -= p * p.log2();
        px[j] += p;
        py[i] += p;
        plus[i + j] += p;
        minus[diff] += p;
    }
    let ent = |v: &[f64]| -> f64 {
        -v.iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| p * p.log2())
            .sum::<f64>()
    };
    let dot_k = |v: &[f64], pow: i32| -> f64 {
        v.iter()
            .enumerate()
            .map(|(k, &p)| (k as f64).powi(pow) * p)
            .sum()
    };
    let (ux, uy) = (dot_k(&px, 1), dot_k(&py, 1));
    let vx = dot_k(&px, 2) - ux * ux;
    let vy = dot_k(&py, 2) - uy * uy;
    let (sx, sy) = (vx.max(0.0).sqrt(), vy.max(0.0).sqrt());
    let correlation = if sx == 0.0 || sy == 0.0 {
        1.0
    } else {
        (sij - ux * uy) / (sx * sy)
    };
    let contrast = dot_k(&minus, 2);
    let sum_average = dot_k(&plus, 1);
    let sum_variance = dot_k(&plus, 2) - sum_average * sum_average;
    let sum_entropy = ent(&plus);
    let mean_minus = minus.iter().sum::<f64>() / fm1 as f64;
    let difference_variance =
        minus.iter().map(|&p| (p - mean_minus).powi(2)).sum::<f64>() / fm1 as f64;
    let difference_entropy = ent(&minus);
    let (hx, hy) = (ent(&px), ent(&py));
    let mut hxy1 = 0.0;
    for &idx in touched {
        let idx = idx as usize;
        let (i, j) = (idx / stride, idx % stride);
        hxy1 -= cmat[idx] as f64 / t * (px[i] * py[j]).log2();
    }
    // −Σ px_i py_j log2(px_i py_j), which separates into HX·Σpy + HY·Σpx.
    let hxy2 = hx * py.iter().sum::<f64>() + hy * px.iter().sum::<f64>();
    let hmax = hx.max(hy);
    let info1 = if hmax == 0.0 {
        entropy - hxy1
    } else {
        (entropy - hxy1) / hmax
    };
    let info2 = (1.0 - (-2.0 * (hxy2 - entropy)).exp()).max(0.0).sqrt();
    [
        asm,
        contrast,
        correlation,
        vx,
        idm,
        sum_average,
        sum_variance,
        sum_entropy,
        entropy,
        difference_variance,
        difference_entropy,
        info1,
        info2,
    ]
}

/// Haralick features per object averaged over the four directions (the usual single value
/// per feature; CellProfiler itself stores the four directions as separate columns, see
/// [`haralick_features_directions`]), grey levels spanning the file's bit depth as in
/// CellProfiler. Objects without pixels, or too thin for `scale`, give 0.
pub fn haralick_features(
    labels: &Labels,
    image: &GrayImage,
    scale: u32,
    levels: u32,
) -> Vec<[f64; 13]> {
    haralick_features_spanning(labels, image, scale, levels, image.max_value())
}

/// [`haralick_features`] with grey levels spanning `0..=top` instead of the bit depth.
pub fn haralick_features_spanning(
    labels: &Labels,
    image: &GrayImage,
    scale: u32,
    levels: u32,
    top: u16,
) -> Vec<[f64; 13]> {
    haralick_features_directions(labels, image, scale, levels, top)
        .into_iter()
        .map(|dirs| {
            let mut mean = [0f64; 13];
            for d in &dirs {
                for (m, v) in mean.iter_mut().zip(d) {
                    *m += v / dirs.len() as f64;
                }
            }
            mean
        })
        .collect()
}
