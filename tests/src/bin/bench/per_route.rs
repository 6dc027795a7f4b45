//! `BENCH=per-route` (and `per-route-instructions` under callgrind): what a request costs on a
//! virtual host of `envoy/per-route.yaml` where the wasm filter is listed but disabled, against
//! the same Envoy without the wasm filter at all and a virtual host that enables it. All three
//! are `per-route.yaml` with direct responses, measured in one run (interleaved, paired per
//! round) so the figures read as ratios; the requests (the usual wrk script: distinct user
//! ids, `Host` the listener's address) land on the `everything_else` virtual host, which the
//! "enabled" row turns the filter on for as the `checkout` one ships.

use super::callgrind::{CALLGRIND_SECONDS, instructions_per_request};
use super::{
    CONNECTIONS, ENVOY_CPU, Rig, Setup, WRK_CPU, interleaved, paired, paired_ratio, spread, start_all, wrk_script,
};
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

/// Saturated throughput and Envoy CPU per request, interleaved, paired against the baseline.
pub async fn run(rig: &Rig, rounds: usize, seconds: u32) {
    let setups = ROWS.iter().map(|(name, filter)| (name.to_string(), Setup::PerRoute(*filter))).collect();
    let envoys = start_all(rig, setups).await;
    let runs = interleaved(&envoys, &wrk_script("saturated", None), CONNECTIONS, rounds, seconds);
    println!(
        "\n{CONFIG}, Envoy --concurrency 1 on CPU {ENVOY_CPU}, direct responses, wrk -t1 -c{CONNECTIONS} on CPU \
         {WRK_CPU}, {rounds} interleaved rounds x {seconds} s; median (min-max), paired per round to the baseline:"
    );
    println!(
        "  {:38} {:>24} {:>22} {:>24} {:>26} {:>22}",
        "", "req/s", "req/s ratio", "Envoy CPU µs/request", "CPU difference µs", "CPU ratio"
    );
    for (i, (name, _)) in envoys.iter().enumerate() {
        let rps = spread(runs[i].iter().map(|r| r.rps).collect());
        let cpu = spread(runs[i].iter().map(|r| r.cpu_us_per_request).collect());
        let rps_ratio = paired_ratio(&runs[i], &runs[0], |r| r.rps);
        let cpu_difference = paired(&runs[i], &runs[0], |r| r.cpu_us_per_request);
        let cpu_ratio = paired_ratio(&runs[i], &runs[0], |r| r.cpu_us_per_request);
        println!(
            "  {name:38} {:6.0} ({:.0}-{:.0}) {:.3} ({:.3}-{:.3}) {cpu} {cpu_difference:+} {:.3} ({:.3}-{:.3})",
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

/// The same three Envoys' instructions per request under callgrind.
pub fn instructions(rig: &Rig) {
    let script = wrk_script("callgrind", None);
    let counts: Vec<(&str, Option<f64>)> = ROWS
        .iter()
        .map(|(name, filter)| (*name, instructions_per_request(&rig.config(Setup::PerRoute(*filter)), name, &script)))
        .collect();
    println!(
        "\n{CONFIG}, Envoy instructions per request under callgrind (wrk -c2, {CALLGRIND_SECONDS} s each), \
         against the baseline:"
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
