//! Whether the store can still record decisions, readable from any thread.

use std::sync::{Arc, OnceLock};

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

    pub(super) fn stop_recording(&self, reason: String) {
        // A second failure keeps the first reason: that is the one that broke the log.
        let _ = self.failure.set(reason);
    }
}
