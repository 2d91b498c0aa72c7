//! Validation that cannot leak: folds grouped by plate (or any metadata field), and a guard
//! that refuses an evaluation set sharing a plate, a well or an identical image with training.

use std::collections::{BTreeMap, BTreeSet};

/// One cross-validation fold: indices into the data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    /// The groups (plates) held out in this fold.
    pub held_out: Vec<String>,
}

/// K folds with every group entirely on one side. Groups are dealt largest first to the fold
/// with the fewest samples so far (folds come out balanced), deterministically: the same
/// groups always give the same folds.
pub fn group_kfold(groups: &[String], k: usize) -> anyhow::Result<Vec<Fold>> {
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for g in groups {
        *sizes.entry(g.as_str()).or_default() += 1;
    }
    anyhow::ensure!(
        k >= 2 && sizes.len() >= k,
        "{k}-fold validation grouped by plate needs at least {k} plates; the data has {}",
        sizes.len()
    );
    let mut order: Vec<(&str, usize)> = sizes.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut fold_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut load = vec![0usize; k];
    for (g, n) in order {
        let f = (0..k).min_by_key(|&f| (load[f], f)).expect("k >= 2");
        load[f] += n;
        fold_of.insert(g, f);
    }
    Ok((0..k)
        .map(|f| {
            let (test, train): (Vec<usize>, Vec<usize>) =
                (0..groups.len()).partition(|&i| fold_of[groups[i].as_str()] == f);
            let held_out = fold_of
                .iter()
                .filter(|(_, &x)| x == f)
                .map(|(g, _)| g.to_string())
                .collect();
            Fold {
                train,
                test,
                held_out,
            }
        })
        .collect())
}

/// What identifies a sample's origin, for the leakage guard.
#[derive(Debug, Clone)]
pub struct Origin {
    pub plate: String,
    pub well: String,
    /// Content digest of the image the sample came from.
    pub image_digest: String,
}

/// Refuses a train/test split that shares a group (what folds keep whole: the plate, or
/// the `group_by:` field), a well or an identical image. The error names what is shared and
/// how many samples it touches.
pub fn check_no_leak(
    origins: &[Origin],
    groups: &[String],
    train: &[usize],
    test: &[usize],
) -> anyhow::Result<()> {
    let in_train: BTreeSet<&str> = train.iter().map(|&i| groups[i].as_str()).collect();
    let wells: BTreeSet<(&str, &str)> = train
        .iter()
        .map(|&i| (origins[i].plate.as_str(), origins[i].well.as_str()))
        .collect();
    let images: BTreeSet<&str> = train
        .iter()
        .map(|&i| origins[i].image_digest.as_str())
        .collect();
    let mut shared_groups = BTreeSet::new();
    let mut shared_images = 0;
    let mut shared_wells = 0;
    for &i in test {
        let o = &origins[i];
        if in_train.contains(groups[i].as_str()) {
            shared_groups.insert(groups[i].as_str());
        }
        if wells.contains(&(o.plate.as_str(), o.well.as_str())) {
            shared_wells += 1;
        }
        if !o.image_digest.is_empty() && images.contains(o.image_digest.as_str()) {
            shared_images += 1;
        }
    }
    if !shared_groups.is_empty() || shared_wells > 0 || shared_images > 0 {
        anyhow::bail!(
            "the evaluation set leaks into training: {} group(s) in both ({}), {shared_wells} \
             test sample(s) from wells seen in training, {shared_images} from images identical \
             to training images. Split by plate (`split: leave-plate-out`), or opt in to a \
             random split of cells with `split: random-cells` (reported as leaky)",
            shared_groups.len(),
            shared_groups
                .into_iter()
                .take(5)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// A class whose cells come mostly from one group (plate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concentration {
    pub class: usize,
    pub cells: usize,
    /// The group holding most of the class, and how many of its cells.
    pub top_group: String,
    pub top_cells: usize,
    /// Groups holding any cell of the class.
    pub groups: usize,
}

/// Classes with more than half of their cells in one group, largest share first. When that
/// group is held out, the model learns the class from the few cells left, so that fold's
/// score says as much about the data as about the model (on MitoCheck 57 of the 97 ADCCM
/// cells are on one plate, and the fold holding it out scores lowest).
pub fn concentrated_classes(
    labels: &[usize],
    groups: &[String],
    classes: usize,
) -> Vec<Concentration> {
    let mut per_class: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); classes];
    for (&l, g) in labels.iter().zip(groups) {
        *per_class[l].entry(g.as_str()).or_default() += 1;
    }
    let mut out: Vec<Concentration> = per_class
        .iter()
        .enumerate()
        .filter_map(|(class, counts)| {
            let cells: usize = counts.values().sum();
            // Ties go to the first group by name: the result does not depend on map order.
            let (top_group, top_cells) =
                counts
                    .iter()
                    .fold(None, |best: Option<(&str, usize)>, (&g, &n)| match best {
                        Some((_, m)) if m >= n => best,
                        _ => Some((g, n)),
                    })?;
            (2 * top_cells > cells).then(|| Concentration {
                class,
                cells,
                top_group: top_group.to_string(),
                top_cells,
                groups: counts.len(),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (b.top_cells * a.cells)
            .cmp(&(a.top_cells * b.cells))
            .then(a.class.cmp(&b.class))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_keep_groups_whole_and_cover_everything_once() {
        let groups: Vec<String> = (0..100).map(|i| format!("P{}", i % 7)).collect();
        let folds = group_kfold(&groups, 3).unwrap();
        let mut seen = vec![0; 100];
        for f in &folds {
            for &i in &f.test {
                seen[i] += 1;
            }
            let test: BTreeSet<&str> = f.test.iter().map(|&i| groups[i].as_str()).collect();
            assert!(f.train.iter().all(|&i| !test.contains(groups[i].as_str())));
            assert_eq!(f.train.len() + f.test.len(), 100);
        }
        assert!(seen.iter().all(|&n| n == 1));
        assert_eq!(group_kfold(&groups, 3).unwrap(), folds, "deterministic");
        assert!(group_kfold(&groups, 8).is_err());
    }

    #[test]
    fn the_guard_names_shared_plates_wells_and_images() {
        let o = |p: &str, w: &str, d: &str| Origin {
            plate: p.into(),
            well: w.into(),
            image_digest: d.into(),
        };
        let origins = vec![
            o("P1", "A01", "x"),
            o("P2", "A01", "y"),
            o("P3", "B01", "x"),
        ];
        let plates: Vec<String> = origins.iter().map(|o| o.plate.clone()).collect();
        assert!(check_no_leak(&origins, &plates, &[0], &[1]).is_ok());
        let e = check_no_leak(&origins, &plates, &[0], &[2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 from images identical"), "{e}");
        let e = check_no_leak(&origins, &plates, &[0, 1], &[1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 group(s) in both (P2)"), "{e}");
        // Folds grouped by treatment: one plate on both sides is no leak, one well is.
        let treatments = vec!["dmso".to_string(), "taxol".into(), "dmso".into()];
        let same_plate = vec![
            o("P1", "A01", "x"),
            o("P1", "A02", "y"),
            o("P1", "A01", "z"),
        ];
        assert!(check_no_leak(&same_plate, &treatments, &[0], &[1]).is_ok());
        assert!(check_no_leak(&same_plate, &treatments, &[1], &[2]).is_ok());
        let e = check_no_leak(&same_plate, &treatments, &[0], &[1, 2])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 group(s) in both (dmso)") && e.contains("1 test sample(s) from wells"),
            "{e}"
        );
    }

    #[test]
    fn classes_held_mostly_by_one_plate_are_named() {
        let groups: Vec<String> = ["P1", "P1", "P1", "P2", "P1", "P2", "P3", "P2", "P3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Class 0: 3 of 4 on P1. Class 1: 2 of 3 on P2. Class 2: 1 on P3, 1 on P2 (half is
        // not more than half). Class 3: no cells.
        let labels = [0, 0, 0, 1, 1, 1, 2, 2, 0];
        let c = concentrated_classes(&labels, &groups, 4);
        assert_eq!(
            c,
            vec![
                Concentration {
                    class: 0,
                    cells: 4,
                    top_group: "P1".into(),
                    top_cells: 3,
                    groups: 2
                },
                Concentration {
                    class: 1,
                    cells: 3,
                    top_group: "P2".into(),
                    top_cells: 2,
                    groups: 2
                },
            ]
        );
    }
}
