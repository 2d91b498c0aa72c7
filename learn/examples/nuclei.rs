//! Trains and scores the learned nucleus segmenter on the DSB 2018 nuclei, and scores it on
//! the Coelho U2OS images no training saw.
//!
//!   cargo run --release -p plateflow-learn --example nuclei -- train STEPS OUT.safetensors [WIDTH] [EVAL_EVERY] [INIT|shipped|-] [LR]
//!   cargo run --release -p plateflow-learn --example nuclei -- score WEIGHTS.safetensors [tuning|validation|coelho|coelho-odd|coelho-even]...
//!   cargo run --release -p plateflow-learn --example nuclei -- compare A B [SET]...
//!   cargo run --release -p plateflow-learn --example nuclei -- perimage WEIGHTS [training|tuning|...]...
//!     (one line per image, worst first; NUCLEI_DUMP=DIR writes outlines, predicted yellow and
//!     true magenta; NUCLEI_ORACLE=1 gives each image its labelled size, a bound)
//!   cargo run --release -p plateflow-learn --example nuclei -- sizes
//!   cargo run --release -p plateflow-learn --example nuclei -- profile [WEIGHTS|shipped]
//!   cargo run --release -p plateflow-learn --example nuclei -- crops [BATCHES] [BATCH]
//!   cargo run --release -p plateflow-learn --example nuclei -- widen [WEIGHTS|shipped] OUT.safetensors [WIDTH]
//!   cargo run --release -p plateflow-learn --example nuclei -- average A B T OUT.safetensors
//!
//! The DSB images are split by image id into fifths: three train, one ("tuning") chooses
//! inference settings, one ("validation") is only ever reported. Of the Coelho images
//! (never trained on), the even-numbered help choose inference settings, the odd are only
//! reported. WEIGHTS `shipped` scores
//! the weights inside plateflow.
//!
//! Reads `../shared/data/dsb2018-nuclei` and `../shared/data/coelho-u2os` (from the
//! repository root, or under `PLATEFLOW_SHARED_DATA`); says so and stops where they are absent.

use plateflow_learn::nuclei::{self, Annotated, SegTrainConfig, IOUS};
use plateflow_learn::segmenter::NucleusModel;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    plateflow_learn::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("net") {
        return network_alone(&args);
    }
    let root = nuclei::shared_data_root();
    let dsb = root.join("dsb2018-nuclei");
    if !dsb.exists() {
        println!("{} is absent", dsb.display());
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let all = nuclei::load_pairs(&dsb)?;
    let (val, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|a| nuclei::is_validation(&a.id));
    let (tuning, train): (Vec<_>, Vec<_>) =
        rest.into_iter().partition(|a| nuclei::is_tuning(&a.id));
    eprintln!(
        "{} training, {} tuning and {} validation images loaded in {:.1} s",
        train.len(),
        tuning.len(),
        val.len(),
        t0.elapsed().as_secs_f64()
    );
    match args.first().map(String::as_str) {
        Some("sizes") => {
            let mut quiet = Vec::new();
            for e in std::fs::read_dir(dsb.join("images"))? {
                let path = e?.path();
                let img = plateflow_imaging::read_image(&path)?;
                if !plateflow_learn::segmenter::anything_stands_out(&img) {
                    quiet.push(
                        path.file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
            println!(
                "DSB images judged empty (nothing stands out of the noise): {quiet:?}"
            );
            for (name, set) in [
                ("training", &train),
                ("tuning", &tuning),
                ("validation", &val),
            ] {
                let mut d: Vec<f64> = set
                    .iter()
                    .map(|a| a.diameter)
                    .filter(|&d| d > 0.0)
                    .collect();
                d.sort_by(f64::total_cmp);
                let q = |p: f64| d[((d.len() - 1) as f64 * p).round() as usize];
                let mut est_err: Vec<f64> = set
                    .iter()
                    .filter(|a| a.diameter > 0.0)
                    .filter_map(|a| {
                        nuclei::estimate_diameter(a)
                            .map(|e| (e / a.diameter).ln().abs())
                    })
                    .collect();
                est_err.sort_by(f64::total_cmp);
                println!(
                    "{name}: nucleus diameter quantiles 5/25/50/75/95 %: {:.1} {:.1} {:.1} {:.1} {:.1}; estimate within ±25 %: {:.0} % of images, median |log error| {:.2}",
                    q(0.05), q(0.25), q(0.5), q(0.75), q(0.95),
                    100.0 * est_err.iter().filter(|&&e| e < 1.25f64.ln()).count() as f64 / est_err.len() as f64,
                    est_err[est_err.len() / 2]
                );
            }
        }
        Some("size-estimators") => {
            // Ways to read the nucleus size off a quick threshold, on every DSB image outside
            // the validation fifth (the estimate is not learned; validation is reported).
            for (name, set) in [
                ("training + tuning", [&train, &tuning]),
                ("validation", [&val, &val]),
            ] {
                let images: Vec<&Annotated> = if name == "validation" {
                    val.iter().collect()
                } else {
                    set.iter().flat_map(|s| s.iter()).collect()
                };
                let mut errs: [Vec<f64>; 3] = Default::default();
                for a in images.iter().filter(|a| a.diameter > 0.0) {
                    let Some(ds) = object_diameters(a) else {
                        continue;
                    };
                    let median = |mut v: Vec<f64>| {
                        v.sort_by(f64::total_cmp);
                        v[v.len() / 2]
                    };
                    let by_area = median(ds.iter().map(|d| d.0).collect());
                    let by_dt = median(ds.iter().map(|d| d.1).collect());
                    for (e, est) in errs
                        .iter_mut()
                        .zip([by_area, by_dt, (by_area * by_dt).sqrt()])
                    {
                        e.push((est / a.diameter).ln().abs());
                    }
                }
                for (e, what) in errs.iter_mut().zip([
                    "median area",
                    "median inscribed circle",
                    "geometric mean",
                ]) {
                    e.sort_by(f64::total_cmp);
                    println!(
                        "{name}: {what}: within ±25 % on {:.0} % of {} images, median |log error| {:.3}, 90th percentile {:.3}",
                        100.0 * e.iter().filter(|&&x| x < 1.25f64.ln()).count() as f64 / e.len() as f64,
                        e.len(),
                        e[e.len() / 2],
                        e[e.len() * 9 / 10]
                    );
                }
            }
        }
        Some("classic") => {
            // plateflow's classic segmenter with its defaults, on the same held-out images,
            // side by side as `segment` runs them (reading each PNG is timed too).
            use rayon::prelude::*;
            for (set, images) in [("tuning", &tuning), ("validation", &val)] {
                let t = std::time::Instant::now();
                let per_image: Vec<[(usize, usize, usize); 3]> = images
                    .par_iter()
                    .map(|a| {
                        let img = plateflow_imaging::read_image(
                            &dsb.join("images").join(format!("{}.png", a.id)),
                        )?;
                        let got =
                            plateflow_imaging::segment::segment_nuclei(&img, &Default::default());
                        Ok(IOUS.map(|iou| {
                            plateflow_imaging::instances::matches(&got.data, &a.truth, iou)
                        }))
                    })
                    .collect::<anyhow::Result<_>>()?;
                let secs = t.elapsed().as_secs_f64();
                let px: usize = images.iter().map(|a| a.width * a.height).sum();
                let mut m = [plateflow_learn::nuclei::Matching::default(); 3];
                for counts in per_image {
                    for (mm, c) in m.iter_mut().zip(counts) {
                        mm.add(c);
                    }
                }
                for (mm, iou) in m.iter().zip(IOUS) {
                    println!(
                        "classic on {set}: IoU {iou}: AP {:.3}, F1 {:.3}",
                        mm.ap(),
                        mm.f1()
                    );
                }
                println!(
                    "classic on {set}: {:.2} MP/s, images side by side ({} threads)",
                    px as f64 / 1e6 / secs,
                    rayon::current_num_threads()
                );
            }
        }
        Some("crops") => {
            // How many augmented training crops the CPU makes per second (on RAYON_NUM_THREADS
            // threads), without training: what a GPU run can be fed.
            let batches: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
            let cfg = SegTrainConfig {
                batch: args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32),
                ..Default::default()
            };
            nuclei::time_batches(&train, &cfg, 1); // warm: pages, allocator
            let secs = nuclei::time_batches(&train, &cfg, batches);
            let crops = (batches * cfg.batch) as f64;
            println!(
                "{batches} batches of {} crops of {}² in {secs:.2} s on {} threads: {:.1} crops/s ({:.1} per thread)",
                cfg.batch,
                cfg.crop,
                rayon::current_num_threads(),
                crops / secs,
                crops / secs / rayon::current_num_threads() as f64
            );
        }
        Some("profile") => {
            // Where inference time goes, on the validation images, one at a time (each on
            // every core). `profile [WEIGHTS]`: another network's cost (any weights will do:
            // the network's time does not depend on them).
            let model = match args.get(1).map(String::as_str) {
                None | Some("shipped") => NucleusModel::shipped()?,
                Some(path) => NucleusModel::load(Path::new(path))?,
            };
            let (mut est, mut prob, mut inst) = (0f64, 0f64, 0f64);
            let mut px = 0usize;
            for a in &val {
                let t = std::time::Instant::now();
                let d = nuclei::estimate_diameter(a);
                est += t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                let scale = (model.target / d.unwrap_or(model.target))
                    .clamp(1.0 / 16.0, plateflow_learn::segmenter::MAX_ENLARGE);
                let (sw, sh) = (
                    ((a.width as f64 * scale).round() as usize).max(1),
                    ((a.height as f64 * scale).round() as usize).max(1),
                );
                let small =
                    plateflow_imaging::resample::resize(&a.pixels, a.width, a.height, sw, sh);
                let (i, f) = model.probabilities(&small, sw, sh)?;
                prob += t.elapsed().as_secs_f64();
                px += sw * sh;
                let t = std::time::Instant::now();
                let _ = plateflow_imaging::instances::from_probabilities(
                    &i,
                    &f,
                    sw,
                    sh,
                    model.target,
                    &model.instances,
                );
                inst += t.elapsed().as_secs_f64();
            }
            let total: usize = val.iter().map(|a| a.width * a.height).sum();
            println!("size estimate {est:.2} s, resize + network {prob:.2} s ({:.2} model MP/s), instances {inst:.2} s; {:.2} MP of images, {:.2} MP at model scale", px as f64 / 1e6 / prob, total as f64 / 1e6, px as f64 / 1e6);
        }
        Some("widen") => {
            // A wider network (up to twice) computing nearly the same function (Net2Net: channels
            // copied, each input divided among its copies, 1 % noise), a start for training a wider network.
            let from = args.get(1).map(String::as_str).unwrap_or("shipped");
            let out = PathBuf::from(args.get(2).cloned().unwrap_or("widened.safetensors".into()));
            let w = weights_named(from)?;
            let to: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2 * w.config.width);
            let wide = widen(&w, to)?;
            std::fs::write(&out, wide.to_bytes()?)?;
            // Nearly the same function: the maps of one tuning image differ only by the noise.
            let a = &tuning[0];
            let (m0, m1) = (w.model("narrow")?, wide.model("wide")?);
            let p0 = m0.maps(&a.pixels, a.width, a.height, a.diameter)?.interior;
            let p1 = m1.maps(&a.pixels, a.width, a.height, a.diameter)?.interior;
            let worst = p0.iter().zip(&p1).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            println!("widened to width {}: {} (maps differ by {worst:.2e})", wide.config.width, out.display());
        }
        Some("average") => {
            // Weights interpolated between two runs of the same network, A·(1−t) + B·t (as
            // WiSE-FT interpolates between weights and their fine-tune, which keeps much of
            // both's strengths).
            let (a, b) = (
                weights_named(args.get(1).map_or("shipped", String::as_str))?,
                weights_named(args.get(2).map_or("shipped", String::as_str))?,
            );
            let t: f64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0.5);
            let out = PathBuf::from(args.get(4).cloned().unwrap_or("averaged.safetensors".into()));
            anyhow::ensure!(
                a.config == b.config && a.diameter == b.diameter,
                "the two weights are of different networks"
            );
            let mut tensors = std::collections::HashMap::new();
            for (name, x) in &a.tensors {
                let y = b
                    .tensors
                    .get(name)
                    .ok_or_else(|| anyhow::anyhow!("{name} is missing from the second weights"))?;
                tensors.insert(name.clone(), ((x * (1.0 - t))? + (y * t)?)?);
            }
            let mixed = nuclei::Weights { tensors, ..a };
            std::fs::write(&out, mixed.to_bytes()?)?;
            println!("{}: A·(1 − {t}) + B·{t}", out.display());
        }
        Some("train") => {
            let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
            let out = PathBuf::from(
                args.get(2)
                    .cloned()
                    .unwrap_or("nuclei-unet.safetensors".into()),
            );
            let width: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(16);
            let eval_every: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(500);
            let init = match args.get(5).map(String::as_str) {
                None | Some("-") => None,
                Some(name) => Some(weights_named(name)?),
            };
            // For a run on a GPU node: NUCLEI_DEVICE=cuda, NUCLEI_BATCH, NUCLEI_DEPTH,
            // NUCLEI_NOISE (largest crop noise), NUCLEI_SECONDS (wall-clock budget); the
            // weights are written every 500 steps, so a stopped run keeps its work, and with
            // NUCLEI_RESUME=FILE the whole state, so the same command continues a stopped run.
            let env = |k: &str| std::env::var(k).ok();
            let defaults = SegTrainConfig::default();
            let cfg = SegTrainConfig {
                steps,
                net: plateflow_learn::unet::UNetConfig {
                    width,
                    depth: env("NUCLEI_DEPTH").map(|s| s.parse()).transpose()?.unwrap_or(3),
                },
                lr: args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(2e-3),
                batch: env("NUCLEI_BATCH").map(|s| s.parse()).transpose()?.unwrap_or(defaults.batch),
                noise: env("NUCLEI_NOISE").map(|s| s.parse()).transpose()?.unwrap_or(defaults.noise),
                max_seconds: env("NUCLEI_SECONDS").map(|s| s.parse()).transpose()?,
                device: device_from_env()?,
                // Also written at the last step: the run's output.
                checkpoint: Some(out.clone()),
                resume: env("NUCLEI_RESUME").map(PathBuf::from),
                ..defaults
            };
            eprintln!("training on {:?}: {cfg:?}", cfg.device);
            let t1 = std::time::Instant::now();
            let (_, history) =
                nuclei::train(&train, &tuning, &cfg, init.as_ref(), eval_every, &|m| {
                    eprintln!("{m}")
                })?;
            println!(
                "trained {} steps (batch {}, crops {}, width {width}, diameter {}) in {:.0} s on {} threads: {}",
                history.last().map_or(0, |h| h.0),
                cfg.batch,
                cfg.crop,
                cfg.diameter,
                t1.elapsed().as_secs_f64(),
                rayon::current_num_threads(),
                out.display()
            );
        }
        Some("score") => {
            let weights = args.get(1).map(String::as_str).unwrap_or("shipped");
            // NUCLEI_DEVICE=cuda: the network on the GPU (Candle's ops), the rest on the CPU.
            let model = model_named(weights, &device_from_env()?)?;
            for set in sets_named(&args[2.min(args.len())..]) {
                if let Some(images) = images_of(set, &root, [&train, &tuning, &val])? {
                    score(&model, set, &images)?;
                }
            }
        }
        Some("perimage") => {
            // Where the errors lie, image by image (training and tuning sets only: looking
            // at validation images this way would choose on them).
            let weights = args.get(1).map(String::as_str).unwrap_or("shipped");
            let model = model_named(weights, &device_from_env()?)?;
            for set in sets_named(&args[2.min(args.len())..]) {
                if let Some(images) = images_of(set, &root, [&train, &tuning, &val])? {
                    per_image(&model, set, &images)?;
                }
            }
        }
        Some("compare") => {
            // Whether B scores differently from A beyond what the images drawn decide: F1 at
            // IoU 0.5 of each, and their difference with a 95 % interval from a paired
            // bootstrap over images (both sets of weights on the same resampled images).
            let (a, b) = match (args.get(1), args.get(2)) {
                (Some(a), Some(b)) => (a.as_str(), b.as_str()),
                _ => anyhow::bail!("usage: nuclei compare A B [SET]..."),
            };
            let device = device_from_env()?;
            let (ma, mb) = (model_named(a, &device)?, model_named(b, &device)?);
            for set in sets_named(&args[3.min(args.len())..]) {
                if let Some(images) = images_of(set, &root, [&train, &tuning, &val])? {
                    compare(set, &images, (a, &ma), (b, &mb))?;
                }
            }
        }
        _ => anyhow::bail!(
            "usage: nuclei train STEPS OUT [WIDTH] [EVAL_EVERY] | score WEIGHTS [SET]... | compare A B [SET]... | perimage WEIGHTS [SET]... | sizes | widen WEIGHTS OUT"
        ),
    }
    Ok(())
}

/// Weights by name: `shipped` (those inside plateflow) or a safetensors file.
fn weights_named(name: &str) -> anyhow::Result<nuclei::Weights> {
    if name == "shipped" {
        nuclei::Weights::from_bytes(plateflow_learn::segmenter::SHIPPED, "shipped")
    } else {
        let bytes =
            std::fs::read(name).map_err(|e| anyhow::anyhow!("cannot read weights {name}: {e}"))?;
        nuclei::Weights::from_bytes(&bytes, name)
    }
}

/// A model from weights named as [`weights_named`] takes them, on `device`.
fn model_named(name: &str, device: &candle_core::Device) -> anyhow::Result<NucleusModel> {
    if name == "shipped" {
        NucleusModel::shipped_on(device)
    } else {
        NucleusModel::load_on(Path::new(name), device)
    }
}

/// The sets named on the command line, `tuning` without any.
fn sets_named(args: &[String]) -> Vec<&str> {
    if args.is_empty() {
        vec!["tuning"]
    } else {
        args.iter().map(String::as_str).collect()
    }
}

/// The images of a named set; `None` (said) where the Coelho images are absent. Even Coelho
/// images choose inference settings; odd ones are only reported.
fn images_of<'a>(
    set: &str,
    root: &Path,
    [train, tuning, val]: [&'a [Annotated]; 3],
) -> anyhow::Result<Option<Cow<'a, [Annotated]>>> {
    Ok(Some(match set {
        // What the network was fitted on: its score there against the held-out sets tells
        // a network too small to fit (both low) from one that fits and does not generalise.
        "training" => Cow::Borrowed(train),
        "tuning" => Cow::Borrowed(tuning),
        "validation" => Cow::Borrowed(val),
        "coelho" | "coelho-odd" | "coelho-even" => {
            let dir = root.join("coelho-u2os");
            if !dir.exists() {
                println!("{} is absent", dir.display());
                return Ok(None);
            }
            Cow::Owned(
                nuclei::load_pairs(&dir)?
                    .into_iter()
                    .filter(|a| match set {
                        "coelho-odd" => !nuclei::is_coelho_tuning(&a.id),
                        "coelho-even" => nuclei::is_coelho_tuning(&a.id),
                        _ => true,
                    })
                    .collect(),
            )
        }
        other => anyhow::bail!(
            "unknown set {other}: training, tuning, validation, coelho, coelho-odd or coelho-even"
        ),
    }))
}

/// F1 at IoU 0.5 of A and B on `images`, and B − A with a 95 % paired bootstrap interval
/// over images (2,000 resamples; each image's matches counted once per draw).
fn compare(
    set: &str,
    images: &[Annotated],
    (name_a, a): (&str, &NucleusModel),
    (name_b, b): (&str, &NucleusModel),
) -> anyhow::Result<()> {
    use plateflow_imaging::instances::Matching;
    // Each image's counts at IoU 0.5 (the first of IOUS).
    let counts = |m: &NucleusModel| -> anyhow::Result<Vec<(usize, usize, usize)>> {
        Ok(nuclei::evaluate_per_image(m, images)?
            .into_iter()
            .map(|c| c[0])
            .collect())
    };
    let (ca, cb) = (counts(a)?, counts(b)?);
    let f1 = |c: &[(usize, usize, usize)], idx: &[usize]| {
        let mut m = Matching::default();
        idx.iter().for_each(|&i| m.add(c[i]));
        m.f1()
    };
    let all: Vec<usize> = (0..images.len()).collect();
    let ids: Vec<String> = images.iter().map(|im| im.id.clone()).collect();
    let interval = |metric: &dyn Fn(&[usize]) -> f64| {
        plateflow_learn::metrics::bootstrap_by_group(&ids, 2000, 1, metric)
    };
    for (name, c) in [(name_a, &ca), (name_b, &cb)] {
        let (lo, hi) = interval(&|idx: &[usize]| f1(c, idx));
        println!(
            "{set} ({} images): {name}: F1 at IoU 0.5 {:.4} [{lo:.4}, {hi:.4}]",
            images.len(),
            f1(c, &all)
        );
    }
    let (lo, hi) = interval(&|idx: &[usize]| f1(&cb, idx) - f1(&ca, idx));
    println!(
        "{set}: {name_b} − {name_a}: {:+.4} [{lo:+.4}, {hi:+.4}] (95 %, paired bootstrap over images)",
        f1(&cb, &all) - f1(&ca, &all)
    );
    Ok(())
}

/// `NUCLEI_DEVICE=cuda`: the first GPU (a `cuda` build); otherwise the CPU.
fn device_from_env() -> anyhow::Result<candle_core::Device> {
    Ok(match std::env::var("NUCLEI_DEVICE").as_deref() {
        Ok("cuda") => candle_core::Device::new_cuda(0)?,
        _ => candle_core::Device::Cpu,
    })
}

fn score(model: &NucleusModel, set: &str, images: &[Annotated]) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let scores = nuclei::evaluate(model, images)?;
    let secs = t.elapsed().as_secs_f64();
    let pixels: usize = images.iter().map(|a| a.width * a.height).sum();
    for (m, iou) in scores.iter().zip(IOUS) {
        println!(
            "{set} ({} images): IoU {iou}: AP {:.3}, F1 {:.3} ({} matched, {} predicted, {} true)",
            images.len(),
            m.ap(),
            m.f1(),
            m.matched,
            m.predicted,
            m.truth
        );
    }
    println!(
        "{set}: size estimate + inference + instances + matching, images side by side as `segment` runs them: {:.2} MP/s ({:.1} s, {} threads)",
        pixels as f64 / 1e6 / secs,
        secs,
        rayon::current_num_threads()
    );
    Ok(())
}

/// One line per image: its id, size, labelled and used nucleus diameters, and its matches at
/// IoU 0.5 (true, predicted, matched, errors), worst first.
fn per_image(model: &NucleusModel, set: &str, images: &[Annotated]) -> anyhow::Result<()> {
    use rayon::prelude::*;
    // NUCLEI_ORACLE: the labelled size in place of the estimate (a bound, not a method).
    let oracle = std::env::var_os("NUCLEI_ORACLE").is_some();
    let dump = std::env::var("NUCLEI_DUMP").ok();
    let mut rows: Vec<(String, usize)> = images
        .par_iter()
        .map(|a| {
            let given = (oracle && a.diameter > 0.0).then_some(a.diameter);
            let s = model.segment(&a.image, given)?;
            let (m, p, t) = plateflow_imaging::instances::matches(&s.labels.data, &a.truth, 0.5);
            if let Some(dir) = &dump {
                // Predicted outlines yellow, true ones magenta.
                let truth = plateflow_imaging::segment::Labels {
                    width: a.width as u32,
                    height: a.height as u32,
                    count: a.truth.iter().copied().max().unwrap_or(0),
                    data: a.truth.clone(),
                };
                let png = plateflow_imaging::overlay::outlines_png(&a.image, &s.labels, Some(&truth), 0)
                    .map_err(anyhow::Error::msg)?;
                std::fs::write(Path::new(dir).join(format!("{set}-{}.png", a.id)), png)?;
            }
            let errors = (p - m) + (t - m);
            Ok((
                format!(
                    "{set} {} {}x{} d_true {:.1} d_used {:.1} true {t} pred {p} matched {m} fp {} fn {} f1 {:.3}",
                    a.id,
                    a.width,
                    a.height,
                    a.diameter,
                    s.diameter,
                    p - m,
                    t - m,
                    2.0 * m as f64 / (p + t).max(1) as f64
                ),
                errors,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (line, _) in rows {
        println!("{line}");
    }
    Ok(())
}

/// Per object of the quick threshold `typical_diameter` uses (9 pixels or more): the diameter
/// of a disc of its area, and twice its largest distance to the background plus one.
fn object_diameters(a: &Annotated) -> Option<Vec<(f64, f64)>> {
    use plateflow_imaging::segment::{
        connected_components, distance_transform, gaussian, otsu_clipped,
    };
    let img = plateflow_imaging::GrayImage {
        width: a.width as u32,
        height: a.height as u32,
        bit_depth: 16,
        data: a
            .pixels
            .iter()
            .map(|&p| (p.clamp(0.0, 1.5) / 1.5 * 65535.0).round() as u16)
            .collect(),
    };
    let (w, h) = (a.width, a.height);
    let smooth = gaussian(&img, 2.0);
    let t = otsu_clipped(&smooth);
    let bright = smooth.iter().filter(|&&v| v > t).count();
    let dark = bright * 2 > smooth.len();
    let mask: Vec<bool> = smooth.iter().map(|&v| (v > t) != dark).collect();
    let cc = connected_components(&mask, w, h);
    let dt = distance_transform(&mask, w, h);
    let mut area = vec![0usize; cc.count as usize + 1];
    let mut peak = vec![0f32; cc.count as usize + 1];
    for (i, &l) in cc.data.iter().enumerate() {
        area[l as usize] += 1;
        peak[l as usize] = peak[l as usize].max(dt[i]);
    }
    let out: Vec<(f64, f64)> = (1..area.len())
        .filter(|&l| area[l] >= 9)
        .map(|l| {
            (
                2.0 * (area[l] as f64 / std::f64::consts::PI).sqrt(),
                2.0 * f64::from(peak[l]) + 1.0,
            )
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// The same network at twice the width: new channel j copies old channel j mod C, and every
/// weight reading duplicated channels is halved, so the function is unchanged but for the
/// 1 % noise that lets the two copies of a channel learn apart.
fn widen(w: &nuclei::Weights, to: usize) -> anyhow::Result<nuclei::Weights> {
    use candle_core::{Device, Tensor};
    let (c, depth) = (w.config.width, w.config.depth);
    anyhow::ensure!(
        to > c && to <= 2 * c,
        "a network of width {c} widens to {}..={}, not {to}",
        c + 1,
        2 * c
    );
    // New channel j of a level of `old` channels copies old channel j % old (Net2Net).
    let copy_of = |old: usize| (0..old * to / c).map(move |j| j % old);
    let mut tensors = std::collections::HashMap::new();
    // Per conv: old input channel of each new input, old inputs, new outputs' old channels.
    let mut convs: Vec<(String, Vec<usize>, Vec<usize>)> = Vec::new();
    for l in 0..depth {
        let inputs: Vec<usize> = if l == 0 {
            vec![0]
        } else {
            copy_of(c << (l - 1)).collect()
        };
        convs.push((format!("down{l}.c0"), inputs, copy_of(c << l).collect()));
        convs.push((
            format!("down{l}.c1"),
            copy_of(c << l).collect(),
            copy_of(c << l).collect(),
        ));
    }
    for l in (0..depth - 1).rev() {
        let (deep, skip) = (c << (l + 1), c << l);
        let inputs: Vec<usize> = copy_of(deep)
            .chain(copy_of(skip).map(|j| deep + j))
            .collect();
        convs.push((format!("up{l}.c0"), inputs, copy_of(skip).collect()));
        convs.push((
            format!("up{l}.c1"),
            copy_of(skip).collect(),
            copy_of(skip).collect(),
        ));
    }
    convs.push(("head".into(), copy_of(c).collect(), vec![0, 1, 2]));
    let mut rng = plateflow_learn::rng::Rng::new(17);
    for (name, inputs, outputs) in convs {
        let (wname, bname) = if name == "head" {
            ("head.weight".to_string(), "head.bias".to_string())
        } else {
            (format!("{name}.conv.weight"), format!("{name}.conv.bias"))
        };
        let old_w = &w.tensors[&wname];
        let (_, c_old, side, _) = old_w.dims4()?;
        let k = side * side;
        let old = old_w.flatten_all()?.to_vec1::<f32>()?;
        // An input read by n new channels is divided by n, so the sum stays the same.
        let mut reads = vec![0f32; c_old];
        for &i in &inputs {
            reads[i] += 1.0;
        }
        let mut neww = Vec::with_capacity(outputs.len() * inputs.len() * k);
        for &o in &outputs {
            for &i in &inputs {
                for t in 0..k {
                    // A little noise, so the two copies of a channel can drift apart.
                    let v = old[(o * c_old + i) * k + t] / reads[i];
                    neww.push(v * (1.0 + 0.01 * rng.normal() as f32));
                }
            }
        }
        tensors.insert(
            wname,
            Tensor::from_vec(
                neww,
                (outputs.len(), inputs.len(), side, side),
                &Device::Cpu,
            )?,
        );
        let b = w.tensors[&bname].flatten_all()?.to_vec1::<f32>()?;
        let nb: Vec<f32> = outputs.iter().map(|&o| b[o]).collect();
        tensors.insert(bname, Tensor::from_vec(nb, outputs.len(), &Device::Cpu)?);
        if name != "head" {
            for p in ["weight", "bias", "running_mean", "running_var"] {
                let key = format!("{name}.bn.{p}");
                let v = w.tensors[&key].flatten_all()?.to_vec1::<f32>()?;
                let nv: Vec<f32> = outputs.iter().map(|&o| v[o]).collect();
                tensors.insert(key, Tensor::from_vec(nv, outputs.len(), &Device::Cpu)?);
            }
        }
    }
    Ok(nuclei::Weights {
        config: plateflow_learn::unet::UNetConfig { width: to, depth },
        diameter: w.diameter,
        tensors,
    })
}

/// `net SIDE ROUNDS [PREFIX]`: the shipped network alone, for `bench/torch_unet.py` (needs no
/// data). Times it on a SIDE² image (values 0..1, a fixed pattern) ROUNDS times and prints
/// each round's model MP/s; with PREFIX it writes the input and both maps as little-endian
/// f32 (PREFIX.in, .interior, .fg) for comparison.
fn network_alone(args: &[String]) -> anyhow::Result<()> {
    let side: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    // `nuclei net SIDE ROUNDS [PREFIX|-] [WEIGHTS]`: the shipped weights without WEIGHTS.
    let model = model_named(
        args.get(4).map_or("shipped", String::as_str),
        &candle_core::Device::Cpu,
    )?;
    let x: Vec<f32> = (0..side * side)
        .map(|i| {
            let (u, v) = ((i % side) as f32, (i / side) as f32);
            0.5 + 0.5 * (u * 0.37).sin() * (v * 0.23).cos()
        })
        .collect();
    for r in 0..rounds {
        let t = std::time::Instant::now();
        let maps = model.network_probabilities(&x, side, side)?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "round {r}: {side}x{side} in {s:.3} s: {:.2} model MP/s on {} threads",
            (side * side) as f64 / 1e6 / s,
            rayon::current_num_threads()
        );
        if let (0, Some(prefix)) = (r, args.get(3).filter(|p| *p != "-")) {
            let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
            std::fs::write(format!("{prefix}.in"), bytes(&x))?;
            std::fs::write(format!("{prefix}.interior"), bytes(&maps.0))?;
            std::fs::write(format!("{prefix}.fg"), bytes(&maps.1))?;
        }
    }
    Ok(())
}
