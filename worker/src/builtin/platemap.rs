//! The plate map: a CSV that gives each (plate, well) its labels, treatments, doses and
//! control flags. Column names vary between labs, so the plate and well columns are found by
//! name (`plate`/`Metadata_Plate`, `well`/`Metadata_Well`, or `row` + `column`), and well names
//! are normalised (`A-01`, `a1`, `A01` are the same well).

use anyhow::Context as _;
use plateflow_imaging::heatmap::{parse_well, well_name};
use std::collections::HashMap;
use std::path::Path;

/// One plate-map row.
#[derive(Debug, Clone)]
pub struct Row {
    /// `None` when the map has no plate column: the row applies to every plate.
    pub plate: Option<String>,
    pub well: String,
    pub values: Vec<String>,
    /// 1-based line in the file, for messages.
    pub line: usize,
}

#[derive(Debug, Clone, Default)]
pub struct PlateMap {
    pub file: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    index: HashMap<(Option<String>, String), usize>,
    /// Rows that repeat an earlier (plate, well): (line, first line).
    pub duplicates: Vec<(usize, usize)>,
}

/// A control well's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Positive,
    Negative,
}

/// `A-01`, `a1`, `A01`, `r01c01` → `A01`; `None` when it is not a well name.
pub fn normalize_well(s: &str) -> Option<String> {
    // Opera/Operetta style r01c01.
    let lower = s.trim().to_ascii_lowercase();
    if let Some((r, c)) = lower
        .strip_prefix('r')
        .and_then(|rest| rest.split_once('c'))
    {
        if let (Ok(r), Ok(c)) = (r.parse::<usize>(), c.parse::<usize>()) {
            if r >= 1 && c >= 1 {
                return Some(well_name(r - 1, c - 1));
            }
        }
    }
    parse_well(s).map(|(r, c)| well_name(r, c))
}

fn find(columns: &[String], names: &[&str]) -> Option<usize> {
    columns.iter().position(|c| {
        let c = c.trim().to_ascii_lowercase();
        names.iter().any(|n| c == *n)
    })
}

impl PlateMap {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(false)
            .trim(csv::Trim::All)
            .from_path(path)
            .with_context(|| format!("cannot read the plate map {file}"))?;
        let columns: Vec<String> = rdr
            .headers()
            .with_context(|| format!("plate map {file}: no header line"))?
            .iter()
            .map(str::to_string)
            .collect();
        let plate_col = find(
            &columns,
            &["plate", "metadata_plate", "plate_id", "barcode"],
        );
        let well_col = find(&columns, &["well", "metadata_well", "well_id", "wellname"]);
        let row_col = find(&columns, &["row", "metadata_row"]);
        let col_col = find(
            &columns,
            &["column", "col", "metadata_column", "metadata_col"],
        );
        if well_col.is_none() && (row_col.is_none() || col_col.is_none()) {
            anyhow::bail!(
                "plate map {file}: no well column (looked for `well` or `Metadata_Well`, or \
                 `row` and `column`); columns are: {}",
                columns.join(", ")
            );
        }
        let mut map = PlateMap {
            file: file.clone(),
            columns,
            ..Default::default()
        };
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.with_context(|| format!("plate map {file}, line {line}"))?;
            let raw_well = match (well_col, row_col, col_col) {
                (Some(w), _, _) => rec.get(w).unwrap_or("").to_string(),
                (None, Some(r), Some(c)) => {
                    format!("{}{}", rec.get(r).unwrap_or(""), rec.get(c).unwrap_or(""))
                }
                _ => unreachable!("checked above"),
            };
            let well = normalize_well(&raw_well).with_context(|| {
                format!(
                    "plate map {file}, line {line}: `{raw_well}` is not a well name \
                     (expected something like A01)"
                )
            })?;
            let plate = plate_col.map(|p| rec.get(p).unwrap_or("").to_string());
            let key = (plate.clone(), well.clone());
            if let Some(&first) = map.index.get(&key) {
                map.duplicates.push((line, map.rows[first].line));
                continue;
            }
            map.index.insert(key, map.rows.len());
            map.rows.push(Row {
                plate,
                well,
                values: rec.iter().map(str::to_string).collect(),
                line,
            });
        }
        Ok(map)
    }

    pub fn has_plate_column(&self) -> bool {
        self.rows.first().is_some_and(|r| r.plate.is_some())
    }

    /// The row for a plate's well: by (plate, well), or by well alone when the map has no
    /// plate column.
    pub fn lookup(&self, plate: &str, well: &str) -> Option<&Row> {
        let well = normalize_well(well)?;
        self.index
            .get(&(Some(plate.to_string()), well.clone()))
            .or_else(|| self.index.get(&(None, well)))
            .map(|&i| &self.rows[i])
    }

    /// A column by name, case-insensitively.
    pub fn column(&self, name: &str) -> Option<usize> {
        find(&self.columns, &[name.to_ascii_lowercase().as_str()])
    }

    /// A column the pipeline names: an error listing the columns there are when it is absent.
    pub fn required_column(&self, name: &str) -> anyhow::Result<usize> {
        self.column(name).with_context(|| {
            format!(
                "plate map {} has no column `{name}`; columns are: {}",
                self.file,
                self.columns.join(", ")
            )
        })
    }

    /// The column that marks controls: `explicit`, or one named like `control`, `controls`,
    /// `control_type` or ending in `_controls` (e.g. `SBS_Controls`).
    pub fn control_column(&self, explicit: Option<&str>) -> anyhow::Result<Option<usize>> {
        if let Some(name) = explicit {
            return self.required_column(name).map(Some);
        }
        Ok(self.columns.iter().position(|c| {
            let c = c.to_ascii_lowercase();
            matches!(
                c.as_str(),
                "control" | "controls" | "control_type" | "metadata_control_type"
            ) || c.ends_with("_controls")
        }))
    }

    /// The column with the class label: `explicit`, or `label`, `phenotype`, `class`.
    pub fn label_column(&self, explicit: Option<&str>) -> anyhow::Result<Option<usize>> {
        if let Some(name) = explicit {
            return self.required_column(name).map(Some);
        }
        Ok(find(
            &self.columns,
            &[
                "label",
                "phenotype",
                "class",
                "metadata_label",
                "metadata_phenotype",
            ],
        ))
    }
}

/// Reads a control flag: `positive`/`pos`/`+1`/`1`… or `negative`/`neg`/`-1`/`dmso`….
pub fn control_of(value: &str) -> Option<Control> {
    match value.trim().to_ascii_lowercase().as_str() {
        "positive" | "pos" | "+1" | "1" | "p" | "positive_control" | "ctrl+" => {
            Some(Control::Positive)
        }
        "negative" | "neg" | "-1" | "n" | "negative_control" | "ctrl-" | "dmso" => {
            Some(Control::Negative)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_names_normalise() {
        assert_eq!(normalize_well("A-01").as_deref(), Some("A01"));
        assert_eq!(normalize_well("a1").as_deref(), Some("A01"));
        assert_eq!(normalize_well("H12").as_deref(), Some("H12"));
        assert_eq!(normalize_well("r02c03").as_deref(), Some("B03"));
        assert_eq!(normalize_well("AF48").as_deref(), Some("AF48"));
        assert_eq!(normalize_well("12"), None);
        assert_eq!(normalize_well("A0"), None);
    }

    #[test]
    fn row_and_column_maps_join_and_report_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        std::fs::write(
            &p,
            "ImageNumber,Column,Row,Dose,SBS_Controls\n1,01,A,0,-1\n2,02,A,5,0\n3,01,A,0,1\n",
        )
        .unwrap();
        let m = PlateMap::read(&p).unwrap();
        assert!(!m.has_plate_column());
        assert_eq!(m.lookup("any", "A-02").unwrap().values[3], "5");
        assert_eq!(m.duplicates, vec![(4, 2)]);
        let c = m.control_column(None).unwrap().unwrap();
        assert_eq!(m.columns[c], "SBS_Controls");
        assert_eq!(control_of("-1"), Some(Control::Negative));
        assert_eq!(control_of("0"), None);
    }

    #[test]
    fn a_map_without_wells_is_refused_with_its_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        std::fs::write(&p, "plate,dose\nP1,3\n").unwrap();
        let e = PlateMap::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("no well column") && e.contains("plate, dose"),
            "{e}"
        );
    }
}
