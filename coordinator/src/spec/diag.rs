//! Diagnostics for people: file:line:column, the offending line with a caret, and a hint.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a pipeline file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub mark: Mark,
    /// How many characters the caret underlines.
    pub width: usize,
    pub message: String,
    pub hint: Option<String>,
    /// The source line, for display.
    pub source_line: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", clip(&self.message))?;
        writeln!(
            f,
            "  --> {}:{}:{}",
            self.file.display(),
            self.mark.line,
            self.mark.col
        )?;
        if !self.source_line.is_empty() {
            let num = self.mark.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, " {pad} |")?;
            let (shown, col, width) = window(&self.source_line, self.mark.col, self.width);
            writeln!(f, " {num} | {shown}")?;
            let indent = " ".repeat(col.saturating_sub(1));
            writeln!(f, " {pad} | {indent}{}", "^".repeat(width.max(1)))?;
        }
        if let Some(h) = &self.hint {
            writeln!(f, "  = help: {}", clip(h))?;
        }
        Ok(())
    }
}

/// At most this many characters of a source line are shown.
const SHOWN_WIDTH: usize = 100;

/// A message or hint that quotes an enormous value, cut in its middle to a readable length.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    const MOST: usize = 2 * SHOWN_WIDTH;
    let n = text.chars().count();
    if n <= MOST {
        return text.into();
    }
    let head: String = text.chars().take(MOST / 2).collect();
    let tail: String = text.chars().skip(n - MOST / 2).collect();
    format!("{head}…({} characters cut)…{tail}", n - MOST).into()
}

/// A readable window of `line` around the 1-based `col` (a 100,000-character line is cut to
/// [`SHOWN_WIDTH`] with `…` where cut), with the caret's column and width inside the window.
fn window(line: &str, col: usize, width: usize) -> (String, usize, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= SHOWN_WIDTH {
        return (line.to_string(), col, width);
    }
    let at = col.saturating_sub(1).min(chars.len());
    let start = at.saturating_sub(SHOWN_WIDTH / 3);
    let end = (start + SHOWN_WIDTH).min(chars.len());
    let mut shown = String::new();
    let lead = if start > 0 { "…" } else { "" };
    shown.push_str(lead);
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push('…');
    }
    let col_in = at - start + 1 + lead.chars().count();
    (shown, col_in, width.min(end.saturating_sub(at)).max(1))
}

/// All errors found in one pipeline file, in file order.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in {}",
            if n == 1 { "" } else { "s" },
            self.0
                .first()
                .map(|d| d.file.display().to_string())
                .unwrap_or_default()
        )
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics against one source text.
pub struct Reporter<'a> {
    file: &'a Path,
    lines: Vec<&'a str>,
    pub found: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Self {
            file,
            lines: source.lines().collect(),
            found: Vec::new(),
        }
    }

    /// Line `n` (1-based) of the source text.
    pub fn line(&self, n: usize) -> Option<&'a str> {
        self.lines.get(n.wrapping_sub(1)).copied()
    }

    pub fn error(
        &mut self,
        mark: Mark,
        width: usize,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let source_line = self
            .lines
            .get(mark.line.wrapping_sub(1))
            .map(|s| s.to_string())
            .unwrap_or_default();
        self.found.push(Diagnostic {
            file: self.file.to_path_buf(),
            mark,
            width,
            message: message.into(),
            hint: None,
            source_line,
        });
        self.found.last_mut().expect("just pushed")
    }

    pub fn error_hint(
        &mut self,
        mark: Mark,
        width: usize,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.error(mark, width, message).hint = hint;
    }

    pub fn finish(mut self) -> Result<(), Diagnostics> {
        if self.found.is_empty() {
            return Ok(());
        }
        self.found.sort_by_key(|d| d.mark);
        self.found.dedup();
        Err(Diagnostics(self.found))
    }
}

/// "did you mean `x`?" for the closest known word, when it is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(word, known).map(|k| format!("did you mean `{k}`?"))
}

/// The known word closest to `word`, when it is close enough to be a typo.
pub fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        let d = edit_distance(&word.to_lowercase(), &k.to_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    let (d, k) = best?;
    let limit = (word.chars().count().max(k.chars().count()) / 3).max(1);
    (d <= limit).then_some(k)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and adjacent
/// transpositions ("afetr" -> "after") each cost one.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("afer", ["after", "uses", "with"]).as_deref(),
            Some("did you mean `after`?")
        );
        assert_eq!(did_you_mean("zzzzzz", ["after", "uses"]), None);
    }
}

#[cfg(test)]
mod long_lines {
    /// A pipeline whose offending line is 100,000 characters long reads at a normal width.
    #[test]
    fn an_enormous_line_is_cut_to_a_readable_width() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(100_000);
        for yaml in [
            format!("pipeline: p\nsteps:\n  a:\n    uses: {long}\n"),
            format!("pipeline: p\nsteps:\n  a:\n    uses: command\n    with: {{run: echo, outputs: [a], bogus{long}: 1}}\n"),
            format!("pipeline: p\n{long}: 1\nsteps: {{}}\n"),
        ] {
            let path = dir.path().join("p.yaml");
            let e = crate::spec::parse(&path, &yaml).unwrap_err();
            let text = format!("{e:#}");
            assert!(text.contains("p.yaml:"), "{text}");
            for line in text.lines() {
                assert!(line.chars().count() <= 240, "a line of {} chars", line.chars().count());
            }
        }
    }
}
