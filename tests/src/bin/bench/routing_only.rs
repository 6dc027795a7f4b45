//! `BENCH=routing-only` (and `routing-only-instructions` under callgrind): what the filter
//! costs per request when it only routes (`"metrics": "none"`, for rollouts whose analyzer
//! reads the mesh's own metrics), against the no-op wasm filter. The floor is the probe
//! making the routing-only path's host calls: one user-id header read and one header write
//! (the probe has no `clear_route_cache` call; the filter makes one more, Envoy 1.40
//! offers it). The counting filter (per-cohort metrics, the default) is measured beside it.
//! Each row is `envoy/envoy.yaml` with direct responses, without the header strip or
//! outcome rules, in one interleaved run paired per round with the no-op filter.

use super::Rig;
use super::Setup;
use super::tables::{instructions_table, paired_table};

/// The routing-only path's host calls once each: the floor the mode can reach.
const ROUTING_HOST_CALLS: &str = "read_request_header=1,write_request_header=1";

/// What the tables compare.
const WHAT: &str = "Routing only (\"metrics\": \"none\") against the no-op wasm filter";

/// The rows: the first (the no-op filter) is what every other one is paired with.
fn rows() -> Vec<(String, Setup<'static>)> {
    [
        ("no-op wasm filter (baseline)", Setup::Probe("")),
        ("probe: user-id read + header write", Setup::Probe(ROUTING_HOST_CALLS)),
        ("canary filter, \"metrics\": \"none\"", Setup::Counting(false)),
        ("canary filter, per-cohort metrics", Setup::Counting(true)),
    ]
    .into_iter()
    .map(|(name, setup)| (name.to_string(), setup))
    .collect()
}

/// Saturated throughput and Envoy CPU per request, interleaved, paired against the no-op filter.
pub async fn run(rig: &Rig, rounds: usize, seconds: u32) {
    paired_table(rig, WHAT, rows(), rounds, seconds).await;
}

/// The same Envoys' instructions per request under callgrind (~1 min each).
pub fn instructions(rig: &Rig) {
    instructions_table(rig, WHAT, rows());
}
