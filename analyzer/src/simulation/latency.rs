//! The latency half of the seeded simulation: whole rollouts with log-normal
//! latencies exported as histogram buckets, under every critical default metric
//! (error rate and p99), comparing the latency verdict of the report (tail
//! exceedances, pooled over the rollout) with the quantile-bound comparison it
//! replaced, each pooled or restarted per step.
//!
//! Traffic is the error simulation's: `total_requests_per_second` with a
//! sinusoidal load swing, a canary share walking the ladder with per-step and
//! per-interval drift, Poisson errors. Each cohort's latencies are a thinned
//! Poisson process, so its bucket counts are independent Poisson draws with mean
//! `requests × P(bucket)`: exact, and thousands of times cheaper than drawing
//! requests one by one. The histograms take either path the analyzer reads: the
//! Prometheus path (counts on `bounds_us`, the shipped `LATENCY_BUCKETS_US`) or the
//! Envoy-admin path (counts on Envoy's own bins, folded onto `bounds_us` by
//! [`crate::source::fold_onto`] as the engine folds them). The median may follow the load
//! (`load_sensitivity`), identically for both cohorts: the load-dependence case
//! that separates pooled histograms from per-interval comparisons.
//!
//! Every procedure rolls back at the first check where `error_rate` or
//! `latency_p99_us` would be a Worse row (p-value `<= alpha` and both cohorts
//! past `min_requests_per_cohort`, as the report gates them); the error-rate
//! test is the same for all, so differences come from the latency test alone.

use std::fmt;

use serde::{Deserialize, Serialize};
use statrs::function::erf::erfc;

use super::random::SeededRng;
use super::{CheckTraffic, TrafficShape, steps_with_a_window};
use crate::source::{envoy_bin_bounds_us, fold_onto};
use crate::stats::{
    CohortCounts, ErrorRateSettings, ErrorRateTest, IntervalCounts, LatencyComparison, LatencyHistogram,
    LatencySettings, QuantileTolerance, TailExceedanceSettings, TailExceedanceTest, Verdict,
};
use canary_core::metrics::LATENCY_BUCKETS_US;

/// What the canary's latency does, relative to control's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LatencyScenario {
    /// Identical latency and errors: every rollback is a false one.
    AA,
    /// Every canary latency multiplied by `factor` (1.3: p99 +30 %).
    Slower { factor: f64 },
    /// A `fraction` of canary requests take `added_us` longer; the median barely moves.
    TailOnly { fraction: f64, added_us: f64 },
    /// The canary's median multiplied by `factor` with its p99 unchanged (a narrower spread).
    MedianOnly { factor: f64 },
}

impl LatencyScenario {
    fn name(&self) -> String {
        match self {
            LatencyScenario::AA => "A/A".to_string(),
            LatencyScenario::Slower { factor } => format!("all {:+.0} %", 100.0 * (factor - 1.0)),
            LatencyScenario::TailOnly { fraction, added_us } => {
                format!("{:.0} % +{:.0} ms", 100.0 * fraction, added_us / 1_000.0)
            }
            LatencyScenario::MedianOnly { factor } => format!("p50 {:+.0} %", 100.0 * (factor - 1.0)),
        }
    }
}

/// Which path the histograms take to the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistogramPath {
    /// Counts on the layout Envoy exports to Prometheus (`bounds_us`).
    Prometheus,
    /// Counts on Envoy's own bins (the admin source's `histogram_buckets=detailed`),
    /// folded onto `bounds_us`: every bound is a bin edge, so the fold is exact and the
    /// folded counts are again independent Poisson with the same means.
    EnvoyAdmin,
}

/// How the latency verdict is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LatencyProcedure {
    /// The report's: tail exceedances, evidence pooled over the rollout.
    ExceedancePooled,
    /// Tail exceedances restarted at every step.
    ExceedancePerStep,
    /// `main` before this change: quantile bounds at bucket edges, restarted per step.
    QuantileBoundsPerStep,
    /// Quantile bounds on histograms pooled over the whole rollout.
    QuantileBoundsPooled,
}

impl LatencyProcedure {
    pub const ALL: [LatencyProcedure; 4] = [
        LatencyProcedure::ExceedancePooled,
        LatencyProcedure::ExceedancePerStep,
        LatencyProcedure::QuantileBoundsPerStep,
        LatencyProcedure::QuantileBoundsPooled,
    ];

    fn name(self) -> &'static str {
        match self {
            LatencyProcedure::ExceedancePooled => "tail exceedance, pooled (new)",
            LatencyProcedure::ExceedancePerStep => "tail exceedance, per step",
            LatencyProcedure::QuantileBoundsPerStep => "quantile bounds, per step (main)",
            LatencyProcedure::QuantileBoundsPooled => "quantile bounds, pooled",
        }
    }

    fn restarts_per_step(self) -> bool {
        matches!(self, LatencyProcedure::ExceedancePerStep | LatencyProcedure::QuantileBoundsPerStep)
    }
}

/// Everything a latency simulation depends on; the same config gives the same report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySimulationConfig {
    pub seed: u64,
    /// Rollouts per scenario.
    pub runs: u32,
    pub ladder_percent: Vec<f64>,
    /// Checks per step: the window divided by the check interval.
    pub checks_per_step: u32,
    pub check_interval_seconds: f64,
    pub total_requests_per_second: f64,
    pub load_swing: f64,
    pub load_period_seconds: f64,
    pub split_drift: f64,
    pub split_noise: f64,
    pub error_rate: f64,
    pub median_us: f64,
    /// Standard deviation of ln(latency).
    pub sigma: f64,
    /// The median follows load: `median × (1 + load_sensitivity × (load − 1))`.
    pub load_sensitivity: f64,
    /// The bucket upper bounds (µs) the statistics compare.
    pub bounds_us: Vec<u64>,
    pub path: HistogramPath,
    /// `latency_p99` critical, with this `max_increase_ms` (in µs).
    pub p99_tolerance_us: f64,
    /// `latency_p50`, reported (not critical), with this tolerance (µs).
    pub p50_tolerance_us: f64,
    pub min_requests_per_cohort: u64,
    pub alpha: f64,
    pub procedures: Vec<LatencyProcedure>,
    pub scenarios: Vec<LatencyScenario>,
}

/// Envoy's default histogram bounds (no `histogram_bucket_settings`) on the filter's
/// histogram of microseconds, as the sources read them (`le="0.5"` is 0 µs): 19 bounds,
/// 10 → 30 → 60 → 300 ms around a 20 ms service's p99.
pub const ENVOY_DEFAULT_BUCKETS_US: [u64; 19] = [
    0, 1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000,
    3_600_000,
];

/// Istio's `istio_request_duration_milliseconds`: Envoy's default bounds in milliseconds
/// (the sidecar sets no buckets unless `sidecar.istio.io/statsHistogramBuckets` does), in µs.
pub const ISTIO_DEFAULT_BUCKETS_US: [u64; 19] = [
    500,
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    600_000_000,
    1_800_000_000,
    3_600_000_000,
];

/// 5 % of requests +400 ms: past the 300 ms bound of Envoy's default buckets (control's
/// p99 band of the benchmark's service sits at their 60 ms bound) and the 250 ms one of
/// Istio's (control's at 100 ms), so a layout that coarse can see it.
pub const PAST_COARSE_EDGES: LatencyScenario = LatencyScenario::TailOnly { fraction: 0.05, added_us: 400_000.0 };

/// The scenarios: A/A, p99 +30 %, p99 +15 %, 5 % of requests +100 ms, p50 +20 %.
pub const TARGET_SCENARIOS: [LatencyScenario; 5] = [
    LatencyScenario::AA,
    LatencyScenario::Slower { factor: 1.3 },
    LatencyScenario::Slower { factor: 1.15 },
    LatencyScenario::TailOnly { fraction: 0.05, added_us: 100_000.0 },
    LatencyScenario::MedianOnly { factor: 1.2 },
];

impl LatencySimulationConfig {
    /// The benchmark: 500 rollouts per scenario (3 SE at 90 % is 4 points; the
    /// quantile-bound procedures make 1 000 take ~12 CPU-minutes), the issue's
    /// traffic and policy, the shipped buckets on the Prometheus path, every procedure.
    pub fn full(seed: u64) -> Self {
        LatencySimulationConfig {
            seed,
            runs: 500,
            ladder_percent: vec![1.0, 5.0, 25.0, 50.0, 100.0],
            // 15-minute windows of 1-minute checks.
            checks_per_step: 15,
            check_interval_seconds: 60.0,
            total_requests_per_second: 200.0,
            load_swing: 0.5,
            load_period_seconds: 1_800.0,
            split_drift: 0.1,
            split_noise: 0.05,
            error_rate: 0.005,
            // Median 20 ms, σ 0.5: p99 = 20 ms · e^(0.5 · 2.326) = 64 ms.
            median_us: 20_000.0,
            sigma: 0.5,
            load_sensitivity: 0.0,
            bounds_us: LATENCY_BUCKETS_US.to_vec(),
            path: HistogramPath::Prometheus,
            p99_tolerance_us: 5_000.0,
            // p50 +20 % is +4 ms; 2 ms of tolerance leaves it 2 ms beyond.
            p50_tolerance_us: 2_000.0,
            min_requests_per_cohort: 1_000,
            alpha: 0.05,
            procedures: LatencyProcedure::ALL.to_vec(),
            scenarios: TARGET_SCENARIOS.to_vec(),
        }
    }

    /// For `make test`: the new procedure only, 150 rollouts per scenario (a few
    /// seconds per scenario unoptimised).
    pub fn small(seed: u64) -> Self {
        LatencySimulationConfig {
            runs: 150,
            procedures: vec![LatencyProcedure::ExceedancePooled],
            ..LatencySimulationConfig::full(seed)
        }
    }

    /// The benchmark's traffic and policy on another bucket layout (Prometheus path),
    /// with the new verdict only: what the layout costs in power. Besides the issue's
    /// scenarios, [`PAST_COARSE_EDGES`]: a regression those layouts can see.
    pub fn on_layout(seed: u64, bounds_us: &[u64]) -> Self {
        let mut scenarios = TARGET_SCENARIOS.to_vec();
        scenarios.push(PAST_COARSE_EDGES);
        LatencySimulationConfig {
            bounds_us: bounds_us.to_vec(),
            procedures: vec![LatencyProcedure::ExceedancePooled],
            scenarios,
            ..LatencySimulationConfig::full(seed)
        }
    }

    /// The benchmark's runs, titled: the shipped buckets on the Prometheus path
    /// with every procedure; the admin path (Envoy's bins folded onto the same
    /// buckets) with the new and the old verdict; Envoy's and Istio's default buckets
    /// with the new verdict; and a median that follows load
    /// (±25 % at ±50 % load), where pooling histograms and pooling per-interval
    /// evidence part ways.
    pub fn benchmark(seed: u64) -> Vec<(String, LatencySimulationConfig)> {
        let shipped = format!("the shipped {} buckets", LATENCY_BUCKETS_US.len());
        vec![
            (format!("{shipped}, Prometheus path"), LatencySimulationConfig::full(seed)),
            (
                format!("Envoy's bins folded onto {shipped} (admin path)"),
                LatencySimulationConfig {
                    path: HistogramPath::EnvoyAdmin,
                    procedures: vec![LatencyProcedure::ExceedancePooled, LatencyProcedure::QuantileBoundsPerStep],
                    ..LatencySimulationConfig::full(seed)
                },
            ),
            (
                format!("Envoy's default {} buckets, Prometheus path", ENVOY_DEFAULT_BUCKETS_US.len()),
                LatencySimulationConfig::on_layout(seed, &ENVOY_DEFAULT_BUCKETS_US),
            ),
            (
                format!("Istio's default {} millisecond buckets, Prometheus path", ISTIO_DEFAULT_BUCKETS_US.len()),
                LatencySimulationConfig::on_layout(seed, &ISTIO_DEFAULT_BUCKETS_US),
            ),
            (
                format!("median ×(1 + {LOAD_SENSITIVITY} × (load − 1)), {shipped}"),
                LatencySimulationConfig {
                    load_sensitivity: LOAD_SENSITIVITY,
                    scenarios: vec![LatencyScenario::AA, LatencyScenario::Slower { factor: 1.15 }],
                    ..LatencySimulationConfig::full(seed)
                },
            ),
        ]
    }

    fn observed_steps(&self) -> Vec<f64> {
        steps_with_a_window(&self.ladder_percent)
    }

    fn traffic(&self) -> TrafficShape {
        TrafficShape {
            check_interval_seconds: self.check_interval_seconds,
            total_requests_per_second: self.total_requests_per_second,
            load_swing: self.load_swing,
            load_period_seconds: self.load_period_seconds,
            split_noise: self.split_noise,
        }
    }
}

/// The load-dependence case: the median moves by half the load's swing (±25 % at ±50 % load).
const LOAD_SENSITIVITY: f64 = 0.5;

/// What one procedure did in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyOutcome {
    pub scenario: LatencyScenario,
    pub procedure: LatencyProcedure,
    /// Fraction of rollouts rolled back before the 25 % step (during 1 % or 5 %).
    pub before_25_percent: f64,
    /// Fraction rolled back before 100 % (at all: reaching 100 % is promotion).
    pub before_100_percent: f64,
    /// Fraction whose `latency_p50_us` row read Worse at some check.
    pub p50_reported_worse: f64,
    /// Fraction rolled back with `latency_p99_us` Worse at the rollback's check
    /// (the rest were the error rate's alone).
    pub latency_rollbacks: f64,
    /// Median check (1-based) of the rollbacks.
    pub median_rollback_check: Option<f64>,
    pub runs: u32,
}

impl LatencyOutcome {
    /// Monte Carlo standard error of a fraction over the runs.
    pub fn standard_error(&self, fraction: f64) -> f64 {
        (fraction * (1.0 - fraction) / f64::from(self.runs.max(1))).sqrt()
    }
}

/// The measured outcome, printable as a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySimulationReport {
    pub config: LatencySimulationConfig,
    pub outcomes: Vec<LatencyOutcome>,
}

impl LatencySimulationReport {
    pub fn outcome(&self, scenario: LatencyScenario, procedure: LatencyProcedure) -> Option<&LatencyOutcome> {
        self.outcomes.iter().find(|o| o.scenario == scenario && o.procedure == procedure)
    }
}

/// One procedure's latency tests within a rollout.
enum LatencyTests {
    Exceedance { p99: TailExceedanceTest, p50: Option<TailExceedanceTest> },
    QuantileBounds(LatencyComparison),
}

impl LatencyTests {
    fn new(config: &LatencySimulationConfig, procedure: LatencyProcedure, with_p50: bool) -> Option<Self> {
        match procedure {
            LatencyProcedure::ExceedancePooled | LatencyProcedure::ExceedancePerStep => {
                let test = |q, t| TailExceedanceTest::new(TailExceedanceSettings::verdict_only(q, t)).ok();
                Some(LatencyTests::Exceedance {
                    p99: test(0.99, config.p99_tolerance_us)?,
                    p50: if with_p50 { Some(test(0.5, config.p50_tolerance_us)?) } else { None },
                })
            }
            LatencyProcedure::QuantileBoundsPerStep | LatencyProcedure::QuantileBoundsPooled => {
                let mut quantiles = vec![QuantileTolerance { quantile: 0.99, tolerance_us: config.p99_tolerance_us }];
                if with_p50 {
                    quantiles.push(QuantileTolerance { quantile: 0.5, tolerance_us: config.p50_tolerance_us });
                }
                let settings = LatencySettings { quantiles, ..LatencySettings::with_tolerance_us(0.0) };
                LatencyComparison::new(&config.bounds_us, settings).ok().map(LatencyTests::QuantileBounds)
            }
        }
    }

    fn observe(&mut self, canary: &LatencyHistogram, control: &LatencyHistogram) {
        // Same bounds by construction: an error cannot happen, and would only skip the interval.
        let _ = match self {
            LatencyTests::Exceedance { p99, p50 } => {
                if let Some(p50) = p50 {
                    let _ = p50.observe(canary, control);
                }
                p99.observe(canary, control)
            }
            LatencyTests::QuantileBounds(comparison) => comparison.observe(canary, control),
        };
    }

    /// (p99 worse, p50 worse) as the report's rows would read them.
    fn worse(&self, alpha: f64, min_samples: u64) -> (bool, bool) {
        match self {
            LatencyTests::Exceedance { p99, p50 } => {
                let worse = |t: &TailExceedanceTest| {
                    let (canary, control) = t.observations();
                    t.p_worse() <= alpha && canary >= min_samples && control >= min_samples
                };
                (worse(p99), p50.as_ref().is_some_and(worse))
            }
            LatencyTests::QuantileBounds(comparison) => {
                let rows = comparison.rows(alpha, min_samples).unwrap_or_default();
                let worse = |metric: &str| rows.iter().any(|r| r.metric == metric && r.verdict == Verdict::Worse);
                (worse("latency_p99_us"), worse("latency_p50_us"))
            }
        }
    }
}

/// The latency CDF of one cohort in one interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LatencyModel {
    median_us: f64,
    sigma: f64,
    /// Fraction of requests delayed by `added_us`.
    delayed_fraction: f64,
    added_us: f64,
}

impl LatencyModel {
    /// Log-normal latency with median `median_us` and log-sd `sigma`.
    pub(crate) fn log_normal(median_us: f64, sigma: f64) -> Self {
        LatencyModel { median_us, sigma, delayed_fraction: 0.0, added_us: 0.0 }
    }

    fn cdf(&self, x: f64) -> f64 {
        let log_normal = |x: f64| {
            if x <= 0.0 {
                0.0
            } else {
                0.5 * erfc(-(x / self.median_us).ln() / (self.sigma * std::f64::consts::SQRT_2))
            }
        };
        (1.0 - self.delayed_fraction) * log_normal(x) + self.delayed_fraction * log_normal(x - self.added_us)
    }
}

/// z of the 99th percentile of a standard normal: a p99 unchanged by a median shift
/// needs `σ' = σ + ln(1/factor) / z99`.
const Z_99: f64 = 2.326_347_874;

fn canary_model(config: &LatencySimulationConfig, scenario: LatencyScenario, control: LatencyModel) -> LatencyModel {
    match scenario {
        LatencyScenario::AA => control,
        LatencyScenario::Slower { factor } => LatencyModel { median_us: control.median_us * factor, ..control },
        LatencyScenario::TailOnly { fraction, added_us } => {
            LatencyModel { delayed_fraction: fraction, added_us, ..control }
        }
        LatencyScenario::MedianOnly { factor } => LatencyModel {
            median_us: control.median_us * factor,
            sigma: (config.sigma - factor.ln() / Z_99).max(f64::EPSILON),
            ..control
        },
    }
}

/// One interval's histogram on `config.bounds_us` by `config.path`; `None` only for
/// a layout no histogram can have (empty, not ascending, or not on Envoy's bin edges).
fn draw_on_path(
    rng: &mut SeededRng,
    config: &LatencySimulationConfig,
    expected: f64,
    model: LatencyModel,
) -> Option<LatencyHistogram> {
    match config.path {
        HistogramPath::Prometheus => draw_histogram(rng, &config.bounds_us, expected, model),
        HistogramPath::EnvoyAdmin => {
            let bins = draw_histogram(rng, envoy_bin_bounds_us(), expected, model)?;
            fold_onto(&bins, &config.bounds_us).ok()
        }
    }
}

/// Bucket counts of `expected` requests under `model`: independent Poisson per bucket.
/// `None` only for a layout no histogram can have (empty or not ascending).
pub(crate) fn draw_histogram(
    rng: &mut SeededRng,
    bounds: &[u64],
    expected: f64,
    model: LatencyModel,
) -> Option<LatencyHistogram> {
    let mut previous = 0.0;
    let mut counts: Vec<u64> = bounds
        .iter()
        .map(|bound| {
            let next = model.cdf(*bound as f64);
            let count = rng.poisson(expected * (next - previous).max(0.0));
            previous = next;
            count
        })
        .collect();
    counts.push(rng.poisson(expected * (1.0 - previous).max(0.0)));
    LatencyHistogram::from_bucket_counts(bounds, &counts).ok()
}

/// What one procedure did in one rollout.
#[derive(Debug, Clone, Copy, Default)]
struct RolloutOutcome {
    /// The check (0-based) of the rollback, if any.
    rollback_check: Option<u32>,
    /// The rollback's check had `latency_p99_us` Worse (alone or with `error_rate`).
    latency_alarm: bool,
    /// `latency_p50_us` read Worse at some check.
    p50_worse: bool,
}

/// Per procedure, what it did in one rollout.
fn simulate_rollout(
    config: &LatencySimulationConfig,
    scenario: LatencyScenario,
    rng: &mut SeededRng,
) -> Vec<RolloutOutcome> {
    let with_p50 = matches!(scenario, LatencyScenario::MedianOnly { .. });
    let mut tests: Vec<Option<LatencyTests>> =
        config.procedures.iter().map(|p| LatencyTests::new(config, *p, with_p50)).collect();
    let mut outcomes = vec![RolloutOutcome::default(); config.procedures.len()];
    let mut errors = ErrorRateTest::new(ErrorRateSettings::default()).ok();
    let traffic = config.traffic();
    let load_phase = std::f64::consts::TAU * rng.uniform();
    let mut check = 0u32;
    for share_percent in config.observed_steps() {
        let step_drift = config.split_drift * rng.standard_normal();
        if check > 0 {
            for (test, procedure) in tests.iter_mut().zip(&config.procedures) {
                if procedure.restarts_per_step() {
                    *test = LatencyTests::new(config, *procedure, with_p50);
                }
            }
        }
        for _ in 0..config.checks_per_step {
            let CheckTraffic { load, requests, share, .. } =
                traffic.check(check, load_phase, share_percent, step_drift, rng);
            // A floor of 5 % of the median keeps an extreme sensitivity from reaching zero.
            let load_factor = (1.0 + config.load_sensitivity * (load - 1.0)).max(0.05);
            let control_model = LatencyModel::log_normal(config.median_us * load_factor, config.sigma);
            let canary_model = canary_model(config, scenario, control_model);
            let canary = draw_on_path(rng, config, requests * share, canary_model);
            let control = draw_on_path(rng, config, requests * (1.0 - share), control_model);
            let (Some(canary), Some(control)) = (canary, control) else { return outcomes };
            let interval = IntervalCounts {
                canary: draw_errors(rng, canary.total(), config.error_rate),
                control: draw_errors(rng, control.total(), config.error_rate),
            };
            let errors_worse = errors.as_mut().is_some_and(|test| {
                let enough = |c: CohortCounts| c.requests >= config.min_requests_per_cohort;
                test.observe(interval).is_ok()
                    && test.p_worse() <= config.alpha
                    && enough(test.canary_totals())
                    && enough(test.control_totals())
            });
            for (test, outcome) in tests.iter_mut().zip(outcomes.iter_mut()) {
                let Some(test) = test else { continue };
                if outcome.rollback_check.is_some() {
                    continue;
                }
                test.observe(&canary, &control);
                let (p99_worse, p50_worse) = test.worse(config.alpha, config.min_requests_per_cohort);
                outcome.p50_worse |= p50_worse;
                if p99_worse || errors_worse {
                    outcome.rollback_check = Some(check);
                    outcome.latency_alarm = p99_worse;
                }
            }
            check += 1;
        }
    }
    outcomes
}

/// Errors among `requests`: Poisson with the rate's mean, at most the requests.
fn draw_errors(rng: &mut SeededRng, requests: u64, rate: f64) -> CohortCounts {
    CohortCounts { requests, errors: rng.poisson(requests as f64 * rate).min(requests) }
}

/// Runs every scenario of `config` with every procedure, on the same draws.
pub fn run(config: &LatencySimulationConfig) -> LatencySimulationReport {
    let before_25 = config.ladder_percent.iter().take_while(|share| **share < 25.0).count() as u32;
    let checks_before_25 = before_25.saturating_mul(config.checks_per_step);
    let mut outcomes = Vec::new();
    for (scenario_index, scenario) in config.scenarios.iter().enumerate() {
        let procedures = config.procedures.len();
        let mut early = vec![0u32; procedures];
        let mut rolled_back: Vec<Vec<u32>> = vec![Vec::new(); procedures];
        let mut p50_worse = vec![0u32; procedures];
        let mut latency_alarms = vec![0u32; procedures];
        for run in 0..config.runs {
            let stream = u64::from(run) * 64 + scenario_index as u64;
            let mut rng = SeededRng::stream(config.seed, stream);
            for (i, outcome) in simulate_rollout(config, *scenario, &mut rng).into_iter().enumerate() {
                if let (Some(check), Some(list)) = (outcome.rollback_check, rolled_back.get_mut(i)) {
                    list.push(check + 1);
                    if let (true, Some(count)) = (check < checks_before_25, early.get_mut(i)) {
                        *count += 1;
                    }
                }
                if let (true, Some(count)) = (outcome.p50_worse, p50_worse.get_mut(i)) {
                    *count += 1;
                }
                if let (true, Some(count)) = (outcome.latency_alarm, latency_alarms.get_mut(i)) {
                    *count += 1;
                }
            }
        }
        let runs = f64::from(config.runs.max(1));
        for (i, procedure) in config.procedures.iter().enumerate() {
            let mut checks = rolled_back.get(i).cloned().unwrap_or_default();
            outcomes.push(LatencyOutcome {
                scenario: *scenario,
                procedure: *procedure,
                before_25_percent: f64::from(early.get(i).copied().unwrap_or(0)) / runs,
                before_100_percent: checks.len() as f64 / runs,
                p50_reported_worse: f64::from(p50_worse.get(i).copied().unwrap_or(0)) / runs,
                latency_rollbacks: f64::from(latency_alarms.get(i).copied().unwrap_or(0)) / runs,
                median_rollback_check: super::median(&mut checks),
                runs: config.runs,
            });
        }
    }
    LatencySimulationReport { config: config.clone(), outcomes }
}

impl fmt::Display for LatencySimulationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "{} rollouts per scenario, seed {}; ladder {:?} %, {} checks of {} s per step, {} rps ±{:.0} %; \
             log-normal median {:.0} ms σ {} (median ×(1 {:+} × (load − 1))); {} buckets, {:?} path; {:.2} % errors",
            c.runs,
            c.seed,
            c.ladder_percent,
            c.checks_per_step,
            c.check_interval_seconds,
            c.total_requests_per_second,
            100.0 * c.load_swing,
            c.median_us / 1_000.0,
            c.sigma,
            c.load_sensitivity,
            c.bounds_us.len(),
            c.path,
            100.0 * c.error_rate
        )?;
        writeln!(
            f,
            "critical: error_rate, latency_p99 (+{} ms); latency_p50 (+{} ms) reported; alpha {}, min {} requests per cohort",
            c.p99_tolerance_us / 1_000.0,
            c.p50_tolerance_us / 1_000.0,
            c.alpha,
            c.min_requests_per_cohort
        )?;
        writeln!(
            f,
            "{:<12} {:<34} {:>16} {:>16} {:>16} {:>10} {:>10}",
            "scenario", "latency procedure", "rolled back <25%", "rolled back", "by latency", "p50 worse", "median chk"
        )?;
        for o in &self.outcomes {
            let percent = |x: f64| format!("{:.1} ± {:.1} %", 100.0 * x, 100.0 * o.standard_error(x));
            let median = o.median_rollback_check.map_or("-".to_string(), |m| format!("{m}"));
            let p50 = if matches!(o.scenario, LatencyScenario::MedianOnly { .. }) {
                format!("{:.1} %", 100.0 * o.p50_reported_worse)
            } else {
                "-".to_string()
            };
            writeln!(
                f,
                "{:<12} {:<34} {:>16} {:>16} {:>16} {:>10} {:>10}",
                o.scenario.name(),
                o.procedure.name(),
                percent(o.before_25_percent),
                percent(o.before_100_percent),
                percent(o.latency_rollbacks),
                p50,
                median
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn the_median_only_scenario_keeps_the_p99() {
        let config = LatencySimulationConfig::full(1);
        let control = LatencyModel { median_us: 20_000.0, sigma: 0.5, delayed_fraction: 0.0, added_us: 0.0 };
        let canary = canary_model(&config, LatencyScenario::MedianOnly { factor: 1.2 }, control);
        let p99 = 20_000.0 * (0.5 * Z_99).exp();
        assert!((canary.cdf(p99) - 0.99).abs() < 1e-6, "{}", canary.cdf(p99));
        assert!((canary.cdf(24_000.0) - 0.5).abs() < 1e-9);
        assert!((control.cdf(p99) - 0.99).abs() < 1e-6);
    }

    /// The targets, property-style: each within 3 standard errors.
    fn assert_targets(report: &LatencySimulationReport) {
        let outcome = |s| report.outcome(s, LatencyProcedure::ExceedancePooled).unwrap().clone();
        let at_least = |o: &LatencyOutcome, x: f64, target: f64| x + 3.0 * o.standard_error(target) >= target;
        let aa = outcome(LatencyScenario::AA);
        let alpha = report.config.alpha;
        assert!(aa.before_100_percent <= alpha + 3.0 * aa.standard_error(alpha), "{report}");
        assert!(aa.latency_rollbacks <= alpha + 3.0 * aa.standard_error(alpha), "{report}");
        let [_, slower_30, slower_15, tail, median] = TARGET_SCENARIOS;
        let o = outcome(slower_30);
        assert!(at_least(&o, o.before_25_percent, 0.9), "{report}");
        let o = outcome(slower_15);
        assert!(at_least(&o, o.before_100_percent, 0.9), "{report}");
        let o = outcome(tail);
        assert!(at_least(&o, o.before_25_percent, 0.9), "{report}");
        let o = outcome(median);
        assert!(at_least(&o, o.p50_reported_worse, 0.9), "{report}");
    }

    /// `make test`'s run of the latency targets on the shipped buckets, Prometheus path.
    #[test]
    fn latency_targets_hold_on_the_shipped_buckets() {
        let report = run(&LatencySimulationConfig::small(2024));
        println!("{report}");
        assert_eq!(report.config.bounds_us, LATENCY_BUCKETS_US);
        assert_targets(&report);
    }

    /// The guarantees do not depend on the layout: on Envoy's and Istio's default buckets
    /// A/A rollouts are rolled back by latency at most `α` of the time (within 3 SE), and a
    /// regression that crosses their edges ([`PAST_COARSE_EDGES`]) is still caught.
    #[test]
    fn a_a_stays_valid_and_a_regression_past_the_edges_is_caught_on_coarse_default_buckets() {
        for bounds in [&ENVOY_DEFAULT_BUCKETS_US[..], &ISTIO_DEFAULT_BUCKETS_US[..]] {
            let tail = PAST_COARSE_EDGES;
            let config = LatencySimulationConfig {
                runs: 100,
                scenarios: vec![LatencyScenario::AA, tail],
                ..LatencySimulationConfig::on_layout(2024, bounds)
            };
            let report = run(&config);
            println!("{report}");
            let outcome = |s| report.outcome(s, LatencyProcedure::ExceedancePooled).unwrap().clone();
            let (aa, alpha) = (outcome(LatencyScenario::AA), config.alpha);
            assert!(aa.latency_rollbacks <= alpha + 3.0 * aa.standard_error(alpha), "{report}");
            let caught = outcome(tail);
            assert!(caught.before_100_percent + 3.0 * caught.standard_error(0.9) >= 0.9, "{report}");
        }
    }

    /// Envoy's and Istio's default buckets at the benchmark's size, the new verdict only
    /// (docs/statistics.md, "Bucket layouts"); minutes unoptimised:
    /// `cargo test -p canary-analyzer -- --ignored --nocapture coarse_layouts_full_size`.
    #[test]
    #[ignore = "benchmark size"]
    fn coarse_layouts_full_size_report() {
        for (title, config) in LatencySimulationConfig::benchmark(2024) {
            if config.bounds_us == ENVOY_DEFAULT_BUCKETS_US || config.bounds_us == ISTIO_DEFAULT_BUCKETS_US {
                let start = std::time::Instant::now();
                println!("{title}:\n{}({:.1} s)\n", run(&config), start.elapsed().as_secs_f64());
            }
        }
    }

    /// The admin path is the Prometheus path in distribution: every shipped bucket is a
    /// union of Envoy's bins, so its folded count is a sum of independent Poisson counts
    /// whose means add up to the bucket's own mean. (Drawing all 641 bins makes the
    /// full run 9× slower unoptimised: `make bench` runs it, `make test` checks this.)
    #[test]
    fn envoys_bins_fold_onto_the_shipped_buckets_with_the_buckets_own_means() {
        let model = LatencyModel::log_normal(20_000.0, 0.5);
        let ones = |bounds: &[u64]| LatencyHistogram::from_bucket_counts(bounds, &vec![1; bounds.len() + 1]).unwrap();
        // Which shipped bucket each of Envoy's bins lands in, by the engine's own fold.
        let bins = envoy_bin_bounds_us();
        let mut expected = vec![0.0; LATENCY_BUCKETS_US.len() + 1];
        let mut previous = 0.0;
        for (index, bound) in bins.iter().map(Some).chain([None]).enumerate() {
            let next = bound.map_or(1.0, |b| model.cdf(*b as f64));
            let mut single = vec![0u64; bins.len() + 1];
            single[index] = 1;
            let bin = LatencyHistogram::from_bucket_counts(bins, &single).unwrap();
            let folded = fold_onto(&bin, &LATENCY_BUCKETS_US).unwrap();
            let bucket = folded.bucket_counts().iter().position(|c| *c == 1).unwrap();
            expected[bucket] += next - previous;
            previous = next;
        }
        let mut previous = 0.0;
        for (bucket, bound) in LATENCY_BUCKETS_US.iter().map(Some).chain([None]).enumerate() {
            let next = bound.map_or(1.0, |b| model.cdf(*b as f64));
            assert!((expected[bucket] - (next - previous)).abs() < 1e-12, "bucket {bucket}");
            previous = next;
        }
        assert_eq!(fold_onto(&ones(bins), &LATENCY_BUCKETS_US).unwrap().total(), bins.len() as u64 + 1);
    }

    /// The benchmark at full size; run with
    /// `cargo test --release -p canary-analyzer -- --ignored --nocapture latency_full_size`
    /// (`LATENCY_SIMULATION_RUNS=200` for fewer rollouts per scenario on a busy machine).
    #[test]
    #[ignore = "benchmark size: minutes even optimised"]
    fn latency_full_size_report() {
        let runs = std::env::var("LATENCY_SIMULATION_RUNS").ok().and_then(|r| r.parse().ok());
        for (title, mut config) in LatencySimulationConfig::benchmark(2024) {
            config.runs = runs.unwrap_or(config.runs);
            let start = std::time::Instant::now();
            println!("{title}:\n{}({:.1} s)\n", run(&config), start.elapsed().as_secs_f64());
        }
    }
}
