//! CPU/CUDA parity and GPU throughput of the default CNN, for a GPU node (build with
//! `--features cuda`; deploy/cuda/build-worker.sh makes the toolkit):
//!
//!     cargo run --release -p plateflow-learn --features cuda --example gpu_check [OUT.json]
//!
//! Parity: the same weights on the CPU (plateflow's own conv/BatchNorm/pool ops) and on the
//! GPU (Candle's CUDA kernels): evaluation-mode probabilities, training-mode loss, every
//! gradient, and the predictions after 20 identical AdamW steps. Exits non-zero when they
//! disagree beyond the tolerances below. Throughput: training and inference images/s on the
//! GPU (2×64×64 crops, batch 32 and 256) and training on this node's CPU, side by side.
//! Then the nucleus U-Net (the shipped weights): CPU (folded path) against CUDA (Candle's
//! ops) maps and objects on a 700×620 field of generated nuclei, inference MP/s at model
//! scale and training steps/s (batch 8, 128² crops) on each.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use plateflow_learn::model::{seed_init, Cnn, CnnConfig};
use plateflow_learn::nuclei;
use plateflow_learn::rng::Rng;
use plateflow_learn::segmenter::NucleusModel;
use std::time::Instant;

const CONFIG: CnnConfig = CnnConfig {
    in_channels: 2,
    classes: 16,
    width: 16,
    depth: 4,
    dropout: 0.3,
};
const SIDE: usize = 64;

fn model_on(device: &Device, from: Option<&VarMap>) -> anyhow::Result<(Cnn, VarMap)> {
    let varmap = VarMap::new();
    let model = Cnn::new(CONFIG, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    match from {
        None => seed_init(&varmap, 7)?,
        Some(src) => {
            let src = src.data().lock().expect("lock");
            for (name, var) in varmap.data().lock().expect("lock").iter() {
                var.set(&src[name].as_tensor().to_device(device)?)?;
            }
        }
    }
    Ok((model, varmap))
}

fn batch(n: usize, seed: u64, device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..n * 2 * SIDE * SIDE)
        .map(|_| rng.unit() as f32)
        .collect();
    let y: Vec<u32> = (0..n).map(|i| (i % 16) as u32).collect();
    Ok((
        Tensor::from_vec(x, (n, 2, SIDE, SIDE), device)?,
        Tensor::from_vec(y, n, device)?,
    ))
}

/// Training-mode loss without dropout (dropout masks are drawn on the host, the same on both,
/// but leaving it out keeps the comparison about the arithmetic).
fn train_loss(m: &Cnn, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let logits = m.head(&m.features(x, true)?, None)?;
    candle_nn::loss::cross_entropy(&logits, y)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let d = (a.to_device(&Device::Cpu)? - b.to_device(&Device::Cpu)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn sorted_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = vm
        .data()
        .lock()
        .expect("lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn trainable(vm: &VarMap) -> Vec<Var> {
    sorted_vars(vm)
        .into_iter()
        .filter(|(k, _)| !k.contains("running_"))
        .map(|(_, v)| v)
        .collect()
}

/// Images/s of `steps` training steps at batch `n` (after one warm-up step).
fn train_rate(device: &Device, n: usize, steps: usize) -> anyhow::Result<f64> {
    let (m, vm) = model_on(device, None)?;
    let mut opt = AdamW::new(trainable(&vm), ParamsAdamW::default())?;
    let (x, y) = batch(n, 3, device)?;
    let mut rng = Rng::new(5);
    let loss = candle_nn::loss::cross_entropy(&m.forward(&x, Some(&mut rng))?, &y)?;
    opt.backward_step(&loss)?;
    loss.to_scalar::<f32>()?; // waits for the device
    let t0 = Instant::now();
    for _ in 0..steps {
        let loss = candle_nn::loss::cross_entropy(&m.forward(&x, Some(&mut rng))?, &y)?;
        opt.backward_step(&loss)?;
        loss.to_scalar::<f32>()?;
    }
    Ok((steps * n) as f64 / t0.elapsed().as_secs_f64())
}

fn infer_rate(device: &Device, n: usize, steps: usize) -> anyhow::Result<f64> {
    let (m, _) = model_on(device, None)?;
    let (x, _) = batch(n, 3, device)?;
    m.forward(&x, None)?.sum_all()?.to_scalar::<f32>()?;
    let t0 = Instant::now();
    for _ in 0..steps {
        m.forward(&x, None)?.sum_all()?.to_scalar::<f32>()?;
    }
    Ok((steps * n) as f64 / t0.elapsed().as_secs_f64())
}

/// A field of generated nuclei (discs of radius 5-9 on noise, some touching): normalised
/// pixels and their labels.
fn nuclei_field(w: usize, h: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut px: Vec<f32> = (0..w * h).map(|_| 0.05 * rng.normal() as f32).collect();
    let mut truth = vec![0u32; w * h];
    let count = w * h / 2500;
    for l in 1..=count as u32 {
        let (cx, cy, r) = (
            rng.below(w) as f64,
            rng.below(h) as f64,
            5.0 + 4.0 * rng.unit(),
        );
        let (x0, y0) = ((cx - r).max(0.0) as usize, (cy - r).max(0.0) as usize);
        for y in y0..((cy + r + 1.0) as usize).min(h) {
            for x in x0..((cx + r + 1.0) as usize).min(w) {
                if (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2) <= r * r {
                    px[y * w + x] += 0.8;
                    truth[y * w + x] = l;
                }
            }
        }
    }
    (px, truth)
}

fn main() -> anyhow::Result<()> {
    plateflow_learn::keep_freed_memory();
    let out = std::env::args().nth(1);
    let gpu = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("no CUDA device here ({e}); build with --features cuda on a GPU node");
            return Ok(());
        }
    };
    let cpu = Device::Cpu;
    let mut report = serde_json::Map::new();
    let mut ok = true;
    let mut check = |name: &str,
                     value: f32,
                     tol: f32,
                     report: &mut serde_json::Map<String, serde_json::Value>| {
        let pass = value.is_finite() && value <= tol;
        println!(
            "{} {name}: {value:.3e} (tolerance {tol:.0e})",
            if pass { "ok  " } else { "FAIL" }
        );
        report.insert(
            name.into(),
            serde_json::json!({"value": value, "tolerance": tol, "pass": pass}),
        );
        ok &= pass;
    };

    // Same weights on both devices.
    let (m_cpu, vm_cpu) = model_on(&cpu, None)?;
    let (m_gpu, vm_gpu) = model_on(&gpu, Some(&vm_cpu))?;
    let (x, y) = batch(256, 11, &cpu)?;
    let (xg, yg) = (x.to_device(&gpu)?, y.to_device(&gpu)?);
    let p_cpu = candle_nn::ops::softmax(&m_cpu.forward(&x, None)?, 1)?;
    let p_gpu = candle_nn::ops::softmax(&m_gpu.forward(&xg, None)?, 1)?;
    check(
        "eval probabilities, max |cpu - cuda|",
        max_abs_diff(&p_cpu, &p_gpu)?,
        1e-4,
        &mut report,
    );
    let agree = (p_cpu.argmax(1)?.eq(&p_gpu.argmax(1)?.to_device(&cpu)?)?)
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    check("eval argmax disagreement", 1.0 - agree, 0.0, &mut report);

    // Training mode: loss and every gradient.
    let (l_cpu, l_gpu) = (train_loss(&m_cpu, &x, &y)?, train_loss(&m_gpu, &xg, &yg)?);
    check(
        "training loss, |cpu - cuda|",
        max_abs_diff(&l_cpu, &l_gpu)?,
        1e-4,
        &mut report,
    );
    let (g_cpu, g_gpu) = (l_cpu.backward()?, l_gpu.backward()?);
    // Differences relative to the model's largest gradient entry: a conv bias followed by
    // BatchNorm has a true gradient of zero (the normalisation removes it), so its own scale
    // is rounding noise and a per-tensor relative error would be meaningless.
    let pairs: Vec<(String, Tensor, Tensor)> = sorted_vars(&vm_cpu)
        .iter()
        .zip(sorted_vars(&vm_gpu).iter())
        .filter(|((name, _), _)| !name.contains("running_"))
        .map(|((name, vc), (_, vg))| {
            (
                name.clone(),
                g_cpu.get(vc.as_tensor()).expect("cpu grad").clone(),
                g_gpu.get(vg.as_tensor()).expect("cuda grad").clone(),
            )
        })
        .collect();
    let mut largest: f32 = 0.0;
    for (_, a, _) in &pairs {
        largest = largest.max(a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?);
    }
    let mut worst: f32 = 0.0;
    for (name, a, b) in &pairs {
        let rel = max_abs_diff(a, b)? / largest;
        worst = worst.max(rel);
        report.insert(
            format!("gradient {name}, max |cpu - cuda| / largest gradient"),
            serde_json::json!(rel),
        );
    }
    check(
        "gradients, worst max |cpu - cuda| / largest gradient entry",
        worst,
        1e-3,
        &mut report,
    );

    // 20 identical AdamW steps on each (no dropout, no augmentation): the models stay close.
    let mut o_cpu = AdamW::new(trainable(&vm_cpu), ParamsAdamW::default())?;
    let mut o_gpu = AdamW::new(trainable(&vm_gpu), ParamsAdamW::default())?;
    for step in 0..20 {
        let (xb, yb) = batch(32, 100 + step, &cpu)?;
        o_cpu.backward_step(&train_loss(&m_cpu, &xb, &yb)?)?;
        o_gpu.backward_step(&train_loss(
            &m_gpu,
            &xb.to_device(&gpu)?,
            &yb.to_device(&gpu)?,
        )?)?;
    }
    let p_cpu = candle_nn::ops::softmax(&m_cpu.forward(&x, None)?, 1)?;
    let p_gpu = candle_nn::ops::softmax(&m_gpu.forward(&xg, None)?, 1)?;
    check(
        "probabilities after 20 AdamW steps, max |cpu - cuda|",
        max_abs_diff(&p_cpu, &p_gpu)?,
        1e-2,
        &mut report,
    );

    // The nucleus U-Net: the shipped weights on both devices.
    let (w, h) = (700usize, 620usize);
    let (px, truth) = nuclei_field(w, h, 13);
    let seg_cpu = NucleusModel::shipped()?;
    let seg_gpu = NucleusModel::shipped_on(&gpu)?;
    let (ci, cf) = seg_cpu.probabilities(&px, w, h)?;
    let (gi, gf) = seg_gpu.probabilities(&px, w, h)?;
    let worst = ci
        .iter()
        .zip(&gi)
        .chain(cf.iter().zip(&gf))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    check("nucleus maps, max |cpu - cuda|", worst, 1e-3, &mut report);
    let a = seg_cpu.segment_normalised(&px, w, h, Some(14.0))?.labels;
    let b = seg_gpu.segment_normalised(&px, w, h, Some(14.0))?.labels;
    let same = plateflow_imaging::instances::matches(&a.data, &b.data, 0.95).0;
    check(
        "nucleus objects not matched at IoU 0.95 between cpu and cuda",
        (a.count as usize + b.count as usize - 2 * same) as f32,
        0.0,
        &mut report,
    );
    println!(
        "{} generated nuclei; the shipped model found {} on the CPU",
        truth.iter().max().copied().unwrap_or(0),
        a.count
    );
    for (name, device, reps) in [("cuda", &gpu, 20), ("cpu", &cpu, 2)] {
        let model = NucleusModel::shipped_on(device)?;
        let (big_w, big_h) = (2048usize, 2048usize);
        let (big, _) = nuclei_field(big_w, big_h, 17);
        model.probabilities(&big, big_w, big_h)?; // warm-up
        let t0 = Instant::now();
        for _ in 0..reps {
            model.probabilities(&big, big_w, big_h)?;
        }
        let rate = (reps * big_w * big_h) as f64 / 1e6 / t0.elapsed().as_secs_f64();
        let name = format!("{name} nucleus U-Net maps, MP/s at model scale (2048² fields)");
        println!("{name}: {rate:.1}");
        report.insert(name, serde_json::json!(rate));
    }
    let train_images: Vec<nuclei::Annotated> = (0..4)
        .map(|i| {
            let (pixels, truth) = nuclei_field(512, 512, 30 + i);
            nuclei::Annotated {
                id: format!("generated-{i}"),
                width: 512,
                height: 512,
                image: nuclei::quantised(&pixels, 512, 512),
                diameter: nuclei::median_diameter(&truth, 1).unwrap_or(16.0),
                pixels,
                truth,
            }
        })
        .collect();
    for (name, device, steps) in [("cuda", &gpu, 200), ("cpu", &cpu, 20)] {
        let cfg = nuclei::SegTrainConfig {
            net: plateflow_learn::unet::UNetConfig { width: 8, depth: 3 },
            steps,
            device: device.clone(),
            ..Default::default()
        };
        let t0 = Instant::now();
        nuclei::train(&train_images, &[], &cfg, None, 0, &|_| {})?;
        let rate = steps as f64 / t0.elapsed().as_secs_f64();
        let name = format!("{name} nucleus U-Net training steps/s (width 8, batch 8, 128² crops)");
        println!("{name}: {rate:.2}");
        report.insert(name, serde_json::json!(rate));
    }

    // Throughput.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (name, rate) in [
        (
            "cuda training images/s, batch 32",
            train_rate(&gpu, 32, 200)?,
        ),
        (
            "cuda training images/s, batch 256",
            train_rate(&gpu, 256, 60)?,
        ),
        (
            "cuda inference images/s, batch 256",
            infer_rate(&gpu, 256, 100)?,
        ),
        ("cpu training images/s, batch 32", train_rate(&cpu, 32, 30)?),
        (
            "cpu inference images/s, batch 256",
            infer_rate(&cpu, 256, 10)?,
        ),
    ] {
        println!("{name}: {rate:.0} ({cpus} CPU cores)");
        report.insert(name.into(), serde_json::json!(rate));
    }
    report.insert("cpu cores".into(), serde_json::json!(cpus));
    report.insert("parity".into(), serde_json::json!(ok));
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    anyhow::ensure!(ok, "CPU and CUDA disagree beyond tolerance (see above)");
    Ok(())
}
