//! Segmentation quality at a glance: a field's grey image with nucleus and cell outlines drawn
//! on it (an RGB PNG a person can open), and a per-plate summary of the label images (objects
//! per field, object areas, fraction cut by the field's edge). Bad thresholds, merged or
//! fragmented nuclei show in these long before they show in a hit list.

use crate::segment::Labels;
use crate::GrayImage;

/// Nucleus outlines: yellow stands out on a grey image and from the cell colour.
const NUCLEUS: [u8; 3] = [255, 255, 0];
/// Cell outlines: magenta, distinct from yellow and from grey.
const CELL: [u8; 3] = [255, 0, 255];

/// The grey image, contrast-stretched between its 1st and 99.8th percentiles (so a few hot
/// pixels do not leave the cells black), with the boundary pixels of each nucleus in yellow and
/// of each cell in magenta (nuclei drawn last, on top). An image longer than `max_side` (0: no
/// limit) is shrunk by an integer factor, a block taking an outline's colour if any of its
/// pixels is one, so outlines stay visible. Errors name the sizes when a label image and the
/// image differ.
pub fn outlines_png(
    img: &GrayImage,
    nuclei: &Labels,
    cells: Option<&Labels>,
    max_side: u32,
) -> Result<Vec<u8>, String> {
    let (w, h) = (img.width as usize, img.height as usize);
    if img.data.len() != w * h {
        return Err(format!(
            "image is {}x{} but holds {} pixels",
            img.width,
            img.height,
            img.data.len()
        ));
    }
    for (what, l) in [("nuclei", Some(nuclei)), ("cells", cells)] {
        let Some(l) = l else { continue };
        if (l.width, l.height) != (img.width, img.height) || l.data.len() != w * h {
            return Err(format!(
                "{what} label image is {}x{} ({} labels) but the image is {}x{}",
                l.width,
                l.height,
                l.data.len(),
                img.width,
                img.height
            ));
        }
    }
    let (lo, mut hi) = percentiles(&img.data);
    if hi <= lo {
        // Nearly all pixels at one value (a sparse 16-bit field): stretch to the brightest
        // instead of turning every other pixel white.
        hi = img.data.iter().copied().max().unwrap_or(lo);
    }
    let scale = 255.0 / (hi - lo).max(1) as f64;
    let grey: Vec<u8> = img
        .data
        .iter()
        .map(|&v| ((f64::from(v.saturating_sub(lo)) * scale).round()).min(255.0) as u8)
        .collect();
    // 0: none, 1: cell outline, 2: nucleus outline (the larger wins in a block).
    let mut mark = vec![0u8; w * h];
    for (l, m) in [(cells, 1), (Some(nuclei), 2)] {
        if let Some(l) = l {
            for (i, b) in boundary(l).into_iter().enumerate() {
                if b {
                    mark[i] = m;
                }
            }
        }
    }
    let longest = img.width.max(img.height).max(1);
    let f = if max_side == 0 {
        1
    } else {
        longest.div_ceil(max_side)
    } as usize;
    let (ow, oh) = (w.div_ceil(f), h.div_ceil(f));
    let mut rgb = Vec::with_capacity(ow * oh * 3);
    for by in 0..oh {
        for bx in 0..ow {
            let (mut sum, mut n, mut m) = (0u32, 0u32, 0u8);
            for y in by * f..((by + 1) * f).min(h) {
                for x in bx * f..((bx + 1) * f).min(w) {
                    sum += u32::from(grey[y * w + x]);
                    n += 1;
                    m = m.max(mark[y * w + x]);
                }
            }
            let g = (sum + n / 2) / n.max(1);
            rgb.extend_from_slice(&match m {
                2 => NUCLEUS,
                1 => CELL,
                _ => [g as u8; 3],
            });
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, ow as u32, oh as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .and_then(|mut wr| wr.write_image_data(&rgb))
        .map_err(|e| format!("cannot encode the outline PNG: {e}"))?;
    Ok(out)
}

/// The 1st and 99.8th percentile values (nearest rank), by a histogram so 16-bit images cost
/// one pass and no sort.
fn percentiles(data: &[u16]) -> (u16, u16) {
    let mut hist = vec![0u64; 1 << 16];
    for &v in data {
        hist[v as usize] += 1;
    }
    let n = data.len().max(1) as f64;
    let at = |p: f64| {
        let rank = ((n - 1.0) * p).round() as u64;
        let mut seen = 0;
        hist.iter()
            .position(|&c| {
                seen += c;
                seen > rank
            })
            .unwrap_or(0) as u16
    };
    (at(0.01), at(0.998))
}

/// Object pixels whose label differs from one of their 4-neighbours inside the image (another
/// object or background); the image's own edge is not drawn, so cut objects show open.
fn boundary(l: &Labels) -> Vec<bool> {
    let (w, h) = (l.width as usize, l.height as usize);
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let v = l.data[y * w + x];
            out[y * w + x] = v != 0
                && ((x > 0 && l.data[y * w + x - 1] != v)
                    || (x + 1 < w && l.data[y * w + x + 1] != v)
                    || (y > 0 && l.data[(y - 1) * w + x] != v)
                    || (y + 1 < h && l.data[(y + 1) * w + x] != v));
        }
    }
    out
}

/// Five-number summary of a distribution: enough to spot a plate whose segmentation drifted
/// without shipping every value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quantiles {
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
}

impl Quantiles {
    /// Linear interpolation between closest ranks (numpy's default); all NaN when empty (a
    /// plate without objects has no area to report: JSON writes `null`, not a size of 0).
    fn of(mut v: Vec<f64>) -> Quantiles {
        if v.is_empty() {
            return Quantiles {
                min: f64::NAN,
                p25: f64::NAN,
                median: f64::NAN,
                p75: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let r = p * (v.len() - 1) as f64;
            let (i, t) = (r.floor() as usize, r.fract());
            v[i] + (v[(i + 1).min(v.len() - 1)] - v[i]) * t
        };
        Quantiles {
            min: v[0],
            p25: q(0.25),
            median: q(0.5),
            p75: q(0.75),
            max: v[v.len() - 1],
        }
    }
}

/// A plate's segmentation in a few numbers: too few or too many objects per field, odd areas
/// (merged or fragmented nuclei) or many objects cut by the field's edge all flag a problem.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationSummary {
    pub fields: usize,
    pub objects_per_field: Quantiles,
    /// Object areas in pixels, over all fields.
    pub area: Quantiles,
    /// Objects with a pixel on the field's edge, over all objects (NaN when there are none).
    pub touching_border_fraction: f64,
}

/// Per object of a label image (1..=count): its area, centre and whether it touches the
/// image border.
pub fn objects(labels: &Labels) -> Vec<(usize, f64, f64, bool)> {
    let w = labels.width as usize;
    let h = labels.height as usize;
    let mut acc = vec![(0usize, 0f64, 0f64, false); labels.count as usize + 1];
    for (i, &l) in labels.data.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let (x, y) = (i % w, i / w);
        let a = &mut acc[l as usize];
        a.0 += 1;
        a.1 += x as f64;
        a.2 += y as f64;
        a.3 |= x == 0 || y == 0 || x + 1 == w || y + 1 == h;
    }
    acc.into_iter()
        .skip(1)
        .map(|(n, sx, sy, b)| {
            let n1 = n.max(1) as f64;
            (n, sx / n1, sy / n1, b)
        })
        .collect()
}

/// Summarises a plate's fields from each field's objects, (area in pixels, whether it
/// touches the border), as [`objects`] gives them: a task need not keep every field's label
/// image until it ends (a 384-well plate of 9 large fields held tens of GB). Objects of area
/// 0 (gaps in the numbering) are not objects.
pub fn summarise(per_field: &[Vec<(usize, bool)>]) -> SegmentationSummary {
    let (mut per, mut areas, mut touching) = (Vec::new(), Vec::new(), 0usize);
    for objects in per_field {
        let present = objects.iter().filter(|(a, _)| *a > 0);
        per.push(present.clone().count() as f64);
        touching += present.clone().filter(|(_, edge)| *edge).count();
        areas.extend(present.map(|(a, _)| *a as f64));
    }
    SegmentationSummary {
        fields: per_field.len(),
        objects_per_field: Quantiles::of(per),
        touching_border_fraction: if areas.is_empty() {
            f64::NAN
        } else {
            touching as f64 / areas.len() as f64
        },
        area: Quantiles::of(areas),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(width: u32, height: u32, data: Vec<u32>) -> Labels {
        let count = data.iter().copied().max().unwrap_or(0);
        Labels {
            width,
            height,
            data,
            count,
        }
    }

    /// Decodes an RGB PNG: (width, height, pixels).
    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
        let dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let px = buf[..info.buffer_size()]
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        (info.width, info.height, px)
    }

    /// A 16-bit 12x8 ramp with two touching 5x5 squares (labels 1 and 2) side by side at
    /// x 1..=5 and 6..=10, y 1..=5.
    fn scene() -> (GrayImage, Labels) {
        let (w, h) = (12u32, 8u32);
        let data = (0..w * h).map(|i| (i * 500) as u16).collect();
        let img = GrayImage {
            width: w,
            height: h,
            bit_depth: 16,
            data,
        };
        let mut l = vec![0u32; (w * h) as usize];
        for y in 1..=5 {
            for x in 1..=10 {
                l[(y * w + x) as usize] = if x <= 5 { 1 } else { 2 };
            }
        }
        (img, labels(w, h, l))
    }

    #[test]
    fn overlay_outlines_touching_squares() {
        let (img, nuclei) = scene();
        let (w, h, px) = decode(&outlines_png(&img, &nuclei, None, 0).unwrap());
        assert_eq!((w, h), (12, 8));
        let at = |x: u32, y: u32| px[(y * w + x) as usize];
        // The shared edge is outlined on both sides, as are the outer edges.
        assert_eq!(at(5, 3), NUCLEUS);
        assert_eq!(at(6, 3), NUCLEUS);
        assert_eq!(at(1, 1), NUCLEUS);
        // Inside pixels and background keep their grey.
        for (x, y) in [(3, 3), (8, 3), (0, 0), (11, 7)] {
            let [r, g, b] = at(x, y);
            assert!(r == g && g == b, "({x},{y}) is {:?}", at(x, y));
        }
        // Contrast stretched: the ramp's ends are black and white.
        assert_eq!(at(0, 0), [0; 3]);
        assert_eq!(at(11, 7), [255; 3]);
        // A one-pixel cell in the corner is drawn magenta; nuclei stay yellow.
        let mut c = vec![0u32; 96];
        c[7 * 12] = 3;
        let cells = labels(12, 8, c);
        let (_, _, px) = decode(&outlines_png(&img, &nuclei, Some(&cells), 0).unwrap());
        assert_eq!(px[7 * 12], CELL);
        assert_eq!(px[(3 * 12 + 5) as usize], NUCLEUS);
    }

    #[test]
    fn overlay_downsampling_keeps_outlines() {
        let (img, nuclei) = scene();
        // Longest side 12, at most 5: factor 3, 4x3 output.
        let (w, h, px) = decode(&outlines_png(&img, &nuclei, None, 5).unwrap());
        assert_eq!((w, h), (4, 3));
        // Block (1,1) covers x 3..=5, y 3..=5: holds the shared edge at x 5.
        assert_eq!(px[(w + 1) as usize], NUCLEUS);
        // Block (0,2) covers y 6..=7, x 0..=2: background, grey.
        let [r, g, b] = px[(2 * w) as usize];
        assert!(r == g && g == b);
    }

    #[test]
    fn overlay_size_mismatch_is_an_error() {
        let (img, _) = scene();
        let small = labels(4, 4, vec![0; 16]);
        let e = outlines_png(&img, &small, None, 0).unwrap_err();
        assert!(e.contains("4x4") && e.contains("12x8"), "{e}");
        let (_, nuclei) = scene();
        let e = outlines_png(&img, &nuclei, Some(&small), 0).unwrap_err();
        assert!(e.starts_with("cells"), "{e}");
    }

    #[test]
    fn overlay_summary_figures() {
        // Field a (4x4): object 1 of 4 pixels in the middle, object 3 of 2 pixels on the edge
        // (label 2 unused). Field b: empty. Field c: one object of 16 pixels, on the edge.
        #[rustfmt::skip]
        let a = labels(4, 4, vec![
            0, 0, 0, 0,
            0, 1, 1, 0,
            0, 1, 1, 0,
            3, 3, 0, 0,
        ]);
        let b = labels(4, 4, vec![0; 16]);
        let c = labels(4, 4, vec![5; 16]);
        let fields = |ls: &[&Labels]| -> Vec<Vec<(usize, bool)>> {
            ls.iter()
                .map(|l| objects(l).into_iter().map(|o| (o.0, o.3)).collect())
                .collect()
        };
        let s = summarise(&fields(&[&a, &b, &c]));
        assert_eq!(s.fields, 3);
        let per = Quantiles {
            min: 0.0,
            p25: 0.5,
            median: 1.0,
            p75: 1.5,
            max: 2.0,
        };
        assert_eq!(s.objects_per_field, per);
        let area = Quantiles {
            min: 2.0,
            p25: 3.0,
            median: 4.0,
            p75: 10.0,
            max: 16.0,
        };
        assert_eq!(s.area, area);
        assert!((s.touching_border_fraction - 2.0 / 3.0).abs() < 1e-12);
        // No fields, or fields without objects: no sizes (NaN, `null` in JSON), not 0.
        let empty = summarise(&[]);
        assert_eq!(empty.fields, 0);
        assert!(empty.area.median.is_nan() && empty.objects_per_field.median.is_nan());
        assert!(empty.touching_border_fraction.is_nan());
        let blank = labels(3, 2, vec![0; 6]);
        let none = summarise(&fields(&[&blank, &blank]));
        assert_eq!(none.objects_per_field.median, 0.0);
        assert!(none.area.median.is_nan() && none.touching_border_fraction.is_nan());
    }
}
