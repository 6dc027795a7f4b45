//! One-sided confidence bounds for a ratio, read from the same e-processes as
//! the verdict, so that a row's interval is the one its verdict was decided by.
//!
//! At every grid point `u_j` we keep the running maximum of two one-sided
//! mixtures (see [`super::odds_ratio`]): against the null `u <= u_j`
//! (alternatives above: "the ratio is larger than `e^{u_j}`") and against
//! `u >= u_j` (alternatives below). A verdict tests one boundary `b` (e.g.
//! `ln(1 + tolerance)`, not necessarily a grid point) with its own anchor
//! e-process. The lower end of the interval is the largest `u` such that the
//! nulls at every grid point up to it are rejected at `α`: reading rejections
//! contiguously from the far end makes the bound valid without assuming that
//! rejections are monotone in `u_j` (the first true null at or above the truth
//! would have to be rejected). The verdict is "rejected at `b`" only if the
//! anchor is rejected *and* every grid null below `b` is, so "worse" holds
//! exactly when the lower end is at least `b`; its p-value is the largest of
//! those p-values (in practice the anchor's; never smaller, so still valid).
//! Bounds are exclusive: the ratio is shown to be *more* than the lower end.

use serde::{Deserialize, Serialize};

use super::odds_ratio::OddsRatioEvidence;

/// The p-value does not depend on the level the bound is read at; any will do.
const ANY_ALPHA: f64 = 0.05;

/// One end of an interval and the p-value of the verdict test at its boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BoundAndTest {
    /// The bound in log-ratio units; `None` if nothing is rejected on that side.
    pub(crate) log_ratio: Option<f64>,
    /// The p-value of the one-sided test at the verdict's boundary.
    pub(crate) p_value: f64,
}

/// Running maxima of the one-sided e-processes at every grid point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OneSidedBounds {
    /// `ln max_s E_s` against the null `u <= u_j`.
    larger: Vec<f64>,
    /// `ln max_s E_s` against the null `u >= u_j`.
    smaller: Vec<f64>,
}

impl OneSidedBounds {
    pub(crate) fn new(grid_len: usize) -> Self {
        // Every e-process starts at E_0 = 1, ln 1 = 0.
        OneSidedBounds { larger: vec![0.0; grid_len], smaller: vec![0.0; grid_len] }
    }

    /// Folds the evidence after the latest interval into the running maxima:
    /// `ln E_j = ln Σ_{i>j} w_i e^{L_i} − ln Σ_{i>j} w_i − L_j` (and the mirror),
    /// by running log-sum-exps from either end (linear in the grid).
    pub(crate) fn observe(&mut self, evidence: &OddsRatioEvidence) {
        let weights = evidence.grid().log_weights();
        let cumulative = evidence.cumulative();
        let mut mass = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for ((max, w), l) in self.larger.iter_mut().zip(weights).zip(cumulative).rev() {
            update(max, mass, *l);
            mass = (log_add(mass.0, w + l), log_add(mass.1, *w));
        }
        let mut mass = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for ((max, w), l) in self.smaller.iter_mut().zip(weights).zip(cumulative) {
            update(max, mass, *l);
            mass = (log_add(mass.0, w + l), log_add(mass.1, *w));
        }
    }

    /// The lower end at one-sided level `alpha`, with the verdict test at
    /// `boundary` whose anchor e-process has running maximum `boundary_log_max`.
    pub(crate) fn lower(&self, log_ratios: &[f64], alpha: f64, boundary: f64, boundary_log_max: f64) -> BoundAndTest {
        let points = log_ratios.iter().zip(&self.larger).map(|(u, m)| (*u, *m));
        read_bound(points, alpha, boundary_log_max, |u| u < boundary, boundary)
    }

    /// The p-value of the verdict test "the ratio exceeds `e^boundary`" (see the module doc).
    pub(crate) fn p_larger(&self, log_ratios: &[f64], boundary: f64, boundary_log_max: f64) -> f64 {
        self.lower(log_ratios, ANY_ALPHA, boundary, boundary_log_max).p_value
    }

    /// The p-value of the verdict test "the ratio is below `e^boundary`".
    pub(crate) fn p_smaller(&self, log_ratios: &[f64], boundary: f64, boundary_log_max: f64) -> f64 {
        self.upper(log_ratios, ANY_ALPHA, boundary, boundary_log_max).p_value
    }

    /// The upper end at one-sided level `alpha`, mirror of [`OneSidedBounds::lower`].
    pub(crate) fn upper(&self, log_ratios: &[f64], alpha: f64, boundary: f64, boundary_log_max: f64) -> BoundAndTest {
        let points = log_ratios.iter().zip(&self.smaller).map(|(u, m)| (*u, *m)).rev();
        read_bound(points, alpha, boundary_log_max, |u| u > boundary, boundary)
    }
}

/// Reads one end from `(u_j, running max)` ordered from the far end inwards
/// (ascending for the lower end); `far_side(u)` says whether `u_j` lies beyond
/// the verdict's boundary (below it, for the lower end).
fn read_bound(
    points: impl Iterator<Item = (f64, f64)> + Clone,
    alpha: f64,
    boundary_log_max: f64,
    far_side: impl Fn(f64) -> bool,
    boundary: f64,
) -> BoundAndTest {
    let threshold = (1.0 / alpha).ln();
    // The verdict's evidence: the anchor and every grid null on the far side.
    let verdict_log_e =
        points.clone().filter(|(u, _)| far_side(*u)).fold(boundary_log_max, |least, (_, m)| least.min(m));
    let p_value = (-verdict_log_e).exp().min(1.0);
    // The last grid point of the leading run of rejections, from the far end.
    let run_end = points.clone().take_while(|(_, m)| *m >= threshold).map(|(u, _)| u).last();
    let log_ratio = if p_value <= alpha {
        // Every far-side null is rejected, so the run reaches the boundary at least.
        Some(run_end.filter(|u| !far_side(*u)).unwrap_or(boundary))
    } else {
        // Not shown past the boundary: the bound stops at the last far-side grid point.
        let last_far = points.filter(|(u, _)| far_side(*u)).map(|(u, _)| u).last();
        match (run_end, last_far) {
            (Some(u), _) if far_side(u) => Some(u),
            (Some(_), last_far) => last_far,
            (None, _) => None,
        }
    };
    BoundAndTest { log_ratio, p_value }
}

fn update(max: &mut f64, (log_numerator, log_mass): (f64, f64), log_lik: f64) {
    if log_mass == f64::NEG_INFINITY {
        return; // no alternative on this side: E = 1
    }
    let log_e = log_numerator - log_mass - log_lik;
    if log_e > *max {
        *max = log_e;
    }
}

/// `ln(e^a + e^b)`, exact for `-inf` operands.
fn log_add(a: f64, b: f64) -> f64 {
    let (high, low) = if a >= b { (a, b) } else { (b, a) };
    if low == f64::NEG_INFINITY { high } else { high + (low - high).exp().ln_1p() }
}
