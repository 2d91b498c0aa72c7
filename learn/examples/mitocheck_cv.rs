//! Leave-plate-out cross-validation on the 16-class MitoCheck crops: the logistic baseline on
//! hand-crafted crop features, the CNN, and a shuffled-label CNN control, per fold and overall
//! (weighted and macro F1, 95 % intervals by plate bootstrap, ECE).
//!
//!     cargo run --release -p plateflow-learn --example mitocheck_cv -- [SIDE] [EPOCHS] [FOLDS]
//!
//! SIDE 64 (default) uses the crops as they are; 32 trains on 2x2-averaged crops (4x cheaper).

use plateflow_learn::data::{crop_features, load_class_folders};
use plateflow_learn::metrics::{argmax, bootstrap_by_group, expected_calibration_error, Confusion};
use plateflow_learn::model::CnnConfig;
use plateflow_learn::rng::Rng;
use plateflow_learn::split::{check_no_leak, group_kfold, Origin};
use plateflow_learn::train::{
    predict_cnn, predict_logistic, train_cnn, train_logistic, Samples, Standardizer, TrainConfig,
};

const CLASSES: [&str; 16] = [
    "ADCCM",
    "Anaphase",
    "Apoptosis",
    "Binuclear",
    "Elongated",
    "Folded",
    "Grape",
    "Hole",
    "Interphase",
    "Large",
    "Metaphase",
    "MetaphaseAlignment",
    "OutOfFocus",
    "Polylobed",
    "Prometaphase",
    "SmallIrregular",
];

fn main() -> anyhow::Result<()> {
    plateflow_learn::quiet_candle_threads();
    let args: Vec<String> = std::env::args().collect();
    let side: usize = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let epochs: usize = args.get(2).map_or(Ok(30), |s| s.parse())?;
    let k: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mitocheck-crops");
    if !root.is_dir() {
        println!("{} is absent", root.display());
        return Ok(());
    }
    let re = regex::Regex::new(r"PLLT(\d+)_.*___P(\d+)_")?;
    let pairs: Vec<(&str, &str)> = CLASSES.iter().map(|c| (*c, *c)).collect();
    let set = load_class_folders(&root, &re, &pairs)?;
    let images_set = if side < set.side {
        set.downsampled()
    } else {
        set.clone()
    };
    let n = set.len();
    let nc = CLASSES.len();
    let feats: Vec<f32> = (0..n).flat_map(|i| crop_features(&set.image(i))).collect();
    let dim = feats.len() / n;
    let mut shuffled = set.labels.clone();
    Rng::new(5).shuffle(&mut shuffled);
    let origins: Vec<Origin> = (0..n)
        .map(|i| Origin {
            plate: set.plates[i].clone(),
            well: set.wells[i].clone(),
            image_digest: set.files[i].clone(),
        })
        .collect();
    let folds = group_kfold(&set.plates, k)?;
    let (mut truth, mut groups) = (Vec::new(), Vec::new());
    let (mut p_cnn, mut p_lin, mut p_shuf, mut t_shuf) = (vec![], vec![], vec![], vec![]);
    let t0 = std::time::Instant::now();
    for (fi, f) in folds.iter().enumerate() {
        check_no_leak(&origins, &set.plates, &f.train, &f.test)?;
        let train_plates: Vec<String> = f.train.iter().map(|&i| set.plates[i].clone()).collect();
        let inner = &group_kfold(&train_plates, 5)?[0];
        let fit: Vec<usize> = inner.train.iter().map(|&j| f.train[j]).collect();
        let val: Vec<usize> = inner.test.iter().map(|&j| f.train[j]).collect();
        let images = Samples {
            x: &images_set.pixels,
            shape: vec![1, images_set.side, images_set.side],
            y: &set.labels,
            classes: nc,
        };
        let cfg = TrainConfig {
            epochs,
            ..TrainConfig::default()
        };
        let model_cfg = CnnConfig {
            in_channels: 1,
            classes: nc,
            width: 16,
            depth: 4,
            dropout: 0.3,
        };
        let (cnn, _, hist) = train_cnn(model_cfg.clone(), &images, &fit, &val, &cfg)?;
        let pc = predict_cnn(&cnn, &images, &f.test)?;
        let st = Standardizer::fit(&feats, dim, &fit);
        let z = st.apply(&feats);
        let table = Samples {
            x: &z,
            shape: vec![dim],
            y: &set.labels,
            classes: nc,
        };
        let lcfg = TrainConfig {
            epochs: 500,
            lr: 0.05,
            weight_decay: 1e-3,
            ..TrainConfig::default()
        };
        let (lin, _) = train_logistic(&table, &fit, &lcfg)?;
        let pl = predict_logistic(&lin, &table, &f.test)?;
        let shuffled_images = Samples {
            y: &shuffled,
            ..images
        };
        let (sm, _, _) = train_cnn(model_cfg, &shuffled_images, &fit, &val, &cfg)?;
        let ps = predict_cnn(&sm, &shuffled_images, &f.test)?;
        let t: Vec<usize> = f.test.iter().map(|&i| set.labels[i]).collect();
        let ts: Vec<usize> = f.test.iter().map(|&i| shuffled[i]).collect();
        let c = |p: &[Vec<f64>], t: &[usize]| Confusion::new(nc, t, &argmax(p));
        println!(
            "fold {fi}: {} plates, {} cells | CNN wF1 {:.3} mF1 {:.3} (best epoch {}) | logistic wF1 {:.3} mF1 {:.3} | shuffled CNN wF1 {:.3} | {:.0} s",
            f.held_out.len(),
            t.len(),
            c(&pc, &t).weighted_f1(),
            c(&pc, &t).macro_f1(),
            hist.best_epoch,
            c(&pl, &t).weighted_f1(),
            c(&pl, &t).macro_f1(),
            c(&ps, &ts).weighted_f1(),
            t0.elapsed().as_secs_f64()
        );
        truth.extend(t);
        t_shuf.extend(ts);
        groups.extend(f.test.iter().map(|&i| set.plates[i].clone()));
        p_cnn.extend(pc);
        p_lin.extend(pl);
        p_shuf.extend(ps);
    }
    let report = |name: &str, p: &[Vec<f64>], t: &[usize]| {
        let pred = argmax(p);
        let c = Confusion::new(nc, t, &pred);
        let (lo, hi) = bootstrap_by_group(&groups, 1000, 1, |idx| {
            let tt: Vec<usize> = idx.iter().map(|&i| t[i]).collect();
            let pp: Vec<usize> = idx.iter().map(|&i| pred[i]).collect();
            Confusion::new(nc, &tt, &pp).weighted_f1()
        });
        println!(
            "{name}: weighted F1 {:.3} [95% CI by plate {lo:.3}, {hi:.3}], macro F1 {:.3}, accuracy {:.3}, balanced {:.3}, ECE {:.3}",
            c.weighted_f1(),
            c.macro_f1(),
            c.accuracy(),
            c.balanced_accuracy(),
            expected_calibration_error(t, p, 15)
        );
    };
    println!(
        "overall, {n} cells, {k} folds by plate, CNN on {}x{} crops, {epochs} epochs:",
        images_set.side, images_set.side
    );
    report("CNN", &p_cnn, &truth);
    report("logistic (crop features)", &p_lin, &truth);
    report("shuffled-label CNN", &p_shuf, &t_shuf);
    Ok(())
}
