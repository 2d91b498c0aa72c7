//! Each step kind's parameters as a typed struct: unknown fields refused, defaults in one place
//! (each struct's `Default`), an enum for every choice and a checked range for every number.
//!
//! The coordinator decodes a step's `with:` into [`StepParams`] while validating the pipeline
//! (each problem reported at its own line), puts the canonical JSON of the decoded value into
//! the cache key and sends it to the worker, which decodes it once with [`StepParams::decode`].
//! Context the coordinator adds (`_step`, `_channels`) travels beside the parameters in
//! [`TaskParams`].

use crate::kinds::StepKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A problem with one parameter (or one item of a list parameter), found before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamIssue {
    /// The parameter's name in `with:`; empty for a problem of the whole step.
    pub field: String,
    /// The item of a list parameter at fault.
    pub index: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl ParamIssue {
    fn new(field: &str, message: impl Into<String>, hint: impl Into<Option<String>>) -> Self {
        ParamIssue {
            field: field.to_string(),
            index: None,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Range checks that read like the pipeline file.
struct Checks(Vec<ParamIssue>);

impl Checks {
    fn range_f(&mut self, field: &str, v: f64, lo: f64, hi: f64, hint: &str) {
        if !(lo..=hi).contains(&v) || !v.is_finite() {
            self.0.push(ParamIssue::new(
                field,
                format!("`{field}: {v}` is out of range: it must be between {lo} and {hi}"),
                Some(hint.to_string()),
            ));
        }
    }
    fn above_f(&mut self, field: &str, v: f64, lo: f64, hint: &str) {
        if v <= lo || !v.is_finite() {
            self.0.push(ParamIssue::new(
                field,
                format!("`{field}: {v}` is out of range: it must be above {lo}"),
                Some(hint.to_string()),
            ));
        }
    }
    fn range_u(&mut self, field: &str, v: u64, lo: u64, hi: u64, hint: &str) {
        if !(lo..=hi).contains(&v) {
            self.0.push(ParamIssue::new(
                field,
                format!("`{field}: {v}` is out of range: it must be from {lo} to {hi}"),
                Some(hint.to_string()),
            ));
        }
    }
    fn not_blank(&mut self, field: &str, v: &str) {
        if v.trim().is_empty() {
            self.0
                .push(ParamIssue::new(field, format!("`{field}` is empty"), None));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// command and noop

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// Shell command, run in a scratch directory; placeholders are expanded.
    pub run: String,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// image steps

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurateParams {
    /// Robust z (median/MAD within plate and channel) beyond which a field is flagged.
    pub z_threshold: f64,
    /// Flag a field with more than this % of its pixels at the maximum.
    pub saturation_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Default for CurateParams {
    fn default() -> Self {
        CurateParams {
            z_threshold: 3.5,
            saturation_percent: 1.0,
            controls: None,
            label: None,
        }
    }
}

/// How cells are grown from nuclei.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellMethod {
    /// Into a cytoplasm or whole-cell channel (needs `cells:`).
    Propagate,
    /// A ring of `ring_width` pixels around each nucleus.
    Ring,
}

/// How nuclei are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SegmentMethod {
    /// Otsu threshold + distance watershed, its size adapted to each image.
    Classic,
    /// The learned nucleus model (shipped weights, `weights:`, or an upstream
    /// `train_segmenter` step's): the default, as it scored higher than classic on DSB 2018
    /// images neither was tuned on (F1 0.842 against 0.705 on the tuning fifth).
    #[default]
    Learned,
}

impl SegmentMethod {
    fn is_classic(&self) -> bool {
        *self == SegmentMethod::Classic
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentParams {
    /// The channel that shows nuclei (required).
    pub nuclei: String,
    /// Left out of the serialised form when classic, so pipelines that say `classic` keep
    /// the cache keys they had before the learned method.
    #[serde(skip_serializing_if = "SegmentMethod::is_classic")]
    pub method: SegmentMethod,
    /// `method: learned`: a weights file listed in `files:` (default: an upstream
    /// `train_segmenter` step's model, else the shipped one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The user's own nucleus masks: a channel of instance label images used instead of
    /// segmenting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masks: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cells: Option<String>,
    /// Default: `propagate` with `cells`, `ring` without.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell_method: Option<CellMethod>,
    /// Default: the typical nucleus radius measured in the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_width: Option<f64>,
    /// Default: measured in each image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diameter: Option<f64>,
    /// Gaussian smoothing before thresholding, in pixels.
    pub sigma: f64,
    pub save_labels: bool,
}

impl Default for SegmentParams {
    fn default() -> Self {
        SegmentParams {
            nuclei: String::new(),
            method: SegmentMethod::default(),
            weights: None,
            files: Vec::new(),
            masks: None,
            cells: None,
            cell_method: None,
            ring_width: None,
            diameter: None,
            sigma: 3.0,
            save_labels: true,
        }
    }
}

impl SegmentParams {
    pub fn cell_method(&self) -> CellMethod {
        match (self.cell_method, &self.cells) {
            (Some(m), _) => m,
            (None, Some(_)) => CellMethod::Propagate,
            (None, None) => CellMethod::Ring,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IlluminationParams {
    /// Default: all channels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Default: 1/20 of the shorter side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<f64>,
    /// The camera's offset in counts, taken off before dividing. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dark: Option<f64>,
}

/// SHA-256 of the nucleus model weights shipped inside plateflow
/// (`learn/models/nuclei-unet.safetensors`; a test in `plateflow-learn` checks it). Tasks that
/// use them carry it in their parameters, so new weights re-run exactly those tasks.
pub const SHIPPED_SEGMENTER_SHA256: &str =
    "05b12ffd321f9c2ee03f4620d1d394e0914f6c7208a6129518f7dc03dd60d02b";

/// `init:` value that names the nucleus model shipped inside plateflow.
pub const SHIPPED_INIT: &str = "shipped";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSegmenterParams {
    /// Channel of the nucleus images (required).
    pub nuclei: String,
    /// Channel of their instance label images (required).
    pub labels: String,
    /// `shipped` or a weights file listed in `files:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Default: 2500 from scratch, 300 with `init`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    pub width: u32,
    pub diameter: f64,
    pub seed: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl Default for TrainSegmenterParams {
    fn default() -> Self {
        TrainSegmenterParams {
            nuclei: String::new(),
            labels: String::new(),
            init: None,
            steps: None,
            width: 16,
            diameter: 16.0,
            seed: 1,
            files: Vec::new(),
        }
    }
}

impl TrainSegmenterParams {
    pub fn steps(&self) -> u32 {
        self.steps
            .unwrap_or(if self.init.is_some() { 300 } else { 2500 })
    }
}

/// What per-well features are normalised against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WellNormalize {
    #[default]
    None,
    /// Robust z against the plate's negative controls.
    Controls,
    /// Robust z against all wells of the plate.
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesParams {
    /// The channel the nuclei were segmented in (required).
    pub nuclei: String,
    /// Default: all channels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    pub texture_scale: u32,
    pub texture_levels: u32,
    /// The value given the top texture grey level (CellProfiler's intensity range). Default:
    /// per channel, the brightest pixel of the task's images rounded up to a camera depth
    /// (255, 1023, 4095, 16383 or 65535), so a 12-bit camera's 16-bit files keep their texture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub texture_max: Option<u32>,
    pub translocation: Vec<String>,
    pub normalize: WellNormalize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controls: Option<String>,
    /// Plate-map column with each well's dose (default: the one column named like `dose` or
    /// `conc`); with one, `dose_response.csv` gets each translocation readout's EC50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dose: Option<String>,
}

impl Default for FeaturesParams {
    fn default() -> Self {
        FeaturesParams {
            nuclei: String::new(),
            channels: None,
            texture_scale: 3,
            texture_levels: 32,
            texture_max: None,
            translocation: Vec::new(),
            normalize: WellNormalize::None,
            controls: None,
            dose: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CropsParams {
    pub size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub whole_image: bool,
}

impl Default for CropsParams {
    fn default() -> Self {
        CropsParams {
            size: 64,
            channels: None,
            label: None,
            whole_image: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// learning steps

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Multinomial logistic regression on a `features` step's per-cell table.
    #[default]
    Logistic,
    /// A convolutional network on a `crops` step's crops.
    Cnn,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Logistic => "logistic",
            ModelKind::Cnn => "cnn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Folds keep each group (plate) whole.
    #[default]
    Group,
    /// Cells at random: one plate on both sides of every fold (leaky).
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainNormalize {
    /// Logistic: each feature as a robust z-score within its plate.
    Plate,
    /// CNN: each crop's channels as z-scores of its own pixels.
    Crop,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopOn {
    /// Weighted F1 on the validation plates, ties broken by loss.
    #[default]
    F1,
    Loss,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    pub model: ModelKind,
    pub label: String,
    pub group_by: String,
    pub folds: u32,
    /// Default: 300 full-batch steps for logistic, 20 epochs for the CNN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    pub seed: u64,
    /// Default: `plate` for logistic, `crop` for the CNN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<TrainNormalize>,
    pub holdout: Vec<String>,
    pub stop_on: StopOn,
    pub scale_jitter: f64,
    pub tta: bool,
    pub refit: bool,
    pub split: Split,
    pub allow_leaky_split: bool,
    pub width: u32,
    pub depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    pub freeze_features: bool,
    pub files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell_line: Option<String>,
    pub stains: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intended_use: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_features: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub include_features: Vec<String>,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            model: ModelKind::Logistic,
            label: "phenotype".into(),
            group_by: "plate".into(),
            folds: 5,
            epochs: None,
            seed: 0,
            normalize: None,
            holdout: Vec::new(),
            stop_on: StopOn::F1,
            scale_jitter: 0.0,
            tta: true,
            refit: true,
            split: Split::Group,
            allow_leaky_split: false,
            width: 16,
            depth: 3,
            init: None,
            freeze_features: false,
            files: Vec::new(),
            cell_line: None,
            stains: Vec::new(),
            intended_use: None,
            exclude_features: Vec::new(),
            include_features: Vec::new(),
        }
    }
}

impl TrainParams {
    pub fn normalize(&self) -> TrainNormalize {
        self.normalize.unwrap_or(match self.model {
            ModelKind::Logistic => TrainNormalize::Plate,
            ModelKind::Cnn => TrainNormalize::Crop,
        })
    }

    /// Whether cells of one group may fall on both sides of a fold (accepted explicitly).
    pub fn leaky(&self) -> bool {
        self.split == Split::Random
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateParams {
    /// A saved model.safetensors listed in `files:`; default: the upstream `train` step's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Default: every upstream plate the model was not trained on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plates: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Plate-map column of doses; default: the one column named like `dose` or `conc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dose: Option<String>,
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// the enum over kinds

/// A step's parameters, decoded and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum StepParams {
    Command(CommandParams),
    Noop(NoopParams),
    Curate(CurateParams),
    Illumination(IlluminationParams),
    Segment(SegmentParams),
    Features(FeaturesParams),
    Crops(CropsParams),
    Train(TrainParams),
    TrainSegmenter(TrainSegmenterParams),
    Evaluate(EvaluateParams),
    Report(ReportParams),
}

/// Decodes `T` from a map, collecting one issue per parameter at fault: the field serde
/// complains about is set aside and decoding tried again, so every bad field is reported.
/// With the bad fields set aside, the rest is decoded too (`partial`), so that their ranges
/// can still be checked and every problem reported at once.
struct Decoded<T> {
    partial: Option<T>,
    issues: Vec<ParamIssue>,
}

fn decode_all<T: DeserializeOwned>(mut map: Map<String, Value>) -> Decoded<T> {
    let mut issues = Vec::new();
    loop {
        let de = Value::Object(map.clone());
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => {
                return Decoded {
                    partial: Some(v),
                    issues,
                }
            }
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let field = path.split(['.', '[']).next().unwrap_or("").to_string();
                let index = path
                    .split_once('[')
                    .and_then(|(_, r)| r.trim_end_matches(']').parse().ok());
                issues.push(describe_serde_error(&field, index, &inner));
                if field.is_empty() || field == "?" || map.remove(&field).is_none() {
                    // A problem of the whole map (a missing or unknown field): nothing to set
                    // aside, so stop here.
                    return Decoded {
                        partial: None,
                        issues,
                    };
                }
            }
        }
    }
}

/// Serde's words turned into the pipeline's: choices get a "did you mean" from the caller.
fn describe_serde_error(field: &str, index: Option<usize>, msg: &str) -> ParamIssue {
    let mut issue = ParamIssue {
        field: if field == "?" {
            String::new()
        } else {
            field.to_string()
        },
        index,
        message: msg.to_string(),
        hint: None,
    };
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let (found, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let choices: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        issue.message = format!("`{field}: {found}` is not one of its choices");
        issue.hint = Some(format!("choose one of: {}", choices.join(", ")));
    } else if let Some(rest) = msg.strip_prefix("invalid value: integer `") {
        let found = rest.split('`').next().unwrap_or("");
        issue.message = format!("`{field}: {found}` is out of range");
        issue.hint = Some(if found.starts_with('-') {
            "it must not be negative".into()
        } else {
            "it is too large".into()
        });
    } else if let Some(rest) = msg.strip_prefix("unknown field `") {
        let found = rest.split('`').next().unwrap_or("");
        issue.field = found.to_string();
        issue.message = format!("unknown parameter `{found}`");
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        let found = rest.split('`').next().unwrap_or("");
        issue.field = found.to_string();
        issue.message = format!("missing parameter `{found}`");
    } else if msg.starts_with("invalid type") {
        issue.message = format!("`{field}`: {msg}");
    }
    issue
}

impl StepParams {
    pub fn kind(&self) -> StepKind {
        match self {
            StepParams::Command(_) => StepKind::Command,
            StepParams::Noop(_) => StepKind::Noop,
            StepParams::Curate(_) => StepKind::Curate,
            StepParams::Illumination(_) => StepKind::Illumination,
            StepParams::Segment(_) => StepKind::Segment,
            StepParams::Features(_) => StepKind::Features,
            StepParams::Crops(_) => StepKind::Crops,
            StepParams::Train(_) => StepKind::Train,
            StepParams::TrainSegmenter(_) => StepKind::TrainSegmenter,
            StepParams::Evaluate(_) => StepKind::Evaluate,
            StepParams::Report(_) => StepKind::Report,
        }
    }

    /// Decodes a kind's parameters and checks their ranges and combinations: every issue
    /// found, or the typed value.
    pub fn decode(kind: StepKind, map: Map<String, Value>) -> Result<StepParams, Vec<ParamIssue>> {
        fn wrap<T: DeserializeOwned>(
            map: Map<String, Value>,
            f: fn(T) -> StepParams,
        ) -> (Option<StepParams>, Vec<ParamIssue>) {
            let d = decode_all::<T>(map);
            (d.partial.map(f), d.issues)
        }
        let (partial, mut issues) = match kind {
            StepKind::Command => wrap(map, StepParams::Command),
            StepKind::Noop => wrap(map, StepParams::Noop),
            StepKind::Curate => wrap(map, StepParams::Curate),
            StepKind::Illumination => wrap(map, StepParams::Illumination),
            StepKind::Segment => wrap(map, StepParams::Segment),
            StepKind::Features => wrap(map, StepParams::Features),
            StepKind::Crops => wrap(map, StepParams::Crops),
            StepKind::Train => wrap(map, StepParams::Train),
            StepKind::TrainSegmenter => wrap(map, StepParams::TrainSegmenter),
            StepKind::Evaluate => wrap(map, StepParams::Evaluate),
            StepKind::Report => wrap(map, StepParams::Report),
        };
        let Some(p) = partial else {
            return Err(issues);
        };
        // Checks of fields already reported (now at their defaults) would only repeat them.
        let reported: Vec<String> = issues.iter().map(|i| i.field.clone()).collect();
        issues.extend(
            p.check()
                .into_iter()
                .filter(|i| !reported.contains(&i.field)),
        );
        if issues.is_empty() {
            Ok(p)
        } else {
            Err(issues)
        }
    }

    /// The parameters as a JSON object with every default filled in (canonical: the cache key
    /// covers what the step will actually use).
    pub fn to_json(&self) -> Map<String, Value> {
        let v = match self {
            StepParams::Command(p) => serde_json::to_value(p),
            StepParams::Noop(p) => serde_json::to_value(p),
            StepParams::Curate(p) => serde_json::to_value(p),
            StepParams::Illumination(p) => serde_json::to_value(p),
            StepParams::Segment(p) => serde_json::to_value(p),
            StepParams::Features(p) => serde_json::to_value(p),
            StepParams::Crops(p) => serde_json::to_value(p),
            StepParams::Train(p) => serde_json::to_value(p),
            StepParams::TrainSegmenter(p) => serde_json::to_value(p),
            StepParams::Evaluate(p) => serde_json::to_value(p),
            StepParams::Report(p) => serde_json::to_value(p),
        };
        match v.expect("parameters serialise") {
            Value::Object(m) => m,
            _ => unreachable!("parameter structs serialise as objects"),
        }
    }

    /// The default value of each parameter that has one, as it would appear in YAML.
    pub fn defaults(kind: StepKind) -> Map<String, Value> {
        let p = match kind {
            StepKind::Command => StepParams::Command(Default::default()),
            StepKind::Noop => StepParams::Noop(Default::default()),
            StepKind::Curate => StepParams::Curate(Default::default()),
            StepKind::Illumination => StepParams::Illumination(Default::default()),
            StepKind::Segment => StepParams::Segment(Default::default()),
            StepKind::Features => StepParams::Features(Default::default()),
            StepKind::Crops => StepParams::Crops(Default::default()),
            StepKind::Train => StepParams::Train(Default::default()),
            StepKind::TrainSegmenter => StepParams::TrainSegmenter(Default::default()),
            StepKind::Evaluate => StepParams::Evaluate(Default::default()),
            StepKind::Report => StepParams::Report(Default::default()),
        };
        let mut m = p.to_json();
        // Required parameters have no default.
        for req in kind.info().params.iter().filter(|s| s.required) {
            m.remove(req.name);
        }
        m
    }

    /// Whether the task reads the nucleus model shipped inside plateflow (an upstream
    /// `train_segmenter` model, when there is one, changes the key through its digest).
    pub fn uses_shipped_segmenter(&self) -> bool {
        match self {
            StepParams::Segment(p) => {
                p.method == SegmentMethod::Learned && p.weights.is_none() && p.masks.is_none()
            }
            StepParams::TrainSegmenter(p) => p.init.as_deref() == Some(SHIPPED_INIT),
            _ => false,
        }
    }

    /// Ranges and combinations the types alone cannot say.
    pub fn check(&self) -> Vec<ParamIssue> {
        let mut c = Checks(Vec::new());
        match self {
            StepParams::Command(p) => c.not_blank("run", &p.run),
            StepParams::Noop(_) | StepParams::Report(_) => {}
            StepParams::Evaluate(p) => {
                if let Some(m) = &p.model {
                    if !p.files.iter().any(|f| f == m) {
                        let json = std::path::Path::new(m).with_file_name("model.json");
                        c.0.push(ParamIssue::new(
                            "model",
                            format!("`model: {m}` is not among the step's `files:`"),
                            Some(format!(
                                "add `files: [{m}, {}]` so the model and its sidecar are hashed and sent with the task",
                                json.display()
                            )),
                        ));
                    }
                }
            }
            StepParams::Curate(p) => {
                c.above_f("z_threshold", p.z_threshold, 0.0, "a robust z such as 3.5");
                c.range_f(
                    "saturation_percent",
                    p.saturation_percent,
                    0.0,
                    100.0,
                    "a percentage of the field's pixels, such as 1",
                );
            }
            StepParams::Illumination(p) => {
                if let Some(sm) = p.smoothing {
                    c.range_f(
                        "smoothing",
                        sm,
                        0.0,
                        10_000.0,
                        "a sigma in pixels such as 50",
                    );
                }
                if let Some(d) = p.dark {
                    c.range_f(
                        "dark",
                        d,
                        0.0,
                        65_535.0,
                        "the counts a pixel reads with no light, such as 100 (see the camera's sheet, or the median of an image taken with the shutter closed)",
                    );
                }
            }
            StepParams::TrainSegmenter(p) => {
                c.not_blank("nuclei", &p.nuclei);
                c.not_blank("labels", &p.labels);
                if let Some(steps) = p.steps {
                    c.range_f(
                        "steps",
                        f64::from(steps),
                        1.0,
                        1e6,
                        "a number of steps such as 300",
                    );
                }
                c.range_f(
                    "width",
                    f64::from(p.width),
                    2.0,
                    128.0,
                    "channels such as 16",
                );
                c.range_f(
                    "diameter",
                    p.diameter,
                    4.0,
                    200.0,
                    "a diameter in pixels such as 16",
                );
                if let Some(init) = p.init.as_deref().filter(|i| *i != SHIPPED_INIT) {
                    if !p.files.iter().any(|f| f == init) {
                        c.0.push(ParamIssue::new(
                            "init",
                            format!("`init: {init}` is neither `shipped` nor among the step's `files:`"),
                            Some(format!("add `files: [{init}]` so the weights are hashed and sent with the task")),
                        ));
                    }
                }
            }
            StepParams::Segment(p) => {
                c.not_blank("nuclei", &p.nuclei);
                if let Some(wts) = &p.weights {
                    if p.method != SegmentMethod::Learned {
                        c.0.push(ParamIssue::new(
                            "weights",
                            "`weights:` are for `method: learned`",
                            Some("add `method: learned` or remove `weights:`".to_string()),
                        ));
                    }
                    if !p.files.iter().any(|f| f == wts) {
                        c.0.push(ParamIssue::new(
                            "weights",
                            format!("`weights: {wts}` is not among the step's `files:`"),
                            Some(format!("add `files: [{wts}]` so the weights are hashed and sent with the task")),
                        ));
                    }
                }
                c.range_f(
                    "sigma",
                    p.sigma,
                    0.0,
                    50.0,
                    "smoothing in pixels, e.g. 2; 0 for none",
                );
                if let Some(d) = p.diameter {
                    c.range_f(
                        "diameter",
                        d,
                        2.0,
                        1000.0,
                        "the typical nucleus diameter in pixels, e.g. 20",
                    );
                }
                if let Some(w) = p.ring_width {
                    c.range_f(
                        "ring_width",
                        w,
                        1.0,
                        500.0,
                        "a ring width in pixels, e.g. 5",
                    );
                }
                if p.cell_method == Some(CellMethod::Propagate) && p.cells.is_none() {
                    c.0.push(ParamIssue::new(
                        "cell_method",
                        "`cell_method: propagate` grows cells into a channel, but `cells:` names none",
                        Some("add `cells: CHANNEL` (a cytoplasm or whole-cell stain) or use `cell_method: ring`".to_string()),
                    ));
                }
            }
            StepParams::Features(p) => {
                c.not_blank("nuclei", &p.nuclei);
                c.range_u(
                    "texture_scale",
                    p.texture_scale.into(),
                    1,
                    64,
                    "a co-occurrence distance in pixels, e.g. 3",
                );
                c.range_u(
                    "texture_levels",
                    p.texture_levels.into(),
                    2,
                    256,
                    "grey levels for texture, e.g. 32",
                );
                if let Some(top) = p.texture_max {
                    c.range_u(
                        "texture_max",
                        top.into(),
                        1,
                        65535,
                        "the camera's largest value, e.g. 4095 for 12 bits",
                    );
                }
            }
            StepParams::Crops(p) => {
                c.range_u(
                    "size",
                    p.size.into(),
                    8,
                    1024,
                    "a crop side in pixels, e.g. 64",
                );
            }
            StepParams::Train(p) => {
                if p.model == ModelKind::Cnn {
                    for (name, list) in [
                        ("exclude_features", &p.exclude_features),
                        ("include_features", &p.include_features),
                    ] {
                        if !list.is_empty() {
                            c.0.push(ParamIssue::new(
                                name,
                                format!("`{name}:` chooses columns of the features table, which `model: cnn` does not read"),
                                Some(format!("remove `{name}:` or use `model: logistic`")),
                            ));
                        }
                    }
                }
                c.range_u(
                    "folds",
                    p.folds.into(),
                    2,
                    100,
                    "at least 2 folds (one group each at most), e.g. 5",
                );
                if let Some(e) = p.epochs {
                    c.range_u(
                        "epochs",
                        e.into(),
                        1,
                        100_000,
                        "e.g. 20 for the CNN, 300 for logistic",
                    );
                }
                c.range_u(
                    "width",
                    p.width.into(),
                    1,
                    1024,
                    "channels of the first conv block, e.g. 16 or 32",
                );
                c.range_u("depth", p.depth.into(), 1, 8, "conv blocks, e.g. 3");
                c.range_f(
                    "scale_jitter",
                    p.scale_jitter,
                    0.0,
                    0.5,
                    "a zoom range such as 0.1, or 0 for none",
                );
                c.not_blank("label", &p.label);
                c.not_blank("group_by", &p.group_by);
                let norm = p.normalize();
                let fits = matches!(
                    (p.model, norm),
                    (_, TrainNormalize::None)
                        | (ModelKind::Logistic, TrainNormalize::Plate)
                        | (ModelKind::Cnn, TrainNormalize::Crop)
                );
                if !fits {
                    let n = serde_json::to_value(norm).unwrap_or_default();
                    c.0.push(ParamIssue::new(
                        "normalize",
                        format!(
                            "`normalize: {}` does not apply to `model: {}`",
                            n.as_str().unwrap_or(""),
                            p.model.name()
                        ),
                        Some(
                            "use `plate` or `none` for logistic, `crop` or `none` for cnn"
                                .to_string(),
                        ),
                    ));
                }
                if p.init.is_some() && p.model != ModelKind::Cnn {
                    c.0.push(ParamIssue::new(
                        "init",
                        "`init:` (transfer learning) applies to `model: cnn` only",
                        Some("remove `init:` or set `model: cnn`".to_string()),
                    ));
                }
                if p.freeze_features && p.init.is_none() {
                    c.0.push(ParamIssue::new(
                        "freeze_features",
                        "`freeze_features: true` keeps the loaded conv blocks, but there is no `init:` to load",
                        Some("add `init: CHECKPOINT.safetensors` (listed in `files:`) or remove `freeze_features`".to_string()),
                    ));
                }
                if let Some(init) = &p.init {
                    if !p.files.iter().any(|f| f == init) {
                        c.0.push(ParamIssue::new(
                            "init",
                            format!("`init: {init}` is not among the step's `files:`"),
                            Some(format!("add `files: [{init}]` so the checkpoint is hashed and sent with the task")),
                        ));
                    }
                }
                if p.split == Split::Random && !p.allow_leaky_split {
                    c.0.push(ParamIssue::new(
                        "split",
                        "`split: random` puts cells of one plate on both sides of every fold (leaky)",
                        Some("add `allow_leaky_split: true` to accept that, or remove `split:`".to_string()),
                    ));
                }
                let mut seen = Vec::new();
                for (i, h) in p.holdout.iter().enumerate() {
                    if seen.contains(&h) {
                        c.0.push(ParamIssue {
                            field: "holdout".into(),
                            index: Some(i),
                            message: format!("`{h}` is listed twice in `holdout`"),
                            hint: Some("list each plate once".into()),
                        });
                    }
                    seen.push(h);
                }
            }
        }
        c.0
    }

    pub fn as_train(&self) -> Option<&TrainParams> {
        match self {
            StepParams::Train(p) => Some(p),
            _ => None,
        }
    }
    pub fn as_command(&self) -> Option<&CommandParams> {
        match self {
            StepParams::Command(p) => Some(p),
            _ => None,
        }
    }

    /// The channel of label images the step reads (`segment`'s `masks:`, `train_segmenter`'s
    /// `labels:`): steps that read every channel leave it out ([`TaskParams::label_channels`]).
    pub fn label_channel(&self) -> Option<&str> {
        match self {
            StepParams::Segment(p) => p.masks.as_deref(),
            StepParams::TrainSegmenter(p) => Some(&p.labels),
            _ => None,
        }
    }

    /// Plate-map columns the step names, with the parameter that names them: checked against
    /// the plate map's header before anything runs. (`crops`' `label` may also be a filename
    /// field; the caller knows the pattern.)
    pub fn plate_map_columns(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        match self {
            StepParams::Curate(p) => {
                out.extend(p.controls.as_deref().map(|c| ("controls", c)));
                out.extend(p.label.as_deref().map(|c| ("label", c)));
            }
            StepParams::Features(p) => {
                out.extend(p.controls.as_deref().map(|c| ("controls", c)));
                out.extend(p.dose.as_deref().map(|c| ("dose", c)));
            }
            StepParams::Crops(p) => out.extend(p.label.as_deref().map(|c| ("label", c))),
            StepParams::Evaluate(p) => {
                out.extend(p.label.as_deref().map(|c| ("label", c)));
                out.extend(p.dose.as_deref().map(|c| ("dose", c)));
            }
            _ => {}
        }
        out
    }
}

/// What crosses the wire for a task: the step's typed parameters and the context the
/// coordinator adds. Encoded as one flat JSON object (the parameters plus `_step` and, for
/// image and model steps, `_channels` and, where the pipeline has label images,
/// `_label_channels`), which is also what the cache key hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskParams {
    pub params: StepParams,
    /// The step's name (models, cards and reports are named after it).
    pub step: String,
    /// Channel field value → name, from `data.channels`.
    pub channels: BTreeMap<String, String>,
    /// Channels that hold label images, not intensities ([`StepParams::label_channel`] of
    /// every step of the pipeline): `curate`, `illumination`, `features` and `crops` leave
    /// them out where they read every channel, since a mask measured as an image is all
    /// saturated pixels and outliers.
    pub label_channels: BTreeSet<String>,
    /// The filename pattern the task's images were read with, for steps that read images
    /// (empty otherwise). Only the key needs it: a pattern corrected from
    /// `{well}_{site}_{channel}` to `{well}_{channel}_{site}` names the same files with the
    /// same digests, and the cached results, made with site and channel swapped, were
    /// served.
    pub image_pattern: String,
}

impl TaskParams {
    /// The canonical JSON object (keys sorted by serde_json's map).
    pub fn encode(&self) -> String {
        let mut m = self.params.to_json();
        let kind = self.params.kind();
        if kind.uses_channels() || kind.describes_model() {
            let ch: Map<String, Value> = self
                .channels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            m.insert("_channels".into(), Value::Object(ch));
            if !self.label_channels.is_empty() {
                let labels = self.label_channels.iter().cloned().map(Value::String);
                m.insert("_label_channels".into(), Value::Array(labels.collect()));
            }
        }
        if kind.describes_model() {
            m.insert("_step".into(), Value::String(self.step.clone()));
        }
        if !self.image_pattern.is_empty() {
            m.insert("_pattern".into(), Value::String(self.image_pattern.clone()));
        }
        if self.params.uses_shipped_segmenter() {
            m.insert(
                "_shipped_model".into(),
                Value::String(SHIPPED_SEGMENTER_SHA256.into()),
            );
        }
        serde_json::to_string(&m).expect("parameters serialise")
    }

    /// Decodes what [`TaskParams::encode`] wrote; `step` is the task's step name.
    pub fn decode(kind: StepKind, step: &str, json: &str) -> Result<TaskParams, String> {
        let mut m: Map<String, Value> = if json.trim().is_empty() {
            Map::new()
        } else {
            serde_json::from_str(json).map_err(|e| format!("parameters are not JSON: {e}"))?
        };
        let channels = match m.remove("_channels") {
            Some(v) => serde_json::from_value(v).map_err(|e| format!("`_channels`: {e}"))?,
            None => BTreeMap::new(),
        };
        let label_channels = match m.remove("_label_channels") {
            Some(v) => serde_json::from_value(v).map_err(|e| format!("`_label_channels`: {e}"))?,
            None => BTreeSet::new(),
        };
        m.remove("_step");
        m.remove("_shipped_model");
        let image_pattern = match m.remove("_pattern") {
            Some(Value::String(p)) => p,
            _ => String::new(),
        };
        let params = StepParams::decode(kind, m).map_err(|issues| {
            issues
                .iter()
                .map(|i| i.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(TaskParams {
            params,
            step: step.to_string(),
            channels,
            label_channels,
            image_pattern,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(kind: StepKind, v: Value) -> Result<StepParams, Vec<ParamIssue>> {
        StepParams::decode(kind, v.as_object().unwrap().clone())
    }

    #[test]
    fn defaults_fill_in_and_round_trip() {
        let p = decode(StepKind::Train, json!({"model": "cnn"})).unwrap();
        let t = p.as_train().unwrap();
        assert_eq!(t.folds, 5);
        assert_eq!(t.normalize(), TrainNormalize::Crop);
        let tp = TaskParams {
            params: p.clone(),
            step: "cnn".into(),
            channels: [("1".to_string(), "DNA".to_string())].into_iter().collect(),
            label_channels: BTreeSet::new(),
            image_pattern: "{plate}/{well}_s{site}_w{channel}.tif".into(),
        };
        let back = TaskParams::decode(StepKind::Train, "cnn", &tp.encode()).unwrap();
        assert_eq!(back, tp);
    }

    #[test]
    fn label_channels_cross_the_wire_only_where_there_are_some() {
        let features = decode(StepKind::Features, json!({"nuclei": "DNA"})).unwrap();
        let mut tp = TaskParams {
            params: features,
            step: "features".into(),
            channels: BTreeMap::new(),
            label_channels: BTreeSet::new(),
            image_pattern: String::new(),
        };
        // Pipelines without label images keep the keys they had.
        assert!(!tp.encode().contains("_label_channels"));
        tp.label_channels.insert("masks".into());
        assert!(tp.encode().contains(r#""_label_channels":["masks"]"#));
        let back = TaskParams::decode(StepKind::Features, "features", &tp.encode()).unwrap();
        assert_eq!(back, tp);
        let masks = decode(
            StepKind::Segment,
            json!({"nuclei": "DNA", "masks": "masks"}),
        )
        .unwrap();
        assert_eq!(masks.label_channel(), Some("masks"));
        let plain = decode(StepKind::Segment, json!({"nuclei": "DNA"})).unwrap();
        assert_eq!(plain.label_channel(), None);
    }

    #[test]
    fn every_bad_field_is_reported_once() {
        let e = decode(
            StepKind::Train,
            json!({"model": "cnnn", "split": "randm", "stop_on": "f2", "epochs": -3}),
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields.len(), 4, "{e:?}");
        for f in ["model", "split", "stop_on", "epochs"] {
            assert!(fields.contains(&f), "{f} in {e:?}");
        }
        let model = e.iter().find(|i| i.field == "model").unwrap();
        assert!(
            model.hint.as_deref().unwrap().contains("logistic, cnn"),
            "{model:?}"
        );
    }

    #[test]
    fn ranges_and_combinations() {
        let bad = [
            (StepKind::Train, json!({"width": 0})),
            (StepKind::Train, json!({"folds": 0})),
            (
                StepKind::Train,
                json!({"model": "logistic", "normalize": "crop"}),
            ),
            (StepKind::Train, json!({"freeze_features": true})),
            (StepKind::Train, json!({"split": "random"})),
            (
                StepKind::Features,
                json!({"nuclei": "DNA", "texture_levels": 0}),
            ),
            (StepKind::Segment, json!({"nuclei": "DNA", "sigma": -1.0})),
            (
                StepKind::Segment,
                json!({"nuclei": "DNA", "cell_method": "propagate"}),
            ),
            (StepKind::Crops, json!({"size": 0})),
            (StepKind::Curate, json!({"saturation_percent": 101.0})),
        ];
        for (kind, v) in bad {
            let e = decode(kind, v.clone());
            assert!(e.is_err(), "{kind} {v} accepted");
        }
        let p = decode(
            StepKind::Segment,
            json!({"nuclei": "DNA", "cell_method": "rng"}),
        )
        .unwrap_err();
        assert!(p[0].message.contains("rng"), "{p:?}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = decode(StepKind::Crops, json!({"sise": 32})).unwrap_err();
        assert_eq!(e[0].field, "sise");
    }

    #[test]
    fn the_documented_parameters_are_the_typed_ones() {
        // Every documented parameter decodes (not an unknown field), and every field of the
        // typed value is documented: the table and the structs cannot drift apart.
        for info in crate::kinds::all_kinds() {
            for spec in info.params {
                let mut m = Map::new();
                m.insert(spec.name.to_string(), Value::Null);
                let e = StepParams::decode(info.kind, m).err().unwrap_or_default();
                assert!(
                    !e.iter().any(|i| i.message.starts_with("unknown parameter")),
                    "{}.{} is not a field: {e:?}",
                    info.name,
                    spec.name
                );
            }
            for field in StepParams::defaults(info.kind).keys() {
                assert!(
                    info.param(field).is_some(),
                    "{}.{field} undocumented",
                    info.name
                );
            }
        }
    }
}
