//! The screen's readouts from a classifier's per-cell predictions, as `evaluate` writes them:
//! each well's class fractions with intervals (`well_readout.csv`), how well those fractions
//! separate the controls (`readout_zprime.csv`), the dose–response of the fraction where the
//! plate map has doses (`dose_response.csv`); and, for `train`'s out-of-fold predictions, the
//! wells whose label the model contradicts (`label_qc.csv`). The statistics themselves are
//! `plateflow_learn::readouts` and `plateflow_learn::dose`.

use super::{num, Table};
use plateflow_contract::platemap::{control_of, Control, PlateMap};
use plateflow_learn::cells::Data;
use plateflow_learn::dose::{ec50_with_interval, DoseResponse};
use plateflow_learn::metrics::{bootstrap_by_group, MIN_GROUPS_FOR_INTERVAL};
use plateflow_learn::readouts::{class_fractions, label_qc, Fraction, WellCheck};
use std::collections::BTreeMap;

/// One well's cells and what the plate map says of it.
pub struct Well {
    pub plate: String,
    pub well: String,
    /// The label of its cells (empty: unlabelled).
    pub label: String,
    pub dose: Option<f64>,
    pub control: Option<Control>,
    /// The plate map's treatment (empty without a treatment column).
    pub treatment: String,
    /// Indices into the predictions.
    pub cells: Vec<usize>,
}

/// The wells of `d`'s cells, in plate and well order, with dose and control role from the
/// plate map (`dose_column` as found by [`PlateMap::dose_column`]). A dose that is not a
/// number is an error naming the plate map, well and value.
pub fn wells(
    d: &Data,
    map: Option<&PlateMap>,
    dose_column: Option<usize>,
    control_column: Option<usize>,
) -> anyhow::Result<Vec<Well>> {
    let treatment_column = map.and_then(PlateMap::treatment_column);
    let mut by: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, o) in d.origins.iter().enumerate() {
        by.entry((o.plate.clone(), o.well.clone()))
            .or_default()
            .push(i);
    }
    let mut out = Vec::with_capacity(by.len());
    for ((plate, well), cells) in by {
        let row = map.and_then(|m| m.lookup(&plate, &well));
        let dose = match (row, dose_column) {
            (Some(r), Some(c)) => {
                let v = r.values[c].trim();
                if v.is_empty() {
                    None
                } else {
                    let parsed = v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0);
                    Some(parsed.ok_or_else(|| {
                        anyhow::anyhow!(
                            "plate map {} line {}: dose `{v}` of {plate} {well} is not a number ≥ 0 (write 0 for vehicle, leave it empty for none)",
                            map.map_or("", |m| m.file.as_str()),
                            r.line
                        )
                    })?)
                }
            }
            _ => None,
        };
        let control = match (row, control_column) {
            (Some(r), Some(c)) => control_of(&r.values[c]),
            _ => None,
        };
        let treatment = match (row, treatment_column) {
            (Some(r), Some(c)) => r.values[c].trim().to_string(),
            _ => String::new(),
        };
        let label = d.labels[cells[0]]
            .map(|l| d.classes[l].clone())
            .unwrap_or_default();
        out.push(Well {
            plate,
            well,
            label,
            dose,
            control,
            treatment,
            cells,
        });
    }
    Ok(out)
}

/// `well_readout.csv`: per well, the fraction of its cells predicted as each class with a 95 %
/// interval from resampling its cells. Returns the table and the fractions, [well][class].
pub fn well_readout(
    wells: &[Well],
    predicted: &[usize],
    classes: &[String],
    seed: u64,
) -> (Table, Vec<Vec<Fraction>>) {
    let mut header: Vec<String> = [
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_Treatment",
        "label",
        "dose",
        "control",
        "cells",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for c in classes {
        header.extend([
            format!("fraction_{c}"),
            format!("fraction_{c}_lo"),
            format!("fraction_{c}_hi"),
        ]);
    }
    let mut t = Table::new(&header);
    let mut all = Vec::with_capacity(wells.len());
    for (w_i, w) in wells.iter().enumerate() {
        let preds: Vec<usize> = w.cells.iter().map(|&i| predicted[i]).collect();
        let f = class_fractions(&preds, classes.len(), 1000, seed ^ w_i as u64);
        let mut row = vec![
            w.plate.clone(),
            w.well.clone(),
            w.treatment.clone(),
            w.label.clone(),
            w.dose.map(num).unwrap_or_default(),
            match w.control {
                Some(Control::Positive) => "positive".into(),
                Some(Control::Negative) => "negative".into(),
                None => String::new(),
            },
            w.cells.len().to_string(),
        ];
        for x in &f {
            row.extend([num(x.value), num(x.lo), num(x.hi)]);
        }
        t.push_row(row);
        all.push(f);
    }
    (t, all)
}

/// `treatment_readout.csv`: per treatment and dose (as the plate map gives them), the mean
/// over its wells of each class fraction, with a 95 % interval from resampling the wells
/// (none from fewer than 3 wells: say so). Wells, not cells, are the replicates here.
pub fn treatment_readout(wells: &[Well], fractions: &[Vec<Fraction>], classes: &[String]) -> Table {
    let mut header: Vec<String> = ["treatment", "dose", "wells", "cells"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in classes {
        header.extend([
            format!("mean_fraction_{c}"),
            format!("mean_fraction_{c}_lo"),
            format!("mean_fraction_{c}_hi"),
        ]);
    }
    header.push("note".into());
    let mut t = Table::new(&header);
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, w) in wells.iter().enumerate() {
        let dose = w.dose.map(num).unwrap_or_default();
        groups
            .entry((w.treatment.clone(), dose))
            .or_default()
            .push(i);
    }
    for ((treatment, dose), members) in groups {
        let cells: usize = members.iter().map(|&i| wells[i].cells.len()).sum();
        let mut row = vec![
            treatment,
            dose,
            members.len().to_string(),
            cells.to_string(),
        ];
        for (k, _) in classes.iter().enumerate() {
            let v: Vec<f64> = members
                .iter()
                .map(|&i| fractions[i][k].value)
                .filter(|x| x.is_finite())
                .collect();
            let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
            // Wells are the replicates: each its own group (no interval from fewer than 3).
            let each_well: Vec<String> = (0..v.len()).map(|i| i.to_string()).collect();
            let (lo, hi) = bootstrap_by_group(&each_well, 1000, 0x7EA7, |idx| {
                idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64
            });
            row.extend([num(mean), num(lo), num(hi)]);
        }
        row.push(if members.len() < MIN_GROUPS_FOR_INTERVAL {
            "fewer than 3 wells: no interval".into()
        } else {
            String::new()
        });
        t.push_row(row);
    }
    t
}

/// `readout_zprime.csv`: per plate, Z′ of each class's per-well fraction between the
/// positive and the negative control wells; `None` where no plate has at least two control
/// wells on each side. Per plate, as the `features` step's: pooled over plates, a plate
/// effect counted as control spread, and one good plate hid a failed one.
pub fn readout_zprime(
    wells: &[Well],
    fractions: &[Vec<Fraction>],
    classes: &[String],
) -> Option<(Table, Vec<(String, f64)>)> {
    let mut t = Table::new(&[
        "readout",
        "Metadata_Plate",
        "z_prime",
        "positive_wells",
        "negative_wells",
        "mean_positive",
        "mean_negative",
        "note",
    ]);
    let mut out = Vec::new();
    let plates: std::collections::BTreeSet<&str> = wells.iter().map(|w| w.plate.as_str()).collect();
    for plate in plates {
        let side = |c: Control| -> Vec<usize> {
            (0..wells.len())
                .filter(|&i| {
                    wells[i].plate == plate
                        && wells[i].control == Some(c)
                        && !fractions[i][0].value.is_nan()
                })
                .collect()
        };
        let (pos, neg) = (side(Control::Positive), side(Control::Negative));
        if pos.len() < 2 || neg.len() < 2 {
            continue;
        }
        for (k, c) in classes.iter().enumerate() {
            let values = |idx: &[usize]| -> Vec<f64> {
                idx.iter().map(|&i| fractions[i][k].value).collect()
            };
            let (p, n) = (values(&pos), values(&neg));
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (mp, mn) = (mean(&p), mean(&n));
            let (z, note) = match plateflow_imaging::qc::z_prime_or_why(&p, &n) {
                Ok(z) => (num(z), String::new()),
                // A good classifier often calls every control cell right: no spread at all.
                Err(_)
                    if (mp - mn).abs() > 0.5
                        && p.iter().chain(&n).all(|v| *v == 0.0 || *v == 1.0) =>
                {
                    (
                        String::new(),
                        format!("controls perfectly separated (every positive well {mp:.3}, every negative {mn:.3}): Z' needs spread to be defined"),
                    )
                }
                Err(why) => (String::new(), why),
            };
            if let Ok(v) = z.parse::<f64>() {
                out.push((format!("fraction_{c} (plate {plate})"), v));
            }
            t.push_row([
                format!("fraction_{c}"),
                plate.to_string(),
                z,
                pos.len().to_string(),
                neg.len().to_string(),
                num(mp),
                num(mn),
                note,
            ]);
        }
    }
    (!t.is_empty()).then_some((t, out))
}

/// The columns of `dose_response.csv`, shared with the `features` step's.
pub const DOSE_RESPONSE_COLUMNS: [&str; 12] = [
    "readout",
    "Metadata_Plate",
    "Metadata_Treatment",
    "ec50",
    "ec50_lo",
    "ec50_hi",
    "hill",
    "bottom",
    "top",
    "wells",
    "doses",
    "status",
];

/// The fit columns of a `dose_response.csv` row (after `readout` and the plate): the curve
/// and its EC50 interval, or empty numbers, the wells and doses there were, and why not.
pub fn dose_response_row(
    series: &[(f64, Vec<f64>)],
    fit: &Result<DoseResponse, String>,
) -> Vec<String> {
    match fit {
        Ok(r) => {
            let c = &r.curve;
            vec![
                num(c.ec50),
                num(r.ec50_ci95[0]),
                num(r.ec50_ci95[1]),
                num(c.hill),
                num(c.bottom),
                num(c.top),
                r.wells.to_string(),
                r.doses.to_string(),
                "fitted".into(),
            ]
        }
        Err(why) => {
            let mut dosed: Vec<f64> = series
                .iter()
                .filter(|(d, v)| *d > 0.0 && !v.is_empty())
                .map(|(d, _)| *d)
                .collect();
            let wells = dosed.len();
            dosed.sort_by(f64::total_cmp);
            dosed.dedup();
            let mut row = vec![String::new(); 6];
            row.extend([wells.to_string(), dosed.len().to_string(), why.clone()]);
            row
        }
    }
}

/// The dilution series of a plate: per (plate, treatment), the indices of its wells with a
/// dose > 0, in plate, treatment order. A plate of several compounds holds a series of each
/// (pooled, their wells made one curve and one EC50 of them all); without a treatment column
/// the treatment is empty, and the plate one series. Series of a single well are left out
/// (a control given a dose is not a curve).
pub fn dose_series<'a>(
    plate_treatment_dose: impl Iterator<Item = (&'a str, &'a str, Option<f64>)>,
) -> Vec<((String, String), Vec<usize>)> {
    let mut series: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, (plate, treatment, dose)) in plate_treatment_dose.enumerate() {
        if dose.is_some_and(|d| d > 0.0) {
            series
                .entry((plate.to_string(), treatment.to_string()))
                .or_default()
                .push(i);
        }
    }
    series.into_iter().filter(|(_, w)| w.len() > 1).collect()
}

/// ` (treatment)`, or nothing without one: for log lines.
pub fn of_treatment(t: &str) -> String {
    if t.is_empty() {
        String::new()
    } else {
        format!(" ({t})")
    }
}

/// `dose_response.csv`: per plate and treatment, the fraction of cells in a class against
/// dose, fitted with a 4-parameter logistic; the EC50's interval resamples cells within
/// wells. With two classes only the one that rises with dose is fitted (the other mirrors
/// it). Returns the table and one log line per fit.
pub fn dose_response(
    wells: &[Well],
    predicted: &[usize],
    classes: &[String],
) -> (Table, Vec<String>) {
    let mut t = Table::new(&DOSE_RESPONSE_COLUMNS);
    let mut log = Vec::new();
    let all = dose_series(
        wells
            .iter()
            .map(|w| (w.plate.as_str(), w.treatment.as_str(), w.dose)),
    );
    for ((plate, treatment), members) in all {
        let dosed: Vec<&Well> = members.iter().map(|&i| &wells[i]).collect();
        let share = |w: &Well, k: usize| {
            w.cells.iter().filter(|&&i| predicted[i] == k).count() as f64
                / w.cells.len().max(1) as f64
        };
        let rising = |k: usize| {
            let lo = dosed
                .iter()
                .min_by(|a, b| a.dose.unwrap().total_cmp(&b.dose.unwrap()));
            let hi = dosed
                .iter()
                .max_by(|a, b| a.dose.unwrap().total_cmp(&b.dose.unwrap()));
            matches!((lo, hi), (Some(l), Some(h)) if share(h, k) > share(l, k))
        };
        let ks: Vec<usize> = if classes.len() == 2 {
            (0..2).filter(|&k| rising(k)).take(1).collect()
        } else {
            (0..classes.len()).collect()
        };
        for k in ks {
            let data: Vec<(f64, Vec<f64>)> = dosed
                .iter()
                .map(|w| {
                    let v = w
                        .cells
                        .iter()
                        .map(|&i| f64::from(u8::from(predicted[i] == k)))
                        .collect();
                    (w.dose.expect("dosed"), v)
                })
                .collect();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let readout = format!("fraction_{}", classes[k]);
            let fit = ec50_with_interval(&data, &mean, 1000, 0xD05E);
            log.push(match &fit {
                Ok(r) => format!(
                    "{plate}{}: {readout} EC50 {:.4} [95 % CI {:.4}, {:.4}], Hill {:.2}, {} wells at {} doses",
                    of_treatment(&treatment), r.curve.ec50, r.ec50_ci95[0], r.ec50_ci95[1], r.curve.hill, r.wells, r.doses
                ),
                Err(why) => format!("{plate}{}: {readout}: no dose–response fit: {why}", of_treatment(&treatment)),
            });
            let mut row = vec![readout, plate.clone(), treatment.clone()];
            row.extend(dose_response_row(&data, &fit));
            t.push_row(row);
        }
    }
    (t, log)
}

/// `label_qc.csv` from out-of-fold predictions of labelled cells (`cells` index `d`;
/// `truth[j]`, `predicted[j]` belong to cell `cells[j]`). Flagged wells first.
pub fn label_check(
    d: &Data,
    cells: &[usize],
    truth: &[usize],
    predicted: &[usize],
) -> (Table, Vec<WellCheck>) {
    let wells: Vec<(String, String)> = cells
        .iter()
        .map(|&i| (d.origins[i].plate.clone(), d.origins[i].well.clone()))
        .collect();
    let mut checks = label_qc(&wells, truth, predicted, d.classes.len(), 0.05);
    checks.sort_by(|a, b| {
        b.flagged
            .cmp(&a.flagged)
            .then(a.p_value.total_cmp(&b.p_value))
    });
    let mut t = Table::new(&[
        "Metadata_Plate",
        "Metadata_Well",
        "label",
        "cells",
        "agreeing",
        "expected_agreeing",
        "predicted_mostly",
        "p_value",
        "flagged",
    ]);
    for c in &checks {
        t.push_row([
            c.well.0.clone(),
            c.well.1.clone(),
            d.classes[c.label].clone(),
            c.cells.to_string(),
            c.agreeing.to_string(),
            num(c.expected_agreeing),
            d.classes[c.predicted_mostly].clone(),
            if c.p_value.is_finite() {
                format!("{:.3e}", c.p_value.max(f64::MIN_POSITIVE))
            } else {
                String::new()
            },
            c.flagged.to_string(),
        ]);
    }
    (t, checks)
}

/// A p-value for people: `p = 3.2e-5`, or `p < 1e-16` below what the normal approximation
/// can honestly resolve.
pub fn show_p(p: f64) -> String {
    if p < 1e-16 {
        "p < 1e-16".into()
    } else {
        format!("p = {p:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plate of two compounds' dilutions, vehicle wells and one dosed positive control:
    /// one series per compound (they were one curve of both), none of the control alone.
    #[test]
    fn each_compound_on_a_plate_is_its_own_dose_series() {
        let wells = [
            ("P1", "cmpd-A", Some(0.1)),
            ("P1", "cmpd-B", Some(0.1)),
            ("P1", "cmpd-A", Some(1.0)),
            ("P1", "DMSO", Some(0.0)),
            ("P1", "cmpd-B", Some(1.0)),
            ("P1", "staurosporine", Some(5.0)),
            ("P2", "cmpd-A", Some(0.1)),
            ("P2", "cmpd-A", Some(1.0)),
            ("P2", "cmpd-A", None),
        ];
        let series = dose_series(wells.iter().map(|&(p, t, d)| (p, t, d)));
        let named: Vec<(&str, &str, Vec<usize>)> = series
            .iter()
            .map(|((p, t), w)| (p.as_str(), t.as_str(), w.clone()))
            .collect();
        assert_eq!(
            named,
            vec![
                ("P1", "cmpd-A", vec![0, 2]),
                ("P1", "cmpd-B", vec![1, 4]),
                ("P2", "cmpd-A", vec![6, 7]),
            ]
        );
    }

    /// Two plates whose controls each separate well, at different levels: Z′ per plate is
    /// high on both (pooled, the plate effect read as control spread: Z′ about 0.15).
    #[test]
    fn the_readouts_z_prime_is_per_plate() {
        let mut wells = Vec::new();
        let mut fractions = Vec::new();
        for (plate, pos) in [("P1", 0.9), ("P2", 0.6)] {
            for (i, (control, value)) in [
                (Control::Positive, pos),
                (Control::Positive, pos + 0.02),
                (Control::Negative, 0.10),
                (Control::Negative, 0.12),
            ]
            .into_iter()
            .enumerate()
            {
                wells.push(Well {
                    plate: plate.into(),
                    well: format!("A0{}", i + 1),
                    label: String::new(),
                    dose: None,
                    control: Some(control),
                    treatment: String::new(),
                    cells: vec![],
                });
                let f = |value: f64| Fraction {
                    value,
                    lo: value,
                    hi: value,
                };
                fractions.push(vec![f(value), f(1.0 - value)]);
            }
        }
        let classes = ["hit".to_string(), "normal".to_string()];
        let (_, z) = readout_zprime(&wells, &fractions, &classes).unwrap();
        let hit: Vec<&(String, f64)> = z
            .iter()
            .filter(|(n, _)| n.starts_with("fraction_hit"))
            .collect();
        assert_eq!(hit.len(), 2, "{z:?}");
        assert!(hit.iter().all(|(_, v)| *v > 0.5), "{z:?}");
        assert!(hit[1].0.ends_with("(plate P2)"));
    }
}
