//! Per-window deltas: consecutive snapshots of each target → what happened in the
//! interval, summed across targets. Pure: the scrapes are handed in.
//!
//! Rules (each one keeps a restart or an outage from looking like a regression):
//! - **Targets are kept apart until deltas are taken**: summing cumulative counters
//!   first would hide one Envoy's restart inside another's growth.
//! - **Restart** (any counter or histogram bucket went down, the bucket layout
//!   changed, `envoy_server_uptime` went down or `envoy_server_hot_restart_epoch`
//!   changed: a hot restart keeps uptime going; for Envoy's detailed bins, any bin
//!   went down or vanished: bins appear as they fill, so deltas take the union of the
//!   two scrapes' bins, see `latency`): the target's delta is its current
//!   value — the counters restarted from 0, the Prometheus `increase()` convention,
//!   so both sources agree. The whole target is treated alike (every cohort, every
//!   series), so canary and control always cover the same stretch of time. Requests
//!   between the last scrape and the restart are lost, never invented.
//! - **Failed scrape**: the target contributes nothing to this interval, is reported,
//!   and its baseline is forgotten; its next good scrape is a new baseline. No
//!   interval ever holds a target's counts from more than one analyzer interval (a
//!   lumped delta could straddle a share change and bias the sample-ratio check).
//! - **New target**: its first scrape is its baseline; it contributes from the next.
//! - **Proxies**: every target that contributed, and every baseline target (with no
//!   requests), is listed with the gauges of its current scrape. It changed generation
//!   during the interval when its previous scrape (before a restart, too) showed another
//!   one; a target without the gauges in either scrape is never said to have changed.

use std::collections::BTreeMap;

use canary_core::Cohort;

use crate::stats::StatsError;

use crate::source::error::{SourceError, describe};
use crate::source::interval::{IntervalMetrics, ProxyApplied, TargetFailure};
use crate::source::outcomes;
use crate::source::snapshot::{AppliedRollout, CohortSnapshot, DeploymentSnapshot, PerCohort};

/// One target's scrape in one round: its snapshot, or why there is none.
#[derive(Debug)]
pub struct TargetScrape {
    pub target: String,
    pub result: Result<DeploymentSnapshot, SourceError>,
}

/// What one target did between two scrapes (the values in `cohorts` are deltas).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetDelta {
    pub cohorts: PerCohort<CohortSnapshot>,
    /// The target restarted in between: `cohorts` holds its current values.
    pub restarted: bool,
}

/// The delta of one target between `previous` and `current` (see the module rules).
pub fn target_delta(previous: &DeploymentSnapshot, current: &DeploymentSnapshot) -> TargetDelta {
    if current.restarted_since(previous) {
        return TargetDelta { cohorts: current.cohorts.clone(), restarted: true };
    }
    let mut cohorts = PerCohort::<CohortSnapshot>::default();
    for cohort in Cohort::ALL {
        let (now, before) = (current.cohorts.get(cohort), previous.cohorts.get(cohort));
        let latency = match (&now.latency, &before.latency) {
            (Some(now), Some(before)) => Some(now.minus(before)),
            // A histogram that just appeared started from 0.
            (Some(now), None) => Some(now.clone()),
            (None, _) => None,
        };
        let outcomes = outcomes::minus(&now.outcomes, &before.outcomes);
        *cohorts.get_mut(cohort) = CohortSnapshot { requests: now.requests.minus(&before.requests), latency, outcomes };
    }
    TargetDelta { cohorts, restarted: false }
}

/// Adds a target's delta to the interval sums, all or nothing.
fn add_delta(sums: &mut IntervalMetrics, delta: &TargetDelta) -> Result<(), StatsError> {
    let mut updated = sums.cohorts.clone();
    for cohort in Cohort::ALL {
        let from_target = delta.cohorts.get(cohort);
        let sum = updated.get_mut(cohort);
        sum.requests.add(&from_target.requests);
        outcomes::add(&mut sum.outcomes, &from_target.outcomes);
        if let Some(latency) = &from_target.latency {
            let histogram = latency.to_histogram()?;
            match &mut sum.latency {
                Some(total) => total.add(&histogram)?,
                None => sum.latency = Some(histogram),
            }
        }
    }
    sums.cohorts = updated;
    Ok(())
}

/// A target's entry in [`IntervalMetrics::proxies`]: the gauges of its current scrape,
/// compared with those of its previous one (`None` for a baseline), and the canary and
/// control requests of its delta (`None`: none counted).
fn proxy_applied(
    target: &str,
    before: Option<&AppliedRollout>,
    current: &DeploymentSnapshot,
    delta: Option<&TargetDelta>,
) -> ProxyApplied {
    let now = &current.applied;
    let requests = |cohort: Cohort| delta.map_or(0, |d| d.cohorts.get(cohort).requests.total());
    let changed_during_interval = matches!(
        (before.and_then(|b| b.generation), now.generation),
        (Some(start), Some(end)) if start != end
    );
    ProxyApplied {
        proxy: target.to_string(),
        generation: now.generation,
        share_bp: now.share_bp,
        config_age_ms: now.config_age_ms,
        changed_during_interval,
        canary_requests: requests(Cohort::Canary),
        control_requests: requests(Cohort::Control),
        other_deployments: current.other_deployments.clone(),
    }
}

/// Remembers each target's last good snapshot and turns each round of scrapes
/// into one interval.
#[derive(Debug, Default)]
pub struct DeltaTracker {
    previous: BTreeMap<String, DeploymentSnapshot>,
}

impl DeltaTracker {
    pub fn new() -> DeltaTracker {
        DeltaTracker::default()
    }

    /// Takes one round of scrapes (one per target) and returns the interval since
    /// the previous round. Targets absent from the round are forgotten.
    pub fn advance(&mut self, round: Vec<TargetScrape>) -> IntervalMetrics {
        let mut metrics = IntervalMetrics::default();
        let mut next = BTreeMap::new();
        for TargetScrape { target, result } in round {
            let current = match result {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    metrics.failed_targets.push(TargetFailure { target, reason: describe(&error) });
                    continue;
                }
            };
            match self.previous.get(&target) {
                None => {
                    metrics.proxies.push(proxy_applied(&target, None, &current, None));
                    metrics.baseline_targets.push(target.clone());
                }
                Some(previous) => {
                    let delta = target_delta(previous, &current);
                    match add_delta(&mut metrics, &delta) {
                        Ok(()) => {
                            if delta.restarted {
                                metrics.restarted_targets.push(target.clone());
                            }
                            let proxy = proxy_applied(&target, Some(&previous.applied), &current, Some(&delta));
                            metrics.proxies.push(proxy);
                            metrics.contributing_targets.push(target.clone());
                        }
                        Err(error) => metrics
                            .failed_targets
                            .push(TargetFailure { target: target.clone(), reason: describe(&error) }),
                    }
                }
            }
            next.insert(target, current);
        }
        self.previous = next;
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::latency::CumulativeLatency;
    use crate::source::snapshot::ClassCounts;
    use crate::stats::{CohortCounts, IntervalCounts};

    const BOUNDS: [u64; 3] = [1_000, 10_000, 100_000];

    /// A snapshot with `(2xx, 5xx)` per canary/control and histograms whose
    /// observations all fall in the first bucket.
    fn snapshot(canary: (u64, u64), control: (u64, u64)) -> DeploymentSnapshot {
        let cohort = |(ok, failed): (u64, u64)| CohortSnapshot {
            outcomes: Default::default(),
            requests: ClassCounts { success: ok, server_error: failed, ..Default::default() },
            latency: Some(CumulativeLatency {
                upper_bounds_us: BOUNDS.to_vec(),
                le_counts: vec![ok + failed; 3],
                count: ok + failed,
                sum_us: 500.0 * (ok + failed) as f64,
                ..Default::default()
            }),
        };
        let mut snapshot = DeploymentSnapshot::default();
        snapshot.cohorts.canary = cohort(canary);
        snapshot.cohorts.control = cohort(control);
        snapshot
    }

    fn ok(target: &str, snapshot: DeploymentSnapshot) -> TargetScrape {
        TargetScrape { target: target.to_string(), result: Ok(snapshot) }
    }

    fn failed(target: &str) -> TargetScrape {
        let error = SourceError::Status { url: target.to_string(), status: 503, body: "no healthy upstream".into() };
        TargetScrape { target: target.to_string(), result: Err(error) }
    }

    fn counts(canary: (u64, u64), control: (u64, u64)) -> IntervalCounts {
        IntervalCounts {
            canary: CohortCounts { requests: canary.0, errors: canary.1 },
            control: CohortCounts { requests: control.0, errors: control.1 },
        }
    }

    #[test]
    fn first_round_is_a_baseline_then_deltas_follow() {
        let mut tracker = DeltaTracker::new();
        let first = tracker.advance(vec![ok("a", snapshot((100, 1), (1_000, 10)))]);
        assert_eq!(first.baseline_targets, vec!["a"]);
        assert_eq!(first.interval_counts(), IntervalCounts::default());
        assert!(first.latency(Cohort::Canary).is_none(), "no data is None, not an empty histogram");

        let second = tracker.advance(vec![ok("a", snapshot((150, 3), (1_500, 14)))]);
        assert_eq!(second.contributing_targets, vec!["a"]);
        assert_eq!(second.interval_counts(), counts((52, 2), (504, 4)));
        let latency = second.latency(Cohort::Canary).unwrap();
        assert_eq!(latency.total(), 52);
        assert_eq!(latency.bucket_counts(), &[52, 0, 0, 0]);
        assert_eq!(second.requests(Cohort::Control), 504);
    }

    #[test]
    fn targets_are_summed_after_their_own_deltas() {
        let mut tracker = DeltaTracker::new();
        tracker.advance(vec![ok("a", snapshot((10, 0), (100, 0))), ok("b", snapshot((5, 0), (50, 0)))]);
        let interval = tracker.advance(vec![ok("a", snapshot((20, 1), (200, 2))), ok("b", snapshot((8, 1), (80, 0)))]);
        assert_eq!(interval.interval_counts(), counts((11 + 4, 2), (102 + 30, 2)));
        assert_eq!(interval.latency(Cohort::Control).unwrap().total(), 132);
        assert_eq!(interval.contributing_targets, vec!["a", "b"]);
    }

    #[test]
    fn a_restarted_target_counts_from_zero_and_never_goes_negative() {
        let mut tracker = DeltaTracker::new();
        tracker.advance(vec![ok("a", snapshot((1_000, 5), (9_000, 40))), ok("b", snapshot((10, 0), (100, 0)))]);
        // "a" restarted: its counters are small again. A naive delta would be hugely
        // negative (or wrap around) and look like a collapse of canary traffic.
        let interval =
            tracker.advance(vec![ok("a", snapshot((30, 2), (270, 1))), ok("b", snapshot((20, 0), (200, 0)))]);
        assert_eq!(interval.restarted_targets, vec!["a"]);
        assert_eq!(interval.interval_counts(), counts((32 + 10, 2), (271 + 100, 1)));
        assert_eq!(interval.latency(Cohort::Canary).unwrap().total(), 42);
        // The next interval is an ordinary delta from the post-restart values.
        let next = tracker.advance(vec![ok("a", snapshot((40, 2), (300, 1))), ok("b", snapshot((20, 0), (200, 0)))]);
        assert!(next.restarted_targets.is_empty());
        assert_eq!(next.interval_counts(), counts((10, 0), (30, 0)));
    }

    #[test]
    fn one_counter_going_down_restarts_the_whole_target() {
        let previous = snapshot((100, 10), (1_000, 10));
        // Canary 5xx went down while everything else grew: the target restarted and
        // grew back past its old values elsewhere; mixing would bias canary vs control.
        let mut current = snapshot((150, 10), (1_500, 20));
        current.cohorts.canary.requests.server_error = 3;
        let delta = target_delta(&previous, &current);
        assert!(delta.restarted);
        assert_eq!(delta.cohorts.control.requests.success, 1_500);
    }

    #[test]
    fn uptime_going_down_is_a_restart_even_when_counters_grew() {
        let mut previous = snapshot((100, 0), (1_000, 0));
        previous.server_uptime_seconds = Some(3_600.0);
        let mut current = snapshot((200, 0), (2_000, 0));
        current.server_uptime_seconds = Some(30.0);
        let delta = target_delta(&previous, &current);
        assert!(delta.restarted);
        assert_eq!(delta.cohorts.canary.requests.success, 200);
        current.server_uptime_seconds = Some(3_630.0);
        assert!(!target_delta(&previous, &current).restarted);
    }

    #[test]
    fn a_changed_hot_restart_epoch_is_a_restart_even_when_counters_and_uptime_grew() {
        // Recorded through a real hot restart (tests/tests/hot_restart.rs): epoch 0 had
        // served 200, epoch 1 served 300 and 5 errors before the next scrape; uptime went on.
        let mut previous = snapshot((0, 0), (200, 0));
        (previous.server_uptime_seconds, previous.hot_restart_epoch) = (Some(1.0), Some(0));
        let mut current = snapshot((0, 0), (300, 5));
        (current.server_uptime_seconds, current.hot_restart_epoch) = (Some(5.0), Some(1));
        let delta = target_delta(&previous, &current);
        assert!(delta.restarted);
        assert_eq!((delta.cohorts.control.requests.success, delta.cohorts.control.requests.server_error), (300, 5));
        current.hot_restart_epoch = Some(0);
        let unnoticed = target_delta(&previous, &current);
        assert!(!unnoticed.restarted, "the same epoch: no restart");
        assert_eq!(unnoticed.cohorts.control.requests.success, 100, "what the deltas make of it unnoticed");
        current.hot_restart_epoch = None;
        assert!(!target_delta(&previous, &current).restarted, "an epoch missing from one scrape says nothing");
    }

    #[test]
    fn a_failed_target_contributes_nothing_and_is_rebaselined() {
        let mut tracker = DeltaTracker::new();
        tracker.advance(vec![ok("a", snapshot((10, 0), (100, 0))), ok("b", snapshot((10, 0), (100, 0)))]);
        let interval = tracker.advance(vec![ok("a", snapshot((20, 0), (200, 0))), failed("b")]);
        assert_eq!(interval.interval_counts(), counts((10, 0), (100, 0)));
        assert_eq!(interval.failed_targets.len(), 1);
        assert_eq!(interval.failed_targets[0].target, "b");
        assert_eq!(interval.failed_targets[0].reason, "b answered with status 503: no healthy upstream");
        // Back: its scrape is a new baseline, not a two-interval lump.
        let back = tracker.advance(vec![ok("a", snapshot((30, 0), (300, 0))), ok("b", snapshot((50, 5), (500, 5)))]);
        assert_eq!(back.baseline_targets, vec!["b"]);
        assert_eq!(back.interval_counts(), counts((10, 0), (100, 0)));
        let after = tracker.advance(vec![ok("a", snapshot((30, 0), (300, 0))), ok("b", snapshot((60, 5), (600, 5)))]);
        assert_eq!(after.interval_counts(), counts((10, 0), (100, 0)));
    }

    #[test]
    fn a_target_with_another_bucket_layout_is_reported_not_mixed_in() {
        let mut tracker = DeltaTracker::new();
        let mut odd_previous = snapshot((10, 0), (100, 0));
        let mut odd_current = snapshot((20, 0), (200, 0));
        for s in [&mut odd_previous, &mut odd_current] {
            let latency = s.cohorts.canary.latency.as_mut().unwrap();
            latency.upper_bounds_us = vec![5_000, 50_000, 500_000];
        }
        tracker.advance(vec![ok("a", snapshot((10, 0), (100, 0))), ok("b", odd_previous)]);
        let interval = tracker.advance(vec![ok("a", snapshot((20, 0), (200, 0))), ok("b", odd_current)]);
        assert_eq!(interval.contributing_targets, vec!["a"]);
        assert_eq!(interval.failed_targets[0].target, "b");
        assert!(interval.failed_targets[0].reason.contains("different bucket bounds"));
        assert_eq!(interval.interval_counts(), counts((10, 0), (100, 0)), "nothing of b was added");
    }

    #[test]
    fn a_histogram_lagging_its_counters_is_still_a_valid_delta() {
        // Envoy merges worker histograms on stats flush, counters are exact at once:
        // the histogram may show fewer observations than the counters for a while.
        let previous = snapshot((10, 0), (100, 0));
        let mut current = snapshot((20, 0), (200, 0));
        current.cohorts.canary.latency = previous.cohorts.canary.latency.clone();
        let delta = target_delta(&previous, &current);
        assert!(!delta.restarted);
        assert_eq!(delta.cohorts.canary.requests.total(), 10);
        assert_eq!(delta.cohorts.canary.latency.as_ref().unwrap().count, 0);
    }

    /// `snapshot` whose canary and control latencies are Envoy's bins `(grid bound, count)`.
    fn with_bins(
        mut snapshot: DeploymentSnapshot,
        canary: &[(u64, u64)],
        control: &[(u64, u64)],
    ) -> DeploymentSnapshot {
        snapshot.cohorts.canary.latency = Some(CumulativeLatency::from_envoy_bins(canary.to_vec(), 0));
        snapshot.cohorts.control.latency = Some(CumulativeLatency::from_envoy_bins(control.to_vec(), 0));
        snapshot
    }

    #[test]
    fn envoys_bins_are_summed_over_targets_on_one_grid_and_a_bin_going_down_restarts() {
        let grid = crate::source::envoy_bin_bounds_us();
        let count_at = |interval: &IntervalMetrics, cohort, bound: u64| {
            let histogram = interval.latency(cohort).unwrap();
            assert_eq!(histogram.upper_bounds_us(), grid);
            histogram.bucket_counts()[grid.iter().position(|b| *b == bound).unwrap()]
        };
        let mut tracker = DeltaTracker::new();
        tracker.advance(vec![
            ok("a", with_bins(snapshot((10, 0), (10, 0)), &[(1_300, 10)], &[(1_300, 10)])),
            ok("b", with_bins(snapshot((5, 0), (5, 0)), &[(84, 5)], &[(84, 5)])),
        ]);
        // "a" filled a new bin (72 000); "b" has other bins than "a": both sum on the grid.
        let interval = tracker.advance(vec![
            ok("a", with_bins(snapshot((14, 0), (12, 0)), &[(1_300, 12), (72_000, 2)], &[(1_300, 12)])),
            ok("b", with_bins(snapshot((8, 0), (7, 0)), &[(84, 8)], &[(84, 7)])),
        ]);
        assert!(interval.restarted_targets.is_empty() && interval.failed_targets.is_empty(), "{interval:?}");
        assert_eq!((count_at(&interval, Cohort::Canary, 1_300), count_at(&interval, Cohort::Canary, 72_000)), (2, 2));
        assert_eq!(count_at(&interval, Cohort::Canary, 84), 3);
        assert_eq!(interval.latency(Cohort::Control).unwrap().total(), 4);
        // "a" restarted and served more 1.3 ms requests than before, but its 72 ms bin
        // went back to 0: the whole target restarted, its delta is its current value.
        let restarted = tracker.advance(vec![
            ok("a", with_bins(snapshot((20, 0), (20, 0)), &[(1_300, 20)], &[(1_300, 20)])),
            ok("b", with_bins(snapshot((8, 0), (7, 0)), &[(84, 8)], &[(84, 7)])),
        ]);
        assert_eq!(restarted.restarted_targets, vec!["a"]);
        assert_eq!(count_at(&restarted, Cohort::Canary, 1_300), 20);
        assert_eq!(restarted.latency(Cohort::Canary).unwrap().total(), 20);
    }

    /// `snapshot` with the gauges of a filter applying `generation` at `share_bp`.
    fn applying(mut snapshot: DeploymentSnapshot, generation: u64, share_bp: u32) -> DeploymentSnapshot {
        snapshot.applied =
            AppliedRollout { generation: Some(generation), share_bp: Some(share_bp), config_age_ms: Some(400) };
        snapshot
    }

    fn proxy(
        target: &str,
        (generation, share_bp): (u64, u32),
        changed_during_interval: bool,
        (canary_requests, control_requests): (u64, u64),
    ) -> ProxyApplied {
        ProxyApplied {
            proxy: target.to_string(),
            generation: Some(generation),
            share_bp: Some(share_bp),
            config_age_ms: Some(400),
            changed_during_interval,
            canary_requests,
            control_requests,
            other_deployments: None,
        }
    }

    #[test]
    fn every_scraped_target_is_a_proxy_with_its_gauges_and_requests() {
        let mut tracker = DeltaTracker::new();
        let first = tracker.advance(vec![
            ok("a", applying(snapshot((10, 0), (100, 0)), 7, 500)),
            ok("b", applying(snapshot((5, 0), (50, 0)), 7, 500)),
        ]);
        // Baselines are proxies too, with nothing counted.
        assert_eq!(first.proxies, vec![proxy("a", (7, 500), false, (0, 0)), proxy("b", (7, 500), false, (0, 0))]);

        // "b" moved to generation 8 (25 %) during the interval, "a" lags on 7.
        let second = tracker.advance(vec![
            ok("a", applying(snapshot((20, 1), (200, 2)), 7, 500)),
            ok("b", applying(snapshot((30, 0), (120, 0)), 8, 2_500)),
        ]);
        assert_eq!(
            second.proxies,
            vec![proxy("a", (7, 500), false, (11, 102)), proxy("b", (8, 2_500), true, (25, 70))]
        );
        let third = tracker.advance(vec![
            ok("a", applying(snapshot((20, 1), (200, 2)), 8, 2_500)),
            ok("b", applying(snapshot((40, 0), (150, 0)), 8, 2_500)),
        ]);
        assert_eq!(third.proxies, vec![proxy("a", (8, 2_500), true, (0, 0)), proxy("b", (8, 2_500), false, (10, 30))]);
    }

    #[test]
    fn failed_targets_are_not_proxies_of_the_interval() {
        let mut tracker = DeltaTracker::new();
        let mut odd = applying(snapshot((10, 0), (100, 0)), 7, 500);
        odd.cohorts.canary.latency.as_mut().unwrap().upper_bounds_us = vec![5_000, 50_000, 500_000];
        tracker.advance(vec![
            ok("a", applying(snapshot((10, 0), (100, 0)), 7, 500)),
            ok("b", applying(snapshot((10, 0), (100, 0)), 7, 500)),
            ok("odd", odd.clone()),
        ]);
        let interval = tracker.advance(vec![failed("a"), ok("b", applying(snapshot((10, 0), (100, 0)), 7, 500)), {
            let mut grown = odd;
            grown.cohorts.canary.requests.success = 20;
            ok("odd", grown)
        }]);
        assert_eq!(interval.failed_targets.len(), 2, "{:?}", interval.failed_targets);
        assert_eq!(interval.proxies, vec![proxy("b", (7, 500), false, (0, 0))]);
    }

    #[test]
    fn a_restarted_target_changed_only_if_its_generation_differs_from_before_the_restart() {
        let mut tracker = DeltaTracker::new();
        tracker.advance(vec![
            ok("same", applying(snapshot((1_000, 0), (9_000, 0)), 7, 500)),
            ok("other", applying(snapshot((1_000, 0), (9_000, 0)), 7, 500)),
        ]);
        let interval = tracker.advance(vec![
            ok("same", applying(snapshot((3, 0), (30, 0)), 7, 500)),
            ok("other", applying(snapshot((4, 0), (40, 0)), 8, 2_500)),
        ]);
        assert_eq!(interval.restarted_targets, vec!["same", "other"]);
        assert_eq!(
            interval.proxies,
            vec![proxy("same", (7, 500), false, (3, 30)), proxy("other", (8, 2_500), true, (4, 40))]
        );
    }

    #[test]
    fn a_filter_without_gauges_is_a_proxy_of_unknown_generation_that_never_changed() {
        let mut tracker = DeltaTracker::new();
        tracker.advance(vec![ok("old", snapshot((10, 0), (100, 0)))]);
        // Upgraded in place to a filter with gauges: no generation at the start to compare.
        let interval = tracker.advance(vec![ok("old", applying(snapshot((12, 0), (110, 0)), 7, 500))]);
        assert_eq!(interval.proxies, vec![proxy("old", (7, 500), false, (2, 10))]);
        let older = DeltaTracker::new().advance(vec![ok("old", snapshot((10, 0), (100, 0)))]);
        let expected = ProxyApplied { proxy: "old".into(), ..ProxyApplied::default() };
        assert_eq!(older.proxies, vec![expected]);
        assert_eq!(
            (older.proxies[0].generation, older.proxies[0].share_bp, older.proxies[0].config_age_ms),
            (None, None, None)
        );
    }
}
