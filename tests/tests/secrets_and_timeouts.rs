//! The real analyzer binary with no Envoy: a blank token stops `serve` at start
//! instead of opening registration and overrides to anyone; a webhook URL (a secret)
//! never reaches its log; `wait` gives up on time against an analyzer that accepts
//! connections and never answers.

use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, analyzer_binary, fresh_dir};
use canary_e2e::free_port;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The secret part of the webhook URLs below: must never be logged.
const SECRET: &str = "SECRETSECRET";

#[tokio::test]
async fn a_blank_token_stops_the_analyzer_at_start() {
    let cases: [(&str, Option<&str>, &[&str]); 3] =
        [("empty-env", Some(""), &[]), ("newline-env", Some(" \n"), &[]), ("empty-flag", None, &["--token", ""])];
    for (name, env, flags) in cases {
        let mut options = AnalyzerOptions::new(fresh_dir(name).join("state"));
        options.token = env.map(str::to_string);
        options.extra_args = flags.iter().map(|f| f.to_string()).collect();
        let error = match AnalyzerProcess::try_start(options).await {
            Ok(analyzer) => panic!("{name}: serving with a blank token:\n{}", analyzer.log_text()),
            Err(error) => error,
        };
        assert!(error.exit_code.is_some_and(|code| code != 0), "{name}: exit {:?}\n{}", error.exit_code, error.log);
        for expected in ["--token", "CANARY_ANALYZER_TOKEN", "empty", "expected at least one non-whitespace"] {
            assert!(error.log.contains(expected), "{name}: no {expected:?} in:\n{}", error.log);
        }
    }
}

#[tokio::test]
async fn a_webhook_url_is_logged_only_redacted() {
    // Nothing listens on this port: every status update fails and is logged.
    let hook = format!("http://127.0.0.1:{}/services/T000/B000/{SECRET}", free_port());
    let dir = fresh_dir("webhook");
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.token = Some("t".into());
    options.extra_args = vec!["--webhook".into(), hook.clone()];
    let analyzer = AnalyzerProcess::start(options).await;
    let policy = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: hook}\n\
                  spec: {deployment: hook}\n";
    let registered = reqwest::Client::new()
        .post(format!("{}/v1/rollouts", analyzer.url()))
        .bearer_auth("t")
        .body(policy)
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status().as_u16(), 201);
    // The registration's update fails at once (connection refused); the log line follows.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !analyzer.log_text().contains("status update not delivered") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = analyzer.log_text();
    assert!(log.contains("status update not delivered") && log.contains("/…#xxh3:"), "{log}");
    assert!(!log.contains(SECRET) && !log.contains("/services/"), "{log}");

    // A refused --webhook is not echoed either.
    let refused = std::process::Command::new(analyzer_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--webhook", &format!("ftp://hooks.example.com/{SECRET}")])
        .arg("--state-dir")
        .arg(dir.join("refused"))
        .env_remove("CANARY_ANALYZER_TOKEN")
        .output()
        .expect("run the analyzer");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--webhook") && stderr.contains("http://"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

#[tokio::test]
async fn wait_gives_up_on_time_against_an_analyzer_that_never_answers() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = format!("http://{}", silent.local_addr().expect("address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let start = Instant::now();
    let mut wait = tokio::process::Command::new(analyzer_binary())
        .args(["wait", "demo", "--timeout", "2", "--server", &server])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the analyzer");
    // The unfixed binary waits forever: bound it so a failing run ends.
    let status = tokio::time::timeout(Duration::from_secs(20), wait.wait()).await;
    let took = start.elapsed();
    let status = status.unwrap_or_else(|_| panic!("`wait --timeout 2` still running after {took:?}")).expect("wait");
    // No call ever answered: the analyzer counts as unreachable, not as a timeout while answered (3).
    assert_eq!(status.code(), Some(canary_analyzer::cli::exit::UNREACHABLE), "exit code 4: unreachable");
    // 2 s of `--timeout`, plus start-up of a debug build on a busy machine.
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    // Issue 11: journald, `kubectl logs` and CI files showed ANSI escapes.
    let mut options = AnalyzerOptions::new(fresh_dir("plain-log").join("state"));
    options.token = Some("t".into());
    let analyzer = AnalyzerProcess::start(options).await;
    let log = analyzer.log_text();
    assert!(log.contains("analyzer serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a log file:\n{log:?}");
}
