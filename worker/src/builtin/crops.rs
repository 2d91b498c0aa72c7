//! `crops`: fixed-size single-cell crops centred on each nucleus, all channels stacked, for
//! CNN training. One safetensors file per task (`crops.safetensors`, tensor `crops` of shape
//! [N, C, S, S], u8 or u16 as the images are) and an index table (`crops.csv`: row in the
//! tensor, image set, plate, well, site, object number, label from the plate map).
//! Crops that would leave the image, and nuclei touching the border, are left out; image sets
//! excluded by curation have no labels and so give no crops.
//!
//! With `whole_image: true` each image set is already one cell (a data set of labelled crops,
//! like MitoCheck's): it is centred into the crop size as it is, labelled from a filename
//! field or the plate map, and `cells.csv` gets hand-crafted features of each crop (shape,
//! intensity, texture of the central object per channel) for the logistic baseline.
//!
//! Crops are streamed to a scratch file as they are cut and the safetensors header is written
//! once their number is known: memory holds one image set, whatever the plate's size.

use super::{num, parallel_map, Context, ImageSet, Table};
use anyhow::Context as _;
use plateflow_contract::params::CropsParams;
use plateflow_imaging::read_image;
use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

struct Cut {
    object: u32,
    cx: f64,
    cy: f64,
    /// C × S × S values.
    pixels: Vec<u16>,
}

/// The factor that brings a channel of `bits` to a crop of `depth` bits: 257 for an 8-bit
/// channel beside a 16-bit one (255 → 65,535), so that each channel still spans 0..1 once the
/// crop is divided by its depth's top; an 8-bit plane left as 0..255 in a 16-bit crop read
/// as 0..0.004, all but blank to the network.
fn widening(bits: u8, depth: u8) -> u16 {
    if depth >= 16 && bits <= 8 {
        257
    } else {
        1
    }
}

fn cut_set(
    set: &ImageSet,
    nuclei: &Path,
    channels: &[String],
    size: usize,
) -> anyhow::Result<(Vec<Cut>, u8, usize)> {
    let labels = read_image(nuclei)?;
    let (w, h) = (labels.width as usize, labels.height as usize);
    let images = channels
        .iter()
        .map(|c| {
            let img = read_image(set.channel(c)?)?;
            anyhow::ensure!(
                (img.width as usize, img.height as usize) == (w, h),
                "{}: channel {c} differs in size from its labels",
                set.key
            );
            Ok(img)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let depth = images.iter().map(|i| i.bit_depth).max().unwrap_or(8);
    let n = labels.data.iter().copied().max().unwrap_or(0) as usize;
    let mut acc = vec![(0f64, 0f64, 0usize, false); n + 1];
    for (i, &l) in labels.data.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let (x, y) = (i % w, i / w);
        let a = &mut acc[l as usize];
        a.0 += x as f64;
        a.1 += y as f64;
        a.2 += 1;
        a.3 |= x == 0 || y == 0 || x + 1 == w || y + 1 == h;
    }
    let half = size / 2;
    let mut cuts = Vec::new();
    // Objects cut by the field's edge, or whose crop would pass it: counted, not cropped.
    let mut uncut = 0usize;
    for (l, &(sx, sy, area, border)) in acc.iter().enumerate().skip(1) {
        if area == 0 {
            continue;
        }
        if border {
            uncut += 1;
            continue;
        }
        let (cx, cy) = (sx / area as f64, sy / area as f64);
        let (x0, y0) = (
            cx.round() as isize - half as isize,
            cy.round() as isize - half as isize,
        );
        if x0 < 0 || y0 < 0 || x0 as usize + size > w || y0 as usize + size > h {
            uncut += 1;
            continue;
        }
        let mut pixels = Vec::with_capacity(channels.len() * size * size);
        for img in &images {
            let widen = widening(img.bit_depth, depth);
            for y in y0 as usize..y0 as usize + size {
                let row = &img.data[y * w + x0 as usize..y * w + x0 as usize + size];
                pixels.extend(row.iter().map(|&v| v * widen));
            }
        }
        cuts.push(Cut {
            object: l as u32,
            cx,
            cy,
            pixels,
        });
    }
    Ok((cuts, depth, uncut))
}

/// An image set that is one cell: each channel centred into `size` × `size` (cropped at the
/// centre if larger, zero-padded if smaller).
fn whole_set(set: &ImageSet, channels: &[String], size: usize) -> anyhow::Result<(Cut, u8)> {
    let mut pixels = vec![0u16; channels.len() * size * size];
    let images = channels
        .iter()
        .map(|c| Ok(read_image(set.channel(c)?)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let depth = images.iter().map(|i| i.bit_depth).max().unwrap_or(8);
    for (k, img) in images.iter().enumerate() {
        let widen = widening(img.bit_depth, depth);
        let (w, h) = (img.width as usize, img.height as usize);
        let plane = &mut pixels[k * size * size..(k + 1) * size * size];
        for y in 0..size {
            for x in 0..size {
                // Source pixel for (x, y) with both centres aligned.
                let sx = x as isize + (w as isize - size as isize) / 2;
                let sy = y as isize + (h as isize - size as isize) / 2;
                if sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h {
                    plane[y * size + x] = img.data[sy as usize * w + sx as usize] * widen;
                }
            }
        }
    }
    let c = size as f64 / 2.0;
    Ok((
        Cut {
            object: 1,
            cx: c,
            cy: c,
            pixels,
        },
        depth,
    ))
}

/// Hand-crafted features of a whole-image crop, per channel (`cells.csv` columns).
fn crop_feature_row(cut: &Cut, channels: &[String], size: usize, depth: u8) -> Vec<f32> {
    channels
        .iter()
        .enumerate()
        .flat_map(|(k, _)| {
            plateflow_learn::data::crop_features(&plateflow_imaging::GrayImage {
                width: size as u32,
                height: size as u32,
                bit_depth: depth,
                data: cut.pixels[k * size * size..(k + 1) * size * size].to_vec(),
            })
        })
        .collect()
}

pub fn run(ctx: &mut Context, params: &CropsParams) -> anyhow::Result<()> {
    let size = params.size as usize;
    let whole = params.whole_image;
    let sets = ctx.image_sets()?;
    // Every set's channels: taken from the first set alone, a channel it lacked was never
    // measured, silently; now a set that lacks one is named when it is read.
    let channels = params
        .channels
        .clone()
        .unwrap_or_else(|| ctx.image_channels(&sets));
    if let Some(ch) = channels.iter().find(|c| ctx.is_label_channel(c)) {
        anyhow::bail!(
            "`channels` names {ch}, which holds label images (a `masks:` or `labels:` channel), \
             not intensities: leave it out"
        );
    }
    let mut nuclei: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (name, path) in ctx.upstream_files(|n| n.ends_with("_nuclei.tif")) {
        let key = name
            .trim_start_matches("labels/")
            .trim_end_matches("_nuclei.tif");
        nuclei.insert(key.to_string(), path);
    }
    anyhow::ensure!(
        whole || !nuclei.is_empty() || sets.is_empty(),
        "no nucleus label images from upstream: put the `segment` step in `after:` (or set `whole_image: true` when each image is one cell)"
    );
    let excluded = ctx.exclusions()?;
    let no_labels = PathBuf::new();
    let todo: Vec<(&ImageSet, &PathBuf)> = sets
        .iter()
        .filter(|s| !excluded.contains_key(&s.key))
        .filter_map(|s| {
            if whole {
                Some((s, &no_labels))
            } else {
                nuclei.get(&s.key).map(|p| (s, p))
            }
        })
        .collect();
    let map = ctx.plate_map()?;
    // The label: a filename field (`{class}/...`) or a plate-map column.
    let label_field = params
        .label
        .as_deref()
        .filter(|l| {
            sets.first()
                .is_some_and(|s| s.meta.iter().any(|(k, _)| k == l))
        })
        .map(str::to_string);
    let label_col = match (&map, &label_field) {
        (Some(m), None) => m.label_column(params.label.as_deref())?,
        _ => None,
    };
    let feature_names: Vec<String> = if whole {
        channels
            .iter()
            .flat_map(|c| {
                plateflow_learn::data::crop_feature_names()
                    .into_iter()
                    .map(move |f| format!("Cells_{f}_{c}"))
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut cells_header = vec!["ImageSet".to_string()];
    cells_header.extend(super::metadata_columns(&sets));
    // A label from the plate map gets its own column (a filename field already has one).
    let label_column_name = super::metadata_column(params.label.as_deref().unwrap_or("label"));
    if label_field.is_none() {
        cells_header.push(label_column_name.clone());
    }
    cells_header.push("ObjectNumber".into());
    cells_header.extend(feature_names.iter().cloned());
    let mut cells = Table::new(&cells_header);

    let raw_path = ctx.out.join(".crops.raw");
    let mut raw = BufWriter::new(std::fs::File::create(&raw_path)?);
    let meta_names = super::metadata_columns(&sets);
    let mut header = vec!["index".to_string(), "ImageSet".to_string()];
    header.extend(meta_names);
    header.extend(["ObjectNumber", "Center_X", "Center_Y", "label"].map(String::from));
    let mut index = Table::new(&header);
    let mut count = 0usize;
    let mut depth = 8u8;
    let mut wide: Option<bool> = None;
    let mut uncut = 0usize;
    for batch in todo.chunks((ctx.threads * 2).max(1)) {
        let results = parallel_map(batch, ctx.threads, |(set, path)| {
            if whole {
                whole_set(set, &channels, size).map(|(cut, d)| {
                    let feats = crop_feature_row(&cut, &channels, size, d);
                    (vec![cut], d, vec![feats], 0)
                })
            } else {
                cut_set(set, path, &channels, size).map(|(cuts, d, n)| (cuts, d, Vec::new(), n))
            }
            .with_context(|| format!("image set {}", set.key))
        });
        for ((set, _), r) in batch.iter().zip(results) {
            let (cuts, d, features, n) = r?;
            uncut += n;
            // All crops in one tensor share a dtype: fixed by the first image set.
            let is_wide = *wide.get_or_insert(d > 8);
            anyhow::ensure!(
                is_wide == (d > 8),
                "image set {} is {d}-bit but earlier ones are not: crops of one plate share a dtype",
                set.key
            );
            depth = d;
            let label = match &label_field {
                Some(f) => set.get(f).to_string(),
                None => label_col
                    .and_then(|c| {
                        map.as_ref()
                            .and_then(|m| m.lookup(set.plate(), set.well()))
                            .map(|r| r.values[c].clone())
                    })
                    .unwrap_or_default(),
            };
            for f in &features {
                let mut row = vec![set.key.clone()];
                row.extend(set.meta.iter().map(|(_, v)| v.clone()));
                if label_field.is_none() {
                    row.push(label.clone());
                }
                row.push("1".into());
                row.extend(f.iter().map(|&v| num(v as f64)));
                cells.push_row(row);
            }
            for cut in cuts {
                if is_wide {
                    for v in &cut.pixels {
                        raw.write_all(&v.to_le_bytes())?;
                    }
                } else {
                    let bytes: Vec<u8> = cut.pixels.iter().map(|&v| v.min(255) as u8).collect();
                    raw.write_all(&bytes)?;
                }
                let mut row = vec![count.to_string(), set.key.clone()];
                row.extend(set.meta.iter().map(|(_, v)| v.clone()));
                row.extend([
                    cut.object.to_string(),
                    num(cut.cx),
                    num(cut.cy),
                    label.clone(),
                ]);
                index.push_row(row);
                count += 1;
            }
        }
    }
    raw.flush()?;
    drop(raw);
    let dtype = if wide == Some(true) { "U16" } else { "U8" };
    write_safetensors(
        &ctx.out.join("crops.safetensors"),
        &raw_path,
        dtype,
        &[count, channels.len(), size, size],
        &channels,
    )?;
    std::fs::remove_file(&raw_path)?;
    ctx.write_output("crops.csv", &index.into_bytes())?;
    if whole {
        ctx.write_output("cells.csv", &cells.into_bytes())?;
    }
    ctx.logln(format!(
        "{count} crops of {size}x{size} px, channels {} ({dtype}, {depth}-bit images), from {} image sets",
        channels.join(", "),
        todo.len()
    ));
    if uncut > 0 {
        ctx.logln(format!(
            "{uncut} objects not cropped: they touch their field's edge, or lie within {} px of \
             it (half the crop){}",
            size / 2,
            if count == 0 {
                "; no crop at all: is `size` larger than the objects' fields allow?"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// Writes the safetensors format (8-byte little-endian header length, JSON header, data)
/// around data already on disk: the `safetensors` crate wants every tensor in memory.
fn write_safetensors(
    path: &Path,
    raw: &Path,
    dtype: &str,
    shape: &[usize],
    channels: &[String],
) -> anyhow::Result<()> {
    let len = std::fs::metadata(raw)?.len();
    let header = serde_json::json!({
        "__metadata__": {"channels": channels.join(","), "writer": "plateflow crops"},
        "crops": {"dtype": dtype, "shape": shape, "data_offsets": [0, len]},
    });
    let mut text = serde_json::to_string(&header)?;
    // The data must start 8-byte aligned.
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(text.as_bytes())?;
        let mut src = std::fs::File::open(raw)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n])?;
        }
        w.flush()?;
    }
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    /// An 8-bit channel beside a 16-bit one is widened to span the crop's 16 bits, in cut
    /// crops and in whole-image crops alike.
    #[test]
    fn an_eight_bit_channel_in_a_sixteen_bit_crop_keeps_its_range() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let (w, h) = (20u32, 20u32);
        let inside = |i: u32| (6..14).contains(&(i % w)) && (6..14).contains(&(i / w));
        let dna: Vec<u16> = (0..w * h)
            .map(|i| if inside(i) { 40_000 } else { 100 })
            .collect();
        let gfp: Vec<u8> = (0..w * h)
            .map(|i| if inside(i) { 200 } else { 2 })
            .collect();
        let labels: Vec<u16> = (0..w * h).map(|i| u16::from(inside(i))).collect();
        plateflow_imaging::write::write_tiff_u16(&work.join("DNA.tif"), w, h, &dna).unwrap();
        plateflow_imaging::write::write_tiff_u8(&work.join("GFP.tif"), w, h, &gfp).unwrap();
        plateflow_imaging::write::write_tiff_u16(&work.join("nuclei.tif"), w, h, &labels).unwrap();
        let images = testing::one_well(&["DNA", "GFP"]);
        let task = testing::task("crops", &[]);
        let ctx = testing::context(work, &task, &images, &[]);
        let sets = ctx.image_sets().unwrap();
        let channels = ["DNA".to_string(), "GFP".to_string()];
        let (cuts, depth, uncut) =
            cut_set(&sets[0], &work.join("nuclei.tif"), &channels, 8).unwrap();
        assert_eq!((cuts.len(), depth, uncut), (1, 16, 0));
        let centre = 4 * 8 + 4;
        assert_eq!(cuts[0].pixels[centre], 40_000);
        assert_eq!(cuts[0].pixels[64 + centre], 200 * 257);
        // A crop larger than the field leaves the object uncut, and says so in the count.
        let (none, _, uncut) = cut_set(&sets[0], &work.join("nuclei.tif"), &channels, 32).unwrap();
        assert_eq!((none.len(), uncut), (0, 1));
        let (whole, depth) = whole_set(&sets[0], &channels, 20).unwrap();
        assert_eq!(depth, 16);
        assert_eq!(whole.pixels[400 + 10 * 20 + 10], 200 * 257);
        assert_eq!(whole.pixels[400], 2 * 257);
    }
}
