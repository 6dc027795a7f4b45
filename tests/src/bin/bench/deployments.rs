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

use super::callgrind::{CALLGRIND_SECONDS, instructions_per_request};
use super::{
    CONNECTIONS, ENVOY_CPU, Rig, Setup, WRK_CPU, interleaved, paired, paired_ratio, spread, start_all, wrk_script,
};
use canary_e2e::envoy::EnvoyConfig;

/// One row's filter: absent (the baseline), or a list of `count` deployments.
#[derive(Clone, Copy)]
pub enum Listed {
    Absent,
    Deployments { count: usize, matched: bool },
}

impl Listed {
    pub fn apply(self, config: &mut EnvoyConfig) {
        config.without_header_stripping();
        match self {
            Listed::Absent => config.without_wasm(),
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

const ROWS: [(&str, Listed); 7] = [
    ("without the wasm filter (baseline)", Listed::Absent),
    ("1 deployment, request matched", Listed::Deployments { count: 1, matched: true }),
    ("10 deployments, request matched", Listed::Deployments { count: 10, matched: true }),
    ("100 deployments, request matched", Listed::Deployments { count: 100, matched: true }),
    ("1 deployment, request unmatched", Listed::Deployments { count: 1, matched: false }),
    ("10 deployments, request unmatched", Listed::Deployments { count: 10, matched: false }),
    ("100 deployments, request unmatched", Listed::Deployments { count: 100, matched: false }),
];

/// Saturated throughput and Envoy CPU per request, interleaved, paired against the baseline.
pub async fn run(rig: &Rig, rounds: usize, seconds: u32) {
    let setups = ROWS.iter().map(|(name, listed)| (name.to_string(), Setup::Deployments(*listed))).collect();
    let envoys = start_all(rig, setups).await;
    let runs = interleaved(&envoys, &wrk_script("saturated", None), CONNECTIONS, rounds, seconds);
    println!(
        "\nThe list form by number of deployments: Envoy --concurrency 1 on CPU {ENVOY_CPU}, direct responses, \
         wrk -t1 -c{CONNECTIONS} on CPU {WRK_CPU}, {rounds} interleaved rounds x {seconds} s; median (min-max), \
         paired per round to the baseline:"
    );
    println!(
        "  {:36} {:>24} {:>22} {:>24} {:>26} {:>22}",
        "", "req/s", "req/s ratio", "Envoy CPU µs/request", "CPU difference µs", "CPU ratio"
    );
    for (i, (name, _)) in envoys.iter().enumerate() {
        let rps = spread(runs[i].iter().map(|r| r.rps).collect());
        let cpu = spread(runs[i].iter().map(|r| r.cpu_us_per_request).collect());
        let rps_ratio = paired_ratio(&runs[i], &runs[0], |r| r.rps);
        let cpu_difference = paired(&runs[i], &runs[0], |r| r.cpu_us_per_request);
        let cpu_ratio = paired_ratio(&runs[i], &runs[0], |r| r.cpu_us_per_request);
        println!(
            "  {name:36} {:6.0} ({:.0}-{:.0}) {:.3} ({:.3}-{:.3}) {cpu} {cpu_difference:+} {:.3} ({:.3}-{:.3})",
            rps.median,
            rps.min,
            rps.max,
            rps_ratio.median,
            rps_ratio.min,
            rps_ratio.max,
            cpu_ratio.median,
            cpu_ratio.min,
            cpu_ratio.max
        );
    }
}

/// The same Envoys' instructions per request under callgrind (~1 min each).
pub fn instructions(rig: &Rig) {
    let script = wrk_script("callgrind", None);
    let counts: Vec<(&str, Option<f64>)> = ROWS
        .iter()
        .map(|(name, listed)| {
            (*name, instructions_per_request(&rig.config(Setup::Deployments(*listed)), name, &script))
        })
        .collect();
    println!(
        "\nThe list form by number of deployments, Envoy instructions per request under callgrind (wrk -c2, \
         {CALLGRIND_SECONDS} s each), against the baseline:"
    );
    let baseline = counts[0].1;
    for (name, count) in &counts {
        match (count, baseline) {
            (Some(count), Some(baseline)) => {
                println!("  {name:36} {count:9.0}   {:+9.0}  ({:.3}x)", count - baseline, count / baseline)
            }
            _ => println!("  {name:36} not measured (valgrind and callgrind_control installed?)"),
        }
    }
}
