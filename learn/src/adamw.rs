//! AdamW whose state can be saved and restored, so that a stopped training run (a killed
//! worker, a batch job at its time limit) continues where it was instead of from step 0.
//! The update is candle_nn's `AdamW`, op for op (tested equal), whose moments are private.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::{ParamsAdamW, VarMap};
use std::collections::HashMap;

/// One trained variable, by its name in the `VarMap`, with its two moments.
struct Slot {
    name: String,
    var: Var,
    m: Var,
    v: Var,
}

pub struct ResumableAdamW {
    slots: Vec<Slot>,
    /// Updates taken so far (Adam's bias correction depends on it).
    steps: usize,
    params: ParamsAdamW,
}

/// Names of the optimizer's tensors in a saved state (beside the caller's own).
const STEPS: &str = "adam.steps";
fn first(name: &str) -> String {
    format!("adam.m.{name}")
}
fn second(name: &str) -> String {
    format!("adam.v.{name}")
}

impl ResumableAdamW {
    /// Over every floating-point variable of `varmap` (as `AdamW::new(varmap.all_vars())`).
    pub fn new(varmap: &VarMap, params: ParamsAdamW) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut slots = data
            .iter()
            .filter(|(_, var)| var.dtype().is_float())
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.clone(),
                    var: var.clone(),
                    m: Var::zeros(var.shape(), var.dtype(), var.device())?,
                    v: Var::zeros(var.shape(), var.dtype(), var.device())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ResumableAdamW {
            slots,
            steps: 0,
            params,
        })
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        self.step(&loss.backward()?)
    }

    /// One AdamW update: candle_nn's, with the same operations in the same order.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let p = &self.params;
        let (beta1, beta2) = (p.beta1, p.beta2);
        let scale_m = 1f64 / (1f64 - beta1.powi(self.steps as i32));
        let scale_v = 1f64 / (1f64 - beta2.powi(self.steps as i32));
        for s in &self.slots {
            let Some(g) = grads.get(&s.var) else { continue };
            let next_m = ((s.m.as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
            let next_v = ((s.v.as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let next_theta = (s.var.as_tensor() * (1f64 - p.lr * p.weight_decay))?;
            let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let next_theta = (next_theta - (adjusted * p.lr)?)?;
            s.m.set(&next_m)?;
            s.v.set(&next_v)?;
            s.var.set(&next_theta)?;
        }
        Ok(())
    }

    /// The moments and the update count, on the CPU, named to sit beside the weights in
    /// one safetensors file.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let cpu = candle_core::Device::Cpu;
        let mut out = vec![(STEPS.to_string(), Tensor::new(&[self.steps as i64], &cpu)?)];
        for s in &self.slots {
            out.push((first(&s.name), s.m.as_tensor().to_device(&cpu)?));
            out.push((second(&s.name), s.v.as_tensor().to_device(&cpu)?));
        }
        Ok(out)
    }

    /// Takes back a [`state`](Self::state): every moment must be there with its variable's
    /// shape (a state from another network is refused, not half applied).
    pub fn restore(&mut self, saved: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        let get = |key: &str, like: &Var| -> anyhow::Result<Tensor> {
            let t = saved
                .get(key)
                .ok_or_else(|| anyhow::anyhow!("no tensor {key}"))?;
            anyhow::ensure!(
                t.dims() == like.dims(),
                "{key} has shape {:?}, the network's {:?}",
                t.dims(),
                like.dims()
            );
            Ok(t.to_dtype(like.dtype())?.to_device(like.device())?)
        };
        let moments = self
            .slots
            .iter()
            .map(|s| {
                Ok((
                    get(&first(&s.name), &s.var)?,
                    get(&second(&s.name), &s.var)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let steps = saved
            .get(STEPS)
            .ok_or_else(|| anyhow::anyhow!("no tensor {STEPS}"))?
            .to_vec1::<i64>()?;
        let steps = *steps
            .first()
            .ok_or_else(|| anyhow::anyhow!("{STEPS} is empty"))?;
        anyhow::ensure!(steps >= 0, "{STEPS} is negative");
        for (s, (m, v)) in self.slots.iter().zip(moments) {
            s.m.set(&m)?;
            s.v.set(&v)?;
        }
        self.steps = steps as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Init, Optimizer};

    /// A small regression with a weight and a bias, as two VarMaps with the same start.
    fn problem() -> (VarMap, Tensor, Tensor) {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        vm.get(
            (3, 4),
            "w",
            Init::Randn {
                mean: 0.,
                stdev: 1.,
            },
            DType::F32,
            &dev,
        )
        .unwrap();
        vm.get(3, "b", Init::Const(0.5), DType::F32, &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (16, 4), &dev).unwrap();
        let y = Tensor::randn(0f32, 1., (16, 3), &dev).unwrap();
        (vm, x, y)
    }

    fn loss(vm: &VarMap, x: &Tensor, y: &Tensor) -> Tensor {
        let data = vm.data().lock().unwrap();
        let w = data["w"].as_tensor();
        let b = data["b"].as_tensor();
        let pred = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap();
        (pred - y).unwrap().sqr().unwrap().mean_all().unwrap()
    }

    fn values(vm: &VarMap) -> Vec<f32> {
        let data = vm.data().lock().unwrap();
        ["w", "b"]
            .iter()
            .flat_map(|k| {
                data[*k]
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    fn copy(vm: &VarMap) -> VarMap {
        let out = VarMap::new();
        for (k, v) in vm.data().lock().unwrap().iter() {
            out.data().lock().unwrap().insert(
                k.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            );
        }
        out
    }

    const PARAMS: ParamsAdamW = ParamsAdamW {
        lr: 0.05,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-2,
    };

    #[test]
    fn updates_are_candles_adamw_exactly() {
        let (ours, x, y) = problem();
        let theirs = copy(&ours);
        let mut a = ResumableAdamW::new(&ours, PARAMS).unwrap();
        let mut b = candle_nn::AdamW::new(theirs.all_vars(), PARAMS).unwrap();
        for step in 0..20 {
            let lr = 0.05 / (1 + step) as f64;
            a.set_learning_rate(lr);
            b.set_learning_rate(lr);
            a.backward_step(&loss(&ours, &x, &y)).unwrap();
            b.backward_step(&loss(&theirs, &x, &y)).unwrap();
        }
        assert_eq!(values(&ours), values(&theirs));
        assert_ne!(values(&ours), values(&problem().0), "nothing trained");
    }

    #[test]
    fn a_restored_state_continues_as_if_never_stopped() {
        let (straight, x, y) = problem();
        let stopped = copy(&straight);
        let mut a = ResumableAdamW::new(&straight, PARAMS).unwrap();
        for _ in 0..10 {
            a.backward_step(&loss(&straight, &x, &y)).unwrap();
        }
        let mut b = ResumableAdamW::new(&stopped, PARAMS).unwrap();
        for _ in 0..4 {
            b.backward_step(&loss(&stopped, &x, &y)).unwrap();
        }
        // "Stopped" after 4: a new optimizer, over a new VarMap holding the weights, takes
        // the saved state.
        let state: HashMap<_, _> = b.state().unwrap().into_iter().collect();
        let resumed = copy(&stopped);
        let mut c = ResumableAdamW::new(&resumed, PARAMS).unwrap();
        c.restore(&state).unwrap();
        for _ in 4..10 {
            c.backward_step(&loss(&resumed, &x, &y)).unwrap();
        }
        assert_eq!(values(&resumed), values(&straight));
        // Without the moments it would not be the same run.
        let fresh = copy(&stopped);
        let mut d = ResumableAdamW::new(&fresh, PARAMS).unwrap();
        for _ in 4..10 {
            d.backward_step(&loss(&fresh, &x, &y)).unwrap();
        }
        assert_ne!(values(&fresh), values(&straight));
    }

    #[test]
    fn a_state_of_another_network_is_refused() {
        let (vm, _, _) = problem();
        let opt = ResumableAdamW::new(&vm, PARAMS).unwrap();
        let mut state: HashMap<_, _> = opt.state().unwrap().into_iter().collect();
        state.insert(
            "adam.m.w".into(),
            Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
        );
        let mut other = ResumableAdamW::new(&vm, PARAMS).unwrap();
        let err = other.restore(&state).unwrap_err().to_string();
        assert!(err.contains("adam.m.w has shape [4, 4]"), "{err}");
        state.remove("adam.v.b");
        let err = other.restore(&state).unwrap_err().to_string();
        assert!(err.contains("no tensor"), "{err}");
    }
}
