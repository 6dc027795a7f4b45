//! An analyzer whose state is older than the fleet's (a state directory restored from
//! an older backup) serves a generation the proxies already passed, so they would
//! ignore it: each check looks at the generations the proxies report and, when one is
//! above the served generation, commits [`crate::ladder::resync`] before deciding.
//! A new rollout of the deployment starts above the generation last seen too: after a
//! finished rollout (which is not re-served) the proxies may hold one this analyzer lost.

use super::{Engine, EngineError, LiveRollout};
use crate::audit::RolloutStore;
use crate::fleet::FleetView;
use crate::ladder::{believable_generation, resync};
use crate::source::IntervalMetrics;

impl Engine {
    /// Serves the state again above the generation the proxies apply when they are ahead
    /// of it (see [`crate::ladder::resync`]), so that what is decided next reaches them.
    pub(super) fn catch_up_with_the_fleet(
        &self,
        store: &mut RolloutStore,
        live: &mut LiveRollout,
        interval: &IntervalMetrics,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let Some(ahead) = live.fleet.as_ref().and_then(FleetView::ahead) else { return Ok(()) };
        match resync(&live.state, ahead, &live.rows, now_ms) {
            Some(decision) => {
                tracing::warn!(
                    deployment = %live.state.deployment, served = live.state.generation, proxies = ahead,
                    "proxies apply a later generation than this analyzer serves; serving its state above it"
                );
                self.commit(store, live, &decision, now_ms)?;
                live.fleet = Some(FleetView::new(live.state.generation, &interval.proxies));
            }
            None if !believable_generation(ahead, now_ms) => tracing::warn!(
                deployment = %live.state.deployment, generation = ahead,
                "a proxy reports a generation far beyond any this analyzer could have served; not followed"
            ),
            None => {}
        }
        Ok(())
    }
}

/// The highest believable generation the proxies of `previous` (the deployment's last
/// rollout) were seen to apply above what it served: where a new rollout must start above.
pub(super) fn seen_ahead(previous: Option<&LiveRollout>, now_ms: u64) -> Option<u64> {
    previous
        .and_then(|live| live.fleet.as_ref()?.ahead())
        .filter(|&generation| believable_generation(generation, now_ms))
}
