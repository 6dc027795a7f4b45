//! The analyzer: scrape per-cohort metrics, compare canary with control, decide.

pub mod simulation;
pub mod stats;
