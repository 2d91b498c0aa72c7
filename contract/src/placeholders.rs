//! `{name}` placeholders in command templates. `{{` and `}}` are literal braces, and `${...}`
//! is left to the shell so that environment variables keep working.
//!
//! Values never become shell text. A template that needs no shell (`prog {plate} {inputs}`)
//! is started directly with the values as arguments; otherwise each value travels in an
//! environment variable and the script only names it (`"${PLATEFLOW_V0}"`), which the shell
//! expands without re-reading it — whatever quotes, `$(…)`, `;` or newlines a plate folder's
//! name holds. A placeholder inside single quotes would not expand at all: it is refused.

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

/// Where a placeholder sits in the shell's quoting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// Outside quotes: `echo {plate}`.
    Bare,
    /// Inside double quotes: `echo "plate {plate}"`.
    Double,
    /// Inside single quotes: `echo '{plate}'` (the shell would print the braces' stand-in).
    Single,
}

/// Each placeholder of `template` with the shell quoting around it. A light reading of `sh`'s
/// rules: quotes, backslashes and `#` comments. What it cannot follow (a here-document, quotes
/// nested in `$(…)` inside double quotes) only changes how a value is spliced, never lets one
/// run: every form names an environment variable.
pub fn quoting(template: &str) -> Result<Vec<(Placeholder, Quoting)>, (usize, String)> {
    let found = placeholders(template)?;
    let b = template.as_bytes();
    let mut out = Vec::with_capacity(found.len());
    let mut next = found.into_iter().peekable();
    let mut state = Quoting::Bare;
    let mut i = 0;
    let mut word_start = true;
    while i < b.len() {
        if next.peek().is_some_and(|p| p.offset == i) {
            let ph = next.next().expect("peeked");
            i += template[i..].find('}').expect("closed") + 1;
            out.push((ph, state));
            word_start = false;
            continue;
        }
        let c = b[i];
        match (state, c) {
            (Quoting::Bare, b'\\') | (Quoting::Double, b'\\') => i += 1,
            (Quoting::Bare, b'\'') => state = Quoting::Single,
            (Quoting::Single, b'\'') => state = Quoting::Bare,
            (Quoting::Bare, b'"') => state = Quoting::Double,
            (Quoting::Double, b'"') => state = Quoting::Bare,
            (Quoting::Bare, b'#') if word_start => {
                // A comment: nothing in it is shell text (but placeholders are still listed).
                while i < b.len() && b[i] != b'\n' {
                    if next.peek().is_some_and(|p| p.offset == i) {
                        let ph = next.next().expect("peeked");
                        out.push((ph, Quoting::Bare));
                    }
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        word_start = state == Quoting::Bare && (c.is_ascii_whitespace() || b";&|()".contains(&c));
        i += 1;
    }
    Ok(out)
}

/// A `command` step's template made ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// No shell needed: the program and its arguments, values passed as they are.
    Argv(Vec<String>),
    /// `sh -c script`, with the values in `env` (the script only names them).
    Shell {
        script: String,
        env: Vec<(String, String)>,
    },
}

/// Characters that make a template need the shell.
const SHELL_SPECIAL: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '=', '%', '!', '\n',
];

/// Readies `template` with `vars` (each placeholder's values: one for a field, any number for
/// `{inputs}` and the like). Unknown names and placeholders in single quotes are errors.
pub fn prepare(template: &str, vars: &BTreeMap<String, Vec<String>>) -> Result<Prepared, String> {
    let found = quoting(template).map_err(|(_, m)| m)?;
    for (ph, q) in &found {
        if !vars.contains_key(&ph.name) {
            return Err(format!("unknown placeholder `{{{}}}`", ph.name));
        }
        if *q == Quoting::Single {
            return Err(single_quoted_message(&ph.name));
        }
    }
    if let Some(argv) = direct_argv(template, &found, vars) {
        return Ok(Prepared::Argv(argv));
    }
    let mut script = String::with_capacity(template.len() + 16 * found.len());
    let mut env = Vec::new();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last = 0;
    for (ph, q) in &found {
        script.push_str(&unescape(&template[last..ph.offset]));
        last = ph.offset + template[ph.offset..].find('}').expect("closed") + 1;
        let values = &vars[&ph.name];
        let n = names.len();
        let k = *names.entry(ph.name.as_str()).or_insert(n);
        let var = format!("PLATEFLOW_V{k}");
        match q {
            // One value, or a list: one word each, as unquoted single-quoted values would be.
            Quoting::Bare => {
                let words: Vec<String> = (0..values.len())
                    .map(|i| format!("\"${{{var}_{i}}}\""))
                    .collect();
                script.push_str(&words.join(" "));
                if !env
                    .iter()
                    .any(|(e, _): &(String, String)| e == &format!("{var}_0"))
                {
                    for (i, v) in values.iter().enumerate() {
                        env.push((format!("{var}_{i}"), v.clone()));
                    }
                }
            }
            // Inside double quotes a list reads as one string, space-separated.
            Quoting::Double | Quoting::Single => {
                script.push_str(&format!("${{{var}}}"));
                if !env.iter().any(|(e, _)| e == &var) {
                    env.push((var.clone(), values.join(" ")));
                }
            }
        }
    }
    script.push_str(&unescape(&template[last..]));
    Ok(Prepared::Shell { script, env })
}

/// The error for `'{name}'`, with the fix.
pub fn single_quoted_message(name: &str) -> String {
    format!(
        "placeholder `{{{name}}}` is inside single quotes, where the shell does not expand it; \
         write {{{name}}} (or \"{{{name}}}\") without the single quotes: plateflow passes each \
         value safely whatever characters it holds"
    )
}

/// The argument vector of a template that needs no shell: plain words, placeholders spliced in
/// (a placeholder that is a whole word gives one argument per value).
fn direct_argv(
    template: &str,
    found: &[(Placeholder, Quoting)],
    vars: &BTreeMap<String, Vec<String>>,
) -> Option<Vec<String>> {
    // The template with its placeholders blanked must be plain words.
    let mut literal = String::with_capacity(template.len());
    let mut last = 0;
    for (ph, _) in found {
        literal.push_str(&template[last..ph.offset]);
        literal.push('\u{0}');
        last = ph.offset + template[ph.offset..].find('}').expect("closed") + 1;
    }
    literal.push_str(&template[last..]);
    if literal.contains(SHELL_SPECIAL) || literal.contains(['{', '}']) {
        return None;
    }
    let mut values = found.iter().map(|(ph, _)| &vars[&ph.name]);
    let mut argv = Vec::new();
    for word in literal.split_whitespace() {
        if word == "\u{0}" {
            argv.extend(values.next().expect("one per placeholder").iter().cloned());
            continue;
        }
        let mut arg = String::new();
        for (i, part) in word.split('\u{0}').enumerate() {
            if i > 0 {
                match values.next().expect("one per placeholder").as_slice() {
                    [one] => arg.push_str(one),
                    _ => return None, // a list glued to text: leave it to the shell
                }
            }
            arg.push_str(part);
        }
        argv.push(arg);
    }
    (!argv.is_empty()).then_some(argv)
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

    fn lists(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn quoting_context_of_each_placeholder() {
        let q =
            |t: &str| -> Vec<Quoting> { quoting(t).unwrap().into_iter().map(|(_, q)| q).collect() };
        assert_eq!(q("echo {a}"), [Quoting::Bare]);
        assert_eq!(
            q("echo \"x {a}\" '{b}' {c}"),
            [Quoting::Double, Quoting::Single, Quoting::Bare]
        );
        assert_eq!(
            q(r#"echo "it\"s {a}" \'{b}"#),
            [Quoting::Double, Quoting::Bare]
        );
        assert_eq!(q("echo {a} # it's {b}\necho {c}"), [Quoting::Bare; 3]);
        assert_eq!(q("echo a#'{b}'"), [Quoting::Single]);
    }

    #[test]
    fn plain_templates_start_without_a_shell() {
        let v = lists(&[
            ("plate", &["P 1;x"]),
            ("inputs", &["a b", "c"]),
            ("none", &[]),
        ]);
        // `=` may be an assignment to the shell: such templates take the shell path.
        assert!(matches!(
            prepare("prog --plate={plate}", &v),
            Ok(Prepared::Shell { .. })
        ));
        assert_eq!(
            prepare("prog --plate {plate} {inputs} {none} out-{plate}.txt", &v).unwrap(),
            Prepared::Argv(vec![
                "prog".into(),
                "--plate".into(),
                "P 1;x".into(),
                "a b".into(),
                "c".into(),
                "out-P 1;x.txt".into()
            ])
        );
    }

    #[test]
    fn shell_templates_name_values_and_never_contain_them() {
        let hostile = "$(touch PWNED)'\"`;\n\\";
        let v = lists(&[("plate", &[hostile]), ("inputs", &["a", "b"])]);
        let Prepared::Shell { script, env } = prepare(
            "echo \"plate {plate}\" {plate} {inputs} > out.txt; cat {{x}} ${HOME}",
            &v,
        )
        .unwrap() else {
            panic!("a redirection needs the shell")
        };
        assert_eq!(
            script,
            r#"echo "plate ${PLATEFLOW_V0}" "${PLATEFLOW_V0_0}" "${PLATEFLOW_V1_0}" "${PLATEFLOW_V1_1}" > out.txt; cat {x} ${HOME}"#
        );
        assert!(!script.contains("PWNED"));
        assert!(env.contains(&("PLATEFLOW_V0".into(), hostile.into())));
        assert!(env.contains(&("PLATEFLOW_V0_0".into(), hostile.into())));
        assert!(env.contains(&("PLATEFLOW_V1_1".into(), "b".into())));
        let e = prepare("echo '{plate}' > out.txt", &v).unwrap_err();
        assert!(e.contains("single quotes"), "{e}");
        assert!(prepare("echo {nope} > x", &v).unwrap_err().contains("nope"));
    }

    #[test]
    fn quoting_for_display() {
        assert_eq!(shell_quote("inputs/P1_A01.tif"), "inputs/P1_A01.tif");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
