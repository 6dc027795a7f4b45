//! `BENCH=routing-only` (and `routing-only-instructions` under callgrind): what the filter
//! costs per request when it only routes (`"metrics": "none"`, for rollouts whose analyzer
//! reads the mesh's own metrics), against the no-op wasm filter. The floor is the probe
//! making the routing-only path's host calls: one user-id header read and one header write
//! (the probe has no `clear_route_cache` call; the filter makes one more, Envoy 1.40
//! offers it). The counting filter (per-cohort metrics, the default) is measured beside it.
//! Each row is `envoy/envoy.yaml` with direct responses, without the header strip or
//! outcome rules, in one interleaved run paired per round with the no-op filter.

use super::callgrind::{CALLGRIND_SECONDS, instructions_per_request};
use super::{
    CONNECTIONS, ENVOY_CPU, Rig, Setup, WRK_CPU, interleaved, paired, paired_ratio, spread, start_all, wrk_script,
};

/// The routing-only path's host calls once each: the floor the mode can reach.
const ROUTING_HOST_CALLS: &str = "read_request_header=1,write_request_header=1";

/// The rows: the first is what every other one is paired with.
fn rows() -> [(&'static str, Setup<'static>); 4] {
    [
        ("no-op wasm filter", Setup::Probe("")),
        ("probe: user-id read + header write", Setup::Probe(ROUTING_HOST_CALLS)),
        ("canary filter, \"metrics\": \"none\"", Setup::Counting(false)),
        ("canary filter, per-cohort metrics", Setup::Counting(true)),
    ]
}

/// Saturated throughput and Envoy CPU per request, interleaved, paired against the no-op filter.
pub async fn run(rig: &Rig, rounds: usize, seconds: u32) {
    let setups = rows().into_iter().map(|(name, setup)| (name.to_string(), setup)).collect();
    let envoys = start_all(rig, setups).await;
    let runs = interleaved(&envoys, &wrk_script("saturated", None), CONNECTIONS, rounds, seconds);
    println!(
        "\nRouting only (\"metrics\": \"none\"): Envoy --concurrency 1 on CPU {ENVOY_CPU}, direct responses, \
         wrk -t1 -c{CONNECTIONS} on CPU {WRK_CPU}, {rounds} interleaved rounds x {seconds} s; median (min-max), \
         paired per round to the no-op wasm filter:"
    );
    println!(
        "  {:38} {:>24} {:>24} {:>26} {:>22}",
        "", "req/s", "Envoy CPU µs/request", "CPU difference µs", "CPU ratio"
    );
    for (i, (name, _)) in envoys.iter().enumerate() {
        let rps = spread(runs[i].iter().map(|r| r.rps).collect());
        let cpu = spread(runs[i].iter().map(|r| r.cpu_us_per_request).collect());
        let cpu_difference = paired(&runs[i], &runs[0], |r| r.cpu_us_per_request);
        let cpu_ratio = paired_ratio(&runs[i], &runs[0], |r| r.cpu_us_per_request);
        println!(
            "  {name:38} {:6.0} ({:.0}-{:.0}) {cpu} {cpu_difference:+} {:.3} ({:.3}-{:.3})",
            rps.median, rps.min, rps.max, cpu_ratio.median, cpu_ratio.min, cpu_ratio.max
        );
    }
}

/// The same Envoys' instructions per request under callgrind (~1 min each).
pub fn instructions(rig: &Rig) {
    let script = wrk_script("callgrind", None);
    let counts: Vec<(&str, Option<f64>)> = rows()
        .into_iter()
        .map(|(name, setup)| (name, instructions_per_request(&rig.config(setup), name, &script)))
        .collect();
    println!(
        "\nRouting only, Envoy instructions per request under callgrind (wrk -c2, {CALLGRIND_SECONDS} s each), \
         against the no-op wasm filter:"
    );
    let baseline = counts[0].1;
    for (name, count) in &counts {
        match (count, baseline) {
            (Some(count), Some(baseline)) => {
                println!("  {name:38} {count:9.0}   {:+9.0}  ({:.3}x)", count - baseline, count / baseline)
            }
            _ => println!("  {name:38} not measured (valgrind and callgrind_control installed?)"),
        }
    }
}
