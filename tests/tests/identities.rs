//! The real analyzer binary with a tokens file and no Envoy: each identity's role
//! decides what its token may do, through the CLI as a pipeline or an operator uses
//! it; the audit log names the token's identity and keeps `--actor` as a note; a
//! rewritten file is picked up without a restart, by its own poll and on SIGHUP (which
//! must not stop the process); a broken file keeps the identities in force; an emptied
//! file revokes every token, a deleted one too (fail closed) and is logged once, not on
//! every poll; no token ever reaches the log.

use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, analyzer_binary, fresh_dir};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VIEWER: &str = "e2e-viewer-token-0123456789";
const PIPELINE: &str = "e2e-pipeline-token-0123456789";
const OPERATOR: &str = "e2e-operator-token-0123456789";
const ROTATED: &str = "e2e-rotated-operator-token-0123456789";
const BY_SIGNAL: &str = "e2e-sighup-operator-token-0123456789";
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: roles}\n\
                      spec: {deployment: roles}\n";
/// How long a change of the tokens file may take to be in force: the analyzer reads
/// it every 2 s; a debug build on a busy two-core machine gets 5 times that.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);

fn write_tokens(path: &Path, operator_token: &str) {
    let text = format!(
        "# token,name,role\n{VIEWER},vera,viewer\n{PIPELINE},ci-deploy,pipeline\n{operator_token},alice,operator\n"
    );
    std::fs::write(path, text).unwrap();
}

/// `canary-analyzer ARGS --server URL` with `token` in its environment: exit code, stdout, stderr.
async fn cli(analyzer: &AnalyzerProcess, args: &[&str], token: Option<&str>) -> (Option<i32>, String, String) {
    let mut command = tokio::process::Command::new(analyzer_binary());
    command.args(args).args(["--server", &analyzer.url()]).env_remove("CANARY_ANALYZER_TOKEN").env_remove("USER");
    if let Some(token) = token {
        command.env("CANARY_ANALYZER_TOKEN", token);
    }
    let out = command.output().await.expect("run the CLI");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The HTTP status of `GET /v1/rollouts/roles` with `token`.
async fn read_status(analyzer: &AnalyzerProcess, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v1/rollouts/roles", analyzer.url()))
        .bearer_auth(token)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Waits until `token` reads (200), or panics with the log after [`RELOAD_LIMIT`].
async fn until_accepted(analyzer: &AnalyzerProcess, token: &str, what: &str) {
    let deadline = Instant::now() + RELOAD_LIMIT;
    while read_status(analyzer, token).await != 200 {
        assert!(Instant::now() < deadline, "{what}: not accepted within {RELOAD_LIMIT:?}:\n{}", analyzer.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the log has `needle`, or panics with it after [`RELOAD_LIMIT`].
async fn until_logged(analyzer: &AnalyzerProcess, needle: &str) {
    let deadline = Instant::now() + RELOAD_LIMIT;
    while !analyzer.log_text().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", analyzer.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_audit_names_and_rotation_without_a_restart() {
    let dir = fresh_dir("identities");
    let tokens = dir.join("tokens.csv");
    write_tokens(&tokens, OPERATOR);
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.extra_args = vec!["--tokens-file".into(), tokens.display().to_string(), "--require-viewer".into()];
    let mut analyzer = AnalyzerProcess::start(options).await;
    let policy = policy.to_str().unwrap();

    // Each role, through the CLI: the pipeline registers, the viewer may not override, the operator may.
    let (code, _, stderr) = cli(&analyzer, &["register", policy], Some(OPERATOR)).await;
    assert_eq!(code, Some(2), "an operator does not register: {stderr}");
    assert!(stderr.contains("403") && stderr.contains("alice has role operator"), "{stderr}");
    let (code, _, stderr) = cli(&analyzer, &["register", policy, "--actor", "release-bot"], Some(PIPELINE)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("recorded as ci-deploy (pipeline)"), "{stderr}");
    let hold = ["override", "roles", "hold", "--reason", "look", "--actor", "mallory"];
    let (code, _, stderr) = cli(&analyzer, &hold, Some(VIEWER)).await;
    assert!(code == Some(2) && stderr.contains("403") && stderr.contains("vera has role viewer"), "{stderr}");
    let (code, _, stderr) = cli(&analyzer, &hold, Some(OPERATOR)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("recorded as alice (operator)"), "{stderr}");
    // --require-viewer: status needs a token, any role's.
    let (code, _, stderr) = cli(&analyzer, &["status", "roles"], None).await;
    assert!(code == Some(2) && stderr.contains("401"), "{stderr}");
    let (code, stdout, _) = cli(&analyzer, &["status", "roles"], Some(VIEWER)).await;
    assert!(code == Some(0) && stdout.contains("paused"), "{stdout}");

    // The audit log: who the tokens name, what the callers said as notes.
    let audit = analyzer.audit_with_token("roles", VIEWER).await;
    let who: Vec<(&str, Option<&str>)> =
        audit.iter().map(|r| (r.decision.actor.name(), r.decision.actor_note.as_deref())).collect();
    assert_eq!(who, [("ci-deploy", Some("release-bot")), ("alice", Some("mallory"))]);

    // Rotation by rewriting the file: picked up by the analyzer's own poll.
    write_tokens(&tokens, ROTATED);
    until_accepted(&analyzer, ROTATED, "the rotated token").await;
    assert_eq!(read_status(&analyzer, OPERATOR).await, 401, "the old token is refused");
    until_logged(&analyzer, "trigger=FileChange").await;

    // Rotation with SIGHUP: the process reloads and keeps running (SIGHUP's default would end it).
    write_tokens(&tokens, BY_SIGNAL);
    let hup = std::process::Command::new("kill").args(["-HUP", &analyzer.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    until_logged(&analyzer, "trigger=Signal").await;
    until_accepted(&analyzer, BY_SIGNAL, "the token written before SIGHUP").await;
    assert!(analyzer.is_running(), "SIGHUP stopped the analyzer:\n{}", analyzer.log_text());
    assert_eq!(read_status(&analyzer, ROTATED).await, 401);

    // A broken rotation: logged with file and line, the identities in force stay.
    std::fs::write(&tokens, format!("{PIPELINE},ci-deploy,pipeline\n{VIEWER},vera,superuser\n")).unwrap();
    until_logged(&analyzer, "line 2: field `role` = \"superuser\": expected viewer").await;
    assert_eq!(read_status(&analyzer, BY_SIGNAL).await, 200, "the last good file is still in force");

    // Counted per reason (the waits above polled with tokens not yet loaded: 2 or more unknown).
    let metrics = reqwest::get(format!("{}/metrics", analyzer.url())).await.unwrap().text().await.unwrap();
    let unknown = metrics
        .lines()
        .find_map(|l| l.strip_prefix("canary_analyzer_auth_refusals_total{status=\"401\",reason=\"unknown_token\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(unknown.is_some_and(|n| n >= 2), "{metrics}");
    for line in [
        "canary_analyzer_auth_refusals_total{status=\"401\",reason=\"missing_token\"} 1\n",
        "canary_analyzer_auth_refusals_total{status=\"403\",reason=\"role\"} 2\n",
        "canary_analyzer_tokens_reloads_total{result=\"refused\"} 1\n",
        "canary_analyzer_identities 3\n",
    ] {
        assert!(metrics.contains(line), "{line}{metrics}");
    }
    let log = analyzer.log_text();
    // Logged with the wording older log searches use ("unauthorized"), status and reason.
    assert!(log.contains("unauthorized request refused") && log.contains("reason=\"missing_token\""), "{log}");
    assert!(log.contains("forbidden request refused") && log.contains("identity=vera role=viewer"), "{log}");
    for token in [VIEWER, PIPELINE, OPERATOR, ROTATED, BY_SIGNAL] {
        assert!(!log.contains(token), "a token in the log:\n{log}");
    }
}

#[tokio::test]
async fn a_token_and_a_tokens_file_together_stop_the_analyzer_at_start() {
    let dir = fresh_dir("both-token-sources");
    let tokens = dir.join("tokens.csv");
    write_tokens(&tokens, OPERATOR);
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.token = Some("shared".into());
    options.extra_args = vec!["--tokens-file".into(), tokens.display().to_string()];
    let error = match AnalyzerProcess::try_start(options).await {
        Ok(analyzer) => panic!("serving with both:\n{}", analyzer.log_text()),
        Err(error) => error,
    };
    assert!(error.exit_code.is_some_and(|code| code != 0), "{error:?}");
    assert!(error.log.contains("are both set") && error.log.contains("`TOKEN,token,admin`"), "{}", error.log);
}

/// An analyzer reading a fresh tokens file (reads need a token) with a registered
/// rollout `roles`, and the file's poll logged at debug; and that file's path.
async fn analyzer_with_rollout(name: &str) -> (AnalyzerProcess, PathBuf) {
    let dir = fresh_dir(name);
    let tokens = dir.join("tokens.csv");
    write_tokens(&tokens, OPERATOR);
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.extra_args = vec!["--tokens-file".into(), tokens.display().to_string(), "--require-viewer".into()];
    options.env = vec![("RUST_LOG".into(), "info,tower_http=warn,canary_analyzer::auth=debug".into())];
    let analyzer = AnalyzerProcess::start(options).await;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let (code, _, stderr) = cli(&analyzer, &["register", policy.to_str().unwrap()], Some(PIPELINE)).await;
    assert_eq!(code, Some(0), "{stderr}");
    (analyzer, tokens)
}

/// Waits until `token` is refused (401), or panics with the log after [`RELOAD_LIMIT`].
async fn until_refused(analyzer: &AnalyzerProcess, token: &str, what: &str) {
    let deadline = Instant::now() + RELOAD_LIMIT;
    while read_status(analyzer, token).await != 401 {
        assert!(Instant::now() < deadline, "{what}: not refused within {RELOAD_LIMIT:?}:\n{}", analyzer.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The records of the rollout `roles`, read with the pipeline's token.
async fn audit_len(analyzer: &AnalyzerProcess) -> usize {
    analyzer.audit_with_token("roles", PIPELINE).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_the_tokens_file_revokes_every_token() {
    let (analyzer, tokens) = analyzer_with_rollout("emptied-tokens").await;
    let hold = ["override", "roles", "hold", "--reason", "revoked?"];
    for (round, (empty, what)) in
        [("", "an empty file"), ("# everyone revoked\n\n", "a comment-only file")].into_iter().enumerate()
    {
        std::fs::write(&tokens, empty).unwrap();
        until_refused(&analyzer, OPERATOR, what).await;
        let (code, _, stderr) = cli(&analyzer, &hold, Some(OPERATOR)).await;
        assert!(code == Some(2) && stderr.contains("401"), "{what}: the revoked operator overrode: {stderr}");
        let log = analyzer.log_text();
        assert_eq!(log.matches("the tokens file names no identity").count(), round + 1, "{what}: warned:\n{log}");
        write_tokens(&tokens, OPERATOR);
        until_accepted(&analyzer, OPERATOR, "the file written back").await;
    }
    assert_eq!(audit_len(&analyzer).await, 1, "only the registration is in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tokens_file_revokes_its_tokens_and_is_logged_once() {
    let (analyzer, tokens) = analyzer_with_rollout("deleted-tokens").await;
    let polls = || analyzer.log_text().matches("tokens file read").count();
    std::fs::remove_file(&tokens).unwrap();
    until_refused(&analyzer, OPERATOR, "the deleted file's operator").await;
    let hold = ["override", "roles", "hold", "--reason", "revoked?"];
    let (code, _, stderr) = cli(&analyzer, &hold, Some(OPERATOR)).await;
    assert!(code == Some(2) && stderr.contains("401"), "the revoked operator overrode: {stderr}");
    // Four more polls of the missing file: still one error line, one count.
    let seen = polls();
    let deadline = Instant::now() + RELOAD_LIMIT * 2;
    while polls() < seen + 4 {
        assert!(Instant::now() < deadline, "the file is not polled:\n{}", analyzer.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = analyzer.log_text();
    assert_eq!(log.matches("cannot read it").count(), 1, "logged once:\n{log}");
    assert!(log.contains("ERROR") && log.contains("no identity is in force"), "{log}");
    let metrics = reqwest::get(format!("{}/metrics", analyzer.url())).await.unwrap().text().await.unwrap();
    for line in [
        "canary_analyzer_tokens_reloads_total{result=\"unreadable\"} 1\n",
        "canary_analyzer_tokens_reloads_total{result=\"refused\"} 0\n",
        "canary_analyzer_identities 0\n",
    ] {
        assert!(metrics.contains(line), "{line}{metrics}");
    }
    // Back, with the same content: in force again.
    write_tokens(&tokens, OPERATOR);
    until_accepted(&analyzer, OPERATOR, "the file written back").await;
    assert_eq!(audit_len(&analyzer).await, 1, "only the registration is in the audit log");
}
