use super::*;
use tiff::encoder::{colortype, compression::DeflateLevel, Compression, TiffEncoder};

fn ramp8(w: u32, h: u32) -> Vec<u8> {
    (0..w * h).map(|i| (i * 7 % 251) as u8).collect()
}

fn write_tiff8(path: &Path, c: Compression, data: &[u8], w: u32, h: u32, pages: usize) {
    let f = File::create(path).unwrap();
    let mut enc = TiffEncoder::new(f).unwrap().with_compression(c);
    for _ in 0..pages {
        enc.write_image::<colortype::Gray8>(w, h, data).unwrap();
    }
}

#[test]
fn tiff_8bit_every_compression_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (37, 23);
    let data = ramp8(w, h);
    let kinds = [
        ("none", Compression::Uncompressed),
        ("lzw", Compression::Lzw),
        ("packbits", Compression::Packbits),
        ("deflate", Compression::Deflate(DeflateLevel::Balanced)),
    ];
    for (name, c) in kinds {
        let p = dir.path().join(format!("{name}.tif"));
        write_tiff8(&p, c, &data, w, h, 3);
        let pages = read_pages(&p).unwrap();
        assert_eq!(pages.len(), 3, "{name}");
        for page in &pages {
            assert_eq!(
                (page.width, page.height, page.bit_depth),
                (w, h, 8),
                "{name}"
            );
            assert_eq!(
                page.data,
                data.iter().map(|&v| v as u16).collect::<Vec<_>>(),
                "{name}"
            );
        }
    }
}

#[test]
fn tiff_16bit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("deep.TIFF");
    let data: Vec<u16> = (0..64u32 * 32).map(|i| (i * 31 % 65521) as u16).collect();
    let f = File::create(&p).unwrap();
    TiffEncoder::new(f)
        .unwrap()
        .with_compression(Compression::Lzw)
        .write_image::<colortype::Gray16>(64, 32, &data)
        .unwrap();
    let img = read_image(&p).unwrap();
    assert_eq!(img.bit_depth, 16);
    assert_eq!(img.max_value(), u16::MAX);
    assert_eq!(img.data, data);
}

#[test]
fn png_grey_rgb_and_colour() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, color: png::ColorType, depth: png::BitDepth, bytes: &[u8]| {
        let p = dir.path().join(name);
        let mut enc = png::Encoder::new(std::io::BufWriter::new(File::create(&p).unwrap()), 4, 2);
        enc.set_color(color);
        enc.set_depth(depth);
        enc.write_header().unwrap().write_image_data(bytes).unwrap();
        p
    };
    let grey = write(
        "g.png",
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0, 1, 2, 3, 4, 5, 6, 255],
    );
    let img = read_image(&grey).unwrap();
    assert_eq!(img.data, vec![0, 1, 2, 3, 4, 5, 6, 255]);
    let rgb: Vec<u8> = (0..8u8).flat_map(|v| [v * 10; 3]).collect();
    let img = read_image(&write(
        "rgb.png",
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &rgb,
    ))
    .unwrap();
    assert_eq!(img.data, (0..8u16).map(|v| v * 10).collect::<Vec<_>>());
    let mut colour = rgb.clone();
    colour[4] = 99;
    let err = read_image(&write(
        "c.png",
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &colour,
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("c.png") && err.to_string().contains("channels differ"),
        "{err}"
    );
    let deep: Vec<u8> = (0..8u16).flat_map(|v| (v * 1000).to_be_bytes()).collect();
    let img = read_image(&write(
        "d.png",
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &deep,
    ))
    .unwrap();
    assert_eq!((img.bit_depth, img.get(3, 1)), (16, 7000));
}

/// A palette PNG's indices are its values, as for palette TIFFs: Fiji saves an image shown
/// with an inverted LUT as an inverted grey palette, and read through it the intensities came
/// out inverted; a coloured LUT ("Fire") was refused as a colour image.
#[test]
fn palette_pngs_read_their_indices() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, depth: png::BitDepth, palette: Vec<u8>, bytes: &[u8]| {
        let p = dir.path().join(name);
        let mut enc = png::Encoder::new(std::io::BufWriter::new(File::create(&p).unwrap()), 4, 2);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(depth);
        enc.set_palette(palette);
        enc.write_header().unwrap().write_image_data(bytes).unwrap();
        p
    };
    let inverted: Vec<u8> = (0..=255u8).flat_map(|i| [255 - i; 3]).collect();
    let img = read_image(&write(
        "inverted.png",
        png::BitDepth::Eight,
        inverted,
        &[0, 10, 20, 30, 40, 50, 60, 250],
    ))
    .unwrap();
    assert_eq!(img.data, vec![0, 10, 20, 30, 40, 50, 60, 250]);
    assert_eq!(img.bit_depth, 8);
    // 4-bit indices into a coloured table, two pixels a byte.
    let fire: Vec<u8> = (0..16u8)
        .flat_map(|i| [i * 16, i * 4, 255 - i * 16])
        .collect();
    let img = read_image(&write(
        "fire.png",
        png::BitDepth::Four,
        fire,
        &[0x01, 0x23, 0x45, 0x6f],
    ))
    .unwrap();
    assert_eq!(img.data, vec![0, 1, 2, 3, 4, 5, 6, 15]);
}

#[test]
fn bad_files_name_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("cut.tif");
    write_tiff8(
        &truncated,
        Compression::Uncompressed,
        &ramp8(64, 64),
        64,
        64,
        1,
    );
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let e = read_image(&truncated).unwrap_err();
    assert!(
        matches!(e, ImageError::Corrupt { .. }) && e.to_string().contains("cut.tif"),
        "{e}"
    );

    let garbage = dir.path().join("noise.png");
    std::fs::write(&garbage, b"this is not a png").unwrap();
    let e = read_image(&garbage).unwrap_err();
    assert!(
        e.to_string().contains("noise.png") && e.to_string().contains("PNG"),
        "{e}"
    );

    let missing = dir.path().join("absent.tif");
    assert!(matches!(read_image(&missing), Err(ImageError::Io { .. })));
    let other = dir.path().join("x.jpg");
    std::fs::write(&other, b"").unwrap();
    assert!(matches!(
        read_image(&other),
        Err(ImageError::UnknownFormat { .. })
    ));
}

/// The real data sets beside the repository, when present.
fn shared(sub: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(sub);
    if p.is_dir() {
        Some(p)
    } else {
        println!("skipped: {} is absent", p.display());
        None
    }
}

#[test]
fn real_palette_tiffs_of_the_sbs_plate() {
    let Some(dir) = shared("sbs-plate") else {
        return;
    };
    let img = read_image(&dir.join("Channel2-01-A-01.tif")).unwrap();
    assert_eq!((img.width, img.height, img.bit_depth), (640, 640, 8));
    let max = *img.data.iter().max().unwrap();
    let mean = img.data.iter().map(|&v| v as f64).sum::<f64>() / img.data.len() as f64;
    assert!(
        max > 50 && mean < max as f64 / 2.0,
        "nuclei are bright on a dark background: max {max}, mean {mean}"
    );
}

#[test]
fn real_coelho_pngs() {
    let Some(dir) = shared("coelho-u2os") else {
        return;
    };
    let img = read_image(&dir.join("images/dna-0.png")).unwrap();
    assert_eq!((img.width, img.height), (1349, 1030));
    let labels = read_image(&dir.join("labels/dna-0.png")).unwrap();
    assert_eq!((labels.width, labels.height), (1349, 1030));
    assert!(labels.data.iter().any(|&v| v > 0));
}

/// How [`palette_tiff`]'s colour map shows the indices.
#[derive(Clone, Copy)]
enum Lut {
    Grey,
    /// ImageJ's inverted LUT (its binary masks unless "black background" is set).
    Inverted,
    /// ImageJ's "Green": red and blue 0.
    Green,
}

/// A minimal little-endian palette TIFF: one strip, a colour map as `lut` says.
fn palette_tiff(
    path: &Path,
    w: u16,
    h: u16,
    strip: &[u8],
    compression: u16,
    predictor: u16,
    lut: Lut,
) {
    let mut d: Vec<u8> = b"II*\0".to_vec();
    let cmap_off = 8u32;
    let mut cmap = Vec::new();
    for ch in 0..3 {
        for i in 0..256u32 {
            let v = match lut {
                Lut::Green if ch != 1 => 0,
                Lut::Inverted => ((255 - i) * 257) as u16,
                _ => (i * 257) as u16,
            };
            cmap.extend_from_slice(&v.to_le_bytes());
        }
    }
    let strip_off = cmap_off + cmap.len() as u32;
    let ifd_off = strip_off + strip.len() as u32;
    d.extend_from_slice(&ifd_off.to_le_bytes());
    d.extend_from_slice(&cmap);
    d.extend_from_slice(strip);
    let entries: Vec<(u16, u16, u32, u32)> = vec![
        (256, 3, 1, w as u32),
        (257, 3, 1, h as u32),
        (258, 3, 1, 8),
        (259, 3, 1, compression as u32),
        (262, 3, 1, 3),
        (273, 4, 1, strip_off),
        (277, 3, 1, 1),
        (278, 3, 1, h as u32),
        (279, 4, 1, strip.len() as u32),
        (317, 3, 1, predictor as u32),
        (320, 3, 768, cmap_off),
    ];
    d.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, typ, count, value) in entries {
        d.extend_from_slice(&tag.to_le_bytes());
        d.extend_from_slice(&typ.to_le_bytes());
        d.extend_from_slice(&count.to_le_bytes());
        d.extend_from_slice(&value.to_le_bytes());
    }
    d.extend_from_slice(&0u32.to_le_bytes());
    std::fs::write(path, d).unwrap();
}

#[test]
fn palette_tiffs_uncompressed_packbits_lzw_with_predictor() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (16u16, 4u16);
    let indices: Vec<u8> = (0..w as u32 * h as u32)
        .map(|i| (i * 5 % 256) as u8)
        .collect();
    let want: Vec<u16> = indices.iter().map(|&i| i as u16).collect();

    let p = dir.path().join("plain.tif");
    palette_tiff(&p, w, h, &indices, 1, 1, Lut::Grey);
    assert_eq!(read_image(&p).unwrap().data, want);

    // PackBits as literal runs of one row each.
    let mut packed = Vec::new();
    for row in indices.chunks(w as usize) {
        packed.push((row.len() - 1) as u8);
        packed.extend_from_slice(row);
    }
    let p = dir.path().join("packbits.tif");
    palette_tiff(&p, w, h, &packed, 32773, 1, Lut::Grey);
    assert_eq!(read_image(&p).unwrap().data, want);

    // LZW with horizontal differencing.
    let mut diffed = indices.clone();
    for row in diffed.chunks_mut(w as usize) {
        for i in (1..row.len()).rev() {
            row[i] = row[i].wrapping_sub(row[i - 1]);
        }
    }
    let lzw = weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
        .encode(&diffed)
        .unwrap();
    let p = dir.path().join("lzw.tif");
    palette_tiff(&p, w, h, &lzw, 5, 2, Lut::Grey);
    assert_eq!(read_image(&p).unwrap().data, want);

    // The palette only shows the image: an inverted or green LUT leaves the indices as the
    // values, as ImageJ measures them (mapped through, an ImageJ mask read inside out).
    for lut in [Lut::Inverted, Lut::Green] {
        let p = dir.path().join("shown.tif");
        palette_tiff(&p, w, h, &indices, 1, 1, lut);
        assert_eq!(read_image(&p).unwrap().data, want);
    }
}

/// 32-bit TIFFs (ImageJ's "32-bit", deconvolution output) by one rule that does not depend
/// on the image: values within 0-65535 rounded; what no such rule fits (negative, larger,
/// NaN, fractions all within 0-255 such as normalised 0-1 floats) is refused with the range
/// and what to do, naming the file.
#[test]
fn tiff_32bit_integer_and_float() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let write = |path: &Path, f: &dyn Fn(&mut TiffEncoder<File>)| {
        let mut enc = TiffEncoder::new(File::create(path).unwrap()).unwrap();
        f(&mut enc);
    };
    write(&p("u32.tif"), &|e| {
        e.write_image::<colortype::Gray32>(3, 1, &[0u32, 700, 65535])
            .unwrap();
    });
    let i = read_image(&p("u32.tif")).unwrap();
    assert_eq!(
        (i.data.as_slice(), i.bit_depth),
        (&[0u16, 700, 65535][..], 16)
    );
    // An integer image of 0 and 1 is not "normalised": its values stay.
    write(&p("u32-binary.tif"), &|e| {
        e.write_image::<colortype::Gray32>(2, 1, &[0u32, 1])
            .unwrap();
    });
    assert_eq!(read_image(&p("u32-binary.tif")).unwrap().data, [0, 1]);
    write(&p("counts.tif"), &|e| {
        e.write_image::<colortype::Gray32Float>(3, 1, &[100.0f32, 2047.4, 2047.6])
            .unwrap();
    });
    assert_eq!(
        read_image(&p("counts.tif")).unwrap().data,
        [100, 2047, 2048]
    );
    for (name, data, says) in [
        (
            "unit.tif",
            [0.0f32, 0.5, 1.0],
            "fractional values from 0 to 1",
        ),
        (
            "dim.tif",
            [0.0, 12.5, 250.25],
            "fractional values from 0 to 250.25",
        ),
        ("negative.tif", [-3.0, 0.0, 10.0], "values from -3 to 10"),
        ("large.tif", [0.0, 1.0, 1e6], "values from 0 to 1000000"),
        (
            "nan.tif",
            [0.0, f32::NAN, 1.0],
            "1 pixels that are not numbers",
        ),
    ] {
        write(&p(name), &|e| {
            e.write_image::<colortype::Gray32Float>(3, 1, &data)
                .unwrap();
        });
        let err = read_image(&p(name)).unwrap_err().to_string();
        assert!(err.contains(says) && err.contains(name), "{err}");
    }
    write(&p("u32-large.tif"), &|e| {
        e.write_image::<colortype::Gray32>(2, 1, &[0u32, 70_000])
            .unwrap();
    });
    let err = read_image(&p("u32-large.tif")).unwrap_err().to_string();
    assert!(
        err.contains("32-bit integer image with values from 0 to 70000"),
        "{err}"
    );
    write(&p("i32.tif"), &|e| {
        e.write_image::<colortype::GrayI32>(2, 1, &[-5i32, 100])
            .unwrap();
    });
    let err = read_image(&p("i32.tif")).unwrap_err().to_string();
    assert!(err.contains("values from -5 to 100"), "{err}");
}

/// Grey images as other tools save them: as RGB(A) with equal channels (read as grey, as
/// PNGs are), signed 16-bit (cameras, MATLAB's int16) and 64-bit floats (MATLAB's double) by
/// the 32-bit rule; a real colour image is refused naming the file.
#[test]
fn tiff_grey_as_rgb_signed_16_bit_and_double() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let write = |path: &Path, f: &dyn Fn(&mut TiffEncoder<File>)| {
        let mut enc = TiffEncoder::new(File::create(path).unwrap()).unwrap();
        f(&mut enc);
    };
    write(&p("rgb.tif"), &|e| {
        e.write_image::<colortype::RGB8>(2, 1, &[5u8, 5, 5, 200, 200, 200])
            .unwrap();
    });
    let i = read_image(&p("rgb.tif")).unwrap();
    assert_eq!((i.data.as_slice(), i.bit_depth), (&[5u16, 200][..], 8));
    write(&p("rgba16.tif"), &|e| {
        e.write_image::<colortype::RGBA16>(2, 1, &[9u16, 9, 9, 65535, 4000, 4000, 4000, 0])
            .unwrap();
    });
    let i = read_image(&p("rgba16.tif")).unwrap();
    assert_eq!((i.data.as_slice(), i.bit_depth), (&[9u16, 4000][..], 16));
    write(&p("colour.tif"), &|e| {
        e.write_image::<colortype::RGB8>(2, 1, &[5u8, 5, 5, 200, 0, 0])
            .unwrap();
    });
    let err = read_image(&p("colour.tif")).unwrap_err().to_string();
    assert!(
        err.contains("colour.tif") && err.contains("channels differ"),
        "{err}"
    );
    write(&p("i16.tif"), &|e| {
        e.write_image::<colortype::GrayI16>(2, 1, &[0i16, 3000])
            .unwrap();
    });
    assert_eq!(read_image(&p("i16.tif")).unwrap().data, [0, 3000]);
    write(&p("i16-negative.tif"), &|e| {
        e.write_image::<colortype::GrayI16>(2, 1, &[-5i16, 3000])
            .unwrap();
    });
    let err = read_image(&p("i16-negative.tif")).unwrap_err().to_string();
    assert!(
        err.contains("16-bit integer image with values from -5 to 3000"),
        "{err}"
    );
    write(&p("f64.tif"), &|e| {
        e.write_image::<colortype::Gray64Float>(2, 1, &[100.0f64, 2047.6])
            .unwrap();
    });
    assert_eq!(read_image(&p("f64.tif")).unwrap().data, [100, 2048]);
}

/// A stack (channels or z-planes as pages) is refused by `read_image`, naming the file and
/// how many planes, instead of being read as its first plane; a file whose other pages are
/// reduced-resolution copies (a thumbnail) reads as its one plane.
#[test]
fn a_stack_is_refused_and_a_thumbnail_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (8, 4);
    let data = ramp8(w, h);
    let stack = dir.path().join("stack.tif");
    write_tiff8(&stack, Compression::Uncompressed, &data, w, h, 3);
    let err = read_image(&stack).unwrap_err().to_string();
    assert!(
        err.contains("stack.tif is a stack of 3 planes") && err.contains("Stack to Images"),
        "{err}"
    );
    assert_eq!(
        read_pages(&stack).unwrap().len(),
        3,
        "read_pages still reads them all"
    );

    let with_thumb = dir.path().join("thumb.tif");
    let mut enc = TiffEncoder::new(File::create(&with_thumb).unwrap()).unwrap();
    enc.write_image::<colortype::Gray8>(w, h, &data).unwrap();
    let mut thumb = enc.new_image::<colortype::Gray8>(2, 1).unwrap();
    thumb
        .encoder()
        .write_tag(tiff::tags::Tag::NewSubfileType, 1u32)
        .unwrap();
    thumb.write_data(&[1, 2]).unwrap();
    // A preview of another size, not flagged as one: not a plane of this field either.
    enc.write_image::<colortype::Gray8>(4, 2, &[0; 8]).unwrap();
    let img = read_image(&with_thumb).unwrap();
    assert_eq!((img.width, img.height), (w, h));
    assert_eq!(img.data, data.iter().map(|&v| v as u16).collect::<Vec<_>>());
}

/// Tiled LZW TIFFs whose right and bottom tiles overhang the image, as tifffile, bfconvert
/// and OME-TIFF writers make them (`tests/fixtures/make_tiled_lzw.py`): the tiff crate alone
/// stops on them ("no lzw end code found"); plateflow reads them tile by tile, with the
/// predictor and in either byte order, as images and as masks.
#[test]
fn tiled_lzw_tiffs_that_overhang_their_tiles() {
    let fixture = |n: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(n)
    };
    let want16: Vec<u16> = (0..21u16)
        .flat_map(|y| (0..37u16).map(move |x| (37 * x + 101 * y) % 4096))
        .collect();
    for name in [
        "tiled-lzw-u16-predictor.tif",
        "tiled-lzw-u16-big-endian.tif",
        "tiled-lzw-i32.tif",
    ] {
        let img = read_image(&fixture(name)).unwrap();
        assert_eq!((img.width, img.height), (37, 21), "{name}");
        assert_eq!(img.data, want16, "{name}");
    }
    let img = read_image(&fixture("tiled-lzw-u8.tif")).unwrap();
    let want8: Vec<u16> = (0..21u16)
        .flat_map(|y| (0..37u16).map(move |x| (7 * x + 13 * y) % 256))
        .collect();
    assert_eq!((img.data, img.bit_depth), (want8, 8));
    // The same file as a label image: values ranked, none lost.
    let labels = crate::masks::read_mask(&fixture("tiled-lzw-i32.tif")).unwrap();
    let distinct: std::collections::BTreeSet<u16> = want16.iter().copied().collect();
    assert_eq!(
        labels.count as usize,
        distinct.len() - usize::from(distinct.contains(&0))
    );
}

/// A tiled LZW TIFF whose header declares tiles of 65535×65535 pixels (a damaged file) is
/// refused as corrupt, naming the file, instead of allocating gigabytes for one tile.
#[test]
fn a_tile_size_from_a_damaged_header_is_refused_not_allocated() {
    // Little-endian TIFF, one IFD of 10 entries at byte 8; the tile's 4 bytes follow it.
    let entries: [(u16, u16, u32); 10] = [
        (256, 3, 64),                  // ImageWidth
        (257, 3, 64),                  // ImageLength
        (258, 3, 8),                   // BitsPerSample
        (259, 3, 5),                   // Compression: LZW
        (262, 3, 1),                   // PhotometricInterpretation: black is zero
        (277, 3, 1),                   // SamplesPerPixel
        (322, 3, 65535),               // TileWidth
        (323, 3, 65535),               // TileLength
        (324, 4, 8 + 2 + 10 * 12 + 4), // TileOffsets: just after the IFD
        (325, 4, 4),                   // TileByteCounts
    ];
    let mut b = b"II*\0".to_vec();
    b.extend(8u32.to_le_bytes());
    b.extend((entries.len() as u16).to_le_bytes());
    for (tag, ty, value) in entries {
        b.extend(tag.to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        if ty == 3 {
            b.extend((value as u16).to_le_bytes());
            b.extend([0, 0]);
        } else {
            b.extend(value.to_le_bytes());
        }
    }
    b.extend(0u32.to_le_bytes()); // no next IFD
    b.extend([0x80, 0x00, 0x20, 0x00]); // LZW: clear code, a zero, then nothing useful
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.tif");
    std::fs::write(&path, &b).unwrap();
    let err = read_image(&path).unwrap_err().to_string();
    assert!(err.contains("damaged.tif"), "{err}");
    assert!(
        err.contains("tiles of 65535×65535 pixels for a 64×64 image"),
        "{err}"
    );
}
