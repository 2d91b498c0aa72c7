//! `illumination`: one illumination field per plate and channel (the per-pixel median of the
//! plate's images, smoothed, normalised to 1: `plateflow_imaging::illumination`), written as
//! a 16-bit TIFF (value × 10000, opens in Fiji) and a PNG preview for the report. Steps
//! downstream (`segment`, `features`) divide each image by its plate's field through
//! [`Corrections`]; `curate` keeps judging the raw images.

use super::{Context, ImageSet};
use plateflow_contract::labels::escape_value;
use plateflow_contract::params::IlluminationParams;
use plateflow_imaging::illumination::{apply, estimate, IlluminationField};
use plateflow_imaging::{read_image, GrayImage};
use std::collections::BTreeMap;

pub fn run(ctx: &mut Context, p: &IlluminationParams) -> anyhow::Result<()> {
    let sets = ctx.image_sets()?;
    let excluded = ctx.exclusions()?;
    let kept: Vec<&ImageSet> = sets
        .iter()
        .filter(|s| !excluded.contains_key(&s.key))
        .collect();
    let mut channels: Vec<String> = match &p.channels {
        Some(c) => c.clone(),
        None => ctx.image_channels(&sets),
    };
    channels.sort();
    channels.dedup();
    for ch in &channels {
        let images = kept
            .iter()
            .map(|s| read_image(s.channel(ch)?).map_err(anyhow::Error::from))
            .collect::<anyhow::Result<Vec<GrayImage>>>()?;
        // Named by file here (the estimate knows only positions).
        if let Some((set, img)) = kept
            .iter()
            .zip(&images)
            .find(|(_, i)| (i.width, i.height) != (images[0].width, images[0].height))
        {
            anyhow::bail!(
                "illumination of channel {ch}: {} is {}x{} but {} is {}x{}; one field is estimated from a plate's images, so they must share one size (camera and binning): give differently sized images a plate of their own",
                set.channel(ch)?.display(),
                img.width,
                img.height,
                kept[0].channel(ch)?.display(),
                images[0].width,
                images[0].height
            );
        }
        let field = estimate(&images, p.smoothing)
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
            images.len(),
            sets.len() - kept.len()
        ));
        if images.len() < FEW_IMAGES {
            ctx.logln(format!(
                "warning: {ch}: a field from only {} images still holds their cells' own \
                 pattern, so dividing by it also flattens real differences between fields; \
                 estimate it from a whole plate (tens of images or more)",
                images.len()
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
            let plate = label
                .split_once('[')
                .map(|(_, rest)| rest.trim_end_matches(']'))
                .into_iter()
                .flat_map(|r| r.split(','))
                .find_map(|part| part.strip_prefix("plate="))
                .unwrap_or("")
                .to_string();
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
