//! The Envoy side of enabling an Istio `WasmPlugin` per virtual host with an `EnvoyFilter`
//! (docs/istio.md, option (b)): the plugin's filter as istiod puts it in the listener (named
//! after the plugin, its config by ECDS, here from a file), with `disabled: true` added, and
//! `envoy/per-route.yaml`'s virtual hosts enabling it by that name on `checkout.example.com`
//! only. The filter then runs there and nowhere else. What istiod does with the patches
//! themselves is not tested here (no istiod).

use canary_e2e::ecds::{IstioGateway, WasmPlugin};
use canary_e2e::per_route::{OtherHost, ROLLOUT_HOST, requests_counted, virtual_hosts_enabling, wait_for_count};
use canary_e2e::request_log::expected_version;
use canary_e2e::traffic::{Client, user_ids};
use serde_yaml_ng::Value as Yaml;
use std::time::{Duration, Instant};

const SHARE_BP: u32 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecds_filter_disabled_in_the_listener_runs_only_on_the_virtual_host_that_enables_it() {
    let mut plugin = WasmPlugin::shipped();
    plugin.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = 500.into();
        json["analyzer"]["timeout_ms"] = 250.into();
    });
    let name = plugin.resource_name();
    let gateway = IstioGateway::start(plugin, SHARE_BP, |config| {
        // As under Istio: no strip in front (the forged header must be able to pass).
        config.without_header_stripping();
        let manager =
            &mut config.yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let filters = manager["http_filters"].as_sequence_mut().expect("http_filters");
        let filter = filters
            .iter_mut()
            .find(|f| f["name"].as_str() == Some(name.as_str()))
            .and_then(Yaml::as_mapping_mut)
            .expect("the plugin's config_discovery filter");
        filter.insert(Yaml::from("disabled"), Yaml::Bool(true));
        manager["route_config"]["virtual_hosts"] = virtual_hosts_enabling(&name);
    })
    .await;

    // Users on the rollout host route as the filter decides at the analyzer's share.
    let config = gateway.plugin.filter_config();
    let users = user_ids(0x07e4, 40);
    let rollout = Client::for_host(gateway.envoy.listener, ROLLOUT_HOST);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let versions = rollout.versions_for(&users).await;
        if users.iter().zip(&versions).all(|(u, v)| v == expected_version(&config, SHARE_BP, u)) {
            break;
        }
        assert!(Instant::now() < deadline, "{ROLLOUT_HOST}: not routing at {SHARE_BP} bp within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let versions: std::collections::HashSet<&str> =
        users.iter().map(|u| expected_version(&config, SHARE_BP, u)).collect();
    assert_eq!(versions.len(), 2, "both cohorts among the users");

    let before = requests_counted(gateway.envoy.admin).await;
    assert!(before >= users.len() as u64, "the rollout host's requests were counted");
    let other = OtherHost::send(gateway.envoy.listener).await;
    other.assert_untouched();
    // One more on the rollout host: once it is counted, the other host's would have been too.
    rollout.get("/", &[("x-user-id", &users[0])]).await;
    assert_eq!(wait_for_count(gateway.envoy.admin, before + 1).await - before, 1, "only the rollout host counted");
}
