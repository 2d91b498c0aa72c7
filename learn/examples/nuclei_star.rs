//! An experiment, not (yet) a segmenter plateflow ships: a StarDist-like head on the nucleus
//! U-Net. Per pixel, the probability of lying inside a nucleus (its distance to the edge
//! over the nucleus's largest) and the distances to the nucleus's edge along 32 rays; each
//! pixel above a probability proposes its star-convex polygon, and polygons overlapping a
//! more probable one by more than an IoU are suppressed (StarDist's non-maximum
//! suppression). Touching nuclei need no thin line between them, which is where the
//! three-class head loses them (BENCHMARKS.md, 2026-12-05 sixth session).
//!
//!   cargo run --release -p plateflow-learn --example nuclei_star -- train STEPS OUT.safetensors [LR] [INIT.safetensors]
//!   cargo run --release -p plateflow-learn --example nuclei_star -- score WEIGHTS.safetensors
//!   cargo run --release -p plateflow-learn --example nuclei_star -- ceiling
//!
//! `train` starts from the shipped network's levels (a new head) or from INIT, on the DSB
//! training fifths, with the crops `nuclei train` makes (`STAR_SEED`: another crop
//! sequence, for a run going on from an earlier one; `NUCLEI_DEVICE=cuda` on a GPU build).
//! `score` compares it with the shipped three-class head on the two tuning sets only (DSB
//! tuning fifth, even Coelho images; first pass at the estimated size for both), over a grid
//! of probability and suppression thresholds, so a later choice among them stays fair to
//! the held-out sets. `ceiling`: both representations drawn from the true labels at model
//! scale, what a perfect network would score.
//!
//! Reads `../shared/data`; says so and stops where it is absent.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
use plateflow_imaging::instances::{from_probabilities, matches, targets};
use plateflow_imaging::resample::resize;
use plateflow_learn::conv::conv2d_same;
use plateflow_learn::nuclei::{self, Annotated};
use plateflow_learn::rng::Rng;
use plateflow_learn::segmenter::{mirrored, NucleusModel, LEARNED_INSTANCES, MAX_ENLARGE};
use plateflow_learn::unet::{UNet, UNetConfig};
use rayon::prelude::*;
use std::f64::consts::TAU;

/// Rays per pixel, as StarDist uses on these images.
const RAYS: usize = 32;
const CROP: usize = 128;
const BATCH: usize = 8;
/// Nuclei are brought to the shipped segmenter's size before prediction (PREDICT_AT × 16).
const TARGET: f64 = 11.2;
/// Mirrored context at an image's edges, as the shipped segmenter's.
const BORDER: usize = 8;

/// Direction of ray `k`: (x, y), y pointing down the image.
fn ray(k: usize) -> (f64, f64) {
    let a = TAU * k as f64 / RAYS as f64;
    (a.cos(), a.sin())
}

/// Training targets of a `w`×`h` label image: per pixel, its distance to its nucleus's edge
/// over the nucleus's largest (0 on background), and its distances to the edge along each
/// ray, ray-major (the edge is where the label changes or the image ends, found in steps of
/// half a pixel and taken halfway between the last step inside and the first outside).
fn star_targets(labels: &[u32], w: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
    let n = w * h;
    let same = |i: usize, j: Option<usize>| j.is_none_or(|j| labels[j] == labels[i]);
    let interior: Vec<bool> = (0..n)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            labels[i] != 0
                && same(i, (x > 0).then(|| i - 1))
                && same(i, (x + 1 < w).then_some(i + 1))
                && same(i, (y > 0).then(|| i - w))
                && same(i, (y + 1 < h).then_some(i + w))
        })
        .collect();
    // A nucleus's edge pixels lie at 1, its interior further in.
    let edge = plateflow_imaging::segment::distance_transform(&interior, w, h);
    let mut largest: std::collections::HashMap<u32, f32> = Default::default();
    for (&l, &e) in labels.iter().zip(&edge) {
        if l != 0 {
            let top = largest.entry(l).or_default();
            *top = top.max(e + 1.0);
        }
    }
    let prob = labels
        .iter()
        .zip(&edge)
        .map(|(&l, &e)| if l == 0 { 0.0 } else { (e + 1.0) / largest[&l] })
        .collect();
    let mut dist = vec![0f32; RAYS * n];
    for (i, &l) in labels.iter().enumerate().filter(|(_, &l)| l != 0) {
        let (x, y) = ((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
        for k in 0..RAYS {
            let (c, s) = ray(k);
            let mut t = 0.5;
            loop {
                let (px, py) = (x + t * c, y + t * s);
                let outside = px < 0.0 || py < 0.0 || px >= w as f64 || py >= h as f64;
                if outside || labels[py as usize * w + px as usize] != l {
                    break;
                }
                t += 0.5;
            }
            dist[k * n + i] = (t - 0.25) as f32;
        }
    }
    (prob, dist)
}

/// The shipped U-Net's levels with a head of 1 + [`RAYS`] outputs: the probability's logit,
/// then the distances (model pixels).
struct StarNet {
    net: UNet,
    head: candle_nn::Conv2d,
}

impl StarNet {
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let f = self.net.features(x, train)?;
        if f.device().is_cpu() {
            conv2d_same(&f, self.head.weight(), self.head.bias())
        } else {
            self.head.forward(&f)
        }
    }
}

/// The network and its variables: the shipped network's levels and a new head (distances
/// starting at 8, the training radius), or every tensor from `init`.
fn build(init: Option<&str>, device: &Device) -> anyhow::Result<(VarMap, StarNet)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let shipped = nuclei::Weights::from_bytes(plateflow_learn::segmenter::SHIPPED, "shipped")?;
    let width = shipped.config.width;
    let net = UNet::new(UNetConfig { width, depth: 3 }, vb.clone())?;
    let head = candle_nn::conv2d(width, 1 + RAYS, 1, Default::default(), vb.pp("star"))?;
    plateflow_learn::model::seed_init(&varmap, 7)?;
    let tensors = match init {
        None => shipped.tensors,
        Some(path) => candle_core::safetensors::load(path, &Device::Cpu)?,
    };
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        match tensors.get(name) {
            Some(t) => var.set(&t.to_device(device)?)?,
            None if name == "star.bias" => {
                let mut b = vec![8f32; 1 + RAYS];
                b[0] = 0.0;
                var.set(&Tensor::from_vec(b, 1 + RAYS, device)?)?;
            }
            None if name.starts_with("star.") => {}
            None => anyhow::bail!("the starting weights have no tensor {name}"),
        }
    }
    Ok((varmap, StarNet { net, head }))
}

/// StarDist's loss: binary cross-entropy of the probability, plus 0.2 × the distances' mean
/// absolute error weighted by the target probability (centres count most).
fn loss(out: &Tensor, prob: &Tensor, dist: &Tensor) -> candle_core::Result<Tensor> {
    let z = out.narrow(1, 0, 1)?;
    let d = out.narrow(1, 1, RAYS)?;
    // max(z, 0) − z·p + log(1 + e^−|z|): stable for any logit.
    let bce = ((z.relu()? - (&z * prob)?)? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()?;
    let l1 = (d - dist)?.abs()?.broadcast_mul(prob)?.sum_all()?;
    let weight = (prob.sum_all()? * RAYS as f64)?.affine(1.0, 1e-3)?;
    bce + (l1 / weight)?.affine(0.2, 0.0)?
}

fn train(
    images: &[Annotated],
    steps: usize,
    out: &str,
    lr: f64,
    init: Option<&str>,
    device: &Device,
) -> anyhow::Result<()> {
    let (varmap, star) = build(init, device)?;
    // The three-class head is not trained (it is saved as it was).
    let vars: Vec<_> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(k, _)| !k.starts_with("head."))
        .map(|(_, v)| v.clone())
        .collect();
    let mut opt = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let areas: Vec<f64> = images.iter().map(|a| (a.width * a.height) as f64).collect();
    let total: f64 = areas.iter().sum();
    let seed: u64 = std::env::var("STAR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let t0 = std::time::Instant::now();
    let mut smoothed = 0f32;
    for step in 1..=steps {
        // Cosine decay to a tenth, as `nuclei train`.
        let t = step as f64 / steps as f64;
        opt.set_learning_rate(lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())));
        // Crops drawn in proportion to image area, as `nuclei train` draws them.
        let crops: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..BATCH)
            .into_par_iter()
            .map(|i| {
                let mut rng = Rng::new(
                    seed.wrapping_mul(1_000_003)
                        .wrapping_add((step * BATCH + i) as u64),
                );
                let k = nuclei::image_by_area(&areas, total, &mut rng);
                let (px, _, labels) = nuclei::augmented_crop(
                    &images[k],
                    CROP,
                    nuclei::TRAINING_DIAMETER,
                    0.3,
                    &mut rng,
                );
                let (prob, dist) = star_targets(&labels, CROP, CROP);
                (px, prob, dist)
            })
            .collect();
        let (mut xs, mut ps, mut ds) = (Vec::new(), Vec::new(), Vec::new());
        for (x, p, d) in crops {
            xs.extend(x);
            ps.extend(p);
            ds.extend(d);
        }
        let x = Tensor::from_vec(xs, (BATCH, 1, CROP, CROP), device)?;
        let p = Tensor::from_vec(ps, (BATCH, 1, CROP, CROP), device)?;
        let d = Tensor::from_vec(ds, (BATCH, RAYS, CROP, CROP), device)?;
        let l = loss(&star.forward(&x, true)?, &p, &d)?;
        opt.backward_step(&l)?;
        let value = l.to_scalar::<f32>()?;
        anyhow::ensure!(value.is_finite(), "training diverged at step {step}");
        smoothed = if step == 1 {
            value
        } else {
            0.98 * smoothed + 0.02 * value
        };
        if step % 50 == 0 || step == steps {
            eprintln!(
                "step {step}/{steps}: loss {smoothed:.4} ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        }
        if step % 500 == 0 || step == steps {
            varmap.save(out)?;
        }
    }
    Ok(())
}

/// One image's maps at model scale: probability, distances (ray-major, model pixels), the
/// model-scale sides and the scale.
struct StarMaps {
    prob: Vec<f32>,
    dist: Vec<f32>,
    w: usize,
    h: usize,
    scale: f64,
}

/// The maps of an image whose nuclei are `d` pixels across, predicted as the shipped
/// segmenter predicts (nuclei brought to [`TARGET`], [`BORDER`] mirrored at the edges as
/// `segment` mirrors them).
fn predict(star: &StarNet, a: &Annotated, d: f64, device: &Device) -> anyhow::Result<StarMaps> {
    let scale = (TARGET / d).clamp(1.0 / 128.0, MAX_ENLARGE);
    let (sw, sh) = (
        ((a.width as f64 * scale).round() as usize).max(1),
        ((a.height as f64 * scale).round() as usize).max(1),
    );
    let small = resize(&a.pixels, a.width, a.height, sw, sh);
    let (pw, ph) = (
        (sw + 2 * BORDER).next_multiple_of(4),
        (sh + 2 * BORDER).next_multiple_of(4),
    );
    let padded = mirrored(&small, sw, sh, BORDER, pw, ph);
    let out = star.forward(&Tensor::from_vec(padded, (1, 1, ph, pw), device)?, false)?;
    let v = out.flatten_all()?.to_vec1::<f32>()?;
    let plane = pw * ph;
    let mut prob = Vec::with_capacity(sw * sh);
    let mut dist = vec![0f32; RAYS * sw * sh];
    for y in 0..sh {
        for x in 0..sw {
            let i = (y + BORDER) * pw + x + BORDER;
            prob.push(1.0 / (1.0 + (-v[i]).exp()));
            for k in 0..RAYS {
                dist[k * sw * sh + y * sw + x] = v[(1 + k) * plane + i].max(0.1);
            }
        }
    }
    Ok(StarMaps {
        prob,
        dist,
        w: sw,
        h: sh,
        scale,
    })
}

/// Calls `f` with each pixel of a `w`×`h` image whose centre lies inside the star polygon
/// around (cx, cy) with distances `d` along the rays: a pixel is inside where its distance
/// from the centre is at most that of the polygon's edge in its direction.
fn polygon(cx: f64, cy: f64, d: &[f64], w: usize, h: usize, mut f: impl FnMut(usize)) {
    let reach = d.iter().copied().fold(0f64, f64::max);
    let (x0, x1) = (
        (cx - reach).floor().max(0.0) as usize,
        ((cx + reach).ceil().max(0.0) as usize).min(w),
    );
    let (y0, y1) = (
        (cy - reach).floor().max(0.0) as usize,
        ((cy + reach).ceil().max(0.0) as usize).min(h),
    );
    let step = TAU / RAYS as f64;
    for y in y0..y1 {
        for x in x0..x1 {
            let (vx, vy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            let r = vx.hypot(vy);
            if r > reach {
                continue;
            }
            if r < 1e-9 {
                f(y * w + x);
                continue;
            }
            let phi = vy.atan2(vx).rem_euclid(TAU);
            let k = ((phi / step) as usize).min(RAYS - 1);
            let k1 = (k + 1) % RAYS;
            let ((ca, sa), (cb, sb)) = (ray(k), ray(k1));
            let (ax, ay, bx, by) = (d[k] * ca, d[k] * sa, d[k1] * cb, d[k1] * sb);
            // Where the ray through the pixel crosses the edge from vertex k to vertex k + 1.
            let (ux, uy) = (vx / r, vy / r);
            let across = ux * (by - ay) - uy * (bx - ax);
            let edge = if across.abs() < 1e-12 {
                d[k].max(d[k1])
            } else {
                (ax * by - ay * bx) / across
            };
            if r <= edge {
                f(y * w + x);
            }
        }
    }
}

/// Instances of an image (its own size) from its maps: pixels of probability above
/// `threshold`, most probable first, each kept unless its polygon overlaps a kept one by an
/// IoU over `nms` (at model scale); kept polygons drawn at the image's scale, the most
/// probable on top.
fn instances(a: &Annotated, m: &StarMaps, threshold: f32, nms: f64) -> Vec<u32> {
    let n = m.w * m.h;
    let distances = |c: usize, s: f64| -> Vec<f64> {
        (0..RAYS)
            .map(|k| f64::from(m.dist[k * n + c]) / s)
            .collect()
    };
    let mut candidates: Vec<usize> = (0..n).filter(|&i| m.prob[i] > threshold).collect();
    candidates.sort_by(|&a, &b| m.prob[b].total_cmp(&m.prob[a]));
    // Each model pixel's first kept polygon; IoUs are counted against it.
    let mut owner = vec![0u32; n];
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let (mut overlaps, mut inside): (Vec<(u32, usize)>, Vec<usize>) = (Vec::new(), Vec::new());
    for &c in &candidates {
        inside.clear();
        let (cx, cy) = ((c % m.w) as f64 + 0.5, (c / m.w) as f64 + 0.5);
        polygon(cx, cy, &distances(c, 1.0), m.w, m.h, |i| inside.push(i));
        if inside.is_empty() {
            continue;
        }
        overlaps.clear();
        for &i in &inside {
            let o = owner[i];
            if o != 0 {
                match overlaps.iter_mut().find(|e| e.0 == o) {
                    Some(e) => e.1 += 1,
                    None => overlaps.push((o, 1)),
                }
            }
        }
        let suppressed = overlaps.iter().any(|&(o, shared)| {
            let other = kept[o as usize - 1].1;
            shared as f64 / (inside.len() + other - shared) as f64 > nms
        });
        if suppressed {
            continue;
        }
        kept.push((c, inside.len()));
        let id = kept.len() as u32;
        for &i in &inside {
            if owner[i] == 0 {
                owner[i] = id;
            }
        }
    }
    let mut labels = vec![0u32; a.width * a.height];
    for (j, &(c, _)) in kept.iter().enumerate() {
        let (cx, cy) = (
            ((c % m.w) as f64 + 0.5) / m.scale,
            ((c / m.w) as f64 + 0.5) / m.scale,
        );
        polygon(cx, cy, &distances(c, m.scale), a.width, a.height, |i| {
            if labels[i] == 0 {
                labels[i] = j as u32 + 1;
            }
        });
    }
    labels
}

/// The true labels of an image at model scale (nearest sample) for nuclei of `d` pixels:
/// (labels, width, height, scale).
fn labels_at_model_scale(a: &Annotated, d: f64) -> (Vec<u32>, usize, usize, f64) {
    let scale = (TARGET / d).clamp(1.0 / 128.0, MAX_ENLARGE);
    let (w, h) = (a.width, a.height);
    let (sw, sh) = (
        ((w as f64 * scale).round() as usize).max(1),
        ((h as f64 * scale).round() as usize).max(1),
    );
    let mut small = vec![0u32; sw * sh];
    for y in 0..sh {
        for x in 0..sw {
            let sx = (((x as f64 + 0.5) / scale) as usize).min(w - 1);
            let sy = (((y as f64 + 0.5) / scale) as usize).min(h - 1);
            small[y * sw + x] = a.truth[sy * w + sx];
        }
    }
    (small, sw, sh, scale)
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
    let device = match std::env::var("NUCLEI_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0)?,
        _ => Device::Cpu,
    };
    // The validation fifth is never loaded here: nothing in this experiment reports on it.
    let (tuning, training): (Vec<_>, Vec<_>) = nuclei::load_pairs(&dsb)?
        .into_iter()
        .filter(|a| !nuclei::is_validation(&a.id))
        .partition(|a| nuclei::is_tuning(&a.id));
    match args.first().map(String::as_str) {
        Some("train") => {
            let (Some(steps), Some(out)) = (args.get(1), args.get(2)) else {
                anyhow::bail!("usage: nuclei_star train STEPS OUT [LR] [INIT]");
            };
            let lr: f64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1e-3);
            let init = args.get(4).map(String::as_str);
            train(&training, steps.parse()?, out, lr, init, &device)
        }
        Some("ceiling") => {
            // Labelled sizes; the shipped instance settings for the three classes, and
            // probability 0.5, suppression 0.4 for the polygons.
            let per_image: Vec<_> = tuning
                .par_iter()
                .map(|a| {
                    let d = if a.diameter > 0.0 { a.diameter } else { TARGET };
                    let (small, sw, sh, scale) = labels_at_model_scale(a, d);
                    let classes = targets(&small, sw, sh);
                    let interior: Vec<f32> = classes.iter().map(|&c| f32::from(c == 1)).collect();
                    let fg: Vec<f32> = classes.iter().map(|&c| f32::from(c >= 1)).collect();
                    let (w, h) = (a.width, a.height);
                    let three = from_probabilities(
                        &resize(&interior, sw, sh, w, h),
                        &resize(&fg, sw, sh, w, h),
                        w,
                        h,
                        d,
                        &LEARNED_INSTANCES,
                    );
                    let (prob, dist) = star_targets(&small, sw, sh);
                    let maps = StarMaps {
                        prob,
                        dist,
                        w: sw,
                        h: sh,
                        scale,
                    };
                    let star = instances(a, &maps, 0.5, 0.4);
                    (
                        nuclei::IOUS.map(|iou| matches(&three.data, &a.truth, iou)),
                        nuclei::IOUS.map(|iou| matches(&star, &a.truth, iou)),
                    )
                })
                .collect();
            for (name, m) in [
                (
                    "three classes",
                    nuclei::summed(per_image.iter().map(|p| p.0)),
                ),
                (
                    "star polygons",
                    nuclei::summed(per_image.iter().map(|p| p.1)),
                ),
            ] {
                println!(
                    "DSB tuning, {name} from the true labels at model scale: F1 {:.4} (AP {:.4}) at IoU 0.5, {:.4} at 0.75, {:.4} at 0.9",
                    m[0].f1(),
                    m[0].ap(),
                    m[1].f1(),
                    m[2].f1()
                );
            }
            Ok(())
        }
        Some("score") => {
            let Some(weights) = args.get(1) else {
                anyhow::bail!("usage: nuclei_star score WEIGHTS");
            };
            let (_, star) = build(Some(weights), &device)?;
            let coelho_even: Vec<Annotated> = nuclei::load_pairs(&coelho)?
                .into_iter()
                .filter(|a| nuclei::is_coelho_tuning(&a.id))
                .collect();
            let shipped = NucleusModel::shipped()?;
            for (name, set) in [("DSB tuning", &tuning), ("Coelho even", &coelho_even)] {
                let sizes: Vec<f64> = set
                    .iter()
                    .map(|a| nuclei::estimate_diameter(a).unwrap_or(shipped.target))
                    .collect();
                let t = std::time::Instant::now();
                let maps: Vec<StarMaps> = set
                    .iter()
                    .zip(&sizes)
                    .map(|(a, &d)| predict(&star, a, d, &device))
                    .collect::<anyhow::Result<_>>()?;
                eprintln!("{name}: maps in {:.1} s", t.elapsed().as_secs_f64());
                let reference = nuclei::summed(
                    set.iter()
                        .zip(&sizes)
                        .map(|(a, &d)| {
                            let m = shipped.maps(&a.pixels, a.width, a.height, d)?;
                            let (w, h) = (a.width, a.height);
                            let d = shipped.target / m.scale;
                            let got = from_probabilities(
                                &m.interior,
                                &m.foreground,
                                w,
                                h,
                                d,
                                &LEARNED_INSTANCES,
                            );
                            Ok(nuclei::IOUS.map(|iou| matches(&got.data, &a.truth, iou)))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?,
                );
                println!(
                    "{name}: shipped three-class head, first pass at the same sizes: F1 {:.4} ({:.3} at IoU 0.75, {:.3} at 0.9)",
                    reference[0].f1(),
                    reference[1].f1(),
                    reference[2].f1()
                );
                for threshold in [0.4f32, 0.5, 0.6, 0.7] {
                    let mut row = String::new();
                    for nms in [0.1, 0.2, 0.3, 0.4] {
                        let m = nuclei::summed(
                            set.par_iter()
                                .zip(&maps)
                                .map(|(a, m)| {
                                    let got = instances(a, m, threshold, nms);
                                    nuclei::IOUS.map(|iou| matches(&got, &a.truth, iou))
                                })
                                .collect::<Vec<_>>(),
                        );
                        row.push_str(&format!(
                            " | suppress over {nms}: {:.4} ({:.3} {:.3})",
                            m[0].f1(),
                            m[1].f1(),
                            m[2].f1()
                        ));
                    }
                    println!("{name}: probability over {threshold}{row}");
                }
            }
            Ok(())
        }
        _ => anyhow::bail!(
            "usage: nuclei_star train STEPS OUT [LR] [INIT] | score WEIGHTS | ceiling"
        ),
    }
}
