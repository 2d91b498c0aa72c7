//! Labelled cells as the learning code sees them: one row of features or one crop per cell,
//! with its class, its group (plate) and where it came from (for the leakage guard and the
//! model card). Built by the engine's steps from upstream tables; fitted on by
//! [`crate::fitting`] and cross-validated by [`crate::protocol`].

use crate::split::Origin;

/// Samples gathered from upstream tables: one row per cell.
#[derive(Default)]
pub struct Data {
    pub x: Vec<f32>,
    /// One sample's shape: [features] or [C, H, W].
    pub shape: Vec<usize>,
    /// Class index per cell; `None` where the plate map gives no label.
    pub labels: Vec<Option<usize>>,
    pub classes: Vec<String>,
    pub groups: Vec<String>,
    pub origins: Vec<Origin>,
    pub ids: Vec<String>,
    pub feature_names: Vec<String>,
    /// (file, SHA-256) of every upstream file read.
    pub digests: Vec<(String, String)>,
    /// Per cell, the index in `digests` of the file it came from.
    pub file_of: Vec<usize>,
}

impl Data {
    pub fn len(&self) -> usize {
        self.groups.len()
    }
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
    /// A cell's label (empty: unlabelled), added to the classes unless they are `fixed`.
    pub fn push_label(&mut self, value: &str, fixed: bool) -> anyhow::Result<()> {
        let l = if value.is_empty() {
            None
        } else {
            Some(label_index(&mut self.classes, value, fixed)?)
        };
        self.labels.push(l);
        Ok(())
    }

    /// Keeps the cells for which `keep(i)` holds.
    pub fn retain(&mut self, keep: impl Fn(usize) -> bool) {
        let per: usize = self.shape.iter().product();
        let kept: Vec<usize> = (0..self.len()).filter(|&i| keep(i)).collect();
        let mut x = Vec::with_capacity(kept.len() * per);
        for &i in &kept {
            x.extend_from_slice(&self.x[i * per..(i + 1) * per]);
        }
        self.x = x;
        self.labels = kept.iter().map(|&i| self.labels[i]).collect();
        self.groups = kept.iter().map(|&i| self.groups[i].clone()).collect();
        self.origins = kept.iter().map(|&i| self.origins[i].clone()).collect();
        self.ids = kept.iter().map(|&i| self.ids[i].clone()).collect();
        self.file_of = kept.iter().map(|&i| self.file_of[i]).collect();
    }

    /// Keeps the feature columns `columns` (indices into `feature_names`, in the order
    /// given) of a per-cell feature table.
    pub fn keep_features(&mut self, columns: &[usize]) {
        let f = self.feature_names.len();
        let mut x = Vec::with_capacity(self.len() * columns.len());
        for row in self.x.chunks_exact(f.max(1)) {
            x.extend(columns.iter().map(|&c| row[c]));
        }
        self.x = x;
        self.feature_names = columns
            .iter()
            .map(|&c| self.feature_names[c].clone())
            .collect();
        self.shape = vec![columns.len()];
    }

    /// (file, SHA-256) of the files that the remaining cells came from: the data seen.
    pub fn used_digests(&self) -> Vec<(String, String)> {
        let used: std::collections::BTreeSet<usize> = self.file_of.iter().copied().collect();
        used.into_iter().map(|f| self.digests[f].clone()).collect()
    }
}

/// The class index of `value`, added to `classes` unless `fixed` (a saved model's classes).
fn label_index(classes: &mut Vec<String>, value: &str, fixed: bool) -> anyhow::Result<usize> {
    match classes.iter().position(|c| c == value) {
        Some(i) => Ok(i),
        // `DMSO` on one plate and `dmso` on another are one treatment spelled two ways: as
        // two classes, each lived on one plate and cross-plate validation scored nonsense.
        None => {
            if let Some(c) = classes.iter().find(|c| c.eq_ignore_ascii_case(value)) {
                let trained = if fixed {
                    format!(" (the model was trained on `{c}`)")
                } else {
                    String::new()
                };
                anyhow::bail!(
                    "label `{value}` differs from `{c}` only in case; spell them the same in \
                     the plate map{trained}"
                );
            }
            anyhow::ensure!(
                !fixed,
                "label `{value}` is not one of the model's classes ({})",
                classes.join(", ")
            );
            classes.push(value.to_string());
            Ok(classes.len() - 1)
        }
    }
}

/// Each feature as a robust z-score within its plate: (x − median) / (1.4826 · MAD) over the
/// plate's own cells. Labels play no part, so a held-out plate is normalised by itself alone,
/// and plate-wide shifts (illumination, stain intensity) stop looking like phenotypes. The
/// plate is the cells' own, whatever folds are grouped by.
///
/// Where more than half a plate's cells share one value (a saturated maximum, a count that is
/// mostly 0), the MAD is 0: the spread is then taken from the mean absolute deviation
/// (× 1.2533, the normal's ratio), and a feature constant on the plate reads 0 there. Left in
/// raw units, it was on another scale on that plate than on the others.
pub fn per_plate_robust_z(d: &mut Data) {
    let dim = d.shape[0];
    let mut members: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, o) in d.origins.iter().enumerate() {
        members.entry(o.plate.as_str()).or_default().push(i);
    }
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        if v.is_empty() {
            0.0
        } else {
            v[v.len() / 2]
        }
    };
    for rows in members.values() {
        for f in 0..dim {
            let mut v: Vec<f32> = rows.iter().map(|&i| d.x[i * dim + f]).collect();
            let m = median(&mut v);
            let mut dev: Vec<f32> = v.iter().map(|x| (x - m).abs()).collect();
            let mad = median(&mut dev) * 1.4826;
            let scale = if mad > 1e-9 {
                mad
            } else {
                // Missing values (NaN) take no part in the spread.
                let (sum, n) = dev
                    .iter()
                    .filter(|x| x.is_finite())
                    .fold((0.0f64, 0usize), |(s, n), &x| (s + x as f64, n + 1));
                (sum / n.max(1) as f64 * 1.2533) as f32
            };
            for &i in rows {
                let x = &mut d.x[i * dim + f];
                // NaN (a missing value) stays NaN, to be filled later.
                *x = if scale > 1e-9 {
                    (*x - m) / scale
                } else {
                    (*x - m) * 0.0
                };
            }
        }
    }
}

/// Each crop's channels as z-scores of their own pixels (mean 0, standard deviation 1):
/// brightness and contrast differ between plates and imaging dates, and a CNN on raw
/// intensities learns them. Fitted on nothing but the crop itself, so nothing can leak.
pub fn per_crop_z(d: &mut Data) {
    let hw: usize = d.shape[1..].iter().product();
    for plane in d.x.chunks_mut(hw) {
        let n = plane.len().max(1) as f64;
        let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = plane
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let sd = var.sqrt().max(1e-6);
        for v in plane.iter_mut() {
            *v = ((*v as f64 - mean) / sd) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Origin;

    fn cells(plates: &[(&str, Vec<f32>)]) -> Data {
        let mut d = Data {
            shape: vec![1],
            ..Data::default()
        };
        for (plate, values) in plates {
            for &v in values {
                d.x.push(v);
                d.labels.push(None);
                // Folds grouped by something else than the plate.
                d.groups.push("treatment-a".into());
                d.origins.push(Origin {
                    plate: plate.to_string(),
                    well: "A01".into(),
                    image_digest: String::new(),
                });
            }
        }
        d
    }

    /// Each plate is centred and scaled on its own cells, whatever the folds' groups; a plate
    /// where most cells share one value (MAD 0) is still scaled, and a constant one reads 0.
    #[test]
    fn features_are_robust_z_scores_within_each_plate() {
        let mut d = cells(&[
            ("P1", vec![10.0, 11.0, 12.0, 13.0, 14.0]),
            ("P2", vec![4095.0, 4095.0, 4095.0, 1000.0, 3000.0]),
            ("P3", vec![7.0; 4]),
        ]);
        per_plate_robust_z(&mut d);
        let z = &d.x;
        assert!(
            (z[2]).abs() < 1e-6 && (z[4] - 2.0 / 1.4826).abs() < 1e-4,
            "{z:?}"
        );
        // P2: median 4095, MAD 0; mean absolute deviation (3095 + 1095) / 5 = 838.
        let scale = 838.0 * 1.2533;
        assert!((z[8] - (1000.0 - 4095.0) / scale).abs() < 1e-3, "{z:?}");
        assert!(
            z[5..10].iter().all(|v| v.abs() < 3.0),
            "raw units left: {z:?}"
        );
        assert_eq!(&z[10..], &[0.0; 4]);
    }
}
