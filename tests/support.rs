//! Helpers for end-to-end tests: the real `plateflow` binary, real processes on loopback,
//! every wait bounded in time, every background process killed when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `plateflow` binary built beside this test (`cargo build` builds it first).
pub fn plateflow_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PLATEFLOW_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("plateflow");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p plateflow`",
        bin.display()
    );
    bin
}

pub fn plateflow() -> Command {
    let mut c = Command::new(plateflow_bin());
    c.env("PLATEFLOW_LOG", "warn");
    c
}

/// Runs a command to completion, killing it after `secs` seconds.
pub fn run_bounded(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plateflow");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "command timed out after {secs}s: {cmd:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A background process, SIGKILLed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn background process");
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn kill9(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago, and not handed out before by this test
/// process (two picks in a row could otherwise give the same port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `cond` until it returns `Some`, or panics after `secs` seconds naming `what`.
pub fn wait_for<T>(what: &str, secs: u64, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses the `--json` status printed on stdout.
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e})\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Labels of the tasks that actually ran (not cached) in a final status.
pub fn ran(status: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["state"] == "done")
        .map(|t| t["label"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

pub fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Every file under `dir`, relative path -> bytes, for byte-for-byte comparisons.
pub fn tree_bytes(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Loads an HTML page in headless Chromium and reads what the page's own check script
/// recorded on `<body>`: (figures rendered, figures in all, script errors). `None` where no
/// Chromium is installed. The DOM goes to a file (a pipe would fill up and stall the
/// browser); the browser's whole process group is killed afterwards.
pub fn browser_check(page: &Path) -> Option<(usize, usize, usize)> {
    let dom = browser_dom(&format!("file://{}", page.display()))?;
    let attr = |name: &str| -> usize {
        let key = format!("{name}=\"");
        dom.find(&key)
            .and_then(|i| dom[i + key.len()..].split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not set by the page's script; the page:\n{dom}"))
    };
    Some((
        attr("data-figures-ok"),
        attr("data-figures-total"),
        attr("data-js-errors"),
    ))
}

/// The DOM of `url` after headless Chromium loaded it (5 s of virtual time); `None` where no
/// Chromium is installed.
pub fn browser_dom(url: &str) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
    let scratch = tempfile::tempdir().expect("scratch dir");
    let (dom_path, err_path) = (
        scratch.path().join("dom.html"),
        scratch.path().join("err.txt"),
    );
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.path().join("profile").display()
        ))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom_path).expect("dom file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .process_group(0)
        .spawn()
        .expect("start Chromium");
    let kill_group = |pid: u32| {
        // SAFETY: signals only the process group created for the browser above.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            kill_group(child.id());
            let _ = child.wait();
            panic!(
                "Chromium did not finish in 90 s: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(child.id());
    let dom = std::fs::read_to_string(&dom_path).unwrap_or_default();
    assert!(
        !dom.is_empty(),
        "Chromium returned no DOM for {url}: {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    Some(dom)
}

/// A pipeline `<dir>/<name>.yaml` with one `command` step, `count`, run per plate over small
/// text files `<dir>/data/<plate>/a.txt` holding `cells of <plate>\n` (12 bytes for `P1`).
/// `run` may use the step placeholders (`{plate}`, `{inputs}`).
pub fn per_plate_pipeline(
    dir: &Path,
    name: &str,
    plates: &[&str],
    run: &str,
    outputs: &[&str],
) -> PathBuf {
    for plate in plates {
        let d = dir.join("data").join(plate);
        std::fs::create_dir_all(&d).expect("data dir");
        std::fs::write(d.join("a.txt"), format!("cells of {plate}\n")).expect("data file");
    }
    let p = dir.join(format!("{name}.yaml"));
    let yaml = [
        &format!("pipeline: {name}\n"),
        "data:\n  images: data\n  pattern: \"{plate}/{name}.txt\"\n",
        "steps:\n  count:\n    uses: command\n    for_each: plate\n    with:\n",
        &format!("      run: {run}\n"),
        &format!("      outputs: [{}]\n", outputs.join(", ")),
    ]
    .concat();
    std::fs::write(&p, yaml).expect("pipeline file");
    p
}

/// The lines of a file, none when it does not exist (yet).
pub fn file_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `plateflow run PIPELINE --json --quiet EXTRA…`, bounded: the final status and the
/// process output.
pub fn run_json(pipeline: &Path, extra: &[&str]) -> (serde_json::Value, Output) {
    let out = run_bounded(
        plateflow()
            .arg("run")
            .arg(pipeline)
            .args(["--json", "--quiet"])
            .args(extra),
        120,
    );
    (json_of(&out), out)
}

/// A generated plate's images (plate P1, DNA channel) copied into `dir/seg` with their planted
/// nucleus labels, as `seg/{channel}/{set}.tif` (channels `img` and `lab`), the DNA image
/// passed through `transform` first. Returns the number of sets.
pub fn annotated_sets(demo: &Path, dir: &Path, transform: impl Fn(u16, u16) -> u16) -> usize {
    std::fs::create_dir_all(dir.join("seg/img")).unwrap();
    std::fs::create_dir_all(dir.join("seg/lab")).unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(demo.join("ground_truth/labels")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let key = name.trim_end_matches("_nuclei.tif").to_string();
        let parts: Vec<&str> = key.split('_').collect();
        if parts[0] != "P1" {
            continue;
        }
        let img_path = demo.join(format!("images/P1/{}_s{}_w1.tif", parts[1], parts[2]));
        let img = plateflow_imaging::read_image(&img_path).unwrap();
        let max = img.data.iter().copied().max().unwrap_or(0);
        let data: Vec<u16> = img.data.iter().map(|&v| transform(v, max)).collect();
        plateflow_imaging::write::write_tiff_u16(
            &dir.join(format!("seg/img/{key}.tif")),
            img.width,
            img.height,
            &data,
        )
        .unwrap();
        std::fs::copy(&path, dir.join(format!("seg/lab/{key}.tif"))).unwrap();
        n += 1;
    }
    n
}
