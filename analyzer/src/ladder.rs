//! The rollout state machine: where a rollout stands on its ladder, what the
//! analyzer (or a human) decides from a comparison report, and how a decision
//! moves the state.
//!
//! Pure: time is the `now_ms` parameter (Unix milliseconds), nothing here reads
//! a clock or touches a file, so every rule is a fast unit test. The caller
//! writes the decision to the audit log ([`crate::audit`]) with the state
//! before and after, and only then lets it take effect.
//!
//! This module holds the state, the decision records and the transitions; the
//! automatic rules are in [`decide`](decide()), a human's overrides in
//! [`human_override`], catching up with proxies on a later generation in [`resync`](resync()).
//!
//! Every change of what the filter is served (share or phase) bumps the
//! generation, because the filter ignores a different answer with an old one.

mod decide;
mod overrides;
mod resync;
#[cfg(test)]
mod tests;
pub use decide::decide;
pub use overrides::human_override;
pub use resync::{believable as believable_generation, resync};

use std::time::Duration;

use canary_core::{RolloutConfig, RolloutPhase};
use serde::{Deserialize, Serialize};

use crate::policy::RolloutPolicy;
use crate::stats::ComparisonRow;

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
    /// The step an operator approved ([`Action::Approve`]); a step whose policy asks for
    /// approval is promoted only when this names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_step: Option<u32>,
    /// The current step ran its window cleanly and waits for an operator's approval
    /// ([`Action::AwaitApproval`] recorded it, once, with the evidence).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_approval: bool,
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
    /// The same share and phase served again above a generation the proxies already
    /// apply (an analyzer on a state older than theirs, see [`resync`]): the filter
    /// ignores answers older than what it has, so nothing decided would reach them.
    Resync { above_generation: u64 },
    /// The pipeline has deployed the canary: a rollout registered held (phase
    /// `pending`, share 0) starts its first step, at that step's share.
    Deployed { share_bp: u32 },
    /// The step ran its window cleanly and its policy asks for an operator's approval
    /// before promotion: recorded once, and announced as "approval needed".
    AwaitApproval { step: u32 },
    /// An operator approved the promotion of `step`; the next clean check promotes.
    Approve { step: u32 },
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
    /// The pipeline deployed the canary image: a held registration starts.
    Deployed,
    /// Approve the promotion of a step whose policy asks for approval.
    Approve,
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
    #[error(
        "rollout of {0} is held until its canary is deployed: mark it deployed first (`canary-analyzer deployed {0}`)"
    )]
    AwaitingDeployment(String),
    #[error("rollout of {0} is not held for deployment (it was registered without --start-held, or has started)")]
    NotAwaitingDeployment(String),
    #[error("step {step} of {deployment} needs no approval (its ladder step has no `approval: required`)")]
    NoApprovalNeeded { deployment: String, step: u32 },
    #[error("step {step} of {deployment} is already approved")]
    AlreadyApproved { deployment: String, step: u32 },
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
            approved_step: None,
            awaiting_approval: false,
        }
    }

    /// A new rollout held for deployment: phase `pending`, share 0 (every user on
    /// stable) until [`Action::Deployed`] starts its first step. A pipeline registers
    /// this way before it replaces the canary's image, so an image an earlier rollout
    /// rejected is never served while the new one is being deployed.
    pub fn start_held(policy: &RolloutPolicy, previous_generation: u64, now_ms: u64) -> RolloutState {
        RolloutState {
            share_bp: 0,
            phase: RolloutPhase::Pending,
            ..RolloutState::start(policy, previous_generation, now_ms)
        }
    }

    /// Whether the rollout waits for the pipeline to deploy its canary.
    pub fn awaits_deployment(&self) -> bool {
        self.phase == RolloutPhase::Pending
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
                next.approved_step = None;
                next.awaiting_approval = false;
                if share_bp == FULL_SHARE_BP {
                    next.phase = RolloutPhase::Promoted;
                }
            }
            Action::Rollback => {
                next.share_bp = 0;
                next.phase = RolloutPhase::RolledBack;
            }
            Action::Resync { above_generation } => {
                next.generation = self.generation.max(above_generation).saturating_add(1);
            }
            Action::Deployed { share_bp } => {
                if !self.awaits_deployment() {
                    return Err(TransitionError::NotApplicable(decision.action));
                }
                if share_bp > FULL_SHARE_BP {
                    return Err(TransitionError::ShareOutOfRange(share_bp));
                }
                next.share_bp = share_bp;
                next.step_started_at_ms = now_ms;
                next.phase = if share_bp >= FULL_SHARE_BP { RolloutPhase::Promoted } else { RolloutPhase::Progressing };
            }
            Action::AwaitApproval { step } => {
                next.awaiting_approval = step == self.step;
            }
            Action::Approve { step } => {
                next.approved_step = Some(step);
                next.awaiting_approval = false;
            }
            Action::Pause => next.phase = RolloutPhase::Paused,
            Action::Resume => {
                next.phase = RolloutPhase::Progressing;
                next.step_started_at_ms = now_ms;
            }
        }
        let served_changed = next.share_bp != self.share_bp || next.phase != self.phase;
        if served_changed && next.generation == self.generation {
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
