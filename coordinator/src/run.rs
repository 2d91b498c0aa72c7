//! Preparing a run: validate the pipeline, list and hash its images, expand the plan, and
//! compute each task's key parts once its upstream outputs are known.

use crate::dataset::{hash_with_cache, Dataset, HashStats};
use crate::db::Db;
use crate::key::KeyParts;
use crate::plan::{expand, Plan, TaskIdx};
use crate::spec::against_data::DataFacts;
use crate::spec::{self, Pipeline};
use plateflow_contract::params::TaskParams;
use plateflow_contract::platemap::PlateMap;
use plateflow_store::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything about a run that does not change while it runs.
#[derive(Debug, Clone)]
pub struct PreparedRun {
    pub id: u64,
    pub pipeline: Pipeline,
    pub dataset: Dataset,
    pub plan: Plan,
    /// Canonical JSON of each step's parameters.
    pub step_params: Vec<String>,
    /// Each step's `files:` with their digests (name, absolute path, digest).
    pub step_files: Vec<Vec<(String, PathBuf, Digest)>>,
    /// The plate map's file name and, per task that reads it, the digest of its slice: the
    /// header and the rows of the task's own plate (or well), canonical (see
    /// [`PlateMap::canonical_slice`]); aggregates read every row.
    pub plate_map_name: String,
    pub task_plate_map: Vec<Option<Digest>>,
    /// The slices' bytes, to put in the store before tasks are sent.
    pub plate_map_blobs: BTreeMap<Digest, Vec<u8>>,
    /// Step names or task labels to run even when cached.
    pub force: Vec<String>,
    pub hash_stats: HashStats,
}

impl PreparedRun {
    pub fn label(&self, t: TaskIdx) -> String {
        self.plan.label(&self.pipeline, &self.dataset, t)
    }

    pub fn step_of(&self, t: TaskIdx) -> &spec::StepSpec {
        &self.pipeline.steps[self.plan.tasks[t as usize].step as usize]
    }

    pub fn is_forced(&self, t: TaskIdx) -> bool {
        if self.force.is_empty() {
            return false;
        }
        let step = &self.step_of(t).name;
        self.force
            .iter()
            .any(|f| f == step || f == "all" || *f == self.label(t))
    }

    /// How a task's plate-map slice is named among its key's inputs, from the task's fan-out
    /// `fields`: `plate_map:platemap.csv[plate=P2]` for a per-plate task, the bare name for an
    /// aggregate.
    fn plate_map_key_name(&self, fields: &BTreeMap<String, String>) -> String {
        let scope: Vec<String> = fields
            .iter()
            .filter(|(k, _)| *k == "plate" || *k == "well")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if scope.is_empty() {
            format!("plate_map:{}", self.plate_map_name)
        } else {
            format!("plate_map:{}[{}]", self.plate_map_name, scope.join(","))
        }
    }

    /// Why one of the task's input files cannot be used, if one cannot.
    pub fn unusable_input(&self, t: TaskIdx) -> Option<&str> {
        self.plan.tasks[t as usize]
            .inputs
            .iter()
            .find_map(|&i| self.dataset.images[i as usize].problem.as_deref())
    }

    /// The key parts of a task, given the outputs of its upstream tasks.
    pub fn key_parts<'a>(
        &self,
        t: TaskIdx,
        upstream_outputs: impl Fn(TaskIdx) -> &'a [(String, Digest)],
    ) -> KeyParts {
        let task = &self.plan.tasks[t as usize];
        let step = &self.pipeline.steps[task.step as usize];
        let mut parts = KeyParts {
            kind: format!("{}@{}", step.kind.name, step.kind.version),
            params: self.step_params[task.step as usize].clone(),
            fields: self
                .plan
                .fields(&self.pipeline, &self.dataset, t)
                .into_iter()
                .collect(),
            inputs: BTreeMap::new(),
            upstream: BTreeMap::new(),
        };
        for &i in &task.inputs {
            let img = &self.dataset.images[i as usize];
            parts.inputs.insert(
                img.rel_path.clone(),
                // An unusable file has no digest; its task fails before a key is needed
                // (`unusable_input`), but a key is still well defined.
                img.digest.clone().unwrap_or_else(|| {
                    plateflow_store::hash_bytes(img.problem.as_deref().unwrap_or("").as_bytes())
                }),
            );
        }
        for (name, _, d) in &self.step_files[task.step as usize] {
            parts.inputs.insert(format!("file:{name}"), d.clone());
        }
        if let Some(d) = &self.task_plate_map[t as usize] {
            let name = self.plate_map_key_name(&parts.fields);
            parts.inputs.insert(name, d.clone());
        }
        for &d in &task.deps {
            let label = self.label(d);
            for (name, digest) in upstream_outputs(d) {
                parts
                    .upstream
                    .insert(format!("{label}/{name}"), digest.clone());
            }
        }
        parts
    }
}

/// The pipeline's own paths under the coordinator's allowed roots (none: anywhere).
fn confine(p: &spec::Pipeline, path: &Path, roots: &[PathBuf]) -> anyhow::Result<()> {
    let mut paths: Vec<(&str, &Path)> = vec![
        ("the workspace", p.workspace.as_path()),
        ("the results directory", p.results.as_path()),
    ];
    if let Some(d) = &p.data {
        paths.push(("the image directory", d.images_root.as_path()));
        if let Some(m) = &d.plate_map {
            paths.push(("the plate map", m.as_path()));
        }
    }
    for s in &p.steps {
        paths.extend(s.files.iter().map(|(_, f)| ("a step file", f.as_path())));
    }
    crate::security::check_confined(roots, path, paths)
}

/// Each plate-map-reading task's slice of the plate map (see [`PreparedRun::task_plate_map`]).
#[allow(clippy::type_complexity)]
fn slice_plate_map(
    pipeline: &Pipeline,
    dataset: &Dataset,
    plan: &Plan,
    map: Option<&PlateMap>,
) -> (String, Vec<Option<Digest>>, BTreeMap<Digest, Vec<u8>>) {
    let mut per_task = vec![None; plan.len()];
    let mut blobs = BTreeMap::new();
    let Some(map) = map else {
        return (String::new(), per_task, blobs);
    };
    let name = map.file.clone();
    let mut by_scope: BTreeMap<(Option<String>, Option<String>), Digest> = BTreeMap::new();
    for (t, task) in plan.tasks.iter().enumerate() {
        if !pipeline.steps[task.step as usize].reads_plate_map {
            continue;
        }
        let fields = plan.fields(pipeline, dataset, t as TaskIdx);
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        let scope = (get("plate"), get("well"));
        let d = by_scope.entry(scope.clone()).or_insert_with(|| {
            let bytes = map.canonical_slice(scope.0.as_deref(), scope.1.as_deref());
            let d = plateflow_store::hash_bytes(&bytes);
            blobs.insert(d.clone(), bytes);
            d
        });
        per_task[t] = Some(d.clone());
    }
    (name, per_task, blobs)
}

/// Everything `plateflow validate` can say without hashing: the file itself, then what it
/// names in its data (plate-map columns, plates). Diagnostics come back as the error.
pub fn validate(path: &Path) -> anyhow::Result<Pipeline> {
    let pipeline = spec::load(path)?;
    let map = read_plate_map(&pipeline)?;
    if let Some(data) = &pipeline.data {
        let ds = Dataset::scan(data)?;
        let facts = DataFacts::of(&ds);
        spec::against_data::check(&pipeline, &facts, map.as_ref())?;
        for w in spec::against_data::warnings(&facts, map.as_ref()) {
            tracing::warn!("{}: {w}", path.display());
        }
    }
    Ok(pipeline)
}

/// Reads the pipeline's plate map (a parse error names the file and line).
pub fn read_plate_map(pipeline: &Pipeline) -> anyhow::Result<Option<PlateMap>> {
    let Some(path) = pipeline.data.as_ref().and_then(|d| d.plate_map.as_ref()) else {
        return Ok(None);
    };
    PlateMap::read(path)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}

/// Validates and plans a pipeline. Slow parts (hashing) use `threads` threads.
/// The unmatched files that are images by their extension (not the plate map, notes or an
/// instrument's XML beside them).
fn unmatched_images(unmatched: &[String]) -> Vec<&String> {
    const IMAGE_EXTENSIONS: [&str; 5] = ["tif", "tiff", "png", "jpg", "jpeg"];
    unmatched
        .iter()
        .filter(|name| {
            Path::new(name.as_str())
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect()
}

pub fn prepare(
    id: u64,
    pipeline_path: &Path,
    yaml: &str,
    force: Vec<String>,
    db: &mut Db,
    threads: usize,
    allowed_roots: &[PathBuf],
) -> anyhow::Result<PreparedRun> {
    let t0 = std::time::Instant::now();
    let pipeline = spec::parse(pipeline_path, yaml)?;
    confine(&pipeline, pipeline_path, allowed_roots)?;
    let plate_map = read_plate_map(&pipeline)?;
    let (dataset, hash_stats) = match &pipeline.data {
        Some(data) => {
            let mut ds = Dataset::scan(data)?;
            if ds.images.is_empty() {
                let seen: Vec<&str> = ds.unmatched.iter().take(3).map(String::as_str).collect();
                anyhow::bail!(
                    "{}: no file under {} matches the pattern `{}`{}",
                    pipeline_path.display(),
                    data.images_root.display(),
                    data.pattern.source,
                    if seen.is_empty() {
                        " (the directory holds no files)".to_string()
                    } else {
                        format!(
                            "; {} files do not match, e.g. {}",
                            ds.unmatched.len(),
                            seen.join(", ")
                        )
                    }
                );
            }
            // Image files the pattern leaves out, beside others it takes: a plate exported as
            // `.TIF`, single-site wells without `_s1`. Left out in silence, their wells were
            // simply missing from every table.
            let left_out = unmatched_images(&ds.unmatched);
            if !left_out.is_empty() {
                tracing::warn!(
                    "{} image file(s) under {} do not match the pattern `{}` and are left out, e.g. {}: change the pattern if they belong to the screen",
                    left_out.len(),
                    data.images_root.display(),
                    data.pattern.source,
                    left_out.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            // Files are listed through links: each must resolve under the allowed roots too.
            if !allowed_roots.is_empty() {
                let paths: Vec<PathBuf> = ds.images.iter().map(|i| ds.abs_path(i)).collect();
                crate::security::check_confined(
                    allowed_roots,
                    pipeline_path,
                    paths.iter().map(|p| ("image", p.as_path())),
                )?;
            }
            let listed = t0.elapsed();
            // What the pipeline names in its data, before any file is read.
            let facts = DataFacts::of(&ds);
            spec::against_data::check(&pipeline, &facts, plate_map.as_ref())?;
            for w in spec::against_data::warnings(&facts, plate_map.as_ref()) {
                tracing::warn!("{}: {w}", pipeline_path.display());
            }
            let stats = ds.hash(db, threads)?;
            tracing::info!(
                files = ds.images.len(),
                hashed = stats.hashed,
                ?listed,
                hashed_by = ?t0.elapsed(),
                "inputs listed and hashed"
            );
            (ds, stats)
        }
        None => (Dataset::default(), HashStats::default()),
    };
    // Step files and the plate map are inputs too: hashed through the same stat cache.
    let extra: Vec<PathBuf> = pipeline
        .steps
        .iter()
        .flat_map(|s| s.files.iter().map(|(_, p)| p.clone()))
        .collect();
    let (digests, _) = hash_with_cache(&extra, db, threads)?;
    let mut digests = digests.into_iter();
    let step_files = pipeline
        .steps
        .iter()
        .map(|s| {
            s.files
                .iter()
                .map(|(n, p)| (n.clone(), p.clone(), digests.next().expect("hashed")))
                .collect()
        })
        .collect();
    let plan = expand(&pipeline, &dataset)?;
    let (plate_map_name, task_plate_map, plate_map_blobs) =
        slice_plate_map(&pipeline, &dataset, &plan, plate_map.as_ref());
    crate::leakage::check(&pipeline, &dataset).map_err(anyhow::Error::msg)?;
    tracing::info!(tasks = plan.len(), planned_by = ?t0.elapsed(), "pipeline planned");
    // What crosses the wire and enters the key: the typed parameters with their defaults,
    // the step's name and the channel names (a renamed channel re-runs the image steps).
    let channels = pipeline
        .data
        .as_ref()
        .map(|d| d.channels.clone())
        .unwrap_or_default();
    // How file names were read into fields: in the key of every step that reads images.
    let pattern = pipeline
        .data
        .as_ref()
        .map(|d| d.pattern.source.clone())
        .unwrap_or_default();
    // Label images (users' masks, training labels) are not measured as images anywhere.
    let label_channels: std::collections::BTreeSet<String> = pipeline
        .steps
        .iter()
        .filter_map(|s| s.params.label_channel().map(str::to_string))
        .collect();
    let step_params = pipeline
        .steps
        .iter()
        .map(|s| {
            TaskParams {
                params: s.params.clone(),
                step: s.name.clone(),
                channels: channels.clone(),
                label_channels: label_channels.clone(),
                image_pattern: if s.reads_images {
                    pattern.clone()
                } else {
                    String::new()
                },
            }
            .encode()
        })
        .collect();
    Ok(PreparedRun {
        id,
        pipeline,
        dataset,
        plan,
        step_params,
        step_files,
        plate_map_name,
        task_plate_map,
        plate_map_blobs,
        force,
        hash_stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmatched_images_are_told_apart_from_other_files() {
        let names: Vec<String> = [
            "P1/A01_s1_w1.TIF",
            "platemap.csv",
            "Index.idx.xml",
            "P1/A02_w1.tif",
            ".DS_Store",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got: Vec<&str> = unmatched_images(&names)
            .into_iter()
            .map(String::as_str)
            .collect();
        assert_eq!(got, ["P1/A01_s1_w1.TIF", "P1/A02_w1.tif"]);
    }
    use plateflow_store::hash_bytes;

    const PIPELINE: &str = "data:\n  images: images\n  pattern: \"{plate}/{well}.tif\"\nsteps:\n  seg:\n    uses: noop\n    for_each: well\n    with: {label: SEG}\n  feat:\n    uses: noop\n    for_each: plate\n    after: [seg]\n    with: {label: FEAT}\n  report:\n    uses: noop\n    after: [feat]\n";

    /// Every task's key, with each upstream task "producing" an output named after its label
    /// (so keys differ only through what this test changes).
    fn keys(dir: &Path, yaml: &str) -> BTreeMap<String, String> {
        let mut db = Db::open(&dir.join("state/plateflow.db")).unwrap();
        let prep = prepare(1, &dir.join("p.yaml"), yaml, vec![], &mut db, 2, &[]).unwrap();
        let fake: Vec<Vec<(String, Digest)>> = (0..prep.plan.len() as TaskIdx)
            .map(|t| vec![("out".to_string(), hash_bytes(prep.label(t).as_bytes()))])
            .collect();
        (0..prep.plan.len() as TaskIdx)
            .map(|t| {
                (
                    prep.label(t),
                    prep.key_parts(t, |d| fake[d as usize].as_slice()).key().0,
                )
            })
            .collect()
    }

    fn changed(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
        a.iter()
            .filter(|(l, k)| b.get(*l) != Some(k))
            .map(|(l, _)| l.clone())
            .collect()
    }

    #[test]
    fn a_change_alters_exactly_the_keys_it_should() {
        let dir = tempfile::tempdir().unwrap();
        for (p, w) in [("P1", "A01"), ("P1", "A02"), ("P2", "A01")] {
            std::fs::create_dir_all(dir.path().join("images").join(p)).unwrap();
            std::fs::write(
                dir.path().join(format!("images/{p}/{w}.tif")),
                format!("{p}{w}"),
            )
            .unwrap();
        }
        let base = keys(dir.path(), PIPELINE);
        assert_eq!(base.len(), 3 + 2 + 1);
        assert_eq!(keys(dir.path(), PIPELINE), base, "same inputs, same keys");

        // A parameter of one step: exactly that step's tasks.
        let k = keys(dir.path(), &PIPELINE.replace("label: FEAT", "label: FEAT2"));
        assert_eq!(changed(&base, &k), vec!["feat[plate=P1]", "feat[plate=P2]"]);

        // One image's content: exactly the task that reads it (its dependents change only
        // if its outputs do, which this test holds fixed).
        std::fs::write(dir.path().join("images/P1/A02.tif"), "changed").unwrap();
        let k = keys(dir.path(), PIPELINE);
        assert_eq!(changed(&base, &k), vec!["seg[plate=P1,well=A02]"]);

        // Formatting of the YAML does not matter: parameters are canonical.
        let k2 = keys(
            dir.path(),
            &PIPELINE.replace("with: {label: SEG}", "with:\n      label: \"SEG\""),
        );
        assert_eq!(k2, k);
    }

    /// A filename pattern corrected to read the same files' fields otherwise (site and
    /// channel swapped) changes the keys of the steps that read images, and only theirs.
    #[test]
    fn a_corrected_pattern_reruns_the_steps_that_read_images() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images/P1")).unwrap();
        for f in ["A01_1_2", "A01_2_1"] {
            std::fs::write(dir.path().join(format!("images/P1/{f}.tif")), f).unwrap();
        }
        let yaml = "data:\n  images: images\n  pattern: \"{plate}/{well}_{site}_{channel}.tif\"\nsteps:\n  read:\n    uses: noop\n    for_each: plate\n  after_it:\n    uses: noop\n    after: [read]\n";
        let base = keys(dir.path(), yaml);
        let k = keys(
            dir.path(),
            &yaml.replace("{well}_{site}_{channel}", "{well}_{channel}_{site}"),
        );
        assert_eq!(changed(&base, &k), vec!["read[plate=P1]"]);
    }

    #[test]
    fn renaming_a_channel_reruns_exactly_the_image_steps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images/P1")).unwrap();
        for c in ["1", "2"] {
            std::fs::write(dir.path().join(format!("images/P1/A01_w{c}.tif")), c).unwrap();
        }
        let yaml = "data:\n  images: images\n  pattern: \"{plate}/{well}_w{channel}.tif\"\n  channels: {\"1\": DNA, \"2\": GFP}\nsteps:\n  seg:\n    uses: segment\n    for_each: plate\n    with: {nuclei: DNA}\n  other:\n    uses: noop\n    for_each: plate\n";
        let base = keys(dir.path(), yaml);
        let k = keys(dir.path(), &yaml.replace("GFP}", "Actin}"));
        assert_eq!(changed(&base, &k), vec!["seg[plate=P1]"]);
    }
}
