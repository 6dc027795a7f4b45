//! The Prometheus source (fleets): instant queries against a Prometheus server's
//! HTTP API (`POST /api/v1/query`, form-encoded so long queries fit). The thin I/O
//! edge around `api`, which builds the PromQL and reads the answers, and
//! `proxies`, which does the same for the per-proxy view, and `mesh`, the PromQL of
//! a mesh's own metrics.

mod api;
#[cfg(test)]
mod api_props;
mod mesh;
mod proxies;

pub use api::{CohortValues, expand_template, latency_query, parse_latency_answer, promql_duration, requests_query};
pub use mesh::{MeshMapping, MeshPreset};
pub use proxies::ProxyQueries;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use canary_core::Cohort;

use self::api::{
    QueryData, decode_answer, interval_from_answers, latency_from_answer, latency_from_answer_in, outcome_query,
    outcomes_from_answers, pair_count, requests_from_answer, single_value,
};
use self::proxies::{ProxyAnswers, proxies_from_answers};
use crate::source::body::{DEFAULT_MAX_BODY_BYTES, read_capped};
use crate::source::error::{SourceError, describe};
use crate::source::interval::{IntervalMetrics, ProxyApplied};
use crate::stats::{CohortCounts, IntervalCounts};

/// The instant-query endpoint of the Prometheus HTTP API.
const QUERY_PATH: &str = "/api/v1/query";

/// Queries one Prometheus server.
#[derive(Debug, Clone)]
pub struct PrometheusSource {
    http: reqwest::Client,
    /// Base URL (`http://prometheus:9090`), no trailing `/`.
    base_url: String,
    /// An answer longer than this fails the query (`--max-scrape-bytes`).
    max_body_bytes: u64,
}

impl PrometheusSource {
    /// Every query is abandoned after `timeout`, or when its answer passes
    /// [`DEFAULT_MAX_BODY_BYTES`] (see [`Self::with_max_body_bytes`]).
    pub fn new(base_url: impl Into<String>, timeout: Duration) -> Result<PrometheusSource, SourceError> {
        let http = reqwest::Client::builder().timeout(timeout).build().map_err(SourceError::Client)?;
        let base_url = base_url.into().trim_end_matches('/').to_string();
        Ok(PrometheusSource { http, base_url, max_body_bytes: DEFAULT_MAX_BODY_BYTES })
    }

    /// An answer over `max_body_bytes` fails its query, so one runaway answer cannot exhaust memory.
    pub fn with_max_body_bytes(self, max_body_bytes: u64) -> PrometheusSource {
        PrometheusSource { max_body_bytes, ..self }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Requests per cohort and class and latency histograms per cohort in the
    /// `window` ending at `at` (Prometheus' "now" when `None`), and what every proxy
    /// applied (`proxies`). All queries run concurrently at the same evaluation time
    /// so counts, histograms and gauges cover the same window. A failed per-proxy
    /// query leaves `proxies` empty (and is logged); it never fails the interval.
    pub async fn interval(
        &self,
        deployment: &str,
        window: Duration,
        at: Option<SystemTime>,
    ) -> Result<IntervalMetrics, SourceError> {
        self.interval_from(None, deployment, window, at).await
    }

    /// As [`Self::interval`], with requests and latency from the mesh's own metrics when
    /// `mesh` is given (no outcome counters then: the mesh does not count the filter's
    /// outcomes). The per-proxy view still comes from the filter's applied-rollout gauges.
    pub async fn interval_from(
        &self,
        mesh: Option<&MeshMapping>,
        deployment: &str,
        window: Duration,
        at: Option<SystemTime>,
    ) -> Result<IntervalMetrics, SourceError> {
        // Pin "now" once so the queries cannot straddle a scrape.
        let at = at.unwrap_or_else(SystemTime::now);
        if let Some(mesh) = mesh {
            let (requests_promql, latency_promql) = (mesh.requests_query(window), mesh.latency_query(window));
            let (requests, latency, proxies) = tokio::join!(
                self.query(&requests_promql, Some(at)),
                self.query(&latency_promql, Some(at)),
                self.proxies(deployment, window, at),
            );
            let requests = requests_from_answer(&requests_promql, &requests?)?;
            let latency = latency_from_answer_in(&latency_promql, &latency?, mesh.latency_unit)?;
            let mut metrics = interval_from_answers(&self.base_url, requests, latency);
            metrics.proxies = self.proxies_or_none(deployment, proxies);
            return Ok(metrics);
        }
        let (requests_promql, latency_promql) = (requests_query(deployment, window), latency_query(deployment, window));
        let outcome_requests_promql = outcome_query(deployment, window, false);
        let outcome_events_promql = outcome_query(deployment, window, true);
        let (requests, latency, outcome_requests, outcome_events, proxies) = tokio::join!(
            self.query(&requests_promql, Some(at)),
            self.query(&latency_promql, Some(at)),
            self.query(&outcome_requests_promql, Some(at)),
            self.query(&outcome_events_promql, Some(at)),
            self.proxies(deployment, window, at),
        );
        let requests = requests_from_answer(&requests_promql, &requests?)?;
        let latency = latency_from_answer(&latency_promql, &latency?)?;
        let outcomes = outcomes_from_answers(
            (&outcome_requests_promql, &outcome_requests?),
            (&outcome_events_promql, &outcome_events?),
        )?;
        let mut metrics = interval_from_answers(&self.base_url, requests, latency);
        for cohort in Cohort::ALL {
            metrics.cohorts.get_mut(cohort).outcomes = outcomes.get(cohort).clone();
        }
        metrics.proxies = self.proxies_or_none(deployment, proxies);
        Ok(metrics)
    }

    /// The per-proxy view, or none when its queries failed (logged): it never fails the interval.
    fn proxies_or_none(&self, deployment: &str, proxies: Result<Vec<ProxyApplied>, SourceError>) -> Vec<ProxyApplied> {
        proxies.unwrap_or_else(|error| {
            tracing::warn!(
                %deployment,
                error = %describe(&error),
                "per-proxy gauges unavailable from prometheus; the interval lists no proxies"
            );
            Vec::new()
        })
    }

    /// What every proxy applies at `at` and what it served in the `window` before it.
    pub async fn proxies(
        &self,
        deployment: &str,
        window: Duration,
        at: SystemTime,
    ) -> Result<Vec<ProxyApplied>, SourceError> {
        let queries = ProxyQueries::new(deployment, window);
        let (generation, share_bp, config_age_ms, changed, requests) = tokio::join!(
            self.query(&queries.generation, Some(at)),
            self.query(&queries.share_bp, Some(at)),
            self.query(&queries.config_age_ms, Some(at)),
            self.query(&queries.changed, Some(at)),
            self.query(&queries.requests, Some(at)),
        );
        let answers = ProxyAnswers {
            generation: &generation?,
            share_bp: &share_bp?,
            config_age_ms: &config_age_ms?,
            changed: &changed?,
            requests: &requests?,
        };
        proxies_from_answers(&queries, &answers)
    }

    /// A policy's custom PromQL, evaluated once for canary and once for control with
    /// `{{deployment}}`, `{{cohort}}` and `{{window}}` filled in; each must give a scalar or
    /// a vector of at most one series.
    pub async fn custom_metric(
        &self,
        template: &str,
        deployment: &str,
        window: Duration,
        at: Option<SystemTime>,
    ) -> Result<CohortValues, SourceError> {
        let at = at.unwrap_or_else(SystemTime::now);
        let canary_promql = expand_template(template, deployment, Cohort::Canary, window);
        let control_promql = expand_template(template, deployment, Cohort::Control, window);
        let (canary, control) =
            tokio::join!(self.query(&canary_promql, Some(at)), self.query(&control_promql, Some(at)));
        Ok(CohortValues {
            canary: single_value(&canary_promql, &canary?)?,
            control: single_value(&control_promql, &control?)?,
        })
    }

    /// A policy's counter pair: the `numerator` and `denominator` templates for canary
    /// and control (placeholders as in [`Self::custom_metric`]), as whole counts. `None`
    /// when any of the four has no data; events above requests are refused (the two
    /// templates do not count the same requests).
    pub async fn counter_pair(
        &self,
        numerator: &str,
        denominator: &str,
        deployment: &str,
        window: Duration,
        at: Option<SystemTime>,
    ) -> Result<Option<IntervalCounts>, SourceError> {
        let at = at.unwrap_or_else(SystemTime::now);
        let expand = |template: &str, cohort| expand_template(template, deployment, cohort, window);
        let promql = [
            expand(numerator, Cohort::Canary),
            expand(denominator, Cohort::Canary),
            expand(numerator, Cohort::Control),
            expand(denominator, Cohort::Control),
        ];
        let [events_canary, requests_canary, events_control, requests_control] = &promql;
        let answers = tokio::join!(
            self.query(events_canary, Some(at)),
            self.query(requests_canary, Some(at)),
            self.query(events_control, Some(at)),
            self.query(requests_control, Some(at)),
        );
        let counts = [
            pair_count(events_canary, &answers.0?)?,
            pair_count(requests_canary, &answers.1?)?,
            pair_count(events_control, &answers.2?)?,
            pair_count(requests_control, &answers.3?)?,
        ];
        let [Some(canary_events), Some(canary_requests), Some(control_events), Some(control_requests)] = counts else {
            return Ok(None);
        };
        Ok(Some(IntervalCounts {
            canary: pair_counts(events_canary, canary_events, canary_requests)?,
            control: pair_counts(events_control, control_events, control_requests)?,
        }))
    }

    /// One instant query, evaluated at `at` (Prometheus' "now" when `None`).
    pub(crate) async fn query(&self, promql: &str, at: Option<SystemTime>) -> Result<QueryData, SourceError> {
        let url = format!("{}{QUERY_PATH}", self.base_url);
        let mut form = vec![("query", promql.to_string())];
        if let Some(at) = at {
            form.push(("time", unix_seconds(at)));
        }
        let response = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|source| SourceError::Request { url: url.clone(), source })?;
        let status = response.status().as_u16();
        let body = read_capped(response, &url, self.max_body_bytes).await?;
        decode_answer(&url, promql, status, &body)
    }
}

/// Extrapolation slack between a pair's two counts: `increase()` extrapolates the
/// numerator and denominator separately, so when nearly every request is an event the
/// rounded events can pass the rounded requests by a count or two, about 1 % at most.
const PAIR_SLACK_FRACTION: u64 = 100;
const PAIR_SLACK_COUNTS: u64 = 2;

/// One cohort's pair: events within the slack above requests are capped at requests;
/// more means the templates do not count the same requests, and is refused.
fn pair_counts(numerator_query: &str, events: u64, requests: u64) -> Result<CohortCounts, SourceError> {
    let slack = requests / PAIR_SLACK_FRACTION + PAIR_SLACK_COUNTS;
    if events > requests.saturating_add(slack) {
        return Err(self::api::unexpected(
            numerator_query,
            format!("{events} events, more than the denominator's {requests} requests"),
        ));
    }
    Ok(CohortCounts { requests, errors: events.min(requests) })
}

/// A time as the API's `time` parameter: Unix seconds with millisecond precision
/// (Prometheus' timestamp resolution).
fn unix_seconds(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", since_epoch.as_secs(), since_epoch.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::body::tests::{Framing, serve_oversized};

    #[test]
    fn a_pair_with_a_few_events_too_many_is_capped_and_with_many_refused() {
        assert_eq!(pair_counts("n", 15, 80).unwrap(), CohortCounts { requests: 80, errors: 15 });
        // 1 % of 200 plus 2: extrapolation's slack.
        assert_eq!(pair_counts("n", 204, 200).unwrap(), CohortCounts { requests: 200, errors: 200 });
        let refused = pair_counts("sum(declines)", 205, 200).unwrap_err().to_string();
        assert!(refused.contains("sum(declines)") && refused.contains("205 events"), "{refused}");
    }

    #[test]
    fn times_are_unix_seconds_to_the_millisecond() {
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)), "1700000000.123");
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_secs(5)), "5.000");
    }

    /// A Prometheus stand-in: answers the interval queries with one canary 2xx count and
    /// one latency bucket, and the per-proxy queries (the ones naming `instance`) with
    /// `proxy_status` and, when that is 200, one proxy row.
    async fn fake_prometheus(proxy_status: u16) -> std::net::SocketAddr {
        use axum::extract::Form;
        use axum::http::StatusCode;
        use std::collections::HashMap;
        let answer = move |Form(form): Form<HashMap<String, String>>| async move {
            let query = form.get("query").cloned().unwrap_or_default();
            let result = if query.contains("instance") {
                if proxy_status != 200 {
                    return (StatusCode::from_u16(proxy_status).unwrap(), "overloaded".to_string());
                }
                let value = if query.contains("share_bp") { "500" } else { "7" };
                format!(r#"{{"metric":{{"instance":"10.0.0.7:15020","cohort":"canary"}},"value":[1,"{value}"]}}"#)
            } else if query.contains("canary_latency_us") {
                r#"{"metric":{"cohort":"canary","le":"1000"},"value":[1,"7"]},{"metric":{"cohort":"canary","le":"+Inf"},"value":[1,"7"]}"#.to_string()
            } else {
                r#"{"metric":{"cohort":"canary","class":"2xx"},"value":[1,"7"]}"#.to_string()
            };
            let body = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{result}]}}}}"#);
            (StatusCode::OK, body)
        };
        let app = axum::Router::new().route(QUERY_PATH, axum::routing::post(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn the_interval_carries_every_proxy_the_gauges_name() {
        let addr = fake_prometheus(200).await;
        let source = PrometheusSource::new(format!("http://{addr}"), Duration::from_secs(2)).unwrap();
        let interval = source.interval("demo", Duration::from_secs(60), None).await.unwrap();
        assert_eq!(interval.requests(Cohort::Canary), 7);
        let expected = ProxyApplied {
            proxy: "10.0.0.7:15020".into(),
            generation: Some(7),
            share_bp: Some(500),
            config_age_ms: Some(7),
            changed_during_interval: true,
            canary_requests: 7,
            control_requests: 0,
            other_deployments: None,
        };
        assert_eq!(interval.proxies, vec![expected]);
    }

    #[tokio::test]
    async fn a_failed_gauge_query_leaves_proxies_empty_but_keeps_the_interval() {
        let addr = fake_prometheus(503).await;
        let source = PrometheusSource::new(format!("http://{addr}"), Duration::from_secs(2)).unwrap();
        let interval = source.interval("demo", Duration::from_secs(60), None).await.unwrap();
        assert_eq!(interval.requests(Cohort::Canary), 7);
        assert_eq!(interval.latency(Cohort::Canary).map(|h| h.total()), Some(7));
        assert!(interval.proxies.is_empty(), "{:?}", interval.proxies);
        let error = source.proxies("demo", Duration::from_secs(60), SystemTime::now()).await.unwrap_err();
        assert_eq!(error.to_string(), format!("http://{addr}/api/v1/query answered with status 503: overloaded"));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let source = PrometheusSource::new(format!("http://{closed}/"), Duration::from_secs(2)).unwrap();
        let error = source.interval("demo", Duration::from_secs(60), None).await.unwrap_err();
        assert_eq!(error.to_string(), format!("request to http://{closed}/api/v1/query failed"));
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_fails_the_query_before_it_is_read_whole() {
        // 64 MiB served against a 1 MiB cap, as in the Envoy admin source's test.
        const SERVED_BYTES: usize = 64 * 1024 * 1024;
        const CAP_BYTES: u64 = 1024 * 1024;
        for framing in [Framing::Chunked, Framing::ContentLength] {
            let (addr, written) = serve_oversized(SERVED_BYTES, framing).await;
            let source = PrometheusSource::new(format!("http://{addr}"), Duration::from_secs(2))
                .unwrap()
                .with_max_body_bytes(CAP_BYTES);
            let error = source.query("sum(up)", None).await.unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("http://{addr}/api/v1/query: body exceeds 1 MiB limit (--max-scrape-bytes)"),
                "{framing:?}"
            );
            let written = written.await.unwrap();
            eprintln!("{framing:?}: the server wrote {written} of {SERVED_BYTES} bytes before the client hung up");
            assert!(written < SERVED_BYTES, "{framing:?}: the whole body was sent ({written} bytes)");
        }
    }
}
