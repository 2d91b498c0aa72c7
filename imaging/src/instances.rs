//! Nucleus instances from a pixel classifier, and back: training targets from instance labels
//! (background, interior, boundary), instances from predicted class probabilities (interiors
//! as seeds, grown over the foreground), and matching at any IoU threshold for AP.

use crate::segment::{connected_components, neighbours4, Labels};
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

/// Instances from class probabilities: connected interiors (`interior` ≥ 0.5) are the seeds;
/// each grows, breadth first, over foreground pixels (`interior + boundary` ≥ 0.5) no other
/// seed reached first. Objects under `min_area` pixels are dropped.
pub fn from_probabilities(
    interior: &[f32],
    foreground: &[f32],
    w: usize,
    h: usize,
    min_area: usize,
) -> Labels {
    let seeds: Vec<bool> = interior.iter().map(|&p| p >= 0.5).collect();
    let mut labels = connected_components(&seeds, w, h).data;
    let mut queue: VecDeque<usize> = (0..w * h).filter(|&i| labels[i] > 0).collect();
    while let Some(i) = queue.pop_front() {
        let l = labels[i];
        neighbours4(i, w, h, |j| {
            if labels[j] == 0 && foreground[j] >= 0.5 {
                labels[j] = l;
                queue.push_back(j);
            }
        });
    }
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
pub(crate) struct Overlaps {
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
        let got = from_probabilities(&interior, &fg, w, h, 1);
        assert_eq!(got.count, 2);
        assert_eq!(matches(&got.data, &truth, 0.9), (2, 2, 2));
        let mut m = Matching::default();
        m.add(matches(&got.data, &truth, 0.5));
        assert_eq!((m.ap(), m.f1()), (1.0, 1.0));
        // A merge: one predicted object over both is no match at 0.5.
        let merged: Vec<u32> = truth.iter().map(|&l| u32::from(l > 0)).collect();
        assert_eq!(matches(&merged, &truth, 0.5), (0, 1, 2));
    }
}
