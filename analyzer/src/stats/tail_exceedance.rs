//! The latency verdict: a two-sample tail-exceedance test, anytime-valid, exact
//! on bucket counts and conditioned on each interval like the error rate.
//!
//! "The p-quantile may rise at most `T`" is tested at matched thresholds: in
//! each interval, count control's requests slower than a control edge `b_k`
//! near control's p-quantile, and the canary's requests slower than a canary
//! edge `b_c >= b_k + T`. If the canary's quantile at level `ℓ = F_k(b_k)` is at
//! most `T` above control's, then `F_c(b_c) >= F_c(q_k(ℓ) + T) >= ℓ`: the
//! canary's exceedance probability at `b_c` is at most control's at `b_k`.
//! Those are two event rates among requests — the shape of the error rate — so
//! the conditional binomial of [`super::odds_ratio`] applies unchanged: given
//! the interval's `m` exceedances, the canary's are `Binomial(m, θ)` with
//! `θ = ρ·n_c / (ρ·n_c + n_k)`, null `ρ <= 1`. Counts at a bucket edge are exact,
//! so nothing is lost to interpolation; the price of buckets is only that
//! `b_c − b_k` may exceed `T` (conservative: the canary is given more room).
//!
//! Which `b_k`: chosen before the interval is seen, from control's histograms
//! of the previous [`REFERENCE_CHECKS`] checks: each check picks an edge on its
//! own and the median wins, so one check of stalls cannot lift the threshold.
//! A check picks among the edges whose control level lies in `[ℓ_low, p]`
//! (exceedance odds at most [`LEVEL_BAND_ODDS`] times those of `p`: p99 →
//! p97.1…p99) the one whose canary edge leaves the least room beyond `T` (most
//! power near the boundary); with no edge in the band, the lowest edge control
//! exceeds less often than `1 − p`, or never (a service whose requests all fall in
//! one bucket). Levels at or below `p` are the conservative side for the usual
//! slowdown, which grows with latency: one that is at most `T` at `p` is at most
//! `T` below it. A choice that depends only on the past keeps every interval's
//! factor an e-value given the past, so the product over intervals is a
//! supermartingale under the null however the choice moves; the first check (no
//! past) adds no evidence.
//!
//! Which factor: the smaller of the two-sample likelihood ratio above and a
//! one-sample one, the canary's exceedance at `b_c` against `1 − p`. Under the
//! null the canary's exceedance at `b_c` is at most control's at `b_k` when
//! `b_k`'s level is in the band, and at most `1 − p` when `b_k` is at or above
//! control's p-quantile; one of the two holds whatever control's level at `b_k`
//! is in this interval, so the smaller factor is an e-value either way. The
//! two-sample bound alone would be invalid above the band: at an edge control
//! never exceeds it would flag any canary request slower than control's slowest.
//!
//! Null, precisely: at every check, the canary's quantiles at the levels in the
//! band are at most `T` above control's at the same time. A/A traffic and a
//! slowdown of at most `T` satisfy it whatever the load does, because both
//! cohorts are compared within the same interval; this is why the evidence is
//! pooled over the whole rollout (no restart at a new share).
//!
//! The row's interval comes from the same e-processes at other offsets `d`:
//! "the shift exceeds `d`" (canary edge `>= b_k + d`) and "the shift is below
//! `d`" (canary edge `<= b_k + d`). At a fixed `b_k` the canary's count falls as
//! `d` grows, and each interval's likelihood ratio rises with that count, so
//! rejections are nested in `d`: the lower end is the largest `d` rejected at
//! `α`, the upper end the smallest, and "worse" is exactly "lower end `>= T`".

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::comparison::{ComparisonRow, DifferenceScale, Interval, ValueUnit, Verdict, reported_p_value};
use super::eprocess::EvidenceMaximum;
use super::error::{StatsError, check_non_negative, check_open_unit};
use super::histogram::{LatencyHistogram, check_same_layout};
use super::odds_ratio::{OddsRatioGrid, OddsRatioPrior, log_likelihood_ratio};

/// Control checks whose histograms choose the next threshold, one edge each, the
/// median winning: one check holds ~12 000 control requests at 200 rps and a
/// 1-minute interval (~120 above the p99), enough to place the p99 within a
/// bucket; 5 outvote two checks of stalls and are recent enough to follow a
/// latency that moves with load.
pub const REFERENCE_CHECKS: usize = 5;

/// The band of tested levels, as a factor on the exceedance odds of `p`: the
/// control edge's exceedance odds lie in `[odds(1 − p), 3·odds(1 − p)]`, i.e.
/// p99 → levels 97.1 %…99 %, p50 → 25 %…50 %. Wide enough that 5 ms-spaced
/// edges exist near the p99 of the default buckets; a narrower band leaves only
/// the 10 ms-wide buckets above 60 ms.
pub const LEVEL_BAND_ODDS: f64 = 3.0;

/// Shifts (µs) besides `±T` and 0 at which the row's interval is resolved: a
/// 1-2-5 ladder from 1 ms to 1 s on both sides.
pub const INTERVAL_OFFSETS_US: [f64; 10] =
    [1_000.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0, 200_000.0, 500_000.0, 1_000_000.0];

/// Prior on the log ratio of exceedance rates: ratios 1/12…12 (`e^2.5`) on a 5 %
/// grid, sd 1. A 15 % slowdown of a log-normal with σ 0.5 doubles the exceedance
/// rate 5 ms past the p98 (`u ≈ 0.25…0.8`); the coarser grid (101 points, against
/// 361 for error rates) keeps the state of ~20 offsets × 4 quantiles small.
pub const EXCEEDANCE_PRIOR: OddsRatioPrior = OddsRatioPrior { half_width: 2.5, step: 0.05, scale: 1.0 };

/// How one quantile's exceedance test is tuned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailExceedanceSettings {
    pub quantile: f64,
    /// How far (µs) the canary's quantile may exceed control's.
    pub tolerance_us: f64,
    /// Extra offsets (µs) at which the interval is resolved; `±tolerance_us`
    /// and 0 are always tested. Empty for a verdict alone (the simulation).
    pub interval_offsets_us: Vec<f64>,
    pub prior: OddsRatioPrior,
}

impl TailExceedanceSettings {
    /// The report's configuration: the verdict and an interval on [`INTERVAL_OFFSETS_US`].
    pub fn new(quantile: f64, tolerance_us: f64) -> Self {
        let mut offsets: Vec<f64> = INTERVAL_OFFSETS_US.iter().flat_map(|d| [-d, *d]).collect();
        offsets.sort_by(f64::total_cmp);
        TailExceedanceSettings { quantile, tolerance_us, interval_offsets_us: offsets, prior: EXCEEDANCE_PRIOR }
    }

    /// Only the verdict's two offsets `±tolerance_us` (and 0): cheaper, for simulations.
    pub fn verdict_only(quantile: f64, tolerance_us: f64) -> Self {
        TailExceedanceSettings {
            interval_offsets_us: Vec::new(),
            ..TailExceedanceSettings::new(quantile, tolerance_us)
        }
    }
}

/// One offset's evidence: the cumulative log likelihood ratio on the grid and
/// the running maximum of its one-sided mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ShiftEvidence {
    offset_us: f64,
    cumulative: Vec<f64>,
    maximum: EvidenceMaximum,
}

impl ShiftEvidence {
    fn new(offset_us: f64, grid_len: usize) -> Self {
        ShiftEvidence { offset_us, cumulative: vec![0.0; grid_len], maximum: EvidenceMaximum::default() }
    }
}

/// The anytime-valid tail-exceedance test of one quantile over a whole rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailExceedanceTest {
    quantile: f64,
    tolerance_us: f64,
    grid: OddsRatioGrid,
    /// "The canary's shift exceeds `d`", one per offset, ascending.
    exceeds: Vec<ShiftEvidence>,
    /// "The canary's shift is below `d`", one per offset, ascending.
    falls_short: Vec<ShiftEvidence>,
    /// The edge each of the last [`REFERENCE_CHECKS`] checks chose from its own
    /// control histogram (`None`: no candidate), oldest first; chosen once per check.
    reference: VecDeque<Option<usize>>,
    /// The bucket layout (upper bounds, µs) the edges in `reference` index.
    reference_bounds: Vec<u64>,
    canary_observations: u64,
    control_observations: u64,
    informative_intervals: u64,
}

impl TailExceedanceTest {
    pub fn new(settings: TailExceedanceSettings) -> Result<Self, StatsError> {
        let quantile = check_open_unit("latency quantile", settings.quantile)?;
        let tolerance_us = check_non_negative("latency tolerance_us", settings.tolerance_us)?;
        let grid = OddsRatioGrid::new(settings.prior)?;
        let mut offsets = vec![-tolerance_us, 0.0, tolerance_us];
        for offset in &settings.interval_offsets_us {
            if !offset.is_finite() {
                return Err(StatsError::OutOfRange {
                    field: "latency interval offset (µs)",
                    value: *offset,
                    expected: "finite",
                });
            }
            offsets.push(*offset);
        }
        offsets.sort_by(f64::total_cmp);
        offsets.dedup();
        let evidence = |offsets: &[f64]| offsets.iter().map(|d| ShiftEvidence::new(*d, grid.len())).collect();
        Ok(TailExceedanceTest {
            quantile,
            tolerance_us,
            exceeds: evidence(&offsets),
            falls_short: evidence(&offsets),
            grid,
            reference: VecDeque::new(),
            reference_bounds: Vec::new(),
            canary_observations: 0,
            control_observations: 0,
            informative_intervals: 0,
        })
    }

    pub fn quantile(&self) -> f64 {
        self.quantile
    }

    pub fn tolerance_us(&self) -> f64 {
        self.tolerance_us
    }

    /// Adds one interval's histograms (deltas; both cohorts on one bucket layout,
    /// which may differ from earlier intervals').
    pub fn observe(&mut self, canary: &LatencyHistogram, control: &LatencyHistogram) -> Result<(), StatsError> {
        let edges = canary.upper_bounds_us();
        check_same_layout(edges, control.upper_bounds_us())?;
        let (canary_total, control_total) = (canary.total(), control.total());
        self.canary_observations = self.canary_observations.saturating_add(canary_total);
        self.control_observations = self.control_observations.saturating_add(control_total);
        if self.reference_bounds != edges {
            // A new bucket layout: thresholds are chosen afresh from its own data.
            self.reference.clear();
            self.reference_bounds = edges.to_vec();
        }
        let chosen = self.control_edge();
        if let (Some(control_edge), true) = (chosen, canary_total > 0 && control_total > 0) {
            self.add_interval(canary, control, control_edge);
        }
        self.reference.push_back(choose_control_edge(control, self.quantile, self.tolerance_us));
        while self.reference.len() > REFERENCE_CHECKS {
            self.reference.pop_front();
        }
        Ok(())
    }

    /// The control edge for the coming interval, from the reference alone: the
    /// median of the edges each reference check chooses on its own (the higher of
    /// the two middle ones), so that one check with multi-second stalls cannot lift
    /// the threshold into its stall for the next [`REFERENCE_CHECKS`] checks, as a
    /// pooled reference would.
    fn control_edge(&self) -> Option<usize> {
        let mut choices: Vec<usize> = self.reference.iter().flatten().copied().collect();
        choices.sort_unstable();
        choices.get(choices.len() / 2).copied()
    }

    fn add_interval(&mut self, canary: &LatencyHistogram, control: &LatencyHistogram, control_edge: usize) {
        let edges = canary.upper_bounds_us();
        let canary_total = canary.total();
        let control_total = control.total();
        let canary_at_or_below = canary.cumulative_at_bounds();
        let control_at_or_below = control.cumulative_at_bounds();
        let (Some(control_edge_us), Some(control_below)) =
            (edges.get(control_edge), control_at_or_below.get(control_edge))
        else {
            return;
        };
        let control_above = control_total.saturating_sub(*control_below);
        let null_share = canary_total as f64 / (canary_total + control_total) as f64;
        // −ln(1 + q(e^u − 1)): the part of ℓ(u) that depends on the interval's split only.
        let normaliser: Vec<f64> =
            self.grid.log_ratios().iter().map(|u| log_likelihood_ratio(*u, 0.0, 1.0, null_share)).collect();
        // The same for the one-sample half: the canary's exceedance against 1 − p.
        let level_normaliser: Vec<f64> =
            self.grid.log_ratios().iter().map(|u| log_likelihood_ratio(*u, 0.0, 1.0, 1.0 - self.quantile)).collect();
        let canary_above = |edge: Option<usize>| {
            edge.and_then(|i| canary_at_or_below.get(i)).map(|below| canary_total.saturating_sub(*below))
        };
        let target = |offset: f64| *control_edge_us as f64 + offset;
        for evidence in &mut self.exceeds {
            // Smallest edge at or above b_k + d: the canary gets at least d of room.
            let edge = edges.iter().position(|e| *e as f64 >= target(evidence.offset_us));
            if let Some(above) = canary_above(edge) {
                let counts = ExceedanceCounts { canary_above: above, control_above, canary_total };
                add_smaller_factor(
                    &mut evidence.cumulative,
                    self.grid.log_ratios(),
                    &normaliser,
                    &level_normaliser,
                    counts,
                );
            }
            evidence.maximum.observe(self.grid.log_e_one_sided(&evidence.cumulative, 0.0, 0.0, true));
        }
        for evidence in &mut self.falls_short {
            // Largest edge at or below b_k + d; below the first edge every request exceeds 0.
            let edge = edges.iter().rposition(|e| *e as f64 <= target(evidence.offset_us));
            let above = match edge {
                Some(_) => canary_above(edge),
                None if target(evidence.offset_us) >= 0.0 => Some(canary_total),
                None => None,
            };
            if let Some(above) = above {
                add_counts(&mut evidence.cumulative, self.grid.log_ratios(), &normaliser, above, control_above);
            }
            evidence.maximum.observe(self.grid.log_e_one_sided(&evidence.cumulative, 0.0, 0.0, false));
        }
        self.informative_intervals += 1;
    }

    fn evidence_at(list: &[ShiftEvidence], offset: f64) -> Option<&ShiftEvidence> {
        list.iter().find(|e| e.offset_us == offset)
    }

    /// Anytime-valid p-value for "the canary's quantile exceeds control's by more than the tolerance".
    pub fn p_worse(&self) -> f64 {
        Self::evidence_at(&self.exceeds, self.tolerance_us).map_or(1.0, |e| e.maximum.p_value())
    }

    /// Anytime-valid p-value for "the canary's quantile is below control's by more than the tolerance".
    pub fn p_better(&self) -> f64 {
        Self::evidence_at(&self.falls_short, -self.tolerance_us).map_or(1.0, |e| e.maximum.p_value())
    }

    /// The shift interval (µs) at one-sided level `alpha` per end: `lo` the
    /// largest offset shown exceeded, `hi` the smallest shown not reached;
    /// `None` where no tested offset is rejected on that side.
    pub fn shift_interval(&self, alpha: f64) -> Result<Interval, StatsError> {
        let alpha = check_open_unit("alpha", alpha)?;
        let rejected = |e: &&ShiftEvidence| e.maximum.p_value() <= alpha;
        let lo = self.exceeds.iter().rev().find(rejected).map(|e| e.offset_us);
        let hi = self.falls_short.iter().find(rejected).map(|e| e.offset_us);
        Ok(Interval { lo, hi })
    }

    /// Observations per cohort over the whole rollout.
    pub fn observations(&self) -> (u64, u64) {
        (self.canary_observations, self.control_observations)
    }

    /// The `latency_pXX_us` row: `canary` and `control` are the quantile
    /// estimates the caller reports (e.g. this step's), the verdict and the
    /// interval this test's. NotEnoughData while either cohort has fewer than
    /// `min_samples` observations over the rollout.
    pub fn row(
        &self,
        metric: String,
        canary_us: Option<f64>,
        control_us: Option<f64>,
        alpha: f64,
        min_samples: u64,
    ) -> Result<ComparisonRow, StatsError> {
        let ends = self.shift_interval(alpha)?;
        let enough_data = self.canary_observations >= min_samples && self.control_observations >= min_samples;
        let verdict = Verdict::from_tests(self.p_worse(), self.p_better(), alpha, enough_data);
        let interval = Interval::from_one_sided_ends(ends.lo, ends.hi, verdict);
        let (absolute_difference, relative_difference) = ComparisonRow::differences(canary_us, control_us);
        let has_evidence = self.informative_intervals > 0;
        Ok(ComparisonRow {
            metric,
            canary: canary_us,
            control: control_us,
            absolute_difference,
            relative_difference,
            interval: Some(interval),
            interval_scale: DifferenceScale::Absolute,
            p_value: has_evidence.then(|| reported_p_value(verdict, self.p_worse(), self.p_better())),
            verdict,
            unit: ValueUnit::Microseconds,
            origin: super::RowOrigin::BuiltIn,
        })
    }
}

/// Adds one interval to a cumulative log likelihood ratio: `x·u + normaliser(u)·m`
/// with `x` the canary's exceedances and `m` both cohorts'.
fn add_counts(cumulative: &mut [f64], log_ratios: &[f64], normaliser: &[f64], canary_above: u64, control_above: u64) {
    let x = canary_above as f64;
    let m = canary_above.saturating_add(control_above) as f64;
    if m == 0.0 {
        return;
    }
    for ((total, u), norm) in cumulative.iter_mut().zip(log_ratios).zip(normaliser) {
        *total += x * u + m * norm;
    }
}

/// One interval's exceedances for the "shift exceeds `d`" side.
#[derive(Debug, Clone, Copy)]
struct ExceedanceCounts {
    /// Canary requests above the canary edge.
    canary_above: u64,
    /// Control requests above the control edge.
    control_above: u64,
    /// All canary requests of the interval.
    canary_total: u64,
}

/// Adds one interval's factor for "the shift exceeds `d`" at every grid point: the
/// smaller of the two-sample log likelihood ratio (the canary's exceedance rate
/// against control's at `b_k`, `x·u + m·normaliser(u)`) and the one-sample one (the
/// canary's exceedance probability against `1 − p`, `x·u + n_c·level_normaliser(u)`).
/// Under the null one of the two bounds holds, whatever control's level at `b_k`
/// is now: the canary's exceedance at `b_k + d` is at most control's at `b_k` when
/// that level is in the band, and at most `1 − p` when `b_k` is above control's
/// p-quantile. Each factor is an e-value under its own bound, so the smaller is one
/// under either.
fn add_smaller_factor(
    cumulative: &mut [f64],
    log_ratios: &[f64],
    normaliser: &[f64],
    level_normaliser: &[f64],
    counts: ExceedanceCounts,
) {
    let x = counts.canary_above as f64;
    let m = counts.canary_above.saturating_add(counts.control_above) as f64;
    let n = counts.canary_total as f64;
    for (((total, u), norm), level_norm) in cumulative.iter_mut().zip(log_ratios).zip(normaliser).zip(level_normaliser)
    {
        *total += x * u + (m * norm).min(n * level_norm);
    }
}

/// Scores closer than this are a tie: interpolation at an edge rounds in the last bits.
const SCORE_TIE: f64 = 1e-9;

/// Exceedance odds `s / (1 − s)`; infinite at `s = 1`.
fn odds(exceedance: f64) -> f64 {
    exceedance / (1.0 - exceedance)
}

/// The control edge to test at, from `reference` (one control histogram), among
/// the edges that have a canary edge `>= edge + tolerance`:
/// 1. edges whose control level lies in the band at or below `quantile`
///    ([`LEVEL_BAND_ODDS`]): the one whose canary edge leaves the least room
///    beyond the tolerance, measured as `S(canary edge − T) / S(edge)` on
///    control's survival `S` (interpolated inside buckets; 1 = no room lost),
///    ties to the higher level;
/// 2. else the lowest edge that control exceeds less often than `1 − quantile`,
///    or never: control's quantile is at or below it, which the one-sample half
///    of each interval's factor needs (a service whose requests all fall in one
///    bucket, or whose p99 sits inside the first);
/// 3. else (the quantile past every edge) the edge nearest to the band in log odds.
///
/// `None` without data or without a candidate.
pub(crate) fn choose_control_edge(reference: &LatencyHistogram, quantile: f64, tolerance_us: f64) -> Option<usize> {
    let total = reference.total();
    if total == 0 {
        return None;
    }
    let edges = reference.upper_bounds_us();
    let survival_at_edges: Vec<f64> =
        reference.cumulative_at_bounds().iter().map(|below| 1.0 - *below as f64 / total as f64).collect();
    let (band_low, band_high) = (odds(1.0 - quantile), LEVEL_BAND_ODDS * odds(1.0 - quantile));
    // (index, room kept) in the band; the lowest index above it; (index, distance) below it.
    let mut in_band: Option<(usize, f64)> = None;
    let mut above_band: Option<usize> = None;
    let mut below_band: Option<(usize, f64)> = None;
    for (index, (edge, survival)) in edges.iter().zip(&survival_at_edges).enumerate() {
        // Edges ascend: the first at or above edge + T by bisection (Envoy's grid has 640).
        let canary_index = edges.partition_point(|e| (*e as f64) < *edge as f64 + tolerance_us);
        let Some(canary_edge) = edges.get(canary_index) else { continue };
        if *survival >= 1.0 {
            continue;
        }
        let level_odds = odds(*survival);
        if level_odds < band_low * (1.0 - SCORE_TIE) {
            above_band = above_band.or(Some(index));
        } else if level_odds > band_high * (1.0 + SCORE_TIE) {
            let distance = (level_odds / band_high).ln();
            // Later (lower-odds) edges win ties.
            if below_band.is_none_or(|(_, best)| distance <= best + SCORE_TIE) {
                below_band = Some((index, distance));
            }
        } else {
            let kept = survival_interpolated(edges, &survival_at_edges, *canary_edge as f64 - tolerance_us) / survival;
            // Later (higher) edges win ties, up to rounding.
            if in_band.is_none_or(|(_, best)| kept >= best - SCORE_TIE) {
                in_band = Some((index, kept));
            }
        }
    }
    in_band.map(|(index, _)| index).or(above_band).or(below_band.map(|(index, _)| index))
}

/// Control's survival at `x`, linear inside the bucket (as `histogram_quantile`).
fn survival_interpolated(edges: &[u64], survival_at_edges: &[f64], x: f64) -> f64 {
    let mut lower = (0.0, 1.0);
    for (edge, survival) in edges.iter().zip(survival_at_edges) {
        let edge = *edge as f64;
        if x <= edge {
            let width = edge - lower.0;
            let fraction = if width > 0.0 { (x - lower.0) / width } else { 1.0 };
            return lower.1 + (survival - lower.1) * fraction.clamp(0.0, 1.0);
        }
        lower = (edge, *survival);
    }
    lower.1
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::simulation::random::SeededRng;
    use canary_core::metrics::LATENCY_BUCKETS_US;

    /// Deterministic histogram: the count at or below every bound is its expectation
    /// under `cdf`, rounded (`round(n·F(b))`), so the count above any edge is within
    /// half a request of `n·S(b)` on every layout. Rounding each bucket instead lets the
    /// errors add up over the buckets above an edge: with 600 requests the 30 buckets
    /// above 60 ms of the 121-bucket layout hold 16 where 16.5 are expected (the
    /// 36-bucket layout's 6 held 17), which alone moved this file's +15 % test from
    /// p = 0.004 to p = 0.08.
    fn expected_histogram(bounds: &[u64], n: f64, cdf: impl Fn(f64) -> f64) -> LatencyHistogram {
        let total = n.round() as u64;
        let mut previous = 0u64;
        let mut counts: Vec<u64> = bounds
            .iter()
            .map(|bound| {
                let at_or_below = ((n * cdf(*bound as f64)).round() as u64).clamp(previous, total);
                let count = at_or_below - previous;
                previous = at_or_below;
                count
            })
            .collect();
        counts.push(total - previous);
        LatencyHistogram::from_bucket_counts(bounds, &counts).unwrap()
    }

    /// Log-normal CDF with median `median_us` and log-sd `sigma`, slowed by `factor`.
    fn log_normal(median_us: f64, sigma: f64, factor: f64) -> impl Fn(f64) -> f64 {
        move |x: f64| {
            if x <= 0.0 { 0.0 } else { standard_normal_cdf((x / (median_us * factor)).ln() / sigma) }
        }
    }

    fn standard_normal_cdf(z: f64) -> f64 {
        0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2)
    }

    fn run(canary_factor: f64, tolerance_us: f64, checks: u32, canary_n: f64) -> TailExceedanceTest {
        let mut test = TailExceedanceTest::new(TailExceedanceSettings::new(0.99, tolerance_us)).unwrap();
        for _ in 0..checks {
            let canary = expected_histogram(&LATENCY_BUCKETS_US, canary_n, log_normal(20_000.0, 0.5, canary_factor));
            let control = expected_histogram(&LATENCY_BUCKETS_US, 11_000.0, log_normal(20_000.0, 0.5, 1.0));
            test.observe(&canary, &control).unwrap();
        }
        test
    }

    #[test]
    fn the_control_edge_sits_in_the_band_and_leaves_the_least_room() {
        // Log-normal median 20 ms, σ 0.5: S(50 ms) = 3.3 %, S(55) = 2.2 %, S(60) = 1.4 %.
        let reference = expected_histogram(&LATENCY_BUCKETS_US, 1e6, log_normal(20_000.0, 0.5, 1.0));
        let edge =
            |quantile, tolerance| choose_control_edge(&reference, quantile, tolerance).map(|i| LATENCY_BUCKETS_US[i]);
        // p99, 5 ms: 55 → 60 ms loses no room; 60 → 70 ms would give the canary 10 ms.
        assert_eq!(edge(0.99, 5_000.0), Some(55_000));
        // Without a tolerance every edge loses nothing: the highest in the band wins.
        assert_eq!(edge(0.99, 0.0), Some(60_000));
        // p50 with 2 ms: band 25 %…50 %; 17.5 → 20 ms leaves 0.5 ms of room, 15 → 17.5 the same.
        let p50 = edge(0.5, 2_000.0).unwrap();
        assert!((15_000..=20_000).contains(&p50), "{p50}");
        assert_eq!(choose_control_edge(&LatencyHistogram::empty(&LATENCY_BUCKETS_US).unwrap(), 0.99, 0.0), None);
    }

    #[test]
    fn one_interval_matches_an_independent_computation() {
        // Reference control: S(20) = 10 % is the p90's edge; with T = 10 µs the canary's edge is 30.
        // Interval: canary 4 of 10 above 30, control 10 of 100 above 20; q = 10/110, x = 4, m = 14.
        // Reference (python3, math.lgamma): grid u = k·0.05, |u| <= 2.5, weights ∝ exp(−u²/2), u > 0:
        // E = Σ w_u Bin(4; 14, θ(u)) / Bin(4; 14, q) / Σ w_u = 4.661824266555442.
        let bounds = [10, 20, 30];
        let mut test = TailExceedanceTest::new(TailExceedanceSettings::new(0.9, 10.0)).unwrap();
        let control = LatencyHistogram::from_bucket_counts(&bounds, &[50, 40, 8, 2]).unwrap();
        test.observe(&LatencyHistogram::empty(&bounds).unwrap(), &control).unwrap();
        assert_eq!(choose_control_edge(&control, 0.9, 10.0), Some(1));
        let canary = LatencyHistogram::from_bucket_counts(&bounds, &[2, 2, 2, 4]).unwrap();
        test.observe(&canary, &control).unwrap();
        assert!((test.p_worse() - 1.0 / 4.661_824_266_555_442).abs() < 1e-9, "{}", test.p_worse());
    }

    #[test]
    fn fifteen_percent_slower_is_worse_where_the_quantile_bounds_are_blind() {
        // 15 % slower (p99 +9.6 ms) against a 5 ms tolerance, 15 checks of 600 canary requests.
        let test = run(1.15, 5_000.0, 15, 600.0);
        assert!(test.p_worse() < 0.01, "{}", test.p_worse());
        let row = test.row("latency_p99_us".into(), None, None, 0.05, 1_000).unwrap();
        assert_eq!(row.verdict, Verdict::Worse);
        assert!(row.interval.unwrap().lo.unwrap() >= 5_000.0, "{row:?}");
        // The quantile-difference method on the same data sees nothing.
        let mut old = crate::stats::LatencyComparison::new(
            &LATENCY_BUCKETS_US,
            crate::stats::LatencySettings {
                quantiles: vec![crate::stats::QuantileTolerance { quantile: 0.99, tolerance_us: 5_000.0 }],
                ..crate::stats::LatencySettings::with_tolerance_us(0.0)
            },
        )
        .unwrap();
        for _ in 0..15 {
            let canary = expected_histogram(&LATENCY_BUCKETS_US, 600.0, log_normal(20_000.0, 0.5, 1.15));
            let control = expected_histogram(&LATENCY_BUCKETS_US, 11_000.0, log_normal(20_000.0, 0.5, 1.0));
            old.observe(&canary, &control).unwrap();
        }
        assert_eq!(old.rows(0.05, 1_000).unwrap()[0].verdict, Verdict::NoDifference);
    }

    #[test]
    fn a_slowdown_within_the_tolerance_is_not_worse_and_a_faster_canary_is_better() {
        let within = run(1.05, 5_000.0, 30, 3_000.0); // p99 +3.2 ms
        assert!(within.p_worse() > 0.5, "{}", within.p_worse());
        let row = within.row("latency_p99_us".into(), None, None, 0.05, 1_000).unwrap();
        assert_eq!(row.verdict, Verdict::NoDifference);
        assert!(row.interval.unwrap().contains(3_200.0), "{row:?}");
        let faster = run(0.8, 5_000.0, 30, 3_000.0); // p99 −12.8 ms
        assert!(faster.p_better() < 0.01, "{}", faster.p_better());
        let row = faster.row("latency_p99_us".into(), None, None, 0.05, 1_000).unwrap();
        assert_eq!(row.verdict, Verdict::Better);
        assert!(row.interval.unwrap().hi.unwrap() <= -5_000.0, "{row:?}");
    }

    #[test]
    fn a_tail_regression_is_seen_when_controls_p99_sits_in_the_first_bucket() {
        // Loopback-fast service: control 99.5 % at or below 250 µs, so no edge has a
        // control level in the p97.1–p99 band. The canary sends 5 % of requests 100 ms later.
        let bounds = &LATENCY_BUCKETS_US;
        let mut test = TailExceedanceTest::new(TailExceedanceSettings::new(0.99, 5_000.0)).unwrap();
        let mut control_counts = vec![0u64; bounds.len() + 1];
        control_counts[0] = 9_950;
        control_counts[1] = 50;
        let mut canary_counts = vec![0u64; bounds.len() + 1];
        canary_counts[0] = 950;
        canary_counts[bounds.iter().position(|b| *b == 100_000).unwrap()] = 50;
        let control = LatencyHistogram::from_bucket_counts(bounds, &control_counts).unwrap();
        let canary = LatencyHistogram::from_bucket_counts(bounds, &canary_counts).unwrap();
        for _ in 0..5 {
            test.observe(&canary, &control).unwrap();
        }
        assert!(test.p_worse() < 1e-6, "{}", test.p_worse());
        // Nearest to the band: the first edge (level 99.5 %); its canary edge is 5 ms.
        assert_eq!(choose_control_edge(&control, 0.99, 5_000.0), Some(0));
    }

    #[test]
    fn the_first_check_adds_no_evidence_and_layouts_must_match() {
        let test = run(2.0, 0.0, 1, 1_000.0);
        assert_eq!(test.p_worse(), 1.0);
        assert_eq!(test.row("latency_p99_us".into(), None, None, 0.05, 1).unwrap().p_value, None);
        let mut test = TailExceedanceTest::new(TailExceedanceSettings::new(0.99, 0.0)).unwrap();
        let a = LatencyHistogram::empty(&[1, 2]).unwrap();
        let b = LatencyHistogram::empty(&[1, 3]).unwrap();
        assert!(matches!(test.observe(&a, &b), Err(StatsError::BoundsDiffer { .. })));
        assert!(TailExceedanceTest::new(TailExceedanceSettings::new(1.0, 0.0)).is_err());
        assert!(TailExceedanceTest::new(TailExceedanceSettings::new(0.99, -1.0)).is_err());
    }

    /// Draws one interval's histogram: Poisson counts per bucket (a thinned Poisson process).
    fn draw(rng: &mut SeededRng, bounds: &[u64], n: f64, cdf: &dyn Fn(f64) -> f64) -> LatencyHistogram {
        let mut previous = 0.0;
        let mut counts: Vec<u64> = bounds
            .iter()
            .map(|bound| {
                let next = cdf(*bound as f64);
                let count = rng.poisson(n * (next - previous));
                previous = next;
                count
            })
            .collect();
        counts.push(rng.poisson(n * (1.0 - previous)));
        LatencyHistogram::from_bucket_counts(bounds, &counts).unwrap()
    }

    /// Property (validity): the canary exactly `T` slower at every level (the
    /// boundary of the null), latency rising and falling with load, the share
    /// walking the ladder: "worse" in at most alpha of the runs (+3 SE).
    #[test]
    fn false_alarms_stay_below_alpha_at_the_tolerance_boundary_under_load() {
        let (runs, alpha, tolerance_us) = (300u32, 0.05, 5_000.0);
        let mut rejections = 0;
        for seed in 0..runs {
            let mut rng = SeededRng::new(u64::from(seed) + 31_000);
            let settings = TailExceedanceSettings::verdict_only(0.99, tolerance_us);
            let mut test = TailExceedanceTest::new(settings).unwrap();
            let phase = std::f64::consts::TAU * rng.uniform();
            for check in 0..40 {
                let share = [0.01, 0.05, 0.25, 0.5][check / 10];
                let load = 1.0 + 0.5 * (phase + f64::from(check as u32) / 5.0).sin();
                // Latency grows with load: median 20 ms at mean load, ±40 %.
                let median = 20_000.0 * (1.0 + 0.8 * (load - 1.0));
                let control_cdf = log_normal(median, 0.5, 1.0);
                let canary_cdf = move |x: f64| control_cdf(x - tolerance_us);
                let n = 12_000.0 * load;
                let canary = draw(&mut rng, &LATENCY_BUCKETS_US, n * share, &canary_cdf);
                let control = draw(&mut rng, &LATENCY_BUCKETS_US, n * (1.0 - share), &log_normal(median, 0.5, 1.0));
                test.observe(&canary, &control).unwrap();
            }
            rejections += u32::from(test.p_worse() <= alpha);
        }
        let rate = f64::from(rejections) / f64::from(runs);
        assert!(rate <= alpha + 3.0 * (alpha * (1.0 - alpha) / f64::from(runs)).sqrt(), "{rate}");
    }

    /// Envoy's grid with every count in the bin `[lower_us, upper_us)`.
    fn one_bin(n: u64, upper_us: u64) -> LatencyHistogram {
        let bounds = crate::source::envoy_bin_bounds_us();
        let mut counts = vec![0u64; bounds.len() + 1];
        counts[bounds.iter().position(|b| *b == upper_us).unwrap()] = n;
        LatencyHistogram::from_bucket_counts(bounds, &counts).unwrap()
    }

    #[test]
    fn a_slow_canary_is_worse_when_every_control_request_falls_in_one_bin() {
        // A fixed 200 ms upstream: all control requests in Envoy's bin [200, 210) ms, no
        // edge with a control level strictly between 0 and 1. A canary at 260 ms: the
        // test at the edge control never exceeds (210 ms) against 1 − p has the evidence.
        let mut slow = TailExceedanceTest::new(TailExceedanceSettings::new(0.99, 5_000.0)).unwrap();
        let mut same = TailExceedanceTest::new(TailExceedanceSettings::new(0.99, 5_000.0)).unwrap();
        for _ in 0..10 {
            slow.observe(&one_bin(7, 270_000), &one_bin(140, 210_000)).unwrap();
            same.observe(&one_bin(7, 210_000), &one_bin(140, 210_000)).unwrap();
        }
        assert!(slow.p_worse() < 1e-6, "{}", slow.p_worse());
        let row = slow.row("latency_p99_us".into(), None, None, 0.01, 20).unwrap();
        assert_eq!(row.verdict, Verdict::Worse, "{row:?}");
        assert!(row.interval.unwrap().lo.unwrap() >= 5_000.0, "{row:?}");
        // The A/A twin has evidence against a slowdown, none for it.
        assert_eq!(same.p_worse(), 1.0);
        assert!(same.row("latency_p99_us".into(), None, None, 0.01, 20).unwrap().p_value.is_some());
    }

    #[test]
    fn above_the_band_the_lowest_edge_control_exceeds_less_than_one_minus_p_is_chosen() {
        // 1 000 control requests: 995 in [200, 210) ms, 5 stragglers at 900 ms. Every
        // edge from 210 to 900 ms has the same level (99.5 %); the lowest leaves the
        // canary the least room, where the highest would test above 905 ms.
        let bounds = crate::source::envoy_bin_bounds_us();
        let mut counts = vec![0u64; bounds.len() + 1];
        counts[bounds.iter().position(|b| *b == 210_000).unwrap()] = 995;
        counts[bounds.iter().position(|b| *b == 910_000).unwrap()] = 5;
        let reference = LatencyHistogram::from_bucket_counts(bounds, &counts).unwrap();
        let chosen = choose_control_edge(&reference, 0.99, 5_000.0).map(|i| bounds[i]);
        assert_eq!(chosen, Some(210_000));
        // All in one bin: the bin's own upper edge.
        assert_eq!(choose_control_edge(&one_bin(140, 210_000), 0.99, 5_000.0).map(|i| bounds[i]), Some(210_000));
    }

    #[test]
    fn one_check_of_stalls_does_not_lift_the_threshold() {
        // Four checks of the default service and one where 20 % of control requests
        // stalled for 2-3 s: the median of the per-check choices stays near 60 ms,
        // where a pooled reference (6 % above 2 s) would test at seconds.
        let mut test = TailExceedanceTest::new(TailExceedanceSettings::new(0.99, 5_000.0)).unwrap();
        let normal = expected_histogram(&LATENCY_BUCKETS_US, 11_000.0, log_normal(20_000.0, 0.5, 1.0));
        let stalled = expected_histogram(&LATENCY_BUCKETS_US, 11_000.0, |x| {
            0.8 * log_normal(20_000.0, 0.5, 1.0)(x) + 0.2 * f64::from(u8::from(x >= 2_500_000.0))
        });
        for control in [&normal, &stalled, &normal, &normal, &normal] {
            test.observe(&normal, control).unwrap();
        }
        let edge = test.control_edge().map(|i| LATENCY_BUCKETS_US[i]);
        assert_eq!(edge, Some(55_000));
        let mut pooled = LatencyHistogram::empty(&LATENCY_BUCKETS_US).unwrap();
        for control in [&normal, &stalled, &normal, &normal, &normal] {
            pooled.add(control).unwrap();
        }
        assert!(choose_control_edge(&pooled, 0.99, 5_000.0).is_some_and(|i| LATENCY_BUCKETS_US[i] >= 1_000_000));
    }

    /// Property (validity of the one-sample half): control in one bin, the canary
    /// with 0.8 % of requests stalled 500 ms (its p99 is still control's) and control
    /// with none. The two-sample factor alone tests "the canary is never slower than
    /// control's slowest" and rolls nearly every run back; with the smaller of the
    /// two factors "worse" stays within alpha (+3 SE).
    #[test]
    fn canary_only_outliers_below_one_minus_p_are_not_worse() {
        let (runs, alpha) = (200u32, 0.05);
        let mut rejections = 0;
        for seed in 0..runs {
            let mut rng = SeededRng::new(u64::from(seed) + 47_000);
            let mut test = TailExceedanceTest::new(TailExceedanceSettings::verdict_only(0.99, 5_000.0)).unwrap();
            for _ in 0..40 {
                let outliers = rng.poisson(500.0 * 0.008);
                let bounds = crate::source::envoy_bin_bounds_us();
                let mut counts = vec![0u64; bounds.len() + 1];
                counts[bounds.iter().position(|b| *b == 210_000).unwrap()] = 500u64.saturating_sub(outliers);
                counts[bounds.iter().position(|b| *b == 710_000).unwrap()] = outliers;
                let canary = LatencyHistogram::from_bucket_counts(bounds, &counts).unwrap();
                test.observe(&canary, &one_bin(2_000, 210_000)).unwrap();
            }
            rejections += u32::from(test.p_worse() <= alpha);
        }
        let rate = f64::from(rejections) / f64::from(runs);
        assert!(rate <= alpha + 3.0 * (alpha * (1.0 - alpha) / f64::from(runs)).sqrt(), "{rate}");
    }
}
