//! The per-proxy view from Prometheus, pure: the PromQL that asks what every Envoy
//! applies (its three applied-rollout gauges) and how many canary and control requests
//! it served in the window, and the answers joined into [`ProxyApplied`] rows.
//!
//! One Envoy is one scrape target: Prometheus labels its series with `instance`
//! (`host:port` of the target), and Kubernetes service discovery as Istio's and the
//! Prometheus operator's configs set it up adds `pod`. Every query is aggregated
//! `by (instance, pod)`, so the rows of the five answers join on those two labels
//! (a missing label reads as empty) whatever else the scrape config attaches; two
//! jobs scraping one Envoy fold into one row (`max` of the gauges).
//!
//! "Changed during the interval" is the admin source's rule (the generation at the
//! start differs from the one at the end) plus any change inside the window:
//! `changes()` only sees the window's own samples, so a change between the last
//! scrape before the window and the first inside it would slip through; comparing
//! with the value `offset` by the window catches it.

use std::collections::BTreeMap;
use std::time::Duration;

use canary_core::Cohort;
use canary_core::metrics::{APPLIED_GENERATION, APPLIED_SHARE_BP, CONFIG_AGE_MS, REQUESTS};

use super::api::{QueryData, VectorSample, escape_label_value, promql_duration, tiled_increase, unexpected, vector};
use crate::source::error::SourceError;
use crate::source::interval::ProxyApplied;

/// The labels that identify one Envoy in a Prometheus scrape, in `by (...)` form.
const PROXY_LABELS: &str = "instance, pod";

/// Largest share in basis points (everybody on the canary).
const FULL_SHARE_BP: f64 = 10_000.0;

/// The five instant queries for one deployment and window, evaluated at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyQueries {
    pub generation: String,
    pub share_bp: String,
    pub config_age_ms: String,
    /// Returns a row only for the proxies whose generation changed.
    pub changed: String,
    pub requests: String,
}

impl ProxyQueries {
    pub fn new(deployment: &str, window: Duration) -> ProxyQueries {
        let selector = |metric: &str| format!("{metric}{{deployment=\"{}\"}}", escape_label_value(deployment));
        let per_proxy = |expression: &str| format!("max by ({PROXY_LABELS}) ({expression})");
        let generation = selector(APPLIED_GENERATION);
        let span = promql_duration(window);
        let changed = format!(
            "{} > 0 or {} != {}",
            per_proxy(&format!("changes({generation}[{span}])")),
            per_proxy(&generation),
            per_proxy(&format!("{generation} offset {span}")),
        );
        let compared = format!(
            "{REQUESTS}{{deployment=\"{}\",cohort=~\"{}|{}\"}}",
            escape_label_value(deployment),
            Cohort::Canary.label(),
            Cohort::Control.label(),
        );
        let requests = tiled_increase(&compared, window, &format!("{PROXY_LABELS}, cohort"));
        ProxyQueries {
            generation: per_proxy(&generation),
            share_bp: per_proxy(&selector(APPLIED_SHARE_BP)),
            config_age_ms: per_proxy(&selector(CONFIG_AGE_MS)),
            changed,
            requests,
        }
    }
}

/// The answers to [`ProxyQueries`], in the same order.
#[derive(Debug)]
pub struct ProxyAnswers<'a> {
    pub generation: &'a QueryData,
    pub share_bp: &'a QueryData,
    pub config_age_ms: &'a QueryData,
    pub changed: &'a QueryData,
    pub requests: &'a QueryData,
}

/// A row's identity: its `instance` and `pod` labels (empty when absent).
type ProxyKey = (String, String);

fn key_of(sample: &VectorSample) -> ProxyKey {
    let label = |name: &str| sample.label(name).unwrap_or_default().to_string();
    (label("instance"), label("pod"))
}

/// How a proxy is named to people: `pod (instance)`, or whichever of the two it has.
fn proxy_name((instance, pod): &ProxyKey) -> String {
    match (instance.is_empty(), pod.is_empty()) {
        (false, false) => format!("{pod} ({instance})"),
        (false, true) => instance.clone(),
        (true, false) => pod.clone(),
        (true, true) => "(series without instance or pod label)".to_string(),
    }
}

/// A gauge's value as a whole number: `None` for NaN/±Inf (no data); refused when
/// negative or above `max`, naming the query and the value.
fn whole(query: &str, sample: &VectorSample, max: f64) -> Result<Option<f64>, SourceError> {
    let Some(number) = sample.finite_value(query)? else { return Ok(None) };
    if !(0.0..=max).contains(&number) {
        return Err(unexpected(
            query,
            format!("value {number} for {}, expected 0 to {max}", proxy_name(&key_of(sample))),
        ));
    }
    Ok(Some(number.round()))
}

/// The row of `sample`'s proxy, created on first sight.
fn row<'a>(rows: &'a mut BTreeMap<ProxyKey, ProxyApplied>, sample: &VectorSample) -> &'a mut ProxyApplied {
    rows.entry(key_of(sample))
        .or_insert_with_key(|key| ProxyApplied { proxy: proxy_name(key), ..ProxyApplied::default() })
}

/// The five answers → one row per proxy seen in any of them, ordered by `instance`, `pod`.
pub fn proxies_from_answers(queries: &ProxyQueries, answers: &ProxyAnswers) -> Result<Vec<ProxyApplied>, SourceError> {
    let mut rows: BTreeMap<ProxyKey, ProxyApplied> = BTreeMap::new();
    // `as` saturates: u64::MAX (unknown age) comes back as 1.8446744073709552e19 and
    // maps to u64::MAX again; shares are within 0..=10 000 once checked.
    for sample in vector(&queries.generation, answers.generation)? {
        let value = whole(&queries.generation, sample, f64::MAX)?;
        row(&mut rows, sample).generation = value.map(|v| v as u64);
    }
    for sample in vector(&queries.share_bp, answers.share_bp)? {
        let value = whole(&queries.share_bp, sample, FULL_SHARE_BP)?;
        row(&mut rows, sample).share_bp = value.map(|v| v as u32);
    }
    for sample in vector(&queries.config_age_ms, answers.config_age_ms)? {
        let value = whole(&queries.config_age_ms, sample, f64::MAX)?;
        row(&mut rows, sample).config_age_ms = value.map(|v| v as u64);
    }
    for sample in vector(&queries.changed, answers.changed)? {
        row(&mut rows, sample).changed_during_interval = true;
    }
    for sample in vector(&queries.requests, answers.requests)? {
        let Some(requests) = whole(&queries.requests, sample, f64::MAX)?.map(|v| v as u64) else { continue };
        match sample.label("cohort") {
            Some(label) if label == Cohort::Canary.label() => row(&mut rows, sample).canary_requests = requests,
            Some(label) if label == Cohort::Control.label() => row(&mut rows, sample).control_requests = requests,
            _ => {}
        }
    }
    Ok(rows.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::super::api::decode_answer;
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn decode(result: &str) -> QueryData {
        let body = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{result}]}}}}"#);
        decode_answer("http://prometheus:9090/api/v1/query", "q", 200, &body).unwrap()
    }

    fn empty() -> QueryData {
        decode("")
    }

    #[test]
    fn the_queries_group_by_instance_and_pod_over_the_window() {
        let queries = ProxyQueries::new("checkout", WINDOW);
        assert_eq!(queries.generation, r#"max by (instance, pod) (canary_applied_generation{deployment="checkout"})"#);
        assert_eq!(queries.share_bp, r#"max by (instance, pod) (canary_applied_share_bp{deployment="checkout"})"#);
        assert_eq!(queries.config_age_ms, r#"max by (instance, pod) (canary_config_age_ms{deployment="checkout"})"#);
        assert_eq!(
            queries.changed,
            r#"max by (instance, pod) (changes(canary_applied_generation{deployment="checkout"}[60000ms])) > 0 or max by (instance, pod) (canary_applied_generation{deployment="checkout"}) != max by (instance, pod) (canary_applied_generation{deployment="checkout"} offset 60000ms)"#
        );
        assert_eq!(
            queries.requests,
            tiled_increase(
                r#"canary_requests_total{deployment="checkout",cohort=~"canary|control"}"#,
                WINDOW,
                "instance, pod, cohort"
            )
        );
        assert!(ProxyQueries::new(r#"a"b"#, WINDOW).generation.contains(r#"deployment="a\"b""#));
    }

    #[test]
    fn the_answers_join_per_proxy() {
        let queries = ProxyQueries::new("checkout", WINDOW);
        // Two gateway pods under Kubernetes SD; gw-b lags on the previous generation.
        let generation = decode(
            r#"{"metric":{"instance":"10.0.0.7:15020","pod":"gw-a"},"value":[1,"1764000000000"]},
               {"metric":{"instance":"10.0.0.8:15020","pod":"gw-b"},"value":[1,"1763999000000"]}"#,
        );
        let share = decode(
            r#"{"metric":{"instance":"10.0.0.7:15020","pod":"gw-a"},"value":[1,"2500"]},
               {"metric":{"instance":"10.0.0.8:15020","pod":"gw-b"},"value":[1,"500"]}"#,
        );
        // Unknown age: u64::MAX as Prometheus prints the float it stores.
        let age = decode(
            r#"{"metric":{"instance":"10.0.0.7:15020","pod":"gw-a"},"value":[1,"1200"]},
               {"metric":{"instance":"10.0.0.8:15020","pod":"gw-b"},"value":[1,"18446744073709551616"]}"#,
        );
        let changed = decode(r#"{"metric":{"instance":"10.0.0.7:15020","pod":"gw-a"},"value":[1,"1"]}"#);
        // increase() extrapolates to fractions; NaN is no data.
        let requests = decode(
            r#"{"metric":{"instance":"10.0.0.7:15020","pod":"gw-a","cohort":"canary"},"value":[1,"250.4"]},
               {"metric":{"instance":"10.0.0.7:15020","pod":"gw-a","cohort":"control"},"value":[1,"749.6"]},
               {"metric":{"instance":"10.0.0.8:15020","pod":"gw-b","cohort":"canary"},"value":[1,"NaN"]},
               {"metric":{"instance":"10.0.0.8:15020","pod":"gw-b","cohort":"control"},"value":[1,"980"]}"#,
        );
        let answers = ProxyAnswers {
            generation: &generation,
            share_bp: &share,
            config_age_ms: &age,
            changed: &changed,
            requests: &requests,
        };
        let proxies = proxies_from_answers(&queries, &answers).unwrap();
        assert_eq!(
            proxies,
            vec![
                ProxyApplied {
                    proxy: "gw-a (10.0.0.7:15020)".into(),
                    generation: Some(1_764_000_000_000),
                    share_bp: Some(2_500),
                    config_age_ms: Some(1_200),
                    changed_during_interval: true,
                    canary_requests: 250,
                    control_requests: 750,
                    other_deployments: None,
                },
                ProxyApplied {
                    proxy: "gw-b (10.0.0.8:15020)".into(),
                    generation: Some(1_763_999_000_000),
                    share_bp: Some(500),
                    config_age_ms: Some(u64::MAX),
                    changed_during_interval: false,
                    canary_requests: 0,
                    control_requests: 980,
                    other_deployments: None,
                },
            ]
        );
    }

    #[test]
    fn a_proxy_without_gauges_still_has_its_requests() {
        let queries = ProxyQueries::new("checkout", WINDOW);
        let requests = decode(r#"{"metric":{"instance":"10.0.0.9:15090","cohort":"canary"},"value":[1,"12"]}"#);
        let none = empty();
        let answers = ProxyAnswers {
            generation: &none,
            share_bp: &none,
            config_age_ms: &none,
            changed: &none,
            requests: &requests,
        };
        let proxies = proxies_from_answers(&queries, &answers).unwrap();
        let expected = ProxyApplied { proxy: "10.0.0.9:15090".into(), canary_requests: 12, ..ProxyApplied::default() };
        assert_eq!(proxies, vec![expected]);
    }

    #[test]
    fn an_impossible_share_is_refused_naming_the_query_the_proxy_and_the_value() {
        let queries = ProxyQueries::new("checkout", WINDOW);
        let share = decode(r#"{"metric":{"instance":"10.0.0.7:15020"},"value":[1,"20000"]}"#);
        let none = empty();
        let answers =
            ProxyAnswers { generation: &none, share_bp: &share, config_age_ms: &none, changed: &none, requests: &none };
        let error = proxies_from_answers(&queries, &answers).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "unexpected prometheus result for query {:?}: value 20000 for 10.0.0.7:15020, expected 0 to 10000",
                queries.share_bp
            )
        );
    }
}
