//! What would run, and why, without running anything: `--dry-run` and `explain`.

use crate::db::{CachedAction, Db};
use crate::engine::{verify_outputs, EngineConfig};
use crate::key::{decide, refine_plate_map_reasons, CacheDecision, Reason};
use crate::lockfile::{self, LockFile};
use crate::plan::TaskIdx;
use crate::run::{prepare, PreparedRun};
use plateflow_store::{BlobStore, Digest};
use rustc_hash::FxHashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Cached,
    Runs(Vec<Reason>),
    /// Its key depends on outputs an upstream task has yet to produce: it runs if they change.
    AfterUpstream(String),
    /// One of its input files cannot be used (unreadable, a name that is not UTF-8).
    Fails(String),
}

pub struct Simulation {
    pub prep: PreparedRun,
    pub decisions: Vec<Decision>,
}

/// Plans a pipeline against a state directory and decides each task as a run would.
pub fn simulate(
    pipeline_path: &Path,
    state_dir: Option<&Path>,
    force: Vec<String>,
) -> anyhow::Result<Simulation> {
    let yaml = std::fs::read_to_string(pipeline_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", pipeline_path.display()))?;
    let pipeline = crate::spec::parse(pipeline_path, &yaml)?;
    let cfg = EngineConfig::new(
        state_dir
            .map(Path::to_path_buf)
            .unwrap_or(pipeline.workspace.clone()),
    );
    let mut db = Db::open(&cfg.db_path())?;
    let prep = prepare(
        0,
        pipeline_path,
        &yaml,
        force,
        &mut db,
        cfg.hash_threads,
        &[],
    )?;
    let actions = db.load_action_cache()?;
    let store = BlobStore::open(cfg.store_dir())?;
    let lock = lockfile::read(&lockfile::lock_path(&prep.pipeline.file))?;
    let decisions = decide_all(&prep, &actions, &store, lock.as_ref());
    Ok(Simulation { prep, decisions })
}

fn decide_all(
    prep: &PreparedRun,
    actions: &FxHashMap<String, CachedAction>,
    store: &BlobStore,
    lock: Option<&LockFile>,
) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = Vec::with_capacity(prep.plan.len());
    let mut outputs: Vec<Vec<(String, Digest)>> = vec![Vec::new(); prep.plan.len()];
    // Tasks are numbered in dependency order, so upstream decisions are known.
    for t in 0..prep.plan.len() as TaskIdx {
        let task = &prep.plan.tasks[t as usize];
        if let Some(&d) = task
            .deps
            .iter()
            .find(|&&d| decisions[d as usize] != Decision::Cached)
        {
            decisions.push(Decision::AfterUpstream(prep.label(d)));
            continue;
        }
        if let Some(why) = prep.unusable_input(t) {
            decisions.push(Decision::Fails(why.to_string()));
            continue;
        }
        let parts = prep.key_parts(t, |d| outputs[d as usize].as_slice());
        let key = parts.key();
        let prev = lock
            .and_then(|l| l.tasks.get(&prep.label(t)))
            .map(|e| &e.parts);
        let decision = match decide(
            prep.is_forced(t),
            actions.get(&key.0),
            |a| verify_outputs(store, a),
            || prev.cloned(),
            &parts,
        ) {
            CacheDecision::Hit(a) => {
                outputs[t as usize] = a.outputs;
                Decision::Cached
            }
            CacheDecision::Run(mut reasons) => {
                refine_plate_map_reasons(&mut reasons, |d| {
                    prep.plate_map_blobs
                        .get(d)
                        .cloned()
                        .or_else(|| store.read_verified(d).ok())
                });
                Decision::Runs(reasons)
            }
        };
        decisions.push(decision);
    }
    decisions
}

/// The `--dry-run` listing: what would run, per step, with the reason.
pub fn render_dry_run(sim: &Simulation) -> String {
    let mut s = String::new();
    let mut runs = 0;
    for (t, d) in sim.decisions.iter().enumerate() {
        let label = sim.prep.label(t as TaskIdx);
        match d {
            Decision::Cached => {}
            Decision::Runs(reasons) => {
                runs += 1;
                s.push_str(&format!(
                    "would run  {label}: {}\n",
                    crate::key::summarise(reasons)
                ));
            }
            Decision::AfterUpstream(up) => {
                runs += 1;
                s.push_str(&format!(
                    "would run  {label}: after {up} (if its outputs change)\n"
                ));
            }
            Decision::Fails(why) => s.push_str(&format!("would FAIL {label}: {why}\n")),
        }
    }
    let cached = sim
        .decisions
        .iter()
        .filter(|d| **d == Decision::Cached)
        .count();
    s.push_str(&format!(
        "{runs} task(s) would run, {cached} cached, of {}\n",
        sim.decisions.len()
    ));
    s
}

/// `explain`: the full reasons for one task (by label). A step name counts the step's
/// tasks by what they will do and explains its first that will not come from the cache
/// (its first task was explained, which could read "cached" while others ran).
pub fn render_explain(sim: &Simulation, target: &str) -> anyhow::Result<String> {
    let labels: Vec<String> = (0..sim.prep.plan.len() as TaskIdx)
        .map(|t| sim.prep.label(t))
        .collect();
    let mut s = String::new();
    let t = match labels.iter().position(|l| l == target) {
        Some(t) => t,
        None => {
            let of_step: Vec<usize> = (0..labels.len())
                .filter(|&i| labels[i].split('[').next() == Some(target))
                .collect();
            let Some(&first) = of_step.first() else {
                let hint =
                    crate::spec::diag::did_you_mean(target, labels.iter().map(String::as_str))
                        .unwrap_or_default();
                anyhow::bail!("no task `{target}` in this pipeline. {hint} (`plateflow run --dry-run` lists tasks)");
            };
            let cached = of_step
                .iter()
                .filter(|&&i| sim.decisions[i] == Decision::Cached)
                .count();
            if of_step.len() > 1 {
                s.push_str(&format!(
                    "step `{target}`: {} of its {} tasks will run or wait on upstream, {cached} cached\n",
                    of_step.len() - cached,
                    of_step.len()
                ));
            }
            of_step
                .iter()
                .copied()
                .find(|&i| sim.decisions[i] != Decision::Cached)
                .unwrap_or(first)
        }
    };
    s.push_str(&format!("{}:\n", labels[t]));
    match &sim.decisions[t] {
        Decision::Cached => s.push_str(
            "  cached: its key is unchanged and its outputs are stored intact; it will not run\n",
        ),
        Decision::Runs(reasons) => {
            s.push_str("  runs because:\n");
            for r in reasons {
                s.push_str(&format!("    - {r}\n"));
            }
        }
        Decision::Fails(why) => s.push_str(&format!("  will fail: {why}\n")),
        Decision::AfterUpstream(up) => {
            s.push_str(&format!(
                "  waits for {up}, which will run; this task runs if that changes its outputs\n"
            ));
            let i = labels
                .iter()
                .position(|l| l == up)
                .expect("upstream is planned");
            if let Decision::Runs(reasons) = &sim.decisions[i] {
                s.push_str(&format!("  {up} runs because:\n"));
                for r in reasons {
                    s.push_str(&format!("    - {r}\n"));
                }
            }
        }
    }
    Ok(s)
}
