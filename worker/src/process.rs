//! A `command` task's processes, and only them, for exactly as long as the task lives.
//!
//! Each task runs in its own process group (its program started directly when it needs no
//! shell). The worker kills the group when the task ends, fails or is cancelled
//! ([`TaskProcess`]'s drop), so nothing a task started in the background outlives it. For
//! the worker's own death, even by SIGKILL, one small reaper shell per worker holds the
//! groups of running tasks (the worker writes `+PGID` and `-PGID` lines to its stdin); when
//! the worker is gone its stdin ends and it kills every group still listed. (One guard shell
//! per task did the same at a third of the throughput for short tasks.) A program that
//! leaves its group on purpose (`setsid`) escapes; a cgroup would catch it and is not used
//! (it needs privileges workers rarely have).

use plateflow_contract::placeholders::Prepared;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The reaper: reads `+PGID`/`-PGID` lines; at end of input (its worker died, however) it
/// kills the groups still listed. Ignores Ctrl-C and SIGTERM: the worker's end, not the
/// terminal's, is its cue. Pure shell string operations, no process per line.
const REAPER: &str = r#"trap '' INT TERM HUP
groups=' '
while read -r op g; do
  case "$op" in
    +) groups="$groups$g " ;;
    -) case "$groups" in *" $g "*) groups="${groups%%" $g "*} ${groups#*" $g "}" ;; esac ;;
  esac
done
for g in $groups; do kill -KILL -"$g" 2>/dev/null; done
"#;

struct Reaper {
    stdin: Mutex<std::process::ChildStdin>,
    _child: std::process::Child,
}

/// This worker's reaper, started on first use; `None` if it could not start (tasks still run,
/// and are still killed whole by the worker while it lives).
fn reaper() -> Option<&'static Reaper> {
    static REAPER_PROC: OnceLock<Option<Reaper>> = OnceLock::new();
    REAPER_PROC
        .get_or_init(|| {
            use std::os::unix::process::CommandExt as _;
            let spawned = std::process::Command::new("sh")
                .args(["-c", REAPER])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                // Out of the terminal's group: Ctrl-C must not end it before the tasks.
                .process_group(0)
                .spawn();
            match spawned {
                Ok(mut child) => Some(Reaper {
                    stdin: Mutex::new(child.stdin.take().expect("piped")),
                    _child: child,
                }),
                Err(e) => {
                    tracing::warn!("cannot start the task reaper (sh): {e}; tasks of a killed worker may outlive it");
                    None
                }
            }
        })
        .as_ref()
}

fn tell_reaper(line: std::fmt::Arguments<'_>) {
    if let Some(r) = reaper() {
        let mut stdin = r.stdin.lock().expect("reaper stdin");
        let _ = stdin.write_fmt(line).and_then(|_| stdin.flush());
    }
}

/// Scripts this long or longer run from a file rather than `sh -c` (Linux caps one
/// argument at 128 KiB).
const LONG_SCRIPT: usize = 64 << 10;

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
        // Started before the first task, so its group is listed before anything can run.
        let _ = reaper();
        let mut cmd = match l.command {
            // A plain `prog arg arg` is started directly: no shell process per task.
            Prepared::Argv(argv) => {
                let mut c = tokio::process::Command::new(resolve_program(&argv[0]));
                c.args(&argv[1..]);
                c
            }
            Prepared::Shell { script, env } => {
                let mut c = tokio::process::Command::new("sh");
                if script.len() < LONG_SCRIPT {
                    c.args(["-c", script]);
                } else {
                    // One argument may hold at most 128 KiB on Linux: a plate's {inputs}
                    // (a word per image) passed that, and the task failed to start with
                    // "Argument list too long". A long script goes in a file.
                    let file = l.work.join(".plateflow-command.sh");
                    std::fs::write(&file, script)?;
                    c.arg(&file);
                }
                c.envs(env.iter().map(|(k, v)| (k, v)));
                c
            }
        };
        cmd.current_dir(l.work)
            // A user's script has no business with the cluster's credentials.
            .env_remove("PLATEFLOW_TOKEN")
            .env_remove("PLATEFLOW_TOKEN_FILE")
            .envs(l.env)
            .stdin(std::process::Stdio::null())
            .stdout(l.stdout)
            .stderr(l.stderr)
            // Its own group: killed whole, and out of the terminal's reach (Ctrl-C goes to
            // `plateflow run`, which ends its workers, which end their tasks).
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and
        // exec. The direct child dies with the worker even before the reaper hears of it.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the worker is gone"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pgid = child.id().map_or(0, |p| p as i32);
        if pgid > 0 {
            tell_reaper(format_args!("+ {pgid}\n"));
        }
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
            // SAFETY: signals only the group this task's program leads. While any member lives
            // the id cannot be reused; once the group is empty this is a harmless ESRCH.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
            tell_reaper(format_args!("- {}\n", self.pgid));
            self.pgid = 0;
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
/// workers of `plateflow run` do, and Slurm workers on several nodes do over a shared file
/// system): `<scratch>/worker-<pid>-<nonce>@<host>/`, held by a lock for the process's life.
/// At start, this host's corners whose lock is free belong to workers that died (SIGKILL,
/// power loss) and are removed with whatever their tasks left. Other hosts' corners are never
/// judged: `flock` on a shared file system is often local to each node (BeeGFS, Lustre's
/// `localflock`, NFS `local_lock`), so a live neighbour's lock looks free from here; and two
/// nodes' workers can have the same pid.
///
/// A corner is made under a private name (`.claiming-…`), locked, and only then renamed to
/// `worker-…`: a worker starting at the same moment never sees a live corner without its
/// lock, which it would take for a dead one and remove (tasks then failed with "No such file
/// or directory" in their scratch directory). The lock file itself is created as
/// `.lock.claiming` and renamed to `.lock` once held: a `.lock` that existed unlocked for a
/// moment was taken by a neighbour for a dead claim and its directory removed (the worker
/// then failed to start, "scratch directory …: No such file or directory"). A claim left by a
/// process that died while claiming is removed once its pid is gone from this host.
pub struct ScratchCorner {
    pub dir: PathBuf,
    _lock: std::fs::File,
}

impl ScratchCorner {
    pub fn claim(scratch: &Path) -> std::io::Result<ScratchCorner> {
        Self::claim_as(scratch, &host_for_names(), std::process::id())
    }

    /// `claim` as process `pid` of `host` (tests race several claims in one process, and
    /// play a second host).
    fn claim_as(scratch: &Path, host: &str, pid: u32) -> std::io::Result<ScratchCorner> {
        std::fs::create_dir_all(scratch)?;
        if let Ok(entries) = std::fs::read_dir(scratch) {
            for e in entries.flatten() {
                remove_if_dead(&e.path(), &e.file_name().to_string_lossy(), host);
            }
        }
        // The nonce makes the name unique even where pids repeat (containers sharing a host
        // name), so no live corner is ever replaced by name.
        static CLAIMS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{pid}-{n}-{nonce:09}@{host}");
        let claiming = scratch.join(format!(".claiming-{name}"));
        std::fs::create_dir(&claiming)?;
        let unheld = claiming.join(".lock.claiming");
        let lock = std::fs::File::create(&unheld)?;
        match try_lock(&lock) {
            Lock::Held => {}
            Lock::Busy => {
                return Err(std::io::Error::other(format!(
                    "{} is held by another live process",
                    claiming.display()
                )))
            }
            // Lustre mounted `noflock`: the corner is still this worker's by its unique name;
            // only dead workers' corners cannot be told from live ones there, and stay.
            Lock::Unsupported(e) => tracing::warn!(
                dir = %scratch.display(),
                "scratch cannot be locked ({e}); dead workers' scratch there is not cleaned up"
            ),
        }
        std::fs::rename(&unheld, claiming.join(".lock"))?;
        let dir = scratch.join(format!("worker-{name}"));
        std::fs::rename(&claiming, &dir)?;
        Ok(ScratchCorner { dir, _lock: lock })
    }
}

/// Removes `dir` (named `name` in the scratch directory) if it is a corner, or a claim, of a
/// dead worker on `host`; anything else is left alone.
fn remove_if_dead(dir: &Path, name: &str, host: &str) {
    let Some((kind, rest)) = name
        .strip_prefix("worker-")
        .map(|r| (true, r))
        .or_else(|| name.strip_prefix(".claiming-").map(|r| (false, r)))
    else {
        return;
    };
    let Some((pid, owner)) = rest.rsplit_once('@') else {
        return;
    };
    if owner != host || !dir.is_dir() {
        return;
    }
    let dead = if kind {
        // A corner is locked before it is named so: a free lock, or none, is a dead worker's.
        match std::fs::File::open(dir.join(".lock")) {
            Ok(f) => matches!(try_lock(&f), Lock::Held),
            Err(_) => true,
        }
    } else {
        // A claim may not be locked yet: it is dead only once its process is gone.
        pid.split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|p| p > 0 && !process_alive(p))
    };
    if dead {
        tracing::info!(dir = %dir.display(), "removing a dead worker's scratch");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// This host's name as it can stand in a file name.
fn host_for_names() -> String {
    let host: String = crate::session::hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if host.is_empty() {
        "localhost".into()
    } else {
        host
    }
}

/// Whether process `pid` exists on this host (a process of another user counts).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Drop for ScratchCorner {
    fn drop(&mut self) {
        // A worker that ends cleanly leaves nothing behind.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

enum Lock {
    Held,
    Busy,
    /// The file system refuses locks altogether.
    Unsupported(std::io::Error),
}

/// An exclusive advisory lock, released when the process ends however it ends.
fn try_lock(f: &std::fs::File) -> Lock {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor this process owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Lock::Held;
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Lock::Busy
    } else {
        Lock::Unsupported(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has now (a child that has ended and been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// On this host, a dead worker's corner (lock free) is removed and so is a claim whose
    /// process is gone; a claim by a live process is left alone, as is everything of another
    /// host (its locks cannot be judged from here). The new corner appears only with its
    /// lock held, and a clean end removes it.
    #[test]
    fn claiming_a_corner_removes_this_hosts_dead_and_spares_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path();
        let dir = |name: &str, lock: bool| {
            let d = scratch.join(name);
            std::fs::create_dir_all(d.join("task-a")).unwrap();
            if lock {
                std::fs::File::create(d.join(".lock")).unwrap();
            }
            d
        };
        let me = std::process::id();
        let dead = dir("worker-17-0-5@here", true);
        let dead_claim = dir(&format!(".claiming-{}-0-5@here", dead_pid()), false);
        let live_claim = dir(&format!(".claiming-{me}-9-5@here"), false);
        let elsewhere = dir("worker-17-0-5@there", true);
        let elsewhere_claim = dir(&format!(".claiming-{}-0-5@there", dead_pid()), false);
        let unknown = dir("worker-17", true);
        let corner = ScratchCorner::claim_as(scratch, "here", me).unwrap();
        assert!(!dead.exists(), "a dead worker's corner is removed");
        assert!(!dead_claim.exists(), "a dead process's claim is removed");
        assert!(live_claim.exists(), "a live process's claim is spared");
        assert!(
            elsewhere.exists() && elsewhere_claim.exists(),
            "another host's are spared"
        );
        assert!(unknown.exists(), "names not of this scheme are not touched");
        assert!(corner.dir.join(".lock").is_file());
        assert!(corner
            .dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("@here"));
        // Its lock is held: another opener cannot take it, and a second claim spares it.
        let other = std::fs::File::open(corner.dir.join(".lock")).unwrap();
        assert!(matches!(try_lock(&other), Lock::Busy));
        let second = ScratchCorner::claim_as(scratch, "here", me).unwrap();
        assert!(corner.dir.exists() && second.dir != corner.dir);
        let gone = corner.dir.clone();
        drop(corner);
        assert!(!gone.exists(), "a clean end leaves nothing behind");
    }

    /// Workers starting together each get their corner: none takes a neighbour's claim,
    /// caught between creating its lock file and locking it, for a dead one.
    #[test]
    fn workers_claiming_at_once_all_start() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path().to_path_buf();
        let me = std::process::id();
        for _ in 0..40 {
            let claims: Vec<_> = (0..6)
                .map(|_| {
                    let scratch = scratch.clone();
                    std::thread::spawn(move || ScratchCorner::claim_as(&scratch, "here", me))
                })
                .collect();
            let corners: Vec<ScratchCorner> = claims
                .into_iter()
                .map(|t| t.join().unwrap().expect("every claim succeeds"))
                .collect();
            assert!(corners.iter().all(|c| c.dir.join(".lock").is_file()));
        }
    }
}
