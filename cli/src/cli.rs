//! The `plateflow` command line: one binary for the laptop (`run`, `demo`) and the cluster
//! (`coordinator`, `worker`, `submit`, `status`), plus `explain`, `lineage`, `validate`.

use crate::lineage;
use crate::progress::{self, Progress};
use clap::{Args, Parser, Subcommand};
use plateflow_access::{Access, Client, Token};
use plateflow_coordinator::engine::{Engine, EngineConfig, Event};
use plateflow_coordinator::security::ServerSecurity;
use plateflow_coordinator::{dryrun, server, spec};
use plateflow_proto::v1::{RunStatus, StatusRequest, SubmitRequest, WatchRequest};
use plateflow_worker::{run_worker, WorkerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Parser)]
#[command(
    name = "plateflow",
    version,
    about = "Distributed, incremental pipelines for high-throughput microscopy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a pipeline on this machine: embedded coordinator and local workers over loopback gRPC.
    Run(RunArgs),
    /// Generate a small synthetic multi-plate image set with a pipeline, and run it.
    Demo {
        /// Where to write the demo (data, pipeline, results).
        #[arg(long, default_value = "plateflow-demo")]
        dir: PathBuf,
        /// Plates (at least 3: the last is held out for evaluation, the others cross-validated).
        #[arg(long, default_value_t = 4)]
        plates: usize,
        /// Wells per plate (rows of 6: A01..A06, B01, ...).
        #[arg(long, default_value_t = 24)]
        wells: usize,
        /// Fields of view per well.
        #[arg(long, default_value_t = 2)]
        sites: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        size: u32,
        /// Only generate the files.
        #[arg(long)]
        no_run: bool,
    },
    /// Check a pipeline file and report every problem found.
    Validate { pipeline: PathBuf },
    /// Say why a task would run (or that it is cached).
    Explain {
        pipeline: PathBuf,
        /// A task label such as `count[plate=P1]`, or a step name.
        task: String,
        /// Coordinator state directory (default: the pipeline's workspace).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Trace an output back to the input files and parameters that made it.
    Lineage {
        pipeline: PathBuf,
        /// A task label, a file under the results directory, or a digest.
        target: String,
    },
    /// Check what this node offers (cores, memory, GPUs, CUDA build, store, coordinator).
    Doctor {
        /// The store directory a worker here would use.
        #[arg(long, default_value = ".plateflow-worker/store")]
        store: PathBuf,
        /// A coordinator to try to reach (host:port), with this node's token and TLS pin.
        #[arg(long)]
        coordinator: Option<String>,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// List the pipeline's runs with the scores of their train and evaluate steps.
    Runs {
        pipeline: PathBuf,
        /// Coordinator state directory (default: the pipeline's workspace).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Compare two runs' models metric by metric, with a paired interval for the difference.
    Compare {
        pipeline: PathBuf,
        /// The earlier run's id (see `plateflow runs`).
        a: u64,
        /// The later run's id.
        b: u64,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Print the captured stdout (or stderr) of a task's last successful run.
    Logs {
        pipeline: PathBuf,
        /// A task label such as `count[plate=P1]`.
        task: String,
        #[arg(long)]
        stderr: bool,
        /// Coordinator state directory (default: the pipeline's workspace).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Serve the coordinator over gRPC for workers on other machines.
    Coordinator(CoordinatorArgs),
    /// Run tasks for a coordinator.
    Worker(WorkerArgs),
    /// Send a pipeline to a running coordinator.
    Submit {
        pipeline: PathBuf,
        #[arg(
            long,
            env = "PLATEFLOW_COORDINATOR",
            default_value = "http://127.0.0.1:7700"
        )]
        coordinator: String,
        /// Step names or task labels to run even when cached (`all` for everything).
        #[arg(long)]
        force: Vec<String>,
        /// Follow progress until the run ends; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Show runs and their tasks.
    Status {
        /// A run id (default: all runs).
        run: Option<u64>,
        #[arg(
            long,
            env = "PLATEFLOW_COORDINATOR",
            default_value = "http://127.0.0.1:7700"
        )]
        coordinator: String,
        /// List tasks that ran, failed or were skipped, with their reasons.
        #[arg(long)]
        tasks: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// List the step kinds this build provides, with their parameters.
    Kinds,
    /// Batch allocations made by the coordinator's allocator (`alloc list`).
    Alloc {
        #[command(subcommand)]
        what: AllocCommand,
    },
}

#[derive(Subcommand)]
pub enum AllocCommand {
    /// Every allocation with its state, workers, duration and what happened to it.
    List {
        /// The coordinator's state directory.
        #[arg(long, default_value = ".plateflow-coordinator")]
        state: PathBuf,
    },
}

#[derive(Args)]
pub struct RunArgs {
    pub pipeline: PathBuf,
    /// Local worker processes' worth of task slots.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// CPUs each local worker offers (default: this machine's CPUs shared among workers).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// List what would run and why, without running.
    #[arg(long)]
    pub dry_run: bool,
    /// Step names or task labels to run even when cached (`all` for everything).
    #[arg(long)]
    pub force: Vec<String>,
    /// Print the final status as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CoordinatorArgs {
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Database and blob store.
    #[arg(long, default_value = ".plateflow-coordinator")]
    pub state: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// A worker silent this long is declared lost.
    #[arg(long, default_value_t = 10_000)]
    pub lease_ms: u64,
    /// The cluster token file workers and clients must present (created owner-only when
    /// absent; default <state>/token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Accept calls without the token: only for a trusted single-user machine.
    #[arg(long)]
    pub no_auth: bool,
    /// Serve Prometheus `/metrics` and a status page (`/`) over HTTP here, e.g.
    /// 127.0.0.1:7701. Read-only and without the token: keep it on loopback or a trusted
    /// network.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    #[command(flatten)]
    pub slurm: SlurmArgs,
    /// Pipelines, their images and their results must lie under this directory (repeat for
    /// several); without it a submitted pipeline may name any path this user can reach.
    #[arg(long)]
    pub allow_root: Vec<PathBuf>,
    /// Serve TLS with this certificate (PEM; with --tls-key).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a self-signed certificate made once in <state>/tls; workers pin the
    /// fingerprint printed at start (--tls-fingerprint).
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Connections open at once (at most half the open-file limit). When full, the oldest
    /// connection that never sent a byte makes room.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a new connection has to start its handshake.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_s: u64,
    /// Seconds without a byte from a peer before its connection is closed (live peers answer
    /// the server's pings every 5 s).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_s: u64,
}

/// Automatic allocation of workers as Slurm jobs.
#[derive(Args, Clone, Debug)]
pub struct SlurmArgs {
    /// Submit worker jobs to this Slurm partition when tasks wait and no worker takes them.
    #[arg(long)]
    pub slurm_partition: Option<String>,
    /// Time limit of each allocation (sbatch --time).
    #[arg(long, default_value = "01:00:00")]
    pub slurm_time: String,
    /// Nodes per allocation (one worker each).
    #[arg(long, default_value_t = 1)]
    pub slurm_nodes: u32,
    /// CPUs per node (sbatch --cpus-per-task; default: Slurm's).
    #[arg(long)]
    pub slurm_cpus: Option<u32>,
    /// Memory per node (sbatch --mem, e.g. 16G).
    #[arg(long)]
    pub slurm_mem: Option<String>,
    /// Allocations alive at once.
    #[arg(long, default_value_t = 4)]
    pub slurm_max_allocations: usize,
    /// Another sbatch option for every allocation (repeat), e.g. --slurm-arg=--gres=gpu:1.
    #[arg(long, allow_hyphen_values = true)]
    pub slurm_arg: Vec<String>,
    /// Workers end after this long without a task, releasing their allocation.
    #[arg(long, default_value_t = 60)]
    pub slurm_idle_timeout_s: u64,
    /// The address workers on compute nodes use to reach this coordinator (default: this
    /// host's name and the --listen port).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Seconds between the allocator's looks at the queue.
    #[arg(long, default_value_t = 2.0)]
    pub alloc_interval_s: f64,
}

/// How a worker or client proves itself to the coordinator and checks its certificate.
#[derive(Args, Clone, Debug)]
pub struct AccessArgs {
    /// The cluster token file the coordinator wrote (owner-only permissions).
    #[arg(long, env = "PLATEFLOW_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust exactly the coordinator certificate with this SHA-256 fingerprint (it prints
    /// it at start).
    #[arg(long, env = "PLATEFLOW_TLS_FINGERPRINT")]
    pub tls_fingerprint: Option<String>,
    /// Trust coordinator certificates signed by this CA (PEM).
    #[arg(long, env = "PLATEFLOW_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl AccessArgs {
    fn access(&self) -> anyhow::Result<Access> {
        Access::from_args(
            self.token_file.as_deref(),
            self.tls_ca.clone(),
            self.tls_fingerprint.as_deref(),
        )
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    #[arg(
        long,
        env = "PLATEFLOW_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    pub coordinator: String,
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory offered, e.g. `16G` (default: the machine's total).
    #[arg(long)]
    pub memory: Option<String>,
    /// GPU ids offered, e.g. `0,1` (default: those in CUDA_VISIBLE_DEVICES).
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<u32>,
    /// Blob cache (or, with --shared-store, the coordinator's store).
    #[arg(long, default_value = ".plateflow-worker/store")]
    pub store: PathBuf,
    /// The store directory is the coordinator's own (shared filesystem): no copies.
    #[arg(long)]
    pub shared_store: bool,
    /// Input images are readable at the coordinator's paths.
    #[arg(long)]
    pub shared_fs: bool,
    #[arg(long, default_value = ".plateflow-worker/scratch")]
    pub scratch: PathBuf,
    #[arg(long)]
    pub name: Option<String>,
    /// Exit after this many seconds without a coordinator.
    #[arg(long, default_value_t = 300)]
    pub reconnect_timeout_s: u64,
    /// End after this many seconds without a task, so that a batch allocation is released
    /// when the queue drains.
    #[arg(long)]
    pub idle_timeout_s: Option<u64>,
    /// How long this worker may run, e.g. `2h`, `01:30:00` or `none` (default: in a Slurm
    /// job, the job's time left; elsewhere, none). It is given only tasks whose `timeout:`
    /// ends before then.
    #[arg(long)]
    pub time_limit: Option<String>,
    /// The largest image (megapixels per page) this worker decodes; larger headers, and
    /// strips that inflate past their header, are refused naming the file.
    #[arg(long, default_value_t = 256)]
    pub max_image_megapixels: u64,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// Ctrl-C or SIGTERM (what `kill`, Slurm and container runtimes send). The handlers are
/// installed when this is called, not when the future is first polled: a signal that came
/// while the process was still starting (a worker claiming its scratch) killed it by the
/// default action, leaving its scratch behind and saying no goodbye.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            (Ok(mut only), Err(_)) | (Err(_), Ok(mut only)) => {
                only.recv().await;
            }
            // No handler could be installed: the default actions stop the process.
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}

fn cpus_here() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn http(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// The state directory of a pipeline (its workspace unless `--state` says otherwise), for
/// the commands that read a pipeline's history.
fn history_config(
    pipeline: &std::path::Path,
    state: Option<PathBuf>,
) -> anyhow::Result<plateflow_coordinator::engine::EngineConfig> {
    let text = std::fs::read_to_string(pipeline)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", pipeline.display()))?;
    let p =
        plateflow_coordinator::spec::parse(pipeline, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = plateflow_coordinator::engine::EngineConfig::new(state.unwrap_or(p.workspace));
    anyhow::ensure!(
        cfg.db_path().exists(),
        "no runs recorded for {} yet (no {}): run it first",
        pipeline.display(),
        cfg.db_path().display()
    );
    Ok(cfg)
}

/// Runs the command; the exit code says success (0), failure (1) or bad input (2).
pub async fn main(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run_local(args).await,
        Command::Demo {
            dir,
            plates,
            wells,
            sites,
            size,
            no_run,
        } => {
            anyhow::ensure!(
                (1..=26 * 6).contains(&wells) && sites >= 1 && (32..=4096).contains(&size),
                "--wells must be 1..156, --sites at least 1, --size 32..4096"
            );
            anyhow::ensure!(
                (3..=99).contains(&plates),
                "--plates must be 3..99: the demo holds out its last plate for evaluation and cross-validates across the others"
            );
            let layout = crate::demo::Layout {
                plates,
                wells,
                sites,
                size,
            };
            let pipeline = crate::demo::generate(&dir, &layout)?;
            eprintln!(
                "demo written to {} (pipeline {})",
                dir.display(),
                pipeline.display()
            );
            if no_run {
                return Ok(0);
            }
            run_local(RunArgs {
                pipeline,
                workers: 2,
                cpus: None,
                dry_run: false,
                force: vec![],
                json: false,
                quiet: false,
            })
            .await
        }
        Command::Validate { pipeline } => match plateflow_coordinator::run::validate(&pipeline) {
            Ok(p) => {
                outln!("{}: valid ({} steps)", pipeline.display(), p.steps.len());
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(2)
            }
        },
        Command::Explain {
            pipeline,
            task,
            state,
        } => {
            let sim = dryrun::simulate(&pipeline, state.as_deref(), vec![])?;
            out!("{}", dryrun::render_explain(&sim, &task)?);
            Ok(0)
        }
        Command::Logs {
            pipeline,
            task,
            stderr,
            state,
        } => {
            let text = lineage::logs(&pipeline, &task, stderr, state.as_deref())?;
            std::io::Write::write_all(&mut std::io::stdout(), &text)?;
            Ok(0)
        }
        Command::Doctor {
            store,
            coordinator,
            access,
        } => {
            // A bad token file is itself a finding: report it with the other checks.
            let (access, problem) = match access.access() {
                Ok(a) => (a, None),
                Err(e) => (Access::default(), Some(format!("{e:#}"))),
            };
            let (mut text, mut ok) =
                crate::doctor::run(&store, coordinator.as_deref(), &access).await;
            if let Some(p) = problem {
                text.push_str(&format!("FAIL  credentials: {p}\n"));
                ok = false;
            }
            out!("{text}");
            Ok(if ok { 0 } else { 1 })
        }
        Command::Runs { pipeline, state } => {
            let cfg = history_config(&pipeline, state)?;
            out!(
                "{}",
                crate::history::list(&plateflow_coordinator::db::Db::open(&cfg.db_path())?)?
            );
            Ok(0)
        }
        Command::Compare {
            pipeline,
            a,
            b,
            state,
        } => {
            let cfg = history_config(&pipeline, state)?;
            let db = plateflow_coordinator::db::Db::open(&cfg.db_path())?;
            out!("{}", crate::history::compare(&db, &cfg.store_dir(), a, b)?);
            Ok(0)
        }
        Command::Alloc {
            what: AllocCommand::List { state },
        } => {
            let db = plateflow_coordinator::db::Db::open(&state.join("plateflow.db"))?;
            out!(
                "{}",
                plateflow_coordinator::alloc::render_list(&db.allocations()?)
            );
            Ok(0)
        }
        Command::Lineage { pipeline, target } => {
            out!("{}", lineage::trace(&pipeline, &target)?);
            Ok(0)
        }
        Command::Coordinator(args) => {
            let mut cfg = EngineConfig::new(args.state.clone());
            cfg.heartbeat = Duration::from_millis(args.heartbeat_ms);
            cfg.lease = Duration::from_millis(args.lease_ms);
            for r in &args.allow_root {
                cfg.allowed_roots.push(
                    std::fs::canonicalize(r)
                        .map_err(|e| anyhow::anyhow!("--allow-root {}: {e}", r.display()))?,
                );
            }
            if cfg.allowed_roots.is_empty() && !args.listen.ip().is_loopback() {
                eprintln!(
                    "note: no --allow-root: submitted pipelines may read and write anywhere \
                     this user can"
                );
            }
            // The state directory's lock first: a second coordinator started on it at the
            // same moment stops there, before it could write over the token or TLS identity
            // the first one's workers were given.
            let engine = Engine::start(cfg)?;
            let security = coordinator_security(&args)?;
            // What Slurm workers pin, from the identity just read (not read again).
            let tls_fingerprint = security.tls.as_ref().map(|t| t.fingerprint.clone());
            let listener = server::bind(args.listen).await?;
            eprintln!(
                "plateflow coordinator listening on {} (state in {})",
                listener.local_addr()?,
                args.state.display()
            );
            if let Some(addr) = args.http {
                let http = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("--http {addr}: cannot listen: {e}"))?;
                eprintln!(
                    "status page http://{0}/ and metrics http://{0}/metrics",
                    http.local_addr()?
                );
                tokio::spawn(plateflow_coordinator::monitor::serve(
                    engine.clone(),
                    http,
                    shutdown_signal(),
                ));
            }
            let allocator = match &args.slurm.slurm_partition {
                Some(_) => Some(tokio::spawn(start_allocator(
                    &args,
                    engine.clone(),
                    listener.local_addr()?,
                    tls_fingerprint,
                )?)),
                None => None,
            };
            let limits = plateflow_coordinator::connections::Limits {
                max: args.max_connections,
                handshake: Duration::from_secs(args.handshake_timeout_s.max(1)),
                idle: Duration::from_secs(args.idle_timeout_s.max(15)),
            };
            server::serve(engine, listener, security, limits, shutdown_signal()).await?;
            if let Some(a) = allocator {
                // It cancels its allocations when it sees the shutdown.
                let _ = tokio::time::timeout(Duration::from_secs(30), a).await;
            }
            Ok(0)
        }
        Command::Worker(args) => {
            plateflow_imaging::set_max_pixels(args.max_image_megapixels.saturating_mul(1 << 20));
            let memory_bytes = match &args.memory {
                Some(m) => spec::parse_bytes(m)
                    .ok_or_else(|| anyhow::anyhow!("--memory {m}: write it like 16G"))?,
                None => slurm_memory().or_else(total_memory).unwrap_or(0),
            };
            // GPUs: as given, else those the batch system made visible to this process.
            let gpus = if args.gpus.is_empty() {
                visible_gpus()
            } else {
                args.gpus
            };
            let cfg = WorkerConfig {
                coordinator: http(&args.coordinator),
                name: args
                    .name
                    .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id())),
                // Inside a Slurm job: what the job was given, not the whole node.
                cpus: args.cpus.or_else(slurm_cpus).unwrap_or_else(cpus_here),
                memory_bytes,
                gpu_ids: gpus,
                store_dir: args.store,
                shared_store: args.shared_store,
                shared_fs: args.shared_fs,
                scratch_dir: args.scratch,
                reconnect_timeout: Duration::from_secs(args.reconnect_timeout_s),
                access: args.access.access()?,
                idle_timeout: args.idle_timeout_s.map(Duration::from_secs),
                allocation: std::env::var("SLURM_JOB_ID").unwrap_or_default(),
                ends_at: worker_time_limit(args.time_limit.as_deref())
                    .await?
                    .map(|s| std::time::Instant::now() + Duration::from_secs(s)),
            };
            run_worker(cfg, shutdown_signal()).await?;
            Ok(0)
        }
        Command::Submit {
            pipeline,
            coordinator,
            force,
            wait,
            json,
            access,
        } => {
            let path = std::fs::canonicalize(&pipeline)
                .map_err(|e| anyhow::anyhow!("{}: {e}", pipeline.display()))?;
            let yaml = std::fs::read_to_string(&path)?;
            // Validate here too, so errors show with their source lines before anything is sent.
            if let Err(d) = spec::parse(&path, &yaml) {
                eprintln!("{d}");
                return Ok(2);
            }
            let mut client = connect(&coordinator, &access.access()?).await?;
            let resp = match client
                .submit(SubmitRequest {
                    pipeline_path: path.display().to_string(),
                    pipeline_yaml: yaml,
                    force,
                })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    eprintln!("{}", s.message());
                    // As `plateflow run`: 1 where the coordinator could not record the run
                    // (its own failure, not the pipeline's), else 2.
                    return Ok(if s.code() == tonic::Code::Internal {
                        1
                    } else {
                        2
                    });
                }
            };
            eprintln!("submitted run {} ({} tasks)", resp.run_id, resp.tasks);
            if !wait {
                outln!("{}", resp.run_id);
                return Ok(0);
            }
            let mut stream = client
                .watch(WatchRequest {
                    run_id: resp.run_id,
                })
                .await?
                .into_inner();
            let mut progress = Progress::new(json);
            let mut last: Option<RunStatus> = None;
            while let Some(st) = stream.message().await? {
                progress.update(&st);
                last = Some(st);
            }
            progress.finish();
            finish_report(last, json)
        }
        Command::Status {
            run,
            coordinator,
            tasks,
            json,
            access,
        } => {
            let mut client = connect(&coordinator, &access.access()?).await?;
            let runs = client
                .status(StatusRequest {
                    run_id: run.unwrap_or(0),
                    with_tasks: tasks,
                })
                .await?
                .into_inner()
                .runs;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &runs.iter().map(progress::to_json).collect::<Vec<_>>()
                    )?
                );
                return Ok(0);
            }
            for st in &runs {
                outln!("run {:>4}  {:<10} {}", st.run_id, st.state, st.pipeline);
                if run.is_some() || tasks {
                    out!("{}", progress::summary(st));
                    for t in st.tasks.iter().filter(|t| t.state != "failed") {
                        outln!(
                            "  {:<8} {} {}{}",
                            t.state,
                            t.label,
                            if t.reason.is_empty() {
                                String::new()
                            } else {
                                format!("({})", t.reason)
                            },
                            if t.progress.is_empty() {
                                String::new()
                            } else {
                                format!(" — {}", t.progress)
                            }
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Kinds => {
            for k in plateflow_contract::kinds::all_kinds() {
                outln!("{}@{}: {}", k.name, k.version, k.summary);
                // Defaults come from the typed parameters: the one place they are set.
                let defaults = plateflow_contract::StepParams::defaults(k.kind);
                for p in k.params {
                    let default = match defaults.get(p.name) {
                        Some(v) => format!(" (default {v})"),
                        None if p.required => " (required)".to_string(),
                        None => String::new(),
                    };
                    outln!("    {}{default}: {} — {}", p.name, p.ty.describe(), p.help);
                }
            }
            Ok(0)
        }
    }
}

async fn connect(addr: &str, access: &Access) -> anyhow::Result<Client> {
    let client = plateflow_access::connect(addr, access, Duration::from_secs(5))
        .await
        .map_err(|e| {
            if plateflow_access::is_refusal(&e) {
                e
            } else {
                anyhow::anyhow!("{e:#} (is `plateflow coordinator` running? set --coordinator)")
            }
        })?;
    Ok(client.max_decoding_message_size(plateflow_proto::MAX_MESSAGE_BYTES))
}

/// The Slurm allocator of a standalone coordinator: the job script's worker command line
/// (this binary, shared filesystem, the token file and TLS pin), then the allocation loop.
fn start_allocator(
    args: &CoordinatorArgs,
    engine: plateflow_coordinator::engine::EngineHandle,
    listening: SocketAddr,
    tls_fingerprint: Option<String>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let sa = &args.slurm;
    // A typo would otherwise fail every sbatch, one allocation at a time.
    anyhow::ensure!(
        plateflow_contract::units::parse_slurm_time(&sa.slurm_time).is_some(),
        "--slurm-time {}: write it as Slurm's --time takes it, e.g. 01:00:00, 90 (minutes) or 1-12:00:00",
        sa.slurm_time
    );
    let state = std::fs::canonicalize(&args.state)?;
    let advertise = sa.advertise.clone().unwrap_or_else(|| {
        if listening.ip().is_unspecified() {
            format!("{}:{}", hostname(), listening.port())
        } else {
            listening.to_string()
        }
    });
    let mut worker_args = vec!["--coordinator".to_string(), advertise];
    if !args.no_auth {
        let token = args
            .token_file
            .clone()
            .unwrap_or_else(|| args.state.join("token"));
        worker_args.push("--token-file".into());
        worker_args.push(std::fs::canonicalize(token)?.display().to_string());
    }
    if let Some(fingerprint) = tls_fingerprint {
        worker_args.push("--tls-fingerprint".into());
        worker_args.push(fingerprint);
    }
    worker_args.extend([
        "--idle-timeout-s".into(),
        sa.slurm_idle_timeout_s.to_string(),
        "--reconnect-timeout-s".into(),
        "60".into(),
        // The HPC norm: the state directory is on a filesystem every node mounts.
        "--shared-store".into(),
        "--shared-fs".into(),
        "--store".into(),
        state.join("store").display().to_string(),
        "--scratch".into(),
        state.join("scratch").join("slurm").display().to_string(),
    ]);
    let config = plateflow_coordinator::slurm::SlurmConfig {
        partition: sa.slurm_partition.clone().unwrap_or_default(),
        time: sa.slurm_time.clone(),
        nodes: sa.slurm_nodes,
        cpus_per_node: sa.slurm_cpus,
        mem: sa.slurm_mem.clone(),
        extra: sa.slurm_arg.clone(),
        worker_exe: std::env::current_exe()?,
        worker_args,
        dir: state.join("alloc"),
        command_timeout: Duration::from_secs(30),
    };
    eprintln!(
        "allocating workers on Slurm partition {} (up to {} allocations of {} node(s), {} each; job script in {})",
        config.partition,
        sa.slurm_max_allocations,
        config.nodes,
        config.time,
        config.dir.display()
    );
    let limits = plateflow_coordinator::alloc::Limits {
        max_allocations: sa.slurm_max_allocations.max(1),
        interval: Duration::from_secs_f64(sa.alloc_interval_s.max(0.1)),
        startup_grace: Duration::from_secs(120),
    };
    let db = plateflow_coordinator::db::Db::open(&state.join("plateflow.db"))?;
    let allocator = plateflow_coordinator::alloc::Allocator::new(
        plateflow_coordinator::slurm::Slurm::new(config),
        limits,
        engine,
        db,
    );
    Ok(allocator.run(shutdown_signal()))
}

/// The token and TLS identity of a standalone coordinator, announced on stderr (the token's
/// path, never the token).
fn coordinator_security(args: &CoordinatorArgs) -> anyhow::Result<ServerSecurity> {
    let token = if args.no_auth {
        eprintln!(
            "WARNING: --no-auth: anyone who can reach {} can submit pipelines and run commands \
             as this user",
            args.listen
        );
        None
    } else {
        let path = args
            .token_file
            .clone()
            .unwrap_or_else(|| args.state.join("token"));
        let token = Token::read_or_create(&path)?;
        eprintln!(
            "cluster token in {} (workers and clients: --token-file {})",
            path.display(),
            path.display()
        );
        Some(token)
    };
    let tls = plateflow_coordinator::security::tls_identity(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_self_signed
            .then(|| args.state.join("tls"))
            .as_deref(),
    )?;
    if let Some(t) = &tls {
        eprintln!(
            "TLS certificate fingerprint {} (workers and clients: --tls-fingerprint {})",
            t.fingerprint, t.fingerprint
        );
    }
    Ok(ServerSecurity { token, tls })
}

fn finish_report(last: Option<RunStatus>, json: bool) -> anyhow::Result<i32> {
    let st = last.ok_or_else(|| {
        anyhow::anyhow!("the coordinator ended the run's progress stream without a final status")
    })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&progress::to_json(&st))?);
    }
    eprint!("{}", progress::summary(&st));
    Ok(if st.state == "succeeded" { 0 } else { 1 })
}

/// The machine's memory, from /proc/meminfo.
fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPUs of this Slurm job step on this node (`srun -c`, else the job's share of the node).
fn slurm_cpus() -> Option<u32> {
    ["SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Memory of this Slurm job on this node, from `--mem` or `--mem-per-cpu` (MB).
fn slurm_memory() -> Option<u64> {
    let mb = |v: &str| -> Option<u64> { std::env::var(v).ok()?.trim().parse().ok() };
    mb("SLURM_MEM_PER_NODE")
        .or_else(|| Some(mb("SLURM_MEM_PER_CPU")? * slurm_cpus()? as u64))
        .map(|m| m << 20)
}

/// Seconds this worker has: `--time-limit` (`2h`, `01:30:00`), else its Slurm job's time
/// left (`squeue -o %L`), else none.
async fn worker_time_limit(given: Option<&str>) -> anyhow::Result<Option<u64>> {
    use plateflow_contract::units::{parse_seconds, parse_slurm_time};
    if let Some(text) = given {
        if matches!(text.to_ascii_lowercase().as_str(), "none" | "unlimited") {
            return Ok(None);
        }
        return match parse_seconds(text).or_else(|| parse_slurm_time(text)) {
            Some(s) => Ok(Some(s)),
            None => anyhow::bail!("--time-limit {text}: write it like 2h, 90m or 01:30:00"),
        };
    }
    let Ok(job) = std::env::var("SLURM_JOB_ID") else {
        return Ok(None);
    };
    let asked = plateflow_coordinator::slurm::slurm_cmd(
        "squeue",
        &["-h", "-j", &job, "-o", "%L"].map(String::from),
        Duration::from_secs(20),
    )
    .await;
    let left = match asked {
        Ok(text) => {
            let text = text.trim();
            if matches!(text, "UNLIMITED" | "NOT_SET") {
                return Ok(None);
            }
            parse_slurm_time(text).ok_or(format!("squeue said {text:?}"))
        }
        Err(e) => Err(format!("{e:#}")),
    };
    match left {
        Ok(s) => {
            tracing::info!(job = %job, "this worker's Slurm job ends in {}", plateflow_contract::units::show_seconds(s));
            Ok(Some(s))
        }
        Err(why) => {
            tracing::warn!(job = %job, "cannot tell when this Slurm job ends ({why}): tasks are given to it whatever their `timeout:`; pass --time-limit to say");
            Ok(None)
        }
    }
}

/// GPU ids from CUDA_VISIBLE_DEVICES (set by Slurm's `--gres=gpu` and by users).
fn visible_gpus() -> Vec<u32> {
    plateflow_learn::device::offered_gpus()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `plateflow run`: the same gRPC path as a cluster, all on loopback.
pub async fn run_local(args: RunArgs) -> anyhow::Result<i32> {
    // The file itself here; what it names in its data is checked when the run is planned
    // (one listing of the images, not two), before any task is sent.
    let pipeline = match spec::load(&args.pipeline) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    if args.dry_run {
        let sim = dryrun::simulate(&args.pipeline, None, args.force.clone())?;
        out!("{}", dryrun::render_dry_run(&sim));
        return Ok(0);
    }
    let mut cfg = EngineConfig::new(pipeline.workspace.clone());
    cfg.resume_unfinished = false;
    let engine = Engine::start(cfg.clone())?;
    let listener = server::bind("127.0.0.1:0".parse().expect("valid address")).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop = stop_rx.clone();
    // Even on loopback a token: other users of a shared login node can reach 127.0.0.1.
    let token = Token::generate()?;
    let security = ServerSecurity {
        token: Some(token.clone()),
        tls: None,
    };
    let server_task = tokio::spawn(server::serve(
        engine.clone(),
        listener,
        security,
        Default::default(),
        async move {
            let _ = stop.changed().await;
        },
    ));
    let fair = (cpus_here() / args.workers.max(1)).max(1);
    // A step that asks for more CPUs than a local worker offers would wait forever: on this
    // machine the workers offer at least the largest request (the OS shares the cores).
    let largest = pipeline
        .steps
        .iter()
        .map(|s| s.resources.cpus)
        .max()
        .unwrap_or(1);
    let cpus = args.cpus.unwrap_or(fair.max(largest));
    let offer = spec::against_data::LocalOffer {
        memory_bytes: total_memory().unwrap_or(0),
        gpus: visible_gpus().len() as u32,
        cuda_build: cfg!(feature = "cuda"),
    };
    if let Err(e) = spec::against_data::fits_local_workers(&pipeline, &offer) {
        eprintln!("{e}");
        return Ok(2);
    }
    if let Some(s) = pipeline.steps.iter().find(|s| s.resources.cpus > cpus) {
        eprintln!(
            "step `{}` asks for {} CPUs but --cpus gives each local worker {cpus}: its tasks \
             cannot start; lower its `resources: {{cpus: ...}}` or raise --cpus",
            s.name, s.resources.cpus
        );
        return Ok(2);
    }
    // Local workers are `plateflow worker` processes, exactly as on a cluster. Being small,
    // they also start each task's process far faster than the coordinator's process could.
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for i in 0..args.workers.max(1) {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("worker")
            .args(["--coordinator", &format!("http://{addr}")])
            .args(["--name", &format!("local-{}", i + 1)])
            .args(["--cpus", &cpus.to_string()])
            .arg("--store")
            .arg(cfg.store_dir())
            .args(["--shared-store", "--shared-fs"])
            .arg("--scratch")
            .arg(pipeline.workspace.join("scratch"))
            .args(["--reconnect-timeout-s", "30"])
            // No other worker can join a local run: a task kept for a worker with more time
            // than this Slurm job has left would wait for ever. It runs, and the job's end
            // stops it if it must.
            .args(["--time-limit", "none"])
            // The environment of a process is readable by its owner only (/proc/PID/environ).
            .env("PLATEFLOW_TOKEN", token.secret())
            .env_remove("PLATEFLOW_TOKEN_FILE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        // They die with this process, however it ends.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        workers.push(cmd.spawn().map_err(|e| {
            anyhow::anyhow!("cannot start a local worker ({}): {e}", exe.display())
        })?);
    }
    let path = std::fs::canonicalize(&args.pipeline)?;
    let yaml = std::fs::read_to_string(&path)?;
    let (reply, rx) = oneshot::channel();
    engine.send(Event::Submit {
        path,
        yaml,
        force: args.force.clone(),
        reply,
    });
    // Listing and hashing a large image set takes a while: show that something happens.
    let planning = Progress::spinner(
        args.quiet || args.json,
        "planning: listing and hashing inputs (unchanged files are not read again)",
    );
    let submitted = rx.await?;
    planning.finish_and_clear();
    let code = match submitted {
        Err(e) => {
            eprintln!("{e}");
            // Bad input (2), or the state directory's own failure (1: the pipeline is fine).
            match e {
                plateflow_coordinator::engine::SubmitError::Refused(_) => 2,
                plateflow_coordinator::engine::SubmitError::State(_) => 1,
            }
        }
        Ok((run_id, _)) => {
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            engine.send(Event::Watch { run_id, tx });
            let mut progress = Progress::new(args.quiet || args.json);
            let mut last = None;
            while let Some(Ok(st)) = rx.recv().await {
                progress.update(&st);
                let ended = !matches!(st.state.as_str(), "running" | "waiting");
                last = Some(st);
                if ended {
                    break;
                }
            }
            progress.finish();
            let code = finish_report(last, args.json)?;
            if !args.quiet {
                eprintln!(
                    "lock file: {}\nresults:   {}",
                    plateflow_coordinator::lockfile::lock_path(&pipeline.file).display(),
                    pipeline.results.display()
                );
            }
            code
        }
    };
    let _ = stop_tx.send(true);
    for mut w in workers {
        // Ask nicely (workers stop on SIGINT), then insist.
        if let Some(pid) = w.id() {
            unsafe {
                libc::kill(pid as i32, libc::SIGINT);
            }
        }
        if tokio::time::timeout(Duration::from_secs(3), w.wait())
            .await
            .is_err()
        {
            let _ = w.kill().await;
        }
    }
    let _ = server_task.await;
    Ok(code)
}
