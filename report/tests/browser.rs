//! Renders a rich report, opens it in headless Chromium and reads back what the page's own
//! check found: every figure rendered (images decoded, charts drawn with a size) and no
//! script errors. Skipped, with a message, where no Chromium is on PATH.

use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plateflow_imaging::heatmap::plate_heatmap_svg;
use plateflow_report::*;

/// A `width` × `height` RGB gradient as PNG bytes.
fn gradient_png(width: u32, height: u32) -> Vec<u8> {
    let mut pixels = Vec::new();
    for y in 0..height {
        for x in 0..width {
            pixels.extend([(255 * x / width) as u8, (255 * y / height) as u8, 128]);
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&pixels).unwrap();
    w.finish().unwrap();
    out
}

fn heatmap(metric: &str, flagged: &[String]) -> SvgFigure {
    let values: Vec<(String, Option<f64>)> = (0..24)
        .map(|i| {
            let well = format!("{}{:02}", (b'A' + (i / 6) as u8) as char, i % 6 + 1);
            (well, (i != 7).then_some(100.0 + (i * 37 % 11) as f64))
        })
        .collect();
    SvgFigure {
        title: format!("P1: {metric}"),
        svg: plate_heatmap_svg("P1", metric, &values, 8, 12, flagged),
        ..SvgFigure::default()
    }
}

fn cm(n: usize, seed: u64) -> Vec<Vec<u64>> {
    (0..n)
        .map(|r| {
            (0..n)
                .map(|c| {
                    if r == c {
                        40 + seed * 3
                    } else {
                        (r * 7 + c * 3) as u64 % 6
                    }
                })
                .collect()
        })
        .collect()
}

fn sample() -> Report {
    let classes: Vec<String> = ["interphase", "prometaphase / metaphase", "<apoptotic>"]
        .map(String::from)
        .to_vec();
    let groups = |plates: &[&str]| -> Vec<GroupScore> {
        plates
            .iter()
            .enumerate()
            .map(|(i, p)| GroupScore {
                group: p.to_string(),
                cells: 400 + 37 * i,
                weighted_f1: 0.78 + 0.03 * i as f64,
                accuracy: 0.8 + 0.02 * i as f64,
                ci95: Some((0.72 + 0.03 * i as f64, 0.84 + 0.03 * i as f64)),
            })
            .collect()
    };
    let metric = |name: &str, v: f64, ci: Option<(f64, f64)>| Metric {
        name: name.into(),
        value: v,
        ci95: ci,
        note: String::new(),
        ..Metric::default()
    };
    let bins = |shift: f64| -> Vec<ReliabilityBin> {
        (3..10)
            .map(|b| {
                let lo = b as f64 / 10.0;
                ReliabilityBin {
                    lo,
                    hi: lo + 0.1,
                    confidence: lo + 0.05,
                    accuracy: (lo + 0.05 - shift).clamp(0.0, 1.0),
                    count: 10 * b * b,
                }
            })
            .collect()
    };
    Report {
        segmentation: Some(plateflow_report::SegmentationSection {
            plates: vec![plateflow_report::PlateSegmentation {
                task: "segment[plate=P1]".into(),
                method: "learned (shipped nuclei-unet)".into(),
                fields: 48,
                objects_per_field: [14.0, 16.0, 18.0],
                area: [150.0, 180.0, 200.0],
                touching_border_fraction: 0.08,
            }],
            ..Default::default()
        }),
        title: "plateflow run: demo".into(),
        subtitle: "demo.yaml · 2025-01-01 12:00 · plateflow 0.1.0".into(),
        qc: Some(QcSummary {
            images: 144,
            excluded: vec![
                Exclusion {
                    image_set: "P1/B03_s2".into(),
                    reason: "blurred (PowerLogLogSlope −2.9)".into(),
                },
                Exclusion {
                    image_set: "P2/C05_s1".into(),
                    reason: "saturated: 3.1% of pixels at 255".into(),
                },
            ],
            heatmaps: vec![
                heatmap("cells per field", &["B03".into()]),
                heatmap("mean DNA intensity", &[]),
            ],
            ..QcSummary::default()
        }),
        models: vec![
            ModelSection {
                name: "model".into(),
                what: "leave-plate-out cross-validation".into(),
                model: "cnn".into(),
                leaky: false,
                classes: classes.clone(),
                metrics: vec![
                    metric("weighted F1", 0.8123, Some((0.781, 0.842))),
                    metric("macro F1", 0.774, Some((0.73, 0.81))),
                    metric("shuffled-label weighted F1", 0.34, None),
                ],
                confusion: cm(3, 2),
                per_group: groups(&["P1", "P2", "P3"]),
                data_notes: vec!["ADCCM: 57 of its 97 cells are on plate P3".into()],
                curves: (0..3)
                    .map(|k| Curve {
                        label: format!("fold {} (test plate P{})", k + 1, k + 1),
                        train_loss: (0..20).map(|e| 1.1 * (-0.15 * e as f64).exp()).collect(),
                        val_loss: (0..20)
                            .map(|e| 1.2 * (-0.12 * e as f64).exp() + 0.004 * e as f64)
                            .collect(),
                        val_f1: (0..20)
                            .map(|e| 0.4 + 0.4 * (1.0 - (-0.2 * e as f64).exp()))
                            .collect(),
                        best_epoch: Some(12 + k),
                    })
                    .collect(),
                reliability: vec![
                    Reliability {
                        label: "before temperature scaling".into(),
                        ece: 0.081,
                        bins: bins(0.08),
                    },
                    Reliability {
                        label: "after (T = 1.37)".into(),
                        ece: 0.019,
                        bins: bins(0.01),
                    },
                ],
                coefficients: Vec::new(),
                figures: vec![
                    PngFigure {
                        title: "Saliency, interphase".into(),
                        caption: "Crops (DNA blue, GFP green) with the gradient saliency \
                                  overlaid; bright pixels moved the prediction most."
                            .into(),
                        png: gradient_png(32, 32),
                    },
                    PngFigure {
                        title: "Montage".into(),
                        caption: "Most confident cells per class, one row per class.".into(),
                        png: gradient_png(96, 32),
                    },
                ],
                ..ModelSection::default()
            },
            ModelSection {
                name: "holdout".into(),
                what: "evaluation on held-out plates P4, P5".into(),
                model: "logistic".into(),
                leaky: false,
                classes: classes.clone(),
                metrics: vec![metric("weighted F1", 0.701, Some((0.66, 0.74)))],
                confusion: cm(3, 0),
                per_group: groups(&["P4", "P5"]),
                coefficients: (0..25)
                    .map(|i| Coefficient {
                        feature: format!(
                            "{}_{}",
                            [
                                "Intensity_Mean",
                                "AreaShape_Eccentricity",
                                "Texture_Haralick_Contrast"
                            ][i % 3],
                            i
                        ),
                        family: ["intensity", "shape", "texture"][i % 3].into(),
                        channel: ["GFP", "", "DNA"][i % 3].into(),
                        importance: (i as f64 - 8.0) / 7.0,
                    })
                    .collect(),
                ..ModelSection::default()
            },
            ModelSection {
                name: "quick".into(),
                what: "random 80/20 cell split".into(),
                model: "cnn".into(),
                leaky: true,
                classes,
                metrics: vec![metric("weighted F1", 0.97, Some((0.96, 0.98)))],
                confusion: cm(3, 5),
                ..ModelSection::default()
            },
        ],
        notes: vec![
            "Plate P3 was imaged on another day: its per-plate score is the one to watch.".into(),
        ],
        ..Report::default()
    }
}

/// Figures the sample puts on the page: 2 heat maps; model: confusion, per-plate, 3 learning
/// curves, reliability, 2 PNGs; holdout: confusion, per-plate, coefficients; quick: confusion.
const FIGURES: usize = 2 + (1 + 1 + 3 + 1 + 2) + 3 + 1;

fn find_browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The value of `name="…"` on the `<body>` tag of `dom`.
fn body_attr<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let start = dom.find("<body")?;
    let body = &dom[start..start + dom[start..].find('>')?];
    let key = format!("{name}=\"");
    let from = body.find(&key)? + key.len();
    Some(&body[from..from + body[from..].find('"')?])
}

/// Kills the process group `pgid` (the browser and its helpers) if anything is left in it.
fn kill_group(pgid: u32) {
    // SAFETY: kill(2) with a negative pid signals only the process group we created for the
    // browser (process_group(0) below); no memory is touched.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

/// Headless Chromium's DOM of `page` after its load event and scripts.
fn dump_dom(browser: &Path, page: &Path, scratch: &Path) -> String {
    let out = scratch.join("dom.html");
    let err = scratch.join("stderr.txt");
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .process_group(0)
        .spawn()
        .expect("start Chromium");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            kill_group(child.id());
            let _ = child.wait();
            panic!(
                "Chromium did not finish in 60 s; stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    kill_group(child.id());
    let dom = fs::read_to_string(&out).unwrap();
    assert!(
        status.success() && dom.contains("<body"),
        "Chromium failed ({status}); stderr:\n{}",
        fs::read_to_string(&err).unwrap_or_default()
    );
    dom
}

#[test]
fn every_figure_renders_in_chromium() {
    let Some(browser) = find_browser() else {
        println!("skipped: no Chromium on PATH (apt-get install chromium)");
        return;
    };
    let html = render(&sample());
    let on_page = html.matches("<svg class=\"chart").count() + html.matches("<img ").count();
    assert_eq!(on_page, FIGURES, "figures written into the page");

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    fs::write(&page, &html).unwrap();
    let started = Instant::now();
    let dom = dump_dom(&browser, &page, dir.path());
    eprintln!("Chromium took {:.1} s", started.elapsed().as_secs_f64());

    let attr = |name| {
        body_attr(&dom, name)
            .unwrap_or_else(|| panic!("no {name} on <body>; the check did not run"))
    };
    assert_eq!(attr("data-js-errors"), "0", "script errors on the page");
    assert_eq!(attr("data-figures-total"), FIGURES.to_string());
    assert_eq!(
        attr("data-figures-ok"),
        FIGURES.to_string(),
        "figures that did not render"
    );
}
