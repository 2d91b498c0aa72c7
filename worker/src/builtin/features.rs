//! `features`: per-object measurements in CellProfiler's column names (`Nuclei_AreaShape_Area`,
//! `Cytoplasm_Intensity_MeanIntensity_GFP`), so the tables load in pycytominer and
//! CellProfiler Analyst; per-well medians; optional robust-z normalisation against controls;
//! Z′ of every per-well feature between positive and negative controls; where the plate map
//! has doses, each translocation readout's dose–response curve and EC50 with its interval.
//!
//! Image sets are processed a few at a time and written as they finish, so memory holds one
//! well's objects, not a plate's.

use super::illumination::Corrections;
use super::{num, parallel_map, Context, ImageSet, Table};
use anyhow::Context as _;
use plateflow_contract::metrics::TextureQuantisation;
use plateflow_contract::params::{FeaturesParams, WellNormalize};
use plateflow_contract::platemap::{control_of, Control, PlateMap};
use plateflow_imaging::features::{
    camera_range, haralick_features_spanning, intensity_features, shape_features, subtract_labels,
    HARALICK_NAMES, ZERNIKE_NAMES,
};
use plateflow_imaging::qc::{median, z_prime_or_why};
use plateflow_imaging::segment::Labels;
use plateflow_imaging::{read_image, GrayImage};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const COMPARTMENTS: [&str; 3] = ["Nuclei", "Cells", "Cytoplasm"];
const SHAPE_NAMES: [&str; 12] = [
    "Area",
    "Perimeter",
    "Eccentricity",
    "MajorAxisLength",
    "MinorAxisLength",
    "Orientation",
    "Solidity",
    "Extent",
    "FormFactor",
    "Compactness",
    "MaxFeretDiameter",
    "MinFeretDiameter",
];
const INTENSITY_NAMES: [&str; 11] = [
    "MeanIntensity",
    "StdIntensity",
    "IntegratedIntensity",
    "MinIntensity",
    "MaxIntensity",
    "MeanIntensityEdge",
    "MedianIntensity",
    "LowerQuartileIntensity",
    "UpperQuartileIntensity",
    "MADIntensity",
    "MassDisplacement",
];

struct Settings {
    channels: Vec<String>,
    scale: u32,
    levels: u32,
    /// Per channel (in `channels`' order), the value given the top texture grey level.
    texture_tops: Vec<u16>,
    translocation: Vec<String>,
}

/// Per channel, the value given the top texture grey level, and where it came from:
/// `texture_max:` where given, else the brightest raw pixel of the sets rounded up to a
/// camera depth ([`camera_range`]). One range for all the task's images (a plate), not one
/// per image: texture must not change with each field's brightest cell.
fn texture_tops(
    explicit: Option<u32>,
    channels: &[String],
    sets: &[&ImageSet],
    threads: usize,
) -> anyhow::Result<Vec<(u16, String)>> {
    if let Some(top) = explicit {
        let top = u16::try_from(top).unwrap_or(u16::MAX);
        return Ok(vec![(top, "`texture_max`".to_string()); channels.len()]);
    }
    let per_set = parallel_map(sets, threads, |set| {
        channels
            .iter()
            .map(|ch| {
                let path = set.channel(ch)?;
                let img = read_image(path)?;
                Ok(img.data.iter().copied().max().unwrap_or(0))
            })
            .collect::<anyhow::Result<Vec<u16>>>()
            .with_context(|| format!("image set {}", set.key))
    });
    let mut brightest = vec![0u16; channels.len()];
    for r in per_set {
        for (b, v) in brightest.iter_mut().zip(r?) {
            *b = (*b).max(v);
        }
    }
    Ok(brightest
        .into_iter()
        .map(|b| (camera_range(b), format!("brightest pixel {b}")))
        .collect())
}

/// The feature columns, in the order [`measure_set`] fills them.
fn feature_columns(s: &Settings) -> Vec<String> {
    let mut cols = Vec::new();
    for comp in COMPARTMENTS {
        for n in SHAPE_NAMES {
            cols.push(format!("{comp}_AreaShape_{n}"));
        }
        for z in ZERNIKE_NAMES {
            cols.push(format!("{comp}_AreaShape_{z}"));
        }
        cols.push(format!("{comp}_Location_Center_X"));
        cols.push(format!("{comp}_Location_Center_Y"));
        for ch in &s.channels {
            for n in INTENSITY_NAMES {
                cols.push(format!("{comp}_Intensity_{n}_{ch}"));
            }
            // Haralick averaged over the four directions: `avg` where CellProfiler writes
            // the direction (00..03); scale and grey levels are recorded.
            for h in HARALICK_NAMES {
                cols.push(format!(
                    "{comp}_Texture_{h}_{ch}_{}_avg_{}",
                    s.scale, s.levels
                ));
            }
        }
    }
    for ch in &s.translocation {
        cols.push(format!("Cells_Translocation_NucCytoRatio_{ch}"));
    }
    cols
}

fn labels_from(path: &Path) -> anyhow::Result<Labels> {
    Ok(Labels::from_image(&read_image(path)?))
}

/// One row per nucleus (cells and cytoplasm share its number); and whether it touches the
/// image border (such objects are kept in the table but left out of well medians).
fn measure_set(
    s: &Settings,
    corrections: &Corrections,
    set: &ImageSet,
    nuclei_path: &Path,
    cells_path: &Path,
) -> anyhow::Result<Vec<(Vec<f64>, bool)>> {
    let nuclei = labels_from(nuclei_path)?;
    let cells = labels_from(cells_path)?;
    anyhow::ensure!(
        (nuclei.width, nuclei.height) == (cells.width, cells.height),
        "label images of {} differ in size",
        set.key
    );
    let cyto = subtract_labels(&cells, &nuclei);
    let images: Vec<GrayImage> = s
        .channels
        .iter()
        .map(|ch| {
            let img = corrections.read(set, ch)?;
            anyhow::ensure!(
                (img.width, img.height) == (nuclei.width, nuclei.height),
                "{}: channel {ch} is {}x{} but its labels are {}x{}",
                set.key,
                img.width,
                img.height,
                nuclei.width,
                nuclei.height
            );
            Ok(img)
        })
        .collect::<anyhow::Result<_>>()?;
    let n = nuclei.count as usize;
    let mut rows: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut border = vec![false; n];
    // Per `translocation` channel, in its order (not the channels' order): the nuclear and
    // cytoplasmic means of each object.
    let mut nuc_mean: Vec<Vec<f64>> = vec![Vec::new(); s.translocation.len()];
    let mut cyto_mean: Vec<Vec<f64>> = vec![Vec::new(); s.translocation.len()];
    for (ci, labels) in [&nuclei, &cells, &cyto].into_iter().enumerate() {
        let shapes = shape_features(labels);
        // A compartment without pixels (a cell no larger than its nucleus has no cytoplasm)
        // has area 0 and no other measure: NaN, left empty in the table and out of medians,
        // not a shape and intensity of 0.
        let empty: Vec<bool> = (0..n)
            .map(|i| shapes.get(i).is_none_or(|sh| sh.area == 0.0))
            .collect();
        let start = rows.first().map_or(0, Vec::len);
        for (i, sh) in shapes.iter().take(n).enumerate() {
            if ci < 2 {
                border[i] |= sh.touches_border;
            }
            rows[i].extend([
                sh.area,
                sh.perimeter,
                sh.eccentricity,
                sh.major_axis_length,
                sh.minor_axis_length,
                sh.orientation,
                sh.solidity,
                sh.extent,
                sh.form_factor,
                sh.compactness,
                sh.max_feret_diameter,
                sh.min_feret_diameter,
            ]);
            rows[i].extend(sh.zernike.iter().copied());
            rows[i].extend([sh.center_x, sh.center_y]);
        }
        for (k, img) in images.iter().enumerate() {
            let int = intensity_features(labels, img);
            let tex = haralick_features_spanning(labels, img, s.scale, s.levels, s.texture_tops[k]);
            for i in 0..n {
                let st = &int[i];
                rows[i].extend([
                    st.mean,
                    st.std,
                    st.integrated,
                    st.min,
                    st.max,
                    st.mean_edge,
                    st.median,
                    st.lower_quartile,
                    st.upper_quartile,
                    st.mad,
                    st.mass_displacement,
                ]);
                rows[i].extend(tex[i].iter().copied());
            }
            if let Some(t) = s.translocation.iter().position(|c| c == &s.channels[k]) {
                let means: Vec<f64> = (0..n)
                    .map(|i| if empty[i] { f64::NAN } else { int[i].mean })
                    .collect();
                match ci {
                    0 => nuc_mean[t] = means,
                    2 => cyto_mean[t] = means,
                    _ => {}
                }
            }
        }
        for (i, row) in rows.iter_mut().enumerate() {
            if empty[i] {
                // Everything this compartment added after its area.
                row[start + 1..].iter_mut().for_each(|v| *v = f64::NAN);
            }
        }
    }
    for k in 0..s.translocation.len() {
        for (i, row) in rows.iter_mut().enumerate() {
            let (a, b) = (nuc_mean[k][i], cyto_mean[k][i]);
            row.push(if b > 0.0 { a / b } else { f64::NAN });
        }
    }
    Ok(rows.into_iter().zip(border).collect())
}

/// Per-well medians of every feature over objects off the border, and the object count.
struct WellAcc {
    plate: String,
    well: String,
    count: usize,
    columns: Vec<Vec<f64>>,
}

impl WellAcc {
    fn medians(&mut self) -> Vec<f64> {
        self.columns
            .iter_mut()
            .map(|c| {
                c.retain(|v| v.is_finite());
                if c.is_empty() {
                    f64::NAN
                } else {
                    median(c)
                }
            })
            .collect()
    }
}

pub fn run(ctx: &mut Context, params: &FeaturesParams) -> anyhow::Result<()> {
    let sets = ctx.image_sets()?;
    // Every set's channels: taken from the first set alone, a channel it lacked was never
    // measured, silently; now a set that lacks one is named when it is read.
    let channels = params
        .channels
        .clone()
        .unwrap_or_else(|| ctx.image_channels(&sets));
    if let Some(ch) = channels.iter().find(|c| ctx.is_label_channel(c)) {
        anyhow::bail!(
            "`channels` names {ch}, which holds label images (a `masks:` or `labels:` channel), \
             not intensities: leave it out"
        );
    }
    // Each once: a channel named twice would be one column read twice.
    let mut translocation = params.translocation.clone();
    let mut seen = std::collections::BTreeSet::new();
    translocation.retain(|c| seen.insert(c.clone()));
    for ch in &translocation {
        anyhow::ensure!(
            channels.contains(ch),
            "`translocation` names {ch}, which is not among the measured channels ({})",
            channels.join(", ")
        );
    }
    let mut s = Settings {
        channels,
        scale: params.texture_scale,
        levels: params.texture_levels,
        texture_tops: Vec::new(),
        translocation,
    };
    // Label images from the upstream `segment` tasks, by image set.
    let mut labels: BTreeMap<String, (Option<PathBuf>, Option<PathBuf>)> = BTreeMap::new();
    for (name, path) in ctx.upstream_files(|n| n.starts_with("labels/")) {
        let stem = name.trim_start_matches("labels/").trim_end_matches(".tif");
        if let Some(k) = stem.strip_suffix("_nuclei") {
            labels.entry(k.to_string()).or_default().0 = Some(path);
        } else if let Some(k) = stem.strip_suffix("_cells") {
            labels.entry(k.to_string()).or_default().1 = Some(path);
        }
    }
    anyhow::ensure!(
        !labels.is_empty() || sets.is_empty(),
        "no label images from upstream: put the `segment` step in `after:` (with `save_labels` on)"
    );
    // Sets curation excluded are not measured (where `segment` ran without them, their
    // labels are still there).
    let excluded = ctx.exclusions()?;
    let mut todo: Vec<(&ImageSet, PathBuf, PathBuf)> = sets
        .iter()
        .filter(|set| !excluded.contains_key(&set.key))
        .filter_map(|set| match labels.get(&set.key) {
            Some((Some(n), Some(c))) => Some((set, n.clone(), c.clone())),
            _ => None,
        })
        .collect();
    // A well's sets one after another (its medians are taken as they end), whatever their
    // keys: plates whose keys differ only in a digest interleave by key.
    todo.sort_by(|a, b| {
        (a.0.plate(), a.0.well(), &a.0.key).cmp(&(b.0.plate(), b.0.well(), &b.0.key))
    });
    let map = ctx.plate_map()?;
    check_plate_map_first(params, map.as_ref(), &todo, s.translocation.len())?;
    let features = feature_columns(&s);
    let meta_names = super::metadata_columns(&sets);

    // Cells table, streamed to disk.
    let cells_path = ctx.out.join("cells.csv");
    let mut cells_out = std::io::BufWriter::new(
        tempfile::NamedTempFile::new_in(&ctx.out).context("creating cells.csv")?,
    );
    let mut header: Vec<String> = vec!["ImageSet".into()];
    header.extend(meta_names.iter().cloned());
    // Plate-map columns the filename already gives (plate, well) are not repeated; the same
    // names serve the per-well table, so that the two tables join on them.
    let map_cols = super::extra_map_columns(map.as_ref(), &meta_names);
    header.extend(map_cols.iter().map(|(_, c)| c.clone()));
    header.push("ObjectNumber".into());
    header.push("TouchesBorder".into());
    header.extend(features.iter().cloned());
    writeln!(cells_out, "{}", super::csv_line(&header))?;

    let mut wells: Vec<(String, String, usize, Vec<f64>)> = Vec::new();
    // Per well, each translocation readout's values over the cells its medians are of: what
    // the dose–response interval resamples.
    let mut readout_cells: Vec<Vec<Vec<f64>>> = Vec::new();
    let readouts = s.translocation.len();
    let mut acc: Option<WellAcc> = None;
    let flush = |acc: &mut Option<WellAcc>, wells: &mut Vec<_>, cells: &mut Vec<_>| {
        if let Some(mut a) = acc.take() {
            let m = a.medians();
            let first = a.columns.len() - readouts;
            cells.push(a.columns.split_off(first));
            wells.push((a.plate, a.well, a.count, m));
        }
    };
    let sets_measured: Vec<&ImageSet> = todo.iter().map(|(set, _, _)| *set).collect();
    let scan = std::time::Instant::now();
    let tops = texture_tops(params.texture_max, &s.channels, &sets_measured, ctx.threads)?;
    for (ch, (top, from)) in s.channels.iter().zip(&tops) {
        ctx.logln(format!(
            "texture of {ch}: {} grey levels over 0..{top} ({from}; set `texture_max:` to fix it)",
            s.levels
        ));
    }
    if params.texture_max.is_none() {
        ctx.logln(format!(
            "texture range: {} image sets read in {:.1} s",
            sets_measured.len(),
            scan.elapsed().as_secs_f64()
        ));
    }
    // Kept with the tables, so `train` and `evaluate` can tell plates quantised differently.
    let quantisation = TextureQuantisation {
        scale: s.scale,
        levels: s.levels,
        tops: s
            .channels
            .iter()
            .zip(&tops)
            .map(|(ch, (top, _))| (ch.clone(), u32::from(*top)))
            .collect(),
        from: s
            .channels
            .iter()
            .zip(&tops)
            .map(|(ch, (_, from))| (ch.clone(), from.clone()))
            .collect(),
    };
    ctx.write_output("texture.json", &serde_json::to_vec_pretty(&quantisation)?)?;
    s.texture_tops = tops.into_iter().map(|(top, _)| top).collect();
    let s = s;
    let mut objects = 0usize;
    let corrections = Corrections::from_upstream(ctx)?;
    if !corrections.is_empty() {
        ctx.logln("intensities measured on images divided by the upstream illumination fields");
    }
    let chunk = (ctx.threads * 2).max(1);
    for batch in todo.chunks(chunk) {
        let results = parallel_map(batch, ctx.threads, |(set, n, c)| {
            measure_set(&s, &corrections, set, n, c)
                .with_context(|| format!("image set {}", set.key))
        });
        for ((set, _, _), r) in batch.iter().zip(results) {
            let rows = r?;
            let (plate, well) = (set.plate().to_string(), set.well().to_string());
            if acc
                .as_ref()
                .is_some_and(|a| a.plate != plate || a.well != well)
            {
                flush(&mut acc, &mut wells, &mut readout_cells);
            }
            let a = acc.get_or_insert_with(|| WellAcc {
                plate: plate.clone(),
                well: well.clone(),
                count: 0,
                columns: vec![Vec::new(); features.len()],
            });
            let map_row = map.as_ref().and_then(|m| m.lookup(&plate, &well));
            for (i, (row, border)) in rows.iter().enumerate() {
                objects += 1;
                a.count += 1;
                if !border {
                    for (col, v) in a.columns.iter_mut().zip(row) {
                        col.push(*v);
                    }
                }
                let mut line: Vec<String> = vec![set.key.clone()];
                line.extend(set.meta.iter().map(|(_, v)| v.clone()));
                for &(c, _) in &map_cols {
                    line.push(map_row.map_or(String::new(), |r| r.values[c].clone()));
                }
                line.push((i + 1).to_string());
                line.push((*border as u8).to_string());
                line.extend(row.iter().map(|&v| num(v)));
                writeln!(cells_out, "{}", super::csv_line(&line))?;
            }
        }
    }
    flush(&mut acc, &mut wells, &mut readout_cells);
    cells_out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing cells.csv: {e}"))?
        .persist(&cells_path)
        .map_err(|e| anyhow::anyhow!("writing cells.csv: {}", e.error))?;

    // Per-well table: plate and well once, then the plate map's other columns.
    let well_header = |cols: &[String]| {
        let mut h = vec!["Metadata_Plate".to_string(), "Metadata_Well".to_string()];
        h.extend(map_cols.iter().map(|(_, c)| c.clone()));
        h.push("Count_Cells".into());
        h.extend(cols.iter().cloned());
        h
    };
    let well_rows = |values: &dyn Fn(usize) -> Vec<f64>| {
        let mut t = Table::new(&well_header(&features));
        for (i, (plate, well, count, _)) in wells.iter().enumerate() {
            let mut line = vec![plate.clone(), well.clone()];
            let map_row = map.as_ref().and_then(|m| m.lookup(plate, well));
            for &(c, _) in &map_cols {
                line.push(map_row.map_or(String::new(), |r| r.values[c].clone()));
            }
            line.push(count.to_string());
            line.extend(values(i).into_iter().map(num));
            t.push_row(line);
        }
        t
    };
    ctx.write_output(
        "wells.csv",
        &well_rows(&|i| wells[i].3.clone()).into_bytes(),
    )?;

    let controls = control_wells(params.controls.as_deref(), map.as_ref(), &wells)?;
    if params.normalize != WellNormalize::None {
        let against_controls = params.normalize == WellNormalize::Controls;
        let (normalized, blank) = normalize(&wells, &controls, against_controls)?;
        for (plate, n, refs) in blank {
            ctx.logln(format!(
                "warning: plate {plate}: {n} of {} features left empty in wells_normalized.csv: \
                 their {refs} reference well(s) do not vary (MAD 0){}",
                features.len(),
                if refs < 3 {
                    "; robust z needs 3 or more reference wells"
                } else {
                    ""
                }
            ));
        }
        ctx.write_output(
            "wells_normalized.csv",
            &well_rows(&|i| normalized[i].clone()).into_bytes(),
        )?;
    }
    // Z′ of every per-well feature, best first: which readouts separate the controls.
    let (pos, neg): (Vec<usize>, Vec<usize>) = (
        (0..wells.len())
            .filter(|&i| controls[i] == Some(Control::Positive))
            .collect(),
        (0..wells.len())
            .filter(|&i| controls[i] == Some(Control::Negative))
            .collect(),
    );
    if !pos.is_empty() && !neg.is_empty() {
        write_z_primes(ctx, &features, &wells, &pos, &neg)?;
    }
    dose_response(
        ctx,
        params,
        map.as_ref(),
        &features[features.len() - readouts..],
        &wells,
        &readout_cells,
    )?;
    ctx.logln(format!(
        "measured {objects} objects in {} image sets ({} without labels skipped), {} wells, {} features per object",
        todo.len(),
        sets.len() - todo.len(),
        wells.len(),
        features.len()
    ));
    Ok(())
}

/// `zprime.csv`: Z′ of every per-well feature, best first; features whose Z′ is undefined (no
/// spread in either control group, equal means, too few wells) last, with an empty cell and
/// the reason in `note`, so that a constant readout cannot rank first with a "perfect" 1.
fn write_z_primes(
    ctx: &mut Context,
    features: &[String],
    wells: &[(String, String, usize, Vec<f64>)],
    pos: &[usize],
    neg: &[usize],
) -> anyhow::Result<()> {
    struct Z {
        name: String,
        plate: String,
        z: Result<f64, String>,
        means: (f64, f64),
        wells: (usize, usize),
    }
    // Per plate: pooled over plates, a plate effect would count as control spread (or hide
    // a plate whose controls do not separate).
    let plates: std::collections::BTreeSet<&str> = wells.iter().map(|w| w.0.as_str()).collect();
    let mut z: Vec<Z> = Vec::new();
    for plate in plates {
        let on = |side: &[usize]| -> Vec<usize> {
            side.iter()
                .copied()
                .filter(|&i| wells[i].0 == plate)
                .collect()
        };
        let (pos, neg) = (on(pos), on(neg));
        let mut per: Vec<Z> = features
            .iter()
            .enumerate()
            .map(|(f, name)| {
                let values = |side: &[usize]| -> Vec<f64> {
                    side.iter()
                        .map(|&i| wells[i].3[f])
                        .filter(|v| v.is_finite())
                        .collect()
                };
                let (p, n) = (values(&pos), values(&neg));
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                Z {
                    name: name.clone(),
                    plate: plate.to_string(),
                    z: z_prime_or_why(&p, &n),
                    means: (mean(&p), mean(&n)),
                    wells: (p.len(), n.len()),
                }
            })
            .collect();
        // Defined values best first, then the undefined ones in feature order.
        per.sort_by(|a, b| match (&a.z, &b.z) {
            (Ok(x), Ok(y)) => y.total_cmp(x),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        });
        z.extend(per);
    }
    let mut t = Table::new(&[
        "feature",
        "z_prime",
        "mean_positive",
        "mean_negative",
        "positive_wells",
        "negative_wells",
        "note",
        "Metadata_Plate",
    ]);
    for r in &z {
        let (zp, note) = match &r.z {
            Ok(v) => (num(*v), String::new()),
            Err(why) => (String::new(), why.clone()),
        };
        t.push_row([
            r.name.clone(),
            zp,
            num(r.means.0),
            num(r.means.1),
            r.wells.0.to_string(),
            r.wells.1.to_string(),
            note,
            r.plate.clone(),
        ]);
    }
    ctx.write_output("zprime.csv", &t.into_bytes())?;
    let mut logged: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &z {
        let n = logged.entry(r.plate.as_str()).or_default();
        if let (Ok(zp), true) = (&r.z, *n < 5) {
            ctx.logln(format!("Z' {zp:.3}  {}  (plate {})", r.name, r.plate));
            *n += 1;
        }
    }
    let undefined = z.iter().filter(|r| r.z.is_err()).count();
    if undefined > 0 {
        ctx.logln(format!(
            "Z' undefined for {undefined} feature(s) (listed last in zprime.csv with the reason)"
        ));
    }
    Ok(())
}

/// Bootstrap rounds of the EC50 interval, and their seed (the same data give the same interval).
const DOSE_ROUNDS: usize = 1000;
const DOSE_SEED: u64 = 17;

/// `dose_response.csv`: per plate and translocation readout, the per-well medians of the
/// per-cell values against the plate map's dose, fitted with a 4-parameter logistic; the
/// EC50's 95 % interval resamples cells within wells. Wells of dose 0 (vehicle) and wells
/// without a dose are left out of the fit. Written when the plate map has a dose column.
fn dose_response(
    ctx: &mut Context,
    params: &FeaturesParams,
    map: Option<&PlateMap>,
    readouts: &[String],
    wells: &[(String, String, usize, Vec<f64>)],
    cells: &[Vec<Vec<f64>>],
) -> anyhow::Result<()> {
    let Some(map) = map else {
        return Ok(());
    };
    if readouts.is_empty() {
        if let Some(d) = &params.dose {
            ctx.logln(format!(
                "`dose: {d}`: no dose-response fitted, the step measures no `translocation` readout"
            ));
        }
        return Ok(());
    }
    let Some(dose_col) = map.dose_column(params.dose.as_deref())? else {
        return Ok(());
    };
    // Each well's dose; wells the map does not list or gives no dose are left out.
    let mut dose_of: Vec<Option<f64>> = Vec::with_capacity(wells.len());
    let mut undosed = 0;
    for (plate, well, _, _) in wells {
        let raw = map
            .lookup(plate, well)
            .map(|r| r.values[dose_col].trim())
            .unwrap_or("");
        let d = parse_dose(raw).with_context(|| {
            format!(
                "plate {plate}, well {well}: dose `{raw}` (plate map {}, column {}) is not a number ≥ 0",
                map.file, map.columns[dose_col]
            )
        })?;
        if d.is_none() {
            undosed += 1;
        }
        dose_of.push(d);
    }
    if undosed > 0 {
        ctx.logln(format!(
            "{undosed} well(s) without a dose in column {} left out of the dose-response fit",
            map.columns[dose_col]
        ));
    }
    let mut t = Table::new(&super::readout::DOSE_RESPONSE_COLUMNS);
    // Per plate and treatment: a plate of several compounds has a series of each.
    let treatment_col = map.treatment_column();
    let treatment_of: Vec<String> = wells
        .iter()
        .map(|(plate, well, _, _)| {
            treatment_col
                .and_then(|c| {
                    map.lookup(plate, well)
                        .map(|r| r.values[c].trim().to_string())
                })
                .unwrap_or_default()
        })
        .collect();
    let all = super::readout::dose_series(
        (0..wells.len()).map(|i| (wells[i].0.as_str(), treatment_of[i].as_str(), dose_of[i])),
    );
    for (k, readout) in readouts.iter().enumerate() {
        for ((plate, treatment), members) in &all {
            let series: Vec<(f64, Vec<f64>)> = members
                .iter()
                .filter_map(|&i| dose_of[i].map(|d| (d, cells[i][k].clone())))
                .collect();
            let label = format!("{plate}{}", super::readout::of_treatment(treatment));
            let fit =
                plateflow_learn::dose::ec50_with_interval(&series, &median, DOSE_ROUNDS, DOSE_SEED);
            match &fit {
                Ok(r) => {
                    let c = &r.curve;
                    ctx.logln(format!(
                        "EC50 {readout}, plate {label}: {} [95% CI {}, {}] (Hill {:.2}, {} to {}; {} wells, {} doses; {} of {DOSE_ROUNDS} resamples of cells fitted)",
                        num(c.ec50),
                        num(r.ec50_ci95[0]),
                        num(r.ec50_ci95[1]),
                        c.hill,
                        num(c.bottom),
                        num(c.top),
                        r.wells,
                        r.doses,
                        r.rounds_fitted
                    ));
                }
                Err(why) => ctx.logln(format!("EC50 {readout}, plate {label}: not fitted: {why}")),
            }
            let row = super::readout::dose_response_row(&series, &fit);
            let mut line = vec![readout.clone(), plate.clone(), treatment.clone()];
            line.extend(row);
            t.push_row(line);
        }
    }
    ctx.write_output("dose_response.csv", &t.into_bytes())?;
    Ok(())
}

/// Each well's control role from the plate map (none without a map or a control column).
fn control_wells(
    controls: Option<&str>,
    map: Option<&PlateMap>,
    wells: &[(String, String, usize, Vec<f64>)],
) -> anyhow::Result<Vec<Option<Control>>> {
    let Some(map) = map else {
        return Ok(vec![None; wells.len()]);
    };
    let Some(col) = map.control_column(controls)? else {
        return Ok(vec![None; wells.len()]);
    };
    Ok(wells
        .iter()
        .map(|(p, w, _, _)| map.lookup(p, w).and_then(|r| control_of(&r.values[col])))
        .collect())
}

/// Robust z per plate: (x − median_ref) / (1.4826 · MAD_ref), the reference being the plate's
/// negative controls (`by_controls`) or all its wells.
/// A plate map's dose: a number ≥ 0, or none where the cell is empty or says so (`NA`,
/// `N/A`, `nan`, `-`, `none`, as spreadsheets leave untreated wells); `None` outside.
fn parse_dose(raw: &str) -> Option<Option<f64>> {
    if plateflow_contract::platemap::is_missing_value(raw) {
        return Some(None);
    }
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|d| d.is_finite() && *d >= 0.0)
        .map(Some)
}

/// The plate-map questions the tables after measuring will ask, asked before it: a map that
/// cannot answer them (no negative control on a plate to normalise against, a dose that is
/// not a number, two columns that could be the dose) fails in seconds, naming every problem,
/// instead of after every image of the task is measured.
fn check_plate_map_first(
    params: &FeaturesParams,
    map: Option<&PlateMap>,
    todo: &[(&ImageSet, PathBuf, PathBuf)],
    readouts: usize,
) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    let wells: Vec<(String, String, usize, Vec<f64>)> = todo
        .iter()
        .map(|(s, _, _)| (s.plate().to_string(), s.well().to_string()))
        .filter(|pw| seen.insert(pw.clone()))
        .map(|(p, w)| (p, w, 0, Vec::new()))
        .collect();
    let controls = control_wells(params.controls.as_deref(), map, &wells)?;
    if params.normalize == WellNormalize::Controls {
        let plates: std::collections::BTreeSet<&str> = wells.iter().map(|w| w.0.as_str()).collect();
        let without: Vec<&str> = plates
            .into_iter()
            .filter(|&p| {
                !(0..wells.len()).any(|i| wells[i].0 == p && controls[i] == Some(Control::Negative))
            })
            .collect();
        anyhow::ensure!(
            without.is_empty(),
            "plate(s) {} have no negative control wells to normalise against: mark them in the \
             plate map's control column, or use `normalize: all`",
            without.join(", ")
        );
    }
    if let (Some(map), true) = (map, readouts > 0) {
        if let Some(col) = map.dose_column(params.dose.as_deref())? {
            let bad: Vec<String> = wells
                .iter()
                .filter_map(|(plate, well, _, _)| {
                    let raw = map.lookup(plate, well)?.values[col].trim();
                    parse_dose(raw)
                        .is_none()
                        .then(|| format!("{plate} {well} `{raw}`"))
                })
                .collect();
            anyhow::ensure!(
                bad.is_empty(),
                "{} dose(s) in column {} of {} are not a number ≥ 0: {}{}; write the dose as a \
                 number, or leave the cell empty (or NA) for wells without one",
                bad.len(),
                map.columns[col],
                map.file,
                bad.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if bad.len() > 5 { ", …" } else { "" }
            );
        }
    }
    Ok(())
}

/// Robust z of each well's features against its plate's reference wells (negative controls,
/// or all wells), and per plate the features left empty because their reference wells do not
/// vary (MAD 0: one control well, or a feature equal in most of them), with the number of
/// reference wells.
#[allow(clippy::type_complexity)]
fn normalize(
    wells: &[(String, String, usize, Vec<f64>)],
    controls: &[Option<Control>],
    by_controls: bool,
) -> anyhow::Result<(Vec<Vec<f64>>, Vec<(String, usize, usize)>)> {
    let mut out = vec![Vec::new(); wells.len()];
    let mut blank = Vec::new();
    let plates: std::collections::BTreeSet<&str> = wells.iter().map(|w| w.0.as_str()).collect();
    for plate in plates {
        let members: Vec<usize> = (0..wells.len()).filter(|&i| wells[i].0 == plate).collect();
        let reference: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| !by_controls || controls[i] == Some(Control::Negative))
            .collect();
        anyhow::ensure!(
            !reference.is_empty(),
            "plate {plate} has no negative control wells to normalise against: mark them in \
             the plate map's control column, or use `normalize: all`"
        );
        let nf = wells[members[0]].3.len();
        let mut flat = 0;
        for f in 0..nf {
            let r: Vec<f64> = reference
                .iter()
                .map(|&i| wells[i].3[f])
                .filter(|v| v.is_finite())
                .collect();
            let (m, mad) = if r.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                let m = median(&r);
                let dev: Vec<f64> = r.iter().map(|v| (v - m).abs()).collect();
                (m, median(&dev))
            };
            let scale = 1.4826 * mad;
            if scale.is_nan() || scale <= 0.0 {
                flat += 1;
            }
            for &i in &members {
                let v = (wells[i].3[f] - m) / scale;
                out[i].push(if v.is_finite() { v } else { f64::NAN });
            }
        }
        if flat > 0 {
            blank.push((plate.to_string(), flat, reference.len()));
        }
    }
    Ok((out, blank))
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    /// Two objects: 1 a 6×6 nucleus in a 12×12 cell, 2 a cell no larger than its nucleus.
    /// GFP is twice as bright in nucleus 1 as in its cytoplasm, NFkB a quarter: each ratio
    /// lands in its own column though `translocation` names them in another order than the
    /// channels; object 2's cytoplasm has no pixels, so its measures are NaN, not 0.
    #[test]
    fn translocation_columns_follow_their_channels_and_empty_cytoplasm_is_nan() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let (w, h) = (30u32, 16u32);
        let nucleus1 = |x: u32, y: u32| (3..9).contains(&x) && (4..10).contains(&y);
        let cell1 = |x: u32, y: u32| (1..13).contains(&x) && (2..14).contains(&y);
        let object2 = |x: u32, y: u32| (18..24).contains(&x) && (5..11).contains(&y);
        let write = |name: &str, f: &dyn Fn(u32, u32) -> u16| {
            let data: Vec<u16> = (0..w * h).map(|i| f(i % w, i / w)).collect();
            let path = work.join(name);
            plateflow_imaging::write::write_tiff_u16(&path, w, h, &data).unwrap();
            path
        };
        let by_part = |nuc: u16, cyto: u16| {
            move |x: u32, y: u32| {
                if nucleus1(x, y) || object2(x, y) {
                    nuc
                } else if cell1(x, y) {
                    cyto
                } else {
                    10
                }
            }
        };
        write("DNA.tif", &by_part(1000, 20));
        write("GFP.tif", &by_part(200, 100));
        write("NFkB.tif", &by_part(50, 200));
        let nuclei = write("nuclei.tif", &|x, y| {
            if nucleus1(x, y) {
                1
            } else if object2(x, y) {
                2
            } else {
                0
            }
        });
        let cells = write("cells.tif", &|x, y| {
            if cell1(x, y) {
                1
            } else if object2(x, y) {
                2
            } else {
                0
            }
        });
        let images = testing::one_well(&["DNA", "GFP", "NFkB"]);
        let task = testing::task("features", &[]);
        let ctx = testing::context(work, &task, &images, &[]);
        let sets = ctx.image_sets().unwrap();
        let s = Settings {
            channels: vec!["DNA".into(), "GFP".into(), "NFkB".into()],
            scale: 3,
            levels: 256,
            texture_tops: vec![u16::MAX; 3],
            translocation: vec!["NFkB".into(), "GFP".into()],
        };
        let rows = measure_set(&s, &Corrections::default(), &sets[0], &nuclei, &cells).unwrap();
        let cols = feature_columns(&s);
        let at = |obj: usize, name: &str| rows[obj].0[cols.iter().position(|c| c == name).unwrap()];
        assert!((at(0, "Cells_Translocation_NucCytoRatio_GFP") - 2.0).abs() < 1e-9);
        assert!((at(0, "Cells_Translocation_NucCytoRatio_NFkB") - 0.25).abs() < 1e-9);
        assert_eq!(at(1, "Cytoplasm_AreaShape_Area"), 0.0);
        for name in [
            "Cytoplasm_Intensity_MeanIntensity_GFP",
            "Cytoplasm_AreaShape_Eccentricity",
            "Cells_Translocation_NucCytoRatio_GFP",
        ] {
            assert!(at(1, name).is_nan(), "{name}: {}", at(1, name));
        }
        // Object 2's nucleus and cell are measured as usual.
        assert!((at(1, "Nuclei_Intensity_MeanIntensity_GFP") - 200.0 / 65535.0).abs() < 1e-12);
        assert_eq!(rows[0].0.len(), cols.len());
    }

    /// A 12-bit camera's 16-bit files: texture grey levels span 0..4095 by default (over
    /// 0..65535 its nuclei fall into one or two levels and lose their texture), one range for
    /// all the task's sets whatever each one's brightest pixel; `texture_max:` wins.
    #[test]
    fn texture_spans_the_camera_range_of_all_the_sets() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let entries: Vec<(String, Vec<(&str, &str)>)> = [("A01", "DNA"), ("A02", "DNA")]
            .iter()
            .map(|(w, ch)| {
                let fields = vec![("plate", "P1"), ("well", *w), ("channel", *ch)];
                (format!("P1_{w}_{ch}.tif"), fields)
            })
            .collect();
        // A01's brightest pixel is 900 (10 bits would do), A02's 3,000: both get 12 bits.
        for (name, top) in [("P1_A01_DNA.tif", 900u16), ("P1_A02_DNA.tif", 3000)] {
            let data: Vec<u16> = (0..64u32)
                .map(|i| (400 + i * u32::from(top - 400) / 63) as u16)
                .collect();
            plateflow_imaging::write::write_tiff_u16(&work.join(name), 8, 8, &data).unwrap();
        }
        let images = testing::images(&entries);
        let task = testing::task("features", &[]);
        let ctx = testing::context(work, &task, &images, &[]);
        let sets = ctx.image_sets().unwrap();
        let refs: Vec<&ImageSet> = sets.iter().collect();
        let dna = vec!["DNA".to_string()];
        let tops = texture_tops(None, &dna, &refs, 2).unwrap();
        assert_eq!(tops[0].0, 4095, "{tops:?}");
        assert!(tops[0].1.contains("3000"), "{tops:?}");
        assert_eq!(texture_tops(Some(1000), &dna, &refs, 2).unwrap()[0].0, 1000);
        // An unreadable image is named.
        std::fs::write(work.join("P1_A02_DNA.tif"), b"not a tiff").unwrap();
        let e = format!("{:#}", texture_tops(None, &dna, &refs, 1).unwrap_err());
        assert!(e.contains("P1_A02_DNA.tif"), "{e}");
    }

    /// A plate map that cannot answer what the tables will ask fails before measuring, naming
    /// every problem; `NA` and `-` are wells without a dose, not errors.
    #[test]
    fn plate_map_problems_are_found_before_measuring() {
        assert_eq!(parse_dose(" NA "), Some(None));
        assert_eq!(parse_dose("-"), Some(None));
        assert_eq!(parse_dose("0.5"), Some(Some(0.5)));
        assert_eq!(parse_dose("DMSO"), None);
        assert_eq!(parse_dose("-1"), None);
        let map = PlateMap::parse(
            "map.csv",
            b"plate,well,dose,control\nP1,A01,1,negative\nP1,A02,DMSO,\nP1,A03,NA,\nP2,A01,2,\n",
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let entries: Vec<(String, Vec<(&str, &str)>)> =
            [("P1", "A01"), ("P1", "A02"), ("P1", "A03"), ("P2", "A01")]
                .iter()
                .map(|(p, w)| {
                    let fields = vec![("plate", *p), ("well", *w), ("channel", "DNA")];
                    (format!("{p}_{w}.tif"), fields)
                })
                .collect();
        let images = testing::images(&entries);
        let task = testing::task("features", &[]);
        let ctx = testing::context(tmp.path(), &task, &images, &[]);
        let sets = ctx.image_sets().unwrap();
        let todo: Vec<(&ImageSet, PathBuf, PathBuf)> = sets
            .iter()
            .map(|s| (s, PathBuf::new(), PathBuf::new()))
            .collect();
        let params = |normalize: WellNormalize| FeaturesParams {
            normalize,
            ..Default::default()
        };
        let e = check_plate_map_first(&params(WellNormalize::Controls), Some(&map), &todo, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("P2") && !e.contains("P1"), "{e}");
        let e = check_plate_map_first(&params(WellNormalize::None), Some(&map), &todo, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 dose(s)") && e.contains("P1 A02 `DMSO`"),
            "{e}"
        );
        check_plate_map_first(&params(WellNormalize::None), Some(&map), &todo, 0).unwrap();
    }

    /// A label channel named among the channels to measure is refused, by name.
    #[test]
    fn label_channels_are_not_measured_as_intensities() {
        let tmp = tempfile::tempdir().unwrap();
        let images = testing::one_well(&["DNA", "masks"]);
        let task = testing::task("features", &["masks"]);
        let mut ctx = testing::context(tmp.path(), &task, &images, &[]);
        let params = FeaturesParams {
            channels: Some(vec!["DNA".into(), "masks".into()]),
            ..Default::default()
        };
        let e = run(&mut ctx, &params).unwrap_err().to_string();
        assert!(e.contains("masks") && e.contains("label images"), "{e}");
    }

    /// Z′ is per plate: two plates whose controls separate well, but sit 100 apart, each
    /// keep a high Z′ (pooled, the plate shift counted as control spread: Z′ below 0).
    #[test]
    fn z_prime_is_per_plate() {
        let tmp = tempfile::tempdir().unwrap();
        let task = testing::task("features", &[]);
        let mut ctx = testing::context(tmp.path(), &task, &[], &[]);
        let mut wells = Vec::new();
        for (plate, shift) in [("P1", 0.0), ("P2", 100.0)] {
            for (k, v) in [10.0, 10.1, 9.9, 0.0, 0.1, -0.1].iter().enumerate() {
                wells.push((plate.to_string(), format!("A{k:02}"), 1, vec![v + shift]));
            }
        }
        let pos: Vec<usize> = [0, 1, 2, 6, 7, 8].into();
        let neg: Vec<usize> = [3, 4, 5, 9, 10, 11].into();
        write_z_primes(&mut ctx, &["F".to_string()], &wells, &pos, &neg).unwrap();
        let text = std::fs::read_to_string(tmp.path().join("out/zprime.csv")).unwrap();
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), 2, "{text}");
        for (row, plate) in rows.iter().zip(["P1", "P2"]) {
            let f: Vec<&str> = row.split(',').collect();
            assert_eq!(f[7], plate, "{text}");
            assert!(f[1].parse::<f64>().unwrap() > 0.5, "{text}");
        }
    }

    /// Fields with commas or quotes (a plate map's `2,4-dinitrophenol`) are quoted.
    #[test]
    fn csv_lines_quote_what_needs_it() {
        assert_eq!(
            super::super::csv_line(&["a", "2,4-DNP", "say \"hi\"", "x"]),
            r#"a,"2,4-DNP","say ""hi""",x"#
        );
    }
}
