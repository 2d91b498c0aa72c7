//! Filename patterns with named fields: `{plate}/{well}_s{site}_w{channel}.tif`.
//! A field matches up to the next literal (never across `/`); `{name:REGEX}` sets its own
//! regular expression and `*` matches anything within one path component.

use regex::Regex;

#[derive(Debug, Clone)]
pub struct FilePattern {
    pub source: String,
    pub fields: Vec<String>,
    regex: Regex,
}

impl FilePattern {
    /// Compiles a pattern; errors carry the byte offset of the problem.
    pub fn compile(source: &str) -> Result<Self, (usize, String)> {
        let mut re = String::from("^");
        let mut fields: Vec<String> = Vec::new();
        let mut i = 0;
        let b = source.as_bytes();
        while i < b.len() {
            match b[i] {
                b'{' => {
                    let end = source[i..]
                        .find('}')
                        .ok_or((i, "`{` without a closing `}`".to_string()))?;
                    let inner = &source[i + 1..i + end];
                    let (name, custom) = match inner.split_once(':') {
                        Some((n, r)) => (n.trim(), Some(r)),
                        None => (inner.trim(), None),
                    };
                    // `{well_s{site}`: this brace was left open and another field begins.
                    if name.contains('{') {
                        return Err((i, "`{` without a closing `}`".to_string()));
                    }
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        || name.starts_with(|c: char| c.is_ascii_digit())
                    {
                        return Err((
                            i,
                            format!(
                                "`{{{inner}}}` is not a field name (use letters, digits and `_`)"
                            ),
                        ));
                    }
                    if fields.iter().any(|f| f == name) {
                        return Err((i, format!("field `{name}` appears twice in the pattern")));
                    }
                    let body = custom.unwrap_or("[^/]+?");
                    if let Some(r) = custom {
                        Regex::new(r).map_err(|e| {
                            (i, format!("bad regular expression for `{name}`: {e}"))
                        })?;
                    }
                    re.push_str(&format!("(?P<{name}>{body})"));
                    fields.push(name.to_string());
                    i += end + 1;
                }
                b'}' => return Err((i, "`}` without an opening `{`".to_string())),
                b'*' => {
                    re.push_str("[^/]*");
                    i += 1;
                }
                _ => {
                    let ch = source[i..].chars().next().expect("in bounds");
                    re.push_str(&regex::escape(&ch.to_string()));
                    i += ch.len_utf8();
                }
            }
        }
        re.push('$');
        if fields.is_empty() {
            return Err((
                0,
                "the pattern names no fields; mark them like `{plate}_{well}_w{channel}.tif`"
                    .into(),
            ));
        }
        let regex = Regex::new(&re).map_err(|e| (0, e.to_string()))?;
        Ok(Self {
            source: source.to_string(),
            fields,
            regex,
        })
    }

    /// Field values for a path relative to the image root, or `None` when it does not match.
    pub fn captures(&self, rel_path: &str) -> Option<Vec<String>> {
        let caps = self.regex.captures(rel_path)?;
        Some(
            self.fields
                .iter()
                .map(|f| {
                    caps.name(f)
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_default()
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microscope_naming_schemes() {
        let p = FilePattern::compile("Channel{channel}-{index}-{row}-{col}.tif").unwrap();
        assert_eq!(
            p.captures("Channel1-01-A-01.tif").unwrap(),
            vec!["1", "01", "A", "01"]
        );
        let p = FilePattern::compile("r{row:\\d+}c{col:\\d+}f{site}p*-ch{channel}*.tiff").unwrap();
        assert_eq!(
            p.captures("r01c02f03p01-ch1sk1fk1fl1.tiff").unwrap(),
            vec!["01", "02", "03", "1"]
        );
        let p = FilePattern::compile("{plate}/{well}_s{site}_w{channel}.TIF").unwrap();
        assert_eq!(
            p.captures("PL1/A01_s1_w2.TIF").unwrap(),
            vec!["PL1", "A01", "1", "2"]
        );
        assert!(p.captures("PL1/sub/A01_s1_w2.TIF").is_none());
    }

    #[test]
    fn bad_patterns() {
        assert!(FilePattern::compile("plain.tif").is_err());
        assert!(FilePattern::compile("{plate").is_err());
        assert!(FilePattern::compile("{a}_{a}").is_err());
        assert!(FilePattern::compile("{a:[}").is_err());
    }
}
