//! The models: a multinomial logistic regression on per-cell features (the transparent
//! baseline) and a small CNN on single-cell crops (conv blocks with BatchNorm, width and depth
//! configurable, dropout), split into `features` and `head` so Grad-CAM can reach the last
//! conv block. On the CPU the blocks run on plateflow's own conv (im2col + GEMM), BatchNorm
//! and ReLU+pool ops (conv.rs, fused.rs: Candle's are slow there); elsewhere on Candle's.

use crate::block::conv_block_train;
use crate::conv::conv2d_same;
use crate::fused::{relu_max_pool_2x2, BatchNorm2d};
use crate::rng::Rng;
use candle_core::{Device, Module, ModuleT, Result, Tensor};
use candle_nn::{
    batch_norm, conv2d, linear, BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap,
};

/// Architecture of the CNN, recorded beside the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct CnnConfig {
    pub in_channels: usize,
    pub classes: usize,
    /// Channels of the first block; each further block doubles them.
    pub width: usize,
    /// Conv blocks (conv 3×3, BatchNorm, ReLU, 2×2 max-pool).
    pub depth: usize,
    pub dropout: f64,
}

pub struct Cnn {
    pub config: CnnConfig,
    /// Conv, BatchNorm as fused CPU ops, and the same BatchNorm variables as Candle's
    /// composed op for other devices.
    blocks: Vec<(Conv2d, BatchNorm2d, BatchNorm)>,
    head: Linear,
}

impl Cnn {
    pub fn new(config: CnnConfig, vb: VarBuilder) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut c_in = config.in_channels;
        for b in 0..config.depth {
            let c_out = config.width << b;
            let conv = conv2d(
                c_in,
                c_out,
                3,
                Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                },
                vb.pp(format!("block{b}.conv")),
            )?;
            let bn = BatchNorm2d::new(c_out, 1e-5, vb.pp(format!("block{b}.bn")))?;
            let bn_generic = batch_norm(c_out, 1e-5, vb.pp(format!("block{b}.bn")))?;
            blocks.push((conv, bn, bn_generic));
            c_in = c_out;
        }
        let head = linear(c_in, config.classes, vb.pp("head"))?;
        Ok(Cnn {
            config,
            blocks,
            head,
        })
    }

    /// The conv blocks: [B, C, H, W] → the last block's maps (for Grad-CAM).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for (conv, bn, bn_generic) in &self.blocks {
            x = if x.device().is_cpu() && train {
                // One graph node per block: see block.rs.
                let bias = match conv.bias() {
                    Some(b) => b.clone(),
                    None => Tensor::zeros(conv.weight().dim(0)?, x.dtype(), x.device())?,
                };
                conv_block_train(&x, conv.weight(), &bias, bn)?
            } else if x.device().is_cpu() {
                let y = conv2d_same(&x, conv.weight(), conv.bias())?;
                relu_max_pool_2x2(&bn.forward_t(&y, train)?)?
            } else {
                max_pool_2x2(&bn_generic.forward_t(&conv.forward(&x)?, train)?.relu()?)?
            };
        }
        Ok(x)
    }

    /// Global average pooling, dropout (training only, from `rng`), linear: the logits.
    pub fn head(&self, maps: &Tensor, dropout: Option<&mut Rng>) -> Result<Tensor> {
        let mut pooled = maps.mean((2, 3))?;
        if let Some(rng) = dropout {
            pooled = dropout_with(&pooled, self.config.dropout, rng)?;
        }
        self.head.forward(&pooled)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.head.weight().device()
    }

    pub fn forward(&self, x: &Tensor, train: Option<&mut Rng>) -> Result<Tensor> {
        let maps = self.features(x, train.is_some())?;
        self.head(&maps, train)
    }
}

/// 2×2 max-pooling (stride 2) as a reshape and two max-reductions. Candle 0.11.1's own
/// `max_pool2d` backward scales the gradient by 1/4 (it multiplies by the fraction of maxima
/// in the window instead of dividing by their count): the finite-difference test caught it.
/// Odd trailing rows/columns are dropped, as `max_pool2d` does.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, h2 * 2)?.narrow(3, 0, w2 * 2)?.contiguous()?
    } else {
        x.contiguous()?
    };
    x.reshape((b, c, h2, 2, w2, 2))?.max(5)?.max(3)
}

/// Inverted dropout with a mask drawn from a seeded generator.
pub fn dropout_with(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..n)
        .map(|_| {
            if rng.unit() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
}

/// The transparent baseline: logits = x·Wᵀ + b on standardised features.
pub struct Logistic {
    pub linear: Linear,
}

impl Logistic {
    pub fn new(features: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Logistic {
            linear: linear(features, classes, vb.pp("linear"))?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear.forward(x)
    }
}

/// Re-initialises every variable from a seeded generator (Candle's CPU RNG cannot be
/// seeded): conv and linear weights Kaiming-uniform (bound 1/√fan_in, as Candle does), biases
/// zero, BatchNorm scale 1, shift 0, running mean 0, running variance 1.
pub fn seed_init(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = Rng::new(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.contains(".bn.") {
            let one = name.ends_with("weight") || name.ends_with("running_var");
            vec![if one { 1.0 } else { 0.0 }; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let fan_in: usize = dims[1..].iter().product::<usize>().max(1);
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        var.set(
            &Tensor::from_vec(values, dims, &Device::Cpu)?
                .to_dtype(var.dtype())?
                .to_device(var.device())?,
        )?;
    }
    Ok(())
}
