//! Cells for learning, gathered from upstream tables: the per-cell features of `features`
//! steps (for the logistic baseline) or the single-cell crops of `crops` steps (for the CNN),
//! each with its label, plate (or other group), well and image set, and the digests of the
//! files they came from (recorded in the model card).

use super::Context;
use anyhow::Context as _;
use plateflow_learn::split::Origin;
use sha2::{Digest as _, Sha256};

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
    /// A cell's group, origin (for the leakage guard) and id, from its table row. `gc`: the
    /// group column; `wc`, `sc`, `oc`: well, image set and object number, when present.
    fn push_origin(
        &mut self,
        rec: &csv::StringRecord,
        gc: usize,
        wc: Option<usize>,
        sc: Option<usize>,
        oc: Option<usize>,
    ) {
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").to_string();
        let set = get(sc);
        self.groups.push(get(Some(gc)));
        self.origins.push(Origin {
            plate: get(Some(gc)),
            well: get(wc),
            image_digest: set.clone(),
        });
        self.ids.push(format!("{set}#{}", get(oc)));
    }
}

impl Data {
    pub fn len(&self) -> usize {
        self.groups.len()
    }
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
    /// A cell's label (empty: unlabelled), added to the classes unless they are `fixed`.
    fn push_label(&mut self, value: &str, fixed: bool) -> anyhow::Result<()> {
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

    /// (file, SHA-256) of the files that the remaining cells came from: the data seen.
    pub fn used_digests(&self) -> Vec<(String, String)> {
        let used: std::collections::BTreeSet<usize> = self.file_of.iter().copied().collect();
        used.into_iter().map(|f| self.digests[f].clone()).collect()
    }
}

fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// The class index of `value`, added to `classes` unless `fixed` (a saved model's classes).
fn label_index(classes: &mut Vec<String>, value: &str, fixed: bool) -> anyhow::Result<usize> {
    match classes.iter().position(|c| c == value) {
        Some(i) => Ok(i),
        None if fixed => anyhow::bail!(
            "label `{value}` is not one of the model's classes ({})",
            classes.join(", ")
        ),
        None => {
            classes.push(value.to_string());
            Ok(classes.len() - 1)
        }
    }
}

/// Per-cell features from `cells.csv` files: numeric columns other than metadata. With
/// `classes` (a saved model's), labels must be among them; cells without one are kept
/// unlabelled when `keep_unlabelled`.
pub fn from_features(
    ctx: &Context,
    label: &str,
    group_by: &str,
    classes: Option<&[String]>,
    keep_unlabelled: bool,
) -> anyhow::Result<Data> {
    let files = ctx.upstream_files(|n| n == "cells.csv");
    anyhow::ensure!(!files.is_empty(), "`train` with `model: logistic` reads `cells.csv` from a `features` step: put it in `after:`");
    let mut d = Data {
        classes: classes.map(<[String]>::to_vec).unwrap_or_default(),
        ..Data::default()
    };
    for (_, path) in files {
        d.digests.push((rel_name(ctx, &path), sha256_file(&path)?));
        let mut rdr =
            csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
        let h: Vec<String> = rdr.headers()?.iter().map(str::to_string).collect();
        let col = |name: &str| h.iter().position(|c| c.eq_ignore_ascii_case(name));
        let lc = col(&format!("Metadata_{label}")).with_context(|| {
            format!(
                "{}: no column Metadata_{label}; name the plate-map column with `label:`",
                path.display()
            )
        })?;
        let gc = col(&format!("Metadata_{group_by}")).with_context(|| {
            format!(
                "{}: no column Metadata_{group_by} to group folds by",
                path.display()
            )
        })?;
        let wc = col("Metadata_Well");
        let sc = col("ImageSet");
        let oc = col("ObjectNumber");
        let feats: Vec<usize> = (0..h.len())
            .filter(|&i| {
                !h[i].starts_with("Metadata_")
                    && !matches!(h[i].as_str(), "ImageSet" | "ObjectNumber" | "TouchesBorder")
            })
            .collect();
        let names: Vec<String> = feats.iter().map(|&i| h[i].clone()).collect();
        if d.feature_names.is_empty() {
            d.feature_names = names;
        } else {
            anyhow::ensure!(
                d.feature_names == names,
                "{}: its feature columns differ from the other plates'",
                path.display()
            );
        }
        for rec in rdr.records() {
            let rec = rec?;
            let lab = rec.get(lc).unwrap_or("");
            if lab.is_empty() && !keep_unlabelled {
                continue;
            }
            d.push_label(lab, classes.is_some())?;
            d.x.extend(feats.iter().map(|&i| {
                rec.get(i)
                    .and_then(|v| v.parse::<f32>().ok())
                    .filter(|v| v.is_finite())
                    .unwrap_or(0.0)
            }));
            d.push_origin(&rec, gc, wc, sc, oc);
            d.file_of.push(d.digests.len() - 1);
        }
    }
    d.shape = vec![d.feature_names.len()];
    Ok(d)
}

/// Crops from `crops.safetensors` + `crops.csv` pairs (labels as in [`from_features`]).
pub fn from_crops(
    ctx: &Context,
    group_by: &str,
    classes: Option<&[String]>,
    keep_unlabelled: bool,
) -> anyhow::Result<Data> {
    // Each crops task's tensor file and index table, paired by the task that wrote them.
    let by_task = |name: &str| -> std::collections::BTreeMap<&str, std::path::PathBuf> {
        ctx.upstream
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(task, _, rel)| (task.as_str(), ctx.work.join(rel)))
            .collect()
    };
    let (tensor_files, index_files) = (by_task("crops.safetensors"), by_task("crops.csv"));
    let mut tensors = Vec::new();
    let mut indexes = Vec::new();
    for (task, t) in &tensor_files {
        let i = index_files
            .get(task)
            .with_context(|| format!("{task} wrote crops.safetensors but no crops.csv"))?;
        tensors.push(t.clone());
        indexes.push(i.clone());
    }
    anyhow::ensure!(
        !tensors.is_empty(),
        "`train` with `model: cnn` reads crops from a `crops` step: put it in `after:`"
    );
    let mut d = Data {
        classes: classes.map(<[String]>::to_vec).unwrap_or_default(),
        ..Data::default()
    };
    for (tpath, ipath) in tensors.iter().zip(&indexes) {
        d.digests.push((rel_name(ctx, tpath), sha256_file(tpath)?));
        let t = candle_core::safetensors::load(tpath, &candle_core::Device::Cpu)
            .with_context(|| format!("reading {}", tpath.display()))?;
        let crops = t
            .get("crops")
            .with_context(|| format!("{}: no tensor `crops`", tpath.display()))?;
        let dims = crops.dims().to_vec();
        let scale = if crops.dtype() == candle_core::DType::U8 {
            255.0
        } else {
            65535.0
        };
        let values: Vec<f32> = crops
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        if d.shape.is_empty() {
            d.shape = dims[1..].to_vec();
        }
        anyhow::ensure!(
            d.shape == dims[1..],
            "{}: crops of another shape than the other plates'",
            tpath.display()
        );
        let per: usize = d.shape.iter().product();
        let mut rdr = csv::Reader::from_path(ipath)?;
        let h: Vec<String> = rdr.headers()?.iter().map(str::to_string).collect();
        let col = |name: &str| h.iter().position(|c| c.eq_ignore_ascii_case(name));
        let lc = col("label").context("crops.csv without a label column")?;
        let gc = col(&format!("Metadata_{group_by}"))
            .with_context(|| format!("{}: no column Metadata_{group_by}", ipath.display()))?;
        let (wc, sc, oc) = (col("Metadata_Well"), col("ImageSet"), col("ObjectNumber"));
        for (row, rec) in rdr.records().enumerate() {
            let rec = rec?;
            let lab = rec.get(lc).unwrap_or("");
            if lab.is_empty() && !keep_unlabelled {
                continue;
            }
            d.push_label(lab, classes.is_some())?;
            d.x.extend(values[row * per..(row + 1) * per].iter().map(|v| v / scale));
            d.push_origin(&rec, gc, wc, sc, oc);
            d.file_of.push(d.digests.len() - 1);
        }
    }
    Ok(d)
}

/// Each feature as a robust z-score within its plate: (x − median) / (1.4826 · MAD) over the
/// plate's own cells. Labels play no part, so a held-out plate is normalised by itself alone,
/// and plate-wide shifts (illumination, stain intensity) stop looking like phenotypes.
pub fn per_group_robust_z(d: &mut Data) {
    let dim = d.shape[0];
    let mut members: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, g) in d.groups.iter().enumerate() {
        members.entry(g.as_str()).or_default().push(i);
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
            let scale = if mad > 1e-9 { mad } else { 1.0 };
            for &i in rows {
                let x = &mut d.x[i * dim + f];
                *x = (*x - m) / scale;
            }
        }
    }
}

/// A file's path relative to the task's work directory (as upstream outputs are named there).
fn rel_name(ctx: &Context, path: &std::path::Path) -> String {
    path.strip_prefix(ctx.work)
        .unwrap_or(path)
        .display()
        .to_string()
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
