//! `report`: one self-contained HTML page for the run, from the outputs of the upstream
//! `curate`, `train` and `evaluate` tasks (QC summary and heat maps; per model: metrics with
//! intervals, confusion matrix, per-plate scores, learning curves, reliability diagrams,
//! coefficients, saliency overlays and montages). The page itself is drawn by the
//! `plateflow-report` crate; this step only gathers.

use super::Context;
use anyhow::Context as _;
use plateflow_contract::metrics::{Estimate, Metrics};
use plateflow_contract::params::ReportParams;
use plateflow_report::{
    Coefficient, Curve, Exclusion, GroupScore, Metric, ModelSection, PlateSegmentation, PngFigure,
    QcSummary, Reliability, ReliabilityBin, Report, SegmentationSection, SvgFigure,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An upstream task's outputs: name → path.
type Outputs = BTreeMap<String, PathBuf>;

fn read_csv(path: &Path) -> anyhow::Result<(Vec<String>, Vec<csv::StringRecord>)> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let header = rdr.headers()?.iter().map(str::to_string).collect();
    let rows = rdr.records().collect::<Result<Vec<_>, _>>()?;
    Ok((header, rows))
}

fn column(header: &[String], name: &str) -> Option<usize> {
    header.iter().position(|h| h == name)
}

fn f(rec: &csv::StringRecord, c: Option<usize>) -> f64 {
    c.and_then(|c| rec.get(c))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn json(path: &Path) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))
}

fn qc_summary(tasks: &BTreeMap<String, Outputs>) -> anyhow::Result<Option<QcSummary>> {
    let mut qc = QcSummary::default();
    let mut any = false;
    for outputs in tasks.values() {
        let Some(q) = outputs.get("qc.csv") else {
            continue;
        };
        any = true;
        let (h, rows) = read_csv(q)?;
        let set = column(&h, "ImageSet");
        let sets: std::collections::BTreeSet<&str> = rows
            .iter()
            .filter_map(|r| set.and_then(|c| r.get(c)))
            .collect();
        qc.images += sets.len();
        if let Some(e) = outputs.get("exclusions.csv") {
            let (h, rows) = read_csv(e)?;
            let (s, r) = (column(&h, "set"), column(&h, "reason"));
            for row in rows {
                qc.excluded.push(Exclusion {
                    image_set: s.and_then(|c| row.get(c)).unwrap_or("").to_string(),
                    reason: r.and_then(|c| row.get(c)).unwrap_or("").to_string(),
                });
            }
        }
        // One heat map per plate: focus of the first channel, where blur shows.
        if let Some((name, path)) = outputs
            .iter()
            .filter(|(n, _)| n.starts_with("heatmaps/") && n.contains("_PowerLogLogSlope_"))
            .min_by_key(|(n, _)| n.as_str())
        {
            qc.heatmaps.push(SvgFigure {
                title: name
                    .trim_start_matches("heatmaps/")
                    .trim_end_matches(".svg")
                    .replace('_', " "),
                svg: std::fs::read_to_string(path)?,
                ..SvgFigure::default()
            });
        }
    }
    Ok(any.then_some(qc))
}

fn section(name: &str, outputs: &Outputs) -> anyhow::Result<Option<ModelSection>> {
    let Some(path) = outputs.get("metrics.json") else {
        return Ok(None);
    };
    let m: Metrics = serde_json::from_value(json(path)?)
        .with_context(|| format!("{}: not a plateflow metrics.json", path.display()))?;
    let is_train = matches!(m, Metrics::Train(_));
    let mut s = ModelSection {
        name: name.to_string(),
        what: match &m {
            Metrics::Train(t) => t.split.protocol.clone(),
            Metrics::Evaluation(e) => e.what.clone(),
        },
        model: m.model().to_string(),
        leaky: matches!(&m, Metrics::Train(t) if t.split.leaky),
        classes: m.classes().to_vec(),
        ..ModelSection::default()
    };
    let Some(sc) = m.scores() else {
        let cells = match &m {
            Metrics::Evaluation(e) => e.cells,
            Metrics::Train(t) => t.cells,
        };
        s.metrics.push(Metric {
            name: "cells scored".into(),
            value: cells as f64,
            ci95: None,
            note: "no labels: predictions only".into(),
            ..Metric::default()
        });
        return Ok(Some(s));
    };
    if let Metrics::Train(t) = &m {
        s.data_notes = t
            .classes_mostly_in_one_group
            .iter()
            .map(|k| k.note.clone())
            .collect();
    }
    let plain = |name: &str, value: f64, note: &str| Metric {
        name: name.into(),
        value,
        ci95: None,
        note: note.into(),
        ..Metric::default()
    };
    // `[null, null]` means too few plates to resample; so does a zero-width interval from
    // fewer than 3 plates (what older runs wrote): both are shown as "no interval", never
    // as "0.901 [0.901, 0.901]".
    let plates = sc.per_group.len();
    let estimate = |name: &str, e: &Estimate, note: &str| {
        let [lo, hi] = e.ci95_by_plate;
        let real = lo.is_finite() && hi.is_finite() && !(lo == hi && plates < 3);
        Metric {
            name: name.into(),
            value: e.value,
            ci95: real.then_some((lo, hi)),
            no_interval: if real {
                String::new()
            } else {
                "fewer than 3 plates".into()
            },
            note: note.into(),
        }
    };
    s.metrics.push(estimate(
        "weighted F1",
        &sc.weighted_f1,
        "95 % interval from resampling whole plates",
    ));
    s.metrics.push(estimate(
        "macro F1",
        &sc.macro_f1,
        "every class counts the same",
    ));
    s.metrics.push(plain("accuracy", sc.accuracy, ""));
    s.metrics
        .push(plain("balanced accuracy", sc.balanced_accuracy, ""));
    if is_train {
        s.metrics.push(plain(
            "shuffled-label control, weighted F1",
            m.control_f1().unwrap_or(f64::NAN),
            "the same training on shuffled labels: the level of learning nothing",
        ));
    } else {
        s.metrics.push(plain(
            "chance, weighted F1",
            m.control_f1().unwrap_or(f64::NAN),
            "these predictions against shuffled labels",
        ));
    }
    let cal = &sc.calibration;
    s.metrics.push(plain(
        "ECE before calibration",
        cal.ece_before,
        "expected calibration error, 15 bins",
    ));
    s.metrics.push(plain(
        "ECE after temperature scaling",
        cal.ece_after,
        &format!("T = {:.2}", cal.temperature),
    ));
    s.metrics.push(plain("Brier after", cal.brier_after, ""));
    s.confusion = sc
        .confusion
        .iter()
        .map(|row| row.iter().map(|&v| v as u64).collect())
        .collect();
    for g in &sc.per_group {
        s.per_group.push(GroupScore {
            group: g.group.clone(),
            cells: g.cells,
            weighted_f1: g.weighted_f1,
            accuracy: g.accuracy,
            ci95: None,
        });
    }
    if let Some(c) = outputs.get("curves.csv") {
        let (h, rows) = read_csv(c)?;
        let (fold, tl, vl, vf, kept) = (
            column(&h, "fold"),
            column(&h, "train_loss"),
            column(&h, "val_loss"),
            column(&h, "val_weighted_f1"),
            column(&h, "kept"),
        );
        let mut by_fold: BTreeMap<String, Curve> = BTreeMap::new();
        for r in &rows {
            let key = fold.and_then(|c| r.get(c)).unwrap_or("").to_string();
            let curve = by_fold.entry(key.clone()).or_insert_with(|| Curve {
                label: format!("fold {key}"),
                ..Curve::default()
            });
            if kept.and_then(|c| r.get(c)) == Some("1") {
                curve.best_epoch = Some(curve.train_loss.len());
            }
            curve.train_loss.push(f(r, tl));
            curve.val_loss.push(f(r, vl));
            curve.val_f1.push(f(r, vf));
        }
        s.curves = by_fold.into_values().collect();
    }
    if let Some(r) = outputs.get("reliability.csv") {
        let (h, rows) = read_csv(r)?;
        let c = |n: &str| column(&h, n);
        for (series, label, ece) in [
            (
                "before",
                "before temperature scaling".to_string(),
                cal.ece_before,
            ),
            (
                "after",
                format!("after temperature scaling (T = {:.2})", cal.temperature),
                cal.ece_after,
            ),
        ] {
            let bins: Vec<ReliabilityBin> = rows
                .iter()
                .filter(|r| c("series").and_then(|i| r.get(i)) == Some(series))
                .map(|r| ReliabilityBin {
                    lo: f(r, c("lo")),
                    hi: f(r, c("hi")),
                    confidence: f(r, c("confidence")),
                    accuracy: f(r, c("accuracy")),
                    count: f(r, c("count")) as usize,
                })
                .collect();
            s.reliability.push(Reliability { label, ece, bins });
        }
    }
    if let Some(c) = outputs.get("coefficients.csv") {
        let (h, rows) = read_csv(c)?;
        for r in rows.iter().take(20) {
            let get = |n: &str| {
                column(&h, n)
                    .and_then(|i| r.get(i))
                    .unwrap_or("")
                    .to_string()
            };
            s.coefficients.push(Coefficient {
                feature: get("feature"),
                family: get("family"),
                channel: get("channel"),
                importance: get("importance").parse().unwrap_or(f64::NAN),
            });
        }
    }
    if let Some(i) = outputs.get("interpretation.json") {
        let interp = json(i)?;
        let sanity = &interp["sanity_check"];
        s.metrics.push(Metric {
            name: "saliency sanity check (Spearman, trained vs random weights)".into(),
            value: sanity["mean_spearman"].as_f64().unwrap_or(f64::NAN),
            ci95: None,
            note: if sanity["passed"] == true {
                "low: the maps depend on what the model learnt".into()
            } else {
                "HIGH: the maps barely depend on the weights; do not read them".into()
            },
            ..Metric::default()
        });
        for c in interp["classes"].as_array().into_iter().flatten() {
            let (class, stem) = (
                c["class"].as_str().unwrap_or(""),
                c["file_stem"].as_str().unwrap_or(""),
            );
            if let Some(p) = outputs.get(&format!("figures/saliency_{stem}.png")) {
                s.figures.push(PngFigure {
                    title: format!("What the model looks at: {class}"),
                    caption: format!("Cells of class {class} classified correctly with the highest confidence, one per row: the crop (magenta DNA, green second channel), then gradient × input, SmoothGrad and Grad-CAM; bright = pixels that raise the {class} score."),
                    png: std::fs::read(p)?,
                });
            }
            if let Some(p) = outputs.get(&format!("figures/montage_{stem}.png")) {
                s.figures.push(PngFigure {
                    title: format!("Most and least confident: {class}"),
                    caption: format!("Cells predicted as {class} on plates the model did not train on: top row the most confident, bottom row the least. Look for artefacts or mislabelled wells among the confident ones."),
                    png: std::fs::read(p)?,
                });
            }
        }
    }
    Ok(Some(s))
}

/// Upstream `segment` tasks' summaries and outlines, and `illumination` tasks' fields.
fn segmentation_section(
    tasks: &BTreeMap<String, Outputs>,
) -> anyhow::Result<Option<SegmentationSection>> {
    let mut seg = SegmentationSection::default();
    for (task, outputs) in tasks {
        if let Some(path) = outputs.get("segmentation.json") {
            let j = json(path)?;
            let q = |k: &str| -> [f64; 3] {
                ["p25", "median", "p75"].map(|n| j[k][n].as_f64().unwrap_or(f64::NAN))
            };
            seg.plates.push(PlateSegmentation {
                task: task.clone(),
                method: match j["model"].as_str() {
                    Some(m) => format!("learned ({m})"),
                    None => j["method"].as_str().unwrap_or("classic").to_string(),
                },
                fields: j["fields"].as_u64().unwrap_or(0) as usize,
                objects_per_field: q("objects_per_field"),
                area: q("nucleus_area_px"),
                touching_border_fraction: j["touching_border_fraction"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            });
        }
        for (name, path) in outputs {
            if let Some(stem) = name
                .strip_prefix("outlines/")
                .and_then(|n| n.strip_suffix(".png"))
            {
                seg.outlines.push(PngFigure {
                    title: format!("{task}: {stem}"),
                    caption: if stem.contains("qc-worst") {
                        "Among the fields QC ranks worst that were still segmented: check the outlines hold here.".into()
                    } else {
                        "A typical field.".into()
                    },
                    png: std::fs::read(path)?,
                });
            }
            if let Some(ch) = name
                .strip_prefix("illumination/")
                .and_then(|n| n.strip_suffix(".png"))
            {
                seg.illumination.push(PngFigure {
                    title: format!("{task}: {ch}"),
                    caption: "Illumination field (stretched from its minimum to its maximum)."
                        .into(),
                    png: std::fs::read(path)?,
                });
            }
        }
    }
    let any = !seg.plates.is_empty() || !seg.illumination.is_empty();
    Ok(any.then_some(seg))
}

pub fn run(ctx: &mut Context, params: &ReportParams) -> anyhow::Result<()> {
    let mut tasks: BTreeMap<String, Outputs> = BTreeMap::new();
    for (task, name, rel) in ctx.upstream {
        tasks
            .entry(task.clone())
            .or_default()
            .insert(name.clone(), ctx.work.join(rel));
    }
    anyhow::ensure!(
        !tasks.is_empty(),
        "`report` has nothing to show: put the `curate`, `train` and `evaluate` steps in `after:`"
    );
    let title = params
        .title
        .clone()
        .unwrap_or_else(|| "plateflow run report".into());
    let mut report = Report {
        title,
        subtitle: format!(
            "step `{}`, plateflow {}",
            ctx.task.step,
            env!("CARGO_PKG_VERSION")
        ),
        qc: qc_summary(&tasks)?,
        segmentation: segmentation_section(&tasks)?,
        ..Report::default()
    };
    for (task, outputs) in &tasks {
        if let Some(s) = section(task, outputs)? {
            if s.leaky {
                report.notes.push(format!("{task}: cells were split at random (leaky): its scores overstate accuracy on new plates."));
            }
            report.models.push(s);
        }
    }
    // Models first, then their evaluations on held-out plates.
    report
        .models
        .sort_by_key(|s| (s.what.starts_with("evaluation"), s.name.clone()));
    report.notes.push("Intervals are 95 % bootstrap intervals over plates: cells of one plate share its batch effects, so resampling cells would make them too narrow.".into());
    report.notes.push("Every score is on plates the model never saw in training; temperatures were fitted on validation plates, never on the plates scored.".into());
    ctx.logln(format!(
        "report: {} model sections, QC {}",
        report.models.len(),
        if report.qc.is_some() {
            "included"
        } else {
            "absent (no curate step upstream)"
        }
    ));
    ctx.write_output("report.html", plateflow_report::render(&report).as_bytes())
}
