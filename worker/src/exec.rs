//! Running one task: materialise its inputs in a scratch directory, run the kind, store the
//! declared outputs and captured logs as blobs, and report the result.

use crate::process::{Launch, TaskProcess};
use plateflow_contract::params::{CommandParams, StepParams, TaskParams};
use plateflow_contract::placeholders::{expand, prepare, shell_quote};
use plateflow_contract::StepKind;
use plateflow_proto::v1::{OutputBlob, TaskResult, TaskSpec};
use plateflow_store::{BlobStore, Digest};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where a worker gets blobs it lacks (from the coordinator over gRPC, in practice).
pub trait BlobFetcher: Send + Sync {
    /// Ensures `digest` is present and intact in `store`.
    fn fetch(
        &self,
        store: &BlobStore,
        digest: &Digest,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Everything a task execution needs from its worker.
#[derive(Debug, Clone)]
pub struct ExecEnv {
    /// The worker's blob store: its own cache, or the coordinator's in shared-store mode.
    pub store: BlobStore,
    pub scratch_root: PathBuf,
    /// Where long steps keep their state across attempts (`Context::resume`): beside the
    /// workers' corners, not in one, so a restarted worker, or another on the same
    /// filesystem, takes up what a killed one left.
    pub resume_root: PathBuf,
    /// Input images may be read at their coordinator-side absolute path.
    pub shared_fs: bool,
    /// Parameters already decoded, by (kind, step, JSON): a step's tasks share one decoding.
    pub decoded: ParamsCache,
}

/// Decoded parameters shared by the tasks of a step (thousands of small tasks per step).
pub type ParamsCache = std::sync::Arc<
    std::sync::Mutex<
        std::collections::HashMap<(String, String, String), std::sync::Arc<TaskParams>>,
    >,
>;

/// A task's typed parameters: decoded once per step and worker, then shared.
fn decode_params(spec: &TaskSpec, env: &ExecEnv) -> anyhow::Result<std::sync::Arc<TaskParams>> {
    let key = (
        spec.kind.clone(),
        spec.step.clone(),
        spec.params_json.clone(),
    );
    if let Some(p) = env.decoded.lock().expect("params cache").get(&key) {
        return Ok(p.clone());
    }
    let kind = StepKind::from_name(&spec.kind).ok_or_else(|| {
        anyhow::anyhow!(
            "this worker does not implement step kind `{}` (plateflow {})",
            spec.kind,
            env!("CARGO_PKG_VERSION")
        )
    })?;
    let p = TaskParams::decode(kind, &spec.step, &spec.params_json).map_err(|e| {
        anyhow::anyhow!(
            "parameters of step `{}` do not fit this worker's kind `{kind}` (plateflow {}): {e}",
            spec.step,
            env!("CARGO_PKG_VERSION")
        )
    })?;
    let p = std::sync::Arc::new(p);
    let mut cache = env.decoded.lock().expect("params cache");
    if cache.len() > 1024 {
        cache.clear(); // many runs' steps: start over rather than grow without bound
    }
    cache.insert(key, p.clone());
    Ok(p)
}

/// Runs a task to completion. Never panics on bad input: every problem becomes a failed
/// [`TaskResult`] with a message naming the file or the cause.
/// Where a running task's progress messages go ("fold 2/5: epoch 14/30").
pub type ProgressTx = tokio::sync::mpsc::UnboundedSender<String>;

pub async fn execute<F: BlobFetcher>(
    spec: &TaskSpec,
    env: &ExecEnv,
    fetcher: &F,
    progress: Option<ProgressTx>,
) -> TaskResult {
    let started = Instant::now();
    let mut result = TaskResult {
        task_id: spec.task_id,
        attempt: spec.attempt,
        ..Default::default()
    };
    // The parameters are decoded once, into the kind's typed struct.
    let params = decode_params(spec, env);
    // Errors from here on are I/O on the way (an input that could not be fetched): another
    // attempt may pass. A parameter that does not decode will not.
    let decoded = params.is_ok();
    let outcome = match params {
        Err(e) => Err(e),
        Ok(p) => match &p.params {
            StepParams::Noop(_) => Ok(CommandOutcome::default()),
            StepParams::Command(c) => run_command(spec, c, env, fetcher).await,
            _ => run_builtin(spec, p.clone(), env, fetcher, progress).await,
        },
    };
    match outcome {
        Ok(o) => {
            result.ok = o.error.is_none();
            result.error = o.error.unwrap_or_default();
            result.outputs = o.outputs;
            result.stdout = o.stdout.as_ref().map(Into::into);
            result.stderr = o.stderr.as_ref().map(Into::into);
            result.stderr_tail = o.stderr_tail;
            result.transient = o.transient;
        }
        Err(e) => {
            result.ok = false;
            result.error = format!("{e:#}");
            result.transient = decoded;
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// Why a command could not start (the OS error, and what to do where plateflow knows), and
/// whether another attempt might: an argument list over the system's limit (E2BIG) comes
/// from the task's own inputs, so every attempt would fail the same way; anything else
/// (a program missing on this node, a full process table) may pass on another attempt.
/// `values`, `bytes`: how many values the placeholders stood for, and their length.
fn start_failure(e: &std::io::Error, values: usize, bytes: usize) -> (String, bool) {
    if e.raw_os_error() == Some(libc::E2BIG) {
        let why = format!(
            "{e}; its {values} values ({} kB) are more than the system lets one command be \
             given: fan the step out finer (`for_each: [plate, well]`), or have the script \
             read the files under `inputs/` itself",
            bytes / 1000
        );
        (why, false)
    } else {
        (e.to_string(), true)
    }
}

#[derive(Default)]
struct CommandOutcome {
    outputs: Vec<OutputBlob>,
    stdout: Option<Digest>,
    stderr: Option<Digest>,
    stderr_tail: String,
    /// Set when the command ran but failed (logs are still kept).
    error: Option<String>,
    /// Whether another attempt might pass (see `TaskResult::transient`).
    transient: bool,
}

pub use plateflow_contract::labels::label_path;

async fn place_blob<F: BlobFetcher>(
    env: &ExecEnv,
    fetcher: &F,
    digest: &Digest,
    dest: &Path,
) -> anyhow::Result<()> {
    if !env.store.has_intact(digest)? {
        fetcher.fetch(&env.store, digest).await?;
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A private copy, hashed on the way (never a link to the stored file: a step that wrote
    // to its input would change the blob under its name for every later reader).
    match env.store.copy_verified(digest, dest) {
        Err(plateflow_store::StoreError::Corrupt { .. }) => {
            // Quarantined by the copy: fetch it again once, from whoever has it intact.
            fetcher.fetch(&env.store, digest).await?;
            env.store.copy_verified(digest, dest)?;
        }
        other => other?,
    }
    Ok(())
}

/// The file a task keeps its resumable state in, named by its cache key (which covers its
/// parameters, inputs and kind version, so a state is only ever taken up by the same work);
/// none for a task without a well-formed key.
pub fn resume_path(root: &Path, cache_key: &str) -> Option<PathBuf> {
    let well_formed =
        (16..=128).contains(&cache_key.len()) && cache_key.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| root.join(format!("{cache_key}.state")))
}

/// How long a state nobody took up is kept (a run abandoned, or its inputs changed).
pub const RESUME_KEPT: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// Removes what is older than `kept` from the resume directory (states of work never
/// finished, temporary files of writes a killed worker left), and the directory once empty:
/// it is made by the first state written, and scratch stays empty without one.
pub fn prune_resume_states(root: &Path, kept: std::time::Duration) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > kept);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(root); // only if empty
    Ok(())
}

/// A task's scratch directory with its inputs in place.
pub struct Materialised {
    /// Removed when dropped.
    _dir: tempfile::TempDir,
    /// Where the task runs: `inputs/`, `upstream/<task>/`, step files at the top.
    pub work: PathBuf,
    /// The task's images: path relative to `work`, and the pattern's fields.
    pub images: Vec<(String, BTreeMap<String, String>)>,
    /// The plate map, when the step reads it.
    pub plate_map: Option<PathBuf>,
    /// Upstream outputs: (producing task's label, output name, path relative to `work`).
    pub upstream: Vec<(String, String, String)>,
}

/// Characters of a command shown in messages.
const SHOWN_COMMAND: usize = 600;

/// Step files up to this size are copied into a task's scratch and checked (see above).
const COPIED_STEP_FILE: u64 = 64 << 20;

/// Where an input sits in the task's work directory: step files and the plate map (which
/// have a `_role`) at the top, images under `inputs/`.
fn scratch_path_of_input(input: &plateflow_proto::InputFile) -> PathBuf {
    match input.fields.get("_role") {
        Some(_) => PathBuf::from(&input.rel_path),
        None => Path::new("inputs").join(&input.rel_path),
    }
}

/// Where an upstream task's output sits in the task's work directory.
fn scratch_path_of_upstream(up: &plateflow_proto::UpstreamOutput) -> PathBuf {
    Path::new("upstream")
        .join(label_path(&up.task_label))
        .join(&up.name)
}

/// Creates the scratch directory and puts every input in it: images (linked in place on a
/// shared filesystem, else fetched), step files, the plate map and upstream outputs.
pub async fn materialise<F: BlobFetcher>(
    spec: &TaskSpec,
    env: &ExecEnv,
    fetcher: &F,
) -> anyhow::Result<Materialised> {
    let task_dir = tempfile::Builder::new()
        .prefix(&format!("task{}-a{}-", spec.task_id, spec.attempt))
        .tempdir_in(&env.scratch_root)?;
    let work = task_dir.path().join("work");
    std::fs::create_dir(&work)?;
    let mut images = Vec::new();
    let mut plate_map = None;
    for input in &spec.inputs {
        let digest = plateflow_proto::digest_of(input.digest.as_ref(), &input.rel_path)?;
        // Step files and the plate map sit at the top; images under inputs/.
        let role = input.fields.get("_role").map(String::as_str);
        let rel = scratch_path_of_input(input);
        let dest = work.join(&rel);
        let shared =
            env.shared_fs && !input.abs_path.is_empty() && Path::new(&input.abs_path).is_file();
        let small = |p: &str| std::fs::metadata(p).is_ok_and(|m| m.len() <= COPIED_STEP_FILE);
        if shared && role == Some("file") && small(&input.abs_path) {
            // A step's own files (scripts) are copied and checked against the digest the run
            // planned with: linked, a script edited during the run ran as the new code in
            // later tasks whose results were stored under the old digest. (Large ones, data
            // rather than code, are still linked: a copy per task would cost too much.)
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::copy(&input.abs_path, &dest)
                .map_err(|e| anyhow::anyhow!("step file {}: {e}", input.abs_path))?;
            let now = plateflow_store::hash_file(&dest)?;
            anyhow::ensure!(
                now == digest,
                "step file {} changed after the run started (SHA-256 now {}, planned with {}): \
                 run again, and the steps that use it rerun with it",
                input.abs_path,
                &now.hex()[..12],
                &digest.hex()[..12]
            );
        } else if shared {
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::os::unix::fs::symlink(&input.abs_path, &dest)?;
        } else {
            place_blob(env, fetcher, &digest, &dest)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("input {} ({}) unavailable: {e:#}", input.rel_path, digest)
                })?;
        }
        match role {
            None => images.push((
                rel.to_string_lossy().into_owned(),
                input
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )),
            Some("plate_map") => plate_map = Some(dest),
            Some(_) => {}
        }
    }
    let mut upstream = Vec::new();
    for up in &spec.upstream {
        let digest = plateflow_proto::digest_of(up.digest.as_ref(), &up.name)?;
        let rel = scratch_path_of_upstream(up);
        place_blob(env, fetcher, &digest, &work.join(&rel))
            .await
            .map_err(|e| {
                anyhow::anyhow!("output {} of {} unavailable: {e:#}", up.name, up.task_label)
            })?;
        upstream.push((
            up.task_label.clone(),
            up.name.clone(),
            rel.to_string_lossy().into_owned(),
        ));
    }
    Ok(Materialised {
        _dir: task_dir,
        work,
        images,
        plate_map,
        upstream,
    })
}

async fn run_command<F: BlobFetcher>(
    spec: &TaskSpec,
    p: &CommandParams,
    env: &ExecEnv,
    fetcher: &F,
) -> anyhow::Result<CommandOutcome> {
    let template = p.run.as_str();
    let outputs = &p.outputs;

    let m = materialise(spec, env, fetcher).await?;
    let work = m.work.clone();
    let task_dir = work.parent().expect("work has a parent").to_path_buf();
    let input_paths: Vec<String> = m.images.iter().map(|(p, _)| p.clone()).collect();
    let mut upstream_all = Vec::new();
    let mut upstream_by_step: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (label, _, rel) in &m.upstream {
        let step = label.split('[').next().unwrap_or("").to_string();
        upstream_by_step.entry(step).or_default().push(rel.clone());
        upstream_all.push(rel.clone());
    }

    // What each placeholder stands for; values reach the command as arguments or through
    // the environment, never as shell text (see `placeholders::prepare`).
    let mut vars: BTreeMap<String, Vec<String>> = BTreeMap::new();
    vars.insert("inputs".into(), input_paths);
    vars.insert("upstream".into(), upstream_all);
    for (step, files) in upstream_by_step {
        vars.insert(format!("upstream.{step}"), files);
    }
    vars.insert("outputs".into(), outputs.clone());
    vars.insert("task".into(), vec![spec.label.clone()]);
    for (k, v) in &spec.fields {
        vars.insert(k.clone(), vec![v.clone()]);
    }
    // For people (error messages only, so built only then): the command with its values
    // quoted in, as it would read typed by hand.
    let shown = || {
        let quoted = vars
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter()
                        .map(|s| shell_quote(s))
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            })
            .collect();
        let full = expand(template, &quoted).unwrap_or_else(|_| template.to_string());
        // A plate's {inputs} can be thousands of paths: messages show the start of it.
        match full.char_indices().nth(SHOWN_COMMAND) {
            Some((cut, _)) => format!(
                "{}… ({} characters in all)",
                &full[..cut],
                full.chars().count()
            ),
            None => full,
        }
    };
    let prepared = match prepare(template, &vars) {
        Ok(p) => p,
        // Validation refuses these; a pipeline that reached a worker some other way still
        // fails clearly, and for good.
        Err(e) => {
            return Ok(CommandOutcome {
                error: Some(format!("in `run`: {e}")),
                ..Default::default()
            })
        }
    };

    let stdout_path = task_dir.join("stdout");
    let stderr_path = task_dir.join("stderr");
    let mut task_env = vec![("PLATEFLOW_TASK".to_string(), spec.label.clone())];
    for (k, v) in &spec.fields {
        task_env.push((format!("PLATEFLOW_{}", k.to_uppercase()), v.clone()));
    }
    if !spec.gpu_ids.is_empty() {
        let ids: Vec<String> = spec
            .gpu_ids
            .iter()
            .map(|&id| plateflow_learn::device::child_visible(id))
            .collect();
        task_env.push(("CUDA_VISIBLE_DEVICES".into(), ids.join(",")));
    }
    let spawned = TaskProcess::spawn(Launch {
        command: &prepared,
        work: &work,
        stdout: std::fs::File::create(&stdout_path)?,
        stderr: std::fs::File::create(&stderr_path)?,
        env: task_env,
    });
    let mut process = match spawned {
        Ok(process) => process,
        Err(e) => {
            let (n, bytes) = vars.values().fold((0, 0), |(n, b), v| {
                (n + v.len(), b + v.iter().map(String::len).sum::<usize>())
            });
            let (why, transient) = start_failure(&e, n, bytes);
            if transient {
                anyhow::bail!("could not start the command `{}`: {why}", shown());
            }
            return Ok(CommandOutcome {
                error: Some(format!("could not start the command `{}`: {why}", shown())),
                transient,
                ..Default::default()
            });
        }
    };
    let status = if spec.timeout_s == 0 {
        Some(process.wait().await?)
    } else {
        let limit = std::time::Duration::from_secs(spec.timeout_s);
        match tokio::time::timeout(limit, process.wait()).await {
            Ok(status) => Some(status?),
            // Dropping the process kills its whole group.
            Err(_) => None,
        }
    };
    drop(process);

    let mut out = CommandOutcome {
        stdout: Some(store_log(&env.store, &stdout_path)?),
        stderr: Some(store_log(&env.store, &stderr_path)?),
        stderr_tail: tail_of(&stderr_path, 20, 4000),
        ..Default::default()
    };
    let Some(status) = status else {
        out.error = Some(format!(
            "command ran longer than the step's `timeout: {}` and was stopped: {}",
            plateflow_contract::units::show_seconds(spec.timeout_s),
            shown()
        ));
        out.transient = true;
        return Ok(out);
    };
    if !status.success() {
        let how = exit_how(&status);
        out.error = Some(format!("command failed ({how}): {}", shown()));
        // The user's program: plateflow cannot tell a flaky failure from a lasting one, so
        // the step's `retries:` apply.
        out.transient = true;
        return Ok(out);
    }
    for name in outputs {
        let path = work.join(name);
        if !path.is_file() {
            out.error = Some(format!(
                "command succeeded but did not write its declared output `{name}` \
                 (expected at {} relative to its scratch directory)",
                name
            ));
            return Ok(out);
        }
        // A link out of the scratch directory would copy any file this user can read into
        // the store (and to whoever may read results): only files the step wrote count.
        let real = std::fs::canonicalize(&path)?;
        if !real.starts_with(std::fs::canonicalize(&work)?) {
            out.error = Some(format!(
                "declared output `{name}` is a link to {}, outside the task's scratch \
                 directory: outputs must be files the step writes (copy it instead of linking)",
                real.display()
            ));
            return Ok(out);
        }
        let digest = env.store.put_file(&path)?;
        out.outputs.push(OutputBlob {
            name: name.clone(),
            digest: Some((&digest).into()),
        });
    }
    Ok(out)
}

/// A built-in image step: materialise the inputs, run the library code on blocking threads,
/// store everything it wrote under `out/`. Its account of the run is the task's stdout.
async fn run_builtin<F: BlobFetcher>(
    spec: &TaskSpec,
    task: std::sync::Arc<TaskParams>,
    env: &ExecEnv,
    fetcher: &F,
    progress: Option<ProgressTx>,
) -> anyhow::Result<CommandOutcome> {
    let m = materialise(spec, env, fetcher).await?;
    let threads = spec
        .resources
        .as_ref()
        .map_or(1, |r| r.cpus.max(1) as usize);
    let gpu_ids = spec.gpu_ids.clone();
    let resume = resume_path(&env.resume_root, &spec.cache_key);
    // Only for an error's message (built there, not for every task).
    let work = m.work.clone();
    let (log, result) = tokio::task::spawn_blocking(move || {
        let mut ctx = crate::builtin::Context {
            resume,
            gpu_ids,
            progress,
            work: &m.work,
            out: m.work.join("out"),
            task: &task,
            images: &m.images,
            plate_map: m.plate_map.as_deref(),
            upstream: &m.upstream,
            threads,
            log: String::new(),
        };
        let result = crate::builtin::run(&mut ctx).and_then(|()| {
            let mut files = Vec::new();
            collect_files(&ctx.out, &ctx.out, &mut files)?;
            files.sort();
            // The contract lists what each kind writes: anything else is a defect here.
            let info = task.params.kind().info();
            if let Some(f) = files.iter().find(|f| !info.declares_output(f)) {
                anyhow::bail!(
                    "step kind `{}` wrote `{f}`, which its contract does not declare (a plateflow defect: please report it)",
                    info.name
                );
            }
            Ok(files)
        });
        let out = ctx.out.clone();
        (ctx.log, result.map(|files| (m, out, files)))
    })
    .await?;
    let stdout = env.store.put_bytes(log.as_bytes())?;
    let mut outcome = CommandOutcome {
        stdout: Some(stdout),
        ..Default::default()
    };
    match result {
        Ok((_m, out, files)) => {
            for name in files {
                let digest = env.store.put_file(&out.join(&name))?;
                outcome.outputs.push(OutputBlob {
                    name,
                    digest: Some((&digest).into()),
                });
            }
        }
        Err(e) => {
            let msg = in_user_names(&format!("{e:#}"), &user_names(spec, &work));
            outcome.stderr = Some(env.store.put_bytes(msg.as_bytes())?);
            outcome.stderr_tail = msg.clone();
            outcome.error = Some(msg);
        }
    }
    Ok(outcome)
}

/// Each input's path in the task's scratch directory, with the name its user knows it by:
/// the file's path on the coordinator's machine (or in the data folder), or "output N of
/// task T". Longest first, so that no path is replaced by a shorter one it starts with.
fn user_names(spec: &TaskSpec, work: &Path) -> Vec<(String, String)> {
    let mut names: Vec<(String, String)> = spec
        .inputs
        .iter()
        .map(|input| {
            let rel = scratch_path_of_input(input);
            let known = if input.abs_path.is_empty() {
                input.rel_path.clone()
            } else {
                input.abs_path.clone()
            };
            (work.join(rel).display().to_string(), known)
        })
        .chain(spec.upstream.iter().map(|up| {
            (
                work.join(scratch_path_of_upstream(up))
                    .display()
                    .to_string(),
                format!("{} (output of {})", up.name, up.task_label),
            )
        }))
        .collect();
    names.sort_by_key(|(scratch, _)| std::cmp::Reverse(scratch.len()));
    names
}

/// A built-in step's error with its scratch paths (a temporary directory on the worker,
/// gone by the time anyone reads the message) replaced by the names in [`user_names`].
fn in_user_names(msg: &str, names: &[(String, String)]) -> String {
    let mut msg = msg.to_string();
    for (scratch, known) in names {
        if msg.contains(scratch.as_str()) {
            msg = msg.replace(scratch.as_str(), known);
        }
    }
    msg
}

/// Files under `dir`, as `/`-separated paths relative to `root`.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root)?;
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(())
}

/// A log into the store; an empty one (the common case) without reading or copying it.
fn store_log(store: &BlobStore, path: &Path) -> anyhow::Result<Digest> {
    if std::fs::metadata(path)?.len() == 0 {
        static EMPTY: std::sync::OnceLock<Digest> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(|| plateflow_store::hash_bytes(b""));
        if !store.has_intact(empty)? {
            store.put_bytes(b"")?;
        }
        return Ok(empty.clone());
    }
    Ok(store.put_file(path)?)
}

/// How a command ended, in words: its exit status, or the signal that killed it by name
/// (SIGKILL is what the out-of-memory killer sends; SIGSEGV a crash).
fn exit_how(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => {
            let (name, note) = match sig {
                libc::SIGKILL => ("SIGKILL", ": often the out-of-memory killer; ask for more `memory:` in the step's `resources:`"),
                libc::SIGSEGV => ("SIGSEGV", ": the program crashed"),
                libc::SIGABRT => ("SIGABRT", ": the program aborted"),
                libc::SIGTERM => ("SIGTERM", ""),
                libc::SIGINT => ("SIGINT", ""),
                libc::SIGBUS => ("SIGBUS", ": the program crashed"),
                _ => ("", ""),
            };
            if name.is_empty() {
                format!("killed by signal {sig}")
            } else {
                format!("killed by {name}{note}")
            }
        }
        (None, None) => "ended without an exit status".to_string(),
    }
}

/// The last `lines` lines of a log, at most `max_bytes`, for error messages. Only its end
/// is read: a program that wrote gigabytes of output cost that much memory.
fn tail_of(path: &Path, lines: usize, max_bytes: usize) -> String {
    use std::io::{Read as _, Seek as _};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(max_bytes as u64);
    let mut bytes = Vec::with_capacity(max_bytes.min(len as usize));
    if f.seek(std::io::SeekFrom::Start(start)).is_err()
        || f.take(max_bytes as u64).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command killed by a signal is said to be, by name, with what it usually means;
    /// a log's tail is read from its end.
    #[test]
    fn how_a_command_ended_and_its_logs_tail() {
        use std::os::unix::process::ExitStatusExt as _;
        let killed = std::process::ExitStatus::from_raw(libc::SIGKILL);
        assert!(exit_how(&killed).contains("SIGKILL: often the out-of-memory killer"));
        assert_eq!(
            exit_how(&std::process::ExitStatus::from_raw(3 << 8)),
            "exit status 3"
        );
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("stderr");
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        assert_eq!(tail_of(&log, 2, 4000), "line 9998\nline 9999");
    }

    /// An argument list over the system's limit is said with the fix and not retried (the
    /// same inputs give it again); a program that could not be found may be on another node.
    #[test]
    fn a_command_too_long_to_start_is_not_retried() {
        let (why, transient) = start_failure(
            &std::io::Error::from_raw_os_error(libc::E2BIG),
            40_000,
            3_200_000,
        );
        assert!(!transient);
        assert!(why.contains("40000 values (3200 kB)"), "{why}");
        assert!(why.contains("for_each: [plate, well]"), "{why}");
        let missing = std::io::Error::from_raw_os_error(libc::ENOENT);
        let (why, transient) = start_failure(&missing, 1, 10);
        assert!(transient);
        assert_eq!(why, missing.to_string());
    }

    /// A real argument list over the kernel's limit for one argument (MAX_ARG_STRLEN, 128 kB)
    /// fails to start with E2BIG, which is what `start_failure` reads.
    #[test]
    fn the_kernel_refuses_an_argument_over_its_limit_with_e2big() {
        let long = "x".repeat(200_000);
        let e = std::process::Command::new("true")
            .arg(&long)
            .spawn()
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::E2BIG));
        assert!(!start_failure(&e, 1, long.len()).1);
    }

    #[test]
    fn label_paths_are_nested_directories() {
        assert_eq!(label_path("qc"), PathBuf::from("qc"));
        assert_eq!(
            label_path("seg[plate=P1,well=A01]"),
            PathBuf::from("seg/plate=P1/well=A01")
        );
    }

    /// A state is named by the task's cache key alone, and only a key that cannot climb out
    /// of the directory (hex digits) names one.
    #[test]
    fn resume_states_are_named_by_well_formed_cache_keys() {
        let root = Path::new("/s/resume");
        let key = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            resume_path(root, key),
            Some(root.join(format!("{key}.state")))
        );
        for bad in [
            "",
            "abc",
            "../../etc/passwd",
            &format!("{key}/x"),
            "é0123456789abcdef",
        ] {
            assert_eq!(resume_path(root, bad), None, "{bad}");
        }
    }

    /// Pruning keeps what is recent and removes what is older than the age given.
    #[test]
    fn stale_resume_states_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("resume");
        prune_resume_states(&root, RESUME_KEPT).unwrap(); // none yet: nothing to do
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.state"), b"x").unwrap();
        prune_resume_states(&root, RESUME_KEPT).unwrap();
        assert!(root.join("a.state").exists());
        std::thread::sleep(std::time::Duration::from_millis(20));
        prune_resume_states(&root, std::time::Duration::from_millis(10)).unwrap();
        assert!(!root.exists(), "emptied, so removed");
    }
}
