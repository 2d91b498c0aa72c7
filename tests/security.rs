//! Who may talk to a coordinator: real `plateflow coordinator`, `worker`, `submit` and
//! `status` processes on loopback, over TLS with a self-signed certificate and the cluster
//! token. Refused callers get a clear message and change nothing; the token never shows in a
//! log.

use plateflow_e2e::{free_port, json_of, plateflow, run_bounded, wait_for, Proc};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small command pipeline over a few text files.
fn pipeline(dir: &Path) -> PathBuf {
    plateflow_e2e::per_plate_pipeline(
        dir,
        "secure",
        &["P1", "P2"],
        "cat {inputs} | wc -c > n.txt",
        &["n.txt"],
    )
}

struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    fingerprint: String,
    _coordinator: Proc,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(&[])
    }
    /// With extra `plateflow coordinator` arguments; `{dir}` stands for the test directory.
    fn start_with(extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra
            .iter()
            .map(|a| a.replace("{dir}", &dir.path().display().to_string()))
            .collect();
        std::fs::create_dir_all(dir.path().join("projects")).unwrap();
        let port = free_port();
        let log = dir.path().join("coordinator.log");
        let coordinator = Proc::spawn(
            "coordinator",
            plateflow()
                .env("PLATEFLOW_LOG", "info")
                .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
                .args(&extra)
                .args(["--tls-self-signed", "--state"])
                .arg(dir.path().join("state")),
            &log,
        );
        wait_for("the coordinator to listen", 30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        // The port may accept before the announcement reaches the log file: wait for it too.
        let fingerprint = wait_for("the coordinator to announce its fingerprint", 30, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.split_whitespace()
                .find(|w| w.starts_with("sha256:"))
                .map(str::to_string)
        });
        Cluster {
            dir,
            port,
            fingerprint,
            _coordinator: coordinator,
        }
    }
    fn token(&self) -> PathBuf {
        self.dir.path().join("state").join("token")
    }
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// `plateflow <args…> --coordinator ADDR`, with no credentials from the environment.
    fn client(&self, args: &[&str]) -> Command {
        let mut c = plateflow();
        c.env_remove("PLATEFLOW_TOKEN_FILE")
            .env_remove("PLATEFLOW_TLS_FINGERPRINT")
            .env_remove("PLATEFLOW_TOKEN")
            .args(args)
            .args(["--coordinator", &self.addr()]);
        c
    }
    /// A worker `w1` with the token and the pinned certificate, logging to `worker.log`.
    fn worker(&self) -> Proc {
        Proc::spawn(
            "worker",
            self.client(&["worker", "--name", "w1", "--cpus", "1"])
                .arg("--token-file")
                .arg(self.token())
                .args(["--tls-fingerprint", &self.fingerprint])
                .arg("--store")
                .arg(self.dir.path().join("w/store"))
                .arg("--scratch")
                .arg(self.dir.path().join("w/scratch")),
            &self.dir.path().join("worker.log"),
        )
    }
    fn runs(&self) -> serde_json::Value {
        let out = run_bounded(
            self.client(&["status", "--json"])
                .arg("--token-file")
                .arg(self.token())
                .args(["--tls-fingerprint", &self.fingerprint]),
            30,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        json_of(&out)
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_token_file_is_made_owner_only() {
    let c = Cluster::start();
    let mode = std::fs::metadata(c.token()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn callers_without_the_right_credentials_are_refused_and_change_nothing() {
    let c = Cluster::start();
    let p = pipeline(c.dir.path());

    // No token.
    let out = run_bounded(
        c.client(&["submit"])
            .arg(&p)
            .args(["--tls-fingerprint", &c.fingerprint]),
        30,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("requires the cluster token"),
        "{}",
        stderr(&out)
    );

    // A wrong token (in a properly protected file).
    let wrong = c.dir.path().join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_bounded(
        c.client(&["submit"])
            .arg(&p)
            .arg("--token-file")
            .arg(&wrong)
            .args(["--tls-fingerprint", &c.fingerprint]),
        30,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("wrong cluster token"),
        "{}",
        stderr(&out)
    );

    // A token file others can read is refused before anything is sent.
    let loose = c.dir.path().join("loose-token");
    std::fs::copy(c.token(), &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_bounded(
        c.client(&["submit"])
            .arg(&p)
            .arg("--token-file")
            .arg(&loose)
            .args(["--tls-fingerprint", &c.fingerprint]),
        30,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));

    // The right token over plain text to a TLS coordinator.
    let out = run_bounded(
        c.client(&["submit"])
            .arg(&p)
            .arg("--token-file")
            .arg(c.token()),
        30,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--tls-fingerprint"),
        "{}",
        stderr(&out)
    );

    // The right token to a coordinator whose certificate is not the pinned one.
    let other = format!("sha256:{}", "00".repeat(32));
    let out = run_bounded(
        c.client(&["submit"])
            .arg(&p)
            .arg("--token-file")
            .arg(c.token())
            .args(["--tls-fingerprint", &other]),
        30,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not the pinned"), "{}", stderr(&out));

    // A worker without a token stops at once with the reason (it does not retry for ever).
    let out = run_bounded(
        c.client(&["worker", "--name", "intruder"])
            .args(["--tls-fingerprint", &c.fingerprint])
            .arg("--store")
            .arg(c.dir.path().join("w/store"))
            .arg("--scratch")
            .arg(c.dir.path().join("w/scratch")),
        30,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the credentials") && stderr(&out).contains("cluster token"),
        "{}",
        stderr(&out)
    );

    // Nothing was submitted, no worker joined.
    assert_eq!(c.runs(), serde_json::json!([]));
    let log = std::fs::read_to_string(c.dir.path().join("coordinator.log")).unwrap();
    assert!(!log.contains("intruder"), "{log}");
}

#[test]
fn a_worker_with_the_token_and_pinned_certificate_runs_a_pipeline() {
    let c = Cluster::start();
    let p = pipeline(c.dir.path());
    let wlog = c.dir.path().join("worker.log");
    let _worker = Proc::spawn(
        "worker",
        c.client(&["worker", "--name", "w1", "--cpus", "1"])
            .env("PLATEFLOW_LOG", "info")
            .arg("--token-file")
            .arg(c.token())
            .args(["--tls-fingerprint", &c.fingerprint])
            .arg("--store")
            .arg(c.dir.path().join("w/store"))
            .arg("--scratch")
            .arg(c.dir.path().join("w/scratch")),
        &wlog,
    );
    let out = run_bounded(
        c.client(&["submit", "--wait", "--json"])
            .arg(&p)
            .arg("--token-file")
            .arg(c.token())
            .args(["--tls-fingerprint", &c.fingerprint]),
        120,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let st = json_of(&out);
    assert_eq!(st["state"], "succeeded", "{st}");
    // "cells of P1\n" is 12 bytes: the task really ran on the worker.
    for plate in ["P1", "P2"] {
        let n = c
            .dir
            .path()
            .join(format!("results/count/plate={plate}/n.txt"));
        let n = std::fs::read_to_string(&n).unwrap_or_else(|e| panic!("{}: {e}", n.display()));
        assert_eq!(n.trim(), "12", "{plate}");
    }
    // The secret appears in no log.
    let token = std::fs::read_to_string(c.token()).unwrap();
    for log in [c.dir.path().join("coordinator.log"), wlog] {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains(token.trim()),
            "{} shows the token",
            log.display()
        );
    }
}

/// `plateflow submit` with the right credentials; returns (success, stderr).
fn submit(c: &Cluster, p: &Path) -> (bool, String) {
    let out = run_bounded(
        c.client(&["submit", "--wait"])
            .arg(p)
            .arg("--token-file")
            .arg(c.token())
            .args(["--tls-fingerprint", &c.fingerprint]),
        120,
    );
    (out.status.success(), stderr(&out))
}

#[test]
fn pipelines_cannot_reach_outside_the_allowed_roots() {
    let c = Cluster::start_with(&["--allow-root", "{dir}/projects"]);
    let root = c.dir.path().join("projects");
    let outside = c.dir.path().join("elsewhere");
    std::fs::create_dir_all(outside.join("P9")).unwrap();
    std::fs::write(outside.join("P9/secret.txt"), "not yours\n").unwrap();
    let _worker = c.worker();

    // A pipeline outside the roots.
    let p = pipeline(&outside);
    let (ok, err) = submit(&c, &p);
    assert!(!ok && err.contains("outside the directories"), "{err}");

    // A pipeline inside whose images climb out with `../`.
    let inside = root.join("a");
    let p = pipeline(&inside);
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, text.replace("images: data", "images: ../../elsewhere")).unwrap();
    let (ok, err) = submit(&c, &p);
    assert!(!ok && err.contains("the image directory"), "{err}");

    // Images inside, one of them a link to a file outside.
    let p = pipeline(&inside);
    std::os::unix::fs::symlink(outside.join("P9/secret.txt"), inside.join("data/P1/b.txt"))
        .unwrap();
    let (ok, err) = submit(&c, &p);
    assert!(!ok && err.contains("really"), "{err}");
    std::fs::remove_file(inside.join("data/P1/b.txt")).unwrap();

    // An output that is a link out of the task's scratch directory.
    let p = inside.join("link.yaml");
    std::fs::write(
        &p,
        format!(
            r#"pipeline: link
data:
  images: data
  pattern: "{{plate}}/{{name}}.txt"
steps:
  steal:
    uses: command
    for_each: plate
    with:
      run: ln -s {} out.txt
      outputs: [out.txt]
"#,
            outside.join("P9/secret.txt").display()
        ),
    )
    .unwrap();
    let (ok, err) = submit(&c, &p);
    assert!(!ok, "{err}");
    let st = c.runs();
    let text = st.to_string();
    assert!(
        text.contains("outside the task's scratch directory"),
        "{text}"
    );

    // Results, workspace and step files that climb out, through directories that do not
    // exist yet (judged once by their nearest existing parent, which let them through).
    let escapes = [
        "results: nonexist/../../../elsewhere/escaped",
        "results: a/b/c/../../../../../elsewhere/escaped",
        "workspace: nonexist/../../../elsewhere/ws",
        "results: ../../elsewhere/escaped",
        "results: ./x/./../../../elsewhere",
    ];
    for escape in escapes {
        let p = pipeline(&inside);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replacen("\n", &format!("\n{escape}\n"), 1)).unwrap();
        let (ok, err) = submit(&c, &p);
        assert!(
            !ok && err.contains("outside the directories"),
            "{escape}: {err}"
        );
    }

    // Nothing was written outside the roots, nothing stolen into results.
    let mut found = Vec::new();
    plateflow_e2e::tree_bytes(&outside)
        .into_iter()
        .for_each(|(k, _)| found.push(k));
    assert_eq!(
        found,
        [
            "P9/secret.txt",
            "data/P1/a.txt",
            "data/P2/a.txt",
            "secure.yaml"
        ],
        "only what the test wrote there"
    );
    assert!(!outside.join(".plateflow").exists() && !outside.join("results").exists());
    assert!(!inside.join("results/steal").exists());

    // And a well-behaved pipeline in the same place runs.
    let (ok, err) = submit(&c, &pipeline(&inside));
    assert!(ok, "{err}");
}

/// The coordinator's peak memory (VmHWM), from /proc.
fn peak_memory_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// A token holder sending 8 oversized Submits at once is refused from each message's length
/// prefix: the coordinator does not buffer them (it once took 833 MB for 8 × 100 MB).
#[test]
fn oversized_requests_are_refused_before_they_are_buffered() {
    let c = Cluster::start();
    let p = pipeline(c.dir.path());
    let big = c.dir.path().join("big.yaml");
    let mut yaml = std::fs::read_to_string(&p).unwrap();
    yaml.push('#');
    yaml.push_str(&"x".repeat(24 << 20));
    yaml.push('\n');
    std::fs::write(&big, yaml).unwrap();
    let before = peak_memory_mb(c._coordinator.child.id());
    let submits: Vec<_> = (0..8)
        .map(|_| {
            c.client(&["submit"])
                .arg(&big)
                .arg("--token-file")
                .arg(c.token())
                .args(["--tls-fingerprint", &c.fingerprint])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for s in submits {
        let out = s.wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("too large") && err.contains("4194304"),
            "{err}"
        );
    }
    let after = peak_memory_mb(c._coordinator.child.id());
    assert!(
        after < before + 64,
        "the coordinator's peak memory grew from {before} MB to {after} MB"
    );
    // Nothing was submitted.
    assert_eq!(c.runs(), serde_json::json!([]));
}

/// 200 connections that never say a word: beyond the cap they make room or are closed, none
/// outlives the handshake time-out, and a worker and a client are served throughout.
#[test]
fn a_flood_of_silent_connections_does_not_lock_anyone_out() {
    use std::io::Read as _;
    let c = Cluster::start_with(&["--max-connections", "32", "--handshake-timeout-s", "2"]);
    let p = pipeline(c.dir.path());
    let _worker = c.worker();
    // Let the worker join before the flood.
    wait_for("the worker to join", 30, || {
        let log = std::fs::read_to_string(c.dir.path().join("coordinator.log")).unwrap();
        log.contains("worker connected").then_some(())
    });
    let t0 = std::time::Instant::now();
    let flood: Vec<std::net::TcpStream> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", c.port)).ok())
        .collect();
    assert!(
        flood.len() >= 150,
        "only {} connections opened",
        flood.len()
    );
    // During the flood: a client is answered, and a pipeline runs on the worker.
    let runs = c.runs();
    assert_eq!(runs, serde_json::json!([]));
    let (ok, err) = submit(&c, &p);
    assert!(ok, "{err}");
    let n = std::fs::read_to_string(c.dir.path().join("results/count/plate=P1/n.txt")).unwrap();
    assert_eq!(n.trim(), "12");
    // Every silent connection is closed by now or within the handshake time-out.
    for mut s in flood {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(_) => panic!("a silent connection got data"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a silent connection was still open after {:?}",
                t0.elapsed()
            ),
        }
    }
}

/// A worker whose TLS settings cannot work stops at once with the reason, as a worker with a
/// wrong token does, instead of retrying for its whole reconnect time-out.
#[test]
fn a_worker_with_the_wrong_tls_settings_stops_at_once() {
    let c = Cluster::start();
    let other = format!("sha256:{}", "00".repeat(32));
    let cases: [(&[&str], &str); 2] = [
        (&["--tls-fingerprint", &other], "not the pinned"),
        (&[], "--tls-fingerprint"),
    ];
    for (tls, why) in cases {
        let t0 = std::time::Instant::now();
        let out = run_bounded(
            c.client(&["worker", "--name", "misconfigured"])
                .arg("--token-file")
                .arg(c.token())
                .args(tls)
                .arg("--store")
                .arg(c.dir.path().join("w/store"))
                .arg("--scratch")
                .arg(c.dir.path().join("w/scratch")),
            30,
        );
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(why) && err.contains("stops"), "{err}");
        assert!(t0.elapsed().as_secs() < 15, "took {:?}", t0.elapsed());
    }
}
