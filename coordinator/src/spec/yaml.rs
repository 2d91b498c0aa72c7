//! A YAML tree that remembers where every node came from, so that each validation error can
//! name its line and column. Built from yaml-rust2's marked event stream.

use super::diag::Mark;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, ScanError, Scanner, TScalarStyle, TokenType};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing at all.
    Null,
    /// A scalar's text; `plain` when unquoted (so `5` may be read as a number).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are kept so that they can be reported.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
}

impl Node {
    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Width to underline in diagnostics.
    pub fn width(&self) -> usize {
        match &self.value {
            Value::Scalar { text, plain } => {
                text.lines().next().map(|l| l.chars().count()).unwrap_or(1)
                    + if *plain { 0 } else { 2 }
            }
            _ => 1,
        }
    }

    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar { .. } => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
    pub hint: Option<String>,
}

/// Parses one YAML document. Anchors and aliases are refused (pipelines should be explicit).
pub fn parse(source: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(explain(source, &e));
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    if builder.documents > 1 {
        return Err(SyntaxError {
            mark: builder.second_doc_mark,
            message: "a pipeline file holds one YAML document".into(),
            hint: Some(
                "remove the second `---` and what follows, or put it in its own file".into(),
            ),
        });
    }
    Ok(builder.root)
}

/// Turns the parser's error into one that points at the token a person has to fix: the
/// bracket left open, the tab, or the start of a wrongly indented key (the parser itself
/// reports where it gave up, often a `:` or a later line).
fn explain(source: &str, e: &ScanError) -> SyntaxError {
    let chars: Vec<char> = source.chars().collect();
    let m = e.marker();
    let mut mark = mark_of(*m);
    let info = e.info();
    let generic = "check indentation (spaces, not tabs) and that brackets and quotes are closed";

    // A `[` or `{` still open on an earlier line than the error was never closed.
    let mut open: Vec<(Marker, char)> = Vec::new();
    let mut scanner = Scanner::new(source.chars());
    while let Ok(Some(tok)) = scanner.next_token() {
        if tok.0.index() >= m.index() {
            break;
        }
        let at = chars.get(tok.0.index()).copied();
        match tok.1 {
            TokenType::FlowSequenceStart | TokenType::FlowMappingStart
                if matches!(at, Some('[' | '{')) =>
            {
                open.push((tok.0, at.unwrap_or('[')));
            }
            TokenType::FlowSequenceEnd | TokenType::FlowMappingEnd
                if matches!(at, Some(']' | '}')) =>
            {
                open.pop();
            }
            _ => {}
        }
    }
    if let Some(&(at, bracket)) = open.last() {
        if at.line() < m.line() {
            let close = if bracket == '[' { ']' } else { '}' };
            return SyntaxError {
                mark: mark_of(at),
                message: format!("YAML syntax error: this `{bracket}` is never closed"),
                hint: Some(format!("add the closing `{close}` at the end of the line")),
            };
        }
    }

    // The parser marks the opening quote of a quoted scalar it could not finish.
    if info.contains("quoted scalar") {
        if let Some(&q @ ('"' | '\'')) = chars.get(m.index()) {
            let mut rest = chars[m.index() + 1..].iter().take_while(|&&c| c != '\n');
            if !rest.any(|&c| c == q) {
                return SyntaxError {
                    mark,
                    message: format!("YAML syntax error: this `{q}` is never closed"),
                    hint: Some(format!("add the closing `{q}` at the end of the value")),
                };
            }
        }
    }

    if info.contains("tab") {
        // The parser names the token it was reading; the tab itself comes at or after it.
        if let Some(i) = chars.iter().skip(m.index()).position(|&c| c == '\t') {
            let before = &chars[..m.index() + i];
            let line = 1 + before.iter().filter(|&&c| c == '\n').count();
            let col = 1 + before.iter().rev().take_while(|&&c| c != '\n').count();
            mark = Mark { line, col };
        }
        return SyntaxError {
            mark,
            message: "YAML syntax error: a tab where YAML expects spaces".into(),
            hint: Some("indent with spaces; YAML does not allow tabs".into()),
        };
    }

    // An error at the first `:` of a line is about that line's key: point at the key.
    let line_text = source.lines().nth(m.line().wrapping_sub(1)).unwrap_or("");
    let line_chars: Vec<char> = line_text.chars().collect();
    if line_chars.get(m.col()) == Some(&':') && !line_chars[..m.col()].contains(&':') {
        let start = line_chars
            .iter()
            .position(|&c| c != ' ' && c != '-')
            .filter(|&p| p < m.col());
        if let Some(p) = start {
            mark.col = p + 1;
            return SyntaxError {
                mark,
                message: format!("YAML syntax error: {info}"),
                hint: Some(
                    "this line is indented differently from the lines around it; \
                     keys of one mapping must start in the same column"
                        .into(),
                ),
            };
        }
    }

    SyntaxError {
        mark,
        message: format!("YAML syntax error: {info}"),
        hint: Some(generic.into()),
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<Node>)>, // container, pending map key
    root: Option<Node>,
    error: Option<SyntaxError>,
    documents: usize,
    second_doc_mark: Mark,
}

fn mark_of(m: Marker) -> Mark {
    Mark {
        line: m.line(),
        col: m.col() + 1,
    }
}

impl Builder {
    fn push_value(&mut self, mut node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((container, pending_key)) => match &mut container.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending_key.take() {
                    None => {
                        // A block mapping starts at its first key (the parser marks the `:`
                        // after it); a flow mapping's `{` comes before its first key.
                        if entries.is_empty() && node.mark < container.mark {
                            container.mark = node.mark;
                        }
                        *pending_key = Some(node)
                    }
                    Some(key) => {
                        // `key:` with nothing after it: the parser marks wherever the next
                        // token is, often a later line; the key is what to point at.
                        if node.value == Value::Null && node.mark.line > key.mark.line {
                            node.mark = key.mark;
                        }
                        entries.push((key, node))
                    }
                },
                _ => unreachable!("only containers are stacked"),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, m: Marker) {
        if self.error.is_some() {
            return;
        }
        let mark = mark_of(m);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_doc_mark = mark;
                }
            }
            Event::Alias(_) => {
                self.error = Some(SyntaxError {
                    mark,
                    message: "YAML aliases (`*name`) are not supported in pipelines".into(),
                    hint: Some(
                        "write the value out in full here (and drop the `&name` anchor)".into(),
                    ),
                })
            }
            Event::Scalar(text, style, _, _) => {
                let plain = matches!(style, TScalarStyle::Plain);
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                self.push_value(Node { value, mark });
            }
            Event::SequenceStart(..) => self.stack.push((
                Node {
                    value: Value::Seq(Vec::new()),
                    mark,
                },
                None,
            )),
            Event::MappingStart(..) => self.stack.push((
                Node {
                    value: Value::Map(Vec::new()),
                    mark,
                },
                None,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push_value(node);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_one_based() {
        let n = parse("a:\n  b: 1\n  c: [x, y]\n").unwrap().unwrap();
        let Value::Map(top) = &n.value else { panic!() };
        let (k, v) = &top[0];
        assert_eq!(k.mark, Mark { line: 1, col: 1 });
        let Value::Map(inner) = &v.value else {
            panic!()
        };
        assert_eq!(inner[0].0.mark, Mark { line: 2, col: 3 });
        assert_eq!(inner[1].1.mark.line, 3);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.mark.line >= 1, "{e:?}");
        assert!(parse("a: *x\n").is_err());
    }
}
