//! `illumination`: one illumination field per plate and channel (the per-pixel median of the
//! plate's images, smoothed, normalised to 1: `plateflow_imaging::illumination`), written as
//! a 16-bit TIFF (value × 10000, opens in Fiji) and a PNG preview for the report. Steps
//! downstream (`segment`, `features`) divide each image by its plate's field through
//! [`Corrections`]; `curate` keeps judging the raw images.

use super::{Context, ImageSet};
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
                Ok(img)
            },
            p.smoothing,
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
        ctx.logln(format!(
            "{ch}: field from {} images ({} excluded by curation), {lo:.2}–{hi:.2} of the median",
            with.len(),
            sets.len() - kept.len()
        ));
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

/// The fields of upstream `illumination` tasks, by plate (as it appears in the task label;
/// "" for a task over every plate) and channel name.
#[derive(Default)]
pub struct Corrections(BTreeMap<(String, String), IlluminationField>);

impl Corrections {
    pub fn from_upstream(ctx: &Context) -> anyhow::Result<Self> {
        let mut fields = BTreeMap::new();
        for (label, name, rel) in ctx.upstream {
            let Some(ch) = name
                .strip_prefix("illumination/")
                .and_then(|n| n.strip_suffix(".tif"))
            else {
                continue;
            };
            let plate = label_field(label, "plate").1.unwrap_or("").to_string();
            let path = ctx.work.join(rel);
            let field = IlluminationField::from_tiff(&path).map_err(|e| anyhow::anyhow!(e))?;
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
        TaskParams {
            params: StepParams::Illumination(IlluminationParams {
                channels,
                smoothing: None,
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
}
