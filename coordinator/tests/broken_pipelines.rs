//! The corpus of broken pipelines in `tests/broken-pipelines/`: each `NAME.yaml` must fail
//! validation with exactly the errors listed in `NAME.expect`, one per line, written as
//! `LINE:COL: text that the message or hint contains`. Validation is the file and what it
//! names in its data (`screen/`: three plates and a plate map); planning a run must refuse
//! every case too, so none reaches a worker.

use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/broken-pipelines")
}

#[test]
fn every_broken_pipeline_fails_with_the_expected_errors() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 100,
        "the corpus must hold at least 100 cases, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let expect_path = case.with_extension("expect");
        let expected = std::fs::read_to_string(&expect_path)
            .unwrap_or_else(|_| panic!("{} has no .expect file", case.display()));
        let diags = match plateflow_coordinator::run::validate(case) {
            Ok(_) => {
                failures.push(format!("{}: validated, but should fail", case.display()));
                continue;
            }
            Err(e) => match e.downcast::<plateflow_coordinator::spec::diag::Diagnostics>() {
                Ok(d) => d.0,
                Err(e) => {
                    failures.push(format!(
                        "{}: not a located diagnostic: {e:#}",
                        case.display()
                    ));
                    continue;
                }
            },
        };
        // Planning (what `run` and `submit` do before any task is sent) refuses it too.
        let state = tempfile::tempdir().unwrap();
        let mut db = plateflow_coordinator::db::Db::open(&state.path().join("p.db")).unwrap();
        let yaml = std::fs::read_to_string(case).unwrap();
        if plateflow_coordinator::run::prepare(1, case, &yaml, vec![], &mut db, 1, &[]).is_ok() {
            failures.push(format!(
                "{}: planned, but should be refused",
                case.display()
            ));
        }
        let wanted: Vec<(usize, usize, String)> = expected
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut parts = l.splitn(3, ':');
                let line = parts.next().unwrap().trim().parse().unwrap();
                let col = parts.next().unwrap().trim().parse().unwrap();
                (line, col, parts.next().unwrap().trim().to_string())
            })
            .collect();
        let rendered: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        if wanted.len() != diags.len() {
            failures.push(format!(
                "{}: expected {} errors, got {}:\n{}",
                case.display(),
                wanted.len(),
                diags.len(),
                rendered.join("\n")
            ));
            continue;
        }
        for ((line, col, text), d) in wanted.iter().zip(&diags) {
            let full = format!("{} {}", d.message, d.hint.clone().unwrap_or_default());
            if d.mark.line != *line || d.mark.col != *col || !full.contains(text.as_str()) {
                failures.push(format!(
                    "{}: expected {line}:{col} `{text}`, got:\n{d}",
                    case.display()
                ));
            }
            // Every rendered error shows the file and the offending line.
            assert!(d
                .to_string()
                .contains(&format!(":{}:{}", d.mark.line, d.mark.col)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
