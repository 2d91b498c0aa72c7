//! The built-in steps: `curate`, `segment`, `features`, `crops`, `train`, `evaluate` and
//! `report`. Each is a thin
//! adapter from a task's materialised inputs to the `plateflow-imaging` library and back to
//! output files; the science lives in that library, testable without the engine.
//!
//! Conventions shared by the steps:
//! - An *image set* is the images of one field of view: every pattern field but `channel`
//!   (plate, well, site, …) is equal. Its key (`P1_A01_1`) names its output files.
//! - Parameters arrive typed ([`TaskParams`]: decoded once, defaults filled in); each step's
//!   `run` takes its own parameter struct. Channel names come from the pipeline's
//!   `data.channels` and travel with them (so renaming a channel changes the cache key).
//! - Outputs are the files a step writes under `out/`; their paths there are their names.

pub mod card;
pub mod crops;
pub mod curate;
pub mod evaluate;
pub mod explain;
pub mod features;
pub mod illumination;
pub mod interpretation;
pub use plateflow_contract::platemap;
pub mod readout;
pub mod report;
pub mod samples;
pub mod scoring;
pub mod segment;
pub mod train;
pub mod train_segmenter;

use anyhow::Context as _;
use plateflow_contract::params::{StepParams, TaskParams};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What a built-in step sees of its task.
pub struct Context<'a> {
    pub work: &'a Path,
    /// Everything written here is stored as an output.
    pub out: PathBuf,
    /// The task's typed parameters, its step's name and the channel names.
    pub task: &'a TaskParams,
    /// Images: path relative to `work`, pattern fields.
    pub images: &'a [(String, BTreeMap<String, String>)],
    pub plate_map: Option<&'a Path>,
    /// Upstream outputs: (task label, output name, path relative to `work`).
    pub upstream: &'a [(String, String, String)],
    /// Threads the step may use (its `resources.cpus`).
    pub threads: usize,
    /// GPUs the coordinator assigned to the task (its `resources.gpus`), exclusively.
    pub gpu_ids: Vec<u32>,
    /// Human-readable account of the run, stored as the task's stdout.
    pub log: String,
    /// Live progress for the coordinator (the log arrives only at the end).
    pub progress: Option<crate::exec::ProgressTx>,
    /// Where a long step keeps the state of its work so that another attempt of the same
    /// task (after a killed worker) continues it; removed once the coordinator has saved the
    /// task's result.
    pub resume: Option<PathBuf>,
}

impl Context<'_> {
    /// Channel field value → name, from the pipeline's `data.channels`.
    fn channel_names(&self) -> &BTreeMap<String, String> {
        &self.task.channels
    }

    /// Whether `channel` holds label images (a `segment` step's `masks:`, a
    /// `train_segmenter`'s `labels:`), which steps reading "every channel" leave out.
    pub fn is_label_channel(&self, channel: &str) -> bool {
        self.task.label_channels.contains(channel)
    }

    /// The intensity channels of `sets` (every channel but label images), sorted, each once.
    pub fn image_channels(&self, sets: &[ImageSet]) -> Vec<String> {
        let all: std::collections::BTreeSet<&String> =
            sets.iter().flat_map(|s| s.channels.keys()).collect();
        all.into_iter()
            .filter(|c| !self.is_label_channel(c))
            .cloned()
            .collect()
    }

    /// The task's images grouped into image sets, in a stable order.
    pub fn image_sets(&self) -> anyhow::Result<Vec<ImageSet>> {
        let names = self.channel_names();
        // Grouped by the field values themselves, not by the file-name-safe key: `LPS+` and
        // `LPS-` are two conditions though both keys would read `LPS-`.
        let mut by_meta: BTreeMap<Vec<(String, String)>, BTreeMap<String, PathBuf>> =
            BTreeMap::new();
        for (rel, fields) in self.images {
            let meta = set_meta(fields);
            let channel = match fields.get("channel") {
                Some(c) => names.get(c).cloned().unwrap_or_else(|| c.clone()),
                None => "image".to_string(),
            };
            let channels = by_meta.entry(meta).or_default();
            if let Some(prev) = channels.insert(channel.clone(), self.work.join(rel)) {
                anyhow::bail!(
                    "two images for channel {channel} of one image set: {} and {rel}; \
                     the filename pattern must tell them apart",
                    prev.display()
                );
            }
        }
        let mut sets: Vec<ImageSet> = by_meta
            .into_iter()
            .map(|(meta, channels)| ImageSet {
                key: set_key(&meta),
                meta,
                channels,
            })
            .collect();
        // Keys differing only in case name one file on macOS and Windows: both take a suffix
        // from their own values. (Keys whose values a file name could not keep already carry
        // one, so they are alike in every task; see `set_key`.)
        let mut uses: HashMap<String, usize> = HashMap::new();
        for set in &sets {
            *uses.entry(set.key.to_lowercase()).or_default() += 1;
        }
        for set in &mut sets {
            if uses[&set.key.to_lowercase()] > 1 {
                set.key = format!("{}-{}", set.key, values_digest(&set.meta));
            }
        }
        sets.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(sets)
    }

    /// Upstream outputs whose name matches `pred`, with their paths.
    pub fn upstream_files(&self, pred: impl Fn(&str) -> bool) -> Vec<(String, PathBuf)> {
        self.upstream
            .iter()
            .filter(|(_, name, _)| pred(name))
            .map(|(_, name, rel)| (name.clone(), self.work.join(rel)))
            .collect()
    }

    /// Image sets excluded by an upstream `curate` step (its `exclusions.csv`): key → reason.
    pub fn exclusions(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (_, path) in self.upstream_files(|n| n == "exclusions.csv") {
            let mut rdr = csv::Reader::from_path(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let headers = rdr.headers()?.clone();
            let key_col = headers.iter().position(|h| h == "set").context(
                "exclusions.csv without a `set` column: was it written by a `curate` step?",
            )?;
            let reason_col = headers.iter().position(|h| h == "reason");
            for rec in rdr.records() {
                let rec = rec?;
                out.insert(
                    rec.get(key_col).unwrap_or("").to_string(),
                    reason_col
                        .and_then(|c| rec.get(c))
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
        Ok(out)
    }

    pub fn plate_map(&self) -> anyhow::Result<Option<platemap::PlateMap>> {
        self.plate_map.map(platemap::PlateMap::read).transpose()
    }

    /// The device for Candle: the assigned GPU with the `cuda` feature, else the CPU (a GPU
    /// assigned to a build without CUDA falls back to the CPU, and the log says so).
    pub fn device(&mut self) -> candle_core::Device {
        match plateflow_learn::device::for_task(&self.gpu_ids) {
            Ok(d) => d,
            Err(e) => {
                self.logln(format!("running on the CPU: {e}"));
                candle_core::Device::Cpu
            }
        }
    }

    /// A sink for progress messages that long computations can hold (and call from any
    /// thread); messages are dropped when the task has no one listening.
    pub fn progress_sink(&self, prefix: &str) -> plateflow_learn::train::Progress {
        let tx = self.progress.clone();
        let prefix = prefix.to_string();
        plateflow_learn::train::Progress::new(move |m: &str| {
            if let Some(tx) = &tx {
                let _ = tx.send(if prefix.is_empty() {
                    m.to_string()
                } else {
                    format!("{prefix}: {m}")
                });
            }
        })
    }

    pub fn logln(&mut self, line: impl AsRef<str>) {
        self.log.push_str(line.as_ref());
        self.log.push('\n');
    }

    /// Writes an output file atomically (a crash never leaves half a file behind).
    pub fn write_output(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.out.join(name), bytes)
    }
}

/// A JSON file read as `T`; errors name the file (unreadable, or not what `T` expects).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not the JSON expected", path.display()))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// The images of one field of view.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// `P1_A01_1`: field values in [`set_meta`] order, safe as a file name.
    pub key: String,
    /// Pattern fields but `channel`: plate, well, site first, then the others by name. The
    /// well is normalised (`A-01` → `A01`) and a missing plate is [`platemap::UNNAMED_PLATE`].
    pub meta: Vec<(String, String)>,
    /// Channel name → image path.
    pub channels: BTreeMap<String, PathBuf>,
}

impl ImageSet {
    pub fn get(&self, field: &str) -> &str {
        self.meta
            .iter()
            .find(|(k, _)| k == field)
            .map_or("", |(_, v)| v.as_str())
    }
    pub fn plate(&self) -> &str {
        self.get("plate")
    }
    pub fn well(&self) -> &str {
        self.get("well")
    }
    /// The path of a channel's image, or an error naming the channels there are.
    pub fn channel(&self, name: &str) -> anyhow::Result<&Path> {
        self.channels
            .get(name)
            .map(PathBuf::as_path)
            .with_context(|| {
                format!(
                    "image set {} has no channel `{name}` (it has: {}); name channels under \
                 `data.channels` in the pipeline; where a field of the filename differs \
                 between channels but is not metadata (an extension, a suffix), name it with \
                 a leading `_`, e.g. `{{_ext:tif|png}}`, so it does not split the image sets",
                    self.key,
                    self.channels.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }
}

/// `Metadata_Plate`, `Metadata_Well`, … for the image sets' fields (CellProfiler's
/// convention, which pycytominer expects).
pub fn metadata_columns(sets: &[ImageSet]) -> Vec<String> {
    sets.first()
        .map(|s| s.meta.iter().map(|(k, _)| metadata_column(k)).collect())
        .unwrap_or_default()
}

/// `plate` → `Metadata_Plate` (CellProfiler's convention, which pycytominer expects).
pub fn metadata_column(field: &str) -> String {
    let mut c = field.chars();
    match c.next() {
        Some(f) => format!("Metadata_{}{}", f.to_ascii_uppercase(), c.as_str()),
        None => "Metadata_".into(),
    }
}

/// A plate-map column under the same naming: `plate` → `Metadata_Plate`, `metadata_dose` →
/// `Metadata_Dose`, `SBS_Doses` → `Metadata_SBS_Doses`, `Concentration (µM)` →
/// `Metadata_Concentration_µM` (spaces and punctuation as one `_`, so that R, pandas and SQL
/// take the name as it is).
pub fn map_metadata_column(name: &str) -> String {
    let bare = match name.get(..9) {
        Some(p) if p.eq_ignore_ascii_case("metadata_") => &name[9..],
        _ => name,
    };
    let words: Vec<&str> = bare
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    metadata_column(&words.join("_"))
}

/// The plate-map columns a table adds beside its `taken` columns (the filename's fields):
/// (index in the map, name as [`map_metadata_column`] gives it). The map's plate and well
/// columns, and any other named plate or well, are left out: the table has its plate and
/// well already, and databases and pycytominer refuse duplicate columns. Any other map
/// column is kept, under a free name: one that tidies to a taken name or to an earlier map
/// column's (`Site` beside a filename's `{site}`; `Dose (uM)` beside `Dose_uM`) becomes
/// `…_2`. Every table of a step passes the same `taken`, so a map column has one name in all.
pub fn extra_map_columns(
    map: Option<&platemap::PlateMap>,
    taken: &[String],
) -> Vec<(usize, String)> {
    // Every table has these; no map column repeats them.
    const TABLE_KEYS: [&str; 2] = ["Metadata_Plate", "Metadata_Well"];
    let mut seen: Vec<String> = taken
        .iter()
        .map(String::as_str)
        .chain(TABLE_KEYS)
        .map(str::to_ascii_lowercase)
        .collect();
    let mut out = Vec::new();
    // The map's own plate and well columns, whatever their names (`Plate Barcode`,
    // `well_position`): the table has its plate and well already.
    let keys = map.map_or(vec![], |m| {
        m.plate_column.into_iter().chain(m.well_column).collect()
    });
    for (i, c) in map
        .map(|m| m.columns.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if keys.contains(&i) {
            continue;
        }
        let tidy = map_metadata_column(c);
        if TABLE_KEYS.iter().any(|key| key.eq_ignore_ascii_case(&tidy)) {
            continue;
        }
        let name = (1..)
            .map(|n| match n {
                1 => tidy.clone(),
                n => format!("{tidy}_{n}"),
            })
            .find(|n| !seen.contains(&n.to_ascii_lowercase()))
            .expect("some suffix is free");
        seen.push(name.to_ascii_lowercase());
        out.push((i, name));
    }
    out
}

fn set_meta(fields: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut meta = vec![(
        "plate".to_string(),
        fields
            .get("plate")
            .cloned()
            .unwrap_or_else(|| platemap::UNNAMED_PLATE.to_string()),
    )];
    // The well, or one made of row and column fields (`r{row}c{col}` in Opera/Operetta names).
    let col = fields.get("col").or_else(|| fields.get("column"));
    let well = match (fields.get("well"), fields.get("row"), col) {
        (Some(w), _, _) => Some(platemap::normalize_well(w).unwrap_or_else(|| w.clone())),
        (None, Some(r), Some(c)) => {
            let joined = if r.chars().all(|ch| ch.is_ascii_digit()) {
                format!("r{r}c{c}")
            } else {
                format!("{r}{c}")
            };
            Some(platemap::normalize_well(&joined).unwrap_or(joined))
        }
        _ => None,
    };
    if let Some(w) = well {
        meta.push(("well".to_string(), w));
    }
    if let Some(s) = fields.get("site") {
        meta.push(("site".to_string(), s.clone()));
    }
    for (k, v) in fields {
        if !matches!(k.as_str(), "plate" | "well" | "site" | "channel") && !k.starts_with('_') {
            meta.push((k.clone(), v.clone()));
        }
    }
    meta
}

/// Eight hex digits of the SHA-256 of a set's field values: tells apart sets whose values
/// differ only in characters a file name cannot keep.
fn values_digest(meta: &[(String, String)]) -> String {
    let mut h = plateflow_store::Sha256Writer::default();
    for (_, v) in meta {
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.finish().hex()[..8].to_string()
}

/// A file-name-safe name for an image set: its values joined by `_`, each character other
/// than ASCII letters, digits, `-` and `.` written as `-`. Where that changed a value (`P 1`
/// and `P_1` would both read `P-1`; `LPS+` and `LPS-` both `LPS-`), or the name would pass
/// [`MAX_KEY`] bytes, it ends in 8 hex digits of the values' SHA-256 instead. A key depends on
/// its own set's values only, so a task over every plate and one over a single plate name
/// a set alike (exclusions and QC ranks are looked up by key).
fn set_key(meta: &[(String, String)]) -> String {
    let mut changed = false;
    let key = meta
        .iter()
        .map(|(_, v)| {
            v.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        changed = true;
                        '-'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("_");
    if !changed && key.len() <= MAX_KEY {
        return key;
    }
    let kept: String = key.chars().take(MAX_KEY - 9).collect();
    format!("{kept}-{}", values_digest(meta))
}

/// The longest set key: file names hold the key and a suffix (`_nuclei.tif`, and a temporary
/// name's `.pid.seq.tmp` while written) within the 255 bytes most file systems allow.
const MAX_KEY: usize = 120;

/// A CSV field as RFC 4180 writes it: quoted (inner quotes doubled) where it holds a comma,
/// a quote or a line break (a plate map's `2,4-dinitrophenol`, a note with a newline).
pub fn csv_field(c: &str) -> std::borrow::Cow<'_, str> {
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\"")).into()
    } else {
        c.into()
    }
}

/// One CSV line (no line end) of `fields`, each as [`csv_field`] writes it.
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    fields
        .iter()
        .map(|f| csv_field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A CSV table built in memory and written once (tables here are per plate: small).
pub struct Table {
    text: String,
    columns: usize,
}

impl Table {
    pub fn new<S: AsRef<str>>(header: &[S]) -> Self {
        let mut t = Table {
            text: String::new(),
            columns: header.len(),
        };
        t.push_row(header.iter().map(|s| s.as_ref().to_string()));
        t
    }
    pub fn push_row(&mut self, cells: impl IntoIterator<Item = String>) {
        let mut n = 0;
        for (i, c) in cells.into_iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            self.text.push_str(&csv_field(&c));
            n += 1;
        }
        debug_assert_eq!(n, self.columns, "row width differs from the header");
        self.text.push('\n');
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.text.into_bytes()
    }
    /// No row below the header.
    pub fn is_empty(&self) -> bool {
        self.text.lines().nth(1).is_none()
    }
}

/// A number for a CSV cell: empty for NaN (pandas reads it as missing), compact otherwise.
pub fn num(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".into()
        } else {
            s.to_string()
        }
    } else {
        String::new()
    }
}

/// Runs a built-in kind. Errors name the file or parameter at fault.
pub fn run(ctx: &mut Context) -> anyhow::Result<()> {
    std::fs::create_dir_all(&ctx.out)?;
    let task = ctx.task;
    match &task.params {
        StepParams::Curate(p) => curate::run(ctx, p),
        StepParams::Illumination(p) => illumination::run(ctx, p),
        StepParams::Segment(p) => segment::run(ctx, p),
        StepParams::Features(p) => features::run(ctx, p),
        StepParams::Crops(p) => crops::run(ctx, p),
        StepParams::Train(p) => train::run(ctx, p),
        StepParams::TrainSegmenter(p) => train_segmenter::run(ctx, p),
        StepParams::Evaluate(p) => evaluate::run(ctx, p),
        StepParams::Report(p) => report::run(ctx, p),
        other => anyhow::bail!("`{}` is not a built-in step", other.kind()),
    }
}

/// Runs `f` over `items` on up to `threads` threads, keeping the input order of the results.
/// Each thread takes the next item when it is free, so one slow image does not stall others.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                results.lock().expect("results")[i] = Some(r);
            });
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// What the steps' unit tests share: a task context over image files in a folder.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use plateflow_contract::params::{StepParams, TaskParams};

    /// A task of step `step` (parameters unused: each test calls its step's `run` or parts
    /// of it with its own), whose label channels are `labels`.
    pub fn task(step: &str, labels: &[&str]) -> TaskParams {
        TaskParams {
            params: StepParams::Noop(Default::default()),
            step: step.into(),
            channels: Default::default(),
            label_channels: labels.iter().map(|l| l.to_string()).collect(),
            image_pattern: String::new(),
        }
    }

    /// Images as the coordinator lists them: `path` and its pattern fields.
    pub fn images(
        entries: &[(String, Vec<(&str, &str)>)],
    ) -> Vec<(String, BTreeMap<String, String>)> {
        entries
            .iter()
            .map(|(path, fields)| {
                let fields = fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (path.clone(), fields)
            })
            .collect()
    }

    /// One image set of well A01: `{channel}.tif` for each of `channels`.
    pub fn one_well(channels: &[&str]) -> Vec<(String, BTreeMap<String, String>)> {
        let entries: Vec<(String, Vec<(&str, &str)>)> = channels
            .iter()
            .map(|ch| (format!("{ch}.tif"), vec![("well", "A01"), ("channel", *ch)]))
            .collect();
        images(&entries)
    }

    /// The context of `task` over `images` under `work` (outputs in `work/out`), one thread.
    pub fn context<'a>(
        work: &'a Path,
        task: &'a TaskParams,
        images: &'a [(String, BTreeMap<String, String>)],
        upstream: &'a [(String, String, String)],
    ) -> Context<'a> {
        Context {
            work,
            out: work.join("out"),
            task,
            images,
            plate_map: None,
            upstream,
            threads: 1,
            gpu_ids: Vec::new(),
            log: String::new(),
            progress: None,
            resume: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plate_map_columns_take_cellprofiler_names_once() {
        let map = platemap::PlateMap::parse(
            "m.csv",
            b"plate,Well,metadata_dose,SBS_Controls,Metadata_Plate,phenotype\nP1,A01,1,0,P1,x\n",
        )
        .unwrap();
        let taken = vec!["Metadata_Plate".to_string(), "Metadata_Well".to_string()];
        let extra = extra_map_columns(Some(&map), &taken);
        assert_eq!(
            extra,
            vec![
                (2, "Metadata_Dose".to_string()),
                (3, "Metadata_SBS_Controls".to_string()),
                (5, "Metadata_Phenotype".to_string()),
            ]
        );
        assert_eq!(map_metadata_column("é"), "Metadata_é");
        assert!(extra_map_columns(None, &taken).is_empty());
        // Plate and well columns of other names are the table's plate and well; spaces and
        // punctuation become one `_`.
        let map = platemap::PlateMap::parse(
            "m.csv",
            "Plate Barcode,Well Position,Concentration (µM),Control Type\nB1,A01,1,negcon\n"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            extra_map_columns(Some(&map), &taken),
            vec![
                (2, "Metadata_Concentration_µM".to_string()),
                (3, "Metadata_Control_Type".to_string()),
            ]
        );
        // Two map columns that tidy to one name are both kept.
        let map =
            platemap::PlateMap::parse("m.csv", b"well,Dose (uM),Dose_uM,dose uM\nA01,1,2,3\n")
                .unwrap();
        assert_eq!(
            extra_map_columns(Some(&map), &taken),
            vec![
                (1, "Metadata_Dose_uM".to_string()),
                (2, "Metadata_Dose_uM_2".to_string()),
                (3, "Metadata_Dose_uM_3".to_string()),
            ]
        );
        // A map column named like one of the filename's fields is kept, not dropped: the
        // map's `Site` may be another thing than the filename's `{site}`.
        let map = platemap::PlateMap::parse("m.csv", b"well,Site,Metadata_Well\nA01,Boston,A01\n")
            .unwrap();
        let taken_with_site = vec![
            "Metadata_Plate".to_string(),
            "Metadata_Well".to_string(),
            "Metadata_Site".to_string(),
        ];
        assert_eq!(
            extra_map_columns(Some(&map), &taken_with_site),
            vec![(1, "Metadata_Site_2".to_string())]
        );
        // Plate and well are never repeated, whatever a table passes as taken.
        assert_eq!(
            extra_map_columns(Some(&map), &[]),
            vec![(1, "Metadata_Site".to_string())]
        );
    }

    #[test]
    fn sets_group_channels_and_normalise_wells() {
        let entries: Vec<(String, Vec<(&str, &str)>)> = ["1", "2"]
            .iter()
            .map(|c| {
                let fields = vec![("well", "A-01"), ("n", "01"), ("channel", *c)];
                (format!("inputs/Channel{c}-01-A-01.tif"), fields)
            })
            .collect();
        let images = testing::images(&entries);
        let task = TaskParams {
            params: StepParams::Noop(Default::default()),
            step: "s".into(),
            channels: [("1", "GFP"), ("2", "DNA")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            label_channels: Default::default(),
            image_pattern: String::new(),
        };
        let ctx = Context {
            work: Path::new("/w"),
            out: PathBuf::from("/w/out"),
            task: &task,
            images: &images,
            plate_map: None,
            upstream: &[],
            threads: 1,
            gpu_ids: Vec::new(),
            log: String::new(),
            progress: None,
            resume: None,
        };
        let sets = ctx.image_sets().unwrap();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].key, "plate_A01_01");
        assert_eq!(sets[0].well(), "A01");
        assert_eq!(
            sets[0].channel("DNA").unwrap(),
            Path::new("/w/inputs/Channel2-01-A-01.tif")
        );
        let e = sets[0].channel("Actin").unwrap_err().to_string();
        assert!(e.contains("has: DNA, GFP"), "{e}");

        // Conditions that differ only in characters a file name cannot keep are two sets,
        // each under a key of its own, ending in a digest of its values whether or not another
        // set is there to collide (tasks over one plate and over all must agree); keys that
        // differ only in case take one too (one file on macOS); very long keys are cut.
        let long = "x".repeat(300);
        let entries: Vec<(String, Vec<(&str, &str)>)> = [
            "LPS+",
            "LPS-",
            "LPS 1",
            "Dmso",
            "dmso",
            "plain",
            long.as_str(),
        ]
        .iter()
        .map(|cond| {
            let fields = vec![("well", "A01"), ("condition", *cond)];
            (format!("inputs/{cond}.tif"), fields)
        })
        .collect();
        let images = testing::images(&entries);
        let ctx = Context {
            images: &images,
            log: String::new(),
            ..ctx
        };
        let sets = ctx.image_sets().unwrap();
        let keys: Vec<&str> = sets.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys.len(), 7, "{keys:?}");
        let key_of = |cond: &str| {
            sets.iter()
                .find(|s| s.get("condition") == cond)
                .unwrap()
                .key
                .clone()
        };
        let digest = |k: &str, stem: &str| {
            k.len() == stem.len() + 9
                && k.starts_with(stem)
                && k[stem.len()..].starts_with('-')
                && k[stem.len() + 1..].chars().all(|c| c.is_ascii_hexdigit())
        };
        assert!(digest(&key_of("LPS 1"), "plate_A01_LPS-1"), "{keys:?}");
        assert!(digest(&key_of("LPS+"), "plate_A01_LPS-"), "{keys:?}");
        assert_eq!(
            key_of("LPS-"),
            "plate_A01_LPS-",
            "nothing changed: no digest"
        );
        assert_ne!(key_of("LPS+"), key_of("LPS-"));
        assert!(digest(&key_of("Dmso"), "plate_A01_Dmso"), "{keys:?}");
        assert!(digest(&key_of("dmso"), "plate_A01_dmso"), "{keys:?}");
        assert_eq!(key_of("plain"), "plate_A01_plain");
        assert_eq!(key_of(&long).len(), MAX_KEY);
        // Alone in a task, a set keeps its key: `LPS 1`'s does not depend on the others.
        let alone = images[2..3].to_vec();
        let ctx = Context {
            images: &alone,
            log: String::new(),
            ..ctx
        };
        assert_eq!(ctx.image_sets().unwrap()[0].key, key_of("LPS 1"));
    }

    #[test]
    fn wells_come_from_row_and_column_fields() {
        let f = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // r01c01f01p01-ch1.tiff
        let m = set_meta(&f(&[
            ("row", "02"),
            ("col", "11"),
            ("site", "01"),
            ("channel", "1"),
        ]));
        assert!(m.contains(&("well".into(), "B11".into())), "{m:?}");
        // PLATE_A01_s1_w1.TIF read as row letter + column.
        let m = set_meta(&f(&[("plate", "PLATE"), ("row", "A"), ("column", "1")]));
        assert!(m.contains(&("well".into(), "A01".into())), "{m:?}");
    }

    #[test]
    fn numbers_and_quoting_in_tables() {
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(f64::NAN), "");
        let mut t = Table::new(&["a", "b"]);
        t.push_row(["x,y".to_string(), "1".to_string()]);
        assert_eq!(
            String::from_utf8(t.into_bytes()).unwrap(),
            "a,b\n\"x,y\",1\n"
        );
    }

    #[test]
    fn parallel_map_keeps_order() {
        let v: Vec<u32> = (0..100).collect();
        assert_eq!(
            parallel_map(&v, 2, |x| x * 2),
            (0..100).map(|x| x * 2).collect::<Vec<_>>()
        );
    }
}
