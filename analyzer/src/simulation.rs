//! A seeded simulation of whole rollouts that measures what the statistics buy:
//! how often each rollback procedure rolls back a good release (A/A traffic) and
//! how fast it catches a bad one, all checking at the same times on the same data.
//!
//! Traffic: `total_requests_per_second` with a sinusoidal load swing, split by a
//! canary share that walks the ladder; the *realised* share drifts from the
//! nominal one per step (heavy users landing in the canary slice) and per
//! interval. Errors are Poisson counting processes (requests are the sum of
//! independent Poisson errors and successes), with a base rate that may swing
//! over time for both cohorts alike (`error_rate_swing`). A regression raises the canary's rate from
//! the step `regression_step` on. The 100 % step has no control traffic left
//! to compare with, so observation windows cover the steps below 100 %;
//! reaching 100 % is promotion.
//!
//! Procedures, each rolling back at the first check where it fires:
//! - ours: [`ErrorRateTest`] "canary worse" p-value <= alpha;
//! - a fixed-horizon test peeked at every check (as Kayenta-style tests are
//!   when a pipeline re-runs them every interval): the exact one-sided
//!   conditional binomial test at alpha on the counts since the start of the
//!   rollout (given all errors, is the canary's part too large for its share of
//!   requests?). It is exact at any *single* look, so the inflation it shows
//!   comes from peeking alone, not from a normal approximation at small counts;
//! - the same test looked at once, at the end: the fixed horizon it was designed
//!   for, shown as the control experiment;
//! - a Flagger-style threshold rule: canary error rate over the last interval
//!   above control's plus `threshold_margin`, on `threshold_consecutive` checks in a row.

pub mod latency;
pub mod random;

/// Outcome metrics (event rates) in the same traffic: validity for common events and power.
pub mod outcome;

use std::fmt;

use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, DiscreteCDF};

use crate::stats::{CohortCounts, ErrorRateSettings, ErrorRateTest, IntervalCounts};
use random::SeededRng;

/// Everything a simulation run depends on; the same config gives the same report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulationConfig {
    pub seed: u64,
    /// Rollouts per scenario (A/A and regression).
    pub runs: u32,
    /// Canary share of each ladder step, in percent.
    pub ladder_percent: Vec<f64>,
    pub checks_per_step: u32,
    pub check_interval_seconds: f64,
    pub total_requests_per_second: f64,
    /// Relative amplitude of the load's sinusoidal swing (0.5 = ±50 %).
    pub load_swing: f64,
    pub load_period_seconds: f64,
    /// Standard deviation of `ln(realised / nominal share)`, drawn once per step.
    pub split_drift: f64,
    /// Standard deviation of `ln(realised / nominal share)`, drawn every interval.
    pub split_noise: f64,
    pub baseline_error_rate: f64,
    /// Relative amplitude of the error rate's swing, shared by both cohorts.
    pub error_rate_swing: f64,
    pub error_rate_period_seconds: f64,
    /// The canary's error rate (before the swing) once the regression is in.
    pub regressed_error_rate: f64,
    /// Index in `ladder_percent` of the step at which the regression appears.
    pub regression_step: u32,
    pub alpha: f64,
    /// Flagger-style rule: how far above control's rate the canary's may be.
    pub threshold_margin: f64,
    /// Flagger-style rule: failing checks in a row before a rollback.
    pub threshold_consecutive: u32,
}

impl SimulationConfig {
    /// The benchmark configuration: 2 000 rollouts per scenario.
    pub fn full(seed: u64) -> Self {
        SimulationConfig {
            seed,
            runs: 2_000,
            ladder_percent: vec![1.0, 5.0, 25.0, 50.0, 100.0],
            checks_per_step: 10,
            check_interval_seconds: 60.0,
            total_requests_per_second: 200.0,
            load_swing: 0.5,
            load_period_seconds: 1_800.0,
            split_drift: 0.1,
            split_noise: 0.05,
            baseline_error_rate: 0.005,
            // No common swing by default, so the fixed-horizon test is exact at one
            // look and the table isolates the cost of peeking; see `docs/statistics.md`
            // for what a shared swing does to pooled tests.
            error_rate_swing: 0.0,
            error_rate_period_seconds: 1_200.0,
            regressed_error_rate: 0.01,
            regression_step: 1,
            alpha: 0.05,
            threshold_margin: 0.01,
            threshold_consecutive: 2,
        }
    }

    /// A configuration small enough for a unit test (a few seconds unoptimised).
    pub fn small(seed: u64) -> Self {
        SimulationConfig { runs: 300, ..SimulationConfig::full(seed) }
    }
}

/// What one procedure did over all runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcedureOutcome {
    pub name: String,
    /// Fraction of A/A rollouts rolled back.
    pub false_rollback_rate: f64,
    /// Monte Carlo standard error of that fraction.
    pub false_rollback_standard_error: f64,
    /// Fraction of regression rollouts rolled back at or after the regression appeared.
    pub detection_rate: f64,
    /// Fraction of regression rollouts rolled back *before* it appeared.
    pub early_rollback_rate: f64,
    /// Median checks from the regression's first interval to the rollback, counting that interval.
    pub median_detection_checks: Option<f64>,
    pub median_detection_seconds: Option<f64>,
}

/// The measured outcome of a simulation, printable as a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulationReport {
    pub config: SimulationConfig,
    pub checks_per_rollout: u32,
    pub procedures: Vec<ProcedureOutcome>,
}

/// A rule that watches a rollout check by check and may call for a rollback.
trait RollbackProcedure {
    /// Sees check number `check` (0-based) and says whether to roll back now.
    fn rolls_back(&mut self, check: u32, interval: IntervalCounts) -> bool;
}

struct AnytimeValid {
    test: Option<ErrorRateTest>,
    alpha: f64,
}

impl RollbackProcedure for AnytimeValid {
    fn rolls_back(&mut self, _check: u32, interval: IntervalCounts) -> bool {
        match &mut self.test {
            Some(test) => test.observe(interval).is_ok() && test.p_worse() <= self.alpha,
            None => false,
        }
    }
}

struct FixedHorizonTest {
    canary: CohortCounts,
    control: CohortCounts,
    alpha: f64,
    /// `None`: look at every check (peeking); `Some(n)`: look only at check `n`.
    only_at_check: Option<u32>,
}

impl RollbackProcedure for FixedHorizonTest {
    fn rolls_back(&mut self, check: u32, interval: IntervalCounts) -> bool {
        add_counts(&mut self.canary, interval.canary);
        add_counts(&mut self.control, interval.control);
        let looks = self.only_at_check.is_none_or(|only| only == check);
        looks && conditional_binomial_p_value(self.canary, self.control) <= self.alpha
    }
}

/// One-sided exact test of "the canary's error rate is higher": given all
/// `m` errors, the canary's `x` is Binomial(m, canary share of requests) under
/// equal rates; the p-value is `P(X >= x)`. 1 without data.
fn conditional_binomial_p_value(canary: CohortCounts, control: CohortCounts) -> f64 {
    let requests = canary.requests + control.requests;
    let errors = canary.errors + control.errors;
    if canary.requests == 0 || control.requests == 0 || canary.errors == 0 {
        return 1.0;
    }
    let share = canary.requests as f64 / requests as f64;
    // P(X >= x) = P(X > x − 1), statrs' survival function.
    Binomial::new(share, errors).map_or(1.0, |binomial| binomial.sf(canary.errors - 1))
}

struct ThresholdRule {
    margin: f64,
    consecutive: u32,
    streak: u32,
}

impl RollbackProcedure for ThresholdRule {
    fn rolls_back(&mut self, _check: u32, interval: IntervalCounts) -> bool {
        let rate = |c: CohortCounts| (c.requests > 0).then(|| c.errors as f64 / c.requests as f64);
        let failing = match (rate(interval.canary), rate(interval.control)) {
            (Some(canary), Some(control)) => canary > control + self.margin,
            _ => false,
        };
        self.streak = if failing { self.streak + 1 } else { 0 };
        self.streak >= self.consecutive
    }
}

fn add_counts(total: &mut CohortCounts, interval: CohortCounts) {
    total.requests += interval.requests;
    total.errors += interval.errors;
}

/// How many procedures are compared.
const PROCEDURES: usize = 4;

const PROCEDURE_NAMES: [&str; PROCEDURES] = [
    "anytime-valid (ours)",
    "fixed-horizon, peeking",
    "fixed-horizon, one look at end",
    "threshold rule (Flagger-style)",
];

fn procedures(config: &SimulationConfig) -> [Box<dyn RollbackProcedure>; PROCEDURES] {
    let fixed_horizon = |only_at_check| FixedHorizonTest {
        canary: CohortCounts::default(),
        control: CohortCounts::default(),
        alpha: config.alpha,
        only_at_check,
    };
    let last_check = checks_per_rollout(config).saturating_sub(1);
    [
        Box::new(AnytimeValid { test: ErrorRateTest::new(ErrorRateSettings::default()).ok(), alpha: config.alpha }),
        Box::new(fixed_horizon(None)),
        Box::new(fixed_horizon(Some(last_check))),
        Box::new(ThresholdRule {
            margin: config.threshold_margin,
            consecutive: config.threshold_consecutive,
            streak: 0,
        }),
    ]
}

fn checks_per_rollout(config: &SimulationConfig) -> u32 {
    (observed_steps(config).len() as u32).saturating_mul(config.checks_per_step)
}

/// Steps with an observation window: every share below 100 %.
fn observed_steps(config: &SimulationConfig) -> Vec<f64> {
    steps_with_a_window(&config.ladder_percent)
}

/// The shares of a ladder that have an observation window: every one below 100 %.
pub(crate) fn steps_with_a_window(ladder_percent: &[f64]) -> Vec<f64> {
    ladder_percent.iter().copied().filter(|share| *share < 100.0).collect()
}

/// How traffic arrives in every simulation: the load swings as a sinusoid around
/// its mean, and the canary's realised share scatters around the nominal one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrafficShape {
    pub check_interval_seconds: f64,
    pub total_requests_per_second: f64,
    /// Relative amplitude of the load's swing (0.5 = ±50 %).
    pub load_swing: f64,
    pub load_period_seconds: f64,
    /// Standard deviation of `ln(realised / nominal share)`, drawn every interval.
    pub split_noise: f64,
}

/// What one simulated check brings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckTraffic {
    /// Seconds since the rollout began.
    pub seconds: f64,
    /// Load relative to the mean.
    pub load: f64,
    /// Expected requests in the interval, both cohorts.
    pub requests: f64,
    /// The canary's realised share, 0..=1.
    pub share: f64,
}

impl TrafficShape {
    /// Check number `check` (0-based over the rollout) at a step of nominal
    /// `share_percent` whose split drifted by `step_drift`; draws the check's split
    /// noise from `rng` (one standard normal).
    pub(crate) fn check(
        &self,
        check: u32,
        load_phase: f64,
        share_percent: f64,
        step_drift: f64,
        rng: &mut SeededRng,
    ) -> CheckTraffic {
        let seconds = f64::from(check) * self.check_interval_seconds;
        let load =
            1.0 + self.load_swing * (std::f64::consts::TAU * seconds / self.load_period_seconds + load_phase).sin();
        let requests = self.total_requests_per_second * load * self.check_interval_seconds;
        let noise = self.split_noise * rng.standard_normal();
        let share = (share_percent / 100.0 * (step_drift + noise).exp()).clamp(0.0, 1.0);
        CheckTraffic { seconds, load, requests, share }
    }
}

impl SimulationConfig {
    pub(crate) fn traffic(&self) -> TrafficShape {
        TrafficShape {
            check_interval_seconds: self.check_interval_seconds,
            total_requests_per_second: self.total_requests_per_second,
            load_swing: self.load_swing,
            load_period_seconds: self.load_period_seconds,
            split_noise: self.split_noise,
        }
    }
}

/// Simulates one rollout and returns, per procedure, the first check (0-based) at which it rolled back.
fn simulate_rollout(config: &SimulationConfig, rng: &mut SeededRng, regression: bool) -> [Option<u32>; PROCEDURES] {
    let mut rules = procedures(config);
    let mut first_rollback = [None; PROCEDURES];
    let traffic = config.traffic();
    let load_phase = std::f64::consts::TAU * rng.uniform();
    let error_phase = std::f64::consts::TAU * rng.uniform();
    let mut check = 0u32;
    for (step, share_percent) in observed_steps(config).into_iter().enumerate() {
        let step_drift = config.split_drift * rng.standard_normal();
        let regressed = regression && step as u64 >= u64::from(config.regression_step);
        for _ in 0..config.checks_per_step {
            let CheckTraffic { seconds, requests, share, .. } =
                traffic.check(check, load_phase, share_percent, step_drift, rng);
            let swing = 1.0
                + config.error_rate_swing
                    * (std::f64::consts::TAU * seconds / config.error_rate_period_seconds + error_phase).sin();
            let control_rate = config.baseline_error_rate * swing;
            let canary_rate = if regressed { config.regressed_error_rate * swing } else { control_rate };
            let interval = IntervalCounts {
                canary: draw_cohort(rng, requests * share, canary_rate),
                control: draw_cohort(rng, requests * (1.0 - share), control_rate),
            };
            for (rule, first) in rules.iter_mut().zip(first_rollback.iter_mut()) {
                if first.is_none() && rule.rolls_back(check, interval) {
                    *first = Some(check);
                }
            }
            check += 1;
        }
    }
    first_rollback
}

/// Requests and errors of one cohort in one interval: errors and successes are
/// independent Poisson counts (a thinned Poisson process).
fn draw_cohort(rng: &mut SeededRng, expected_requests: f64, error_rate: f64) -> CohortCounts {
    let errors = rng.poisson(expected_requests * error_rate);
    let successes = rng.poisson(expected_requests * (1.0 - error_rate));
    CohortCounts { requests: errors + successes, errors }
}

/// Runs the simulation described by `config`.
pub fn run(config: &SimulationConfig) -> SimulationReport {
    let checks_per_rollout = checks_per_rollout(config);
    let injection_check = config.regression_step.saturating_mul(config.checks_per_step);
    let mut false_rollbacks = [0u32; PROCEDURES];
    let mut early_rollbacks = [0u32; PROCEDURES];
    let mut delays: [Vec<u32>; PROCEDURES] = Default::default();
    for run in 0..config.runs {
        let mut aa_rng = SeededRng::stream(config.seed, 2 * u64::from(run));
        for (count, first) in false_rollbacks.iter_mut().zip(simulate_rollout(config, &mut aa_rng, false)) {
            *count += u32::from(first.is_some());
        }
        let mut regression_rng = SeededRng::stream(config.seed, 2 * u64::from(run) + 1);
        let outcomes = simulate_rollout(config, &mut regression_rng, true);
        for ((first, early), delay) in outcomes.iter().zip(early_rollbacks.iter_mut()).zip(delays.iter_mut()) {
            match first {
                Some(check) if *check < injection_check => *early += 1,
                Some(check) => delay.push(check - injection_check + 1),
                None => {}
            }
        }
    }
    let runs = f64::from(config.runs.max(1));
    let procedures = PROCEDURE_NAMES
        .iter()
        .zip(false_rollbacks.iter().zip(early_rollbacks.iter()).zip(delays.iter_mut()))
        .map(|(name, ((false_count, early), delay))| {
            let rate = f64::from(*false_count) / runs;
            let median_checks = median(delay);
            ProcedureOutcome {
                name: (*name).to_string(),
                false_rollback_rate: rate,
                false_rollback_standard_error: (rate * (1.0 - rate) / runs).sqrt(),
                detection_rate: delay.len() as f64 / runs,
                early_rollback_rate: f64::from(*early) / runs,
                median_detection_checks: median_checks,
                median_detection_seconds: median_checks.map(|checks| checks * config.check_interval_seconds),
            }
        })
        .collect();
    SimulationReport { config: config.clone(), checks_per_rollout, procedures }
}

fn median(values: &mut [u32]) -> Option<f64> {
    values.sort_unstable();
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => values.get(middle).map(|v| f64::from(*v)),
        _ => match (values.get(middle - 1), values.get(middle)) {
            (Some(a), Some(b)) => Some((f64::from(*a) + f64::from(*b)) / 2.0),
            _ => None,
        },
    }
}

impl fmt::Display for SimulationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "{} rollouts per scenario, seed {}; ladder {:?} %, {} checks of {} s per step ({} checks), {} rps ±{:.0} %",
            c.runs,
            c.seed,
            c.ladder_percent,
            c.checks_per_step,
            c.check_interval_seconds,
            self.checks_per_rollout,
            c.total_requests_per_second,
            100.0 * c.load_swing
        )?;
        writeln!(
            f,
            "A/A: both cohorts {:.2} % errors (shared swing ±{:.0} %); regression: canary {:.2} % from the {} % step; alpha {}",
            100.0 * c.baseline_error_rate,
            100.0 * c.error_rate_swing,
            100.0 * c.regressed_error_rate,
            c.ladder_percent.get(c.regression_step as usize).copied().unwrap_or(f64::NAN),
            c.alpha
        )?;
        writeln!(
            f,
            "{:<32} {:>16} {:>10} {:>10} {:>18}",
            "procedure", "A/A rollbacks", "detected", "too early", "median detection"
        )?;
        for p in &self.procedures {
            let false_rollbacks =
                format!("{:.1} ± {:.1} %", 100.0 * p.false_rollback_rate, 100.0 * p.false_rollback_standard_error);
            let median = match (p.median_detection_checks, p.median_detection_seconds) {
                (Some(checks), Some(seconds)) => format!("{checks} checks ({seconds:.0} s)"),
                _ => "-".to_string(),
            };
            writeln!(
                f,
                "{:<32} {:>16} {:>9.1}% {:>9.1}% {:>18}",
                p.name,
                false_rollbacks,
                100.0 * p.detection_rate,
                100.0 * p.early_rollback_rate,
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
    fn ours_stays_valid_where_peeking_does_not_and_still_detects() {
        let report = run(&SimulationConfig::small(2024));
        println!("{report}");
        let [ours, peeking, one_look, threshold] = &report.procedures[..] else { panic!("four procedures") };
        let alpha = report.config.alpha;
        let standard_error = (alpha * (1.0 - alpha) / f64::from(report.config.runs)).sqrt();
        assert!(ours.false_rollback_rate <= alpha + 3.0 * standard_error, "{report}");
        assert!(peeking.false_rollback_rate > ours.false_rollback_rate + 0.05, "{report}");
        assert!(peeking.false_rollback_rate > alpha + 3.0 * standard_error, "{report}");
        assert!(ours.detection_rate > 0.8, "{report}");
        // The same fixed-horizon test is valid when looked at once: peeking is the problem.
        assert!(one_look.false_rollback_rate <= alpha + 3.0 * standard_error, "{report}");
        assert!(threshold.detection_rate < ours.detection_rate, "{report}");
    }

    #[test]
    fn conditional_binomial_test_matches_scipy() {
        // Reference (python3 + scipy): binom.sf(11, 60, 0.1) = P(X >= 12) for X ~ Bin(60, 0.1)
        // = 0.0145846852 with canary share 100/1000 and 12 of 60 errors on the canary.
        let canary = CohortCounts { requests: 100, errors: 12 };
        let control = CohortCounts { requests: 900, errors: 48 };
        let p = conditional_binomial_p_value(canary, control);
        assert!((p - 0.014_584_685_2).abs() < 1e-9, "{p}");
        assert_eq!(conditional_binomial_p_value(CohortCounts { requests: 100, errors: 0 }, control), 1.0);
    }

    /// The benchmark at full size; run with
    /// `cargo test --release -p canary-analyzer -- --ignored --nocapture full_size`.
    #[test]
    #[ignore = "benchmark size: about a minute unoptimised, seconds with --release"]
    fn full_size_report() {
        let report = run(&SimulationConfig::full(2024));
        println!("{report}");
        let shared_swing = SimulationConfig { error_rate_swing: 0.3, ..SimulationConfig::full(2024) };
        println!("with a ±30 % error-rate swing shared by both cohorts:\n{}", run(&shared_swing));
    }

    #[test]
    fn same_seed_same_report() {
        let config = SimulationConfig { runs: 5, ..SimulationConfig::small(9) };
        assert_eq!(run(&config), run(&config));
        assert_eq!(median(&mut [3, 1, 2]), Some(2.0));
        assert_eq!(median(&mut [4, 1, 2, 3]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
