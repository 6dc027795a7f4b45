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
//! - each compared cohort must have served `min_requests_per_cohort` at this step.
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
}

/// What one check contributed to its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOutcome {
    /// At least one target (or the Prometheus server) answered with usable data.
    pub had_data: bool,
    pub canary_requests: u64,
    pub control_requests: u64,
}

impl StepEvidence {
    /// A fresh record for the step of `generation`.
    pub fn new(generation: u64) -> StepEvidence {
        StepEvidence { generation, ..StepEvidence::default() }
    }

    pub fn record(&mut self, check: CheckOutcome) {
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
        let needed = expected - expected * MISSING_CHECKS_TOLERANCE_PERCENT / 100;
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
        None
    }
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
            evidence.record(CheckOutcome { had_data, canary_requests: requests, control_requests: requests * 19 });
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

    #[test]
    fn a_window_shorter_than_the_interval_needs_one_check() {
        let mut evidence = StepEvidence::new(7);
        assert!(blocker(&evidence, 1, 30, 1).is_some());
        checks(&mut evidence, 1, true, 5);
        assert_eq!(blocker(&evidence, 1, 30, 1), None);
    }
}
