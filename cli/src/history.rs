//! The models' history across runs, from the embedded database: `plateflow runs` lists every
//! run with the headline metrics of its `train` and `evaluate` steps, and `plateflow compare
//! A B` answers "did that change help?" — metric by metric, with each run's interval and an
//! interval for the difference from a paired bootstrap over plates (the same cells, scored by
//! both runs, resampled plate by plate).

use plateflow_contract::metrics::{Estimate, Metrics};
use plateflow_coordinator::db::{Db, RunModel};
use plateflow_learn::metrics::{bootstrap_by_group, Confusion, MIN_GROUPS_FOR_INTERVAL};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// A UTC timestamp as `YYYY-MM-DD HH:MM` (no time-zone crate needed for that).
fn utc(secs: f64) -> String {
    let s = secs as i64;
    let (days, rem) = (s.div_euclid(86_400), s.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The scores a run's model is listed and compared by.
#[derive(Debug, Clone, Copy)]
enum Score {
    WeightedF1,
    MacroF1,
    Accuracy,
    BalancedAccuracy,
    Ece,
    Brier,
}

impl Score {
    const ALL: [(&'static str, Score); 6] = [
        ("weighted F1", Score::WeightedF1),
        ("macro F1", Score::MacroF1),
        ("accuracy", Score::Accuracy),
        ("balanced accuracy", Score::BalancedAccuracy),
        ("ECE", Score::Ece),
        ("Brier", Score::Brier),
    ];

    /// The score with its interval where it has one (the F1s).
    fn of(self, m: Option<&Metrics>) -> Option<Estimate> {
        let s = m?.scores()?;
        let plain = |value: f64| Estimate {
            value,
            ci95_by_plate: [f64::NAN, f64::NAN],
        };
        Some(match self {
            Score::WeightedF1 => s.weighted_f1.clone(),
            Score::MacroF1 => s.macro_f1.clone(),
            Score::Accuracy => plain(s.accuracy),
            Score::BalancedAccuracy => plain(s.balanced_accuracy),
            Score::Ece => plain(s.ece_15_bins),
            Score::Brier => plain(s.brier),
        })
    }
}

fn value(m: Option<&Metrics>, score: Score) -> Option<f64> {
    score.of(m).map(|e| e.value).filter(|v| v.is_finite())
}

fn with_ci(m: Option<&Metrics>, score: Score) -> String {
    match score.of(m) {
        // Metrics written before intervals needed 3 plates may hold a degenerate [x, x].
        Some(e)
            if e.ci95_by_plate.iter().all(|x| x.is_finite())
                && e.ci95_by_plate[0] < e.ci95_by_plate[1] =>
        {
            let [lo, hi] = e.ci95_by_plate;
            format!("{:.3} [{lo:.3}, {hi:.3}]", e.value)
        }
        Some(e) if e.value.is_finite() => format!("{:.3} (< 3 plates: no CI)", e.value),
        _ => "—".into(),
    }
}

/// A run's stored metrics.json (`None` when it cannot be read as one).
fn parse(m: &RunModel) -> Option<Metrics> {
    serde_json::from_str(&m.metrics).ok()
}

/// `plateflow runs`: every run of the pipeline, newest last, with its models' scores.
pub fn list(db: &Db) -> anyhow::Result<String> {
    let mut out = String::new();
    let runs = db.run_list()?;
    if runs.is_empty() {
        return Ok("no runs yet\n".into());
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<16}  {:<11}  {:<22}  {:<22}  {:>8}  {:>6}  {:>8}",
        "run",
        "started (UTC)",
        "state",
        "model step",
        "weighted F1 [95% CI]",
        "macro F1",
        "ECE",
        "control"
    );
    for (id, _pipeline, state, started, _) in runs {
        let models = db.run_models(id)?;
        let first = format!("{id:>4}  {:<16}  {state:<11}", utc(started));
        if models.is_empty() {
            let _ = writeln!(out, "{first}  (no train or evaluate step)");
            continue;
        }
        for (k, model) in models.iter().enumerate() {
            let m = parse(model);
            let m = m.as_ref();
            let control = m.and_then(Metrics::control_f1).filter(|v| v.is_finite());
            let _ = writeln!(
                out,
                "{}  {:<22}  {:<22}  {:>8}  {:>6}  {:>8}",
                if k == 0 {
                    first.clone()
                } else {
                    " ".repeat(first.chars().count())
                },
                format!("{} ({})", model.label, model.kind),
                with_ci(m, Score::WeightedF1),
                value(m, Score::MacroF1).map_or("—".into(), |v| format!("{v:.3}")),
                value(m, Score::Ece).map_or("—".into(), |v| format!("{v:.3}")),
                control.map_or("—".into(), |v| format!("{v:.3}")),
            );
        }
    }
    let _ = writeln!(out, "\ncontrol: shuffled-label model (train) or chance (evaluate). Compare two runs with `plateflow compare <pipeline> A B`.");
    Ok(out)
}

/// Per-cell (group, truth, predicted) from a predictions.csv, keyed by cell id.
fn predictions(bytes: &[u8]) -> anyhow::Result<BTreeMap<String, (String, String, String)>> {
    let mut rdr = csv::Reader::from_reader(bytes);
    let h: Vec<String> = rdr.headers()?.iter().map(str::to_string).collect();
    let col = |n: &str| h.iter().position(|c| c == n);
    let (cell, truth, pred) = (col("cell"), col("truth"), col("predicted"));
    let (Some(cell), Some(truth), Some(pred)) = (cell, truth, pred) else {
        anyhow::bail!("predictions.csv without cell, truth and predicted columns");
    };
    let group = 1; // written by train and evaluate right after `cell`
    let mut out = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec?;
        let t = rec.get(truth).unwrap_or("");
        if t.is_empty() {
            continue;
        }
        out.insert(
            rec.get(cell).unwrap_or("").to_string(),
            (
                rec.get(group).unwrap_or("").to_string(),
                t.to_string(),
                rec.get(pred).unwrap_or("").to_string(),
            ),
        );
    }
    Ok(out)
}

/// Weighted F1 of run B minus run A on the cells both scored, and its 95 % interval from
/// resampling plates (paired: each resample scores the same cells in both runs).
/// The paired difference: (point estimate, 95 % interval, cells compared).
type Paired = (f64, (f64, f64), usize);

fn paired_difference(a: &[u8], b: &[u8]) -> anyhow::Result<Option<Paired>> {
    let (pa, pb) = (predictions(a)?, predictions(b)?);
    let common: Vec<&String> = pa.keys().filter(|k| pb.contains_key(*k)).collect();
    if common.is_empty() {
        return Ok(None);
    }
    let mut classes: Vec<String> = Vec::new();
    let mut index = |c: &str| -> usize {
        match classes.iter().position(|x| x == c) {
            Some(i) => i,
            None => {
                classes.push(c.to_string());
                classes.len() - 1
            }
        }
    };
    let mut groups = Vec::new();
    let (mut truth, mut pred_a, mut pred_b) = (Vec::new(), Vec::new(), Vec::new());
    for k in &common {
        let (g, t, p) = &pa[*k];
        groups.push(g.clone());
        truth.push(index(t));
        pred_a.push(index(p));
        pred_b.push(index(&pb[*k].2));
    }
    let nc = classes.len();
    let diff = |idx: &[usize]| {
        let t: Vec<usize> = idx.iter().map(|&i| truth[i]).collect();
        let a: Vec<usize> = idx.iter().map(|&i| pred_a[i]).collect();
        let b: Vec<usize> = idx.iter().map(|&i| pred_b[i]).collect();
        Confusion::new(nc, &t, &b).weighted_f1() - Confusion::new(nc, &t, &a).weighted_f1()
    };
    let all: Vec<usize> = (0..common.len()).collect();
    let point = diff(&all);
    let ci = bootstrap_by_group(&groups, 1000, 7, diff);
    Ok(Some((point, ci, common.len())))
}

/// One line on the paired difference: a verdict only when its interval rests on at least
/// [`MIN_GROUPS_FOR_INTERVAL`] plates scored by both runs.
fn paired_verdict(paired: Option<Paired>, run_b: u64) -> String {
    match paired {
        Some((d, (lo, hi), cells)) if lo.is_nan() || hi.is_nan() => format!(
            "weighted F1 difference on {cells} cells: {d:+.3}; no verdict: a paired interval needs at least {MIN_GROUPS_FOR_INTERVAL} plates scored by both runs"
        ),
        Some((d, (lo, hi), cells)) => {
            let verdict = if lo > 0.0 {
                format!("run {run_b} is better: the whole interval is above 0")
            } else if hi < 0.0 {
                format!("run {run_b} is worse: the whole interval is below 0")
            } else {
                "no clear difference: the interval includes 0".into()
            };
            format!("weighted F1 difference, paired by plate on {cells} cells: {d:+.3} [95% CI {lo:+.3}, {hi:+.3}] — {verdict}")
        }
        None => "(no cells scored by both runs: no paired interval)".into(),
    }
}

/// What differs between two parameter sets: `key: a → b` lines.
fn param_changes(a: &str, b: &str) -> Vec<String> {
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(a).unwrap_or_default(),
        serde_json::from_str(b).unwrap_or_default(),
    );
    let mut keys: Vec<&String> = a.as_object().into_iter().flat_map(|o| o.keys()).collect();
    keys.extend(b.as_object().into_iter().flat_map(|o| o.keys()));
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !k.starts_with('_') && a[k.as_str()] != b[k.as_str()])
        .map(|k| format!("{k}: {} → {}", a[k.as_str()], b[k.as_str()]))
        .collect()
}

/// `plateflow compare A B`: each model step in both runs, metric by metric.
pub fn compare(db: &Db, store: &Path, run_a: u64, run_b: u64) -> anyhow::Result<String> {
    let store = plateflow_store::BlobStore::open(store)?;
    let (ma, mb) = (db.run_models(run_a)?, db.run_models(run_b)?);
    anyhow::ensure!(
        !ma.is_empty(),
        "run {run_a} has no train or evaluate results (see `plateflow runs`)"
    );
    anyhow::ensure!(
        !mb.is_empty(),
        "run {run_b} has no train or evaluate results (see `plateflow runs`)"
    );
    let mut out = String::new();
    let _ = writeln!(out, "run {run_a} → run {run_b}");
    for a in &ma {
        let Some(b) = mb.iter().find(|m| m.label == a.label) else {
            let _ = writeln!(out, "\n{}: only in run {run_a}", a.label);
            continue;
        };
        let (ja, jb) = (parse(a), parse(b));
        let (ja, jb) = (ja.as_ref(), jb.as_ref());
        let _ = writeln!(out, "\n{} ({})", a.label, a.kind);
        if a.metrics == b.metrics && a.params == b.params {
            let _ = writeln!(
                out,
                "  same parameters, same data, same result (weighted F1 {})",
                with_ci(ja, Score::WeightedF1)
            );
            continue;
        }
        let changes = param_changes(&a.params, &b.params);
        let _ = writeln!(
            out,
            "  parameters: {}",
            if changes.is_empty() {
                "unchanged (the data or plateflow changed)".into()
            } else {
                changes.join("; ")
            }
        );
        let _ = writeln!(
            out,
            "  {:<20} {:<24} {:<24} difference",
            "metric",
            format!("run {run_a}"),
            format!("run {run_b}"),
        );
        for (name, key) in Score::ALL {
            let d = match (value(ja, key), value(jb, key)) {
                (Some(x), Some(y)) => format!("{:+.3}", y - x),
                _ => "—".into(),
            };
            let _ = writeln!(
                out,
                "  {name:<20} {:<24} {:<24} {d}",
                with_ci(ja, key),
                with_ci(jb, key)
            );
        }
        let paired = match (&a.predictions, &b.predictions) {
            (Some(da), Some(dbb)) => {
                paired_difference(&store.read_verified(da)?, &store.read_verified(dbb)?)?
            }
            _ => None,
        };
        let _ = writeln!(out, "  {}", paired_verdict(paired, run_b));
    }
    for b in mb.iter().filter(|b| !ma.iter().any(|a| a.label == b.label)) {
        let _ = writeln!(out, "\n{}: only in run {run_b}", b.label);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_parameter_changes() {
        assert_eq!(utc(0.0), "1970-01-01 00:00");
        assert_eq!(utc(1_795_660_000.0), "2026-11-26 02:26");
        let c = param_changes(
            r#"{"epochs":6,"_step":"cnn","model":"cnn"}"#,
            r#"{"epochs":10,"_step":"cnn","model":"cnn"}"#,
        );
        assert_eq!(c, vec!["epochs: 6 → 10"]);
    }

    #[test]
    fn the_paired_difference_sees_an_improvement_on_every_plate() {
        let mut a = String::from("cell,plate,well,truth,predicted\n");
        let mut b = a.clone();
        for p in 0..6 {
            for i in 0..20 {
                let truth = if i % 2 == 0 { "x" } else { "y" };
                // Run A gets 12 of 20 right on each plate, run B 18 of 20.
                let wrong = |limit: usize| {
                    if i < limit {
                        if truth == "x" {
                            "y"
                        } else {
                            "x"
                        }
                    } else {
                        truth
                    }
                };
                let _ = writeln!(a, "P{p}#{i},P{p},A01,{truth},{}", wrong(8));
                let _ = writeln!(b, "P{p}#{i},P{p},A01,{truth},{}", wrong(2));
            }
        }
        let (d, (lo, hi), cells) = paired_difference(a.as_bytes(), b.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(cells, 120);
        assert!(d > 0.25 && lo > 0.0 && hi >= d, "{d} [{lo}, {hi}]");
        let (d0, (lo0, hi0), _) = paired_difference(a.as_bytes(), a.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!((d0, lo0, hi0), (0.0, 0.0, 0.0));
        let line = paired_verdict(Some((d, (lo, hi), cells)), 2);
        assert!(line.contains("run 2 is better"), "{line}");
        // One plate: the difference, and no verdict.
        let one = |t: &str| {
            t.lines()
                .filter(|l| !l.contains(",P") || l.contains(",P0,"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let single = paired_difference(one(&a).as_bytes(), one(&b).as_bytes()).unwrap();
        let line = paired_verdict(single, 2);
        assert!(
            line.contains("no verdict") && !line.contains("better"),
            "{line}"
        );
    }
}
