//! The mesh's own metrics as the source, end to end: the filter in routing-only mode
//! (`"metrics": "none"`) puts users in cohorts and routes them to the shipped
//! `stable` and `canary` clusters, a real Prometheus scrapes Envoy's
//! `/stats/prometheus`, and the analyzer (the real binary) reads Envoy's per-cluster
//! upstream stats through the `envoy_cluster` preset (`spec.source`). A canary
//! answering 20 % 503 is rolled back at the first or second step, with the error-rate
//! row built from the cluster stats, while the filter exports no per-cohort metric.
//!
//! Istio's preset cannot be run against Istio here (no cluster); its PromQL and unit
//! conversion are tested in `analyzer/src/source/prometheus/mesh.rs` and `api.rs`.

use canary_analyzer::source::{MeshMapping, MeshPreset, PrometheusSource};
use canary_core::{Cohort, RolloutPhase};
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, TestPolicy, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::prometheus::Prometheus;
use canary_e2e::upstream::{Behaviour, Upstream};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The filter polls every 500 ms, as in the other e2e tests; the analyzer checks every second.
const POLL_MS: u64 = 500;
/// 100 requests per second: 20 canary requests a second at 20 %, 10 of them 503 every
/// 2.5 s, against none on stable — evidence for alpha 0.05 within seconds.
const RPS: u32 = 100;
/// 20 % for 20 s, then 50 % until the verdict: the rollback comes at one of these two.
const LADDER: [(f64, &str); 3] = [(20.0, "20s"), (50.0, "120s"), (100.0, "1s")];
/// The canary's failures.
const CANARY_FAIL_FRACTION: f64 = 0.2;
/// How far back the latency check looks. A series counts only in windows that start after its
/// first sample (Envoy exports a cluster's histogram from its first flush after a request), and
/// the canary's traffic ends at the rollback (~15 s in): 20 s windows hold some of it from ~25 s on.
const LATENCY_WINDOW: Duration = Duration::from_secs(20);
/// Prometheus scrapes four times per 1 s check.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(250);
/// The whole rollout must end within this (expected: well under the first step's 20 s).
const LIMIT: Duration = Duration::from_secs(75);

/// The policy: default metrics (error rate, p99 latency, sample ratio), requests and
/// latency from the clusters `canary` and `stable` of envoy/envoy.yaml.
fn policy(dir: &Path) -> PathBuf {
    let more_spec = "  source: {preset: envoy_cluster, canary: [canary], control: [stable]}\n";
    TestPolicy { name: "mesh-e2e", deployment: "demo", ladder: &LADDER, min_requests_per_cohort: 50, more_spec }
        .write(dir, "policy.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_on_envoys_cluster_stats_with_the_filter_routing_only() {
    let dir = fresh_dir("mesh-source");
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_behaviour(Behaviour { fail_fraction: CANARY_FAIL_FRACTION, ..Behaviour::default() });
    let analyzer_port = free_port();
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, SocketAddr::from(([127, 0, 0, 1], analyzer_port)));
    config.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = POLL_MS.into();
        json["analyzer"]["timeout_ms"] = 250.into();
        // The shipped example outcome rule is counted per cohort: refused with routing only.
        json.as_object_mut().map(|o| o.remove("outcomes"));
        json["metrics"] = "none".into();
    });
    let envoy = Envoy::start(&config, 2).await;
    let prometheus = Prometheus::start(&[envoy.admin], SCRAPE_INTERVAL).await;
    prometheus.wait_for_two_scrapes(LIMIT).await;
    let load = Load::start(envoy.listener, LoadOptions { rps: RPS, users: 4_000, ..LoadOptions::default() });
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.policies = vec![policy(&dir)];
    options.port = Some(analyzer_port);
    options.extra_args = vec!["--prometheus".into(), prometheus.url.clone()];
    let started = Instant::now();
    let analyzer = AnalyzerProcess::start(options).await;

    let decided = |s: &canary_analyzer::engine::RolloutStatus| s.state.phase != RolloutPhase::Progressing;
    let (status, shares) = analyzer.until("demo", LIMIT, Duration::from_millis(200), decided).await;
    eprintln!(
        "decided after {:.1} s: {:?} through shares {shares:?}",
        started.elapsed().as_secs_f64(),
        status.state.phase
    );
    assert_eq!(status.state.phase, RolloutPhase::RolledBack, "{status:#?}\n{}", analyzer.log_text());
    assert!(shares == [2_000, 0] || shares == [2_000, 5_000, 0], "rolled back at the first or second step: {shares:?}");
    assert!(canary.failed_requests() > 0, "the canary cluster was reached and failed");

    let audit = analyzer.audit("demo").await;
    let rollback = audit.last().expect("audit records");
    assert_eq!(format!("{:?}", rollback.decision.action), "Rollback", "{rollback:#?}");
    let row = rollback.decision.rows.iter().find(|r| r.metric == "error_rate").expect("an error_rate row");
    assert_eq!(format!("{:?}", row.verdict), "Worse", "{row:?}");
    let (canary_rate, control_rate) = (row.canary.expect("canary error rate"), row.control.expect("control rate"));
    assert!((canary_rate - CANARY_FAIL_FRACTION).abs() < 0.05 && control_rate == 0.0, "{row:?}");
    // Latency from Envoy's cluster histograms, read as the analyzer reads them. Envoy merges
    // histograms on its stats flush (5 s), so they may trail the counters at the rollback: poll.
    // Envoy's buckets are in milliseconds (0.5, 1, 5, ...): unconverted, every request would fall
    // at or below "1 µs"; a loopback request takes tens of µs or more.
    let source = PrometheusSource::new(prometheus.url.clone(), Duration::from_secs(5)).expect("source");
    let mapping = MeshMapping::from_preset(
        MeshPreset::EnvoyCluster,
        vec!["canary".into()],
        vec!["stable".into()],
        Default::default(),
    );
    let deadline = Instant::now() + LIMIT;
    let (canary_latency, control_latency) = loop {
        let interval = source.interval_from(Some(&mapping), "demo", LATENCY_WINDOW, None).await.expect("interval");
        let filled = |cohort| interval.latency(cohort).filter(|h| h.total() > 0).cloned();
        if let (Some(canary), Some(control)) = (filled(Cohort::Canary), filled(Cohort::Control)) {
            break (canary, control);
        }
        assert!(Instant::now() < deadline, "no latency from the cluster histograms: {interval:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(canary_latency.upper_bounds_us()[..4], [500, 1_000, 5_000, 10_000], "Envoy's default buckets in µs");
    let p50 = |h: &canary_analyzer::stats::LatencyHistogram| h.quantile_estimate_us(0.5).expect("a p50");
    let (canary_p50, control_p50) = (p50(&canary_latency), p50(&control_latency));
    eprintln!("p50 canary {canary_p50:.0} µs, control {control_p50:.0} µs");
    assert!((10.0..1_000_000.0).contains(&canary_p50) && (10.0..1_000_000.0).contains(&control_p50));

    // Routing only: the filter counted nothing per cohort, yet told what it applies.
    assert!(prometheus.query("canary_requests_total").await.is_empty(), "no per-cohort counter is exported");
    assert!(prometheus.query("canary_latency_us_bucket").await.is_empty(), "no per-cohort histogram is exported");
    let applied = prometheus.query("canary_applied_share_bp{deployment=\"demo\"}").await;
    assert!(!applied.is_empty(), "the applied-rollout gauges stay");
    drop(load);
}

/// The cumulative Istio series of one phase (`0` or `1`) of the synthetic exposition: orders'
/// `v2` (canary) and `v1` (control), and `payments` `v2`, which `match` must leave out. Each
/// histogram is written twice, in ms and in s, as Istio exports one or the other.
fn istio_exposition(phase: u64) -> String {
    let mut text = String::from("# TYPE istio_requests_total counter\n");
    let requests: [(&str, &str, &str, u64, u64); 6] = [
        ("orders", "v2", "200", 50, 40),
        ("orders", "v2", "503", 5, 10),
        ("orders", "v2", "0", 1, 2),
        ("orders", "v1", "200", 500, 400),
        ("orders", "v1", "404", 3, 4),
        ("payments", "v2", "500", 1_000, 1_000),
    ];
    for (service, version, code, base, growth) in requests {
        text += &format!(
            "istio_requests_total{{destination_service_name=\"{service}\",destination_version=\"{version}\",\
             response_code=\"{code}\"}} {}\n",
            base + phase * growth
        );
    }
    // Istio's default buckets up to 25 ms, in ms and in s; cumulative counts per `le`.
    let bounds_ms = ["0.5", "1", "5", "25", "+Inf"];
    let bounds_s = ["0.0005", "0.001", "0.005", "0.025", "+Inf"];
    let histograms: [(&str, &str, [u64; 5], [u64; 5]); 3] = [
        ("orders", "v2", [10, 20, 40, 55, 56], [5, 15, 30, 45, 52]),
        ("orders", "v1", [100, 200, 400, 550, 560], [50, 150, 300, 450, 460]),
        ("payments", "v2", [0, 0, 0, 0, 1_000], [0, 0, 0, 0, 1_000]),
    ];
    for (name, bounds) in
        [("istio_request_duration_milliseconds", bounds_ms), ("istio_request_duration_seconds", bounds_s)]
    {
        text += &format!("# TYPE {name} histogram\n");
        for (service, version, base, growth) in histograms {
            let labels = format!("destination_service_name=\"{service}\",destination_version=\"{version}\"");
            for ((le, base), growth) in bounds.iter().zip(base).zip(growth) {
                text += &format!("{name}_bucket{{{labels},le=\"{le}\"}} {}\n", base + phase * growth);
            }
            text += &format!("{name}_sum{{{labels}}} 0\n{name}_count{{{labels}}} {}\n", base[4] + phase * growth[4]);
        }
    }
    text
}

/// Waits until Prometheus holds a scrape taken after `after_ms` in which orders' requests add up to
/// `total`; that scrape's time (ms since the epoch).
async fn istio_scrape_after(prometheus: &Prometheus, after_ms: u64, total: u64) -> u64 {
    let deadline = Instant::now() + LIMIT;
    let single = |result: Vec<serde_json::Value>| result.first()?["value"][1].as_str()?.parse::<f64>().ok();
    loop {
        let selector = "istio_requests_total{destination_service_name=\"orders\"}";
        let at = single(prometheus.query(&format!("max(timestamp({selector}))")).await);
        let seen = single(prometheus.query(&format!("sum({selector})")).await);
        if let (Some(at), Some(seen)) = (at, seen) {
            let at_ms = (at * 1_000.0).round() as u64;
            if at_ms > after_ms && seen as u64 == total {
                return at_ms;
            }
        }
        assert!(Instant::now() < deadline, "prometheus never scraped {total} requests:\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis())
        .expect("ms")
}

/// Istio cannot run here: a synthetic exposition of Istio's standard metrics, served to a real
/// Prometheus, read through the `istio` and `istio_seconds` presets. The counts between two
/// scrapes come back per cohort and class, `match` leaves the other service out, and both
/// histograms (ms and s) come back with the same bounds in µs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_standard_metrics_read_through_a_real_prometheus_give_exact_counts_and_microseconds() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    let exposition = Arc::new(Mutex::new(istio_exposition(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let served = Arc::clone(&exposition);
    let _server = canary_e2e::http_server::spawn(listener, move |_| {
        let body = served.lock().expect("exposition lock").clone();
        async move { canary_e2e::http_server::response(200, &[("content-type", "text/plain; version=0.0.4")], body) }
    });
    let prometheus = Prometheus::start(&[addr], SCRAPE_INTERVAL).await;
    let start_ms = istio_scrape_after(&prometheus, 0, 50 + 5 + 1 + 500 + 3).await;
    *exposition.lock().expect("exposition lock") = istio_exposition(1);
    let changed_ms = now_ms();
    let end_ms = istio_scrape_after(&prometheus, changed_ms, 50 + 5 + 1 + 500 + 3 + 40 + 10 + 2 + 400 + 4).await;

    let source = PrometheusSource::new(prometheus.url.clone(), Duration::from_secs(5)).expect("source");
    let window = Duration::from_millis(end_ms - start_ms);
    let at = Some(std::time::UNIX_EPOCH + Duration::from_millis(end_ms));
    let orders = BTreeMap::from([("destination_service_name".to_string(), "orders".to_string())]);
    for preset in [MeshPreset::Istio, MeshPreset::IstioSeconds] {
        let mapping = MeshMapping::from_preset(preset, vec!["v2".into()], vec!["v1".into()], orders.clone());
        let interval = source.interval_from(Some(&mapping), "orders", window, at).await.expect("interval");
        let (canary, control) = (&interval.cohorts.canary.requests, &interval.cohorts.control.requests);
        let what = preset.label();
        assert_eq!((canary.success, canary.server_error, canary.reset, canary.total()), (40, 10, 2, 52), "{what}");
        assert_eq!((control.success, control.client_error, control.total()), (400, 4, 404), "{what}");
        let canary_latency = interval.latency(Cohort::Canary).expect("canary histogram");
        assert_eq!(canary_latency.upper_bounds_us(), &[500, 1_000, 5_000, 25_000], "{what}");
        assert_eq!(canary_latency.bucket_counts(), &[5, 10, 15, 15, 7], "{what}");
        let control_latency = interval.latency(Cohort::Control).expect("control histogram");
        assert_eq!(control_latency.bucket_counts(), &[50, 100, 150, 150, 10], "{what}");
        assert_eq!(interval.requests(Cohort::Forced), 0, "{what}");
    }
}
