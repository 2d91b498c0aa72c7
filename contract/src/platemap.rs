//! The plate map: a CSV that gives each (plate, well) its labels, treatments, doses and
//! control flags. Column names vary between labs, so the plate and well columns are found by
//! name (`plate`/`Metadata_Plate`, `well`/`Metadata_Well`, or `row` + `column`), and well names
//! are normalised (`A-01`, `a1`, `A01` are the same well). Encodings, separators and grid
//! layouts are made into one long table first ([`crate::plate_layout`]).

use crate::wells::{parse_well, well_name};
use anyhow::Context as _;
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
    /// Every row as read, duplicates included (what a task's slice is cut from).
    all_rows: Vec<Row>,
    /// Each plate's rows in `all_rows`, so that cutting one slice per plate (or per well)
    /// does not read every row each time: that was quadratic in the map's size.
    plate_rows: HashMap<String, Vec<usize>>,
    /// Drawn as one grid layout for every plate (no plate column, on purpose).
    pub every_plate: bool,
    /// The columns that name the plate and the well (`None` where the well is made of a
    /// row and a column).
    pub plate_column: Option<usize>,
    pub well_column: Option<usize>,
}

/// A control well's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Positive,
    Negative,
}

/// `A-01`, `a1`, `A01`, `r01c01` → `A01`; `None` when it is not a well name.
/// Whether a plate-map cell says "no value": empty, or what R (`NA`), pandas (`nan`) and
/// spreadsheets (`-`, `n/a`, `none`) write for it. Such a well is undosed or unlabelled,
/// never a dose or a class called "NA".
pub fn is_missing_value(raw: &str) -> bool {
    let raw = raw.trim();
    // Excel's error values (`#N/A` from a failed VLOOKUP, `#VALUE!`, ...), SQL's `NULL` and
    // pandas's `<NA>` too: a class called "#N/A" would be trained and scored.
    const MISSING: &[&str] = &[
        "na", "n/a", "nan", "-", "none", "null", "<na>", "#n/a", "#na", "#value!", "#ref!",
        "#div/0!", "#num!", "#name?", "#null!",
    ];
    raw.is_empty() || MISSING.contains(&raw.to_ascii_lowercase().as_str())
}

/// The plate name a task's images get when the file-name pattern has no `{plate}`.
pub const UNNAMED_PLATE: &str = "plate";

/// Two rows of one well that disagree in a column: (plate and well as written in messages,
/// first line, other line, column name, first value, other value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub well: String,
    pub first_line: usize,
    pub line: usize,
    pub column: String,
    pub first: String,
    pub other: String,
}

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

/// The first column whose name is one of `names`, compared by letters and digits only,
/// case-insensitively: `Well Position`, `well_position` and `WellPosition` are one name.
fn find(columns: &[String], names: &[&str]) -> Option<usize> {
    let names: Vec<String> = names.iter().map(|n| bare_name(n)).collect();
    columns.iter().position(|c| names.contains(&bare_name(c)))
}

/// The column of `columns` that holds each well's treatment: in a plate map, or in a table
/// that carries its columns as `features` names them (`Metadata_Treatment`,
/// `Metadata_compound`).
pub fn treatment_column_of(columns: &[String]) -> Option<usize> {
    find(
        columns,
        &[
            "treatment",
            "compound",
            "perturbation",
            "condition",
            "metadata_treatment",
            "metadata_compound",
            "metadata_perturbation",
            "metadata_condition",
        ],
    )
}

/// A column name's letters and digits, lower-case.
fn bare_name(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl PlateMap {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read the plate map {file}"))?;
        Self::parse(&file, &bytes)
    }

    /// Reads plate-map text; `file` names it in messages.
    pub fn parse(file: &str, bytes: &[u8]) -> anyhow::Result<Self> {
        let file = file.to_string();
        // Any encoding, separator or grid layout, as one long comma-separated table.
        let long = crate::plate_layout::long_table(&file, bytes)?;
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(false)
            .trim(csv::Trim::All)
            .from_reader(long.text.as_bytes());
        let columns: Vec<String> = rdr
            .headers()
            .with_context(|| format!("plate map {file}: no header line"))?
            .iter()
            .map(str::to_string)
            .collect();
        // Names as labs, instruments and public screens (JUMP's `well_position`,
        // `Metadata_Plate`) write them; a layout's name (`plate_map_name`) is not a plate.
        let plate_col = find(
            &columns,
            &[
                "plate",
                "metadata_plate",
                "plate_id",
                "plate_name",
                "barcode",
                "plate_barcode",
                "assay_plate_barcode",
                "metadata_assay_plate_barcode",
                "metadata_barcode",
            ],
        );
        let well_col = find(
            &columns,
            &[
                "well",
                "metadata_well",
                "well_id",
                "wellname",
                "well_position",
                "metadata_well_position",
            ],
        );
        let row_col = find(&columns, &["row", "metadata_row", "well_row"]);
        let col_col = find(
            &columns,
            &[
                "column",
                "col",
                "metadata_column",
                "metadata_col",
                "well_column",
            ],
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
            every_plate: long.every_plate,
            plate_column: plate_col,
            well_column: well_col,
            ..Default::default()
        };
        for (i, rec) in rdr.records().enumerate() {
            let line = long.lines.get(i).copied().unwrap_or(i + 2);
            let rec = rec.with_context(|| format!("plate map {file}, line {line}"))?;
            let raw_well = match (well_col, row_col, col_col) {
                (Some(w), _, _) => rec.get(w).unwrap_or("").to_string(),
                (None, Some(r), Some(c)) => {
                    let (r, c) = (rec.get(r).unwrap_or(""), rec.get(c).unwrap_or(""));
                    // Harmony and Columbus number rows too (`Row 2, Column 3` is B03).
                    if !r.is_empty() && r.chars().all(|ch| ch.is_ascii_digit()) {
                        format!("r{r}c{c}")
                    } else {
                        format!("{r}{c}")
                    }
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
            // A plate written once per block (or in merged cells) leaves the rest blank:
            // their wells would match no plate, and their labels and doses be lost.
            if let (Some(p), Some("")) = (plate_col, plate.as_deref()) {
                anyhow::bail!(
                    "plate map {file}, line {line}: well {well} has no plate (its `{}` cell \
                     is empty): write the plate on every row (a plate written once per block, \
                     or merged cells, leave the others blank), or drop the plate column if \
                     the rows are for every plate",
                    map.columns[p]
                );
            }
            let key = (plate.clone(), well.clone());
            if let Some(p) = &plate {
                let at = map.all_rows.len();
                map.plate_rows.entry(p.clone()).or_default().push(at);
            }
            map.all_rows.push(Row {
                plate: plate.clone(),
                well: well.clone(),
                values: rec.iter().map(str::to_string).collect(),
                line,
            });
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

    /// The plate-map text a task reads: the header and the rows of one plate (or one well of
    /// it; `None`: all rows), sorted, so that neither the file's row order nor other plates'
    /// rows change it. Rows of a map without a plate column apply to every plate. Its digest
    /// is what a task's cache key holds, so appending a plate's rows re-runs only that plate.
    pub fn canonical_slice(&self, plate: Option<&str>, well: Option<&str>) -> Vec<u8> {
        let well = well.map(|w| normalize_well(w).unwrap_or_else(|| w.to_string()));
        // A map with a plate column gives a plate its own rows; one without gives it all.
        let candidates: Vec<&Row> = match (plate, self.plate_column) {
            (Some(p), Some(_)) => self.plate_rows.get(p).map_or_else(Vec::new, |at| {
                at.iter().map(|&i| &self.all_rows[i]).collect()
            }),
            _ => self.all_rows.iter().collect(),
        };
        let mut rows: Vec<&Row> = candidates
            .into_iter()
            .filter(|r| well.as_ref().is_none_or(|w| &r.well == w))
            .collect();
        rows.sort_by(|a, b| (&a.plate, &a.well, &a.values).cmp(&(&b.plate, &b.well, &b.values)));
        let mut w = csv::Writer::from_writer(Vec::new());
        // Writing to memory cannot fail.
        let _ = w.write_record(&self.columns);
        for r in rows {
            let _ = w.write_record(&r.values);
        }
        w.into_inner().unwrap_or_default()
    }

    /// What changed between two versions of a slice, in words: `A04: phenotype normal →
    /// translocated; A05 added`. At most a few changes are named, with a count of the rest.
    pub fn describe_change(old: &PlateMap, new: &PlateMap) -> String {
        let key = |r: &Row| match &r.plate {
            Some(p) => format!("{p} {}", r.well),
            None => r.well.clone(),
        };
        let old_rows: std::collections::BTreeMap<String, &Row> =
            old.rows.iter().map(|r| (key(r), r)).collect();
        let new_rows: std::collections::BTreeMap<String, &Row> =
            new.rows.iter().map(|r| (key(r), r)).collect();
        let mut changes = Vec::new();
        if old.columns != new.columns {
            changes.push(format!(
                "columns {} → {}",
                old.columns.join(","),
                new.columns.join(",")
            ));
        }
        for (k, n) in &new_rows {
            match old_rows.get(k) {
                None => changes.push(format!("{k} added")),
                Some(o) => {
                    let diffs: Vec<String> = new
                        .columns
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| {
                            let j = old.column(c)?;
                            let (a, b) = (o.values.get(j)?, n.values.get(i)?);
                            (a != b).then(|| format!("{c} {a} → {b}"))
                        })
                        .collect();
                    if !diffs.is_empty() {
                        changes.push(format!("{k}: {}", diffs.join(", ")));
                    }
                }
            }
        }
        for k in old_rows.keys().filter(|k| !new_rows.contains_key(*k)) {
            changes.push(format!("{k} removed"));
        }
        if changes.is_empty() {
            "duplicate rows changed".into()
        } else {
            crate::listing::first_few(&changes, 3, "; ")
        }
    }

    pub fn has_plate_column(&self) -> bool {
        self.rows.first().is_some_and(|r| r.plate.is_some())
    }

    /// The row for a plate's well: by (plate, well), or by well alone when the map has no
    /// plate column. Images whose names give no plate ([`UNNAMED_PLATE`]) take the rows of a
    /// map of one plate (validation refuses a map of several for them).
    pub fn lookup(&self, plate: &str, well: &str) -> Option<&Row> {
        let well = normalize_well(well)?;
        let only_plate = || match (plate == UNNAMED_PLATE, self.plate_rows.len()) {
            (true, 1) => self.plate_rows.keys().next().cloned(),
            _ => None,
        };
        self.index
            .get(&(Some(plate.to_string()), well.clone()))
            .or_else(|| self.index.get(&(None, well.clone())))
            .or_else(|| self.index.get(&(Some(only_plate()?), well)))
            .map(|&i| &self.rows[i])
    }

    /// The distinct plates the map names (none without a plate column).
    pub fn plates(&self) -> Vec<&str> {
        let mut p: Vec<&str> = self.plate_rows.keys().map(String::as_str).collect();
        p.sort_unstable();
        p
    }

    /// Rows that repeat a well with other values in `columns`, in file order. Rows of one
    /// well may differ elsewhere (a map of images lists a well once per field, with its
    /// `ImageNumber`); in a column a step reads, the step could only pick one.
    pub fn conflicts(&self, columns: &[usize]) -> Vec<Conflict> {
        let mut out = Vec::new();
        for r in &self.all_rows {
            let Some(&first) = self.index.get(&(r.plate.clone(), r.well.clone())) else {
                continue;
            };
            let f = &self.rows[first];
            if f.line == r.line {
                continue;
            }
            for &c in columns {
                let (a, b) = (
                    f.values.get(c).map_or("", |v| v.as_str()),
                    r.values.get(c).map_or("", |v| v.as_str()),
                );
                if a != b {
                    out.push(Conflict {
                        well: match &r.plate {
                            Some(p) => format!("{p} {}", r.well),
                            None => r.well.clone(),
                        },
                        first_line: f.line,
                        line: r.line,
                        column: self.columns.get(c).cloned().unwrap_or_default(),
                        first: a.to_string(),
                        other: b.to_string(),
                    });
                }
            }
        }
        out
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
            let c = bare_name(c);
            matches!(
                c.as_str(),
                "control" | "controls" | "controltype" | "metadatacontroltype"
            ) || (c.ends_with("controls") && c.len() > "controls".len())
        }))
    }

    /// The column with each well's dose: `explicit`, or the one column whose name contains
    /// `dose` or `conc` (case-insensitively: `SBS_Doses`, `concentration_uM`). Several such
    /// columns are refused: the pipeline must name one with `dose:`.
    pub fn dose_column(&self, explicit: Option<&str>) -> anyhow::Result<Option<usize>> {
        if let Some(name) = explicit {
            return self.required_column(name).map(Some);
        }
        let found: Vec<usize> = (0..self.columns.len())
            .filter(|&i| {
                let c = self.columns[i].to_ascii_lowercase();
                c.contains("dose") || c.contains("conc")
            })
            .collect();
        match found[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => anyhow::bail!(
                "plate map {} has several dose-like columns ({}): name the one to fit with `dose:`",
                self.file,
                found
                    .iter()
                    .map(|&i| self.columns[i].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The column naming each well's treatment, if one is called `treatment`, `compound`,
    /// `perturbation` or `condition` (with or without `Metadata_`).
    pub fn treatment_column(&self) -> Option<usize> {
        treatment_column_of(&self.columns)
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

/// Reads a control flag: `positive`/`pos`/`+1`/`1`… or `negative`/`neg`/`-1`/`dmso`…; JUMP's
/// `negcon` and `poscon_*` too.
pub fn control_of(value: &str) -> Option<Control> {
    let v = value.trim().to_ascii_lowercase().replace(' ', "_");
    match v.as_str() {
        "positive" | "pos" | "+1" | "1" | "p" | "positive_control" | "ctrl+" | "pos_ctrl"
        | "posctrl" => Some(Control::Positive),
        "negative" | "neg" | "-1" | "n" | "negative_control" | "ctrl-" | "dmso" | "negcon"
        | "neg_ctrl" | "negctrl" | "vehicle" | "mock" => Some(Control::Negative),
        _ if v.starts_with("poscon") => Some(Control::Positive),
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
        assert_eq!(m.dose_column(None).unwrap(), Some(3));
        assert_eq!(m.dose_column(Some("dose")).unwrap(), Some(3));
        assert!(m.dose_column(Some("conc")).is_err());
        let two = PlateMap::parse("two.csv", b"well,dose,Concentration_uM\nA01,1,2\n").unwrap();
        let e = two.dose_column(None).unwrap_err().to_string();
        assert!(
            e.contains("several dose-like columns (dose, Concentration_uM)")
                && e.contains("`dose:`"),
            "{e}"
        );
        assert_eq!(two.dose_column(Some("concentration_um")).unwrap(), Some(2));
        assert_eq!(control_of("-1"), Some(Control::Negative));
        assert_eq!(control_of("0"), None);
    }

    /// Harmony/Columbus maps number their rows: `Row 2, Column 3` is B03, as in file names.
    #[test]
    fn numbered_rows_and_columns_are_wells() {
        let m = PlateMap::parse("m.csv", b"Row,Column,compound\n2,3,DMSO\n16,24,Taxol\n").unwrap();
        assert_eq!(m.lookup("any", "B03").unwrap().values[2], "DMSO");
        assert_eq!(m.lookup("any", "P24").unwrap().values[2], "Taxol");
    }

    /// A plate written once per block leaves the other rows' plate blank: refused, naming
    /// the line (those wells matched no plate and lost their labels in silence).
    #[test]
    fn a_blank_plate_cell_is_refused_with_its_line() {
        let e = PlateMap::parse(
            "m.csv",
            b"plate,well,phenotype\nP1,A01,normal\n,A02,mutant\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("m.csv, line 3") && e.contains("well A02 has no plate"),
            "{e}"
        );
    }

    /// What spreadsheets and databases write for "no value" is no value, not a class.
    #[test]
    fn spreadsheet_errors_and_nulls_are_missing_values() {
        for v in ["#N/A", "NULL", "<NA>", "#VALUE!", "#DIV/0!", " na ", ""] {
            assert!(is_missing_value(v), "{v}");
        }
        for v in ["DMSO", "0", "normal", "N"] {
            assert!(!is_missing_value(v), "{v}");
        }
    }

    #[test]
    fn a_plate_slice_ignores_row_order_and_other_plates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        std::fs::write(&p, "plate,well,label\nP1,A01,x\nP2,A01,y\nP1,A02,z\n").unwrap();
        let a = PlateMap::read(&p).unwrap();
        std::fs::write(
            &p,
            "plate,well,label\nP1,A02,z\nP3,A01,new\nP1,A01,x\nP2,A01,changed\n",
        )
        .unwrap();
        let b = PlateMap::read(&p).unwrap();
        assert_eq!(
            a.canonical_slice(Some("P1"), None),
            b.canonical_slice(Some("P1"), None)
        );
        assert_ne!(
            a.canonical_slice(Some("P2"), None),
            b.canonical_slice(Some("P2"), None)
        );
        assert_eq!(
            String::from_utf8(a.canonical_slice(Some("P1"), Some("A-02"))).unwrap(),
            "plate,well,label\nP1,A02,z\n"
        );
        assert_ne!(a.canonical_slice(None, None), b.canonical_slice(None, None));
        let (s1, s2) = (
            a.canonical_slice(Some("P2"), None),
            b.canonical_slice(Some("P2"), None),
        );
        let change = PlateMap::describe_change(
            &PlateMap::parse("m", &s1).unwrap(),
            &PlateMap::parse("m", &s2).unwrap(),
        );
        assert_eq!(change, "P2 A01: label y → changed");
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

    /// Column names as instruments and public screens write them: JUMP's plate maps
    /// (`well_position`, `control_type` of `negcon`/`poscon_cp`), spaced and capitalised
    /// names; the layout's name (`plate_map_name`) is not taken for the plate.
    #[test]
    fn columns_are_found_by_their_letters_whatever_the_spelling() {
        let jump = "plate_map_name,well_position,broad_sample,control_type\n\
                    L1,A01,BRD-1,negcon\n\
                    L1,A02,BRD-2,poscon_cp\n\
                    L1,A03,BRD-3,trt\n";
        let m = PlateMap::parse("jump.csv", jump.as_bytes()).unwrap();
        assert!(!m.has_plate_column());
        let c = m.control_column(None).unwrap().unwrap();
        let roles: Vec<Option<Control>> = ["A01", "A02", "A03"]
            .iter()
            .map(|w| control_of(&m.lookup("any", w).unwrap().values[c]))
            .collect();
        assert_eq!(
            roles,
            [Some(Control::Negative), Some(Control::Positive), None]
        );
        let spaced = "Plate Barcode;Well Position;Compound;Concentration (µM);Control Type\n\
                      B1;A1;DMSO;0;Negative Control\n\
                      B1;A2;X;0,25;\n";
        let m = PlateMap::parse("spaced.csv", spaced.as_bytes()).unwrap();
        assert!(m.has_plate_column());
        let row = m.lookup("B1", "A02").unwrap();
        assert_eq!(row.values[3], "0.25");
        assert_eq!(m.dose_column(None).unwrap(), Some(3));
        assert_eq!(m.treatment_column(), Some(2));
        let c = m.control_column(None).unwrap().unwrap();
        assert_eq!(
            control_of(&m.lookup("B1", "A01").unwrap().values[c]),
            Some(Control::Negative)
        );
    }

    /// A grid drawn once is every plate's; its rows carry the lines of the grid.
    #[test]
    fn a_grid_layout_is_every_plates_map() {
        let grid = "treatment,1,2\nA,DMSO,drug\n\ncontrol,1,2\nA,negative,\n";
        let m = PlateMap::parse("grid.csv", grid.as_bytes()).unwrap();
        assert!(m.every_plate && !m.has_plate_column());
        assert_eq!(m.columns, ["well", "treatment", "control"]);
        let a2 = m.lookup("P7", "A2").unwrap();
        assert_eq!((a2.values[1].as_str(), a2.line), ("drug", 2));
    }
}
