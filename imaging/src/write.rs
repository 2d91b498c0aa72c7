//! Writing grey images as TIFF: 16-bit label images and 8-bit images that open in Fiji, napari
//! and tifffile. Deflate-compressed, as label images are mostly runs of equal values (a nucleus
//! label image shrinks about tenfold); no predictor, which every reader decodes. Written
//! atomically: a reader, or a rerun after a crash, never sees half a file.

use crate::ImageError;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tiff::encoder::{colortype, Compression, DeflateLevel, TiffEncoder, TiffValue};

/// A 16-bit grey TIFF (a label image — labels above 65535 must be refused by the caller — or
/// 16-bit intensities). `data` is row-major, `width * height` values.
pub fn write_tiff_u16(
    path: &Path,
    width: u32,
    height: u32,
    data: &[u16],
) -> Result<(), ImageError> {
    write_as::<colortype::Gray16>(path, width, height, data)
}

/// An 8-bit grey TIFF (masks, 8-bit intensities). `data` is row-major, `width * height` values.
pub fn write_tiff_u8(path: &Path, width: u32, height: u32, data: &[u8]) -> Result<(), ImageError> {
    write_as::<colortype::Gray8>(path, width, height, data)
}

fn write_as<C: colortype::ColorType>(
    path: &Path,
    width: u32,
    height: u32,
    data: &[C::Inner],
) -> Result<(), ImageError>
where
    [C::Inner]: TiffValue,
{
    let fail = |reason: String| ImageError::Unwritable {
        path: path.to_path_buf(),
        reason,
    };
    if width == 0 || height == 0 || data.len() != width as usize * height as usize {
        return Err(fail(format!(
            "{} values for a {width}x{height} image",
            data.len()
        )));
    }
    let (tmp, file) = temp_beside(path).map_err(|e| fail(e.to_string()))?;
    let written = encode::<C>(file, width, height, data)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if let Err(reason) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(reason));
    }
    Ok(())
}

fn encode<C: colortype::ColorType>(
    file: File,
    width: u32,
    height: u32,
    data: &[C::Inner],
) -> Result<(), String>
where
    [C::Inner]: TiffValue,
{
    let mut out = BufWriter::new(file);
    TiffEncoder::new(&mut out)
        .map_err(|e| e.to_string())?
        .with_compression(Compression::Deflate(DeflateLevel::Fast))
        .write_image::<C>(width, height, data)
        .map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    let file = out.into_inner().map_err(|e| e.to_string())?;
    // On disk before the rename makes it visible, so a crash leaves the old file or the new.
    file.sync_all().map_err(|e| e.to_string())
}

/// A new, uniquely named file in the target's directory (a rename is atomic only within one
/// file system). Created with the process umask, like any other output file; a hidden name so
/// that directory listings and globs for `*.tif` do not pick up a half-written image.
fn temp_beside(path: &Path) -> std::io::Result<(PathBuf, File)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::create_dir_all(dir)?;
    loop {
        let tmp = dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A label-like image: rectangles of labels 1..=n on 0, with labels above 255.
    fn labels(w: u32, h: u32) -> Vec<u16> {
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if x % 20 < 14 && y % 16 < 11 {
                    (1 + x / 20 + (y / 16) * 50) as u16 * 7
                } else {
                    0
                }
            })
            .collect()
    }

    #[test]
    fn u16_round_trip_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels.tif");
        let data = labels(300, 200);
        write_tiff_u16(&p, 300, 200, &data).unwrap();
        let img = crate::read_image(&p).unwrap();
        assert_eq!((img.width, img.height, img.bit_depth), (300, 200, 16));
        assert_eq!(img.data, data);
        // Compressed: far smaller than the 120 kB of raw samples.
        assert!(std::fs::metadata(&p).unwrap().len() < 30_000);
        // Overwriting replaces the file; no temporary file is left behind.
        let other: Vec<u16> = data.iter().map(|v| v / 7).collect();
        write_tiff_u16(&p, 300, 200, &other).unwrap();
        assert_eq!(crate::read_image(&p).unwrap().data, other);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn u8_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mask.tiff");
        let data: Vec<u8> = (0..64u32 * 48).map(|i| (i * 37 % 256) as u8).collect();
        write_tiff_u8(&p, 64, 48, &data).unwrap();
        let img = crate::read_image(&p).unwrap();
        assert_eq!((img.width, img.height, img.bit_depth), (64, 48, 8));
        assert!(img.data.iter().zip(&data).all(|(&a, &b)| a == b as u16));
    }

    #[test]
    fn errors_name_the_file_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.tif");
        let e = write_tiff_u16(&p, 3, 3, &[1, 2]).unwrap_err().to_string();
        assert!(e.contains("l.tif") && e.contains("3x3"), "{e}");
        // Missing directories are created; a path through a regular file cannot be.
        write_tiff_u8(&dir.path().join("new/dir/a.tif"), 1, 1, &[1]).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let blocked = dir.path().join("file/l.tif");
        let e = write_tiff_u8(&blocked, 1, 1, &[1]).unwrap_err().to_string();
        assert!(e.contains("l.tif"), "{e}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// Python's tifffile (the reader napari uses) decodes the file to the same values. Skips
    /// when the scikit-image venv is absent.
    #[test]
    fn tifffile_reads_it() {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-venv/bin/python");
        let has_tifffile = python.exists()
            && std::process::Command::new(&python)
                .args(["-c", "import tifffile"])
                .status()
                .is_ok_and(|s| s.success());
        if !has_tifffile {
            println!("skipped: no python with tifffile at {}", python.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels.tif");
        let data = labels(300, 200);
        write_tiff_u16(&p, 300, 200, &data).unwrap();
        let script = "import sys, tifffile\n\
                      a = tifffile.imread(sys.argv[1])\n\
                      print(a.dtype, a.shape, a[0, 0], a[5, 30], a[199, 299], int(a.max()), int(a.sum()))";
        let out = std::process::Command::new(&python)
            .args(["-c", script])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let at = |x: usize, y: usize| data[y * 300 + x];
        let sum: u64 = data.iter().map(|&v| v as u64).sum();
        let want = format!(
            "uint16 (200, 300) {} {} {} {} {sum}",
            at(0, 0),
            at(30, 5),
            at(299, 199),
            data.iter().max().unwrap()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    }
}
