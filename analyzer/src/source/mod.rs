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
//!   the per-series `increase()` and the sum, and converts its JSON answer. With a
//!   [`MeshMapping`] it reads the mesh's own metrics instead of the filter's (Istio's
//!   standard metrics, Envoy's per-cluster upstream stats, or any counter and histogram
//!   with a label telling canary from control), into the same [`IntervalMetrics`].
//!
//! Modules, one concern each:
//! - `snapshot`: cumulative values of one target ([`DeploymentSnapshot`]).
//! - `latency`: a cumulative histogram in either layout, its deltas, the statistics'
//!   form, and bounds in other units as whole microseconds ([`LatencyUnit`]).
//! - `interval`: the per-interval result both sources produce.
//! - `outcomes`: the filter's per-outcome counter pairs (names, deltas, sums).
//! - `body`: reading a response body with a size cap (both HTTP edges).
//! - `served`: the deployment ids a proxy exports, when not the wanted one (pure).
//! - `error`: the one error type, naming the URL, status or parse problem.
//! - `envoy_admin/`: the Envoy admin source — its HTTP edge (`mod`), Envoy's
//!   log-linear bins and their grid (`envoy_bins`), JSON stats → snapshot
//!   (`admin_json`), exposition text → snapshot (`exposition`), snapshots → interval
//!   deltas with restarts and failed targets (`delta`).
//! - `prometheus/`: the Prometheus source — its HTTP edge (`mod`), PromQL and the
//!   query API's JSON (`api`), the per-proxy PromQL (`proxies`), the mesh mappings'
//!   PromQL (`mesh`).

mod body;
mod envoy_admin;
mod error;
mod interval;
mod latency;
mod outcomes;
mod prometheus;
mod served;
mod snapshot;

pub use body::DEFAULT_MAX_BODY_BYTES;
pub use envoy_admin::{
    BinPlace, DeltaTracker, EnvoyAdminSource, STATS_PATH, TargetDelta, TargetScrape, bin_place, deployment_label,
    envoy_bin_bounds_us, is_relevant, parse_detailed_stats, parse_exposition, scrape_client, stats_filter,
    target_delta,
};
pub(crate) use error::describe;
pub use error::{ExpositionError, SourceError};
pub use interval::{CohortInterval, IntervalMetrics, ProxyApplied, TargetFailure};
pub use latency::{BucketLayout, CumulativeLatency, LatencyUnit, fold_onto};
pub use outcomes::{OUTCOME_EVENTS, OUTCOME_REQUESTS, OutcomeCounts, Outcomes};
pub use prometheus::{
    CohortValues, MeshMapping, MeshPreset, PrometheusSource, ProxyQueries, expand_template, latency_query,
    parse_latency_answer, promql_duration, requests_query,
};
pub use snapshot::{AppliedRollout, ClassCounts, CohortSnapshot, DeploymentSnapshot, PerCohort};
