//! A compact U-Net for nuclei: per pixel, three classes — background, nucleus interior,
//! nucleus boundary — from one grey channel. Touching nuclei are kept apart by their
//! boundaries; instances are the interiors grown back over the boundary pixels
//! (`plateflow_imaging::instances`). Levels of two 3×3 conv + BatchNorm + ReLU, 2×2 max-pool
//! down, nearest 2× up with a skip connection; a 1×1 head. On the CPU convs run on
//! plateflow's own op (conv.rs) and BatchNorm on fused.rs, as the crop CNN does; on other
//! devices (CUDA) Candle's own ops run, on the same variables.

use crate::conv::conv2d_same;
use crate::fused::BatchNorm2d;
use crate::model::max_pool_2x2;
use candle_core::{Result, Tensor};
use candle_nn::{batch_norm, conv2d, BatchNorm, Conv2d, Conv2dConfig, Module, ModuleT, VarBuilder};

/// Architecture, recorded beside the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetConfig {
    /// Channels of the first level; each deeper level doubles them.
    pub width: usize,
    /// Levels, the bottleneck included (3: two pools; inputs a multiple of 4 pixels).
    pub depth: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        UNetConfig {
            width: 16,
            depth: 3,
        }
    }
}

impl UNetConfig {
    /// Image sides must be a multiple of this (inputs are padded to it).
    pub fn multiple(&self) -> usize {
        1 << (self.depth - 1)
    }
}

/// Per-pixel classes.
pub const CLASSES: usize = 3;
pub const BACKGROUND: u8 = 0;
pub const INTERIOR: u8 = 1;
pub const BOUNDARY: u8 = 2;

/// Which implementation of the layers runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    /// plateflow's CPU ops (conv.rs, fused.rs): the fast path on the CPU.
    Plateflow,
    /// Candle's composed ops: they run on any device, CUDA included.
    Candle,
}

impl Ops {
    /// plateflow's ops on the CPU, Candle's elsewhere.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            Ops::Plateflow
        } else {
            Ops::Candle
        }
    }
}

/// conv 3×3 → BatchNorm → ReLU, twice. Each BatchNorm twice over the same variables: the
/// fused CPU op and Candle's (see [`Ops`]).
struct DoubleConv {
    convs: [(Conv2d, BatchNorm2d, BatchNorm); 2],
}

impl DoubleConv {
    fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let one = |i: usize, c: usize| -> Result<(Conv2d, BatchNorm2d, BatchNorm)> {
            Ok((
                conv2d(c, c_out, 3, cfg, vb.pp(format!("c{i}.conv")))?,
                // `.bn.` in the name: `seed_init` starts it as the identity.
                BatchNorm2d::new(c_out, 1e-5, vb.pp(format!("c{i}.bn")))?,
                batch_norm(c_out, 1e-5, vb.pp(format!("c{i}.bn")))?,
            ))
        };
        Ok(DoubleConv {
            convs: [one(0, c_in)?, one(1, c_out)?],
        })
    }

    fn forward(&self, x: &Tensor, train: bool, ops: Ops) -> Result<Tensor> {
        let mut x = x.clone();
        for (conv, bn, bn_candle) in &self.convs {
            x = match ops {
                Ops::Plateflow => {
                    bn.forward_t(&conv2d_same(&x, conv.weight(), conv.bias())?, train)?
                }
                Ops::Candle => bn_candle.forward_t(&conv.forward(&x)?, train)?,
            }
            .relu()?;
        }
        Ok(x)
    }
}

pub struct UNet {
    pub config: UNetConfig,
    /// Chosen from the device the variables live on; tests set it to compare the two.
    pub ops: Ops,
    down: Vec<DoubleConv>,
    up: Vec<DoubleConv>,
    head: Conv2d,
}

impl UNet {
    pub fn new(config: UNetConfig, vb: VarBuilder) -> Result<Self> {
        let w = config.width;
        let mut down = Vec::new();
        let mut c_in = 1;
        for level in 0..config.depth {
            down.push(DoubleConv::new(
                c_in,
                w << level,
                vb.pp(format!("down{level}")),
            )?);
            c_in = w << level;
        }
        let mut up = Vec::new();
        for level in (0..config.depth - 1).rev() {
            // The upsampled deeper maps and this level's skip, concatenated.
            let c = (w << (level + 1)) + (w << level);
            up.push(DoubleConv::new(c, w << level, vb.pp(format!("up{level}")))?);
        }
        let head = conv2d(w, CLASSES, 1, Default::default(), vb.pp("head"))?;
        Ok(UNet {
            config,
            ops: Ops::for_device(vb.device()),
            down,
            up,
            head,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.head.weight().device()
    }

    /// [B, 1, H, W] (H, W multiples of [`UNetConfig::multiple`]) → logits [B, 3, H, W].
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.features(x, train)?;
        match self.ops {
            Ops::Plateflow => conv2d_same(&x, self.head.weight(), self.head.bias()),
            Ops::Candle => self.head.forward(&x),
        }
    }

    /// The last level's features, [B, width, H, W]: what the head reads.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut skips = Vec::new();
        let mut x = x.clone();
        for (level, block) in self.down.iter().enumerate() {
            if level > 0 {
                x = max_pool_2x2(&x)?;
            }
            x = block.forward(&x, train, self.ops)?;
            skips.push(x.clone());
        }
        skips.pop(); // the bottleneck is `x` itself
        for block in &self.up {
            let skip = skips.pop().expect("one skip per level");
            x = block.forward(
                &Tensor::cat(&[&upsample_2x(&x)?, &skip], 1)?,
                train,
                self.ops,
            )?;
        }
        Ok(x)
    }
}

/// Nearest-neighbour 2× upsampling as a broadcast (its gradient is a sum, with no conv:
/// Candle's own `upsample_nearest2d` backward runs a convolution on the CPU).
pub fn upsample_2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, h * 2, w * 2))
}

/// Weighted per-pixel cross-entropy: logits [B, 3, H, W], classes and weights [B·H·W]
/// (u32 and f32, row-major per image): boundaries and contacts are rare and matter most.
pub fn pixel_loss(logits: &Tensor, classes: &Tensor, pixel_w: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = logits.dims4()?;
    let flat = logits.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?;
    let logp = candle_nn::ops::log_softmax(&flat, 1)?;
    let picked = logp.gather(&classes.unsqueeze(1)?, 1)?.squeeze(1)?;
    let total = pixel_w.sum_all()?;
    (picked * pixel_w)?.sum_all()?.neg()?.broadcast_div(&total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn shapes_and_a_loss_that_falls() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let net = UNet::new(UNetConfig { width: 4, depth: 3 }, vb).unwrap();
        // A bright square on dark: interior inside, boundary on its edge.
        let (h, w) = (16usize, 16usize);
        let mut img = vec![0f32; h * w];
        let mut cls = vec![0u32; h * w];
        for y in 4..12 {
            for x in 4..12 {
                img[y * w + x] = 1.0;
                cls[y * w + x] = if y == 4 || y == 11 || x == 4 || x == 11 {
                    2
                } else {
                    1
                };
            }
        }
        let x = Tensor::from_vec(img, (1, 1, h, w), &dev).unwrap();
        let wt: Vec<f32> = cls
            .iter()
            .map(|&c| if c == 2 { 3.0 } else { 1.0 })
            .collect();
        let y = Tensor::from_vec(cls, h * w, &dev).unwrap();
        let wt = Tensor::from_vec(wt, h * w, &dev).unwrap();
        let logits = net.forward(&x, true).unwrap();
        assert_eq!(logits.dims4().unwrap(), (1, 3, h, w));
        let mut opt = candle_nn::AdamW::new(
            varmap.all_vars(),
            candle_nn::ParamsAdamW {
                lr: 0.01,
                ..Default::default()
            },
        )
        .unwrap();
        use candle_nn::Optimizer as _;
        let first = pixel_loss(&logits, &y, &wt).unwrap();
        let mut last = first.to_scalar::<f32>().unwrap();
        for _ in 0..40 {
            let loss = pixel_loss(&net.forward(&x, true).unwrap(), &y, &wt).unwrap();
            opt.backward_step(&loss).unwrap();
            last = loss.to_scalar::<f32>().unwrap();
        }
        assert!(last < first.to_scalar::<f32>().unwrap() * 0.5, "{last}");
        let up = upsample_2x(&Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &dev).unwrap()).unwrap();
        assert_eq!(
            up.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
    }

    /// Candle's ops (what runs on CUDA) and plateflow's CPU ops compute the same network:
    /// evaluation logits, the training loss, every gradient and the running statistics one
    /// training pass leaves, with BatchNorm far from the identity.
    #[test]
    fn candle_ops_equal_plateflow_ops() {
        let dev = Device::Cpu;
        let config = UNetConfig { width: 4, depth: 3 };
        let make = |ops: Ops| {
            let varmap = VarMap::new();
            let mut net =
                UNet::new(config, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
            net.ops = ops;
            crate::test_util::randomise_network(&varmap, 4);
            let mut vars: Vec<_> = varmap.data().lock().unwrap().clone().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            (net, varmap, vars)
        };
        let (ours, ours_map, ours_vars) = make(Ops::Plateflow);
        let (theirs, theirs_map, theirs_vars) = make(Ops::Candle);
        let (b, h, w) = (2usize, 20usize, 24usize);
        let mut rng = crate::rng::Rng::new(8);
        let x: Vec<f32> = (0..b * h * w).map(|_| rng.unit() as f32).collect();
        let x = Tensor::from_vec(x, (b, 1, h, w), &dev).unwrap();
        let differ = |a: &Tensor, b: &Tensor| {
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = a.iter().map(|v| v.abs()).fold(1e-3f32, f32::max);
            a.iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
                / scale
        };
        let eval = differ(
            &ours.forward(&x, false).unwrap(),
            &theirs.forward(&x, false).unwrap(),
        );
        assert!(eval < 1e-4, "evaluation logits differ by {eval}");
        let cls: Vec<u32> = (0..b * h * w).map(|i| (i % 7 % 3) as u32).collect();
        let y = Tensor::from_vec(cls, b * h * w, &dev).unwrap();
        let wt = Tensor::ones(b * h * w, DType::F32, &dev).unwrap();
        let l1 = pixel_loss(&ours.forward(&x, true).unwrap(), &y, &wt).unwrap();
        let l2 = pixel_loss(&theirs.forward(&x, true).unwrap(), &y, &wt).unwrap();
        assert!(differ(&l1, &l2) < 1e-4);
        let (g1, g2) = (l1.backward().unwrap(), l2.backward().unwrap());
        for ((name, v1), (_, v2)) in ours_vars.iter().zip(&theirs_vars) {
            if name.contains("running") {
                continue;
            }
            let d = differ(
                g1.get(v1.as_tensor()).unwrap(),
                g2.get(v2.as_tensor()).unwrap(),
            );
            assert!(d < 1e-3, "gradient of {name} differs by {d}");
        }
        let (a, b) = (
            ours_map.data().lock().unwrap(),
            theirs_map.data().lock().unwrap(),
        );
        for name in a.keys().filter(|n| n.contains("running")) {
            let d = differ(a[name].as_tensor(), b[name].as_tensor());
            assert!(d < 1e-4, "{name} differs by {d} after a training pass");
        }
    }
}
