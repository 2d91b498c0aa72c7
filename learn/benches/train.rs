//! Training and inference throughput of the default CNN on the CPU (images/s), on the input
//! the issue names: 2×64×64 crops, batch 32. Random data: speed does not depend on content.
//!
//!     cargo bench -p plateflow-learn --bench train

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use plateflow_learn::model::{seed_init, Cnn, CnnConfig};
use plateflow_learn::rng::Rng;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    plateflow_learn::quiet_candle_threads();
    plateflow_learn::keep_freed_memory();
    let (batch, side, steps) = (32usize, 64usize, 40usize);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Cnn::new(
        CnnConfig {
            in_channels: 2,
            classes: 16,
            width: 16,
            depth: 4,
            dropout: 0.3,
        },
        vb,
    )?;
    seed_init(&varmap, 0)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
    let mut rng = Rng::new(1);
    let x: Vec<f32> = (0..batch * 2 * side * side)
        .map(|_| rng.unit() as f32)
        .collect();
    let x = Tensor::from_vec(x, (batch, 2, side, side), &Device::Cpu)?;
    let y: Vec<u32> = (0..batch).map(|i| (i % 16) as u32).collect();
    let y = Tensor::from_vec(y, batch, &Device::Cpu)?;
    // Warm-up step (allocations, thread pools).
    let loss = candle_nn::loss::cross_entropy(&model.forward(&x, Some(&mut rng))?, &y)?;
    opt.backward_step(&loss)?;
    let t0 = Instant::now();
    for _ in 0..steps {
        let loss = candle_nn::loss::cross_entropy(&model.forward(&x, Some(&mut rng))?, &y)?;
        opt.backward_step(&loss)?;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "training: {} images in {s:.2} s = {:.0} images/s (2x64x64, batch {batch}, width 16, depth 4)",
        batch * steps,
        (batch * steps) as f64 / s
    );
    let t0 = Instant::now();
    for _ in 0..steps {
        std::hint::black_box(model.forward(&x, None)?);
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "inference: {} images in {s:.2} s = {:.0} images/s",
        batch * steps,
        (batch * steps) as f64 / s
    );
    Ok(())
}
