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
