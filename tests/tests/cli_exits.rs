//! The real CLI against the real analyzer (no Envoy): `wait` exits 2 at once when
//! asking again cannot help (an unknown deployment, a missing or wrong token) instead
//! of polling until `--timeout`; and a closed standard output (`status | head`,
//! `wait | grep -q`) is a normal end for every subcommand, never a panic (exit 101).

use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, analyzer_binary, fresh_dir};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = "e2e-pipeline-token-0123456789";
const OPERATOR: &str = "e2e-operator-token-0123456789";
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: exits}\n\
                      spec: {deployment: exits}\n";
/// `wait --timeout` in these tests: a wait that polls until it is over has clearly not
/// ended at once.
const WAIT_TIMEOUT_S: &str = "60";
/// How long an immediate exit may take: start-up of a debug build and one request on
/// a busy two-core machine (about 50 ms when idle).
const AT_ONCE: Duration = Duration::from_secs(10);

/// An analyzer with a pipeline and an operator identity, reads needing a token.
async fn analyzer(name: &str) -> (AnalyzerProcess, std::path::PathBuf) {
    let dir = fresh_dir(name);
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, format!("{PIPELINE},ci-deploy,pipeline\n{OPERATOR},alice,operator\n")).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.extra_args = vec!["--tokens-file".into(), tokens.display().to_string(), "--require-viewer".into()];
    (AnalyzerProcess::start(options).await, policy)
}

/// `canary-analyzer ARGS --server URL` with `token`; stdout and stderr captured, or
/// each a pipe whose reader is already gone when `closed`. Bounded by 90 s.
async fn cli(analyzer: &AnalyzerProcess, args: &[&str], token: Option<&str>, closed: bool) -> (Output, Duration) {
    let mut command = tokio::process::Command::new(analyzer_binary());
    command.args(args).args(["--server", &analyzer.url()]).env_remove("CANARY_ANALYZER_TOKEN").kill_on_drop(true);
    if let Some(token) = token {
        command.env("CANARY_ANALYZER_TOKEN", token);
    }
    if closed {
        // The reading ends are dropped before the process starts: its first write fails
        // with EPIPE, whatever the timing.
        command.stdout(closed_pipe()).stderr(closed_pipe());
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let start = Instant::now();
    // Not `output()`, which would replace the closed pipes with its own.
    let child = command.spawn().expect("run the CLI");
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{}` still running after 90 s", args.join(" ")))
        .expect("wait for the CLI");
    (output, start.elapsed())
}

/// The writing end of a pipe whose reading end is already closed.
fn closed_pipe() -> Stdio {
    let (writer, reader) = tokio::net::unix::pipe::pipe().expect("a pipe");
    drop(reader);
    Stdio::from(writer.into_blocking_fd().expect("the pipe's descriptor"))
}

fn wait_args(deployment: &str) -> [&str; 4] {
    ["wait", deployment, "--timeout", WAIT_TIMEOUT_S]
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_2_at_once_when_waiting_cannot_help() {
    let (analyzer, policy) = analyzer("wait-exits").await;
    let (registered, _) = cli(&analyzer, &["register", policy.to_str().unwrap()], Some(PIPELINE), false).await;
    assert_eq!(registered.status.code(), Some(0), "{}", stderr(&registered));
    let (typo, right) = (wait_args("exitz"), wait_args("exits"));
    // The three cases run together: unfixed, each would take the whole --timeout.
    let (typo, no_token, wrong_token) = tokio::join!(
        cli(&analyzer, &typo, Some(PIPELINE), false),
        cli(&analyzer, &right, None, false),
        cli(&analyzer, &right, Some("e2e-revoked-token-0123456789"), false),
    );
    for ((output, took), (what, status)) in
        [typo, no_token, wrong_token].iter().zip([("a typo", "404"), ("no token", "401"), ("a wrong token", "401")])
    {
        let stderr = stderr(output);
        assert_eq!(output.status.code(), Some(2), "{what}: {stderr}");
        assert!(*took < AT_ONCE, "{what}: took {took:?}: {stderr}");
        assert!(stderr.contains(&format!("analyzer answered {status}")), "{what}: {stderr}");
        assert_eq!(stderr.matches("analyzer answered").count(), 1, "{what}: asked once: {stderr}");
        assert!(stderr.contains("not asking again"), "{what}: {stderr}");
    }
    // The right deployment and token still wait (here until the rollout is rolled back).
    let waiting = cli(&analyzer, &right, Some(PIPELINE), false);
    let rollback =
        async { cli(&analyzer, &["override", "exits", "rollback", "--reason", "test"], Some(OPERATOR), false).await };
    let ((waited, _), (rolled_back, _)) = tokio::join!(waiting, rollback);
    assert_eq!(rolled_back.status.code(), Some(0), "{}", stderr(&rolled_back));
    assert_eq!(waited.status.code(), Some(1), "rolled back: {}", stderr(&waited));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_output_is_a_normal_end_for_every_subcommand() {
    let (analyzer, policy) = analyzer("closed-output").await;
    let policy = policy.to_str().unwrap();
    // (arguments, token, exit code expected): the writes take effect, the reads answer.
    let cases: [(&[&str], &str, i32); 9] = [
        (&["register", policy], PIPELINE, 0),
        (&["override", "exits", "hold", "--reason", "look"], OPERATOR, 0),
        (&["status"], PIPELINE, 0),
        (&["status", "exits"], PIPELINE, 0),
        (&["status", "exits", "--json"], PIPELINE, 0),
        (&["report", "exits"], PIPELINE, 0),
        (&["report", "exits", "--json"], PIPELINE, 0),
        (&["override", "exits", "rollback", "--reason", "done"], OPERATOR, 0),
        // `wait` keeps its verdict.
        (&["wait", "exits", "--timeout", WAIT_TIMEOUT_S], PIPELINE, 1),
    ];
    // The rollout has ended: `--watch` draws one frame and ends. And an error message
    // into a closed stderr: still the error's exit code.
    let more: [(&[&str], &str, i32); 2] =
        [(&["status", "exits", "--watch"], PIPELINE, 0), (&["status", "nosuch"], PIPELINE, 2)];
    let mut wrong = Vec::new();
    for (args, token, code) in cases.into_iter().chain(more) {
        let (output, took) = cli(&analyzer, args, Some(token), true).await;
        if output.status.code() != Some(code) || took > AT_ONCE {
            wrong.push(format!(
                "`{}`: exit {:?} after {took:?}, expected {code}",
                args.join(" "),
                output.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "into a closed pipe:\n{}", wrong.join("\n"));
    // What the writes did, read back: registered, held, rolled back, by whom.
    let audit = analyzer.audit_with_token("exits", PIPELINE).await;
    let done: Vec<(&str, String)> =
        audit.iter().map(|r| (r.decision.actor.name(), format!("{:?}", r.decision.action))).collect();
    assert_eq!(
        done,
        [("ci-deploy", "Start".to_string()), ("alice", "Pause".into()), ("alice", "Rollback".into())],
        "{audit:#?}"
    );
}
