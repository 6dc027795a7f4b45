//! The statistics core: anytime-valid comparisons of canary and control.
//!
//! Every test here is an e-process — a nonnegative process whose expectation
//! under the null stays at most 1 at any stopping time — so its p-value
//! `1 / max E` is valid no matter how often the analyzer checks or when it stops
//! (Lindon & Malek 2022; Lindon, Sanden & Shirikian 2022; Howard & Ramdas). A
//! fixed-horizon test checked every minute would roll back good releases far
//! more often than its nominal rate; see [`crate::simulation`] and
//! `docs/statistics.md`.
//!
//! Modules, one concern each:
//! - `eprocess`: running maximum of an e-process and its p-value.
//! - `odds_ratio`: the shared engine, a grid mixture of binomial likelihood ratios.
//! - `one_sided`: one-sided bounds read from the verdicts' own e-processes.
//! - `error_rate`: errors as counting processes, conditioned on each interval's split.
//! - `event_rate`: the same test for any "events among requests" rate, either direction.
//! - `sample_ratio`: is the canary getting the share the hashing should give?
//! - `histogram`, `quantile`, `latency`: latency quantiles from bucket counts (reported).
//! - `tail_exceedance`: the latency verdict, tail exceedances at matched thresholds.
//! - `comparison`: the report row, verdicts and worst-first ordering.
//! - `row_key`: which metric a row is about (built-in or the policy's), and the reserved row names.
//!
//! Everything is pure: no I/O, no clock; time is the sequence of intervals
//! the caller feeds in, and "no data" is `None`, never NaN.

mod comparison;
mod eprocess;
mod error;
mod error_rate;
mod event_rate;
mod histogram;
mod latency;
mod odds_ratio;
mod one_sided;
mod quantile;
mod row_key;
mod sample_ratio;
mod tail_exceedance;

pub use comparison::{ComparisonRow, DifferenceScale, Interval, ValueUnit, Verdict, sort_worst_first};
pub use eprocess::EvidenceMaximum;
pub use error::StatsError;
pub use error_rate::{CohortCounts, ErrorRateSettings, ErrorRateTest, IntervalCounts};
pub use event_rate::{EventRateTest, WorseDirection};
pub use histogram::{LatencyHistogram, check_same_layout, describe_layout};
pub use latency::{
    LatencyComparison, LatencySettings, QuantileEstimate, QuantileTolerance, REPORTED_QUANTILES, latency_metric_name,
};
pub use odds_ratio::OddsRatioPrior;
pub use row_key::{BUILT_IN_ROWS, ERROR_RATE_ROW, NON_SUCCESS_RATE_ROW, RowKey, RowOrigin, SAMPLE_RATIO_ROW};
pub use sample_ratio::{SampleRatioSettings, SampleRatioTest};
pub use tail_exceedance::{TailExceedanceSettings, TailExceedanceTest};
