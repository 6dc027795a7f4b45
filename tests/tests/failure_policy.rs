//! The shipped `failure_policy: FAIL_OPEN` with a real VM failure: the probe filter,
//! loaded in place of ours, panics on every request. Envoy must keep serving, send
//! everybody to stable (no cohort header was set), and the header strip in front must
//! keep a client from picking the canary while the filter is down.

use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{Envoy, EnvoyConfig, probe_wasm_path};
use canary_e2e::traffic::{Client, user_ids};
use canary_e2e::upstream::Upstream;

struct FailedFilter {
    envoy: Envoy,
    client: Client,
    _upstreams: (Upstream, Upstream, ConfigServer),
}

async fn envoy_with_a_panicking_filter(strip: bool) -> FailedFilter {
    let probe = probe_wasm_path();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let config_server = ConfigServer::start(Answer::share("demo", 1, 10_000)).await;
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, config_server.addr);
    config.with_wasm_module(&probe);
    config.set_plugin_config_text("panic_on_request=1");
    if !strip {
        config.without_header_stripping();
    }
    let envoy = Envoy::start(&config, 2).await;
    let client = Client::new(envoy.listener);
    FailedFilter { envoy, client, _upstreams: (stable, canary, config_server) }
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
