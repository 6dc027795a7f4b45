//! `BENCH=per-route` (and `per-route-instructions` under callgrind): what a request costs on a
//! virtual host of `envoy/per-route.yaml` where the wasm filter is listed but disabled, against
//! the same Envoy without the wasm filter at all and a virtual host that enables it. All three
//! are `per-route.yaml` with direct responses, measured in one run (interleaved, paired per
//! round) so the figures read as ratios; the requests (the usual wrk script: distinct user
//! ids, `Host` the listener's address) land on the `everything_else` virtual host, which the
//! "enabled" row turns the filter on for as the `checkout` one ships.

use super::tables::{instructions_table, paired_table};
use super::{Rig, Setup};
use canary_e2e::envoy::EnvoyConfig;

/// The example measured.
pub const CONFIG: &str = "envoy/per-route.yaml";

/// Where the wasm filter stands for the benchmark's requests.
#[derive(Clone, Copy)]
pub enum Filter {
    /// Not in the Envoy config at all (the baseline).
    Absent,
    /// Listed with `disabled: true`, and the requests' virtual host does not enable it (as shipped).
    Disabled,
    /// Listed disabled, and enabled on every virtual host, the requests' one included.
    Enabled,
}

impl Filter {
    pub fn apply(self, config: &mut EnvoyConfig) {
        match self {
            Filter::Absent => config.without_wasm(),
            Filter::Disabled => {}
            Filter::Enabled => config.enable_wasm_on_every_virtual_host(),
        }
    }
}

const ROWS: [(&str, Filter); 3] = [
    ("without the wasm filter (baseline)", Filter::Absent),
    ("filter listed, disabled on this host", Filter::Disabled),
    ("filter enabled on this host", Filter::Enabled),
];

fn rows() -> Vec<(String, Setup<'static>)> {
    ROWS.iter().map(|(name, row)| (name.to_string(), Setup::PerRoute(*row))).collect()
}

/// Saturated throughput and Envoy CPU per request, interleaved, paired against the baseline.
pub async fn run(rig: &Rig, rounds: usize, seconds: u32) {
    paired_table(rig, CONFIG, rows(), rounds, seconds).await;
}

/// The same Envoys' instructions per request under callgrind.
pub fn instructions(rig: &Rig) {
    instructions_table(rig, CONFIG, rows());
}
