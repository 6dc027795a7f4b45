//! Who may do what: named identities with roles, authenticated by bearer token.
//!
//! The tokens file (`--tokens-file`, `CANARY_ANALYZER_TOKENS_FILE`, mounted from a
//! Kubernetes Secret) holds one identity per line, `TOKEN,NAME,ROLE`: the shape of
//! kube-apiserver's static token file, so it is written and rotated the same way.
//! Blank lines and lines starting with `#` are skipped. The roles ([`Role`]):
//! `viewer` reads, `pipeline` registers (and reads, to wait), `operator` overrides
//! (and reads), `admin` does all. The single `--token` is one `admin` named `token`.
//!
//! A token is compared with every identity's in constant time ([`same_secret`], no
//! early exit over the identities either), so response times reveal neither a
//! matching prefix nor which line matched. The file is read again on SIGHUP and
//! when its content changes ([`Authenticator::reload`], [`Authenticator::watch_file`]);
//! how a changed, bad or missing file changes the identities in force is
//! [`tokens_file`]'s. Refusals are logged and counted per reason ([`RefusalReason`]);
//! tokens are never logged or served.

mod token_table;
mod tokens_file;

pub use token_table::{BlankToken, LineProblem, ParseError, SINGLE_TOKEN_NAME, TokenTable, same_secret};
pub use tokens_file::{FILE_POLL_INTERVAL, ReloadTrigger, Reloaded, TokensFileError, UNREADABLE_GRACE};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokens_file::{ReadHistory, ReloadCounts};

/// What an identity may do. Every role reads; see [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Viewer,
    Pipeline,
    Operator,
    Admin,
}

/// The kinds of request that need a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Status, report, audit and the dashboard (only with `--require-viewer`).
    Read,
    /// `POST /v1/rollouts`.
    Register,
    /// `POST /v1/rollouts/{deployment}/override`.
    Override,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Pipeline, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Pipeline => "pipeline",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == text)
    }

    /// The one table of who may do what.
    pub fn allows(self, permission: Permission) -> bool {
        match (self, permission) {
            (_, Permission::Read) | (Role::Admin, _) => true,
            (Role::Pipeline, Permission::Register) | (Role::Operator, Permission::Override) => true,
            (Role::Viewer | Role::Pipeline | Role::Operator, _) => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Read => "reading rollouts",
            Permission::Register => "registering a rollout",
            Permission::Override => "an override",
        })
    }
}

impl Permission {
    /// The roles that hold it, for error messages: `pipeline or admin`.
    pub fn roles_text(self) -> String {
        let roles: Vec<&str> = Role::ALL.into_iter().filter(|r| r.allows(self)).map(Role::name).collect();
        match roles.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => roles.join(""),
        }
    }
}

/// Who a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

/// Why a request was refused: the label of `canary_analyzer_auth_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// 401: no `Authorization: Bearer` (or, for reads, Basic) header.
    MissingToken,
    /// 401: a token that names no identity.
    UnknownToken,
    /// 403: a known identity whose role does not allow it.
    Role,
    /// 403: the analyzer has no tokens at all, so writes are off.
    Disabled,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 4] =
        [RefusalReason::MissingToken, RefusalReason::UnknownToken, RefusalReason::Role, RefusalReason::Disabled];

    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::MissingToken => "missing_token",
            RefusalReason::UnknownToken => "unknown_token",
            RefusalReason::Role => "role",
            RefusalReason::Disabled => "disabled",
        }
    }

    /// 401 (who are you?) or 403 (known, or nobody can, but not allowed).
    pub fn status(self) -> u16 {
        match self {
            RefusalReason::MissingToken | RefusalReason::UnknownToken => 401,
            RefusalReason::Role | RefusalReason::Disabled => 403,
        }
    }
}

/// Requests refused since start, one counter per [`RefusalReason`].
#[derive(Debug, Default)]
struct RefusalCounts {
    missing_token: AtomicU64,
    unknown_token: AtomicU64,
    role: AtomicU64,
    disabled: AtomicU64,
}

impl RefusalCounts {
    fn of(&self, reason: RefusalReason) -> &AtomicU64 {
        match reason {
            RefusalReason::MissingToken => &self.missing_token,
            RefusalReason::UnknownToken => &self.unknown_token,
            RefusalReason::Role => &self.role,
            RefusalReason::Disabled => &self.disabled,
        }
    }
}

/// A refused request, as the caller is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing bearer token: {permission} needs `Authorization: Bearer <token>`{}", basic_hint(*.permission))]
    MissingToken { permission: Permission },
    #[error("wrong bearer token: it names no identity of this analyzer")]
    UnknownToken { permission: Permission },
    #[error("{name} has role {role}: {permission} needs {}", permission.roles_text())]
    Role { name: String, role: Role, permission: Permission },
    #[error(
        "{permission} is disabled: the analyzer was started without tokens (--tokens-file / \
         CANARY_ANALYZER_TOKENS_FILE, or --token / CANARY_ANALYZER_TOKEN)"
    )]
    Disabled { permission: Permission },
}

fn basic_hint(permission: Permission) -> &'static str {
    if permission == Permission::Read { " (a browser may send the token as a Basic password)" } else { "" }
}

impl Refusal {
    pub fn reason(&self) -> RefusalReason {
        match self {
            Refusal::MissingToken { .. } => RefusalReason::MissingToken,
            Refusal::UnknownToken { .. } => RefusalReason::UnknownToken,
            Refusal::Role { .. } => RefusalReason::Role,
            Refusal::Disabled { .. } => RefusalReason::Disabled,
        }
    }

    pub fn permission(&self) -> Permission {
        match self {
            Refusal::MissingToken { permission }
            | Refusal::UnknownToken { permission }
            | Refusal::Role { permission, .. }
            | Refusal::Disabled { permission } => *permission,
        }
    }
}

/// The token an `Authorization` header carries: `Bearer <token>` always; for reads
/// also `Basic` with the token as the password (the user part is ignored), so a
/// browser can open the dashboard with its own login prompt. Never Basic for a
/// write: a browser re-sends Basic credentials on its own, even on a form another
/// site posts, and that must not change a rollout.
fn presented_token(authorization: Option<&str>, permission: Permission) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let (scheme, value) = authorization?.trim().split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") && permission == Permission::Read {
        let decoded = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return decoded.get(colon + 1..).map(<[u8]>::to_vec);
    }
    None
}

/// Start-up settings that cannot be combined.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(
        "--token (CANARY_ANALYZER_TOKEN) and --tokens-file (CANARY_ANALYZER_TOKENS_FILE) are both set: expected \
         one; to keep the shared token while moving to named ones, add it to the file as a line `TOKEN,token,admin`"
    )]
    BothTokenSources,
    #[error(
        "--require-viewer (CANARY_ANALYZER_REQUIRE_VIEWER) without any tokens: expected --tokens-file or --token, \
         or nobody could read"
    )]
    ViewerWithoutTokens,
    #[error("--token / CANARY_ANALYZER_TOKEN: {0}")]
    Blank(#[from] BlankToken),
    #[error(transparent)]
    File(#[from] TokensFileError),
}

/// The analyzer's identities and its rule for reads; shared by every request, and
/// swapped in place when the tokens file changes.
#[derive(Debug)]
pub struct Authenticator {
    /// `None`: no tokens at all, so registration and overrides are refused (403).
    table: RwLock<Option<Arc<TokenTable>>>,
    file: Option<PathBuf>,
    /// Whether reads (status, report, audit, the dashboard) need a token of any role.
    require_viewer: bool,
    /// What the last reads of the tokens file found (see [`tokens_file`]).
    history: Mutex<ReadHistory>,
    refusals: RefusalCounts,
    reloads: ReloadCounts,
}

impl Authenticator {
    fn new(table: Option<TokenTable>, file: Option<PathBuf>, require_viewer: bool) -> Authenticator {
        Authenticator {
            table: RwLock::new(table.map(Arc::new)),
            file,
            require_viewer,
            history: Mutex::default(),
            refusals: Default::default(),
            reloads: Default::default(),
        }
    }

    /// No tokens: reads open, registration and overrides refused.
    pub fn without_tokens() -> Authenticator {
        Authenticator::new(None, None, false)
    }

    /// The identities of `table` (e.g. [`TokenTable::single`]), never reloaded.
    pub fn fixed(table: TokenTable) -> Authenticator {
        Authenticator::new(Some(table), None, false)
    }

    /// The identities of the tokens file at `path` (none, if it has no lines);
    /// [`Authenticator::reload`] reads it again. A file that cannot be read or parsed
    /// at start is an error: a wrong path or a typo is caught before serving.
    pub fn from_file(path: &Path) -> Result<Authenticator, TokensFileError> {
        let content = tokens_file::read_bytes(path)?;
        let table = tokens_file::parse_content(path, &content)?;
        tokens_file::warn_if_empty(&table, path);
        let auth = Authenticator::new(Some(table), Some(path.into()), false);
        *auth.history.lock().unwrap_or_else(PoisonError::into_inner) = ReadHistory::started_with(&content);
        Ok(auth)
    }

    /// From the `serve` flags: `--token` and `--tokens-file` exclude each other (one
    /// place defines who may act), and `--require-viewer` needs one of them.
    pub fn from_settings(
        token: Option<&str>,
        tokens_file: Option<&Path>,
        require_viewer: bool,
    ) -> Result<Authenticator, AuthSetupError> {
        let auth = match (token, tokens_file) {
            (Some(_), Some(_)) => return Err(AuthSetupError::BothTokenSources),
            (Some(token), None) => Authenticator::fixed(TokenTable::single(token)?),
            (None, Some(path)) => Authenticator::from_file(path)?,
            (None, None) if require_viewer => return Err(AuthSetupError::ViewerWithoutTokens),
            (None, None) => Authenticator::without_tokens(),
        };
        Ok(auth.requiring_viewer(require_viewer))
    }

    /// The same, with reads (status, report, audit, dashboard) needing a token of any role.
    pub fn requiring_viewer(self, require_viewer: bool) -> Authenticator {
        Authenticator { require_viewer, ..self }
    }

    pub fn requires_viewer(&self) -> bool {
        self.require_viewer
    }

    /// The tokens file, if identities come from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn table(&self) -> Option<Arc<TokenTable>> {
        self.table.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Identities in force (0 without tokens).
    pub fn identities(&self) -> usize {
        self.table().map_or(0, |t| t.len())
    }

    /// Whether registration and overrides are possible at all (for the start-up log).
    pub fn has_tokens(&self) -> bool {
        self.table().is_some()
    }

    /// Who the request's `Authorization` header names, if that identity holds
    /// `permission`. A refusal is counted and logged here, with `request` and never the token.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        permission: Permission,
        request: &str,
    ) -> Result<Arc<Identity>, Refusal> {
        let outcome = self.decide(authorization, permission);
        if let Err(refusal) = &outcome {
            let reason = refusal.reason();
            self.refusals.of(reason).fetch_add(1, Ordering::Relaxed);
            match refusal {
                Refusal::Role { name, role, .. } => tracing::warn!(
                    %request, status = reason.status(), reason = reason.label(), identity = %name, %role,
                    "forbidden request refused: the role does not allow it"
                ),
                Refusal::Disabled { .. } => tracing::warn!(
                    %request, status = reason.status(), reason = reason.label(),
                    "forbidden request refused: no tokens configured"
                ),
                Refusal::MissingToken { .. } | Refusal::UnknownToken { .. } => tracing::warn!(
                    %request, status = reason.status(), reason = reason.label(), "unauthorized request refused"
                ),
            }
        }
        outcome
    }

    /// A read (status, report, audit, dashboard): open, unless `--require-viewer`
    /// asks for a token of any role.
    pub fn check_read(&self, authorization: Option<&str>, request: &str) -> Result<(), Refusal> {
        if self.require_viewer {
            self.authenticate(authorization, Permission::Read, request)?;
        }
        Ok(())
    }

    fn decide(&self, authorization: Option<&str>, permission: Permission) -> Result<Arc<Identity>, Refusal> {
        let Some(table) = self.table() else { return Err(Refusal::Disabled { permission }) };
        let given = presented_token(authorization, permission).ok_or(Refusal::MissingToken { permission })?;
        let identity = table.find(&given).ok_or(Refusal::UnknownToken { permission })?;
        if !identity.role.allows(permission) {
            return Err(Refusal::Role { name: identity.name.clone(), role: identity.role, permission });
        }
        Ok(identity)
    }

    /// Requests refused for `reason` since start.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refusals.of(reason).load(Ordering::Relaxed)
    }

    /// The Prometheus lines for refusals and reloads.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from(
            "# HELP canary_analyzer_auth_refusals_total Requests refused, by HTTP status and reason.\n\
             # TYPE canary_analyzer_auth_refusals_total counter\n",
        );
        for reason in RefusalReason::ALL {
            let _ = writeln!(
                out,
                "canary_analyzer_auth_refusals_total{{status=\"{}\",reason=\"{}\"}} {}",
                reason.status(),
                reason.label(),
                self.refused(reason)
            );
        }
        let _ = write!(
            out,
            "# HELP canary_analyzer_identities Identities whose tokens are accepted.\n\
             # TYPE canary_analyzer_identities gauge\ncanary_analyzer_identities {}\n{}",
            self.identities(),
            self.reloads.metrics_text()
        );
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use base64::Engine as _;

    pub(super) const VIEWER: &str = "viewer-token-0123456789";
    pub(super) const PIPELINE: &str = "pipeline-token-0123456789";
    pub(super) const OPERATOR: &str = "operator-token-0123456789";
    pub(super) const ADMIN: &str = "admin-token-0123456789";

    pub(super) fn file_text() -> String {
        format!(
            "\u{feff}# who may change a rollout\r\n\n{VIEWER},vera,viewer\r\n  {PIPELINE} , ci-deploy , pipeline\n\
             {OPERATOR},alice@example.com,operator\n{ADMIN},root.admin_1,admin\n"
        )
    }

    pub(super) fn temp_file(name: &str, text: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "canary-auth-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(super) fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn each_role_allows_exactly_its_actions() {
        use Permission::{Override, Read, Register};
        for (role, read, register, override_) in [
            (Role::Viewer, true, false, false),
            (Role::Pipeline, true, true, false),
            (Role::Operator, true, false, true),
            (Role::Admin, true, true, true),
        ] {
            assert_eq!(
                (role.allows(Read), role.allows(Register), role.allows(Override)),
                (read, register, override_),
                "{role}"
            );
        }
        assert_eq!(Permission::Register.roles_text(), "pipeline or admin");
        assert_eq!(Permission::Override.roles_text(), "operator or admin");
        assert_eq!(Permission::Read.roles_text(), "viewer, pipeline, operator or admin");
    }

    #[test]
    fn bearer_always_and_basic_only_for_reads() {
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("anyone:{ADMIN}")));
        assert_eq!(presented_token(Some(&basic), Permission::Read), Some(ADMIN.as_bytes().to_vec()));
        assert_eq!(presented_token(Some(&basic), Permission::Override), None, "Basic never writes");
        assert_eq!(presented_token(Some(&basic), Permission::Register), None);
        assert_eq!(presented_token(Some(&format!("bearer  {ADMIN} ")), Permission::Override), Some(ADMIN.into()));
        for malformed in ["", "Bearer", "Token abc", "Basic %%%", "Basic YWJj"] {
            assert_eq!(presented_token(Some(malformed), Permission::Read), None, "{malformed:?}");
        }
    }

    #[test]
    fn a_bad_file_is_named_with_its_path_and_line() {
        let path = temp_file("tokens.csv", "x,y\n");
        let message = Authenticator::from_file(&path).unwrap_err().to_string();
        assert!(message.starts_with(&format!("tokens file {}: line 1: ", path.display())), "{message}");
    }

    #[test]
    fn start_up_settings_that_cannot_work_are_refused() {
        let path = temp_file("tokens.csv", &file_text());
        let both = Authenticator::from_settings(Some("t"), Some(&path), false).unwrap_err();
        assert!(matches!(both, AuthSetupError::BothTokenSources));
        assert!(both.to_string().contains("`TOKEN,token,admin`"), "{both}");
        let blind = Authenticator::from_settings(None, None, true).unwrap_err();
        assert!(matches!(blind, AuthSetupError::ViewerWithoutTokens), "{blind}");
        let blank = Authenticator::from_settings(Some(" \n"), None, false).unwrap_err();
        assert!(blank.to_string().starts_with("--token / CANARY_ANALYZER_TOKEN: the bearer token is empty"), "{blank}");
        let missing = Authenticator::from_settings(None, Some(Path::new("/nonexistent/tokens.csv")), false);
        assert!(missing.unwrap_err().to_string().contains("tokens file /nonexistent/tokens.csv: cannot read it"));
        let single = Authenticator::from_settings(Some(" s3cret\n"), None, false).unwrap();
        let admin = single.authenticate(Some("Bearer s3cret"), Permission::Override, "test").unwrap();
        assert_eq!((admin.name.as_str(), admin.role), (SINGLE_TOKEN_NAME, Role::Admin), "--token is one admin");
        assert_eq!(single.reload(ReloadTrigger::Signal).unwrap(), Reloaded::NoFile);
        let from_file = Authenticator::from_settings(None, Some(&path), true).unwrap();
        assert!(from_file.requires_viewer() && from_file.identities() == 4);
    }
}
