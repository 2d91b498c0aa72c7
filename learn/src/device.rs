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

/// This process's `CUDA_VISIBLE_DEVICES` entries, if it is set.
fn visible_entries() -> Option<Vec<String>> {
    let v = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    Some(
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// The GPU ids a worker offers by default: the numbers in `CUDA_VISIBLE_DEVICES` (as Slurm
/// and users set it); where its entries are UUIDs or MIG instances (`GPU-…`, `MIG-…`), their
/// positions 0..n (they were dropped, so no GPU was offered at all).
pub fn offered_gpus() -> Vec<u32> {
    offered_in(visible_entries().as_deref())
}

fn offered_in(entries: Option<&[String]>) -> Vec<u32> {
    let Some(entries) = entries else {
        return Vec::new();
    };
    let numbers: Option<Vec<u32>> = entries.iter().map(|e| e.parse().ok()).collect();
    numbers.unwrap_or_else(|| (0..entries.len() as u32).collect())
}

/// What a task's child process gets as `CUDA_VISIBLE_DEVICES` for offered GPU `id`: the
/// id itself, or the UUID / MIG entry it stands for.
pub fn child_visible(id: u32) -> String {
    child_visible_in(visible_entries().as_deref(), id)
}

fn child_visible_in(entries: Option<&[String]>, id: u32) -> String {
    match entries {
        Some(e) if e.iter().any(|x| x.parse::<u32>().is_err()) => e
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| id.to_string()),
        _ => id.to_string(),
    }
}

/// CUDA's ordinal, inside this process, of offered GPU `id`: with `CUDA_VISIBLE_DEVICES=2,3`
/// CUDA numbers GPU 2 as 0 (opening "2" failed, and the step fell back to the CPU).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn ordinal_in(entries: Option<&[String]>, id: u32) -> usize {
    match entries {
        Some(e) => match e.iter().position(|x| x.parse::<u32>().ok() == Some(id)) {
            Some(p) => p,
            // Offered by position (UUIDs), or not among them (`--gpus` given by hand).
            None => id as usize,
        },
        None => id as usize,
    }
}

#[cfg(feature = "cuda")]
fn cuda(id: u32) -> anyhow::Result<Device> {
    let ordinal = ordinal_in(visible_entries().as_deref(), id);
    Device::new_cuda(ordinal).map_err(|e| {
        anyhow::anyhow!(
            "GPU {id} (CUDA device {ordinal}) was assigned but CUDA cannot open it: {e}"
        )
    })
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

    /// GPUs named by number are offered as such and opened by their place in the list;
    /// UUID or MIG entries are offered by position, and a task's child gets the entry.
    #[test]
    fn visible_devices_as_slurm_and_users_set_them() {
        let list = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let numbered = list(&["2", "3"]);
        assert_eq!(offered_in(Some(&numbered)), [2, 3]);
        assert_eq!(ordinal_in(Some(&numbered), 3), 1);
        assert_eq!(child_visible_in(Some(&numbered), 3), "3");
        let uuids = list(&["GPU-8a1f", "MIG-2b3c"]);
        assert_eq!(offered_in(Some(&uuids)), [0, 1]);
        assert_eq!(ordinal_in(Some(&uuids), 1), 1);
        assert_eq!(child_visible_in(Some(&uuids), 1), "MIG-2b3c");
        assert_eq!(offered_in(None), Vec::<u32>::new());
        assert_eq!(ordinal_in(None, 1), 1);
        assert_eq!(child_visible_in(None, 1), "1");
    }

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
