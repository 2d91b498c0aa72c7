//! plateflow workers: the registry of step kinds, the execution of one task, and the gRPC
//! session that receives tasks from a coordinator. Knows nothing of pipelines or planning.

pub mod access;
pub mod blobs;
pub mod builtin;
pub mod exec;
pub mod kinds;
pub mod placeholders;
pub mod session;

pub use session::{run_worker, WorkerConfig, MAX_MESSAGE_BYTES};
