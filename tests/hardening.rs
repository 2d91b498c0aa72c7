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

/// A little-endian TIFF with one strip: `photometric` 1 (grey) or 3 (palette, grey ramp).
fn raw_tiff(w: u32, h: u32, photometric: u16, compression: u16, strip: &[u8]) -> Vec<u8> {
    let mut d: Vec<u8> = b"II*\0".to_vec();
    let cmap: Vec<u8> = (0..3)
        .flat_map(|_| (0..256u32).flat_map(|i| ((i * 257) as u16).to_le_bytes()))
        .collect();
    let cmap_off = 8u32;
    let strip_off = cmap_off + cmap.len() as u32;
    let ifd_off = strip_off + strip.len() as u32;
    d.extend_from_slice(&ifd_off.to_le_bytes());
    d.extend_from_slice(&cmap);
    d.extend_from_slice(strip);
    let mut entries: Vec<(u16, u16, u32, u32)> = vec![
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 1, 8),
        (259, 3, 1, compression as u32),
        (262, 3, 1, photometric as u32),
        (273, 4, 1, strip_off),
        (277, 3, 1, 1),
        (278, 4, 1, h),
        (279, 4, 1, strip.len() as u32),
    ];
    if photometric == 3 {
        entries.push((320, 3, 768, cmap_off));
    }
    d.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, typ, count, value) in entries {
        d.extend_from_slice(&tag.to_le_bytes());
        d.extend_from_slice(&typ.to_le_bytes());
        d.extend_from_slice(&count.to_le_bytes());
        d.extend_from_slice(&value.to_le_bytes());
    }
    d.extend_from_slice(&0u32.to_le_bytes());
    d
}

/// A PNG whose header declares `w`x`h` grey pixels, followed by a tiny, short image stream.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        c.extend_from_slice(&h.finalize().to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let idat = miniz_oxide::deflate::compress_to_vec_zlib(&[0u8; 1024], 6);
    [
        b"\x89PNG\r\n\x1a\n".to_vec(),
        chunk(b"IHDR", &ihdr),
        chunk(b"IDAT", &idat),
        chunk(b"IEND", &[]),
    ]
    .concat()
}

/// The decompression bombs: (file name, bytes). Each declares a small image (or an absurd
/// one) and inflates far past it.
fn bombs() -> Vec<(&'static str, Vec<u8>)> {
    const INFLATED: usize = 256 << 20;
    let deflated = deflate_zeros(INFLATED);
    let lzw = lzw_zeros(INFLATED);
    // PackBits: 2 bytes give 128 repeated bytes.
    let packbits: Vec<u8> = [0x81u8, 0].repeat(INFLATED / 256);
    vec![
        ("palette-deflate.tif", raw_tiff(128, 128, 3, 8, &deflated)),
        ("palette-lzw.tif", raw_tiff(128, 128, 3, 5, &lzw)),
        (
            "palette-packbits.tif",
            raw_tiff(128, 128, 3, 32773, &packbits),
        ),
        ("grey-deflate.tif", raw_tiff(128, 128, 1, 8, &deflated)),
        (
            "grey-huge.tif",
            raw_tiff(200_000, 200_000, 1, 8, &deflated[..1024]),
        ),
        ("huge.png", png_declaring(100_000, 100_000)),
    ]
}

/// A zlib stream of `n` zero bytes, made a megabyte at a time (the test's own memory stays
/// small, so the decoder's is what the peak measures).
fn deflate_zeros(n: usize) -> Vec<u8> {
    use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
    use miniz_oxide::deflate::stream::deflate;
    use miniz_oxide::{MZFlush, MZStatus};
    let mut c = CompressorOxide::new(create_comp_flags_from_zip_params(1, 15, 0));
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    for i in 0..n / zeros.len() {
        let last = i + 1 == n / zeros.len();
        let mut inp = &zeros[..];
        loop {
            let flush = if last { MZFlush::Finish } else { MZFlush::None };
            let r = deflate(&mut c, inp, &mut buf, flush);
            inp = &inp[r.bytes_consumed..];
            out.extend_from_slice(&buf[..r.bytes_written]);
            match r.status {
                Ok(MZStatus::StreamEnd) => break,
                Ok(_) if inp.is_empty() && !last => break,
                Ok(_) => {}
                Err(e) => panic!("deflate: {e:?}"),
            }
        }
    }
    out
}

/// TIFF-flavoured LZW of `n` zero bytes, a megabyte at a time.
fn lzw_zeros(n: usize) -> Vec<u8> {
    let mut enc = weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    for _ in 0..n / zeros.len() {
        let mut inp = &zeros[..];
        while !inp.is_empty() {
            let r = enc.encode_bytes(inp, &mut buf);
            r.status.unwrap();
            inp = &inp[r.consumed_in..];
            out.extend_from_slice(&buf[..r.consumed_out]);
        }
    }
    enc.finish();
    loop {
        let r = enc.encode_bytes(&[], &mut buf);
        out.extend_from_slice(&buf[..r.consumed_out]);
        if matches!(r.status, Ok(weezl::LzwStatus::Done)) || r.consumed_out == 0 {
            break;
        }
    }
    out
}

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as u64 * 1024
}

/// Every bomb is refused (or cut to its declared size) naming the file, and none takes more
/// than a few megabytes of memory.
#[test]
fn decompression_bombs_are_refused_within_their_declared_size() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = bombs();
    let before = peak_rss_bytes();
    for (name, bytes) in &corpus {
        let p = tmp.path().join(name);
        assert!(bytes.len() < 4 << 20, "{name} is {} bytes", bytes.len());
        std::fs::write(&p, bytes).unwrap();
        let t0 = std::time::Instant::now();
        match plateflow_imaging::read_image(&p) {
            Err(e) => assert!(e.to_string().contains(name), "{name}: {e}"),
            // The tiff crate reads only the declared pixels of a grey strip: that is a cap.
            Ok(img) => assert_eq!((img.width, img.height), (128, 128), "{name}"),
        }
        assert!(
            t0.elapsed().as_secs() < 10,
            "{name} took {:?}",
            t0.elapsed()
        );
    }
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "decoding the bombs took {} MB",
        grown >> 20
    );

    // Through a pipeline: the QC task of the plate holding a bomb fails naming it.
    let proj = tmp.path().join("proj");
    std::fs::create_dir_all(proj.join("images/P1")).unwrap();
    let bomb = &corpus[0].1;
    std::fs::write(proj.join("images/P1/A01_s1_w1.tif"), bomb).unwrap();
    let p = proj.join("bomb.yaml");
    std::fs::write(
        &p,
        "pipeline: bomb\ndata:\n  images: images\n  pattern: \"{plate}/{well}_s{site}_w{channel}.tif\"\n  channels: {\"1\": DNA}\nsteps:\n  qc:\n    uses: curate\n    for_each: plate\n",
    )
    .unwrap();
    let (st, out) = run_json(&p, &[]);
    assert!(!out.status.success(), "{st}");
    let err = st["tasks"][0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("A01_s1_w1.tif") && err.contains("decompression bomb"),
        "{st}"
    );
}

/// A script edited while its step runs: the tasks that start after the edit fail, saying
/// the file changed after the run started, instead of running the new code and storing its
/// results under the old script's digest; the next run reruns every task with the new one.
#[test]
fn a_script_edited_during_a_run_is_not_mixed_into_its_results() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("count.sh");
    std::fs::write(&script, "echo v1 > n.txt\n").unwrap();
    // The first task edits the script it was started with (as a user saving it would).
    let run = format!(
        "sh count.sh && echo 'echo v2 > n.txt' > {}",
        script.display()
    );
    let p = per_plate_pipeline(tmp.path(), "edited", &["P1", "P2"], &run, &["n.txt"]);
    let yaml = std::fs::read_to_string(&p)
        .unwrap()
        .replace("    with:\n", "    with:\n      files: [count.sh]\n");
    std::fs::write(&p, yaml).unwrap();
    // One task at a time, so the second starts after the first has edited the script.
    let one = ["--workers", "1", "--cpus", "1"];
    let (st, out) = run_json(&p, &one);
    assert_eq!(st["state"], "failed", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("changed after the run started"),
        "{}",
        stderr(&out)
    );
    // The next run plans with the edited script: both plates run it.
    let (st, out) = run_json(&p, &one);
    assert_eq!(st["state"], "succeeded", "{}", stderr(&out));
    for plate in ["P1", "P2"] {
        let n = std::fs::read_to_string(
            tmp.path()
                .join(format!("results/count/plate={plate}/n.txt")),
        )
        .unwrap();
        assert_eq!(n, "v2\n", "{plate}");
    }
}

/// A plate of thousands of files handed to a shell command as `{inputs}` (a 384-well plate
/// of 9 fields and 4 channels is 13,824): the script outgrew the 128 KiB one argument may
/// hold and the task failed to start with "Argument list too long"; now it runs.
#[test]
fn a_plate_of_thousands_of_inputs_reaches_a_shell_command() {
    let tmp = tempfile::tempdir().unwrap();
    let p = per_plate_pipeline(
        tmp.path(),
        "many",
        &["P1"],
        "cat {inputs} | wc -l > n.txt",
        &["n.txt"],
    );
    let d = tmp.path().join("data/P1");
    for i in 0..6000 {
        std::fs::write(d.join(format!("A{i:05}_s1_w1.txt")), "x\n").unwrap();
    }
    let (st, out) = run_json(&p, &[]);
    assert_eq!(st["state"], "succeeded", "{}", stderr(&out));
    let n = std::fs::read_to_string(tmp.path().join("results/count/plate=P1/n.txt")).unwrap();
    assert_eq!(n.trim(), "6001");
}

/// A script that hangs is stopped at the step's `timeout:`, its whole process group with
/// it, and the run fails saying so (a hung script held its worker for ever).
#[test]
fn a_hung_command_is_stopped_at_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let late = tmp.path().join("late");
    let run = format!("sleep 10 && touch {}", late.display());
    let p = per_plate_pipeline(tmp.path(), "hung", &["P1"], &run, &["n.txt"]);
    let yaml = std::fs::read_to_string(&p).unwrap().replace(
        "    with:\n",
        "    timeout: 1s\n    retries: 0\n    with:\n",
    );
    std::fs::write(&p, yaml).unwrap();
    let t0 = std::time::Instant::now();
    let (st, out) = run_json(&p, &[]);
    assert_eq!(st["state"], "failed", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ran longer than the step's `timeout: 1s` and was stopped"),
        "{}",
        stderr(&out)
    );
    assert!(t0.elapsed().as_secs() < 8, "{:?}", t0.elapsed());
    // Its group was stopped with it: nothing is left to finish the script later.
    std::thread::sleep(std::time::Duration::from_secs(11).saturating_sub(t0.elapsed()));
    assert!(!late.exists(), "the timed-out script went on running");
}

/// A setting changed and changed back: the third run takes the first run's results from
/// the cache, and `results/` holds them again (it kept the second setting's files, under
/// the first setting's lock and lineage). A hand-edited result is put right the same way.
#[test]
fn results_match_the_run_even_when_it_came_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let p = per_plate_pipeline(tmp.path(), "back", &["P1"], "echo one > n.txt", &["n.txt"]);
    let result = tmp.path().join("results/count/plate=P1/n.txt");
    let run_with = |word: &str| {
        let yaml = std::fs::read_to_string(&p).unwrap();
        let yaml = yaml
            .replace("echo one", &format!("echo {word}"))
            .replace("echo two", &format!("echo {word}"));
        std::fs::write(&p, yaml).unwrap();
        let (st, out) = run_json(&p, &[]);
        assert_eq!(st["state"], "succeeded", "{}", stderr(&out));
        std::fs::read_to_string(&result).unwrap()
    };
    assert_eq!(run_with("one"), "one\n");
    assert_eq!(run_with("two"), "two\n");
    assert_eq!(
        run_with("one"),
        "one\n",
        "the cached result was not copied back"
    );
    std::fs::write(&result, "edited by hand\n").unwrap();
    assert_eq!(run_with("one"), "one\n");
}
