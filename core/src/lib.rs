//! The contract between the wasm filter and the analyzer, in plain Rust.
//!
//! Everything here is pure: no host calls, no I/O, time passed in as `now_ms`.
//! The filter (wasm32) and the analyzer (native) call the very same code, so
//! "which cohort is user X in" has one answer on every target.

pub mod cohort;
pub mod config;
pub mod decision;
pub mod grpc;
pub mod matching;
pub mod metrics;
pub mod outcome;
pub mod poll;
pub mod population;
pub mod rollout;
pub mod rollout_batch;
pub mod user_id;

pub use cohort::{Cohort, Share, bucket};
pub use config::{ConfigError, DeploymentConfig, DeploymentMetrics, FilterConfig, Protocol};
pub use decision::{Decision, RequestView, decide};
pub use rollout::{RolloutConfig, RolloutPhase};
pub use rollout_batch::{BatchAnswer, parse_batch_answer};
