//! `BENCH=deployments` (and `deployments-instructions` under callgrind): what the list form
//! costs per request as the number of deployments grows. The filter matches a request by its
//! `:authority` in tables built at configure time, so the cost should not grow with the list.
//! Each row is `envoy/envoy.yaml` with direct responses, without the header strip, and the
//! plugin configuration replaced by a list of 1, 10 or 100 deployments (`svc-<i>.example`,
//! 5 % canary, no analyzer: polling is not per request). The wrk requests carry `Host` =
//! the listener's address: for a "matched" row the last deployment also lists `127.0.0.1`
//! (any port), so every request is that deployment's; for an "unmatched" row no deployment
//! does, so every request passes untouched. All rows run in one interleaved run, paired per
//! round with the same Envoy without the wasm filter.

use super::tables::{instructions_table, paired_table};
use super::{Rig, Setup};
use canary_e2e::envoy::EnvoyConfig;

/// One row's filter: absent (the baseline), or a list of `count` deployments.
#[derive(Clone, Copy)]
pub enum Listed {
    Absent,
    /// The no-op wasm filter (the probe filter without a configuration): what any wasm
    /// filter costs before it does anything.
    Noop,
    /// The single form as shipped (one deployment, every request), for comparison.
    Single,
    Deployments {
        count: usize,
        matched: bool,
    },
}

impl Listed {
    pub fn apply(self, config: &mut EnvoyConfig, probe_wasm: &std::path::Path) {
        config.without_header_stripping();
        match self {
            Listed::Absent => config.without_wasm(),
            Listed::Noop => {
                config.with_wasm_module(probe_wasm);
                config.set_plugin_config_text("");
            }
            Listed::Single => config.edit_plugin_config(|json| {
                json.as_object_mut().map(|o| o.remove("outcomes"));
            }),
            Listed::Deployments { count, matched } => config.set_plugin_config_text(&plugin_config(count, matched)),
        }
    }
}

/// The list form with `count` deployments, the last one also matching `127.0.0.1` if `matched`.
fn plugin_config(count: usize, matched: bool) -> String {
    let deployments: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            let mut hosts = vec![format!("svc-{i}.example"), format!("*.svc-{i}.example")];
            if matched && i + 1 == count {
                hosts.push("127.0.0.1".to_string());
            }
            serde_json::json!({"id": format!("svc-{i}"), "match": {"hosts": hosts}})
        })
        .collect();
    serde_json::json!({
        "defaults": {"user_id": {"sources": [{"header": "x-user-id"}]}, "initial_share_bp": 500},
        "deployments": deployments,
    })
    .to_string()
}

const ROWS: [(&str, Listed); 9] = [
    ("without the wasm filter (baseline)", Listed::Absent),
    ("no-op wasm filter", Listed::Noop),
    ("single form, one deployment", Listed::Single),
    ("1 deployment, request matched", Listed::Deployments { count: 1, matched: true }),
    ("10 deployments, request matched", Listed::Deployments { count: 10, matched: true }),
    ("100 deployments, request matched", Listed::Deployments { count: 100, matched: true }),
    ("1 deployment, request unmatched", Listed::Deployments { count: 1, matched: false }),
    ("10 deployments, request unmatched", Listed::Deployments { count: 10, matched: false }),
    ("100 deployments, request unmatched", Listed::Deployments { count: 100, matched: false }),
];

fn rows() -> Vec<(String, Setup<'static>)> {
    ROWS.iter().map(|(name, row)| (name.to_string(), Setup::Deployments(*row))).collect()
}

/// Saturated throughput and Envoy CPU per request, interleaved, paired against the baseline.
pub async fn run(rig: &Rig, rounds: usize, seconds: u32) {
    paired_table(rig, "The list form by number of deployments", rows(), rounds, seconds).await;
}

/// The same Envoys' instructions per request under callgrind.
pub fn instructions(rig: &Rig) {
    instructions_table(rig, "The list form by number of deployments", rows());
}
