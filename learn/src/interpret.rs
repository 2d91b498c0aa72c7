//! What the CNN looks at: saliency (gradient × input), SmoothGrad and Grad-CAM maps for
//! single cells, and the sanity check of Adebayo et al. (2018): maps from a model with
//! randomised weights must differ from the trained model's, or the maps show the image, not
//! the model.
//!
//! Maps are [H, W] vectors of non-negative importance, row-major, one per cell.

use crate::model::Cnn;
use crate::rng::Rng;
use candle_core::{Device, Tensor, Var};

/// One crop as a [1, C, H, W] tensor on the model's device.
fn input(model: &Cnn, crop: &[f32], shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(
        crop.to_vec(),
        (1, shape[0], shape[1], shape[2]),
        &Device::Cpu,
    )?
    .to_device(model.device())
}

/// ∂ logit[class] / ∂ input, [C·H·W], in evaluation mode (BatchNorm on running statistics).
fn input_gradient(model: &Cnn, x: &Tensor, class: usize) -> candle_core::Result<Vec<f32>> {
    let v = Var::from_tensor(x)?;
    let logit = model.forward(v.as_tensor(), None)?.get(0)?.get(class)?;
    let grads = logit.backward()?;
    let g = grads
        .get(v.as_tensor())
        .expect("the input takes part in the logit");
    g.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()
}

/// Sums |values| over channels: [C·H·W] → [H·W].
fn over_channels(v: &[f32], shape: &[usize]) -> Vec<f32> {
    let hw = shape[1] * shape[2];
    (0..hw)
        .map(|i| (0..shape[0]).map(|c| v[c * hw + i].abs()).sum())
        .collect()
}

/// Gradient × input, summed in absolute value over channels.
pub fn saliency(
    model: &Cnn,
    crop: &[f32],
    shape: &[usize],
    class: usize,
) -> candle_core::Result<Vec<f32>> {
    let g = input_gradient(model, &input(model, crop, shape)?, class)?;
    let gx: Vec<f32> = g.iter().zip(crop).map(|(g, x)| g * x).collect();
    Ok(over_channels(&gx, shape))
}

/// SmoothGrad (Smilkov et al. 2017): the mean gradient over `samples` copies of the crop with
/// Gaussian noise of `sigma` × the crop's value range, times the input, over channels.
pub fn smoothgrad(
    model: &Cnn,
    crop: &[f32],
    shape: &[usize],
    class: usize,
    samples: usize,
    sigma: f64,
    rng: &mut Rng,
) -> candle_core::Result<Vec<f32>> {
    let (lo, hi) = crop
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let sd = sigma * (hi - lo).max(1e-6) as f64;
    let mut mean = vec![0f32; crop.len()];
    for _ in 0..samples {
        let noisy: Vec<f32> = crop
            .iter()
            .map(|&v| v + (rng.normal() * sd) as f32)
            .collect();
        let g = input_gradient(model, &input(model, &noisy, shape)?, class)?;
        for (m, g) in mean.iter_mut().zip(g) {
            *m += g / samples as f32;
        }
    }
    let gx: Vec<f32> = mean.iter().zip(crop).map(|(g, x)| g * x).collect();
    Ok(over_channels(&gx, shape))
}

/// Grad-CAM (Selvaraju et al. 2017) on the last conv block: ReLU(Σ_k α_k A_k) with α_k the
/// spatial mean of ∂ logit / ∂ A_k, upsampled bilinearly to the crop's size.
pub fn grad_cam(
    model: &Cnn,
    crop: &[f32],
    shape: &[usize],
    class: usize,
) -> candle_core::Result<Vec<f32>> {
    let maps = model.features(&input(model, crop, shape)?, false)?.detach();
    let a = Var::from_tensor(&maps)?;
    let logit = model.head(a.as_tensor(), None)?.get(0)?.get(class)?;
    let grads = logit.backward()?;
    let g = grads.get(a.as_tensor()).expect("maps feed the head");
    let (_, k, h, w) = maps.dims4()?;
    let alpha = g
        .mean((2, 3))?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    let m = maps
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    let cam: Vec<f32> = (0..h * w)
        .map(|i| {
            (0..k)
                .map(|c| alpha[c] * m[c * h * w + i])
                .sum::<f32>()
                .max(0.0)
        })
        .collect();
    Ok(upsample_bilinear(&cam, h, w, shape[1], shape[2]))
}

/// Bilinear resize of a [h, w] map to [oh, ow] (pixel centres aligned).
fn upsample_bilinear(m: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let mut out = vec![0f32; oh * ow];
    for y in 0..oh {
        let sy = ((y as f32 + 0.5) * h as f32 / oh as f32 - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, fy) = (sy.floor() as usize, sy.fract());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..ow {
            let sx = ((x as f32 + 0.5) * w as f32 / ow as f32 - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, fx) = (sx.floor() as usize, sx.fract());
            let x1 = (x0 + 1).min(w - 1);
            let top = m[y0 * w + x0] * (1.0 - fx) + m[y0 * w + x1] * fx;
            let bottom = m[y1 * w + x0] * (1.0 - fx) + m[y1 * w + x1] * fx;
            out[y * ow + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

/// Spearman rank correlation of two maps (average ranks for ties).
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    fn ranks(v: &[f32]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0;
            for &k in &idx[i..=j] {
                r[k] = avg;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}
