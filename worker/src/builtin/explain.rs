//! Per-cell explanations of the logistic baseline: exact SHAP values (a linear model's are
//! w·(x − E[x]) per feature, in log-odds units), summarised per class (`shap_summary.csv`:
//! features ranked by mean |SHAP|) and per cell (`explanations.csv`: the three features that
//! pushed hardest toward or against the predicted class). `train` explains its final model on
//! the training cells, `evaluate` the saved model on the plates it scores.

use super::{num, Context, Table};
use plateflow_learn::cells::Data;
use plateflow_learn::metrics::argmax;
use plateflow_learn::readouts::{top_by_magnitude, LinearShap};

/// Features listed per class in `shap_summary.csv`.
const SUMMARY_TOP: usize = 25;

/// Writes both tables for the cells `cells` of `d`: `z` are their standardised inputs (all of
/// `d`'s cells, row-major), `weights` the model's [classes][features], `probs[j]` cell
/// `cells[j]`'s calibrated probabilities. The background is the training distribution, whose
/// standardised mean is 0 by construction.
pub fn write_shap(
    ctx: &Context,
    d: &Data,
    cells: &[usize],
    z: &[f32],
    weights: &[Vec<f32>],
    probs: &[Vec<f64>],
) -> anyhow::Result<()> {
    let f = d.feature_names.len();
    let nc = d.classes.len();
    let shap = LinearShap {
        weights,
        mean: vec![0.0; f],
    };
    let pred = argmax(probs);
    let mut sum_abs = vec![vec![0f64; f]; nc];
    let mut t = Table::new(&[
        "cell",
        "Metadata_Plate",
        "Metadata_Well",
        "predicted",
        "confidence",
        "feature_1",
        "shap_1",
        "feature_2",
        "shap_2",
        "feature_3",
        "shap_3",
    ]);
    for (j, &i) in cells.iter().enumerate() {
        let x = &z[i * f..(i + 1) * f];
        for (k, acc) in sum_abs.iter_mut().enumerate() {
            for (a, v) in acc.iter_mut().zip(shap.values(x, k)) {
                *a += v.abs();
            }
        }
        let k = pred[j];
        let mut row = vec![
            d.ids[i].clone(),
            d.origins[i].plate.clone(),
            d.origins[i].well.clone(),
            d.classes[k].clone(),
            num(probs[j][k]),
        ];
        for (feat, v) in top_by_magnitude(&shap.values(x, k), 3) {
            row.extend([d.feature_names[feat].clone(), num(v)]);
        }
        while row.len() < 11 {
            row.push(String::new());
        }
        t.push_row(row);
    }
    ctx.write_output("explanations.csv", &t.into_bytes())?;
    let mut s = Table::new(&["class", "feature", "mean_abs_shap", "rank"]);
    let n = cells.len().max(1) as f64;
    for (k, class) in d.classes.iter().enumerate() {
        let mean: Vec<f64> = sum_abs[k].iter().map(|v| v / n).collect();
        for (rank, (feat, v)) in top_by_magnitude(&mean, SUMMARY_TOP).into_iter().enumerate() {
            s.push_row([
                class.clone(),
                d.feature_names[feat].clone(),
                num(v),
                (rank + 1).to_string(),
            ]);
        }
    }
    ctx.write_output("shap_summary.csv", &s.into_bytes())
}
