//! Anytime-valid comparison of error rates between canary and control.
//!
//! Errors in each cohort are treated as counting processes whose intensity is
//! proportional to that cohort's requests (Lindon & Malek 2022; Lindon, Sanden
//! & Shirikian 2022). Conditioning on each interval's requests *and* its total
//! errors removes both the unknown base error rate and the load: given `m_t`
//! errors, each is a canary error with probability
//! `θ_t = ρ·n_canary / (ρ·n_canary + n_control)`, where `ρ` is the ratio of
//! per-request error rates. The null share `n_canary / (n_canary + n_control)`
//! is the *realised* split of that interval, so the test stays exact when the
//! hashing drifts from the nominal share, when load varies, and when the base
//! error rate moves (it cancels). The odds-ratio mixture in
//! [`super::odds_ratio`] turns this into e-processes for "canary worse"
//! (`ρ <= 1 + tolerance` rejected) and "canary better" (`ρ >= 1/(1 + tolerance)`
//! rejected), and a confidence sequence for `ρ`.

use serde::{Deserialize, Serialize};

use super::comparison::{ComparisonRow, DifferenceScale, Interval, ValueUnit, Verdict, reported_p_value};
use super::eprocess::EvidenceMaximum;
use super::error::{StatsError, check_non_negative, check_open_unit};
use super::odds_ratio::{OddsRatioEvidence, OddsRatioPrior};
use super::one_sided::OneSidedBounds;

/// Requests and errors (5xx and resets) of one cohort, in one interval or in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortCounts {
    pub requests: u64,
    pub errors: u64,
}

/// What both cohorts did in one check interval (deltas, not cumulative counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalCounts {
    pub canary: CohortCounts,
    pub control: CohortCounts,
}

/// How the error-rate test is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorRateSettings {
    /// The canary may have up to `1 + relative_tolerance` times control's error
    /// rate before it counts as worse (0 = any significant increase).
    pub relative_tolerance: f64,
    pub prior: OddsRatioPrior,
}

impl Default for ErrorRateSettings {
    fn default() -> Self {
        ErrorRateSettings { relative_tolerance: 0.0, prior: OddsRatioPrior::ERROR_RATE }
    }
}

/// Index of the "worse" null boundary `ln(1 + tolerance)` among the evidence anchors.
const WORSE_ANCHOR: usize = 0;
/// Index of the "better" null boundary `−ln(1 + tolerance)` among the evidence anchors.
const BETTER_ANCHOR: usize = 1;

/// The sequential error-rate test of one rollout; feed it every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRateTest {
    evidence: OddsRatioEvidence,
    bounds: OneSidedBounds,
    /// `ln(1 + tolerance)`: the verdicts' boundaries are `±boundary`.
    boundary: f64,
    worse: EvidenceMaximum,
    better: EvidenceMaximum,
    canary_totals: CohortCounts,
    control_totals: CohortCounts,
    informative_intervals: u64,
}

impl ErrorRateTest {
    pub fn new(settings: ErrorRateSettings) -> Result<Self, StatsError> {
        let tolerance = check_non_negative("error-rate relative_tolerance", settings.relative_tolerance)?;
        let boundary = tolerance.ln_1p();
        let evidence = OddsRatioEvidence::new(settings.prior, vec![boundary, -boundary])?;
        let bounds = OneSidedBounds::new(evidence.grid().len());
        Ok(ErrorRateTest {
            evidence,
            bounds,
            boundary,
            worse: EvidenceMaximum::default(),
            better: EvidenceMaximum::default(),
            canary_totals: CohortCounts::default(),
            control_totals: CohortCounts::default(),
            informative_intervals: 0,
        })
    }

    /// Adds one interval's counts. Refuses (and ignores) an interval with more
    /// errors than requests.
    pub fn observe(&mut self, interval: IntervalCounts) -> Result<(), StatsError> {
        check_counts("canary", interval.canary)?;
        check_counts("control", interval.control)?;
        accumulate(&mut self.canary_totals, interval.canary);
        accumulate(&mut self.control_totals, interval.control);
        let all_requests = interval.canary.requests.saturating_add(interval.control.requests);
        if all_requests == 0 {
            return Ok(());
        }
        let canary_share = interval.canary.requests as f64 / all_requests as f64;
        let all_errors = interval.canary.errors.saturating_add(interval.control.errors);
        if self.evidence.add(interval.canary.errors, all_errors, canary_share) {
            self.informative_intervals += 1;
            self.worse.observe(self.evidence.log_e_anchor(WORSE_ANCHOR, true));
            self.better.observe(self.evidence.log_e_anchor(BETTER_ANCHOR, false));
            self.bounds.observe(&self.evidence);
        }
        Ok(())
    }

    /// Anytime-valid p-value for "the canary's error rate exceeds control's by more than the tolerance".
    pub fn p_worse(&self) -> f64 {
        self.bounds.p_larger(self.evidence.grid().log_ratios(), self.boundary, self.worse.log_max())
    }

    /// Anytime-valid p-value for "the canary's error rate is below control's by more than the tolerance".
    pub fn p_better(&self) -> f64 {
        self.bounds.p_smaller(self.evidence.grid().log_ratios(), -self.boundary, self.better.log_max())
    }

    /// The error-rate ratio canary / control: each end a one-sided anytime-valid
    /// bound at `alpha`, read from the verdict's own e-processes (see
    /// [`super::one_sided`]), so "worse" holds exactly when the lower end is at
    /// least `1 + tolerance`. Ends are exclusive; an open lower end is reported
    /// as 0 (a ratio is never negative). The ends may cross when the ratio
    /// changed over time; the row orders them (see [`Interval::from_one_sided_ends`]).
    pub fn rate_ratio_interval(&self, alpha: f64) -> Result<Interval, StatsError> {
        let alpha = check_open_unit("alpha", alpha)?;
        let log_ratios = self.evidence.grid().log_ratios();
        let lo = self.bounds.lower(log_ratios, alpha, self.boundary, self.worse.log_max()).log_ratio;
        let hi = self.bounds.upper(log_ratios, alpha, -self.boundary, self.better.log_max()).log_ratio;
        Ok(Interval { lo: Some(lo.map_or(0.0, f64::exp)), hi: hi.map(f64::exp) })
    }

    /// Cumulative counts of the canary.
    pub fn canary_totals(&self) -> CohortCounts {
        self.canary_totals
    }

    /// Cumulative counts of control.
    pub fn control_totals(&self) -> CohortCounts {
        self.control_totals
    }

    /// The `error_rate` row; NotEnoughData while either cohort has fewer than
    /// `min_requests` requests.
    pub fn row(&self, alpha: f64, min_requests: u64) -> Result<ComparisonRow, StatsError> {
        let ratio = self.rate_ratio_interval(alpha)?;
        let canary = error_rate(self.canary_totals);
        let control = error_rate(self.control_totals);
        let (absolute_difference, relative_difference) = ComparisonRow::differences(canary, control);
        let enough_data = self.canary_totals.requests >= min_requests && self.control_totals.requests >= min_requests;
        let verdict = Verdict::from_tests(self.p_worse(), self.p_better(), alpha, enough_data);
        let has_evidence = self.informative_intervals > 0;
        Ok(ComparisonRow {
            metric: super::ERROR_RATE_ROW.to_string(),
            canary,
            control,
            absolute_difference,
            relative_difference,
            interval: Some(Interval::from_one_sided_ends(
                ratio.lo.map(|r| r - 1.0),
                ratio.hi.map(|r| r - 1.0),
                verdict,
            )),
            interval_scale: DifferenceScale::Relative,
            p_value: has_evidence.then(|| reported_p_value(verdict, self.p_worse(), self.p_better())),
            verdict,
            unit: ValueUnit::Fraction,
            origin: super::RowOrigin::BuiltIn,
        })
    }
}

fn check_counts(cohort: &'static str, counts: CohortCounts) -> Result<(), StatsError> {
    if counts.errors > counts.requests {
        return Err(StatsError::ErrorsExceedRequests { cohort, errors: counts.errors, requests: counts.requests });
    }
    Ok(())
}

fn accumulate(total: &mut CohortCounts, interval: CohortCounts) {
    total.requests = total.requests.saturating_add(interval.requests);
    total.errors = total.errors.saturating_add(interval.errors);
}

fn error_rate(counts: CohortCounts) -> Option<f64> {
    (counts.requests > 0).then(|| counts.errors as f64 / counts.requests as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::simulation::random::SeededRng;

    fn interval(canary: (u64, u64), control: (u64, u64)) -> IntervalCounts {
        IntervalCounts {
            canary: CohortCounts { requests: canary.0, errors: canary.1 },
            control: CohortCounts { requests: control.0, errors: control.1 },
        }
    }

    #[test]
    fn doubled_error_rate_is_detected_and_equal_rates_are_not() {
        let mut regressed = ErrorRateTest::new(ErrorRateSettings::default()).unwrap();
        let mut equal = ErrorRateTest::new(ErrorRateSettings::default()).unwrap();
        for _ in 0..10 {
            // 5 % canary share, 0.5 % vs 1 % errors: exactly the expected counts.
            regressed.observe(interval((600, 6), (11_400, 57))).unwrap();
            equal.observe(interval((600, 3), (11_400, 57))).unwrap();
        }
        assert!(regressed.p_worse() < 0.001, "{}", regressed.p_worse());
        assert_eq!(regressed.p_better(), 1.0);
        assert!(equal.p_worse() > 0.5 && equal.p_better() > 0.5);
        let ratio = regressed.rate_ratio_interval(0.05).unwrap();
        assert!(ratio.contains(2.0) && !ratio.contains(1.0), "{ratio:?}");
        let row = regressed.row(0.05, 1_000).unwrap();
        assert_eq!(row.verdict, Verdict::Worse);
        assert_eq!(row.canary, Some(0.01));
        assert!((row.relative_difference.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(equal.row(0.05, 1_000).unwrap().verdict, Verdict::NoDifference);
        // The same evidence below the minimum sample count decides nothing.
        assert_eq!(regressed.row(0.05, 1_000_000).unwrap().verdict, Verdict::NotEnoughData);
    }

    #[test]
    fn single_interval_matches_an_independent_computation() {
        // Reference (python3 + scipy): grid u = k·0.025, |u| <= 4.5, weights ∝ exp(−u²/2);
        // alternatives u > 0; data 6 canary errors of 20 with canary share 0.1.
        // E = Σ_{u>0} w_u binom.pmf(6, 20, θ(u)) / binom.pmf(6, 20, 0.1) / Σ_{u>0} w_u = 9.59044067573.
        let mut test = ErrorRateTest::new(ErrorRateSettings::default()).unwrap();
        test.observe(interval((100, 6), (900, 14))).unwrap();
        assert!((test.p_worse() - 1.0 / 9.590_440_675_73).abs() < 1e-9, "{}", test.p_worse());
    }

    #[test]
    fn a_small_real_increase_within_tolerance_is_not_worse() {
        // 20 % more errors on a lot of traffic: significant without tolerance,
        // but not beyond a 50 % tolerance.
        let settings = ErrorRateSettings { relative_tolerance: 0.5, ..ErrorRateSettings::default() };
        let mut tolerant = ErrorRateTest::new(settings).unwrap();
        let mut strict = ErrorRateTest::new(ErrorRateSettings::default()).unwrap();
        for _ in 0..50 {
            let counts = interval((50_000, 600), (50_000, 500));
            tolerant.observe(counts).unwrap();
            strict.observe(counts).unwrap();
        }
        assert!(strict.p_worse() < 0.01);
        assert_eq!(tolerant.p_worse(), 1.0);
        assert_eq!(tolerant.row(0.05, 100).unwrap().verdict, Verdict::NoDifference);
    }

    /// Property: on arbitrary seeded data, p-values stay in (0, 1], never rise,
    /// and the row's interval is ordered.
    #[test]
    fn p_values_are_probabilities_that_never_increase() {
        for seed in 0..40 {
            let mut rng = SeededRng::new(seed);
            let mut test = ErrorRateTest::new(ErrorRateSettings::default()).unwrap();
            let (mut last_worse, mut last_better) = (1.0, 1.0);
            for _ in 0..30 {
                let canary_mean = 5.0 * rng.uniform();
                let canary_errors = rng.poisson(canary_mean);
                let control_mean = 20.0 * rng.uniform();
                let control_errors = rng.poisson(control_mean);
                let canary_successes_mean = 300.0 * rng.uniform();
                let counts = interval(
                    (canary_errors + rng.poisson(canary_successes_mean), canary_errors),
                    (control_errors + rng.poisson(3_000.0), control_errors),
                );
                test.observe(counts).unwrap();
                let (worse, better) = (test.p_worse(), test.p_better());
                assert!(worse > 0.0 && worse <= last_worse && better > 0.0 && better <= last_better);
                (last_worse, last_better) = (worse, better);
                let shown = test.row(0.05, 0).unwrap().interval.unwrap();
                assert!(shown.hi.is_none_or(|hi| shown.lo.is_some_and(|lo| lo <= hi)), "{shown:?}");
            }
        }
    }

    /// Property (validity): with the canary's rate exactly at the tolerance
    /// boundary, the hardest case of the null, a moving split and a swinging
    /// load, the "worse" test rejects in at most alpha of the runs (+3 SE).
    #[test]
    fn false_alarms_stay_below_alpha_at_the_tolerance_boundary() {
        let settings = ErrorRateSettings { relative_tolerance: 0.25, ..ErrorRateSettings::default() };
        let (runs, alpha) = (400u32, 0.05);
        let mut rejections = 0;
        for seed in 0..runs {
            let mut rng = SeededRng::new(u64::from(seed) + 1_000);
            let mut test = ErrorRateTest::new(settings).unwrap();
            for step in 0..30 {
                let share = [0.01, 0.05, 0.25, 0.5][step / 8];
                let load = 12_000.0 * (1.0 + 0.5 * rng.uniform());
                let draw = |rng: &mut SeededRng, requests: f64, rate: f64| {
                    let errors = rng.poisson(requests * rate);
                    CohortCounts { requests: errors + rng.poisson(requests * (1.0 - rate)), errors }
                };
                let canary = draw(&mut rng, load * share, 0.005 * 1.25);
                let control = draw(&mut rng, load * (1.0 - share), 0.005);
                test.observe(IntervalCounts { canary, control }).unwrap();
            }
            rejections += u32::from(test.p_worse() <= alpha);
        }
        let rate = f64::from(rejections) / f64::from(runs);
        assert!(rate <= alpha + 3.0 * (alpha * (1.0 - alpha) / f64::from(runs)).sqrt(), "{rate}");
    }

    #[test]
    fn bad_input_is_refused() {
        let mut test = ErrorRateTest::new(ErrorRateSettings::default()).unwrap();
        let error = test.observe(interval((10, 11), (10, 0))).unwrap_err();
        assert_eq!(error, StatsError::ErrorsExceedRequests { cohort: "canary", errors: 11, requests: 10 });
        assert!(test.row(1.5, 0).is_err());
        let bad = ErrorRateSettings { relative_tolerance: -0.1, ..ErrorRateSettings::default() };
        assert!(ErrorRateTest::new(bad).is_err());
        // No data: no p-value, no verdict.
        let row = test.row(0.05, 1).unwrap();
        assert_eq!((row.p_value, row.verdict, row.canary), (None, Verdict::NotEnoughData, None));
    }
}
