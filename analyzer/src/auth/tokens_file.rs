//! The tokens file over time: reading it (bounded), deciding after each read what
//! the identities in force become, and saying so once. [`super`] owns who the
//! identities are and what they may do; this owns when they change.
//!
//! - New content is parsed and, if valid, put in force; a file with no lines is a
//!   valid table of no identities, so emptying it revokes every token.
//! - Content that does not parse (half-written, a typo) is refused and the
//!   identities in force stay: a bad rotation must not lock everyone out.
//! - A file that cannot be read (deleted, unmounted, unreadable) drops every
//!   identity, failing closed, once it has stayed unreadable for [`UNREADABLE_GRACE`]:
//!   a deleted file must not keep revoked tokens alive, and a read that races a
//!   Kubernetes Secret update (the kubelet swaps a `..data` symlink, then removes the
//!   old directory) must not drop them spuriously, so the drop waits for a second
//!   failed read.
//! - A problem is logged (and counted) when it first appears and again when it
//!   changes, never on every poll; SIGHUP, a person asking, always gets an answer.

use super::{Authenticator, ParseError, TokenTable};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

/// Largest tokens file read: a line is under 200 bytes, so 1 MiB is thousands of
/// identities; anything bigger is the wrong file, not a bigger team.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// How often [`Authenticator::watch_file`] reads the file for a change: a rotation
/// takes effect within 2 s of the file changing (a Kubernetes Secret volume itself
/// is refreshed by the kubelet within about a minute).
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long the file must stay unreadable before its identities are dropped. A
/// Secret update leaves the path unresolvable for microseconds at most, so any
/// second failed read (the next poll, [`FILE_POLL_INTERVAL`] later) is a file that
/// is really gone; 1 s, not 2, so that poll's own jitter cannot put it off a round.
pub const UNREADABLE_GRACE: Duration = Duration::from_secs(1);

/// Why a tokens file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("tokens file {}: cannot read it: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("tokens file {}: more than {MAX_FILE_BYTES} bytes: expected one short `TOKEN,NAME,ROLE` line per identity", path.display())]
    TooLarge { path: PathBuf },
    #[error("tokens file {}: not UTF-8 text: expected `TOKEN,NAME,ROLE` lines", path.display())]
    NotText { path: PathBuf },
    #[error("tokens file {}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
}

/// What reloading the tokens file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The identities now in force, from a changed (or, on SIGHUP, re-read) file.
    Loaded { identities: usize },
    /// The file's content is the one read last time (loaded or refused then): nothing done.
    Unchanged,
    /// There is no tokens file (`--token`, or no tokens): nothing to reload.
    NoFile,
}

/// What made [`Authenticator::reload`] run (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// SIGHUP: the file is parsed again even if unchanged.
    Signal,
    /// The periodic read found (or may find) different content.
    FileChange,
}

/// Reloads since start, by result: the `canary_analyzer_tokens_reloads_total` counters.
/// A problem counts once, when it is first seen or changes (see [`ReadHistory::is_news`]).
#[derive(Debug, Default)]
pub(super) struct ReloadCounts {
    loaded: AtomicU64,
    /// Content refused; the identities in force stayed.
    refused: AtomicU64,
    /// The file stayed unreadable; every identity was dropped.
    unreadable: AtomicU64,
}

impl ReloadCounts {
    pub(super) fn metrics_text(&self) -> String {
        format!(
            "# HELP canary_analyzer_tokens_reloads_total Tokens file reloads, by result (refused: content refused, \
             identities kept; unreadable: file gone or unreadable, identities dropped).\n\
             # TYPE canary_analyzer_tokens_reloads_total counter\n\
             canary_analyzer_tokens_reloads_total{{result=\"loaded\"}} {}\n\
             canary_analyzer_tokens_reloads_total{{result=\"refused\"}} {}\n\
             canary_analyzer_tokens_reloads_total{{result=\"unreadable\"}} {}\n",
            self.loaded.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.unreadable.load(Ordering::Relaxed)
        )
    }
}

/// What the reader remembers from one read of the tokens file to the next.
#[derive(Debug, Default)]
pub(super) struct ReadHistory {
    /// xxh3 of the content read last, loaded or refused: a poll acts only on a change.
    content: Option<u128>,
    /// The first failed read of the current run of failed reads.
    unreadable_since: Option<Instant>,
    /// The problem logged and counted last: a poll reports only a different one.
    reported: Option<String>,
}

/// What one read of the file calls for.
#[derive(Debug)]
pub(super) enum ReadOutcome {
    /// The content read last time (loaded or refused then): nothing to do.
    Unchanged,
    /// Content to parse, then load or refuse: changed, or re-read on SIGHUP.
    Changed(Vec<u8>),
    /// The file could not be read; `drop`: it has been so for [`UNREADABLE_GRACE`].
    Unreadable { error: TokensFileError, drop: bool },
}

impl ReadHistory {
    /// A history whose last read was `content`, put in force at start.
    pub(super) fn started_with(content: &[u8]) -> ReadHistory {
        ReadHistory { content: Some(content_hash(content)), ..ReadHistory::default() }
    }

    /// Takes one read's result, made at `now`, and says what it calls for.
    pub(super) fn after_reading(
        &mut self,
        read: Result<Vec<u8>, TokensFileError>,
        trigger: ReloadTrigger,
        now: Instant,
    ) -> ReadOutcome {
        match read {
            Ok(content) => {
                self.unreadable_since = None;
                let hash = content_hash(&content);
                if trigger == ReloadTrigger::FileChange && self.content == Some(hash) {
                    return ReadOutcome::Unchanged;
                }
                self.content = Some(hash);
                ReadOutcome::Changed(content)
            }
            Err(error) => {
                let since = *self.unreadable_since.get_or_insert(now);
                let drop = now.saturating_duration_since(since) >= UNREADABLE_GRACE;
                if drop {
                    // The identities are gone: the same content, back, must be loaded again.
                    self.content = None;
                }
                ReadOutcome::Unreadable { error, drop }
            }
        }
    }

    /// Whether `problem` should be logged and counted: always on SIGHUP (a person
    /// asked), on a poll only if it is not the one reported last. Remembers it.
    pub(super) fn is_news(&mut self, problem: &TokensFileError, trigger: ReloadTrigger) -> bool {
        let text = problem.to_string();
        let news = trigger == ReloadTrigger::Signal || self.reported.as_ref() != Some(&text);
        self.reported = Some(text);
        news
    }

    /// A file was loaded: the next problem is news whatever it is.
    fn loaded(&mut self) {
        self.reported = None;
    }
}

fn content_hash(content: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(content)
}

/// The file's bytes, at most [`MAX_FILE_BYTES`] + 1 of them (one more tells a file
/// that is too large). An error here is a file that cannot be read at all.
pub(super) fn read_bytes(path: &Path) -> Result<Vec<u8>, TokensFileError> {
    let read = |source| TokensFileError::Read { path: path.into(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut content = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut content).map_err(read)?;
    Ok(content)
}

/// The identities `content` (read from `path`) defines.
pub(super) fn parse_content(path: &Path, content: &[u8]) -> Result<TokenTable, TokensFileError> {
    if content.len() as u64 > MAX_FILE_BYTES {
        return Err(TokensFileError::TooLarge { path: path.into() });
    }
    let text = std::str::from_utf8(content).map_err(|_| TokensFileError::NotText { path: path.into() })?;
    TokenTable::parse(text).map_err(|source| TokensFileError::Parse { path: path.into(), source })
}

/// The warning for a table of no identities, at start and on every load of one.
pub(super) fn warn_if_empty(table: &TokenTable, path: &Path) {
    if table.is_empty() {
        tracing::warn!(
            file = %path.display(),
            "the tokens file names no identity: every token is refused (registration, overrides, and reads \
             with --require-viewer)"
        );
    }
}

impl Authenticator {
    /// Reads the tokens file again, now: see [`Authenticator::reload_at`]. This is
    /// what the SIGHUP handler and [`Authenticator::watch_file`] call.
    pub fn reload(&self, trigger: ReloadTrigger) -> Result<Reloaded, TokensFileError> {
        self.reload_at(trigger, Instant::now())
    }

    /// Reads the tokens file at `now` and acts on it (see the module doc): new valid
    /// content is put in force; content that does not parse is refused, the
    /// identities in force stay, and the error (path, line, what was expected) is
    /// returned; a file unreadable for [`UNREADABLE_GRACE`] drops every identity. A
    /// poll ([`ReloadTrigger::FileChange`]) parses only content that differs from the
    /// last read, and logs and counts a problem only when it is new.
    pub fn reload_at(&self, trigger: ReloadTrigger, now: Instant) -> Result<Reloaded, TokensFileError> {
        let Some(path) = &self.file else { return Ok(Reloaded::NoFile) };
        // Held from the read to the swap: a poll and a SIGHUP at once cannot put an
        // older read in force after a newer one.
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        match history.after_reading(read_bytes(path), trigger, now) {
            ReadOutcome::Unchanged => Ok(Reloaded::Unchanged),
            ReadOutcome::Changed(content) => match parse_content(path, &content) {
                Ok(table) => {
                    let identities = table.len();
                    warn_if_empty(&table, path);
                    self.put_in_force(table);
                    history.loaded();
                    self.reloads.loaded.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(file = %path.display(), identities, ?trigger, "tokens file loaded");
                    Ok(Reloaded::Loaded { identities })
                }
                Err(error) => {
                    if history.is_news(&error, trigger) {
                        self.reloads.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            %error, kept_identities = self.identities(), ?trigger,
                            "tokens file refused; the identities loaded before stay in force"
                        );
                    }
                    Err(error)
                }
            },
            ReadOutcome::Unreadable { error, drop: false } => {
                // Maybe a Secret update caught mid-swap: the next read decides.
                if trigger == ReloadTrigger::Signal {
                    tracing::warn!(
                        %error, kept_identities = self.identities(), ?trigger,
                        "tokens file cannot be read; its identities are dropped if it still cannot be at the next read"
                    );
                }
                Err(error)
            }
            ReadOutcome::Unreadable { error, drop: true } => {
                let dropped_identities = self.identities();
                self.put_in_force(TokenTable::empty());
                if history.is_news(&error, trigger) {
                    self.reloads.unreadable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        %error, dropped_identities, ?trigger,
                        "tokens file cannot be read: no identity is in force, every token is refused until it can be \
                         read again"
                    );
                }
                Err(error)
            }
        }
    }

    fn put_in_force(&self, table: TokenTable) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(table));
    }

    /// Reads the tokens file every `every` and acts on what it finds; runs until the
    /// task is dropped. Without a tokens file it returns at once.
    pub async fn watch_file(self: Arc<Self>, every: Duration) {
        if self.file.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            // Problems are logged and counted by `reload`, once each.
            let outcome = self.reload(ReloadTrigger::FileChange);
            tracing::debug!(ok = outcome.is_ok(), identities = self.identities(), "tokens file read");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Permission;
    use crate::auth::tests::{ADMIN, OPERATOR, PIPELINE, VIEWER, bearer, temp_file};

    fn accepts(auth: &Authenticator, token: &str) -> bool {
        auth.authenticate(Some(&bearer(token)), Permission::Override, "test").is_ok()
    }

    fn counted(auth: &Authenticator, result: &str) -> u64 {
        let metrics = auth.metrics_text();
        let prefix = format!("canary_analyzer_tokens_reloads_total{{result=\"{result}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.parse().ok()).expect("counted")
    }

    #[test]
    fn a_rewritten_file_is_loaded_and_a_bad_one_keeps_the_identities_in_force() {
        let path = temp_file("tokens.csv", &format!("{OPERATOR},alice,operator\n"));
        let auth = Authenticator::from_file(&path).unwrap();
        let who = |token: &str| auth.authenticate(Some(&bearer(token)), Permission::Override, "test").ok();
        assert_eq!(who(OPERATOR).unwrap().name, "alice");
        assert_eq!(auth.reload(ReloadTrigger::FileChange).unwrap(), Reloaded::Unchanged);
        std::fs::write(&path, format!("{ADMIN},alice,operator\n")).unwrap();
        assert_eq!(auth.reload(ReloadTrigger::FileChange).unwrap(), Reloaded::Loaded { identities: 1 });
        assert_eq!(who(ADMIN).unwrap().name, "alice", "the new token is accepted");
        assert!(who(OPERATOR).is_none(), "the old one is refused");
        // A bad file: refused, with path, line and expectation; the identities loaded before stay.
        std::fs::write(&path, format!("{PIPELINE},bob,pipeline\n{VIEWER},carol,superuser\n")).unwrap();
        let error = auth.reload(ReloadTrigger::FileChange).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()) && error.contains("line 2: field `role`"), "{error}");
        assert!(who(ADMIN).is_some() && who(PIPELINE).is_none(), "nothing of the bad file is in force");
        // A poll does not refuse the same bad content again; SIGHUP re-reads it anyway.
        assert_eq!(auth.reload(ReloadTrigger::FileChange).unwrap(), Reloaded::Unchanged);
        assert!(auth.reload(ReloadTrigger::Signal).is_err());
        std::fs::write(&path, [b'#', 0xff, b'\n']).unwrap();
        assert!(auth.reload(ReloadTrigger::FileChange).unwrap_err().to_string().contains("not UTF-8"));
        assert!(who(ADMIN).is_some(), "content that is not text is refused like any bad content");
        let metrics = auth.metrics_text();
        assert!(metrics.contains("canary_analyzer_tokens_reloads_total{result=\"loaded\"} 1\n"), "{metrics}");
        assert!(metrics.contains("canary_analyzer_tokens_reloads_total{result=\"refused\"} 3\n"), "{metrics}");
        assert!(metrics.contains("canary_analyzer_identities 1\n"), "{metrics}");
        assert!(metrics.contains("{status=\"401\",reason=\"unknown_token\"} 2\n"), "{metrics}");
    }

    #[test]
    fn an_emptied_file_revokes_every_token() {
        let full = format!("{OPERATOR},alice,operator\n{ADMIN},root,admin\n");
        let path = temp_file("tokens.csv", &full);
        let auth = Authenticator::from_file(&path).unwrap();
        for (empty, what) in [("", "an empty file"), ("# everyone revoked\n\n", "a comment-only file")] {
            std::fs::write(&path, empty).unwrap();
            assert_eq!(auth.reload(ReloadTrigger::FileChange).unwrap(), Reloaded::Loaded { identities: 0 }, "{what}");
            assert!(!accepts(&auth, OPERATOR) && !accepts(&auth, ADMIN), "{what} revokes every token");
            assert!(auth.metrics_text().contains("canary_analyzer_identities 0\n"));
            std::fs::write(&path, &full).unwrap();
            assert_eq!(auth.reload(ReloadTrigger::FileChange).unwrap(), Reloaded::Loaded { identities: 2 });
            assert!(accepts(&auth, OPERATOR), "{what}: back in force once the file is");
        }
        // At start too: a valid table of no identities, not a refusal to start.
        std::fs::write(&path, "# nobody yet\n").unwrap();
        let empty = Authenticator::from_file(&path).unwrap();
        assert!(empty.identities() == 0 && empty.has_tokens() && !accepts(&empty, ADMIN));
        assert_eq!(counted(&auth, "refused"), 0);
    }

    #[test]
    fn a_file_unreadable_past_the_grace_drops_every_identity_and_a_brief_gap_does_not() {
        let text = format!("{OPERATOR},alice,operator\n");
        let path = temp_file("tokens.csv", &text);
        let auth = Authenticator::from_file(&path).unwrap();
        let t0 = Instant::now();
        let at = |seconds: f64| t0 + Duration::from_secs_f64(seconds);
        // A read that races a Secret update: gone once, back (same content) at the next read.
        std::fs::remove_file(&path).unwrap();
        assert!(auth.reload_at(ReloadTrigger::FileChange, at(0.0)).is_err());
        assert!(accepts(&auth, OPERATOR), "one failed read drops nothing");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(auth.reload_at(ReloadTrigger::FileChange, at(2.0)).unwrap(), Reloaded::Unchanged);
        assert!(accepts(&auth, OPERATOR));
        // Deleted for good: the identities go at the first read past the grace.
        std::fs::remove_file(&path).unwrap();
        assert!(auth.reload_at(ReloadTrigger::FileChange, at(4.0)).is_err());
        assert!(auth.reload_at(ReloadTrigger::Signal, at(4.5)).is_err(), "SIGHUP within the grace");
        assert!(accepts(&auth, OPERATOR), "still within the grace");
        let error = auth.reload_at(ReloadTrigger::FileChange, at(4.0) + UNREADABLE_GRACE).unwrap_err();
        assert!(error.to_string().contains("cannot read it"), "{error}");
        assert!(!accepts(&auth, OPERATOR), "a deleted file keeps no token alive");
        assert!(auth.metrics_text().contains("canary_analyzer_identities 0\n"));
        // The same file back: loaded again although its content is the one loaded before.
        std::fs::write(&path, &text).unwrap();
        assert_eq!(auth.reload_at(ReloadTrigger::FileChange, at(8.0)).unwrap(), Reloaded::Loaded { identities: 1 });
        assert!(accepts(&auth, OPERATOR));
    }

    #[test]
    fn a_problem_is_counted_once_and_again_when_it_changes() {
        let path = temp_file("tokens.csv", &format!("{OPERATOR},alice,operator\n"));
        let auth = Authenticator::from_file(&path).unwrap();
        let t0 = Instant::now();
        let poll = |n: u64| auth.reload_at(ReloadTrigger::FileChange, t0 + FILE_POLL_INTERVAL * n as u32);
        std::fs::remove_file(&path).unwrap();
        for n in 0..10 {
            assert!(poll(n).is_err());
        }
        assert_eq!(counted(&auth, "unreadable"), 1, "ten polls of a missing file: one problem");
        // Another problem: a directory where the file was.
        std::fs::create_dir(&path).unwrap();
        for n in 10..15 {
            let error = poll(n).unwrap_err().to_string();
            assert!(error.contains("cannot read it") && error.contains("directory"), "{error}");
        }
        assert_eq!(counted(&auth, "unreadable"), 2);
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "bad line\n").unwrap();
        assert!(poll(15).is_err());
        for n in 16..20 {
            assert_eq!(poll(n).unwrap(), Reloaded::Unchanged, "the same bad content is not parsed again");
        }
        assert_eq!(counted(&auth, "refused"), 1, "bad content, polled five times: refused once");
        assert_eq!((counted(&auth, "loaded"), counted(&auth, "unreadable")), (0, 2));
        assert!(auth.reload_at(ReloadTrigger::Signal, t0).is_err());
        assert_eq!(counted(&auth, "refused"), 2, "SIGHUP is answered every time");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_picks_up_a_rotation_without_a_restart() {
        let path = temp_file("tokens.csv", &format!("{OPERATOR},alice,operator\n"));
        let auth = Arc::new(Authenticator::from_file(&path).unwrap());
        let watcher = tokio::spawn(Arc::clone(&auth).watch_file(FILE_POLL_INTERVAL));
        std::fs::write(&path, format!("{ADMIN},alice,operator\n")).unwrap();
        // The clock is paused: each step lets exactly one more poll run, no real waiting.
        let mut polls = 0;
        while !accepts(&auth, ADMIN) && polls < 10 {
            tokio::time::sleep(FILE_POLL_INTERVAL).await;
            polls += 1;
        }
        assert!(accepts(&auth, ADMIN) && !accepts(&auth, OPERATOR), "rotated after {polls} poll interval(s)");
        assert!(polls <= 2, "{polls} poll intervals");
        watcher.abort();
    }
}
