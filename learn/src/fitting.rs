//! Fitting, predicting, saving and loading the two models on [`Data`]: shared by `train`
//! (cross-validation folds and the final model) and `evaluate` (a saved model on new plates).

use crate::cells::Data;
use crate::model::{Cnn, CnnConfig, Logistic};
use crate::train::{
    predict_cnn, predict_cnn_tta, predict_logistic, train_cnn, train_logistic, History, Samples,
    Standardizer, TrainConfig, WarmStart,
};
use anyhow::Context as _;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use std::path::Path;

/// How to fit: the `train` step's parameters that shape a model.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `logistic` or `cnn`.
    pub model: String,
    pub epochs: Option<usize>,
    pub seed: u64,
    pub width: usize,
    pub depth: usize,
    pub warm_start: Option<WarmStart>,
    /// CNN: after early stopping on validation plates, train again on all training plates
    /// for the chosen number of epochs.
    pub refit: bool,
    /// Where the CNN trains (the logistic model always fits on the CPU: it is small).
    pub device: Device,
    /// CNN zoom augmentation, U(1 − s, 1 + s); 0 is off.
    pub scale_jitter: f64,
    /// What early stopping follows on the validation plates.
    pub stop_on: crate::train::StopOn,
    /// CNN predictions average the 8 flips/rotations of each crop (test-time augmentation).
    pub tta: bool,
    /// Where the CNN says how far it got.
    pub progress: crate::train::Progress,
}

pub enum Fitted {
    Logistic {
        model: Logistic,
        varmap: VarMap,
        /// Fitted on the training cells only.
        standardizer: Standardizer,
    },
    Cnn {
        model: Cnn,
        varmap: VarMap,
        /// Predict with test-time augmentation (saved in the sidecar's architecture).
        tta: bool,
    },
}

fn samples<'a>(d: &Data, x: &'a [f32], y: &'a [usize]) -> Samples<'a> {
    Samples {
        x,
        shape: d.shape.clone(),
        y,
        classes: d.classes.len(),
    }
}

/// Fits on the cells `fit` with labels `y`; the CNN early-stops on `val` (other plates).
/// Returns the learning curves of the CNN.
pub fn fit(
    d: &Data,
    y: &[usize],
    s: &Settings,
    fit: &[usize],
    val: &[usize],
) -> anyhow::Result<(Fitted, Option<History>)> {
    if s.model == "logistic" {
        let standardizer = Standardizer::fit(&d.x, d.shape[0], fit);
        let z = standardizer.apply(&d.x);
        let cfg = TrainConfig {
            epochs: s.epochs.unwrap_or(300),
            lr: 0.05,
            weight_decay: 1e-3,
            seed: s.seed,
            ..TrainConfig::default()
        };
        let (model, varmap) = train_logistic(&samples(d, &z, y), fit, &cfg)?;
        return Ok((
            Fitted::Logistic {
                model,
                varmap,
                standardizer,
            },
            None,
        ));
    }
    let cfg = TrainConfig {
        epochs: s.epochs.unwrap_or(20),
        seed: s.seed,
        warm_start: s.warm_start.clone(),
        device: s.device.clone(),
        progress: s.progress.clone(),
        stop_on: s.stop_on,
        scale_jitter: s.scale_jitter,
        ..TrainConfig::default()
    };
    let config = CnnConfig {
        in_channels: d.shape[0],
        classes: d.classes.len(),
        width: s.width,
        depth: s.depth,
        dropout: 0.3,
    };
    let (model, varmap, history) = train_cnn(config, &samples(d, &d.x, y), fit, val, &cfg)?;
    Ok((
        Fitted::Cnn {
            model,
            varmap,
            tta: s.tta,
        },
        Some(history),
    ))
}

impl Fitted {
    /// Class probabilities (before temperature scaling) of the cells `idx`.
    pub fn predict(&self, d: &Data, idx: &[usize]) -> anyhow::Result<Vec<Vec<f64>>> {
        let y = vec![0usize; d.len()];
        match self {
            Fitted::Logistic {
                model,
                standardizer,
                ..
            } => {
                let z = standardizer.apply(&d.x);
                predict_logistic(model, &samples(d, &z, &y), idx)
            }
            Fitted::Cnn {
                model, tta: true, ..
            } => predict_cnn_tta(model, &samples(d, &d.x, &y), idx),
            Fitted::Cnn { model, .. } => predict_cnn(model, &samples(d, &d.x, &y), idx),
        }
    }

    pub fn cnn(&self) -> Option<&Cnn> {
        match self {
            Fitted::Cnn { model, .. } => Some(model),
            Fitted::Logistic { .. } => None,
        }
    }

    /// The cells' features as the logistic model sees them: standardised with the means and
    /// spreads of its training cells (so the training background has mean 0). `None` for the
    /// CNN.
    pub fn standardised_inputs(&self, d: &Data) -> Option<Vec<f32>> {
        match self {
            Fitted::Logistic { standardizer, .. } => Some(standardizer.apply(&d.x)),
            Fitted::Cnn { .. } => None,
        }
    }

    /// The logistic model's weights, [classes][features], in standardised units.
    pub fn coefficients(&self) -> anyhow::Result<Option<Vec<Vec<f32>>>> {
        match self {
            Fitted::Logistic { model, .. } => Ok(Some(
                model
                    .linear
                    .weight()
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .to_vec2()?,
            )),
            Fitted::Cnn { .. } => Ok(None),
        }
    }

    /// Writes the weights; returns the sidecar's `normalisation` and `architecture`.
    pub fn save(
        &self,
        d: &Data,
        path: &Path,
    ) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
        match self {
            Fitted::Logistic {
                varmap,
                standardizer,
                ..
            } => {
                varmap.save(path)?;
                Ok((
                    serde_json::json!({"standardise": {"features": d.feature_names, "mean": standardizer.mean, "std": standardizer.std}}),
                    serde_json::json!({"kind": "logistic", "features": d.shape[0]}),
                ))
            }
            Fitted::Cnn { model, varmap, tta } => {
                varmap.save(path)?;
                let c = &model.config;
                Ok((
                    serde_json::json!({"pixels": "divided by the bit depth's maximum (255 or 65535)"}),
                    serde_json::json!({"kind": "cnn", "input": d.shape, "width": c.width, "depth": c.depth, "dropout": c.dropout, "test_time_augmentation": tta}),
                ))
            }
        }
    }

    /// A model saved by `train`: its weights and the sidecar (`model.json`).
    /// The logistic model loads on the CPU, the CNN on `device`.
    pub fn load(
        weights: &Path,
        sidecar: &serde_json::Value,
        device: &Device,
    ) -> anyhow::Result<Fitted> {
        let arch = &sidecar["architecture"];
        let classes = sidecar["classes"]
            .as_array()
            .context("model.json has no `classes`")?
            .len();
        let mut varmap = VarMap::new();
        let on = if arch["kind"] == "cnn" {
            device
        } else {
            &Device::Cpu
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, on);
        let usize_of = |v: &serde_json::Value, what: &str| {
            v.as_u64()
                .map(|n| n as usize)
                .with_context(|| format!("model.json: architecture has no `{what}`"))
        };
        let fitted = match arch["kind"].as_str() {
            Some("logistic") => {
                let features = usize_of(&arch["features"], "features")?;
                let model = Logistic::new(features, classes, vb)?;
                let st = &sidecar["normalisation"]["standardise"];
                let floats = |v: &serde_json::Value| -> Vec<f32> {
                    v.as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect())
                        .unwrap_or_default()
                };
                let standardizer = Standardizer {
                    mean: floats(&st["mean"]),
                    std: floats(&st["std"]),
                };
                anyhow::ensure!(
                    standardizer.mean.len() == features && standardizer.std.len() == features,
                    "model.json: the standardisation does not cover the model's {features} features"
                );
                varmap.load(weights).with_context(|| format!("loading {}", weights.display()))?;
                Fitted::Logistic {
                    model,
                    varmap,
                    standardizer,
                }
            }
            Some("cnn") => {
                let input: Vec<usize> = arch["input"]
                    .as_array()
                    .context("model.json: architecture has no `input`")?
                    .iter()
                    .filter_map(|v| v.as_u64().map(|n| n as usize))
                    .collect();
                let config = CnnConfig {
                    in_channels: *input.first().context("model.json: empty `input`")?,
                    classes,
                    width: usize_of(&arch["width"], "width")?,
                    depth: usize_of(&arch["depth"], "depth")?,
                    dropout: arch["dropout"].as_f64().unwrap_or(0.0),
                };
                let model = Cnn::new(config, vb)?;
                varmap.load(weights).with_context(|| format!("loading {}", weights.display()))?;
                Fitted::Cnn {
                    model,
                    varmap,
                    // Models saved before test-time augmentation predicted from one view.
                    tta: arch["test_time_augmentation"].as_bool().unwrap_or(false),
                }
            }
            other => anyhow::bail!(
                "model.json: architecture kind {other:?} is not one plateflow makes (`logistic` or `cnn`)"
            ),
        };
        Ok(fitted)
    }
}
