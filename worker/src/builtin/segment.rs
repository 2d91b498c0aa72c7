//! `segment`: nuclei from the DNA channel (classic, or the learned model), cells grown from
//! them into a second channel (or a ring), saved as 16-bit label TIFFs (they open in Fiji
//! and napari) with an object table.

use super::illumination::Corrections;
use super::{num, parallel_map, Context, ImageSet, Table};
use anyhow::Context as _;
use plateflow_contract::listing::first_few;
use plateflow_contract::params::{self as contract, SegmentMethod, SegmentParams};
use plateflow_imaging::cells::{segment_cells, typical_radius, CellMethod};
use plateflow_imaging::overlay::{objects, outlines_png, summarise, Quantiles};
use plateflow_imaging::segment::{segment_nuclei, Labels};
use plateflow_imaging::write::write_tiff_u16;
use plateflow_learn::segmenter::{bright_objects_counted, contrast, Contrast, NucleusModel};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Segmentation of one image set, with the (corrected) nucleus image it was made from.
pub struct SetResult {
    pub nuclei: Labels,
    pub cells: Labels,
    pub image: plateflow_imaging::GrayImage,
    /// The cell channel showed nothing above its camera noise: cells are rings instead.
    pub faint_cell_stain: bool,
    /// Pixels of bright specks (dust, precipitate) lowered before segmenting the nuclei.
    pub specks_lowered: usize,
}

/// The file a `train_segmenter` step writes its model to.
pub const MODEL_FILE: &str = "segmenter.safetensors";

/// The nucleus model of a `method: learned` step: `weights:` (a file sent with the task),
/// else an upstream `train_segmenter` step's, else the one shipped with plateflow; on
/// `device` (the task's GPU where it has one, else the CPU).
pub fn learned_model(
    ctx: &Context,
    p: &SegmentParams,
    device: &candle_core::Device,
) -> anyhow::Result<NucleusModel> {
    if let Some(rel) = &p.weights {
        let model = NucleusModel::load_on(&ctx.work.join(rel), device);
        return model.map_err(|e| anyhow::anyhow!("`weights: {rel}`: {e}"));
    }
    let trained = ctx.upstream_files(|n| n == MODEL_FILE);
    match trained.as_slice() {
        [] => NucleusModel::shipped_on(device),
        [(_, path)] => NucleusModel::load_on(path, device),
        more => anyhow::bail!(
            "{} upstream steps wrote a {MODEL_FILE}; keep one `train_segmenter` step in this step's `after:`",
            more.len()
        ),
    }
}

/// `method: classic`: Otsu's split and a distance watershed. Otsu's split finds bright
/// objects, so dark nuclei are turned over first; and it always splits, noise too, so a
/// field with nothing standing out of its camera noise (an empty well, a toxic compound's)
/// has no nuclei: it got dozens, one per blob of noise.
/// Returns the nuclei and the pixels of bright specks lowered first.
fn classic_nuclei(
    dna: &plateflow_imaging::GrayImage,
    sigma: f64,
    diameter: Option<f64>,
) -> (Labels, usize) {
    let params = plateflow_imaging::segment::SegmentParams {
        sigma: Some(sigma),
        radius: diameter.map(|d| d / 2.0),
        ..Default::default()
    };
    let (img, contrast, specks) = bright_objects_counted(dna);
    let labels = match (img, contrast) {
        (_, Contrast::Nothing) => Labels::empty(dna.width, dna.height),
        // A few nuclei in a wide field: Otsu's histogram is clipped inside them, not at a
        // percentile that is background there (the noise was split into hundreds of blobs).
        (img, Contrast::Sparse { top }) => {
            let params = plateflow_imaging::segment::SegmentParams {
                threshold_cap: Some(f32::from(top)),
                ..params
            };
            segment_nuclei(&img, &params)
        }
        (img, _) => segment_nuclei(&img, &params),
    };
    (labels, specks)
}

/// `img` binned 2×2 (each pixel the mean of four): a stain that stands out of the noise
/// stands out further when binned, at a quarter of the cost of judging every pixel (the
/// check on every set's cell channel cost the demo 6 % of its time).
fn binned(img: &plateflow_imaging::GrayImage) -> plateflow_imaging::GrayImage {
    let (w, h) = (img.width as usize, img.height as usize);
    let (bw, bh) = (w / 2, h / 2);
    if bw < 3 || bh < 3 {
        return img.clone();
    }
    let mut data = Vec::with_capacity(bw * bh);
    for y in 0..bh {
        let (r0, r1) = (&img.data[2 * y * w..], &img.data[(2 * y + 1) * w..]);
        for x in 0..bw {
            let sum = u32::from(r0[2 * x])
                + u32::from(r0[2 * x + 1])
                + u32::from(r1[2 * x])
                + u32::from(r1[2 * x + 1]);
            data.push(((sum + 2) / 4) as u16);
        }
    }
    plateflow_imaging::GrayImage {
        width: bw as u32,
        height: bh as u32,
        bit_depth: img.bit_depth,
        data,
    }
}

/// The library call with the step's parameters: nuclei, then cells.
pub fn segment_set(
    p: &SegmentParams,
    model: Option<&NucleusModel>,
    corrections: &Corrections,
    set: &ImageSet,
) -> anyhow::Result<SetResult> {
    let dna = corrections.read(set, &p.nuclei)?;
    let (nuclei, specks_lowered) = match (model, &p.masks) {
        (_, Some(channel)) => (user_masks(set, channel, &dna)?, 0),
        (Some(model), None) => {
            let s = model.segment(&dna, p.diameter)?;
            (s.labels, s.specks_lowered)
        }
        (None, None) => classic_nuclei(&dna, p.sigma, p.diameter),
    };
    let cell_img = match &p.cells {
        Some(ch) => Some(corrections.read(set, ch)?),
        None => None,
    };
    if let Some(c) = &cell_img {
        anyhow::ensure!(
            (c.width, c.height) == (dna.width, dna.height),
            "image set {}: the cell channel is {}x{} but the nuclei channel is {}x{}",
            set.key,
            c.width,
            c.height,
            dna.width,
            dna.height
        );
    }
    // A cell stain that shows nothing above its camera noise (failed, or too dim): Otsu
    // still split it, and every cell grew over the noise to its full reach, its area and
    // cytoplasm measures meaningless. Rings there instead, and the task says how many.
    let faint_cell_stain = p.cell_method() == contract::CellMethod::Propagate
        && cell_img
            .as_ref()
            .is_some_and(|c| matches!(contrast(&binned(c)), Contrast::Nothing));
    // Without a cell channel, or when asked, the cytoplasm is a ring around the nucleus.
    let method = match (p.cell_method(), &cell_img) {
        (contract::CellMethod::Propagate, Some(_)) if !faint_cell_stain => CellMethod::default(),
        _ => CellMethod::Ring {
            width: p.ring_width.unwrap_or_else(|| typical_radius(&nuclei)),
        },
    };
    let cells = segment_cells(&nuclei, cell_img.as_ref(), method);
    Ok(SetResult {
        nuclei,
        cells,
        image: dna,
        faint_cell_stain,
        specks_lowered,
    })
}

/// Every image set without a mask, named at once before any work: a tool that skipped a few
/// images (Cellpose leaves out files it could not read) is found in one go.
fn missing_masks(sets: &[&ImageSet], channel: &str, nuclei: &str) -> anyhow::Result<()> {
    let missing: Vec<String> = sets
        .iter()
        .filter(|s| !s.channels.contains_key(channel))
        .map(|s| match s.channels.get(nuclei) {
            Some(image) => format!("{} ({})", s.key, image.display()),
            None => s.key.clone(),
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let shown = first_few(&missing, 5, ", ");
    anyhow::bail!(
        "{} of {} image sets have no mask (channel `{channel}`): {shown}; make the \
         missing masks, or curate those images out, so that each image has its label image",
        missing.len(),
        sets.len()
    )
}

/// The user's label image for `set` ([`plateflow_imaging::masks::read_mask`]: any integer
/// form, one page, background 0, numbered 1..n in order; the written `labels/` image holds
/// the numbers the tables use), the same size as the nucleus image.
fn user_masks(
    set: &ImageSet,
    channel: &str,
    dna: &plateflow_imaging::GrayImage,
) -> anyhow::Result<Labels> {
    let path = set.channel(channel)?;
    let labels = plateflow_imaging::masks::read_mask(path)?;
    anyhow::ensure!(
        (labels.width, labels.height) == (dna.width, dna.height),
        "mask {} is {}x{} but its image is {}x{}: masks must be drawn on the images themselves, unscaled",
        path.display(),
        labels.width,
        labels.height,
        dna.width,
        dna.height
    );
    Ok(labels)
}

pub fn write_labels(path: &Path, labels: &Labels) -> anyhow::Result<()> {
    anyhow::ensure!(
        labels.count <= u16::MAX as u32,
        "{} objects do not fit a 16-bit label image (at most 65,535 per field); a field \
         with this many is likely a mask of noise, or a mosaic of many fields to be split",
        labels.count
    );
    let data: Vec<u16> = labels.data.iter().map(|&l| l as u16).collect();
    write_tiff_u16(path, labels.width, labels.height, &data)?;
    Ok(())
}

pub fn run(ctx: &mut Context, p: &SegmentParams) -> anyhow::Result<()> {
    let sets = ctx.image_sets()?;
    let excluded = ctx.exclusions()?;
    let todo: Vec<&ImageSet> = sets
        .iter()
        .filter(|s| !excluded.contains_key(&s.key))
        .collect();
    if let Some(channel) = &p.masks {
        missing_masks(&todo, channel, &p.nuclei)?;
    }
    // Said, not silent: a user who put a `train_segmenter` step in `after:` expects its model.
    if !ctx.upstream_files(|n| n == MODEL_FILE).is_empty() {
        let used = match (&p.masks, p.method, &p.weights) {
            (Some(_), _, _) => Some("your masks".to_string()),
            (None, SegmentMethod::Classic, _) => Some("`method: classic`".to_string()),
            (None, SegmentMethod::Learned, Some(rel)) => Some(format!("`weights: {rel}`")),
            (None, SegmentMethod::Learned, None) => None,
        };
        if let Some(used) = used {
            ctx.logln(format!(
                "warning: the {MODEL_FILE} of the `train_segmenter` step in `after:` is not used: {used} is"
            ));
        }
    }
    let model = match p.method {
        _ if p.masks.is_some() => {
            ctx.logln(format!(
                "nuclei from your masks (channel {}), not segmented",
                p.masks.as_deref().unwrap_or("")
            ));
            None
        }
        SegmentMethod::Learned => {
            let device = ctx.device();
            let m = learned_model(ctx, p, &device)?;
            ctx.logln(format!(
                "learned nuclei: {} (U-Net width {}, trained at nucleus diameter {:.0} px, images \
                 rescaled so nuclei are {:.1} px across), on {}",
                m.source,
                m.config().width,
                m.diameter,
                m.target,
                plateflow_learn::device::describe(&device)
            ));
            Some(m)
        }
        SegmentMethod::Classic => None,
    };
    let corrections = Corrections::from_upstream(ctx)?;
    if !corrections.is_empty() {
        ctx.logln("images divided by the upstream illumination fields");
    }
    let shown = fields_to_show(ctx, &todo, &excluded)?;
    let save = p.save_labels;
    let out = ctx.out.clone();
    let shared: &Context = ctx;
    let results = parallel_map(&todo, shared.threads, |set| {
        let r = segment_set(p, model.as_ref(), &corrections, set)?;
        if save {
            write_labels(
                &out.join(format!("labels/{}_nuclei.tif", set.key)),
                &r.nuclei,
            )
            .and_then(|()| {
                write_labels(&out.join(format!("labels/{}_cells.tif", set.key)), &r.cells)
            })
            .with_context(|| format!("image set {}", set.key))?;
        }
        if let Some(why) = shown.get(&set.key) {
            let png = outlines_png(&r.image, &r.nuclei, Some(&r.cells), 512)
                .map_err(|e| anyhow::anyhow!("outlines of {}: {e}", set.key))?;
            super::write_atomic(&out.join(format!("outlines/{}_{why}.png", set.key)), &png)?;
        }
        anyhow::Ok((
            objects(&r.nuclei),
            objects(&r.cells),
            r.faint_cell_stain,
            r.specks_lowered,
        ))
    });
    let meta_names = super::metadata_columns(&sets);
    let mut header = vec!["ImageSet".to_string()];
    header.extend(meta_names);
    header.extend(
        [
            "ObjectNumber",
            "Nuclei_AreaShape_Area",
            "Nuclei_Location_Center_X",
            "Nuclei_Location_Center_Y",
            "Nuclei_TouchesBorder",
            "Cells_AreaShape_Area",
            "Cells_TouchesBorder",
        ]
        .map(String::from),
    );
    let mut table = Table::new(&header);
    let mut total = 0usize;
    let mut per_field = Vec::new();
    let mut faint = 0usize;
    let mut specks: Vec<&str> = Vec::new();
    for (set, r) in todo.iter().zip(results) {
        let (nuc, cells, faint_cells, specks_lowered) = r?;
        faint += usize::from(faint_cells);
        if specks_lowered > 0 {
            specks.push(&set.key);
        }
        per_field.push(nuc.iter().map(|n| (n.0, n.3)).collect::<Vec<_>>());
        total += nuc.len();
        for (i, (n, c)) in nuc.iter().zip(&cells).enumerate() {
            let mut row = vec![set.key.clone()];
            row.extend(set.meta.iter().map(|(_, v)| v.clone()));
            row.extend([
                (i + 1).to_string(),
                n.0.to_string(),
                num(n.1),
                num(n.2),
                (n.3 as u8).to_string(),
                c.0.to_string(),
                (c.3 as u8).to_string(),
            ]);
            table.push_row(row);
        }
    }
    ctx.write_output("objects.csv", &table.into_bytes())?;
    let summary = summarise(&per_field);
    let q = |q: &Quantiles| serde_json::json!({"min": q.min, "p25": q.p25, "median": q.median, "p75": q.p75, "max": q.max});
    let json = serde_json::json!({
        "method": match (p.method, &p.masks) {
            (_, Some(_)) => "masks",
            (SegmentMethod::Learned, None) => "learned",
            (SegmentMethod::Classic, None) => "classic",
        },
        "model": model.as_ref().map(|m| m.source.clone()),
        "fields": summary.fields,
        "objects_per_field": q(&summary.objects_per_field),
        "nucleus_area_px": q(&summary.area),
        "touching_border_fraction": summary.touching_border_fraction,
        "outlines": shown,
        "cells_as_rings_faint_stain": faint,
        "sets_with_specks_lowered": specks.len(),
    });
    ctx.write_output(
        "segmentation.json",
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    ctx.logln(format!(
        "segmented {} image sets ({} excluded by curation): {total} nuclei",
        todo.len(),
        sets.len() - todo.len()
    ));
    if faint > 0 {
        ctx.logln(format!(
            "warning: in {faint} of {} image sets the cell channel {} shows nothing above its \
             camera noise (a failed or dim stain?): their cells are rings of the nucleus \
             radius, not grown into the stain",
            todo.len(),
            p.cells.as_deref().unwrap_or("")
        ));
    }
    if !specks.is_empty() {
        ctx.logln(format!(
            "warning: in {} of {} image sets the nuclei channel {} holds bright specks (dust, \
             precipitate, saturated objects) far above the nuclei; they were lowered for \
             segmentation only (measurement reads the image as it is): {}",
            specks.len(),
            todo.len(),
            p.nuclei,
            first_few(&specks, 3, ", ")
        ));
    }
    for (k, why) in &excluded {
        if sets.iter().any(|s| &s.key == k) {
            ctx.logln(format!("  skipped {k}: {why}"));
        }
    }
    Ok(())
}

/// The fields whose outlines are drawn, with why: per plate, the two that upstream QC ranks
/// worst among those segmented (largest robust z of any measure, above 0; `qc-worst-N`), and
/// the median of the rest (`typical`). The ranking spans the plate's whole QC table, so tasks
/// per well draw only the plate's own three, not one each. Without a `curate` step upstream:
/// the task's first, middle and last (the report keeps three per plate).
/// `excluded`: the sets curation left out ([`Context::exclusions`]).
fn fields_to_show(
    ctx: &Context,
    todo: &[&ImageSet],
    excluded: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let keys: BTreeSet<&str> = todo.iter().map(|s| s.key.as_str()).collect();
    let plates: BTreeSet<&str> = todo.iter().map(|s| s.plate()).collect();
    // Every field of this task's plates that QC judged and curation kept: key → (plate, z).
    let mut judged: BTreeMap<String, (String, f64)> = BTreeMap::new();
    for (_, path) in ctx.upstream_files(|n| n == "qc.csv") {
        let mut rdr = csv::Reader::from_path(&path)?;
        let header = rdr.headers()?.clone();
        let set_col = header.iter().position(|h| h == "ImageSet");
        let plate_col = header.iter().position(|h| h == "Metadata_Plate");
        let z_cols: Vec<usize> = (0..header.len())
            .filter(|&i| header[i].starts_with("RobustZ_"))
            .collect();
        for rec in rdr.records() {
            let rec = rec?;
            let Some(key) = set_col.and_then(|c| rec.get(c)) else {
                continue;
            };
            let plate = plate_col.and_then(|c| rec.get(c));
            let ours = match plate {
                Some(p) => plates.contains(p),
                None => keys.contains(key),
            };
            if !ours || excluded.contains_key(key) {
                continue;
            }
            let z = z_cols
                .iter()
                .filter_map(|&c| rec.get(c)?.parse::<f64>().ok())
                .map(f64::abs)
                .fold(0.0, f64::max);
            let e = judged
                .entry(key.to_string())
                .or_insert_with(|| (plate.unwrap_or("").to_string(), 0.0));
            e.1 = e.1.max(z);
        }
    }
    let mut shown = BTreeMap::new();
    if judged.is_empty() {
        for (i, why) in [
            (0, "first"),
            (todo.len() / 2, "middle"),
            (todo.len().saturating_sub(1), "last"),
        ] {
            if let Some(s) = todo.get(i) {
                shown
                    .entry(s.key.clone())
                    .or_insert_with(|| why.to_string());
            }
        }
        return Ok(shown);
    }
    let mut by_plate: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for (key, (plate, z)) in judged {
        by_plate.entry(plate).or_default().push((key, z));
    }
    for ranked in by_plate.values_mut() {
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // A field QC found nothing odd in (z 0: one image per plate and channel) is no worst.
        let worst = ranked.iter().take(2).take_while(|(_, z)| *z > 0.0).count();
        let mut chosen: Vec<(&str, String)> = ranked[..worst]
            .iter()
            .enumerate()
            .map(|(i, (key, _))| (key.as_str(), format!("qc-worst-{}", i + 1)))
            .collect();
        let rest = &ranked[worst..];
        if let Some((key, _)) = rest.get(rest.len() / 2) {
            chosen.push((key.as_str(), "typical".to_string()));
        }
        for (key, why) in chosen {
            if keys.contains(key) {
                shown.insert(key.to_string(), why);
            }
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use plateflow_learn::segmenter::bright_objects;

    /// Near-normal camera noise of sd about 5 counts (a sum of four uniforms), from `seed`.
    fn camera_noise(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            (0..4)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 33) as f64 / (1u64 << 31) as f64
                })
                .sum::<f64>()
                * 8.66
                - 17.3
        }
    }

    /// An empty field (camera noise around 100 counts) has no nuclei; the same field with
    /// nuclei in it has them.
    #[test]
    fn classic_segmentation_finds_nothing_in_an_empty_field() {
        let (w, h) = (256usize, 256usize);
        let mut noise = camera_noise(12345);
        let mut data: Vec<u16> = (0..w * h).map(|_| (100.0 + noise()) as u16).collect();
        let empty = plateflow_imaging::GrayImage {
            width: w as u32,
            height: h as u32,
            bit_depth: 16,
            data: data.clone(),
        };
        assert_eq!(classic_nuclei(&empty, 1.0, None).0.count, 0);
        for (cx, cy) in [(60.0, 60.0), (150.0, 80.0), (90.0, 190.0), (200.0, 200.0)] {
            for y in 0..h {
                for x in 0..w {
                    if ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() < 10.0 {
                        data[y * w + x] += 800;
                    }
                }
            }
        }
        let nuclei = plateflow_imaging::GrayImage { data, ..empty };
        assert_eq!(classic_nuclei(&nuclei, 1.0, None).0.count, 4);
    }

    /// A cell stain that shows nothing above its camera noise (failed, or too dim): cells
    /// grew over the noise to four nucleus radii; they are rings of one radius now, and the
    /// set says so. A real stain around the nuclei still grows cells into it.
    #[test]
    fn a_failed_cell_stain_gives_rings_not_cells_grown_over_noise() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let (w, h) = (160usize, 160usize);
        let mut noise = camera_noise(99);
        let centres = [(40.0, 40.0), (120.0, 45.0), (45.0, 120.0), (115.0, 115.0)];
        let within = |x: usize, y: usize, r: f64| {
            centres
                .iter()
                .any(|(cx, cy)| ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() < r)
        };
        let mut dna = Vec::with_capacity(w * h);
        let mut failed = Vec::with_capacity(w * h);
        let mut stained = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let n = noise();
                dna.push((100.0 + n + if within(x, y, 8.0) { 900.0 } else { 0.0 }) as u16);
                failed.push((100.0 + noise()) as u16);
                stained.push((100.0 + n + if within(x, y, 20.0) { 600.0 } else { 0.0 }) as u16);
            }
        }
        for (name, data) in [
            ("DNA.tif", &dna),
            ("GFP.tif", &failed),
            ("RFP.tif", &stained),
        ] {
            write_tiff_u16(&work.join(name), w as u32, h as u32, data).unwrap();
        }
        let images = testing::one_well(&["DNA", "GFP", "RFP"]);
        let task = testing::task("segment", &[]);
        let ctx = testing::context(work, &task, &images, &[]);
        let sets = ctx.image_sets().unwrap();
        let params = |cells: &str| SegmentParams {
            nuclei: "DNA".into(),
            method: SegmentMethod::Classic,
            cells: Some(cells.into()),
            ..Default::default()
        };
        let area = |l: &Labels| l.data.iter().filter(|&&v| v != 0).count() as f64 / 4.0;
        let r = segment_set(&params("GFP"), None, &Corrections::default(), &sets[0]).unwrap();
        assert!(r.faint_cell_stain);
        assert_eq!(r.nuclei.count, 4);
        // A ring of one radius (8 px): a disc of 16 px across, about 800 px, not 4 radii.
        assert!(area(&r.cells) < 1000.0, "{}", area(&r.cells));
        let r = segment_set(&params("RFP"), None, &Corrections::default(), &sets[0]).unwrap();
        assert!(!r.faint_cell_stain);
        assert!(
            (1000.0..1500.0).contains(&area(&r.cells)),
            "{}",
            area(&r.cells)
        );
    }

    /// Saturated specks over 0.3 % of the field: both methods find the four nuclei (specks
    /// took the normalisation's top and Otsu's split), and the set says how many pixels were
    /// lowered, so the task can warn; the same field without specks lowers none. (Classic
    /// sizes the nuclei itself; see the learned path's `diameter:` below.)
    #[test]
    fn specks_are_lowered_and_the_set_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let (w, h) = (160usize, 160usize);
        let mut noise = camera_noise(5);
        let centres = [(40.0, 40.0), (120.0, 45.0), (45.0, 120.0), (115.0, 115.0)];
        let mut clean = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let inside = centres
                    .iter()
                    .any(|(cx, cy)| ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)) < 100.0);
                clean.push((100.0 + noise() + if inside { 900.0 } else { 0.0 }) as u16);
            }
        }
        // Six specks of radius 2 (13 px each, 0.3 % of the field) between the nuclei.
        let mut specked = clean.clone();
        for (cx, cy) in [
            (80, 20),
            (80, 80),
            (80, 140),
            (20, 80),
            (140, 80),
            (20, 150),
        ] {
            for y in cy - 2..=cy + 2 {
                for x in cx - 2..=cx + 2 {
                    if (x as i64 - cx as i64).pow(2) + (y as i64 - cy as i64).pow(2) <= 4 {
                        specked[y * w + x] = 65_535;
                    }
                }
            }
        }
        write_tiff_u16(&work.join("DNA.tif"), w as u32, h as u32, &clean).unwrap();
        write_tiff_u16(&work.join("DUST.tif"), w as u32, h as u32, &specked).unwrap();
        let images = testing::one_well(&["DNA", "DUST"]);
        let task = testing::task("segment", &[]);
        let ctx = testing::context(work, &task, &images, &[]);
        let sets = ctx.image_sets().unwrap();
        let model = NucleusModel::shipped().unwrap();
        for method in [SegmentMethod::Classic, SegmentMethod::Learned] {
            let model = (method == SegmentMethod::Learned).then_some(&model);
            // The nuclei's size given: here the specks outnumber the nuclei, and the learned
            // path's size estimate (a median over objects) takes theirs (19 objects at 5 px).
            let params = |nuclei: &str| SegmentParams {
                nuclei: nuclei.into(),
                method,
                diameter: (method == SegmentMethod::Learned).then_some(20.0),
                ..Default::default()
            };
            let dust = segment_set(&params("DUST"), model, &Corrections::default(), &sets[0]);
            let dust = dust.unwrap();
            assert_eq!(dust.nuclei.count, 4, "{method:?} among specks");
            assert!(
                dust.specks_lowered >= 60,
                "{method:?}: {}",
                dust.specks_lowered
            );
            let clean = segment_set(&params("DNA"), model, &Corrections::default(), &sets[0]);
            let clean = clean.unwrap();
            assert_eq!(clean.nuclei.count, 4, "{method:?} without specks");
            assert_eq!(clean.specks_lowered, 0, "{method:?} without specks");
        }
    }

    /// A toxic well's field: two nuclei over 0.1 % of a 600² field of camera noise (bias
    /// 100). Clipped at its 99.5th percentile (background), Otsu split the noise and found
    /// hundreds of "nuclei"; both methods find the two.
    #[test]
    fn a_field_of_two_nuclei_has_two() {
        let (w, h) = (600usize, 600usize);
        let mut noise = camera_noise(777);
        let mut data: Vec<u16> = (0..w * h).map(|_| (100.0 + noise()) as u16).collect();
        for (cx, cy) in [(150.0, 200.0), (420.0, 380.0)] {
            for y in 0..h {
                for x in 0..w {
                    if ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() < 7.0 {
                        data[y * w + x] += 1400;
                    }
                }
            }
        }
        let field = plateflow_imaging::GrayImage {
            width: w as u32,
            height: h as u32,
            bit_depth: 16,
            data,
        };
        assert!(matches!(bright_objects(&field).1, Contrast::Sparse { .. }));
        assert_eq!(classic_nuclei(&field, 3.0, None).0.count, 2);
        let learned = NucleusModel::shipped()
            .unwrap()
            .segment(&field, None)
            .unwrap();
        assert_eq!(learned.labels.count, 2);
    }

    /// Outlines are chosen per plate from QC's whole table: a task of one well draws its
    /// field only where it is one of the plate's three; a field QC found nothing odd in is
    /// not called worst; the typical field is not one of the worst.
    #[test]
    fn outline_fields_are_the_plates_not_each_tasks() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        std::fs::create_dir_all(work.join("qc")).unwrap();
        // Robust z per well: A03 worst, then A05; the rest ordinary or 0.
        let z = [
            ("A01", 0.5),
            ("A02", 1.0),
            ("A03", 9.0),
            ("A04", 0.0),
            ("A05", 4.0),
        ];
        let mut csv =
            String::from("ImageSet,Metadata_Plate,Metadata_Well,Channel,RobustZ_FocusScore\n");
        for (w, v) in z {
            csv.push_str(&format!("P1_{w},P1,{w},DNA,{v}\n"));
            csv.push_str(&format!("P2_{w},P2,{w},DNA,{}\n", 20.0 + v));
        }
        std::fs::write(work.join("qc/qc.csv"), csv).unwrap();
        let upstream = [(
            "qc[plate=P1]".to_string(),
            "qc.csv".to_string(),
            "qc/qc.csv".to_string(),
        )];
        let task = testing::task("segment", &[]);
        let shown_for = |wells: &[&str]| {
            let entries: Vec<(String, Vec<(&str, &str)>)> = wells
                .iter()
                .map(|w| (format!("in/{w}.tif"), vec![("plate", "P1"), ("well", *w)]))
                .collect();
            let images = testing::images(&entries);
            let ctx = testing::context(work, &task, &images, &upstream);
            let sets = ctx.image_sets().unwrap();
            let todo: Vec<&ImageSet> = sets.iter().collect();
            fields_to_show(&ctx, &todo, &BTreeMap::new()).unwrap()
        };
        let all = shown_for(&["A01", "A02", "A03", "A04", "A05"]);
        assert_eq!(
            all,
            BTreeMap::from([
                ("P1_A03".to_string(), "qc-worst-1".to_string()),
                ("P1_A05".to_string(), "qc-worst-2".to_string()),
                ("P1_A01".to_string(), "typical".to_string()),
            ])
        );
        // One task per well: only the plate's chosen wells draw, under the same names.
        assert_eq!(shown_for(&["A03"])["P1_A03"], "qc-worst-1");
        assert!(shown_for(&["A02"]).is_empty());
        assert!(shown_for(&["A04"]).is_empty());
    }
}
