//! The second half of validation: what a pipeline names in its data. Plate-map columns named
//! by `label`, `group_by`, `controls` and `dose` must be in the plate map's header (and a
//! dose column, when not named, must be the only one that looks like one); a plate map for
//! several plates needs a plate column; `holdout:` and `plates:` must name plates that exist;
//! an `evaluate` step must have something to score. Every problem is reported at once, at its
//! line in the pipeline file, before anything runs.
//!
//! A plain function over the pipeline, the image listing's field values and the plate map: no
//! hashing, so `plateflow validate` runs it too.

use super::diag::{did_you_mean, edit_distance, Diagnostics, Mark, Reporter};
use super::{Pipeline, StepSpec};
use plateflow_contract::listing::first_few;
use plateflow_contract::params::StepParams;
use plateflow_contract::platemap::PlateMap;
use plateflow_contract::StepKind;
use std::collections::{BTreeMap, BTreeSet};

/// What validation knows of the data without reading any image.
#[derive(Debug, Clone, Default)]
pub struct DataFacts {
    /// Each filename-pattern field's values among the listed images.
    pub field_values: BTreeMap<String, BTreeSet<String>>,
}

impl DataFacts {
    pub fn of(ds: &crate::dataset::Dataset) -> DataFacts {
        let mut field_values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for img in &ds.images {
            for (f, &v) in ds.fields.iter().zip(&img.fields) {
                field_values
                    .entry(f.clone())
                    .or_default()
                    .insert(ds.values.get(v).to_string());
            }
        }
        DataFacts { field_values }
    }
}

/// What the workers of `plateflow run` offer on this machine.
#[derive(Debug, Clone, Default)]
pub struct LocalOffer {
    pub memory_bytes: u64,
    pub gpus: u32,
    /// Built with the `cuda` feature (Candle's GPU steps need it).
    pub cuda_build: bool,
}

/// A step that asks for more than any local worker offers would wait forever: refuse it,
/// at its `resources:` line, before anything runs.
pub fn fits_local_workers(pipeline: &Pipeline, offer: &LocalOffer) -> Result<(), Diagnostics> {
    let mut r = Reporter::new(&pipeline.file, &pipeline.source);
    for s in &pipeline.steps {
        let (mark, width) = s.resources_mark;
        let res = &s.resources;
        if offer.memory_bytes > 0 && res.memory_bytes > offer.memory_bytes {
            r.error_hint(
                mark,
                width,
                format!(
                    "step `{}` asks for {} of memory; this machine has {}",
                    s.name,
                    plateflow_contract::units::show_bytes(res.memory_bytes),
                    plateflow_contract::units::show_bytes(offer.memory_bytes)
                ),
                Some("lower `memory:`, or run it on a bigger node (`plateflow coordinator` + `plateflow worker`)".into()),
            );
        }
        if res.gpus > offer.gpus {
            r.error_hint(
                mark,
                width,
                format!(
                    "step `{}` asks for {} GPU(s); local workers see {} (through CUDA_VISIBLE_DEVICES)",
                    s.name, res.gpus, offer.gpus
                ),
                Some("remove `gpus:` to run on the CPU, or run it where there are GPUs".into()),
            );
        } else if res.gpus > 0 && res.needs_cuda_build && !offer.cuda_build {
            r.error_hint(
                mark,
                width,
                format!(
                    "step `{}` asks for a GPU, but this plateflow was built without CUDA",
                    s.name
                ),
                Some("build with `cargo build --release -p plateflow --features cuda`, or remove `gpus:`".into()),
            );
        }
    }
    r.finish()
}

/// Whether two plate names are one plate spelled two ways: equal once case, punctuation and
/// leading zeros of numbers are set aside (`P01` = `p1`, `Plate_5` = `plate5`; `P1` ≠ `P2`).
fn same_plate(a: &str, b: &str) -> bool {
    fn canonical(s: &str) -> String {
        let mut out = String::new();
        let mut digits = String::new();
        for c in s.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if !digits.is_empty() {
                let trimmed = digits.trim_start_matches('0');
                out.push_str(if trimmed.is_empty() { "0" } else { trimmed });
                digits.clear();
            }
            if c.is_alphanumeric() {
                out.extend(c.to_lowercase());
            }
        }
        out
    }
    a != b && canonical(a) == canonical(b)
}

/// "the plates are: P1, P2, P3", led by a guess where the name is long enough for a typo to
/// be told apart from another plate (`P9` is no misspelt `P1`).
fn one_of(word: &str, known: &[&str], what: &str) -> String {
    let list = format!("the {what}s are: {}", known.join(", "));
    match did_you_mean(word, known.iter().copied()) {
        Some(g) if word.chars().count() >= 4 => format!("{g} {list}"),
        _ => list,
    }
}

struct Checker<'a> {
    r: Reporter<'a>,
    p: &'a Pipeline,
    facts: &'a DataFacts,
    map: Option<&'a PlateMap>,
}

/// The images' plates that a plate map with a plate column has no row for.
fn plates_without_rows<'f>(facts: &'f DataFacts, map: &PlateMap) -> Vec<&'f str> {
    if !map.has_plate_column() {
        return Vec::new();
    }
    let in_map: BTreeSet<&str> = map.rows.iter().filter_map(|r| r.plate.as_deref()).collect();
    facts
        .field_values
        .get("plate")
        .into_iter()
        .flatten()
        .map(String::as_str)
        .filter(|p| !in_map.contains(p))
        .collect()
}

/// What `check` lets pass but the user should hear, for the log: image plates that a plate
/// map has no row for while it has rows for others. A map may leave plates out on purpose
/// (a plate of controls only), so this is not refused; but those wells have no label, dose or
/// control, so `train` and the readouts leave them out, and a plate spelt past recognition
/// (`Plate 7` against `20241105_p07`) would otherwise go unnoticed.
pub fn warnings(facts: &DataFacts, map: Option<&PlateMap>) -> Vec<String> {
    let Some(map) = map else { return Vec::new() };
    let missing = plates_without_rows(facts, map);
    let images = facts.field_values.get("plate").map_or(0, BTreeSet::len);
    if missing.is_empty() || missing.len() == images {
        // None missing, or none in the map: `check` refuses the latter.
        return Vec::new();
    }
    vec![format!(
        "{} of the images' {images} plates have no row in plate map `{}`: {}; their wells get \
         no label, dose or control, so training and readouts leave them out (the map's \
         plates: {}). Add their rows, or spell the map's plate column as the file names do",
        missing.len(),
        map.file,
        first_few(missing.iter().copied(), 5, ", "),
        first_few(map.plates().into_iter(), 5, ", "),
    )]
}

/// Checks `pipeline` against its data; `map` is its plate map, already read.
pub fn check(
    pipeline: &Pipeline,
    facts: &DataFacts,
    map: Option<&PlateMap>,
) -> Result<(), Diagnostics> {
    let mut c = Checker {
        r: Reporter::new(&pipeline.file, &pipeline.source),
        p: pipeline,
        facts,
        map,
    };
    c.plate_column();
    c.plate_names();
    c.unnamed_plates();
    c.conflicting_rows();
    c.channel_values();
    for step in &pipeline.steps {
        c.columns(step);
        if let StepParams::Train(t) = &step.params {
            c.holdout(step, &t.holdout, &t.group_by, t.leaky());
        }
        if let StepParams::Evaluate(_) = &step.params {
            c.evaluate(step);
        }
        match &step.params {
            StepParams::Features(f) if !f.translocation.is_empty() => {
                c.dose_column(step, f.dose.is_some())
            }
            StepParams::Evaluate(e) if step.reads_plate_map => {
                c.dose_column(step, e.dose.is_some())
            }
            _ => {}
        }
    }
    c.r.finish()
}

impl Checker<'_> {
    /// Where a parameter's value (or one item of it) is, or the step's `with:` when unset.
    fn at(&self, step: &StepSpec, param: &str, index: Option<usize>) -> (Mark, usize) {
        match step.param_marks.get(param) {
            Some(m) => m.at(index),
            None => (step.mark, step.name.chars().count()),
        }
    }

    /// Where `plate_map:` is written: problems found in the map are reported there.
    fn map_mark(&self) -> (Mark, usize) {
        self.p
            .data
            .as_ref()
            .map_or((Mark::default(), 1), |d| d.plate_map_mark)
    }

    fn map_name(&self) -> String {
        self.map.map(|m| m.file.clone()).unwrap_or_default()
    }

    /// A map whose rows do not say their plate would apply every row to every plate.
    fn plate_column(&mut self) {
        let Some(map) = self.map else { return };
        let plates = self
            .facts
            .field_values
            .get("plate")
            .map_or(0, BTreeSet::len);
        // A grid drawn once without `plate` lines is meant for every plate.
        if plates < 2 || map.has_plate_column() || map.every_plate {
            return;
        }
        // A letter or two off `plate` (`plaat`, `Plates`, `plate_`): a typo of it.
        let guess = map
            .columns
            .iter()
            .find(|c| edit_distance(&c.to_ascii_lowercase(), "plate") <= 2);
        let hint = match guess {
            Some(g) => format!("its column `{g}` looks like a misspelt `plate`: rename it"),
            None => format!(
                "add a `plate` column (values as in the file names: {})",
                self.values("plate").join(", ")
            ),
        };
        let (mark, width) = self.map_mark();
        self.r.error_hint(
            mark,
            width,
            format!(
                "plate map `{}` has no plate column (columns: {}), but the images come from {plates} plates: every row would apply to every plate",
                map.file,
                map.columns.join(", ")
            ),
            Some(hint),
        );
    }

    /// The map's plates as the file names spell them. A plate the images have and the map
    /// spells otherwise (`P01` and `P1`, `Plate_5` and `plate5`) got no row: its wells had no
    /// label, dose or control, and `train` left the whole plate out in silence. Refused where
    /// the spellings differ only in case, punctuation or leading zeros, or where no image
    /// plate is in the map at all; a map that leaves some plates out on purpose passes.
    fn plate_names(&mut self) {
        let Some(map) = self.map else { return };
        if !map.has_plate_column() {
            return;
        }
        let images = self.values("plate");
        let in_map: BTreeSet<&str> = map.rows.iter().filter_map(|r| r.plate.as_deref()).collect();
        let missing = plates_without_rows(self.facts, map);
        if missing.is_empty() || in_map.is_empty() {
            return;
        }
        let unused: Vec<&str> = in_map
            .iter()
            .copied()
            .filter(|m| !images.iter().any(|p| p == m))
            .collect();
        let respelt: Vec<(&str, &str)> = missing
            .iter()
            .filter_map(|&p| unused.iter().find(|m| same_plate(p, m)).map(|&m| (p, m)))
            .collect();
        let (mark, width) = self.map_mark();
        if !respelt.is_empty() {
            let pairs: Vec<String> = respelt
                .iter()
                .map(|(p, m)| format!("`{p}` (images) / `{m}` (map)"))
                .collect();
            self.r.error_hint(
                mark,
                width,
                format!(
                    "plate map `{}` spells {} plate(s) otherwise than the file names: {};                      their wells would get no row (no label, dose or control)",
                    map.file,
                    respelt.len(),
                    pairs.join(", ")
                ),
                Some("write the map's plate column as the file names spell the plates".into()),
            );
        } else if missing.len() == images.len() {
            self.r.error_hint(
                mark,
                width,
                format!(
                    "none of the image plates ({}) is in plate map `{}`, whose plates are {}",
                    first_few(images.iter().map(String::as_str), 5, ", "),
                    map.file,
                    first_few(in_map.iter().copied(), 5, ", ")
                ),
                Some("the map's plate column must hold the plate names the file names give".into()),
            );
        }
    }

    /// File names without `{plate}` and a map of several plates: which plate's rows are
    /// the images'? (Every lookup missed, and every map column was left empty, in silence.)
    /// A map of one plate is the images' plate.
    fn unnamed_plates(&mut self) {
        let Some(map) = self.map else { return };
        let plates = map.plates();
        if self.facts.field_values.contains_key("plate") || plates.len() < 2 {
            return;
        }
        let (mark, width) = self.map_mark();
        let shown = first_few(plates.iter().copied(), 5, ", ");
        self.r.error_hint(
            mark,
            width,
            format!(
                "the file names give no plate (the pattern has no `{{plate}}`), but plate map `{}` has {} plates ({shown}): which rows are the images' is unknown",
                map.file,
                plates.len()
            ),
            Some("add `{plate}` to the pattern (as a folder: `{plate}/...`), or keep only the imaged plate's rows in the map".into()),
        );
    }

    /// `channels:` maps the file names' channel values to names: a key no file name gives
    /// (`w1: DNA` where the pattern's `_w{channel}` reads `1`) passed validation, every image
    /// was hashed, and then every task failed "no channel `DNA`".
    fn channel_values(&mut self) {
        let Some(data) = &self.p.data else { return };
        let Some(values) = self.facts.field_values.get("channel") else {
            return;
        };
        let unknown: Vec<String> = data
            .channels
            .iter()
            .filter(|(k, _)| !values.contains(*k))
            .map(|(k, v)| format!("`{k}` ({v})"))
            .collect();
        if unknown.is_empty() {
            return;
        }
        let given: Vec<&str> = values.iter().take(8).map(String::as_str).collect();
        let (mark, width) = data.channels_mark;
        self.r.error_hint(
            mark,
            width,
            format!(
                "`channels` names {} that no file name gives: the file names give channel {}",
                unknown.join(", "),
                given.join(", ")
            ),
            Some(format!(
                "key each channel by its value in the file names, e.g. `{}: {}`",
                given.first().copied().unwrap_or("1"),
                data.channels.values().next().map_or("DNA", String::as_str)
            )),
        );
    }

    /// Two rows of one well that disagree in a column a step reads (its label, dose,
    /// control or treatment): a step could only use one of them, and which one would
    /// depend on the order a slice is sorted in.
    fn conflicting_rows(&mut self) {
        let Some(map) = self.map else { return };
        if map.duplicates.is_empty() {
            return;
        }
        let mut used: BTreeSet<usize> = BTreeSet::new();
        for step in &self.p.steps {
            for (_, c) in step.params.plate_map_columns() {
                used.extend(map.column(c));
            }
            if let StepParams::Train(t) = &step.params {
                used.extend(map.column(&t.label));
                used.extend(map.column(&t.group_by));
            }
        }
        used.extend(map.dose_column(None).ok().flatten());
        used.extend(map.control_column(None).ok().flatten());
        used.extend(map.label_column(None).ok().flatten());
        used.extend(plateflow_contract::platemap::treatment_column_of(
            &map.columns,
        ));
        let used: Vec<usize> = used.into_iter().collect();
        let conflicts = map.conflicts(&used);
        if conflicts.is_empty() {
            return;
        }
        let (mark, width) = self.map_mark();
        let shown = first_few(
            conflicts.iter().map(|c| {
                format!(
                    "{} `{}`: `{}` (line {}) and `{}` (line {})",
                    c.well, c.column, c.first, c.first_line, c.other, c.line
                )
            }),
            3,
            "; ",
        );
        self.r.error_hint(
            mark,
            width,
            format!(
                "plate map `{}` gives {} well value(s) twice, differently: {shown}",
                map.file,
                conflicts.len(),
            ),
            Some(
                "keep one row per well (two treatments of one well are one row, e.g. `Taxol+DMSO`)"
                    .into(),
            ),
        );
    }

    fn values(&self, field: &str) -> Vec<String> {
        self.facts
            .field_values
            .get(field)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn is_field(&self, name: &str) -> bool {
        self.facts.field_values.contains_key(name)
            || self
                .p
                .data
                .as_ref()
                .is_some_and(|d| d.pattern.fields.iter().any(|f| f == name))
    }

    /// Plate-map columns the step names must be in the header (case-insensitively).
    fn columns(&mut self, step: &StepSpec) {
        let mut named: Vec<(&str, String)> = step
            .params
            .plate_map_columns()
            .into_iter()
            .map(|(p, c)| (p, c.to_string()))
            .collect();
        if let StepParams::Train(t) = &step.params {
            // `group_by` may be a filename field (plate, batch) or a plate-map column;
            // `label` is checked when it is written out (the CNN reads its crops' labels).
            if !self.is_field(&t.group_by) {
                named.push(("group_by", t.group_by.clone()));
            }
            if t.model == plateflow_contract::params::ModelKind::Logistic
                && step.param_marks.contains_key("label")
            {
                named.push(("label", t.label.clone()));
            }
        }
        for (param, column) in named {
            // A crop's label may come from its file name instead.
            if param == "label" && self.is_field(&column) {
                continue;
            }
            let (mark, width) = self.at(step, param, None);
            match self.map {
                None => self.r.error_hint(
                    mark,
                    width,
                    format!(
                        "step `{}`: `{param}: {column}` names a plate-map column, but the pipeline has no `data.plate_map`",
                        step.name
                    ),
                    Some("add `plate_map: platemap.csv` under `data:`".into()),
                ),
                Some(map) if map.column(&column).is_none() => {
                    let hint = did_you_mean(&column, map.columns.iter().map(String::as_str))
                        .unwrap_or_else(|| format!("its columns are: {}", map.columns.join(", ")));
                    self.r.error_hint(
                        mark,
                        width,
                        format!(
                            "step `{}`: `{param}: {column}`: plate map `{}` has no column `{column}`",
                            step.name,
                            self.map_name()
                        ),
                        Some(hint),
                    );
                }
                Some(_) => {}
            }
        }
    }

    /// A `features` step with translocation readouts, or an `evaluate` step given the plate
    /// map, fits a dose–response against the plate map's dose column: with several dose-like
    /// columns and no `dose:`, it cannot tell which.
    fn dose_column(&mut self, step: &StepSpec, named: bool) {
        let Some(map) = self.map else { return };
        if named {
            return;
        }
        if let Err(e) = map.dose_column(None) {
            let (mark, width) = (step.mark, step.name.chars().count());
            self.r.error_hint(
                mark,
                width,
                format!("step `{}`: {e}", step.name),
                Some("add `dose: COLUMN` under `with:`".into()),
            );
        }
    }

    /// The groups (plates, or values of a plate-map column) a `group_by` can take.
    fn groups(&self, group_by: &str) -> Option<BTreeSet<String>> {
        if let Some(v) = self.facts.field_values.get(group_by) {
            return Some(v.clone());
        }
        let map = self.map?;
        let col = map.column(group_by)?;
        Some(map.rows.iter().map(|r| r.values[col].clone()).collect())
    }

    fn holdout(&mut self, step: &StepSpec, holdout: &[String], group_by: &str, leaky: bool) {
        let Some(groups) = self.groups(group_by) else {
            return;
        };
        let shown: Vec<&str> = groups.iter().map(String::as_str).collect();
        for (i, h) in holdout.iter().enumerate() {
            if !groups.contains(h) {
                let (mark, width) = self.at(step, "holdout", Some(i));
                let hint = one_of(h, &shown, group_by);
                self.r.error_hint(
                    mark,
                    width,
                    format!(
                        "step `{}`: `holdout: {h}` is not a {group_by} of this data set",
                        step.name
                    ),
                    Some(hint),
                );
            }
        }
        let held: BTreeSet<&String> = holdout.iter().collect();
        let training: Vec<&str> = shown
            .iter()
            .copied()
            .filter(|g| !held.contains(&g.to_string()))
            .collect();
        if training.len() < 2 && !leaky {
            let (mark, width) = self.at(step, "holdout", None);
            self.r.error_hint(
                mark,
                width,
                format!(
                    "step `{}`: after `holdout:` only {} {group_by}(s) remain ({}); cross-validation by {group_by} needs at least 2",
                    step.name,
                    training.len(),
                    training.join(", ")
                ),
                Some(format!("hold out fewer {group_by}s, or add data")),
            );
        }
    }

    /// An `evaluate` step scores the holdout of the `train` step it follows, or named plates
    /// with a saved model: it must be left with something to score.
    fn evaluate(&mut self, step: &StepSpec) {
        let StepParams::Evaluate(ev) = &step.params else {
            return;
        };
        let train = step
            .after
            .iter()
            .map(|&a| &self.p.steps[a])
            .find(|s| s.kind.kind == StepKind::Train);
        // Named plates must exist, whatever scores them.
        let plates = self.values("plate");
        let mut unknown = BTreeSet::new();
        for (i, p) in ev.plates.iter().flatten().enumerate() {
            if !plates.is_empty() && !plates.contains(p) {
                unknown.insert(p.clone());
                let (mark, width) = self.at(step, "plates", Some(i));
                let shown: Vec<&str> = plates.iter().map(String::as_str).collect();
                let hint = one_of(p, &shown, "plate");
                self.r.error_hint(
                    mark,
                    width,
                    format!(
                        "step `{}`: `plates: {p}` is not a plate of this data set",
                        step.name
                    ),
                    Some(hint),
                );
            }
        }
        // Scoring the holdout of the `train` step it follows (not a saved model).
        if let (Some(tr), None) = (train, &ev.model) {
            let t = tr.params.as_train().expect("a train step");
            let held: BTreeSet<&str> = t.holdout.iter().map(String::as_str).collect();
            if held.is_empty() {
                let (mark, width) = (step.mark, step.name.chars().count());
                self.r.error_hint(
                        mark,
                        width,
                        format!(
                            "step `{}` has nothing to score: step `{}` holds no {} out of its fitting",
                            step.name, tr.name, t.group_by
                        ),
                        Some(format!(
                            "add `holdout: [{}]` to step `{}`, or give `evaluate` a saved `model:` and new plates",
                            self.values(&t.group_by).last().cloned().unwrap_or_else(|| "P4".into()),
                            tr.name
                        )),
                    );
            }
            for (i, p) in ev.plates.iter().flatten().enumerate() {
                if !held.contains(p.as_str()) && !unknown.contains(p) {
                    let (mark, width) = self.at(step, "plates", Some(i));
                    self.r.error_hint(
                        mark,
                        width,
                        format!(
                            "step `{}`: `plates: {p}`: step `{}` trains on {} {p}",
                            step.name, tr.name, t.group_by
                        ),
                        Some(format!(
                            "evaluate only its `holdout:` {}s ({})",
                            t.group_by,
                            t.holdout.join(", ")
                        )),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(steps: &str) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        crate::spec::parse(&path, &format!("steps:\n{steps}")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn what_no_local_worker_offers_is_refused_at_its_line() {
        let laptop = LocalOffer {
            memory_bytes: 16 << 30,
            gpus: 0,
            cuda_build: false,
        };
        let p = pipeline("  big:\n    uses: noop\n    resources: {memory: 100000T}\n  gpu:\n    uses: noop\n    resources: {gpus: 1}\n  fine:\n    uses: noop\n    resources: {memory: 1G}\n");
        let e = fits_local_workers(&p, &laptop).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.0[0].message.contains("asks for") && e.0[0].mark.line == 4,
            "{e}"
        );
        assert!(
            e.0[1].message.contains("GPU") && e.0[1].mark.line == 7,
            "{e}"
        );
        let p = pipeline("  fit:\n    uses: train\n    resources: {gpus: 1}\n");
        let gpu_box = LocalOffer { gpus: 1, ..laptop };
        let e = fits_local_workers(&p, &gpu_box).unwrap_err();
        assert!(e.0[0].message.contains("without CUDA"), "{e}");
    }

    /// A pipeline of images `{plate}/{well}.tif` with a plate map (its folder kept alive by
    /// the returned guard).
    fn with_plate_map() -> (tempfile::TempDir, Pipeline) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::create_dir(dir.path().join("img")).unwrap();
        std::fs::write(dir.path().join("map.csv"), "").unwrap();
        let p = crate::spec::parse(
            &path,
            "data:\n  images: img\n  pattern: \"{plate}/{well}.tif\"\n  plate_map: map.csv\nsteps:\n  a: {uses: noop}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (dir, p)
    }

    /// A long map without a plate column for images of several plates is refused; a grid
    /// drawn once (no `plate` lines) is meant for every plate and passes.
    #[test]
    fn a_map_for_several_plates_needs_plates_unless_it_is_one_grid() {
        let (_dir, p) = with_plate_map();
        let facts = DataFacts {
            field_values: BTreeMap::from([(
                "plate".to_string(),
                BTreeSet::from(["P1".to_string(), "P2".to_string()]),
            )]),
        };
        let long = PlateMap::parse("map.csv", b"well,treatment\nA01,DMSO\n").unwrap();
        let e = check(&p, &facts, Some(&long)).unwrap_err();
        assert!(
            e.0[0].message.contains("has no plate column") && e.0[0].mark.line == 4,
            "{e}"
        );
        let grid = PlateMap::parse("map.csv", b"treatment,1,2\nA,DMSO,drug\n").unwrap();
        check(&p, &facts, Some(&grid)).unwrap();
    }

    /// Plates the map spells otherwise than the file names are refused, naming both
    /// spellings; a map with none of the image plates is refused; a map that leaves a plate
    /// out, or names more plates, passes.
    #[test]
    fn map_plates_are_spelt_as_the_file_names_spell_them() {
        let (_dir, p) = with_plate_map();
        let facts = |plates: &[&str]| DataFacts {
            field_values: BTreeMap::from([(
                "plate".to_string(),
                plates.iter().map(|p| p.to_string()).collect(),
            )]),
        };
        let map = PlateMap::parse(
            "map.csv",
            b"plate,well,phenotype\nP1,A01,DMSO\nP2,A01,DMSO\nPlate_03,A01,DMSO\n",
        )
        .unwrap();
        let e = check(&p, &facts(&["P1", "P2", "plate3"]), Some(&map)).unwrap_err();
        assert!(
            e.0[0]
                .message
                .contains("`plate3` (images) / `Plate_03` (map)")
                && e.0[0].mark.line == 4,
            "{e}"
        );
        let e = check(&p, &facts(&["BR1", "BR2"]), Some(&map)).unwrap_err();
        assert!(
            e.0[0]
                .message
                .contains("none of the image plates (BR1, BR2)"),
            "{e}"
        );
        // A plate the map leaves out, spelt past recognition or on purpose: it passes, and
        // the run's log names it with the map's plates.
        let (some, all) = (facts(&["P1", "P2", "P4"]), facts(&["P1"]));
        check(&p, &some, Some(&map)).unwrap();
        let w = warnings(&some, Some(&map));
        assert!(
            w.len() == 1
                && w[0]
                    .contains("1 of the images' 3 plates have no row in plate map `map.csv`: P4;")
                && w[0].contains("the map's plates: P1, P2, Plate_03"),
            "{w:?}"
        );
        check(&p, &all, Some(&map)).unwrap();
        assert!(warnings(&all, Some(&map)).is_empty());
        assert!(same_plate("P01", "p1") && !same_plate("P1", "P2") && !same_plate("P10", "P1"));
    }

    /// File names without a plate and a map of several plates are refused (every lookup
    /// missed in silence); a map of one plate is the images'.
    #[test]
    fn images_without_plates_need_a_map_of_one_plate() {
        let (_dir, p) = with_plate_map();
        let no_plate = DataFacts {
            field_values: BTreeMap::from([(
                "well".to_string(),
                BTreeSet::from(["A01".to_string()]),
            )]),
        };
        let two =
            PlateMap::parse("map.csv", b"plate,well,phenotype\nBR1,A01,x\nBR2,A01,y\n").unwrap();
        let e = check(&p, &no_plate, Some(&two)).unwrap_err();
        assert!(
            e.0[0].message.contains("the file names give no plate")
                && e.0[0].message.contains("BR1, BR2"),
            "{e}"
        );
        let one = PlateMap::parse("map.csv", b"plate,well,phenotype\nBR1,A01,x\n").unwrap();
        check(&p, &no_plate, Some(&one)).unwrap();
        assert_eq!(one.lookup("plate", "A01").unwrap().values[2], "x");
        assert!(one.lookup("P7", "A01").is_none());
    }

    /// Two rows of a well that disagree in a column a step reads are refused, naming the
    /// lines; rows that differ only elsewhere (a map of images, one row per field) pass.
    #[test]
    fn a_well_given_two_treatments_is_refused() {
        let (_dir, p) = with_plate_map();
        let facts = DataFacts {
            field_values: BTreeMap::from([(
                "plate".to_string(),
                BTreeSet::from(["P1".to_string()]),
            )]),
        };
        let map = PlateMap::parse(
            "map.csv",
            b"plate,well,compound,ImageNumber\nP1,A01,Taxol,1\nP1,A02,DMSO,2\nP1,A01,DMSO,3\n",
        )
        .unwrap();
        let e = check(&p, &facts, Some(&map)).unwrap_err();
        assert!(
            e.0[0]
                .message
                .contains("P1 A01 `compound`: `Taxol` (line 2) and `DMSO` (line 4)"),
            "{e}"
        );
        let per_field = PlateMap::parse(
            "map.csv",
            b"plate,well,compound,ImageNumber\nP1,A01,Taxol,1\nP1,A01,Taxol,2\n",
        )
        .unwrap();
        check(&p, &facts, Some(&per_field)).unwrap();
    }

    /// A `channels:` key that no file name gives is refused at its line, before any image
    /// is hashed, with the values the file names do give.
    #[test]
    fn channel_keys_must_be_values_the_file_names_give() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("img")).unwrap();
        let p = crate::spec::parse(
            &dir.path().join("p.yaml"),
            "data:\n  images: img\n  pattern: \"{well}_w{channel}.tif\"\n  channels: {w1: DNA, \"2\": GFP}\nsteps:\n  a: {uses: noop}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let facts = DataFacts {
            field_values: BTreeMap::from([(
                "channel".to_string(),
                BTreeSet::from(["1".to_string(), "2".to_string()]),
            )]),
        };
        let e = check(&p, &facts, None).unwrap_err();
        assert!(
            e.0[0]
                .message
                .contains("`w1` (DNA) that no file name gives")
                && e.0[0].message.contains("give channel 1, 2")
                && e.0[0].mark.line == 4,
            "{e}"
        );
    }
}
