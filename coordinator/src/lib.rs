//! plateflow's coordinator: pipeline files, planning, content-addressed caching, the run
//! journal, scheduling and the gRPC server. Depends on the contract, proto, store and access
//! crates only: no worker, no Candle (the `plateflow` command line is the `cli` crate).

pub mod alloc;
pub mod comm;
pub mod connections;
pub mod dataset;
pub mod db;
pub mod dryrun;
pub mod engine;
pub mod key;
pub mod leakage;
pub mod lockfile;
pub mod monitor;
pub mod plan;
pub mod run;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod slurm;
pub mod spec;
