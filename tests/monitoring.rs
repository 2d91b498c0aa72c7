//! The coordinator seen from outside: Prometheus `/metrics` and the status page, served by a
//! real `plateflow coordinator` with a real worker, read over HTTP and in headless Chromium.

use plateflow_e2e::{browser_dom, free_port, plateflow, run_bounded, wait_for, Proc};
use std::io::{Read as _, Write as _};
use std::path::Path;

/// `GET path` over HTTP/1.1 on loopback: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn pipeline(dir: &Path) -> std::path::PathBuf {
    // P2's task fails, with a message the page must show escaped.
    plateflow_e2e::per_plate_pipeline(
        dir,
        "watched",
        &["P1", "P2", "P3"],
        r#"if [ {plate} = P2 ]; then echo "bad <plate> P2" >&2; exit 3; fi; wc -c {inputs} > n.txt"#,
        &["n.txt"],
    )
}

#[test]
fn metrics_and_status_page_show_runs_workers_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    let state = dir.path().join("state");
    let _coordinator = Proc::spawn(
        "coordinator",
        plateflow()
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--http", &format!("127.0.0.1:{http}"), "--state"])
            .arg(&state),
        &dir.path().join("coordinator.log"),
    );
    wait_for("the status page", 30, || {
        std::net::TcpStream::connect(("127.0.0.1", http)).ok()
    });
    let token = state.join("token");
    let _worker = Proc::spawn(
        "worker",
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", &token)
            .args(["worker", "--name", "node-a", "--cpus", "2"])
            .args(["--coordinator", &format!("127.0.0.1:{port}")])
            .arg("--store")
            .arg(dir.path().join("w/store"))
            .arg("--scratch")
            .arg(dir.path().join("w/scratch")),
        &dir.path().join("worker.log"),
    );
    wait_for("the worker to join", 30, || {
        get(http, "/metrics")
            .1
            .contains("plateflow_workers 1\n")
            .then_some(())
    });
    let out = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", &token)
            .args(["submit", "--wait"])
            .arg(pipeline(dir.path()))
            .args(["--coordinator", &format!("127.0.0.1:{port}")]),
        120,
    );
    assert!(!out.status.success(), "P2 fails, so the run fails");

    let (status, m) = get(http, "/metrics");
    assert!(status.contains("200"), "{status}");
    for want in [
        "plateflow_tasks{run=\"1\",step=\"count\",state=\"done\"} 2",
        "plateflow_tasks{run=\"1\",step=\"count\",state=\"failed\"} 1",
        "plateflow_workers 1\n",
        "plateflow_worker_cpus 2\n",
    ] {
        assert!(m.contains(want), "{want} missing from\n{m}");
    }
    let metric = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{m}"))
    };
    // Three tasks, and P2's retries: each attempt was dispatched once.
    assert!(metric("plateflow_dispatch_latency_seconds_count") >= 3.0);
    let stored: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("plateflow_store_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("store size");
    assert!(stored > 0.0, "outputs and logs are in the store");

    let (status, page) = get(http, "/");
    assert!(status.contains("200"), "{status}");
    assert!(page.contains("bad &lt;plate&gt; P2"), "{page}");

    match browser_dom(&format!("http://127.0.0.1:{http}/")) {
        None => println!("skipped the browser check: no Chromium installed"),
        Some(dom) => {
            assert!(dom.contains("watched.yaml"), "{dom}");
            assert!(dom.contains("node-a"), "the worker is listed: {dom}");
            assert!(dom.contains("count[plate=P2]"), "the failed task: {dom}");
            assert!(
                dom.contains("bad &lt;plate&gt; P2"),
                "its error, escaped: {dom}"
            );
            assert!(dom.contains("class=\"state-failed\""), "{dom}");
            assert!(dom.contains("2/3"), "step progress: {dom}");
        }
    }
}
