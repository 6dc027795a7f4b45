//! From the raw document to a [`RolloutPolicy`]: every rule a policy must follow,
//! each refusal naming the field path, the value and what was expected.

use std::collections::HashSet;
use std::time::Duration;

use super::document::{RawDocument, RawMetric, RawNotify, RawSpec, RawStep};
use super::rate_metric::{self, CounterPairMetric, OutcomeMetric};
use super::{
    API_VERSION, CustomMetric, ERROR_RATE, KIND, LadderStep, LatencyQuantile, LatencyTolerance, Metric, MetricPolicy,
    Notify, PolicyError, RolloutPolicy, SAMPLE_RATIO, WebhookUrl, defaults, parse_duration,
};
use crate::notify::{EventSet, RouteError, WebhookFormat};

/// The value of a ladder step's `approval` that makes it wait for an operator.
pub(super) const APPROVAL_REQUIRED: &str = "required";
/// The value that leaves a step automatic (the default).
const APPROVAL_NONE: &str = "none";

/// Longest accepted `metadata.name`: a Kubernetes DNS subdomain name.
const MAX_NAME_LEN: usize = 253;
/// Basis points in 1 %: ladder shares are written in percent and served in basis points.
const BASIS_POINTS_PER_PERCENT: f64 = 100.0;
/// The full share in basis points: the ladder must end there.
const FULL_SHARE_BP: u32 = 10_000;
/// Checking more often than once a second is busy-work: scrapes and polls are slower than that.
const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Placeholders a custom PromQL query template may use.
const QUERY_PLACEHOLDERS: [&str; 3] = ["cohort", "deployment", "window"];

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
        let source = self.source.map(|raw| raw.validate()).transpose()?;
        if source.is_some()
            && let Some((position, Metric::Outcome(outcome))) =
                metrics.iter().map(|m| &m.metric).enumerate().find(|(_, m)| matches!(m, Metric::Outcome(_)))
        {
            return Err(PolicyError::new(
                format!("spec.metrics[{position}].outcome"),
                format!("{:?}", outcome.outcome),
                "no filter outcome with spec.source (the mesh's metrics do not count the filter's outcomes; \
                 use a numerator/denominator PromQL pair)",
            ));
        }
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
            source,
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
                    approval_required: false,
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
        let approval_required = match step.approval.as_deref() {
            None | Some(APPROVAL_NONE) => false,
            Some(APPROVAL_REQUIRED) => true,
            Some(other) => {
                return Err(PolicyError::new(
                    format!("{field}.approval"),
                    format!("{other:?}"),
                    format!(
                        "{APPROVAL_REQUIRED} (wait for `canary-analyzer approve` after the window) or {APPROVAL_NONE}"
                    ),
                ));
            }
        };
        steps.push(LadderStep { share_bp: bp, window, approval_required });
    }
    if let Some((i, _)) = steps.iter().enumerate().next_back().filter(|(_, step)| step.approval_required) {
        return Err(PolicyError::new(
            format!("spec.ladder[{i}].approval"),
            APPROVAL_REQUIRED,
            "no approval on the last step (reaching it ends the rollout): put it on the step before",
        ));
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
pub(super) fn percent_value(bp: u32) -> f64 {
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
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            let unit = super::suggest::unit_of(&field).map_or(String::new(), |unit| format!(": {unit}"));
            Err(PolicyError::new(field, v, format!("a finite number >= 0{unit}")))
        }
        other => Ok(other),
    }
}

/// The metric names a policy may use without a query, as listed in refusals.
const BUILT_IN_METRICS: [&str; 6] =
    [ERROR_RATE, "latency_p50", "latency_p90", "latency_p99", "latency_p99_9", SAMPLE_RATIO];

impl RawMetric {
    fn validate(self, field: &str) -> Result<MetricPolicy, PolicyError> {
        if rate_metric::is_rate_metric(&self) {
            return self.validate_rate(field);
        }
        if let Some(direction) = &self.direction {
            return Err(PolicyError::new(
                format!("{field}.direction"),
                format!("{direction:?}"),
                "not set: it applies to `outcome` and `numerator`/`denominator` metrics",
            ));
        }
        if let Some(decrease) = self.max_relative_decrease {
            return Err(PolicyError::new(
                format!("{field}.max_relative_decrease"),
                decrease,
                "not set: it applies to `lower_is_worse` outcome and counter-pair metrics",
            ));
        }
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

    /// An outcome or counter-pair metric: its source, name (an outcome's defaults to
    /// the outcome), direction and tolerance.
    fn validate_rate(self, field: &str) -> Result<MetricPolicy, PolicyError> {
        let source = rate_metric::rate_source(&self, field)?;
        let name = match (&self.name, &source) {
            (Some(name), _) => name.clone(),
            (None, rate_metric::RateSource::Outcome(outcome)) => outcome.clone(),
            (None, rate_metric::RateSource::CounterPair { .. }) => {
                return Err(PolicyError::missing(format!("{field}.name"), "a name for the counter-pair metric"));
            }
        };
        let builtin = name == ERROR_RATE || name == SAMPLE_RATIO || LatencyQuantile::from_policy_name(&name).is_some();
        if builtin {
            return Err(PolicyError::new(
                format!("{field}.name"),
                format!("{name:?}"),
                "a name of its own: built-in metrics take no outcome or counter pair",
            ));
        }
        validate_custom_name(field, &name)?;
        let tolerance = rate_metric::rate_tolerance(&self, field)?;
        let critical = self.critical.unwrap_or(defaults::CRITICAL);
        let metric = match source {
            rate_metric::RateSource::Outcome(outcome) => Metric::Outcome(OutcomeMetric { name, outcome, tolerance }),
            rate_metric::RateSource::CounterPair { numerator, denominator } => {
                Metric::CounterPair(CounterPairMetric { name, numerator, denominator, tolerance })
            }
        };
        Ok(MetricPolicy { metric, critical })
    }

    /// A custom metric's name is checked, then its query template.
    fn custom_query(&self, field: &str, name: &str) -> Result<String, PolicyError> {
        validate_custom_name(field, name)?;
        // A name with no source of its own is most likely a misspelt built-in one.
        let query = self.query.clone().ok_or_else(|| {
            PolicyError::new(
                format!("{field}.name"),
                format!("{name:?}"),
                format!(
                    "a built-in metric ({}{}), or a custom metric with a `query` (PromQL), an `outcome`, or a \
                     `numerator` and `denominator`",
                    BUILT_IN_METRICS.join(", "),
                    super::suggest::did_you_mean(name, &BUILT_IN_METRICS)
                ),
            )
        })?;
        validate_query(&format!("{field}.query"), &query)?;
        Ok(query)
    }
}

/// A custom (PromQL, outcome or counter-pair) metric's name: `[a-z_][a-z0-9_]*`.
fn validate_custom_name(field: &str, name: &str) -> Result<(), PolicyError> {
    let starts_ok = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if !starts_ok || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(PolicyError::new(
            format!("{field}.name"),
            format!("{name:?}"),
            "a built-in metric (error_rate, latency_p50, latency_p90, latency_p99, latency_p99_9, sample_ratio) \
             or a custom name matching [a-z_][a-z0-9_]*",
        ));
    }
    Ok(())
}

/// A query template must be non-empty, use only known `{{placeholders}}`, and
/// select by `{{cohort}}` (otherwise canary and control read the same series).
pub(super) fn validate_query(field: &str, query: &str) -> Result<(), PolicyError> {
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

/// A refused format or event list, as a policy error naming its field.
fn route_error(error: RouteError) -> PolicyError {
    PolicyError::new(error.field, format!("{:?}", error.value), error.expected)
}

impl RawNotify {
    /// Accepts the redacted form too (audit records are read back through here);
    /// [`RolloutPolicy::from_yaml`] refuses it for policies people write.
    fn validate(self) -> Result<Notify, PolicyError> {
        let url = self.webhook_url.ok_or_else(|| PolicyError::missing("spec.notify.webhook_url", "an http(s) URL"))?;
        let webhook_url = WebhookUrl::parse_stored(&url)
            .map_err(|e| PolicyError::new("spec.notify.webhook_url", e.shown, e.expected))?;
        let format = match self.format.as_deref() {
            Some(name) => WebhookFormat::parse(name, "spec.notify.format").map_err(route_error)?,
            None => WebhookFormat::Slack,
        };
        let events = match self.events {
            Some(names) if names.is_empty() => {
                return Err(PolicyError::new("spec.notify.events", "[]", "at least one event, or leave it out"));
            }
            Some(names) => EventSet::parse(&names.join(","), "spec.notify.events").map_err(route_error)?,
            None => EventSet::default_events(),
        };
        Ok(Notify { webhook_url, format, events })
    }
}
