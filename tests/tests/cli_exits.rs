//! The real CLI against the real analyzer (no Envoy): `wait` exits 2 at once when
//! asking again cannot help (an unknown deployment, a missing or wrong token) instead
//! of polling until `--timeout`; each kind of failure has its own exit code (2 usage or
//! refusal, 3 timed out, 4 unreachable) and its message names the flag to change; `wait`
//! prints only when the rollout moves and ends with the decision's reason; `validate`
//! checks a policy offline and `register --dry-run` warns about metrics the analyzer's
//! source cannot read; and a closed standard output (`status | head`, `wait | grep -q`)
//! is a normal end for every subcommand, never a panic (exit 101).

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

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A policy whose second metric is PromQL, which an Envoy-admin analyzer cannot read.
const PROMQL_POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: promql}\n\
                             spec:\n  deployment: promql\n  metrics:\n  - {name: error_rate}\n  - {name: queue_depth, \
                             query: 'max(q{cohort=\"{{cohort}}\"})', max_relative_increase: 0.2}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_has_its_exit_code_and_names_its_flag() {
    let (analyzer, policy) = analyzer("exit-codes").await;
    let policy = policy.to_str().unwrap();
    let (registered, _) = cli(&analyzer, &["register", policy], Some(PIPELINE), false).await;
    assert_eq!(registered.status.code(), Some(0), "{}", stderr(&registered));
    // Usage: a missing --share is named by its flag, before anything is sent.
    let (no_share, _) =
        cli(&analyzer, &["override", "exits", "set-share", "--reason", "r"], Some(OPERATOR), false).await;
    assert_eq!(no_share.status.code(), Some(2), "{}", stderr(&no_share));
    assert!(stderr(&no_share).contains("set-share needs --share PERCENT"), "{}", stderr(&no_share));
    // A refusal: a second registration while one is in progress (409).
    let (again, _) = cli(&analyzer, &["register", policy], Some(PIPELINE), false).await;
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("analyzer answered 409"), "{}", stderr(&again));
    // No token: the message names the flag and the variable.
    let (no_token, _) = cli(&analyzer, &["status", "exits"], None, false).await;
    assert_eq!(no_token.status.code(), Some(2), "{}", stderr(&no_token));
    assert!(stderr(&no_token).contains("--token or CANARY_ANALYZER_TOKEN"), "{}", stderr(&no_token));
    // Timed out while the analyzer answered: 3, printed once (no countdown lines), and
    // said as it is.
    let (timed_out, took) = cli(&analyzer, &["wait", "exits", "--timeout", "5"], Some(PIPELINE), false).await;
    assert_eq!(timed_out.status.code(), Some(3), "{}", stderr(&timed_out));
    assert!(took >= Duration::from_secs(5), "took {took:?}");
    assert_eq!(stdout(&timed_out), "exits: progressing at 1.00 % (step 1/5)\n", "one line, on change only");
    let said = stderr(&timed_out);
    assert!(said.contains("no verdict within 5 s (--timeout): the analyzer answered every call"), "{said}");
    assert!(!said.contains("no answer"), "{said}");
    // Unreachable: 4, naming --server, without a time it did not wait.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut command = tokio::process::Command::new(analyzer_binary());
    command.args(["wait", "exits", "--timeout", "3", "--server", &format!("http://{closed}")]);
    let unreachable = command.output().await.unwrap();
    let said = stderr(&unreachable);
    assert_eq!(unreachable.status.code(), Some(4), "{said}");
    assert!(
        said.contains("cannot connect to the analyzer") && said.contains("--server / CANARY_ANALYZER_URL"),
        "{said}"
    );
    assert!(!said.contains("within 10 s"), "{said}");
    // Rolled back: 1, and the last line says by whom and why.
    let waiting = cli(&analyzer, &["wait", "exits", "--timeout", WAIT_TIMEOUT_S], Some(PIPELINE), false);
    let rollback = async {
        cli(&analyzer, &["override", "exits", "rollback", "--reason", "error budget spent"], Some(OPERATOR), false)
            .await
    };
    let ((waited, _), (rolled_back, _)) = tokio::join!(waiting, rollback);
    assert_eq!(rolled_back.status.code(), Some(0), "{}", stderr(&rolled_back));
    assert_eq!(waited.status.code(), Some(1), "{}", stderr(&waited));
    let last = stdout(&waited).lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("exits: rolled back at 0.00 % (step 1/5) by alice"), "{last}");
    assert!(last.ends_with(": error budget spent"), "{last}");
    // The list: a header and one line per rollout.
    let (list, _) = cli(&analyzer, &["list"], Some(PIPELINE), false).await;
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    let lines: Vec<String> = stdout(&list).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with("exits ") && lines[1].contains("rolled back"), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_a_policy_offline_and_dry_run_warns_about_the_source() {
    let dir = fresh_dir("validate");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = write("good.yaml", POLICY);
    let typo = write("typo.yaml", &POLICY.replace("{deployment: exits}", "{deployment: exits, check_intervall: 30s}"));
    let validate = |path: String| async move {
        let mut command = tokio::process::Command::new(analyzer_binary());
        // No analyzer anywhere: validate must not need one.
        command.args(["validate", &path]).env("CANARY_ANALYZER_URL", "http://127.0.0.1:9");
        command.output().await.unwrap()
    };
    let valid = validate(good).await;
    assert_eq!(valid.status.code(), Some(0), "{}", stderr(&valid));
    assert!(stdout(&valid).starts_with("policy exits for exits: ladder 1 % → 5 %"), "{}", stdout(&valid));
    let invalid = validate(typo).await;
    assert_eq!(invalid.status.code(), Some(2), "{}", stderr(&invalid));
    assert!(stderr(&invalid).contains("did you mean `check_interval`?"), "{}", stderr(&invalid));
    let missing = validate(dir.join("nosuch.yaml").display().to_string()).await;
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("reading the policy file"), "{}", stderr(&missing));
    // --dry-run against a running analyzer that reads Envoy admin endpoints.
    let (analyzer, _) = analyzer("dry-run").await;
    let promql = write("promql.yaml", PROMQL_POLICY);
    let (dry, _) = cli(&analyzer, &["register", &promql, "--dry-run"], Some(PIPELINE), false).await;
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert!(stderr(&dry).contains("warning: metric `queue_depth` is read with PromQL"), "{}", stderr(&dry));
    assert!(stdout(&dry).contains("(dry run: not registered)"), "{}", stdout(&dry));
    let (status, _) = cli(&analyzer, &["status", "promql"], Some(PIPELINE), false).await;
    assert_eq!(status.status.code(), Some(2), "not registered: {}", stdout(&status));
}
