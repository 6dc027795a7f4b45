//! The policy document as serde reads and writes it: the raw YAML/JSON shape, every
//! field optional, unknown fields refused. [`super::validate`] turns it into a
//! [`RolloutPolicy`]; the way back writes every default explicitly, so a snapshot in
//! the audit log reloads as the same policy with the same fingerprint. Also the error
//! texts of the YAML parser, brought to one line and to a field where they name one.

use crate::notify::WebhookFormat;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::source::RawSource;
use super::validate::percent_value;
use super::{API_VERSION, KIND, Metric, MetricPolicy, PolicyError, RolloutPolicy, defaults, format_duration};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocument {
    #[serde(rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    pub(super) api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) metadata: Option<RawMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) spec: Option<RawSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[expect(dead_code, reason = "accepted for Kubernetes tooling, not used")]
    #[serde(default, skip_serializing)]
    pub(super) labels: Option<BTreeMap<String, String>>,
    #[expect(dead_code, reason = "accepted for Kubernetes tooling, not used")]
    #[serde(default, skip_serializing)]
    pub(super) annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) deployment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ladder: Option<Vec<RawStep>>,
    /// Window of the steps that give none (and of the default ladder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) default_window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) check_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) alpha: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) min_requests_per_cohort: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) fleet_deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stall_after_windows: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) metrics: Option<Vec<RawMetric>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) notify: Option<RawNotify>,
    /// Where requests and latency come from when not from the filter (`source`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) source: Option<RawSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    /// Percent, fractions allowed down to one basis point (0.01).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) window: Option<String>,
    /// `required`: the step waits for an operator's approval after its window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) approval: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetric {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) critical: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_relative_increase: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_increase_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_absolute_increase: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_relative_deviation: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) query: Option<String>,
    /// A data-path outcome the filter counts (`rate_metric`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) outcome: Option<String>,
    /// A PromQL counter pair (`rate_metric`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) numerator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) denominator: Option<String>,
    /// `higher_is_worse` or `lower_is_worse`, for rate metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) direction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_relative_decrease: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) webhook_url: Option<String>,
    /// slack (the default), teams, discord, google-chat or json.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) format: Option<String>,
    /// The events posted (default: all but `hold`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) events: Option<Vec<String>>,
}

/// serde_yaml_ng prefixes errors inside the document with their path
/// ("spec.ladder[0]: unknown field ..."): name that field when it can. Keys are quoted
/// as written, so control characters are escaped to keep the error on one line. An
/// unknown field is named with its path, the valid names and the nearest of them; a
/// value of the wrong type with the unit its field is written in.
pub(super) fn yaml_error(error: &serde_yaml_ng::Error) -> PolicyError {
    let message = canary_core::config::one_line(&error.to_string());
    let (path, detail) = match message.split_once(": ") {
        Some((path, detail)) if !path.contains(' ') && !path.is_empty() => (Some(path), detail),
        _ => (None, message.as_str()),
    };
    // serde_yaml_ng ends its messages with the position: keep it beside the value.
    let (detail, at) = match detail.rsplit_once(" at line ") {
        Some((detail, position)) => (detail, format!(" (line {position})")),
        None => (detail, String::new()),
    };
    if let Some(refusal) = unknown_field(path, detail, &at) {
        return refusal;
    }
    let field = path.unwrap_or("(document)");
    let wrong_value = detail.strip_prefix("invalid type: ").or_else(|| detail.strip_prefix("invalid value: "));
    if let Some((found, expected)) = wrong_value.and_then(|d| d.split_once(", expected ")) {
        let expected = match super::suggest::unit_of(field) {
            Some(unit) => unit.to_string(),
            None if path.is_none() => "a RolloutPolicy document: a mapping of apiVersion, kind, metadata, spec".into(),
            // serde names its own types ("struct RawStep"): the document has mappings.
            None if expected.starts_with("struct ") => "a mapping of fields".into(),
            None => expected.to_string(),
        };
        return PolicyError::new(field, format!("{found}{at}"), expected);
    }
    PolicyError::new(field, format!("(as written){at}"), format!("a valid RolloutPolicy document: {detail}"))
}

/// ``unknown field `check_intervall`, expected one of `deployment`, …`` as a refusal
/// of `spec.check_intervall` listing the valid names and suggesting the nearest.
fn unknown_field(path: Option<&str>, detail: &str, at: &str) -> Option<PolicyError> {
    let rest = detail.strip_prefix("unknown field `")?;
    let (name, expected) = rest.split_once('`')?;
    // serde lists the valid names in backticks: "expected one of `a`, `b`", "expected `a` or `b`".
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let listed = valid.join(", ");
    let suggestion = super::suggest::did_you_mean(name, &valid);
    let expected = format!("one of {listed}{suggestion}");
    Some(match path {
        Some(path) => PolicyError::new(format!("{path}.{name}"), format!("(unknown field){at}"), expected),
        // At the top a key is no field path: the document is the field, the key its value.
        None => PolicyError::new("(document)", format!("unknown field `{name}`{at}"), expected),
    })
}

/// Deepest nesting of `[` and `{` a policy document may have. A policy needs 3 levels
/// (`spec: {ladder: [{share: 1}]}`) and a PromQL template adds a few, counted as if
/// outside quotes. The YAML parser's work per token grows with this depth: 8 000 levels
/// took 2.8 s and 100 000 (a 200 KB body) 352 s in a debug build.
const MAX_FLOW_NESTING: usize = 64;

/// Refuses a document nested deeper than [`MAX_FLOW_NESTING`] before the YAML parser sees
/// it, naming the line: one pass over the bytes, so parsing stays linear in the text.
pub(super) fn check_flow_nesting(text: &str) -> Result<(), PolicyError> {
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

impl From<RolloutPolicy> for RawDocument {
    fn from(policy: RolloutPolicy) -> RawDocument {
        let ladder = policy
            .ladder
            .iter()
            .map(|step| RawStep {
                share: Some(percent_value(step.share_bp)),
                window: Some(format_duration(step.window)),
                // Written only when required: policies without approvals keep their fingerprint.
                approval: step.approval_required.then(|| super::validate::APPROVAL_REQUIRED.to_string()),
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
                // Format and events written only when set otherwise: older policies keep their fingerprint.
                notify: policy.notify.map(|n| RawNotify {
                    webhook_url: Some(n.webhook_url.stored_text()),
                    format: (n.format != WebhookFormat::Slack).then(|| n.format.name().to_string()),
                    events: (!n.events.is_default())
                        .then(|| n.events.to_string().split(',').map(str::to_string).collect()),
                }),
                source: policy.source.as_ref().map(RawSource::from),
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
            Metric::Outcome(outcome) => {
                raw.outcome = Some(outcome.outcome.clone());
                outcome.tolerance.write(&mut raw);
            }
            Metric::CounterPair(pair) => {
                raw.numerator = Some(pair.numerator.clone());
                raw.denominator = Some(pair.denominator.clone());
                pair.tolerance.write(&mut raw);
            }
        }
        raw
    }
}
