//! What the engine tells the webhooks ([`crate::notify`]): every committed decision
//! (a step, a rollback, a promotion, an approval needed), a stalled step once, and a
//! hold reason of a new kind once per step after the window passed (a deployment no
//! proxy serves is said once, as a stall, by [`Engine::note_not_served`]). The update carries the figures the formats render:
//! share, step, the key rows, the fleet, the hold reasons.

use canary_core::RolloutPhase;

use super::{Engine, LiveRollout};
use crate::fleet::FleetView;
use crate::hold::{HoldReason, hold_reasons};
use crate::ladder::{Action, Actor, Decision};
use crate::notify::{NotifiedRow, NotifyEvent, StatusUpdate};
use crate::present::{action_name, describe_row, verdict_name};
use crate::stats::Verdict;

/// Rows named in a chat message; the generic body carries them all.
const KEY_METRICS: usize = 4;

/// The event a committed decision is, for routing.
pub(super) fn event_of(decision: &Decision, phase_after: RolloutPhase) -> NotifyEvent {
    match decision.action {
        Action::Rollback => NotifyEvent::Rollback,
        Action::AwaitApproval { .. } => NotifyEvent::Approval,
        _ if phase_after == RolloutPhase::Promoted => NotifyEvent::Promotion,
        _ => NotifyEvent::Step,
    }
}

/// The name of a hold reason's kind (`requests_missing`), as the API tags it.
fn kind(reason: &HoldReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.get("kind").and_then(serde_json::Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

impl LiveRollout {
    /// The update for `event`, with the rollout's figures at `now_ms`.
    pub(super) fn update(
        &self,
        event: NotifyEvent,
        decision: &str,
        reason: String,
        actor: &str,
        now_ms: u64,
    ) -> StatusUpdate {
        let critical: Vec<_> = self.policy.critical_metrics().map(crate::policy::MetricPolicy::row_key).collect();
        StatusUpdate {
            event,
            deployment: self.state.deployment.clone(),
            decision: decision.to_string(),
            reason,
            actor: actor.to_string(),
            phase: self.state.phase,
            share_bp: self.state.share_bp,
            step: self.state.step.saturating_add(1),
            steps: u32::try_from(self.policy.ladder.len()).unwrap_or(u32::MAX),
            next_step_in_s: self.state.window_remaining(&self.policy, now_ms).map(|d| d.as_secs()),
            key_metrics: self
                .rows
                .iter()
                .filter(|r| r.verdict != Verdict::NotEnoughData)
                .take(KEY_METRICS)
                .map(describe_row)
                .collect(),
            rows: self
                .rows
                .iter()
                .map(|row| NotifiedRow {
                    metric: row.metric.clone(),
                    canary: row.value_text(row.canary),
                    control: row.value_text(row.control),
                    verdict: verdict_name(row.verdict).to_string(),
                    critical: critical.contains(&row.key()),
                })
                .collect(),
            fleet: self.fleet.as_ref().map(FleetView::summary),
            holds: hold_reasons(&self.hold_inputs(now_ms)),
            dashboard_url: None,
            at_ms: now_ms,
        }
    }
}

impl Engine {
    /// Announces a committed decision.
    pub(super) fn announce(&self, live: &LiveRollout, decision: &Decision, now_ms: u64) {
        let event = event_of(decision, live.state.phase);
        let update =
            live.update(event, action_name(&decision.action), decision.reason.clone(), &decision.actor_text(), now_ms);
        live.notifier.send(update);
    }

    /// Marks a step that has gone too long without earning its promotion, and says so
    /// once per step: a warning in the log and one webhook post.
    pub(super) fn note_stall(&self, live: &mut LiveRollout, now_ms: u64) {
        let policy = &live.policy;
        live.stalled = match (live.state.phase, policy.step(live.state.step)) {
            (RolloutPhase::Progressing, Some(step)) => live.step_evidence.stalled(
                step.window,
                policy.check_interval,
                policy.min_requests_per_cohort,
                policy.stall_after_windows,
            ),
            _ => None,
        };
        let Some(stalled) = live.stalled.clone() else { return };
        if live.step_evidence.stall_announced {
            return;
        }
        live.step_evidence.stall_announced = true;
        tracing::warn!(deployment = %live.state.deployment, share_bp = live.state.share_bp, "{stalled}");
        live.notifier.send(live.update(NotifyEvent::Stall, "stalled", stalled, Actor::Analyzer.name(), now_ms));
    }

    /// After a check that held: posts a `hold` update when a reason of a kind not yet
    /// announced at this step holds the rollout, once its window has passed (before,
    /// the window itself holds it and says so). Kinds announced are forgotten at the
    /// next step, so a step announces each kind at most once.
    pub(super) fn note_holds(&self, live: &mut LiveRollout, now_ms: u64) {
        let reasons = hold_reasons(&live.hold_inputs(now_ms));
        if reasons.iter().any(|r| matches!(r, HoldReason::WindowRunning { .. } | HoldReason::NotServed { .. })) {
            // The window runs, or the one-time not-served warning ([`Engine::note_not_served`]) speaks.
            return;
        }
        let new: Vec<&HoldReason> =
            reasons.iter().filter(|reason| !live.announced_hold_kinds.contains(&kind(reason))).collect();
        if new.is_empty() {
            return;
        }
        live.announced_hold_kinds.extend(new.iter().map(|reason| kind(reason)));
        let reason = new.iter().map(|r| crate::present::hold_text(r)).collect::<Vec<_>>().join("; ");
        live.notifier.send(live.update(NotifyEvent::Hold, "held", reason, Actor::Analyzer.name(), now_ms));
    }
}
