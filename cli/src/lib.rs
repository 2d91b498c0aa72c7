//! The one `plateflow` command: running pipelines on this machine (an embedded coordinator
//! and local worker processes), serving a cluster's coordinator and workers, and the tools
//! around runs (demo data, doctor, lineage, run history and comparisons, progress display).
//! Built on the coordinator and worker crates; the engine itself knows nothing of it.

pub mod cli;
pub mod demo;
pub mod doctor;
pub mod history;
pub mod lineage;
pub mod progress;
