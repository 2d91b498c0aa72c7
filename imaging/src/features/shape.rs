//! AreaShape: area, perimeter, moments, eccentricity, solidity, form factor, Feret
//! diameters on pixel corners, and Zernike magnitudes, as CellProfiler measures them.

use super::object;
use crate::segment::Labels;
use std::f64::consts::{PI, SQRT_2};

/// Zernike moments computed, in CellProfiler's order and naming (n = 0..=4, m = n mod 2..=n
/// step 2). CellProfiler goes to n = 9 (30 moments): extend this and [`ZERNIKE_NM`] together
/// (a test checks they agree; the code handles n up to 9).
pub const ZERNIKE_NAMES: &[&str] = &[
    "Zernike_0_0",
    "Zernike_1_1",
    "Zernike_2_0",
    "Zernike_2_2",
    "Zernike_3_1",
    "Zernike_3_3",
    "Zernike_4_0",
    "Zernike_4_2",
    "Zernike_4_4",
];

/// (n, m) of each entry of [`ZERNIKE_NAMES`].
pub const ZERNIKE_NM: &[(u32, u32)] = &[
    (0, 0),
    (1, 1),
    (2, 0),
    (2, 2),
    (3, 1),
    (3, 3),
    (4, 0),
    (4, 2),
    (4, 4),
];

/// One object's shape measurements, pixels as units. Conventions are scikit-image's
/// `regionprops` as CellProfiler calls it, except where a field says otherwise.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    /// Number of pixels.
    pub area: f64,
    /// scikit-image `perimeter(neighborhood=4)`: boundary pixels (4-connected erosion) weighted
    /// by their boundary neighbours (1 straight, √2 diagonal, (1+√2)/2 corner). It reads about
    /// 5% above 2πr on a digital disk of radius 20: that is the estimator, kept for
    /// compatibility.
    pub perimeter: f64,
    /// Of the ellipse with the same second central moments: √(1 − λ2/λ1).
    pub eccentricity: f64,
    /// 4√λ1 (λ: eigenvalues of the covariance of the pixel coordinates).
    pub major_axis_length: f64,
    /// 4√λ2.
    pub minor_axis_length: f64,
    /// Degrees in −90..=90: scikit-image's `orientation` (angle between the image's row axis
    /// and the major axis) × 180/π, which is what CellProfiler stores. A horizontal object
    /// reads ±90, a vertical one 0; "\" (top-left to bottom-right) is positive.
    pub orientation: f64,
    /// `area / convex_area`.
    pub solidity: f64,
    /// scikit-image's convex area: the number of pixel centres inside (or on) the convex hull
    /// of the object's pixel-edge midpoints. Pixel centres rather than the hull's polygon
    /// area, so a filled disk of radius 20 has solidity 0.963, not ≈ 1.
    pub convex_area: f64,
    /// `area / bbox area`.
    pub extent: f64,
    /// 4πA/P²; 0 when the perimeter is 0 (a single pixel), where CellProfiler gives infinity.
    pub form_factor: f64,
    /// CellProfiler's Compactness as computed since its scikit-image rewrite (and documented
    /// now): P²/(4πA) with the denominator floored at 1, i.e. 1/form_factor.
    pub compactness: f64,
    /// The older documented Compactness: mean squared distance of the pixels from the centroid
    /// × 2π / area; 1 for a filled disk, larger for irregular or holed objects.
    pub compactness_moment: f64,
    /// √(4A/π): the diameter of the disk with the same area.
    pub equivalent_diameter: f64,
    /// Largest caliper width over all angles, of the convex hull of the pixels' *corners*
    /// (so a 10×40 rectangle gives √(10²+40²)). CellProfiler uses pixel centres, which gives
    /// about one pixel less on both Feret diameters.
    pub max_feret_diameter: f64,
    /// Smallest caliper width, same hull (10 for the 10×40 rectangle; CellProfiler: 9).
    pub min_feret_diameter: f64,
    /// Mean x of the pixels (column).
    pub center_x: f64,
    /// Mean y of the pixels (row).
    pub center_y: f64,
    /// x0, y0, x1, y1 with x1, y1 exclusive.
    pub bbox: [u32; 4],
    /// Whether a pixel lies on the image's edge (such objects are cut; their shape is not
    /// reliable).
    pub touches_border: bool,
    /// |A_nm| in [`ZERNIKE_NAMES`] order: on the minimum enclosing circle of the pixel centres
    /// (as CellProfiler), coordinates scaled to the unit disk, Σ V*_nm over the object's
    /// pixels divided by the circle's area in pixels (πr², CellProfiler's normalisation, so
    /// Zernike_0_0 is the fraction of the circle covered). All 0 for a single pixel.
    /// Pixels exactly on the circle count; CellProfiler's rounding sometimes drops them
    /// (2 of 91 pixels in a test shape), a difference of that order.
    pub zernike: Vec<f64>,
}

/// Per-object statistics of a pixel accumulator pass.
#[derive(Clone, Copy)]
struct Moments {
    n: u64,
    sx: u64,
    sy: u64,
    sxx: u64,
    syy: u64,
    sxy: u64,
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl Default for Moments {
    fn default() -> Self {
        Self {
            n: 0,
            sx: 0,
            sy: 0,
            sxx: 0,
            syy: 0,
            sxy: 0,
            x0: u32::MAX,
            y0: u32::MAX,
            x1: 0,
            y1: 0,
        }
    }
}

/// Shape measurements of every object; index i is object i + 1. Objects whose id has no
/// pixel get `Shape::default()` (area 0) with zero Zernike magnitudes.
pub fn shape_features(labels: &Labels) -> Vec<Shape> {
    let (w, h) = (labels.width as usize, labels.height as usize);
    assert_eq!(labels.data.len(), w * h, "label image size");
    let n_obj = labels.count as usize;
    let lab = &labels.data;

    // Pass 1: moments, bounding boxes, and which pixels are on their object's boundary
    // (scikit-image: the pixel minus its erosion by a cross, outside counting as background).
    let mut mom = vec![Moments::default(); n_obj + 1];
    let mut border = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let l = object(labels, i);
            if l == 0 {
                continue;
            }
            let m = &mut mom[l];
            let (xu, yu) = (x as u64, y as u64);
            m.n += 1;
            m.sx += xu;
            m.sy += yu;
            m.sxx += xu * xu;
            m.syy += yu * yu;
            m.sxy += xu * yu;
            m.x0 = m.x0.min(x as u32);
            m.y0 = m.y0.min(y as u32);
            m.x1 = m.x1.max(x as u32 + 1);
            m.y1 = m.y1.max(y as u32 + 1);
            let lv = lab[i];
            border[i] = x == 0
                || y == 0
                || x + 1 == w
                || y + 1 == h
                || lab[i - 1] != lv
                || lab[i + 1] != lv
                || lab[i - w] != lv
                || lab[i + w] != lv;
        }
    }

    // Row extents (first and last pixel of each row of each object): the convex hulls and
    // the enclosing circle need nothing else. The ends of a row are always boundary pixels.
    let mut rows: Vec<Vec<(u32, u32)>> = mom
        .iter()
        .map(|m| {
            if m.n == 0 {
                Vec::new()
            } else {
                vec![(u32::MAX, 0); (m.y1 - m.y0) as usize]
            }
        })
        .collect();

    // Pass 2 (boundary pixels only): the perimeter code of scikit-image, i.e. the boundary
    // image convolved with [[10,2,10],[2,1,2],[10,2,10]], looked up in its weight table.
    let mut weights = [0f64; 50];
    for c in [5, 7, 15, 17, 25, 27] {
        weights[c] = 1.0;
    }
    for c in [21, 33] {
        weights[c] = SQRT_2;
    }
    for c in [13, 23] {
        weights[c] = (1.0 + SQRT_2) / 2.0;
    }
    let mut perimeter = vec![0f64; n_obj + 1];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if !border[i] {
                continue;
            }
            let l = object(labels, i);
            if l == 0 {
                continue;
            }
            let lv = lab[i];
            let same = |xx: isize, yy: isize| -> bool {
                if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                    return false;
                }
                let j = yy as usize * w + xx as usize;
                border[j] && lab[j] == lv
            };
            let (xi, yi) = (x as isize, y as isize);
            let mut code = 1usize;
            for (dx, dy) in [(-1, 0), (1, 0), (0, -1), (0, 1)] {
                if same(xi + dx, yi + dy) {
                    code += 2;
                }
            }
            for (dx, dy) in [(-1, -1), (1, -1), (-1, 1), (1, 1)] {
                if same(xi + dx, yi + dy) {
                    code += 10;
                }
            }
            perimeter[l] += weights[code];
            let r = &mut rows[l][y - mom[l].y0 as usize];
            r.0 = r.0.min(x as u32);
            r.1 = r.1.max(x as u32);
        }
    }

    // Per object: moments-derived values, hulls, Feret, enclosing circle.
    let mut out = vec![
        Shape {
            zernike: vec![0.0; ZERNIKE_NM.len()],
            ..Shape::default()
        };
        n_obj
    ];
    let mut circles = vec![(0f64, 0f64, 0f64); n_obj + 1];
    for l in 1..=n_obj {
        let m = mom[l];
        if m.n == 0 {
            continue;
        }
        let s = &mut out[l - 1];
        let n = m.n as f64;
        let area = n;
        s.area = area;
        s.center_x = m.sx as f64 / n;
        s.center_y = m.sy as f64 / n;
        s.bbox = [m.x0, m.y0, m.x1, m.y1];
        s.touches_border = m.x0 == 0 || m.y0 == 0 || m.x1 as usize == w || m.y1 as usize == h;
        // Exact integer central moments (n² × covariance), then one division.
        let ni = m.n as i128;
        let cov = |sab: u64, sa: u64, sb: u64| -> f64 {
            (ni * sab as i128 - sa as i128 * sb as i128) as f64 / (n * n)
        };
        let vxx = cov(m.sxx, m.sx, m.sx);
        let vyy = cov(m.syy, m.sy, m.sy);
        let vxy = cov(m.sxy, m.sx, m.sy);
        // scikit-image's inertia tensor [[a, b], [b, c]] (row/column naming as theirs).
        let (a, b, c) = (vxx, -vxy, vyy);
        let half = (a + c) / 2.0;
        let d = (((a - c) / 2.0).powi(2) + b * b).sqrt();
        let l1 = (half + d).max(0.0);
        let l2 = (half - d).max(0.0);
        s.major_axis_length = 4.0 * l1.sqrt();
        s.minor_axis_length = 4.0 * l2.sqrt();
        s.eccentricity = if l1 == 0.0 {
            0.0
        } else {
            (1.0 - l2 / l1).max(0.0).sqrt()
        };
        let orientation = if a - c == 0.0 {
            if b < 0.0 {
                PI / 4.0
            } else {
                -PI / 4.0
            }
        } else {
            0.5 * (-2.0 * b).atan2(c - a)
        };
        s.orientation = orientation.to_degrees();
        let p = perimeter[l];
        s.perimeter = p;
        s.form_factor = if p > 0.0 {
            4.0 * PI * area / (p * p)
        } else {
            0.0
        };
        s.compactness = p * p / (4.0 * PI * area).max(1.0);
        s.compactness_moment = 2.0 * PI * (vxx + vyy) / area;
        s.equivalent_diameter = (4.0 * area / PI).sqrt();
        s.extent = area / ((m.x1 - m.x0) as f64 * (m.y1 - m.y0) as f64);

        // Hulls in doubled coordinates, so half-pixel offsets stay integers (exact).
        let mut corners = Vec::new();
        let mut midpoints = Vec::new();
        let mut centres = Vec::new();
        for (k, &(xl, xr)) in rows[l].iter().enumerate() {
            if xl > xr {
                continue; // a row without pixels (non-convex object)
            }
            let yy = 2 * (m.y0 as i64 + k as i64);
            let (xl, xr) = (2 * xl as i64, 2 * xr as i64);
            corners.extend([
                (xl - 1, yy - 1),
                (xl - 1, yy + 1),
                (xr + 1, yy - 1),
                (xr + 1, yy + 1),
            ]);
            midpoints.extend([
                (xl - 1, yy),
                (xl, yy - 1),
                (xl, yy + 1),
                (xr + 1, yy),
                (xr, yy - 1),
                (xr, yy + 1),
            ]);
            centres.extend([(xl, yy), (xr, yy)]);
        }
        let corners = convex_hull(corners);
        let (fmin, fmax) = feret(&corners);
        s.min_feret_diameter = fmin;
        s.max_feret_diameter = fmax;
        let convex_area = count_centres_in_hull(&convex_hull(midpoints), m.y0, m.y1) as f64;
        s.convex_area = convex_area;
        s.solidity = area / convex_area;
        let centres: Vec<(f64, f64)> = convex_hull(centres)
            .into_iter()
            .map(|(x, y)| (x as f64 / 2.0, y as f64 / 2.0))
            .collect();
        circles[l] = min_enclosing_circle(&centres);
    }

    // Pass 3: Zernike sums over each object's pixels on its own circle.
    let lut = zernike_lut();
    let nz = ZERNIKE_NM.len();
    let max_m = ZERNIKE_NM
        .iter()
        .map(|&(_, m)| m as usize)
        .max()
        .unwrap_or(0);
    assert!(max_m < 10, "Zernike orders above 9 are not supported");
    let mut sums = vec![(0f64, 0f64); (n_obj + 1) * nz];
    for y in 0..h {
        for x in 0..w {
            let l = object(labels, y * w + x);
            if l == 0 {
                continue;
            }
            let (cx, cy, r) = circles[l];
            if r <= 0.0 {
                continue;
            }
            let zx = (x as f64 - cx) / r;
            let zy = (y as f64 - cy) / r;
            let r2 = zx * zx + zy * zy;
            // Points on the circle belong to it; rounding must not drop them.
            if r2 > 1.0 + 1e-9 {
                continue;
            }
            // Powers of z = zx + i·zy: (x+iy)^m carries the r^m and e^{imθ} of V_nm.
            let mut zp = [(1.0, 0.0); 10];
            for k in 1..=max_m {
                let (pr, pi) = zp[k - 1];
                zp[k] = (pr * zx - pi * zy, pr * zy + pi * zx);
            }
            let acc = &mut sums[l * nz..(l + 1) * nz];
            for (k, &(_, mm)) in ZERNIKE_NM.iter().enumerate() {
                let mut poly = 0.0;
                for &c in &lut[k] {
                    poly = poly * r2 + c;
                }
                let (zr, zi) = zp[mm as usize];
                acc[k].0 += poly * zr;
                acc[k].1 += poly * zi;
            }
        }
    }
    for l in 1..=n_obj {
        let r = circles[l].2;
        if mom[l].n == 0 || r <= 0.0 {
            continue;
        }
        let norm = PI * r * r;
        for k in 0..nz {
            let (re, im) = sums[l * nz + k];
            out[l - 1].zernike[k] = (re * re + im * im).sqrt() / norm;
        }
    }
    out
}

/// Coefficients of each radial polynomial as a polynomial in r², highest power first (for
/// Horner): R_nm(r) = r^m · Σ_k c_k (r²)^((n−m)/2 − k).
pub(super) fn zernike_lut() -> Vec<Vec<f64>> {
    let fact = |k: u32| (1..=k).map(f64::from).product::<f64>();
    ZERNIKE_NM
        .iter()
        .map(|&(n, m)| {
            let (p, q) = ((n + m) / 2, (n - m) / 2);
            (0..=q)
                .map(|k| {
                    let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
                    sign * fact(n - k) / (fact(k) * fact(p - k) * fact(q - k))
                })
                .collect()
        })
        .collect()
}

fn cross(o: (i64, i64), a: (i64, i64), b: (i64, i64)) -> i64 {
    (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
}

/// Andrew's monotone chain: counter-clockwise (in x-right, y-down coordinates: clockwise on
/// screen) hull without collinear points. Fewer than 3 distinct points come back as they are.
fn convex_hull(mut pts: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let half = |seq: &mut dyn Iterator<Item = (i64, i64)>| {
        let mut chain: Vec<(i64, i64)> = Vec::new();
        for p in seq {
            while chain.len() >= 2 && cross(chain[chain.len() - 2], chain[chain.len() - 1], p) <= 0
            {
                chain.pop();
            }
            chain.push(p);
        }
        chain.pop();
        chain
    };
    let mut hull = half(&mut pts.iter().copied());
    hull.extend(half(&mut pts.iter().rev().copied()));
    hull
}

/// Min and max caliper width of a hull given in doubled coordinates. Exhaustive over vertex
/// pairs and edges: hulls have tens to a few hundred vertices, and this has no degenerate
/// cases to get wrong.
fn feret(hull: &[(i64, i64)]) -> (f64, f64) {
    let n = hull.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut max2 = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            let (dx, dy) = (hull[i].0 - hull[j].0, hull[i].1 - hull[j].1);
            max2 = max2.max(dx * dx + dy * dy);
        }
    }
    let mut min = f64::INFINITY;
    if n >= 3 {
        for i in 0..n {
            let (a, b) = (hull[i], hull[(i + 1) % n]);
            let len = (((b.0 - a.0).pow(2) + (b.1 - a.1).pow(2)) as f64).sqrt();
            let far = hull
                .iter()
                .map(|&v| cross(a, b, v).abs())
                .max()
                .unwrap_or(0);
            min = min.min(far as f64 / len);
        }
    } else {
        min = 0.0;
    }
    (min / 2.0, (max2 as f64).sqrt() / 2.0)
}

/// Integer points (pixel centres) inside or on a convex polygon given in doubled coordinates,
/// rows y0..y1: scikit-image's `grid_points_in_poly` with its borders included.
fn count_centres_in_hull(hull: &[(i64, i64)], y0: u32, y1: u32) -> u64 {
    let n = hull.len();
    let mut total = 0u64;
    for y in y0..y1 {
        let yy = 2 * y as i64;
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..n {
            let (a, b) = (hull[i], hull[(i + 1) % n]);
            if (a.1 <= yy && yy <= b.1) || (b.1 <= yy && yy <= a.1) {
                if a.1 == b.1 {
                    lo = lo.min(a.0.min(b.0) as f64);
                    hi = hi.max(a.0.max(b.0) as f64);
                } else {
                    let x =
                        a.0 as f64 + (yy - a.1) as f64 * (b.0 - a.0) as f64 / (b.1 - a.1) as f64;
                    lo = lo.min(x);
                    hi = hi.max(x);
                }
            }
        }
        if lo > hi {
            continue;
        }
        let first = (lo / 2.0 - 1e-9).ceil() as i64;
        let last = (hi / 2.0 + 1e-9).floor() as i64;
        if last >= first {
            total += (last - first + 1) as u64;
        }
    }
    total
}

/// Smallest circle containing the points (Welzl's incremental algorithm over a fixed
/// pseudo-random order, expected linear time). Returns (cx, cy, r).
fn min_enclosing_circle(pts: &[(f64, f64)]) -> (f64, f64, f64) {
    if pts.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut p = pts.to_vec();
    // Deterministic shuffle: the expected-linear bound needs a random order, the results
    // must not depend on the run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..p.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        p.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let inside = |c: (f64, f64, f64), q: (f64, f64)| {
        ((q.0 - c.0).powi(2) + (q.1 - c.1).powi(2)).sqrt() <= c.2 * (1.0 + 1e-12) + 1e-9
    };
    let two = |a: (f64, f64), b: (f64, f64)| {
        let c = ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
        (c.0, c.1, ((a.0 - c.0).powi(2) + (a.1 - c.1).powi(2)).sqrt())
    };
    let three = |a: (f64, f64), b: (f64, f64), c: (f64, f64)| {
        let (bx, by, cx, cy) = (b.0 - a.0, b.1 - a.1, c.0 - a.0, c.1 - a.1);
        let d = 2.0 * (bx * cy - by * cx);
        if d.abs() < 1e-12 {
            // Collinear: the circle on the two farthest points.
            let cands = [two(a, b), two(a, c), two(b, c)];
            return cands
                .into_iter()
                .fold((0.0, 0.0, -1.0), |m, k| if k.2 > m.2 { k } else { m });
        }
        let (b2, c2) = (bx * bx + by * by, cx * cx + cy * cy);
        let ux = (cy * b2 - by * c2) / d;
        let uy = (bx * c2 - cx * b2) / d;
        (a.0 + ux, a.1 + uy, (ux * ux + uy * uy).sqrt())
    };
    let mut c = (p[0].0, p[0].1, 0.0);
    for i in 1..p.len() {
        if inside(c, p[i]) {
            continue;
        }
        c = (p[i].0, p[i].1, 0.0);
        for j in 0..i {
            if inside(c, p[j]) {
                continue;
            }
            c = two(p[i], p[j]);
            for k in 0..j {
                if !inside(c, p[k]) {
                    c = three(p[i], p[j], p[k]);
                }
            }
        }
    }
    c
}
