//! Output tables shared by `train` (out-of-fold predictions) and `evaluate` (a saved model on
//! new plates): per-group scores, reliability bins before and after calibration, and per-cell
//! predictions joinable to the features table.

use super::{num, Table};
use plateflow_contract::metrics::{Calibration, ClassScore, Estimate, GroupScore, Scores};
use plateflow_learn::metrics::{
    bootstrap_by_group, brier, expected_calibration_error, reliability_bins, Confusion,
};

/// The confusion of `pred` against `truth` and its weighted and macro F1, each with a 95 %
/// interval from 1,000 resamplings of whole groups (`groups[j]` is cell j's; `seed` fixes it).
pub fn estimates(
    classes: usize,
    truth: &[usize],
    pred: &[usize],
    groups: &[String],
    seed: u64,
) -> (Confusion, Estimate, Estimate) {
    let ci = |f: &dyn Fn(&Confusion) -> f64| {
        let (lo, hi) = bootstrap_by_group(groups, 1000, seed, |idx| {
            let t: Vec<usize> = idx.iter().map(|&j| truth[j]).collect();
            let p: Vec<usize> = idx.iter().map(|&j| pred[j]).collect();
            f(&Confusion::new(classes, &t, &p))
        });
        [lo, hi]
    };
    let overall = Confusion::new(classes, truth, pred);
    let weighted = Estimate {
        value: overall.weighted_f1(),
        ci95_by_plate: ci(&|c| c.weighted_f1()),
    };
    let macro_ = Estimate {
        value: overall.macro_f1(),
        ci95_by_plate: ci(&|c| c.macro_f1()),
    };
    (overall, weighted, macro_)
}

/// The scores written to metrics.json, from [`estimates`] and the calibrated probabilities.
pub fn scores(
    classes: &[String],
    truth: &[usize],
    calibrated: &[Vec<f64>],
    (overall, weighted_f1, macro_f1): (Confusion, Estimate, Estimate),
    calibration: Calibration,
    per_group: Vec<GroupScore>,
) -> Scores {
    Scores {
        weighted_f1,
        macro_f1,
        accuracy: overall.accuracy(),
        balanced_accuracy: overall.balanced_accuracy(),
        ece_15_bins: expected_calibration_error(truth, calibrated, 15),
        brier: brier(truth, calibrated),
        calibration,
        per_class: per_class(&overall, classes),
        per_group,
        confusion: overall.matrix,
    }
}
use plateflow_learn::cells::Data;

/// Precision, recall and F1 of each class, for metrics.json.
pub fn per_class(c: &Confusion, classes: &[String]) -> Vec<ClassScore> {
    (0..classes.len())
        .map(|k| ClassScore {
            class: classes[k].clone(),
            cells: c.matrix[k].iter().sum(),
            precision: c.precision(k),
            recall: c.recall(k),
            f1: c.f1(k),
        })
        .collect()
}

/// Weighted F1 and accuracy per group (plate): the CSV table and the rows for metrics.json.
/// `cells[j]` is a cell index into `d`, with truth `truth[j]` and prediction `pred[j]`.
pub fn per_group(
    d: &Data,
    group_by: &str,
    classes: usize,
    cells: &[usize],
    truth: &[usize],
    pred: &[usize],
) -> (Table, Vec<GroupScore>) {
    let groups: std::collections::BTreeSet<&str> =
        cells.iter().map(|&i| d.groups[i].as_str()).collect();
    let mut table = Table::new(&[group_by, "cells", "weighted_f1", "accuracy"]);
    let mut json = Vec::new();
    for g in groups {
        let js: Vec<usize> = (0..cells.len())
            .filter(|&j| d.groups[cells[j]] == g)
            .collect();
        let c = Confusion::new(
            classes,
            &js.iter().map(|&j| truth[j]).collect::<Vec<_>>(),
            &js.iter().map(|&j| pred[j]).collect::<Vec<_>>(),
        );
        table.push_row([
            g.to_string(),
            js.len().to_string(),
            num(c.weighted_f1()),
            num(c.accuracy()),
        ]);
        json.push(GroupScore {
            group: g.to_string(),
            cells: js.len(),
            weighted_f1: c.weighted_f1(),
            accuracy: c.accuracy(),
        });
    }
    (table, json)
}

/// `reliability.csv`: the 15-bin reliability diagram before and after temperature scaling.
pub fn reliability(truth: &[usize], raw: &[Vec<f64>], calibrated: &[Vec<f64>]) -> Table {
    let mut t = Table::new(&["series", "lo", "hi", "confidence", "accuracy", "count"]);
    for (series, p) in [("before", raw), ("after", calibrated)] {
        for b in reliability_bins(truth, p, 15) {
            t.push_row([
                series.to_string(),
                num(b.lo),
                num(b.hi),
                num(b.confidence),
                num(b.accuracy),
                b.count.to_string(),
            ]);
        }
    }
    t
}

/// `predictions.csv`: one row per cell (indices into `d`, in order) with its group, well,
/// true class (empty when unlabelled), predicted class, confidence and probabilities, and the
/// features table's join keys (ImageSet, ObjectNumber).
pub fn predictions(
    d: &Data,
    group_by: &str,
    classes: &[String],
    truth: &[Option<usize>],
    probs: &[Vec<f64>],
) -> Table {
    let mut header = vec![
        "cell".to_string(),
        group_by.to_string(),
        "well".into(),
        "truth".into(),
        "predicted".into(),
        "confidence".into(),
    ];
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    header.extend(["ImageSet".to_string(), "ObjectNumber".to_string()]);
    let mut t = Table::new(&header);
    for (i, p) in probs.iter().enumerate() {
        let k = plateflow_learn::metrics::argmax(std::slice::from_ref(p))[0];
        let mut row = vec![
            d.ids[i].clone(),
            d.groups[i].clone(),
            d.origins[i].well.clone(),
            truth[i].map(|l| classes[l].clone()).unwrap_or_default(),
            classes[k].clone(),
            num(p[k]),
        ];
        row.extend(p.iter().map(|&v| num(v)));
        let (set, object) = d.ids[i].split_once('#').unwrap_or((&d.ids[i], ""));
        row.extend([set.to_string(), object.to_string()]);
        t.push_row(row);
    }
    t
}
