//! The analyzer crashing at the worst moments, the real binary against the real Envoy:
//! SIGKILL just before and just after the audit append of a step change (debug builds
//! have `CANARY_ANALYZER_FAILPOINT` for exactly that), a torn last line in
//! `audit.jsonl`, a state directory that fills up under the running analyzer (an
//! override refused, a failing canary rolled back anyway), one that is read-only from
//! the start (a tmpfs in a mount namespace of its own; needs root), and a state file
//! that no longer validates. A store whose failed append cannot be cut back is tested
//! in `analyzer/src/audit/tests.rs` with a real read-only file handle: a tmpfs cannot
//! be remounted read-only while the analyzer holds the log open.
//! What must hold: no decision takes effect that is not in the audit log — except a
//! rollback, which takes effect and is appended once the disk has room — no record is
//! lost or written twice, and the rollout resumes where the log says it stands.

use canary_analyzer::audit::{AUDIT_FILE, AuditRecord, PersistedRollout, STATE_DIR};
use canary_analyzer::engine::RolloutStatus;
use canary_analyzer::ladder::Action;
use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, fresh_dir};
use canary_e2e::analyzer_rig::AnalyzerRig;
use canary_e2e::free_port;
use canary_e2e::load::{Load, LoadOptions};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "crash-token";

/// Two short steps, then 100 %: a step change within seconds.
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: crash}\nspec:\n  \
    deployment: demo\n  ladder:\n    - {share: 5, window: 2s}\n    - {share: 50, window: 2s}\n    \
    - {share: 100, window: 1s}\n  check_interval: 1s\n  min_requests_per_cohort: 10\n  metrics:\n    \
    - {name: error_rate}\n";

struct Rig {
    live: AnalyzerRig,
    _load: Load,
    options: AnalyzerOptions,
}

/// Envoy with the filter, two upstreams and steady load; the analyzer's options
/// (policy, Envoy admin, token, port) ready for the test to start it with a failpoint.
async fn rig(name: &str) -> Rig {
    let live = AnalyzerRig::start(name, POLICY, TOKEN, 1).await;
    let load = Load::start(live.envoy.listener, LoadOptions { rps: 200, users: 3_000, ..LoadOptions::default() });
    let options = live.options.clone();
    Rig { live, _load: load, options }
}

fn records(state_dir: &Path) -> Vec<AuditRecord> {
    canary_analyzer::audit::AuditLog::read_all(&state_dir.join(AUDIT_FILE)).unwrap()
}

fn state_file(state_dir: &Path) -> PersistedRollout {
    let bytes = std::fs::read(state_dir.join(STATE_DIR).join("demo.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn sequences(records: &[AuditRecord]) -> Vec<u64> {
    records.iter().map(|r| r.sequence).collect()
}

fn promotions_to(records: &[AuditRecord], share_bp: u32) -> usize {
    records.iter().filter(|r| matches!(r.decision.action, Action::Promote { share_bp: s, .. } if s == share_bp)).count()
}

async fn status(analyzer: &AnalyzerProcess) -> RolloutStatus {
    reqwest::get(format!("{}/v1/rollouts/demo", analyzer.url())).await.unwrap().json().await.unwrap()
}

async fn until_finished(analyzer: &AnalyzerProcess, limit: Duration) -> RolloutStatus {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(analyzer).await;
        if s.state.is_finished() || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the analyzer set to SIGKILL itself at `failpoint` and waits for it to die there.
async fn run_until_killed_at(options: &AnalyzerOptions, failpoint: &str) -> String {
    let mut options = options.clone();
    options.env = vec![("CANARY_ANALYZER_FAILPOINT".into(), failpoint.into())];
    let mut analyzer = AnalyzerProcess::start(options).await;
    let exit = analyzer.wait_exit(Duration::from_secs(60)).await;
    let log = analyzer.log_text();
    assert!(exit.is_some_and(|s| !s.success()), "not killed at {failpoint} within 60 s:\n{log}");
    assert!(log.contains("failpoint reached"), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_audit_append_of_a_step_change_resumes_on_the_new_step() {
    let rig = rig("crash-after-append").await;
    let state_dir = rig.options.state_dir.clone();
    run_until_killed_at(&rig.options, "after-audit-append:promote").await;
    // The promotion is in the log, the state file is one record behind.
    let logged = records(&state_dir);
    assert_eq!(sequences(&logged), [1, 2]);
    assert_eq!(promotions_to(&logged, 5_000), 1);
    let stale = state_file(&state_dir);
    assert_eq!((stale.last_applied_sequence, stale.state.share_bp), (1, 500));

    let analyzer = AnalyzerProcess::start(rig.options.clone()).await;
    let resumed = status(&analyzer).await;
    assert!(resumed.state.share_bp >= 5_000, "the logged promotion took effect on restart: {:?}", resumed.state);
    assert!(state_file(&state_dir).last_applied_sequence >= 2, "the state file caught up");
    let done = until_finished(&analyzer, Duration::from_secs(60)).await;
    assert_eq!(done.state.phase, RolloutPhase::Promoted, "{:?}", done.state);
    let all = records(&state_dir);
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(sequences(&all), expected, "no record lost or written twice");
    assert_eq!(promotions_to(&all, 5_000), 1, "the step change was not decided twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_the_audit_append_loses_the_step_change_and_a_torn_line_is_set_aside() {
    let rig = rig("crash-before-append").await;
    let state_dir = rig.options.state_dir.clone();
    run_until_killed_at(&rig.options, "before-audit-append:promote").await;
    assert_eq!(sequences(&records(&state_dir)), [1], "the unlogged promotion never happened");
    assert_eq!(state_file(&state_dir).state.share_bp, 500);
    // Power loss mid-append on top of that: half a record, no newline.
    let audit = state_dir.join(AUDIT_FILE);
    let torn = br#"{"sequence":2,"at_ms":17000000000"#;
    std::fs::OpenOptions::new().append(true).open(&audit).unwrap().write_all(torn).unwrap();

    let analyzer = AnalyzerProcess::start(rig.options.clone()).await;
    assert_eq!(std::fs::read(state_dir.join("audit.jsonl.torn-1")).unwrap(), torn, "the torn bytes are kept");
    let log = analyzer.log_text();
    assert!(log.contains("torn line") && log.contains("audit.jsonl.torn-1"), "{log}");
    let done = until_finished(&analyzer, Duration::from_secs(60)).await;
    assert_eq!(done.state.phase, RolloutPhase::Promoted, "{:?}", done.state);
    let all = records(&state_dir);
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(sequences(&all), expected);
    assert_eq!(promotions_to(&all, 5_000), 1, "decided again after the restart, once");
}

async fn override_share(analyzer: &AnalyzerProcess, percent: f64) -> u16 {
    let body = format!(r#"{{"action":"set_share","share_percent":{percent},"reason":"crash test","actor":"alice"}}"#);
    reqwest::Client::new()
        .post(format!("{}/v1/rollouts/demo/override", analyzer.url()))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn get(analyzer: &AnalyzerProcess, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{}{path}", analyzer.url())).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Fills the analyzer's tmpfs to the last byte; returns the filler file (remove it for room again).
fn fill_up(analyzer: &AnalyzerProcess) -> std::path::PathBuf {
    let filler = analyzer.state_path("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    while file.write_all(&chunk[..1]).is_ok() {}
    filler
}

/// On a full tmpfs the log's last page still has room for a record or two (tmpfs
/// allocates whole pages): overrides until an append needs a new page and is refused
/// (500). Returns the records and the served share before the refused one.
async fn refuse_an_override(analyzer: &AnalyzerProcess) -> (usize, u64) {
    let audit = analyzer.state_path(AUDIT_FILE);
    for attempt in 0..10u32 {
        let records_before = canary_analyzer::audit::AuditLog::read_all(&audit).unwrap().len();
        let share_before = served_share(&get(analyzer, "/v1/rollouts/demo/config").await.1);
        if override_share(analyzer, 10.0 + f64::from(attempt)).await == 500 {
            return (records_before, share_before);
        }
    }
    panic!("a full state directory refused no decision within 10:\n{}", analyzer.log_text());
}

/// Polls `done` every 100 ms until it holds, failing with `what` after `limit`.
async fn until<F: std::future::Future<Output = bool>>(limit: Duration, what: &str, done: impl Fn() -> F) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn served_share(config: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(config).unwrap()["share_bp"].as_u64().unwrap()
}

#[tokio::test]
async fn a_full_or_read_only_state_directory_applies_no_unaudited_decision() {
    assert!(
        std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0")),
        "this test needs root (a mount namespace and a tmpfs); make test runs as root in CI"
    );
    let dir = fresh_dir("state-full");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.policies = vec![policy];
    options.envoy_admin = vec![format!("http://127.0.0.1:{}", free_port())]; // no Envoy: only overrides decide
    options.token = Some(TOKEN.into());
    options.state_on_tmpfs_bytes = Some(1 << 20);
    let analyzer = AnalyzerProcess::start(options).await;
    let audit = analyzer.state_path(AUDIT_FILE);
    let count = || canary_analyzer::audit::AuditLog::read_all(&audit).unwrap().len();
    assert_eq!(count(), 1);

    let filler = fill_up(&analyzer);
    let (records_before, share_before) = refuse_an_override(&analyzer).await;
    assert_eq!(count(), records_before, "nothing logged");
    assert_eq!(served_share(&get(&analyzer, "/v1/rollouts/demo/config").await.1), share_before, "nothing applied");
    let (status, body) = get(&analyzer, "/healthz").await;
    assert!(status == 503 && body.contains("No space left on device"), "a failed append is unhealthy: {status} {body}");
    assert!(get(&analyzer, "/metrics").await.1.contains("\ncanary_analyzer_audit_recording 0\n"));
    assert_eq!(get(&analyzer, "/livez").await, (200, "ok\n".to_string()), "and still serving");
    let log = analyzer.log_text();
    assert!(log.contains("No space left on device"), "the reason is logged:\n{log}");
    // Space again: healthy within a retry (a probe write, no decision needed), and the same override goes through.
    std::fs::remove_file(&filler).unwrap();
    until(Duration::from_secs(10), "healthy again once the disk has room", || async {
        get(&analyzer, "/healthz").await == (200, "ok\n".to_string())
    })
    .await;
    assert_eq!(override_share(&analyzer, 12.5).await, 200);
    let logged = count();
    assert_eq!(
        (logged, served_share(&get(&analyzer, "/v1/rollouts/demo/config").await.1)),
        (records_before + 1, 1_250)
    );

    drop(analyzer);

    // Read-only from the start: a clear error naming the directory, nothing served.
    let mut options = AnalyzerOptions::new(dir.join("read-only"));
    options.token = Some(TOKEN.into());
    options.state_on_tmpfs_bytes = Some(1 << 20);
    options.state_tmpfs_read_only = true;
    let refused = AnalyzerProcess::try_start(options).await.err().expect("refused to start on a read-only state dir");
    assert!(refused.exit_code.is_some_and(|code| code != 0), "{refused:?}");
    assert!(
        refused.log.contains("Read-only file system")
            && refused.log.contains(&dir.join("read-only").display().to_string()),
        "{}",
        refused.log
    );
}

/// One step at 10 % with a window too long to end: only a rollback can change it.
const HOLDING_POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: full}\n\
    spec:\n  deployment: demo\n  ladder:\n    - {share: 10, window: 1h}\n    - {share: 100, window: 1h}\n  \
    check_interval: 1s\n  min_requests_per_cohort: 10\n  metrics:\n    - {name: error_rate}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_directory_still_rolls_a_failing_canary_back_and_records_it_once_there_is_room() {
    assert!(
        std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0")),
        "this test needs root (a mount namespace and a tmpfs); make test runs as root in CI"
    );
    let rig = rig("full-rollback").await;
    let policy = rig.options.state_dir.with_file_name("holding.yaml");
    std::fs::write(&policy, HOLDING_POLICY).unwrap();
    let webhook = canary_e2e::webhook::WebhookReceiver::start().await;
    let mut options = rig.options.clone();
    options.policies = vec![policy];
    options.state_on_tmpfs_bytes = Some(1 << 20);
    options.extra_args = vec!["--webhook".into(), webhook.url()];
    let analyzer = AnalyzerProcess::start(options).await;
    let audit = analyzer.state_path(AUDIT_FILE);
    let records = || canary_analyzer::audit::AuditLog::read_all(&audit).unwrap();

    let filler = fill_up(&analyzer);
    let (logged, _) = refuse_an_override(&analyzer).await;
    let (_, config) = get(&analyzer, "/v1/rollouts/demo/config").await;
    let held: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(held["share_bp"].as_u64().unwrap() >= 1_000, "{held}");
    // The canary fails 41 % of its requests: the rollback cannot be appended, and takes effect anyway.
    rig.live.canary.set_behaviour(canary_e2e::upstream::Behaviour { fail_fraction: 0.41, ..Default::default() });
    until(Duration::from_secs(60), "the failing canary is rolled back to 0 % on a full disk", || async {
        served_share(&get(&analyzer, "/v1/rollouts/demo/config").await.1) == 0
    })
    .await;
    let (_, config) = get(&analyzer, "/v1/rollouts/demo/config").await;
    let rolled_back: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(rolled_back["generation"].as_u64(), held["generation"].as_u64().map(|g| g + 1), "{rolled_back}");
    assert_eq!(records().len(), logged, "not in the log: the disk is full");
    let (health, body) = get(&analyzer, "/healthz").await;
    assert_eq!(health, 503, "{body}");
    assert!(body.contains("1 decision(s) in effect are not in the audit log yet"), "{body}");
    let metrics = get(&analyzer, "/metrics").await.1;
    assert!(
        metrics.contains("\ncanary_analyzer_audit_recording 0\n")
            && metrics.contains("\ncanary_analyzer_unrecorded_decisions 1\n"),
        "{metrics}"
    );
    until(Duration::from_secs(10), "a webhook post says the rollback is not recorded yet", || async {
        webhook
            .received()
            .iter()
            .any(|post| post.to_string().contains("rollback") && post.to_string().contains("NOT yet in the audit log"))
    })
    .await;
    // Envoy applies it: every proxy on the rollback's generation.
    until(Duration::from_secs(30), "Envoy applies the rollback", || async {
        status(&analyzer).await.fleet.is_some_and(|fleet| {
            Some(fleet.generation) == rolled_back["generation"].as_u64() && fleet.on_generation == fleet.proxies
        })
    })
    .await;

    // Room again: the rollback's record is appended, late and marked so, and recording resumes.
    std::fs::remove_file(&filler).unwrap();
    until(Duration::from_secs(10), "the rollback is recorded once the disk has room", || async {
        records().len() == logged + 1
    })
    .await;
    let all = records();
    let rollback = all.last().unwrap();
    assert!(matches!(rollback.decision.action, Action::Rollback), "{rollback:?}");
    assert!(rollback.recorded_late_at_ms.is_some_and(|late| late > rollback.at_ms), "{rollback:?}");
    assert_eq!(rollback.after.share_bp, 0);
    assert_eq!(Some(rollback.after.generation), rolled_back["generation"].as_u64());
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(sequences(&all), expected, "no record lost or written twice");
    assert_eq!(get(&analyzer, "/healthz").await, (200, "ok\n".to_string()));
    let metrics = get(&analyzer, "/metrics").await.1;
    assert!(metrics.contains("\ncanary_analyzer_audit_recording 1\n"), "{metrics}");
    let state: PersistedRollout =
        serde_json::from_slice(&std::fs::read(analyzer.state_path(STATE_DIR).join("demo.json")).unwrap()).unwrap();
    assert_eq!((state.state.phase, state.last_applied_sequence), (RolloutPhase::RolledBack, rollback.sequence));
}

/// A second rollout beside `demo`, so one can break while the other keeps being served.
const SEARCH_POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: search}\n\
    spec: {deployment: search}\n";

#[tokio::test]
async fn a_state_file_that_no_longer_validates_stops_only_its_own_rollout() {
    let dir = fresh_dir("state-invalid");
    let (demo, search) = (dir.join("demo.yaml"), dir.join("search.yaml"));
    std::fs::write(&demo, POLICY).unwrap();
    std::fs::write(&search, SEARCH_POLICY).unwrap();
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.policies = vec![demo, search];
    options.envoy_admin = vec![format!("http://127.0.0.1:{}", free_port())]; // no Envoy: nothing is decided
    let state_dir = options.state_dir.clone();
    let demo_file = state_dir.join(STATE_DIR).join("demo.json");
    // As a newer analyzer would write it: a field this one does not know.
    let break_demo = || {
        let text = std::fs::read_to_string(&demo_file).unwrap();
        std::fs::write(&demo_file, text.replacen("\"spec\": {", "\"spec\": {\"newer_field\": 1,", 1)).unwrap();
    };
    let analyzer = AnalyzerProcess::start(options.clone()).await;
    let (_, demo_config) = get(&analyzer, "/v1/rollouts/demo/config").await;
    drop(analyzer);

    // With its audit record: recovered from it, the file set aside.
    break_demo();
    let analyzer = AnalyzerProcess::start(options.clone()).await;
    assert_eq!(get(&analyzer, "/v1/rollouts/demo/config").await, (200, demo_config.clone()));
    assert_eq!(get(&analyzer, "/healthz").await, (200, "ok\n".to_string()));
    assert!(state_dir.join(STATE_DIR).join("demo.json.invalid-1").exists());
    assert!(analyzer.log_text().contains("recovered from its latest audit record"), "{}", analyzer.log_text());
    drop(analyzer);

    // Without (the log rotated away): reported, not served, not registered again; search is served.
    break_demo();
    std::fs::remove_file(state_dir.join(AUDIT_FILE)).unwrap();
    let analyzer = AnalyzerProcess::try_start(options.clone())
        .await
        .unwrap_or_else(|e| panic!("serve must start (exit {:?}):\n{}", e.exit_code, e.log));
    let (health, body) = get(&analyzer, "/healthz").await;
    assert_eq!(health, 200, "{body}");
    assert!(body.starts_with("degraded\nrollout demo: state file ") && body.contains("newer_field"), "{body}");
    assert_eq!(get(&analyzer, "/v1/rollouts/demo/config").await.0, 404);
    assert_eq!(get(&analyzer, "/v1/rollouts/search/config").await.0, 200);
    assert!(get(&analyzer, "/metrics").await.1.contains("\ncanary_analyzer_broken_rollouts 1\n"));
    assert!(demo_file.exists(), "left in place for a human");
}
