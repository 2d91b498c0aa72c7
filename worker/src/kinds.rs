//! The registry of step kinds: each kind's name, implementation version and parameter schema.
//!
//! The planner validates `with:` against these schemas and puts the version into every cache
//! key, so bumping a kind's `version` re-runs exactly the tasks of that kind.

/// The type a parameter must have in the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Int,
    Float,
    Bool,
    StringList,
}

impl ParamType {
    pub fn describe(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Int => "an integer",
            ParamType::Float => "a number",
            ParamType::Bool => "true or false",
            ParamType::StringList => "a list of strings",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub required: bool,
    pub help: &'static str,
}

/// What the planner needs to know about a kind.
#[derive(Debug, Clone)]
pub struct KindInfo {
    pub name: &'static str,
    /// Bump when the implementation changes what it produces.
    pub version: u32,
    pub summary: &'static str,
    pub params: &'static [ParamSpec],
}

impl KindInfo {
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

const COMMAND_PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "run",
        ty: ParamType::String,
        required: true,
        help: "shell command, run with `sh -c` in a scratch directory; placeholders: \
               {inputs} {upstream} {upstream.STEP} {outputs} {task} and each fan-out field \
               such as {plate} or {well}",
    },
    ParamSpec {
        name: "outputs",
        ty: ParamType::StringList,
        required: false,
        help: "files the command writes, relative to its scratch directory; they are stored",
    },
    ParamSpec {
        name: "files",
        ty: ParamType::StringList,
        required: false,
        help: "files beside the pipeline (scripts, configs) copied into the scratch directory \
               and hashed into the cache key",
    },
];

const NOOP_PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "label",
    ty: ParamType::String,
    required: false,
    help: "ignored; lets benchmarks vary the cache key",
}];

static KINDS: &[KindInfo] = &[
    KindInfo {
        name: "command",
        version: 1,
        summary: "the user's own program, with placeholders for its inputs and outputs",
        params: COMMAND_PARAMS,
    },
    KindInfo {
        name: "noop",
        version: 1,
        summary: "does nothing; measures the engine's own dispatch overhead",
        params: NOOP_PARAMS,
    },
];

/// Kinds planned for later releases: named here so a pipeline that uses one gets a precise
/// error instead of "unknown kind".
pub const PLANNED_KINDS: &[&str] = &[
    "curate", "segment", "features", "crops", "train", "evaluate", "report",
];

pub fn all_kinds() -> &'static [KindInfo] {
    KINDS
}

pub fn lookup(name: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.name == name)
}
