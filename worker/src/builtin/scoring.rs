//! Output tables shared by `train` (out-of-fold predictions) and `evaluate` (a saved model on
//! new plates): per-group scores, reliability bins before and after calibration, and per-cell
//! predictions joinable to the features table.

use super::samples::Data;
use super::{num, Table};
use plateflow_contract::metrics::{ClassScore, GroupScore};
use plateflow_learn::metrics::{reliability_bins, Confusion};

/// Precision, recall and F1 of each class, for metrics.json.
pub fn per_class(c: &Confusion, classes: &[String]) -> Vec<ClassScore> {
    (0..classes.len())
        .map(|k| ClassScore {
            class: classes[k].clone(),
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
