//! `plateflow demo`: a small synthetic multi-plate image set (real 8-bit TIFF files) with a
//! plate map and the demo pipeline, generated deterministically so reruns are cached.

use std::path::{Path, PathBuf};

const PIPELINE: &str = include_str!("../../pipelines/demo.yaml");
const WELLS: &[&str] = &["A01", "A02", "B01", "B02"];
const SIZE: u32 = 96;

/// A tiny deterministic generator (SplitMix64): the same plate always gives the same bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % n as u64) as u32
    }
}

/// Cells as bright discs on a dim background; channel 2 is a dimmer, wider copy.
fn field(seed: u64, channel: u32) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut img = vec![12u8; (SIZE * SIZE) as usize];
    for _ in 0..(6 + rng.below(6)) {
        let (cx, cy, r) = (
            rng.below(SIZE) as i32,
            rng.below(SIZE) as i32,
            4 + rng.below(4) as i32,
        );
        let r = if channel == 2 { r + 3 } else { r };
        let peak: i32 = if channel == 2 { 120 } else { 200 };
        for y in (cy - r).max(0)..(cy + r).min(SIZE as i32) {
            for x in (cx - r).max(0)..(cx + r).min(SIZE as i32) {
                let d2 = (x - cx).pow(2) + (y - cy).pow(2);
                if d2 <= r * r {
                    let v = peak - (peak / 3) * d2 / (r * r);
                    let px = &mut img[(y as u32 * SIZE + x as u32) as usize];
                    *px = (*px as i32).max(v).min(255) as u8;
                }
            }
        }
    }
    img
}

pub fn write_tiff(path: &Path, pixels: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut enc = tiff::encoder::TiffEncoder::new(&mut tmp)?;
        enc.write_image::<tiff::encoder::colortype::Gray8>(width, height, pixels)?;
    }
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Writes plates P1..Pn (4 wells, 1 site, 2 channels each), a plate map, and the pipeline.
/// Existing images are left untouched, so adding plates to a demo keeps the others cached.
pub fn generate(dir: &Path, plates: usize) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut map = String::from("plate,well,treatment,control\n");
    for p in 1..=plates {
        for (wi, well) in WELLS.iter().enumerate() {
            for ch in 1..=2u32 {
                let path = dir.join(format!("images/P{p}/{well}_s1_w{ch}.tif"));
                if !path.exists() {
                    let seed = (p as u64) << 16 | (wi as u64) << 4 | 1;
                    write_tiff(&path, &field(seed, ch), SIZE, SIZE)?;
                }
            }
            let (treatment, control) = if wi == 0 {
                ("DMSO", "negative")
            } else {
                ("drug", "")
            };
            map.push_str(&format!("P{p},{well},{treatment},{control}\n"));
        }
    }
    std::fs::write(dir.join("platemap.csv"), map)?;
    let pipeline = dir.join("demo.yaml");
    std::fs::write(&pipeline, PIPELINE)?;
    Ok(pipeline)
}
