//! Trains the learned nucleus segmenter on the DSB 2018 nuclei and scores it on the fifth held
//! out by image, and on the Coelho U2OS images no training saw.
//!
//!   cargo run --release -p plateflow-learn --example nuclei -- [STEPS] [OUT.safetensors] [EVAL_EVERY] [WIDTH] [CROP] [COELHO_SCALE]
//!
//! STEPS 0 scores the weights already in OUT instead of training. COELHO_SCALE (default 1)
//! shrinks the Coelho images and labels by that factor first (their nuclei are several times
//! larger than most DSB nuclei).
//!
//! Reads `../shared/data/dsb2018-nuclei` and `../shared/data/coelho-u2os` (from the repository
//! root); says so and stops where they are absent.

use plateflow_learn::nuclei::{self, SegTrainConfig, IOUS};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    plateflow_learn::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let out = args
        .next()
        .unwrap_or_else(|| "nuclei-unet.safetensors".into());
    let eval_every: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(250);
    let width: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(16);
    let crop: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let coelho_scale: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let dsb = root.join("dsb2018-nuclei");
    if !dsb.exists() {
        println!("{} is absent", dsb.display());
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let all = nuclei::load_pairs(&dsb)?;
    let (val, train): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|a| nuclei::is_validation(&a.id));
    eprintln!(
        "{} training and {} validation images loaded in {:.1} s",
        train.len(),
        val.len(),
        t0.elapsed().as_secs_f64()
    );
    let cfg = SegTrainConfig {
        steps,
        crop,
        net: plateflow_learn::unet::UNetConfig { width, depth: 3 },
        ..Default::default()
    };
    let t1 = std::time::Instant::now();
    let (varmap, net) = if steps == 0 {
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(
            &varmap,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        );
        let net = plateflow_learn::unet::UNet::new(cfg.net, vb)?;
        let mut varmap = varmap;
        varmap.load(&out)?;
        (varmap, net)
    } else {
        let (varmap, net, _history) =
            nuclei::train(&train, &val, &cfg, eval_every, &|m| eprintln!("{m}"))?;
        (varmap, net)
    };
    let train_s = t1.elapsed().as_secs_f64();
    if steps > 0 {
        varmap.save(&out)?;
    }
    let t2 = std::time::Instant::now();
    let scores = nuclei::evaluate(&net, &val)?;
    let pixels: usize = val.iter().map(|a| a.width * a.height).sum();
    let infer_s = t2.elapsed().as_secs_f64();
    println!(
        "trained {steps} steps (batch {}, crops {}) in {train_s:.0} s on {} threads",
        cfg.batch,
        cfg.crop,
        rayon::current_num_threads()
    );
    for (m, iou) in scores.iter().zip(IOUS) {
        println!(
            "DSB validation fifth ({} images): IoU {iou}: AP {:.3}, F1 {:.3} ({} matched, {} predicted, {} true)",
            val.len(),
            m.ap(),
            m.f1(),
            m.matched,
            m.predicted,
            m.truth
        );
    }
    println!(
        "inference + instances: {:.2} MP/s",
        pixels as f64 / 1e6 / infer_s
    );
    let coelho = root.join("coelho-u2os");
    if coelho.exists() {
        let images: Vec<_> = nuclei::load_pairs(&coelho)?
            .iter()
            .map(|a| shrink(a, coelho_scale))
            .collect();
        let scores = nuclei::evaluate(&net, &images)?;
        for (m, iou) in scores.iter().zip(IOUS) {
            println!(
                "Coelho U2OS ({} images, never trained on): IoU {iou}: AP {:.3}, F1 {:.3}",
                images.len(),
                m.ap(),
                m.f1()
            );
        }
    }
    Ok(())
}

/// An annotated image shrunk by an integer factor: intensities averaged over each block,
/// labels taken from the block's centre pixel.
fn shrink(a: &nuclei::Annotated, f: usize) -> nuclei::Annotated {
    if f <= 1 {
        return a.clone();
    }
    let (w, h) = (a.width / f, a.height / f);
    let mut pixels = vec![0f32; w * h];
    let mut truth = vec![0u32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0f32;
            for dy in 0..f {
                for dx in 0..f {
                    sum += a.pixels[(y * f + dy) * a.width + x * f + dx];
                }
            }
            pixels[y * w + x] = sum / (f * f) as f32;
            truth[y * w + x] = a.truth[(y * f + f / 2) * a.width + x * f + f / 2];
        }
    }
    nuclei::Annotated {
        id: a.id.clone(),
        width: w,
        height: h,
        classes: plateflow_imaging::instances::targets(&truth, w, h),
        pixels,
        truth,
    }
}
