//! `plateflow doctor`: what this node offers a pipeline, and whether it can serve one —
//! cores, memory, GPUs, whether this build runs Candle on CUDA, the store directory (writable,
//! free space) and, given `--coordinator`, whether the coordinator answers. Each line is a
//! check; the exit code is 1 if any failed, so job scripts can run it first.

use std::fmt::Write as _;
use std::path::Path;

/// One finding: passed or not, and what was seen.
struct Check {
    ok: bool,
    what: &'static str,
    seen: String,
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut s) == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
    }
}

fn meminfo(key: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// GPUs as `nvidia-smi` lists them (index, name, memory), if it is installed.
fn nvidia_gpus() -> Option<Vec<String>> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Runs every check; returns the report and whether all passed.
pub async fn run(
    store: &Path,
    coordinator: Option<&str>,
    access: &plateflow_access::Access,
) -> (String, bool) {
    let mut checks = Vec::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slurm = std::env::var("SLURM_JOB_ID")
        .map(|id| {
            format!(
                " (Slurm job {id}, {} CPUs on the node)",
                std::env::var("SLURM_CPUS_ON_NODE").unwrap_or_else(|_| "?".into())
            )
        })
        .unwrap_or_default();
    checks.push(Check {
        ok: true,
        what: "cpus",
        seen: format!("{cpus} usable{slurm}"),
    });
    checks.push(match (meminfo("MemTotal:"), meminfo("MemAvailable:")) {
        (Some(t), Some(a)) => Check {
            ok: true,
            what: "memory",
            seen: format!("{} total, {} available", gib(t), gib(a)),
        },
        _ => Check {
            ok: false,
            what: "memory",
            seen: "cannot read /proc/meminfo".into(),
        },
    });
    let cuda_build = cfg!(feature = "cuda");
    let gpus = nvidia_gpus().unwrap_or_default();
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    checks.push(Check {
        ok: gpus.is_empty() || cuda_build,
        what: "gpus",
        seen: match (gpus.is_empty(), cuda_build) {
            (true, _) => "none found (nvidia-smi absent or lists none)".into(),
            (false, true) => format!("{} ({}); CUDA_VISIBLE_DEVICES={}", gpus.join("; "), gpus.len(), visible.as_deref().unwrap_or("unset")),
            (false, false) => format!(
                "{} GPU(s) present, but this plateflow was built without the `cuda` feature: built-in learning steps run on the CPU (rebuild with --features cuda, see deploy/cuda); `command` steps can still use the GPUs",
                gpus.len()
            ),
        },
    });
    checks.push(Check {
        ok: true,
        what: "build",
        seen: format!(
            "plateflow {} ({}), Candle 0.11.1",
            env!("CARGO_PKG_VERSION"),
            if cuda_build { "cuda" } else { "cpu only" }
        ),
    });
    let store_check = (|| -> Result<String, String> {
        std::fs::create_dir_all(store)
            .map_err(|e| format!("cannot create {}: {e}", store.display()))?;
        let probe = tempfile::NamedTempFile::new_in(store)
            .map_err(|e| format!("{} is not writable: {e}", store.display()))?;
        drop(probe);
        let free =
            free_bytes(store).map_or("unknown free space".into(), |b| format!("{} free", gib(b)));
        Ok(format!("{} writable, {free}", store.display()))
    })();
    checks.push(match store_check {
        Ok(seen) => Check {
            ok: true,
            what: "store",
            seen,
        },
        Err(seen) => Check {
            ok: false,
            what: "store",
            seen,
        },
    });
    if let Some(addr) = coordinator {
        // The whole way a worker would go: TLS as configured, and the token accepted.
        let reached = plateflow_access::connect(addr, access, std::time::Duration::from_secs(3))
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:#}"));
        checks.push(match reached {
            Ok(()) => Check {
                ok: true,
                what: "coordinator",
                seen: format!(
                    "{addr} answers and accepts this node's credentials ({})",
                    match (&access.token, &access.tls) {
                        (None, _) => "no token",
                        (Some(_), plateflow_access::Tls::Off) => "token, plain text",
                        (Some(_), _) => "token, TLS",
                    }
                ),
            },
            Err(e) => Check {
                ok: false,
                what: "coordinator",
                seen: format!("{e} (is `plateflow coordinator` running there? firewall?)"),
            },
        });
    }
    let mut out = String::new();
    for c in &checks {
        let _ = writeln!(
            out,
            "{} {:<12} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.what,
            c.seen
        );
    }
    let all = checks.iter().all(|c| c.ok);
    (out, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writable_store_passes_and_an_absent_coordinator_fails() {
        let dir = tempfile::tempdir().unwrap();
        let none = plateflow_access::Access::default();
        let (text, _) = run(&dir.path().join("store"), None, &none).await;
        assert!(
            text.contains("ok   store") && text.contains("writable"),
            "{text}"
        );
        assert!(text.contains("cpus") && text.contains("memory"), "{text}");
        // Port 9 on loopback: nothing listens there.
        let (text, ok2) = run(&dir.path().join("store"), Some("127.0.0.1:9"), &none).await;
        assert!(!ok2 && text.contains("FAIL coordinator"), "{text}");
    }
}
