//! Segmentation + features throughput on a real plate, as the `segment` and `features` steps
//! do it: per field, nuclei from DNA, cells as an 8 px ring, cytoplasm; shape of the three
//! compartments, intensity and Haralick texture (scale 3, 32 levels) of both channels in each.
//! One thread, then two. Uses `../shared/data/sbs-plate` (96 fields of 640x640, DNA + GFP),
//! or generated fields where it is absent.
//!
//!     cargo bench -p plateflow-imaging --bench analysis

use plateflow_imaging::cells::{segment_cells, CellMethod};
use plateflow_imaging::features::{
    haralick_features, intensity_features, shape_features, subtract_labels,
};
use plateflow_imaging::segment::{segment_nuclei, SegmentParams};
use plateflow_imaging::{read_image, GrayImage};
use std::path::Path;
use std::time::Instant;

fn fields() -> Vec<(GrayImage, GrayImage)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/sbs-plate");
    if dir.is_dir() {
        (1..=96)
            .map(|n| {
                let row = (b'A' + ((n - 1) / 12) as u8) as char;
                let col = (n - 1) % 12 + 1;
                let name = |c: u32| dir.join(format!("Channel{c}-{n:02}-{row}-{col:02}.tif"));
                (read_image(&name(2)).unwrap(), read_image(&name(1)).unwrap())
            })
            .collect()
    } else {
        println!(
            "{} is absent: generated 640x640 fields instead",
            dir.display()
        );
        (0..24u32)
            .map(|k| {
                let img = |bright: u16, dim: u16| GrayImage {
                    width: 640,
                    height: 640,
                    bit_depth: 8,
                    data: (0..640u32 * 640)
                        .map(|i| {
                            let (x, y) = (i % 640, i / 640);
                            let (dx, dy) = ((x + k * 7) % 40, (y + k * 3) % 40);
                            let d = (dx as i32 - 20).pow(2) + (dy as i32 - 20).pow(2);
                            if d < 80 {
                                bright
                            } else if d < 300 {
                                dim
                            } else {
                                10
                            }
                        })
                        .collect(),
                };
                (img(180, 20), img(60, 120))
            })
            .collect()
    }
}

/// Everything the two steps compute for one field; returns the number of nuclei.
fn analyse(dna: &GrayImage, gfp: &GrayImage, features: bool) -> usize {
    let nuclei = segment_nuclei(dna, &SegmentParams::default());
    if !features {
        return nuclei.count as usize;
    }
    let cells = segment_cells(&nuclei, Some(gfp), CellMethod::Ring { width: 8.0 });
    let cyto = subtract_labels(&cells, &nuclei);
    let mut sink = 0.0;
    for labels in [&nuclei, &cells, &cyto] {
        sink += shape_features(labels).iter().map(|s| s.area).sum::<f64>();
        for img in [dna, gfp] {
            sink += intensity_features(labels, img)
                .iter()
                .map(|s| s.mean)
                .sum::<f64>();
            sink += haralick_features(labels, img, 3, 32)
                .iter()
                .map(|h| h[1])
                .sum::<f64>();
        }
    }
    std::hint::black_box(sink);
    nuclei.count as usize
}

fn run(fields: &[(GrayImage, GrayImage)], threads: usize, features: bool) -> (f64, usize) {
    let t0 = Instant::now();
    let objects: usize = std::thread::scope(|s| {
        let chunk = fields.len().div_ceil(threads);
        let handles: Vec<_> = fields
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(d, g)| analyse(d, g, features))
                        .sum::<usize>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (t0.elapsed().as_secs_f64(), objects)
}

fn main() {
    let fields = fields();
    let mp: f64 = fields
        .iter()
        .map(|(d, _)| (d.width * d.height) as f64 / 1e6)
        .sum();
    for (what, features) in [("segmentation", false), ("segmentation + features", true)] {
        for threads in [1, 2] {
            let (s, objects) = run(&fields, threads, features);
            println!(
                "{what}: {} fields, {mp:.1} MP, {objects} nuclei in {s:.2} s = {:.1} MP/s ({threads} thread{})",
                fields.len(),
                mp / s,
                if threads > 1 { "s" } else { "" }
            );
        }
    }
}
