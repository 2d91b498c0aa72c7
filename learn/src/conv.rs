//! Fast "same" convolution (stride 1, odd square kernel, zero padding k/2) as im2col + GEMM.
//!
//! Candle 0.11.1's CPU conv2d backward is a direct loop and made training ~10× slower than
//! PyTorch. Here the convolution is `im2col(x) · Wᵀ`: im2col is a custom op whose backward is
//! col2im, and the product is Candle's matmul (the `gemm` crate, multi-threaded), so autograd
//! reaches both the input and the weights through ordinary ops. Both gather loops run in
//! parallel over the batch. The gradient tests (tests.rs) check it against finite differences
//! and against Candle's own conv2d.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `x` [B, C, H, W] convolved with `weight` [O, C, k, k] (+ `bias` [O]), padding k/2:
/// [B, O, H, W]. Same result as `x.conv2d(weight, k/2, 1, 1, 1)`.
pub fn conv2d_same(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, wc, k, k2) = weight.dims4()?;
    if wc != c || k != k2 || ![1, 3, 5, 7].contains(&k) {
        candle_core::bail!(
            "conv2d_same: input has {c} channels, weight is {o}x{wc}x{k}x{k2} (need C={c}, square kernel of 1, 3, 5 or 7)"
        );
    }
    let weight = weight.reshape((o, c * k * k))?;
    let out = match bias {
        // The bias rides in the GEMM as a column of ones: a broadcast add and its backward
        // reduction cost as much as the product itself on small layers.
        Some(bias) => im2col_tensor(x, k, true)?
            .matmul(&Tensor::cat(&[&weight, &bias.reshape((o, 1))?], 1)?.t()?)?,
        None => im2col_tensor(x, k, false)?.matmul(&weight.t()?)?,
    }; // [B*H*W, O]
    to_nchw(&out, b, h * w, o)?.reshape((b, o, h, w))
}

/// [B·HW, O] → [B, O, HW], differentiable.
pub fn to_nchw(x: &Tensor, batch: usize, rows: usize, cols: usize) -> Result<Tensor> {
    x.apply_op1(Transpose { batch, rows, cols })
}

/// Per batch item, [rows, cols] → [cols, rows] (NHWC → NCHW, and back in the backward pass):
/// Candle's strided copy of the permuted view took longer than the GEMM.
struct Transpose {
    batch: usize,
    rows: usize,
    cols: usize,
}

fn transpose<T: WithDType>(src: &[T], (rows, cols): (usize, usize)) -> Vec<T> {
    let mut out = vec![T::zero(); src.len()];
    out.par_chunks_mut(rows * cols)
        .zip(src.par_chunks(rows * cols))
        .for_each(|(o, s)| transpose::transpose(s, o, cols, rows));
    out
}

impl CustomOp1 for Transpose {
    fn name(&self) -> &'static str {
        "plateflow-batch-transpose"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = (self.rows, self.cols);
        if layout.shape().elem_count() != self.batch * self.rows * self.cols {
            candle_core::bail!(
                "{}: shape {:?} is not {}x{}x{}",
                self.name(),
                layout.shape(),
                self.batch,
                self.rows,
                self.cols
            );
        }
        let out = map_float(
            storage,
            layout,
            self.name(),
            |s| transpose(s, dims),
            |s| transpose(s, dims),
        )?;
        Ok((out, Shape::from((self.batch, self.cols, self.rows))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let back = grad_res.contiguous()?.apply_op1(Transpose {
            batch: self.batch,
            rows: self.cols,
            cols: self.rows,
        })?;
        Ok(Some(back.reshape(arg.shape())?))
    }
}

/// [B, C, H, W] → [B·H·W, C·k·k (+1 with `ones`)]: see [`Im2Col`]. Differentiable.
pub fn im2col_tensor(x: &Tensor, k: usize, ones: bool) -> Result<Tensor> {
    if ![1, 3, 5, 7].contains(&k) {
        candle_core::bail!("im2col: kernel size {k} is not 1, 3, 5 or 7");
    }
    x.contiguous()?.apply_op1(Im2Col { k, ones })
}

/// [B, C, H, W] → [B·H·W, C·k·k]: row (b, y, x) holds the k×k neighbourhood of every channel,
/// zero outside the image, in the order of a conv weight flattened as [O, C·k·k]; with
/// `ones`, a last column of 1 (for the bias).
struct Im2Col {
    k: usize,
    ones: bool,
}

/// The adjoint of [`Im2Col`]: sums each column entry back onto the pixel it was copied from.
struct Col2Im {
    k: usize,
    ones: bool,
    dims: (usize, usize, usize, usize),
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

fn im2col<T: WithDType, const K: usize>(
    src: &[T],
    (b, c, h, w): (usize, usize, usize, usize),
    ones: bool,
) -> Vec<T> {
    // K is a constant so the per-pixel copies of K taps compile to moves, not memmove calls.
    let k = K;
    let pad = k / 2;
    let row_len = c * k * k + ones as usize;
    let mut out = vec![T::zero(); b * h * w * row_len];
    out.par_chunks_mut(h * w * row_len)
        .enumerate()
        .for_each(|(bi, out_b)| {
            let img = &src[bi * c * h * w..(bi + 1) * c * h * w];
            for y in 0..h {
                // All output pixels of image row y: w rows of the column matrix.
                let rows = &mut out_b[y * w * row_len..(y + 1) * w * row_len];
                if ones {
                    rows.chunks_exact_mut(row_len)
                        .for_each(|r| r[row_len - 1] = T::one());
                }
                for ci in 0..c {
                    for ky in 0..k {
                        let Some(sy) = (y + ky).checked_sub(pad).filter(|&sy| sy < h) else {
                            continue;
                        };
                        let line = &img[(ci * h + sy) * w..(ci * h + sy + 1) * w];
                        let off = (ci * k + ky) * k;
                        for x in 0..w {
                            let taps = &mut rows[x * row_len + off..x * row_len + off + k];
                            if x >= pad && x + k - pad <= w {
                                // Interior: one contiguous copy, no per-tap checks.
                                taps.copy_from_slice(&line[x - pad..x - pad + k]);
                            } else {
                                for (kx, d) in taps.iter_mut().enumerate() {
                                    if let Some(sx) = source_x(x, kx, pad, w) {
                                        *d = line[sx];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    out
}

fn col2im<T: WithDType, const K: usize>(
    cols: &[T],
    (b, c, h, w): (usize, usize, usize, usize),
    ones: bool,
) -> Vec<T> {
    // K is a constant so the per-pixel copies of K taps compile to moves, not memmove calls.
    let k = K;
    let pad = k / 2;
    let row_len = c * k * k + ones as usize;
    let mut out = vec![T::zero(); b * c * h * w];
    out.par_chunks_mut(c * h * w)
        .enumerate()
        .for_each(|(bi, img)| {
            let cols_b = &cols[bi * h * w * row_len..(bi + 1) * h * w * row_len];
            for y in 0..h {
                let rows = &cols_b[y * w * row_len..(y + 1) * w * row_len];
                for ci in 0..c {
                    for ky in 0..k {
                        let Some(sy) = (y + ky).checked_sub(pad).filter(|&sy| sy < h) else {
                            continue;
                        };
                        let line = &mut img[(ci * h + sy) * w..(ci * h + sy + 1) * w];
                        let off = (ci * k + ky) * k;
                        for x in 0..w {
                            let taps = &rows[x * row_len + off..x * row_len + off + k];
                            if x >= pad && x + k - pad <= w {
                                for (d, &v) in line[x - pad..x - pad + k].iter_mut().zip(taps) {
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
        });
    out
}

/// The contiguous data of a CPU tensor of f32 or f64, mapped through `f`.
fn map_float(
    storage: &CpuStorage,
    layout: &Layout,
    what: &str,
    f32_fn: impl Fn(&[f32]) -> Vec<f32>,
    f64_fn: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what}: input must be contiguous");
    };
    match storage {
        CpuStorage::F32(v) => Ok(CpuStorage::F32(f32_fn(&v[start..end]))),
        CpuStorage::F64(v) => Ok(CpuStorage::F64(f64_fn(&v[start..end]))),
        _ => candle_core::bail!("{what}: f32 or f64 tensors only"),
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "plateflow-im2col"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims4()?;
        let (k, ones) = (self.k, self.ones);
        let out = map_float(
            storage,
            layout,
            self.name(),
            |s| with_k!(k, im2col, s, dims, ones),
            |s| with_k!(k, im2col, s, dims, ones),
        )?;
        let (b, c, h, w) = dims;
        Ok((out, Shape::from((b * h * w, c * k * k + ones as usize))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?.apply_op1(Col2Im {
            k: self.k,
            ones: self.ones,
            dims: arg.dims4()?,
        })?;
        Ok(Some(grad))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "plateflow-col2im"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dims, k, ones) = (self.dims, self.k, self.ones);
        let out = map_float(
            storage,
            layout,
            self.name(),
            |s| with_k!(k, col2im, s, dims, ones),
            |s| with_k!(k, col2im, s, dims, ones),
        )?;
        Ok((out, Shape::from(dims)))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // col2im is linear and its adjoint is im2col (second derivatives, e.g. SmoothGrad of
        // a gradient, stay possible).
        Ok(Some(im2col_tensor(grad_res, self.k, self.ones)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.unit() - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

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
