//! The model card (Mitchell et al. 2019) written beside every saved model, as JSON (for
//! tools) and Markdown (for people): details, intended use, factors, metrics with intervals,
//! training and evaluation data with digests, quantitative analyses, caveats — and the
//! microscopy specifics a reader needs: cell line, stains, channels, QC exclusions, split
//! protocol, calibration, software versions.

use super::Context;
use plateflow_contract::metrics::TrainMetrics;
use serde_json::Value;
use std::fmt::Write as _;

/// What the `train` step knows, gathered for the card.
pub struct CardInput<'a> {
    pub name: &'a str,
    pub model: &'a str,
    pub architecture: &'a Value,
    pub classes: &'a [String],
    pub label: &'a str,
    pub group_by: &'a str,
    pub split: &'a str,
    pub leaky: bool,
    pub training_groups: Vec<String>,
    pub holdout: &'a [String],
    pub cells: usize,
    pub digests: &'a [(String, String)],
    pub metrics: &'a TrainMetrics,
    /// Image sets QC excluded on the training plates; `None` when no `curate` step is
    /// upstream to say.
    pub exclusions: Option<usize>,
    pub cell_line: Option<&'a str>,
    pub stains: Vec<String>,
    pub intended_use: Option<&'a str>,
    pub warm_start: Option<String>,
    pub seed: u64,
}

/// The architecture in words, from the sidecar's JSON.
pub fn architecture_in_words(a: &Value) -> String {
    let n = |k: &str| a[k].as_u64().map_or("?".to_string(), |v| v.to_string());
    match a["kind"].as_str() {
        Some("logistic") => format!(
            "multinomial logistic regression (a linear model) on {} standardised per-cell features",
            n("features")
        ),
        Some("cnn") => {
            let input = a["input"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(" × ")
                })
                .unwrap_or_else(|| "?".into());
            format!(
                "convolutional network: {} blocks of 3×3 convolutions starting at {} channels (doubling per block, each halving the resolution), global average pooling, dropout {}, a linear layer per class; input {} (channels × height × width) single-cell crops{}",
                n("depth"),
                n("width"),
                a["dropout"].as_f64().map_or("?".into(), |d| format!("{d}")),
                input,
                if a["test_time_augmentation"] == true {
                    "; predictions average the 8 flips and rotations of each crop"
                } else {
                    ""
                }
            )
        }
        _ => a.to_string(),
    }
}

/// A warning when the model has not shown it beats its shuffled-label control: the lower
/// end of its interval (or, without one, its value less 0.05) is not above the control.
pub fn control_warning(
    score: &plateflow_contract::metrics::Estimate,
    control: f64,
) -> Option<String> {
    let floor = if score.ci95_by_plate[0].is_finite() {
        score.ci95_by_plate[0]
    } else {
        score.value - 0.05
    };
    (control.is_finite() && score.value.is_finite() && floor <= control).then(|| {
        format!(
            "WARNING: the model does not clearly beat its shuffled-label control (weighted F1 {} against {control:.3}): it has not shown that it learned the phenotype. Do not use it for decisions.",
            score.show()
        )
    })
}

/// Below this many labelled cells a class's scores are called anecdotal in the card.
const FEW_CELLS: usize = 20;

fn caveats(c: &CardInput) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(w) = control_warning(
        &c.metrics.scores.weighted_f1,
        c.metrics.shuffled_label_weighted_f1,
    ) {
        out.push(w);
    }
    for w in &c.metrics.suspect_wells {
        out.push(format!(
            "Label QC: {} {} is labelled {} but {} of its {} cells look {} to the model (a right label would give about {:.0} agreeing; {}). Check the plate map: a wrong label there also teaches the model wrong.",
            w.plate, w.well, w.label, w.cells - w.agreeing, w.cells, w.predicted_mostly, w.expected_agreeing, super::readout::show_p(w.p_value)
        ));
    }
    if c.leaky {
        out.push("The split was a random split of cells (`split: random`): cells of one plate sit on both sides, so the scores overstate accuracy on new plates. Do not use them as evidence.".into());
    }
    let groups = c.training_groups.len();
    if groups < 5 {
        out.push(format!("Trained on {groups} {}s only: the intervals are wide and the model has seen little batch variation.", c.group_by));
    }
    let s = c.metrics.shuffled_label_weighted_f1;
    if s.is_finite() {
        out.push(format!("A model trained the same way on shuffled labels scores weighted F1 {s:.3}: the level reached by learning nothing about the phenotype."));
    }
    // A class of a handful of cells: its scores are anecdotes, whatever they read.
    let few: Vec<String> = c
        .metrics
        .scores
        .per_class
        .iter()
        .filter(|k| k.cells > 0 && k.cells < FEW_CELLS)
        .map(|k| format!("{} ({} cells)", k.class, k.cells))
        .collect();
    if !few.is_empty() {
        out.push(format!(
            "Classes with fewer than {FEW_CELLS} labelled cells: {}. Their precision, recall and F1 rest on too few cells to mean much; label more before relying on them.",
            few.join(", ")
        ));
    }
    // Sentences written by `train` (metrics.json), at most five.
    out.extend(
        c.metrics
            .classes_mostly_in_one_group
            .iter()
            .map(|k| k.note.clone())
            .take(5),
    );
    let cal = &c.metrics.scores.calibration;
    let (before, after) = (cal.ece_before, cal.ece_after);
    {
        if after > before {
            out.push(format!("Temperature scaling fitted on validation plates made calibration worse on the held-out plates (ECE {before:.3} → {after:.3}): confidence does not transfer between these plates, so treat probabilities as rankings."));
        }
    }
    out.push(format!(
        "Valid for images like the training ones: same {}, stains, magnification and acquisition settings. Check QC and the per-plate scores before trusting it on a new batch.",
        c.cell_line.map_or("cell line".to_string(), |l| format!("cell line ({l})"))
    ));
    out.push("Classes are those of the training labels; a cell of an unseen phenotype is forced into one of them.".into());
    out
}

/// Writes `model_card.json` and `model_card.md`.
pub fn write(ctx: &Context, c: &CardInput) -> anyhow::Result<()> {
    let m = &c.metrics.scores;
    let cal = &m.calibration;
    let card = serde_json::json!({
        "model_details": {
            "name": c.name,
            "kind": c.model,
            "architecture": c.architecture,
            "architecture_in_words": architecture_in_words(c.architecture),
            "features_used": c.metrics.features_used,
            "features_left_out": c.metrics.features_left_out,
            "classes": c.classes,
            "seed": c.seed,
            "warm_start": c.warm_start,
            "software": {"plateflow": env!("CARGO_PKG_VERSION"), "candle": "0.11.1"},
        },
        "intended_use": c.intended_use.unwrap_or("Research use: classifying single-cell phenotypes in images acquired like the training plates. Not for diagnosis."),
        "factors": {
            "group_by": c.group_by,
            "cell_line": c.cell_line,
            "stains": c.stains,
            "label": c.label,
        },
        "metrics": {
            "weighted_f1": m.weighted_f1,
            "macro_f1": m.macro_f1,
            "accuracy": m.accuracy,
            "balanced_accuracy": m.balanced_accuracy,
            "shuffled_label_weighted_f1": c.metrics.shuffled_label_weighted_f1,
            "per_class": m.per_class,
        },
        "evaluation_data": {
            "protocol": c.split,
            "leaky": c.leaky,
            "groups": c.training_groups,
            "held_out_for_evaluate": c.holdout,
        },
        "training_data": {
            "groups": c.training_groups,
            "cells": c.cells,
            "qc_excluded_image_sets": c.exclusions,
            "wells_whose_label_looks_wrong": c.metrics.suspect_wells,
            "files": c.digests.iter().map(|(f, d)| serde_json::json!({"file": f, "sha256": d})).collect::<Vec<_>>(),
        },
        "quantitative_analyses": {
            "per_group": m.per_group,
            "confusion": m.confusion,
        },
        "calibration": cal,
        "caveats": caveats(c),
    });
    ctx.write_output(
        "model_card.json",
        serde_json::to_string_pretty(&card)?.as_bytes(),
    )?;

    let mut md = String::new();
    let _ = writeln!(md, "# Model card: {} ({})\n", c.name, c.model);
    let _ = writeln!(md, "## Model details\n");
    let _ = writeln!(
        md,
        "- Kind: {}; architecture: {}",
        c.model,
        architecture_in_words(c.architecture)
    );
    if let Some(used) = c.metrics.features_used {
        let left = &c.metrics.features_left_out;
        let _ = writeln!(
            md,
            "- Features: {used} used; {} left out{}",
            left.len(),
            if left.is_empty() {
                String::new()
            } else {
                let mut why: Vec<String> = left.iter().map(|l| l.why.clone()).collect();
                why.sort();
                why.dedup();
                format!(
                    " ({}; e.g. {}). Change with `exclude_features:` / `include_features:`",
                    why.join("; "),
                    left.iter()
                        .take(3)
                        .map(|l| l.feature.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let _ = writeln!(
        md,
        "- Classes ({}): {}",
        c.classes.len(),
        c.classes.join(", ")
    );
    let _ = writeln!(
        md,
        "- Seed: {}; software: plateflow {}, Candle 0.11.1",
        c.seed,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(w) = &c.warm_start {
        let _ = writeln!(md, "- Started from: {w}");
    }
    let _ = writeln!(
        md,
        "\n## Intended use\n\n{}\n",
        card["intended_use"].as_str().unwrap_or("")
    );
    let _ = writeln!(md, "## Factors\n");
    let _ = writeln!(
        md,
        "- Cell line: {}",
        c.cell_line.unwrap_or("not stated (set `cell_line:`)")
    );
    let _ = writeln!(
        md,
        "- Stains / channels: {}",
        if c.stains.is_empty() {
            "not stated (set `stains:`)".to_string()
        } else {
            c.stains.join(", ")
        }
    );
    let _ = writeln!(
        md,
        "- Label: plate-map column `{}`; groups kept whole: `{}`",
        c.label, c.group_by
    );
    let _ = writeln!(md, "\n## Metrics ({})\n", c.split);
    let _ = writeln!(md, "| metric | value |\n|---|---|");
    let _ = writeln!(md, "| weighted F1 | {} |", m.weighted_f1.show());
    let _ = writeln!(md, "| macro F1 | {} |", m.macro_f1.show());
    let _ = writeln!(md, "| accuracy | {:.3} |", m.accuracy);
    let _ = writeln!(md, "| balanced accuracy | {:.3} |", m.balanced_accuracy);
    let _ = writeln!(
        md,
        "| shuffled-label control, weighted F1 | {:.3} |",
        c.metrics.shuffled_label_weighted_f1
    );
    let _ = writeln!(
        md,
        "| ECE (15 bins), before → after temperature scaling | {:.3} → {:.3} |",
        cal.ece_before, cal.ece_after
    );
    let _ = writeln!(
        md,
        "| Brier, before → after | {:.3} → {:.3} |",
        cal.brier_before, cal.brier_after
    );
    let _ = writeln!(md, "\n## Evaluation data\n");
    let _ = writeln!(
        md,
        "- Protocol: {}{}",
        c.split,
        if c.leaky {
            " — LEAKY: cells of one plate on both sides"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "- {}s: {}", c.group_by, c.training_groups.join(", "));
    if !c.holdout.is_empty() {
        let _ = writeln!(
            md,
            "- Held out of all fitting, for `evaluate`: {}",
            c.holdout.join(", ")
        );
    }
    let _ = writeln!(md, "\n## Training data\n");
    let _ = writeln!(
        md,
        "- {} labelled cells from {} {}s; {}",
        c.cells,
        c.training_groups.len(),
        c.group_by,
        match c.exclusions {
            Some(n) => format!("{n} image sets excluded by QC on these {}s", c.group_by),
            None => "QC exclusions not known here (put the `curate` step in this step's `after:` to count them)".into(),
        }
    );
    let _ = writeln!(md, "- Files read (SHA-256):");
    for (f, d) in c.digests {
        let _ = writeln!(md, "  - `{f}` `{d}`");
    }
    let _ = writeln!(md, "\n## Quantitative analyses\n");
    let _ = writeln!(
        md,
        "| {} | cells | weighted F1 | accuracy |\n|---|---|---|---|",
        c.group_by
    );
    for g in &m.per_group {
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} |",
            g.group, g.cells, g.weighted_f1, g.accuracy
        );
    }
    let _ = writeln!(
        md,
        "\nPer class:\n\n| class | cells | precision | recall | F1 |\n|---|---|---|---|---|"
    );
    for k in &m.per_class {
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.3} |",
            k.class, k.cells, k.precision, k.recall, k.f1
        );
    }
    let _ = writeln!(md, "\n## Calibration\n");
    let _ = writeln!(
        md,
        "Temperature scaling is fitted on validation {}s (never on the {}s scored) and applied only where it lowers both the negative log-likelihood and the ECE of {}s it was not fitted on; the saved model applies T = {:.3}.",
        c.group_by,
        c.group_by,
        c.group_by,
        cal.temperature
    );
    if let (Some(fitted), Some(why)) = (cal.temperature_fitted, &cal.decision) {
        let _ = writeln!(md, "Fitted T = {fitted:.3}, {why}.");
    }
    let _ = writeln!(md, "\n## Caveats\n");
    for cv in caveats(c) {
        let _ = writeln!(md, "- {cv}");
    }
    ctx.write_output("model_card.md", md.as_bytes())
}

/// The training card with a "Held-out evaluation" section (before the caveats): `evaluate`
/// writes it, so the card beside a scored model carries the score on plates it never saw.
pub fn with_held_out(card_md: &str, m: &plateflow_contract::metrics::EvaluationMetrics) -> String {
    let mut sec = String::from("## Held-out evaluation\n\n");
    let _ = writeln!(
        sec,
        "- {}: {} cells ({} labelled), model trained on {}",
        m.what,
        m.cells,
        m.labelled_cells,
        m.trained_on.join(", ")
    );
    match &m.scores {
        Some(s) => {
            let _ = writeln!(
                sec,
                "- Weighted F1 {}; macro F1 {}",
                s.weighted_f1.show(),
                s.macro_f1.show()
            );
            let _ = writeln!(
                sec,
                "- Accuracy {:.3}, balanced accuracy {:.3}; ECE {:.3} with T = {:.3} (without: {:.3})",
                s.accuracy, s.balanced_accuracy, s.calibration.ece_after, s.calibration.temperature, s.calibration.ece_before
            );
            if let Some(chance) = m.chance_weighted_f1 {
                let _ = writeln!(
                    sec,
                    "- The same predictions against shuffled labels: weighted F1 {chance:.3}"
                );
                if let Some(w) = control_warning(&s.weighted_f1, chance) {
                    let _ = writeln!(sec, "- {w}");
                }
            }
        }
        None => {
            let _ = writeln!(
                sec,
                "- No labelled cells: scores need labels on the held-out plates"
            );
        }
    }
    sec.push('\n');
    match card_md.find("## Caveats") {
        Some(at) => format!("{}{sec}{}", &card_md[..at], &card_md[at..]),
        None => format!("{card_md}\n{sec}"),
    }
}
