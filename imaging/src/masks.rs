//! Label images users bring (Cellpose, StarDist, ilastik, napari, Fiji): read in every integer
//! form those tools write (8/16/32/64-bit unsigned or signed, whole-number floats of 16 to 64 bits, palette
//! indices, which Fiji's coloured label images are), checked (one page, background 0), and
//! numbered 1..n.

use crate::segment::{connected_components_8, neighbours8, Labels};
use crate::ImageError;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// A user's label image: 0 background, objects 1..n in the order of their values (gaps, as
/// deleting objects in napari leaves, closed); a two-valued mask (0/1, 0/255: a foreground
/// mask) is split into 8-connected objects.
pub fn read_mask(path: &Path) -> Result<Labels, ImageError> {
    let bad = |what: String| ImageError::BadMask {
        path: path.to_path_buf(),
        what,
    };
    let (width, height, data, eight_bit) = read_values(path)?;
    let mut values = data.clone();
    values.sort_unstable();
    values.dedup();
    if values.first().is_some_and(|&v| v != 0) {
        return Err(bad(format!(
            "no pixel is 0 (its values run {}..={}), so it has no background; masks label background 0 and objects 1, 2, …: a class map (ilastik's Simple Segmentation numbers classes from 1) needs its background class set to 0, or export object identities instead",
            values[0],
            values[values.len() - 1]
        )));
    }
    if values.len() == 2 {
        let mask: Vec<bool> = data.iter().map(|&v| v > 0).collect();
        // Corners join, as in the tools that draw such masks (Fiji, scikit-image).
        return Ok(connected_components_8(
            &mask,
            width as usize,
            height as usize,
        ));
    }
    // 8 bits hold 255 objects: a tool that wrote more wrapped them around (object 256 became
    // background, 257 became 1), so every value in use is the sign of it.
    if eight_bit && values.len() == 256 {
        return Err(bad(
            "an 8-bit label image using every value 1..255, the most 8 bits hold: with more \
             objects than that, their numbers wrapped around (object 256 became background, \
             257 joined object 1); export the labels as 16-bit"
                .into(),
        ));
    }
    // Each value becomes its rank among the values present (0 stays 0).
    let data: Vec<u32> = data
        .iter()
        .map(|v| values.binary_search(v).expect("a value present") as u32)
        .collect();
    let labels = values.len() - 1;
    let pieces = pieces_of_labels(&data, width as usize, height as usize, labels);
    let scattered = pieces.iter().filter(|p| p.len() >= SCATTERED).count();
    if scattered * 2 > labels {
        let (worst, n) = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.len()))
            .max_by_key(|&(_, n)| n)
            .expect("a label");
        return Err(bad(format!(
            "{scattered} of its {labels} label values are each {SCATTERED} or more separate \
             pieces (value {} is {n}), so a value is not one object: this looks like a class \
             map (0 background, 1 nucleus, 2 border, …) or labels reused across tiles; export \
             object labels (each object its own number), or a 0/255 foreground mask, which \
             plateflow splits into objects",
            values[worst + 1]
        )));
    }
    // One number on two objects far apart (tiles labelled 1..n each and stitched, an object
    // painted twice with one number) would be measured as one object of both: refused, since
    // which pieces belong together cannot be guessed. Fragments beside their object pass.
    let reused: Vec<(usize, &Piece, &Piece)> = pieces
        .iter()
        .enumerate()
        .filter_map(|(i, p)| apart(p).map(|(a, b)| (i, a, b)))
        .collect();
    if let Some(&(first, a, b)) = reused.first() {
        return Err(bad(format!(
            "{} of its {labels} label values each mark two objects far apart (value {}: {} px \
             around x {}, y {} and {} px around x {}, y {}), so one number would be measured \
             as one object of both: labels reused across tiles, or an object painted twice \
             with one number; give each object its own number (scikit-image: \
             skimage.measure.label(labels, background=0) numbers each connected piece anew)",
            reused.len(),
            values[first + 1],
            a.area,
            a.centre().0,
            a.centre().1,
            b.area,
            b.centre().0,
            b.centre().1,
        )));
    }
    Ok(Labels {
        width,
        height,
        data,
        count: values.len().saturating_sub(1) as u32,
    })
}

/// A label value in this many separate pieces or more is not one object.
const SCATTERED: usize = 3;

/// A piece at least this share of its label's largest piece is an object, not a fragment.
const WHOLE_SHARE: usize = 4;

/// One 8-connected piece of a label: its area and bounding box (inclusive).
struct Piece {
    area: usize,
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

impl Piece {
    fn centre(&self) -> (usize, usize) {
        ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)
    }

    /// Empty pixels between the two boxes along the axis that separates them most.
    fn gap(&self, other: &Piece) -> usize {
        let gx = self
            .x0
            .saturating_sub(other.x1 + 1)
            .max(other.x0.saturating_sub(self.x1 + 1));
        let gy = self
            .y0
            .saturating_sub(other.y1 + 1)
            .max(other.y0.saturating_sub(self.y1 + 1));
        gx.max(gy)
    }
}

/// Two pieces of one label that are two objects, in reading order: the largest (the first of
/// equals), and another at least a quarter its size lying further from it than the largest's
/// own diameter. None for one object and its fragments.
fn apart(pieces: &[Piece]) -> Option<(&Piece, &Piece)> {
    let (at, largest) = pieces
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|(_, p)| p.area)?;
    let diameter = (4.0 * largest.area as f64 / std::f64::consts::PI).sqrt();
    let (other_at, other) = pieces.iter().enumerate().find(|&(i, p)| {
        i != at && p.area * WHOLE_SHARE >= largest.area && p.gap(largest) as f64 > diameter
    })?;
    Some(if other_at < at {
        (other, largest)
    } else {
        (largest, other)
    })
}

/// For each label 1..=labels, its 8-connected pieces.
fn pieces_of_labels(data: &[u32], w: usize, h: usize, labels: usize) -> Vec<Vec<Piece>> {
    let mut pieces: Vec<Vec<Piece>> = (0..labels).map(|_| Vec::new()).collect();
    let mut seen = vec![false; data.len()];
    let mut stack = Vec::new();
    for start in 0..data.len() {
        let label = data[start];
        if label == 0 || seen[start] {
            continue;
        }
        let mut piece = Piece {
            area: 0,
            x0: start % w,
            y0: start / w,
            x1: start % w,
            y1: start / w,
        };
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            piece.area += 1;
            piece.x0 = piece.x0.min(x);
            piece.x1 = piece.x1.max(x);
            piece.y0 = piece.y0.min(y);
            piece.y1 = piece.y1.max(y);
            neighbours8(i, w, h, |j| {
                if !seen[j] && data[j] == label {
                    seen[j] = true;
                    stack.push(j);
                }
            });
        }
        pieces[label as usize - 1].push(piece);
    }
    pieces
}

/// The file's one page as label values.
/// Width, height, the values, and whether the file stores 8 bits a pixel.
fn read_values(path: &Path) -> Result<(u32, u32, Vec<u32>, bool), ImageError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "tif" | "tiff" => read_tiff_values(path),
        "png" => read_png_values(path),
        _ => Err(ImageError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

fn open(path: &Path) -> Result<BufReader<File>, ImageError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn read_tiff_values(path: &Path) -> Result<(u32, u32, Vec<u32>, bool), ImageError> {
    use tiff::decoder::DecodingResult;
    let corrupt = |e: tiff::TiffError| ImageError::Corrupt {
        path: path.to_path_buf(),
        format: "TIFF",
        reason: e.to_string(),
    };
    let bad = |what: String| ImageError::BadMask {
        path: path.to_path_buf(),
        what,
    };
    let mut dec = crate::tiff_decoder(path, open(path)?, 8)?;
    let (width, height) = dec.dimensions().map_err(corrupt)?;
    crate::check_size(path, width, height)?;
    let photometric: Option<u16> = dec
        .find_tag_unsigned(tiff::tags::Tag::PhotometricInterpretation)
        .map_err(corrupt)?;
    let bits = crate::bits_per_sample(&mut dec).map_err(corrupt)?;
    let data: Vec<u32> = if photometric == Some(3) {
        // A palette image (Fiji's label images with a Glasbey table): the indices are the labels.
        if bits != Some(8) {
            return Err(bad(format!(
                "a {}-bit palette TIFF; save it as a 16-bit grey label image",
                bits.unwrap_or(0)
            )));
        }
        crate::palette::read_indices(path, &mut dec, width, height)?
            .into_iter()
            .map(u32::from)
            .collect()
    } else {
        match dec.colortype().map_err(corrupt)? {
            tiff::ColorType::Gray(_) => {}
            other => {
                return Err(bad(format!(
                    "TIFF colour type {other:?}: a mask is one grey plane of object numbers, not a coloured rendering of it"
                )))
            }
        }
        // Signed samples: object numbers only if none is negative.
        fn unsigned<T: TryInto<u32>>(v: Vec<T>) -> Option<Vec<u32>> {
            v.into_iter().map(|x| x.try_into().ok()).collect()
        }
        let negative =
            || bad("it has negative values; object numbers are 0 (background) and up".into());
        let too_large = || {
            bad(format!(
                "it has object numbers above {}; number the objects 1..n (e.g. skimage.segmentation.relabel_sequential)",
                u32::MAX
            ))
        };
        let whole = |v: f64| -> Result<u32, ImageError> {
            if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                Ok(v as u32)
            } else {
                Err(bad(format!(
                    "it holds {v}, which is not an object number: is it a probability map? Threshold and label it first"
                )))
            }
        };
        match crate::read_samples(path, &mut dec)? {
            // 1-, 2- or 4-bit samples come packed, rows padded to whole bytes (a binary
            // mask from MATLAB's `imwrite` of a logical array, or PIL's mode "1").
            DecodingResult::U8(v) if bits.is_some_and(|b| b < 8) => {
                crate::palette::unpack_rows(&v, width, height, bits.unwrap_or(8) as usize)
            }
            DecodingResult::U8(v) => v.into_iter().map(u32::from).collect(),
            DecodingResult::U16(v) => v.into_iter().map(u32::from).collect(),
            DecodingResult::U32(v) => v,
            DecodingResult::I8(v) => unsigned(v).ok_or_else(negative)?,
            DecodingResult::I16(v) => unsigned(v).ok_or_else(negative)?,
            DecodingResult::I32(v) => unsigned(v).ok_or_else(negative)?,
            DecodingResult::F32(v) => v
                .into_iter()
                .map(|x| whole(f64::from(x)))
                .collect::<Result<_, _>>()?,
            DecodingResult::F64(v) => v.into_iter().map(whole).collect::<Result<_, _>>()?,
            DecodingResult::F16(v) => v
                .into_iter()
                .map(|x| whole(x.to_f64()))
                .collect::<Result<_, _>>()?,
            // scikit-image's `label` returns int64, and saving it as it is writes 64-bit
            // samples: object numbers all the same, as long as they fit 32 bits.
            DecodingResult::U64(v) => unsigned(v).ok_or_else(too_large)?,
            DecodingResult::I64(v) => {
                if v.iter().any(|&x| x < 0) {
                    return Err(negative());
                }
                unsigned(v).ok_or_else(too_large)?
            }
        }
    };
    if data.len() != width as usize * height as usize {
        return Err(ImageError::Corrupt {
            path: path.to_path_buf(),
            format: "TIFF",
            reason: format!("{} pixels for a {width}x{height} image", data.len()),
        });
    }
    // Thumbnails and previews (reduced-resolution or other-size pages) are not planes.
    let planes = 1 + crate::more_planes(&mut dec, (width, height));
    if planes > 1 {
        return Err(bad(format!(
            "it has {planes} pages; a mask is one label image per field: save the plane that belongs to this field"
        )));
    }
    Ok((width, height, data, bits == Some(8)))
}

fn read_png_values(path: &Path) -> Result<(u32, u32, Vec<u32>, bool), ImageError> {
    // Grey (or grey written as equal RGB) values, or a palette PNG's indices (Fiji's label
    // images with a colour table): the image reader's values are the labels.
    let img = crate::read_image(path).map_err(|e| match e {
        ImageError::Unsupported { what, .. } => ImageError::BadMask {
            path: path.to_path_buf(),
            what: format!("{what}: a mask is one grey plane of object numbers, not a coloured rendering of it"),
        },
        e => e,
    })?;
    Ok((
        img.width,
        img.height,
        img.data.into_iter().map(u32::from).collect(),
        img.bit_depth == 8,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiff::encoder::{colortype, TiffEncoder};

    fn tiff<C: colortype::ColorType>(path: &Path, w: u32, h: u32, data: &[C::Inner], pages: usize)
    where
        [C::Inner]: tiff::encoder::TiffValue,
    {
        let mut enc = TiffEncoder::new(File::create(path).unwrap()).unwrap();
        for _ in 0..pages {
            enc.write_image::<C>(w, h, data).unwrap();
        }
    }

    /// Labels 0, 7, 3 and 70000 in a 2x2 image.
    const LABELS: [u32; 4] = [0, 7, 3, 70_000];

    #[test]
    fn every_integer_form_reads_as_the_same_objects_numbered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        tiff::<colortype::Gray32>(&p("u32.tif"), 2, 2, &LABELS, 1);
        tiff::<colortype::GrayI32>(&p("i32.tif"), 2, 2, &LABELS.map(|v| v as i32), 1);
        tiff::<colortype::Gray32Float>(&p("f32.tif"), 2, 2, &LABELS.map(|v| v as f32), 1);
        // scikit-image's `label` output saved as it is (int64), and its unsigned form.
        tiff::<colortype::GrayI64>(&p("i64.tif"), 2, 2, &LABELS.map(i64::from), 1);
        tiff::<colortype::Gray64>(&p("u64.tif"), 2, 2, &LABELS.map(u64::from), 1);
        for name in ["u32.tif", "i32.tif", "f32.tif", "i64.tif", "u64.tif"] {
            let l = read_mask(&p(name)).unwrap();
            // Ranks: 0 → 0, 3 → 1, 7 → 2, 70000 → 3.
            assert_eq!(
                (l.data.as_slice(), l.count),
                (&[0, 2, 1, 3][..], 3),
                "{name}"
            );
        }
        tiff::<colortype::Gray16>(&p("u16.tif"), 2, 2, &[0u16, 7, 3, 9], 1);
        let l = read_mask(&p("u16.tif")).unwrap();
        assert_eq!((l.data.as_slice(), l.count), (&[0, 2, 1, 3][..], 3));
    }

    /// 64-bit labels that are negative or beyond 32 bits are refused, naming the file and
    /// the fix.
    #[test]
    fn sixty_four_bit_labels_out_of_range_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        tiff::<colortype::GrayI64>(&p("neg.tif"), 2, 1, &[0i64, -1], 1);
        let err = read_mask(&p("neg.tif")).unwrap_err().to_string();
        assert!(err.contains("neg.tif") && err.contains("negative"), "{err}");
        tiff::<colortype::Gray64>(&p("big.tif"), 2, 1, &[0u64, 1 << 40], 1);
        let err = read_mask(&p("big.tif")).unwrap_err().to_string();
        assert!(
            err.contains("big.tif") && err.contains("relabel_sequential"),
            "{err}"
        );
    }

    #[test]
    fn a_binary_mask_is_split_into_connected_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("binary.tif");
        // Two blobs of 255 apart in a 5x1 row.
        tiff::<colortype::Gray8>(&path, 5, 1, &[255u8, 255, 0, 255, 0], 1);
        let l = read_mask(&path).unwrap();
        assert_eq!((l.data.as_slice(), l.count), (&[1, 1, 0, 2, 0][..], 2));
        // A class map (0 background, 1 nucleus, 2 border) is refused: each value is many
        // objects.
        let path = dir.path().join("classes.tif");
        let mut classes = vec![0u8; 12 * 3];
        for blob in 0..4 {
            classes[blob * 3] = 1;
            classes[blob * 3 + 1] = 2;
            classes[24 + blob * 3] = 1;
        }
        tiff::<colortype::Gray8>(&path, 12, 3, &classes, 1);
        let e = read_mask(&path).unwrap_err().to_string();
        assert!(e.contains("class map") && e.contains("classes.tif"), "{e}");
        // Pixels that touch at a corner are one object, as Fiji and scikit-image read them.
        let path = dir.path().join("diagonal.tif");
        tiff::<colortype::Gray8>(&path, 3, 3, &[255u8, 0, 0, 0, 255, 0, 0, 0, 255], 1);
        let l = read_mask(&path).unwrap();
        assert_eq!(l.count, 1, "{:?}", l.data);
    }

    #[test]
    fn a_palette_png_reads_its_indices_as_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("glasbey.png");
        let mut enc = png::Encoder::new(File::create(&path).unwrap(), 3, 1);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        // Index 0 black, 1 red, 2 green: colours that a grey reader would refuse.
        enc.set_palette(vec![0, 0, 0, 255, 0, 0, 0, 255, 0]);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[2, 0, 1]).unwrap();
        drop(w);
        let l = read_mask(&path).unwrap();
        assert_eq!((l.data.as_slice(), l.count), (&[2, 0, 1][..], 2));
    }

    /// A 1-bit TIFF (MATLAB's `imwrite` of a logical mask, PIL's mode "1"): packed rows,
    /// read as 0/1 and split into objects (it was refused as damaged: its byte count is not
    /// its pixel count).
    #[test]
    fn a_one_bit_tiff_mask_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logical.tif");
        let (w, h, rows) = (10u16, 2u16, [0b1100_0000u8, 0b1100_0000, 0, 0]);
        let mut t: Vec<u8> = b"II".to_vec();
        t.extend(42u16.to_le_bytes());
        t.extend(8u32.to_le_bytes());
        let entries: [(u16, u16, u32); 9] = [
            (256, 3, w.into()),
            (257, 3, h.into()),
            (258, 3, 1),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, 8 + 2 + 9 * 12 + 4),
            (277, 3, 1),
            (278, 3, h.into()),
            (279, 4, rows.len() as u32),
        ];
        t.extend(9u16.to_le_bytes());
        for (tag, ty, value) in entries {
            t.extend(tag.to_le_bytes());
            t.extend(ty.to_le_bytes());
            t.extend(1u32.to_le_bytes());
            // A SHORT sits in the first two bytes of the value field.
            t.extend(value.to_le_bytes());
        }
        t.extend(0u32.to_le_bytes());
        t.extend(rows);
        std::fs::write(&path, t).unwrap();
        let l = read_mask(&path).unwrap();
        assert_eq!(l.count, 2);
        assert_eq!(&l.data[..10], &[1, 1, 0, 0, 0, 0, 0, 0, 2, 2]);
        assert!(l.data[10..].iter().all(|&v| v == 0));
    }

    /// Palette and grey PNGs of fewer than 8 bits (packed from each byte's high bits, rows
    /// padded to whole bytes), as small label images and Fiji's binary masks are saved.
    #[test]
    fn pngs_of_fewer_bits_read_their_packed_values() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, color, depth, w: u32, h: u32, packed: &[u8]| {
            let path = dir.path().join(name);
            let mut enc = png::Encoder::new(File::create(&path).unwrap(), w, h);
            enc.set_color(color);
            enc.set_depth(depth);
            if color == png::ColorType::Indexed {
                enc.set_palette(
                    (0..16u8)
                        .flat_map(|i| [i * 16, 255 - i * 16, i])
                        .collect::<Vec<_>>(),
                );
            }
            enc.write_header()
                .unwrap()
                .write_image_data(packed)
                .unwrap();
            path
        };
        // 4 bits, 3x2: indices 0 5 0 / 0 0 9, each row padded to 2 bytes.
        let p4 = write(
            "p4.png",
            png::ColorType::Indexed,
            png::BitDepth::Four,
            3,
            2,
            &[0x05, 0x00, 0x00, 0x90],
        );
        let l = read_mask(&p4).unwrap();
        assert_eq!((l.data.as_slice(), l.count), (&[0, 1, 0, 0, 0, 2][..], 2));
        // 1 bit, 10x1 (across a byte): value 1 at x 0-1 and x 8-9, one value for every
        // object, so a binary mask, split into its two components; as a palette PNG and as a
        // grey one (a binary mask saved by Fiji).
        for (name, color) in [
            ("p1.png", png::ColorType::Indexed),
            ("g1.png", png::ColorType::Grayscale),
        ] {
            let packed = [0b1100_0000, 0b1100_0000];
            let path = write(name, color, png::BitDepth::One, 10, 1, &packed);
            let l = read_mask(&path).unwrap();
            assert_eq!(l.data, [1, 1, 0, 0, 0, 0, 0, 0, 2, 2], "{name}");
        }
    }

    #[test]
    fn bad_masks_are_refused_with_the_reason_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        type Write = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Write, &str)> = vec![
            (
                "pages.tif",
                Box::new(|q| tiff::<colortype::Gray16>(q, 2, 2, &[0u16, 1, 2, 3], 3)),
                "3 pages",
            ),
            (
                "classes.tif",
                Box::new(|q| tiff::<colortype::Gray8>(q, 2, 2, &[1u8, 1, 2, 3], 1)),
                "no background",
            ),
            (
                "negative.tif",
                Box::new(|q| tiff::<colortype::GrayI32>(q, 2, 2, &[0i32, 1, -1, 2], 1)),
                "negative",
            ),
            (
                "probabilities.tif",
                Box::new(|q| tiff::<colortype::Gray32Float>(q, 2, 2, &[0f32, 0.5, 1.0, 2.0], 1)),
                "probability map",
            ),
            (
                "rgb.tif",
                Box::new(|q| tiff::<colortype::RGB8>(q, 1, 1, &[1u8, 2, 3], 1)),
                "coloured rendering",
            ),
        ];
        for (name, write, why) in cases {
            write(&p(name));
            let e = read_mask(&p(name)).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(name), "{name}: {e}");
        }
    }

    /// 300 objects written to an 8-bit file wrap around (every value 1..255 in use): refused,
    /// saying to export 16 bits; the same 255 values in a 16-bit file are 255 objects.
    #[test]
    fn eight_bit_labels_that_wrapped_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wrapped: Vec<u8> = (0..400u32)
            .map(|i| if i < 300 { ((i + 1) % 256) as u8 } else { 0 })
            .collect();
        let p = dir.path().join("wrapped.tif");
        tiff::<colortype::Gray8>(&p, 20, 20, &wrapped, 1);
        let e = read_mask(&p).unwrap_err().to_string();
        assert!(e.contains("wrapped.tif") && e.contains("16-bit"), "{e}");
        let sixteen: Vec<u16> = (0..400u32)
            .map(|i| if i < 255 { (i + 1) as u16 } else { 0 })
            .collect();
        let p = dir.path().join("sixteen.tif");
        tiff::<colortype::Gray16>(&p, 20, 20, &sixteen, 1);
        assert_eq!(read_mask(&p).unwrap().count, 255);
    }

    /// A 40x20 label image with `squares` (label, x, y, side) painted in.
    fn painted(squares: &[(u16, usize, usize, usize)]) -> Vec<u16> {
        let mut data = vec![0u16; 40 * 20];
        for &(label, x, y, side) in squares {
            for yy in y..y + side {
                for xx in x..x + side {
                    data[yy * 40 + xx] = label;
                }
            }
        }
        data
    }

    /// One number on two objects far apart is refused, naming the value and where both
    /// lie; an object with a fragment beside it, or cut in two by a thin gap, is one object.
    #[test]
    fn a_label_on_two_objects_far_apart_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);

        // Two tiles of 20x20, each labelled 1..3 on its own, stitched side by side.
        let tile = [(1, 2, 2, 5), (2, 10, 3, 6), (3, 4, 12, 5)];
        let stitched: Vec<_> = tile
            .iter()
            .chain(
                tile.iter()
                    .map(|&(l, x, y, s)| (l, x + 20, y, s))
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .copied()
            .collect();
        tiff::<colortype::Gray16>(&p("stitched.tif"), 40, 20, &painted(&stitched), 1);
        let e = read_mask(&p("stitched.tif")).unwrap_err().to_string();
        assert!(
            e.contains("stitched.tif")
                && e.contains("3 of its 3 label values")
                && e.contains("value 1: 25 px around x 4, y 4 and 25 px around x 24, y 4")
                && e.contains("skimage.measure.label"),
            "{e}"
        );

        // One object of five painted a second time with its number, far away.
        let twice = [
            (1, 2, 2, 4),
            (2, 10, 2, 4),
            (3, 18, 2, 4),
            (4, 26, 2, 4),
            (5, 2, 12, 4),
            (3, 30, 12, 4),
        ];
        tiff::<colortype::Gray16>(&p("twice.tif"), 40, 20, &painted(&twice), 1);
        let e = read_mask(&p("twice.tif")).unwrap_err().to_string();
        assert!(
            e.contains("1 of its 5 label values") && e.contains("value 3"),
            "{e}"
        );

        // A fragment of 4 px two pixels from its 36 px object; an object cut in two halves
        // by a one-pixel gap: each is one object.
        let fragments = [(1, 2, 2, 6), (1, 10, 4, 2), (2, 20, 2, 4), (2, 25, 2, 4)];
        tiff::<colortype::Gray16>(&p("fragments.tif"), 40, 20, &painted(&fragments), 1);
        let l = read_mask(&p("fragments.tif")).unwrap();
        assert_eq!(l.count, 2);
    }
}
