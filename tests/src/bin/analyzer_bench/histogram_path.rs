//! The latency histogram path, one check of one deployment, on the old 36-bucket layout,
//! the shipped 121-bucket one and Envoy's own bins (what the admin source reads): series,
//! answer sizes and parse costs of the admin and Prometheus answers, the delta step and the
//! latency comparison, with ratios against the old layout measured in the same run. Also
//! what a busy deployment's Envoy answers the admin source ([`detailed_json`]), which the
//! fleet benchmark's simulated Envoys serve.

use super::*;

/// The 36 bounds (µs) `LATENCY_BUCKETS_US` had before the 10 %-wide layout: the ratios'
/// baseline, measured in the same run.
const OLD_LATENCY_BUCKETS_US: [u64; 36] = [
    250, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000, 10_000, 12_500, 15_000, 17_500, 20_000,
    25_000, 30_000, 35_000, 40_000, 45_000, 50_000, 55_000, 60_000, 70_000, 80_000, 100_000, 150_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// The latency of the JSON and Prometheus answers: log-normal, median 20 ms, σ 0.5 (the service).
const LATENCY_MEDIAN_US: f64 = 20_000.0;
const LATENCY_SIGMA: f64 = 0.5;
/// The Prometheus answer's window evaluation time (unix s), as Prometheus prints it.
const EVALUATED_AT_S: f64 = 1_764_000_000.123;

/// Standard normal CDF (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: far below one request).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if z >= 0.0 { 1.0 - 0.5 * erfc } else { 0.5 * erfc }
}

/// Share of the latency distribution below `us`.
fn latency_cdf(us: f64) -> f64 {
    if us <= 0.0 { 0.0 } else { normal_cdf((us / LATENCY_MEDIAN_US).ln() / LATENCY_SIGMA) }
}

/// `total` observations spread over Envoy's bins: `(lower_bound, width, count)` of each non-empty bin.
fn envoy_bins(total: u64) -> Vec<(u64, u64, u64)> {
    let mut lower = 0u64;
    let mut bins = Vec::new();
    for &upper in envoy_bin_bounds_us() {
        let count = (total as f64 * (latency_cdf(upper as f64) - latency_cdf(lower as f64))).round() as u64;
        if count > 0 {
            bins.push((lower, upper - lower, count));
        }
        lower = upper;
    }
    bins
}

/// What Envoy answers the admin source at `round` (`/stats?format=json&histogram_buckets=detailed`
/// with the deployment's `filter`): the uptime, deployment `d`'s counters and gauges and
/// its four histograms' bins, cumulative like the exposition's.
pub(super) fn detailed_json(d: u32, round: u64) -> String {
    let deployment = deployment_name(d);
    let mut stats = vec![serde_json::json!({"name": "server.uptime", "value": 3_600 + 30 * round})];
    for name in ["applied_generation", "applied_share_bp", "config_age_ms"] {
        let name = format!("wasmcustom.canary.deployment.{deployment}.{name}");
        stats.push(serde_json::json!({"name": name, "value": 500}));
    }
    let mut details = Vec::new();
    for (cohort, rate) in cohort_rates(d) {
        for class in StatusClass::ALL {
            let name = format!("wasmcustom.{}", requests_stat(&deployment, cohort, class));
            stats.push(serde_json::json!({"name": name, "value": class_rate(rate, class) * (HISTORY + round)}));
        }
        let total: u64 =
            StatusClass::ALL.into_iter().map(|class| class_rate(rate, class)).sum::<u64>() * (HISTORY + round);
        let totals: Vec<serde_json::Value> = envoy_bins(total)
            .into_iter()
            .map(|(lower, width, count)| serde_json::json!({"lower_bound": lower, "width": width, "count": count}))
            .collect();
        details.push(serde_json::json!({
            "name": format!("wasmcustom.{}", latency_stat(&deployment, cohort)),
            "totals": totals,
            "intervals": [],
            "percentiles": [],
        }));
    }
    stats.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let supported = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];
    stats.push(serde_json::json!({"histograms": {"supported_percentiles": supported, "details": details}}));
    serde_json::json!({ "stats": stats }).to_string()
}

/// Prometheus' answer to [`latency_query`] over one check window on `bounds`: one sample per
/// cohort and bucket, the window's increase of a fleet's worth of requests (extrapolated: fractional).
fn prometheus_answer(bounds: &[u64]) -> String {
    let mut result = Vec::new();
    for (cohort, rate) in cohort_rates(WANTED) {
        let window_total = rate as f64 * 10.003;
        let les = bounds.iter().map(|b| (b.to_string(), latency_cdf(*b as f64))).chain([("+Inf".to_string(), 1.0)]);
        for (le, share) in les {
            let value = format!("{}", window_total * share);
            result.push(serde_json::json!({
                "metric": {"cohort": cohort.label(), "le": le},
                "value": [EVALUATED_AT_S, value],
            }));
        }
    }
    serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}}).to_string()
}

/// One layout's measurements (µs medians over [`REPETITIONS`], sizes in bytes).
struct LayoutCost {
    series_per_envoy: usize,
    answer_bytes: usize,
    parse: Duration,
    step: Duration,
    prometheus_bytes: Option<usize>,
    prometheus_parse: Option<Duration>,
    comparison: Duration,
}

/// The latency comparison on one interval's canary and control histograms: observe and rows.
fn comparison_time(canary: &LatencyHistogram, control: &LatencyHistogram) -> Duration {
    let fresh = LatencyComparison::new(canary.upper_bounds_us(), LatencySettings::with_tolerance_us(5_000.0))
        .expect("comparison");
    let mut warm = fresh.clone();
    for _ in 0..WARM_INTERVALS {
        warm.observe(canary, control).expect("observe");
    }
    Timing::of(
        (0..REPETITIONS)
            .map(|_| {
                timed(warm.clone(), |mut comparison| {
                    comparison.observe(canary, control).expect("observe");
                    comparison.rows(0.05, 1_000).expect("rows")
                })
            })
            .collect(),
    )
    .median
}

/// The exposition path on `bounds`: the whole `/stats/prometheus` of one Envoy, one deployment parsed.
fn exposition_cost(bounds: &[u64]) -> LayoutCost {
    let wanted = deployment_name(WANTED);
    let ((previous_text, _), (text, series)) = (exposition(0, bounds), exposition(1, bounds));
    let previous = parse_exposition(&previous_text, &wanted).expect("previous parses");
    let current = parse_exposition(&text, &wanted).expect("parses");
    let delta = target_delta(&previous, &current);
    let histogram =
        |cohort: Cohort| delta.cohorts.get(cohort).latency.as_ref().expect("histogram").to_histogram().expect("layout");
    let answer = prometheus_answer(bounds);
    let query = latency_query(&wanted, Duration::from_secs(60));
    let mut runs: [Vec<Duration>; 3] = Default::default();
    for _ in 0..REPETITIONS {
        runs[0].push(timed((), |()| parse_exposition(&text, &wanted).expect("parse")));
        runs[1].push(timed(tracker_after(&previous), |mut tracker| tracker.advance(scrape(&current))));
        runs[2].push(timed((), |()| parse_latency_answer("bench", &query, &answer).expect("prometheus answer")));
    }
    let [parse, step, prometheus_parse] = runs.map(|r| Timing::of(r).median);
    LayoutCost {
        series_per_envoy: series,
        answer_bytes: text.len(),
        parse,
        step,
        prometheus_bytes: Some(answer.len()),
        prometheus_parse: Some(prometheus_parse),
        comparison: comparison_time(&histogram(Cohort::Canary), &histogram(Cohort::Control)),
    }
}

/// The admin source's path: Envoy's JSON with its own bins, filtered to one deployment.
fn detailed_cost() -> LayoutCost {
    let wanted = deployment_name(WANTED);
    let (previous_text, text) = (detailed_json(WANTED, 0), detailed_json(WANTED, 1));
    let previous = parse_detailed_stats(&previous_text, &wanted).expect("previous parses");
    let current = parse_detailed_stats(&text, &wanted).expect("parses");
    let interval = tracker_after(&previous).advance(scrape(&current));
    let histogram = |cohort: Cohort| interval.latency(cohort).expect("histogram").clone();
    assert_eq!(histogram(Cohort::Canary).upper_bounds_us(), envoy_bin_bounds_us());
    let mut runs: [Vec<Duration>; 2] = Default::default();
    for _ in 0..REPETITIONS {
        runs[0].push(timed((), |()| parse_detailed_stats(&text, &wanted).expect("parse")));
        runs[1].push(timed(tracker_after(&previous), |mut tracker| tracker.advance(scrape(&current))));
    }
    let [parse, step] = runs.map(|r| Timing::of(r).median);
    LayoutCost {
        // Envoy keeps its bins whatever the layout; /stats/prometheus series are as configured.
        series_per_envoy: 0,
        answer_bytes: text.len(),
        parse,
        step,
        prometheus_bytes: None,
        prometheus_parse: None,
        comparison: comparison_time(&histogram(Cohort::Canary), &histogram(Cohort::Control)),
    }
}

/// What the histogram path costs on the old 36-bucket layout, the shipped 121-bucket one
/// and Envoy's own bins (the admin source), with ratios against the old layout.
pub(super) fn histogram_path_benchmark() {
    println!("\nlatency histogram path, one check of one deployment, {REPETITIONS} runs per figure (median):");
    let old = exposition_cost(&OLD_LATENCY_BUCKETS_US);
    let new = exposition_cost(&LATENCY_BUCKETS_US);
    let bins = detailed_cost();
    let bins_per_histogram = |round| {
        let json: serde_json::Value = serde_json::from_str(&detailed_json(WANTED, round)).expect("json");
        json["stats"]
            .as_array()
            .and_then(|s| s.last())
            .map_or(0, |h| h["histograms"]["details"][1]["totals"].as_array().map_or(0, Vec::len))
    };
    let ratio = |new: f64, old: f64| {
        let r = new / old;
        if r < 0.1 { format!("{r:.4}x") } else { format!("{r:.2}x") }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {:52} {:>14} {:>14} {:>7} {:>16} {:>7}",
        "", "old 36 buckets", "new 121", "ratio", "Envoy bins (JSON)", "ratio"
    );
    println!(
        "  {:52} {:>14} {:>14} {:>7} {:>16} {:>7}",
        "our series per deployment per Envoy",
        ours_per_deployment(OLD_LATENCY_BUCKETS_US.len()) + 3,
        ours_per_deployment(LATENCY_BUCKETS_US.len()) + 3,
        ratio(
            (ours_per_deployment(LATENCY_BUCKETS_US.len()) + 3) as f64,
            (ours_per_deployment(OLD_LATENCY_BUCKETS_US.len()) + 3) as f64
        ),
        format!("{} bins/hist.", bins_per_histogram(1)),
        "",
    );
    println!(
        "  {:52} {:>14} {:>14} {:>7} {:>16} {:>7}",
        format!("series in one Envoy's exposition ({DEPLOYMENTS} deployments)"),
        old.series_per_envoy,
        new.series_per_envoy,
        ratio(new.series_per_envoy as f64, old.series_per_envoy as f64),
        "-",
        "",
    );
    println!(
        "  {:52} {:>14} {:>14} {:>7} {:>16} {:>7}",
        "admin answer (JSON: filtered to the deployment)",
        format!("{:.2} MB", old.answer_bytes as f64 / 1e6),
        format!("{:.2} MB", new.answer_bytes as f64 / 1e6),
        ratio(new.answer_bytes as f64, old.answer_bytes as f64),
        format!("{:.1} KB", bins.answer_bytes as f64 / 1e3),
        ratio(bins.answer_bytes as f64, old.answer_bytes as f64),
    );
    let row = |name: &str, old: Duration, new: Duration, bins: Option<Duration>| {
        println!(
            "  {name:52} {:>11.3} ms {:>11.3} ms {:>7} {:>13} {:>7}",
            ms(old),
            ms(new),
            ratio(ms(new), ms(old)),
            bins.map_or("-".to_string(), |b| format!("{:.3} ms", ms(b))),
            bins.map_or(String::new(), |b| ratio(ms(b), ms(old))),
        );
    };
    row("admin parse, one deployment", old.parse, new.parse, Some(bins.parse));
    row("DeltaTracker step (2 snapshots -> interval)", old.step, new.step, Some(bins.step));
    if let (Some(old_bytes), Some(new_bytes)) = (old.prometheus_bytes, new.prometheus_bytes) {
        println!(
            "  {:52} {:>11.1} KB {:>11.1} KB {:>7}",
            "Prometheus latency answer (4 cohorts)",
            old_bytes as f64 / 1e3,
            new_bytes as f64 / 1e3,
            ratio(new_bytes as f64, old_bytes as f64)
        );
    }
    if let (Some(old_parse), Some(new_parse)) = (old.prometheus_parse, new.prometheus_parse) {
        row("Prometheus latency answer parse", old_parse, new_parse, None);
    }
    row("LatencyComparison observe + 4 rows (stats)", old.comparison, new.comparison, Some(bins.comparison));
}
