//! The filter's outcome counters: per cohort and named outcome, the requests the
//! outcome applies to and the matching events among them (`docs/metrics.md`).
//!
//! The metric contract, shared with the filter:
//! - Prometheus: `canary_outcome_requests_total{deployment,cohort,outcome}` and
//!   `canary_outcome_events_total{deployment,cohort,outcome}`;
//! - Envoy's JSON stats: `wasmcustom.canary.deployment.<id>.cohort.<cohort>.outcome.<name>.outcome_requests_total`
//!   and `...outcome_events_total`.
//!
//! Every outcome a target exports is read (the policy decides which it compares);
//! an outcome absent from a target is absent from its map, which is "no data", not
//! zero. Outcome names are `[a-z][a-z0-9_]{0,31}`, so a JSON name splits unambiguously.

use std::collections::BTreeMap;

use canary_core::Cohort;
use serde::{Deserialize, Serialize};

pub use canary_core::metrics::{OUTCOME_EVENTS, OUTCOME_REQUESTS};

/// The last segment of the denominator's stat name in Envoy's own (JSON) stats.
const REQUESTS_SUFFIX: &str = "outcome_requests_total";
/// The last segment of the numerator's stat name in Envoy's own (JSON) stats.
const EVENTS_SUFFIX: &str = "outcome_events_total";

/// Most outcomes read per target and cohort: far above what a filter config holds,
/// low enough that a stats endpoint full of odd names cannot grow the map without bound.
pub(super) const MAX_OUTCOMES: usize = 256;

/// One outcome's counters for one cohort (cumulative in a snapshot, a delta in an interval).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Requests the outcome applies to.
    pub requests: u64,
    /// Matching requests among them.
    pub events: u64,
}

/// Outcome name → counters.
pub type Outcomes = BTreeMap<String, OutcomeCounts>;

/// Which of the two counters a name or series is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutcomeCounter {
    Requests,
    Events,
}

impl OutcomeCounter {
    /// The counter a Prometheus metric name stands for.
    pub(super) fn from_metric(metric: &str) -> Option<OutcomeCounter> {
        match metric {
            OUTCOME_REQUESTS => Some(OutcomeCounter::Requests),
            OUTCOME_EVENTS => Some(OutcomeCounter::Events),
            _ => None,
        }
    }

    /// Sets this counter of `outcome` in `outcomes`, unless the map is full.
    pub(super) fn set(self, outcomes: &mut Outcomes, outcome: &str, value: u64) {
        if outcomes.len() >= MAX_OUTCOMES && !outcomes.contains_key(outcome) {
            return;
        }
        let counts = outcomes.entry(outcome.to_string()).or_default();
        match self {
            OutcomeCounter::Requests => counts.requests = value,
            OutcomeCounter::Events => counts.events = value,
        }
    }
}

/// Whether `name` is an outcome name the filter can define: `[a-z][a-z0-9_]{0,31}`.
pub(super) fn is_outcome_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.len() <= 32
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// Reads a JSON stat name (without the `wasmcustom.` prefix) of `deployment`:
/// `canary.deployment.<id>.cohort.<cohort>.outcome.<name>.<counter>`.
pub(super) fn parse_stat_name(name: &str, deployment: &str) -> Option<(Cohort, String, OutcomeCounter)> {
    let rest = name.strip_prefix("canary.deployment.")?.strip_prefix(deployment)?.strip_prefix(".cohort.")?;
    let (cohort_label, rest) = rest.split_once(".outcome.")?;
    let cohort = Cohort::ALL.into_iter().find(|c| c.label() == cohort_label)?;
    let (outcome, counter) = rest.rsplit_once('.')?;
    let counter = match counter {
        REQUESTS_SUFFIX => OutcomeCounter::Requests,
        EVENTS_SUFFIX => OutcomeCounter::Events,
        _ => return None,
    };
    is_outcome_name(outcome).then(|| (cohort, outcome.to_string(), counter))
}

/// Whether any outcome counter is lower in `now` than in `before` (a restart).
pub(super) fn any_below(now: &Outcomes, before: &Outcomes) -> bool {
    before.iter().any(|(name, earlier)| {
        now.get(name).is_some_and(|current| current.requests < earlier.requests || current.events < earlier.events)
    })
}

/// Outcome by outcome `now − before`; an outcome new in `now` started from 0. An
/// outcome gone from `now` is absent (its rule was removed, or the target restarted).
pub(super) fn minus(now: &Outcomes, before: &Outcomes) -> Outcomes {
    now.iter()
        .map(|(name, current)| {
            let earlier = before.get(name).copied().unwrap_or_default();
            let delta = OutcomeCounts {
                requests: current.requests.saturating_sub(earlier.requests),
                events: current.events.saturating_sub(earlier.events),
            };
            (name.clone(), delta)
        })
        .collect()
}

/// Adds `other` into `sum`, outcome by outcome (saturating).
pub(super) fn add(sum: &mut Outcomes, other: &Outcomes) {
    for (name, counts) in other {
        let total = sum.entry(name.clone()).or_default();
        total.requests = total.requests.saturating_add(counts.requests);
        total.events = total.events.saturating_add(counts.events);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn json_stat_names_split_into_cohort_outcome_and_counter() {
        let read = |name: &str| parse_stat_name(name, "demo");
        assert_eq!(
            read("canary.deployment.demo.cohort.canary.outcome.cache_hit.outcome_requests_total"),
            Some((Cohort::Canary, "cache_hit".to_string(), OutcomeCounter::Requests))
        );
        assert_eq!(
            read("canary.deployment.demo.cohort.control.outcome.x2.outcome_events_total"),
            Some((Cohort::Control, "x2".to_string(), OutcomeCounter::Events))
        );
        assert_eq!(read("canary.deployment.demo-2.cohort.canary.outcome.a.outcome_events_total"), None);
        assert_eq!(read("canary.deployment.demo.cohort.blue.outcome.a.outcome_events_total"), None);
        assert_eq!(read("canary.deployment.demo.cohort.canary.outcome.A.outcome_events_total"), None);
        assert_eq!(read("canary.deployment.demo.cohort.canary.outcome.a.b.outcome_events_total"), None);
        assert_eq!(read("canary.deployment.demo.cohort.canary.outcome.a.requests_total"), None);
        assert_eq!(read("canary.deployment.demo.cohort.canary.class.2xx.requests_total"), None);
    }

    #[test]
    fn deltas_subtract_per_outcome_and_new_outcomes_start_from_zero() {
        let counts = |requests, events| OutcomeCounts { requests, events };
        let before: Outcomes = [("hit".to_string(), counts(10, 7))].into();
        let now: Outcomes = [("hit".to_string(), counts(30, 20)), ("declined".to_string(), counts(4, 1))].into();
        let delta = minus(&now, &before);
        assert_eq!(delta["hit"], counts(20, 13));
        assert_eq!(delta["declined"], counts(4, 1));
        assert!(!any_below(&now, &before));
        assert!(any_below(&before, &now));
        let mut sum = delta.clone();
        add(&mut sum, &delta);
        assert_eq!(sum["hit"], counts(40, 26));
    }

    const EXPOSITION: &str = include_str!("testdata/outcomes.prom");
    const JSON: &str = include_str!("testdata/outcomes.json");

    fn counts(requests: u64, events: u64) -> OutcomeCounts {
        OutcomeCounts { requests, events }
    }

    /// Both of Envoy's forms, in the contract's names, read to the same outcomes; other
    /// deployments, unknown cohorts and names that are not outcome names are skipped.
    #[test]
    fn both_envoy_forms_read_the_outcome_counter_pairs_per_cohort() {
        let from_text = super::super::parse_exposition(EXPOSITION, "demo").unwrap();
        let from_json = super::super::parse_detailed_stats(JSON, "demo").unwrap();
        for snapshot in [&from_text, &from_json] {
            let (canary, control) = (&snapshot.cohorts.canary.outcomes, &snapshot.cohorts.control.outcomes);
            assert_eq!(canary, &Outcomes::from([("cache_hit".to_string(), counts(80, 60))]));
            assert_eq!(control["cache_hit"], counts(120, 108));
            assert_eq!(control["declined"], counts(7, 1));
            assert!(snapshot.cohorts.forced.outcomes.is_empty());
        }
        assert_eq!(from_text.cohorts, from_json.cohorts);
        let other = super::super::parse_detailed_stats(JSON, "demo-2").unwrap();
        assert_eq!(other.cohorts.canary.outcomes["cache_hit"], counts(0, 999));
        let bad = JSON.replace("\"value\":60", "\"value\":-1");
        let error = super::super::parse_detailed_stats(&bad, "demo").unwrap_err().to_string();
        assert!(error.contains("outcome_events_total is -1, expected a whole number >= 0"), "{error}");
    }

    /// An outcome counter that went down is a restart (the target's delta is its current
    /// value); one that appeared since the last scrape started from 0.
    #[test]
    fn outcome_counters_take_part_in_deltas_and_restarts() {
        use crate::source::target_delta;
        let before = super::super::parse_exposition(EXPOSITION, "demo").unwrap();
        let mut after = before.clone();
        after.cohorts.canary.requests.success += 20;
        after.cohorts.canary.outcomes.insert("cache_hit".into(), counts(100, 70));
        after.cohorts.canary.outcomes.insert("slow_db".into(), counts(3, 1));
        let delta = target_delta(&before, &after);
        assert!(!delta.restarted);
        assert_eq!(delta.cohorts.canary.outcomes["cache_hit"], counts(20, 10));
        assert_eq!(delta.cohorts.canary.outcomes["slow_db"], counts(3, 1));
        assert_eq!(delta.cohorts.control.outcomes["cache_hit"], counts(0, 0), "exported, did not move: zeros");
        let mut restarted = after.clone();
        restarted.cohorts.control.outcomes.insert("declined".into(), counts(2, 0));
        let delta = target_delta(&after, &restarted);
        assert!(delta.restarted, "a counter that went down");
        assert_eq!(delta.cohorts.control.outcomes["declined"], counts(2, 0));
    }

    /// The interval's pair per outcome: `None` when no cohort has it, zeros for a cohort
    /// without it while the other has it.
    #[test]
    fn an_interval_has_an_outcome_only_if_some_target_exported_it() {
        let mut tracker = crate::source::DeltaTracker::new();
        let scrape = |snapshot| vec![crate::source::TargetScrape { target: "envoy".into(), result: Ok(snapshot) }];
        let before = super::super::parse_exposition(EXPOSITION, "demo").unwrap();
        let mut after = before.clone();
        after.cohorts.control.outcomes.insert("declined".into(), counts(17, 3));
        tracker.advance(scrape(before));
        let interval = tracker.advance(scrape(after));
        let declined = interval.outcome_counts("declined").unwrap();
        assert_eq!((declined.canary.requests, declined.control.requests, declined.control.errors), (0, 10, 2));
        assert_eq!(interval.outcome_counts("cache_hit").unwrap().canary.requests, 0);
        assert_eq!(interval.outcome_counts("slow_db"), None);
    }

    #[test]
    fn the_map_stops_growing_at_its_bound() {
        let mut outcomes = Outcomes::new();
        for i in 0..MAX_OUTCOMES + 10 {
            OutcomeCounter::Requests.set(&mut outcomes, &format!("o{i}"), 1);
        }
        assert_eq!(outcomes.len(), MAX_OUTCOMES);
        OutcomeCounter::Events.set(&mut outcomes, "o0", 1);
        assert_eq!(outcomes["o0"], OutcomeCounts { requests: 1, events: 1 });
    }
}
