//! The audit log and the state files of one analyzer, kept consistent and locked to one process.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use super::{
    AUDIT_FILE, AuditError, AuditLog, AuditReader, AuditRecord, LOCK_FILE, PersistedRollout, STATE_DIR, StateStore,
    StoreHealth, UnreadableState, io_error,
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

/// What [`RolloutStore::commit_or_defer`] did with a decision.
#[derive(Debug)]
pub enum Recorded {
    /// In the log, as [`RolloutStore::commit`] does it.
    Logged(Box<Committed>),
    /// The append failed with `error`; the decision takes effect anyway and its
    /// record waits in memory for the next append that succeeds.
    Deferred { error: AuditError },
}

/// The file [`RolloutStore::retry_deferred`] writes to see whether the store takes writes again.
const PROBE_FILE: &str = "write-probe";
/// Bytes the probe writes: one page, about one record (a record is 2 to 4 kB),
/// so a probe that fits says a record would too.
const PROBE_BYTES: usize = 4_096;
/// How often a store that is not recording tries again: a freed disk is noticed
/// within seconds, and a full one costs one failed write of a few kB per try.
pub const RETRY_INTERVAL_MS: u64 = 2_000;

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
    /// Records of decisions in effect that the log has not taken yet, oldest first.
    deferred: VecDeque<AuditRecord>,
    /// When the store last tried to record again after a failure (Unix ms).
    last_retry_ms: Option<u64>,
    /// State files that did not read back and could not be recovered from the log.
    unreadable: Vec<UnreadableState>,
    probe_path: PathBuf,
    /// Held for the store's lifetime; dropped last (fields drop in order).
    _lock: StoreLock,
}

impl RolloutStore {
    /// Locks `dir` for this process (refused with [`AuditError::Locked`] while
    /// another holds it), opens the store in it (`audit.jsonl` and `state/`),
    /// recovers from a crash, and returns every rollout as it stood after its last
    /// logged decision.
    ///
    /// A state file that does not read back (a policy value edited by hand, a field
    /// from a newer version) stops only its own rollout: when the log has a record
    /// of that deployment at least as new as the file (by the file's
    /// `last_applied_sequence`, when it still has one), the rollout is recovered
    /// from it — the record carries the policy and the state after it — and the
    /// file is set aside as `<deployment>.json.invalid-<n>`. Otherwise it is left
    /// in place and listed in [`RolloutStore::unreadable_states`]; the other
    /// rollouts open as usual.
    pub fn open(dir: &Path) -> Result<(RolloutStore, BTreeMap<String, PersistedRollout>), AuditError> {
        fs::create_dir_all(dir).map_err(io_error("create store directory", dir))?;
        // First: opening the state store removes temporary files another owner may be writing.
        let lock = StoreLock::acquire(dir)?;
        let states = StateStore::open(&dir.join(STATE_DIR))?;
        let (mut audit, recovery) = AuditLog::open(&dir.join(AUDIT_FILE))?;
        let (mut rollouts, mut unreadable) = states.load_all()?;
        let logged_up_to = audit.next_sequence().saturating_sub(1);
        for rollout in rollouts.values() {
            audit.skip_past(rollout.last_applied_sequence);
        }
        for file in &unreadable {
            audit.skip_past(file.last_applied_sequence.unwrap_or(0));
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
            let bad_file = unreadable.iter().position(|u| u.deployment == deployment);
            if let Some(index) = bad_file {
                let file = unreadable.remove(index);
                if file.last_applied_sequence.is_some_and(|sequence| sequence > record.sequence) {
                    // The log is older than the file (rotated): its record would go back in time.
                    unreadable.push(file);
                    continue;
                }
                let aside = states.set_aside(&file)?;
                tracing::warn!(
                    %deployment, state_file = %file.path.display(), set_aside = %aside.display(), error = %file.reason,
                    sequence = record.sequence,
                    "state file does not read back: rollout recovered from its latest audit record; the file is \
                     set aside"
                );
            }
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
        for file in &unreadable {
            tracing::error!(
                deployment = %file.deployment, state_file = %file.path.display(), error = %file.reason,
                "state file does not read back and the audit log has no record to recover it from: this rollout \
                 is not served; fix the file, or register the rollout again (the file is then set aside)"
            );
        }
        let store = RolloutStore {
            audit,
            states,
            deferred: VecDeque::new(),
            last_retry_ms: None,
            unreadable,
            probe_path: dir.join(PROBE_FILE),
            _lock: lock,
        };
        Ok((store, rollouts))
    }

    /// Logs a decision durably, then persists the state after it. Deferred
    /// records go first, in order: a decision is never logged ahead of one that
    /// took effect before it.
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
        self.append_deferred(at_ms)?;
        failpoint("before-audit-append", decision);
        let record = self.audit.append(at_ms, policy, decision, before, after)?;
        failpoint("after-audit-append", decision);
        let state_error = self.save_state(&record).err();
        failpoint("after-state-save", decision);
        Ok(Committed { record, state_error })
    }

    /// [`RolloutStore::commit`] for a decision that must take effect even when it
    /// cannot be recorded (a rollback: serving the canary on because the disk is
    /// full would be the unsafe failure). When the append fails, its record is
    /// kept in memory and appended — marked with `recorded_late_at_ms` — by the
    /// next commit or [`RolloutStore::retry_deferred`] that gets through; until
    /// then [`StoreHealth`] says the store is not recording. A restart before that
    /// loses the record (the decision is then made again from fresh data).
    /// Only a record that cannot even be encoded is refused.
    pub fn commit_or_defer(
        &mut self,
        at_ms: u64,
        policy: &RolloutPolicy,
        decision: &Decision,
        before: Option<&RolloutState>,
        after: &RolloutState,
    ) -> Result<Recorded, AuditError> {
        match self.commit(at_ms, policy, decision, before, after) {
            Ok(committed) => Ok(Recorded::Logged(Box::new(committed))),
            Err(error @ (AuditError::Io { .. } | AuditError::Poisoned(_))) => {
                self.deferred.push_back(AuditRecord::draft(at_ms, policy, decision, before, after));
                self.audit.health.set_pending(self.deferred.len());
                Ok(Recorded::Deferred { error })
            }
            Err(other) => Err(other),
        }
    }

    /// While the store is not recording, at most every [`RETRY_INTERVAL_MS`]:
    /// appends the deferred records, or, with none, writes a probe file to see
    /// whether writes go through again (so a store whose failed decision nobody
    /// repeats does not stay unhealthy on a disk that has room again). Returns how
    /// many deferred records it appended.
    pub fn retry_deferred(&mut self, now_ms: u64) -> Result<usize, AuditError> {
        let due = self.last_retry_ms.is_none_or(|last| now_ms.saturating_sub(last) >= RETRY_INTERVAL_MS);
        if self.audit.health.is_recording() || !due {
            return Ok(0);
        }
        self.last_retry_ms = Some(now_ms);
        if self.deferred.is_empty() {
            self.probe()?;
            return Ok(0);
        }
        self.append_deferred(now_ms)
    }

    /// Appends every deferred record, oldest first, stamped `recorded_late_at_ms = now_ms`.
    fn append_deferred(&mut self, now_ms: u64) -> Result<usize, AuditError> {
        let mut appended = 0;
        while let Some(record) = self.deferred.front() {
            let late = AuditRecord { recorded_late_at_ms: Some(now_ms), ..record.clone() };
            let record = self.audit.append_record(late)?;
            self.deferred.pop_front();
            self.audit.health.set_pending(self.deferred.len());
            appended += 1;
            tracing::warn!(
                deployment = %record.deployment, sequence = record.sequence, decided_at_ms = record.at_ms,
                "a decision that took effect while the audit log could not take it is now recorded"
            );
            if let Err(e) = self.save_state(&record) {
                tracing::warn!(deployment = %record.deployment, error = %e, "state file not written; the audit log has the decision");
            }
        }
        Ok(appended)
    }

    /// Writes, syncs and removes [`PROBE_FILE`]; success clears the failure (a
    /// partial line the log still ends in is cut off first).
    fn probe(&mut self) -> Result<(), AuditError> {
        self.audit.repair()?;
        let path = &self.probe_path;
        #[cfg(test)]
        if self.audit.disk_full {
            let source = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (injected)");
            return Err(AuditError::Io { action: "write probe file", path: path.clone(), source });
        }
        let written = File::create(path)
            .and_then(|mut file| file.write_all(&[0u8; PROBE_BYTES]).and_then(|()| file.sync_data()))
            .and_then(|()| fs::remove_file(path));
        if let Err(source) = written {
            // Best effort: a probe file left on a full disk would take the room it tests for.
            let _ = fs::remove_file(path);
            return Err(AuditError::Io { action: "write probe file", path: path.clone(), source });
        }
        tracing::info!(audit_log = %self.audit.path.display(), "the store takes writes again");
        self.audit.health.append_succeeded();
        Ok(())
    }

    /// State files that did not read back at open and could not be recovered from the
    /// log: their rollouts are not served (until registered again).
    pub fn unreadable_states(&self) -> &[UnreadableState] {
        &self.unreadable
    }

    /// Saves the state after `record` as the rollout's state file (setting aside
    /// an unreadable one it replaces).
    fn save_state(&mut self, record: &AuditRecord) -> Result<(), AuditError> {
        if let Some(index) = self.unreadable.iter().position(|u| u.deployment == record.deployment) {
            let file = self.unreadable.remove(index);
            let aside = self.states.set_aside(&file)?;
            tracing::warn!(deployment = %file.deployment, set_aside = %aside.display(), "unreadable state file set aside");
        }
        self.states.save(&PersistedRollout {
            policy: record.policy.clone(),
            state: record.after.clone(),
            last_applied_sequence: record.sequence,
        })
    }

    /// Tests: makes every write to the store fail half-way as on a full disk, or work again.
    #[cfg(test)]
    pub(crate) fn set_disk_full_for_test(&mut self, full: bool) {
        self.audit.disk_full = full;
    }

    /// Reads pages of one deployment's records without the store (and its lock).
    pub fn reader(&self) -> AuditReader {
        self.audit.reader()
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
