//! A `command` task's processes, and only them, for exactly as long as the task lives.
//!
//! Each task runs in its own process group, led by a small guard shell:
//! `sh -c 'trap "kill -KILL 0" TERM; "$@" & wait $!' plateflow-task PROGRAM ARGS…`.
//! The guard gets SIGTERM when the worker dies (`PR_SET_PDEATHSIG`, even on SIGKILL) and then
//! kills its whole group, so grandchildren of the user's script (`sleep 60 && touch x &`) die
//! with it. The worker itself kills the group when the task ends, fails or is cancelled
//! ([`TaskProcess`]'s drop). A program that leaves the group on purpose (`setsid`) escapes;
//! a cgroup would catch it, and is not used (it needs privileges workers rarely have).

use plateflow_contract::placeholders::Prepared;
use std::path::{Path, PathBuf};

/// The guard script; `$@` is the program and its arguments.
const GUARD: &str = r#"trap 'kill -KILL 0' TERM; "$@" & wait $!"#;

/// A started task process group, killed whole when dropped.
pub struct TaskProcess {
    child: tokio::process::Child,
    pgid: i32,
}

/// How to start one task: the prepared command, where, and with what around it.
pub struct Launch<'a> {
    pub command: &'a Prepared,
    pub work: &'a Path,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
    pub env: Vec<(String, String)>,
}

impl TaskProcess {
    pub fn spawn(l: Launch<'_>) -> std::io::Result<TaskProcess> {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", GUARD, "plateflow-task"]);
        match l.command {
            Prepared::Argv(argv) => {
                cmd.arg(resolve_program(&argv[0])).args(&argv[1..]);
            }
            Prepared::Shell { script, env } => {
                cmd.args(["sh", "-c", script]);
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
            }
        }
        cmd.current_dir(l.work)
            // A user's script has no business with the cluster's credentials.
            .env_remove("PLATEFLOW_TOKEN")
            .env_remove("PLATEFLOW_TOKEN_FILE")
            .envs(l.env)
            .stdin(std::process::Stdio::null())
            .stdout(l.stdout)
            .stderr(l.stderr)
            // Its own group: killed whole, and out of the terminal's reach (Ctrl-C goes to
            // `plateflow run`, which ends its workers, whose guards end their tasks).
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and
        // exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The worker died before the line above took effect: do not start at all.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the worker is gone"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pgid = child.id().map_or(0, |p| p as i32);
        Ok(TaskProcess { child, pgid })
    }

    /// Waits for the task's program; then kills whatever it left running in its group.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await;
        self.kill_group();
        status
    }

    fn kill_group(&mut self) {
        if self.pgid > 0 {
            // SAFETY: signals only the group this task's guard leads. While any member lives
            // the id cannot be reused; once the group is empty this is a harmless ESRCH.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for TaskProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// The absolute path of a program named without a `/`, looked up in PATH once per worker
/// (`execvp` would try every PATH entry for every task).
fn resolve_program(name: &str) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: std::sync::OnceLock<Mutex<HashMap<String, PathBuf>>> = std::sync::OnceLock::new();
    if name.contains('/') {
        return PathBuf::from(name);
    }
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().expect("program cache").get(name) {
        return p.clone();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    });
    match found {
        Some(p) => {
            cache
                .lock()
                .expect("program cache")
                .insert(name.to_string(), p.clone());
            p
        }
        // Not found: let the shell fail with the usual error naming the program.
        None => PathBuf::from(name),
    }
}

/// A worker's own corner of a scratch directory that several workers may share (the local
/// workers of `plateflow run` do): `<scratch>/worker-<pid>/`, held by a lock for the process's
/// life. At start, corners whose lock is free belong to workers that died (SIGKILL, power
/// loss) and are removed with whatever their tasks left.
pub struct ScratchCorner {
    pub dir: PathBuf,
    _lock: std::fs::File,
}

impl ScratchCorner {
    pub fn claim(scratch: &Path) -> std::io::Result<ScratchCorner> {
        std::fs::create_dir_all(scratch)?;
        if let Ok(entries) = std::fs::read_dir(scratch) {
            for e in entries.flatten() {
                let name = e.file_name();
                let dir = e.path();
                if !name.to_string_lossy().starts_with("worker-") || !dir.is_dir() {
                    continue;
                }
                if let Ok(f) = std::fs::File::open(dir.join(".lock")) {
                    if try_lock(&f) {
                        tracing::info!(dir = %dir.display(), "removing a dead worker's scratch");
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                } else {
                    let _ = std::fs::remove_dir_all(&dir); // never got as far as its lock
                }
            }
        }
        let dir = scratch.join(format!("worker-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let lock = std::fs::File::create(dir.join(".lock"))?;
        if !try_lock(&lock) {
            return Err(std::io::Error::other(format!(
                "{} is held by another live process",
                dir.display()
            )));
        }
        Ok(ScratchCorner { dir, _lock: lock })
    }
}

impl Drop for ScratchCorner {
    fn drop(&mut self) {
        // A worker that ends cleanly leaves nothing behind.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An exclusive advisory lock, released when the process ends however it ends.
fn try_lock(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor this process owns.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
