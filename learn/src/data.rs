//! Labelled single-cell crops: loading a folder-per-class collection (MitoCheck's layout) with
//! each file's plate taken from its name, and hand-crafted crop features for the linear
//! baseline (shape, intensity and texture of the central object, via `plateflow-imaging`).

use anyhow::Context as _;
use plateflow_imaging::features::{haralick_features, intensity_features, shape_features};
use plateflow_imaging::segment::{connected_components, gaussian, otsu, Labels};
use plateflow_imaging::{read_image, GrayImage};
use regex::Regex;
use std::path::Path;

/// Crops of equal size, one channel, intensities scaled to 0..1.
#[derive(Debug, Clone)]
pub struct CropSet {
    pub side: usize,
    pub pixels: Vec<f32>,
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
    /// Plate of each crop (the grouping for validation).
    pub plates: Vec<String>,
    /// Well or position of each crop, for the leakage guard.
    pub wells: Vec<String>,
    pub files: Vec<String>,
}

impl CropSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The same crops at half the side (2×2 means): a quick task 4× cheaper to train on.
    pub fn downsampled(&self) -> CropSet {
        let (n, h) = (self.side, self.side / 2);
        let mut pixels = Vec::with_capacity(self.len() * h * h);
        for i in 0..self.len() {
            let s = &self.pixels[i * n * n..(i + 1) * n * n];
            for y in 0..h {
                for x in 0..h {
                    let at = |dy: usize, dx: usize| s[(2 * y + dy) * n + 2 * x + dx];
                    pixels.push((at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0);
                }
            }
        }
        CropSet {
            side: h,
            pixels,
            labels: self.labels.clone(),
            classes: self.classes.clone(),
            plates: self.plates.clone(),
            wells: self.wells.clone(),
            files: self.files.clone(),
        }
    }

    pub fn image(&self, i: usize) -> GrayImage {
        let n = self.side * self.side;
        GrayImage {
            width: self.side as u32,
            height: self.side as u32,
            bit_depth: 8,
            data: self.pixels[i * n..(i + 1) * n]
                .iter()
                .map(|&v| (v * 255.0).round() as u16)
                .collect(),
        }
    }
}

/// Reads `root/<class>/*.png`. `plate_re` must capture the plate in its first group and may
/// capture the well or position in its second. `classes` maps folder names to class names
/// (several folders may share one, e.g. all mitotic stages); folders not listed are skipped.
pub fn load_class_folders(
    root: &Path,
    plate_re: &Regex,
    classes: &[(&str, &str)],
) -> anyhow::Result<CropSet> {
    let mut names: Vec<String> = classes.iter().map(|(_, c)| c.to_string()).collect();
    names.dedup();
    let mut set = CropSet {
        side: 0,
        pixels: Vec::new(),
        labels: Vec::new(),
        classes: names.clone(),
        plates: Vec::new(),
        wells: Vec::new(),
        files: Vec::new(),
    };
    for (folder, class) in classes {
        let label = names.iter().position(|n| n == class).expect("listed");
        let dir = root.join(folder);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let caps = plate_re.captures(&name).with_context(|| {
                format!(
                    "{}: the file name does not match the plate pattern {plate_re}",
                    f.display()
                )
            })?;
            let img = read_image(&f)?;
            anyhow::ensure!(
                img.width == img.height,
                "{}: crops must be square",
                f.display()
            );
            if set.side == 0 {
                set.side = img.width as usize;
            }
            anyhow::ensure!(
                img.width as usize == set.side,
                "{}: {}x{} but earlier crops are {}x{}",
                f.display(),
                img.width,
                img.height,
                set.side,
                set.side
            );
            let scale = img.max_value() as f32;
            set.pixels
                .extend(img.data.iter().map(|&v| v as f32 / scale));
            set.labels.push(label);
            set.plates.push(caps[1].to_string());
            set.wells
                .push(caps.get(2).map_or("", |m| m.as_str()).to_string());
            set.files.push(name);
        }
    }
    Ok(set)
}

/// Names of the hand-crafted crop features, in [`crop_features`] order.
pub fn crop_feature_names() -> Vec<String> {
    let mut n: Vec<String> = [
        "Area",
        "Perimeter",
        "Eccentricity",
        "MajorAxisLength",
        "MinorAxisLength",
        "Solidity",
        "Extent",
        "FormFactor",
        "MaxFeretDiameter",
        "MinFeretDiameter",
    ]
    .iter()
    .map(|s| format!("AreaShape_{s}"))
    .collect();
    n.extend(
        plateflow_imaging::features::ZERNIKE_NAMES
            .iter()
            .map(|z| format!("AreaShape_{z}")),
    );
    for s in [
        "Mean",
        "Std",
        "Min",
        "Max",
        "Median",
        "LowerQuartile",
        "UpperQuartile",
        "MAD",
        "MeanEdge",
        "Integrated",
    ] {
        n.push(format!("Intensity_{s}"));
    }
    n.extend(
        plateflow_imaging::features::HARALICK_NAMES
            .iter()
            .map(|h| format!("Texture_{h}_2_avg_16")),
    );
    n.extend(["Image_Mean".to_string(), "Image_Std".to_string()]);
    n
}

/// Features of the crop's central object: Otsu on the smoothed crop, the component nearest
/// the centre. A crop with no object gives zeros for the object features.
pub fn crop_features(img: &GrayImage) -> Vec<f32> {
    let (w, h) = (img.width as usize, img.height as usize);
    let smooth = gaussian(img, 1.0);
    let t = otsu(&smooth);
    let mask: Vec<bool> = smooth.iter().map(|&v| v > t).collect();
    let comps = connected_components(&mask, w, h);
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let mut best = (f64::INFINITY, 0u32);
    for (i, &l) in comps.data.iter().enumerate() {
        if l != 0 {
            let d = ((i % w) as f64 - cx).powi(2) + ((i / w) as f64 - cy).powi(2);
            if d < best.0 {
                best = (d, l);
            }
        }
    }
    let object = Labels {
        width: w as u32,
        height: h as u32,
        data: comps
            .data
            .iter()
            .map(|&l| (l == best.1 && l != 0) as u32)
            .collect(),
        count: 1,
    };
    let sh = &shape_features(&object)[0];
    let it = &intensity_features(&object, img)[0];
    let tx = haralick_features(&object, img, 2, 16)[0];
    let mut v = vec![
        sh.area,
        sh.perimeter,
        sh.eccentricity,
        sh.major_axis_length,
        sh.minor_axis_length,
        sh.solidity,
        sh.extent,
        sh.form_factor,
        sh.max_feret_diameter,
        sh.min_feret_diameter,
    ];
    v.extend(sh.zernike.iter().copied());
    v.extend([
        it.mean,
        it.std,
        it.min,
        it.max,
        it.median,
        it.lower_quartile,
        it.upper_quartile,
        it.mad,
        it.mean_edge,
        it.integrated,
    ]);
    v.extend(tx);
    let scale = img.max_value() as f64;
    let n = img.data.len() as f64;
    let mean = img.data.iter().map(|&p| p as f64).sum::<f64>() / n / scale;
    let var = img
        .data
        .iter()
        .map(|&p| (p as f64 / scale - mean).powi(2))
        .sum::<f64>()
        / n;
    v.extend([mean, var.sqrt()]);
    v.into_iter()
        .map(|x| if x.is_finite() { x as f32 } else { 0.0 })
        .collect()
}
