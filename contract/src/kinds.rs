//! The registry of step kinds: each kind's name, implementation version and documented
//! parameters. The parameters' types, defaults, choices and ranges are the typed structs of
//! [`crate::params`]; the table here gives each its YAML type (how a scalar is read: `0027`
//! stays a string where a string is meant) and its help text.
//!
//! The version goes into every cache key, so bumping a kind's `version` re-runs exactly the
//! tasks of that kind.

use serde::{Deserialize, Serialize};

/// The step kinds of this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Command,
    Noop,
    Curate,
    Illumination,
    Segment,
    Features,
    Crops,
    Train,
    #[serde(rename = "train_segmenter")]
    TrainSegmenter,
    Evaluate,
    Report,
}

impl StepKind {
    pub fn info(self) -> &'static KindInfo {
        KINDS
            .iter()
            .find(|k| k.kind == self)
            .expect("every kind is registered")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_name(name: &str) -> Option<StepKind> {
        KINDS.iter().find(|k| k.name == name).map(|k| k.kind)
    }

    /// Kinds that read images through the pipeline's channel names.
    pub fn uses_channels(self) -> bool {
        matches!(
            self,
            StepKind::Curate
                | StepKind::Illumination
                | StepKind::Segment
                | StepKind::Features
                | StepKind::Crops
                | StepKind::TrainSegmenter
        )
    }

    /// Kinds that write model cards or reports, which name their step and the channels.
    pub fn describes_model(self) -> bool {
        matches!(
            self,
            StepKind::Train | StepKind::Evaluate | StepKind::Report | StepKind::TrainSegmenter
        )
    }

    /// Kinds whose GPUs are for Candle: only a worker built with `cuda` can use them (the
    /// others would hold the GPU and run on the CPU).
    pub fn gpus_need_cuda_build(self) -> bool {
        matches!(
            self,
            StepKind::Train | StepKind::Evaluate | StepKind::TrainSegmenter | StepKind::Segment
        )
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    pub kind: StepKind,
    pub name: &'static str,
    /// Bump when the implementation changes what it produces.
    pub version: u32,
    pub summary: &'static str,
    pub params: &'static [ParamSpec],
    /// The files a built-in kind may write (`*` stands for any characters but `/`); a
    /// `command` declares its own in `outputs:`. The worker refuses anything else, so this
    /// list and the code cannot drift apart.
    pub outputs: &'static [&'static str],
}

impl KindInfo {
    /// Whether a built-in kind declares `name` (a path under its output directory).
    pub fn declares_output(&self, name: &str) -> bool {
        self.outputs.iter().any(|p| glob_match(p, name))
    }

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

const fn p(name: &'static str, ty: ParamType, required: bool, help: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        required,
        help,
    }
}

use ParamType::{Bool, Float, Int, String as Str, StringList};

const CURATE_PARAMS: &[ParamSpec] = &[
    p("z_threshold", Float, false, "robust z-score (median/MAD within the plate) beyond which an image is flagged; default 3.5"),
    p("saturation_percent", Float, false, "flag an image with more than this % of pixels at the maximum; default 1"),
    p("controls", Str, false, "plate-map column marking positive/negative controls (default: a column named like `control`)"),
    p("label", Str, false, "plate-map column with the class label, for label QC (default: `label`, `phenotype` or `class`)"),
];

const ILLUMINATION_PARAMS: &[ParamSpec] = &[
    p(
        "channels",
        StringList,
        false,
        "channels to correct (default: all)",
    ),
    p(
        "smoothing",
        Float,
        false,
        "Gaussian sigma of the field in pixels (default: 1/20 of the image's shorter side)",
    ),
    p(
        "dark",
        Float,
        false,
        "the camera's offset in counts, what a pixel reads with no light (many sCMOS cameras: 100): taken off before the field is estimated and before each image is divided, so it is not boosted in dim corners (default: none)",
    ),
];

const SEGMENT_PARAMS: &[ParamSpec] = &[
    p(
        "nuclei",
        Str,
        true,
        "channel that shows nuclei (DNA), as named in `data.channels`",
    ),
    p(
        "method",
        Str,
        false,
        "`learned` (default: the nucleus U-Net shipped with plateflow, an upstream `train_segmenter` step's, or `weights:`) or `classic` (Otsu + distance watershed)",
    ),
    p(
        "weights",
        Str,
        false,
        "`method: learned`: nucleus model weights (.safetensors from a `train_segmenter` step) listed in `files:`; default: an upstream `train_segmenter` step's, else the shipped model",
    ),
    p(
        "files",
        StringList,
        false,
        "files beside the pipeline that the step reads (e.g. the `weights`)",
    ),
    p(
        "masks",
        Str,
        false,
        "your own nucleus masks instead of segmenting (`method` is then unused): the channel (in `data.channels`) of instance label images as Cellpose, StarDist, ilastik, napari or Fiji write them (8/16/32-bit or whole-number float TIFF, grey or palette PNG; one page, background 0; numbered 1..n in order); a binary mask is split into connected objects; steps reading every channel leave it out",
    ),
    p(
        "cells",
        Str,
        false,
        "channel to grow cells into (cytoplasm or whole-cell stain); without it, cells are a ring",
    ),
    p(
        "cell_method",
        Str,
        false,
        "`propagate` (default with `cells`) or `ring`",
    ),
    p(
        "ring_width",
        Float,
        false,
        "ring width in pixels (default: the typical nucleus radius)",
    ),
    p(
        "diameter",
        Float,
        false,
        "expected nucleus diameter in pixels (default: measured in each image); the learned method rescales images so nuclei have its training size",
    ),
    p(
        "sigma",
        Float,
        false,
        "smoothing before thresholding, in pixels (default 3)",
    ),
    p(
        "save_labels",
        Bool,
        false,
        "write 16-bit label TIFFs (default true)",
    ),
];

const FEATURES_PARAMS: &[ParamSpec] = &[
    p("nuclei", Str, true, "channel the nuclei were segmented in (must match the `segment` step)"),
    p("channels", StringList, false, "channels to measure intensity and texture in (default: all)"),
    p("texture_scale", Int, false, "Haralick co-occurrence distance in pixels (default 3)"),
    p("texture_levels", Int, false, "grey levels for texture (default 32)"),
    p("texture_max", Int, false, "the value given the top texture grey level, e.g. 4095 for a 12-bit camera (default: per channel, the task's brightest pixel rounded up to 8, 10, 12, 14 or 16 bits)"),
    p("translocation", StringList, false, "channels whose nuclear/cytoplasmic ratio is measured per cell"),
    p("normalize", Str, false, "`none` (default), `controls` (robust z against the plate's negative controls) or `all` (against all wells)"),
    p("controls", Str, false, "plate-map column marking controls (default: a column named like `control`)"),
    p("dose", Str, false, "plate-map column with each well's dose (default: the one column named like `dose` or `conc`); with one, each translocation readout's EC50 goes to dose_response.csv"),
];

const CROPS_PARAMS: &[ParamSpec] = &[
    p(
        "size",
        Int,
        false,
        "crop side in pixels, centred on each nucleus (default 64)",
    ),
    p(
        "channels",
        StringList,
        false,
        "channels to stack, in order (default: all)",
    ),
    p(
        "label",
        Str,
        false,
        "plate-map column or filename field giving each crop its label (default: `label`, `phenotype` or `class`)",
    ),
    p(
        "whole_image",
        Bool,
        false,
        "each image is already one cell (a crop data set): centre it, no segmentation needed; also writes `cells.csv` with crop features for the logistic baseline",
    ),
];

const TRAIN_PARAMS: &[ParamSpec] = &[
    p("model", Str, false, "`logistic` (default: on the per-cell table of a `features` step) or `cnn` (on the crops of a `crops` step)"),
    p("label", Str, false, "plate-map column with the class of each cell (default `phenotype`); the cnn reads the crops' label"),
    p("group_by", Str, false, "metadata field whose values are kept whole in folds (default `plate`)"),
    p("folds", Int, false, "cross-validation folds, at most one per group (default 5)"),
    p("epochs", Int, false, "training epochs (default: 300 full-batch steps for logistic, 20 for cnn)"),
    p("seed", Int, false, "seed for initialisation, shuffling, augmentation and dropout (default 0)"),
    p("normalize", Str, false, "logistic: `plate` (default: each feature as a robust z-score within its plate, labels unused) or `none`; cnn: `crop` (default: each crop's channels as z-scores of its own pixels) or `none`"),
    p("holdout", StringList, false, "plates (values of `group_by`) left out of all fitting, for an `evaluate` step"),
    p("stop_on", Str, false, "cnn: what early stopping follows on the validation plates: `f1` (default: weighted F1, ties by loss) or `loss`"),
    p("scale_jitter", Float, false, "cnn: zoom augmentation by U(1 - s, 1 + s), e.g. 0.1 (default 0: off; on MitoCheck it lowered cross-plate F1, cell size being part of the phenotype)"),
    p("tta", Bool, false, "cnn: predict by averaging the 8 flips/90° rotations of each crop (default true; `false` for one view, e.g. when orientation is part of the phenotype)"),
    p("refit", Bool, false, "cnn: after early stopping on validation plates carved from the training plates, train again on all of them for the chosen number of epochs (default true)"),
    p("split", Str, false, "`group` (default: folds keep each plate whole) or `random` (cells; leaky, needs `allow_leaky_split: true`)"),
    p("allow_leaky_split", Bool, false, "accept `split: random`; the report and model card mark the results as leaky"),
    p("width", Int, false, "cnn: channels of the first conv block, doubled in each next block (default 16)"),
    p("depth", Int, false, "cnn: conv blocks (default 3)"),
    p("init", Str, false, "cnn transfer learning: a plateflow model.safetensors listed in `files:` to start from"),
    p("freeze_features", Bool, false, "with `init`: train only the head, keep the conv blocks as loaded"),
    p("files", StringList, false, "files beside the pipeline that the step reads (e.g. the `init` checkpoint)"),
    p("cell_line", Str, false, "for the model card: the cell line imaged"),
    p("stains", StringList, false, "for the model card: stains or markers, one per channel"),
    p("intended_use", Str, false, "for the model card: what the model is for"),
    p("exclude_features", StringList, false, "logistic: feature columns to leave out, as patterns (`*` any text), e.g. [\"*_Texture_*\"]; position, object numbers and image metadata are left out by default"),
    p("include_features", StringList, false, "logistic: patterns naming features to keep although left out by default or by `exclude_features`, e.g. [\"Nuclei_Location_*\"]"),
];

const TRAIN_SEGMENTER_PARAMS: &[ParamSpec] = &[
    p("nuclei", Str, true, "channel of the nucleus images, as named in `data.channels`"),
    p("labels", Str, true, "channel of their instance label images (0 background, 1..n nuclei; 8- or 16-bit TIFF/PNG as napari, ilastik, Cellpose, StarDist or Fiji write them)"),
    p("init", Str, false, "fine-tune from `shipped` (the model inside plateflow) or a .safetensors listed in `files:`; default: train from scratch"),
    p("steps", Int, false, "optimiser steps of 8 crops (default 2500 from scratch, 300 with `init`)"),
    p("width", Int, false, "U-Net channels of the first level, doubled per level (default 16; ignored with `init`)"),
    p("diameter", Float, false, "nucleus diameter in pixels every image is scaled to for training (default 16; ignored with `init`)"),
    p("seed", Int, false, "seed for initialisation, crops and augmentation (default 1)"),
    p("files", StringList, false, "files beside the pipeline that the step reads (the `init` weights)"),
];

const EVALUATE_PARAMS: &[ParamSpec] = &[
    p("model", Str, false, "a saved model.safetensors (with model.json beside it) listed in `files:`; default: the model of the `train` step in `after:`"),
    p("plates", StringList, false, "plates to evaluate (default: every upstream plate the model was not trained on)"),
    p("label", Str, false, "plate-map column with the true class (default: the model's)"),
    p("dose", Str, false, "plate-map column with each well's dose, for the dose–response fit (default: the one column whose name holds `dose` or `conc`, if any)"),
    p("files", StringList, false, "files beside the pipeline that the step reads (a saved model and its model.json)"),
];

const REPORT_PARAMS: &[ParamSpec] = &[p(
    "title",
    Str,
    false,
    "the page's title (default: plateflow run report)",
)];

static KINDS: &[KindInfo] = &[
    KindInfo {
        kind: StepKind::Command,
        name: "command",
        version: 1,
        summary: "the user's own program, with placeholders for its inputs and outputs",
        params: COMMAND_PARAMS,
        outputs: &[],
    },
    KindInfo {
        kind: StepKind::Noop,
        name: "noop",
        version: 1,
        summary: "does nothing; measures the engine's own dispatch overhead",
        params: NOOP_PARAMS,
        outputs: &[],
    },
    KindInfo {
        kind: StepKind::Curate,
        name: "curate",
        version: 6,
        summary: "image QC: blur, saturation, intensity, rough counts; robust-z flags per plate, exclusion list, heat maps, label QC, Z'",
        params: CURATE_PARAMS,
        outputs: &["qc.csv", "exclusions.csv", "heatmaps/*.svg", "label_qc.csv", "zprime.csv"],
    },
    KindInfo {
        kind: StepKind::Illumination,
        name: "illumination",
        version: 5,
        summary: "illumination correction per plate and channel: the per-pixel median of the plate's images (less the camera's offset), smoothed, as a divisor; `segment` and `features` downstream divide by it",
        params: ILLUMINATION_PARAMS,
        outputs: &["illumination/*.tif", "illumination/*.png", "illumination/*.json"],
    },
    KindInfo {
        kind: StepKind::Segment,
        name: "segment",
        version: 11,
        summary: "nuclei (classic Otsu + distance watershed, or the learned U-Net; size adapted to the image) and cells; 16-bit label TIFFs and an object table",
        params: SEGMENT_PARAMS,
        outputs: &["objects.csv", "labels/*_nuclei.tif", "labels/*_cells.tif", "outlines/*.png", "segmentation.json"],
    },
    KindInfo {
        kind: StepKind::Features,
        name: "features",
        version: 7,
        summary: "per-object shape, intensity and texture in CellProfiler column names; per-well medians, optional control normalisation, Z', EC50 of translocation readouts where the plate map has doses",
        params: FEATURES_PARAMS,
        outputs: &["cells.csv", "wells.csv", "wells_normalized.csv", "zprime.csv", "dose_response.csv", "texture.json"],
    },
    KindInfo {
        kind: StepKind::Crops,
        name: "crops",
        version: 5,
        summary: "fixed-size single-cell crops of all channels, one safetensors file per task, with an index table",
        params: CROPS_PARAMS,
        outputs: &["crops.safetensors", "crops.csv", "cells.csv"],
    },
    KindInfo {
        kind: StepKind::Train,
        name: "train",
        version: 16,
        summary: "leave-plate-out cross-validation (leakage-guarded) and a final model: logistic on features or a CNN on crops; metrics with plate-bootstrap intervals, shuffled-label control, predictions, safetensors + sidecar",
        params: TRAIN_PARAMS,
        outputs: &["cv.csv", "curves.csv", "metrics.json", "per_group.csv", "reliability.csv", "predictions.csv", "coefficients.csv", "figures/*.png", "interpretation.json", "model.safetensors", "model.json", "model_card.md", "model_card.json", "label_qc.csv", "shap_summary.csv", "explanations.csv", "features_used.csv"],
    },
    KindInfo {
        kind: StepKind::Evaluate,
        name: "evaluate",
        version: 6,
        summary: "a saved model on plates it never saw (holdout or new plates): metrics with plate-bootstrap intervals, per-plate scores, calibration, predictions; refuses training plates",
        params: EVALUATE_PARAMS,
        outputs: &["metrics.json", "per_group.csv", "reliability.csv", "predictions.csv", "well_readout.csv", "treatment_readout.csv", "dose_response.csv", "readout_zprime.csv", "shap_summary.csv", "explanations.csv", "model_card.md"],
    },
    KindInfo {
        kind: StepKind::TrainSegmenter,
        name: "train_segmenter",
        version: 12,
        summary: "trains (or fine-tunes) the learned nucleus segmenter on images with instance labels; held-out fifth scored at IoU 0.5/0.75/0.9; weights and a model card",
        params: TRAIN_SEGMENTER_PARAMS,
        outputs: &["segmenter.safetensors", "segmenter_card.md", "segmenter_history.csv", "segmenter_scores.json"],
    },
    KindInfo {
        kind: StepKind::Report,
        name: "report",
        version: 2,
        summary: "one self-contained HTML page from the upstream curate, train and evaluate steps: QC, metrics with intervals, confusion, per-plate scores, learning curves, reliability, coefficients, saliency, montages",
        params: REPORT_PARAMS,
        outputs: &["report.html"],
    },
];

pub fn all_kinds() -> &'static [KindInfo] {
    KINDS
}

pub fn lookup(name: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.name == name)
}

/// `*` matches any run of characters other than `/`; everything else matches itself.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            // Try every split of `rest` that keeps the starred part free of '/'.
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .take_while(|&i| !rest[..i].contains('/'))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_outputs_match_by_pattern() {
        let seg = StepKind::Segment.info();
        assert!(seg.declares_output("labels/P1_A01_1_nuclei.tif"));
        assert!(seg.declares_output("objects.csv"));
        assert!(!seg.declares_output("labels/x/y_nuclei.tif"));
        assert!(!seg.declares_output("model.json"));
        assert!(StepKind::Curate
            .info()
            .declares_output("heatmaps/P1_FocusScore_DNA.svg"));
        assert!(StepKind::Command.info().outputs.is_empty());
    }
}
