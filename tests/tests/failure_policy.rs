//! Envoy's failure policies with a real VM failure: the probe filter, loaded in place of
//! ours, panics on every request or on one that carries `x-probe-panic`.
//!
//! - The shipped `FAIL_RELOAD`: the failed request and those within the reload backoff
//!   get a 503, then a new VM runs the filter again (it counts requests again).
//! - `FAIL_OPEN` (Istio's shipped `failStrategy`): Envoy keeps serving but skips the
//!   filter on that worker from then on, so everybody reaches stable, nothing is counted,
//!   and the header strip in front must keep a client from picking the canary.
//! - `FAIL_CLOSED` (Envoy's and Istio's default): every later request on that worker is a 503.

use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{Envoy, EnvoyConfig, probe_wasm_path};
use canary_e2e::traffic::{Client, user_ids};
use canary_e2e::upstream::Upstream;
use std::time::{Duration, Instant};

struct FailedFilter {
    envoy: Envoy,
    client: Client,
    _upstreams: (Upstream, Upstream, ConfigServer),
}

/// Envoy on the shipped config with the probe filter (`probe_config`) in place of ours,
/// under `policy` (`None`: as shipped).
async fn envoy_with_the_probe(probe_config: &str, policy: Option<&str>, strip: bool, workers: u32) -> FailedFilter {
    let probe = probe_wasm_path();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let config_server = ConfigServer::start(Answer::share("demo", 1, 10_000)).await;
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, config_server.addr);
    config.with_wasm_module(&probe);
    config.set_plugin_config_text(probe_config);
    if let Some(policy) = policy {
        config.set_failure_policy(policy);
    }
    if !strip {
        config.without_header_stripping();
    }
    let envoy = Envoy::start(&config, workers).await;
    let client = Client::new(envoy.listener);
    FailedFilter { envoy, client, _upstreams: (stable, canary, config_server) }
}

async fn envoy_with_a_panicking_filter(strip: bool) -> FailedFilter {
    envoy_with_the_probe("panic_on_request=1", Some("FAIL_OPEN"), strip, 2).await
}

/// The probe's request counter (incremented in `on_log` by a live VM) and Envoy's count
/// of VM reloads.
async fn probe_counts(envoy: &Envoy) -> (u64, u64) {
    let stats = envoy.prometheus().await;
    let value = |prefix: &str| {
        stats
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    (value("probe_requests"), value("envoy_wasm_wasm_canary_vm_reload_success"))
}

/// Waits until the probe has counted `n` requests (stats are flushed asynchronously).
async fn wait_for_probe_count(envoy: &Envoy, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe_counts(envoy).await.0 < n {
        assert!(Instant::now() < deadline, "the probe counted {:?}, expected {n}", probe_counts(envoy).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One worker, one VM failure: what Envoy answers after it, until when.
struct AfterFailure {
    /// 503s answered after the failed request, before the first other answer.
    refused: usize,
    /// How long those lasted.
    refused_for: Duration,
    /// The status of the first other answer.
    then: u16,
}

async fn fail_the_vm_once(rig: &FailedFilter) -> AfterFailure {
    assert_eq!(rig.client.get("/", &[]).await.status, 200);
    wait_for_probe_count(&rig.envoy, 1).await;
    let failed = rig.client.get("/", &[("x-probe-panic", "1")]).await;
    assert_eq!((failed.status, failed.version), (503, None), "the request that failed the VM");
    let start = Instant::now();
    let mut refused = 0;
    loop {
        let reply = rig.client.get("/", &[]).await;
        if reply.status != 503 || start.elapsed() > Duration::from_secs(5) {
            return AfterFailure { refused, refused_for: start.elapsed(), then: reply.status };
        }
        refused += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_shipped_fail_reload_a_failed_vm_is_replaced_within_its_backoff() {
    let rig = envoy_with_the_probe("panic_on_header=1,increment_counter=1", None, true, 1).await;
    let after = fail_the_vm_once(&rig).await;
    // The shipped backoff is 0.1 s; Envoy starts the new VM on the first request after it.
    assert_eq!(after.then, 200, "no VM came back within 5 s ({} requests refused)", after.refused);
    assert!(after.refused_for < Duration::from_millis(600), "503s for {:?} after the failure", after.refused_for);
    // The new VM runs the filter: it counts again, and Envoy counts the reload.
    wait_for_probe_count(&rig.envoy, 2).await;
    let (_, reloads) = probe_counts(&rig.envoy).await;
    assert_eq!(reloads, 1, "Envoy's vm_reload_success");
    println!("FAIL_RELOAD: {} requests refused for {:?} after the failure", after.refused, after.refused_for);
    // It fails and comes back as often as it is made to.
    for _ in 0..3 {
        assert_eq!(fail_the_vm_once(&rig).await.then, 200);
    }
    assert_eq!(probe_counts(&rig.envoy).await.1, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_fail_open_a_failed_vm_is_skipped_until_envoy_restarts_and_under_fail_closed_all_is_503() {
    let open = envoy_with_the_probe("panic_on_header=1,increment_counter=1", Some("FAIL_OPEN"), true, 1).await;
    let after = fail_the_vm_once(&open).await;
    assert_eq!((after.refused, after.then), (0, 200), "FAIL_OPEN serves on at once");
    for _ in 0..20 {
        assert_eq!(open.client.get("/", &[]).await.version.as_deref(), Some("stable"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // stats flush; nothing may arrive
    assert_eq!(probe_counts(&open.envoy).await, (1, 0), "the filter no longer runs: nothing counted, no reload");

    let closed = envoy_with_the_probe("panic_on_header=1,increment_counter=1", Some("FAIL_CLOSED"), true, 1).await;
    let after = fail_the_vm_once(&closed).await;
    assert_eq!(after.then, 503, "FAIL_CLOSED answered {} after the failure", after.then);
    assert!(after.refused >= 100, "{} requests, all 503, over 5 s", after.refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_filter_sends_everybody_to_stable_and_the_strip_keeps_clients_out_of_canary() {
    let rig = envoy_with_a_panicking_filter(true).await;
    // The panic takes down the VM of the worker that ran it: the request in flight
    // gets a 503, and from then on that worker skips the filter. So at most one 503
    // per worker (2); every other request is served by stable, even when the client
    // asks for canary, and the client's header never reaches the upstream.
    let mut replies = Vec::new();
    for id in user_ids(41, 200) {
        replies.push(rig.client.get("/", &[("x-user-id", &id), ("x-canary-cohort", "canary")]).await);
    }
    let failed = replies.iter().filter(|r| r.status == 503 && r.version.is_none()).count();
    assert!((1..=2).contains(&failed), "{failed} requests failed with the VM; expected one per worker that ran it");
    for reply in replies.iter().filter(|r| r.status != 503) {
        assert_eq!(
            (reply.status, reply.version.as_deref()),
            (200, Some("stable")),
            "upstream saw cohort header {:?}",
            reply.seen_cohort_header
        );
        assert_eq!(reply.seen_cohort_header.as_deref(), Some(""), "the client's header reached the upstream");
    }
    let log = rig.envoy.log_text();
    assert!(log.contains("panic_on_request is set"), "the VM did not fail as planned:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_strip_a_failed_filter_lets_a_client_pick_the_canary() {
    // Why the strip ships: the same failure without it routes on the client's header.
    let rig = envoy_with_a_panicking_filter(false).await;
    let mut picked = 0;
    for id in user_ids(42, 50) {
        let reply = rig.client.get("/", &[("x-user-id", &id), ("x-canary-cohort", "canary")]).await;
        picked += usize::from(reply.version.as_deref() == Some("canary"));
    }
    assert!(picked >= 45, "only {picked} of 50 requests asking for canary got it with the filter down");
}
