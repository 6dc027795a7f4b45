//! The client side of the binary: `status` (and `status --watch`), `list`,
//! `report`, `override`, `register` and `wait` talk to a running analyzer over its
//! API and print for people (tables, a live terminal view) or for pipelines (exit
//! codes, `--json`). The renderings ([`view`]) are pure functions of the API's answers.
//!
//! Every request has a time limit ([`DEFAULT_REQUEST_TIMEOUT`], connecting
//! included), and `wait` ([`wait`]) cuts each one short at its own deadline: a
//! pipeline gate must end on time even against an analyzer that accepts connections
//! and never answers. Errors name the flag or environment variable to change
//! (`--server` / `CANARY_ANALYZER_URL`, `--token` / `CANARY_ANALYZER_TOKEN`), and
//! each kind of failure has its own exit code ([`exit`]).
//!
//! A closed standard output (`status | head`, `wait | grep -q`) is a normal end, not
//! a panic: output goes through [`print_out`] and notes through [`note`].

pub mod exit;
mod policy_check;
mod view;
mod wait;

pub use policy_check::{policy_summary, source_warnings};
pub use view::{
    CLEAR_SCREEN, list_table, position_line, progress_line, report_table, status_text, watch_frame, watch_view,
};
pub use wait::WaitEnd;

use crate::audit::AuditRecord;
use crate::engine::RolloutStatus;
use reqwest::StatusCode;
use serde_json::json;
use std::io::Write as _;
use std::time::Duration;

/// How long one request may take, connecting included: an analyzer answers status
/// calls in milliseconds, so 10 s means it is hung or unreachable, not busy.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How the analyzer is reached.
#[derive(Debug, Clone)]
pub struct Client {
    pub server: String,
    pub token: Option<String>,
    /// The limit of every request ([`DEFAULT_REQUEST_TIMEOUT`] unless set).
    pub request_timeout: Duration,
    /// What cut `request_timeout` below `--request-timeout` (`wait`'s deadline), named
    /// when a request runs out of it; `None`: the flag's own limit.
    limit_source: Option<&'static str>,
    http: reqwest::Client,
}

/// Where the limit of one request comes from, unless `wait`'s deadline is nearer.
const REQUEST_TIMEOUT_FLAGS: &str = "--request-timeout / CANARY_ANALYZER_REQUEST_TIMEOUT";

/// The answer to a write: the rollout after it, and who the analyzer recorded it as.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub status: RolloutStatus,
    /// `alice (operator)`; `None` from an analyzer older than named identities.
    pub identity: Option<String>,
}

impl Recorded {
    /// `recorded as alice (operator)`, for the person at the terminal.
    pub fn identity_line(&self) -> String {
        format!("recorded as {}", self.identity.as_deref().unwrap_or("(the analyzer did not say)"))
    }
}

/// An answer of the analyzer that is not a success: its status and its `error` text.
#[derive(Debug, thiserror::Error)]
#[error("analyzer answered {status}: {message}{}", answer_hint(*.status))]
pub struct ErrorAnswer {
    pub status: StatusCode,
    pub message: String,
}

/// What to change after a refusal that names no flag of its own: the token for a 401
/// or 403, the server or the deployment for a 404.
fn answer_hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => " (set --token or CANARY_ANALYZER_TOKEN to your line of the analyzer's tokens)",
        StatusCode::FORBIDDEN => {
            " (the role of --token / CANARY_ANALYZER_TOKEN may not do this: register needs pipeline or admin, \
             override operator or admin)"
        }
        StatusCode::NOT_FOUND => " (check DEPLOYMENT and --server / CANARY_ANALYZER_URL)",
        _ => "",
    }
}

/// The analyzer's wording for the API's fields, in the CLI's: `field `share_percent``
/// is `--share`, `field `actor`` and the `x-actor` header are `--actor`.
pub fn flag_names(message: &str) -> String {
    message
        .replace("field `share_percent`", "--share")
        .replace("for set_share", "for set-share")
        .replace("field `actor`", "--actor")
        .replace("header `x-actor`", "--actor")
        .replace("field `reason`", "--reason")
}

/// Whether asking again may get another answer than `status`: a server error or
/// overload (5xx), a request timeout (408) or too many requests (429) can pass. A
/// 404 (no such deployment), 401 (no or a wrong token), 403 (a role that may not)
/// or any other refusal is the same on every try: a typo must not block a pipeline
/// until `--timeout`.
pub fn worth_asking_again(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// `body` read as a `T`, or [`exit::UnreadableAnswer`] naming the call.
fn read_answer<T: serde::de::DeserializeOwned>(body: &str, what: &'static str) -> anyhow::Result<T> {
    serde_json::from_str(body).map_err(|source| exit::UnreadableAnswer { what, source }.into())
}

/// Standard output was closed by its reader (`| head`, `| grep -q`): the command
/// ends normally, since nobody reads what it would print.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// Writes `text` to standard output and flushes it. A closed output is
/// [`StdoutClosed`]; any other write error is an error naming standard output.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// Writes `line` and a newline to standard error, for people; a closed or failing
/// standard error loses the note and nothing else (`eprintln!` would panic).
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

impl Client {
    /// `token` is trimmed like the server trims its own (a newline from a Secret file); empty means none.
    pub fn new(server: &str, token: Option<String>) -> Client {
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        Client {
            server: server.trim_end_matches('/').to_string(),
            token,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            limit_source: None,
            http: reqwest::Client::new(),
        }
    }

    /// The same client with another limit per request.
    pub fn with_request_timeout(self, request_timeout: Duration) -> Client {
        Client { request_timeout, limit_source: None, ..self }
    }

    /// The same client with a shorter limit per request set by something else than
    /// `--request-timeout` (`wait`'s deadline), which errors name as `source`.
    fn with_limit_from(self, request_timeout: Duration, limit_source: &'static str) -> Client {
        Client { request_timeout, limit_source: Some(limit_source), ..self }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<String> {
        Ok(self.send_for_identity(request).await?.0)
    }

    /// The answer's body and the identity the analyzer recorded the request as
    /// ([`crate::api::IDENTITY_HEADER`], on writes).
    async fn send_for_identity(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(String, Option<String>)> {
        // From connecting to the end of the body (reqwest's per-request timeout covers all of it).
        let request = request.timeout(self.request_timeout);
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let identity =
            response.headers().get(crate::api::IDENTITY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.text().await.map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(ErrorAnswer { status, message: flag_names(&message) }.into());
        }
        Ok((body, identity))
    }

    /// A failed request in words that say what happened and which setting to look at:
    /// no answer within the limit in force (`--request-timeout`, or what was left of
    /// `wait --timeout`), or no connection at all (`--server`).
    fn transport_error(&self, error: reqwest::Error) -> anyhow::Error {
        let server = &self.server;
        let what = if error.is_timeout() {
            match self.limit_source {
                Some(deadline) => format!("no answer from the analyzer at {server} by {deadline}"),
                None => format!(
                    "no answer from the analyzer at {server} within {} s ({REQUEST_TIMEOUT_FLAGS})",
                    self.request_timeout.as_secs_f64()
                ),
            }
        } else if error.is_connect() {
            format!("cannot connect to the analyzer at {server} (--server / CANARY_ANALYZER_URL)")
        } else {
            format!("the request to the analyzer at {server} failed")
        };
        anyhow::Error::new(error).context(what)
    }

    pub async fn status(&self, deployment: &str) -> anyhow::Result<RolloutStatus> {
        let body = self.send(self.http.get(format!("{}/v1/rollouts/{deployment}", self.server))).await?;
        read_answer(&body, "status")
    }

    /// Which kind of metric source the analyzer reads (`GET /v1/source`).
    pub async fn source(&self) -> anyhow::Result<crate::api::SourceKind> {
        let body = self.send(self.http.get(format!("{}{}", self.server, crate::api::SOURCE_PATH))).await?;
        let answer: crate::api::SourceAnswer = read_answer(&body, "source")?;
        Ok(answer.kind)
    }

    /// The rollout's audit records, oldest first.
    pub async fn audit(&self, deployment: &str) -> anyhow::Result<Vec<AuditRecord>> {
        let body = self.send(self.http.get(format!("{}/v1/rollouts/{deployment}/audit", self.server))).await?;
        read_answer(&body, "audit")
    }

    pub async fn list(&self) -> anyhow::Result<Vec<RolloutStatus>> {
        let body = self.send(self.http.get(format!("{}/v1/rollouts", self.server))).await?;
        read_answer(&body, "list")
    }

    /// Registers a policy; `actor` is sent as `x-actor`, a note beside the token's identity.
    /// `start_held`: the rollout waits at share 0 until [`Client::mark_deployed`].
    pub async fn register(
        &self,
        policy_text: String,
        actor: Option<&str>,
        start_held: bool,
    ) -> anyhow::Result<Recorded> {
        let query = if start_held { "?start=held" } else { "" };
        let mut request = self.http.post(format!("{}/v1/rollouts{query}", self.server)).body(policy_text);
        if let Some(actor) = actor {
            request = request.header("x-actor", actor);
        }
        let (body, identity) = self.send_for_identity(request).await?;
        let status = read_answer(&body, "register")?;
        Ok(Recorded { status, identity })
    }

    pub async fn override_rollout(
        &self,
        deployment: &str,
        action: &str,
        reason: &str,
        actor: Option<&str>,
        share_percent: Option<f64>,
    ) -> anyhow::Result<Recorded> {
        let body = json!({ "action": action, "reason": reason, "actor": actor, "share_percent": share_percent });
        let request = self.http.post(format!("{}/v1/rollouts/{deployment}/override", self.server)).json(&body);
        let (body, identity) = self.send_for_identity(request).await?;
        let status = read_answer(&body, "override")?;
        Ok(Recorded { status, identity })
    }
}
