//! The nucleus U-Net for inference only, on plain `f32` slices: each BatchNorm folded into
//! the convolution before it (scale into the weights, shift into the bias), ReLU applied
//! in the same pass, and every convolution split into bands of rows that run in parallel.
//!
//! Why not the training graph: the training conv parallelises over the images of a batch,
//! so one field used one core, and each layer allocated Candle tensors for BatchNorm, ReLU
//! and concatenation. Here one image keeps every core busy, a band's column matrix stays in
//! the cache, and the only allocations are one buffer per layer. The result equals
//! `UNet::forward(x, false)` + softmax (tested below, to float rounding).

use crate::conv::im2col_rows;
use crate::unet::{UNetConfig, CLASSES};
use rayon::prelude::*;

/// One 3×3 convolution with its BatchNorm folded in: `w` [O, C·9] (tap-major per input
/// channel, as `conv.rs` lays out its columns), `b` [O].
struct FoldedConv {
    c_in: usize,
    c_out: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

/// The network's weights, ready for [`FrozenUNet::probabilities`].
pub struct FrozenUNet {
    pub config: UNetConfig,
    down: Vec<[FoldedConv; 2]>,
    up: Vec<[FoldedConv; 2]>,
    /// 1×1 head: [CLASSES, C] and [CLASSES].
    head_w: Vec<f32>,
    head_b: Vec<f32>,
}

/// Reads one named tensor of the saved network as `f32` values.
pub type Getter<'a> = dyn Fn(&str) -> anyhow::Result<Vec<f32>> + 'a;

impl FrozenUNet {
    /// From the tensors of a trained [`crate::unet::UNet`], named as it names them.
    pub fn new(config: UNetConfig, get: &Getter) -> anyhow::Result<Self> {
        let double = |prefix: String, c_in: usize, c_out: usize| -> anyhow::Result<_> {
            let one = |i: usize, c: usize| -> anyhow::Result<FoldedConv> {
                let p = format!("{prefix}.c{i}");
                let w = get(&format!("{p}.conv.weight"))?;
                let b = get(&format!("{p}.conv.bias"))?;
                let gamma = get(&format!("{p}.bn.weight"))?;
                let beta = get(&format!("{p}.bn.bias"))?;
                let mean = get(&format!("{p}.bn.running_mean"))?;
                let var = get(&format!("{p}.bn.running_var"))?;
                anyhow::ensure!(
                    w.len() == c_out * c * 9
                        && [&b, &gamma, &beta, &mean, &var]
                            .iter()
                            .all(|v| v.len() == c_out),
                    "{p}: weights of the wrong shape for {c} → {c_out} channels"
                );
                let mut folded = FoldedConv {
                    c_in: c,
                    c_out,
                    w,
                    b: vec![0.0; c_out],
                };
                for o in 0..c_out {
                    // BatchNorm eps as in unet.rs.
                    let s = gamma[o] / (var[o] + 1e-5).sqrt();
                    folded.w[o * c * 9..(o + 1) * c * 9]
                        .iter_mut()
                        .for_each(|v| *v *= s);
                    folded.b[o] = (b[o] - mean[o]) * s + beta[o];
                }
                Ok(folded)
            };
            Ok([one(0, c_in)?, one(1, c_out)?])
        };
        let w = config.width;
        let mut down = Vec::new();
        let mut c_in = 1;
        for level in 0..config.depth {
            down.push(double(format!("down{level}"), c_in, w << level)?);
            c_in = w << level;
        }
        let mut up = Vec::new();
        for level in (0..config.depth - 1).rev() {
            let c = (w << (level + 1)) + (w << level);
            up.push(double(format!("up{level}"), c, w << level)?);
        }
        let head_w = get("head.weight")?;
        let head_b = get("head.bias")?;
        anyhow::ensure!(
            head_w.len() == CLASSES * w && head_b.len() == CLASSES,
            "head: weights of the wrong shape for {w} channels"
        );
        Ok(FrozenUNet {
            config,
            down,
            up,
            head_w,
            head_b,
        })
    }

    /// Per pixel of a `w`×`h` image (sides multiples of [`UNetConfig::multiple`]): the
    /// probabilities of (interior, foreground = interior + boundary).
    pub fn probabilities(&self, x: &[f32], w: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
        let m = self.config.multiple();
        assert!(
            w.is_multiple_of(m) && h.is_multiple_of(m) && x.len() == w * h,
            "image sides must be multiples of {m}"
        );
        let mut skips: Vec<(Vec<f32>, usize, usize)> = Vec::new();
        let (mut cur, mut cw, mut ch) = (x.to_vec(), w, h);
        for (level, convs) in self.down.iter().enumerate() {
            if level > 0 {
                cur = max_pool(&cur, convs[0].c_in, cw, ch);
                cw /= 2;
                ch /= 2;
            }
            for conv in convs {
                cur = conv3x3_relu(&cur, conv, cw, ch);
            }
            skips.push((cur.clone(), cw, ch));
        }
        skips.pop(); // the bottleneck is `cur` itself
        for convs in &self.up {
            let (skip, sw, sh) = skips.pop().expect("one skip per level");
            cur = upsample_and_concat(&cur, cw, ch, &skip);
            (cw, ch) = (sw, sh);
            for conv in convs {
                cur = conv3x3_relu(&cur, conv, cw, ch);
            }
        }
        self.head(&cur, w * h)
    }

    /// The 1×1 head and a softmax over the three classes, per pixel.
    fn head(&self, x: &[f32], hw: usize) -> (Vec<f32>, Vec<f32>) {
        let c = self.config.width;
        let mut interior = vec![0f32; hw];
        let mut fg = vec![0f32; hw];
        const CHUNK: usize = 4096;
        interior
            .par_chunks_mut(CHUNK)
            .zip(fg.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(k, (pi, pf))| {
                let start = k * CHUNK;
                for j in 0..pi.len() {
                    let mut z = [0f32; CLASSES];
                    for (cls, zc) in z.iter_mut().enumerate() {
                        let wr = &self.head_w[cls * c..(cls + 1) * c];
                        *zc = self.head_b[cls]
                            + wr.iter()
                                .enumerate()
                                .map(|(ci, wv)| wv * x[ci * hw + start + j])
                                .sum::<f32>();
                    }
                    let top = z.iter().copied().fold(f32::MIN, f32::max);
                    let e = z.map(|v| (v - top).exp());
                    let sum: f32 = e.iter().sum();
                    pi[j] = e[1] / sum;
                    pf[j] = (e[1] + e[2]) / sum;
                }
            });
        (interior, fg)
    }
}

/// A raw pointer the bands of one layer write through: each band owns distinct rows of
/// every output plane, so no two threads touch the same value.
#[derive(Clone, Copy)]
struct Rows(*mut f32);
unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}

impl Rows {
    /// Through a method, so closures capture the whole (Sync) wrapper, not its raw field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Rows per band: about 64 K column-matrix values (256 KB, within the L2 cache), at least
/// one row.
fn band_rows(c_in: usize, w: usize) -> usize {
    (65_536 / (9 * c_in * w)).max(1)
}

/// `x` [C, H, W] → relu(conv3x3(x) + b) [O, H, W], zero padding.
fn conv3x3_relu(x: &[f32], conv: &FoldedConv, w: usize, h: usize) -> Vec<f32> {
    let (c, o, hw) = (conv.c_in, conv.c_out, w * h);
    let mut y = vec![0f32; o * hw];
    let out = Rows(y.as_mut_ptr());
    let rows = band_rows(c, w);
    let bands: Vec<usize> = (0..h).step_by(rows).collect();
    bands.par_iter().for_each_init(
        || vec![0f32; 9 * c * rows * w],
        |cols, &y0| {
            let y1 = (y0 + rows).min(h);
            let n = (y1 - y0) * w;
            im2col_rows::<f32, 3>(x, (c, h, w), y0..y1, &mut cols[..9 * c * n]);
            // SAFETY: band [y0, y1) of each of the `o` planes is this job's alone, and the
            // strides keep the GEMM inside it.
            unsafe {
                let base = out.ptr().add(y0 * w);
                for oi in 0..o {
                    std::slice::from_raw_parts_mut(base.add(oi * hw), n).fill(conv.b[oi]);
                }
                gemm::gemm(
                    o,
                    n,
                    9 * c,
                    base,
                    1,
                    hw as isize,
                    true,
                    conv.w.as_ptr(),
                    1,
                    (9 * c) as isize,
                    cols.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for oi in 0..o {
                    for v in std::slice::from_raw_parts_mut(base.add(oi * hw), n) {
                        *v = v.max(0.0);
                    }
                }
            }
        },
    );
    y
}

/// 2×2 max-pool of [C, H, W] (even sides).
fn max_pool(x: &[f32], c: usize, w: usize, h: usize) -> Vec<f32> {
    let (w2, h2) = (w / 2, h / 2);
    let mut y = vec![0f32; c * w2 * h2];
    y.par_chunks_mut(w2 * h2).enumerate().for_each(|(ci, out)| {
        let plane = &x[ci * w * h..(ci + 1) * w * h];
        for yy in 0..h2 {
            let (a, b) = (&plane[2 * yy * w..][..w], &plane[(2 * yy + 1) * w..][..w]);
            for xx in 0..w2 {
                out[yy * w2 + xx] = a[2 * xx]
                    .max(a[2 * xx + 1])
                    .max(b[2 * xx])
                    .max(b[2 * xx + 1]);
            }
        }
    });
    y
}

/// The deeper maps `x` [C, H/2, W/2] upsampled 2× (nearest), followed by `skip` [S, H, W]
/// along the channels: [C + S, H, W], as `unet.rs` concatenates them.
fn upsample_and_concat(x: &[f32], w2: usize, h2: usize, skip: &[f32]) -> Vec<f32> {
    let (w, h) = (w2 * 2, h2 * 2);
    let c = x.len() / (w2 * h2);
    let mut y = vec![0f32; c * w * h + skip.len()];
    let (up, rest) = y.split_at_mut(c * w * h);
    up.par_chunks_mut(w * h).enumerate().for_each(|(ci, out)| {
        let plane = &x[ci * w2 * h2..(ci + 1) * w2 * h2];
        for yy in 0..h {
            let src = &plane[(yy / 2) * w2..][..w2];
            for (xx, v) in out[yy * w..(yy + 1) * w].iter_mut().enumerate() {
                *v = src[xx / 2];
            }
        }
    });
    rest.copy_from_slice(skip);
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::unet::UNet;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    /// Folded, banded inference equals the training graph in evaluation mode, with
    /// BatchNorm statistics far from the identity.
    #[test]
    fn equals_the_training_graph() {
        let varmap = VarMap::new();
        let config = UNetConfig { width: 4, depth: 3 };
        let net = UNet::new(
            config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        crate::test_util::randomise_network(&varmap, 9);
        let mut rng = Rng::new(9);
        let frozen = FrozenUNet::new(config, &|name| {
            let data = varmap.data().lock().unwrap();
            Ok(data[name].as_tensor().flatten_all()?.to_vec1::<f32>()?)
        })
        .unwrap();
        let (w, h) = (52usize, 36usize);
        let x: Vec<f32> = (0..w * h).map(|_| rng.unit() as f32).collect();
        let (fi, ff) = frozen.probabilities(&x, w, h);
        let t = Tensor::from_vec(x, (1, 1, h, w), &Device::Cpu).unwrap();
        let p = candle_nn::ops::softmax(&net.forward(&t, false).unwrap(), 1).unwrap();
        let p = p.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        let mut worst = 0f32;
        for y in 0..h {
            for xx in 0..w {
                worst = worst
                    .max((p[1][y][xx] - fi[y * w + xx]).abs())
                    .max((p[1][y][xx] + p[2][y][xx] - ff[y * w + xx]).abs());
            }
        }
        assert!(worst < 1e-4, "differs by {worst}");
    }
}
