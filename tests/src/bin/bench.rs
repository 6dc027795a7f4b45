//! `make bench`: what the filter costs, as differences against baselines measured in the same run.
//!
//! 1. Native: ns per cohort decision for a 36-byte id, against one xxh3 of the id alone.
//! 2. Envoy (`--concurrency 1` pinned to CPU 1, a direct-response route: the worst case,
//!    nothing to hide the filter behind), saturated by `wrk` pinned to CPU 0: requests/s
//!    and Envoy CPU µs per request for Envoy without any of ours, with a no-op wasm
//!    filter, with a probe making exactly the canary filter's host calls (the floor of
//!    this design) and with the canary filter. The setups are measured interleaved
//!    (A B C A B C ...), so drift on the shared machine hits all alike; each row prints
//!    the median and the spread (min-max) of its runs, and each difference is the median
//!    of the per-round differences, which cancels drift between rounds.
//! 3. The same Envoys at a fixed request rate (half the slowest one's maximum): Envoy CPU
//!    per request and the p50/p99 latency a client sees, the latency users feel.
//! 4. VM start: the time from Envoy's start to the first answered request, with and
//!    without wasm, and the module's compile time in V8 (node, TurboFan only and eager).
//! 5. Header strips, and what one host call costs: the probe filter repeats one kind of
//!    host call per Envoy, and the difference to the no-op filter divided by the count
//!    is that call's cost.
//!
//! 6. Opt-in (`BENCH=instructions`, needs valgrind, ~3 min per Envoy): Envoy's instructions
//!    per request under callgrind, the figure that does not move with the machine's load.
//! 7. What outcome rules cost (`outcomes`): the canary filter with 0, 1 and 4 rules (the
//!    route's direct response carries the headers they read, so they match), Envoy CPU µs
//!    per request, interleaved and paired against 0 rules; opt-in (`BENCH=outcome-instructions`,
//!    valgrind, ~3 min per Envoy) the same Envoys' instructions per request under callgrind.
//!    With `BENCH_BEFORE_WASM`, that build (without rules) is measured beside them: 0 rules
//!    must cost what a filter without outcome support costs.
//! 8. Opt-in (`BENCH=cookie-instructions`, valgrind): the same count for anonymous users
//!    without a cookie, and sending their sticky id back on the first `cookie` line or on
//!    a second one.
//! 9. `envoy/per-route.yaml` (`per-route`, `per-route-instructions` under callgrind): a
//!    request on a virtual host where the filter is listed but disabled, against the same
//!    Envoy without the filter and a host that enables it (`bench/per_route.rs`).
//! 10. The list form with 1, 10 and 100 deployments (`deployments`, `deployments-instructions`
//!     under callgrind): a request whose host is a deployment's and one whose host is none,
//!     against the same Envoy without the filter (`bench/deployments.rs`).
//! 11. Routing only (`routing-only`, `routing-only-instructions` under callgrind): the filter
//!     with `"metrics": "none"` against the no-op filter, the probe making its host calls
//!     (the floor) and the counting filter (`bench/routing_only.rs`).
//!
//! `BENCH=native,envoy,start,strips,probes,outcomes,per-route,deployments,routing-only` picks parts (default: those); `BENCH_RUNS` and
//! `BENCH_SECONDS` set rounds and seconds per run; `BENCH_BEFORE_WASM=<path>` adds a
//! row for another build of the filter (e.g. `main`'s), so before/after share one run.

use canary_core::decision::{RequestView, decide};
use canary_core::{FilterConfig, Share, bucket};
use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{DEFAULT_CONFIG, Envoy, EnvoyConfig, envoy_binary};
use canary_e2e::traffic::user_ids;
use canary_e2e::upstream::Upstream;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

#[path = "bench/callgrind.rs"]
mod callgrind;
#[path = "bench/deployments.rs"]
mod deployments;
#[path = "bench/per_route.rs"]
mod per_route;
#[path = "bench/routing_only.rs"]
mod routing_only;
#[path = "bench/tables.rs"]
mod tables;

use callgrind::{CALLGRIND_SECONDS, instructions_per_request};

const DECISIONS: usize = 5_000_000;
/// Rounds of interleaved runs: 5 gives a median that one disturbed run cannot move.
const RUNS: usize = 5;
const RUN_SECONDS: u32 = 5;
/// Connections wrk keeps open when saturating: enough to keep one Envoy worker busy.
const CONNECTIONS: u32 = 32;
/// The fixed rate is this fraction of the slowest setup's saturated median, so every
/// Envoy is at most half busy and the latency is the filter's, not a queue's.
const FIXED_RATE_FRACTION: f64 = 0.5;
/// Mean pause each wrk connection takes between requests at the fixed rate. wrk's
/// `delay()` counts whole milliseconds; at 10 ms the rounding is small, and the pause
/// is drawn uniformly from 0..=20 ms so the connections do not fire in step.
const PACING_MS: u32 = 10;
/// Envoy starts per setup for the VM start time.
const STARTS: usize = 5;
/// Module compiles per build for the compile time (each a fresh module to V8).
const COMPILES: usize = 7;

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn time_per_op(mut op: impl FnMut(usize)) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for i in 0..DECISIONS {
            op(i);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / DECISIONS as f64);
    }
    best
}

struct OneHeader<'a>(&'a str);

impl RequestView for OneHeader<'_> {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        (name == "x-user-id").then(|| self.0.as_bytes().to_vec())
    }

    fn all_cookie_lines(&mut self) -> Option<Vec<u8>> {
        None
    }
}

fn native() {
    let ids = user_ids(7, 1024);
    assert!(ids.iter().all(|id| id.len() == 36));
    let share = Share::from_basis_points(500).expect("5 %");
    let config = FilterConfig::parse(br#"{"deployment":"checkout","user_id":{"sources":[{"header":"x-user-id"}]}}"#)
        .expect("bench config");
    let hash = time_per_op(|i| {
        black_box(xxh3_64(black_box(ids[i & 1023].as_bytes())));
    });
    let cohort = time_per_op(|i| {
        black_box(share.includes(bucket(black_box("checkout"), black_box(&ids[i & 1023]))));
    });
    let full = time_per_op(|i| {
        black_box(decide(&config.deployments[0], share, &mut OneHeader(black_box(&ids[i & 1023])), || None));
    });
    println!("native, per request (36-byte user id), best of 5 x {DECISIONS}:");
    println!("  xxh3 of the id alone (baseline)      {hash:6.1} ns");
    println!("  cohort decision (hash + compare)     {cohort:6.1} ns   {:.2}x baseline", cohort / hash);
    println!("  full decide() incl. header lookup    {full:6.1} ns   {:.2}x baseline", full / hash);
}

/// CPU time of every thread of a process, in ns (`/proc/<pid>/task/*/schedstat`,
/// nanosecond resolution where `/proc/<pid>/stat` counts 10 ms ticks).
fn cpu_ns(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("envoy /proc tasks");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum()
}

struct Run {
    rps: f64,
    cpu_us_per_request: f64,
    /// Latency percentiles (µs) that wrk measured: p50, p99.
    p50_us: f64,
    p99_us: f64,
}

/// wrk's `12.34us`, `1.20ms` or `1.00s`, in µs.
fn wrk_duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

fn wrk(envoy: &Envoy, script: &Path, connections: u32, seconds: u32) -> Run {
    let before = cpu_ns(envoy.pid());
    let out = Command::new("taskset")
        .args(["-c", WRK_CPU, "wrk", "--latency", "-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .arg(format!("http://{}/", envoy.listener))
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let after = cpu_ns(envoy.pid());
    let text = String::from_utf8_lossy(&out.stdout);
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected wrk output:\n{text}"));
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected wrk output:\n{text}"));
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .and_then(|v| wrk_duration_us(v.trim()))
            .unwrap_or_else(|| panic!("no {p} latency in wrk output:\n{text}"))
    };
    assert!(!text.contains("Non-2xx") && !text.contains("Socket errors"), "errors during the benchmark:\n{text}");
    Run {
        rps,
        cpu_us_per_request: (after - before) / 1e3 / requests,
        p50_us: percentile("50%"),
        p99_us: percentile("99%"),
    }
}

/// Median, minimum and maximum.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(mut values: Vec<f64>) -> Spread {
    values.sort_by(f64::total_cmp);
    Spread { median: values[values.len() / 2], min: values[0], max: values[values.len() - 1] }
}

impl std::fmt::Display for Spread {
    /// `12.34 (11.90-13.02)`, or with a sign for differences.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.sign_plus() {
            write!(f, "{:+6.2} ({:+.2}..{:+.2})", self.median, self.min, self.max)
        } else {
            write!(f, "{:6.2} ({:.2}-{:.2})", self.median, self.min, self.max)
        }
    }
}

/// Envoy gets CPU 1 and wrk CPU 0, so the two do not trade places on the 2-core
/// machine between runs (unpinned, the no-op filter's cost moved between 2.5 and 10 µs).
const ENVOY_CPU: &str = "1";
const WRK_CPU: &str = "0";

fn pin(pid: u32) {
    let pinned = Command::new("taskset").args(["-a", "-p", "-c", ENVOY_CPU, &pid.to_string()]).output();
    if !pinned.is_ok_and(|o| o.status.success()) {
        eprintln!("taskset failed: Envoy {pid} runs unpinned, expect noisier figures");
    }
}

/// Host calls the probe filter repeats, with how often per request: the cost of one
/// is (probe − no-op) / count. Names are the probe filter's configuration keys.
const PROBES: [(&str, &str, u32); 8] = [
    ("request header read (user id)", "read_request_header", 10),
    ("request header write (routing)", "write_request_header", 10),
    ("response header read (:status)", "read_response_status", 10),
    ("clock read", "read_clock", 10),
    ("counter increment", "increment_counter", 10),
    ("histogram record", "record_histogram", 10),
    ("get_property(response.code)", "read_code_property", 10),
    ("get_property(request.duration)", "read_duration_property", 10),
];

/// The canary filter's host calls on the common path (a request with `x-user-id`),
/// once each: the probe filter configured so is the floor of this design.
const CANARY_HOST_CALLS: &str = "read_request_header=1,write_request_header=1,read_response_status=1,\
                                 read_clock=2,increment_counter=1,record_histogram=1";

/// What one benchmarked Envoy runs besides the direct-response route.
enum Setup<'a> {
    /// None of ours: no wasm filter, no header strip.
    Baseline,
    /// The canary filter as shipped, header strip included.
    Shipped,
    /// A build of the canary filter (this one or `BENCH_BEFORE_WASM`), without the strip.
    Filter(&'a Path),
    /// The shipped header strip alone (the connection manager's early mutation).
    EarlyStrip,
    /// The same strip done by the `header_mutation` HTTP filter instead.
    HeaderMutationFilterStrip,
    /// The same strip done by the Lua filter shipped for Istio.
    IstioLuaStrip,
    /// The probe filter alone with this configuration (`""`: the no-op filter),
    /// to isolate what wasm and each host call cost.
    Probe(&'a str),
    /// The canary filter, without the strip, the direct response carrying the headers the
    /// outcome rows read: this build with these rules, or another build (`BENCH_BEFORE_WASM`,
    /// without outcome support) with none.
    Outcomes(&'a serde_json::Value, Option<&'a Path>),
    /// `envoy/per-route.yaml` with the requests on a virtual host where the filter is
    /// absent, disabled or enabled.
    PerRoute(per_route::Filter),
    /// The canary filter in the list form with this many deployments, the requests'
    /// host matching one of them or none.
    Deployments(deployments::Listed),
    /// This build of the canary filter, without the strip or outcome rules, counting per
    /// cohort (`true`) or routing only (`"metrics": "none"`).
    Counting(bool),
}

struct Rig {
    stable: Upstream,
    config_server: ConfigServer,
    probe_wasm: PathBuf,
}

impl Rig {
    fn config(&self, setup: Setup) -> EnvoyConfig {
        let file = if matches!(setup, Setup::PerRoute(_)) { per_route::CONFIG } else { DEFAULT_CONFIG };
        let mut config = EnvoyConfig::shipped_file(file, self.stable.addr, self.stable.addr, self.config_server.addr);
        config.direct_response();
        match setup {
            Setup::PerRoute(filter) => filter.apply(&mut config),
            Setup::Deployments(listed) => listed.apply(&mut config, &self.probe_wasm),
            Setup::Baseline => {
                config.without_wasm();
                config.without_header_stripping();
            }
            Setup::Shipped => {}
            Setup::Filter(wasm) => {
                config.without_header_stripping();
                config.with_wasm_module(wasm);
                // Without the shipped example rule, so the row stays comparable with runs
                // before outcome rules existed; `BENCH=outcomes` measures rules.
                config.edit_plugin_config(|json| {
                    json.as_object_mut().map(|o| o.remove("outcomes"));
                });
            }
            Setup::Outcomes(rules, before) => {
                config.without_header_stripping();
                match before {
                    Some(wasm) => {
                        config.with_wasm_module(wasm);
                        config.edit_plugin_config(|json| {
                            json.as_object_mut().map(|o| o.remove("outcomes"));
                        });
                    }
                    None => config.edit_plugin_config(|json| json["outcomes"] = rules.clone()),
                }
                add_response_headers(&mut config, OUTCOME_RESPONSE_HEADERS);
            }
            Setup::EarlyStrip => config.without_wasm(),
            Setup::HeaderMutationFilterStrip => {
                config.without_wasm();
                config.strip_with_header_mutation_filter();
            }
            Setup::IstioLuaStrip => {
                config.without_wasm();
                config.strip_with_istio_lua_filter();
            }
            Setup::Counting(counted) => {
                config.without_header_stripping();
                config.edit_plugin_config(|json| {
                    json.as_object_mut().map(|o| o.remove("outcomes"));
                    if !counted {
                        json["metrics"] = "none".into();
                    }
                });
            }
            Setup::Probe(probe) => {
                config.without_header_stripping();
                config.with_wasm_module(&self.probe_wasm);
                config.set_plugin_config_text(probe);
            }
        }
        config
    }
}

/// A wrk script sending distinct user ids; with `pacing_ms`, each connection pauses a
/// random 0..=2×pacing_ms ms between requests (a fixed mean rate).
fn wrk_script(name: &str, pacing_ms: Option<u32>) -> PathBuf {
    let script = std::env::temp_dir().join(format!("wasm-canary-bench-{name}.lua"));
    let mut text = "counter = 0\nrequest = function()\n  counter = counter + 1\n  \
         return wrk.format('GET', '/', {['x-user-id'] = string.format('%08x-0000-4000-8000-%012x', counter % 100000, counter)})\nend\n"
        .to_string();
    if let Some(ms) = pacing_ms {
        text.push_str(&format!("delay = function()\n  return math.random(0, {})\nend\n", 2 * ms));
    }
    std::fs::write(&script, text).expect("write wrk script");
    script
}

/// Runs every Envoy once per round, in turn, `rounds` times.
fn interleaved(
    envoys: &[(String, Envoy)],
    script: &Path,
    connections: u32,
    rounds: usize,
    seconds: u32,
) -> Vec<Vec<Run>> {
    for (_, envoy) in envoys {
        wrk(envoy, script, connections, 1);
    }
    let mut runs: Vec<Vec<Run>> = envoys.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for ((_, envoy), results) in envoys.iter().zip(runs.iter_mut()) {
            results.push(wrk(envoy, script, connections, seconds));
        }
    }
    runs
}

/// The per-round differences `a - b` of one figure, as a spread.
/// The per-round ratios `a / b` of one figure, as a spread.
fn paired_ratio(a: &[Run], b: &[Run], figure: impl Fn(&Run) -> f64) -> Spread {
    spread(a.iter().zip(b).map(|(a, b)| figure(a) / figure(b)).collect())
}

fn paired(a: &[Run], b: &[Run], figure: impl Fn(&Run) -> f64) -> Spread {
    spread(a.iter().zip(b).map(|(a, b)| figure(a) - figure(b)).collect())
}

async fn start_all(rig: &Rig, setups: Vec<(String, Setup<'_>)>) -> Vec<(String, Envoy)> {
    let mut envoys = Vec::new();
    for (name, setup) in setups {
        let envoy = Envoy::start(&rig.config(setup), 1).await;
        pin(envoy.pid());
        envoys.push((name, envoy));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    envoys
}

async fn envoy_comparison(rig: &Rig, filters: &[(String, PathBuf)], rounds: usize, seconds: u32) {
    let mut setups = vec![
        ("without our filters (baseline)".to_string(), Setup::Baseline),
        ("no-op wasm filter".to_string(), Setup::Probe("")),
        ("probe: the canary's host calls once each".to_string(), Setup::Probe(CANARY_HOST_CALLS)),
    ];
    for (name, wasm) in filters {
        setups.push((name.clone(), Setup::Filter(wasm)));
    }
    setups.push(("canary filter + header strip (shipped)".to_string(), Setup::Shipped));
    let envoys = start_all(rig, setups).await;
    let runs = interleaved(&envoys, &wrk_script("saturated", None), CONNECTIONS, rounds, seconds);
    println!(
        "\nEnvoy --concurrency 1 on CPU {ENVOY_CPU}, direct-response route, wrk -t1 -c{CONNECTIONS} on CPU {WRK_CPU}, \
         {rounds} interleaved rounds x {seconds} s; median (min-max):"
    );
    println!("  {:42} {:>26} {:>26} {:>28}", "", "req/s", "Envoy CPU µs/request", "minus no-op, paired");
    for (i, (name, _)) in envoys.iter().enumerate() {
        let rps = spread(runs[i].iter().map(|r| r.rps).collect());
        let cpu = spread(runs[i].iter().map(|r| r.cpu_us_per_request).collect());
        let over =
            if i == 0 { String::new() } else { format!("{:+}", paired(&runs[i], &runs[1], |r| r.cpu_us_per_request)) };
        println!(
            "  {name:42} {:6.0} ({:3.0} %) ({:.0}-{:.0}) {cpu} {over:>28}",
            rps.median,
            100.0 * rps.median / spread(runs[0].iter().map(|r| r.rps).collect()).median,
            rps.min,
            rps.max
        );
    }
    println!(
        "  (the filter's own work is its row minus the no-op row; the probe row minus the no-op row is what\n   \
         its host calls cost, the floor of this design; {} µs per request is the target)",
        FILTER_TARGET_US
    );

    // The fixed rate: half of the slowest Envoy's saturated median.
    let slowest = runs.iter().map(|r| spread(r.iter().map(|r| r.rps).collect()).median).fold(f64::MAX, f64::min);
    let rate = (FIXED_RATE_FRACTION * slowest / 100.0).floor() * 100.0;
    let connections = (rate * f64::from(PACING_MS) / 1e3).round().max(1.0) as u32;
    let fixed = interleaved(&envoys, &wrk_script("fixed", Some(PACING_MS)), connections, rounds, seconds);
    println!(
        "\nThe same Envoys at a fixed rate of ~{rate:.0} req/s ({:.0} % of the slowest one's maximum; wrk -c{connections}, \
         each connection pausing 0-{} ms at random); median (min-max) and paired differences to the baseline:",
        100.0 * FIXED_RATE_FRACTION,
        2 * PACING_MS
    );
    println!("  {:42} {:>7} {:>24} {:>26} {:>26}", "", "req/s", "Envoy CPU µs/request", "added p50 µs", "added p99 µs");
    for (i, (name, _)) in envoys.iter().enumerate() {
        let rps = spread(fixed[i].iter().map(|r| r.rps).collect());
        let cpu = spread(fixed[i].iter().map(|r| r.cpu_us_per_request).collect());
        let p50 = spread(fixed[i].iter().map(|r| r.p50_us).collect());
        let p99 = spread(fixed[i].iter().map(|r| r.p99_us).collect());
        if i == 0 {
            println!("  {name:42} {:7.0} {cpu} p50 {:.0} µs, p99 {:.0} µs", rps.median, p50.median, p99.median);
        } else {
            println!(
                "  {name:42} {:7.0} {cpu} {:+} {:+}",
                rps.median,
                paired(&fixed[i], &fixed[0], |r| r.p50_us),
                paired(&fixed[i], &fixed[0], |r| r.p99_us)
            );
        }
    }
}

/// The filter's own work over the no-op filter, the figure the cost target is set on.
const FILTER_TARGET_US: f64 = 4.0;

async fn header_strips(rig: &Rig, rounds: usize, seconds: u32) {
    let envoys = start_all(
        rig,
        vec![
            ("without our filters (baseline)".to_string(), Setup::Baseline),
            ("header strip alone (early mutation)".to_string(), Setup::EarlyStrip),
            ("header strip by header_mutation filter".to_string(), Setup::HeaderMutationFilterStrip),
            ("header strip by Istio's Lua filter".to_string(), Setup::IstioLuaStrip),
        ],
    )
    .await;
    let runs = interleaved(&envoys, &wrk_script("saturated", None), CONNECTIONS, rounds, seconds);
    println!("\nHeader strips, saturated, Envoy CPU µs/request, median (min-max), paired difference to the baseline:");
    for (i, (name, _)) in envoys.iter().enumerate().skip(1) {
        let cpu = spread(runs[i].iter().map(|r| r.cpu_us_per_request).collect());
        println!("  {name:42} {cpu}  {:+}", paired(&runs[i], &runs[0], |r| r.cpu_us_per_request));
    }
}

async fn host_call_probes(rig: &Rig, rounds: usize, seconds: u32) {
    let configs: Vec<String> = PROBES.iter().map(|(_, key, count)| format!("{key}={count}")).collect();
    let mut setups = vec![("no-op wasm filter".to_string(), Setup::Probe(""))];
    for ((name, _, count), config) in PROBES.iter().zip(&configs) {
        setups.push((format!("{name} x{count}"), Setup::Probe(config)));
    }
    let envoys = start_all(rig, setups).await;
    let runs = interleaved(&envoys, &wrk_script("saturated", None), CONNECTIONS, rounds, seconds);
    println!(
        "\nWhat one host call costs (probe filter repeating it, paired (probe − no-op) / count, median (min-max)):"
    );
    for (i, (_, _, count)) in PROBES.iter().enumerate() {
        let (name, _) = &envoys[i + 1];
        let per_call = paired(&runs[i + 1], &runs[0], |r| r.cpu_us_per_request / f64::from(*count));
        println!("  {name:42} {per_call} µs per call");
    }
}

/// Envoy's arguments as the benchmark runs it outside the harness: `config`, one worker, no hot
/// restart, output discarded, from the repository root (the configs name the module from there).
fn quiet_envoy<'a>(command: &'a mut Command, config: &Path) -> &'a mut Command {
    command
        .arg("-c")
        .arg(config)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir(canary_e2e::repo_root())
}

/// Time from spawning Envoy to its first answered request through the listener,
/// polled every millisecond.
fn time_to_first_answer(config: &EnvoyConfig) -> Duration {
    let path = config.write();
    let listener = SocketAddr::from(([127, 0, 0, 1], config.listener_port));
    let started = Instant::now();
    let mut child = quiet_envoy(&mut Command::new(envoy_binary()), &path).spawn().expect("envoy runs");
    let answered = loop {
        if answers(listener) {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "envoy did not answer within 30 s");
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    answered
}

fn answers(listener: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(listener) else { return false };
    let request = "GET / HTTP/1.1\r\nhost: bench\r\nx-user-id: start\r\nconnection: close\r\n\r\n";
    let mut reply = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut reply).is_ok()
        && reply.starts_with("HTTP/1.1 200")
}

/// Milliseconds V8 (node's, `--no-liftoff` as Envoy runs it, and eagerly: node compiles
/// lazily by default, which takes ~10 ms instead of ~1 s and hides what Envoy pays at VM
/// start) takes to compile a module; each compile gets a distinct custom section so
/// V8's module cache cannot answer.
fn compile_ms(wasm: &Path) -> Option<Spread> {
    let script = format!(
        "const bytes = require('fs').readFileSync({path:?}); const times = [];\n\
         for (let i = 0; i < {COMPILES}; i++) {{\n\
           const tag = Buffer.from([0, 2, 1, 0x30 + i]);\n\
           const fresh = Buffer.concat([bytes, tag]);\n\
           const t = process.hrtime.bigint(); new WebAssembly.Module(fresh);\n\
           times.push(Number(process.hrtime.bigint() - t) / 1e6);\n\
         }}\n\
         console.log(times.join(' '));",
        path = wasm.display().to_string()
    );
    let out = Command::new("node").args(["--no-liftoff", "--no-wasm-lazy-compilation", "-e", &script]).output().ok()?;
    let times: Vec<f64> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|t| t.parse().ok()).collect();
    (times.len() == COMPILES).then(|| spread(times))
}

fn vm_start(rig: &Rig, filters: &[(String, PathBuf)]) {
    let mut setups = vec![("without wasm (baseline)".to_string(), rig.config(Setup::Baseline))];
    setups.push(("no-op wasm filter".to_string(), rig.config(Setup::Probe(""))));
    for (name, wasm) in filters {
        setups.push((name.clone(), rig.config(Setup::Filter(wasm))));
    }
    let mut times: Vec<Vec<f64>> = setups.iter().map(|_| Vec::new()).collect();
    for _ in 0..STARTS {
        for ((_, config), times) in setups.iter().zip(times.iter_mut()) {
            times.push(time_to_first_answer(config).as_secs_f64() * 1e3);
        }
    }
    println!("\nVM start: Envoy start to first answered request, {STARTS} interleaved starts, median (min-max) ms:");
    let baseline = spread(times[0].clone()).median;
    for (i, (name, _)) in setups.iter().enumerate() {
        let start = spread(times[i].clone());
        println!("  {name:42} {start} ms  ({:+.1} ms)", start.median - baseline);
    }
    println!(
        "Module size and V8 compile time (node --no-liftoff --no-wasm-lazy-compilation, {COMPILES} compiles, median (min-max) ms):"
    );
    let mut modules = vec![("no-op wasm filter".to_string(), rig.probe_wasm.clone())];
    modules.extend(filters.iter().cloned());
    for (name, wasm) in modules {
        let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
        let compile = compile_ms(&wasm).map_or_else(|| "node not available".to_string(), |s| format!("{s} ms"));
        println!("  {name:42} {:7} bytes ({:4} KiB)  compile {compile}", size, size / 1024);
    }
}

fn instructions(rig: &Rig, filters: &[(String, PathBuf)]) {
    let mut setups = vec![
        ("without our filters (baseline)".to_string(), rig.config(Setup::Baseline)),
        ("no-op wasm filter".to_string(), rig.config(Setup::Probe(""))),
        ("probe: the canary's host calls once each".to_string(), rig.config(Setup::Probe(CANARY_HOST_CALLS))),
    ];
    for (name, wasm) in filters {
        setups.push((name.clone(), rig.config(Setup::Filter(wasm))));
    }
    let script = wrk_script("callgrind", None);
    let counts: Vec<Option<f64>> =
        setups.iter().map(|(name, config)| instructions_per_request(config, name, &script)).collect();
    println!(
        "\nEnvoy instructions per request under callgrind (wrk -c2, {CALLGRIND_SECONDS} s each), minus the no-op filter's:"
    );
    for ((name, _), count) in setups.iter().zip(&counts) {
        match (count, counts.get(1).copied().flatten()) {
            (Some(count), Some(noop)) => println!("  {name:42} {count:9.0}   {:+9.0}", count - noop),
            _ => println!("  {name:42} not measured (valgrind and callgrind_control installed?)"),
        }
    }
}

/// Anonymous users' cookies in the cookie rows: none (a first visit, the sticky id is
/// new), the sticky id after another cookie on one line, or on a second `cookie` line
/// (as some HTTP/1.1 clients send them).
const COOKIE_ROWS: [(&str, &str); 3] = [
    ("no cookie (a new sticky id)", ""),
    ("the sticky id on the first cookie line, after another", r"cookie: theme=dark; canary_uid=%032x\r\n"),
    ("the sticky id on a second cookie line", r"cookie: theme=dark\r\ncookie: canary_uid=%032x\r\n"),
];

/// A wrk script for anonymous users sending `cookies` (a `COOKIE_ROWS` entry).
fn sticky_cookie_script(name: &str, cookies: &str) -> PathBuf {
    let script = std::env::temp_dir().join(format!("wasm-canary-bench-{}.lua", name.replace(' ', "-")));
    let text = format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  \
         return string.format('GET / HTTP/1.1\\r\\nHost: bench\\r\\n{cookies}\\r\\n', counter % 100000)\nend\n"
    );
    std::fs::write(&script, text).expect("write wrk script");
    script
}

/// Instructions per request for anonymous users (`COOKIE_ROWS`): each filter build and the
/// no-op filter, per row.
fn cookie_instructions(rig: &Rig, filters: &[(String, PathBuf)]) {
    for (row, cookies) in COOKIE_ROWS {
        let script = sticky_cookie_script(row, cookies);
        let mut setups = vec![("no-op wasm filter".to_string(), rig.config(Setup::Probe("")))];
        for (name, wasm) in filters {
            setups.push((name.clone(), rig.config(Setup::Filter(wasm))));
        }
        let counts: Vec<Option<f64>> =
            setups.iter().map(|(name, config)| instructions_per_request(config, name, &script)).collect();
        println!("\nAnonymous users, {row}: Envoy instructions per request, minus the no-op filter's:");
        for ((name, _), count) in setups.iter().zip(&counts) {
            match (count, counts.first().copied().flatten()) {
                (Some(count), Some(noop)) => println!("  {name:42} {count:9.0}   {:+9.0}", count - noop),
                _ => println!("  {name:42} not measured (valgrind and callgrind_control installed?)"),
            }
        }
    }
}

/// Response headers the direct response carries in the outcome rows: what the rules read,
/// with values that match them.
const OUTCOME_RESPONSE_HEADERS: &[(&str, &str)] =
    &[("x-cache", "HIT"), ("x-db-time-ms", "150"), ("x-payment-result", "declined"), ("x-feature", "enabled")];

/// Adds headers to the (direct) response of the first route, as Envoy's route
/// `response_headers_to_add` does.
fn add_response_headers(config: &mut EnvoyConfig, headers: &[(&str, &str)]) {
    let route = &mut config.yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"][0];
    let list: Vec<serde_yaml_ng::Value> = headers
        .iter()
        .map(|(key, value)| {
            serde_yaml_ng::from_str(&format!("{{header: {{key: {key}, value: '{value}'}}}}")).expect("header option")
        })
        .collect();
    route["response_headers_to_add"] = serde_yaml_ng::Value::Sequence(list);
}

/// The outcome rows: (name, rules). The benchmark requests are `GET /`.
fn outcome_setups() -> Vec<(String, serde_json::Value)> {
    use serde_json::json;
    let cache_hit = json!({"name": "cache_hit", "response_header": "x-cache", "equals": "HIT"});
    vec![
        ("0 outcome rules".to_string(), json!([])),
        ("1 rule (cache_hit, applies and matches)".to_string(), json!([cache_hit])),
        (
            "4 rules (2 apply to GET /)".to_string(),
            json!([
                cache_hit,
                {"name": "declined", "response_header": "x-payment-result", "equals": "declined", "path_prefix": "/pay"},
                {"name": "slow_db", "response_header": "x-db-time-ms", "above": 100},
                {"name": "payment_required", "status": 402, "path_prefix": "/checkout", "methods": ["POST"]}
            ]),
        ),
        (
            "4 rules (4 headers, all apply and match)".to_string(),
            json!([
                cache_hit,
                {"name": "declined", "response_header": "x-payment-result", "equals": "declined"},
                {"name": "slow_db", "response_header": "x-db-time-ms", "above": 100},
                {"name": "feature_on", "response_header": "x-feature", "equals": "enabled"}
            ]),
        ),
    ]
}

/// Outcome rules: Envoy CPU µs per request, saturated and interleaved, paired against 0 rules.
async fn outcomes(rig: &Rig, before: Option<&Path>, rounds: usize, seconds: u32) {
    let rules = outcome_setups();
    let none = serde_json::json!([]);
    let mut setups: Vec<(String, Setup)> =
        rules.iter().map(|(name, r)| (name.clone(), Setup::Outcomes(r, None))).collect();
    if let Some(before) = before {
        setups.push(("BENCH_BEFORE_WASM (no rules)".to_string(), Setup::Outcomes(&none, Some(before))));
    }
    let envoys = start_all(rig, setups).await;
    let runs = interleaved(&envoys, &wrk_script("saturated", None), CONNECTIONS, rounds, seconds);
    println!(
        "\nOutcome rules: the canary filter (no header strip), direct response carrying the rules' headers, \
         Envoy CPU µs/request saturated, {rounds} interleaved rounds x {seconds} s, median (min-max), paired minus 0 rules:"
    );
    for (i, (name, _)) in envoys.iter().enumerate() {
        let cpu = spread(runs[i].iter().map(|r| r.cpu_us_per_request).collect());
        let over =
            if i == 0 { String::new() } else { format!("{:+}", paired(&runs[i], &runs[0], |r| r.cpu_us_per_request)) };
        println!("  {name:42} {cpu} {over:>28}");
    }
}

/// Outcome rules: Envoy instructions per request under callgrind, against 0 rules.
fn outcome_instructions(rig: &Rig, before: Option<&Path>) {
    let rules = outcome_setups();
    let mut setups: Vec<(String, EnvoyConfig)> =
        rules.iter().map(|(name, r)| (name.clone(), rig.config(Setup::Outcomes(r, None)))).collect();
    if let Some(before) = before {
        let none = serde_json::json!([]);
        setups.push(("BENCH_BEFORE_WASM (no rules)".to_string(), rig.config(Setup::Outcomes(&none, Some(before)))));
    }
    let script = wrk_script("callgrind", None);
    let counts: Vec<Option<f64>> =
        setups.iter().map(|(name, config)| instructions_per_request(config, name, &script)).collect();
    println!("\nOutcome rules, Envoy instructions per request under callgrind (wrk -c2, {CALLGRIND_SECONDS} s each):");
    for ((name, _), count) in setups.iter().zip(&counts) {
        match (count, counts.first().copied().flatten()) {
            (Some(count), Some(none)) => {
                println!("  {name:42} {count:9.0}   {:+9.0}  ({:.3}x)", count - none, count / none)
            }
            _ => println!("  {name:42} not measured (valgrind and callgrind_control installed?)"),
        }
    }
}

#[tokio::main]
async fn main() {
    // `BENCH=native,envoy,start,strips,probes,outcomes,per-route,deployments,routing-only` runs some parts.
    let parts = std::env::var("BENCH")
        .unwrap_or_else(|_| "native,envoy,start,strips,probes,outcomes,per-route,deployments,routing-only".to_string());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    let rounds = env_number("BENCH_RUNS", RUNS).max(1);
    let seconds = env_number("BENCH_SECONDS", RUN_SECONDS).max(1);
    if part("native") {
        native();
    }
    let mut filters = vec![("canary filter alone".to_string(), canary_e2e::envoy::wasm_path())];
    if let Ok(before) = std::env::var("BENCH_BEFORE_WASM") {
        filters.push(("canary filter alone, BENCH_BEFORE_WASM".to_string(), PathBuf::from(before)));
    }
    let rig = Rig {
        stable: Upstream::start("stable").await,
        config_server: ConfigServer::start(Answer::share("demo", 1, 500)).await,
        probe_wasm: canary_e2e::envoy::probe_wasm_path(),
    };
    if part("envoy") {
        envoy_comparison(&rig, &filters, rounds, seconds).await;
    }
    if part("start") {
        vm_start(&rig, &filters);
    }
    if part("strips") {
        header_strips(&rig, rounds, seconds).await;
    }
    if part("instructions") {
        instructions(&rig, &filters);
    }
    if part("cookie-instructions") {
        cookie_instructions(&rig, &filters);
    }
    if part("probes") {
        host_call_probes(&rig, rounds, seconds).await;
    }
    let before = std::env::var("BENCH_BEFORE_WASM").ok().map(PathBuf::from);
    if part("outcomes") {
        outcomes(&rig, before.as_deref(), rounds, seconds).await;
    }
    if part("outcome-instructions") {
        outcome_instructions(&rig, before.as_deref());
    }
    if part("per-route") {
        per_route::run(&rig, rounds, seconds).await;
    }
    if part("per-route-instructions") {
        per_route::instructions(&rig);
    }
    if part("deployments") {
        deployments::run(&rig, rounds, seconds).await;
    }
    if part("deployments-instructions") {
        deployments::instructions(&rig);
    }
    if part("routing-only") {
        routing_only::run(&rig, rounds, seconds).await;
    }
    if part("routing-only-instructions") {
        routing_only::instructions(&rig);
    }
}
