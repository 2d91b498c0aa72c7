//! Planning: expand each step into its task instances (one per plate, per well, or one for an
//! aggregate) and connect each task to exactly the upstream tasks it reads.
//!
//! A task of step S depends on the tasks of an upstream step D that agree with it on the fields
//! both fan out over: `features[plate=P1]` reads `segment[plate=P1,well=*]`, an aggregate reads
//! every task of D, and a per-well task reads its plate's per-plate task.

use crate::dataset::Dataset;
use crate::spec::Pipeline;
use rustc_hash::FxHashMap;
use std::ops::Range;

pub type TaskIdx = u32;

#[derive(Debug, Clone)]
pub struct TaskDef {
    pub step: u32,
    /// Interned values of the step's `for_each` fields, in that order.
    pub key_vals: Vec<u32>,
    /// Indices into the dataset's images (empty unless the step reads images).
    pub inputs: Vec<u32>,
    pub deps: Vec<TaskIdx>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub tasks: Vec<TaskDef>,
    /// The tasks of each step, which are contiguous.
    pub steps: Vec<Range<TaskIdx>>,
    pub dependents: Vec<Vec<TaskIdx>>,
}

impl Plan {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// `segment[plate=P1,well=A01]`, or just `report` for an aggregate.
    pub fn label(&self, pipeline: &Pipeline, ds: &Dataset, t: TaskIdx) -> String {
        let task = &self.tasks[t as usize];
        let step = &pipeline.steps[task.step as usize];
        // The contract's format, which `label_path` reads back into result directories.
        plateflow_contract::labels::task_label(
            &step.name,
            step.for_each
                .iter()
                .zip(&task.key_vals)
                .map(|(f, &v)| (f.as_str(), ds.values.get(v))),
        )
    }

    /// The fan-out field values of a task, by field name.
    pub fn fields(&self, pipeline: &Pipeline, ds: &Dataset, t: TaskIdx) -> Vec<(String, String)> {
        let task = &self.tasks[t as usize];
        let step = &pipeline.steps[task.step as usize];
        step.for_each
            .iter()
            .zip(&task.key_vals)
            .map(|(f, &v)| (f.clone(), ds.values.get(v).to_string()))
            .collect()
    }
}

/// For one upstream step: which of this step's key positions to match on, and the upstream
/// tasks by their values at those fields.
type DepIndex = (Vec<usize>, FxHashMap<Vec<u32>, Vec<TaskIdx>>);

/// Expands a validated pipeline over a dataset.
pub fn expand(pipeline: &Pipeline, ds: &Dataset) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for (si, step) in pipeline.steps.iter().enumerate() {
        let cols: Vec<usize> = step
            .for_each
            .iter()
            .map(|f| {
                ds.field_index(f).ok_or_else(|| {
                    anyhow::anyhow!("step `{}`: field `{f}` is not in the dataset", step.name)
                })
            })
            .collect::<Result<_, _>>()?;
        let start = plan.tasks.len() as TaskIdx;
        // Group images by the step's fan-out key.
        let mut groups: Vec<(Vec<u32>, Vec<u32>)> = if cols.is_empty() {
            vec![(vec![], (0..ds.images.len() as u32).collect())]
        } else {
            let mut index: FxHashMap<Vec<u32>, usize> = FxHashMap::default();
            let mut groups: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
            for (ii, img) in ds.images.iter().enumerate() {
                let key: Vec<u32> = cols.iter().map(|&c| img.fields[c]).collect();
                let g = *index.entry(key.clone()).or_insert_with(|| {
                    groups.push((key, Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(ii as u32);
            }
            // Tasks in a stable, human order: by field values as text.
            groups.sort_by(|a, b| {
                a.0.iter()
                    .map(|&v| ds.values.get(v))
                    .cmp(b.0.iter().map(|&v| ds.values.get(v)))
            });
            groups
        };
        // Dependencies: match on the fields both steps fan out over.
        let mut dep_index: Vec<DepIndex> = Vec::new();
        for &d in &step.after {
            let dstep = &pipeline.steps[d];
            let common: Vec<(usize, usize)> = step
                .for_each
                .iter()
                .enumerate()
                .filter_map(|(i, f)| dstep.for_each.iter().position(|g| g == f).map(|j| (i, j)))
                .collect();
            let mut idx: FxHashMap<Vec<u32>, Vec<TaskIdx>> = FxHashMap::default();
            for t in plan.steps[d].clone() {
                let kv = &plan.tasks[t as usize].key_vals;
                idx.entry(common.iter().map(|&(_, j)| kv[j]).collect())
                    .or_default()
                    .push(t);
            }
            dep_index.push((common.iter().map(|&(i, _)| i).collect(), idx));
        }
        for (key_vals, imgs) in groups.drain(..) {
            let mut deps = Vec::new();
            for (mine, idx) in &dep_index {
                let probe: Vec<u32> = mine.iter().map(|&i| key_vals[i]).collect();
                if let Some(ts) = idx.get(&probe) {
                    deps.extend_from_slice(ts);
                }
            }
            plan.tasks.push(TaskDef {
                step: si as u32,
                key_vals,
                inputs: if step.reads_images { imgs } else { Vec::new() },
                deps,
            });
        }
        plan.steps.push(start..plan.tasks.len() as TaskIdx);
    }
    plan.dependents = vec![Vec::new(); plan.tasks.len()];
    for (t, task) in plan.tasks.iter().enumerate() {
        for &d in &task.deps {
            plan.dependents[d as usize].push(t as TaskIdx);
        }
    }
    Ok(plan)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataset::Image;
    use std::path::Path;

    /// A dataset of `plates` x `wells` images, built in memory (no files).
    pub fn synthetic_dataset(plates: usize, wells: usize) -> Dataset {
        let mut ds = Dataset {
            fields: vec!["plate".into(), "well".into()],
            ..Default::default()
        };
        for p in 0..plates {
            for w in 0..wells {
                let (pv, wv) = (format!("P{p:04}"), format!("W{w:03}"));
                let fields = vec![ds.values.intern(&pv), ds.values.intern(&wv)];
                ds.images.push(Image {
                    rel_path: format!("{pv}/{wv}.tif"),
                    fields,
                    digest: None,
                    problem: None,
                });
            }
        }
        ds
    }

    pub fn pipeline(src: &str) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        let path = dir.path().join("p.yaml");
        let full = format!("data:\n  images: images\n  pattern: \"{{plate}}/{{well}}.tif\"\n{src}");
        crate::spec::parse(Path::new(&path), &full).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn fan_out_and_matching() {
        let p = pipeline(
            "steps:\n  seg:\n    uses: noop\n    for_each: well\n  feat:\n    uses: noop\n    for_each: plate\n    after: [seg]\n  report:\n    uses: noop\n    after: [feat]\n",
        );
        let ds = synthetic_dataset(3, 4);
        let plan = expand(&p, &ds).unwrap();
        assert_eq!(plan.len(), 12 + 3 + 1);
        assert_eq!(plan.label(&p, &ds, 0), "seg[plate=P0000,well=W000]");
        let feat1 = plan.steps[1].start + 1;
        assert_eq!(plan.label(&p, &ds, feat1), "feat[plate=P0001]");
        let deps: Vec<String> = plan.tasks[feat1 as usize]
            .deps
            .iter()
            .map(|&d| plan.label(&p, &ds, d))
            .collect();
        assert_eq!(deps.len(), 4);
        assert!(deps.iter().all(|l| l.starts_with("seg[plate=P0001,")));
        assert_eq!(plan.tasks[plan.len() - 1].deps.len(), 3);
        assert_eq!(plan.tasks[0].inputs, vec![0]);
        assert!(
            plan.tasks[feat1 as usize].inputs.is_empty(),
            "steps with `after` read no images by default"
        );
    }
}
