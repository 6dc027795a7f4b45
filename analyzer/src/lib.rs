//! The analyzer: scrape per-cohort metrics, compare canary with control, decide.

pub mod audit;
pub mod ladder;
pub mod policy;
pub mod simulation;
pub mod source;
pub mod stats;
