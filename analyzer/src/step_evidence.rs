//! What the current ladder step has measured on its own: how many checks found
//! data, how many did not, and how many requests each cohort served. The error
//! rate's evidence carries across steps (it is valid to), so without this a step
//! in which every scrape failed would still be promoted on earlier steps' data.
//!
//! A step earns its promotion with a window's worth of checks that found data,
//! counted in checks rather than in wall time, so a step of the clock cannot
//! cut a window short:
//! - `expected = max(1, window / check_interval)` checks fit in the window;
//! - up to [`MISSING_CHECKS_TOLERANCE_PERCENT`] of them may lack data (a target
//!   restarting, one failed scrape); the step needs the rest with data;
//! - the latest check must have found data (never promote during an outage);
//! - each compared cohort must have served `min_requests_per_cohort` at this step;
//! - the window starts once every proxy applies the step (the filter's gauges, see
//!   [`crate::fleet`]) or once the policy's `fleet_deadline` has passed; checks before
//!   that do not count, and while a proxy lags at the latest check nothing is promoted.
//!
//! A step still short of its data after `stall_after_windows` windows is *stalled*:
//! it still never promotes, and the status and one webhook post say so.
//!
//! Pure: the engine records each check and resets the record when the step changes.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Share of a window's checks that may find no data and still let the step be
/// promoted: one in ten, i.e. one missed check in the default 5 min / 30 s window.
pub const MISSING_CHECKS_TOLERANCE_PERCENT: u64 = 10;

/// One step's own record. Reset whenever the share, the phase or the window changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepEvidence {
    /// The state generation this record belongs to (a new generation starts a new record).
    pub generation: u64,
    /// Checks at this step whose source answered with data from at least one target.
    pub checks_with_data: u64,
    /// Checks at this step that found nothing: every target failed, or the source did.
    pub checks_without_data: u64,
    /// Whether the latest check at this step found data.
    pub latest_had_data: bool,
    pub canary_requests: u64,
    pub control_requests: u64,
    /// Every check at this step, counted towards the window or not.
    #[serde(default)]
    pub checks_seen: u64,
    /// Some check at this step saw every proxy on the step's generation.
    #[serde(default)]
    pub fleet_applied: bool,
    /// Checks that waited for the fleet to apply the step (not counted).
    #[serde(default)]
    pub checks_waiting_for_fleet: u64,
    /// The latest check's fleet summary, when some proxy lagged.
    #[serde(default)]
    pub latest_lagging: Option<String>,
    /// The stall has been announced (once per step).
    #[serde(default)]
    pub stall_announced: bool,
}

/// What one check contributed to its step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// At least one target (or the Prometheus server) answered with usable data.
    pub had_data: bool,
    pub canary_requests: u64,
    pub control_requests: u64,
    /// `None` when every proxy that reports applies the step's generation (or none reports);
    /// else the fleet summary naming the laggards.
    pub fleet_lagging: Option<String>,
}

impl StepEvidence {
    /// A fresh record for the step of `generation`.
    pub fn new(generation: u64) -> StepEvidence {
        StepEvidence { generation, ..StepEvidence::default() }
    }

    /// Records one check; `fleet_deadline_checks` is how many checks the window waits
    /// for every proxy to apply the step before it starts anyway.
    pub fn record(&mut self, check: CheckOutcome, fleet_deadline_checks: u64) {
        self.checks_seen = self.checks_seen.saturating_add(1);
        self.latest_lagging = check.fleet_lagging.clone();
        if check.fleet_lagging.is_none() {
            self.fleet_applied = true;
        }
        if !self.fleet_applied && self.checks_seen <= fleet_deadline_checks {
            self.checks_waiting_for_fleet = self.checks_waiting_for_fleet.saturating_add(1);
            self.latest_had_data = check.had_data;
            return;
        }
        if check.had_data {
            self.checks_with_data = self.checks_with_data.saturating_add(1);
        } else {
            self.checks_without_data = self.checks_without_data.saturating_add(1);
        }
        self.latest_had_data = check.had_data;
        self.canary_requests = self.canary_requests.saturating_add(check.canary_requests);
        self.control_requests = self.control_requests.saturating_add(check.control_requests);
    }

    /// A step that has measured plenty: for tests of rules other than this one.
    #[cfg(test)]
    pub(crate) fn ample() -> StepEvidence {
        let mut evidence = StepEvidence::new(0);
        evidence.checks_with_data = 1_000_000;
        evidence.latest_had_data = true;
        evidence.canary_requests = 1_000_000_000;
        evidence.control_requests = 1_000_000_000;
        evidence.checks_seen = 1_000_000;
        evidence.fleet_applied = true;
        evidence
    }

    /// Why this step may not be promoted yet, or `None` when it has earned it.
    pub fn promotion_blocker(
        &self,
        window: Duration,
        check_interval: Duration,
        min_requests_per_cohort: u64,
    ) -> Option<String> {
        let expected = expected_checks(window, check_interval);
        let needed = checks_with_data_needed(window, check_interval);
        let checks = self.checks_with_data.saturating_add(self.checks_without_data);
        if checks == 0 {
            return Some("no check has run at this step yet".to_string());
        }
        if !self.latest_had_data {
            return Some(format!(
                "the latest check found no data ({} of {checks} checks at this step had none)",
                self.checks_without_data
            ));
        }
        if self.checks_with_data < needed {
            return Some(format!(
                "{} checks at this step found data, {needed} needed (a window's {expected} less {} % tolerance); \
                 {} found none",
                self.checks_with_data, MISSING_CHECKS_TOLERANCE_PERCENT, self.checks_without_data
            ));
        }
        let fewest = self.canary_requests.min(self.control_requests);
        if fewest < min_requests_per_cohort {
            return Some(format!(
                "this step served {} canary and {} control requests, {min_requests_per_cohort} per cohort needed",
                self.canary_requests, self.control_requests
            ));
        }
        if let Some(lagging) = &self.latest_lagging {
            return Some(format!("not every proxy applies this step: {lagging}"));
        }
        None
    }

    /// `Some(why)` when the step has run `stall_after_windows` windows' worth of checks
    /// and still has not earned its promotion.
    pub fn stalled(
        &self,
        window: Duration,
        check_interval: Duration,
        min_requests_per_cohort: u64,
        stall_after_windows: u32,
    ) -> Option<String> {
        let limit = expected_checks(window, check_interval).saturating_mul(u64::from(stall_after_windows));
        if self.checks_seen < limit {
            return None;
        }
        let why = self.promotion_blocker(window, check_interval, min_requests_per_cohort)?;
        Some(format!("stalled after {stall_after_windows} windows ({} checks): {why}", self.checks_seen))
    }
}

/// Checks with data a step needs: a window's worth less [`MISSING_CHECKS_TOLERANCE_PERCENT`].
pub fn checks_with_data_needed(window: Duration, check_interval: Duration) -> u64 {
    let expected = expected_checks(window, check_interval);
    expected - expected * MISSING_CHECKS_TOLERANCE_PERCENT / 100
}

/// Checks that fit in a step's window (at least one).
fn expected_checks(window: Duration, check_interval: Duration) -> u64 {
    let interval_ms = check_interval.as_millis().max(1);
    u64::try_from(window.as_millis() / interval_ms).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(evidence: &StepEvidence, window_s: u64, interval_s: u64, min_requests: u64) -> Option<String> {
        evidence.promotion_blocker(Duration::from_secs(window_s), Duration::from_secs(interval_s), min_requests)
    }

    fn checks(evidence: &mut StepEvidence, n: u64, had_data: bool, requests: u64) {
        for _ in 0..n {
            let check = CheckOutcome {
                had_data,
                canary_requests: requests,
                control_requests: requests * 19,
                fleet_lagging: None,
            };
            evidence.record(check, 2);
        }
    }

    #[test]
    fn a_window_of_checks_with_enough_requests_earns_the_promotion() {
        let mut evidence = StepEvidence::new(7);
        checks(&mut evidence, 10, true, 100);
        assert_eq!(blocker(&evidence, 300, 30, 1_000), None);
    }

    #[test]
    fn one_missing_check_in_ten_is_tolerated_two_are_not() {
        let mut evidence = StepEvidence::new(7);
        checks(&mut evidence, 1, false, 0);
        checks(&mut evidence, 9, true, 200);
        assert_eq!(blocker(&evidence, 300, 30, 1_000), None);
        let mut evidence = StepEvidence::new(7);
        checks(&mut evidence, 2, false, 0);
        checks(&mut evidence, 8, true, 200);
        let why = blocker(&evidence, 300, 30, 1_000).unwrap();
        assert!(why.contains("8 checks at this step found data, 9 needed"), "{why}");
        // Missing checks are made up by later ones: the step runs on until it has its window's worth.
        checks(&mut evidence, 1, true, 200);
        assert_eq!(blocker(&evidence, 300, 30, 1_000), None);
    }

    #[test]
    fn a_step_whose_scrapes_all_fail_is_never_promoted_on_earlier_data() {
        let mut evidence = StepEvidence::new(7);
        checks(&mut evidence, 50, false, 0);
        let why = blocker(&evidence, 300, 30, 1_000).unwrap();
        assert!(why.contains("latest check found no data (50 of 50"), "{why}");
    }

    #[test]
    fn an_outage_now_blocks_even_after_a_good_window() {
        let mut evidence = StepEvidence::new(7);
        checks(&mut evidence, 10, true, 200);
        checks(&mut evidence, 1, false, 0);
        assert!(blocker(&evidence, 300, 30, 1_000).is_some());
    }

    #[test]
    fn too_few_requests_at_this_step_hold() {
        let mut evidence = StepEvidence::new(7);
        checks(&mut evidence, 10, true, 10);
        let why = blocker(&evidence, 300, 30, 1_000).unwrap();
        assert!(why.contains("100 canary and 1900 control requests, 1000 per cohort needed"), "{why}");
    }

    fn lagging(evidence: &mut StepEvidence, n: u64, deadline_checks: u64) {
        for _ in 0..n {
            let check = CheckOutcome {
                had_data: true,
                canary_requests: 200,
                control_requests: 3_800,
                fleet_lagging: Some("1 of 2 proxies on generation 8; lagging: b (generation 7, 1.00 %)".into()),
            };
            evidence.record(check, deadline_checks);
        }
    }

    #[test]
    fn the_window_starts_when_the_fleet_applies_the_step() {
        let mut evidence = StepEvidence::new(8);
        lagging(&mut evidence, 3, 6);
        assert_eq!((evidence.checks_waiting_for_fleet, evidence.checks_with_data), (3, 0));
        // Every proxy on the step from the fourth check: the window's ten checks start then.
        checks(&mut evidence, 9, true, 200);
        assert_eq!(blocker(&evidence, 300, 30, 1_000), None);
        assert_eq!(evidence.checks_with_data, 9);
    }

    #[test]
    fn past_the_fleet_deadline_the_window_runs_but_a_laggard_holds_the_promotion() {
        let mut evidence = StepEvidence::new(8);
        lagging(&mut evidence, 14, 4);
        assert_eq!((evidence.checks_waiting_for_fleet, evidence.checks_with_data), (4, 10));
        let why = blocker(&evidence, 300, 30, 1_000).unwrap();
        assert!(
            why.contains("not every proxy applies this step: 1 of 2 proxies") && why.contains("lagging: b"),
            "{why}"
        );
        checks(&mut evidence, 1, true, 200);
        assert_eq!(blocker(&evidence, 300, 30, 1_000), None, "the laggard caught up");
    }

    #[test]
    fn a_step_short_of_traffic_for_three_windows_is_stalled() {
        let mut evidence = StepEvidence::new(8);
        checks(&mut evidence, 29, true, 1);
        assert_eq!(evidence.stalled(Duration::from_secs(300), Duration::from_secs(30), 1_000, 3), None);
        checks(&mut evidence, 1, true, 1);
        let why = evidence.stalled(Duration::from_secs(300), Duration::from_secs(30), 1_000, 3).unwrap();
        assert!(why.starts_with("stalled after 3 windows (30 checks): this step served 30 canary"), "{why}");
        let mut healthy = StepEvidence::new(8);
        checks(&mut healthy, 30, true, 200);
        assert_eq!(healthy.stalled(Duration::from_secs(300), Duration::from_secs(30), 1_000, 3), None);
    }

    #[test]
    fn a_window_shorter_than_the_interval_needs_one_check() {
        let mut evidence = StepEvidence::new(7);
        assert!(blocker(&evidence, 1, 30, 1).is_some());
        checks(&mut evidence, 1, true, 5);
        assert_eq!(blocker(&evidence, 1, 30, 1), None);
    }
}
