//! Polling across worker VMs: one poller per Envoy per interval, one published answer.
//!
//! Every VM (each worker and the main thread) ticks. A VM whose tick finds the
//! poll lease due tries to renew it with compare-and-swap in shared data; only
//! the winner calls the analyzer. The accepted answer is published in shared
//! data with the time it was last confirmed, and every VM derives the share it
//! routes with from that record on its own ticks.
//!
//! Both records hold wall-clock times, the only clock proxy-wasm offers, so both
//! are checked against a step of that clock: a lease or a confirmation further
//! ahead than one interval and a tick was written before a step back, and makes
//! the lease due and the config stale at once (a step forward does both anyway).

use crate::cohort::Share;
use crate::config::{AnalyzerConfig, WhenStale};
use crate::rollout::RolloutConfig;
use serde::{Deserialize, Serialize};

/// Shared-data keys are prefixed per poll scope ([`AnalyzerConfig::scope`]: the
/// deployment id in the single form): Istio sets no `vm_id`, so every plugin in a
/// proxy shares one namespace.
pub fn lease_key(scope: &str) -> String {
    format!("wasm_canary/{scope}/poll_lease")
}

pub fn published_key(scope: &str) -> String {
    format!("wasm_canary/{scope}/rollout")
}

/// How far ahead of a VM's wall clock a time written in shared data may lie and
/// still be believed: one poll interval plus one tick period (a quarter interval).
///
/// proxy-wasm gives the filter only wall-clock time, which NTP or an operator can
/// step. A lease is honestly due at most one interval after its writer's clock read;
/// another VM may have read its own clock a little earlier and been scheduled after
/// the writer, which takes microseconds to milliseconds, far below the 25 ms minimum
/// tick. A confirmation is written after the lease it answers (the poll timeout is at
/// most one interval), so it never lies further ahead than that lease: past this lead
/// both are treated as written before the clock stepped back, on the same tick. A
/// step back within this lead delays the next poll and the staleness by at most it.
fn believable_lead_ms(analyzer: &AnalyzerConfig) -> u64 {
    u64::from(analyzer.poll_interval_ms) + u64::from(tick_period_ms(analyzer))
}

/// The lease value: when the next poll is due, milliseconds since the epoch, little-endian.
fn lease_value(next_due_ms: u64) -> [u8; 8] {
    next_due_ms.to_le_bytes()
}

/// The lease a VM writes when it takes the poll: due again one poll interval from now.
pub fn renewed_lease(analyzer: &AnalyzerConfig, now_ms: u64) -> [u8; 8] {
    lease_value(now_ms.saturating_add(u64::from(analyzer.poll_interval_ms)))
}

/// Whether a VM should try to take the lease now. A missing or unreadable lease is
/// due, and so is one due further ahead than a lease can be (the clock stepped back).
pub fn lease_is_due(stored: Option<&[u8]>, analyzer: &AnalyzerConfig, now_ms: u64) -> bool {
    match stored.and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        Some(bytes) => {
            let due_ms = u64::from_le_bytes(bytes);
            now_ms >= due_ms || due_ms > now_ms.saturating_add(believable_lead_ms(analyzer))
        }
        None => true,
    }
}

/// The rollout configs in force, as published in shared data for every VM: one per
/// deployment the analyzer answered for (a deployment it does not know has none and
/// routes with its initial share), and when the analyzer last confirmed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub rollouts: Vec<RolloutConfig>,
    /// When the analyzer last confirmed these configs (ms since the epoch).
    pub confirmed_ms: u64,
    /// The batch answer's revision, sent back in `If-None-Match` (list form only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// The record as a filter that served one deployment wrote it: read so that
/// replacing the module in a running Envoy keeps the share in force.
#[derive(Deserialize)]
struct PublishedOne {
    rollout: RolloutConfig,
    confirmed_ms: u64,
}

impl Published {
    /// One deployment's record, as the single form publishes it.
    pub fn one(rollout: RolloutConfig, confirmed_ms: u64) -> Published {
        Published { rollouts: vec![rollout], confirmed_ms, revision: None }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for anything unreadable: a VM then keeps what it had.
    pub fn decode(bytes: &[u8]) -> Option<Published> {
        serde_json::from_slice(bytes).ok().or_else(|| {
            let one: PublishedOne = serde_json::from_slice(bytes).ok()?;
            Some(Published::one(one.rollout, one.confirmed_ms))
        })
    }

    /// The rollout of `deployment`, if the analyzer answered for it.
    pub fn rollout(&self, deployment: &str) -> Option<&RolloutConfig> {
        self.rollouts.iter().find(|r| r.deployment == deployment)
    }

    /// How long ago the analyzer confirmed this config; `None` when the confirmation
    /// lies further ahead of `now_ms` than a confirmation can (the clock stepped back
    /// since, so its age is unknown). One slightly ahead counts as age 0.
    pub fn age_ms(&self, analyzer: &AnalyzerConfig, now_ms: u64) -> Option<u64> {
        if self.confirmed_ms > now_ms.saturating_add(believable_lead_ms(analyzer)) {
            return None;
        }
        Some(now_ms.saturating_sub(self.confirmed_ms))
    }

    /// Older than `stale_after_ms`, or of unknown age. Unknown age counts as stale so a
    /// confirmation from before a step back cannot pass for fresh until the clock
    /// catches up; the lease written with it is due on the same tick, so a reachable
    /// analyzer re-confirms at the new clock within one tick.
    pub fn is_stale(&self, analyzer: &AnalyzerConfig, now_ms: u64) -> bool {
        self.age_ms(analyzer, now_ms).is_none_or(|age| age > u64::from(analyzer.stale_after_ms))
    }
}

/// One deployment's part of the published record: its rollout and the record's
/// confirmation time.
#[derive(Debug, Clone, Copy)]
pub struct Applying<'a> {
    pub record: &'a Published,
    pub rollout: &'a RolloutConfig,
}

/// The share a VM routes with for one deployment: the published one, or the initial
/// share before the first answer for it, or 0 once stale under `when_stale: control`.
pub fn effective_share(
    applying: Option<Applying>,
    analyzer: Option<&AnalyzerConfig>,
    initial: Share,
    now_ms: u64,
) -> Share {
    match (applying, analyzer) {
        (Some(p), Some(a)) if a.when_stale == WhenStale::Control && p.record.is_stale(a, now_ms) => Share::ZERO,
        (Some(p), _) => p.rollout.share(),
        (None, _) => initial,
    }
}

/// The shortest tick: 40 ticks a second, each a shared-data read or two, is the most
/// a VM spends on polling.
pub const TICK_FLOOR_MS: u32 = 25;

/// How often each VM ticks: a quarter of the poll interval, so a published change
/// reaches every worker well within one interval of being published.
pub fn tick_period_ms(analyzer: &AnalyzerConfig) -> u32 {
    (analyzer.poll_interval_ms / 4).max(TICK_FLOOR_MS)
}

/// How often a VM ticks now: at the floor while it has no published rollout and was
/// configured less than one poll interval ago, else every [`tick_period_ms`].
///
/// A VM finds no published rollout when no VM of its `vm_id` lived before it: at
/// Envoy's start, or after the last one went (Envoy erases a `vm_id`'s shared data with
/// it; under Istio, when istio-agent replaced a module it could not fetch with an RBAC
/// filter and then fetched one). Until the first answer it routes with
/// `initial_share_bp`. At the floor the first poll goes out within 25 ms and every VM
/// reads its answer within 25 ms of publication, instead of a quarter interval each
/// (1.25 s with the shipped 5 s). The one-interval bound keeps a VM whose analyzer
/// cannot be reached from ticking at the floor for ever.
pub fn current_tick_period_ms(analyzer: &AnalyzerConfig, has_rollout: bool, configured_for_ms: u64) -> u32 {
    if !has_rollout && configured_for_ms < u64::from(analyzer.poll_interval_ms) {
        TICK_FLOOR_MS
    } else {
        tick_period_ms(analyzer)
    }
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
        Published::one(rollout, confirmed_ms)
    }

    fn applying(p: &Published) -> Option<Applying<'_>> {
        p.rollouts.first().map(|rollout| Applying { record: p, rollout })
    }

    /// A wall-clock time in 2023, far from 0 so a step back of an hour cannot wrap.
    const EPOCH_MS: u64 = 1_700_000_000_000;
    /// The step back (or forward) of the defect report: one hour.
    const HOUR_MS: u64 = 3_600_000;

    /// One Envoy's polling, modelled tick by tick as root.rs drives it: the lease and
    /// the published record in shared data, at most one analyzer call in flight, whose
    /// answer lands before the next tick (the poll's round trip is shorter than a tick).
    struct SimulatedEnvoy {
        analyzer: AnalyzerConfig,
        lease: Option<[u8; 8]>,
        published: Option<Published>,
        in_flight: bool,
        polls: u32,
    }

    impl SimulatedEnvoy {
        fn new(analyzer: AnalyzerConfig) -> Self {
            Self { analyzer, lease: None, published: None, in_flight: false, polls: 0 }
        }

        /// One tick at `now_ms`: the answer to the poll in flight lands (`answer` is
        /// `None` while the analyzer is unreachable), then the share is derived, then
        /// the lease is tried. Returns the share this tick routes with.
        fn tick(&mut self, now_ms: u64, answer: Option<&RolloutConfig>) -> Share {
            if std::mem::take(&mut self.in_flight) {
                if let Some(rollout) = answer {
                    self.published = Some(Published::one(rollout.clone(), now_ms));
                }
            }
            let share =
                effective_share(self.published.as_ref().and_then(applying), Some(&self.analyzer), Share::ZERO, now_ms);
            if lease_is_due(self.lease.as_ref().map(|l| l.as_slice()), &self.analyzer, now_ms) {
                self.lease = Some(renewed_lease(&self.analyzer, now_ms));
                self.in_flight = true;
                self.polls += 1;
            }
            share
        }

        /// Ticks from `start_ms` for `for_ms`, one tick period apart; the shares seen.
        fn run(&mut self, start_ms: u64, for_ms: u64, answer: Option<&RolloutConfig>) -> Vec<(u64, Share)> {
            let tick = u64::from(tick_period_ms(&self.analyzer));
            (0..for_ms / tick).map(|k| (k * tick, self.tick(start_ms + k * tick, answer))).collect()
        }
    }

    fn five_percent() -> Share {
        Share::from_basis_points(500).unwrap()
    }

    /// An Envoy that has polled a healthy analyzer for 10 s before the step.
    fn settled_envoy(when_stale: &str) -> (SimulatedEnvoy, RolloutConfig, u64) {
        let answer = published(500, 0).rollouts.remove(0);
        let mut envoy = SimulatedEnvoy::new(analyzer(when_stale));
        let shares = envoy.run(EPOCH_MS, 10_000, Some(&answer));
        assert!(shares.iter().skip(1).all(|(_, s)| *s == five_percent()));
        (envoy, answer, EPOCH_MS + 10_000)
    }

    #[test]
    fn a_steady_clock_polls_once_per_interval() {
        let (envoy, _, _) = settled_envoy("control");
        assert_eq!(envoy.polls, 10, "10 s at a 1 s interval");
    }

    #[test]
    fn a_lease_taken_before_the_clock_stepped_back_an_hour_is_due_at_once() {
        let a = analyzer("keep");
        let taken = renewed_lease(&a, EPOCH_MS);
        assert!(lease_is_due(Some(&taken), &a, EPOCH_MS - HOUR_MS));
        assert!(lease_is_due(Some(&taken), &a, EPOCH_MS + 250 - HOUR_MS), "one tick after the step");
    }

    #[test]
    fn a_lease_renewed_by_a_vm_whose_clock_read_came_later_is_honoured() {
        // Another worker read its clock up to a tick (250 ms) before the renewing VM did.
        let a = analyzer("keep");
        let taken = renewed_lease(&a, EPOCH_MS);
        assert!(!lease_is_due(Some(&taken), &a, EPOCH_MS - 250));
    }

    #[test]
    fn after_a_step_back_an_unreachable_analyzer_drops_control_within_stale_after() {
        // Steps below, at and above the 1 250 ms (interval + tick) a lease may lie ahead.
        for step_back_ms in [100, 999, 1_000, 1_250, 1_251, 5_000, HOUR_MS] {
            let (mut envoy, _, stepped_at) = settled_envoy("control");
            let polls_before = envoy.polls;
            let shares = envoy.run(stepped_at - step_back_ms, 60_000, None);
            let dropped_after = shares.iter().find(|(_, s)| *s == Share::ZERO).map(|(t, _)| *t);
            // stale_after_ms (5 000) + the lead a confirmation may have (interval + tick).
            assert!(
                dropped_after.is_some_and(|t| t <= 5_000 + 1_000 + 250),
                "step back {step_back_ms} ms: share 0 after {dropped_after:?} ms"
            );
            assert!(envoy.polls > polls_before + 50, "step back {step_back_ms} ms: kept polling every interval");
        }
    }

    #[test]
    fn after_a_step_back_a_reachable_analyzer_reconfirms_on_the_next_tick() {
        let (mut envoy, answer, stepped_at) = settled_envoy("control");
        let polls_before = envoy.polls;
        let shares = envoy.run(stepped_at - HOUR_MS, 10_000, Some(&answer));
        assert_eq!(envoy.polls, polls_before + 10, "polled at the step, then once per interval");
        // The hour-ahead confirmation is of unknown age: control for the one tick
        // until the poll the step made due answers.
        assert_eq!(shares[0].1, Share::ZERO);
        assert!(shares.iter().skip(1).all(|(_, s)| *s == five_percent()), "back by the second tick: {shares:?}");
        let confirmed = envoy.published.as_ref().unwrap().confirmed_ms;
        assert!(confirmed < stepped_at - HOUR_MS + 10_000, "confirmed at the new clock");
    }

    #[test]
    fn after_a_step_forward_the_next_poll_restores_the_share() {
        for when_stale in ["keep", "control"] {
            let (mut envoy, answer, stepped_at) = settled_envoy(when_stale);
            let polls_before = envoy.polls;
            let shares = envoy.run(stepped_at + HOUR_MS, 10_000, Some(&answer));
            assert_eq!(envoy.polls, polls_before + 10, "{when_stale}: polled at the step, then once per interval");
            // Under control the hour-old confirmation routes nobody for one tick, until
            // the poll the step made due answers.
            let first = if when_stale == "control" { Share::ZERO } else { five_percent() };
            assert_eq!(shares[0].1, first, "{when_stale}");
            assert!(shares.iter().skip(1).all(|(_, s)| *s == five_percent()), "{when_stale}: {shares:?}");
        }
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
    fn a_confirmation_further_ahead_than_a_lease_is_of_unknown_age() {
        let a = analyzer("control");
        let p = published(500, EPOCH_MS);
        assert_eq!(p.age_ms(&a, EPOCH_MS + 700), Some(700));
        assert_eq!(p.age_ms(&a, EPOCH_MS - 1_250), Some(0), "ahead by interval + tick: believed");
        assert_eq!(p.age_ms(&a, EPOCH_MS - 1_251), None);
        assert!(p.is_stale(&a, EPOCH_MS - HOUR_MS));
        assert!(!p.is_stale(&a, EPOCH_MS - 1_250));
    }

    #[test]
    fn a_record_in_the_one_deployment_format_is_read() {
        let old = br#"{"rollout":{"deployment":"checkout","generation":4,"share_bp":500,"state":"progressing"},"confirmed_ms":42}"#;
        assert_eq!(Published::decode(old), Some(published(500, 42)));
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
        assert_eq!(effective_share(applying(&p), Some(&keep), initial, 15_000), five, "at the limit: fresh");
        assert_eq!(effective_share(applying(&p), Some(&keep), initial, 99_000), five, "stale, keep");
        assert_eq!(effective_share(applying(&p), Some(&control), initial, 15_000), five);
        assert_eq!(effective_share(applying(&p), Some(&control), initial, 15_001), Share::ZERO, "stale, control");
        assert_eq!(tick_period_ms(&keep), 250);
    }

    #[test]
    fn a_vm_without_a_rollout_ticks_at_the_floor_for_one_interval() {
        let a = analyzer("keep");
        assert_eq!(current_tick_period_ms(&a, false, 0), TICK_FLOOR_MS);
        assert_eq!(current_tick_period_ms(&a, false, 999), TICK_FLOOR_MS);
        assert_eq!(current_tick_period_ms(&a, false, 1_000), 250, "analyzer unreachable: back to a quarter interval");
        assert_eq!(current_tick_period_ms(&a, true, 0), 250, "a rollout published: a quarter interval");
    }
}
