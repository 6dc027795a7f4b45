//! Latency comparison by quantile bounds: per-cohort quantile estimates with
//! anytime-valid intervals, and a tolerance-aware verdict on the difference.
//! The report's latency verdicts come from [`super::tail_exceedance`], which sees
//! shifts below the bucket width; this comparison stays for per-cohort quantile
//! intervals and as the method the simulation compares against.
//!
//! "p99 may rise at most T µs" is tested as the null `q_canary − q_control <= T`.
//! The canary's sequence can show `q_canary > b_c` and control's can show
//! `q_control <= b_k` (see [`super::quantile`]); both together prove
//! `q_canary − q_control > b_c − b_k`. The difference interval uses one-sided
//! level `α/4` for each of the four bounds (two cohorts × two sides, a union
//! bound), so it covers with probability `1 − α` at all times, and "Worse" is
//! exactly "its lower end is at least T". A real shift smaller than T — or
//! smaller than what the buckets can resolve — therefore never rolls back.

use serde::{Deserialize, Serialize};

use super::comparison::{ComparisonRow, DifferenceScale, Interval, ValueUnit, Verdict, reported_p_value};
use super::error::{StatsError, check_non_negative, check_open_unit};
use super::histogram::{LatencyHistogram, check_same_layout};
use super::odds_ratio::{OddsRatioGrid, OddsRatioPrior};
use super::quantile::QuantileSequence;

/// The quantiles every report shows: p50, p90, p99, p99.9.
pub const REPORTED_QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Bonferroni factor of a difference between two cohorts' two-sided intervals.
const DIFFERENCE_BOUNDS: f64 = 4.0;

/// A quantile and how far the canary may exceed control on it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantileTolerance {
    pub quantile: f64,
    pub tolerance_us: f64,
}

/// How the latency comparison is tuned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySettings {
    pub quantiles: Vec<QuantileTolerance>,
    pub prior: OddsRatioPrior,
}

impl LatencySettings {
    /// All [`REPORTED_QUANTILES`] with the same tolerance.
    pub fn with_tolerance_us(tolerance_us: f64) -> Self {
        let quantiles =
            REPORTED_QUANTILES.iter().map(|&quantile| QuantileTolerance { quantile, tolerance_us }).collect();
        LatencySettings { quantiles, prior: OddsRatioPrior::QUANTILE }
    }
}

/// A cohort's quantile: point estimate and anytime-valid interval (µs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantileEstimate {
    pub quantile: f64,
    pub estimate_us: Option<f64>,
    pub interval: Interval,
}

/// One cohort's accumulated histogram and quantile sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CohortLatency {
    histogram: LatencyHistogram,
    sequences: Vec<QuantileSequence>,
}

impl CohortLatency {
    fn observe(&mut self, grid: &OddsRatioGrid, delta: &LatencyHistogram) -> Result<(), StatsError> {
        self.histogram.add(delta)?;
        let cumulative = self.histogram.cumulative_at_bounds();
        let total = self.histogram.total();
        for sequence in &mut self.sequences {
            sequence.observe(grid, &cumulative, total);
        }
        Ok(())
    }
}

/// The sequential latency comparison of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyComparison {
    tolerances: Vec<QuantileTolerance>,
    grid: OddsRatioGrid,
    canary: CohortLatency,
    control: CohortLatency,
}

impl LatencyComparison {
    pub fn new(upper_bounds_us: &[u64], settings: LatencySettings) -> Result<Self, StatsError> {
        for tolerance in &settings.quantiles {
            check_open_unit("latency quantile", tolerance.quantile)?;
            check_non_negative("latency tolerance_us", tolerance.tolerance_us)?;
        }
        let cohort = CohortLatency {
            histogram: LatencyHistogram::empty(upper_bounds_us)?,
            sequences: settings
                .quantiles
                .iter()
                .map(|t| QuantileSequence::new(t.quantile, upper_bounds_us.len()))
                .collect(),
        };
        Ok(LatencyComparison {
            tolerances: settings.quantiles,
            grid: OddsRatioGrid::new(settings.prior)?,
            canary: cohort.clone(),
            control: cohort,
        })
    }

    /// Adds one interval's per-cohort histograms (deltas, same bounds as at construction).
    pub fn observe(&mut self, canary: &LatencyHistogram, control: &LatencyHistogram) -> Result<(), StatsError> {
        let bounds = self.canary.histogram.upper_bounds_us();
        check_same_layout(bounds, canary.upper_bounds_us())?;
        check_same_layout(bounds, control.upper_bounds_us())?;
        self.canary.observe(&self.grid, canary)?;
        self.control.observe(&self.grid, control)
    }

    /// The canary's quantiles with `1 − alpha` intervals (each quantile separately).
    pub fn canary_quantiles(&self, alpha: f64) -> Result<Vec<QuantileEstimate>, StatsError> {
        cohort_quantiles(&self.canary, check_open_unit("alpha", alpha)?)
    }

    /// Control's quantiles with `1 − alpha` intervals (each quantile separately).
    pub fn control_quantiles(&self, alpha: f64) -> Result<Vec<QuantileEstimate>, StatsError> {
        cohort_quantiles(&self.control, check_open_unit("alpha", alpha)?)
    }

    /// One row per configured quantile, named like `latency_p99_us`.
    pub fn rows(&self, alpha: f64, min_samples: u64) -> Result<Vec<ComparisonRow>, StatsError> {
        let alpha = check_open_unit("alpha", alpha)?;
        let edges = self.canary.histogram.upper_bounds_us();
        let enough_data = self.canary.histogram.total() >= min_samples && self.control.histogram.total() >= min_samples;
        let has_data = self.canary.histogram.total() > 0 && self.control.histogram.total() > 0;
        let cohorts = self.canary.sequences.iter().zip(&self.control.sequences);
        let rows = self.tolerances.iter().zip(cohorts).map(|(tolerance, (canary, control))| {
            let p_worse = p_difference_beyond(canary, control, edges, tolerance.tolerance_us);
            let p_better = p_difference_beyond(control, canary, edges, tolerance.tolerance_us);
            let verdict = Verdict::from_tests(p_worse, p_better, alpha, enough_data);
            let side = alpha / DIFFERENCE_BOUNDS;
            let lo = control.upper_bound_us(edges, side).map(|hi| canary.lower_bound_us(edges, side) - hi);
            let hi = canary.upper_bound_us(edges, side).map(|hi| hi - control.lower_bound_us(edges, side));
            let canary_value = self.canary.histogram.quantile_estimate_us(tolerance.quantile);
            let control_value = self.control.histogram.quantile_estimate_us(tolerance.quantile);
            let (absolute_difference, relative_difference) = ComparisonRow::differences(canary_value, control_value);
            ComparisonRow {
                metric: latency_metric_name(tolerance.quantile),
                canary: canary_value,
                control: control_value,
                absolute_difference,
                relative_difference,
                interval: Some(Interval { lo, hi }),
                interval_scale: DifferenceScale::Absolute,
                p_value: has_data.then(|| reported_p_value(verdict, p_worse, p_better)),
                verdict,
                unit: ValueUnit::Microseconds,
                origin: super::RowOrigin::BuiltIn,
            }
        });
        Ok(rows.collect())
    }
}

/// Anytime-valid p-value of `q_high − q_low > tolerance`: the best pair of edges
/// `b_h − b_l >= tolerance` with "`q_high` above `b_h`" and "`q_low` at or below
/// `b_l`", each at level `p/4` (see [`DIFFERENCE_BOUNDS`]).
fn p_difference_beyond(high: &QuantileSequence, low: &QuantileSequence, edges: &[u64], tolerance: f64) -> f64 {
    let mut best: f64 = 1.0;
    for (i, high_edge) in edges.iter().enumerate() {
        let p_high = high.p_above(i);
        for (j, low_edge) in edges.iter().enumerate() {
            if *high_edge as f64 - *low_edge as f64 >= tolerance {
                best = best.min(DIFFERENCE_BOUNDS * p_high.max(low.p_at_or_below(j)));
            }
        }
    }
    best.min(1.0)
}

fn cohort_quantiles(cohort: &CohortLatency, alpha: f64) -> Result<Vec<QuantileEstimate>, StatsError> {
    let edges = cohort.histogram.upper_bounds_us();
    let estimates = cohort.sequences.iter().map(|sequence| QuantileEstimate {
        quantile: sequence.quantile(),
        estimate_us: cohort.histogram.quantile_estimate_us(sequence.quantile()),
        interval: Interval {
            lo: Some(sequence.lower_bound_us(edges, alpha / 2.0)),
            hi: sequence.upper_bound_us(edges, alpha / 2.0),
        },
    });
    Ok(estimates.collect())
}

/// The row name of a latency quantile: `0.99` → `latency_p99_us`.
pub fn latency_metric_name(quantile: f64) -> String {
    format!("latency_p{}_us", quantile_label(quantile))
}

/// `0.99` → `99`, `0.999` → `99_9` (for metric names).
fn quantile_label(quantile: f64) -> String {
    // Tenths of a percent: enough for p99.9 and exact for the reported quantiles.
    let tenths = (quantile * 1000.0).round() as u64;
    if tenths % 10 == 0 { format!("{}", tenths / 10) } else { format!("{}_{}", tenths / 10, tenths % 10) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;
    use canary_core::metrics::LATENCY_BUCKETS_US;

    /// Deterministic histogram of `n` exponential latencies with mean `mean_us`:
    /// each bucket gets its expected count `n·(F(b_i) − F(b_{i−1}))`, rounded.
    fn exponential_histogram(mean_us: f64, n: f64) -> LatencyHistogram {
        let cdf = |x: f64| 1.0 - (-x / mean_us).exp();
        let mut previous = 0.0;
        let mut counts: Vec<u64> = LATENCY_BUCKETS_US
            .iter()
            .map(|bound| {
                let next = cdf(*bound as f64);
                let count = (n * (next - previous)).round() as u64;
                previous = next;
                count
            })
            .collect();
        counts.push((n * (1.0 - previous)).round() as u64);
        LatencyHistogram::from_bucket_counts(&LATENCY_BUCKETS_US, &counts).unwrap()
    }

    fn compare(canary_mean_us: f64, tolerance_us: f64) -> LatencyComparison {
        let settings = LatencySettings {
            quantiles: vec![QuantileTolerance { quantile: 0.99, tolerance_us }],
            ..LatencySettings::with_tolerance_us(0.0)
        };
        let mut comparison = LatencyComparison::new(&LATENCY_BUCKETS_US, settings).unwrap();
        for _ in 0..10 {
            let canary = exponential_histogram(canary_mean_us, 20_000.0);
            let control = exponential_histogram(10_000.0, 20_000.0);
            comparison.observe(&canary, &control).unwrap();
        }
        comparison
    }

    #[test]
    fn a_real_shift_below_the_tolerance_is_not_a_regression() {
        // Control p99 = 10 ms·ln 100 = 46.1 ms; canary (mean 12 ms) p99 = 55.3 ms.
        let strict = compare(12_000.0, 0.0);
        let row = &strict.rows(0.05, 1_000).unwrap()[0];
        assert_eq!(row.metric, "latency_p99_us");
        assert_eq!(row.verdict, Verdict::Worse, "{row:?}");
        let tolerant = compare(12_000.0, 20_000.0);
        let row = &tolerant.rows(0.05, 1_000).unwrap()[0];
        assert_eq!(row.verdict, Verdict::NoDifference, "{row:?}");
        assert!(row.interval.unwrap().contains(55_262.0 - 46_052.0));
    }

    #[test]
    fn a_shift_beyond_the_tolerance_is_a_regression_and_the_reverse_an_improvement() {
        // Canary mean 20 ms: p99 = 92.1 ms, 46 ms above control's, tolerance 20 ms.
        let worse = compare(20_000.0, 20_000.0);
        let row = &worse.rows(0.05, 1_000).unwrap()[0];
        assert_eq!(row.verdict, Verdict::Worse, "{row:?}");
        assert!(row.interval.unwrap().lo.unwrap() >= 20_000.0);
        assert!(row.p_value.unwrap() <= 0.05);
        // Canary mean 4 ms: p99 = 18.4 ms, 27.6 ms faster.
        let better = compare(4_000.0, 20_000.0);
        assert_eq!(better.rows(0.05, 1_000).unwrap()[0].verdict, Verdict::Better);
        assert_eq!(better.rows(0.05, 10_000_000).unwrap()[0].verdict, Verdict::NotEnoughData);
    }

    #[test]
    fn cohort_quantiles_bracket_the_truth() {
        let comparison = compare(10_000.0, 0.0);
        let quantiles = comparison.control_quantiles(0.05).unwrap();
        let p99 = quantiles.iter().find(|q| q.quantile == 0.99).unwrap();
        // True p99 46 052 µs lies in the bucket (42 000, 50 000] of the shipped layout.
        assert_eq!(p99.interval, Interval { lo: Some(42_000.0), hi: Some(50_000.0) });
        let estimate = p99.estimate_us.unwrap();
        assert!((42_000.0..=50_000.0).contains(&estimate));
    }

    #[test]
    fn labels_and_bad_input() {
        assert_eq!(quantile_label(0.5), "50");
        assert_eq!(quantile_label(0.999), "99_9");
        let all = LatencyComparison::new(&LATENCY_BUCKETS_US, LatencySettings::with_tolerance_us(0.0)).unwrap();
        let names: Vec<String> = all.rows(0.05, 1).unwrap().into_iter().map(|r| r.metric).collect();
        assert_eq!(names, ["latency_p50_us", "latency_p90_us", "latency_p99_us", "latency_p99_9_us"]);
        let empty_rows = all.rows(0.05, 1).unwrap();
        assert!(empty_rows.iter().all(|r| r.verdict == Verdict::NotEnoughData && r.p_value.is_none()));
        let mut bad = LatencySettings::with_tolerance_us(0.0);
        bad.quantiles[0].quantile = 1.0;
        assert!(LatencyComparison::new(&LATENCY_BUCKETS_US, bad).is_err());
        let mut comparison = LatencyComparison::new(&[1, 2], LatencySettings::with_tolerance_us(0.0)).unwrap();
        let other = LatencyHistogram::empty(&[1, 3]).unwrap();
        assert!(matches!(comparison.observe(&other, &other), Err(StatsError::BoundsDiffer { .. })));
    }
}
