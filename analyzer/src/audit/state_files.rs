//! One JSON file per rollout with its policy and state, replaced atomically.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AuditError, io_error, sync_parent};
use crate::ladder::RolloutState;
use crate::policy::RolloutPolicy;

/// Suffix of a state file being written; left-overs from a crash are removed on open.
const TEMP_SUFFIX: &str = ".tmp";
/// Suffix of a committed state file.
const STATE_SUFFIX: &str = ".json";

/// What is persisted per rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedRollout {
    pub policy: RolloutPolicy,
    pub state: RolloutState,
    /// The sequence number of the audit record this state is the `after` of.
    pub last_applied_sequence: u64,
}

/// A state file that does not read back as a [`PersistedRollout`] (a policy value
/// edited by hand, a field from a newer version): it stops only its own rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct UnreadableState {
    /// From the file's name.
    pub deployment: String,
    pub path: PathBuf,
    /// Why it does not read back, on one line.
    pub reason: String,
    /// Its `last_applied_sequence`, when the file is JSON that still has it.
    pub last_applied_sequence: Option<u64>,
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

    /// Every persisted rollout, by deployment, and the state files that do not read
    /// back (each stops only its own rollout; see [`super::RolloutStore::open`]).
    pub fn load_all(&self) -> Result<(BTreeMap<String, PersistedRollout>, Vec<UnreadableState>), AuditError> {
        let (mut rollouts, mut unreadable) = (BTreeMap::new(), Vec::new());
        for entry in fs::read_dir(&self.dir).map_err(io_error("list state directory", &self.dir))? {
            let path = entry.map_err(io_error("list state directory", &self.dir))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let Some(deployment) = name.strip_suffix(STATE_SUFFIX) else { continue };
            let bytes = fs::read(&path).map_err(io_error("read state file", &path))?;
            match serde_json::from_slice::<PersistedRollout>(&bytes) {
                Ok(rollout) => {
                    rollouts.insert(rollout.state.deployment.clone(), rollout);
                }
                Err(e) => unreadable.push(UnreadableState {
                    deployment: deployment.to_string(),
                    reason: crate::policy::one_line(&e.to_string()),
                    last_applied_sequence: serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| v.get("last_applied_sequence").and_then(serde_json::Value::as_u64)),
                    path,
                }),
            }
        }
        Ok((rollouts, unreadable))
    }

    /// Renames an unreadable state file to `<name>.invalid-<n>` (the first free `n`),
    /// so a state file written in its place does not destroy what a human may want to read.
    pub fn set_aside(&self, unreadable: &UnreadableState) -> Result<PathBuf, AuditError> {
        let name = unreadable.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for attempt in 1u32.. {
            let aside = unreadable.path.with_file_name(format!("{name}.invalid-{attempt}"));
            if !aside.exists() {
                fs::rename(&unreadable.path, &aside).map_err(io_error("set aside state file", &unreadable.path))?;
                sync_parent(&aside)?;
                return Ok(aside);
            }
        }
        Err(AuditError::Io {
            action: "set aside state file",
            path: unreadable.path.clone(),
            source: std::io::Error::other("no free name"),
        })
    }
}
