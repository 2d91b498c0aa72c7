//! 8-bit palette-coded TIFF strips (the tiff crate refuses `RGBPalette`): uncompressed,
//! PackBits, LZW or Deflate, with or without the horizontal predictor; and the packed
//! samples of 1–8 bits that palette PNGs and bilevel TIFFs hold.

use crate::ImageError;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use tiff::tags::Tag;

/// Samples of 1, 2, 4 or 8 bits, packed from the high bits of each byte, each row padded
/// to whole bytes (PNG and TIFF alike); short data gives short output, refused by size.
pub(crate) fn unpack_rows(buf: &[u8], width: u32, height: u32, bits: usize) -> Vec<u32> {
    let stride = (width as usize * bits).div_ceil(8);
    let mut data = Vec::with_capacity(width as usize * height as usize);
    for row in buf.chunks_exact(stride.max(1)).take(height as usize) {
        for x in 0..width as usize {
            let bit = x * bits;
            let byte = row[bit / 8];
            let shift = 8 - bits - bit % 8;
            data.push(u32::from((byte >> shift) & ((1u16 << bits) - 1) as u8));
        }
    }
    data
}

pub fn read_indices<R: Read + Seek>(
    path: &Path,
    dec: &mut tiff::decoder::Decoder<R>,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, ImageError> {
    let corrupt = |reason: String| ImageError::Corrupt {
        path: path.to_path_buf(),
        format: "TIFF",
        reason,
    };
    let tag_err = |e: tiff::TiffError| corrupt(e.to_string());
    if dec.find_tag(Tag::TileOffsets).map_err(tag_err)?.is_some() {
        return Err(ImageError::Unsupported {
            path: path.to_path_buf(),
            what: "a tiled palette TIFF".into(),
        });
    }
    let compression: u16 = dec
        .find_tag_unsigned(Tag::Compression)
        .map_err(tag_err)?
        .unwrap_or(1);
    let predictor: u16 = dec
        .find_tag_unsigned(Tag::Predictor)
        .map_err(tag_err)?
        .unwrap_or(1);
    let offsets = dec.get_tag_u64_vec(Tag::StripOffsets).map_err(tag_err)?;
    let counts = dec.get_tag_u64_vec(Tag::StripByteCounts).map_err(tag_err)?;
    if offsets.len() != counts.len() {
        return Err(corrupt("strip offsets and byte counts disagree".into()));
    }
    let mut file = std::fs::File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let want = width as usize * height as usize;
    let mut out = Vec::with_capacity(want);
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    for (&off, &len) in offsets.iter().zip(&counts) {
        // A strip may inflate to what is left of the image and no more (a bomb declaring
        // 128x128 pixels once inflated to 1.2 GB here).
        let room = want - out.len().min(want);
        let bomb = || {
            corrupt(format!(
                "a strip inflates past the {width}x{height} pixels the header declares (a \
                 decompression bomb, or a damaged file)"
            ))
        };
        let raw = read_chunk(&mut file, file_len, off, len, "strip").map_err(corrupt)?;
        let mut strip = match compression {
            1 => raw,
            32773 => packbits(&raw, room).ok_or_else(bomb)?,
            5 => lzw(&raw, room)
                .map_err(|e| corrupt(format!("LZW strip: {e}")))?
                .ok_or_else(bomb)?,
            8 | 32946 => {
                match miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&raw, room) {
                    Ok(v) => v,
                    Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                        return Err(bomb())
                    }
                    Err(e) => return Err(corrupt(format!("Deflate strip: {e:?}"))),
                }
            }
            other => {
                return Err(ImageError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!("TIFF compression {other} in a palette image"),
                })
            }
        };
        if predictor == 2 {
            for row in strip.chunks_mut(width as usize) {
                for i in 1..row.len() {
                    row[i] = row[i].wrapping_add(row[i - 1]);
                }
            }
        }
        out.extend_from_slice(&strip);
    }
    if out.len() < want {
        return Err(corrupt(format!(
            "{} pixels for a {width}x{height} image",
            out.len()
        )));
    }
    out.truncate(want);
    Ok(out)
}

/// LZW-decodes at most `limit` bytes; `None` when the strip holds more.
pub(crate) fn lzw(src: &[u8], limit: usize) -> Result<Option<Vec<u8>>, weezl::LzwError> {
    let mut dec = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    // One byte of room past the limit tells "exactly full" from "more to come".
    let mut out = vec![0u8; limit + 1];
    let (mut read, mut written) = (0, 0);
    loop {
        let r = dec.decode_bytes(&src[read..], &mut out[written..]);
        read += r.consumed_in;
        written += r.consumed_out;
        match r.status? {
            // The end code, or nothing more to do: input spent (strips often lack the end
            // code) or the output full.
            weezl::LzwStatus::Done | weezl::LzwStatus::NoProgress => break,
            weezl::LzwStatus::Ok if written == out.len() || read == src.len() => break,
            weezl::LzwStatus::Ok => {}
        }
    }
    if written > limit {
        return Ok(None);
    }
    out.truncate(written);
    Ok(Some(out))
}

/// PackBits (Apple): a header byte n, then n+1 literal bytes (n >= 0) or one byte repeated
/// 1-n times (n < 0); -128 is a no-op. `None` when the output would pass `limit` bytes.
fn packbits(src: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(src.len().saturating_mul(2).min(limit));
    let mut i = 0;
    while i < src.len() {
        let n = src[i] as i8;
        i += 1;
        if n >= 0 {
            let end = (i + n as usize + 1).min(src.len());
            out.extend_from_slice(&src[i..end]);
            i = end;
        } else if n != -128 {
            if let Some(&b) = src.get(i) {
                out.extend(std::iter::repeat_n(b, 1 + (-(n as i16)) as usize));
            }
            i += 1;
        }
        if out.len() > limit {
            return None;
        }
    }
    Some(out)
}

/// The `len` bytes of one strip or tile (`what`) at byte `off` of a file of `file_len` bytes;
/// one that runs past the end of the file is refused before anything is allocated for it.
pub(crate) fn read_chunk(
    file: &mut std::fs::File,
    file_len: u64,
    off: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, String> {
    if off.saturating_add(len) > file_len {
        return Err(format!(
            "a {what} of {len} bytes at byte {off} runs past the end of the {file_len}-byte file"
        ));
    }
    let mut raw = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(off))
        .and_then(|_| file.read_exact(&mut raw))
        .map_err(|e| format!("{what} at byte {off}: {e}"))?;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_example_from_the_spec() {
        let packed = [
            0xFE, 0xAA, 0x02, 0x80, 0x00, 0x2A, 0xFD, 0xAA, 0x03, 0x80, 0x00, 0x2A, 0x22, 0xF7,
            0xAA,
        ];
        let want = [
            0xAA, 0xAA, 0xAA, 0x80, 0x00, 0x2A, 0xAA, 0xAA, 0xAA, 0xAA, 0x80, 0x00, 0x2A, 0x22,
            0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA,
        ];
        assert_eq!(packbits(&packed, 100).unwrap(), want);
        assert_eq!(packbits(&packed, want.len() - 1), None);
    }
}
