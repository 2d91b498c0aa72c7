//! BatchNorm and ReLU + 2×2 max-pool as fused CPU ops with hand-written backward passes.
//!
//! Candle 0.11.1 composes BatchNorm from a transpose, reductions and broadcasts: on the CPU
//! its backward took 3× the time of the convolutions. Here each is one or two passes over the
//! data, parallel over the batch; the gradient tests (tests.rs and below) check them against
//! finite differences and against the composed ops. Variable names and semantics follow
//! `candle_nn::BatchNorm` (weight, bias, running_mean, running_var; momentum 0.1; running
//! variance unbiased), so saved models load either way.

use crate::cpu_op::{float_op, init_rows, par_build, slice};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, Var, WithDType,
};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;
use std::mem::MaybeUninit;

const MOMENTUM: f64 = 0.1;

pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
}

impl BatchNorm2d {
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
        Ok(BatchNorm2d {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.))?,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            eps,
        })
    }

    /// Training: normalise by this batch's statistics (gradients flow through them) and update
    /// the running ones. Evaluation: normalise by the running statistics (constants).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = x.contiguous()?;
        let stats = if train {
            self.batch_stats(&x)?
        } else {
            Tensor::stack(
                &[
                    self.running_mean.as_detached_tensor(),
                    self.running_var.as_detached_tensor(),
                ],
                0,
            )?
        };
        let affine = Tensor::cat(&[&self.weight, &self.bias], 0)?; // [2C], differentiable
        x.apply_op3(
            &affine,
            &stats,
            Normalize {
                eps: self.eps,
                batch_stats: train,
            },
        )
    }

    /// This batch's [mean; biased variance] per channel, [2, C]; the running statistics
    /// move towards them (momentum 0.1, unbiased variance).
    fn batch_stats(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        let stats = x.apply_op1_no_bwd(&ChannelStats)?;
        let n = (x.elem_count() / c) as f64;
        let mean = stats.get(0)?;
        let var = stats.get(1)?;
        let unbiased = (&var * (n / (n - 1.0).max(1.0)))?;
        self.running_mean
            .set(&((self.running_mean.as_tensor() * (1.0 - MOMENTUM))? + (&mean * MOMENTUM)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * (1.0 - MOMENTUM))? + (unbiased * MOMENTUM)?)?)?;
        Ok(stats)
    }

    /// Training-mode normalisation outside the autograd graph, for ops that chain their own
    /// backward pass ([`crate::block`]): the batch's statistics (running ones updated) and
    /// the normalised output.
    pub(crate) fn normalize_batch_no_grad(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = x.contiguous()?;
        let stats = self.batch_stats(&x)?;
        let affine = Tensor::cat(&[&self.weight, &self.bias], 0)?;
        let z = x.apply_op3_no_bwd(
            &affine,
            &stats,
            &Normalize {
                eps: self.eps,
                batch_stats: true,
            },
        )?;
        Ok((stats, z))
    }

    /// γ and β.
    pub(crate) fn affine(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    pub(crate) fn eps(&self) -> f64 {
        self.eps
    }
}

/// Dimensions of a contiguous [B, C, rest…] tensor as (B, C, rest).
fn bc_rest(shape: &Shape) -> Result<(usize, usize, usize)> {
    let d = shape.dims();
    if d.len() < 2 {
        candle_core::bail!("batch norm: input needs at least [B, C], got {d:?}");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// Per-channel sums over the batch and spatial positions, in f64: `f(b, c, acc)` adds batch
/// item b's contribution for channel c. Partial sums per batch item are added in batch
/// order, so the result does not depend on how threads split the work (same seed, same
/// model, bit for bit).
fn channel_sums<F>(b: usize, c: usize, k: usize, f: F) -> Vec<f64>
where
    F: Fn(usize, usize, &mut [f64]) + Sync,
{
    let partial: Vec<Vec<f64>> = (0..b)
        .into_par_iter()
        .map(|bi| {
            let mut acc = vec![0.0; c * k];
            for ci in 0..c {
                f(bi, ci, &mut acc[ci * k..(ci + 1) * k]);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0; c * k];
    for p in partial {
        total.iter_mut().zip(p).for_each(|(x, y)| *x += y);
    }
    total
}

/// Σ f(a[i], b[i]) in f64 over eight independent lanes: a single running sum is one long
/// dependency chain the compiler may not reorder, which made BatchNorm's reductions the
/// slowest part of the layer. The lane order is fixed, so the result is too.
#[inline]
fn lane_sum2<T: WithDType>(a: &[T], b: &[T], f: impl Fn(f64, f64) -> f64) -> f64 {
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..L {
            acc[l] += f(xa[l].to_f64(), xb[l].to_f64());
        }
    }
    for (l, (&va, &vb)) in ra.iter().zip(rb).enumerate() {
        acc[l] += f(va.to_f64(), vb.to_f64());
    }
    acc.iter().sum()
}

/// [B, C, …] → [2, C]: per-channel mean and biased variance (two-pass for accuracy).
struct ChannelStats;

fn stats_of<T: WithDType>(x: &[T], (b, c, n): (usize, usize, usize)) -> Vec<T> {
    let count = (b * n) as f64;
    let sums = channel_sums(b, c, 1, |bi, ci, acc| {
        let p = &x[(bi * c + ci) * n..(bi * c + ci + 1) * n];
        acc[0] = lane_sum2(p, p, |v, _| v);
    });
    let mean: Vec<f64> = sums.iter().map(|s| s / count).collect();
    let sq = channel_sums(b, c, 1, |bi, ci, acc| {
        let p = &x[(bi * c + ci) * n..(bi * c + ci + 1) * n];
        acc[0] = lane_sum2(p, p, |v, _| (v - mean[ci]) * (v - mean[ci]));
    });
    mean.iter()
        .chain(sq.iter().map(|s| s / count).collect::<Vec<_>>().iter())
        .map(|&v| T::from_f64(v))
        .collect()
}

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "plateflow-channel-stats"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = bc_rest(l.shape())?;
        let out = float_op!(self.name(), s, |T| stats_of(
            slice::<T>(s, l, self.name())?,
            dims
        ));
        Ok((out, Shape::from((2, dims.1))))
    }
}

/// y = (x − mean)·invstd·γ + β per channel; args: x, [γ; β] (2C), [mean; var] (2×C).
struct Normalize {
    eps: f64,
    batch_stats: bool,
}

/// Per-channel (mean, invstd) from the [2, C] stats.
fn mean_invstd<T: WithDType>(stats: &[T], c: usize, eps: f64) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ci| {
            let var = stats[c + ci].to_f64();
            (stats[ci].to_f64(), 1.0 / (var + eps).sqrt())
        })
        .collect()
}

fn normalize<T: WithDType>(
    x: &[T],
    affine: &[T],
    stats: &[T],
    (b, c, n): (usize, usize, usize),
    eps: f64,
) -> Vec<T> {
    let mi = mean_invstd(stats, c, eps);
    let fill = |bi: usize, ob: &mut [MaybeUninit<T>]| {
        for ci in 0..c {
            let (mean, invstd) = mi[ci];
            let scale = invstd * affine[ci].to_f64();
            let shift = affine[c + ci].to_f64() - mean * scale;
            let (scale, shift) = (T::from_f64(scale), T::from_f64(shift));
            let src = &x[(bi * c + ci) * n..(bi * c + ci + 1) * n];
            for (o, &v) in ob[ci * n..(ci + 1) * n].iter_mut().zip(src) {
                o.write(v * scale + shift);
            }
        }
    };
    debug_assert_eq!(x.len(), b * c * n);
    // SAFETY: each chunk is one batch item's C planes of n values, all written.
    unsafe { par_build(x.len(), x.len(), c * n, fill) }
}

/// Gradients of [`Normalize`]: returns dx followed by dγ and dβ, packed as one vector.
fn normalize_backward<T: WithDType>(
    x: &[T],
    affine: &[T],
    stats: &[T],
    dy: &[T],
    (b, c, n): (usize, usize, usize),
    eps: f64,
    batch_stats: bool,
) -> Vec<T> {
    let mi = mean_invstd(stats, c, eps);
    // Σdy and Σdy·x̂ per channel.
    let sums = channel_sums(b, c, 2, |bi, ci, acc| {
        let (mean, invstd) = mi[ci];
        let r = (bi * c + ci) * n..(bi * c + ci + 1) * n;
        acc[0] = lane_sum2(&dy[r.clone()], &dy[r.clone()], |g, _| g);
        acc[1] = lane_sum2(&dy[r.clone()], &x[r], |g, v| g * (v - mean)) * invstd;
    });
    let count = (b * n) as f64;
    let fill = |bi: usize, db: &mut [MaybeUninit<T>]| {
        for ci in 0..c {
            let (mean, invstd) = mi[ci];
            let gamma = affine[ci].to_f64();
            let (sum_dy, sum_dy_xhat) = (sums[2 * ci], sums[2 * ci + 1]);
            // dx = γ·σ⁻¹·(dy − Σdy/N − x̂·Σdy·x̂/N) = a·dy + b·x + c per channel, with the
            // coefficients in f64 and the per-element work in T (vectorised).
            let (a, b, c0) = if batch_stats {
                let a = gamma * invstd;
                let b = -a * invstd * sum_dy_xhat / count;
                (a, b, -a * sum_dy / count - b * mean)
            } else {
                (gamma * invstd, 0.0, 0.0)
            };
            let (a, b, c0) = (T::from_f64(a), T::from_f64(b), T::from_f64(c0));
            let r = (bi * c + ci) * n..(bi * c + ci + 1) * n;
            for ((d, &g), &v) in db[ci * n..(ci + 1) * n]
                .iter_mut()
                .zip(&dy[r.clone()])
                .zip(&x[r])
            {
                d.write(a * g + b * v + c0);
            }
        }
    };
    // SAFETY: each chunk is one batch item's C planes of n values, all written.
    let mut out = unsafe { par_build(x.len(), x.len() + 2 * c, c * n, fill) };
    out.extend((0..c).map(|ci| T::from_f64(sums[2 * ci + 1]))); // dγ
    out.extend((0..c).map(|ci| T::from_f64(sums[2 * ci]))); // dβ
    out
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "plateflow-batch-norm"
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
        let dims = bc_rest(l1.shape())?;
        let name = self.name();
        let out = float_op!(name, s1, |T| normalize(
            slice::<T>(s1, l1, name)?,
            slice::<T>(s2, l2, name)?,
            slice::<T>(s3, l3, name)?,
            dims,
            self.eps,
        ));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        stats: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // x and dy go in as they are (whole activations: no copies on this thread); the small
        // per-channel vectors travel packed.
        let small = Tensor::cat(&[&affine.flatten_all()?, &stats.flatten_all()?], 0)?;
        let grads = x.apply_op3_no_bwd(
            &grad_res.contiguous()?,
            &small,
            &NormalizeBackward {
                eps: self.eps,
                batch_stats: self.batch_stats,
                dims: bc_rest(x.shape())?,
            },
        )?;
        let n = x.elem_count();
        let c = affine.elem_count() / 2;
        let dx = grads.narrow(0, 0, n)?.reshape(x.shape())?;
        let dparams = grads.narrow(0, n, 2 * c)?;
        Ok((Some(dx), Some(dparams), None))
    }
}

/// Backward of [`Normalize`] as an op: x, dy, and [affine (2C); stats (2C)] flat.
pub(crate) struct NormalizeBackward {
    eps: f64,
    batch_stats: bool,
    dims: (usize, usize, usize),
}

impl NormalizeBackward {
    /// For a normalisation of `x` by its batch statistics.
    pub(crate) fn batch(eps: f64, x: &Tensor) -> Result<Self> {
        Ok(NormalizeBackward {
            eps,
            batch_stats: true,
            dims: bc_rest(x.shape())?,
        })
    }
}

impl CustomOp3 for NormalizeBackward {
    fn name(&self) -> &'static str {
        "plateflow-batch-norm-backward"
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
        let name = self.name();
        let (b, c, n) = self.dims;
        let out = float_op!(name, s1, |T| {
            let small = slice::<T>(s3, l3, name)?;
            let (affine, stats) = small.split_at(2 * c);
            normalize_backward(
                slice::<T>(s1, l1, name)?,
                affine,
                stats,
                slice::<T>(s2, l2, name)?,
                self.dims,
                self.eps,
                self.batch_stats,
            )
        });
        Ok((out, Shape::from(b * c * n + 2 * c)))
    }
}

/// max(0, 2×2 max-pool(x)), stride 2, odd trailing rows/columns dropped; [B, C, H, W] →
/// [B, C, H/2, W/2]. The gradient goes to the first maximum of each window when it is > 0.
pub fn relu_max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ReluPool)
}

pub(crate) struct ReluPool;

/// For each output cell of each plane, the index (within the plane) of its window's first
/// maximum and the value, in parallel over planes.
fn pool_planes<T: WithDType>(
    x: &[T],
    (h, w): (usize, usize),
    planes: usize,
    out_per_plane: usize,
    emit: impl Fn(&mut [T], &[T], usize, usize, usize, T) + Sync,
) -> Vec<T> {
    let (h2, w2) = (h / 2, w / 2);
    let len = planes * out_per_plane;
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(out_per_plane.max(1))
        .enumerate()
        .for_each(|(p, o)| {
            // Zeroed by the thread that fills it (one serial pass over tens of MB before).
            let o = init_rows(o, out_per_plane, |_| T::zero());
            let plane = &x[p * h * w..(p + 1) * h * w];
            for y in 0..h2 {
                for xx in 0..w2 {
                    let i = 2 * y * w + 2 * xx;
                    // Selects, not branches: on real activations the comparisons are coin
                    // flips and mispredicted branches dominated this loop.
                    let (mut best, mut m) = (i, plane[i]);
                    for cand in [i + 1, i + w, i + w + 1] {
                        let v = plane[cand];
                        let gt = v > m;
                        m = if gt { v } else { m };
                        best = if gt { cand } else { best };
                    }
                    emit(o, plane, y * w2 + xx, best, p, m);
                }
            }
        });
    // SAFETY: the chunks cover all `len` values and `init_rows` initialised each one.
    unsafe { out.set_len(len) };
    out
}

fn hw(l: &Layout) -> Result<(usize, usize, usize)> {
    let (b, c, h, w) = l.shape().dims4()?;
    Ok((b * c, h, w))
}

impl CustomOp1 for ReluPool {
    fn name(&self) -> &'static str {
        "plateflow-relu-max-pool"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: WithDType>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
            let per = (h / 2) * (w / 2);
            if per == 0 {
                return Vec::new();
            }
            pool_planes(x, (h, w), planes, per, |o, _, i, _, _, v| {
                o[i] = if v > T::zero() { v } else { T::zero() }
            })
        }
        let (planes, h, w) = hw(l)?;
        let out = float_op!(self.name(), s, |T| run(
            slice::<T>(s, l, self.name())?,
            planes,
            h,
            w
        ));
        let (b, c, _, _) = l.shape().dims4()?;
        Ok((out, Shape::from((b, c, h / 2, w / 2))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &ReluPoolBackward,
        )?))
    }
}

/// arg1 = x [B, C, H, W], arg2 = dy [B, C, H/2, W/2] → dx.
pub(crate) struct ReluPoolBackward;

impl CustomOp2 for ReluPoolBackward {
    fn name(&self) -> &'static str {
        "plateflow-relu-max-pool-backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: WithDType>(x: &[T], dy: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
            let per = (h / 2) * (w / 2);
            if per == 0 {
                return vec![T::zero(); planes * h * w];
            }
            pool_planes(x, (h, w), planes, h * w, |o, _, i, best, p, v| {
                if v > T::zero() {
                    o[best] = dy[p * per + i];
                }
            })
        }
        let (planes, h, w) = hw(l1)?;
        let name = self.name();
        let out = float_op!(name, s1, |T| run(
            slice::<T>(s1, l1, name)?,
            slice::<T>(s2, l2, name)?,
            planes,
            h,
            w,
        ));
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_pool_2x2;
    use crate::rng::Rng;
    use crate::test_util::{assert_same_batch_norm, grads_of, max_abs_diff, random};
    use candle_core::{DType, Device, ModuleT};
    use candle_nn::VarMap;

    /// Outputs, running statistics and the gradients of input, scale and shift equal
    /// candle_nn's composed BatchNorm, in training and in evaluation mode.
    #[test]
    fn fused_batch_norm_matches_candle_nn() {
        let mut rng = Rng::new(9);
        for train in [true, false] {
            let (mut ours_map, mut theirs_map) = (VarMap::new(), VarMap::new());
            let ours = BatchNorm2d::new(
                3,
                1e-5,
                VarBuilder::from_varmap(&ours_map, DType::F64, &Device::Cpu),
            )
            .unwrap();
            let theirs = candle_nn::batch_norm(
                3,
                1e-5,
                VarBuilder::from_varmap(&theirs_map, DType::F64, &Device::Cpu),
            )
            .unwrap();
            // Non-trivial scale, shift and running statistics in both.
            for (name, values) in [
                ("weight", [1.5, 0.5, -2.0]),
                ("bias", [0.1, -0.3, 0.7]),
                ("running_mean", [0.2, -0.1, 0.05]),
                ("running_var", [0.5, 2.0, 1.2]),
            ] {
                let t = Tensor::new(&values, &Device::Cpu).unwrap();
                ours_map.set_one(name, &t).unwrap();
                theirs_map.set_one(name, &t).unwrap();
            }
            let x = Var::from_tensor(&random(&[4, 3, 5, 6], &mut rng)).unwrap();
            let r = random(&[4, 3, 5, 6], &mut rng);
            let a = ours.forward_t(&x, train).unwrap();
            let b = theirs.forward_t(&x, train).unwrap();
            assert!(max_abs_diff(&a, &b) < 1e-12, "forward, train={train}");
            let (ga, gb) = (grads_of(&a, &r), grads_of(&b, &r));
            let d = max_abs_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap());
            assert!(d < 1e-10, "input gradient, train={train}: {d}");
            assert_same_batch_norm(
                (&ours_map, &ga),
                (&theirs_map, &gb),
                &format!("train={train}"),
            );
        }
    }

    /// ReLU then 2×2 max-pool: same values and gradients as the composed ops, odd sizes too.
    #[test]
    fn fused_relu_pool_matches_composed_ops() {
        let mut rng = Rng::new(4);
        for shape in [[2, 3, 6, 8], [1, 2, 7, 5]] {
            let x = Var::from_tensor(&random(&shape, &mut rng)).unwrap();
            let a = relu_max_pool_2x2(&x).unwrap();
            let b = max_pool_2x2(&x.relu().unwrap()).unwrap();
            assert_eq!(a.dims(), b.dims());
            assert!(max_abs_diff(&a, &b) < 1e-15);
            let r = random(a.dims(), &mut rng);
            let ga = (&a * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&b * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_abs_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-15);
        }
    }
}
