//! The Envoy admin source: `GET /stats?format=json&histogram_buckets=detailed` from each
//! Envoy's admin address, filtered to one deployment, parsed into one
//! [`DeploymentSnapshot`] per target. The thin I/O edge around `admin_json` (parsing
//! Envoy's own histogram bins: no bucket configuration needed) and `delta` (what to
//! do with the snapshots). An answer in the Prometheus text format (`text/plain`: a
//! stub, or a proxy in front of Envoy serving `/stats/prometheus`) is read with
//! `exposition`, its configured buckets as they are.

mod admin_json;
mod delta;
mod envoy_bins;
mod exposition;

pub use admin_json::{parse_detailed_stats, stats_filter};
pub use delta::{DeltaTracker, TargetDelta, TargetScrape, target_delta};
pub use envoy_bins::{BinPlace, bin_place, envoy_bin_bounds_us};
pub use exposition::{deployment_label, is_relevant, parse_exposition};

use std::time::Duration;

use tokio::task::JoinSet;

use crate::source::body::{DEFAULT_MAX_BODY_BYTES, read_capped};
use crate::source::error::{ExpositionError, SourceError};
use crate::source::served::{served_deployments, served_filter};
use crate::source::snapshot::DeploymentSnapshot;

/// Envoy's admin endpoint and the parameters for JSON with its own histogram bins; the
/// scrape adds `&filter=` ([`stats_filter`]), left out of error messages for brevity.
pub const STATS_PATH: &str = "/stats?format=json&histogram_buckets=detailed";

/// Longest part of an error body kept in an error message: enough to read Envoy's
/// or a proxy's reason, short enough for one log line.
const ERROR_BODY_LIMIT: usize = 200;

/// Scrapes the admin endpoints of one or more Envoys for one deployment.
#[derive(Debug, Clone)]
pub struct EnvoyAdminSource {
    http: reqwest::Client,
    /// Admin base URLs (`http://10.0.0.7:15000`), each a separate target.
    admin_urls: Vec<String>,
    deployment: String,
    /// A body longer than this fails the target (`--max-scrape-bytes`).
    max_body_bytes: u64,
}

impl EnvoyAdminSource {
    /// `admin_urls` are admin base URLs (a trailing `/` is fine); every request is
    /// abandoned after `timeout` so one stuck Envoy cannot stall a check. A body over
    /// [`DEFAULT_MAX_BODY_BYTES`] fails its target (see [`Self::with_max_body_bytes`]).
    pub fn new(
        admin_urls: impl IntoIterator<Item = impl Into<String>>,
        deployment: impl Into<String>,
        timeout: Duration,
    ) -> Result<EnvoyAdminSource, SourceError> {
        Ok(EnvoyAdminSource::with_client(scrape_client(timeout)?, admin_urls, deployment))
    }

    /// The same on a client made by [`scrape_client`] and shared: every rollout of an
    /// analyzer scrapes the same Envoys, so they share its connections (one pool, not
    /// one per rollout: a thousand rollouts held ~0.9 MB each in their own pools).
    pub fn with_client(
        http: reqwest::Client,
        admin_urls: impl IntoIterator<Item = impl Into<String>>,
        deployment: impl Into<String>,
    ) -> EnvoyAdminSource {
        let admin_urls = admin_urls.into_iter().map(|url| url.into().trim_end_matches('/').to_string()).collect();
        EnvoyAdminSource { http, admin_urls, deployment: deployment.into(), max_body_bytes: DEFAULT_MAX_BODY_BYTES }
    }

    /// A body over `max_body_bytes` fails its target, so one huge exposition cannot exhaust memory.
    pub fn with_max_body_bytes(self, max_body_bytes: u64) -> EnvoyAdminSource {
        EnvoyAdminSource { max_body_bytes, ..self }
    }

    pub fn admin_urls(&self) -> &[String] {
        &self.admin_urls
    }

    /// Scrapes every target concurrently; one result per target, in configuration order.
    pub async fn scrape(&self) -> Vec<TargetScrape> {
        let mut tasks = JoinSet::new();
        for (position, url) in self.admin_urls.iter().enumerate() {
            let (http, url, deployment) = (self.http.clone(), url.clone(), self.deployment.clone());
            let max_body_bytes = self.max_body_bytes;
            tasks.spawn(async move {
                let result = scrape_target(&http, &url, &deployment, max_body_bytes).await;
                (position, TargetScrape { target: url, result })
            });
        }
        let mut scrapes = Vec::with_capacity(self.admin_urls.len());
        while let Some(joined) = tasks.join_next().await {
            // A scrape task only panics if the runtime is shutting down: drop it, the
            // target then counts as absent this round.
            if let Ok(scrape) = joined {
                scrapes.push(scrape);
            }
        }
        scrapes.sort_by_key(|(position, _)| *position);
        scrapes.into_iter().map(|(_, scrape)| scrape).collect()
    }

    /// Scrapes one admin base URL.
    pub async fn scrape_one(&self, admin_url: &str) -> Result<DeploymentSnapshot, SourceError> {
        scrape_target(&self.http, admin_url.trim_end_matches('/'), &self.deployment, self.max_body_bytes).await
    }
}

/// The HTTP client scrapes go out on: every request abandoned after `timeout`, so one
/// stuck Envoy cannot stall a check.
pub fn scrape_client(timeout: Duration) -> Result<reqwest::Client, SourceError> {
    reqwest::Client::builder().timeout(timeout).build().map_err(SourceError::Client)
}

async fn scrape_target(
    http: &reqwest::Client,
    admin_url: &str,
    deployment: &str,
    max_body_bytes: u64,
) -> Result<DeploymentSnapshot, SourceError> {
    let (url, body, json) = get_stats(http, admin_url, &stats_filter(deployment), max_body_bytes).await?;
    let mut snapshot =
        parse_answer(&body, json, deployment).map_err(|source| SourceError::Exposition { url, source })?;
    if !snapshot.exports_deployment() {
        // Only then: which deployments the target exports instead (a typo in an id, say).
        let (url, body, _) = get_stats(http, admin_url, served_filter(), max_body_bytes).await?;
        let others = served_deployments(&body).map_err(|source| SourceError::Exposition { url, source })?;
        snapshot.other_deployments = Some(others);
    }
    Ok(snapshot)
}

/// `STATS_PATH` with Envoy's `filter` regex: the URL (without the filter, for messages),
/// the body of a successful answer, and whether it is JSON by its content type.
async fn get_stats(
    http: &reqwest::Client,
    admin_url: &str,
    filter: &str,
    max_body_bytes: u64,
) -> Result<(String, String, bool), SourceError> {
    let url = format!("{admin_url}{STATS_PATH}");
    let request = format!("{url}&filter={}", percent_encode(filter));
    let response = http
        .get(&request)
        .send()
        .await
        // The URL is in the message already, without the encoded filter.
        .map_err(|source| SourceError::Request { url: url.clone(), source: source.without_url() })?;
    let status = response.status();
    let json = response.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().ends_with(b"json"));
    let body = read_capped(response, &url, max_body_bytes).await?;
    if !status.is_success() {
        return Err(SourceError::Status { url, status: status.as_u16(), body: truncate(&body) });
    }
    Ok((url, body, json))
}

/// Envoy's JSON (`application/json`, or a body that opens with `{`), else exposition text.
fn parse_answer(body: &str, json: bool, deployment: &str) -> Result<DeploymentSnapshot, ExpositionError> {
    if json || body.trim_start().starts_with('{') {
        parse_detailed_stats(body, deployment)
    } else {
        parse_exposition(body, deployment)
    }
}

/// A query parameter value with everything but RFC 3986's unreserved characters %-encoded.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The first [`ERROR_BODY_LIMIT`] characters of a body, trimmed, on one line (an error page's
/// line breaks and control characters escaped).
pub(crate) fn truncate(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(ERROR_BODY_LIMIT) {
        Some((cut, _)) => format!("{}…", crate::policy::one_line(body.get(..cut).unwrap_or(body))),
        None => crate::policy::one_line(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::DeltaTracker;
    use crate::source::body::tests::{Framing, serve_oversized};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-route HTTP server answering every request with `status`, `content_type` and
    /// `body`; the request heads it received come out of the channel.
    async fn serve_as(
        status: u16,
        content_type: &'static str,
        body: String,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let (body, heads) = (body.clone(), heads.clone());
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let read = socket.read(&mut request).await.unwrap_or(0);
                    let _ = heads.send(String::from_utf8_lossy(&request[..read]).into_owned());
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                });
            }
        });
        (addr, received)
    }

    /// [`serve_as`] with Prometheus text.
    async fn serve(status: u16, body: String) -> SocketAddr {
        serve_as(status, "text/plain", body).await.0
    }

    fn exposition(canary_2xx: u64, canary_5xx: u64) -> String {
        format!(
            "# TYPE canary_requests_total counter\n\
             canary_requests_total{{deployment=\"demo\",cohort=\"canary\",class=\"2xx\"}} {canary_2xx}\n\
             canary_requests_total{{deployment=\"demo\",cohort=\"canary\",class=\"5xx\"}} {canary_5xx}\n"
        )
    }

    #[tokio::test]
    async fn a_target_without_the_deployment_is_asked_which_deployments_it_exports() {
        let text = "canary_applied_generation{deployment=\"checkout\"} 3\n\
                    canary_requests_total{deployment=\"checkout\",cohort=\"canary\",class=\"2xx\"} 5\n";
        let (addr, mut heads) = serve_as(200, "text/plain", text.to_string()).await;
        let source = EnvoyAdminSource::new([format!("http://{addr}")], "orders", Duration::from_secs(2)).unwrap();
        let snapshot = source.scrape_one(&format!("http://{addr}")).await.unwrap();
        assert_eq!(snapshot.other_deployments, Some(vec!["checkout".to_string()]));
        let (first, second) = (heads.recv().await.unwrap(), heads.recv().await.unwrap());
        assert!(first.contains("orders"), "the first question is about the deployment: {first}");
        assert!(second.contains("applied_generation"), "the second asks for every deployment's gauge: {second}");

        let served = EnvoyAdminSource::new([format!("http://{addr}")], "checkout", Duration::from_secs(2)).unwrap();
        assert_eq!(served.scrape_one(&format!("http://{addr}")).await.unwrap().other_deployments, None);
    }

    #[tokio::test]
    async fn scrapes_every_target_and_names_the_ones_that_fail() {
        let healthy = serve(200, exposition(10, 1)).await;
        let broken = serve(503, "no healthy upstream".to_string()).await;
        // A port nobody listens on (bound, then released).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let urls = [format!("http://{healthy}/"), format!("http://{broken}"), format!("http://{closed}")];
        let source = EnvoyAdminSource::new(urls, "demo", Duration::from_secs(2)).unwrap();
        let scrapes = source.scrape().await;
        assert_eq!(scrapes.len(), 3);
        assert_eq!(scrapes[0].target, format!("http://{healthy}"));
        assert_eq!(scrapes[0].result.as_ref().unwrap().cohorts.canary.requests.total(), 11);
        let status_error = scrapes[1].result.as_ref().unwrap_err().to_string();
        assert_eq!(status_error, format!("http://{broken}{STATS_PATH} answered with status 503: no healthy upstream"));
        let refused = scrapes[2].result.as_ref().unwrap_err().to_string();
        assert_eq!(refused, format!("request to http://{closed}{STATS_PATH} failed"));

        let mut tracker = DeltaTracker::new();
        let interval = tracker.advance(scrapes);
        assert_eq!(interval.baseline_targets, vec![format!("http://{healthy}")]);
        assert_eq!(interval.failed_targets.len(), 2);
        assert!(interval.failed_targets[1].reason.starts_with(&refused), "{}", interval.failed_targets[1].reason);
    }

    #[tokio::test]
    async fn a_bad_exposition_names_the_url_and_the_sample() {
        let addr = serve(200, exposition(10, 1).replace("} 1\n", "} -1\n")).await;
        let source = EnvoyAdminSource::new([format!("http://{addr}")], "demo", Duration::from_secs(2)).unwrap();
        let error = source.scrape_one(&format!("http://{addr}")).await.unwrap_err();
        assert_eq!(
            crate::source::error::describe(&error),
            format!(
                "cannot parse the stats from http://{addr}{STATS_PATH}: \
                 canary_requests_total has value -1, expected a finite count >= 0"
            )
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_fails_the_target_before_it_is_read_whole() {
        // 64 MiB served against a 1 MiB cap: loopback's socket buffers took 4-6 MiB of it here
        // before the client hung up, so a server that gets to the end means the client read it all.
        const SERVED_BYTES: usize = 64 * 1024 * 1024;
        const CAP_BYTES: u64 = 1024 * 1024;
        for framing in [Framing::Chunked, Framing::ContentLength] {
            let (addr, written) = serve_oversized(SERVED_BYTES, framing).await;
            let source = EnvoyAdminSource::new([format!("http://{addr}")], "demo", Duration::from_secs(2))
                .unwrap()
                .with_max_body_bytes(CAP_BYTES);
            let interval = DeltaTracker::new().advance(source.scrape().await);
            assert_eq!(interval.failed_targets.len(), 1, "{framing:?}");
            assert_eq!(
                interval.failed_targets[0].reason,
                format!("http://{addr}{STATS_PATH}: body exceeds 1 MiB limit (--max-scrape-bytes)")
            );
            let written = written.await.unwrap();
            eprintln!("{framing:?}: the server wrote {written} of {SERVED_BYTES} bytes before the client hung up");
            assert!(written < SERVED_BYTES, "{framing:?}: the whole body was sent ({written} bytes)");
        }
    }

    #[tokio::test]
    async fn asks_envoy_for_its_own_bins_of_one_deployment_and_reads_them() {
        let answer = include_str!("../testdata/envoy_1_40_detailed.json").to_string();
        let (addr, mut heads) = serve_as(200, "application/json", answer).await;
        let source = EnvoyAdminSource::new([format!("http://{addr}")], "demo", Duration::from_secs(2)).unwrap();
        let snapshot = source.scrape_one(&format!("http://{addr}")).await.unwrap();
        let head = heads.recv().await.unwrap();
        let request_line = head.lines().next().unwrap();
        // filter=^(server\.(uptime|hot_restart_epoch)$|wasmcustom\.canary\.deployment\.demo\.), %-encoded.
        assert_eq!(
            request_line,
            "GET /stats?format=json&histogram_buckets=detailed&filter=\
             %5E%28server%5C.%28uptime%7Chot_restart_epoch%29%24%7Cwasmcustom%5C.canary%5C.deployment%5C.demo%5C.%29 HTTP/1.1"
        );
        let latency = snapshot.cohorts.control.latency.unwrap();
        assert_eq!((latency.layout, latency.count), (crate::source::BucketLayout::EnvoyBins, 31));
        assert_eq!(percent_encode("a-b_c.d~e f/\\"), "a-b_c.d~e%20f%2F%5C");
    }

    #[tokio::test]
    async fn json_that_does_not_parse_names_the_url_and_the_field() {
        let (addr, _) = serve_as(200, "application/json", r#"{"stats": {}}"#.to_string()).await;
        let source = EnvoyAdminSource::new([format!("http://{addr}")], "demo", Duration::from_secs(2)).unwrap();
        let error = source.scrape_one(&format!("http://{addr}")).await.unwrap_err();
        assert_eq!(
            crate::source::error::describe(&error),
            format!("cannot parse the stats from http://{addr}{STATS_PATH}: stats is {{}}, expected a list")
        );
    }

    #[test]
    fn long_error_bodies_are_cut() {
        assert_eq!(truncate(" short \n"), "short");
        let long = "x".repeat(1_000);
        assert_eq!(truncate(&long).chars().count(), ERROR_BODY_LIMIT + 1);
    }
}
