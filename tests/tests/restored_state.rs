//! An analyzer restarted on a state directory older than what the fleet applies (a
//! backup restored over a newer state), the real binary against the real Envoy. The
//! filter ignores answers older than the generation it holds, so the restored analyzer
//! must notice the later generation in Envoy's `canary_applied_generation` gauge and
//! serve above it: its rollback of a failing canary must reach Envoy.

use canary_analyzer::engine::RolloutStatus;
use canary_analyzer::ladder::Action;
use canary_core::RolloutPhase;
use canary_core::metrics::{APPLIED_GENERATION, APPLIED_SHARE_BP};
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess};
use canary_e2e::analyzer_rig::AnalyzerRig;
use canary_e2e::envoy::Envoy;
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::upstream::Behaviour;
use prometheus_parse::{Scrape, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "restore-token";

/// 5 % for 2 s, then 50 % for long enough that the test ends on it, then 100 %.
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: restore}\nspec:\n  \
    deployment: demo\n  ladder:\n    - {share: 5, window: 2s}\n    - {share: 50, window: 1h}\n    \
    - {share: 100, window: 1s}\n  check_interval: 1s\n  min_requests_per_cohort: 10\n  metrics:\n    \
    - {name: error_rate}\n";

/// What Envoy's filter applies for `demo`: `(generation, share_bp)`, from its gauges.
async fn applied(envoy: &Envoy) -> Option<(u64, u64)> {
    let text = envoy.prometheus().await;
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Envoy's exposition parses");
    let gauge = |name: &str| {
        let sample = scrape.samples.iter().find(|s| s.metric == name && s.labels.get("deployment") == Some("demo"))?;
        match sample.value {
            // Generations are Unix ms plus steps: exact in an f64.
            Value::Gauge(v) => Some(v as u64),
            _ => None,
        }
    };
    Some((gauge(APPLIED_GENERATION)?, gauge(APPLIED_SHARE_BP)?))
}

/// Reads Envoy's gauges until `done`; the last reading, or a panic naming it after `limit`.
async fn until_applied(envoy: &Envoy, limit: Duration, done: impl Fn((u64, u64)) -> bool, log: &str) -> (u64, u64) {
    let start = Instant::now();
    loop {
        let seen = applied(envoy).await;
        if let Some(seen) = seen.filter(|&seen| done(seen)) {
            return seen;
        }
        assert!(start.elapsed() < limit, "Envoy applies {seen:?} after {limit:?}\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyzer_restored_from_an_older_backup_rolls_back_a_fleet_on_a_later_generation() {
    let rig = AnalyzerRig::start("restored-state", POLICY, TOKEN, 2).await;
    let (envoy, canary, options) = (&rig.envoy, &rig.canary, rig.options.clone());
    let _load = Load::start(envoy.listener, LoadOptions { rps: 200, users: 3_000, ..LoadOptions::default() });

    // Registered at 5 %; Envoy applies it. The backup is taken then (the analyzer stopped).
    let mut first = AnalyzerProcess::start(options.clone()).await;
    let registered = first.status("demo").await.config;
    until_applied(envoy, Duration::from_secs(10), |(g, _)| g == registered.generation, &first.log_text()).await;
    first.kill_hard();
    drop(first);
    let backup = options.state_dir.with_file_name("backup");
    copy_dir(&options.state_dir, &backup);

    // The analyzer goes on to 50 %, and Envoy applies that later generation.
    let going_on = AnalyzerProcess::start(options.clone()).await;
    let (promoted, _) = going_on
        .until("demo", Duration::from_secs(60), Duration::from_millis(200), |s| s.state.share_bp == 5_000)
        .await;
    let held = until_applied(
        envoy,
        Duration::from_secs(10),
        |(g, share)| g == promoted.config.generation && share == 5_000,
        &going_on.log_text(),
    )
    .await;
    drop(going_on);

    // Restored from the backup: it serves the registration's generation, below Envoy's.
    let restored = AnalyzerProcess::start(AnalyzerOptions { state_dir: backup.clone(), ..options.clone() }).await;
    let served = restored.status("demo").await.config;
    assert_eq!((served.generation, served.share_bp), (registered.generation, 500), "the backup's state");
    assert!(served.generation < held.0);

    // The canary fails half its requests: the restored analyzer rolls back, and Envoy follows.
    canary.set_behaviour(Behaviour { fail_fraction: 0.5, ..Behaviour::default() });
    let (rolled_back, _) = restored
        .until("demo", Duration::from_secs(60), Duration::from_millis(200), |s: &RolloutStatus| {
            s.state.phase == RolloutPhase::RolledBack
        })
        .await;
    let log = restored.log_text();
    let started = Instant::now();
    let now = until_applied(envoy, Duration::from_secs(10), |(g, share)| g > held.0 && share == 0, &log).await;
    println!("rolled back at generation {} (Envoy held {}): applied in {:?}", now.0, held.0, started.elapsed());
    assert_eq!(now.0, rolled_back.config.generation);
    let audit = restored.audit("demo").await;
    let resync = audit.iter().find(|r| matches!(r.decision.action, Action::Resync { .. }));
    let resync = resync.unwrap_or_else(|| panic!("a resync record: {audit:#?}"));
    assert!(resync.decision.reason.contains(&format!("proxies apply generation {}", held.0)), "{resync:#?}");
    assert!(resync.after.generation > held.0);
}
