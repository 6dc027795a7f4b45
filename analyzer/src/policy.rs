//! The per-rollout policy: a Kubernetes-style YAML document in, a validated
//! [`RolloutPolicy`] out.
//!
//! It owns what a rollout may do — the ladder of canary shares and how long each
//! step is watched, how often to check, the significance level, the minimum
//! traffic before anything is decided, which metrics are compared with which
//! tolerance and which of them can roll back — so the state machine in
//! [`crate::ladder`] never sees YAML. Unknown fields are refused so a typo never
//! silently weakens a rollout, and every error names the field path, the value
//! and what was expected, like the filter's configuration (`canary_core::config`).
//!
//! The typed policy serialises back to the same document shape with every
//! default filled in, so the audit log can keep an exact, re-loadable snapshot
//! and a [`RolloutPolicy::fingerprint`] of it. The one secret in a policy, the
//! webhook URL ([`webhook`]), is written in full only by the plain serialisation
//! (the state files); the audit log and the API use [`RolloutPolicy::redacted`].

mod document;
mod duration;
mod rate_metric;
mod source;
mod suggest;
#[cfg(test)]
mod tests;
mod validate;
mod webhook;
pub(crate) use canary_core::config::one_line;
pub use duration::{format_duration, parse_duration};
pub use rate_metric::{CounterPairMetric, OutcomeMetric, RateTolerance};
pub use webhook::{WebhookUrl, WebhookUrlError};

use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::stats::{BUILT_IN_ROWS, RowKey, RowOrigin};

use document::{RawDocument, RawMetric, check_flow_nesting, yaml_error};
use validate::validate_query;

/// The `apiVersion` every policy document must carry.
pub const API_VERSION: &str = "canary.wasm.dev/v1alpha1";
/// The `kind` every policy document must carry.
pub const KIND: &str = "RolloutPolicy";

/// Defaults, each with its reason.
pub mod defaults {
    use std::time::Duration;

    /// The ladder of the design: a small blast radius first, then halve the remaining risk each step.
    pub const LADDER_PERCENT: [f64; 5] = [1.0, 5.0, 25.0, 50.0, 100.0];
    /// Five minutes per step: ten looks at the default check interval, the whole default ladder in ~20 minutes.
    pub const STEP_WINDOW: Duration = Duration::from_secs(300);
    /// Thirty seconds: the tests are anytime-valid, so looking often costs no false rollbacks, only scrapes.
    pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
    /// The conventional 5 % false-rollback budget for a whole rollout.
    pub const ALPHA: f64 = 0.05;
    /// At a 0.5 % error rate 1000 requests hold ~5 errors; fewer cannot tell a doubling from noise.
    pub const MIN_REQUESTS_PER_COHORT: u64 = 1_000;
    /// How long a step waits for every proxy to apply it before its window starts anyway:
    /// twelve of the filter's default 5 s polls, and the filter's default `stale_after_ms`.
    pub const FLEET_DEADLINE: Duration = Duration::from_secs(60);
    /// A step that has not gathered its data in three windows' time is stalled: one more
    /// window rarely brings traffic that three did not, and a human should look.
    pub const STALL_AFTER_WINDOWS: u32 = 3;
    /// "The error rate may not rise at all" (beyond what the test can tell from noise).
    pub const ERROR_RATE_MAX_RELATIVE_INCREASE: f64 = 0.0;
    /// Per-user hashing with heavy users moves the request split by a few percent on its own
    /// (same as `stats::SampleRatioSettings::default`).
    pub const SAMPLE_RATIO_MAX_RELATIVE_DEVIATION: f64 = 0.1;
    /// The issue's own example for the default latency metric: "p99 may rise at most 50 ms".
    pub const LATENCY_P99_MAX_INCREASE_MS: f64 = 50.0;
    /// A metric listed in a policy can roll back unless it says otherwise: no guard is weaker than it looks.
    pub const CRITICAL: bool = true;
}

/// Longest step window or check interval a written policy may have: a year. Longer is a
/// typo, and the engine adds these to clocks and multiplies them (`Instant + check_interval`,
/// ten intervals, checks per window × 10), which overflowed and panicked near `u64::MAX` s.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3_600);

/// A refused policy: `field` is a dotted path into the document, e.g. `spec.ladder[2].share`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rollout policy: field `{field}` = {value}: expected {expected}")]
pub struct PolicyError {
    pub field: String,
    pub value: String,
    pub expected: String,
}

impl PolicyError {
    fn new(field: impl Into<String>, value: impl std::fmt::Display, expected: impl Into<String>) -> Self {
        Self { field: field.into(), value: value.to_string(), expected: expected.into() }
    }

    fn missing(field: impl Into<String>, expected: impl Into<String>) -> Self {
        Self::new(field, "(missing)", expected)
    }
}

/// A validated rollout policy. Deserialising one (from YAML or JSON) validates it;
/// serialising writes the full document with every default made explicit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDocument", into = "RawDocument")]
pub struct RolloutPolicy {
    /// `metadata.name`.
    pub name: String,
    pub deployment: String,
    /// At least one step, shares strictly increasing, the last one at 100 %.
    pub ladder: Vec<LadderStep>,
    pub check_interval: Duration,
    /// Significance level of every comparison, in (0, 0.5].
    pub alpha: f64,
    /// Below this many requests in either cohort nothing is decided (rows say "not enough data").
    pub min_requests_per_cohort: u64,
    /// Unique names, at least one critical.
    pub metrics: Vec<MetricPolicy>,
    /// A step's window starts once every proxy applies it, or when this much time has
    /// passed since the step began (after which laggards hold the promotion).
    pub fleet_deadline: Duration,
    /// A step still short of data after this many windows is reported stalled.
    pub stall_after_windows: u32,
    pub notify: Option<Notify>,
    /// Requests and latency from the mesh's own metrics (through Prometheus) instead of
    /// the filter's; `None`: the filter's.
    pub source: Option<crate::source::MeshMapping>,
}

/// One rung of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LadderStep {
    /// Canary share in basis points, 1..=10 000.
    pub share_bp: u32,
    /// How long the step must run cleanly before promotion. Ignored on the last
    /// step: reaching 100 % ends the rollout.
    pub window: Duration,
    /// `approval: required`: once the window has passed cleanly, the step waits for an
    /// operator's approval (`canary-analyzer approve`) before promotion.
    pub approval_required: bool,
}

/// One compared metric and whether a regression on it rolls back.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPolicy {
    pub metric: Metric,
    /// A significant regression beyond tolerance on a critical metric rolls back,
    /// and promotion waits for enough data on every critical metric.
    pub critical: bool,
}

/// What is compared, with its tolerance.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// Per-request error rate; the canary may be up to `1 + max_relative_increase` times control.
    ErrorRate { max_relative_increase: f64 },
    /// A latency quantile from the histogram buckets.
    Latency { quantile: LatencyQuantile, tolerance: LatencyTolerance },
    /// The traffic split itself; traffic odds within `1 ± max_relative_deviation` of the expected share are fine.
    SampleRatio { max_relative_deviation: f64 },
    /// A PromQL metric of the user's; higher is worse. A guardrail: no p-value.
    Custom(CustomMetric),
    /// A rate the filter counts per cohort (events among requests), tested like the error rate.
    Outcome(OutcomeMetric),
    /// A rate from a PromQL numerator and denominator per cohort, tested like the error rate.
    CounterPair(CounterPairMetric),
}

/// The latency quantiles a policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LatencyQuantile {
    P50,
    P90,
    P99,
    P99_9,
}

/// How far the canary's latency quantile may exceed control's. At least one
/// bound is set; when both are, the canary may exceed control by either.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyTolerance {
    pub max_increase_ms: Option<f64>,
    pub max_relative_increase: Option<f64>,
}

/// Microseconds per millisecond: policies speak ms, the latency statistics µs.
const MICROS_PER_MILLI: f64 = 1_000.0;

impl LatencyTolerance {
    /// The allowed increase in µs, as `stats::QuantileTolerance::tolerance_us`
    /// takes it: the larger of the absolute bound and the relative bound applied
    /// to control's quantile. `None` when only a relative bound is set and
    /// control's quantile is not known yet.
    pub fn allowed_increase_us(&self, control_us: Option<f64>) -> Option<f64> {
        let absolute = self.max_increase_ms.map(|ms| ms * MICROS_PER_MILLI);
        let relative = self.max_relative_increase.zip(control_us).map(|(r, control)| r * control);
        match (absolute, relative) {
            (Some(a), Some(r)) => Some(a.max(r)),
            (a, r) => a.or(r),
        }
    }
}

/// A custom metric: a PromQL template evaluated per cohort (evaluation lives with the metric sources).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomMetric {
    /// `[a-z_][a-z0-9_]*`, not a built-in name; also the report row's metric name.
    pub name: String,
    /// PromQL with `{{cohort}}` and optionally `{{deployment}}` and `{{window}}` placeholders.
    pub query: String,
    pub max_relative_increase: Option<f64>,
    /// In the query's own unit.
    pub max_absolute_increase: Option<f64>,
}

/// Where step changes are announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// An incoming webhook (`http://` or `https://`); shown redacted.
    pub webhook_url: WebhookUrl,
    /// The JSON its service reads (Slack-compatible unless set).
    pub format: crate::notify::WebhookFormat,
    /// The events posted to it.
    pub events: crate::notify::EventSet,
}

impl LatencyQuantile {
    pub const ALL: [LatencyQuantile; 4] =
        [LatencyQuantile::P50, LatencyQuantile::P90, LatencyQuantile::P99, LatencyQuantile::P99_9];

    /// The name in a policy, e.g. `latency_p99_9`.
    pub fn policy_name(self) -> &'static str {
        match self {
            LatencyQuantile::P50 => "latency_p50",
            LatencyQuantile::P90 => "latency_p90",
            LatencyQuantile::P99 => "latency_p99",
            LatencyQuantile::P99_9 => "latency_p99_9",
        }
    }

    /// The quantile as a fraction, e.g. 0.999.
    pub fn fraction(self) -> f64 {
        match self {
            LatencyQuantile::P50 => 0.5,
            LatencyQuantile::P90 => 0.9,
            LatencyQuantile::P99 => 0.99,
            LatencyQuantile::P99_9 => 0.999,
        }
    }

    fn from_policy_name(name: &str) -> Option<LatencyQuantile> {
        LatencyQuantile::ALL.into_iter().find(|q| q.policy_name() == name)
    }
}

/// Built-in metric names (besides the latency quantiles).
const ERROR_RATE: &str = "error_rate";
const SAMPLE_RATIO: &str = "sample_ratio";

impl MetricPolicy {
    /// The name as written in the policy, e.g. `latency_p99`.
    pub fn name(&self) -> &str {
        match &self.metric {
            Metric::ErrorRate { .. } => ERROR_RATE,
            Metric::Latency { quantile, .. } => quantile.policy_name(),
            Metric::SampleRatio { .. } => SAMPLE_RATIO,
            Metric::Custom(custom) => &custom.name,
            Metric::Outcome(outcome) => &outcome.name,
            Metric::CounterPair(pair) => &pair.name,
        }
    }

    /// The `metric` of the comparison row this policy entry judges, e.g.
    /// `latency_p99_us` (the statistics report latency in microseconds).
    pub fn report_metric(&self) -> String {
        match &self.metric {
            Metric::Latency { quantile, .. } => format!("{}_us", quantile.policy_name()),
            _ => self.name().to_string(),
        }
    }

    /// Whether this metric is read with PromQL (a custom query or a counter pair), which
    /// only an analyzer reading a Prometheus server (`--prometheus`) can do: on Envoy
    /// admin endpoints its row never has data.
    pub fn needs_prometheus(&self) -> bool {
        matches!(self.metric, Metric::Custom(_) | Metric::CounterPair(_))
    }

    /// The identity of the comparison row this policy entry judges: a built-in row for
    /// the error rate, the split and latency, the policy's own row for the rest.
    pub fn row_key(&self) -> RowKey {
        match &self.metric {
            Metric::ErrorRate { .. } | Metric::Latency { .. } | Metric::SampleRatio { .. } => {
                RowKey::built_in(self.report_metric())
            }
            Metric::Custom(_) | Metric::Outcome(_) | Metric::CounterPair(_) => RowKey::policy(self.report_metric()),
        }
    }
}

impl RolloutPolicy {
    /// Parses and validates a YAML (or JSON, a subset of YAML) policy document.
    /// A redacted webhook URL (what the audit log shows) is refused: it cannot be posted to.
    pub fn from_yaml(text: &str) -> Result<RolloutPolicy, PolicyError> {
        check_flow_nesting(text)?;
        let raw: RawDocument = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(&e))?;
        let policy = RolloutPolicy::try_from(raw)?;
        policy.check_runnable()?;
        policy.check_no_reserved_names()?;
        if let Some(notify) = &policy.notify
            && notify.webhook_url.secret().is_none()
        {
            return Err(PolicyError::new("spec.notify.webhook_url", &notify.webhook_url, webhook::NOT_REDACTED));
        }
        Ok(policy)
    }

    /// Limits for policies people write, beyond the document's own rules: values the
    /// engine could not run. Not applied when a policy is read back from the audit log or
    /// a state file (through serde), so a record an older analyzer wrote still loads.
    fn check_runnable(&self) -> Result<(), PolicyError> {
        let at_most_a_year = "a duration of at most a year (8760h)";
        if self.check_interval > MAX_DURATION {
            let shown = format_duration(self.check_interval);
            return Err(PolicyError::new("spec.check_interval", shown, at_most_a_year));
        }
        if let Some((i, step)) = self.ladder.iter().enumerate().find(|(_, step)| step.window > MAX_DURATION) {
            return Err(PolicyError::new(
                format!("spec.ladder[{i}].window"),
                format_duration(step.window),
                format!("{at_most_a_year}; a step without a window takes spec.default_window"),
            ));
        }
        for (i, metric) in self.metrics.iter().enumerate() {
            // The statistics take the tolerance in µs: above f64::MAX / 1000 ms it is infinite there.
            if let Metric::Latency { tolerance: LatencyTolerance { max_increase_ms: Some(ms), .. }, .. } = metric.metric
                && !(ms * MICROS_PER_MILLI).is_finite()
            {
                return Err(PolicyError::new(
                    format!("spec.metrics[{i}].max_increase_ms"),
                    ms,
                    "a finite number >= 0 whose microseconds are finite too (below 1.7e305)",
                ));
            }
        }
        Ok(())
    }

    /// A policy metric may not take the name of a row the analyzer reports on its own
    /// ([`BUILT_IN_ROWS`]): two rows of one name would read alike in every report,
    /// webhook and audit record. Like [`RolloutPolicy::check_runnable`], only for policies
    /// people write: a record an older analyzer wrote with such a name still loads, and
    /// decisions tell its rows apart by [`MetricPolicy::row_key`].
    fn check_no_reserved_names(&self) -> Result<(), PolicyError> {
        for (i, metric) in self.metrics.iter().enumerate() {
            let own_row = metric.row_key().origin == RowOrigin::Policy;
            if own_row && BUILT_IN_ROWS.contains(&metric.name()) {
                return Err(PolicyError::new(
                    format!("spec.metrics[{i}].name"),
                    format!("{:?}", metric.name()),
                    format!(
                        "a name of its own, not one of the rows every report carries ({}); an outcome \
                         metric without a name takes its outcome's",
                        BUILT_IN_ROWS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The full document, every default explicit, as YAML.
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        serde_yaml_ng::to_string(self)
    }

    /// A stable 64-bit hash (16 hex digits) of the full document, so an audit
    /// reader can tell at a glance whether two decisions ran under the same policy.
    ///
    /// Computed over the [redacted](RolloutPolicy::redacted) document, whose webhook
    /// URL is `scheme://host` plus xxh3-64 of the whole URL: a different URL gives a
    /// different fingerprint, and an audit record's redacted policy has the same
    /// fingerprint as the real one, so its `policy_hash` can be checked without the secret.
    pub fn fingerprint(&self) -> String {
        // Serialising a validated policy cannot fail: string keys, finite numbers only.
        let canonical = serde_json::to_vec(&self.redacted()).unwrap_or_default();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&canonical))
    }

    /// The policy with its webhook URL reduced to the redacted form: what the audit
    /// log, the API and the dashboard may show.
    pub fn redacted(&self) -> RolloutPolicy {
        let mut redacted = self.clone();
        if let Some(notify) = &mut redacted.notify {
            notify.webhook_url = notify.webhook_url.without_secret();
        }
        redacted
    }

    /// For `#[serde(serialize_with = ...)]`: writes [`RolloutPolicy::redacted`].
    pub fn serialize_redacted<S: Serializer>(policy: &RolloutPolicy, serializer: S) -> Result<S::Ok, S::Error> {
        policy.redacted().serialize(serializer)
    }

    /// Recovery's side of redaction: a policy read back from the audit log knows its
    /// webhook URL only redacted; `known` (the state file's policy) supplies the real
    /// one when it names the same URL (same fingerprint). Without it the URL stays
    /// unknown and [`crate::notify::Notifier::for_policy`] falls back to `--webhook`.
    pub fn with_webhook_secret_from(mut self, known: Option<&RolloutPolicy>) -> RolloutPolicy {
        let Some(notify) = &mut self.notify else { return self };
        if notify.webhook_url.secret().is_some() {
            return self;
        }
        let known_url = known.and_then(|k| k.notify.as_ref()).map(|n| &n.webhook_url);
        match known_url.filter(|url| url.same_url(&notify.webhook_url) && url.secret().is_some()) {
            Some(url) => {
                tracing::info!(
                    deployment = %self.deployment, webhook = %url,
                    "audit record's redacted webhook URL matched the state file's by fingerprint; using the state file's"
                );
                notify.webhook_url = url.clone();
            }
            None => tracing::warn!(
                deployment = %self.deployment, webhook = %notify.webhook_url,
                "the audit log has this rollout's webhook URL only redacted and no state file holds it"
            ),
        }
        self
    }

    /// The same policy with another fleet deadline (tests and tools; YAML sets `spec.fleet_deadline`).
    pub fn with_fleet_deadline(mut self, deadline: Duration) -> RolloutPolicy {
        self.fleet_deadline = deadline;
        self
    }

    /// The same policy with another stall limit (tests and tools; YAML sets `spec.stall_after_windows`).
    pub fn with_stall_after_windows(mut self, windows: u32) -> RolloutPolicy {
        self.stall_after_windows = windows.max(1);
        self
    }

    /// The policy entries whose regressions roll back.
    pub fn critical_metrics(&self) -> impl Iterator<Item = &MetricPolicy> {
        self.metrics.iter().filter(|m| m.critical)
    }

    /// The step at `index`, if the ladder has one.
    pub fn step(&self, index: u32) -> Option<&LadderStep> {
        usize::try_from(index).ok().and_then(|i| self.ladder.get(i))
    }

    /// The first step whose share is above `share_bp`: where a promotion goes.
    pub fn next_step_above(&self, share_bp: u32) -> Option<(u32, &LadderStep)> {
        self.ladder
            .iter()
            .enumerate()
            .find(|(_, step)| step.share_bp > share_bp)
            .and_then(|(i, step)| u32::try_from(i).ok().map(|i| (i, step)))
    }

    /// The last step whose share is at most `share_bp` (the first step when
    /// `share_bp` is below all of them): whose window applies at that share.
    pub fn step_at_share(&self, share_bp: u32) -> u32 {
        let below_or_at = self.ladder.iter().filter(|step| step.share_bp <= share_bp).count();
        u32::try_from(below_or_at.saturating_sub(1)).unwrap_or(0)
    }
}
