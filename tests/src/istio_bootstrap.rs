//! How an Istio proxy names its stats, without a cluster: the `stats_config` that
//! istio-agent renders into Envoy's bootstrap (istio/istio 1.30,
//! `tools/packaging/common/envoy_bootstrap.json` filled in by `pkg/bootstrap/config.go`)
//! with a default ProxyConfig, and the bootstrap override `istio/gateway-stats.yaml`
//! ships, which istio-agent hands to Envoy as `--config-yaml` (`pkg/envoy/proxy.go`):
//! Envoy merges it over the file as a protobuf merge, so its lists are appended.
//!
//! Rendered by hand from the template (the data, the regexes included, is Istio's):
//! no `extraStatTags`, no histogram-bucket annotation, no `proxyStatsMatcher` additions,
//! not a draining-aware proxy (so `downstream_cx_active` is not included).

use crate::manifests::shipped_documents;
use serde_json::{Value as Json, json};

/// Istio's own stats tags, in the template's order (`extraStatTags` would go after
/// `mongo_prefix`).
const ISTIO_STATS_TAGS: [(&str, &str); 16] = [
    ("cluster_name", r"^cluster(\.(.+);)"),
    ("http_conn_manager_prefix", r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbBcCdDeEfF[:digit:]\w\:]*));\.)"),
    ("thread_name", r"^server(\.(.+))\.watchdog"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    (
        "http_conn_manager_listener_prefix",
        r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    ),
    ("listener_address", r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("mongo_prefix", r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"),
    ("cache", r"(cache\.(.+?)\.)"),
    ("component", r"(component\.(.+?)\.)"),
    ("tag", r"(tag\.(.+?);\.)"),
    ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
    ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
    ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
];

/// The stats an Istio proxy keeps by default (`stats_matcher.inclusion_list`): the
/// `wasm` prefix is why the filter's `wasmcustom.` stats are exported at all.
const INCLUDED_PREFIXES: [&str; 8] =
    ["reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm", "component", "istio"];
const INCLUDED_SUFFIXES: [&str; 4] = ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied"];
const INCLUDED_REGEXES: [&str; 1] = [r"vhost\..*\.route\..*"];

/// The `stats_config` istio-agent renders with a default ProxyConfig.
pub fn istio_stats_config() -> Json {
    let tags: Vec<Json> =
        ISTIO_STATS_TAGS.iter().map(|(name, regex)| json!({"tag_name": name, "regex": regex})).collect();
    let mut patterns: Vec<Json> = Vec::new();
    patterns.push(json!({"prefix": INCLUDED_PREFIXES[0]}));
    // The template: "reporter=", the prefixes, the suffixes, the regexes, then component and istio.
    patterns.extend(INCLUDED_PREFIXES[1..6].iter().map(|p| json!({"prefix": p})));
    patterns.extend(INCLUDED_SUFFIXES.iter().map(|s| json!({"suffix": s})));
    patterns.extend(INCLUDED_REGEXES.iter().map(|r| json!({"safe_regex": {"regex": r}})));
    patterns.extend(INCLUDED_PREFIXES[6..].iter().map(|p| json!({"prefix": p})));
    json!({
        "use_all_default_tags": false,
        "stats_tags": tags,
        "stats_matcher": {"inclusion_list": {"patterns": patterns}},
    })
}

/// `custom_bootstrap.json` of the ConfigMap in `istio/gateway-stats.yaml`, as text.
pub fn gateway_stats_override() -> String {
    let documents = shipped_documents();
    let config_map = documents
        .iter()
        .find(|d| d.kind() == "ConfigMap" && d.name() == "canary-gateway-stats")
        .expect("istio/gateway-stats.yaml holds the ConfigMap canary-gateway-stats");
    config_map.value["data"]["custom_bootstrap.json"].as_str().expect("data.custom_bootstrap.json").to_string()
}
