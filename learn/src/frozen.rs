//! The nucleus U-Net for inference only, on plain `f32` slices: each BatchNorm folded into
//! the convolution before it (scale into the weights, shift into the bias), ReLU applied
//! in the same pass, and every convolution split into bands of rows that run in parallel.
//!
//! Why not the training graph: the training conv parallelises over the images of a batch,
//! so one field used one core, and each layer allocated Candle tensors for BatchNorm, ReLU
//! and concatenation. Here one image keeps every core busy, a band's column matrix stays in
//! the cache, and the only allocations are one buffer per layer. The result equals
//! `UNet::forward(x, false)` + softmax (tested below, to float rounding).

use crate::conv::{im2col_rows, shifted_span};
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
    /// Per up level, deepest first: its first convolution (over the upsampled deeper maps
    /// and the skip) and its second.
    up: Vec<(UpConv, FoldedConv)>,
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
            let deep = w << (level + 1);
            let [first, second] = double(format!("up{level}"), deep + (w << level), w << level)?;
            up.push((UpConv::new(&first, deep), second));
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
        for (first, second) in &self.up {
            let (skip, sw, sh) = skips.pop().expect("one skip per level");
            debug_assert_eq!((sw, sh), (2 * cw, 2 * ch));
            cur = up_conv_relu(&cur, &skip, first, sw, sh);
            (cw, ch) = (sw, sh);
            cur = conv3x3_relu(&cur, second, cw, ch);
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
                add_product(base, hw, &conv.w, (o, 9 * c), &cols[..9 * c * n], n, true);
                relu_rows(base, hw, o, n);
            }
        },
    );
    y
}

/// The first convolution of an up level, over [the deeper maps upsampled 2× (nearest), the
/// skip] as `unet.rs` concatenates them, without building either. A 3×3 convolution of a
/// nearest-upsampled map is, at each of the four output phases (row and column parity), a
/// 2×2 convolution of the map before upsampling whose taps are the 3×3 taps that read the
/// same source pixel, summed: 4 products per deeper channel instead of 9 (a fifth less work
/// for the whole network at width 12), and the same zero padding.
struct UpConv {
    /// The skip's share: its channels' 3×3 weights, and the bias.
    skip: FoldedConv,
    /// The deeper maps' channels.
    c_deep: usize,
    /// Per phase (row parity · 2 + column parity): [O, C_deep·4], taps (r, s) for source
    /// offsets (parity − 1 + r, parity − 1 + s) in deeper-map pixels.
    phases: [Vec<f32>; 4],
}

impl UpConv {
    /// From the folded convolution over the concatenation, whose first `c_deep` input
    /// channels are the upsampled deeper maps.
    fn new(conv: &FoldedConv, c_deep: usize) -> Self {
        let (c, o) = (conv.c_in, conv.c_out);
        let s = c - c_deep;
        let skip = FoldedConv {
            c_in: s,
            c_out: o,
            w: (0..o)
                .flat_map(|oi| {
                    conv.w[oi * c * 9 + c_deep * 9..(oi + 1) * c * 9]
                        .iter()
                        .copied()
                })
                .collect(),
            b: conv.b.clone(),
        };
        let phases = std::array::from_fn(|phase| {
            let (a, b) = ((phase / 2) as isize, (phase % 2) as isize);
            let mut wp = vec![0f32; o * c_deep * 4];
            for oi in 0..o {
                for ci in 0..c_deep {
                    for ky in 0..3isize {
                        for kx in 0..3isize {
                            // Output row 2i + a reads upsampled row 2i + a + ky − 1, which
                            // is deeper row i + ⌊(a + ky − 1) / 2⌋.
                            let r = (a + ky - 1).div_euclid(2) - (a - 1);
                            let t = (b + kx - 1).div_euclid(2) - (b - 1);
                            wp[(oi * c_deep + ci) * 4 + (r * 2 + t) as usize] +=
                                conv.w[oi * c * 9 + ci * 9 + (ky * 3 + kx) as usize];
                        }
                    }
                }
            }
            wp
        });
        UpConv {
            skip,
            c_deep,
            phases,
        }
    }
}

/// relu(conv3x3([upsample2×(deep), skip]) + b): `deep` [C_deep, H/2, W/2], `skip` [S, H, W]
/// → [O, H, W], as [`conv3x3_relu`] on their concatenation would give (to float rounding).
fn up_conv_relu(deep: &[f32], skip: &[f32], conv: &UpConv, w: usize, h: usize) -> Vec<f32> {
    let (s, o, cd, hw) = (conv.skip.c_in, conv.skip.c_out, conv.c_deep, w * h);
    let (w2, h2) = (w / 2, h / 2);
    let mut y = vec![0f32; o * hw];
    let out = Rows(y.as_mut_ptr());
    // Deeper rows per band: their two output rows' skip columns about as many values as
    // one band of `conv3x3_relu`.
    let rows = (band_rows(s, w) / 2).max(1);
    let bands: Vec<usize> = (0..h2).step_by(rows).collect();
    bands.par_iter().for_each_init(
        || {
            (
                vec![0f32; 9 * s * 2 * rows * w],
                vec![0f32; 4 * cd * rows * w2],
                vec![0f32; o * rows * w2],
            )
        },
        |(cols, deep_cols, part), &i0| {
            let i1 = (i0 + rows).min(h2);
            let (y0, n, n2) = (2 * i0, 2 * (i1 - i0) * w, (i1 - i0) * w2);
            im2col_rows::<f32, 3>(skip, (s, h, w), y0..2 * i1, &mut cols[..9 * s * n]);
            // SAFETY: rows [2·i0, 2·i1) of each of the `o` planes are this job's alone; the
            // GEMM's strides and the phase writes stay inside them.
            unsafe {
                let base = out.ptr().add(y0 * w);
                for oi in 0..o {
                    std::slice::from_raw_parts_mut(base.add(oi * hw), n).fill(conv.skip.b[oi]);
                }
                add_product(
                    base,
                    hw,
                    &conv.skip.w,
                    (o, 9 * s),
                    &cols[..9 * s * n],
                    n,
                    true,
                );
                for (phase, wp) in conv.phases.iter().enumerate() {
                    let (a, b) = (phase / 2, phase % 2);
                    let dc = &mut deep_cols[..4 * cd * n2];
                    deep_taps(deep, (cd, h2, w2), i0..i1, (a, b), dc);
                    let part = &mut part[..o * n2];
                    add_product(part.as_mut_ptr(), n2, wp, (o, 4 * cd), dc, n2, false);
                    for oi in 0..o {
                        let plane = base.add(oi * hw);
                        for r in 0..i1 - i0 {
                            let dst = std::slice::from_raw_parts_mut(plane.add((2 * r + a) * w), w);
                            let src = &part[oi * n2 + r * w2..][..w2];
                            for (j, v) in src.iter().enumerate() {
                                dst[2 * j + b] += v;
                            }
                        }
                    }
                }
                relu_rows(base, hw, o, n);
            }
        },
    );
    y
}

/// The column matrix of one phase's 2×2 taps over deeper rows `rows` of `x` [C, H2, W2]:
/// row (c, r, s) holds plane c shifted by (a − 1 + r, b − 1 + s), zeros outside.
fn deep_taps(
    x: &[f32],
    (c, h2, w2): (usize, usize, usize),
    rows: std::ops::Range<usize>,
    (a, b): (usize, usize),
    out: &mut [f32],
) {
    let n = rows.len() * w2;
    for ci in 0..c {
        let plane = &x[ci * h2 * w2..(ci + 1) * h2 * w2];
        for r in 0..2 {
            for t in 0..2 {
                let row = &mut out[(ci * 4 + r * 2 + t) * n..][..n];
                let (lead, src, len) = shifted_span(b as isize - 1 + t as isize, w2);
                for (k, i) in rows.clone().enumerate() {
                    let dst = &mut row[k * w2..(k + 1) * w2];
                    match (i + a + r).checked_sub(1).filter(|&sy| sy < h2) {
                        Some(sy) => {
                            dst[..lead].fill(0.0);
                            dst[lead..lead + len].copy_from_slice(&plane[sy * w2 + src..][..len]);
                            dst[lead + len..].fill(0.0);
                        }
                        None => dst.fill(0.0),
                    }
                }
            }
        }
    }
}

/// `dst` [O, n] (rows `ld` apart) = (`dst` if `accumulate`) + `lhs` [O, K] · `rhs` [K, n].
///
/// # Safety
/// `dst` must be valid for writes of O rows of n values, `ld` apart.
unsafe fn add_product(
    dst: *mut f32,
    ld: usize,
    lhs: &[f32],
    (o, k): (usize, usize),
    rhs: &[f32],
    n: usize,
    accumulate: bool,
) {
    debug_assert!(lhs.len() == o * k && rhs.len() == k * n);
    gemm::gemm(
        o,
        n,
        k,
        dst,
        1,
        ld as isize,
        accumulate,
        lhs.as_ptr(),
        1,
        k as isize,
        rhs.as_ptr(),
        1,
        n as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// ReLU over the first `n` values of `o` planes `hw` apart.
///
/// # Safety
/// As [`add_product`]'s `dst`.
unsafe fn relu_rows(base: *mut f32, hw: usize, o: usize, n: usize) {
    for oi in 0..o {
        for v in std::slice::from_raw_parts_mut(base.add(oi * hw), n) {
            *v = v.max(0.0);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::unet::UNet;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    /// The deeper maps `x` [C, H/2, W/2] upsampled 2× (nearest), followed by `skip` [S, H, W]
    /// along the channels: [C + S, H, W], as `unet.rs` concatenates them.
    fn upsample_and_concat(x: &[f32], w2: usize, h2: usize, skip: &[f32]) -> Vec<f32> {
        let (w, h) = (w2 * 2, h2 * 2);
        let c = x.len() / (w2 * h2);
        let mut y = vec![0f32; c * w * h + skip.len()];
        let (up, rest) = y.split_at_mut(c * w * h);
        up.chunks_mut(w * h).enumerate().for_each(|(ci, out)| {
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

    /// The up level's first convolution by phases equals the 3×3 convolution of the
    /// upsampled deeper maps concatenated with the skip, over many bands (a wide image, so
    /// a band is one deeper row) and at the image's edges.
    #[test]
    fn up_convolution_by_phases_equals_the_convolution_of_the_concatenation() {
        let mut rng = Rng::new(4);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.unit() as f32 - 0.5).collect() };
        for (w, h, cd, s, o) in [
            (600usize, 10usize, 6usize, 8usize, 5usize),
            (8, 6, 3, 2, 4),
            (2, 2, 1, 1, 3),
        ] {
            let conv = FoldedConv {
                c_in: cd + s,
                c_out: o,
                w: values(o * (cd + s) * 9),
                b: values(o),
            };
            let deep = values(cd * (w / 2) * (h / 2));
            let skip = values(s * w * h);
            let want = conv3x3_relu(
                &upsample_and_concat(&deep, w / 2, h / 2, &skip),
                &conv,
                w,
                h,
            );
            let got = up_conv_relu(&deep, &skip, &UpConv::new(&conv, cd), w, h);
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{w}x{h}: differs by {worst}");
            assert!(got.iter().any(|&v| v > 0.0), "{w}x{h}: all zero");
        }
    }

    /// Folded, banded inference equals the training graph in evaluation mode, with
    /// BatchNorm statistics far from the identity.
    #[test]
    fn equals_the_training_graph() {
        // Depth 1 has no up level; depths 2–4 run one to three of them by phases.
        for (width, depth, w, h) in [
            (4, 3, 52usize, 36usize),
            (3, 1, 9, 7),
            (5, 2, 22, 14),
            (2, 4, 48, 40),
        ] {
            let varmap = VarMap::new();
            let config = UNetConfig { width, depth };
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
            assert!(
                worst < 1e-4,
                "width {width}, depth {depth}: differs by {worst}"
            );
        }
    }
}
