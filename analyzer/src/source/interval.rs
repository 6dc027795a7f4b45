//! What happened in one check interval, summed over every scrape target: the
//! one type both sources produce and the statistics consume.

use canary_core::Cohort;
use serde::{Deserialize, Serialize};

use crate::stats::{CohortCounts, IntervalCounts, LatencyHistogram};

use super::outcomes::Outcomes;
use super::snapshot::{ClassCounts, PerCohort};

/// One cohort's interval: requests per class and, when any target exported the
/// histogram, the latency distribution of the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortInterval {
    pub requests: ClassCounts,
    /// `None` means no data (no contributing target exported the histogram), not "fast".
    pub latency: Option<LatencyHistogram>,
    /// Outcome counters' deltas by outcome name; an outcome no contributing target
    /// exported is absent (no data), one whose counters did not move holds zeros.
    #[serde(default)]
    pub outcomes: Outcomes,
}

/// A target that contributed nothing to the interval, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFailure {
    pub target: String,
    pub reason: String,
}

/// What one proxy (one Envoy) applied in an interval, from its applied-rollout
/// gauges (`docs/metrics.md`), and how much traffic it served under it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyApplied {
    /// The scrape target (admin URL) or, from Prometheus, the series' identifying
    /// labels: `pod (instance)`, or the `instance` alone.
    pub proxy: String,
    /// The generation it applies at the end of the interval; `None` when it exports no
    /// gauges (a filter older than the gauges). 0 means it has accepted no answer yet.
    pub generation: Option<u64>,
    /// The share it routes with at the end of the interval, in basis points.
    pub share_bp: Option<u32>,
    /// Milliseconds since the analyzer last confirmed its config; `u64::MAX` when
    /// that is unknown (never confirmed, or the proxy's clock stepped back).
    pub config_age_ms: Option<u64>,
    /// It applied a different generation at the start of the interval (its previous
    /// scrape) than at the end: requests in this interval were split under two shares.
    pub changed_during_interval: bool,
    /// Canary requests this proxy served in the interval (to weight its share).
    pub canary_requests: u64,
    /// Control requests this proxy served in the interval.
    pub control_requests: u64,
    /// Set when the proxy exports no series of the deployment: the deployment ids it
    /// exports instead (empty: none). `None`: it exports the deployment, or the source cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_deployments: Option<Vec<String>>,
}

/// The interval deltas of one deployment, summed across targets, with an account
/// of which targets counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalMetrics {
    pub cohorts: PerCohort<CohortInterval>,
    /// Targets whose deltas are in the sums.
    pub contributing_targets: Vec<String>,
    /// Targets that restarted during the interval; their delta is their current
    /// value (counted from 0 after the restart), as Prometheus `increase()` does.
    pub restarted_targets: Vec<String>,
    /// Targets seen for the first time (or again after a failure): this scrape is
    /// only their baseline, they contribute from the next interval on.
    pub baseline_targets: Vec<String>,
    /// Targets that failed to scrape or whose data could not be used.
    pub failed_targets: Vec<TargetFailure>,
    /// Every proxy seen in the interval, with what it applies. Empty when the source
    /// could not tell (a failed gauge query on Prometheus); failed targets are absent.
    #[serde(default)]
    pub proxies: Vec<ProxyApplied>,
}

impl IntervalMetrics {
    /// Requests and errors (5xx + resets) of one cohort.
    pub fn cohort_counts(&self, cohort: Cohort) -> CohortCounts {
        let requests = &self.cohorts.get(cohort).requests;
        CohortCounts { requests: requests.total(), errors: requests.errors() }
    }

    /// The error-rate test's input: canary vs control.
    pub fn interval_counts(&self) -> IntervalCounts {
        IntervalCounts { canary: self.cohort_counts(Cohort::Canary), control: self.cohort_counts(Cohort::Control) }
    }

    /// All requests of one cohort (the sample-ratio check's input).
    pub fn requests(&self, cohort: Cohort) -> u64 {
        self.cohorts.get(cohort).requests.total()
    }

    /// An outcome's requests and events (as `errors`) for canary and control; `None`
    /// when neither cohort has the outcome's counters (no target exported them). A
    /// cohort without them while the other has them counted nothing: zeros.
    pub fn outcome_counts(&self, outcome: &str) -> Option<IntervalCounts> {
        let counts = |cohort: Cohort| self.cohorts.get(cohort).outcomes.get(outcome).copied();
        let (canary, control) = (counts(Cohort::Canary), counts(Cohort::Control));
        if canary.is_none() && control.is_none() {
            return None;
        }
        let as_counts = |counts: Option<super::outcomes::OutcomeCounts>| {
            let counts = counts.unwrap_or_default();
            CohortCounts { requests: counts.requests, errors: counts.events }
        };
        Some(IntervalCounts { canary: as_counts(canary), control: as_counts(control) })
    }

    /// The interval's latency histogram of one cohort; `None` when there is no data.
    pub fn latency(&self, cohort: Cohort) -> Option<&LatencyHistogram> {
        self.cohorts.get(cohort).latency.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_5xx_and_resets() {
        let mut metrics = IntervalMetrics::default();
        metrics.cohorts.canary.requests =
            ClassCounts { success: 90, client_error: 4, server_error: 5, reset: 1, ..Default::default() };
        metrics.cohorts.control.requests = ClassCounts { success: 200, server_error: 2, ..Default::default() };
        metrics.cohorts.forced.requests = ClassCounts { success: 7, ..Default::default() };
        let counts = metrics.interval_counts();
        assert_eq!(counts.canary, CohortCounts { requests: 100, errors: 6 });
        assert_eq!(counts.control, CohortCounts { requests: 202, errors: 2 });
        assert_eq!(metrics.requests(Cohort::Forced), 7);
        assert!(metrics.latency(Cohort::Canary).is_none());
    }
}
