//! The engine's side of [`crate::hold`]: what a rollout's hold reasons are computed
//! from, and the one-time warning (log and webhook) when no proxy serves its deployment.

use super::{Engine, LiveRollout};
use crate::hold::{HoldInputs, HoldReason, hold_reasons};
use crate::ladder::Actor;
use crate::notify::NotifyEvent;

impl LiveRollout {
    pub(super) fn hold_inputs(&self, now_ms: u64) -> HoldInputs<'_> {
        HoldInputs {
            policy: &self.policy,
            state: &self.state,
            evidence: &self.step_evidence,
            rows: &self.rows,
            fleet: self.fleet.as_ref(),
            now_ms,
        }
    }
}

impl Engine {
    /// Says once, in the log and one webhook post, that no proxy serves the deployment
    /// (again if it is served in between).
    pub(super) fn note_not_served(&self, live: &mut LiveRollout, now_ms: u64) {
        let reasons = hold_reasons(&live.hold_inputs(now_ms));
        let not_served = reasons.iter().find(|reason| matches!(reason, HoldReason::NotServed { .. }));
        let Some(reason) = not_served.map(crate::present::hold_text) else {
            live.not_served_announced = false;
            return;
        };
        if std::mem::replace(&mut live.not_served_announced, true) {
            return;
        }
        tracing::warn!(deployment = %live.state.deployment, "{reason}");
        let update = live.update(NotifyEvent::Stall, "held", reason, Actor::Analyzer.name(), now_ms);
        live.notifier.send(update);
    }
}
