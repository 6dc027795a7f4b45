//! The one error type of the statistics core.
//!
//! Statistics are fed numbers that come from scraped counters, so bad input is
//! possible (a counter reset, a histogram with a different bucket layout, a share
//! outside [0, 1]); it is refused with a typed error that names what was wrong
//! instead of producing a silently wrong p-value.

use thiserror::Error;

/// Why a statistic refused its input or settings.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StatsError {
    /// A setting or input value lies outside the range it must have.
    #[error("{field} must be {expected}, got {value}")]
    OutOfRange { field: &'static str, value: f64, expected: &'static str },
    /// A cohort reported more errors than requests in one interval.
    #[error("{cohort} reported {errors} errors out of {requests} requests")]
    ErrorsExceedRequests { cohort: &'static str, errors: u64, requests: u64 },
    /// Histogram bucket upper bounds must strictly ascend.
    #[error("latency bucket upper bounds must strictly ascend (bound {index})")]
    BoundsNotAscending { index: usize },
    /// A histogram needs at least one finite bucket.
    #[error("a latency histogram needs at least one finite bucket bound")]
    NoBuckets,
    /// The number of bucket counts does not match the bucket layout.
    #[error("expected {expected} bucket counts, got {got}")]
    BucketCountMismatch { expected: usize, got: usize },
    /// Cumulative (`le`) bucket counts decreased, which a cumulative histogram cannot do.
    #[error("cumulative bucket counts decrease at bucket {index}")]
    CumulativeCountsDecrease { index: usize },
    /// Two histograms that must share a bucket layout do not; each layout is named
    /// by [`super::histogram::describe_layout`].
    #[error("latency histograms use different bucket bounds: {first} and {second}")]
    BoundsDiffer { first: String, second: String },
}

/// Checks that `value` is a probability strictly between 0 and 1.
pub(crate) fn check_open_unit(field: &'static str, value: f64) -> Result<f64, StatsError> {
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(StatsError::OutOfRange { field, value, expected: "strictly between 0 and 1" })
    }
}

/// Checks that `value` is finite and not negative.
pub(crate) fn check_non_negative(field: &'static str, value: f64) -> Result<f64, StatsError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(StatsError::OutOfRange { field, value, expected: "finite and >= 0" })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn range_checks_name_the_field() {
        assert_eq!(check_open_unit("alpha", 0.05), Ok(0.05));
        let error = check_open_unit("alpha", 1.0).unwrap_err();
        assert_eq!(error.to_string(), "alpha must be strictly between 0 and 1, got 1");
        assert!(check_open_unit("alpha", f64::NAN).is_err());
        assert!(check_non_negative("tolerance", f64::INFINITY).is_err());
        assert_eq!(check_non_negative("tolerance", 0.0), Ok(0.0));
    }
}
