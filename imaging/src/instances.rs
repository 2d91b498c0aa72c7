//! Nucleus instances from a pixel classifier, and back: training targets from instance labels
//! (background, interior, boundary), instances from predicted class probabilities (interiors
//! as seeds, grown over the foreground), and matching at any IoU threshold for AP.

use crate::segment::{connected_components, distance_transform, neighbours4, Labels};
use std::collections::{HashMap, VecDeque};

/// Per-pixel classes of an instance label image: 0 background, 1 interior, 2 boundary (an
/// object pixel with a 4-neighbour outside its object, background or another object).
pub fn targets(labels: &[u32], w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let l = labels[y * w + x];
            if l == 0 {
                continue;
            }
            let edge = (x == 0 || labels[y * w + x - 1] != l)
                || (x + 1 == w || labels[y * w + x + 1] != l)
                || (y == 0 || labels[(y - 1) * w + x] != l)
                || (y + 1 == h || labels[(y + 1) * w + x] != l);
            out[y * w + x] = if edge { 2 } else { 1 };
        }
    }
    out
}

/// How class probabilities become instances (see [`from_probabilities`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceParams {
    /// Interior probability a seed pixel needs.
    pub seed: f32,
    /// Foreground (interior + boundary) probability a pixel needs for a seed to grow over it.
    pub grow: f32,
    /// Seeds joined by a neck are split where the smaller side's distance-transform peak
    /// stands at least this many nucleus diameters above the neck; `None` keeps every
    /// connected seed whole.
    pub split_depth: Option<f64>,
    /// Holes inside a seed (a dark nucleolus, a dim centre) smaller than this many typical
    /// nucleus areas are filled before splitting, so they do not read as necks.
    pub fill_holes: f64,
}

impl Default for InstanceParams {
    /// Plain 0.5 thresholds and no splitting: the maps read as the classes they predict.
    fn default() -> Self {
        InstanceParams {
            seed: 0.5,
            grow: 0.5,
            split_depth: None,
            fill_holes: 0.0,
        }
    }
}

/// Instances from class probabilities: interiors (`interior` ≥ `seed`) are the seeds, split
/// at necks (see [`InstanceParams::split_depth`]); each grows, breadth first, over foreground
/// pixels (`foreground` ≥ `grow`) no other seed reached first. Objects under a tenth of the
/// area of a nucleus of `diameter` pixels (at least 4) are dropped.
pub fn from_probabilities(
    interior: &[f32],
    foreground: &[f32],
    w: usize,
    h: usize,
    diameter: f64,
    p: &InstanceParams,
) -> Labels {
    let typical_area = diameter * diameter * std::f64::consts::PI / 4.0;
    let mut mask: Vec<bool> = interior.iter().map(|&v| v >= p.seed).collect();
    fill_small_holes(&mut mask, w, h, (p.fill_holes * typical_area) as usize);
    let mut labels = match p.split_depth {
        Some(depth) => split_at_necks(&mask, w, h, (depth * diameter) as f32),
        None => connected_components(&mask, w, h).data,
    };
    let mut queue: VecDeque<usize> = (0..w * h).filter(|&i| labels[i] > 0).collect();
    while let Some(i) = queue.pop_front() {
        let l = labels[i];
        neighbours4(i, w, h, |j| {
            if labels[j] == 0 && foreground[j] >= p.grow {
                labels[j] = l;
                queue.push_back(j);
            }
        });
    }
    let min_area = (typical_area * 0.1).round().max(4.0) as usize;
    // Drop specks and renumber 1..n.
    let mut area: HashMap<u32, usize> = HashMap::new();
    for &l in &labels {
        if l > 0 {
            *area.entry(l).or_default() += 1;
        }
    }
    let mut keep: Vec<u32> = area
        .iter()
        .filter(|(_, &a)| a >= min_area)
        .map(|(&l, _)| l)
        .collect();
    keep.sort_unstable();
    let new: HashMap<u32, u32> = keep
        .iter()
        .enumerate()
        .map(|(i, &l)| (l, i as u32 + 1))
        .collect();
    for l in &mut labels {
        *l = new.get(l).copied().unwrap_or(0);
    }
    Labels {
        width: w as u32,
        height: h as u32,
        count: keep.len() as u32,
        data: labels,
    }
}

/// Sets the background components of `mask` (8-connected, the complement of 4-connected
/// objects) that do not touch the image border and have fewer than `max_area` pixels.
fn fill_small_holes(mask: &mut [bool], w: usize, h: usize, max_area: usize) {
    if max_area == 0 {
        return;
    }
    let mut seen = vec![false; w * h];
    let mut stack = Vec::new();
    let mut part = Vec::new();
    for start in 0..w * h {
        if mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        part.clear();
        let mut border = false;
        while let Some(i) = stack.pop() {
            part.push(i);
            let (x, y) = (i % w, i / w);
            border |= x == 0 || y == 0 || x + 1 == w || y + 1 == h;
            for dy in -1isize..=1 {
                for dx in -1isize..=1 {
                    let (nx, ny) = (x as isize + dx, y as isize + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if !mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if !border && part.len() < max_area {
            for &i in &part {
                mask[i] = true;
            }
        }
    }
}

/// The mask's 4-connected parts, further split at necks: pixels are added in falling order of
/// their distance to the background, and where two growing parts meet, the one whose peak
/// stands less than `depth` pixels above the meeting point joins the other (a
/// persistence-based watershed on the distance transform). Two round nuclei touching along
/// a short neck stay apart; one elongated nucleus, whose distance profile has no dip that
/// deep, stays whole.
fn split_at_necks(mask: &[bool], w: usize, h: usize, depth: f32) -> Vec<u32> {
    const UNSEEN: u32 = u32::MAX;
    let dt = distance_transform(mask, w, h);
    let mut order: Vec<u32> = (0..w * h).filter(|&i| mask[i]).map(|i| i as u32).collect();
    order.sort_by(|&a, &b| dt[b as usize].total_cmp(&dt[a as usize]));
    // Union-find over pixels; a root's `peak` is its part's highest distance.
    let mut parent = vec![UNSEEN; w * h];
    let mut peak = vec![0f32; w * h];
    fn find(parent: &mut [u32], mut i: u32) -> u32 {
        while parent[i as usize] != i {
            let up = parent[parent[i as usize] as usize];
            parent[i as usize] = up;
            i = up;
        }
        i
    }
    let mut roots: Vec<u32> = Vec::with_capacity(4);
    for &i in &order {
        let v = dt[i as usize];
        roots.clear();
        neighbours4(i as usize, w, h, |j| {
            if parent[j] != UNSEEN {
                roots.push(j as u32);
            }
        });
        for r in roots.iter_mut() {
            *r = find(&mut parent, *r);
        }
        roots.sort_by(|&a, &b| {
            peak[b as usize]
                .total_cmp(&peak[a as usize])
                .then(a.cmp(&b))
        });
        roots.dedup();
        parent[i as usize] = i;
        peak[i as usize] = v;
        if let Some(&main) = roots.first() {
            parent[i as usize] = main;
            for &r in &roots[1..] {
                if peak[r as usize] - v < depth {
                    parent[r as usize] = main;
                }
            }
        }
    }
    // Number the parts 1..n.
    let mut label_of_root: HashMap<u32, u32> = HashMap::new();
    let mut labels = vec![0u32; w * h];
    for i in 0..w * h {
        if mask[i] {
            let r = find(&mut parent, i as u32);
            let n = label_of_root.len() as u32 + 1;
            labels[i] = *label_of_root.entry(r).or_insert(n);
        }
    }
    labels
}

/// One-to-one matches between predicted and true objects at IoU > `iou` (≥ 0.5, where a
/// match can only be one-to-one): (matched, predicted, true).
pub fn matches(pred: &[u32], truth: &[u32], iou: f64) -> (usize, usize, usize) {
    let o = Overlaps::of(pred, truth);
    let matched = o
        .inter
        .iter()
        .filter(|(&(p, t), &i)| {
            let union = o.area_p[&p] + o.area_t[&t] - i;
            i as f64 > iou * union as f64
        })
        .count();
    (matched, o.area_p.len(), o.area_t.len())
}

/// Areas of predicted and true objects and of each overlapping pair.
pub struct Overlaps {
    pub inter: HashMap<(u32, u32), usize>,
    pub area_p: HashMap<u32, usize>,
    pub area_t: HashMap<u32, usize>,
}

impl Overlaps {
    pub fn of(pred: &[u32], truth: &[u32]) -> Overlaps {
        let mut o = Overlaps {
            inter: HashMap::new(),
            area_p: HashMap::new(),
            area_t: HashMap::new(),
        };
        for (&p, &t) in pred.iter().zip(truth) {
            if p > 0 {
                *o.area_p.entry(p).or_default() += 1;
            }
            if t > 0 {
                *o.area_t.entry(t).or_default() += 1;
            }
            if p > 0 && t > 0 {
                *o.inter.entry((p, t)).or_default() += 1;
            }
        }
        o
    }
}

/// Object scores summed over images at one IoU threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Matching {
    pub matched: usize,
    pub predicted: usize,
    pub truth: usize,
}

impl Matching {
    pub fn add(&mut self, (m, p, t): (usize, usize, usize)) {
        self.matched += m;
        self.predicted += p;
        self.truth += t;
    }
    /// AP as Cellpose and StarDist report it: TP / (TP + FP + FN).
    pub fn ap(&self) -> f64 {
        let d = self.predicted + self.truth - self.matched;
        if d == 0 {
            1.0
        } else {
            self.matched as f64 / d as f64
        }
    }
    /// Object F1: 2TP / (2TP + FP + FN).
    pub fn f1(&self) -> f64 {
        let d = self.predicted + self.truth;
        if d == 0 {
            1.0
        } else {
            2.0 * self.matched as f64 / d as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two touching squares: their targets separate them, and growing the interiors back
    /// gives the two objects exactly.
    #[test]
    fn targets_round_trip_through_instances() {
        let (w, h) = (12, 6);
        let mut truth = vec![0u32; w * h];
        for y in 1..5 {
            for x in 1..6 {
                truth[y * w + x] = 1;
            }
            for x in 6..11 {
                truth[y * w + x] = 2;
            }
        }
        let t = targets(&truth, w, h);
        assert_eq!(
            t[2 * w + 5],
            2,
            "the pixel touching the other object is boundary"
        );
        assert_eq!(t[2 * w + 3], 1);
        let interior: Vec<f32> = t.iter().map(|&c| f32::from(c == 1)).collect();
        let fg: Vec<f32> = t.iter().map(|&c| f32::from(c > 0)).collect();
        let got = from_probabilities(&interior, &fg, w, h, 1.0, &InstanceParams::default());
        assert_eq!(got.count, 2);
        assert_eq!(matches(&got.data, &truth, 0.9), (2, 2, 2));
        let mut m = Matching::default();
        m.add(matches(&got.data, &truth, 0.5));
        assert_eq!((m.ap(), m.f1()), (1.0, 1.0));
        // A merge: one predicted object over both is no match at 0.5.
        let merged: Vec<u32> = truth.iter().map(|&l| u32::from(l > 0)).collect();
        assert_eq!(matches(&merged, &truth, 0.5), (0, 1, 2));
    }

    fn disc(labels: &mut [u32], w: usize, cx: f64, cy: f64, r: f64, l: u32) {
        for (i, v) in labels.iter_mut().enumerate() {
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            if (x - cx).powi(2) + (y - cy).powi(2) <= r * r {
                *v = l;
            }
        }
    }

    /// Two overlapping discs (a merged seed) split at their neck; one long ellipse of the
    /// same length, with no neck, stays whole; a hole in a seed is filled first, not split.
    #[test]
    fn seeds_split_at_necks_only() {
        let (w, h) = (60, 30);
        let mut two = vec![0u32; w * h];
        disc(&mut two, w, 20.0, 15.0, 9.0, 1);
        disc(&mut two, w, 36.0, 15.0, 9.0, 1);
        let one: Vec<f32> = two.iter().map(|&l| f32::from(l > 0)).collect();
        let params = InstanceParams {
            split_depth: Some(0.2),
            ..Default::default()
        };
        let got = from_probabilities(&one, &one, w, h, 18.0, &params);
        assert_eq!(got.count, 2, "two discs meeting at a neck");
        assert_eq!(
            from_probabilities(&one, &one, w, h, 18.0, &InstanceParams::default()).count,
            1,
            "unsplit, the seed is one object"
        );
        let ellipse: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f64 - 28.0, (i / w) as f64 - 15.0);
                f32::from((x / 17.0).powi(2) + (y / 9.0).powi(2) <= 1.0)
            })
            .collect();
        assert_eq!(
            from_probabilities(&ellipse, &ellipse, w, h, 18.0, &params).count,
            1
        );
        // A disc with a dark centre: without hole filling the ring's distance peaks are
        // shallow anyway; with it the seed is a plain disc.
        let mut ring: Vec<f32> = ellipse.clone();
        for (i, v) in ring.iter_mut().enumerate() {
            let (x, y) = ((i % w) as f64 - 28.0, (i / w) as f64 - 15.0);
            if x * x + y * y < 9.0 {
                *v = 0.0;
            }
        }
        let filled = InstanceParams {
            fill_holes: 0.5,
            ..params
        };
        let got = from_probabilities(&ring, &ellipse, w, h, 18.0, &filled);
        assert_eq!(got.count, 1);
        assert!(got
            .data
            .iter()
            .zip(&ellipse)
            .all(|(&l, &e)| (l > 0) == (e > 0.5)));
    }
}
