//! The automatic decision for one check, from the comparison report and what the
//! current step has measured on its own.
//!
//! The rules, in order (see [`decide`]):
//! 1. A finished rollout (promoted or rolled back) decides nothing more, and one held
//!    for deployment (share 0, nothing of the canary served) waits for `deployed`.
//! 2. Any *critical* metric whose row is `Worse` rolls back at once, mid-window,
//!    even while paused: pausing stops the climb, it does not switch off the
//!    safety net.
//! 3. A paused rollout never promotes on its own.
//! 4. Before the step's window has elapsed: hold.
//! 5. A critical metric with no row or `NotEnoughData`: hold (no data is not good news).
//! 6. The step has not earned its promotion with its own data (a window's worth of
//!    checks that found data, the latest among them, and enough requests per cohort
//!    at this step: [`StepEvidence::promotion_blocker`]): hold.
//! 7. A step whose policy asks for approval, not yet approved, waits for an operator:
//!    recorded once ([`Action::AwaitApproval`], announced as "approval needed"), then held.
//! 8. Otherwise promote to the next ladder step; reaching 100 % ends the rollout as promoted.
//!
//! A policy metric's row is found by its identity ([`RowKey`]), never by its name
//! alone: a row of the policy's never stands in for a built-in row, nor the reverse.

use std::time::Duration;

use canary_core::RolloutPhase;

use super::{Action, Actor, Decision, FULL_SHARE_BP, RolloutState, millis, percent};
use crate::policy::{MetricPolicy, RolloutPolicy, format_duration};
use crate::stats::{ComparisonRow, RowKey, Verdict};
use crate::step_evidence::StepEvidence;

/// One line per row for a reason text: `error_rate (canary 1.200 %, control 0.500 %, p = 3.00e-3)`.
fn describe_rows(rows: &[&ComparisonRow]) -> String {
    rows.iter()
        .map(|row| {
            format!(
                "{} (canary {}, control {}, p = {})",
                row.metric,
                row.value_text(row.canary),
                row.value_text(row.control),
                row.p_value.map_or_else(|| "n/a".to_string(), |p| format!("{p:.2e}"))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The automatic decision for one check: `rows` is the current report, `step_evidence`
/// what the current step has measured on its own, `now_ms` the time of the check.
pub fn decide(
    policy: &RolloutPolicy,
    state: &RolloutState,
    rows: &[ComparisonRow],
    step_evidence: &StepEvidence,
    now_ms: u64,
) -> Decision {
    let decision = |action: Action, reason: String| Decision {
        action,
        reason,
        actor: Actor::Analyzer,
        actor_note: None,
        rows: rows.to_vec(),
        based_on_generation: state.generation,
    };
    if state.is_finished() {
        return decision(Action::Hold, format!("rollout has ended ({:?}); nothing to decide", state.phase));
    }
    if state.awaits_deployment() {
        return decision(Action::Hold, "held at 0 % until the pipeline marks the canary deployed".to_string());
    }
    // Rows are matched by identity, not name: a policy metric's row never stands in for a built-in one.
    let critical: Vec<RowKey> = policy.critical_metrics().map(MetricPolicy::row_key).collect();
    let is_critical = |row: &&ComparisonRow| critical.contains(&row.key());
    let critical_worse: Vec<&ComparisonRow> =
        rows.iter().filter(is_critical).filter(|row| row.verdict == Verdict::Worse).collect();
    if !critical_worse.is_empty() {
        return decision(
            Action::Rollback,
            format!("critical metric worse than control beyond tolerance: {}", describe_rows(&critical_worse)),
        );
    }
    if state.phase == RolloutPhase::Paused {
        return decision(Action::Hold, "paused: waiting for a human to resume".to_string());
    }
    let Some(step) = policy.step(state.step) else {
        return decision(Action::Hold, format!("step {} is not on the policy's ladder", state.step.saturating_add(1)));
    };
    let elapsed_ms = now_ms.saturating_sub(state.step_started_at_ms);
    if elapsed_ms < millis(step.window) {
        return decision(
            Action::Hold,
            format!(
                "step {} at {}: {} of its {} window elapsed",
                state.step.saturating_add(1),
                percent(state.share_bp),
                format_duration(Duration::from_millis(elapsed_ms)),
                format_duration(step.window)
            ),
        );
    }
    let lacking: Vec<&RowKey> = critical
        .iter()
        .filter(|key| {
            rows.iter().find(|row| row.key() == **key).is_none_or(|row| row.verdict == Verdict::NotEnoughData)
        })
        .collect();
    if !lacking.is_empty() {
        let names: Vec<&str> = lacking.iter().map(|key| key.name.as_str()).collect();
        return decision(
            Action::Hold,
            format!("window elapsed but not enough data on critical metric(s): {}", names.join(", ")),
        );
    }
    if let Some(why) =
        step_evidence.promotion_blocker(step.window, policy.check_interval, policy.min_requests_per_cohort)
    {
        return decision(Action::Hold, format!("window elapsed but {why}"));
    }
    let Some((to_step, next)) = policy.next_step_above(state.share_bp) else {
        return decision(Action::Hold, format!("no ladder step above {}", percent(state.share_bp)));
    };
    if step.approval_required && state.approved_step != Some(state.step) {
        let reason = format!(
            "step {} at {} ran its {} window with no critical regression; promotion to {} needs an operator's \
             approval (`canary-analyzer approve {}`)",
            state.step.saturating_add(1),
            percent(state.share_bp),
            format_duration(step.window),
            percent(next.share_bp),
            state.deployment
        );
        let action = if state.awaiting_approval { Action::Hold } else { Action::AwaitApproval { step: state.step } };
        return decision(action, reason);
    }
    let non_critical_worse: Vec<&ComparisonRow> =
        rows.iter().filter(|row| !critical.contains(&row.key()) && row.verdict == Verdict::Worse).collect();
    let mut reason = format!(
        "step {} at {} ran its {} window with no critical regression; promoting to {}",
        state.step.saturating_add(1),
        percent(state.share_bp),
        format_duration(step.window),
        percent(next.share_bp)
    );
    if next.share_bp >= FULL_SHARE_BP {
        reason.push_str(" (rollout complete)");
    }
    if !non_critical_worse.is_empty() {
        reason.push_str(&format!("; non-critical regressions: {}", describe_rows(&non_critical_worse)));
    }
    decision(Action::Promote { to_step, share_bp: next.share_bp }, reason)
}
