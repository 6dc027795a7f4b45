//! A latency regression rolled back on Envoy's default buckets, read through the admin
//! source's text answer and through a real Prometheus. The shipped Envoy config without `histogram_bucket_settings`
//! gives the filter's histogram Envoy's default bounds (19, from `le="0.5"` to 3.6 s in
//! µs, 20-500 % wide); a small server in front of Envoy answers the analyzer's admin
//! scrape with Envoy's `/stats/prometheus` text, as a proxy serving only the text
//! format would; or a real Prometheus scrapes Envoy every second and the analyzer reads
//! it (`--prometheus`). The real `canary-analyzer` compares the cohorts on those buckets as
//! they are exported; a canary whose upstream takes 400 ms against control's 5 ms
//! (in (300, 600] ms against (0, 60] ms on these buckets) is rolled back by its
//! `latency_p99_us` row, and its A/A twin is not rolled back over the same checks.
//!
//! The delays are far apart because these buckets are: a slowdown inside one bucket
//! cannot be seen on them at all (`docs/statistics.md`, "Bucket layouts").

use canary_analyzer::engine::RolloutStatus;
use canary_analyzer::stats::{ComparisonRow, Verdict};
use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, fresh_dir, latency_rollout_policy};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::http_server;
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::prometheus::Prometheus;
use canary_e2e::upstream::{Behaviour, Upstream};
use serde_yaml_ng::Value as Yaml;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Envoy's default histogram bounds, in the histogram's unit (µs for the filter's).
const ENVOY_DEFAULT_BOUNDS: [&str; 19] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000", "60000",
    "300000", "600000", "1800000", "3600000",
];
/// Control's added latency: with loopback and scheduling, below 60 ms.
const CONTROL_DELAY: Duration = Duration::from_millis(5);
/// The slow canary's: past the 300 ms bound, so its requests exceed every bound
/// control's p99 can sit below.
const SLOW_CANARY_DELAY: Duration = Duration::from_millis(400);
/// The policy's `max_increase_ms` for `latency_p99`.
const TOLERANCE_MS: f64 = 5.0;
/// The policy's significance level: the A/A twin's false-rollback risk is at most 1 %.
const ALPHA: f64 = 0.01;
/// Checks (1 s each) the A/A twin is watched for: more than the slow canary needs.
const WATCHED_CHECKS: usize = 25;
/// Guard against hanging only.
const PATIENCE: Duration = Duration::from_secs(60);

/// One rig at a time: two Envoys and loads at once on a 2-core machine stretch the tails.
static ONE_RIG_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server that answers every request with Envoy's `/stats/prometheus` text.
async fn text_only_front(admin: SocketAddr) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = http_server::spawn(listener, move |_request| async move {
        let text = reqwest::get(format!("http://{admin}/stats/prometheus"))
            .await
            .and_then(|answer| answer.error_for_status())
            .map_err(std::io::Error::other)?
            .text()
            .await
            .map_err(std::io::Error::other)?;
        http_server::response(200, &[("content-type", "text/plain; version=0.0.4")], text)
    });
    (url, server)
}

/// Where the analyzer reads Envoy's metrics.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// The admin source, answered with `/stats/prometheus` text by [`text_only_front`].
    TextFront,
    /// A real Prometheus scraping Envoy every second.
    Prometheus,
}

/// Prometheus' scrape interval: one per check.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

struct DefaultBucketsRig {
    _upstreams: (Upstream, Upstream),
    envoy: Envoy,
    front: Option<JoinHandle<()>>,
    _prometheus: Option<Prometheus>,
    analyzer: AnalyzerProcess,
    _load: Load,
}

impl Drop for DefaultBucketsRig {
    fn drop(&mut self) {
        if let Some(front) = &self.front {
            front.abort();
        }
    }
}

/// Waits until Prometheus holds two scrapes of Envoy (before that `increase()` is empty).
async fn scraped_twice(prometheus: &Prometheus) {
    let start = Instant::now();
    loop {
        let samples = prometheus.by_instance("count_over_time(up[1m])").await;
        if samples.values().any(|n| *n >= 2.0) {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "prometheus never scraped envoy twice: {samples:?}\n{}", prometheus.log());
        tokio::time::sleep(SCRAPE_INTERVAL).await;
    }
}

impl DefaultBucketsRig {
    async fn start(name: &str, canary_delay: Duration, source: Source) -> DefaultBucketsRig {
        let dir = fresh_dir(name);
        let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
        stable.set_behaviour(Behaviour { extra_latency: CONTROL_DELAY, ..Behaviour::default() });
        canary.set_behaviour(Behaviour { extra_latency: canary_delay, ..Behaviour::default() });
        let analyzer_port = free_port();
        let mut config =
            EnvoyConfig::shipped(stable.addr, canary.addr, SocketAddr::from(([127, 0, 0, 1], analyzer_port)));
        let stats_config = config.yaml["stats_config"].as_mapping_mut().expect("stats_config");
        assert!(stats_config.remove("histogram_bucket_settings").is_some(), "the shipped config sets buckets");
        config.yaml["stats_flush_interval"] = Yaml::from("1s");
        config.edit_plugin_config(|json| {
            json["analyzer"]["poll_interval_ms"] = 500.into();
            json["analyzer"]["timeout_ms"] = 250.into();
        });
        let envoy = Envoy::start(&config, 2).await;
        let mut options = AnalyzerOptions::new(dir.join("state"));
        options.policies = vec![latency_rollout_policy(&dir, ALPHA, TOLERANCE_MS)];
        options.port = Some(analyzer_port);
        let (mut front, mut prometheus) = (None, None);
        match source {
            Source::TextFront => {
                let (front_url, server) = text_only_front(envoy.admin).await;
                options.envoy_admin = vec![front_url];
                front = Some(server);
            }
            Source::Prometheus => {
                let server = Prometheus::start(&[envoy.admin], SCRAPE_INTERVAL).await;
                scraped_twice(&server).await;
                options.extra_args = vec!["--prometheus".into(), server.url.clone()];
                prometheus = Some(server);
            }
        }
        let analyzer = AnalyzerProcess::start(options).await;
        let load = Load::start(
            envoy.listener,
            LoadOptions { rps: 150, users: 20_000, max_in_flight: 128, ..LoadOptions::default() },
        );
        DefaultBucketsRig { _upstreams: (stable, canary), envoy, front, _prometheus: prometheus, analyzer, _load: load }
    }

    async fn until(&self, done: impl Fn(&RolloutStatus) -> bool) -> (RolloutStatus, Vec<u32>) {
        self.analyzer.until("demo", PATIENCE, Duration::from_millis(200), done).await
    }

    /// The `le` bounds Envoy exports for the canary's latency histogram.
    async fn exported_bounds(&self) -> Vec<String> {
        let text = self.envoy.prometheus().await;
        text.lines()
            .filter(|line| line.starts_with("canary_latency_us_bucket{") && line.contains("cohort=\"canary\""))
            .filter_map(|line| line.split("le=\"").nth(1)?.split('"').next().map(str::to_string))
            .filter(|le| le != "+Inf")
            .collect()
    }
}

fn p99_row(rows: &[ComparisonRow]) -> Option<&ComparisonRow> {
    rows.iter().find(|r| r.metric == "latency_p99_us")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_on_envoys_default_buckets_through_the_text_answer() {
    let _alone = ONE_RIG_AT_A_TIME.lock().await;
    a_slow_canary_is_rolled_back("default-buckets", Source::TextFront).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_on_envoys_default_buckets_through_prometheus() {
    let _alone = ONE_RIG_AT_A_TIME.lock().await;
    a_slow_canary_is_rolled_back("default-buckets-prometheus", Source::Prometheus).await;
}

async fn a_slow_canary_is_rolled_back(name: &str, source: Source) {
    let started = Instant::now();
    let rig = DefaultBucketsRig::start(name, SLOW_CANARY_DELAY, source).await;
    let (status, shares) = rig.until(|s| s.state.phase != RolloutPhase::Progressing).await;
    assert_eq!(rig.exported_bounds().await, ENVOY_DEFAULT_BOUNDS, "Envoy's default buckets");
    assert_eq!(status.state.phase, RolloutPhase::RolledBack, "{status:#?}");
    assert!(shares == [500, 0] || shares == [500, 2_500, 0], "rolled back at 5 % or 25 %: shares {shares:?}");
    let audit = rig.analyzer.audit("demo").await;
    let rollback = audit.last().expect("audit records");
    let row = p99_row(&rollback.decision.rows).expect("the rollback's record carries the p99 row");
    eprintln!(
        "rolled back after {} checks, {:.1} s, shares {shares:?}: canary {:?} µs, control {:?} µs, interval {:?}, \
         p = {:?}; reason: {}",
        status.history.len(),
        started.elapsed().as_secs_f64(),
        row.canary,
        row.control,
        row.interval,
        row.p_value,
        rollback.decision.reason
    );
    assert_eq!(row.verdict, Verdict::Worse, "{row:?}");
    assert!(rollback.decision.reason.contains("latency_p99_us"), "{}", rollback.decision.reason);
    let errors = rollback.decision.rows.iter().find(|r| r.metric == "error_rate").expect("error_rate row");
    assert_ne!(errors.verdict, Verdict::Worse, "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_a_a_twin_on_the_same_buckets_is_not_rolled_back() {
    let _alone = ONE_RIG_AT_A_TIME.lock().await;
    let rig = DefaultBucketsRig::start("default-buckets-aa", CONTROL_DELAY, Source::TextFront).await;
    let (status, shares) =
        rig.until(|s| s.history.len() >= WATCHED_CHECKS || s.state.phase != RolloutPhase::Progressing).await;
    let row = p99_row(&status.rows).cloned();
    eprintln!("A/A after {} checks, shares {shares:?}: {row:?}", status.history.len());
    assert_ne!(status.state.phase, RolloutPhase::RolledBack, "{status:#?}");
    let row = row.expect("a p99 row");
    assert!(row.p_value.is_some(), "the p99 verdict had evidence on these buckets: {row:?}");
    assert_ne!(row.verdict, Verdict::Worse, "{row:?}");
    assert!(status.failed_targets.is_empty(), "{:?}", status.failed_targets);
}
