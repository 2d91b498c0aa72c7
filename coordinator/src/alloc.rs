//! Automatic allocation: when tasks wait and no worker takes them, submit a batch job that
//! starts workers; workers end themselves when idle, which releases the allocation. Many
//! tasks share one allocation (never one job per task). The decision is a plain function of
//! what the engine and the batch system report ([`decide`]); [`Allocator::run`] is the loop
//! that asks them, acts through a [`Backend`] (Slurm in `slurm.rs`) and records every
//! allocation in SQLite for `plateflow alloc list`.

use crate::db::{AllocationRow, Db};
use crate::engine::{EngineHandle, Event};
use crate::monitor::{AllocView, Snapshot};
use std::time::{Duration, Instant};

/// What the batch system says of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Queued, or held; `reason` as the batch system gives it (Slurm's `%r`: `Priority`,
    /// `Resources`, `PartitionTimeLimit`, `JobHeldUser`, …).
    Pending {
        reason: String,
    },
    Running,
    /// No longer in the queue: completed, cancelled, timed out, pre-empted or failed.
    Gone,
}

/// The batch system, as the allocator needs it.
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Submits one allocation of workers; returns the job id.
    fn submit(&self) -> impl std::future::Future<Output = anyhow::Result<String>> + Send;
    /// The state of each of `ids` (jobs absent from the queue are `Gone`).
    fn states(
        &self,
        ids: &[String],
    ) -> impl std::future::Future<Output = anyhow::Result<Vec<JobState>>> + Send;
    fn cancel(&self, ids: &[String]) -> impl std::future::Future<Output = ()> + Send;
    /// Where a job's own output is written, for messages.
    fn output_of(&self, id: &str) -> String;
    /// How each of `ids` (ended jobs) ended, where the batch system can say.
    fn how_ended(
        &self,
        ids: &[String],
    ) -> impl std::future::Future<Output = Vec<Option<Ending>>> + Send;
}

/// How a batch job ended, as the batch system tells it (Slurm: the job's final state and
/// exit code, from `sacct` or `squeue` while it is still listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// `COMPLETED`, `OUT_OF_MEMORY`, `NODE_FAIL`, `TIMEOUT`, `FAILED`, `CANCELLED by 1000`, …
    pub state: String,
    /// `exit:signal`, e.g. `0:0` or `1:0`; empty when unknown.
    pub exit_code: String,
}

/// What an allocation's ending tells the operator, and whether it is a failure to warn of:
/// a job killed for memory or by a failed node took its workers' running tasks with it, and
/// without this they read only as "worker lost". `None`: nothing beyond the usual note.
pub fn ending_note(e: &Ending, output: &str) -> Option<(String, bool)> {
    let state = e.state.split_whitespace().next().unwrap_or("");
    let said = match state {
        "OUT_OF_MEMORY" => (
            "Slurm killed it for using more memory than it was given (OUT_OF_MEMORY): raise \
             --slurm-mem, or give the memory-hungry steps `resources: {memory: ...}`"
                .to_string(),
            true,
        ),
        "NODE_FAIL" => ("its node failed (NODE_FAIL)".to_string(), true),
        "BOOT_FAIL" => ("its node failed to start (BOOT_FAIL)".to_string(), true),
        "FAILED" => (
            format!(
                "its job script failed (exit code {}): see {output}",
                if e.exit_code.is_empty() {
                    "unknown"
                } else {
                    &e.exit_code
                }
            ),
            true,
        ),
        "TIMEOUT" => (
            "it reached its time limit (--slurm-time); tasks it was running were handed back"
                .to_string(),
            false,
        ),
        "PREEMPTED" => (
            "Slurm pre-empted it for another job (PREEMPTED)".to_string(),
            false,
        ),
        "DEADLINE" => ("it passed its deadline (DEADLINE)".to_string(), false),
        "CANCELLED" if e.state != "CANCELLED" => {
            (format!("{} (scancel)", e.state.to_lowercase()), false)
        }
        _ => return None,
    };
    Some(said)
}

/// Limits set by the operator.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Allocations alive at once (pending or running).
    pub max_allocations: usize,
    /// How often to look.
    pub interval: Duration,
    /// Give a running allocation this long for its workers to connect before another is
    /// submitted for the same backlog.
    pub startup_grace: Duration,
}

/// One allocation as the allocator tracks it.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub id: String,
    pub state: JobState,
    pub submitted: Instant,
    pub submitted_epoch: f64,
    pub running_since: Option<Instant>,
    /// Workers of this allocation connected now, and ever.
    pub workers_now: u32,
    pub workers_seen: u32,
    /// Whether any of its workers was ever given a task.
    pub did_work: bool,
    pub note: String,
    /// Its end is in the database: nothing more to write.
    pub end_recorded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Submit,
    Wait(String),
}

/// Whether to submit another allocation now.
/// - nothing waits, or the backlog appeared only this round (the scheduler may still place
///   it on connected workers): wait;
/// - an allocation is pending, or running but its workers have not connected yet (within
///   the grace period): it will take the backlog, wait;
/// - as many allocations alive as allowed, or backing off after failed submissions: wait.
pub fn decide(
    backlog_rounds: u32,
    allocs: &[Allocation],
    limits: &Limits,
    backoff_until: Option<Instant>,
    now: Instant,
) -> Decision {
    if backlog_rounds < 2 {
        return Decision::Wait("no lasting backlog".into());
    }
    if let Some(t) = backoff_until.filter(|&t| t > now) {
        return Decision::Wait(format!(
            "backing off after a failed submission ({} s left)",
            (t - now).as_secs()
        ));
    }
    let alive: Vec<&Allocation> = allocs
        .iter()
        .filter(|a| a.state != JobState::Gone)
        .collect();
    if let Some((a, reason)) = alive.iter().find_map(|a| match &a.state {
        JobState::Pending { reason } => Some((a, reason)),
        _ => None,
    }) {
        return Decision::Wait(format!("allocation {} is pending ({reason})", a.id));
    }
    if let Some(a) = alive.iter().find(|a| {
        a.workers_seen == 0
            && a.running_since
                .is_some_and(|t| now.duration_since(t) < limits.startup_grace)
    }) {
        return Decision::Wait(format!("allocation {} is starting its workers", a.id));
    }
    if alive.len() >= limits.max_allocations {
        return Decision::Wait(format!(
            "{} allocations alive, the limit (--slurm-max-allocations)",
            alive.len()
        ));
    }
    Decision::Submit
}

/// The allocations of `backend` in the database that never ended: tracked again, as pending
/// until the batch system says otherwise.
pub fn adopt(rows: &[AllocationRow], backend: &str) -> Vec<Allocation> {
    let now = Instant::now();
    rows.iter()
        .filter(|r| r.ended.is_none() && r.backend == backend && !r.id.starts_with("failed-"))
        .map(|r| Allocation {
            id: r.id.clone(),
            state: JobState::Pending {
                reason: "submitted before the coordinator restarted".into(),
            },
            submitted: now,
            submitted_epoch: r.submitted,
            running_since: None,
            workers_now: 0,
            workers_seen: r.workers,
            did_work: r.workers > 0,
            note: "taken over after a coordinator restart".into(),
            end_recorded: false,
        })
        .collect()
}

/// Why an allocation that has ended did no work, if it did none: its workers never
/// connected (the worker binary missing on the compute nodes, a wrong token, the coordinator
/// unreachable from them), or connected and were given nothing (the waiting tasks ask for
/// more than the allocation offers). Each such one in a row backs submission off further;
/// [`GIVE_UP_AFTER`] in a row stop it, instead of a new job every few seconds all night.
pub fn wasted(a: &Allocation) -> Option<&'static str> {
    if a.workers_seen == 0 {
        Some("ended before any worker connected (check its Slurm output)")
    } else if !a.did_work {
        Some(
            "its workers connected but were given no task: the waiting tasks ask for more \
             than one allocation offers (compare the steps' `resources:` with --slurm-cpus, \
             --slurm-gpus and --slurm-mem)",
        )
    } else {
        None
    }
}

/// Allocations in a row that did no work (see [`wasted`]) after which none is submitted.
pub const GIVE_UP_AFTER: u32 = 5;

/// Backoff after `failures` consecutive failed submissions: 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << failures.min(6).saturating_sub(1)))
        .min(Duration::from_secs(300))
}

fn state_name(a: &Allocation) -> &'static str {
    match a.state {
        JobState::Pending { .. } => "pending",
        JobState::Running => "running",
        JobState::Gone => "ended",
    }
}

pub struct Allocator<B: Backend> {
    pub backend: B,
    pub limits: Limits,
    pub engine: EngineHandle,
    pub db: Db,
    allocs: Vec<Allocation>,
    backlog_rounds: u32,
    failures: u32,
    /// Allocations in a row that ended without doing any work.
    wasted_in_row: u32,
    /// Set once [`GIVE_UP_AFTER`] allocations in a row were wasted: why none is submitted.
    gave_up: Option<String>,
    backoff_until: Option<Instant>,
    last_wait: String,
}

impl<B: Backend> Allocator<B> {
    pub fn new(backend: B, limits: Limits, engine: EngineHandle, db: Db) -> Self {
        // Jobs a coordinator before this one submitted and never saw end are taken over:
        // left alone, they ran untracked, were never cancelled, and their rows stayed
        // "pending" for ever.
        let allocs = match db.allocations() {
            Ok(rows) => adopt(&rows, backend.name()),
            Err(e) => {
                tracing::warn!("reading earlier allocations: {e:#}");
                Vec::new()
            }
        };
        if !allocs.is_empty() {
            let ids: Vec<&str> = allocs.iter().map(|a| a.id.as_str()).collect();
            tracing::info!(jobs = ?ids, "taking over the allocations of the coordinator before");
        }
        Allocator {
            backend,
            limits,
            engine,
            db,
            allocs,
            backlog_rounds: 0,
            failures: 0,
            wasted_in_row: 0,
            gave_up: None,
            backoff_until: None,
            last_wait: String::new(),
        }
    }

    /// Runs until `shutdown`; then cancels the allocations it still has.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.limits.interval);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.round().await {
                tracing::warn!("allocator: {e:#}");
            }
        }
        let alive: Vec<String> = self
            .allocs
            .iter()
            .filter(|a| a.state != JobState::Gone)
            .map(|a| a.id.clone())
            .collect();
        if !alive.is_empty() {
            tracing::info!(jobs = ?alive, "cancelling allocations at shutdown");
            self.backend.cancel(&alive).await;
            for a in self.allocs.iter_mut().filter(|a| a.state != JobState::Gone) {
                a.state = JobState::Gone;
                a.note = "cancelled at coordinator shutdown".into();
            }
            self.publish();
        }
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.engine.send(Event::Monitor { reply });
        let snap: Snapshot = rx.await?;
        self.refresh(&snap).await;
        self.backlog_rounds = if snap.queued > 0 {
            self.backlog_rounds + 1
        } else {
            0
        };
        let now = Instant::now();
        let decision = match &self.gave_up {
            Some(why) => Decision::Wait(why.clone()),
            None => decide(
                self.backlog_rounds,
                &self.allocs,
                &self.limits,
                self.backoff_until,
                now,
            ),
        };
        match decision {
            Decision::Submit => match self.backend.submit().await {
                Ok(id) => {
                    tracing::info!(job = %id, backlog = snap.queued, "submitted a worker allocation");
                    self.failures = 0;
                    self.backoff_until = None;
                    self.allocs.push(Allocation {
                        id,
                        state: JobState::Pending {
                            reason: "submitted".into(),
                        },
                        submitted: now,
                        submitted_epoch: Db::now(),
                        running_since: None,
                        workers_now: 0,
                        workers_seen: 0,
                        did_work: false,
                        note: format!("{} tasks waiting", snap.queued),
                        end_recorded: false,
                    });
                }
                Err(e) => {
                    self.failures += 1;
                    let wait = backoff(self.failures);
                    self.backoff_until = Some(now + wait);
                    tracing::warn!(
                        "submitting a worker allocation failed ({} in a row; next try in {wait:?}): {e:#}",
                        self.failures
                    );
                    self.allocs.push(Allocation {
                        // Unique across restarts (a count restarted at 1 overwrote old rows).
                        id: format!("failed-{:.0}", Db::now() * 1000.0),
                        state: JobState::Gone,
                        submitted: now,
                        submitted_epoch: Db::now(),
                        running_since: None,
                        workers_now: 0,
                        workers_seen: 0,
                        did_work: false,
                        note: format!("submission failed: {e:#}"),
                        end_recorded: false,
                    });
                }
            },
            Decision::Wait(why) => {
                if why != self.last_wait {
                    // A job held in the queue for a reason that may never clear (a time
                    // limit above the partition's, a QOS limit, a hold) is said, not only
                    // logged at debug: the run would otherwise wait in silence.
                    let stuck = self.allocs.iter().any(|a| {
                        matches!(&a.state, JobState::Pending { reason } if !pending_is_routine(reason))
                    });
                    if stuck {
                        tracing::warn!("allocator waits: {why}");
                    } else {
                        tracing::debug!("allocator waits: {why}");
                    }
                    self.last_wait = why;
                }
            }
        }
        self.publish();
        Ok(())
    }

    /// Job states from the batch system, worker counts from the engine. A failed query
    /// keeps the last known states (and is retried next round).
    async fn refresh(&mut self, snap: &Snapshot) {
        let mut ended = Vec::new();
        let ids: Vec<String> = self
            .allocs
            .iter()
            .filter(|a| a.state != JobState::Gone)
            .map(|a| a.id.clone())
            .collect();
        if !ids.is_empty() {
            match self.backend.states(&ids).await {
                Ok(states) => {
                    for (id, st) in ids.iter().zip(states) {
                        let a = self
                            .allocs
                            .iter_mut()
                            .find(|a| &a.id == id)
                            .expect("listed");
                        if st == JobState::Running && a.running_since.is_none() {
                            a.running_since = Some(Instant::now());
                        }
                        if let JobState::Pending { reason } = &st {
                            a.note = format!("pending: {reason}");
                        }
                        if st == JobState::Gone && a.state != JobState::Gone {
                            ended.push(a.id.clone());
                        }
                        a.state = st;
                    }
                }
                Err(e) => tracing::warn!("querying the batch system failed (will retry): {e:#}"),
            }
        }
        for a in &mut self.allocs {
            let mine = || snap.workers.iter().filter(|w| w.allocation == a.id);
            a.workers_now = mine().count() as u32;
            a.workers_seen = a.workers_seen.max(a.workers_now);
            a.did_work |= mine().any(|w| w.assigned > 0);
        }
        let endings = if ended.is_empty() {
            Vec::new()
        } else {
            self.backend.how_ended(&ended).await
        };
        for (i, id) in ended.into_iter().enumerate() {
            let a = self.allocs.iter_mut().find(|a| a.id == id).expect("listed");
            let told = endings
                .get(i)
                .cloned()
                .flatten()
                .and_then(|e| ending_note(&e, &self.backend.output_of(&id)));
            if let Some((note, failed)) = &told {
                if *failed {
                    tracing::warn!(job = %id, "allocation ended: {note}");
                } else {
                    tracing::info!(job = %id, "allocation ended: {note}");
                }
            }
            match wasted(a) {
                None => {
                    a.note = match &told {
                        Some((note, _)) => format!("ended: {note}"),
                        None => {
                            "ended (workers idle, time limit, pre-emption or cancellation)".into()
                        }
                    };
                    self.wasted_in_row = 0;
                }
                Some(why) => {
                    a.note = match &told {
                        Some((note, _)) => format!("{why}; {note}"),
                        None => why.into(),
                    };
                    self.wasted_in_row += 1;
                    let wait = backoff(self.wasted_in_row);
                    let until = Instant::now() + wait;
                    self.backoff_until = Some(self.backoff_until.map_or(until, |t| t.max(until)));
                    if self.wasted_in_row >= GIVE_UP_AFTER {
                        let stop = format!(
                            "{} allocations in a row did no work (the last: {why}); no more are \
                             submitted until the coordinator is restarted",
                            self.wasted_in_row
                        );
                        tracing::error!("allocator: {stop}");
                        a.note = stop.clone();
                        self.gave_up = Some(stop);
                    } else {
                        tracing::warn!(
                            job = %a.id,
                            "allocation {why}; {} in a row, the next in {wait:?} at the earliest",
                            self.wasted_in_row
                        );
                    }
                }
            }
        }
    }

    /// Tells the engine (for the status page and /metrics) and the database.
    fn publish(&mut self) {
        let views = self
            .allocs
            .iter()
            .map(|a| AllocView {
                id: a.id.clone(),
                state: state_name(a).into(),
                workers: a.workers_now,
            })
            .collect();
        self.engine.send(Event::Allocations(views));
        let backend = self.backend.name();
        // Ended allocations are written once, keeping their first end time.
        for a in self.allocs.iter_mut().filter(|a| !a.end_recorded) {
            let row = AllocationRow {
                id: a.id.clone(),
                backend: backend.into(),
                state: state_name(a).into(),
                submitted: a.submitted_epoch,
                ended: (a.state == JobState::Gone).then(Db::now),
                workers: a.workers_seen,
                note: a.note.clone(),
            };
            match self.db.save_allocation(&row) {
                Ok(()) => a.end_recorded = a.state == JobState::Gone,
                Err(e) => tracing::warn!("recording allocation {}: {e:#}", a.id),
            }
        }
        // Ended allocations stay in the database; in memory only the recent ones.
        if self.allocs.len() > 200 {
            self.allocs.retain(|a| a.state != JobState::Gone);
        }
    }
}

/// Whether a pending job's reason (Slurm's `%r`) is the queue's ordinary one (waiting its
/// turn or for nodes), not one that may never clear by itself.
fn pending_is_routine(reason: &str) -> bool {
    ["submitted", "Priority", "Resources", "None", "BeginTime"].contains(&reason)
}

/// `plateflow alloc list`: one line per allocation.
pub fn render_list(rows: &[AllocationRow]) -> String {
    if rows.is_empty() {
        return "no allocations recorded\n".into();
    }
    let mut out = format!(
        "{:<14} {:<8} {:<8} {:>7} {:>9}  note\n",
        "job", "backend", "state", "workers", "lasted"
    );
    for r in rows {
        let lasted = match r.ended {
            Some(e) => format!("{:.0} s", e - r.submitted),
            None => format!("{:.0} s+", Db::now() - r.submitted),
        };
        out.push_str(&format!(
            "{:<14} {:<8} {:<8} {:>7} {:>9}  {}\n",
            r.id, r.backend, r.state, r.workers, lasted, r.note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_allocations: 2,
            interval: Duration::from_secs(1),
            startup_grace: Duration::from_secs(60),
        }
    }

    fn alloc(id: &str, state: JobState, workers_seen: u32, running_for: Option<u64>) -> Allocation {
        let now = Instant::now();
        Allocation {
            id: id.into(),
            state,
            submitted: now,
            submitted_epoch: 0.0,
            running_since: running_for.map(|s| now - Duration::from_secs(s)),
            workers_now: workers_seen,
            workers_seen,
            did_work: workers_seen > 0,
            note: String::new(),
            end_recorded: false,
        }
    }

    fn pending(reason: &str) -> JobState {
        JobState::Pending {
            reason: reason.into(),
        }
    }

    /// A job killed for memory, a failed node or a failed script is said as such, with what
    /// to change; an ordinary end adds nothing.
    #[test]
    fn how_a_job_ended_is_said() {
        let ended = |state: &str, exit: &str| Ending {
            state: state.into(),
            exit_code: exit.into(),
        };
        let (note, failed) = ending_note(&ended("OUT_OF_MEMORY", "0:125"), "o").unwrap();
        assert!(failed && note.contains("--slurm-mem"), "{note}");
        let (note, failed) =
            ending_note(&ended("FAILED", "127:0"), "/s/alloc/slurm-7.out").unwrap();
        assert!(
            failed && note.contains("exit code 127:0") && note.contains("/s/alloc/slurm-7.out")
        );
        assert!(ending_note(&ended("NODE_FAIL", ""), "o").unwrap().1);
        let (note, failed) = ending_note(&ended("TIMEOUT", "0:0"), "o").unwrap();
        assert!(!failed && note.contains("--slurm-time"));
        assert_eq!(
            ending_note(&ended("CANCELLED by 1000", "0:15"), "o").map(|n| n.0),
            Some("cancelled by 1000 (scancel)".into())
        );
        // Ended as workers do when idle, or plainly cancelled (squeue's state, without who
        // cancelled it): nothing to add.
        assert_eq!(ending_note(&ended("COMPLETED", "0:0"), "o"), None);
        assert_eq!(ending_note(&ended("CANCELLED", "0:15"), "o"), None);
    }

    /// Allocations a killed coordinator left unended are tracked again; ended ones, failed
    /// submissions and another backend's are not.
    #[test]
    fn a_restarted_coordinator_takes_over_unended_allocations() {
        let row = |id: &str, backend: &str, ended: Option<f64>| AllocationRow {
            id: id.into(),
            backend: backend.into(),
            state: "pending".into(),
            submitted: 1.0,
            ended,
            workers: 0,
            note: String::new(),
        };
        let rows = [
            row("41", "slurm", None),
            row("40", "slurm", Some(2.0)),
            row("failed-3", "slurm", None),
            row("7", "pbs", None),
        ];
        let adopted = adopt(&rows, "slurm");
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].id, "41");
        assert!(matches!(adopted[0].state, JobState::Pending { .. }));
    }

    /// An allocation whose workers never came, or came and were given nothing, did no work;
    /// one whose workers ran tasks did.
    #[test]
    fn allocations_that_did_no_work_are_told_apart() {
        let never = alloc("1", JobState::Gone, 0, Some(5));
        assert!(wasted(&never)
            .unwrap()
            .contains("before any worker connected"));
        let idle = Allocation {
            did_work: false,
            ..alloc("2", JobState::Gone, 2, Some(90))
        };
        assert!(wasted(&idle).unwrap().contains("--slurm-gpus"));
        assert_eq!(wasted(&alloc("3", JobState::Gone, 2, Some(90))), None);
    }

    /// A pending job's reason is in the wait; the queue's routine reasons are told from
    /// those that may never clear.
    #[test]
    fn a_pending_jobs_reason_is_said() {
        let now = Instant::now();
        let held = [alloc("7", pending("PartitionTimeLimit"), 0, None)];
        let Decision::Wait(why) = decide(9, &held, &limits(), None, now) else {
            panic!("submitted beside a pending job");
        };
        assert_eq!(why, "allocation 7 is pending (PartitionTimeLimit)");
        assert!(!pending_is_routine("PartitionTimeLimit"));
        assert!(pending_is_routine("Priority"));
    }

    #[test]
    fn submits_only_for_a_lasting_backlog() {
        let now = Instant::now();
        assert!(matches!(
            decide(0, &[], &limits(), None, now),
            Decision::Wait(_)
        ));
        assert!(matches!(
            decide(1, &[], &limits(), None, now),
            Decision::Wait(_)
        ));
        assert_eq!(decide(2, &[], &limits(), None, now), Decision::Submit);
    }

    #[test]
    fn one_allocation_serves_the_backlog_while_it_starts() {
        let now = Instant::now();
        let pending = [alloc("1", pending("Priority"), 0, None)];
        assert!(
            matches!(decide(9, &pending, &limits(), None, now), Decision::Wait(w) if w.contains("pending"))
        );
        let starting = [alloc("1", JobState::Running, 0, Some(5))];
        assert!(
            matches!(decide(9, &starting, &limits(), None, now), Decision::Wait(w) if w.contains("starting"))
        );
        // Its workers are busy and tasks still wait: a second one.
        let busy = [alloc("1", JobState::Running, 1, Some(5))];
        assert_eq!(decide(9, &busy, &limits(), None, now), Decision::Submit);
        // Started long ago but no worker ever came: do not wait for ever.
        let stuck = [alloc("1", JobState::Running, 0, Some(600))];
        assert_eq!(decide(9, &stuck, &limits(), None, now), Decision::Submit);
    }

    #[test]
    fn respects_the_limit_and_backs_off_after_failures() {
        let now = Instant::now();
        let two = [
            alloc("1", JobState::Running, 1, Some(5)),
            alloc("2", JobState::Running, 1, Some(5)),
        ];
        assert!(
            matches!(decide(9, &two, &limits(), None, now), Decision::Wait(w) if w.contains("limit"))
        );
        let ended = [
            alloc("1", JobState::Gone, 1, Some(5)),
            alloc("2", JobState::Running, 1, Some(5)),
        ];
        assert_eq!(decide(9, &ended, &limits(), None, now), Decision::Submit);
        let later = Some(now + Duration::from_secs(30));
        assert!(
            matches!(decide(9, &[], &limits(), later, now), Decision::Wait(w) if w.contains("backing off"))
        );
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(20), Duration::from_secs(160));
    }
}
