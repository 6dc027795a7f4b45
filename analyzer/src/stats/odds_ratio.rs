//! The engine under every test here: a mixture, over a grid of odds ratios, of
//! binomial likelihood ratios.
//!
//! Each test reduces its data to "`x` successes out of `m` trials, where the null
//! says each trial succeeds with probability `q`" (canary errors among all errors,
//! canary requests among all requests, observations at or below a bucket edge).
//! The alternative with odds ratio `ρ = e^u` has success probability
//! `θ(u) = ρq / (ρq + 1 - q)`, and the log likelihood ratio against `q` is
//!
//! `ℓ(u) = x·u − m·ln(1 + q·(e^u − 1))`.
//!
//! Sums of `ℓ` over intervals are likelihood ratios of independent binomials,
//! so `Σ_j w_j exp(L(u_j) − L(u_0))` is a test martingale for the null `u = u_0`
//! for any fixed weights `w_j` summing to one; restricting the weights to
//! `u_j > u_0` (or `< u_0`) gives a supermartingale for the one-sided null
//! `u <= u_0` (or `>= u_0`) because `ℓ` is monotone in `x` and a binomial is
//! stochastically increasing in its probability. A grid (rather than a conjugate
//! Beta prior) keeps this exact when `q` changes from interval to interval, which
//! is what lets the tests follow a moving traffic split.

use serde::{Deserialize, Serialize};

use super::eprocess::log_sum_exp;
use super::error::{StatsError, check_non_negative};

/// A normal prior on the log odds ratio, discretised on an even grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OddsRatioPrior {
    /// The grid spans log odds ratios in `[-half_width, half_width]`.
    pub half_width: f64,
    /// Spacing of the grid in log units; it is also the resolution of confidence sequences.
    pub step: f64,
    /// Standard deviation of the normal prior on the log odds ratio: the size of
    /// effect the test is most sensitive to.
    pub scale: f64,
}

impl OddsRatioPrior {
    /// For error-rate ratios: ratios from 1/90 to 90 (`e^4.5`), a 2.5 % grid, and
    /// a prior that puts most weight on ratios between 1/7 and 7 (±2 sd), where
    /// regressions worth a rollback live (0.5 % → 1 % is a ratio of 2).
    pub const ERROR_RATE: OddsRatioPrior = OddsRatioPrior { half_width: 4.5, step: 0.025, scale: 1.0 };

    /// For the traffic split: mismatches are usually a few percent, so a narrow
    /// prior (sd 0.1 in log odds) and a 0.5 % grid over odds ratios 0.37 to 2.7.
    pub const SAMPLE_RATIO: OddsRatioPrior = OddsRatioPrior { half_width: 1.0, step: 0.005, scale: 0.1 };

    /// For "is F(edge) above or below p": a bucket that holds a quantile shifts
    /// its CDF value by a few tenths of a log odds; sd 1 with a 2.5 % grid.
    pub const QUANTILE: OddsRatioPrior = OddsRatioPrior { half_width: 4.0, step: 0.025, scale: 1.0 };
}

/// The discretised prior: grid points and their normalised log weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OddsRatioGrid {
    log_ratios: Vec<f64>,
    log_weights: Vec<f64>,
}

impl OddsRatioGrid {
    pub(crate) fn new(prior: OddsRatioPrior) -> Result<Self, StatsError> {
        let half_width = check_positive("prior half_width", prior.half_width)?;
        let step = check_positive("prior step", prior.step)?;
        let scale = check_positive("prior scale", prior.scale)?;
        // Bounded so a typo cannot allocate gigabytes; 100 001 points is far finer than any use needs.
        let points_per_side = (half_width / step).round();
        if points_per_side > 50_000.0 {
            return Err(StatsError::OutOfRange {
                field: "prior half_width / step",
                value: points_per_side,
                expected: "at most 50000",
            });
        }
        let points_per_side = points_per_side as i64;
        let log_ratios: Vec<f64> = (-points_per_side..=points_per_side).map(|i| i as f64 * step).collect();
        let unnormalised: Vec<f64> = log_ratios.iter().map(|u| -0.5 * (u / scale).powi(2)).collect();
        let total = log_sum_exp(unnormalised.iter().copied());
        let log_weights = unnormalised.iter().map(|w| w - total).collect();
        Ok(OddsRatioGrid { log_ratios, log_weights })
    }

    pub(crate) fn log_ratios(&self) -> &[f64] {
        &self.log_ratios
    }

    pub(crate) fn len(&self) -> usize {
        self.log_ratios.len()
    }

    /// Normalised log prior weights, one per grid point.
    pub(crate) fn log_weights(&self) -> &[f64] {
        &self.log_weights
    }

    /// `ln E` of the mixture over alternatives strictly above `null_log_ratio`
    /// (`above = true`) or strictly below it, against the null at
    /// `null_log_ratio` whose cumulative log likelihood ratio is `null_log_lik`.
    /// `log_lik[j]` is the cumulative `L(u_j)`. Returns 0 (`E = 1`, no evidence)
    /// when the grid has no alternative on that side.
    pub(crate) fn log_e_one_sided(&self, log_lik: &[f64], null_log_ratio: f64, null_log_lik: f64, above: bool) -> f64 {
        // One pass, streaming log-sum-exps of the prior mass and of the mixture on that side.
        let (mut mass, mut mixture) = (StreamingLogSum::default(), StreamingLogSum::default());
        for ((u, w), l) in self.log_ratios.iter().zip(&self.log_weights).zip(log_lik) {
            if (above && *u > null_log_ratio) || (!above && *u < null_log_ratio) {
                mass.add(*w);
                mixture.add(w + l);
            }
        }
        match (mass.value(), mixture.value()) {
            (f64::NEG_INFINITY, _) => 0.0,
            (mass, mixture) => mixture - mass - null_log_lik,
        }
    }
}

/// `ln Σ e^{x_i}` accumulated one term at a time without overflow: the running
/// maximum and the sum of `e^{x_i − max}`.
#[derive(Debug, Clone, Copy)]
struct StreamingLogSum {
    max: f64,
    scaled_sum: f64,
}

impl Default for StreamingLogSum {
    fn default() -> Self {
        StreamingLogSum { max: f64::NEG_INFINITY, scaled_sum: 0.0 }
    }
}

impl StreamingLogSum {
    fn add(&mut self, x: f64) {
        if x <= self.max {
            self.scaled_sum += (x - self.max).exp();
        } else if x > self.max {
            self.scaled_sum = self.scaled_sum * (self.max - x).exp() + 1.0;
            self.max = x;
        }
        // NaN matches neither branch and is ignored, as in `log_sum_exp`'s maximum.
    }

    fn value(&self) -> f64 {
        if self.max == f64::NEG_INFINITY { self.max } else { self.max + self.scaled_sum.ln() }
    }
}

/// `ℓ(u) = ln[Bin(x; m, θ(u)) / Bin(x; m, q)]` with `θ(u) = e^u q / (e^u q + 1 − q)`.
///
/// Written with `ln_1p`/`exp_m1` so it stays exact near `u = 0`, where most of
/// the prior weight is.
pub(crate) fn log_likelihood_ratio(log_ratio: f64, successes: f64, trials: f64, null_share: f64) -> f64 {
    successes * log_ratio - trials * (null_share * log_ratio.exp_m1()).ln_1p()
}

/// Cumulative log likelihood ratios on a grid plus at a few fixed "anchor" nulls
/// (e.g. the tolerance boundary), updated one interval at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OddsRatioEvidence {
    grid: OddsRatioGrid,
    cumulative: Vec<f64>,
    anchor_log_ratios: Vec<f64>,
    anchor_cumulative: Vec<f64>,
}

impl OddsRatioEvidence {
    pub(crate) fn new(prior: OddsRatioPrior, anchor_log_ratios: Vec<f64>) -> Result<Self, StatsError> {
        let grid = OddsRatioGrid::new(prior)?;
        let cumulative = vec![0.0; grid.len()];
        let anchor_cumulative = vec![0.0; anchor_log_ratios.len()];
        Ok(OddsRatioEvidence { grid, cumulative, anchor_log_ratios, anchor_cumulative })
    }

    /// Adds one interval: `successes` of `trials` where the null share is `null_share`.
    /// Intervals without trials or with a share of exactly 0 or 1 carry no
    /// information about the ratio and are skipped; returns whether it counted.
    pub(crate) fn add(&mut self, successes: u64, trials: u64, null_share: f64) -> bool {
        if trials == 0 || null_share <= 0.0 || null_share >= 1.0 || null_share.is_nan() {
            return false;
        }
        let (x, m) = (successes as f64, trials as f64);
        for (total, u) in self.cumulative.iter_mut().zip(self.grid.log_ratios()) {
            *total += log_likelihood_ratio(*u, x, m, null_share);
        }
        for (total, u) in self.anchor_cumulative.iter_mut().zip(&self.anchor_log_ratios) {
            *total += log_likelihood_ratio(*u, x, m, null_share);
        }
        true
    }

    pub(crate) fn grid(&self) -> &OddsRatioGrid {
        &self.grid
    }

    /// The cumulative `L(u_j)` at every grid point.
    pub(crate) fn cumulative(&self) -> &[f64] {
        &self.cumulative
    }

    /// `ln E` of the one-sided test whose null boundary is anchor `anchor`.
    pub(crate) fn log_e_anchor(&self, anchor: usize, above: bool) -> f64 {
        match (self.anchor_log_ratios.get(anchor), self.anchor_cumulative.get(anchor)) {
            (Some(u0), Some(l0)) => self.grid.log_e_one_sided(&self.cumulative, *u0, *l0, above),
            _ => 0.0,
        }
    }
}

/// Checks that `value` is finite and strictly positive.
fn check_positive(field: &'static str, value: f64) -> Result<f64, StatsError> {
    match check_non_negative(field, value) {
        Ok(v) if v > 0.0 => Ok(v),
        _ => Err(StatsError::OutOfRange { field, value, expected: "finite and > 0" }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn log_likelihood_ratio_matches_binomial_pmfs() {
        // Reference: scipy.stats.binom.logpmf(3, 40, θ) − binom.logpmf(3, 40, 0.05)
        // with θ = 2·0.05/(2·0.05 + 0.95) = 0.0952380952...: 0.12783497490 (python3 + scipy 1.x).
        let value = log_likelihood_ratio(2f64.ln(), 3.0, 40.0, 0.05);
        assert!((value - 0.127_834_974_90).abs() < 1e-9, "{value}");
        // At u = 0 the alternative is the null.
        assert_eq!(log_likelihood_ratio(0.0, 7.0, 10.0, 0.3), 0.0);
    }

    #[test]
    fn grid_is_symmetric_and_normalised() {
        let grid = OddsRatioGrid::new(OddsRatioPrior { half_width: 1.0, step: 0.5, scale: 1.0 }).unwrap();
        assert_eq!(grid.log_ratios(), &[-1.0, -0.5, 0.0, 0.5, 1.0]);
        let total: f64 = grid.log_weights.iter().map(|w| w.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(OddsRatioGrid::new(OddsRatioPrior { half_width: 1.0, step: 0.0, scale: 1.0 }).is_err());
        assert!(OddsRatioGrid::new(OddsRatioPrior { half_width: 1e9, step: 1e-9, scale: 1.0 }).is_err());
    }

    #[test]
    fn one_sided_mixture_matches_an_independent_computation() {
        // Grid {-1, -0.5, 0, 0.5, 1}, normal weights sd 1; data: 9 of 20 with q = 0.25.
        // Reference (python3 + scipy): alternatives u in {0.5, 1}, weights ∝ exp(-u²/2),
        // E = Σ w_u binom.pmf(9, 20, θ(u)) / binom.pmf(9, 20, 0.25) / Σ w_u = 5.23747545937,
        // ln E = 1.65583959967.
        let mut evidence =
            OddsRatioEvidence::new(OddsRatioPrior { half_width: 1.0, step: 0.5, scale: 1.0 }, vec![0.0]).unwrap();
        assert!(evidence.add(9, 20, 0.25));
        let log_e = evidence.log_e_anchor(0, true);
        assert!((log_e - 1.655_839_599_67).abs() < 1e-9, "{log_e}");
        // Below the null the data argue for the null: e-value < 1.
        assert!(evidence.log_e_anchor(0, false) < 0.0);
        // No information from empty or degenerate intervals.
        assert!(!evidence.add(0, 0, 0.25));
        assert!(!evidence.add(3, 3, 1.0));
        assert!((evidence.log_e_anchor(0, true) - log_e).abs() < 1e-15);
    }
}
