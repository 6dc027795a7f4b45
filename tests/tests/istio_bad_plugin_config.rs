//! Issue 13, beside item 2: a `pluginConfig` the filter refuses, delivered through ECDS
//! as istiod delivers it. Neither istiod nor istio-agent reads `pluginConfig`; the filter
//! refuses it in `on_configure`, Envoy then refuses the whole extension config (a NACK
//! under ADS, `config_fail` here; Envoy 1.40 counts a `config_reload` as well, and logs
//! "Plugin configured to fail closed failed to load" under FAIL_OPEN too), whatever
//! `failStrategy` says: FAIL_OPEN covers a
//! module that cannot be fetched or a VM that fails later, not a refused configuration.
//! - A running gateway keeps the last good config: no request notices.
//! - A gateway whose first config is refused (a new or restarted pod after the bad
//!   edit) has no filter config at all and answers every request on the listener 500.

use canary_e2e::ecds::{IstioGateway, ModuleSource, WasmPlugin};
use canary_e2e::request_log::{Record, RecordedLoad, describe, expected_version, timeline};
use canary_e2e::traffic::{Client, user_ids};
use std::time::{Duration, Instant};

const SHARE_BP: u32 = 5_000;

/// The shipped plugin with a 500 ms poll interval.
fn plugin() -> WasmPlugin {
    let mut plugin = WasmPlugin::shipped();
    plugin.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = 500.into();
        json["analyzer"]["timeout_ms"] = 250.into();
    });
    plugin
}

/// The mistake: a timeout longer than the poll interval (the filter wants it within).
fn break_it(json: &mut serde_json::Value) {
    json["analyzer"]["timeout_ms"] = 1_000.into();
}

/// The filter's own reason, as Envoy logs it.
const REASON: &str = "field `analyzer.timeout_ms` = 1000: expected between 1 and the poll interval (500)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_leaves_a_running_gateway_on_the_last_good_config() {
    let mut gateway = IstioGateway::start(plugin(), SHARE_BP, |_| {}).await;
    let good = gateway.plugin.filter_config();
    let users = user_ids(0xbad, 300);
    let client = Client::new(gateway.envoy.listener);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .versions_for(&users[..40])
        .await
        .iter()
        .zip(&users)
        .any(|(v, u)| v != expected_version(&good, SHARE_BP, u))
    {
        assert!(Instant::now() < deadline, "not routing at {SHARE_BP} bp in 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = RecordedLoad::start(gateway.envoy.listener, 100, users);
    tokio::time::sleep(Duration::from_secs(1)).await;

    gateway.plugin.edit_plugin_config(break_it);
    let module = ModuleSource::Local(gateway.module.clone());
    let (published, refused) = gateway.publish_refused(&module).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The fix goes through as usual.
    gateway.plugin.edit_plugin_config(|json| json["analyzer"]["timeout_ms"] = 250.into());
    gateway.publish(&module).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = load.finish().await;
    let expected = |r: &Record| expected_version(&good, SHARE_BP, &r.user);
    let windows = timeline(
        &records,
        published,
        Duration::from_secs(1),
        Duration::from_secs(3),
        Duration::from_millis(250),
        expected,
    );
    println!("refused edit (share timeline):\n{}", describe(&windows));

    println!("refused {:?} after the file changed; {} requests", refused - published, records.len());
    let log = gateway.envoy.log_text();
    assert!(log.contains(REASON), "the filter's reason is in Envoy's log:\n{log}");
    // 4 s at 100 rps is 400; a busy two-core machine sends fewer.
    assert!(records.len() > 150, "the load ran: {}", records.len());
    let failed = records.iter().filter(|r| r.failed()).count();
    let misrouted = records.iter().filter(|r| r.version.as_deref() != Some(expected(r))).count();
    assert_eq!((failed, misrouted), (0, 0), "(failed, misrouted) of {} requests", records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_config_fails_every_request_whatever_the_fail_strategy() {
    let mut bad = plugin();
    bad.edit_plugin_config(break_it);
    assert_eq!(bad.spec["failStrategy"].as_str(), Some("FAIL_OPEN"));
    let gateway = IstioGateway::start(bad, SHARE_BP, |_| {}).await;
    let client = Client::new(gateway.envoy.listener);
    let users = user_ids(0xdead, 20);
    let statuses = client.statuses_for("/", &users).await;
    let log = gateway.envoy.log_text();
    assert!(statuses.iter().all(|s| *s == 500), "{statuses:?}\n{log}");
    assert!(log.contains(REASON), "the filter's reason is in Envoy's log:\n{log}");
    assert!(log.contains("Filesystem config update rejected"), "Envoy says it refused the config:\n{log}");
}
