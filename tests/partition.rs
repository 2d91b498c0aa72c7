//! A worker cut off mid-task by a real network partition: worker hosts in their own network
//! namespaces (iproute2 `ip netns`, a veth pair per worker, private addresses that exist only
//! on this machine). The cut worker's lease expires and its task runs elsewhere; when the link
//! comes back the worker rejoins, and the result it finished meanwhile is discarded, not
//! counted twice. Skips, saying why, where namespaces cannot be made (not root, no iproute2).

use plateflow_e2e::{free_port, json_of, plateflow, run_bounded, wait_for, Proc};
use std::path::{Path, PathBuf};
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace joined to the host by a veth pair: host side `10.213.N.1/30`, the
/// namespace side `10.213.N.2/30`. Deleted on drop.
struct Host {
    ns: String,
    host_if: String,
    host_addr: String,
}

impl Host {
    fn create(n: u8) -> Result<Host, String> {
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let (ns, host_if, ns_if) = (format!("pf{tag}"), format!("pfh{tag}"), format!("pfn{tag}"));
        ip(&["netns", "add", &ns])?;
        let h = Host {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_addr: format!("10.213.{n}.1"),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &ns])?;
        ip(&["addr", "add", &format!("10.213.{n}.1/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.213.{n}.2/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &ns, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(h)
    }
    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).unwrap();
    }
    fn restore(&self) {
        ip(&["link", "set", &self.host_if, "up"]).unwrap();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

fn pipeline(dir: &Path) -> PathBuf {
    let d = dir.join("data/P1");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("a.txt"), "x\n").unwrap();
    let p = dir.join("part.yaml");
    let (started, finished) = (dir.join("started.log"), dir.join("finished.log"));
    std::fs::write(
        &p,
        format!(
            r#"pipeline: part
data:
  images: data
  pattern: "{{plate}}/{{name}}.txt"
steps:
  slow:
    uses: command
    for_each: plate
    retries: 2
    with:
      run: echo "$(pwd)" >> {started}; sleep 5; echo "$(pwd)" > where.txt; echo done >> {finished}
      outputs: [where.txt]
"#,
            started = started.display(),
            finished = finished.display()
        ),
    )
    .unwrap();
    p
}

use plateflow_e2e::file_lines as lines;

fn worker(dir: &Path, ns: Option<&str>, name: &str, coord: &str) -> Proc {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns])
                .arg(plateflow_e2e::plateflow_bin());
            c
        }
        None => Command::new(plateflow_e2e::plateflow_bin()),
    };
    cmd.env("PLATEFLOW_LOG", "info")
        .env("PLATEFLOW_TOKEN_FILE", dir.join("state/token"))
        .args([
            "worker",
            "--name",
            name,
            "--cpus",
            "1",
            "--coordinator",
            coord,
        ])
        .arg("--store")
        .arg(dir.join(name).join("store"))
        .arg("--scratch")
        .arg(dir.join(name).join("scratch"));
    Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))
}

fn status(dir: &Path, coord: &str) -> serde_json::Value {
    let out = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", dir.join("state/token"))
            .args(["status", "1", "--tasks", "--json", "--coordinator", coord]),
        30,
    );
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    json_of(&out)[0].clone()
}

fn workers_connected(http: u16) -> usize {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", http)) else {
        return 0;
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("plateflow_workers "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_partitioned_worker_loses_its_task_and_rejoins_without_double_counting() {
    let cut_host = match Host::create(1) {
        Ok(h) => h,
        Err(e) => {
            println!("skipped: cannot create a network namespace ({e}); needs root and iproute2");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    // The coordinator listens on the host end of the veth only (and its status page on
    // loopback): reachable from the namespace and from this host, from nowhere else.
    let coord = format!("{}:{port}", cut_host.host_addr);
    let _coordinator = Proc::spawn(
        "coordinator",
        plateflow()
            .env("PLATEFLOW_LOG", "info")
            .args(["coordinator", "--listen", &coord])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--heartbeat-ms", "200", "--lease-ms", "2000", "--state"])
            .arg(dir.path().join("state")),
        &dir.path().join("coordinator.log"),
    );
    wait_for("the coordinator", 30, || {
        std::net::TcpStream::connect(coord.as_str()).ok()
    });
    let _w1 = worker(dir.path(), Some(&cut_host.ns), "w-cut", &coord);
    wait_for("the namespaced worker to join", 30, || {
        (workers_connected(http) == 1).then_some(())
    });
    let p = pipeline(dir.path());
    let out = run_bounded(
        plateflow()
            .env("PLATEFLOW_TOKEN_FILE", dir.path().join("state/token"))
            .arg("submit")
            .arg(&p)
            .args(["--coordinator", &coord]),
        30,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = dir.path().join("started.log");
    wait_for("the task to start in the namespace", 30, || {
        (lines(&started).len() == 1).then_some(())
    });
    assert!(lines(&started)[0].contains("w-cut"));

    // Cut the link mid-task; a second worker (on this host) is there to take over.
    cut_host.cut();
    let _w2 = worker(dir.path(), None, "w-host", &coord);
    let st = wait_for("the run to finish elsewhere", 60, || {
        let st = status(dir.path(), &coord);
        (st["state"] == "succeeded").then_some(st)
    });
    let task = &st["tasks"][0];
    assert_eq!(task["attempts"], 2, "{st}");
    assert_eq!(task["worker"], "w-host", "{st}");
    let where_ =
        std::fs::read_to_string(dir.path().join("results/slow/plate=P1/where.txt")).unwrap();
    assert!(
        where_.contains("w-host"),
        "the result is the second worker's: {where_}"
    );

    // Restore the link: the cut worker (whose task finished during the partition) rejoins.
    wait_for("the cut worker to finish its stale attempt", 30, || {
        (lines(&dir.path().join("finished.log")).len() == 2).then_some(())
    });
    cut_host.restore();
    wait_for("the cut worker to rejoin", 60, || {
        (workers_connected(http) == 2).then_some(())
    });
    // Its late result changed nothing: one task, done once, the second worker's output.
    let st = status(dir.path(), &coord);
    assert_eq!(st["state"], "succeeded");
    assert_eq!(st["steps"][0]["ran"], 1, "{st}");
    assert_eq!(st["tasks"][0]["worker"], "w-host", "{st}");
    let again =
        std::fs::read_to_string(dir.path().join("results/slow/plate=P1/where.txt")).unwrap();
    assert_eq!(again, where_);
}
