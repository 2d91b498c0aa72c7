//! `plateflow demo`: a synthetic screen that looks like real data, with its ground truth.
//!
//! Plates of wells × sites × two channels (DNA, GFP reporter) as 8-bit TIFF files. Cells have
//! a nucleus and a cytoplasm; two phenotypes differ subtly: `translocated` cells carry the
//! reporter in the nucleus (not the cytoplasm) and have slightly larger, more elongated and
//! more textured nuclei. Each plate has its own batch effects (intensity scale, background,
//! illumination gradient). The drug's fourth row is a dose series (0.01–3 µM, EC50 0.3 µM,
//! Hill 1.5) whose wells hold a mixture of cells and no label; other drug wells get 30 µM,
//! vehicle wells 0. Planted defects: a blurred field, a saturated field, an empty field, and
//! one mislabelled well. `ground_truth/` holds the defects, every cell, and the
//! nucleus label images, so tests can check that curation and segmentation find what was
//! planted. Generation is deterministic: the same plate always gives the same bytes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const PIPELINE: &str = include_str!("../../pipelines/demo.yaml");

/// The shape of a demo screen.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub plates: usize,
    /// Wells per plate, filled row by row in rows of 6 (A01..A06, B01, …).
    pub wells: usize,
    pub sites: usize,
    /// Image side in pixels.
    pub size: u32,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            plates: 4,
            wells: 24,
            sites: 2,
            size: 256,
        }
    }
}

const COLS: usize = 6;

/// A tiny deterministic generator (SplitMix64): the same plate always gives the same bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Roughly normal (sum of four uniforms), mean 0, sd 1.
    fn normal(&mut self) -> f64 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) * 3f64.sqrt()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    Blurred,
    Saturated,
    Empty,
}

impl Defect {
    pub fn name(self) -> &'static str {
        match self {
            Defect::Blurred => "blurred",
            Defect::Saturated => "saturated",
            Defect::Empty => "empty",
        }
    }
}

fn well_name(i: usize) -> String {
    format!("{}{:02}", (b'A' + (i / COLS) as u8) as char, i % COLS + 1)
}

/// The phenotype the plate map gives a well: columns 1-3 untreated, 4-6 treated; the
/// dose-series row is unlabelled (its cells are a mixture: that is what the readout measures).
fn mapped_phenotype(l: &Layout, well: usize) -> &'static str {
    if dose_series(l, well).is_some() {
        ""
    } else if well % COLS < 3 {
        "normal"
    } else {
        "translocated"
    }
}

/// The drug's planted potency: the share of translocated cells at dose x (µM) is
/// x^h / (EC50^h + x^h).
pub const DEMO_EC50: f64 = 0.3;
pub const DEMO_HILL: f64 = 1.5;
/// Doses of the dose-series row, left to right (µM).
const SERIES_DOSES: [f64; COLS] = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0];
/// The labelled drug wells' dose: far above the EC50, so nearly every cell responds.
const FULL_DOSE: f64 = 30.0;

/// With 24 wells or more, the fourth row (D01–D06) is a dose series of the drug; its dose.
fn dose_series(l: &Layout, well: usize) -> Option<f64> {
    (l.wells >= 4 * COLS && well / COLS == 3 && well < 4 * COLS).then(|| SERIES_DOSES[well % COLS])
}

/// A well's dose (µM): 0 for vehicle (DMSO), the series' dose, or the full dose.
fn dose_of(l: &Layout, well: usize) -> f64 {
    match dose_series(l, well) {
        Some(x) => x,
        None if well % COLS < 3 => 0.0,
        None => FULL_DOSE,
    }
}

/// The share of a well's cells that are translocated at `dose`.
pub fn responding(dose: f64) -> f64 {
    if dose <= 0.0 {
        0.0
    } else {
        let h = dose.powf(DEMO_HILL);
        h / (DEMO_EC50.powf(DEMO_HILL) + h)
    }
}

/// The planted defects: (plate, well, site) → defect. Fixed places so tests know them.
pub fn planted_defects(l: &Layout) -> Vec<(usize, usize, usize, Defect)> {
    let mut d = Vec::new();
    let last_site = l.sites;
    if l.wells > 7 {
        d.push((1, 7, last_site, Defect::Blurred));
    }
    if l.plates >= 2 && l.wells > 16 {
        d.push((2, 16, 1, Defect::Saturated));
    }
    if l.plates >= 3 && l.wells > 2 {
        d.push((3, 2, last_site, Defect::Empty));
    }
    d
}

/// The mislabelled well: the plate map says `translocated`, the cells are `normal`.
pub fn mislabelled(l: &Layout) -> Option<(usize, usize)> {
    (l.plates >= 2 && l.wells > 3).then_some((2, 3))
}

struct Cell {
    cx: f64,
    cy: f64,
    /// Nucleus semi-axes and angle.
    a: f64,
    b: f64,
    theta: f64,
    /// Cell body scale relative to the nucleus.
    body: f64,
    dna: f64,
    translocated: bool,
}

fn inside(c: &Cell, x: f64, y: f64, scale: f64) -> f64 {
    let (dx, dy) = (x - c.cx, y - c.cy);
    let (s, co) = c.theta.sin_cos();
    let u = (dx * co + dy * s) / (c.a * scale);
    let v = (-dx * s + dy * co) / (c.b * scale);
    u * u + v * v
}

struct Field {
    dna: Vec<u8>,
    gfp: Vec<u8>,
    /// Nucleus labels, 1..=n in the order of `cells`.
    labels: Vec<u16>,
    /// Centre and whether the cell is translocated.
    cells: Vec<(f64, f64, bool)>,
}

/// Renders one field of view.
fn render(seed: u64, size: u32, plate: usize, share: f64, defect: Option<Defect>) -> Field {
    let mut rng = Rng(seed);
    let n = size as usize;
    let s = size as f64;
    // Per-plate batch effects: intensity scale, background, illumination gradient.
    let gain = [1.0, 0.85, 1.15, 0.95, 1.05][(plate - 1) % 5];
    let background = [10.0, 18.0, 6.0, 14.0, 22.0][(plate - 1) % 5];
    let gradient = [0.0, 0.3, -0.25, 0.15, -0.1][(plate - 1) % 5];
    let mut cells: Vec<Cell> = Vec::new();
    let target = if defect == Some(Defect::Empty) {
        0
    } else {
        (s * s / 4400.0) as usize + (rng.next() % 5) as usize
    };
    let mut tries = 0;
    // Each cell responds with the well's share (0 or 1 in untreated and full-dose wells). The
    // phenotype is drawn once per cell and kept while a free place is sought, so the larger
    // translocated nuclei, rejected more often, are not under-represented.
    let mut next: Option<bool> = None;
    while cells.len() < target && tries < 2000 {
        tries += 1;
        let translocated =
            *next.get_or_insert_with(|| share >= 1.0 || (share > 0.0 && rng.unit() < share));
        let a = if translocated {
            rng.range(7.0, 9.0)
        } else {
            rng.range(6.0, 8.0)
        };
        let b = a * if translocated {
            rng.range(0.6, 0.8)
        } else {
            rng.range(0.85, 1.0)
        };
        let c = Cell {
            cx: rng.range(4.0, s - 4.0),
            cy: rng.range(4.0, s - 4.0),
            a,
            b,
            theta: rng.range(0.0, std::f64::consts::PI),
            body: rng.range(1.8, 2.3),
            dna: rng.range(130.0, 170.0),
            translocated,
        };
        // Nuclei never overlap (ground truth stays unambiguous); bodies may touch.
        let ok = cells.iter().all(|o| {
            let d = ((o.cx - c.cx).powi(2) + (o.cy - c.cy).powi(2)).sqrt();
            d > o.a + c.a + 3.0 && d > 0.8 * (o.a * o.body + c.a * c.body)
        });
        if ok {
            cells.push(c);
            next = None;
        }
    }
    let mut dna = vec![0f64; n * n];
    let mut gfp = vec![0f64; n * n];
    let mut labels = vec![0u16; n * n];
    for (k, c) in cells.iter().enumerate() {
        let texture = if c.translocated { 0.22 } else { 0.08 };
        let (nuc_gfp, cyto_gfp) = if c.translocated {
            (110.0, 35.0)
        } else {
            (35.0, 85.0)
        };
        let reach = (c.a * c.body).ceil() as isize + 2;
        let (x0, y0) = (c.cx as isize - reach, c.cy as isize - reach);
        for y in y0.max(0)..(y0 + 2 * reach + 1).min(n as isize) {
            for x in x0.max(0)..(x0 + 2 * reach + 1).min(n as isize) {
                let i = y as usize * n + x as usize;
                let (fx, fy) = (x as f64, y as f64);
                let rn = inside(c, fx, fy, 1.0);
                let rb = inside(c, fx, fy, c.body);
                if rn <= 1.0 {
                    labels[i] = k as u16 + 1;
                    // Chromatin texture: a fixed pseudo-random pattern per pixel.
                    let grain = 1.0 + texture * Rng(seed ^ (i as u64) << 20).normal();
                    // A soft edge: nuclei are dimmer at the rim.
                    dna[i] = c.dna * (1.0 - 0.3 * rn) * grain;
                    gfp[i] = gfp[i].max(nuc_gfp * (1.0 - 0.2 * rn));
                } else if rb <= 1.0 {
                    gfp[i] = gfp[i].max(cyto_gfp * (1.0 - 0.4 * rb));
                }
            }
        }
    }
    if defect == Some(Defect::Blurred) {
        dna = blur(&dna, n, 3.0);
        gfp = blur(&gfp, n, 3.0);
    }
    let dna_gain = if defect == Some(Defect::Saturated) {
        3.5
    } else {
        1.0
    };
    let finish = |v: &[f64], rng: &mut Rng, extra: f64| -> Vec<u8> {
        v.iter()
            .enumerate()
            .map(|(i, &p)| {
                let x = (i % n) as f64 / s - 0.5;
                let light = 1.0 + gradient * x;
                let val = (background + p * gain * extra) * light + 2.0 * rng.normal();
                val.round().clamp(0.0, 255.0) as u8
            })
            .collect()
    };
    Field {
        dna: finish(&dna, &mut rng, dna_gain),
        gfp: finish(&gfp, &mut rng, 1.0),
        labels,
        cells: cells.iter().map(|c| (c.cx, c.cy, c.translocated)).collect(),
    }
}

fn blur(v: &[f64], n: usize, sigma: f64) -> Vec<f64> {
    let r = (3.0 * sigma) as isize;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f64 = k.iter().sum();
    let pass = |src: &[f64], horizontal: bool| -> Vec<f64> {
        let mut out = vec![0f64; n * n];
        for y in 0..n {
            for x in 0..n {
                let mut acc = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let o = j as isize - r;
                    let (xx, yy) = if horizontal {
                        ((x as isize + o).clamp(0, n as isize - 1) as usize, y)
                    } else {
                        (x, (y as isize + o).clamp(0, n as isize - 1) as usize)
                    };
                    acc += kv * src[yy * n + xx];
                }
                out[y * n + x] = acc / norm;
            }
        }
        out
    };
    pass(&pass(v, true), false)
}

pub fn write_tiff(path: &Path, pixels: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
    write_tiff_as::<tiff::encoder::colortype::Gray8>(path, pixels, width, height)
}

fn write_tiff_as<C: tiff::encoder::colortype::ColorType>(
    path: &Path,
    pixels: &[C::Inner],
    width: u32,
    height: u32,
) -> anyhow::Result<()>
where
    [C::Inner]: tiff::encoder::TiffValue,
{
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut enc = tiff::encoder::TiffEncoder::new(&mut tmp)?;
        enc.write_image::<C>(width, height, pixels)?;
    }
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Writes the plates, the plate map, the ground truth and the pipeline. Existing images are
/// left untouched, so adding plates to a demo keeps the others cached.
pub fn generate(dir: &Path, l: &Layout) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    // What a plate's images depend on, beside its number. Images made with another layout
    // are made again: kept, they disagreed with the ground truth and plate map written now.
    let stamp_path = dir.join(".demo-layout");
    let stamp = format!("wells={} sites={} size={}\n", l.wells, l.sites, l.size);
    let same_layout = std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    let defects = planted_defects(l);
    let wrong = mislabelled(l);
    let mut map = String::from("plate,well,phenotype,treatment,dose_uM,control\n");
    let mut truth_defects = String::from("plate,well,site,defect\n");
    let mut truth_cells = String::from("plate,well,site,object,center_x,center_y,phenotype\n");
    for p in 1..=l.plates {
        for w in 0..l.wells {
            let well = well_name(w);
            let mapped = mapped_phenotype(l, w);
            let dose = dose_of(l, w);
            let share = if wrong == Some((p, w)) {
                writeln!(truth_defects, "P{p},{well},,mislabelled")?;
                0.0
            } else if dose_series(l, w).is_some() {
                responding(dose)
            } else {
                responding(dose).round()
            };
            for site in 1..=l.sites {
                let defect = defects
                    .iter()
                    .find(|d| (d.0, d.1, d.2) == (p, w, site))
                    .map(|d| d.3);
                if let Some(d) = defect {
                    writeln!(truth_defects, "P{p},{well},{site},{}", d.name())?;
                }
                let dna_path = dir.join(format!("images/P{p}/{well}_s{site}_w1.tif"));
                let labels_path =
                    dir.join(format!("ground_truth/labels/P{p}_{well}_{site}_nuclei.tif"));
                let seed = (p as u64) << 32 | (w as u64) << 8 | site as u64;
                let f = render(seed, l.size, p, share, defect);
                for (k, (x, y, t)) in f.cells.iter().enumerate() {
                    let real = if *t { "translocated" } else { "normal" };
                    writeln!(
                        truth_cells,
                        "P{p},{well},{site},{},{x:.1},{y:.1},{real}",
                        k + 1
                    )?;
                }
                if !same_layout || !dna_path.exists() || !labels_path.exists() {
                    write_tiff(&dna_path, &f.dna, l.size, l.size)?;
                    write_tiff(
                        &dir.join(format!("images/P{p}/{well}_s{site}_w2.tif")),
                        &f.gfp,
                        l.size,
                        l.size,
                    )?;
                    write_tiff_as::<tiff::encoder::colortype::Gray16>(
                        &labels_path,
                        &f.labels,
                        l.size,
                        l.size,
                    )?;
                }
            }
            let (treatment, control) = match w % COLS {
                _ if dose_series(l, w).is_some() => ("drug", ""),
                0 => ("DMSO", "negative"),
                1 | 2 => ("DMSO", ""),
                5 => ("drug", "positive"),
                _ => ("drug", ""),
            };
            writeln!(map, "P{p},{well},{mapped},{treatment},{dose},{control}")?;
        }
    }
    std::fs::write(&stamp_path, stamp)?;
    std::fs::write(dir.join("platemap.csv"), map)?;
    std::fs::create_dir_all(dir.join("ground_truth"))?;
    std::fs::write(dir.join("ground_truth/defects.csv"), truth_defects)?;
    std::fs::write(dir.join("ground_truth/cells.csv"), truth_cells)?;
    let pipeline = dir.join("demo.yaml");
    // The learning steps hold out the last plate for `evaluate`.
    std::fs::write(
        &pipeline,
        PIPELINE.replace("holdout: [P4]", &format!("holdout: [P{}]", l.plates)),
    )?;
    Ok(pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defects_are_where_the_ground_truth_says() {
        let l = Layout::default();
        let d = planted_defects(&l);
        assert_eq!(d.len(), 3);
        let saturated = render(7, 128, 2, 0.0, Some(Defect::Saturated));
        let at_max = saturated.dna.iter().filter(|&&v| v == 255).count();
        assert!(at_max as f64 > 0.01 * 128.0 * 128.0, "{at_max}");
        let empty = render(7, 128, 3, 0.0, Some(Defect::Empty));
        assert!(empty.cells.is_empty() && empty.labels.iter().all(|&v| v == 0));
        let normal = render(7, 128, 1, 0.0, None);
        assert!(normal.cells.len() >= 3);
        assert!(normal.dna.iter().all(|&v| v < 255));
    }

    /// A demo made again with another image size makes its images again (kept, they were
    /// 96 px beside a ground truth of 64 px cells); with the same layout they are kept.
    #[test]
    fn a_demo_made_again_with_another_layout_makes_its_images_again() {
        let dir = tempfile::tempdir().unwrap();
        let layout = |size| Layout {
            plates: 1,
            wells: 2,
            sites: 1,
            size,
        };
        let image = dir.path().join("images/P1/A01_s1_w1.tif");
        generate(dir.path(), &layout(96)).unwrap();
        let side = || plateflow_imaging::read_image(&image).unwrap().width;
        assert_eq!(side(), 96);
        let before = std::fs::metadata(&image).unwrap().modified().unwrap();
        generate(dir.path(), &layout(96)).unwrap();
        assert_eq!(
            std::fs::metadata(&image).unwrap().modified().unwrap(),
            before
        );
        generate(dir.path(), &layout(64)).unwrap();
        assert_eq!(side(), 64);
    }

    #[test]
    fn generation_is_deterministic() {
        let a = render(42, 96, 1, 1.0, None);
        let b = render(42, 96, 1, 1.0, None);
        assert_eq!(a.dna, b.dna);
        assert_eq!(a.gfp, b.gfp);
    }

    #[test]
    fn the_dose_series_row_responds_as_planted() {
        let l = Layout::default();
        assert_eq!(mapped_phenotype(&l, 18), "");
        assert_eq!(dose_of(&l, 21), DEMO_EC50);
        assert!((responding(DEMO_EC50) - 0.5).abs() < 1e-12);
        assert_eq!(dose_of(&l, 0), 0.0);
        assert!(responding(FULL_DOSE) > 0.99);
        // A small layout has no series: every well keeps a label.
        let small = Layout { wells: 12, ..l };
        assert!((0..12).all(|w| !mapped_phenotype(&small, w).is_empty()));
        let mixed = render(9, 256, 1, 0.5, None);
        let t = mixed.cells.iter().filter(|c| c.2).count();
        assert!(
            t > 0 && t < mixed.cells.len(),
            "{t} of {}",
            mixed.cells.len()
        );
    }
}
