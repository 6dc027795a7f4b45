//! The rollout state machine: where a rollout stands on its ladder, what the
//! analyzer (or a human) decides from a comparison report, and how a decision
//! moves the state.
//!
//! Pure: time is the `now_ms` parameter (Unix milliseconds), nothing here reads
//! a clock or touches a file, so every rule is a fast unit test. The caller
//! writes the decision to the audit log ([`crate::audit`]) with the state
//! before and after, and only then lets it take effect.
//!
//! The rules, in order (see [`decide`]):
//! 1. A finished rollout (promoted or rolled back) decides nothing more.
//! 2. Any *critical* metric whose row is `Worse` rolls back at once, mid-window,
//!    even while paused: pausing stops the climb, it does not switch off the
//!    safety net.
//! 3. A paused rollout never promotes on its own.
//! 4. Before the step's window has elapsed: hold.
//! 5. A critical metric with no row or `NotEnoughData`: hold (no data is not good news).
//! 6. The step has not earned its promotion with its own data (a window's worth of
//!    checks that found data, the latest among them, and enough requests per cohort
//!    at this step: [`StepEvidence::promotion_blocker`]): hold.
//! 7. Otherwise promote to the next ladder step; reaching 100 % ends the rollout as promoted.
//!
//! Every change of what the filter is served (share or phase) bumps the
//! generation, because the filter ignores a different answer with an old one.

use std::time::Duration;

use canary_core::{RolloutConfig, RolloutPhase};
use serde::{Deserialize, Serialize};

use crate::policy::{RolloutPolicy, format_duration};
use crate::stats::{ComparisonRow, Verdict};
use crate::step_evidence::StepEvidence;

/// 100 % in basis points: reaching it ends the rollout.
const FULL_SHARE_BP: u32 = 10_000;
/// The actor name reserved for automatic decisions.
const ANALYZER_ACTOR: &str = "analyzer";

/// Where one rollout stands. Persisted by [`crate::audit`] and served (through
/// [`RolloutState::config`]) to the filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    pub deployment: String,
    /// Index into the policy's ladder of the step whose window is running.
    pub step: u32,
    /// Canary share in basis points, 0..=10 000.
    pub share_bp: u32,
    /// Only grows: +1 whenever the share or the phase changes.
    pub generation: u64,
    /// When the current step's window started (Unix ms).
    pub step_started_at_ms: u64,
    pub phase: RolloutPhase,
    /// When the state last changed (Unix ms).
    pub updated_at_ms: u64,
}

/// Who decided: the analyzer itself or a named caller (a person or a pipeline, named
/// by the token it authenticated with, see [`crate::auth`]). Serialised as a plain
/// string, `"analyzer"` being reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Actor {
    Analyzer,
    Human(String),
}

/// What a decision does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// The rollout was registered and starts on its first step.
    Start,
    /// Nothing changes.
    Hold,
    /// Move to a ladder step (to 100 %: the rollout ends as promoted).
    Promote { to_step: u32, share_bp: u32 },
    /// Share 0, the rollout ends as rolled back.
    Rollback,
    /// Stop automatic promotion (automatic rollback stays armed).
    Pause,
    /// Automatic promotion again; the step's window restarts.
    Resume,
    /// A human sets the share; the window of the step at that share restarts.
    SetShare { to_step: u32, share_bp: u32 },
}

/// One decision with everything needed to audit it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
    pub actor: Actor,
    /// What the caller said about who it is (the `x-actor` header, the override's
    /// `actor`, the CLI's `--actor`): unverified, so kept beside the authenticated
    /// `actor`, never as it. Absent in records written before identities existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_note: Option<String>,
    /// The report the decision was made on, worst first (may be empty for an override).
    pub rows: Vec<ComparisonRow>,
    /// The state generation the decision was made against; applying it to any other is refused.
    pub based_on_generation: u64,
}

/// Who acts, as the engine records it: the authenticated [`Actor`] and, apart from
/// it, what the caller declared about itself ([`Decision::actor_note`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActedBy {
    pub actor: Actor,
    pub note: Option<String>,
}

impl From<Actor> for ActedBy {
    fn from(actor: Actor) -> ActedBy {
        ActedBy { actor, note: None }
    }
}

/// A human's request, before it is checked against the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideAction {
    Promote,
    Rollback,
    /// Pause (hold) the rollout.
    Pause,
    Resume,
    SetShare {
        share_bp: u32,
    },
}

/// An override refused before it is logged or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    #[error("an override needs a reason")]
    MissingReason,
    #[error("override actor {0:?} is not a valid human name (non-empty, not \"analyzer\")")]
    InvalidActor(String),
    #[error("rollout of {deployment} has already ended ({phase:?}); register a new rollout instead")]
    Finished { deployment: String, phase: RolloutPhase },
    #[error("rollout of {0} is already paused")]
    AlreadyPaused(String),
    #[error("rollout of {0} is not paused")]
    NotPaused(String),
    #[error("share_bp = {0}: expected basis points from 0 to 10000")]
    ShareOutOfRange(u32),
}

/// A decision that cannot be applied to the state it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("decision was made at generation {decided}, the rollout is now at {current}: decide again")]
    Stale { decided: u64, current: u64 },
    #[error("a {0:?} decision cannot be applied to a running rollout")]
    NotApplicable(Action),
    #[error("rollout of {deployment} has already ended ({phase:?})")]
    Finished { deployment: String, phase: RolloutPhase },
    #[error("share_bp = {0}: expected basis points from 0 to 10000")]
    ShareOutOfRange(u32),
}

impl Actor {
    /// A named human; refuses empty names and the reserved `analyzer`.
    pub fn human(name: &str) -> Result<Actor, OverrideError> {
        let name = name.trim();
        if name.is_empty() || name == ANALYZER_ACTOR {
            return Err(OverrideError::InvalidActor(name.to_string()));
        }
        Ok(Actor::Human(name.to_string()))
    }

    pub fn name(&self) -> &str {
        match self {
            Actor::Analyzer => ANALYZER_ACTOR,
            Actor::Human(name) => name,
        }
    }
}

impl From<Actor> for String {
    fn from(actor: Actor) -> String {
        actor.name().to_string()
    }
}

impl TryFrom<String> for Actor {
    type Error = OverrideError;

    fn try_from(name: String) -> Result<Actor, OverrideError> {
        if name == ANALYZER_ACTOR { Ok(Actor::Analyzer) } else { Actor::human(&name) }
    }
}

fn is_finished(phase: RolloutPhase) -> bool {
    matches!(phase, RolloutPhase::Promoted | RolloutPhase::RolledBack)
}

/// Milliseconds of a duration, saturating (windows are minutes, never 584 million years).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn percent(share_bp: u32) -> String {
    format!("{} %", f64::from(share_bp) / 100.0)
}

impl RolloutState {
    /// A new rollout on its first step. The generation starts above both the
    /// previous rollout's of this deployment and `now_ms`: a filter still holding
    /// a generation from an earlier rollout — or from an analyzer whose state was
    /// lost — must accept the new answers, and the clock in ms outruns any number
    /// of +1 steps taken since.
    pub fn start(policy: &RolloutPolicy, previous_generation: u64, now_ms: u64) -> RolloutState {
        let first_share = policy.step(0).map_or(0, |step| step.share_bp);
        RolloutState {
            deployment: policy.deployment.clone(),
            step: 0,
            share_bp: first_share,
            generation: previous_generation.saturating_add(1).max(now_ms),
            step_started_at_ms: now_ms,
            phase: if first_share >= FULL_SHARE_BP { RolloutPhase::Promoted } else { RolloutPhase::Progressing },
            updated_at_ms: now_ms,
        }
    }

    /// The document the filter polls.
    pub fn config(&self) -> RolloutConfig {
        RolloutConfig {
            deployment: self.deployment.clone(),
            generation: self.generation,
            share_bp: self.share_bp,
            state: self.phase,
        }
    }

    pub fn is_finished(&self) -> bool {
        is_finished(self.phase)
    }

    /// Time left in the current step's window; `None` unless the rollout is
    /// progressing (paused or finished rollouts have no next step due).
    pub fn window_remaining(&self, policy: &RolloutPolicy, now_ms: u64) -> Option<Duration> {
        if self.phase != RolloutPhase::Progressing {
            return None;
        }
        let window = millis(policy.step(self.step)?.window);
        let elapsed = now_ms.saturating_sub(self.step_started_at_ms);
        Some(Duration::from_millis(window.saturating_sub(elapsed)))
    }

    /// The state after `decision`, or why it cannot be applied. Holds return the state unchanged.
    pub fn next(&self, decision: &Decision, now_ms: u64) -> Result<RolloutState, TransitionError> {
        if decision.based_on_generation != self.generation {
            return Err(TransitionError::Stale { decided: decision.based_on_generation, current: self.generation });
        }
        let mut next = self.clone();
        match decision.action {
            Action::Hold => return Ok(next),
            Action::Start => return Err(TransitionError::NotApplicable(Action::Start)),
            _ if self.is_finished() => {
                return Err(TransitionError::Finished { deployment: self.deployment.clone(), phase: self.phase });
            }
            Action::Promote { to_step, share_bp } | Action::SetShare { to_step, share_bp } => {
                if share_bp > FULL_SHARE_BP {
                    return Err(TransitionError::ShareOutOfRange(share_bp));
                }
                next.step = to_step;
                next.share_bp = share_bp;
                next.step_started_at_ms = now_ms;
                if share_bp == FULL_SHARE_BP {
                    next.phase = RolloutPhase::Promoted;
                }
            }
            Action::Rollback => {
                next.share_bp = 0;
                next.phase = RolloutPhase::RolledBack;
            }
            Action::Pause => next.phase = RolloutPhase::Paused,
            Action::Resume => {
                next.phase = RolloutPhase::Progressing;
                next.step_started_at_ms = now_ms;
            }
        }
        if next.share_bp != self.share_bp || next.phase != self.phase {
            next.generation = self.generation.saturating_add(1);
        }
        next.updated_at_ms = now_ms;
        Ok(next)
    }

    /// Moves the state by `decision` (see [`RolloutState::next`]).
    pub fn apply(&mut self, decision: &Decision, now_ms: u64) -> Result<(), TransitionError> {
        *self = self.next(decision, now_ms)?;
        Ok(())
    }
}

impl Decision {
    /// The record of a rollout's registration (its `based_on_generation` is the new state's).
    pub fn start(state: &RolloutState, by: impl Into<ActedBy>, reason: impl Into<String>) -> Decision {
        let ActedBy { actor, note } = by.into();
        Decision {
            action: Action::Start,
            reason: reason.into(),
            actor,
            actor_note: note,
            rows: Vec::new(),
            based_on_generation: state.generation,
        }
    }

    /// The actor for people: `alice`, or `token (note: dana)` when the caller declared itself.
    pub fn actor_text(&self) -> String {
        match &self.actor_note {
            Some(note) => format!("{} (note: {note})", self.actor.name()),
            None => self.actor.name().to_string(),
        }
    }

    /// Whether applying it changes the state (everything but a hold).
    pub fn changes_state(&self) -> bool {
        self.action != Action::Hold
    }
}

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
    let critical: Vec<String> = policy.critical_metrics().map(|m| m.report_metric()).collect();
    let is_critical = |row: &&ComparisonRow| critical.contains(&row.metric);
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
        return decision(Action::Hold, format!("step {} is not on the policy's ladder", state.step));
    };
    let elapsed_ms = now_ms.saturating_sub(state.step_started_at_ms);
    if elapsed_ms < millis(step.window) {
        return decision(
            Action::Hold,
            format!(
                "step {} at {}: {} of its {} window elapsed",
                state.step,
                percent(state.share_bp),
                format_duration(Duration::from_millis(elapsed_ms)),
                format_duration(step.window)
            ),
        );
    }
    let lacking: Vec<&String> = critical
        .iter()
        .filter(|metric| {
            rows.iter().find(|row| &&row.metric == metric).is_none_or(|row| row.verdict == Verdict::NotEnoughData)
        })
        .collect();
    if !lacking.is_empty() {
        let names: Vec<&str> = lacking.iter().map(|m| m.as_str()).collect();
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
    let non_critical_worse: Vec<&ComparisonRow> =
        rows.iter().filter(|row| !critical.contains(&row.metric) && row.verdict == Verdict::Worse).collect();
    let mut reason = format!(
        "step {} at {} ran its {} window with no critical regression; promoting to {}",
        state.step,
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

/// A human's override, checked against the state: the reason is required, the
/// actor must be a named caller (not the analyzer), and a finished rollout takes no more overrides.
/// `rows` is the latest report, kept as the evidence the human saw.
///
/// A human promote skips the window and the data requirement and goes to the
/// next ladder step above the share; a set share restarts the window of the
/// ladder step at that share, and the next promotion goes to the first step
/// above it. Both keep a paused rollout paused; either reaching 100 % ends the
/// rollout as promoted.
pub fn human_override(
    policy: &RolloutPolicy,
    state: &RolloutState,
    action: &OverrideAction,
    by: &ActedBy,
    reason: &str,
    rows: Vec<ComparisonRow>,
) -> Result<Decision, OverrideError> {
    let actor = Actor::human(by.actor.name())?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(OverrideError::MissingReason);
    }
    if state.is_finished() {
        return Err(OverrideError::Finished { deployment: state.deployment.clone(), phase: state.phase });
    }
    let action = match *action {
        OverrideAction::Promote => match policy.next_step_above(state.share_bp) {
            Some((to_step, step)) => Action::Promote { to_step, share_bp: step.share_bp },
            // Above the top of the ladder already: finish it.
            None => Action::Promote { to_step: state.step, share_bp: FULL_SHARE_BP },
        },
        OverrideAction::Rollback => Action::Rollback,
        OverrideAction::Pause if state.phase == RolloutPhase::Paused => {
            return Err(OverrideError::AlreadyPaused(state.deployment.clone()));
        }
        OverrideAction::Pause => Action::Pause,
        OverrideAction::Resume if state.phase != RolloutPhase::Paused => {
            return Err(OverrideError::NotPaused(state.deployment.clone()));
        }
        OverrideAction::Resume => Action::Resume,
        OverrideAction::SetShare { share_bp } if share_bp > FULL_SHARE_BP => {
            return Err(OverrideError::ShareOutOfRange(share_bp));
        }
        OverrideAction::SetShare { share_bp } => Action::SetShare { to_step: policy.step_at_share(share_bp), share_bp },
    };
    Ok(Decision {
        action,
        reason: reason.to_string(),
        actor,
        actor_note: by.note.clone(),
        rows,
        based_on_generation: state.generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DifferenceScale;
    use crate::step_evidence::CheckOutcome;

    const MINUTE_MS: u64 = 60_000;

    /// A caller authenticated as `name`, with no note.
    fn by(name: &str) -> ActedBy {
        ActedBy { actor: Actor::Human(name.into()), note: None }
    }
    /// A start time far from zero so that "elapsed" arithmetic is exercised.
    const T0: u64 = 1_700_000_000_000;

    /// Ladder 1, 5, 25, 50, 100 % with 5-minute windows; error_rate and latency_p99
    /// critical, latency_p50 not.
    fn policy() -> RolloutPolicy {
        RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n  \
             deployment: checkout\n  metrics:\n    - {name: error_rate}\n    \
             - {name: latency_p99, max_increase_ms: 50}\n    \
             - {name: latency_p50, max_increase_ms: 5, critical: false}\n",
        )
        .unwrap()
    }

    fn row(metric: &str, verdict: Verdict) -> ComparisonRow {
        ComparisonRow {
            metric: metric.to_string(),
            canary: Some(0.02),
            control: Some(0.01),
            absolute_difference: Some(0.01),
            relative_difference: Some(1.0),
            interval: None,
            interval_scale: DifferenceScale::Relative,
            p_value: Some(0.001),
            verdict,
            unit: crate::stats::ValueUnit::ByName,
        }
    }

    fn healthy() -> Vec<ComparisonRow> {
        vec![
            row("error_rate", Verdict::NoDifference),
            row("latency_p99_us", Verdict::NoDifference),
            row("latency_p50_us", Verdict::Better),
        ]
    }

    fn started() -> RolloutState {
        RolloutState::start(&policy(), 0, T0)
    }

    fn step(state: &mut RolloutState, decision: &Decision, now_ms: u64) {
        state.apply(decision, now_ms).unwrap();
    }

    #[test]
    fn a_rollout_starts_on_its_first_step() {
        let state = started();
        assert_eq!((state.step, state.share_bp, state.phase), (0, 100, RolloutPhase::Progressing));
        assert_eq!(state.generation, T0, "generation starts at the clock");
        let again = RolloutState::start(&policy(), T0 + 5_000, T0);
        assert_eq!(again.generation, T0 + 5_001, "and above the previous rollout's");
        let config = state.config();
        assert_eq!(
            config,
            RolloutConfig {
                deployment: "checkout".into(),
                generation: T0,
                share_bp: 100,
                state: RolloutPhase::Progressing
            }
        );
        // The filter's own parser accepts what we serve.
        let body = serde_json::to_vec(&config).unwrap();
        assert_eq!(canary_core::rollout::parse_answer(&body, "checkout").unwrap(), config);
    }

    #[test]
    fn promotes_after_the_window_and_not_before() {
        let (policy, state) = (policy(), started());
        let early = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 5 * MINUTE_MS - 1);
        assert_eq!(early.action, Action::Hold);
        assert!(early.reason.contains("window"), "{}", early.reason);
        let due = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 5 * MINUTE_MS);
        assert_eq!(due.action, Action::Promote { to_step: 1, share_bp: 500 });
        assert_eq!(due.actor, Actor::Analyzer);
        assert_eq!(due.rows, healthy());
        let mut state = state;
        step(&mut state, &due, T0 + 5 * MINUTE_MS);
        assert_eq!((state.step, state.share_bp, state.step_started_at_ms), (1, 500, T0 + 5 * MINUTE_MS));
        // The new step's window starts over.
        assert_eq!(
            decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 6 * MINUTE_MS).action,
            Action::Hold
        );
        assert_eq!(state.window_remaining(&policy, T0 + 6 * MINUTE_MS), Some(Duration::from_secs(240)));
    }

    #[test]
    fn rolls_back_mid_window_on_a_critical_regression() {
        let (policy, mut state) = (policy(), started());
        let mut rows = healthy();
        rows.insert(0, row("latency_p99_us", Verdict::Worse));
        rows.remove(2);
        let decision = decide(&policy, &state, &rows, &StepEvidence::ample(), T0 + MINUTE_MS);
        assert_eq!(decision.action, Action::Rollback);
        assert!(decision.reason.contains("latency_p99_us"), "{}", decision.reason);
        let before = state.generation;
        step(&mut state, &decision, T0 + MINUTE_MS);
        assert_eq!((state.share_bp, state.phase), (0, RolloutPhase::RolledBack));
        assert!(state.generation > before);
        // Finished: nothing more is decided.
        let after = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 60 * MINUTE_MS);
        assert_eq!(after.action, Action::Hold);
    }

    #[test]
    fn a_non_critical_regression_neither_rolls_back_nor_blocks_promotion() {
        let (policy, state) = (policy(), started());
        let mut rows = healthy();
        rows[2] = row("latency_p50_us", Verdict::Worse);
        assert_eq!(decide(&policy, &state, &rows, &StepEvidence::ample(), T0 + MINUTE_MS).action, Action::Hold);
        let due = decide(&policy, &state, &rows, &StepEvidence::ample(), T0 + 5 * MINUTE_MS);
        assert_eq!(due.action, Action::Promote { to_step: 1, share_bp: 500 });
        assert!(due.reason.contains("non-critical regressions: latency_p50_us"), "{}", due.reason);
        // A row for a metric the policy does not list at all is not critical either.
        let unknown = vec![row("error_rate", Verdict::NoDifference), row("latency_p99_us", Verdict::NoDifference)];
        let mut with_unknown = unknown.clone();
        with_unknown.push(row("something_else", Verdict::Worse));
        assert!(matches!(
            decide(&policy, &state, &with_unknown, &StepEvidence::ample(), T0 + 5 * MINUTE_MS).action,
            Action::Promote { .. }
        ));
    }

    #[test]
    fn holds_without_enough_data_on_a_critical_metric() {
        let (policy, state) = (policy(), started());
        let late = T0 + 50 * MINUTE_MS;
        let mut rows = healthy();
        rows[1] = row("latency_p99_us", Verdict::NotEnoughData);
        let decision = decide(&policy, &state, &rows, &StepEvidence::ample(), late);
        assert_eq!(decision.action, Action::Hold);
        assert!(decision.reason.contains("not enough data") && decision.reason.contains("latency_p99_us"));
        // A missing row is no data either.
        let missing = vec![row("error_rate", Verdict::NoDifference)];
        assert_eq!(decide(&policy, &state, &missing, &StepEvidence::ample(), late).action, Action::Hold);
        assert_eq!(decide(&policy, &state, &[], &StepEvidence::ample(), late).action, Action::Hold);
        // Not enough data on a non-critical metric does not hold.
        let mut rows = healthy();
        rows[2] = row("latency_p50_us", Verdict::NotEnoughData);
        assert!(matches!(decide(&policy, &state, &rows, &StepEvidence::ample(), late).action, Action::Promote { .. }));
    }

    #[test]
    fn a_step_without_its_own_data_is_held_even_on_earlier_steps_evidence() {
        // Healthy rows carried over from an earlier step, but every check at this step failed.
        let (policy, state) = (policy(), started());
        let mut outage = StepEvidence::new(state.generation);
        for _ in 0..20 {
            outage.record(
                CheckOutcome { had_data: false, canary_requests: 0, control_requests: 0, fleet_lagging: None },
                2,
            );
        }
        let held = decide(&policy, &state, &healthy(), &outage, T0 + 50 * MINUTE_MS);
        assert_eq!(held.action, Action::Hold);
        assert!(held.reason.contains("latest check found no data (20 of 20"), "{}", held.reason);
        // A critical regression still rolls back without this step's data.
        let mut worse = healthy();
        worse[0] = row("error_rate", Verdict::Worse);
        assert_eq!(decide(&policy, &state, &worse, &outage, T0 + MINUTE_MS).action, Action::Rollback);
    }

    #[test]
    fn climbing_the_whole_ladder_ends_promoted_with_growing_generations() {
        let policy = policy();
        let mut state = started();
        let mut now = T0;
        let mut generations = vec![state.generation];
        let mut shares = vec![state.share_bp];
        while !state.is_finished() {
            now += 5 * MINUTE_MS;
            let decision = decide(&policy, &state, &healthy(), &StepEvidence::ample(), now);
            assert!(matches!(decision.action, Action::Promote { .. }), "{decision:?}");
            step(&mut state, &decision, now);
            generations.push(state.generation);
            shares.push(state.share_bp);
        }
        assert_eq!(shares, [100, 500, 2_500, 5_000, 10_000]);
        assert!(generations.windows(2).all(|w| w[1] > w[0]), "{generations:?}");
        assert_eq!(state.phase, RolloutPhase::Promoted);
        assert!(
            decide(&policy, &state, &healthy(), &StepEvidence::ample(), now + 60 * MINUTE_MS).reason.contains("ended")
        );
        // A critical regression after the end changes nothing.
        let worse = vec![row("error_rate", Verdict::Worse)];
        assert_eq!(decide(&policy, &state, &worse, &StepEvidence::ample(), now + MINUTE_MS).action, Action::Hold);
    }

    #[test]
    fn holds_never_change_the_state() {
        let (policy, state) = (policy(), started());
        let hold = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + MINUTE_MS);
        assert!(!hold.changes_state());
        assert_eq!(state.next(&hold, T0 + MINUTE_MS).unwrap(), state);
    }

    #[test]
    fn a_paused_rollout_never_promotes_but_still_rolls_back() {
        let policy = policy();
        let mut state = started();
        let pause =
            human_override(&policy, &state, &OverrideAction::Pause, &by("alice"), "investigating", vec![]).unwrap();
        assert_eq!(pause.actor, Actor::Human("alice".into()));
        let generation = state.generation;
        step(&mut state, &pause, T0 + MINUTE_MS);
        assert_eq!((state.phase, state.share_bp), (RolloutPhase::Paused, 100));
        assert_eq!(state.generation, generation + 1, "the phase is served too");
        assert_eq!(state.window_remaining(&policy, T0 + MINUTE_MS), None);
        let long_after = T0 + 60 * MINUTE_MS;
        let held = decide(&policy, &state, &healthy(), &StepEvidence::ample(), long_after);
        assert_eq!(held.action, Action::Hold);
        assert!(held.reason.contains("paused"));
        let worse = vec![row("error_rate", Verdict::Worse)];
        assert_eq!(decide(&policy, &state, &worse, &StepEvidence::ample(), long_after).action, Action::Rollback);
        // Resuming restarts the window.
        let resume = human_override(&policy, &state, &OverrideAction::Resume, &by("alice"), "fine", vec![]).unwrap();
        step(&mut state, &resume, long_after);
        assert_eq!((state.phase, state.step_started_at_ms), (RolloutPhase::Progressing, long_after));
        assert_eq!(
            decide(&policy, &state, &healthy(), &StepEvidence::ample(), long_after + MINUTE_MS).action,
            Action::Hold
        );
        assert!(matches!(
            decide(&policy, &state, &healthy(), &StepEvidence::ample(), long_after + 5 * MINUTE_MS).action,
            Action::Promote { .. }
        ));
    }

    #[test]
    fn human_overrides_move_the_state_with_actor_and_reason() {
        let policy = policy();
        let mut state = started();
        let evidence = healthy();
        let promote =
            human_override(&policy, &state, &OverrideAction::Promote, &by("bob"), "  looks good  ", evidence.clone())
                .unwrap();
        assert_eq!(promote.action, Action::Promote { to_step: 1, share_bp: 500 });
        assert_eq!((promote.reason.as_str(), &promote.rows), ("looks good", &evidence));
        step(&mut state, &promote, T0 + MINUTE_MS);
        assert_eq!(state.share_bp, 500, "a human may promote before the window");

        let set = OverrideAction::SetShare { share_bp: 1_000 };
        let decision = human_override(&policy, &state, &set, &by("bob"), "hold at 10 %", vec![]).unwrap();
        assert_eq!(decision.action, Action::SetShare { to_step: 1, share_bp: 1_000 });
        step(&mut state, &decision, T0 + 2 * MINUTE_MS);
        assert_eq!((state.step, state.share_bp, state.step_started_at_ms), (1, 1_000, T0 + 2 * MINUTE_MS));
        // The next automatic promotion goes to the first ladder step above the share.
        let next = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 7 * MINUTE_MS);
        assert_eq!(next.action, Action::Promote { to_step: 2, share_bp: 2_500 });

        let full =
            human_override(&policy, &state, &OverrideAction::SetShare { share_bp: 10_000 }, &by("bob"), "ship", vec![]);
        let mut finished = state.clone();
        step(&mut finished, &full.unwrap(), T0 + 3 * MINUTE_MS);
        assert_eq!(finished.phase, RolloutPhase::Promoted, "100 % ends the rollout however it is reached");

        let rollback =
            human_override(&policy, &state, &OverrideAction::Rollback, &by("carol"), "pager", vec![]).unwrap();
        step(&mut state, &rollback, T0 + 4 * MINUTE_MS);
        assert_eq!((state.share_bp, state.phase), (0, RolloutPhase::RolledBack));
    }

    #[test]
    fn overrides_are_refused_when_they_make_no_sense() {
        let policy = policy();
        let state = started();
        let over = |action: OverrideAction, actor: &str, reason: &str| {
            human_override(&policy, &state, &action, &by(actor), reason, vec![]).unwrap_err()
        };
        assert_eq!(over(OverrideAction::Promote, "alice", " "), OverrideError::MissingReason);
        assert_eq!(over(OverrideAction::Promote, "", "why"), OverrideError::InvalidActor(String::new()));
        assert_eq!(over(OverrideAction::Promote, "analyzer", "why"), OverrideError::InvalidActor("analyzer".into()));
        assert!(matches!(over(OverrideAction::Resume, "alice", "why"), OverrideError::NotPaused(_)));
        assert_eq!(
            over(OverrideAction::SetShare { share_bp: 10_001 }, "a", "b"),
            OverrideError::ShareOutOfRange(10_001)
        );
        let mut paused = state.clone();
        paused.phase = RolloutPhase::Paused;
        let again = human_override(&policy, &paused, &OverrideAction::Pause, &by("alice"), "why", vec![]);
        assert!(matches!(again, Err(OverrideError::AlreadyPaused(_))));
        let mut ended = state.clone();
        ended.phase = RolloutPhase::RolledBack;
        let late = human_override(&policy, &ended, &OverrideAction::Promote, &by("alice"), "why", vec![]);
        assert!(matches!(late, Err(OverrideError::Finished { .. })));
        assert!(OverrideError::MissingReason.to_string().starts_with("an override"));
    }

    #[test]
    fn stale_or_misplaced_decisions_are_refused() {
        let policy = policy();
        let mut state = started();
        let promote = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 5 * MINUTE_MS);
        let rollback = human_override(&policy, &state, &OverrideAction::Rollback, &by("alice"), "bad", vec![]).unwrap();
        step(&mut state, &promote, T0 + 5 * MINUTE_MS);
        let stale = state.next(&rollback, T0 + 5 * MINUTE_MS).unwrap_err();
        assert_eq!(stale, TransitionError::Stale { decided: T0, current: T0 + 1 });
        let start = Decision::start(&state, Actor::Analyzer, "again");
        assert_eq!(state.next(&start, T0).unwrap_err(), TransitionError::NotApplicable(Action::Start));
        let mut ended = state.clone();
        ended.phase = RolloutPhase::Promoted;
        let late = Decision { action: Action::Rollback, ..Decision::start(&ended, Actor::Analyzer, "x") };
        assert!(matches!(ended.next(&late, T0).unwrap_err(), TransitionError::Finished { .. }));
    }

    #[test]
    fn decisions_and_actors_serialise_readably() {
        let decision =
            human_override(&policy(), &started(), &OverrideAction::SetShare { share_bp: 42 }, &by("dana"), "r", vec![])
                .unwrap();
        let json = serde_json::to_value(&decision).unwrap();
        assert_eq!(json["actor"], "dana");
        assert!(json.get("actor_note").is_none(), "no note, no field: {json}");
        assert_eq!(json["action"]["kind"], "set_share");
        assert_eq!(json["action"]["share_bp"], 42);
        let back: Decision = serde_json::from_value(json).unwrap();
        assert_eq!(back, decision);
        assert_eq!(serde_json::to_value(Actor::Analyzer).unwrap(), "analyzer");
        assert_eq!(serde_json::from_value::<Actor>("analyzer".into()).unwrap(), Actor::Analyzer);
        assert!(serde_json::from_value::<Actor>("".into()).is_err());
        // A caller's declared name rides beside the authenticated one, never in its place.
        let noted = ActedBy { actor: Actor::Human("token".into()), note: Some("dana".into()) };
        let decision = human_override(&policy(), &started(), &OverrideAction::Pause, &noted, "look", vec![]).unwrap();
        let json = serde_json::to_value(&decision).unwrap();
        assert_eq!((json["actor"].as_str(), json["actor_note"].as_str()), (Some("token"), Some("dana")));
        assert_eq!(decision.actor_text(), "token (note: dana)");
        assert_eq!(serde_json::from_value::<Decision>(json).unwrap(), decision);
        // A record written before notes existed still reads, with none.
        let old = r#"{"action":{"kind":"pause"},"reason":"r","actor":"dana","rows":[],"based_on_generation":3}"#;
        let old: Decision = serde_json::from_str(old).unwrap();
        assert_eq!((old.actor_note, old.actor), (None, Actor::Human("dana".into())));
        let state = started();
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<RolloutState>(&json).unwrap(), state);
    }
}
