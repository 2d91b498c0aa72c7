//! The leakage guard at planning time: before any task runs, refuse a pipeline whose
//! evaluation data overlaps its training data. The coordinator knows every image's plate,
//! well and content digest, so it can check what the `train` step itself cannot:
//! no held-out image is identical (same SHA-256) to a training image — a copied or
//! re-exported plate would otherwise be scored as "new". (That `holdout:` plates exist, that
//! two remain, that `evaluate` scores only held-out plates and that `split: random` is opted
//! into are checked with the pipeline's own diagnostics: [`crate::spec::against_data`] and
//! the typed parameters.)
//!
//! Plain functions over the pipeline and the dataset: testable without sockets.

use crate::dataset::Dataset;
use crate::spec::Pipeline;
use std::collections::{BTreeMap, BTreeSet};

/// Every problem found, each naming the pipeline file, the step and the fix.
pub fn check(pipeline: &Pipeline, ds: &Dataset) -> Result<(), String> {
    let file = pipeline.file.display();
    let mut problems = Vec::new();
    for step in &pipeline.steps {
        let Some(t) = step.params.as_train() else {
            continue;
        };
        let name = &step.name;
        let group_by = t.group_by.as_str();
        // Groups that are plate-map columns (batch, date) are checked by the step at run time.
        let Some(field) = ds.field_index(group_by) else {
            continue;
        };
        if t.holdout.is_empty() {
            continue;
        }
        let mut images_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, img) in ds.images.iter().enumerate() {
            images_of
                .entry(ds.values.get(img.fields[field]))
                .or_default()
                .push(i);
        }
        let held: BTreeSet<&str> = t.holdout.iter().map(String::as_str).collect();
        // Identical images across the split.
        let mut train_digests: BTreeMap<_, &str> = BTreeMap::new();
        for (g, images) in &images_of {
            if held.contains(g) {
                continue;
            }
            for &i in images {
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
    fn refuses_held_out_images_identical_to_training_images() {
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
    }
}
