//! Learning-rate schedules (Candle has none): linear warm-up then cosine decay, and one-cycle.

/// Linear warm-up over the first `warmup` fraction of `total` steps to `peak`, then cosine
/// decay to `peak * floor`.
pub fn warmup_cosine(step: usize, total: usize, peak: f64, warmup: f64, floor: f64) -> f64 {
    let total = total.max(1) as f64;
    let s = step as f64;
    let w = (warmup * total).max(1.0);
    if s < w {
        return peak * (s + 1.0) / w;
    }
    let t = ((s - w) / (total - w).max(1.0)).clamp(0.0, 1.0);
    peak * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// One-cycle (Smith): cosine rise from `peak / 25` to `peak` over the first 30 % of steps,
/// then cosine fall to `peak / 1e4`, as PyTorch's `OneCycleLR` defaults.
pub fn one_cycle(step: usize, total: usize, peak: f64) -> f64 {
    let total = total.max(2) as f64;
    let s = (step as f64).min(total - 1.0);
    let up = 0.3 * total;
    let cos = |from: f64, to: f64, t: f64| {
        to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    };
    if s < up {
        cos(peak / 25.0, peak, s / up)
    } else {
        cos(peak, peak / 25.0 / 1e4, (s - up) / (total - 1.0 - up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_rise_peak_and_fall() {
        assert!(warmup_cosine(0, 100, 1.0, 0.1, 0.0) < 0.2);
        assert!((warmup_cosine(9, 100, 1.0, 0.1, 0.0) - 1.0).abs() < 1e-9);
        assert!(warmup_cosine(99, 100, 1.0, 0.1, 0.0) < 0.01);
        assert!((one_cycle(0, 100, 1.0) - 0.04).abs() < 1e-9);
        assert!((one_cycle(30, 100, 1.0) - 1.0).abs() < 1e-9);
        assert!(one_cycle(99, 100, 1.0) < 1e-4);
    }
}
