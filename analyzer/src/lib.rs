//! The analyzer: scrape per-cohort metrics, compare canary with control, decide.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod dashboard;
pub mod engine;
pub mod evaluation;
#[cfg(test)]
mod fixtures;
pub mod fleet;
pub mod hold;
pub mod ladder;
pub mod notify;
pub mod outcome_metric;
pub mod policy;
pub mod present;
pub mod row_rule;
pub mod simulation;
pub mod source;
pub mod stats;
pub mod step_evidence;
