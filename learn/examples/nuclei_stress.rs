//! The nucleus segmenters on images as other microscopes and cameras would show the same
//! nuclei: smaller or larger nuclei (other objectives), a dim 16-bit camera, uneven
//! illumination, low signal to noise, defocus, saturation. Each transform is applied to the
//! raw image (and, where it moves pixels, to its labels), and the image goes through the
//! path `segment` runs (`NucleusModel::segment` with the size estimated; classic with its
//! defaults), so the percentile normalisation, the empty-field check and the size estimate
//! are under test too.
//!
//!   cargo run --release -p plateflow-learn --example nuclei_stress -- [WEIGHTS|shipped] [tuning|held-out] [NAME]
//!
//! `tuning` (the default) runs the DSB tuning fifth and the even Coelho images, on which
//! any change made because of this run is chosen; `held-out` runs the DSB validation fifth
//! and the odd Coelho images, which only report. Reads `../shared/data`; says so and stops
//! where it is absent. `STRESS_PER_IMAGE=1` prints each image's (matched, predicted, truth)
//! and the nucleus size it was predicted at.

use plateflow_imaging::instances::matches;
use plateflow_imaging::resample::resize;
use plateflow_imaging::GrayImage;
use plateflow_learn::nuclei::{self, Matching};
use plateflow_learn::rng::Rng;
use plateflow_learn::segmenter::NucleusModel;
use rayon::prelude::*;
use std::path::Path;

/// A raw image and its instance labels.
#[derive(Clone)]
struct Pair {
    id: String,
    image: GrayImage,
    labels: Vec<u32>,
}

fn main() -> anyhow::Result<()> {
    plateflow_learn::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dsb, coelho) = match nuclei::shared_nuclei_data() {
        Ok(dirs) => dirs,
        Err(absent) => {
            println!("{absent}");
            return Ok(());
        }
    };
    let weights = args.first().map(String::as_str).unwrap_or("shipped");
    let model = if weights == "shipped" {
        NucleusModel::shipped()?
    } else {
        NucleusModel::load(Path::new(weights))?
    };
    let held_out = match args.get(1).map(String::as_str).unwrap_or("tuning") {
        "tuning" => false,
        "held-out" => true,
        other => anyhow::bail!("unknown set {other}: tuning or held-out"),
    };
    let sets = [
        (
            if held_out {
                "DSB validation"
            } else {
                "DSB tuning"
            },
            load(&dsb, |id| {
                if held_out {
                    nuclei::is_validation(id)
                } else {
                    !nuclei::is_validation(id) && nuclei::is_tuning(id)
                }
            })?,
        ),
        (
            if held_out {
                "Coelho odd"
            } else {
                "Coelho even"
            },
            load(&coelho, |id| nuclei::is_coelho_tuning(id) != held_out)?,
        ),
    ];
    println!("| transform | set | learned F1 @0.5 | classic F1 @0.5 | learned MP/s |");
    println!("| --- | --- | --- | --- | --- |");
    // A third argument runs only the transforms whose name holds it.
    let only = args.get(2).cloned().unwrap_or_default();
    for (name, transform) in TRANSFORMS.iter().filter(|(n, _)| n.contains(&only)) {
        for (set, pairs) in &sets {
            let changed: Vec<Pair> = pairs
                .par_iter()
                .enumerate()
                .map(|(i, p)| transform(p, i as u64))
                .collect();
            let t = std::time::Instant::now();
            let learned = sum(changed.par_iter().map(|p| {
                let seg = model.segment(&p.image, None)?;
                let m = matches(&seg.labels.data, &p.labels, 0.5);
                if std::env::var_os("STRESS_PER_IMAGE").is_some() {
                    // (matched, predicted, truth) and the size the image was predicted at.
                    println!("  {} {m:?} at {:.1} px", p.id, seg.diameter);
                }
                Ok(m)
            }))?;
            let secs = t.elapsed().as_secs_f64();
            let classic = sum(changed.par_iter().map(|p| {
                // As `segment` runs it: dark nuclei turned over first.
                let (image, _) = plateflow_learn::segmenter::bright_objects(&p.image);
                let got = plateflow_imaging::segment::segment_nuclei(&image, &Default::default());
                Ok(matches(&got.data, &p.labels, 0.5))
            }))?;
            let px: usize = changed.iter().map(|p| p.image.data.len()).sum();
            println!(
                "| {name} | {set} | {:.3} (P {:.3}, R {:.3}) | {:.3} | {:.1} |",
                learned.f1(),
                learned.matched as f64 / learned.predicted.max(1) as f64,
                learned.matched as f64 / learned.truth.max(1) as f64,
                classic.f1(),
                px as f64 / 1e6 / secs
            );
        }
    }
    Ok(())
}

fn sum(
    per_image: impl ParallelIterator<Item = anyhow::Result<(usize, usize, usize)>>,
) -> anyhow::Result<Matching> {
    let counts: Vec<(usize, usize, usize)> = per_image.collect::<anyhow::Result<_>>()?;
    let mut m = Matching::default();
    for c in counts {
        m.add(c);
    }
    Ok(m)
}

fn load(root: &Path, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<Pair>> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join("images"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".png").map(str::to_string)
        })
        .filter(|id| keep(id))
        .collect();
    ids.sort();
    ids.par_iter()
        .map(|id| {
            let image = plateflow_imaging::read_image(&root.join(format!("images/{id}.png")))?;
            let labels = plateflow_imaging::read_image(&root.join(format!("labels/{id}.png")))?;
            Ok(Pair {
                id: id.clone(),
                image,
                labels: labels.data.iter().map(|&l| u32::from(l)).collect(),
            })
        })
        .collect()
}

type Transform = fn(&Pair, u64) -> Pair;

const TRANSFORMS: &[(&str, Transform)] = &[
    ("as acquired", |p, _| p.clone()),
    ("nuclei 0.5x (lower magnification)", |p, _| scaled(p, 0.5)),
    ("nuclei 0.33x", |p, _| scaled(p, 1.0 / 3.0)),
    ("nuclei 2x (higher magnification)", |p, _| scaled(p, 2.0)),
    (
        "dim 16-bit camera (offset 100, 255 -> 2,060 of 65,535, shot noise)",
        |p, seed| {
            map_values(p, seed, 16, |v, rng| {
                let signal = f64::from(v) * 7.68;
                100.0 + signal + rng.normal() * (signal + 4.0).sqrt()
            })
        },
    ),
    ("uneven illumination (corners at 35 %)", vignetted),
    (
        "low signal to noise (noise sd 20 % of the brightest nuclei's height)",
        |p, seed| {
            let mut v = p.image.data.clone();
            let n = v.len();
            let median = f64::from(*v.select_nth_unstable(n / 2).1);
            let bright = f64::from(*v.select_nth_unstable(((n - 1) as f64 * 0.998) as usize).1);
            let sd = 0.2 * (bright - median).max(1.0);
            map_values(p, seed, 8, |v, rng| f64::from(v) + 20.0 + rng.normal() * sd)
        },
    ),
    ("very low signal to noise (noise sd 40 %)", |p, seed| {
        let mut v = p.image.data.clone();
        let n = v.len();
        let median = f64::from(*v.select_nth_unstable(n / 2).1);
        let bright = f64::from(*v.select_nth_unstable(((n - 1) as f64 * 0.998) as usize).1);
        let sd = 0.4 * (bright - median).max(1.0);
        map_values(p, seed, 16, |v, rng| {
            f64::from(v) + 40.0 + rng.normal() * sd
        })
    }),
    ("defocus (Gaussian blur sd 2 px)", |p, _| {
        let blurred = plateflow_imaging::segment::gaussian(&p.image, 2.0);
        with_values(p, 8, blurred.iter().map(|&v| f64::from(v)))
    }),
    ("saturated (gain 3, clipped at 255)", |p, seed| {
        map_values(p, seed, 8, |v, _| f64::from(v) * 3.0)
    }),
    (
        "bright debris over 0.2 % of the field (dim 16-bit camera, specks at 10-30x the nuclei)",
        |p, seed| debris(p, seed, 0.002),
    ),
    ("bright debris over 0.5 %", |p, seed| debris(p, seed, 0.005)),
    (
        "saved inverted (dark nuclei on a bright field)",
        |p, seed| {
            let top = f64::from(p.image.max_value());
            map_values(p, seed, p.image.bit_depth, |v, _| top - f64::from(v))
        },
    ),
];

/// The image with new values (rounded, clamped to the bit depth); labels unchanged.
fn with_values(p: &Pair, bits: u8, values: impl Iterator<Item = f64>) -> Pair {
    let max = if bits == 8 { 255.0 } else { 65535.0 };
    Pair {
        id: p.id.clone(),
        image: GrayImage {
            width: p.image.width,
            height: p.image.height,
            bit_depth: bits,
            data: values.map(|v| v.round().clamp(0.0, max) as u16).collect(),
        },
        labels: p.labels.clone(),
    }
}

fn map_values(p: &Pair, seed: u64, bits: u8, f: impl Fn(u16, &mut Rng) -> f64) -> Pair {
    let mut rng = Rng::new(seed);
    let values: Vec<f64> = p.image.data.iter().map(|&v| f(v, &mut rng)).collect();
    with_values(p, bits, values.into_iter())
}

fn vignetted(p: &Pair, _: u64) -> Pair {
    let (w, h) = (p.image.width as f64, p.image.height as f64);
    let (cx, cy) = (w / 2.0, h / 2.0);
    let corner = (cx * cx + cy * cy).sqrt();
    let values = p.image.data.iter().enumerate().map(|(i, &v)| {
        let (x, y) = ((i % w as usize) as f64, (i / w as usize) as f64);
        let r = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() / corner;
        f64::from(v) * (1.0 - 0.65 * r * r)
    });
    with_values(p, 8, values)
}

/// The image resized by `factor` (area-weighted), its labels by nearest neighbour.
fn scaled(p: &Pair, factor: f64) -> Pair {
    let (w, h) = (p.image.width as usize, p.image.height as usize);
    let (nw, nh) = (
        ((w as f64 * factor).round() as usize).max(1),
        ((h as f64 * factor).round() as usize).max(1),
    );
    let px: Vec<f32> = p.image.data.iter().map(|&v| f32::from(v)).collect();
    let image = resize(&px, w, h, nw, nh);
    let mut labels = vec![0u32; nw * nh];
    for y in 0..nh {
        let sy = (((y as f64 + 0.5) / factor) as usize).min(h - 1);
        for x in 0..nw {
            let sx = (((x as f64 + 0.5) / factor) as usize).min(w - 1);
            labels[y * nw + x] = p.labels[sy * w + sx];
        }
    }
    let bits = p.image.bit_depth;
    let max = if bits == 8 { 255.0 } else { 65535.0 };
    Pair {
        id: p.id.clone(),
        image: GrayImage {
            width: nw as u32,
            height: nh as u32,
            bit_depth: bits,
            data: image
                .iter()
                .map(|&v| v.round().clamp(0.0, max) as u16)
                .collect(),
        },
        labels,
    }
}

/// The dim 16-bit camera above, with bright specks (fluorescent dust, precipitate) of radius
/// 2-5 px at 10-30 times the nuclei's brightest signal added at random places until they
/// cover `share` of the field; labels unchanged (a speck is no nucleus).
fn debris(p: &Pair, seed: u64, share: f64) -> Pair {
    let mut rng = Rng::new(seed ^ 0xdeb1);
    let (w, h) = (p.image.width as usize, p.image.height as usize);
    let mut extra = vec![0.0f64; w * h];
    let mut covered = 0usize;
    let target = (share * (w * h) as f64).ceil() as usize;
    while covered < target {
        let (cx, cy) = (rng.unit() * w as f64, rng.unit() * h as f64);
        let r = 2.0 + 3.0 * rng.unit();
        let level = 2_060.0 * (10.0 + 20.0 * rng.unit());
        let (x0, x1) = ((cx - r).max(0.0) as usize, ((cx + r) as usize + 1).min(w));
        let (y0, y1) = ((cy - r).max(0.0) as usize, ((cy + r) as usize + 1).min(h));
        for y in y0..y1 {
            for x in x0..x1 {
                let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
                if d <= r && extra[y * w + x] == 0.0 {
                    extra[y * w + x] = level;
                    covered += 1;
                }
            }
        }
    }
    let values: Vec<f64> = p
        .image
        .data
        .iter()
        .zip(&extra)
        .map(|(&v, &e)| {
            let signal = f64::from(v) * 7.68;
            100.0 + signal + e + rng.normal() * (signal + e + 4.0).sqrt()
        })
        .collect();
    with_values(p, 16, values.into_iter())
}
