//! Slurm as an allocation backend: `sbatch` a job script that starts one plateflow worker
//! per node with `srun`, `squeue` for states, `scancel` at shutdown. The job script is
//! written to the state directory so an operator can read (and rerun) exactly what ran.

use crate::alloc::{Backend, Ending, JobState};
use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;

/// How to shape each allocation and start its workers.
#[derive(Debug, Clone)]
pub struct SlurmConfig {
    pub partition: String,
    /// `--time`, e.g. `01:00:00`.
    pub time: String,
    pub nodes: u32,
    pub cpus_per_node: Option<u32>,
    /// `--mem`, e.g. `16G`.
    pub mem: Option<String>,
    /// Further `sbatch` options, e.g. `--gres=gpu:1`, `--account=lab`.
    pub extra: Vec<String>,
    /// The worker's command line up to its options (the plateflow binary and `worker`).
    pub worker_exe: PathBuf,
    /// Options for each worker: coordinator address, token file, TLS pin, store.
    pub worker_args: Vec<String>,
    /// Where job scripts and Slurm's output files go.
    pub dir: PathBuf,
    /// Bounds each `sbatch`/`squeue`/`scancel` call.
    pub command_timeout: Duration,
}

impl SlurmConfig {
    /// The job script: one worker per node, each ending when idle.
    pub fn script(&self) -> String {
        let mut s =
            String::from("#!/bin/bash\n# Written by the plateflow coordinator's allocator.\n");
        s.push_str("#SBATCH --job-name=plateflow-worker\n");
        s.push_str(&format!("#SBATCH --partition={}\n", self.partition));
        s.push_str(&format!("#SBATCH --nodes={}\n", self.nodes));
        s.push_str("#SBATCH --ntasks-per-node=1\n");
        if let Some(c) = self.cpus_per_node {
            s.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
        }
        if let Some(m) = &self.mem {
            s.push_str(&format!("#SBATCH --mem={m}\n"));
        }
        s.push_str(&format!("#SBATCH --time={}\n", self.time));
        // `--output` is given on sbatch's command line (a state directory with a space cut
        // the `#SBATCH` line short); to rerun this by hand, give it there too.
        s.push_str("# sbatch --output=<state>/alloc/slurm-%j.out <this file>\n");
        for e in &self.extra {
            s.push_str(&format!("#SBATCH {e}\n"));
        }
        s.push_str("set -eu\n");
        let mut cmd = vec!["srun".to_string(), "--ntasks-per-node=1".into()];
        // srun does not take the job's --cpus-per-task from sbatch in every Slurm version
        // (22.05–23.02): without it a worker counting the job's CPUs ran in a one-CPU set.
        if let Some(c) = self.cpus_per_node {
            cmd.push(format!("--cpus-per-task={c}"));
        }
        cmd.extend([
            shell_quote(&self.worker_exe.display().to_string()),
            "worker".into(),
        ]);
        cmd.extend(self.worker_args.iter().map(|a| shell_quote(a)));
        s.push_str(&cmd.join(" "));
        s.push('\n');
        s
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub struct Slurm {
    pub config: SlurmConfig,
    /// Final states `squeue` listed for jobs that had just ended (it keeps them for
    /// Slurm's MinJobAge), for [`Backend::how_ended`] where `sacct` has nothing.
    last_listed: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Slurm {
    pub fn new(config: SlurmConfig) -> Self {
        Slurm {
            config,
            last_listed: Default::default(),
        }
    }
}

/// Runs a Slurm command with a time bound; its stderr is the error.
pub async fn slurm_cmd(
    program: &str,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<String> {
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow::anyhow!("`{program}` did not answer in {timeout:?}"))?
        .with_context(|| format!("cannot run `{program}` (is Slurm installed on this node?)"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The final states in `squeue -o "%i %T %r"` lines, by job id.
pub fn finished_in_squeue(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (id, state) = (parts.next()?, parts.next()?);
            FINISHED
                .contains(&state)
                .then(|| (id.to_string(), state.to_string()))
        })
        .collect()
}

/// `sacct -n -X -P -o JobID,State,ExitCode` lines → how each of `ids` ended (`None`: not
/// listed, or still running).
pub fn parse_sacct(text: &str, ids: &[String]) -> Vec<Option<Ending>> {
    let mut seen = std::collections::HashMap::new();
    for line in text.lines() {
        let mut parts = line.trim().split('|');
        if let (Some(id), Some(state), exit) = (parts.next(), parts.next(), parts.next()) {
            seen.insert(
                id.to_string(),
                Ending {
                    state: state.trim().to_string(),
                    exit_code: exit.unwrap_or("").trim().to_string(),
                },
            );
        }
    }
    ids.iter()
        .map(|id| {
            seen.get(id)
                .filter(|e| !matches!(e.state.as_str(), "RUNNING" | "PENDING" | "COMPLETING" | ""))
                .cloned()
        })
        .collect()
}

/// Slurm's states of a job that has ended.
const FINISHED: [&str; 10] = [
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
    "REVOKED",
];

/// `squeue -o "%i %T %r"` lines → the state of each of `ids` (absent: gone). A job still
/// listed in a state not known here (REQUEUE_HOLD, SPECIAL_EXIT, STOPPED, one a later Slurm
/// adds) is taken as pending, not gone: taken as gone, it was never looked at again, and its
/// workers, when it ran, belonged to no allocation.
pub fn parse_squeue(text: &str, ids: &[String]) -> Vec<JobState> {
    let seen: std::collections::HashMap<&str, (&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.trim().splitn(3, ' ');
            let id = parts.next().filter(|s| !s.is_empty())?;
            let state = parts.next()?;
            Some((id, (state, parts.next().unwrap_or("").trim())))
        })
        .collect();
    ids.iter()
        .map(|id| match seen.get(id.as_str()) {
            None => JobState::Gone,
            Some(&(state, reason)) => match state {
                "RUNNING" | "COMPLETING" | "SUSPENDED" | "STAGE_OUT" | "SIGNALING" => {
                    JobState::Running
                }
                // Finished, still listed for a while (MinJobAge).
                s if FINISHED.contains(&s) => JobState::Gone,
                "PENDING" => JobState::Pending {
                    reason: if reason.is_empty() { "None" } else { reason }.to_string(),
                },
                other => JobState::Pending {
                    reason: if reason.is_empty() || reason == "None" {
                        other.to_string()
                    } else {
                        format!("{other}: {reason}")
                    },
                },
            },
        })
        .collect()
}

impl Backend for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    async fn submit(&self) -> anyhow::Result<String> {
        std::fs::create_dir_all(&self.config.dir)?;
        let script = self.config.dir.join("worker-job.sh");
        let tmp = tempfile::NamedTempFile::new_in(&self.config.dir)?;
        std::fs::write(tmp.path(), self.config.script())?;
        tmp.persist(&script)?;
        let out = slurm_cmd(
            "sbatch",
            &[
                "--parsable".into(),
                format!(
                    "--output={}",
                    self.config.dir.join("slurm-%j.out").display()
                ),
                script.display().to_string(),
            ],
            self.config.command_timeout,
        )
        .await?;
        // `--parsable` prints `jobid` or `jobid;cluster`.
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        anyhow::ensure!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()),
            "sbatch printed no job id: {out:?}"
        );
        Ok(id)
    }

    async fn states(&self, ids: &[String]) -> anyhow::Result<Vec<JobState>> {
        let out = slurm_cmd(
            "squeue",
            &[
                "-h".into(),
                "-o".into(),
                "%i %T %r".into(),
                "-j".into(),
                ids.join(","),
            ],
            self.config.command_timeout,
        )
        .await;
        match out {
            Ok(text) => {
                if let Ok(mut listed) = self.last_listed.lock() {
                    listed.extend(finished_in_squeue(&text));
                }
                Ok(parse_squeue(&text, ids))
            }
            // squeue refuses a list of only finished job ids ("Invalid job id specified").
            Err(e) if e.to_string().contains("Invalid job id") => {
                Ok(vec![JobState::Gone; ids.len()])
            }
            Err(e) => Err(e),
        }
    }

    async fn cancel(&self, ids: &[String]) {
        if let Err(e) = slurm_cmd("scancel", ids, self.config.command_timeout).await {
            tracing::warn!("scancel failed: {e:#}");
        }
    }

    fn output_of(&self, id: &str) -> String {
        self.config
            .dir
            .join(format!("slurm-{id}.out"))
            .display()
            .to_string()
    }

    /// `sacct` where Slurm keeps accounting; else the final state `squeue` last listed.
    async fn how_ended(&self, ids: &[String]) -> Vec<Option<Ending>> {
        let sacct = slurm_cmd(
            "sacct",
            &[
                "-n".into(),
                "-X".into(),
                "-P".into(),
                "-o".into(),
                "JobID,State,ExitCode".into(),
                "-j".into(),
                ids.join(","),
            ],
            self.config.command_timeout,
        )
        .await;
        let mut out = match sacct {
            Ok(text) => parse_sacct(&text, ids),
            Err(e) => {
                tracing::debug!("sacct: {e:#}");
                vec![None; ids.len()]
            }
        };
        if let Ok(mut listed) = self.last_listed.lock() {
            for (id, ending) in ids.iter().zip(out.iter_mut()) {
                let state = listed.remove(id);
                if ending.is_none() {
                    *ending = state.map(|state| Ending {
                        state,
                        exit_code: String::new(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// States with their reasons (which may hold spaces); a held or unknown state stays
    /// pending, a finished one still listed is gone, an absent one is gone.
    #[test]
    fn squeue_states_and_vanished_jobs() {
        let text = "101 PENDING Priority\n102 RUNNING None\n103 COMPLETING None\n\
                    105 PENDING ReqNodeNotAvail, UnavailableNodes:n[1-2]\n\
                    106 REQUEUE_HOLD JobHeldAdmin\n107 TIMEOUT None\n108 STOPPED None\n";
        let ids: Vec<String> = ["101", "102", "103", "104", "105", "106", "107", "108"]
            .map(String::from)
            .to_vec();
        let pending = |r: &str| JobState::Pending { reason: r.into() };
        assert_eq!(
            parse_squeue(text, &ids),
            [
                pending("Priority"),
                JobState::Running,
                JobState::Running,
                JobState::Gone,
                pending("ReqNodeNotAvail, UnavailableNodes:n[1-2]"),
                pending("REQUEUE_HOLD: JobHeldAdmin"),
                JobState::Gone,
                pending("STOPPED"),
            ]
        );
    }

    /// sacct's lines (`-P`: `|`-separated; a state may hold spaces) and squeue's last sight
    /// of a finished job.
    #[test]
    fn how_jobs_ended_is_read() {
        let ids: Vec<String> = ["7", "8", "9", "10"].map(String::from).into();
        let got = parse_sacct(
            "7|OUT_OF_MEMORY|0:125\n8|CANCELLED by 1000|0:15\n9|RUNNING|0:0\n",
            &ids,
        );
        assert_eq!(
            got[0],
            Some(Ending {
                state: "OUT_OF_MEMORY".into(),
                exit_code: "0:125".into()
            })
        );
        assert_eq!(got[1].as_ref().unwrap().state, "CANCELLED by 1000");
        assert_eq!((got[2].clone(), got[3].clone()), (None, None));
        assert_eq!(
            finished_in_squeue("7 NODE_FAIL None\n8 RUNNING None\n"),
            vec![("7".to_string(), "NODE_FAIL".to_string())]
        );
    }

    #[test]
    fn the_job_script_starts_one_worker_per_node() {
        let c = SlurmConfig {
            partition: "gpu".into(),
            time: "00:30:00".into(),
            nodes: 2,
            cpus_per_node: Some(8),
            mem: Some("16G".into()),
            extra: vec!["--gres=gpu:1".into()],
            worker_exe: "/opt/plateflow bin/plateflow".into(),
            worker_args: vec!["--coordinator".into(), "head:7700".into()],
            dir: "/state/alloc".into(),
            command_timeout: Duration::from_secs(30),
        };
        let s = c.script();
        for want in [
            "#SBATCH --partition=gpu",
            "#SBATCH --nodes=2",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --mem=16G",
            "#SBATCH --gres=gpu:1",
            "srun --ntasks-per-node=1 --cpus-per-task=8 '/opt/plateflow bin/plateflow' worker --coordinator head:7700",
        ] {
            assert!(s.contains(want), "{want} missing:\n{s}");
        }
    }
}
