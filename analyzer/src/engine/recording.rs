//! The engine's side of the audit log: committing a decision (rollbacks fail safe
//! when the log cannot take them), retrying what could not be recorded, and
//! reading pages of a deployment's records off the async runtime.
//!
//! A rollback takes effect even when its record cannot be appended (a full or
//! failing disk): the share served drops to 0 at once, `/healthz` answers 503 and
//! `canary_analyzer_audit_recording` is 0, and the record is appended, marked
//! `recorded_late_at_ms`, as soon as the disk takes writes again
//! ([`crate::audit::RolloutStore::commit_or_defer`]). Every other decision is
//! refused unless it is in the log first: a promotion waits for a disk that works.

use super::{Engine, EngineError};
use crate::audit::{AuditError, AuditPage, AuditRecord, Recorded, RolloutStore};
use crate::ladder::{Action, Decision, RolloutState};
use crate::policy::RolloutPolicy;

/// Appends a decision to the audit log and saves the state after it; a state file
/// that could not be written is only a warning, the log being the truth.
///
/// `Ok(None)`: logged, apply it. `Ok(Some(error))`: a rollback the log could not
/// take (`error`); apply it anyway, its record follows. `Err`: not logged, do not apply.
pub(super) fn commit_logged(
    store: &mut RolloutStore,
    at_ms: u64,
    policy: &RolloutPolicy,
    decision: &Decision,
    before: Option<&RolloutState>,
    after: &RolloutState,
) -> Result<Option<AuditError>, AuditError> {
    let committed = if fails_safe(decision) {
        match store.commit_or_defer(at_ms, policy, decision, before, after)? {
            Recorded::Logged(committed) => *committed,
            Recorded::Deferred { error } => {
                tracing::error!(
                    deployment = %after.deployment, error = %error, share_bp = after.share_bp,
                    generation = after.generation,
                    "rollback takes effect without its audit record: the log cannot take it; the record is \
                     appended as soon as it can be"
                );
                return Ok(Some(error));
            }
        }
    } else {
        store.commit(at_ms, policy, decision, before, after)?
    };
    if let Some(e) = committed.state_error {
        tracing::warn!(deployment = %after.deployment, error = %e, "state file not written; the audit log has the decision");
    }
    Ok(None)
}

/// Whether a decision takes effect even when it cannot be recorded: a rollback
/// only moves users back to stable, the safe side of every failure.
fn fails_safe(decision: &Decision) -> bool {
    matches!(decision.action, Action::Rollback)
}

/// What a webhook post says of a decision that is in effect but not yet recorded.
pub(super) fn unrecorded_note(reason: &str, error: &AuditError) -> String {
    format!(
        "{reason} (in effect but NOT yet in the audit log: {}; recorded as soon as the log takes writes again)",
        crate::source::describe(error)
    )
}

impl Engine {
    /// While the audit log is not recording, appends the rollbacks that took effect
    /// without their records, or probes whether the disk takes writes again (at most
    /// every [`crate::audit::RETRY_INTERVAL_MS`]); nothing to do, and no lock taken,
    /// while it records.
    pub async fn retry_recording(&self, now_ms: u64) {
        if self.store_health.is_recording() {
            return;
        }
        let mut inner = self.inner.lock().await;
        match inner.store.retry_deferred(now_ms) {
            Ok(0) => {}
            Ok(appended) => tracing::info!(appended, "audit log recording again"),
            Err(e) => tracing::debug!(error = %e, "audit log still not recording"),
        }
    }

    /// A page of one deployment's audit records, oldest first, read off the runtime
    /// (see [`crate::audit::AuditReader`]): a large log never holds up the filters' polls.
    pub async fn audit_page(&self, deployment: &str, page: AuditPage) -> Result<Vec<AuditRecord>, EngineError> {
        Ok(self.audit_reader.page(deployment, page).await?)
    }

    /// The same page as JSON, encoded off the runtime too.
    pub async fn audit_page_json(&self, deployment: &str, page: AuditPage) -> Result<Vec<u8>, EngineError> {
        Ok(self.audit_reader.page_json(deployment, page).await?)
    }

    /// Every audit record of one deployment, oldest first. Blocking: for tests and
    /// tools; the API reads pages with [`Engine::audit_page`].
    pub fn audit(&self, deployment: &str) -> Result<Vec<AuditRecord>, EngineError> {
        Ok(self.audit_reader.read(deployment, AuditPage::all())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SourceSettings;
    use crate::ladder::{Actor, OverrideAction};
    use crate::notify::Notifier;
    use canary_core::RolloutPhase;

    const T0: u64 = 1_700_000_000_000;
    const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\n\
                          spec: {deployment: checkout}\n";

    fn engine(dir: &std::path::Path) -> Engine {
        let source = SourceSettings::EnvoyAdmin {
            admin_urls: vec!["http://127.0.0.1:1".into()],
            max_body_bytes: crate::source::DEFAULT_MAX_BODY_BYTES,
        };
        Engine::open(dir, source, Notifier::new(Vec::new())).unwrap()
    }

    fn alice() -> crate::ladder::ActedBy {
        Actor::human("alice").unwrap().into()
    }

    #[tokio::test]
    async fn a_rollback_on_a_full_disk_serves_0_percent_and_is_recorded_when_the_disk_has_room() {
        let dir = std::env::temp_dir().join(format!("canary-recording-{}-{T0}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = engine(&dir);
        let policy = RolloutPolicy::from_yaml(POLICY).unwrap();
        engine.register(policy, Actor::human("ci").unwrap(), T0).await.unwrap();
        let served = engine.config("checkout").unwrap();
        assert_eq!(served.share_bp, 100);
        engine.inner.lock().await.store.set_disk_full_for_test(true);

        // A promotion waits for a disk that works: refused, nothing changes.
        let promote = engine.override_rollout("checkout", &OverrideAction::Promote, &alice(), "go", T0 + 1).await;
        assert!(matches!(promote, Err(EngineError::Audit(AuditError::Io { .. }))), "{promote:?}");
        assert_eq!(engine.config("checkout").unwrap(), served);
        assert!(engine.recording_failure().unwrap().contains("No space left on device"));
        assert_eq!(engine.unrecorded_decisions(), 0);

        // A rollback takes effect: the filters are told 0 % under a new generation.
        let status =
            engine.override_rollout("checkout", &OverrideAction::Rollback, &alice(), "bad", T0 + 2).await.unwrap();
        assert_eq!(status.state.phase, RolloutPhase::RolledBack);
        let config = engine.config("checkout").unwrap();
        assert_eq!((config.share_bp, config.generation), (0, served.generation + 1));
        assert_eq!(engine.unrecorded_decisions(), 1);
        assert!(engine.recording_failure().unwrap().contains("1 decision(s) in effect are not in the audit log yet"));
        assert_eq!(engine.audit("checkout").unwrap().len(), 1, "only the registration is in the log");

        engine.retry_recording(T0 + 3).await;
        assert_eq!(engine.unrecorded_decisions(), 1, "still full");
        engine.inner.lock().await.store.set_disk_full_for_test(false);
        engine.retry_recording(T0 + 3 + crate::audit::RETRY_INTERVAL_MS).await;
        assert_eq!((engine.unrecorded_decisions(), engine.recording_failure()), (0, None));
        let records = engine.audit_page("checkout", AuditPage::all()).await.unwrap();
        let rollback = records.last().unwrap();
        assert_eq!((rollback.sequence, rollback.decision.action), (2, Action::Rollback));
        assert_eq!(
            (rollback.at_ms, rollback.recorded_late_at_ms),
            (T0 + 2, Some(T0 + 3 + crate::audit::RETRY_INTERVAL_MS))
        );
        drop(engine);
        let reopened = self::engine(&dir);
        assert_eq!(reopened.config("checkout").unwrap(), config, "a restart serves the recorded rollback");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_webhook_says_a_decision_is_not_recorded_yet_and_why() {
        let error = AuditError::Io {
            action: "append to audit log",
            path: "/state/audit.jsonl".into(),
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device"),
        };
        assert_eq!(
            unrecorded_note("error_rate worse", &error),
            "error_rate worse (in effect but NOT yet in the audit log: cannot append to audit log \
             /state/audit.jsonl: No space left on device; recorded as soon as the log takes writes again)"
        );
    }
}
