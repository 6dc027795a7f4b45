//! Shared data (`poll::Published::decode`, `poll::lease_is_due`): bytes another VM
//! wrote, possibly an older filter version, possibly torn or from another plugin
//! using the same key. Unreadable records must be treated as absent, never trap.

use crate::support::{self, bounded};
use canary_core::FilterConfig;
use canary_core::config::AnalyzerConfig;
use canary_core::poll::{Published, lease_is_due, renewed_lease};
use canary_core::rollout::{RolloutConfig, RolloutPhase};
use proptest::prelude::*;

fn analyzer() -> AnalyzerConfig {
    let json = br#"{"deployment":"checkout","analyzer":{"cluster":"analyzer","poll_interval_ms":1000}}"#;
    FilterConfig::parse(json).unwrap().analyzer.unwrap()
}

proptest! {
    #![proptest_config(support::config(support::CASES))]

    #[test]
    fn published_records_round_trip_and_mutations_never_panic(
        generation in any::<u64>(),
        share_bp in 0u32..=10_000,
        confirmed_ms in any::<u64>(),
        now_ms in any::<u64>(),
        edits in support::edits(4),
    ) {
        let rollout = RolloutConfig { deployment: "checkout".into(), generation, share_bp, state: RolloutPhase::Paused };
        let published = Published::one(rollout, confirmed_ms);
        prop_assert_eq!(Published::decode(&published.encode()), Some(published.clone()));
        let mutated = support::mutate(published.encode(), &edits);
        if let Some(decoded) = bounded("Published::decode", || Published::decode(&mutated)) {
            // Readable after all: its age is computed without overflow.
            let _ = decoded.is_stale(&analyzer(), now_ms);
        }
    }

    #[test]
    fn any_lease_bytes_are_read_without_panic(stored in prop::collection::vec(any::<u8>(), 0..16), now_ms in any::<u64>()) {
        let analyzer = analyzer();
        let _ = lease_is_due(Some(&stored), &analyzer, now_ms);
        let renewed = renewed_lease(&analyzer, now_ms);
        prop_assert!(!lease_is_due(Some(&renewed), &analyzer, now_ms) || now_ms == u64::MAX);
    }
}
