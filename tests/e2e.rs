//! End to end, with real processes: `plateflow run` (embedded coordinator and workers over
//! loopback gRPC), and a separate coordinator with worker processes that are killed.

use plateflow_e2e::*;
use std::path::{Path, PathBuf};

/// Small demo plates (4 wells, 1 site) under the engine tests' own pipeline of `command`
/// steps: these tests are about scheduling, caching and recovery, not image analysis.
fn demo(dir: &Path, plates: usize) -> PathBuf {
    let out = run_bounded(
        plateflow()
            .args([
                "demo", "--no-run", "--wells", "4", "--sites", "1", "--size", "96",
            ])
            .args(["--plates", &plates.to_string(), "--dir"])
            .arg(dir),
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pipeline = dir.join("demo.yaml");
    std::fs::write(&pipeline, include_str!("pipelines/inventory.yaml")).unwrap();
    pipeline
}

#[test]
fn local_demo_then_incremental_reruns() {
    let tmp = tempfile::tempdir().unwrap();
    let p = demo(tmp.path(), 3);

    let (st, out) = run_json(&p, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(st["state"], "succeeded");
    assert_eq!(ran(&st).len(), 3 + 3 + 1);
    let summary = std::fs::read_to_string(tmp.path().join("results/summary/summary.txt")).unwrap();
    assert!(summary.contains("images: 24"), "{summary}");
    let lock = std::fs::read_to_string(tmp.path().join("demo.lock")).unwrap();
    assert!(
        lock.contains("\"inventory[plate=P1]\":") && lock.contains("\"P1/A01_s1_w1.tif\": sha256:")
    );

    // A no-op re-run does no work.
    let (st, _) = run_json(&p, &[]);
    assert_eq!(ran(&st), Vec::<String>::new());
    assert!(st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["ran"] == 0));

    // A new plate: its per-plate tasks and the aggregate run, nothing else.
    demo(tmp.path(), 4);
    let dry = run_bounded(plateflow().arg("run").arg(&p).arg("--dry-run"), 60);
    let dry = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.contains("would run  inventory[plate=P4]: new task"),
        "{dry}"
    );
    assert!(dry.contains("3 task(s) would run, 6 cached"), "{dry}");
    // A step asked about by name: its counts, and the task that runs, not its first.
    let explain = run_bounded(plateflow().arg("explain").arg(&p).arg("inventory"), 60);
    let explain = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain
            .contains("step `inventory`: 1 of its 4 tasks will run or wait on upstream, 3 cached")
            && explain.contains("inventory[plate=P4]:\n  runs because:"),
        "{explain}"
    );
    let (st, _) = run_json(&p, &[]);
    assert_eq!(
        ran(&st),
        sorted(&["inventory[plate=P4]", "well_counts[plate=P4]", "summary"])
    );
    let summary = std::fs::read_to_string(tmp.path().join("results/summary/summary.txt")).unwrap();
    assert!(summary.contains("images: 32"), "{summary}");

    // A changed parameter re-runs that step (and what reads it, when its outputs change).
    let yaml = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, yaml.replace("uniq -c >", "uniq -c | sed 's/^ *//' >")).unwrap();
    let explain = run_bounded(
        plateflow()
            .arg("explain")
            .arg(&p)
            .arg("well_counts[plate=P2]"),
        60,
    );
    let explain = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.contains("parameter `run` changed"), "{explain}");
    let (st, _) = run_json(&p, &[]);
    let mut want: Vec<String> = (1..=4)
        .map(|i| format!("well_counts[plate=P{i}]"))
        .collect();
    want.push("summary".into());
    want.sort();
    assert_eq!(ran(&st), want);
    let reason = st["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "well_counts[plate=P1]")
        .unwrap()["reason"]
        .clone();
    assert!(
        reason.as_str().unwrap().contains("parameter `run` changed"),
        "{reason}"
    );

    // Early cut-off: a change that leaves the outputs identical stops at that step.
    let yaml = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, yaml.replace("sed 's/^ *//' >", "sed 's/^ *//' | cat >")).unwrap();
    let (st, _) = run_json(&p, &[]);
    assert_eq!(
        ran(&st),
        want.iter()
            .filter(|l| *l != "summary")
            .cloned()
            .collect::<Vec<_>>(),
        "summary's inputs did not change, so it is cached"
    );

    // Lineage from a result file back to its inputs.
    let lin = run_bounded(
        plateflow()
            .arg("lineage")
            .arg(&p)
            .arg(tmp.path().join("results/summary/summary.txt")),
        60,
    );
    let lin = String::from_utf8_lossy(&lin.stdout);
    assert!(
        lin.contains("summary  [command@1]") && lin.contains("input   P4/A04_s1_w2.tif  sha256:"),
        "{lin}"
    );
}

/// One screen-wide plate map: a new plate's rows, a changed label and a shuffled file re-run
/// exactly the tasks whose rows changed, plus the aggregates that read every row.
#[test]
fn plate_map_rows_rerun_only_their_plates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    demo(dir, 5);
    let p = dir.join("rows.yaml");
    std::fs::write(&p, include_str!("pipelines/plate-map-rows.yaml")).unwrap();
    // P5 arrives later: its images and rows are set aside.
    let map = std::fs::read_to_string(dir.join("platemap.csv")).unwrap();
    let (p5, rest): (Vec<&str>, Vec<&str>) = map.lines().partition(|l| l.starts_with("P5,"));
    std::fs::write(dir.join("platemap.csv"), rest.join("\n") + "\n").unwrap();
    std::fs::rename(dir.join("images/P5"), dir.join("P5-later")).unwrap();

    let (st, out) = run_json(&p, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ran(&st).len(), 4 + 4 + 1);

    // P5 arrives, its rows appended: only its own tasks and the aggregate run.
    std::fs::rename(dir.join("P5-later"), dir.join("images/P5")).unwrap();
    let mut lines: Vec<String> = rest.iter().map(|l| l.to_string()).collect();
    lines.extend(p5.iter().map(|l| l.to_string()));
    std::fs::write(dir.join("platemap.csv"), lines.join("\n") + "\n").unwrap();
    let (st, _) = run_json(&p, &[]);
    assert_eq!(
        ran(&st),
        sorted(&["qc[plate=P5]", "rows[plate=P5]", "table"])
    );

    // One label of P2 changes: P2's tasks and the aggregate, and `explain` says which.
    let header: Vec<&str> = lines[0].split(',').collect();
    let label_col = header
        .iter()
        .position(|c| *c == "phenotype")
        .expect("phenotype column");
    let i = lines.iter().position(|l| l.starts_with("P2,")).unwrap();
    let mut cells: Vec<String> = lines[i].split(',').map(str::to_string).collect();
    let (old, new) = (
        cells[label_col].clone(),
        format!("{}_relabelled", cells[label_col]),
    );
    cells[label_col] = new.clone();
    lines[i] = cells.join(",");
    std::fs::write(dir.join("platemap.csv"), lines.join("\n") + "\n").unwrap();
    let explain = run_bounded(plateflow().arg("explain").arg(&p).arg("rows[plate=P2]"), 60);
    let explain = String::from_utf8_lossy(&explain.stdout);
    let well = &cells[1];
    assert!(
        explain.contains(&format!(
            "plate-map rows of plate=P2 changed: P2 {well}: phenotype {old} → {new}"
        )),
        "{explain}"
    );
    let (st, _) = run_json(&p, &[]);
    assert_eq!(
        ran(&st),
        sorted(&["qc[plate=P2]", "rows[plate=P2]", "table"])
    );

    // The same rows in another order: nothing runs.
    let mut shuffled = lines.clone();
    shuffled[1..].reverse();
    std::fs::write(dir.join("platemap.csv"), shuffled.join("\n") + "\n").unwrap();
    let (st, _) = run_json(&p, &[]);
    assert_eq!(ran(&st), Vec::<String>::new());
}

#[test]
fn corrupt_blob_is_detected_and_recomputed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = demo(tmp.path(), 3);
    let (st, _) = run_json(&p, &[]);
    assert_eq!(st["state"], "succeeded");
    let result = tmp.path().join("results/inventory/plate=P1/inventory.csv");
    let before = std::fs::read(&result).unwrap();

    let lock: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(tmp.path().join("demo.lock")).unwrap())
            .unwrap();
    let digest = lock["tasks"]["inventory[plate=P1]"]["outputs"]["inventory.csv"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = digest
        .trim_start_matches("sha256:")
        .split('/')
        .next()
        .unwrap();
    let blob = tmp
        .path()
        .join(".plateflow/store/sha256")
        .join(&hex[..2])
        .join(hex);
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0x20; // same size, different content
    std::fs::write(&blob, &bytes).unwrap();

    let (st, _) = run_json(&p, &[]);
    assert_eq!(st["state"], "succeeded");
    assert_eq!(
        ran(&st),
        sorted(&["inventory[plate=P1]"]),
        "only the task whose output was corrupt runs again"
    );
    let t = st["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "inventory[plate=P1]")
        .unwrap();
    assert!(t["reason"].as_str().unwrap().contains("corrupt"), "{t}");
    assert_eq!(std::fs::read(&result).unwrap(), before);
    assert!(
        std::fs::read_dir(tmp.path().join(".plateflow/store/quarantine"))
            .unwrap()
            .count()
            >= 1
    );
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        before,
        "the store holds the recomputed blob again"
    );
}

#[test]
fn failing_command_step_lets_the_others_finish() {
    let tmp = tempfile::tempdir().unwrap();
    demo(tmp.path(), 3);
    let p = tmp.path().join("fail.yaml");
    std::fs::write(
        &p,
        r#"data:
  images: images
  pattern: "{plate}/{well}_s{site}_w{channel}.tif"
steps:
  check:
    uses: command
    for_each: plate
    retries: 1
    with:
      run: |
        if [ {plate} = P2 ]; then echo "cannot read plate {plate}: boom" >&2; exit 3; fi
        ls {inputs} > files.txt
        echo "checked {plate}"
      outputs: [files.txt]
  after_check:
    uses: command
    for_each: plate
    after: [check]
    with:
      run: wc -l < {upstream.check} > n.txt
      outputs: [n.txt]
"#,
    )
    .unwrap();
    let (st, out) = run_json(&p, &[]);
    assert_eq!(out.status.code(), Some(1), "a failed run exits non-zero");
    assert_eq!(st["state"], "failed");
    assert_eq!(
        ran(&st),
        sorted(&[
            "check[plate=P1]",
            "check[plate=P3]",
            "after_check[plate=P1]",
            "after_check[plate=P3]"
        ])
    );
    let tasks = st["tasks"].as_array().unwrap();
    let failed = tasks
        .iter()
        .find(|t| t["label"] == "check[plate=P2]")
        .unwrap();
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["attempts"], 2, "retries: 1 means two attempts");
    let err = failed["error"].as_str().unwrap();
    assert!(
        err.contains("attempt 2 of 2")
            && err.contains("exit status 3")
            && err.contains("cannot read plate P2: boom"),
        "{err}"
    );
    let skipped = tasks
        .iter()
        .find(|t| t["label"] == "after_check[plate=P2]")
        .unwrap();
    assert_eq!(skipped["state"], "skipped");
    // Captured stdout of a task that ran.
    let logs = run_bounded(plateflow().arg("logs").arg(&p).arg("check[plate=P3]"), 30);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "checked P3\n");
    // The human summary on stderr names the task, the attempt and the stderr tail.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FAILED check[plate=P2]") && stderr.contains("boom"),
        "{stderr}"
    );
}

#[test]
fn invalid_pipeline_is_refused_with_located_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.yaml");
    std::fs::write(&p, "steps:\n  a:\n    uses: comand\n    afer: [b]\n").unwrap();
    let out = run_bounded(plateflow().arg("run").arg(&p), 30);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:3:11") && err.contains("did you mean `command`?"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:4:5") && err.contains("did you mean `after`?"),
        "{err}"
    );
    assert!(
        err.contains(" errors in ") && err.contains("bad.yaml"),
        "all errors are reported: {err}"
    );
}

/// A pipeline whose tasks take a while and leave a trace of each start and finish.
fn slow_pipeline(dir: &Path, secs: f32) -> PathBuf {
    let p = dir.join("slow.yaml");
    let started = dir.join("started.log");
    let finished = dir.join("finished.log");
    std::fs::write(
        &p,
        format!(
            r#"pipeline: slow
data:
  images: images
  pattern: "{{plate}}/{{well}}_s{{site}}_w{{channel}}.tif"
steps:
  checksum:
    uses: command
    for_each: plate
    retries: 2
    with:
      run: |
        echo {{plate}} "$(pwd)" >> {started}
        sleep {secs}
        cksum {{inputs}} > sums.txt
        echo {{plate}} >> {finished}
      outputs: [sums.txt]
  total:
    uses: command
    after: [checksum]
    with:
      run: cat {{upstream.checksum}} > all.txt
      outputs: [all.txt]
"#,
            started = started.display(),
            finished = finished.display()
        ),
    )
    .unwrap();
    p
}

use plateflow_e2e::file_lines as lines;

/// The token file a test coordinator writes (its default: `<state>/token`).
fn token_file(dir: &Path) -> std::path::PathBuf {
    dir.join("state").join("token")
}

fn coordinator(dir: &Path, port: u16, log: &str) -> Proc {
    let p = Proc::spawn(
        "coordinator",
        plateflow()
            .args([
                "coordinator",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--heartbeat-ms",
                "200",
                "--lease-ms",
                "2000",
                "--state",
            ])
            .arg(dir.join("state")),
        &dir.join(log),
    );
    wait_for("the coordinator to listen", 30, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    p
}

fn worker(dir: &Path, port: u16, name: &str, cpus: u32) -> Proc {
    worker_with(dir, port, name, cpus, &[])
}

fn worker_with(dir: &Path, port: u16, name: &str, cpus: u32, extra: &[&str]) -> Proc {
    // Own store and scratch, no shared filesystem: inputs and outputs move over gRPC.
    Proc::spawn(
        name,
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", token_file(dir))
            .args([
                "worker",
                "--coordinator",
                &format!("127.0.0.1:{port}"),
                "--cpus",
                &cpus.to_string(),
                "--name",
                name,
                "--store",
            ])
            .arg(dir.join(name).join("store"))
            .arg("--scratch")
            .arg(dir.join(name).join("scratch"))
            .args(extra),
        &dir.join(format!("{name}.log")),
    )
}

/// Submits a pipeline without waiting; returns the run id.
fn submit(dir: &Path, pipeline: &Path, port: u16) -> String {
    submit_with(dir, pipeline, port, &[])
}

fn submit_with(dir: &Path, pipeline: &Path, port: u16, extra: &[&str]) -> String {
    let out = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", token_file(dir))
            .arg("submit")
            .arg(pipeline)
            .args(["--coordinator", &format!("127.0.0.1:{port}")])
            .args(extra),
        30,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn status(dir: &Path, port: u16, run: &str) -> serde_json::Value {
    let out = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", token_file(dir))
            .args([
                "status",
                run,
                "--tasks",
                "--json",
                "--coordinator",
                &format!("127.0.0.1:{port}"),
            ]),
        30,
    );
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    json_of(&out)[0].clone()
}

/// A worker whose time ends before a task's `timeout:` would (`--time-limit`, or its Slurm
/// job's time left) is not given the task: the coordinator says why the task waits, and a
/// worker with the time runs it.
#[test]
fn a_task_waits_for_a_worker_with_time_for_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let p = per_plate_pipeline(
        tmp.path(),
        "timed",
        &["P1"],
        "\"echo $(hostname) > where.txt\"",
        &["where.txt"],
    );
    let yaml = std::fs::read_to_string(&p).unwrap().replace(
        "    for_each: plate\n",
        "    for_each: plate\n    timeout: 1h\n",
    );
    std::fs::write(&p, yaml).unwrap();
    let port = free_port();
    let _coord = coordinator(tmp.path(), port, "coordinator.log");
    let _short = worker_with(
        tmp.path(),
        port,
        "w-short",
        1,
        &["--time-limit", "00:30:00"],
    );
    let run_id = submit(tmp.path(), &p, port);
    wait_for("the coordinator to say why the task waits", 60, || {
        std::fs::read_to_string(tmp.path().join("coordinator.log"))
            .unwrap_or_default()
            .contains("no connected worker's batch job has that long left (the most: 29m")
            .then_some(())
    });
    assert_eq!(status(tmp.path(), port, &run_id)["state"], "running");
    let _long = worker_with(tmp.path(), port, "w-long", 1, &["--time-limit", "2h"]);
    let st = wait_for("the run to finish", 60, || {
        let st = status(tmp.path(), port, &run_id);
        (st["state"] != "running" && !st.is_null()).then_some(st)
    });
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(st["tasks"][0]["worker"], "w-long", "{st}");
}

#[test]
fn worker_killed_mid_task_run_completes_byte_identical() {
    // Reference: a clean local run of the same pipeline on the same (deterministic) images.
    let clean = tempfile::tempdir().unwrap();
    demo(clean.path(), 6);
    let (st, _) = run_json(&slow_pipeline(clean.path(), 0.0), &[]);
    assert_eq!(st["state"], "succeeded");

    let tmp = tempfile::tempdir().unwrap();
    demo(tmp.path(), 6);
    let p = slow_pipeline(tmp.path(), 1.5);
    let port = free_port();
    let _coord = coordinator(tmp.path(), port, "coordinator.log");
    let mut w1 = worker(tmp.path(), port, "w-one", 1);
    let _w2 = worker(tmp.path(), port, "w-two", 1);
    let run_id = submit(tmp.path(), &p, port);
    // One dies mid-task: it is killed once a task has started in its scratch directory
    // (two started tasks alone were not enough: one worker joining 1.5 s late meant the
    // other had started both, and the killed one held none).
    wait_for("a task to start on w-one", 60, || {
        lines(&tmp.path().join("started.log"))
            .iter()
            .any(|l| l.contains("w-one"))
            .then_some(())
    });
    w1.kill9();
    let st = wait_for("the run to finish", 120, || {
        let st = status(tmp.path(), port, &run_id);
        (st["state"] != "running" && !st.is_null()).then_some(st)
    });
    assert_eq!(st["state"], "succeeded", "{st}");
    let retried: Vec<_> = st["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["attempts"].as_u64() > Some(1))
        .collect();
    assert!(
        !retried.is_empty(),
        "the killed worker's task ran again elsewhere: {st}"
    );
    assert_eq!(
        tree_bytes(&tmp.path().join("results")),
        tree_bytes(&clean.path().join("results")),
        "every output is byte-identical to a clean run"
    );
}

/// A worker killed while it trains a segmenter: restarted on the same node, it takes up the
/// training state the killed attempt left instead of starting again from step 0; the run
/// succeeds, the model card says from which step it went on, the history has every step
/// once, and the state is removed once the coordinator has saved the result.
#[test]
fn a_killed_worker_resumes_segmenter_training_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    demo(dir, 3);
    let sets = annotated_sets(dir, dir, |v, _| v);
    assert!(sets >= 2, "{sets} annotated sets");
    let steps = 300;
    let pipeline = dir.join("tune.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"pipeline: resume
data:
  images: seg
  pattern: "{{channel}}/{{set}}.tif"
  channels: {{img: DNA, lab: nuclei}}
steps:
  tune:
    uses: train_segmenter
    inputs: [images]
    with: {{nuclei: DNA, labels: nuclei, width: 4, steps: {steps}}}
"#
        ),
    )
    .unwrap();
    let port = free_port();
    let _coord = coordinator(dir, port, "coordinator.log");
    let mut w = worker(dir, port, "w-one", 1);
    let run_id = submit(dir, &pipeline, port);
    let resume_dir = dir.join("w-one/scratch/resume");
    let states = || -> Vec<PathBuf> {
        std::fs::read_dir(&resume_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "state"))
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for("a training state", 120, || {
        (!states().is_empty()).then_some(())
    });
    w.kill9();
    let _w = worker(dir, port, "w-one", 1);
    let st = wait_for("the run to finish", 300, || {
        let st = status(dir, port, &run_id);
        (st["state"] != "running" && !st.is_null()).then_some(st)
    });
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(st["tasks"][0]["attempts"], 2, "{st}");
    let card = std::fs::read_to_string(dir.join("results/tune/segmenter_card.md")).unwrap();
    let from: usize = card
        .split("this attempt went on from step ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the card does not say the training resumed:\n{card}"));
    assert!((1..steps).contains(&from), "resumed from step {from}");
    let history = file_lines(&dir.join("results/tune/segmenter_history.csv"));
    let numbered: Vec<usize> = history[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(numbered, (1..=steps).collect::<Vec<_>>());
    // Removed once the coordinator says it has saved the result (just after it was sent).
    wait_for("the training state to be removed", 10, || {
        states().is_empty().then_some(())
    });
}

#[test]
fn coordinator_killed_and_restarted_resumes_without_rerunning() {
    killed_coordinator_resumes(&[]);
}

/// A forced run that is resumed forces only what it had not yet run: each task once.
#[test]
fn a_resumed_forced_run_does_not_rerun_what_it_finished() {
    killed_coordinator_resumes(&["--force", "checksum"]);
}

fn killed_coordinator_resumes(submit_args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    demo(tmp.path(), 8);
    let p = slow_pipeline(tmp.path(), 0.7);
    let port = free_port();
    let mut coord = coordinator(tmp.path(), port, "coordinator-1.log");
    let _w = worker(tmp.path(), port, "w-one", 2);
    let run_id = submit_with(tmp.path(), &p, port, submit_args);
    let finished_log = tmp.path().join("finished.log");
    wait_for("three tasks to finish", 60, || {
        (lines(&finished_log).len() >= 3).then_some(())
    });
    let before = status(tmp.path(), port, &run_id);
    let done_before: Vec<String> = before["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "done")
        .map(|t| t["label"].as_str().unwrap().to_string())
        .collect();
    assert!(!done_before.is_empty(), "{before}");
    coord.kill9();

    let _coord2 = coordinator(tmp.path(), port, "coordinator-2.log");
    let st = wait_for("the resumed run to finish", 120, || {
        let st = status(tmp.path(), port, &run_id);
        (st["state"] == "succeeded" || st["state"] == "failed").then_some(st)
    });
    assert_eq!(st["state"], "succeeded", "{st}");
    let finished = lines(&finished_log);
    for label in &done_before {
        let plate = label
            .trim_start_matches("checksum[plate=")
            .trim_end_matches(']');
        assert_eq!(
            finished.iter().filter(|l| *l == plate).count(),
            1,
            "{label} finished before the kill and must not run again; finished.log: {finished:?}"
        );
    }
    for i in 1..=8 {
        assert!(
            finished.contains(&format!("P{i}")),
            "plate P{i} never finished: {finished:?}"
        );
    }
    let all = std::fs::read_to_string(tmp.path().join("results/total/all.txt")).unwrap();
    assert_eq!(all.lines().count(), 8 * 8, "8 plates x 8 images: {all}");
}
