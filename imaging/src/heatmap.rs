//! Plate heat maps as self-contained SVG (no scripts, fonts or files to ship beside it): one
//! square per well, a sequential colour scale with a colour bar, grey for wells without a value,
//! a red outline for flagged wells, and a tooltip (`<title>`) per well with its value. Plate
//! effects — edge wells, a bad column, a dispenser stripe — show at a glance in such a map and
//! hide in a table.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

pub use plateflow_contract::wells::{parse_well, well_name};

/// (rows, columns) of the plate to draw for these wells: the smallest of 96 (8×12), 384 (16×24)
/// and 1536 (32×48) that holds every well, or the wells' own extent beyond that. Never smaller
/// than 96: imaging screens run on 96-well plates or larger, and a partly imaged 96-well plate
/// should still be drawn whole (pass the shape yourself for 6- to 48-well plates).
pub fn plate_shape(wells: &[String]) -> (usize, usize) {
    let (mut rows, mut cols) = (0, 0);
    for (r, c) in wells.iter().filter_map(|w| parse_well(w)) {
        rows = rows.max(r + 1);
        cols = cols.max(c + 1);
    }
    [(8, 12), (16, 24), (32, 48)]
        .into_iter()
        .find(|&(r, c)| rows <= r && cols <= c)
        .unwrap_or((rows, cols))
}

/// Viridis (perceptually uniform, readable in grey and by most colour-blind readers), sampled
/// at nine stops and interpolated linearly; `t` in 0..=1.
fn colour(t: f64) -> String {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

/// Text for XML content and double-quoted attributes.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Four significant-looking digits for the usual ranges, scientific notation for the rest.
fn fmt_value(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

const MISSING: &str = "#d0d0d0";
const FLAG: &str = "#e00000";

/// The SVG text of a plate heat map of one metric. `values`: well name (any form
/// [`parse_well`] reads) → value, `None` or non-finite for no data (drawn grey); wells that do
/// not parse or fall outside `rows` × `cols` are left out; a well named twice keeps its last
/// value. `flagged` wells get a red outline. Colours run from the smallest to the largest
/// finite value (a single value gets the middle colour); the colour bar shows both ends.
pub fn plate_heatmap_svg(
    title: &str,
    metric: &str,
    values: &[(String, Option<f64>)],
    rows: usize,
    cols: usize,
    flagged: &[String],
) -> String {
    let cell: f64 = match cols {
        0..=12 => 32.0,
        13..=24 => 22.0,
        _ => 14.0,
    };
    let font = (cell * 0.42).clamp(7.0, 11.0);
    let (left, top) = (34.0, 52.0);
    let (grid_w, grid_h) = (cols as f64 * cell, rows as f64 * cell);
    let (width, height) = (left + grid_w + 110.0, top + grid_h + 30.0);
    let lookup: HashMap<(usize, usize), f64> = values
        .iter()
        .filter_map(|(w, v)| Some((parse_well(w)?, v.unwrap_or(f64::NAN))))
        .filter(|&((r, c), _)| r < rows && c < cols)
        .collect();
    let flagged: HashSet<(usize, usize)> = flagged
        .iter()
        .filter_map(|w| parse_well(w))
        .filter(|&(r, c)| r < rows && c < cols)
        .collect();
    let (lo, hi) = lookup
        .values()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let scale = |v: f64| {
        if hi > lo {
            (v - lo) / (hi - lo)
        } else {
            0.5
        }
    };

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="{font}">"#
    );
    let _ = write!(
        s,
        r#"<title>{t}: {m}</title><text x="{left}" y="18" font-size="14" font-weight="bold">{t}</text><text x="{left}" y="34" font-size="11">{m}</text>"#,
        t = escape(title),
        m = escape(metric),
    );
    for c in 0..cols {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + (c as f64 + 0.5) * cell,
            top - 4.0,
            c + 1
        );
    }
    for r in 0..rows {
        let name = well_name(r, 0);
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 4.0,
            top + (r as f64 + 0.5) * cell + font * 0.35,
            name.trim_end_matches(|c: char| c.is_ascii_digit())
        );
    }
    // One rect per well, with its tooltip.
    for r in 0..rows {
        for c in 0..cols {
            let (x, y) = (left + c as f64 * cell, top + r as f64 * cell);
            let v = lookup.get(&(r, c)).copied().filter(|v| v.is_finite());
            let fill = v.map_or(MISSING.to_string(), |v| colour(scale(v)));
            let tip = format!(
                "{} {metric}: {}{}",
                well_name(r, c),
                v.map_or("no data".to_string(), fmt_value),
                if flagged.contains(&(r, c)) {
                    " (flagged)"
                } else {
                    ""
                }
            );
            let _ = write!(
                s,
                r##"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#ffffff" stroke-width="1"><title>{}</title></rect>"##,
                escape(&tip)
            );
        }
    }
    // Outlines after all wells, so no neighbour is painted over them; they let the mouse through
    // to the well's tooltip.
    let mut marks: Vec<_> = flagged.iter().copied().collect();
    marks.sort_unstable();
    for (r, c) in marks {
        let inset = 1.5;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{FLAG}" stroke-width="2.5" pointer-events="none"/>"#,
            left + c as f64 * cell + inset,
            top + r as f64 * cell + inset,
            cell - 2.0 * inset,
            cell - 2.0 * inset,
        );
    }
    // Colour bar: largest value at the top.
    let bx = left + grid_w + 16.0;
    let steps = 32;
    for i in 0..steps {
        let t = 1.0 - (i as f64 + 0.5) / steps as f64;
        let _ = write!(
            s,
            r#"<rect x="{bx}" y="{}" width="14" height="{}" fill="{}"/>"#,
            top + i as f64 * grid_h / steps as f64,
            grid_h / steps as f64 + 0.5,
            colour(t)
        );
    }
    let tx = bx + 18.0;
    if lo.is_finite() {
        let _ = write!(
            s,
            r#"<text x="{tx}" y="{}">max {}</text><text x="{tx}" y="{}">min {}</text>"#,
            top + font,
            fmt_value(hi),
            top + grid_h,
            fmt_value(lo)
        );
    } else {
        let _ = write!(s, r#"<text x="{tx}" y="{}">no data</text>"#, top + font);
    }
    let ly = top + grid_h + 18.0;
    let _ = write!(
        s,
        r##"<rect x="{left}" y="{}" width="10" height="10" fill="{MISSING}"/><text x="{}" y="{ly}">no data</text><rect x="{}" y="{}" width="10" height="10" fill="none" stroke="{FLAG}" stroke-width="2"/><text x="{}" y="{ly}">flagged ({})</text>"##,
        ly - 9.0,
        left + 14.0,
        left + 80.0,
        ly - 9.0,
        left + 94.0,
        flagged.len()
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wells_parse_in_every_common_form() {
        for s in ["A01", "A1", "a01", "A-01", "A_1", " A 01 ", "a001"] {
            assert_eq!(parse_well(s), Some((0, 0)), "{s}");
        }
        assert_eq!(parse_well("h12"), Some((7, 11)));
        assert_eq!(parse_well("B07"), Some((1, 6)));
        assert_eq!(parse_well("P24"), Some((15, 23)));
        assert_eq!(parse_well("AF48"), Some((31, 47)));
        assert_eq!(parse_well("aa1"), Some((26, 0)));
        for s in [
            "", "12", "A", "A0", "A-", "A01x", "A+1", "ABC1", "A--1", "1A", "A1.5",
        ] {
            assert_eq!(parse_well(s), None, "{s}");
        }
    }

    #[test]
    fn well_names_round_trip() {
        assert_eq!(well_name(0, 0), "A01");
        assert_eq!(well_name(1, 6), "B07");
        assert_eq!(well_name(25, 9), "Z10");
        assert_eq!(well_name(26, 0), "AA01");
        assert_eq!(well_name(31, 47), "AF48");
        assert_eq!(well_name(0, 99), "A100");
        for r in 0..40 {
            for c in 0..48 {
                assert_eq!(parse_well(&well_name(r, c)), Some((r, c)));
            }
        }
    }

    #[test]
    fn plate_shape_from_wells() {
        let s = |w: &[&str]| plate_shape(&w.iter().map(|w| w.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["A01", "H12"]), (8, 12));
        assert_eq!(s(&["A1", "C4"]), (8, 12));
        assert_eq!(s(&["I01"]), (16, 24));
        assert_eq!(s(&["A13"]), (16, 24));
        assert_eq!(s(&["AF48", "junk"]), (32, 48));
        assert_eq!(s(&[]), (8, 12));
    }

    /// A minimal XML well-formedness check, enough for what this module writes: tags nest and
    /// close, attribute values are quoted, `&` only starts an entity, no `<` inside text.
    fn check_xml(s: &str) -> Result<(), String> {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = s.trim_end();
        let entity_ok = |t: &str| {
            t.match_indices('&').all(|(i, _)| {
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| t[i..].starts_with(e))
            })
        };
        while !rest.is_empty() {
            let open = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..open];
            if !entity_ok(text) || text.contains('>') {
                return Err(format!("bad text {text:?}"));
            }
            if open == rest.len() {
                break;
            }
            if stack.is_empty() && !text.trim().is_empty() {
                return Err(format!("text outside the root: {text:?}"));
            }
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(top) if top == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                if stack.is_empty() && !rest.trim().is_empty() {
                    return Err("content after the root element".into());
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let (name, mut attrs) = (&body[..name_end], body[name_end..].trim());
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
                return Err(format!("bad tag name in <{tag}>"));
            }
            while !attrs.is_empty() {
                let eq = attrs
                    .find("=\"")
                    .ok_or(format!("unquoted attribute in <{tag}>"))?;
                let key = &attrs[..eq];
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(format!("bad attribute name {key:?}"));
                }
                let vend = attrs[eq + 2..].find('"').ok_or("unterminated value")? + eq + 2;
                let value = &attrs[eq + 2..vend];
                if value.contains('<') || !entity_ok(value) {
                    return Err(format!("bad attribute value {value:?}"));
                }
                attrs = attrs[vend + 1..].trim_start();
            }
            if !self_closing {
                stack.push(name);
            }
        }
        if stack.is_empty() {
            Ok(())
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    #[test]
    fn the_checker_catches_broken_xml() {
        assert!(check_xml(r#"<svg a="1"><rect/><text>x &amp; y</text></svg>"#).is_ok());
        for bad in [
            "<svg><rect></svg>",
            "<svg><text>a & b</text></svg>",
            r#"<svg a=1></svg>"#,
            "<svg><text>a < b</text></svg>",
            "<svg></svg><svg></svg>",
            "<svg>",
        ] {
            assert!(check_xml(bad).is_err(), "{bad}");
        }
    }

    fn plate96() -> Vec<(String, Option<f64>)> {
        (0..96)
            .map(|i| {
                let v = match i {
                    5 => None,
                    6 => Some(f64::NAN),
                    _ => Some(i as f64 * 0.5),
                };
                (well_name(i / 12, i % 12), v)
            })
            .collect()
    }

    #[test]
    fn one_rect_and_tooltip_per_well_in_well_formed_svg() {
        for (rows, cols) in [(8, 12), (16, 24), (32, 48)] {
            let svg = plate_heatmap_svg(
                "Plate P1 <\"focus\"> & more",
                "Focus<Score>",
                &plate96(),
                rows,
                cols,
                &["A02".into(), "b-3".into(), "Z99".into()],
            );
            check_xml(&svg).unwrap_or_else(|e| panic!("{rows}x{cols}: {e}\n{svg}"));
            // Only well rects have children: one title each.
            assert_eq!(svg.matches("</rect>").count(), rows * cols);
            assert_eq!(svg.matches("<title>").count(), rows * cols + 1);
            assert_eq!(
                svg.matches(&format!(r#"stroke="{FLAG}" stroke-width="2.5""#))
                    .count(),
                2
            );
            assert!(svg.contains("A06 Focus&lt;Score&gt;: no data"));
            assert!(svg.contains("A07 Focus&lt;Score&gt;: no data"));
            assert!(svg.contains("A02 Focus&lt;Score&gt;: 0.5000 (flagged)"));
            assert!(svg.contains("B03 Focus&lt;Score&gt;: 7.0000 (flagged)"));
            assert!(svg.contains("max 47.5000") && svg.contains("min 0.0000"));
            assert!(svg.contains("Plate P1 &lt;&quot;focus&quot;&gt; &amp; more"));
            // Wells outside the 96 values are grey; the lowest value is viridis' dark end.
            assert!(svg.contains(r##"fill="#440154""##));
            if rows > 8 {
                assert!(svg.contains("I01 Focus&lt;Score&gt;: no data"));
            }
        }
        let svg = plate_heatmap_svg("t", "m", &plate96(), 32, 48, &[]);
        assert!(svg.contains(">AF<") && svg.contains(">48<"));
    }

    #[test]
    fn empty_and_constant_plates() {
        let svg = plate_heatmap_svg("t", "m", &[], 8, 12, &[]);
        check_xml(&svg).unwrap();
        assert_eq!(svg.matches(&format!(r#"fill="{MISSING}""#)).count(), 96 + 1);
        assert!(svg.contains(">no data<"));
        let same: Vec<_> = (0..3).map(|i| (well_name(0, i), Some(2.0))).collect();
        let svg = plate_heatmap_svg("t", "m", &same, 8, 12, &[]);
        assert_eq!(
            svg.matches(&format!(r#"fill="{}""#, colour(0.5))).count(),
            3
        );
    }
}
