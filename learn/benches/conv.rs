//! Forward and backward time of plateflow's convolution per layer of the default CNN
//! (batch 32, 2×64×64 input, width 16, depth 4): where a training step's conv time goes.
//!
//!     RAYON_NUM_THREADS=1 cargo bench -p plateflow-learn --bench conv

use candle_core::{Device, Tensor, Var};
use plateflow_learn::conv::conv2d_same;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    plateflow_learn::quiet_candle_threads();
    plateflow_learn::keep_freed_memory();
    let dev = Device::Cpu;
    let reps = 20;
    for (layer, (c, o, side)) in [(2, 16, 64), (16, 32, 32), (32, 64, 16), (64, 128, 8)]
        .into_iter()
        .enumerate()
    {
        let input = Tensor::randn(0f32, 1., (32, c, side, side), &dev)?;
        // The first layer's input is the images (no gradient); later ones are activations.
        let x = if layer == 0 {
            input
        } else {
            Var::from_tensor(&input)?.as_tensor().clone()
        };
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (o, c, 3, 3), &dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros(o, candle_core::DType::F32, &dev)?)?;
        let r = Tensor::randn(0f32, 1., (32, o, side, side), &dev)?;
        let (mut fwd, mut total) = (0.0, 0.0);
        for _ in 0..reps {
            let t0 = Instant::now();
            let y = conv2d_same(&x, &w, Some(&b))?;
            fwd += t0.elapsed().as_secs_f64();
            std::hint::black_box((&y * &r)?.sum_all()?.backward()?);
            total += t0.elapsed().as_secs_f64();
        }
        println!(
            "layer {}: {c:>3}→{o:<3} at {side:>2}×{side:<2}: forward {:6.2} ms, forward+backward {:6.2} ms per batch of 32",
            layer + 1,
            1e3 * fwd / reps as f64,
            1e3 * total / reps as f64
        );
    }
    Ok(())
}
