//! The audit log and the state files of one analyzer, kept consistent and locked to one process.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use rustix::fs::FlockOperation;

use super::{
    AUDIT_FILE, AuditError, AuditLog, AuditRecord, LOCK_FILE, PersistedRollout, STATE_DIR, StateStore, StoreHealth,
    io_error,
};
use crate::ladder::{Decision, RolloutState};
use crate::policy::RolloutPolicy;

/// Test-only crash points (debug builds): `CANARY_ANALYZER_FAILPOINT=<point>:<action>`
/// makes the process SIGKILL itself at `point` of the first commit of a decision of
/// that kind (`start`, `promote`, `rollback`, ...), so the end-to-end tests can crash
/// the real binary exactly between two steps of [`RolloutStore::commit`].
#[cfg(debug_assertions)]
fn failpoint(point: &str, decision: &Decision) {
    let Ok(wanted) = std::env::var("CANARY_ANALYZER_FAILPOINT") else { return };
    let kind = serde_json::to_value(decision.action)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string));
    if kind.is_some_and(|kind| wanted == format!("{point}:{kind}")) {
        tracing::error!(failpoint = %wanted, "failpoint reached: killing this process with SIGKILL");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

#[cfg(not(debug_assertions))]
fn failpoint(_: &str, _: &Decision) {}

/// A decision that is in the audit log.
#[derive(Debug)]
pub struct Committed {
    pub record: AuditRecord,
    /// Saving the state file failed (log it); the record is durable regardless.
    pub state_error: Option<AuditError>,
}

/// An exclusive `flock` on a store directory's [`LOCK_FILE`]. Released when the
/// file is closed: when this is dropped, or by the kernel when the process dies.
/// A lock belongs to one open file description, so a second open of the same
/// file conflicts even within one process.
#[derive(Debug)]
struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Takes the lock without waiting, then writes this process's pid into the file.
    fn acquire(dir: &Path) -> Result<StoreLock, AuditError> {
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: the pid in it belongs to whoever holds the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("open lock file", &path))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {
                let mut text = String::new();
                // Best effort: an unreadable pid still leaves a clear refusal.
                let holder_pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                return Err(AuditError::Locked { dir: dir.to_path_buf(), lock: path, holder_pid });
            }
            Err(errno) => return Err(AuditError::Io { action: "lock", path, source: errno.into() }),
        }
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(io_error("write the pid into lock file", &path))?;
        Ok(StoreLock { _file: file })
    }
}

/// The audit log and the state files of one analyzer, kept consistent.
#[derive(Debug)]
pub struct RolloutStore {
    pub(super) audit: AuditLog,
    states: StateStore,
    /// Held for the store's lifetime; dropped last (fields drop in order).
    _lock: StoreLock,
}

impl RolloutStore {
    /// Locks `dir` for this process (refused with [`AuditError::Locked`] while
    /// another holds it), opens the store in it (`audit.jsonl` and `state/`),
    /// recovers from a crash, and returns every rollout as it stood after its last
    /// logged decision.
    pub fn open(dir: &Path) -> Result<(RolloutStore, BTreeMap<String, PersistedRollout>), AuditError> {
        fs::create_dir_all(dir).map_err(io_error("create store directory", dir))?;
        // First: opening the state store removes temporary files another owner may be writing.
        let lock = StoreLock::acquire(dir)?;
        let states = StateStore::open(&dir.join(STATE_DIR))?;
        let (mut audit, recovery) = AuditLog::open(&dir.join(AUDIT_FILE))?;
        let mut rollouts = states.load_all()?;
        let logged_up_to = audit.next_sequence().saturating_sub(1);
        for rollout in rollouts.values() {
            audit.skip_past(rollout.last_applied_sequence);
        }
        let remembered_up_to = audit.next_sequence().saturating_sub(1);
        if remembered_up_to > logged_up_to && logged_up_to == 0 {
            // An empty log beside older state files: rotated away (or lost) as a whole.
            tracing::info!(
                audit_log = %audit.path.display(),
                "audit log is empty and state files remember sequence {remembered_up_to}: records \
                 1..={remembered_up_to} are elsewhere (rotated or lost); the next record is {}",
                audit.next_sequence()
            );
        } else if remembered_up_to > logged_up_to {
            tracing::warn!(
                audit_log = %audit.path.display(),
                "state files remember sequence {remembered_up_to} but the audit log ends at {logged_up_to}: \
                 records {}..={remembered_up_to} are missing from it; the next record is {}",
                logged_up_to.saturating_add(1),
                audit.next_sequence()
            );
        }
        for (deployment, record) in recovery.latest_by_deployment {
            let behind = rollouts.get(&deployment).is_none_or(|r| r.last_applied_sequence < record.sequence);
            if behind {
                let caught_up = PersistedRollout {
                    policy: record.policy.with_webhook_secret_from(rollouts.get(&deployment).map(|r| &r.policy)),
                    state: record.after,
                    last_applied_sequence: record.sequence,
                };
                states.save(&caught_up)?;
                rollouts.insert(deployment, caught_up);
            }
        }
        Ok((RolloutStore { audit, states, _lock: lock }, rollouts))
    }

    /// Logs a decision durably, then persists the state after it.
    ///
    /// `Err` means the record is not in the log: the decision must not take
    /// effect. `Ok` means it is logged and must take effect (serve `after`) —
    /// even if saving the state file failed ([`Committed::state_error`]): the
    /// log is the truth, and the next [`RolloutStore::open`] or commit catches
    /// the state file up.
    pub fn commit(
        &mut self,
        at_ms: u64,
        policy: &RolloutPolicy,
        decision: &Decision,
        before: Option<&RolloutState>,
        after: &RolloutState,
    ) -> Result<Committed, AuditError> {
        failpoint("before-audit-append", decision);
        let record = self.audit.append(at_ms, policy, decision, before, after)?;
        failpoint("after-audit-append", decision);
        let rollout =
            PersistedRollout { policy: policy.clone(), state: after.clone(), last_applied_sequence: record.sequence };
        let state_error = self.states.save(&rollout).err();
        failpoint("after-state-save", decision);
        Ok(Committed { record, state_error })
    }

    pub fn audit_path(&self) -> &Path {
        &self.audit.path
    }

    /// Whether the store can still record decisions; the handle stays current
    /// after it is taken, so take it once and read it from anywhere.
    pub fn health(&self) -> StoreHealth {
        self.audit.health()
    }
}
