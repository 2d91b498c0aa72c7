//! Training loops on Candle: AdamW with a one-cycle schedule, class-balanced loss,
//! augmentation (flips, 90° rotations, scale and intensity jitter), early stopping on validation plates,
//! and a fixed seed that gives the same model on re-run.

use crate::metrics::{argmax, Confusion};
use crate::model::{seed_init, Cnn, CnnConfig, Logistic};
use crate::rng::Rng;
use crate::schedule::one_cycle;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub augment: bool,
    /// Zoom augmentation: U(1 − s, 1 + s). Off by default: on MitoCheck ±10 % lowered
    /// cross-plate weighted F1 from 0.766 to 0.726 (cell size is part of the phenotype).
    pub scale_jitter: f64,
    pub class_balanced: bool,
    /// Stop after this many epochs without a better validation score.
    pub patience: usize,
    /// What "better" means for early stopping.
    pub stop_on: StopOn,
    /// Transfer learning: start the CNN from another plateflow model's weights.
    pub warm_start: Option<WarmStart>,
    /// Where to train: the CPU, or a CUDA device (see [`crate::device`]).
    pub device: Device,
    /// Told after every epoch.
    pub progress: Progress,
}

/// The validation score early stopping follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOn {
    /// Cross-entropy. Across plates it rises through over-confidence while accuracy still
    /// improves, so it stops early.
    Loss,
    /// Weighted F1, the figure reported (ties: the lower loss).
    WeightedF1,
}

/// A callback for progress messages ("epoch 3/30: …"): long training says what it does
/// while it runs. Does nothing by default.
#[derive(Clone, Default)]
pub struct Progress(Option<std::sync::Arc<SayFn>>);

type SayFn = dyn Fn(&str) + Send + Sync;

impl Progress {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Progress(Some(std::sync::Arc::new(f)))
    }
    pub fn say(&self, message: &str) {
        if let Some(f) = &self.0 {
            f(message);
        }
    }
    /// The same sink, each message prefixed with `prefix: `.
    pub fn with_prefix(&self, prefix: &str) -> Progress {
        match &self.0 {
            None => Progress(None),
            Some(f) => {
                let (f, prefix) = (f.clone(), prefix.to_string());
                Progress::new(move |m: &str| f(&format!("{prefix}: {m}")))
            }
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(on)"
        } else {
            "Progress(off)"
        })
    }
}

/// Weights to start from: every variable of the checkpoint whose name and shape match is
/// loaded (a head for other classes stays freshly initialised); with `freeze_features`, only
/// the head trains.
#[derive(Debug, Clone)]
pub struct WarmStart {
    pub weights: std::path::PathBuf,
    pub freeze_features: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            batch_size: 32,
            lr: 3e-3,
            weight_decay: 1e-4,
            seed: 0,
            augment: true,
            scale_jitter: 0.0,
            class_balanced: true,
            patience: 8,
            stop_on: StopOn::WeightedF1,
            warm_start: None,
            device: Device::Cpu,
            progress: Progress::default(),
        }
    }
}

/// Per-epoch curves, for the report.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub train_loss: Vec<f64>,
    pub val_loss: Vec<f64>,
    pub val_weighted_f1: Vec<f64>,
    pub best_epoch: usize,
    /// When the model was trained again on all training plates for this many epochs (the
    /// curves are those of the run that chose it).
    pub refit_epochs: Option<usize>,
}

/// Samples stored flat: sample i is `x[i*len..(i+1)*len]`, shaped [C, H, W] for images or
/// [features] for tables.
pub struct Samples<'a> {
    pub x: &'a [f32],
    pub shape: Vec<usize>,
    pub y: &'a [usize],
    pub classes: usize,
}

impl Samples<'_> {
    fn len_of_one(&self) -> usize {
        self.shape.iter().product()
    }
    /// The batch tensor of `idx`, augmented when `rng` is given (images only).
    fn batch(&self, idx: &[usize], rng: Option<(&mut Rng, f64)>) -> candle_core::Result<Tensor> {
        let mut rng = rng;
        self.stack(idx, |s| match (rng.as_mut(), self.shape.as_slice()) {
            (Some((r, zoom)), &[c, h, w]) if h == w => augment(s, c, h, *zoom, r),
            _ => s.to_vec(),
        })
    }
    /// The samples `idx` under flip/rotation `t` (0: as they are; see [`transform`]).
    fn view_batch(&self, idx: &[usize], t: usize) -> candle_core::Result<Tensor> {
        match self.shape.as_slice() {
            &[c, side, _] if t != 0 => self.stack(idx, |s| transform(s, c, side, t, 1.0, 1.0)),
            _ => self.batch(idx, None),
        }
    }
    /// The samples `idx`, each passed through `f`, as one [N, …] tensor.
    fn stack(
        &self,
        idx: &[usize],
        mut f: impl FnMut(&[f32]) -> Vec<f32>,
    ) -> candle_core::Result<Tensor> {
        let n = self.len_of_one();
        let mut data = Vec::with_capacity(idx.len() * n);
        for &i in idx {
            data.extend(f(&self.x[i * n..(i + 1) * n]));
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.shape);
        Tensor::from_vec(data, shape, &Device::Cpu)
    }
    fn labels(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let v: Vec<u32> = idx.iter().map(|&i| self.y[i] as u32).collect();
        Tensor::from_vec(v, idx.len(), &Device::Cpu)
    }
}

/// A random one of the 8 flips/rotations of a square crop, a zoom about its centre by
/// U(1 - scale_jitter, 1 + scale_jitter) (bilinear, edges extended), and ×U(0.9, 1.1)
/// intensity.
fn augment(s: &[f32], c: usize, n: usize, scale_jitter: f64, rng: &mut Rng) -> Vec<f32> {
    let t = rng.below(8);
    let gain = 0.9 + 0.2 * rng.unit() as f32;
    let zoom = 1.0 + scale_jitter * (2.0 * rng.unit() - 1.0);
    transform(s, c, n, t, zoom, gain)
}

/// Flip/rotation `t` (bit 0: x, bit 1: y, bit 2: transpose), zoom and gain of a [C, n, n]
/// crop. Zoom 1 reproduces the pixels exactly.
pub(crate) fn transform(s: &[f32], c: usize, n: usize, t: usize, zoom: f64, gain: f32) -> Vec<f32> {
    let mid = (n as f64 - 1.0) / 2.0;
    let last = n as f64 - 1.0;
    let mut out = vec![0f32; s.len()];
    for y in 0..n {
        for x in 0..n {
            // Where this output pixel comes from, before the flips (which commute with a
            // zoom about the centre).
            let mut sx = (mid + (x as f64 - mid) / zoom).clamp(0.0, last);
            let mut sy = (mid + (y as f64 - mid) / zoom).clamp(0.0, last);
            if t & 1 == 1 {
                sx = last - sx;
            }
            if t & 2 == 2 {
                sy = last - sy;
            }
            if t & 4 == 4 {
                std::mem::swap(&mut sx, &mut sy);
            }
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(n - 1), (y0 + 1).min(n - 1));
            let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
            for ch in 0..c {
                let p = &s[ch * n * n..(ch + 1) * n * n];
                let top = p[y0 * n + x0] * (1.0 - fx) + p[y0 * n + x1] * fx;
                let bottom = p[y1 * n + x0] * (1.0 - fx) + p[y1 * n + x1] * fx;
                out[ch * n * n + y * n + x] = (top * (1.0 - fy) + bottom * fy) * gain;
            }
        }
    }
    out
}

/// Cross-entropy, each sample weighted by its class weight (balanced: n / (k · count)).
fn weighted_ce(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> candle_core::Result<Tensor> {
    let lsm = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = lsm.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let w = weights.index_select(targets, 0)?;
    (picked * &w)?.sum_all()?.neg()? / w.sum_all()?.to_scalar::<f32>()? as f64
}

fn class_weights(
    y: &[usize],
    idx: &[usize],
    classes: usize,
    balanced: bool,
) -> candle_core::Result<Tensor> {
    let mut count = vec![0usize; classes];
    for &i in idx {
        count[y[i]] += 1;
    }
    let n = idx.len() as f64;
    let w: Vec<f32> = count
        .iter()
        .map(|&c| {
            if !balanced || c == 0 {
                1.0
            } else {
                (n / (classes as f64 * c as f64)) as f32
            }
        })
        .collect();
    Tensor::from_vec(w, classes, &Device::Cpu)
}

/// Variables the optimiser updates: BatchNorm running statistics are state, not parameters
/// (weight decay on them would shrink the variance towards 0).
/// With frozen features, only the head's variables.
fn trainable(varmap: &VarMap, head_only: bool) -> Vec<Var> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut named: Vec<(&String, &Var)> = data
        .iter()
        .filter(|(k, _)| !k.contains("running_") && (!head_only || k.starts_with("head.")))
        .collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    named.into_iter().map(|(_, v)| v.clone()).collect()
}

fn adamw(varmap: &VarMap, cfg: &TrainConfig) -> candle_core::Result<AdamW> {
    let head_only = cfg.warm_start.as_ref().is_some_and(|w| w.freeze_features);
    AdamW::new(
        trainable(varmap, head_only),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )
}

/// Loads the variables of a safetensors checkpoint whose name and shape match; returns how
/// many did. None matching is an error: the checkpoint is for another architecture.
pub fn load_matching(varmap: &VarMap, path: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    let saved = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading checkpoint {}", path.display()))?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut loaded = 0;
    for (name, var) in data.iter() {
        if let Some(t) = saved.get(name) {
            if t.dims() == var.dims() {
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                loaded += 1;
            }
        }
    }
    anyhow::ensure!(
        loaded > 0,
        "{}: none of its layers match this model (is it a plateflow CNN with the same width and depth?)",
        path.display()
    );
    Ok(loaded)
}

fn snapshot(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().expect("copy")))
        .collect()
}

fn restore(varmap: &VarMap, snap: &[(String, Tensor)]) -> candle_core::Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (k, t) in snap {
        data[k].set(t)?;
    }
    Ok(())
}

/// Class probabilities, in evaluation mode, batch by batch.
pub fn predict_cnn(model: &Cnn, s: &Samples, idx: &[usize]) -> anyhow::Result<Vec<Vec<f64>>> {
    predict_views(model, s, idx, &[0])
}

/// Class probabilities averaged over the 8 flips/90° rotations of each (square) crop —
/// test-time augmentation. A cell has no orientation, so the 8 views are equally valid
/// inputs, and averaging them removes the part of a prediction that depends on which way
/// the cell happened to lie. Non-square inputs get the single view.
pub fn predict_cnn_tta(model: &Cnn, s: &Samples, idx: &[usize]) -> anyhow::Result<Vec<Vec<f64>>> {
    match s.shape.as_slice() {
        &[_, h, w] if h == w => predict_views(model, s, idx, &[0, 1, 2, 3, 4, 5, 6, 7]),
        _ => predict_cnn(model, s, idx),
    }
}

/// The mean over `views` (see [`transform`]) of the softmax.
fn predict_views(
    model: &Cnn,
    s: &Samples,
    idx: &[usize],
    views: &[usize],
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(128) {
        let mut mean: Option<Tensor> = None;
        for &t in views {
            let x = s.view_batch(chunk, t)?.to_device(model.device())?;
            let p = candle_nn::ops::softmax(&model.forward(&x, None)?, 1)?;
            mean = Some(match mean {
                Some(m) => (m + p)?,
                None => p,
            });
        }
        let p = (mean.expect("at least one view") / views.len() as f64)?
            .to_dtype(DType::F64)?
            .to_device(&Device::Cpu)?;
        out.extend(p.to_vec2::<f64>()?);
    }
    Ok(out)
}

fn mean_loss_and_f1(probs: &[Vec<f64>], s: &Samples, idx: &[usize]) -> (f64, f64) {
    let truth: Vec<usize> = idx.iter().map(|&i| s.y[i]).collect();
    let loss = truth
        .iter()
        .zip(probs)
        .map(|(&t, p)| -(p[t].max(1e-12)).ln())
        .sum::<f64>()
        / truth.len().max(1) as f64;
    let f1 = Confusion::new(s.classes, &truth, &argmax(probs)).weighted_f1();
    (loss, f1)
}

/// Trains a CNN on `train`, early-stopping on `val` (plates held out of training); returns
/// the best epoch's weights. With `val` empty it trains every epoch and returns the last
/// (a refit for an epoch count chosen on validation plates before).
pub fn train_cnn(
    config: CnnConfig,
    s: &Samples,
    train: &[usize],
    val: &[usize],
    cfg: &TrainConfig,
) -> anyhow::Result<(Cnn, VarMap, History)> {
    crate::keep_freed_memory();
    let varmap = VarMap::new();
    let dev = &cfg.device;
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let model = Cnn::new(config, vb)?;
    seed_init(&varmap, cfg.seed)?;
    if let Some(w) = &cfg.warm_start {
        load_matching(&varmap, &w.weights)?;
    }
    let mut opt = adamw(&varmap, cfg)?;
    let weights = class_weights(s.y, train, s.classes, cfg.class_balanced)?.to_device(dev)?;
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut history = History::default();
    // (score to maximise, tie-breaker to maximise, weights)
    let mut best = (f64::NEG_INFINITY, f64::NEG_INFINITY, snapshot(&varmap));
    let mut order = train.to_vec();
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        rng.shuffle(&mut order);
        let mut sum = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            opt.set_learning_rate(one_cycle(step, total, cfg.lr));
            step += 1;
            let x = s
                .batch(batch, cfg.augment.then_some((&mut rng, cfg.scale_jitter)))?
                .to_device(dev)?;
            let logits = model.forward(&x, Some(&mut rng))?;
            let loss = weighted_ce(&logits, &s.labels(batch)?.to_device(dev)?, &weights)?;
            opt.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()? as f64 * batch.len() as f64;
        }
        history.train_loss.push(sum / train.len() as f64);
        let said = format!(
            "epoch {}/{}: training loss {:.3}",
            epoch + 1,
            cfg.epochs,
            sum / train.len() as f64
        );
        if val.is_empty() {
            cfg.progress.say(&said);
            // A refit for a number of epochs chosen before: the last epoch is the model.
            history.best_epoch = epoch;
            continue;
        }
        let probs = predict_cnn(&model, s, val)?;
        let (vl, vf1) = mean_loss_and_f1(&probs, s, val);
        history.val_loss.push(vl);
        history.val_weighted_f1.push(vf1);
        cfg.progress.say(&format!(
            "{said}, validation loss {vl:.3}, weighted F1 {vf1:.3}"
        ));
        // No early stop during the one-cycle warm-up (its first 30 %): the loss may rise while
        // the learning rate climbs, and keeping epoch 0 then is a failure, not a choice.
        let warm = (cfg.epochs as f64 * 0.3).ceil() as usize;
        let (score, tie) = match cfg.stop_on {
            StopOn::Loss => (-vl, vf1),
            StopOn::WeightedF1 => (vf1, -vl),
        };
        if epoch < warm || (score, tie) > (best.0, best.1) {
            best = (score, tie, snapshot(&varmap));
            history.best_epoch = epoch;
        } else if epoch - history.best_epoch >= cfg.patience {
            break;
        }
    }
    if !val.is_empty() {
        restore(&varmap, &best.2)?;
    }
    Ok((model, varmap, history))
}

/// Standardisation fitted on training samples only (holdout plates never inform it).
#[derive(Debug, Clone)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    pub fn fit(x: &[f32], dim: usize, idx: &[usize]) -> Self {
        let n = idx.len().max(1) as f64;
        let mut mean = vec![0f64; dim];
        let mut sq = vec![0f64; dim];
        for &i in idx {
            for d in 0..dim {
                let v = x[i * dim + d] as f64;
                mean[d] += v;
                sq[d] += v * v;
            }
        }
        let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
        // A feature that does not vary over the fitted cells (saturated, a constant column)
        // gets spread 0 and is read as 0 everywhere: floored at 1e-6, a new plate where it
        // does vary read it as z ≈ 1e6, and its untrained random weight decided the class.
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let sd = (s / n - m * m).max(0.0).sqrt();
                if sd <= 1e-6 * m.abs().max(1.0) {
                    0.0
                } else {
                    sd as f32
                }
            })
            .collect();
        Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let dim = self.mean.len();
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let sd = self.std[i % dim];
                if sd == 0.0 {
                    return 0.0;
                }
                let v = (v - self.mean[i % dim]) / sd;
                if v.is_finite() {
                    v
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// Multinomial logistic regression with L2 (AdamW's decoupled weight decay), full-batch,
/// on features already standardised with a [`Standardizer`] fitted on `train`.
pub fn train_logistic(
    s: &Samples,
    train: &[usize],
    cfg: &TrainConfig,
) -> anyhow::Result<(Logistic, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Logistic::new(s.shape[0], s.classes, vb)?;
    seed_init(&varmap, cfg.seed)?;
    let mut opt = adamw(&varmap, cfg)?;
    let weights = class_weights(s.y, train, s.classes, cfg.class_balanced)?;
    let x = s.batch(train, None)?;
    let y = s.labels(train)?;
    for step in 0..cfg.epochs {
        opt.set_learning_rate(one_cycle(step, cfg.epochs, cfg.lr));
        let loss = weighted_ce(&model.forward(&x)?, &y, &weights)?;
        opt.backward_step(&loss)?;
    }
    Ok((model, varmap))
}

pub fn predict_logistic(
    model: &Logistic,
    s: &Samples,
    idx: &[usize],
) -> anyhow::Result<Vec<Vec<f64>>> {
    let logits = model.forward(&s.batch(idx, None)?)?;
    Ok(candle_nn::ops::softmax(&logits, 1)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?)
}

#[cfg(test)]
mod augment_tests {
    use super::transform;

    #[test]
    fn flips_and_zoom_move_pixels_where_they_should() {
        let n = 4;
        let s: Vec<f32> = (0..n * n).map(|v| v as f32).collect();
        // Identity.
        assert_eq!(transform(&s, 1, n, 0, 1.0, 1.0), s);
        // Mirror in x: row 0 reads 3, 2, 1, 0.
        assert_eq!(
            &transform(&s, 1, n, 1, 1.0, 1.0)[..4],
            &[3.0, 2.0, 1.0, 0.0]
        );
        // Transpose: the first row is the first column.
        assert_eq!(
            &transform(&s, 1, n, 4, 1.0, 1.0)[..4],
            &[0.0, 4.0, 8.0, 12.0]
        );
        // Zoom in keeps the centre and pulls neighbours inwards; gain scales.
        let z = transform(&s, 1, n, 0, 1.1, 2.0);
        let centre = |v: &[f32]| (v[5] + v[6] + v[9] + v[10]) / 4.0;
        assert!((centre(&z) - 2.0 * centre(&s)).abs() < 1e-4);
        assert!(
            z[0] > 2.0 * s[0] && z[15] < 2.0 * s[15],
            "corners move towards the centre"
        );
    }
}

#[cfg(test)]
mod standardizer_tests {
    use super::Standardizer;

    /// A feature constant over the fitted cells (a saturated maximum) reads 0 on any plate,
    /// however it varies there; a varying one is an ordinary z-score.
    #[test]
    fn a_feature_constant_in_training_reads_zero_elsewhere() {
        // Two features per cell: the first varies, the second is 4095 throughout.
        let fit: Vec<f32> = [1.0, 4095.0, 3.0, 4095.0, 5.0, 4095.0].to_vec();
        let st = Standardizer::fit(&fit, 2, &[0, 1, 2]);
        let z = st.apply(&[3.0, 100.0, 7.0, 4095.0]);
        assert_eq!(z[1], 0.0);
        assert_eq!(z[3], 0.0);
        assert!(z[0].abs() < 1e-6);
        assert!((z[2] - 4.0 / (8.0f32 / 3.0).sqrt()).abs() < 1e-4, "{z:?}");
    }
}
