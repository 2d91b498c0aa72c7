//! MeasureObjectIntensity: per-object intensity statistics, with CellProfiler's quantiles.

use super::object;
use crate::segment::Labels;
use crate::GrayImage;

/// One object's intensity statistics, in CellProfiler's units: intensities divided by the
/// bit depth's maximum (255 or 65535), as CellProfiler loads images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntensityStats {
    /// Sum over the object's pixels.
    pub integrated: f64,
    pub mean: f64,
    /// Population standard deviation (divides by n), as CellProfiler.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Over the edge pixels: CellProfiler's outline, i.e. pixels with any of their 8
    /// neighbours in another label (or background), plus pixels on the image's edge.
    pub integrated_edge: f64,
    pub mean_edge: f64,
    pub std_edge: f64,
    pub min_edge: f64,
    pub max_edge: f64,
    /// CellProfiler's quantile rule on the sorted values v (n of them): position q = n·f,
    /// interpolating v[⌊q⌋] and v[⌊q⌋+1] by q's fraction (v[⌊q⌋] at the top end). Note this
    /// is not NumPy's median: for an even n it gives the upper middle value.
    pub lower_quartile: f64,
    pub median: f64,
    pub upper_quartile: f64,
    /// Median absolute deviation from `median`, same quantile rule.
    pub mad: f64,
    /// Intensity-weighted centre (CellProfiler Location_CenterMassIntensity); the plain
    /// centroid when the object's intensity sums to 0.
    pub center_mass_x: f64,
    pub center_mass_y: f64,
    /// Distance between the centroid and the intensity-weighted centre.
    pub mass_displacement: f64,
}

#[derive(Clone, Copy)]
struct IntensityAcc {
    n: u64,
    sum: u64,
    sum2: u128,
    min: u16,
    max: u16,
    sx: u64,
    sy: u64,
    sxv: u128,
    syv: u128,
    en: u64,
    esum: u64,
    esum2: u128,
    emin: u16,
    emax: u16,
}

impl Default for IntensityAcc {
    fn default() -> Self {
        Self {
            n: 0,
            sum: 0,
            sum2: 0,
            min: u16::MAX,
            max: 0,
            sx: 0,
            sy: 0,
            sxv: 0,
            syv: 0,
            en: 0,
            esum: 0,
            esum2: 0,
            emin: u16::MAX,
            emax: 0,
        }
    }
}

/// Population standard deviation from exact integer sums.
fn std_from_sums(n: u64, sum: u64, sum2: u128) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let num = n as u128 * sum2 - sum as u128 * sum as u128;
    (num as f64).sqrt() / n as f64
}

/// CellProfiler's quantile of sorted values (see [`IntensityStats::median`]).
pub(super) fn cp_quantile<T: Copy + Into<f64>>(sorted: &[T], f: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let q = n as f64 * f;
    let qi = q.floor() as usize;
    let qf = q - qi as f64;
    if qi + 1 < n {
        sorted[qi].into() * (1.0 - qf) + sorted[qi + 1].into() * qf
    } else {
        sorted[qi.min(n - 1)].into()
    }
}

/// Intensity statistics of every object (index i is object i + 1) over `image`, which must
/// have the label image's size. Objects without pixels get all zeros. To measure a region
/// such as the cytoplasm, pass a label image of that region (see [`subtract_labels`]).
pub fn intensity_features(labels: &Labels, image: &GrayImage) -> Vec<IntensityStats> {
    let (w, h) = (labels.width as usize, labels.height as usize);
    assert_eq!(
        (image.width, image.height),
        (labels.width, labels.height),
        "image and labels differ in size"
    );
    let n_obj = labels.count as usize;
    let lab = &labels.data;
    let px = &image.data;
    let mut acc = vec![IntensityAcc::default(); n_obj + 1];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let l = object(labels, i);
            if l == 0 {
                continue;
            }
            let v = px[i];
            let a = &mut acc[l];
            let vu = v as u64;
            a.n += 1;
            a.sum += vu;
            a.sum2 += (vu * vu) as u128;
            a.min = a.min.min(v);
            a.max = a.max.max(v);
            a.sx += x as u64;
            a.sy += y as u64;
            a.sxv += (x as u64 * vu) as u128;
            a.syv += (y as u64 * vu) as u128;
            let lv = lab[i];
            let edge = x == 0 || y == 0 || x + 1 == w || y + 1 == h || {
                let (up, down) = (i - w, i + w);
                lab[up - 1] != lv
                    || lab[up] != lv
                    || lab[up + 1] != lv
                    || lab[i - 1] != lv
                    || lab[i + 1] != lv
                    || lab[down - 1] != lv
                    || lab[down] != lv
                    || lab[down + 1] != lv
            };
            if edge {
                a.en += 1;
                a.esum += vu;
                a.esum2 += (vu * vu) as u128;
                a.emin = a.emin.min(v);
                a.emax = a.emax.max(v);
            }
        }
    }

    // Each object's values, grouped by a counting sort on the label, for the quantiles.
    let mut start = vec![0usize; n_obj + 2];
    for l in 1..=n_obj {
        start[l + 1] = start[l] + acc[l].n as usize;
    }
    let mut fill = start.clone();
    let mut values = vec![0u16; start[n_obj + 1]];
    for (i, &v) in px.iter().enumerate() {
        let l = object(labels, i);
        if l != 0 {
            values[fill[l]] = v;
            fill[l] += 1;
        }
    }

    let scale = 1.0 / image.max_value() as f64;
    let mut deviations = Vec::new();
    (1..=n_obj)
        .map(|l| {
            let a = acc[l];
            if a.n == 0 {
                return IntensityStats::default();
            }
            let vals = &mut values[start[l]..start[l + 1]];
            vals.sort_unstable();
            let n = a.n as f64;
            let median = cp_quantile(vals, 0.5) * scale;
            deviations.clear();
            deviations.extend(vals.iter().map(|&v| (v as f64 * scale - median).abs()));
            deviations.sort_unstable_by(f64::total_cmp);
            let (cx, cy) = (a.sx as f64 / n, a.sy as f64 / n);
            let (cmx, cmy) = if a.sum > 0 {
                (a.sxv as f64 / a.sum as f64, a.syv as f64 / a.sum as f64)
            } else {
                (cx, cy)
            };
            let (en, mean_edge) = if a.en > 0 {
                (a.en, a.esum as f64 / a.en as f64 * scale)
            } else {
                (0, 0.0)
            };
            IntensityStats {
                integrated: a.sum as f64 * scale,
                mean: a.sum as f64 / n * scale,
                std: std_from_sums(a.n, a.sum, a.sum2) * scale,
                min: a.min as f64 * scale,
                max: a.max as f64 * scale,
                integrated_edge: a.esum as f64 * scale,
                mean_edge,
                std_edge: std_from_sums(en, a.esum, a.esum2) * scale,
                min_edge: if en > 0 { a.emin as f64 * scale } else { 0.0 },
                max_edge: a.emax as f64 * scale,
                lower_quartile: cp_quantile(vals, 0.25) * scale,
                median,
                upper_quartile: cp_quantile(vals, 0.75) * scale,
                mad: cp_quantile(&deviations, 0.5),
                center_mass_x: cmx,
                center_mass_y: cmy,
                mass_displacement: ((cx - cmx).powi(2) + (cy - cmy).powi(2)).sqrt(),
            }
        })
        .collect()
}

/// The part of each cell outside every nucleus, keeping the cell's id (CellProfiler's
/// IdentifyTertiaryObjects, used for cytoplasm measurements). Same count as `cells`, so
/// indices line up with the cells' other measurements; a cell wholly covered by nuclei
/// keeps its id with no pixels.
pub fn subtract_labels(cells: &Labels, nuclei: &Labels) -> Labels {
    assert_eq!(
        (cells.width, cells.height),
        (nuclei.width, nuclei.height),
        "cell and nucleus label images differ in size"
    );
    Labels {
        width: cells.width,
        height: cells.height,
        data: cells
            .data
            .iter()
            .zip(&nuclei.data)
            .map(|(&c, &n)| if n == 0 { c } else { 0 })
            .collect(),
        count: cells.count,
    }
}
