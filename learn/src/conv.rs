//! Fast "same" convolution (stride 1, odd square kernel, zero padding k/2) as one fused CPU
//! op: per image, im2col into a tap-major scratch matrix [C·k·k, H·W] and one GEMM (the
//! `gemm` crate, which Candle's own matmul uses) straight into the NCHW output, which starts
//! as the bias. The backward pass is hand-written the same way: per image, dW = dY·colsᵀ,
//! dcols = Wᵀ·dY, col2im; dx is skipped for the network's input, which needs none.
//!
//! Why fused: Candle 0.11.1's CPU conv backward is a direct loop (training ran ~10× slower
//! than PyTorch), and composing im2col + matmul + transpose from Candle ops made autograd
//! allocate, zero and add a gradient for every intermediate — the 9×-larger column matrix
//! among them. Images are processed in parallel, each with its own scratch small enough for
//! the cache; per-image weight gradients are summed in image order, so results do not
//! depend on thread timing. The gradient tests check it against Candle's conv2d and against
//! finite differences.

use crate::cpu_op::{float_op, init_rows, slice};
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

/// [`conv2d_same`] (with its bias) outside the autograd graph, for ops that chain their
/// own backward pass (see [`crate::block`]).
pub(crate) fn conv2d_same_no_grad(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let k = weight.dim(2)?;
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &Conv { k })
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

/// For a tap at horizontal offset `s` (= kx − pad): the output columns `x` whose source
/// column `x + s` lies inside a row of width `w`, as (first output column, source start, length).
#[inline]
pub(crate) fn shifted_span(s: isize, w: usize) -> (usize, usize, usize) {
    let lead = (-s).max(0) as usize; // output columns left of the image
    let src = s.max(0) as usize;
    (lead.min(w), src.min(w), w.saturating_sub(s.unsigned_abs()))
}

/// One image [C, H, W] → its column matrix [C·K·K, H·W] in `out`, tap-major: row
/// (c, ky, kx) is the image plane c shifted by (ky − pad, kx − pad), zeros outside. Each
/// row is built from contiguous line copies, and the matrix multiplies the weight
/// [O, C·K·K] from the right to give the output in NCHW order directly.
fn im2col<T: WithDType, const K: usize>(
    img: &[T],
    (c, h, w): (usize, usize, usize),
    out: &mut [T],
) {
    im2col_rows::<T, K>(img, (c, h, w), 0..h, out)
}

/// [`im2col`] for output rows `rows` only: `out` is [C·K·K, rows.len()·W]. Inference splits a
/// layer into bands of rows this way (frozen.rs), so each band's matrix stays in the cache.
pub(crate) fn im2col_rows<T: WithDType, const K: usize>(
    img: &[T],
    (c, h, w): (usize, usize, usize),
    rows: std::ops::Range<usize>,
    out: &mut [T],
) {
    // Every entry is written (zeros where a tap falls outside), so `out` needs no clearing:
    // the column matrix is the largest buffer of the layer.
    let pad = K / 2;
    let hw = h * w;
    let n = rows.len() * w;
    for ci in 0..c {
        let plane = &img[ci * hw..(ci + 1) * hw];
        for ky in 0..K {
            for kx in 0..K {
                let row = &mut out[((ci * K + ky) * K + kx) * n..][..n];
                let (lead, src, len) = shifted_span(kx as isize - pad as isize, w);
                for (r, y) in rows.clone().enumerate() {
                    let dst = &mut row[r * w..(r + 1) * w];
                    match (y + ky).checked_sub(pad).filter(|&sy| sy < h) {
                        Some(sy) => {
                            dst[..lead].fill(T::zero());
                            dst[lead..lead + len].copy_from_slice(&plane[sy * w + src..][..len]);
                            dst[lead + len..].fill(T::zero());
                        }
                        None => dst.fill(T::zero()),
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
    let hw = h * w;
    for ci in 0..c {
        let plane = &mut img[ci * hw..(ci + 1) * hw];
        for ky in 0..K {
            for kx in 0..K {
                let row = &cols[((ci * K + ky) * K + kx) * hw..][..hw];
                let (lead, src, len) = shifted_span(kx as isize - pad as isize, w);
                for y in 0..h {
                    let Some(sy) = (y + ky).checked_sub(pad).filter(|&sy| sy < h) else {
                        continue;
                    };
                    let from = &row[y * w + lead..][..len];
                    for (d, &v) in plane[sy * w + src..][..len].iter_mut().zip(from) {
                        *d += v;
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

/// Images per rayon job: four jobs per thread, so column scratch (hundreds of KB, zeroed) is
/// allocated a few times per call rather than once per work-stealing split, while a thread
/// slowed by other work can still hand jobs to the others (one job per thread measured
/// 616-692 images/s against 650-716 for four, alternating, on 2 cores).
fn images_per_job(b: usize) -> usize {
    b.div_ceil(4 * rayon::current_num_threads()).max(1)
}

fn forward<T: WithDType, const K: usize>(x: &[T], wt: &[T], bias: &[T], d: Dims) -> Vec<T> {
    let (chw, hw) = (d.c * d.h * d.w, d.h * d.w);
    let len = d.b * d.o * hw;
    let mut y: Vec<T> = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(d.o * hw)
        .enumerate()
        .with_min_len(images_per_job(d.b))
        .for_each_init(
            || vec![T::zero(); d.kk * hw],
            |cols, (bi, yb)| {
                // Each output plane starts as its bias, written by the thread that then
                // adds the GEMM onto it.
                let yb = init_rows(yb, hw, |o| bias[o]);
                im2col::<T, K>(&x[bi * chw..(bi + 1) * chw], (d.c, d.h, d.w), cols);
                // yb [O, HW] += W [O, KK] · cols [KK, HW]
                unsafe {
                    gemm_into((d.o, hw, d.kk), yb, true, wt, (d.kk, 1), cols, (hw, 1));
                }
            },
        );
    // SAFETY: the chunks cover all `len` values and `init_rows` initialised each one.
    unsafe { y.set_len(len) };
    y
}

/// Gradients of [`forward`], packed as dx (B·C·H·W, absent unless `input_grad`), dW (O·KK),
/// db (O).
fn backward<T: WithDType, const K: usize>(
    x: &[T],
    wt: &[T],
    dy: &[T],
    d: Dims,
    input_grad: bool,
) -> Vec<T> {
    let (chw, hw) = (d.c * d.h * d.w, d.h * d.w);
    let nx = if input_grad { d.b * chw } else { 0 };
    // Room for dW and db too: they are appended below.
    let mut dx: Vec<T> = Vec::with_capacity(nx + d.o * d.kk + d.o);
    let one_image = |cols: &mut Vec<T>, dcols: &mut Vec<T>, bi: usize, dxb: Option<&mut [T]>| {
        let dyb = &dy[bi * d.o * hw..(bi + 1) * d.o * hw];
        let db: Vec<T> = dyb
            .chunks(hw)
            .map(|plane| plane.iter().fold(T::zero(), |a, &g| a + g))
            .collect();
        im2col::<T, K>(&x[bi * chw..(bi + 1) * chw], (d.c, d.h, d.w), cols);
        let mut dw = vec![T::zero(); d.o * d.kk];
        unsafe {
            // dW [O, KK] = dY [O, HW] · colsᵀ [HW, KK]
            gemm_into((d.o, d.kk, hw), &mut dw, false, dyb, (hw, 1), cols, (1, hw));
        }
        if let Some(dxb) = dxb {
            unsafe {
                // dcols [KK, HW] = Wᵀ [KK, O] · dY [O, HW]
                gemm_into((d.kk, hw, d.o), dcols, false, wt, (1, d.kk), dyb, (hw, 1));
            }
            col2im::<T, K>(dcols, (d.c, d.h, d.w), dxb);
        }
        (dw, db)
    };
    let scratch = || (vec![T::zero(); d.kk * hw], vec![T::zero(); d.kk * hw]);
    // Per image: dx directly, and its own dW and db (summed below, in image order).
    let per_image: Vec<(Vec<T>, Vec<T>)> = if input_grad {
        dx.spare_capacity_mut()[..nx]
            .par_chunks_mut(chw)
            .enumerate()
            .with_min_len(images_per_job(d.b))
            .map_init(scratch, |(cols, dcols), (bi, dxb)| {
                // col2im adds onto dx: zeroed here, in parallel.
                one_image(cols, dcols, bi, Some(init_rows(dxb, chw, |_| T::zero())))
            })
            .collect()
    } else {
        (0..d.b)
            .into_par_iter()
            .with_min_len(images_per_job(d.b))
            .map_init(
                || (vec![T::zero(); d.kk * hw], Vec::new()),
                |(cols, dcols), bi| one_image(cols, dcols, bi, None),
            )
            .collect()
    };
    // SAFETY: with `input_grad` the chunks cover all `nx` values, each initialised by
    // `init_rows`; without it `nx` is 0.
    unsafe { dx.set_len(nx) };
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
        let (dx, dw, db) = ConvBackward::run(x, w, grad, self.k)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// Backward of [`Conv`] as an op: args x, weight, dY → [dx; dW; db] flat (dx only with
/// `input_grad`).
pub(crate) struct ConvBackward {
    k: usize,
    d: Dims,
    input_grad: bool,
}

impl ConvBackward {
    /// dx (None when `x` needs no gradient), dW and db for the output gradient `grad`.
    pub(crate) fn run(
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        k: usize,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let d = dims_of(x.shape(), w.shape(), k)?;
        // The network's input needs no gradient: skip dx (a GEMM and col2im per image on
        // the largest layer) unless something upstream is tracked.
        let input_grad = x.track_op();
        let op = ConvBackward { k, d, input_grad };
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let (nx, nw) = (if input_grad { x.elem_count() } else { 0 }, w.elem_count());
        let dx = match input_grad {
            true => Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?),
            false => None,
        };
        Ok((
            dx,
            packed.narrow(0, nx, nw)?.reshape(w.shape())?,
            packed.narrow(0, nx + nw, d.o)?,
        ))
    }
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
            d,
            self.input_grad
        ));
        let nx = if self.input_grad {
            d.b * d.c * d.h * d.w
        } else {
            0
        };
        let len = nx + d.o * d.kk + d.o;
        Ok((out, Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::test_util::{grads_of, max_abs_diff, random};
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
            let (g1, g2) = (grads_of(&ours, &r), grads_of(&theirs, &r));
            for (name, v) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
                let d = max_abs_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-10, "{name} gradient k={k}: differs by {d}");
            }
            // An input that needs no gradient (the network's images) gets none, and the
            // weight and bias gradients stay the same.
            let plain = x.as_tensor().detach();
            let g3 = grads_of(&conv2d_same(&plain, &wt, Some(&bias)).unwrap(), &r);
            assert!(g3.get(&plain).is_none(), "untracked input got a gradient");
            for (name, v) in [("weight", &wt), ("bias", &bias)] {
                let d = max_abs_diff(g3.get(v).unwrap(), g2.get(v).unwrap());
                assert!(
                    d < 1e-10,
                    "{name} gradient without dx, k={k}: differs by {d}"
                );
            }
        }
    }
}
