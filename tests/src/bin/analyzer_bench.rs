//! `make bench`, analyzer half: what one check costs at mesh scale, and the simulation table.
//!
//! 1. **One check on a 168k-series scrape.** A deterministic, Envoy-1.40-shaped
//!    `/stats/prometheus` text (the format of `analyzer/src/source/testdata/envoy_1_40.prom`:
//!    `# TYPE` lines, `name{} value` for label-less series, 32-digit sums) with
//!    [`DEPLOYMENTS`] deployments' `canary_requests_total` and `canary_latency_us` series
//!    (the buckets of [`LATENCY_BUCKETS_US`]) among the stats of two clusters per
//!    deployment (stable and canary subsets), ~168 000 sample lines in all (~100 000 with the
//!    old 36 buckets). The stages of
//!    one check are timed on it, each over [`REPETITIONS`] runs (median and best):
//!    `parse_exposition` for one deployment, the [`DeltaTracker`] step (previous and
//!    current snapshot → interval), [`RolloutEvaluation`] observe + rows, and the three
//!    together (target < 100 ms). The baseline, measured in the same run so the figures
//!    read as ratios on any machine, is a plain line scan of the text
//!    (`text.lines().count()`): the least any parser has to do. Parse is broken down
//!    into its line filter and `prometheus-parse`, so a slow parse says where the time
//!    goes. Peak RSS (`VmHWM`) is reported before and after; the peak is reset
//!    (`/proc/self/clear_refs`) after generating the texts so the check's own peak shows.
//!
//!    Then **the latency histogram path** ([`histogram_path`]) on the old 36-bucket layout, the shipped
//!    121-bucket one and Envoy's own bins (what the admin source reads: `/stats?format=json&
//!    histogram_buckets=detailed` filtered to one deployment, ~190 bins per histogram of a
//!    log-normal service): series, answer size and parse cost of the admin answer and of
//!    Prometheus' answer to the latency query, the delta step and the latency comparison
//!    on each layout, with ratios against the old layout measured in the same run.
//! 2. **The simulation at full size** (`SimulationConfig::full`): false rollbacks on A/A
//!    traffic and detection of a 0.5 % → 1 % error-rate regression at 5 % canary, ours
//!    vs. a peeked fixed-horizon test vs. a Flagger-style threshold rule. Then the latency
//!    simulation (`LatencySimulationConfig::full`): the targets for the tail-exceedance
//!    verdict against the quantile bounds it replaced, on the shipped 121 buckets by the
//!    Prometheus path and by the admin path (Envoy's bins folded onto them), and with a
//!    latency that follows load (pooled vs per step).
//!
//! 3. **Refusing a huge bearer token** ([`huge_token_benchmark`]): the CPU one 401 costs
//!    when an unauthenticated client sends a [`HUGE_TOKEN_BYTES`] token to an analyzer with
//!    [`IDENTITIES`] identities, against a wrong token of ordinary length.
//! 4. **The fleet's config polls** ([`config_poll`]): the analyzer's CPU per poll and per
//!    round of 10 000 proxies × 100 deployments, for the batch endpoint (mostly `304`)
//!    against the per-deployment one polled 100 times, in the same run.
//! 5. **`/config` latency under audit reads**: see [`audit_reads`].
//! 6. **The batch config endpoint under a whole fleet** ([`fleet_polls`]): 10 000 proxies
//!    × 100 deployments polling the real analyzer binary every 5 s: its CPU, p50/p99,
//!    the polls/s it sustains, against per-deployment polls and unconditional ones.
//! 7. **1 000 rollouts checked every 30 s** ([`fleet_checks`]) against a simulated fleet
//!    of Envoy admin endpoints: the real analyzer's CPU, peak RSS and cost per check.
//!
//! `BENCH=parse`, `simulation`, `auth`, `config`, `audit`, `fleet-polls` or `fleet-checks`
//! (or several, comma-separated) runs those parts (for quick experiments).

#[path = "analyzer_bench/audit_reads.rs"]
mod audit_reads;

use canary_analyzer::auth::{Authenticator, Permission, TokenTable};
use canary_analyzer::evaluation::RolloutEvaluation;
use canary_analyzer::policy::RolloutPolicy;
use canary_analyzer::simulation::latency::{self as latency_simulation, LatencySimulationConfig};
use canary_analyzer::simulation::{self, SimulationConfig};
use canary_analyzer::source::{
    DeltaTracker, DeploymentSnapshot, IntervalMetrics, TargetScrape, deployment_label, envoy_bin_bounds_us,
    is_relevant, latency_query, parse_detailed_stats, parse_exposition, parse_latency_answer, target_delta,
};
use canary_analyzer::stats::{LatencyComparison, LatencyHistogram, LatencySettings};
use canary_core::Cohort;
use canary_core::metrics::{LATENCY, LATENCY_BUCKETS_US, REQUESTS, StatusClass, latency_stat, requests_stat};
use prometheus_parse::Scrape;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "analyzer_bench/config_poll.rs"]
mod config_poll;
#[path = "analyzer_bench/fleet_checks.rs"]
mod fleet_checks;
#[path = "analyzer_bench/fleet_polls.rs"]
mod fleet_polls;
#[path = "analyzer_bench/histogram_path.rs"]
mod histogram_path;
#[path = "analyzer_bench/process_usage.rs"]
mod process_usage;

/// Deployments in the scrape: each brings 520 of our series (180 with the old 36 buckets)
/// and 2 clusters × 160 of Envoy's own, so 200 give 168 000 series (plus a few server-wide ones).
const DEPLOYMENTS: u32 = 200;
/// The deployment the check is about: one in the middle, so no early exit can help.
const WANTED: u32 = 117;
/// Timed runs per stage; the median is the figure, the best shows the noise floor.
const REPETITIONS: usize = 15;
/// Intervals observed before the timed one, so the tests carry a realistic history.
const WARM_INTERVALS: u64 = 20;
/// The nominal canary share of the wanted deployment (basis points).
const SHARE_BP: u32 = 500;
/// Cumulative counters are `per_interval × (HISTORY + round)`: the Envoys have been up a while.
const HISTORY: u64 = 1_000;
const SEED: u64 = 0x00c0_ffee;
/// The simulation's seed (the unit test runs `SimulationConfig::small(2024)`).
const SIMULATION_SEED: u64 = 2024;

/// Envoy's default histogram bounds (ms), as in the testdata's `envoy_cluster_upstream_cx_connect_ms`.
const ENVOY_BUCKETS_MS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// Envoy's per-cluster counters (a real 1.40 cluster has about this many).
const CLUSTER_COUNTERS: [&str; 72] = [
    "assignment_stale",
    "assignment_timeout_received",
    "bind_errors",
    "default_total_match_count",
    "lb_healthy_panic",
    "lb_local_cluster_not_ok",
    "lb_recalculate_zone_structures",
    "lb_subsets_created",
    "lb_subsets_fallback",
    "lb_subsets_fallback_panic",
    "lb_subsets_removed",
    "lb_subsets_selected",
    "lb_zone_cluster_too_small",
    "lb_zone_no_capacity_left",
    "lb_zone_number_differs",
    "lb_zone_routing_all_directly",
    "lb_zone_routing_cross_zone",
    "lb_zone_routing_sampled",
    "membership_change",
    "original_dst_host_invalid",
    "retry_or_shadow_abandoned",
    "update_attempt",
    "update_empty",
    "update_failure",
    "update_no_rebuild",
    "update_success",
    "upstream_cx_close_notify",
    "upstream_cx_connect_attempts_exceeded",
    "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout",
    "upstream_cx_connect_with_0_rtt",
    "upstream_cx_destroy",
    "upstream_cx_destroy_local",
    "upstream_cx_destroy_local_with_active_rq",
    "upstream_cx_destroy_remote",
    "upstream_cx_destroy_remote_with_active_rq",
    "upstream_cx_destroy_with_active_rq",
    "upstream_cx_http1_total",
    "upstream_cx_http2_total",
    "upstream_cx_http3_total",
    "upstream_cx_idle_timeout",
    "upstream_cx_max_duration_reached",
    "upstream_cx_max_requests",
    "upstream_cx_none_healthy",
    "upstream_cx_overflow",
    "upstream_cx_pool_overflow",
    "upstream_cx_protocol_error",
    "upstream_cx_rx_bytes_total",
    "upstream_cx_total",
    "upstream_cx_tx_bytes_total",
    "upstream_flow_control_backed_up_total",
    "upstream_flow_control_drained_total",
    "upstream_flow_control_paused_reading_total",
    "upstream_flow_control_resumed_reading_total",
    "upstream_internal_redirect_failed_total",
    "upstream_internal_redirect_succeeded_total",
    "upstream_rq_0rtt",
    "upstream_rq_cancelled",
    "upstream_rq_completed",
    "upstream_rq_maintenance_mode",
    "upstream_rq_max_duration_reached",
    "upstream_rq_pending_failure_eject",
    "upstream_rq_pending_overflow",
    "upstream_rq_pending_total",
    "upstream_rq_per_try_idle_timeout",
    "upstream_rq_per_try_timeout",
    "upstream_rq_retry",
    "upstream_rq_retry_backoff_exponential",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_success",
    "upstream_rq_rx_reset",
    "upstream_rq_timeout",
];

const CLUSTER_GAUGES: [&str; 16] = [
    "circuit_breakers_default_cx_open",
    "circuit_breakers_default_cx_pool_open",
    "circuit_breakers_default_rq_open",
    "circuit_breakers_default_rq_pending_open",
    "circuit_breakers_default_rq_retry_open",
    "lb_subsets_active",
    "max_host_weight",
    "membership_degraded",
    "membership_excluded",
    "membership_healthy",
    "membership_total",
    "upstream_cx_active",
    "upstream_cx_rx_bytes_buffered",
    "upstream_cx_tx_bytes_buffered",
    "upstream_rq_active",
    "upstream_rq_pending_active",
];

const CLUSTER_HISTOGRAMS: [&str; 3] = ["upstream_cx_connect_ms", "upstream_cx_length_ms", "upstream_rq_time"];

/// Label-less server-wide series, written `name{} value` as Envoy does.
const SERVER_GAUGES: [&str; 12] = [
    "concurrency",
    "days_until_first_cert_expiring",
    "hot_restart_epoch",
    "live",
    "memory_allocated",
    "memory_heap_size",
    "memory_physical_size",
    "parent_connections",
    "state",
    "stats_recent_lookups",
    "total_connections",
    "uptime",
];

/// SplitMix64: a tiny deterministic generator, so the text is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A cumulative counter that only grows between rounds: most of Envoy's are 0.
fn counter(rng: &mut Rng, round: u64) -> u64 {
    let (zero, per_interval) = (rng.below(10) < 7, rng.below(2_000));
    if zero { 0 } else { per_interval * (HISTORY + round) }
}

/// A float as Envoy 1.40 prints it (32 significant digits, like `%.32g`; 0 as `0`).
fn envoy_float(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let integer_digits = (value.abs().log10().floor() as i64 + 1).max(1);
    let digits = format!("{value:.*}", (32 - integer_digits).max(0) as usize);
    // `%.32g` drops trailing zeros.
    if digits.contains('.') { digits.trim_end_matches('0').trim_end_matches('.').to_string() } else { digits }
}

/// Our series per deployment in the synthetic exposition: 24 counters and 4 histograms
/// of `bounds` finite buckets plus `+Inf`, `_sum` and `_count` (the 3 gauges left out).
fn ours_per_deployment(bounds: usize) -> usize {
    Cohort::ALL.len() * StatusClass::ALL.len() + Cohort::ALL.len() * (bounds + 3)
}

/// The bucket holding deployment `d`'s most common latency, 3-10 ms (the same on any layout).
fn mode_bucket(bounds: &[u64], d: u32) -> usize {
    let latency_us = 3_000 + 1_000 * u64::from(d % 8);
    bounds.partition_point(|bound| *bound < latency_us)
}

/// Per-interval counts of `total` observations over `bounds + 1` buckets, peaked at `mode`.
fn spread(total: u64, buckets: usize, mode: usize) -> Vec<u64> {
    let weights: Vec<f64> = (0..buckets).map(|i| 0.45f64.powi((i as i32 - mode as i32).abs())).collect();
    let norm: f64 = weights.iter().sum();
    let mut counts: Vec<u64> = weights.iter().map(|w| (total as f64 * w / norm).floor() as u64).collect();
    counts[mode] += total - counts.iter().sum::<u64>();
    counts
}

/// Writes one histogram's `_bucket`/`_sum`/`_count` lines (cumulative over `intervals`).
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[String],
    midpoints: &[f64],
    counts: &[u64],
    intervals: u64,
) {
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count * intervals;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let total: u64 = counts.iter().sum::<u64>() * intervals;
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
    let sum: f64 = counts.iter().zip(midpoints).map(|(c, m)| (c * intervals) as f64 * m).sum();
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", envoy_float(sum * 1.000_123_456_789));
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}

fn deployment_name(index: u32) -> String {
    format!("svc-{index:04}")
}

/// Istio-style subset cluster names: mesh Envoys' long labels are part of the cost.
fn cluster_names() -> Vec<String> {
    (0..DEPLOYMENTS)
        .flat_map(|d| {
            ["stable", "canary"]
                .map(|subset| format!("outbound|8080|{subset}|{}.shop.svc.cluster.local", deployment_name(d)))
        })
        .collect()
}

/// Requests per interval of each cohort of deployment `d`; the wanted one runs at [`SHARE_BP`].
fn cohort_rates(d: u32) -> [(Cohort, u64); 4] {
    let mut rng = Rng(SEED ^ (u64::from(d) << 20));
    let control = 500 + rng.below(5_000);
    let canary = if d == WANTED {
        control * u64::from(SHARE_BP) / u64::from(10_000 - SHARE_BP)
    } else {
        control / (1 + rng.below(20))
    };
    [
        (Cohort::Canary, canary),
        (Cohort::Control, control),
        (Cohort::Forced, rng.below(5)),
        (Cohort::Excluded, rng.below(50)),
    ]
}

/// Requests per interval of one status class: 2 % 4xx, 0.5 % 5xx, a few resets and redirects.
fn class_rate(rate: u64, class: StatusClass) -> u64 {
    match class {
        StatusClass::Success => rate - rate / 50 - rate / 200 - 2 * (rate / 1_000),
        StatusClass::ClientError => rate / 50,
        StatusClass::ServerError => rate / 200,
        StatusClass::Reset | StatusClass::Redirection => rate / 1_000,
        StatusClass::Informational => 0,
    }
}

/// The whole exposition at `round` (round 1 is one check interval after round 0), our
/// latency histograms over `latency_bounds`.
fn exposition(round: u64, latency_bounds: &[u64]) -> (String, usize) {
    let mut out = String::with_capacity(12 << 20);
    let mut series = 0usize;
    let mut sample = |out: &mut String, line: std::fmt::Arguments<'_>| {
        series += 1;
        let _ = out.write_fmt(line);
        out.push('\n');
    };
    let clusters = cluster_names();

    // Counters first (Envoy writes counters, gauges, histograms, each sorted by name).
    let _ = writeln!(out, "# TYPE {REQUESTS} counter");
    for d in 0..DEPLOYMENTS {
        let deployment = deployment_name(d);
        for (cohort, rate) in cohort_rates(d) {
            for class in StatusClass::ALL {
                let value = class_rate(rate, class) * (HISTORY + round);
                let (cohort, class) = (cohort.label(), class.label());
                sample(
                    &mut out,
                    format_args!(
                        "{REQUESTS}{{deployment=\"{deployment}\",cohort=\"{cohort}\",class=\"{class}\"}} {value}"
                    ),
                );
            }
        }
    }
    let mut rng = Rng(SEED ^ 1);
    for name in CLUSTER_COUNTERS {
        let _ = writeln!(out, "# TYPE envoy_cluster_{name} counter");
        for cluster in &clusters {
            let value = counter(&mut rng, round);
            sample(&mut out, format_args!("envoy_cluster_{name}{{envoy_cluster_name=\"{cluster}\"}} {value}"));
        }
    }
    let _ = writeln!(out, "# TYPE envoy_cluster_upstream_rq counter");
    for cluster in &clusters {
        for code in ["200", "404", "503"] {
            let value = counter(&mut rng, round);
            sample(
                &mut out,
                format_args!(
                    "envoy_cluster_upstream_rq{{envoy_response_code=\"{code}\",envoy_cluster_name=\"{cluster}\"}} {value}"
                ),
            );
        }
    }
    let _ = writeln!(out, "# TYPE envoy_cluster_upstream_rq_xx counter");
    for cluster in &clusters {
        for class in ["2", "4", "5"] {
            let value = counter(&mut rng, round);
            sample(
                &mut out,
                format_args!(
                    "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"{class}\",envoy_cluster_name=\"{cluster}\"}} {value}"
                ),
            );
        }
    }

    // Gauges.
    for name in CLUSTER_GAUGES {
        let _ = writeln!(out, "# TYPE envoy_cluster_{name} gauge");
        for cluster in &clusters {
            let value = rng.below(64);
            sample(&mut out, format_args!("envoy_cluster_{name}{{envoy_cluster_name=\"{cluster}\"}} {value}"));
        }
    }
    for name in SERVER_GAUGES {
        let _ = writeln!(out, "# TYPE envoy_server_{name} gauge");
        let value = if name == "uptime" { 3_600 + 30 * round } else { rng.below(1 << 20) };
        sample(&mut out, format_args!("envoy_server_{name}{{}} {value}"));
    }

    // Histograms: ours, then Envoy's own per cluster.
    let bounds: Vec<String> = latency_bounds.iter().map(u64::to_string).collect();
    let midpoints: Vec<f64> = std::iter::once(125.0)
        .chain(latency_bounds.windows(2).map(|w| (w[0] + w[1]) as f64 / 2.0))
        .chain(std::iter::once(90_000_000.0))
        .collect();
    let _ = writeln!(out, "# TYPE {LATENCY} histogram");
    for d in 0..DEPLOYMENTS {
        let deployment = deployment_name(d);
        for (cohort, rate) in cohort_rates(d) {
            // The histogram counts every request the counters count.
            let total = StatusClass::ALL.into_iter().map(|class| class_rate(rate, class)).sum();
            let counts = spread(total, latency_bounds.len() + 1, mode_bucket(latency_bounds, d));
            let labels = format!("deployment=\"{deployment}\",cohort=\"{}\"", cohort.label());
            series += latency_bounds.len() + 3;
            histogram(&mut out, LATENCY, &labels, &bounds, &midpoints, &counts, HISTORY + round);
        }
    }
    let envoy_bounds: Vec<String> = ENVOY_BUCKETS_MS.iter().map(f64::to_string).collect();
    let envoy_midpoints: Vec<f64> = std::iter::once(0.25)
        .chain(ENVOY_BUCKETS_MS.windows(2).map(|w| (w[0] + w[1]) / 2.0))
        .chain(std::iter::once(7_200_000.0))
        .collect();
    for name in CLUSTER_HISTOGRAMS {
        let _ = writeln!(out, "# TYPE envoy_cluster_{name} histogram");
        for cluster in &clusters {
            let counts = spread(rng.below(300), ENVOY_BUCKETS_MS.len() + 1, 1 + rng.below(6) as usize);
            series += ENVOY_BUCKETS_MS.len() + 3;
            let name = format!("envoy_cluster_{name}");
            histogram(
                &mut out,
                &name,
                &format!("envoy_cluster_name=\"{cluster}\""),
                &envoy_bounds,
                &envoy_midpoints,
                &counts,
                HISTORY + round,
            );
        }
    }
    (out, series)
}

/// Median and best of [`REPETITIONS`] timed runs.
#[derive(Clone, Copy)]
struct Timing {
    median: Duration,
    best: Duration,
}

impl Timing {
    fn of(mut runs: Vec<Duration>) -> Timing {
        runs.sort();
        Timing { median: runs[runs.len() / 2], best: runs[0] }
    }
}

/// The time one call of `run` takes on `input` (prepared beforehand, not timed).
fn timed<S, R>(input: S, run: impl FnOnce(S) -> R) -> Duration {
    let input = black_box(input);
    let start = Instant::now();
    black_box(run(input));
    start.elapsed()
}

/// `VmHWM` (peak RSS) and `VmRSS` of this process in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0); false when the kernel refuses.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn policy() -> RolloutPolicy {
    let yaml = format!(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: bench}}\n\
         spec:\n  deployment: {}\n  alpha: 0.05\n  min_requests_per_cohort: 1000\n  metrics:\n    \
         - {{name: error_rate, max_relative_increase: 0, critical: true}}\n    \
         - {{name: latency_p99, max_increase_ms: 50, critical: true}}\n    \
         - {{name: latency_p50, max_increase_ms: 10, critical: false}}\n    \
         - {{name: sample_ratio, max_relative_deviation: 0.1, critical: false}}\n",
        deployment_name(WANTED)
    );
    RolloutPolicy::from_yaml(&yaml).expect("bench policy is valid")
}

fn scrape(snapshot: &DeploymentSnapshot) -> Vec<TargetScrape> {
    vec![TargetScrape { target: "envoy-0".to_string(), result: Ok(snapshot.clone()) }]
}

/// The tracker after the previous round: the timed step is previous → current.
fn tracker_after(previous: &DeploymentSnapshot) -> DeltaTracker {
    let mut tracker = DeltaTracker::new();
    tracker.advance(scrape(previous));
    tracker
}

fn check_benchmark() {
    let (hwm_start, _) = memory();
    let (previous_text, _) = exposition(0, &LATENCY_BUCKETS_US);
    let (text, series) = exposition(1, &LATENCY_BUCKETS_US);
    let (hwm_generated, rss_generated) = memory();
    let wanted = deployment_name(WANTED);
    let lines = text.lines().count();
    println!("one check on a synthetic Envoy 1.40 /stats/prometheus, {REPETITIONS} runs per stage (median, best):");
    println!(
        "  exposition: {:.1} MB, {lines} lines, {series} series ({} deployments x {} ours, {} clusters x 160 Envoy's)",
        text.len() as f64 / 1e6,
        DEPLOYMENTS,
        ours_per_deployment(LATENCY_BUCKETS_US.len()),
        2 * DEPLOYMENTS
    );

    // One check from a cold start (untimed), with the peak RSS reset just before it.
    let peak_reset = reset_peak_rss();
    let (_, rss_before_check) = memory();
    let previous = parse_exposition(&previous_text, &wanted).expect("previous round parses");
    let current = parse_exposition(&text, &wanted).expect("current round parses");
    let interval = tracker_after(&previous).advance(scrape(&current));
    assert_eq!(interval.contributing_targets, ["envoy-0"], "the step yields an interval: {interval:?}");
    assert!(interval.requests(Cohort::Canary) > 0 && interval.latency(Cohort::Control).is_some());
    let mut warm = RolloutEvaluation::new(&policy()).expect("evaluation");
    for _ in 0..WARM_INTERVALS {
        warm.observe(&interval, Some(SHARE_BP)).expect("observe");
    }
    let rows = warm.rows(Vec::new()).expect("rows");
    let (hwm_first_check, _) = memory();

    // Rounds take every stage once, in turn, so drift on the machine hits all stages alike.
    let needle = deployment_label(&wanted);
    let kept: Vec<String> = text.lines().filter(|l| is_relevant(l, &needle)).map(|l| l.replace("{} ", " ")).collect();
    let mut runs: [Vec<Duration>; 7] = Default::default();
    for _ in 0..REPETITIONS {
        runs[0].push(timed((), |()| text.lines().count()));
        runs[1].push(timed((), |()| parse_exposition(&text, &wanted).expect("parse")));
        runs[2].push(timed(tracker_after(&previous), |mut tracker| tracker.advance(scrape(&current))));
        runs[3].push(timed(warm.clone(), |mut evaluation| {
            evaluation.observe(&interval, Some(SHARE_BP)).expect("observe");
            evaluation.rows(Vec::new()).expect("rows")
        }));
        runs[4].push(timed((tracker_after(&previous), warm.clone()), |(mut tracker, mut evaluation)| {
            let snapshot = parse_exposition(&text, &wanted).expect("parse");
            let interval: IntervalMetrics =
                tracker.advance(vec![TargetScrape { target: "envoy-0".to_string(), result: Ok(snapshot) }]);
            evaluation.observe(&interval, Some(SHARE_BP)).expect("observe");
            evaluation.rows(Vec::new()).expect("rows")
        }));
        // Where parse's time goes: the line filter alone, then prometheus-parse on what it keeps.
        runs[5].push(timed((), |()| text.lines().filter(|l| is_relevant(l, &needle)).count()));
        runs[6].push(timed(kept.clone(), |kept| {
            Scrape::parse(kept.into_iter().map(Ok)).expect("prometheus-parse").samples.len()
        }));
    }
    let (hwm_end, _) = memory();
    let [scan, parse, step, evaluate, total, filter, prometheus_parse] = runs.map(Timing::of);

    let base = scan.median;
    let row = |name: &str, t: Timing, note: &str| {
        println!(
            "  {name:46} {:>10}  (best {:>10})  {:6.1}x line scan{note}",
            human(t.median),
            human(t.best),
            t.median.as_secs_f64() / base.as_secs_f64()
        );
    };
    row("line scan, text.lines().count() (baseline)", scan, "");
    row("parse_exposition (one deployment)", parse, "");
    row("  of which: line filter (name + deployment)", filter, "");
    row(&format!("  of which: prometheus-parse, {} kept lines", kept.len()), prometheus_parse, "");
    row("DeltaTracker step (2 snapshots -> interval)", step, "");
    row(&format!("RolloutEvaluation observe + {} rows", rows.len()), evaluate, "");
    let verdict =
        if total.median < Duration::from_millis(100) { "target < 100 ms: met" } else { "target < 100 ms: MISSED" };
    row("total: parse + step + observe + rows", total, &format!("   {verdict}"));
    println!(
        "  peak RSS (VmHWM): {hwm_start:.1} MiB at start, {hwm_generated:.1} MiB after generating the two texts \
         (RSS {rss_generated:.1} MiB)"
    );
    if peak_reset {
        println!(
            "    reset to {rss_before_check:.1} MiB, the first check (2 parses, step, {WARM_INTERVALS} observes) peaks at \
             {hwm_first_check:.1} MiB (+{:.1} MiB); {hwm_end:.1} MiB after the timed runs",
            hwm_first_check - rss_before_check
        );
    } else {
        println!("    (/proc/self/clear_refs refused, peak not reset) {hwm_end:.1} MiB after the timed runs");
    }
}

/// A duration in ms, or in µs below 1 ms.
fn human(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

fn simulation_benchmark() {
    println!("\nsimulation at full size (SimulationConfig::full({SIMULATION_SEED})):");
    let start = Instant::now();
    let report = simulation::run(&SimulationConfig::full(SIMULATION_SEED));
    let elapsed = start.elapsed();
    print!("{report}");
    println!("({:.1} s)", elapsed.as_secs_f64());
    latency_simulation_benchmark();
}

fn latency_simulation_benchmark() {
    for (title, config) in LatencySimulationConfig::benchmark(SIMULATION_SEED) {
        println!("\nlatency simulation, {title}:");
        let start = Instant::now();
        print!("{}", latency_simulation::run(&config));
        println!("({:.1} s)", start.elapsed().as_secs_f64());
    }
}

/// Identities in the tokens file of [`huge_token_benchmark`]: a large organisation's.
const IDENTITIES: usize = 200;
/// The token an unauthenticated client sends: about the largest header hyper accepts.
const HUGE_TOKEN_BYTES: usize = 300_000;

/// What refusing one unknown bearer token costs with [`IDENTITIES`] identities: a
/// [`HUGE_TOKEN_BYTES`] one and one as long as the configured tokens (one thread, so
/// the time is the CPU the request costs the analyzer).
fn huge_token_benchmark() {
    let lines: String =
        (0..IDENTITIES).map(|i| format!("{:064x},user-{i},operator\n", i as u128 * 0x9e37_79b9_7f4a_7c15)).collect();
    let auth = Authenticator::fixed(TokenTable::parse(&lines).expect("bench tokens file is valid"));
    let refuse = |authorization: &str| {
        let timings = (0..REPETITIONS)
            .map(|_| {
                timed(authorization, |header| {
                    auth.authenticate(Some(header), Permission::Override, "bench").expect_err("an unknown token")
                })
            })
            .collect();
        Timing::of(timings)
    };
    let huge = refuse(&format!("Bearer {}", "x".repeat(HUGE_TOKEN_BYTES)));
    let ordinary = refuse(&format!("Bearer {}", "y".repeat(64)));
    println!("\nrefusing an unknown bearer token, {IDENTITIES} identities (median, best of {REPETITIONS}):");
    for (what, timing) in [(format!("{HUGE_TOKEN_BYTES} B token"), huge), ("64 B token".to_string(), ordinary)] {
        println!(
            "  {what:<16} {:>12.1} µs {:>12.1} µs",
            timing.median.as_secs_f64() * 1e6,
            timing.best.as_secs_f64() * 1e6
        );
    }
}

fn main() {
    // Empty: every part; else a comma-separated list of parts (shared with `bench`'s names).
    let only = std::env::var("BENCH").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    if part("parse") {
        check_benchmark();
        histogram_path::histogram_path_benchmark();
    }
    if part("simulation") {
        simulation_benchmark();
    }
    if part("auth") {
        huge_token_benchmark();
    }
    if part("config") {
        config_poll::config_poll_benchmark();
    }
    if part("audit") {
        audit_reads::audit_read_benchmark();
    }
    if part("fleet-polls") {
        fleet_polls::fleet_poll_benchmark();
    }
    if part("fleet-checks") {
        fleet_checks::fleet_check_benchmark();
    }
}
