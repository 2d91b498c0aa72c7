//! `train`: leave-plate-out cross-validation and a final model, on the outputs of upstream
//! `features` (per-cell table; the logistic baseline) or `crops` (single-cell crops; the CNN)
//! steps. Folds are grouped by plate (or another metadata field) and checked by the leakage
//! guard; normalisation is fitted on training plates only. Writes per-fold and overall
//! metrics (95 % intervals by plate bootstrap), a shuffled-label control, per-cell
//! predictions, and the final model's safetensors with a JSON sidecar.

use super::{num, Context, Table};
use anyhow::Context as _;
use plateflow_learn::metrics::{
    argmax, bootstrap_by_group, brier, expected_calibration_error, Confusion,
};
use plateflow_learn::model::CnnConfig;
use plateflow_learn::rng::Rng;
use plateflow_learn::split::{check_no_leak, group_kfold, Origin};
use plateflow_learn::train::{
    predict_cnn, predict_logistic, train_cnn, train_logistic, Samples, Standardizer, TrainConfig,
};

/// Samples gathered from upstream tables: one row per cell.
#[derive(Default)]
struct Data {
    x: Vec<f32>,
    shape: Vec<usize>,
    labels: Vec<usize>,
    classes: Vec<String>,
    groups: Vec<String>,
    origins: Vec<Origin>,
    ids: Vec<String>,
    feature_names: Vec<String>,
}

impl Data {
    /// A cell's group, origin (for the leakage guard) and id, from its table row. `gc`: the
    /// group column; `wc`, `sc`, `oc`: well, image set and object number, when present.
    fn push_origin(
        &mut self,
        rec: &csv::StringRecord,
        gc: usize,
        wc: Option<usize>,
        sc: Option<usize>,
        oc: Option<usize>,
    ) {
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").to_string();
        let set = get(sc);
        self.groups.push(get(Some(gc)));
        self.origins.push(Origin {
            plate: get(Some(gc)),
            well: get(wc),
            image_digest: set.clone(),
        });
        self.ids.push(format!("{set}#{}", get(oc)));
    }
}

fn label_index(classes: &mut Vec<String>, value: &str) -> usize {
    match classes.iter().position(|c| c == value) {
        Some(i) => i,
        None => {
            classes.push(value.to_string());
            classes.len() - 1
        }
    }
}

/// Per-cell features from `cells.csv` files: numeric columns other than metadata.
fn from_features(ctx: &Context, label: &str, group_by: &str) -> anyhow::Result<Data> {
    let files = ctx.upstream_files(|n| n == "cells.csv");
    anyhow::ensure!(!files.is_empty(), "`train` with `model: logistic` reads `cells.csv` from a `features` step: put it in `after:`");
    let mut d = Data::default();
    for (_, path) in files {
        let mut rdr =
            csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
        let h: Vec<String> = rdr.headers()?.iter().map(str::to_string).collect();
        let col = |name: &str| h.iter().position(|c| c.eq_ignore_ascii_case(name));
        let lc = col(&format!("Metadata_{label}")).with_context(|| {
            format!(
                "{}: no column Metadata_{label}; name the plate-map column with `label:`",
                path.display()
            )
        })?;
        let gc = col(&format!("Metadata_{group_by}")).with_context(|| {
            format!(
                "{}: no column Metadata_{group_by} to group folds by",
                path.display()
            )
        })?;
        let wc = col("Metadata_Well");
        let sc = col("ImageSet");
        let oc = col("ObjectNumber");
        let feats: Vec<usize> = (0..h.len())
            .filter(|&i| {
                !h[i].starts_with("Metadata_")
                    && !matches!(h[i].as_str(), "ImageSet" | "ObjectNumber" | "TouchesBorder")
            })
            .collect();
        let names: Vec<String> = feats.iter().map(|&i| h[i].clone()).collect();
        if d.feature_names.is_empty() {
            d.feature_names = names;
        } else {
            anyhow::ensure!(
                d.feature_names == names,
                "{}: its feature columns differ from the other plates'",
                path.display()
            );
        }
        for rec in rdr.records() {
            let rec = rec?;
            let lab = rec.get(lc).unwrap_or("");
            if lab.is_empty() {
                continue;
            }
            d.labels.push(label_index(&mut d.classes, lab));
            d.x.extend(feats.iter().map(|&i| {
                rec.get(i)
                    .and_then(|v| v.parse::<f32>().ok())
                    .filter(|v| v.is_finite())
                    .unwrap_or(0.0)
            }));
            d.push_origin(&rec, gc, wc, sc, oc);
        }
    }
    d.shape = vec![d.feature_names.len()];
    Ok(d)
}

/// Crops from `crops.safetensors` + `crops.csv` pairs.
fn from_crops(ctx: &Context, group_by: &str) -> anyhow::Result<Data> {
    // Each crops task's tensor file and index table, paired by the task that wrote them.
    let by_task = |name: &str| -> std::collections::BTreeMap<&str, std::path::PathBuf> {
        ctx.upstream
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(task, _, rel)| (task.as_str(), ctx.work.join(rel)))
            .collect()
    };
    let (tensor_files, index_files) = (by_task("crops.safetensors"), by_task("crops.csv"));
    let mut tensors = Vec::new();
    let mut indexes = Vec::new();
    for (task, t) in &tensor_files {
        let i = index_files
            .get(task)
            .with_context(|| format!("{task} wrote crops.safetensors but no crops.csv"))?;
        tensors.push(t.clone());
        indexes.push(i.clone());
    }
    anyhow::ensure!(
        !tensors.is_empty(),
        "`train` with `model: cnn` reads crops from a `crops` step: put it in `after:`"
    );
    let mut d = Data::default();
    for (tpath, ipath) in tensors.iter().zip(&indexes) {
        let t = candle_core::safetensors::load(tpath, &candle_core::Device::Cpu)
            .with_context(|| format!("reading {}", tpath.display()))?;
        let crops = t
            .get("crops")
            .with_context(|| format!("{}: no tensor `crops`", tpath.display()))?;
        let dims = crops.dims().to_vec();
        let scale = if crops.dtype() == candle_core::DType::U8 {
            255.0
        } else {
            65535.0
        };
        let values: Vec<f32> = crops
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        if d.shape.is_empty() {
            d.shape = dims[1..].to_vec();
        }
        anyhow::ensure!(
            d.shape == dims[1..],
            "{}: crops of another shape than the other plates'",
            tpath.display()
        );
        let per: usize = d.shape.iter().product();
        let mut rdr = csv::Reader::from_path(ipath)?;
        let h: Vec<String> = rdr.headers()?.iter().map(str::to_string).collect();
        let col = |name: &str| h.iter().position(|c| c.eq_ignore_ascii_case(name));
        let lc = col("label").context("crops.csv without a label column")?;
        let gc = col(&format!("Metadata_{group_by}"))
            .with_context(|| format!("{}: no column Metadata_{group_by}", ipath.display()))?;
        let (wc, sc, oc) = (col("Metadata_Well"), col("ImageSet"), col("ObjectNumber"));
        for (row, rec) in rdr.records().enumerate() {
            let rec = rec?;
            let lab = rec.get(lc).unwrap_or("");
            if lab.is_empty() {
                continue;
            }
            d.labels.push(label_index(&mut d.classes, lab));
            d.x.extend(values[row * per..(row + 1) * per].iter().map(|v| v / scale));
            d.push_origin(&rec, gc, wc, sc, oc);
        }
    }
    Ok(d)
}

/// A model fitted on some cells, able to predict others.
enum Fitted {
    Logistic {
        model: plateflow_learn::model::Logistic,
        varmap: candle_nn::VarMap,
        standardizer: Standardizer,
        /// The features standardised with the training cells' statistics.
        z: Vec<f32>,
    },
    Cnn {
        model: plateflow_learn::model::Cnn,
        varmap: candle_nn::VarMap,
    },
}

/// Fits the chosen model on `fit` (the CNN early-stops on `val`); the settings of both the
/// cross-validation folds and the final model come from here.
fn fit_model(
    d: &Data,
    model: &str,
    y: &[usize],
    fit: &[usize],
    val: &[usize],
    epochs: Option<usize>,
    seed: u64,
) -> anyhow::Result<Fitted> {
    let classes = d.classes.len();
    if model == "logistic" {
        let standardizer = Standardizer::fit(&d.x, d.shape[0], fit);
        let z = standardizer.apply(&d.x);
        let s = Samples {
            x: &z,
            shape: d.shape.clone(),
            y,
            classes,
        };
        let cfg = TrainConfig {
            epochs: epochs.unwrap_or(300),
            lr: 0.05,
            weight_decay: 1e-3,
            seed,
            ..TrainConfig::default()
        };
        let (model, varmap) = train_logistic(&s, fit, &cfg)?;
        return Ok(Fitted::Logistic {
            model,
            varmap,
            standardizer,
            z,
        });
    }
    let s = Samples {
        x: &d.x,
        shape: d.shape.clone(),
        y,
        classes,
    };
    let cfg = TrainConfig {
        epochs: epochs.unwrap_or(20),
        seed,
        ..TrainConfig::default()
    };
    let config = CnnConfig {
        in_channels: d.shape[0],
        classes,
        width: 16,
        depth: 3,
        dropout: 0.3,
    };
    let (model, varmap, _) = train_cnn(config, &s, fit, val, &cfg)?;
    Ok(Fitted::Cnn { model, varmap })
}

impl Fitted {
    fn predict(&self, d: &Data, y: &[usize], idx: &[usize]) -> anyhow::Result<Vec<Vec<f64>>> {
        let classes = d.classes.len();
        match self {
            Fitted::Logistic { model, z, .. } => {
                let s = Samples {
                    x: z,
                    shape: d.shape.clone(),
                    y,
                    classes,
                };
                predict_logistic(model, &s, idx)
            }
            Fitted::Cnn { model, .. } => {
                let s = Samples {
                    x: &d.x,
                    shape: d.shape.clone(),
                    y,
                    classes,
                };
                predict_cnn(model, &s, idx)
            }
        }
    }

    /// The weights, and the sidecar's normalisation and architecture entries.
    fn describe(self, d: &Data) -> (candle_nn::VarMap, serde_json::Value, serde_json::Value) {
        match self {
            Fitted::Logistic {
                varmap,
                standardizer,
                ..
            } => (
                varmap,
                serde_json::json!({"standardise": {"features": d.feature_names, "mean": standardizer.mean, "std": standardizer.std}}),
                serde_json::json!({"kind": "multinomial logistic regression", "features": d.shape[0]}),
            ),
            Fitted::Cnn { model, varmap } => {
                let c = &model.config;
                (
                    varmap,
                    serde_json::json!({"pixels": "divided by the bit depth's maximum (255 or 65535)"}),
                    serde_json::json!({"kind": "cnn", "input": d.shape, "width": c.width, "depth": c.depth, "dropout": c.dropout}),
                )
            }
        }
    }
}

/// Each feature as a robust z-score within its plate: (x − median) / (1.4826 · MAD) over the
/// plate's own cells. Labels play no part, so a held-out plate is normalised by itself alone,
/// and plate-wide shifts (illumination, stain intensity) stop looking like phenotypes.
fn per_group_robust_z(d: &mut Data) {
    let dim = d.shape[0];
    let mut members: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, g) in d.groups.iter().enumerate() {
        members.entry(g.as_str()).or_default().push(i);
    }
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        if v.is_empty() {
            0.0
        } else {
            v[v.len() / 2]
        }
    };
    for rows in members.values() {
        for f in 0..dim {
            let mut v: Vec<f32> = rows.iter().map(|&i| d.x[i * dim + f]).collect();
            let m = median(&mut v);
            let mut dev: Vec<f32> = v.iter().map(|x| (x - m).abs()).collect();
            let mad = median(&mut dev) * 1.4826;
            let scale = if mad > 1e-9 { mad } else { 1.0 };
            for &i in rows {
                let x = &mut d.x[i * dim + f];
                *x = (*x - m) / scale;
            }
        }
    }
}

pub fn run(ctx: &mut Context) -> anyhow::Result<()> {
    let model = ctx.str_param("model").unwrap_or("logistic").to_string();
    let label = ctx.str_param("label").unwrap_or("phenotype").to_string();
    let group_by = ctx.str_param("group_by").unwrap_or("plate").to_string();
    let seed = ctx.f64_param("seed").unwrap_or(0.0) as u64;
    let d = match model.as_str() {
        "logistic" => from_features(ctx, &label, &group_by)?,
        "cnn" => from_crops(ctx, &group_by)?,
        other => anyhow::bail!("`model: {other}` is not known: use `logistic` or `cnn`"),
    };
    let mut d = d;
    let normalize = ctx.str_param("normalize").unwrap_or("plate").to_string();
    match (normalize.as_str(), model.as_str()) {
        ("plate", "logistic") => per_group_robust_z(&mut d),
        ("none", _) | (_, "cnn") => {}
        (other, _) => anyhow::bail!("`normalize: {other}` is not known: use `plate` or `none`"),
    }
    let n = d.labels.len();
    let nc = d.classes.len();
    anyhow::ensure!(
        nc >= 2,
        "only one class ({}) among the labelled cells: nothing to learn",
        d.classes.join(", ")
    );
    let plates: std::collections::BTreeSet<&str> = d.groups.iter().map(String::as_str).collect();
    let k = (ctx.f64_param("folds").unwrap_or(5.0) as usize).min(plates.len());
    let folds = group_kfold(&d.groups, k)?;
    let epochs = ctx.f64_param("epochs").map(|e| e as usize);
    let mut shuffled = d.labels.clone();
    Rng::new(seed ^ 0xABCD).shuffle(&mut shuffled);

    // One model fitted on `fit`, early-stopped on `val` (CNN); probabilities on `test`.
    let fit_predict = |y: &[usize], fit: &[usize], val: &[usize], test: &[usize]| {
        fit_model(&d, &model, y, fit, val, epochs, seed).and_then(|f| f.predict(&d, y, test))
    };
    let mut cv = Table::new(&[
        "fold",
        "held_out",
        "cells",
        "weighted_f1",
        "macro_f1",
        "accuracy",
        "balanced_accuracy",
        "ece",
        "brier",
        "shuffled_label_weighted_f1",
    ]);
    let mut probs: Vec<Option<Vec<f64>>> = vec![None; n];
    let mut shuf_pred = vec![0usize; n];
    for (fi, f) in folds.iter().enumerate() {
        check_no_leak(&d.origins, &f.train, &f.test).with_context(|| format!("fold {fi}"))?;
        // Validation plates for early stopping are carved out of the training plates.
        let train_groups: Vec<String> = f.train.iter().map(|&i| d.groups[i].clone()).collect();
        let distinct: std::collections::BTreeSet<&String> = train_groups.iter().collect();
        let (fit, val) = if distinct.len() >= 2 && model == "cnn" {
            let inner = &group_kfold(&train_groups, distinct.len().min(4))?[0];
            (
                inner.train.iter().map(|&j| f.train[j]).collect(),
                inner.test.iter().map(|&j| f.train[j]).collect(),
            )
        } else {
            (f.train.clone(), f.train.clone())
        };
        let p = fit_predict(&d.labels, &fit, &val, &f.test)?;
        let ps = fit_predict(&shuffled, &fit, &val, &f.test)?;
        let truth: Vec<usize> = f.test.iter().map(|&i| d.labels[i]).collect();
        let c = Confusion::new(nc, &truth, &argmax(&p));
        let st: Vec<usize> = f.test.iter().map(|&i| shuffled[i]).collect();
        let sp = argmax(&ps);
        let cs = Confusion::new(nc, &st, &sp);
        cv.push_row([
            fi.to_string(),
            f.held_out.join(" "),
            f.test.len().to_string(),
            num(c.weighted_f1()),
            num(c.macro_f1()),
            num(c.accuracy()),
            num(c.balanced_accuracy()),
            num(expected_calibration_error(&truth, &p, 15)),
            num(brier(&truth, &p)),
            num(cs.weighted_f1()),
        ]);
        ctx.logln(format!(
            "fold {fi} (held out {}): weighted F1 {:.3}, shuffled-label control {:.3}",
            f.held_out.join(" "),
            c.weighted_f1(),
            cs.weighted_f1()
        ));
        for (j, &i) in f.test.iter().enumerate() {
            probs[i] = Some(p[j].clone());
            shuf_pred[i] = sp[j];
        }
    }
    ctx.write_output("cv.csv", &cv.into_bytes())?;

    // Overall, over every cell's out-of-fold prediction, with intervals by plate.
    let all: Vec<Vec<f64>> = probs
        .into_iter()
        .map(|p| p.expect("every cell is tested once"))
        .collect();
    let pred = argmax(&all);
    let overall = Confusion::new(nc, &d.labels, &pred);
    let ci = |f: &dyn Fn(&Confusion) -> f64| {
        bootstrap_by_group(&d.groups, 1000, seed, |idx| {
            let t: Vec<usize> = idx.iter().map(|&i| d.labels[i]).collect();
            let p: Vec<usize> = idx.iter().map(|&i| pred[i]).collect();
            f(&Confusion::new(nc, &t, &p))
        })
    };
    let (wlo, whi) = ci(&|c| c.weighted_f1());
    let (mlo, mhi) = ci(&|c| c.macro_f1());
    let shuffled_f1 = Confusion::new(nc, &shuffled, &shuf_pred).weighted_f1();
    let per_class: Vec<serde_json::Value> = (0..nc)
        .map(|k| serde_json::json!({"class": d.classes[k], "precision": overall.precision(k), "recall": overall.recall(k), "f1": overall.f1(k)}))
        .collect();
    let metrics = serde_json::json!({
        "model": model,
        "split": {"protocol": format!("leave-{group_by}-out"), "folds": k, "groups": plates.iter().collect::<Vec<_>>()},
        "normalisation": if model == "logistic" { normalize.clone() } else { "none".into() },
        "cells": n,
        "classes": d.classes,
        "weighted_f1": {"value": overall.weighted_f1(), "ci95_by_plate": [wlo, whi]},
        "macro_f1": {"value": overall.macro_f1(), "ci95_by_plate": [mlo, mhi]},
        "accuracy": overall.accuracy(),
        "balanced_accuracy": overall.balanced_accuracy(),
        "ece_15_bins": expected_calibration_error(&d.labels, &all, 15),
        "brier": brier(&d.labels, &all),
        "shuffled_label_weighted_f1": shuffled_f1,
        "per_class": per_class,
        "confusion": overall.matrix,
    });
    ctx.write_output(
        "metrics.json",
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    let mut header = vec![
        "cell".to_string(),
        group_by.clone(),
        "well".into(),
        "truth".into(),
        "predicted".into(),
    ];
    header.extend(d.classes.iter().map(|c| format!("p_{c}")));
    let mut preds = Table::new(&header);
    for i in 0..n {
        let mut row = vec![
            d.ids[i].clone(),
            d.groups[i].clone(),
            d.origins[i].well.clone(),
            d.classes[d.labels[i]].clone(),
            d.classes[pred[i]].clone(),
        ];
        row.extend(all[i].iter().map(|&p| num(p)));
        preds.push_row(row);
    }
    ctx.write_output("predictions.csv", &preds.into_bytes())?;
    ctx.logln(format!(
        "{model}, {n} cells, {nc} classes, {k} folds by {group_by}: weighted F1 {:.3} [{wlo:.3}, {whi:.3}], macro F1 {:.3}, shuffled-label control {shuffled_f1:.3}",
        overall.weighted_f1(),
        overall.macro_f1()
    ));
    // The final model, fitted on every plate, with its sidecar.
    let everything: Vec<usize> = (0..n).collect();
    let fitted = fit_model(
        &d,
        &model,
        &d.labels,
        &everything,
        &everything,
        epochs,
        seed,
    )?;
    let (varmap, normalisation, architecture) = fitted.describe(&d);
    varmap.save(ctx.out.join("model.safetensors"))?;
    let sidecar = serde_json::json!({
        "classes": d.classes,
        "normalisation": normalisation,
        "architecture": architecture,
        "training": {"groups": plates.iter().collect::<Vec<_>>(), "cells": n, "seed": seed, "label": label},
        "cross_validation": metrics,
        "software": {"plateflow": env!("CARGO_PKG_VERSION"), "candle": "0.11.1"},
    });
    ctx.write_output(
        "model.json",
        serde_json::to_string_pretty(&sidecar)?.as_bytes(),
    )?;
    Ok(())
}
