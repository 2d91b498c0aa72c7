//! The worker's life on the wire: connect, say hello with its resources, run what it is given,
//! send results back in batches, heartbeat, and reconnect when the coordinator goes away.

use crate::blobs::{upload_missing, GrpcFetcher};
use crate::exec::{execute, ExecEnv};
use plateflow_access::{Access, Client};
use plateflow_proto::v1::{
    coordinator_message, worker_message, Goodbye, Heartbeat, Resources, TaskProgress, TaskResult,
    TaskResults, WorkerHello, WorkerMessage,
};
use plateflow_store::{BlobStore, Digest};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use plateflow_proto::MAX_MESSAGE_BYTES;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    pub name: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub gpu_ids: Vec<u32>,
    /// The worker's blob cache, or the coordinator's own store when `shared_store` is set.
    pub store_dir: PathBuf,
    pub shared_store: bool,
    /// Input images can be read where the coordinator found them.
    pub shared_fs: bool,
    pub scratch_dir: PathBuf,
    /// Give up after this long without a coordinator (a batch job must not wait forever).
    pub reconnect_timeout: Duration,
    /// The cluster token and how to check the coordinator's certificate.
    pub access: Access,
    /// End after this long without a task (a batch allocation is then released).
    pub idle_timeout: Option<Duration>,
    /// The batch-system allocation this worker runs in (Slurm job id), if any.
    pub allocation: String,
    /// When its batch job ends (the job's time limit), if it does: the coordinator gives it
    /// only tasks whose `timeout:` ends before then.
    pub ends_at: Option<std::time::Instant>,
}

/// How a session ended.
enum Ended {
    /// The coordinator closed it: reconnect.
    Closed,
    /// Idle past `idle_timeout`: the worker ends.
    Idle,
    /// A stop signal: the worker said goodbye and ends.
    Stopped,
}

/// How long a failed task's result waits before it is sent (see the task loop).
const FAILURE_GRACE: Duration = Duration::from_millis(500);

/// Runs the worker until `shutdown` resolves or the coordinator stays unreachable too long.
pub async fn run_worker(
    cfg: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = BlobStore::open(&cfg.store_dir)?;
    // Its own corner of the scratch directory; what dead workers left there is removed.
    let scratch = crate::process::ScratchCorner::claim(&cfg.scratch_dir)
        .map_err(|e| anyhow::anyhow!("scratch directory {}: {e}", cfg.scratch_dir.display()))?;
    let resume_root = cfg.scratch_dir.join("resume");
    // Old states are only clutter: a directory that cannot be pruned does not stop the worker.
    if let Err(e) = crate::exec::prune_resume_states(&resume_root, crate::exec::RESUME_KEPT) {
        tracing::warn!(dir = %resume_root.display(), "cannot prune old training states: {e}");
    }
    let env = ExecEnv {
        store,
        scratch_root: scratch.dir.clone(),
        resume_root,
        shared_fs: cfg.shared_fs,
        decoded: Default::default(),
    };
    tokio::pin!(shutdown);
    let mut unreachable_since = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = connect(&cfg.coordinator, &cfg.access) => r,
        };
        let client = match attempt {
            Ok(c) => c,
            // Wrong or missing credentials stay wrong: say so and stop, do not retry.
            Err(e) if plateflow_access::is_refusal(&e) => {
                anyhow::bail!("{e:#} (this worker stops: retrying cannot help)")
            }
            Err(e) => {
                if unreachable_since.elapsed() > cfg.reconnect_timeout {
                    anyhow::bail!(
                        "coordinator {} unreachable for {:?}: {e}",
                        cfg.coordinator,
                        cfg.reconnect_timeout
                    );
                }
                tracing::debug!("coordinator not reachable yet: {e}");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        // The session watches `shutdown` itself: it says goodbye before it stops.
        let ended = session(&cfg, &env, client, shutdown.as_mut()).await;
        match ended {
            // Wrong or missing credentials stay wrong: say so and stop, do not retry.
            Err(e) if plateflow_access::is_refusal(&e) => {
                anyhow::bail!(
                    "the coordinator at {} refused this worker: {e:#}",
                    cfg.coordinator
                )
            }
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::Idle) => {
                tracing::info!(
                    "idle for {:?}: this worker ends",
                    cfg.idle_timeout.unwrap_or_default()
                );
                return Ok(());
            }
            Ok(Ended::Closed) => tracing::info!("coordinator closed the session; reconnecting"),
            Err(e) => tracing::warn!("session with coordinator lost: {e:#}; reconnecting"),
        }
        unreachable_since = tokio::time::Instant::now();
    }
}

async fn connect(addr: &str, access: &Access) -> anyhow::Result<Client> {
    Ok(
        plateflow_access::connect(addr, access, Duration::from_secs(5))
            .await?
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// How long an idle worker waits past its idle time for the coordinator to say its last
/// results are saved (then it exits anyway: an older coordinator never says so).
const SAVED_GRACE: Duration = Duration::from_secs(5);

/// How often a long-lived worker removes resumable states older than `RESUME_KEPT` (besides
/// at start): states whose results were never acknowledged would otherwise stay.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Removes the resumable states of results the coordinator says it has saved.
fn forget_saved(
    unsaved: &mut HashMap<(u64, u32), std::path::PathBuf>,
    saved: plateflow_proto::v1::ResultsSaved,
) {
    for t in saved.tasks {
        if let Some(state) = unsaved.remove(&(t.task_id, t.attempt)) {
            let _ = std::fs::remove_file(state);
        }
    }
}

/// One session. Running tasks belong to it: when it ends they are aborted (their processes
/// killed), since the coordinator re-queues them as soon as it notices the loss.
async fn session<F: std::future::Future<Output = ()>>(
    cfg: &WorkerConfig,
    env: &ExecEnv,
    mut client: Client,
    mut shutdown: std::pin::Pin<&mut F>,
) -> anyhow::Result<Ended> {
    let (out_tx, out_rx) = mpsc::channel::<WorkerMessage>(1024);
    out_tx
        .send(WorkerMessage {
            body: Some(worker_message::Body::Hello(WorkerHello {
                name: cfg.name.clone(),
                hostname: hostname(),
                resources: Some(Resources {
                    cpus: cfg.cpus,
                    gpus: cfg.gpu_ids.len() as u32,
                    memory_bytes: cfg.memory_bytes,
                }),
                gpu_ids: cfg.gpu_ids.clone(),
                shared_store: cfg.shared_store,
                allocation: cfg.allocation.clone(),
                cuda_build: cfg!(feature = "cuda"),
                seconds_left: cfg.ends_at.map(|end| {
                    end.saturating_duration_since(std::time::Instant::now())
                        .as_secs()
                }),
            })),
        })
        .await?;
    let mut inbound = client
        .worker_session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    let welcome = match inbound.message().await? {
        Some(m) => match m.body {
            Some(coordinator_message::Body::Welcome(w)) => w,
            _ => anyhow::bail!("coordinator did not welcome this worker"),
        },
        None => anyhow::bail!("coordinator closed the session at once"),
    };
    tracing::info!(worker_id = welcome.worker_id, "registered with coordinator");
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(welcome.heartbeat_ms.max(50) as u64));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Results, each with the resumable state to remove once the coordinator has saved it.
    let (res_tx, mut res_rx) =
        mpsc::unbounded_channel::<(TaskResult, Option<std::path::PathBuf>)>();
    let mut running: HashMap<(u64, u32), JoinHandle<()>> = HashMap::new();
    // States of results sent but not yet saved by the coordinator: a result lost on the way
    // (the connection, or the coordinator, gone) leaves the next attempt the finished state.
    let mut unsaved_states: HashMap<(u64, u32), std::path::PathBuf> = HashMap::new();
    let fetcher = GrpcFetcher {
        client: client.clone(),
    };

    let mut idle_since = Some(tokio::time::Instant::now());
    let mut last_prune = tokio::time::Instant::now();
    let outcome: anyhow::Result<Ended> = loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break Ok(Ended::Closed),
                    Err(e) => break Err(e.into()),
                };
                match msg.body {
                    Some(coordinator_message::Body::Assign(a)) => {
                        idle_since = None;
                        for spec in a.tasks {
                            let key = (spec.task_id, spec.attempt);
                            let (env, fetcher, res_tx) = (env.clone(), fetcher.clone(), res_tx.clone());
                            let mut client = client.clone();
                            let shared_store = cfg.shared_store;
                            // Only built-in steps report progress or keep a resumable state: no
                            // extra task or file call per `noop` or `command` (dispatch of many
                            // small tasks stays lean).
                            let builtin = !matches!(spec.kind.as_str(), "noop" | "command");
                            let progress = builtin
                                .then(|| progress_forwarder(out_tx.clone(), spec.task_id, spec.attempt));
                            let handle = tokio::spawn(async move {
                                let mut result = execute(&spec, &env, &fetcher, progress).await;
                                if !result.ok {
                                    // Slurm signals a job's task processes and this worker at
                                    // once: a task killed by that signal must not be reported
                                    // as failed (and use up a retry) before the worker's own
                                    // handler says goodbye, which discards this result.
                                    tokio::time::sleep(FAILURE_GRACE).await;
                                }
                                if !shared_store {
                                    if let Err(e) = upload_result_blobs(&mut client, &env.store, &result).await {
                                        result.ok = false;
                                        // The network or the coordinator's disk, not the
                                        // task: another attempt may pass (it was failed
                                        // for good, and its dependents skipped).
                                        result.transient = true;
                                        result.error = format!(
                                            "uploading outputs to the coordinator failed (is its store's disk full?): {e:#}"
                                        );
                                    }
                                }
                                // The state a finished step kept for another attempt goes once
                                // the coordinator has saved its result (`Saved`, below): a
                                // worker killed before then leaves the next attempt here the
                                // finished state, not step 0.
                                let state = (result.ok && builtin)
                                    .then(|| crate::exec::resume_path(&env.resume_root, &spec.cache_key))
                                    .flatten();
                                let _ = res_tx.send((result, state));
                            });
                            running.insert(key, handle);
                        }
                    }
                    Some(coordinator_message::Body::Saved(saved)) => {
                        forget_saved(&mut unsaved_states, saved);
                    }
                    Some(coordinator_message::Body::Cancel(c)) => {
                        for t in c.tasks {
                            if let Some(h) = running.remove(&(t.task_id, t.attempt)) {
                                h.abort();
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some(first) = res_rx.recv() => {
                // Batch whatever else is ready: one message for many fast tasks.
                let mut finished = vec![first];
                while finished.len() < 4096 {
                    match res_rx.try_recv() {
                        Ok(r) => finished.push(r),
                        Err(_) => break,
                    }
                }
                let mut results = Vec::with_capacity(finished.len());
                for (r, state) in finished {
                    running.remove(&(r.task_id, r.attempt));
                    if let Some(state) = state {
                        unsaved_states.insert((r.task_id, r.attempt), state);
                    }
                    results.push(r);
                }
                if running.is_empty() {
                    idle_since = Some(tokio::time::Instant::now());
                }
                let msg = WorkerMessage { body: Some(worker_message::Body::Results(TaskResults { results })) };
                if out_tx.send(msg).await.is_err() {
                    break Err(anyhow::anyhow!("session closed while sending results"));
                }
            }
            _ = &mut shutdown => {
                // Goodbye first: the coordinator re-queues the running tasks without using
                // up a retry and assigns nothing more here. Then the tasks are stopped.
                let msg = WorkerMessage { body: Some(worker_message::Body::Goodbye(Goodbye {
                    reason: "the worker received a stop signal (pre-emption, a time limit or a shutdown)".into(),
                })) };
                let _ = out_tx.send(msg).await;
                break Ok(Ended::Stopped);
            }
            _ = heartbeat.tick() => {
                if let (Some(limit), Some(since)) = (cfg.idle_timeout, idle_since) {
                    // Not before the last results are saved (or a grace time has passed), so
                    // that their states are not left behind.
                    let waited = since.elapsed();
                    let saved = unsaved_states.is_empty() || waited >= limit + SAVED_GRACE;
                    if running.is_empty() && waited >= limit && saved {
                        break Ok(Ended::Idle);
                    }
                }
                if last_prune.elapsed() >= PRUNE_EVERY {
                    last_prune = tokio::time::Instant::now();
                    if let Err(e) = crate::exec::prune_resume_states(&env.resume_root, crate::exec::RESUME_KEPT) {
                        tracing::warn!(dir = %env.resume_root.display(), "cannot prune old training states: {e}");
                    }
                }
                let running_refs = running.keys().map(|&(task_id, attempt)| plateflow_proto::v1::TaskRef { task_id, attempt }).collect();
                let msg = WorkerMessage { body: Some(worker_message::Body::Heartbeat(Heartbeat { running: running_refs })) };
                if out_tx.send(msg).await.is_err() {
                    break Err(anyhow::anyhow!("session closed while sending a heartbeat"));
                }
            }
        }
    };
    for (_, h) in running {
        h.abort();
    }
    if matches!(outcome, Ok(Ended::Stopped)) {
        // Let the goodbye reach the coordinator: it ends the session once it has it, after
        // saying which of the last results it has saved.
        drop(out_tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(coordinator_message::Body::Saved(saved)) = m.body {
                    forget_saved(&mut unsaved_states, saved);
                }
            }
        })
        .await;
    }
    outcome
}

/// A task's progress messages, forwarded to the coordinator at most once a second (the
/// latest wins); the forwarder ends with the task.
fn progress_forwarder(
    out: mpsc::Sender<WorkerMessage>,
    task_id: u64,
    attempt: u32,
) -> crate::exec::ProgressTx {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut last_sent = tokio::time::Instant::now() - Duration::from_secs(1);
        let mut pending: Option<String> = None;
        loop {
            let wait = (last_sent + Duration::from_secs(1))
                .saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => pending = Some(m),
                    None => break,
                },
                _ = tokio::time::sleep(wait), if pending.is_some() => {}
            }
            if pending.is_some() && last_sent.elapsed() >= Duration::from_secs(1) {
                let message = pending.take().expect("checked");
                let msg = WorkerMessage {
                    body: Some(worker_message::Body::Progress(TaskProgress {
                        task_id,
                        attempt,
                        message,
                    })),
                };
                if out.send(msg).await.is_err() {
                    break;
                }
                last_sent = tokio::time::Instant::now();
            }
        }
    });
    tx
}

async fn upload_result_blobs(
    client: &mut Client,
    store: &BlobStore,
    result: &TaskResult,
) -> anyhow::Result<()> {
    let mut digests: Vec<Digest> = Vec::new();
    for d in result
        .outputs
        .iter()
        .filter_map(|o| o.digest.as_ref())
        .chain(result.stdout.as_ref())
        .chain(result.stderr.as_ref())
    {
        digests.push(Digest::try_from(d)?);
    }
    if digests.is_empty() {
        return Ok(());
    }
    upload_missing(client, store, &digests).await
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
