//! The coordinator's engine: one task that owns all run and worker state and reacts to events
//! (a worker said hello, sent results, went silent; a pipeline was submitted; a timer ticked).
//! gRPC handlers only translate messages into [`Event`]s; decisions live here and in
//! [`crate::scheduler`]; what the engine sends out (to workers, to the planner) goes through
//! [`Comm`], so [`Engine::react`] can be driven event by event in tests. Finished tasks are
//! journaled in SQLite before they are acknowledged, so a killed coordinator resumes where it
//! stopped.

use crate::comm::{Comm, LiveComm};
use crate::db::{CachedAction, Db, TaskRecord};
use crate::key::{decide, refine_plate_map_reasons, summarise, CacheDecision, CacheKey, Reason};
use crate::lockfile::{self, LockEntry, LockFile};
use crate::plan::TaskIdx;
use crate::run::PreparedRun;
use crate::scheduler::{assign, time_fits, Capacity, WorkerId};
use plateflow_proto::v1::{
    self as pb, coordinator_message, worker_message, CoordinatorMessage, RunStatus, StepProgress,
    TaskAssignments, TaskSpec, TaskStatus, Welcome, WorkerHello,
};
use plateflow_store::{BlobState, BlobStore, Digest};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub type WorkerTx = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;
/// Answers a submission with (run id, task count) or the validation errors.
pub type SubmitReply = oneshot::Sender<Result<(u64, u64), SubmitError>>;

/// Why a submitted run did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// The pipeline or its data is refused: the user's to fix.
    Refused(String),
    /// The coordinator could not record the run (its state directory's disk full): not the
    /// pipeline's fault.
    State(String),
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Refused(m) | SubmitError::State(m) => f.write_str(m),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Holds `plateflow.db` and `store/`.
    pub state_dir: PathBuf,
    pub heartbeat: Duration,
    /// A worker silent for this long is declared lost and its tasks re-queued.
    pub lease: Duration,
    pub hash_threads: usize,
    /// Resume runs a killed coordinator left unfinished (a long-lived coordinator does; a
    /// one-shot `plateflow run` marks them interrupted instead and runs what it was given).
    pub resume_unfinished: bool,
    /// Pipelines, their data and their results must lie under these (canonical) directories;
    /// empty: anywhere (`plateflow run`, a single user's machine).
    pub allowed_roots: Vec<PathBuf>,
}

impl EngineConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            heartbeat: Duration::from_millis(1000),
            lease: Duration::from_secs(10),
            hash_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            resume_unfinished: true,
            allowed_roots: Vec::new(),
        }
    }
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("plateflow.db")
    }
    pub fn store_dir(&self) -> PathBuf {
        self.state_dir.join("store")
    }
}

pub enum Event {
    WorkerHello {
        hello: WorkerHello,
        tx: WorkerTx,
        reply: oneshot::Sender<WorkerId>,
    },
    WorkerMsg {
        worker: WorkerId,
        body: worker_message::Body,
    },
    WorkerGone {
        worker: WorkerId,
        why: String,
    },
    Submit {
        path: PathBuf,
        yaml: String,
        force: Vec<String>,
        reply: SubmitReply,
    },
    Prepared {
        run_id: u64,
        result: Box<Result<PreparedRun, String>>,
    },
    Status {
        run_id: u64,
        with_tasks: bool,
        reply: oneshot::Sender<Vec<RunStatus>>,
    },
    Watch {
        run_id: u64,
        tx: mpsc::Sender<Result<RunStatus, tonic::Status>>,
    },
    /// A snapshot for the monitoring endpoints and the allocator.
    Monitor {
        reply: oneshot::Sender<crate::monitor::Snapshot>,
    },
    /// The allocator's account of its batch jobs.
    Allocations(Vec<crate::monitor::AllocView>),
    /// The clock: leases are judged against this instant (tests pass one of their own).
    Tick(Instant),
}

/// What the rest of the coordinator holds: a way in, and the pieces blob transfer needs.
#[derive(Clone)]
pub struct EngineHandle {
    pub events: mpsc::UnboundedSender<Event>,
    pub store: BlobStore,
    /// Input files the coordinator can serve by digest (images, step files, plate maps).
    pub inputs: Arc<RwLock<FxHashMap<Digest, PathBuf>>>,
    pub config: EngineConfig,
    /// Held for the engine's life: one engine per state directory.
    _state_lock: Arc<std::fs::File>,
}

impl EngineHandle {
    pub fn send(&self, ev: Event) {
        let _ = self.events.send(ev);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskState {
    Waiting(u32),
    Queued,
    /// On `worker`, as attempt `attempt`, holding the GPUs `gpus` (returned when it ends).
    Running {
        worker: WorkerId,
        attempt: u32,
        gpus: Vec<u32>,
    },
    Done {
        ran: bool,
    },
    Failed,
    Skipped,
}

impl TaskState {
    /// Running on `worker` (as `attempt`, when given): the only state a result may end.
    fn is_running_on(&self, worker: WorkerId, attempt: Option<u32>) -> bool {
        matches!(self, TaskState::Running { worker: w, attempt: a, .. }
            if *w == worker && attempt.is_none_or(|x| x == *a))
    }

    fn is_final(&self) -> bool {
        matches!(
            self,
            TaskState::Done { .. } | TaskState::Failed | TaskState::Skipped
        )
    }
    fn name(&self) -> &'static str {
        match self {
            TaskState::Waiting(_) => "waiting",
            TaskState::Queued => "queued",
            TaskState::Running { .. } => "running",
            TaskState::Done { ran: true } => "done",
            TaskState::Done { ran: false } => "cached",
            TaskState::Failed => "failed",
            TaskState::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct StepCounts {
    total: u64,
    done: u64,
    cached: u64,
    running: u64,
    failed: u64,
}

struct TaskRt {
    state: TaskState,
    attempt: u32,
    key: Option<CacheKey>,
    outputs: Vec<(String, Digest)>,
    reason: String,
    error: String,
    worker_name: String,
    /// When it last became ready to run, for the dispatch latency.
    queued_at: Option<Instant>,
    /// The latest progress message of the running attempt.
    progress: String,
    /// Attempts ended by their worker stopping on a signal (a Goodbye): they do not count
    /// against `retries`, up to [`FREE_ATTEMPTS`].
    free_attempts: u32,
}

/// Attempts per task that a stopping worker may hand back without using up a retry: enough
/// for repeated pre-emption, bounded so a task that makes its worker stop cannot loop forever.
const FREE_ATTEMPTS: u32 = 3;

struct ActiveRun {
    prep: PreparedRun,
    tasks: Vec<TaskRt>,
    queue: VecDeque<TaskIdx>,
    counts: Vec<StepCounts>,
    finished: usize,
    started: Instant,
    prev_lock: Option<Option<LockFile>>,
    /// Steps already reported as fitting no connected worker (said once, not every round).
    unfit_reported: std::collections::BTreeSet<usize>,
    /// Keys this run already ran before a coordinator restart: `--force` does not force
    /// them again.
    done_before_restart: std::collections::HashSet<String>,
}

impl ActiveRun {
    fn set_state(&mut self, t: TaskIdx, new: TaskState) {
        let step = self.prep.plan.tasks[t as usize].step as usize;
        let c = &mut self.counts[step];
        let old = std::mem::replace(&mut self.tasks[t as usize].state, new.clone());
        match old {
            TaskState::Running { .. } => c.running -= 1,
            TaskState::Done { ran: true } => c.done -= 1,
            TaskState::Done { ran: false } => c.cached -= 1,
            TaskState::Failed | TaskState::Skipped => c.failed -= 1,
            _ => {}
        }
        if old.is_final() {
            self.finished -= 1;
        }
        match new {
            TaskState::Running { .. } => c.running += 1,
            TaskState::Done { ran: true } => c.done += 1,
            TaskState::Done { ran: false } => c.cached += 1,
            TaskState::Failed | TaskState::Skipped => c.failed += 1,
            _ => {}
        }
        if new.is_final() {
            self.finished += 1;
        }
        if new == TaskState::Queued {
            self.tasks[t as usize].queued_at = Some(Instant::now());
        }
    }

    fn prev_lock(&mut self) -> Option<&LockFile> {
        if self.prev_lock.is_none() {
            let path = lockfile::lock_path(&self.prep.pipeline.file);
            let lock = lockfile::read(&path).unwrap_or_else(|e| {
                tracing::warn!("{e:#}");
                None
            });
            self.prev_lock = Some(lock);
        }
        self.prev_lock.as_ref().and_then(|l| l.as_ref())
    }

    /// The run's status. It reads "running" until the run is wrapped up (lock file written,
    /// journal closed): only then may a watcher take it as final and exit.
    fn status(&self, with_tasks: bool, workers: u32, wrapped_up: bool) -> RunStatus {
        let failed = self.counts.iter().any(|c| c.failed > 0);
        let state = if !wrapped_up {
            "running"
        } else if failed {
            "failed"
        } else {
            "succeeded"
        };
        RunStatus {
            error: String::new(),
            run_id: self.prep.id,
            pipeline: self.prep.pipeline.file.display().to_string(),
            state: state.into(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            steps: self
                .prep
                .pipeline
                .steps
                .iter()
                .zip(&self.counts)
                .enumerate()
                .map(|(i, (s, c))| StepProgress {
                    step: s.name.clone(),
                    total: c.total,
                    done: c.done,
                    cached: c.cached,
                    running: c.running,
                    failed: c.failed,
                    note: if c.running > 0 {
                        self.step_note(i)
                    } else {
                        String::new()
                    },
                })
                .collect(),
            tasks: if with_tasks {
                (0..self.tasks.len() as TaskIdx)
                    .filter(|&t| {
                        !matches!(self.tasks[t as usize].state, TaskState::Done { ran: false })
                    })
                    .map(|t| self.task_status(t))
                    .collect()
            } else {
                // Failures are always included: they are what a person needs to see.
                (0..self.tasks.len() as TaskIdx)
                    .filter(|&t| self.tasks[t as usize].state == TaskState::Failed)
                    .map(|t| self.task_status(t))
                    .collect()
            },
            workers,
        }
    }

    fn task_status(&self, t: TaskIdx) -> TaskStatus {
        let rt = &self.tasks[t as usize];
        TaskStatus {
            label: self.prep.label(t),
            state: rt.state.name().into(),
            attempts: rt.attempt,
            worker: rt.worker_name.clone(),
            error: rt.error.clone(),
            reason: rt.reason.clone(),
            progress: if matches!(rt.state, TaskState::Running { .. }) {
                rt.progress.clone()
            } else {
                String::new()
            },
        }
    }

    /// The progress message of one running task of step `step` (with its label when the
    /// step has several tasks).
    fn step_note(&self, step: usize) -> String {
        let several = self.counts[step].total > 1;
        self.tasks
            .iter()
            .enumerate()
            .find(|(t, rt)| {
                matches!(rt.state, TaskState::Running { .. })
                    && !rt.progress.is_empty()
                    && self.prep.plan.tasks[*t].step as usize == step
            })
            .map(|(t, rt)| {
                if several {
                    format!("{}: {}", self.prep.label(t as TaskIdx), rt.progress)
                } else {
                    rt.progress.clone()
                }
            })
            .unwrap_or_default()
    }
}

struct WorkerRt {
    name: String,
    capacity: Capacity,
    last_seen: Instant,
    running: HashSet<TaskIdx>,
    /// Tasks ever given to it (the allocator tells allocations that did work from idle ones).
    assigned: u64,
    /// The batch allocation (Slurm job) it runs in, if any.
    allocation: String,
    /// When its batch job ends (by this process's clock: the worker says how long it has).
    ends_at: Option<Instant>,
}

pub struct Engine {
    cfg: EngineConfig,
    db: Db,
    store: BlobStore,
    inputs: Arc<RwLock<FxHashMap<Digest, PathBuf>>>,
    actions: FxHashMap<String, CachedAction>,
    /// The action cache is read on a thread while the first pipeline is being planned.
    actions_loader:
        Option<std::thread::JoinHandle<anyhow::Result<FxHashMap<String, CachedAction>>>>,
    journal: Vec<(String, String, CachedAction)>,
    /// The workers whose results are in `journal`, told once it is on disk ([`pb::ResultsSaved`]).
    journal_acks: Vec<(WorkerId, pb::TaskRef)>,
    /// The last journal write failed (said once, not on every batch).
    journal_failing: bool,
    workers: BTreeMap<WorkerId, WorkerRt>,
    next_worker: u64,
    run: Option<ActiveRun>,
    waiting_runs: VecDeque<PreparedRun>,
    submit_replies: HashMap<u64, SubmitReply>,
    watchers: Vec<(u64, mpsc::Sender<Result<RunStatus, tonic::Status>>)>,
    finished_runs: BTreeMap<u64, RunStatus>,
    /// Everything sent out of the event loop: to workers, to the planner.
    comm: Box<dyn Comm>,
    last_tick: Instant,
    /// Ready-to-assigned latency of every dispatched task, for `/metrics`.
    dispatch: crate::monitor::Histogram,
    /// The allocator's latest account of its batch jobs, for the monitoring page.
    allocations: Vec<crate::monitor::AllocView>,
}

/// Task ids on the wire carry the run, so results from an older run are never mistaken.
fn wire_id(run: u64, t: TaskIdx) -> u64 {
    (run << 32) | t as u64
}

impl Engine {
    /// Opens the state directory, resumes unfinished runs, and starts the engine task.
    pub fn start(cfg: EngineConfig) -> anyhow::Result<EngineHandle> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let state_lock = lock_state_dir(&cfg.state_dir)?;
        let mut db = Db::open(&cfg.db_path())?;
        let store = BlobStore::open(cfg.store_dir())?;
        let db_path = cfg.db_path();
        let actions_loader = std::thread::spawn(move || {
            let t0 = Instant::now();
            let actions = Db::open(&db_path)?.load_action_cache()?;
            tracing::info!(entries = actions.len(), took = ?t0.elapsed(), "action cache loaded");
            Ok(actions)
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = EngineHandle {
            events: tx.clone(),
            store: store.clone(),
            inputs: Arc::default(),
            config: cfg.clone(),
            _state_lock: Arc::new(state_lock),
        };
        let unfinished = if cfg.resume_unfinished {
            db.unfinished_runs()?
        } else {
            db.interrupt_unfinished_runs()?;
            Vec::new()
        };
        db.drop_done_keys_of_ended_runs()?;
        let comm = Box::new(LiveComm {
            workers: HashMap::new(),
            events: tx.clone(),
            db_path: cfg.db_path(),
            store: store.clone(),
            hash_threads: cfg.hash_threads,
            allowed_roots: cfg.allowed_roots.clone(),
        });
        let mut engine = Engine::assemble(cfg.clone(), db, store, comm);
        engine.inputs = handle.inputs.clone();
        engine.actions_loader = Some(actions_loader);
        for r in unfinished {
            tracing::info!(run = r.id, pipeline = %r.pipeline, "resuming run left unfinished");
            engine
                .comm
                .plan(r.id, PathBuf::from(r.pipeline), r.yaml, r.force);
        }
        let ticker = tx.clone();
        let period = (cfg.heartbeat / 4).max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(period);
            loop {
                iv.tick().await;
                if ticker.send(Event::Tick(Instant::now())).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(engine.event_loop(rx));
        Ok(handle)
    }

    /// An engine that sends through `comm` and reads the action cache at once: for driving
    /// it event by event with [`Engine::react`] (tests, benchmarks).
    pub fn with_comm(cfg: EngineConfig, comm: Box<dyn Comm>) -> anyhow::Result<Engine> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let db = Db::open(&cfg.db_path())?;
        let store = BlobStore::open(cfg.store_dir())?;
        let actions = db.load_action_cache()?;
        let mut engine = Engine::assemble(cfg, db, store, comm);
        engine.actions = actions;
        Ok(engine)
    }

    /// An engine with no workers, runs or cached actions yet.
    fn assemble(cfg: EngineConfig, db: Db, store: BlobStore, comm: Box<dyn Comm>) -> Engine {
        Engine {
            cfg,
            db,
            store,
            inputs: Arc::default(),
            actions: FxHashMap::default(),
            actions_loader: None,
            journal: Vec::new(),
            journal_acks: Vec::new(),
            journal_failing: false,
            workers: BTreeMap::new(),
            next_worker: 1,
            run: None,
            waiting_runs: VecDeque::new(),
            submit_replies: HashMap::new(),
            watchers: Vec::new(),
            finished_runs: BTreeMap::new(),
            dispatch: Default::default(),
            allocations: Vec::new(),
            comm,
            last_tick: Instant::now(),
        }
    }

    async fn event_loop(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        while let Some(ev) = rx.recv().await {
            self.handle(ev);
            // Drain what is already queued before scheduling once.
            while let Ok(ev) = rx.try_recv() {
                self.handle(ev);
            }
            self.after_events();
        }
    }

    /// One event and everything it sets off: the reaction the event loop has to each batch.
    pub fn react(&mut self, ev: Event) {
        self.handle(ev);
        self.after_events();
    }

    /// After a batch of events: journal what finished, place what is ready, wrap up the run.
    fn after_events(&mut self) {
        self.flush_journal();
        self.schedule();
        self.maybe_finish_run();
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::WorkerHello { hello, tx, reply } => self.on_worker_hello(hello, tx, reply),
            Event::WorkerMsg { worker, body } => self.on_worker_msg(worker, body),
            Event::WorkerGone { worker, why } => self.on_worker_gone(worker, &why),
            Event::Submit {
                path,
                yaml,
                force,
                reply,
            } => match self
                .db
                .create_run(&path.display().to_string(), &yaml, &force)
            {
                Ok(id) => {
                    self.submit_replies.insert(id, reply);
                    self.comm.plan(id, path, yaml, force);
                }
                Err(e) => {
                    let _ = reply.send(Err(SubmitError::State(format!(
                        "cannot record the run in {}: {e:#} (if the disk is full, free space there)",
                        self.cfg.db_path().display()
                    ))));
                }
            },
            Event::Prepared { run_id, result } => self.on_prepared(run_id, *result),
            Event::Status {
                run_id,
                with_tasks,
                reply,
            } => {
                // A task reported done is journaled first: a coordinator killed right after
                // this answer does not run it again.
                self.flush_journal();
                let _ = reply.send(self.status(run_id, with_tasks));
            }
            Event::Watch { run_id, tx } => {
                self.flush_journal();
                if let Some(done) = self.finished_runs.get(&run_id) {
                    let _ = tx.try_send(Ok(done.clone()));
                } else {
                    self.watchers.push((run_id, tx));
                }
            }
            Event::Monitor { reply } => {
                let _ = reply.send(self.monitor_snapshot());
            }
            Event::Allocations(a) => self.allocations = a,
            Event::Tick(now) => self.on_tick(now),
        }
    }

    /// Runs (newest first, at most 20), workers, failed tasks of the newest run, latencies.
    fn monitor_snapshot(&self) -> crate::monitor::Snapshot {
        use crate::monitor::{FailedTask, Snapshot, WorkerView};
        let mut runs = self.status(0, false);
        runs.sort_by_key(|r| std::cmp::Reverse(r.run_id));
        runs.truncate(20);
        let mut failed = Vec::new();
        if let Some(run) = &self.run {
            for (i, rt) in run.tasks.iter().enumerate() {
                if rt.state == TaskState::Failed || (!rt.error.is_empty() && !rt.state.is_final()) {
                    failed.push(FailedTask {
                        run_id: run.prep.id,
                        label: run.prep.label(i as TaskIdx),
                        attempts: rt.attempt,
                        error: rt.error.clone(),
                    });
                }
            }
        } else if let Some(last) = runs.first() {
            for t in self.db.run_tasks(last.run_id).unwrap_or_default() {
                if t.state == "failed" {
                    failed.push(FailedTask {
                        run_id: last.run_id,
                        label: t.label,
                        attempts: t.attempts,
                        error: t.error,
                    });
                }
            }
        }
        Snapshot {
            runs,
            workers: self
                .workers
                .values()
                .map(|w| WorkerView {
                    name: w.name.clone(),
                    cpus: w.capacity.total_cpus,
                    gpus: w.capacity.total_gpus,
                    running: w.running.len(),
                    assigned: w.assigned,
                    last_seen_s: w.last_seen.elapsed().as_secs_f64(),
                    allocation: w.allocation.clone(),
                })
                .collect(),
            queued: self.run.as_ref().map_or(0, |r| r.queue.len() as u64)
                + self
                    .waiting_runs
                    .iter()
                    .map(|p| p.plan.len() as u64)
                    .sum::<u64>(),
            largest_request: self
                .run
                .as_ref()
                .and_then(|r| {
                    r.queue
                        .iter()
                        .map(|&t| r.prep.step_of(t).resources.cpus)
                        .max()
                })
                .unwrap_or(1),
            failed,
            allocations: self.allocations.clone(),
            dispatch: self.dispatch.clone(),
            store_bytes: 0,
        }
    }

    fn on_prepared(&mut self, run_id: u64, result: Result<PreparedRun, String>) {
        let reply = self.submit_replies.remove(&run_id);
        match result {
            Err(msg) => {
                let _ = self.db.finish_run(run_id, "invalid", &msg, &[]);
                if let Some(r) = reply {
                    let _ = r.send(Err(SubmitError::Refused(msg.clone())));
                }
                let status = RunStatus {
                    run_id,
                    state: "invalid".into(),
                    tasks: vec![TaskStatus {
                        label: "(pipeline)".into(),
                        state: "failed".into(),
                        error: msg,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                self.finish_watchers(run_id, status);
            }
            Ok(prep) => {
                if let Some(r) = reply {
                    let _ = r.send(Ok((run_id, prep.plan.len() as u64)));
                }
                self.waiting_runs.push_back(prep);
                if self.run.is_none() {
                    self.start_next_run();
                }
            }
        }
    }

    fn start_next_run(&mut self) {
        let Some(prep) = self.waiting_runs.pop_front() else {
            return;
        };
        if let Some(loader) = self.actions_loader.take() {
            match loader.join().expect("action cache loader panicked") {
                Ok(actions) => self.actions = actions,
                Err(e) => {
                    tracing::error!(
                        "cannot read the action cache in {}; every task will run (delete the file to rebuild it): {e:#}",
                        self.cfg.db_path().display()
                    )
                }
            }
        }
        {
            let mut inputs = self.inputs.write().expect("inputs lock");
            for img in &prep.dataset.images {
                if let Some(d) = &img.digest {
                    inputs.insert(d.clone(), prep.dataset.abs_path(img));
                }
            }
            for (_, p, d) in prep.step_files.iter().flatten() {
                inputs.insert(d.clone(), p.clone());
            }
        }
        let mut counts = vec![StepCounts::default(); prep.pipeline.steps.len()];
        for (s, r) in prep.plan.steps.iter().enumerate() {
            counts[s].total = r.len() as u64;
        }
        let tasks = prep
            .plan
            .tasks
            .iter()
            .map(|t| TaskRt {
                state: TaskState::Waiting(t.deps.len() as u32),
                attempt: 0,
                key: None,
                outputs: Vec::new(),
                reason: String::new(),
                error: String::new(),
                worker_name: String::new(),
                queued_at: None,
                progress: String::new(),
                free_attempts: 0,
            })
            .collect();
        let roots: Vec<TaskIdx> = (0..prep.plan.len() as TaskIdx)
            .rev()
            .filter(|&t| prep.plan.tasks[t as usize].deps.is_empty())
            .collect();
        tracing::info!(run = prep.id, tasks = prep.plan.len(), "run started");
        let done_before_restart = if prep.force.is_empty() {
            Default::default()
        } else {
            self.db.done_in_run(prep.id).unwrap_or_default()
        };
        self.run = Some(ActiveRun {
            done_before_restart,
            prep,
            tasks,
            queue: VecDeque::new(),
            counts,
            finished: 0,
            started: Instant::now(),
            prev_lock: None,
            unfit_reported: Default::default(),
        });
        self.make_ready(roots);
    }

    /// Tasks whose inputs are all known: a cache hit finishes them at once (and may make
    /// their dependents ready in turn); a miss queues them with the reason why.
    fn make_ready(&mut self, mut stack: Vec<TaskIdx>) {
        let Some(run) = self.run.as_mut() else { return };
        let mut unusable: Vec<(TaskIdx, String)> = Vec::new();
        while let Some(t) = stack.pop() {
            if run.tasks[t as usize].state != TaskState::Waiting(0) {
                continue;
            }
            if let Some(why) = run.prep.unusable_input(t) {
                unusable.push((t, why.to_string()));
                continue;
            }
            let parts = run
                .prep
                .key_parts(t, |d| run.tasks[d as usize].outputs.as_slice());
            let key = parts.key();
            let forced = run.prep.is_forced(t) && !run.done_before_restart.contains(&key.0);
            let label = run.prep.label(t);
            let decision = decide(
                forced,
                self.actions.get(&key.0),
                |a| verify_outputs(&self.store, a),
                || {
                    run.prev_lock()
                        .and_then(|l| l.tasks.get(&label))
                        .map(|e| e.parts.clone())
                },
                &parts,
            );
            let mut reasons = match decision {
                CacheDecision::Hit(action) => {
                    let rt = &mut run.tasks[t as usize];
                    rt.outputs = action.outputs;
                    rt.key = Some(key);
                    run.set_state(t, TaskState::Done { ran: false });
                    push_ready_dependents(run, t, &mut stack);
                    continue;
                }
                CacheDecision::Run(reasons) => reasons,
            };
            if let Some(Reason::CorruptOutput(bad)) = reasons.first() {
                tracing::warn!(task = %label, "stored output {bad} is corrupt or missing; recomputing");
                self.actions.remove(&key.0);
                let _ = self.db.forget_action(&key.0);
            }
            let store = &self.store;
            refine_plate_map_reasons(&mut reasons, |d| {
                run.prep
                    .plate_map_blobs
                    .get(d)
                    .cloned()
                    .or_else(|| store.read_verified(d).ok())
            });
            let rt = &mut run.tasks[t as usize];
            rt.reason = summarise(&reasons);
            rt.key = Some(key);
            run.set_state(t, TaskState::Queued);
            run.queue.push_back(t);
        }
        // Only the tasks that read an unusable file fail (and what depends on them).
        for (t, why) in unusable {
            self.fail(t, format!("{why} (not run: fix the file and run again)"));
        }
    }

    fn schedule(&mut self) {
        let now = self.now();
        let Some(run) = self.run.as_mut() else { return };
        if run.queue.is_empty() || self.workers.is_empty() {
            return;
        }
        let mut caps: Vec<Capacity> = self
            .workers
            .values()
            .map(|w| Capacity {
                seconds_left: w
                    .ends_at
                    .map(|end| end.saturating_duration_since(now).as_secs()),
                ..w.capacity.clone()
            })
            .collect();
        let prep = &run.prep;
        let assignments = assign(
            &mut run.queue,
            |t| prep.step_of(t).resources.clone(),
            &mut caps,
        );
        // Nothing running and nothing placed: say which steps no connected worker can ever
        // hold, instead of waiting in silence (a worker that fits may still join).
        if assignments.is_empty() && self.workers.values().all(|w| w.running.is_empty()) {
            let steps: std::collections::BTreeSet<usize> = run
                .queue
                .iter()
                .map(|&t| prep.plan.tasks[t as usize].step as usize)
                .collect();
            for step in steps {
                let r = &prep.pipeline.steps[step].resources;
                let by_size: Vec<&Capacity> = caps.iter().filter(|c| c.could_ever_fit(r)).collect();
                if !by_size.is_empty()
                    && !by_size
                        .iter()
                        .any(|c| time_fits(c.seconds_left, r.time_limit_s))
                    && run.unfit_reported.insert(step)
                {
                    let most = by_size
                        .iter()
                        .filter_map(|c| c.seconds_left)
                        .max()
                        .unwrap_or(0);
                    tracing::warn!(
                        step = %prep.pipeline.steps[step].name,
                        "this step's tasks may run for {} (its `timeout:`), and no connected \
                         worker's batch job has that long left (the most: {}): they wait for \
                         a worker with more time (raise --slurm-time or the job's --time, or \
                         lower the timeout)",
                        plateflow_contract::units::show_seconds(r.time_limit_s.unwrap_or(0)),
                        plateflow_contract::units::show_seconds(most)
                    );
                }
                if by_size.is_empty() && run.unfit_reported.insert(step) {
                    let cuda_missing = r.needs_cuda_build
                        && caps.iter().any(|c| c.total_gpus >= r.gpus && !c.cuda_build);
                    tracing::warn!(
                        step = %prep.pipeline.steps[step].name,
                        cpus = r.cpus,
                        gpus = r.gpus,
                        memory_bytes = r.memory_bytes,
                        "no connected worker can ever run this step's tasks: they wait for a \
                         bigger worker (lower the step's `resources:` or start one){}",
                        if cuda_missing {
                            "; workers with GPUs are connected, but none was built with the \
                             `cuda` feature (deploy/cuda/build-worker.sh)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        for c in caps {
            if let Some(w) = self.workers.get_mut(&c.worker) {
                w.capacity = c;
            }
        }
        let mut per_worker: BTreeMap<WorkerId, Vec<TaskSpec>> = BTreeMap::new();
        for a in assignments {
            let t = a.task;
            let worker = self
                .workers
                .get_mut(&a.worker)
                .expect("assigned to a live worker");
            worker.running.insert(t);
            worker.assigned += 1;
            let rt = &mut run.tasks[t as usize];
            rt.attempt += 1;
            rt.worker_name = worker.name.clone();
            if let Some(q) = rt.queued_at.take() {
                self.dispatch.observe(q.elapsed());
            }
            rt.progress.clear();
            let state = TaskState::Running {
                worker: a.worker,
                attempt: rt.attempt,
                gpus: a.gpu_ids.clone(),
            };
            run.set_state(t, state);
            per_worker
                .entry(a.worker)
                .or_default()
                .push(task_spec(run, t, a.gpu_ids));
        }
        for (w, tasks) in per_worker {
            let msg = CoordinatorMessage {
                body: Some(coordinator_message::Body::Assign(TaskAssignments { tasks })),
            };
            self.comm.send(w, msg);
        }
    }

    fn on_worker_hello(
        &mut self,
        hello: WorkerHello,
        tx: WorkerTx,
        reply: oneshot::Sender<WorkerId>,
    ) {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        let res = hello.resources.unwrap_or_default();
        let name = if hello.name.is_empty() {
            format!("{id}")
        } else {
            hello.name.clone()
        };
        tracing::info!(worker = %id, name = %name, host = %hello.hostname, cpus = res.cpus, gpus = ?hello.gpu_ids, "worker connected");
        let welcome = CoordinatorMessage {
            body: Some(coordinator_message::Body::Welcome(Welcome {
                worker_id: id.0,
                heartbeat_ms: self.cfg.heartbeat.as_millis() as u32,
                lease_ms: self.cfg.lease.as_millis() as u32,
            })),
        };
        self.comm.worker_joined(id, tx);
        self.comm.send(id, welcome);
        self.workers.insert(
            id,
            WorkerRt {
                name,
                capacity: Capacity {
                    worker: id,
                    cpus: res.cpus.max(1),
                    memory_bytes: res.memory_bytes,
                    gpus: hello.gpu_ids.clone(),
                    total_cpus: res.cpus.max(1),
                    total_memory_bytes: res.memory_bytes,
                    total_gpus: hello.gpu_ids.len() as u32,
                    cuda_build: hello.cuda_build,
                    // Counted down from `ends_at` at each scheduling.
                    seconds_left: None,
                },
                assigned: 0,
                last_seen: self.now(),
                running: HashSet::new(),
                allocation: hello.allocation.clone(),
                ends_at: hello
                    .seconds_left
                    .map(|s| self.now() + Duration::from_secs(s)),
            },
        );
        let _ = reply.send(id);
    }

    fn on_worker_msg(&mut self, worker: WorkerId, body: worker_message::Body) {
        let now = self.now();
        let Some(w) = self.workers.get_mut(&worker) else {
            if let worker_message::Body::Results(r) = body {
                // Its tasks were re-queued when it was declared lost; they count once.
                tracing::info!(
                    worker = %worker,
                    results = r.results.len(),
                    "discarded results from a worker declared lost"
                );
            }
            return;
        };
        w.last_seen = now;
        match body {
            worker_message::Body::Results(results) => {
                for r in results.results {
                    self.on_result(worker, r);
                }
            }
            worker_message::Body::Progress(p) => self.on_progress(worker, p),
            worker_message::Body::Goodbye(g) => self.on_goodbye(worker, &g.reason),
            _ => {}
        }
    }

    /// A worker stopping on a signal: it is gone at once (nothing more is assigned to it,
    /// and its late results are discarded), and its running tasks are re-queued without
    /// using up a retry: the task did nothing wrong.
    fn on_goodbye(&mut self, worker: WorkerId, reason: &str) {
        // Results that came with or just before the goodbye are saved and acknowledged
        // while the worker still listens.
        self.flush_journal();
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        // Closing its stream tells the worker its goodbye arrived: it exits at once.
        self.comm.worker_left(worker);
        tracing::info!(worker = %worker, name = %w.name, tasks = w.running.len(), "worker stopping: {reason}");
        let mut running: Vec<TaskIdx> = w.running.into_iter().collect();
        running.sort_unstable();
        for t in running.into_iter().rev() {
            let Some(run) = self.run.as_mut() else { return };
            let rt = &mut run.tasks[t as usize];
            if !rt.state.is_running_on(worker, None) {
                continue;
            }
            let mut error = format!("worker {} stopped while running it ({reason})", w.name);
            // A free attempt does not count in `retry_or_fail`, which then re-queues it.
            if rt.free_attempts < FREE_ATTEMPTS {
                rt.free_attempts += 1;
                error.push_str("; not counted as a retry");
            }
            self.retry_or_fail(t, error);
        }
    }

    /// Keeps the latest progress message of a running attempt (others are stale).
    fn on_progress(&mut self, worker: WorkerId, p: pb::TaskProgress) {
        let Some(run) = self.run.as_mut() else { return };
        if p.task_id >> 32 != run.prep.id {
            return;
        }
        if let Some(rt) = run.tasks.get_mut((p.task_id & 0xffff_ffff) as usize) {
            if rt.state.is_running_on(worker, Some(p.attempt)) {
                rt.progress = p.message;
            }
        }
    }

    fn release(&mut self, worker: WorkerId, t: TaskIdx, gpu_ids: &[u32]) {
        let Some(run) = self.run.as_ref() else { return };
        let r = run.prep.step_of(t).resources.clone();
        if let Some(w) = self.workers.get_mut(&worker) {
            if w.running.remove(&t) {
                w.capacity.cpus += r.cpus;
                if w.capacity.total_memory_bytes > 0 {
                    w.capacity.memory_bytes += r.memory_bytes;
                }
                w.capacity.gpus.extend_from_slice(gpu_ids);
            }
        }
    }

    fn on_result(&mut self, worker: WorkerId, r: pb::TaskResult) {
        let Some(run) = self.run.as_ref() else { return };
        if r.task_id >> 32 != run.prep.id {
            return; // from an earlier run
        }
        let t = (r.task_id & 0xffff_ffff) as TaskIdx;
        let Some(rt) = run.tasks.get(t as usize) else {
            return;
        };
        if !rt.state.is_running_on(worker, Some(r.attempt)) {
            // Stale: the task was re-queued elsewhere meanwhile.
            tracing::info!(task = %run.prep.label(t), attempt = r.attempt, "discarded a stale result");
            return;
        }
        let gpu_ids = match &rt.state {
            TaskState::Running { gpus, .. } => gpus.clone(),
            _ => Vec::new(),
        };
        self.release(worker, t, &gpu_ids);
        let outputs: Result<Vec<(String, Digest)>, String> = r
            .outputs
            .iter()
            .map(|o| {
                let d = plateflow_proto::digest_of(o.digest.as_ref(), &o.name)
                    .map_err(|e| e.message().to_string())?;
                match self.store.check(&d) {
                    Ok(BlobState::Intact) => Ok((o.name.clone(), d)),
                    _ => Err(format!(
                        "output `{}` ({d}) never reached the coordinator's store",
                        o.name
                    )),
                }
            })
            .collect();
        let run = self.run.as_mut().expect("checked above");
        match (r.ok, outputs) {
            (true, Ok(outputs)) => {
                let key = run.tasks[t as usize]
                    .key
                    .clone()
                    .expect("queued tasks have keys");
                let action = CachedAction {
                    outputs: outputs.clone(),
                    stdout: r.stdout.as_ref().and_then(|d| Digest::try_from(d).ok()),
                    stderr: r.stderr.as_ref().and_then(|d| Digest::try_from(d).ok()),
                };
                self.journal
                    .push((key.0.clone(), run.prep.label(t), action.clone()));
                self.journal_acks.push((
                    worker,
                    pb::TaskRef {
                        task_id: r.task_id,
                        attempt: r.attempt,
                    },
                ));
                self.actions.insert(key.0, action);
                run.tasks[t as usize].outputs = outputs;
                run.tasks[t as usize].error.clear();
                run.set_state(t, TaskState::Done { ran: true });
                let mut stack = Vec::new();
                push_ready_dependents(run, t, &mut stack);
                self.make_ready(stack);
            }
            (ok, outputs) => {
                // Outputs lost on the way are worth another attempt; a refusal is not.
                let transient = ok || r.transient;
                let mut error = if ok {
                    outputs.err().unwrap_or_default()
                } else {
                    r.error.clone()
                };
                if !r.stderr_tail.is_empty() {
                    error.push_str("\n--- stderr (last lines) ---\n");
                    error.push_str(&r.stderr_tail);
                }
                if transient {
                    self.retry_or_fail(t, error);
                } else {
                    self.fail(
                        t,
                        format!("{error} (not retried: the same inputs give the same error)"),
                    );
                }
            }
        }
    }

    fn retry_or_fail(&mut self, t: TaskIdx, error: String) {
        let Some(run) = self.run.as_mut() else { return };
        let allowed = run.prep.step_of(t).retries + 1;
        let rt = &mut run.tasks[t as usize];
        let label = run.prep.label(t);
        // Attempts handed back by a stopping worker do not count.
        if rt.attempt - rt.free_attempts.min(rt.attempt) < allowed {
            tracing::warn!(task = %label, attempt = rt.attempt, "task failed; retrying: {}", error.lines().next().unwrap_or(""));
            rt.error = error;
            run.set_state(t, TaskState::Queued);
            run.queue.push_front(t);
            return;
        }
        rt.error = format!("attempt {} of {allowed}: {error}", rt.attempt);
        self.fail(t, String::new());
    }

    /// Fails a task for good (`error`, when not empty, replaces its message) and skips
    /// everything downstream of it; independent tasks go on.
    fn fail(&mut self, t: TaskIdx, error: String) {
        let Some(run) = self.run.as_mut() else { return };
        let label = run.prep.label(t);
        let rt = &mut run.tasks[t as usize];
        tracing::warn!(task = %label, attempt = rt.attempt, "task failed");
        if !error.is_empty() {
            rt.error = error;
        }
        run.set_state(t, TaskState::Failed);
        // Everything downstream is skipped; independent tasks go on.
        let mut stack: Vec<TaskIdx> = run.prep.plan.dependents[t as usize].clone();
        while let Some(d) = stack.pop() {
            if matches!(run.tasks[d as usize].state, TaskState::Waiting(_)) {
                run.tasks[d as usize].error = format!("skipped: upstream task {label} failed");
                run.set_state(d, TaskState::Skipped);
                stack.extend_from_slice(&run.prep.plan.dependents[d as usize]);
            }
        }
    }

    fn on_worker_gone(&mut self, worker: WorkerId, why: &str) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        self.comm.worker_left(worker);
        if w.running.is_empty() {
            tracing::info!(worker = %worker, name = %w.name, "worker left: {why}");
        } else {
            tracing::warn!(worker = %worker, name = %w.name, tasks = w.running.len(), "worker lost: {why}; re-queueing its tasks");
        }
        let mut lost: Vec<TaskIdx> = w.running.into_iter().collect();
        lost.sort_unstable();
        for t in lost.into_iter().rev() {
            if let Some(run) = self.run.as_ref() {
                if run.tasks[t as usize].state.is_running_on(worker, None) {
                    self.retry_or_fail(
                        t,
                        format!("worker {} was lost while running it ({why})", w.name),
                    );
                }
            }
        }
    }

    /// The engine's clock: the latest tick, or the wall clock when that is later (tests
    /// move time on by sending ticks from the future).
    fn now(&self) -> Instant {
        self.last_tick.max(Instant::now())
    }

    fn on_tick(&mut self, now: Instant) {
        self.last_tick = self.last_tick.max(now);
        let lease = self.cfg.lease;
        let silent: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.last_seen) > lease)
            .map(|(id, _)| *id)
            .collect();
        for w in silent {
            self.on_worker_gone(w, &format!("silent for more than {:?}", lease));
        }
        if let Some(run) = self.run.as_ref() {
            let status = run.status(false, self.workers.len() as u32, false);
            self.watchers.retain(|(id, tx)| {
                *id != status.run_id || tx.try_send(Ok(status.clone())).is_ok() || !tx.is_closed()
            });
        }
    }

    fn flush_journal(&mut self) {
        if self.journal.is_empty() {
            return;
        }
        // The journal only ever holds the active run's tasks (it is flushed before a run ends).
        let forced_run = self
            .run
            .as_ref()
            .filter(|r| !r.prep.force.is_empty())
            .map(|r| r.prep.id);
        if let Err(e) = self.db.save_actions(forced_run, &self.journal) {
            // Said once until it works again: it is tried on every batch of events.
            if !self.journal_failing {
                tracing::error!(
                    "cannot journal finished tasks in {} (kept in memory, tried again as \
                     tasks finish; if the disk is full, free space there): {e:#}",
                    self.cfg.db_path().display()
                );
                self.journal_failing = true;
            }
            return;
        }
        if std::mem::take(&mut self.journal_failing) {
            tracing::info!("finished tasks journaled again");
        }
        self.journal.clear();
        // Only now may workers forget what they kept to finish these tasks again.
        let mut saved: BTreeMap<WorkerId, Vec<pb::TaskRef>> = BTreeMap::new();
        for (worker, task) in self.journal_acks.drain(..) {
            saved.entry(worker).or_default().push(task);
        }
        for (worker, tasks) in saved {
            if self.workers.contains_key(&worker) {
                let body = coordinator_message::Body::Saved(pb::ResultsSaved { tasks });
                self.comm
                    .send(worker, CoordinatorMessage { body: Some(body) });
            }
        }
    }

    fn maybe_finish_run(&mut self) {
        let done = self
            .run
            .as_ref()
            .is_some_and(|r| r.finished == r.tasks.len());
        if !done {
            return;
        }
        // Flushed while the run is still the active one: the journal's rows are its own.
        self.flush_journal();
        let mut run = self.run.take().expect("checked");
        let t0 = Instant::now();
        // What could not be kept: a run is not a success unless its results, lock file and
        // journal are on disk (a full disk, `results: /dev/null`).
        let mut unkept: Vec<String> = Vec::new();
        if !self.journal.is_empty() {
            unkept.push(format!(
                "the journal of finished tasks in {} could not be written",
                self.cfg.db_path().display()
            ));
            // Not carried into the next run, under whose id it would be saved (a resumed
            // forced run would then skip those tasks): they run again instead.
            self.journal.clear();
            self.journal_acks.clear();
        }
        let mut status = run.status(true, self.workers.len() as u32, true);
        let labels: Vec<String> = (0..run.tasks.len() as TaskIdx)
            .map(|t| run.prep.label(t))
            .collect();
        let mut records = Vec::new();
        let mut written = Vec::new();
        for (t, label) in labels.iter().enumerate() {
            let rt = &run.tasks[t];
            if rt.state != (TaskState::Done { ran: false }) {
                records.push(TaskRecord {
                    label: label.clone(),
                    state: rt.state.name().into(),
                    attempts: rt.attempt,
                    reason: rt.reason.clone(),
                    error: rt.error.clone(),
                });
            }
            if let TaskState::Done { ran } = rt.state {
                let dir = run
                    .prep
                    .pipeline
                    .results
                    .join(plateflow_contract::labels::label_path(label));
                for (name, d) in &rt.outputs {
                    let dest = dir.join(name);
                    // A cached task's result is copied out again unless the file there is
                    // the one plateflow last wrote with this content: an earlier setting's
                    // output (run with sigma 2, then back at 3), another pipeline's sharing
                    // `results/`, or a hand edit would otherwise stay under this run's name.
                    let at = dest.display().to_string();
                    let current = !ran
                        && crate::dataset::stat_key(&dest).is_ok_and(|now| {
                            matches!(self.db.stat_entry(&at), Ok(Some((k, was))) if k == now && &was == d)
                        });
                    if current {
                        continue;
                    }
                    match self.store.copy_out(d, &dest) {
                        Ok(()) => {
                            if let Ok(k) = crate::dataset::stat_key(&dest) {
                                written.push((at, k, d.clone()));
                            }
                        }
                        Err(e) => {
                            tracing::error!("cannot write result {}: {e}", dest.display());
                            unkept.push(format!("cannot write result {}: {e}", dest.display()));
                        }
                    }
                }
            }
        }
        // What each result file is, for the next run's check above.
        if let Err(e) = self.db.save_stat_cache(&written) {
            tracing::warn!("cannot record the results written: {e:#}");
        }
        let models = self.model_results(&run, &labels);
        if let Err(e) = self.db.save_run_models(run.prep.id, &models) {
            tracing::error!("cannot record the models of run {}: {e:#}", run.prep.id);
            unkept.push(format!(
                "cannot record the models of run {}: {e:#}",
                run.prep.id
            ));
        }
        if let Err(e) = self.write_lock(&mut run, labels) {
            tracing::error!("cannot write the lock file: {e:#}");
            unkept.push(format!("cannot write the lock file: {e:#}"));
        }
        if !unkept.is_empty() {
            status.state = "failed".into();
            status.error = format!(
                "{}; free space (or fix the path) and run again: finished tasks are kept and \
                 will not run again",
                plateflow_contract::listing::first_few(&unkept, 3, "; ")
            );
        }
        let summary = serde_json::to_string(
            &status
                .steps
                .iter()
                .map(|s| (s.step.clone(), s.total, s.done, s.cached, s.failed))
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        if let Err(e) = self
            .db
            .finish_run(run.prep.id, &status.state, &summary, &records)
        {
            tracing::error!("cannot record the end of run {}: {e:#}", run.prep.id);
            status.state = "failed".into();
            if !status.error.is_empty() {
                status.error.push_str("; ");
            }
            status.error.push_str(&format!(
                "cannot record the end of run {} in {}: {e:#}",
                run.prep.id,
                self.cfg.db_path().display()
            ));
        }
        tracing::info!(run = run.prep.id, state = %status.state, wrap_up = ?t0.elapsed(), "run finished");
        self.finish_watchers(run.prep.id, status);
        self.start_next_run();
    }

    /// The metrics of the run's finished `train` and `evaluate` tasks (ran or cached: both
    /// are this run's results), for `plateflow runs` and `compare`.
    fn model_results(&self, run: &ActiveRun, labels: &[String]) -> Vec<crate::db::RunModel> {
        let mut out = Vec::new();
        for (t, label) in labels.iter().enumerate() {
            let rt = &run.tasks[t];
            let step = run.prep.plan.tasks[t].step as usize;
            let kind = run.prep.pipeline.steps[step].kind.name;
            if !matches!(rt.state, TaskState::Done { .. }) || !matches!(kind, "train" | "evaluate")
            {
                continue;
            }
            let digest_of = |name: &str| {
                rt.outputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, d)| d.clone())
            };
            let Some(metrics) =
                digest_of("metrics.json").and_then(|d| self.store.read_verified(&d).ok())
            else {
                continue;
            };
            out.push(crate::db::RunModel {
                label: label.clone(),
                kind: kind.to_string(),
                params: run.prep.step_params[step].clone(),
                metrics: String::from_utf8_lossy(&metrics).into_owned(),
                predictions: digest_of("predictions.csv"),
            });
        }
        out
    }

    /// The lock file: new entries for finished tasks, previous ones kept for the others. When
    /// every task finished with the same keys and outputs as the lock already on disk records
    /// (a no-op re-run), nothing is rendered or written.
    fn write_lock(&mut self, run: &mut ActiveRun, labels: Vec<String>) -> anyhow::Result<()> {
        let lock_path = lockfile::lock_path(&run.prep.pipeline.file);
        let all_done = run
            .tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Done { .. }));
        let identity = all_done.then(|| lock_identity(run, &labels));
        let lock_key = lock_path.display().to_string();
        if let Some(id) = &identity {
            let on_disk = plateflow_store::hash_file(&lock_path).ok();
            if let (Some((stored_id, stored_file)), Some(on_disk)) =
                (self.db.lock_state(&lock_key)?, on_disk)
            {
                if stored_id == *id && stored_file == on_disk.to_string() {
                    return Ok(());
                }
            }
        }
        let prev = if all_done {
            LockFile::default()
        } else {
            run.prev_lock().cloned().unwrap_or_default()
        };
        // Entries in label order, streamed: key parts are recomputed one task at a time from
        // the upstream outputs (they are not kept while running), and never all held at once.
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_unstable_by(|&a, &b| labels[a].cmp(&labels[b]));
        let kept = |t: usize| {
            matches!(run.tasks[t].state, TaskState::Done { .. })
                || prev.tasks.contains_key(&labels[t])
        };
        let mut text = lockfile::header(
            &run.prep.pipeline.name,
            order.iter().filter(|&&t| kept(t)).count(),
        );
        for t in order {
            let rt = &run.tasks[t];
            match (&rt.state, &rt.key) {
                (TaskState::Done { .. }, Some(key)) => {
                    let parts = run
                        .prep
                        .key_parts(t as TaskIdx, |d| run.tasks[d as usize].outputs.as_slice());
                    debug_assert_eq!(parts.key(), *key);
                    let entry = LockEntry {
                        key: key.0.clone(),
                        parts,
                        outputs: rt.outputs.iter().cloned().collect(),
                    };
                    lockfile::entry(&mut text, &labels[t], &entry);
                }
                _ => {
                    if let Some(e) = prev.tasks.get(&labels[t]) {
                        lockfile::entry(&mut text, &labels[t], e);
                    }
                }
            }
        }
        lockfile::write_if_changed(&lock_path, &text)?;
        if let Some(id) = identity {
            let file_digest = plateflow_store::hash_bytes(text.as_bytes()).to_string();
            self.db.save_lock_state(&lock_key, &id, &file_digest)?;
        }
        Ok(())
    }

    fn finish_watchers(&mut self, run_id: u64, status: RunStatus) {
        self.watchers.retain(|(id, tx)| {
            if *id == run_id {
                let _ = tx.try_send(Ok(status.clone()));
                false
            } else {
                true
            }
        });
        self.finished_runs.insert(run_id, status);
        while self.finished_runs.len() > 32 {
            self.finished_runs.pop_first();
        }
    }

    fn status(&self, run_id: u64, with_tasks: bool) -> Vec<RunStatus> {
        let workers = self.workers.len() as u32;
        let mut out = Vec::new();
        if let Some(run) = &self.run {
            if run_id == 0 || run_id == run.prep.id {
                out.push(run.status(with_tasks, workers, false));
            }
        }
        for p in &self.waiting_runs {
            if run_id == 0 || run_id == p.id {
                out.push(RunStatus {
                    run_id: p.id,
                    pipeline: p.pipeline.file.display().to_string(),
                    state: "waiting".into(),
                    workers,
                    ..Default::default()
                });
            }
        }
        if let Ok(rows) = self.db.runs() {
            for (id, pipeline, state, _) in rows {
                if out.iter().any(|s| s.run_id == id) || (run_id != 0 && run_id != id) {
                    continue;
                }
                let mut st = self.finished_runs.get(&id).cloned().unwrap_or(RunStatus {
                    run_id: id,
                    pipeline,
                    state,
                    workers,
                    ..Default::default()
                });
                if with_tasks && st.tasks.is_empty() {
                    st.tasks = self
                        .db
                        .run_tasks(id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|t| TaskStatus {
                            label: t.label,
                            state: t.state,
                            attempts: t.attempts,
                            worker: String::new(),
                            error: t.error,
                            reason: t.reason,
                            progress: String::new(),
                        })
                        .collect();
                }
                out.push(st);
            }
        }
        out
    }
}

/// What a lock file written for this run would record, as one digest: the pipeline's name
/// and every task's label, key and outputs, in plan order.
fn lock_identity(run: &ActiveRun, labels: &[String]) -> String {
    let mut h = plateflow_store::Sha256Writer::default();
    h.update(run.prep.pipeline.name.as_bytes());
    for (rt, label) in run.tasks.iter().zip(labels) {
        h.update(label.as_bytes());
        h.update(b"\0");
        h.update(rt.key.as_ref().map(|k| k.0.as_bytes()).unwrap_or_default());
        for (name, d) in &rt.outputs {
            h.update(name.as_bytes());
            h.update(d.hash());
        }
        h.update(b"\n");
    }
    h.finish().hex()
}

/// Takes an exclusive lock on the state directory, naming the holder when it is taken.
fn lock_state_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "another plateflow process ({}) is using {}; wait for it to finish, or give this one another state directory",
            holder.trim(),
            dir.display()
        );
    }
    let wrote = file
        .set_len(0)
        .and_then(|()| write!(file, "pid {}", std::process::id()));
    wrote.map_err(|e| {
        anyhow::anyhow!(
            "cannot write {}: {e} (if the disk is full, free space there, or give this run \
             another state directory)",
            path.display()
        )
    })?;
    Ok(file)
}

fn push_ready_dependents(run: &mut ActiveRun, t: TaskIdx, stack: &mut Vec<TaskIdx>) {
    for i in 0..run.prep.plan.dependents[t as usize].len() {
        let d = run.prep.plan.dependents[t as usize][i];
        if let TaskState::Waiting(n) = run.tasks[d as usize].state {
            run.tasks[d as usize].state = TaskState::Waiting(n - 1);
            if n == 1 {
                stack.push(d);
            }
        }
    }
}

/// A cached result is used only if every output is present and intact.
pub(crate) fn verify_outputs(store: &BlobStore, action: &CachedAction) -> Result<(), String> {
    for (name, d) in &action.outputs {
        match store.check(d) {
            Ok(BlobState::Intact) => {}
            Ok(BlobState::Missing) => return Err(format!("`{name}` ({}, missing)", d.short())),
            Ok(BlobState::Corrupt { quarantined, .. }) => {
                return Err(format!(
                    "`{name}` ({}, moved to {})",
                    d.short(),
                    quarantined.display()
                ))
            }
            Err(e) => return Err(format!("`{name}`: {e}")),
        }
    }
    Ok(())
}

fn task_spec(run: &ActiveRun, t: TaskIdx, gpu_ids: Vec<u32>) -> TaskSpec {
    let prep = &run.prep;
    let task = &prep.plan.tasks[t as usize];
    let step = &prep.pipeline.steps[task.step as usize];
    let fields: HashMap<String, String> = prep
        .plan
        .fields(&prep.pipeline, &prep.dataset, t)
        .into_iter()
        .collect();
    let mut inputs = Vec::with_capacity(task.inputs.len());
    for &i in &task.inputs {
        let img = &prep.dataset.images[i as usize];
        inputs.push(pb::InputFile {
            rel_path: img.rel_path.clone(),
            abs_path: prep.dataset.abs_path(img).display().to_string(),
            digest: img.digest.as_ref().map(Into::into),
            fields: prep
                .dataset
                .fields
                .iter()
                .zip(&img.fields)
                .map(|(f, &v)| (f.clone(), prep.dataset.values.get(v).to_string()))
                .collect(),
        });
    }
    // `_role` tells the worker where a non-image input goes and what it is.
    let as_file = |name: &str, path: &PathBuf, d: &Digest, role: &str| pb::InputFile {
        rel_path: name.to_string(),
        abs_path: path.display().to_string(),
        digest: Some(d.into()),
        fields: [("_role".to_string(), role.to_string())]
            .into_iter()
            .collect(),
    };
    for (name, path, d) in &prep.step_files[task.step as usize] {
        inputs.push(as_file(name, path, d, "file"));
    }
    // The task's own slice of the plate map, from the store (never the whole file in place).
    if let Some(d) = &prep.task_plate_map[t as usize] {
        inputs.push(as_file(
            &prep.plate_map_name,
            &PathBuf::new(),
            d,
            "plate_map",
        ));
    }
    let mut upstream = Vec::new();
    for &d in &task.deps {
        let label = prep.label(d);
        for (name, digest) in &run.tasks[d as usize].outputs {
            upstream.push(pb::UpstreamOutput {
                task_label: label.clone(),
                name: name.clone(),
                digest: Some(digest.into()),
            });
        }
    }
    let rt = &run.tasks[t as usize];
    TaskSpec {
        task_id: wire_id(prep.id, t),
        attempt: rt.attempt,
        label: prep.label(t),
        step: step.name.clone(),
        kind: step.kind.name.to_string(),
        kind_version: step.kind.version,
        params_json: prep.step_params[task.step as usize].clone(),
        inputs,
        upstream,
        fields,
        resources: Some(pb::Resources {
            cpus: step.resources.cpus,
            gpus: step.resources.gpus,
            memory_bytes: step.resources.memory_bytes,
        }),
        gpu_ids,
        cache_key: rt.key.as_ref().map(|k| k.0.clone()).unwrap_or_default(),
        timeout_s: step.resources.time_limit_s.unwrap_or(0),
    }
}

/// Reactor tests: the engine driven event by event through [`Engine::react`], with a
/// [`RecordingComm`] in place of gRPC. No sockets, no threads, no sleeps: time moves only when
/// a test sends a tick.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::{RecordingComm, Sent};
    use plateflow_proto::v1::{Resources, TaskResult, TaskResults};

    /// A passing result for each of `tasks`.
    fn succeeded(tasks: &[TaskSpec]) -> Vec<TaskResult> {
        tasks
            .iter()
            .map(|t| TaskResult {
                task_id: t.task_id,
                attempt: t.attempt,
                ok: true,
                ..Default::default()
            })
            .collect()
    }

    struct Reactor {
        _dir: tempfile::TempDir,
        engine: Engine,
        comm: RecordingComm,
        path: PathBuf,
        /// What each worker was sent, in order (but for `saved`).
        inbox: HashMap<WorkerId, VecDeque<CoordinatorMessage>>,
        /// The results each worker was told are saved.
        saved: HashMap<WorkerId, Vec<pb::TaskRef>>,
    }

    impl Reactor {
        fn new(retries: u32, lease_ms: u64) -> Reactor {
            Reactor::with_steps(
                lease_ms,
                &format!("  s:\n    uses: noop\n    for_each: plate\n    retries: {retries}\n"),
            )
        }

        /// A pipeline of `steps` (YAML under `steps:`) over two plates of one image each.
        fn with_steps(lease_ms: u64, steps: &str) -> Reactor {
            let dir = tempfile::tempdir().unwrap();
            for p in ["P1", "P2"] {
                std::fs::create_dir_all(dir.path().join("images").join(p)).unwrap();
                std::fs::write(dir.path().join(format!("images/{p}/A01.tif")), p).unwrap();
            }
            let yaml = format!(
                "data:\n  images: images\n  pattern: \"{{plate}}/{{well}}.tif\"\nsteps:\n{steps}"
            );
            let path = dir.path().join("p.yaml");
            std::fs::write(&path, yaml).unwrap();
            let mut cfg = EngineConfig::new(dir.path().join("state"));
            cfg.lease = Duration::from_millis(lease_ms);
            let comm = RecordingComm::default();
            let engine = Engine::with_comm(cfg, Box::new(comm.clone())).unwrap();
            Reactor {
                _dir: dir,
                engine,
                comm,
                path,
                inbox: HashMap::new(),
                saved: HashMap::new(),
            }
        }

        /// One event and its consequences; what was sent is sorted into the inboxes.
        fn send(&mut self, ev: Event) {
            self.engine.react(ev);
            for sent in self.comm.take() {
                match sent {
                    Sent::Message(
                        w,
                        CoordinatorMessage {
                            body: Some(coordinator_message::Body::Saved(s)),
                        },
                    ) => self.saved.entry(w).or_default().extend(s.tasks),
                    Sent::Message(w, m) => self.inbox.entry(w).or_default().push_back(m),
                    Sent::Plan {
                        run_id,
                        path,
                        force,
                    } => {
                        // The planner's work, done here and now instead of on a thread.
                        let yaml = std::fs::read_to_string(&path).unwrap();
                        let mut db = Db::open(&self.engine.cfg.db_path()).unwrap();
                        let result =
                            crate::run::prepare(run_id, &path, &yaml, force, &mut db, 1, &[])
                                .map_err(|e| format!("{e:#}"));
                        self.send(Event::Prepared {
                            run_id,
                            result: Box::new(result),
                        });
                    }
                    Sent::Joined(_) | Sent::Left(_) => {}
                }
            }
        }

        fn connect(&mut self, name: &str, cpus: u32) -> WorkerId {
            self.connect_ending(name, cpus, None)
        }

        /// A worker whose batch job ends in `seconds_left`.
        fn connect_ending(&mut self, name: &str, cpus: u32, seconds_left: Option<u64>) -> WorkerId {
            let (tx, _rx) = mpsc::channel(1);
            let (reply, mut id) = oneshot::channel();
            self.send(Event::WorkerHello {
                hello: WorkerHello {
                    name: name.into(),
                    resources: Some(Resources {
                        cpus,
                        gpus: 0,
                        memory_bytes: 0,
                    }),
                    seconds_left,
                    ..Default::default()
                },
                tx,
                reply,
            });
            let id = id.try_recv().expect("an id at once");
            let welcome = self.inbox.get_mut(&id).and_then(VecDeque::pop_front);
            assert!(
                matches!(
                    welcome.and_then(|w| w.body),
                    Some(coordinator_message::Body::Welcome(_))
                ),
                "a worker is welcomed first"
            );
            id
        }

        /// The next assignment sent to `w` (it must have been sent already).
        fn assigned(&mut self, w: WorkerId) -> Vec<TaskSpec> {
            let msg = self
                .inbox
                .get_mut(&w)
                .and_then(VecDeque::pop_front)
                .expect("an assignment was sent");
            match msg.body {
                Some(coordinator_message::Body::Assign(a)) => a.tasks,
                other => panic!("expected an assignment, got {other:?}"),
            }
        }

        fn nothing_sent_to(&self, w: WorkerId) -> bool {
            self.inbox.get(&w).is_none_or(VecDeque::is_empty)
        }

        fn submit(&mut self) -> u64 {
            self.submit_forcing(vec![])
        }

        fn submit_forcing(&mut self, force: Vec<String>) -> u64 {
            let (reply, mut rx) = oneshot::channel();
            self.send(Event::Submit {
                path: self.path.clone(),
                yaml: std::fs::read_to_string(&self.path).unwrap(),
                force,
                reply,
            });
            rx.try_recv().expect("answered").expect("accepted").0
        }

        fn status(&mut self, run_id: u64) -> RunStatus {
            let (reply, mut rx) = oneshot::channel();
            self.send(Event::Status {
                run_id,
                with_tasks: true,
                reply,
            });
            rx.try_recv().expect("a status").remove(0)
        }

        fn final_status(&mut self, run_id: u64) -> RunStatus {
            let st = self.status(run_id);
            assert_ne!(st.state, "running", "{st:?}");
            st
        }

        fn results(&mut self, worker: WorkerId, results: Vec<TaskResult>) {
            self.send(Event::WorkerMsg {
                worker,
                body: worker_message::Body::Results(TaskResults { results }),
            });
        }

        fn succeed(&mut self, worker: WorkerId, tasks: &[TaskSpec]) {
            self.results(worker, succeeded(tasks));
        }

        /// A failed attempt of `task`: `transient` when another attempt might pass.
        fn fail(&mut self, worker: WorkerId, task: &TaskSpec, error: &str, transient: bool) {
            let result = TaskResult {
                task_id: task.task_id,
                attempt: task.attempt,
                ok: false,
                error: error.into(),
                stderr_tail: "bad pixel".into(),
                transient,
                ..Default::default()
            };
            self.results(worker, vec![result]);
        }

        /// What a worker sends when it gets SIGTERM.
        fn goodbye(&mut self, worker: WorkerId) {
            self.send(Event::WorkerMsg {
                worker,
                body: worker_message::Body::Goodbye(pb::Goodbye {
                    reason: "SIGTERM".into(),
                }),
            });
        }
    }

    /// A worker stopping on a signal (Slurm pre-emption) hands its tasks back: they run
    /// elsewhere without using up a retry (here `retries: 0`), and its late results are
    /// discarded. Only `FREE_ATTEMPTS` such hand-backs are free.
    #[test]
    fn a_stopping_worker_hands_its_tasks_back_without_using_retries() {
        let mut h = Reactor::new(0, 60_000);
        let a = h.connect("a", 2);
        let run = h.submit();
        let first = h.assigned(a);
        assert_eq!(first.len(), 2);
        h.goodbye(a);
        // Its results, sent as it died, come too late.
        h.succeed(a, &first);
        for (attempt, name) in (2..).zip(["b", "c", "d"]) {
            let w = h.connect(name, 2);
            let tasks = h.assigned(w);
            assert_eq!(tasks.len(), 2);
            assert!(tasks.iter().all(|t| t.attempt == attempt), "{tasks:?}");
            h.goodbye(w);
        }
        // The fourth hand-back counts: with `retries: 0` the tasks fail.
        let st = h.final_status(run);
        assert_eq!(st.state, "failed", "{:?}", st.tasks);
        assert!(
            st.tasks
                .iter()
                .all(|t| t.attempts == 4 && t.error.contains("worker d stopped")),
            "{:?}",
            st.tasks
        );
    }

    /// A worker whose batch job ends before a task's `timeout:` would is not given it (the
    /// job's end would kill it and cost an attempt); a worker with the time is.
    #[test]
    fn tasks_wait_for_a_worker_with_time_for_their_timeout() {
        let mut h = Reactor::with_steps(
            60_000,
            "  s:\n    uses: command\n    with:\n      run: \"true\"\n    for_each: plate\n    timeout: 1h\n",
        );
        let short = h.connect_ending("short", 2, Some(1800));
        let run = h.submit();
        assert!(h.nothing_sent_to(short), "30 minutes left: no task");
        let long = h.connect_ending("long", 1, Some(4 * 3600));
        let first = h.assigned(long);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].timeout_s, 3600);
        h.succeed(long, &first);
        let second = h.assigned(long);
        h.succeed(long, &second);
        assert!(h.nothing_sent_to(short));
        assert_eq!(h.final_status(run).state, "succeeded");
    }

    /// A goodbye closes the worker's stream (its end of it waits for that before exiting).
    #[test]
    fn a_goodbye_closes_the_workers_stream() {
        let mut h = Reactor::new(0, 60_000);
        let a = h.connect("a", 2);
        h.engine.react(Event::WorkerMsg {
            worker: a,
            body: worker_message::Body::Goodbye(pb::Goodbye {
                reason: "SIGTERM".into(),
            }),
        });
        assert_eq!(h.comm.take(), vec![Sent::Left(a)]);
    }

    #[test]
    fn a_task_handed_back_once_succeeds_with_no_retries_left() {
        let mut h = Reactor::new(0, 60_000);
        let a = h.connect("a", 2);
        let run = h.submit();
        let first = h.assigned(a);
        h.goodbye(a);
        let b = h.connect("b", 2);
        let again = h.assigned(b);
        assert_eq!(again.len(), first.len());
        h.succeed(b, &again);
        let st = h.final_status(run);
        assert_eq!(st.state, "succeeded");
        assert!(st.tasks.iter().all(|t| t.attempts == 2 && t.worker == "b"));
    }

    /// A worker is told which of its results are saved (it may then forget the state it
    /// kept to finish them again) once they are in the database; failed ones are not.
    #[test]
    fn results_are_acknowledged_once_saved() {
        let mut h = Reactor::new(1, 60_000);
        let a = h.connect("a", 2);
        let run = h.submit();
        let first = h.assigned(a);
        assert!(first.len() >= 2, "{first:?}");
        h.fail(a, &first[0], "boom", true);
        assert!(h.saved.get(&a).is_none_or(Vec::is_empty));
        h.succeed(a, &first[1..]);
        let want: Vec<(u64, u32)> = first[1..].iter().map(|t| (t.task_id, t.attempt)).collect();
        let got: Vec<(u64, u32)> = h.saved[&a].iter().map(|t| (t.task_id, t.attempt)).collect();
        assert_eq!(got, want);
        assert_eq!(h.engine.db.load_action_cache().unwrap().len(), want.len());
        // An unforced run keeps no list of its done tasks: the cache is that list.
        assert!(h.engine.db.done_in_run(run).unwrap().is_empty());
    }

    /// A forced run records which tasks it has run (so that, resumed after a crash, it does
    /// not force them again) until it ends; then the record is dropped.
    #[test]
    fn a_forced_run_keeps_its_done_tasks_until_it_ends() {
        let mut h = Reactor::new(1, 60_000);
        let a = h.connect("a", 64);
        let run = h.submit_forcing(vec!["all".into()]);
        let first = h.assigned(a);
        assert!(first.len() >= 2, "{first:?}");
        h.succeed(a, &first[..1]);
        assert_eq!(h.engine.db.done_in_run(run).unwrap().len(), 1);
        h.succeed(a, &first[1..]);
        assert_eq!(h.final_status(run).state, "succeeded");
        assert!(h.engine.db.done_in_run(run).unwrap().is_empty());
    }

    /// Results that arrive in the same batch of events as the worker's goodbye are saved and
    /// acknowledged before its stream is closed.
    #[test]
    fn results_just_before_a_goodbye_are_acknowledged() {
        let mut h = Reactor::new(1, 60_000);
        let a = h.connect("a", 2);
        h.submit();
        let first = h.assigned(a);
        // One batch: the results are handled, but not yet journaled, when the goodbye comes.
        h.engine.handle(Event::WorkerMsg {
            worker: a,
            body: worker_message::Body::Results(TaskResults {
                results: succeeded(&first),
            }),
        });
        h.goodbye(a);
        assert_eq!(h.saved.get(&a).map_or(0, Vec::len), first.len());
    }

    #[test]
    fn lost_worker_tasks_go_elsewhere_with_attempts_counted() {
        let mut h = Reactor::new(1, 60_000);
        let a = h.connect("a", 2);
        let run = h.submit();
        let first = h.assigned(a);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|t| t.attempt == 1));
        let b = h.connect("b", 2);
        assert!(h.nothing_sent_to(b), "nothing waits for b yet");
        h.send(Event::WorkerGone {
            worker: a,
            why: "test".into(),
        });
        let again = h.assigned(b);
        assert_eq!(
            again
                .iter()
                .map(|t| (t.task_id, t.attempt))
                .collect::<Vec<_>>(),
            first.iter().map(|t| (t.task_id, 2)).collect::<Vec<_>>()
        );
        // A late result from the lost worker's attempt is ignored.
        h.succeed(a, &first);
        h.succeed(b, &again);
        let st = h.final_status(run);
        assert_eq!(st.state, "succeeded");
        assert!(
            st.tasks.iter().all(|t| t.attempts == 2 && t.worker == "b"),
            "{:?}",
            st.tasks
        );
    }

    #[test]
    fn progress_of_the_running_attempt_shows_in_status_and_stale_progress_does_not() {
        let mut h = Reactor::new(1, 60_000);
        let a = h.connect("a", 1);
        let run = h.submit();
        let first = h.assigned(a);
        for (attempt, message) in [
            (1, "fold 2/5: epoch 3/30"),
            (7, "from an attempt that is not running"),
        ] {
            h.send(Event::WorkerMsg {
                worker: a,
                body: worker_message::Body::Progress(pb::TaskProgress {
                    task_id: first[0].task_id,
                    attempt,
                    message: message.into(),
                }),
            });
        }
        let st = h.status(run);
        let running: Vec<_> = st.tasks.iter().filter(|t| t.state == "running").collect();
        assert_eq!(running[0].progress, "fold 2/5: epoch 3/30");
        assert!(
            st.steps
                .iter()
                .any(|s| s.note.ends_with("fold 2/5: epoch 3/30")),
            "{:?}",
            st.steps
        );
        h.succeed(a, &first);
    }

    /// Leases are judged on the engine's clock, which the test moves with ticks.
    #[test]
    fn silent_worker_loses_its_lease() {
        let mut h = Reactor::new(1, 300);
        let t0 = Instant::now();
        let a = h.connect("a", 2);
        let run = h.submit();
        let first = h.assigned(a);
        let b = h.connect("b", 2);
        // 200 ms on, b sends a heartbeat; a says nothing.
        h.send(Event::Tick(t0 + Duration::from_millis(200)));
        h.send(Event::WorkerMsg {
            worker: b,
            body: worker_message::Body::Heartbeat(Default::default()),
        });
        assert!(h.nothing_sent_to(b), "within its lease a keeps its tasks");
        // At 450 ms a has been silent past its 300 ms lease; b has not.
        h.send(Event::Tick(t0 + Duration::from_millis(450)));
        let again = h.assigned(b);
        assert_eq!(again.len(), first.len());
        h.succeed(b, &again);
        assert_eq!(h.final_status(run).state, "succeeded");
    }

    #[test]
    fn retry_limit_is_honoured() {
        let mut h = Reactor::new(0, 60_000);
        let a = h.connect("a", 1);
        let run = h.submit();
        let first = h.assigned(a);
        assert_eq!(first.len(), 1, "one CPU, one task at a time");
        h.fail(a, &first[0], "exit status 1", true);
        let second = h.assigned(a);
        assert_ne!(
            second[0].task_id, first[0].task_id,
            "the failed task is not retried (retries: 0)"
        );
        h.succeed(a, &second);
        let st = h.final_status(run);
        assert_eq!(st.state, "failed");
        let failed: Vec<_> = st.tasks.iter().filter(|t| t.state == "failed").collect();
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].error.contains("attempt 1 of 1") && failed[0].error.contains("bad pixel"),
            "{}",
            failed[0].error
        );
    }

    #[test]
    fn a_transient_failure_is_retried_on_the_next_round() {
        let mut h = Reactor::new(1, 60_000);
        let a = h.connect("a", 1);
        let run = h.submit();
        let first = h.assigned(a);
        h.fail(a, &first[0], "input P1/A01.tif unavailable", true);
        // The retry goes to the front of the queue.
        let second = h.assigned(a);
        assert_eq!(
            (second[0].task_id, second[0].attempt),
            (first[0].task_id, 2)
        );
        h.succeed(a, &second);
        let third = h.assigned(a);
        h.succeed(a, &third);
        assert_eq!(h.final_status(run).state, "succeeded");
    }

    #[test]
    fn a_deterministic_refusal_is_not_retried() {
        let mut h = Reactor::new(2, 60_000);
        let a = h.connect("a", 1);
        let run = h.submit();
        let first = h.assigned(a);
        h.fail(a, &first[0], "plate map has no column `treatment`", false);
        let second = h.assigned(a);
        assert_ne!(
            second[0].task_id, first[0].task_id,
            "a refusal is final even with retries: 2"
        );
        h.succeed(a, &second);
        let st = h.final_status(run);
        let failed: Vec<_> = st.tasks.iter().filter(|t| t.state == "failed").collect();
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].error.contains("not retried"),
            "{}",
            failed[0].error
        );
    }

    /// A second run of the same pipeline finds every task in the action cache: nothing is
    /// sent to any worker.
    #[test]
    fn a_rerun_sends_nothing() {
        let mut h = Reactor::new(1, 60_000);
        let a = h.connect("a", 2);
        let run = h.submit();
        let tasks = h.assigned(a);
        h.succeed(a, &tasks);
        assert_eq!(h.final_status(run).state, "succeeded");
        let again = h.submit();
        let st = h.final_status(again);
        assert_eq!(st.state, "succeeded");
        assert!(
            st.tasks.iter().all(|t| t.state == "cached"),
            "{:?}",
            st.tasks
        );
        assert!(h.nothing_sent_to(a));
    }
}
