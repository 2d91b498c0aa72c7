//! `curate`: image quality control per plate. Every image of every channel is measured (blur,
//! saturation, intensity, a rough object count); each metric becomes a robust z-score within
//! its plate and channel (median/MAD, so a few bad images cannot hide themselves by inflating
//! the spread); flagged image sets go into `exclusions.csv`, which `segment` honours.
//! Also label QC against the plate map, Z′ of the QC metrics between controls, and one SVG
//! plate heat map per metric and channel.

use super::{num, parallel_map, Context, ImageSet, Table};
use anyhow::Context as _;
use plateflow_contract::params::CurateParams;
use plateflow_contract::platemap::{control_of, Control, PlateMap};
use plateflow_imaging::heatmap::{plate_heatmap_svg, plate_shape};
use plateflow_imaging::qc::{measure, median, robust_z, rough_object_count, z_prime_or_why};
use plateflow_imaging::read_image;
use std::collections::{BTreeMap, BTreeSet};

/// Metric names, CellProfiler style (MeasureImageQuality).
const METRICS: [&str; 9] = [
    "MeanIntensity",
    "StdIntensity",
    "MinIntensity",
    "MaxIntensity",
    "FocusScore",
    "LocalFocusScore_LaplacianVariance",
    "PowerLogLogSlope",
    "PercentMaximal",
    "ObjectCount",
];

struct ImageRow {
    set: usize,
    channel: String,
    values: [f64; 9],
    percent_min: f64,
}

fn measure_image(set: &ImageSet, channel: &str) -> anyhow::Result<([f64; 9], f64)> {
    let img = read_image(set.channel(channel)?)?;
    let q = measure(&img);
    let scale = img.max_value() as f64;
    let values = [
        q.mean / scale,
        q.std / scale,
        q.min as f64 / scale,
        q.max as f64 / scale,
        q.focus_score,
        q.laplacian_variance,
        q.power_log_log_slope,
        q.percent_max,
        rough_object_count(&img) as f64,
    ];
    Ok((values, q.percent_min))
}

pub fn run(ctx: &mut Context, params: &CurateParams) -> anyhow::Result<()> {
    let t = params.z_threshold;
    let sat_limit = params.saturation_percent;
    let sets = ctx.image_sets()?;
    let jobs: Vec<(usize, String)> = sets
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.channels.keys().map(move |c| (i, c.clone())))
        // Label images (users' masks) are not images to judge: all saturated, all outliers.
        .filter(|(_, c)| !ctx.is_label_channel(c))
        .collect();
    let measured = parallel_map(&jobs, ctx.threads, |(i, ch)| {
        measure_image(&sets[*i], ch)
            .with_context(|| format!("image set {}, channel {ch}", sets[*i].key))
    });
    let mut rows = Vec::with_capacity(jobs.len());
    for ((i, ch), m) in jobs.iter().zip(measured) {
        let (values, percent_min) = m?;
        rows.push(ImageRow {
            set: *i,
            channel: ch.clone(),
            values,
            percent_min,
        });
    }

    // Robust z of every metric within (plate, channel, time point and z-plane): judged
    // across time points, photobleaching made late frames "intensity outliers"; across
    // planes, every plane off focus was "blurred".
    let mut z = vec![[0f64; 9]; rows.len()];
    let group_of = |row| group_key(&sets, row);
    let mut groups: BTreeMap<(&str, &str, String), Vec<usize>> = BTreeMap::new();
    for (r, row) in rows.iter().enumerate() {
        groups.entry(group_of(row)).or_default().push(r);
    }
    let mut plate_median_count: BTreeMap<(&str, &str, String), f64> = BTreeMap::new();
    let mut unjudged = Vec::new();
    for (key, members) in &groups {
        // Fewer than this, a robust z cannot reach the threshold (two images are always
        // ±0.67 apart): say so, rather than pass a black field in silence.
        if members.len() < MIN_TO_JUDGE {
            let frame = if key.2.is_empty() {
                String::new()
            } else {
                format!(" ({})", key.2)
            };
            unjudged.push(format!("{} {}{frame}: {}", key.0, key.1, members.len()));
        }
        for (m, _) in METRICS.iter().enumerate() {
            let v: Vec<f64> = members.iter().map(|&r| rows[r].values[m]).collect();
            for (&r, zv) in members.iter().zip(robust_z(&v)) {
                z[r][m] = zv;
            }
        }
        let counts: Vec<f64> = members.iter().map(|&r| rows[r].values[8]).collect();
        plate_median_count.insert(key.clone(), median(&counts));
    }

    if !unjudged.is_empty() {
        ctx.logln(format!(
            "warning: too few images to judge against each other (blur, intensity, empty \
             fields need {MIN_TO_JUDGE} or more per plate and channel; only saturation is \
             checked): {}",
            unjudged.join("; ")
        ));
    }

    // Flags, each with its reason.
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); rows.len()];
    for (r, row) in rows.iter().enumerate() {
        let v = &row.values;
        let typical = plate_median_count[&group_of(row)];
        let why = &mut reasons[r];
        if v[7] > sat_limit {
            why.push(format!(
                "saturated {}: {:.2}% of pixels at the maximum (limit {sat_limit}%)",
                row.channel, v[7]
            ));
        }
        // Few objects alone is not enough: a diffuse stain (a cytoplasmic reporter) gives no
        // countable objects either. An empty field is also dark for its plate.
        let empty = typical >= 3.0 && v[8] <= 0.1 * typical && z[r][0] < -t;
        if empty {
            why.push(format!(
                "empty {}: {} objects where the plate's median is {typical}, mean intensity \
                 robust z {:.1}",
                row.channel, v[8], z[r][0]
            ));
        }
        if z[r][6] < -t && !empty {
            why.push(format!(
                "blurred {}: PowerLogLogSlope {:.2} (robust z {:.1})",
                row.channel, v[6], z[r][6]
            ));
        }
        if why.is_empty() && z[r][0].abs() > 2.0 * t {
            why.push(format!(
                "intensity outlier {}: mean {:.4} (robust z {:.1})",
                row.channel, v[0], z[r][0]
            ));
        }
    }

    // qc.csv: one row per image.
    let meta_names = super::metadata_columns(&sets);
    let mut header = vec!["ImageSet".to_string()];
    header.extend(meta_names);
    header.push("Channel".into());
    for m in METRICS {
        header.push(format!("ImageQuality_{m}"));
    }
    header.push("ImageQuality_PercentMinimal".into());
    for m in METRICS {
        header.push(format!("RobustZ_{m}"));
    }
    header.extend(["Flagged".to_string(), "Reason".to_string()]);
    let mut table = Table::new(&header);
    for (r, row) in rows.iter().enumerate() {
        let set = &sets[row.set];
        let mut line = vec![set.key.clone()];
        line.extend(set.meta.iter().map(|(_, v)| v.clone()));
        line.push(row.channel.clone());
        line.extend(row.values.iter().map(|&v| num(v)));
        line.push(num(row.percent_min));
        line.extend(z[r].iter().map(|&v| num(v)));
        line.push((!reasons[r].is_empty() as u8).to_string());
        line.push(reasons[r].join("; "));
        table.push_row(line);
    }
    ctx.write_output("qc.csv", &table.into_bytes())?;

    // exclusions.csv: image sets with any flagged image.
    let mut excluded: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (r, row) in rows.iter().enumerate() {
        if !reasons[r].is_empty() {
            excluded
                .entry(row.set)
                .or_default()
                .extend(reasons[r].iter().cloned());
        }
    }
    let mut ex = Table::new(&["set", "plate", "well", "reason"]);
    for (&s, why) in &excluded {
        ex.push_row([
            sets[s].key.clone(),
            sets[s].plate().to_string(),
            sets[s].well().to_string(),
            why.join("; "),
        ]);
    }
    ctx.write_output("exclusions.csv", &ex.into_bytes())?;
    let flagged_wells: BTreeSet<(String, String)> = excluded
        .keys()
        .map(|&s| (sets[s].plate().to_string(), sets[s].well().to_string()))
        .collect();

    // Per-well medians over sites, for heat maps and Z′.
    let mut per_well: BTreeMap<(String, String, String), Vec<Vec<f64>>> = BTreeMap::new();
    for row in &rows {
        let s = &sets[row.set];
        let e = per_well
            .entry((s.plate().into(), row.channel.clone(), s.well().into()))
            .or_insert_with(|| vec![Vec::new(); METRICS.len()]);
        for (m, v) in row.values.iter().enumerate() {
            e[m].push(*v);
        }
    }
    let well_value = |k: &(String, String, String), m: usize| median(&per_well[k][m]);
    let has_wells = sets.iter().any(|s| !s.well().is_empty());
    if has_wells {
        let keys: BTreeSet<(String, String)> = per_well
            .keys()
            .map(|(p, c, _)| (p.clone(), c.clone()))
            .collect();
        for (plate, ch) in &keys {
            let wells: Vec<&(String, String, String)> = per_well
                .keys()
                .filter(|(p, c, _)| p == plate && c == ch)
                .collect();
            let names: Vec<String> = wells.iter().map(|k| k.2.clone()).collect();
            let (nr, nc) = plate_shape(&names);
            let flagged: Vec<String> = flagged_wells
                .iter()
                .filter(|(p, _)| p == plate)
                .map(|(_, w)| w.clone())
                .collect();
            for (m, metric) in METRICS.iter().enumerate() {
                let values: Vec<(String, Option<f64>)> = wells
                    .iter()
                    .map(|k| {
                        (
                            k.2.clone(),
                            Some(well_value(k, m)).filter(|v| v.is_finite()),
                        )
                    })
                    .collect();
                let svg = plate_heatmap_svg(
                    &format!("plate {plate}: {metric} ({ch})"),
                    metric,
                    &values,
                    nr,
                    nc,
                    &flagged,
                );
                ctx.write_output(
                    &format!("heatmaps/{plate}_{metric}_{ch}.svg"),
                    svg.as_bytes(),
                )?;
            }
        }
    }

    // Label QC and Z′, when there is a plate map.
    let map = ctx.plate_map()?;
    let mut label_notes = 0;
    if let Some(map) = &map {
        let mut lq = Table::new(&["check", "plate", "well", "detail"]);
        let plates: BTreeSet<String> = sets.iter().map(|s| s.plate().to_string()).collect();
        let image_wells: BTreeSet<(String, String)> = sets
            .iter()
            .map(|s| (s.plate().to_string(), s.well().to_string()))
            .collect();
        for plate in &plates {
            for row in map
                .rows
                .iter()
                .filter(|r| r.plate.as_deref().is_none_or(|p| p == plate))
            {
                if !image_wells.contains(&(plate.clone(), row.well.clone())) {
                    lq.push_row([
                        "well_without_images".into(),
                        plate.clone(),
                        row.well.clone(),
                        format!("{} line {}", map.file, row.line),
                    ]);
                    label_notes += 1;
                }
            }
        }
        for (plate, well) in &image_wells {
            if map.lookup(plate, well).is_none() {
                lq.push_row([
                    "images_without_plate_map_row".into(),
                    plate.clone(),
                    well.clone(),
                    format!("no row in {}", map.file),
                ]);
                label_notes += 1;
            }
        }
        // Named by well: the task reads its plate's slice of the map, whose line numbers
        // are not the file's. (Rows that disagree in a column a step reads were refused
        // before the run.)
        // Once per well (a map of images repeats each well once per field), not per row.
        let repeated: BTreeSet<usize> = map.duplicates.iter().map(|&(_, first)| first).collect();
        for row in map.rows.iter().filter(|r| repeated.contains(&r.line)) {
            lq.push_row([
                "duplicate_plate_map_row".into(),
                row.plate.clone().unwrap_or_default(),
                row.well.clone(),
                format!("{} has more than one row for this well", map.file),
            ]);
            label_notes += 1;
        }
        // Identical image content in two places: a copy error at acquisition or export.
        let mut by_digest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &sets {
            for (ch, path) in s.channels.iter().filter(|(c, _)| !ctx.is_label_channel(c)) {
                let d = plateflow_store::hash_file(path)
                    .with_context(|| format!("hashing {}", path.display()))?;
                by_digest
                    .entry(d.to_string())
                    .or_default()
                    .push(format!("{} {ch}", s.key));
            }
        }
        for (d, places) in by_digest.iter().filter(|(_, p)| p.len() > 1) {
            lq.push_row([
                "duplicate_image".into(),
                String::new(),
                String::new(),
                format!("identical content ({d}) in: {}", places.join(", ")),
            ]);
            label_notes += 1;
        }
        if let Some(col) = map.label_column(params.label.as_deref())? {
            for plate in &plates {
                let mut balance: BTreeMap<String, usize> = BTreeMap::new();
                for (p, w) in image_wells.iter().filter(|(p, _)| p == plate) {
                    if let Some(r) = map.lookup(p, w) {
                        *balance.entry(r.values[col].clone()).or_default() += 1;
                    }
                }
                let detail = balance
                    .iter()
                    .map(|(k, n)| format!("{k}: {n} wells"))
                    .collect::<Vec<_>>()
                    .join("; ");
                lq.push_row(["class_balance".into(), plate.clone(), String::new(), detail]);
            }
        }
        ctx.write_output("label_qc.csv", &lq.into_bytes())?;
        zprime_of_metrics(ctx, params.controls.as_deref(), map, &per_well)?;
    }

    let n_images = rows.len();
    let n_flagged = reasons.iter().filter(|r| !r.is_empty()).count();
    ctx.logln(format!(
        "measured {n_images} images in {} image sets: {n_flagged} images flagged, {} image sets excluded, {label_notes} label-QC findings",
        sets.len(),
        excluded.len()
    ));
    for (&s, why) in &excluded {
        let line = format!("  excluded {}: {}", sets[s].key, why.join("; "));
        ctx.logln(line);
    }
    Ok(())
}

/// Z′ of each QC metric's per-well median between positive and negative control wells.
fn zprime_of_metrics(
    ctx: &Context,
    controls: Option<&str>,
    map: &PlateMap,
    per_well: &BTreeMap<(String, String, String), Vec<Vec<f64>>>,
) -> anyhow::Result<()> {
    let Some(col) = map.control_column(controls)? else {
        return Ok(());
    };
    let mut t = Table::new(&[
        "plate",
        "channel",
        "metric",
        "z_prime",
        "positive_wells",
        "negative_wells",
        "note",
    ]);
    let mut any = false;
    let groups: BTreeSet<(String, String)> = per_well
        .keys()
        .map(|(p, c, _)| (p.clone(), c.clone()))
        .collect();
    for (plate, ch) in groups {
        for (m, name) in METRICS.iter().enumerate() {
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            for ((p, c, w), vals) in per_well {
                if *p != plate || *c != ch {
                    continue;
                }
                let v = median(&vals[m]);
                match map.lookup(p, w).and_then(|r| control_of(&r.values[col])) {
                    Some(Control::Positive) => pos.push(v),
                    Some(Control::Negative) => neg.push(v),
                    None => {}
                }
            }
            if pos.is_empty() || neg.is_empty() {
                continue;
            }
            // A metric without spread in the controls (e.g. no saturation anywhere) has no Z′:
            // an empty cell and the reason, not a perfect 1.
            let (zp, note) = match z_prime_or_why(&pos, &neg) {
                Ok(z) => (num(z), String::new()),
                Err(why) => (String::new(), why),
            };
            any = true;
            t.push_row([
                plate.clone(),
                ch.clone(),
                name.to_string(),
                zp,
                pos.len().to_string(),
                neg.len().to_string(),
                note,
            ]);
        }
    }
    if any {
        ctx.write_output("zprime.csv", &t.into_bytes())?;
    }
    Ok(())
}

/// The images a row is judged among: its plate, channel and frame (time point, z-plane).
fn group_key<'a>(sets: &'a [ImageSet], row: &'a ImageRow) -> (&'a str, &'a str, String) {
    let set = &sets[row.set];
    let frame: Vec<&str> = set
        .meta
        .iter()
        .filter(|(k, _)| is_frame_field(k))
        .map(|(_, v)| v.as_str())
        .collect();
    (set.plate(), row.channel.as_str(), frame.join("/"))
}

/// Images per plate and channel below which robust z-scores judge nothing.
const MIN_TO_JUDGE: usize = 5;

/// A filename field that numbers time points or z-planes (`{t}`, `{timepoint}`, `{z}`,
/// `{plane}`, …): images of one well differ along it by design, not by a defect.
fn is_frame_field(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "t" | "time"
            | "timepoint"
            | "time_point"
            | "tp"
            | "frame"
            | "z"
            | "plane"
            | "zplane"
            | "z_plane"
            | "slice"
            | "zslice"
            | "stack"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::testing;

    /// A time-lapse whose last frame has bleached to a tenth: each time point is judged
    /// among itself, so no frame is an "outlier" of the plate for being late.
    #[test]
    fn time_points_are_judged_among_themselves() {
        let tmp = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        for w in 0..6u32 {
            for t in 1..=10u32 {
                let gain = if t == 10 {
                    0.1
                } else {
                    1.0 + 0.01 * f64::from(w + t)
                };
                let data: Vec<u16> = (0..64u32 * 64)
                    .map(|i| {
                        let (x, y) = (i % 64, i / 64);
                        let blob = if (x / 8 + y / 8) % 3 == 0 {
                            3000.0
                        } else {
                            400.0
                        };
                        (gain * (blob + f64::from((x * 7 + y * 13) % 50))) as u16
                    })
                    .collect();
                let name = format!("A0{w}_t{t}.tif");
                plateflow_imaging::write::write_tiff_u16(&tmp.path().join(&name), 64, 64, &data)
                    .unwrap();
                entries.push((
                    name,
                    vec![
                        ("plate", "P1"),
                        (
                            "well",
                            ["A01", "A02", "A03", "A04", "A05", "A06"][w as usize],
                        ),
                        (
                            "t",
                            ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"][t as usize - 1],
                        ),
                        ("channel", "DNA"),
                    ],
                ));
            }
        }
        let images = testing::images(&entries);
        let task = testing::task("qc", &[]);
        let mut ctx = testing::context(tmp.path(), &task, &images, &[]);
        run(&mut ctx, &CurateParams::default()).unwrap();
        let ex = std::fs::read_to_string(tmp.path().join("out/exclusions.csv")).unwrap();
        assert_eq!(
            ex.lines().count(),
            1,
            "frames flagged for their time point:\n{ex}"
        );
        assert!(!ctx.log.contains("too few images"), "{}", ctx.log);
        // Two time points of one well: too few to judge, and the log says so.
        let images = testing::images(&entries[..2]);
        let mut ctx = testing::context(tmp.path(), &task, &images, &[]);
        run(&mut ctx, &CurateParams::default()).unwrap();
        assert!(
            ctx.log.contains("too few images to judge") && ctx.log.contains("P1 DNA (1): 1"),
            "{}",
            ctx.log
        );
    }
}
