//! What `validate` and `register --dry-run` say about a policy: a one-line summary of
//! what it will do, and warnings about metrics the analyzer's source cannot read
//! (PromQL metrics on an analyzer without `--prometheus`, whose rows would say "not
//! enough data" for the whole rollout and, if critical, hold it until it stalls; a
//! `spec.source`, which such an analyzer refuses to register).

use crate::api::SourceKind;
use crate::policy::{RolloutPolicy, format_duration};
use crate::present::share;

/// `policy web for checkout: ladder 1 % → 5 % → … → 100 %, 5m windows, checks every 30s;
/// metrics error_rate (critical), latency_p99 (critical), sample_ratio`.
pub fn policy_summary(policy: &RolloutPolicy) -> String {
    let ladder: Vec<String> = policy.ladder.iter().map(|step| share(step.share_bp)).collect();
    let windows: Vec<String> = policy.ladder.iter().map(|step| format_duration(step.window)).collect();
    let mut distinct = windows.clone();
    distinct.dedup();
    let windows = if distinct.len() == 1 {
        format!("{} windows", distinct.join(""))
    } else {
        format!("windows {}", windows.join(", "))
    };
    let metrics: Vec<String> = policy
        .metrics
        .iter()
        .map(|m| if m.critical { format!("{} (critical)", m.name()) } else { m.name().to_string() })
        .collect();
    let source = policy.source.as_ref().map_or(String::new(), |mapping| {
        let origin = mapping.preset.map_or(mapping.requests_metric.as_str(), |preset| preset.label());
        format!(
            "; source {origin}: canary {} against control {}",
            mapping.canary.join(", "),
            mapping.control.join(", ")
        )
    });
    format!(
        "policy {} for {}: ladder {}, {windows}, checks every {}; metrics {}{source}",
        policy.name,
        policy.deployment,
        ladder.join(" → "),
        format_duration(policy.check_interval),
        metrics.join(", ")
    )
}

/// One warning per metric of `policy` that an analyzer reading `source` cannot read.
pub fn source_warnings(policy: &RolloutPolicy, source: SourceKind) -> Vec<String> {
    if source == SourceKind::Prometheus {
        return Vec::new();
    }
    let mesh = policy.source.as_ref().map(|mapping| {
        format!(
            "spec.source reads requests and latency from `{}` and `{}` through Prometheus, but the analyzer reads \
             Envoy admin endpoints (it runs without --prometheus / CANARY_ANALYZER_PROMETHEUS): it will refuse \
             to register this policy",
            mapping.requests_metric, mapping.latency_metric
        )
    });
    mesh.into_iter()
        .chain(policy.metrics.iter().filter(|m| m.needs_prometheus()).map(|m| {
            let consequence = if m.critical {
                "critical: it would hold every promotion until the step stalls"
            } else {
                "not critical: its row would stay empty"
            };
            format!(
                "metric `{}` is read with PromQL, but the analyzer reads Envoy admin endpoints (it runs without \
                 --prometheus / CANARY_ANALYZER_PROMETHEUS): it would read \"not enough data\" for the whole \
                 rollout ({consequence})",
                m.name()
            )
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMQL_POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: web}
spec:
  deployment: checkout
  ladder: [{share: 10, window: 2m}, {share: 100}]
  metrics:
  - {name: error_rate}
  - {name: queue_depth, query: 'max(queue{cohort=\"{{cohort}}\"})', max_relative_increase: 0.2}
  - {name: checkout_failures, numerator: 'sum(f{cohort=\"{{cohort}}\"})', denominator: 'sum(r{cohort=\"{{cohort}}\"})', direction: higher_is_worse, max_relative_increase: 0.1, critical: false}
";

    #[test]
    fn promql_metrics_warn_on_an_envoy_admin_analyzer_only() {
        let policy = RolloutPolicy::from_yaml(PROMQL_POLICY).unwrap();
        assert!(source_warnings(&policy, SourceKind::Prometheus).is_empty());
        let warnings = source_warnings(&policy, SourceKind::EnvoyAdmin);
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(warnings[0].starts_with("metric `queue_depth` is read with PromQL"), "{}", warnings[0]);
        assert!(warnings[0].contains("--prometheus / CANARY_ANALYZER_PROMETHEUS"), "{}", warnings[0]);
        assert!(warnings[0].contains("(critical: it would hold every promotion"), "{}", warnings[0]);
        assert!(warnings[1].starts_with("metric `checkout_failures`") && warnings[1].contains("not critical"));
        let defaults = RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: web}\nspec: {deployment: checkout}\n",
        )
        .unwrap();
        assert!(source_warnings(&defaults, SourceKind::EnvoyAdmin).is_empty());
        let mesh = RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: web}\nspec: {deployment: \
             checkout, source: {preset: istio, canary: [v2], control: [v1]}}\n",
        )
        .unwrap();
        assert!(source_warnings(&mesh, SourceKind::Prometheus).is_empty());
        assert!(policy_summary(&mesh).ends_with("sample_ratio; source istio: canary v2 against control v1"));
        let warnings = source_warnings(&mesh, SourceKind::EnvoyAdmin);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].starts_with(
                "spec.source reads requests and latency from `istio_requests_total` and \
                 `istio_request_duration_milliseconds` through Prometheus"
            ) && warnings[0].ends_with("it will refuse to register this policy"),
            "{}",
            warnings[0]
        );
        assert_eq!(
            policy_summary(&defaults),
            "policy web for checkout: ladder 1 % → 5 % → 25 % → 50 % → 100 %, 5m windows, checks every 30s; \
             metrics error_rate (critical), latency_p99 (critical), sample_ratio"
        );
        assert!(
            policy_summary(&policy).contains("ladder 10 % → 100 %, windows 2m, 5m,"),
            "{}",
            policy_summary(&policy)
        );
    }
}
