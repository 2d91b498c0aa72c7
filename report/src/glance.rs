//! The sections that make the page read at a glance: the summary block at the top (held-out
//! scores, warnings, the per-well readout), the per-well readout with its dose–response fits,
//! label QC, Z′ per feature, SHAP features, tiles of single cells with their captions, and
//! the grid of every QC heat map.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::charts::{self, fmt3};
use crate::page::{embeddable_svg, fmt_ci, fmt_value, metric_value, png_size, Page};
use crate::{
    escape, LabelQcWell, Metric, ModelSection, Readout, Report, ShapFeature, SvgFigure, TileFigure,
    ZprimeTable,
};

/// The weighted-F1 metric of a section, if it has one.
fn weighted_f1(m: &ModelSection) -> Option<&Metric> {
    m.metrics
        .iter()
        .find(|x| x.name.to_lowercase().starts_with("weighted f1"))
}

/// Plates in order of first appearance.
fn plates_of(r: &Readout) -> Vec<&str> {
    let mut plates: Vec<&str> = Vec::new();
    for w in &r.wells {
        if !plates.contains(&w.plate.as_str()) {
            plates.push(&w.plate);
        }
    }
    plates
}

/// A well's tooltip: fraction with interval, label, dose, cells.
fn well_tip(w: &crate::WellReadout, k: usize) -> String {
    let f = w.fractions.get(k);
    let mut t = f.map_or("n/a".into(), |f| fmt_ci(f.value, f.ci95));
    if !w.label.is_empty() {
        let _ = write!(t, ", label {}", w.label);
    }
    if let Some(d) = w.dose {
        let _ = write!(t, ", dose {d}");
    }
    if !w.control.is_empty() {
        let _ = write!(t, ", control {}", w.control);
    }
    let _ = write!(t, ", {} cells", w.cells);
    t
}

/// The plate maps of class `k`'s predicted fraction, one per plate (at most `max_plates`).
fn class_maps(r: &Readout, k: usize, cell: f64, max_plates: usize) -> Vec<String> {
    let class = r.classes.get(k).map_or("class", String::as_str);
    plates_of(r)
        .into_iter()
        .take(max_plates)
        .map(|plate| {
            let wells: Vec<(String, f64, String)> = r
                .wells
                .iter()
                .filter(|w| w.plate == plate)
                .map(|w| {
                    (
                        w.well.clone(),
                        w.fractions.get(k).map_or(f64::NAN, |f| f.value),
                        well_tip(w, k),
                    )
                })
                .collect();
            charts::well_map(
                &format!("{plate}: fraction {class}"),
                &wells,
                cell,
                "fraction",
            )
        })
        .collect()
}

/// What a reader should worry about, in plain words, most serious first.
pub(crate) fn warnings(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for m in &report.models {
        if m.leaky {
            out.push(format!(
                "{}: cells were split at random (leaky): its scores overstate accuracy on new plates.",
                m.name
            ));
        }
        if let (Some(f1), Some(control)) = (weighted_f1(m), m.control_f1) {
            if control.is_finite() && f1.value.is_finite() {
                let what = if m.held_out {
                    "chance"
                } else {
                    "its shuffled-label control"
                };
                let reach = f1.ci95.map_or(f1.value, |(lo, _)| lo);
                if f1.value <= control {
                    out.push(format!(
                        "{}: weighted F1 {} does not beat {what} ({}): the model learnt nothing usable.",
                        m.name,
                        fmt3(f1.value),
                        fmt3(control)
                    ));
                } else if reach <= control {
                    out.push(format!(
                        "{}: the 95% interval of weighted F1 ({}) reaches {what} ({}): not clearly better than learning nothing.",
                        m.name,
                        fmt_ci(f1.value, f1.ci95),
                        fmt3(control)
                    ));
                }
            }
        }
        if let Some(f1) = weighted_f1(m) {
            if f1.ci95.is_none() && !f1.no_interval.is_empty() {
                out.push(format!(
                    "{}: weighted F1 {} has no interval ({}): it cannot tell a real difference from plate-to-plate noise.",
                    m.name,
                    fmt3(f1.value),
                    f1.no_interval
                ));
            }
        }
        if m.metrics.iter().any(|x| x.note.starts_with("HIGH")) {
            out.push(format!(
                "{}: the saliency maps fail the randomised-weights check; do not read them.",
                m.name
            ));
        }
    }
    let flagged: Vec<&LabelQcWell> = report.label_qc.iter().filter(|w| w.flagged).collect();
    if !flagged.is_empty() {
        let mut names: Vec<String> = flagged
            .iter()
            .take(5)
            .map(|w| {
                format!(
                    "{} {} (labelled {}, mostly called {})",
                    w.plate, w.well, w.label, w.predicted_mostly
                )
            })
            .collect();
        if flagged.len() > 5 {
            names.push(format!("and {} more", flagged.len() - 5));
        }
        out.push(format!(
            "Label QC: {} well{} whose label looks wrong: {}.",
            flagged.len(),
            if flagged.len() == 1 { "" } else { "s" },
            names.join("; ")
        ));
    }
    for r in &report.readouts {
        for z in &r.zprime {
            let perfectly_separated = z.note.starts_with("controls perfectly separated");
            if !z.z_prime.is_finite() && !perfectly_separated {
                out.push(format!(
                    "{}: readout {}{} has no Z′ ({}).",
                    r.name,
                    z.readout,
                    on_plate(&z.plate),
                    if z.note.is_empty() {
                        "no spread between the controls, or too few control wells"
                    } else {
                        z.note.as_str()
                    }
                ));
            } else if z.z_prime < 0.5 {
                out.push(format!(
                    "{}: readout {}{} has Z′ {} (below 0.5: the controls overlap, a marginal assay window).",
                    r.name,
                    z.readout,
                    on_plate(&z.plate),
                    fmt3(z.z_prime)
                ));
            }
        }
        for d in &r.dose_response {
            if !d.fitted() {
                out.push(format!(
                    "{}: no dose–response fit for {}{}: {}.",
                    r.name,
                    d.readout,
                    if d.plate.is_empty() {
                        String::new()
                    } else {
                        format!(" on {}", d.plate)
                    },
                    d.status
                ));
            }
        }
    }
    out
}

impl Page {
    /// The summary block: held-out scores, warnings and the per-well readout, before
    /// anything else. Written only when there is something to summarise.
    pub(crate) fn summary(&mut self, report: &Report) {
        let held: Vec<&ModelSection> = report.models.iter().filter(|m| m.held_out).collect();
        let (scored, heading) = if held.is_empty() {
            (
                report.models.iter().collect::<Vec<_>>(),
                "Cross-validation scores",
            )
        } else {
            (held, "Held-out scores")
        };
        let scored: Vec<&ModelSection> = scored
            .into_iter()
            .filter(|m| weighted_f1(m).is_some())
            .collect();
        let warnings = warnings(report);
        let readout = report
            .readouts
            .iter()
            .find(|r| !r.wells.is_empty() && r.classes.len() >= 2);
        if scored.is_empty() && warnings.is_empty() && readout.is_none() {
            return;
        }
        self.out.push_str(
            "<section id=\"summary\" aria-label=\"Summary\">\n<h2>At a glance</h2>\n<div class=\"glance\">\n<div>\n",
        );
        if !scored.is_empty() {
            let _ = writeln!(
                self.out,
                "<h3>{heading}</h3>\n<table>\n<tr><th>step</th><th>model</th><th>weighted F1 [95% CI]</th><th>macro F1</th><th>learning nothing</th></tr>"
            );
            for m in &scored {
                let f1 = weighted_f1(m).expect("filtered");
                let macro_f1 = m
                    .metrics
                    .iter()
                    .find(|x| x.name.to_lowercase().starts_with("macro f1"))
                    .map_or("–".into(), metric_value);
                let _ = writeln!(
                    self.out,
                    "<tr><td>{}</td><td>{}</td><td class=\"num\"><strong>{}</strong></td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    escape(&m.name),
                    escape(&m.model),
                    metric_value(f1),
                    macro_f1,
                    m.control_f1.map_or("–".into(), fmt3)
                );
            }
            self.out.push_str("</table>\n");
        }
        self.out
            .push_str("<h3>Warnings</h3>\n<ul class=\"warnings\">\n");
        if warnings.is_empty() {
            self.out.push_str(
                "<li class=\"ok\">None: every model beats learning nothing, intervals are there and no label looks wrong.</li>\n",
            );
        }
        for w in &warnings {
            let _ = writeln!(self.out, "<li>⚠ {}</li>", escape(w));
        }
        self.out.push_str("</ul>\n</div>\n");
        if let Some(r) = readout {
            let class = &r.classes[1];
            let _ = writeln!(
                self.out,
                "<div class=\"glance-map\">\n<h3>Per-well readout: {}</h3>",
                escape(&r.name)
            );
            for map in class_maps(r, 1, 16.0, 2) {
                self.out.push_str(&map);
                self.out.push('\n');
            }
            let fits: Vec<String> = r
                .dose_response
                .iter()
                .filter(|d| d.fitted())
                .take(3)
                .map(|d| {
                    format!(
                        "{}{}: EC50 {}",
                        d.readout,
                        if d.plate.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", d.plate)
                        },
                        fmt_ci(d.ec50, d.ec50_ci95)
                    )
                })
                .collect();
            let _ = writeln!(
                self.out,
                "<p class=\"meta\">Share of each well's cells called {}; <a href=\"#readout-1\">all wells and classes</a>.{}</p>\n</div>",
                escape(class),
                if fits.is_empty() {
                    String::new()
                } else {
                    format!(" {}", escape(&fits.join("; ")))
                }
            );
        }
        self.out.push_str("</div>\n</section>\n");
    }

    /// A readout: plate maps per non-first class, the wells' table, dose–response charts
    /// and their table, and the readout's Z′.
    pub(crate) fn readout(&mut self, id: &str, r: &Readout) {
        let _ = writeln!(
            self.out,
            "<section id=\"{id}\">\n<h2>Per-well readout: {}</h2>",
            escape(&r.name)
        );
        if !r.wells.is_empty() {
            for k in 1..r.classes.len() {
                let maps = class_maps(r, k, 22.0, usize::MAX);
                self.figure(
                    &format!("<div class=\"row\">{}</div>", maps.join("\n")),
                    &format!("Predicted fraction of {} per well", r.classes[k]),
                    "Each square is a well, coloured by the share of its cells the model calls \
                     this class (0 to 1, the same scale on every plate; grey: no cells); hover a \
                     well for its 95% interval over cells, label and dose.",
                );
            }
            let _ = writeln!(
                self.out,
                "<details{}>\n<summary>All {} wells</summary>\n<table>\n<tr><th>plate</th><th>well</th><th>label</th><th>dose</th><th>control</th><th>cells</th>{}</tr>",
                if r.wells.len() <= 24 { " open" } else { "" },
                r.wells.len(),
                r.classes
                    .iter()
                    .map(|c| format!("<th>fraction {} [95% CI]</th>", escape(c)))
                    .collect::<String>()
            );
            for w in &r.wells {
                let _ = write!(
                    self.out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>",
                    escape(&w.plate),
                    escape(&w.well),
                    escape(&w.label),
                    w.dose.map_or(String::new(), |d| format!("{d}")),
                    escape(&w.control),
                    w.cells
                );
                for k in 0..r.classes.len() {
                    let _ = write!(
                        self.out,
                        "<td class=\"num\">{}</td>",
                        w.fractions
                            .get(k)
                            .map_or("–".into(), |f| fmt_ci(f.value, f.ci95))
                    );
                }
                self.out.push_str("</tr>\n");
            }
            self.out.push_str("</table>\n</details>\n");
        }
        if !r.treatments.is_empty() {
            let _ = writeln!(
                self.out,
                "<h3>Per treatment and dose</h3>\n<p>The mean over a treatment's wells at each dose; the interval resamples wells (none from fewer than 3).</p>\n<table>\n<tr><th>treatment</th><th>dose</th><th>wells</th><th>cells</th>{}<th>note</th></tr>",
                r.classes
                    .iter()
                    .map(|c| format!("<th>mean fraction {} [95% CI]</th>", escape(c)))
                    .collect::<String>()
            );
            for t in &r.treatments {
                let _ = write!(
                    self.out,
                    "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                    escape(&t.treatment),
                    escape(&t.dose),
                    t.wells,
                    t.cells
                );
                for f in &t.fractions {
                    let _ = write!(
                        self.out,
                        "<td class=\"num\">{}</td>",
                        fmt_ci(f.value, f.ci95)
                    );
                }
                let _ = writeln!(self.out, "<td>{}</td></tr>", escape(&t.note));
            }
            self.out.push_str("</table>\n");
        }
        if !r.dose_response.is_empty() {
            let charts: Vec<String> = r
                .dose_response
                .iter()
                .filter(|d| !d.points.is_empty() || d.fitted())
                .map(|d| charts::dose_response(d, &d.readout))
                .collect();
            if !charts.is_empty() {
                self.figure(
                    &format!("<div class=\"row\">{}</div>", charts.join("\n")),
                    "Dose response",
                    "Each dot is a well at its dose (log scale), with its 95% interval where \
                     one is known; the line is the fitted four-parameter logistic curve, the \
                     dashed line the EC50 and the grey band its 95% interval.",
                );
            }
            self.out.push_str(
                "<table>\n<tr><th>readout</th><th>plate</th><th>EC50 [95% CI]</th><th>Hill slope</th><th>bottom</th><th>top</th><th>wells</th><th>doses</th><th>status</th></tr>\n",
            );
            for d in &r.dose_response {
                let _ = writeln!(
                    self.out,
                    "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                    escape(&d.readout),
                    escape(&d.plate),
                    if d.fitted() { fmt_ci(d.ec50, d.ec50_ci95) } else { "–".into() },
                    fmt_value(d.hill),
                    fmt_value(d.bottom),
                    fmt_value(d.top),
                    d.wells,
                    d.doses,
                    escape(&d.status)
                );
            }
            self.out.push_str("</table>\n");
        }
        if !r.zprime.is_empty() {
            self.out.push_str(
                "<h3>Z′ of the readout</h3>\n<p>Z′ = 1 − 3(σ₊ + σ₋)/|μ₊ − μ₋| between the positive and negative control wells of each plate: above 0.5 an excellent assay window, 0 to 0.5 marginal, below 0 the controls overlap.</p>\n<table>\n<tr><th>readout</th><th>plate</th><th>Z′</th><th>positive wells</th><th>negative wells</th><th>mean positive</th><th>mean negative</th><th>note</th></tr>\n",
            );
            for z in &r.zprime {
                let _ = writeln!(
                    self.out,
                    "<tr><td>{}</td><td>{}</td><td class=\"num\"><strong>{}</strong></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                    escape(&z.readout),
                    escape(&z.plate),
                    fmt_value(z.z_prime),
                    z.positive_wells,
                    z.negative_wells,
                    fmt_value(z.mean_positive),
                    fmt_value(z.mean_negative),
                    escape(&z.note)
                );
            }
            self.out.push_str("</table>\n");
        }
        self.out.push_str("</section>\n");
    }

    /// Label QC: flagged wells first, then the rest folded away.
    pub(crate) fn label_qc(&mut self, wells: &[LabelQcWell]) {
        let mut sorted: Vec<&LabelQcWell> = wells.iter().collect();
        sorted.sort_by(|a, b| {
            b.flagged
                .cmp(&a.flagged)
                .then(a.p_value.total_cmp(&b.p_value))
        });
        let flagged = sorted.iter().filter(|w| w.flagged).count();
        let _ = writeln!(
            self.out,
            "<section id=\"label-qc\">\n<h2>Label QC</h2>\n<p>Per well, how many cells the model (out of fold) calls the well's own label, against how many it would if the label were right; a small p-value flags a well whose label looks wrong. {flagged} of {} wells flagged.</p>",
            wells.len()
        );
        let head = "<tr><th>step</th><th>plate</th><th>well</th><th>label</th><th>cells</th><th>agreeing</th><th>expected agreeing</th><th>mostly called</th><th>p-value</th><th>flagged</th></tr>\n";
        let row = |w: &LabelQcWell| {
            format!(
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>\n",
                if w.flagged { " class=\"flagged\"" } else { "" },
                escape(&w.source),
                escape(&w.plate),
                escape(&w.well),
                escape(&w.label),
                w.cells,
                w.agreeing,
                w.expected_agreeing,
                escape(&w.predicted_mostly),
                fmt_value(w.p_value),
                if w.flagged { "⚠ yes" } else { "no" }
            )
        };
        if flagged > 0 {
            self.out.push_str("<table>\n");
            self.out.push_str(head);
            for w in sorted.iter().filter(|w| w.flagged) {
                self.out.push_str(&row(w));
            }
            self.out.push_str("</table>\n");
        }
        if flagged < sorted.len() {
            let _ = writeln!(
                self.out,
                "<details>\n<summary>The {} wells not flagged</summary>\n<table>",
                sorted.len() - flagged
            );
            self.out.push_str(head);
            for w in sorted.iter().filter(|w| !w.flagged) {
                self.out.push_str(&row(w));
            }
            self.out.push_str("</table>\n</details>\n");
        }
        self.out.push_str("</section>\n");
    }

    /// Z′ per feature: the best rows of each task's table, how many features there are, and
    /// the degenerate ones (no Z′) last with their note.
    pub(crate) fn zprime(&mut self, tables: &[ZprimeTable]) {
        self.out.push_str(
            "<section id=\"zprime\">\n<h2>Assay window: Z′ per feature</h2>\n<p>Z′ between the positive and negative control wells for every feature: above 0.5 the controls separate well. Features with no Z′ are degenerate (the controls do not differ, or do not vary) and are listed last.</p>\n",
        );
        for (i, t) in tables.iter().enumerate() {
            let zc = t.columns.iter().position(|c| c == "z_prime");
            let note_c = t.columns.iter().position(|c| c == "note");
            let degenerate = |r: &Vec<String>| {
                zc.and_then(|c| r.get(c))
                    .is_none_or(|v| v.trim().is_empty() || v.parse::<f64>().is_err())
            };
            let (good, bad): (Vec<&Vec<String>>, Vec<&Vec<String>>) =
                t.rows.iter().partition(|r| !degenerate(r));
            let shown: Vec<&String> = t.columns.iter().filter(|c| *c != "note").collect();
            let _ = writeln!(
                self.out,
                "<details{}>\n<summary>{}: {} features, {} with a Z′, {} degenerate</summary>\n<table>\n<tr>{}<th>note</th></tr>",
                if i == 0 { " open" } else { "" },
                escape(&t.task),
                t.rows.len(),
                good.len(),
                bad.len(),
                shown
                    .iter()
                    .map(|c| format!("<th>{}</th>", escape(c)))
                    .collect::<String>()
            );
            let cells = |r: &Vec<String>| -> String {
                t.columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| *c != "note")
                    .map(|(k, _)| {
                        let v = r.get(k).map_or("", String::as_str);
                        match v.parse::<f64>() {
                            Ok(x) if k > 0 => format!("<td class=\"num\">{}</td>", fmt_value(x)),
                            _ => format!("<td>{}</td>", escape(v)),
                        }
                    })
                    .collect()
            };
            const TOP: usize = 10;
            for r in good.iter().take(TOP) {
                let _ = writeln!(self.out, "<tr>{}<td></td></tr>", cells(r));
            }
            if good.len() > TOP {
                let _ = writeln!(
                    self.out,
                    "<tr><td colspan=\"{}\" class=\"meta\">… {} more features with a Z′</td></tr>",
                    shown.len() + 1,
                    good.len() - TOP
                );
            }
            for r in &bad {
                let note = note_c
                    .and_then(|c| r.get(c))
                    .filter(|n| !n.is_empty())
                    .map_or(
                        "degenerate: no spread, or no difference between the controls",
                        String::as_str,
                    );
                let _ = writeln!(
                    self.out,
                    "<tr class=\"degenerate\">{}<td>{}</td></tr>",
                    cells(r),
                    escape(note)
                );
            }
            self.out.push_str("</table>\n</details>\n");
        }
        self.out.push_str("</section>\n");
    }

    /// Top features per class by mean |SHAP|, side by side.
    pub(crate) fn shap(&mut self, shap: &[ShapFeature]) {
        let mut classes: Vec<&str> = Vec::new();
        for f in shap {
            if !classes.contains(&f.class.as_str()) {
                classes.push(&f.class);
            }
        }
        self.out.push_str(
            "<h3>Features behind each class (mean |SHAP|)</h3>\n<p>Per class, the features that move the linear model's score for it most, averaged over cells: check that they are biology and not focus, illumination or density.</p>\n<div class=\"cols\">\n",
        );
        for c in classes {
            let mut rows: Vec<&ShapFeature> = shap.iter().filter(|f| f.class == c).collect();
            rows.sort_by_key(|f| f.rank);
            let _ = writeln!(
                self.out,
                "<table>\n<tr><th colspan=\"3\">{}</th></tr>\n<tr><th>rank</th><th>feature</th><th>mean |SHAP|</th></tr>",
                escape(c)
            );
            for f in rows.iter().take(10) {
                let _ = writeln!(
                    self.out,
                    "<tr><td class=\"num\">{}</td><td><code>{}</code></td><td class=\"num\">{}</td></tr>",
                    f.rank,
                    escape(&f.feature),
                    fmt_value(f.mean_abs_shap)
                );
            }
            self.out.push_str("</table>\n");
        }
        self.out.push_str("</div>\n");
    }

    /// Single-cell tiles, each enlarged with crisp pixels and captioned.
    pub(crate) fn tiles(&mut self, t: &TileFigure) {
        let mut html = String::new();
        if !t.columns.is_empty() {
            // Column names over the tiles: as wide as a tile on the page, past the row labels.
            let tile_w = t
                .rows
                .iter()
                .flat_map(|r| &r.tiles)
                .find_map(|tile| png_size(&tile.png))
                .map_or(120, |(w, _)| w * 120u32.div_ceil(w.max(1)).clamp(1, 8));
            let labelled = t.rows.iter().any(|r| !r.label.is_empty());
            let _ = write!(
                html,
                "<div class=\"tile-head\" style=\"margin-left: {}px\">",
                if labelled { 140 } else { 0 }
            );
            for c in &t.columns {
                let _ = write!(
                    html,
                    "<span style=\"width: {}px\">{}</span>",
                    tile_w + 2,
                    escape(c)
                );
            }
            html.push_str("</div>\n");
        }
        for row in &t.rows {
            html.push_str("<div class=\"tile-row\">");
            if !row.label.is_empty() {
                let _ = write!(
                    html,
                    "<div class=\"tile-label\">{}</div>",
                    escape(&row.label)
                );
            }
            for tile in &row.tiles {
                // At least 120 px on the page, by whole multiples: pixels stay square.
                let size = match png_size(&tile.png) {
                    Some((w, h)) if w > 0 => {
                        let k = 120u32.div_ceil(w).clamp(1, 8);
                        format!(" width=\"{}\" height=\"{}\"", w * k, h * k)
                    }
                    _ => String::new(),
                };
                let alt = tile.caption.join(", ");
                let _ = write!(
                    html,
                    "<div class=\"tile\"><img class=\"zoomed\" src=\"data:image/png;base64,{}\" alt=\"{}\"{size}>",
                    STANDARD.encode(&tile.png),
                    escape(&alt)
                );
                for line in &tile.caption {
                    let _ = write!(html, "{}<br>", escape(line));
                }
                if !tile.features.is_empty() {
                    html.push_str("<ul class=\"why\">");
                    for (f, v) in &tile.features {
                        let _ = write!(
                            html,
                            "<li><code>{}</code> {}{}</li>",
                            escape(&charts_short(f)),
                            if *v >= 0.0 { "+" } else { "" },
                            fmt3(*v)
                        );
                    }
                    html.push_str("</ul>");
                }
                html.push_str("</div>");
            }
            html.push_str("</div>\n");
        }
        self.figure(&html, &t.title, &t.caption);
    }

    /// Every QC heat map, as a grid of thumbnails (a row per measure, a column per plate);
    /// a thumbnail opens full size over the page, and closes with its link. Past
    /// [`GRID_PLATES`] plates, only the plates with the most excluded image sets are shown
    /// (each map is inline SVG of ~50 kB: a screen of 100 plates made a page of ~100 MB).
    pub(crate) fn heatmap_grid(
        &mut self,
        maps: &[&SvgFigure],
        excluded_per_plate: &std::collections::BTreeMap<String, usize>,
    ) {
        let mut rows: Vec<&str> = Vec::new();
        let mut cols: Vec<&str> = Vec::new();
        for m in maps {
            if !rows.contains(&m.row.as_str()) {
                rows.push(&m.row);
            }
            if !cols.contains(&m.column.as_str()) {
                cols.push(&m.column);
            }
        }
        let all_plates = cols.len();
        if all_plates > GRID_PLATES {
            let excluded = |c: &str| excluded_per_plate.get(c).copied().unwrap_or(0);
            let mut ranked = cols.clone();
            // Most exclusions first; among equals, the order the plates came in.
            ranked.sort_by_key(|c| std::cmp::Reverse(excluded(c)));
            ranked.truncate(GRID_PLATES);
            cols.retain(|c| ranked.contains(c));
        }
        let maps: Vec<&SvgFigure> = maps
            .iter()
            .copied()
            .filter(|m| cols.contains(&m.column.as_str()))
            .collect();
        let mut html =
            String::from("<div class=\"hm-grid\" id=\"qc-maps\">\n<table>\n<tr><th></th>");
        for c in &cols {
            let _ = write!(html, "<th>{}</th>", escape(c));
        }
        html.push_str("</tr>\n");
        let mut n = 0;
        for r in &rows {
            let _ = write!(html, "<tr><th>{}</th>", escape(r));
            for c in &cols {
                html.push_str("<td>");
                if let Some(m) = maps.iter().find(|m| m.row == *r && m.column == *c) {
                    n += 1;
                    match embeddable_svg(&m.svg) {
                        Some(svg) => {
                            let _ = write!(
                                html,
                                "<div class=\"hm\" id=\"hm-{n}\"><a class=\"close\" href=\"#qc-maps\">✕ close {}</a><a class=\"open\" href=\"#hm-{n}\" title=\"{} (click to enlarge)\">{svg}</a></div>",
                                escape(&m.title),
                                escape(&m.title)
                            );
                        }
                        None => {
                            let _ = write!(
                                html,
                                "<span class=\"omitted\">“{}” left out: not plain SVG</span>",
                                escape(&m.title)
                            );
                        }
                    }
                }
                html.push_str("</td>");
            }
            html.push_str("</tr>\n");
        }
        html.push_str("</table>\n</div>");
        if all_plates > GRID_PLATES {
            let _ = writeln!(
                self.out,
                "<h3>Plate maps</h3>\n<p>Every measure QC computed on the {} plates (of {all_plates}) with the most excluded image sets ({} maps): click a map to see it full size. Every plate's maps are in the QC step's <code>heatmaps/</code> folders.</p>",
                cols.len(),
                maps.len()
            );
        } else {
            let _ = writeln!(
                self.out,
                "<h3>Plate maps</h3>\n<p>Every measure QC computed, on every plate ({} maps): click a map to see it full size.</p>",
                maps.len()
            );
        }
        self.figure(
            &html,
            "QC plate maps, a row per measure and a column per plate",
            "Each square is a well, coloured by its value (grey: no data; red outline: \
             flagged); a row, a column or the plate edge that stands out points to a \
             technical plate effect rather than biology.",
        );
    }
}

/// The most plates whose QC maps the report shows inline.
pub(crate) const GRID_PLATES: usize = 12;

/// A feature name short enough for a tile's caption.
fn charts_short(f: &str) -> String {
    if f.chars().count() <= 34 {
        f.to_string()
    } else {
        let tail: String = f
            .chars()
            .rev()
            .take(33)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// ` on plate P1`, or nothing where the plate is not known.
fn on_plate(plate: &str) -> String {
    if plate.is_empty() {
        String::new()
    } else {
        format!(" on plate {plate}")
    }
}
