//! Figures that show what a CNN looks at, for the report: per class, sample cells with their
//! gradient × input, SmoothGrad and Grad-CAM maps, and montages of the most and least
//! confident cells; plus the randomised-weights sanity check, whose result goes into
//! `interpretation.json`.

use super::Context;
use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use plateflow_learn::cells::Data;
use plateflow_learn::figures::{composite, grid, overlay, zoom_for};
use plateflow_learn::interpret::{grad_cam, saliency, smoothgrad, spearman};
use plateflow_learn::model::{seed_init, Cnn};
use plateflow_learn::rng::Rng;

/// Cells shown per class in the saliency figure and per row of a montage.
const SAMPLES: usize = 4;
const MONTAGE: usize = 6;
/// White pixels between tiles.
const GAP: usize = 4;

/// Writes `figures/saliency_<k>.png` and `figures/montage_<k>.png` for each class k, their
/// tiles enlarged by nearest neighbour to about 144 px, and returns the sanity check's summary
/// with, per class, where each figure's tiles are and which cell each shows (`saliency_tiles`,
/// `montage_tiles`: file, tile size, gap, and per row its cells' id, plate, well, label,
/// predicted class and confidence), so the report can caption every tile. `probs`: each cell's calibrated out-of-fold
/// probabilities (the montage ranks by them; the maps come from the final `model`).
pub fn write_figures(
    ctx: &Context,
    model: &Cnn,
    d: &Data,
    labels: &[usize],
    probs: &[Vec<f64>],
    seed: u64,
) -> anyhow::Result<serde_json::Value> {
    let per: usize = d.shape.iter().product();
    let crop = |i: usize| &d.x[i * per..(i + 1) * per];
    let shape = &d.shape;
    // The same architecture with random weights, for the sanity check.
    let random_map = VarMap::new();
    let random = Cnn::new(
        model.config.clone(),
        VarBuilder::from_varmap(&random_map, DType::F32, model.device()),
    )?;
    seed_init(&random_map, seed ^ 0x5A5A)?;
    let mut rho = Vec::new();
    let mut rng = Rng::new(seed);
    let mut classes_out = Vec::new();
    let zoom = zoom_for(shape[1].max(shape[2]));
    let (tile_w, tile_h) = (shape[2] * zoom, shape[1] * zoom);
    let describe = |i: usize| {
        let k = argmax1(&probs[i]);
        serde_json::json!({
            "cell": d.ids[i],
            "plate": d.origins[i].plate,
            "well": d.origins[i].well,
            "truth": d.classes[labels[i]],
            "predicted": d.classes[k],
            "confidence": probs[i][k],
        })
    };
    for (k, class) in d.classes.iter().enumerate() {
        // Confidently right cells of this class: what the model takes as typical.
        let mut right: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] == k && argmax1(&probs[i]) == k)
            .collect();
        right.sort_by(|&a, &b| probs[b][k].total_cmp(&probs[a][k]));
        let mut rows = Vec::new();
        for &i in right.iter().take(SAMPLES) {
            let c = crop(i);
            let sal = saliency(model, c, shape, k)?;
            let sg = smoothgrad(model, c, shape, k, 16, 0.15, &mut rng)?;
            let cam = grad_cam(model, c, shape, k)?;
            rho.push(spearman(&sal, &saliency(&random, c, shape, k)?));
            rows.push(vec![
                composite(c, shape).upscale(zoom),
                overlay(c, shape, &sal).upscale(zoom),
                overlay(c, shape, &sg).upscale(zoom),
                overlay(c, shape, &cam).upscale(zoom),
            ]);
        }
        let stem = file_stem(class);
        let mut saliency_tiles = serde_json::Value::Null;
        if !rows.is_empty() {
            let file = format!("figures/saliency_{stem}.png");
            ctx.write_output(&file, &grid(&rows, GAP).png()?)?;
            saliency_tiles = serde_json::json!({
                "file": file, "tile_width": tile_w, "tile_height": tile_h, "gap": GAP,
                "columns": ["crop", "gradient × input", "SmoothGrad", "Grad-CAM"],
                "rows": right.iter().take(rows.len()).map(|&i| serde_json::json!({"cell": describe(i)})).collect::<Vec<_>>(),
            });
        }
        // Cells predicted as this class, most and least confident.
        let mut predicted: Vec<usize> = (0..labels.len())
            .filter(|&i| argmax1(&probs[i]) == k)
            .collect();
        predicted.sort_by(|&a, &b| probs[b][k].total_cmp(&probs[a][k]));
        let mut montage_tiles = serde_json::Value::Null;
        if !predicted.is_empty() {
            let most: Vec<usize> = predicted.iter().take(MONTAGE).copied().collect();
            let least: Vec<usize> = predicted.iter().rev().take(MONTAGE).copied().collect();
            let tiles = |cells: &[usize]| -> Vec<_> {
                cells
                    .iter()
                    .map(|&i| composite(crop(i), shape).upscale(zoom))
                    .collect()
            };
            let file = format!("figures/montage_{stem}.png");
            ctx.write_output(&file, &grid(&[tiles(&most), tiles(&least)], GAP).png()?)?;
            let row = |label: &str, cells: &[usize]| serde_json::json!({"label": label, "cells": cells.iter().map(|&i| describe(i)).collect::<Vec<_>>()});
            montage_tiles = serde_json::json!({
                "file": file, "tile_width": tile_w, "tile_height": tile_h, "gap": GAP,
                "rows": [row("most confident", &most), row("least confident", &least)],
            });
        }
        classes_out.push(serde_json::json!({
            "class": class, "file_stem": stem, "saliency_cells": rows.len(), "predicted_cells": predicted.len(),
            "saliency_tiles": saliency_tiles, "montage_tiles": montage_tiles,
        }));
    }
    let mean_rho = if rho.is_empty() {
        f64::NAN
    } else {
        rho.iter().sum::<f64>() / rho.len() as f64
    };
    Ok(serde_json::json!({
        "methods": ["gradient x input", "SmoothGrad (16 samples, noise 0.15 of the range)", "Grad-CAM (last conv block)"],
        "classes": classes_out,
        "sanity_check": {
            "test": "Spearman rank correlation of gradient x input maps, trained vs randomised weights (Adebayo et al. 2018)",
            "mean_spearman": mean_rho,
            "cells": rho.len(),
            // Gradient x input keeps some of the image itself, so it is never 0; near 1 the
            // maps would show the image, not the model.
            "passed": mean_rho.is_finite() && mean_rho < 0.6,
        },
    }))
}

fn argmax1(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// A class name as a file-name stem: letters, digits, `-` and `_`; where other characters
/// were replaced (`α-tubulin` and `β-tubulin` both read `_-tubulin`, and one figure
/// overwrote the other) or the name is long, 8 hex digits of the name's SHA-256 follow.
pub fn file_stem(class: &str) -> String {
    let mut changed = false;
    let stem: String = class
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                changed = true;
                '_'
            }
        })
        .take(80)
        .collect();
    if !changed && stem.len() == class.len() {
        return stem;
    }
    let mut h = plateflow_store::Sha256Writer::default();
    h.update(class.as_bytes());
    format!("{stem}-{}", &h.finish().hex()[..8])
}

#[cfg(test)]
mod tests {
    use super::file_stem;

    /// Names that would read the same as file names get their own.
    #[test]
    fn class_names_become_distinct_file_names() {
        assert_eq!(file_stem("mitosis"), "mitosis");
        let (a, b) = (file_stem("α-tubulin"), file_stem("β-tubulin"));
        assert!(a.starts_with("_-tubulin-") && b.starts_with("_-tubulin-") && a != b);
        assert_ne!(file_stem("G1/S"), file_stem("G1_S"));
        assert!(file_stem(&"x".repeat(300)).len() < 100);
    }
}
