// A hand-made report with every section the new upstream files feed (well readout,
// dose–response, readout Z′, label QC, SHAP, explanations beside tiles, Z′ per feature,
// a metric without an interval, QC maps as a grid), shared by the unit tests
// (`src/tests.rs`) and the screenshot test (`tests/screenshot.rs`) through `include!`.
// Expects `plateflow_report`'s types in scope.

/// A `width` × `height` RGB PNG of a bright disc on dark ground (a "cell").
pub fn cell_png(width: u32, height: u32, hue: u8) -> Vec<u8> {
    let mut pixels = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let (dx, dy) = (
                x as f64 - width as f64 / 2.0,
                y as f64 - height as f64 / 2.0,
            );
            let inside = dx * dx + dy * dy < (width as f64 / 3.0).powi(2);
            pixels.extend(if inside {
                [220, hue, 220]
            } else {
                [10, 10, 10]
            });
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

/// A QC heat map in the imaging crate's style (namespace declared, viewBox set).
fn qc_map(plate: &str, measure: &str, shade: usize) -> SvgFigure {
    let mut svg = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="300" height="200" viewBox="0 0 300 200">"#,
    );
    for i in 0..24 {
        svg.push_str(&format!(
            r##"<rect x="{}" y="{}" width="30" height="30" fill="#{:02x}7080"/>"##,
            20 + (i % 6) * 32,
            30 + (i / 6) * 32,
            (i * 9 + shade * 40) % 256
        ));
    }
    svg.push_str(&format!(
        r#"<text x="10" y="18">{plate}: {measure}</text></svg>"#
    ));
    SvgFigure {
        title: format!("{plate} {measure}"),
        svg,
        row: measure.into(),
        column: plate.into(),
    }
}

pub fn glance_fixture() -> Report {
    let classes: Vec<String> = vec!["normal".into(), "translocated".into()];
    let doses = [0.0, 0.01, 0.1, 1.0, 10.0, 100.0];
    // Two plates of 4 × 6 wells; columns are doses, rows A–B negative controls at dose 0 in
    // column 1, the response rises with dose (EC50 ≈ 1).
    let mut wells = Vec::new();
    for plate in ["P4", "P5"] {
        for r in 0..4 {
            for (c, &dose) in doses.iter().enumerate() {
                let y = if dose == 0.0 {
                    0.05
                } else {
                    0.05 + 0.85 / (1.0 + (1.0f64 / dose).powf(1.2))
                };
                let y = (y + 0.01 * r as f64).min(1.0);
                wells.push(WellReadout {
                    plate: plate.into(),
                    well: format!("{}{:02}", (b'A' + r as u8) as char, c + 1),
                    label: if y > 0.5 { "translocated" } else { "normal" }.into(),
                    dose: Some(dose),
                    control: match (c, r) {
                        (0, _) => "negative".into(),
                        (5, _) => "positive".into(),
                        _ => String::new(),
                    },
                    cells: 40 + r * 3 + c,
                    fractions: vec![
                        Fraction {
                            value: 1.0 - y,
                            ci95: Some(((0.92 - y).max(0.0), (1.08 - y).min(1.0))),
                        },
                        Fraction {
                            value: y,
                            ci95: Some(((y - 0.08).max(0.0), (y + 0.08).min(1.0))),
                        },
                    ],
                });
            }
        }
    }
    let points: Vec<DosePoint> = wells
        .iter()
        .filter(|w| w.plate == "P4" && w.dose.unwrap_or(0.0) > 0.0)
        .map(|w| DosePoint {
            well: w.well.clone(),
            dose: w.dose.unwrap(),
            value: w.fractions[1].value,
            ci95: w.fractions[1].ci95,
        })
        .collect();
    let readout = Readout {
        name: "holdout".into(),
        classes: classes.clone(),
        wells,
        treatments: vec![TreatmentReadout {
            treatment: "drug".into(),
            dose: "3".into(),
            wells: 4,
            cells: 160,
            fractions: vec![
                Fraction {
                    value: 0.2,
                    ci95: Some((0.1, 0.3)),
                },
                Fraction {
                    value: 0.8,
                    ci95: Some((0.7, 0.9)),
                },
            ],
            note: String::new(),
        }],
        dose_response: vec![
            DoseFit {
                readout: "fraction_translocated".into(),
                plate: "P4".into(),
                ec50: 1.02,
                ec50_ci95: Some((0.7, 1.5)),
                hill: 1.2,
                bottom: 0.05,
                top: 0.9,
                wells: 20,
                doses: 5,
                status: "fitted".into(),
                points,
            },
            DoseFit {
                readout: "fraction_translocated".into(),
                plate: "P5".into(),
                ec50: f64::NAN,
                status: "fewer than 4 doses".into(),
                ..DoseFit::default()
            },
        ],
        zprime: vec![ReadoutZprime {
            readout: "fraction_translocated".into(),
            plate: "P4".into(),
            z_prime: 0.62,
            positive_wells: 8,
            negative_wells: 8,
            mean_positive: 0.83,
            mean_negative: 0.06,
            note: String::new(),
        }],
    };
    let metric = |name: &str, v: f64, ci: Option<(f64, f64)>, why: &str| Metric {
        name: name.into(),
        value: v,
        ci95: ci,
        no_interval: why.into(),
        note: String::new(),
    };
    let tile_row = |label: &str, n: usize, hue: u8| TileRow {
        label: label.into(),
        tiles: (0..n)
            .map(|i| Tile {
                png: cell_png(48, 48, hue),
                caption: vec![
                    format!("P4 · B{:02}", i + 1),
                    format!("translocated {:.2}", 0.99 - 0.1 * i as f64),
                ],
                features: if i == 0 {
                    vec![
                        ("Cytoplasm_Intensity_MeanIntensity_GFP".into(), 1.25),
                        ("Nuclei_AreaShape_Area".into(), -0.31),
                    ]
                } else {
                    Vec::new()
                },
            })
            .collect(),
    };
    Report {
        title: "plateflow demo".into(),
        subtitle: "step `report`, plateflow 0.1.0".into(),
        qc: Some(QcSummary {
            images: 96,
            excluded: Vec::new(),
            heatmaps: ["P4", "P5"]
                .iter()
                .flat_map(|p| {
                    ["FocusScore DNA", "PowerLogLogSlope DNA", "MeanIntensity GFP"]
                        .iter()
                        .enumerate()
                        .map(move |(k, m)| qc_map(p, m, k))
                })
                .collect(),
            ..QcSummary::default()
        }),
        zprime: vec![ZprimeTable {
            task: "features[plate=P4]".into(),
            columns: ["feature", "z_prime", "mean_positive", "mean_negative"]
                .map(String::from)
                .to_vec(),
            rows: (0..14)
                .map(|i| {
                    vec![
                        format!("Feature_{i}"),
                        if i % 5 == 4 {
                            String::new()
                        } else {
                            format!("{:.3}", 0.9 - 0.05 * i as f64)
                        },
                        "0.3".into(),
                        "0.1".into(),
                    ]
                })
                .collect(),
        }],
        models: vec![
            ModelSection {
                name: "model".into(),
                what: "leave-plate-out cross-validation".into(),
                model: "logistic".into(),
                classes: classes.clone(),
                control_f1: Some(0.81),
                metrics: vec![
                    metric("weighted F1", 0.86, Some((0.78, 0.93)), ""),
                    metric("macro F1", 0.85, Some((0.77, 0.92)), ""),
                ],
                coefficients: (0..214)
                    .map(|i| Coefficient {
                        feature: format!("Feature_{i}"),
                        family: ["intensity", "shape"][i % 2].into(),
                        channel: "GFP".into(),
                        importance: 1.0 / (1.0 + i as f64),
                    })
                    .collect(),
                shap: ["normal", "translocated"]
                    .iter()
                    .flat_map(|c| {
                        (1..=12).map(move |r| ShapFeature {
                            class: c.to_string(),
                            feature: format!("{c}_feature_{r}"),
                            mean_abs_shap: 1.0 / r as f64,
                            rank: r,
                        })
                    })
                    .collect(),
                ..ModelSection::default()
            },
            ModelSection {
                name: "holdout".into(),
                what: "evaluation on plates P4 not used in training".into(),
                model: "logistic".into(),
                held_out: true,
                classes: classes.clone(),
                control_f1: Some(0.52),
                metrics: vec![
                    metric("weighted F1", 0.901, None, "fewer than 3 plates"),
                    metric("macro F1", 0.897, None, "fewer than 3 plates"),
                ],
                per_group: vec![GroupScore {
                    group: "P4".into(),
                    cells: 783,
                    weighted_f1: 0.901,
                    accuracy: 0.9,
                    ci95: None,
                }],
                reliability: vec![
                    Reliability {
                        label: "before temperature scaling".into(),
                        ece: 0.081,
                        bins: Vec::new(),
                    },
                    Reliability {
                        label: "after temperature scaling (T = 1.37)".into(),
                        ece: 0.019,
                        bins: Vec::new(),
                    },
                ],
                tiles: vec![TileFigure {
                    title: "Most and least confident: translocated".into(),
                    caption: "Cells called translocated.".into(),
                    columns: Vec::new(),
                    rows: vec![
                        tile_row("most confident", 6, 230),
                        tile_row("least confident", 6, 90),
                    ],
                }],
                ..ModelSection::default()
            },
        ],
        readouts: vec![readout],
        label_qc: vec![
            LabelQcWell {
                source: "model".into(),
                plate: "P2".into(),
                well: "C04".into(),
                label: "normal".into(),
                cells: 41,
                agreeing: 3,
                expected_agreeing: 37.5,
                predicted_mostly: "translocated".into(),
                p_value: 1e-9,
                flagged: true,
            },
            LabelQcWell {
                source: "model".into(),
                plate: "P1".into(),
                well: "A01".into(),
                label: "normal".into(),
                cells: 40,
                agreeing: 38,
                expected_agreeing: 36.6,
                predicted_mostly: "normal".into(),
                p_value: 0.7,
                flagged: false,
            },
        ],
        notes: vec!["Intervals are 95 % bootstrap intervals over plates.".into()],
        ..Report::default()
    }
}
