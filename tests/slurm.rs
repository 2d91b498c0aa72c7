//! Against a real Slurm: a throw-away single-node cluster (munged, slurmctld, slurmd started
//! by tests/slurm/local-slurm.sh), a real coordinator, workers as Slurm jobs — (a) started by
//! the deploy script, (b) allocated by the coordinator itself. Checks the outputs, and that
//! every allocation ended once the work was done. Skips, saying why, where Slurm is absent.

use plateflow_e2e::{free_port, plateflow, plateflow_bin, run_bounded, wait_for, Proc};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running local Slurm cluster, stopped on drop.
struct LocalSlurm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl LocalSlurm {
    fn start() -> Option<LocalSlurm> {
        // slurmd must run as root to start jobs as their users.
        if unsafe { libc::geteuid() } != 0 {
            println!(
                "skipped: a local Slurm cluster needs root (slurmd), and this test is not root"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = repo().join("tests/slurm/local-slurm.sh");
        let out = run_bounded(
            Command::new("bash")
                .arg(&script)
                .arg("start")
                .arg(dir.path()),
            120,
        );
        match out.status.code() {
            Some(0) => {}
            Some(77) => {
                println!("skipped: {}", String::from_utf8_lossy(&out.stderr).trim());
                return None;
            }
            _ => panic!(
                "could not start the local Slurm cluster:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        let conf = dir.path().join("slurm.conf");
        assert!(conf.exists());
        Some(LocalSlurm { dir, conf })
    }
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }
    /// Job ids in the queue.
    fn queue(&self) -> Vec<String> {
        let out = run_bounded(self.cmd("squeue").args(["-h", "-o", "%i %T"]), 30);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for LocalSlurm {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/slurm/local-slurm.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Six tasks that each take a moment, so that one allocation runs several.
fn pipeline(dir: &Path) -> PathBuf {
    let plates = ["P1", "P2", "P3", "P4", "P5", "P6"];
    plateflow_e2e::per_plate_pipeline(
        dir,
        "hpc",
        &plates,
        r#"sleep 0.5; echo "$SLURM_JOB_ID" > job.txt; wc -c < {inputs} > n.txt"#,
        &["n.txt", "job.txt"],
    )
}

fn coordinator(slurm: &LocalSlurm, dir: &Path, port: u16, extra: &[&str]) -> Proc {
    let p = Proc::spawn(
        "coordinator",
        plateflow()
            .env("SLURM_CONF", &slurm.conf)
            .env("PLATEFLOW_LOG", "info")
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--heartbeat-ms", "200", "--lease-ms", "3000", "--state"])
            .arg(dir.join("state"))
            .args(extra),
        &dir.join("coordinator.log"),
    );
    wait_for("the coordinator to listen", 30, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    p
}

fn submit_and_check(dir: &Path, port: u16) -> Vec<String> {
    let out = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", dir.join("state/token"))
            .args(["submit", "--wait", "--json"])
            .arg(pipeline(dir))
            .args(["--coordinator", &format!("127.0.0.1:{port}")]),
        240,
    );
    let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\ncoordinator log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut jobs = Vec::new();
    for plate in 1..=6 {
        let r = dir.join(format!("results/count/plate=P{plate}"));
        let n = std::fs::read_to_string(r.join("n.txt")).unwrap();
        assert_eq!(n.trim(), "12", "plate {plate}");
        let job = std::fs::read_to_string(r.join("job.txt")).unwrap();
        assert!(!job.trim().is_empty(), "P{plate} ran outside a Slurm job");
        jobs.push(job.trim().to_string());
    }
    jobs.sort();
    jobs.dedup();
    jobs
}

#[test]
fn workers_as_slurm_jobs_from_the_deploy_script_and_from_automatic_allocation() {
    let Some(slurm) = LocalSlurm::start() else {
        return;
    };

    // (a) Workers started by deploy/slurm/plateflow-workers.sbatch.
    let a = tempfile::tempdir().unwrap();
    let port = free_port();
    let _coord = coordinator(&slurm, a.path(), port, &[]);
    let state = a.path().join("state");
    let out = run_bounded(
        slurm
            .cmd("sbatch")
            .args(["--parsable", "--cpus-per-task=2", "-o"])
            .arg(a.path().join("slurm-%j.out"))
            .env("PLATEFLOW", plateflow_bin())
            .env("PLATEFLOW_TOKEN_FILE", state.join("token"))
            .env("PLATEFLOW_SHARED_STATE", &state)
            .env("PLATEFLOW_IDLE_TIMEOUT_S", "3")
            .arg(repo().join("deploy/slurm/plateflow-workers.sbatch"))
            .arg(format!("127.0.0.1:{port}")),
        30,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let jobs = submit_and_check(a.path(), port);
    assert_eq!(
        jobs,
        vec![job.clone()],
        "every task ran in the deployed job"
    );
    wait_for("the idle worker to end its job", 60, || {
        slurm.queue().is_empty().then_some(())
    });

    // (b) Automatic allocation: the coordinator submits worker jobs itself.
    let b = tempfile::tempdir().unwrap();
    let port = free_port();
    let _coord = coordinator(
        &slurm,
        b.path(),
        port,
        &[
            "--slurm-partition",
            "debug",
            "--slurm-cpus",
            "1",
            "--slurm-time",
            "00:10:00",
            "--slurm-max-allocations",
            "2",
            "--slurm-idle-timeout-s",
            "3",
            "--alloc-interval-s",
            "0.5",
        ],
    );
    let jobs = submit_and_check(b.path(), port);
    assert!(
        !jobs.is_empty() && jobs.len() <= 2,
        "6 tasks bundled into at most 2 allocations, not one job per task: {jobs:?}"
    );
    wait_for("the allocations to end", 90, || {
        slurm.queue().is_empty().then_some(())
    });
    let list = wait_for("the allocator to record the ends", 30, || {
        let out = run_bounded(
            plateflow()
                .args(["alloc", "list", "--state"])
                .arg(b.path().join("state")),
            30,
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<&str> = text.lines().skip(1).collect();
        (!rows.is_empty() && rows.iter().all(|r| r.contains(" ended "))).then_some(text)
    });
    for job in &jobs {
        assert!(list.contains(job.as_str()), "{job} not listed:\n{list}");
    }
    println!("{list}");
}

/// `plateflow alloc list` of a coordinator's state directory.
fn alloc_list(state: &Path) -> String {
    let out = run_bounded(
        plateflow().args(["alloc", "list", "--state"]).arg(state),
        30,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_preempted_allocation_is_replaced_and_a_failing_sbatch_is_survived() {
    let Some(slurm) = LocalSlurm::start() else {
        return;
    };
    // A partition that does not exist: sbatch fails, the allocator records it and backs
    // off; the coordinator keeps serving.
    let bad = tempfile::tempdir().unwrap();
    let port = free_port();
    let _coord = coordinator(
        &slurm,
        bad.path(),
        port,
        &["--slurm-partition", "nosuch", "--alloc-interval-s", "0.3"],
    );
    let p = pipeline(bad.path());
    let _submitted = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", bad.path().join("state/token"))
            .arg("submit")
            .arg(&p)
            .args(["--coordinator", &format!("127.0.0.1:{port}")]),
        30,
    );
    let list = wait_for("a failed submission to be recorded", 30, || {
        let l = alloc_list(&bad.path().join("state"));
        l.contains("submission failed").then_some(l)
    });
    assert!(list.to_lowercase().contains("partition"), "{list}");
    let out = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", bad.path().join("state/token"))
            .args([
                "status",
                "--json",
                "--coordinator",
                &format!("127.0.0.1:{port}"),
            ]),
        30,
    );
    assert!(out.status.success(), "the coordinator still serves");

    // Pre-emption: the allocation running the first task is cancelled under it; its task
    // runs again in a new allocation and the run completes.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _coord = coordinator(
        &slurm,
        dir.path(),
        port,
        &[
            "--slurm-partition",
            "debug",
            "--slurm-cpus",
            "1",
            "--slurm-max-allocations",
            "1",
            "--slurm-idle-timeout-s",
            "3",
            "--alloc-interval-s",
            "0.3",
        ],
    );
    let p = pipeline(dir.path());
    // No retries: Slurm signals a job's task processes and its worker at once, and the
    // worker hands its tasks back (a Goodbye) instead of reporting them failed, so the
    // pre-empted attempt does not use up a retry.
    let started = dir.path().join("state/scratch/started.log");
    let slow = std::fs::read_to_string(&p)
        .unwrap()
        .replace(
            "sleep 0.5;",
            &format!("echo $SLURM_JOB_ID >> {}; sleep 3;", started.display()),
        )
        .replace(
            "    for_each: plate\n",
            "    for_each: plate\n    retries: 0\n",
        );
    std::fs::write(&p, slow).unwrap();
    let token = dir.path().join("state/token");
    let out = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", &token)
            .arg("submit")
            .arg(&p)
            .args(["--coordinator", &format!("127.0.0.1:{port}")]),
        30,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = wait_for("the first task to start in an allocation", 60, || {
        std::fs::read_to_string(&started)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
    });
    let out = run_bounded(slurm.cmd("scancel").arg(&first), 30);
    assert!(out.status.success());
    let st = wait_for("the run to finish", 180, || {
        let out = run_bounded(
            plateflow()
                .env("PLATEFLOW_TOKEN_FILE", &token)
                .args(["status", "1", "--tasks", "--json"])
                .args(["--coordinator", &format!("127.0.0.1:{port}")]),
            30,
        );
        let st = plateflow_e2e::json_of(&out)[0].clone();
        (st["state"] != "running").then_some(st)
    });
    assert_eq!(st["state"], "succeeded", "{st}");
    let retried = st["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["attempts"].as_u64() > Some(1))
        .count();
    assert!(retried >= 1, "the pre-empted task ran again: {st}");
    wait_for("the allocations to end", 90, || {
        slurm.queue().is_empty().then_some(())
    });
    let list = wait_for("both allocations recorded as ended", 30, || {
        let l = alloc_list(&dir.path().join("state"));
        let rows: Vec<&str> = l.lines().skip(1).collect();
        (rows.len() >= 2 && rows.iter().all(|r| r.contains(" ended "))).then_some(l)
    });
    assert!(list.contains(&first), "{list}");
}
