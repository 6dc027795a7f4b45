//! Latency histograms as the statistics see them: per-bucket counts over fixed
//! upper bounds (µs) plus an overflow bucket.
//!
//! Envoy exports cumulative `le` buckets; the analyzer turns scraped counters
//! into per-interval deltas and converts them here with
//! [`LatencyHistogram::from_cumulative`]. Internally every bucket holds its own
//! count (not cumulative), so intervals add bucket by bucket. Bucket `i` holds
//! observations in `(bound[i-1], bound[i]]` (`(0, bound[0]]` for the first) and
//! the last, overflow bucket holds everything above the largest bound (`+Inf`).

use serde::{Deserialize, Serialize};

use super::error::StatsError;

/// Per-bucket latency counts over strictly ascending upper bounds in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    upper_bounds_us: Vec<u64>,
    /// One count per bound plus the overflow bucket: `len = upper_bounds_us.len() + 1`.
    bucket_counts: Vec<u64>,
}

impl LatencyHistogram {
    /// An empty histogram over `upper_bounds_us`.
    pub fn empty(upper_bounds_us: &[u64]) -> Result<Self, StatsError> {
        check_bounds(upper_bounds_us)?;
        Ok(LatencyHistogram {
            upper_bounds_us: upper_bounds_us.to_vec(),
            bucket_counts: vec![0; upper_bounds_us.len() + 1],
        })
    }

    /// From per-bucket counts: one per bound, then the overflow count.
    pub fn from_bucket_counts(upper_bounds_us: &[u64], bucket_counts: &[u64]) -> Result<Self, StatsError> {
        check_bounds(upper_bounds_us)?;
        if bucket_counts.len() != upper_bounds_us.len() + 1 {
            return Err(StatsError::BucketCountMismatch {
                expected: upper_bounds_us.len() + 1,
                got: bucket_counts.len(),
            });
        }
        Ok(LatencyHistogram { upper_bounds_us: upper_bounds_us.to_vec(), bucket_counts: bucket_counts.to_vec() })
    }

    /// From Prometheus/Envoy form: cumulative counts `le` each bound, and the
    /// total (`_count`, the `le="+Inf"` bucket).
    pub fn from_cumulative(upper_bounds_us: &[u64], cumulative: &[u64], total: u64) -> Result<Self, StatsError> {
        check_bounds(upper_bounds_us)?;
        if cumulative.len() != upper_bounds_us.len() {
            return Err(StatsError::BucketCountMismatch { expected: upper_bounds_us.len(), got: cumulative.len() });
        }
        let mut bucket_counts = Vec::with_capacity(cumulative.len() + 1);
        let mut previous = 0;
        for (index, &running) in cumulative.iter().chain(std::iter::once(&total)).enumerate() {
            let count = running.checked_sub(previous).ok_or(StatsError::CumulativeCountsDecrease { index })?;
            bucket_counts.push(count);
            previous = running;
        }
        Ok(LatencyHistogram { upper_bounds_us: upper_bounds_us.to_vec(), bucket_counts })
    }

    /// Adds another histogram with the same bounds (e.g. the next interval).
    pub fn add(&mut self, other: &LatencyHistogram) -> Result<(), StatsError> {
        check_same_layout(&self.upper_bounds_us, &other.upper_bounds_us)?;
        for (mine, theirs) in self.bucket_counts.iter_mut().zip(&other.bucket_counts) {
            *mine = mine.saturating_add(*theirs);
        }
        Ok(())
    }

    pub fn upper_bounds_us(&self) -> &[u64] {
        &self.upper_bounds_us
    }

    pub fn bucket_counts(&self) -> &[u64] {
        &self.bucket_counts
    }

    /// Number of observations.
    pub fn total(&self) -> u64 {
        self.bucket_counts.iter().fold(0u64, |sum, count| sum.saturating_add(*count))
    }

    /// Observations at or below each finite bound (the `le` counts).
    pub fn cumulative_at_bounds(&self) -> Vec<u64> {
        self.bucket_counts
            .iter()
            .take(self.upper_bounds_us.len())
            .scan(0u64, |running, count| {
                *running = running.saturating_add(*count);
                Some(*running)
            })
            .collect()
    }

    /// Point estimate of the `quantile`, interpolating linearly inside the bucket
    /// that holds it (as Prometheus' `histogram_quantile` does). `None` without
    /// data or for a quantile outside (0, 1). A quantile in the overflow bucket is
    /// reported as the largest finite bound: all we know is that it is above it.
    pub fn quantile_estimate_us(&self, quantile: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 || !(quantile > 0.0 && quantile < 1.0) {
            return None;
        }
        let rank = quantile * total as f64;
        let mut below = 0.0;
        let mut lower_edge = 0.0;
        for (bound, count) in self.upper_bounds_us.iter().zip(&self.bucket_counts) {
            let upper_edge = *bound as f64;
            let count = *count as f64;
            if below + count >= rank && count > 0.0 {
                return Some(lower_edge + (upper_edge - lower_edge) * (rank - below) / count);
            }
            below += count;
            lower_edge = upper_edge;
        }
        self.upper_bounds_us.last().map(|bound| *bound as f64)
    }
}

/// A bucket layout in a few words for a status line or a log: how many bounds, the
/// first and the last, e.g. `19 bounds 0…3600000 µs`.
pub fn describe_layout(upper_bounds_us: &[u64]) -> String {
    match (upper_bounds_us.first(), upper_bounds_us.last()) {
        (Some(first), Some(last)) => format!("{} bounds {first}…{last} µs", upper_bounds_us.len()),
        _ => "no bounds".to_string(),
    }
}

/// [`StatsError::BoundsDiffer`], naming both layouts, unless `first` and `second` are one layout.
pub fn check_same_layout(first: &[u64], second: &[u64]) -> Result<(), StatsError> {
    if first == second {
        return Ok(());
    }
    let (mut first_name, mut second_name) = (describe_layout(first), describe_layout(second));
    if first_name == second_name {
        // Same count and ends: name the first bound where they part.
        if let Some((a, b)) = first.iter().zip(second).find(|(a, b)| a != b) {
            first_name.push_str(&format!(" (with {a})"));
            second_name.push_str(&format!(" (with {b})"));
        }
    }
    Err(StatsError::BoundsDiffer { first: first_name, second: second_name })
}

fn check_bounds(upper_bounds_us: &[u64]) -> Result<(), StatsError> {
    if upper_bounds_us.is_empty() {
        return Err(StatsError::NoBuckets);
    }
    match upper_bounds_us.windows(2).position(|pair| matches!(pair, [a, b] if a >= b)) {
        Some(index) => Err(StatsError::BoundsNotAscending { index: index + 1 }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    const BOUNDS: [u64; 3] = [1_000, 2_000, 5_000];

    #[test]
    fn cumulative_buckets_become_per_bucket_counts_and_back() {
        let histogram = LatencyHistogram::from_cumulative(&BOUNDS, &[10, 30, 90], 100).unwrap();
        assert_eq!(histogram.bucket_counts(), &[10, 20, 60, 10]);
        assert_eq!(histogram.total(), 100);
        assert_eq!(histogram.cumulative_at_bounds(), vec![10, 30, 90]);
        assert_eq!(
            LatencyHistogram::from_cumulative(&BOUNDS, &[10, 5, 90], 100),
            Err(StatsError::CumulativeCountsDecrease { index: 1 })
        );
        assert_eq!(
            LatencyHistogram::from_cumulative(&BOUNDS, &[10, 30, 90], 80),
            Err(StatsError::CumulativeCountsDecrease { index: 3 })
        );
        assert!(LatencyHistogram::empty(&[5, 5]).is_err());
        assert!(LatencyHistogram::empty(&[]).is_err());
        assert!(LatencyHistogram::from_bucket_counts(&BOUNDS, &[1, 2, 3]).is_err());
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let histogram = LatencyHistogram::from_bucket_counts(&BOUNDS, &[10, 20, 60, 10]).unwrap();
        // By hand: rank 50 lies 20 into the 60 observations of (2000, 5000]: 2000 + 3000·20/60.
        assert_eq!(histogram.quantile_estimate_us(0.5), Some(3_000.0));
        // Rank 5 of the first bucket (0, 1000]: 500.
        assert_eq!(histogram.quantile_estimate_us(0.05), Some(500.0));
        // Rank 95 falls in the overflow bucket: reported as the last bound.
        assert_eq!(histogram.quantile_estimate_us(0.95), Some(5_000.0));
        assert_eq!(LatencyHistogram::empty(&BOUNDS).unwrap().quantile_estimate_us(0.5), None);
    }

    #[test]
    fn intervals_add_up() {
        let mut total = LatencyHistogram::empty(&BOUNDS).unwrap();
        total.add(&LatencyHistogram::from_bucket_counts(&BOUNDS, &[1, 2, 3, 4]).unwrap()).unwrap();
        total.add(&LatencyHistogram::from_bucket_counts(&BOUNDS, &[1, 0, 0, 1]).unwrap()).unwrap();
        assert_eq!(total.bucket_counts(), &[2, 2, 3, 5]);
        let error = total.add(&LatencyHistogram::empty(&[1, 2]).unwrap()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "latency histograms use different bucket bounds: 3 bounds 1000…5000 µs and 2 bounds 1…2 µs"
        );
    }

    #[test]
    fn layouts_that_differ_are_named_where_they_part() {
        let error = check_same_layout(&[1, 2, 5], &[1, 3, 5]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "latency histograms use different bucket bounds: 3 bounds 1…5 µs (with 2) and 3 bounds 1…5 µs (with 3)"
        );
        assert_eq!(check_same_layout(&BOUNDS, &BOUNDS), Ok(()));
    }
}
