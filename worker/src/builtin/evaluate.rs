//! `evaluate`: a saved model on plates it never saw — the `holdout` plates of a `train` step
//! in the same pipeline, or new plates scored with a model from an earlier run (its
//! `model.safetensors` and `model.json` listed in `files:`). Refuses plates the model was
//! trained on and data files identical to its training files. Writes metrics with plate
//! bootstrap intervals, per-plate scores, calibration with the model's own temperature
//! (fitted at training time, never here), reliability bins, and per-cell predictions for
//! every cell, labelled or not.

use super::samples::{self, Data};
use super::{card, explain, readout, scoring, Context};
use anyhow::Context as _;
use plateflow_contract::metrics::{
    Calibration, EvaluationMetrics, ModelSidecar, TextureQuantisation,
};
use plateflow_contract::params::EvaluateParams;
use plateflow_learn::fitting::Fitted;
use plateflow_learn::metrics::{
    apply_temperature, argmax, brier, expected_calibration_error, Confusion,
};
use plateflow_learn::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The model's weights and sidecar: from `model:` (a path among `files:`) or an upstream
/// `train` task.
fn find_model(ctx: &Context, params: &EvaluateParams) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let Some(rel) = &params.model {
        let weights = ctx.work.join(rel);
        let sidecar = weights.with_file_name("model.json");
        anyhow::ensure!(
            weights.is_file(),
            "`model: {rel}`: no such file; list it and its model.json in `files:`"
        );
        anyhow::ensure!(
            sidecar.is_file(),
            "`model: {rel}`: no model.json beside it; list both in `files:`"
        );
        return Ok((weights, sidecar));
    }
    let w = ctx.upstream_files(|n| n == "model.safetensors");
    let s = ctx.upstream_files(|n| n == "model.json");
    match (w.as_slice(), s.as_slice()) {
        ([(_, w)], [(_, s)]) => Ok((w.clone(), s.clone())),
        ([], _) | (_, []) => anyhow::bail!(
            "`evaluate` needs a model: put the `train` step in `after:`, or name a saved model with `model:` and `files:`"
        ),
        _ => anyhow::bail!(
            "`evaluate` found several upstream models: evaluate one per step (`after:` one `train` step)"
        ),
    }
}

pub fn run(ctx: &mut Context, params: &EvaluateParams) -> anyhow::Result<()> {
    let (weights, sidecar_path) = find_model(ctx, params)?;
    let bytes = std::fs::read(&sidecar_path)
        .with_context(|| format!("reading {}", sidecar_path.display()))?;
    let raw_sidecar: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a plateflow model.json", sidecar_path.display()))?;
    let sidecar: ModelSidecar = serde_json::from_value(raw_sidecar.clone()).with_context(|| {
        format!(
            "{}: not a model.json this plateflow can read (written by another version?)",
            sidecar_path.display()
        )
    })?;
    let device = ctx.device();
    let fitted = Fitted::load(&weights, &raw_sidecar, &device)?;
    let classes = sidecar.classes.clone();
    let group_by = sidecar.group_by.clone();
    let label = params
        .label
        .clone()
        .unwrap_or_else(|| sidecar.label.clone());
    let temperature = if sidecar.temperature.is_finite() {
        sidecar.temperature
    } else {
        1.0
    };
    let trained_on: BTreeSet<String> = sidecar.training.groups.iter().cloned().collect();
    let mut d: Data = match sidecar.model_kind() {
        "logistic" => {
            let mut d = samples::from_features(ctx, &label, &group_by, Some(&classes), true)?;
            let expected: Vec<String> = sidecar.normalisation["standardise"]["features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            // The model's columns, by name (it may have left some of the table's out).
            let missing: Vec<&String> = expected
                .iter()
                .filter(|e| !d.feature_names.contains(e))
                .collect();
            anyhow::ensure!(
                missing.is_empty(),
                "the upstream features table lacks {} of the {} columns the model was trained on (e.g. {}): run the same `features` settings",
                missing.len(),
                expected.len(),
                missing.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
            let columns: Vec<usize> = expected
                .iter()
                .map(|e| {
                    d.feature_names
                        .iter()
                        .position(|n| n == e)
                        .expect("checked")
                })
                .collect();
            d.keep_features(&columns);
            // The plates scored must quantise texture as the training plates did.
            TextureQuantisation::against_model(
                &samples::texture_quantisations(ctx)?,
                &sidecar.texture_tops,
            )
            .map_err(anyhow::Error::msg)?;
            if sidecar.plate_normalisation == "plate" {
                samples::per_plate_robust_z(&mut d);
            }
            d
        }
        _ => {
            let mut d = samples::from_crops(ctx, &group_by, Some(&classes), true)?;
            if sidecar.plate_normalisation == "crop" {
                samples::per_crop_z(&mut d);
            }
            d
        }
    };
    // Which plates: those named, else every plate the model did not train on.
    let present: BTreeSet<String> = d.groups.iter().cloned().collect();
    let chosen: BTreeSet<String> = match params.plates.clone() {
        Some(list) => {
            for p in &list {
                anyhow::ensure!(
                    present.contains(p),
                    "`plates: {p}`: no cells of {group_by} {p} upstream (have: {})",
                    present.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            list.into_iter().collect()
        }
        None => present.difference(&trained_on).cloned().collect(),
    };
    let leaked: Vec<&String> = chosen.intersection(&trained_on).collect();
    anyhow::ensure!(
        leaked.is_empty(),
        "leakage: the model was trained on {group_by} {}; evaluate it on plates it never saw (the train step's `holdout:`)",
        leaked.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    anyhow::ensure!(
        !chosen.is_empty(),
        "no {group_by} to evaluate: every upstream {group_by} ({}) was used for training; add `holdout:` to the train step or new plates",
        present.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    let training_digests: BTreeSet<&str> = sidecar
        .training
        .files
        .iter()
        .map(|f| f.sha256.as_str())
        .collect();
    // A file the model was trained on, read again here, is a leak when it holds none of the
    // training plates' cells (a trained plate copied under another name). One table of every
    // plate (a `features` step without `for_each`) was trained on for some plates and
    // holds the held-out ones too: the plate check above covers it.
    let mut file_trains: BTreeMap<usize, bool> = BTreeMap::new();
    for (i, &f) in d.file_of.iter().enumerate() {
        *file_trains.entry(f).or_default() |= trained_on.contains(&d.groups[i]);
    }
    let groups = d.groups.clone();
    d.retain(|i| chosen.contains(&groups[i]));
    let used: BTreeSet<usize> = d.file_of.iter().copied().collect();
    for f in used {
        let (file, digest) = &d.digests[f];
        anyhow::ensure!(
            file_trains[&f] || !training_digests.contains(digest.as_str()),
            "leakage: {file} is identical (SHA-256 {}) to a file the model was trained on",
            &digest[..12]
        );
    }
    let n = d.len();
    let all: Vec<usize> = (0..n).collect();
    let raw = fitted.predict(&d, &all)?;
    let cal = apply_temperature(&raw, temperature);
    let pred = argmax(&cal);

    let nc = classes.len();
    let preds = scoring::predictions(&d, &group_by, &classes, &d.labels, &cal);
    ctx.write_output("predictions.csv", &preds.into_bytes())?;
    write_readouts(ctx, params, &d, &pred, &classes)?;
    if let (Some(w), Some(z)) = (fitted.coefficients()?, fitted.standardised_inputs(&d)) {
        explain::write_shap(ctx, &d, &all, &z, &w, &cal)?;
    }

    // Metrics over the labelled cells.
    let lab: Vec<usize> = (0..n).filter(|&i| d.labels[i].is_some()).collect();
    let truth: Vec<usize> = lab
        .iter()
        .map(|&i| d.labels[i].expect("labelled"))
        .collect();
    let p_lab: Vec<Vec<f64>> = lab.iter().map(|&i| cal[i].clone()).collect();
    let r_lab: Vec<Vec<f64>> = lab.iter().map(|&i| raw[i].clone()).collect();
    let pred_lab: Vec<usize> = lab.iter().map(|&i| pred[i]).collect();
    let plates: Vec<String> = chosen.iter().cloned().collect();
    let mut metrics = EvaluationMetrics {
        what: format!(
            "evaluation on {group_by}s {} not used in training",
            plates.join(", ")
        ),
        model: sidecar.model_kind().to_string(),
        model_file: weights
            .strip_prefix(ctx.work)
            .unwrap_or(&weights)
            .display()
            .to_string(),
        trained_on: trained_on.iter().cloned().collect(),
        evaluated: plates.clone(),
        cells: n,
        labelled_cells: lab.len(),
        classes: classes.clone(),
        scores: None,
        chance_weighted_f1: None,
    };
    if !lab.is_empty() {
        let lab_groups: Vec<String> = lab.iter().map(|&i| d.groups[i].clone()).collect();
        let headline = scoring::estimates(nc, &truth, &pred_lab, &lab_groups, 0);
        let weighted = headline.1.clone();
        // Chance level: the same predictions against shuffled labels.
        let mut shuffled = truth.clone();
        Rng::new(0xC4A5).shuffle(&mut shuffled);
        let chance = Confusion::new(nc, &shuffled, &pred_lab).weighted_f1();
        let (per_group, per_group_json) =
            scoring::per_group(&d, &group_by, nc, &lab, &truth, &pred_lab);
        ctx.write_output("per_group.csv", &per_group.into_bytes())?;
        let rel = scoring::reliability(&truth, &r_lab, &p_lab);
        ctx.write_output("reliability.csv", &rel.into_bytes())?;
        metrics.chance_weighted_f1 = Some(chance);
        let calibration = Calibration {
            method: "the model's temperature, fitted at training time on its validation plates"
                .into(),
            applied_only_if: None,
            temperature,
            temperature_fitted: None,
            left_out_plate_nll_change: None,
            left_out_plate_ece_change: None,
            decision: None,
            fold_temperatures: Vec::new(),
            ece_before: expected_calibration_error(&truth, &r_lab, 15),
            ece_after: expected_calibration_error(&truth, &p_lab, 15),
            brier_before: brier(&truth, &r_lab),
            brier_after: brier(&truth, &p_lab),
            nll_before: None,
            nll_after: None,
        };
        metrics.scores = Some(scoring::scores(
            &classes,
            &truth,
            &p_lab,
            headline,
            calibration,
            per_group_json,
        ));
        ctx.logln(format!(
            "{} cells of {} ({} labelled): weighted F1 {}, chance {chance:.3}, ECE {:.3} with T {temperature:.2}",
            n,
            chosen.iter().cloned().collect::<Vec<_>>().join(", "),
            lab.len(),
            weighted.show(),
            expected_calibration_error(&truth, &p_lab, 15)
        ));
    } else {
        ctx.logln(format!("{n} cells scored; none labelled, so no metrics"));
    }
    // The model card, with the score on these plates added.
    let card_path = weights.with_file_name("model_card.md");
    if card_path.is_file() {
        let card = std::fs::read_to_string(&card_path)
            .with_context(|| format!("reading {}", card_path.display()))?;
        ctx.write_output(
            "model_card.md",
            card::with_held_out(&card, &metrics).as_bytes(),
        )?;
    }
    ctx.write_output(
        "metrics.json",
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )
}

/// The per-well readouts of the evaluated cells: class fractions, their Z′ between controls,
/// and the dose–response where the plate map has doses (it needs `inputs: [plate_map]`).
fn write_readouts(
    ctx: &mut Context,
    params: &EvaluateParams,
    d: &Data,
    predicted: &[usize],
    classes: &[String],
) -> anyhow::Result<()> {
    let map = ctx.plate_map()?;
    anyhow::ensure!(
        map.is_some() || params.dose.is_none(),
        "`dose: {}` needs the plate map: add `inputs: [plate_map]` to this step",
        params.dose.as_deref().unwrap_or("")
    );
    let (dose_col, control_col) = match &map {
        Some(m) => (
            m.dose_column(params.dose.as_deref())?,
            m.control_column(None)?,
        ),
        None => (None, None),
    };
    let wells = readout::wells(d, map.as_ref(), dose_col, control_col)?;
    let (table, fractions) = readout::well_readout(&wells, predicted, classes, 0x5EED);
    ctx.write_output("well_readout.csv", &table.into_bytes())?;
    ctx.logln(format!(
        "per-well readout of {} wells written (class fractions with 95 % intervals over cells)",
        wells.len()
    ));
    if map.as_ref().is_some_and(|m| m.treatment_column().is_some()) || dose_col.is_some() {
        let t = readout::treatment_readout(&wells, &fractions, classes);
        ctx.write_output("treatment_readout.csv", &t.into_bytes())?;
    }
    if let Some((t, z)) = readout::readout_zprime(&wells, &fractions, classes) {
        ctx.write_output("readout_zprime.csv", &t.into_bytes())?;
        for (name, z) in z {
            ctx.logln(format!("classifier readout Z' {z:.3}  {name}"));
        }
    }
    if dose_col.is_some() {
        let (t, lines) = readout::dose_response(&wells, predicted, classes);
        ctx.write_output("dose_response.csv", &t.into_bytes())?;
        for l in lines {
            ctx.logln(l);
        }
    }
    Ok(())
}
