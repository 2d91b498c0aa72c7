//! Which device trains and predicts: the CPU by default; with the `cuda` cargo feature, the
//! task's GPU. The worker hands a task the GPU ids the coordinator assigned it (`gpus: 1`
//! in the pipeline); a build without the feature, or a task without a GPU, uses the CPU.

use candle_core::Device;

/// The device for a task given its assigned GPU ids.
pub fn for_task(gpu_ids: &[u32]) -> anyhow::Result<Device> {
    match gpu_ids.first() {
        None => Ok(Device::Cpu),
        Some(&id) => cuda(id),
    }
}

#[cfg(feature = "cuda")]
fn cuda(id: u32) -> anyhow::Result<Device> {
    Device::new_cuda(id as usize)
        .map_err(|e| anyhow::anyhow!("GPU {id} was assigned but CUDA cannot open it: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(id: u32) -> anyhow::Result<Device> {
    anyhow::bail!(
        "the task was given GPU {id}, but this plateflow was built without the `cuda` feature \
         (cargo build --release --features cuda; see deploy/cuda)"
    )
}

/// A short description for logs and model cards: `cpu` or `cuda:N`.
pub fn describe(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpu_means_the_cpu_and_a_gpu_without_cuda_is_a_clear_error() {
        assert_eq!(describe(&for_task(&[]).unwrap()), "cpu");
        #[cfg(not(feature = "cuda"))]
        assert!(for_task(&[0])
            .unwrap_err()
            .to_string()
            .contains("without the `cuda` feature"));
    }
}
