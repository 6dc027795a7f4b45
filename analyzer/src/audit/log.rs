//! The append-only JSON-lines audit log: open (with torn-line recovery), append, read.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::index::{AuditIndex, AuditReader};
use super::{AUDIT_FILE, AuditError, AuditRecord, StoreHealth, io_error, sync_parent};
use crate::ladder::{Decision, RolloutState};
use crate::policy::RolloutPolicy;

/// The append-only JSON-lines log.
#[derive(Debug)]
pub struct AuditLog {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Length of the file up to the end of the last acknowledged record.
    pub(super) committed_len: u64,
    pub(super) next_sequence: u64,
    /// Set when a failed append could not be cut off again: the next append cuts
    /// it off first, and appends nothing while that fails (it would bury a torn line).
    pub(super) poisoned: bool,
    /// Tells the rest of the analyzer whether appends succeed, without going through the log.
    pub(super) health: StoreHealth,
    /// Where each deployment's records are, for [`AuditReader`]s.
    index: Arc<RwLock<AuditIndex>>,
    reader: AuditReader,
    /// Tests: every write stops half-way with "no space left", as on a disk that fills up.
    #[cfg(test)]
    pub(super) disk_full: bool,
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
        let mut index = AuditIndex::default();
        let committed_len = scan_records(path, &mut file, |line_number, span, record| {
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
            index.add(&record.deployment, record.sequence, span.0, span.1);
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
        let index = Arc::new(RwLock::new(index));
        let read_only = File::open(path).map_err(io_error("open audit log for reading", path))?;
        let log = AuditLog {
            path: path.to_path_buf(),
            file,
            committed_len,
            next_sequence: last_sequence.saturating_add(1),
            poisoned: false,
            health: StoreHealth::default(),
            reader: AuditReader::new(path, read_only, Arc::clone(&index)),
            index,
            #[cfg(test)]
            disk_full: false,
        };
        Ok((log, recovery))
    }

    /// Whether this log's appends succeed; shares its state with every clone.
    pub fn health(&self) -> StoreHealth {
        self.health.clone()
    }

    /// Reads pages of one deployment's records, from any thread, while this log appends.
    pub fn reader(&self) -> AuditReader {
        self.reader.clone()
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
    /// `Err`, the record is not in the log and the decision must not take effect
    /// (unless it is a rollback the store defers, see [`super::RolloutStore::commit_or_defer`]).
    pub fn append(
        &mut self,
        at_ms: u64,
        policy: &RolloutPolicy,
        decision: &Decision,
        before: Option<&RolloutState>,
        after: &RolloutState,
    ) -> Result<AuditRecord, AuditError> {
        self.append_record(AuditRecord::draft(at_ms, policy, decision, before, after))
    }

    /// Appends `record` under the next sequence number (whatever it carries) and syncs it.
    pub(super) fn append_record(&mut self, mut record: AuditRecord) -> Result<AuditRecord, AuditError> {
        self.repair()?;
        record.sequence = self.next_sequence;
        let mut line = serde_json::to_vec(&record).map_err(AuditError::Encode)?;
        line.push(b'\n');
        let written = self.write_line(&line);
        if let Err(source) = written {
            // Cut the partial line off so the next append does not land behind garbage.
            let reason = match self.cut_back() {
                Ok(()) => format!("an append to audit log {} failed ({source})", self.path.display()),
                Err(cut) => {
                    self.poisoned = true;
                    format!(
                        "an append to audit log {} failed ({source}) and its partial line could not be cut off \
                         ({cut}); the next append cuts it off first",
                        self.path.display()
                    )
                }
            };
            self.health.append_failed(reason);
            return Err(AuditError::Io { action: "append to audit log", path: self.path.clone(), source });
        }
        let line_len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner).add(
            &record.deployment,
            record.sequence,
            self.committed_len,
            line_len,
        );
        self.committed_len = self.committed_len.saturating_add(line_len);
        self.next_sequence = self.next_sequence.saturating_add(1);
        self.health.append_succeeded();
        Ok(record)
    }

    /// When an earlier failed append left a partial line that could not be cut off,
    /// cuts it off now; refuses with [`AuditError::Poisoned`] while that fails.
    pub(super) fn repair(&mut self) -> Result<(), AuditError> {
        if !self.poisoned {
            return Ok(());
        }
        if let Err(cut) = self.cut_back() {
            self.health.append_failed(format!(
                "audit log {} ends in the partial line of a failed append that still cannot be cut off ({cut})",
                self.path.display()
            ));
            return Err(AuditError::Poisoned(self.path.clone()));
        }
        self.poisoned = false;
        tracing::info!(audit_log = %self.path.display(), "the partial line of a failed append is cut off");
        Ok(())
    }

    /// Writes `line` at the end of the log and syncs it.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if self.disk_full {
            self.file.write_all(line.get(..line.len() / 2).unwrap_or_default())?;
            return Err(io::Error::new(io::ErrorKind::StorageFull, "No space left on device (injected)"));
        }
        self.file.write_all(line).and_then(|()| self.file.sync_data())
    }

    /// Cuts the file back to its acknowledged records.
    fn cut_back(&mut self) -> io::Result<()> {
        self.file.set_len(self.committed_len).and_then(|()| self.file.sync_data())
    }

    /// Every complete record of the log at `path` (for reports and tests; a torn
    /// last line is skipped, not cut off, and sequence numbers are not checked).
    pub fn read_all(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
        let file = File::open(path).map_err(io_error("read audit log", path))?;
        let mut records = Vec::new();
        scan_records(path, file, |_, _, record| {
            records.push(record);
            Ok(())
        })?;
        Ok(records)
    }
}

/// Reads the log line by line, handing each record to `visit` with its line
/// number and its span (offset, length with the newline), and stops at a torn last line: one without a newline or that does
/// not parse, with nothing after it. Returns the length of the complete records.
fn scan_records(
    path: &Path,
    reader: impl Read,
    mut visit: impl FnMut(u64, (u64, u64), AuditRecord) -> Result<(), AuditError>,
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
            Ok(record) => visit(line_number, (committed_len, u64::try_from(read).unwrap_or(u64::MAX)), record)?,
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
