//! Metric sources: where the per-cohort counts the statistics compare come from.
//!
//! The filter exports cumulative counters (`canary_requests_total`) and a cumulative
//! latency histogram (`canary_latency_us`) per Envoy (see `docs/metrics.md`). The
//! statistics want what happened *in one check interval*, summed over the fleet. Two
//! sources produce that same [`IntervalMetrics`]:
//!
//! - [`EnvoyAdminSource`] (the embedded default, needs nothing else running): reads
//!   each Envoy's JSON stats with its own log-linear histogram bins (1-10 % wide, no
//!   bucket configuration needed) into a [`DeploymentSnapshot`] per target; a
//!   [`DeltaTracker`] turns consecutive snapshots into per-target deltas (handling
//!   Envoy restarts and failed scrapes) and sums them.
//! - [`PrometheusSource`] (fleets): lets a Prometheus server that scrapes the mesh do
//!   the per-series `increase()` and the sum, and converts its JSON answer.
//!
//! Modules, one concern each:
//! - `snapshot`: cumulative values of one target ([`DeploymentSnapshot`]).
//! - `latency`: a cumulative histogram in either layout, its deltas, the statistics' form.
//! - `envoy_bins`: Envoy's log-linear bins and the one grid they are laid on.
//! - `admin_json`: Envoy's JSON stats with detailed bins → snapshot (pure).
//! - `exposition`: exposition text → snapshot (pure).
//! - `interval`: the per-interval result both sources produce.
//! - `outcomes`: the filter's per-outcome counter pairs (names, deltas, sums).
//! - `delta`: snapshots → interval deltas, restarts, failed targets (pure).
//! - `body`: reading a response body with a size cap (both HTTP edges).
//! - `envoy_admin`: the HTTP edge for Envoy admin endpoints.
//! - `prometheus_api`: PromQL building and the query API's JSON (pure).
//! - `prometheus_proxies`: the per-proxy PromQL and its answers joined per Envoy (pure).
//! - `prometheus`: the HTTP edge for a Prometheus server.
//! - `served`: the deployment ids a proxy exports, when not the wanted one (pure).
//! - `error`: the one error type, naming the URL, status or parse problem.

mod admin_json;
mod body;
mod delta;
mod envoy_admin;
mod envoy_bins;
mod error;
mod exposition;
mod interval;
mod latency;
mod outcomes;
mod prometheus;
mod prometheus_api;
mod prometheus_proxies;
mod served;
mod snapshot;

#[cfg(test)]
mod prometheus_api_props;

pub use admin_json::{parse_detailed_stats, stats_filter};
pub use body::DEFAULT_MAX_BODY_BYTES;
pub use delta::{DeltaTracker, TargetDelta, TargetScrape, target_delta};
pub use envoy_admin::{EnvoyAdminSource, STATS_PATH, scrape_client};
pub use envoy_bins::{BinPlace, bin_place, envoy_bin_bounds_us};
pub(crate) use error::describe;
pub use error::{ExpositionError, SourceError};
pub use exposition::{deployment_label, is_relevant, parse_exposition};
pub use interval::{CohortInterval, IntervalMetrics, ProxyApplied, TargetFailure};
pub use latency::{BucketLayout, CumulativeLatency, fold_onto};
pub use outcomes::{OUTCOME_EVENTS, OUTCOME_REQUESTS, OutcomeCounts, Outcomes};
pub use prometheus::PrometheusSource;
pub use prometheus_api::{
    CohortValues, expand_template, latency_query, parse_latency_answer, promql_duration, requests_query,
};
pub use prometheus_proxies::ProxyQueries;
pub use snapshot::{AppliedRollout, ClassCounts, CohortSnapshot, DeploymentSnapshot, PerCohort};
