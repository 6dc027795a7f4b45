//! The identities one tokens file (or `--token`) defines, and the constant-time
//! lookup of a presented token among them. Pure: the text comes in, a table or the
//! first bad line (number, field, expectation; never the token) comes out. Reading
//! the file, reloading it and deciding what an identity may do is [`super`]'s.

use super::{Identity, Role};
use std::fmt;
use std::sync::Arc;

/// The name of the identity the single `--token` authenticates (role `admin`).
pub const SINGLE_TOKEN_NAME: &str = "token";
/// Shortest token the file accepts: 16 random characters are at least 64 bits
/// even from a hex alphabet, beyond guessing over HTTP. `--token` keeps no minimum
/// so existing setups keep working.
const MIN_TOKEN_BYTES: usize = 16;
/// Longest identity name: names go into every audit record and log line.
const MAX_NAME_BYTES: usize = 64;

/// Whether `given` equals `expected`, in a time that depends only on `given`'s
/// length (which the caller chose): every byte of `given` is compared, against
/// `expected`'s or a zero past its end, and a length difference is folded in.
/// `black_box` keeps the compiler from turning the fold into an early exit.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (i, byte) in given.iter().enumerate() {
        difference = std::hint::black_box(difference | (byte ^ expected.get(i).copied().unwrap_or(0)));
    }
    difference == 0
}

struct Entry {
    token: Box<[u8]>,
    identity: Arc<Identity>,
}

/// The identities one tokens file (or `--token`) defines. Its `Debug` shows names
/// and roles, never tokens.
pub struct TokenTable {
    entries: Vec<Entry>,
    /// The length of the longest token: a longer one names no identity, so it is
    /// refused before any comparison (see [`TokenTable::find`]).
    longest_token: usize,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| (&e.identity.name, e.identity.role))).finish()
    }
}

/// A configured `--token` that is empty or only whitespace: it would let a request
/// without `Authorization` through, so it is refused, not taken as "no token".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the bearer token is empty or only whitespace ({length} bytes): expected at least one non-whitespace \
     character, or no token at all to disable registration and overrides"
)]
pub struct BlankToken {
    pub length: usize,
}

/// Why one line of a tokens file was refused. Never carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("{fields} comma-separated field(s): expected 3, `TOKEN,NAME,ROLE`")]
    FieldCount { fields: usize },
    #[error(
        "field `token` ({length} bytes, not shown): expected at least {MIN_TOKEN_BYTES} visible ASCII characters \
         without spaces or commas (e.g. `openssl rand -hex 32`)"
    )]
    Token { length: usize },
    #[error("field `token` (not shown): the same token as line {first_line}: expected each token on one line only")]
    DuplicateToken { first_line: usize },
    #[error(
        "field `name` = {value:?}: expected 1 to {MAX_NAME_BYTES} ASCII letters, digits, `.`, `-`, `_` or `@`, \
         and not the reserved \"analyzer\""
    )]
    Name { value: String },
    #[error("field `role` = {value:?}: expected viewer, pipeline, operator or admin")]
    Role { value: String },
    #[error(
        "field `role` = {role}: {name:?} has role {first_role} on line {first_line}: expected one role per name \
         (two lines for one name are for rotating its token)"
    )]
    ConflictingRole { name: String, role: Role, first_role: Role, first_line: usize },
}

/// Why a tokens file's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: LineProblem },
}

/// A name for the audit log: short, plain, and not the analyzer's.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        && crate::ladder::Actor::human(name).is_ok()
}

impl TokenTable {
    /// Parses a tokens file's text (see the module doc for the format).
    pub fn parse(text: &str) -> Result<TokenTable, ParseError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut entries: Vec<(usize, Entry)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let at = |problem| ParseError::Line { line, problem };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split(',').map(str::trim).collect();
            let [token, name, role] = fields[..] else {
                return Err(at(LineProblem::FieldCount { fields: fields.len() }));
            };
            if token.len() < MIN_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(at(LineProblem::Token { length: token.len() }));
            }
            if !valid_name(name) {
                return Err(at(LineProblem::Name { value: name.to_string() }));
            }
            let role = Role::parse(role).ok_or_else(|| at(LineProblem::Role { value: role.to_string() }))?;
            for (first_line, earlier) in &entries {
                if same_secret(token.as_bytes(), &earlier.token) {
                    return Err(at(LineProblem::DuplicateToken { first_line: *first_line }));
                }
                if earlier.identity.name == name && earlier.identity.role != role {
                    return Err(at(LineProblem::ConflictingRole {
                        name: name.to_string(),
                        role,
                        first_role: earlier.identity.role,
                        first_line: *first_line,
                    }));
                }
            }
            let identity = Arc::new(Identity { name: name.to_string(), role });
            entries.push((line, Entry { token: token.as_bytes().into(), identity }));
        }
        Ok(TokenTable::of(entries.into_iter().map(|(_, entry)| entry).collect()))
    }

    fn of(entries: Vec<Entry>) -> TokenTable {
        let longest_token = entries.iter().map(|e| e.token.len()).max().unwrap_or(0);
        TokenTable { entries, longest_token }
    }

    /// No identities: every token is refused (a tokens file with no lines, or one
    /// that is gone).
    pub fn empty() -> TokenTable {
        TokenTable::of(Vec::new())
    }

    /// The single `--token`: one admin named [`SINGLE_TOKEN_NAME`]. Leading and trailing
    /// whitespace is trimmed, with a warning (a Secret made with `kubectl create secret
    /// --from-file` usually ends in a newline, which no header can carry); blank is refused.
    pub fn single(configured: &str) -> Result<TokenTable, BlankToken> {
        let trimmed = configured.trim();
        if trimmed.is_empty() {
            return Err(BlankToken { length: configured.len() });
        }
        if trimmed.len() != configured.len() {
            tracing::warn!(
                trimmed_bytes = configured.len() - trimmed.len(),
                "the bearer token had leading or trailing whitespace (a trailing newline?); using it without"
            );
        }
        let identity = Arc::new(Identity { name: SINGLE_TOKEN_NAME.to_string(), role: Role::Admin });
        Ok(TokenTable::of(vec![Entry { token: trimmed.as_bytes().into(), identity }]))
    }

    /// The identity `given` names. Compares with every entry, each in constant time.
    /// A token longer than every configured one is refused without comparing: the
    /// comparisons cost its length times the identities (a 300 kB header against 200
    /// identities took 110 ms of CPU), and all they could say is no. The cost of a
    /// refusal still depends only on the token's length, never on its content.
    pub fn find(&self, given: &[u8]) -> Option<Arc<Identity>> {
        if given.len() > self.longest_token {
            return None;
        }
        let mut found = None;
        for entry in &self.entries {
            if same_secret(given, &entry.token) {
                found = Some(Arc::clone(&entry.identity));
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::{ADMIN, OPERATOR, PIPELINE, VIEWER, file_text};
    use std::time::{Duration, Instant};

    #[test]
    fn a_tokens_file_names_identities_and_roles() {
        let table = TokenTable::parse(&file_text()).unwrap();
        assert_eq!(table.len(), 4, "comments, blank lines, a BOM and CRLF are skipped");
        let who = |token: &str| table.find(token.as_bytes()).map(|i| (i.name.clone(), i.role));
        assert_eq!(who(VIEWER), Some(("vera".into(), Role::Viewer)));
        assert_eq!(who(PIPELINE), Some(("ci-deploy".into(), Role::Pipeline)), "fields are trimmed");
        assert_eq!(who(OPERATOR), Some(("alice@example.com".into(), Role::Operator)));
        assert_eq!(who(ADMIN), Some(("root.admin_1".into(), Role::Admin)));
        for wrong in ["", "admin-token-012345678", "admin-token-01234567890", "ADMIN-TOKEN-0123456789"] {
            assert_eq!(who(wrong), None, "{wrong:?}");
        }
        let shown = format!("{table:?}");
        assert!(shown.contains("vera") && !shown.contains("token-0123"), "Debug shows no token: {shown}");
        // One name on two lines with one role: its token being rotated.
        let rotating = TokenTable::parse(&format!("{OPERATOR},alice,operator\n{ADMIN},alice,operator\n")).unwrap();
        assert_eq!(rotating.find(ADMIN.as_bytes()).unwrap().name, "alice");
    }

    #[test]
    fn a_bad_line_is_refused_with_its_number_field_and_expectation_and_never_the_token() {
        let secret = "s3cret-s3cret-s3cret";
        for (text, line, expected) in [
            (format!("# ok\n{secret},alice\n"), 2, "2 comma-separated field(s): expected 3, `TOKEN,NAME,ROLE`"),
            (format!("{secret},alice,operator,extra\n"), 1, "4 comma-separated field(s)"),
            ("short,alice,operator\n".to_string(), 1, "field `token` (5 bytes, not shown): expected at least 16"),
            ("has space in the token,alice,operator\n".to_string(), 1, "without spaces or commas"),
            (format!("{secret},,operator\n"), 1, "field `name` = \"\": expected 1 to 64"),
            (format!("{secret},analyzer,admin\n"), 1, "field `name` = \"analyzer\""),
            (format!("{secret},al ice,admin\n"), 1, "field `name` = \"al ice\""),
            (
                format!("{secret},alice,god\n"),
                1,
                "field `role` = \"god\": expected viewer, pipeline, operator or admin",
            ),
            (format!("{secret},alice,admin\n\n{secret},bob,viewer\n"), 3, "the same token as line 1"),
            (format!("{secret},alice,viewer\n{ADMIN},alice,admin\n"), 2, "\"alice\" has role viewer on line 1"),
        ] {
            let error = TokenTable::parse(&text).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, ParseError::Line { line: l, .. } if l == line), "{text:?}: {message}");
            assert!(message.starts_with(&format!("line {line}: ")) && message.contains(expected), "{message}");
            assert!(!message.contains(secret) && !message.contains("s3cret"), "the token leaked: {message}");
        }
    }

    #[test]
    fn a_file_without_identities_is_a_table_that_refuses_every_token() {
        for empty in ["", "\n", "\u{feff}# only a comment\r\n\n  # another\n"] {
            let table = TokenTable::parse(empty).unwrap_or_else(|e| panic!("{empty:?}: {e}"));
            assert!(table.is_empty(), "{empty:?}");
            assert_eq!(table.find(ADMIN.as_bytes()), None);
            assert_eq!(table.find(b""), None, "not even an empty token");
        }
    }

    #[test]
    fn same_secret_is_equality() {
        assert!(same_secret(b"abc", b"abc"));
        for (given, expected) in [(&b"abd"[..], &b"abc"[..]), (b"ab", b"abc"), (b"abc\0", b"abc"), (b"", b"abc")] {
            assert!(!same_secret(given, expected), "{given:?} vs {expected:?}");
        }
    }

    /// One timing of 8 comparisons.
    fn time_of(compare: fn(&[u8], &[u8]) -> bool, given: &[u8], expected: &[u8]) -> Duration {
        let start = Instant::now();
        for _ in 0..8 {
            std::hint::black_box(compare(std::hint::black_box(given), std::hint::black_box(expected)));
        }
        start.elapsed()
    }

    /// How much longer a token wrong in its last byte takes to refuse than one
    /// wrong in its first: about 1 for a constant-time comparison. The two are timed
    /// in turns (so both see the same load) and the fastest of 40 turns is kept
    /// (the one the machine's noise inflated least).
    fn last_over_first(compare: fn(&[u8], &[u8]) -> bool) -> f64 {
        // 64 KiB: one comparison takes microseconds, far above the clock's resolution.
        let secret = vec![b'a'; 1 << 16];
        let mut wrong_first = secret.clone();
        wrong_first[0] = b'b';
        let mut wrong_last = secret.clone();
        wrong_last[secret.len() - 1] = b'b';
        let (mut first, mut last) = (Duration::MAX, Duration::MAX);
        for _ in 0..40 {
            first = first.min(time_of(compare, &wrong_first, &secret));
            last = last.min(time_of(compare, &wrong_last, &secret));
        }
        last.as_secs_f64() / first.as_secs_f64().max(1e-9)
    }

    /// The fastest of 5 refusals of `given` by `table`.
    fn refusal_time(table: &TokenTable, given: &[u8]) -> Duration {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                assert!(std::hint::black_box(table.find(std::hint::black_box(given))).is_none());
                start.elapsed()
            })
            .min()
            .unwrap_or_default()
    }

    #[test]
    fn a_huge_token_costs_no_more_than_one_of_ordinary_length() {
        let lines: String = (0..50).map(|i| format!("{:032x},user-{i},operator\n", i * 7919 + 1)).collect();
        let table = TokenTable::parse(&lines).unwrap();
        let ordinary = refusal_time(&table, &[b'y'; 32]);
        // 64 KiB against 50 identities: 3.2 M byte comparisons when each is compared.
        let huge = refusal_time(&table, &[b'y'; 1 << 16]);
        // Compared byte by byte it took 1200 times as long (34 ms against 29 µs, debug
        // build); refused by its length, less time than the ordinary one.
        let ratio = huge.as_secs_f64() / ordinary.as_secs_f64().max(1e-7);
        assert!(ratio < 20.0, "huge {huge:?}, ordinary {ordinary:?}: {ratio:.0} times");
        // The length check refuses nothing it should accept: the longest token still matches.
        let longest = format!("{ADMIN}-and-more-and-more");
        let mixed = TokenTable::parse(&format!("{OPERATOR},alice,operator\n{longest},root,admin\n")).unwrap();
        assert_eq!(mixed.find(longest.as_bytes()).unwrap().name, "root");
        assert_eq!(mixed.find(OPERATOR.as_bytes()).unwrap().name, "alice");
        assert!(mixed.find(format!("{longest}x").as_bytes()).is_none());
    }

    #[test]
    fn refusing_a_token_takes_as_long_wherever_it_differs() {
        let constant = last_over_first(same_secret);
        // Measured 0.8 to 1.6 on a busy 2-core machine (debug build); an early exit gives 40 to 49.
        assert!((1.0 / 3.0..3.0).contains(&constant), "same_secret: last/first = {constant:.2}");
        // The measurement can tell: an early-exit comparison is much faster on a wrong first byte.
        let early_exit = last_over_first(|a, b| a == b);
        assert!(early_exit > 5.0, "slice ==: last/first = {early_exit:.2}");
    }
}
