//! Confidence sequences for an odds (or rate) ratio: the set of ratios that the
//! point-null mixture e-process has never rejected.
//!
//! For each grid ratio `ρ_i` we keep `M_i = max_{s<=t} ln E_s(ρ_i)`; the ratios
//! with `M_i < ln(1/α)` form a `1 − α` confidence sequence (Ville's inequality at
//! the true ratio), and taking the running maximum is the running intersection,
//! so the interval only shrinks. `ln E_s(u)` is convex in `u = ln ρ` (the binomial
//! log likelihood is concave in the log odds ratio), and so is `M`; the accepted
//! set is therefore one interval, and the truth, which may fall between grid
//! points, lies strictly between the nearest *rejected* grid points on either
//! side. Reporting those neighbours makes the grid's resolution conservative.

use serde::{Deserialize, Serialize};

use super::odds_ratio::OddsRatioEvidence;

/// Running maxima of the point-null e-processes on an odds-ratio grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RatioConfidenceSequence {
    running_max: Vec<f64>,
}

impl RatioConfidenceSequence {
    pub(crate) fn new(grid_len: usize) -> Self {
        // Every e-process starts at E_0 = 1, ln 1 = 0.
        RatioConfidenceSequence { running_max: vec![0.0; grid_len] }
    }

    /// Folds the evidence after the latest interval into the running maxima.
    pub(crate) fn observe(&mut self, evidence: &OddsRatioEvidence) {
        for (max, log_e) in self.running_max.iter_mut().zip(evidence.log_e_point_nulls()) {
            if log_e > *max {
                *max = log_e;
            }
        }
    }

    /// The `1 − alpha` interval for the ratio `e^u`, as `(lo, hi)`; `None` means
    /// the grid's end was reached on that side (unbounded as far as we can tell).
    pub(crate) fn ratio_interval(&self, evidence: &OddsRatioEvidence, alpha: f64) -> (Option<f64>, Option<f64>) {
        let log_ratios = evidence.grid().log_ratios();
        let threshold = (1.0 / alpha).ln();
        let accepted = |i: &usize| self.running_max.get(*i).is_some_and(|m| *m < threshold);
        let indices = 0..self.running_max.len();
        let (first, last) = match (indices.clone().find(accepted), indices.clone().rev().find(accepted)) {
            (Some(first), Some(last)) => (first, last),
            // No grid point survives: the truth lies in a grid cell next to the
            // minimum of the (convex) running maximum.
            _ => match self.argmin() {
                Some(k) => (k, k),
                None => return (None, None),
            },
        };
        let ratio_at = |i: Option<usize>| i.and_then(|i| log_ratios.get(i)).map(|u| u.exp());
        (ratio_at(first.checked_sub(1)), ratio_at(Some(last + 1)))
    }

    fn argmin(&self) -> Option<usize> {
        self.running_max.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::stats::odds_ratio::OddsRatioPrior;

    #[test]
    fn without_data_the_interval_is_the_whole_grid() {
        let evidence = OddsRatioEvidence::new(OddsRatioPrior::ERROR_RATE, vec![]).unwrap();
        let mut sequence = RatioConfidenceSequence::new(evidence.grid().len());
        sequence.observe(&evidence);
        assert_eq!(sequence.ratio_interval(&evidence, 0.05), (None, None));
    }

    #[test]
    fn interval_shrinks_around_the_observed_ratio_and_never_grows() {
        // 10 000 trials at null share 0.5 with 6 000 successes: observed odds ratio 1.5.
        let mut evidence = OddsRatioEvidence::new(OddsRatioPrior::ERROR_RATE, vec![]).unwrap();
        let mut sequence = RatioConfidenceSequence::new(evidence.grid().len());
        evidence.add(6_000, 10_000, 0.5);
        sequence.observe(&evidence);
        let (lo, hi) = sequence.ratio_interval(&evidence, 0.05);
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        assert!(lo < 1.5 && 1.5 < hi && lo > 1.3 && hi < 1.7, "({lo}, {hi})");
        // More data that agrees narrows the sequence; it never widens it.
        evidence.add(5_900, 10_000, 0.5);
        sequence.observe(&evidence);
        let (lo2, hi2) = sequence.ratio_interval(&evidence, 0.05);
        assert!(lo2.unwrap() >= lo && hi2.unwrap() <= hi);
        assert!(hi2.unwrap() - lo2.unwrap() < hi - lo);
    }
}
