//! Whether the store is recording decisions, readable from any thread without the
//! engine's lock (a `/healthz` handler, a metrics scrape).
//!
//! It is not recording from the moment an append fails (a full disk, an I/O error,
//! a partial line that could not be cut off) until an append succeeds again with
//! no decision left waiting: a rollback that took effect while the log could not
//! take it (see [`super::RolloutStore::commit_or_defer`]) keeps the store not
//! recording until its record is in the log.

use std::sync::{Arc, Mutex};

/// The store's recording state; clones share it.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth {
    state: Arc<Mutex<HealthState>>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Why the latest append failed; cleared by the next one that succeeds.
    failure: Option<String>,
    /// Decisions in effect whose records are not in the log yet.
    pending: usize,
}

impl StoreHealth {
    /// `true` while the latest append succeeded and every decision in effect is in the log.
    pub fn is_recording(&self) -> bool {
        self.read(|s| s.failure.is_none() && s.pending == 0)
    }

    /// Why the store is not recording, when it is not: the failed append, and how
    /// many decisions in effect wait for their record.
    pub fn failure(&self) -> Option<String> {
        self.read(|s| match (&s.failure, s.pending) {
            (None, 0) => None,
            (Some(failure), 0) => Some(failure.clone()),
            (failure, pending) => Some(format!(
                "{pending} decision(s) in effect are not in the audit log yet (retried until an append succeeds){}",
                failure.as_ref().map_or(String::new(), |f| format!("; {f}"))
            )),
        })
    }

    /// Decisions in effect whose records are not in the log yet.
    pub fn pending_records(&self) -> usize {
        self.read(|s| s.pending)
    }

    /// What a failed append does to the health signal, for tests of its readers (the
    /// failures themselves are tested with real write errors in `audit::tests`).
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self, reason: &str) {
        self.append_failed(reason.to_string());
    }

    pub(super) fn append_failed(&self, reason: String) {
        self.write(|s| s.failure = Some(reason));
    }

    pub(super) fn append_succeeded(&self) {
        self.write(|s| s.failure = None);
    }

    pub(super) fn set_pending(&self, pending: usize) {
        self.write(|s| s.pending = pending);
    }

    fn read<T>(&self, f: impl FnOnce(&HealthState) -> T) -> T {
        // A panic while holding this lock cannot leave the two fields inconsistent: use them anyway.
        f(&self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn write(&self, f: impl FnOnce(&mut HealthState)) {
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}
