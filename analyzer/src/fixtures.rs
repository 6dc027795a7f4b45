//! Test fixtures shared by the views (dashboard, terminal): one rollout of
//! `checkout` at step 1 (5 %) of a five-step ladder, built from plain values so each
//! test states only what it changes.

use crate::audit::AuditRecord;
use crate::engine::{HistoryPoint, RolloutStatus};
use crate::ladder::{Action, Actor, Decision, RolloutState};
use crate::policy::RolloutPolicy;
use crate::stats::{ComparisonRow, DifferenceScale, Interval, Verdict};
use canary_core::{RolloutConfig, RolloutPhase};

pub fn state(step: u32, share_bp: u32, phase: RolloutPhase) -> RolloutState {
    RolloutState {
        deployment: "checkout".into(),
        step,
        share_bp,
        generation: 7,
        step_started_at_ms: 0,
        phase,
        updated_at_ms: 0,
        approved_step: None,
        awaiting_approval: false,
    }
}

/// Canary 2 % against control 1 %: +100 %, interval [+25 %, +∞].
pub fn row(metric: &str, verdict: Verdict, p: Option<f64>) -> ComparisonRow {
    ComparisonRow {
        metric: metric.into(),
        canary: Some(0.02),
        control: Some(0.01),
        absolute_difference: Some(0.01),
        relative_difference: Some(1.0),
        interval: Some(Interval { lo: Some(0.25), hi: None }),
        interval_scale: DifferenceScale::Relative,
        p_value: p,
        verdict,
        unit: crate::stats::ValueUnit::ByName,
        origin: crate::stats::RowOrigin::ByName,
    }
}

/// One check: 50 canary and 950 control requests at 5 %.
pub fn point(at_ms: u64, canary_errors: u64) -> HistoryPoint {
    HistoryPoint {
        at_ms,
        share_bp: 500,
        canary_requests: 50,
        control_requests: 950,
        canary_errors,
        control_errors: 1,
        canary_p50_us: Some(2_000.0),
        control_p50_us: Some(1_900.0),
        canary_p99_us: Some(9_000.0),
        control_p99_us: None,
    }
}

/// Progressing at step 1 (5 %) of 1, 5, 25, 50, 100 %, 75 s left in the window.
pub fn status(history: Vec<HistoryPoint>, rows: Vec<ComparisonRow>) -> RolloutStatus {
    let state = state(1, 500, RolloutPhase::Progressing);
    RolloutStatus {
        deployment: "checkout".into(),
        policy: "web".into(),
        config: RolloutConfig {
            deployment: "checkout".into(),
            generation: 7,
            share_bp: 500,
            state: RolloutPhase::Progressing,
        },
        state,
        ladder_bp: vec![100, 500, 2_500, 5_000, 10_000],
        window_remaining_s: Some(75),
        last_check_ms: history.last().map(|p| p.at_ms),
        rows,
        failed_targets: Vec::new(),
        history,
        problem: None,
        fleet: None,
        stalled: None,
        missing_outcomes: Vec::new(),
        holds: Vec::new(),
        row_rules: vec![crate::row_rule::RowRule {
            metric: "error_rate".into(),
            tolerance: "increase up to 10 %".into(),
            critical: true,
        }],
    }
}

/// A decision from step 0 to step 1, `sequence` seconds after 2023-11-14 22:13:20 UTC.
pub fn record(sequence: u64, reason: &str, actor: Actor, action: Action) -> AuditRecord {
    let policy = RolloutPolicy::from_yaml(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: web}\nspec: {deployment: checkout}\n",
    )
    .unwrap();
    AuditRecord {
        sequence,
        at_ms: 1_700_000_000_000 + sequence * 1_000,
        deployment: "checkout".into(),
        decision: Decision {
            action,
            reason: reason.into(),
            actor,
            actor_note: None,
            rows: Vec::new(),
            based_on_generation: 6,
        },
        policy_name: "web".into(),
        policy_hash: "x".into(),
        policy,
        before: Some(state(0, 100, RolloutPhase::Progressing)),
        after: state(1, 500, RolloutPhase::Progressing),
        recorded_late_at_ms: None,
    }
}
