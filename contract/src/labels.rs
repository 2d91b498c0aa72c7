//! Task labels (`features[plate=P1]`) and where a task's results are copied for people.

use std::path::PathBuf;

/// A task's label: its step and fan-out values, e.g. `seg[plate=P1,well=A01]`.
pub fn task_label<'a>(step: &str, fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let parts: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        step.to_string()
    } else {
        format!("{step}[{}]", parts.join(","))
    }
}

/// The results directory of a task, relative to the pipeline's `results:`:
/// `seg[plate=P1,well=A01]` → `seg/plate=P1/well=A01`. Path separators in values are
/// replaced so a value can never name another directory.
pub fn label_path(label: &str) -> PathBuf {
    let mut p = PathBuf::new();
    let (step, rest) = label.split_once('[').unwrap_or((label, ""));
    p.push(step);
    for part in rest
        .trim_end_matches(']')
        .split(',')
        .filter(|s| !s.is_empty())
    {
        p.push(part.replace(['/', '\\'], "_"));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_their_paths() {
        let l = task_label("seg", [("plate", "P1"), ("well", "A01")]);
        assert_eq!(l, "seg[plate=P1,well=A01]");
        assert_eq!(label_path(&l), PathBuf::from("seg/plate=P1/well=A01"));
        assert_eq!(task_label("report", []), "report");
        assert_eq!(label_path("s[plate=a/b]"), PathBuf::from("s/plate=a_b"));
    }
}
