//! The two tables the configuration comparisons print: saturated throughput and Envoy CPU
//! per request, interleaved and paired per round with the first row (the baseline), and
//! Envoy's instructions per request under callgrind against the first row.

use super::callgrind::{CALLGRIND_SECONDS, instructions_per_request};
use super::{
    CONNECTIONS, ENVOY_CPU, Rig, Setup, WRK_CPU, interleaved, paired, paired_ratio, spread, start_all, wrk_script,
};

/// Width of the row names.
const NAME_WIDTH: usize = 38;

/// Throughput and CPU of `rows`, the first being the baseline; `what` names the comparison.
pub async fn paired_table(rig: &Rig, what: &str, rows: Vec<(String, Setup<'_>)>, rounds: usize, seconds: u32) {
    let envoys = start_all(rig, rows).await;
    let runs = interleaved(&envoys, &wrk_script("saturated", None), CONNECTIONS, rounds, seconds);
    println!(
        "\n{what}: Envoy --concurrency 1 on CPU {ENVOY_CPU}, direct responses, wrk -t1 -c{CONNECTIONS} on CPU \
         {WRK_CPU}, {rounds} interleaved rounds x {seconds} s; median (min-max), paired per round to the baseline:"
    );
    println!(
        "  {:NAME_WIDTH$} {:>24} {:>22} {:>24} {:>26} {:>22}",
        "", "req/s", "req/s ratio", "Envoy CPU µs/request", "CPU difference µs", "CPU ratio"
    );
    for (i, (name, _)) in envoys.iter().enumerate() {
        let rps = spread(runs[i].iter().map(|r| r.rps).collect());
        let cpu = spread(runs[i].iter().map(|r| r.cpu_us_per_request).collect());
        let rps_ratio = paired_ratio(&runs[i], &runs[0], |r| r.rps);
        let cpu_difference = paired(&runs[i], &runs[0], |r| r.cpu_us_per_request);
        let cpu_ratio = paired_ratio(&runs[i], &runs[0], |r| r.cpu_us_per_request);
        println!(
            "  {name:NAME_WIDTH$} {:6.0} ({:.0}-{:.0}) {:.3} ({:.3}-{:.3}) {cpu} {cpu_difference:+} {:.3} ({:.3}-{:.3})",
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

/// Envoy's instructions per request for each of `rows` under callgrind, against the first.
pub fn instructions_table(rig: &Rig, what: &str, rows: Vec<(String, Setup<'_>)>) {
    let script = wrk_script("callgrind", None);
    let counts: Vec<(String, Option<f64>)> = rows
        .into_iter()
        .map(|(name, setup)| {
            let count = instructions_per_request(&rig.config(setup), &name, &script);
            (name, count)
        })
        .collect();
    println!(
        "\n{what}, Envoy instructions per request under callgrind (wrk -c2, {CALLGRIND_SECONDS} s each), \
         against the baseline:"
    );
    let baseline = counts.first().and_then(|c| c.1);
    for (name, count) in &counts {
        match (count, baseline) {
            (Some(count), Some(baseline)) => {
                println!("  {name:NAME_WIDTH$} {count:9.0}   {:+9.0}  ({:.3}x)", count - baseline, count / baseline)
            }
            _ => println!("  {name:NAME_WIDTH$} not measured (valgrind and callgrind_control installed?)"),
        }
    }
}
