//! Showing a run to a person: live per-step progress (bars on a terminal, periodic lines in a
//! log), and the summary at the end with every failure's task, attempt and stderr tail.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use plateflow_proto::v1::RunStatus;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bars: Vec<ProgressBar>,
    multi: Option<MultiProgress>,
    last_line: Instant,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let multi = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        Self {
            bars: Vec::new(),
            multi,
            last_line: Instant::now(),
            quiet,
        }
    }

    /// A spinner with elapsed time on a terminal; nothing in a log or when quiet.
    pub fn spinner(quiet: bool, msg: &str) -> ProgressBar {
        if quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
        );
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    pub fn update(&mut self, st: &RunStatus) {
        if self.quiet {
            return;
        }
        let Some(multi) = &self.multi else {
            // Not a terminal: a line every few seconds is enough for a log.
            if self.last_line.elapsed() > Duration::from_secs(5) {
                self.last_line = Instant::now();
                let parts: Vec<String> = st
                    .steps
                    .iter()
                    .map(|s| {
                        let mut p =
                            format!("{} {}/{}", s.step, s.done + s.cached + s.failed, s.total);
                        if !s.note.is_empty() {
                            p.push_str(&format!(" ({})", s.note));
                        }
                        p
                    })
                    .collect();
                eprintln!("[{:>6.1}s] {}", st.elapsed_s, parts.join("  "));
            }
            return;
        };
        if self.bars.len() != st.steps.len() {
            let width = st.steps.iter().map(|s| s.step.len()).max().unwrap_or(4);
            let style = ProgressStyle::with_template(&format!(
                "{{prefix:<{width}}} [{{bar:30}}] {{pos}}/{{len}} {{msg}} {{elapsed_precise}} eta {{eta}}"
            ))
            .expect("valid template")
            .progress_chars("=> ");
            self.bars = st
                .steps
                .iter()
                .map(|s| {
                    let b = multi.add(ProgressBar::new(s.total));
                    b.set_style(style.clone());
                    b.set_prefix(s.step.clone());
                    b
                })
                .collect();
        }
        for (b, s) in self.bars.iter().zip(&st.steps) {
            b.set_length(s.total);
            b.set_position(s.done + s.cached + s.failed);
            let mut msg = format!("running {}", s.running);
            if s.failed > 0 {
                msg.push_str(&format!(", failed {}", s.failed));
            }
            if s.cached > 0 {
                msg.push_str(&format!(", cached {}", s.cached));
            }
            if !s.note.is_empty() {
                msg.push_str(&format!(" — {}", s.note));
            }
            b.set_message(msg);
        }
    }

    pub fn finish(&mut self) {
        for b in &self.bars {
            b.finish();
        }
    }
}

/// The end-of-run summary, as text.
pub fn summary(st: &RunStatus) -> String {
    let mut s = String::new();
    let width = st
        .steps
        .iter()
        .map(|s| s.step.len())
        .max()
        .unwrap_or(4)
        .max(4);
    s.push_str(&format!(
        "run {} {} in {:.1}s ({} workers)\n",
        st.run_id, st.state, st.elapsed_s, st.workers
    ));
    s.push_str(&format!(
        "  {:<width$}  {:>7} {:>7} {:>7} {:>7}\n",
        "step", "tasks", "ran", "cached", "failed"
    ));
    for p in &st.steps {
        s.push_str(&format!(
            "  {:<width$}  {:>7} {:>7} {:>7} {:>7}\n",
            p.step, p.total, p.done, p.cached, p.failed
        ));
    }
    let failed: Vec<_> = st.tasks.iter().filter(|t| t.state == "failed").collect();
    for t in &failed {
        s.push_str(&format!(
            "\nFAILED {} (on {}): ",
            t.label,
            if t.worker.is_empty() { "?" } else { &t.worker }
        ));
        s.push_str(&t.error);
        s.push('\n');
    }
    if !st.error.is_empty() {
        s.push_str(&format!("\nFAILED to keep the results: {}\n", st.error));
    }
    let skipped = st.tasks.iter().filter(|t| t.state == "skipped").count();
    if skipped > 0 {
        s.push_str(&format!(
            "\n{skipped} task(s) skipped because an upstream task failed\n"
        ));
    }
    s
}

/// The final status as JSON, for scripts and tests.
pub fn to_json(st: &RunStatus) -> serde_json::Value {
    serde_json::json!({
        "run_id": st.run_id,
        "pipeline": st.pipeline,
        "state": st.state,
        "elapsed_s": st.elapsed_s,
        "workers": st.workers,
        "error": st.error,
        "steps": st.steps.iter().map(|s| serde_json::json!({
            "step": s.step, "total": s.total, "ran": s.done, "cached": s.cached,
            "running": s.running, "failed": s.failed, "note": s.note,
        })).collect::<Vec<_>>(),
        "tasks": st.tasks.iter().map(|t| serde_json::json!({
            "label": t.label, "state": t.state, "attempts": t.attempts,
            "worker": t.worker, "error": t.error, "reason": t.reason, "progress": t.progress,
        })).collect::<Vec<_>>(),
    })
}
