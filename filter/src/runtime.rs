//! What a VM's root context shares with its HTTP contexts: the validated
//! configuration, the metric ids, and the share currently in force.

use canary_core::metrics::{StatusClass, latency_stat, requests_stat};
use canary_core::{Cohort, FilterConfig, Share};
use proxy_wasm::hostcalls::define_metric;
use proxy_wasm::types::{MetricType, Status};
use std::cell::Cell;

/// Host metric ids for one deployment: a counter per (cohort, status class) and a
/// latency histogram per cohort, defined once per VM at configure time.
#[derive(Debug)]
pub struct MetricIds {
    requests: [[u32; StatusClass::ALL.len()]; Cohort::ALL.len()],
    latency: [u32; Cohort::ALL.len()],
}

impl MetricIds {
    pub fn define(deployment: &str) -> Result<MetricIds, Status> {
        let mut ids =
            MetricIds { requests: [[0; StatusClass::ALL.len()]; Cohort::ALL.len()], latency: [0; Cohort::ALL.len()] };
        for (cohort, row) in Cohort::ALL.iter().zip(ids.requests.iter_mut()) {
            for (class, id) in StatusClass::ALL.iter().zip(row.iter_mut()) {
                *id = define_metric(MetricType::Counter, &requests_stat(deployment, *cohort, *class))?;
            }
        }
        for (cohort, id) in Cohort::ALL.iter().zip(ids.latency.iter_mut()) {
            *id = define_metric(MetricType::Histogram, &latency_stat(deployment, *cohort))?;
        }
        Ok(ids)
    }

    pub fn requests(&self, cohort: Cohort, class: StatusClass) -> Option<u32> {
        self.requests.get(cohort.index())?.get(class.index()).copied()
    }

    pub fn latency(&self, cohort: Cohort) -> Option<u32> {
        self.latency.get(cohort.index()).copied()
    }
}

/// One VM's runtime state, shared by `Rc` between the root and HTTP contexts
/// (a VM is single-threaded).
#[derive(Debug)]
pub struct Runtime {
    pub config: FilterConfig,
    pub metrics: MetricIds,
    /// The share this VM routes with; updated on ticks, read on every request.
    pub share: Cell<Share>,
}
