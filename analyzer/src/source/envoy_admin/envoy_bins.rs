//! Envoy's own latency bins: the log-linear histogram (libcircllhist) every Envoy
//! histogram records into, before any `histogram_bucket_settings` are applied.
//!
//! A value `v` falls in the bin `[m·10^e, (m+1)·10^e)` where `m` has two significant
//! digits (10..=99): bins are 1 % to 10 % wide. Envoy records whole microseconds, so
//! below 100 µs every bin holds one value. `GET /stats?format=json&histogram_buckets=detailed`
//! lists the non-empty bins as `{lower_bound, width, count}`; this module turns a bin
//! into its bound on one fixed grid ([`envoy_bin_bounds_us`]), so every target, every
//! cohort and every interval of the admin source shares one histogram layout, and the
//! statistics can add intervals bin by bin.
//!
//! A bound is the bin's *exclusive* upper edge (`[1200, 1300)` → 1300): every value in
//! the bin is below it. The layout of `LATENCY_BUCKETS_US` uses the same edges, so the
//! two compare bound for bound.

use std::sync::LazyLock;

/// Values below this many µs each have their own bin (100 bins: 0, 1, ..., 99).
const SINGLE_MICROSECOND_BINS_BELOW: u64 = 100;
/// Decades of 90 bins each above 100 µs: 100 µs to 100 s. Slower requests (past any
/// timeout the project ships, 60 s) go to the overflow bucket.
const DECADES: u32 = 6;
/// Mantissas of one decade's upper edges: `[10, 11)` … `[99, 100)` end at 11 … 100.
const MANTISSA_UPPER_EDGES: std::ops::RangeInclusive<u64> = 11..=100;
/// Relative slack for float noise in Envoy's JSON (`110.00000000000001`): far below the
/// 1 % narrowest bin, far above f64 rounding.
const EDGE_SLACK: f64 = 1e-9;

static BOUNDS: LazyLock<Vec<u64>> = LazyLock::new(|| {
    let single = 1..=SINGLE_MICROSECOND_BINS_BELOW;
    let decades = (1..=DECADES).flat_map(|exponent| {
        let width = 10u64.pow(exponent);
        MANTISSA_UPPER_EDGES.map(move |mantissa| mantissa * width)
    });
    single.chain(decades).collect()
});

/// The grid of the admin source's histograms: the upper edge (µs, exclusive) of each of
/// Envoy's bins from 0 to 100 s: 1, 2, ..., 100, 110, ..., 1 000, 1 100, ..., 100 000 000
/// (640 bounds; the overflow bucket holds the rest).
pub fn envoy_bin_bounds_us() -> &'static [u64] {
    &BOUNDS
}

/// Where a bin of Envoy's goes on the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinPlace {
    /// The grid bound (µs) whose bucket holds the bin.
    Bound(u64),
    /// Above the grid (100 s or more): the overflow bucket.
    Overflow,
}

/// The grid place of Envoy's bin `[lower_bound, lower_bound + width)` (µs), or `None`
/// when the pair is not one of Envoy's bins: negative, not finite, or straddling a grid bound.
pub fn bin_place(lower_bound: f64, width: f64) -> Option<BinPlace> {
    if !(lower_bound.is_finite() && width.is_finite() && lower_bound >= 0.0 && width >= 0.0) {
        return None;
    }
    let bounds = envoy_bin_bounds_us();
    let top = bounds.last().copied().unwrap_or(0) as f64;
    if lower_bound >= top * (1.0 - EDGE_SLACK) {
        return Some(BinPlace::Overflow);
    }
    let upper = lower_bound + width;
    // The first grid bound at or above the bin's upper edge (the zero bin's is 0: bound 1).
    let index = bounds.partition_point(|bound| (*bound as f64) < upper * (1.0 - EDGE_SLACK));
    let bound = *bounds.get(index)?;
    // The bin must lie inside that bound's bucket: at or above the previous bound.
    let previous = index.checked_sub(1).and_then(|i| bounds.get(i)).map_or(0.0, |b| *b as f64);
    (lower_bound >= previous * (1.0 - EDGE_SLACK) - EDGE_SLACK).then_some(BinPlace::Bound(bound))
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_core::metrics::LATENCY_BUCKETS_US;

    #[test]
    fn the_grid_has_one_bound_per_bin_from_0_to_100_s() {
        let bounds = envoy_bin_bounds_us();
        assert_eq!(bounds.len(), 640);
        assert_eq!(&bounds[..3], &[1, 2, 3]);
        assert_eq!(&bounds[98..102], &[99, 100, 110, 120]);
        assert_eq!(bounds.last(), Some(&100_000_000));
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        // No bin above 100 µs is wider than 10 % of its lower edge.
        assert!(bounds.windows(2).filter(|w| w[0] >= 100).all(|w| (w[1] - w[0]) * 10 <= w[0]));
        // The Prometheus layout is made of the same edges.
        assert!(LATENCY_BUCKETS_US.iter().all(|b| bounds.binary_search(b).is_ok()));
    }

    #[test]
    fn bins_as_envoy_writes_them_land_on_their_upper_edge() {
        // From Envoy 1.40's JSON (float noise included).
        assert_eq!(bin_place(83.0, 1.0), Some(BinPlace::Bound(84)));
        assert_eq!(bin_place(110.000_000_000_000_01, 10.0), Some(BinPlace::Bound(120)));
        assert_eq!(bin_place(409.999_999_999_999_94, 10.0), Some(BinPlace::Bound(420)));
        assert_eq!(bin_place(2_700.0, 100.0), Some(BinPlace::Bound(2_800)));
        assert_eq!(bin_place(250_000.0, 10_000.0), Some(BinPlace::Bound(260_000)));
        assert_eq!(bin_place(1_500_000.0, 100_000.0), Some(BinPlace::Bound(1_600_000)));
        // Below 10 µs Envoy's bins are 0.1 wide; whole microseconds fill only the first.
        assert_eq!(bin_place(5.0, 0.1), Some(BinPlace::Bound(6)));
        // The zero bin.
        assert_eq!(bin_place(0.0, 0.0), Some(BinPlace::Bound(1)));
        // 100 s and slower.
        assert_eq!(bin_place(100_000_000.0, 10_000_000.0), Some(BinPlace::Overflow));
        assert_eq!(bin_place(250_000_000.0, 10_000_000.0), Some(BinPlace::Overflow));
    }

    #[test]
    fn anything_else_is_not_an_envoy_bin() {
        assert_eq!(bin_place(-1.0, 1.0), None);
        assert_eq!(bin_place(f64::NAN, 1.0), None);
        assert_eq!(bin_place(100.0, f64::INFINITY), None);
        // Straddles 1 100: a bucket layout, not a bin.
        assert_eq!(bin_place(1_000.0, 250.0), None);
        assert_eq!(bin_place(12_500.0, 1_000.0), None);
    }
}
