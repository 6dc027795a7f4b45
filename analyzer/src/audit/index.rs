//! Reading one deployment's audit records without parsing the whole log.
//!
//! The log grows for the analyzer's whole life and holds every deployment's
//! records interleaved. [`AuditLog`](super::AuditLog) keeps, per deployment, the
//! byte span and sequence number of each of its records (found while opening,
//! added on every append), and an [`AuditReader`] answers a page of them by
//! reading those spans at their offsets (`pread` on a descriptor of its own), so a
//! read costs what the page holds, not what the log holds. Only complete, synced
//! records are indexed: a span never covers bytes that a failed append cuts off.
//!
//! Reads do blocking file I/O and parsing: [`AuditReader::page`] and
//! [`AuditReader::page_json`] run them on the runtime's blocking pool, one at a
//! time, so however many clients read the log, at most one core is busy with it
//! and the runtime's workers stay free for the filters' polls.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;

use super::{AuditError, AuditRecord};

/// Audit reads running at once. One: a page of 100 records reads in about a
/// millisecond, so one at a time still serves hundreds of reads a second, and a
/// burst of readers cannot take more than one core from the rest of the analyzer.
const CONCURRENT_READS: usize = 1;

/// Where one record is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordSpan {
    sequence: u64,
    offset: u64,
    /// Bytes of the JSON line, without its newline.
    len: u64,
}

/// Per deployment, its records' spans in log order (so in sequence order).
#[derive(Debug, Default)]
pub(super) struct AuditIndex {
    by_deployment: HashMap<String, Vec<RecordSpan>>,
}

impl AuditIndex {
    /// Notes a complete record of `line_len` bytes (newline included) at `offset`.
    pub(super) fn add(&mut self, deployment: &str, sequence: u64, offset: u64, line_len: u64) {
        let span = RecordSpan { sequence, offset, len: line_len.saturating_sub(1) };
        match self.by_deployment.get_mut(deployment) {
            Some(spans) => spans.push(span),
            None => {
                self.by_deployment.insert(deployment.to_string(), vec![span]);
            }
        }
    }

    /// The spans of `page`: the newest `page.limit` records of `deployment` below `page.before`, oldest first.
    fn page(&self, deployment: &str, page: AuditPage) -> Vec<RecordSpan> {
        let Some(spans) = self.by_deployment.get(deployment) else { return Vec::new() };
        let end = match page.before {
            Some(before) => spans.partition_point(|span| span.sequence < before),
            None => spans.len(),
        };
        let start = end.saturating_sub(page.limit);
        spans.get(start..end).map(<[RecordSpan]>::to_vec).unwrap_or_default()
    }
}

/// Which of a deployment's records to read: the newest `limit` with a sequence
/// number below `before` (all of them without `before`), answered oldest first.
/// To page back, ask again with `before` = the first record's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPage {
    pub limit: usize,
    pub before: Option<u64>,
}

impl AuditPage {
    /// The newest `limit` records.
    pub fn newest(limit: usize) -> AuditPage {
        AuditPage { limit, before: None }
    }

    /// Every record (tests and tools; an API read is always a bounded page).
    pub fn all() -> AuditPage {
        AuditPage { limit: usize::MAX, before: None }
    }
}

/// Reads pages of one deployment's records; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct AuditReader {
    path: PathBuf,
    /// A read-only descriptor of the log the index describes: it stays on that file
    /// even if the path is renamed away, so offsets and bytes always agree.
    file: Arc<File>,
    index: Arc<RwLock<AuditIndex>>,
    /// Admits [`CONCURRENT_READS`] reads at a time to the blocking pool.
    gate: Arc<Semaphore>,
}

impl AuditReader {
    pub(super) fn new(path: &Path, file: File, index: Arc<RwLock<AuditIndex>>) -> AuditReader {
        AuditReader {
            path: path.to_path_buf(),
            file: Arc::new(file),
            index,
            gate: Arc::new(Semaphore::new(CONCURRENT_READS)),
        }
    }

    /// [`AuditReader::read`] on the blocking pool, one read at a time.
    pub async fn page(&self, deployment: &str, page: AuditPage) -> Result<Vec<AuditRecord>, AuditError> {
        let (reader, deployment) = (self.clone(), deployment.to_string());
        self.off_runtime(move || reader.read(&deployment, page)).await
    }

    /// The same page as a JSON array, encoded on the blocking pool too (a page of
    /// 100 records is ~300 kB of JSON: not work for the runtime's workers).
    pub async fn page_json(&self, deployment: &str, page: AuditPage) -> Result<Vec<u8>, AuditError> {
        let (reader, deployment) = (self.clone(), deployment.to_string());
        self.off_runtime(move || serde_json::to_vec(&reader.read(&deployment, page)?).map_err(AuditError::Encode)).await
    }

    async fn off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let failed = |reason: String| AuditError::Io {
            action: "read audit log",
            path: self.path.clone(),
            source: std::io::Error::other(reason),
        };
        // The semaphore is never closed, so acquiring fails only in theory.
        let _permit = self.gate.acquire().await.map_err(|e| failed(e.to_string()))?;
        tokio::task::spawn_blocking(read).await.map_err(|e| failed(format!("the reading task failed: {e}")))?
    }

    /// The records of `deployment` that `page` names, oldest first (none for an unknown deployment).
    pub fn read(&self, deployment: &str, page: AuditPage) -> Result<Vec<AuditRecord>, AuditError> {
        let spans = {
            // Appends hold the write lock only to push a span: a poisoned lock still holds valid spans.
            let index = self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            index.page(deployment, page)
        };
        let mut records = Vec::with_capacity(spans.len());
        let mut buffer = Vec::new();
        for span in spans {
            let len = usize::try_from(span.len).map_err(|_| self.corrupt(span, "record longer than memory"))?;
            buffer.resize(len, 0);
            self.file.read_exact_at(&mut buffer, span.offset).map_err(|source| AuditError::Io {
                action: "read audit log",
                path: self.path.clone(),
                source,
            })?;
            let record: AuditRecord =
                serde_json::from_slice(&buffer).map_err(|e| self.corrupt(span, &e.to_string()))?;
            if (record.sequence, record.deployment.as_str()) != (span.sequence, deployment) {
                return Err(self.corrupt(span, &format!("found record {} of {:?}", record.sequence, record.deployment)));
            }
            records.push(record);
        }
        Ok(records)
    }

    /// The log changed under the index (edited while the analyzer runs).
    fn corrupt(&self, span: RecordSpan, reason: &str) -> AuditError {
        AuditError::Corrupt {
            path: self.path.clone(),
            line: 0,
            reason: format!("record {} at byte {} no longer reads back: {reason}", span.sequence, span.offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(sequences: &[(&str, u64)]) -> AuditIndex {
        let mut index = AuditIndex::default();
        for (i, (deployment, sequence)) in (0u64..).zip(sequences) {
            index.add(deployment, *sequence, i * 10, 10);
        }
        index
    }

    fn sequences(spans: &[RecordSpan]) -> Vec<u64> {
        spans.iter().map(|s| s.sequence).collect()
    }

    #[test]
    fn a_page_is_the_newest_records_below_before_oldest_first() {
        let index = index(&[("a", 1), ("b", 2), ("a", 3), ("a", 5), ("b", 6), ("a", 9)]);
        assert_eq!(sequences(&index.page("a", AuditPage::all())), [1, 3, 5, 9]);
        assert_eq!(sequences(&index.page("a", AuditPage::newest(2))), [5, 9]);
        assert_eq!(sequences(&index.page("a", AuditPage { limit: 2, before: Some(5) })), [1, 3]);
        assert_eq!(sequences(&index.page("a", AuditPage { limit: 2, before: Some(6) })), [3, 5]);
        assert_eq!(sequences(&index.page("a", AuditPage { limit: 9, before: Some(1) })), Vec::<u64>::new());
        assert_eq!(sequences(&index.page("a", AuditPage::newest(0))), Vec::<u64>::new());
        assert_eq!(sequences(&index.page("c", AuditPage::all())), Vec::<u64>::new());
        assert_eq!(index.page("b", AuditPage::all())[1], RecordSpan { sequence: 6, offset: 40, len: 9 });
    }
}
