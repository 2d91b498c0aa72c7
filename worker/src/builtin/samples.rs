//! Cells for learning, gathered from upstream tables: the per-cell features of `features`
//! steps (for the logistic baseline) or the single-cell crops of `crops` steps (for the CNN),
//! each with its label, plate (or other group), well and image set, and the digests of the
//! files they came from (recorded in the model card).

use super::Context;
use anyhow::Context as _;
pub use plateflow_learn::cells::{per_crop_z, per_group_robust_z, Data};
use plateflow_learn::split::Origin;
use sha2::{Digest as _, Sha256};

/// A cell's group, origin (for the leakage guard) and id, from its table row. `gc`: the
/// group column; `wc`, `sc`, `oc`: well, image set and object number, when present.
fn push_origin(
    d: &mut Data,
    rec: &csv::StringRecord,
    gc: usize,
    wc: Option<usize>,
    sc: Option<usize>,
    oc: Option<usize>,
) {
    let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").to_string();
    let set = get(sc);
    d.groups.push(get(Some(gc)));
    d.origins.push(Origin {
        plate: get(Some(gc)),
        well: get(wc),
        image_digest: set.clone(),
    });
    d.ids.push(format!("{set}#{}", get(oc)));
}

fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
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
            push_origin(&mut d, &rec, gc, wc, sc, oc);
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
            push_origin(&mut d, &rec, gc, wc, sc, oc);
            d.file_of.push(d.digests.len() - 1);
        }
    }
    Ok(d)
}

/// A file's path relative to the task's work directory (as upstream outputs are named there).
fn rel_name(ctx: &Context, path: &std::path::Path) -> String {
    path.strip_prefix(ctx.work)
        .unwrap_or(path)
        .display()
        .to_string()
}
