//! Pipeline files: parse, validate everything at once, and produce a typed [`Pipeline`].
//!
//! Validation never stops at the first problem: every error found is reported with its
//! file:line:column, the offending line and, where a fix is likely, a hint.

pub mod against_data;
pub mod diag;
pub mod pattern;
pub mod yaml;

use diag::{closest, did_you_mean, Diagnostics, Mark, Reporter};
use pattern::FilePattern;
use plateflow_contract::kinds::{self, KindInfo, ParamType};
use plateflow_contract::params::{ParamIssue, StepParams};
use plateflow_contract::placeholders::{placeholders, quoting, Quoting};
pub use plateflow_contract::units::parse_bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use yaml::{Node, Value};

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub name: String,
    /// Internal state: database, blob store, scratch space.
    pub workspace: PathBuf,
    /// Where finished outputs are copied for people to open.
    pub results: PathBuf,
    pub data: Option<DataSpec>,
    /// In dependency order: every step comes after the steps it reads.
    pub steps: Vec<StepSpec>,
    /// The file's text, for diagnostics found later against the data (plate map, plates).
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct DataSpec {
    pub images_root: PathBuf,
    pub pattern: FilePattern,
    pub plate_map: Option<PathBuf>,
    /// Channel field values to names, e.g. `w1: DNA`.
    pub channels: BTreeMap<String, String>,
    /// Where `plate_map:` is written (for problems found in the plate map).
    pub plate_map_mark: (Mark, usize),
    /// Where `channels:` is written (for channels no file name gives).
    pub channels_mark: (Mark, usize),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSpec {
    pub cpus: u32,
    pub gpus: u32,
    pub memory_bytes: u64,
    /// Its GPUs are for Candle (a built-in learning step): only a worker built with the
    /// `cuda` feature can use them. A `command` step's GPUs serve the user's own code.
    pub needs_cuda_build: bool,
    /// A `command` step's limit on each attempt's run time, in seconds (`timeout: 2h`). A
    /// worker whose batch job ends sooner is not given the step's tasks.
    pub time_limit_s: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub name: String,
    /// Where the step's name is in the file.
    pub mark: Mark,
    pub kind: &'static KindInfo,
    /// Indices into [`Pipeline::steps`].
    pub after: Vec<usize>,
    /// The decoded, checked parameters (defaults filled in).
    pub params: StepParams,
    /// Where each parameter's value (and each item of a list) is in the file.
    pub param_marks: BTreeMap<String, ParamMark>,
    /// Fields this step fans out over; empty for an aggregate (one task).
    pub for_each: Vec<String>,
    pub resources: ResourceSpec,
    /// Where `resources:` is written (the step's name when it is not).
    pub resources_mark: (Mark, usize),
    /// Extra attempts after a failure or a lost worker.
    pub retries: u32,
    pub reads_images: bool,
    pub reads_plate_map: bool,
    /// Files beside the pipeline hashed into the key and copied into the scratch directory.
    pub files: Vec<(String, PathBuf)>,
}

/// Where a parameter's value is in the pipeline file, for diagnostics found after parsing.
#[derive(Debug, Clone, Default)]
pub struct ParamMark {
    pub mark: Mark,
    pub width: usize,
    /// Each list item's position.
    pub items: Vec<(Mark, usize)>,
}

impl ParamMark {
    /// The position of item `index` of a list, or of the whole value.
    pub fn at(&self, index: Option<usize>) -> (Mark, usize) {
        index
            .and_then(|i| self.items.get(i).copied())
            .unwrap_or((self.mark, self.width))
    }
}

const TOP_KEYS: &[&str] = &["pipeline", "workspace", "results", "data", "steps"];
const DATA_KEYS: &[&str] = &["images", "pattern", "plate_map", "channels"];
const STEP_KEYS: &[&str] = &[
    "uses",
    "after",
    "with",
    "for_each",
    "resources",
    "retries",
    "timeout",
    "inputs",
];
/// Bounds on what a step may ask for: beyond them a number is a typo (and would not fit the
/// wire's 32 bits).
const MAX_CPUS: u64 = 4096;
const MAX_GPUS: u64 = 64;
const RESOURCE_KEYS: &[&str] = &["cpus", "gpus", "memory"];
const INPUT_SOURCES: &[&str] = &["images", "plate_map"];

/// Reads and validates a pipeline file.
pub fn load(path: &Path) -> Result<Pipeline, anyhow::Error> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read pipeline {}: {e}", path.display()))?;
    parse(path, &source).map_err(Into::into)
}

/// Validates pipeline text as if read from `path` (relative paths resolve beside it).
pub fn parse(path: &Path, source: &str) -> Result<Pipeline, Diagnostics> {
    // Editors on Windows start UTF-8 files with a byte-order mark: it is not part of a key.
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut r = Reporter::new(path, source);
    let root = match yaml::parse(source) {
        Ok(Some(n)) => n,
        Ok(None) => {
            r.error_hint(
                Mark { line: 1, col: 1 },
                1,
                "the pipeline file is empty",
                Some("start from an example in pipelines/, e.g. pipelines/demo.yaml".into()),
            );
            return Err(r.finish().unwrap_err());
        }
        Err(e) => {
            r.error_hint(e.mark, 1, e.message, e.hint);
            return Err(r.finish().unwrap_err());
        }
    };
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let mut v = Validator {
        r,
        dir,
        pattern_fields: Vec::new(),
        channel_names: None,
    };
    let pipeline = v.pipeline(path, &root);
    v.r.finish()?;
    let mut pipeline = pipeline.expect("no errors means a pipeline");
    pipeline.source = source.to_string();
    Ok(pipeline)
}

struct Validator<'a> {
    r: Reporter<'a>,
    dir: PathBuf,
    /// The filename pattern's fields, for hints about placeholders.
    pattern_fields: Vec<String>,
    /// Names given in `data.channels` (`None` when there are none: not checked then).
    channel_names: Option<Vec<String>>,
}

fn entries(node: &Node) -> &[(Node, Node)] {
    match &node.value {
        Value::Map(e) => e,
        _ => &[],
    }
}

impl Validator<'_> {
    fn expect_map(&mut self, node: &Node, what: &str, hint: Option<&str>) -> bool {
        if matches!(node.value, Value::Map(_)) {
            return true;
        }
        self.r.error_hint(
            node.mark,
            node.width(),
            format!(
                "{what} must be a mapping of `key: value` lines, found {}",
                node.describe()
            ),
            hint.map(Into::into),
        );
        false
    }

    /// Reports unknown and duplicate keys; returns key -> (key node, value node).
    fn keys<'n>(
        &mut self,
        node: &'n Node,
        known: &[&str],
        context: &str,
    ) -> HashMap<String, (&'n Node, &'n Node)> {
        let mut seen: HashMap<String, (&Node, &Node)> = HashMap::new();
        for (k, val) in entries(node) {
            let Some(name) = k.as_str() else {
                self.r.error(
                    k.mark,
                    k.width(),
                    format!("keys in {context} must be plain words"),
                );
                continue;
            };
            if !known.contains(&name) {
                let guess = closest(name, known.iter().copied());
                let hint = match guess {
                    Some(g) => format!("did you mean `{g}`?"),
                    None => format!("known keys: {}", known.join(", ")),
                };
                self.r.error_hint(
                    k.mark,
                    k.width(),
                    format!("unknown key `{name}` in {context}"),
                    Some(hint),
                );
                // Read a likely typo as the key it was meant to be: a misspelled `steps:` is
                // then not also reported missing, and what it holds is still checked.
                if let Some(g) = guess {
                    let written = entries(node)
                        .iter()
                        .any(|(other, _)| other.as_str() == Some(g));
                    if !written && !seen.contains_key(g) {
                        seen.insert(g.to_string(), (k, val));
                    }
                }
                continue;
            }
            if let Some((first, _)) = seen.get(name) {
                let line = first.mark.line;
                self.r.error_hint(
                    k.mark,
                    k.width(),
                    format!("`{name}` is given twice in {context}"),
                    Some(format!("remove this one or the one on line {line}")),
                );
                continue;
            }
            seen.insert(name.to_string(), (k, val));
        }
        seen
    }

    /// Where byte `offset` of a scalar's text is in the file. Exact when that line of the text
    /// appears verbatim in the file (one-line plain or quoted scalars, `|` blocks line by
    /// line); otherwise (escapes, folded lines) the scalar's start.
    fn locate_in_scalar(&self, node: &Node, text: &str, offset: usize) -> Mark {
        let before = &text[..offset];
        let line_in_text = before.matches('\n').count();
        let line_start = before.rfind('\n').map_or(0, |p| p + 1);
        let text_line = text[line_start..].split('\n').next().unwrap_or("");
        let col_in_line = text[line_start..offset].chars().count();
        let line = node.mark.line + line_in_text;
        let Some(src) = self.r.line(line) else {
            return node.mark;
        };
        // A quoted scalar's text starts one column after its mark; a `|` block's lines all
        // start at the block's indentation, which is where its mark is.
        let quote =
            line_in_text == 0 && matches!(src.chars().nth(node.mark.col - 1), Some('"' | '\''));
        let start = node.mark.col + usize::from(quote);
        let rest: String = src.chars().skip(start - 1).collect();
        if rest.starts_with(text_line) {
            Mark {
                line,
                col: start + col_in_line,
            }
        } else {
            node.mark
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.r.error(
                    node.mark,
                    node.width(),
                    format!("{what} must be a single value, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn uint_in(&mut self, node: &Node, what: &str, min: u64, max: u64) -> Option<u64> {
        let n = self.uint(node, what, min)?;
        if n > max {
            self.r.error_hint(
                node.mark,
                node.width(),
                format!("{what}: {n} is more than any node has"),
                Some(format!("ask for at most {max}")),
            );
            return None;
        }
        Some(n)
    }

    fn uint(&mut self, node: &Node, what: &str, min: u64) -> Option<u64> {
        let text = self.string(node, what)?;
        match text.trim().parse::<u64>() {
            Ok(n) if n >= min => Some(n),
            _ => {
                self.r.error(
                    node.mark,
                    node.width(),
                    format!("{what} must be a whole number of at least {min}, found `{text}`"),
                );
                None
            }
        }
    }

    fn rel_path(
        &mut self,
        node: &Node,
        what: &str,
        must_exist: bool,
        is_dir: bool,
    ) -> Option<PathBuf> {
        let text = self.string(node, what)?;
        let p = self.dir.join(&text);
        if must_exist {
            let ok = if is_dir { p.is_dir() } else { p.is_file() };
            if !ok {
                let kind = if is_dir { "directory" } else { "file" };
                let (looked, hint) = if Path::new(&text).is_absolute() {
                    (
                        String::new(),
                        "check the spelling, and that the disk holding it is mounted",
                    )
                } else {
                    (
                        format!(" (looked at {})", p.display()),
                        "paths are relative to the pipeline file's directory",
                    )
                };
                self.r.error_hint(
                    node.mark,
                    node.width(),
                    format!("{what}: {kind} `{text}` not found{looked}"),
                    Some(hint.into()),
                );
                return None;
            }
        }
        Some(p)
    }

    fn pipeline(&mut self, path: &Path, root: &Node) -> Option<Pipeline> {
        if !self.expect_map(
            root,
            "a pipeline file",
            Some("a pipeline holds `pipeline:`, `data:` and `steps:` at the left margin; see pipelines/demo.yaml"),
        ) {
            return None;
        }
        let top = self.keys(root, TOP_KEYS, "the pipeline");
        let name = match top.get("pipeline") {
            Some((_, n)) => self.string(n, "`pipeline` (its name)"),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()),
        }
        .unwrap_or_default();
        let workspace = match top.get("workspace") {
            Some((_, n)) => self.rel_path(n, "`workspace`", false, true),
            None => Some(self.dir.join(".plateflow")),
        };
        let results = match top.get("results") {
            Some((_, n)) => self.rel_path(n, "`results`", false, true),
            None => Some(self.dir.join("results")),
        };
        let (data, fields) = match top.get("data") {
            Some((k, n)) => self.data(k, n),
            None => (None, None),
        };
        let had_data_key = top.contains_key("data");
        self.pattern_fields = fields.clone().unwrap_or_default();
        self.channel_names = data
            .as_ref()
            .filter(|d| !d.channels.is_empty())
            .map(|d| d.channels.values().cloned().collect());
        let steps = match top.get("steps") {
            Some((_, n)) => self.steps(n, fields.as_deref(), had_data_key),
            None => {
                self.r.error_hint(
                    root.mark,
                    1,
                    "the pipeline has no `steps:`",
                    Some("add a `steps:` mapping; see pipelines/demo.yaml".into()),
                );
                None
            }
        };
        Some(Pipeline {
            file: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            dir: self.dir.clone(),
            name,
            workspace: workspace?,
            results: results?,
            data,
            steps: steps?,
            source: String::new(),
        })
    }

    /// The data section, and the pattern's fields whenever the pattern itself is valid (so that
    /// steps can still be checked against them when another part of `data` is wrong).
    fn data(&mut self, key: &Node, node: &Node) -> (Option<DataSpec>, Option<Vec<String>>) {
        if !self.expect_map(
            node,
            "`data`",
            Some("give `images:` and `pattern:` indented under `data:`, or remove `data:`"),
        ) {
            return (None, None);
        }
        let k = self.keys(node, DATA_KEYS, "`data`");
        let images_root = match k.get("images") {
            Some((_, n)) => self.rel_path(n, "`images`", true, true),
            None => {
                self.r.error_hint(
                    key.mark,
                    key.width(),
                    "`data` needs `images:`, the directory that holds the images",
                    None,
                );
                None
            }
        };
        let pattern = match k.get("pattern") {
            Some((_, n)) => {
                let text = self.string(n, "`pattern`");
                text.and_then(|t| match FilePattern::compile(&t) {
                    Ok(p) => Some(p),
                    Err((offset, msg)) => {
                        let mark = self.locate_in_scalar(n, &t, offset);
                        self.r
                            .error(mark, 1, format!("bad filename pattern: {msg}"));
                        None
                    }
                })
            }
            None => {
                self.r.error_hint(
                    key.mark,
                    key.width(),
                    "`data` needs `pattern:`, the filename pattern that names plate, well and channel",
                    Some("for example `pattern: \"{plate}/{well}_s{site}_w{channel}.tif\"`".into()),
                );
                None
            }
        };
        let plate_map = match k.get("plate_map") {
            Some((_, n)) => self.rel_path(n, "`plate_map`", true, false).map(Some),
            None => Some(None),
        };
        let plate_map_mark = k
            .get("plate_map")
            .map_or((key.mark, key.width()), |(_, n)| (n.mark, n.width()));
        let channels_mark = k
            .get("channels")
            .map_or((key.mark, key.width()), |(ck, _)| (ck.mark, ck.width()));
        let mut channels = BTreeMap::new();
        if let Some((_, n)) = k.get("channels") {
            if self.expect_map(
                n,
                "`channels`",
                Some("write one `w1: DNA` line per channel, indented under `channels:`"),
            ) {
                for (ck, cv) in entries(n) {
                    if let (Some(a), Some(b)) = (
                        self.string(ck, "a channel"),
                        self.string(cv, "a channel name"),
                    ) {
                        // Channel names become file names (`illumination/DNA.tif`) and
                        // column names: a path in one would write outside the results.
                        if b.is_empty()
                            || b == "."
                            || b == ".."
                            || b.chars().any(|c| c == '/' || c == '\\' || c.is_control())
                        {
                            self.r.error_hint(
                                cv.mark,
                                cv.width(),
                                format!("channel name `{b}` cannot name a file"),
                                Some("name the channel with letters, digits, `-` or `_`, such as `DNA`".into()),
                            );
                        }
                        channels.insert(a, b);
                    }
                }
            }
        }
        let fields = pattern.as_ref().map(|p| p.fields.clone());
        let spec = (|| {
            Some(DataSpec {
                images_root: images_root?,
                pattern: pattern?,
                plate_map: plate_map?,
                channels,
                plate_map_mark,
                channels_mark,
            })
        })();
        (spec, fields)
    }

    /// `fields`: what the filename pattern defines; `None` when there is no `data:` or when
    /// it has errors of its own (then fan-out is not checked, to avoid repeating them).
    fn steps(
        &mut self,
        node: &Node,
        fields: Option<&[String]>,
        had_data_key: bool,
    ) -> Option<Vec<StepSpec>> {
        if let Value::Null = node.value {
            self.r.error_hint(
                node.mark,
                node.width(),
                "`steps` is empty: a pipeline needs at least one step",
                Some("add steps indented under `steps:`, each a name followed by `uses:` and `with:`".into()),
            );
            return None;
        }
        if !self.expect_map(
            node,
            "`steps`",
            Some("write each step as `name:` with its settings indented below, not as a `- ` list item"),
        ) {
            return None;
        }
        let list = entries(node);
        if list.is_empty() {
            self.r.error(
                node.mark,
                1,
                "`steps` is empty: a pipeline needs at least one step",
            );
            return None;
        }
        // First pass: names, so that `after:` can refer to steps defined later in the file.
        // Every entry gets a slot (unnamed ones an empty name) so indices match `list`.
        let mut names: Vec<(String, Mark)> = Vec::new();
        for (k, _) in list {
            let Some(name) = k.as_str() else {
                self.r
                    .error(k.mark, k.width(), "step names must be plain words");
                names.push((String::new(), k.mark));
                continue;
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                let fixed: String = name
                    .trim()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                self.r.error_hint(
                    k.mark,
                    k.width(),
                    format!("step name `{name}` may hold only letters, digits, `_` and `-`"),
                    Some(format!("rename it, e.g. to `{fixed}`")),
                );
            }
            if let Some((_, first)) = names.iter().find(|(n, _)| n == name) {
                let line = first.line;
                self.r.error_hint(
                    k.mark,
                    k.width(),
                    format!("step `{name}` is defined twice"),
                    Some(format!("rename one of them (the other is on line {line})")),
                );
            }
            names.push((name.to_string(), k.mark));
        }
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| !n.is_empty())
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();

        let mut steps: Vec<Option<StepSpec>> = Vec::new();
        let mut after_marks: Vec<Vec<(usize, Mark, usize)>> = Vec::new();
        for (k, body) in list {
            let name = k.as_str().unwrap_or("?").to_string();
            let (step, marks) = self.step(&name, k, body, &index, fields, had_data_key);
            steps.push(step);
            after_marks.push(marks);
        }
        // Dependency cycles, reported at the `after:` entry that closes them.
        let mut graph = petgraph::graph::DiGraph::<usize, ()>::new();
        let nodes: Vec<_> = (0..names.len()).map(|i| graph.add_node(i)).collect();
        for (i, deps) in after_marks.iter().enumerate() {
            for &(d, _, _) in deps {
                graph.add_edge(nodes[d], nodes[i], ());
            }
        }
        let order = match petgraph::algo::toposort(&graph, None) {
            Ok(o) => o.into_iter().map(|n| graph[n]).collect::<Vec<_>>(),
            Err(cycle) => {
                let start = graph[cycle.node_id()];
                let path = find_cycle(&after_marks, start);
                let text: Vec<&str> = path.iter().map(|&i| names[i].0.as_str()).collect();
                // `path[i]` comes after `path[i + 1]`, and the last step comes after the first:
                // that `after:` entry, in the last step, closes the cycle (the chain's last arrow).
                let last = *path.last().expect("the cycle holds its start");
                let (mark, width) = after_marks[last]
                    .iter()
                    .find(|(d, _, _)| *d == path[0])
                    .map(|(_, m, w)| (*m, *w))
                    .unwrap_or((names[start].1, 1));
                let mut chain: Vec<&str> = text.iter().rev().copied().collect();
                chain.push(chain[0]);
                self.r.error_hint(
                    mark,
                    width,
                    format!("circular dependency: {}", chain.join(" -> ")),
                    Some("a step cannot depend, directly or through others, on itself; remove one of these `after:` entries".into()),
                );
                return None;
            }
        };
        let steps: Option<Vec<StepSpec>> = steps.into_iter().collect();
        let steps = steps?;
        // Renumber `after` to the dependency order.
        let new_pos: HashMap<usize, usize> = order
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, new))
            .collect();
        let mut sorted: Vec<StepSpec> = order.iter().map(|&i| steps[i].clone()).collect();
        for s in &mut sorted {
            s.after = s.after.iter().map(|a| new_pos[a]).collect();
        }
        Some(sorted)
    }

    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        name: &str,
        key: &Node,
        body: &Node,
        index: &HashMap<&str, usize>,
        fields: Option<&[String]>,
        had_data_key: bool,
    ) -> (Option<StepSpec>, Vec<(usize, Mark, usize)>) {
        let mut after_marks = Vec::new();
        if !self.expect_map(
            body,
            &format!("step `{name}`"),
            Some("indent the step's settings under its name: `uses: command`, then `with:` holding `run: ...`"),
        ) {
            return (None, after_marks);
        }
        let ctx = format!("step `{name}`");
        let k = self.keys(body, STEP_KEYS, &ctx);
        // Placeholders not to report in `run`: they follow from an error already reported
        // (a misspelled `after:` or `for_each` entry, or a `data:` section with errors).
        let mut excused: Vec<String> = Vec::new();
        // A misspelled kind is reported, then its parameters are checked as the likely kind's.
        let mut guessed_kind = None;
        let kind = match k.get("uses") {
            None => {
                self.r.error_hint(
                    key.mark,
                    key.width(),
                    format!("{ctx} has no `uses:` (which kind of step it is)"),
                    Some(format!(
                        "available kinds: {}",
                        kinds::all_kinds()
                            .iter()
                            .map(|k| k.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
                None
            }
            Some((_, n)) => match self.string(n, "`uses`") {
                None => None,
                Some(kname) => match kinds::lookup(&kname) {
                    Some(kind) => Some(kind),
                    None => {
                        let known = kinds::all_kinds().iter().map(|k| k.name);
                        let guess = closest(&kname, known.clone());
                        guessed_kind = guess.and_then(kinds::lookup);
                        let hint = match guess {
                            Some(g) => format!("did you mean `{g}`?"),
                            None => {
                                format!("available kinds: {}", known.collect::<Vec<_>>().join(", "))
                            }
                        };
                        self.r.error_hint(
                            n.mark,
                            n.width(),
                            format!("unknown step kind `{kname}`"),
                            Some(hint),
                        );
                        None
                    }
                },
            },
        };

        // after
        let mut after = Vec::new();
        if let Some((_, n)) = k.get("after") {
            let items: Vec<&Node> = match &n.value {
                Value::Seq(items) => items.iter().collect(),
                Value::Scalar { .. } => vec![n],
                Value::Null => vec![],
                Value::Map(_) => {
                    self.r.error_hint(
                        n.mark,
                        1,
                        "`after` must list step names",
                        Some("write `after: [qc, segment]`".into()),
                    );
                    vec![]
                }
            };
            for item in items {
                let Some(dep) = self.string(item, "an `after` entry") else {
                    continue;
                };
                match index.get(dep.as_str()) {
                    Some(_) if dep == name => {
                        self.r.error_hint(
                            item.mark,
                            item.width(),
                            format!("step `{name}` cannot come after itself"),
                            Some(format!("remove `{name}` from its own `after:` list")),
                        );
                        excused.push(format!("upstream.{dep}"));
                    }
                    Some(&d) => {
                        if after.contains(&d) {
                            self.r.error(
                                item.mark,
                                item.width(),
                                format!("`{dep}` is listed twice in `after`"),
                            );
                        } else {
                            after.push(d);
                            after_marks.push((d, item.mark, item.width()));
                        }
                    }
                    None => {
                        let guess = closest(&dep, index.keys().copied());
                        let hint = match guess {
                            Some(g) => format!("did you mean `{g}`?"),
                            None => {
                                let mut known: Vec<&str> = index.keys().copied().collect();
                                known.sort();
                                format!("steps in this pipeline: {}", known.join(", "))
                            }
                        };
                        self.r.error_hint(
                            item.mark,
                            item.width(),
                            format!("{ctx} comes after `{dep}`, which is not a step"),
                            Some(hint),
                        );
                        excused.extend(
                            std::iter::once(dep.as_str())
                                .chain(guess)
                                .map(|d| format!("upstream.{d}")),
                        );
                    }
                }
            }
        }

        // for_each
        let mut for_each: Vec<String> = Vec::new();
        if let Some((_, n)) = k.get("for_each") {
            let items: Vec<&Node> = match &n.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![n],
            };
            for item in items {
                let Some(f) = self.string(item, "`for_each`") else {
                    continue;
                };
                let Some(fields) = fields else {
                    // With a broken `data:` its own errors say what to fix; don't repeat them.
                    if !had_data_key {
                        self.r.error_hint(
                            item.mark,
                            item.width(),
                            format!("{ctx} fans out over `{f}`, but the pipeline has no `data:` with a filename pattern"),
                            Some("add `data: {images: DIR, pattern: ...}` or remove `for_each`".into()),
                        );
                    }
                    excused.push(f);
                    continue;
                };
                if !fields.contains(&f) {
                    let guess = closest(&f, fields.iter().map(String::as_str));
                    let hint = match guess {
                        Some(g) => format!("did you mean `{g}`?"),
                        None => format!("the pattern defines: {}", fields.join(", ")),
                    };
                    self.r.error_hint(
                        item.mark,
                        item.width(),
                        format!(
                            "{ctx} fans out over `{f}`, which the filename pattern does not define"
                        ),
                        Some(hint),
                    );
                    excused.extend(guess.map(String::from));
                    excused.push(f);
                    continue;
                }
                // A field is estimated from all of a plate's images, and applied by plate:
                // per-well or per-site tasks would each make one, and one would win.
                if f != "plate" && kind.is_some_and(|k| k.kind == kinds::StepKind::Illumination) {
                    self.r.error_hint(
                        item.mark,
                        item.width(),
                        format!(
                            "{ctx} fans out over `{f}`, but an illumination field is a robust \
                             average of all of a plate's images"
                        ),
                        Some("write `for_each: plate`".into()),
                    );
                    continue;
                }
                // A well lives in a plate: fanning out by well means by (plate, well).
                if f == "well"
                    && fields.iter().any(|x| x == "plate")
                    && !for_each.iter().any(|x| x == "plate")
                {
                    for_each.push("plate".into());
                }
                if !for_each.contains(&f) {
                    for_each.push(f);
                }
            }
        }

        // inputs
        let (mut reads_images, mut reads_plate_map) = (after.is_empty() && fields.is_some(), false);
        if let Some((_, n)) = k.get("inputs") {
            reads_images = false;
            let items: Vec<&Node> = match &n.value {
                Value::Seq(items) => items.iter().collect(),
                Value::Null => vec![],
                _ => vec![n],
            };
            for item in items {
                let Some(src) = self.string(item, "an `inputs` entry") else {
                    continue;
                };
                match src.as_str() {
                    "images" if fields.is_none() => {
                        if !had_data_key {
                            self.r.error_hint(
                                item.mark,
                                item.width(),
                                "`inputs: images` needs a `data:` section with images and a pattern",
                                Some("add `data: {images: DIR, pattern: ...}`".into()),
                            );
                        }
                    }
                    "images" => reads_images = true,
                    "plate_map" => reads_plate_map = true,
                    other => {
                        let hint =
                            did_you_mean(other, INPUT_SOURCES.iter().copied()).or_else(|| {
                                Some(format!("inputs can be: {}", INPUT_SOURCES.join(", ")))
                            });
                        self.r.error_hint(
                            item.mark,
                            item.width(),
                            format!("unknown input `{other}`"),
                            hint,
                        );
                    }
                }
            }
        }

        let resources = match k.get("resources") {
            Some((_, n)) => self.resources(n),
            None => Some(ResourceSpec {
                cpus: 1,
                ..Default::default()
            }),
        };
        let resources = resources.map(|mut r| {
            r.needs_cuda_build = r.gpus > 0 && kind.is_some_and(|k| k.kind.gpus_need_cuda_build());
            r
        });
        let retries = match k.get("retries") {
            Some((_, n)) => self.uint(n, "`retries`", 0).map(|v| v.min(100) as u32),
            None => Some(1),
        };
        // A hung script held its worker for ever: `timeout:` ends an attempt that runs
        // longer. Built-in steps show their progress and are not cut short.
        let timeout = match k.get("timeout") {
            None => Some(None),
            Some((tk, n)) => {
                let text = self.string(n, "`timeout`");
                match text
                    .as_deref()
                    .map(plateflow_contract::units::parse_seconds)
                {
                    Some(Some(secs)) if secs > 0 => {
                        if kind.is_some_and(|k| k.kind != kinds::StepKind::Command) {
                            self.r.error_hint(
                                tk.mark,
                                tk.width(),
                                format!("{ctx}: `timeout` applies to `command` steps"),
                                Some("remove it: built-in steps show their progress and are not cut short".into()),
                            );
                            None
                        } else {
                            Some(Some(secs))
                        }
                    }
                    Some(_) => {
                        self.r.error_hint(
                            n.mark,
                            n.width(),
                            format!(
                                "`timeout` must be a span of time, found `{}`",
                                text.unwrap_or_default()
                            ),
                            Some("write it like `90s`, `30m`, `2h` or `1h30m`".into()),
                        );
                        None
                    }
                    None => None,
                }
            }
        };

        let (params, files, param_marks) = match kind.or(guessed_kind) {
            Some(check_as) => {
                let deps: Vec<String> = after_marks
                    .iter()
                    .filter_map(|(d, _, _)| {
                        index
                            .iter()
                            .find(|(_, &i)| i == *d)
                            .map(|(n, _)| n.to_string())
                    })
                    .collect();
                let with = k.get("with").copied();
                self.params(&ctx, check_as, with, key, &for_each, &deps, &excused)
            }
            None => (None, vec![], BTreeMap::new()),
        };
        let step = (|| {
            Some(StepSpec {
                name: name.to_string(),
                mark: key.mark,
                kind: kind?,
                after,
                params: params?,
                param_marks,
                for_each,
                resources: ResourceSpec {
                    time_limit_s: timeout?,
                    ..resources?
                },
                resources_mark: k
                    .get("resources")
                    .map_or((key.mark, key.width()), |(_, n)| (n.mark, n.width())),
                retries: retries?,
                reads_images,
                reads_plate_map,
                files,
            })
        })();
        (step, after_marks)
    }

    fn resources(&mut self, n: &Node) -> Option<ResourceSpec> {
        if !self.expect_map(
            n,
            "`resources`",
            Some("write `cpus: 2` and `memory: 4G` indented under `resources:`"),
        ) {
            return None;
        }
        let k = self.keys(n, RESOURCE_KEYS, "`resources`");
        let cpus = match k.get("cpus") {
            Some((_, v)) => self.uint_in(v, "`cpus`", 1, MAX_CPUS).map(|c| c as u32),
            None => Some(1),
        };
        let gpus = match k.get("gpus") {
            Some((_, v)) => self.uint_in(v, "`gpus`", 0, MAX_GPUS).map(|c| c as u32),
            None => Some(0),
        };
        let memory = match k.get("memory") {
            Some((_, v)) => {
                let text = self.string(v, "`memory`")?;
                match parse_bytes(&text) {
                    Some(b) => Some(b),
                    None => {
                        self.r.error_hint(
                            v.mark,
                            v.width(),
                            format!("`memory: {text}` is not an amount of memory a node can have"),
                            Some("write it like `512M`, `4G` or `16GB`".into()),
                        );
                        None
                    }
                }
            }
            None => Some(0),
        };
        Some(ResourceSpec {
            cpus: cpus?,
            gpus: gpus?,
            memory_bytes: memory?,
            needs_cuda_build: false,
            // Set from the step's `timeout:`.
            time_limit_s: None,
        })
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn params(
        &mut self,
        ctx: &str,
        kind: &KindInfo,
        with: Option<(&Node, &Node)>,
        step_key: &Node,
        for_each: &[String],
        deps: &[String],
        excused: &[String],
    ) -> (
        Option<StepParams>,
        Vec<(String, PathBuf)>,
        BTreeMap<String, ParamMark>,
    ) {
        let mut out = serde_json::Map::new();
        let mut marks = BTreeMap::new();
        let mut ok = true;
        let mut files = Vec::new();
        let mut given: HashMap<String, (&Node, &Node)> = HashMap::new();
        if let Some((_, w)) = with {
            let example = match kind.params.iter().find(|p| p.required) {
                Some(p) => format!("write `{}: ...` indented under `with:`", p.name),
                None => "write `name: value` lines indented under `with:`".to_string(),
            };
            if !self.expect_map(w, &format!("`with` of {ctx}"), Some(&example)) {
                return (None, files, marks);
            }
            let known: Vec<&str> = kind.params.iter().map(|p| p.name).collect();
            given = self.keys(
                w,
                &known,
                &format!("`with` of {ctx} (kind `{}`)", kind.name),
            );
        }
        for spec in kind.params {
            let Some((_, v)) = given.get(spec.name) else {
                if spec.required {
                    // Point at the `with:` key, or at the step's name when there is none.
                    let at = with.map_or(step_key, |(wk, _)| wk);
                    self.r.error_hint(
                        at.mark,
                        at.width(),
                        format!(
                            "{ctx} is missing the `{}` parameter required by kind `{}`",
                            spec.name, kind.name
                        ),
                        Some(format!("`{}`: {}", spec.name, spec.help)),
                    );
                    ok = false;
                }
                continue;
            };
            match typed_value(v, spec.ty) {
                Ok(j) => {
                    out.insert(spec.name.to_string(), j);
                }
                Err(found) => {
                    let n = spec.name;
                    let hint = match (spec.ty, &v.value) {
                        (ParamType::StringList, Value::Scalar { text, .. }) => Some(format!("write `{n}: [{text}]`")),
                        (ParamType::StringList, _) => Some(format!("write `{n}: [a, b]`")),
                        (ParamType::String, Value::Seq(_)) => Some(format!(
                            "write one value; for several lines, write `{n}: |` and indent the lines below it"
                        )),
                        _ => None,
                    };
                    self.r.error_hint(
                        v.mark,
                        v.width(),
                        format!("`{n}` must be {}, found {found}", spec.ty.describe()),
                        hint,
                    );
                    ok = false;
                }
            }
        }
        // Kind-specific checks that need locations.
        if kind.kind.uses_channels() {
            if let Some(names) = self.channel_names.clone() {
                for pname in [
                    "nuclei",
                    "cells",
                    "channels",
                    "translocation",
                    "masks",
                    "labels",
                ] {
                    let Some((_, v)) = given.get(pname) else {
                        continue;
                    };
                    let items: Vec<&Node> = match &v.value {
                        Value::Seq(items) => items.iter().collect(),
                        _ => vec![*v],
                    };
                    for item in items {
                        let Some(ch) = item.as_str() else { continue };
                        if !names.iter().any(|n| n == ch) {
                            let hint = did_you_mean(ch, names.iter().map(String::as_str))
                                .unwrap_or_else(|| {
                                    format!("the channels are: {}", names.join(", "))
                                });
                            self.r.error_hint(
                                item.mark,
                                item.width(),
                                format!("`{pname}` names channel `{ch}`, which `data.channels` does not define"),
                                Some(hint),
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        // Plate-level statistics need a plate's wells in one task: fanned out finer, every
        // task holds one well, has no controls to normalise against, and failed at run time.
        if kind.kind == kinds::StepKind::Features {
            if let Some(f) = for_each.iter().find(|f| *f != "plate") {
                for pname in ["normalize", "dose", "controls"] {
                    let Some((_, v)) = given.get(pname) else {
                        continue;
                    };
                    if pname == "normalize" && v.as_str() == Some("none") {
                        continue;
                    }
                    self.r.error_hint(
                        v.mark,
                        v.width(),
                        format!(
                            "`{pname}` compares a plate's wells, but {ctx} fans out over `{f}`: each task would see only its own"
                        ),
                        Some("write `for_each: plate`".into()),
                    );
                    ok = false;
                }
            }
        }
        // Files beside the pipeline that a step reads (any kind that takes `files`).
        if let Some((_, v)) = given.get("files") {
            if let Value::Seq(items) = &v.value {
                for item in items {
                    let Some(f) = item.as_str() else { continue };
                    if let Err(why) = check_inside(f) {
                        self.r.error_hint(
                            item.mark,
                            item.width(),
                            format!("file `{f}` must be beside the pipeline: {why}"),
                            Some("copy it next to the pipeline file and name it relative to it, like `scripts/count.py`".into()),
                        );
                        ok = false;
                        continue;
                    }
                    match self.rel_path(item, "`files`", true, false) {
                        Some(p) => files.push((f.to_string(), p)),
                        None => ok = false,
                    }
                }
            }
        }
        if kind.kind == kinds::StepKind::Command {
            if let Some((_, v)) = given.get("outputs") {
                if let Value::Seq(items) = &v.value {
                    let mut seen = Vec::new();
                    for item in items {
                        let Some(o) = item.as_str() else { continue };
                        if let Err(why) = check_inside(o) {
                            self.r.error_hint(
                                item.mark,
                                item.width(),
                                format!("output `{o}` points outside the workspace: {why}"),
                                Some("name outputs relative to the step's scratch directory, like `counts.csv` or `plots/a.svg`".into()),
                            );
                            ok = false;
                        }
                        // Each output is one file the step writes: a pattern or a folder
                        // passed here and failed at run time as "did not write" it.
                        if o.contains(['*', '?', '[']) || o.ends_with('/') {
                            self.r.error_hint(
                                item.mark,
                                item.width(),
                                format!("output `{o}` is a pattern or a folder; outputs name files, one per entry"),
                                Some("list each file the step writes (`plots/a.svg`, `plots/b.svg`), or have it pack a folder into one file (`tar czf plots.tar.gz plots`)".into()),
                            );
                            ok = false;
                        }
                        if seen.contains(&o) {
                            self.r.error_hint(
                                item.mark,
                                item.width(),
                                format!("output `{o}` is declared twice"),
                                Some("list each output once".into()),
                            );
                            ok = false;
                        }
                        seen.push(o);
                    }
                }
            }
            if let Some((_, v)) = given.get("run") {
                if let Some(text) = v.as_str() {
                    ok &= self.check_placeholders(v, text, for_each, deps, excused);
                    ok &= self.check_scripts(v, text, &files);
                }
            }
        }
        for (name, (_, v)) in &given {
            let items = match &v.value {
                Value::Seq(items) => items.iter().map(|i| (i.mark, i.width())).collect(),
                _ => Vec::new(),
            };
            marks.insert(
                name.clone(),
                ParamMark {
                    mark: v.mark,
                    width: v.width(),
                    items,
                },
            );
        }
        // The typed contract: choices, ranges and combinations, each at its own line.
        let params = if ok {
            match StepParams::decode(kind.kind, out) {
                Ok(p) => Some(p),
                Err(issues) => {
                    let at = with.map_or(step_key, |(wk, _)| wk);
                    for issue in issues {
                        self.param_issue(ctx, &issue, &given, at);
                    }
                    None
                }
            }
        } else {
            None
        };
        (params, files, marks)
    }

    /// Reports a problem the typed parameters found, at the value (or list item) at fault,
    /// with a "did you mean" for a misspelt choice.
    fn param_issue(
        &mut self,
        ctx: &str,
        issue: &ParamIssue,
        given: &HashMap<String, (&Node, &Node)>,
        fallback: &Node,
    ) {
        let (mark, width, found) = match given.get(&issue.field) {
            Some((_, v)) => {
                let node = match (&v.value, issue.index) {
                    (Value::Seq(items), Some(i)) if i < items.len() => &items[i],
                    _ => *v,
                };
                (node.mark, node.width(), node.as_str().map(str::to_string))
            }
            None => (fallback.mark, fallback.width(), None),
        };
        let mut hint = issue.hint.clone();
        if let (Some(choices), Some(found)) = (
            hint.as_deref()
                .and_then(|h| h.strip_prefix("choose one of: ")),
            &found,
        ) {
            let choices: Vec<&str> = choices.split(", ").collect();
            if let Some(h) = did_you_mean(found, choices.iter().copied()) {
                hint = Some(format!("{h} (choices: {})", choices.join(", ")));
            }
        }
        self.r
            .error_hint(mark, width, format!("{ctx}: {}", issue.message), hint);
    }

    /// `deps`: the steps in `after:`; `excused`: placeholders not to report because an error
    /// about their cause is already reported.
    /// A script that `run` names must be among the step's `files:`: only those are in the
    /// cache key, so a script run from elsewhere (`python ~/count.py`, or one beside the
    /// pipeline but not listed) could be edited and the next run would return the old
    /// results from the cache.
    fn check_scripts(&mut self, node: &Node, text: &str, files: &[(String, PathBuf)]) -> bool {
        const SCRIPTS: [&str; 14] = [
            "py", "r", "sh", "bash", "jl", "m", "ijm", "pl", "rb", "js", "groovy", "bsh", "cppipe",
            "cpproj",
        ];
        let listed: Vec<PathBuf> = files
            .iter()
            .filter_map(|(_, p)| std::fs::canonicalize(p).ok())
            .collect();
        let mut ok = true;
        let words = text
            .split(|c: char| c.is_whitespace() || ";|&()<>".contains(c))
            .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
            .filter(|w| !w.is_empty() && !w.contains('{') && !w.contains('$'));
        for word in words {
            let is_script = Path::new(word)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| SCRIPTS.contains(&e.to_ascii_lowercase().as_str()));
            if !is_script {
                continue;
            }
            let path = match word.strip_prefix("~/") {
                Some(rest) => match std::env::var_os("HOME") {
                    Some(home) => PathBuf::from(home).join(rest),
                    None => continue,
                },
                None => self.dir.join(word),
            };
            let Ok(real) = std::fs::canonicalize(&path) else {
                continue;
            };
            if !real.is_file() || listed.contains(&real) {
                continue;
            }
            let beside = real
                .strip_prefix(&self.dir)
                .ok()
                .map(Path::to_path_buf)
                .or_else(|| {
                    std::fs::canonicalize(&self.dir)
                        .ok()
                        .and_then(|d| real.strip_prefix(d).ok().map(Path::to_path_buf))
                });
            let hint = match beside {
                Some(rel) => format!("add `files: [{}]` to the step", rel.display()),
                None => "copy it beside the pipeline (e.g. `scripts/`), name it relative to the pipeline in `run`, and list it in `files:`".into(),
            };
            let offset = text.find(word).unwrap_or(0);
            let mark = self.locate_in_scalar(node, text, offset);
            self.r.error_hint(
                mark,
                word.chars().count(),
                format!(
                    "`run` uses the script `{word}`, which is not among the step's `files:`: an edit to it would not re-run the step (its old results would come from the cache)"
                ),
                Some(hint),
            );
            ok = false;
        }
        ok
    }

    fn check_placeholders(
        &mut self,
        node: &Node,
        text: &str,
        for_each: &[String],
        deps: &[String],
        excused: &[String],
    ) -> bool {
        let mut allowed: Vec<String> = ["inputs", "upstream", "outputs", "task"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        allowed.extend(for_each.iter().cloned());
        allowed.extend(deps.iter().map(|d| format!("upstream.{d}")));
        match placeholders(text) {
            Err((offset, msg)) => {
                let mark = self.locate_in_scalar(node, text, offset);
                self.r.error(mark, 1, format!("in `run`: {msg}"));
                false
            }
            Ok(list) => {
                let mut ok = true;
                // The value would not expand inside single quotes (and no quoting is needed:
                // values reach the command without passing through shell text).
                for (ph, q) in quoting(text).unwrap_or_default() {
                    if q == Quoting::Single {
                        let mark = self.locate_in_scalar(node, text, ph.offset);
                        self.r.error_hint(
                            mark,
                            ph.name.chars().count() + 2,
                            format!("placeholder `{{{}}}` is inside single quotes, where the shell does not expand it", ph.name),
                            Some(format!(
                                "write {{{0}}} or \"{{{0}}}\" without the single quotes: plateflow passes each value safely, whatever characters it holds",
                                ph.name
                            )),
                        );
                        ok = false;
                    }
                }
                for ph in list {
                    if allowed.contains(&ph.name) || excused.contains(&ph.name) {
                        continue;
                    }
                    let width = ph.name.chars().count() + 2;
                    let hint = if ph.name.starts_with("upstream.") {
                        Some(format!(
                            "`{}` is not in this step's `after:`; add it there",
                            ph.name.trim_start_matches("upstream.")
                        ))
                    } else {
                        // A pattern field this step does not fan out over is the likely intent.
                        let candidates = allowed
                            .iter()
                            .chain(&self.pattern_fields)
                            .map(String::as_str);
                        let guess = if self.pattern_fields.contains(&ph.name) {
                            Some(ph.name.as_str())
                        } else {
                            closest(&ph.name, candidates)
                        };
                        Some(match guess {
                            Some(g) if allowed.iter().any(|a| a == g) => format!("did you mean `{{{g}}}`?"),
                            Some(g) => format!(
                                "{}`{g}` is a field of the filename pattern, but this step does not fan out over it; add `{g}` to its `for_each`",
                                if g == ph.name { String::new() } else { format!("did you mean `{{{g}}}`? ") }
                            ),
                            None => format!(
                                "placeholders available here: {}",
                                allowed.iter().map(|a| format!("{{{a}}}")).collect::<Vec<_>>().join(" ")
                            ),
                        })
                    };
                    let mark = self.locate_in_scalar(node, text, ph.offset);
                    self.r.error_hint(
                        mark,
                        width,
                        format!("unknown placeholder `{{{}}}` in `run`", ph.name),
                        hint,
                    );
                    ok = false;
                }
                ok
            }
        }
    }
}

/// Depth-first search for the cycle through `start` (edges go from a step to its `after`s).
fn find_cycle(after: &[Vec<(usize, Mark, usize)>], start: usize) -> Vec<usize> {
    fn dfs(
        after: &[Vec<(usize, Mark, usize)>],
        node: usize,
        start: usize,
        path: &mut Vec<usize>,
        seen: &mut Vec<bool>,
    ) -> bool {
        for &(d, _, _) in &after[node] {
            if d == start {
                return true;
            }
            if !seen[d] {
                seen[d] = true;
                path.push(d);
                if dfs(after, d, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start];
    let mut seen = vec![false; after.len()];
    seen[start] = true;
    dfs(after, start, start, &mut path, &mut seen);
    path
}

/// Outputs and files must stay inside their directory: relative, no `..`.
fn check_inside(p: &str) -> Result<(), &'static str> {
    let path = Path::new(p);
    if p.is_empty() {
        return Err("the name is empty");
    }
    if path.is_absolute() {
        return Err("it is an absolute path");
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("it climbs out with `..`");
    }
    Ok(())
}

fn typed_value(v: &Node, ty: ParamType) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    let scalar = |v: &Node| -> Result<String, String> {
        match &v.value {
            Value::Scalar { text, .. } => Ok(text.clone()),
            _ => Err(v.describe().to_string()),
        }
    };
    match ty {
        ParamType::String => scalar(v).map(J::String),
        ParamType::Int => {
            let t = scalar(v)?;
            t.trim()
                .parse::<i64>()
                .map(J::from)
                .map_err(|_| format!("`{t}`"))
        }
        ParamType::Float => {
            let t = scalar(v)?;
            t.trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(J::Number)
                .ok_or_else(|| format!("`{t}`"))
        }
        ParamType::Bool => match scalar(v)?.as_str() {
            "true" | "yes" | "on" => Ok(J::Bool(true)),
            "false" | "no" | "off" => Ok(J::Bool(false)),
            t => Err(format!("`{t}`")),
        },
        ParamType::StringList => match &v.value {
            Value::Seq(items) => items
                .iter()
                .map(|i| {
                    scalar(i)
                        .map(J::String)
                        .map_err(|d| format!("a list holding {d}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(J::Array),
            Value::Null => Ok(J::Array(vec![])),
            _ => Err(v.describe().to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_come_in_dependency_order() {
        let src = "steps:\n  b:\n    uses: noop\n    after: [a]\n  a:\n    uses: noop\n";
        let p = parse(Path::new("x.yaml"), src).unwrap();
        assert_eq!(p.steps[0].name, "a");
        assert_eq!(p.steps[1].after, vec![0]);
    }

    /// A script `run` names is refused unless `files:` lists it (an edit to it would not
    /// re-run the step), with the fix: list it, or copy it beside the pipeline; listed, or a
    /// word that names no file, it passes.
    #[test]
    fn scripts_run_names_must_be_step_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        std::fs::write(dir.path().join("scripts/count.py"), "print(1)\n").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let far = elsewhere.path().join("plot.R");
        std::fs::write(&far, "1\n").unwrap();
        let path = dir.path().join("p.yaml");
        let step = |run: &str, files: &str| {
            format!("steps:\n  c:\n    uses: command\n    with:\n      run: {run}\n      outputs: [o.txt]{files}\n")
        };
        let e = parse(&path, &step("python scripts/count.py > o.txt", "")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(
                "`run` uses the script `scripts/count.py`, which is not among the step's `files:`"
            ) && text.contains("add `files: [scripts/count.py]`")
                && text.contains(":5:"),
            "{text}"
        );
        let e = parse(
            &path,
            &step(&format!("Rscript '{}' > o.txt", far.display()), ""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("copy it beside the pipeline"), "{e}");
        parse(
            &path,
            &step(
                "python scripts/count.py > o.txt",
                "\n      files: [scripts/count.py]",
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        parse(&path, &step("python absent.py > o.txt", "")).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `timeout:` takes spans of time on `command` steps; a malformed one, or one on a
    /// built-in step, is refused at its line.
    #[test]
    fn timeouts_are_spans_of_time_on_command_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        let step = |kind: &str, timeout: &str| {
            let with = if kind == "command" {
                "    with: {run: make, outputs: [o.txt]}\n"
            } else {
                ""
            };
            format!("steps:\n  s:\n    uses: {kind}\n    timeout: {timeout}\n{with}")
        };
        let p = parse(&path, &step("command", "1h30m")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.steps[0].resources.time_limit_s, Some(5400));
        let e = parse(&path, &step("command", "soon"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must be a span of time, found `soon`") && e.contains(":4:"),
            "{e}"
        );
        let e = parse(&path, &step("noop", "2h")).unwrap_err().to_string();
        assert!(e.contains("`timeout` applies to `command` steps"), "{e}");
    }

    /// Outputs are files: a glob or a folder is refused when the pipeline is read.
    #[test]
    fn outputs_are_files_not_patterns_or_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        for bad in ["\"plots/*.svg\"", "plots/"] {
            let src = format!("steps:\n  c:\n    uses: command\n    with:\n      run: make\n      outputs: [{bad}]\n");
            let e = parse(&path, &src).unwrap_err().to_string();
            assert!(e.contains("is a pattern or a folder"), "{e}");
        }
    }
}
