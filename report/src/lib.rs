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
    pub models: Vec<ModelSection>,
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
    /// Already-made SVG, e.g. plate heat maps from `plateflow_imaging::heatmap`.
    pub heatmaps: Vec<SvgFigure>,
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
    /// The linear baseline's feature importances; the page shows the 20 largest by magnitude.
    pub coefficients: Vec<Coefficient>,
    /// Saliency overlays, Grad-CAM, montages.
    pub figures: Vec<PngFigure>,
}

/// A headline number with its 95 % confidence interval, if any.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub ci95: Option<(f64, f64)>,
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
