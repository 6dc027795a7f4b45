//! Any "events among requests" rate compared between canary and control: a cache's
//! hits, declined payments, a feature's successes. It is the error-rate test
//! ([`super::error_rate`]) with a name and a direction, not a copy of it.
//!
//! Why the same test fits: per cohort and interval the data are `events` out of
//! `requests`, exactly the error rate's shape, and conditioning on the interval's
//! total events removes the base rate and the load in the same way.
//!
//! Lower-is-worse (a hit rate that must not fall) is the same e-process with the
//! sign of the log rate ratio flipped: the test runs with canary and control swapped,
//! on `1/ρ` with tolerance `d / (1 − d)`, so "worse" rejects `ρ >= 1 − d` with the
//! mixture over `ρ < 1 − d` (the grid and prior are symmetric in `ln ρ`, so this is
//! exactly the mirrored test), "better" the mirrored boundary `1 / (1 − d)`; the row
//! maps the interval back to `ρ`. Counting the complementary events
//! (misses) instead would express a tolerance on the miss rate, not on the rate
//! the policy names: a 10 % fall of a 90 % hit rate is a 90 % rise of the miss rate.
//!
//! Common events: given all events, the canary's share of them is hypergeometric,
//! tighter than the binomial the likelihood assumes by the factor `1 − rate`, so the
//! test stays valid but slows down as the rate grows (90 % → 80 % hits at 200 rps:
//! median 25 s). With tolerance 0 "hits fell" and "misses rose" are the same null,
//! so the test also runs on the complementary events in the opposite direction and
//! each side's p-value is doubled (Bonferroni): whichever side is rare carries the
//! evidence (the same case: median 4 s). See `docs/statistics.md`.

use serde::{Deserialize, Serialize};

use super::comparison::{ComparisonRow, DifferenceScale, Interval, ValueUnit, Verdict, reported_p_value};
use super::error::StatsError;
use super::error_rate::{CohortCounts, ErrorRateSettings, ErrorRateTest, IntervalCounts};

/// Which way a rate's change is a regression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorseDirection {
    /// Errors, declines: more is worse.
    #[default]
    Higher,
    /// Hits, successes: fewer is worse.
    Lower,
}

/// One `ErrorRateTest` ("higher is worse") on oriented counts: cohorts swapped when the
/// rate this side tests is worse when lower, events replaced by non-events for the
/// complementary side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrientedTest {
    test: ErrorRateTest,
    swapped: bool,
    non_events: bool,
}

impl OrientedTest {
    fn new(worse: WorseDirection, relative_tolerance: f64, non_events: bool) -> Result<OrientedTest, StatsError> {
        let swapped = worse == WorseDirection::Lower;
        let tolerance = if swapped {
            if !(0.0..1.0).contains(&relative_tolerance) {
                return Err(StatsError::OutOfRange {
                    field: "event-rate relative_tolerance (lower is worse)",
                    value: relative_tolerance,
                    expected: "in [0, 1)",
                });
            }
            // ρ >= 1 − d  ⟺  1/ρ <= 1 + d / (1 − d).
            relative_tolerance / (1.0 - relative_tolerance)
        } else {
            relative_tolerance
        };
        let settings = ErrorRateSettings { relative_tolerance: tolerance, ..ErrorRateSettings::default() };
        Ok(OrientedTest { test: ErrorRateTest::new(settings)?, swapped, non_events })
    }

    fn observe(&mut self, counts: IntervalCounts) -> Result<(), StatsError> {
        // Events were checked against requests by the caller, so this cannot underflow.
        let side = |c: CohortCounts| match self.non_events {
            true => CohortCounts { requests: c.requests, errors: c.requests.saturating_sub(c.errors) },
            false => c,
        };
        let (canary, control) = (side(counts.canary), side(counts.control));
        let oriented = match self.swapped {
            true => IntervalCounts { canary: control, control: canary },
            false => IntervalCounts { canary, control },
        };
        self.test.observe(oriented)
    }
}

/// One named rate's sequential test, fed every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRateTest {
    /// The report row's metric name.
    name: String,
    /// The named events, oriented so that "worse" is the policy's direction.
    direct: OrientedTest,
    /// With tolerance 0 only: the non-events, in the opposite direction.
    complement: Option<OrientedTest>,
    /// Whether any interval had counts for this rate at all (see [`Self::observe`]).
    reported: bool,
}

impl EventRateTest {
    pub fn new(name: impl Into<String>, relative_tolerance: f64, worse: WorseDirection) -> Result<Self, StatsError> {
        let direct = OrientedTest::new(worse, relative_tolerance, false)?;
        let opposite = match worse {
            WorseDirection::Higher => WorseDirection::Lower,
            WorseDirection::Lower => WorseDirection::Higher,
        };
        let complement = (relative_tolerance == 0.0).then(|| OrientedTest::new(opposite, 0.0, true)).transpose()?;
        Ok(EventRateTest { name: name.into(), direct, complement, reported: false })
    }

    /// Adds one interval; `None` when no source reported the rate's counters in it
    /// (as opposed to counters that did not move, which are zeros). More events than
    /// requests in a cohort are refused and leave the test as it was.
    pub fn observe(&mut self, counts: Option<IntervalCounts>) -> Result<(), StatsError> {
        let Some(counts) = counts else { return Ok(()) };
        for (cohort, c) in [("canary", counts.canary), ("control", counts.control)] {
            if c.errors > c.requests {
                return Err(StatsError::ErrorsExceedRequests { cohort, errors: c.errors, requests: c.requests });
            }
        }
        self.direct.observe(counts)?;
        if let Some(complement) = &mut self.complement {
            complement.observe(counts)?;
        }
        self.reported = true;
        Ok(())
    }

    /// Whether any interval so far had this rate's counters.
    pub fn reported(&self) -> bool {
        self.reported
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Anytime-valid p-value of "the canary is worse beyond the tolerance" (with the
    /// complementary test: twice the smaller of the two, at most 1).
    pub fn p_worse(&self) -> f64 {
        self.either(|t| t.test.p_worse())
    }

    /// Anytime-valid p-value of "the canary is better beyond the tolerance".
    pub fn p_better(&self) -> f64 {
        self.either(|t| t.test.p_better())
    }

    fn either(&self, p: impl Fn(&OrientedTest) -> f64) -> f64 {
        match &self.complement {
            Some(complement) => (2.0 * p(&self.direct).min(p(complement))).min(1.0),
            None => p(&self.direct),
        }
    }

    /// The row, named after the metric: events per request in each cohort, the
    /// relative difference `ρ − 1` with the named events' interval, the p-value and
    /// verdict; `NotEnoughData` below `min_requests` requests in either cohort.
    pub fn row(&self, alpha: f64, min_requests: u64) -> Result<ComparisonRow, StatsError> {
        let oriented = self.direct.test.row(alpha, min_requests)?;
        let (mut canary_totals, mut control_totals) =
            (self.direct.test.canary_totals(), self.direct.test.control_totals());
        if self.direct.swapped {
            std::mem::swap(&mut canary_totals, &mut control_totals);
        }
        let rate = |c: CohortCounts| (c.requests > 0).then(|| c.errors as f64 / c.requests as f64);
        let (canary, control) = (rate(canary_totals), rate(control_totals));
        let (absolute_difference, relative_difference) = ComparisonRow::differences(canary, control);
        let enough_data = canary_totals.requests >= min_requests && control_totals.requests >= min_requests;
        let (p_worse, p_better) = (self.p_worse(), self.p_better());
        let verdict = Verdict::from_tests(p_worse, p_better, alpha, enough_data);
        let has_evidence = oriented.p_value.is_some() || enough_data;
        Ok(ComparisonRow {
            metric: self.name.clone(),
            canary,
            control,
            absolute_difference,
            relative_difference,
            interval: oriented.interval.map(|i| if self.direct.swapped { inverted(i) } else { i }),
            interval_scale: DifferenceScale::Relative,
            p_value: has_evidence.then(|| reported_p_value(verdict, p_worse, p_better)),
            verdict,
            unit: ValueUnit::Fraction,
            origin: super::RowOrigin::Policy,
        })
    }
}

/// An interval for `1/ρ − 1` as one for `ρ − 1`: the ends swap and invert; an open
/// upper end becomes a ratio of 0 (−1), a ratio of 0 an open upper end.
fn inverted(interval: Interval) -> Interval {
    let invert = |relative: f64| {
        let ratio = 1.0 + relative;
        (ratio > 0.0).then(|| 1.0 / ratio - 1.0)
    };
    Interval { lo: Some(interval.hi.and_then(invert).unwrap_or(-1.0)), hi: interval.lo.and_then(invert) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::stats::{CohortCounts, Verdict};

    fn interval(canary: (u64, u64), control: (u64, u64)) -> Option<IntervalCounts> {
        Some(IntervalCounts {
            canary: CohortCounts { requests: canary.0, errors: canary.1 },
            control: CohortCounts { requests: control.0, errors: control.1 },
        })
    }

    #[test]
    fn a_fallen_hit_rate_is_worse_when_lower_is_worse_and_better_when_higher_is() {
        let mut lower_worse = EventRateTest::new("cache_hit", 0.1, WorseDirection::Lower).unwrap();
        let mut higher_worse = EventRateTest::new("cache_hit", 0.1, WorseDirection::Higher).unwrap();
        for _ in 0..10 {
            // 5 % share; control hits 80 %, canary 60 % (a ratio of 0.75, beyond 0.9).
            let counts = interval((600, 360), (11_400, 9_120));
            lower_worse.observe(counts).unwrap();
            higher_worse.observe(counts).unwrap();
        }
        let row = lower_worse.row(0.05, 1_000).unwrap();
        assert_eq!((row.metric.as_str(), row.verdict), ("cache_hit", Verdict::Worse));
        assert!(row.p_value.unwrap() < 0.001, "{row:?}");
        assert_eq!((row.canary, row.control), (Some(0.6), Some(0.8)));
        let interval = row.interval.unwrap();
        assert!(interval.contains(-0.25) && !interval.contains(0.0), "{interval:?}");
        assert_eq!(higher_worse.row(0.05, 1_000).unwrap().verdict, Verdict::Better);
    }

    #[test]
    fn a_fall_within_the_tolerance_is_not_worse() {
        // 5 % fewer hits on a lot of traffic: beyond noise, within a 10 % tolerance.
        let mut tolerant = EventRateTest::new("cache_hit", 0.1, WorseDirection::Lower).unwrap();
        let mut strict = EventRateTest::new("cache_hit", 0.0, WorseDirection::Lower).unwrap();
        for _ in 0..50 {
            let counts = interval((50_000, 38_000), (50_000, 40_000));
            tolerant.observe(counts).unwrap();
            strict.observe(counts).unwrap();
        }
        assert!(strict.p_worse() < 0.01, "{}", strict.p_worse());
        assert_eq!(tolerant.p_worse(), 1.0);
        assert_eq!(tolerant.row(0.05, 100).unwrap().verdict, Verdict::NoDifference);
    }

    /// Found by the e2e estimate for `outcome_rollback`: 90 % → 80 % hits at 200 rps took a
    /// median 25 s to detect on the hits alone (conservative for common events); with
    /// tolerance 0 the misses' side carries it. Fails without the complementary test.
    #[test]
    fn with_no_tolerance_the_complementary_events_carry_a_common_events_fall() {
        let mut test = EventRateTest::new("cache_hit", 0.0, WorseDirection::Lower).unwrap();
        let mut direct_only = EventRateTest::new("cache_hit", 1e-9, WorseDirection::Lower).unwrap();
        for _ in 0..3 {
            // 50 % share, 100 requests per cohort: 80 against 90 hits, 20 against 10 misses.
            test.observe(interval((100, 80), (100, 90))).unwrap();
            direct_only.observe(interval((100, 80), (100, 90))).unwrap();
        }
        assert!(test.p_worse() <= 0.05, "{}", test.p_worse());
        assert!(direct_only.p_worse() > 0.05, "{}", direct_only.p_worse());
        let row = test.row(0.05, 200).unwrap();
        assert_eq!((row.verdict, row.canary, row.control), (Verdict::Worse, Some(0.8), Some(0.9)));
        assert_eq!(row.p_value, Some(test.p_worse()));
        assert_eq!(test.row(0.05, 1_000).unwrap().verdict, Verdict::NotEnoughData);
    }

    #[test]
    fn a_rate_never_reported_has_no_values_and_no_verdict() {
        let mut test = EventRateTest::new("cache_hit", 0.1, WorseDirection::Lower).unwrap();
        test.observe(None).unwrap();
        assert!(!test.reported());
        let row = test.row(0.05, 1).unwrap();
        assert_eq!((row.canary, row.control, row.p_value, row.verdict), (None, None, None, Verdict::NotEnoughData));
        test.observe(interval((0, 0), (0, 0))).unwrap();
        assert!(test.reported(), "counters that exist but did not move are data");
    }

    #[test]
    fn a_lower_is_worse_tolerance_of_one_or_more_is_refused() {
        let error = EventRateTest::new("hits", 1.0, WorseDirection::Lower).unwrap_err();
        assert!(error.to_string().contains("in [0, 1)"), "{error}");
        assert!(EventRateTest::new("hits", 1.0, WorseDirection::Higher).is_ok());
        let events_above_requests = EventRateTest::new("hits", 0.0, WorseDirection::Lower)
            .unwrap()
            .observe(interval((10, 11), (10, 0)))
            .unwrap_err();
        assert!(matches!(events_above_requests, StatsError::ErrorsExceedRequests { .. }));
    }
}
