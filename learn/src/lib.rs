//! Learning and evaluation for plateflow on Candle, as a library first: models (a logistic
//! baseline and a small CNN), training (AdamW, one-cycle, class balance, augmentation, early
//! stopping, seeded), validation grouped by plate with a leakage guard, and metrics with
//! plate-level bootstrap intervals and calibration. The engine's `train`/`evaluate` steps
//! (issue 4) are to be thin adapters over it.

pub mod data;
pub mod metrics;
pub mod model;
pub mod rng;
pub mod schedule;
pub mod split;
pub mod train;

#[cfg(test)]
mod tests;
