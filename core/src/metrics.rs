//! Metric names: built here and nowhere else, listed in `docs/metrics.md`.
//!
//! The filter defines stats named like
//! `canary.deployment.<id>.cohort.<cohort>.class.<class>.requests_total`;
//! Envoy prefixes them with `wasmcustom.`, and the `stats_tags` in
//! `envoy/envoy.yaml` ([`STATS_TAGS`]) lift the `deployment`, `cohort` and
//! `class` segments into labels, so `/stats/prometheus` shows
//! `canary_requests_total{deployment="..",cohort="..",class=".."}` and
//! `canary_latency_us_bucket{deployment="..",cohort="..",le=".."}`.

use crate::cohort::Cohort;

/// Prometheus name of the per-cohort request counter.
pub const REQUESTS: &str = "canary_requests_total";
/// Prometheus name of the per-cohort latency histogram, in microseconds.
pub const LATENCY: &str = "canary_latency_us";

/// Status class of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    /// No complete response: upstream reset / connection failure, or the client went away.
    Reset,
}

impl StatusClass {
    pub const ALL: [StatusClass; 6] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::Reset,
    ];

    pub fn label(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Reset => "reset",
        }
    }

    /// Classifies a response. `code` 0 means no response was sent; `reset_details`
    /// is Envoy's `response.code_details`, consulted only for 0 and 5xx codes, where a
    /// local reply may stand for a reset (e.g. `upstream_reset_before_response_started{..}`).
    pub fn classify(code: u32, reset_details: impl FnOnce() -> Option<String>) -> StatusClass {
        match code {
            0 => StatusClass::Reset,
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => match reset_details() {
                Some(d) if is_reset_detail(&d) => StatusClass::Reset,
                _ => StatusClass::ServerError,
            },
        }
    }

    /// Position in [`StatusClass::ALL`], for metric tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the class counts as a failure of the service.
    pub fn is_error(self) -> bool {
        matches!(self, StatusClass::ServerError | StatusClass::Reset)
    }
}

/// Longest `:status` value parsed: ten digits hold any u32, and Envoy sends three.
const MAX_STATUS_DIGITS: usize = 10;

/// A response's `:status` header value as a number; `None` unless 1-10 ASCII digits
/// that fit a u32. Bytes in, so the filter reads the header without a UTF-8 check.
pub fn status_code(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > MAX_STATUS_DIGITS {
        return None;
    }
    value.iter().try_fold(0u32, |code, &digit| {
        let digit = char::from(digit).to_digit(10)?;
        code.checked_mul(10)?.checked_add(digit)
    })
}

/// Envoy response-code details that mean the connection, not the application, failed.
fn is_reset_detail(details: &str) -> bool {
    details.starts_with("upstream_reset") || details.contains("connection_failure") || details.contains("disconnect")
}

/// Stat name (as the filter defines it) of a request counter.
pub fn requests_stat(deployment: &str, cohort: Cohort, class: StatusClass) -> String {
    format!("canary.deployment.{deployment}.cohort.{}.class.{}.requests_total", cohort.label(), class.label())
}

/// Stat name (as the filter defines it) of a latency histogram.
pub fn latency_stat(deployment: &str, cohort: Cohort) -> String {
    format!("canary.deployment.{deployment}.cohort.{}.latency_us", cohort.label())
}

/// Envoy `stats_config.stats_tags`: (tag name, regex). The first capture group is
/// removed from the name, the second becomes the label value. Envoy matches them
/// against the full name, which carries the `wasmcustom.` prefix.
pub const STATS_TAGS: [(&str, &str); 3] = [
    ("deployment", r"^wasmcustom\.canary\.(deployment\.([^.]+)\.)"),
    ("cohort", r"^wasmcustom\.canary\.deployment\.[^.]+\.(cohort\.([^.]+)\.)"),
    ("class", r"^wasmcustom\.canary\.deployment\.[^.]+\.cohort\.[^.]+\.(class\.([^.]+)\.)"),
];

/// Latency bucket upper bounds in microseconds for `histogram_bucket_settings`.
/// 1 ms steps up to 10 ms and 5 ms steps up to 60 ms put every p99 of a 5-50 ms
/// service within 5 ms of a bucket edge; the tail reaches 60 s for timeouts.
pub const LATENCY_BUCKETS_US: [u64; 36] = [
    250, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000, 10_000, 12_500, 15_000, 17_500, 20_000,
    25_000, 30_000, 35_000, 40_000, 45_000, 50_000, 55_000, 60_000, 70_000, 80_000, 100_000, 150_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_status_code() {
        let none = || None;
        assert_eq!(StatusClass::classify(0, none), StatusClass::Reset);
        assert_eq!(StatusClass::classify(101, none), StatusClass::Informational);
        assert_eq!(StatusClass::classify(204, none), StatusClass::Success);
        assert_eq!(StatusClass::classify(302, none), StatusClass::Redirection);
        assert_eq!(StatusClass::classify(429, none), StatusClass::ClientError);
        assert_eq!(StatusClass::classify(500, none), StatusClass::ServerError);
        assert_eq!(StatusClass::classify(999, none), StatusClass::ServerError);
        let reset = || Some("upstream_reset_before_response_started{remote_reset}".to_string());
        assert_eq!(StatusClass::classify(503, reset), StatusClass::Reset);
        let failure = || Some("upstream_reset_before_response_started{remote_connection_failure}".to_string());
        assert_eq!(StatusClass::classify(503, failure), StatusClass::Reset);
        let app = || Some("via_upstream".to_string());
        assert_eq!(StatusClass::classify(503, app), StatusClass::ServerError);
        assert!(StatusClass::Reset.is_error() && !StatusClass::ClientError.is_error());
    }

    #[test]
    fn status_codes_parse_from_bytes() {
        assert_eq!(status_code(b"200"), Some(200));
        assert_eq!(status_code(b"503"), Some(503));
        assert_eq!(status_code(b"4294967295"), Some(u32::MAX));
        assert_eq!(status_code(b"4294967296"), None, "overflow");
        assert_eq!(status_code(b""), None);
        assert_eq!(status_code(b"20x"), None);
        assert_eq!(status_code(b"+200"), None);
        assert_eq!(status_code(b" 200"), None);
    }

    #[test]
    fn names_carry_the_segments_the_tag_regexes_expect() {
        assert_eq!(
            requests_stat("checkout", Cohort::Canary, StatusClass::ServerError),
            "canary.deployment.checkout.cohort.canary.class.5xx.requests_total"
        );
        assert_eq!(latency_stat("checkout", Cohort::Forced), "canary.deployment.checkout.cohort.forced.latency_us");
    }

    #[test]
    fn buckets_ascend() {
        assert!(LATENCY_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }
}
