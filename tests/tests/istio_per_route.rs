//! `istio/per-host/envoyfilter.yaml` (docs/istio.md, option (b)) applied as istiod applies its
//! two patches, to the listener of an Istio gateway carrying `istio/wasmplugin.yaml` by ECDS
//! (`canary_e2e::ecds`, here from a file): the plugin's filter replaced by the patch's copy
//! with `disabled: true`, the enabling entry merged into the virtual host istiod names
//! `checkout.example.com:80` (`envoy/per-route.yaml`'s virtual hosts otherwise). The filter then
//! runs on that host and nowhere else. What istiod does with the patches is not tested here.

use canary_e2e::ecds::{IstioGateway, WasmPlugin};
use canary_e2e::manifests::shipped_documents;
use canary_e2e::per_route::{OtherHost, ROLLOUT_HOST, virtual_hosts_without_enabling, wait_for_count};
use canary_e2e::request_log::expected_version;
use canary_e2e::traffic::{Client, user_ids};
use serde_yaml_ng::Value as Yaml;
use std::time::{Duration, Instant};

const SHARE_BP: u32 = 5_000;

/// The shipped EnvoyFilter's two patches: the HTTP filter's, the virtual host's.
fn shipped_patches() -> (Yaml, Yaml) {
    let documents = shipped_documents();
    let filter = documents
        .iter()
        .find(|d| d.kind() == "EnvoyFilter" && d.name() == "wasm-canary-per-host")
        .expect("istio/per-host/envoyfilter.yaml");
    let patches = filter.value["spec"]["configPatches"].as_sequence().expect("configPatches");
    assert_eq!(patches.len(), 2);
    (patches[0].clone(), patches[1].clone())
}

/// Applies the patches to a gateway's bootstrap as istiod applies them to its listener.
fn apply(config: &mut canary_e2e::envoy::EnvoyConfig, plugin_filter: &str, (filter_patch, host_patch): (Yaml, Yaml)) {
    // As under Istio: no strip in front (the forged header must be able to pass).
    config.without_header_stripping();
    let manager =
        &mut config.yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];

    // REPLACE the HTTP filter named by `subFilter`.
    assert_eq!(filter_patch["applyTo"].as_str(), Some("HTTP_FILTER"));
    assert_eq!(filter_patch["patch"]["operation"].as_str(), Some("REPLACE"));
    let target = &filter_patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"];
    assert_eq!(target.as_str(), Some(plugin_filter), "the patch names the plugin's filter as istiod does");
    let filters = manager["http_filters"].as_sequence_mut().expect("http_filters");
    let filter = filters.iter_mut().find(|f| f["name"] == *target).expect("the plugin's filter in the listener");
    let mut replacement = filter_patch["patch"]["value"].clone();
    // The same entry as istiod's but for `disabled`: here the config source is the harness's
    // file where istiod's (and the patch's) is ADS, with the same other fields.
    let source = &mut replacement["config_discovery"]["config_source"];
    let ads = source.as_mapping_mut().and_then(|s| s.remove("ads")).expect("the patch reads ECDS over ADS");
    assert_eq!(ads, Yaml::Mapping(Default::default()));
    let harness_source = filter["config_discovery"]["config_source"].as_mapping().expect("config source").clone();
    for (key, value) in &harness_source {
        if key.as_str() != Some("path_config_source") {
            assert_eq!(source[key], *value, "config_source.{key:?}");
        }
    }
    *source = Yaml::Mapping(harness_source);
    let mut expected = filter.clone();
    expected.as_mapping_mut().expect("filter").insert(Yaml::from("disabled"), Yaml::Bool(true));
    assert_eq!(replacement, expected, "the patch's copy is istiod's filter with disabled: true");
    *filter = replacement;

    // MERGE into the virtual host istiod names `<host>:<port>`.
    assert_eq!(host_patch["applyTo"].as_str(), Some("VIRTUAL_HOST"));
    assert_eq!(host_patch["patch"]["operation"].as_str(), Some("MERGE"));
    let name = host_patch["match"]["routeConfiguration"]["vhost"]["name"].as_str().expect("vhost name");
    assert_eq!(name, format!("{ROLLOUT_HOST}:80"));
    let mut hosts = virtual_hosts_without_enabling();
    let host = hosts
        .iter_mut()
        .find(|h| h["domains"].as_sequence().is_some_and(|d| d.iter().any(|d| d.as_str() == Some(ROLLOUT_HOST))))
        .and_then(Yaml::as_mapping_mut)
        .expect("the rollout's virtual host");
    host.insert(Yaml::from("name"), Yaml::from(name));
    for (key, value) in host_patch["patch"]["value"].as_mapping().expect("patch value") {
        assert!(!host.contains_key(key), "{key:?}: a plain insert is the merge here");
        host.insert(key.clone(), value.clone());
    }
    manager["route_config"]["virtual_hosts"] = Yaml::Sequence(hosts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_host_envoy_filter_runs_the_plugin_on_its_virtual_host_only() {
    let mut plugin = WasmPlugin::shipped();
    plugin.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = 500.into();
        json["analyzer"]["timeout_ms"] = 250.into();
    });
    let name = plugin.resource_name();
    let gateway = IstioGateway::start(plugin, SHARE_BP, |config| apply(config, &name, shipped_patches())).await;

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

    let before = canary_e2e::envoy::requests_counted(gateway.envoy.admin).await;
    assert!(before >= users.len() as u64, "the rollout host's requests were counted");
    let other = OtherHost::send(gateway.envoy.listener).await;
    other.assert_untouched();
    // One more on the rollout host: once it is counted, the other host's would have been too.
    rollout.get("/", &[("x-user-id", &users[0])]).await;
    assert_eq!(wait_for_count(gateway.envoy.admin, before + 1).await - before, 1, "only the rollout host counted");
}
