//! Watching a coordinator from outside: a Prometheus `/metrics` endpoint and a small status
//! page (`/`) over plain HTTP. The engine hands out a [`Snapshot`]; rendering is plain
//! functions of it (tested without sockets); the server only routes.

use crate::engine::{EngineHandle, Event};
use plateflow_proto::v1::RunStatus;
use std::fmt::Write as _;
use std::time::Duration;

/// Upper bounds (seconds) of the dispatch-latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0];

/// Time from a task becoming ready (queued) to its assignment to a worker.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Observations at most `LATENCY_BUCKETS[i]` (not cumulative).
    pub counts: [u64; LATENCY_BUCKETS.len()],
    pub over: u64,
    pub sum_s: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        self.sum_s += s;
        match LATENCY_BUCKETS.iter().position(|&b| s <= b) {
            Some(i) => self.counts[i] += 1,
            None => self.over += 1,
        }
    }
    pub fn count(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.over
    }
}

#[derive(Debug, Clone, Default)]
pub struct WorkerView {
    pub name: String,
    pub cpus: u32,
    pub gpus: u32,
    pub running: usize,
    /// Tasks ever given to it.
    pub assigned: u64,
    pub last_seen_s: f64,
    /// Its batch allocation (Slurm job id), empty outside one.
    pub allocation: String,
}

#[derive(Debug, Clone, Default)]
pub struct FailedTask {
    pub run_id: u64,
    pub label: String,
    pub attempts: u32,
    pub error: String,
}

/// A batch-system allocation of workers (see `alloc`).
#[derive(Debug, Clone, Default)]
pub struct AllocView {
    pub id: String,
    pub state: String,
    pub workers: u32,
}

/// What the engine knows, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Newest first.
    pub runs: Vec<RunStatus>,
    pub workers: Vec<WorkerView>,
    pub failed: Vec<FailedTask>,
    pub allocations: Vec<AllocView>,
    pub dispatch: Histogram,
    pub store_bytes: u64,
    /// Tasks ready to run but not assigned (including whole runs waiting their turn).
    pub queued: u64,
    /// The most CPUs any of those tasks asks for.
    pub largest_request: u32,
}

/// Prometheus text exposition format (version 0.0.4).
pub fn render_metrics(s: &Snapshot) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_string()
    };
    // Families first, samples after: each family's lines must be contiguous.
    let mut lines = Vec::new();
    let tasks = family(
        "plateflow_tasks",
        "gauge",
        "Tasks of the current (or last) run by step and state.",
    );
    lines.push(std::mem::take(&mut o));
    if let Some(run) = s
        .runs
        .iter()
        .find(|r| r.state == "running")
        .or(s.runs.first())
    {
        for st in &run.steps {
            let queued = st
                .total
                .saturating_sub(st.done + st.cached + st.running + st.failed);
            for (state, n) in [
                ("queued", queued),
                ("running", st.running),
                ("done", st.done),
                ("cached", st.cached),
                ("failed", st.failed),
            ] {
                lines.push(format!(
                    "{tasks}{{run=\"{}\",step=\"{}\",state=\"{state}\"}} {n}\n",
                    run.run_id,
                    label_value(&st.step)
                ));
            }
        }
    }
    let mut o2 = String::new();
    for (name, kind, help, value) in [
        (
            "plateflow_workers",
            "gauge",
            "Connected workers.",
            s.workers.len() as f64,
        ),
        (
            "plateflow_worker_cpus",
            "gauge",
            "CPUs offered by connected workers.",
            s.workers.iter().map(|w| w.cpus as f64).sum(),
        ),
        (
            "plateflow_worker_gpus",
            "gauge",
            "GPUs offered by connected workers.",
            s.workers.iter().map(|w| w.gpus as f64).sum(),
        ),
        (
            "plateflow_tasks_running",
            "gauge",
            "Tasks running on workers now.",
            s.workers.iter().map(|w| w.running as f64).sum(),
        ),
        (
            "plateflow_store_bytes",
            "gauge",
            "Bytes in the coordinator's blob store.",
            s.store_bytes as f64,
        ),
        (
            "plateflow_tasks_queued",
            "gauge",
            "Tasks ready to run and waiting for a worker.",
            s.queued as f64,
        ),
        (
            "plateflow_runs",
            "gauge",
            "Runs known to this coordinator.",
            s.runs.len() as f64,
        ),
    ] {
        let _ = writeln!(
            o2,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    lines.push(o2);
    let mut a = String::from(
        "# HELP plateflow_allocations Batch-system allocations by state.\n# TYPE plateflow_allocations gauge\n",
    );
    let mut by_state: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for al in &s.allocations {
        *by_state.entry(al.state.as_str()).or_default() += 1;
    }
    for (state, n) in by_state {
        let _ = writeln!(
            a,
            "plateflow_allocations{{state=\"{}\"}} {n}",
            label_value(state)
        );
    }
    lines.push(a);
    let mut h = String::from(
        "# HELP plateflow_dispatch_latency_seconds Time from a task being ready to its assignment.\n# TYPE plateflow_dispatch_latency_seconds histogram\n",
    );
    let mut cumulative = 0;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += s.dispatch.counts[i];
        let _ = writeln!(
            h,
            "plateflow_dispatch_latency_seconds_bucket{{le=\"{b}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        h,
        "plateflow_dispatch_latency_seconds_bucket{{le=\"+Inf\"}} {}\nplateflow_dispatch_latency_seconds_sum {}\nplateflow_dispatch_latency_seconds_count {}",
        s.dispatch.count(),
        s.dispatch.sum_s,
        s.dispatch.count()
    );
    lines.push(h);
    lines.concat()
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The status page: runs with per-step progress bars, workers, failed tasks with their error.
/// Reloads itself every 10 s; no script, no network access.
pub fn render_page(s: &Snapshot) -> String {
    let mut h = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>plateflow coordinator</title><style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.bar{width:220px;height:12px;background:#eee;display:inline-block;position:relative}
.bar span{position:absolute;top:0;height:12px}.done{background:#2a7}.cached{background:#8cd}.running{background:#fa3}.failed{background:#d33}
.state-failed,.state-invalid{color:#b00;font-weight:bold}.state-succeeded{color:#070}pre{white-space:pre-wrap;margin:0;max-width:70em}
</style></head><body><h1>plateflow coordinator</h1>
"#,
    );
    let _ = write!(
        h,
        "<p id=\"summary\">{} run(s), {} worker(s), {} task(s) running, store {:.1} MB</p>",
        s.runs.len(),
        s.workers.len(),
        s.workers.iter().map(|w| w.running).sum::<usize>(),
        s.store_bytes as f64 / 1e6
    );
    h.push_str("<h2>Runs</h2><table id=\"runs\"><tr><th>run</th><th>pipeline</th><th>state</th><th>elapsed</th><th>steps</th></tr>");
    for r in &s.runs {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"state-{}\">{}</td><td>{:.0} s</td><td><table>",
            r.run_id,
            esc(&r.pipeline),
            esc(&r.state),
            esc(&r.state),
            r.elapsed_s
        );
        for st in &r.steps {
            let total = st.total.max(1) as f64;
            let mut left = 0.0;
            let mut bar = String::new();
            for (class, n) in [
                ("done", st.done),
                ("cached", st.cached),
                ("running", st.running),
                ("failed", st.failed),
            ] {
                let w = 100.0 * n as f64 / total;
                let _ = write!(
                    bar,
                    "<span class=\"{class}\" style=\"left:{left:.1}%;width:{w:.1}%\"></span>"
                );
                left += w;
            }
            let _ = write!(
                h,
                "<tr class=\"step\"><td>{}</td><td><div class=\"bar\" title=\"{} done, {} cached, {} running, {} failed of {}\">{bar}</div></td><td>{}/{}</td><td class=\"note\">{}</td></tr>",
                esc(&st.step),
                st.done,
                st.cached,
                st.running,
                st.failed,
                st.total,
                st.done + st.cached,
                st.total,
                esc(&st.note)
            );
        }
        h.push_str("</table></td></tr>");
    }
    h.push_str("</table><h2>Workers</h2><table id=\"workers\"><tr><th>name</th><th>CPUs</th><th>GPUs</th><th>running</th><th>last heard</th></tr>");
    for w in &s.workers {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s ago</td></tr>",
            esc(&w.name),
            w.cpus,
            w.gpus,
            w.running,
            w.last_seen_s
        );
    }
    if !s.allocations.is_empty() {
        h.push_str("</table><h2>Allocations</h2><table id=\"allocations\"><tr><th>job</th><th>state</th><th>workers</th></tr>");
        for a in &s.allocations {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.id),
                esc(&a.state),
                a.workers
            );
        }
    }
    h.push_str("</table><h2>Failed tasks</h2><table id=\"failed\"><tr><th>run</th><th>task</th><th>attempts</th><th>error</th></tr>");
    for f in &s.failed {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            f.run_id,
            esc(&f.label),
            f.attempts,
            esc(&f.error)
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

/// Bytes under the store directory (its blobs; sizes from metadata, nothing read).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

async fn snapshot(engine: &EngineHandle) -> Option<Snapshot> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    engine.send(Event::Monitor { reply });
    let mut s = rx.await.ok()?;
    let store = engine.config.store_dir();
    s.store_bytes = tokio::task::spawn_blocking(move || dir_bytes(&store))
        .await
        .unwrap_or(0);
    Some(s)
}

/// Serves `/metrics` and `/` on `listener` until `shutdown`.
pub async fn serve(
    engine: EngineHandle,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let unavailable =
        || (StatusCode::SERVICE_UNAVAILABLE, "coordinator shutting down").into_response();
    let e1 = engine.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let engine = e1.clone();
                async move {
                    match snapshot(&engine).await {
                        Some(s) => (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            render_metrics(&s),
                        )
                            .into_response(),
                        None => unavailable(),
                    }
                }
            }),
        )
        .route(
            "/",
            get(move || {
                let engine = engine.clone();
                async move {
                    match snapshot(&engine).await {
                        Some(s) => axum::response::Html(render_page(&s)).into_response(),
                        None => unavailable(),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plateflow_proto::v1::StepProgress;

    fn sample() -> Snapshot {
        let mut dispatch = Histogram::default();
        dispatch.observe(Duration::from_millis(3));
        dispatch.observe(Duration::from_millis(3));
        dispatch.observe(Duration::from_secs(1000));
        Snapshot {
            runs: vec![RunStatus {
                run_id: 4,
                pipeline: "/p/<screen>.yaml".into(),
                state: "running".into(),
                elapsed_s: 12.0,
                steps: vec![StepProgress {
                    step: "segment".into(),
                    total: 10,
                    done: 4,
                    cached: 2,
                    running: 1,
                    failed: 1,
                    note: "fold 1/5: epoch 2/30".into(),
                }],
                ..Default::default()
            }],
            workers: vec![WorkerView {
                name: "node1".into(),
                cpus: 8,
                gpus: 1,
                running: 1,
                assigned: 3,
                last_seen_s: 0.4,
                allocation: String::new(),
            }],
            failed: vec![FailedTask {
                run_id: 4,
                label: "segment[plate=P2]".into(),
                attempts: 3,
                error: "corrupt TIFF: <bad>".into(),
            }],
            allocations: vec![AllocView {
                id: "1234".into(),
                state: "running".into(),
                workers: 1,
            }],
            dispatch,
            store_bytes: 2_000_000,
            queued: 2,
            largest_request: 1,
        }
    }

    #[test]
    fn metrics_are_valid_prometheus_text() {
        let m = render_metrics(&sample());
        assert!(m.contains("plateflow_tasks{run=\"4\",step=\"segment\",state=\"queued\"} 2"));
        assert!(m.contains("plateflow_tasks{run=\"4\",step=\"segment\",state=\"failed\"} 1"));
        assert!(m.contains("plateflow_workers 1\n"));
        assert!(m.contains("plateflow_worker_gpus 1\n"));
        assert!(m.contains("plateflow_store_bytes 2000000\n"));
        assert!(m.contains("plateflow_allocations{state=\"running\"} 1"));
        assert!(m.contains("plateflow_dispatch_latency_seconds_bucket{le=\"0.005\"} 2"));
        assert!(m.contains("plateflow_dispatch_latency_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(m.contains("plateflow_dispatch_latency_seconds_count 3"));
        // Every sample belongs to a family declared before it, each declared once.
        let mut declared = std::collections::BTreeSet::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(declared.insert(name.to_string()), "{name} declared twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(declared.contains(family), "{line}");
            }
        }
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let p = render_page(&sample());
        assert!(p.contains("/p/&lt;screen&gt;.yaml"));
        assert!(p.contains("corrupt TIFF: &lt;bad&gt;"));
        assert!(p.contains("segment[plate=P2]"));
        assert!(p.contains("6/10"), "done + cached of total");
        assert!(
            p.contains("fold 1/5: epoch 2/30"),
            "what a running task does"
        );
        assert!(!p.contains("<bad>"));
    }
}
