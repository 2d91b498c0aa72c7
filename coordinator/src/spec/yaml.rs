//! A YAML tree that remembers where every node came from, so that each validation error can
//! name its line and column. Built from yaml-rust2's marked event stream.

use super::diag::Mark;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing at all.
    Null,
    /// A scalar's text; `plain` when unquoted (so `5` may be read as a number).
    Scalar { text: String, plain: bool },
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
                text.lines().next().map(|l| l.chars().count()).unwrap_or(1) + if *plain { 0 } else { 2 }
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
}

/// Parses one YAML document. Anchors and aliases are refused (pipelines should be explicit).
pub fn parse(source: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    if let Err(e) = parser.load(&mut builder, true) {
        let m = e.marker();
        return Err(SyntaxError {
            mark: Mark {
                line: m.line(),
                col: m.col() + 1,
            },
            message: e.info().to_string(),
        });
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    if builder.documents > 1 {
        return Err(SyntaxError {
            mark: builder.second_doc_mark,
            message: "a pipeline file holds one YAML document; remove the second `---`".into(),
        });
    }
    Ok(builder.root)
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
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((container, pending_key)) => match &mut container.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => entries.push((key, node)),
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
                    message: "YAML aliases (`*name`) are not supported in pipelines; write the value out".into(),
                })
            }
            Event::Scalar(text, style, _, _) => {
                let plain = matches!(style, TScalarStyle::Plain);
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
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
        let Value::Map(inner) = &v.value else { panic!() };
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
