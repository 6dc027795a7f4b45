//! A target's cumulative latency histogram in either of the two layouts Envoy
//! exports, the delta between two scrapes, and the [`LatencyHistogram`] the
//! statistics consume (upper bounds in µs and a count per bucket, plus overflow).
//!
//! - [`BucketLayout::Configured`]: Prometheus `le` buckets over the bounds of
//!   `histogram_bucket_settings` (`/stats/prometheus`, or Prometheus itself). Every
//!   bound is exported, empty or not, so another set of bounds is another layout.
//! - [`BucketLayout::EnvoyBins`]: Envoy's own log-linear bins (`histogram_buckets=detailed`,
//!   see `envoy_bins`). A bin is listed once it holds an observation, so bins appear
//!   as they fill: a bound missing from a scrape is an empty bin, deltas take the
//!   union of the two scrapes' bins, and a bin whose count went down means a restart.
//!   The histogram is laid on the fixed grid of every Envoy bin, so all targets and
//!   intervals share one layout.

use serde::{Deserialize, Serialize};

use crate::stats::{LatencyHistogram, StatsError, describe_layout};

use super::envoy_admin::envoy_bin_bounds_us;

/// Which histogram a [`CumulativeLatency`] holds; it decides what a missing bound means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketLayout {
    /// `le` buckets over configured bounds: all of them are always listed.
    #[default]
    Configured,
    /// Envoy's log-linear bins: only non-empty bins are listed, at their grid bound.
    EnvoyBins,
}

/// A latency histogram in cumulative form: counts at or below each finite bound (µs),
/// the total (`_count`, the `+Inf` bucket) and the sum (µs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CumulativeLatency {
    #[serde(default)]
    pub layout: BucketLayout,
    /// Finite upper bounds in microseconds, strictly ascending. For Envoy's bins, the
    /// grid bounds of the non-empty bins below 100 s.
    pub upper_bounds_us: Vec<u64>,
    /// Observations at or below the bound of the same position.
    pub le_counts: Vec<u64>,
    /// All observations (`le="+Inf"`); for Envoy's bins, those past the last bound are
    /// the bins of 100 s and slower.
    pub count: u64,
    /// Sum of all observations in microseconds (Envoy reports a fraction); 0 when the
    /// source does not report it (Envoy's detailed bins).
    pub sum_us: f64,
}

impl CumulativeLatency {
    /// Envoy's bins from `(grid bound, count)` pairs in any order (a bound listed twice
    /// adds up) and the observations past the grid.
    pub fn from_envoy_bins(mut bins: Vec<(u64, u64)>, overflow: u64) -> CumulativeLatency {
        bins.sort_unstable_by_key(|(bound, _)| *bound);
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(bins.len());
        for (bound, count) in bins {
            match merged.last_mut() {
                Some((last, total)) if *last == bound => *total = total.saturating_add(count),
                _ => merged.push((bound, count)),
            }
        }
        let mut running = 0u64;
        let mut latency = CumulativeLatency { layout: BucketLayout::EnvoyBins, ..CumulativeLatency::default() };
        for (bound, count) in merged.into_iter().filter(|(_, count)| *count > 0) {
            running = running.saturating_add(count);
            latency.upper_bounds_us.push(bound);
            latency.le_counts.push(running);
        }
        latency.count = running.saturating_add(overflow);
        latency
    }

    /// Per-bin `(bound, count)` of the listed bounds (not cumulative).
    fn bins(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let previous = std::iter::once(0).chain(self.le_counts.iter().copied());
        self.upper_bounds_us
            .iter()
            .zip(self.le_counts.iter().zip(previous))
            .map(|(bound, (running, before))| (*bound, running.saturating_sub(before)))
    }

    /// Observations past the last listed bound.
    fn overflow(&self) -> u64 {
        self.count.saturating_sub(self.le_counts.last().copied().unwrap_or(0))
    }

    /// Whether the histogram did not just grow since `earlier`: the layout or (for
    /// configured buckets) the bounds changed, the total went down, or a bucket or bin
    /// count went down. A bin of Envoy's that vanished went down to 0.
    pub fn restarted_since(&self, earlier: &CumulativeLatency) -> bool {
        if self.layout != earlier.layout || self.count < earlier.count {
            return true;
        }
        match self.layout {
            BucketLayout::Configured => {
                self.upper_bounds_us != earlier.upper_bounds_us
                    || self.le_counts.iter().zip(&earlier.le_counts).any(|(now, before)| now < before)
            }
            BucketLayout::EnvoyBins => {
                self.overflow() < earlier.overflow()
                    || union(self, earlier).into_iter().any(|(_, now, before)| now < before)
            }
        }
    }

    /// `self − earlier`, bucket by bucket (see [`Self::restarted_since`] for when that is
    /// meaningful; counts saturate at 0). Envoy's bins: over the union of both scrapes' bins.
    pub fn minus(&self, earlier: &CumulativeLatency) -> CumulativeLatency {
        match self.layout {
            BucketLayout::Configured => CumulativeLatency {
                layout: BucketLayout::Configured,
                upper_bounds_us: self.upper_bounds_us.clone(),
                le_counts: self
                    .le_counts
                    .iter()
                    .zip(&earlier.le_counts)
                    .map(|(now, before)| now.saturating_sub(*before))
                    .collect(),
                count: self.count.saturating_sub(earlier.count),
                sum_us: (self.sum_us - earlier.sum_us).max(0.0),
            },
            BucketLayout::EnvoyBins => {
                let bins = union(self, earlier)
                    .into_iter()
                    .map(|(bound, now, before)| (bound, now.saturating_sub(before)))
                    .collect();
                CumulativeLatency {
                    sum_us: (self.sum_us - earlier.sum_us).max(0.0),
                    ..CumulativeLatency::from_envoy_bins(bins, self.overflow().saturating_sub(earlier.overflow()))
                }
            }
        }
    }

    /// The statistics' form: configured buckets keep their bounds; Envoy's bins go on
    /// the grid of every Envoy bin ([`envoy_bin_bounds_us`]), the same for every target.
    pub fn to_histogram(&self) -> Result<LatencyHistogram, StatsError> {
        match self.layout {
            BucketLayout::Configured => {
                LatencyHistogram::from_cumulative(&self.upper_bounds_us, &self.le_counts, self.count)
            }
            BucketLayout::EnvoyBins => {
                let grid = envoy_bin_bounds_us();
                let mut counts = vec![0u64; grid.len() + 1];
                let mut place = |index: usize, count: u64| {
                    if let Some(slot) = counts.get_mut(index) {
                        *slot = slot.saturating_add(count);
                    }
                };
                for (bound, count) in self.bins() {
                    // A bound off the grid (never from the parser) goes to the next grid
                    // bound up: latency is rounded up, never down.
                    place(grid.partition_point(|edge| *edge < bound), count);
                }
                place(grid.len(), self.overflow());
                LatencyHistogram::from_bucket_counts(grid, &counts)
            }
        }
    }
}

/// The unit a histogram's `le` bounds are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LatencyUnit {
    Microseconds,
    Milliseconds,
    Seconds,
}

/// How close to a whole microsecond a converted bound must be to be that microsecond:
/// decimal bounds such as 0.005 s are not exact in binary (0.005 × 10⁶ is
/// 5000.000000000001), and a relative error of 10⁻⁹ is far above that rounding and far
/// below any real difference between two bounds.
const EXACT_RELATIVE_TOLERANCE: f64 = 1e-9;

impl LatencyUnit {
    pub const ALL: [LatencyUnit; 3] = [LatencyUnit::Microseconds, LatencyUnit::Milliseconds, LatencyUnit::Seconds];

    /// How a policy writes the unit.
    pub fn label(self) -> &'static str {
        match self {
            LatencyUnit::Microseconds => "us",
            LatencyUnit::Milliseconds => "ms",
            LatencyUnit::Seconds => "s",
        }
    }

    /// The unit's name in errors.
    pub fn name(self) -> &'static str {
        match self {
            LatencyUnit::Microseconds => "microseconds",
            LatencyUnit::Milliseconds => "milliseconds",
            LatencyUnit::Seconds => "seconds",
        }
    }

    pub fn parse(text: &str) -> Option<LatencyUnit> {
        LatencyUnit::ALL.into_iter().find(|unit| unit.label() == text)
    }

    fn microseconds_per_unit(self) -> f64 {
        match self {
            LatencyUnit::Microseconds => 1.0,
            LatencyUnit::Milliseconds => 1_000.0,
            LatencyUnit::Seconds => 1_000_000.0,
        }
    }

    /// A finite `le` bound in this unit as whole microseconds: exact when the bound is a
    /// whole number of microseconds (0.005 s is 5000 µs, 0.5 ms is 500 µs); otherwise
    /// the whole microsecond below it (a bound of 2.5 µs reads as 2 µs: observations
    /// between the two are counted one microsecond early, and two bounds inside one
    /// microsecond merge). The filter records whole microseconds, so for its own
    /// histogram the observations at or below a fractional bound `b` are exactly those
    /// at or below `floor(b)`: Envoy's default buckets start at `le="0.5"`, which is
    /// `le="0"` in µs. `None` for a negative or non-finite bound.
    pub fn whole_microseconds(self, bound: f64) -> Option<u64> {
        if !bound.is_finite() || bound < 0.0 {
            return None;
        }
        let microseconds = bound * self.microseconds_per_unit();
        let nearest = microseconds.round();
        // `as` saturates at u64::MAX for bounds past it, which no latency reaches.
        if (microseconds - nearest).abs() <= EXACT_RELATIVE_TOLERANCE * nearest.max(1.0) {
            Some(nearest as u64)
        } else {
            Some(microseconds.floor() as u64)
        }
    }
}

/// `histogram` summed onto coarser `bounds`, each of which must be one of its own bounds
/// (e.g. Envoy's grid onto `LATENCY_BUCKETS_US`, whose bounds are bin edges): exact, no
/// interpolation. Anything else is [`StatsError::BoundsDiffer`].
pub fn fold_onto(histogram: &LatencyHistogram, bounds: &[u64]) -> Result<LatencyHistogram, StatsError> {
    let fine = histogram.upper_bounds_us();
    if bounds.iter().any(|bound| fine.binary_search(bound).is_err()) {
        return Err(StatsError::BoundsDiffer { first: describe_layout(fine), second: describe_layout(bounds) });
    }
    let mut counts = vec![0u64; bounds.len() + 1];
    // Each fine bucket lies inside the first coarse bucket whose bound is at or above its
    // own (no coarse bound falls between two fine ones); the fine overflow stays overflow.
    let fine_bounds = fine.iter().map(Some).chain(std::iter::once(None));
    for (bound, count) in fine_bounds.zip(histogram.bucket_counts()) {
        let index = bound.map_or(bounds.len(), |bound| bounds.partition_point(|coarse| coarse < bound));
        if let Some(slot) = counts.get_mut(index) {
            *slot = slot.saturating_add(*count);
        }
    }
    LatencyHistogram::from_bucket_counts(bounds, &counts)
}

/// `(bound, count now, count before)` over the union of two bin lists, ascending.
fn union(now: &CumulativeLatency, before: &CumulativeLatency) -> Vec<(u64, u64, u64)> {
    let mut merged = Vec::with_capacity(now.upper_bounds_us.len().max(before.upper_bounds_us.len()));
    let (mut now_bins, mut before_bins) = (now.bins().peekable(), before.bins().peekable());
    loop {
        let entry = match (now_bins.peek().copied(), before_bins.peek().copied()) {
            (None, None) => break,
            (Some((bound, count)), None) => {
                now_bins.next();
                (bound, count, 0)
            }
            (None, Some((bound, count))) => {
                before_bins.next();
                (bound, 0, count)
            }
            (Some((a, now_count)), Some((b, before_count))) => {
                if a < b {
                    now_bins.next();
                    (a, now_count, 0)
                } else if b < a {
                    before_bins.next();
                    (b, 0, before_count)
                } else {
                    now_bins.next();
                    before_bins.next();
                    (a, now_count, before_count)
                }
            }
        };
        merged.push(entry);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bins(pairs: &[(u64, u64)], overflow: u64) -> CumulativeLatency {
        CumulativeLatency::from_envoy_bins(pairs.to_vec(), overflow)
    }

    #[test]
    fn envoy_bins_are_stored_cumulative_and_merged() {
        let latency = bins(&[(1_300, 2), (84, 5), (1_300, 1), (2_000, 0)], 4);
        assert_eq!(latency.layout, BucketLayout::EnvoyBins);
        assert_eq!(latency.upper_bounds_us, vec![84, 1_300], "empty bins are not listed");
        assert_eq!(latency.le_counts, vec![5, 8]);
        assert_eq!((latency.count, latency.overflow()), (12, 4));
        assert_eq!(latency.bins().collect::<Vec<_>>(), vec![(84, 5), (1_300, 3)]);
    }

    #[test]
    fn a_delta_of_envoy_bins_takes_the_union_of_both_scrapes_bins() {
        let before = bins(&[(84, 5), (1_300, 3)], 0);
        // A new bin (2 000) filled, 1 300 grew, 84 did not.
        let now = bins(&[(84, 5), (1_300, 10), (2_000, 4)], 1);
        assert!(!now.restarted_since(&before));
        let delta = now.minus(&before);
        assert_eq!(delta, bins(&[(1_300, 7), (2_000, 4)], 1));
        assert_eq!(delta.count, 12);
    }

    #[test]
    fn a_bin_going_down_or_vanishing_is_a_restart() {
        let before = bins(&[(84, 5), (1_300, 3)], 0);
        // 84 went down while the total grew past the old one.
        assert!(bins(&[(84, 4), (1_300, 30)], 0).restarted_since(&before));
        // 84 vanished: its count went to 0.
        assert!(bins(&[(1_300, 30)], 0).restarted_since(&before));
        assert!(bins(&[(84, 5), (1_300, 3)], 0).restarted_since(&bins(&[(84, 5), (1_300, 3)], 2)));
        // Another layout is a restart too.
        let configured =
            CumulativeLatency { upper_bounds_us: vec![1_000], le_counts: vec![8], count: 8, ..Default::default() };
        assert!(configured.restarted_since(&before) && before.restarted_since(&configured));
    }

    #[test]
    fn envoy_bins_land_on_the_grid_and_configured_buckets_keep_their_bounds() {
        let histogram = bins(&[(84, 5), (1_300, 3)], 2).to_histogram().unwrap();
        let grid = envoy_bin_bounds_us();
        assert_eq!(histogram.upper_bounds_us(), grid);
        assert_eq!(histogram.total(), 10);
        let at = |bound: u64| histogram.bucket_counts()[grid.iter().position(|b| *b == bound).unwrap()];
        assert_eq!((at(84), at(1_300), histogram.bucket_counts()[grid.len()]), (5, 3, 2));
        // Every target's histogram has the one layout, so they add up.
        let mut sum = histogram.clone();
        sum.add(&bins(&[(2_000, 1)], 0).to_histogram().unwrap()).unwrap();
        assert_eq!(sum.total(), 11);

        let configured = CumulativeLatency {
            upper_bounds_us: vec![1_000, 2_000],
            le_counts: vec![3, 5],
            count: 6,
            ..Default::default()
        };
        let histogram = configured.to_histogram().unwrap();
        assert_eq!((histogram.upper_bounds_us(), histogram.bucket_counts()), (&[1_000, 2_000][..], &[3, 2, 1][..]));
    }

    #[test]
    fn bounds_convert_exactly_to_microseconds_where_they_can() {
        let seconds = LatencyUnit::Seconds;
        assert_eq!(seconds.whole_microseconds(0.005), Some(5_000));
        assert_eq!(seconds.whole_microseconds(0.1), Some(100_000));
        assert_eq!(seconds.whole_microseconds(2.5), Some(2_500_000));
        assert_eq!(seconds.whole_microseconds(1e-6), Some(1));
        // Half a microsecond is not a whole one: the microsecond below it.
        assert_eq!(seconds.whole_microseconds(0.0000025), Some(2));
        let milliseconds = LatencyUnit::Milliseconds;
        assert_eq!(milliseconds.whole_microseconds(0.5), Some(500));
        assert_eq!(milliseconds.whole_microseconds(3_600_000.0), Some(3_600_000_000));
        assert_eq!(milliseconds.whole_microseconds(0.0015), Some(1));
        assert_eq!(LatencyUnit::Microseconds.whole_microseconds(2.9), Some(2));
        assert_eq!(milliseconds.whole_microseconds(-1.0), None);
        assert_eq!(seconds.whole_microseconds(f64::NAN), None);
        // Every bound of Istio's default millisecond buckets and Envoy's default ones.
        for bound in [0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0] {
            assert_eq!(milliseconds.whole_microseconds(bound), Some((bound * 1_000.0) as u64));
        }
        for bound in [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0] {
            let expected = (bound * 1_000_000.0f64).round() as u64;
            assert_eq!(seconds.whole_microseconds(bound), Some(expected), "{bound} s");
        }
    }

    #[test]
    fn units_read_back_from_their_labels() {
        for unit in LatencyUnit::ALL {
            assert_eq!(LatencyUnit::parse(unit.label()), Some(unit));
        }
        assert_eq!(LatencyUnit::parse("minutes"), None);
    }

    #[test]
    fn envoys_bins_fold_exactly_onto_buckets_made_of_their_edges() {
        use canary_core::metrics::LATENCY_BUCKETS_US;
        // 84 µs, 1.25 ms (bin [1 200, 1 300)), 1.95 ms, 70 ms and one of 200 s.
        let fine = bins(&[(84, 5), (1_300, 3), (2_000, 2), (71_000, 1)], 1).to_histogram().unwrap();
        let folded = fold_onto(&fine, &LATENCY_BUCKETS_US).unwrap();
        let at = |bound: u64| folded.bucket_counts()[LATENCY_BUCKETS_US.iter().position(|b| *b == bound).unwrap()];
        assert_eq!((at(250), at(1_300), at(2_000), at(72_000)), (5, 3, 2, 1));
        assert_eq!((folded.total(), folded.bucket_counts()[LATENCY_BUCKETS_US.len()]), (12, 1));
        // 12 500 µs lies inside Envoy's bin [12 000, 13 000): no exact fold.
        assert!(matches!(fold_onto(&fine, &[10_000, 12_500]), Err(StatsError::BoundsDiffer { .. })));
    }
}
