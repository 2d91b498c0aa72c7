//! plateflow workers: the execution of one task (its typed parameters from
//! `plateflow-contract`), and the gRPC session that receives tasks from a coordinator. Knows
//! nothing of pipelines or planning.

pub mod blobs;
pub mod builtin;
pub mod exec;
pub mod process;
pub mod session;

/// Reaching the coordinator (token, TLS): its own crate, shared with the CLI and clients.
pub use plateflow_access as access;
pub use session::{run_worker, WorkerConfig, MAX_MESSAGE_BYTES};
