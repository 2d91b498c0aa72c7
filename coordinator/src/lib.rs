//! plateflow's coordinator: pipeline files, planning, content-addressed caching, the run
//! journal, scheduling, the gRPC server and the `plateflow` command line.

pub mod alloc;
pub mod cli;
pub mod dataset;
pub mod db;
pub mod demo;
pub mod doctor;
pub mod dryrun;
pub mod engine;
pub mod history;
pub mod key;
pub mod leakage;
pub mod lineage;
pub mod lockfile;
pub mod monitor;
pub mod plan;
pub mod progress;
pub mod run;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod slurm;
pub mod spec;
