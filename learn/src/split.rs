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

/// Refuses a train/test split that shares a plate, a well or an identical image. The error
/// names what is shared and how many samples it touches.
pub fn check_no_leak(origins: &[Origin], train: &[usize], test: &[usize]) -> anyhow::Result<()> {
    let plates: BTreeSet<&str> = train.iter().map(|&i| origins[i].plate.as_str()).collect();
    let wells: BTreeSet<(&str, &str)> = train
        .iter()
        .map(|&i| (origins[i].plate.as_str(), origins[i].well.as_str()))
        .collect();
    let images: BTreeSet<&str> = train
        .iter()
        .map(|&i| origins[i].image_digest.as_str())
        .collect();
    let mut shared_plates = BTreeSet::new();
    let mut shared_images = 0;
    let mut shared_wells = 0;
    for &i in test {
        let o = &origins[i];
        if plates.contains(o.plate.as_str()) {
            shared_plates.insert(o.plate.as_str());
        }
        if wells.contains(&(o.plate.as_str(), o.well.as_str())) {
            shared_wells += 1;
        }
        if !o.image_digest.is_empty() && images.contains(o.image_digest.as_str()) {
            shared_images += 1;
        }
    }
    if !shared_plates.is_empty() || shared_wells > 0 || shared_images > 0 {
        anyhow::bail!(
            "the evaluation set leaks into training: {} plate(s) in both ({}), {shared_wells} \
             test sample(s) from wells seen in training, {shared_images} from images identical \
             to training images. Split by plate (`split: leave-plate-out`), or opt in to a \
             random split of cells with `split: random-cells` (reported as leaky)",
            shared_plates.len(),
            shared_plates
                .into_iter()
                .take(5)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
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
        assert!(check_no_leak(&origins, &[0], &[1]).is_ok());
        let e = check_no_leak(&origins, &[0], &[2]).unwrap_err().to_string();
        assert!(e.contains("1 from images identical"), "{e}");
        let e = check_no_leak(&origins, &[0, 1], &[1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 plate(s) in both (P2)"), "{e}");
    }
}
