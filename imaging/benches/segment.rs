//! Segmentation throughput (megapixels per second, one thread) on the Coelho U2OS images, or
//! on generated images where that data set is absent.
//!
//!     cargo bench -p plateflow-imaging --bench segment

use plateflow_imaging::segment::{segment_nuclei, SegmentParams};
use plateflow_imaging::{read_image, GrayImage};
use std::path::Path;
use std::time::Instant;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/coelho-u2os/images");
    let images: Vec<GrayImage> = if dir.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names.iter().map(|p| read_image(p).unwrap()).collect()
    } else {
        println!(
            "{} is absent: generated 1024x1024 images instead",
            dir.display()
        );
        (0..8u32)
            .map(|k| GrayImage {
                width: 1024,
                height: 1024,
                bit_depth: 8,
                data: (0..1024u32 * 1024)
                    .map(|i| {
                        let (x, y) = (i % 1024, i / 1024);
                        let (dx, dy) = ((x + k * 7) % 40, (y + k * 3) % 40);
                        if (dx as i32 - 20).pow(2) + (dy as i32 - 20).pow(2) < 150 {
                            180
                        } else {
                            20
                        }
                    })
                    .collect(),
            })
            .collect()
    };
    let mp: f64 = images
        .iter()
        .map(|i| (i.width * i.height) as f64 / 1e6)
        .sum();
    let params = SegmentParams::default();
    let t0 = Instant::now();
    let mut objects = 0u64;
    for img in &images {
        objects += segment_nuclei(img, &params).count as u64;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "segment_nuclei: {} images, {mp:.1} MP, {objects} objects in {s:.2} s = {:.1} MP/s (one thread)",
        images.len(),
        mp / s
    );
}
