//! Tiled LZW TIFFs whose edge tiles overhang the image (a 400×400 image in 64×64 tiles, as
//! bfconvert, tifffile and OME-TIFF writers make them): the tiff crate (0.11.3) stops on
//! those with "no lzw end code found" (image-rs/image-tiff#395) although libtiff reads them.
//! Here each tile is decoded on its own (LZW, optional horizontal predictor, either byte
//! order) and its part inside the image copied out.

use crate::ImageError;
use std::io::{Read, Seek};
use std::path::Path;
use tiff::decoder::DecodingResult;
use tiff::tags::Tag;

/// Whether the decoder's current image is tiled and LZW-compressed.
pub(crate) fn is_tiled_lzw<R: Read + Seek>(dec: &mut tiff::decoder::Decoder<R>) -> bool {
    let tiled = dec.find_tag(Tag::TileOffsets).ok().flatten().is_some();
    let lzw = dec
        .find_tag_unsigned::<u16>(Tag::Compression)
        .ok()
        .flatten()
        == Some(5);
    tiled && lzw
}

/// The current image's samples, interleaved as the tiff crate's `read_image` returns them.
pub(crate) fn read<R: Read + Seek>(
    path: &Path,
    dec: &mut tiff::decoder::Decoder<R>,
) -> Result<DecodingResult, ImageError> {
    let corrupt = |reason: String| ImageError::Corrupt {
        path: path.to_path_buf(),
        format: "TIFF",
        reason,
    };
    let unsupported = |what: String| ImageError::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    let tag_err = |e: tiff::TiffError| corrupt(e.to_string());
    let (width, height) = dec.dimensions().map_err(tag_err)?;
    let tile_w: u32 = dec.get_tag_unsigned(Tag::TileWidth).map_err(tag_err)?;
    let tile_h: u32 = dec.get_tag_unsigned(Tag::TileLength).map_err(tag_err)?;
    let offsets = dec.get_tag_u64_vec(Tag::TileOffsets).map_err(tag_err)?;
    let counts = dec.get_tag_u64_vec(Tag::TileByteCounts).map_err(tag_err)?;
    let samples = usize::from(
        dec.find_tag_unsigned::<u16>(Tag::SamplesPerPixel)
            .map_err(tag_err)?
            .unwrap_or(1),
    );
    let bits = crate::bits_per_sample(dec).map_err(tag_err)?.unwrap_or(1);
    // One value per sample in RGB(A) files (tifffile writes the list); all are equal here.
    let format: u16 = dec
        .find_tag_unsigned_vec::<u16>(Tag::SampleFormat)
        .map_err(tag_err)?
        .and_then(|v| v.first().copied())
        .unwrap_or(1);
    let predictor: u16 = dec
        .find_tag_unsigned(Tag::Predictor)
        .map_err(tag_err)?
        .unwrap_or(1);
    let planar: u16 = dec
        .find_tag_unsigned(Tag::PlanarConfiguration)
        .map_err(tag_err)?
        .unwrap_or(1);
    if !matches!(bits, 8 | 16 | 32 | 64) || (planar != 1 && samples > 1) || predictor > 2 {
        return Err(unsupported(format!(
            "a tiled LZW TIFF of {bits}-bit samples (planar configuration {planar}, predictor {predictor})"
        )));
    }
    if tile_w == 0 || tile_h == 0 {
        return Err(corrupt("tiles of zero pixels".into()));
    }
    let (across, down) = (width.div_ceil(tile_w), height.div_ceil(tile_h));
    if offsets.len() != counts.len() || offsets.len() as u64 != u64::from(across) * u64::from(down)
    {
        return Err(corrupt(format!(
            "{} tile offsets and {} byte counts for {across}×{down} tiles",
            offsets.len(),
            counts.len()
        )));
    }
    let size = usize::from(bits / 8);
    let pixel = samples * size;
    let (tw, th) = (tile_w as usize, tile_h as usize);
    // Tile sizes come from the file: a damaged header must not ask for terabytes. A tile may
    // overhang the image, but not by more than 4 times the image (or 4 MiB for small ones).
    let most = (width as usize)
        .saturating_mul(height as usize)
        .saturating_mul(pixel)
        .max(1 << 20)
        .saturating_mul(4);
    let tile_bytes = tw
        .checked_mul(th)
        .and_then(|n| n.checked_mul(pixel))
        .filter(|&n| n <= most)
        .ok_or_else(|| {
            corrupt(format!(
                "tiles of {tile_w}×{tile_h} pixels for a {width}×{height} image"
            ))
        })?;
    let row_bytes = width as usize * pixel;
    let swap = dec.byte_order() != tiff::tags::ByteOrder::native();
    let mut out = vec![0u8; row_bytes * height as usize];
    let mut file = std::fs::File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    for (i, (&off, &len)) in offsets.iter().zip(&counts).enumerate() {
        let raw =
            crate::palette::read_chunk(&mut file, file_len, off, len, "tile").map_err(corrupt)?;
        // A tile may inflate to its declared size and no more (decompression bombs).
        let mut tile = crate::palette::lzw(&raw, tile_bytes)
            .map_err(|e| corrupt(format!("LZW tile: {e}")))?
            .ok_or_else(|| corrupt("a tile inflates past its declared size".into()))?;
        if tile.len() < tile_bytes {
            return Err(corrupt(format!(
                "a tile of {} bytes where {tw}×{th} pixels need {tile_bytes}",
                tile.len()
            )));
        }
        if swap {
            for v in tile.chunks_exact_mut(size) {
                v.reverse();
            }
        }
        if predictor == 2 {
            for row in tile.chunks_exact_mut(tw * pixel) {
                undo_differences(row, samples, size);
            }
        }
        let (tx, ty) = ((i % across as usize) * tw, (i / across as usize) * th);
        let cols = tw.min(width as usize - tx) * pixel;
        for r in 0..th.min(height as usize - ty) {
            let dst = (ty + r) * row_bytes + tx * pixel;
            out[dst..dst + cols].copy_from_slice(&tile[r * tw * pixel..r * tw * pixel + cols]);
        }
    }
    samples_of(out, format, bits).ok_or_else(|| {
        unsupported(format!(
            "a tiled LZW TIFF of {bits}-bit samples in sample format {format}"
        ))
    })
}

/// The horizontal predictor undone in place: each sample is the sum of the differences
/// before it in its row and channel (native-endian samples of `size` bytes, wrapping).
fn undo_differences(row: &mut [u8], samples: usize, size: usize) {
    macro_rules! undo {
        ($t:ty) => {{
            let mut v: Vec<$t> = row
                .chunks_exact(size)
                .map(|b| <$t>::from_ne_bytes(b.try_into().expect("sample size")))
                .collect();
            for i in samples..v.len() {
                v[i] = v[i].wrapping_add(v[i - samples]);
            }
            for (b, x) in row.chunks_exact_mut(size).zip(v) {
                b.copy_from_slice(&x.to_ne_bytes());
            }
        }};
    }
    match size {
        1 => undo!(u8),
        2 => undo!(u16),
        4 => undo!(u32),
        _ => undo!(u64),
    }
}

/// Native-endian bytes as the tiff crate's sample vector for the format (1 unsigned,
/// 2 signed, 3 float) and bits.
fn samples_of(bytes: Vec<u8>, format: u16, bits: u16) -> Option<DecodingResult> {
    macro_rules! cast {
        ($t:ty, $variant:ident) => {
            DecodingResult::$variant(
                bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|b| <$t>::from_ne_bytes(b.try_into().expect("sample size")))
                    .collect(),
            )
        };
    }
    Some(match (format, bits) {
        (1, 8) => DecodingResult::U8(bytes),
        (1, 16) => cast!(u16, U16),
        (1, 32) => cast!(u32, U32),
        (1, 64) => cast!(u64, U64),
        (2, 8) => cast!(i8, I8),
        (2, 16) => cast!(i16, I16),
        (2, 32) => cast!(i32, I32),
        (2, 64) => cast!(i64, I64),
        (3, 32) => cast!(f32, F32),
        (3, 64) => cast!(f64, F64),
        _ => return None,
    })
}
