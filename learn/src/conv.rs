//! Fast "same" convolution (stride 1, odd square kernel, zero padding k/2) as one fused CPU
//! op: per image, im2col into a scratch matrix, one GEMM (the `gemm` crate, which Candle's
//! own matmul uses), and the bias added while writing the NCHW output. The backward pass is
//! hand-written the same way: per image, dY → NHWC, dW += dYᵀ·cols, dcols = dY·W, col2im.
//!
//! Why fused: Candle 0.11.1's CPU conv backward is a direct loop (training ran ~10× slower
//! than PyTorch), and composing im2col + matmul + transpose from Candle ops made autograd
//! allocate, zero and add a gradient for every intermediate — the 9×-larger column matrix
//! among them. Images are processed in parallel, each with its own scratch small enough for
//! the cache; per-image weight gradients are summed in image order, so results do not
//! depend on thread timing. The gradient tests check it against Candle's conv2d and against
//! finite differences.

use crate::cpu_op::{float_op, slice};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `x` [B, C, H, W] convolved with `weight` [O, C, k, k] (+ `bias` [O]), padding k/2:
/// [B, O, H, W]. Same result as `x.conv2d(weight, k/2, 1, 1, 1)` (+ bias).
pub fn conv2d_same(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (o, wc, k, k2) = weight.dims4()?;
    if wc != c || k != k2 || ![1, 3, 5, 7].contains(&k) {
        candle_core::bail!(
            "conv2d_same: input has {c} channels, weight is {o}x{wc}x{k}x{k2} (need C={c}, square kernel of 1, 3, 5 or 7)"
        );
    }
    let bias = match bias {
        Some(b) => b.clone(),
        None => Tensor::zeros(o, weight.dtype(), weight.device())?,
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Conv { k })
}

/// Calls `$f::<_, K>` for the kernel sizes plateflow uses (checked in `conv2d_same`).
macro_rules! with_k {
    ($k:expr, $f:ident, $($arg:expr),*) => {
        match $k {
            1 => $f::<_, 1>($($arg),*),
            3 => $f::<_, 3>($($arg),*),
            5 => $f::<_, 5>($($arg),*),
            _ => $f::<_, 7>($($arg),*),
        }
    };
}

/// The column (within the image) that tap `kx` of output column `x` reads, if inside.
#[inline]
fn source_x(x: usize, kx: usize, pad: usize, w: usize) -> Option<usize> {
    (x + kx).checked_sub(pad).filter(|&sx| sx < w)
}

/// One image [C, H, W] → its column matrix [H·W, C·K·K] in `out` (zeros outside the image):
/// row (y, x) holds the K×K neighbourhood of every channel, in the order of a weight
/// flattened as [O, C·K·K]. K is a constant so the per-pixel copies compile to moves.
fn im2col<T: WithDType, const K: usize>(
    img: &[T],
    (c, h, w): (usize, usize, usize),
    out: &mut [T],
) {
    // Every entry is written (zeros where a tap falls outside), so `out` needs no clearing:
    // the column matrix is the largest buffer of the layer.
    let pad = K / 2;
    let row_len = c * K * K;
    for y in 0..h {
        let rows = &mut out[y * w * row_len..(y + 1) * w * row_len];
        for ci in 0..c {
            for ky in 0..K {
                let off = (ci * K + ky) * K;
                let Some(sy) = (y + ky).checked_sub(pad).filter(|&sy| sy < h) else {
                    for x in 0..w {
                        rows[x * row_len + off..x * row_len + off + K].fill(T::zero());
                    }
                    continue;
                };
                let line = &img[(ci * h + sy) * w..(ci * h + sy + 1) * w];
                for x in 0..w {
                    let taps = &mut rows[x * row_len + off..x * row_len + off + K];
                    if x >= pad && x + K - pad <= w {
                        // Interior: one contiguous copy, no per-tap checks.
                        taps.copy_from_slice(&line[x - pad..x - pad + K]);
                    } else {
                        for (kx, d) in taps.iter_mut().enumerate() {
                            *d = source_x(x, kx, pad, w).map_or(T::zero(), |sx| line[sx]);
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry back onto the pixel it was copied from.
fn col2im<T: WithDType, const K: usize>(
    cols: &[T],
    (c, h, w): (usize, usize, usize),
    img: &mut [T],
) {
    // `img` starts at zero: the caller allocates it zeroed.
    let pad = K / 2;
    let row_len = c * K * K;
    for y in 0..h {
        let rows = &cols[y * w * row_len..(y + 1) * w * row_len];
        for ci in 0..c {
            for ky in 0..K {
                let Some(sy) = (y + ky).checked_sub(pad).filter(|&sy| sy < h) else {
                    continue;
                };
                let line = &mut img[(ci * h + sy) * w..(ci * h + sy + 1) * w];
                let off = (ci * K + ky) * K;
                for x in 0..w {
                    let taps = &rows[x * row_len + off..x * row_len + off + K];
                    if x >= pad && x + K - pad <= w {
                        for (d, &v) in line[x - pad..x - pad + K].iter_mut().zip(taps) {
                            *d += v;
                        }
                    } else {
                        for (kx, &v) in taps.iter().enumerate() {
                            if let Some(sx) = source_x(x, kx, pad, w) {
                                line[sx] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// dst[m×n] (row-major) = lhs · rhs, with each operand given by its row and column strides;
/// single-threaded (the callers run one per image in parallel).
///
/// # Safety
/// The strides must keep every access inside the slices (checked by the callers' shapes).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    debug_assert!(dst.len() >= m * n);
    gemm::gemm(
        m,
        n,
        k,
        dst.as_mut_ptr(),
        1,
        n as isize,
        accumulate,
        lhs.as_ptr(),
        lhs_cs as isize,
        lhs_rs as isize,
        rhs.as_ptr(),
        rhs_cs as isize,
        rhs_rs as isize,
        T::one(),
        T::one(),
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Shapes of one convolution: batch, channels in and out, height, width, taps per output.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    /// C·k·k
    kk: usize,
}

fn forward<T: WithDType, const K: usize>(x: &[T], wt: &[T], bias: &[T], d: Dims) -> Vec<T> {
    let (chw, hw) = (d.c * d.h * d.w, d.h * d.w);
    let mut y = vec![T::zero(); d.b * d.o * hw];
    y.par_chunks_mut(d.o * hw).enumerate().for_each_init(
        || (vec![T::zero(); hw * d.kk], vec![T::zero(); hw * d.o]),
        |(cols, yt), (bi, yb)| {
            im2col::<T, K>(&x[bi * chw..(bi + 1) * chw], (d.c, d.h, d.w), cols);
            // yt [HW, O] = cols [HW, KK] · Wᵀ (W is [O, KK] row-major).
            unsafe {
                gemm_into((hw, d.o, d.kk), yt, false, cols, (d.kk, 1), wt, (1, d.kk));
            }
            for (o, plane) in yb.chunks_mut(hw).enumerate() {
                for (p, v) in plane.iter_mut().enumerate() {
                    *v = yt[p * d.o + o] + bias[o];
                }
            }
        },
    );
    y
}

/// Gradients of [`forward`], packed as dx (B·C·H·W), dW (O·KK), db (O).
fn backward<T: WithDType, const K: usize>(x: &[T], wt: &[T], dy: &[T], d: Dims) -> Vec<T> {
    let (chw, hw) = (d.c * d.h * d.w, d.h * d.w);
    let mut dx = vec![T::zero(); d.b * chw];
    // Per image: dx directly, and its own dW and db (summed below, in image order).
    let per_image: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(chw)
        .enumerate()
        .map_init(
            || {
                (
                    vec![T::zero(); hw * d.kk],
                    vec![T::zero(); hw * d.o],
                    vec![T::zero(); hw * d.kk],
                )
            },
            |(cols, dyt, dcols), (bi, dxb)| {
                let dyb = &dy[bi * d.o * hw..(bi + 1) * d.o * hw];
                let mut db = vec![T::zero(); d.o];
                for (o, plane) in dyb.chunks(hw).enumerate() {
                    for (p, &g) in plane.iter().enumerate() {
                        dyt[p * d.o + o] = g;
                        db[o] += g;
                    }
                }
                im2col::<T, K>(&x[bi * chw..(bi + 1) * chw], (d.c, d.h, d.w), cols);
                let mut dw = vec![T::zero(); d.o * d.kk];
                unsafe {
                    // dW [O, KK] = dytᵀ [O, HW] · cols [HW, KK]
                    gemm_into(
                        (d.o, d.kk, hw),
                        &mut dw,
                        false,
                        dyt,
                        (1, d.o),
                        cols,
                        (d.kk, 1),
                    );
                    // dcols [HW, KK] = dyt [HW, O] · W [O, KK]
                    gemm_into((hw, d.kk, d.o), dcols, false, dyt, (d.o, 1), wt, (d.kk, 1));
                }
                col2im::<T, K>(dcols, (d.c, d.h, d.w), dxb);
                (dw, db)
            },
        )
        .collect();
    let mut out = dx;
    let mut dw = vec![T::zero(); d.o * d.kk];
    let mut db = vec![T::zero(); d.o];
    for (w, b) in per_image {
        dw.iter_mut().zip(w).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(b).for_each(|(a, v)| *a += v);
    }
    out.extend(dw);
    out.extend(db);
    out
}

/// The convolution: args x [B, C, H, W], weight [O, C, k, k], bias [O].
struct Conv {
    k: usize,
}

fn dims_of(x: &Shape, w: &Shape, k: usize) -> Result<Dims> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, _, _, _) = w.dims4()?;
    Ok(Dims {
        b,
        c,
        o,
        h,
        w: wd,
        kk: c * k * k,
    })
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "plateflow-conv2d-same"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims_of(l1.shape(), l2.shape(), self.k)?;
        let n = self.name();
        let y = float_op!(n, s1, |T| with_k!(
            self.k,
            forward,
            slice::<T>(s1, l1, n)?,
            slice::<T>(s2, l2, n)?,
            slice::<T>(s3, l3, n)?,
            d
        ));
        Ok((y, Shape::from((d.b, d.o, d.h, d.w))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = dims_of(x.shape(), w.shape(), self.k)?;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &ConvBackward { k: self.k, d })?;
        let (nx, nw) = (x.elem_count(), w.elem_count());
        Ok((
            Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?),
            Some(packed.narrow(0, nx, nw)?.reshape(w.shape())?),
            Some(packed.narrow(0, nx + nw, d.o)?),
        ))
    }
}

/// Backward of [`Conv`] as an op: args x, weight, dY → [dx; dW; db] flat.
struct ConvBackward {
    k: usize,
    d: Dims,
}

impl CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "plateflow-conv2d-same-backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = self.name();
        let d = self.d;
        let out = float_op!(n, s1, |T| with_k!(
            self.k,
            backward,
            slice::<T>(s1, l1, n)?,
            slice::<T>(s2, l2, n)?,
            slice::<T>(s3, l3, n)?,
            d
        ));
        let len = d.b * d.c * d.h * d.w + d.o * d.kk + d.o;
        Ok((out, Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::test_util::{max_abs_diff, random};
    use candle_core::Var;

    /// Output, input gradient and weight gradient equal Candle's conv2d (0.11.1, whose conv
    /// gradients are right) for 3×3 and 5×5 kernels, batch 3, odd sizes.
    #[test]
    fn im2col_conv_matches_candle_conv2d_forward_and_backward() {
        let mut rng = Rng::new(5);
        for (k, (b, c, h, w), o) in [(3, (3, 2, 7, 9), 4), (5, (2, 3, 6, 5), 2)] {
            let x = Var::from_tensor(&random(&[b, c, h, w], &mut rng)).unwrap();
            let wt = Var::from_tensor(&random(&[o, c, k, k], &mut rng)).unwrap();
            let bias = Var::from_tensor(&random(&[o], &mut rng)).unwrap();
            let r = random(&[b, o, h, w], &mut rng);
            let ours = conv2d_same(&x, &wt, Some(&bias)).unwrap();
            let theirs = x
                .conv2d(&wt, k / 2, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            assert!(max_abs_diff(&ours, &theirs) < 1e-12, "forward k={k}");
            let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
                let d = max_abs_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-10, "{name} gradient k={k}: differs by {d}");
            }
        }
    }
}
