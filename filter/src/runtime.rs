//! What a VM's root context shares with its HTTP contexts: the validated
//! configuration, the metric ids, and the share currently in force.

use canary_core::metrics::{
    Applied, StatusClass, applied_generation_stat, applied_share_stat, config_age_stat, latency_stat,
    outcome_events_stat, outcome_requests_stat, requests_stat,
};
use canary_core::outcome::OutcomeRules;
use canary_core::{Cohort, FilterConfig, Share};
use proxy_wasm::hostcalls::{define_metric, record_metric};
use proxy_wasm::types::{MetricType, Status};
use std::cell::Cell;

/// Host metric ids for one deployment: a counter per (cohort, status class), a
/// latency histogram per cohort, the three applied-rollout gauges and two counters
/// per (outcome rule, cohort), defined once per VM at configure time. A routing-only
/// deployment has the gauges alone.
#[derive(Debug)]
pub struct MetricIds {
    /// `None` for a routing-only deployment (`"metrics": "none"`): nothing counted per request.
    requests: Option<[[u32; StatusClass::ALL.len()]; Cohort::ALL.len()]>,
    latency: Option<[u32; Cohort::ALL.len()]>,
    applied: AppliedGaugeIds,
    /// Per outcome rule, in the configuration's order, per cohort.
    outcomes: Vec<[OutcomeCounterIds; Cohort::ALL.len()]>,
}

/// One outcome's counters for one cohort.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutcomeCounterIds {
    /// The denominator: requests the rule applies to.
    pub requests: u32,
    /// The numerator: those that matched.
    pub events: u32,
}

/// The gauges saying what this Envoy applies; every VM sets them on every tick.
#[derive(Debug)]
struct AppliedGaugeIds {
    generation: u32,
    share_bp: u32,
    config_age_ms: u32,
}

impl MetricIds {
    /// The applied-rollout gauges always; the per-cohort counters, histograms and
    /// outcome counters only when `counted` (a routing-only deployment defines none).
    pub fn define(deployment: &str, outcomes: &OutcomeRules, counted: bool) -> Result<MetricIds, Status> {
        let applied = AppliedGaugeIds {
            generation: define_metric(MetricType::Gauge, &applied_generation_stat(deployment))?,
            share_bp: define_metric(MetricType::Gauge, &applied_share_stat(deployment))?,
            config_age_ms: define_metric(MetricType::Gauge, &config_age_stat(deployment))?,
        };
        let mut ids = MetricIds { requests: None, latency: None, applied, outcomes: Vec::new() };
        if !counted {
            return Ok(ids);
        }
        let mut requests = [[0; StatusClass::ALL.len()]; Cohort::ALL.len()];
        for (cohort, row) in Cohort::ALL.iter().zip(requests.iter_mut()) {
            for (class, id) in StatusClass::ALL.iter().zip(row.iter_mut()) {
                *id = define_metric(MetricType::Counter, &requests_stat(deployment, *cohort, *class))?;
            }
        }
        let mut latency = [0; Cohort::ALL.len()];
        for (cohort, id) in Cohort::ALL.iter().zip(latency.iter_mut()) {
            *id = define_metric(MetricType::Histogram, &latency_stat(deployment, *cohort))?;
        }
        ids.requests = Some(requests);
        ids.latency = Some(latency);
        ids.outcomes.reserve(outcomes.len());
        for rule in outcomes.rules() {
            let mut row = [OutcomeCounterIds::default(); Cohort::ALL.len()];
            for (cohort, ids) in Cohort::ALL.iter().zip(row.iter_mut()) {
                ids.requests =
                    define_metric(MetricType::Counter, &outcome_requests_stat(deployment, *cohort, &rule.name))?;
                ids.events = define_metric(MetricType::Counter, &outcome_events_stat(deployment, *cohort, &rule.name))?;
            }
            ids.outcomes.push(row);
        }
        Ok(ids)
    }

    pub fn requests(&self, cohort: Cohort, class: StatusClass) -> Option<u32> {
        self.requests.as_ref()?.get(cohort.index())?.get(class.index()).copied()
    }

    pub fn latency(&self, cohort: Cohort) -> Option<u32> {
        self.latency.as_ref()?.get(cohort.index()).copied()
    }

    /// The counters of outcome rule `index` (its position in the configuration) for `cohort`.
    pub fn outcome(&self, index: usize, cohort: Cohort) -> Option<OutcomeCounterIds> {
        self.outcomes.get(index)?.get(cohort.index()).copied()
    }

    /// Sets the applied-rollout gauges (tick time only). The gauges are one per Envoy,
    /// shared by its VMs: the last VM to tick wins, and all derive the same values
    /// from the one published record.
    pub fn record_applied(&self, applied: &Applied) -> Result<(), Status> {
        record_metric(self.applied.generation, applied.generation)?;
        record_metric(self.applied.share_bp, applied.share_bp())?;
        record_metric(self.applied.config_age_ms, applied.config_age_ms)
    }
}

/// One VM's runtime state, shared by `Rc` between the root and HTTP contexts
/// (a VM is single-threaded).
#[derive(Debug)]
pub struct Runtime {
    pub config: FilterConfig,
    /// Per deployment, in the configuration's order.
    pub deployments: Vec<DeploymentRuntime>,
    /// Whether the host offers `clear_route_cache` (learnt on the first call).
    pub route_cache: Cell<RouteCacheClearing>,
}

/// One deployment's metric ids and the share this VM routes it with.
#[derive(Debug)]
pub struct DeploymentRuntime {
    pub metrics: MetricIds,
    /// Updated on ticks, read on every request.
    pub share: Cell<Share>,
}

/// Whether the host clears the route cache on request: Envoy 1.33 and later offer the
/// `clear_route_cache` foreign function (and, for newer ABI versions, no longer clear
/// it when a Wasm filter sets a header); older hosts clear it themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCacheClearing {
    Untried,
    Offered,
    /// The host has no such function: it re-picks the route itself, nothing to do.
    Absent,
}

impl Runtime {
    /// Defines every deployment's metrics; `Err` names the deployment whose definition failed.
    pub fn new(config: FilterConfig) -> Result<Runtime, (String, Status)> {
        let mut deployments = Vec::with_capacity(config.deployments.len());
        for d in &config.deployments {
            let metrics = MetricIds::define(&d.deployment, &d.outcomes, d.metrics.counts_requests())
                .map_err(|s| (d.deployment.clone(), s))?;
            deployments.push(DeploymentRuntime { metrics, share: Cell::new(d.initial_share) });
        }
        Ok(Runtime { config, deployments, route_cache: Cell::new(RouteCacheClearing::Untried) })
    }
}
