//! Which per-cell measurements a model may learn from. Some columns describe where a cell
//! was imaged or how it was counted, not what it looks like: its position in the field, its
//! object number, bounding boxes, parent links, the angle it lies at. A model that uses them learns the microscope
//! and the plate layout (a cell near the field's edge, the 30th cell of a crowded well), so
//! `train` leaves them out unless the pipeline asks for them with `include_features:`.

use crate::kinds::glob_match;

/// Why a feature column is a nuisance (not phenotype), or `None` for a measurement of the
/// cell itself. Judged on the CellProfiler name's `_`-separated words.
pub fn nuisance_reason(name: &str) -> Option<&'static str> {
    let words: Vec<&str> = name.split('_').collect();
    let has = |w: &str| words.iter().any(|x| x.eq_ignore_ascii_case(w));
    if name.starts_with("Metadata_") || name.starts_with("Image_") {
        Some("image metadata")
    } else if has("Location") || has("Center") || words.iter().any(|w| w.starts_with("BoundingBox"))
    {
        Some("position in the field")
    } else if has("Orientation") {
        // The angle of the major axis: how the cell happens to lie, not what it is.
        Some("orientation in the field")
    } else if has("Number") || has("ObjectNumber") || has("ImageNumber") || has("Parent") {
        Some("object numbering")
    } else if name.starts_with("Count_") || has("TouchesBorder") {
        Some("object counts and field borders")
    } else {
        None
    }
}

/// A feature left out of a model, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub feature: String,
    pub why: String,
}

/// The features a model uses: every column except nuisances and those matching an
/// `exclude` pattern, unless an `include` pattern names them back. Patterns use `*` for any
/// run of characters. Returns the kept indices (in order) and what was dropped, with why.
pub fn select_features(
    names: &[String],
    exclude: &[String],
    include: &[String],
) -> (Vec<usize>, Vec<Dropped>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let why = match exclude.iter().find(|p| glob_match(p, name)) {
            Some(p) => Some(format!("exclude_features: {p}")),
            None => nuisance_reason(name).map(|r| format!("{r} (excluded by default)")),
        };
        match why {
            Some(why) if !include.iter().any(|p| glob_match(p, name)) => dropped.push(Dropped {
                feature: name.clone(),
                why,
            }),
            _ => kept.push(i),
        }
    }
    (kept, dropped)
}

/// The patterns in `patterns` that match none of `names`: a typo the user should hear of.
pub fn unmatched<'a>(patterns: &'a [String], names: &[String]) -> Vec<&'a str> {
    patterns
        .iter()
        .filter(|p| !names.iter().any(|n| glob_match(p, n)))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn position_and_numbering_are_nuisances_and_shape_is_not() {
        for n in [
            "Nuclei_Location_Center_X",
            "Cells_AreaShape_Center_Y",
            "Nuclei_AreaShape_BoundingBoxMinimum_X",
            "Nuclei_Number_Object_Number",
            "Cells_Parent_Nuclei",
            "Metadata_Site",
            "Cells_AreaShape_Orientation",
        ] {
            assert!(nuisance_reason(n).is_some(), "{n}");
        }
        for n in [
            "Nuclei_AreaShape_Area",
            "Nuclei_Intensity_MeanIntensity_DNA",
            "Cells_Translocation_NucCytoRatio_GFP",
            "Nuclei_Texture_Contrast_DNA_3_avg_16",
        ] {
            assert_eq!(nuisance_reason(n), None, "{n}");
        }
    }

    #[test]
    fn exclude_and_include_patterns_change_the_default() {
        let n = names(&[
            "Nuclei_AreaShape_Area",
            "Nuclei_Location_Center_X",
            "Nuclei_Intensity_MeanIntensity_DNA",
            "Cells_Intensity_MeanIntensity_GFP",
        ]);
        let (kept, dropped) = select_features(&n, &[], &[]);
        assert_eq!(kept, vec![0, 2, 3]);
        assert_eq!(dropped[0].feature, "Nuclei_Location_Center_X");
        assert!(dropped[0].why.contains("position"), "{:?}", dropped);
        let (kept, dropped) =
            select_features(&n, &names(&["*_GFP"]), &names(&["Nuclei_Location_*"]));
        assert_eq!(kept, vec![0, 1, 2]);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].why, "exclude_features: *_GFP");
        assert_eq!(unmatched(&names(&["*_GPF", "*_GFP"]), &n), vec!["*_GPF"]);
    }
}
