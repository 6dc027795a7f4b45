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

mod webhook;
pub use webhook::{WebhookUrl, WebhookUrlError};

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

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

/// Longest accepted `metadata.name`: a Kubernetes DNS subdomain name.
const MAX_NAME_LEN: usize = 253;
/// Basis points in 1 %: ladder shares are written in percent and served in basis points.
const BASIS_POINTS_PER_PERCENT: f64 = 100.0;
/// The full share in basis points: the ladder must end there.
const FULL_SHARE_BP: u32 = 10_000;
/// Checking more often than once a second is busy-work: scrapes and polls are slower than that.
const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest step window or check interval a written policy may have: a year. Longer is a
/// typo, and the engine adds these to clocks and multiplies them (`Instant + check_interval`,
/// ten intervals, checks per window × 10), which overflowed and panicked near `u64::MAX` s.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3_600);
/// Placeholders a custom PromQL query template may use.
const QUERY_PLACEHOLDERS: [&str; 3] = ["cohort", "deployment", "window"];

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
}

/// One rung of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LadderStep {
    /// Canary share in basis points, 1..=10 000.
    pub share_bp: u32,
    /// How long the step must run cleanly before promotion. Ignored on the last
    /// step: reaching 100 % ends the rollout.
    pub window: Duration,
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
    /// A PromQL metric of the user's; higher is worse.
    Custom(CustomMetric),
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
    /// A Slack-compatible incoming webhook (`http://` or `https://`); shown redacted.
    pub webhook_url: WebhookUrl,
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
}

impl RolloutPolicy {
    /// Parses and validates a YAML (or JSON, a subset of YAML) policy document.
    /// A redacted webhook URL (what the audit log shows) is refused: it cannot be posted to.
    pub fn from_yaml(text: &str) -> Result<RolloutPolicy, PolicyError> {
        check_flow_nesting(text)?;
        let raw: RawDocument = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(&e))?;
        let policy = RolloutPolicy::try_from(raw)?;
        policy.check_runnable()?;
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

// ---------------------------------------------------------------------------
// The raw document: what serde reads and writes.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<RawMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<RawSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[expect(dead_code, reason = "accepted for Kubernetes tooling, not used")]
    #[serde(default, skip_serializing)]
    labels: Option<BTreeMap<String, String>>,
    #[expect(dead_code, reason = "accepted for Kubernetes tooling, not used")]
    #[serde(default, skip_serializing)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ladder: Option<Vec<RawStep>>,
    /// Window of the steps that give none (and of the default ladder).
    #[serde(skip_serializing_if = "Option::is_none")]
    default_window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alpha: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_requests_per_cohort: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet_deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stall_after_windows: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<Vec<RawMetric>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notify: Option<RawNotify>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    /// Percent, fractions allowed down to one basis point (0.01).
    #[serde(skip_serializing_if = "Option::is_none")]
    share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    critical: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_relative_increase: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_increase_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_absolute_increase: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_relative_deviation: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<String>,
}

/// serde_yaml_ng prefixes errors inside the document with their path
/// ("spec.ladder[0]: unknown field ..."): name that field when it can. Keys are quoted
/// as written, so control characters are escaped to keep the error on one line.
fn yaml_error(error: &serde_yaml_ng::Error) -> PolicyError {
    let message = one_line(&error.to_string());
    let (field, detail) = match message.split_once(": ") {
        Some((path, detail)) if !path.contains(' ') && !path.is_empty() => (path.to_string(), detail.to_string()),
        _ => ("(document)".to_string(), message.clone()),
    };
    PolicyError::new(field, "(as written)", format!("a valid RolloutPolicy document: {detail}"))
}

/// Deepest nesting of `[` and `{` a policy document may have. A policy needs 3 levels
/// (`spec: {ladder: [{share: 1}]}`) and a PromQL template adds a few, counted as if
/// outside quotes. The YAML parser's work per token grows with this depth: 8 000 levels
/// took 2.8 s and 100 000 (a 200 KB body) 352 s in a debug build.
const MAX_FLOW_NESTING: usize = 64;

/// Refuses a document nested deeper than [`MAX_FLOW_NESTING`] before the YAML parser sees
/// it, naming the line: one pass over the bytes, so parsing stays linear in the text.
fn check_flow_nesting(text: &str) -> Result<(), PolicyError> {
    let mut depth = 0usize;
    let mut line = 1usize;
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_NESTING {
                    return Err(PolicyError::new(
                        "(document)",
                        format!("line {line}: more than {MAX_FLOW_NESTING} nested `[`/`{{`"),
                        format!("at most {MAX_FLOW_NESTING} nested flow collections (`[...]`, `{{...}}`)"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    Ok(())
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): one log line whatever a key holds.
pub(crate) fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

impl TryFrom<RawDocument> for RolloutPolicy {
    type Error = PolicyError;

    fn try_from(raw: RawDocument) -> Result<RolloutPolicy, PolicyError> {
        match raw.api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(other) => return Err(PolicyError::new("apiVersion", format!("{other:?}"), API_VERSION)),
            None => return Err(PolicyError::missing("apiVersion", API_VERSION)),
        }
        match raw.kind.as_deref() {
            Some(KIND) => {}
            Some(other) => return Err(PolicyError::new("kind", format!("{other:?}"), KIND)),
            None => return Err(PolicyError::missing("kind", KIND)),
        }
        let name =
            raw.metadata.and_then(|m| m.name).ok_or_else(|| PolicyError::missing("metadata.name", "a policy name"))?;
        validate_name(&name)?;
        let spec = raw.spec.ok_or_else(|| PolicyError::missing("spec", "the rollout specification"))?;
        spec.validate(name)
    }
}

fn validate_name(name: &str) -> Result<(), PolicyError> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    let ends_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let bytes = name.as_bytes();
    if name.len() > MAX_NAME_LEN
        || !bytes.iter().all(|&b| allowed(b))
        || !ends_ok(bytes.first())
        || !ends_ok(bytes.last())
    {
        return Err(PolicyError::new(
            "metadata.name",
            format!("{name:?}"),
            "a Kubernetes name: 1 to 253 characters from [a-z0-9-.], starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

fn validate_deployment(deployment: &str) -> Result<(), PolicyError> {
    if !canary_core::config::is_valid_deployment_id(deployment) {
        return Err(PolicyError::new(
            "spec.deployment",
            format!("{deployment:?}"),
            "1 to 63 characters from [A-Za-z0-9_-] (the filter's deployment id)",
        ));
    }
    Ok(())
}

impl RawSpec {
    fn validate(self, name: String) -> Result<RolloutPolicy, PolicyError> {
        let deployment =
            self.deployment.ok_or_else(|| PolicyError::missing("spec.deployment", "the filter's deployment id"))?;
        validate_deployment(&deployment)?;
        let default_window = match &self.default_window {
            Some(text) => positive_duration("spec.default_window", text)?,
            None => defaults::STEP_WINDOW,
        };
        let ladder = validate_ladder(self.ladder, default_window)?;
        let check_interval = match &self.check_interval {
            Some(text) => {
                let interval = positive_duration("spec.check_interval", text)?;
                if interval < MIN_CHECK_INTERVAL {
                    return Err(PolicyError::new("spec.check_interval", format!("{text:?}"), "at least 1s"));
                }
                interval
            }
            None => defaults::CHECK_INTERVAL,
        };
        let alpha = self.alpha.unwrap_or(defaults::ALPHA);
        if !(alpha > 0.0 && alpha <= 0.5) {
            return Err(PolicyError::new("spec.alpha", alpha, "a significance level in (0, 0.5], e.g. 0.05"));
        }
        let min_requests_per_cohort = self.min_requests_per_cohort.unwrap_or(defaults::MIN_REQUESTS_PER_COHORT);
        if min_requests_per_cohort == 0 {
            return Err(PolicyError::new(
                "spec.min_requests_per_cohort",
                0,
                "at least 1 (no data is not good news: nothing may be decided on zero requests)",
            ));
        }
        let metrics = match self.metrics {
            Some(raw) => validate_metrics(raw)?,
            None => default_metrics(),
        };
        let notify = self.notify.map(RawNotify::validate).transpose()?;
        let fleet_deadline = match &self.fleet_deadline {
            Some(text) => positive_duration("spec.fleet_deadline", text)?,
            None => defaults::FLEET_DEADLINE,
        };
        let stall_after_windows = self.stall_after_windows.unwrap_or(defaults::STALL_AFTER_WINDOWS);
        if stall_after_windows == 0 {
            return Err(PolicyError::new(
                "spec.stall_after_windows",
                0,
                "at least 1 (windows before a step is stalled)",
            ));
        }
        Ok(RolloutPolicy {
            name,
            deployment,
            ladder,
            check_interval,
            alpha,
            min_requests_per_cohort,
            metrics,
            notify,
            fleet_deadline,
            stall_after_windows,
        })
    }
}

fn validate_ladder(raw: Option<Vec<RawStep>>, default_window: Duration) -> Result<Vec<LadderStep>, PolicyError> {
    let Some(raw) = raw else {
        return defaults::LADDER_PERCENT
            .iter()
            .enumerate()
            .map(|(i, &percent)| {
                Ok(LadderStep {
                    share_bp: share_bp(&format!("spec.ladder[{i}].share"), percent)?,
                    window: default_window,
                })
            })
            .collect();
    };
    if raw.is_empty() {
        return Err(PolicyError::new("spec.ladder", "[]", "at least one step, the last one at 100"));
    }
    let mut steps: Vec<LadderStep> = Vec::with_capacity(raw.len());
    for (i, step) in raw.into_iter().enumerate() {
        let field = format!("spec.ladder[{i}]");
        let percent = step.share.ok_or_else(|| PolicyError::missing(format!("{field}.share"), "a share in percent"))?;
        let bp = share_bp(&format!("{field}.share"), percent)?;
        if let Some(previous) = steps.last()
            && bp <= previous.share_bp
        {
            return Err(PolicyError::new(
                format!("{field}.share"),
                percent,
                format!("more than the previous step's {} (shares must increase)", percent_text(previous.share_bp)),
            ));
        }
        let window = match &step.window {
            Some(text) => positive_duration(&format!("{field}.window"), text)?,
            None => default_window,
        };
        steps.push(LadderStep { share_bp: bp, window });
    }
    if let Some(last) = steps.last()
        && last.share_bp != FULL_SHARE_BP
    {
        let field = format!("spec.ladder[{}].share", steps.len().saturating_sub(1));
        return Err(PolicyError::new(
            field,
            percent_text(last.share_bp),
            "the last step at 100 (reaching 100 % ends the rollout)",
        ));
    }
    Ok(steps)
}

/// Percent (fractions down to one basis point) to basis points.
fn share_bp(field: &str, percent: f64) -> Result<u32, PolicyError> {
    let bp = percent * BASIS_POINTS_PER_PERCENT;
    // Float noise from decimal input (0.07 * 100 = 7.000000000000001) is not a finer share.
    let whole = bp.round();
    if !(percent > 0.0 && percent <= 100.0) || (bp - whole).abs() > 1e-6 {
        return Err(PolicyError::new(field, percent, "a share in percent, above 0 and at most 100, in steps of 0.01"));
    }
    // In 1..=10 000 after the check above, so the cast is exact.
    Ok(whole as u32)
}

/// Basis points back to the percent number a policy shows.
fn percent_value(bp: u32) -> f64 {
    f64::from(bp) / BASIS_POINTS_PER_PERCENT
}

fn percent_text(bp: u32) -> String {
    percent_value(bp).to_string()
}

fn positive_duration(field: &str, text: &str) -> Result<Duration, PolicyError> {
    match parse_duration(text) {
        Some(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(PolicyError::new(field, format!("{text:?}"), "a positive duration like \"30s\", \"5m\" or \"1h30m\"")),
    }
}

/// Parses `<number><unit>` groups (units `ms`, `s`, `m`, `h`), e.g. "1h30m", "250ms".
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        let amount: u64 = digits.parse().ok()?;
        let unit_end = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let part = match unit {
            "ms" => Duration::from_millis(amount),
            "s" => Duration::from_secs(amount),
            "m" => Duration::from_secs(amount.checked_mul(60)?),
            "h" => Duration::from_secs(amount.checked_mul(3_600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = next;
    }
    Some(total)
}

/// The inverse of [`parse_duration`]: "1h30m", "45s", "1500ms".
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1_000 != 0 || millis == 0 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3_600, seconds % 3_600 / 60, seconds % 60);
    let mut text = String::new();
    for (amount, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s")] {
        if amount > 0 {
            text.push_str(&format!("{amount}{unit}"));
        }
    }
    text
}

/// Error rate and p99 within 50 ms, critical; the traffic split reported but not critical:
/// with per-user hashing a small user population alone moves the split (at 1 % of
/// 10 000 users the canary's user count varies by ±10 %), so a mismatch is a finding
/// to read, not a reason to roll back on its own. Policies may make it critical.
fn default_metrics() -> Vec<MetricPolicy> {
    vec![
        MetricPolicy {
            metric: Metric::ErrorRate { max_relative_increase: defaults::ERROR_RATE_MAX_RELATIVE_INCREASE },
            critical: true,
        },
        MetricPolicy {
            metric: Metric::Latency {
                quantile: LatencyQuantile::P99,
                tolerance: LatencyTolerance {
                    max_increase_ms: Some(defaults::LATENCY_P99_MAX_INCREASE_MS),
                    max_relative_increase: None,
                },
            },
            critical: true,
        },
        MetricPolicy {
            metric: Metric::SampleRatio { max_relative_deviation: defaults::SAMPLE_RATIO_MAX_RELATIVE_DEVIATION },
            critical: false,
        },
    ]
}

fn validate_metrics(raw: Vec<RawMetric>) -> Result<Vec<MetricPolicy>, PolicyError> {
    let mut names = HashSet::new();
    let mut metrics = Vec::with_capacity(raw.len());
    for (i, metric) in raw.into_iter().enumerate() {
        let field = format!("spec.metrics[{i}]");
        let validated = metric.validate(&field)?;
        if !names.insert(validated.name().to_string()) {
            return Err(PolicyError::new(format!("{field}.name"), format!("{:?}", validated.name()), "a unique name"));
        }
        metrics.push(validated);
    }
    if !metrics.iter().any(|m| m.critical) {
        return Err(PolicyError::new(
            "spec.metrics",
            format!("{} metrics, none critical", metrics.len()),
            "at least one metric with `critical: true` (otherwise nothing could ever roll back)",
        ));
    }
    Ok(metrics)
}

/// A tolerance: finite and not negative.
fn tolerance(field: String, value: Option<f64>) -> Result<Option<f64>, PolicyError> {
    match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => Err(PolicyError::new(field, v, "a finite number >= 0")),
        other => Ok(other),
    }
}

impl RawMetric {
    fn validate(self, field: &str) -> Result<MetricPolicy, PolicyError> {
        let name = self.name.clone().ok_or_else(|| {
            PolicyError::missing(
                format!("{field}.name"),
                "error_rate, latency_p50, latency_p90, latency_p99, latency_p99_9, sample_ratio or a custom name",
            )
        })?;
        let critical = self.critical.unwrap_or(defaults::CRITICAL);
        let max_relative_increase = tolerance(format!("{field}.max_relative_increase"), self.max_relative_increase)?;
        let max_increase_ms = tolerance(format!("{field}.max_increase_ms"), self.max_increase_ms)?;
        let max_absolute_increase = tolerance(format!("{field}.max_absolute_increase"), self.max_absolute_increase)?;
        let max_relative_deviation = tolerance(format!("{field}.max_relative_deviation"), self.max_relative_deviation)?;
        let builtin = name == ERROR_RATE || name == SAMPLE_RATIO || LatencyQuantile::from_policy_name(&name).is_some();
        if builtin && self.query.is_some() {
            return Err(PolicyError::new(
                format!("{field}.query"),
                "(set)",
                format!("no query: `{name}` is a built-in metric"),
            ));
        }
        let refuse = |option: &str, value: Option<f64>, which: &str| match value {
            Some(v) => Err(PolicyError::new(format!("{field}.{option}"), v, format!("not set: it applies to {which}"))),
            None => Ok(()),
        };
        let metric = if name == ERROR_RATE {
            refuse("max_increase_ms", max_increase_ms, "latency metrics only")?;
            refuse("max_absolute_increase", max_absolute_increase, "custom metrics only")?;
            refuse("max_relative_deviation", max_relative_deviation, "sample_ratio only")?;
            Metric::ErrorRate {
                max_relative_increase: max_relative_increase.unwrap_or(defaults::ERROR_RATE_MAX_RELATIVE_INCREASE),
            }
        } else if name == SAMPLE_RATIO {
            refuse("max_relative_increase", max_relative_increase, "error_rate, latency and custom metrics")?;
            refuse("max_increase_ms", max_increase_ms, "latency metrics only")?;
            refuse("max_absolute_increase", max_absolute_increase, "custom metrics only")?;
            Metric::SampleRatio {
                max_relative_deviation: max_relative_deviation.unwrap_or(defaults::SAMPLE_RATIO_MAX_RELATIVE_DEVIATION),
            }
        } else if let Some(quantile) = LatencyQuantile::from_policy_name(&name) {
            refuse(
                "max_absolute_increase",
                max_absolute_increase,
                "custom metrics only (latency uses max_increase_ms)",
            )?;
            refuse("max_relative_deviation", max_relative_deviation, "sample_ratio only")?;
            if max_increase_ms.is_none() && max_relative_increase.is_none() {
                return Err(PolicyError::missing(
                    format!("{field}.max_increase_ms"),
                    "`max_increase_ms` and/or `max_relative_increase` for a latency metric",
                ));
            }
            Metric::Latency { quantile, tolerance: LatencyTolerance { max_increase_ms, max_relative_increase } }
        } else {
            let query = self.custom_query(field, &name)?;
            refuse("max_increase_ms", max_increase_ms, "latency metrics only")?;
            refuse("max_relative_deviation", max_relative_deviation, "sample_ratio only")?;
            if max_relative_increase.is_none() && max_absolute_increase.is_none() {
                return Err(PolicyError::missing(
                    format!("{field}.max_relative_increase"),
                    "`max_relative_increase` and/or `max_absolute_increase` for a custom metric",
                ));
            }
            Metric::Custom(CustomMetric { name, query, max_relative_increase, max_absolute_increase })
        };
        Ok(MetricPolicy { metric, critical })
    }

    /// A custom metric's name is checked, then its query template.
    fn custom_query(&self, field: &str, name: &str) -> Result<String, PolicyError> {
        let starts_ok = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        if !starts_ok || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(PolicyError::new(
                format!("{field}.name"),
                format!("{name:?}"),
                "a built-in metric (error_rate, latency_p50, latency_p90, latency_p99, latency_p99_9, sample_ratio) \
                 or a custom name matching [a-z_][a-z0-9_]*",
            ));
        }
        let query = self.query.clone().ok_or_else(|| {
            PolicyError::missing(
                format!("{field}.query"),
                format!("a PromQL query template: `{name}` is not a built-in metric"),
            )
        })?;
        validate_query(&format!("{field}.query"), &query)?;
        Ok(query)
    }
}

/// A query template must be non-empty, use only known `{{placeholders}}`, and
/// select by `{{cohort}}` (otherwise canary and control read the same series).
fn validate_query(field: &str, query: &str) -> Result<(), PolicyError> {
    let shown = || format!("{query:?}");
    if query.trim().is_empty() {
        return Err(PolicyError::new(field, shown(), "a PromQL query template"));
    }
    let mut rest = query;
    let mut has_cohort = false;
    while let Some(open) = rest.find("{{") {
        let after_open = rest.get(open + 2..).unwrap_or_default();
        let Some(close) = after_open.find("}}") else {
            return Err(PolicyError::new(field, shown(), "every `{{` closed by `}}`"));
        };
        let placeholder = after_open.get(..close).unwrap_or_default().trim();
        if !QUERY_PLACEHOLDERS.contains(&placeholder) {
            return Err(PolicyError::new(
                field,
                shown(),
                format!(
                    "placeholders among {{{{cohort}}}}, {{{{deployment}}}}, {{{{window}}}}, not {{{{{placeholder}}}}}"
                ),
            ));
        }
        has_cohort |= placeholder == "cohort";
        rest = after_open.get(close + 2..).unwrap_or_default();
    }
    if !has_cohort {
        return Err(PolicyError::new(field, shown(), "a `{{cohort}}` placeholder selecting canary or control"));
    }
    Ok(())
}

impl RawNotify {
    /// Accepts the redacted form too (audit records are read back through here);
    /// [`RolloutPolicy::from_yaml`] refuses it for policies people write.
    fn validate(self) -> Result<Notify, PolicyError> {
        let url = self.webhook_url.ok_or_else(|| PolicyError::missing("spec.notify.webhook_url", "an http(s) URL"))?;
        let webhook_url = WebhookUrl::parse_stored(&url)
            .map_err(|e| PolicyError::new("spec.notify.webhook_url", e.shown, e.expected))?;
        Ok(Notify { webhook_url })
    }
}

// ---------------------------------------------------------------------------
// Back to the document, every default explicit (for snapshots and fingerprints).

impl From<RolloutPolicy> for RawDocument {
    fn from(policy: RolloutPolicy) -> RawDocument {
        let ladder = policy
            .ladder
            .iter()
            .map(|step| RawStep {
                share: Some(percent_value(step.share_bp)),
                window: Some(format_duration(step.window)),
            })
            .collect();
        let metrics = policy.metrics.iter().map(RawMetric::from).collect();
        RawDocument {
            api_version: Some(API_VERSION.to_string()),
            kind: Some(KIND.to_string()),
            metadata: Some(RawMetadata { name: Some(policy.name), labels: None, annotations: None }),
            spec: Some(RawSpec {
                deployment: Some(policy.deployment),
                ladder: Some(ladder),
                default_window: None,
                check_interval: Some(format_duration(policy.check_interval)),
                alpha: Some(policy.alpha),
                min_requests_per_cohort: Some(policy.min_requests_per_cohort),
                // Written only when set otherwise: policies without them keep their fingerprint.
                fleet_deadline: (policy.fleet_deadline != defaults::FLEET_DEADLINE)
                    .then(|| format_duration(policy.fleet_deadline)),
                stall_after_windows: (policy.stall_after_windows != defaults::STALL_AFTER_WINDOWS)
                    .then_some(policy.stall_after_windows),
                metrics: Some(metrics),
                notify: policy.notify.map(|n| RawNotify { webhook_url: Some(n.webhook_url.stored_text()) }),
            }),
        }
    }
}

impl From<&MetricPolicy> for RawMetric {
    fn from(policy: &MetricPolicy) -> RawMetric {
        let mut raw = RawMetric {
            name: Some(policy.name().to_string()),
            critical: Some(policy.critical),
            ..RawMetric::default()
        };
        match &policy.metric {
            Metric::ErrorRate { max_relative_increase } => raw.max_relative_increase = Some(*max_relative_increase),
            Metric::Latency { tolerance, .. } => {
                raw.max_increase_ms = tolerance.max_increase_ms;
                raw.max_relative_increase = tolerance.max_relative_increase;
            }
            Metric::SampleRatio { max_relative_deviation } => {
                raw.max_relative_deviation = Some(*max_relative_deviation)
            }
            Metric::Custom(custom) => {
                raw.query = Some(custom.query.clone());
                raw.max_relative_increase = custom.max_relative_increase;
                raw.max_absolute_increase = custom.max_absolute_increase;
            }
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata:\n  name: checkout\n\
                           spec:\n  deployment: checkout\n";

    fn parse(spec_extra: &str) -> Result<RolloutPolicy, PolicyError> {
        RolloutPolicy::from_yaml(&format!("{MINIMAL}{spec_extra}"))
    }

    #[test]
    fn the_shipped_example_parses() {
        let policy = RolloutPolicy::from_yaml(include_str!("../examples/policy.yaml")).unwrap();
        assert_eq!(policy.name, "checkout-canary");
        assert_eq!(policy.deployment, "checkout");
        let shares: Vec<u32> = policy.ladder.iter().map(|s| s.share_bp).collect();
        assert_eq!(shares, [50, 500, 2_500, 5_000, 10_000]);
        assert_eq!(policy.ladder[0].window, Duration::from_secs(120));
        assert_eq!(policy.ladder[1].window, Duration::from_secs(600));
        assert_eq!(policy.check_interval, Duration::from_secs(30));
        assert!(policy.critical_metrics().count() == 2);
        assert!(policy.metrics.iter().any(|m| matches!(m.metric, Metric::Custom(_))));
        assert!(policy.notify.is_some());
    }

    #[test]
    fn defaults_fill_a_minimal_policy() {
        let policy = parse("").unwrap();
        let shares: Vec<u32> = policy.ladder.iter().map(|s| s.share_bp).collect();
        assert_eq!(shares, [100, 500, 2_500, 5_000, 10_000]);
        assert!(policy.ladder.iter().all(|s| s.window == defaults::STEP_WINDOW));
        assert_eq!(policy.check_interval, defaults::CHECK_INTERVAL);
        assert_eq!(policy.alpha, 0.05);
        assert_eq!(policy.min_requests_per_cohort, 1_000);
        let names: Vec<&str> = policy.metrics.iter().map(MetricPolicy::name).collect();
        assert_eq!(names, ["error_rate", "latency_p99", "sample_ratio"]);
        let critical: Vec<bool> = policy.metrics.iter().map(|m| m.critical).collect();
        assert_eq!(critical, [true, true, false], "the split is reported, not critical, by default");
        assert_eq!(policy.notify, None);
        let with_window = parse("  default_window: 90s\n").unwrap();
        assert!(with_window.ladder.iter().all(|s| s.window == Duration::from_secs(90)));
    }

    #[test]
    fn report_metric_names_match_the_statistics_rows() {
        use crate::stats::{LatencyComparison, LatencySettings, REPORTED_QUANTILES};
        let bounds = canary_core::metrics::LATENCY_BUCKETS_US;
        let comparison = LatencyComparison::new(&bounds, LatencySettings::with_tolerance_us(1.0)).unwrap();
        let rows: Vec<String> = comparison.rows(0.05, 1).unwrap().into_iter().map(|r| r.metric).collect();
        let ours: Vec<String> = LatencyQuantile::ALL
            .iter()
            .map(|&quantile| {
                let tolerance = LatencyTolerance { max_increase_ms: Some(1.0), max_relative_increase: None };
                MetricPolicy { metric: Metric::Latency { quantile, tolerance }, critical: true }.report_metric()
            })
            .collect();
        assert_eq!(rows, ours);
        let fractions: Vec<f64> = LatencyQuantile::ALL.iter().map(|q| q.fraction()).collect();
        assert_eq!(fractions, REPORTED_QUANTILES);
    }

    #[test]
    fn latency_tolerances_become_microseconds() {
        let both = LatencyTolerance { max_increase_ms: Some(50.0), max_relative_increase: Some(0.2) };
        assert_eq!(both.allowed_increase_us(Some(100_000.0)), Some(50_000.0));
        assert_eq!(both.allowed_increase_us(Some(400_000.0)), Some(80_000.0));
        assert_eq!(both.allowed_increase_us(None), Some(50_000.0));
        let relative = LatencyTolerance { max_increase_ms: None, max_relative_increase: Some(0.2) };
        assert_eq!(relative.allowed_increase_us(None), None);
        assert_eq!(relative.allowed_increase_us(Some(1_000.0)), Some(200.0));
    }

    #[test]
    fn fractional_shares_and_durations_parse() {
        let policy =
            parse("  ladder:\n    - {share: 0.5, window: 1h30m}\n    - {share: 12.25}\n    - {share: 100}\n").unwrap();
        assert_eq!(policy.ladder[0], LadderStep { share_bp: 50, window: Duration::from_secs(5_400) });
        assert_eq!(policy.ladder[1].share_bp, 1_225);
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        for bad in ["", "5", "m", "5 m", "1.5s", "5d", "-5s", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        for text in ["1h30m", "45s", "1500ms", "2h", "1h1s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn serialising_round_trips_with_defaults_explicit() {
        let policy = RolloutPolicy::from_yaml(include_str!("../examples/policy.yaml")).unwrap();
        let yaml = policy.to_yaml().unwrap();
        assert_eq!(RolloutPolicy::from_yaml(&yaml).unwrap(), policy);
        let json = serde_json::to_string(&policy).unwrap();
        let back: RolloutPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, policy);
        assert_eq!(back.fingerprint(), policy.fingerprint());
        assert_eq!(policy.fingerprint().len(), 16);
        let minimal = parse("").unwrap();
        assert_ne!(minimal.fingerprint(), policy.fingerprint());
        let explicit = minimal.to_yaml().unwrap();
        assert!(explicit.contains("min_requests_per_cohort: 1000"), "{explicit}");
        assert!(explicit.contains("window: 5m"), "{explicit}");
        // Deserialising goes through validation too.
        let bad = json.replace("\"alpha\":0.05", "\"alpha\":2.0");
        assert!(serde_json::from_str::<RolloutPolicy>(&bad).unwrap_err().to_string().contains("spec.alpha"));
    }

    const SLACK: &str = "https://hooks.slack.com/services/T000/B000/SECRETSECRET";

    fn with_webhook(url: &str) -> RolloutPolicy {
        parse(&format!("  notify: {{webhook_url: '{url}'}}\n")).unwrap()
    }

    #[test]
    fn the_webhook_url_is_in_the_state_files_form_only() {
        let policy = with_webhook(SLACK);
        // The plain serialisation (state files) keeps the URL and reads back whole.
        let stored = serde_json::to_string(&policy).unwrap();
        assert!(stored.contains(SLACK));
        assert_eq!(serde_json::from_str::<RolloutPolicy>(&stored).unwrap(), policy);
        // The audit and API form does not, and reads back as a URL that cannot be posted to.
        let mut shown = Vec::new();
        RolloutPolicy::serialize_redacted(&policy, &mut serde_json::Serializer::new(&mut shown)).unwrap();
        let shown = String::from_utf8(shown).unwrap();
        assert!(!shown.contains("SECRETSECRET") && shown.contains("https://hooks.slack.com/…#xxh3:"), "{shown}");
        let back: RolloutPolicy = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, policy.redacted());
        assert!(back.notify.as_ref().unwrap().webhook_url.secret().is_none());
        assert!(!format!("{policy:?}").contains("SECRETSECRET"), "Debug is redacted too");
        // The fingerprint covers the URL (by its hash) and is the same for both forms.
        assert_eq!(back.fingerprint(), policy.fingerprint());
        assert_ne!(with_webhook(&SLACK.replace("SECRET", "OTHER")).fingerprint(), policy.fingerprint());
        assert_ne!(parse("").unwrap().fingerprint(), policy.fingerprint());
        // Written by a person, the redacted form is refused: nothing could be posted to it.
        let error = parse(&format!("  notify: {{webhook_url: '{}'}}\n", back.notify.unwrap().webhook_url)).unwrap_err();
        assert_eq!(error.field, "spec.notify.webhook_url");
        assert!(error.expected.contains("not the redacted form"), "{error}");
    }

    #[test]
    fn recovery_takes_the_webhook_url_from_a_policy_with_the_same_fingerprint() {
        let policy = with_webhook(SLACK);
        let redacted = policy.redacted();
        assert_eq!(redacted.clone().with_webhook_secret_from(Some(&policy)), policy);
        let other = with_webhook(&SLACK.replace("SECRET", "OTHER"));
        assert_eq!(redacted.clone().with_webhook_secret_from(Some(&other)), redacted, "another URL is not taken");
        assert_eq!(redacted.clone().with_webhook_secret_from(Some(&redacted)), redacted);
        assert_eq!(redacted.clone().with_webhook_secret_from(None), redacted);
        assert_eq!(policy.clone().with_webhook_secret_from(Some(&other)), policy, "a known URL stays");
    }

    #[test]
    fn ladder_helpers_find_steps() {
        let policy = parse("").unwrap();
        assert_eq!(policy.next_step_above(0).map(|(i, s)| (i, s.share_bp)), Some((0, 100)));
        assert_eq!(policy.next_step_above(500).map(|(i, s)| (i, s.share_bp)), Some((2, 2_500)));
        assert_eq!(policy.next_step_above(10_000), None);
        assert_eq!(policy.step_at_share(0), 0);
        assert_eq!(policy.step_at_share(700), 1);
        assert_eq!(policy.step_at_share(10_000), 4);
        assert_eq!(policy.step(4).map(|s| s.share_bp), Some(10_000));
        assert_eq!(policy.step(5), None);
    }

    /// Each bad document is refused naming the field, and the message says what was expected.
    #[test]
    fn errors_name_the_field_the_value_and_what_was_expected() {
        let header = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: a}\n";
        let spec = |body: &str| format!("{header}spec:\n  deployment: checkout\n{body}");
        let metric = |body: &str| spec(&format!("  metrics:\n    - {{{body}}}\n"));
        let cases: Vec<(String, &str, &str)> = vec![
            ("kind: RolloutPolicy\nmetadata: {name: a}\nspec: {deployment: a}".into(), "apiVersion", "v1alpha1"),
            (header.replace("v1alpha1", "v2"), "apiVersion", "v1alpha1"),
            (header.replace("kind: RolloutPolicy", "kind: Rollout"), "kind", "RolloutPolicy"),
            (header.replace("{name: a}", "{}"), "metadata.name", "policy name"),
            (header.replace("{name: a}", "{name: Checkout}"), "metadata.name", "Kubernetes name"),
            (header.to_string(), "spec", "specification"),
            (format!("{header}spec: {{}}"), "spec.deployment", "deployment id"),
            (format!("{header}spec: {{deployment: check.out}}"), "spec.deployment", "[A-Za-z0-9_-]"),
            (format!("{header}spec: {{deployment: {}}}", "a".repeat(64)), "spec.deployment", "1 to 63"),
            (spec("  colour: blue\n"), "spec", "unknown field `colour`"),
            (spec("  ladder: [{shar: 5}]\n"), "spec.ladder[0]", "unknown field `shar`"),
            (spec("  ladder: []\n"), "spec.ladder", "at least one step"),
            (spec("  ladder: [{window: 5m}]\n"), "spec.ladder[0].share", "share in percent"),
            (spec("  ladder: [{share: 0}, {share: 100}]\n"), "spec.ladder[0].share", "above 0"),
            (spec("  ladder: [{share: 101}]\n"), "spec.ladder[0].share", "at most 100"),
            (spec("  ladder: [{share: 0.001}, {share: 100}]\n"), "spec.ladder[0].share", "steps of 0.01"),
            (spec("  ladder: [{share: 5}, {share: 5}, {share: 100}]\n"), "spec.ladder[1].share", "must increase"),
            (spec("  ladder: [{share: 5}, {share: 50}]\n"), "spec.ladder[1].share", "last step at 100"),
            (spec("  ladder: [{share: 5, window: 5}, {share: 100}]\n"), "spec.ladder[0].window", "duration"),
            (spec("  ladder: [{share: 5, window: 0s}, {share: 100}]\n"), "spec.ladder[0].window", "positive"),
            (spec("  default_window: soon\n"), "spec.default_window", "duration"),
            (spec("  check_interval: 500ms\n"), "spec.check_interval", "at least 1s"),
            (spec("  check_interval: 1 minute\n"), "spec.check_interval", "duration"),
            (spec("  alpha: 0\n"), "spec.alpha", "(0, 0.5]"),
            (spec("  alpha: 0.9\n"), "spec.alpha", "(0, 0.5]"),
            (spec("  alpha: .nan\n"), "spec.alpha", "(0, 0.5]"),
            (spec("  min_requests_per_cohort: 0\n"), "spec.min_requests_per_cohort", "at least 1"),
            (spec("  min_requests_per_cohort: -1\n"), "spec.min_requests_per_cohort", "expected u64"),
            (spec("  metrics: []\n"), "spec.metrics", "critical: true"),
            (metric("name: error_rate, critical: false"), "spec.metrics", "critical: true"),
            (metric("critical: true"), "spec.metrics[0].name", "error_rate"),
            (metric("name: Error-Rate, query: x"), "spec.metrics[0].name", "[a-z_][a-z0-9_]*"),
            (metric("name: error_rate, max_relative_increase: -0.1"), "spec.metrics[0].max_relative_increase", ">= 0"),
            (metric("name: error_rate, max_increase_ms: 5"), "spec.metrics[0].max_increase_ms", "latency"),
            (metric("name: error_rate, query: 'up'"), "spec.metrics[0].query", "built-in"),
            (metric("name: latency_p99"), "spec.metrics[0].max_increase_ms", "max_increase_ms"),
            (metric("name: latency_p99, max_increase_ms: .inf"), "spec.metrics[0].max_increase_ms", "finite"),
            (metric("name: latency_p75, max_increase_ms: 5"), "spec.metrics[0].query", "not a built-in"),
            (
                metric("name: sample_ratio, max_relative_increase: 1"),
                "spec.metrics[0].max_relative_increase",
                "not set",
            ),
            (
                metric("name: latency_p99, max_relative_deviation: 1"),
                "spec.metrics[0].max_relative_deviation",
                "sample",
            ),
            (metric("name: error_rate, tolerance: 1"), "spec.metrics[0]", "unknown field `tolerance`"),
            (
                metric("name: orders, query: 'sum(x)', max_relative_increase: 0.1"),
                "spec.metrics[0].query",
                "{{cohort}}",
            ),
            (metric("name: orders, query: 'x{c=\"{{cohort\"}'"), "spec.metrics[0].query", "closed by"),
            (metric("name: orders, query: '{{cohort}} {{pod}}'"), "spec.metrics[0].query", "{{pod}}"),
            (metric("name: orders, query: '   '"), "spec.metrics[0].query", "PromQL"),
            (metric("name: orders, query: 'x{c=\"{{cohort}}\"}'"), "spec.metrics[0].max_relative_increase", "custom"),
            (metric("name: orders, max_relative_increase: 1"), "spec.metrics[0].query", "PromQL query template"),
            (spec("  metrics: [{name: error_rate}, {name: error_rate}]\n"), "spec.metrics[1].name", "unique"),
            (spec("  notify: {}\n"), "spec.notify.webhook_url", "URL"),
            (spec("  notify: {webhook_url: 'ftp://x'}\n"), "spec.notify.webhook_url", "https://"),
            (spec("  notify: {webhook_url: 'https://'}\n"), "spec.notify.webhook_url", "with a host"),
            ("- not a mapping".into(), "(document)", "RolloutPolicy"),
        ];
        for (text, field, expected) in cases {
            let error = RolloutPolicy::from_yaml(&text).expect_err(&text);
            assert_eq!(error.field, field, "{text}\n{error}");
            let message = error.to_string();
            assert!(message.contains(expected), "{text}\n{message}");
            assert!(message.starts_with("invalid rollout policy: field `"), "{message}");
        }
    }

    #[test]
    fn custom_metrics_and_latency_tolerances_are_typed() {
        let policy = parse(
            "  metrics:\n    - {name: error_rate, max_relative_increase: 0.2}\n    \
             - {name: latency_p99_9, max_relative_increase: 0.5, critical: false}\n    \
             - name: checkout_failures\n      \
             query: 'sum(rate(fail{cohort=\"{{ cohort }}\",d=\"{{deployment}}\"}[{{window}}]))'\n      \
             max_absolute_increase: 0.5\n",
        )
        .unwrap();
        assert_eq!(policy.metrics[0].metric, Metric::ErrorRate { max_relative_increase: 0.2 });
        assert_eq!(
            policy.metrics[1].metric,
            Metric::Latency {
                quantile: LatencyQuantile::P99_9,
                tolerance: LatencyTolerance { max_increase_ms: None, max_relative_increase: Some(0.5) }
            }
        );
        assert!(!policy.metrics[1].critical);
        assert_eq!(policy.metrics[1].report_metric(), "latency_p99_9_us");
        let Metric::Custom(custom) = &policy.metrics[2].metric else { panic!("custom expected") };
        assert_eq!(custom.name, "checkout_failures");
        assert_eq!(custom.max_absolute_increase, Some(0.5));
        assert_eq!(policy.metrics[2].report_metric(), "checkout_failures");
        assert!(policy.metrics[2].critical, "listed metrics are critical by default");
    }

    /// Found by `generated_policies_are_accepted_consistently_or_refused_by_field`
    /// (tests/parser_properties): serde_yaml_ng quotes an unknown key as written, so a
    /// key holding a line break, a tab or an escape character split the error over
    /// lines (the analyzer's start-up error, the CLI's output) or coloured a terminal.
    #[test]
    fn regression_unknown_keys_with_control_characters_are_refused_on_one_line() {
        for text in [
            "{'\n\n'",
            "\"\\t\": 1\n",
            "apiVersion: canary.wasm.dev/v1alpha1\n\"\\r\\0\\e[31m\": 1\n",
            "metadata: {labels: {\"a\\nb\": [1]}}\n",
        ] {
            let error = RolloutPolicy::from_yaml(text).unwrap_err();
            let line = error.to_string();
            assert!(!line.chars().any(char::is_control), "for {text:?}: {line:?}");
        }
    }

    /// Found by `deep_nesting_is_refused_in_bounded_time` (tests/parser_properties): the
    /// YAML parser's work per token grows with the nesting depth of `[`/`{`, so 100 000
    /// levels (a 200 KB register body) kept a core busy for 352 s in a debug build. At
    /// 20 000 levels this took ~17 s before the depth was bounded; now it is refused at once.
    #[test]
    fn regression_deep_flow_nesting_is_refused_in_linear_time() {
        for (open, close) in [("[", "]"), ("{a: ", "}")] {
            let deep =
                format!("apiVersion: canary.wasm.dev/v1alpha1\nspec: {}{}", open.repeat(20_000), close.repeat(20_000));
            let started = std::time::Instant::now();
            let error = RolloutPolicy::from_yaml(&deep).unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
            assert_eq!(error.field, "(document)");
            assert!(error.value.starts_with("line 2: more than 64 nested"), "{error}");
        }
        // Brackets inside PromQL templates and flow-style ladders are far below the bound.
        let policy = parse(
            "  ladder: [{share: 1, window: 1m}, {share: 100}]\n  metrics:\n    - {name: error_rate}\n\
             \x20   - {name: c, query: 'sum(rate(x{cohort=\"{{cohort}}\"}[{{window}}]))', max_relative_increase: 0.1}\n",
        );
        assert_eq!(policy.unwrap().ladder.len(), 2);
    }

    /// Found by `generated_policies_are_accepted_consistently_or_refused_by_field`
    /// (tests/parser_properties, 3 000 cases): serde_json's default float parser can miss
    /// by one ULP, so a policy read back from its state file or audit record (JSON) was
    /// not the policy written (2.120705760146268 came back as 2.1207057601462678) and
    /// its fingerprint changed: a restarted analyzer threw the saved evidence away.
    #[test]
    fn regression_a_policy_read_back_from_json_keeps_its_floats_and_fingerprint() {
        let policy = parse(
            "  alpha: 0.049999999999999996\n  metrics:\n\
             \x20   - {name: latency_p50, max_increase_ms: 2.120705760146268}\n\
             \x20   - {name: error_rate, max_relative_increase: 0.30000000000000004}\n",
        )
        .unwrap();
        let back: RolloutPolicy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
        assert_eq!(back, policy);
        assert_eq!(back.fingerprint(), policy.fingerprint());
    }

    /// Found by `register_bodies_are_registered_exactly_when_the_policy_parses`
    /// (tests/parser_properties, 1 500 cases): `max_increase_ms: 1e308` passed the policy's
    /// checks, but is infinite in microseconds, so registering it failed with "statistics:
    /// latency tolerance_us must be finite" naming no field (and a `--policy` file
    /// stopped the analyzer at start). The policy now refuses it by field.
    #[test]
    fn regression_a_latency_tolerance_infinite_in_microseconds_is_refused_by_field() {
        let error = parse("  metrics:\n    - {name: latency_p99, max_increase_ms: 1.0e308}\n").unwrap_err();
        assert_eq!(error.field, "spec.metrics[0].max_increase_ms", "{error}");
        let largest = parse("  metrics:\n    - {name: latency_p99, max_increase_ms: 1.0e305}\n").unwrap();
        assert!(crate::evaluation::RolloutEvaluation::new(&largest).is_ok());
    }

    /// Found by `register_bodies_are_registered_exactly_when_the_policy_parses`
    /// (tests/parser_properties, 1 500 cases): `check_interval: 5124095576030431h` parsed,
    /// then registering it panicked ("overflow when adding duration to instant"); step
    /// windows near `u64::MAX` seconds overflowed the checks-per-window arithmetic.
    #[test]
    fn regression_durations_beyond_a_year_are_refused_by_field() {
        for (extra, field) in [
            ("  check_interval: 5124095576030431h\n", "spec.check_interval"),
            ("  default_window: 8761h\n", "spec.ladder[0].window"),
            ("  ladder: [{share: 1, window: 18446744073709551615s}, {share: 100}]\n", "spec.ladder[0].window"),
        ] {
            let error = parse(extra).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(error.expected.contains("at most a year"), "{error}");
        }
        let year = parse("  check_interval: 8760h\n  default_window: 8760h\n").unwrap();
        assert_eq!(year.check_interval, MAX_DURATION);
    }

    /// The limits above are for policies people write: an audit record or state file an
    /// older analyzer wrote with such values still loads (a refused record would stop the
    /// analyzer at start as a corrupt audit log); the engine then reports it as broken.
    #[test]
    fn limits_of_written_policies_do_not_apply_to_records_read_back() {
        let mut policy = parse("  metrics:\n    - {name: latency_p99, max_increase_ms: 1}\n").unwrap();
        policy.check_interval = MAX_DURATION * 2;
        policy.ladder[0].window = MAX_DURATION * 2;
        policy.metrics[0].metric = Metric::Latency {
            quantile: LatencyQuantile::P99,
            tolerance: LatencyTolerance { max_increase_ms: Some(1e306), max_relative_increase: None },
        };
        let back: RolloutPolicy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
        assert_eq!(back, policy);
        assert!(RolloutPolicy::from_yaml(&policy.to_yaml().unwrap()).is_err(), "written, it is refused");
    }
}
