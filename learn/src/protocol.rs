//! The cross-validation protocol, as plain functions over [`Data`]: folds that keep plates
//! whole (and pass the leakage guard), validation plates carved from each fold's training
//! plates for early stopping and temperature scaling, a refit on all training plates, and a
//! shuffled-label control trained the same way. The `train` step reads files, calls
//! [`cross_validate`] and writes tables; everything here is testable without files.

use crate::cells::Data;
use crate::fitting::{self, Fitted, Settings};
use crate::metrics::fit_temperature_across_groups;
use crate::rng::Rng;
use crate::split::{check_no_leak, group_kfold, Fold};
use crate::train::{History, Progress};
use anyhow::Context as _;
use std::collections::BTreeSet;

/// Splits `train` (cell indices) into cells to fit on and validation cells from other
/// groups, for early stopping and temperature scaling. With a single group there is nothing
/// to validate on but the training cells themselves (`None`).
pub fn carve_validation(
    groups: &[String],
    train: &[usize],
) -> anyhow::Result<Option<(Vec<usize>, Vec<usize>)>> {
    let train_groups: Vec<String> = train.iter().map(|&i| groups[i].clone()).collect();
    let distinct: BTreeSet<&String> = train_groups.iter().collect();
    if distinct.len() < 2 {
        return Ok(None);
    }
    let inner = &group_kfold(&train_groups, distinct.len().min(4))?[0];
    Ok(Some((
        inner.train.iter().map(|&j| train[j]).collect(),
        inner.test.iter().map(|&j| train[j]).collect(),
    )))
}

/// What one fit-and-calibrate produced on its test cells.
pub struct Scored {
    /// Uncalibrated probabilities of the test cells.
    pub raw: Vec<Vec<f64>>,
    pub temperature: f64,
    /// CNN: the learning curve and the epochs chosen.
    pub history: Option<History>,
}

/// Fits on `train` and scores `test`.
/// - CNN: the validation plates carved from `train` early-stop it and fit the temperature.
/// - Logistic (no early stopping): fitted on all of `train`; its temperature comes from
///   cross-fitting over the training plates (each inner fold's plates scored by a model that
///   did not see them, pooled), so it is fitted on predictions like the ones it is applied to.
pub fn fit_and_score(
    d: &Data,
    y: &[usize],
    s: &Settings,
    train: &[usize],
    test: &[usize],
) -> anyhow::Result<Scored> {
    if s.model == "logistic" {
        let groups: Vec<String> = train.iter().map(|&i| d.groups[i].clone()).collect();
        let distinct = groups.iter().collect::<BTreeSet<_>>().len();
        let temperature = if distinct >= 2 {
            let (mut truth, mut probs, mut plates) = (Vec::new(), Vec::new(), Vec::new());
            for f in group_kfold(&groups, distinct.min(3))? {
                let fit_on: Vec<usize> = f.train.iter().map(|&j| train[j]).collect();
                let val: Vec<usize> = f.test.iter().map(|&j| train[j]).collect();
                probs.extend(
                    fitting::fit(d, y, s, &fit_on, &fit_on)?
                        .0
                        .predict(d, &val)?,
                );
                truth.extend(val.iter().map(|&i| y[i]));
                plates.extend(val.iter().map(|&i| d.groups[i].clone()));
            }
            fit_temperature_across_groups(&truth, &probs, &plates).applied
        } else {
            1.0 // one training plate: nothing to calibrate on that the model did not see
        };
        let (model, _) = fitting::fit(d, y, s, train, train)?;
        return Ok(Scored {
            raw: model.predict(d, test)?,
            temperature,
            history: None,
        });
    }
    let (model, history, temperature) = fit_cnn(d, y, s, train)?;
    Ok(Scored {
        raw: model.predict(d, test)?,
        temperature,
        history: Some(history),
    })
}

/// The CNN on the cells `train`: early-stopped on validation plates carved from them (which
/// also fit the temperature); then, with `refit` (the default), trained again on all of
/// `train` for the epoch count the validation plates chose, so no training plate is lost
/// to validation (a quarter of them otherwise). The temperature stays the one fitted on the
/// first model's validation plates: the refit model has seen those plates.
pub fn fit_cnn(
    d: &Data,
    y: &[usize],
    s: &Settings,
    train: &[usize],
) -> anyhow::Result<(Fitted, History, f64)> {
    let Some((fit_on, val)) = carve_validation(&d.groups, train)? else {
        // One plate: nothing to validate on but the training cells themselves.
        let (model, history) = fitting::fit(d, y, s, train, train)?;
        return Ok((model, history.unwrap_or_default(), 1.0));
    };
    let (model, history) = fitting::fit(d, y, s, &fit_on, &val)?;
    let mut history = history.unwrap_or_default();
    let val_truth: Vec<usize> = val.iter().map(|&i| y[i]).collect();
    let val_plates: Vec<String> = val.iter().map(|&i| d.groups[i].clone()).collect();
    let temperature =
        fit_temperature_across_groups(&val_truth, &model.predict(d, &val)?, &val_plates).applied;
    if !s.refit {
        return Ok((model, history, temperature));
    }
    let epochs = history.best_epoch + 1;
    let again = Settings {
        epochs: Some(epochs),
        progress: s.progress.with_prefix("refit on all training plates"),
        ..s.clone()
    };
    let (refit, _) = fitting::fit(d, y, &again, train, &[])?;
    history.refit_epochs = Some(epochs);
    Ok((refit, history, temperature))
}

/// Random folds of cells, for `split: random` (leaky; opt-in only).
pub fn random_folds(n: usize, k: usize, seed: u64) -> Vec<Fold> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ 0x1EA4).shuffle(&mut order);
    (0..k)
        .map(|f| {
            let test: Vec<usize> = order.iter().copied().skip(f).step_by(k).collect();
            let in_test: BTreeSet<usize> = test.iter().copied().collect();
            Fold {
                train: (0..n).filter(|i| !in_test.contains(i)).collect(),
                test,
                held_out: vec![format!("random fold {f}")],
            }
        })
        .collect()
}

/// One fold's out-of-fold scores and its shuffled-label control.
pub struct FoldOutcome {
    pub fold: Fold,
    pub scored: Scored,
    /// The control's predictions (trained the same way on shuffled labels).
    pub control_raw: Vec<Vec<f64>>,
}

/// Cross-validates over `folds`: in each, fits on its training cells (and the control on
/// `shuffled` labels) and scores its test cells. Unless `leaky`, every fold first passes the
/// leakage guard (no plate, well or image on both sides). `progress(label)` gives each fit
/// its progress sink.
pub fn cross_validate(
    d: &Data,
    labels: &[usize],
    shuffled: &[usize],
    folds: &[Fold],
    settings: &Settings,
    leaky: bool,
    progress: &dyn Fn(&str) -> Progress,
) -> anyhow::Result<Vec<FoldOutcome>> {
    let mut out = Vec::with_capacity(folds.len());
    for (fi, f) in folds.iter().enumerate() {
        if !leaky {
            check_no_leak(&d.origins, &d.groups, &f.train, &f.test)
                .with_context(|| format!("fold {fi}"))?;
        }
        let of = format!("fold {}/{}", fi + 1, folds.len());
        let s = Settings {
            progress: progress(&of),
            ..settings.clone()
        };
        let scored = fit_and_score(d, labels, &s, &f.train, &f.test)?;
        let s = Settings {
            progress: progress(&format!("{of}, shuffled-label control")),
            ..settings.clone()
        };
        let control = fit_and_score(d, shuffled, &s, &f.train, &f.test)?;
        out.push(FoldOutcome {
            fold: f.clone(),
            scored,
            control_raw: control.raw,
        });
    }
    Ok(out)
}

/// The protocol's folds: whole groups (at most `k`, at least 2 groups needed), or random
/// cells when `leaky` (`split: random`, opted into).
pub fn folds(d: &Data, k: usize, leaky: bool, seed: u64) -> anyhow::Result<Vec<Fold>> {
    if leaky {
        return Ok(random_folds(d.len(), k.max(2), seed));
    }
    let groups: BTreeSet<&str> = d.groups.iter().map(String::as_str).collect();
    anyhow::ensure!(
        groups.len() >= 2,
        "cross-validation needs at least 2 groups with labelled cells outside `holdout`; found {}",
        groups.len()
    );
    group_kfold(&d.groups, k.min(groups.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Origin;

    /// Two classes that differ in one feature, on four plates with a plate-wide offset.
    fn cells() -> (Data, Vec<usize>) {
        let mut d = Data {
            shape: vec![2],
            classes: vec!["a".into(), "b".into()],
            feature_names: vec!["signal".into(), "noise".into()],
            digests: vec![("cells.csv".into(), "00".into())],
            ..Data::default()
        };
        let mut rng = Rng::new(7);
        let mut labels = Vec::new();
        for p in 0..4 {
            for i in 0..40 {
                let y = i % 2;
                let offset = p as f32 * 0.3;
                d.x.push(y as f32 * 2.0 + offset + rng.unit() as f32 * 0.5);
                d.x.push(rng.unit() as f32);
                d.labels.push(Some(y));
                labels.push(y);
                d.groups.push(format!("P{p}"));
                d.origins.push(Origin {
                    plate: format!("P{p}"),
                    well: format!("A{:02}", i % 4),
                    image_digest: format!("P{p}-{}", i % 4),
                });
                d.ids.push(format!("P{p}#{i}"));
                d.file_of.push(0);
            }
        }
        (d, labels)
    }

    fn settings() -> Settings {
        Settings {
            model: "logistic".into(),
            epochs: Some(100),
            seed: 0,
            width: 4,
            depth: 1,
            warm_start: None,
            refit: true,
            device: candle_core::Device::Cpu,
            scale_jitter: 0.0,
            stop_on: crate::train::StopOn::WeightedF1,
            tta: false,
            progress: Progress::default(),
        }
    }

    #[test]
    fn every_cell_is_scored_once_by_a_model_that_never_saw_its_plate() {
        let (d, labels) = cells();
        let folds = folds(&d, 4, false, 0).unwrap();
        assert_eq!(folds.len(), 4);
        let mut shuffled = labels.clone();
        Rng::new(1).shuffle(&mut shuffled);
        let out = cross_validate(&d, &labels, &shuffled, &folds, &settings(), false, &|_| {
            Progress::default()
        })
        .unwrap();
        let mut seen = vec![0; d.len()];
        let mut right = 0;
        for f in &out {
            let test_plates: BTreeSet<&str> =
                f.fold.test.iter().map(|&i| d.groups[i].as_str()).collect();
            assert!(f
                .fold
                .train
                .iter()
                .all(|&i| !test_plates.contains(d.groups[i].as_str())));
            for (j, &i) in f.fold.test.iter().enumerate() {
                seen[i] += 1;
                let p = &f.scored.raw[j];
                right += usize::from((p[1] > p[0]) == (labels[i] == 1));
            }
            assert!(f.scored.temperature > 0.0);
            assert_eq!(f.control_raw.len(), f.fold.test.len());
        }
        assert!(seen.iter().all(|&n| n == 1));
        assert!(
            right as f64 / d.len() as f64 > 0.9,
            "{right} of {}",
            d.len()
        );
    }

    #[test]
    fn a_fold_that_shares_a_plate_is_refused() {
        let (d, labels) = cells();
        let bad = vec![Fold {
            train: (0..80).collect(),
            test: (40..160).collect(),
            held_out: vec!["P1".into()],
        }];
        let e = cross_validate(&d, &labels, &labels, &bad, &settings(), false, &|_| {
            Progress::default()
        });
        assert!(e.is_err());
    }
}
