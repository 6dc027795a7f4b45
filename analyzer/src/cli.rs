//! The client side of the binary: `status` (and `status --watch`), `report`,
//! `override`, `register` and `wait` talk to a running analyzer over its API and
//! print for people (tables, a live terminal view) or for pipelines (exit codes,
//! `--json`). The renderings are pure functions of the API's answers.
//!
//! Every request has a time limit ([`DEFAULT_REQUEST_TIMEOUT`], connecting
//! included), and `wait` cuts each one short at its own deadline: a pipeline gate
//! must end on time even against an analyzer that accepts connections and never answers.
//! `wait` asks again only after an error that can pass ([`worth_asking_again`]); a
//! wrong deployment, server or token ends it at once.
//!
//! A closed standard output (`status | head`, `wait | grep -q`) is a normal end, not
//! a panic: output goes through [`print_out`] and notes through [`note`].

use crate::audit::AuditRecord;
use crate::engine::RolloutStatus;
use crate::present::{
    action_text, duration_text, format_interval, format_p, format_relative, format_value, percent, timestamp,
    verdict_name,
};
use crate::stats::ComparisonRow;
use anyhow::Context;
use canary_core::RolloutPhase;
use reqwest::StatusCode;
use serde_json::json;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

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
    http: reqwest::Client,
}

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

/// `wait`'s exit codes: pipelines branch on them.
pub mod exit {
    pub const PROMOTED: i32 = 0;
    pub const ROLLED_BACK: i32 = 1;
    /// Timed out, the analyzer could not be asked, or it refused (unknown
    /// deployment, missing or wrong token): no verdict.
    pub const UNKNOWN: i32 = 2;
}

/// An answer of the analyzer that is not a success: its status and its `error` text.
#[derive(Debug, thiserror::Error)]
#[error("analyzer answered {status}: {message}")]
pub struct ErrorAnswer {
    pub status: StatusCode,
    pub message: String,
}

/// Whether asking again may get another answer than `status`: a server error or
/// overload (5xx), a request timeout (408) or too many requests (429) can pass. A
/// 404 (no such deployment), 401 (no or a wrong token), 403 (a role that may not)
/// or any other refusal is the same on every try: a typo must not block a pipeline
/// until `--timeout`.
pub fn worth_asking_again(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// Whether `wait` should ask again after `error`: an [`ErrorAnswer`] by its status,
/// a transport error (no connection, a timeout, a cut answer) always; anything else
/// (an answer this client cannot read: another version) never.
fn error_can_pass(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<ErrorAnswer>() {
        Some(answer) => worth_asking_again(answer.status),
        None => error.chain().any(|cause| cause.is::<reqwest::Error>()),
    }
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
            http: reqwest::Client::new(),
        }
    }

    /// The same client with another limit per request.
    pub fn with_request_timeout(self, request_timeout: Duration) -> Client {
        Client { request_timeout, ..self }
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
        let response = request.send().await.with_context(|| {
            format!("cannot reach the analyzer at {} within {} s", self.server, self.request_timeout.as_secs_f64())
        })?;
        let status = response.status();
        let identity =
            response.headers().get(crate::api::IDENTITY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.text().await.context("reading the analyzer's answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(ErrorAnswer { status, message }.into());
        }
        Ok((body, identity))
    }

    pub async fn status(&self, deployment: &str) -> anyhow::Result<RolloutStatus> {
        let body = self.send(self.http.get(format!("{}/v1/rollouts/{deployment}", self.server))).await?;
        serde_json::from_str(&body).context("the analyzer's status is not what this client expects")
    }

    /// The rollout's audit records, oldest first.
    pub async fn audit(&self, deployment: &str) -> anyhow::Result<Vec<AuditRecord>> {
        let body = self.send(self.http.get(format!("{}/v1/rollouts/{deployment}/audit", self.server))).await?;
        serde_json::from_str(&body).context("the analyzer's audit log is not what this client expects")
    }

    pub async fn list(&self) -> anyhow::Result<Vec<RolloutStatus>> {
        let body = self.send(self.http.get(format!("{}/v1/rollouts", self.server))).await?;
        serde_json::from_str(&body).context("the analyzer's list is not what this client expects")
    }

    /// Registers a policy; `actor` is sent as `x-actor`, a note beside the token's identity.
    pub async fn register(&self, policy_text: String, actor: Option<&str>) -> anyhow::Result<Recorded> {
        let mut request = self.http.post(format!("{}/v1/rollouts", self.server)).body(policy_text);
        if let Some(actor) = actor {
            request = request.header("x-actor", actor);
        }
        let (body, identity) = self.send_for_identity(request).await?;
        let status = serde_json::from_str(&body).context("unexpected answer to register")?;
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
        let status = serde_json::from_str(&body).context("unexpected answer to override")?;
        Ok(Recorded { status, identity })
    }

    /// Polls until the rollout ends; returns the exit code for pipelines. Ends by
    /// `timeout` however the analyzer behaves: each status call is cut short at the
    /// deadline. An error that cannot pass ([`worth_asking_again`]) ends it at once
    /// with [`exit::UNKNOWN`]. Progress goes to standard output while anyone reads
    /// it; a closed one does not end the wait, whose answer is its exit code.
    pub async fn wait(&self, deployment: &str, timeout: Duration, every: Duration) -> i32 {
        // No deadline the clock can hold (`--timeout` near u64::MAX seconds) is no deadline.
        let deadline = Instant::now().checked_add(timeout);
        let time_left = || deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
        let mut last_line = String::new();
        loop {
            match tokio::time::timeout(time_left(), self.status(deployment)).await {
                Err(_) => note(&format!("no answer from the analyzer at {} before the deadline", self.server)),
                Ok(Err(e)) if error_can_pass(&e) => note(&format!("{e:#}")),
                Ok(Err(e)) => {
                    note(&format!("{e:#}"));
                    note("not asking again: this answer does not change by waiting");
                    return exit::UNKNOWN;
                }
                Ok(Ok(status)) => {
                    let line = progress_line(&status);
                    if line != last_line {
                        // A closed output loses the progress, not the verdict.
                        let _ = print_out(&format!("{line}\n"));
                        last_line = line;
                    }
                    match status.state.phase {
                        RolloutPhase::Promoted => return exit::PROMOTED,
                        RolloutPhase::RolledBack => return exit::ROLLED_BACK,
                        _ => {}
                    }
                }
            }
            let remaining = time_left();
            if remaining.is_zero() {
                note(&format!("gave up after {} s without a verdict", timeout.as_secs()));
                return exit::UNKNOWN;
            }
            tokio::time::sleep(every.min(remaining)).await;
        }
    }
}

/// One line of progress: `checkout: progressing at 5.00 % (step 2/5), window ends in 2 min 00 s`.
pub fn progress_line(status: &RolloutStatus) -> String {
    let phase = format!("{:?}", status.state.phase).to_lowercase();
    let mut line = format!(
        "{}: {phase} at {} (step {}/{})",
        status.deployment,
        percent(status.state.share_bp),
        status.state.step + 1,
        status.ladder_bp.len()
    );
    if let Some(s) = status.window_remaining_s {
        let _ = write!(line, ", window ends in {}", duration_text(s));
    }
    line
}

/// The comparison table, worst first, as the API returns it.
pub fn report_table(rows: &[ComparisonRow]) -> String {
    let mut out = format!(
        "{:<16} {:>12} {:>12} {:>12} {:>9} {:>25} {:>8}  {}\n",
        "metric", "canary", "control", "difference", "relative", "interval", "p", "verdict"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:>12} {:>12} {:>9} {:>25} {:>8}  {}",
            row.metric,
            crate::present::format_cohort_value(row.canary, row, canary_core::Cohort::Canary),
            crate::present::format_cohort_value(row.control, row, canary_core::Cohort::Control),
            format_value(row.absolute_difference, row),
            format_relative(row),
            format_interval(row),
            format_p(row),
            verdict_name(row.verdict)
        );
    }
    out
}

/// The status of one rollout for people.
pub fn status_text(status: &RolloutStatus) -> String {
    let mut out = progress_line(status);
    let ladder: Vec<String> = status
        .ladder_bp
        .iter()
        .enumerate()
        .map(|(i, bp)| if i as u32 == status.state.step { format!("[{}]", percent(*bp)) } else { percent(*bp) })
        .collect();
    let _ = write!(out, "\nladder: {}\ngeneration {}", ladder.join(" → "), status.state.generation);
    if let Some(problem) = &status.problem {
        let _ = write!(out, "\nPROBLEM: {problem}");
    }
    out.push_str(&fleet_and_stall_lines(status));
    if !status.failed_targets.is_empty() {
        let _ = write!(out, "\nfailed scrape targets: {}", status.failed_targets.join("; "));
    }
    let _ = write!(out, "\n\n{}", report_table(&status.rows));
    out
}

/// `fleet: 3 of 4 proxies on generation 17; lagging: ...` and `STALLED: ...`, each on
/// its own line, when the status has them.
fn fleet_and_stall_lines(status: &RolloutStatus) -> String {
    let mut out = String::new();
    if let Some(fleet) = &status.fleet {
        let _ = write!(out, "\nfleet: {}", fleet.summary());
    }
    if let Some(stalled) = &status.stalled {
        let _ = write!(out, "\nSTALLED: {stalled}");
    }
    out.push_str(&crate::present::hold_lines(&status.holds));
    out
}

/// ANSI: move the cursor home and clear the screen (every `--watch` frame starts with it).
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";
/// Comparison rows the watch view shows (the worst ones; `report` has them all).
const WATCH_ROWS: usize = 6;
/// Decisions the watch view shows, newest first.
const WATCH_DECISIONS: usize = 5;

/// What `status --watch` shows of one rollout: the progress line, the ladder, what
/// comes next, requests per cohort, the worst comparison rows and the last decisions.
pub fn watch_view(status: &RolloutStatus, audit: &[AuditRecord]) -> String {
    let mut out = progress_line(status);
    let ladder: Vec<String> = (0u32..)
        .zip(&status.ladder_bp)
        .map(|(i, bp)| if i == status.state.step { format!("[{}]", percent(*bp)) } else { percent(*bp) })
        .collect();
    let _ = write!(out, "\nladder: {}", ladder.join(" → "));
    let next = match (status.state.phase, status.window_remaining_s) {
        (RolloutPhase::Progressing, Some(0)) => crate::present::window_passed_text(&status.holds),
        (RolloutPhase::Progressing, Some(s)) => format!("next step in {}", duration_text(s)),
        (RolloutPhase::Paused, _) => "paused: no automatic promotion (rollback stays armed)".to_string(),
        (RolloutPhase::Promoted, _) => "promoted: the rollout is over".to_string(),
        (RolloutPhase::RolledBack, _) => "rolled back: the rollout is over, everyone on stable".to_string(),
        (_, _) => "waiting".to_string(),
    };
    let _ = write!(out, "\n{next}");
    let total =
        |f: fn(&crate::engine::HistoryPoint) -> u64| status.history.iter().map(f).fold(0u64, u64::saturating_add);
    let (canary, control) = (total(|p| p.canary_requests), total(|p| p.control_requests));
    let _ = write!(out, "\nrequests: canary {canary}, control {control} over {} checks", status.history.len());
    if let Some(last) = status.history.last() {
        let all = last.canary_requests.saturating_add(last.control_requests);
        let observed = if all == 0 {
            "-".to_string()
        } else {
            format!("{:.2} %", 100.0 * last.canary_requests as f64 / all as f64)
        };
        let _ = write!(
            out,
            "\nlatest check: canary {} (errors {}), control {} (errors {}); canary share {observed} of requests",
            last.canary_requests, last.canary_errors, last.control_requests, last.control_errors
        );
    }
    out.push_str(&fleet_and_stall_lines(status));
    if !status.failed_targets.is_empty() {
        let _ = write!(out, "\nfailed scrape targets: {}", status.failed_targets.join("; "));
    }
    let rows = status.rows.get(..WATCH_ROWS.min(status.rows.len())).unwrap_or_default();
    if rows.is_empty() {
        out.push_str("\n\nno comparison yet\n");
    } else {
        let _ = write!(out, "\n\n{}", report_table(rows));
        if status.rows.len() > rows.len() {
            let _ = writeln!(
                out,
                "({} more rows: canary-analyzer report {})",
                status.rows.len() - rows.len(),
                status.deployment
            );
        }
    }
    out.push_str("\nlast decisions:");
    if audit.is_empty() {
        out.push_str(" none");
    }
    for record in audit.iter().rev().take(WATCH_DECISIONS) {
        let _ = write!(
            out,
            "\n  #{} {}  {:<10} {:<16} {}",
            record.sequence,
            timestamp(record.at_ms),
            record.decision.actor_text(),
            action_text(&record.decision.action),
            record.decision.reason
        );
    }
    out
}

/// One full `--watch` frame: clear the screen, a title line, then each rollout's view.
pub fn watch_frame(views: &[String], now_ms: u64) -> String {
    let body = if views.is_empty() { "no rollouts".to_string() } else { views.join("\n\n") };
    format!("{CLEAR_SCREEN}canary-analyzer status --watch · {} · Ctrl-C stops\n\n{body}\n", timestamp(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{point, row, state};
    use crate::ladder::{Action, Actor};
    use crate::stats::Verdict;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The shared rollout after one check, with `rows` comparison rows.
    fn status(rows: usize) -> RolloutStatus {
        let rows = (0..rows).map(|i| row(&format!("metric_{i}"), Verdict::NoDifference, Some(0.4))).collect();
        crate::fixtures::status(vec![point(2_000, 2)], rows)
    }

    fn record(sequence: u64, reason: &str, action: Action) -> AuditRecord {
        crate::fixtures::record(sequence, reason, Actor::Analyzer, action)
    }

    #[test]
    fn the_watch_view_shows_the_essentials() {
        let audit: Vec<AuditRecord> =
            (1..=7).map(|i| record(i, &format!("reason {i}"), Action::Promote { to_step: 1, share_bp: 500 })).collect();
        let view = watch_view(&status(8), &audit);
        let lines: Vec<&str> = view.lines().collect();
        assert_eq!(lines[0], "checkout: progressing at 5.00 % (step 2/5), window ends in 1 min 15 s");
        assert_eq!(lines[1], "ladder: 1.00 % → [5.00 %] → 25.00 % → 50.00 % → 100.00 %");
        assert_eq!(lines[2], "next step in 1 min 15 s");
        assert_eq!(lines[3], "requests: canary 50, control 950 over 1 checks");
        assert_eq!(
            lines[4],
            "latest check: canary 50 (errors 2), control 950 (errors 1); canary share 5.00 % of requests"
        );
        assert!(view.contains("metric_5") && !view.contains("metric_6"), "six worst rows: {view}");
        assert!(view.contains("(2 more rows: canary-analyzer report checkout)"), "{view}");
        assert!(view.contains("[+25.0 %, +∞] relative") && view.contains("no difference"), "{view}");
        // Newest decision first, five of them.
        let decisions: Vec<&&str> = lines.iter().filter(|l| l.starts_with("  #")).collect();
        assert_eq!(decisions.len(), 5);
        assert!(
            decisions[0].starts_with("  #7 2023-11-14 22:13:27 UTC  analyzer   promote → 5 %")
                && decisions[0].ends_with("reason 7"),
            "{}",
            decisions[0]
        );
        assert!(decisions[4].starts_with("  #3 "));
    }

    #[test]
    fn the_watch_view_of_a_new_or_finished_rollout() {
        let mut fresh = status(0);
        fresh.history.clear();
        let view = watch_view(&fresh, &[]);
        assert!(
            view.contains("over 0 checks")
                && view.contains("no comparison yet")
                && view.contains("last decisions: none"),
            "{view}"
        );
        assert!(!view.contains("latest check"));
        let mut done = status(1);
        done.state = state(1, 0, RolloutPhase::RolledBack);
        done.window_remaining_s = None;
        let view = watch_view(&done, &[record(1, "error_rate worse", Action::Rollback)]);
        assert!(view.starts_with("checkout: rolledback at 0.00 %"), "{view}");
        assert!(
            view.contains("rolled back: the rollout is over")
                && view.contains("rollback")
                && view.contains("error_rate worse"),
            "{view}"
        );
    }

    /// A server that accepts connections and never answers: returns its URL; the
    /// task holds every connection open until the test's runtime ends.
    async fn silent_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        url
    }

    /// An outer limit on the unfixed code, which waits forever, so a failing run ends.
    const HUNG: Duration = Duration::from_secs(15);

    #[tokio::test]
    async fn wait_ends_on_time_against_a_server_that_never_answers() {
        let client = Client::new(&silent_server().await, None);
        let start = Instant::now();
        let outcome =
            tokio::time::timeout(HUNG, client.wait("demo", Duration::from_secs(1), Duration::from_millis(100))).await;
        let took = start.elapsed();
        assert_eq!(outcome, Ok(exit::UNKNOWN), "still waiting after {took:?}");
        // 1 s of `--timeout`; the rest is slack for a busy machine.
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[tokio::test]
    async fn every_call_has_a_request_timeout() {
        let client = Client::new(&silent_server().await, None).with_request_timeout(Duration::from_millis(500));
        let start = Instant::now();
        let answer = tokio::time::timeout(HUNG, client.status("demo")).await;
        let took = start.elapsed();
        let error = answer.expect("no request timeout: still waiting").unwrap_err();
        assert!(format!("{error:#}").contains("within 0.5 s"), "{error:#}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(Client::new("http://x/", Some(" \n".into())).token, None, "a blank token is no token");
        assert_eq!(Client::new("http://x/", Some("t\n".into())).token.as_deref(), Some("t"));
    }

    /// A server that gives the answers of `script` in turn, then the last one again,
    /// and counts the requests: returns its URL and the count.
    async fn scripted_server(script: Vec<(StatusCode, String)>) -> (String, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let answer = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let answer = script.get(n).or(script.last()).cloned().unwrap();
            async move { answer }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(answer)).await });
        (url, asked)
    }

    fn promoted() -> String {
        let mut done = status(1);
        done.state = state(4, 10_000, RolloutPhase::Promoted);
        serde_json::to_string(&done).unwrap()
    }

    #[tokio::test]
    async fn wait_ends_at_once_when_asking_again_cannot_help() {
        let error = |status: StatusCode| (status, format!(r#"{{"error":"answered {}"}}"#, status.as_u16()));
        for status in [StatusCode::NOT_FOUND, StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::BAD_REQUEST]
        {
            let (url, asked) = scripted_server(vec![error(status)]).await;
            let start = Instant::now();
            let outcome = tokio::time::timeout(
                HUNG,
                Client::new(&url, None).wait("demo", Duration::from_secs(60), Duration::from_millis(100)),
            )
            .await;
            assert_eq!(outcome, Ok(exit::UNKNOWN), "{status}: still waiting after {:?}", start.elapsed());
            assert_eq!(asked.load(Ordering::SeqCst), 1, "{status}: asked once");
        }
        // An answer this client cannot read (another version): no use asking again either.
        let (url, asked) = scripted_server(vec![(StatusCode::OK, "{}".into())]).await;
        let client = Client::new(&url, None);
        let wait = client.wait("demo", Duration::from_secs(60), Duration::from_millis(100));
        assert_eq!(tokio::time::timeout(HUNG, wait).await, Ok(exit::UNKNOWN));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn wait_asks_again_after_errors_that_can_pass() {
        let script = vec![
            (StatusCode::SERVICE_UNAVAILABLE, "starting".to_string()),
            (StatusCode::BAD_GATEWAY, "<html>proxy</html>".into()),
            (StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"internal error"}"#.into()),
            (StatusCode::TOO_MANY_REQUESTS, String::new()),
            (StatusCode::REQUEST_TIMEOUT, String::new()),
            (StatusCode::OK, promoted()),
        ];
        let (url, asked) = scripted_server(script).await;
        let client = Client::new(&url, None);
        let wait = client.wait("demo", Duration::from_secs(60), Duration::from_millis(10));
        assert_eq!(tokio::time::timeout(HUNG, wait).await, Ok(exit::PROMOTED));
        assert_eq!(asked.load(Ordering::SeqCst), 6);
        // No server at all (a transport error) is asked again until the deadline.
        let closed =
            format!("http://{}", tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap());
        let start = Instant::now();
        let client = Client::new(&closed, None);
        let wait = client.wait("demo", Duration::from_millis(600), Duration::from_millis(50));
        assert_eq!(tokio::time::timeout(HUNG, wait).await, Ok(exit::UNKNOWN));
        assert!(start.elapsed() >= Duration::from_millis(600), "gave up after {:?}", start.elapsed());
    }

    #[test]
    fn a_watch_frame_clears_the_screen_first() {
        let frame = watch_frame(&["a".into(), "b".into()], 3_600_000);
        assert!(
            frame.starts_with("\x1b[H\x1b[2Jcanary-analyzer status --watch · 1970-01-01 01:00:00 UTC"),
            "{frame:?}"
        );
        assert!(frame.ends_with("a\n\nb\n"));
        assert!(watch_frame(&[], 0).contains("no rollouts"));
    }
}
