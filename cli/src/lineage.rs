//! `plateflow lineage`: from an output back to the input files and parameters that made it,
//! read from the lock file.

use plateflow_contract::labels::label_path;
use plateflow_coordinator::lockfile::{self, LockFile};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

/// The pipeline, where its lock file is, and the lock file, which must exist.
fn pipeline_and_lock(
    pipeline_path: &Path,
) -> anyhow::Result<(
    plateflow_coordinator::spec::Pipeline,
    std::path::PathBuf,
    LockFile,
)> {
    let pipeline = plateflow_coordinator::spec::load(pipeline_path)?;
    let lock_path = lockfile::lock_path(&pipeline.file);
    let lock = lockfile::read(&lock_path)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no lock file at {}: run the pipeline first",
            lock_path.display()
        )
    })?;
    Ok((pipeline, lock_path, lock))
}

pub fn trace(pipeline_path: &Path, target: &str) -> anyhow::Result<String> {
    let (pipeline, lock_path, lock) = pipeline_and_lock(pipeline_path)?;
    let label = find(&lock, &pipeline.results, target).ok_or_else(|| {
        anyhow::anyhow!(
            "`{target}` is not a task label, a result file under {} or an output digest in {}",
            pipeline.results.display(),
            lock_path.display()
        )
    })?;
    let mut out = String::new();
    let mut seen = HashSet::new();
    walk(&lock, &label, 0, &mut out, &mut seen);
    Ok(out)
}

/// The captured stdout or stderr of a task, found through the lock file's key.
pub fn logs(
    pipeline_path: &Path,
    task: &str,
    stderr: bool,
    state: Option<&Path>,
) -> anyhow::Result<Vec<u8>> {
    let (pipeline, lock_path, lock) = pipeline_and_lock(pipeline_path)?;
    let entry = lock.tasks.get(task).ok_or_else(|| {
        let hint = plateflow_coordinator::spec::diag::did_you_mean(
            task,
            lock.tasks.keys().map(String::as_str),
        )
        .unwrap_or_default();
        anyhow::anyhow!("no task `{task}` in {}. {hint}", lock_path.display())
    })?;
    let cfg = plateflow_coordinator::engine::EngineConfig::new(
        state
            .map(Path::to_path_buf)
            .unwrap_or(pipeline.workspace.clone()),
    );
    let db = plateflow_coordinator::db::Db::open(&cfg.db_path())?;
    let action = db.action(&entry.key)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no stored result for {task} (key {}) in {}",
            entry.key,
            cfg.state_dir.display()
        )
    })?;
    let digest = if stderr { action.stderr } else { action.stdout };
    let Some(digest) = digest else {
        return Ok(Vec::new()); // kinds without a process have no logs
    };
    let store = plateflow_store::BlobStore::open(cfg.store_dir())?;
    Ok(store.read_verified(&digest)?)
}

fn find(lock: &LockFile, results: &Path, target: &str) -> Option<String> {
    if lock.tasks.contains_key(target) {
        return Some(target.to_string());
    }
    let as_path = std::fs::canonicalize(target).ok();
    for (label, e) in &lock.tasks {
        for (name, d) in &e.outputs {
            let file = results.join(label_path(label)).join(name);
            let same_file = as_path
                .as_ref()
                .is_some_and(|p| std::fs::canonicalize(&file).ok().as_ref() == Some(p));
            if same_file
                || d.to_string() == target
                || d.hex().starts_with(target.trim_start_matches("sha256:")) && target.len() >= 12
            {
                return Some(label.clone());
            }
        }
    }
    None
}

fn walk(lock: &LockFile, label: &str, depth: usize, out: &mut String, seen: &mut HashSet<String>) {
    let pad = "  ".repeat(depth);
    let Some(e) = lock.tasks.get(label) else {
        let _ = writeln!(out, "{pad}{label}: not in the lock file");
        return;
    };
    if !seen.insert(label.to_string()) {
        let _ = writeln!(out, "{pad}{label} (shown above)");
        return;
    }
    let _ = writeln!(
        out,
        "{pad}{label}  [{}]  key {}",
        e.parts.kind,
        &e.key[..12.min(e.key.len())]
    );
    for (name, d) in &e.outputs {
        let _ = writeln!(out, "{pad}  output  {name}  {d}");
    }
    let _ = writeln!(out, "{pad}  params  {}", e.parts.params);
    for (p, d) in &e.parts.inputs {
        let _ = writeln!(out, "{pad}  input   {p}  {d}");
    }
    let mut ups: Vec<&str> = e
        .parts
        .upstream
        .keys()
        .filter_map(|k| k.rsplit_once('/').map(|(l, _)| l))
        .collect();
    ups.dedup();
    for (o, d) in &e.parts.upstream {
        let _ = writeln!(out, "{pad}  reads   {o}  {d}");
    }
    for up in ups {
        walk(lock, up, depth + 1, out, seen);
    }
}
