//! Issue 13, item 5: stats under Istio. An Istio proxy's bootstrap carries Istio's own
//! `stats_config` (its stats tags, `use_all_default_tags: false`, an inclusion-only
//! stats matcher); `istio/gateway-stats.yaml` is merged over it as istio-agent does
//! (`--config-yaml`). With the filter delivered through ECDS as istiod delivers it,
//! `/stats/prometheus` must carry `canary_requests_total{deployment,cohort,class}` and
//! the latency histogram, and the analyzer's parser must read the traffic sent.

use canary_analyzer::source::{DeploymentSnapshot, EnvoyAdminSource, parse_exposition};
use canary_core::Cohort;
use canary_core::metrics::{LATENCY, REQUESTS, StatusClass, applied_share_stat};
use canary_e2e::ecds::{IstioGateway, WasmPlugin, admin_stat};
use canary_e2e::istio_bootstrap::{gateway_stats_override, istio_stats_config};
use canary_e2e::traffic::{Client, user_ids};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Half the users on the canary.
const SHARE_BP: u32 = 5_000;
/// Users sent once each; then this many requests to `/status/503`.
const USERS: u32 = 300;
const FAILING: u32 = 40;

async fn istio_gateway(with_override: bool) -> IstioGateway {
    let mut plugin = WasmPlugin::shipped();
    plugin.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = 500.into();
        json["analyzer"]["timeout_ms"] = 250.into();
    });
    let envoy = |config: &mut canary_e2e::envoy::EnvoyConfig| {
        config.yaml["stats_config"] = serde_yaml_ng::to_value(istio_stats_config()).expect("stats_config as yaml");
        if with_override {
            config.extra_args = vec!["--config-yaml".into(), gateway_stats_override()];
        }
    };
    IstioGateway::start(plugin, SHARE_BP, envoy).await
}

/// Sends every user once and `FAILING` requests to `/status/503`; returns (stable, canary) answers.
async fn send_traffic(gateway: &IstioGateway) -> (u64, u64) {
    let client = Client::new(gateway.envoy.listener);
    let users = user_ids(0x57a7, USERS);
    // Wait for the first poll's answer on the gauge, not with requests: every request is counted.
    let gauge = format!("wasmcustom.{}", applied_share_stat(&gateway.plugin.deployment()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_stat(gateway.envoy.admin, &gauge).await != u64::from(SHARE_BP) {
        assert!(Instant::now() < deadline, "share not applied in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let versions = client.versions_for(&users).await;
    let failing = user_ids(0xfa11, FAILING);
    let statuses = client.statuses_for("/status/503", &failing).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let canary = versions.iter().filter(|v| *v == "canary").count() as u64;
    (versions.len() as u64 - canary, canary)
}

/// The label names of every series of `metric` in a Prometheus text.
fn label_sets(text: &str, metric: &str) -> BTreeSet<Vec<String>> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition parses");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| {
            let mut names: Vec<String> = s.labels.keys().filter(|k| *k != "le").cloned().collect();
            names.sort();
            names
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_istios_bootstrap_the_shipped_override_labels_the_filters_stats_for_the_analyzer() {
    let gateway = istio_gateway(true).await;
    let deployment = gateway.plugin.deployment();
    let (stable, canary) = send_traffic(&gateway).await;
    let answered = stable + canary + u64::from(FAILING);

    // The analyzer reads either `/stats/prometheus` (through Prometheus) or Envoy's admin
    // JSON (`--envoy-admin`); both must see the traffic. Counters are live; histograms
    // reach the admin at Envoy's stats flush (every 5 s).
    let admin = EnvoyAdminSource::new([format!("http://{}", gateway.envoy.admin)], &deployment, Duration::from_secs(5))
        .expect("admin source");
    let latencies = |s: &DeploymentSnapshot| -> u64 {
        Cohort::ALL.iter().filter_map(|c| s.cohorts.get(*c).latency.as_ref()).map(|l| l.count).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let (text, snapshot, admin_snapshot) = loop {
        let text = gateway.envoy.prometheus().await;
        let snapshot = parse_exposition(&text, &deployment).expect("the analyzer reads the exposition");
        let admin_snapshot =
            admin.scrape_one(admin.admin_urls()[0].as_str()).await.expect("the analyzer reads the admin");
        if latencies(&snapshot) >= answered && latencies(&admin_snapshot) >= answered {
            break (text, snapshot, admin_snapshot);
        }
        assert!(
            Instant::now() < deadline,
            "{} (exposition) and {} (admin) of {answered} latencies after 15 s:\n{text}",
            latencies(&snapshot),
            latencies(&admin_snapshot)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let wanted = |names: &[&str]| BTreeSet::from([names.iter().map(|s| s.to_string()).collect::<Vec<_>>()]);
    assert_eq!(label_sets(&text, REQUESTS), wanted(&["class", "cohort", "deployment"]), "{REQUESTS} labels");
    // prometheus-parse folds `_bucket{le}`, `_sum` and `_count` into one histogram sample.
    assert_eq!(label_sets(&text, LATENCY), wanted(&["cohort", "deployment"]), "{LATENCY} labels");
    assert!(text.contains(&format!("{LATENCY}_bucket{{deployment=\"{deployment}\",cohort=\"canary\",le=\"1000\"}}")));

    for (source, snapshot) in [("exposition", &snapshot), ("admin", &admin_snapshot)] {
        let requests = |cohort: Cohort, class: StatusClass| snapshot.cohorts.get(cohort).requests.get(class);
        assert_eq!(requests(Cohort::Canary, StatusClass::Success), canary, "{source}: canary 2xx");
        assert_eq!(requests(Cohort::Control, StatusClass::Success), stable, "{source}: control 2xx");
        let failed: u64 = Cohort::ALL.iter().map(|c| requests(*c, StatusClass::ServerError)).sum();
        assert_eq!(failed, u64::from(FAILING), "{source}: 5xx");
        assert_eq!(snapshot.applied.share_bp, Some(SHARE_BP), "{source}: the applied-share gauge");
        assert!(snapshot.server_uptime_seconds.is_some(), "{source}: Istio's stats matcher keeps server.uptime");
    }
    let canary_latency = snapshot.cohorts.canary.latency.as_ref().expect("a canary latency histogram");
    assert!(
        canary_latency.upper_bounds_us.contains(&1_000),
        "the shipped buckets: {:?}",
        canary_latency.upper_bounds_us
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_istios_bootstrap_without_the_override_the_analyzer_reads_nothing() {
    // Why the override ships: Istio's bootstrap alone exports the filter's stats (its
    // matcher keeps the `wasm` prefix) but leaves the names whole, without labels.
    let gateway = istio_gateway(false).await;
    let deployment = gateway.plugin.deployment();
    let (_, canary) = send_traffic(&gateway).await;
    assert!(canary > 0);
    let text = gateway.envoy.prometheus().await;
    assert!(label_sets(&text, REQUESTS).is_empty(), "{REQUESTS} without the override:\n{text}");
    let whole = format!("deployment_{deployment}_cohort_canary_class_2xx");
    assert!(text.contains(&whole), "the filter's counter, unlabelled, is exported:\n{text}");
    let snapshot = parse_exposition(&text, &deployment).expect("parses");
    assert_eq!(snapshot.cohorts.canary.requests.total(), 0);
}
