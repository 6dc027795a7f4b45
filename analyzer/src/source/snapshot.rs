//! What one scrape target (one Envoy) reported for one deployment: cumulative
//! counter values since that Envoy started, per cohort. Snapshots are never
//! compared with the statistics directly; `delta` turns two of them into an interval.

use canary_core::Cohort;
use canary_core::metrics::StatusClass;
use serde::{Deserialize, Serialize};

use super::latency::CumulativeLatency;
use super::outcomes::{self, Outcomes};

/// One value per cohort, addressed by [`Cohort`] (no indexing, no missing cohort).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerCohort<T> {
    pub canary: T,
    pub control: T,
    pub forced: T,
    pub excluded: T,
}

impl<T> PerCohort<T> {
    pub fn get(&self, cohort: Cohort) -> &T {
        match cohort {
            Cohort::Canary => &self.canary,
            Cohort::Control => &self.control,
            Cohort::Forced => &self.forced,
            Cohort::Excluded => &self.excluded,
        }
    }

    pub fn get_mut(&mut self, cohort: Cohort) -> &mut T {
        match cohort {
            Cohort::Canary => &mut self.canary,
            Cohort::Control => &mut self.control,
            Cohort::Forced => &mut self.forced,
            Cohort::Excluded => &mut self.excluded,
        }
    }

    /// Every cohort with its value, in [`Cohort::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Cohort, &T)> {
        Cohort::ALL.into_iter().map(move |cohort| (cohort, self.get(cohort)))
    }
}

/// Requests per status class (cumulative in a snapshot, a delta in an interval).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCounts {
    pub informational: u64,
    pub success: u64,
    pub redirection: u64,
    pub client_error: u64,
    pub server_error: u64,
    pub reset: u64,
}

impl ClassCounts {
    pub fn get(&self, class: StatusClass) -> u64 {
        match class {
            StatusClass::Informational => self.informational,
            StatusClass::Success => self.success,
            StatusClass::Redirection => self.redirection,
            StatusClass::ClientError => self.client_error,
            StatusClass::ServerError => self.server_error,
            StatusClass::Reset => self.reset,
        }
    }

    pub fn get_mut(&mut self, class: StatusClass) -> &mut u64 {
        match class {
            StatusClass::Informational => &mut self.informational,
            StatusClass::Success => &mut self.success,
            StatusClass::Redirection => &mut self.redirection,
            StatusClass::ClientError => &mut self.client_error,
            StatusClass::ServerError => &mut self.server_error,
            StatusClass::Reset => &mut self.reset,
        }
    }

    /// All finished requests.
    pub fn total(&self) -> u64 {
        StatusClass::ALL.into_iter().fold(0u64, |sum, class| sum.saturating_add(self.get(class)))
    }

    /// Failed requests: 5xx and resets ([`StatusClass::is_error`]).
    pub fn errors(&self) -> u64 {
        StatusClass::ALL
            .into_iter()
            .filter(|class| class.is_error())
            .fold(0u64, |sum, class| sum.saturating_add(self.get(class)))
    }

    /// Whether any class is lower here than in `earlier` (a counter went down).
    pub fn any_below(&self, earlier: &ClassCounts) -> bool {
        StatusClass::ALL.into_iter().any(|class| self.get(class) < earlier.get(class))
    }

    /// Class by class `self − earlier`, saturating at 0.
    pub fn minus(&self, earlier: &ClassCounts) -> ClassCounts {
        let mut delta = ClassCounts::default();
        for class in StatusClass::ALL {
            *delta.get_mut(class) = self.get(class).saturating_sub(earlier.get(class));
        }
        delta
    }

    /// Class by class `self + other`, saturating.
    pub fn add(&mut self, other: &ClassCounts) {
        for class in StatusClass::ALL {
            let mine = self.get_mut(class);
            *mine = mine.saturating_add(other.get(class));
        }
    }
}

/// What one target reported for one cohort.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortSnapshot {
    /// Cumulative `canary_requests_total` per class (absent series read as 0).
    pub requests: ClassCounts,
    /// Cumulative `canary_latency_us` (either layout); `None` when the target exported no histogram.
    pub latency: Option<CumulativeLatency>,
    /// Cumulative outcome counters by outcome name (absent outcomes: not exported).
    #[serde(default)]
    pub outcomes: Outcomes,
}

/// What a target's applied-rollout gauges said; each `None` when the gauge is absent
/// (a filter older than the gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRollout {
    /// `canary_applied_generation`: 0 before the filter accepted any answer.
    pub generation: Option<u64>,
    /// `canary_applied_share_bp`: the share it routes with, 0..=10 000.
    pub share_bp: Option<u32>,
    /// `canary_config_age_ms`: `u64::MAX` when unknown.
    pub config_age_ms: Option<u64>,
}

/// One scrape of one target, for one deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSnapshot {
    pub cohorts: PerCohort<CohortSnapshot>,
    /// What the target applies at the time of the scrape (gauges, not deltas).
    #[serde(default)]
    pub applied: AppliedRollout,
    /// Envoy's `envoy_server_uptime` (seconds), when exported: if it goes down,
    /// the Envoy restarted even if its counters already grew past their old values.
    pub server_uptime_seconds: Option<f64>,
    /// Envoy's `server.hot_restart_epoch`, when exported. A hot restart (`--restart-epoch`)
    /// keeps uptime going while the filter's counters start again, so this is the only
    /// sign of one whose new counters all passed the old values before the next scrape.
    #[serde(default)]
    pub hot_restart_epoch: Option<u64>,
    /// Set when the target exports no series of the deployment: the deployment ids it
    /// exports instead (empty: none). See `served`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_deployments: Option<Vec<String>>,
}

impl DeploymentSnapshot {
    /// Whether the target exported any series of the deployment (counters, histograms
    /// or the applied-rollout gauges); the uptime does not count.
    pub fn exports_deployment(&self) -> bool {
        self.cohorts != PerCohort::default() || self.applied != AppliedRollout::default()
    }

    /// Whether the target restarted between `earlier` and this snapshot: uptime went
    /// down, the hot restart epoch changed, a request or outcome counter went down, or a
    /// histogram shrank or changed layout.
    pub fn restarted_since(&self, earlier: &DeploymentSnapshot) -> bool {
        let uptime_went_down = matches!(
            (self.server_uptime_seconds, earlier.server_uptime_seconds),
            (Some(now), Some(before)) if now < before
        );
        let epoch_changed = matches!(
            (self.hot_restart_epoch, earlier.hot_restart_epoch),
            (Some(now), Some(before)) if now != before
        );
        uptime_went_down
            || epoch_changed
            || Cohort::ALL.into_iter().any(|cohort| {
                let (now, before) = (self.cohorts.get(cohort), earlier.cohorts.get(cohort));
                let latency_restarted = match (&now.latency, &before.latency) {
                    (Some(now), Some(before)) => now.restarted_since(before),
                    (None, Some(_)) => true,
                    _ => false,
                };
                now.requests.any_below(&before.requests)
                    || latency_restarted
                    || outcomes::any_below(&now.outcomes, &before.outcomes)
            })
    }
}
