//! The report's charts as inline SVG strings: learning curves, confusion matrix, per-group
//! scores, reliability diagram and coefficients. Each is one `<svg class="chart">` with a
//! `data-chart` name, a `<title>`, axes with tick labels and a legend; no scripts, fonts or
//! links, so the page stays self-contained. Colours are Okabe–Ito (distinguishable by most
//! colour-blind readers), and lines also differ by dash so they survive grey-scale printing.

use std::fmt::Write as _;

use crate::{escape, Coefficient, Curve, GroupScore, Reliability};

/// Okabe–Ito, strongest first (yellow last: it is faint on white).
const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];
const BLUE: &str = PALETTE[0];
const VERMILLION: &str = PALETTE[1];
const GREEN: &str = PALETTE[2];
const SKY: &str = PALETTE[5];
const INK: &str = "#222222";
const MUTED: &str = "#666666";
const GRID: &str = "#e4e4e4";
const FONT: f64 = 11.0;

/// Rough width of `s` in a sans-serif font of `size` px: enough to lay out margins.
fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.6
}

/// At most `max` characters, with an ellipsis where cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Three decimals, or "n/a" for a value that is not a number.
pub(crate) fn fmt3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "n/a".to_string()
    }
}

/// The root element: `kind` names the chart for tests and styles, `label` is its title.
fn svg(kind: &str, w: f64, h: f64, label: &str, body: &str) -> String {
    let (w, h) = (w.ceil(), h.ceil());
    format!(
        r##"<svg class="chart" data-chart="{kind}" role="img" aria-label="{l}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif" font-size="{FONT}" fill="{INK}"><title>{l}</title>{body}</svg>"##,
        l = escape(label)
    )
}

/// A bold title at the top left.
fn title(s: &mut String, text: &str) {
    let _ = write!(
        s,
        r#"<text x="12" y="18" font-size="13" font-weight="bold">{}</text>"#,
        escape(text)
    );
}

/// Maps a data interval onto a pixel interval.
#[derive(Clone, Copy)]
struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    fn new(axis: &Axis, r0: f64, r1: f64) -> Self {
        Scale {
            d0: axis.lo,
            d1: axis.hi,
            r0,
            r1,
        }
    }

    fn at(&self, v: f64) -> f64 {
        if self.d1 == self.d0 {
            (self.r0 + self.r1) / 2.0
        } else {
            self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)
        }
    }
}

/// An axis for data in lo..=hi: the range widened to round numbers, and its ticks.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    decimals: usize,
}

impl Axis {
    /// About `target` intervals of 1, 2, 2.5 or 5 × 10ⁿ, none shorter than `min_step`.
    fn new(lo: f64, hi: f64, target: usize, min_step: f64) -> Self {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        if hi - lo <= 1e-12 * hi.abs().max(1.0) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let raw = (hi - lo) / target.max(1) as f64;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .into_iter()
            .map(|m| m * mag)
            .find(|&s| s >= raw * (1.0 - 1e-9))
            .unwrap_or(10.0 * mag)
            .max(min_step);
        let decimals = (0..=9)
            .find(|&d| {
                let x = step * 10f64.powi(d);
                (x - x.round()).abs() < 1e-6
            })
            .unwrap_or(9);
        // Rounded to the step's decimals, so 0.6 is 0.6 and not 0.6000000000000001.
        let round = |v: f64| {
            let f = 10f64.powi(decimals);
            let r = (v * f).round() / f;
            if r == 0.0 {
                0.0
            } else {
                r
            }
        };
        let first = (lo / step + 1e-9).floor();
        let n = ((hi / step - 1e-9).ceil() - first).max(1.0) as usize;
        let ticks: Vec<f64> = (0..=n).map(|k| round((first + k as f64) * step)).collect();
        let (lo, hi) = (ticks[0], ticks[n]);
        let decimals = decimals as usize;
        Axis {
            lo,
            hi,
            ticks,
            decimals,
        }
    }

    /// For data that lies in `values` (non-finite ones ignored).
    fn over(values: impl IntoIterator<Item = f64>, target: usize) -> Self {
        let (lo, hi) = values
            .into_iter()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        Axis::new(lo, hi, target, 0.0)
    }

    /// The tick label, with a true minus sign.
    fn label(&self, v: f64) -> String {
        format!("{v:.*}", self.decimals).replace('-', "\u{2212}")
    }

    fn label_width(&self) -> f64 {
        self.ticks
            .iter()
            .map(|&t| text_width(&self.label(t), FONT))
            .fold(0.0, f64::max)
    }
}

/// Horizontal grid lines, the axis line, and tick labels left of the plot; the axis title,
/// rotated, left of those.
fn y_axis(s: &mut String, x: &Scale, y: &Scale, axis: &Axis, label: &str) {
    for &t in &axis.ticks {
        let py = y.at(t);
        let _ = write!(
            s,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="{GRID}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x.r0,
            x.r1,
            x.r0 - 5.0,
            py + 3.5,
            axis.label(t)
        );
    }
    let (lx, ly) = (x.r0 - axis.label_width() - 14.0, (y.r0 + y.r1) / 2.0);
    let _ = write!(
        s,
        r#"<line x1="{x0:.1}" x2="{x0:.1}" y1="{:.1}" y2="{:.1}" stroke="{MUTED}"/><text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        y.r0,
        y.r1,
        escape(label),
        x0 = x.r0,
    );
}

/// The axis line along the bottom of the plot, ticks, their labels, and the axis title.
fn x_axis(s: &mut String, x: &Scale, bottom: f64, axis: &Axis, label: Option<&str>) {
    let _ = write!(
        s,
        r#"<line x1="{:.1}" x2="{:.1}" y1="{bottom:.1}" y2="{bottom:.1}" stroke="{MUTED}"/>"#,
        x.r0, x.r1
    );
    for &t in &axis.ticks {
        let px = x.at(t);
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{bottom:.1}" y2="{:.1}" stroke="{MUTED}"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            bottom + 4.0,
            bottom + 15.0,
            axis.label(t)
        );
    }
    if let Some(label) = label {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (x.r0 + x.r1) / 2.0,
            bottom + 31.0,
            escape(label)
        );
    }
}

/// Vertical grid lines at the ticks, between `top` and `bottom`.
fn x_grid(s: &mut String, x: &Scale, top: f64, bottom: f64, axis: &Axis) {
    for &t in &axis.ticks {
        let px = x.at(t);
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{top:.1}" y2="{bottom:.1}" stroke="{GRID}"/>"#
        );
    }
}

/// An SVG path through the points, broken where a point is not finite.
fn path(points: impl IntoIterator<Item = (f64, f64)>) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    for (x, y) in points {
        if x.is_finite() && y.is_finite() {
            let _ = write!(d, "{}{x:.1},{y:.1} ", if pen_down { 'L' } else { 'M' });
            pen_down = true;
        } else {
            pen_down = false;
        }
    }
    d.trim_end().to_string()
}

/// What a legend entry looks like.
#[derive(Clone, Copy)]
enum Key<'a> {
    Line(&'a str),
    Dashed(&'a str),
    Box(&'a str),
    Dot(&'a str),
    DotWithBar(&'a str),
    Diamond(&'a str),
}

/// Legend entries from (`x`, `y`) on, wrapped at `max_w`; the markup and the height it takes.
fn legend(x: f64, y: f64, max_w: f64, items: &[(Key, &str)]) -> (String, f64) {
    let mut s = String::new();
    let (mut cx, mut cy) = (x, y);
    for (key, text) in items {
        let w = 22.0 + text_width(text, FONT) + 14.0;
        if cx > x && cx + w > x + max_w {
            (cx, cy) = (x, cy + 16.0);
        }
        let my = cy - 4.0;
        let _ = match *key {
            Key::Line(c) => write!(
                s,
                r#"<line x1="{cx:.1}" x2="{:.1}" y1="{my:.1}" y2="{my:.1}" stroke="{c}" stroke-width="2"/>"#,
                cx + 18.0
            ),
            Key::Dashed(c) => write!(
                s,
                r#"<line x1="{cx:.1}" x2="{:.1}" y1="{my:.1}" y2="{my:.1}" stroke="{c}" stroke-width="2" stroke-dasharray="5 3"/>"#,
                cx + 18.0
            ),
            Key::Box(c) => write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="12" height="10" fill="{c}"/>"#,
                cx + 3.0,
                my - 5.0
            ),
            Key::Dot(c) => write!(
                s,
                r#"<circle cx="{:.1}" cy="{my:.1}" r="4" fill="{c}"/>"#,
                cx + 9.0
            ),
            Key::DotWithBar(c) => write!(
                s,
                r#"<line x1="{cx:.1}" x2="{:.1}" y1="{my:.1}" y2="{my:.1}" stroke="{c}" stroke-width="1.8"/><circle cx="{:.1}" cy="{my:.1}" r="4" fill="{c}"/>"#,
                cx + 18.0,
                cx + 9.0
            ),
            Key::Diamond(c) => write!(
                s,
                r#"<path d="{}" fill="white" stroke="{c}" stroke-width="1.6"/>"#,
                diamond(cx + 9.0, my, 4.5)
            ),
        };
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{cy:.1}">{}</text>"#,
            cx + 22.0,
            escape(text)
        );
        cx += w;
    }
    (s, cy - y + 16.0)
}

fn diamond(x: f64, y: f64, r: f64) -> String {
    format!(
        "M{:.1},{y:.1} L{x:.1},{:.1} L{:.1},{y:.1} L{x:.1},{:.1} Z",
        x - r,
        y - r,
        x + r,
        y + r
    )
}

/// One fold's learning curves: training and validation loss per epoch above, validation F1
/// below, both with the kept epoch marked.
pub(crate) fn learning_curve(c: &Curve) -> String {
    let w = 380.0;
    let epochs = c.train_loss.len().max(c.val_loss.len()).max(c.val_f1.len());
    let mut s = String::new();
    title(&mut s, &truncate(&c.label, 50));
    let mut keys = vec![
        (Key::Line(BLUE), "training loss"),
        (Key::Dashed(VERMILLION), "validation loss"),
        (Key::Line(GREEN), "validation F1"),
    ];
    if c.best_epoch.is_some() {
        keys.push((Key::Dashed(MUTED), "kept epoch"));
    }
    let (markup, legend_h) = legend(12.0, 36.0, w - 24.0, &keys);
    s.push_str(&markup);

    let xa = Axis::new(1.0, epochs.max(1) as f64, 6, 1.0);
    let la = Axis::over(c.train_loss.iter().chain(&c.val_loss).copied(), 4);
    let fa = Axis::over(c.val_f1.iter().copied(), 3);
    let left = 30.0 + la.label_width().max(fa.label_width());
    let x = Scale::new(&xa, left, w - 16.0);
    let top = 36.0 + legend_h + 4.0;
    let loss_y = Scale::new(&la, top + 130.0, top);
    let f1_top = loss_y.r0 + 30.0;
    let f1_y = Scale::new(&fa, f1_top + 80.0, f1_top);
    let h = f1_y.r0 + 40.0;
    let epoch_x = |i: usize| x.at((i + 1) as f64);

    y_axis(&mut s, &x, &loss_y, &la, "loss");
    x_axis(&mut s, &x, loss_y.r0, &xa, None);
    y_axis(&mut s, &x, &f1_y, &fa, "val. F1");
    x_axis(&mut s, &x, f1_y.r0, &xa, Some("epoch"));

    if let Some(best) = c.best_epoch {
        let bx = epoch_x(best);
        for y in [&loss_y, &f1_y] {
            let _ = write!(
                s,
                r#"<line x1="{bx:.1}" x2="{bx:.1}" y1="{:.1}" y2="{:.1}" stroke="{MUTED}" stroke-width="1.2" stroke-dasharray="5 3"/>"#,
                y.r0, y.r1
            );
        }
        let (tx, anchor) = if bx > x.r1 - 90.0 {
            (bx - 4.0, "end")
        } else {
            (bx + 4.0, "start")
        };
        let _ = write!(
            s,
            r#"<text x="{tx:.1}" y="{:.1}" text-anchor="{anchor}" fill="{MUTED}">kept: epoch {}</text>"#,
            top + 10.0,
            best + 1
        );
        if let Some(&v) = c.val_loss.get(best).filter(|v| v.is_finite()) {
            let _ = write!(
                s,
                r#"<circle cx="{bx:.1}" cy="{:.1}" r="4" fill="white" stroke="{VERMILLION}" stroke-width="2"/>"#,
                loss_y.at(v)
            );
        }
    }
    let line = |s: &mut String, ys: &[f64], y: &Scale, colour: &str, dash: &str| {
        let d = path(ys.iter().enumerate().map(|(i, &v)| (epoch_x(i), y.at(v))));
        let _ = write!(
            s,
            r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#
        );
    };
    line(&mut s, &c.train_loss, &loss_y, BLUE, "none");
    line(&mut s, &c.val_loss, &loss_y, VERMILLION, "6 3");
    line(&mut s, &c.val_f1, &f1_y, GREEN, "none");
    svg(
        "learning-curve",
        w,
        h,
        &format!("Learning curves: {}", c.label),
        &s,
    )
}

/// White to dark blue (ColorBrewer Blues), `t` in 0..=1.
fn blues(t: f64) -> String {
    const STOPS: [(f64, f64, f64); 5] = [
        (247.0, 251.0, 255.0),
        (198.0, 219.0, 239.0),
        (107.0, 174.0, 214.0),
        (33.0, 113.0, 181.0),
        (8.0, 48.0, 107.0),
    ];
    interpolate(&STOPS, t)
}

/// `t` in 0..=1 (clamped; NaN as 0) along evenly spaced colour stops, as `#rrggbb`.
fn interpolate(stops: &[(f64, f64, f64)], t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

/// The confusion matrix as a heat map: counts in the cells, shaded by the fraction of their
/// row (the true class), class names on both axes, row totals on the right.
pub(crate) fn confusion(classes: &[String], matrix: &[Vec<u64>]) -> String {
    let n = classes
        .len()
        .max(matrix.len())
        .max(matrix.iter().map(Vec::len).max().unwrap_or(0));
    let names: Vec<String> = (0..n)
        .map(|i| {
            classes
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class {}", i + 1))
        })
        .collect();
    let short: Vec<String> = names.iter().map(|c| truncate(c, 24)).collect();
    let count = |r: usize, c: usize| matrix.get(r).and_then(|row| row.get(c)).copied();
    let totals: Vec<u64> = (0..n)
        .map(|r| (0..n).filter_map(|c| count(r, c)).sum())
        .collect();

    let cell = (440.0 / n.max(1) as f64).clamp(24.0, 56.0);
    let count_font = (cell * 0.3).clamp(8.0, 12.0);
    let label_w = short
        .iter()
        .map(|l| text_width(l, FONT))
        .fold(0.0, f64::max);
    let rotate = label_w > cell - 6.0;
    let left = 34.0 + label_w + 8.0;
    let top = 54.0;
    let grid = n as f64 * cell;
    let col_label_h = if rotate { label_w * 0.71 + 16.0 } else { 20.0 };
    let totals_w = totals
        .iter()
        .map(|t| text_width(&format!("n = {t}"), FONT))
        .fold(0.0, f64::max);
    let w = (left + grid + 14.0 + totals_w + 10.0).max(420.0);
    let h = top + grid + col_label_h + 26.0;

    let mut s = String::new();
    title(&mut s, "Confusion matrix");
    let _ = write!(
        s,
        r#"<text x="12" y="38">fraction of the true class:</text>"#
    );
    for (k, t) in [0.0, 0.25, 0.5, 0.75, 1.0].into_iter().enumerate() {
        let x0 = 170.0 + k as f64 * 48.0;
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="28" width="14" height="12" fill="{}" stroke="#bbbbbb"/><text x="{:.1}" y="38">{:.0}%</text>"##,
            blues(t),
            x0 + 16.0,
            t * 100.0
        );
    }
    for r in 0..n {
        for c in 0..n {
            let (x0, y0) = (left + c as f64 * cell, top + r as f64 * cell);
            let v = count(r, c);
            let frac = match (v, totals[r]) {
                (Some(v), t) if t > 0 => v as f64 / t as f64,
                _ => 0.0,
            };
            let text_colour = if frac > 0.5 { "white" } else { INK };
            let shown = v.map_or("–".to_string(), |v| v.to_string());
            let _ = write!(
                s,
                r##"<g><title>true {t} → predicted {p}: {shown} cells ({pct:.1}% of {t})</title><rect x="{x0:.1}" y="{y0:.1}" width="{cell:.1}" height="{cell:.1}" fill="{fill}" stroke="white"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="{count_font:.1}" fill="{text_colour}">{shown}</text></g>"##,
                x0 + cell / 2.0,
                y0 + cell / 2.0 + count_font * 0.35,
                t = escape(&names[r]),
                p = escape(&names[c]),
                pct = frac * 100.0,
                fill = blues(frac),
            );
        }
    }
    // The diagonal (correct predictions), outlined.
    for i in 0..n {
        let p = (left + i as f64 * cell, top + i as f64 * cell);
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="{cell:.1}" height="{cell:.1}" fill="none" stroke="{INK}" stroke-width="1.5"/>"#,
            p.0, p.1
        );
    }
    for (i, label) in short.iter().enumerate() {
        let mid = i as f64 * cell + cell / 2.0;
        let full = escape(&names[i]);
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end"><title>{full}</title>{l}</text><text x="{:.1}" y="{:.1}">n = {}</text>"#,
            left - 6.0,
            top + mid + 4.0,
            left + grid + 8.0,
            top + mid + 4.0,
            totals[i],
            l = escape(label),
        );
        let (cx, cy) = (left + mid, top + grid + 14.0);
        if rotate {
            let cy = cy - 2.0;
            let _ = write!(
                s,
                r#"<text x="{cx:.1}" y="{cy:.1}" text-anchor="end" transform="rotate(-45 {cx:.1} {cy:.1})"><title>{full}</title>{l}</text>"#,
                l = escape(label)
            );
        } else {
            let _ = write!(
                s,
                r#"<text x="{cx:.1}" y="{cy:.1}" text-anchor="middle"><title>{full}</title>{l}</text>"#,
                l = escape(label)
            );
        }
    }
    let (ly, lx) = (top + grid / 2.0, 14.0);
    let _ = write!(
        s,
        r#"<text x="{lx}" y="{ly:.1}" text-anchor="middle" font-weight="bold" transform="rotate(-90 {lx} {ly:.1})">true class</text><text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">predicted class</text>"#,
        left + grid / 2.0,
        top + grid + col_label_h + 14.0
    );
    svg("confusion", w, h, "Confusion matrix", &s)
}

/// Scores per group (plate or fold): weighted F1 as a dot with its 95 % interval, accuracy as
/// an open diamond, and `overall` as a dashed line.
pub(crate) fn group_scores(groups: &[GroupScore], overall: Option<f64>) -> String {
    let labels: Vec<String> = groups
        .iter()
        .map(|g| format!("{} (n = {})", truncate(&g.group, 28), g.cells))
        .collect();
    let label_w = labels
        .iter()
        .map(|l| text_width(l, FONT))
        .fold(0.0, f64::max);
    let left = label_w + 20.0;
    let plot_w = 380.0;
    let w = left + plot_w + 20.0;
    let overall = overall.filter(|v| v.is_finite());

    let mut s = String::new();
    title(&mut s, "Scores per group");
    // Whiskers are promised only where some group has an interval to draw.
    let any_ci = groups
        .iter()
        .any(|g| g.ci95.is_some_and(|(a, b)| a.is_finite() && b.is_finite()));
    let mut keys = vec![
        if any_ci {
            (Key::DotWithBar(BLUE), "weighted F1 with 95% CI")
        } else {
            (Key::Dot(BLUE), "weighted F1 (no per-group interval)")
        },
        (Key::Diamond(VERMILLION), "accuracy"),
    ];
    if overall.is_some() {
        keys.push((Key::Dashed(INK), "overall weighted F1"));
    }
    let (markup, legend_h) = legend(12.0, 36.0, w - 24.0, &keys);
    s.push_str(&markup);

    let top = 36.0 + legend_h + 12.0;
    let row_h = 22.0;
    let bottom = top + groups.len() as f64 * row_h;
    let h = bottom + 42.0;
    let values = groups
        .iter()
        .flat_map(|g| {
            let (lo, hi) = g.ci95.unwrap_or((f64::NAN, f64::NAN));
            [g.weighted_f1, g.accuracy, lo, hi]
        })
        .chain(overall);
    let xa = Axis::over(values, 5);
    let x = Scale::new(&xa, left, left + plot_w);

    for i in (1..groups.len()).step_by(2) {
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{plot_w:.1}" height="{row_h:.1}" fill="#f4f4f4"/>"##,
            left,
            top + i as f64 * row_h
        );
    }
    x_grid(&mut s, &x, top, bottom, &xa);
    x_axis(&mut s, &x, bottom, &xa, Some("score"));
    if let Some(v) = overall {
        let ox = x.at(v);
        // The label beside the line where centring it would run out of the chart.
        let anchor = if ox > w - 40.0 {
            "end"
        } else if ox < 40.0 {
            "start"
        } else {
            "middle"
        };
        let _ = write!(
            s,
            r#"<line x1="{ox:.1}" x2="{ox:.1}" y1="{:.1}" y2="{bottom:.1}" stroke="{INK}" stroke-width="1.3" stroke-dasharray="5 3"/><text x="{ox:.1}" y="{:.1}" text-anchor="{anchor}" font-size="10">overall {}</text>"#,
            top - 2.0,
            top - 4.0,
            fmt3(v)
        );
    }
    for (i, (g, label)) in groups.iter().zip(&labels).enumerate() {
        let cy = top + (i as f64 + 0.5) * row_h;
        let ci = g.ci95.map_or(String::new(), |(lo, hi)| {
            format!(" [{}, {}]", fmt3(lo), fmt3(hi))
        });
        let _ = write!(
            s,
            r#"<g><title>{}: weighted F1 {}{ci}, accuracy {}, {} cells</title><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            escape(&g.group),
            fmt3(g.weighted_f1),
            fmt3(g.accuracy),
            g.cells,
            left - 8.0,
            cy + 4.0,
            escape(label)
        );
        if let Some((lo, hi)) = g.ci95.filter(|(a, b)| a.is_finite() && b.is_finite()) {
            let (x0, x1) = (x.at(lo), x.at(hi));
            let _ = write!(
                s,
                r#"<path d="M{x0:.1},{:.1} L{x0:.1},{:.1} M{x0:.1},{cy:.1} L{x1:.1},{cy:.1} M{x1:.1},{:.1} L{x1:.1},{:.1}" fill="none" stroke="{BLUE}" stroke-width="1.8"/>"#,
                cy - 5.0,
                cy + 5.0,
                cy - 5.0,
                cy + 5.0
            );
        }
        if g.weighted_f1.is_finite() {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{cy:.1}" r="4.5" fill="{BLUE}"/>"#,
                x.at(g.weighted_f1)
            );
        }
        if g.accuracy.is_finite() {
            let _ = write!(
                s,
                r#"<path d="{}" fill="white" stroke="{VERMILLION}" stroke-width="1.6"/>"#,
                diamond(x.at(g.accuracy), cy, 4.5)
            );
        }
        s.push_str("</g>");
    }
    svg("group-scores", w, h, "Scores per group", &s)
}

/// Reliability diagrams side by side: per confidence bin, the accuracy as a bar and the mean
/// confidence against it as a point, the diagonal of perfect calibration, and below each the
/// number of cells per bin.
pub(crate) fn reliability(series: &[Reliability]) -> String {
    let (plot, panel_w, inner_left) = (230.0, 300.0, 52.0);
    let w = (series.len().max(1) as f64 * panel_w + 12.0).max(420.0);
    let (top, bottom) = (48.0, 48.0 + plot);
    let (hist_top, hist_bottom) = (bottom + 26.0, bottom + 70.0);
    let unit = Axis::new(0.0, 1.0, 5, 0.0);

    let mut s = String::new();
    for (k, r) in series.iter().enumerate() {
        let ox = 12.0 + k as f64 * panel_w;
        let x = Scale::new(&unit, ox + inner_left, ox + inner_left + plot);
        let y = Scale::new(&unit, bottom, top);
        // The series on one line, cut to the panel's width, and its ECE on the next: the
        // two never run into the next panel.
        let room = ((panel_w - 16.0) / (12.0 * 0.62)) as usize;
        let _ = write!(
            s,
            r#"<text class="panel-title" x="{:.1}" y="16" font-size="12" font-weight="bold"><title>{}</title>{}</text><text x="{:.1}" y="32" font-size="12">ECE {}</text>"#,
            ox,
            escape(&r.label),
            escape(&truncate(&r.label, room)),
            ox,
            fmt3(r.ece)
        );
        y_axis(&mut s, &x, &y, &unit, "accuracy");
        x_axis(&mut s, &x, bottom, &unit, None);
        let _ = write!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#777777" stroke-dasharray="4 3"/>"##,
            x.at(0.0),
            y.at(0.0),
            x.at(1.0),
            y.at(1.0)
        );
        let max_count = r.bins.iter().map(|b| b.count).max().unwrap_or(0).max(1);
        let hy = |c: usize| hist_bottom - (hist_bottom - hist_top) * c as f64 / max_count as f64;
        for b in &r.bins {
            let (x0, x1) = (x.at(b.lo.clamp(0.0, 1.0)), x.at(b.hi.clamp(0.0, 1.0)));
            let bw = (x1 - x0).max(0.5);
            let _ = write!(
                s,
                r#"<g><title>confidence {}–{}: {} cells, mean confidence {}, accuracy {}</title>"#,
                fmt3(b.lo),
                fmt3(b.hi),
                b.count,
                fmt3(b.confidence),
                fmt3(b.accuracy)
            );
            if b.accuracy.is_finite() {
                let ya = y.at(b.accuracy.clamp(0.0, 1.0));
                let _ = write!(
                    s,
                    r#"<rect x="{x0:.1}" y="{ya:.1}" width="{bw:.1}" height="{:.1}" fill="{SKY}" fill-opacity="0.6" stroke="white"/>"#,
                    bottom - ya
                );
                if b.confidence.is_finite() {
                    let (cx, yc) = (x.at(b.confidence), y.at(b.confidence.clamp(0.0, 1.0)));
                    let _ = write!(
                        s,
                        r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{ya:.1}" y2="{yc:.1}" stroke="{VERMILLION}" stroke-width="1.6"/><circle cx="{cx:.1}" cy="{ya:.1}" r="3.2" fill="{INK}"/>"#
                    );
                }
            }
            let _ = write!(
                s,
                r##"<rect x="{x0:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="#999999" stroke="white"/></g>"##,
                hy(b.count),
                hist_bottom - hy(b.count)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{max_count}</text><text x="{:.1}" y="{:.1}" text-anchor="end">0</text><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">cells</text>"#,
            x.r0 - 5.0,
            hist_top + 4.0,
            x.r0 - 5.0,
            hist_bottom + 3.5,
            x.r0 - 5.0,
            (hist_top + hist_bottom) / 2.0 + 3.5,
        );
        x_axis(
            &mut s,
            &x,
            hist_bottom,
            &unit,
            Some("confidence of the predicted class"),
        );
    }
    let keys = [
        (Key::Box(SKY), "accuracy in bin"),
        (Key::Dot(INK), "mean confidence"),
        (Key::Line(VERMILLION), "gap to the diagonal"),
        (Key::Dashed("#777777"), "perfect calibration"),
        (Key::Box("#999999"), "cells per bin"),
    ];
    let (markup, legend_h) = legend(12.0, hist_bottom + 52.0, w - 24.0, &keys);
    s.push_str(&markup);
    let h = hist_bottom + 52.0 + legend_h;
    svg("reliability", w, h, "Reliability diagram", &s)
}

/// The 20 coefficients of largest magnitude as horizontal bars from zero, coloured by family.
pub(crate) fn coefficients(coefs: &[Coefficient]) -> String {
    let mut top: Vec<&Coefficient> = coefs.iter().filter(|c| c.importance.is_finite()).collect();
    top.sort_by(|a, b| b.importance.abs().total_cmp(&a.importance.abs()));
    top.truncate(20);
    let family = |c: &Coefficient| {
        if c.family.is_empty() {
            "other".to_string()
        } else {
            c.family.clone()
        }
    };
    let mut families: Vec<String> = Vec::new();
    for c in &top {
        if !families.contains(&family(c)) {
            families.push(family(c));
        }
    }
    let colour = |c: &Coefficient| {
        let i = families.iter().position(|f| *f == family(c)).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let labels: Vec<String> = top
        .iter()
        .map(|c| {
            if c.channel.is_empty() || c.feature.contains(&c.channel) {
                truncate(&c.feature, 40)
            } else {
                truncate(&format!("{} · {}", c.feature, c.channel), 40)
            }
        })
        .collect();
    let label_w = labels
        .iter()
        .map(|l| text_width(l, FONT))
        .fold(0.0, f64::max);
    let left = label_w + 18.0;
    let plot_w = 320.0;
    let w = (left + plot_w + 20.0).max(360.0);

    let mut s = String::new();
    let heading = format!(
        "Top {} of {} features by |importance|",
        top.len(),
        coefs.len()
    );
    title(&mut s, &heading);
    let keys: Vec<(Key, &str)> = families
        .iter()
        .enumerate()
        .map(|(i, f)| (Key::Box(PALETTE[i % PALETTE.len()]), f.as_str()))
        .collect();
    let (markup, legend_h) = legend(12.0, 36.0, w - 24.0, &keys);
    s.push_str(&markup);

    let row_h = 18.0;
    let plot_top = 36.0 + legend_h + 6.0;
    let bottom = plot_top + top.len() as f64 * row_h;
    let h = bottom + 42.0;
    let xa = Axis::over(top.iter().map(|c| c.importance).chain([0.0]), 5);
    let x = Scale::new(&xa, left, left + plot_w);
    x_grid(&mut s, &x, plot_top, bottom, &xa);
    x_axis(&mut s, &x, bottom, &xa, Some("importance"));
    let x0 = x.at(0.0);
    for (i, (c, label)) in top.iter().zip(&labels).enumerate() {
        let cy = plot_top + (i as f64 + 0.5) * row_h;
        let xv = x.at(c.importance);
        let _ = write!(
            s,
            r#"<g><title>{}: {} ({}, {})</title><rect x="{:.1}" y="{:.1}" width="{:.1}" height="13" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text></g>"#,
            escape(&c.feature),
            fmt3(c.importance),
            escape(&family(c)),
            escape(if c.channel.is_empty() {
                "no channel"
            } else {
                &c.channel
            }),
            x0.min(xv),
            cy - 6.5,
            (xv - x0).abs().max(0.5),
            colour(c),
            left - 6.0,
            cy + 4.0,
            escape(label)
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{x0:.1}" x2="{x0:.1}" y1="{plot_top:.1}" y2="{bottom:.1}" stroke="{INK}"/>"#
    );
    svg("coefficients", w, h, &heading, &s)
}

/// Viridis at nine stops, interpolated; `t` in 0..=1 (the plate maps' scale).
pub(crate) fn viridis(t: f64) -> String {
    const STOPS: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 44.0, 122.0),
        (59.0, 81.0, 139.0),
        (44.0, 113.0, 142.0),
        (33.0, 144.0, 141.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    interpolate(&STOPS, t)
}

/// A well name as (row, column), 0-based: `B03` → (1, 2); `AA1` → (26, 0).
pub(crate) fn parse_well(w: &str) -> Option<(usize, usize)> {
    let w = w.trim();
    let letters: String = w.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let digits = &w[letters.len()..];
    if letters.is_empty() || letters.len() > 2 || digits.is_empty() {
        return None;
    }
    let row = letters
        .to_ascii_uppercase()
        .bytes()
        .fold(0usize, |r, b| r * 26 + (b - b'A') as usize + 1)
        - 1;
    let col: usize = digits.parse().ok()?;
    (col >= 1).then_some((row, col - 1))
}

/// The letters of row `r`: 0 → A, 26 → AA.
fn row_name(r: usize) -> String {
    if r < 26 {
        ((b'A' + r as u8) as char).to_string()
    } else {
        format!(
            "{}{}",
            row_name(r / 26 - 1),
            (b'A' + (r % 26) as u8) as char
        )
    }
}

/// A plate of wells coloured by a fraction on a fixed 0–1 viridis scale (so plates and
/// classes compare), grey where there is no value; rows are letters, columns numbers; each
/// well's tooltip gives its value, interval, label and cell count. `cell`: the well's size.
pub(crate) fn well_map(
    title: &str,
    wells: &[(String, f64, String)],
    cell: f64,
    bar_label: &str,
) -> String {
    let parsed: Vec<((usize, usize), f64, &str, &str)> = wells
        .iter()
        .filter_map(|(w, v, tip)| Some((parse_well(w)?, *v, w.as_str(), tip.as_str())))
        .collect();
    let rows = parsed.iter().map(|p| p.0 .0 + 1).max().unwrap_or(1);
    let cols = parsed.iter().map(|p| p.0 .1 + 1).max().unwrap_or(1);
    // Whole standard plates where the wells fit one.
    let (rows, cols) = [(2, 3), (4, 6), (8, 12), (16, 24), (32, 48)]
        .into_iter()
        .find(|&(r, c)| rows <= r && cols <= c)
        .unwrap_or((rows, cols));
    let font = (cell * 0.45).clamp(8.0, 11.0);
    let (left, top) = (8.0 + font * 1.6, 28.0 + font + 6.0);
    let grid_w = cols as f64 * cell;
    let bar_x = left + grid_w + 14.0;
    let w = (bar_x + 12.0 + 40.0).max(text_width(title, 12.0) + 20.0);
    let grid_h = rows as f64 * cell;
    let h = top + grid_h.max(60.0) + 10.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<text x="8" y="17" font-size="12" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for c in 0..cols {
        if cols > 24 && c % 2 == 1 {
            continue;
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="{font:.0}">{}</text>"#,
            left + (c as f64 + 0.5) * cell,
            top - 4.0,
            c + 1
        );
    }
    for r in 0..rows {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="{font:.0}">{}</text>"#,
            left - 4.0,
            top + (r as f64 + 0.5) * cell + font * 0.35,
            row_name(r)
        );
    }
    for r in 0..rows {
        for c in 0..cols {
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{cell:.1}" height="{cell:.1}" fill="#d0d0d0" stroke="white"/>"##,
                left + c as f64 * cell,
                top + r as f64 * cell
            );
        }
    }
    for ((r, c), v, name, tip) in &parsed {
        if *r >= rows || *c >= cols || !v.is_finite() {
            continue;
        }
        let _ = write!(
            s,
            r#"<rect class="well" x="{:.1}" y="{:.1}" width="{cell:.1}" height="{cell:.1}" fill="{}" stroke="white"><title>{}: {}</title></rect>"#,
            left + *c as f64 * cell,
            top + *r as f64 * cell,
            viridis(*v),
            escape(name),
            escape(tip)
        );
    }
    // The colour bar, 1 at the top.
    let bar_h = grid_h.max(60.0);
    for i in 0..20 {
        let t = 1.0 - (i as f64 + 0.5) / 20.0;
        let _ = write!(
            s,
            r#"<rect x="{bar_x:.1}" y="{:.1}" width="12" height="{:.2}" fill="{}"/>"#,
            top + i as f64 * bar_h / 20.0,
            bar_h / 20.0 + 0.3,
            viridis(t)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="10">1</text><text x="{:.1}" y="{:.1}" font-size="10">0</text><text x="{:.1}" y="{:.1}" font-size="10" transform="rotate(90 {:.1} {:.1})">{}</text>"#,
        bar_x + 15.0,
        top + 8.0,
        bar_x + 15.0,
        top + bar_h,
        bar_x + 28.0,
        top + 10.0,
        bar_x + 28.0,
        top + 10.0,
        escape(&truncate(bar_label, (bar_h / 6.0) as usize))
    );
    svg("well-map", w, h, title, &s)
}

/// Log-spaced ticks (1, 10, 100 … and 3 × those where few decades) over `lo..=hi` (> 0).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mut t = Vec::new();
    for e in a..=b {
        let d = 10f64.powi(e);
        t.push(d);
        if b - a <= 2 {
            t.push(3.0 * d);
        }
    }
    t.retain(|&v| v >= lo * 0.999 && v <= hi * 1.001);
    t
}

/// A dose label: 0.001, 0.03, 10, 3000, 1e5.
fn dose_label(v: f64) -> String {
    if !(1e-3..1e5).contains(&v) {
        format!("{v:.0e}")
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// A dose–response chart: each well's value against its dose on a log axis, with its
/// interval as a whisker where known; the fitted four-parameter logistic curve; the EC50 as
/// a dashed line with its interval as a band.
pub(crate) fn dose_response(fit: &crate::DoseFit, y_label: &str) -> String {
    let (w, plot_w, plot_h) = (460.0, 360.0, 220.0);
    let pts: Vec<&crate::DosePoint> = fit
        .points
        .iter()
        .filter(|p| p.dose > 0.0 && p.dose.is_finite() && p.value.is_finite())
        .collect();
    let fitted = fit.fitted() && fit.ec50 > 0.0 && fit.ec50.is_finite();
    let doses = pts.iter().map(|p| p.dose).chain(fitted.then_some(fit.ec50));
    let (mut lo, mut hi) = doses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), d| {
        (a.min(d), b.max(d))
    });
    if !lo.is_finite() {
        (lo, hi) = (1.0, 10.0);
    }
    let (lx0, lx1) = (lo.log10() - 0.3, hi.log10() + 0.3);
    let heading = format!(
        "{}{}",
        truncate(&fit.readout, 40),
        if fit.plate.is_empty() {
            String::new()
        } else {
            format!(" · {}", truncate(&fit.plate, 16))
        }
    );
    let mut s = String::new();
    title(&mut s, &heading);
    let has_ci = pts.iter().any(|p| p.ci95.is_some());
    let mut keys = vec![(
        if has_ci {
            Key::DotWithBar(BLUE)
        } else {
            Key::Dot(BLUE)
        },
        if has_ci {
            "well, with 95% interval"
        } else {
            "well"
        },
    )];
    if fitted {
        keys.push((Key::Line(VERMILLION), "4PL fit"));
        keys.push((Key::Dashed(INK), "EC50"));
    }
    let (markup, legend_h) = legend(12.0, 38.0, w - 24.0, &keys);
    s.push_str(&markup);
    let values = pts
        .iter()
        .flat_map(|p| {
            let (a, b) = p.ci95.unwrap_or((p.value, p.value));
            [p.value, a, b]
        })
        .chain(if fitted {
            vec![fit.bottom, fit.top]
        } else {
            vec![]
        });
    let ya = Axis::over(values, 4);
    let left = 30.0 + ya.label_width();
    let top = 38.0 + legend_h + 6.0;
    let xs = Scale {
        d0: lx0,
        d1: lx1,
        r0: left,
        r1: left + plot_w,
    };
    let y = Scale::new(&ya, top + plot_h, top);
    let bottom = top + plot_h;
    let h = bottom + 44.0;
    y_axis(&mut s, &xs, &y, &ya, y_label);
    let _ = write!(
        s,
        r#"<line x1="{:.1}" x2="{:.1}" y1="{bottom:.1}" y2="{bottom:.1}" stroke="{MUTED}"/>"#,
        xs.r0, xs.r1
    );
    for t in log_ticks(10f64.powf(lx0), 10f64.powf(lx1)) {
        let px = xs.at(t.log10());
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{bottom:.1}" y2="{:.1}" stroke="{MUTED}"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            bottom + 4.0,
            bottom + 15.0,
            dose_label(t)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">dose (log scale)</text>"#,
        (xs.r0 + xs.r1) / 2.0,
        bottom + 31.0
    );
    if fitted {
        if let Some((a, b)) = fit
            .ec50_ci95
            .filter(|(a, b)| *a > 0.0 && *b >= *a && b.is_finite())
        {
            let (x0, x1) = (xs.at(a.log10().max(lx0)), xs.at(b.log10().min(lx1)));
            let _ = write!(
                s,
                r##"<rect x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{plot_h:.1}" fill="#999999" fill-opacity="0.18"><title>EC50 95% interval</title></rect>"##,
                (x1 - x0).max(0.5)
            );
        }
        let ex = xs.at(fit.ec50.log10());
        let _ = write!(
            s,
            r#"<line x1="{ex:.1}" x2="{ex:.1}" y1="{top:.1}" y2="{bottom:.1}" stroke="{INK}" stroke-dasharray="5 3"/>"#
        );
        let curve = path((0..=120).map(|i| {
            let lx = lx0 + (lx1 - lx0) * i as f64 / 120.0;
            (xs.at(lx), y.at(fit.at(10f64.powf(lx))))
        }));
        let _ = write!(
            s,
            r#"<path d="{curve}" fill="none" stroke="{VERMILLION}" stroke-width="2"/>"#
        );
    }
    for p in &pts {
        let (px, py) = (xs.at(p.dose.log10()), y.at(p.value));
        let tip = format!(
            "{}: dose {}, {}{}",
            p.well,
            dose_label(p.dose),
            fmt3(p.value),
            p.ci95.map_or(String::new(), |(a, b)| format!(
                " [{}, {}]",
                fmt3(a),
                fmt3(b)
            ))
        );
        let _ = write!(s, "<g><title>{}</title>", escape(&tip));
        if let Some((a, b)) = p.ci95.filter(|(a, b)| a.is_finite() && b.is_finite()) {
            let (y0, y1) = (y.at(a), y.at(b));
            let _ = write!(
                s,
                r#"<path class="whisker" d="M{:.1},{y0:.1} L{:.1},{y0:.1} M{px:.1},{y0:.1} L{px:.1},{y1:.1} M{:.1},{y1:.1} L{:.1},{y1:.1}" stroke="{BLUE}" stroke-width="1.4" fill="none"/>"#,
                px - 3.0,
                px + 3.0,
                px - 3.0,
                px + 3.0
            );
        }
        let _ = write!(
            s,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{BLUE}" fill-opacity="0.8"/></g>"#
        );
    }
    svg(
        "dose-response",
        w,
        h,
        &format!("Dose response: {heading}"),
        &s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_have_round_ticks() {
        let a = Axis::new(0.0, 1.0, 5, 0.0);
        assert_eq!(a.ticks, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(
            a.ticks.iter().map(|&t| a.label(t)).collect::<Vec<_>>(),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        let a = Axis::new(0.62, 0.97, 5, 0.0);
        assert_eq!((a.lo, a.hi, a.label(a.ticks[1])), (0.6, 1.0, "0.7".into()));
        let a = Axis::new(0.61, 0.69, 4, 0.0);
        assert_eq!(a.ticks, vec![0.6, 0.62, 0.64, 0.66, 0.68, 0.7]);
        assert_eq!(a.label(0.62), "0.62");
        // Epochs: whole numbers only.
        let a = Axis::new(1.0, 3.0, 6, 1.0);
        assert!(a.ticks.iter().all(|t| t.fract() == 0.0), "{:?}", a.ticks);
        assert_eq!(a.decimals, 0);
        // Degenerate and empty ranges still give an axis.
        assert!(Axis::new(0.5, 0.5, 4, 0.0).ticks.len() >= 2);
        assert_eq!(Axis::over([f64::NAN], 4).ticks.first(), Some(&0.0));
        let neg = Axis::new(-0.3, 0.7, 5, 0.0);
        assert!(neg.ticks.contains(&0.0), "{:?}", neg.ticks);
        assert_eq!(neg.label(-0.2), "\u{2212}0.2");
    }

    #[test]
    fn paths_break_at_missing_points() {
        assert_eq!(
            path([(1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0), (5.0, 6.0)]),
            "M1.0,2.0 M3.0,4.0 L5.0,6.0"
        );
    }

    #[test]
    fn confusion_tolerates_ragged_input() {
        let s = confusion(&["a".into()], &[vec![3, 1], vec![2]]);
        assert!(s.contains("class 2"));
        assert!(s.contains(">–<"), "a missing count is shown as a dash");
    }
}
