//! Cells for learning, gathered from upstream tables: the per-cell features of `features`
//! steps (for the logistic baseline) or the single-cell crops of `crops` steps (for the CNN),
//! each with its label, plate (or other group), well and image set, and the digests of the
//! files they came from (recorded in the model card).

use super::{map_metadata_column, Context};
use anyhow::Context as _;
use plateflow_contract::metrics::TextureQuantisation;
pub use plateflow_learn::cells::{per_crop_z, per_plate_robust_z, Data};
use plateflow_learn::split::Origin;
use sha2::{Digest as _, Sha256};

/// The columns a cell's origin is read from.
struct OriginColumns {
    /// What folds are grouped by (`group_by:`).
    group: usize,
    plate: Option<usize>,
    well: Option<usize>,
    set: Option<usize>,
    object: Option<usize>,
}

impl OriginColumns {
    fn of(col: impl Fn(&str) -> Option<usize>, group: usize) -> Self {
        OriginColumns {
            group,
            plate: col("Metadata_Plate"),
            well: col("Metadata_Well"),
            set: col("ImageSet"),
            object: col("ObjectNumber"),
        }
    }
}

/// A cell's group, origin (for the leakage guard, per-plate normalisation and plate-map
/// lookups) and id, from its table row. Its plate is its plate, whatever folds are grouped
/// by (with `group_by: treatment` it was the treatment: each compound's cells were centred on
/// themselves, and wells of one name on two plates were taken for one); without a plate
/// column, its group.
fn push_origin(d: &mut Data, rec: &csv::StringRecord, c: &OriginColumns) {
    let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").to_string();
    let set = get(c.set);
    let group = get(Some(c.group));
    d.origins.push(Origin {
        plate: match c.plate {
            Some(_) => get(c.plate),
            None => group.clone(),
        },
        well: get(c.well),
        image_digest: set.clone(),
    });
    d.groups.push(group);
    d.ids.push(format!("{set}#{}", get(c.object)));
}

fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Each upstream `features` task's `texture.json` (the range its texture was quantised
/// over), by task label. A table saved before these were kept has none and is not compared.
pub fn texture_quantisations(ctx: &Context) -> anyhow::Result<Vec<(String, TextureQuantisation)>> {
    ctx.upstream
        .iter()
        .filter(|(_, name, _)| name == "texture.json")
        .map(|(label, _, rel)| {
            let q = super::read_json(&ctx.work.join(rel))
                .with_context(|| format!("the texture ranges of {label}"))?;
            Ok((label.clone(), q))
        })
        .collect()
}

/// Per-cell features from `cells.csv` files: numeric columns other than metadata. With
/// `classes` (a saved model's), labels must be among them; cells without one are kept
/// unlabelled when `keep_unlabelled`.
pub fn from_features(
    ctx: &mut Context,
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
    let mut said_missing = 0usize;
    for (_, path) in files {
        d.digests.push((rel_name(ctx, &path), sha256_file(&path)?));
        let mut rdr =
            csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
        let h: Vec<String> = rdr.headers()?.iter().map(str::to_string).collect();
        let col = |name: &str| h.iter().position(|c| c.eq_ignore_ascii_case(name));
        // Named as `features` names plate-map columns (`MoA class` → `Metadata_MoA_class`,
        // `Metadata_Phenotype` stays so).
        let (label_col, group_col) = (map_metadata_column(label), map_metadata_column(group_by));
        let lc = col(&label_col).with_context(|| {
            format!(
                "{}: no column {label_col}; name the plate-map column with `label:`",
                path.display()
            )
        })?;
        let gc = col(&group_col).with_context(|| {
            format!(
                "{}: no column {group_col} to group folds by",
                path.display()
            )
        })?;
        let oc = OriginColumns::of(col, gc);
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
            let rec = rec.with_context(|| format!("reading {}", path.display()))?;
            let lab = label_of(&rec, lc, &mut said_missing);
            if lab.is_empty() && !keep_unlabelled {
                continue;
            }
            push_label(&mut d, lab, classes.is_some(), &path, &rec, &oc)?;
            d.x.extend(feats.iter().map(|&i| {
                rec.get(i)
                    .and_then(|v| v.parse::<f32>().ok())
                    .filter(|v| v.is_finite())
                    .unwrap_or(f32::NAN)
            }));
            push_origin(&mut d, &rec, &oc);
            d.file_of.push(d.digests.len() - 1);
        }
    }
    d.shape = vec![d.feature_names.len()];
    log_missing(ctx, said_missing);
    let filled = fill_missing_by_group(&mut d);
    if filled > 0 {
        ctx.logln(format!(
            "{filled} missing or non-finite feature values (an empty compartment, a failed \
             measurement) read as their plate's median for that feature"
        ));
    }
    Ok(d)
}

/// Each missing (NaN) feature value as the median of that feature over its group's (plate's)
/// cells; 0 where the whole group lacks it. Returns how many were filled. Read as a raw 0,
/// a missing value lay far out of a feature's range and became an extreme z-score.
pub fn fill_missing_by_group(d: &mut Data) -> usize {
    let dim = d.feature_names.len();
    if dim == 0 || !d.x.iter().any(|v| v.is_nan()) {
        return 0;
    }
    let mut members: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, g) in d.groups.iter().enumerate() {
        members.entry(g.as_str()).or_default().push(i);
    }
    let mut filled = 0;
    for cells in members.values() {
        for f in 0..dim {
            let mut present: Vec<f32> = cells
                .iter()
                .map(|&i| d.x[i * dim + f])
                .filter(|v| !v.is_nan())
                .collect();
            if present.len() == cells.len() {
                continue;
            }
            present.sort_by(f32::total_cmp);
            let fill = if present.is_empty() {
                0.0
            } else {
                let m = present.len() / 2;
                if present.len() % 2 == 1 {
                    present[m]
                } else {
                    0.5 * (present[m - 1] + present[m])
                }
            };
            for &i in cells {
                let v = &mut d.x[i * dim + f];
                if v.is_nan() {
                    *v = fill;
                    filled += 1;
                }
            }
        }
    }
    filled
}

/// Crops from `crops.safetensors` + `crops.csv` pairs (labels as in [`from_features`]).
pub fn from_crops(
    ctx: &mut Context,
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
    let mut said_missing = 0usize;
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
        let mut rdr = csv::Reader::from_path(ipath)
            .with_context(|| format!("reading {}", ipath.display()))?;
        let h: Vec<String> = rdr
            .headers()
            .with_context(|| format!("reading {}", ipath.display()))?
            .iter()
            .map(str::to_string)
            .collect();
        let col = |name: &str| h.iter().position(|c| c.eq_ignore_ascii_case(name));
        let lc =
            col("label").with_context(|| format!("{} has no `label` column", ipath.display()))?;
        let group_col = map_metadata_column(group_by);
        let gc = col(&group_col)
            .with_context(|| format!("{}: no column {group_col}", ipath.display()))?;
        let oc = OriginColumns::of(col, gc);
        for (row, rec) in rdr.records().enumerate() {
            let rec = rec.with_context(|| format!("reading {}", ipath.display()))?;
            let lab = label_of(&rec, lc, &mut said_missing);
            if lab.is_empty() && !keep_unlabelled {
                continue;
            }
            push_label(&mut d, lab, classes.is_some(), ipath, &rec, &oc)?;
            d.x.extend(values[row * per..(row + 1) * per].iter().map(|v| v / scale));
            push_origin(&mut d, &rec, &oc);
            d.file_of.push(d.digests.len() - 1);
        }
    }
    log_missing(ctx, said_missing);
    Ok(d)
}

/// A cell's label, trimmed; "" (unlabelled) where the plate map says "no value" (`NA`, `-`,
/// `nan`, …: R's `write.csv` writes untreated wells as `NA`, which became a class), counted
/// in `said_missing` when written out.
fn label_of<'r>(rec: &'r csv::StringRecord, lc: usize, said_missing: &mut usize) -> &'r str {
    let raw = rec.get(lc).unwrap_or("");
    if plateflow_contract::platemap::is_missing_value(raw) {
        *said_missing += usize::from(!raw.trim().is_empty());
        ""
    } else {
        raw.trim()
    }
}

/// Adds a cell's label, an error naming the file, plate and well where it cannot be.
fn push_label(
    d: &mut Data,
    label: &str,
    fixed: bool,
    path: &std::path::Path,
    rec: &csv::StringRecord,
    c: &OriginColumns,
) -> anyhow::Result<()> {
    d.push_label(label, fixed).with_context(|| {
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("");
        format!(
            "{} (plate {}, well {})",
            path.display(),
            get(c.plate.or(Some(c.group))),
            get(c.well)
        )
    })
}

fn log_missing(ctx: &mut Context, cells: usize) {
    if cells > 0 {
        ctx.logln(format!(
            "{cells} cells whose label reads as \"no value\" (NA, n/a, nan, -, none) are left unlabelled"
        ));
    }
}

/// A file's path relative to the task's work directory (as upstream outputs are named there).
fn rel_name(ctx: &Context, path: &std::path::Path) -> String {
    path.strip_prefix(ctx.work)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::testing;

    /// Writes `rows` (plate, well, label, feature) as a `features` step's `cells.csv` named
    /// `rel` under `work`, with the label under `label_col`.
    fn cells_csv(
        work: &std::path::Path,
        rel: &str,
        label_col: &str,
        rows: &[(&str, &str, &str, f64)],
    ) {
        let mut text =
            format!("ImageSet,Metadata_Plate,Metadata_Well,{label_col},ObjectNumber,Nuclei_F\n");
        for (i, (plate, well, label, f)) in rows.iter().enumerate() {
            text.push_str(&format!("{plate}_{well},{plate},{well},{label},{i},{f}\n"));
        }
        let path = work.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Plate-map spellings of "no value" leave a cell unlabelled (R writes untreated wells
    /// `NA`, which became a class), labels are trimmed, and a map column named with its
    /// `Metadata_` prefix or with spaces is found as `features` named it.
    #[test]
    fn labels_as_plate_maps_write_them() {
        let tmp = tempfile::tempdir().unwrap();
        let rows = [
            ("P1", "A01", "DMSO", 1.0),
            ("P1", "A02", "NA", 2.0),
            ("P1", "A03", " taxol ", 3.0),
            ("P1", "A04", "-", 4.0),
            ("P1", "A05", "", 5.0),
        ];
        cells_csv(tmp.path(), "f/cells.csv", "Metadata_MoA_class", &rows);
        let task = testing::task("train", &[]);
        let upstream = vec![(
            "f".to_string(),
            "cells.csv".to_string(),
            "f/cells.csv".to_string(),
        )];
        for label in ["MoA class", "Metadata_MoA_class"] {
            let mut ctx = testing::context(tmp.path(), &task, &[], &upstream);
            let d = from_features(&mut ctx, label, "plate", None, false).unwrap();
            assert_eq!(d.classes, ["DMSO", "taxol"]);
            assert_eq!(d.len(), 2);
            assert!(
                ctx.log
                    .contains("2 cells whose label reads as \"no value\""),
                "{}",
                ctx.log
            );
            let mut ctx = testing::context(tmp.path(), &task, &[], &upstream);
            let d = from_features(&mut ctx, label, "plate", None, true).unwrap();
            assert_eq!(d.labels, [Some(0), None, Some(1), None, None]);
        }
    }

    /// A missing feature value reads as its plate's median for that feature (a raw 0 was an
    /// extreme value once plates were z-scored), counted in the log.
    #[test]
    fn missing_values_read_as_their_plates_median() {
        let tmp = tempfile::tempdir().unwrap();
        cells_csv(
            tmp.path(),
            "f/cells.csv",
            "Metadata_Phenotype",
            &[
                ("P1", "A01", "a", 100.0),
                ("P1", "A02", "a", 200.0),
                ("P1", "A03", "b", 300.0),
                ("P1", "A04", "b", f64::NAN),
                ("P2", "A01", "a", 7.0),
            ],
        );
        let task = testing::task("train", &[]);
        let upstream = vec![(
            "f".to_string(),
            "cells.csv".to_string(),
            "f/cells.csv".to_string(),
        )];
        let mut ctx = testing::context(tmp.path(), &task, &[], &upstream);
        let d = from_features(&mut ctx, "phenotype", "plate", None, false).unwrap();
        assert_eq!(d.x, [100.0, 200.0, 300.0, 200.0, 7.0]);
        assert!(
            ctx.log.contains("1 missing or non-finite feature values"),
            "{}",
            ctx.log
        );
    }

    /// `DMSO` on one plate and `dmso` on another are refused, naming the file, plate and
    /// well and both spellings; so is a model's class spelled another way when evaluating.
    #[test]
    fn labels_differing_only_in_case_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        cells_csv(
            tmp.path(),
            "a/cells.csv",
            "Metadata_Phenotype",
            &[("P1", "A01", "DMSO", 1.0)],
        );
        cells_csv(
            tmp.path(),
            "b/cells.csv",
            "Metadata_Phenotype",
            &[("P2", "B03", "dmso", 1.0)],
        );
        let task = testing::task("train", &[]);
        let upstream = vec![
            (
                "a".to_string(),
                "cells.csv".to_string(),
                "a/cells.csv".to_string(),
            ),
            (
                "b".to_string(),
                "cells.csv".to_string(),
                "b/cells.csv".to_string(),
            ),
        ];
        let mut ctx = testing::context(tmp.path(), &task, &[], &upstream);
        let e = match from_features(&mut ctx, "phenotype", "plate", None, false) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("two spellings were taken as two classes"),
        };
        assert!(
            e.contains("b/cells.csv (plate P2, well B03)")
                && e.contains("`dmso` differs from `DMSO` only in case"),
            "{e}"
        );
        let upstream = &upstream[1..];
        let mut ctx = testing::context(tmp.path(), &task, &[], upstream);
        let classes = ["DMSO".to_string(), "taxol".to_string()];
        let e = match from_features(&mut ctx, "phenotype", "plate", Some(&classes), true) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("a label spelled otherwise than the model's class was taken"),
        };
        assert!(e.contains("the model was trained on `DMSO`"), "{e}");
    }
}
