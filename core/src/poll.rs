//! Polling across worker VMs: one poller per Envoy per interval, one published answer.
//!
//! Every VM (each worker and the main thread) ticks. A VM whose tick finds the
//! poll lease due tries to renew it with compare-and-swap in shared data; only
//! the winner calls the analyzer. The accepted answer is published in shared
//! data with the time it was last confirmed, and every VM derives the share it
//! routes with from that record on its own ticks.

use crate::cohort::Share;
use crate::config::{AnalyzerConfig, WhenStale};
use crate::rollout::RolloutConfig;
use serde::{Deserialize, Serialize};

/// Shared-data keys are prefixed per deployment: Istio sets no `vm_id`, so every
/// plugin in a proxy shares one namespace.
pub fn lease_key(deployment: &str) -> String {
    format!("wasm_canary/{deployment}/poll_lease")
}

pub fn published_key(deployment: &str) -> String {
    format!("wasm_canary/{deployment}/rollout")
}

/// The lease value: when the next poll is due, milliseconds since the epoch, little-endian.
fn lease_value(next_due_ms: u64) -> [u8; 8] {
    next_due_ms.to_le_bytes()
}

/// The lease a VM writes when it takes the poll: due again one poll interval from now.
pub fn renewed_lease(analyzer: &AnalyzerConfig, now_ms: u64) -> [u8; 8] {
    lease_value(now_ms.saturating_add(u64::from(analyzer.poll_interval_ms)))
}

/// Whether a VM should try to take the lease now. A missing or unreadable lease is due.
pub fn lease_is_due(stored: Option<&[u8]>, _analyzer: &AnalyzerConfig, now_ms: u64) -> bool {
    match stored.and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        Some(bytes) => now_ms >= u64::from_le_bytes(bytes),
        None => true,
    }
}

/// The rollout config in force, as published in shared data for every VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub rollout: RolloutConfig,
    /// When the analyzer last confirmed this config (ms since the epoch).
    pub confirmed_ms: u64,
}

impl Published {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for anything unreadable: a VM then keeps what it had.
    pub fn decode(bytes: &[u8]) -> Option<Published> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn is_stale(&self, analyzer: &AnalyzerConfig, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.confirmed_ms) > u64::from(analyzer.stale_after_ms)
    }
}

/// The share a VM routes with: the published one, or the initial share before the
/// first answer, or 0 once stale under `when_stale: control`.
pub fn effective_share(
    published: Option<&Published>,
    analyzer: Option<&AnalyzerConfig>,
    initial: Share,
    now_ms: u64,
) -> Share {
    match (published, analyzer) {
        (Some(p), Some(a)) if a.when_stale == WhenStale::Control && p.is_stale(a, now_ms) => Share::ZERO,
        (Some(p), _) => p.rollout.share(),
        (None, _) => initial,
    }
}

/// How often each VM ticks: a quarter of the poll interval, so a published change
/// reaches every worker well within one interval of being published.
pub fn tick_period_ms(analyzer: &AnalyzerConfig) -> u32 {
    (analyzer.poll_interval_ms / 4).max(25)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FilterConfig;
    use crate::rollout::RolloutPhase;

    fn analyzer(when_stale: &str) -> AnalyzerConfig {
        let json = format!(
            r#"{{"deployment":"checkout","analyzer":{{"cluster":"a","poll_interval_ms":1000,"stale_after_ms":5000,"when_stale":"{when_stale}"}}}}"#
        );
        FilterConfig::parse(json.as_bytes()).unwrap().analyzer.unwrap()
    }

    fn published(share_bp: u32, confirmed_ms: u64) -> Published {
        let rollout =
            RolloutConfig { deployment: "checkout".into(), generation: 4, share_bp, state: RolloutPhase::Progressing };
        Published { rollout, confirmed_ms }
    }

    #[test]
    fn lease_is_due_when_missing_garbled_or_expired() {
        let a = analyzer("keep");
        assert!(lease_is_due(None, &a, 0));
        assert!(lease_is_due(Some(b"xyz"), &a, 0));
        let taken_at_0 = renewed_lease(&a, 0);
        assert!(!lease_is_due(Some(&taken_at_0), &a, 999));
        assert!(lease_is_due(Some(&taken_at_0), &a, 1_000));
    }

    #[test]
    fn published_round_trips_and_garbage_is_none() {
        let p = published(500, 42);
        assert_eq!(Published::decode(&p.encode()), Some(p));
        assert_eq!(Published::decode(b"{"), None);
    }

    #[test]
    fn staleness_keeps_or_drops_the_share_as_configured() {
        let initial = Share::from_basis_points(100).unwrap();
        let five = Share::from_basis_points(500).unwrap();
        let (keep, control) = (analyzer("keep"), analyzer("control"));
        let p = published(500, 10_000);
        assert_eq!(effective_share(None, Some(&keep), initial, 0), initial);
        assert_eq!(effective_share(Some(&p), Some(&keep), initial, 15_000), five, "at the limit: fresh");
        assert_eq!(effective_share(Some(&p), Some(&keep), initial, 99_000), five, "stale, keep");
        assert_eq!(effective_share(Some(&p), Some(&control), initial, 15_000), five);
        assert_eq!(effective_share(Some(&p), Some(&control), initial, 15_001), Share::ZERO, "stale, control");
        assert_eq!(tick_period_ms(&keep), 250);
    }
}
