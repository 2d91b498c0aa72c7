//! Illumination correction per plate and channel, in the manner of CellProfiler's
//! CorrectIlluminationCalculate/Apply: a robust average of every image of one channel across a
//! plate is smoothed into a multiplicative field (median 1), and each image is divided by it,
//! so an object's intensity no longer depends on where in the field of view it sits.
//!
//! A camera adds an offset to every pixel (many sCMOS cameras 100 counts) that is not light,
//! so vignetting does not dim it. Given as `dark`, it is taken off before the field is
//! estimated and before each image is divided (as BaSiC's darkfield is); divided along with
//! the light, it would come out of a dim corner boosted, and every object there too bright.

use crate::resample::resize;
use crate::GrayImage;
use std::path::Path;

/// Images per median group (see [`robust_average`]): enough for a robust median, few enough
/// that selecting it per pixel stays cheap.
const GROUP_MAX_IMAGES: usize = 64;

/// Robust averaging and smoothing happen on a grid whose shorter side is about this many
/// pixels: the field is smooth, so nothing is lost, and the blur costs the same for any camera.
const GRID_SHORT_SIDE: usize = 128;

/// The field never falls below this, so dividing by it is safe and a dark corner (or a pixel
/// the optics never light) is boosted at most 20-fold instead of to infinity.
const MIN_FIELD: f32 = 0.05;

/// A field value of 1.0 is stored as 10000 in the 16-bit TIFF: four decimals of resolution
/// (round trip within 5e-5) up to 6.5535, far above any field normalised to median 1, and a
/// file Fiji opens as is (divide by 10000 there to see the factor).
pub const TIFF_SCALE: f32 = 10_000.0;

/// A smooth multiplicative illumination field, normalised so its median is 1.0: dividing an
/// image by it keeps the image's typical intensity and removes vignetting and uneven lighting.
#[derive(Debug, Clone, PartialEq)]
pub struct IlluminationField {
    pub width: u32,
    pub height: u32,
    /// Row-major, `width * height` factors, each at least 0.05.
    pub values: Vec<f32>,
    /// The camera's offset in counts (what a pixel reads with no light), taken off every image
    /// before it is divided; 0 when not given.
    pub dark: f32,
    /// The background light where the field is 1.0, in counts above `dark`: the level the
    /// field was normalised by (0 for a field read from a TIFF alone).
    pub light: f32,
}

/// The illumination field of one channel on one plate, from all its images (same size).
///
/// Per-pixel median of the images (for more than 64, see [`robust_average`]): with cells
/// placed at random and covering under half of any pixel's images, the median at each pixel is
/// the lit background, so the average follows the illumination and not the objects. That is
/// block-averaged down to a grid whose shorter side is ~128 px, blurred by a Gaussian of
/// `smoothing` pixels (sigma, in full-resolution pixels; default 1/20 of the shorter side),
/// upsampled bilinearly, normalised to median 1 and clamped to ≥ 0.05.
///
/// The default sigma: CellProfiler's automatic filter is ~1/40 of the side, but plate-wise
/// pipelines often blur far more (large median filters, or a polynomial fit). Sigma = 1/20
/// (full width at half maximum ~1/8.5 of the side, 120 px on a 1024 px camera) spans many
/// nuclei, so single cells and clumps do not imprint, yet still follows a vignetting falloff,
/// which changes over half the field.
///
/// `dark` (the camera's offset in counts, 0 if none) is taken off the average first, so the
/// field is the light's alone.
///
/// Errors (naming the cause) when `images` is empty, sizes differ, images are empty, the
/// smoothing or `dark` is negative or not finite, or the images are blank (median field 0:
/// nothing to divide by), or `dark` reaches the median background (no light left).
pub fn estimate(
    images: &[GrayImage],
    smoothing: Option<f64>,
    dark: f64,
) -> Result<IlluminationField, String> {
    estimate_by(images.len(), |i| Ok(images[i].clone()), smoothing, dark)
}

/// [`estimate`] from `count` images that `load` reads one at a time: at most one group of
/// [`GROUP_MAX_IMAGES`] is held at once, so a plate of thousands of camera images (12 GB for
/// 1,536 of 2048² at 16 bits) costs the memory of 64. `load`'s error (naming the file) is
/// returned as is; an image whose size differs from the first is an error naming both
/// positions (the caller, knowing the files, can check sizes as it loads).
pub fn estimate_by(
    count: usize,
    mut load: impl FnMut(usize) -> Result<GrayImage, String>,
    smoothing: Option<f64>,
    dark: f64,
) -> Result<IlluminationField, String> {
    if !dark.is_finite() || dark < 0.0 {
        return Err(format!(
            "illumination: dark {dark} is not a camera offset ≥ 0 counts"
        ));
    }
    let dark = dark as f32;
    if count == 0 {
        return Err("illumination: no images to estimate a field from".into());
    }
    let first = load(0)?;
    let (width, height) = (first.width, first.height);
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 {
        return Err(format!("illumination: images are {width}x{height}"));
    }
    let mut first = Some(first);
    let mut load_checked = |i: usize| -> Result<GrayImage, String> {
        let img = match (i, first.take()) {
            (0, Some(img)) => img,
            _ => load(i)?,
        };
        if (img.width, img.height) != (width, height) || img.data.len() != w * h {
            return Err(format!(
                "illumination: image {i} is {}x{} ({} values), image 0 is {width}x{height}",
                img.width,
                img.height,
                img.data.len()
            ));
        }
        Ok(img)
    };
    let short = w.min(h) as f64;
    let sigma = smoothing.unwrap_or(short / 20.0);
    if !sigma.is_finite() || sigma < 0.0 {
        return Err(format!("illumination: smoothing sigma {sigma} is not ≥ 0"));
    }

    let mut average = robust_average(count, w * h, &mut load_checked)?;
    if dark > 0.0 {
        let background = median_f32(&average);
        if background <= dark {
            return Err(format!(
                "illumination: dark {dark} is at or above the images' median background \
                 ({background} counts), so no light is left to estimate a field from: dark is \
                 the camera's offset, what a pixel reads with no light (an image taken with \
                 the shutter closed shows it)"
            ));
        }
        average.iter_mut().for_each(|v| *v = (*v - dark).max(0.0));
    }

    let scale = (GRID_SHORT_SIDE as f64 / short).min(1.0);
    let (sw, sh) = (
        ((w as f64 * scale).round() as usize).max(1),
        ((h as f64 * scale).round() as usize).max(1),
    );
    let mut small = resize(&average, w, h, sw, sh);
    // Past the grid's own size a wider blur only flattens the field towards its edge fits.
    let small_sigma = (sigma * scale).min(sw.min(sh) as f64) as f32;
    blur(&mut small, sw, sh, small_sigma);
    let mut values = resize(&small, sw, sh, w, h);

    let median = median_f32(&values);
    if median <= 0.0 || !median.is_finite() {
        return Err("illumination: the images' median is 0 over most of the field, so there is no background light to divide by (a channel of masks or thresholded images? leave it out with `channels:`)".into());
    }
    for v in &mut values {
        *v = (*v / median).max(MIN_FIELD);
    }
    Ok(IlluminationField {
        width,
        height,
        values,
        dark,
        light: median,
    })
}

/// `img` less the field's `dark` offset (not below 0), divided by the field, rounded; same
/// size and bit depth. Errors when the sizes differ.
///
/// Values are *not* clamped to the bit depth's top: a bright nucleus in a dim corner of an
/// 8-bit image (raw 200, field 0.6) becomes 333, which the `u16` storage holds, and intensity
/// features (scaled by the bit depth, as CellProfiler does) read it as 1.31 instead of a
/// saturated 1.0 that would erase the difference between it and a brighter one. This is
/// CellProfiler's CorrectIlluminationApply with "set values greater than 1 to 1" off; its
/// default keeps them by dividing by a field rescaled to ≥ 1, which dims the whole image
/// instead. Only a 16-bit image pushed past 65,535 saturates (a 12- or 14-bit camera in a
/// 16-bit file never is: the field boosts at most 20-fold); the `illumination` step counts
/// where that happens on a plate.
pub fn apply(img: &GrayImage, field: &IlluminationField) -> Result<GrayImage, String> {
    let n = img.width as usize * img.height as usize;
    if (img.width, img.height) != (field.width, field.height)
        || img.data.len() != n
        || field.values.len() != n
    {
        return Err(format!(
            "illumination: image is {}x{}, field is {}x{}",
            img.width, img.height, field.width, field.height
        ));
    }
    let data = img
        .data
        .iter()
        .zip(&field.values)
        .map(|(&v, &f)| {
            let light = (f32::from(v) - field.dark).max(0.0);
            (light / f).round().clamp(0.0, f32::from(u16::MAX)) as u16
        })
        .collect();
    Ok(GrayImage { data, ..*img })
}

impl IlluminationField {
    /// Writes the field as a 16-bit grey TIFF of `value × TIFF_SCALE` (see [`TIFF_SCALE`]), so
    /// it can be kept with the plate's results and inspected in Fiji.
    pub fn to_tiff(&self, path: &Path) -> Result<(), String> {
        let data: Vec<u16> = self
            .values
            .iter()
            .map(|v| (v * TIFF_SCALE).round().clamp(0.0, f32::from(u16::MAX)) as u16)
            .collect();
        crate::write::write_tiff_u16(path, self.width, self.height, &data)
            .map_err(|e| e.to_string())
    }

    /// Reads a field written by [`Self::to_tiff`]; values are clamped to ≥ 0.05 so a hand-edited
    /// file cannot make [`apply`] divide by zero. The TIFF holds the factors only: `dark` and
    /// `light` are 0 (the caller sets `dark` from where it kept it). Errors name the file.
    pub fn from_tiff(path: &Path) -> Result<Self, String> {
        let img = crate::read_image(path).map_err(|e| e.to_string())?;
        if img.bit_depth != 16 {
            return Err(format!(
                "illumination field {} is {}-bit, not a 16-bit field TIFF",
                path.display(),
                img.bit_depth
            ));
        }
        Ok(Self {
            width: img.width,
            height: img.height,
            values: img
                .data
                .iter()
                .map(|&v| (f32::from(v) / TIFF_SCALE).max(MIN_FIELD))
                .collect(),
            dark: 0.0,
            light: 0.0,
        })
    }

    /// An 8-bit grey PNG of the field stretched from its minimum (black) to maximum (white),
    /// longer side at most 256 px: a small picture for a report (a flat field is mid-grey).
    pub fn to_png_preview(&self) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let scale = (256.0 / w.max(h) as f64).min(1.0);
        let (pw, ph) = (
            ((w as f64 * scale).round() as usize).max(1),
            ((h as f64 * scale).round() as usize).max(1),
        );
        let small = resize(&self.values, w, h, pw, ph);
        let lo = small.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = small.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let grey: Vec<u8> = if hi - lo > 1e-6 {
            small
                .iter()
                .map(|v| ((v - lo) / (hi - lo) * 255.0).round() as u8)
                .collect()
        } else {
            vec![128; pw * ph]
        };
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, pw as u32, ph as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        // Encoding into memory cannot fail for a valid size and a buffer of that size.
        let mut writer = enc.write_header().expect("PNG header into memory");
        writer
            .write_image_data(&grey)
            .expect("PNG data into memory");
        writer.finish().expect("PNG end into memory");
        out
    }
}

/// The per-pixel median within groups of at most 64 images (split evenly), averaged over the
/// groups; for ≤ 64 images, simply the per-pixel median. Linear in the number of images, and the
/// same quantity — the lit background — at any plate size. The alternative of a per-pixel mean
/// (each image clipped at its 99th percentile) follows the objects as well: with 80 images of
/// nuclei covering 6 % of the field it missed this module's test field by 20 % at the corners
/// (clipping cannot remove objects covering more than 1 % of an image), where this is < 3 %.
fn robust_average(
    count: usize,
    n: usize,
    load: &mut dyn FnMut(usize) -> Result<GrayImage, String>,
) -> Result<Vec<f32>, String> {
    let groups = count.div_ceil(GROUP_MAX_IMAGES);
    let mut sum = vec![0f32; n];
    let mut buf = Vec::with_capacity(GROUP_MAX_IMAGES);
    for g in 0..groups {
        let group = (g * count / groups..(g + 1) * count / groups)
            .map(&mut *load)
            .collect::<Result<Vec<GrayImage>, String>>()?;
        let k = group.len();
        for (i, s) in sum.iter_mut().enumerate() {
            buf.clear();
            buf.extend(group.iter().map(|img| img.data[i]));
            let (below, &mut upper, _) = buf.select_nth_unstable(k / 2);
            *s += if k % 2 == 1 {
                f32::from(upper)
            } else {
                // The mean of the two middle values.
                let lower = below.iter().copied().max().unwrap_or(upper);
                (f32::from(lower) + f32::from(upper)) / 2.0
            };
        }
    }
    sum.iter_mut().for_each(|s| *s /= groups as f32);
    Ok(sum)
}

/// The median of `values` (upper middle for an even count: the field is smooth, so the two
/// middles are equal to well within the TIFF's resolution).
fn median_f32(values: &[f32]) -> f32 {
    let mut v = values.to_vec();
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// Separable Gaussian blur in place (`sigma` in pixels; 0 leaves the image as is).
fn blur(pixels: &mut [f32], w: usize, h: usize, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as usize;
    let mut kernel: Vec<f32> = (0..=radius)
        .map(|k| (-(k as f32).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total = kernel[0] + 2.0 * kernel[1..].iter().sum::<f32>();
    kernel.iter_mut().for_each(|k| *k /= total);
    let fit = ((2.0 * sigma).round() as usize).max(2);
    let mut line = Vec::new();
    let mut out = Vec::new();
    for y in 0..h {
        line.clear();
        line.extend_from_slice(&pixels[y * w..(y + 1) * w]);
        blur_line(&line, &kernel, fit, &mut out);
        pixels[y * w..(y + 1) * w].copy_from_slice(&out);
    }
    for x in 0..w {
        line.clear();
        line.extend((0..h).map(|y| pixels[y * w + x]));
        blur_line(&line, &kernel, fit, &mut out);
        for (y, v) in out.iter().enumerate() {
            pixels[y * w + x] = *v;
        }
    }
}

/// One line blurred by the half-`kernel` (centre first). Beyond each end the line is continued
/// by a straight line fitted to its last `fit` samples: mirroring or truncating the kernel
/// would flatten a falloff towards the edge exactly where vignetting is strongest (mirroring
/// misses the test's corner falloff to 0.4 by 18 %, this by < 3 %): a linear trend passes
/// through unchanged.
fn blur_line(line: &[f32], kernel: &[f32], fit: usize, out: &mut Vec<f32>) {
    let n = line.len();
    let r = kernel.len() - 1;
    let fit = fit.min(n);
    let (a0, b0) = line_fit(&line[..fit]);
    let (a1, b1) = line_fit(&line[n - fit..]);
    let padded: Vec<f32> = (0..n + 2 * r)
        .map(|i| {
            let x = i as f32 - r as f32; // position along the line
            if i < r {
                a0 + b0 * x
            } else if i >= n + r {
                a1 + b1 * (x - (n - fit) as f32)
            } else {
                line[i - r]
            }
        })
        .collect();
    out.clear();
    out.extend((0..n).map(|i| {
        let c = i + r;
        kernel[0] * padded[c]
            + kernel[1..]
                .iter()
                .enumerate()
                .map(|(k, g)| g * (padded[c - k - 1] + padded[c + k + 1]))
                .sum::<f32>()
    }));
}

/// Least-squares line through `ys` at x = 0, 1, …: (value at 0, slope).
fn line_fit(ys: &[f32]) -> (f32, f32) {
    let n = ys.len() as f32;
    let mx = (n - 1.0) / 2.0;
    let my = ys.iter().sum::<f32>() / n;
    let (mut sxy, mut sxx) = (0f32, 0f32);
    for (x, y) in ys.iter().enumerate() {
        let dx = x as f32 - mx;
        sxy += dx * (y - my);
        sxx += dx * dx;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - slope * mx, slope)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    const W: usize = 200;
    const H: usize = 150;

    /// The true field: a radial falloff to 0.4 at the corners (1 − 0.6 r², r = 1 at a corner).
    fn vignette(x: usize, y: usize) -> f32 {
        let (dx, dy) = (
            x as f32 + 0.5 - W as f32 / 2.0,
            y as f32 + 0.5 - H as f32 / 2.0,
        );
        1.0 - 0.6 * (dx * dx + dy * dy) / ((W * W + H * H) as f32 / 4.0)
    }

    /// Background 200 plus discs of +1000 at `blobs` (x, y, radius), times the vignette, plus
    /// ±10 noise.
    fn image(blobs: &[(f32, f32, f32)], rng: &mut Rng) -> GrayImage {
        image_with_offset(blobs, rng, 0.0)
    }

    /// [`image`] from a camera that adds `offset` counts to every pixel, lit or not.
    fn image_with_offset(blobs: &[(f32, f32, f32)], rng: &mut Rng, offset: f32) -> GrayImage {
        let data = (0..W * H)
            .map(|i| {
                let (x, y) = (i % W, i / W);
                let inside = blobs
                    .iter()
                    .any(|&(bx, by, r)| (x as f32 - bx).powi(2) + (y as f32 - by).powi(2) <= r * r);
                let v = if inside { 1200.0 } else { 200.0 } * vignette(x, y) + offset;
                (v + 20.0 * rng.next() - 10.0).round() as u16
            })
            .collect();
        GrayImage {
            width: W as u32,
            height: H as u32,
            bit_depth: 16,
            data,
        }
    }

    /// `n` fields of 15 random nuclei each, from a camera adding `offset`.
    fn plate(n: usize, rng: &mut Rng, offset: f32) -> Vec<GrayImage> {
        (0..n)
            .map(|_| {
                let blobs: Vec<_> = (0..15)
                    .map(|_| {
                        // Cells continue past the field of view, so their centres do too.
                        let x = rng.next() * (W + 16) as f32 - 8.0;
                        let y = rng.next() * (H + 16) as f32 - 8.0;
                        (x, y, 4.0 + 4.0 * rng.next())
                    })
                    .collect();
                image_with_offset(&blobs, rng, offset)
            })
            .collect()
    }

    fn disc_mean(img: &GrayImage, (bx, by, r): (f32, f32, f32)) -> f32 {
        let vals: Vec<f32> = (0..W * H)
            .filter(|i| ((i % W) as f32 - bx).powi(2) + ((i / W) as f32 - by).powi(2) <= r * r)
            .map(|i| f32::from(img.data[i]))
            .collect();
        vals.iter().sum::<f32>() / vals.len() as f32
    }

    #[test]
    fn illumination_recovers_vignetting_and_evens_out_blobs() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // 12 images are one median group; 80 are two.
        let images = plate(80, &mut rng, 0.0);
        // Within a few % of the true field, up to a constant (both to median 1).
        let truth: Vec<f32> = (0..W * H).map(|i| vignette(i % W, i / W)).collect();
        let m_true = median_f32(&truth);
        for field in [
            estimate(&images, None, 0.0),
            estimate(&images[..12], None, 0.0),
        ] {
            let field = field.unwrap();
            assert_eq!((field.width, field.height), (W as u32, H as u32));
            let m_est = median_f32(&field.values);
            assert!((m_est - 1.0).abs() < 1e-3, "median {m_est}");
            let worst = field
                .values
                .iter()
                .zip(&truth)
                .map(|(e, t)| (e / m_est / (t / m_true) - 1.0).abs())
                .fold(0f32, f32::max);
            assert!(worst < 0.05, "worst relative error {worst}");
        }
        let field = estimate(&images[..12], None, 0.0).unwrap();

        // A nucleus in the corner is half as bright as one in the centre; corrected, equal.
        let centre = (100.0, 75.0, 6.0);
        let corners = [
            (10.0, 10.0, 6.0),
            (189.0, 10.0, 6.0),
            (10.0, 139.0, 6.0),
            (189.0, 139.0, 6.0),
        ];
        let mut blobs = vec![centre];
        blobs.extend(corners);
        let img = image(&blobs, &mut rng);
        let fixed = apply(&img, &field).unwrap();
        assert_eq!(fixed.bit_depth, 16);
        for corner in corners {
            let before = disc_mean(&img, centre) / disc_mean(&img, corner);
            let after = disc_mean(&fixed, centre) / disc_mean(&fixed, corner);
            assert!(before > 1.7, "before {before}");
            assert!((after - 1.0).abs() < 0.1, "after {after}");
        }
    }

    /// A camera offset divided along with the light comes out of a dim corner boosted: a
    /// nucleus there reads 21 % too bright. Taken off first, both read the same.
    #[test]
    fn a_camera_offset_is_taken_off_not_divided() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let images = plate(24, &mut rng, 100.0);
        let centre = (100.0, 75.0, 6.0);
        let corner = (10.0, 10.0, 6.0);
        let img = image_with_offset(&[centre, corner], &mut rng, 100.0);
        let ratio = |fixed: &GrayImage| disc_mean(fixed, centre) / disc_mean(fixed, corner);

        let ignored = estimate(&images, None, 0.0).unwrap();
        let off = ratio(&apply(&img, &ignored).unwrap());
        assert!(off > 1.12, "without the offset taken off: {off}");

        let field = estimate(&images, None, 100.0).unwrap();
        assert_eq!(field.dark, 100.0);
        // The light at the field's median: 200 × the vignette's median (about 0.77).
        assert!((140.0..175.0).contains(&field.light), "{}", field.light);
        let fixed = apply(&img, &field).unwrap();
        assert!((ratio(&fixed) - 1.0).abs() < 0.05, "{}", ratio(&fixed));
        // The offset is gone from the background too: 200 × vignette / field ≈ the light.
        let background = f32::from(fixed.data[W * 40 + 40]);
        assert!((background - field.light).abs() < 25.0, "{background}");
    }

    /// Why the `illumination` step warns below 5 counts of background light: from 12 fields
    /// of background only (shot noise and 1.5 counts of read noise), a field from 10 counts
    /// is within a few % everywhere, one from 2 counts is off by far more in places (this
    /// test's fields: 0.054 and 0.241).
    #[test]
    fn a_field_needs_light_to_be_estimated_from() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let truth: Vec<f32> = (0..W * H).map(|i| vignette(i % W, i / W)).collect();
        let m_true = median_f32(&truth);
        let mut worst_at = |level: f32| {
            let images: Vec<GrayImage> = (0..12)
                .map(|_| {
                    GrayImage::from_values(
                        W as u32,
                        H as u32,
                        16,
                        truth.iter().map(|t| {
                            let mean = level * t;
                            // About normal: the sum of four uniforms, scaled to sd 1.
                            let g = (0..4).map(|_| rng.next()).sum::<f32>() - 2.0;
                            (mean + (mean + 2.25).sqrt() * g * 1.732).max(0.0)
                        }),
                    )
                })
                .collect();
            let field = estimate(&images, None, 0.0).unwrap();
            field
                .values
                .iter()
                .zip(&truth)
                .map(|(e, t)| (e / (t / m_true) - 1.0).abs())
                .fold(0f32, f32::max)
        };
        let (bright, dim) = (worst_at(10.0), worst_at(2.0));
        assert!(bright < 0.08, "worst error from 10 counts: {bright}");
        assert!(dim > 0.15, "worst error from 2 counts: {dim}");
    }

    #[test]
    fn illumination_refuses_empty_and_mismatched_inputs() {
        let img = |w: u32, h: u32| GrayImage {
            width: w,
            height: h,
            bit_depth: 8,
            data: vec![100; (w * h) as usize],
        };
        assert!(estimate(&[], None, 0.0).unwrap_err().contains("no images"));
        let err = estimate(&[img(10, 10), img(10, 12)], None, 0.0).unwrap_err();
        assert!(err.contains("10x12"), "{err}");
        assert!(estimate(&[img(10, 10)], Some(-1.0), 0.0).is_err());
        assert!(estimate(&[img(10, 10)], None, -1.0).is_err());
        // An offset as bright as the background leaves no light to estimate from.
        let err = estimate(&[img(10, 10)], None, 100.0).unwrap_err();
        assert!(err.contains("dark 100") && err.contains("shutter"), "{err}");
        let field = estimate(&[img(10, 10)], None, 0.0).unwrap();
        assert!(field.values.iter().all(|&v| (v - 1.0).abs() < 1e-5));
        assert!(apply(&img(10, 12), &field).unwrap_err().contains("10x12"));
        // An 8-bit image boosted past 255 keeps its values (and its bit depth): 100 / 0.2.
        let dim = IlluminationField {
            values: vec![0.2; 100],
            ..field
        };
        let boosted = apply(&img(10, 10), &dim).unwrap();
        assert_eq!(boosted.bit_depth, 8);
        assert!(boosted.data.iter().all(|&v| v == 500));
    }

    #[test]
    fn illumination_tiff_round_trip_and_preview() {
        let (w, h) = (300u32, 90u32);
        let values: Vec<f32> = (0..w * h)
            .map(|i| 0.05 + 2.95 * ((i % w) as f32 / w as f32) * ((i / w) as f32 / h as f32))
            .collect();
        let field = IlluminationField {
            width: w,
            height: h,
            values,
            dark: 0.0,
            light: 0.0,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("illum.tif");
        field.to_tiff(&path).unwrap();
        let back = IlluminationField::from_tiff(&path).unwrap();
        assert_eq!((back.width, back.height), (w, h));
        let worst = field
            .values
            .iter()
            .zip(&back.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "round trip off by {worst}");

        let png = field.to_png_preview();
        let mut reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (256, 77));
        let pixels = &buf[..info.buffer_size()];
        assert_eq!(pixels.iter().min(), Some(&0));
        assert_eq!(pixels.iter().max(), Some(&255));
    }
}
