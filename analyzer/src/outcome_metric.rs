//! A rollout's rate metrics: the policy's data-path outcomes and PromQL counter
//! pairs, each an [`EventRateTest`] (the error rate's anytime-valid test with the
//! policy's direction and tolerance), fed one interval at a time.
//!
//! Outcomes come with every interval (both sources read the filter's outcome
//! counters); counter pairs come from the check's own PromQL queries. A rate no
//! source has reported yet has a row without values or verdict ("no data"), and
//! [`RateMetricTests::missing_outcomes`] names the outcomes no proxy exports, so a
//! hold can say which rule the filter lacks.

use serde::{Deserialize, Serialize};

use crate::policy::{Metric, RateTolerance, RolloutPolicy};
use crate::source::IntervalMetrics;
use crate::stats::{ComparisonRow, EventRateTest, IntervalCounts, StatsError};

/// One data-path outcome's test and the outcome it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OutcomeTest {
    outcome: String,
    test: EventRateTest,
}

/// The rate metrics of one rollout (serialisable with the rest of its evidence).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateMetricTests {
    outcomes: Vec<OutcomeTest>,
    counter_pairs: Vec<EventRateTest>,
}

/// One check's counts for a counter-pair metric, by the metric's name; `None` without data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterPairCounts {
    pub name: String,
    pub counts: Option<IntervalCounts>,
}

fn rate_test(name: &str, tolerance: &RateTolerance) -> Result<EventRateTest, StatsError> {
    EventRateTest::new(name, tolerance.max_relative_change, tolerance.worse)
}

impl RateMetricTests {
    /// A test per outcome and counter-pair metric of the policy.
    pub fn new(policy: &RolloutPolicy) -> Result<RateMetricTests, StatsError> {
        let mut tests = RateMetricTests::default();
        for metric in &policy.metrics {
            match &metric.metric {
                Metric::Outcome(outcome) => tests.outcomes.push(OutcomeTest {
                    outcome: outcome.outcome.clone(),
                    test: rate_test(&outcome.name, &outcome.tolerance)?,
                }),
                Metric::CounterPair(pair) => tests.counter_pairs.push(rate_test(&pair.name, &pair.tolerance)?),
                _ => {}
            }
        }
        Ok(tests)
    }

    /// Adds one interval's outcome counters. Counts a test refuses (more events than
    /// requests: a filter bug) leave that outcome out of this interval, with a
    /// warning, and never stop the other metrics.
    pub fn observe_outcomes(&mut self, interval: &IntervalMetrics) {
        for OutcomeTest { outcome, test } in &mut self.outcomes {
            if let Err(error) = test.observe(interval.outcome_counts(outcome)) {
                tracing::warn!(%outcome, %error, "outcome counts refused; left out of this interval");
            }
        }
    }

    /// Adds one check's counter-pair counts (matched by metric name).
    pub fn observe_counter_pairs(&mut self, pairs: &[CounterPairCounts]) {
        for test in &mut self.counter_pairs {
            let counts = pairs.iter().find(|pair| pair.name == test.name()).and_then(|pair| pair.counts);
            if let Err(error) = test.observe(counts) {
                tracing::warn!(metric = %test.name(), %error, "counter-pair counts refused; left out of this check");
            }
        }
    }

    /// One row per rate metric, in policy order.
    pub fn rows(&self, alpha: f64, min_requests: u64) -> Result<Vec<ComparisonRow>, StatsError> {
        let outcomes = self.outcomes.iter().map(|o| &o.test);
        outcomes.chain(&self.counter_pairs).map(|test| test.row(alpha, min_requests)).collect()
    }

    /// The outcomes the policy names that no source has reported in any interval yet.
    pub fn missing_outcomes(&self) -> Vec<&str> {
        self.outcomes.iter().filter(|o| !o.test.reported()).map(|o| o.outcome.as_str()).collect()
    }
}

/// The sentence a hold's reason gets when outcomes are missing; `None` when none are.
pub fn missing_outcomes_note(missing: &[&str]) -> Option<String> {
    (!missing.is_empty()).then(|| {
        format!(
            "no proxy exports outcome(s) {} (canary_outcome_requests_total / canary_outcome_events_total): \
             is the filter configured to count them?",
            missing.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::source::OutcomeCounts;
    use crate::stats::{CohortCounts, Verdict};
    use canary_core::Cohort;

    fn policy() -> RolloutPolicy {
        RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: t}\n\
             spec:\n  deployment: checkout\n  min_requests_per_cohort: 500\n  metrics:\n\
             \x20   - {name: error_rate}\n\
             \x20   - {name: cache_hit, outcome: cache_hit, direction: lower_is_worse, max_relative_decrease: 0.1}\n\
             \x20   - {name: slow_db, outcome: slow_db, direction: higher_is_worse, critical: false}\n\
             \x20   - name: declines\n      direction: higher_is_worse\n      max_relative_increase: 0.2\n\
             \x20     numerator: 'sum(increase(declined_total{v=\"{{cohort}}\"}[{{window}}]))'\n\
             \x20     denominator: 'sum(increase(payments_total{v=\"{{cohort}}\"}[{{window}}]))'\n",
        )
        .unwrap()
    }

    /// `cache_hit` counted at the given hit rates on 1 000 requests per cohort.
    fn interval(canary_hits: u64, control_hits: u64) -> IntervalMetrics {
        let mut metrics = IntervalMetrics::default();
        for (cohort, hits) in [(Cohort::Canary, canary_hits), (Cohort::Control, control_hits)] {
            let counts = OutcomeCounts { requests: 1_000, events: hits };
            metrics.cohorts.get_mut(cohort).outcomes.insert("cache_hit".into(), counts);
        }
        metrics
    }

    #[test]
    fn a_fallen_hit_rate_is_worse_and_an_unexported_outcome_has_no_data() {
        let mut tests = RateMetricTests::new(&policy()).unwrap();
        for _ in 0..5 {
            tests.observe_outcomes(&interval(600, 800));
        }
        let rows = tests.rows(0.05, 500).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(names, ["cache_hit", "slow_db", "declines"]);
        assert_eq!(rows[0].verdict, Verdict::Worse);
        assert!(rows[0].p_value.unwrap() < 0.05);
        assert_eq!((rows[1].canary, rows[1].p_value, rows[1].verdict), (None, None, Verdict::NotEnoughData));
        assert_eq!(tests.missing_outcomes(), ["slow_db"]);
        let note = missing_outcomes_note(&tests.missing_outcomes()).unwrap();
        assert!(note.contains("`slow_db`"), "{note}");
        assert_eq!(missing_outcomes_note(&[]), None);
    }

    #[test]
    fn counter_pairs_are_tested_from_their_counts() {
        let mut tests = RateMetricTests::new(&policy()).unwrap();
        let counts = IntervalCounts {
            canary: CohortCounts { requests: 1_000, errors: 100 },
            control: CohortCounts { requests: 1_000, errors: 40 },
        };
        for _ in 0..5 {
            tests.observe_counter_pairs(&[CounterPairCounts { name: "declines".into(), counts: Some(counts) }]);
        }
        let rows = tests.rows(0.05, 500).unwrap();
        let declines = rows.iter().find(|r| r.metric == "declines").unwrap();
        assert_eq!((declines.canary, declines.control, declines.verdict), (Some(0.1), Some(0.04), Verdict::Worse));
        assert!(declines.p_value.is_some());
    }

    #[test]
    fn refused_counts_skip_the_outcome_only() {
        let mut tests = RateMetricTests::new(&policy()).unwrap();
        tests.observe_outcomes(&interval(1_001, 800));
        assert_eq!(tests.missing_outcomes(), ["cache_hit", "slow_db"], "refused counts are not data");
    }
}
