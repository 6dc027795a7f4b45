//! The analyzer's moving part: rollouts in memory, checked on their interval,
//! decided on, written to the audit log, then applied and announced.
//!
//! Order of effects for every state change (automatic or human): the decision and
//! the state after it are appended to the audit log and synced to disk; only then
//! does the in-memory state change, the filter's config (served from a separate
//! lock so polls never wait for a scrape) move, and the webhook get its update.
//! A rollback the log cannot take still takes effect, its record following once the
//! disk has room ([`recording`]).
//! Automatic holds change nothing and are not logged; the latest report says why.
//!
//! A check never holds the lock across the network: its plan is copied out under
//! the lock, every scrape and query runs concurrently without it (one task per due
//! rollout, one deadline per check, see [`fetch`]), and the answer is applied under
//! the lock against the state as it is then. A hung target delays nothing but its
//! own check, and an override never waits for a scrape.
//!
//! Checks are scheduled on the monotonic clock (tokio's `Instant`): a wall-clock
//! step cannot skip or bunch them. Wall time (Unix ms, from the engine's clock) is
//! only what decisions and records are stamped with.

mod announce;
mod fetch;
mod fleet_generation;
mod holds;
mod recording;
mod registration;
mod source_kind;
pub use registration::Start;
#[cfg(test)]
mod tests;

use crate::audit::{AuditError, AuditReader, RolloutStore, StoreHealth};
use crate::evaluation::RolloutEvaluation;
use crate::fleet::{FleetView, applied_share_bp};
use crate::hold::{HoldReason, hold_reasons};
use crate::ladder::{ActedBy, Decision, OverrideAction, OverrideError, RolloutState, TransitionError};
use crate::ladder::{decide, human_override};
use crate::notify::Notifier;
use crate::outcome_metric::missing_outcomes_note;
use crate::policy::RolloutPolicy;
use crate::source::{DeltaTracker, EnvoyAdminSource, IntervalMetrics, PrometheusSource, SourceError, scrape_client};
use crate::stats::{ComparisonRow, StatsError};
use crate::step_evidence::{CheckOutcome, StepEvidence};
use canary_core::{Cohort, RolloutConfig};
use fetch::{CheckPlan, FetchPlan, Fetched, PrometheusWindows};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The evidence file of a rollout: the running tests, saved after every check so a
/// restarted analyzer keeps what it had measured. Tied to the policy and generation
/// it was gathered under; anything else (or an unreadable file) starts afresh.
#[derive(Debug, Serialize, Deserialize)]
struct Evidence {
    policy_hash: String,
    generation: u64,
    evaluation: RolloutEvaluation,
    /// Absent in files written before steps kept their own record: the step starts one afresh.
    #[serde(default)]
    step_evidence: Option<StepEvidence>,
}

fn evidence_path(state_dir: &Path, deployment: &str) -> PathBuf {
    state_dir.join(format!("{deployment}.evidence.json"))
}

/// Loads saved evidence if it belongs to this policy and state.
fn load_evidence(state_dir: &Path, policy: &RolloutPolicy, state: &RolloutState) -> Option<Evidence> {
    let bytes = std::fs::read(evidence_path(state_dir, &state.deployment)).ok()?;
    let evidence: Evidence = serde_json::from_slice(&bytes).ok()?;
    (evidence.policy_hash == policy.fingerprint() && evidence.generation == state.generation).then_some(evidence)
}

/// Saves evidence (temporary file + rename: a crash leaves the old or the new file).
/// Losing it costs only re-measuring, so it is not synced and a failure is a warning.
fn save_evidence(state_dir: &Path, live: &LiveRollout) {
    let evidence = Evidence {
        policy_hash: live.policy.fingerprint(),
        generation: live.state.generation,
        evaluation: live.evaluation.clone(),
        step_evidence: Some(live.step_evidence.clone()),
    };
    let path = evidence_path(state_dir, &live.state.deployment);
    let temp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(&evidence)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&temp, bytes))
        .and_then(|()| std::fs::rename(&temp, &path));
    if let Err(e) = written {
        tracing::warn!(deployment = %live.state.deployment, error = %e, "evidence not saved");
    }
}

/// Per-check history kept in memory for status views: one day at a 30 s interval.
const HISTORY_LEN: usize = 2_880;
/// A scrape that takes longer than this counts as failed for the interval.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole network part of one check (every target and query, in parallel):
/// the per-request timeout plus 1 s for connecting and reading the answers.
const CHECK_DEADLINE: Duration = Duration::from_secs(3);
/// A check in flight for longer than this is presumed lost (its task died) and
/// the rollout may be checked again: two deadlines.
const CHECK_PRESUMED_LOST: Duration = Duration::from_secs(6);

/// Unix milliseconds now (the only clock read; everything below takes `now_ms`).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where per-cohort metrics come from.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    /// Envoy admin endpoints, scraped directly and summed (the embedded default);
    /// a body over `max_body_bytes` fails its target.
    EnvoyAdmin { admin_urls: Vec<String>, max_body_bytes: u64 },
    /// A Prometheus server that scrapes the fleet; an answer over `max_body_bytes` fails its query.
    Prometheus { url: String, max_body_bytes: u64 },
}

/// Why a policy with `spec.source` cannot run on the Envoy admin source.
const MESH_NEEDS_PROMETHEUS: &str =
    "spec.source reads the mesh's metrics through Prometheus: start the analyzer with --prometheus";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no rollout for deployment {0:?}")]
    NotFound(String),
    #[error("deployment {0:?} already has a rollout in progress; roll it back or wait for it to end")]
    InProgress(String),
    #[error("policy refused: {0}")]
    InvalidPolicy(String),
    #[error(transparent)]
    Override(#[from] OverrideError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The store's own messages name the file and the action (no prefix: `{:#}` would print it twice).
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("statistics: {0}")]
    Stats(#[from] StatsError),
    #[error("metrics source: {0}")]
    Source(#[from] SourceError),
}

/// One check's figures, for status views and the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub at_ms: u64,
    pub share_bp: u32,
    pub canary_requests: u64,
    pub control_requests: u64,
    pub canary_errors: u64,
    pub control_errors: u64,
    pub canary_p50_us: Option<f64>,
    pub control_p50_us: Option<f64>,
    pub canary_p99_us: Option<f64>,
    pub control_p99_us: Option<f64>,
}

impl HistoryPoint {
    fn from_interval(at_ms: u64, share_bp: u32, interval: &IntervalMetrics) -> HistoryPoint {
        let quantile = |cohort, q| interval.latency(cohort).and_then(|h| h.quantile_estimate_us(q));
        let (canary, control) = (interval.cohort_counts(Cohort::Canary), interval.cohort_counts(Cohort::Control));
        HistoryPoint {
            at_ms,
            share_bp,
            canary_requests: canary.requests,
            control_requests: control.requests,
            canary_errors: canary.errors,
            control_errors: control.errors,
            canary_p50_us: quantile(Cohort::Canary, 0.5),
            control_p50_us: quantile(Cohort::Control, 0.5),
            canary_p99_us: quantile(Cohort::Canary, 0.99),
            control_p99_us: quantile(Cohort::Control, 0.99),
        }
    }
}

/// What the API and CLI show of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub deployment: String,
    pub policy: String,
    pub state: RolloutState,
    pub config: RolloutConfig,
    /// Ladder shares in basis points.
    pub ladder_bp: Vec<u32>,
    /// Seconds left in the current step's window (progressing rollouts only).
    pub window_remaining_s: Option<u64>,
    pub last_check_ms: Option<u64>,
    /// The latest report, worst first.
    pub rows: Vec<ComparisonRow>,
    /// Scrape targets that failed in the latest check, with the reason.
    pub failed_targets: Vec<String>,
    pub history: Vec<HistoryPoint>,
    /// Why the analyzer cannot run this rollout's checks (it could not be rebuilt at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// What the proxies applied at the latest check (when they report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetView>,
    /// Set when the current step has gone `stall_after_windows` windows without earning
    /// its promotion: `stalled after 3 windows (...): why`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled: Option<String>,
    /// Outcomes the policy names that no proxy has exported in any check so far: their
    /// rows have no data and, if critical, hold promotion (see `outcome_metric`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_outcomes: Vec<String>,
    /// Why the rollout is held at the latest check ([`crate::hold`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<HoldReason>,
    /// Each policy metric's row with its tolerance and whether it is critical.
    #[serde(default)]
    pub row_rules: Vec<crate::row_rule::RowRule>,
}

impl RolloutStatus {
    /// Where a rollout stands under its policy, with nothing measured yet.
    fn unmeasured(policy: &RolloutPolicy, state: &RolloutState, now_ms: u64) -> RolloutStatus {
        RolloutStatus {
            deployment: state.deployment.clone(),
            policy: policy.name.clone(),
            state: state.clone(),
            config: state.config(),
            ladder_bp: policy.ladder.iter().map(|s| s.share_bp).collect(),
            window_remaining_s: state.window_remaining(policy, now_ms).map(|d| d.as_secs()),
            last_check_ms: None,
            rows: Vec::new(),
            failed_targets: Vec::new(),
            history: Vec::new(),
            problem: None,
            fleet: None,
            stalled: None,
            missing_outcomes: Vec::new(),
            holds: Vec::new(),
            row_rules: crate::row_rule::row_rules(policy),
        }
    }
}

struct LiveRollout {
    policy: RolloutPolicy,
    state: RolloutState,
    evaluation: RolloutEvaluation,
    /// What the current step has measured on its own (reset with every new generation).
    step_evidence: StepEvidence,
    envoy: Option<(EnvoyAdminSource, DeltaTracker)>,
    prometheus_windows: PrometheusWindows,
    rows: Vec<ComparisonRow>,
    /// When the next check is due, on the monotonic clock.
    next_check_at: Instant,
    /// When the check in flight (if any) started; a rollout has at most one.
    check_started_at: Option<Instant>,
    last_check_ms: Option<u64>,
    failed_targets: Vec<String>,
    history: VecDeque<HistoryPoint>,
    fleet: Option<FleetView>,
    stalled: Option<String>,
    /// "No proxy serves the deployment" has been said (until it is served again).
    not_served_announced: bool,
    /// Kinds of hold reason announced at this step ([`Engine::note_holds`]).
    announced_hold_kinds: Vec<String>,
    /// Where this rollout's status updates go: the policy's webhook, else the analyzer's.
    notifier: Notifier,
}

impl LiveRollout {
    fn new(
        policy: RolloutPolicy,
        state: RolloutState,
        source: &SourceSettings,
        scrapes: &reqwest::Client,
        default_notifier: &Notifier,
    ) -> Result<Self, EngineError> {
        // Built once per rollout: a client per announcement would redo its TLS setup each time.
        let notifier = Notifier::for_policy(&policy, default_notifier);
        let envoy = match source {
            SourceSettings::EnvoyAdmin { admin_urls, max_body_bytes } => Some((
                EnvoyAdminSource::with_client(scrapes.clone(), admin_urls.clone(), policy.deployment.clone())
                    .with_max_body_bytes(*max_body_bytes),
                DeltaTracker::new(),
            )),
            SourceSettings::Prometheus { .. } => None,
        };
        Ok(LiveRollout {
            evaluation: RolloutEvaluation::new(&policy)?,
            step_evidence: StepEvidence::new(state.generation),
            next_check_at: Instant::now() + policy.check_interval,
            policy,
            state,
            envoy,
            prometheus_windows: PrometheusWindows::default(),
            rows: Vec::new(),
            check_started_at: None,
            last_check_ms: None,
            failed_targets: Vec::new(),
            history: VecDeque::new(),
            fleet: None,
            stalled: None,
            not_served_announced: false,
            announced_hold_kinds: Vec::new(),
            notifier,
        })
    }

    /// Whether a check is due at `now` and none is in flight. A finished rollout is
    /// still checked until every proxy reports its final generation, so the fleet view
    /// shows the end state rather than the last check before it (nothing is decided).
    fn check_is_due(&self, now: Instant) -> bool {
        let in_flight =
            self.check_started_at.is_some_and(|started| now.saturating_duration_since(started) < CHECK_PRESUMED_LOST);
        let wanted = !self.state.is_finished()
            || self
                .fleet
                .as_ref()
                .is_some_and(|fleet| fleet.generation != self.state.generation || !fleet.all_applied());
        wanted && !in_flight && self.next_check_at <= now
    }

    /// Copies out what the check needs and marks it in flight.
    fn plan_check(&mut self, now: Instant, prometheus: Option<&PrometheusSource>, wall: SystemTime) -> CheckPlan {
        self.next_check_at = now + self.policy.check_interval;
        self.check_started_at = Some(now);
        let fetch = match (&self.envoy, prometheus) {
            // A rollout resumed from its state file by an analyzer started without --prometheus.
            (Some(_), _) if self.policy.source.is_some() => FetchPlan::Skip(MESH_NEEDS_PROMETHEUS.to_string()),
            (Some((source, _)), _) => FetchPlan::Envoy(source.clone()),
            (None, Some(prometheus)) => {
                let end = fetch::prometheus_window_end(wall, self.policy.check_interval);
                match self.prometheus_windows.next(end, self.policy.check_interval) {
                    Ok(window) => FetchPlan::Prometheus {
                        source: prometheus.clone(),
                        mesh: self.policy.source.clone(),
                        window,
                        end,
                    },
                    Err(reason) => FetchPlan::Skip(reason),
                }
            }
            (None, None) => FetchPlan::Skip("no metrics source".to_string()),
        };
        CheckPlan {
            deployment: self.state.deployment.clone(),
            generation: self.state.generation,
            fetch,
            custom: CheckPlan::custom_metrics(&self.policy),
            counter_pairs: CheckPlan::counter_pair_metrics(&self.policy),
            prometheus: prometheus.cloned(),
        }
    }

    fn status(&self, now_ms: u64) -> RolloutStatus {
        RolloutStatus {
            last_check_ms: self.last_check_ms,
            rows: self.rows.clone(),
            failed_targets: self.failed_targets.clone(),
            history: self.history.iter().cloned().collect(),
            fleet: self.fleet.clone(),
            stalled: self.stalled.clone(),
            missing_outcomes: match self.last_check_ms {
                Some(_) => self.evaluation.missing_outcomes().into_iter().map(String::from).collect(),
                None => Vec::new(),
            },
            holds: match self.last_check_ms {
                Some(_) => hold_reasons(&self.hold_inputs(now_ms)),
                None => Vec::new(),
            },
            ..RolloutStatus::unmeasured(&self.policy, &self.state, now_ms)
        }
    }
}

/// Counters for the analyzer's own `/metrics`.
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub checks: AtomicU64,
    pub check_failures: AtomicU64,
    pub decisions: AtomicU64,
    pub overrides: AtomicU64,
    pub unauthorized: AtomicU64,
}

struct Inner {
    rollouts: BTreeMap<String, LiveRollout>,
    /// Rollouts restored from disk that could not be rebuilt (their policy no longer
    /// sets up the statistics). Their last config is still served so the fleet keeps
    /// its share; nothing is checked; a human can roll back or pause them.
    broken: BTreeMap<String, BrokenRollout>,
    store: RolloutStore,
}

struct BrokenRollout {
    policy: RolloutPolicy,
    state: RolloutState,
    problem: String,
}

impl BrokenRollout {
    fn status(&self, now_ms: u64) -> RolloutStatus {
        RolloutStatus {
            problem: Some(self.problem.clone()),
            ..RolloutStatus::unmeasured(&self.policy, &self.state, now_ms)
        }
    }
}

/// The wall clock decisions are stamped with (Unix ms); a parameter so tests can step it.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The rollouts, their store and their sources. Shared by the API and the check loop.
pub struct Engine {
    inner: Mutex<Inner>,
    /// What the filter polls, readable without waiting for a check in progress.
    configs: RwLock<BTreeMap<String, RolloutConfig>>,
    source: SourceSettings,
    /// The one client every rollout's Envoy scrapes go out on (one connection pool).
    scrapes: reqwest::Client,
    prometheus: Option<PrometheusSource>,
    notifier: Notifier,
    /// Reads pages of the audit log without the engine's lock.
    audit_reader: AuditReader,
    state_dir: PathBuf,
    wall_clock: WallClock,
    /// `deployment: reason` of every rollout that could not be rebuilt at start.
    broken_rollouts: RwLock<Vec<String>>,
    /// Whether the audit log still takes records, readable without the lock.
    store_health: StoreHealth,
    pub counters: EngineCounters,
}

impl Engine {
    /// Opens the state directory and resumes every rollout where it stood. A rollout
    /// that cannot be rebuilt does not stop the others: it is reported (log, status,
    /// `/healthz`) and its last config stays served. A state file that does not read
    /// back is recovered from the audit log, or reported (log, `/healthz`) and not
    /// served ([`RolloutStore::open`]).
    pub fn open(state_dir: &Path, source: SourceSettings, notifier: Notifier) -> Result<Engine, EngineError> {
        let (store, persisted) = RolloutStore::open(state_dir)?;
        let scrapes = scrape_client(SCRAPE_TIMEOUT)?;
        let prometheus = match &source {
            SourceSettings::Prometheus { url, max_body_bytes } => {
                Some(PrometheusSource::new(url.clone(), SCRAPE_TIMEOUT)?.with_max_body_bytes(*max_body_bytes))
            }
            SourceSettings::EnvoyAdmin { .. } => None,
        };
        let (mut rollouts, mut broken) = (BTreeMap::new(), BTreeMap::new());
        for (deployment, p) in persisted {
            let evidence = load_evidence(state_dir, &p.policy, &p.state);
            let live = LiveRollout::new(p.policy.clone(), p.state.clone(), &source, &scrapes, &notifier).and_then(
                |mut live| {
                    if let Some(evidence) = &evidence {
                        live.evaluation = evidence.evaluation.clone();
                        if let Some(step) =
                            evidence.step_evidence.clone().filter(|s| s.generation == live.state.generation)
                        {
                            live.step_evidence = step;
                        }
                        live.rows = live.evaluation.rows(Vec::new())?;
                    }
                    Ok(live)
                },
            );
            match live {
                Ok(live) => {
                    tracing::info!(
                        %deployment, step = p.state.step, share_bp = p.state.share_bp, phase = ?p.state.phase,
                        evidence = evidence.is_some(), "resumed rollout"
                    );
                    rollouts.insert(deployment, live);
                }
                Err(e) => {
                    tracing::error!(
                        %deployment, share_bp = p.state.share_bp, phase = ?p.state.phase, error = %e,
                        "rollout cannot be rebuilt: its config stays served, it is not checked; \
                         roll it back or pause it, then register a corrected policy"
                    );
                    let problem = format!("cannot be rebuilt from its saved policy: {e}");
                    broken.insert(deployment, BrokenRollout { policy: p.policy, state: p.state, problem });
                }
            }
        }
        spread_first_checks(&mut rollouts, Instant::now());
        let configs = rollouts
            .iter()
            .map(|(d, r)| (d.clone(), r.state.config()))
            .chain(broken.iter().map(|(d, b)| (d.clone(), b.state.config())))
            .collect();
        let unreadable = store.unreadable_states().iter().map(|u| {
            format!(
                "{}: state file {} does not read back ({}) and no audit record recovers it: not served",
                u.deployment,
                u.path.display(),
                u.reason
            )
        });
        let broken_rollouts = broken.iter().map(|(d, b)| format!("{d}: {}", b.problem)).chain(unreadable).collect();
        Ok(Engine {
            audit_reader: store.reader(),
            store_health: store.health(),
            state_dir: state_dir.to_path_buf(),
            inner: Mutex::new(Inner { rollouts, broken, store }),
            configs: RwLock::new(configs),
            source,
            scrapes,
            prometheus,
            notifier,
            wall_clock: Arc::new(now_ms),
            broken_rollouts: RwLock::new(broken_rollouts),
            counters: EngineCounters::default(),
        })
    }

    /// Replaces the wall clock (tests step it to show checks keep their schedule).
    pub fn with_wall_clock(mut self, clock: WallClock) -> Engine {
        self.wall_clock = clock;
        self
    }

    fn wall_ms(&self) -> u64 {
        (self.wall_clock)()
    }

    /// The config the filter polls; cheap.
    pub fn config(&self, deployment: &str) -> Option<RolloutConfig> {
        self.configs.read().ok()?.get(deployment).cloned()
    }

    /// Every rollout's share and generation, for `/metrics`.
    pub fn configs(&self) -> Vec<RolloutConfig> {
        self.configs.read().map(|c| c.values().cloned().collect()).unwrap_or_default()
    }

    /// Reads the served configs in place, under one read lock: the batch endpoint
    /// hashes many and clones none when it answers `304`. `None` if a writer panicked.
    pub fn read_configs<R>(&self, read: impl FnOnce(&BTreeMap<String, RolloutConfig>) -> R) -> Option<R> {
        self.configs.read().ok().map(|configs| read(&configs))
    }

    /// Why decisions are not being recorded (the latest append failed, or rollbacks
    /// in effect wait for their records): see [`recording`].
    pub fn recording_failure(&self) -> Option<String> {
        self.store_health.failure()
    }

    /// Rollbacks in effect whose audit records wait for the log to take writes again.
    pub fn unrecorded_decisions(&self) -> usize {
        self.store_health.pending_records()
    }

    /// The store's health signal (tests poison it to check its readers).
    #[cfg(test)]
    pub(crate) fn store_health(&self) -> &StoreHealth {
        &self.store_health
    }

    /// Whether `deployment` is one of [`Engine::broken_rollouts`] (served or, when its
    /// state file does not read back, not).
    pub fn is_broken(&self, deployment: &str) -> bool {
        let prefix = format!("{deployment}: ");
        self.broken_rollouts.read().is_ok_and(|b| b.iter().any(|line| line.starts_with(&prefix)))
    }

    /// Rollouts that could not be rebuilt at start, as `deployment: reason` (for `/healthz`).
    pub fn broken_rollouts(&self) -> Vec<String> {
        self.broken_rollouts.read().map(|b| b.clone()).unwrap_or_default()
    }

    pub async fn status(&self, deployment: &str, now_ms: u64) -> Result<RolloutStatus, EngineError> {
        let inner = self.inner.lock().await;
        match (inner.rollouts.get(deployment), inner.broken.get(deployment)) {
            (Some(live), _) => Ok(live.status(now_ms)),
            (None, Some(broken)) => Ok(broken.status(now_ms)),
            (None, None) => Err(EngineError::NotFound(deployment.into())),
        }
    }

    pub async fn list(&self, now_ms: u64) -> Vec<RolloutStatus> {
        let inner = self.inner.lock().await;
        let mut all: Vec<RolloutStatus> = inner.rollouts.values().map(|r| r.status(now_ms)).collect();
        all.extend(inner.broken.values().map(|b| b.status(now_ms)));
        all.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        all
    }

    /// A human override: checked, logged, applied; `by` is the authenticated caller.
    pub async fn override_rollout(
        &self,
        deployment: &str,
        action: &OverrideAction,
        by: &ActedBy,
        reason: &str,
        now_ms: u64,
    ) -> Result<RolloutStatus, EngineError> {
        let mut inner = self.inner.lock().await;
        let Inner { rollouts, broken, store } = &mut *inner;
        if let Some(broken) = broken.get_mut(deployment) {
            // No statistics run for it, but a human can still roll it back or pause it.
            let decision = human_override(&broken.policy, &broken.state, action, by, reason, Vec::new())?;
            let after = broken.state.next(&decision, now_ms)?;
            // A rollback the log cannot take yet still takes effect (logged by `commit_logged`).
            recording::commit_logged(store, now_ms, &broken.policy, &decision, Some(&broken.state), &after)?;
            broken.state = after;
            self.publish(&broken.state);
            self.counters.overrides.fetch_add(1, Ordering::Relaxed);
            return Ok(broken.status(now_ms));
        }
        let live = rollouts.get_mut(deployment).ok_or_else(|| EngineError::NotFound(deployment.into()))?;
        let decision = human_override(&live.policy, &live.state, action, by, reason, live.rows.clone())?;
        self.commit(store, live, &decision, now_ms)?;
        self.counters.overrides.fetch_add(1, Ordering::Relaxed);
        Ok(live.status(now_ms))
    }

    fn forget_broken(&self, deployment: &str) {
        if let Ok(mut broken) = self.broken_rollouts.write() {
            broken.retain(|line| !line.starts_with(&format!("{deployment}: ")));
        }
    }

    /// Starts every check that is due at `now` (monotonic), each in its own task, and
    /// returns their handles (the check loop lets them run; tests await them).
    pub async fn start_due_checks(self: &Arc<Self>, now: Instant) -> Vec<JoinHandle<()>> {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(self.wall_ms());
        let plans: Vec<CheckPlan> = {
            let mut inner = self.inner.lock().await;
            inner
                .rollouts
                .values_mut()
                .filter(|r| r.check_is_due(now))
                .map(|r| r.plan_check(now, self.prometheus.as_ref(), wall))
                .collect()
        };
        plans
            .into_iter()
            .map(|plan| {
                let engine = Arc::clone(self);
                tokio::spawn(async move { engine.run_check(plan).await })
            })
            .collect()
    }

    /// Checks one rollout now, whether due or not, and waits for the result.
    pub async fn check_now(&self, deployment: &str) -> Result<(), EngineError> {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(self.wall_ms());
        let plan = {
            let mut inner = self.inner.lock().await;
            let live = inner.rollouts.get_mut(deployment).ok_or_else(|| EngineError::NotFound(deployment.into()))?;
            live.plan_check(Instant::now(), self.prometheus.as_ref(), wall)
        };
        let (fetched, custom) = plan.fetch(CHECK_DEADLINE).await;
        self.apply_check(&plan, fetched, custom, self.wall_ms()).await
    }

    async fn run_check(&self, plan: CheckPlan) {
        self.counters.checks.fetch_add(1, Ordering::Relaxed);
        let (fetched, custom) = plan.fetch(CHECK_DEADLINE).await;
        if let Err(e) = self.apply_check(&plan, fetched, custom, self.wall_ms()).await {
            self.counters.check_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(deployment = %plan.deployment, error = %e, "check failed; holding");
        }
    }

    /// The second half of a check, under the lock: turn what was fetched into an
    /// interval, compare, decide against the state as it is now, and apply a change.
    async fn apply_check(
        &self,
        plan: &CheckPlan,
        fetched: Fetched,
        custom: fetch::CustomResults,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let mut inner = self.inner.lock().await;
        let Inner { rollouts, store, .. } = &mut *inner;
        let deployment = plan.deployment.as_str();
        let live = rollouts.get_mut(deployment).ok_or_else(|| EngineError::NotFound(deployment.into()))?;
        live.check_started_at = None;
        let (interval, had_data) = match fetched {
            Fetched::Envoy(round) => match &mut live.envoy {
                Some((_, tracker)) => {
                    let mut interval = tracker.advance(round);
                    if let Some(failure) = on_statistics_grid(&mut interval) {
                        tracing::warn!(%deployment, "{}", failure.reason);
                        interval.failed_targets.push(failure);
                    }
                    let had_data = !interval.contributing_targets.is_empty();
                    (interval, had_data)
                }
                None => (IntervalMetrics::default(), false),
            },
            Fetched::Prometheus(answer) => match *answer {
                // No request in any cohort: an empty answer (fewer than two scrapes in the
                // window) or no traffic. Either way no data; the span goes into the next window.
                Ok(interval) if Cohort::ALL.iter().all(|&c| interval.requests(c) == 0) => {
                    live.prometheus_windows.carry_over();
                    (interval, false)
                }
                Ok(mut interval) => {
                    if let Some(failure) = incomparable_layouts(&mut interval) {
                        tracing::warn!(%deployment, "{}", failure.reason);
                        interval.failed_targets.push(failure);
                    }
                    (interval, true)
                }
                Err(e) => {
                    // Windows tile the counters' history: the next one takes this span too.
                    live.prometheus_windows.carry_over();
                    let reason = crate::source::describe(&e);
                    let failed = crate::source::TargetFailure { target: "prometheus".into(), reason };
                    (IntervalMetrics { failed_targets: vec![failed], ..IntervalMetrics::default() }, false)
                }
            },
            Fetched::Skipped(reason) => {
                let failed = crate::source::TargetFailure { target: "check".into(), reason };
                (IntervalMetrics { failed_targets: vec![failed], ..IntervalMetrics::default() }, false)
            }
            Fetched::DeadlineMissed(deadline) => {
                // As after a failed scrape: forget the baselines, start over next time.
                if let Some((_, tracker)) = &mut live.envoy {
                    tracker.advance(Vec::new());
                }
                live.prometheus_windows.carry_over();
                let reason = format!("not every answer was in within the check's {} ms deadline", deadline.as_millis());
                let failed = crate::source::TargetFailure { target: "check".into(), reason };
                (IntervalMetrics { failed_targets: vec![failed], ..IntervalMetrics::default() }, false)
            }
        };
        live.failed_targets = interval.failed_targets.iter().map(|f| format!("{}: {}", f.target, f.reason)).collect();
        live.last_check_ms = Some(now_ms);
        if !interval.proxies.is_empty() {
            live.fleet = Some(FleetView::new(live.state.generation, &interval.proxies));
        }
        self.note_not_served(live, now_ms);
        if live.state.generation != plan.generation || live.state.is_finished() {
            // Decided on (an override, say) while this check was fetching: the interval
            // straddles two shares. Its scrapes still moved the baselines; its counts are not used.
            tracing::debug!(%deployment, "state changed during the check; interval not used");
            return Ok(());
        }
        live.evaluation.observe(&interval, applied_share_bp(&interval.proxies, live.state.share_bp))?;
        if had_data {
            // Same window as the interval; an empty window is asked again next time.
            live.evaluation.observe_counter_pairs(&custom.pairs);
        }
        let fleet_lagging = (!interval.proxies.is_empty())
            .then(|| FleetView::new(live.state.generation, &interval.proxies))
            .filter(|fleet| !fleet.all_applied())
            .map(|fleet| fleet.summary());
        let check = CheckOutcome {
            had_data,
            canary_requests: interval.requests(Cohort::Canary),
            control_requests: interval.requests(Cohort::Control),
            fleet_lagging,
        };
        live.step_evidence.record(check, fleet_deadline_checks(&live.policy));
        live.rows = live.evaluation.rows(custom.rows)?;
        if live.history.len() >= HISTORY_LEN {
            live.history.pop_front();
        }
        live.history.push_back(HistoryPoint::from_interval(now_ms, live.state.share_bp, &interval));
        self.catch_up_with_the_fleet(store, live, &interval, now_ms)?;
        let mut decision = decide(&live.policy, &live.state, &live.rows, &live.step_evidence, now_ms);
        if let Some(note) = missing_outcomes_note(&live.evaluation.missing_outcomes())
            && !decision.changes_state()
        {
            decision.reason = format!("{}; {note}", decision.reason);
        }
        if let Some(layouts) = interval.failed_targets.iter().find(|f| f.target == LATENCY_LAYOUTS)
            && !decision.changes_state()
        {
            decision.reason = format!("{}; {}", decision.reason, layouts.reason);
        }
        if decision.changes_state() {
            self.commit(store, live, &decision, now_ms)?;
        } else {
            tracing::debug!(%deployment, reason = %decision.reason, "hold");
            self.note_stall(live, now_ms);
            self.note_holds(live, now_ms);
            save_evidence(&self.state_dir, live);
        }
        Ok(())
    }

    /// Logs the decision, then applies it, publishes the config and announces it.
    fn commit(
        &self,
        store: &mut RolloutStore,
        live: &mut LiveRollout,
        decision: &Decision,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let after = live.state.next(decision, now_ms)?;
        let unrecorded = recording::commit_logged(store, now_ms, &live.policy, decision, Some(&live.state), &after)?;
        let share_changed = after.share_bp != live.state.share_bp;
        tracing::info!(
            deployment = %after.deployment, action = ?decision.action, actor = %decision.actor.name(),
            share_bp = after.share_bp, generation = after.generation, reason = %decision.reason, "decision"
        );
        live.state = after;
        if share_changed {
            live.evaluation.restart_latency()?;
        }
        if live.step_evidence.generation != live.state.generation {
            live.step_evidence = StepEvidence::new(live.state.generation);
            live.stalled = None;
            live.announced_hold_kinds.clear();
        }
        self.counters.decisions.fetch_add(1, Ordering::Relaxed);
        save_evidence(&self.state_dir, live);
        self.publish(&live.state);
        match unrecorded {
            None => self.announce(live, decision, now_ms),
            Some(error) => {
                let reason = recording::unrecorded_note(&decision.reason, &error);
                self.announce(live, &Decision { reason, ..decision.clone() }, now_ms);
            }
        }
        Ok(())
    }

    fn publish(&self, state: &RolloutState) {
        if let Ok(mut configs) = self.configs.write() {
            configs.insert(state.deployment.clone(), state.config());
        }
    }
}

/// The admin source's histograms as the statistics compare them: Envoy's own bins
/// folded onto `LATENCY_BUCKETS_US` (every one of which is an edge of Envoy's bins, so
/// the fold is exact); configured buckets (a text answer) exactly as exported, as the
/// Prometheus source reads them. Cohorts whose layouts still differ cannot be compared:
/// their histograms are left out of the interval (its counts still count) and the
/// returned failure names both layouts, for the status and the log.
fn on_statistics_grid(interval: &mut IntervalMetrics) -> Option<crate::source::TargetFailure> {
    use canary_core::metrics::LATENCY_BUCKETS_US;
    for cohort in Cohort::ALL {
        let latency = &mut interval.cohorts.get_mut(cohort).latency;
        if let Some(histogram) = latency.as_ref()
            && histogram.upper_bounds_us() == crate::source::envoy_bin_bounds_us()
        {
            *latency = crate::source::fold_onto(histogram, &LATENCY_BUCKETS_US).ok();
        }
    }
    incomparable_layouts(interval)
}

/// The failure entry of an interval whose cohorts' latency layouts differ.
const LATENCY_LAYOUTS: &str = "latency layouts";

/// When canary's and control's histograms in `interval` have different bucket bounds:
/// drops both and says so, naming the layouts.
fn incomparable_layouts(interval: &mut IntervalMetrics) -> Option<crate::source::TargetFailure> {
    let (canary, control) = (interval.latency(Cohort::Canary)?, interval.latency(Cohort::Control)?);
    let differ = crate::stats::check_same_layout(canary.upper_bounds_us(), control.upper_bounds_us()).err()?;
    for cohort in [Cohort::Canary, Cohort::Control] {
        interval.cohorts.get_mut(cohort).latency = None;
    }
    let reason = format!("canary's and control's {differ}; latency not compared in this check");
    Some(crate::source::TargetFailure { target: LATENCY_LAYOUTS.into(), reason })
}

/// Rollouts resumed together would be checked together, every interval from then on: a
/// thousand of them on ten Envoys made ten thousand scrapes in the same second (and held
/// a socket each). Their first checks are spread over the interval after the first, in
/// order: each still comes at least one interval after the start, so a Prometheus window
/// never reaches back into a span the last check before the stop may have counted.
fn spread_first_checks(rollouts: &mut BTreeMap<String, LiveRollout>, now: Instant) {
    let count = u32::try_from(rollouts.len()).unwrap_or(u32::MAX).max(1);
    for (position, live) in rollouts.values_mut().enumerate() {
        let position = u32::try_from(position).unwrap_or(u32::MAX);
        let interval = live.policy.check_interval;
        live.next_check_at = now + interval + interval.mul_f64(f64::from(position) / f64::from(count));
    }
}

/// Checks a step waits for every proxy to apply it before its window starts anyway.
fn fleet_deadline_checks(policy: &RolloutPolicy) -> u64 {
    let interval_ms = policy.check_interval.as_millis().max(1);
    u64::try_from(policy.fleet_deadline.as_millis().div_ceil(interval_ms)).unwrap_or(u64::MAX)
}

/// Runs the checks until `shutdown` resolves.
pub async fn run_checks(engine: Arc<Engine>, shutdown: impl std::future::Future<Output = ()>) {
    // Checks are due on their rollout's own interval; look four times a second.
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            // The checks run in their own tasks: dropping a handle does not stop one.
            now = ticker.tick() => {
                drop(engine.start_due_checks(now).await);
                engine.retry_recording(engine.wall_ms()).await;
            }
        }
    }
}
