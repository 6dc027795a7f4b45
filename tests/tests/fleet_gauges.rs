//! The applied-rollout gauges (`docs/metrics.md`) against the real Envoy at
//! `--concurrency 4` (four worker VMs and the main thread's, all setting the same
//! gauges), and the analyzer's Envoy admin source reading them per proxy.

use canary_analyzer::source::{DeltaTracker, EnvoyAdminSource, ProxyApplied};
use canary_core::Cohort;
use canary_core::metrics::{APPLIED_GENERATION, APPLIED_SHARE_BP, CONFIG_AGE_MS};
use canary_core::metrics::{NO_GENERATION, UNKNOWN_AGE_MS};
use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::rig::{DEPLOYMENT, POLL_INTERVAL, Rig, RigOptions};
use canary_e2e::traffic::user_ids;
use canary_e2e::upstream::Upstream;
use prometheus_parse::{Scrape, Value};
use std::time::{Duration, Instant};

/// The rig's `stale_after_ms` (tests/src/rig.rs).
const RIG_STALE_AFTER_MS: u64 = 2_000;
/// How often the tests read `/stats/prometheus` while waiting: a fifth of a VM's 125 ms tick.
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// The three gauges of the demo deployment: `(generation, share_bp, config_age_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gauges {
    generation: u64,
    share_bp: u64,
    config_age_ms: u64,
}

/// Reads the gauges from exposition text, checking each is a `gauge` labelled with
/// exactly `deployment="demo"`; `None` if any is missing.
fn gauges(text: &str) -> Option<Gauges> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Envoy's exposition parses");
    let value = |name: &str| {
        let sample = scrape.samples.iter().find(|s| s.metric == name)?;
        let labels: Vec<(&String, &String)> = sample.labels.iter().collect();
        assert_eq!(labels.len(), 1, "{name} labels: {labels:?}");
        assert_eq!(sample.labels.get("deployment"), Some(DEPLOYMENT), "{name}");
        match sample.value {
            // Envoy prints u64 gauges in full; f64 keeps every value these tests expect exactly,
            // and u64::MAX saturates back to itself.
            Value::Gauge(v) => Some(v as u64),
            ref other => panic!("{name} is not a gauge: {other:?}"),
        }
    };
    Some(Gauges {
        generation: value(APPLIED_GENERATION)?,
        share_bp: value(APPLIED_SHARE_BP)?,
        config_age_ms: value(CONFIG_AGE_MS)?,
    })
}

/// Envoy's `filter` on `/stats/prometheus`: only the three gauges, so a read takes
/// milliseconds and the tests can sample faster than a VM ticks, even on a busy machine.
const GAUGES_ONLY: &str = "(applied_generation|applied_share_bp|config_age_ms)$";

/// The gauges from `/stats/prometheus` (all of it when `whole`, else [`GAUGES_ONLY`]).
async fn read_gauges_from(rig: &Rig, whole: bool) -> Gauges {
    let url = format!("http://{}/stats/prometheus", rig.envoy.admin);
    let request = reqwest::Client::new().get(url);
    let request = if whole { request } else { request.query(&[("filter", GAUGES_ONLY)]) };
    let text = request.send().await.expect("admin reachable").text().await.expect("stats text");
    gauges(&text).unwrap_or_else(|| panic!("the applied-rollout gauges are missing:\n{text}"))
}

async fn read_gauges(rig: &Rig) -> Gauges {
    read_gauges_from(rig, false).await
}

async fn read_gauges_of(envoy: &Envoy) -> Gauges {
    let url = format!("http://{}/stats/prometheus", envoy.admin);
    let text = reqwest::get(url).await.expect("admin reachable").text().await.expect("stats text");
    gauges(&text).unwrap_or_else(|| panic!("the applied-rollout gauges are missing:\n{text}"))
}

/// Reads the gauges until `wanted` holds; the time it took.
async fn wait_for_gauges(rig: &Rig, limit: Duration, wanted: impl Fn(&Gauges) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let seen = read_gauges(rig).await;
        if wanted(&seen) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "gauges still {seen:?} after {limit:?}");
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Sends `n` requests as canary users and `n` as control users at `share_bp`.
async fn traffic(rig: &Rig, share_bp: u32, n: usize) {
    let (canary, control): (Vec<String>, Vec<String>) =
        user_ids(41, 400).into_iter().partition(|id| Rig::expected_version(id, share_bp) == "canary");
    for users in [&canary, &control] {
        let batch: Vec<String> = users.iter().cycle().take(n).cloned().collect();
        let statuses = rig.client.statuses_for("/", &batch).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_any_answer_the_gauges_say_no_generation_the_initial_share_and_unknown_age() {
    // The rig waits for a first answer; this Envoy's config server refuses from the start.
    let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
    let config_server = ConfigServer::start(Answer::Status(503)).await;
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, config_server.addr);
    config.edit_plugin_config(|json| {
        json["initial_share_bp"] = 300.into();
        json["analyzer"]["poll_interval_ms"] = u64::try_from(POLL_INTERVAL.as_millis()).expect("small").into();
        json["analyzer"]["timeout_ms"] = 250.into();
    });
    let envoy = Envoy::start(&config, 4).await;
    let since = Instant::now();
    while config_server.polls_since(since).len() < 2 {
        assert!(since.elapsed() < Duration::from_secs(5), "the filter never polled");
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let before = read_gauges_of(&envoy).await;
    assert_eq!(before, Gauges { generation: NO_GENERATION, share_bp: 300, config_age_ms: UNKNOWN_AGE_MS });

    config_server.set(Answer::share(DEPLOYMENT, 4, 700));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = read_gauges_of(&envoy).await;
        if (seen.generation, seen.share_bp) == (4, 700) {
            assert!(u128::from(seen.config_age_ms) < POLL_INTERVAL.as_millis() * 2, "{seen:?}");
            break;
        }
        assert!(Instant::now() < deadline, "gauges still {seen:?}");
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

fn four_workers() -> RigOptions {
    RigOptions { concurrency: 4, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vm_exports_a_new_generation_and_share_within_two_intervals() {
    let rig = Rig::start(500, four_workers()).await;
    let started = read_gauges_from(&rig, true).await;
    assert_eq!((started.generation, started.share_bp), (1, 500));
    assert!(started.config_age_ms < RIG_STALE_AFTER_MS, "healthy polling, yet {started:?}");

    let changed_at = Instant::now();
    rig.config_server.set(Answer::share(DEPLOYMENT, 2, 2_500));
    let took = wait_for_gauges(&rig, Duration::from_secs(5), |g| (g.generation, g.share_bp) == (2, 2_500)).await;
    assert!(took <= POLL_INTERVAL * 2, "the gauges took {took:?} to show generation 2");
    // Past two intervals every VM has read the new record: a VM still on generation 1
    // would write it back on its next tick (every 125 ms), so watch for one more interval.
    tokio::time::sleep((POLL_INTERVAL * 2).saturating_sub(changed_at.elapsed())).await;
    let watch_until = Instant::now() + POLL_INTERVAL;
    let mut samples = 0;
    while Instant::now() < watch_until {
        let seen = read_gauges(&rig).await;
        assert_eq!((seen.generation, seen.share_bp), (2, 2_500), "a VM exported the old rollout");
        assert!(seen.config_age_ms < RIG_STALE_AFTER_MS, "{seen:?}");
        samples += 1;
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    eprintln!("generation 2 after {took:?}; {samples} samples in the next interval");
    // A VM that never read the new record rewrites the old values every 125 ms tick, so a
    // handful of samples over the interval sees it; 10-17 were taken here on a loaded machine.
    assert!(samples >= 4, "only {samples} samples in one interval");
    rig.wait_for_share(2_500, POLL_INTERVAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envoy_admin_source_reports_the_proxy_and_its_generation_change() {
    let rig = Rig::start(500, four_workers()).await;
    let admin_url = format!("http://{}", rig.envoy.admin);
    let source = EnvoyAdminSource::new([admin_url.clone()], DEPLOYMENT, Duration::from_secs(2)).expect("source");
    let mut tracker = DeltaTracker::new();

    let baseline = tracker.advance(source.scrape().await);
    let [proxy] = baseline.proxies.as_slice() else { panic!("one proxy expected: {:?}", baseline.proxies) };
    assert_eq!((proxy.proxy.as_str(), proxy.generation, proxy.share_bp), (admin_url.as_str(), Some(1), Some(500)));
    assert!(proxy.config_age_ms.is_some_and(|age| age < RIG_STALE_AFTER_MS), "{proxy:?}");
    assert_eq!((proxy.changed_during_interval, proxy.canary_requests, proxy.control_requests), (false, 0, 0));

    rig.config_server.set(Answer::share(DEPLOYMENT, 2, 2_500));
    wait_for_gauges(&rig, Duration::from_secs(5), |g| (g.generation, g.share_bp) == (2, 2_500)).await;
    rig.wait_for_share(2_500, POLL_INTERVAL * 2).await;
    traffic(&rig, 2_500, 30).await;
    let changed = tracker.advance(source.scrape().await);
    let expected = ProxyApplied {
        proxy: admin_url.clone(),
        generation: Some(2),
        share_bp: Some(2_500),
        config_age_ms: changed.proxies.first().and_then(|p| p.config_age_ms),
        changed_during_interval: true,
        // The probes of wait_for_share are counted too: every request of the interval.
        canary_requests: changed.requests(Cohort::Canary),
        control_requests: changed.requests(Cohort::Control),
        other_deployments: None,
    };
    assert_eq!(changed.proxies, vec![expected]);
    assert!(changed.requests(Cohort::Canary) >= 30 && changed.requests(Cohort::Control) >= 30);

    traffic(&rig, 2_500, 10).await;
    let steady = tracker.advance(source.scrape().await);
    let [proxy] = steady.proxies.as_slice() else { panic!("one proxy expected: {:?}", steady.proxies) };
    assert_eq!((proxy.generation, proxy.share_bp, proxy.changed_during_interval), (Some(2), Some(2_500), false));
    assert_eq!((proxy.canary_requests, proxy.control_requests), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_staleness_limit_under_control_the_share_gauge_is_0_and_the_age_passes_the_limit() {
    const STALE_AFTER_MS: u64 = 1_000;
    let options = RigOptions {
        concurrency: 4,
        plugin: Box::new(|json| {
            json["analyzer"]["stale_after_ms"] = STALE_AFTER_MS.into();
            json["analyzer"]["when_stale"] = "control".into();
        }),
        ..Default::default()
    };
    let mut rig = Rig::start(5_000, options).await;
    rig.config_server.stop();
    wait_for_gauges(&rig, Duration::from_secs(5), |g| g.share_bp == 0).await;
    let stale = read_gauges(&rig).await;
    assert_eq!(stale.generation, 1, "the generation last applied stays: {stale:?}");
    assert!(stale.config_age_ms > STALE_AFTER_MS, "{stale:?}");
    rig.wait_for_share(0, POLL_INTERVAL).await;

    let admin_url = format!("http://{}", rig.envoy.admin);
    let source = EnvoyAdminSource::new([admin_url.clone()], DEPLOYMENT, Duration::from_secs(2)).expect("source");
    let interval = DeltaTracker::new().advance(source.scrape().await);
    let [proxy] = interval.proxies.as_slice() else { panic!("one proxy expected: {:?}", interval.proxies) };
    assert_eq!((proxy.generation, proxy.share_bp), (Some(1), Some(0)));
    assert!(proxy.config_age_ms.is_some_and(|age| age > STALE_AFTER_MS), "{proxy:?}");

    rig.config_server.restart().await;
    wait_for_gauges(&rig, Duration::from_secs(5), |g| g.share_bp == 5_000 && g.config_age_ms < STALE_AFTER_MS).await;
}
