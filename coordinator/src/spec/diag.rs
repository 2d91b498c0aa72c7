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
        writeln!(f, "error: {}", self.message)?;
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
            writeln!(f, " {num} | {}", self.source_line)?;
            let indent = " ".repeat(self.mark.col.saturating_sub(1));
            writeln!(f, " {pad} | {indent}{}", "^".repeat(self.width.max(1)))?;
        }
        if let Some(h) = &self.hint {
            writeln!(f, "  = help: {h}")?;
        }
        Ok(())
    }
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
