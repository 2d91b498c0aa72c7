//! `train_segmenter`: trains the learned nucleus segmenter (or fine-tunes it from the
//! shipped weights or the user's) on image sets that hold a nucleus image and its instance
//! labels, scores it on the fifth of the sets held out by key, and writes the weights with a
//! model card. A `segment` step with `method: learned` and this step in `after:` uses them.

use super::{Context, ImageSet};
use plateflow_contract::params::{TrainSegmenterParams, SHIPPED_INIT};
use plateflow_learn::nuclei::{self, Annotated, Matching, SegTrainConfig, Weights, IOUS};
use plateflow_learn::segmenter::{PREDICT_AT, SHIPPED, SHIPPED_NAME};
use plateflow_learn::unet::UNetConfig;
use std::fmt::Write as _;

/// One annotated image set, its label image read as users' masks are (any integer form,
/// checked; [`plateflow_imaging::masks::read_mask`]) and checked against the image.
fn load(p: &TrainSegmenterParams, set: &ImageSet) -> anyhow::Result<Annotated> {
    let img_path = set.channel(&p.nuclei)?;
    let lab_path = set.channel(&p.labels)?;
    let img = plateflow_imaging::read_image(img_path)?;
    let lab = plateflow_imaging::masks::read_mask(lab_path)?;
    anyhow::ensure!(
        (img.width, img.height) == (lab.width, lab.height),
        "image set {}: the label image {} is {}x{} but the image {} is {}x{}; labels must be drawn on the image itself",
        set.key,
        lab_path.display(),
        lab.width,
        lab.height,
        img_path.display(),
        img.width,
        img.height
    );
    nuclei::annotated_by(&split_id(set), &img, lab.data)
}

/// What a set is held out by: its field values joined by `_`, without the default plate of
/// a pattern that names none. For the DSB images (`{channel}/{id}.png`) that is the image id,
/// on which the shipped weights' fifths were drawn, so the sets held out here were never
/// trained on by `init: shipped` either (held out by the key `plate_<id>`, 37 of 73 had been).
fn split_id(set: &ImageSet) -> String {
    set.meta
        .iter()
        .filter(|(k, v)| !(k == "plate" && v == plateflow_contract::platemap::UNNAMED_PLATE))
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join("_")
}

/// (training, held-out) sets: a fifth by key (FNV-1a of the key, so adding images never
/// moves another); at least one held out when there are two or more sets, so there is always
/// a score, and at least one trained on whatever the keys (a single set is trained on, with
/// nothing held out).
fn split(all: Vec<Annotated>) -> (Vec<Annotated>, Vec<Annotated>) {
    let (mut val, mut train): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|a| nuclei::is_validation(&a.id));
    if val.is_empty() && train.len() >= 2 {
        // The set whose key hashes nearest to the held-out fifth.
        let i = (0..train.len())
            .min_by_key(|&i| (nuclei::fifth(&train[i].id), train[i].id.clone()))
            .expect("two or more sets");
        val.push(train.remove(i));
    }
    if train.is_empty() {
        // Every key fell in the held-out fifth: the last by key is trained on instead.
        let i = (0..val.len())
            .max_by_key(|&i| val[i].id.clone())
            .expect("one or more sets");
        train.push(val.remove(i));
    }
    if train.iter().all(|a| count(&a.truth) == 0) {
        // The labelled sets all fell in the held-out part: training on background alone would
        // wipe out what `init:` knew, so the held-out set with the most nuclei trains instead.
        if let Some(i) = (0..val.len())
            .filter(|&i| count(&val[i].truth) > 0)
            .max_by_key(|&i| (count(&val[i].truth), val[i].id.clone()))
        {
            train.push(val.remove(i));
        }
    }
    (train, val)
}

pub fn run(ctx: &mut Context, p: &TrainSegmenterParams) -> anyhow::Result<()> {
    let sets = ctx.image_sets()?;
    anyhow::ensure!(
        !sets.is_empty(),
        "no image sets: the step needs images of channel `{}` with labels in channel `{}`",
        p.nuclei,
        p.labels
    );
    // Labels for some images only (5 of a plate's 100 drawn in napari) is how fine-tuning
    // is done: the others are left out here and segmented downstream.
    let (labelled, unlabelled): (Vec<&ImageSet>, Vec<&ImageSet>) = sets
        .iter()
        .partition(|s| s.channels.contains_key(&p.labels));
    anyhow::ensure!(
        !labelled.is_empty(),
        "no image set has a label image (channel `{}`) among its {} sets; check `labels:` and \
         the filename pattern that tells label files from images",
        p.labels,
        sets.len()
    );
    if !unlabelled.is_empty() {
        ctx.logln(format!(
            "{} of {} image sets have no label image (channel `{}`) and are not trained on: {}{}",
            unlabelled.len(),
            sets.len(),
            p.labels,
            unlabelled
                .iter()
                .take(5)
                .map(|s| s.key.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if unlabelled.len() > 5 { ", …" } else { "" }
        ));
    }
    let all = labelled
        .iter()
        .map(|s| load(p, s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let objects: usize = all.iter().map(|a| count(&a.truth)).sum();
    anyhow::ensure!(
        objects > 0,
        "no nuclei in any label image of channel `{}` ({} image sets): every label image is 0 everywhere; check that `labels:` names the channel of instance labels, and that the files were exported with their objects",
        p.labels,
        all.len()
    );
    let (train, val) = split(all);
    let init = match p.init.as_deref() {
        None => None,
        Some(SHIPPED_INIT) => Some(Weights::from_bytes(SHIPPED, SHIPPED_NAME)?),
        Some(rel) => {
            let path = ctx.work.join(rel);
            let bytes = std::fs::read(&path).map_err(|e| {
                anyhow::anyhow!("`init: {rel}`: cannot read {}: {e}", path.display())
            })?;
            Some(Weights::from_bytes(&bytes, rel)?)
        }
    };
    let cfg = SegTrainConfig {
        net: UNetConfig {
            width: p.width as usize,
            depth: 3,
        },
        steps: p.steps() as usize,
        diameter: p.diameter,
        seed: p.seed,
        // Fine-tuning moves less far from weights that already work.
        lr: if init.is_some() { 5e-4 } else { 2e-3 },
        // The task's GPU where it was given one (`gpus: 1`), else the CPU.
        device: ctx.device(),
        // A killed worker's attempt continues from its last state (at most 10 s lost).
        resume: ctx.resume.clone(),
        ..Default::default()
    };
    ctx.logln(format!(
        "{} image sets ({objects} nuclei): {} to train on, {} held out ({})",
        sets.len(),
        train.len(),
        val.len(),
        val.iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let before = match &init {
        Some(w) if !val.is_empty() => Some(nuclei::evaluate(&w.model("init")?, &val)?),
        _ => None,
    };
    let progress = ctx.progress_sink("train_segmenter");
    let t0 = std::time::Instant::now();
    // Whether training took up an earlier attempt's state (or set one aside) goes into the
    // log and the card too: the first such message, said before training starts.
    let resumption = std::sync::Mutex::new(None::<String>);
    let (weights, history) = nuclei::train(&train, &val, &cfg, init.as_ref(), 0, &|m| {
        let about_a_state =
            m.starts_with(nuclei::SAY_RESUMING) || m.starts_with(nuclei::SAY_SET_ASIDE);
        let mut first = resumption.lock().expect("resumption");
        if about_a_state && first.is_none() {
            *first = Some(m.to_string());
        }
        progress.say(m)
    })?;
    let resumption = resumption.into_inner().expect("resumption");
    if let Some(m) = &resumption {
        ctx.logln(m);
    }
    let secs = t0.elapsed().as_secs_f64();
    let after = if val.is_empty() {
        None
    } else {
        Some(nuclei::evaluate(&weights.model("trained")?, &val)?)
    };
    ctx.write_output("segmenter.safetensors", &weights.to_bytes()?)?;
    let mut hist = String::from("step,loss\n");
    for (step, loss, _) in &history {
        let _ = writeln!(hist, "{step},{loss}");
    }
    ctx.write_output("segmenter_history.csv", hist.as_bytes())?;
    let scores = serde_json::json!({
        "held_out_sets": val.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        "before": before.as_ref().map(scores_json),
        "after": after.as_ref().map(scores_json),
    });
    ctx.write_output(
        "segmenter_scores.json",
        serde_json::to_string_pretty(&scores)?.as_bytes(),
    )?;
    let card = card(
        ctx,
        p,
        &cfg,
        &weights,
        (&train, &val),
        (before, after),
        (
            secs,
            // "resuming from step N: …" → N
            resumption
                .as_deref()
                .and_then(|m| m.strip_prefix(nuclei::SAY_RESUMING))
                .and_then(|m| m.split(':').next()),
        ),
    );
    ctx.write_output("segmenter_card.md", card.as_bytes())?;
    if let (Some(b), Some(a)) = (before, after) {
        ctx.logln(format!(
            "held-out F1 at IoU 0.5: {:.3} before, {:.3} after fine-tuning",
            b[0].f1(),
            a[0].f1()
        ));
    } else if let Some(a) = after {
        ctx.logln(format!("held-out F1 at IoU 0.5: {:.3}", a[0].f1()));
    }
    ctx.logln(format!(
        "trained {} steps (this attempt: {secs:.0} s) on {}",
        cfg.steps,
        plateflow_learn::device::describe(&cfg.device)
    ));
    Ok(())
}

fn count(truth: &[u32]) -> usize {
    let mut seen: Vec<u32> = truth.iter().copied().filter(|&l| l > 0).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

fn scores_json(m: &[Matching; 3]) -> serde_json::Value {
    serde_json::Value::Array(
        m.iter()
            .zip(IOUS)
            .map(|(m, iou)| {
                serde_json::json!({"iou": iou, "ap": m.ap(), "f1": m.f1(),
                    "matched": m.matched, "predicted": m.predicted, "true": m.truth})
            })
            .collect(),
    )
}

fn table(m: &[Matching; 3]) -> String {
    let mut s =
        String::from("| IoU | AP | F1 | matched / predicted / true |\n| --- | --- | --- | --- |\n");
    for (m, iou) in m.iter().zip(IOUS) {
        let _ = writeln!(
            s,
            "| {iou} | {:.3} | {:.3} | {} / {} / {} |",
            m.ap(),
            m.f1(),
            m.matched,
            m.predicted,
            m.truth
        );
    }
    s
}

/// The model card: what it was trained on, how it scores on images it never saw, how to use
/// and retrain it.
fn card(
    ctx: &Context,
    p: &TrainSegmenterParams,
    cfg: &SegTrainConfig,
    weights: &Weights,
    (train, val): (&[Annotated], &[Annotated]),
    (before, after): (Option<[Matching; 3]>, Option<[Matching; 3]>),
    // This attempt's seconds, and the step it went on from where an earlier one stopped.
    (secs, resumed): (f64, Option<&str>),
) -> String {
    let step = &ctx.task.step;
    let mut s = format!("# Nucleus segmenter `{step}`\n\n");
    let _ = writeln!(
        s,
        "A U-Net (width {}, {} levels) predicting background / nucleus interior / boundary, \
         turned into instances by growing interiors over boundaries. Training crops show \
         nuclei {:.1}-{:.1} px across; `segment` scales each image so its nuclei are {:.1} px \
         across ({PREDICT_AT} of the training diameter), from the nucleus size it estimates \
         in the image (or `diameter:`).\n",
        weights.config.width,
        weights.config.depth,
        weights.diameter / nuclei::SCALE_JITTER.1,
        weights.diameter / nuclei::SCALE_JITTER.0,
        weights.diameter * PREDICT_AT
    );
    let _ = writeln!(s, "## Training\n");
    let _ = writeln!(
        s,
        "- Data: {} image sets of channel `{}` with labels from channel `{}` (their licence is \
         the data's owner's).",
        train.len() + val.len(),
        p.nuclei,
        p.labels
    );
    let _ = writeln!(
        s,
        "- Start: {}.",
        match p.init.as_deref() {
            None => "random weights (seed {seed})".replace("{seed}", &p.seed.to_string()),
            Some(SHIPPED_INIT) => "the weights shipped with plateflow (trained on the DSB 2018 nuclei, CC0; see learn/models/nuclei-unet.md)".to_string(),
            Some(f) => format!("`{f}`"),
        }
    );
    let _ = writeln!(
        s,
        "- {} steps of {} augmented {}² crops (scale, flips and rotations, gamma, contrast, \
         blur, quantisation, noise), AdamW at {} with cosine decay, seed {}: {secs:.0} s on \
         {}.",
        cfg.steps,
        cfg.batch,
        cfg.crop,
        cfg.lr,
        cfg.seed,
        match plateflow_learn::device::describe(&cfg.device).as_str() {
            "cpu" => "the CPU".to_string(),
            gpu => format!("GPU {gpu}"),
        }
    );
    if let Some(step) = resumed {
        let _ = writeln!(
            s,
            "- Interrupted: this attempt went on from step {step}, where an earlier one had \
             left its training state (the time above is this attempt's). With the same \
             batches and optimizer state it is the same run: bit for bit where both attempts \
             ran on the same kind of worker (threads and device can change rounding)."
        );
    }
    let _ = writeln!(s, "\n## Held-out scores\n");
    if val.is_empty() {
        let _ = writeln!(
            s,
            "{}",
            if train.len() == 1 {
                "None: with one image set nothing could be held out. Add images."
            } else {
                "None: only one image set has nuclei in its labels, and it was trained on. \
                 Label the nuclei of at least one more image."
            }
        );
    } else {
        let _ = writeln!(
            s,
            "On {} image sets never trained on ({}), each segmented as `segment` would \
             (nucleus size estimated from the image). AP = TP / (TP + FP + FN).\n",
            val.len(),
            val.iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(b) = &before {
            let _ = writeln!(
                s,
                "Before fine-tuning (the initial weights):\n\n{}",
                table(b)
            );
        }
        if let Some(a) = &after {
            let _ = writeln!(
                s,
                "{}\n\n{}",
                if before.is_some() {
                    "After fine-tuning:"
                } else {
                    "Trained model:"
                },
                table(a)
            );
        }
        if val.len() < 5 {
            let _ = writeln!(
                s,
                "Few images were held out: these scores are rough. Label more images for a \
                 firmer estimate."
            );
        }
    }
    let _ = writeln!(
        s,
        "\n## Use and retraining\n\nIn a `segment` step: `method: learned` with this step in \
         `after:` (or the saved `segmenter.safetensors` listed in `files:` and named in \
         `weights:`). Retrain by running this step again: its weights are a function of the \
         images, labels and parameters above."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(id: &str) -> Annotated {
        let image = plateflow_imaging::GrayImage {
            width: 4,
            height: 4,
            bit_depth: 8,
            data: vec![0; 16],
        };
        nuclei::annotated_by(id, &image, vec![0; 16]).unwrap()
    }

    /// Keys in and out of the held-out fifth.
    fn keys(held_out: bool, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("P1_A{i:02}_1"))
            .filter(|k| nuclei::is_validation(k) == held_out)
            .take(n)
            .collect()
    }

    #[test]
    fn something_is_trained_on_and_something_held_out_whatever_the_keys() {
        for (held, other) in [(1, 0), (0, 1), (2, 0), (0, 2), (3, 1), (1, 5)] {
            let ids: Vec<String> = keys(true, held)
                .into_iter()
                .chain(keys(false, other))
                .collect();
            let (train, val) = split(ids.iter().map(|k| set(k)).collect());
            assert!(!train.is_empty(), "{ids:?}");
            assert_eq!(val.is_empty(), ids.len() == 1, "{ids:?}");
            assert_eq!(train.len() + val.len(), ids.len());
        }
    }

    /// Where only the held-out sets hold nuclei (one labelled image beside empty fields), one
    /// of them is trained on: training on background alone wiped out a fine-tune's start.
    #[test]
    fn training_always_sees_nuclei_where_any_set_has_them() {
        let labelled = |id: &str| {
            let image = plateflow_imaging::GrayImage {
                width: 4,
                height: 4,
                bit_depth: 8,
                data: vec![0; 16],
            };
            let mut truth = vec![0; 16];
            truth[5] = 1;
            nuclei::annotated_by(id, &image, truth).unwrap()
        };
        let held = keys(true, 1);
        let others = keys(false, 3);
        let mut all = vec![labelled(&held[0])];
        all.extend(others.iter().map(|k| set(k)));
        let (train, val) = split(all);
        assert!(
            train.iter().any(|a| a.id == held[0]),
            "labelled set not trained on"
        );
        assert_eq!(train.len() + val.len(), 4);
    }
}
