//! The analyzer's moving part: rollouts in memory, checked on their interval,
//! decided on, written to the audit log, then applied and announced.
//!
//! Order of effects for every state change (automatic or human): the decision and
//! the state after it are appended to the audit log and synced to disk; only then
//! does the in-memory state change, the filter's config (served from a separate
//! lock so polls never wait for a scrape) move, and the webhook get its update.
//! Automatic holds change nothing and are not logged; the latest report says why.

use crate::audit::{AuditError, AuditLog, AuditRecord, RolloutStore};
use crate::evaluation::{RolloutEvaluation, custom_row};
use crate::ladder::{Action, Actor, Decision, OverrideAction, OverrideError, RolloutState, TransitionError};
use crate::ladder::{decide, human_override};
use crate::notify::{Notifier, StatusUpdate};
use crate::policy::{Metric, RolloutPolicy};
use crate::source::{CohortValues, DeltaTracker, EnvoyAdminSource, IntervalMetrics, PrometheusSource, SourceError};
use crate::stats::{ComparisonRow, StatsError, Verdict};
use canary_core::{Cohort, RolloutConfig};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// The evidence file of a rollout: the running tests, saved after every check so a
/// restarted analyzer keeps what it had measured. Tied to the policy and generation
/// it was gathered under; anything else (or an unreadable file) starts afresh.
#[derive(Debug, Serialize, Deserialize)]
struct Evidence {
    policy_hash: String,
    generation: u64,
    evaluation: RolloutEvaluation,
}

fn evidence_path(state_dir: &Path, deployment: &str) -> PathBuf {
    state_dir.join(format!("{deployment}.evidence.json"))
}

/// Loads saved evidence if it belongs to this policy and state.
fn load_evidence(state_dir: &Path, policy: &RolloutPolicy, state: &RolloutState) -> Option<RolloutEvaluation> {
    let bytes = std::fs::read(evidence_path(state_dir, &state.deployment)).ok()?;
    let evidence: Evidence = serde_json::from_slice(&bytes).ok()?;
    (evidence.policy_hash == policy.fingerprint() && evidence.generation == state.generation)
        .then_some(evidence.evaluation)
}

/// Saves evidence (temporary file + rename: a crash leaves the old or the new file).
/// Losing it costs only re-measuring, so it is not synced and a failure is a warning.
fn save_evidence(state_dir: &Path, live: &LiveRollout) {
    let evidence = Evidence {
        policy_hash: live.policy.fingerprint(),
        generation: live.state.generation,
        evaluation: live.evaluation.clone(),
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

/// Unix milliseconds now (the only clock read; everything below takes `now_ms`).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where per-cohort metrics come from.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    /// Envoy admin endpoints, scraped directly and summed (the embedded default).
    EnvoyAdmin(Vec<String>),
    /// A Prometheus server that scrapes the fleet.
    Prometheus(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no rollout for deployment {0:?}")]
    NotFound(String),
    #[error("deployment {0:?} already has a rollout in progress; roll it back or wait for it to end")]
    InProgress(String),
    #[error(transparent)]
    Override(#[from] OverrideError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("audit log: {0}")]
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
}

struct LiveRollout {
    policy: RolloutPolicy,
    state: RolloutState,
    evaluation: RolloutEvaluation,
    envoy: Option<(EnvoyAdminSource, DeltaTracker)>,
    rows: Vec<ComparisonRow>,
    next_check_ms: u64,
    last_check_ms: Option<u64>,
    failed_targets: Vec<String>,
    history: VecDeque<HistoryPoint>,
    /// Where this rollout's status updates go: the policy's webhook, else the analyzer's.
    notifier: Notifier,
}

impl LiveRollout {
    fn new(
        policy: RolloutPolicy,
        state: RolloutState,
        source: &SourceSettings,
        default_notifier: &Notifier,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        // Built once per rollout: a client per announcement would redo its TLS setup each time.
        let notifier = Notifier::for_policy(&policy, default_notifier);
        let envoy = match source {
            SourceSettings::EnvoyAdmin(urls) => Some((
                EnvoyAdminSource::new(urls.clone(), policy.deployment.clone(), SCRAPE_TIMEOUT)?,
                DeltaTracker::new(),
            )),
            SourceSettings::Prometheus(_) => None,
        };
        Ok(LiveRollout {
            evaluation: RolloutEvaluation::new(&policy)?,
            next_check_ms: now_ms.saturating_add(millis(policy.check_interval)),
            policy,
            state,
            envoy,
            rows: Vec::new(),
            last_check_ms: None,
            failed_targets: Vec::new(),
            history: VecDeque::new(),
            notifier,
        })
    }

    fn status(&self, now_ms: u64) -> RolloutStatus {
        RolloutStatus {
            deployment: self.state.deployment.clone(),
            policy: self.policy.name.clone(),
            state: self.state.clone(),
            config: self.state.config(),
            ladder_bp: self.policy.ladder.iter().map(|s| s.share_bp).collect(),
            window_remaining_s: self.state.window_remaining(&self.policy, now_ms).map(|d| d.as_secs()),
            last_check_ms: self.last_check_ms,
            rows: self.rows.clone(),
            failed_targets: self.failed_targets.clone(),
            history: self.history.iter().cloned().collect(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
    store: RolloutStore,
}

/// The rollouts, their store and their sources. Shared by the API and the check loop.
pub struct Engine {
    inner: Mutex<Inner>,
    /// What the filter polls, readable without waiting for a check in progress.
    configs: RwLock<BTreeMap<String, RolloutConfig>>,
    source: SourceSettings,
    prometheus: Option<PrometheusSource>,
    notifier: Notifier,
    audit_path: PathBuf,
    state_dir: PathBuf,
    pub counters: EngineCounters,
}

impl Engine {
    /// Opens the state directory and resumes every rollout where it stood.
    pub fn open(
        state_dir: &Path,
        source: SourceSettings,
        notifier: Notifier,
        now_ms: u64,
    ) -> Result<Engine, EngineError> {
        let (store, persisted) = RolloutStore::open(state_dir)?;
        let prometheus = match &source {
            SourceSettings::Prometheus(url) => Some(PrometheusSource::new(url.clone(), SCRAPE_TIMEOUT)?),
            SourceSettings::EnvoyAdmin(_) => None,
        };
        let mut rollouts = BTreeMap::new();
        for (deployment, p) in persisted {
            let evidence = load_evidence(state_dir, &p.policy, &p.state);
            tracing::info!(
                %deployment, step = p.state.step, share_bp = p.state.share_bp, phase = ?p.state.phase,
                evidence = evidence.is_some(), "resumed rollout"
            );
            let mut live = LiveRollout::new(p.policy, p.state, &source, &notifier, now_ms)?;
            if let Some(evaluation) = evidence {
                live.evaluation = evaluation;
                live.rows = live.evaluation.rows(Vec::new())?;
            }
            rollouts.insert(deployment, live);
        }
        let configs = rollouts.iter().map(|(d, r)| (d.clone(), r.state.config())).collect();
        Ok(Engine {
            audit_path: store.audit_path().to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            inner: Mutex::new(Inner { rollouts, store }),
            configs: RwLock::new(configs),
            source,
            prometheus,
            notifier,
            counters: EngineCounters::default(),
        })
    }

    /// The config the filter polls; cheap.
    pub fn config(&self, deployment: &str) -> Option<RolloutConfig> {
        self.configs.read().ok()?.get(deployment).cloned()
    }

    /// Every rollout's share and generation, for `/metrics`.
    pub fn configs(&self) -> Vec<RolloutConfig> {
        self.configs.read().map(|c| c.values().cloned().collect()).unwrap_or_default()
    }

    pub async fn status(&self, deployment: &str, now_ms: u64) -> Result<RolloutStatus, EngineError> {
        let inner = self.inner.lock().await;
        inner.rollouts.get(deployment).map(|r| r.status(now_ms)).ok_or_else(|| EngineError::NotFound(deployment.into()))
    }

    pub async fn list(&self, now_ms: u64) -> Vec<RolloutStatus> {
        self.inner.lock().await.rollouts.values().map(|r| r.status(now_ms)).collect()
    }

    /// The audit records of one deployment, oldest first.
    pub fn audit(&self, deployment: &str) -> Result<Vec<AuditRecord>, EngineError> {
        Ok(AuditLog::read_all(&self.audit_path)?.into_iter().filter(|r| r.deployment == deployment).collect())
    }

    /// Registers (or restarts, once the previous one ended) a rollout.
    /// `actor` is `Actor::Analyzer` only for policies given at start; API callers are named humans or pipelines.
    pub async fn register(
        &self,
        policy: RolloutPolicy,
        actor: Actor,
        now_ms: u64,
    ) -> Result<RolloutStatus, EngineError> {
        let mut inner = self.inner.lock().await;
        let deployment = policy.deployment.clone();
        let previous = inner.rollouts.get(&deployment).map(|r| (r.state.clone(), r.state.is_finished()));
        if let Some((_, false)) = previous {
            return Err(EngineError::InProgress(deployment));
        }
        let before = previous.map(|(state, _)| state);
        let state = RolloutState::start(&policy, before.as_ref().map_or(0, |s| s.generation), now_ms);
        let decision = Decision::start(&state, actor, format!("registered with policy {:?}", policy.name));
        let committed = inner.store.commit(now_ms, &policy, &decision, before.as_ref(), &state)?;
        if let Some(e) = committed.state_error {
            tracing::warn!(%deployment, error = %e, "state file not written; the audit log has the decision");
        }
        if self.prometheus.is_none() && policy.metrics.iter().any(|m| matches!(m.metric, Metric::Custom(_))) {
            tracing::warn!(%deployment, "custom PromQL metrics need --prometheus; they will show no data");
        }
        let live = LiveRollout::new(policy, state, &self.source, &self.notifier, now_ms)?;
        self.publish(&live.state);
        self.announce(&live, &decision, now_ms);
        let status = live.status(now_ms);
        inner.rollouts.insert(deployment, live);
        Ok(status)
    }

    /// A human override: checked, logged, applied.
    pub async fn override_rollout(
        &self,
        deployment: &str,
        action: &OverrideAction,
        actor: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<RolloutStatus, EngineError> {
        let mut inner = self.inner.lock().await;
        let Inner { rollouts, store } = &mut *inner;
        let live = rollouts.get_mut(deployment).ok_or_else(|| EngineError::NotFound(deployment.into()))?;
        let decision = human_override(&live.policy, &live.state, action, actor, reason, live.rows.clone())?;
        self.commit(store, live, &decision, now_ms)?;
        self.counters.overrides.fetch_add(1, Ordering::Relaxed);
        Ok(live.status(now_ms))
    }

    /// Runs every check that is due.
    pub async fn check_due(&self, now_ms: u64) {
        let due: Vec<String> = {
            let inner = self.inner.lock().await;
            inner
                .rollouts
                .iter()
                .filter(|(_, r)| !r.state.is_finished() && r.next_check_ms <= now_ms)
                .map(|(d, _)| d.clone())
                .collect()
        };
        for deployment in due {
            self.counters.checks.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.check(&deployment, now_ms).await {
                self.counters.check_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%deployment, error = %e, "check failed; holding");
            }
        }
    }

    /// One check: measure the interval, compare, decide, and apply a change.
    pub async fn check(&self, deployment: &str, now_ms: u64) -> Result<(), EngineError> {
        let mut inner = self.inner.lock().await;
        let Inner { rollouts, store } = &mut *inner;
        let live = rollouts.get_mut(deployment).ok_or_else(|| EngineError::NotFound(deployment.into()))?;
        live.next_check_ms = now_ms.saturating_add(millis(live.policy.check_interval));
        let interval = match (&mut live.envoy, &self.prometheus) {
            (Some((source, tracker)), _) => tracker.advance(source.scrape().await),
            (None, Some(prometheus)) => prometheus.interval(deployment, live.policy.check_interval, None).await?,
            (None, None) => IntervalMetrics::default(),
        };
        live.failed_targets = interval.failed_targets.iter().map(|f| format!("{}: {}", f.target, f.reason)).collect();
        live.evaluation.observe(&interval, live.state.share_bp)?;
        let custom = self.custom_rows(&live.policy).await;
        live.rows = live.evaluation.rows(custom)?;
        live.last_check_ms = Some(now_ms);
        if live.history.len() >= HISTORY_LEN {
            live.history.pop_front();
        }
        live.history.push_back(HistoryPoint::from_interval(now_ms, live.state.share_bp, &interval));
        let decision = decide(&live.policy, &live.state, &live.rows, now_ms);
        if decision.changes_state() {
            self.commit(store, live, &decision, now_ms)?;
        } else {
            tracing::debug!(%deployment, reason = %decision.reason, "hold");
            save_evidence(&self.state_dir, live);
        }
        Ok(())
    }

    /// Custom PromQL metrics, evaluated on the Prometheus source; without one (or when
    /// a query fails) they have no data, which holds promotion if they are critical.
    async fn custom_rows(&self, policy: &RolloutPolicy) -> Vec<ComparisonRow> {
        let mut rows = Vec::new();
        for metric in policy.metrics.iter().filter_map(|m| match &m.metric {
            Metric::Custom(custom) => Some(custom),
            _ => None,
        }) {
            let values = match &self.prometheus {
                Some(prometheus) => prometheus
                    .custom_metric(&metric.query, &policy.deployment, policy.check_interval, None)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(deployment = %policy.deployment, metric = %metric.name, error = %e, "custom metric query failed");
                        CohortValues::default()
                    }),
                None => CohortValues::default(),
            };
            rows.push(custom_row(metric, values));
        }
        rows
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
        let committed = store.commit(now_ms, &live.policy, decision, Some(&live.state), &after)?;
        if let Some(e) = committed.state_error {
            tracing::warn!(deployment = %after.deployment, error = %e, "state file not written; the audit log has the decision");
        }
        let share_changed = after.share_bp != live.state.share_bp;
        tracing::info!(
            deployment = %after.deployment, action = ?decision.action, actor = %decision.actor.name(),
            share_bp = after.share_bp, generation = after.generation, reason = %decision.reason, "decision"
        );
        live.state = after;
        if share_changed {
            live.evaluation.restart_latency()?;
        }
        self.counters.decisions.fetch_add(1, Ordering::Relaxed);
        save_evidence(&self.state_dir, live);
        self.publish(&live.state);
        self.announce(live, decision, now_ms);
        Ok(())
    }

    fn publish(&self, state: &RolloutState) {
        if let Ok(mut configs) = self.configs.write() {
            configs.insert(state.deployment.clone(), state.config());
        }
    }

    fn announce(&self, live: &LiveRollout, decision: &Decision, now_ms: u64) {
        let key_metrics =
            live.rows.iter().filter(|r| r.verdict != Verdict::NotEnoughData).take(4).map(describe_row).collect();
        live.notifier.send(StatusUpdate {
            deployment: live.state.deployment.clone(),
            decision: action_name(&decision.action).to_string(),
            reason: decision.reason.clone(),
            actor: decision.actor.name().to_string(),
            share_bp: live.state.share_bp,
            next_step_in_s: live.state.window_remaining(&live.policy, now_ms).map(|d| d.as_secs()),
            key_metrics,
        });
    }
}

pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Start => "start",
        Action::Hold => "hold",
        Action::Promote { .. } => "promote",
        Action::Rollback => "rollback",
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::SetShare { .. } => "set share",
    }
}

/// One line per row: `error_rate: canary 0.0123 vs control 0.0051 (worse, p=0.001)`.
pub fn describe_row(row: &ComparisonRow) -> String {
    let value = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let p = row.p_value.map_or(String::new(), |p| format!(", p={p:.3}"));
    format!("{}: canary {} vs control {} ({:?}{p})", row.metric, value(row.canary), value(row.control), row.verdict)
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
            _ = ticker.tick() => engine.check_due(now_ms()).await,
        }
    }
}
