//! Tests of the feature families against CellProfiler's definitions.

use super::intensity::cp_quantile;
use super::shape::zernike_lut;
use super::texture::grey_levels;
use super::*;
use crate::segment::Labels;
use crate::GrayImage;
use std::f64::consts::{PI, SQRT_2};

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
        let got =
            &haralick_features_directions(&labels, &image, *scale, *levels, image.max_value())
                [obj - 1];
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
fn corrected_eight_bit_values_above_the_top_keep_their_order() {
    // Illumination correction leaves an 8-bit image with values past 255 (a bright nucleus in a
    // dim corner): intensities read above 1 and stay apart; texture puts them at the top level.
    let labels = labels_from(8, 4, |x, _| if x < 4 { 1 } else { 2 });
    let image = image_from(8, 4, 8, |x, y| match (x < 4, (x + y) % 2) {
        (true, _) => 300,
        (false, 0) => 510,
        (false, _) => 255,
    });
    let s = intensity_features(&labels, &image);
    assert!(close(s[0].mean, 300.0 / 255.0, 1e-12), "{}", s[0].mean);
    assert!(close(s[1].max, 2.0, 1e-12), "{}", s[1].max);
    let t = haralick_features(&labels, &image, 1, 256);
    assert!(
        close(t[0][5], 510.0, 1e-9),
        "sum average at the top level: {}",
        t[0][5]
    );
    assert_eq!(
        t[1][1], 0.0,
        "255 and 510 both read as the top level: no contrast"
    );
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
    let dirs = &haralick_features_directions(&labels, &image, 1, 256, 255)[0];
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
    let lut = grey_levels(u16::MAX, 256);
    assert_eq!(
        (lut[128], lut[129], lut[385], lut[386], lut[65535]),
        (0, 1, 1, 2, 255)
    );
    let lut = grey_levels(255, 8);
    assert_eq!((lut[36], lut[37], lut[255]), (0, 1, 7));
}

#[test]
fn camera_range_rounds_up_to_a_camera_depth() {
    assert_eq!(camera_range(0), 255);
    assert_eq!(camera_range(255), 255);
    assert_eq!(camera_range(256), 1023);
    assert_eq!(camera_range(3871), 4095);
    assert_eq!(camera_range(4095), 4095);
    assert_eq!(camera_range(4096), 16383);
    assert_eq!(camera_range(16384), 65535);
    assert_eq!(camera_range(65535), 65535);
}

/// 12-bit data in a 16-bit file: over the bit depth's 32 levels a nucleus of 500–2,000
/// counts is one or two grey levels and its texture vanishes; over the camera's 0..4095 the
/// same nucleus has texture.
#[test]
fn texture_of_12_bit_data_needs_the_camera_range() {
    let labels = labels_from(20, 20, |x, y| {
        u32::from((2..18).contains(&x) && (2..18).contains(&y))
    });
    let image = image_from(20, 20, 16, |x, y| {
        500 + ((x * 37 + y * 91 + x * y * 13) % 1500) as u16
    });
    let file_depth = &haralick_features(&labels, &image, 1, 32)[0];
    let camera = &haralick_features_spanning(&labels, &image, 1, 32, camera_range(2000))[0];
    // Contrast and Entropy: none or hardly any over the file's depth, plenty over the camera's.
    assert!(file_depth[1] < 0.5 && file_depth[8] < 1.0, "{file_depth:?}");
    assert!(camera[1] > 10.0 && camera[8] > 4.0, "{camera:?}");
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
