//! `spec.source`: where a rollout's request counts and latency come from when not
//! from the filter's own metrics — a preset (`istio`, `istio_seconds`,
//! `envoy_cluster`) with the cohort label's values, or a custom mapping naming every
//! metric and label. Validated into a [`MeshMapping`]; each refusal names the field,
//! the value and what was expected. Absent: the filter's metrics, as before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::PolicyError;
use crate::source::{LatencyUnit, MeshMapping, MeshPreset};

/// The block as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) preset: Option<String>,
    /// The request counter (custom mapping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) requests: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) status_label: Option<String>,
    /// The latency histogram's name without `_bucket` (custom mapping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) latency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cohort_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) canary: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) control: Option<Vec<String>>,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub(super) matchers: Option<BTreeMap<String, String>>,
}

const FIELD: &str = "spec.source";

impl RawSource {
    pub(super) fn validate(self) -> Result<MeshMapping, PolicyError> {
        let canary = cohort_values("canary", self.canary)?;
        let control = cohort_values("control", self.control)?;
        if let Some(shared) = canary.iter().find(|value| control.contains(value)) {
            return Err(PolicyError::new(
                format!("{FIELD}.control"),
                format!("{shared:?}"),
                "values not also listed under canary (a series is in one cohort)",
            ));
        }
        let matchers = self.matchers.unwrap_or_default();
        for label in matchers.keys() {
            label_name(&format!("{FIELD}.match"), label)?;
        }
        let custom_fields = [
            ("requests", &self.requests),
            ("status_label", &self.status_label),
            ("latency", &self.latency),
            ("unit", &self.unit),
            ("cohort_label", &self.cohort_label),
        ];
        if let Some(preset) = self.preset {
            if let Some((field, Some(value))) = custom_fields.iter().find(|(_, value)| value.is_some()) {
                return Err(PolicyError::new(
                    format!("{FIELD}.{field}"),
                    format!("{value:?}"),
                    "no metric or label names with a preset (the preset names them; leave out the preset for a custom mapping)",
                ));
            }
            let preset = MeshPreset::parse(&preset)
                .ok_or_else(|| PolicyError::new(format!("{FIELD}.preset"), format!("{preset:?}"), preset_names()))?;
            return Ok(MeshMapping::from_preset(preset, canary, control, matchers));
        }
        let required = |field: &str, value: Option<String>, expected: &str| {
            value.ok_or_else(|| {
                PolicyError::missing(
                    format!("{FIELD}.{field}"),
                    format!("{expected} (or a preset: {})", preset_names()),
                )
            })
        };
        let requests = required("requests", self.requests, "the request counter's name")?;
        metric_name(&format!("{FIELD}.requests"), &requests)?;
        let status_label = required("status_label", self.status_label, "the request counter's status code label")?;
        label_name(&format!("{FIELD}.status_label"), &status_label)?;
        let latency = required("latency", self.latency, "the latency histogram's name without _bucket")?;
        metric_name(&format!("{FIELD}.latency"), &latency)?;
        let unit = required("unit", self.unit, "the histogram's unit: us, ms or s")?;
        let latency_unit = LatencyUnit::parse(&unit)
            .ok_or_else(|| PolicyError::new(format!("{FIELD}.unit"), format!("{unit:?}"), "us, ms or s"))?;
        let cohort_label = required("cohort_label", self.cohort_label, "the label telling canary from control")?;
        label_name(&format!("{FIELD}.cohort_label"), &cohort_label)?;
        Ok(MeshMapping {
            preset: None,
            requests_metric: requests,
            status_label,
            latency_metric: latency,
            latency_unit,
            cohort_label,
            canary,
            control,
            matchers,
        })
    }
}

impl From<&MeshMapping> for RawSource {
    fn from(mapping: &MeshMapping) -> RawSource {
        let common = RawSource {
            canary: Some(mapping.canary.clone()),
            control: Some(mapping.control.clone()),
            matchers: (!mapping.matchers.is_empty()).then(|| mapping.matchers.clone()),
            ..RawSource::default()
        };
        match mapping.preset {
            Some(preset) => RawSource { preset: Some(preset.label().to_string()), ..common },
            None => RawSource {
                requests: Some(mapping.requests_metric.clone()),
                status_label: Some(mapping.status_label.clone()),
                latency: Some(mapping.latency_metric.clone()),
                unit: Some(mapping.latency_unit.label().to_string()),
                cohort_label: Some(mapping.cohort_label.clone()),
                ..common
            },
        }
    }
}

fn preset_names() -> String {
    let names: Vec<&str> = MeshPreset::ALL.into_iter().map(MeshPreset::label).collect();
    format!("one of {}", names.join(", "))
}

/// A cohort's label values: at least one, none empty or repeated.
fn cohort_values(cohort: &str, values: Option<Vec<String>>) -> Result<Vec<String>, PolicyError> {
    let field = format!("{FIELD}.{cohort}");
    let values = values.ok_or_else(|| {
        PolicyError::missing(&field, format!("the cohort label's values of the {cohort} (a list, at least one)"))
    })?;
    if values.is_empty() {
        return Err(PolicyError::new(&field, "[]", "at least one value of the cohort label"));
    }
    for (position, value) in values.iter().enumerate() {
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(PolicyError::new(
                format!("{field}[{position}]"),
                format!("{value:?}"),
                "a label value: not empty, no control characters",
            ));
        }
        if values.iter().take(position).any(|earlier| earlier == value) {
            return Err(PolicyError::new(format!("{field}[{position}]"), format!("{value:?}"), "each value once"));
        }
    }
    Ok(values)
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn metric_name(field: &str, name: &str) -> Result<(), PolicyError> {
    prometheus_name(field, name, true, "a Prometheus metric name: [a-zA-Z_:][a-zA-Z0-9_:]*")
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn label_name(field: &str, name: &str) -> Result<(), PolicyError> {
    prometheus_name(field, name, false, "a Prometheus label name: [a-zA-Z_][a-zA-Z0-9_]*")
}

fn prometheus_name(field: &str, name: &str, colons: bool, expected: &str) -> Result<(), PolicyError> {
    let allowed = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (colons && c == ':') || (!first && c.is_ascii_digit())
    };
    let mut characters = name.chars();
    let valid = characters.next().is_some_and(|c| allowed(c, true)) && characters.all(|c| allowed(c, false));
    if valid { Ok(()) } else { Err(PolicyError::new(field, format!("{name:?}"), expected)) }
}

#[cfg(test)]
mod tests {
    use super::super::RolloutPolicy;
    use crate::source::{LatencyUnit, MeshPreset};

    const MINIMAL: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata:\n  name: orders\n\
                           spec:\n  deployment: orders\n";

    fn parse(source: &str) -> Result<RolloutPolicy, String> {
        RolloutPolicy::from_yaml(&format!("{MINIMAL}  source: {source}\n")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_preset_names_the_metrics_and_the_policy_names_the_cohorts() {
        let policy = parse("{preset: envoy_cluster, canary: [orders-canary], control: [orders-stable]}").unwrap();
        let mapping = policy.source.clone().unwrap();
        assert_eq!(mapping.preset, Some(MeshPreset::EnvoyCluster));
        assert_eq!(
            (mapping.requests_metric.as_str(), mapping.latency_metric.as_str(), mapping.cohort_label.as_str()),
            ("envoy_cluster_upstream_rq", "envoy_cluster_upstream_rq_time", "envoy_cluster_name")
        );
        assert_eq!((mapping.canary, mapping.control), (vec!["orders-canary".into()], vec!["orders-stable".into()]));
        // Written back as the preset, and read again as the same policy.
        let yaml = policy.to_yaml().unwrap();
        assert!(yaml.contains("preset: envoy_cluster"), "{yaml}");
        assert!(!yaml.contains("envoy_cluster_upstream_rq"), "{yaml}");
        assert_eq!(RolloutPolicy::from_yaml(&yaml).unwrap(), policy);

        let istio =
            parse("{preset: istio, canary: [v2], control: [v1], match: {destination_service_name: orders}}").unwrap();
        let mapping = istio.source.unwrap();
        assert_eq!(mapping.latency_unit, LatencyUnit::Milliseconds);
        assert_eq!(mapping.matchers.get("destination_service_name").map(String::as_str), Some("orders"));
        let seconds = parse("{preset: istio_seconds, canary: [v2], control: [v1]}").unwrap().source.unwrap();
        assert_eq!(seconds.latency_unit, LatencyUnit::Seconds);
    }

    #[test]
    fn a_custom_mapping_names_every_metric_and_label() {
        let policy = parse(
            "{requests: http_requests_total, status_label: code, latency: http_duration_seconds, unit: s, \
             cohort_label: track, canary: [canary], control: [stable, main]}",
        )
        .unwrap();
        let mapping = policy.source.clone().unwrap();
        assert_eq!(mapping.preset, None);
        assert_eq!(mapping.latency_unit, LatencyUnit::Seconds);
        assert_eq!(mapping.control, ["stable", "main"]);
        assert_eq!(RolloutPolicy::from_yaml(&policy.to_yaml().unwrap()).unwrap(), policy);
        // No source: the filter's metrics, and nothing written.
        let plain = RolloutPolicy::from_yaml(MINIMAL).unwrap();
        assert_eq!(plain.source, None);
        assert!(!plain.to_yaml().unwrap().contains("source"));
    }

    #[test]
    fn refusals_name_the_field_the_value_and_what_was_expected() {
        let cases = [
            (
                "{preset: linkerd, canary: [a], control: [b]}",
                "`spec.source.preset` = \"linkerd\": expected one of istio, istio_seconds, envoy_cluster",
            ),
            ("{preset: istio, control: [v1]}", "`spec.source.canary` = (missing)"),
            ("{preset: istio, canary: [], control: [v1]}", "`spec.source.canary` = []: expected at least one value"),
            (
                "{preset: istio, canary: [v2, v1], control: [v1]}",
                "`spec.source.control` = \"v1\": expected values not also listed under canary",
            ),
            (
                "{preset: istio, canary: [v2, v2], control: [v1]}",
                "`spec.source.canary[1]` = \"v2\": expected each value once",
            ),
            ("{preset: istio, canary: [''], control: [v1]}", "`spec.source.canary[0]` = \"\": expected a label value"),
            (
                "{preset: istio, unit: s, canary: [v2], control: [v1]}",
                "`spec.source.unit` = \"s\": expected no metric or label names with a preset",
            ),
            (
                "{preset: istio, canary: [v2], control: [v1], match: {9lives: x}}",
                "`spec.source.match` = \"9lives\": expected a Prometheus label name",
            ),
            (
                "{requests: x, canary: [v2], control: [v1]}",
                "`spec.source.status_label` = (missing): expected the request counter's status code label (or a preset: one of istio",
            ),
            (
                "{requests: 'a-b', status_label: c, latency: l, unit: ms, cohort_label: v, canary: [v2], control: [v1]}",
                "`spec.source.requests` = \"a-b\": expected a Prometheus metric name",
            ),
            (
                "{requests: a, status_label: c, latency: l, unit: minutes, cohort_label: v, canary: [v2], control: [v1]}",
                "`spec.source.unit` = \"minutes\": expected us, ms or s",
            ),
            (
                "{requests: a, status_label: c, latency: l, unit: ms, cohort_label: 'a:b', canary: [v2], control: [v1]}",
                "`spec.source.cohort_label` = \"a:b\": expected a Prometheus label name",
            ),
            ("{preset: istio, canary: [v2], control: [v1], version: 2}", "unknown field"),
        ];
        for (source, expected) in cases {
            let error = parse(source).unwrap_err();
            assert!(error.contains(expected), "{source}: {error}");
        }
    }

    #[test]
    fn filter_outcomes_are_refused_with_a_mesh_source() {
        let error = RolloutPolicy::from_yaml(&format!(
            "{MINIMAL}  source: {{preset: istio, canary: [v2], control: [v1]}}\n  metrics:\n  \
             - {{name: error_rate}}\n  - {{name: cache_hits, outcome: cache_hit, direction: lower_is_worse, max_relative_decrease: 0.1}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("`spec.metrics[1].outcome` = \"cache_hit\": expected no filter outcome"), "{error}");
    }
}
