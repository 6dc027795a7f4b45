//! Catching up with proxies that apply a later generation than the analyzer serves.
//!
//! The filter applies an answer only if its generation is not older than the one it
//! has (`canary_core::rollout::merge`). An analyzer whose state is older than the
//! fleet's — its state directory restored from an older backup, or another analyzer
//! having served the same deployment — serves generation N while the proxies hold
//! N + k: they ignore every answer, a rollback included, until the generations pass.
//! When a check sees that (the filter's `canary_applied_generation` gauges), the
//! analyzer serves its state again under a generation above the highest one seen, and
//! records why; from then on each decision reaches the proxies at once.
//!
//! Only a running rollout (progressing or paused) is re-served. A finished one is not:
//! proxies on a later generation then hold a rollout the analyzer has lost, and forcing
//! a promoted rollout's 100 % onto them would send everyone to whatever the canary
//! upstream now runs. They keep what they have until the filter's `stale_after_ms`
//! (its `when_stale` then applies), and the deployment's next registration starts
//! above the highest generation seen.

use super::{Action, Actor, Decision, RolloutState, percent};
use crate::stats::ComparisonRow;

/// How far above the clock (in ms) a generation seen at a proxy may be and still be
/// believed: a year. Generations start at the registration's clock reading and grow by
/// one per change, so a real one is at most a clock skew plus a few thousand changes
/// ahead. A gauge far beyond that (garbage, another exporter's series) must not pull
/// the served generation up to `u64::MAX`, where it could grow no more and every later
/// answer, rollbacks included, would be ignored.
const MAX_GENERATION_LEAD_MS: u64 = 365 * 24 * 3_600 * 1_000;

/// The decision that serves `state` again above `highest_seen`, the highest generation
/// a proxy applies; `None` when no proxy is ahead, the rollout has ended, or the
/// generation seen is not believable (see [`MAX_GENERATION_LEAD_MS`]). `rows` is the
/// latest report, kept as the evidence of the record.
pub fn resync(state: &RolloutState, highest_seen: u64, rows: &[ComparisonRow], now_ms: u64) -> Option<Decision> {
    if highest_seen <= state.generation || state.is_finished() || !believable(highest_seen, now_ms) {
        return None;
    }
    let reason = format!(
        "proxies apply generation {highest_seen}, above the {served} this analyzer serves (its state is older \
         than theirs: a state directory restored from an older copy, or another analyzer served them), so they \
         would ignore every answer; serving the same {share} ({phase:?}) again above it",
        served = state.generation,
        share = percent(state.share_bp),
        phase = state.phase,
    );
    Some(Decision {
        action: Action::Resync { above_generation: highest_seen },
        reason,
        actor: Actor::Analyzer,
        actor_note: None,
        rows: rows.to_vec(),
        based_on_generation: state.generation,
    })
}

/// Whether a generation seen at a proxy can be one an analyzer served by `now_ms`.
pub fn believable(generation: u64, now_ms: u64) -> bool {
    generation <= now_ms.saturating_add(MAX_GENERATION_LEAD_MS)
}
