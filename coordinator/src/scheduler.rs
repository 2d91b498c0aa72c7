//! Scheduling decisions as a plain function over queued tasks and free worker resources: no
//! sockets, no clocks, so it is tested directly.

use crate::spec::ResourceSpec;
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// What a worker has free right now.
#[derive(Debug, Clone)]
pub struct Capacity {
    pub worker: WorkerId,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Free GPU ids.
    pub gpus: Vec<u32>,
    /// Totals, to tell "busy" from "can never fit".
    pub total_cpus: u32,
    pub total_memory_bytes: u64,
    pub total_gpus: u32,
    /// Built with the `cuda` feature: its GPUs can run Candle.
    pub cuda_build: bool,
    /// Seconds until its batch job ends (Slurm's time limit), `None` without one.
    pub seconds_left: Option<u64>,
}

/// Time kept free past a task's time limit on a worker whose job ends: its results are still
/// to be uploaded and saved.
pub const END_MARGIN_S: u64 = 60;

/// Whether a task limited to `limit` seconds ends, results sent, before a job with `left`
/// seconds to go. A task without a limit may take any worker (it is retried elsewhere if the
/// job ends under it).
pub fn time_fits(left: Option<u64>, limit: Option<u64>) -> bool {
    match (left, limit) {
        (Some(left), Some(limit)) => left >= limit.saturating_add(END_MARGIN_S),
        _ => true,
    }
}

impl Capacity {
    fn fits(&self, r: &ResourceSpec) -> bool {
        time_fits(self.seconds_left, r.time_limit_s)
            && (self.cuda_build || !r.needs_cuda_build)
            && self.cpus >= r.cpus
            && self.gpus.len() as u32 >= r.gpus
            && (r.memory_bytes == 0
                || self.total_memory_bytes == 0
                || self.memory_bytes >= r.memory_bytes)
    }

    /// By size alone: a worker short of time is replaced by a new allocation with more.
    pub fn could_ever_fit(&self, r: &ResourceSpec) -> bool {
        (self.cuda_build || !r.needs_cuda_build)
            && self.total_cpus >= r.cpus
            && self.total_gpus >= r.gpus
            && (r.memory_bytes == 0
                || self.total_memory_bytes == 0
                || self.total_memory_bytes >= r.memory_bytes)
    }

    fn take(&mut self, r: &ResourceSpec) -> Vec<u32> {
        self.cpus -= r.cpus;
        if self.total_memory_bytes > 0 {
            self.memory_bytes = self.memory_bytes.saturating_sub(r.memory_bytes);
        }
        self.gpus.drain(..r.gpus as usize).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment<T> {
    pub task: T,
    pub worker: WorkerId,
    pub gpu_ids: Vec<u32>,
}

/// How far past a task that fits nowhere the scheduler looks for smaller ones.
const LOOKAHEAD: usize = 1024;

/// Assigns queued tasks, in queue order, each to the fitting worker with the most free CPUs
/// (spreading load). Tasks that fit nowhere now keep their place in the queue.
pub fn assign<T: Copy>(
    queue: &mut VecDeque<T>,
    resources: impl Fn(T) -> ResourceSpec,
    workers: &mut [Capacity],
) -> Vec<Assignment<T>> {
    let mut out = Vec::new();
    let mut skipped: Vec<T> = Vec::new();
    while let Some(task) = queue.pop_front() {
        if workers.iter().all(|w| w.cpus == 0) || skipped.len() >= LOOKAHEAD {
            queue.push_front(task);
            break;
        }
        let r = resources(task);
        let best = workers
            .iter_mut()
            .filter(|w| w.fits(&r))
            .max_by_key(|w| (w.cpus, std::cmp::Reverse(w.worker)));
        match best {
            Some(w) => {
                let gpu_ids = w.take(&r);
                out.push(Assignment {
                    task,
                    worker: w.worker,
                    gpu_ids,
                });
            }
            None => skipped.push(task),
        }
    }
    for t in skipped.into_iter().rev() {
        queue.push_front(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(id: u64, cpus: u32, gpus: Vec<u32>) -> Capacity {
        Capacity {
            worker: WorkerId(id),
            cpus,
            memory_bytes: 8 << 30,
            total_gpus: gpus.len() as u32,
            gpus,
            total_cpus: cpus,
            total_memory_bytes: 8 << 30,
            cuda_build: false,
            seconds_left: None,
        }
    }

    fn res(cpus: u32, gpus: u32) -> ResourceSpec {
        ResourceSpec {
            cpus,
            gpus,
            ..Default::default()
        }
    }

    #[test]
    fn spreads_and_respects_cpus() {
        let mut q: VecDeque<u32> = (0..10).collect();
        let mut w = vec![cap(1, 2, vec![]), cap(2, 2, vec![])];
        let a = assign(&mut q, |_| res(1, 0), &mut w);
        assert_eq!(a.len(), 4);
        assert_eq!(a.iter().filter(|x| x.worker == WorkerId(1)).count(), 2);
        assert_eq!(q.len(), 6);
        assert_eq!(q.front(), Some(&4), "queue order is kept");
    }

    #[test]
    fn gpu_tasks_go_to_gpu_workers_and_get_distinct_ids() {
        let mut q: VecDeque<u32> = (0..3).collect();
        let mut w = vec![cap(1, 8, vec![]), cap(2, 8, vec![0, 1])];
        let a = assign(&mut q, |_| res(1, 1), &mut w);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|x| x.worker == WorkerId(2)));
        assert_eq!(a[0].gpu_ids, vec![0]);
        assert_eq!(a[1].gpu_ids, vec![1]);
        assert_eq!(q, VecDeque::from(vec![2]));
    }

    #[test]
    fn big_task_waits_while_small_ones_pass() {
        let mut q: VecDeque<u32> = VecDeque::from(vec![0, 1, 2]);
        let mut w = vec![cap(1, 2, vec![])];
        let a = assign(
            &mut q,
            |t| if t == 0 { res(4, 0) } else { res(1, 0) },
            &mut w,
        );
        assert_eq!(a.iter().map(|x| x.task).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(q, VecDeque::from(vec![0]));
        assert!(!w[0].could_ever_fit(&res(4, 0)));
    }

    #[test]
    fn candle_gpu_tasks_go_only_to_cuda_builds() {
        let train = ResourceSpec {
            needs_cuda_build: true,
            ..res(1, 1)
        };
        let mut q: VecDeque<u32> = VecDeque::from(vec![0, 1]);
        // Worker 1: a GPU but a CPU-only build; worker 2: a CUDA build.
        let mut cuda = cap(2, 1, vec![0]);
        cuda.cuda_build = true;
        let mut w = vec![cap(1, 4, vec![0]), cuda];
        let a = assign(
            &mut q,
            |t| if t == 0 { train.clone() } else { res(1, 1) },
            &mut w,
        );
        // The Candle task on the CUDA build; the command step's GPU task on the other.
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].task, a[0].worker), (0, WorkerId(2)));
        assert_eq!((a[1].task, a[1].worker), (1, WorkerId(1)));
        assert!(!w[0].could_ever_fit(&train));
    }

    /// A task that may run for an hour goes only to a worker whose job has an hour (and the
    /// margin for its results) left; tasks without a limit go anywhere.
    #[test]
    fn a_task_goes_only_to_a_worker_with_time_for_it() {
        let hour = ResourceSpec {
            time_limit_s: Some(3600),
            ..res(1, 0)
        };
        let mut ending = cap(1, 8, vec![]);
        ending.seconds_left = Some(3600 + END_MARGIN_S - 1);
        let mut fresh = cap(2, 1, vec![]);
        fresh.seconds_left = Some(4 * 3600);
        let mut q: VecDeque<u32> = VecDeque::from(vec![0, 1, 2]);
        let mut w = vec![ending, fresh];
        let a = assign(
            &mut q,
            |t| if t < 2 { hour.clone() } else { res(1, 0) },
            &mut w,
        );
        // Task 0 on the fresh job (one CPU); task 1 waits for it, though worker 1 is idle;
        // task 2 has no limit and takes worker 1.
        assert_eq!(
            a.iter().map(|x| (x.task, x.worker)).collect::<Vec<_>>(),
            vec![(0, WorkerId(2)), (2, WorkerId(1))]
        );
        assert_eq!(q, VecDeque::from(vec![1]));
        assert!(
            w[0].could_ever_fit(&hour),
            "a new allocation would have the time"
        );
        assert!(time_fits(None, Some(3600)) && time_fits(Some(10), None));
        assert!(time_fits(Some(3600 + END_MARGIN_S), Some(3600)));
    }
}
