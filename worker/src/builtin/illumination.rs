//! `illumination`: one illumination field per plate and channel (the per-pixel median of the
//! plate's images, smoothed, normalised to 1: `plateflow_imaging::illumination`), written as
//! a 16-bit TIFF (value × 10000, opens in Fiji), a PNG preview for the report, and a JSON of
//! what the TIFF cannot hold (the camera offset taken off, the background's light). Steps
//! downstream (`segment`, `features`) divide each image by its plate's field through
//! [`Corrections`]; `curate` keeps judging the raw images.

use super::{Context, ImageSet};
use anyhow::Context as _;
use plateflow_contract::labels::{escape_value, label_field};
use plateflow_contract::params::IlluminationParams;
use plateflow_imaging::illumination::{apply, estimate_by, IlluminationField};
use plateflow_imaging::{read_image, GrayImage};
use std::collections::BTreeMap;

pub fn run(ctx: &mut Context, p: &IlluminationParams) -> anyhow::Result<()> {
    let sets = ctx.image_sets()?;
    let excluded = ctx.exclusions()?;
    let kept: Vec<&ImageSet> = sets
        .iter()
        .filter(|s| !excluded.contains_key(&s.key))
        .collect();
    if kept.is_empty() {
        // Nothing downstream reads these sets (`segment` and `features` skip them too).
        ctx.logln(format!(
            "all {} image sets were excluded by curation: no field to estimate, nothing to correct",
            sets.len()
        ));
        return Ok(());
    }
    let mut channels: Vec<String> = match &p.channels {
        Some(c) => c.clone(),
        None => ctx.image_channels(&sets),
    };
    channels.sort();
    channels.dedup();
    for ch in &channels {
        // A set without this channel (a missing file) is left out of its field; `segment`
        // and `features` name it if they need the channel.
        let with: Vec<&ImageSet> = kept
            .iter()
            .copied()
            .filter(|s| s.channels.contains_key(ch))
            .collect();
        if with.is_empty() {
            if p.channels.is_some() {
                // Named in the pipeline: say what the sets have instead.
                kept[0].channel(ch)?;
            }
            ctx.logln(format!("{ch}: no image set kept here has it: no field"));
            continue;
        }
        if with.len() < kept.len() {
            ctx.logln(format!(
                "warning: {ch}: {} of {} image sets have no {ch} image (first: {}); the field \
                 is estimated from the rest",
                kept.len() - with.len(),
                kept.len(),
                kept.iter()
                    .find(|s| !s.channels.contains_key(ch))
                    .map_or("", |s| s.key.as_str())
            ));
        }
        let first = with[0].channel(ch)?;
        let mut size = None;
        // Each pixel's brightest value over the plate, to say where correction would pass the
        // 16-bit top (it is clipped there).
        let mut brightest: Vec<u16> = Vec::new();
        // Read one group at a time (see `estimate_by`); a size that differs is named by file.
        let field = estimate_by(
            with.len(),
            |i| {
                let path = with[i].channel(ch).map_err(|e| e.to_string())?;
                let img = read_image(path).map_err(|e| e.to_string())?;
                let (w, h) = *size.get_or_insert((img.width, img.height));
                if (img.width, img.height) != (w, h) {
                    return Err(format!(
                        "{} is {}x{} but {} is {w}x{h}; one field is estimated from a plate's \
                         images, so they must share one size (camera and binning): give \
                         differently sized images a plate of their own",
                        path.display(),
                        img.width,
                        img.height,
                        first.display(),
                    ));
                }
                if brightest.len() == img.data.len() {
                    brightest
                        .iter_mut()
                        .zip(&img.data)
                        .for_each(|(b, &v)| *b = (*b).max(v));
                } else {
                    brightest.clone_from(&img.data);
                }
                Ok(img)
            },
            p.smoothing,
            p.dark.unwrap_or(0.0),
        )
        .map_err(|e| anyhow::anyhow!("illumination of channel {ch}: {e}"))?;
        let (lo, hi) = field
            .values
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        field
            .to_tiff(&ctx.out.join(format!("illumination/{ch}.tif")))
            .map_err(|e| anyhow::anyhow!(e))?;
        ctx.write_output(&format!("illumination/{ch}.png"), &field.to_png_preview())?;
        let levels = FieldLevels {
            dark: field.dark,
            light: field.light,
            images: with.len(),
            lowest: lo,
            highest: hi,
        };
        ctx.write_output(
            &format!("illumination/{ch}.json"),
            &serde_json::to_vec_pretty(&levels)?,
        )?;
        ctx.logln(format!(
            "{ch}: field from {} images ({} excluded by curation), {lo:.2}–{hi:.2} of the median; \
             background light {:.0}–{:.0} counts above a camera offset of {}",
            with.len(),
            sets.len() - kept.len(),
            field.light * lo,
            field.light * hi,
            field.dark
        ));
        if p.dark.is_none() && lo < UNEVEN {
            // The offset cannot be told from light in the images themselves (the background's
            // own glow is lit like the nuclei), so this can only ask.
            ctx.logln(format!(
                "note: {ch}: no `dark:` given, so all of the background is taken for light. If \
                 the camera adds an offset (many sCMOS cameras add 100 counts; an image taken \
                 with the shutter closed shows it), set `dark:` to it: divided by this field, \
                 the offset would be boosted up to {:.1}-fold where the field is dimmest",
                1.0 / lo
            ));
        }
        if field.light < DIM_LIGHT {
            ctx.logln(format!(
                "warning: {ch}: the background holds only {:.1} counts of light at the median, \
                 too little to estimate a field from: on a generated plate a field from 4 \
                 counts was up to 10 % off in places, from 1.6 counts up to 26 %. If the images \
                 were exported with their background cut to black (8-bit exports often are), \
                 correct the raw images; or leave {ch} out with `channels:`",
                field.light
            ));
        }
        let clipped = brightest
            .iter()
            .zip(&field.values)
            .filter(|&(&v, &f)| (f32::from(v) - field.dark) / f > f32::from(u16::MAX))
            .count();
        if clipped > 0 {
            ctx.logln(format!(
                "warning: {ch}: divided by the field, {clipped} pixel position(s) pass 65,535 \
                 (the 16-bit top) in at least one image and are clipped there, so the \
                 brightest objects in the field's dim parts read too dim; these images are near \
                 the camera's top already (lower the exposure for the next plates)"
            ));
        }
        if with.len() < FEW_IMAGES {
            ctx.logln(format!(
                "warning: {ch}: a field from only {} images still holds their cells' own \
                 pattern, so dividing by it also flattens real differences between fields; \
                 estimate it from a whole plate (tens of images or more)",
                with.len()
            ));
        }
    }
    Ok(())
}

/// Below this many images a plate's median image is still mostly cells, not illumination.
const FEW_IMAGES: usize = 10;

/// Below this many counts of background light (above `dark`) a field is mostly rounding and
/// noise: on a generated plate (vignetting to 0.4, shot and 1.5-count read noise, 12 and 48
/// images) the worst error was 10 % at 4 counts, 16–26 % at 1.6 and 38–41 % at 0.85, and
/// 2–5 % from 8 counts up (`imaging::illumination`'s test `a_field_needs_light_to_be_estimated_from`
/// keeps the two ends of that: 5.4 % at 10 counts, 24 % at 2).
const DIM_LIGHT: f32 = 5.0;

/// A field dimmer than this somewhere (of its median) is uneven enough that a camera offset
/// divided along with the light would skew intensities there by a share worth asking about.
const UNEVEN: f32 = 0.8;

/// What an illumination field's TIFF cannot hold, kept beside it as `illumination/<ch>.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct FieldLevels {
    /// The camera offset in counts taken off each image before dividing.
    dark: f32,
    /// The background light where the field is 1.0, in counts above `dark`.
    light: f32,
    /// Images the field was estimated from.
    images: usize,
    /// The field's lowest and highest factors (of its median).
    lowest: f32,
    highest: f32,
}

/// The report's caption for a field's preview, from its levels file (`illumination/<ch>.json`).
pub fn preview_caption(levels_json: &[u8]) -> Option<String> {
    let l: FieldLevels = serde_json::from_slice(levels_json).ok()?;
    let offset = if l.dark > 0.0 {
        format!("; a camera offset of {} counts was taken off first", l.dark)
    } else {
        "; no camera offset was given".to_string()
    };
    Some(format!(
        "Illumination field from {} images: black is its dimmest ({:.2} of the median), white \
         its brightest ({:.2}); background light {:.0} counts at the median{offset}.",
        l.images, l.lowest, l.highest, l.light
    ))
}

/// The fields of upstream `illumination` tasks, by plate (as it appears in the task label;
/// "" for a task over every plate) and channel name.
#[derive(Default)]
pub struct Corrections(BTreeMap<(String, String), IlluminationField>);

impl Corrections {
    pub fn from_upstream(ctx: &Context) -> anyhow::Result<Self> {
        let mut fields = BTreeMap::new();
        let levels_file = |label: &str, ch: &str| {
            let name = format!("illumination/{ch}.json");
            ctx.upstream
                .iter()
                .find(|(l, n, _)| l == label && *n == name)
                .map(|(_, _, rel)| ctx.work.join(rel))
        };
        for (label, name, rel) in ctx.upstream {
            let Some(ch) = name
                .strip_prefix("illumination/")
                .and_then(|n| n.strip_suffix(".tif"))
            else {
                continue;
            };
            let plate = label_field(label, "plate").1.unwrap_or("").to_string();
            let path = ctx.work.join(rel);
            let mut field = IlluminationField::from_tiff(&path).map_err(|e| anyhow::anyhow!(e))?;
            // The offset to take off lives beside the factors; without it the image would be
            // divided with its offset in (an output set cut short: say so, not guess 0).
            let levels_path = levels_file(label, ch).ok_or_else(|| {
                anyhow::anyhow!(
                    "the illumination field {} of {label} has no illumination/{ch}.json beside \
                     it (the camera offset to take off): run the illumination step again",
                    path.display()
                )
            })?;
            let levels: FieldLevels = super::read_json(&levels_path)
                .with_context(|| format!("the illumination levels of {label}"))?;
            field.dark = levels.dark;
            field.light = levels.light;
            let key = (plate, ch.to_string());
            // Fields are per plate (the pipeline check refuses another fan-out); two for one
            // plate would leave which one applies to chance.
            anyhow::ensure!(
                !fields.contains_key(&key),
                "two illumination fields for plate `{}`, channel {}: the illumination step \
                 must fan out by plate only (`for_each: plate`)",
                key.0,
                key.1
            );
            fields.insert(key, field);
        }
        Ok(Corrections(fields))
    }

    /// A channel's image of `set`, divided by its plate's field when there is one.
    pub fn read(&self, set: &ImageSet, channel: &str) -> anyhow::Result<GrayImage> {
        let img = read_image(set.channel(channel)?)?;
        let plate = escape_value(set.plate()).into_owned();
        let field = self
            .0
            .get(&(plate, channel.to_string()))
            .or_else(|| self.0.get(&(String::new(), channel.to_string())));
        match field {
            Some(f) => apply(&img, f).map_err(|e| {
                anyhow::anyhow!("illumination correction of {} ({channel}): {e}", set.key)
            }),
            None => Ok(img),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::context;
    use super::*;
    use plateflow_contract::params::{StepParams, TaskParams};
    use std::path::Path;

    /// Twelve wells of two channels, as real TIFF files; well A12 has no GFP image.
    fn plate(work: &Path) -> Vec<(String, BTreeMap<String, String>)> {
        let mut images = Vec::new();
        for col in 1..=12 {
            for ch in ["DNA", "GFP"] {
                if col == 12 && ch == "GFP" {
                    continue;
                }
                let rel = format!("in/A{col:02}_{ch}.tif");
                let data: Vec<u16> = (0..40 * 30)
                    .map(|i| 500 + (i % 40) as u16 * 10 + col * 3)
                    .collect();
                std::fs::create_dir_all(work.join("in")).unwrap();
                plateflow_imaging::write::write_tiff_u16(&work.join(&rel), 40, 30, &data).unwrap();
                let fields: BTreeMap<String, String> = [
                    ("plate", "P1".to_string()),
                    ("well", format!("A{col:02}")),
                    ("channel", ch.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                images.push((rel, fields));
            }
        }
        images
    }

    fn task(channels: Option<Vec<String>>) -> TaskParams {
        task_with_dark(channels, None)
    }

    fn task_with_dark(channels: Option<Vec<String>>, dark: Option<f64>) -> TaskParams {
        TaskParams {
            params: StepParams::Illumination(IlluminationParams {
                channels,
                smoothing: None,
                dark,
            }),
            step: "flat".into(),
            channels: Default::default(),
            label_channels: Default::default(),
            image_pattern: String::new(),
        }
    }

    /// A set without one channel's image leaves that channel's field to the others (it used
    /// to fail every channel); a plate whose sets curation all excluded writes no field and
    /// no error; a channel named in the pipeline that no set has is named with what they have.
    #[test]
    fn missing_images_and_excluded_plates_do_not_fail_the_step() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let images = plate(work);
        let t = task(None);
        let mut ctx = context(work, &t, &images, &[]);
        let StepParams::Illumination(p) = &t.params else {
            unreachable!()
        };
        run(&mut ctx, p).unwrap();
        for ch in ["DNA", "GFP"] {
            let f = IlluminationField::from_tiff(&work.join(format!("out/illumination/{ch}.tif")))
                .unwrap();
            assert_eq!((f.width, f.height), (40, 30));
        }
        assert!(
            ctx.log.contains("1 of 12 image sets have no GFP image"),
            "{}",
            ctx.log
        );
        assert!(ctx.log.contains("GFP: field from 11 images"), "{}", ctx.log);

        // Every set excluded by an upstream curate step.
        let sets = ctx.image_sets().unwrap();
        let mut csv = String::from("set,reason\n");
        for s in &sets {
            csv.push_str(&format!("{},blurred\n", s.key));
        }
        std::fs::create_dir_all(work.join("qc")).unwrap();
        std::fs::write(work.join("qc/exclusions.csv"), csv).unwrap();
        let upstream = [(
            "qc[plate=P1]".to_string(),
            "exclusions.csv".to_string(),
            "qc/exclusions.csv".to_string(),
        )];
        std::fs::remove_dir_all(work.join("out")).unwrap();
        let mut ctx = context(work, &t, &images, &upstream);
        run(&mut ctx, p).unwrap();
        assert!(!work.join("out/illumination").exists());
        assert!(
            ctx.log.contains("all 12 image sets were excluded"),
            "{}",
            ctx.log
        );

        // A channel the pipeline names that no set has.
        let t = task(Some(vec!["Actin".into()]));
        let StepParams::Illumination(p) = &t.params else {
            unreachable!()
        };
        let mut ctx = context(work, &t, &images, &[]);
        let e = run(&mut ctx, p).unwrap_err().to_string();
        assert!(
            e.contains("no channel `Actin`") && e.contains("DNA, GFP"),
            "{e}"
        );
    }

    /// Twelve DNA fields of 40x30 (wells A01..A12 of plate P1) as TIFFs; `value(column, x)`
    /// gives each pixel's value.
    fn dna_plate(
        work: &Path,
        value: impl Fn(u32, u32) -> u32,
    ) -> Vec<(String, BTreeMap<String, String>)> {
        std::fs::create_dir_all(work.join("in")).unwrap();
        (1..=12)
            .map(|col| {
                let rel = format!("in/A{col:02}_DNA.tif");
                let data: Vec<u16> = (0..40 * 30)
                    .map(|i| value(col, i % 40).min(65_535) as u16)
                    .collect();
                plateflow_imaging::write::write_tiff_u16(&work.join(&rel), 40, 30, &data).unwrap();
                let well = format!("A{col:02}");
                let fields = [("plate", "P1"), ("well", well.as_str()), ("channel", "DNA")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (rel, fields)
            })
            .collect()
    }

    /// The step's log over `images` (its earlier outputs removed first), with `dark`.
    fn step_log(
        work: &Path,
        images: &[(String, BTreeMap<String, String>)],
        dark: Option<f64>,
    ) -> String {
        let _ = std::fs::remove_dir_all(work.join("out"));
        let t = task_with_dark(None, dark);
        let StepParams::Illumination(p) = &t.params else {
            unreachable!()
        };
        let mut ctx = context(work, &t, images, &[]);
        run(&mut ctx, p).unwrap();
        ctx.log
    }

    /// `dark:` reaches the images `segment` and `features` read: the offset is taken off, not
    /// divided, and the level is kept beside the field (a field without it is refused, not
    /// read as no offset). Without `dark:`, a field this uneven asks about an offset.
    #[test]
    fn the_camera_offset_is_kept_with_the_field_and_taken_off_downstream() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        // Twelve fields of background only: light 200 at the left edge to 400 at the right,
        // on a camera offset of 100.
        let images = dna_plate(work, |_, x| 100 + 200 + (x * 200) / 39);
        let log = step_log(work, &images, None);
        assert!(log.contains("no `dark:` given"), "{log}");
        let log = step_log(work, &images, Some(100.0));
        assert!(!log.contains("no `dark:` given"), "{log}");
        assert!(log.contains("camera offset of 100"), "{log}");
        let levels = std::fs::read(work.join("out/illumination/DNA.json")).unwrap();
        let caption = preview_caption(&levels).unwrap();
        assert!(
            caption.contains("from 12 images") && caption.contains("offset of 100 counts"),
            "{caption}"
        );

        let upstream: Vec<(String, String, String)> = ["tif", "json"]
            .iter()
            .map(|ext| {
                (
                    "flat[plate=P1]".to_string(),
                    format!("illumination/DNA.{ext}"),
                    format!("out/illumination/DNA.{ext}"),
                )
            })
            .collect();
        let t = task(None);
        let ctx = context(work, &t, &images, &upstream);
        let corrections = Corrections::from_upstream(&ctx).unwrap();
        let sets = ctx.image_sets().unwrap();
        let fixed = corrections.read(&sets[0], "DNA").unwrap();
        // Light alone, evened out: about 300 everywhere (with the offset divided in, the
        // whole field would read about 400, and dim edges more than their share).
        let (lo, hi) = fixed
            .data
            .iter()
            .fold((u16::MAX, 0), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(lo >= 290 && hi <= 310, "{lo}..{hi}");

        // The levels' file left out: refused, naming what is missing.
        let ctx = context(work, &t, &images, &upstream[..1]);
        let e = Corrections::from_upstream(&ctx).err().unwrap().to_string();
        assert!(
            e.contains("illumination/DNA.json") && e.contains("run the illumination step again"),
            "{e}"
        );
    }

    /// Where dividing by the field passes the 16-bit top somewhere on the plate, the log says
    /// how many pixel positions are clipped (they were clipped in silence).
    #[test]
    fn values_divided_past_the_16_bit_top_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        // Light 30,000 at the left edge to 60,000 at the right; one field has a 3-pixel-wide
        // stripe at 65,000 along its dim left edge.
        let images = dna_plate(work, |col, x| match (col, x) {
            (1, 0..3) => 65_000,
            _ => 30_000 + (x * 30_000) / 39,
        });
        let log = step_log(work, &images, None);
        assert!(log.contains("90 pixel position(s) pass 65,535"), "{log}");
    }

    /// A channel whose background holds almost no light (an 8-bit export cut to black) is
    /// warned about; the plates of the other tests, with hundreds of counts, are not.
    #[test]
    fn a_background_without_light_is_warned_about() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let log = step_log(work, &dna_plate(work, |_, x| 1 + x / 20), None);
        assert!(log.contains("holds only 1.6 counts of light"), "{log}");
        let log = step_log(work, &dna_plate(work, |_, x| 300 + x), None);
        assert!(!log.contains("counts of light"), "{log}");
    }
}
