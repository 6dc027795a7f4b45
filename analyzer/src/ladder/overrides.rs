//! A human's override (promote, roll back, pause, resume, set a share, approve a
//! step) and the pipeline's "deployed", checked against the state before it is
//! logged or applied.

use canary_core::RolloutPhase;

use super::{ActedBy, Action, Actor, Decision, FULL_SHARE_BP, OverrideAction, OverrideError, RolloutState};
use crate::policy::RolloutPolicy;
use crate::stats::ComparisonRow;

/// A human's override, checked against the state: the reason is required, the
/// actor must be a named caller (not the analyzer), and a finished rollout takes no more overrides.
/// `rows` is the latest report, kept as the evidence the human saw.
///
/// A human promote skips the window and the data requirement and goes to the
/// next ladder step above the share; a set share restarts the window of the
/// ladder step at that share, and the next promotion goes to the first step
/// above it. Both keep a paused rollout paused; either reaching 100 % ends the
/// rollout as promoted.
///
/// A rollout held for deployment takes `deployed` (its first step starts) or a
/// rollback, nothing else. `approve` is for a step whose policy asks for it, once.
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
    let pending = state.awaits_deployment();
    let action = match *action {
        OverrideAction::Deployed if !pending => {
            return Err(OverrideError::NotAwaitingDeployment(state.deployment.clone()));
        }
        OverrideAction::Deployed => Action::Deployed { share_bp: policy.step(state.step).map_or(0, |s| s.share_bp) },
        // Held for deployment: only a rollback (the deploy failed) may come before it.
        OverrideAction::Rollback => Action::Rollback,
        _ if pending => return Err(OverrideError::AwaitingDeployment(state.deployment.clone())),
        OverrideAction::Approve if !policy.step(state.step).is_some_and(|s| s.approval_required) => {
            return Err(OverrideError::NoApprovalNeeded {
                deployment: state.deployment.clone(),
                step: state.step.saturating_add(1),
            });
        }
        OverrideAction::Approve if state.approved_step == Some(state.step) => {
            return Err(OverrideError::AlreadyApproved {
                deployment: state.deployment.clone(),
                step: state.step.saturating_add(1),
            });
        }
        OverrideAction::Approve => Action::Approve { step: state.step },
        OverrideAction::Promote => match policy.next_step_above(state.share_bp) {
            Some((to_step, step)) => Action::Promote { to_step, share_bp: step.share_bp },
            // Above the top of the ladder already: finish it.
            None => Action::Promote { to_step: state.step, share_bp: FULL_SHARE_BP },
        },
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
