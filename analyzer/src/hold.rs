//! Why a rollout is held, as data: one [`HoldReason`] per condition that keeps the
//! current step from being promoted, with what is needed to lift it and, where a rate
//! is known, an estimate of when. Computed from what the engine already knows (policy,
//! state, the step's own evidence, the comparison rows, the fleet at the latest check).
//! The API's status answer carries them; the CLI, the dashboard and the webhook all
//! render them with [`crate::present::hold_text`], so the wording is the same
//! everywhere. Pure: time is a parameter.
//!
//! The conditions mirror the promotion rules of [`crate::ladder::decide`] and
//! [`StepEvidence::promotion_blocker`], all of them at once rather than the first.

use canary_core::{Cohort, RolloutPhase};
use serde::{Deserialize, Serialize};

use crate::fleet::FleetView;
use crate::ladder::RolloutState;
use crate::policy::{MetricPolicy, RolloutPolicy};
use crate::stats::{ComparisonRow, Verdict};
use crate::step_evidence::{StepEvidence, checks_with_data_needed};

/// One condition that holds the rollout, with what is needed to lift it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HoldReason {
    /// Proxies were scraped and none exports the deployment: the policy's deployment id
    /// matches no filter's configuration. `other_deployments` are the ids they do export.
    NotServed { deployment: String, proxies: usize, other_deployments: Vec<String> },
    /// Registered held (share 0): waits for the pipeline to deploy the canary and say so.
    AwaitingDeployment { deployment: String },
    /// The step's policy asks for an operator's approval before promotion, not yet given.
    /// `window_passed`: the window ran cleanly and only the approval is missing.
    ApprovalNeeded { deployment: String, step: u32, window_passed: bool },
    /// A human paused the rollout: nothing is promoted until it is resumed.
    Paused,
    /// The step's window is still running. `step` counts from 1, as people read it.
    WindowRunning { step: u32, window_s: u64, remaining_s: u64 },
    /// A cohort has served fewer requests at this step than the policy needs.
    /// `rate_per_s` is its rate over the step's counted checks (`None`: none counted yet).
    RequestsMissing { cohort: String, served: u64, needed: u64, rate_per_s: Option<f64> },
    /// Too few checks at this step found data, or the latest found none.
    ChecksWithoutData { with_data: u64, needed: u64, without_data: u64, latest_had_data: bool },
    /// Some proxy does not apply the step yet (`summary` names them).
    ProxiesLagging { summary: String },
    /// A critical metric has no verdict yet (no row, or not enough data).
    CriticalUndecided { metric: String },
}

/// What the hold reasons are computed from.
pub struct HoldInputs<'a> {
    pub policy: &'a RolloutPolicy,
    pub state: &'a RolloutState,
    pub evidence: &'a StepEvidence,
    pub rows: &'a [ComparisonRow],
    pub fleet: Option<&'a FleetView>,
    pub now_ms: u64,
}

/// Every reason the rollout is held at `now_ms`; empty for a finished rollout and for
/// one that would be promoted at the next check.
pub fn hold_reasons(inputs: &HoldInputs<'_>) -> Vec<HoldReason> {
    let HoldInputs { policy, state, evidence, rows, fleet, now_ms } = *inputs;
    let mut reasons = Vec::new();
    if let Some(fleet) = fleet.filter(|fleet| fleet.nobody_serves()) {
        reasons.push(HoldReason::NotServed {
            deployment: state.deployment.clone(),
            proxies: fleet.not_exporting,
            other_deployments: fleet.other_deployments.clone(),
        });
    }
    match state.phase {
        RolloutPhase::Progressing => {}
        RolloutPhase::Paused => reasons.push(HoldReason::Paused),
        RolloutPhase::Pending => {
            reasons.push(HoldReason::AwaitingDeployment { deployment: state.deployment.clone() });
            return reasons;
        }
        RolloutPhase::Promoted | RolloutPhase::RolledBack => return reasons,
    }
    let Some(step) = policy.step(state.step) else { return reasons };
    if step.approval_required && state.approved_step != Some(state.step) {
        reasons.push(HoldReason::ApprovalNeeded {
            deployment: state.deployment.clone(),
            step: state.step.saturating_add(1),
            window_passed: state.awaiting_approval,
        });
    }
    if let Some(remaining) = state.window_remaining(policy, now_ms).filter(|r| !r.is_zero()) {
        reasons.push(HoldReason::WindowRunning {
            step: state.step.saturating_add(1),
            window_s: step.window.as_secs(),
            remaining_s: remaining.as_secs_f64().ceil() as u64,
        });
    }
    let counted_s = evidence.checks_with_data.saturating_add(evidence.checks_without_data) as f64
        * policy.check_interval.as_secs_f64();
    for (cohort, served) in [(Cohort::Canary, evidence.canary_requests), (Cohort::Control, evidence.control_requests)] {
        if served < policy.min_requests_per_cohort {
            reasons.push(HoldReason::RequestsMissing {
                cohort: cohort.label().to_string(),
                served,
                needed: policy.min_requests_per_cohort,
                rate_per_s: (counted_s > 0.0 && served > 0).then(|| served as f64 / counted_s),
            });
        }
    }
    let needed = checks_with_data_needed(step.window, policy.check_interval);
    let checks = evidence.checks_with_data.saturating_add(evidence.checks_without_data);
    if checks > 0
        && (!evidence.latest_had_data || (evidence.checks_without_data > 0 && evidence.checks_with_data < needed))
    {
        reasons.push(HoldReason::ChecksWithoutData {
            with_data: evidence.checks_with_data,
            needed,
            without_data: evidence.checks_without_data,
            latest_had_data: evidence.latest_had_data,
        });
    }
    if let Some(summary) = &evidence.latest_lagging {
        reasons.push(HoldReason::ProxiesLagging { summary: summary.clone() });
    }
    for metric in policy.critical_metrics().map(MetricPolicy::row_key) {
        let row = rows.iter().find(|row| row.key() == metric);
        if row.is_none_or(|row| row.verdict == Verdict::NotEnoughData) {
            reasons.push(HoldReason::CriticalUndecided { metric: metric.name.clone() });
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ProxyApplied;

    fn exporting(others: Option<&[&str]>, generation: Option<u64>) -> ProxyApplied {
        ProxyApplied {
            proxy: "envoy".into(),
            generation,
            other_deployments: others.map(|ids| ids.iter().map(|id| id.to_string()).collect()),
            ..ProxyApplied::default()
        }
    }

    fn policy() -> RolloutPolicy {
        RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n  \
             deployment: orders\n  ladder:\n    - {share: 1, window: 60s}\n    - {share: 100, window: 60s}\n  \
             check_interval: 10s\n  min_requests_per_cohort: 500\n  metrics:\n    \
             - {name: error_rate, max_relative_increase: 0.1, critical: true}\n    \
             - {name: latency_p99, max_increase_ms: 50, critical: true}\n",
        )
        .unwrap()
    }

    fn state(phase: RolloutPhase) -> RolloutState {
        RolloutState { deployment: "orders".into(), ..crate::fixtures::state(0, 100, phase) }
    }

    fn reasons(
        evidence: &StepEvidence,
        fleet: Option<&FleetView>,
        phase: RolloutPhase,
        now_ms: u64,
    ) -> Vec<HoldReason> {
        let (policy, state) = (policy(), state(phase));
        hold_reasons(&HoldInputs { policy: &policy, state: &state, evidence, rows: &[], fleet, now_ms })
    }

    #[test]
    fn a_deployment_no_proxy_exports_is_held_naming_what_they_export() {
        let fleet = FleetView::new(1, &[exporting(Some(&["checkout"]), None)]);
        let found = reasons(&StepEvidence::ample(), Some(&fleet), RolloutPhase::Progressing, 60_000);
        assert_eq!(
            found[0],
            HoldReason::NotServed {
                deployment: "orders".into(),
                proxies: 1,
                other_deployments: vec!["checkout".into()]
            }
        );
        let served = FleetView::new(1, &[exporting(None, Some(1))]);
        let found = reasons(&StepEvidence::ample(), Some(&served), RolloutPhase::Progressing, 60_000);
        assert!(!found.iter().any(|r| matches!(r, HoldReason::NotServed { .. })), "{found:?}");
    }

    #[test]
    fn missing_requests_are_counted_per_cohort_with_their_rate() {
        let mut evidence = StepEvidence::ample();
        // 6 checks of 10 s counted: 160 canary requests in 60 s.
        (evidence.checks_with_data, evidence.checks_without_data) = (6, 0);
        (evidence.canary_requests, evidence.control_requests) = (160, 9_000);
        let found = reasons(&evidence, None, RolloutPhase::Progressing, 60_000);
        let expected = HoldReason::RequestsMissing {
            cohort: "canary".into(),
            served: 160,
            needed: 500,
            rate_per_s: Some(160.0 / 60.0),
        };
        assert!(found.contains(&expected), "{found:?}");
        assert!(!found.iter().any(|r| matches!(r, HoldReason::RequestsMissing { cohort, .. } if cohort == "control")));
        assert!(found.contains(&HoldReason::CriticalUndecided { metric: "error_rate".into() }), "no rows: undecided");
    }

    #[test]
    fn the_window_and_the_checks_without_data_are_reasons_too() {
        let mut evidence = StepEvidence::ample();
        (evidence.checks_with_data, evidence.checks_without_data, evidence.latest_had_data) = (2, 1, false);
        let found = reasons(&evidence, None, RolloutPhase::Progressing, 25_000);
        assert!(found.contains(&HoldReason::WindowRunning { step: 1, window_s: 60, remaining_s: 35 }), "{found:?}");
        // 60 s / 10 s = 6 checks, less 10 % (0 when rounded down): 6 needed.
        assert!(found.contains(&HoldReason::ChecksWithoutData {
            with_data: 2,
            needed: 6,
            without_data: 1,
            latest_had_data: false
        }));
    }

    #[test]
    fn a_paused_rollout_says_so_and_a_finished_one_has_no_reason() {
        assert!(reasons(&StepEvidence::ample(), None, RolloutPhase::Paused, 60_000).contains(&HoldReason::Paused));
        assert_eq!(reasons(&StepEvidence::new(1), None, RolloutPhase::Promoted, 60_000), []);
    }

    #[test]
    fn nothing_holds_a_step_that_earned_its_promotion() {
        let (policy, state) = (policy(), state(RolloutPhase::Progressing));
        let rows: Vec<ComparisonRow> = ["error_rate", "latency_p99_us"]
            .into_iter()
            .map(|metric| crate::fixtures::row(metric, Verdict::NoDifference, Some(0.5)))
            .collect();
        let found = hold_reasons(&HoldInputs {
            policy: &policy,
            state: &state,
            evidence: &StepEvidence::ample(),
            rows: &rows,
            fleet: None,
            now_ms: 60_000,
        });
        assert_eq!(found, []);
    }
}
