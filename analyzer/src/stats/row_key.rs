//! Which metric a report row is about: its origin (one of the analyzer's own rows,
//! or a metric the policy names) together with its name.
//!
//! A row's name alone is not its identity: a policy may name its own metrics, and the
//! ladder must never read a policy metric's row as a built-in one (or the reverse): an
//! outcome with no data would pass as the built-in row of the same name.
//! Decisions therefore match rows by [`RowKey`], and policies people write may not
//! take a built-in row's name at all ([`BUILT_IN_ROWS`] lists them).

use serde::{Deserialize, Serialize};

use super::ComparisonRow;

/// Row name of the per-request error rate (5xx and resets).
pub const ERROR_RATE_ROW: &str = "error_rate";
/// Row name of the share of requests that are not 2xx (1 − success rate).
pub const NON_SUCCESS_RATE_ROW: &str = "non_success_rate";
/// Row name of the traffic split against the share the hashing should give.
pub const SAMPLE_RATIO_ROW: &str = "sample_ratio";

/// The rows every report carries whatever the policy lists: the error and non-success
/// rates, the split, and one row per reported latency quantile ([`super::latency_metric_name`]
/// of each of [`super::REPORTED_QUANTILES`]; a test holds the two lists together). Reserved: no
/// policy metric may take one of these names.
pub const BUILT_IN_ROWS: [&str; 7] = [
    ERROR_RATE_ROW,
    NON_SUCCESS_RATE_ROW,
    SAMPLE_RATIO_ROW,
    "latency_p50_us",
    "latency_p90_us",
    "latency_p99_us",
    "latency_p99_9_us",
];

/// Where a row comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowOrigin {
    /// Recorded before rows carried their origin: read from the name (a built-in
    /// row's name is built-in, any other a policy metric's).
    #[default]
    ByName,
    /// One of the analyzer's own rows ([`BUILT_IN_ROWS`]).
    BuiltIn,
    /// A metric the policy names: a custom PromQL, outcome or counter-pair metric.
    Policy,
}

impl RowOrigin {
    /// The origin, with [`RowOrigin::ByName`] resolved from `name`.
    pub fn resolved(self, name: &str) -> RowOrigin {
        match self {
            RowOrigin::ByName if BUILT_IN_ROWS.contains(&name) => RowOrigin::BuiltIn,
            RowOrigin::ByName => RowOrigin::Policy,
            origin => origin,
        }
    }
}

/// A row's identity: its (resolved) origin and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub origin: RowOrigin,
    pub name: String,
}

impl RowKey {
    pub fn built_in(name: impl Into<String>) -> RowKey {
        RowKey { origin: RowOrigin::BuiltIn, name: name.into() }
    }

    pub fn policy(name: impl Into<String>) -> RowKey {
        RowKey { origin: RowOrigin::Policy, name: name.into() }
    }
}

impl ComparisonRow {
    /// Which metric this row is about (see [`RowKey`]).
    pub fn key(&self) -> RowKey {
        RowKey { origin: self.origin.resolved(&self.metric), name: self.metric.clone() }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn the_reserved_latency_rows_are_the_reported_quantiles() {
        use crate::stats::{REPORTED_QUANTILES, latency_metric_name};
        let latency: Vec<String> = REPORTED_QUANTILES.iter().map(|&q| latency_metric_name(q)).collect();
        assert_eq!(BUILT_IN_ROWS[3..], latency);
    }

    #[test]
    fn rows_recorded_without_an_origin_are_read_by_name() {
        assert_eq!(RowOrigin::ByName.resolved("latency_p99_us"), RowOrigin::BuiltIn);
        assert_eq!(RowOrigin::ByName.resolved("cache_hit"), RowOrigin::Policy);
        assert_eq!(RowOrigin::Policy.resolved("latency_p99_us"), RowOrigin::Policy, "a recorded origin stands");
        assert_eq!(RowOrigin::BuiltIn.resolved("cache_hit"), RowOrigin::BuiltIn);
    }

    /// Rows are kept in audit records: one recorded before rows carried an origin
    /// reads back, and is keyed by its name.
    #[test]
    fn a_row_recorded_without_an_origin_reads_back_by_name() {
        let recorded = r#"{"metric":"latency_p99_us","canary":1.0,"control":1.0,"absolute_difference":0.0,
            "relative_difference":0.0,"interval":null,"interval_scale":"absolute","p_value":0.5,
            "verdict":"no_difference","unit":"microseconds"}"#;
        let row: ComparisonRow = serde_json::from_str(recorded).unwrap();
        assert_eq!(row.origin, RowOrigin::ByName);
        assert_eq!(row.key(), RowKey::built_in("latency_p99_us"));
        let written = serde_json::to_value(ComparisonRow { origin: RowOrigin::Policy, ..row }).unwrap();
        assert_eq!(written["origin"], "policy");
        assert_eq!(serde_json::from_value::<ComparisonRow>(written).unwrap().key(), RowKey::policy("latency_p99_us"));
    }
}
