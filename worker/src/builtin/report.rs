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
    Coefficient, Curve, DoseFit, DosePoint, Exclusion, Fraction, GroupScore, LabelQcWell, Metric,
    ModelSection, PlateSegmentation, PngFigure, QcSummary, Readout, ReadoutZprime, Reliability,
    ReliabilityBin, Report, SegmentationSection, ShapFeature, SvgFigure, Tile, TileFigure, TileRow,
    TreatmentReadout, WellReadout, ZprimeTable,
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
    super::read_json(path)
}

fn qc_summary(tasks: &BTreeMap<String, Outputs>) -> anyhow::Result<Option<QcSummary>> {
    let mut qc = QcSummary::default();
    let mut any = false;
    for (task, outputs) in tasks {
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
            if let Some(p) = task_field(task, "plate") {
                *qc.excluded_per_plate.entry(p).or_default() += rows.len();
            }
            for row in rows {
                qc.excluded.push(Exclusion {
                    image_set: s.and_then(|c| row.get(c)).unwrap_or("").to_string(),
                    reason: r.and_then(|c| row.get(c)).unwrap_or("").to_string(),
                });
            }
        }
        // Every heat map (each plate × measure × channel), laid out as a grid: a row per
        // measure and channel, a column per plate.
        let plate = task_field(task, "plate");
        for (name, path) in outputs.iter().filter(|(n, _)| n.starts_with("heatmaps/")) {
            let stem = name
                .trim_start_matches("heatmaps/")
                .trim_end_matches(".svg")
                .to_string();
            let (column, measure) = match plate.as_deref().and_then(|p| {
                stem.strip_prefix(p)
                    .and_then(|r| r.strip_prefix('_'))
                    .map(|r| (p.to_string(), r.to_string()))
            }) {
                Some(pm) => pm,
                None => match stem.split_once('_') {
                    Some((p, m)) => (p.to_string(), m.to_string()),
                    None => (task.clone(), stem.clone()),
                },
            };
            qc.heatmaps.push(SvgFigure {
                title: stem.replace('_', " "),
                svg: std::fs::read_to_string(path)?,
                row: measure.replace('_', " "),
                column,
            });
        }
    }
    Ok(any.then_some(qc))
}

/// The value of `field` in a task name like `qc[plate=P1]`.
fn task_field(task: &str, field: &str) -> Option<String> {
    let inner = task.split_once('[')?.1.strip_suffix(']')?;
    inner.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == field).then(|| v.trim().to_string())
    })
}

/// A cell of a CSV row by column name ("" where absent).
fn cell<'a>(h: &[String], r: &'a csv::StringRecord, name: &str) -> &'a str {
    column(h, name).and_then(|c| r.get(c)).unwrap_or("")
}

fn num(h: &[String], r: &csv::StringRecord, name: &str) -> f64 {
    cell(h, r, name).trim().parse().unwrap_or(f64::NAN)
}

/// An interval from two columns, where both are numbers.
fn interval(h: &[String], r: &csv::StringRecord, lo: &str, hi: &str) -> Option<(f64, f64)> {
    let (a, b) = (num(h, r, lo), num(h, r, hi));
    (a.is_finite() && b.is_finite()).then_some((a, b))
}

/// The features step's `zprime.csv` (per feature; curate's per-plate-map one has no
/// `feature` column and is left out).
fn zprime_tables(tasks: &BTreeMap<String, Outputs>) -> anyhow::Result<Vec<ZprimeTable>> {
    let mut out = Vec::new();
    for (task, outputs) in tasks {
        let Some(p) = outputs.get("zprime.csv") else {
            continue;
        };
        let (h, rows) = read_csv(p)?;
        if h.first().map(String::as_str) != Some("feature") || column(&h, "z_prime").is_none() {
            continue;
        }
        out.push(ZprimeTable {
            task: task.clone(),
            columns: h,
            rows: rows
                .iter()
                .map(|r| r.iter().map(str::to_string).collect())
                .collect(),
        });
    }
    Ok(out)
}

/// `label_qc.csv` as `train` writes it (curate's, about the plate map, has other columns).
fn label_qc(tasks: &BTreeMap<String, Outputs>) -> anyhow::Result<Vec<LabelQcWell>> {
    let mut out = Vec::new();
    for (task, outputs) in tasks {
        let Some(p) = outputs.get("label_qc.csv") else {
            continue;
        };
        let (h, rows) = read_csv(p)?;
        if column(&h, "flagged").is_none() || column(&h, "p_value").is_none() {
            continue;
        }
        for r in &rows {
            out.push(LabelQcWell {
                source: task.clone(),
                plate: cell(&h, r, "Metadata_Plate").to_string(),
                well: cell(&h, r, "Metadata_Well").to_string(),
                label: cell(&h, r, "label").to_string(),
                cells: num(&h, r, "cells").max(0.0) as usize,
                agreeing: num(&h, r, "agreeing").max(0.0) as usize,
                expected_agreeing: num(&h, r, "expected_agreeing"),
                predicted_mostly: cell(&h, r, "predicted_mostly").to_string(),
                p_value: num(&h, r, "p_value"),
                flagged: matches!(
                    cell(&h, r, "flagged").trim().to_ascii_lowercase().as_str(),
                    "true" | "1" | "yes"
                ),
            });
        }
    }
    Ok(out)
}

/// Each class's `<prefix><class>` column with its `_lo`/`_hi` interval, in class order.
fn fractions(
    h: &[String],
    row: &csv::StringRecord,
    classes: &[String],
    prefix: &str,
) -> Vec<Fraction> {
    classes
        .iter()
        .map(|c| {
            let col = format!("{prefix}{c}");
            Fraction {
                value: num(h, row, &col),
                ci95: interval(h, row, &format!("{col}_lo"), &format!("{col}_hi")),
            }
        })
        .collect()
}

/// A task's per-well readout: `well_readout.csv`, `dose_response.csv` (its points from the
/// well readout, or for a features task from `wells.csv`: the median per well against the
/// dose column) and `readout_zprime.csv`. `None` where the task wrote none of them.
fn readout(task: &str, outputs: &Outputs) -> anyhow::Result<Option<Readout>> {
    let mut r = Readout {
        name: task.to_string(),
        ..Readout::default()
    };
    let mut table: Option<(Vec<String>, Vec<csv::StringRecord>)> = None;
    if let Some(p) = outputs.get("well_readout.csv") {
        let (h, rows) = read_csv(p)?;
        r.classes = h
            .iter()
            .filter_map(|c| c.strip_prefix("fraction_"))
            .filter(|c| !c.ends_with("_lo") && !c.ends_with("_hi"))
            .map(str::to_string)
            .collect();
        for row in &rows {
            let dose = num(&h, row, "dose");
            r.wells.push(WellReadout {
                plate: cell(&h, row, "Metadata_Plate").to_string(),
                well: cell(&h, row, "Metadata_Well").to_string(),
                label: cell(&h, row, "label").to_string(),
                dose: dose.is_finite().then_some(dose),
                control: cell(&h, row, "control").to_string(),
                cells: num(&h, row, "cells").max(0.0) as usize,
                fractions: fractions(&h, row, &r.classes, "fraction_"),
            });
        }
        table = Some((h, rows));
    }
    if let Some(p) = outputs.get("treatment_readout.csv") {
        let (h, rows) = read_csv(p)?;
        for row in &rows {
            r.treatments.push(TreatmentReadout {
                treatment: cell(&h, row, "treatment").to_string(),
                dose: cell(&h, row, "dose").to_string(),
                wells: num(&h, row, "wells").max(0.0) as usize,
                cells: num(&h, row, "cells").max(0.0) as usize,
                fractions: fractions(&h, row, &r.classes, "mean_fraction_"),
                note: cell(&h, row, "note").to_string(),
            });
        }
    }
    if let Some(p) = outputs.get("dose_response.csv") {
        let (h, rows) = read_csv(p)?;
        // Where the points come from: the well readout, or the features step's wells.csv.
        let wells = match &table {
            Some(_) => None,
            None => match outputs.get("wells.csv") {
                Some(w) => Some(read_csv(w)?),
                None => None,
            },
        };
        for row in &rows {
            let readout = cell(&h, row, "readout").to_string();
            let plate = cell(&h, row, "Metadata_Plate").to_string();
            let treatment = cell(&h, row, "Metadata_Treatment").to_string();
            let same_plate = |p: &str| plate.is_empty() || plate == "all" || p == plate;
            // A fit per plate and treatment draws only its treatment's wells.
            let same_series = |wh: &[String], w: &csv::StringRecord| {
                same_plate(cell(wh, w, "Metadata_Plate"))
                    && (treatment.is_empty()
                        || plateflow_contract::platemap::treatment_column_of(wh)
                            .is_some_and(|c| w.get(c).map(str::trim) == Some(&treatment)))
            };
            let mut points = Vec::new();
            if let Some((wh, wr)) = &table {
                // `fraction_<c>` or the class name itself.
                let col = if column(wh, &readout).is_some() {
                    readout.clone()
                } else {
                    format!("fraction_{readout}")
                };
                for w in wr.iter().filter(|w| same_series(wh, w)) {
                    points.push(DosePoint {
                        well: format!(
                            "{} {}",
                            cell(wh, w, "Metadata_Plate"),
                            cell(wh, w, "Metadata_Well")
                        ),
                        dose: num(wh, w, "dose"),
                        value: num(wh, w, &col),
                        ci95: interval(wh, w, &format!("{col}_lo"), &format!("{col}_hi")),
                    });
                }
            } else if let Some((wh, wr)) = &wells {
                let dose_col = wh
                    .iter()
                    .find(|c| {
                        let l = c.to_ascii_lowercase();
                        l.starts_with("metadata_") && (l.contains("dose") || l.contains("conc"))
                    })
                    .cloned();
                if let Some(dc) = dose_col {
                    for w in wr.iter().filter(|w| same_series(wh, w)) {
                        points.push(DosePoint {
                            well: format!(
                                "{} {}",
                                cell(wh, w, "Metadata_Plate"),
                                cell(wh, w, "Metadata_Well")
                            ),
                            dose: num(wh, w, &dc),
                            value: num(wh, w, &readout),
                            ci95: None,
                        });
                    }
                }
            }
            r.dose_response.push(DoseFit {
                readout,
                // Shown as the series: the plate, and the treatment where fits are per
                // treatment.
                plate: if treatment.is_empty() {
                    plate
                } else {
                    format!("{plate}, {treatment}")
                },
                ec50: num(&h, row, "ec50"),
                ec50_ci95: interval(&h, row, "ec50_lo", "ec50_hi"),
                hill: num(&h, row, "hill"),
                bottom: num(&h, row, "bottom"),
                top: num(&h, row, "top"),
                wells: num(&h, row, "wells").max(0.0) as usize,
                doses: num(&h, row, "doses").max(0.0) as usize,
                status: cell(&h, row, "status").to_string(),
                points,
            });
        }
    }
    if let Some(p) = outputs.get("readout_zprime.csv") {
        let (h, rows) = read_csv(p)?;
        for row in &rows {
            r.zprime.push(ReadoutZprime {
                readout: cell(&h, row, "readout").to_string(),
                plate: cell(&h, row, "Metadata_Plate").to_string(),
                z_prime: num(&h, row, "z_prime"),
                positive_wells: num(&h, row, "positive_wells").max(0.0) as usize,
                negative_wells: num(&h, row, "negative_wells").max(0.0) as usize,
                mean_positive: num(&h, row, "mean_positive"),
                mean_negative: num(&h, row, "mean_negative"),
                note: cell(&h, row, "note").to_string(),
            });
        }
    }
    let any = !r.wells.is_empty()
        || !r.treatments.is_empty()
        || !r.dose_response.is_empty()
        || !r.zprime.is_empty();
    Ok(any.then_some(r))
}

/// Every `explanations.csv` upstream: cell id → its top features with their SHAP values.
type Explanations = BTreeMap<String, Vec<(String, f64)>>;

fn explanations(tasks: &BTreeMap<String, Outputs>) -> anyhow::Result<Explanations> {
    let mut out = Explanations::new();
    for outputs in tasks.values() {
        let Some(p) = outputs.get("explanations.csv") else {
            continue;
        };
        let (h, rows) = read_csv(p)?;
        for r in &rows {
            let feats = (1..=3)
                .filter_map(|k| {
                    let f = cell(&h, r, &format!("feature_{k}"));
                    let v = num(&h, r, &format!("shap_{k}"));
                    (!f.is_empty() && v.is_finite()).then(|| (f.to_string(), v))
                })
                .collect();
            out.insert(cell(&h, r, "cell").to_string(), feats);
        }
    }
    Ok(out)
}

/// Caption lines for a cell described in `interpretation.json`: plate and well, then the
/// predicted class with its confidence (and the label where it differs).
fn cell_caption(c: &serde_json::Value) -> Vec<String> {
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    let mut lines = vec![format!("{} · {}", s("plate"), s("well"))];
    let mut called = format!(
        "{} {:.2}",
        s("predicted"),
        c["confidence"].as_f64().unwrap_or(f64::NAN)
    );
    if !s("truth").is_empty() && s("truth") != s("predicted") {
        called.push_str(&format!(" (label {})", s("truth")));
    }
    lines.push(called);
    lines
}

/// Cuts the tiles of a grid figure (as `plateflow_learn::figures::grid` lays them out) out of
/// its PNG and captions each from `interpretation.json`'s description of the figure.
fn tile_figure(
    outputs: &Outputs,
    spec: &serde_json::Value,
    title: String,
    caption: String,
    why: &Explanations,
) -> anyhow::Result<Option<TileFigure>> {
    let Some(path) = spec["file"].as_str().and_then(|f| outputs.get(f)) else {
        return Ok(None);
    };
    let img = plateflow_learn::figures::decode_png(&std::fs::read(path)?)?;
    let (tw, th, gap) = (
        spec["tile_width"].as_u64().unwrap_or(0) as usize,
        spec["tile_height"].as_u64().unwrap_or(0) as usize,
        spec["gap"].as_u64().unwrap_or(0) as usize,
    );
    anyhow::ensure!(tw > 0 && th > 0, "{}: no tile size", path.display());
    let at = |r: usize, c: usize| -> anyhow::Result<Vec<u8>> {
        img.crop(gap + c * (tw + gap), gap + r * (th + gap), tw, th)
            .png()
    };
    let mut fig = TileFigure {
        title,
        caption,
        columns: spec["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect(),
        rows: Vec::new(),
    };
    for (r, row) in spec["rows"].as_array().into_iter().flatten().enumerate() {
        let cells: Vec<&serde_json::Value> = match row["cells"].as_array() {
            // A montage row: one tile per cell.
            Some(cells) => cells.iter().collect(),
            // A saliency row: one cell, a tile per column.
            None => vec![&row["cell"]; fig.columns.len().max(1)],
        };
        let one_cell = row["cells"].as_array().is_none();
        let mut tiles = Vec::new();
        for (c, cellv) in cells.iter().enumerate() {
            let id = cellv["cell"].as_str().unwrap_or("");
            tiles.push(Tile {
                png: at(r, c)?,
                caption: if one_cell && c > 0 {
                    Vec::new()
                } else {
                    cell_caption(cellv)
                },
                features: if one_cell && c > 0 {
                    Vec::new()
                } else {
                    why.get(id).cloned().unwrap_or_default()
                },
            });
        }
        fig.rows.push(TileRow {
            label: row["label"].as_str().unwrap_or("").to_string(),
            tiles,
        });
    }
    Ok(Some(fig))
}

fn section(
    name: &str,
    outputs: &Outputs,
    why: &Explanations,
) -> anyhow::Result<Option<ModelSection>> {
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
    s.held_out = matches!(m, Metrics::Evaluation(_));
    s.control_f1 = m.control_f1().filter(|v| v.is_finite());
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
        // Every feature: the chart shows the top 20 and says of how many.
        for r in &rows {
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
    if let Some(p) = outputs.get("shap_summary.csv") {
        let (h, rows) = read_csv(p)?;
        for r in &rows {
            s.shap.push(ShapFeature {
                class: cell(&h, r, "class").to_string(),
                feature: cell(&h, r, "feature").to_string(),
                mean_abs_shap: num(&h, r, "mean_abs_shap"),
                rank: num(&h, r, "rank").max(0.0) as usize,
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
            // Figures described tile by tile: each cell captioned with its plate, well,
            // class and confidence (and its top features where the linear model explained it).
            let saliency_caption = format!("Cells of class {class} classified correctly with the highest confidence, one per row: the crop (magenta DNA, green second channel), then gradient × input, SmoothGrad and Grad-CAM; bright = pixels that raise the {class} score. Tiles enlarged with square pixels.");
            let montage_caption = format!("Cells predicted as {class} on plates the model did not train on: top row the most confident, bottom row the least, each with its plate, well and confidence (and, where the linear model explained the same cell, its top features by SHAP). Look for artefacts or mislabelled wells among the confident ones.");
            let mut tiled = false;
            if let Some(f) = tile_figure(
                outputs,
                &c["saliency_tiles"],
                format!("What the model looks at: {class}"),
                saliency_caption,
                why,
            )? {
                s.tiles.push(f);
                tiled = true;
            }
            if let Some(f) = tile_figure(
                outputs,
                &c["montage_tiles"],
                format!("Most and least confident: {class}"),
                montage_caption,
                why,
            )? {
                s.tiles.push(f);
                tiled = true;
            }
            if tiled {
                continue;
            }
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
    let mut outlines: Vec<(String, String, PathBuf)> = Vec::new();
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
                outlines.push((task.clone(), stem.to_string(), path.clone()));
            }
            if let Some(ch) = name
                .strip_prefix("illumination/")
                .and_then(|n| n.strip_suffix(".png"))
            {
                // The levels beside it give the caption its numbers (absent in older results).
                let caption = outputs
                    .get(&format!("illumination/{ch}.json"))
                    .and_then(|p| std::fs::read(p).ok())
                    .and_then(|b| super::illumination::preview_caption(&b))
                    .unwrap_or_else(|| {
                        "Illumination field (stretched from its minimum to its maximum).".into()
                    });
                seg.illumination.push(PngFigure {
                    title: format!("{task}: {ch}"),
                    caption,
                    png: std::fs::read(path)?,
                });
            }
        }
    }
    // Per step and plate, the three outlines that say most: QC's worst, then the typical
    // field; tasks per well without QC upstream each drew their own, one per well.
    outlines.sort_by_key(|(task, stem, _)| (step_and_plate(task), outline_rank(stem)));
    let mut per_plate: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (task, stem, path) in outlines {
        let n = per_plate.entry(step_and_plate(&task)).or_default();
        if *n == OUTLINES_PER_PLATE {
            continue;
        }
        *n += 1;
        seg.outlines.push(PngFigure {
            title: format!("{task}: {stem}"),
            caption: match outline_rank(&stem) {
                0 | 1 => "Among the fields QC ranks worst that were still segmented: check the outlines hold here.",
                2 => "A typical field: the middle of QC's ranking.",
                _ => "A field of this task (no `curate` step upstream to rank the fields).",
            }
            .into(),
            png: std::fs::read(path)?,
        });
    }
    let any = !seg.plates.is_empty() || !seg.illumination.is_empty();
    Ok(any.then_some(seg))
}

/// Outline figures kept per step and plate.
const OUTLINES_PER_PLATE: usize = 3;

/// An outline file's place among its plate's: `<set>_qc-worst-1` first, then `qc-worst-2`,
/// `typical`, and the rest (first, middle, last).
fn outline_rank(stem: &str) -> u8 {
    if stem.ends_with("_qc-worst-1") {
        0
    } else if stem.ends_with("_qc-worst-2") {
        1
    } else if stem.ends_with("_typical") {
        2
    } else {
        3
    }
}

/// `segment[plate=P1,well=A01]` → (`segment`, `P1`); a task over every plate has plate "".
fn step_and_plate(task: &str) -> (String, String) {
    let (step, plate) = plateflow_contract::labels::label_field(task, "plate");
    (step.to_string(), plate.unwrap_or("").to_string())
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
    report.zprime = zprime_tables(&tasks)?;
    report.label_qc = label_qc(&tasks)?;
    for (task, outputs) in &tasks {
        if let Some(r) = readout(task, outputs)? {
            report.readouts.push(r);
        }
    }
    // Evaluations (with a per-well readout) before the features step's dose responses.
    report
        .readouts
        .sort_by_key(|r| (r.wells.is_empty(), r.name.clone()));
    let why = explanations(&tasks)?;
    for (task, outputs) in &tasks {
        if let Some(s) = section(task, outputs, &why)? {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-made upstream files in a scratch directory, as one task's outputs.
    fn outputs(dir: &Path, files: &[(&str, &str)]) -> Outputs {
        files
            .iter()
            .map(|(name, text)| {
                let p = dir.join(name);
                std::fs::write(&p, text).unwrap();
                (name.to_string(), p)
            })
            .collect()
    }

    #[test]
    fn evaluate_files_become_a_readout_with_points_and_fits() {
        let dir = tempfile::tempdir().unwrap();
        let out = outputs(
            dir.path(),
            &[
                (
                    "well_readout.csv",
                    "Metadata_Plate,Metadata_Well,label,dose,control,cells,fraction_normal,fraction_normal_lo,fraction_normal_hi,fraction_hit,fraction_hit_lo,fraction_hit_hi\n\
                     P4,A01,normal,0,negative,40,0.9,0.8,0.97,0.1,0.03,0.2\n\
                     P4,A02,hit,1,,38,0.5,0.4,0.6,0.5,0.4,0.6\n\
                     P4,A03,hit,10,positive,35,0.1,0.05,0.2,0.9,0.8,0.95\n",
                ),
                (
                    "dose_response.csv",
                    "readout,Metadata_Plate,ec50,ec50_lo,ec50_hi,hill,bottom,top,wells,doses,status\n\
                     fraction_hit,P4,1,0.5,2,1,0.1,0.9,3,3,fitted\n\
                     fraction_hit,P5,,,,,,,2,1,fewer than 4 doses\n",
                ),
                (
                    "readout_zprime.csv",
                    "readout,z_prime,positive_wells,negative_wells,mean_positive,mean_negative\nfraction_hit,,1,1,0.9,0.1\n",
                ),
            ],
        );
        let r = readout("holdout", &out).unwrap().unwrap();
        assert_eq!(r.classes, ["normal", "hit"]);
        assert_eq!(r.wells.len(), 3);
        assert_eq!(r.wells[0].dose, Some(0.0));
        assert_eq!(r.wells[2].fractions[1].ci95, Some((0.8, 0.95)));
        let fit = &r.dose_response[0];
        assert!(fit.fitted() && fit.ec50_ci95 == Some((0.5, 2.0)));
        assert_eq!(fit.points.len(), 3, "the plate's wells");
        assert_eq!(fit.points[1].ci95, Some((0.4, 0.6)));
        assert!(!r.dose_response[1].fitted() && r.dose_response[1].points.is_empty());
        assert!(r.zprime[0].z_prime.is_nan(), "an empty Z′ is no Z′");
        assert!(readout("model", &Outputs::new()).unwrap().is_none());
    }

    #[test]
    fn only_trains_label_qc_and_features_zprime_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = BTreeMap::new();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        tasks.insert(
            "qc[plate=P1]".to_string(),
            outputs(
                &a,
                &[
                    (
                        "label_qc.csv",
                        "check,plate,well,detail\nclass_balance,P1,,x\n",
                    ),
                    (
                        "zprime.csv",
                        "plate,channel,metric,z_prime\nP1,DNA,Mean,0.2\n",
                    ),
                ],
            ),
        );
        tasks.insert(
            "model".to_string(),
            outputs(
                &b,
                &[
                    ("label_qc.csv", "Metadata_Plate,Metadata_Well,label,cells,agreeing,expected_agreeing,predicted_mostly,p_value,flagged\nP2,C04,normal,41,3,37.5,hit,1e-9,true\nP1,A01,normal,40,38,36.6,normal,0.7,false\n"),
                    ("zprime.csv", "feature,z_prime,mean_positive\nF1,0.8,1\nF2,,1\n"),
                ],
            ),
        );
        let qc = label_qc(&tasks).unwrap();
        assert_eq!(qc.len(), 2);
        assert!(qc[0].flagged && !qc[1].flagged && qc[0].predicted_mostly == "hit");
        let z = zprime_tables(&tasks).unwrap();
        assert_eq!(z.len(), 1);
        assert_eq!(z[0].rows.len(), 2);
        assert_eq!(task_field("qc[plate=P1]", "plate").as_deref(), Some("P1"));
    }
}
