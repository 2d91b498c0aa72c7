//! The learned nucleus segmenter: images and their instance labels as training material,
//! augmentation that teaches invariance (scale, the eight flips and rotations, gamma,
//! brightness, noise), training of the U-Net (unet.rs), and inference to instances.
//! Validation is always on whole images no training crop came from.

use crate::adamw::ResumableAdamW;
use crate::rng::Rng;
use crate::segmenter::{describe, tensors_of, NucleusModel, DIAMETER_TENSOR};
use crate::unet::{pixel_loss, UNet, UNetConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::{ParamsAdamW, VarBuilder, VarMap};
pub use plateflow_imaging::instances::Matching;
use plateflow_imaging::instances::{matches, targets};
use plateflow_imaging::GrayImage;
use std::collections::HashMap;
use std::path::Path;

/// One image with its annotation, ready to train or score on.
#[derive(Debug, Clone)]
pub struct Annotated {
    pub id: String,
    pub width: usize,
    pub height: usize,
    /// The image as read (8- or 16-bit): what `segment` is given, so that scores are
    /// measured on the path users run.
    pub image: GrayImage,
    /// The network's input: percentile-normalised intensities, dark nuclei turned over
    /// (see [`crate::segmenter::network_input`]).
    pub pixels: Vec<f32>,
    pub truth: Vec<u32>,
    /// Median nucleus diameter in pixels (of a disc of the median area); 0 without nuclei.
    pub diameter: f64,
}

/// The median diameter of the objects of a label image of at least `min_area` pixels: that
/// of a disc of the median area.
pub fn median_diameter(labels: &[u32], min_area: usize) -> Option<f64> {
    let mut area: std::collections::HashMap<u32, usize> = Default::default();
    for &l in labels.iter().filter(|&&l| l > 0) {
        *area.entry(l).or_default() += 1;
    }
    let mut areas: Vec<usize> = area.into_values().filter(|&a| a >= min_area).collect();
    areas.sort_unstable();
    let a = *areas.get(areas.len() / 2)?;
    Some(2.0 * (a as f64 / std::f64::consts::PI).sqrt())
}

/// Intensities mapped so the 1st percentile is 0 and the 99.8th is 1 (8- or 16-bit alike;
/// values beyond stay, a little, so saturation remains visible).
pub fn normalise(img: &GrayImage) -> Vec<f32> {
    normalise_to(img, None)
}

/// As [`normalise`], with `top` (when given) mapped to 1 instead of the 99.8th percentile.
pub fn normalise_to(img: &GrayImage, top: Option<u16>) -> Vec<f32> {
    let mut sorted: Vec<u16> = img.data.clone();
    sorted.sort_unstable();
    let at = |q: f64| f32::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize]);
    let (lo, hi) = (at(0.01), top.map_or_else(|| at(0.998), f32::from));
    let span = (hi - lo).max(1.0);
    img.data
        .iter()
        .map(|&v| ((f32::from(v) - lo) / span).clamp(-0.2, 1.5))
        .collect()
}

/// An image and its label image (same size; labels 0 = background, 1..n nuclei).
pub fn annotated(id: &str, image: &GrayImage, labels: &GrayImage) -> anyhow::Result<Annotated> {
    if (image.width, image.height) != (labels.width, labels.height) {
        anyhow::bail!(
            "{id}: image is {}x{} but its labels are {}x{}",
            image.width,
            image.height,
            labels.width,
            labels.height
        );
    }
    let truth: Vec<u32> = labels.data.iter().map(|&l| u32::from(l)).collect();
    annotated_by(id, image, truth)
}

/// An image and its instance labels (`truth`, row-major, the image's size: 0 background).
pub fn annotated_by(id: &str, image: &GrayImage, truth: Vec<u32>) -> anyhow::Result<Annotated> {
    let (w, h) = (image.width as usize, image.height as usize);
    anyhow::ensure!(
        truth.len() == w * h,
        "{id}: {} labels for a {w}x{h} image",
        truth.len()
    );
    // As `segment` shows images to the network (dark nuclei turned over, a few nuclei
    // stretched to their own level), so that training and inference see alike.
    let (upright, contrast) = crate::segmenter::bright_objects(image);
    Ok(Annotated {
        id: id.to_string(),
        width: w,
        height: h,
        image: image.clone(),
        pixels: crate::segmenter::network_input(&upright, contrast),
        diameter: median_diameter(&truth, 1).unwrap_or(0.0),
        truth,
    })
}

/// `images/<id>.png` with `labels/<id>.png` under `root` (the DSB 2018 layout), sorted by id.
pub fn load_pairs(root: &Path) -> anyhow::Result<Vec<Annotated>> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join("images"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".png").map(str::to_string)
        })
        .collect();
    ids.sort();
    ids.iter()
        .map(|id| {
            let img =
                plateflow_imaging::read_image(&root.join("images").join(format!("{id}.png")))?;
            let lab =
                plateflow_imaging::read_image(&root.join("labels").join(format!("{id}.png")))?;
            annotated(id, &img, &lab)
        })
        .collect()
}

/// Which fifth an image belongs to, by its id alone (FNV-1a), so it never depends on the
/// order or number of images: the same image is always on the same side.
pub fn fifth(id: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h % 5
}

/// The held-out fifth the reported scores come from: never trained on, never used to choose.
pub fn is_validation(id: &str) -> bool {
    fifth(id) == 0
}

/// The fifth inference settings are chosen on: never trained on, never reported as a score.
pub fn is_tuning(id: &str) -> bool {
    fifth(id) == 1
}

/// The Coelho U2OS images (`dna-N`) settings may be chosen on: those of even N. The odd
/// ones are only ever reported. No Coelho image is trained on.
pub fn is_coelho_tuning(id: &str) -> bool {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n % 2 == 0)
}

/// How to train.
#[derive(Debug, Clone)]
pub struct SegTrainConfig {
    pub net: UNetConfig,
    pub steps: usize,
    pub batch: usize,
    /// Side of the square training crops (a multiple of the net's [`UNetConfig::multiple`]).
    pub crop: usize,
    pub lr: f64,
    /// Loss weight of boundary pixels (background and interior weigh 1).
    pub boundary_weight: f32,
    /// Loss weight of contact pixels, where two nuclei meet (within one pixel of two
    /// different nuclei): the pixels that decide whether touching nuclei merge.
    pub contact_weight: f32,
    pub seed: u64,
    /// Nucleus diameter (pixels) every training image is scaled to.
    pub diameter: f64,
    /// Where the network trains: the CPU, or a GPU (Candle's ops run there).
    pub device: Device,
    /// Largest per-pixel noise (normalised units) added to a crop; each crop draws
    /// `noise · u³` (u uniform), so most are nearly clean and a few very noisy.
    pub noise: f32,
    /// Wall-clock budget: training ends at `steps` or here, whichever comes first, with the
    /// learning-rate schedule following whichever is further along (a GPU run sized in time).
    pub max_seconds: Option<f64>,
    /// Written (atomically) every 500 steps and at the end, so a stopped run keeps its work.
    pub checkpoint: Option<std::path::PathBuf>,
    /// The run's whole state (weights, AdamW's moments, step, losses), written atomically
    /// every 500 steps, at least every [`RESUME_EVERY_SECONDS`] and at the end. Where it
    /// already holds a state of this run, training continues from it: a killed worker's
    /// task restarts where it stopped, and with a schedule by steps ends as if never stopped.
    pub resume: Option<std::path::PathBuf>,
    /// Ends the run after this step as if stopped there (its resume state written): a run
    /// cut into slices, such as batch jobs with a time limit, and tests.
    pub stop_after: Option<usize>,
}

/// How much work a killed run may lose at most. A state is ~3× the weights (0.4 MB at
/// width 8, 6 MB at 32): written and synced in milliseconds, so often is cheap.
pub const RESUME_EVERY_SECONDS: f64 = 10.0;

impl Default for SegTrainConfig {
    fn default() -> Self {
        SegTrainConfig {
            net: UNetConfig::default(),
            steps: 2000,
            batch: 8,
            crop: 128,
            lr: 2e-3,
            boundary_weight: 3.0,
            // As boundaries: background pixels squeezed between two nuclei count as much as
            // their outlines. ×10 made the network cut large nuclei apart (BENCHMARKS.md).
            contact_weight: 3.0,
            seed: 1,
            diameter: TRAINING_DIAMETER,
            device: Device::Cpu,
            // The recipe of the shipped weights' last stage: noise up to 30 % of the
            // normalised range taught it small nuclei in camera noise (BENCHMARKS.md).
            noise: 0.3,
            max_seconds: None,
            checkpoint: None,
            resume: None,
            stop_after: None,
        }
    }
}

/// The range (log-uniform) of the further scaling of each training crop: its nuclei are
/// `diameter / hi` to `diameter / lo` pixels across.
pub const SCALE_JITTER: (f64, f64) = (0.7, 1.4);

/// One augmented crop at the training scale: the image is first scaled so its nuclei have
/// `diameter` pixels (their median in the annotation), then by a further 0.7–1.4 (the error
/// the inference-time size estimate must survive); one of the 8 flips/rotations; gamma,
/// brightness and contrast; blur; 8-bit-like quantisation; Gaussian noise. Shrinking
/// averages the source pixels under each crop pixel, as inference-time resizing does.
/// Classes come from the labels sampled at crop scale, so a boundary is one crop pixel
/// wide whatever the image's own scale (classes taken at the source's scale lose the thin
/// line between two large touching nuclei when shrunk). (pixels, classes, labels), `crop`²
/// each.
pub fn augmented_crop(
    a: &Annotated,
    crop: usize,
    diameter: f64,
    noise_max: f32,
    rng: &mut Rng,
) -> (Vec<f32>, Vec<u32>, Vec<u32>) {
    let (lo, hi) = SCALE_JITTER;
    let jitter = (lo.ln() + rng.unit() * (hi / lo).ln()).exp();
    // Source pixels per crop pixel; an image without nuclei (diameter 0) is taken as it is.
    let own = if a.diameter > 0.0 {
        a.diameter
    } else {
        diameter
    };
    let scale = own / diameter * jitter;
    let span = crop as f64 * scale;
    let x0 = rng.unit() * (a.width as f64 - span).max(0.0);
    let y0 = rng.unit() * (a.height as f64 - span).max(0.0);
    let (flip_x, flip_y, transpose) = (rng.below(2) == 1, rng.below(2) == 1, rng.below(2) == 1);
    let gamma = (0.6f64.ln() + rng.unit() * (1.6f64 / 0.6).ln()).exp() as f32;
    let contrast = (0.7 + rng.unit() * 0.6) as f32;
    let offset = ((rng.unit() - 0.5) * 0.2) as f32;
    let noise = rng.unit().powi(3) as f32 * noise_max;
    let blur = rng.below(3) == 0;
    let levels = (rng.below(3) == 0).then(|| 32.0 + rng.unit() as f32 * 224.0);
    // Sub-samples per crop pixel and axis when shrinking (an area average), at most 4.
    let n = (scale.ceil() as usize).clamp(1, 4);
    let mut px = vec![0f32; crop * crop];
    let mut labels = vec![0u32; crop * crop];
    let mut inside = vec![false; crop * crop];
    for v in 0..crop {
        for u in 0..crop {
            let (mut su, mut sv) = (u, v);
            if transpose {
                std::mem::swap(&mut su, &mut sv);
            }
            if flip_x {
                su = crop - 1 - su;
            }
            if flip_y {
                sv = crop - 1 - sv;
            }
            let o = v * crop + u;
            let (cx, cy) = (
                x0 + (su as f64 + 0.5) * scale,
                y0 + (sv as f64 + 0.5) * scale,
            );
            let (x, y) = (cx as usize, cy as usize);
            if x >= a.width || y >= a.height {
                continue;
            }
            inside[o] = true;
            labels[o] = a.truth[y * a.width + x];
            let mut sum = 0f32;
            let mut count = 0f32;
            for j in 0..n {
                for i in 0..n {
                    let sx = (cx + ((i as f64 + 0.5) / n as f64 - 0.5) * scale) as usize;
                    let sy = (cy + ((j as f64 + 0.5) / n as f64 - 0.5) * scale) as usize;
                    if sx < a.width && sy < a.height {
                        sum += a.pixels[sy * a.width + sx];
                        count += 1.0;
                    }
                }
            }
            px[o] = sum / count.max(1.0);
        }
    }
    if blur {
        px = box_blur3(&px, crop);
    }
    for (o, p) in px.iter_mut().enumerate() {
        let mut q = if inside[o] {
            p.max(0.0).powf(gamma) * contrast + offset
        } else {
            offset // outside a small image: empty
        };
        if let Some(l) = levels {
            q = (q * l).round() / l;
        }
        *p = q + noise * rng.normal() as f32;
    }
    let cls = targets(&labels, crop, crop)
        .into_iter()
        .map(u32::from)
        .collect();
    (px, cls, labels)
}

/// Per-pixel loss weights of a crop: `boundary` on boundary pixels, `contact` on pixels
/// within one pixel (8-neighbourhood) of two different nuclei, 1 elsewhere.
pub fn pixel_weights(
    classes: &[u32],
    labels: &[u32],
    side: usize,
    boundary: f32,
    contact: f32,
) -> Vec<f32> {
    (0..side * side)
        .map(|o| {
            let (x, y) = (o % side, o / side);
            let mut first = 0u32;
            let mut touching = false;
            for yy in y.saturating_sub(1)..(y + 2).min(side) {
                for xx in x.saturating_sub(1)..(x + 2).min(side) {
                    let l = labels[yy * side + xx];
                    if l != 0 {
                        if first != 0 && l != first {
                            touching = true;
                        }
                        first = l;
                    }
                }
            }
            if touching {
                contact
            } else if classes[o] == 2 {
                boundary
            } else {
                1.0
            }
        })
        .collect()
}

/// 3×3 mean of a square image (edges averaged over the pixels that exist).
fn box_blur3(px: &[f32], side: usize) -> Vec<f32> {
    let mut out = vec![0f32; px.len()];
    for y in 0..side {
        for x in 0..side {
            let (mut s, mut c) = (0f32, 0f32);
            for yy in y.saturating_sub(1)..(y + 2).min(side) {
                for xx in x.saturating_sub(1)..(x + 2).min(side) {
                    s += px[yy * side + xx];
                    c += 1.0;
                }
            }
            out[y * side + x] = s / c;
        }
    }
    out
}

/// The nucleus diameter (pixels) training crops are scaled to (then jittered by
/// `SCALE_JITTER`); inference brings nuclei to `segmenter::PREDICT_AT` of it.
pub const TRAINING_DIAMETER: f64 = 16.0;

/// Progress of a training run: (step, training loss, validation AP at IoU 0.5 when measured).
pub type History = Vec<(usize, f32, Option<f64>)>;

/// Trains a U-Net on crops of `train`, from `init` (weights to fine-tune: their width,
/// depth and diameter replace the config's) or from seeded random weights; every
/// `eval_every` steps (0: never) scores `val`.
pub fn train(
    train: &[Annotated],
    val: &[Annotated],
    cfg: &SegTrainConfig,
    init: Option<&Weights>,
    eval_every: usize,
    say: &dyn Fn(&str),
) -> anyhow::Result<(Weights, History)> {
    anyhow::ensure!(!train.is_empty(), "no training images");
    let dev = cfg.device.clone();
    let varmap = VarMap::new();
    let (net_cfg, diameter) = match init {
        Some(w) => (w.config, w.diameter),
        None => (cfg.net, cfg.diameter),
    };
    let cfg = &SegTrainConfig {
        net: net_cfg,
        diameter,
        ..cfg.clone()
    };
    let net = UNet::new(cfg.net, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    crate::model::seed_init(&varmap, cfg.seed)?;
    if let Some(w) = init {
        w.copy_into(&varmap)?;
    }
    let mut opt = ResumableAdamW::new(
        &varmap,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let mut history = History::new();
    // The run a state belongs to, and the step this one starts after.
    let run = cfg
        .resume
        .as_ref()
        .map(|_| run_fingerprint(cfg, train, init))
        .transpose()?;
    // (The step reached and the training seconds spent before this attempt.)
    let (resumed, seconds_before) = match (&cfg.resume, &run) {
        (Some(path), Some(run)) => resume_from(path, run, &varmap, &mut opt, &mut history, say),
        _ => (0, 0.0),
    };
    // A state left where a time budget ended the run is its end: nothing more to train.
    let first = match cfg.max_seconds {
        Some(budget) if seconds_before >= budget => cfg.steps + 1,
        _ => resumed + 1,
    };
    let batches = BatchMaker::new(train, cfg);
    let t0 = std::time::Instant::now();
    let seconds = || seconds_before + t0.elapsed().as_secs_f64();
    let mut state_saved = std::time::Instant::now();
    let save = |step: usize| -> anyhow::Result<()> {
        if let Some(path) = &cfg.checkpoint {
            // Written beside the target and renamed over it (as the worker writes outputs):
            // a run stopped mid-write keeps the last whole checkpoint.
            let bytes = Weights::of(&varmap, cfg.net, cfg.diameter)?.to_bytes()?;
            write_synced(path, &bytes).map_err(|e| {
                anyhow::anyhow!("cannot write the checkpoint {}: {e}", path.display())
            })?;
            say(&format!("step {step}: checkpoint {}", path.display()));
        }
        Ok(())
    };
    // The next batch is made on the CPU while the network trains on this one (on a GPU the
    // crops would otherwise leave it idle); each batch's crops depend only on the seed and
    // the step, so the batches are the same whatever the threads.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let maker = &batches;
        scope.spawn(move || {
            for step in first..=cfg.steps {
                if tx.send(maker.batch(step)).is_err() {
                    break; // training ended early (time budget or error)
                }
            }
        });
        for step in first..=cfg.steps {
            // Cosine decay to a tenth, over steps or time, whichever is further along.
            let mut t = step as f64 / cfg.steps as f64;
            if let Some(budget) = cfg.max_seconds {
                t = t.max(seconds() / budget);
            }
            let stop = cfg.stop_after == Some(step);
            let last = t >= 1.0 || step == cfg.steps || stop;
            opt.set_learning_rate(
                cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())),
            );
            let (xs, ys, ws) = rx.recv()?;
            let x = Tensor::from_vec(xs, (cfg.batch, 1, cfg.crop, cfg.crop), &dev)?;
            let y = Tensor::from_vec(ys, cfg.batch * cfg.crop * cfg.crop, &dev)?;
            let wt = Tensor::from_vec(ws, cfg.batch * cfg.crop * cfg.crop, &dev)?;
            let loss = pixel_loss(&net.forward(&x, true)?, &y, &wt)?;
            opt.backward_step(&loss)?;
            let l = loss.to_scalar::<f32>()?;
            // Diverged: every step from here would write broken weights over good ones.
            anyhow::ensure!(
                l.is_finite(),
                "training diverged at step {step} (loss {l}): no weights written from it; lower the learning rate or check the labels"
            );
            let ap = (eval_every > 0 && (step % eval_every == 0 || last) && !val.is_empty())
                .then(|| {
                    let model = Weights::of(&varmap, cfg.net, cfg.diameter)?.model("training")?;
                    evaluate(&model, val).map(|m| m[0].ap())
                })
                .transpose()?;
            if step % 25 == 0 || ap.is_some() || last {
                say(&format!(
                    "step {step}/{}: loss {l:.4}{} ({:.0} s)",
                    cfg.steps,
                    ap.map(|a| format!(", validation AP@0.5 {a:.3}"))
                        .unwrap_or_default(),
                    seconds()
                ));
            }
            history.push((step, l, ap));
            if step % 500 == 0 || last {
                save(step)?;
            }
            if step % 500 == 0
                || last
                || state_saved.elapsed().as_secs_f64() >= RESUME_EVERY_SECONDS
            {
                if let (Some(path), Some(run)) = (&cfg.resume, &run) {
                    // Without a state a stop costs the work since the last one, nothing more:
                    // training goes on (a full disk fails the outputs' write, clearly).
                    let at = (step, seconds());
                    if let Err(e) = save_state(path, at, &history, run, &varmap, &opt) {
                        say(&format!("{e:#}; training goes on"));
                    }
                }
                state_saved = std::time::Instant::now();
            }
            if last {
                break;
            }
        }
        Ok(())
    })?;
    Ok((Weights::of(&varmap, cfg.net, cfg.diameter)?, history))
}

/// How `train` begins what it says about a training state: going on from it ("resuming from
/// step N: …"), or setting it aside ("the training state … is not used …").
pub const SAY_RESUMING: &str = "resuming from step ";
pub const SAY_SET_ASIDE: &str = "the training state ";

/// Names in a training state file, beside the optimizer's `adam.*`.
const WEIGHT: &str = "w.";
const LOSSES: &str = "train.losses";
const STEP: &str = "train.step";
const SECONDS: &str = "train.seconds";
const RUN: &str = "train.run";

/// Changed whenever training's code changes what a run does (crops, loss, schedule), so a
/// state from older code is not taken up as this run's.
const TRAINING_CODE: u32 = 1;

/// What makes a training run the one a state belongs to: every setting that shapes its
/// path, the training images and the starting weights (SHA-256, as a tensor of 32 bytes).
fn run_fingerprint(
    cfg: &SegTrainConfig,
    train: &[Annotated],
    init: Option<&Weights>,
) -> anyhow::Result<Tensor> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "code {TRAINING_CODE} {:?} steps {} batch {} crop {} lr {} weights {} {} seed {} diameter {} noise {}\n",
        cfg.net,
        cfg.steps,
        cfg.batch,
        cfg.crop,
        cfg.lr,
        cfg.boundary_weight,
        cfg.contact_weight,
        cfg.seed,
        cfg.diameter,
        cfg.noise
    ));
    // The images and labels themselves, not only their names.
    for a in train {
        h.update(format!("{} {}x{}\n", a.id, a.width, a.height));
        h.update(
            a.pixels
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        h.update(
            a.truth
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
    }
    if let Some(w) = init {
        h.update(w.to_bytes()?);
    }
    Ok(Tensor::new(h.finalize().as_slice(), &Device::Cpu)?)
}

/// Writes a run's whole state (see [`SegTrainConfig::resume`]).
fn save_state(
    path: &Path,
    (step, seconds): (usize, f64),
    history: &History,
    run: &Tensor,
    varmap: &VarMap,
    opt: &ResumableAdamW,
) -> anyhow::Result<()> {
    let cpu = Device::Cpu;
    let mut all = opt.state()?;
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        all.push((format!("{WEIGHT}{name}"), var.as_tensor().to_device(&cpu)?));
    }
    let losses: Vec<f32> = history.iter().map(|h| h.1).collect();
    all.push((
        LOSSES.into(),
        Tensor::from_vec(losses, history.len(), &cpu)?,
    ));
    all.push((STEP.into(), Tensor::new(&[step as i64], &cpu)?));
    all.push((SECONDS.into(), Tensor::new(&[seconds], &cpu)?));
    all.push((RUN.into(), run.clone()));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = safetensors::tensor::serialize(all.iter().map(|(k, v)| (k.as_str(), v)), None)?;
    write_synced(path, &bytes)
        .map_err(|e| anyhow::anyhow!("cannot write the training state {}: {e}", path.display()))
}

/// Takes up the state at `path` if it is this run's: weights, moments and losses restored,
/// the step it reached and the training seconds it had spent returned. A state that is
/// absent gives (0, 0); one unreadable or of another run is said and ignored (training
/// starts over and overwrites it), never an error.
fn resume_from(
    path: &Path,
    run: &Tensor,
    varmap: &VarMap,
    opt: &mut ResumableAdamW,
    history: &mut History,
    say: &dyn Fn(&str),
) -> (usize, f64) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (0, 0.0),
        Err(e) => {
            say(&format!(
                "{SAY_SET_ASIDE}{} is not used (cannot read it: {e}); starting from step 0",
                path.display()
            ));
            return (0, 0.0);
        }
    };
    let mut restore = || -> anyhow::Result<(usize, f64)> {
        let saved = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| anyhow::anyhow!("not a readable training state: {e}"))?;
        let same = saved
            .get(RUN)
            .map(|t| t.to_vec1::<u8>())
            .transpose()?
            .is_some_and(|t| t == run.to_vec1::<u8>().unwrap_or_default());
        anyhow::ensure!(
            same,
            "it is another run's (other settings, images or starting weights)"
        );
        let step = saved
            .get(STEP)
            .ok_or_else(|| anyhow::anyhow!("no tensor {STEP}"))?
            .to_vec1::<i64>()?;
        let step = usize::try_from(
            *step
                .first()
                .ok_or_else(|| anyhow::anyhow!("{STEP} is empty"))?,
        )?;
        let losses = saved
            .get(LOSSES)
            .ok_or_else(|| anyhow::anyhow!("no tensor {LOSSES}"))?
            .to_vec1::<f32>()?;
        anyhow::ensure!(
            losses.len() == step,
            "{} losses for {step} steps",
            losses.len()
        );
        let seconds = saved
            .get(SECONDS)
            .ok_or_else(|| anyhow::anyhow!("no tensor {SECONDS}"))?
            .to_vec1::<f64>()?
            .first()
            .copied()
            .unwrap_or(0.0);
        // Everything is checked before anything is changed: a state is taken whole or not.
        let weights = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(name, var)| {
                let key = format!("{WEIGHT}{name}");
                let t = saved
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("no tensor {key}"))?;
                anyhow::ensure!(t.dims() == var.dims(), "{key} has shape {:?}", t.dims());
                Ok((var.clone(), t.to_device(var.device())?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        opt.restore(&saved)?;
        for (var, t) in weights {
            var.set(&t)?;
        }
        *history = losses
            .into_iter()
            .enumerate()
            .map(|(i, l)| (i + 1, l, None))
            .collect();
        Ok((step, seconds))
    };
    match restore() {
        Ok((step, seconds)) => {
            say(&format!(
                "{SAY_RESUMING}{step}: the training state {} left by an earlier attempt",
                path.display()
            ));
            (step, seconds)
        }
        Err(e) => {
            say(&format!(
                "{SAY_SET_ASIDE}{} is not used ({e:#}); starting from step 0",
                path.display()
            ));
            (0, 0.0)
        }
    }
}

/// `bytes` into `path` (its directory made if need be) through a synced temporary file
/// beside it, renamed over it: a run stopped mid-write keeps the last whole file.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Seconds to make training batches `1..=n` of `cfg` on the current rayon threads, without
/// training: what a GPU run's crop making can feed (a benchmark, `nuclei crops`).
pub fn time_batches(train: &[Annotated], cfg: &SegTrainConfig, n: usize) -> f64 {
    let maker = BatchMaker::new(train, cfg);
    let t = std::time::Instant::now();
    for step in 1..=n {
        std::hint::black_box(maker.batch(step));
    }
    t.elapsed().as_secs_f64()
}

/// Training batches: crops drawn in proportion to image area (larger images give more
/// crops), augmented, with their classes and loss weights.
struct BatchMaker<'a> {
    train: &'a [Annotated],
    cfg: &'a SegTrainConfig,
    areas: Vec<f64>,
    total: f64,
}

type Batch = (Vec<f32>, Vec<u32>, Vec<f32>);

impl<'a> BatchMaker<'a> {
    fn new(train: &'a [Annotated], cfg: &'a SegTrainConfig) -> Self {
        let areas: Vec<f64> = train.iter().map(|a| (a.width * a.height) as f64).collect();
        let total = areas.iter().sum();
        BatchMaker {
            train,
            cfg,
            areas,
            total,
        }
    }

    /// Batch `step`: crop `i` draws from its own generator, seeded by (seed, step, i).
    fn batch(&self, step: usize) -> Batch {
        use rayon::prelude::*;
        let cfg = self.cfg;
        let crops: Vec<_> = (0..cfg.batch)
            .into_par_iter()
            .map(|i| {
                let mut rng = Rng::new(
                    cfg.seed
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .wrapping_add((step * cfg.batch + i) as u64),
                );
                let k = image_by_area(&self.areas, self.total, &mut rng);
                let (px, cls, labels) =
                    augmented_crop(&self.train[k], cfg.crop, cfg.diameter, cfg.noise, &mut rng);
                let w = pixel_weights(
                    &cls,
                    &labels,
                    cfg.crop,
                    cfg.boundary_weight,
                    cfg.contact_weight,
                );
                (px, cls, w)
            })
            .collect();
        let n = cfg.batch * cfg.crop * cfg.crop;
        let (mut xs, mut ys, mut ws) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (px, cls, w) in crops {
            xs.extend(px);
            ys.extend(cls);
            ws.extend(w);
        }
        (xs, ys, ws)
    }
}

/// The index of the image a training crop is cut from, drawn in proportion to `areas`
/// (summing to `total`): larger images give more crops.
pub fn image_by_area(areas: &[f64], total: f64, rng: &mut Rng) -> usize {
    let mut r = rng.unit() * total;
    let mut k = 0;
    while k + 1 < areas.len() && r >= areas[k] {
        r -= areas[k];
        k += 1;
    }
    k
}

/// A trained network's tensors with what describes them: the form training produces and
/// fine-tuning starts from.
pub struct Weights {
    pub config: UNetConfig,
    pub diameter: f64,
    pub tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// A copy of a training VarMap's current values, on the CPU whatever the device trained
    /// (weights are saved, and segment, from there).
    pub fn of(varmap: &VarMap, config: UNetConfig, diameter: f64) -> anyhow::Result<Self> {
        let tensors = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_device(&Device::Cpu)?.copy()?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Weights {
            config,
            diameter,
            tensors,
        })
    }

    /// A weights file's tensors (as [`Self::to_bytes`] writes them).
    pub fn from_bytes(bytes: &[u8], source: &str) -> anyhow::Result<Self> {
        let mut tensors = tensors_of(bytes, source)?;
        let (config, diameter) = describe(&tensors).map_err(|e| {
            anyhow::anyhow!("{source} is not a plateflow nucleus model ({e}); retrain it with a `train_segmenter` step")
        })?;
        tensors.remove(DIAMETER_TENSOR);
        // A NaN weight (a run that diverged) makes every probability NaN: no error and no
        // objects in any image, so it is refused here, by name.
        for (name, t) in &tensors {
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                anyhow::bail!(
                    "{source}: tensor `{name}` holds {v}: the weights are broken (a training run that diverged?); retrain, or use the shipped ones"
                );
            }
            if name.ends_with("running_var") && values.iter().any(|&v| v < 0.0) {
                anyhow::bail!("{source}: tensor `{name}` holds a negative variance: the weights are broken; retrain, or use the shipped ones");
            }
        }
        Ok(Weights {
            config,
            diameter,
            tensors,
        })
    }

    /// Safetensors bytes: the tensors and `meta.diameter`.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut all: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.push((
            DIAMETER_TENSOR.to_string(),
            Tensor::new(&[self.diameter as f32], &Device::Cpu)?,
        ));
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(safetensors::tensor::serialize(
            all.iter().map(|(k, v)| (k.as_str(), v)),
            None,
        )?)
    }

    /// The model that segments with these weights, on the CPU.
    pub fn model(&self, source: &str) -> anyhow::Result<NucleusModel> {
        self.model_on(source, &Device::Cpu)
    }

    /// The model that segments with these weights, on `device`.
    pub fn model_on(&self, source: &str, device: &Device) -> anyhow::Result<NucleusModel> {
        NucleusModel::new(
            self.config,
            self.diameter,
            source,
            &|name| self.values(name),
            device,
        )
    }

    /// One tensor's values, flattened.
    pub(crate) fn values(&self, name: &str) -> anyhow::Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("tensor {name} is missing"))?;
        Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Overwrites the variables of `varmap` (a network of the same shape) with these values.
    fn copy_into(&self, varmap: &VarMap) -> anyhow::Result<()> {
        for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
            let t = self
                .tensors
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("the initial weights have no tensor {name}"))?;
            var.set(&t.to_dtype(DType::F32)?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// `../shared/data` from the repository root, or `PLATEFLOW_SHARED_DATA` (a copy carried to a
/// GPU node, where the checkout's neighbours are not).
pub fn shared_data_root() -> std::path::PathBuf {
    std::env::var_os("PLATEFLOW_SHARED_DATA")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

/// The DSB 2018 and Coelho U2OS folders of the shared data (`../shared/data` from the
/// repository root), for the examples that score segmentation; `Err` says which is absent.
pub fn shared_nuclei_data() -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let root = shared_data_root();
    let (dsb, coelho) = (root.join("dsb2018-nuclei"), root.join("coelho-u2os"));
    if let Some(absent) = [&dsb, &coelho].into_iter().find(|dir| !dir.exists()) {
        return Err(format!("{} is absent", absent.display()));
    }
    Ok((dsb, coelho))
}

/// IoU thresholds reported: 0.5, 0.75, 0.9.
pub const IOUS: [f64; 3] = [0.5, 0.75, 0.9];

/// Object matching summed over `images`, at each of [`IOUS`], each image segmented as
/// `segment` does it: from the image as read, its nucleus size estimated from the image.
/// Images run side by side on the thread pool, as the `segment` step runs a plate's fields
/// (each one's own parallel work shares the same threads).
pub fn evaluate(model: &NucleusModel, images: &[Annotated]) -> anyhow::Result<[Matching; 3]> {
    Ok(summed(evaluate_per_image(model, images)?))
}

/// Images' (matched, predicted, true) at each of [`IOUS`], summed.
pub fn summed(per_image: impl IntoIterator<Item = [(usize, usize, usize); 3]>) -> [Matching; 3] {
    let mut out = [Matching::default(); 3];
    for counts in per_image {
        for (m, c) in out.iter_mut().zip(counts) {
            m.add(c);
        }
    }
    out
}

/// What [`evaluate`] sums: each image's (matched, predicted, true) at each of [`IOUS`], in
/// the order of `images` (for intervals over images).
pub fn evaluate_per_image(
    model: &NucleusModel,
    images: &[Annotated],
) -> anyhow::Result<Vec<[(usize, usize, usize); 3]>> {
    use rayon::prelude::*;
    images
        .par_iter()
        .map(|a| {
            let got = model.segment(&a.image, None)?.labels;
            Ok(IOUS.map(|iou| matches(&got.data, &a.truth, iou)))
        })
        .collect()
}

/// The nucleus diameter `segment` estimates for this image.
pub fn estimate_diameter(a: &Annotated) -> Option<f64> {
    plateflow_imaging::segment::typical_diameter(&a.image)
}

/// A 16-bit image of normalised intensities (0..1.5 over the full range), for images made
/// in code rather than read.
pub fn quantised(pixels: &[f32], w: usize, h: usize) -> GrayImage {
    GrayImage {
        width: w as u32,
        height: h as u32,
        bit_depth: 16,
        data: pixels
            .iter()
            .map(|&p| (p.clamp(0.0, 1.5) / 1.5 * 65535.0).round() as u16)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 128² image of four discs of 16 px, with its labels.
    fn discs() -> Annotated {
        let side = 128usize;
        let centres = [(32.0, 32.0), (96.0, 32.0), (32.0, 96.0), (96.0, 96.0)];
        let truth: Vec<u32> = (0..side * side)
            .map(|i| {
                let (x, y) = ((i % side) as f64, (i / side) as f64);
                centres
                    .iter()
                    .position(|(cx, cy)| (x - cx).powi(2) + (y - cy).powi(2) < 64.0)
                    .map_or(0, |k| k as u32 + 1)
            })
            .collect();
        let pixels: Vec<f32> = truth
            .iter()
            .map(|&l| if l > 0 { 1.0 } else { 0.1 })
            .collect();
        Annotated {
            id: "discs".into(),
            width: side,
            height: side,
            image: quantised(&pixels, side, side),
            pixels,
            truth,
            diameter: 16.0,
        }
    }

    /// An image without nuclei (labels all 0, diameter 0) still gives crops of its own
    /// texture, all background: not one pixel stretched over the crop.
    #[test]
    fn images_without_nuclei_give_textured_background_crops() {
        let mut empty = discs();
        let mut rng = Rng::new(5);
        empty.pixels = (0..empty.pixels.len()).map(|_| rng.unit() as f32).collect();
        empty.truth.fill(0);
        empty.diameter = 0.0;
        for _ in 0..4 {
            let (pixels, classes, labels) = augmented_crop(&empty, 64, 16.0, 0.0, &mut rng);
            let distinct: std::collections::BTreeSet<u32> =
                pixels.iter().map(|v| v.to_bits()).collect();
            assert!(distinct.len() > 10, "{} distinct values", distinct.len());
            assert!(classes.iter().chain(&labels).all(|&c| c == 0));
        }
    }

    /// Batches depend on the seed and the step only: made on one thread or many, the same.
    #[test]
    fn batches_are_the_same_whatever_the_threads() {
        let images = [discs()];
        let cfg = SegTrainConfig::default();
        let maker = BatchMaker::new(&images, &cfg);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let many = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let a = one.install(|| maker.batch(7));
        let b = many.install(|| maker.batch(7));
        assert_eq!(a, b);
        assert_ne!(a.0, maker.batch(8).0, "another step draws other crops");
    }

    /// A network and batches small enough for a test to train in a second.
    fn tiny() -> SegTrainConfig {
        SegTrainConfig {
            net: UNetConfig { width: 4, depth: 3 },
            batch: 2,
            crop: 32,
            ..Default::default()
        }
    }

    /// A wall-clock budget ends training before its steps, and the weights written at the
    /// end load as a model.
    #[test]
    fn training_stops_at_its_budget_and_leaves_a_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("w.safetensors");
        let cfg = SegTrainConfig {
            steps: 1_000_000,
            max_seconds: Some(1.0),
            checkpoint: Some(path.clone()),
            ..tiny()
        };
        let (_, history) = train(&[discs()], &[], &cfg, None, 0, &|_| {}).unwrap();
        let steps = history.last().unwrap().0;
        assert!((1..1_000_000).contains(&steps), "{steps} steps");
        let saved = Weights::from_bytes(&std::fs::read(&path).unwrap(), "checkpoint").unwrap();
        assert_eq!(saved.config, cfg.net);
        saved.model("checkpoint").unwrap();
        // Nothing but the checkpoint is left beside it.
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, std::slice::from_ref(&path));
    }

    /// Every tensor of `a` equals `b`'s, bit for bit.
    fn assert_same_weights(a: &Weights, b: &Weights) {
        assert_eq!(a.tensors.len(), b.tensors.len());
        for (name, t) in &b.tensors {
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(values(&a.tensors[name]), values(t), "{name}");
        }
    }

    /// A run stopped after 3 of 7 steps and started again from its state ends with the weights
    /// and losses of a run never stopped; a state of another run, or a damaged one, is said
    /// and set aside (training starts over) rather than failing or being half applied.
    #[test]
    fn a_stopped_run_resumes_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("run.state");
        let images = [discs()];
        let cfg = SegTrainConfig { steps: 7, ..tiny() };
        let quiet = |_: &str| {};
        let (straight, straight_history) = train(&images, &[], &cfg, None, 0, &quiet).unwrap();
        let sliced = SegTrainConfig {
            resume: Some(state.clone()),
            ..cfg.clone()
        };
        let (_, first) = train(
            &images,
            &[],
            &SegTrainConfig {
                stop_after: Some(3),
                ..sliced.clone()
            },
            None,
            0,
            &quiet,
        )
        .unwrap();
        assert_eq!(first.len(), 3);
        let said = std::sync::Mutex::new(Vec::<String>::new());
        let say = |m: &str| said.lock().unwrap().push(m.to_string());
        let (resumed, history) = train(&images, &[], &sliced, None, 0, &say).unwrap();
        assert!(
            said.lock().unwrap()[0].starts_with("resuming from step 3"),
            "{:?}",
            said.lock().unwrap()
        );
        let losses = |h: &History| h.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>();
        assert_eq!(losses(&history), losses(&straight_history));
        assert_same_weights(&resumed, &straight);

        // Another run's state (another seed), then a damaged one: each set aside, and the
        // run starts from step 0.
        let other = SegTrainConfig {
            seed: 2,
            stop_after: Some(1),
            ..sliced.clone()
        };
        for (damage, says) in [
            (false, "another run's"),
            (true, "not a readable training state"),
        ] {
            if damage {
                std::fs::write(&state, b"not a state").unwrap();
            }
            said.lock().unwrap().clear();
            let (_, h) = train(&images, &[], &other, None, 0, &say).unwrap();
            assert_eq!(h.len(), 1);
            let first = said.lock().unwrap()[0].clone();
            assert!(
                first.contains(says) && first.contains("starting from step 0"),
                "{first}"
            );
        }
    }

    /// A run on a time budget keeps its clock in its state: started again after the budget
    /// ended it, it trains nothing more (the same weights, the same history).
    #[test]
    fn a_run_that_spent_its_budget_is_not_trained_again() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SegTrainConfig {
            steps: 1_000_000,
            max_seconds: Some(0.5),
            resume: Some(dir.path().join("run.state")),
            ..tiny()
        };
        let images = [discs()];
        let (first, h1) = train(&images, &[], &cfg, None, 0, &|_| {}).unwrap();
        let (again, h2) = train(&images, &[], &cfg, None, 0, &|_| {}).unwrap();
        assert_eq!(h1.len(), h2.len());
        assert!((1..1_000_000).contains(&h1.len()), "{} steps", h1.len());
        assert_same_weights(&again, &first);
    }

    /// Two large touching nuclei shrunk 4× into a crop keep a boundary line between them, and
    /// the pixels where they meet carry the contact weight.
    #[test]
    fn shrunk_crops_keep_the_line_between_touching_nuclei() {
        let (w, h) = (512usize, 512usize);
        let truth: Vec<u32> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f64, (i / w) as f64);
                // Two discs of radius 64 overlapping by 36 px, cut apart at x = 256.
                let d1 = ((x - 210.0).powi(2) + (y - 256.0).powi(2)).sqrt();
                let d2 = ((x - 302.0).powi(2) + (y - 256.0).powi(2)).sqrt();
                if x < 256.0 && d1 < 64.0 {
                    1
                } else if x >= 256.0 && d2 < 64.0 {
                    2
                } else {
                    0
                }
            })
            .collect();
        let a = Annotated {
            id: "touching".into(),
            width: w,
            height: h,
            image: quantised(&vec![0.0; w * h], w, h),
            pixels: truth.iter().map(|&l| f32::from(l > 0)).collect(),
            diameter: 64.0,
            truth,
        };
        let crop = 128;
        let mut rng = Rng::new(5);
        let (_, cls, labels) = augmented_crop(&a, crop, 16.0, 0.05, &mut rng);
        // Wherever the two labels are 4-neighbours, both pixels are boundary.
        let mut meeting = 0;
        for i in 0..crop * crop {
            for j in [i + 1, i + crop] {
                if j >= crop * crop || (j == i + 1 && j % crop == 0) {
                    continue;
                }
                let (l, r) = (labels[i], labels[j]);
                if l > 0 && r > 0 && l != r {
                    meeting += 1;
                    assert_eq!((cls[i], cls[j]), (2, 2));
                }
            }
        }
        assert!(meeting > 0, "the crop shows where the nuclei meet");
        let weights = pixel_weights(&cls, &labels, crop, 3.0, 10.0);
        let contact = weights.iter().filter(|&&w| w == 10.0).count();
        assert!(contact >= 2 * meeting, "{contact} contact pixels");
        assert!(weights.contains(&3.0) && weights.contains(&1.0));
    }
}
