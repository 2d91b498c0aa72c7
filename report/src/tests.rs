use crate::page::{fmt_ci, fmt_value};
use crate::*;

const HOSTILE: &str = "<script>alert(1)</script>";
const ATTR_BREAK: &str = "x\" onerror=\"alert(1)";

/// A heat map as `plateflow_imaging::heatmap` writes it: with the SVG namespace declared.
fn heatmap(title: &str) -> SvgFigure {
    SvgFigure {
        title: title.into(),
        svg: r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60" viewBox="0 0 120 60"><title>map</title><rect x="0" y="0" width="60" height="60" fill="#440154"/><rect x="60" y="0" width="60" height="60" fill="#fde725"/></svg>"##.into(),
        ..SvgFigure::default()
    }
}

fn sample() -> Report {
    let classes: Vec<String> = ["interphase", "mitosis", HOSTILE]
        .map(String::from)
        .to_vec();
    Report {
        segmentation: None,
        title: format!("Run {HOSTILE}"),
        subtitle: "demo.yaml · 2025-01-01 · plateflow 0.1.0".into(),
        qc: Some(QcSummary {
            images: 144,
            excluded: vec![
                Exclusion {
                    image_set: "P1/A01_s1".into(),
                    reason: "blurred".into(),
                },
                Exclusion {
                    image_set: ATTR_BREAK.into(),
                    reason: HOSTILE.into(),
                },
            ],
            heatmaps: vec![heatmap("cell count"), heatmap(HOSTILE)],
            ..QcSummary::default()
        }),
        models: vec![ModelSection {
            name: "model".into(),
            what: "leave-plate-out cross-validation".into(),
            model: "cnn".into(),
            leaky: false,
            classes,
            metrics: vec![
                Metric {
                    name: "weighted F1".into(),
                    value: 0.81234,
                    ci95: Some((0.79, 0.835)),
                    note: HOSTILE.into(),
                    ..Metric::default()
                },
                Metric {
                    name: "accuracy".into(),
                    value: 0.8,
                    ci95: None,
                    note: String::new(),
                    ..Metric::default()
                },
            ],
            confusion: vec![vec![50, 3, 1], vec![4, 30, 2], vec![0, 1, 9]],
            per_group: ["P1", "P2", HOSTILE]
                .iter()
                .enumerate()
                .map(|(i, g)| GroupScore {
                    group: g.to_string(),
                    cells: 100 + i,
                    weighted_f1: 0.7 + 0.05 * i as f64,
                    accuracy: 0.72 + 0.05 * i as f64,
                    ci95: Some((0.65 + 0.05 * i as f64, 0.78 + 0.05 * i as f64)),
                })
                .collect(),
            data_notes: vec![
                "ADCCM: 57 of its 97 cells are on plate 0090".into(),
                HOSTILE.into(),
            ],
            curves: (0..2)
                .map(|k| Curve {
                    label: format!("fold {k} {HOSTILE}"),
                    train_loss: (0..12).map(|e| 1.0 / (1.0 + e as f64)).collect(),
                    val_loss: (0..12)
                        .map(|e| 1.2 / (1.0 + e as f64) + 0.01 * e as f64)
                        .collect(),
                    val_f1: (0..12).map(|e| 0.5 + 0.03 * e as f64).collect(),
                    best_epoch: Some(8),
                })
                .collect(),
            reliability: vec![Reliability {
                label: HOSTILE.into(),
                ece: 0.042,
                bins: vec![
                    ReliabilityBin {
                        lo: 0.5,
                        hi: 0.6,
                        confidence: 0.55,
                        accuracy: 0.5,
                        count: 10,
                    },
                    ReliabilityBin {
                        lo: 0.9,
                        hi: 1.0,
                        confidence: 0.95,
                        accuracy: 0.9,
                        count: 80,
                    },
                ],
            }],
            coefficients: (0..30)
                .map(|i| Coefficient {
                    feature: format!("feature {i} {HOSTILE}"),
                    family: ["intensity", "shape", HOSTILE][i % 3].into(),
                    channel: "GFP".into(),
                    importance: if i % 2 == 0 { 1.0 } else { -1.0 } * i as f64 / 10.0,
                })
                .collect(),
            figures: vec![PngFigure {
                title: ATTR_BREAK.into(),
                caption: HOSTILE.into(),
                png: vec![0x89, b'P', b'N', b'G'],
            }],
            ..ModelSection::default()
        }],
        notes: vec![HOSTILE.into()],
        ..Report::default()
    }
}

/// Every opening tag of these names has its closing tag.
fn assert_balanced(html: &str) {
    let tags = [
        "html",
        "head",
        "body",
        "header",
        "nav",
        "main",
        "footer",
        "section",
        "figure",
        "figcaption",
        "table",
        "tr",
        "td",
        "th",
        "details",
        "summary",
        "ul",
        "ol",
        "li",
        "svg",
        "g",
        "text",
        "p",
        "div",
        "script",
        "style",
        "code",
        "strong",
    ];
    for tag in tags {
        let open = html
            .match_indices(&format!("<{tag}"))
            .filter(|(i, m)| matches!(html.as_bytes().get(i + m.len()), Some(b' ' | b'>')))
            .count();
        let close = html.matches(&format!("</{tag}>")).count();
        assert_eq!(
            open, close,
            "<{tag}> opened {open} times, closed {close} times"
        );
    }
}

#[test]
fn user_strings_are_escaped() {
    let html = render(&sample());
    assert!(!html.contains(HOSTILE), "a raw <script> from the data");
    assert!(!html.contains(ATTR_BREAK), "a raw quote from the data");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(
        html.matches("<script").count(),
        2,
        "only the page's own two scripts"
    );
    assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
}

#[test]
fn numbers_are_formatted() {
    assert_eq!(fmt_ci(0.81234, Some((0.79, 0.835))), "0.812 [0.790, 0.835]");
    assert_eq!(fmt_ci(1.0, None), "1.000");
    assert_eq!(fmt_value(f64::NAN), "n/a");
    assert_eq!(fmt_value(0.0), "0.000");
    assert_eq!(fmt_value(1.5e-5), "1.500e-5");
    let html = render(&sample());
    assert!(html.contains("<td class=\"num\">0.812 [0.790, 0.835]</td>"));
    assert!(html.contains("<td class=\"num\">0.800</td>"));
    assert!(html.contains("<li>ADCCM: 57 of its 97 cells are on plate 0090</li>"));
}

#[test]
fn an_empty_report_is_a_valid_page() {
    let html = render(&Report::default());
    assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(html.trim_end().ends_with("</html>"));
    assert!(html.contains("<title>plateflow report</title>"));
    assert!(html.contains("Nothing to report"));
    assert!(!html.contains("<svg"));
    assert_balanced(&html);
    // A section with nothing in it says so.
    let html = render(&Report {
        models: vec![ModelSection::default()],
        ..Report::default()
    });
    assert!(html.contains("No results were recorded"));
    assert_balanced(&html);
}

#[test]
fn every_chart_appears_when_given_data() {
    let html = render(&sample());
    assert_balanced(&html);
    for (chart, n) in [
        ("confusion", 1),
        ("group-scores", 1),
        ("learning-curve", 2),
        ("reliability", 1),
        ("coefficients", 1),
    ] {
        let found = html.matches(&format!("data-chart=\"{chart}\"")).count();
        assert_eq!(found, n, "{chart}");
    }
    assert_eq!(
        html.matches("<svg class=\"chart\"").count(),
        8,
        "6 charts + 2 heat maps"
    );
    assert_eq!(
        html.matches("<img src=\"data:image/png;base64,iVBORw==\"")
            .count(),
        1
    );
    assert_eq!(
        html.matches("<figcaption>").count(),
        8,
        "one caption per figure"
    );
    assert!(html.contains("Figure 8."));
    // The ranked coefficients: 20 bars of 30.
    let coefs = &html[html.find("data-chart=\"coefficients\"").unwrap()..];
    let coefs = &coefs[..coefs.find("</svg>").unwrap()];
    assert_eq!(
        coefs.matches("<rect").count(),
        20 + 3,
        "20 bars, 3 legend boxes"
    );
    assert!(coefs.contains("feature 29"), "largest |importance| first");
    assert!(
        !coefs.contains("feature 9 "),
        "the 10th smallest is left out"
    );
    // The overall weighted F1 is drawn on the per-group chart.
    assert!(html.contains("overall 0.812"));
    assert!(html.contains("kept: epoch 9"));
    assert!(html.contains("ECE 0.042"));
}

#[test]
fn the_page_needs_no_network() {
    let html = render(&sample());
    assert!(!html.contains("http://") && !html.contains("https://"));
    for (i, _) in html.match_indices("src=\"") {
        assert!(html[i + 5..].starts_with("data:"), "an external source");
    }
    assert!(!html.contains("@import") && !html.contains("url("));
}

#[test]
fn random_splits_get_a_warning() {
    let mut report = sample();
    assert!(!render(&report).contains("class=\"warning\""));
    report.models[0].leaky = true;
    let html = render(&report);
    assert!(html.contains("<div class=\"warning\" role=\"alert\"><strong>⚠ Leaky evaluation"));
    assert!(html.contains("cross-validation (⚠ leaky split)</a>"));
}

/// A screen of many plates shows the QC maps of the plates with the most exclusions, says
/// how many it left out and where they are, and stays a reasonable size.
#[test]
fn many_plates_show_the_worst_plates_maps() {
    let plates: Vec<String> = (1..=30).map(|i| format!("P{i}")).collect();
    let mut heatmaps = Vec::new();
    for p in &plates {
        for measure in ["focus DNA", "intensity DNA"] {
            heatmaps.push(SvgFigure {
                row: measure.into(),
                column: p.clone(),
                ..heatmap(&format!("{p} {measure}"))
            });
        }
    }
    let report = Report {
        qc: Some(QcSummary {
            images: 30 * 96,
            heatmaps,
            excluded_per_plate: [("P17".to_string(), 5), ("P29".to_string(), 2)].into(),
            ..QcSummary::default()
        }),
        ..Report::default()
    };
    let html = render(&report);
    assert!(html.contains("on the 12 plates (of 30) with the most excluded image sets (24 maps)"));
    for shown in ["P17", "P29", "P1", "P10"] {
        assert!(html.contains(&format!("<th>{shown}</th>")), "{shown}");
    }
    assert!(!html.contains("<th>P30</th>"));
}

#[test]
fn unsafe_svg_is_left_out() {
    let bad = [
        "<svg><script>alert(1)</script></svg>",
        "<svg onload=\"alert(1)\"><rect/></svg>",
        "<svg><image href=\"https://example.org/x.png\"/></svg>",
        "<svg><foreignObject><p>x</p></foreignObject></svg>",
        "<div>not svg</div>",
        // Ways around a filter that looks for ` on…=` and `javascript:` as written.
        "<svg><rect/onclick=alert(1) width=\"1\"/></svg>",
        "<svg><rect x=\"1\"onclick=\"alert(1)\"/></svg>",
        "<svg><a href=\"&#106;avascript:alert(1)\"><rect/></a></svg>",
        "<svg><use href=\"//evil.example/x.svg#a\"/></svg>",
        "<svg><img src=\"x\"/></svg>",
        "<svg><style>rect { fill: url(//evil.example/p) }</style><rect/></svg>",
    ];
    for svg in bad {
        let report = Report {
            qc: Some(QcSummary {
                heatmaps: vec![SvgFigure {
                    title: "map".into(),
                    svg: svg.into(),
                    ..SvgFigure::default()
                }],
                ..QcSummary::default()
            }),
            ..Report::default()
        };
        let html = render(&report);
        assert!(html.contains("left out"), "{svg}");
        assert!(!html.contains(svg), "{svg}");
    }
    // A prolog and an existing class are fine.
    let ok = "<?xml version=\"1.0\"?>\n<svg class=\"map\" width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\"/></svg>";
    let report = Report {
        qc: Some(QcSummary {
            heatmaps: vec![SvgFigure {
                title: "map".into(),
                svg: ok.into(),
                ..SvgFigure::default()
            }],
            ..QcSummary::default()
        }),
        ..Report::default()
    };
    assert!(render(&report).contains("<svg class=\"chart map\" width=\"10\""));
}

#[test]
fn reports_round_trip_through_json() {
    let report = sample();
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"png\":\"iVBORw==\""), "PNG bytes as base64");
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(
        back.models[0].figures[0].png,
        report.models[0].figures[0].png
    );
    assert_eq!(render(&back), render(&report));
    // Missing fields take their defaults.
    let partial: Report =
        serde_json::from_str(r#"{"title": "t", "models": [{"name": "m"}]}"#).unwrap();
    assert_eq!(partial.models[0].name, "m");
}

#[test]
fn small_images_are_enlarged() {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend(32u32.to_be_bytes());
    png.extend(16u32.to_be_bytes());
    let report = Report {
        models: vec![ModelSection {
            figures: vec![PngFigure {
                png,
                ..PngFigure::default()
            }],
            ..ModelSection::default()
        }],
        ..Report::default()
    };
    assert!(render(&report).contains("class=\"zoomed\" width=\"256\" height=\"128\">"));
}

mod glance_fixture {
    use crate::*;
    include!("../tests/common/glance.rs");
}
use glance_fixture::glance_fixture;

/// The text between `from` and the next `to` after it.
fn between<'a>(html: &'a str, from: &str, to: &str) -> &'a str {
    let start = html.find(from).unwrap_or_else(|| panic!("no {from}"));
    let rest = &html[start..];
    &rest[..rest.find(to).unwrap_or(rest.len())]
}

#[test]
fn the_summary_comes_first_with_scores_warnings_and_the_readout() {
    let html = render(&glance_fixture());
    assert_balanced(&html);
    let summary = html
        .find("<section id=\"summary\"")
        .expect("a summary block");
    for later in ["<nav>", "<section id=\"qc\">", "<section id=\"model-"] {
        assert!(summary < html.find(later).unwrap(), "summary after {later}");
    }
    let block = between(&html, "<section id=\"summary\"", "</section>");
    // Held-out scores only (the cross-validation is in its own section), with the reason
    // there is no interval and never a zero-width one.
    assert!(block.contains("Held-out scores"));
    assert!(block.contains(
        "<strong>0.901 <span class=\"nointerval\">(no interval: fewer than 3 plates)</span></strong>"
    ));
    assert!(!html.contains("0.901 [0.901, 0.901]"));
    // Warnings: the CV model's interval reaches its control, the held-out score has no
    // interval, a label looks wrong, a dose response was not fitted.
    for w in [
        "model: the 95% interval of weighted F1 (0.860 [0.780, 0.930]) reaches its shuffled-label control (0.810)",
        "holdout: weighted F1 0.901 has no interval (fewer than 3 plates)",
        "Label QC: 1 well whose label looks wrong: P2 C04 (labelled normal, mostly called translocated)",
        "no dose–response fit for fraction_translocated on P5: fewer than 4 doses",
    ] {
        assert!(block.contains(w), "summary lacks the warning {w}:\n{block}");
    }
    // The per-well readout: one map per plate of the non-first class, wells coloured.
    assert_eq!(block.matches("data-chart=\"well-map\"").count(), 2);
    assert!(block.contains("P4: fraction translocated"));
    assert_eq!(
        between(block, "data-chart=\"well-map\"", "</svg>")
            .matches("class=\"well\"")
            .count(),
        24
    );
    assert!(block.contains("EC50 1.020 [0.700, 1.500]"));
}

#[test]
fn a_model_that_does_not_beat_its_control_is_called_out() {
    let mut r = glance_fixture();
    r.models[0].control_f1 = Some(0.9);
    let html = render(&r);
    assert!(
        html.contains("model: weighted F1 0.860 does not beat its shuffled-label control (0.900)")
    );
    // No warnings at all: said plainly.
    let mut r = glance_fixture();
    r.models[0].control_f1 = Some(0.5);
    r.models[1].metrics[0].ci95 = Some((0.85, 0.95));
    r.label_qc.retain(|w| !w.flagged);
    r.readouts[0].dose_response.truncate(1);
    let html = render(&r);
    assert!(
        html.contains("<li class=\"ok\">None"),
        "{}",
        between(&html, "<section id=\"summary\"", "</section>")
    );
}

#[test]
fn the_readout_section_maps_tables_and_fits() {
    let html = render(&glance_fixture());
    let sec = between(&html, "<section id=\"readout-1\">", "</section>");
    // Maps of the non-first class on both plates, a table of all 48 wells.
    assert!(sec.contains("Predicted fraction of translocated per well"));
    assert!(!sec.contains("Predicted fraction of normal per well"));
    assert_eq!(sec.matches("data-chart=\"well-map\"").count(), 2);
    assert!(sec.contains("<summary>All 48 wells</summary>"));
    assert!(sec.contains("<th>fraction translocated [95% CI]</th>"));
    // Per treatment and dose, with intervals over wells.
    assert!(sec.contains("<h3>Per treatment and dose</h3>"));
    assert!(sec.contains("<th>mean fraction translocated [95% CI]</th>"));
    assert!(sec.contains("0.800 [0.700, 0.900]"), "{sec}");
    // The dose response: one chart (the unfitted plate has no points), a whisker per well
    // with a dose above zero, the fitted curve and the EC50 with its band.
    assert_eq!(sec.matches("data-chart=\"dose-response\"").count(), 1);
    let chart = between(sec, "data-chart=\"dose-response\"", "</svg>");
    assert_eq!(chart.matches("class=\"whisker\"").count(), 20);
    assert!(chart.contains("EC50 95% interval"));
    assert!(chart.contains("dose (log scale)"));
    assert!(
        chart.contains(">0.01<") && chart.contains(">100<"),
        "log ticks"
    );
    assert!(sec.contains("<td>fewer than 4 doses</td>"));
    assert!(sec.contains("1.020 [0.700, 1.500]"));
    // Readout Z′.
    assert!(sec.contains("<strong>0.620</strong>"));
    // The 4PL formula itself.
    let f = &glance_fixture().readouts[0].dose_response[0];
    assert!((f.at(f.ec50) - (f.bottom + f.top) / 2.0).abs() < 1e-12);
}

#[test]
fn sections_for_new_files_appear_only_with_data() {
    let html = render(&sample());
    for absent in [
        "id=\"summary\"",
        "id=\"readout-",
        "id=\"label-qc\"",
        "id=\"zprime\"",
        "mean |SHAP|",
        "data-chart=\"well-map\"",
        "data-chart=\"dose-response\"",
    ] {
        // The old sample has a CV model with a weighted F1: a summary, but nothing else new.
        if absent == "id=\"summary\"" {
            continue;
        }
        assert!(!html.contains(absent), "{absent} without its file");
    }
    assert!(!render(&Report::default()).contains("id=\"summary\""));
}

#[test]
fn zprime_tables_count_features_and_put_degenerate_ones_last() {
    let html = render(&glance_fixture());
    let sec = between(&html, "<section id=\"zprime\">", "</section>");
    assert!(sec.contains("features[plate=P4]: 14 features, 12 with a Z′, 2 degenerate"));
    assert!(sec.contains("… 2 more features with a Z′"));
    let last_good = sec
        .find("Feature_11")
        .unwrap_or(0)
        .max(sec.find("Feature_0<").unwrap());
    let first_bad = sec.find("<tr class=\"degenerate\">").unwrap();
    assert!(first_bad > last_good, "degenerate rows last");
    assert_eq!(sec.matches("<tr class=\"degenerate\">").count(), 2);
    assert!(sec.contains("degenerate: no spread, or no difference between the controls"));
}

#[test]
fn label_qc_lists_flagged_wells_first() {
    let html = render(&glance_fixture());
    let sec = between(&html, "<section id=\"label-qc\">", "</section>");
    assert!(sec.contains("1 of 2 wells flagged"));
    let flagged = sec.find("<tr class=\"flagged\">").unwrap();
    assert!(flagged < sec.find("<td>A01</td>").unwrap());
    assert!(sec.contains("<td>⚠ yes</td>"));
}

#[test]
fn shap_features_and_tile_captions_are_shown() {
    let html = render(&glance_fixture());
    assert!(html.contains("Features behind each class (mean |SHAP|)"));
    assert!(html.contains("<code>translocated_feature_1</code>"));
    assert!(
        !html.contains("translocated_feature_11"),
        "top 10 per class"
    );
    // 12 tiles, each enlarged to at least 120 px by a whole factor, with its caption; the
    // explained cell lists its features.
    assert_eq!(html.matches("<div class=\"tile\">").count(), 12);
    assert_eq!(html.matches("class=\"zoomed\"").count(), 12);
    assert!(html.contains("width=\"144\" height=\"144\""));
    assert!(html.contains("P4 · B01<br>translocated 0.99<br>"));
    assert!(html.contains("<li><code>…plasm_Intensity_MeanIntensity_GFP</code> +1.250</li>"));
    assert!(html.contains("<div class=\"tile-label\">least confident</div>"));
}

#[test]
fn every_qc_map_is_reachable() {
    let html = render(&glance_fixture());
    let grid = between(&html, "<div class=\"hm-grid\"", "</table>");
    // 3 measures × 2 plates: each a thumbnail that links to itself, opened full size by CSS.
    for n in 1..=6 {
        assert!(grid.contains(&format!("<div class=\"hm\" id=\"hm-{n}\">")));
        assert!(grid.contains(&format!("href=\"#hm-{n}\"")));
    }
    assert!(!grid.contains("id=\"hm-7\""));
    assert_eq!(grid.matches("<svg class=\"chart\"").count(), 6);
    assert!(grid.contains("<th>PowerLogLogSlope DNA</th>") && grid.contains("<th>P5</th>"));
    assert!(html.contains(".hm:target"));
}

#[test]
fn charts_tell_the_truth_about_their_contents() {
    let html = render(&glance_fixture());
    // The true number of features.
    assert!(html.contains("Top 20 of 214 features by |importance|"));
    // Reliability titles: the series and its ECE on separate lines, never cut mid-number.
    let rel = between(&html, "data-chart=\"reliability\"", "</svg>");
    assert!(rel.contains(">ECE 0.081</text>") && rel.contains(">ECE 0.019</text>"));
    assert!(!rel.contains("— ECE"));
    // No per-plate interval: no whiskers promised.
    let groups = between(&html, "data-chart=\"group-scores\"", "</svg>");
    assert!(groups.contains("weighted F1 (no per-group interval)"));
    assert!(!groups.contains("with 95% CI"));
    let old = render(&sample());
    assert!(
        between(&old, "data-chart=\"group-scores\"", "</svg>").contains("weighted F1 with 95% CI")
    );
}
