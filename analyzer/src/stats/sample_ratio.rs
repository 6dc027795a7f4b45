//! Sample-ratio mismatch: is the canary getting the share of requests that the
//! hashing should give it?
//!
//! This is Lindon & Malek's sequential multinomial test for two categories
//! (canary, control), with one change that lets the null move along the
//! ladder: instead of a Dirichlet (Beta) prior on the share itself, the
//! alternatives say "the canary's traffic odds are `r` times what the expected
//! share `π_t` predicts", `share_t = r·π_t / (r·π_t + 1 − π_t)`, with a grid
//! prior on `ln r` (see [`super::odds_ratio`]). For a constant `π` this is the
//! same conditional-binomial mixture with a different prior; for a moving `π` it
//! stays a test martingale, which a Beta prior on the share would not.
//!
//! Request counts are overdispersed (a heavy user moves many requests at once,
//! and which users hash into the canary is itself a draw that stays fixed for a
//! whole step), so the null is a band `|ln r| <= ln(1 + tolerance)`. A mismatch
//! is either side of the band: each side is a one-sided test at `α/2` (their
//! p-value `2·min(p_more, p_less)`), and the row's interval has each end at
//! one-sided `α/2` from the same e-processes (see [`super::one_sided`]), so
//! "worse" holds exactly when the interval lies outside the band.
//!
//! The row speaks one scale: the canary's share relative to the expected share,
//! `realised / expected − 1`. The odds ratio `r` maps to it through
//! `R(r) = Σ_t m_t·share_t(r) / Σ_t m_t·π_t − 1` (the share the canary would
//! have had under `r`, weighted like the realised one); `R` is increasing, so
//! the interval for `r` maps to one for `R`, and at the maximum-likelihood `r̂`
//! it equals the row's relative difference exactly (the score equation
//! `Σ x_t = Σ m_t·share_t(r̂)`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::comparison::{ComparisonRow, DifferenceScale, Interval, ValueUnit, Verdict};
use super::eprocess::EvidenceMaximum;
use super::error::{StatsError, check_non_negative, check_open_unit};
use super::odds_ratio::{OddsRatioEvidence, OddsRatioPrior};
use super::one_sided::OneSidedBounds;

/// How the sample-ratio test is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleRatioSettings {
    /// Traffic odds within `[1/(1 + t), 1 + t]` of the expected share are not a mismatch.
    pub relative_tolerance: f64,
    pub prior: OddsRatioPrior,
}

impl Default for SampleRatioSettings {
    /// 10 % relative tolerance: per-user hashing with heavy users moves the
    /// request split by a few percent on its own, which is not a defect.
    fn default() -> Self {
        SampleRatioSettings { relative_tolerance: 0.1, prior: OddsRatioPrior::SAMPLE_RATIO }
    }
}

/// Index of the upper null boundary `ln(1 + tolerance)` among the evidence anchors.
const UPPER_ANCHOR: usize = 0;
/// Index of the lower null boundary `−ln(1 + tolerance)` among the evidence anchors.
const LOWER_ANCHOR: usize = 1;
/// Expected shares are kept per basis point (1/10 000) for the scale of the interval.
const SHARE_RESOLUTION: f64 = 10_000.0;

/// The sequential sample-ratio test of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRatioTest {
    evidence: OddsRatioEvidence,
    bounds: OneSidedBounds,
    /// `ln(1 + tolerance)`.
    boundary: f64,
    /// Evidence that the canary gets more than the band allows.
    more: EvidenceMaximum,
    /// Evidence that the canary gets less than the band allows.
    less: EvidenceMaximum,
    canary_requests: u64,
    all_requests: u64,
    /// `Σ π_t · requests_t`, to report the request-weighted expected share.
    expected_canary_requests: f64,
    /// Requests per expected share (in basis points): what `R(r)` needs.
    requests_by_share_bp: BTreeMap<u32, u64>,
}

impl SampleRatioTest {
    pub fn new(settings: SampleRatioSettings) -> Result<Self, StatsError> {
        let tolerance = check_non_negative("sample-ratio relative_tolerance", settings.relative_tolerance)?;
        let boundary = tolerance.ln_1p();
        let evidence = OddsRatioEvidence::new(settings.prior, vec![boundary, -boundary])?;
        let bounds = OneSidedBounds::new(evidence.grid().len());
        Ok(SampleRatioTest {
            evidence,
            bounds,
            boundary,
            more: EvidenceMaximum::default(),
            less: EvidenceMaximum::default(),
            canary_requests: 0,
            all_requests: 0,
            expected_canary_requests: 0.0,
            requests_by_share_bp: BTreeMap::new(),
        })
    }

    /// Adds one interval: requests per cohort and the canary share the hashing
    /// should have produced in it (a fraction in [0, 1]). Intervals with an
    /// expected share of exactly 0 or 1 carry no information and are skipped.
    pub fn observe(
        &mut self,
        canary_requests: u64,
        control_requests: u64,
        expected_share: f64,
    ) -> Result<(), StatsError> {
        if !(0.0..=1.0).contains(&expected_share) {
            return Err(StatsError::OutOfRange {
                field: "expected canary share",
                value: expected_share,
                expected: "in [0, 1]",
            });
        }
        let all_requests = canary_requests.saturating_add(control_requests);
        self.canary_requests = self.canary_requests.saturating_add(canary_requests);
        self.all_requests = self.all_requests.saturating_add(all_requests);
        self.expected_canary_requests += expected_share * all_requests as f64;
        let share_bp = (expected_share * SHARE_RESOLUTION).round() as u32;
        let requests = self.requests_by_share_bp.entry(share_bp).or_insert(0);
        *requests = requests.saturating_add(all_requests);
        if self.evidence.add(canary_requests, all_requests, expected_share) {
            self.more.observe(self.evidence.log_e_anchor(UPPER_ANCHOR, true));
            self.less.observe(self.evidence.log_e_anchor(LOWER_ANCHOR, false));
            self.bounds.observe(&self.evidence);
        }
        Ok(())
    }

    fn p_more(&self) -> f64 {
        self.bounds.p_larger(self.evidence.grid().log_ratios(), self.boundary, self.more.log_max())
    }

    fn p_less(&self) -> f64 {
        self.bounds.p_smaller(self.evidence.grid().log_ratios(), -self.boundary, self.less.log_max())
    }

    /// Anytime-valid p-value for "the split is outside the tolerated band" (either side).
    pub fn p_value(&self) -> f64 {
        (2.0 * self.p_more().min(self.p_less())).min(1.0)
    }

    /// The traffic odds ratio realised / expected, each end a one-sided bound at
    /// `alpha / 2` (the level each side of the mismatch test is decided at).
    pub fn odds_ratio_interval(&self, alpha: f64) -> Result<Interval, StatsError> {
        let side = check_open_unit("alpha", alpha)? / 2.0;
        let log_ratios = self.evidence.grid().log_ratios();
        let lo = self.bounds.lower(log_ratios, side, self.boundary, self.more.log_max()).log_ratio;
        let hi = self.bounds.upper(log_ratios, side, -self.boundary, self.less.log_max()).log_ratio;
        Ok(Interval { lo: Some(lo.map_or(0.0, f64::exp)), hi: hi.map(f64::exp) })
    }

    /// `R(r)`: the canary's share under traffic odds ratio `r`, relative to the
    /// expected share (see the module doc). `None` without requests.
    fn relative_share(&self, odds_ratio: f64) -> Option<f64> {
        let (mut under_r, mut expected) = (0.0, 0.0);
        for (share_bp, requests) in &self.requests_by_share_bp {
            let share = f64::from(*share_bp) / SHARE_RESOLUTION;
            let requests = *requests as f64;
            let denominator = odds_ratio * share + 1.0 - share;
            under_r += requests * if denominator > 0.0 { odds_ratio * share / denominator } else { 0.0 };
            expected += requests * share;
        }
        (expected > 0.0).then(|| under_r / expected - 1.0)
    }

    /// The `sample_ratio` row: `canary` is the realised canary share, `control`
    /// the expected one, the relative difference and the interval both
    /// `share / expected − 1`. A mismatch is Worse (in either direction): it
    /// means the comparison itself cannot be trusted. NotEnoughData below `min_requests`.
    pub fn row(&self, alpha: f64, min_requests: u64) -> Result<ComparisonRow, StatsError> {
        let odds = self.odds_ratio_interval(alpha)?;
        let has_data = self.all_requests > 0;
        let canary = has_data.then(|| self.canary_requests as f64 / self.all_requests as f64);
        let control = has_data.then(|| self.expected_canary_requests / self.all_requests as f64);
        let (absolute_difference, relative_difference) = ComparisonRow::differences(canary, control);
        let p_value = self.p_value();
        let verdict = if self.all_requests < min_requests {
            Verdict::NotEnoughData
        } else if p_value <= alpha {
            Verdict::Worse
        } else {
            Verdict::NoDifference
        };
        let lo = odds.lo.and_then(|r| self.relative_share(r));
        let hi = odds.hi.and_then(|r| self.relative_share(r));
        // A mismatch on the "less" side is shown by the upper end: keep that end when ends cross.
        let side_shown = if self.p_less() < self.p_more() { Verdict::Better } else { verdict };
        Ok(ComparisonRow {
            metric: super::SAMPLE_RATIO_ROW.to_string(),
            canary,
            control,
            absolute_difference,
            relative_difference,
            interval: Some(Interval::from_one_sided_ends(lo, hi, side_shown)),
            interval_scale: DifferenceScale::Relative,
            p_value: has_data.then_some(p_value),
            verdict,
            unit: ValueUnit::Fraction,
            origin: super::RowOrigin::BuiltIn,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::simulation::random::SeededRng;

    #[test]
    fn an_exact_split_along_a_moving_ladder_is_no_mismatch() {
        let mut test = SampleRatioTest::new(SampleRatioSettings::default()).unwrap();
        for (share, canary) in [(0.01, 120), (0.05, 600), (0.25, 3_000), (0.5, 6_000)] {
            for _ in 0..10 {
                test.observe(canary, 12_000 - canary, share).unwrap();
            }
        }
        assert_eq!(test.p_value(), 1.0);
        let row = test.row(0.05, 1_000).unwrap();
        assert_eq!(row.verdict, Verdict::NoDifference);
        assert!(row.interval.unwrap().contains(0.0));
        // Request-weighted expected share: (0.01+0.05+0.25+0.5)/4 with equal traffic per step.
        assert!((row.control.unwrap() - 0.2025).abs() < 1e-12);
    }

    #[test]
    fn a_canary_that_loses_a_third_of_its_traffic_is_a_mismatch() {
        let mut test = SampleRatioTest::new(SampleRatioSettings::default()).unwrap();
        for _ in 0..10 {
            // Expected 600 of 12 000 (5 %); the canary sees 400.
            test.observe(400, 11_400, 0.05).unwrap();
        }
        assert!(test.p_value() < 1e-6, "{}", test.p_value());
        let row = test.row(0.05, 1_000).unwrap();
        assert_eq!(row.verdict, Verdict::Worse);
        let interval = row.interval.unwrap();
        // Realised share 400/11 800 = 3.39 % against 5 %: −32.2 %, the row's relative
        // difference and the scale of its interval.
        let relative = row.relative_difference.unwrap();
        assert!((relative - (400.0 / 11_800.0 / 0.05 - 1.0)).abs() < 1e-12);
        assert!(interval.contains(relative) && !interval.contains(-0.1), "{interval:?}");
        assert_eq!(row.interval_scale, DifferenceScale::Relative);
    }

    /// Property (validity): requests split exactly as expected while the
    /// expected share walks the ladder; with no tolerance at all, a mismatch is
    /// declared in at most alpha of the runs (+3 SE).
    #[test]
    fn false_mismatches_stay_below_alpha_along_a_moving_ladder() {
        let settings = SampleRatioSettings { relative_tolerance: 0.0, ..SampleRatioSettings::default() };
        let (runs, alpha) = (400u32, 0.05);
        let mut mismatches = 0;
        for seed in 0..runs {
            let mut rng = SeededRng::new(u64::from(seed) + 7_000);
            let mut test = SampleRatioTest::new(settings).unwrap();
            for step in 0..40 {
                let share = [0.01, 0.05, 0.25, 0.5][step / 10];
                let load = 12_000.0 * (1.0 + 0.5 * rng.uniform());
                let canary = rng.poisson(load * share);
                let control = rng.poisson(load * (1.0 - share));
                test.observe(canary, control, share).unwrap();
            }
            mismatches += u32::from(test.p_value() <= alpha);
        }
        let rate = f64::from(mismatches) / f64::from(runs);
        assert!(rate <= alpha + 3.0 * (alpha * (1.0 - alpha) / f64::from(runs)).sqrt(), "{rate}");
    }

    #[test]
    fn drift_inside_the_tolerance_is_not_a_mismatch() {
        let mut test = SampleRatioTest::new(SampleRatioSettings::default()).unwrap();
        for _ in 0..100 {
            // 5 % more canary traffic than expected, on a lot of traffic.
            test.observe(10_500, 189_500, 0.05).unwrap();
        }
        assert!(test.p_value() > 0.05, "{}", test.p_value());
        assert!(test.observe(1, 1, 1.5).is_err());
    }
}
