//! Outcome metrics in the seeded simulation: is the event-rate test valid for
//! *common* events (a 80 % hit rate, where the error rate's "rare events"
//! intuition does not hold), in both directions, and does it catch a fallen hit
//! rate quickly?
//!
//! Traffic as in the error-rate simulation ([`super::SimulationConfig`]: the same
//! ladder, load swing and drifting split). Each request is an event with the
//! cohort's probability, so an interval's events and non-events are independent
//! Poisson counts (Poisson requests, thinned); given the realised requests the
//! events are binomial, and given all events the canary's share of them is
//! hypergeometric, less dispersed than the binomial the test's likelihood assumes.
//! That makes the test conservative here, never anti-conservative (see
//! `docs/statistics.md`); the A/A scenarios measure it.
//!
//! Scenarios (a rollback is the first check whose "worse" p-value is <= alpha):
//! - A/A, lower is worse: both cohorts hit 80 %, tolerance 0;
//! - A/A, higher is worse: both cohorts 30 % (say, declines), tolerance 0;
//! - boundary, lower is worse: the canary at exactly `1 − tolerance` of control
//!   (72 % against 80 % with a 10 % tolerance), the hardest case of the null;
//! - power: control 80 %, canary 60 % from the second step on, tolerance 10 %
//!   (the named events alone are tested);
//! - power: control 90 %, canary 80 % (twice the misses), tolerance 0 (the misses'
//!   side is tested too, see `stats::event_rate`).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::random::SeededRng;
use super::{CheckTraffic, SimulationConfig, steps_with_a_window};
use crate::stats::{CohortCounts, EventRateTest, IntervalCounts, WorseDirection};

/// Mixed into the seed ("outcome" in ASCII) so these runs draw other numbers than the
/// error-rate simulation's runs with the same seed.
const OUTCOME_STREAMS: u64 = 0x006f_7574_636f_6d65;

/// One scenario: the two rates, when the canary's applies, and the policy's test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeScenario {
    pub name: String,
    pub control_rate: f64,
    /// The canary's rate from `canary_rate_from_step` on (control's rate before).
    pub canary_rate: f64,
    pub canary_rate_from_step: u32,
    pub worse: WorseDirection,
    pub relative_tolerance: f64,
}

/// What a scenario did over all runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeScenarioResult {
    pub scenario: OutcomeScenario,
    /// Fraction of runs rolled back at any check.
    pub rollback_rate: f64,
    pub rollback_standard_error: f64,
    /// Fraction rolled back before the canary's rate applied (false rollbacks in a power scenario).
    pub early_rollback_rate: f64,
    /// Median checks from the first check at the canary's rate to the rollback, counting that check.
    pub median_detection_checks: Option<f64>,
}

/// The five scenarios of the module documentation.
pub fn scenarios() -> Vec<OutcomeScenario> {
    let scenario = |name: &str, control_rate, canary_rate, worse, relative_tolerance| OutcomeScenario {
        name: name.to_string(),
        control_rate,
        canary_rate,
        canary_rate_from_step: 1,
        worse,
        relative_tolerance,
    };
    vec![
        scenario("A/A hit rate 80 %, lower is worse", 0.8, 0.8, WorseDirection::Lower, 0.0),
        scenario("A/A rate 30 %, higher is worse", 0.3, 0.3, WorseDirection::Higher, 0.0),
        scenario("boundary 72 % vs 80 %, lower is worse, tol 10 %", 0.8, 0.72, WorseDirection::Lower, 0.1),
        scenario("power 80 % -> 60 %, lower is worse, tol 10 %", 0.8, 0.6, WorseDirection::Lower, 0.1),
        scenario("power 90 % -> 80 %, lower is worse, tol 0", 0.9, 0.8, WorseDirection::Lower, 0.0),
    ]
}

/// One cohort's interval: events and non-events as independent Poisson counts.
fn draw(rng: &mut SeededRng, expected_requests: f64, rate: f64) -> CohortCounts {
    let events = rng.poisson(expected_requests * rate);
    let others = rng.poisson(expected_requests * (1.0 - rate));
    CohortCounts { requests: events + others, errors: events }
}

/// One rollout: the first check (0-based) at which the test says "worse", if any.
fn simulate_rollout(config: &SimulationConfig, scenario: &OutcomeScenario, rng: &mut SeededRng) -> Option<u32> {
    let mut test = EventRateTest::new(&scenario.name, scenario.relative_tolerance, scenario.worse).ok()?;
    let load_phase = std::f64::consts::TAU * rng.uniform();
    let mut check = 0u32;
    let traffic = config.traffic();
    for (step, share_percent) in steps_with_a_window(&config.ladder_percent).into_iter().enumerate() {
        let step_drift = config.split_drift * rng.standard_normal();
        let canary_rate = if step as u64 >= u64::from(scenario.canary_rate_from_step) {
            scenario.canary_rate
        } else {
            scenario.control_rate
        };
        for _ in 0..config.checks_per_step {
            let CheckTraffic { requests, share, .. } = traffic.check(check, load_phase, share_percent, step_drift, rng);
            let interval = IntervalCounts {
                canary: draw(rng, requests * share, canary_rate),
                control: draw(rng, requests * (1.0 - share), scenario.control_rate),
            };
            if test.observe(Some(interval)).is_ok() && test.p_worse() <= config.alpha {
                return Some(check);
            }
            check += 1;
        }
    }
    None
}

/// Runs one scenario `config.runs` times (its own seeded stream per run).
pub fn run_scenario(config: &SimulationConfig, scenario: &OutcomeScenario) -> OutcomeScenarioResult {
    let first_changed_check = scenario.canary_rate_from_step.saturating_mul(config.checks_per_step);
    let (mut rollbacks, mut early) = (0u32, 0u32);
    let mut delays = Vec::new();
    for run in 0..config.runs {
        let mut rng = SeededRng::stream(config.seed ^ OUTCOME_STREAMS, u64::from(run));
        match simulate_rollout(config, scenario, &mut rng) {
            Some(check) if check < first_changed_check => {
                rollbacks += 1;
                early += 1;
            }
            Some(check) => {
                rollbacks += 1;
                delays.push(check - first_changed_check + 1);
            }
            None => {}
        }
    }
    let runs = f64::from(config.runs.max(1));
    let rate = f64::from(rollbacks) / runs;
    OutcomeScenarioResult {
        scenario: scenario.clone(),
        rollback_rate: rate,
        rollback_standard_error: (rate * (1.0 - rate) / runs).sqrt(),
        early_rollback_rate: f64::from(early) / runs,
        median_detection_checks: super::median(&mut delays),
    }
}

impl fmt::Display for OutcomeScenarioResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let median = self.median_detection_checks.map_or_else(|| "-".to_string(), |checks| format!("{checks} checks"));
        write!(
            f,
            "{:<50} rolled back {:>5.1} ± {:.1} %, too early {:>4.1} %, median detection {median}",
            self.scenario.name,
            100.0 * self.rollback_rate,
            100.0 * self.rollback_standard_error,
            100.0 * self.early_rollback_rate
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    /// A/A and at the tolerance boundary the false-rollback rate stays within alpha + 3 SE
    /// in both directions; a hit rate falling from 80 % to 60 % is caught in nearly every
    /// run within its first step.
    #[test]
    fn outcome_tests_stay_valid_for_common_events_and_catch_a_fallen_hit_rate() {
        let config = SimulationConfig::small(2024);
        let alpha = config.alpha;
        let bound = alpha + 3.0 * (alpha * (1.0 - alpha) / f64::from(config.runs)).sqrt();
        let results: Vec<OutcomeScenarioResult> = scenarios().iter().map(|s| run_scenario(&config, s)).collect();
        for result in &results {
            println!("{result}");
        }
        let [aa_lower, aa_higher, boundary, powers @ ..] = &results[..] else { panic!("five scenarios") };
        for null in [aa_lower, aa_higher, boundary] {
            assert!(null.rollback_rate <= bound, "{null}");
        }
        for power in powers {
            assert!(power.early_rollback_rate <= bound, "{power}");
            assert!(power.rollback_rate - power.early_rollback_rate >= 0.95, "{power}");
            assert!(power.median_detection_checks.unwrap() <= f64::from(config.checks_per_step), "{power}");
        }
    }

    #[test]
    fn same_seed_same_result() {
        let config = SimulationConfig { runs: 5, ..SimulationConfig::small(9) };
        let scenario = &scenarios()[3];
        assert_eq!(run_scenario(&config, scenario), run_scenario(&config, scenario));
    }
}
