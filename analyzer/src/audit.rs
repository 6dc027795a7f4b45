//! Durable memory of the analyzer: the append-only audit log of every decision
//! and the persisted state of every rollout, and the recovery that puts them
//! back together after a crash.
//!
//! The order is what makes it safe ([`RolloutStore::commit`]):
//! 1. the decision is appended to `audit.jsonl` as one JSON line with the next
//!    sequence number, and `sync_data` returns: only now may it take effect;
//! 2. the rollout's state, with that sequence number as `last_applied_sequence`,
//!    is written to a temporary file, synced, and renamed over
//!    `state/<deployment>.json` (then the directory is synced).
//!
//! A crash during 1 leaves a torn last line. It was never acknowledged, so no
//! state reflects it: [`AuditLog::open`] saves its bytes in `audit.jsonl.torn-<n>`,
//! cuts it off the log, and the next record reuses
//! its sequence number. A crash between 1 and 2 leaves a state file one record
//! behind: every record carries the full state after the decision (and the
//! policy), so recovery adopts the newest record's state whenever its sequence
//! number is above the state file's — replaying twice changes nothing, and no
//! record is lost or written twice.
//!
//! Sequence numbers only ever increase, but the log need not hold all of them:
//! a log that was rotated (or lost) starts above 1, and a state file that
//! remembers a higher sequence than the log holds makes the next record skip
//! past it. [`AuditLog::open`] accepts both and logs the missing ranges; a
//! repeated or decreasing number is corruption (two writers, or a bad copy).
//!
//! One process owns a store directory at a time: [`RolloutStore::open`] takes an
//! exclusive `flock` on `<dir>/lock` (and writes its pid into it) for as long as
//! the store lives; the kernel drops it when the process dies, however it dies.
//! A second analyzer on the same directory is refused instead of interleaving
//! its records with the first one's.
//!
//! [`StoreHealth`] tells, without the engine's lock, whether the store can still
//! record decisions: after an append that failed and could not be cut off again,
//! every later commit fails (rollbacks too) until the store is reopened.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::ladder::{Decision, RolloutState};
use crate::policy::RolloutPolicy;

/// The audit log's file name inside a store directory.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The directory of per-rollout state files inside a store directory.
pub const STATE_DIR: &str = "state";
/// Suffix of a state file being written; left-overs from a crash are removed on open.
const TEMP_SUFFIX: &str = ".tmp";
/// Suffix of a committed state file.
const STATE_SUFFIX: &str = ".json";
/// The lock file inside a store directory: `flock`ed by the owning process, holding its pid.
pub const LOCK_FILE: &str = "lock";

/// Why the store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("audit log {path} is corrupt at line {line}: {reason}")]
    Corrupt { path: PathBuf, line: u64, reason: String },
    #[error("state file {path} is unreadable")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode an audit record")]
    Encode(#[source] serde_json::Error),
    #[error("audit log {0} failed a write it could not undo; reopen the store")]
    Poisoned(PathBuf),
    #[error(
        "store directory {dir} is in use by another process ({}, lock {lock}): one analyzer per state directory",
        holder_text(*.holder_pid)
    )]
    Locked { dir: PathBuf, lock: PathBuf, holder_pid: Option<u32> },
}

fn holder_text(holder_pid: Option<u32>) -> String {
    match holder_pid {
        Some(pid) => format!("pid {pid}"),
        // It locked the file but has not written its pid yet (or the file was edited).
        None => "pid not recorded".to_string(),
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { action, path, source }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, ... across the whole log, without gaps.
    pub sequence: u64,
    /// When the decision was made (Unix ms).
    pub at_ms: u64,
    pub deployment: String,
    /// The decision: action, reason, actor and the comparison rows behind it.
    pub decision: Decision,
    pub policy_name: String,
    /// [`RolloutPolicy::fingerprint`] of `policy`.
    pub policy_hash: String,
    /// The full policy in force, so the record is self-contained; written with its
    /// webhook URL redacted (the state file keeps the real one).
    #[serde(serialize_with = "RolloutPolicy::serialize_redacted")]
    pub policy: RolloutPolicy,
    /// `None` for the record that registers a rollout.
    pub before: Option<RolloutState>,
    pub after: RolloutState,
}

/// The append-only JSON-lines log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    /// Length of the file up to the end of the last acknowledged record.
    committed_len: u64,
    next_sequence: u64,
    /// Set when a failed append could not be cut off again: appending more would bury a torn line.
    poisoned: bool,
    /// Tells the rest of the analyzer that `poisoned` is set, without going through the log.
    health: StoreHealth,
}

/// Whether a store can still record decisions; cheap to clone and to read from
/// any thread (a `/healthz` handler, a metrics scrape) without the engine's lock.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth {
    /// Set once, when the audit log is poisoned; a store never recovers without a reopen.
    failure: Arc<OnceLock<String>>,
}

impl StoreHealth {
    /// `false` once an append failed and could not be undone: every later commit fails.
    pub fn is_recording(&self) -> bool {
        self.failure.get().is_none()
    }

    /// Why the store stopped recording, when it has.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// What a poisoned log does to the health signal, for tests of its readers (the
    /// poisoning itself is tested with a real write failure in this module).
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self, reason: &str) {
        self.stop_recording(reason.to_string());
    }

    fn stop_recording(&self, reason: String) {
        // A second failure keeps the first reason: that is the one that broke the log.
        let _ = self.failure.set(reason);
    }
}

/// What [`AuditLog::open`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditRecovery {
    /// The newest record of each deployment (all recovery needs: records carry full states).
    pub latest_by_deployment: BTreeMap<String, AuditRecord>,
    /// Complete records in the log.
    pub records: u64,
    /// Bytes of a torn last line that were cut off (0 after a clean shutdown).
    pub truncated_bytes: u64,
    /// Where the torn bytes were saved before they were cut off.
    pub torn_bytes_saved_to: Option<PathBuf>,
    /// Sequence numbers not in the log, in order: `1..=first - 1` when the log was
    /// rotated (or lost) before its first record, then any skipped between records.
    pub missing: Vec<RangeInclusive<u64>>,
}

impl AuditLog {
    /// Opens (creating if needed) the log at `path`, checks every line, and cuts off a torn last line.
    ///
    /// A line counts only if it ends in a newline and parses; only the last one
    /// may fail that (a crash mid-append). A bad line before it, or a sequence
    /// number that repeats or goes back, is corruption and refused rather than
    /// guessed at. Missing numbers (a rotated log, a record skipped past what a
    /// state file remembered) are accepted, listed in [`AuditRecovery::missing`]
    /// and logged.
    pub fn open(path: &Path) -> Result<(AuditLog, AuditRecovery), AuditError> {
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_error("open audit log", path))?;
        if !existed {
            sync_parent(path)?;
        }
        let mut recovery = AuditRecovery::default();
        let mut last_sequence = 0u64;
        let committed_len = scan_records(path, &mut file, |line_number, record| {
            if record.sequence <= last_sequence {
                return Err(AuditError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_number,
                    reason: format!("sequence {} follows {last_sequence}", record.sequence),
                });
            }
            let expected = last_sequence.saturating_add(1);
            if record.sequence > expected {
                let missing = expected..=record.sequence.saturating_sub(1);
                if line_number == 1 {
                    tracing::info!(
                        audit_log = %path.display(), first_sequence = record.sequence,
                        "audit log starts at sequence {}: records {}..={} are elsewhere (rotated or lost)",
                        record.sequence, missing.start(), missing.end()
                    );
                } else {
                    tracing::warn!(
                        audit_log = %path.display(), line = line_number,
                        "audit log skips from sequence {last_sequence} to {}: records {}..={} are not in it \
                         (lost; the next record had to skip past what a state file remembered)",
                        record.sequence, missing.start(), missing.end()
                    );
                }
                recovery.missing.push(missing);
            }
            last_sequence = record.sequence;
            recovery.records = line_number;
            recovery.latest_by_deployment.insert(record.deployment.clone(), record);
            Ok(())
        })?;
        let file_len = file.metadata().map_err(io_error("read audit log", path))?.len();
        if file_len > committed_len {
            // Never acknowledged, so never in effect; but kept for a human to look at, not dropped.
            let torn = set_aside_torn_bytes(path, &mut file, committed_len)?;
            file.set_len(committed_len).map_err(io_error("cut the torn line off", path))?;
            file.sync_data().map_err(io_error("sync audit log", path))?;
            recovery.truncated_bytes = file_len - committed_len;
            tracing::warn!(
                audit_log = %path.display(), torn_bytes = recovery.truncated_bytes, set_aside = %torn.display(),
                "audit log ended in a torn line (a crash mid-append): its {} bytes were never acknowledged and \
                 took no effect; they are saved in {} and cut off the log",
                recovery.truncated_bytes, torn.display()
            );
            recovery.torn_bytes_saved_to = Some(torn);
        }
        let log = AuditLog {
            path: path.to_path_buf(),
            file,
            committed_len,
            next_sequence: last_sequence.saturating_add(1),
            poisoned: false,
            health: StoreHealth::default(),
        };
        Ok((log, recovery))
    }

    /// Whether this log can still append; shares its state with every clone.
    pub fn health(&self) -> StoreHealth {
        self.health.clone()
    }

    /// The sequence number the next record gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Never hand out a sequence number at or below `sequence` (e.g. one a state file already remembers).
    pub fn skip_past(&mut self, sequence: u64) {
        self.next_sequence = self.next_sequence.max(sequence.saturating_add(1));
    }

    /// Appends one record and syncs it to disk; returns it with its sequence number.
    /// When this returns `Ok`, the record survives a crash; when it returns
    /// `Err`, the record is not in the log and the decision must not take effect.
    pub fn append(
        &mut self,
        at_ms: u64,
        policy: &RolloutPolicy,
        decision: &Decision,
        before: Option<&RolloutState>,
        after: &RolloutState,
    ) -> Result<AuditRecord, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned(self.path.clone()));
        }
        let record = AuditRecord {
            sequence: self.next_sequence,
            at_ms,
            deployment: after.deployment.clone(),
            decision: decision.clone(),
            policy_name: policy.name.clone(),
            policy_hash: policy.fingerprint(),
            policy: policy.clone(),
            before: before.cloned(),
            after: after.clone(),
        };
        let mut line = serde_json::to_vec(&record).map_err(AuditError::Encode)?;
        line.push(b'\n');
        let written = self.file.write_all(&line).and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Cut the partial line off so the next append does not land behind garbage.
            if let Err(cut) = self.file.set_len(self.committed_len).and_then(|()| self.file.sync_data()) {
                self.poisoned = true;
                self.health.stop_recording(format!(
                    "an append to audit log {} failed ({source}) and its partial line could not be cut off \
                     ({cut}); no decision can be recorded until the store is reopened",
                    self.path.display()
                ));
            }
            return Err(AuditError::Io { action: "append to audit log", path: self.path.clone(), source });
        }
        self.committed_len = self.committed_len.saturating_add(u64::try_from(line.len()).unwrap_or(u64::MAX));
        self.next_sequence = self.next_sequence.saturating_add(1);
        Ok(record)
    }

    /// Every complete record of the log at `path` (for reports and tests; a torn
    /// last line is skipped, not cut off, and sequence numbers are not checked).
    pub fn read_all(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
        let file = File::open(path).map_err(io_error("read audit log", path))?;
        let mut records = Vec::new();
        scan_records(path, file, |_, record| {
            records.push(record);
            Ok(())
        })?;
        Ok(records)
    }
}

/// Reads the log line by line, handing each record to `visit` with its line
/// number, and stops at a torn last line: one without a newline or that does
/// not parse, with nothing after it. Returns the length of the complete records.
fn scan_records(
    path: &Path,
    reader: impl Read,
    mut visit: impl FnMut(u64, AuditRecord) -> Result<(), AuditError>,
) -> Result<u64, AuditError> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let (mut committed_len, mut line_number) = (0u64, 0u64);
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io_error("read audit log", path))?;
        if read == 0 {
            return Ok(committed_len);
        }
        line_number = line_number.saturating_add(1);
        let parsed = line
            .strip_suffix(b"\n")
            .ok_or_else(|| "no newline".to_string())
            .and_then(|body| serde_json::from_slice::<AuditRecord>(body).map_err(|e| e.to_string()));
        match parsed {
            Ok(record) => visit(line_number, record)?,
            Err(reason) => {
                let at_end = reader.fill_buf().map_err(io_error("read audit log", path))?.is_empty();
                if at_end {
                    return Ok(committed_len);
                }
                return Err(AuditError::Corrupt { path: path.to_path_buf(), line: line_number, reason });
            }
        }
        committed_len = committed_len.saturating_add(u64::try_from(read).unwrap_or(u64::MAX));
    }
}

/// Copies the bytes after `committed_len` to `<log>.torn-<n>` (the first free `n`),
/// synced, and returns that path.
fn set_aside_torn_bytes(path: &Path, file: &mut File, committed_len: u64) -> Result<PathBuf, AuditError> {
    use std::io::{Seek, SeekFrom};
    let mut torn = Vec::new();
    file.seek(SeekFrom::Start(committed_len))
        .and_then(|_| file.read_to_end(&mut torn))
        .map_err(io_error("read the torn line", path))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| AUDIT_FILE.into());
    let mut attempt = 1u32;
    loop {
        let aside = path.with_file_name(format!("{name}.torn-{attempt}"));
        match OpenOptions::new().write(true).create_new(true).open(&aside) {
            Ok(mut out) => {
                out.write_all(&torn).and_then(|()| out.sync_all()).map_err(io_error("save the torn line", &aside))?;
                sync_parent(&aside)?;
                return Ok(aside);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => attempt = attempt.saturating_add(1),
            Err(source) => return Err(AuditError::Io { action: "save the torn line", path: aside, source }),
        }
    }
}

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

/// Syncs the directory holding `path`, so a created or renamed entry survives a crash.
fn sync_parent(path: &Path) -> Result<(), AuditError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(parent).and_then(|dir| dir.sync_all()).map_err(io_error("sync directory", parent))
}

/// What is persisted per rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedRollout {
    pub policy: RolloutPolicy,
    pub state: RolloutState,
    /// The sequence number of the audit record this state is the `after` of.
    pub last_applied_sequence: u64,
}

/// One JSON file per rollout, replaced atomically.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating if needed) the state directory and removes half-written temporary files.
    pub fn open(dir: &Path) -> Result<StateStore, AuditError> {
        fs::create_dir_all(dir).map_err(io_error("create state directory", dir))?;
        for entry in fs::read_dir(dir).map_err(io_error("list state directory", dir))? {
            let path = entry.map_err(io_error("list state directory", dir))?.path();
            if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
                fs::remove_file(&path).map_err(io_error("remove left-over temporary file", &path))?;
            }
        }
        Ok(StateStore { dir: dir.to_path_buf() })
    }

    fn path_of(&self, deployment: &str) -> PathBuf {
        // Deployment ids are [A-Za-z0-9_-] (validated by the policy): safe as file names.
        self.dir.join(format!("{deployment}{STATE_SUFFIX}"))
    }

    /// Writes a temporary file, syncs it, renames it over the old state and syncs the directory.
    pub fn save(&self, rollout: &PersistedRollout) -> Result<(), AuditError> {
        let path = self.path_of(&rollout.state.deployment);
        let temp = self.dir.join(format!("{}{STATE_SUFFIX}{TEMP_SUFFIX}", rollout.state.deployment));
        let bytes = serde_json::to_vec_pretty(rollout).map_err(AuditError::Encode)?;
        let mut file = File::create(&temp).map_err(io_error("create state file", &temp))?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io_error("write state file", &temp))?;
        fs::rename(&temp, &path).map_err(io_error("replace state file", &path))?;
        sync_parent(&path)
    }

    /// Every persisted rollout, by deployment.
    pub fn load_all(&self) -> Result<BTreeMap<String, PersistedRollout>, AuditError> {
        let mut rollouts = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error("list state directory", &self.dir))? {
            let path = entry.map_err(io_error("list state directory", &self.dir))?.path();
            if !path.to_string_lossy().ends_with(STATE_SUFFIX) {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_error("read state file", &path))?;
            let rollout: PersistedRollout =
                serde_json::from_slice(&bytes).map_err(|source| AuditError::State { path: path.clone(), source })?;
            rollouts.insert(rollout.state.deployment.clone(), rollout);
        }
        Ok(rollouts)
    }
}

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
    audit: AuditLog,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::{Actor, OverrideAction, decide, human_override};
    use crate::stats::{ComparisonRow, DifferenceScale, Verdict};
    use crate::step_evidence::StepEvidence;
    use std::sync::atomic::{AtomicU64, Ordering};

    const T0: u64 = 1_700_000_000_000;
    const WINDOW_MS: u64 = 300_000;

    /// The overrides' caller, as the API authenticates it.
    fn alice() -> crate::ladder::ActedBy {
        Actor::human("alice").unwrap().into()
    }

    /// A fresh directory per test under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let unique = format!(
                "canary-audit-{}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            );
            let path = std::env::temp_dir().join(unique);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn policy() -> RolloutPolicy {
        RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n  \
             deployment: checkout\n  metrics: [{name: error_rate}]\n",
        )
        .unwrap()
    }

    fn rows(verdict: Verdict) -> Vec<ComparisonRow> {
        vec![ComparisonRow {
            metric: "error_rate".into(),
            canary: Some(0.01),
            control: Some(0.005),
            absolute_difference: Some(0.005),
            relative_difference: Some(1.0),
            interval: None,
            interval_scale: DifferenceScale::Relative,
            p_value: Some(0.01),
            verdict,
            unit: crate::stats::ValueUnit::Fraction,
            origin: crate::stats::RowOrigin::BuiltIn,
        }]
    }

    /// Registers a rollout and commits `promotions` automatic promotions; returns its state.
    fn run(store: &mut RolloutStore, policy: &RolloutPolicy, promotions: u64) -> RolloutState {
        let mut state = RolloutState::start(policy, 0, T0);
        store
            .commit(T0, policy, &Decision::start(&state, Actor::Human("ci".into()), "deploy 42"), None, &state)
            .unwrap();
        for i in 1..=promotions {
            let now = T0 + i * WINDOW_MS;
            let decision = decide(policy, &state, &rows(Verdict::NoDifference), &StepEvidence::ample(), now);
            let after = state.next(&decision, now).unwrap();
            let committed = store.commit(now, policy, &decision, Some(&state), &after).unwrap();
            assert!(committed.state_error.is_none());
            state = after;
        }
        state
    }

    fn sequences(path: &Path) -> Vec<u64> {
        AuditLog::read_all(path).unwrap().iter().map(|r| r.sequence).collect()
    }

    #[test]
    fn a_restarted_store_resumes_the_same_step() {
        let dir = TempDir::new();
        let policy = policy();
        let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert!(rollouts.is_empty());
        let state = run(&mut store, &policy, 2);
        assert_eq!(state.share_bp, 2_500);
        drop(store);
        let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
        let resumed = &rollouts["checkout"];
        assert_eq!(resumed.state, state);
        assert_eq!(resumed.policy, policy);
        assert_eq!(resumed.last_applied_sequence, 3);
        let records = AuditLog::read_all(store.audit_path()).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].before, None);
        assert_eq!(records[0].decision.actor, Actor::Human("ci".into()));
        assert_eq!(records[2].before.as_ref().map(|s| s.share_bp), Some(500));
        assert_eq!(records[2].after, state);
        assert_eq!(records[2].decision.rows, rows(Verdict::NoDifference));
        assert_eq!(records[2].policy_hash, policy.fingerprint());
        assert_eq!(records[2].policy_name, "p");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_its_sequence_reused() {
        let dir = TempDir::new();
        let policy = policy();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let state = run(&mut store, &policy, 1);
        let audit_path = store.audit_path().to_path_buf();
        drop(store);
        // A crash mid-append: half of a third record, no newline.
        let complete = fs::read(&audit_path).unwrap();
        let first_line_len = complete.iter().position(|&b| b == b'\n').unwrap();
        let torn = &complete[..first_line_len / 2];
        OpenOptions::new().append(true).open(&audit_path).unwrap().write_all(torn).unwrap();

        let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, state, "the torn record never took effect");
        assert_eq!(fs::read(&audit_path).unwrap(), complete, "the torn bytes are cut off the log");
        let aside = audit_path.with_file_name("audit.jsonl.torn-1");
        assert_eq!(fs::read(&aside).unwrap(), torn, "and set aside, not dropped");
        let rollback = human_override(&policy, &state, &OverrideAction::Rollback, &alice(), "bad", vec![]).unwrap();
        let after = state.next(&rollback, T0 + 2 * WINDOW_MS).unwrap();
        let committed = store.commit(T0 + 2 * WINDOW_MS, &policy, &rollback, Some(&state), &after).unwrap();
        assert_eq!(committed.record.sequence, 3);
        assert_eq!(sequences(&audit_path), [1, 2, 3]);
    }

    #[test]
    fn a_complete_but_garbled_last_line_is_torn_too() {
        let dir = TempDir::new();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        run(&mut store, &policy(), 1);
        let audit_path = store.audit_path().to_path_buf();
        drop(store);
        // Delayed allocation can leave zeros where the last write's data never landed.
        OpenOptions::new().append(true).open(&audit_path).unwrap().write_all(b"{\"sequence\":3,\0\0\0\n").unwrap();
        let (log, recovery) = AuditLog::open(&audit_path).unwrap();
        assert_eq!((recovery.records, recovery.truncated_bytes), (2, 18));
        assert_eq!(log.next_sequence(), 3);
    }

    #[test]
    fn a_crash_between_log_and_state_is_replayed_once() {
        let dir = TempDir::new();
        let policy = policy();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let state = run(&mut store, &policy, 1);
        drop(store);
        // The decision reached the log but the process died before the state file was replaced.
        let (mut log, _) = AuditLog::open(&dir.0.join(AUDIT_FILE)).unwrap();
        let now = T0 + 2 * WINDOW_MS;
        let promote = decide(&policy, &state, &rows(Verdict::NoDifference), &StepEvidence::ample(), now);
        let after = state.next(&promote, now).unwrap();
        log.append(now, &policy, &promote, Some(&state), &after).unwrap();
        drop(log);
        let stale = StateStore::open(&dir.0.join(STATE_DIR)).unwrap().load_all().unwrap();
        assert_eq!(stale["checkout"].state, state);

        for _ in 0..2 {
            let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
            assert_eq!(rollouts["checkout"].state, after);
            assert_eq!(rollouts["checkout"].last_applied_sequence, 3);
            assert_eq!(sequences(store.audit_path()), [1, 2, 3], "no record lost or duplicated");
        }
        let persisted = StateStore::open(&dir.0.join(STATE_DIR)).unwrap().load_all().unwrap();
        assert_eq!(persisted["checkout"].state, after, "the state file caught up");
    }

    #[test]
    fn a_rollout_registered_just_before_a_crash_is_recovered_from_the_log() {
        let dir = TempDir::new();
        let policy = policy();
        let (mut log, _) = AuditLog::open(&dir.0.join(AUDIT_FILE)).unwrap();
        let state = RolloutState::start(&policy, 0, T0);
        log.append(T0, &policy, &Decision::start(&state, Actor::Analyzer, "policy file"), None, &state).unwrap();
        drop(log);
        let (_, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, state);
        assert_eq!(rollouts["checkout"].policy, policy);
    }

    #[test]
    fn sequences_never_go_back_below_what_a_state_file_remembers() {
        let dir = TempDir::new();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let state = run(&mut store, &policy(), 2);
        drop(store);
        // The audit log is gone (rotated away, say): the state still knows sequence 3.
        fs::remove_file(dir.0.join(AUDIT_FILE)).unwrap();
        let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, state);
        let pause = human_override(&policy(), &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
        let after = state.next(&pause, T0).unwrap();
        assert_eq!(store.commit(T0, &policy(), &pause, Some(&state), &after).unwrap().record.sequence, 4);
    }

    /// Keeps only the records with sequence numbers in `keep` (a log rotated or cut by hand).
    fn keep_records(path: &Path, keep: RangeInclusive<u64>) {
        let kept: String = fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|line| keep.contains(&serde_json::from_str::<AuditRecord>(line).unwrap().sequence))
            .map(|line| format!("{line}\n"))
            .collect();
        fs::write(path, kept).unwrap();
    }

    #[test]
    fn a_deleted_audit_log_does_not_stop_the_next_start() {
        let dir = TempDir::new();
        let policy = policy();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let state = run(&mut store, &policy, 2);
        drop(store);
        fs::remove_file(dir.0.join(AUDIT_FILE)).unwrap();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
        let paused = state.next(&pause, T0).unwrap();
        assert_eq!(store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap().record.sequence, 4);
        drop(store);
        // The log now starts at 4: records 1..=3 went with the deleted file.
        for _ in 0..2 {
            let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
            assert_eq!(rollouts["checkout"].state, paused);
            assert_eq!(store.audit.next_sequence(), 5);
            assert_eq!(sequences(store.audit_path()), [4]);
        }
    }

    #[test]
    fn a_log_rotated_after_its_second_record_opens_from_sequence_3() {
        let dir = TempDir::new();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        run(&mut store, &policy(), 4);
        let audit_path = store.audit_path().to_path_buf();
        drop(store);
        keep_records(&audit_path, 3..=5);
        let (log, recovery) = AuditLog::open(&audit_path).unwrap();
        assert_eq!(recovery.records, 3);
        assert_eq!(recovery.missing, [1..=2]);
        assert_eq!(recovery.latest_by_deployment["checkout"].sequence, 5);
        assert_eq!(log.next_sequence(), 6);
    }

    #[test]
    fn state_files_ahead_of_a_rotated_log_are_skipped_past_and_reopen() {
        let dir = TempDir::new();
        let policy = policy();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let state = run(&mut store, &policy, 3);
        let audit_path = store.audit_path().to_path_buf();
        drop(store);
        // Rotated before record 2, and record 4 lost (an older copy restored): the state file remembers 4.
        keep_records(&audit_path, 2..=3);
        let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, state, "the state file is newer than the log: kept");
        let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
        let paused = state.next(&pause, T0).unwrap();
        assert_eq!(store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap().record.sequence, 5);
        drop(store);
        for _ in 0..2 {
            let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
            assert_eq!(rollouts["checkout"].state, paused);
            assert_eq!(store.audit.next_sequence(), 6);
        }
        let (_, recovery) = AuditLog::open(&audit_path).unwrap();
        assert_eq!(recovery.missing, [1..=1, 4..=4]);
    }

    #[test]
    fn a_second_open_of_a_locked_store_is_refused_with_the_holders_pid() {
        let dir = TempDir::new();
        let (first, _) = RolloutStore::open(&dir.0).unwrap();
        let pid = std::process::id();
        assert_eq!(fs::read_to_string(dir.0.join(LOCK_FILE)).unwrap(), format!("{pid}\n"));
        // The owner is mid-save: the refused open must not clean up its temporary file.
        let temp = dir.0.join(STATE_DIR).join("checkout.json.tmp");
        fs::write(&temp, b"{\"half\":").unwrap();

        let error = RolloutStore::open(&dir.0).unwrap_err();
        assert!(matches!(error, AuditError::Locked { holder_pid: Some(p), .. } if p == pid), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "store directory {} is in use by another process (pid {pid}, lock {}): one analyzer per state \
                 directory",
                dir.0.display(),
                dir.0.join(LOCK_FILE).display()
            )
        );
        assert!(temp.exists());
        assert_eq!(fs::read_to_string(dir.0.join(LOCK_FILE)).unwrap(), format!("{pid}\n"), "pid kept");

        drop(first);
        let (_second, _) = RolloutStore::open(&dir.0).unwrap();
        assert!(!temp.exists(), "the new owner cleaned up");
    }

    #[test]
    fn a_poisoned_log_reports_the_store_unhealthy() {
        let dir = TempDir::new();
        let policy = policy();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let state = run(&mut store, &policy, 0);
        let health = store.health();
        assert!(health.is_recording());
        assert_eq!(health.failure(), None);
        // A real fault on both steps: write(2) and ftruncate(2) on a read-only descriptor of the log both fail.
        store.audit.file = File::open(store.audit_path()).unwrap();
        let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
        let paused = state.next(&pause, T0).unwrap();
        let error = store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap_err();
        assert!(matches!(error, AuditError::Io { action: "append to audit log", .. }), "{error:?}");

        assert!(!health.is_recording(), "the handle taken before the failure sees it");
        assert!(!store.health().is_recording());
        let failure = health.failure().unwrap();
        assert!(failure.contains("could not be cut off"), "{failure}");
        assert!(failure.contains(AUDIT_FILE), "{failure}");
        let error = store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap_err();
        assert!(matches!(error, AuditError::Poisoned(_)), "{error:?}");
        drop(store);
        // Reopening is the cure: the log holds only the complete record.
        let (store, _) = RolloutStore::open(&dir.0).unwrap();
        assert!(store.health().is_recording());
        assert_eq!(sequences(store.audit_path()), [1]);
    }

    #[test]
    fn a_failed_state_save_still_commits_the_logged_decision() {
        let dir = TempDir::new();
        let policy = policy();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let state = run(&mut store, &policy, 0);
        // The state directory disappears under the store: the save fails, the log does not.
        let state_dir = dir.0.join(STATE_DIR);
        fs::remove_dir_all(&state_dir).unwrap();
        fs::write(&state_dir, b"not a directory").unwrap();
        let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
        let after = state.next(&pause, T0).unwrap();
        let committed = store.commit(T0, &policy, &pause, Some(&state), &after).unwrap();
        assert!(committed.state_error.is_some());
        assert_eq!(committed.record.sequence, 2);
        drop(store);
        fs::remove_file(&state_dir).unwrap();
        let (_, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, after, "recovered from the log");
    }

    #[test]
    fn corruption_before_the_last_line_is_refused() {
        let dir = TempDir::new();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        run(&mut store, &policy(), 2);
        let audit_path = store.audit_path().to_path_buf();
        drop(store);
        let text = fs::read_to_string(&audit_path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "garbage";
        fs::write(&audit_path, format!("{}\n", lines.join("\n"))).unwrap();
        let error = RolloutStore::open(&dir.0).unwrap_err();
        assert!(matches!(error, AuditError::Corrupt { line: 2, .. }), "{error}");
        // A duplicated record is corruption too.
        let lines: Vec<&str> = text.lines().collect();
        fs::write(&audit_path, format!("{}\n{}\n{}\n", lines[0], lines[1], lines[1])).unwrap();
        let error = AuditLog::open(&audit_path).unwrap_err();
        assert!(error.to_string().contains("sequence 2 follows 2"), "{error}");
        // So is one that goes back: missing numbers are accepted, reordered ones are not.
        fs::write(&audit_path, format!("{}\n{}\n", lines[1], lines[0])).unwrap();
        let error = AuditLog::open(&audit_path).unwrap_err();
        assert!(error.to_string().contains("sequence 1 follows 2"), "{error}");
    }

    #[test]
    fn left_over_temporary_state_files_are_ignored_and_removed() {
        let dir = TempDir::new();
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        let state = run(&mut store, &policy(), 1);
        drop(store);
        let temp = dir.0.join(STATE_DIR).join("checkout.json.tmp");
        fs::write(&temp, b"{\"half\":").unwrap();
        let (_, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, state);
        assert!(!temp.exists());
    }
}
