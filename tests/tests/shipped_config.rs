//! The shipped Envoy config: Envoy accepts it, and it agrees with the code on
//! metric tags, latency buckets and the plugin configuration schema.

use canary_core::FilterConfig;
use canary_e2e::envoy::{EnvoyConfig, envoy_binary, wasm_path};
use canary_e2e::manifests::assert_stats_config_matches_the_code;
use canary_e2e::repo_root;
use serde_yaml_ng::Value;
use std::process::Command;

fn shipped() -> Value {
    let text = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

#[test]
fn envoy_validates_the_shipped_config() {
    wasm_path();
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "-c", "envoy/envoy.yaml"])
        .current_dir(repo_root())
        .output()
        .expect("run envoy --mode validate");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK"), "envoy --mode validate failed:\n{text}");
}

#[test]
fn stats_tags_and_buckets_match_the_code() {
    let stats_config = serde_json::to_value(&shipped()["stats_config"]).unwrap();
    assert_stats_config_matches_the_code(&stats_config);
}

#[test]
fn the_shipped_plugin_configuration_is_accepted_by_the_filter_parser() {
    let addr = "127.0.0.1:1".parse().unwrap();
    let mut config = EnvoyConfig::shipped(addr, addr, addr);
    let json = config.plugin_config().to_string();
    let parsed = FilterConfig::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.deployment_ids(), ["demo"]);
    assert_eq!(parsed.analyzer.unwrap().cluster, "canary_analyzer");
}
