//! Classification metrics as plain functions over labels and probabilities: accuracy,
//! balanced accuracy, macro and weighted F1, per-class precision/recall, the confusion matrix,
//! calibration (expected calibration error over 15 bins, Brier score), and 95 % bootstrap
//! intervals that resample whole plates (cells of one plate are not independent).

/// `matrix[truth][predicted]` counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub classes: usize,
    pub matrix: Vec<Vec<usize>>,
}

impl Confusion {
    pub fn new(classes: usize, truth: &[usize], predicted: &[usize]) -> Self {
        let mut matrix = vec![vec![0; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            matrix[t][p] += 1;
        }
        Confusion { classes, matrix }
    }
    fn support(&self, c: usize) -> usize {
        self.matrix[c].iter().sum()
    }
    fn predicted(&self, c: usize) -> usize {
        self.matrix.iter().map(|r| r[c]).sum()
    }
    pub fn total(&self) -> usize {
        self.matrix.iter().flatten().sum()
    }
    pub fn precision(&self, c: usize) -> f64 {
        ratio(self.matrix[c][c], self.predicted(c))
    }
    pub fn recall(&self, c: usize) -> f64 {
        ratio(self.matrix[c][c], self.support(c))
    }
    pub fn f1(&self, c: usize) -> f64 {
        let (p, r) = (self.precision(c), self.recall(c));
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    pub fn accuracy(&self) -> f64 {
        ratio(
            (0..self.classes).map(|c| self.matrix[c][c]).sum(),
            self.total(),
        )
    }
    /// Mean recall over the classes present in the truth.
    pub fn balanced_accuracy(&self) -> f64 {
        mean_over_present(self, |c| self.recall(c))
    }
    /// Unweighted mean F1 over the classes present in the truth (scikit-learn counts absent
    /// classes that were predicted too; here only classes with support count).
    pub fn macro_f1(&self) -> f64 {
        mean_over_present(self, |c| self.f1(c))
    }
    /// F1 weighted by each class's support (scikit-learn's `average="weighted"`).
    pub fn weighted_f1(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        (0..self.classes)
            .map(|c| self.f1(c) * self.support(c) as f64)
            .sum::<f64>()
            / total as f64
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn mean_over_present(c: &Confusion, f: impl Fn(usize) -> f64) -> f64 {
    let present: Vec<usize> = (0..c.classes).filter(|&k| c.support(k) > 0).collect();
    if present.is_empty() {
        return 0.0;
    }
    present.iter().map(|&k| f(k)).sum::<f64>() / present.len() as f64
}

/// The index of the largest probability in each row.
pub fn argmax(probs: &[Vec<f64>]) -> Vec<usize> {
    probs
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        })
        .collect()
}

/// Expected calibration error: the sample-weighted mean |accuracy − confidence| over `bins`
/// equal-width confidence bins (15 is the usual choice).
pub fn expected_calibration_error(truth: &[usize], probs: &[Vec<f64>], bins: usize) -> f64 {
    let n = truth.len().max(1) as f64;
    reliability_bins(truth, probs, bins)
        .iter()
        .map(|b| b.count as f64 * (b.accuracy - b.confidence).abs() / n)
        .sum()
}

/// Multi-class Brier score: mean over samples of Σ_k (p_k − y_k)².
pub fn brier(truth: &[usize], probs: &[Vec<f64>]) -> f64 {
    let n = truth.len().max(1) as f64;
    truth
        .iter()
        .zip(probs)
        .map(|(&t, p)| {
            p.iter()
                .enumerate()
                .map(|(k, &q)| (q - (k == t) as u8 as f64).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n
}

/// One bin of a reliability diagram: confidences in (lo, hi], their mean, the accuracy of
/// the predictions made with them, and how many there were.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub confidence: f64,
    pub accuracy: f64,
    pub count: usize,
}

/// The reliability diagram's non-empty bins over `bins` equal-width confidence bins (the
/// same binning as [`expected_calibration_error`]).
pub fn reliability_bins(truth: &[usize], probs: &[Vec<f64>], bins: usize) -> Vec<ReliabilityBin> {
    let mut count = vec![0usize; bins];
    let mut conf = vec![0f64; bins];
    let mut correct = vec![0f64; bins];
    for (t, p) in truth.iter().zip(probs) {
        let (pred, &c) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("non-empty probabilities");
        let b = ((c * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        conf[b] += c;
        correct[b] += (pred == *t) as u8 as f64;
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| ReliabilityBin {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            confidence: conf[b] / count[b] as f64,
            accuracy: correct[b] / count[b] as f64,
            count: count[b],
        })
        .collect()
}

/// Mean negative log-likelihood of the true classes (probabilities floored at 1e-12).
pub fn nll(truth: &[usize], probs: &[Vec<f64>]) -> f64 {
    let n = truth.len().max(1) as f64;
    truth
        .iter()
        .zip(probs)
        .map(|(&t, p)| -p[t].max(1e-12).ln())
        .sum::<f64>()
        / n
}

/// Probabilities with temperature `t`: softmax(log p / t), the same as dividing the logits
/// by t (the log-sum-exp shift cancels). t > 1 softens, t < 1 sharpens; argmax is unchanged.
pub fn apply_temperature(probs: &[Vec<f64>], t: f64) -> Vec<Vec<f64>> {
    if t == 1.0 {
        // Exactly the identity (the log/exp round trip would move the last bits).
        return probs.to_vec();
    }
    probs
        .iter()
        .map(|p| {
            let z: Vec<f64> = p.iter().map(|&q| q.max(1e-12).ln() / t).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect()
}

/// Temperature scaling (Guo et al. 2017): the t in [0.05, 20] minimising the negative
/// log-likelihood of `truth` — fitted on validation plates, never on the plates it is then
/// applied to. Golden-section search on log t (the NLL is unimodal in t).
pub fn fit_temperature(truth: &[usize], probs: &[Vec<f64>]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let f = |lt: f64| nll(truth, &apply_temperature(probs, lt.exp()));
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Whether a temperature is applied, and the evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct TemperatureChoice {
    /// 1.0 unless the fitted temperature earned its place.
    pub applied: f64,
    /// Fitted on all the predictions given.
    pub fitted: f64,
    /// Mean NLL change on left-out plates, each calibrated with a temperature fitted on the
    /// other plates (< 0: better). NaN with one plate.
    pub nll_change: f64,
    /// The same for the 15-bin ECE over all left-out predictions.
    pub ece_change: f64,
    /// One sentence for the model card: why it was or was not applied.
    pub why: String,
}

/// A temperature that must earn its place: fitted on all of the validation predictions, but
/// applied only if, fitted on all plates but one, it lowers both the negative log-likelihood
/// and the calibration error (ECE) of the left-out plates. Across plates with different batch
/// effects a temperature often does not transfer (it can squash confident, right predictions
/// toward 0.5); then 1.0 (no scaling) is used. With one plate there is nothing to check
/// against: 1.0.
pub fn fit_temperature_across_groups(
    truth: &[usize],
    probs: &[Vec<f64>],
    groups: &[String],
) -> TemperatureChoice {
    let fitted = fit_temperature(truth, probs);
    let distinct: std::collections::BTreeSet<&String> = groups.iter().collect();
    if distinct.len() < 2 {
        return TemperatureChoice {
            applied: 1.0,
            fitted,
            nll_change: f64::NAN,
            ece_change: f64::NAN,
            why: "one plate: a temperature cannot be checked on a plate it was not fitted on, so none is applied".into(),
        };
    }
    // Every prediction calibrated by a temperature fitted on the other plates.
    let mut cross = probs.to_vec();
    for g in distinct {
        let (inside, outside): (Vec<usize>, Vec<usize>) =
            (0..truth.len()).partition(|&i| &groups[i] == g);
        let t_out: Vec<usize> = outside.iter().map(|&i| truth[i]).collect();
        let p_out: Vec<Vec<f64>> = outside.iter().map(|&i| probs[i].clone()).collect();
        let t = fit_temperature(&t_out, &p_out);
        let p_in: Vec<Vec<f64>> = inside.iter().map(|&i| probs[i].clone()).collect();
        for (&i, p) in inside.iter().zip(apply_temperature(&p_in, t)) {
            cross[i] = p;
        }
    }
    let nll_change = nll(truth, &cross) - nll(truth, probs);
    let ece_change = expected_calibration_error(truth, &cross, 15)
        - expected_calibration_error(truth, probs, 15);
    let earns = nll_change < 0.0 && ece_change < 0.0;
    let why = if earns {
        format!("applied: fitted on the other plates, it lowered the left-out plates' NLL by {:.3} and ECE by {:.3}", -nll_change, -ece_change)
    } else {
        format!("not applied (T = 1): fitted on the other plates, it changed the left-out plates' NLL by {nll_change:+.3} and ECE by {ece_change:+.3}; both must fall")
    };
    TemperatureChoice {
        applied: if earns { fitted } else { 1.0 },
        fitted,
        nll_change,
        ece_change,
        why,
    }
}

/// The fewest groups (plates) a bootstrap over groups can honestly draw an interval from:
/// resampling one plate gives the point estimate back as "[x, x]", and two give at most
/// three distinct values.
pub const MIN_GROUPS_FOR_INTERVAL: usize = 3;

/// A 95 % percentile interval of `metric` from `rounds` bootstrap resamples of whole groups
/// (plates): cells of one plate share its batch effects, so resampling cells would make the
/// interval too narrow. Deterministic for a given seed. (NaN, NaN) with fewer than
/// [`MIN_GROUPS_FOR_INTERVAL`] groups: there is no interval to give.
pub fn bootstrap_by_group(
    groups: &[String],
    rounds: usize,
    seed: u64,
    metric: impl Fn(&[usize]) -> f64,
) -> (f64, f64) {
    let mut names: Vec<&str> = groups.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let members: Vec<Vec<usize>> = names
        .iter()
        .map(|g| (0..groups.len()).filter(|&i| groups[i] == *g).collect())
        .collect();
    if members.len() < MIN_GROUPS_FOR_INTERVAL {
        return (f64::NAN, f64::NAN);
    }
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut values: Vec<f64> = (0..rounds)
        .map(|_| {
            let mut idx = Vec::new();
            for _ in 0..members.len() {
                idx.extend(&members[(next() % members.len() as u64) as usize]);
            }
            metric(&idx)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_scores_match_hand_worked_values() {
        // Worked by hand: 7 of 10 right; recalls 2/3, 2/3, 3/4; class 0 precision 2/3.
        let truth = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1];
        let pred = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1];
        let c = Confusion::new(3, &truth, &pred);
        assert!((c.accuracy() - 0.7).abs() < 1e-12);
        assert!((c.balanced_accuracy() - (2.0 / 3.0 + 2.0 / 3.0 + 0.75) / 3.0).abs() < 1e-12);
        let f1: Vec<f64> = (0..3).map(|k| c.f1(k)).collect();
        assert!((f1[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.macro_f1() - f1.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        let w = (f1[0] * 3.0 + f1[1] * 3.0 + f1[2] * 4.0) / 10.0;
        assert!((c.weighted_f1() - w).abs() < 1e-12);
    }

    #[test]
    fn calibration_of_perfect_and_overconfident_models() {
        let truth = [0, 1, 0, 1];
        let perfect = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![1.0, 0.0],
            vec![0.0, 1.0],
        ];
        assert_eq!(expected_calibration_error(&truth, &perfect, 15), 0.0);
        assert_eq!(brier(&truth, &perfect), 0.0);
        // Always 90 % sure, right half the time: ECE 0.4.
        let over = vec![
            vec![0.9, 0.1],
            vec![0.9, 0.1],
            vec![0.9, 0.1],
            vec![0.9, 0.1],
        ];
        assert!((expected_calibration_error(&truth, &over, 15) - 0.4).abs() < 1e-12);
        assert!((brier(&truth, &over) - (0.02 + 1.62) / 2.0).abs() < 1e-12);
    }

    /// An overconfident model (sharpened probabilities of a calibrated one) gets t > 1 back
    /// and a lower ECE and NLL; argmax never changes.
    #[test]
    fn temperature_scaling_undoes_overconfidence() {
        let mut rng = crate::rng::Rng::new(3);
        let mut truth = Vec::new();
        let mut calibrated = Vec::new();
        for _ in 0..4000 {
            // Confidence q for class 0, drawn uniformly; the truth follows it.
            let q = 0.5 + 0.5 * rng.unit();
            truth.push(if rng.unit() < q { 0 } else { 1 });
            calibrated.push(vec![q, 1.0 - q]);
        }
        let over = apply_temperature(&calibrated, 0.5);
        let t = fit_temperature(&truth, &over);
        assert!((t - 2.0).abs() < 0.15, "fitted temperature {t}");
        let fixed = apply_temperature(&over, t);
        assert!(
            expected_calibration_error(&truth, &fixed, 15)
                < expected_calibration_error(&truth, &over, 15)
        );
        assert!(nll(&truth, &fixed) < nll(&truth, &over));
        assert_eq!(argmax(&fixed), argmax(&over));
        let bins = reliability_bins(&truth, &over, 15);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 4000);
        assert!(bins
            .iter()
            .all(|b| b.lo < b.confidence && b.confidence <= b.hi));
    }

    #[test]
    fn bootstrap_intervals_widen_with_plate_effects() {
        // Ten plates, each all-right or all-wrong: the plate-level interval is wide.
        let groups: Vec<String> = (0..100).map(|i| format!("P{}", i / 10)).collect();
        let right: Vec<bool> = (0..100).map(|i| (i / 10) % 2 == 0).collect();
        let acc =
            |idx: &[usize]| idx.iter().filter(|&&i| right[i]).count() as f64 / idx.len() as f64;
        let (lo, hi) = bootstrap_by_group(&groups, 1000, 7, acc);
        assert!(lo < 0.3 && hi > 0.7, "{lo} {hi}");
        assert_eq!(bootstrap_by_group(&groups, 1000, 7, acc), (lo, hi));
        // Two plates cannot support an interval.
        let two: Vec<String> = (0..100).map(|i| format!("P{}", i / 50)).collect();
        let (lo, hi) = bootstrap_by_group(&two, 1000, 7, acc);
        assert!(lo.is_nan() && hi.is_nan());
    }

    #[test]
    fn a_temperature_is_applied_only_when_it_transfers_between_plates() {
        // Two plates, both over-confident in the same way: scaling transfers.
        let mut truth = Vec::new();
        let mut probs = Vec::new();
        let mut groups = Vec::new();
        for plate in ["A", "B"] {
            for i in 0..200 {
                let right = i % 10 < 7; // 70 % right, but 99 % sure
                truth.push(0);
                probs.push(if right {
                    vec![0.99, 0.01]
                } else {
                    vec![0.01, 0.99]
                });
                groups.push(plate.to_string());
            }
        }
        let c = fit_temperature_across_groups(&truth, &probs, &groups);
        assert!(
            c.fitted > 1.5 && c.applied == c.fitted && c.nll_change < 0.0 && c.ece_change < 0.0,
            "{c:?}"
        );
        // Plate B is under-confident where A is over-confident: a shared temperature
        // fitted on one hurts the other, so none is applied.
        let mut probs2 = probs.clone();
        for (p, g) in probs2.iter_mut().zip(&groups) {
            if g == "B" {
                *p = if p[0] > 0.5 {
                    vec![0.55, 0.45]
                } else {
                    vec![0.45, 0.55]
                };
            }
        }
        let truth2: Vec<usize> = probs2
            .iter()
            .zip(&groups)
            .enumerate()
            .map(|(i, (_, g))| {
                if g == "B" {
                    usize::from(i % 10 >= 9)
                } else {
                    0
                }
            })
            .collect();
        let c = fit_temperature_across_groups(&truth2, &probs2, &groups);
        assert!(c.applied == 1.0 && c.why.contains("not applied"), "{c:?}");
        // One plate: nothing to check against.
        let one = vec!["A".to_string(); truth.len()];
        assert_eq!(
            fit_temperature_across_groups(&truth, &probs, &one).applied,
            1.0
        );
    }
}
