//! Issue 13, item 4: the module fetched by checksum, as a plain-Envoy user without
//! Istio would do it: Envoy's `remote` code source over HTTP from a local server,
//! checked against a sha256 (istio-agent does the same fetch and check itself, then
//! hands Envoy a local file; `tests/src/ecds.rs`).

use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::ecds::{ModuleServer, admin_stat, remote_module_config, sha256_hex};
use canary_e2e::envoy::{Envoy, EnvoyConfig, wasm_path};
use canary_e2e::rig::{DEPLOYMENT, Rig};
use canary_e2e::traffic::{Client, user_ids};
use canary_e2e::upstream::Upstream;
use std::time::{Duration, Instant};

/// Everybody on the canary once the filter runs: any request that reaches stable was
/// not routed by the filter.
const SHARE_BP: u32 = 10_000;

struct Setup {
    envoy: Envoy,
    server: ModuleServer,
    _rest: (Upstream, Upstream, ConfigServer),
}

/// Envoy on the shipped config with the module fetched from a local server after
/// `delay`, checked against `sha256`.
/// Envoy on the shipped config with the module fetched from a server, under `failure_policy`.
async fn envoy_fetching_the_module(sha256: &str, delay: Duration, failure_policy: &str) -> Setup {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let config_server = ConfigServer::start(Answer::share(DEPLOYMENT, 1, SHARE_BP)).await;
    let server = ModuleServer::start(std::fs::read(wasm_path()).expect("read the filter"), delay).await;
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, config_server.addr);
    config.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = 500.into();
        json["analyzer"]["timeout_ms"] = 250.into();
    });
    // Envoy says why a fetch failed (a checksum mismatch) only at debug level, in its
    // `config` log.
    config.extra_args = vec!["--component-log-level".into(), "config:debug".into()];
    config.set_failure_policy(failure_policy);
    let config = remote_module_config(config, &server, sha256);
    let envoy = Envoy::start(&config, 2).await;
    Setup { envoy, server, _rest: (stable, canary, config_server) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_with_the_right_sha256_is_fetched_once_and_routes() {
    // The server takes 1 s: Envoy's listener stays closed until the module is loaded,
    // so no request meets a half-loaded filter.
    let started = Instant::now();
    let setup = envoy_fetching_the_module(&sha256_hex(&wasm_path()), Duration::from_secs(1), "FAIL_RELOAD").await;
    assert!(started.elapsed() >= Duration::from_secs(1), "the listener opened before the module arrived");
    assert_eq!(setup.server.fetches(), 1, "one fetch for the main thread and both workers");
    let client = Client::new(setup.envoy.listener);
    let users = user_ids(0x4e7c, 40);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let versions = client.versions_for(&users).await;
        if users.iter().zip(&versions).all(|(u, v)| v == Rig::expected_version(u, SHARE_BP)) {
            break;
        }
        assert!(Instant::now() < deadline, "not routing at {SHARE_BP} bp: {versions:?}\n{}", setup.envoy.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sha256_is_refused_with_a_log_line_and_fail_open_sends_everybody_to_stable() {
    let wrong = "0".repeat(64);
    // What istio/wasmplugin.yaml's `failStrategy: FAIL_OPEN` gives Envoy. Under the shipped
    // FAIL_RELOAD (and FAIL_CLOSED) a module that never loads answers 503 to every request.
    let setup = envoy_fetching_the_module(&wrong, Duration::ZERO, "FAIL_OPEN").await;
    assert!(setup.server.fetches() >= 1, "Envoy fetched the module");
    let log = setup.envoy.log_text();
    let mismatch = format!("fetch remote data [uri = {}]: data is invalid", setup.server.uri());
    for line in [
        mismatch.as_str(),
        "Retry limit exceeded for fetching data from remote data source",
        "Plugin wasm_canary failed to load",
    ] {
        assert!(log.contains(line), "no log line {line:?} for the wrong sha256:\n{log}");
    }
    assert_eq!(admin_stat(setup.envoy.admin, "wasm.remote_load_fetch_failures").await, 1);
    // Long enough for a poll (500 ms) had the filter been running.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = Client::new(setup.envoy.listener);
    let users = user_ids(0x5ba, 100);
    let replies =
        client.map_parallel(&users, |c, id| async move { c.get("/", &[("x-user-id", id.as_str())]).await }).await;
    for reply in &replies {
        assert_eq!((reply.status, reply.version.as_deref()), (200, Some("stable")), "{reply:?}");
        assert_eq!(reply.seen_cohort_header.as_deref(), Some(""), "no filter set a cohort: {reply:?}");
    }
}
