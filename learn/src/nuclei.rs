//! The learned nucleus segmenter: images and their instance labels as training material,
//! augmentation that teaches invariance (scale, the eight flips and rotations, gamma,
//! brightness, noise), training of the U-Net (unet.rs), and inference to instances.
//! Validation is always on whole images no training crop came from.

use crate::rng::Rng;
use crate::unet::{pixel_loss, UNet, UNetConfig, CLASSES};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use plateflow_imaging::instances::{from_probabilities, matches, targets, Matching};
use plateflow_imaging::segment::Labels;
use plateflow_imaging::GrayImage;
use std::path::Path;

/// One image with its annotation, ready to train or score on.
#[derive(Debug, Clone)]
pub struct Annotated {
    pub id: String,
    pub width: usize,
    pub height: usize,
    /// Percentile-normalised intensities (see [`normalise`]).
    pub pixels: Vec<f32>,
    pub truth: Vec<u32>,
    /// Per-pixel classes from `truth` (background, interior, boundary).
    pub classes: Vec<u8>,
}

/// Intensities mapped so the 1st percentile is 0 and the 99.8th is 1 (8- or 16-bit alike;
/// values beyond stay, a little, so saturation remains visible).
pub fn normalise(img: &GrayImage) -> Vec<f32> {
    let mut sorted: Vec<u16> = img.data.clone();
    sorted.sort_unstable();
    let at = |q: f64| f32::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize]);
    let (lo, hi) = (at(0.01), at(0.998));
    let span = (hi - lo).max(1.0);
    img.data
        .iter()
        .map(|&v| ((f32::from(v) - lo) / span).clamp(-0.2, 1.5))
        .collect()
}

/// An image and its label image (same size; labels 0 = background, 1..n nuclei).
pub fn annotated(id: &str, image: &GrayImage, labels: &GrayImage) -> anyhow::Result<Annotated> {
    if (image.width, image.height) != (labels.width, labels.height) {
        anyhow::bail!(
            "{id}: image is {}x{} but its labels are {}x{}",
            image.width,
            image.height,
            labels.width,
            labels.height
        );
    }
    let (w, h) = (image.width as usize, image.height as usize);
    let truth: Vec<u32> = labels.data.iter().map(|&l| u32::from(l)).collect();
    Ok(Annotated {
        id: id.to_string(),
        width: w,
        height: h,
        pixels: normalise(image),
        classes: targets(&truth, w, h),
        truth,
    })
}

/// `images/<id>.png` with `labels/<id>.png` under `root` (the DSB 2018 layout), sorted by id.
pub fn load_pairs(root: &Path) -> anyhow::Result<Vec<Annotated>> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join("images"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".png").map(str::to_string)
        })
        .collect();
    ids.sort();
    ids.iter()
        .map(|id| {
            let img =
                plateflow_imaging::read_image(&root.join("images").join(format!("{id}.png")))?;
            let lab =
                plateflow_imaging::read_image(&root.join("labels").join(format!("{id}.png")))?;
            annotated(id, &img, &lab)
        })
        .collect()
}

/// The held-out fifth, chosen by image id alone (FNV-1a), so it never depends on the order or
/// number of images: the same image is always on the same side.
pub fn is_validation(id: &str) -> bool {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h.is_multiple_of(5)
}

/// How to train.
#[derive(Debug, Clone)]
pub struct SegTrainConfig {
    pub net: UNetConfig,
    pub steps: usize,
    pub batch: usize,
    /// Side of the square training crops (a multiple of the net's [`UNetConfig::multiple`]).
    pub crop: usize,
    pub lr: f64,
    /// Loss weight of boundary pixels (background and interior weigh 1).
    pub boundary_weight: f32,
    pub seed: u64,
}

impl Default for SegTrainConfig {
    fn default() -> Self {
        SegTrainConfig {
            net: UNetConfig::default(),
            steps: 2000,
            batch: 8,
            crop: 128,
            lr: 2e-3,
            boundary_weight: 3.0,
            seed: 1,
        }
    }
}

/// One augmented crop: scale 0.7–1.4 (nearest), one of the 8 flips/rotations, gamma,
/// brightness and contrast, Gaussian noise. (pixels, classes), `crop`² each.
pub fn augmented_crop(a: &Annotated, crop: usize, rng: &mut Rng) -> (Vec<f32>, Vec<u32>) {
    let scale = (0.7f64.ln() + rng.unit() * (1.4f64 / 0.7).ln()).exp();
    let span = crop as f64 * scale;
    let x0 = rng.unit() * (a.width as f64 - span).max(0.0);
    let y0 = rng.unit() * (a.height as f64 - span).max(0.0);
    let (flip_x, flip_y, transpose) = (rng.below(2) == 1, rng.below(2) == 1, rng.below(2) == 1);
    let gamma = (0.6f64.ln() + rng.unit() * (1.6f64 / 0.6).ln()).exp() as f32;
    let contrast = (0.7 + rng.unit() * 0.6) as f32;
    let offset = ((rng.unit() - 0.5) * 0.2) as f32;
    let noise = (rng.unit() * 0.05) as f32;
    let mut px = vec![0f32; crop * crop];
    let mut cls = vec![0u32; crop * crop];
    for v in 0..crop {
        for u in 0..crop {
            let (mut su, mut sv) = (u, v);
            if transpose {
                std::mem::swap(&mut su, &mut sv);
            }
            if flip_x {
                su = crop - 1 - su;
            }
            if flip_y {
                sv = crop - 1 - sv;
            }
            let x = (x0 + (su as f64 + 0.5) * scale) as usize;
            let y = (y0 + (sv as f64 + 0.5) * scale) as usize;
            let o = v * crop + u;
            if x < a.width && y < a.height {
                let i = y * a.width + x;
                let p = a.pixels[i].max(0.0).powf(gamma);
                px[o] = p * contrast + offset + noise * rng.normal() as f32;
                cls[o] = u32::from(a.classes[i]);
            } else {
                px[o] = offset + noise * rng.normal() as f32; // outside a small image: empty
            }
        }
    }
    (px, cls)
}

/// Progress of a training run: (step, training loss, validation AP at IoU 0.5 when measured).
pub type History = Vec<(usize, f32, Option<f64>)>;

/// Trains a U-Net on crops of `train`; every `eval_every` steps (0: never) scores `val`.
pub fn train(
    train: &[Annotated],
    val: &[Annotated],
    cfg: &SegTrainConfig,
    eval_every: usize,
    say: &dyn Fn(&str),
) -> anyhow::Result<(VarMap, UNet, History)> {
    anyhow::ensure!(!train.is_empty(), "no training images");
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let net = UNet::new(cfg.net, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    crate::model::seed_init(&varmap, cfg.seed)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let mut rng = Rng::new(cfg.seed);
    // Larger images give more crops: sample in proportion to area.
    let areas: Vec<f64> = train.iter().map(|a| (a.width * a.height) as f64).collect();
    let total: f64 = areas.iter().sum();
    let mut history = History::new();
    let t0 = std::time::Instant::now();
    for step in 1..=cfg.steps {
        // Cosine decay to a tenth.
        let t = step as f64 / cfg.steps as f64;
        opt.set_learning_rate(
            cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())),
        );
        let mut xs = Vec::with_capacity(cfg.batch * cfg.crop * cfg.crop);
        let mut ys = Vec::with_capacity(cfg.batch * cfg.crop * cfg.crop);
        for _ in 0..cfg.batch {
            let mut r = rng.unit() * total;
            let mut k = 0;
            while k + 1 < areas.len() && r >= areas[k] {
                r -= areas[k];
                k += 1;
            }
            let (px, cls) = augmented_crop(&train[k], cfg.crop, &mut rng);
            xs.extend(px);
            ys.extend(cls);
        }
        let x = Tensor::from_vec(xs, (cfg.batch, 1, cfg.crop, cfg.crop), &dev)?;
        let y = Tensor::from_vec(ys, cfg.batch * cfg.crop * cfg.crop, &dev)?;
        let loss = pixel_loss(&net.forward(&x, true)?, &y, [1.0, 1.0, cfg.boundary_weight])?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        let ap =
            (eval_every > 0 && (step % eval_every == 0 || step == cfg.steps) && !val.is_empty())
                .then(|| evaluate(&net, val).map(|m| m[0].ap()))
                .transpose()?;
        if step % 25 == 0 || ap.is_some() {
            say(&format!(
                "step {step}/{}: loss {l:.4}{} ({:.0} s)",
                cfg.steps,
                ap.map(|a| format!(", validation AP@0.5 {a:.3}"))
                    .unwrap_or_default(),
                t0.elapsed().as_secs_f64()
            ));
        }
        history.push((step, l, ap));
    }
    Ok((varmap, net, history))
}

/// The image mirrored by [`MARGIN`] pixels on every side (nuclei at the border see a
/// plausible neighbourhood, not a black frame), then zero-extended right and bottom to
/// `pw` x `ph`.
fn mirrored(pixels: &[f32], w: usize, h: usize, pw: usize, ph: usize) -> Vec<f32> {
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        // Reflect (without repeating the edge) until inside; tiny images wrap several times.
        for _ in 0..8 {
            if i < 0 {
                i = -i;
            }
            if i >= n {
                i = 2 * (n - 1) - i;
            }
        }
        i.clamp(0, n - 1) as usize
    };
    let m = MARGIN as isize;
    let mut out = vec![0f32; pw * ph];
    for y in 0..(h + 2 * MARGIN).min(ph) {
        let sy = reflect(y as isize - m, h);
        for x in 0..(w + 2 * MARGIN).min(pw) {
            out[y * pw + x] = pixels[sy * w + reflect(x as isize - m, w)];
        }
    }
    out
}

/// Class probabilities of one image: (interior, foreground = interior + boundary). The image
/// is mirrored by [`MARGIN`] and cut into tiles of [`TILE`] plus that margin of context on
/// each side, predicted a few at a time (in parallel, in bounded memory); each tile keeps its
/// centre. A pixel's value depends only on pixels within the network's reach (< MARGIN), so
/// the maps equal one pass over the whole mirrored image ([`probabilities_whole`]).
pub fn probabilities(
    net: &UNet,
    pixels: &[f32],
    w: usize,
    h: usize,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    // Small images in one pass (the same maps; tiles' margins would cost more than they save).
    if (w + 2 * MARGIN) * (h + 2 * MARGIN) <= WHOLE_PIXELS {
        return probabilities_whole(net, pixels, w, h);
    }
    let side = TILE + 2 * MARGIN;
    let (tx, ty) = (w.div_ceil(TILE), h.div_ceil(TILE));
    let (pw, ph) = (tx * TILE + 2 * MARGIN, ty * TILE + 2 * MARGIN);
    let padded = mirrored(pixels, w, h, pw, ph);
    let origins: Vec<(usize, usize)> = (0..ty)
        .flat_map(|j| (0..tx).map(move |i| (i * TILE, j * TILE)))
        .collect();
    let mut interior = vec![0f32; w * h];
    let mut fg = vec![0f32; w * h];
    for batch in origins.chunks(TILES_PER_BATCH) {
        let mut x = Vec::with_capacity(batch.len() * side * side);
        for &(ox, oy) in batch {
            for y in oy..oy + side {
                x.extend_from_slice(&padded[y * pw + ox..y * pw + ox + side]);
            }
        }
        let x = Tensor::from_vec(x, (batch.len(), 1, side, side), &Device::Cpu)?;
        let p = candle_nn::ops::softmax(&net.forward(&x, false)?, 1)?;
        let p: Vec<f32> = p.flatten_all()?.to_vec1()?;
        let plane = side * side;
        for (b, &(ox, oy)) in batch.iter().enumerate() {
            let base = b * CLASSES * plane;
            for y in oy..(oy + TILE).min(h) {
                for x in ox..(ox + TILE).min(w) {
                    let c = (y - oy + MARGIN) * side + (x - ox + MARGIN);
                    let pi = p[base + plane + c];
                    interior[y * w + x] = pi;
                    fg[y * w + x] = pi + p[base + 2 * plane + c];
                }
            }
        }
    }
    Ok((interior, fg))
}

/// Images up to this many pixels (margins included) are predicted in one pass.
const WHOLE_PIXELS: usize = 640 * 640;

/// Tiles per forward pass: enough to keep both cores busy, few enough for the conv's
/// per-image scratch (about 110 MB a tile at the widest level).
const TILES_PER_BATCH: usize = 4;

/// The same maps as [`probabilities`] from one pass over the whole mirrored image (memory
/// grows with the image): the reference the tiles are tested against.
pub fn probabilities_whole(
    net: &UNet,
    pixels: &[f32],
    w: usize,
    h: usize,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let m = net.config.multiple();
    let (pw, ph) = (
        (w + 2 * MARGIN).div_ceil(m) * m,
        (h + 2 * MARGIN).div_ceil(m) * m,
    );
    let padded = mirrored(pixels, w, h, pw, ph);
    let x = Tensor::from_vec(padded, (1, 1, ph, pw), &Device::Cpu)?;
    let p = candle_nn::ops::softmax(&net.forward(&x, false)?, 1)?;
    let p = p.squeeze(0)?.to_vec3::<f32>()?;
    let mut interior = Vec::with_capacity(w * h);
    let mut fg = Vec::with_capacity(w * h);
    for (rows_i, rows_b) in p[1].iter().zip(&p[2]).skip(MARGIN).take(h) {
        for (&pi, &pb) in rows_i.iter().zip(rows_b).skip(MARGIN).take(w) {
            interior.push(pi);
            fg.push(pi + pb);
        }
    }
    Ok((interior, fg))
}

/// Tiles are predicted with [`MARGIN`] pixels of context on each side.
pub const TILE: usize = 192;
/// Context around each tile: more than the network's reach from a pixel (two 3x3 convs per
/// level over three levels, 2x2 pools between: 28 pixels), so a tile's kept centre sees what
/// the whole image would have shown it, and objects are the same across seams.
pub const MARGIN: usize = 32;

/// Instances of one image.
pub fn segment(net: &UNet, pixels: &[f32], w: usize, h: usize) -> anyhow::Result<Labels> {
    let (interior, fg) = probabilities(net, pixels, w, h)?;
    Ok(from_probabilities(&interior, &fg, w, h, 8))
}

/// IoU thresholds reported: 0.5, 0.75, 0.9.
pub const IOUS: [f64; 3] = [0.5, 0.75, 0.9];

/// Object matching summed over `images`, at each of [`IOUS`].
pub fn evaluate(net: &UNet, images: &[Annotated]) -> anyhow::Result<[Matching; 3]> {
    let mut out = [Matching::default(); 3];
    for a in images {
        let got = segment(net, &a.pixels, a.width, a.height)?;
        for (m, &iou) in out.iter_mut().zip(&IOUS) {
            m.add(matches(&got.data, &a.truth, iou));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNetConfig;

    /// An image larger than a tile: tiled prediction gives the same objects as one pass
    /// (an untrained but deterministic net, its BatchNorm on running statistics).
    #[test]
    fn tiles_and_the_whole_image_give_the_same_objects() {
        let varmap = VarMap::new();
        let net = UNet::new(
            UNetConfig { width: 4, depth: 3 },
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        crate::model::seed_init(&varmap, 7).unwrap();
        let (w, h) = (640usize, 600usize);
        let mut rng = Rng::new(3);
        // Blobs on a noisy background.
        let mut px = vec![0f32; w * h];
        for _ in 0..120 {
            let (cx, cy, r) = (
                rng.below(w) as f64,
                rng.below(h) as f64,
                4.0 + rng.unit() * 8.0,
            );
            for y in 0..h {
                for x in 0..w {
                    let d = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
                    if d < r {
                        px[y * w + x] = 1.0;
                    }
                }
            }
        }
        for p in &mut px {
            *p += 0.05 * rng.normal() as f32;
        }
        let (wi, wf) = probabilities_whole(&net, &px, w, h).unwrap();
        let (ti, tf) = probabilities(&net, &px, w, h).unwrap();
        let worst = wi
            .iter()
            .zip(&ti)
            .chain(wf.iter().zip(&tf))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "tiles differ from the whole image by {worst}");
        let a = from_probabilities(&wi, &wf, w, h, 8);
        let b = from_probabilities(&ti, &tf, w, h, 8);
        assert_eq!(a.count, b.count);
        assert_eq!(matches(&a.data, &b.data, 0.99).0, a.count as usize);
    }
}
