//! `wait`: block until the rollout ends, for pipelines. It prints a line only when the
//! rollout moves (phase, step or share; not the countdown), notes a failing call only
//! when its error changes, and ends with one line that says how it ended: the verdict
//! with the decision's actor and reason, or why there is none (`--timeout` passed while
//! the analyzer answered, or while it could not be asked, or a refusal that waiting
//! cannot change). Each ending has its exit code ([`super::exit`]).

use super::exit;
use super::view::{position_line, progress_line, waiting_line};
use super::{Client, ErrorAnswer, note};
use crate::engine::RolloutStatus;
use crate::present::phase_name;
use canary_core::RolloutPhase;
use std::time::{Duration, Instant};

/// How a `wait` ended: the exit code and the line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitEnd {
    pub code: i32,
    pub message: String,
}

/// Whether `wait` should ask again after `error`: an [`ErrorAnswer`] by its status,
/// a transport error (no connection, a timeout, a cut answer) always; anything else
/// (an answer this client cannot read: another version) never.
fn error_can_pass(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<ErrorAnswer>() {
        Some(answer) => exit::worth_asking_again(answer.status),
        None => error.chain().any(|cause| cause.is::<reqwest::Error>()),
    }
}

/// What the calls so far have given, for the ending without a verdict.
#[derive(Default)]
struct Seen {
    /// The latest answer.
    status: Option<RolloutStatus>,
    /// The latest call's error, when it failed (cleared by an answer).
    failure: Option<String>,
    failed_calls: u32,
}

impl Client {
    /// Polls until the rollout ends or `timeout` passes, however the analyzer behaves:
    /// each status call is cut short at the deadline. An error that cannot pass
    /// ([`exit::worth_asking_again`]) ends it at once. `print` gets the progress lines
    /// (each one only when it changes) and, on a verdict, the line that states it.
    pub async fn wait(
        &self,
        deployment: &str,
        timeout: Duration,
        every: Duration,
        print: &mut dyn FnMut(&str),
    ) -> WaitEnd {
        // No deadline the clock can hold (`--timeout` near u64::MAX seconds) is no deadline.
        let deadline = Instant::now().checked_add(timeout);
        let time_left = || deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
        let mut seen = Seen::default();
        let mut printed = String::new();
        loop {
            let left = time_left();
            if left.is_zero() {
                return no_verdict(timeout, &seen);
            }
            match self.until(left).status(deployment).await {
                Ok(status) => {
                    seen.failure = None;
                    let position = waiting_line(&status);
                    // A finished rollout gets the verdict line instead.
                    if position != printed && !status.state.is_finished() {
                        print(&position);
                        printed = position;
                    }
                    let code = match status.state.phase {
                        RolloutPhase::Promoted => exit::PROMOTED,
                        RolloutPhase::RolledBack => exit::ROLLED_BACK,
                        _ => {
                            seen.status = Some(status);
                            tokio::time::sleep(every.min(time_left())).await;
                            continue;
                        }
                    };
                    let message = self.verdict_line(&status, time_left()).await;
                    print(&message);
                    return WaitEnd { code, message };
                }
                Err(e) if error_can_pass(&e) => {
                    let text = format!("{e:#}");
                    // One note per new error, not one per poll.
                    if seen.failure.as_deref() != Some(text.as_str()) {
                        note(&format!("{text} (asking again every {} s)", every.as_secs_f64()));
                    }
                    seen.failure = Some(text);
                    seen.failed_calls = seen.failed_calls.saturating_add(1);
                }
                Err(e) => {
                    return WaitEnd {
                        code: exit::for_error(&e),
                        message: format!("{e:#}; not asking again: this answer does not change by waiting"),
                    };
                }
            }
            tokio::time::sleep(every.min(time_left())).await;
        }
    }

    /// This client with its request limit cut to `left` when the deadline is nearer.
    fn until(&self, left: Duration) -> Client {
        if left < self.request_timeout {
            self.clone().with_limit_from(left, "the deadline of wait --timeout")
        } else {
            self.clone()
        }
    }

    /// `checkout: rolled back at 0.00 % (step 2/5) by analyzer: <reason>`: the verdict
    /// and the decision that made it (the latest audit record that changed the state).
    /// An audit that cannot be read loses the reason, not the verdict.
    async fn verdict_line(&self, status: &RolloutStatus, left: Duration) -> String {
        let position = position_line(status);
        // The verdict is known: a little time past the deadline for its reason is fine.
        let limit = left.max(Duration::from_secs(1)).min(self.request_timeout);
        match self.until(limit).audit(&status.deployment).await {
            Ok(audit) => match audit.iter().rev().find(|r| r.decision.changes_state()) {
                Some(record) => {
                    format!("{position} by {}: {}", record.decision.actor_text(), record.decision.reason)
                }
                None => format!("{position} (the audit log has no decision)"),
            },
            Err(e) => format!("{position} (reason not read: {e:#})"),
        }
    }
}

/// The ending when `timeout` passed: [`exit::TIMED_OUT`] if the latest call was
/// answered (the rollout is still going), [`exit::UNREACHABLE`] if it failed.
fn no_verdict(timeout: Duration, seen: &Seen) -> WaitEnd {
    let after = format!("no verdict within {} s (--timeout)", timeout.as_secs_f64());
    match (&seen.failure, &seen.status) {
        (Some(failure), _) => WaitEnd {
            code: exit::UNREACHABLE,
            message: format!("{after}: the latest of {} failed calls: {failure}", seen.failed_calls),
        },
        (None, Some(status)) => {
            let answered = if seen.failed_calls == 0 {
                "the analyzer answered every call".to_string()
            } else {
                format!("the analyzer answered ({} calls failed before)", seen.failed_calls)
            };
            WaitEnd {
                code: exit::TIMED_OUT,
                message: format!(
                    "{after}: {answered}; the rollout is still {}: {}",
                    phase_name(status.state.phase),
                    progress_line(status)
                ),
            }
        }
        (None, None) => WaitEnd { code: exit::TIMED_OUT, message: format!("{after}: nothing was asked") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditRecord;
    use crate::fixtures::{point, record, state};
    use crate::ladder::{Action, Actor};
    use reqwest::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// The shared rollout, progressing at step 2 of 5 (5 %), 75 s left in the window.
    fn progressing(window_remaining_s: u64) -> RolloutStatus {
        let mut status = crate::fixtures::status(vec![point(2_000, 2)], Vec::new());
        status.window_remaining_s = Some(window_remaining_s);
        status
    }

    fn finished(phase: RolloutPhase) -> RolloutStatus {
        let mut status = progressing(0);
        status.window_remaining_s = None;
        status.state = match phase {
            RolloutPhase::Promoted => state(4, 10_000, phase),
            _ => state(1, 0, phase),
        };
        status
    }

    fn json(status: &RolloutStatus) -> (StatusCode, String) {
        (StatusCode::OK, serde_json::to_string(status).unwrap())
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

    /// A server that gives the status answers of `script` in turn, then the last one
    /// again, and `audit` to an audit request: returns its URL and the count of
    /// status requests.
    async fn scripted_server(script: Vec<(StatusCode, String)>, audit: Vec<AuditRecord>) -> (String, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let answer = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let answer = script.get(n).or(script.last()).cloned().unwrap();
            async move { answer }
        };
        let audit = serde_json::to_string(&audit).unwrap();
        let router = axum::Router::new()
            .route("/v1/rollouts/{deployment}/audit", axum::routing::get(move || async move { audit }))
            .fallback(answer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (url, asked)
    }

    /// An address nothing listens on: every connection is refused.
    async fn refusing_server() -> String {
        format!("http://{}", tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap())
    }

    /// An outer limit on code that would wait forever, so a failing run ends.
    const HUNG: Duration = Duration::from_secs(15);

    /// `client.wait(...)` bounded by [`HUNG`]: how it ended and what it printed.
    async fn wait(client: &Client, timeout: Duration, every: Duration) -> (WaitEnd, Vec<String>) {
        let printed = Mutex::new(Vec::new());
        let mut print = |line: &str| printed.lock().unwrap().push(line.to_string());
        let end = tokio::time::timeout(HUNG, client.wait("checkout", timeout, every, &mut print))
            .await
            .expect("still waiting after 15 s");
        (end, printed.into_inner().unwrap())
    }

    #[tokio::test]
    async fn wait_ends_on_time_against_a_server_that_never_answers() {
        let client = Client::new(&silent_server().await, None);
        let start = Instant::now();
        let (end, _) = wait(&client, Duration::from_secs(1), Duration::from_millis(100)).await;
        let took = start.elapsed();
        assert_eq!(end.code, exit::UNREACHABLE, "{end:?}");
        assert!(
            end.message.starts_with("no verdict within 1 s (--timeout): the latest of 1 failed calls: no answer")
                && end.message.contains("by the deadline of wait --timeout"),
            "{end:?}"
        );
        // 1 s of `--timeout`; the rest is slack for a busy machine.
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[tokio::test]
    async fn a_failed_call_says_which_limit_or_server_to_look_at() {
        let client = Client::new(&silent_server().await, None).with_request_timeout(Duration::from_millis(500));
        let start = Instant::now();
        let error = tokio::time::timeout(HUNG, client.status("demo")).await.expect("no request timeout").unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("no answer from the analyzer at http://127.0.0.1:"), "{text}");
        assert!(text.contains("within 0.5 s (--request-timeout / CANARY_ANALYZER_REQUEST_TIMEOUT)"), "{text}");
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        // A refused connection is not a timeout: it names the server's flag, no time.
        let refused = Client::new(&refusing_server().await, None).status("demo").await.unwrap_err();
        let text = format!("{refused:#}");
        assert!(text.contains("cannot connect to the analyzer at http://127.0.0.1:"), "{text}");
        assert!(text.contains("(--server / CANARY_ANALYZER_URL)") && !text.contains("within"), "{text}");
        assert_eq!(exit::for_error(&refused), exit::UNREACHABLE);
        assert_eq!(Client::new("http://x/", Some(" \n".into())).token, None, "a blank token is no token");
        assert_eq!(Client::new("http://x/", Some("t\n".into())).token.as_deref(), Some("t"));
    }

    #[tokio::test]
    async fn a_wait_that_times_out_while_answered_says_so() {
        let (url, asked) = scripted_server(vec![json(&progressing(75))], Vec::new()).await;
        let (end, printed) =
            wait(&Client::new(&url, None), Duration::from_millis(600), Duration::from_millis(50)).await;
        assert!(asked.load(Ordering::SeqCst) >= 2, "asked {asked:?}");
        assert_eq!(end.code, exit::TIMED_OUT, "{end:?}");
        assert_eq!(
            end.message,
            "no verdict within 0.6 s (--timeout): the analyzer answered every call; the rollout is still \
             progressing: checkout: progressing at 5.00 % (step 2/5), window ends in 1 min 15 s"
        );
        assert_eq!(printed, ["checkout: progressing at 5.00 % (step 2/5)"], "printed once");
    }

    #[tokio::test]
    async fn wait_prints_on_change_and_ends_with_the_decision_and_its_reason() {
        let mut next_step = progressing(300);
        next_step.state = state(2, 2_500, RolloutPhase::Progressing);
        let script = vec![
            json(&progressing(75)),
            json(&progressing(73)),
            json(&progressing(71)),
            json(&next_step),
            json(&next_step),
            json(&finished(RolloutPhase::RolledBack)),
        ];
        let audit = vec![
            record(1, "window passed", Actor::Analyzer, Action::Promote { to_step: 2, share_bp: 2_500 }),
            record(2, "error_rate: canary 2.0 % vs control 1.0 % (worse, p=0.001)", Actor::Analyzer, Action::Rollback),
            record(3, "nothing to do", Actor::Analyzer, Action::Hold),
        ];
        let (url, asked) = scripted_server(script, audit).await;
        let (end, printed) = wait(&Client::new(&url, None), Duration::from_secs(60), Duration::from_millis(10)).await;
        assert_eq!(asked.load(Ordering::SeqCst), 6);
        let verdict = "checkout: rolled back at 0.00 % (step 2/5) by analyzer: error_rate: canary 2.0 % vs control \
                       1.0 % (worse, p=0.001)";
        assert_eq!(end, WaitEnd { code: exit::ROLLED_BACK, message: verdict.to_string() });
        assert_eq!(
            printed,
            ["checkout: progressing at 5.00 % (step 2/5)", "checkout: progressing at 25.00 % (step 3/5)", verdict]
        );
    }

    #[tokio::test]
    async fn wait_ends_at_once_when_asking_again_cannot_help() {
        let error = |status: StatusCode| (status, format!(r#"{{"error":"answered {}"}}"#, status.as_u16()));
        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::BAD_REQUEST,
            StatusCode::CONFLICT,
        ] {
            let (url, asked) = scripted_server(vec![error(status)], Vec::new()).await;
            let (end, _) = wait(&Client::new(&url, None), Duration::from_secs(60), Duration::from_millis(100)).await;
            assert_eq!(end.code, exit::USAGE, "{status}: {end:?}");
            assert!(end.message.contains("not asking again"), "{end:?}");
            assert_eq!(asked.load(Ordering::SeqCst), 1, "{status}: asked once");
        }
        // An answer this client cannot read (another version): no use asking again either.
        let (url, asked) = scripted_server(vec![(StatusCode::OK, "{}".into())], Vec::new()).await;
        let (end, _) = wait(&Client::new(&url, None), Duration::from_secs(60), Duration::from_millis(100)).await;
        assert_eq!(end.code, exit::UNREACHABLE, "{end:?}");
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
            json(&finished(RolloutPhase::Promoted)),
        ];
        let promote =
            record(1, "window passed at 50 %", Actor::Analyzer, Action::Promote { to_step: 4, share_bp: 10_000 });
        let (url, asked) = scripted_server(script, vec![promote]).await;
        let (end, _) = wait(&Client::new(&url, None), Duration::from_secs(60), Duration::from_millis(10)).await;
        assert_eq!(end.code, exit::PROMOTED, "{end:?}");
        assert_eq!(end.message, "checkout: promoted at 100.00 % (step 5/5) by analyzer: window passed at 50 %");
        assert_eq!(asked.load(Ordering::SeqCst), 6);
        // No server at all (a transport error) is asked again until the deadline.
        let start = Instant::now();
        let client = Client::new(&refusing_server().await, None);
        let (end, _) = wait(&client, Duration::from_millis(600), Duration::from_millis(50)).await;
        assert!(start.elapsed() >= Duration::from_millis(600), "gave up after {:?}", start.elapsed());
        assert_eq!(end.code, exit::UNREACHABLE, "{end:?}");
        assert!(end.message.starts_with("no verdict within 0.6 s (--timeout): the latest of "), "{end:?}");
        assert!(end.message.contains("cannot connect to the analyzer"), "{end:?}");
    }
}
