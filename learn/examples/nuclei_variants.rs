//! Inference settings of the nucleus segmenter (thresholds, neck splitting, hole filling),
//! chosen on the two "tuning" sets only: the DSB tuning fifth and the even-numbered Coelho
//! U2OS images. The DSB validation fifth and the odd Coelho images are reported by
//! `nuclei score` and never seen here. Also: where the remaining errors lie.
//!
//!   cargo run --release -p plateflow-learn --example nuclei_variants -- [WEIGHTS|shipped] [grid|scales|segment-scales|enlarge|borders|refine|grow|probe]
//!
//! `grid` (the default) varies the instance settings; `scales` predicts at nucleus
//! diameters around the training one (fewer pixels: faster; more: finer) with the shipped
//! settings;
//! `enlarge` bounds how much images of small nuclei are enlarged; `borders` varies the
//! mirrored context added at each image's edges; `refine` predicts again at the size of
//! the objects found where it differs from the estimate by more than a ratio.
//! `segment-scales` runs `segment`'s whole path (second pass included) at other prediction
//! sizes; `probe` prints, per image of the DSB training and tuning fifths and the even
//! Coelho images, what passes at 0.5–2.83 times `segment`'s own size score and say of
//! themselves (for designing a choice among sizes offline; the training fifth is included
//! because such a choice is not the network's).
//!
//! Reads `../shared/data/dsb2018-nuclei` and `../shared/data/coelho-u2os` (from the
//! repository root); says so and stops where they are absent.

use plateflow_imaging::instances::{
    from_probabilities, matches, InstanceParams, Matching, Overlaps,
};
use plateflow_learn::nuclei::{self, Annotated};
use plateflow_learn::segmenter::{Maps, NucleusModel, MAX_ENLARGE};
use rayon::prelude::*;
use std::path::Path;

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
    let mut model = if weights == "shipped" {
        NucleusModel::shipped()?
    } else {
        NucleusModel::load(Path::new(weights))?
    };
    let sets: Vec<(&str, Vec<Annotated>)> = vec![
        (
            "DSB tuning fifth",
            nuclei::load_pairs(&dsb)?
                .into_iter()
                .filter(|a| !nuclei::is_validation(&a.id) && nuclei::is_tuning(&a.id))
                .collect(),
        ),
        (
            "Coelho even",
            nuclei::load_pairs(&coelho)?
                .into_iter()
                .filter(|a| nuclei::is_coelho_tuning(&a.id))
                .collect(),
        ),
    ];
    let mode = args.get(1).map(String::as_str).unwrap_or("grid");
    if mode == "borders" {
        // Alternating rounds: each border twice, so that machine noise shows in the speed.
        for round in 0..2 {
            for border in [32, 16, 8, 0] {
                model.border = border;
                let line = scored_line(&sets, &model, MAX_ENLARGE)?;
                println!("round {round}, border {border}:{line}");
            }
        }
        return Ok(());
    }
    if mode == "grow" {
        // Where outlines are drawn: the growth threshold over foreground, scored at every IoU
        // as `segment` runs (a calibration of the boundary: at IoU 0.9 a large nucleus's
        // outline must lie within a few per cent of its radius).
        for grow in [0.6f32, 0.65, 0.7, 0.75, 0.8] {
            model.instances.grow = grow;
            let mut line = format!("grow {grow}:");
            for (name, images) in &sets {
                let m = nuclei::evaluate(&model, images)?;
                line += &format!(
                    " {name} {:.3} {:.3} {:.3} |",
                    m[0].f1(),
                    m[1].f1(),
                    m[2].f1()
                );
            }
            println!("{line}");
        }
        return Ok(());
    }
    if mode == "refine" {
        // A second pass at the median size of the first pass's objects, only where it
        // differs from the estimate by more than a ratio.
        for (name, images) in &sets {
            let first: Vec<Maps> = images
                .iter()
                .map(|a| model.maps(&a.pixels, a.width, a.height, estimated(&model, a)))
                .collect::<anyhow::Result<_>>()?;
            let mut refined_d = Vec::new();
            for (a, m) in images.iter().zip(&first) {
                let d0 = model.target / m.scale;
                let got = instances(m, a, d0, &model.instances);
                let d1 = nuclei::median_diameter(&got, 9).unwrap_or(d0);
                refined_d.push((d0, d1));
            }
            let second: Vec<Maps> = images
                .iter()
                .zip(&refined_d)
                .map(|(a, &(_, d1))| model.maps(&a.pixels, a.width, a.height, d1))
                .collect::<anyhow::Result<_>>()?;
            for ratio in [1.0f64, 1.1, 1.15, 1.2, 1.25, 1.3, 1.5, f64::INFINITY] {
                let chosen: Vec<Maps> = first
                    .iter()
                    .zip(&second)
                    .zip(&refined_d)
                    .map(|((f, s), &(d0, d1))| {
                        let pick = if (d1 / d0).max(d0 / d1) > ratio { s } else { f };
                        Maps {
                            interior: pick.interior.clone(),
                            foreground: pick.foreground.clone(),
                            scale: pick.scale,
                        }
                    })
                    .collect();
                let redone = refined_d
                    .iter()
                    .filter(|&&(d0, d1)| (d1 / d0).max(d0 / d1) > ratio)
                    .count();
                let m = score(images, &chosen, &model, &model.instances);
                println!(
                    "{name}: second pass where sizes differ > {ratio}x ({redone} images): F1 {:.5} (0.75: {:.4}, 0.9: {:.4})",
                    m[0].f1(),
                    m[1].f1(),
                    m[2].f1()
                );
            }
        }
        return Ok(());
    }
    if mode == "probe" {
        // Per image (DSB training + tuning fifths, Coelho even): `segment`'s own size d0,
        // then maps at d0 × each multiplier, with what each pass says of itself, for
        // designing a choice among sizes offline. One line per image and pass.
        let mut images: Vec<(&str, Annotated)> = nuclei::load_pairs(&dsb)?
            .into_iter()
            .filter(|a| !nuclei::is_validation(&a.id))
            .map(|a| {
                (
                    if nuclei::is_tuning(&a.id) {
                        "tuning"
                    } else {
                        "training"
                    },
                    a,
                )
            })
            .collect();
        images.extend(sets[1].1.iter().cloned().map(|a| ("coelho-even", a)));
        let lines: Vec<String> = images
            .par_iter()
            .map(|(set, a)| -> anyhow::Result<String> {
                let d0 = model.segment(&a.image, None)?.diameter;
                let mut out = String::new();
                for m in [0.5, 0.71, 1.0, 1.41, 2.0, 2.83] {
                    let d = d0 * m;
                    let maps = model.maps(&a.pixels, a.width, a.height, d)?;
                    let got = instances(&maps, a, model.target / maps.scale, &model.instances);
                    let (hit, pred, truth) = matches(&got, &a.truth, 0.5);
                    let found = nuclei::median_diameter(&got, 9).unwrap_or(0.0);
                    let fg: Vec<usize> =
                        (0..got.len()).filter(|&i| maps.foreground[i] > 0.5).collect();
                    let n = fg.len().max(1) as f64;
                    let decisive_interior =
                        fg.iter().map(|&i| (2.0 * maps.interior[i] - 1.0).abs() as f64).sum::<f64>() / n;
                    let decisive_fg = maps
                        .foreground
                        .iter()
                        .map(|&f| (2.0 * f - 1.0).abs() as f64)
                        .sum::<f64>()
                        / got.len() as f64;
                    let covered = fg.iter().filter(|&&i| got[i] > 0).count() as f64 / n;
                    let interior_share =
                        fg.iter().filter(|&&i| maps.interior[i] > 0.5).count() as f64 / n;
                    out += &format!(
                        "{set} {} {} {:.2} {m} {d:.2} {hit} {pred} {truth} {found:.2} {decisive_interior:.4} {decisive_fg:.4} {covered:.4} {interior_share:.4} {}\n",
                        a.id,
                        a.width * a.height,
                        a.diameter,
                        fg.len()
                    );
                }
                Ok(out)
            })
            .collect::<anyhow::Result<_>>()?;
        println!(
            "set id pixels d_true m d hit pred truth found dec_int dec_fg covered int_share fg_px"
        );
        for l in lines {
            print!("{l}");
        }
        return Ok(());
    }
    if mode == "segment-scales" {
        // The whole path `segment` runs (size estimate, second pass) at other prediction
        // sizes: mean F1 at IoU 0.5 over the tuning sets.
        let trained = model.diameter;
        for &factor in &[0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0] {
            model.target = trained * factor;
            let mut line = format!("predicted at {:.2} px ({factor}):", model.target);
            let mut f1s = Vec::new();
            for (name, images) in &sets {
                let t = std::time::Instant::now();
                let m = nuclei::evaluate(&model, images)?;
                let px: usize = images.iter().map(|a| a.width * a.height).sum();
                f1s.push(m[0].f1());
                line += &format!(
                    " {name} F1 {:.4} (0.75: {:.3}, 0.9: {:.3}) {:.2} MP/s;",
                    m[0].f1(),
                    m[1].f1(),
                    m[2].f1(),
                    px as f64 / 1e6 / t.elapsed().as_secs_f64()
                );
            }
            println!(
                "{line} mean {:.4}",
                f1s.iter().sum::<f64>() / f1s.len() as f64
            );
        }
        return Ok(());
    }
    if mode == "scales" || mode == "enlarge" {
        let trained = model.diameter;
        let factors: &[f64] = if mode == "scales" {
            &[0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0, 1.1, 1.25, 1.4]
        } else {
            &[0.33, 0.5, 0.7, 0.8, 0.9, 1.0]
        };
        for &factor in factors {
            // `scales`: predict at another diameter (training showed 0.7-1.4 of it);
            // `enlarge`: enlarge at most 1/factor times.
            let cap = if mode == "enlarge" {
                1.0 / factor
            } else {
                MAX_ENLARGE
            };
            if mode == "scales" {
                model.target = trained * factor;
            }
            println!(
                "predicted at {:.1} px nuclei, enlarged at most {cap:.2}x:{}",
                model.target,
                scored_line(&sets, &model, cap)?
            );
        }
        return Ok(());
    }
    let mut maps: Vec<Vec<Maps>> = Vec::new();
    for (name, images) in &sets {
        let t = std::time::Instant::now();
        maps.push(
            images
                .iter()
                .map(|a| model.maps(&a.pixels, a.width, a.height, estimated(&model, a)))
                .collect::<anyhow::Result<_>>()?,
        );
        println!(
            "{name}: {} images, maps in {:.1} s",
            images.len(),
            t.elapsed().as_secs_f64()
        );
    }

    // Per setting: mean F1 over the two tuning sets at IoU 0.5 (the rule), and at 0.75 and
    // 0.9 (the tie-break: settings within TIE of the best at 0.5 are ranked by those).
    const TIE: f64 = 0.001;
    let mut tried: Vec<(f64, f64, InstanceParams)> = Vec::new();
    for split_depth in [None, Some(0.1), Some(0.2)] {
        for fill_holes in [0.0, 0.5] {
            for seed in [0.5f32, 0.6, 0.7, 0.8, 0.9] {
                let mut row = Vec::new();
                for grow in [0.5f32, 0.6, 0.7, 0.8, 0.9] {
                    let p = InstanceParams {
                        seed,
                        grow,
                        split_depth,
                        fill_holes,
                    };
                    let m: Vec<[Matching; 3]> = sets
                        .iter()
                        .zip(&maps)
                        .map(|((_, images), maps)| score(images, maps, &model, &p))
                        .collect();
                    let mean = |k: usize| m.iter().map(|s| s[k].f1()).sum::<f64>() / m.len() as f64;
                    tried.push((mean(0), (mean(1) + mean(2)) / 2.0, p));
                    row.push(format!(
                        "grow {grow}: {:.3} {:.3}",
                        m[0][0].f1(),
                        m[1][0].f1()
                    ));
                }
                println!(
                    "split {split_depth:?} holes {fill_holes} seed {seed}: {}",
                    row.join(" | ")
                );
            }
        }
    }
    let top = tried.iter().map(|t| t.0).fold(0f64, f64::max);
    let best = tried
        .iter()
        .filter(|t| t.0 >= top - TIE)
        .inspect(|t| {
            println!(
                "within {TIE} of the best at IoU 0.5: {:.4} (0.75 and 0.9: {:.4}) {:?}",
                t.0, t.1, t.2
            )
        })
        // The first (simplest: no splitting, no hole filling) of equals.
        .fold(None::<&(f64, f64, InstanceParams)>, |kept, t| match kept {
            Some(k) if k.1 >= t.1 => Some(k),
            _ => Some(t),
        })
        .map(|t| (t.0, t.2))
        .expect("settings were tried");
    println!(
        "best (mean F1 at IoU 0.5 over the two tuning sets {:.4}, ties broken at 0.75 and 0.9): {:?}",
        best.0, best.1
    );
    model.instances = best.1;
    for ((name, images), maps) in sets.iter().zip(&maps) {
        let m = score(images, maps, &model, &best.1);
        println!(
            "{name}: F1 {:.3} AP {:.3} | 0.75: {:.3} | 0.9: {:.3}",
            m[0].f1(),
            m[0].ap(),
            m[1].f1(),
            m[2].f1()
        );
        errors(images, maps, &model);
    }
    Ok(())
}

/// Per tuning set: maps (images enlarged at most `cap` times, timed), then F1 and AP at IoU
/// 0.5 and F1 at 0.75 with the model's instance settings.
fn scored_line(
    sets: &[(&str, Vec<Annotated>)],
    model: &NucleusModel,
    cap: f64,
) -> anyhow::Result<String> {
    let mut line = String::new();
    for (name, images) in sets {
        let t = std::time::Instant::now();
        let maps: Vec<Maps> = images
            .iter()
            .map(|a| {
                let d = estimated(model, a).max(model.target / cap);
                model.maps(&a.pixels, a.width, a.height, d)
            })
            .collect::<anyhow::Result<_>>()?;
        let secs = t.elapsed().as_secs_f64();
        let px: usize = images.iter().map(|a| a.width * a.height).sum();
        let m = score(images, &maps, model, &model.instances);
        line += &format!(
            " {name} F1 {:.4} AP {:.3} (0.75: F1 {:.3}), maps {:.2} MP/s;",
            m[0].f1(),
            m[0].ap(),
            m[1].f1(),
            px as f64 / 1e6 / secs
        );
    }
    Ok(line)
}

fn estimated(model: &NucleusModel, a: &Annotated) -> f64 {
    nuclei::estimate_diameter(a).unwrap_or(model.target)
}

fn instances(m: &Maps, a: &Annotated, d: f64, p: &InstanceParams) -> Vec<u32> {
    from_probabilities(&m.interior, &m.foreground, a.width, a.height, d, p).data
}

fn score(
    images: &[Annotated],
    maps: &[Maps],
    model: &NucleusModel,
    p: &InstanceParams,
) -> [Matching; 3] {
    let per_image: Vec<[(usize, usize, usize); 3]> = images
        .par_iter()
        .zip(maps)
        .map(|(a, m)| {
            let got = instances(m, a, model.target / m.scale, p);
            nuclei::IOUS.map(|iou| matches(&got, &a.truth, iou))
        })
        .collect();
    nuclei::summed(per_image)
}

/// Why true nuclei go unmatched at IoU 0.5: merged into one prediction with another,
/// split over several, missed, or found with a poor outline; and what unmatched
/// predictions are. The worst images, with their sizes.
fn errors(images: &[Annotated], maps: &[Maps], model: &NucleusModel) {
    let (mut merged, mut split, mut missed, mut outline, mut fp, mut fragment) = (0, 0, 0, 0, 0, 0);
    let mut worst: Vec<(f64, String)> = Vec::new();
    for (a, m) in images.iter().zip(maps) {
        let d = model.target / m.scale;
        let pred = instances(m, a, d, &model.instances);
        let Overlaps {
            inter,
            area_p,
            area_t,
        } = Overlaps::of(&pred, &a.truth);
        let iou = |p: u32, t: u32, i: usize| i as f64 / (area_p[&p] + area_t[&t] - i) as f64;
        let matched_t: std::collections::HashSet<u32> = inter
            .iter()
            .filter(|(&(p, t), &i)| iou(p, t, i) > 0.5)
            .map(|(&(_, t), _)| t)
            .collect();
        let matched_p: std::collections::HashSet<u32> = inter
            .iter()
            .filter(|(&(p, t), &i)| iou(p, t, i) > 0.5)
            .map(|(&(p, _), _)| p)
            .collect();
        for (&t, &at) in &area_t {
            if matched_t.contains(&t) {
                continue;
            }
            let parts: Vec<(u32, usize)> = inter
                .iter()
                .filter(|(&(_, tt), _)| tt == t)
                .map(|(&(p, _), &i)| (p, i))
                .collect();
            let covered: usize = parts.iter().map(|x| x.1).sum();
            let big = parts.iter().filter(|x| x.1 * 4 > at).count();
            // A merge: the prediction covering most of it covers most of another nucleus too.
            let main = parts.iter().max_by_key(|x| x.1).map(|x| x.0);
            let shares_main = main.is_some_and(|p| {
                inter
                    .iter()
                    .filter(|(&(pp, tt), &i)| pp == p && tt != t && i * 2 > area_t[&tt])
                    .count()
                    > 0
            });
            if covered * 2 < at {
                missed += 1;
            } else if shares_main {
                merged += 1;
            } else if big >= 2 {
                split += 1;
            } else {
                outline += 1;
            }
        }
        for (&p, &ap) in &area_p {
            if matched_p.contains(&p) {
                continue;
            }
            let covered: usize = inter
                .iter()
                .filter(|(&(pp, _), _)| pp == p)
                .map(|(_, &i)| i)
                .sum();
            if covered * 2 < ap {
                fp += 1;
            } else {
                fragment += 1;
            }
        }
        let mut mm = Matching::default();
        mm.add(matches(&pred, &a.truth, 0.5));
        worst.push((
            mm.f1(),
            format!(
                "{} {}x{} truth d {:.1} est d {:.1} objects {}/{}",
                &a.id[..12.min(a.id.len())],
                a.width,
                a.height,
                a.diameter,
                d,
                mm.predicted,
                mm.truth
            ),
        ));
    }
    println!(
        "unmatched true nuclei: merged {merged}, split {split}, missed {missed}, poor outline {outline}; unmatched predictions: on background {fp}, parts of nuclei {fragment}"
    );
    worst.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (f1, what) in worst.iter().take(12) {
        println!("  F1 {f1:.3} {what}");
    }
}
