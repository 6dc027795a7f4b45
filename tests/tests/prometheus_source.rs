//! The analyzer's metric sources against the real thing: Envoy with the filter,
//! scraped by a real Prometheus (`/usr/bin/prometheus`, Debian package `prometheus`,
//! or `$PROMETHEUS`) every second. Known traffic, including 503s, must come back as
//! the same per-cohort counts from the Prometheus source and the Envoy admin source,
//! and both sources must report the one Envoy with the generation and share it applies.

use canary_analyzer::source::{DeltaTracker, EnvoyAdminSource, IntervalMetrics, PrometheusSource};
use canary_core::Cohort;
use canary_e2e::config_server::Answer;
use canary_e2e::prometheus::Prometheus;
use canary_e2e::rig::{DEPLOYMENT, Rig, RigOptions};
use canary_e2e::traffic::user_ids;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Generous upper bound for anything to show up; only a guard against hanging.
const PATIENCE: Duration = Duration::from_secs(60);

/// Time (ms since the epoch) and values of the latest scrape of the demo counters:
/// `(timestamp, total requests)`, once Prometheus has one.
async fn latest_scrape(prometheus: &Prometheus) -> Option<(u64, f64)> {
    let single = |result: Vec<serde_json::Value>| result.first()?["value"][1].as_str()?.parse::<f64>().ok();
    let query = format!("max(timestamp(canary_requests_total{{deployment=\"{DEPLOYMENT}\"}}))");
    let ms = single(prometheus.query(&query).await)? * 1_000.0;
    let total = single(prometheus.query(&format!("sum(canary_requests_total{{deployment=\"{DEPLOYMENT}\"}})")).await)?;
    Some((ms.round() as u64, total))
}

/// Waits until Prometheus holds a sample of `generation` after one of another;
/// the times of the last sample before it and of its first: `(before_ms, first_ms)`.
async fn generation_change(prometheus: &Prometheus, generation: u64) -> (u64, u64) {
    let deadline = Instant::now() + PATIENCE;
    let query = format!("canary_applied_generation{{deployment=\"{DEPLOYMENT}\"}}[30s]");
    loop {
        let series = prometheus.samples(&query).await;
        let samples = series.first().map(|(_, samples)| samples.as_slice()).unwrap_or_default();
        let first = samples.iter().position(|(_, g)| *g == generation as f64);
        if let Some(first) = first.filter(|at| *at > 0) {
            return (samples[first - 1].0, samples[first].0);
        }
        assert!(Instant::now() < deadline, "no change to generation {generation}: {samples:?}\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for a scrape taken after `after_ms` that saw `total` requests; its timestamp.
async fn scrape_after(prometheus: &Prometheus, after_ms: u64, total: u64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((at_ms, seen)) = latest_scrape(prometheus).await {
            if at_ms > after_ms && seen as u64 == total {
                return at_ms;
            }
        }
        assert!(Instant::now() < deadline, "prometheus never scraped {total} requests:\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis()).expect("ms")
}

/// Total requests of every cohort once Envoy's histograms (merged on stats flush)
/// have caught up with its counters, so a scrape from now on is final.
async fn settled_total(envoy: &EnvoyAdminSource, admin_url: &str) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let snapshot = envoy.scrape_one(admin_url).await.expect("envoy admin scrape");
        let caught_up = snapshot
            .cohorts
            .iter()
            .all(|(_, cohort)| cohort.latency.as_ref().map_or(0, |l| l.count) == cohort.requests.total());
        if caught_up {
            return snapshot.cohorts.iter().map(|(_, cohort)| cohort.requests.total()).sum();
        }
        assert!(Instant::now() < deadline, "envoy histograms never caught up with the counters");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The per-cohort figures the test checks: (2xx, 4xx, 5xx, all, errors, histogram total).
fn figures(metrics: &IntervalMetrics, cohort: Cohort) -> (u64, u64, u64, u64, u64, Option<u64>) {
    let requests = &metrics.cohorts.get(cohort).requests;
    let counts = metrics.cohort_counts(cohort);
    let latency_total = metrics.latency(cohort).map(|h| h.total());
    (requests.success, requests.client_error, requests.server_error, counts.requests, counts.errors, latency_total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_envoy_admin_sources_count_the_same_known_traffic() {
    let rig = Rig::start(5_000, RigOptions::default()).await;
    let admin_url = format!("http://{}", rig.envoy.admin);
    let prometheus = Prometheus::start(&[rig.envoy.admin], Duration::from_secs(1)).await;
    let envoy = EnvoyAdminSource::new([admin_url.clone()], DEPLOYMENT, Duration::from_secs(2)).expect("source");

    // Baseline: the rig's readiness probes are already counted; wait until they are
    // final in Envoy and in a Prometheus scrape taken after that.
    let before_total = settled_total(&envoy, &admin_url).await;
    let mut tracker = DeltaTracker::new();
    let baseline = tracker.advance(envoy.scrape().await);
    assert_eq!(baseline.baseline_targets, vec![admin_url.clone()]);
    let start_ms = scrape_after(&prometheus, now_ms(), before_total).await;

    // Known traffic, per cohort: 60 x 200, 15 x 503 (application errors), 5 x 404.
    let (canary, control): (Vec<String>, Vec<String>) =
        user_ids(33, 400).into_iter().partition(|id| Rig::expected_version(id, 5_000) == "canary");
    let plan: [(&str, usize, u16); 3] = [("/", 60, 200), ("/status/503", 15, 503), ("/status/404", 5, 404)];
    for users in [&canary, &control] {
        for (path, n, expected) in plan {
            let batch: Vec<String> = users.iter().cycle().take(n).cloned().collect();
            let statuses = rig.client.statuses_for(path, &batch).await;
            assert!(statuses.iter().all(|s| *s == expected), "{path}: {statuses:?}");
        }
    }
    let expected = (60, 5, 15, 80, 15, Some(80));

    // The Envoy admin source: one interval from the baseline to now.
    let after_total = settled_total(&envoy, &admin_url).await;
    let settled_ms = now_ms();
    assert_eq!(after_total, before_total + 160);
    let from_envoy = tracker.advance(envoy.scrape().await);
    assert_eq!(from_envoy.contributing_targets, vec![admin_url.clone()]);
    assert!(from_envoy.failed_targets.is_empty() && from_envoy.restarted_targets.is_empty());
    assert_eq!(figures(&from_envoy, Cohort::Canary), expected, "envoy admin source, canary");
    assert_eq!(figures(&from_envoy, Cohort::Control), expected, "envoy admin source, control");

    // The Prometheus source, between the two scrapes around the traffic: the window
    // runs from the baseline scrape (its start) to the scrape after the traffic.
    let end_ms = scrape_after(&prometheus, settled_ms, after_total).await;
    let at = UNIX_EPOCH + Duration::from_millis(end_ms);
    let source = PrometheusSource::new(prometheus.url.clone(), Duration::from_secs(5)).expect("source");
    let between_scrapes = Duration::from_millis(end_ms - start_ms);
    let from_prometheus = source.interval(DEPLOYMENT, between_scrapes, Some(at)).await.expect("prometheus interval");
    // A policy's custom `increase()` over a range holding both scrapes: the extra millisecond
    // keeps the first scrape inside under Prometheus 3's left-open ranges too.
    let window = Duration::from_millis(end_ms - start_ms + 1);
    assert_eq!(figures(&from_prometheus, Cohort::Canary), expected, "prometheus source, canary");
    assert_eq!(figures(&from_prometheus, Cohort::Control), expected, "prometheus source, control");
    assert_eq!(from_prometheus.interval_counts(), from_envoy.interval_counts());
    // Prometheus has the configured buckets, the admin source Envoy's own bins. Envoy's
    // `le="B"` counts each of its bins that starts at or below B (docs/metrics.md): the
    // admin source's count up to the bin edge after B.
    for cohort in [Cohort::Canary, Cohort::Control] {
        let prometheus = from_prometheus.latency(cohort).expect("prometheus histogram");
        let admin = from_envoy.latency(cohort).expect("admin histogram");
        let (bins, admin_at) = (admin.upper_bounds_us(), admin.cumulative_at_bounds());
        let bounds = prometheus.upper_bounds_us();
        let expected: Vec<u64> = bounds.iter().map(|b| admin_at[bins.partition_point(|bin| bin <= b)]).collect();
        assert_eq!(prometheus.cumulative_at_bounds(), expected, "{cohort:?}: same counts");
        assert_eq!(prometheus.total(), admin.total(), "{cohort:?}");
    }
    assert_eq!(from_prometheus.requests(Cohort::Forced), 0);

    // Both sources see the one Envoy applying generation 1 at 50 %, unchanged, with the
    // same canary and control requests. Prometheus names it by its `instance` label.
    let [from_admin] = from_envoy.proxies.as_slice() else { panic!("one proxy: {:?}", from_envoy.proxies) };
    let [proxy] = from_prometheus.proxies.as_slice() else { panic!("one proxy: {:?}", from_prometheus.proxies) };
    assert_eq!(proxy.proxy, rig.envoy.admin.to_string());
    assert_eq!((proxy.generation, proxy.share_bp, proxy.changed_during_interval), (Some(1), Some(5_000), false));
    assert_eq!((proxy.canary_requests, proxy.control_requests), (80, 80));
    assert_eq!(
        (from_admin.generation, from_admin.share_bp, from_admin.canary_requests, from_admin.control_requests),
        (proxy.generation, proxy.share_bp, proxy.canary_requests, proxy.control_requests)
    );
    // The rig's stale_after_ms is 2 000: a healthy Envoy's last confirmation is younger.
    assert!(proxy.config_age_ms.is_some_and(|age| age < 2_000), "{proxy:?}");

    // Generation 2 arrives between two scrapes. A window holding both is a change; so is a
    // window holding only the first sample of generation 2 (changes() alone sees none there,
    // the generation one window earlier differs); the window after that first sample is not.
    rig.config_server.set(Answer::share(DEPLOYMENT, 2, 2_500));
    let (before_ms, first_ms) = generation_change(&prometheus, 2).await;
    let at_first = Some(UNIX_EPOCH + Duration::from_millis(first_ms));
    let gap = first_ms - before_ms;
    for (what, window) in [("both samples", gap + 1), ("only the new sample", gap / 2)] {
        let interval = source.interval(DEPLOYMENT, Duration::from_millis(window), at_first).await.expect(what);
        let [proxy] = interval.proxies.as_slice() else { panic!("{what}: one proxy: {:?}", interval.proxies) };
        let applied = (proxy.generation, proxy.share_bp, proxy.changed_during_interval);
        assert_eq!(applied, (Some(2), Some(2_500), true), "{what}: {proxy:?}");
    }
    let later_ms = scrape_after(&prometheus, first_ms + 1_000, after_total).await;
    let since_first = Duration::from_millis(later_ms - first_ms - gap / 2);
    let later = UNIX_EPOCH + Duration::from_millis(later_ms);
    let steady = source.interval(DEPLOYMENT, since_first, Some(later)).await.expect("after the change");
    let [proxy] = steady.proxies.as_slice() else { panic!("one proxy: {:?}", steady.proxies) };
    assert_eq!((proxy.generation, proxy.share_bp, proxy.changed_during_interval), (Some(2), Some(2_500), false));

    // A policy's custom query, once per cohort.
    let template = "sum(increase(canary_requests_total{deployment=\"{{deployment}}\",cohort=\"{{cohort}}\",class=\"5xx\"}[{{window}}]))";
    let errors = source.custom_metric(template, DEPLOYMENT, window, Some(at)).await.expect("custom metric");
    assert_eq!((errors.canary, errors.control), (Some(15.0), Some(15.0)));
    let nothing = "sum(canary_requests_total{deployment=\"nobody\",cohort=\"{{cohort}}\"})";
    let empty = source.custom_metric(nothing, DEPLOYMENT, window, Some(at)).await.expect("empty custom metric");
    assert_eq!((empty.canary, empty.control), (None, None), "no series is no data");

    // Errors name what failed.
    let refused = source.custom_metric("sum(", DEPLOYMENT, window, Some(at)).await.unwrap_err().to_string();
    assert!(refused.starts_with(&format!("prometheus at {}/api/v1/query refused query", prometheus.url)), "{refused}");
}
