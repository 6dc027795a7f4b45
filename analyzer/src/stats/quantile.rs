//! Anytime-valid confidence sequences for one quantile of one cohort, at the
//! resolution of the histogram's bucket edges.
//!
//! In the style of Howard & Ramdas ("Sequential estimation of quantiles with
//! applications to A/B-testing and best-arm identification"): the number of
//! observations at or below a fixed edge `b` is binomial with probability
//! `F(b)`, and `q_p <= b` exactly when `F(b) >= p` (with
//! `q_p = inf{x : F(x) >= p}`). So at every edge we run two one-sided
//! odds-ratio mixtures against `F(b) = p` (see [`super::odds_ratio`]):
//! one whose rejection shows `F(b) < p`, i.e. the quantile is *above* `b`, and
//! one whose rejection shows `F(b) >= p`, i.e. the quantile is *at or below* `b`.
//!
//! No correction across edges is needed: at any time both e-values are monotone
//! in the count below the edge, which only grows with the edge, so a false
//! "above" claim at any edge implies one at the first edge at or past the true
//! quantile (and likewise below); the error of each side is that of a single
//! e-process. The price of histograms is resolution: a bound is always a bucket
//! edge, so the interval is conservative by up to one bucket on each side, and
//! nothing is claimed past the largest finite bound.

use serde::{Deserialize, Serialize};

use super::eprocess::EvidenceMaximum;
use super::odds_ratio::{OddsRatioGrid, log_likelihood_ratio};

/// Running evidence about one quantile at every bucket edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct QuantileSequence {
    quantile: f64,
    /// Per edge: evidence that `F(edge) < p` (the quantile is above the edge).
    above_edge: Vec<EvidenceMaximum>,
    /// Per edge: evidence that `F(edge) >= p` (the quantile is at or below the edge).
    at_or_below_edge: Vec<EvidenceMaximum>,
}

impl QuantileSequence {
    /// `quantile` must be in (0, 1); the caller validates it.
    pub(crate) fn new(quantile: f64, edge_count: usize) -> Self {
        QuantileSequence {
            quantile,
            above_edge: vec![EvidenceMaximum::default(); edge_count],
            at_or_below_edge: vec![EvidenceMaximum::default(); edge_count],
        }
    }

    pub(crate) fn quantile(&self) -> f64 {
        self.quantile
    }

    /// Updates with the cohort's cumulative counts at or below each edge and its total.
    pub(crate) fn observe(&mut self, grid: &OddsRatioGrid, cumulative_at_edges: &[u64], total: u64) {
        if total == 0 {
            return;
        }
        let trials = total as f64;
        // ℓ(u) = x·u − m·ln(1 + p(e^u − 1)): the second term is the same at every edge.
        let normaliser: Vec<f64> =
            grid.log_ratios().iter().map(|u| trials * log_likelihood_ratio(*u, 0.0, 1.0, self.quantile)).collect();
        let mut log_lik = vec![0.0; grid.len()];
        let edges = cumulative_at_edges.iter().zip(self.above_edge.iter_mut().zip(self.at_or_below_edge.iter_mut()));
        for (at_or_below, (above, below)) in edges {
            let successes = *at_or_below as f64;
            for ((value, u), norm) in log_lik.iter_mut().zip(grid.log_ratios()).zip(&normaliser) {
                *value = successes * u + norm;
            }
            // Alternatives with F(edge) < p have negative log odds ratio against p.
            above.observe(grid.log_e_one_sided(&log_lik, 0.0, 0.0, false));
            below.observe(grid.log_e_one_sided(&log_lik, 0.0, 0.0, true));
        }
    }

    /// Anytime-valid p-value of "the quantile is above edge `index`".
    pub(crate) fn p_above(&self, index: usize) -> f64 {
        self.above_edge.get(index).map_or(1.0, EvidenceMaximum::p_value)
    }

    /// Anytime-valid p-value of "the quantile is at or below edge `index`".
    pub(crate) fn p_at_or_below(&self, index: usize) -> f64 {
        self.at_or_below_edge.get(index).map_or(1.0, EvidenceMaximum::p_value)
    }

    /// Lower bound at one-sided level `alpha_side`: the largest edge the quantile
    /// is shown to exceed, or 0 (latencies are not negative).
    pub(crate) fn lower_bound_us(&self, edges: &[u64], alpha_side: f64) -> f64 {
        let shown = |i: &usize| self.p_above(*i) <= alpha_side;
        (0..edges.len()).rev().find(shown).and_then(|i| edges.get(i)).map_or(0.0, |edge| *edge as f64)
    }

    /// Upper bound at one-sided level `alpha_side`: the smallest edge the
    /// quantile is shown to be at or below; `None` if none is (unbounded).
    pub(crate) fn upper_bound_us(&self, edges: &[u64], alpha_side: f64) -> Option<f64> {
        let shown = |i: &usize| self.p_at_or_below(*i) <= alpha_side;
        (0..edges.len()).find(shown).and_then(|i| edges.get(i)).map(|edge| *edge as f64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::simulation::random::SeededRng;
    use crate::stats::odds_ratio::OddsRatioPrior;

    #[test]
    fn evidence_at_one_edge_matches_an_independent_computation() {
        // 80 of 100 observations at or below the edge, p = 0.9: the edge is below the p90.
        // Reference (python3 + scipy): grid u = k·0.025, |u| <= 4, weights ∝ exp(−u²/2),
        // E = Σ_{u<0} w_u binom.pmf(80, 100, θ(u)) / binom.pmf(80, 100, 0.9) / Σ_{u<0} w_u
        //   = 30.9518282790.
        let grid = OddsRatioGrid::new(OddsRatioPrior::QUANTILE).unwrap();
        let mut sequence = QuantileSequence::new(0.9, 1);
        sequence.observe(&grid, &[80], 100);
        assert!((sequence.p_above(0) - 1.0 / 30.951_828_279_0).abs() < 1e-9, "{}", sequence.p_above(0));
        assert_eq!(sequence.p_at_or_below(0), 1.0);
        assert_eq!(sequence.lower_bound_us(&[1_000], 0.05), 1_000.0);
        assert_eq!(sequence.upper_bound_us(&[1_000], 0.05), None);
    }

    /// Property: over many seeded runs of exponential latencies, the 90 %
    /// confidence sequence for the p90 misses the true value at *any* check in
    /// no more than 10 % of runs (plus three standard errors).
    #[test]
    fn sequence_covers_the_true_quantile_uniformly_over_time() {
        let edges: Vec<u64> = (1..=40).map(|i| i * 1_000).collect();
        let mean_us = 8_000.0;
        let quantile = 0.9;
        let true_quantile = -mean_us * (1.0f64 - quantile).ln(); // 18 420.7 µs
        let grid = OddsRatioGrid::new(OddsRatioPrior { half_width: 3.0, step: 0.1, scale: 1.0 }).unwrap();
        let (runs, checks, per_check, alpha) = (200u32, 20, 200, 0.1);
        let mut misses = 0;
        for seed in 0..runs {
            let mut rng = SeededRng::new(u64::from(seed));
            let mut counts = vec![0u64; edges.len() + 1];
            let mut sequence = QuantileSequence::new(quantile, edges.len());
            let mut missed = false;
            for _ in 0..checks {
                for _ in 0..per_check {
                    let latency = -mean_us * (1.0 - rng.uniform()).ln();
                    let bucket = edges.partition_point(|edge| (*edge as f64) < latency);
                    counts[bucket] += 1;
                }
                let cumulative: Vec<u64> = counts[..edges.len()]
                    .iter()
                    .scan(0, |sum, c| {
                        *sum += c;
                        Some(*sum)
                    })
                    .collect();
                sequence.observe(&grid, &cumulative, counts.iter().sum());
                let lo = sequence.lower_bound_us(&edges, alpha / 2.0);
                let hi = sequence.upper_bound_us(&edges, alpha / 2.0).unwrap_or(f64::INFINITY);
                missed |= !(lo < true_quantile && true_quantile <= hi);
            }
            misses += u32::from(missed);
        }
        let rate = f64::from(misses) / f64::from(runs);
        let standard_error = (alpha * (1.0 - alpha) / f64::from(runs)).sqrt();
        assert!(rate <= alpha + 3.0 * standard_error, "miss rate {rate}");
    }
}
