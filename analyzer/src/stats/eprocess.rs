//! E-process bookkeeping: the running maximum of an e-process and the
//! anytime-valid p-value it yields, plus the log-space sums every mixture needs.
//!
//! An e-process `E_t` has `E[E_τ] <= 1` under the null at any stopping time `τ`,
//! so by Ville's inequality `P(sup_t E_t >= 1/α) <= α`. The p-value
//! `p_t = min(1, 1 / max_{s<=t} E_s)` is therefore valid however often it is read
//! and whenever the reader stops; keeping the running maximum also makes it
//! non-increasing, so a rollout never "un-sees" evidence. Everything is kept in
//! logs because likelihood ratios over thousands of requests overflow `f64`.

use serde::{Deserialize, Serialize};

/// The running maximum of one e-process, in natural-log units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvidenceMaximum {
    /// `ln max_{s<=t} E_s`; starts at 0 because every e-process starts at `E_0 = 1`.
    log_max: f64,
}

impl Default for EvidenceMaximum {
    fn default() -> Self {
        EvidenceMaximum { log_max: 0.0 }
    }
}

impl EvidenceMaximum {
    /// Records the current value `ln E_t`. NaN is ignored (a comparison with NaN
    /// is false), so a numerical accident can never fabricate evidence.
    pub fn observe(&mut self, log_e: f64) {
        if log_e > self.log_max {
            self.log_max = log_e;
        }
    }

    /// `ln max_{s<=t} E_s`.
    pub fn log_max(&self) -> f64 {
        self.log_max
    }

    /// The anytime-valid p-value `min(1, 1 / max_{s<=t} E_s)`, always in (0, 1].
    pub fn p_value(&self) -> f64 {
        (-self.log_max).exp().min(1.0)
    }
}

/// `ln Σ exp(x_i)` without overflow; `-inf` for an empty input.
pub(crate) fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let largest = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if largest == f64::NEG_INFINITY || largest.is_nan() {
        return largest;
    }
    let sum: f64 = values.map(|value| (value - largest).exp()).sum();
    largest + sum.ln()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn p_value_is_the_inverse_running_maximum() {
        let mut maximum = EvidenceMaximum::default();
        assert_eq!(maximum.p_value(), 1.0);
        maximum.observe(20f64.ln());
        assert!((maximum.p_value() - 0.05).abs() < 1e-12);
        // A later drop of the e-process does not raise the p-value again.
        maximum.observe(-3.0);
        maximum.observe(f64::NAN);
        assert!((maximum.p_value() - 0.05).abs() < 1e-12);
        maximum.observe(100f64.ln());
        assert!((maximum.p_value() - 0.01).abs() < 1e-12);
    }

    #[test]
    fn log_sum_exp_matches_direct_sum() {
        // Reference: ln(e^1 + e^2 + e^3) = 3.40760596444438 (by hand / numpy).
        let value = log_sum_exp([1.0, 2.0, 3.0].into_iter());
        assert!((value - 3.407_605_964_444_38).abs() < 1e-12);
        // Large magnitudes must not overflow: ln(2 e^1000) = 1000 + ln 2.
        let large = log_sum_exp([1000.0, 1000.0].into_iter());
        assert!((large - (1000.0 + std::f64::consts::LN_2)).abs() < 1e-9);
        assert_eq!(log_sum_exp(std::iter::empty()), f64::NEG_INFINITY);
    }
}
