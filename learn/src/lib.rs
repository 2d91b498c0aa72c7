//! Learning and evaluation for plateflow on Candle, as a library first: models (a logistic
//! baseline and a small CNN), training (AdamW, one-cycle, class balance, augmentation, early
//! stopping, seeded), validation grouped by plate with a leakage guard, and metrics with
//! plate-level bootstrap intervals and calibration. The engine's `train`/`evaluate` steps
//! (issue 4) are to be thin adapters over it.

pub mod conv;
pub mod data;
pub mod device;
pub mod figures;
pub mod fused;
pub mod interpret;
pub mod metrics;
pub mod model;
pub mod rng;
pub mod schedule;
pub mod split;
pub mod train;

#[cfg(test)]
mod tests;

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
