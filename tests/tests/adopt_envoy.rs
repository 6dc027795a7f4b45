//! The README's "Adopt it in your own Envoy" checklist, followed on a config written from
//! scratch rather than loaded from `envoy/envoy.yaml`: a listener whose routes send
//! `x-canary-cohort: canary` to a canary cluster and everything else to stable, the early
//! strip of a client's cohort header, the wasm filter with its plugin configuration, the
//! analyzer cluster it polls, and the `stats_config` block copied from `envoy/envoy.yaml`
//! as the checklist says. Then the analyzer as the checklist starts it (`serve --listen
//! --state-dir --envoy-admin` with a token) and the rollout registered with the CLI
//! (`register checkout.yaml --start-held`, then `deployed checkout`), and a rollout under load that must walk its
//! ladder to `promoted` with both cohorts served and counted. Two deviations, for time: the
//! filter polls every 500 ms (5 s by default) and the policy's ladder has two short steps
//! (the checklist's `default_window: 5m` walks five).

use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, analyzer_binary, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig, wasm_path};
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::upstream::Upstream;
use canary_e2e::{free_port, repo_root};
use serde_yaml_ng::Value as Yaml;
use std::time::Duration;

/// The Envoy config a user writes by following the checklist, with the ports and module
/// path filled in. `{stats_config}` is the block copied from `envoy/envoy.yaml`.
fn envoy_config_from_scratch(listener: u16, admin: u16, stable: u16, canary: u16, analyzer: u16) -> String {
    let module = wasm_path().display().to_string();
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: shop
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: shop
          route_config:
            virtual_hosts:
            - name: shop
              domains: ["*"]
              routes:
              - match: {{ prefix: "/", headers: [{{ name: x-canary-cohort, string_match: {{ exact: canary }} }}] }}
                route: {{ cluster: checkout_canary }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: checkout_stable }}
          early_header_mutation_extensions:
          - name: envoy.http.early_header_mutation.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations: [{{ remove: x-canary-cohort }}]
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: wasm_canary
                root_id: wasm_canary
                failure_policy: FAIL_RELOAD
                reload_config: {{ backoff: {{ base_interval: 0.1s, max_interval: 1s }} }}
                vm_config:
                  vm_id: wasm_canary
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{module}" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: |
                    {{"deployment": "checkout",
                     "user_id": {{"sources": [{{"header": "x-user-id"}}], "anonymous": "control"}},
                     "analyzer": {{"cluster": "canary_analyzer", "poll_interval_ms": 500}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: checkout_stable
    type: STATIC
    load_assignment:
      cluster_name: checkout_stable
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {stable} }} }} }} }}] }}]
  - name: checkout_canary
    type: STATIC
    load_assignment:
      cluster_name: checkout_canary
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {canary} }} }} }} }}] }}]
  - name: canary_analyzer
    type: STATIC
    load_assignment:
      cluster_name: canary_analyzer
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {analyzer} }} }} }} }}] }}]
"#
    )
}

/// The admin token `serve` is started with, as the checklist's `CANARY_ANALYZER_TOKEN`.
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A policy written from scratch: two short steps, the error rate critical.
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: checkout}
spec:
  deployment: checkout
  ladder:
    - {share: 20, window: 5s}
    - {share: 100, window: 1s}
  check_interval: 1s
  min_requests_per_cohort: 30
  metrics:
    - {name: error_rate, max_relative_increase: 0, critical: true}
    - {name: latency_p99, max_increase_ms: 50, critical: true}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_written_from_the_checklist_runs_a_rollout_to_promotion() {
    let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
    let (listener, admin, analyzer_port) = (free_port(), free_port(), free_port());
    let text = envoy_config_from_scratch(listener, admin, stable.addr.port(), canary.addr.port(), analyzer_port);
    let mut yaml: Yaml = serde_yaml_ng::from_str(&text).expect("the checklist's config is YAML");
    // The one block the checklist says to copy as it is.
    let shipped: Yaml =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap()).unwrap();
    yaml["stats_config"] = shipped["stats_config"].clone();
    let config =
        EnvoyConfig { yaml, listener_port: listener, admin_port: admin, extra_args: Vec::new(), hot_restart: None };
    let envoy = Envoy::start(&config, 2).await;

    let dir = fresh_dir("adopt-envoy");
    let policy = dir.join("checkout.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.envoy_admin = vec![format!("http://{}", envoy.admin)];
    options.port = Some(analyzer_port);
    options.token = Some(TOKEN.into());
    let analyzer = AnalyzerProcess::start(options).await;
    // Step 7 as written: register held, "deploy" (the canary upstream already runs), mark it deployed.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(analyzer_binary())
            .args(args)
            .env("CANARY_ANALYZER_URL", analyzer.url())
            .env("CANARY_ANALYZER_TOKEN", TOKEN)
            .output()
            .expect("run canary-analyzer");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    cli(&["register", &policy.display().to_string(), "--start-held"]);
    cli(&["deployed", "checkout"]);
    let load = Load::start(envoy.listener, LoadOptions { rps: 120, users: 3_000, ..LoadOptions::default() });

    let decided = |s: &canary_analyzer::engine::RolloutStatus| s.state.phase != RolloutPhase::Progressing;
    let (status, shares) =
        analyzer.until("checkout", Duration::from_secs(60), Duration::from_millis(200), decided).await;
    assert_eq!(status.state.phase, RolloutPhase::Promoted, "{status:#?}");
    assert_eq!(shares.last(), Some(&10_000), "{shares:?}");
    // Both versions served users, and the latency rows had data. (The admin source reads
    // the stat names and Envoy's own bins, so it needs neither the copied tags nor the
    // buckets: without the block this test passes too. Prometheus needs both.)
    let stats = load.stats();
    assert!(stats.stable > 0 && stats.canary > 0 && stats.errors == 0, "{stats:?}");
    let p99 = status.rows.iter().find(|r| r.metric == "latency_p99_us").expect("a p99 row");
    assert!(p99.canary.is_some() && p99.control.is_some(), "{p99:?}");
}
