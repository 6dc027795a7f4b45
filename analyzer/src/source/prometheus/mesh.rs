//! A mesh's own telemetry as the source, pure: a [`MeshMapping`] names a request
//! counter with a status label, a latency histogram with its unit, and the label whose
//! values tell canary from control (Istio's `destination_version`, Envoy's cluster
//! name). It turns that into the same PromQL answers the filter's metrics give — one
//! row per `cohort` and `class`, one per `cohort` and `le` — by relabelling inside
//! Prometheus (`label_replace`), so the answer readers and every statistic run on it
//! unchanged. The windows tile exactly as the filter's do ([`tiled_series`]).
//!
//! Presets ([`MeshPreset`]) fill in the metric and label names of Istio's standard
//! metrics and of Envoy's per-cluster upstream stats; a policy names only the cohort
//! label's values (and, for Istio, which service).

use std::collections::BTreeMap;
use std::time::Duration;

use super::api::{escape_label_value, tiled_series};
use crate::source::latency::LatencyUnit;

/// A named set of metric and label names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshPreset {
    /// `istio_requests_total` (`response_code`) and
    /// `istio_request_duration_milliseconds`, cohorts by `destination_version`.
    Istio,
    /// As [`MeshPreset::Istio`] with the seconds histogram `istio_request_duration_seconds`.
    IstioSeconds,
    /// Envoy's per-cluster upstream stats as `/stats/prometheus` writes them:
    /// `envoy_cluster_upstream_rq` (`envoy_response_code`) and
    /// `envoy_cluster_upstream_rq_time` (ms), cohorts by `envoy_cluster_name`.
    EnvoyCluster,
}

impl MeshPreset {
    pub const ALL: [MeshPreset; 3] = [MeshPreset::Istio, MeshPreset::IstioSeconds, MeshPreset::EnvoyCluster];

    /// How a policy names the preset.
    pub fn label(self) -> &'static str {
        match self {
            MeshPreset::Istio => "istio",
            MeshPreset::IstioSeconds => "istio_seconds",
            MeshPreset::EnvoyCluster => "envoy_cluster",
        }
    }

    pub fn parse(text: &str) -> Option<MeshPreset> {
        MeshPreset::ALL.into_iter().find(|preset| preset.label() == text)
    }

    /// (request counter, status label, histogram, unit, cohort label).
    fn names(self) -> (&'static str, &'static str, &'static str, LatencyUnit, &'static str) {
        match self {
            MeshPreset::Istio => (
                "istio_requests_total",
                "response_code",
                "istio_request_duration_milliseconds",
                LatencyUnit::Milliseconds,
                "destination_version",
            ),
            MeshPreset::IstioSeconds => (
                "istio_requests_total",
                "response_code",
                "istio_request_duration_seconds",
                LatencyUnit::Seconds,
                "destination_version",
            ),
            MeshPreset::EnvoyCluster => (
                "envoy_cluster_upstream_rq",
                "envoy_response_code",
                "envoy_cluster_upstream_rq_time",
                LatencyUnit::Milliseconds,
                "envoy_cluster_name",
            ),
        }
    }
}

/// Where a rollout's request counts and latency come from when not from the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshMapping {
    /// The preset the names came from, if any (written back instead of the names).
    pub preset: Option<MeshPreset>,
    /// A counter of finished requests, one series per status (`istio_requests_total`).
    pub requests_metric: String,
    /// Its label holding the HTTP status code (`503`) or class digit (`5`); `0` is a
    /// request that got no response (Istio's convention), counted as a reset.
    pub status_label: String,
    /// The histogram's name without `_bucket`.
    pub latency_metric: String,
    pub latency_unit: LatencyUnit,
    /// The label whose values tell the cohorts apart, on both metrics.
    pub cohort_label: String,
    /// Its values that are the canary (at least one; disjoint from `control`).
    pub canary: Vec<String>,
    /// Its values that are the control.
    pub control: Vec<String>,
    /// Further label equalities both metrics must match (`destination_service_name: orders`).
    pub matchers: BTreeMap<String, String>,
}

impl MeshMapping {
    /// A preset's names with the cohort values and matchers.
    pub fn from_preset(
        preset: MeshPreset,
        canary: Vec<String>,
        control: Vec<String>,
        matchers: BTreeMap<String, String>,
    ) -> MeshMapping {
        let (requests, status, latency, unit, cohort) = preset.names();
        MeshMapping {
            preset: Some(preset),
            requests_metric: requests.to_string(),
            status_label: status.to_string(),
            latency_metric: latency.to_string(),
            latency_unit: unit,
            cohort_label: cohort.to_string(),
            canary,
            control,
            matchers,
        }
    }

    /// Requests per `cohort` and `class` in the `window` before the evaluation time,
    /// the shape of the filter's requests query.
    pub fn requests_query(&self, window: Duration) -> String {
        let series = tiled_series(&self.selector(&self.requests_metric), window);
        let with_class = label_replace(
            &label_replace(&self.with_cohort(&series), "class", "${1}xx", &self.status_label, "([1-5])([0-9][0-9])?"),
            "class",
            "reset",
            &self.status_label,
            "0",
        );
        format!("sum by (cohort, class) ({with_class})")
    }

    /// Observations per `cohort` and `le` bucket (in [`Self::latency_unit`]) in the
    /// `window` before the evaluation time.
    pub fn latency_query(&self, window: Duration) -> String {
        let series = tiled_series(&self.selector(&format!("{}_bucket", self.latency_metric)), window);
        format!("sum by (cohort, le) ({})", self.with_cohort(&series))
    }

    /// `metric{cohort_label=~"values", matchers...}`.
    fn selector(&self, metric: &str) -> String {
        let all_values = alternatives(self.canary.iter().chain(&self.control));
        let mut matchers = vec![format!("{}=~\"{}\"", self.cohort_label, escape_label_value(&all_values))];
        matchers
            .extend(self.matchers.iter().map(|(label, value)| format!("{label}=\"{}\"", escape_label_value(value))));
        format!("{metric}{{{}}}", matchers.join(", "))
    }

    /// `series` with a `cohort` label of `canary` or `control` from the cohort label's value.
    fn with_cohort(&self, series: &str) -> String {
        let canary = label_replace(series, "cohort", "canary", &self.cohort_label, &alternatives(&self.canary));
        label_replace(&canary, "cohort", "control", &self.cohort_label, &alternatives(&self.control))
    }
}

/// `label_replace(expression, destination, replacement, source, regex)`, the regex
/// escaped as a PromQL string (Prometheus anchors it at both ends).
fn label_replace(expression: &str, destination: &str, replacement: &str, source: &str, regex: &str) -> String {
    format!(
        "label_replace({expression}, \"{destination}\", \"{replacement}\", \"{source}\", \"{}\")",
        escape_label_value(regex)
    )
}

/// A regex matching exactly one of `values` (each taken literally).
fn alternatives<'a>(values: impl IntoIterator<Item = &'a String>) -> String {
    values.into_iter().map(|value| regex_literal(value)).collect::<Vec<_>>().join("|")
}

/// `value` with RE2's metacharacters escaped, so a cluster name such as
/// `outbound|8080|v2|orders.default.svc.cluster.local` matches only itself.
fn regex_literal(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        if "\\.+*?()|[]{}^$".contains(character) {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn envoy_clusters() -> MeshMapping {
        MeshMapping::from_preset(
            MeshPreset::EnvoyCluster,
            vec!["canary".into()],
            vec!["stable".into()],
            BTreeMap::new(),
        )
    }

    #[test]
    fn the_envoy_cluster_preset_relabels_clusters_to_cohorts_and_codes_to_classes() {
        let query = envoy_clusters().requests_query(WINDOW);
        assert!(query.starts_with("sum by (cohort, class) (label_replace(label_replace(label_replace(label_replace("));
        assert!(
            query.contains(
                r#"last_over_time(envoy_cluster_upstream_rq{envoy_cluster_name=~"canary|stable"}[300000ms] offset 60000ms)"#
            ),
            "{query}"
        );
        assert!(query.contains(r#""cohort", "canary", "envoy_cluster_name", "canary")"#), "{query}");
        assert!(query.contains(r#""cohort", "control", "envoy_cluster_name", "stable")"#), "{query}");
        assert!(query.contains(r#""class", "${1}xx", "envoy_response_code", "([1-5])([0-9][0-9])?")"#), "{query}");
        assert!(query.ends_with(r#""class", "reset", "envoy_response_code", "0"))"#), "{query}");
        let latency = envoy_clusters().latency_query(WINDOW);
        assert!(latency.starts_with("sum by (cohort, le) (label_replace(label_replace("), "{latency}");
        assert!(latency.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=~\"canary|stable\"}"));
    }

    #[test]
    fn cohort_values_are_matched_literally_and_matchers_narrow_both_metrics() {
        let mapping = MeshMapping::from_preset(
            MeshPreset::Istio,
            vec!["v2".into(), "v2.1".into()],
            vec!["outbound|80|v1|a.b".into()],
            BTreeMap::from([("destination_service_name".to_string(), "orders".to_string())]),
        );
        let query = mapping.requests_query(WINDOW);
        // The regex `v2|v2\.1|outbound\|80\|v1\|a\.b`, its backslashes doubled by PromQL's string escaping.
        let selector = r#"istio_requests_total{destination_version=~"v2|v2\\.1|outbound\\|80\\|v1\\|a\\.b", destination_service_name="orders"}"#;
        assert!(query.contains(selector), "{query}");
        let latency = mapping.latency_query(WINDOW);
        assert!(latency.contains("istio_request_duration_milliseconds_bucket{destination_version=~"), "{latency}");
        assert_eq!(mapping.latency_unit, LatencyUnit::Milliseconds);
        let seconds =
            MeshMapping::from_preset(MeshPreset::IstioSeconds, vec!["v2".into()], vec!["v1".into()], BTreeMap::new());
        assert!(seconds.latency_query(WINDOW).contains("istio_request_duration_seconds_bucket{"));
        assert_eq!(seconds.latency_unit, LatencyUnit::Seconds);
    }

    #[test]
    fn presets_and_units_read_back_from_their_labels() {
        for preset in MeshPreset::ALL {
            assert_eq!(MeshPreset::parse(preset.label()), Some(preset));
        }
        assert_eq!(MeshPreset::parse("linkerd"), None);
    }
}
