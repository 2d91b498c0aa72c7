//! Tests that need the models: gradients against finite differences, and leave-plate-out
//! learning on the real MitoCheck crops (skipped with a message when the data is absent).

use crate::data::{crop_features, load_class_folders};
use crate::metrics::{argmax, Confusion};
use crate::model::{seed_init, Cnn, CnnConfig};
use crate::rng::Rng;
use crate::split::{check_no_leak, group_kfold, Origin};
use crate::train::{
    predict_cnn, predict_cnn_tta, predict_logistic, train_cnn, train_logistic, transform, Samples,
    Standardizer, TrainConfig,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Backpropagated gradients of the conv weights (through BatchNorm in training mode, batch of
/// 2, max-pool and the head) agree with central finite differences in f64.
#[test]
fn conv_gradients_match_finite_differences() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let cfg = CnnConfig {
        in_channels: 2,
        classes: 3,
        width: 4,
        depth: 2,
        dropout: 0.0,
    };
    let model = Cnn::new(cfg, vb).unwrap();
    seed_init(&varmap, 3).unwrap();
    let mut rng = Rng::new(11);
    let x: Vec<f64> = (0..2 * 2 * 8 * 8).map(|_| rng.unit()).collect();
    let x = Tensor::from_vec(x, (2, 2, 8, 8), &Device::Cpu).unwrap();
    let r: Vec<f64> = (0..2 * 3).map(|_| rng.unit() - 0.5).collect();
    let r = Tensor::from_vec(r, (2, 3), &Device::Cpu).unwrap();
    let loss_of = |m: &Cnn| {
        let mut drop = Rng::new(0);
        (m.forward(&x, Some(&mut drop)).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let loss = loss_of(&model);
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut checked = 0;
    for name in [
        "block0.conv.weight",
        "block1.conv.weight",
        "block0.bn.weight",
    ] {
        let var = &data[name];
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for k in [0, 1, base.len() / 2, base.len() - 1] {
            let eps = 1e-6;
            let at = |delta: f64| {
                let mut v = base.clone();
                v[k] += delta;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_of(&model).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            let err = (numeric - g[k]).abs() / (numeric.abs() + g[k].abs()).max(1e-6);
            assert!(
                err < 1e-5,
                "{name}[{k}]: backprop {} vs numeric {numeric}",
                g[k]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

fn mitocheck() -> Option<std::path::PathBuf> {
    let d =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mitocheck-crops");
    if d.join("Interphase").is_dir() {
        Some(d)
    } else {
        println!("skipped: {} is absent", d.display());
        None
    }
}

/// The quick binary task (mitotic vs interphase), 3 folds grouped by plate: the CNN and the
/// logistic baseline learn across plates; a shuffled-label control does not.
#[test]
fn mitotic_vs_interphase_across_plates() {
    let Some(root) = mitocheck() else { return };
    let re = regex::Regex::new(r"PLLT(\d+)_.*___P(\d+)_").unwrap();
    let set = load_class_folders(
        &root,
        &re,
        &[
            ("Interphase", "interphase"),
            ("Prometaphase", "mitotic"),
            ("Metaphase", "mitotic"),
            ("MetaphaseAlignment", "mitotic"),
            ("Anaphase", "mitotic"),
        ],
    )
    .unwrap();
    let n = set.len();
    let origins: Vec<Origin> = (0..n)
        .map(|i| Origin {
            plate: set.plates[i].clone(),
            well: set.wells[i].clone(),
            image_digest: set.files[i].clone(),
        })
        .collect();
    let folds = group_kfold(&set.plates, 3).unwrap();
    // The CNN sees 32x32 crops here (4x cheaper); the features come from the full 64x64.
    let small = set.downsampled();
    let feats: Vec<f32> = (0..n).flat_map(|i| crop_features(&set.image(i))).collect();
    let dim = feats.len() / n;
    let shuffled: Vec<usize> = {
        let mut y = set.labels.clone();
        Rng::new(5).shuffle(&mut y);
        y
    };
    let (mut t_all, mut cnn_all, mut lin_all, mut shuf_all) = (vec![], vec![], vec![], vec![]);
    let t0 = std::time::Instant::now();
    for (k, f) in folds.iter().enumerate() {
        check_no_leak(&origins, &set.plates, &f.train, &f.test).unwrap();
        // Validation plates for early stopping come out of the training plates.
        let train_plates: Vec<String> = f.train.iter().map(|&i| set.plates[i].clone()).collect();
        let inner = &group_kfold(&train_plates, 4).unwrap()[0];
        let (fit, val): (Vec<usize>, Vec<usize>) = (
            inner.train.iter().map(|&j| f.train[j]).collect(),
            inner.test.iter().map(|&j| f.train[j]).collect(),
        );
        let images = Samples {
            x: &small.pixels,
            shape: vec![1, small.side, small.side],
            y: &set.labels,
            classes: 2,
        };
        let cfg = TrainConfig {
            epochs: 12,
            ..TrainConfig::default()
        };
        let config = CnnConfig {
            in_channels: 1,
            classes: 2,
            width: 8,
            depth: 3,
            dropout: 0.2,
        };
        let (model, _, hist) = train_cnn(config.clone(), &images, &fit, &val, &cfg).unwrap();
        let p = predict_cnn(&model, &images, &f.test).unwrap();
        let st = Standardizer::fit(&feats, dim, &fit);
        let z = st.apply(&feats);
        let table = Samples {
            x: &z,
            shape: vec![dim],
            y: &set.labels,
            classes: 2,
        };
        let lcfg = TrainConfig {
            epochs: 300,
            lr: 0.05,
            ..TrainConfig::default()
        };
        let (lin, _) = train_logistic(&table, &fit, &lcfg).unwrap();
        let pl = predict_logistic(&lin, &table, &f.test).unwrap();
        let shuffled_images = Samples {
            y: &shuffled,
            ..images
        };
        let (sm, _, _) = train_cnn(config, &shuffled_images, &fit, &val, &cfg).unwrap();
        let ps = predict_cnn(&sm, &shuffled_images, &f.test).unwrap();
        let truth: Vec<usize> = f.test.iter().map(|&i| set.labels[i]).collect();
        let f1 = |p: &[Vec<f64>], t: &[usize]| Confusion::new(2, t, &argmax(p)).weighted_f1();
        let st: Vec<usize> = f.test.iter().map(|&i| shuffled[i]).collect();
        println!(
            "fold {k} ({} test plates, {} cells): CNN weighted F1 {:.3} (best epoch {}), logistic {:.3}, shuffled-label CNN {:.3}",
            f.held_out.len(),
            f.test.len(),
            f1(&p, &truth),
            hist.best_epoch,
            f1(&pl, &truth),
            f1(&ps, &st)
        );
        t_all.extend(truth);
        cnn_all.extend(argmax(&p));
        lin_all.extend(argmax(&pl));
        shuf_all.extend(st.iter().zip(argmax(&ps)).map(|(a, b)| (*a, b)));
    }
    let cnn = Confusion::new(2, &t_all, &cnn_all).weighted_f1();
    let lin = Confusion::new(2, &t_all, &lin_all).weighted_f1();
    let (st, sp): (Vec<usize>, Vec<usize>) = shuf_all.into_iter().unzip();
    let shuf = Confusion::new(2, &st, &sp).weighted_f1();
    println!(
        "overall ({n} cells, {:.0} s): CNN {cnn:.3}, logistic {lin:.3}, shuffled {shuf:.3}",
        t0.elapsed().as_secs_f64()
    );
    assert!(cnn > 0.85 && lin > 0.8, "CNN {cnn}, logistic {lin}");
    assert!(shuf < cnn - 0.2, "shuffled control {shuf} vs {cnn}");
}

/// Each layer alone (conv with padding, ReLU, our 2x2 max-pool, global average) against
/// finite differences; the pool is ours because Candle's `max_pool2d` backward is off by 4x.
#[test]
fn layer_gradients_match_finite_differences() {
    use candle_core::Var;
    let mut rng = Rng::new(1);
    let xv: Vec<f64> = (0..2 * 2 * 8 * 8).map(|_| rng.unit()).collect();
    let x = Tensor::from_vec(xv, (2, 2, 8, 8), &Device::Cpu).unwrap();
    let wv: Vec<f64> = (0..4 * 2 * 3 * 3).map(|_| rng.unit() - 0.5).collect();
    let w = Var::from_vec(wv.clone(), (4, 2, 3, 3), &Device::Cpu).unwrap();
    for case in 0..4 {
        let f = |w: &Tensor| {
            let y = x.conv2d(w, 1, 1, 1, 1).unwrap();
            let y = match case {
                0 => y,
                1 => y.relu().unwrap(),
                2 => crate::model::max_pool_2x2(&y).unwrap(),
                _ => y.mean((2, 3)).unwrap(),
            };
            let k: Vec<f64> = (0..y.elem_count())
                .map(|i| ((i * 7919) % 13) as f64 / 13.0)
                .collect();
            let k = Tensor::from_vec(k, y.shape(), &Device::Cpu).unwrap();
            (y * k).unwrap().sum_all().unwrap()
        };
        let g = f(w.as_tensor()).backward().unwrap();
        let g = g
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let mut worst = 0f64;
        for k in [0, 3, 17, 40, 71] {
            let at = |d: f64| {
                let mut v = wv.clone();
                v[k] += d;
                f(&Tensor::from_vec(v, (4, 2, 3, 3), &Device::Cpu).unwrap())
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let num = (at(1e-6) - at(-1e-6)) / 2e-6;
            worst = worst.max((num - g[k]).abs() / (num.abs() + g[k].abs()).max(1e-9));
        }
        assert!(worst < 1e-6, "case {case}: relative error {worst:.2e}");
    }
}

/// Crops of noise with a bright spot: class 1 top-left, class 0 bottom-right.
fn spots(n: usize, side: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(n * side * side);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % 2;
        let (cy, cx) = if class == 1 { (4.0, 4.0) } else { (11.0, 11.0) };
        for r in 0..side {
            for c in 0..side {
                let d2 = (r as f64 - cy).powi(2) + (c as f64 - cx).powi(2);
                x.push((0.2 * rng.unit() + (-d2 / 4.0).exp()) as f32);
            }
        }
        y.push(class);
    }
    (x, y)
}

/// The same seed gives the same model, bit for bit (parallel reductions add in a fixed
/// order); another seed gives another.
#[test]
fn a_fixed_seed_gives_the_same_model_on_re_run() {
    let (side, n) = (16usize, 96usize);
    let (x, y) = spots(n, side, 3);
    let s = Samples {
        x: &x,
        shape: vec![1, side, side],
        y: &y,
        classes: 2,
    };
    let idx: Vec<usize> = (0..n).collect();
    let arch = CnnConfig {
        in_channels: 1,
        classes: 2,
        width: 8,
        depth: 2,
        dropout: 0.3,
    };
    let weights = |seed: u64| {
        let cfg = TrainConfig {
            epochs: 3,
            seed,
            ..TrainConfig::default()
        };
        let (_, vm, _) = train_cnn(arch.clone(), &s, &idx, &idx, &cfg).unwrap();
        let data = vm.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|k| {
                data[k]
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect::<Vec<f32>>()
    };
    let (a, b, c) = (weights(1), weights(1), weights(2));
    assert!(a == b, "same seed, different weights");
    assert!(a != c, "another seed, same weights");
}

/// Transfer learning: a CNN started from a checkpoint with frozen features keeps every conv
/// and BatchNorm weight of the checkpoint, trains only its head, and learns the new task
/// (here the classes swapped) from few epochs.
#[test]
fn warm_start_with_frozen_features_trains_only_the_head() {
    use crate::train::WarmStart;
    let (side, n) = (16usize, 200usize);
    let (x, y) = spots(n, side, 5);
    let s = Samples {
        x: &x,
        shape: vec![1, side, side],
        y: &y,
        classes: 2,
    };
    let idx: Vec<usize> = (0..n).collect();
    let arch = CnnConfig {
        in_channels: 1,
        classes: 2,
        width: 8,
        depth: 2,
        dropout: 0.0,
    };
    let cfg = TrainConfig {
        epochs: 5,
        augment: false,
        ..TrainConfig::default()
    };
    let (_, first, _) = train_cnn(arch.clone(), &s, &idx, &idx, &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("model.safetensors");
    first.save(&ckpt).unwrap();
    let swapped: Vec<usize> = y.iter().map(|c| 1 - c).collect();
    let s2 = Samples { y: &swapped, ..s };
    let cfg2 = TrainConfig {
        warm_start: Some(WarmStart {
            weights: ckpt.clone(),
            freeze_features: true,
        }),
        seed: 9,
        epochs: 20,
        lr: 0.03,
        ..cfg
    };
    let (model, second, _) = train_cnn(arch, &s2, &idx, &idx, &cfg2).unwrap();
    let saved = candle_core::safetensors::load(&ckpt, &Device::Cpu).unwrap();
    let data = second.data().lock().unwrap();
    let diff = |name: &str| {
        (data[name].as_tensor() - &saved[name])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff("block0.conv.weight"), 0.0, "frozen conv weights moved");
    assert_eq!(
        diff("block1.bn.weight"),
        0.0,
        "frozen BatchNorm scale moved"
    );
    assert!(diff("head.weight") > 0.0, "the head trains");
    drop(data);
    let p = predict_cnn(&model, &s2, &idx).unwrap();
    let acc = argmax(&p)
        .iter()
        .zip(&swapped)
        .filter(|(a, b)| a == b)
        .count() as f64
        / n as f64;
    assert!(
        acc > 0.9,
        "the new task is learnt on frozen features: accuracy {acc}"
    );
}

/// A synthetic task whose evidence sits in one place: class 1 crops have a bright spot in the
/// top-left quadrant, class 0 crops in the bottom-right, on noise. A trained CNN's saliency,
/// SmoothGrad and Grad-CAM maps for class-1 cells put most of their mass in the top-left
/// quadrant; a model with randomised weights gives different maps (Adebayo's sanity check).
#[test]
fn saliency_maps_find_the_evidence_and_fail_on_random_weights() {
    use crate::interpret::{grad_cam, saliency, smoothgrad, spearman};
    let (side, n) = (16usize, 240usize);
    let (x, y) = spots(n, side, 21);
    let s = Samples {
        x: &x,
        shape: vec![1, side, side],
        y: &y,
        classes: 2,
    };
    let idx: Vec<usize> = (0..n).collect();
    let cfg = TrainConfig {
        epochs: 6,
        augment: false,
        ..TrainConfig::default()
    };
    let arch = CnnConfig {
        in_channels: 1,
        classes: 2,
        width: 8,
        depth: 2,
        dropout: 0.0,
    };
    let (model, _, _) = train_cnn(arch.clone(), &s, &idx, &idx, &cfg).unwrap();
    let p = predict_cnn(&model, &s, &idx).unwrap();
    let acc = argmax(&p).iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / n as f64;
    assert!(acc > 0.95, "the synthetic task is learnt: accuracy {acc}");
    let varmap = VarMap::new();
    let random = Cnn::new(
        arch,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    seed_init(&varmap, 99).unwrap();
    let shape = [1, side, side];
    let top_left = |m: &[f32]| {
        let total: f32 = m.iter().sum();
        let part: f32 = (0..side * side)
            .filter(|i| i / side < side / 2 && i % side < side / 2)
            .map(|i| m[i])
            .sum();
        part / total.max(1e-12)
    };
    let mut rho = Vec::new();
    for cell in (1..n).step_by(2).take(5) {
        let crop = &x[cell * side * side..(cell + 1) * side * side];
        let sal = saliency(&model, crop, &shape, 1).unwrap();
        let sg = smoothgrad(&model, crop, &shape, 1, 8, 0.1, &mut Rng::new(1)).unwrap();
        let cam = grad_cam(&model, crop, &shape, 1).unwrap();
        for (name, m) in [("saliency", &sal), ("smoothgrad", &sg), ("grad-cam", &cam)] {
            assert_eq!(m.len(), side * side);
            let share = top_left(m);
            assert!(
                share > 0.5,
                "{name}: {share:.2} of the map in the evidence quadrant"
            );
        }
        rho.push(spearman(&sal, &saliency(&random, crop, &shape, 1).unwrap()));
    }
    let mean_rho = rho.iter().sum::<f64>() / rho.len() as f64;
    println!("trained vs randomised saliency, Spearman per cell: {rho:.2?}");
    assert!(
        mean_rho < 0.6,
        "trained vs random-weight saliency: Spearman {mean_rho:.2}"
    );
}

/// Test-time augmentation averages the 8 flips/rotations, so a crop and any flipped or
/// rotated copy of it get the same probabilities; a single view does not (the network
/// itself is not rotation-invariant, which is what makes the check mean something).
#[test]
fn test_time_augmentation_is_invariant_to_flips_and_rotations() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = CnnConfig {
        in_channels: 2,
        classes: 4,
        width: 4,
        depth: 2,
        dropout: 0.0,
    };
    let model = Cnn::new(cfg, vb).unwrap();
    seed_init(&varmap, 5).unwrap();
    let (n, side) = (6usize, 12usize);
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..n * 2 * side * side)
        .map(|_| rng.unit() as f32)
        .collect();
    let one = 2 * side * side;
    let y = vec![0usize; n];
    let idx: Vec<usize> = (0..n).collect();
    fn at<'a>(x: &'a [f32], y: &'a [usize], side: usize) -> Samples<'a> {
        Samples {
            x,
            shape: vec![2, side, side],
            y,
            classes: 4,
        }
    }
    let base = predict_cnn_tta(&model, &at(&x, &y, side), &idx).unwrap();
    let plain = predict_cnn(&model, &at(&x, &y, side), &idx).unwrap();
    let max_diff = |a: &[Vec<f64>], b: &[Vec<f64>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    };
    for t in [1, 3, 4, 6] {
        let moved: Vec<f32> = x
            .chunks(one)
            .flat_map(|c| transform(c, 2, side, t, 1.0, 1.0))
            .collect();
        let tta = predict_cnn_tta(&model, &at(&moved, &y, side), &idx).unwrap();
        let d = max_diff(&base, &tta);
        assert!(d < 1e-5, "view {t}: TTA probabilities moved by {d}");
        let single = predict_cnn(&model, &at(&moved, &y, side), &idx).unwrap();
        let d = max_diff(&plain, &single);
        assert!(
            d > 1e-4,
            "view {t}: a single view should depend on orientation ({d})"
        );
    }
}
