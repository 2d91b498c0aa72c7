//! The page: header, contents, a QC section, one section per model evaluation, notes. Every
//! figure gets a numbered caption that says in one sentence how to read it. Two small scripts:
//! an error counter at the top of `<head>` and, at the end, a check that every figure rendered
//! (`data-figures-ok`, `data-figures-total` and `data-js-errors` on `<body>`), which the
//! browser test reads.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::charts::{self, fmt3};
use crate::{
    escape, Exclusion, Metric, ModelSection, PngFigure, QcSummary, Report, SegmentationSection,
    SvgFigure,
};

const CSS: &str = r#"
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  max-width: 1120px; margin: 0 auto; padding: 0 24px 48px; }
header { border-bottom: 3px solid #0072B2; padding: 24px 0 10px; }
h1 { margin: 0; font-size: 1.8em; }
.subtitle { color: #555; margin: 4px 0 0; }
nav { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 6px; padding: 6px 20px;
  margin: 20px 0; }
nav h2 { font-size: 1em; border: 0; margin: 8px 0 0; }
section { margin-top: 40px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { margin: 28px 0 8px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e1e4e8; padding: 4px 12px; text-align: left;
  vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; white-space: nowrap; }
.meta { color: #555; }
.warning { background: #fdecea; border: 2px solid #b00020; border-left-width: 10px;
  color: #4a000c; padding: 12px 16px; border-radius: 4px; margin: 16px 0; }
.warning strong { font-size: 1.15em; color: #b00020; }
.omitted { color: #b00020; }
figure { margin: 16px 0 28px; }
figure svg, figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #444; max-width: 85ch; margin-top: 6px; }
.row { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: flex-start; }
.row > figure { max-width: 520px; margin-top: 0; }
img.zoomed { image-rendering: pixelated; }
details { margin: 8px 0 16px; }
summary { cursor: pointer; color: #0072B2; }
code { background: #f2f2f2; padding: 0 4px; border-radius: 3px; }
footer { margin-top: 48px; color: #777; font-size: 0.85em; }
#summary { background: #f6f8fa; border: 1px solid #d0d7de; border-top: 4px solid #0072B2;
  border-radius: 6px; padding: 4px 20px 12px; margin-top: 20px; }
#summary h2 { border: 0; margin: 10px 0 4px; }
#summary h3 { margin: 10px 0 4px; font-size: 1.05em; }
.glance { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
.glance > div { flex: 1 1 420px; min-width: 0; }
.glance > div.glance-map { flex: 0 1 auto; }
.glance table { margin: 4px 0 8px; background: white; }
ul.warnings { margin: 4px 0; padding-left: 0; list-style: none; }
ul.warnings li { background: #fff4e5; border-left: 5px solid #D55E00; padding: 3px 10px;
  margin: 4px 0; }
ul.warnings li.ok { background: #eaf5ee; border-left-color: #009E73; }
.nointerval { color: #8a4b00; font-size: 0.9em; }
.hm-grid { overflow-x: auto; }
.hm-grid table { margin: 0; }
.hm-grid td { padding: 2px 4px; border: 0; }
.hm-grid th { white-space: nowrap; font-weight: normal; background: none; }
.hm a.open svg { width: 150px; height: auto; display: block; }
.hm a.close { display: none; }
.hm:target { position: fixed; top: 4vh; left: 4vw; right: 4vw; bottom: 4vh; z-index: 10;
  background: white; border: 1px solid #888; box-shadow: 0 4px 24px rgba(0,0,0,.4);
  padding: 12px 20px; overflow: auto; }
.hm:target a.open svg { width: auto; max-width: 100%; }
.hm:target a.close { display: block; margin-bottom: 8px; }
.tile-row { display: flex; flex-wrap: wrap; gap: 6px 10px; align-items: flex-start;
  margin: 6px 0 10px; }
.tile-label { flex: 0 0 130px; font-size: 0.85em; color: #333; padding-top: 4px; }
.tile { font-size: 0.78em; line-height: 1.3; }
.tile img { display: block; border: 1px solid #ccc; }
.tile .why { color: #555; margin: 2px 0 0; padding: 0; list-style: none; }
.tile-head { display: flex; gap: 10px; font-size: 0.8em; color: #555; }
.cols { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
tr.degenerate td { color: #777; }
tr.flagged td { background: #fdecea; }
@media print { nav { display: none; } figure, table { break-inside: avoid; } }
"#;

/// Installed first, so errors anywhere on the page are counted.
const ERROR_COUNTER: &str = "window.__reportErrors = 0; window.onerror = function () { \
window.__reportErrors += 1; if (document.body) document.body.dataset.jsErrors = \
window.__reportErrors; };";

/// Counts the figures that rendered, once the page (images included) has loaded.
const FIGURE_CHECK: &str = r##"(function () {
  function rect(sel) {
    var e = document.querySelector(sel);
    if (!e) return "";
    var r = e.getBoundingClientRect();
    return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]
      .map(Math.round).join(",");
  }
  function check() {
    var ok = 0, total = 0, overflow = 0;
    document.querySelectorAll("svg.chart text").forEach(function (t) {
      var svg = t.ownerSVGElement, b = t.getBoundingClientRect(), s = svg.getBoundingClientRect();
      if (b.width > 0 && (b.left < s.left - 1 || b.right > s.right + 1)) {
        overflow += 1;
        if (overflow === 1) document.body.dataset.textOverflowFirst = t.textContent.slice(0, 80);
      }
    });
    document.querySelectorAll("img").forEach(function (img) {
      total += 1;
      if (img.complete && img.naturalWidth > 0) ok += 1;
    });
    document.querySelectorAll("svg.chart").forEach(function (svg) {
      total += 1;
      var box = svg.getBoundingClientRect();
      if (svg.childElementCount > 0 && box.width > 0 && box.height > 0) ok += 1;
    });
    var data = document.body.dataset;
    data.figuresOk = ok;
    data.figuresTotal = total;
    data.jsErrors = window.__reportErrors || 0;
    data.textOverflow = overflow;
    data.summaryRect = rect("#summary");
    data.summaryMapRect = rect("#summary svg.chart[data-chart='well-map']");
  }
  if (document.readyState === "complete") check();
  else window.addEventListener("load", check);
})();"##;

/// A number to three decimals; scientific notation where that would hide it, "n/a" for NaN.
pub(crate) fn fmt_value(v: f64) -> String {
    if v.is_finite() && v != 0.0 && (v.abs() >= 1e6 || v.abs() < 5e-4) {
        format!("{v:.3e}")
    } else {
        fmt3(v)
    }
}

/// "value [lo, hi]", or just the value.
pub(crate) fn fmt_ci(value: f64, ci95: Option<(f64, f64)>) -> String {
    match ci95 {
        Some((lo, hi)) => format!(
            "{} [{}, {}]",
            fmt_value(value),
            fmt_value(lo),
            fmt_value(hi)
        ),
        None => fmt_value(value),
    }
}

/// A metric's value cell: "value [lo, hi]", or the value and why it has no interval.
pub(crate) fn metric_value(m: &Metric) -> String {
    match m.ci95 {
        None if !m.no_interval.is_empty() => format!(
            "{} <span class=\"nointerval\">(no interval: {})</span>",
            fmt_value(m.value),
            escape(&m.no_interval)
        ),
        ci => fmt_ci(m.value, ci),
    }
}

/// The page for `report`, as one self-contained HTML document.
pub fn render(report: &Report) -> String {
    let mut page = Page::default();
    let mut toc: Vec<(String, String)> = Vec::new();
    page.summary(report);
    let glance = std::mem::take(&mut page.out);
    if let Some(qc) = &report.qc {
        toc.push(("qc".into(), "Quality control".into()));
        page.qc(qc);
    }
    if let Some(seg) = &report.segmentation {
        toc.push(("segmentation".into(), "Segmentation".into()));
        page.segmentation(seg);
    }
    if !report.zprime.is_empty() {
        toc.push(("zprime".into(), "Assay window: Z′ per feature".into()));
        page.zprime(&report.zprime);
    }
    for (i, r) in report.readouts.iter().enumerate() {
        let id = format!("readout-{}", i + 1);
        toc.push((id.clone(), format!("Per-well readout: {}", r.name)));
        page.readout(&id, r);
    }
    if !report.label_qc.is_empty() {
        toc.push(("label-qc".into(), "Label QC".into()));
        page.label_qc(&report.label_qc);
    }
    for (i, m) in report.models.iter().enumerate() {
        let id = section_id(i, &m.name);
        let leaky = if m.leaky { " (⚠ leaky split)" } else { "" };
        toc.push((id.clone(), format!("{}{leaky}", heading(m))));
        page.model(&id, m);
    }
    if !report.notes.is_empty() {
        toc.push(("notes".into(), "Notes and caveats".into()));
        page.out
            .push_str("<section id=\"notes\">\n<h2>Notes and caveats</h2>\n<ul>\n");
        for note in &report.notes {
            let _ = writeln!(page.out, "<li>{}</li>", escape(note));
        }
        page.out.push_str("</ul>\n</section>\n");
    }

    let title = if report.title.is_empty() {
        "plateflow report"
    } else {
        &report.title
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <script>{ERROR_COUNTER}</script>\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"plateflow-report {}\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<header>\n<h1>{}</h1>\n",
        env!("CARGO_PKG_VERSION"),
        escape(title),
        escape(title),
    );
    if !report.subtitle.is_empty() {
        let _ = writeln!(
            html,
            "<p class=\"subtitle\">{}</p>",
            escape(&report.subtitle)
        );
    }
    html.push_str("</header>\n");
    html.push_str(&glance);
    if toc.is_empty() {
        html.push_str(
            "<main>\n<p>Nothing to report: this run recorded no QC, models or notes.</p>\n",
        );
    } else {
        html.push_str("<nav>\n<h2>Contents</h2>\n<ol>\n");
        for (id, text) in &toc {
            let _ = writeln!(html, "<li><a href=\"#{id}\">{}</a></li>", escape(text));
        }
        html.push_str("</ol>\n</nav>\n<main>\n");
    }
    html.push_str(&page.out);
    let _ = write!(
        html,
        "</main>\n<footer>Made by plateflow-report {}: a self-contained page, with no network \
         access needed.</footer>\n<script>{FIGURE_CHECK}</script>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION")
    );
    html
}

/// A section's anchor: its position and name, reduced to letters, digits and dashes.
fn section_id(i: usize, name: &str) -> String {
    let mut id = format!("model-{}", i + 1);
    let mut dash = true;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            if dash {
                id.push('-');
            }
            id.push(c);
            dash = false;
        } else {
            dash = true;
        }
    }
    id
}

fn heading(m: &ModelSection) -> String {
    match (m.name.is_empty(), m.what.is_empty()) {
        (true, true) => "Model".to_string(),
        (false, true) => m.name.clone(),
        (true, false) => m.what.clone(),
        (false, false) => format!("{}: {}", m.name, m.what),
    }
}

/// The body of the page as it is built, and the number of the next figure.
#[derive(Default)]
pub(crate) struct Page {
    pub(crate) out: String,
    pub(crate) figures: usize,
}

impl Page {
    /// A numbered figure: `content` is trusted markup, `caption` plain text.
    pub(crate) fn figure(&mut self, content: &str, title: &str, caption: &str) {
        self.figures += 1;
        let _ = writeln!(
            self.out,
            "<figure>\n{content}\n<figcaption><strong>Figure {}. {}.</strong> {}</figcaption>\n</figure>",
            self.figures,
            escape(title.trim_end_matches('.')),
            escape(caption)
        );
    }

    fn qc(&mut self, qc: &QcSummary) {
        let n = qc.excluded.len();
        let share = if qc.images > 0 {
            format!(" ({:.1}%)", 100.0 * n as f64 / qc.images as f64)
        } else {
            String::new()
        };
        let _ = writeln!(
            self.out,
            "<section id=\"qc\">\n<h2>Quality control</h2>\n<p>{} image sets checked; {n} excluded{share}.</p>",
            qc.images
        );
        if n > 0 {
            self.exclusions(&qc.excluded);
        }
        let (grid, single): (Vec<&SvgFigure>, Vec<&SvgFigure>) = qc
            .heatmaps
            .iter()
            .partition(|f| !f.row.is_empty() && !f.column.is_empty());
        if !grid.is_empty() {
            self.heatmap_grid(&grid, &qc.excluded_per_plate);
        }
        if !single.is_empty() {
            self.out
                .push_str("<h3>Plate maps</h3>\n<div class=\"row\">\n");
            for fig in single {
                self.heatmap(fig);
            }
            self.out.push_str("</div>\n");
        }
        self.out.push_str("</section>\n");
    }

    fn segmentation(&mut self, seg: &SegmentationSection) {
        self.out
            .push_str("<section id=\"segmentation\">\n<h2>Segmentation</h2>\n");
        if !seg.plates.is_empty() {
            self.out.push_str(
                "<table>\n<tr><th>task</th><th>method</th><th>fields</th><th>nuclei per field (25%, median, 75%)</th><th>nucleus area, px (25%, median, 75%)</th><th>touching the border</th></tr>\n",
            );
            for p in &seg.plates {
                // No objects (or no fields): nothing to summarise, not a size of 0.
                let three = |v: &[f64; 3]| {
                    if v.iter().all(|x| x.is_finite()) {
                        format!("{:.0} · <b>{:.0}</b> · {:.0}", v[0], v[1], v[2])
                    } else {
                        "—".to_string()
                    }
                };
                let share = if p.touching_border_fraction.is_finite() {
                    format!("{:.1}%", 100.0 * p.touching_border_fraction)
                } else {
                    "—".to_string()
                };
                let _ = writeln!(
                    self.out,
                    "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{share}</td></tr>",
                    escape(&p.task),
                    escape(&p.method),
                    p.fields,
                    three(&p.objects_per_field),
                    three(&p.area),
                );
            }
            self.out.push_str("</table>\n");
        }
        if !seg.outlines.is_empty() {
            self.out.push_str(
                "<h3>Outlines</h3>\n<p>Nuclei in yellow, cells in magenta, over the nucleus channel; per plate the fields QC ranks worst among those segmented and a typical one (without a QC step: a few of the plate's fields).</p>\n<div class=\"row\">\n",
            );
            for f in &seg.outlines {
                self.png(f);
            }
            self.out.push_str("</div>\n");
        }
        if !seg.illumination.is_empty() {
            self.out.push_str(
                "<h3>Illumination correction</h3>\n<p>Each plate's field per channel (the median of its images, smoothed; dark is dimmer): images are divided by it before segmentation and measurement.</p>\n<div class=\"row\">\n",
            );
            for f in &seg.illumination {
                self.png(f);
            }
            self.out.push_str("</div>\n");
        }
        self.out.push_str("</section>\n");
    }

    fn exclusions(&mut self, excluded: &[Exclusion]) {
        // Reasons with their counts, in order of first appearance, then every image set.
        let mut reasons: Vec<(&str, usize)> = Vec::new();
        for e in excluded {
            match reasons.iter_mut().find(|(r, _)| *r == e.reason) {
                Some((_, k)) => *k += 1,
                None => reasons.push((&e.reason, 1)),
            }
        }
        self.out
            .push_str("<table>\n<tr><th>reason</th><th>image sets</th></tr>\n");
        for (reason, k) in &reasons {
            let _ = writeln!(
                self.out,
                "<tr><td>{}</td><td class=\"num\">{k}</td></tr>",
                escape(reason)
            );
        }
        let _ = writeln!(
            self.out,
            "</table>\n<details{}>\n<summary>All {} excluded image sets</summary>\n<table>\n<tr><th>image set</th><th>reason</th></tr>",
            if excluded.len() <= 20 { " open" } else { "" },
            excluded.len()
        );
        for e in excluded {
            let _ = writeln!(
                self.out,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                escape(&e.image_set),
                escape(&e.reason)
            );
        }
        self.out.push_str("</table>\n</details>\n");
    }

    fn heatmap(&mut self, fig: &SvgFigure) {
        match embeddable_svg(&fig.svg) {
            Some(svg) => self.figure(
                &svg,
                &fig.title,
                "Each square is a well, coloured by its value (grey: no data; red outline: \
                 flagged); a row, a column or the plate edge that stands out points to a \
                 technical plate effect rather than biology.",
            ),
            None => {
                let _ = writeln!(
                    self.out,
                    "<p class=\"omitted\">Figure “{}” left out: it is not plain SVG (it has \
                     scripts, event handlers or links to the network).</p>",
                    escape(&fig.title)
                );
            }
        }
    }

    fn model(&mut self, id: &str, m: &ModelSection) {
        let _ = writeln!(
            self.out,
            "<section id=\"{id}\">\n<h2>{}</h2>",
            escape(&heading(m))
        );
        let mut meta = Vec::new();
        if !m.model.is_empty() {
            meta.push(format!("model <code>{}</code>", escape(&m.model)));
        }
        if !m.classes.is_empty() {
            let names: Vec<String> = m.classes.iter().map(|c| escape(c)).collect();
            meta.push(format!("{} classes: {}", m.classes.len(), names.join(", ")));
        }
        let cells: u64 = m.confusion.iter().flatten().sum();
        if cells > 0 {
            meta.push(format!("{cells} cells evaluated"));
        }
        if !meta.is_empty() {
            let _ = writeln!(self.out, "<p class=\"meta\">{}</p>", meta.join(" · "));
        }
        if m.leaky {
            self.out.push_str(
                "<div class=\"warning\" role=\"alert\"><strong>⚠ Leaky evaluation: do not \
                 trust these scores.</strong> Cells were split at random, so cells from the same \
                 plates and wells are in both the training and the test set; the model can \
                 recognise the plate or well instead of the phenotype, and the scores below \
                 overstate how it will do on a new plate. Use leave-plate-out validation.</div>\n",
            );
        }
        let empty = m.metrics.is_empty()
            && m.confusion.is_empty()
            && m.per_group.is_empty()
            && m.curves.is_empty()
            && m.reliability.is_empty()
            && m.coefficients.is_empty()
            && m.shap.is_empty()
            && m.figures.is_empty()
            && m.tiles.is_empty();
        if empty {
            self.out
                .push_str("<p>No results were recorded for this step.</p>\n");
        }
        if !m.metrics.is_empty() {
            self.out.push_str(
                "<table>\n<tr><th>metric</th><th>value [95% CI]</th><th>note</th></tr>\n",
            );
            for x in &m.metrics {
                let _ = writeln!(
                    self.out,
                    "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                    escape(&x.name),
                    metric_value(x),
                    escape(&x.note)
                );
            }
            self.out.push_str("</table>\n");
        }
        if !m.confusion.is_empty() {
            self.figure(
                &charts::confusion(&m.classes, &m.confusion),
                "Confusion matrix",
                "Each row is the true class and each column the class the model called; the \
                 numbers count cells and the shading is the share of the row, so a dark diagonal \
                 means most cells of every class were called right and a dark cell off it names \
                 two classes the model mixes up.",
            );
        }
        if !m.per_group.is_empty() {
            self.per_group(m);
        }
        if !m.curves.is_empty() {
            self.figures += 1;
            self.out.push_str("<figure>\n<div class=\"row\">\n");
            for c in &m.curves {
                self.out.push_str(&charts::learning_curve(c));
                self.out.push('\n');
            }
            let _ = writeln!(
                self.out,
                "</div>\n<figcaption><strong>Figure {}. Learning curves.</strong> For each \
                 training run, the loss on training and validation cells per epoch (lower is \
                 better) and the validation F1 below it; the dashed line marks the epoch whose \
                 weights were kept, and a validation loss that climbs while the training loss \
                 keeps falling means the model is memorising its training cells.</figcaption>\n\
                 </figure>",
                self.figures
            );
        }
        if !m.reliability.is_empty() {
            self.figure(
                &charts::reliability(&m.reliability),
                "Calibration",
                "Cells are grouped by how confident the model was in its call and each bar \
                 shows how often those calls were right, so a model whose confidence can be \
                 trusted follows the diagonal (calls made with 80% confidence are right 80% of \
                 the time); ECE is the average gap, smaller is better, and the grey bars count \
                 the cells in each group.",
            );
        }
        if !m.coefficients.is_empty() {
            self.figure(
                &charts::coefficients(&m.coefficients),
                "Features the linear model relies on",
                "The features with the largest weights in the linear baseline, coloured by \
                 feature family; if one family or one channel dominates, check that it reflects \
                 biology and not an artefact such as focus, illumination or cell density.",
            );
        }
        if !m.shap.is_empty() {
            self.shap(&m.shap);
        }
        for f in &m.figures {
            self.png(f);
        }
        for t in &m.tiles {
            self.tiles(t);
        }
        self.out.push_str("</section>\n");
    }

    fn per_group(&mut self, m: &ModelSection) {
        let overall = m
            .metrics
            .iter()
            .find(|x| x.name.to_lowercase().contains("weighted f1"))
            .map(|x| x.value);
        self.figure(
            &charts::group_scores(&m.per_group, overall),
            "Scores per plate or fold",
            "Each row is one plate (or fold): the dot is the weighted F1 score on its cells \
             with its 95% confidence interval, the diamond the accuracy and the dashed line the \
             overall score; a plate far from the line behaves differently, often because of a \
             batch effect rather than biology.",
        );
        self.out.push_str(
            "<details>\n<summary>The numbers</summary>\n<table>\n<tr><th>group</th><th>cells</th>\
             <th>weighted F1 [95% CI]</th><th>accuracy</th></tr>\n",
        );
        for g in &m.per_group {
            let _ = writeln!(
                self.out,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&g.group),
                g.cells,
                fmt_ci(g.weighted_f1, g.ci95),
                fmt_value(g.accuracy)
            );
        }
        self.out.push_str("</table>\n</details>\n");
        if !m.data_notes.is_empty() {
            self.out.push_str(
                "<p>Read the per-plate scores with the data in mind:</p>\n<ul class=\"notes\">\n",
            );
            for n in &m.data_notes {
                let _ = writeln!(self.out, "<li>{}</li>", escape(n));
            }
            self.out.push_str("</ul>\n");
        }
    }

    /// Small images (single-cell crops) are shown enlarged, with crisp pixels.
    fn png(&mut self, f: &PngFigure) {
        let size = match png_size(&f.png) {
            Some((w, h)) if w > 0 && w < 256 => {
                let k = (256 / w).min(8);
                format!(" class=\"zoomed\" width=\"{}\" height=\"{}\"", w * k, h * k)
            }
            _ => String::new(),
        };
        let img = format!(
            "<img src=\"data:image/png;base64,{}\" alt=\"{}\"{size}>",
            STANDARD.encode(&f.png),
            escape(&f.title)
        );
        self.figure(&img, &f.title, &f.caption);
    }
}

/// Width and height from a PNG's header, if `bytes` start like a PNG.
pub(crate) fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Some((be(16), be(20)))
}

/// `markup` ready to inline if it is plain SVG: the XML prolog and the SVG namespace
/// declarations (which HTML does not need) dropped, `class="chart"` added to the root so the
/// page's check counts it. `None` for anything else, and for SVG with scripts, event
/// handlers, foreign content or anything that names a URL.
pub(crate) fn embeddable_svg(markup: &str) -> Option<String> {
    let mut m = markup.trim();
    loop {
        if m.starts_with("<?") {
            m = m[m.find("?>")? + 2..].trim_start();
        } else if m.starts_with("<!--") {
            m = m[m.find("-->")? + 3..].trim_start();
        } else if m.starts_with("<!") {
            m = m[m.find('>')? + 1..].trim_start();
        } else {
            break;
        }
    }
    let root_ok = m.starts_with("<svg")
        && matches!(
            m.as_bytes().get(4),
            Some(b' ' | b'>' | b'\n' | b'\t' | b'\r')
        );
    if !root_ok || !m.ends_with("</svg>") {
        return None;
    }
    let m = m
        .replace(" xmlns=\"http://www.w3.org/2000/svg\"", "")
        .replace(" xmlns:xlink=\"http://www.w3.org/1999/xlink\"", "");
    // Checked as a browser reads it: numeric character references decoded (`&#106;avascript:`
    // is `javascript:`), then anything that runs, leaves the figure or names a URL refused.
    let lower = decode_numeric_references(&m).to_ascii_lowercase();
    let banned = [
        "<script",
        "<foreignobject",
        "<iframe",
        "<embed",
        "<object",
        "<img",
        "<image",
        "<a ",
        "<a>",
        "<a\n",
        "<link",
        "<meta",
        "<audio",
        "<video",
        "<!entity",
        "@import",
        "javascript:",
        "http://",
        "https://",
    ];
    if banned.iter().any(|b| lower.contains(b))
        || has_event_attribute(&lower)
        || names_a_resource(&lower)
    {
        return None;
    }
    let root_end = m.find('>')?;
    let out = match m[..root_end].find(" class=\"") {
        Some(p) => format!("{}chart {}", &m[..p + 8], &m[p + 8..]),
        None => format!("<svg class=\"chart\"{}", &m[4..]),
    };
    Some(out)
}

/// Whether lower-case markup has an attribute like `onload=`: `on` and letters after any
/// character that cannot be inside an attribute name (whitespace, `/`, a closing quote:
/// `<rect/onclick=…>` and `x="1"onclick=…` count), optional whitespace, `=`.
fn has_event_attribute(lower: &str) -> bool {
    let b = lower.as_bytes();
    (1..b.len()).any(|i| {
        let before = b[i - 1];
        let name_char =
            before.is_ascii_alphanumeric() || matches!(before, b'-' | b'_' | b':' | b'.');
        if name_char || !b[i..].starts_with(b"on") {
            return false;
        }
        let mut j = i + 2;
        while j < b.len() && b[j].is_ascii_lowercase() {
            j += 1;
        }
        if j == i + 2 {
            return false;
        }
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j < b.len() && b[j] == b'='
    })
}

/// Whether lower-case markup points anywhere but inside itself: an `href` or `src` value,
/// or a CSS `url(…)`, that does not start with `#` (`//host/x` fetches from a page opened
/// from disk, over SMB on Windows).
fn names_a_resource(lower: &str) -> bool {
    let value_after = |from: usize| -> Option<u8> {
        lower.as_bytes()[from..]
            .iter()
            .copied()
            .find(|c| !c.is_ascii_whitespace() && !matches!(c, b'"' | b'\'' | b'='))
    };
    let attributes = ["href", "src"].iter().any(|name| {
        lower.match_indices(name).any(|(i, _)| {
            let rest = lower[i + name.len()..].trim_start();
            rest.starts_with('=') && value_after(lower.len() - rest.len()) != Some(b'#')
        })
    });
    attributes
        || lower
            .match_indices("url(")
            .any(|(i, _)| value_after(i + 4) != Some(b'#'))
}

/// `&#106;` and `&#x6a;` as the characters they stand for; other text unchanged.
fn decode_numeric_references(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("&#") {
        out.push_str(&rest[..p]);
        let after = &rest[p + 2..];
        let (hex, digits) = match after.strip_prefix(['x', 'X']) {
            Some(h) => (true, h),
            None => (false, after),
        };
        let len = digits
            .bytes()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        let code = u32::from_str_radix(&digits[..len], if hex { 16 } else { 10 }).ok();
        match code.and_then(char::from_u32) {
            Some(c) if len > 0 => {
                out.push(c);
                let consumed = digits.len() - digits[len..].len();
                let tail = &digits[consumed..];
                rest = tail.strip_prefix(';').unwrap_or(tail);
            }
            _ => {
                out.push_str("&#");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
