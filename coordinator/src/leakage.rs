//! The leakage guard at planning time: before any task runs, refuse a pipeline whose
//! evaluation data overlaps its training data. The coordinator knows every image's plate,
//! well and content digest, so it can check what the `train` step itself cannot:
//! - `holdout:` plates exist, and at least two plates remain to cross-validate on;
//! - no held-out image is identical (same SHA-256) to a training image — a copied or
//!   re-exported plate would otherwise be scored as "new";
//! - an `evaluate` step's `plates:` were all held out by the `train` step it follows;
//! - `split: random` (cells of one plate on both sides) only with `allow_leaky_split: true`.
//!
//! Plain functions over the pipeline and the dataset: testable without sockets.

use crate::dataset::Dataset;
use crate::spec::{Pipeline, StepSpec};
use std::collections::{BTreeMap, BTreeSet};

fn strings(step: &StepSpec, key: &str) -> Vec<String> {
    step.params
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every problem found, each naming the pipeline file, the step and the fix.
pub fn check(pipeline: &Pipeline, ds: &Dataset) -> Result<(), String> {
    let file = pipeline.file.display();
    let mut problems = Vec::new();
    for step in pipeline.steps.iter().filter(|s| s.kind.name == "train") {
        let name = &step.name;
        let split = step
            .params
            .get("split")
            .and_then(|v| v.as_str())
            .unwrap_or("group");
        let opted_in = step
            .params
            .get("allow_leaky_split")
            .and_then(|v| v.as_bool())
            == Some(true);
        if split == "random" && !opted_in {
            problems.push(format!(
                "{file}: step `{name}`: `split: random` puts cells of one plate on both sides of every fold (leaky); add `allow_leaky_split: true` to accept that, or remove `split:`"
            ));
        }
        let holdout = strings(step, "holdout");
        let group_by = step
            .params
            .get("group_by")
            .and_then(|v| v.as_str())
            .unwrap_or("plate");
        // Groups that are plate-map columns (batch, date) are checked by the step at run time.
        let Some(field) = ds.field_index(group_by) else {
            continue;
        };
        if holdout.is_empty() {
            continue;
        }
        let mut images_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, img) in ds.images.iter().enumerate() {
            images_of
                .entry(ds.values.get(img.fields[field]))
                .or_default()
                .push(i);
        }
        let present: Vec<&str> = images_of.keys().copied().collect();
        for h in &holdout {
            if !images_of.contains_key(h.as_str()) {
                problems.push(format!(
                    "{file}: step `{name}`: `holdout: {h}` is not a {group_by} of this data set (found {})",
                    present.join(", ")
                ));
            }
        }
        let held: BTreeSet<&str> = holdout.iter().map(String::as_str).collect();
        let training: Vec<&str> = present
            .iter()
            .copied()
            .filter(|g| !held.contains(g))
            .collect();
        if training.len() < 2 && split != "random" {
            problems.push(format!(
                "{file}: step `{name}`: after `holdout:` only {} {group_by}(s) remain ({}); cross-validation by {group_by} needs at least 2",
                training.len(),
                training.join(", ")
            ));
        }
        // Identical images across the split.
        let mut train_digests: BTreeMap<_, &str> = BTreeMap::new();
        for g in &training {
            for &i in &images_of[g] {
                if let Some(d) = &ds.images[i].digest {
                    train_digests
                        .entry(d.clone())
                        .or_insert(&ds.images[i].rel_path);
                }
            }
        }
        let mut shared = Vec::new();
        for g in &held {
            for &i in images_of.get(g).into_iter().flatten() {
                let img = &ds.images[i];
                if let Some(other) = img.digest.as_ref().and_then(|d| train_digests.get(d)) {
                    shared.push(format!("{} = {}", img.rel_path, other));
                }
            }
        }
        if !shared.is_empty() {
            let n = shared.len();
            shared.truncate(5);
            problems.push(format!(
                "{file}: step `{name}`: {n} held-out image(s) are identical (same SHA-256) to training images, e.g. {}; held-out plates must be new data",
                shared.join("; ")
            ));
        }
        // Evaluate steps that follow this train step may only score held-out plates.
        let me = pipeline.steps.iter().position(|s| s.name == step.name);
        for ev in pipeline.steps.iter().filter(|s| s.kind.name == "evaluate") {
            if !me.is_some_and(|m| ev.after.contains(&m)) {
                continue;
            }
            for p in strings(ev, "plates") {
                if !held.contains(p.as_str()) {
                    problems.push(format!(
                        "{file}: step `{}`: `plates: {p}`: step `{name}` trains on {group_by} {p}; evaluate only its `holdout:` {group_by}s ({})",
                        ev.name,
                        holdout.join(", ")
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("leakage guard: {}", problems.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{pipeline, synthetic_dataset};

    const TRAIN: &str = "steps:\n  model:\n    uses: train\n    with:\n      holdout: [P0002]\n  ev:\n    uses: evaluate\n    after: [model]\n";

    #[test]
    fn a_clean_holdout_passes() {
        let mut ds = synthetic_dataset(3, 2);
        for (i, img) in ds.images.iter_mut().enumerate() {
            img.digest = Some(plateflow_store::hash_bytes(format!("image {i}").as_bytes()));
        }
        check(&pipeline(TRAIN), &ds).unwrap();
    }

    #[test]
    fn refuses_unknown_holdout_identical_images_training_plates_and_silent_random_splits() {
        let mut ds = synthetic_dataset(3, 2);
        for (i, img) in ds.images.iter_mut().enumerate() {
            // P0002/W001 is a copy of P0000/W001.
            let content = if i == 5 { 1 } else { i };
            img.digest = Some(plateflow_store::hash_bytes(
                format!("image {content}").as_bytes(),
            ));
        }
        let err = check(&pipeline(TRAIN), &ds).unwrap_err();
        assert!(
            err.contains("identical") && err.contains("P0002/W001.tif = P0000/W001.tif"),
            "{err}"
        );
        let p = pipeline("steps:\n  model:\n    uses: train\n    with:\n      holdout: [P9, P0001]\n      split: random\n  ev:\n    uses: evaluate\n    after: [model]\n    with:\n      plates: [P0000]\n");
        let err = check(&p, &synthetic_dataset(2, 2)).unwrap_err();
        for part in [
            "`holdout: P9` is not a plate of this data set (found P0000, P0001)",
            "`split: random`",
            "step `ev`: `plates: P0000`: step `model` trains on plate P0000",
        ] {
            assert!(err.contains(part), "missing {part:?} in {err}");
        }
        let p = pipeline("steps:\n  model:\n    uses: train\n    with:\n      holdout: [P0001]\n");
        let err = check(&p, &synthetic_dataset(2, 2)).unwrap_err();
        assert!(err.contains("only 1 plate(s) remain"), "{err}");
    }
}
