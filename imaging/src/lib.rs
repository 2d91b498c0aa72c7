//! Reading microscopy images as grey images: TIFF (8/16-bit grey, signed or not, grey saved
//! as RGB(A), palette-coded; uncompressed, LZW, PackBits, Deflate, JPEG or Zstandard, in
//! strips or tiles (palette-coded ones in strips); one page; 32- and 64-bit integer and float
//! where their values fit 16 bits by a fixed rule, see [`to_sixteen_bits`]) and PNG (grey, RGB
//! whose channels are equal, or palette-coded: its indices, as for TIFF).
//! A file that cannot be read gives an error naming the file and the reason. No knowledge of
//! the engine: this is a library first.

pub mod cells;
pub mod features;
pub mod heatmap;
pub mod illumination;
pub mod instances;
pub mod masks;
pub mod overlay;
mod palette;
pub mod qc;
pub mod resample;
pub mod segment;
pub mod specks;
mod tiled;
pub mod write;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest image (in pixels, per page) any decoder here will produce: 256 megapixels by
/// default (512 MB of 16-bit samples), far above any microscope's field. A header may not
/// declare more, and no compressed strip may inflate past what its header declares: a 1 MB
/// decompression bomb is refused, naming the file, instead of taking the worker's memory.
static MAX_PIXELS: AtomicU64 = AtomicU64::new(256 << 20);

/// Sets the largest image this process reads (`plateflow worker --max-image-megapixels`).
pub fn set_max_pixels(pixels: u64) {
    MAX_PIXELS.store(pixels.max(1), Ordering::Relaxed);
}

pub fn max_pixels() -> u64 {
    MAX_PIXELS.load(Ordering::Relaxed)
}

/// Refuses a page whose header declares more pixels than [`max_pixels`].
pub(crate) fn check_size(path: &Path, width: u32, height: u32) -> Result<(), ImageError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels() {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            max_megapixels: max_pixels() as f64 / (1 << 20) as f64,
        });
    }
    Ok(())
}

/// One grey plane. Intensities keep the file's range (`bit_depth` 8 or 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    /// Row-major, `width * height` values.
    pub data: Vec<u16>,
}

impl GrayImage {
    /// An image of `values` (row-major, `width * height`: a resampled image, a generated
    /// field) rounded to whole counts and held within 0..=65,535.
    pub fn from_values<T: Into<f64>>(
        width: u32,
        height: u32,
        bit_depth: u8,
        values: impl IntoIterator<Item = T>,
    ) -> GrayImage {
        GrayImage {
            width,
            height,
            bit_depth,
            data: values
                .into_iter()
                .map(|v| v.into().round().clamp(0.0, 65535.0) as u16)
                .collect(),
        }
    }

    pub fn get(&self, x: u32, y: u32) -> u16 {
        self.data[(y * self.width + x) as usize]
    }

    /// The largest value the bit depth allows (saturation).
    pub fn max_value(&self) -> u16 {
        if self.bit_depth >= 16 {
            u16::MAX
        } else {
            (1u16 << self.bit_depth) - 1
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {path} is damaged or not a valid {format}: {reason}")]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("image {path}: {what} is not supported (plateflow reads grey TIFF of 8 to 64 bits whose values fit 16 bits, palette TIFF, grey saved as RGB TIFF, and grey, palette or RGB PNG with equal channels)")]
    Unsupported { path: PathBuf, what: String },
    #[error("mask {path} cannot be used: {what}")]
    BadMask { path: PathBuf, what: String },
    #[error("image {path} is a stack of {pages} planes (channels, z-planes or time points), and plateflow reads one plane per file: save each channel as its own file (Fiji: Image > Stacks > Stack to Images), project a z-stack first (Image > Stacks > Z Project), then name the plane in the file name (`{{channel}}` in the pattern)")]
    Stack { path: PathBuf, pages: usize },
    #[error("image {path} has an extension plateflow does not read (use .tif, .tiff or .png)")]
    UnknownFormat { path: PathBuf },
    #[error("cannot write image {path}: {reason}")]
    Unwritable { path: PathBuf, reason: String },
    #[error("image {path} declares {width}x{height} pixels, more than the {max_megapixels:.0} megapixels this worker reads (raise it with `plateflow worker --max-image-megapixels`)")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        max_megapixels: f64,
    },
}

/// Every page of an image file (PNG files have one).
pub fn read_pages(path: &Path) -> Result<Vec<GrayImage>, ImageError> {
    read(path, true)
}

/// An image file's one plane. A stack (several full-size pages: channels, z-planes, time
/// points) is refused rather than read as its first plane, which would measure a channel or
/// plane the user did not mean; reduced-resolution pages (thumbnails) do not count.
pub fn read_image(path: &Path) -> Result<GrayImage, ImageError> {
    Ok(read(path, false)?.swap_remove(0))
}

/// Every page (`all`), or the one plane (see [`read_image`]).
fn read(path: &Path, all: bool) -> Result<Vec<GrayImage>, ImageError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let file = File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match ext.as_str() {
        "tif" | "tiff" => read_tiff(path, BufReader::new(file), all),
        "png" => read_png(path, BufReader::new(file)).map(|i| vec![i]),
        _ => Err(ImageError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// The pages of a TIFF: every one (`all`), or the first where it is the only full-size one.
fn read_tiff(path: &Path, r: BufReader<File>, all: bool) -> Result<Vec<GrayImage>, ImageError> {
    use tiff::decoder::DecodingResult;
    use tiff::ColorType;
    let corrupt = |e: tiff::TiffError| ImageError::Corrupt {
        path: path.to_path_buf(),
        format: "TIFF",
        reason: e.to_string(),
    };
    let unsupported = |what: String| ImageError::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    // Up to 8 bytes a pixel: 32- and 64-bit grey and 16-bit RGBA images are read too (then
    // brought to 16 bits, one grey plane).
    let mut dec = tiff_decoder(path, r, 8)?;
    let mut pages = Vec::new();
    loop {
        let (width, height) = dec.dimensions().map_err(corrupt)?;
        check_size(path, width, height)?;
        // Photometric interpretation 3 is a palette; the tiff crate's colortype() refuses it.
        let photometric: Option<u16> = dec
            .find_tag_unsigned(tiff::tags::Tag::PhotometricInterpretation)
            .map_err(corrupt)?;
        let bits = crate::bits_per_sample(&mut dec).map_err(corrupt)?;
        // A palette only says how to show the image: the indices are the measured values, as
        // ImageJ, tifffile and CellProfiler read them. ImageJ writes a palette for any LUT that
        // is not plain grey: an inverted LUT (its binary masks, unless "black background" is
        // set) or a channel shown green or "Fire"; mapping through it would turn masks and
        // intensities inside out.
        let palette = match (photometric, bits) {
            (Some(3), Some(8)) => true,
            (Some(3), b) => {
                return Err(unsupported(format!(
                    "a {}-bit palette TIFF",
                    b.unwrap_or(0)
                )))
            }
            _ => false,
        };
        // Samples per pixel: grey, or red-green-blue(-alpha) whose colour channels must be
        // equal (a grey image saved as RGB, as PNG files are read too).
        let samples = match palette {
            true => 1,
            false => match dec.colortype().map_err(corrupt)? {
                ColorType::Gray(8 | 16 | 32 | 64) => 1,
                ColorType::RGB(8 | 16) => 3,
                ColorType::RGBA(8 | 16) => 4,
                other => {
                    return Err(unsupported(format!(
                        "TIFF colour type {other:?}: plateflow reads one grey plane per file (8 to 64 bits)"
                    )))
                }
            },
        };
        let (data, bit_depth) = match palette {
            // The tiff crate does not decode palette images: read their strips here.
            true => {
                let indices = palette::read_indices(path, &mut dec, width, height)?;
                (indices.into_iter().map(u16::from).collect(), 8)
            }
            false => match read_samples(path, &mut dec)? {
                DecodingResult::U8(v) => (v.into_iter().map(u16::from).collect(), 8),
                DecodingResult::U16(v) => (v, 16),
                // Signed 16-bit (some cameras, MATLAB's int16) and 64-bit floats (MATLAB's
                // double) by the same rule as 32-bit samples.
                DecodingResult::I16(v) => (to_sixteen_bits(&v, false).map_err(unsupported)?, 16),
                DecodingResult::U32(v) => (to_sixteen_bits(&v, false).map_err(unsupported)?, 16),
                DecodingResult::I32(v) => (to_sixteen_bits(&v, false).map_err(unsupported)?, 16),
                DecodingResult::F32(v) => (to_sixteen_bits(&v, true).map_err(unsupported)?, 16),
                DecodingResult::F64(v) => (to_sixteen_bits(&v, true).map_err(unsupported)?, 16),
                _ => {
                    return Err(unsupported(
                        "TIFF sample format (8-bit signed, 16-bit float or 64-bit integer samples): save it as 8- or 16-bit unsigned integers".into(),
                    ))
                }
            },
        };
        let data = if samples == 1 {
            data
        } else {
            grey_of_colour(&data, samples).ok_or_else(|| {
                unsupported(
                    "a colour TIFF (its red, green and blue channels differ): save each channel as its own grey image".into(),
                )
            })?
        };
        if data.len() != width as usize * height as usize {
            return Err(ImageError::Corrupt {
                path: path.to_path_buf(),
                format: "TIFF",
                reason: format!("{} pixels for a {width}x{height} image", data.len()),
            });
        }
        pages.push(GrayImage {
            width,
            height,
            bit_depth,
            data,
        });
        if !dec.more_images() {
            return Ok(pages);
        }
        if !all {
            return one_plane(path, dec, pages);
        }
        dec.next_image().map_err(corrupt)?;
    }
}

/// The current page's samples: the tiff crate's own decoding or, for the tiled LZW files it
/// stops on, plateflow's ([`tiled`]).
pub(crate) fn read_samples<R: std::io::Read + std::io::Seek>(
    path: &Path,
    dec: &mut tiff::decoder::Decoder<R>,
) -> Result<tiff::decoder::DecodingResult, ImageError> {
    match dec.read_image() {
        Ok(samples) => Ok(samples),
        // Only a decoding failure falls back: an image over the size limit stays refused.
        Err(e) if !matches!(e, tiff::TiffError::LimitsExceeded) && tiled::is_tiled_lzw(dec) => {
            tiled::read(path, dec)
        }
        Err(e) => Err(ImageError::Corrupt {
            path: path.to_path_buf(),
            format: "TIFF",
            reason: e.to_string(),
        }),
    }
}

/// The grey values of interleaved samples (`samples` per pixel: grey, grey + alpha, RGB or
/// RGBA), or `None` where a colour pixel's red, green and blue differ.
fn grey_of_colour(data: &[u16], samples: usize) -> Option<Vec<u16>> {
    let colour = samples >= 3;
    data.chunks_exact(samples)
        .map(|px| (!colour || (px[0] == px[1] && px[1] == px[2])).then_some(px[0]))
        .collect()
}

/// `pages` (the first) where the file's other pages are not planes of the same field:
/// reduced-resolution copies (NewSubfileType bit 0: thumbnails, pyramid levels), pages of
/// another size (a preview), or pages past one that cannot be read (only the first is
/// needed); else the stack error. `dec` stands at the first page.
fn one_plane<R: std::io::Read + std::io::Seek>(
    path: &Path,
    mut dec: tiff::decoder::Decoder<R>,
    pages: Vec<GrayImage>,
) -> Result<Vec<GrayImage>, ImageError> {
    let planes = 1 + more_planes(&mut dec, (pages[0].width, pages[0].height));
    if planes > 1 {
        return Err(ImageError::Stack {
            path: path.to_path_buf(),
            pages: planes,
        });
    }
    Ok(pages)
}

/// How many of the pages after the decoder's current one are further planes of a field of
/// `size`: not reduced-resolution copies (NewSubfileType bit 0), not of another size, and
/// before any page that cannot be read.
pub(crate) fn more_planes<R: std::io::Read + std::io::Seek>(
    dec: &mut tiff::decoder::Decoder<R>,
    size: (u32, u32),
) -> usize {
    let mut planes = 0;
    while dec.more_images() && dec.next_image().is_ok() {
        let reduced = dec
            .find_tag_unsigned::<u32>(tiff::tags::Tag::NewSubfileType)
            .ok()
            .flatten()
            .is_some_and(|t| t & 1 == 1);
        let same_size = dec.dimensions().is_ok_and(|d| d == size);
        planes += usize::from(!reduced && same_size);
    }
    planes
}

/// 32- and 64-bit samples (ImageJ's "32-bit" type, deconvolution and stitching tools' output) as
/// 16 bits by one rule that does not depend on the image, so intensities stay comparable
/// across a plate: values within 0–65535 are rounded. Refused, with the range found and what
/// to do: negative or larger values, NaN, and floats with fractions that all lie within
/// 0–255, which are normalised or rescaled intensities (0–1, say) whose scale only the plate
/// as a whole could tell: rounding would flatten them, and a scale chosen per image would
/// make one well's intensities unlike another's.
pub fn to_sixteen_bits<T: Copy + Into<f64>>(values: &[T], float: bool) -> Result<Vec<u16>, String> {
    let kind = format!(
        "{}-bit {}",
        8 * std::mem::size_of::<T>(),
        if float { "float" } else { "integer" }
    );
    let (mut lo, mut hi, mut bad, mut fractions) =
        (f64::INFINITY, f64::NEG_INFINITY, 0usize, false);
    for &v in values {
        let v: f64 = v.into();
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
            fractions |= v.fract() != 0.0;
        } else {
            bad += 1;
        }
    }
    let convert = "convert the plate's images to 16 bits with one range for all of them (Fiji: \
                   Image > Adjust > Brightness/Contrast, Set the same minimum and maximum for \
                   every image, then Image > Type > 16-bit)";
    if bad > 0 {
        return Err(format!(
            "a {kind} image with {bad} pixels that are not numbers (NaN or infinite): replace \
             them (Fiji: Process > Math > Remove NaNs), or {convert}"
        ));
    }
    if lo < 0.0 || hi > 65535.0 {
        return Err(format!(
            "a {kind} image with values from {lo} to {hi}, outside 0-65535: {convert}"
        ));
    }
    if fractions && hi <= 255.0 {
        return Err(format!(
            "a {kind} image of fractional values from {lo} to {hi}: normalised or rescaled \
             intensities, whose scale plateflow cannot tell from one image: {convert}"
        ));
    }
    Ok(values.iter().map(|&v| v.into().round() as u16).collect())
}

/// A TIFF decoder whose own buffers are capped at the largest image ([`max_pixels`] of
/// `bytes_per_sample`), so a header cannot make it allocate more.
pub(crate) fn tiff_decoder(
    path: &Path,
    r: BufReader<File>,
    bytes_per_sample: u64,
) -> Result<tiff::decoder::Decoder<BufReader<File>>, ImageError> {
    let mut limits = tiff::decoder::Limits::default();
    let bytes = max_pixels().saturating_mul(bytes_per_sample);
    limits.decoding_buffer_size = usize::try_from(bytes).unwrap_or(usize::MAX);
    limits.intermediate_buffer_size = limits.decoding_buffer_size;
    let dec = tiff::decoder::Decoder::new(r).map_err(|e| ImageError::Corrupt {
        path: path.to_path_buf(),
        format: "TIFF",
        reason: e.to_string(),
    })?;
    Ok(dec.with_limits(limits))
}

/// The first sample's bits (one value per sample: RGB files list three, which reading it as
/// one number refuses as a damaged tag).
pub(crate) fn bits_per_sample<R: std::io::Read + std::io::Seek>(
    dec: &mut tiff::decoder::Decoder<R>,
) -> Result<Option<u16>, tiff::TiffError> {
    Ok(dec
        .find_tag_unsigned_vec::<u16>(tiff::tags::Tag::BitsPerSample)?
        .and_then(|v| v.first().copied()))
}

fn read_png(path: &Path, r: BufReader<File>) -> Result<GrayImage, ImageError> {
    let corrupt = |e: png::DecodingError| ImageError::Corrupt {
        path: path.to_path_buf(),
        format: "PNG",
        reason: e.to_string(),
    };
    // At most the largest image's RGBA 16-bit samples.
    let bytes = usize::try_from(max_pixels().saturating_mul(8)).unwrap_or(usize::MAX);
    let mut dec = png::Decoder::new_with_limits(r, png::Limits { bytes });
    // A palette only says how to show the image: its indices are the measured values, as for
    // palette TIFFs (Fiji writes one for an inverted or coloured LUT; read through it, an
    // inverted LUT would invert the intensities). Low grey bit depths become 8-bit, 16-bit
    // stays 16-bit.
    let indexed = dec.read_header_info().map_err(corrupt)?.color_type == png::ColorType::Indexed;
    if !indexed {
        dec.set_transformations(png::Transformations::EXPAND);
    }
    let mut reader = dec.read_info().map_err(corrupt)?;
    check_size(path, reader.info().width, reader.info().height)?;
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let info = reader.next_frame(&mut buf).map_err(corrupt)?;
    let (width, height) = (info.width, info.height);
    let bytes = &buf[..info.buffer_size()];
    if indexed {
        let bits = info.bit_depth as usize;
        let data = palette::unpack_rows(bytes, width, height, bits);
        if data.len() != width as usize * height as usize {
            return Err(ImageError::Corrupt {
                path: path.to_path_buf(),
                format: "PNG",
                reason: format!("{} pixels for a {width}x{height} image", data.len()),
            });
        }
        return Ok(GrayImage {
            width,
            height,
            bit_depth: 8,
            data: data.into_iter().map(|v| v as u16).collect(),
        });
    }
    let sixteen = info.bit_depth == png::BitDepth::Sixteen;
    let samples: Vec<u16> = if sixteen {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    } else {
        bytes.iter().map(|&b| u16::from(b)).collect()
    };
    let data = grey_of_colour(&samples, info.color_type.samples()).ok_or_else(|| {
        ImageError::Unsupported {
            path: path.to_path_buf(),
            what: "a colour PNG (its red, green and blue channels differ)".into(),
        }
    })?;
    Ok(GrayImage {
        width,
        height,
        bit_depth: if sixteen { 16 } else { 8 },
        data,
    })
}

#[cfg(test)]
mod tests;
