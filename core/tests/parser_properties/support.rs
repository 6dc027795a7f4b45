//! Shared by the property modules of `canary-core` and `canary-analyzer` (the analyzer's
//! `tests/parser_properties/main.rs` includes this file by path): case counts, the per-case
//! time bound and byte mutations.

use proptest::prelude::*;
use std::time::Duration;

/// Cases per property unless `PROPTEST_CASES` says otherwise: 256 (proptest's default)
/// takes ~1 s per property in debug; these run on wasm32 under Node too, ~5x slower.
pub const CASES: u32 = 128;

/// The proptest configuration of a property: `cases` cases (chosen per property so a
/// file runs in a few seconds in debug; [`CASES`] in core), or `PROPTEST_CASES` when set.
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// A hang detector, not a benchmark: generated inputs are at most a few KiB and parse
/// in well under 10 ms in a debug build, natively and on wasm32 under Node; one case taking
/// 2 s means work far beyond the input's size (a loop that does not advance, an alias or
/// nesting blow-up).
pub const CASE_CPU_BOUND: Duration = Duration::from_secs(2);

/// Runs `parse` and fails if it used more than [`CASE_CPU_BOUND`] of this thread's CPU time.
pub fn bounded<T>(what: &str, parse: impl FnOnce() -> T) -> T {
    let started = thread_cpu_time();
    let out = parse();
    let took = thread_cpu_time().saturating_sub(started);
    assert!(took < CASE_CPU_BOUND, "{what} used {took:?} of CPU (bound {CASE_CPU_BOUND:?})");
    out
}

/// CPU time this thread has used: the work done, not the wait for a core. On 2 cores shared
/// with other builds a case that used ~10 ms of CPU took 3.8 s of wall time in `make test`.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// Without a thread CPU clock (wasm32 under Node, one thread): wall time since the first call.
#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Whether a message fits one log line: no line breaks or other control characters.
pub fn is_one_line(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// Text as an attacker or a careless editor writes it: arbitrary Unicode, or short strings
/// dense in what breaks naive parsing and logging (quotes, backticks, separators, line
/// breaks, escape and NUL characters).
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[a-z`\"\\\\;=,:. \n\r\t\x00\x1b{}-]{0,12}",
    ]
}

/// One edit of a byte string: what a truncated, corrupted or hand-mangled document looks like.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Cut everything from this position (a torn read).
    Truncate(usize),
    /// Remove the byte at this position.
    Delete(usize),
    /// Insert a byte at this position.
    Insert(usize, u8),
    /// Replace the byte at this position.
    Replace(usize, u8),
    /// Copy the range at (start, length) to the end (a duplicated field or line).
    Duplicate(usize, usize),
}

/// Bytes that matter to JSON, YAML, exposition text and cookies, plus a few arbitrary ones.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"{}[]\":,;= \n\t\\'#-+.0123456789eE{}_|&*!%@`\r\0".to_vec()),
        1 => any::<u8>(),
    ]
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => any::<usize>().prop_map(Edit::Truncate),
        3 => any::<usize>().prop_map(Edit::Delete),
        3 => (any::<usize>(), interesting_byte()).prop_map(|(at, b)| Edit::Insert(at, b)),
        3 => (any::<usize>(), interesting_byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        1 => (any::<usize>(), 0usize..64).prop_map(|(at, len)| Edit::Duplicate(at, len)),
    ]
}

/// Applies `edits` in order; positions wrap around the current length.
pub fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match *edit {
            Edit::Truncate(i) => bytes.truncate(at(i)),
            Edit::Delete(i) if len > 0 => {
                bytes.remove(at(i));
            }
            Edit::Delete(_) => {}
            Edit::Insert(i, b) => bytes.insert(if len == 0 { 0 } else { i % (len + 1) }, b),
            Edit::Replace(i, b) if len > 0 => bytes[at(i)] = b,
            Edit::Replace(_, _) => {}
            Edit::Duplicate(i, n) => {
                let start = at(i);
                let end = (start + n).min(len);
                let copy = bytes[start..end].to_vec();
                bytes.extend_from_slice(&copy);
            }
        }
    }
    bytes
}

/// Up to `max` edits.
pub fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..=max)
}
