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
//! One exception to "logged, then in effect": a rollback the log cannot take
//! (a full disk) is deferred by [`RolloutStore::commit_or_defer`] — it takes effect,
//! and its record is appended, marked `recorded_late_at_ms`, ahead of any later one
//! once appends succeed again. [`StoreHealth`] tells, without the engine's lock,
//! whether the store is recording: not from a failed append until one succeeds with
//! no deferred record left. A state file that does not read back stops only its own
//! rollout: it is recovered from the log when it can be ([`RolloutStore::open`]).
//! [`AuditReader`] reads a page of one deployment's records by their byte offsets.

mod health;
mod index;
mod log;
mod state_files;
mod store;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ladder::{Decision, RolloutState};
use crate::policy::RolloutPolicy;

pub use health::StoreHealth;
pub use index::{AuditPage, AuditReader};
pub use log::{AuditLog, AuditRecovery};
pub use state_files::{PersistedRollout, StateStore, UnreadableState};
pub use store::{Committed, RETRY_INTERVAL_MS, Recorded, RolloutStore};

/// The audit log's file name inside a store directory.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The directory of per-rollout state files inside a store directory.
pub const STATE_DIR: &str = "state";
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
    #[error("cannot encode an audit record")]
    Encode(#[source] serde_json::Error),
    #[error("audit log {0} ends in the partial line of a failed append that cannot be cut off")]
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
    /// Set only when the decision took effect before its record could be appended
    /// (a rollback while the disk was full, see [`RolloutStore::commit_or_defer`]):
    /// when the record finally was (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_late_at_ms: Option<u64>,
}

impl AuditRecord {
    /// The record of a decision, before the log gives it its sequence number.
    fn draft(
        at_ms: u64,
        policy: &RolloutPolicy,
        decision: &Decision,
        before: Option<&RolloutState>,
        after: &RolloutState,
    ) -> AuditRecord {
        AuditRecord {
            sequence: 0,
            at_ms,
            deployment: after.deployment.clone(),
            decision: decision.clone(),
            policy_name: policy.name.clone(),
            policy_hash: policy.fingerprint(),
            policy: policy.clone(),
            before: before.cloned(),
            after: after.clone(),
            recorded_late_at_ms: None,
        }
    }
}

/// Syncs the directory holding `path`, so a created or renamed entry survives a crash.
fn sync_parent(path: &Path) -> Result<(), AuditError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(parent).and_then(|dir| dir.sync_all()).map_err(io_error("sync directory", parent))
}
