//! Dose–response: a 4-parameter logistic (4PL) curve fitted by least squares on log10 dose,
//! and its EC50 with a bootstrap interval over the cells of each well.
//!
//! The fit is a small Levenberg–Marquardt on the four parameters (bottom, top, log10 EC50,
//! Hill slope), started from the best few points of a grid over EC50 and Hill slope (bottom
//! and top solved exactly for each grid point), and it refuses, in words, what it cannot fit
//! honestly: fewer than 4 distinct doses, a response no curve explains better than a constant,
//! an EC50 outside the tested doses, a step between two doses (no dose inside the curve's
//! 10–90 % transition), or no convergence.

use crate::rng::Rng;

/// y = bottom + (top − bottom) / (1 + (ec50 / x)^hill), x > 0.
///
/// A fitted curve has `bottom ≤ top`: the plateaus, low and high. The sign of `hill` gives the
/// direction: rising with dose when `hill > 0`, falling when `hill < 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Curve {
    pub bottom: f64,
    pub top: f64,
    pub ec50: f64,
    pub hill: f64,
}

impl Curve {
    /// The response at `dose` (dose 0 gives the plateau the curve starts from).
    pub fn at(&self, dose: f64) -> f64 {
        self.bottom + (self.top - self.bottom) / (1.0 + (self.ec50 / dose).powf(self.hill))
    }
}

/// A fitted curve with its EC50's 95 % bootstrap interval.
#[derive(Debug, Clone, PartialEq)]
pub struct DoseResponse {
    pub curve: Curve,
    /// Percentile interval over the bootstrap rounds that could be fitted (NaN with 0 rounds).
    pub ec50_ci95: [f64; 2],
    /// Wells in the fit (dose > 0, with at least one value).
    pub wells: usize,
    /// Distinct doses > 0 among them.
    pub doses: usize,
    /// Bootstrap rounds whose resampled data could be fitted.
    pub rounds_fitted: usize,
}

/// Above this |Hill slope| the fit stops: the slope would grow without end (a step).
const MAX_HILL: f64 = 50.0;
/// A curve must explain more than a constant at this level (extra-sum-of-squares F test).
const FLAT_P: f64 = 0.05;

/// Least-squares 4PL fit on log10 dose (Levenberg–Marquardt from several starts). Doses must
/// be > 0 and responses finite. `Err` says in plain words why no curve can be given: fewer than
/// 4 distinct doses, a flat response (no better than a constant, F test at p < 0.05), an EC50
/// outside the tested range, a step between two doses (no dose inside the 10–90 % transition:
/// nothing places the EC50 between them), or no convergence.
pub fn fit_4pl(doses: &[f64], responses: &[f64]) -> Result<Curve, String> {
    if doses.len() != responses.len() {
        return Err(format!(
            "{} doses but {} responses",
            doses.len(),
            responses.len()
        ));
    }
    if let Some(d) = doses.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
        return Err(format!(
            "dose {d} cannot be fitted on a log scale: doses must be > 0 (leave vehicle controls out)"
        ));
    }
    if responses.iter().any(|r| !r.is_finite()) {
        return Err("a response is not a number".into());
    }
    let mut distinct: Vec<f64> = doses.to_vec();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < 4 {
        return Err(format!(
            "only {} distinct dose{} > 0: a 4-parameter curve needs at least 4",
            distinct.len(),
            if distinct.len() == 1 { "" } else { "s" }
        ));
    }
    let (lo, hi) = (distinct[0], distinct[distinct.len() - 1]);
    let n = responses.len();
    // Four parameters pass through any four points: the test against a flat line below has
    // no degrees of freedom left, and noise would get an EC50.
    if n <= 4 {
        return Err(format!(
            "only {n} wells: a 4-parameter curve fits any 4 points, so it cannot be told from \
             a flat line; use at least 5 (more doses, or replicate wells)"
        ));
    }
    let mean = responses.iter().sum::<f64>() / n as f64;
    let sse0: f64 = responses.iter().map(|y| (y - mean).powi(2)).sum();
    let sd = (sse0 / n as f64).sqrt();
    if sd <= 1e-12 * mean.abs().max(1e-300) || sd == 0.0 {
        return Err(format!("flat response: every response is {mean}"));
    }
    // Standardised responses, log doses: tolerances mean the same on every scale.
    let u: Vec<f64> = doses.iter().map(|d| d.log10()).collect();
    let y: Vec<f64> = responses.iter().map(|r| (r - mean) / sd).collect();
    let (ulo, uhi) = (lo.log10(), hi.log10());

    // Grid over (log EC50, Hill), bottom and top by linear least squares; LM from the best few.
    let mut grid: Vec<(f64, [f64; 4])> = Vec::new();
    for i in 0..15 {
        let c = ulo + (uhi - ulo) * i as f64 / 14.0;
        for h in [-8.0, -4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0, 8.0] {
            if let Some((b, t)) = plateaus(&u, &y, c, h) {
                let p = [b, t, c, h];
                grid.push((sse(&u, &y, &p), p));
            }
        }
    }
    grid.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best: Option<(f64, [f64; 4])> = None;
    let mut failures = 0;
    for (_, start) in grid.iter().take(4) {
        match levenberg_marquardt(&u, &y, *start) {
            Some((s, p)) if best.is_none_or(|(bs, _)| s < bs) => best = Some((s, p)),
            Some(_) => {}
            None => failures += 1,
        }
    }
    let Some((sse1, [b, t, c, h])) = best else {
        return Err(format!(
            "the fit did not converge from any of {failures} starting points"
        ));
    };
    // Flat: the curve explains no more than a constant would.
    let (df1, df2) = (3.0, n as f64 - 4.0);
    let sse0_std = n as f64; // Σ y² of standardised responses
    if df2 > 0.0 {
        let f = ((sse0_std - sse1).max(0.0) / df1) / (sse1.max(1e-300) / df2);
        let p = f_test_p(f, df1, df2);
        if p >= FLAT_P {
            return Err(format!(
                "flat response: a curve explains no more than a constant (F = {f:.2}, p = {p:.2})"
            ));
        }
    }
    let ec50 = 10f64.powf(c);
    if !(ec50.is_finite() && c >= ulo - 1e-9 && c <= uhi + 1e-9) {
        return Err(format!(
            "EC50 {} is outside the tested doses ({} to {}): the curve's midpoint is not in the data",
            fmt(ec50),
            fmt(lo),
            fmt(hi)
        ));
    }
    // A step: no dose inside the curve's 10-90 % transition (2 log10(9) / |Hill| wide in
    // log10 dose), so nothing constrains the slope or where between two doses the midpoint is.
    let half_width = 9f64.log10() / h.abs();
    let in_transition = u.iter().any(|&ui| (ui - c).abs() <= half_width);
    if h.abs() >= MAX_HILL || !in_transition {
        let below = distinct.iter().rev().find(|&&d| d <= ec50).copied();
        let above = distinct.iter().find(|&&d| d >= ec50).copied();
        return Err(match (below, above) {
            (Some(a), Some(z)) => format!(
                "the response steps between doses {} and {} (Hill slope {h:.0}): the EC50 lies between them but the data cannot place it",
                fmt(a),
                fmt(z)
            ),
            _ => format!("the response steps too steeply to place the EC50 (Hill slope {h:.0})"),
        });
    }
    let (mut bottom, mut top, mut hill) = (mean + sd * b, mean + sd * t, h);
    if bottom > top {
        // The same curve with the plateaus named low and high: swap them, flip the slope.
        std::mem::swap(&mut bottom, &mut top);
        hill = -hill;
    }
    Ok(Curve {
        bottom,
        top,
        ec50,
        hill,
    })
}

/// A number for a message: 4 significant digits.
fn fmt(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

/// The logistic part s = 1 / (1 + 10^(h (c − u))), stable for large exponents.
fn logistic(u: f64, c: f64, h: f64) -> f64 {
    let z = (h * (c - u)).clamp(-300.0, 300.0);
    1.0 / (1.0 + 10f64.powf(z))
}

fn sse(u: &[f64], y: &[f64], p: &[f64; 4]) -> f64 {
    u.iter()
        .zip(y)
        .map(|(&ui, &yi)| {
            let s = logistic(ui, p[2], p[3]);
            (yi - p[0] - (p[1] - p[0]) * s).powi(2)
        })
        .sum()
}

/// Bottom and top minimising the squared error for a fixed EC50 and slope (y = b(1−s) + t s).
fn plateaus(u: &[f64], y: &[f64], c: f64, h: f64) -> Option<(f64, f64)> {
    let (mut aa, mut ab, mut bb, mut ay, mut by) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (&ui, &yi) in u.iter().zip(y) {
        let s = logistic(ui, c, h);
        let a = 1.0 - s;
        aa += a * a;
        ab += a * s;
        bb += s * s;
        ay += a * yi;
        by += s * yi;
    }
    let det = aa * bb - ab * ab;
    if det.abs() < 1e-9 * (aa * bb).max(1e-300) {
        return None;
    }
    Some(((ay * bb - by * ab) / det, (aa * by - ab * ay) / det))
}

/// Levenberg–Marquardt from `p` (bottom, top, log10 EC50, Hill): the squared error and the
/// parameters at convergence, or `None` when it does not converge.
fn levenberg_marquardt(u: &[f64], y: &[f64], mut p: [f64; 4]) -> Option<(f64, [f64; 4])> {
    let ln10 = std::f64::consts::LN_10;
    let mut cost = sse(u, y, &p);
    let mut lambda = 1e-3;
    for _ in 0..500 {
        // Normal equations JᵀJ δ = Jᵀr.
        let mut jtj = [[0.0; 4]; 4];
        let mut jtr = [0.0; 4];
        for (&ui, &yi) in u.iter().zip(y) {
            let s = logistic(ui, p[2], p[3]);
            let ds = -ln10 * s * (1.0 - s); // ∂s/∂z, z = h (c − u)
            let j = [
                1.0 - s,
                s,
                (p[1] - p[0]) * ds * p[3],
                (p[1] - p[0]) * ds * (p[2] - ui),
            ];
            let r = yi - p[0] - (p[1] - p[0]) * s;
            for a in 0..4 {
                jtr[a] += j[a] * r;
                for b in 0..4 {
                    jtj[a][b] += j[a] * j[b];
                }
            }
        }
        let gradient = jtr.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        if gradient < 1e-10 {
            return Some((cost, p));
        }
        let mut improved = false;
        while lambda < 1e12 {
            let mut m = jtj;
            for (a, row) in m.iter_mut().enumerate() {
                row[a] += lambda * jtj[a][a].max(1e-12);
            }
            let Some(delta) = solve4(m, jtr) else {
                lambda *= 4.0;
                continue;
            };
            let mut q = p;
            for a in 0..4 {
                q[a] += delta[a];
            }
            let c2 = sse(u, y, &q);
            if c2.is_finite() && c2 < cost {
                let step = delta.iter().fold(0.0f64, |m, d| m.max(d.abs()));
                let gain = cost - c2;
                p = q;
                cost = c2;
                lambda = (lambda / 3.0).max(1e-12);
                improved = true;
                if p[3].abs() > MAX_HILL {
                    // A step: the slope would grow without end; the caller says so.
                    return Some((cost, p));
                }
                if gain <= 1e-12 * (cost + 1e-12) || step < 1e-10 {
                    return Some((cost, p));
                }
                break;
            }
            lambda *= 4.0;
        }
        if !improved {
            // No step lowers the error: a minimum (within rounding).
            return Some((cost, p));
        }
        if p.iter().any(|v| !v.is_finite()) {
            return None;
        }
    }
    None
}

/// Solves a 4×4 system by Gaussian elimination with partial pivoting.
fn solve4(mut m: [[f64; 4]; 4], mut v: [f64; 4]) -> Option<[f64; 4]> {
    for col in 0..4 {
        let piv = (col..4).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[piv][col].abs() < 1e-300 || !m[piv][col].is_finite() {
            return None;
        }
        m.swap(col, piv);
        v.swap(col, piv);
        for r in col + 1..4 {
            let f = m[r][col] / m[col][col];
            let pivot_row = m[col];
            for (x, p) in m[r].iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
            v[r] -= f * v[col];
        }
    }
    let mut x = [0.0; 4];
    for r in (0..4).rev() {
        let s: f64 = (r + 1..4).map(|k| m[r][k] * x[k]).sum();
        x[r] = (v[r] - s) / m[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// P(F > f) for an F distribution with (d1, d2) degrees of freedom.
fn f_test_p(f: f64, d1: f64, d2: f64) -> f64 {
    if !f.is_finite() {
        return 0.0;
    }
    incomplete_beta(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * f))
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos approximation (g = 7, n = 9).
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b) (continued fraction, Lentz).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(b, a, 1.0 - x);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + num / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * h / a
}

/// The `q` quantile of sorted values (linear interpolation between order statistics).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    if i + 1 < sorted.len() {
        sorted[i] * (1.0 - f) + sorted[i + 1] * f
    } else {
        sorted[i]
    }
}

/// Per-well summaries (`summary` of each well's values) against dose → [`fit_4pl`]; the EC50's
/// 95 % interval from `rounds` bootstrap resamples of the cells within each well (each well's
/// values drawn with replacement, summarised, refitted): the 2.5th and 97.5th percentiles over
/// the rounds that fitted. Wells with dose 0 (vehicle controls) and wells without values are
/// left out. The same seed gives the same interval.
///
/// The interval is the uncertainty from sampling cells: wells are kept as they are, so
/// well-to-well variation beyond that (plating, edge effects) is in the fit's residuals, not
/// in the interval. It is refused when fewer than half the rounds could be fitted (the EC50 is
/// then not stable under resampling, and an interval over the rest would be too narrow).
pub fn ec50_with_interval(
    wells: &[(f64, Vec<f64>)],
    summary: &dyn Fn(&[f64]) -> f64,
    rounds: usize,
    seed: u64,
) -> Result<DoseResponse, String> {
    if let Some((d, _)) = wells.iter().find(|(d, _)| !(d.is_finite() && *d >= 0.0)) {
        return Err(format!("dose {d} is not a concentration (must be ≥ 0)"));
    }
    let used: Vec<&(f64, Vec<f64>)> = wells
        .iter()
        .filter(|(d, v)| *d > 0.0 && !v.is_empty())
        .collect();
    let doses: Vec<f64> = used.iter().map(|(d, _)| *d).collect();
    let point: Vec<f64> = used.iter().map(|(_, v)| summary(v)).collect();
    // A well whose summary is not a number (no finite values) cannot be a point of the curve.
    let keep: Vec<usize> = (0..used.len()).filter(|&i| point[i].is_finite()).collect();
    let fit_doses: Vec<f64> = keep.iter().map(|&i| doses[i]).collect();
    let curve = fit_4pl(
        &fit_doses,
        &keep.iter().map(|&i| point[i]).collect::<Vec<_>>(),
    )?;
    let mut distinct = fit_doses.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();

    let mut rng = Rng::new(seed);
    let mut ec50s = Vec::with_capacity(rounds);
    let mut sample = Vec::new();
    for _ in 0..rounds {
        let resampled: Vec<f64> = keep
            .iter()
            .map(|&i| {
                let v = &used[i].1;
                sample.clear();
                sample.extend((0..v.len()).map(|_| v[rng.below(v.len())]));
                summary(&sample)
            })
            .collect();
        if resampled.iter().all(|r| r.is_finite()) {
            if let Ok(c) = fit_4pl(&fit_doses, &resampled) {
                ec50s.push(c.ec50);
            }
        }
    }
    if rounds > 0 && ec50s.len() * 2 < rounds {
        return Err(format!(
            "the EC50 is not stable: only {} of {rounds} bootstrap resamples of the cells could be fitted",
            ec50s.len()
        ));
    }
    ec50s.sort_by(f64::total_cmp);
    let ec50_ci95 = if ec50s.is_empty() {
        [f64::NAN; 2]
    } else {
        [quantile(&ec50s, 0.025), quantile(&ec50s, 0.975)]
    };
    Ok(DoseResponse {
        curve,
        ec50_ci95,
        wells: keep.len(),
        doses: distinct.len(),
        rounds_fitted: ec50s.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn median(v: &[f64]) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }

    /// Eight doses, three-fold apart from 0.01, `reps` wells each, noise `sd` on each point.
    fn noisy(truth: &Curve, reps: usize, sd: f64, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for k in 0..8 {
            let d = 0.01 * 3f64.powi(k);
            for _ in 0..reps {
                x.push(d);
                y.push(truth.at(d) + sd * rng.normal());
            }
        }
        (x, y)
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn dose_curve_at_its_ends_and_midpoint() {
        let c = Curve {
            bottom: 1.0,
            top: 3.0,
            ec50: 2.0,
            hill: 1.5,
        };
        assert!(close(c.at(2.0), 2.0, 1e-12));
        assert_eq!(c.at(0.0), 1.0);
        assert!(close(c.at(1e9), 3.0, 1e-9));
        let falling = Curve { hill: -1.5, ..c };
        assert_eq!(falling.at(0.0), 3.0);
        assert!(close(falling.at(2.0), 2.0, 1e-12));
    }

    #[test]
    fn dose_fit_recovers_a_rising_curve() {
        let truth = Curve {
            bottom: 1.2,
            top: 2.8,
            ec50: 0.5,
            hill: 1.3,
        };
        let (x, y) = noisy(&truth, 3, 0.05, 1);
        let c = fit_4pl(&x, &y).unwrap();
        assert!(close(c.ec50.log10(), truth.ec50.log10(), 0.1), "{c:?}");
        assert!(close(c.hill, truth.hill, 0.3), "{c:?}");
        assert!(close(c.bottom, truth.bottom, 0.1), "{c:?}");
        assert!(close(c.top, truth.top, 0.1), "{c:?}");
    }

    #[test]
    fn dose_fit_recovers_a_falling_curve_with_plateaus_low_and_high() {
        // A falling curve written with the plateaus the other way round: the fit names them
        // low and high and gives the slope its sign.
        let truth = Curve {
            bottom: 100.0,
            top: 10.0,
            ec50: 2.0,
            hill: 2.0,
        };
        let (x, y) = noisy(&truth, 2, 2.0, 2);
        let c = fit_4pl(&x, &y).unwrap();
        assert!(close(c.ec50.log10(), truth.ec50.log10(), 0.1), "{c:?}");
        assert!(close(c.hill, -2.0, 0.5), "{c:?}");
        assert!(
            close(c.bottom, 10.0, 4.0) && close(c.top, 100.0, 4.0),
            "{c:?}"
        );
        for d in [0.05, 1.0, 2.0, 10.0] {
            assert!(close(c.at(d), truth.at(d), 4.0), "at {d}: {c:?}");
        }
    }

    #[test]
    fn dose_fit_refuses_what_it_cannot_fit_and_says_why() {
        let e = fit_4pl(&[1.0, 2.0, 3.0, 1.0], &[1.0, 2.0, 3.0, 1.1]).unwrap_err();
        assert!(
            e.contains("3 distinct doses") && e.contains("at least 4"),
            "{e}"
        );
        let d = [1.0, 2.0, 4.0, 8.0, 16.0];
        let e = fit_4pl(&d, &[5.0; 5]).unwrap_err();
        assert!(e.contains("flat response"), "{e}");
        // Noise only: no curve explains it better than its mean.
        let mut rng = Rng::new(3);
        let x: Vec<f64> = (0..24).map(|i| 2f64.powi(i % 8)).collect();
        let y: Vec<f64> = x.iter().map(|_| 1.0 + 0.1 * rng.normal()).collect();
        let e = fit_4pl(&x, &y).unwrap_err();
        assert!(e.contains("flat response"), "{e}");
        // Still rising at the highest dose: the midpoint is beyond the data.
        let truth = Curve {
            bottom: 0.0,
            top: 1.0,
            ec50: 1000.0,
            hill: 1.0,
        };
        let (x, y) = noisy(&truth, 3, 1e-6, 4);
        let e = fit_4pl(&x, &y).unwrap_err();
        assert!(e.contains("outside the tested doses"), "{e}");
        // One jump between two doses: no slope or midpoint between them can be told apart.
        let e = fit_4pl(
            &[1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0],
            &[1.0, 1.01, 1.01, 0.99, 0.99, 1.0, 2.0, 2.01],
        )
        .unwrap_err();
        assert!(e.contains("steps between doses 4.000 and 8.000"), "{e}");
        // Four wells of noise: any curve fits them, so none is reported.
        let e = fit_4pl(&[1.0, 2.0, 4.0, 8.0], &[0.10, 0.11, 0.13, 0.12]).unwrap_err();
        assert!(e.contains("only 4 wells"), "{e}");
        let e = fit_4pl(&[0.0, 1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap_err();
        assert!(e.contains("doses must be > 0"), "{e}");
    }

    /// Wells of `cells` values each around the curve (cell-to-cell sd 0.3), three wells per
    /// dose, plus vehicle wells at dose 0.
    fn cell_wells(truth: &Curve, cells: usize, seed: u64) -> Vec<(f64, Vec<f64>)> {
        let mut rng = Rng::new(seed);
        let mut wells = Vec::new();
        for k in -1..8 {
            let d = if k < 0 { 0.0 } else { 0.01 * 3f64.powi(k) };
            for _ in 0..3 {
                let v = (0..cells)
                    .map(|_| truth.at(d) + 0.3 * rng.normal())
                    .collect();
                wells.push((d, v));
            }
        }
        wells
    }

    #[test]
    fn dose_interval_contains_the_truth_and_narrows_with_more_cells() {
        let truth = Curve {
            bottom: 1.0,
            top: 2.0,
            ec50: 0.3,
            hill: 1.0,
        };
        let few = ec50_with_interval(&cell_wells(&truth, 30, 5), &median, 300, 7).unwrap();
        let many = ec50_with_interval(&cell_wells(&truth, 600, 6), &median, 300, 7).unwrap();
        for r in [&few, &many] {
            let [lo, hi] = r.ec50_ci95;
            assert!(lo < truth.ec50 && truth.ec50 < hi, "{r:?}");
            assert!(lo <= r.curve.ec50 && r.curve.ec50 <= hi, "{r:?}");
            assert_eq!((r.wells, r.doses), (24, 8), "vehicle wells left out");
            assert!(r.rounds_fitted >= 290, "{r:?}");
        }
        let width = |r: &DoseResponse| r.ec50_ci95[1].log10() - r.ec50_ci95[0].log10();
        assert!(
            width(&many) < 0.5 * width(&few),
            "{} cells: {:?}; {} cells: {:?}",
            30,
            few.ec50_ci95,
            600,
            many.ec50_ci95
        );
        // Deterministic for a seed.
        let again = ec50_with_interval(&cell_wells(&truth, 30, 5), &median, 300, 7).unwrap();
        assert_eq!(again, few);
    }

    #[test]
    fn dose_interval_refuses_too_few_doses() {
        let wells: Vec<(f64, Vec<f64>)> = [0.0, 1.0, 2.0, 3.0]
            .iter()
            .map(|&d| (d, vec![d, d + 0.1, d + 0.2]))
            .collect();
        let e = ec50_with_interval(&wells, &median, 10, 1).unwrap_err();
        assert!(e.contains("3 distinct doses"), "{e}");
    }

    #[test]
    fn dose_f_test_p_values() {
        // F(3, 20) upper 5 % point is 3.098; F(1, 10) at 4.965 is 5 %.
        assert!(close(f_test_p(3.098, 3.0, 20.0), 0.05, 1e-3));
        assert!(close(f_test_p(4.965, 1.0, 10.0), 0.05, 1e-3));
        assert!(close(f_test_p(0.0, 3.0, 20.0), 1.0, 1e-12));
    }
}
