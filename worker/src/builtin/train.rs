//! `train`: cross-validation that cannot leak, and a final model, on the outputs of upstream
//! `features` (per-cell table; the logistic baseline) or `crops` (single-cell crops; the CNN)
//! steps. The protocol itself is `plateflow_learn::protocol`; this step reads the upstream
//! files, calls it, and writes the tables, figures, model and card.
//!
//! Folds keep plates (or another metadata field) whole and pass the leakage guard; plates in
//! `holdout` are left out of everything, for `evaluate`. Within each fold, validation plates
//! carved from the training plates serve early stopping (CNN) and temperature scaling, so
//! normalisation, weights and temperature never see the plates scored. Writes per-fold and
//! overall metrics (95 % intervals by plate bootstrap), a shuffled-label control, per-plate
//! scores, learning curves, reliability before and after calibration, per-cell predictions,
//! coefficients (logistic) or saliency figures and montages (CNN), and the final model with its
//! sidecar and model card.

use super::samples::{self, Data};
use super::{card, explain, interpretation, num, readout, scoring, Context, Table};
use plateflow_contract::columns;
use plateflow_contract::metrics::{
    Calibration, ConcentratedClass, FileDigest, LeftOut, ModelSidecar, Software, SplitInfo,
    SuspectWell, TextureQuantisation, TrainMetrics, TrainingData,
};
use plateflow_contract::params::{ModelKind, StopOn, TrainNormalize, TrainParams};
use plateflow_learn::fitting::{self, Fitted, Settings};
use plateflow_learn::metrics::{
    apply_temperature, argmax, brier, expected_calibration_error, fit_temperature_across_groups,
    nll, Confusion,
};
use plateflow_learn::protocol::{cross_validate, fit_cnn};
use plateflow_learn::rng::Rng;
use plateflow_learn::split::concentrated_classes;
use plateflow_learn::train::WarmStart;
use std::collections::{BTreeMap, BTreeSet};

/// The feature family and channel of a CellProfiler-style column name, for grouping the
/// logistic coefficients: `Nuclei_Intensity_MeanIntensity_DNA` → (Nuclei Intensity, DNA).
fn family_and_channel(name: &str) -> (String, String) {
    // Compartment_Family_Feature[_Channel[_scale…]]: the channel follows the feature.
    let parts: Vec<&str> = name.split('_').collect();
    let family = parts.iter().take(2).copied().collect::<Vec<_>>().join(" ");
    let channel = match parts.get(1) {
        Some(&"Intensity") | Some(&"Texture") => parts.get(3).copied().unwrap_or(""),
        _ => "",
    };
    (family, channel.to_string())
}

pub fn run(ctx: &mut Context, params: &TrainParams) -> anyhow::Result<()> {
    // Choices, ranges and combinations were checked when the pipeline was validated.
    let model_kind = params.model.name().to_string();
    let label = params.label.clone();
    let group_by = params.group_by.clone();
    let seed = params.seed;
    let leaky = params.leaky();
    let holdout: Vec<String> = params.holdout.clone();
    let warm_start = match &params.init {
        Some(rel) => {
            let path = ctx.work.join(rel);
            anyhow::ensure!(
                path.is_file(),
                "`init: {rel}`: no such file among the step's `files:` (list the checkpoint there)"
            );
            Some(WarmStart {
                weights: path,
                freeze_features: params.freeze_features,
            })
        }
        None => None,
    };
    let settings = Settings {
        model: model_kind.clone(),
        epochs: params.epochs.map(|e| e as usize),
        seed,
        width: params.width as usize,
        refit: params.refit,
        scale_jitter: params.scale_jitter,
        stop_on: match params.stop_on {
            StopOn::F1 => plateflow_learn::train::StopOn::WeightedF1,
            StopOn::Loss => plateflow_learn::train::StopOn::Loss,
        },
        tta: params.tta,
        progress: Default::default(),
        depth: params.depth as usize,
        warm_start: warm_start.clone(),
        device: if model_kind == "cnn" {
            ctx.device()
        } else {
            candle_core::Device::Cpu
        },
    };
    ctx.logln(format!(
        "fitting on {}",
        plateflow_learn::device::describe(&settings.device)
    ));
    // Per-plate normalisation centres each plate on all its cells, as `evaluate` does: on the
    // labelled ones alone (often only the controls), training and prediction saw features
    // shifted differently, and cross-validation could not show it.
    let whole_plates = params.normalize() == TrainNormalize::Plate;
    let mut d = match params.model {
        ModelKind::Logistic => samples::from_features(ctx, &label, &group_by, None, whole_plates)?,
        ModelKind::Cnn => samples::from_crops(ctx, &group_by, None, whole_plates)?,
    };
    // Nuisance columns (position, numbering, metadata) and `exclude_features:` are left out.
    let mut left_out = Vec::new();
    let mut texture_tops = BTreeMap::new();
    if params.model == ModelKind::Logistic {
        for (name, patterns) in [
            ("exclude_features", &params.exclude_features),
            ("include_features", &params.include_features),
        ] {
            let unmatched = columns::unmatched(patterns, &d.feature_names);
            anyhow::ensure!(
                unmatched.is_empty(),
                "`{name}: {}` matches no feature column (there are {}, e.g. {}); patterns use `*` for any text",
                unmatched.join(", "),
                d.feature_names.len(),
                d.feature_names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let (kept, dropped) = columns::select_features(
            &d.feature_names,
            &params.exclude_features,
            &params.include_features,
        );
        anyhow::ensure!(
            !kept.is_empty(),
            "every feature column was left out; loosen `exclude_features:` or name some in `include_features:`"
        );
        let mut t = Table::new(&["feature", "used", "why_not"]);
        let dropped_names: BTreeSet<&str> = dropped.iter().map(|x| x.feature.as_str()).collect();
        for name in &d.feature_names {
            let why = dropped
                .iter()
                .find(|x| &x.feature == name)
                .map(|x| x.why.clone())
                .unwrap_or_default();
            t.push_row([
                name.clone(),
                (!dropped_names.contains(name.as_str())).to_string(),
                why,
            ]);
        }
        ctx.write_output("features_used.csv", &t.into_bytes())?;
        ctx.logln(format!(
            "{} of {} feature columns used; left out: {}",
            kept.len(),
            d.feature_names.len(),
            if dropped.is_empty() {
                "none".to_string()
            } else {
                dropped
                    .iter()
                    .map(|x| x.feature.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        d.keep_features(&kept);
        // Texture quantised over different ranges on different plates would be a plate
        // effect the model learns and cross-validation rewards.
        texture_tops =
            TextureQuantisation::common(&samples::texture_quantisations(ctx)?, &d.feature_names)
                .map_err(anyhow::Error::msg)?;
        left_out = dropped
            .into_iter()
            .map(|x| LeftOut {
                feature: x.feature,
                why: x.why,
            })
            .collect();
    }
    let all_groups: BTreeSet<String> = (0..d.len())
        .filter(|&i| d.labels[i].is_some())
        .map(|i| d.groups[i].clone())
        .collect();
    for h in &holdout {
        anyhow::ensure!(
            all_groups.contains(h),
            "`holdout: {h}`: no labelled cells of {group_by} {h} (have: {})",
            all_groups.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let held: BTreeSet<&String> = holdout.iter().collect();
    let groups_before = d.groups.clone();
    d.retain(|i| !held.contains(&groups_before[i]));
    // Normalisation that no plate is fitted on: per plate (logistic features, labels unused)
    // or per crop (CNN pixels); standardisation fitted on training cells comes later.
    let normalize = match params.normalize() {
        TrainNormalize::Plate => {
            samples::per_plate_robust_z(&mut d);
            "plate"
        }
        TrainNormalize::Crop => {
            samples::per_crop_z(&mut d);
            "crop"
        }
        TrainNormalize::None => "none",
    }
    .to_string();
    let labelled = d.labels.clone();
    d.retain(|i| labelled[i].is_some());
    let labels: Vec<usize> = d.labels.iter().map(|l| l.expect("labelled")).collect();
    let n = labels.len();
    let nc = d.classes.len();
    anyhow::ensure!(
        nc >= 2,
        "only one class ({}) among the labelled cells: nothing to learn",
        d.classes.join(", ")
    );
    // A class seen only on held-out plates has no cell to learn from: its F1 of 0 in the
    // card would say nothing of why.
    let trained: BTreeSet<usize> = labels.iter().copied().collect();
    let untrained: Vec<&str> = (0..nc)
        .filter(|c| !trained.contains(c))
        .map(|c| d.classes[c].as_str())
        .collect();
    anyhow::ensure!(
        untrained.is_empty(),
        "class(es) {} are labelled only on `holdout` {group_by}s ({}): the model would have \
         no cell of them to learn from; hold out another {group_by}, or label them on a \
         training {group_by} too",
        untrained.join(", "),
        holdout.join(", ")
    );
    let plates: BTreeSet<&str> = d.groups.iter().map(String::as_str).collect();
    let k = params.folds as usize;
    anyhow::ensure!(
        leaky || plates.len() >= 2,
        "cross-validation by {group_by} needs at least 2 {group_by}s with labelled cells outside `holdout`; found {}",
        plates.len()
    );
    let folds = plateflow_learn::protocol::folds(&d, k, leaky, seed)?;
    let protocol = if leaky {
        format!("random split of cells, {} folds (LEAKY)", folds.len())
    } else {
        format!("leave-{group_by}-out, {} folds", folds.len())
    };
    let mut shuffled = labels.clone();
    Rng::new(seed ^ 0xABCD).shuffle(&mut shuffled);

    let mut cv = Table::new(&[
        "fold",
        "held_out",
        "cells",
        "weighted_f1",
        "macro_f1",
        "accuracy",
        "balanced_accuracy",
        "temperature",
        "ece_before",
        "ece_after",
        "brier",
        "shuffled_label_weighted_f1",
    ]);
    let mut curves = Table::new(&[
        "fold",
        "epoch",
        "train_loss",
        "val_loss",
        "val_weighted_f1",
        "kept",
    ]);
    let mut raw_all: Vec<Option<Vec<f64>>> = vec![None; n];
    let mut cal_all: Vec<Option<Vec<f64>>> = vec![None; n];
    let mut shuf_pred = vec![0usize; n];
    let mut temperatures = Vec::new();
    let outcomes = cross_validate(&d, &labels, &shuffled, &folds, &settings, leaky, &|what| {
        ctx.progress_sink(what)
    })?;
    for (fi, outcome) in outcomes.iter().enumerate() {
        let (f, scored) = (&outcome.fold, &outcome.scored);
        let cal = apply_temperature(&scored.raw, scored.temperature);
        let truth: Vec<usize> = f.test.iter().map(|&i| labels[i]).collect();
        let c = Confusion::new(nc, &truth, &argmax(&cal));
        let st: Vec<usize> = f.test.iter().map(|&i| shuffled[i]).collect();
        let sp = argmax(&outcome.control_raw);
        let cs = Confusion::new(nc, &st, &sp);
        cv.push_row([
            fi.to_string(),
            f.held_out.join(" "),
            f.test.len().to_string(),
            num(c.weighted_f1()),
            num(c.macro_f1()),
            num(c.accuracy()),
            num(c.balanced_accuracy()),
            num(scored.temperature),
            num(expected_calibration_error(&truth, &scored.raw, 15)),
            num(expected_calibration_error(&truth, &cal, 15)),
            num(brier(&truth, &cal)),
            num(cs.weighted_f1()),
        ]);
        if let Some(h) = &scored.history {
            for e in 0..h.train_loss.len() {
                curves.push_row([
                    fi.to_string(),
                    e.to_string(),
                    num(h.train_loss[e]),
                    num(h.val_loss[e]),
                    num(h.val_weighted_f1[e]),
                    ((e == h.best_epoch) as u8).to_string(),
                ]);
            }
        }
        let epochs = match scored.history.as_ref().and_then(|h| h.refit_epochs) {
            Some(e) => format!(", {e} epochs chosen on validation plates, refitted on all"),
            None => String::new(),
        };
        ctx.logln(format!(
            "fold {fi} (held out {}): weighted F1 {:.3}, T {:.2}, shuffled-label control {:.3}{epochs}",
            f.held_out.join(" "),
            c.weighted_f1(),
            scored.temperature,
            cs.weighted_f1()
        ));
        temperatures.push(scored.temperature);
        for (j, &i) in f.test.iter().enumerate() {
            raw_all[i] = Some(scored.raw[j].clone());
            cal_all[i] = Some(cal[j].clone());
            shuf_pred[i] = sp[j];
        }
    }
    ctx.write_output("cv.csv", &cv.into_bytes())?;
    if model_kind == "cnn" {
        ctx.write_output("curves.csv", &curves.into_bytes())?;
    }

    // Overall, over every cell's out-of-fold prediction, with intervals by plate.
    let raw: Vec<Vec<f64>> = raw_all
        .into_iter()
        .map(|p| p.expect("every cell is tested once"))
        .collect();
    let cal: Vec<Vec<f64>> = cal_all
        .into_iter()
        .map(|p| p.expect("every cell is tested once"))
        .collect();
    let pred = argmax(&cal);
    let headline = scoring::estimates(nc, &labels, &pred, &d.groups, seed);
    let shuffled_f1 = Confusion::new(nc, &shuffled, &shuf_pred).weighted_f1();
    let (per_group, per_group_json) = scoring::per_group(
        &d,
        &group_by,
        nc,
        &(0..n).collect::<Vec<_>>(),
        &labels,
        &pred,
    );
    ctx.write_output("per_group.csv", &per_group.into_bytes())?;
    // The saved model's temperature: fitted on all out-of-fold predictions (each made by a
    // model that never saw that cell's plate), applied only if it transfers between plates.
    let groups_of_cells: Vec<String> = (0..n).map(|i| d.groups[i].clone()).collect();
    let choice = fit_temperature_across_groups(&labels, &raw, &groups_of_cells);
    let temperature = choice.applied;
    ctx.logln(format!("temperature {:.2}: {}", choice.fitted, choice.why));
    let calibration = Calibration {
        method: if model_kind == "logistic" { "temperature scaling, fitted per fold on cross-fitted predictions of the training plates" } else { "temperature scaling, fitted per fold on validation plates carved from the training plates" }.into(),
        applied_only_if: Some("fitted on all plates but one, it lowers both the negative log-likelihood and the ECE of the left-out plates; otherwise temperature 1".into()),
        temperature,
        temperature_fitted: Some(choice.fitted),
        left_out_plate_nll_change: choice.nll_change.is_finite().then_some(choice.nll_change),
        left_out_plate_ece_change: choice.ece_change.is_finite().then_some(choice.ece_change),
        decision: Some(choice.why.clone()),
        fold_temperatures: temperatures,
        ece_before: expected_calibration_error(&labels, &raw, 15),
        ece_after: expected_calibration_error(&labels, &cal, 15),
        brier_before: brier(&labels, &raw),
        brier_after: brier(&labels, &cal),
        nll_before: Some(nll(&labels, &raw)),
        nll_after: Some(nll(&labels, &cal)),
    };
    let rel = scoring::reliability(&labels, &raw, &cal);
    ctx.write_output("reliability.csv", &rel.into_bytes())?;
    // Classes that one plate mostly holds: the fold without that plate learns them from few
    // cells, which explains a low fold better than the model does (card caveat, report).
    let concentrated: Vec<ConcentratedClass> = concentrated_classes(&labels, &d.groups, nc)
        .iter()
        .map(|c| {
            // One sentence for the model card and the report alike.
            let note = format!(
                "{}: {} of its {} cells ({:.0} %) are on {group_by} {}. The fold that holds that {group_by} out learns the class from the {} cells left, so its score says as much about the data as about the model; more {group_by}s with this class would help most.",
                d.classes[c.class],
                c.top_cells,
                c.cells,
                100.0 * c.top_cells as f64 / c.cells as f64,
                c.top_group,
                c.cells - c.top_cells,
            );
            ConcentratedClass {
                class: d.classes[c.class].clone(),
                cells: c.cells,
                top_group: c.top_group.clone(),
                top_group_cells: c.top_cells,
                groups: c.groups,
                note,
            }
        })
        .collect();
    // Label QC: wells the model, out of fold, mostly puts in another class than their label.
    let (qc_table, checks) = readout::label_check(&d, &(0..n).collect::<Vec<_>>(), &labels, &pred);
    ctx.write_output("label_qc.csv", &qc_table.into_bytes())?;
    let suspect_wells: Vec<SuspectWell> = checks
        .iter()
        .filter(|c| c.flagged)
        .map(|c| SuspectWell {
            plate: c.well.0.clone(),
            well: c.well.1.clone(),
            label: d.classes[c.label].clone(),
            cells: c.cells,
            agreeing: c.agreeing,
            expected_agreeing: c.expected_agreeing,
            predicted_mostly: d.classes[c.predicted_mostly].clone(),
            p_value: c.p_value,
        })
        .collect();
    for w in &suspect_wells {
        ctx.logln(format!(
            "label QC: {} {} is labelled {} but {} of its {} cells are predicted {} (a right label would give about {:.0}; {})",
            w.plate,
            w.well,
            w.label,
            w.cells - w.agreeing,
            w.cells,
            w.predicted_mostly,
            w.expected_agreeing,
            readout::show_p(w.p_value)
        ));
    }
    let metrics = TrainMetrics {
        model: model_kind.clone(),
        split: SplitInfo {
            protocol: protocol.clone(),
            leaky,
            folds: folds.len(),
            groups: plates.iter().map(|p| p.to_string()).collect(),
            holdout: holdout.clone(),
        },
        normalisation: normalize.clone(),
        cells: n,
        classes: d.classes.clone(),
        scores: scoring::scores(
            &d.classes,
            &labels,
            &cal,
            headline,
            calibration,
            per_group_json,
        ),
        shuffled_label_weighted_f1: shuffled_f1,
        classes_mostly_in_one_group: concentrated,
        features_used: (params.model == ModelKind::Logistic).then_some(d.feature_names.len()),
        features_left_out: left_out,
        suspect_wells,
    };
    ctx.write_output(
        "metrics.json",
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    let truth: Vec<Option<usize>> = labels.iter().map(|&l| Some(l)).collect();
    let preds = scoring::predictions(&d, &group_by, &d.classes, &truth, &cal);
    ctx.write_output("predictions.csv", &preds.into_bytes())?;
    ctx.logln(format!(
        "{model_kind}, {n} cells, {nc} classes, {protocol}: weighted F1 {}, macro F1 {:.3}, shuffled-label control {shuffled_f1:.3}; ECE {:.3} -> {:.3} after temperature scaling",
        metrics.scores.weighted_f1.show(),
        metrics.scores.macro_f1.value,
        metrics.scores.calibration.ece_before,
        metrics.scores.calibration.ece_after,
    ));

    // The final model, fitted on every plate outside `holdout` (the CNN early-stops on
    // validation plates carved from them).
    let everything: Vec<usize> = (0..n).collect();
    let fitted = if model_kind == "cnn" {
        let s = Settings {
            progress: ctx.progress_sink("final model"),
            ..settings.clone()
        };
        fit_cnn(&d, &labels, &s, &everything)?.0
    } else {
        fitting::fit(&d, &labels, &settings, &everything, &everything)?.0
    };
    let (normalisation, architecture) = fitted.save(&d, &ctx.out.join("model.safetensors"))?;
    if let Some(w) = fitted.coefficients()? {
        write_coefficients(ctx, &d, &w)?;
        // Exact SHAP of the final model on the training cells.
        if let Some(z) = fitted.standardised_inputs(&d) {
            let final_probs = apply_temperature(&fitted.predict(&d, &everything)?, temperature);
            explain::write_shap(ctx, &d, &everything, &z, &w, &final_probs)?;
        }
    }
    if let Fitted::Cnn { model, .. } = &fitted {
        let interp = interpretation::write_figures(ctx, model, &d, &labels, &cal, seed)?;
        ctx.logln(format!(
            "saliency sanity check: trained vs randomised weights, mean Spearman {:.2} ({})",
            interp["sanity_check"]["mean_spearman"]
                .as_f64()
                .unwrap_or(f64::NAN),
            if interp["sanity_check"]["passed"] == true {
                "maps depend on the model"
            } else {
                "WARNING: maps barely depend on the weights"
            }
        ));
        ctx.write_output(
            "interpretation.json",
            serde_json::to_string_pretty(&interp)?.as_bytes(),
        )?;
    }
    let training_groups: Vec<String> = plates.iter().map(|s| s.to_string()).collect();
    let sidecar = ModelSidecar {
        classes: d.classes.clone(),
        label: label.clone(),
        group_by: group_by.clone(),
        normalisation: normalisation.clone(),
        plate_normalisation: normalize.clone(),
        architecture: architecture.clone(),
        temperature,
        training: TrainingData {
            groups: training_groups.clone(),
            holdout: holdout.clone(),
            cells: n,
            seed,
            label: label.clone(),
            files: d
                .used_digests()
                .iter()
                .map(|(f, h)| FileDigest {
                    file: f.clone(),
                    sha256: h.clone(),
                })
                .collect(),
        },
        cross_validation: metrics.clone(),
        software: Software {
            plateflow: env!("CARGO_PKG_VERSION").into(),
            candle: "0.11.1".into(),
        },
        texture_tops,
    };
    ctx.write_output(
        "model.json",
        serde_json::to_string_pretty(&sidecar)?.as_bytes(),
    )?;
    let exclusions = training_plate_exclusions(ctx, &group_by, &plates)?;
    card::write(
        ctx,
        &card::CardInput {
            name: &ctx.task.step,
            model: &model_kind,
            architecture: &architecture,
            classes: &d.classes,
            label: &label,
            group_by: &group_by,
            split: &protocol,
            leaky,
            training_groups,
            holdout: &holdout,
            cells: n,
            digests: &d.used_digests(),
            metrics: &metrics,
            exclusions,
            cell_line: params.cell_line.as_deref(),
            stains: params.stains.clone(),
            intended_use: params.intended_use.as_deref(),
            warm_start: warm_start.map(|w| {
                format!(
                    "{} ({})",
                    w.weights
                        .strip_prefix(ctx.work)
                        .unwrap_or(&w.weights)
                        .display(),
                    if w.freeze_features {
                        "conv blocks frozen"
                    } else {
                        "all layers trained"
                    }
                )
            }),
            seed,
        },
    )?;
    Ok(())
}

/// `coefficients.csv`: each feature's weight per class (standardised units) and its
/// importance (the weights' L2 norm over classes), ranked, with family and channel.
fn write_coefficients(ctx: &Context, d: &Data, w: &[Vec<f32>]) -> anyhow::Result<()> {
    let mut header = vec![
        "feature".to_string(),
        "family".into(),
        "channel".into(),
        "importance".into(),
    ];
    header.extend(d.classes.iter().map(|c| format!("w_{c}")));
    let mut rows: Vec<(f64, Vec<String>)> = d
        .feature_names
        .iter()
        .enumerate()
        .map(|(f, name)| {
            let imp = w
                .iter()
                .map(|row| (row[f] as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let (family, channel) = family_and_channel(name);
            let mut r = vec![name.clone(), family, channel, num(imp)];
            r.extend(w.iter().map(|row| num(row[f] as f64)));
            (imp, r)
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut t = Table::new(&header);
    for (_, r) in rows {
        t.push_row(r);
    }
    ctx.write_output("coefficients.csv", &t.into_bytes())
}

/// Image sets QC excluded on the training plates, from upstream `curate` steps'
/// `exclusions.csv`; `None` when none is upstream (the count is then unknown, not 0).
fn training_plate_exclusions(
    ctx: &Context,
    group_by: &str,
    plates: &BTreeSet<&str>,
) -> anyhow::Result<Option<usize>> {
    let files = ctx.upstream_files(|n| n == "exclusions.csv");
    if files.is_empty() {
        return Ok(None);
    }
    let mut n = 0;
    for (_, path) in files {
        let mut rdr = csv::Reader::from_path(&path)?;
        let plate_col = rdr.headers()?.iter().position(|h| h == "plate");
        for rec in rdr.records() {
            let rec = rec?;
            let on_training_plate = match plate_col {
                Some(c) if group_by == "plate" => plates.contains(rec.get(c).unwrap_or("")),
                _ => true,
            };
            n += usize::from(on_training_plate);
        }
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::testing;

    /// A `cells.csv` of four plates, each shifted as a whole (stain, illumination): controls
    /// labelled `pos` (F ≈ 10 above the plate) and `neg` (F ≈ 0), in mixes that differ by
    /// plate (10:30 or 30:10), and 100 unlabelled compound cells (F 3..7) per plate.
    fn screen(work: &std::path::Path) -> Vec<(String, String, String)> {
        let mut text = String::from(
            "ImageSet,Metadata_Plate,Metadata_Well,Metadata_Phenotype,ObjectNumber,Nuclei_F\n",
        );
        let mut rng = plateflow_learn::rng::Rng::new(7);
        for (p, shift) in [(1, 0.0), (2, 50.0), (3, -30.0), (4, 80.0)] {
            let (pos, neg) = if p % 2 == 1 { (10, 30) } else { (30, 10) };
            let cells = std::iter::repeat_n(("pos", 10.0), pos)
                .chain(std::iter::repeat_n(("neg", 0.0), neg))
                .chain(std::iter::repeat_n(("", 5.0), 100));
            for (i, (label, f)) in cells.enumerate() {
                let spread = if label.is_empty() { 4.0 } else { 1.0 };
                let v = shift + f + (rng.unit() - 0.5) * spread;
                text.push_str(&format!("P{p}_A01,P{p},A01,{label},{i},{v}\n"));
            }
        }
        std::fs::create_dir_all(work.join("f")).unwrap();
        std::fs::write(work.join("f/cells.csv"), text).unwrap();
        vec![("f".into(), "cells.csv".into(), "f/cells.csv".into())]
    }

    /// Two folds, plate P4 held out for `evaluate`.
    fn holding_out_p4() -> TrainParams {
        TrainParams {
            folds: 2,
            holdout: vec!["P4".into()],
            ..TrainParams::default()
        }
    }

    /// Each fold's accuracy from `cv.csv`.
    fn fold_accuracies(out: &std::path::Path) -> Vec<f64> {
        let mut rdr = csv::Reader::from_path(out.join("cv.csv")).unwrap();
        let col = rdr
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "accuracy")
            .unwrap();
        rdr.records()
            .map(|r| r.unwrap()[col].parse().unwrap())
            .collect()
    }

    /// Plates are centred on all their cells, as `evaluate` centres a new plate: centred on
    /// the labelled controls alone, a plate of mostly `neg` was centred on `neg` and one of
    /// mostly `pos` on `pos`, so held-out plates were called the wrong way round.
    #[test]
    fn plates_are_normalised_on_all_their_cells() {
        let tmp = tempfile::tempdir().unwrap();
        let upstream = screen(tmp.path());
        let task = testing::task("train", &[]);
        let mut ctx = testing::context(tmp.path(), &task, &[], &upstream);
        let params = TrainParams {
            folds: 2,
            ..TrainParams::default()
        };
        run(&mut ctx, &params).unwrap();
        let acc = fold_accuracies(&tmp.path().join("out"));
        assert!(acc.len() == 2 && acc.iter().all(|&a| a > 0.95), "{acc:?}");
    }

    /// A class labelled only on `holdout` plates is refused by name: no cell of it could be
    /// learned from.
    #[test]
    fn a_class_only_on_held_out_plates_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut upstream = screen(tmp.path());
        let text = std::fs::read_to_string(tmp.path().join("f/cells.csv")).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("P4_") && l.contains(",pos,") {
                    l.replace(",pos,", ",taxol,")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(tmp.path().join("f/cells.csv"), text + "\n").unwrap();
        upstream.truncate(1);
        let task = testing::task("train", &[]);
        let mut ctx = testing::context(tmp.path(), &task, &[], &upstream);
        let params = holding_out_p4();
        let e = format!("{:#}", run(&mut ctx, &params).unwrap_err());
        assert!(
            e.contains("taxol") && e.contains("only on `holdout` plates (P4)"),
            "{e}"
        );
    }

    /// A model trained with a plate held out evaluates that plate from the same `cells.csv`
    /// (a `features` step over all plates writes one): that file was trained on for the
    /// other plates, which is no leak, and the held-out cells are called right.
    #[test]
    fn a_held_out_plate_evaluates_from_the_table_trained_on() {
        let tmp = tempfile::tempdir().unwrap();
        let mut upstream = screen(tmp.path());
        let task = testing::task("train", &[]);
        let mut ctx = testing::context(tmp.path(), &task, &[], &upstream);
        let params = holding_out_p4();
        run(&mut ctx, &params).unwrap();
        for name in ["model.safetensors", "model.json"] {
            upstream.push(("train".into(), name.into(), format!("out/{name}")));
        }
        let task = testing::task("score", &[]);
        let mut ctx = testing::context(tmp.path(), &task, &[], &upstream);
        super::super::evaluate::run(&mut ctx, &Default::default()).unwrap();
        let mut rdr = csv::Reader::from_path(tmp.path().join("out/predictions.csv")).unwrap();
        let h = rdr.headers().unwrap().clone();
        let at = |n: &str| h.iter().position(|c| c == n).unwrap();
        let (truth, predicted) = (at("truth"), at("predicted"));
        let rows: Vec<csv::StringRecord> = rdr
            .records()
            .map(|r| r.unwrap())
            .filter(|r| !r[truth].is_empty())
            .collect();
        let right = rows.iter().filter(|r| r[truth] == r[predicted]).count();
        assert!(
            rows.len() == 40 && right >= 38,
            "{right} of {} right",
            rows.len()
        );
    }

    /// Texture quantised over different ranges on two `features` tasks is refused by `train`
    /// (a plate effect it would learn); agreeing, the range goes into the model's sidecar, and
    /// `evaluate` refuses plates quantised otherwise.
    #[test]
    fn texture_ranges_must_agree_across_plates_and_with_the_model() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let mut upstream = screen(work);
        let text = std::fs::read_to_string(work.join("f/cells.csv")).unwrap();
        std::fs::write(
            work.join("f/cells.csv"),
            text.replacen("Nuclei_F", "Nuclei_Texture_Contrast_DNA_3_avg_8", 1),
        )
        .unwrap();
        let quantised = |dir: &str, top: u32| {
            let q = TextureQuantisation {
                scale: 3,
                levels: 8,
                tops: BTreeMap::from([("DNA".to_string(), top)]),
                from: BTreeMap::from([("DNA".to_string(), format!("brightest pixel {top}"))]),
            };
            std::fs::create_dir_all(work.join(dir)).unwrap();
            std::fs::write(
                work.join(dir).join("texture.json"),
                serde_json::to_vec(&q).unwrap(),
            )
            .unwrap();
        };
        quantised("f", 16383);
        quantised("g", 4095);
        for t in ["f", "g"] {
            upstream.push((t.into(), "texture.json".into(), format!("{t}/texture.json")));
        }
        let task = testing::task("train", &[]);
        let mut ctx = testing::context(work, &task, &[], &upstream);
        let e = format!("{:#}", run(&mut ctx, &holding_out_p4()).unwrap_err());
        assert!(
            e.contains("0..4095 in g; 0..16383 in f") && e.contains("texture_max: 16383"),
            "{e}"
        );

        quantised("g", 16383);
        let mut ctx = testing::context(work, &task, &[], &upstream);
        run(&mut ctx, &holding_out_p4()).unwrap();
        let sidecar: ModelSidecar =
            serde_json::from_slice(&std::fs::read(work.join("out/model.json")).unwrap()).unwrap();
        assert_eq!(
            sidecar.texture_tops,
            BTreeMap::from([("DNA".to_string(), 16383)])
        );

        // The held-out plate's table quantised otherwise than the model's.
        quantised("g", 4095);
        for name in ["model.safetensors", "model.json"] {
            upstream.push(("train".into(), name.into(), format!("out/{name}")));
        }
        let task = testing::task("score", &[]);
        let mut ctx = testing::context(work, &task, &[], &upstream);
        let e = format!(
            "{:#}",
            super::super::evaluate::run(&mut ctx, &Default::default()).unwrap_err()
        );
        assert!(
            e.contains("quantised over 0..16383, but g quantised it over 0..4095")
                && e.contains("texture_max: 16383"),
            "{e}"
        );
    }
}
