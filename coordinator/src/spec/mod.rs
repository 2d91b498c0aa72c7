//! Pipeline files: parse, validate everything at once, and produce a typed [`Pipeline`].
//!
//! Validation never stops at the first problem: every error found is reported with its
//! file:line:column, the offending line and, where a fix is likely, a hint.

pub mod diag;
pub mod pattern;
pub mod yaml;

use diag::{did_you_mean, Diagnostics, Mark, Reporter};
use pattern::FilePattern;
use plateflow_worker::kinds::{self, KindInfo, ParamType};
use plateflow_worker::placeholders::placeholders;
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
}

#[derive(Debug, Clone)]
pub struct DataSpec {
    pub images_root: PathBuf,
    pub pattern: FilePattern,
    pub plate_map: Option<PathBuf>,
    /// Channel field values to names, e.g. `w1: DNA`.
    pub channels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSpec {
    pub cpus: u32,
    pub gpus: u32,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub name: String,
    pub kind: &'static KindInfo,
    /// Indices into [`Pipeline::steps`].
    pub after: Vec<usize>,
    /// Canonical parameters (keys sorted).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Fields this step fans out over; empty for an aggregate (one task).
    pub for_each: Vec<String>,
    pub resources: ResourceSpec,
    /// Extra attempts after a failure or a lost worker.
    pub retries: u32,
    pub reads_images: bool,
    pub reads_plate_map: bool,
    /// Files beside the pipeline hashed into the key and copied into the scratch directory.
    pub files: Vec<(String, PathBuf)>,
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
    "inputs",
];
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
            r.error_hint(
                e.mark,
                1,
                format!("YAML syntax error: {}", e.message),
                Some("check indentation (spaces, not tabs) and that brackets and quotes are closed".into()),
            );
            return Err(r.finish().unwrap_err());
        }
    };
    let dir = path
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let mut v = Validator { r, dir };
    let pipeline = v.pipeline(path, &root);
    v.r.finish()?;
    Ok(pipeline.expect("no errors means a pipeline"))
}

struct Validator<'a> {
    r: Reporter<'a>,
    dir: PathBuf,
}

fn entries(node: &Node) -> &[(Node, Node)] {
    match &node.value {
        Value::Map(e) => e,
        _ => &[],
    }
}

impl Validator<'_> {
    fn expect_map(&mut self, node: &Node, what: &str) -> bool {
        if matches!(node.value, Value::Map(_)) {
            return true;
        }
        self.r.error(
            node.mark,
            node.width(),
            format!("{what} must be a mapping of `key: value` lines, found {}", node.describe()),
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
                self.r.error(k.mark, k.width(), format!("keys in {context} must be plain words"));
                continue;
            };
            if !known.contains(&name) {
                let hint = did_you_mean(name, known.iter().copied())
                    .or_else(|| Some(format!("known keys: {}", known.join(", "))));
                self.r.error_hint(k.mark, k.width(), format!("unknown key `{name}` in {context}"), hint);
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

    fn rel_path(&mut self, node: &Node, what: &str, must_exist: bool, is_dir: bool) -> Option<PathBuf> {
        let text = self.string(node, what)?;
        let p = self.dir.join(&text);
        if must_exist {
            let ok = if is_dir { p.is_dir() } else { p.is_file() };
            if !ok {
                let kind = if is_dir { "directory" } else { "file" };
                self.r.error_hint(
                    node.mark,
                    node.width(),
                    format!("{what}: {kind} `{text}` not found (looked at {})", p.display()),
                    Some("paths are relative to the pipeline file's directory".into()),
                );
                return None;
            }
        }
        Some(p)
    }

    fn pipeline(&mut self, path: &Path, root: &Node) -> Option<Pipeline> {
        if !self.expect_map(root, "a pipeline file") {
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
        let data = top.get("data").and_then(|(_, n)| self.data(n));
        let had_data_key = top.contains_key("data");
        let steps = match top.get("steps") {
            Some((_, n)) => self.steps(n, data.as_ref(), had_data_key),
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
        })
    }

    fn data(&mut self, node: &Node) -> Option<DataSpec> {
        if !self.expect_map(node, "`data`") {
            return None;
        }
        let k = self.keys(node, DATA_KEYS, "`data`");
        let images_root = match k.get("images") {
            Some((_, n)) => self.rel_path(n, "`images`", true, true),
            None => {
                self.r.error_hint(
                    node.mark,
                    1,
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
                        // Point at the character inside the pattern when it is on one line.
                        let quote = usize::from(!matches!(n.value, Value::Scalar { plain: true, .. }));
                        let mark = Mark {
                            line: n.mark.line,
                            col: n.mark.col + quote + t[..offset].chars().count(),
                        };
                        self.r.error(mark, 1, format!("bad filename pattern: {msg}"));
                        None
                    }
                })
            }
            None => {
                self.r.error_hint(
                    node.mark,
                    1,
                    "`data` needs `pattern:`, the filename pattern that names plate, well and channel",
                    Some("for example `pattern: \"{plate}/{well}_s{site}_w{channel}.tif\"`".into()),
                );
                None
            }
        };
        let plate_map = match k.get("plate_map") {
            Some((_, n)) => Some(self.rel_path(n, "`plate_map`", true, false)?),
            None => None,
        };
        let mut channels = BTreeMap::new();
        if let Some((_, n)) = k.get("channels") {
            if self.expect_map(n, "`channels`") {
                for (ck, cv) in entries(n) {
                    if let (Some(a), Some(b)) = (self.string(ck, "a channel"), self.string(cv, "a channel name")) {
                        channels.insert(a, b);
                    }
                }
            }
        }
        Some(DataSpec {
            images_root: images_root?,
            pattern: pattern?,
            plate_map,
            channels,
        })
    }

    fn steps(&mut self, node: &Node, data: Option<&DataSpec>, had_data_key: bool) -> Option<Vec<StepSpec>> {
        if !self.expect_map(node, "`steps`") {
            return None;
        }
        let list = entries(node);
        if list.is_empty() {
            self.r.error(node.mark, 1, "`steps` is empty: a pipeline needs at least one step");
            return None;
        }
        // First pass: names, so that `after:` can refer to steps defined later in the file.
        let mut names: Vec<(String, Mark)> = Vec::new();
        for (k, _) in list {
            let Some(name) = k.as_str() else {
                self.r.error(k.mark, k.width(), "step names must be plain words");
                continue;
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                self.r.error_hint(
                    k.mark,
                    k.width(),
                    format!("step name `{name}` may hold only letters, digits, `_` and `-`"),
                    None,
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
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let fields: Vec<String> = data.map(|d| d.pattern.fields.clone()).unwrap_or_default();

        let mut steps: Vec<Option<StepSpec>> = Vec::new();
        let mut after_marks: Vec<Vec<(usize, Mark, usize)>> = Vec::new();
        for (i, (k, body)) in list.iter().enumerate() {
            let name = k.as_str().unwrap_or("?").to_string();
            let (step, marks) = self.step(&name, body, &index, &fields, had_data_key);
            steps.push(step);
            after_marks.push(marks);
            let _ = i;
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
                // The edge text[last] -> text[0] is written in step text[0]'s `after:`.
                let (mark, width) = after_marks[path[0]]
                    .iter()
                    .find(|(d, _, _)| Some(d) == path.last())
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
        let new_pos: HashMap<usize, usize> = order.iter().enumerate().map(|(new, &old)| (old, new)).collect();
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
        body: &Node,
        index: &HashMap<&str, usize>,
        fields: &[String],
        had_data_key: bool,
    ) -> (Option<StepSpec>, Vec<(usize, Mark, usize)>) {
        let mut after_marks = Vec::new();
        if !self.expect_map(body, &format!("step `{name}`")) {
            return (None, after_marks);
        }
        let ctx = format!("step `{name}`");
        let k = self.keys(body, STEP_KEYS, &ctx);
        let kind = match k.get("uses") {
            None => {
                self.r.error_hint(
                    body.mark,
                    1,
                    format!("{ctx} has no `uses:` (which kind of step it is)"),
                    Some(format!(
                        "available kinds: {}",
                        kinds::all_kinds().iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                    )),
                );
                None
            }
            Some((_, n)) => match self.string(n, "`uses`") {
                None => None,
                Some(kname) => match kinds::lookup(&kname) {
                    Some(kind) => Some(kind),
                    None if kinds::PLANNED_KINDS.contains(&kname.as_str()) => {
                        self.r.error_hint(
                            n.mark,
                            n.width(),
                            format!("step kind `{kname}` is not available in this version of plateflow"),
                            Some("use a `command` step that runs your own script for now".into()),
                        );
                        None
                    }
                    None => {
                        let known = kinds::all_kinds().iter().map(|k| k.name);
                        let hint = did_you_mean(&kname, known.clone()).or_else(|| {
                            Some(format!("available kinds: {}", known.collect::<Vec<_>>().join(", ")))
                        });
                        self.r.error_hint(n.mark, n.width(), format!("unknown step kind `{kname}`"), hint);
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
                let Some(dep) = self.string(item, "an `after` entry") else { continue };
                match index.get(dep.as_str()) {
                    Some(&d) if dep == name => {
                        let _ = d;
                        self.r.error(item.mark, item.width(), format!("step `{name}` cannot come after itself"));
                    }
                    Some(&d) => {
                        if after.contains(&d) {
                            self.r.error(item.mark, item.width(), format!("`{dep}` is listed twice in `after`"));
                        } else {
                            after.push(d);
                            after_marks.push((d, item.mark, item.width()));
                        }
                    }
                    None => {
                        let hint = did_you_mean(&dep, index.keys().copied()).or_else(|| {
                            let mut known: Vec<&str> = index.keys().copied().collect();
                            known.sort();
                            Some(format!("steps in this pipeline: {}", known.join(", ")))
                        });
                        self.r.error_hint(item.mark, item.width(), format!("{ctx} comes after `{dep}`, which is not a step"), hint);
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
                let Some(f) = self.string(item, "`for_each`") else { continue };
                if fields.is_empty() {
                    let msg = if had_data_key {
                        format!("{ctx} fans out over `{f}`, but the image data has errors (see above)")
                    } else {
                        format!("{ctx} fans out over `{f}`, but the pipeline has no `data:` with a filename pattern")
                    };
                    self.r.error_hint(item.mark, item.width(), msg, Some("add `data: {images: DIR, pattern: ...}` or remove `for_each`".into()));
                    continue;
                }
                if !fields.contains(&f) {
                    let hint = did_you_mean(&f, fields.iter().map(String::as_str))
                        .unwrap_or_else(|| format!("the pattern defines: {}", fields.join(", ")));
                    self.r.error_hint(
                        item.mark,
                        item.width(),
                        format!("{ctx} fans out over `{f}`, which the filename pattern does not define"),
                        Some(hint),
                    );
                    continue;
                }
                // A well lives in a plate: fanning out by well means by (plate, well).
                if f == "well" && fields.iter().any(|x| x == "plate") && !for_each.iter().any(|x| x == "plate") {
                    for_each.push("plate".into());
                }
                if !for_each.contains(&f) {
                    for_each.push(f);
                }
            }
        }

        // inputs
        let (mut reads_images, mut reads_plate_map) = (after.is_empty() && !fields.is_empty(), false);
        if let Some((_, n)) = k.get("inputs") {
            reads_images = false;
            let items: Vec<&Node> = match &n.value {
                Value::Seq(items) => items.iter().collect(),
                Value::Null => vec![],
                _ => vec![n],
            };
            for item in items {
                let Some(src) = self.string(item, "an `inputs` entry") else { continue };
                match src.as_str() {
                    "images" if fields.is_empty() => {
                        self.r.error_hint(item.mark, item.width(), "`inputs: images` needs a `data:` section with images and a pattern", None);
                    }
                    "images" => reads_images = true,
                    "plate_map" => reads_plate_map = true,
                    other => {
                        let hint = did_you_mean(other, INPUT_SOURCES.iter().copied())
                            .or_else(|| Some(format!("inputs can be: {}", INPUT_SOURCES.join(", "))));
                        self.r.error_hint(item.mark, item.width(), format!("unknown input `{other}`"), hint);
                    }
                }
            }
        }

        let resources = match k.get("resources") {
            Some((_, n)) => self.resources(n),
            None => Some(ResourceSpec { cpus: 1, gpus: 0, memory_bytes: 0 }),
        };
        let retries = match k.get("retries") {
            Some((_, n)) => self.uint(n, "`retries`", 0).map(|v| v.min(100) as u32),
            None => Some(1),
        };

        let (params, files) = match (kind, k.get("with")) {
            (Some(kind), w) => {
                let dep_names: Vec<&str> = after_marks
                    .iter()
                    .filter_map(|(d, _, _)| index.iter().find(|(_, &i)| i == *d).map(|(n, _)| *n))
                    .collect();
                self.params(&ctx, kind, w.map(|(_, n)| *n), body, &for_each, &dep_names)
            }
            (None, _) => (None, vec![]),
        };
        let step = (|| {
            Some(StepSpec {
                name: name.to_string(),
                kind: kind?,
                after,
                params: params?,
                for_each,
                resources: resources?,
                retries: retries?,
                reads_images,
                reads_plate_map,
                files,
            })
        })();
        (step, after_marks)
    }

    fn resources(&mut self, n: &Node) -> Option<ResourceSpec> {
        if !self.expect_map(n, "`resources`") {
            return None;
        }
        let k = self.keys(n, RESOURCE_KEYS, "`resources`");
        let cpus = match k.get("cpus") {
            Some((_, v)) => self.uint(v, "`cpus`", 1).map(|c| c as u32),
            None => Some(1),
        };
        let gpus = match k.get("gpus") {
            Some((_, v)) => self.uint(v, "`gpus`", 0).map(|c| c as u32),
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
                            format!("`memory: {text}` is not an amount of memory"),
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
        })
    }

    #[allow(clippy::type_complexity)]
    fn params(
        &mut self,
        ctx: &str,
        kind: &KindInfo,
        with: Option<&Node>,
        step_node: &Node,
        for_each: &[String],
        deps: &[&str],
    ) -> (Option<serde_json::Map<String, serde_json::Value>>, Vec<(String, PathBuf)>) {
        let mut out = serde_json::Map::new();
        let mut ok = true;
        let mut files = Vec::new();
        let mut given: HashMap<String, (&Node, &Node)> = HashMap::new();
        if let Some(w) = with {
            if !self.expect_map(w, &format!("`with` of {ctx}")) {
                return (None, files);
            }
            let known: Vec<&str> = kind.params.iter().map(|p| p.name).collect();
            given = self.keys(w, &known, &format!("`with` of {ctx} (kind `{}`)", kind.name));
        }
        for spec in kind.params {
            let Some((_, v)) = given.get(spec.name) else {
                if spec.required {
                    let at = with.unwrap_or(step_node);
                    self.r.error_hint(
                        at.mark,
                        1,
                        format!("{ctx} is missing the `{}` parameter required by kind `{}`", spec.name, kind.name),
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
                    self.r.error_hint(
                        v.mark,
                        v.width(),
                        format!("`{}` must be {}, found {found}", spec.name, spec.ty.describe()),
                        (spec.ty == ParamType::StringList).then(|| format!("write `{}: [a, b]`", spec.name)),
                    );
                    ok = false;
                }
            }
        }
        // Kind-specific checks that need locations.
        if kind.name == "command" {
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
                        if seen.contains(&o) {
                            self.r.error(item.mark, item.width(), format!("output `{o}` is declared twice"));
                            ok = false;
                        }
                        seen.push(o);
                    }
                }
            }
            if let Some((_, v)) = given.get("files") {
                if let Value::Seq(items) = &v.value {
                    for item in items {
                        let Some(f) = item.as_str() else { continue };
                        if let Err(why) = check_inside(f) {
                            self.r.error(item.mark, item.width(), format!("file `{f}` must be beside the pipeline: {why}"));
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
            if let Some((_, v)) = given.get("run") {
                if let Some(text) = v.as_str() {
                    ok &= self.check_placeholders(v, text, for_each, deps);
                }
            }
        }
        (ok.then_some(out), files)
    }

    fn check_placeholders(&mut self, node: &Node, text: &str, for_each: &[String], deps: &[&str]) -> bool {
        let mut allowed: Vec<String> = ["inputs", "upstream", "outputs", "task"].iter().map(|s| s.to_string()).collect();
        allowed.extend(for_each.iter().cloned());
        allowed.extend(deps.iter().map(|d| format!("upstream.{d}")));
        // Point inside one-line plain or quoted scalars; block scalars start on the next line.
        let locate = |offset: usize| -> Mark {
            let quote = usize::from(!matches!(node.value, Value::Scalar { plain: true, .. }));
            if text.contains('\n') {
                node.mark
            } else {
                Mark { line: node.mark.line, col: node.mark.col + quote + text[..offset].chars().count() }
            }
        };
        match placeholders(text) {
            Err((offset, msg)) => {
                self.r.error(locate(offset), 1, format!("in `run`: {msg}"));
                false
            }
            Ok(list) => {
                let mut ok = true;
                for ph in list {
                    if allowed.contains(&ph.name) {
                        continue;
                    }
                    let width = ph.name.chars().count() + 2;
                    let hint = if ph.name.starts_with("upstream.") {
                        Some(format!(
                            "`{}` is not in this step's `after:`; add it there",
                            ph.name.trim_start_matches("upstream.")
                        ))
                    } else {
                        did_you_mean(&ph.name, allowed.iter().map(String::as_str)).or_else(|| {
                            Some(format!(
                                "placeholders available here: {}; a field such as {{well}} is available only when the step fans out over it (`for_each`)",
                                allowed.iter().map(|a| format!("{{{a}}}")).collect::<Vec<_>>().join(" ")
                            ))
                        })
                    };
                    self.r.error_hint(locate(ph.offset), width, format!("unknown placeholder `{{{}}}` in `run`", ph.name), hint);
                    ok = false;
                }
                ok
            }
        }
    }
}

/// Depth-first search for the cycle through `start` (edges go from a step to its `after`s).
fn find_cycle(after: &[Vec<(usize, Mark, usize)>], start: usize) -> Vec<usize> {
    fn dfs(after: &[Vec<(usize, Mark, usize)>], node: usize, start: usize, path: &mut Vec<usize>, seen: &mut Vec<bool>) -> bool {
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
            t.trim().parse::<i64>().map(J::from).map_err(|_| format!("`{t}`"))
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
                .map(|i| scalar(i).map(J::String).map_err(|d| format!("a list holding {d}")))
                .collect::<Result<Vec<_>, _>>()
                .map(J::Array),
            Value::Null => Ok(J::Array(vec![])),
            _ => Err(v.describe().to_string()),
        },
    }
}

/// `512M`, `4G`, `16GB`, `1.5GiB`, or a plain number of bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TB" | "TIB" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((num * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_amounts() {
        assert_eq!(parse_bytes("4G"), Some(4 << 30));
        assert_eq!(parse_bytes("512 MB"), Some(512 << 20));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("4 gigs"), None);
    }

    #[test]
    fn steps_come_in_dependency_order() {
        let src = "steps:\n  b:\n    uses: noop\n    after: [a]\n  a:\n    uses: noop\n";
        let p = parse(Path::new("x.yaml"), src).unwrap();
        assert_eq!(p.steps[0].name, "a");
        assert_eq!(p.steps[1].after, vec![0]);
    }
}
