//! What an adversary or a careless step brings, tried against the real `plateflow` binary:
//! hostile file and plate names, steps that tamper with their inputs, decompression bombs,
//! paths that climb out, full disks, killed runs and a closed stdout. Each test failed before
//! the fix it guards; the README's "What is enforced" lists what they cover.

use plateflow_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `plateflow run PIPELINE --json --quiet`, bounded.
fn run_json(pipeline: &Path, extra: &[&str]) -> (serde_json::Value, std::process::Output) {
    let out = run_bounded(
        plateflow()
            .arg("run")
            .arg(pipeline)
            .args(["--json", "--quiet"])
            .args(extra),
        120,
    );
    let st = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (st, out)
}

/// A reader that goes away: stdout is a pipe closed before plateflow writes to it.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let (read, write) = {
        let mut fds = [0; 2];
        // SAFETY: a plain pipe(2); both ends are owned below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    };
    // SAFETY: the read end is closed at once, so every write gets EPIPE.
    unsafe { libc::close(read) };
    use std::os::fd::FromRawFd as _;
    let stdout = unsafe { std::fs::File::from_raw_fd(write) };
    let out = plateflow()
        .arg("kinds")
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

/// Plate folder names an adversary (or a careless export) could bring. Among them `P\1` and
/// `P_1`, which once shared a results directory.
const HOSTILE_NAMES: &[&str] = &[
    "$(touch PWNED)",
    "$(cd;touch PWNED)",
    "`touch PWNED`",
    "P1;touch PWNED",
    "P1&&touch PWNED||x",
    "it's",
    "say \"hi\"",
    "two  spaces",
    "-rf",
    "*",
    "$HOME",
    "${IFS}x",
    "P\\1",
    "P_1",
    "tab\there",
    "new\nline",
    "a,b]c[",
    "100%",
    "植物",
    "'\"$(x)`;|&<>",
];

/// Every file under `dir` named `name`, with its contents.
fn contents_named(dir: &Path, name: &str) -> Vec<String> {
    let mut out: Vec<String> = tree_bytes(dir)
        .into_iter()
        .filter(|(p, _)| Path::new(p).file_name().is_some_and(|f| f == name))
        .map(|(_, b)| String::from_utf8(b).unwrap())
        .collect();
    out.sort();
    out
}

fn pwned_anywhere(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for d in dirs {
        for p in tree_bytes(d).keys() {
            if p.contains("PWNED") && !p.contains("touch PWNED") {
                found.push(d.join(p));
            }
        }
    }
    found
}

#[test]
fn hostile_plate_names_are_values_never_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let proj = tmp.path().join("proj");
    for name in HOSTILE_NAMES {
        let d = proj.join("data").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a.txt"), format!("{name}\n")).unwrap();
    }
    // Four ways to use a value: bare and double-quoted in a shell script, in a here-string
    // of printf, and without any shell (`cp`).
    let p = proj.join("hostile.yaml");
    std::fs::write(
        &p,
        r#"pipeline: hostile
data:
  images: data
  pattern: "{plate}/{name}.txt"
steps:
  bare:
    uses: command
    for_each: plate
    with:
      run: printf '%s\n' {plate} > out.txt
      outputs: [out.txt]
  quoted:
    uses: command
    for_each: plate
    with:
      run: printf "%s\n" "plate {plate} task {task}" > out.txt
      outputs: [out.txt]
  glued:
    uses: command
    for_each: plate
    with:
      run: |
        x=[{plate}]
        printf '%s\n' "$x" > out.txt
      outputs: [out.txt]
  direct:
    uses: command
    for_each: plate
    with:
      run: cp {inputs} out.txt
      outputs: [out.txt]
"#,
    )
    .unwrap();
    // `$(cd;touch PWNED)` would write into $HOME: one inside the test directory.
    let out = run_bounded(
        plateflow()
            .env("HOME", &home)
            .arg("run")
            .arg(&p)
            .args(["--json", "--quiet"]),
        120,
    );
    let st = json_of(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(st["state"], "succeeded", "{st}");
    let n = HOSTILE_NAMES.len();
    assert_eq!(ran(&st).len(), 4 * n, "{st}");
    let results = proj.join("results");
    let want = |f: &dyn Fn(&str) -> String| {
        let mut v: Vec<String> = HOSTILE_NAMES.iter().map(|s| f(s)).collect();
        v.sort();
        v
    };
    assert_eq!(
        contents_named(&results.join("bare"), "out.txt"),
        want(&|s| format!("{s}\n"))
    );
    assert_eq!(
        contents_named(&results.join("glued"), "out.txt"),
        want(&|s| format!("[{s}]\n"))
    );
    assert_eq!(
        contents_named(&results.join("direct"), "out.txt"),
        want(&|s| format!("{s}\n"))
    );
    let quoted = contents_named(&results.join("quoted"), "out.txt");
    for name in HOSTILE_NAMES {
        assert!(
            quoted
                .iter()
                .any(|q| q.starts_with(&format!("plate {name} task quoted["))),
            "{name:?} not in {quoted:?}"
        );
    }
    // One results directory per plate and step: `P\1` and `P_1` did not collide.
    for step in ["bare", "quoted", "glued", "direct"] {
        let dirs = std::fs::read_dir(results.join(step)).unwrap().count();
        assert_eq!(dirs, n, "{step}");
    }
    let pwned = pwned_anywhere(&[tmp.path()]);
    assert!(pwned.is_empty(), "a name ran as a command: {pwned:?}");
}

/// A step that appends to its upstream input changes its own copy only: the stored blob, the
/// sibling that reads it next and the cache of the next run all keep the original bytes.
#[test]
fn a_step_that_writes_to_its_inputs_cannot_change_what_others_read() {
    let tmp = tempfile::tempdir().unwrap();
    let p = per_plate_pipeline(
        tmp.path(),
        "tamper",
        &["P1"],
        "cp {inputs} a.txt",
        &["a.txt"],
    );
    let mut yaml = std::fs::read_to_string(&p).unwrap();
    yaml.push_str(
        r#"  vandal:
    uses: command
    for_each: plate
    after: [count]
    with:
      run: |
        chmod u+w {upstream.count} 2>/dev/null
        echo tampered >> {upstream.count} && cp {upstream.count} b.txt
      outputs: [b.txt]
  reader:
    uses: command
    for_each: plate
    after: [count, vandal]
    with:
      run: cp {upstream.count} c.txt
      outputs: [c.txt]
"#,
    );
    std::fs::write(&p, yaml).unwrap();
    let (st, out) = run_json(&p, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(st["state"], "succeeded", "{st}");
    let read = |rel: &str| std::fs::read_to_string(tmp.path().join("results").join(rel)).unwrap();
    assert_eq!(read("vandal/plate=P1/b.txt"), "cells of P1\ntampered\n");
    assert_eq!(read("reader/plate=P1/c.txt"), "cells of P1\n");
    assert_eq!(read("count/plate=P1/a.txt"), "cells of P1\n");
    // The next run trusts its cache, and the cache holds the original bytes.
    let (st, out) = run_json(&p, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ran(&st).is_empty(), "{st}");
    assert_eq!(read("reader/plate=P1/c.txt"), "cells of P1\n");
}

/// A pipeline whose task starts a background grandchild that writes `late` after 3 s, then
/// waits a minute: the task is running (and the grandchild pending) once `started` exists.
fn lingering_pipeline(dir: &Path) -> PathBuf {
    let p = per_plate_pipeline(dir, "linger", &["P1"], "true", &["n.txt"]);
    let yaml = std::fs::read_to_string(&p).unwrap().replace(
        "      run: true\n",
        &format!(
            "      run: |\n        touch {0}/started\n        (sleep 3; touch {0}/late) &\n        sleep 60\n",
            dir.display()
        ),
    );
    std::fs::write(&p, yaml).unwrap();
    p
}

/// `plateflow run` in its own process group (as a shell runs a foreground job), stopped by
/// `signal` sent to `group` (Ctrl-C reaches the whole foreground group) or to it alone.
fn stop_a_run_midway(signal: i32, whole_group: bool) {
    use std::os::unix::process::CommandExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let p = lingering_pipeline(tmp.path());
    let mut child = plateflow()
        .arg("run")
        .arg(&p)
        .arg("--quiet")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = tmp.path().join("started");
    wait_for("the task to start", 60, || started.exists().then_some(()));
    let pid = child.id() as i32;
    // SAFETY: signals the run started above (or its process group).
    unsafe {
        libc::kill(if whole_group { -pid } else { pid }, signal);
    }
    wait_for("the run to end", 20, || child.try_wait().unwrap());
    // The grandchild would have written `late` 3 s after the task started.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        !tmp.path().join("late").exists(),
        "a task's process outlived its run (signal {signal})"
    );

    // The next run (now a quick task) removes what the killed workers left in scratch.
    let yaml = std::fs::read_to_string(&p).unwrap();
    let quick = yaml
        .lines()
        .filter(|l| !l.contains("touch") && !l.contains("sleep"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("      run: |", "      run: echo ok > n.txt");
    std::fs::write(&p, quick + "\n").unwrap();
    let (st, out) = run_json(&p, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(st["state"], "succeeded", "{st}");
    let scratch = tmp.path().join(".plateflow/scratch");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch still holds {left:?}");
}

#[test]
fn ctrl_c_of_a_run_leaves_no_task_process_behind() {
    stop_a_run_midway(libc::SIGINT, true);
}

#[test]
fn a_killed_run_and_its_workers_leave_no_task_process_behind() {
    stop_a_run_midway(libc::SIGKILL, false);
}

#[test]
fn results_that_cannot_be_written_fail_the_run_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let p = per_plate_pipeline(
        tmp.path(),
        "nowhere",
        &["P1"],
        "cat {inputs} > n.txt",
        &["n.txt"],
    );
    let yaml = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        yaml.replace(
            "pipeline: nowhere\n",
            "pipeline: nowhere\nresults: /dev/null\n",
        ),
    )
    .unwrap();
    let (st, out) = run_json(&p, &[]);
    assert!(!out.status.success(), "{st}");
    assert_eq!(st["state"], "failed", "{st}");
    let err = st["error"].as_str().unwrap();
    assert!(err.contains("/dev/null/count/plate=P1/n.txt"), "{err}");
    assert!(
        stderr(&out).contains("FAILED to keep the results"),
        "{}",
        stderr(&out)
    );
    let runs = run_bounded(plateflow().arg("runs").arg(&p), 30);
    let text = String::from_utf8_lossy(&runs.stdout);
    assert!(
        text.contains("failed") && !text.contains("interrupted"),
        "{text}"
    );
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `dir` to the last byte; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![7u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.write_all(&[7u8]);
    let _ = f.sync_all();
    filler
}

#[test]
fn a_full_disk_fails_the_run_and_the_rerun_after_freeing_space_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    let _fs = match Tmpfs::mount(&small, "2m") {
        Ok(m) => m,
        Err(e) => {
            println!("skipped: cannot mount a tmpfs here ({e}); CI runs this as root");
            return;
        }
    };
    let step = "yes {plate} | head -c 300000 > big.txt";
    let make = |dir: &Path, ws: &Path| {
        let p = per_plate_pipeline(dir, "full", &["P1", "P2"], step, &["big.txt"]);
        let yaml = std::fs::read_to_string(&p).unwrap();
        let yaml = yaml.replace(
            "pipeline: full\n",
            &format!("pipeline: full\nworkspace: {}\n", ws.display()),
        );
        std::fs::write(&p, yaml).unwrap();
        p
    };
    // The store and database live elsewhere; results and the lock file on the small disk.
    let p = make(&small.join("proj"), &tmp.path().join("ws"));
    let filler = fill(&small);
    let (st, out) = run_json(&p, &[]);
    assert!(!out.status.success(), "{st}");
    assert_eq!(st["state"], "failed", "{st}");
    let err = st["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("cannot write result") && err.contains("small/proj/results"),
        "{err}"
    );

    std::fs::remove_file(filler).unwrap();
    let (st, out) = run_json(&p, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(st["state"], "succeeded", "{st}");
    assert!(ran(&st).is_empty(), "finished tasks ran again: {st}");

    let clean = make(&tmp.path().join("clean"), &tmp.path().join("clean-ws"));
    let (st, out) = run_json(&clean, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(
        tree_bytes(&small.join("proj/results")),
        tree_bytes(&tmp.path().join("clean/results"))
    );
    assert_eq!(
        std::fs::read(small.join("proj/full.lock")).unwrap(),
        std::fs::read(tmp.path().join("clean/full.lock")).unwrap()
    );
}

/// An unreadable image and a file whose name is not UTF-8 fail their own plates' tasks,
/// naming the file (its bytes as they are); the other plates run.
#[test]
fn an_unreadable_file_fails_only_its_plate() {
    use std::os::unix::ffi::OsStrExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let p = per_plate_pipeline(
        tmp.path(),
        "partial",
        &["P1", "P2", "P3"],
        "cat {inputs} > n.txt",
        &["n.txt"],
    );
    let unreadable = tmp.path().join("data/P2/a.txt");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root reads any mode: a file whose reading fails for root too.
        std::fs::remove_file(&unreadable).unwrap();
        std::os::unix::fs::symlink("/proc/self/mem", &unreadable).unwrap();
    } else {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let odd = tmp
        .path()
        .join("data/P3")
        .join(std::ffi::OsStr::from_bytes(b"b\xff.txt"));
    std::fs::write(&odd, "odd\n").unwrap();
    let mut yaml = std::fs::read_to_string(&p).unwrap();
    yaml.push_str("  summary:\n    uses: command\n    after: [count]\n    with:\n      run: cat {upstream.count} > all.txt\n      outputs: [all.txt]\n");
    std::fs::write(&p, yaml).unwrap();

    let dry = run_bounded(plateflow().arg("run").arg(&p).arg("--dry-run"), 60);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains("would FAIL count[plate=P2]"),
        "{text}{}",
        stderr(&dry)
    );

    let (st, out) = run_json(&p, &[]);
    assert!(!out.status.success(), "{st}");
    assert_eq!(st["state"], "failed", "{st}");
    let task = |label: &str| -> serde_json::Value {
        st["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == label)
            .cloned()
            .unwrap_or_else(|| panic!("no task {label}: {st}"))
    };
    assert_eq!(task("count[plate=P1]")["state"], "done");
    let p2 = task("count[plate=P2]");
    assert_eq!(p2["state"], "failed");
    assert!(
        p2["error"].as_str().unwrap().contains("data/P2/a.txt"),
        "{p2}"
    );
    let p3 = task("count[plate=P3]");
    assert_eq!(p3["state"], "failed");
    assert!(
        p3["error"].as_str().unwrap().contains("P3/b\\xff.txt")
            && p3["error"].as_str().unwrap().contains("not valid UTF-8"),
        "{p3}"
    );
    assert_eq!(task("summary")["state"], "skipped");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("results/count/plate=P1/n.txt")).unwrap(),
        "cells of P1\n"
    );
}
