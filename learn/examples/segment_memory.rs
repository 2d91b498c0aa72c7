//! Peak memory and time of learned segmentation on one large generated field, as `segment`
//! runs it: for measuring how memory grows with the image (run under `/usr/bin/time -v`).
//!
//!   cargo run --release -p plateflow-learn --example segment_memory -- SIDE [DIAMETER]
//!
//! The field: SIDE×SIDE 16-bit pixels, camera noise, nuclei of DIAMETER px (default 20) on a
//! grid three diameters apart.

use plateflow_imaging::GrayImage;
use plateflow_learn::segmenter::NucleusModel;

fn main() -> anyhow::Result<()> {
    plateflow_learn::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let side: usize = args.first().map_or(Ok(4096), |s| s.parse())?;
    let diameter: f64 = args.get(1).map_or(Ok(20.0), |s| s.parse())?;
    let step = (3.0 * diameter) as usize;
    let r2 = diameter * diameter / 4.0;
    // A cheap deterministic noise: a hash of the pixel index.
    let noise = |i: usize| ((i.wrapping_mul(2_654_435_761) >> 7) % 41) as u16;
    let data: Vec<u16> = (0..side * side)
        .map(|i| {
            let (x, y) = (i % side, i / side);
            let (dx, dy) = (
                (x % step) as f64 - step as f64 / 2.0,
                (y % step) as f64 - step as f64 / 2.0,
            );
            let nucleus = if dx * dx + dy * dy <= r2 { 800 } else { 0 };
            200 + nucleus + noise(i)
        })
        .collect();
    let img = GrayImage {
        width: side as u32,
        height: side as u32,
        bit_depth: 16,
        data,
    };
    let model = NucleusModel::shipped()?;
    let t = std::time::Instant::now();
    let seg = model.segment(&img, None)?;
    let secs = t.elapsed().as_secs_f64();
    let expected = (side / step) * (side / step);
    println!(
        "{side}x{side} ({:.1} MP): {} nuclei (about {expected} planted), diameter {:.1}, {:.1} s, {:.2} MP/s; image {} MB",
        (side * side) as f64 / 1e6,
        seg.labels.count,
        seg.diameter,
        secs,
        (side * side) as f64 / 1e6 / secs,
        side * side * 2 / 1_000_000
    );
    Ok(())
}
