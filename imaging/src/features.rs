//! Per-object measurements that reproduce CellProfiler's MeasureObjectSizeShape,
//! MeasureObjectIntensity and MeasureTexture, so numbers from plateflow can be compared with
//! (and substituted for) CellProfiler's columns. Plain functions over a label image: no I/O.
//!
//! Every function makes a fixed number of passes over the label image and then does small
//! per-object work (hulls, sorting an object's own pixels, one bounding-box crop): the cost
//! does not grow with objects × pixels.
//!
//! Where CellProfiler's own definition is quirky it is followed anyway (and said so), because
//! the point of these numbers is that they match what biologists already have. The choices
//! that differ from CellProfiler are named on the field concerned (mainly the Feret
//! diameters, on pixel corners).

use crate::segment::Labels;
use crate::GrayImage;
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

/// The label of pixel `i`, or 0 when it is not a measured object (ids above `count` are left
/// alone rather than trusted).
#[inline]
fn object(labels: &Labels, i: usize) -> usize {
    let l = labels.data[i];
    if l <= labels.count {
        l as usize
    } else {
        0
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
fn zernike_lut() -> Vec<Vec<f64>> {
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

/// One object's intensity statistics, in CellProfiler's units: intensities divided by the
/// bit depth's maximum (255 or 65535), as CellProfiler loads images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntensityStats {
    /// Sum over the object's pixels.
    pub integrated: f64,
    pub mean: f64,
    /// Population standard deviation (divides by n), as CellProfiler.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Over the edge pixels: CellProfiler's outline, i.e. pixels with any of their 8
    /// neighbours in another label (or background), plus pixels on the image's edge.
    pub integrated_edge: f64,
    pub mean_edge: f64,
    pub std_edge: f64,
    pub min_edge: f64,
    pub max_edge: f64,
    /// CellProfiler's quantile rule on the sorted values v (n of them): position q = n·f,
    /// interpolating v[⌊q⌋] and v[⌊q⌋+1] by q's fraction (v[⌊q⌋] at the top end). Note this
    /// is not NumPy's median: for an even n it gives the upper middle value.
    pub lower_quartile: f64,
    pub median: f64,
    pub upper_quartile: f64,
    /// Median absolute deviation from `median`, same quantile rule.
    pub mad: f64,
    /// Intensity-weighted centre (CellProfiler Location_CenterMassIntensity); the plain
    /// centroid when the object's intensity sums to 0.
    pub center_mass_x: f64,
    pub center_mass_y: f64,
    /// Distance between the centroid and the intensity-weighted centre.
    pub mass_displacement: f64,
}

#[derive(Clone, Copy)]
struct IntensityAcc {
    n: u64,
    sum: u64,
    sum2: u128,
    min: u16,
    max: u16,
    sx: u64,
    sy: u64,
    sxv: u128,
    syv: u128,
    en: u64,
    esum: u64,
    esum2: u128,
    emin: u16,
    emax: u16,
}

impl Default for IntensityAcc {
    fn default() -> Self {
        Self {
            n: 0,
            sum: 0,
            sum2: 0,
            min: u16::MAX,
            max: 0,
            sx: 0,
            sy: 0,
            sxv: 0,
            syv: 0,
            en: 0,
            esum: 0,
            esum2: 0,
            emin: u16::MAX,
            emax: 0,
        }
    }
}

/// Population standard deviation from exact integer sums.
fn std_from_sums(n: u64, sum: u64, sum2: u128) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let num = n as u128 * sum2 - sum as u128 * sum as u128;
    (num as f64).sqrt() / n as f64
}

/// CellProfiler's quantile of sorted values (see [`IntensityStats::median`]).
fn cp_quantile<T: Copy + Into<f64>>(sorted: &[T], f: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let q = n as f64 * f;
    let qi = q.floor() as usize;
    let qf = q - qi as f64;
    if qi + 1 < n {
        sorted[qi].into() * (1.0 - qf) + sorted[qi + 1].into() * qf
    } else {
        sorted[qi.min(n - 1)].into()
    }
}

/// Intensity statistics of every object (index i is object i + 1) over `image`, which must
/// have the label image's size. Objects without pixels get all zeros. To measure a region
/// such as the cytoplasm, pass a label image of that region (see [`subtract_labels`]).
pub fn intensity_features(labels: &Labels, image: &GrayImage) -> Vec<IntensityStats> {
    let (w, h) = (labels.width as usize, labels.height as usize);
    assert_eq!(
        (image.width, image.height),
        (labels.width, labels.height),
        "image and labels differ in size"
    );
    let n_obj = labels.count as usize;
    let lab = &labels.data;
    let px = &image.data;
    let mut acc = vec![IntensityAcc::default(); n_obj + 1];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let l = object(labels, i);
            if l == 0 {
                continue;
            }
            let v = px[i];
            let a = &mut acc[l];
            let vu = v as u64;
            a.n += 1;
            a.sum += vu;
            a.sum2 += (vu * vu) as u128;
            a.min = a.min.min(v);
            a.max = a.max.max(v);
            a.sx += x as u64;
            a.sy += y as u64;
            a.sxv += (x as u64 * vu) as u128;
            a.syv += (y as u64 * vu) as u128;
            let lv = lab[i];
            let edge = x == 0 || y == 0 || x + 1 == w || y + 1 == h || {
                let (up, down) = (i - w, i + w);
                lab[up - 1] != lv
                    || lab[up] != lv
                    || lab[up + 1] != lv
                    || lab[i - 1] != lv
                    || lab[i + 1] != lv
                    || lab[down - 1] != lv
                    || lab[down] != lv
                    || lab[down + 1] != lv
            };
            if edge {
                a.en += 1;
                a.esum += vu;
                a.esum2 += (vu * vu) as u128;
                a.emin = a.emin.min(v);
                a.emax = a.emax.max(v);
            }
        }
    }

    // Each object's values, grouped by a counting sort on the label, for the quantiles.
    let mut start = vec![0usize; n_obj + 2];
    for l in 1..=n_obj {
        start[l + 1] = start[l] + acc[l].n as usize;
    }
    let mut fill = start.clone();
    let mut values = vec![0u16; start[n_obj + 1]];
    for (i, &v) in px.iter().enumerate() {
        let l = object(labels, i);
        if l != 0 {
            values[fill[l]] = v;
            fill[l] += 1;
        }
    }

    let scale = 1.0 / image.max_value() as f64;
    let mut deviations = Vec::new();
    (1..=n_obj)
        .map(|l| {
            let a = acc[l];
            if a.n == 0 {
                return IntensityStats::default();
            }
            let vals = &mut values[start[l]..start[l + 1]];
            vals.sort_unstable();
            let n = a.n as f64;
            let median = cp_quantile(vals, 0.5) * scale;
            deviations.clear();
            deviations.extend(vals.iter().map(|&v| (v as f64 * scale - median).abs()));
            deviations.sort_unstable_by(f64::total_cmp);
            let (cx, cy) = (a.sx as f64 / n, a.sy as f64 / n);
            let (cmx, cmy) = if a.sum > 0 {
                (a.sxv as f64 / a.sum as f64, a.syv as f64 / a.sum as f64)
            } else {
                (cx, cy)
            };
            let (en, mean_edge) = if a.en > 0 {
                (a.en, a.esum as f64 / a.en as f64 * scale)
            } else {
                (0, 0.0)
            };
            IntensityStats {
                integrated: a.sum as f64 * scale,
                mean: a.sum as f64 / n * scale,
                std: std_from_sums(a.n, a.sum, a.sum2) * scale,
                min: a.min as f64 * scale,
                max: a.max as f64 * scale,
                integrated_edge: a.esum as f64 * scale,
                mean_edge,
                std_edge: std_from_sums(en, a.esum, a.esum2) * scale,
                min_edge: if en > 0 { a.emin as f64 * scale } else { 0.0 },
                max_edge: a.emax as f64 * scale,
                lower_quartile: cp_quantile(vals, 0.25) * scale,
                median,
                upper_quartile: cp_quantile(vals, 0.75) * scale,
                mad: cp_quantile(&deviations, 0.5),
                center_mass_x: cmx,
                center_mass_y: cmy,
                mass_displacement: ((cx - cmx).powi(2) + (cy - cmy).powi(2)).sqrt(),
            }
        })
        .collect()
}

/// The part of each cell outside every nucleus, keeping the cell's id (CellProfiler's
/// IdentifyTertiaryObjects, used for cytoplasm measurements). Same count as `cells`, so
/// indices line up with the cells' other measurements; a cell wholly covered by nuclei
/// keeps its id with no pixels.
pub fn subtract_labels(cells: &Labels, nuclei: &Labels) -> Labels {
    assert_eq!(
        (cells.width, cells.height),
        (nuclei.width, nuclei.height),
        "cell and nucleus label images differ in size"
    );
    Labels {
        width: cells.width,
        height: cells.height,
        data: cells
            .data
            .iter()
            .zip(&nuclei.data)
            .map(|(&c, &n)| if n == 0 { c } else { 0 })
            .collect(),
        count: cells.count,
    }
}

/// The 13 Haralick features, in CellProfiler's order (its `Texture_<name>_...` columns).
pub const HARALICK_NAMES: &[&str] = &[
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
];

/// The four co-occurrence offsets (dy, dx) per unit of scale, in CellProfiler's direction
/// order (its column suffixes _00.._03; mahotas's `_2d_deltas`): right, down-right, down,
/// down-left. Diagonals step `scale` pixels on both axes.
pub const HARALICK_DIRECTIONS: [(i32, i32); 4] = [(0, 1), (1, 1), (1, 0), (1, -1)];

/// Grey level of each raw value, as CellProfiler computes it: the image scaled to 0..1 by the
/// bit depth, converted to 8 bits with rounding (scikit-image `img_as_ubyte`), then to
/// `levels` by `rescale_intensity(in 0..255, out 0..levels-1)` truncated to an integer.
fn grey_levels(image: &GrayImage, levels: u32) -> Vec<u16> {
    let maxv = image.max_value() as u64;
    (0..=maxv)
        .map(|v| {
            let byte = (2 * v * 255 + maxv) / (2 * maxv);
            (byte * (levels as u64 - 1) / 255) as u16
        })
        .collect()
}

/// Haralick features per object and direction (CellProfiler MeasureTexture, which calls
/// mahotas on each object's bounding box with the background set to 0 and `ignore_zeros`):
///
/// - grey levels as in CellProfiler: the whole image rescaled by its bit depth to
///   0..levels-1 (`levels` 2..=256; CellProfiler's default is 256, scale 3);
/// - a pair counts when both pixels belong to the same object *and both grey levels are
///   above 0*: mahotas's `ignore_zeros` cannot tell a dark object pixel from background, so
///   CellProfiler drops pixels of level 0 too, and so does this;
/// - the matrix is symmetric (each pair counted both ways) and normalised to sum 1;
/// - mahotas's formulas: log base 2, grey levels counted from 0, Correlation 1 when either
///   marginal has zero variance, DifferenceVariance the variance of the vector
///   P(|i−j| = k) over k = 0..=the object's top level (mahotas's default, not Var|i−j|).
///
/// When some direction has no pair (objects thinner than `scale`), mahotas refuses the
/// object and CellProfiler stores 0 for all its texture columns: all 0 here too.
pub fn haralick_features_directions(
    labels: &Labels,
    image: &GrayImage,
    scale: u32,
    levels: u32,
) -> Vec<[[f64; 13]; 4]> {
    let (w, h) = (labels.width as usize, labels.height as usize);
    assert_eq!(
        (image.width, image.height),
        (labels.width, labels.height),
        "image and labels differ in size"
    );
    assert!(
        (2..=256).contains(&levels),
        "Haralick grey levels must be 2..=256, not {levels}"
    );
    assert!(scale >= 1, "Haralick scale must be at least 1");
    let n_obj = labels.count as usize;
    let lut = grey_levels(image, levels);
    let top = lut.len() - 1;

    // Bounding boxes: each object is then read once from its own box.
    let mut bbox = vec![[u32::MAX, u32::MAX, 0u32, 0u32]; n_obj + 1];
    for y in 0..h {
        for x in 0..w {
            let l = object(labels, y * w + x);
            if l != 0 {
                let b = &mut bbox[l];
                b[0] = b[0].min(x as u32);
                b[1] = b[1].min(y as u32);
                b[2] = b[2].max(x as u32 + 1);
                b[3] = b[3].max(y as u32 + 1);
            }
        }
    }

    let stride = levels as usize;
    let mut cmat = vec![0u32; stride * stride];
    let mut touched: Vec<u32> = Vec::new();
    let mut crop: Vec<u16> = Vec::new();
    let mut out = vec![[[0f64; 13]; 4]; n_obj];
    for l in 1..=n_obj {
        let b = bbox[l];
        if b[2] == 0 {
            continue;
        }
        let (bw, bh) = ((b[2] - b[0]) as usize, (b[3] - b[1]) as usize);
        crop.clear();
        let mut fm1 = 1usize;
        for y in b[1] as usize..b[3] as usize {
            for x in b[0] as usize..b[2] as usize {
                let i = y * w + x;
                let g = if object(labels, i) == l {
                    lut[(image.data[i] as usize).min(top)]
                } else {
                    0
                };
                fm1 = fm1.max(g as usize + 1);
                crop.push(g);
            }
        }
        let mut result = [[0f64; 13]; 4];
        let mut complete = true;
        for (d, &(dy, dx)) in HARALICK_DIRECTIONS.iter().enumerate() {
            let (dy, dx) = (dy as isize * scale as isize, dx as isize * scale as isize);
            let mut pairs = 0u64;
            for y in 0..bh as isize - dy {
                for x in 0.max(-dx)..(bw as isize).min(bw as isize - dx) {
                    let a = crop[y as usize * bw + x as usize];
                    if a == 0 {
                        continue;
                    }
                    let c = crop[(y + dy) as usize * bw + (x + dx) as usize];
                    if c == 0 {
                        continue;
                    }
                    pairs += 1;
                    for idx in [
                        a as usize * stride + c as usize,
                        c as usize * stride + a as usize,
                    ] {
                        if cmat[idx] == 0 {
                            touched.push(idx as u32);
                        }
                        cmat[idx] += 1;
                    }
                }
            }
            if pairs == 0 {
                complete = false;
                break;
            }
            result[d] = haralick_from_cooccurrence(&cmat, &touched, stride, fm1, 2 * pairs);
            for &idx in &touched {
                cmat[idx as usize] = 0;
            }
            touched.clear();
        }
        for &idx in &touched {
            cmat[idx as usize] = 0;
        }
        touched.clear();
        if complete {
            out[l - 1] = result;
        }
    }
    out
}

/// The 13 features of one symmetric co-occurrence matrix, visiting only its non-zero cells
/// (`touched`) so the cost follows the object's size, not levels².
fn haralick_from_cooccurrence(
    cmat: &[u32],
    touched: &[u32],
    stride: usize,
    fm1: usize,
    total: u64,
) -> [f64; 13] {
    let t = total as f64;
    let mut px = vec![0f64; fm1];
    let mut py = vec![0f64; fm1];
    let mut plus = vec![0f64; 2 * fm1];
    let mut minus = vec![0f64; fm1];
    let (mut asm, mut sij, mut idm, mut entropy) = (0.0, 0.0, 0.0, 0.0);
    for &idx in touched {
        let idx = idx as usize;
        let (i, j) = (idx / stride, idx % stride);
        let p = cmat[idx] as f64 / t;
        asm += p * p;
        sij += (i * j) as f64 * p;
        let diff = i.abs_diff(j);
        idm += p / ((diff * diff) as f64 + 1.0);
        entropy -= p * p.log2();
        px[j] += p;
        py[i] += p;
        plus[i + j] += p;
        minus[diff] += p;
    }
    let ent = |v: &[f64]| -> f64 {
        -v.iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| p * p.log2())
            .sum::<f64>()
    };
    let dot_k = |v: &[f64], pow: i32| -> f64 {
        v.iter()
            .enumerate()
            .map(|(k, &p)| (k as f64).powi(pow) * p)
            .sum()
    };
    let (ux, uy) = (dot_k(&px, 1), dot_k(&py, 1));
    let vx = dot_k(&px, 2) - ux * ux;
    let vy = dot_k(&py, 2) - uy * uy;
    let (sx, sy) = (vx.max(0.0).sqrt(), vy.max(0.0).sqrt());
    let correlation = if sx == 0.0 || sy == 0.0 {
        1.0
    } else {
        (sij - ux * uy) / (sx * sy)
    };
    let contrast = dot_k(&minus, 2);
    let sum_average = dot_k(&plus, 1);
    let sum_variance = dot_k(&plus, 2) - sum_average * sum_average;
    let sum_entropy = ent(&plus);
    let mean_minus = minus.iter().sum::<f64>() / fm1 as f64;
    let difference_variance =
        minus.iter().map(|&p| (p - mean_minus).powi(2)).sum::<f64>() / fm1 as f64;
    let difference_entropy = ent(&minus);
    let (hx, hy) = (ent(&px), ent(&py));
    let mut hxy1 = 0.0;
    for &idx in touched {
        let idx = idx as usize;
        let (i, j) = (idx / stride, idx % stride);
        hxy1 -= cmat[idx] as f64 / t * (px[i] * py[j]).log2();
    }
    // −Σ px_i py_j log2(px_i py_j), which separates into HX·Σpy + HY·Σpx.
    let hxy2 = hx * py.iter().sum::<f64>() + hy * px.iter().sum::<f64>();
    let hmax = hx.max(hy);
    let info1 = if hmax == 0.0 {
        entropy - hxy1
    } else {
        (entropy - hxy1) / hmax
    };
    let info2 = (1.0 - (-2.0 * (hxy2 - entropy)).exp()).max(0.0).sqrt();
    [
        asm,
        contrast,
        correlation,
        vx,
        idm,
        sum_average,
        sum_variance,
        sum_entropy,
        entropy,
        difference_variance,
        difference_entropy,
        info1,
        info2,
    ]
}

/// Haralick features per object averaged over the four directions (the usual single value
/// per feature; CellProfiler itself stores the four directions as separate columns, see
/// [`haralick_features_directions`]). Objects without pixels, or too thin for `scale`, give 0.
pub fn haralick_features(
    labels: &Labels,
    image: &GrayImage,
    scale: u32,
    levels: u32,
) -> Vec<[f64; 13]> {
    haralick_features_directions(labels, image, scale, levels)
        .into_iter()
        .map(|dirs| {
            let mut mean = [0f64; 13];
            for d in &dirs {
                for (m, v) in mean.iter_mut().zip(d) {
                    *m += v / dirs.len() as f64;
                }
            }
            mean
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels_from(w: u32, h: u32, f: impl Fn(u32, u32) -> u32) -> Labels {
        let data: Vec<u32> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        let count = data.iter().copied().max().unwrap_or(0);
        Labels {
            width: w,
            height: h,
            data,
            count,
        }
    }

    fn image_from(w: u32, h: u32, bit_depth: u8, f: impl Fn(u32, u32) -> u16) -> GrayImage {
        GrayImage {
            width: w,
            height: h,
            bit_depth,
            data: (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| f(x, y))
                .collect(),
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn disk() -> Labels {
        labels_from(45, 45, |x, y| {
            let (dx, dy) = (x as i64 - 22, y as i64 - 22);
            u32::from(dx * dx + dy * dy <= 400)
        })
    }

    /// The synthetic shape of the scikit-image reference below: a tilted ellipse with a notch,
    /// and a second object pressed against it. Integer arithmetic, so Python and Rust agree.
    fn notched() -> Labels {
        let first = |x: u32, y: u32| {
            let (dx, dy) = (x as i64 - 30, y as i64 - 25);
            3 * dx * dx + 2 * dx * dy + 6 * dy * dy <= 900 && !(dx > 5 && dy.abs() <= 2)
        };
        labels_from(64, 50, |x, y| {
            if first(x, y) {
                1
            } else if (40..52).contains(&x) && (20..31).contains(&y) {
                2
            } else {
                0
            }
        })
    }

    #[test]
    fn disk_shape() {
        let s = &shape_features(&disk())[0];
        let r = 20.0;
        assert_eq!(s.area, 1257.0);
        assert!(close(s.area, PI * r * r, 0.01 * PI * r * r));
        // scikit-image 0.26 regionprops on this disk: perimeter 131.882250993909,
        // convex area 1305, eccentricity 0.
        assert!(
            close(s.perimeter, 131.882250993909, 1e-9),
            "{}",
            s.perimeter
        );
        assert!(close(s.convex_area, 1305.0, 0.0), "{}", s.convex_area);
        assert!(close(s.solidity, 1257.0 / 1305.0, 1e-12));
        // The estimator reads ~5% long on a disk this size (so form factor ≈ 0.91, which is
        // what CellProfiler reports for round nuclei of this size).
        assert!(close(s.perimeter, 2.0 * PI * r, 0.06 * 2.0 * PI * r));
        assert!((0.88..0.95).contains(&s.form_factor), "{}", s.form_factor);
        assert!(close(s.compactness * s.form_factor, 1.0, 1e-12));
        assert!(
            close(s.compactness_moment, 1.0, 0.01),
            "{}",
            s.compactness_moment
        );
        assert!(s.eccentricity < 0.1, "{}", s.eccentricity);
        // On pixel corners the digital disk spans 2r + 1 = 41 pixels, so both diameters sit
        // near 41 (2r itself is 2.5% / 3.5% short of them); the widest direction is a
        // diagonal of the stair-stepped outline.
        for f in [s.max_feret_diameter, s.min_feret_diameter] {
            assert!(close(f, 2.0 * r + 1.0, 0.01 * (2.0 * r + 1.0)), "{f}");
        }
        // Widths of the corner point set over 200001 angles, computed with NumPy: min
        // 40.60658 (at 80.5°), max 41.40048.
        assert!(
            close(s.min_feret_diameter, 40.60658, 1e-4),
            "{}",
            s.min_feret_diameter
        );
        assert!(
            close(s.max_feret_diameter, 41.40048, 1e-4),
            "{}",
            s.max_feret_diameter
        );
        assert!(close(s.center_x, 22.0, 1e-12) && close(s.center_y, 22.0, 1e-12));
        assert_eq!(s.bbox, [2, 2, 43, 43]);
        assert!(!s.touches_border);
        assert!(close(
            s.equivalent_diameter,
            (4.0 * 1257.0 / PI).sqrt(),
            1e-12
        ));
        // Zernike: the disk fills its enclosing circle (r = 20) and is symmetric.
        assert!(
            close(s.zernike[0], 1257.0 / (PI * 400.0), 1e-9),
            "{:?}",
            s.zernike
        );
        assert!(
            s.zernike[1] < 1e-9 && s.zernike[3] < 1e-9,
            "{:?}",
            s.zernike
        );
    }

    #[test]
    fn rectangle_shape() {
        let labels = labels_from(50, 20, |x, y| {
            u32::from((4..44).contains(&x) && (3..13).contains(&y))
        });
        let s = &shape_features(&labels)[0];
        assert_eq!(s.area, 400.0);
        // scikit-image 0.26: perimeter 96, eccentricity 0.968548555283, orientation 90°.
        assert!(close(s.perimeter, 96.0, 1e-9), "{}", s.perimeter);
        assert!(
            close(s.eccentricity, 0.968548555283, 1e-9),
            "{}",
            s.eccentricity
        );
        let ideal = (1.0f64 - (10.0f64 / 40.0).powi(2)).sqrt();
        assert!(close(s.eccentricity, ideal, 0.02 * ideal));
        assert!(close(s.orientation, 90.0, 1e-9), "{}", s.orientation);
        assert_eq!(s.solidity, 1.0);
        assert_eq!(s.extent, 1.0);
        assert!(
            close(s.min_feret_diameter, 10.0, 1e-9),
            "{}",
            s.min_feret_diameter
        );
        assert!(close(s.max_feret_diameter, (1700f64).sqrt(), 1e-9));
        assert_eq!(s.bbox, [4, 3, 44, 13]);
        // Second moments of a 40×10 block: variances (40²−1)/12 and (10²−1)/12.
        assert!(close(
            s.major_axis_length,
            4.0 * (1599.0f64 / 12.0).sqrt(),
            1e-9
        ));
        assert!(close(
            s.minor_axis_length,
            4.0 * (99.0f64 / 12.0).sqrt(),
            1e-9
        ));
        // Vertical: orientation 0.
        let tall = labels_from(20, 50, |x, y| {
            u32::from((3..13).contains(&x) && (4..44).contains(&y))
        });
        assert!(close(shape_features(&tall)[0].orientation, 0.0, 1e-9));
    }

    /// Reference values from scikit-image 0.26 `regionprops` on the same label image
    /// (computed once in target/bench-venv, see `notched`).
    #[test]
    fn matches_scikit_image_on_a_notched_ellipse() {
        let s = shape_features(&notched());
        let expected = [
            // area, perimeter, eccentricity, orientation°, major, minor, convex, extent,
            // centroid (y, x), bbox (y0, x0, y1, x1)
            (
                631.0,
                118.426406871193,
                0.719882015094,
                -67.703179188176,
                35.426023602993,
                24.589077282754,
                703.0,
                0.721142857143,
                (25.004754358161648, 28.960380348652933),
                [13, 13, 38, 48],
            ),
            (
                91.0,
                42.035533905933,
                0.615907746059,
                -88.399114215759,
                13.417008001464,
                10.570164217909,
                110.0,
                0.689393939394,
                (25.318681318681318, 46.61538461538461),
                [20, 40, 31, 52],
            ),
        ];
        for (s, e) in s.iter().zip(expected) {
            assert_eq!(s.area, e.0);
            assert!(
                close(s.perimeter, e.1, 1e-9),
                "perimeter {} vs {}",
                s.perimeter,
                e.1
            );
            assert!(
                close(s.eccentricity, e.2, 1e-9),
                "ecc {} vs {}",
                s.eccentricity,
                e.2
            );
            assert!(
                close(s.orientation, e.3, 1e-9),
                "orientation {} vs {}",
                s.orientation,
                e.3
            );
            assert!(close(s.major_axis_length, e.4, 1e-9));
            assert!(close(s.minor_axis_length, e.5, 1e-9));
            assert_eq!(s.convex_area, e.6, "convex area");
            assert!(close(s.solidity, e.0 / e.6, 1e-12));
            assert!(close(s.extent, e.7, 1e-9));
            assert!(close(s.center_y, e.8 .0, 1e-9) && close(s.center_x, e.8 .1, 1e-9));
            assert_eq!(s.bbox, [e.9[1], e.9[0], e.9[3], e.9[2]]);
        }
    }

    /// mahotas 1.4.19 `haralick(intensity_image, distance, ignore_zeros=True)` after CellProfiler's
    /// preparation (img_as_ubyte, rescale_intensity, regionprops), run once on `notched()`
    /// with `textured()`: (levels, scale, object, 4 directions × 13 features).
    #[allow(clippy::type_complexity)]
    const MAHOTAS: &[(u32, u32, usize, [[f64; 13]; 4])] = &[
        (
            256,
            3,
            1,
            [
                [
                    0.0009123017372831654,
                    10981.023465703971,
                    0.00253159270470916,
                    5504.446750087967,
                    0.027800603294931454,
                    249.9981949458484,
                    11036.7635346479,
                    8.156052584707783,
                    10.102911841139445,
                    9.791346328016046e-05,
                    5.286878791921304,
                    -0.6478089716945976,
                    0.9999687458033232,
                ],
                [
                    0.0011611920332936978,
                    10987.868534482757,
                    0.006601530151829146,
                    5530.443657801348,
                    0.0028420698150881003,
                    249.68318965517244,
                    11133.90609672264,
                    8.009702453086005,
                    9.780394788231021,
                    8.122901145399818e-05,
                    5.557972552694187,
                    -0.6858449379238244,
                    0.9999815736096787,
                ],
                [
                    0.0010754004693398632,
                    11068.305050505049,
                    -0.01168989327529616,
                    5470.206396286094,
                    0.006061539040039683,
                    249.06868686868683,
                    10812.520534639341,
                    7.978580038287054,
                    9.896699765454539,
                    7.537290668283207e-05,
                    5.651370491584205,
                    -0.6694452075035251,
                    0.9999763426257874,
                ],
                [
                    0.0011031990647252634,
                    10890.284536082474,
                    0.007804245382432178,
                    5487.971746200443,
                    0.015737105348944742,
                    248.91134020618557,
                    11061.602448719314,
                    8.07136294113939,
                    9.851737844290984,
                    5.885575552247183e-05,
                    5.895634729142622,
                    -0.6778813334250701,
                    0.9999795099734446,
                ],
            ],
        ),
        (
            256,
            3,
            2,
            [
                [
                    0.008620689655172414,
                    10338.327586206899,
                    0.03069607155964967,
                    5332.861697384065,
                    0.03544463181821851,
                    258.81034482758616,
                    10993.119203329392,
                    5.754532719265503,
                    6.857980995127572,
                    0.00034262256396094245,
                    3.672323133567084,
                    -0.8520492825157211,
                    0.9999810480878942,
                ],
                [
                    0.0125,
                    12249.4,
                    -0.09865028685706498,
                    5574.749375000003,
                    0.005590444325088673,
                    253.55,
                    10049.597499999989,
                    5.221928094887362,
                    6.3219280948873635,
                    0.00024532674065348123,
                    4.106198332810095,
                    -0.9152595315819358,
                    0.9999883651866411,
                ],
                [
                    0.00909090909090909,
                    13812.927272727273,
                    -0.16012224732473143,
                    5953.220578512399,
                    0.00048634181846677325,
                    255.83636363636361,
                    9999.955041322319,
                    5.599541531706478,
                    6.78135971352466,
                    0.00023829055922574655,
                    4.142939096461847,
                    -0.86255335751658,
                    0.9999829281134438,
                ],
                [
                    0.0125,
                    10932.900000000001,
                    0.05767758884613854,
                    5801.0400000000045,
                    0.006207735485235373,
                    257.8,
                    12271.259999999995,
                    5.153055907333275,
                    6.3219280948873635,
                    0.0002600905201810403,
                    4.025070520364182,
                    -0.9070319337766986,
                    0.9999861332814324,
                ],
            ],
        ),
        (
            8,
            1,
            1,
            [
                [
                    0.028817725124819393,
                    5.219954648526078,
                    0.1449716501531186,
                    3.052503843563123,
                    0.4265988030693913,
                    6.970521541950113,
                    6.990060725726423,
                    3.3584103666903857,
                    5.211696803283464,
                    0.010669985114227098,
                    2.415174998667542,
                    -0.019229116454010632,
                    0.31022248150644977,
                ],
                [
                    0.029031988091893283,
                    5.689486552567237,
                    0.06010392013861226,
                    3.026657241408163,
                    0.38983585362127005,
                    6.819070904645477,
                    6.4171424130654415,
                    3.324302844949233,
                    5.186803031966326,
                    0.008824130504958724,
                    2.452986178823695,
                    -0.01709826679516859,
                    0.29251678847085705,
                ],
                [
                    0.028193418476326094,
                    6.290094339622641,
                    -0.037092675974572234,
                    3.03256135412958,
                    0.3572622300008538,
                    6.893867924528301,
                    5.840151076895701,
                    3.261784766794439,
                    5.217996382046846,
                    0.00821438901744393,
                    2.4691837055366963,
                    -0.014632196019025628,
                    0.2720845626568147,
                ],
                [
                    0.02828721277599335,
                    6.571090047393365,
                    -0.057034114061001895,
                    3.108267727589226,
                    0.34716468629209085,
                    6.912322274881516,
                    5.8619808629635415,
                    3.273788218813526,
                    5.224337309977137,
                    0.008018336852271962,
                    2.49186648694586,
                    -0.010363297134925925,
                    0.23014976849366983,
                ],
            ],
        ),
        (
            8,
            1,
            2,
            [
                [
                    0.05673656995116347,
                    10.76271186440678,
                    -0.5894868585732167,
                    3.3855932203389845,
                    0.11990950226244344,
                    7.0,
                    2.779661016949163,
                    2.724634254150649,
                    4.298301825758783,
                    0.02058990789651109,
                    1.9782732906888492,
                    -0.30821869252687484,
                    0.8894709391162312,
                ],
                [
                    0.04020000000000001,
                    3.8600000000000003,
                    0.3410945341572504,
                    2.9291,
                    0.4830678733031674,
                    7.06,
                    7.856400000000001,
                    3.2672810628919864,
                    4.818242691024847,
                    0.019134693877551023,
                    2.1603110728540384,
                    -0.1244319928211882,
                    0.6872762162283849,
                ],
                [
                    0.03403686087990488,
                    6.086206896551725,
                    0.0111806041872938,
                    3.077511890606422,
                    0.35249648931190514,
                    6.982758620689655,
                    6.223840665873965,
                    3.2300561602153035,
                    4.980163702054555,
                    0.010082748914072173,
                    2.3855065034859675,
                    -0.054756288404907066,
                    0.49446622638934573,
                ],
                [
                    0.03328402366863906,
                    6.865384615384616,
                    -0.0938337801608577,
                    3.138221153846155,
                    0.3247389488339715,
                    6.75,
                    5.6875,
                    3.154712863430609,
                    4.989022055454727,
                    0.007381354908827437,
                    2.4644617216115825,
                    -0.05691682919032685,
                    0.5034265919177311,
                ],
            ],
        ),
    ];

    fn textured(w: u32, h: u32) -> GrayImage {
        image_from(w, h, 8, |x, y| {
            ((x * 37 + y * 91 + x * y * 13) % 256) as u16
        })
    }

    #[test]
    fn haralick_matches_mahotas_as_cellprofiler_calls_it() {
        let labels = notched();
        let image = textured(labels.width, labels.height);
        for (levels, scale, obj, expected) in MAHOTAS {
            let got = &haralick_features_directions(&labels, &image, *scale, *levels)[obj - 1];
            for d in 0..4 {
                for k in 0..13 {
                    let (g, e) = (got[d][k], expected[d][k]);
                    assert!(
                        close(g, e, 1e-9 * e.abs().max(1.0)),
                        "levels {levels} scale {scale} object {obj} direction {d} {}: {g} vs {e}",
                        HARALICK_NAMES[k]
                    );
                }
            }
        }
    }

    /// centrosome 1.3.4 `zernike.zernike(get_zernike_indexes(5), labels, [1, 2])` (what
    /// CellProfiler calls) on `notched()`, run once. Object 1 agrees exactly. For object 2
    /// centrosome loses the two pixels that define its enclosing circle, (51, 20) and
    /// (51, 30): their scaled r² rounds to 1.0000000000000009 > 1. They are kept here (they
    /// are on the circle), so only Zernike_0_0 (= pixels inside / πr²) is compared, scaled.
    #[test]
    fn zernike_matches_centrosome() {
        let expected = [
            [
                0.6180108867137598,
                0.03563965296843525,
                0.17187377740800097,
                0.07878625230167058,
                0.01742433250146891,
                0.017091117929340875,
                0.020106238539851055,
                0.011211760192165836,
                0.02575928680654662,
            ],
            [
                0.6204306179752477,
                0.03045974420705582,
                0.13812175366136006,
                0.059505990447600195,
                0.049562559977128634,
                0.08822962462019834,
                0.0021619436784418534,
                0.008678986846382923,
                0.009359345108767259,
            ],
        ];
        let s = shape_features(&notched());
        for (k, (g, e)) in s[0].zernike.iter().zip(expected[0]).enumerate() {
            assert!(close(*g, e, 1e-12), "{}: {g} vs {e}", ZERNIKE_NAMES[k]);
        }
        let z00 = expected[1][0] * 91.0 / 89.0;
        assert!(
            close(s[1].zernike[0], z00, 1e-12),
            "{} vs {z00}",
            s[1].zernike[0]
        );
        for (g, e) in s[1].zernike.iter().zip(expected[1]) {
            assert!(close(*g, e, 0.05), "{g} vs {e}");
        }
    }

    /// Feret diameters of `notched()` against a brute-force check (NumPy: widths of all pixel
    /// corners over 200001 angles). centrosome's, on pixel centres, for comparison:
    /// (23.4009, 36.0555) and (10, 13.0384), about one pixel less.
    #[test]
    fn feret_on_a_notched_ellipse() {
        let s = shape_features(&notched());
        let expected = [
            (24.665787721998818, 37.33630940411182),
            (11.0, 14.422205101559253),
        ];
        for (o, (min, max)) in s.iter().zip(expected) {
            assert!(
                close(o.min_feret_diameter, min, 1e-4),
                "{} vs {min}",
                o.min_feret_diameter
            );
            assert!(
                close(o.max_feret_diameter, max, 1e-6),
                "{} vs {max}",
                o.max_feret_diameter
            );
        }
    }

    #[test]
    fn zernike_invariant_under_rotation_and_mirroring() {
        let l = notched();
        let (w, h) = (l.width, l.height);
        let at = |x: u32, y: u32| l.data[(y * w + x) as usize];
        let transposed = labels_from(h, w, |x, y| at(y, x));
        // 90° rotation: new (x, y) shows old (y, h−1−x).
        let rotated = labels_from(h, w, |x, y| at(y, h - 1 - x));
        let base = shape_features(&l);
        for other in [shape_features(&transposed), shape_features(&rotated)] {
            for (a, b) in base.iter().zip(&other) {
                assert_eq!(a.zernike.len(), ZERNIKE_NAMES.len());
                for (za, zb) in a.zernike.iter().zip(&b.zernike) {
                    assert!(close(*za, *zb, 1e-6), "{:?} vs {:?}", a.zernike, b.zernike);
                }
                assert!(close(a.perimeter, b.perimeter, 1e-9));
                assert!(close(a.solidity, b.solidity, 1e-12));
                assert!(close(a.max_feret_diameter, b.max_feret_diameter, 1e-9));
                assert!(close(a.min_feret_diameter, b.min_feret_diameter, 1e-9));
            }
        }
        assert!(base[0].zernike.iter().any(|&z| z > 0.01));
    }

    #[test]
    fn zernike_names_follow_indices() {
        assert_eq!(ZERNIKE_NAMES.len(), ZERNIKE_NM.len());
        for (name, (n, m)) in ZERNIKE_NAMES.iter().zip(ZERNIKE_NM) {
            assert_eq!(*name, format!("Zernike_{n}_{m}"));
        }
        // R_40 = 6r⁴ − 6r² + 1 and R_42 = 4r⁴ − 3r² (in r², highest power first).
        let lut = zernike_lut();
        assert_eq!(lut[6], vec![6.0, -6.0, 1.0]);
        assert_eq!(lut[7], vec![4.0, -3.0]);
    }

    #[test]
    fn absent_objects_and_single_pixels() {
        let labels = Labels {
            width: 4,
            height: 3,
            data: vec![0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0],
            count: 3,
        };
        let s = shape_features(&labels);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].area, 0.0);
        assert_eq!(s[0].zernike, vec![0.0; 9]);
        let p = &s[2];
        assert_eq!(p.area, 1.0);
        assert_eq!(p.perimeter, 0.0); // scikit-image's estimator gives 0 for one pixel
        assert_eq!(p.form_factor, 0.0);
        assert_eq!((p.min_feret_diameter, p.max_feret_diameter), (1.0, SQRT_2));
        assert_eq!(p.solidity, 1.0);
        assert!(p.zernike.iter().all(|z| z.is_finite()));
        let i = intensity_features(&labels, &image_from(4, 3, 8, |_, _| 7));
        assert_eq!(i[0], IntensityStats::default());
        assert!(close(i[2].median, 7.0 / 255.0, 1e-15));
    }

    #[test]
    fn intensity_on_a_known_pattern() {
        // A 4×3 object at x 1..5, y 1..4 in a 7×5 image; values 10·(col) + row.
        let labels = labels_from(7, 5, |x, y| {
            u32::from((1..5).contains(&x) && (1..4).contains(&y))
        });
        let image = image_from(7, 5, 8, |x, y| (10 * x + y) as u16);
        let s = &intensity_features(&labels, &image)[0];
        let vals: Vec<f64> = (1..4)
            .flat_map(|y| (1..5).map(move |x| (10 * x + y) as f64))
            .collect();
        let n = vals.len() as f64;
        let sum: f64 = vals.iter().sum();
        let mean = sum / n;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let k = 1.0 / 255.0;
        assert!(close(s.integrated, sum * k, 1e-12));
        assert!(close(s.mean, mean * k, 1e-12));
        assert!(close(s.std, std * k, 1e-12));
        assert_eq!((s.min, s.max), (11.0 * k, 43.0 * k));
        // Every pixel but the centre row's inner two (x 2..4, y 2) is on the edge.
        let edge: Vec<f64> = vals
            .iter()
            .copied()
            .filter(|&v| v != 22.0 && v != 32.0)
            .collect();
        let edge_mean = edge.iter().sum::<f64>() / edge.len() as f64;
        assert!(
            close(s.mean_edge, edge_mean * k, 1e-12),
            "{} vs {}",
            s.mean_edge,
            edge_mean * k
        );
        assert!(close(
            s.integrated_edge,
            edge.iter().sum::<f64>() * k,
            1e-12
        ));
        // Sorted: 11 12 13 21 22 23 31 32 33 41 42 43; n = 12 → q = 6 → v[6] = 31 exactly
        // (CellProfiler's rule; NumPy would say 27). Quartiles: q = 3 → 21, q = 9 → 41.
        assert!(close(s.median, 31.0 * k, 1e-15));
        assert!(close(s.lower_quartile, 21.0 * k, 1e-15));
        assert!(close(s.upper_quartile, 41.0 * k, 1e-15));
        // Intensity centre: Σx·v / Σv.
        let cmx = (1..4)
            .flat_map(|y| (1..5).map(move |x| (x as f64) * (10 * x + y) as f64))
            .sum::<f64>()
            / sum;
        assert!(close(s.center_mass_x, cmx, 1e-12));
        assert!(close(
            s.mass_displacement,
            ((2.5 - cmx).powi(2) + (2.0 - s.center_mass_y).powi(2)).sqrt(),
            1e-12
        ));
        // Odd count interpolates: values 1, 2, 3 → q = 1.5 → 2.5.
        assert_eq!(cp_quantile(&[1u16, 2, 3], 0.5), 2.5);
    }

    #[test]
    fn intensity_scales_sixteen_bit_and_edges_between_objects() {
        // Two objects side by side: their shared column is edge for both.
        let labels = labels_from(6, 3, |x, _| if x < 3 { 1 } else { 2 });
        let image = image_from(6, 3, 16, |x, _| if x < 3 { 65535 } else { 0 });
        let s = intensity_features(&labels, &image);
        assert_eq!((s[0].mean, s[0].std, s[0].max), (1.0, 0.0, 1.0));
        assert_eq!(s[0].integrated_edge, 8.0); // all but the centre (1, 1): image edge or beside object 2
        assert_eq!(s[1].integrated, 0.0);
        assert_eq!((s[1].center_mass_x, s[1].mass_displacement), (4.0, 0.0));
    }

    #[test]
    fn cytoplasm_is_cell_minus_nucleus() {
        let cells = labels_from(5, 1, |x, _| if x < 3 { 1 } else { 2 });
        let nuclei = labels_from(5, 1, |x, _| u32::from(x == 1 || x >= 3));
        let cyto = subtract_labels(&cells, &nuclei);
        assert_eq!(cyto.data, vec![1, 0, 1, 0, 0]);
        assert_eq!(cyto.count, 2);
        let s = shape_features(&cyto);
        assert_eq!((s[0].area, s[1].area), (2.0, 0.0));
    }

    #[test]
    fn haralick_constant_object() {
        let labels = labels_from(12, 12, |x, y| {
            u32::from((1..11).contains(&x) && (1..11).contains(&y))
        });
        let image = image_from(12, 12, 8, |_, _| 200);
        let f = &haralick_features(&labels, &image, 1, 256)[0];
        assert!(close(f[0], 1.0, 1e-12), "ASM {}", f[0]);
        assert_eq!(f[1], 0.0, "contrast");
        assert_eq!(f[2], 1.0, "correlation (mahotas: 1 for zero variance)");
        assert_eq!(f[3], 0.0, "variance");
        assert!(close(f[4], 1.0, 1e-12), "IDM");
        assert!(close(f[5], 400.0, 1e-9), "sum average: 200 + 200");
        assert!(f[8].abs() < 1e-12, "entropy {}", f[8]);
        assert!(f[7].abs() < 1e-12 && f[10].abs() < 1e-12);
    }

    #[test]
    fn haralick_checkerboard() {
        // Levels 100 and 200 alternating (256 levels keep the 8-bit values).
        let labels = labels_from(12, 12, |x, y| {
            u32::from((1..11).contains(&x) && (1..11).contains(&y))
        });
        let image = image_from(12, 12, 8, |x, y| if (x + y) % 2 == 0 { 100 } else { 200 });
        let dirs = &haralick_features_directions(&labels, &image, 1, 256)[0];
        let fm1: f64 = 201.0;
        for (d, f) in dirs.iter().enumerate() {
            let straight = d % 2 == 0; // right, down: always the other colour
            if straight {
                assert!(close(f[1], 10000.0, 1e-9), "contrast {}", f[1]);
                assert!(close(f[0], 0.5, 1e-12));
                assert!(close(f[2], -1.0, 1e-12), "correlation {}", f[2]);
                assert!(close(f[4], 0.5 / 10001.0 * 2.0, 1e-15));
                assert!(close(f[5], 300.0, 1e-9));
                assert!(close(f[6], 0.0, 1e-6));
                assert!(close(f[10], 0.0, 1e-12));
                // P(|i−j| = 100) = 1 over 201 entries.
                let mean = 1.0 / fm1;
                let var = ((1.0 - mean).powi(2) + 200.0 * mean * mean) / fm1;
                assert!(close(f[9], var, 1e-15));
                assert!(close(f[11], -1.0, 1e-12), "InfoMeas1 {}", f[11]);
                assert!(close(f[12], (1.0 - (-2.0f64).exp()).sqrt(), 1e-12));
            } else {
                assert_eq!(f[1], 0.0, "diagonal pairs share a colour");
                assert!(close(f[2], 1.0, 1e-12));
            }
        }
        // Straight pairs are exactly half each way; diagonal ones are not (41 vs 40).
        for f in [&dirs[0], &dirs[2]] {
            assert!(close(f[3], 2500.0, 1e-9), "variance {}", f[3]);
            assert!(close(f[8], 1.0, 1e-12), "entropy {}", f[8]);
        }
        let mean = &haralick_features(&labels, &image, 1, 256)[0];
        assert!(close(mean[1], 5000.0, 1e-9));
    }

    #[test]
    fn haralick_keeps_objects_apart_and_drops_thin_ones() {
        // Two touching constant objects of different grey: no pair crosses between them.
        let labels = labels_from(10, 6, |x, _| if x < 5 { 1 } else { 2 });
        let image = image_from(10, 6, 8, |x, _| if x < 5 { 50 } else { 250 });
        let f = haralick_features(&labels, &image, 2, 8);
        for o in &f {
            assert!(close(o[0], 1.0, 1e-12) && o[1] == 0.0);
        }
        // 8 levels: 50 → 1, 250 → 6.
        assert!(close(f[0][5], 2.0, 1e-12) && close(f[1][5], 12.0, 1e-12));
        // A one-pixel-wide line has no vertical pairs: CellProfiler stores zeros.
        let line = labels_from(10, 3, |x, y| u32::from(y == 1 && x > 0));
        let g = haralick_features(&line, &image_from(10, 3, 8, |_, _| 90), 1, 256);
        assert_eq!(g[0], [0.0; 13]);
        // Level-0 pixels are dropped like background (mahotas ignore_zeros).
        let dark = haralick_features(&labels, &image_from(10, 6, 8, |_, _| 20), 1, 8);
        assert_eq!(dark[0], [0.0; 13]);
    }

    #[test]
    fn grey_levels_match_cellprofiler_rounding() {
        // 16-bit: img_as_ubyte rounds v/257; checked against scikit-image for all v.
        let img16 = image_from(1, 1, 16, |_, _| 0);
        let lut = grey_levels(&img16, 256);
        assert_eq!(
            (lut[128], lut[129], lut[385], lut[386], lut[65535]),
            (0, 1, 1, 2, 255)
        );
        let img8 = image_from(1, 1, 8, |_, _| 0);
        let lut = grey_levels(&img8, 8);
        assert_eq!((lut[36], lut[37], lut[255]), (0, 1, 7));
    }

    /// Timing on the 48 Coelho U2OS images (hand-made nucleus labels): `cargo test --release
    /// -p plateflow-imaging features::tests::coelho_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn coelho_timing() {
        use std::time::Instant;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/coelho-u2os");
        if !dir.is_dir() {
            println!("skipped: {} is absent", dir.display());
            return;
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.join("labels"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let (mut t_shape, mut t_int, mut t_har, mut objects) = (0f64, 0f64, 0f64, 0usize);
        for name in &names {
            let l = crate::read_image(&dir.join("labels").join(name)).unwrap();
            let img = crate::read_image(&dir.join("images").join(name)).unwrap();
            let data: Vec<u32> = l.data.iter().map(|&v| v as u32).collect();
            let count = data.iter().copied().max().unwrap_or(0);
            let labels = Labels {
                width: l.width,
                height: l.height,
                data,
                count,
            };
            let t = Instant::now();
            let s = shape_features(&labels);
            t_shape += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let i = intensity_features(&labels, &img);
            t_int += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let h = haralick_features(&labels, &img, 3, 256);
            t_har += t.elapsed().as_secs_f64();
            objects += s.iter().filter(|s| s.area > 0.0).count();
            assert_eq!(
                (s.len(), i.len(), h.len()),
                (count as usize, count as usize, count as usize)
            );
            assert!(s
                .iter()
                .all(|s| s.area == 0.0 || (s.solidity > 0.0 && s.solidity <= 1.0)));
        }
        let n = names.len() as f64;
        println!(
            "{} images, {objects} objects: shape {:.1} ms, intensity {:.1} ms, haralick {:.1} ms per image",
            names.len(),
            1e3 * t_shape / n,
            1e3 * t_int / n,
            1e3 * t_har / n
        );
    }
}
