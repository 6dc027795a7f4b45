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
