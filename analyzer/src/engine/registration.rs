//! Registering a rollout: on its first step, or held at share 0 until the pipeline
//! marks the canary deployed ([`Start`]). Everything that can refuse the policy runs
//! before the audit append, and a registration supersedes a rollout still held.

use super::{Engine, EngineError, LiveRollout, MESH_NEEDS_PROMETHEUS, RolloutStatus, fleet_generation, recording};
use crate::ladder::{ActedBy, Decision, RolloutState};
use crate::policy::{Metric, RolloutPolicy};

/// How a registered rollout starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// On its first step at once (the canary is already deployed).
    #[default]
    Running,
    /// Held at share 0 (phase `pending`) until the pipeline marks the canary deployed.
    HeldForDeployment,
}

impl Engine {
    /// Registers (or restarts, once the previous one ended or while it is held for
    /// deployment) a rollout.
    /// `by` is `Actor::Analyzer` only for policies given at start; API callers are the
    /// identity their token names, with what they declared about themselves as a note.
    /// Everything that can refuse the policy runs before the audit append: a refused
    /// registration leaves no record, no state file and no served config.
    pub async fn register(
        &self,
        policy: RolloutPolicy,
        by: impl Into<ActedBy>,
        now_ms: u64,
    ) -> Result<RolloutStatus, EngineError> {
        self.register_with(policy, by, Start::Running, now_ms).await
    }

    /// [`Engine::register`], started as `start` says: on its first step, or held at
    /// share 0 until the pipeline marks the canary deployed ([`OverrideAction::Deployed`]).
    pub async fn register_with(
        &self,
        policy: RolloutPolicy,
        by: impl Into<ActedBy>,
        start: Start,
        now_ms: u64,
    ) -> Result<RolloutStatus, EngineError> {
        let mut inner = self.inner.lock().await;
        let deployment = policy.deployment.clone();
        let previous = match (inner.rollouts.get(&deployment), inner.broken.get(&deployment)) {
            (Some(live), _) => Some(live.state.clone()),
            (None, Some(broken)) => Some(broken.state.clone()),
            (None, None) => None,
        };
        // A rollout held for deployment has served nothing of its canary and decided
        // nothing: a new registration supersedes it (a pipeline run that stopped between
        // register and deployed, or the reset after a promotion, must not block the next).
        if previous.as_ref().is_some_and(|state| !state.is_finished() && !state.awaits_deployment()) {
            return Err(EngineError::InProgress(deployment));
        }
        if policy.source.is_some() && self.prometheus.is_none() {
            return Err(EngineError::InvalidPolicy(MESH_NEEDS_PROMETHEUS.to_string()));
        }
        let seen = fleet_generation::seen_ahead(inner.rollouts.get(&deployment), now_ms);
        let previous_generation = previous.as_ref().map_or(0, |s| s.generation).max(seen.unwrap_or(0));
        let (state, held) = match start {
            Start::Running => (RolloutState::start(&policy, previous_generation, now_ms), ""),
            Start::HeldForDeployment => (
                RolloutState::start_held(&policy, previous_generation, now_ms),
                ", held at 0 % until the canary is marked deployed",
            ),
        };
        let mut live = LiveRollout::new(policy, state, &self.source, &self.scrapes, &self.notifier)
            .map_err(|e| EngineError::InvalidPolicy(e.to_string()))?;
        let decision = Decision::start(&live.state, by, format!("registered with policy {:?}{held}", live.policy.name));
        recording::commit_logged(&mut inner.store, now_ms, &live.policy, &decision, previous.as_ref(), &live.state)?;
        let promql = |m: &crate::policy::MetricPolicy| matches!(m.metric, Metric::Custom(_) | Metric::CounterPair(_));
        if self.prometheus.is_none() && live.policy.metrics.iter().any(promql) {
            tracing::warn!(%deployment, "custom PromQL metrics need --prometheus; they will show no data");
        }
        live.rows = live.evaluation.rows(Vec::new())?;
        self.publish(&live.state);
        self.announce(&live, &decision, now_ms);
        let status = live.status(now_ms);
        inner.broken.remove(&deployment);
        self.forget_broken(&deployment);
        inner.rollouts.insert(deployment, live);
        Ok(status)
    }
}
