//! What a screen is for, from a classifier's per-cell predictions: the fraction of each
//! well's cells in each class (with an interval), how well that readout separates the
//! controls (Z′), wells whose label the model contradicts beyond its usual confusion, and
//! exact per-cell explanations of the linear baseline. Plain functions over plain slices, so
//! they are tested here without files or an engine.

use crate::rng::Rng;
use std::collections::BTreeMap;

/// A proportion and its 95 % percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The fraction of `predicted` cells in each of `classes` classes, each with a 95 % interval
/// from `rounds` resamplings of the cells (with replacement). The interval says how sure the
/// fraction is given these cells; it does not include well-to-well variation.
pub fn class_fractions(
    predicted: &[usize],
    classes: usize,
    rounds: usize,
    seed: u64,
) -> Vec<Fraction> {
    let n = predicted.len();
    let counts = |cells: &mut dyn Iterator<Item = usize>| {
        let mut c = vec![0usize; classes];
        for k in cells {
            c[k] += 1;
        }
        c
    };
    let point = counts(&mut predicted.iter().copied());
    if n == 0 {
        return vec![
            Fraction {
                value: f64::NAN,
                lo: f64::NAN,
                hi: f64::NAN,
            };
            classes
        ];
    }
    let mut rng = Rng::new(seed);
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); classes];
    for _ in 0..rounds {
        let c = counts(&mut (0..n).map(|_| predicted[rng.below(n)]));
        for k in 0..classes {
            samples[k].push(c[k] as f64 / n as f64);
        }
    }
    (0..classes)
        .map(|k| {
            let s = &mut samples[k];
            s.sort_by(f64::total_cmp);
            let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
            Fraction {
                value: point[k] as f64 / n as f64,
                lo: at(0.025),
                hi: at(0.975),
            }
        })
        .collect()
}

/// One well as label QC judges it.
#[derive(Debug, Clone, PartialEq)]
pub struct WellCheck {
    /// The well's key (e.g. plate and well), as given.
    pub well: (String, String),
    pub label: usize,
    pub cells: usize,
    /// Cells predicted as the well's label.
    pub agreeing: usize,
    /// What the model's confusion predicts for a correctly labelled well of this size: its
    /// recall of the label class on the other wells with that label, times the cells.
    pub expected_agreeing: f64,
    /// The class most of the well's cells are predicted as.
    pub predicted_mostly: usize,
    /// One-sided p-value of this few agreeing cells if the label were right, allowing for the
    /// well-to-well spread seen among the other wells with the label.
    pub p_value: f64,
    pub flagged: bool,
}

/// Wells with fewer cells than this are listed but never flagged: too few to judge.
pub const LABEL_QC_MIN_CELLS: usize = 5;

/// Label QC with a model: for every labelled well, whether its out-of-fold predictions
/// disagree with its label beyond what the model's confusion explains.
///
/// Under "the label is right", a well's agreeing cells are binomial with the model's recall
/// of that class (estimated on the *other* wells with the label, so a wrong well does not
/// lower its own bar), widened by the over-dispersion between wells (a robust estimate: the
/// median squared Pearson residual of the other wells over its χ²₁ expectation, at least 1).
/// A well is flagged when that one-sided p-value is below `alpha` / wells (Bonferroni) *and*
/// most of its cells are predicted as another class: then its cells look like another class,
/// not like a weak member of their own.
///
/// It judges a label given to a whole well (a plate map's): a well whose cells carry more
/// than one label (labels per cell, from file names or a cell table) has none to judge and
/// is left out; judged by its first cell's label, its other cells read as disagreeing.
///
/// `wells[i]`, `labels[i]`, `predicted[i]` describe cell i.
pub fn label_qc(
    wells: &[(String, String)],
    labels: &[usize],
    predicted: &[usize],
    classes: usize,
    alpha: f64,
) -> Vec<WellCheck> {
    // Cells per well: (label, predictions, whether its cells' labels differ).
    let mut by_well: BTreeMap<&(String, String), (usize, Vec<usize>, bool)> = BTreeMap::new();
    for i in 0..wells.len() {
        let well = by_well
            .entry(&wells[i])
            .or_insert_with(|| (labels[i], Vec::new(), false));
        well.1.push(predicted[i]);
        well.2 |= well.0 != labels[i];
    }
    by_well.retain(|_, (_, _, mixed)| !*mixed);
    struct W<'a> {
        key: &'a (String, String),
        label: usize,
        n: usize,
        agree: usize,
        mostly: usize,
    }
    let ws: Vec<W> = by_well
        .iter()
        .map(|(key, (label, preds, _))| {
            let mut counts = vec![0usize; classes];
            for &p in preds {
                counts[p] += 1;
            }
            let mostly = (0..classes).max_by_key(|&k| counts[k]).unwrap_or(0);
            W {
                key,
                label: *label,
                n: preds.len(),
                agree: counts[*label],
                mostly,
            }
        })
        .collect();
    let judged = ws
        .iter()
        .filter(|w| w.n >= LABEL_QC_MIN_CELLS)
        .count()
        .max(1);
    ws.iter()
        .enumerate()
        .map(|(i, w)| {
            let others: Vec<&W> = ws
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.label == w.label && o.n > 0)
                .map(|(_, o)| o)
                .collect();
            let (agree, total) = others
                .iter()
                .fold((0usize, 0usize), |(a, t), o| (a + o.agree, t + o.n));
            let mut check = WellCheck {
                well: w.key.clone(),
                label: w.label,
                cells: w.n,
                agreeing: w.agree,
                expected_agreeing: f64::NAN,
                predicted_mostly: w.mostly,
                p_value: f64::NAN,
                flagged: false,
            };
            if total == 0 || w.n == 0 {
                return check;
            }
            // Keep the rate off 0 and 1 so the variance never vanishes.
            let half = 0.5 / total as f64;
            let r = (agree as f64 / total as f64).clamp(half, 1.0 - half);
            let mut z2: Vec<f64> = others
                .iter()
                .map(|o| {
                    let e = o.n as f64 * r;
                    (o.agree as f64 - e).powi(2) / (e * (1.0 - r))
                })
                .collect();
            z2.sort_by(f64::total_cmp);
            // The median of χ²₁ is 0.455: a larger median residual means wells vary more
            // than binomially (shared batch effects, well-level biology).
            let dispersion = if z2.is_empty() {
                1.0
            } else {
                (z2[z2.len() / 2] / 0.4549).max(1.0)
            };
            let e = w.n as f64 * r;
            let z = (w.agree as f64 - e) / (dispersion * e * (1.0 - r)).sqrt();
            check.expected_agreeing = e;
            check.p_value = normal_cdf(z);
            check.flagged = w.n >= LABEL_QC_MIN_CELLS
                && check.p_value < alpha / judged as f64
                && w.mostly != w.label;
            check
        })
        .collect()
}

/// The standard normal distribution function (Abramowitz–Stegun 7.1.26 via erfc, |error|
/// below 1.5e-7: ample for a p-value compared with a threshold).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if z >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// Exact SHAP values of a linear model's class scores (logits). For f_k(x) = w_k·x + b_k with
/// features treated as independent (interventional SHAP), feature j's contribution to cell
/// i's score for class k is w_kj (x_ij − E[x_j]), the expectation over `background`; the
/// contributions sum to f_k(x_i) − E[f_k]. In the log-odds units of the model, not in
/// probability.
pub struct LinearShap<'a> {
    /// [classes][features]
    pub weights: &'a [Vec<f32>],
    /// Per-feature mean over the background (training) cells.
    pub mean: Vec<f64>,
}

impl<'a> LinearShap<'a> {
    /// `x` holds `features` values per cell, row-major; `background` the cells to average over.
    pub fn new(weights: &'a [Vec<f32>], x: &[f32], features: usize, background: &[usize]) -> Self {
        let mut mean = vec![0f64; features];
        for &i in background {
            for (m, &v) in mean.iter_mut().zip(&x[i * features..(i + 1) * features]) {
                *m += v as f64;
            }
        }
        let n = background.len().max(1) as f64;
        mean.iter_mut().for_each(|m| *m /= n);
        LinearShap { weights, mean }
    }

    /// The SHAP values of one cell's features for `class`.
    pub fn values(&self, cell: &[f32], class: usize) -> Vec<f64> {
        self.weights[class]
            .iter()
            .zip(cell)
            .zip(&self.mean)
            .map(|((&w, &x), &m)| w as f64 * (x as f64 - m))
            .collect()
    }
}

/// The `n` largest entries of `values` by magnitude, as (index, value), largest first.
pub fn top_by_magnitude(values: &[f64], n: usize) -> Vec<(usize, f64)> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
    order.into_iter().take(n).map(|i| (i, values[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_and_their_intervals_narrow_with_more_cells() {
        let few: Vec<usize> = (0..20).map(|i| usize::from(i % 4 == 0)).collect();
        let many: Vec<usize> = (0..2000).map(|i| usize::from(i % 4 == 0)).collect();
        let f = class_fractions(&few, 2, 1000, 1);
        let m = class_fractions(&many, 2, 1000, 1);
        assert!((f[1].value - 0.25).abs() < 1e-12 && (m[1].value - 0.25).abs() < 1e-12);
        assert!((f[0].value + f[1].value - 1.0).abs() < 1e-12);
        assert!(f[1].lo < 0.25 && f[1].hi > 0.25);
        assert!(m[1].hi - m[1].lo < (f[1].hi - f[1].lo) / 4.0, "{m:?} {f:?}");
        // Binomial sd at n = 2000 is 0.0097: the interval is about ±0.019.
        assert!((m[1].hi - m[1].lo - 0.038).abs() < 0.01, "{m:?}");
        assert!(class_fractions(&[], 2, 10, 1)[0].value.is_nan());
    }

    /// Twelve wells per label with realistic well-to-well spread; one well labelled 1 whose
    /// cells are class 0. Only that well is flagged.
    #[test]
    fn label_qc_finds_the_wrong_well_and_tolerates_spread() {
        let mut rng = Rng::new(5);
        let (mut wells, mut labels, mut pred) = (Vec::new(), Vec::new(), Vec::new());
        for w in 0..24 {
            let label = usize::from(w >= 12);
            let truly = if w == 17 { 0 } else { label };
            // Each well's own accuracy varies between 0.75 and 0.97.
            let acc = 0.75 + 0.22 * rng.unit();
            for _ in 0..40 {
                wells.push(("P1".to_string(), format!("W{w:02}")));
                labels.push(label);
                pred.push(if rng.unit() < acc { truly } else { 1 - truly });
            }
        }
        let checks = label_qc(&wells, &labels, &pred, 2, 0.05);
        let flagged: Vec<&str> = checks
            .iter()
            .filter(|c| c.flagged)
            .map(|c| c.well.1.as_str())
            .collect();
        assert_eq!(flagged, vec!["W17"], "{checks:#?}");
        let w17 = checks.iter().find(|c| c.well.1 == "W17").unwrap();
        assert_eq!(w17.predicted_mostly, 0);
        assert!(w17.expected_agreeing > 30.0 && w17.agreeing < 12, "{w17:?}");
    }

    /// Labels per cell (MitoCheck's classes from file names): a well whose first cell is
    /// one class and the rest another, each predicted as labelled, is not a wrong label.
    #[test]
    fn a_well_of_mixed_labels_is_left_out() {
        let (mut wells, mut labels, mut pred) = (Vec::new(), Vec::new(), Vec::new());
        for w in 0..25 {
            for c in 0..40 {
                let label = match w {
                    24 => usize::from(c == 0),
                    _ => usize::from(w >= 12),
                };
                wells.push(("P1".to_string(), format!("W{w:02}")));
                labels.push(label);
                pred.push(if c % 10 == 9 { 1 - label } else { label });
            }
        }
        let checks = label_qc(&wells, &labels, &pred, 2, 0.05);
        assert_eq!(checks.len(), 24, "{checks:#?}");
        assert!(checks.iter().all(|c| !c.flagged && c.well.1 != "W24"));
    }

    #[test]
    fn a_tiny_well_is_never_flagged() {
        let wells: Vec<(String, String)> = (0..23)
            .map(|i| ("P".to_string(), format!("W{}", i / 2)))
            .chain(std::iter::once(("P".to_string(), "tiny".to_string())))
            .collect();
        let labels = vec![0; 24];
        let mut pred = vec![0; 24];
        pred[23] = 1;
        let checks = label_qc(&wells, &labels, &pred, 2, 0.05);
        assert!(checks.iter().all(|c| !c.flagged));
    }

    #[test]
    fn normal_cdf_matches_tables() {
        for (z, p) in [
            (0.0, 0.5),
            (-1.96, 0.024_997_9),
            (1.0, 0.841_344_7),
            (-3.0, 0.001_349_9),
        ] {
            assert!((normal_cdf(z) - p).abs() < 2e-6, "{z}: {}", normal_cdf(z));
        }
    }

    /// SHAP values of a linear score sum to the score minus its mean (local accuracy), and a
    /// feature with zero weight or at its mean contributes nothing.
    #[test]
    fn linear_shap_is_exact() {
        let weights = vec![vec![0.5f32, -2.0, 0.0], vec![1.0, 1.0, 3.0]];
        let x: Vec<f32> = vec![1.0, 2.0, 3.0, 3.0, 0.0, 1.0, -1.0, 1.0, 2.0];
        let shap = LinearShap::new(&weights, &x, 3, &[0, 1, 2]);
        assert_eq!(shap.mean, vec![1.0, 1.0, 2.0]);
        let score = |i: usize, k: usize| -> f64 {
            (0..3)
                .map(|j| weights[k][j] as f64 * x[i * 3 + j] as f64)
                .sum()
        };
        for k in 0..2 {
            let mean_score = (0..3).map(|i| score(i, k)).sum::<f64>() / 3.0;
            for i in 0..3 {
                let v = shap.values(&x[i * 3..i * 3 + 3], k);
                assert!((v.iter().sum::<f64>() - (score(i, k) - mean_score)).abs() < 1e-9);
            }
        }
        assert_eq!(shap.values(&[1.0, 1.0, 2.0], 1), vec![0.0, 0.0, 0.0]);
        assert_eq!(shap.values(&[9.0, 1.0, 7.0], 0)[2], 0.0);
        assert_eq!(
            top_by_magnitude(&[0.1, -3.0, 2.0], 2),
            vec![(1, -3.0), (2, 2.0)]
        );
    }
}
