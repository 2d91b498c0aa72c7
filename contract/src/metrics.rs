//! What `train` and `evaluate` write as `metrics.json` and `model.json`, as types: the model
//! card, the report, `plateflow runs` and `plateflow compare` read the same structs back, so
//! a renamed field is a compile error rather than a silently empty table.
//!
//! Scores that cannot be computed (one plate: no interval) are NaN; JSON has no NaN, so they
//! are written as `null` and read back as NaN.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

fn nan_from_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan_pair_from_nulls<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 2], D::Error> {
    let v = <[Option<f64>; 2]>::deserialize(d)?;
    Ok([v[0].unwrap_or(f64::NAN), v[1].unwrap_or(f64::NAN)])
}

fn nans_from_nulls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<Option<f64>>::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

/// Why an [`Estimate`] has no interval (the bootstrap over plates needs at least three).
pub const NO_INTERVAL: &str = "fewer than 3 plates";

/// A score and its 95 % interval from a bootstrap over plates (or the `group_by` groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    #[serde(deserialize_with = "nan_from_null")]
    pub value: f64,
    #[serde(deserialize_with = "nan_pair_from_nulls")]
    pub ci95_by_plate: [f64; 2],
}

impl Estimate {
    /// `0.812 [95 % CI 0.771, 0.850]`, or the value and why there is no interval.
    pub fn show(&self) -> String {
        let [lo, hi] = self.ci95_by_plate;
        if lo.is_finite() && hi.is_finite() {
            format!("{:.3} [95 % CI {lo:.3}, {hi:.3}]", self.value)
        } else if self.value.is_finite() {
            format!("{:.3} (no interval: {NO_INTERVAL})", self.value)
        } else {
            "n/a".into()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub class: String,
    /// Cells of this class scored (the F1 of 2 cells reads like that of 2,000 otherwise).
    #[serde(default)]
    pub cells: usize,
    #[serde(deserialize_with = "nan_from_null")]
    pub precision: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub recall: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub f1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupScore {
    pub group: String,
    pub cells: usize,
    #[serde(deserialize_with = "nan_from_null")]
    pub weighted_f1: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub accuracy: f64,
}

/// Calibration before and after temperature scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_only_if: Option<String>,
    #[serde(deserialize_with = "nan_from_null")]
    pub temperature: f64,
    /// Train: the temperature fitted on all out-of-fold predictions, applied or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_fitted: Option<f64>,
    /// Train: NLL change on left-out plates when fitted on the others (< 0: it transfers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out_plate_nll_change: Option<f64>,
    /// Train: ECE change on left-out plates, as for the NLL (< 0: it transfers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out_plate_ece_change: Option<f64>,
    /// Train: why the temperature was or was not applied, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "nans_from_nulls"
    )]
    pub fold_temperatures: Vec<f64>,
    #[serde(deserialize_with = "nan_from_null")]
    pub ece_before: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub ece_after: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub brier_before: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub brier_after: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_after: Option<f64>,
}

/// The scores of a model over labelled cells, as `train` (out of fold) and `evaluate` (on
/// held-out plates) both report them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub weighted_f1: Estimate,
    pub macro_f1: Estimate,
    #[serde(deserialize_with = "nan_from_null")]
    pub accuracy: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub balanced_accuracy: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub ece_15_bins: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub brier: f64,
    pub calibration: Calibration,
    pub per_class: Vec<ClassScore>,
    pub per_group: Vec<GroupScore>,
    pub confusion: Vec<Vec<usize>>,
}

/// How the cross-validation was split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub protocol: String,
    pub leaky: bool,
    pub folds: usize,
    pub groups: Vec<String>,
    pub holdout: Vec<String>,
}

/// A class that one group (plate) mostly holds: the fold without that group learns it from
/// few cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConcentratedClass {
    pub class: String,
    pub cells: usize,
    pub top_group: String,
    pub top_group_cells: usize,
    pub groups: usize,
    /// One sentence for the model card and the report alike.
    pub note: String,
}

/// A well whose cells the model, out of fold, mostly puts in another class than its label,
/// beyond what its confusion on other wells explains (`label_qc.csv` has every well labelled as a whole).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuspectWell {
    pub plate: String,
    pub well: String,
    pub label: String,
    pub cells: usize,
    pub agreeing: usize,
    pub expected_agreeing: f64,
    pub predicted_mostly: String,
    pub p_value: f64,
}

/// `metrics.json` of a `train` step: cross-validation across plates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    pub model: String,
    pub split: SplitInfo,
    pub normalisation: String,
    pub cells: usize,
    pub classes: Vec<String>,
    #[serde(flatten)]
    pub scores: Scores,
    #[serde(deserialize_with = "nan_from_null")]
    pub shuffled_label_weighted_f1: f64,
    #[serde(default)]
    pub classes_mostly_in_one_group: Vec<ConcentratedClass>,
    /// Logistic: feature columns the model used, and those left out (with why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features_used: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features_left_out: Vec<LeftOut>,
    /// Wells whose label looks wrong to the model (label QC on out-of-fold predictions).
    #[serde(default)]
    pub suspect_wells: Vec<SuspectWell>,
}

/// A feature column a model did not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftOut {
    pub feature: String,
    pub why: String,
}

/// `metrics.json` of an `evaluate` step: a saved model on plates it never saw. Without
/// labelled cells there are no scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationMetrics {
    pub what: String,
    pub model: String,
    pub model_file: String,
    pub trained_on: Vec<String>,
    pub evaluated: Vec<String>,
    pub cells: usize,
    pub labelled_cells: usize,
    pub classes: Vec<String>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
    /// The same predictions scored against shuffled labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chance_weighted_f1: Option<f64>,
}

/// Either kind of `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Metrics {
    Train(TrainMetrics),
    Evaluation(EvaluationMetrics),
}

impl Metrics {
    pub fn scores(&self) -> Option<&Scores> {
        match self {
            Metrics::Train(m) => Some(&m.scores),
            Metrics::Evaluation(m) => m.scores.as_ref(),
        }
    }
    pub fn classes(&self) -> &[String] {
        match self {
            Metrics::Train(m) => &m.classes,
            Metrics::Evaluation(m) => &m.classes,
        }
    }
    pub fn model(&self) -> &str {
        match self {
            Metrics::Train(m) => &m.model,
            Metrics::Evaluation(m) => &m.model,
        }
    }
    /// The control score: shuffled labels (train) or chance (evaluate).
    pub fn control_f1(&self) -> Option<f64> {
        match self {
            Metrics::Train(m) => Some(m.shuffled_label_weighted_f1),
            Metrics::Evaluation(m) => m.chance_weighted_f1,
        }
    }
}

/// A training file and its SHA-256, as the model saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    pub file: String,
    pub sha256: String,
}

/// What a model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingData {
    pub groups: Vec<String>,
    pub holdout: Vec<String>,
    pub cells: usize,
    pub seed: u64,
    pub label: String,
    pub files: Vec<FileDigest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Software {
    pub plateflow: String,
    pub candle: String,
}

/// `model.json`, beside every `model.safetensors`: what `evaluate` needs to use the model
/// and to refuse plates it was trained on. The normalisation and architecture depend on the
/// model kind and are read by the learning code that wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSidecar {
    pub classes: Vec<String>,
    pub label: String,
    pub group_by: String,
    pub normalisation: serde_json::Value,
    pub plate_normalisation: String,
    pub architecture: serde_json::Value,
    #[serde(deserialize_with = "nan_from_null")]
    pub temperature: f64,
    pub training: TrainingData,
    pub cross_validation: TrainMetrics,
    pub software: Software,
    /// Channel → the top grey level of the texture features the model reads (none for a
    /// model without texture features, or one saved before this was kept).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub texture_tops: BTreeMap<String, u32>,
}

/// `texture.json` of a `features` task: the grey-level range each channel's Haralick
/// features were quantised over. Taken from each plate's brightest pixel unless
/// `texture_max:` is given, so two plates can differ; features of different ranges are not
/// comparable, which `train` and `evaluate` check with [`TextureQuantisation::common`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TextureQuantisation {
    /// Pixels averaged per step (the `_3_` in the column names).
    pub scale: u32,
    /// Grey levels (the last number in the column names).
    pub levels: u32,
    /// Channel → the value given the top grey level.
    pub tops: BTreeMap<String, u32>,
    /// Channel → where the top came from (`texture_max`, or the brightest pixel).
    pub from: BTreeMap<String, String>,
}

impl TextureQuantisation {
    /// Whether `column` is one of this task's texture columns of `channel`
    /// (`Nuclei_Texture_Contrast_DNA_3_avg_8`).
    pub fn is_texture_of(&self, column: &str, channel: &str) -> bool {
        column.contains("_Texture_")
            && column.ends_with(&format!("_{channel}_{}_avg_{}", self.scale, self.levels))
    }

    /// The one range per channel whose texture columns are among `used`, over the tasks
    /// `(name, quantisation)`; an error naming the tasks of each range where they differ.
    pub fn common(
        tasks: &[(String, TextureQuantisation)],
        used: &[String],
    ) -> Result<BTreeMap<String, u32>, String> {
        let mut by_channel: BTreeMap<&str, BTreeMap<u32, Vec<&str>>> = BTreeMap::new();
        for (task, q) in tasks {
            for (ch, &top) in &q.tops {
                if used.iter().any(|c| q.is_texture_of(c, ch)) {
                    by_channel
                        .entry(ch)
                        .or_default()
                        .entry(top)
                        .or_default()
                        .push(task);
                }
            }
        }
        let mut common = BTreeMap::new();
        for (ch, tops) in by_channel {
            if tops.len() > 1 {
                let ranges: Vec<String> = tops
                    .iter()
                    .map(|(top, tasks)| {
                        format!(
                            "0..{top} in {}",
                            crate::listing::first_few(tasks.iter().copied(), 3, ", ")
                        )
                    })
                    .collect();
                let highest = tops.keys().last().copied().unwrap_or_default();
                return Err(format!(
                    "the texture of {ch} was quantised over different ranges: {} (each plate's \
                     range comes from its brightest pixel), so one plate's Haralick features \
                     cannot be compared with another's; set `texture_max: {highest}` (your \
                     camera's top) in the features step, or leave {ch}'s texture out with \
                     `exclude_features: [\"*_Texture_*_{ch}_*\"]`",
                    ranges.join("; ")
                ));
            }
            if let Some((&top, _)) = tops.iter().next() {
                common.insert(ch.to_string(), top);
            }
        }
        Ok(common)
    }

    /// The tasks `(name, quantisation)` a model is applied to quantise each channel whose
    /// texture it reads (`model_tops`, from its sidecar) over the same range; an error naming
    /// the first task that does not, and the fix.
    pub fn against_model(
        tasks: &[(String, TextureQuantisation)],
        model_tops: &BTreeMap<String, u32>,
    ) -> Result<(), String> {
        for (task, q) in tasks {
            for (ch, &top) in model_tops {
                if let Some(&theirs) = q.tops.get(ch).filter(|&&t| t != top) {
                    return Err(format!(
                        "the model read the texture of {ch} quantised over 0..{top}, but {task} \
                         quantised it over 0..{theirs} ({}), so its Haralick features mean \
                         something else there; set `texture_max: {top}` in the features step",
                        q.from.get(ch).map_or("", String::as_str)
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ModelSidecar {
    /// `logistic` or `cnn`, as the architecture says.
    pub fn model_kind(&self) -> &str {
        self.architecture["kind"].as_str().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plates whose texture ranges differ are refused with the ranges, their tasks and the
    /// fix, but only where that channel's texture columns are used.
    #[test]
    fn texture_ranges_must_agree_where_texture_is_used() {
        let q = |dna: u32, gfp: u32| TextureQuantisation {
            scale: 3,
            levels: 8,
            tops: BTreeMap::from([("DNA".to_string(), dna), ("GFP".to_string(), gfp)]),
            from: BTreeMap::new(),
        };
        let tasks = vec![
            ("features[plate=P1]".to_string(), q(16383, 4095)),
            ("features[plate=P2]".to_string(), q(16383, 4095)),
            ("features[plate=P3]".to_string(), q(4095, 4095)),
        ];
        let used = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let e = TextureQuantisation::common(
            &tasks,
            &used(&[
                "Nuclei_Texture_Contrast_DNA_3_avg_8",
                "Nuclei_Intensity_MeanIntensity_GFP",
            ]),
        )
        .unwrap_err();
        assert!(
            e.contains("texture of DNA")
                && e.contains("0..4095 in features[plate=P3]; 0..16383 in features[plate=P1], features[plate=P2]")
                && e.contains("texture_max: 16383"),
            "{e}"
        );
        // Only GFP's texture is used: it agrees.
        let common = TextureQuantisation::common(
            &tasks,
            &used(&["Cells_Texture_Entropy_GFP_3_avg_8", "Nuclei_AreaShape_Area"]),
        )
        .unwrap();
        assert_eq!(common, BTreeMap::from([("GFP".to_string(), 4095)]));
        // A model that read DNA's texture over 0..16383 fits P1 and P2, not P3.
        let model = BTreeMap::from([("DNA".to_string(), 16383)]);
        assert!(TextureQuantisation::against_model(&tasks[..2], &model).is_ok());
        let e = TextureQuantisation::against_model(&tasks, &model).unwrap_err();
        assert!(
            e.contains("0..16383, but features[plate=P3] quantised it over 0..4095")
                && e.contains("texture_max: 16383"),
            "{e}"
        );
        // A channel whose name ends another's (`DNA` in `mtDNA`) is told apart.
        assert!(!q(1, 1).is_texture_of("Nuclei_Texture_Contrast_mtDNA_3_avg_8", "DNA"));
        assert!(q(1, 1).is_texture_of("Nuclei_Texture_Contrast_DNA_3_avg_8", "DNA"));
    }

    fn scores() -> Scores {
        Scores {
            weighted_f1: Estimate {
                value: 0.8,
                ci95_by_plate: [f64::NAN, f64::NAN],
            },
            macro_f1: Estimate {
                value: 0.7,
                ci95_by_plate: [0.6, 0.75],
            },
            accuracy: 0.8,
            balanced_accuracy: 0.7,
            ece_15_bins: 0.05,
            brier: 0.2,
            calibration: Calibration {
                method: "temperature scaling".into(),
                applied_only_if: None,
                temperature: 1.0,
                temperature_fitted: Some(1.3),
                left_out_plate_nll_change: None,
                left_out_plate_ece_change: None,
                decision: None,
                fold_temperatures: vec![1.0, f64::NAN],
                ece_before: 0.1,
                ece_after: 0.05,
                brier_before: 0.25,
                brier_after: 0.2,
                nll_before: None,
                nll_after: None,
            },
            per_class: vec![],
            per_group: vec![],
            confusion: vec![vec![3, 1], vec![0, 4]],
        }
    }

    #[test]
    fn nan_survives_json_and_each_kind_reads_back_as_itself() {
        let e = Metrics::Evaluation(EvaluationMetrics {
            what: "evaluation on plates P4".into(),
            model: "cnn".into(),
            model_file: "upstream/model.safetensors".into(),
            trained_on: vec!["P1".into()],
            evaluated: vec!["P4".into()],
            cells: 10,
            labelled_cells: 8,
            classes: vec!["a".into(), "b".into()],
            scores: Some(scores()),
            chance_weighted_f1: Some(0.5),
        });
        let text = serde_json::to_string(&e).unwrap();
        let back: Metrics = serde_json::from_str(&text).unwrap();
        let s = back.scores().unwrap();
        assert!(s.weighted_f1.ci95_by_plate[0].is_nan());
        assert_eq!(
            s.weighted_f1.show(),
            "0.800 (no interval: fewer than 3 plates)"
        );
        assert_eq!(s.macro_f1.show(), "0.700 [95 % CI 0.600, 0.750]");
        assert!(matches!(back, Metrics::Evaluation(_)));
        assert_eq!(back.control_f1(), Some(0.5));

        let t = Metrics::Train(TrainMetrics {
            model: "logistic".into(),
            split: SplitInfo {
                protocol: "leave-plate-out".into(),
                leaky: false,
                folds: 3,
                groups: vec!["P1".into(), "P2".into(), "P3".into()],
                holdout: vec![],
            },
            normalisation: "plate".into(),
            cells: 10,
            classes: vec!["a".into(), "b".into()],
            scores: scores(),
            shuffled_label_weighted_f1: 0.4,
            classes_mostly_in_one_group: vec![],
            features_used: None,
            features_left_out: vec![],
            suspect_wells: vec![],
        });
        let back: Metrics = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert!(matches!(back, Metrics::Train(_)), "{back:?}");

        // An evaluation without labelled cells has no scores.
        let none = r#"{"what":"w","model":"cnn","model_file":"m","trained_on":[],"evaluated":["P9"],"cells":3,"labelled_cells":0,"classes":["a"]}"#;
        let back: Metrics = serde_json::from_str(none).unwrap();
        assert!(back.scores().is_none());
    }
}
