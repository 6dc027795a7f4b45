//! Two rollouts through one Envoy gateway, on the real Envoy and the real analyzer:
//! `envoy/gateway.yaml` as shipped (one list-form filter for `checkout.example` and
//! `orders.example`, and `catalog.example`, which is no deployment), with the early
//! header strip removed so that only the filter stands between a client's forged
//! cohort header and the routes (as under Istio, where only the WasmPlugin runs).
//!
//! - A request for the third host passes untouched: the forged header reaches its
//!   upstream as sent, no cookie is set and nothing is counted; a forged header on a
//!   deployment's host is replaced.
//! - `orders`' canary fails 20 % of requests and is rolled back; `checkout`'s is
//!   healthy and is promoted. While both run, every probed user of each host is
//!   routed as that deployment's own hash and share say (the two slices are
//!   independent), and after the verdicts all of checkout's users are on canary and
//!   all of orders' on stable.
//! - The filter polls once per interval per Envoy for both deployments (the batch
//!   endpoint), and an unchanged answer comes back `304`.

use canary_core::{FilterConfig, RolloutPhase};
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, TestPolicy, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::request_log::deployment_version;
use canary_e2e::traffic::{Client, user_ids};
use canary_e2e::upstream::{Behaviour, Upstream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHECKOUT: &str = "checkout.example";
const ORDERS: &str = "orders.example";
const CATALOG: &str = "catalog.example";
/// Every 500 ms, as in the other e2e tests (shipped: 5 s).
const POLL_MS: u64 = 500;
/// Both rollouts must be decided within this (expected: ~20 s).
const LIMIT: Duration = Duration::from_secs(90);

/// A policy with second-long checks: `error_rate` critical, no tolerance.
fn policy(dir: &Path, deployment: &str, ladder: &[(f64, &str)]) -> PathBuf {
    let more_spec = "  metrics:\n    - {name: error_rate, max_relative_increase: 0, critical: true}\n";
    TestPolicy { name: deployment, deployment, ladder, min_requests_per_cohort: 30, more_spec }
        .write(dir, &format!("{deployment}.yaml"))
}

/// The users of `host` whose version differs from what `deployment`'s hash says at `share_bp`.
async fn misrouted(envoy: &Envoy, host: &str, config: &FilterConfig, deployment: usize, share_bp: u32) -> usize {
    let ids = user_ids(0x6a7e, 200);
    let versions = Client::for_host(envoy.listener, host).versions_for(&ids).await;
    let expected = &config.deployments[deployment];
    ids.iter().zip(&versions).filter(|(id, v)| v.as_str() != deployment_version(expected, share_bp, id)).count()
}

/// Waits (5 s: ten polls) until no probed user of `host` is misrouted at the share the
/// analyzer serves for `deployments[index]` (read again on every try: it may move
/// meanwhile); the last count and share.
async fn until_routed(
    envoy: &Envoy,
    analyzer: &AnalyzerProcess,
    host: &str,
    config: &FilterConfig,
    index: usize,
) -> (usize, u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let share_bp = analyzer.status(&config.deployments[index].deployment).await.state.share_bp;
        let wrong = misrouted(envoy, host, config, index, share_bp).await;
        if wrong == 0 || Instant::now() > deadline {
            return (wrong, share_bp);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rollouts_through_one_gateway_are_decided_apart_and_a_third_host_is_untouched() {
    let dir = fresh_dir("gateway");
    let checkout = (Upstream::start("stable").await, Upstream::start("canary").await);
    let orders = (Upstream::start("stable").await, Upstream::start("canary").await);
    let catalog = Upstream::start("catalog").await;
    orders.1.set_behaviour(Behaviour { fail_fraction: 0.2, ..Behaviour::default() });
    let analyzer_port = free_port();

    let mut config = EnvoyConfig::load_on_free_ports("envoy/gateway.yaml");
    for (cluster, upstream) in [
        ("checkout_stable", &checkout.0),
        ("checkout_canary", &checkout.1),
        ("orders_stable", &orders.0),
        ("orders_canary", &orders.1),
        ("catalog", &catalog),
    ] {
        config.point_cluster(cluster, upstream.addr.port());
    }
    config.point_cluster("canary_analyzer", analyzer_port);
    config.without_header_stripping();
    config.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = POLL_MS.into();
        json["analyzer"]["timeout_ms"] = 250.into();
    });
    let plugin = FilterConfig::parse(config.plugin_config().to_string().as_bytes()).expect("gateway.yaml's plugin");
    assert_eq!(plugin.deployment_ids(), ["checkout", "orders"]);
    let envoy = Envoy::start(&config, 2).await;

    // The third host: a forged cohort header reaches its upstream as sent, no sticky
    // cookie for an anonymous client, nothing counted.
    let other = Client::for_host(envoy.listener, CATALOG);
    for _ in 0..40 {
        let reply = other.get("/", &[("x-canary-cohort", "canary")]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version.as_deref(), Some("catalog"));
        assert_eq!(reply.seen_cohort_header.as_deref(), Some("canary"), "the filter touched it");
        assert_eq!(reply.set_cookie, None, "the filter gave a catalog client a sticky id");
    }
    // A deployment's host: the forged header is replaced (no analyzer yet: share 0), and
    // that one request is counted, so the count above could have moved.
    let reply = Client::for_host(envoy.listener, CHECKOUT).get("/", &[("x-canary-cohort", "canary")]).await;
    assert_eq!(reply.seen_cohort_header.as_deref(), Some("stable"));
    assert!(reply.set_cookie.as_ref().is_some_and(|c| c.starts_with("canary_uid=")), "{:?}", reply.set_cookie);
    let deadline = Instant::now() + Duration::from_secs(5);
    while envoy.requests_counted().await < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(envoy.requests_counted().await, 1, "exactly the checkout request is counted, no catalog request");
    assert_eq!(catalog.requests(), 40);
    // Envoy 1.40 offers the route cache clearing the filter asks for after setting the header.
    assert!(envoy.log_text().contains("clear_route_cache is Offered"), "{}", envoy.log_text());

    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.policies = vec![
        policy(&dir, "checkout", &[(25.0, "6s"), (50.0, "6s"), (100.0, "1s")]),
        policy(&dir, "orders", &[(25.0, "30s"), (100.0, "1s")]),
    ];
    options.envoy_admin = vec![format!("http://{}", envoy.admin)];
    options.port = Some(analyzer_port);
    let analyzer = AnalyzerProcess::start(options).await;
    let load = |host: &str, prefix: u32| {
        Load::start(
            envoy.listener,
            LoadOptions {
                rps: 80,
                users: 2_000,
                user_prefix: prefix,
                host: Some(host.into()),
                ..LoadOptions::default()
            },
        )
    };
    let (checkout_load, orders_load) = (load(CHECKOUT, 0xc4ec), load(ORDERS, 0x0a0e));

    // One poll per interval for both deployments: the analyzer cluster's requests over
    // 10 s (20 intervals; one poll per deployment, or per worker, would be 40).
    let polls = "^cluster\\.canary_analyzer\\.upstream_rq_total$";
    let (before, started) = (envoy.stat_sum(polls).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (polled, elapsed) = (envoy.stat_sum(polls).await - before, started.elapsed());
    let intervals = elapsed.as_millis() as u64 / POLL_MS;
    println!("{polled} polls of the analyzer in {elapsed:?} ({intervals} intervals)");
    assert!(polled >= intervals * 6 / 10 && polled <= intervals + 2, "{polled} polls in {elapsed:?}");

    // While both run, every probed user of each host is where its own deployment's hash
    // and share put it; then each is decided, and again.
    for (host, index) in [(CHECKOUT, 0), (ORDERS, 1)] {
        let (wrong, share) = until_routed(&envoy, &analyzer, host, &plugin, index).await;
        assert_eq!(wrong, 0, "{host}: users misrouted at {share} bp");
    }
    let decided = |s: &canary_analyzer::engine::RolloutStatus| s.state.phase != RolloutPhase::Progressing;
    let (orders_status, _) = analyzer.until("orders", LIMIT, Duration::from_millis(200), decided).await;
    assert_eq!(orders_status.state.phase, RolloutPhase::RolledBack, "{orders_status:#?}");
    let (checkout_status, _) = analyzer.until("checkout", LIMIT, Duration::from_millis(200), decided).await;
    assert_eq!(checkout_status.state.phase, RolloutPhase::Promoted, "{checkout_status:#?}");
    assert_eq!(until_routed(&envoy, &analyzer, CHECKOUT, &plugin, 0).await, (0, 10_000), "checkout: not all on canary");
    assert_eq!(until_routed(&envoy, &analyzer, ORDERS, &plugin, 1).await, (0, 0), "orders: not all on stable");

    // The analyzer's batch answers: unchanged ones came back 304.
    let not_modified = envoy.stat_sum("^cluster\\.canary_analyzer\\.upstream_rq_304$").await;
    println!("{not_modified} polls answered 304");
    assert!(not_modified > 0, "no 304 from the batch endpoint");
    assert!(catalog.requests() == 40, "load for the two deployments reached the catalog");
    let (checkout_stats, orders_stats) = (checkout_load.stats(), orders_load.stats());
    assert!(checkout_stats.canary > 0 && orders_stats.canary > 0, "{checkout_stats:?} {orders_stats:?}");
    assert_eq!(checkout_stats.transport_errors + orders_stats.transport_errors, 0);
}
