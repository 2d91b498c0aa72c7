//! The first screen of a report, as a reader sees it: a report built from hand-made upstream
//! files (every new section) is rendered by headless Chromium at 1280 × 900 into a PNG, and
//! the pixels are checked, not only the HTML: the page is not blank, the summary block and
//! its per-well heat map lie within the first 900 px, that map shows the viridis wells, and
//! nothing is drawn in the page margins (a title running out of its box would be). The page's
//! own check script adds what pixels cannot say: no chart text sticks out of its chart.
//!
//! Skipped with a message where no Chromium is installed, except under `CI=true`, where it
//! fails. Each browser run is killed after 60 s.

use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plateflow_report::*;

include!("common/glance.rs");

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;

fn find_browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs headless Chromium on `page` with `extra` arguments at the test's window size, killing
/// its whole process group when it ends or after 60 s; returns its stdout.
fn chromium(browser: &Path, page: &Path, scratch: &Path, extra: &[String]) -> String {
    let out = scratch.join("stdout.txt");
    let err = scratch.join("stderr.txt");
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--window-size={WIDTH},{HEIGHT}"))
        .arg(format!(
            "--user-data-dir={}",
            scratch.join("profile").display()
        ))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .process_group(0)
        .spawn()
        .expect("start Chromium");
    let kill_group = |pgid: u32| {
        // SAFETY: signals only the process group made for the browser (process_group(0)).
        unsafe {
            libc::kill(-(pgid as i32), libc::SIGKILL);
        }
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            kill_group(child.id());
            let _ = child.wait();
            panic!(
                "Chromium did not finish in 60 s; stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    kill_group(child.id());
    assert!(
        status.success(),
        "Chromium failed ({status}); stderr:\n{}",
        fs::read_to_string(&err).unwrap_or_default()
    );
    fs::read_to_string(&out).unwrap_or_default()
}

/// The value of `name="…"` on `<body>`.
fn body_attr(dom: &str, name: &str) -> String {
    let start = dom.find("<body").expect("a <body>");
    let body = &dom[start..start + dom[start..].find('>').unwrap()];
    let key = format!("{name}=\"");
    let from = body
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} on <body>: the page's check did not run"))
        + key.len();
    body[from..from + body[from..].find('"').unwrap()].to_string()
}

/// "x,y,w,h" as numbers.
fn rect(s: &str) -> [i64; 4] {
    let v: Vec<i64> = s.split(',').map(|x| x.trim().parse().unwrap()).collect();
    assert_eq!(v.len(), 4, "a rectangle: {s:?}");
    [v[0], v[1], v[2], v[3]]
}

struct Shot {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

impl Shot {
    fn decode(bytes: &[u8]) -> Shot {
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
        let info = reader.next_frame(&mut buf).expect("a frame");
        let channels = info.color_type.samples();
        let rgb = buf[..info.buffer_size()]
            .chunks(channels)
            .map(|p| match channels {
                1 | 2 => [p[0], p[0], p[0]],
                _ => [p[0], p[1], p[2]],
            })
            .collect();
        Shot {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    fn at(&self, x: u32, y: u32) -> [u8; 3] {
        self.rgb[(y * self.width + x) as usize]
    }

    /// The pixels of a rectangle clipped to the image.
    fn region(&self, [x, y, w, h]: [i64; 4]) -> Vec<[u8; 3]> {
        let (x0, y0) = (x.max(0) as u32, y.max(0) as u32);
        let x1 = ((x + w).max(0) as u32).min(self.width);
        let y1 = ((y + h).max(0) as u32).min(self.height);
        (y0..y1)
            .flat_map(|yy| (x0..x1).map(move |xx| (xx, yy)))
            .map(|(xx, yy)| self.at(xx, yy))
            .collect()
    }
}

fn near_white(p: [u8; 3]) -> bool {
    p.iter().all(|&c| c >= 235)
}

/// Distance to the nearest of 64 colours along viridis (the report's well-map scale).
fn viridis_distance(p: [u8; 3]) -> f64 {
    const STOPS: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 44.0, 122.0),
        (59.0, 81.0, 139.0),
        (44.0, 113.0, 142.0),
        (33.0, 144.0, 141.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    (0..64)
        .map(|i| {
            let x = i as f64 / 63.0 * 8.0;
            let k = (x.floor() as usize).min(7);
            let f = x - k as f64;
            let (a, b) = (STOPS[k], STOPS[k + 1]);
            let c = (
                a.0 + (b.0 - a.0) * f,
                a.1 + (b.1 - a.1) * f,
                a.2 + (b.2 - a.2) * f,
            );
            ((p[0] as f64 - c.0).powi(2)
                + (p[1] as f64 - c.1).powi(2)
                + (p[2] as f64 - c.2).powi(2))
            .sqrt()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn the_first_screen_shows_the_summary_and_the_well_map() {
    let Some(browser) = find_browser() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no Chromium on PATH: the screenshot test cannot run"
        );
        println!("skipped: no Chromium on PATH (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    fs::write(&page, render(&glance_fixture())).unwrap();
    let started = Instant::now();

    // What the page's script measured, at the same window size as the screenshot.
    let dom = chromium(&browser, &page, dir.path(), &["--dump-dom".to_string()]);
    assert_eq!(body_attr(&dom, "data-js-errors"), "0", "script errors");
    assert_eq!(
        body_attr(&dom, "data-figures-ok"),
        body_attr(&dom, "data-figures-total"),
        "figures that did not render"
    );
    assert_eq!(
        body_attr(&dom, "data-text-overflow"),
        "0",
        "chart text drawn outside its chart, e.g. {:?}",
        body_attr(&dom, "data-text-overflow-first")
    );
    let summary = rect(&body_attr(&dom, "data-summary-rect"));
    let map = rect(&body_attr(&dom, "data-summary-map-rect"));

    let shot_path = dir.path().join("first-screen.png");
    chromium(
        &browser,
        &page,
        dir.path(),
        &[format!("--screenshot={}", shot_path.display())],
    );
    let bytes = fs::read(&shot_path).expect("Chromium wrote no screenshot");
    if let Ok(keep) = std::env::var("PLATEFLOW_KEEP_SCREENSHOT") {
        fs::copy(&shot_path, &keep).unwrap();
        fs::copy(&page, format!("{keep}.html")).unwrap();
    }
    let shot = Shot::decode(&bytes);
    eprintln!(
        "Chromium took {:.1} s; summary at {summary:?}, its well map at {map:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((shot.width, shot.height), (WIDTH, HEIGHT));

    // Not blank: ink on a good share of the screen, in many colours.
    let inked = shot.rgb.iter().filter(|&&p| !near_white(p)).count();
    let share = inked as f64 / shot.rgb.len() as f64;
    assert!(
        share > 0.05,
        "only {:.1}% of the first screen is not white",
        100.0 * share
    );
    let mut colours: Vec<[u8; 3]> = shot.rgb.iter().map(|p| p.map(|c| c & 0xF0)).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() > 40,
        "{} colours: a blank or broken page",
        colours.len()
    );

    // The summary block starts on the first screen and its well map is wholly on it.
    assert!(summary[1] < 300, "the summary starts at y = {}", summary[1]);
    assert!(
        map[2] > 100 && map[3] > 60 && map[0] >= 0 && map[0] + map[2] <= WIDTH as i64,
        "the map's box {map:?}"
    );
    assert!(
        map[1] + map[3] <= HEIGHT as i64,
        "the summary's well map ends at y = {}, below the first screen",
        map[1] + map[3]
    );
    // Its wells are in viridis, across the scale (low and high fractions both present).
    let pixels = shot.region(map);
    let wells: Vec<&[u8; 3]> = pixels
        .iter()
        .filter(|&&p| viridis_distance(p) < 12.0)
        .collect();
    let share = wells.len() as f64 / pixels.len() as f64;
    assert!(
        share > 0.15,
        "only {:.1}% of the well map's box is in the heat-map colours",
        100.0 * share
    );
    let dark = wells.iter().filter(|p| p[0] < 90 && p[2] > 80).count();
    let bright = wells.iter().filter(|p| p[1] > 190).count();
    assert!(
        dark > 200 && bright > 200,
        "the map should span the scale: {dark} dark-purple and {bright} green-yellow pixels"
    );
    // The summary's tinted background shows (the block is drawn, not just its text).
    let tint = shot
        .region(summary)
        .iter()
        .filter(|&&p| p == [0xf6, 0xf8, 0xfa])
        .count();
    assert!(tint > 10_000, "{tint} pixels of the summary's background");

    // Nothing in the margins beside the 1120 px column: a title or label running out of its
    // box would draw there.
    let margin = (WIDTH as i64 - 1120) / 2 - 4;
    for x0 in [0, WIDTH as i64 - margin] {
        let ink = shot
            .region([x0, 0, margin, HEIGHT as i64])
            .iter()
            .filter(|&&p| !near_white(p))
            .count();
        assert_eq!(ink, 0, "{ink} pixels drawn in the margin at x = {x0}");
    }
}
