//! A pipeline run's report as one self-contained HTML page: quality control, then one section
//! per model evaluation (metrics with confidence intervals, confusion matrix, per-plate scores,
//! learning curves, calibration, coefficients, image figures), then caveats. Everything is
//! inline — charts are SVG drawn here, image figures are PNG `data:` URIs — so the file opens
//! offline, can be mailed, and archives with the run.
//!
//! The types are plain data (serde, so a step can write them as JSON and another render them);
//! [`render`] turns them into the page. Every string in them is escaped, except
//! [`SvgFigure::svg`], which is markup and is embedded only if it is plain SVG (no scripts,
//! event handlers or links to the network).

mod charts;
mod glance;
mod page;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use page::render;

/// Everything one page shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub title: String,
    /// One line under the title: pipeline file, date, plateflow version.
    pub subtitle: String,
    pub qc: Option<QcSummary>,
    pub segmentation: Option<SegmentationSection>,
    /// Per-feature Z′ of the features step, one table per task (plate).
    pub zprime: Vec<ZprimeTable>,
    pub models: Vec<ModelSection>,
    /// Per-well readouts, dose–response fits and readout Z′ (from `evaluate` or `features`).
    pub readouts: Vec<Readout>,
    /// Wells whose label looks wrong (from `train`'s `label_qc.csv`).
    pub label_qc: Vec<LabelQcWell>,
    /// Caveats and remarks, shown as a list at the end.
    pub notes: Vec<String>,
}

/// The quality-control step's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QcSummary {
    /// Image sets checked.
    pub images: usize,
    pub excluded: Vec<Exclusion>,
    /// Already-made SVG, e.g. plate heat maps from `plateflow_imaging::heatmap`. Maps with a
    /// `row` (the measure) and a `column` (the plate) are laid out as a grid of thumbnails,
    /// each of which enlarges when clicked.
    pub heatmaps: Vec<SvgFigure>,
    /// Image sets excluded per plate (the heat maps' columns), to choose which plates' maps
    /// a screen of many plates shows.
    pub excluded_per_plate: std::collections::BTreeMap<String, usize>,
}

/// One task's `zprime.csv`: per feature, the Z′ between positive and negative control wells.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ZprimeTable {
    /// The task, e.g. `features[plate=P1]`.
    pub task: String,
    /// Column names, as in the file (the feature first, `z_prime` among them).
    pub columns: Vec<String>,
    /// Rows in file order (best first); degenerate ones (empty `z_prime`) are shown last.
    pub rows: Vec<Vec<String>>,
}

/// What one step measured per well: the classifier's predicted fractions with their
/// intervals, dose–response fits and the readout's Z′.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Readout {
    /// The step or task, e.g. `holdout`.
    pub name: String,
    /// The classes, in the model's order: fractions of every class but the first are mapped.
    pub classes: Vec<String>,
    pub wells: Vec<WellReadout>,
    /// `treatment_readout.csv`: per treatment and dose, the mean over wells.
    pub treatments: Vec<TreatmentReadout>,
    pub dose_response: Vec<DoseFit>,
    pub zprime: Vec<ReadoutZprime>,
}

/// One row of `treatment_readout.csv`: the wells of one treatment at one dose.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TreatmentReadout {
    pub treatment: String,
    /// As the plate map writes it (empty without a dose).
    pub dose: String,
    pub wells: usize,
    pub cells: usize,
    /// Per class: the mean fraction over the wells, with a 95 % interval over wells.
    pub fractions: Vec<Fraction>,
    pub note: String,
}

/// One well of `well_readout.csv`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WellReadout {
    pub plate: String,
    pub well: String,
    pub label: String,
    pub dose: Option<f64>,
    pub control: String,
    pub cells: usize,
    /// Per class (in [`Readout::classes`] order): the fraction of cells predicted as it, with
    /// its 95 % bootstrap interval over cells.
    pub fractions: Vec<Fraction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Fraction {
    pub value: f64,
    pub ci95: Option<(f64, f64)>,
}

/// One row of `dose_response.csv`: a four-parameter logistic fit, and the wells behind it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DoseFit {
    /// What was fitted: a class fraction or a feature name.
    pub readout: String,
    pub plate: String,
    pub ec50: f64,
    pub ec50_ci95: Option<(f64, f64)>,
    pub hill: f64,
    pub bottom: f64,
    pub top: f64,
    pub wells: usize,
    pub doses: usize,
    /// `fitted`, or why not.
    pub status: String,
    /// The wells' values against their dose, with intervals where known.
    pub points: Vec<DosePoint>,
}

impl DoseFit {
    pub fn fitted(&self) -> bool {
        self.status == "fitted"
    }

    /// The fitted curve at dose `x` (> 0).
    pub fn at(&self, x: f64) -> f64 {
        self.bottom + (self.top - self.bottom) / (1.0 + (self.ec50 / x).powf(self.hill))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DosePoint {
    pub well: String,
    pub dose: f64,
    pub value: f64,
    pub ci95: Option<(f64, f64)>,
}

/// One row of `readout_zprime.csv`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReadoutZprime {
    pub readout: String,
    /// Z′ is per plate (empty in files written before it was).
    pub plate: String,
    pub z_prime: f64,
    pub positive_wells: usize,
    pub negative_wells: usize,
    pub mean_positive: f64,
    pub mean_negative: f64,
    /// Why there is no Z′, when there is none.
    pub note: String,
}

/// One row of `label_qc.csv`: a well whose cells the model mostly calls another class.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelQcWell {
    /// The step that wrote it.
    pub source: String,
    pub plate: String,
    pub well: String,
    pub label: String,
    pub cells: usize,
    pub agreeing: usize,
    pub expected_agreeing: f64,
    pub predicted_mostly: String,
    pub p_value: f64,
    pub flagged: bool,
}

/// What segmentation found, per plate, and pictures to judge it by.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SegmentationSection {
    pub plates: Vec<PlateSegmentation>,
    /// Outlines over fields, QC's worst among them.
    pub outlines: Vec<PngFigure>,
    /// Illumination fields, per plate and channel.
    pub illumination: Vec<PngFigure>,
}

/// One segment task's summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PlateSegmentation {
    /// The task, e.g. `segment[plate=P1]`.
    pub task: String,
    /// `classic`, or `learned` with the model's source.
    pub method: String,
    pub fields: usize,
    /// Nuclei per field: 25th percentile, median, 75th.
    pub objects_per_field: [f64; 3],
    /// Nucleus area in pixels: 25th percentile, median, 75th.
    pub area: [f64; 3],
    pub touching_border_fraction: f64,
}

/// An image set left out of the analysis, and why.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Exclusion {
    pub image_set: String,
    pub reason: String,
}

/// SVG markup made elsewhere, shown with a title.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SvgFigure {
    pub title: String,
    pub svg: String,
    /// In a grid of maps: the row (e.g. the measure) and the column (e.g. the plate).
    pub row: String,
    pub column: String,
}

/// One evaluation of one model: cross-validation, or a held-out test.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSection {
    /// The step's name, e.g. `model` or `holdout`.
    pub name: String,
    /// How it was evaluated: "leave-plate-out cross-validation", "evaluation on held-out
    /// plates P4, P5".
    pub what: String,
    /// `cnn` or `logistic`.
    pub model: String,
    /// Scored on plates no fitting saw (an `evaluate` step): its scores lead the summary.
    pub held_out: bool,
    /// The weighted F1 of learning nothing: the shuffled-label control (train) or chance
    /// (evaluate). A model whose interval reaches it gets a warning in the summary.
    pub control_f1: Option<f64>,
    /// Cells were split at random, so the same plates and wells sit on both sides of the
    /// split: the page shows a warning banner.
    pub leaky: bool,
    pub classes: Vec<String>,
    /// Headline numbers. A metric whose name contains "weighted F1" is drawn as the overall
    /// line on the per-group chart.
    pub metrics: Vec<Metric>,
    /// Cell counts: rows are the true class, columns the predicted one, in `classes` order.
    pub confusion: Vec<Vec<u64>>,
    /// Per plate (or per fold).
    pub per_group: Vec<GroupScore>,
    /// What a reader should know about the data behind the scores, in plain words (e.g. a
    /// class that one plate mostly holds); shown under the per-plate scores.
    pub data_notes: Vec<String>,
    /// Learning curves, one per fold.
    pub curves: Vec<Curve>,
    /// Calibration, e.g. "before temperature scaling" and "after (T = 1.37)".
    pub reliability: Vec<Reliability>,
    /// The linear baseline's feature importances, every feature; the page shows the 20
    /// largest by magnitude and says how many there are.
    pub coefficients: Vec<Coefficient>,
    /// Top features per class by mean |SHAP| (`shap_summary.csv`).
    pub shap: Vec<ShapFeature>,
    /// Saliency overlays, Grad-CAM, montages.
    pub figures: Vec<PngFigure>,
    /// Figures made of single-cell tiles, each with its own caption.
    pub tiles: Vec<TileFigure>,
}

/// One row of `shap_summary.csv`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ShapFeature {
    pub class: String,
    pub feature: String,
    pub mean_abs_shap: f64,
    pub rank: usize,
}

/// Rows of single-cell tiles (a montage, or a saliency figure with one cell per row).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TileFigure {
    pub title: String,
    pub caption: String,
    /// Names over the columns (e.g. "crop", "Grad-CAM"); may be empty.
    pub columns: Vec<String>,
    pub rows: Vec<TileRow>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TileRow {
    /// Shown left of (or above) the row, e.g. "most confident" or a cell's plate and well.
    pub label: String,
    pub tiles: Vec<Tile>,
}

/// One image tile with a caption under it (plate/well, predicted class and confidence) and,
/// where the linear model explained the same cell, its top contributing features.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Tile {
    #[serde(with = "base64_bytes")]
    pub png: Vec<u8>,
    /// Caption lines.
    pub caption: Vec<String>,
    /// (feature, SHAP value) pairs, largest first.
    pub features: Vec<(String, f64)>,
}

/// A headline number with its 95 % confidence interval, if any.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub ci95: Option<(f64, f64)>,
    /// Why there is no interval (e.g. "fewer than 3 plates"), shown in place of one.
    pub no_interval: String,
    pub note: String,
}

/// Scores on one plate (or fold).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupScore {
    pub group: String,
    pub cells: usize,
    pub weighted_f1: f64,
    pub accuracy: f64,
    /// 95 % confidence interval of the weighted F1.
    pub ci95: Option<(f64, f64)>,
}

/// One training run's per-epoch curves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Curve {
    pub label: String,
    pub train_loss: Vec<f64>,
    pub val_loss: Vec<f64>,
    pub val_f1: Vec<f64>,
    /// 0-based index into the vectors of the epoch whose weights were kept (as
    /// `plateflow_learn::train::History::best_epoch`); the chart numbers epochs from 1.
    pub best_epoch: Option<usize>,
}

/// A reliability diagram's data: one series, e.g. before or after temperature scaling.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Reliability {
    pub label: String,
    /// Expected calibration error.
    pub ece: f64,
    /// Non-empty bins, as `plateflow_learn::metrics::reliability_bins` returns them.
    pub bins: Vec<ReliabilityBin>,
}

/// Predictions with confidence in (lo, hi]: their mean confidence, their accuracy, how many.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub confidence: f64,
    pub accuracy: f64,
    pub count: usize,
}

/// One feature's weight in the linear baseline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Coefficient {
    pub feature: String,
    /// Feature family (intensity, shape, texture, …): the bar's colour.
    pub family: String,
    pub channel: String,
    pub importance: f64,
}

/// A PNG image with a title and a caption. In JSON the bytes are a base64 string.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PngFigure {
    pub title: String,
    pub caption: String,
    #[serde(with = "base64_bytes")]
    pub png: Vec<u8>,
}

/// Text for HTML and XML content and quoted attributes.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Bytes as a standard base64 string in serde formats.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
