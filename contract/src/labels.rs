//! Task labels (`features[plate=P1]`) and where a task's results are copied for people.

use std::path::PathBuf;

/// A task's label: its step and fan-out values, e.g. `seg[plate=P1,well=A01]`. Characters of a
/// value that would break the label or its results path apart (`%`, `,`, `[`, `]`, `/`, `\`,
/// control characters) are written `%XX`, so distinct values keep distinct labels and
/// directories: plates `P\1` and `P_1` are `plate=P%5C1` and `plate=P_1`.
pub fn task_label<'a>(step: &str, fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let parts: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{k}={}", escape_value(v)))
        .collect();
    if parts.is_empty() {
        step.to_string()
    } else {
        format!("{step}[{}]", parts.join(","))
    }
}

/// The results directory of a task, relative to the pipeline's `results:`:
/// `seg[plate=P1,well=A01]` → `seg/plate=P1/well=A01`. Values in labels are escaped (see
/// [`task_label`]), so a value can never name another directory.
pub fn label_path(label: &str) -> PathBuf {
    let mut p = PathBuf::new();
    let (step, rest) = label.split_once('[').unwrap_or((label, ""));
    p.push(step);
    for part in rest
        .trim_end_matches(']')
        .split(',')
        .filter(|s| !s.is_empty())
    {
        // Labels are made by `task_label`; a hand-written one is escaped here all the same.
        p.push(part.replace('/', "%2F").replace('\\', "%5C"));
    }
    p
}

/// A label's step and the value (escaped, as [`escape_value`] writes it) of its fan-out
/// field `field`: `seg[plate=P1,well=A01]`, `plate` → (`seg`, `Some("P1")`); a task that does
/// not fan out over `field` gives `None`.
pub fn label_field<'a>(label: &'a str, field: &str) -> (&'a str, Option<&'a str>) {
    let (step, rest) = label.split_once('[').unwrap_or((label, ""));
    let value = rest.trim_end_matches(']').split(',').find_map(|part| {
        part.strip_prefix(field)
            .and_then(|after| after.strip_prefix('='))
    });
    (step, value)
}

/// A fan-out value as it appears in a label and a results directory name.
pub fn escape_value(v: &str) -> std::borrow::Cow<'_, str> {
    let special = |c: char| matches!(c, '%' | ',' | '[' | ']' | '/' | '\\') || c.is_control();
    if !v.contains(special) {
        return v.into();
    }
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        if special(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_label_gives_its_step_and_fields() {
        let label = super::task_label("seg", [("plate", "P,1"), ("well", "A01")]);
        assert_eq!(super::label_field(&label, "plate"), ("seg", Some("P%2C1")));
        assert_eq!(super::label_field(&label, "well"), ("seg", Some("A01")));
        assert_eq!(super::label_field(&label, "site"), ("seg", None));
        assert_eq!(super::label_field("report", "plate"), ("report", None));
    }

    use super::*;

    #[test]
    fn labels_and_their_paths() {
        let l = task_label("seg", [("plate", "P1"), ("well", "A01")]);
        assert_eq!(l, "seg[plate=P1,well=A01]");
        assert_eq!(label_path(&l), PathBuf::from("seg/plate=P1/well=A01"));
        assert_eq!(task_label("report", []), "report");
        assert_eq!(label_path("s[plate=a/b]"), PathBuf::from("s/plate=a%2Fb"));
    }

    #[test]
    fn distinct_values_keep_distinct_labels_and_directories() {
        let names = [
            "P\\1",
            "P_1",
            "P/1",
            "P%5C1",
            "a,well=B02",
            "x]",
            "new\nline",
            "..",
            "植物",
        ];
        let paths: std::collections::BTreeSet<PathBuf> = names
            .iter()
            .map(|n| label_path(&task_label("s", [("plate", *n)])))
            .collect();
        assert_eq!(paths.len(), names.len(), "{paths:?}");
        for p in &paths {
            assert_eq!(
                p.components().count(),
                2,
                "one directory per value: {}",
                p.display()
            );
        }
        assert_eq!(task_label("s", [("plate", "P\\1")]), "s[plate=P%5C1]");
        assert_eq!(task_label("s", [("plate", "P 1.a-b")]), "s[plate=P 1.a-b]");
    }
}
