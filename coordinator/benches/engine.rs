//! plateflow's engine benchmarks (a plain `main`, `harness = false`): figures, not pass/fail.
//!
//!     cargo bench -p plateflow --bench engine                 # every section
//!     cargo bench -p plateflow --bench engine -- plan keys    # only some sections
//!
//! Sections:
//! - `plan`: validate a pipeline and expand it over an in-memory image set of PLATES x WELLS
//!   images (default 2,600 x 384) into per-well, per-plate and aggregate tasks (1,001,001 task
//!   instances by default); wall time and resident-memory growth per task, for the image set,
//!   the plan, and the key parts and keys the engine keeps for every task.
//! - `keys`: cache keys (`PreparedRun::key_parts` + `KeyParts::key`) for KEYS tasks (default
//!   100,000).
//! - `hash`: SHA-256 of HASH_MB MiB of files (default 2,048) in HASH_FILES files (default 256):
//!   `hash_file` on one thread, `hash_files_parallel` on 1 and 2 threads, `sha256sum` (one
//!   core), then `run::prepare` twice over the same files: the first hashes them all, the
//!   second must read none (stat cache). Files are written to a temporary directory (TMPDIR)
//!   first, so both tools read them from the page cache.
//!
//! - `rerun`: the fixed costs of re-running a pipeline of RERUN_FILES tasks (default 100,000,
//!   one empty image each, modified an hour ago) whose results are all cached: `run::prepare`
//!   cold and warm (stat cache), and its parts (`Dataset::scan`, `Db::load_stat_cache`,
//!   `hash_with_cache`, `plan::expand`), then the engine's start-up read of the action cache
//!   (`Db::load_action_cache`) and the lock file's `render`, `read` and `write_if_changed`.
//!
//! - `platemap`: a plate map of MAP_PLATES x 384 rows (default 300 plates) parsed as a comma
//!   CSV, as Excel writes it with decimal commas, and as per-plate grid blocks; then one
//!   canonical slice per plate.
//!
//! Environment: PLATES, WELLS, KEYS, HASH_MB, HASH_FILES, HASH_THREADS (default 2), RERUN_FILES,
//! MAP_PLATES.

use plateflow_coordinator::dataset::{hash_with_cache, Dataset, Image};
use plateflow_coordinator::db::{CachedAction, Db};
use plateflow_coordinator::key::{CacheKey, KeyParts};
use plateflow_coordinator::lockfile::{self, LockEntry, LockFile};
use plateflow_coordinator::plan::{expand, TaskIdx};
use plateflow_coordinator::run::{prepare, PreparedRun};
use plateflow_coordinator::spec;
use plateflow_store::{hash_bytes, hash_file, hash_files_parallel, Digest};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of this process, in bytes (from /proc/self/statm).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Per-well segmentation, per-plate features, one report: the shape of a screening pipeline.
const PIPELINE: &str = r#"pipeline: bench-plan
data:
  images: images
  pattern: "{plate}/{well}.tif"
steps:
  segment:
    uses: command
    for_each: well
    with:
      run: "segment {inputs} > masks.tif"
      outputs: [masks.tif]
  features:
    uses: command
    for_each: plate
    after: [segment]
    with:
      run: "features {upstream.segment} > features.csv"
      outputs: [features.csv]
  report:
    uses: command
    after: [features]
    with:
      run: "cat {upstream.features} > report.csv"
      outputs: [report.csv]
"#;

/// `plates` x `wells` images with interned field values and made-up digests, in memory.
fn synthetic_dataset(root: &Path, plates: usize, wells: usize) -> Dataset {
    let mut ds = Dataset {
        root: root.to_path_buf(),
        fields: vec!["plate".into(), "well".into()],
        ..Default::default()
    };
    ds.images.reserve_exact(plates * wells);
    for p in 0..plates {
        let pv = format!("P{p:05}");
        let pi = ds.values.intern(&pv);
        for w in 0..wells {
            let wv = format!("{}{:02}", (b'A' + (w / 24) as u8) as char, w % 24 + 1);
            let wi = ds.values.intern(&wv);
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&((p * wells + w) as u64).to_le_bytes());
            ds.images.push(Image {
                rel_path: format!("{pv}/{wv}.tif"),
                fields: vec![pi, wi],
                digest: Some(Digest::new(h, 2 * 1024 * 1024)),
                problem: None,
            });
        }
    }
    ds
}

fn pipeline_in(dir: &Path) -> spec::Pipeline {
    std::fs::create_dir_all(dir.join("images")).expect("images dir");
    let path = dir.join("bench.yaml");
    spec::parse(&path, PIPELINE).unwrap_or_else(|e| panic!("{e}"))
}

fn prepared(
    pipeline: spec::Pipeline,
    dataset: Dataset,
    plan: plateflow_coordinator::plan::Plan,
) -> PreparedRun {
    let step_params = pipeline
        .steps
        .iter()
        .map(|s| serde_json::to_string(&s.params.to_json()).expect("params serialise"))
        .collect();
    let step_files = pipeline.steps.iter().map(|_| Vec::new()).collect();
    let plan_len = plan.len();
    PreparedRun {
        id: 1,
        pipeline,
        dataset,
        plan,
        step_params,
        step_files,
        plate_map_name: String::new(),
        task_plate_map: vec![None; plan_len],
        plate_map_blobs: Default::default(),
        force: Vec::new(),
        hash_stats: Default::default(),
    }
}

/// Each task's (single) output, as the engine records it when the task finishes.
fn fake_outputs(prep: &PreparedRun) -> Vec<Vec<(String, Digest)>> {
    (0..prep.plan.len())
        .map(|t| {
            let step = &prep.pipeline.steps[prep.plan.tasks[t].step as usize];
            let name = step
                .params
                .as_command()
                .and_then(|c| c.outputs.first().cloned())
                .unwrap_or_else(|| "out".to_string());
            vec![(name, hash_bytes(&(t as u64).to_le_bytes()))]
        })
        .collect()
}

fn bench_plan() {
    let plates = env_usize("PLATES", 2600);
    let wells = env_usize("WELLS", 384);
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("## plan: {plates} plates x {wells} wells, per-well + per-plate + aggregate steps");

    let t = Instant::now();
    let pipeline = pipeline_in(tmp.path());
    let parse_s = t.elapsed().as_secs_f64();

    let rss0 = rss();
    let t = Instant::now();
    let dataset = synthetic_dataset(&tmp.path().join("images"), plates, wells);
    let ds_s = t.elapsed().as_secs_f64();
    let rss1 = rss();

    let t = Instant::now();
    let plan = expand(&pipeline, &dataset).expect("plan");
    let expand_s = t.elapsed().as_secs_f64();
    let rss2 = rss();
    let n = plan.len() as u64;
    let edges: usize = plan.tasks.iter().map(|t| t.deps.len()).sum();

    println!("validate (spec::parse)          {:>10.3} ms", parse_s * 1e3);
    println!(
        "image set in memory             {:>10.3} s   {:>8.1} MiB  {:>6.0} B/image",
        ds_s,
        mib(rss1 - rss0),
        (rss1 - rss0) as f64 / dataset.images.len() as f64
    );
    println!(
        "plan::expand                    {:>10.3} s   {:>8.1} MiB  {:>6.0} B/task   {n} tasks, {edges} edges, {:.0} tasks/s",
        expand_s,
        mib(rss2.saturating_sub(rss1)),
        rss2.saturating_sub(rss1) as f64 / n as f64,
        n as f64 / expand_s
    );

    // What the engine keeps per task once it is ready: its key parts and key (TaskRt.parts,
    // TaskRt.key) and, once done, its outputs.
    let prep = prepared(pipeline, dataset, plan);
    let outputs = fake_outputs(&prep);
    let rss3 = rss();
    let t = Instant::now();
    let mut kept: Vec<(KeyParts, CacheKey)> = Vec::with_capacity(prep.plan.len());
    for task in 0..prep.plan.len() as TaskIdx {
        let parts = prep.key_parts(task, |d| outputs[d as usize].as_slice());
        let key = parts.key();
        kept.push((parts, key));
    }
    let keys_s = t.elapsed().as_secs_f64();
    let rss4 = rss();
    println!(
        "key parts + keys, all tasks     {:>10.3} s   {:>8.1} MiB  {:>6.0} B/task   {:.0} keys/s",
        keys_s,
        mib(rss4.saturating_sub(rss3)),
        rss4.saturating_sub(rss3) as f64 / n as f64,
        n as f64 / keys_s
    );
    let total = rss4.saturating_sub(rss0);
    println!(
        "image set + plan + keys         {:>10.3} s   {:>8.1} MiB  {:>6.0} B/task   (plan+validate {:.3} s; RSS now {:.0} MiB)",
        ds_s + expand_s + keys_s,
        mib(total),
        total as f64 / n as f64,
        parse_s + expand_s,
        mib(rss4)
    );
    std::hint::black_box(&kept);
}

fn bench_keys() {
    let count = env_usize("KEYS", 100_000);
    let wells = 384usize;
    let plates = count.div_ceil(wells);
    let tmp = tempfile::tempdir().expect("tempdir");
    let pipeline = pipeline_in(tmp.path());
    let dataset = synthetic_dataset(&tmp.path().join("images"), plates, wells);
    let plan = expand(&pipeline, &dataset).expect("plan");
    let prep = prepared(pipeline, dataset, plan);
    let outputs = fake_outputs(&prep);
    let tasks: Vec<TaskIdx> = (0..count.min(prep.plan.len()) as TaskIdx).collect();
    println!("## keys: {} per-well tasks (one image each)", tasks.len());

    let t = Instant::now();
    let parts: Vec<KeyParts> = tasks
        .iter()
        .map(|&t| prep.key_parts(t, |d| outputs[d as usize].as_slice()))
        .collect();
    let parts_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let keys: Vec<CacheKey> = parts.iter().map(KeyParts::key).collect();
    let key_s = t.elapsed().as_secs_f64();
    std::hint::black_box(&keys);
    let n = tasks.len() as f64;
    println!(
        "PreparedRun::key_parts          {:>10.3} s   {:>8.2} us/task  {:>10.0} tasks/s",
        parts_s,
        parts_s * 1e6 / n,
        n / parts_s
    );
    println!(
        "KeyParts::key                   {:>10.3} s   {:>8.2} us/task  {:>10.0} tasks/s",
        key_s,
        key_s * 1e6 / n,
        n / key_s
    );
    println!(
        "both                            {:>10.3} s   {:>8.2} us/task  {:>10.0} tasks/s",
        parts_s + key_s,
        (parts_s + key_s) * 1e6 / n,
        n / (parts_s + key_s)
    );

    // The per-plate tasks: 384 upstream outputs each, labels formatted per upstream task.
    let per_plate: Vec<TaskIdx> = prep.plan.steps[1].clone().collect();
    let t = Instant::now();
    for &task in &per_plate {
        std::hint::black_box(
            prep.key_parts(task, |d| outputs[d as usize].as_slice())
                .key(),
        );
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "per-plate keys ({} upstream each) {:>8.3} s   {:>8.2} us/task  ({} tasks)",
        wells,
        s,
        s * 1e6 / per_plate.len() as f64,
        per_plate.len()
    );
}

fn write_files(root: &Path, files: usize, bytes_each: usize) -> Vec<PathBuf> {
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let per_plate = 32;
    (0..files)
        .map(|i| {
            let dir = root.join(format!("P{:03}", i / per_plate));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let path = dir.join(format!("W{:03}.tif", i % per_plate));
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
            let mut left = bytes_each;
            block[..8].copy_from_slice(&(i as u64).to_le_bytes()); // distinct content
            while left > 0 {
                let n = left.min(block.len());
                f.write_all(&block[..n]).expect("write");
                left -= n;
            }
            f.flush().expect("flush");
            path
        })
        .collect()
}

fn bench_hash() {
    let total_mb = env_usize("HASH_MB", 2048);
    let files = env_usize("HASH_FILES", 256).max(1);
    let threads = env_usize("HASH_THREADS", 2);
    let bytes_each = total_mb * 1024 * 1024 / files;
    let tmp = tempfile::tempdir().expect("tempdir");
    let images = tmp.path().join("images");
    let written = Instant::now();
    println!(
        "## hash: {files} files x {:.1} MiB = {:.0} MiB in {} (page cache warm)",
        mib(bytes_each as u64),
        mib((bytes_each * files) as u64),
        images.display()
    );
    let paths = write_files(&images, files, bytes_each);
    let total = (bytes_each * files) as f64;
    let gbs = |s: f64| total / s / 1e9;
    // Warm the page cache the same way for everyone.
    for p in &paths {
        std::hint::black_box(std::fs::read(p).map(|b| b.len()).unwrap_or(0));
    }

    let t = Instant::now();
    let serial: Vec<Digest> = paths.iter().map(|p| hash_file(p).expect("hash")).collect();
    let s1 = t.elapsed().as_secs_f64();
    println!(
        "plateflow hash_file, 1 thread        {s1:>8.3} s  {:>6.2} GB/s",
        gbs(s1)
    );
    for th in [1, threads.max(2)] {
        let t = Instant::now();
        let par = hash_files_parallel(&paths, th);
        let s = t.elapsed().as_secs_f64();
        assert!(par
            .iter()
            .zip(&serial)
            .all(|(a, b)| a.as_ref().ok() == Some(b)));
        println!(
            "plateflow hash_files_parallel, {th} thr {s:>8.3} s  {:>6.2} GB/s  x{:.2} vs 1 thread",
            gbs(s),
            s1 / s
        );
    }
    let t = Instant::now();
    let out = std::process::Command::new("sha256sum")
        .args(&paths)
        .output();
    let s = t.elapsed().as_secs_f64();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let first = text.split_whitespace().next().unwrap_or("");
            assert_eq!(first, serial[0].hex(), "sha256sum agrees with plateflow");
            println!(
                "sha256sum (coreutils), 1 core        {s:>8.3} s  {:>6.2} GB/s  (plateflow 1 thread is x{:.2})",
                gbs(s),
                s / s1
            );
        }
        _ => println!("sha256sum: not available"),
    }

    // The real path: prepare() lists and hashes the images through the stat cache. Files
    // modified in the last 2 s are never trusted to the stat cache: wait until these are older.
    std::thread::sleep(std::time::Duration::from_millis(2100).saturating_sub(written.elapsed()));
    let yaml = "pipeline: bench-hash\ndata:\n  images: images\n  pattern: \"{plate}/{well}.tif\"\nsteps:\n  s:\n    uses: noop\n    for_each: well\n";
    let pipeline_path = tmp.path().join("bench.yaml");
    std::fs::write(&pipeline_path, yaml).expect("write pipeline");
    let mut db = Db::open(&tmp.path().join("state/plateflow.db")).expect("db");
    for (i, what) in ["first run (cold stat cache)", "re-run, files unchanged"]
        .iter()
        .enumerate()
    {
        let t = Instant::now();
        let prep = prepare(
            i as u64 + 1,
            &pipeline_path,
            yaml,
            vec![],
            &mut db,
            threads,
            &[],
        )
        .expect("prepare");
        let s = t.elapsed().as_secs_f64();
        let st = prep.hash_stats;
        println!(
            "run::prepare, {what:<28} {s:>8.3} s  files {} hashed {} bytes read {:.0} MiB",
            st.files,
            st.hashed,
            mib(st.bytes_hashed)
        );
        if i == 1 {
            assert_eq!(st.hashed, 0, "a re-run over unchanged files reads none");
        }
    }
}

fn bench_rerun() {
    let n = env_usize("RERUN_FILES", 100_000).max(100);
    let tmp = tempfile::tempdir().expect("tempdir");
    let images = tmp.path().join("images");
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for i in 0..n {
        let dir = images.join(format!("P{:05}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        let f = std::fs::File::create(dir.join(format!("W{:03}.tif", i % 100))).expect("create");
        f.set_modified(hour_ago).expect("mtime");
    }
    // Their change time is now: files changed in the last 2 s are never trusted to the stat
    // cache, so wait until these are older.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    println!("## rerun: {n} tasks, one empty image each (mtime an hour ago)");
    let yaml = "pipeline: bench-rerun\ndata:\n  images: images\n  pattern: \"{plate}/{well}.tif\"\nsteps:\n  s:\n    uses: noop\n    for_each: well\n";
    let pipeline_path = tmp.path().join("bench.yaml");
    std::fs::write(&pipeline_path, yaml).expect("write pipeline");
    let mut db = Db::open(&tmp.path().join("state/plateflow.db")).expect("db");
    let line = |what: &str, s: f64, extra: String| println!("{what:<44} {s:>8.3} s  {extra}");

    let mut prep = None;
    for (i, what) in [
        "run::prepare, cold stat cache",
        "run::prepare, warm (re-run)",
    ]
    .iter()
    .enumerate()
    {
        let t = Instant::now();
        let p =
            prepare(i as u64 + 1, &pipeline_path, yaml, vec![], &mut db, 2, &[]).expect("prepare");
        let st = p.hash_stats;
        line(
            what,
            t.elapsed().as_secs_f64(),
            format!("files {} hashed {}", st.files, st.hashed),
        );
        prep = Some(p);
    }
    let prep = prep.expect("prepared");
    assert_eq!(
        prep.hash_stats.hashed, 0,
        "a re-run over unchanged files reads none"
    );

    let pipeline = spec::parse(&pipeline_path, yaml).expect("valid");
    let data = pipeline.data.as_ref().expect("data");
    let t = Instant::now();
    let mut ds = Dataset::scan(data).expect("scan");
    line(
        "  Dataset::scan (list + match pattern)",
        t.elapsed().as_secs_f64(),
        format!("{} images", ds.images.len()),
    );
    let t = Instant::now();
    let cache = db.load_stat_cache().expect("stat cache");
    line(
        "  Db::load_stat_cache",
        t.elapsed().as_secs_f64(),
        format!("{} rows", cache.len()),
    );
    drop(cache);
    let paths: Vec<PathBuf> = ds.images.iter().map(|i| ds.abs_path(i)).collect();
    let t = Instant::now();
    let (_, st) = hash_with_cache(&paths, &mut db, 2).expect("hash");
    line(
        "  hash_with_cache (load cache + stat all)",
        t.elapsed().as_secs_f64(),
        format!("hashed {}", st.hashed),
    );
    let t = Instant::now();
    for p in &paths {
        std::hint::black_box(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    }
    line(
        "  for comparison: stat() every image, 1 thread",
        t.elapsed().as_secs_f64(),
        String::new(),
    );
    ds.hash(&mut db, 2).expect("hash");
    let t = Instant::now();
    let plan = expand(&pipeline, &ds).expect("plan");
    line(
        "  plan::expand",
        t.elapsed().as_secs_f64(),
        format!("{} tasks", plan.len()),
    );

    // The engine's side: the action cache it loads at start, and the lock file it reads,
    // renders and compares at the end of the run.
    let outputs: Vec<Vec<(String, Digest)>> = vec![Vec::new(); prep.plan.len()];
    let mut lock = LockFile {
        pipeline: prep.pipeline.name.clone(),
        tasks: Default::default(),
    };
    let mut actions = Vec::with_capacity(prep.plan.len());
    let t = Instant::now();
    for task in 0..prep.plan.len() as TaskIdx {
        let parts = prep.key_parts(task, |d| outputs[d as usize].as_slice());
        let key = parts.key();
        actions.push((
            key.0.clone(),
            prep.label(task),
            CachedAction {
                outputs: Vec::new(),
                stdout: None,
                stderr: None,
            },
        ));
        lock.tasks.insert(
            prep.label(task),
            LockEntry {
                key: key.0,
                parts,
                outputs: Default::default(),
            },
        );
    }
    line(
        "  key parts + keys + labels, every task",
        t.elapsed().as_secs_f64(),
        String::new(),
    );
    db.save_actions(None, &actions).expect("save actions");
    let t = Instant::now();
    let loaded = db.load_action_cache().expect("actions");
    line(
        "Db::load_action_cache (engine start)",
        t.elapsed().as_secs_f64(),
        format!("{} rows", loaded.len()),
    );
    let t = Instant::now();
    let text = lockfile::render(&lock);
    line(
        "lockfile::render",
        t.elapsed().as_secs_f64(),
        format!("{:.1} MiB", mib(text.len() as u64)),
    );
    let lock_path = lockfile::lock_path(&pipeline_path);
    lockfile::write_if_changed(&lock_path, &text).expect("write lock");
    let t = Instant::now();
    let read = lockfile::read(&lock_path)
        .expect("read lock")
        .expect("lock present");
    line(
        "lockfile::read (to explain cache misses)",
        t.elapsed().as_secs_f64(),
        format!("{} entries", read.tasks.len()),
    );
    let t = Instant::now();
    let copy = read.clone();
    line("LockFile::clone", t.elapsed().as_secs_f64(), String::new());
    drop(copy);
    let t = Instant::now();
    let changed = lockfile::write_if_changed(&lock_path, &text).expect("write lock");
    line(
        "lockfile::write_if_changed (unchanged)",
        t.elapsed().as_secs_f64(),
        format!("changed: {changed}"),
    );
}

/// `platemap`: a plate map of MAP_PLATES plates x 384 wells read as the comma CSV, as Excel
/// saves it in a decimal-comma locale (BOM, semicolons, CRLF, `0,5`) and as per-plate grid
/// blocks (`plate,P1` lines, one block per variable), then cut into one canonical slice per
/// plate (what each per-plate task's key holds).
fn bench_platemap() {
    use plateflow_contract::platemap::PlateMap;
    let plates = env_usize("MAP_PLATES", 300);
    let (rows, cols) = (16u8, 24usize);
    let mut comma = String::from("plate,well,treatment,dose_uM,control\n");
    let mut excel = String::from("\u{feff}plate;well;treatment;dose_uM;control\r\n");
    let mut grid = String::new();
    let value = |p: usize, r: u8, c: usize| {
        let dose = ((p + r as usize * cols + c) % 12) as f64 * 0.25;
        let control = match c {
            0 => "negative",
            23 => "positive",
            _ => "",
        };
        (
            format!("cpd{}", (r as usize * cols + c) % 37),
            dose,
            control,
        )
    };
    for p in 0..plates {
        grid += &format!("plate,P{p}\n");
        let header = (1..=cols)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut blocks =
            ["treatment", "dose_uM", "control"].map(|name| format!("{name},{header}\n"));
        for r in 0..rows {
            let letter = (b'A' + r) as char;
            let mut cells: [Vec<String>; 3] = Default::default();
            for c in 0..cols {
                let (t, d, k) = value(p, r, c);
                comma += &format!("P{p},{letter}{:02},{t},{d},{k}\n", c + 1);
                let d_comma = d.to_string().replace('.', ",");
                excel += &format!("P{p};{letter}{:02};{t};{d_comma};{k}\r\n", c + 1);
                cells[0].push(t);
                cells[1].push(d.to_string());
                cells[2].push(k.to_string());
            }
            for (block, row) in blocks.iter_mut().zip(&cells) {
                *block += &format!("{letter},{}\n", row.join(","));
            }
        }
        for b in &blocks {
            grid += b;
            grid += "\n";
        }
    }
    let n = plates * rows as usize * cols;
    println!("## platemap: {plates} plates x 384 wells = {n} rows");
    let mut maps = Vec::new();
    for (form, text) in [
        ("comma CSV", &comma),
        ("Excel, decimal commas", &excel),
        ("grid blocks", &grid),
    ] {
        let t = Instant::now();
        let map = PlateMap::parse("bench.csv", text.as_bytes()).expect("bench map parses");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(map.rows.len(), n, "{form}");
        println!(
            "parse {form:<22} {:>6.1} MB  {:>7.1} ms  {:>5.2} M rows/s",
            text.len() as f64 / 1e6,
            secs * 1e3,
            n as f64 / secs / 1e6
        );
        maps.push(map);
    }
    let t = Instant::now();
    let bytes: usize = (0..plates)
        .map(|p| maps[0].canonical_slice(Some(&format!("P{p}")), None).len())
        .sum();
    println!(
        "canonical slices, one per plate: {:.1} ms ({:.1} MB)",
        t.elapsed().as_secs_f64() * 1e3,
        bytes as f64 / 1e6
    );
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments pick sections.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let on = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
    println!(
        "# plateflow engine benchmarks: {} CPUs, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    if on("plan") {
        bench_plan();
    }
    if on("keys") {
        bench_keys();
    }
    if on("hash") {
        bench_hash();
    }
    if on("rerun") {
        bench_rerun();
    }
    if on("platemap") {
        bench_platemap();
    }
}
