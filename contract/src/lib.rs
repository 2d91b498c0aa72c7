//! The typed contract between a pipeline file, the coordinator and the workers.
//!
//! One home for what a step kind is: its name and implementation version ([`kinds`]), its
//! parameters as a typed struct with their defaults, choices and ranges ([`params`]), the
//! placeholders of `command` ([`placeholders`]), task labels and their result paths
//! ([`labels`]) and amounts of memory ([`units`]). The coordinator validates a pipeline
//! against these types; the worker decodes the same types once per task. Nothing here runs
//! anything, so both sides (and tests) use it without an engine or Candle.

pub mod columns;
pub mod kinds;
pub mod labels;
pub mod listing;
pub mod metrics;
pub mod params;
pub mod placeholders;
pub mod plate_layout;
pub mod platemap;
pub mod units;
pub mod wells;

pub use kinds::{KindInfo, StepKind};
pub use params::{ParamIssue, StepParams};
