//! `{name}` placeholders in command templates. `{{` and `}}` are literal braces, and `${...}`
//! is left to the shell so that environment variables keep working.

use std::collections::BTreeMap;

/// A placeholder found in a template, with its byte offset (for error locations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub name: String,
    pub offset: usize,
}

/// Lists the placeholders of a template, or says where it is malformed.
pub fn placeholders(template: &str) -> Result<Vec<Placeholder>, (usize, String)> {
    let mut out = Vec::new();
    let b = template.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' if b.get(i + 1) == Some(&b'{') => i += 2,
            b'}' if b.get(i + 1) == Some(&b'}') => i += 2,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                // Shell parameter expansion: skip to the matching brace.
                match template[i..].find('}') {
                    Some(end) => i += end + 1,
                    None => return Err((i, "`${` without a closing `}`".into())),
                }
            }
            b'{' => {
                let Some(end) = template[i + 1..].find('}') else {
                    return Err((
                        i,
                        "`{` without a closing `}` (write `{{` for a literal brace)".into(),
                    ));
                };
                let name = template[i + 1..i + 1 + end].trim().to_string();
                if name.is_empty() {
                    return Err((i, "empty placeholder `{}`".into()));
                }
                out.push(Placeholder { name, offset: i });
                i += end + 2;
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// Replaces every placeholder with its value; an unknown name is an error.
pub fn expand(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let found = placeholders(template).map_err(|(_, m)| m)?;
    let mut out = String::with_capacity(template.len());
    let mut last = 0;
    for ph in found {
        out.push_str(&unescape(&template[last..ph.offset]));
        let value = vars
            .get(&ph.name)
            .ok_or_else(|| format!("unknown placeholder `{{{}}}`", ph.name))?;
        out.push_str(value);
        last = ph.offset + template[ph.offset..].find('}').expect("closed") + 1;
    }
    out.push_str(&unescape(&template[last..]));
    Ok(out)
}

fn unescape(s: &str) -> String {
    // `${...}` passes through unchanged; only doubled braces are literal escapes.
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    let mut in_shell_var = false;
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek() == Some(&'{') {
            in_shell_var = true;
            out.push(c);
            continue;
        }
        if in_shell_var {
            if c == '}' {
                in_shell_var = false;
            }
            out.push(c);
            continue;
        }
        if (c == '{' || c == '}') && chars.peek() == Some(&c) {
            chars.next();
        }
        out.push(c);
    }
    out
}

/// Quotes a value for `sh` only where needed, so commands stay readable in logs.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn expands_and_keeps_shell_variables() {
        let v = vars(&[("plate", "P1"), ("inputs", "a b")]);
        let s = expand("echo {plate} ${HOME} {{x}} {inputs}", &v).unwrap();
        assert_eq!(s, "echo P1 ${HOME} {x} a b");
    }

    #[test]
    fn unknown_and_malformed_placeholders_are_errors() {
        assert!(expand("echo {nope}", &vars(&[]))
            .unwrap_err()
            .contains("nope"));
        assert!(placeholders("echo {oops").is_err());
        assert_eq!(placeholders("a {x} b {y}").unwrap()[1].offset, 8);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("inputs/P1_A01.tif"), "inputs/P1_A01.tif");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
