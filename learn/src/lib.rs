//! Learning and evaluation for plateflow on Candle, as a library first: models (a logistic
//! baseline and a small CNN), training (AdamW, one-cycle, class balance, augmentation, early
//! stopping, seeded), validation grouped by plate with a leakage guard, and metrics with
//! plate-level bootstrap intervals and calibration. The engine's `train` and `evaluate` steps
//! are thin adapters over it: they read files, call [`protocol`] and [`fitting`], and write.

pub mod adamw;
pub mod block;
pub mod cells;
pub mod conv;
mod cpu_op;
pub mod data;
pub mod device;
pub mod dose;
pub mod figures;
pub mod fitting;
pub mod frozen;
pub mod fused;
pub mod interpret;
pub mod metrics;
pub mod model;
pub mod nuclei;
pub mod protocol;
pub mod readouts;
pub mod rng;
pub mod schedule;
pub mod segmenter;
pub mod split;
pub mod train;
pub mod unet;

/// Tells glibc's allocator to keep freed blocks for reuse instead of returning them to the
/// kernel: training allocates and frees tensors of the same few sizes every step, and by
/// default each one over 128 KiB was a fresh mmap whose pages the kernel zeroed again
/// (a quarter of the training time on 2 cores). `train_cnn` calls it; it changes only how
/// this process's allocator recycles memory.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Candle runs its element-wise CPU ops on its own thread pool whose workers spin while they
/// wait. plateflow's heavy ops (conv, BatchNorm, pooling) run on rayon, image by image, and
/// the element-wise ops left to Candle are small, so those spinning workers only took cores
/// from the real work: one thread for Candle's pool made training 25-30 % faster on 2 cores.
/// Must run before any thread starts (it sets `CANDLE_NUM_THREADS` unless the user did).
pub fn quiet_candle_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY (edition 2021: set_var is safe, but racy with other threads): called first
        // thing in `main`, before any other thread exists.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

#[cfg(test)]
mod tests;

/// Helpers shared by the unit tests of the custom ops.
#[cfg(test)]
mod test_util {
    use crate::rng::Rng;
    use candle_core::{Device, Tensor};

    /// Uniform values in [-0.5, 0.5), f64.
    pub fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.unit() - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The gradients of Σ out·r: a random linear read-out of an op's output.
    pub fn grads_of(out: &Tensor, r: &Tensor) -> candle_core::backprop::GradStore {
        (out * r).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// Two BatchNorms (in their own VarMaps) got the same γ and β gradients and moved their
    /// running statistics the same way.
    pub fn assert_same_batch_norm(
        (a, ga): (&candle_nn::VarMap, &candle_core::backprop::GradStore),
        (b, gb): (&candle_nn::VarMap, &candle_core::backprop::GradStore),
        what: &str,
    ) {
        let (da, db) = (a.data().lock().unwrap(), b.data().lock().unwrap());
        for name in ["weight", "bias"] {
            let d = max_abs_diff(
                ga.get(da[name].as_tensor()).unwrap(),
                gb.get(db[name].as_tensor()).unwrap(),
            );
            assert!(
                d < 1e-10,
                "BatchNorm {name} gradient, {what}: differs by {d}"
            );
        }
        for name in ["running_mean", "running_var"] {
            let d = max_abs_diff(da[name].as_tensor(), db[name].as_tensor());
            assert!(d < 1e-12, "{name}, {what}: differs by {d}");
        }
    }

    /// Every variable of a network set from `seed`: weights in [-0.4, 0.4), BatchNorm γ and
    /// β in [-0.3, 0.7) and running variances in [0.5, 1.5), far from the identity, so that
    /// a wrong fold or a missed statistic shows.
    pub fn randomise_network(varmap: &candle_nn::VarMap, seed: u64) {
        let mut rng = Rng::new(seed);
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let v: Vec<f32> = (0..var.as_tensor().elem_count())
                .map(|_| {
                    let u = rng.unit() as f32;
                    if name.ends_with("running_var") {
                        0.5 + u
                    } else if name.contains(".bn.") {
                        u - 0.3
                    } else {
                        (u - 0.5) * 0.8
                    }
                })
                .collect();
            let t = Tensor::from_vec(v, var.as_tensor().shape(), var.device()).unwrap();
            var.set(&t).unwrap();
        }
    }

    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }
}
