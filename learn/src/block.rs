//! A whole conv block in training — conv, BatchNorm on the batch's statistics, ReLU, 2×2
//! max-pool — as one node of Candle's graph.
//!
//! Why: Candle's backward pass starts every node's gradient as zeros and adds the incoming
//! gradient to it, on one thread. Run as three ops, a block gives it two full-size
//! intermediate gradients (the conv output and the BatchNorm output: 4 M values per batch of
//! 32 in the first block) to zero and add serially, which capped training at ~1.5 of 2
//! cores. Here the forward runs the same three ops without graph tracking and keeps their
//! intermediates; the backward runs the same three backward ops in reverse. Only the
//! block's input and its pooled output (a quarter of the size) are graph nodes.

use crate::conv::{conv2d_same_no_grad, ConvBackward};
use crate::fused::{BatchNorm2d, NormalizeBackward, ReluPool, ReluPoolBackward};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// What the backward pass needs from the forward one.
struct Saved {
    /// Conv output (BatchNorm input), [B, O, H, W].
    y: Tensor,
    /// BatchNorm output (ReLU + pool input), [B, O, H, W].
    z: Tensor,
    /// The batch's per-channel [mean; biased variance], [2, O].
    stats: Tensor,
}

/// The graph node of one block: args x, conv weight, [conv bias; γ; β] (3·O).
struct ConvBlock {
    k: usize,
    eps: f64,
    saved: Mutex<Option<Saved>>,
}

/// conv (3×3 "same") → BatchNorm with batch statistics (the running ones updated) → ReLU →
/// 2×2 max-pool, differentiable in x, the conv weight and bias, and BatchNorm's γ and β.
/// The same values and gradients as the three ops composed (tested), in one graph node.
pub fn conv_block_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    bn: &BatchNorm2d,
) -> Result<Tensor> {
    let k = weight.dim(2)?;
    let y = conv2d_same_no_grad(x, weight, bias)?;
    let (stats, z) = bn.normalize_batch_no_grad(&y)?;
    let (gamma, beta) = bn.affine();
    let params = Tensor::cat(&[bias, gamma, beta], 0)?;
    let op = ConvBlock {
        k,
        eps: bn.eps(),
        saved: Mutex::new(Some(Saved { y, z, stats })),
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &params, op)
}

impl CustomOp3 for ConvBlock {
    fn name(&self) -> &'static str {
        "plateflow-conv-block"
    }
    /// The pooled output, from the BatchNorm output kept by `conv_block_train`.
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let guard = self.saved.lock().expect("not poisoned");
        let Some(saved) = guard.as_ref() else {
            candle_core::bail!("plateflow-conv-block: forward ran twice");
        };
        let (storage, layout) = saved.z.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => ReluPool.cpu_fwd(s, layout),
            _ => candle_core::bail!("plateflow-conv-block: CPU tensors only"),
        }
    }
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(Saved { y, z, stats }) = self.saved.lock().expect("not poisoned").take() else {
            candle_core::bail!("plateflow-conv-block: backward ran twice");
        };
        let o = weight.dim(0)?;
        // ReLU + pool, then BatchNorm (its small inputs packed: [γ; β; mean; var]).
        let dz = z.apply_op2_no_bwd(&grad.contiguous()?, &ReluPoolBackward)?;
        let small = Tensor::cat(&[&params.narrow(0, o, 2 * o)?, &stats.flatten_all()?], 0)?;
        let bn = y.apply_op3_no_bwd(&dz, &small, &NormalizeBackward::batch(self.eps, &y)?)?;
        let n = y.elem_count();
        let dy = bn.narrow(0, 0, n)?.reshape(y.shape())?;
        let d_gamma_beta = bn.narrow(0, n, 2 * o)?;
        // The conv, with dx only if something upstream needs it.
        let (dx, dw, db) = ConvBackward::run(x, weight, &dy, self.k)?;
        let dparams = Tensor::cat(&[&db, &d_gamma_beta], 0)?;
        Ok((dx, Some(dw), Some(dparams)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::conv2d_same;
    use crate::fused::relu_max_pool_2x2;
    use crate::rng::Rng;
    use crate::test_util::{assert_same_batch_norm, grads_of, max_abs_diff, random};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarBuilder;

    /// The block node gives the composed ops' output, running statistics and every gradient
    /// (f64, batch 3, odd sizes pooled down), and no input gradient for the images.
    #[test]
    fn the_block_node_equals_the_composed_ops() {
        let mut rng = Rng::new(17);
        let (b, c, o, h, w) = (3, 2, 4, 7, 6);
        let x = Var::from_tensor(&random(&[b, c, h, w], &mut rng)).unwrap();
        let wt = Var::from_tensor(&random(&[o, c, 3, 3], &mut rng)).unwrap();
        let bias = Var::from_tensor(&random(&[o], &mut rng)).unwrap();
        let r = random(&[b, o, h / 2, w / 2], &mut rng);
        let bn_of = |seed: u64| {
            let varmap = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
            let bn = BatchNorm2d::new(o, 1e-5, vb).unwrap();
            // γ and β away from 1 and 0, the same for both copies.
            let mut r = Rng::new(seed);
            let data = varmap.data().lock().unwrap();
            for name in ["weight", "bias"] {
                data[name].set(&random(&[o], &mut r)).unwrap();
            }
            drop(data);
            (varmap, bn)
        };
        let (vm1, bn1) = bn_of(3);
        let (vm2, bn2) = bn_of(3);
        let ours = conv_block_train(&x, &wt, &bias, &bn1).unwrap();
        let theirs = relu_max_pool_2x2(
            &bn2.forward_t(&conv2d_same(&x, &wt, Some(&bias)).unwrap(), true)
                .unwrap(),
        )
        .unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-12, "forward");
        let (g1, g2) = (grads_of(&ours, &r), grads_of(&theirs, &r));
        for (name, v) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
            let d = max_abs_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-10, "{name} gradient differs by {d}");
        }
        assert_same_batch_norm((&vm1, &g1), (&vm2, &g2), "block");
        // Images need no gradient: none is made.
        let plain = x.as_tensor().detach();
        let g3 = grads_of(&conv_block_train(&plain, &wt, &bias, &bn1).unwrap(), &r);
        assert!(g3.get(&plain).is_none());
        assert!(g3.get(&wt).is_some());
    }
}
