//! Metric names: built here and nowhere else, listed in `docs/metrics.md`.
//!
//! The filter defines stats named like
//! `canary.deployment.<id>.cohort.<cohort>.class.<class>.requests_total`;
//! Envoy prefixes them with `wasmcustom.`, and the `stats_tags` in
//! `envoy/envoy.yaml` ([`STATS_TAGS`]) lift the `deployment`, `cohort` and
//! `class` segments into labels, so `/stats/prometheus` shows
//! `canary_requests_total{deployment="..",cohort="..",class=".."}` and
//! `canary_latency_us_bucket{deployment="..",cohort="..",le=".."}`.
//!
//! Three gauges per deployment say what an Envoy applies ([`Applied`]): the same
//! `deployment` tag turns `canary.deployment.<id>.applied_generation` into
//! `canary_applied_generation{deployment=".."}`, and likewise
//! `canary_applied_share_bp` and `canary_config_age_ms`.
//!
//! Each outcome rule ([`crate::outcome`]) adds two counters per cohort,
//! `canary.deployment.<id>.cohort.<cohort>.outcome.<name>.outcome_requests_total`
//! (the requests it applies to) and `...outcome_events_total` (those that matched);
//! the `outcome` tag lifts `<name>`, giving [`OUTCOME_REQUESTS`] and [`OUTCOME_EVENTS`]
//! with labels `deployment`, `cohort` and `outcome`.

use crate::cohort::{Cohort, Share};
use crate::config::AnalyzerConfig;
use crate::poll::{Applying, effective_share};

/// Prometheus name of the per-cohort request counter.
pub const REQUESTS: &str = "canary_requests_total";
/// Prometheus name of the per-cohort, per-outcome denominator: requests the rule applies to.
pub const OUTCOME_REQUESTS: &str = "canary_outcome_requests_total";
/// Prometheus name of the per-cohort, per-outcome numerator: those among them that matched.
pub const OUTCOME_EVENTS: &str = "canary_outcome_events_total";
/// Prometheus name of the per-cohort latency histogram, in microseconds.
pub const LATENCY: &str = "canary_latency_us";
/// Prometheus name of the gauge: generation of the rollout config the Envoy applies.
pub const APPLIED_GENERATION: &str = "canary_applied_generation";
/// Prometheus name of the gauge: the canary share the Envoy routes with, in basis points.
pub const APPLIED_SHARE_BP: &str = "canary_applied_share_bp";
/// Prometheus name of the gauge: milliseconds since the analyzer last confirmed that config.
pub const CONFIG_AGE_MS: &str = "canary_config_age_ms";

/// `applied_generation` before the first accepted answer. The analyzer's generations
/// start at 1 (`RolloutState::start` takes the previous generation + 1, at least the
/// start time in ms), so 0 never names a real config.
pub const NO_GENERATION: u64 = 0;
/// `config_age_ms` when there is no age to tell: no answer was ever accepted, or the
/// last confirmation lies ahead of the wall clock (it stepped back). The largest u64,
/// so "older than the staleness limit" holds for it as it does for the filter, which
/// treats a config of unknown age as stale; Prometheus shows it as 1.8446744073709552e+19.
pub const UNKNOWN_AGE_MS: u64 = u64::MAX;

/// What one VM applies at one moment: the values of its three gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The published rollout's generation, [`NO_GENERATION`] before the first answer.
    pub generation: u64,
    /// The share the VM routes with (see [`effective_share`]).
    pub share: Share,
    /// Age of the last confirmation, [`UNKNOWN_AGE_MS`] when there is none or it is unknown.
    pub config_age_ms: u64,
}

impl Applied {
    /// Derives the gauges from the record a VM has read, as its tick does.
    pub fn derive(
        applying: Option<Applying>,
        analyzer: Option<&AnalyzerConfig>,
        initial: Share,
        now_ms: u64,
    ) -> Applied {
        let share = effective_share(applying, analyzer, initial, now_ms);
        let generation = applying.map_or(NO_GENERATION, |p| p.rollout.generation);
        let config_age_ms = match (applying, analyzer) {
            (Some(p), Some(a)) => p.record.age_ms(a, now_ms).unwrap_or(UNKNOWN_AGE_MS),
            _ => UNKNOWN_AGE_MS,
        };
        Applied { generation, share, config_age_ms }
    }

    /// The share gauge's value.
    pub fn share_bp(&self) -> u64 {
        u64::from(self.share.basis_points())
    }
}

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

/// Stat name (as the filter defines it) of an outcome's denominator: requests of
/// `cohort` that rule `outcome` applies to.
pub fn outcome_requests_stat(deployment: &str, cohort: Cohort, outcome: &str) -> String {
    format!("canary.deployment.{deployment}.cohort.{}.outcome.{outcome}.outcome_requests_total", cohort.label())
}

/// Stat name (as the filter defines it) of an outcome's numerator: those that matched.
pub fn outcome_events_stat(deployment: &str, cohort: Cohort, outcome: &str) -> String {
    format!("canary.deployment.{deployment}.cohort.{}.outcome.{outcome}.outcome_events_total", cohort.label())
}

/// Stat name (as the filter defines it) of the applied-generation gauge.
pub fn applied_generation_stat(deployment: &str) -> String {
    format!("canary.deployment.{deployment}.applied_generation")
}

/// Stat name (as the filter defines it) of the applied-share gauge.
pub fn applied_share_stat(deployment: &str) -> String {
    format!("canary.deployment.{deployment}.applied_share_bp")
}

/// Stat name (as the filter defines it) of the config-age gauge.
pub fn config_age_stat(deployment: &str) -> String {
    format!("canary.deployment.{deployment}.config_age_ms")
}

/// Envoy `stats_config.stats_tags`: (tag name, regex). The first capture group is
/// removed from the name, the second becomes the label value. Envoy matches them
/// against the full name, which carries the `wasmcustom.` prefix.
/// The `class` tag matches only request counters and the `outcome` tag only outcome
/// counters (the segment after the cohort is `class.` or `outcome.`).
pub const STATS_TAGS: [(&str, &str); 4] = [
    ("deployment", r"^wasmcustom\.canary\.(deployment\.([^.]+)\.)"),
    ("cohort", r"^wasmcustom\.canary\.deployment\.[^.]+\.(cohort\.([^.]+)\.)"),
    ("class", r"^wasmcustom\.canary\.deployment\.[^.]+\.cohort\.[^.]+\.(class\.([^.]+)\.)"),
    ("outcome", r"^wasmcustom\.canary\.deployment\.[^.]+\.cohort\.[^.]+\.(outcome\.([^.]+)\.)"),
];

/// Latency bucket upper bounds in microseconds for `histogram_bucket_settings` (the
/// Prometheus path; the Envoy admin source reads Envoy's own finer bins instead).
/// From 1 ms to 10 s every bound is the largest two-significant-digit number at most
/// 10 % above the previous one (mantissas 10, 11, ..., 20, 22, ..., 86, 94: 29 per
/// decade), so no bucket there is wider than 10 % of its lower bound: at a 64 ms p99
/// a bucket is 6 ms wide (it was 10 ms from 60 to 80 ms). Two significant digits make
/// every bound an edge of Envoy's log-linear bins, so Envoy fills each bucket with whole
/// bins (it counts the bins that start at or below the bound: see `docs/metrics.md`).
/// 250 and 500 µs below 1 ms, 30 and 60 s above 10 s for timeouts, as before.
pub const LATENCY_BUCKETS_US: [u64; 121] = [
    250, 500, 1_000, 1_100, 1_200, 1_300, 1_400, 1_500, 1_600, 1_700, 1_800, 1_900, 2_000, 2_200, 2_400, 2_600, 2_800,
    3_000, 3_300, 3_600, 3_900, 4_200, 4_600, 5_000, 5_500, 6_000, 6_600, 7_200, 7_900, 8_600, 9_400, 10_000, 11_000,
    12_000, 13_000, 14_000, 15_000, 16_000, 17_000, 18_000, 19_000, 20_000, 22_000, 24_000, 26_000, 28_000, 30_000,
    33_000, 36_000, 39_000, 42_000, 46_000, 50_000, 55_000, 60_000, 66_000, 72_000, 79_000, 86_000, 94_000, 100_000,
    110_000, 120_000, 130_000, 140_000, 150_000, 160_000, 170_000, 180_000, 190_000, 200_000, 220_000, 240_000,
    260_000, 280_000, 300_000, 330_000, 360_000, 390_000, 420_000, 460_000, 500_000, 550_000, 600_000, 660_000,
    720_000, 790_000, 860_000, 940_000, 1_000_000, 1_100_000, 1_200_000, 1_300_000, 1_400_000, 1_500_000, 1_600_000,
    1_700_000, 1_800_000, 1_900_000, 2_000_000, 2_200_000, 2_400_000, 2_600_000, 2_800_000, 3_000_000, 3_300_000,
    3_600_000, 3_900_000, 4_200_000, 4_600_000, 5_000_000, 5_500_000, 6_000_000, 6_600_000, 7_200_000, 7_900_000,
    8_600_000, 9_400_000, 10_000_000, 30_000_000, 60_000_000,
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
        assert_eq!(applied_generation_stat("checkout"), "canary.deployment.checkout.applied_generation");
        assert_eq!(applied_share_stat("checkout"), "canary.deployment.checkout.applied_share_bp");
        assert_eq!(config_age_stat("checkout"), "canary.deployment.checkout.config_age_ms");
        assert_eq!(
            outcome_requests_stat("checkout", Cohort::Canary, "cache_hit"),
            "canary.deployment.checkout.cohort.canary.outcome.cache_hit.outcome_requests_total"
        );
        assert_eq!(
            outcome_events_stat("checkout", Cohort::Control, "cache_hit"),
            "canary.deployment.checkout.cohort.control.outcome.cache_hit.outcome_events_total"
        );
    }

    /// With the deployment, cohort and outcome segments lifted into labels (and
    /// `wasmcustom.` dropped, dots made `_`), outcome stats carry the contract's names.
    /// The real Envoy checks the same in tests/tests/outcomes.rs.
    #[test]
    fn outcome_names_become_the_prometheus_names_once_tagged() {
        for (stat, prometheus) in [
            (outcome_requests_stat("checkout", Cohort::Canary, "cache_hit"), OUTCOME_REQUESTS),
            (outcome_events_stat("checkout", Cohort::Canary, "cache_hit"), OUTCOME_EVENTS),
        ] {
            let untagged = stat.replacen("deployment.checkout.", "", 1).replacen("cohort.canary.", "", 1).replacen(
                "outcome.cache_hit.",
                "",
                1,
            );
            assert_eq!(untagged.replace('.', "_"), prometheus);
        }
    }

    /// Once the `deployment` tag has taken `deployment.<id>.` out, and Envoy has dropped
    /// `wasmcustom.` and turned dots into `_`, the gauges carry the names the analyzer reads.
    #[test]
    fn gauge_names_become_the_prometheus_names_once_tagged() {
        for (stat, prometheus) in [
            (applied_generation_stat("checkout"), APPLIED_GENERATION),
            (applied_share_stat("checkout"), APPLIED_SHARE_BP),
            (config_age_stat("checkout"), CONFIG_AGE_MS),
        ] {
            let untagged = stat.replacen("deployment.checkout.", "", 1);
            assert_eq!(untagged.replace('.', "_"), prometheus);
        }
    }

    mod applied {
        use super::super::*;
        use crate::config::FilterConfig;
        use crate::poll::Published;
        use crate::rollout::{RolloutConfig, RolloutPhase};

        fn analyzer(when_stale: &str) -> AnalyzerConfig {
            let json = format!(
                r#"{{"deployment":"checkout","analyzer":{{"cluster":"a","poll_interval_ms":1000,"stale_after_ms":5000,"when_stale":"{when_stale}"}}}}"#
            );
            FilterConfig::parse(json.as_bytes()).unwrap().analyzer.unwrap()
        }

        fn published(generation: u64, share_bp: u32, confirmed_ms: u64) -> Published {
            let rollout =
                RolloutConfig { deployment: "checkout".into(), generation, share_bp, state: RolloutPhase::Progressing };
            Published::one(rollout, confirmed_ms)
        }

        fn applying(p: &Published) -> Option<Applying<'_>> {
            p.rollouts.first().map(|rollout| Applying { record: p, rollout })
        }

        const INITIAL: Share = match Share::from_basis_points(100) {
            Some(share) => share,
            None => Share::ZERO,
        };
        /// A wall-clock time in 2023, far from 0.
        const EPOCH_MS: u64 = 1_700_000_000_000;

        #[test]
        fn before_any_answer_the_initial_share_of_no_generation_and_unknown_age() {
            let a = analyzer("control");
            let before = Applied::derive(None, Some(&a), INITIAL, EPOCH_MS);
            assert_eq!(before, Applied { generation: NO_GENERATION, share: INITIAL, config_age_ms: UNKNOWN_AGE_MS });
            assert_eq!(before.share_bp(), 100);
            // Without an analyzer the filter never polls: the same, forever.
            assert_eq!(Applied::derive(None, None, INITIAL, EPOCH_MS), before);
        }

        #[test]
        fn a_fresh_answer_gives_its_generation_share_and_age() {
            let p = published(7, 2_500, EPOCH_MS);
            let applied = Applied::derive(applying(&p), Some(&analyzer("control")), INITIAL, EPOCH_MS + 1_200);
            assert_eq!((applied.generation, applied.share_bp(), applied.config_age_ms), (7, 2_500, 1_200));
        }

        #[test]
        fn past_the_staleness_limit_control_shows_share_0_and_the_growing_age() {
            let p = published(7, 2_500, EPOCH_MS);
            let control = Applied::derive(applying(&p), Some(&analyzer("control")), INITIAL, EPOCH_MS + 5_001);
            assert_eq!((control.generation, control.share_bp(), control.config_age_ms), (7, 0, 5_001));
            let keep = Applied::derive(applying(&p), Some(&analyzer("keep")), INITIAL, EPOCH_MS + 5_001);
            assert_eq!((keep.generation, keep.share_bp(), keep.config_age_ms), (7, 2_500, 5_001));
        }

        #[test]
        fn a_confirmation_from_before_a_clock_step_back_is_of_unknown_age() {
            let p = published(7, 2_500, EPOCH_MS);
            let stepped_back = EPOCH_MS - 3_600_000;
            let control = Applied::derive(applying(&p), Some(&analyzer("control")), INITIAL, stepped_back);
            assert_eq!((control.generation, control.share_bp(), control.config_age_ms), (7, 0, UNKNOWN_AGE_MS));
        }
    }

    #[test]
    fn buckets_ascend() {
        assert!(LATENCY_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn buckets_are_at_most_10_percent_wide_from_1_ms_to_10_s_on_envoy_bin_edges() {
        let (one_ms, ten_s) = (1_000, 10_000_000);
        assert!(LATENCY_BUCKETS_US.contains(&one_ms) && LATENCY_BUCKETS_US.contains(&ten_s));
        for pair in LATENCY_BUCKETS_US.windows(2).filter(|w| w[0] >= one_ms && w[1] <= ten_s) {
            // upper / lower <= 1.1, in integers.
            assert!(pair[1] * 10 <= pair[0] * 11, "{pair:?} is wider than 10 %");
        }
        let decade = LATENCY_BUCKETS_US.iter().filter(|b| (10_000..100_000).contains(*b)).count();
        assert_eq!(decade, 29, "bounds per decade");
        // Two significant digits: an edge of Envoy's log-linear bins.
        for bound in LATENCY_BUCKETS_US {
            let mut mantissa = bound;
            while mantissa >= 100 && mantissa % 10 == 0 {
                mantissa /= 10;
            }
            assert!(mantissa < 100, "{bound} has more than two significant digits");
        }
    }
}
