//! The engine against scrape targets on loopback: small HTTP servers that answer
//! like Envoy's admin endpoint (or never answer), a temporary state directory, and
//! a wall clock the test steps.

use super::*;
use crate::audit::{AUDIT_FILE, AuditLog};
use crate::ladder::Actor;
use crate::stats::Verdict;
use std::net::SocketAddr;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod gates;
mod layouts;
mod scale;

const T0: u64 = 1_700_000_000_000;

/// The caller of the overrides below, as the API would authenticate it.
fn alice() -> ActedBy {
    Actor::human("alice").unwrap().into()
}

/// A fresh state directory per test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name =
            format!("canary-engine-{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), now_ms());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An Envoy admin endpoint whose answer (status, body) the test sets.
#[derive(Clone)]
struct StubEnvoy {
    addr: SocketAddr,
    answer: Arc<StdMutex<(u16, String)>>,
}

impl StubEnvoy {
    async fn start() -> StubEnvoy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(StdMutex::new((200, String::new())));
        let shared = Arc::clone(&answer);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let (status, body) = shared.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                });
            }
        });
        StubEnvoy { addr, answer }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cumulative requests (2xx) per cohort of each deployment.
    fn serve_counts(&self, counts: &[(&str, u64, u64)]) {
        let mut body = String::from("# TYPE canary_requests_total counter\n");
        for (deployment, canary, control) in counts {
            for (cohort, n) in [("canary", canary), ("control", control)] {
                body.push_str(&format!(
                    "canary_requests_total{{deployment=\"{deployment}\",cohort=\"{cohort}\",class=\"2xx\"}} {n}\n"
                ));
            }
        }
        *self.answer.lock().unwrap() = (200, body);
    }

    /// Counts plus the filter's applied-rollout gauges for one deployment.
    fn serve_counts_and_gauges(&self, deployment: &str, canary: u64, control: u64, generation: u64, share_bp: u32) {
        self.serve_counts(&[(deployment, canary, control)]);
        let mut answer = self.answer.lock().unwrap();
        answer.1.push_str(&format!(
            "canary_applied_generation{{deployment=\"{deployment}\"}} {generation}\n\
             canary_applied_share_bp{{deployment=\"{deployment}\"}} {share_bp}\n\
             canary_config_age_ms{{deployment=\"{deployment}\"}} 250\n"
        ));
    }

    fn fail_with(&self, status: u16) {
        *self.answer.lock().unwrap() = (status, "no healthy upstream".to_string());
    }
}

/// A target that accepts connections and never answers; counts the connections.
async fn hung_target() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (format!("http://{addr}"), accepted)
}

fn policy(deployment: &str, extra: &str) -> RolloutPolicy {
    RolloutPolicy::from_yaml(&format!(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: t}}\nspec:\n  \
         deployment: {deployment}\n  ladder:\n    - {{share: 1, window: 10s}}\n    - {{share: 5, window: 10s}}\n    \
         - {{share: 25, window: 10s}}\n    - {{share: 50, window: 10s}}\n    - {{share: 100, window: 10s}}\n  \
         check_interval: 1s\n  min_requests_per_cohort: 20\n  metrics:\n    - {{name: error_rate}}\n{extra}"
    ))
    .unwrap()
}

/// A policy the statistics refuse (`max_increase_ms: 1e306` is infinite in µs), as an older
/// analyzer could register it: `from_yaml` now refuses it by field, so it is built directly.
fn statistics_refused(deployment: &str) -> RolloutPolicy {
    let mut policy = policy(deployment, "    - {name: latency_p99, max_increase_ms: 1}\n");
    for metric in &mut policy.metrics {
        if let crate::policy::Metric::Latency { tolerance, .. } = &mut metric.metric {
            tolerance.max_increase_ms = Some(1e306);
        }
    }
    policy
}

/// A wall clock the test sets.
fn stepped_clock(start_ms: u64) -> (WallClock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(start_ms));
    let read = Arc::clone(&now);
    (Arc::new(move || read.load(Ordering::SeqCst)), now)
}

fn engine(dir: &TempDir, targets: Vec<String>, clock: WallClock) -> Arc<Engine> {
    let source =
        SourceSettings::EnvoyAdmin { admin_urls: targets, max_body_bytes: crate::source::DEFAULT_MAX_BODY_BYTES };
    let engine = Engine::open(&dir.0, source, Notifier::new(Vec::new())).unwrap();
    Arc::new(engine.with_wall_clock(clock))
}

#[tokio::test]
async fn a_step_whose_scrapes_all_fail_is_held_not_promoted_on_earlier_evidence() {
    // A healthy 1 % step, then every Envoy answers 503. Before steps
    // kept their own record, the rollout went 5 → 25 → 50 → 100 % on the 1 % step's evidence.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(policy("checkout", ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    let (mut canary, mut control) = (0u64, 0u64);
    let mut share_bp = 100;
    // Healthy traffic until the first promotion (1 % → 5 %): 1000 requests a second.
    for second in 1..=30 {
        canary += 10 * u64::from(share_bp) / 100;
        control += 1_000 - 10 * u64::from(share_bp) / 100;
        envoy.serve_counts(&[("checkout", canary, control)]);
        wall.store(T0 + second * 1_000, Ordering::SeqCst);
        engine.check_now("checkout").await.unwrap();
        share_bp = engine.config("checkout").unwrap().share_bp;
        if share_bp == 500 {
            break;
        }
    }
    assert_eq!(share_bp, 500, "the healthy 1 % step is promoted");
    envoy.fail_with(503);
    for second in 31..=200 {
        wall.store(T0 + second * 1_000, Ordering::SeqCst);
        engine.check_now("checkout").await.unwrap();
    }
    let status = engine.status("checkout", T0 + 200_000).await.unwrap();
    assert_eq!(status.config.share_bp, 500, "held at 5 %: {:?}", status.state);
    assert_eq!(status.state.phase, canary_core::RolloutPhase::Progressing);
    assert!(status.failed_targets.iter().any(|f| f.contains("503")), "{:?}", status.failed_targets);
    let records = engine.audit("checkout").unwrap();
    assert_eq!(records.len(), 2, "start and one promotion only");
}

#[tokio::test]
async fn checks_keep_their_schedule_when_the_wall_clock_steps() {
    // Scheduled on wall time, a check run while the clock was 1 h fast
    // put the next one 1 h away once the clock was set back: 0 checks for 59 minutes.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    envoy.serve_counts(&[("checkout", 0, 0)]);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(policy("checkout", ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    let start = Instant::now();
    let mut last_checks = Vec::new();
    for (second, wall_ms) in
        [(1u64, T0 + 3_600_000), (2, T0 + 2_000), (3, T0 + 3_000), (4, T0 - 3_600_000), (5, T0 + 5_000)]
    {
        wall.store(wall_ms, Ordering::SeqCst);
        let checks = engine.start_due_checks(start + Duration::from_secs(second)).await;
        assert_eq!(checks.len(), 1, "one check due at second {second} (wall clock {wall_ms})");
        for check in checks {
            check.await.unwrap();
        }
        last_checks.push(engine.status("checkout", wall_ms).await.unwrap().last_check_ms);
    }
    assert_eq!(
        last_checks,
        [Some(T0 + 3_600_000), Some(T0 + 2_000), Some(T0 + 3_000), Some(T0 - 3_600_000), Some(T0 + 5_000)]
    );
    // Not due again before its interval, whatever the wall clock says.
    wall.store(T0 + 7_200_000, Ordering::SeqCst);
    assert!(engine.start_due_checks(start + Duration::from_millis(5_500)).await.is_empty());
}

#[tokio::test]
async fn a_hung_target_delays_neither_an_override_nor_other_rollouts_checks() {
    // The lock was held across scrapes, one rollout after another: with
    // one target that never answered, an override waited ~2 s and 20 rollouts took ~40 s.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (hung, accepted) = hung_target().await;
    let deployments: Vec<String> = (0..20).map(|i| format!("service-{i:02}")).collect();
    let counts: Vec<(&str, u64, u64)> = deployments.iter().map(|d| (d.as_str(), 10, 990)).collect();
    envoy.serve_counts(&counts);
    let (clock, _) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url(), hung], clock);
    for deployment in &deployments {
        engine.register(policy(deployment, ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    }
    let checks = engine.start_due_checks(Instant::now() + Duration::from_secs(60)).await;
    assert_eq!(checks.len(), 20);
    // Every rollout's check is at the hung target at the same time...
    let all_waiting = async {
        while accepted.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_waiting)
        .await
        .unwrap_or_else(|_| panic!("only {} of 20 checks reached the hung target", accepted.load(Ordering::SeqCst)));
    // ...and an override goes through while they all still wait for it.
    let rollback =
        engine.override_rollout("service-00", &OverrideAction::Rollback, &alice(), "bad build", T0 + 1).await;
    assert_eq!(rollback.unwrap().state.phase, canary_core::RolloutPhase::RolledBack);
    assert!(checks.iter().all(|c| !c.is_finished()), "the override did not wait for a check");
    for check in checks {
        check.await.unwrap();
    }
    let status = engine.status("service-01", T0).await.unwrap();
    assert!(status.failed_targets.iter().any(|f| f.contains("failed")), "{:?}", status.failed_targets);
    let rolled_back = engine.status("service-00", T0).await.unwrap();
    assert_eq!(rolled_back.state.share_bp, 0, "the check that straddled the override changed nothing");
}

#[tokio::test]
async fn a_policy_the_statistics_refuse_leaves_no_trace() {
    // The Start record and state were written before the statistics
    // refused `max_increase_ms: 1e306` (inf µs); the next start then failed for everyone.
    let dir = TempDir::new();
    let (clock, _) = stepped_clock(T0);
    let engine = engine(&dir, vec!["http://127.0.0.1:1".into()], clock);
    let bad = statistics_refused("checkout");
    let refused = engine.register(bad, Actor::human("ci").unwrap(), T0).await.unwrap_err();
    assert!(matches!(refused, EngineError::InvalidPolicy(_)), "{refused}");
    assert!(refused.to_string().contains("tolerance"), "{refused}");
    assert!(engine.config("checkout").is_none());
    assert!(engine.audit("checkout").unwrap().is_empty());
    assert!(!dir.0.join(crate::audit::STATE_DIR).join("checkout.json").exists());
}

#[tokio::test]
async fn a_policy_on_the_meshs_metrics_is_refused_without_prometheus_and_leaves_no_trace() {
    let dir = TempDir::new();
    let (clock, _) = stepped_clock(T0);
    let engine = engine(&dir, vec!["http://127.0.0.1:1".into()], clock);
    let yaml = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: checkout}\n\
                spec:\n  deployment: checkout\n  source: {preset: envoy_cluster, canary: [c], control: [s]}\n";
    let policy = RolloutPolicy::from_yaml(yaml).unwrap();
    let refused = engine.register(policy, Actor::human("ci").unwrap(), T0).await.unwrap_err();
    assert!(matches!(refused, EngineError::InvalidPolicy(_)), "{refused}");
    assert!(refused.to_string().contains("start the analyzer with --prometheus"), "{refused}");
    assert!(engine.config("checkout").is_none());
    assert!(engine.audit("checkout").unwrap().is_empty());
}

#[tokio::test]
async fn a_rollout_that_cannot_be_rebuilt_does_not_stop_the_others() {
    let dir = TempDir::new();
    {
        // Written as an older analyzer would have: the store accepts what the statistics refuse.
        let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
        for policy in [policy("good", ""), statistics_refused("broken")] {
            let state = RolloutState::start(&policy, 0, T0);
            let start = Decision::start(&state, Actor::human("ci").unwrap(), "deploy");
            store.commit(T0, &policy, &start, None, &state).unwrap();
        }
    }
    let (clock, _) = stepped_clock(T0);
    let engine = engine(&dir, vec!["http://127.0.0.1:1".into()], clock);
    assert_eq!(engine.config("good").map(|c| c.share_bp), Some(100));
    assert_eq!(engine.config("broken").map(|c| c.share_bp), Some(100), "its last config is still served");
    let broken = engine.broken_rollouts();
    assert_eq!(broken.len(), 1);
    assert!(broken[0].starts_with("broken: cannot be rebuilt") && broken[0].contains("tolerance"), "{broken:?}");
    let status = engine.status("broken", T0).await.unwrap();
    assert!(status.problem.as_deref().is_some_and(|p| p.contains("tolerance")), "{:?}", status.problem);
    assert_eq!(engine.list(T0).await.len(), 2);
    engine.check_now("good").await.unwrap();
    // A human can still take the broken one back to 0 %.
    engine.override_rollout("broken", &OverrideAction::Rollback, &alice(), "policy broken", T0 + 5).await.unwrap();
    assert_eq!(engine.config("broken").map(|c| c.share_bp), Some(0));
    let records = AuditLog::read_all(&dir.0.join(AUDIT_FILE)).unwrap();
    assert_eq!(records.len(), 3);
}

#[tokio::test]
async fn a_step_waits_for_the_fleet_and_a_laggard_holds_the_promotion() {
    // The window starts when every proxy applies the step (or after the
    // fleet deadline), and a proxy still on an old generation holds the promotion.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    let policy = policy("checkout", "").with_fleet_deadline(Duration::from_secs(3));
    let registered = engine.register(policy, Actor::human("ci").unwrap(), T0).await.unwrap();
    let served = registered.config.generation;
    let (mut canary, mut control) = (0u64, 0u64);
    let mut check = |second: u64, generation: u64| {
        canary += 10;
        control += 990;
        envoy.serve_counts_and_gauges("checkout", canary, control, generation, 100);
        wall.store(T0 + second * 1_000, Ordering::SeqCst);
    };
    // The proxy is stuck on an older generation for 30 s: windows run after the 3 s deadline,
    // but nothing is promoted.
    for second in 1..=30 {
        check(second, served - 1);
        engine.check_now("checkout").await.unwrap();
    }
    let status = engine.status("checkout", T0 + 30_000).await.unwrap();
    assert_eq!(status.config.share_bp, 100, "held by the laggard");
    let fleet = status.fleet.expect("the fleet view");
    assert_eq!((fleet.proxies, fleet.on_generation, fleet.generation), (1, 0, served));
    assert!(fleet.summary().contains("lagging:") && fleet.summary().contains(&envoy.url()), "{}", fleet.summary());
    // It catches up: promoted within a window's worth of checks.
    let mut promoted_at = None;
    for second in 31..=50 {
        check(second, served);
        engine.check_now("checkout").await.unwrap();
        if engine.config("checkout").unwrap().share_bp == 500 {
            promoted_at = Some(second);
            break;
        }
    }
    assert!(promoted_at.is_some(), "promoted once the proxy applied the step");
    let audit = engine.audit("checkout").unwrap();
    assert!(audit.last().unwrap().decision.reason.contains("promoting to 5 %"), "{:?}", audit.last());
}

#[tokio::test]
async fn a_step_without_enough_traffic_is_reported_stalled_and_never_promoted() {
    // After `stall_after_windows` windows short of data, status says so.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    let policy = policy("checkout", "").with_stall_after_windows(2);
    engine.register(policy, Actor::human("ci").unwrap(), T0).await.unwrap();
    // One canary request a second: 20 needed per window of 10 s, never there at 1 %.
    for second in 1..=19 {
        envoy.serve_counts(&[("checkout", second, second * 99)]);
        wall.store(T0 + second * 1_000, Ordering::SeqCst);
        engine.check_now("checkout").await.unwrap();
    }
    assert_eq!(engine.status("checkout", T0).await.unwrap().stalled, None, "not yet two windows");
    envoy.serve_counts(&[("checkout", 20, 20 * 99)]);
    wall.store(T0 + 20_000, Ordering::SeqCst);
    engine.check_now("checkout").await.unwrap();
    let status = engine.status("checkout", T0 + 20_000).await.unwrap();
    let stalled = status.stalled.clone().expect("stalled after two windows");
    assert!(stalled.starts_with("stalled after 2 windows") && stalled.contains("per cohort needed"), "{stalled}");
    assert_eq!(status.config.share_bp, 100);
    assert!(crate::cli::status_text(&status).contains("STALLED: stalled after 2 windows"));
}

/// Cumulative `cache_hit` counters of one deployment, appended to what the stub serves.
fn append_cache_hits(envoy: &StubEnvoy, deployment: &str, canary: (u64, u64), control: (u64, u64)) {
    let mut answer = envoy.answer.lock().unwrap();
    for (cohort, (requests, hits)) in [("canary", canary), ("control", control)] {
        let labels = format!("deployment=\"{deployment}\",cohort=\"{cohort}\",outcome=\"cache_hit\"");
        answer.1.push_str(&format!(
            "canary_outcome_requests_total{{{labels}}} {requests}\ncanary_outcome_events_total{{{labels}}} {hits}\n"
        ));
    }
}

/// One second of a 1 % share of 10 000 requests a second in which the canary hits the
/// cache 60 % of the time and control 90 %, then a check.
async fn check_a_fallen_hit_rate(engine: &Engine, envoy: &StubEnvoy, wall: &AtomicU64, second: u64) {
    let (canary, control) = (100 * second, 9_900 * second);
    envoy.serve_counts(&[("checkout", canary, control)]);
    append_cache_hits(envoy, "checkout", (canary, 60 * second), (control, 8_910 * second));
    wall.store(T0 + second * 1_000, Ordering::SeqCst);
    engine.check_now("checkout").await.unwrap();
}

const CACHE_HIT: &str =
    "    - {name: cache_hit, outcome: cache_hit, direction: lower_is_worse, max_relative_decrease: 0.1}\n";

#[tokio::test]
async fn an_outcome_no_proxy_exports_has_no_data_holds_promotion_and_is_named() {
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(policy("checkout", CACHE_HIT), Actor::human("ci").unwrap(), T0).await.unwrap();
    let fresh = engine.status("checkout", T0).await.unwrap();
    assert!(fresh.missing_outcomes.is_empty(), "nothing is missing before the first check");
    // 20 s of healthy traffic, twice the first step's window, without outcome counters.
    for second in 1..=20u64 {
        envoy.serve_counts(&[("checkout", 10 * second, 990 * second)]);
        wall.store(T0 + second * 1_000, Ordering::SeqCst);
        engine.check_now("checkout").await.unwrap();
    }
    let status = engine.status("checkout", T0 + 20_000).await.unwrap();
    assert_eq!(status.config.share_bp, 100, "held at the first step: {:?}", status.state);
    assert_eq!(status.missing_outcomes, ["cache_hit"]);
    let row = status.rows.iter().find(|r| r.metric == "cache_hit").expect("a cache_hit row");
    assert_eq!((row.canary, row.control, row.p_value, row.verdict), (None, None, None, Verdict::NotEnoughData));
    let error_rate = status.rows.iter().find(|r| r.metric == "error_rate").unwrap();
    assert_ne!(error_rate.verdict, Verdict::NotEnoughData, "the other metrics had data");
    assert_eq!(engine.audit("checkout").unwrap().len(), 1, "only the start: no promotion");
}

#[tokio::test]
async fn a_fallen_hit_rate_rolls_back_naming_the_outcome() {
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(policy("checkout", CACHE_HIT), Actor::human("ci").unwrap(), T0).await.unwrap();
    for second in 1..=10u64 {
        check_a_fallen_hit_rate(&engine, &envoy, &wall, second).await;
        if engine.config("checkout").unwrap().state != canary_core::RolloutPhase::Progressing {
            break;
        }
    }
    let status = engine.status("checkout", T0 + 10_000).await.unwrap();
    assert_eq!(status.state.phase, canary_core::RolloutPhase::RolledBack, "{:#?}", status.rows);
    assert!(status.missing_outcomes.is_empty());
    let rollback = engine.audit("checkout").unwrap().pop().unwrap();
    assert!(rollback.decision.reason.contains("cache_hit"), "{}", rollback.decision.reason);
    let row = rollback.decision.rows.iter().find(|r| r.metric == "cache_hit").unwrap();
    assert_eq!((row.canary, row.control, row.verdict), (Some(0.6), Some(0.9), Verdict::Worse));
    assert!(row.p_value.is_some_and(|p| p <= 0.05) && row.interval.is_some(), "{row:?}");
}

/// `policy` with its metric `from` renamed `to`, as a policy read back from a state file or
/// an audit record may be named: `from_yaml` refuses names of built-in rows, serde does not.
fn renamed(mut policy: RolloutPolicy, from: &str, to: &str) -> RolloutPolicy {
    for metric in &mut policy.metrics {
        if let crate::policy::Metric::Outcome(outcome) = &mut metric.metric
            && outcome.name == from
        {
            outcome.name = to.to_string();
        }
    }
    let read_back: RolloutPolicy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
    assert_eq!(read_back, policy, "the renamed policy is one a state file can hold");
    read_back
}

#[tokio::test]
async fn a_critical_outcome_named_like_the_non_success_row_holds_while_no_proxy_exports_it() {
    // Matched by name, the built-in `non_success_rate` row (which had data) stood in for the
    // outcome's (which had none): the rollout climbed to 100 % on no data.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    let policy = renamed(policy("checkout", CACHE_HIT), "cache_hit", "non_success_rate");
    engine.register(policy, Actor::human("ci").unwrap(), T0).await.unwrap();
    // 60 s of healthy traffic: six windows, enough to climb the whole ladder.
    for second in 1..=60u64 {
        envoy.serve_counts(&[("checkout", 100 * second, 9_900 * second)]);
        wall.store(T0 + second * 1_000, Ordering::SeqCst);
        engine.check_now("checkout").await.unwrap();
    }
    let status = engine.status("checkout", T0 + 60_000).await.unwrap();
    assert_eq!(status.config.share_bp, 100, "held at the first step: {:?}", status.state);
    let rows: Vec<_> = status.rows.iter().filter(|r| r.metric == "non_success_rate").collect();
    assert_eq!(rows.len(), 2, "the built-in row and the outcome's: {rows:?}");
    assert!(rows.iter().any(|r| r.verdict == Verdict::NotEnoughData), "{rows:?}");
    assert_eq!(engine.audit("checkout").unwrap().len(), 1, "only the start: no promotion");
}

#[tokio::test]
async fn a_non_critical_outcome_named_like_a_latency_row_never_rolls_back() {
    // Matched by name, the outcome's Worse row counted as the critical `latency_p99_us`:
    // a rollback "critical metric worse" on a metric the policy marked non-critical.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    let extra =
        format!("    - {{name: latency_p99, max_increase_ms: 50}}\n{}", CACHE_HIT.replace('}', ", critical: false}"));
    let policy = renamed(policy("checkout", &extra), "cache_hit", "latency_p99_us");
    engine.register(policy, Actor::human("ci").unwrap(), T0).await.unwrap();
    // The canary's hits fall from 90 % to 60 %, as in `a_fallen_hit_rate_rolls_back_naming_the_outcome`.
    for second in 1..=10u64 {
        check_a_fallen_hit_rate(&engine, &envoy, &wall, second).await;
    }
    let status = engine.status("checkout", T0 + 10_000).await.unwrap();
    assert_eq!(status.state.phase, canary_core::RolloutPhase::Progressing, "{:?}", engine.audit("checkout"));
    let outcome = status.rows.iter().find(|r| r.metric == "latency_p99_us" && r.verdict == Verdict::Worse);
    assert!(outcome.is_some(), "the outcome's own row is worse: {:#?}", status.rows);
    assert_eq!(engine.audit("checkout").unwrap().len(), 1, "only the start: no rollback");
}

/// An analyzer restored from a backup taken right after registration, while every proxy
/// (the stub) holds what the lost analyzer served two promotions later. Returns the
/// restored engine, the config the proxies hold, and the wall clock.
async fn restored_behind_the_fleet(
    live: &TempDir,
    backup: &TempDir,
    envoy: &StubEnvoy,
) -> (Arc<Engine>, RolloutConfig, Arc<AtomicU64>) {
    let (clock, wall) = stepped_clock(T0);
    let lost = engine(live, vec![envoy.url()], Arc::clone(&clock));
    lost.register(policy("checkout", ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    {
        // The backup: the registration's record and state, as the store wrote them.
        let (mut store, _) = RolloutStore::open(&backup.0).unwrap();
        let state = RolloutState::start(&policy("checkout", ""), 0, T0);
        store
            .commit(
                T0,
                &policy("checkout", ""),
                &Decision::start(&state, Actor::human("ci").unwrap(), "deploy"),
                None,
                &state,
            )
            .unwrap();
    }
    for second in 1..=2 {
        lost.override_rollout("checkout", &OverrideAction::Promote, &alice(), "looks fine", T0 + second * 1_000)
            .await
            .unwrap();
    }
    let held = lost.config("checkout").unwrap();
    assert_eq!(held.share_bp, 2_500);
    drop(lost);
    let restored = engine(backup, vec![envoy.url()], clock);
    let served = restored.config("checkout").unwrap();
    assert_eq!((served.generation, served.share_bp), (held.generation - 2, 100), "the backup's state");
    assert!(
        matches!(canary_core::rollout::merge(Some(&held), &served), canary_core::rollout::Merge::Ignored { .. }),
        "the proxies ignore what the restored analyzer serves"
    );
    (restored, held, wall)
}

/// Whether a proxy holding `held` applies `served` (the filter's own acceptance rule).
fn applies(held: &RolloutConfig, served: &RolloutConfig) -> bool {
    canary_core::rollout::merge(Some(held), served) == canary_core::rollout::Merge::Applied
}

#[tokio::test]
async fn an_analyzer_restored_behind_the_fleet_serves_above_it_and_a_rollback_reaches_the_proxies() {
    let (live, backup, envoy) = (TempDir::new(), TempDir::new(), StubEnvoy::start().await);
    let (engine, held, wall) = restored_behind_the_fleet(&live, &backup, &envoy).await;
    // The first check sees every proxy on the lost generation.
    envoy.serve_counts_and_gauges("checkout", 0, 0, held.generation, held.share_bp);
    wall.store(T0 + 10_000, Ordering::SeqCst);
    engine.check_now("checkout").await.unwrap();
    let served = engine.config("checkout").unwrap();
    assert!(applies(&held, &served), "the proxies take the restored state: {served:?} over {held:?}");
    assert_eq!((served.generation, served.share_bp), (held.generation + 1, 100));
    let resync = engine.audit("checkout").unwrap().pop().unwrap();
    assert_eq!(serde_json::to_value(resync.decision.action).unwrap()["kind"], "resync");
    assert!(resync.decision.reason.contains(&format!("proxies apply generation {}", held.generation)));
    assert_eq!(
        (resync.after.generation, resync.after.share_bp, resync.decision.actor),
        (served.generation, 100, Actor::Analyzer)
    );
    // A rollback goes above it, so it reaches them at once.
    engine.override_rollout("checkout", &OverrideAction::Rollback, &alice(), "bad build", T0 + 11_000).await.unwrap();
    let rolled_back = engine.config("checkout").unwrap();
    assert!(applies(&held, &rolled_back) && rolled_back.share_bp == 0, "{rolled_back:?}");
}

#[tokio::test]
async fn an_automatic_rollback_after_a_restore_reaches_proxies_on_a_later_generation() {
    let (live, backup, envoy) = (TempDir::new(), TempDir::new(), StubEnvoy::start().await);
    let (engine, held, wall) = restored_behind_the_fleet(&live, &backup, &envoy).await;
    // The proxies route 25 % and never see anything newer; the canary fails a third of its requests.
    for second in 1..=30u64 {
        let (canary, control) = (2_500 * second, 7_500 * second);
        envoy.serve_counts_and_gauges("checkout", canary, control, held.generation, held.share_bp);
        envoy.answer.lock().unwrap().1.push_str(&format!(
            "canary_requests_total{{deployment=\"checkout\",cohort=\"canary\",class=\"5xx\"}} {}\n",
            canary / 3
        ));
        wall.store(T0 + 10_000 + second * 1_000, Ordering::SeqCst);
        engine.check_now("checkout").await.unwrap();
        if engine.config("checkout").unwrap().share_bp == 0 {
            break;
        }
    }
    let served = engine.config("checkout").unwrap();
    assert_eq!(served.state, canary_core::RolloutPhase::RolledBack, "{:#?}", engine.audit("checkout"));
    assert!(applies(&held, &served), "the rollback reaches the proxies: {served:?} over {held:?}");
}

#[tokio::test]
async fn a_rollout_a_restored_store_does_not_know_is_registered_above_what_the_proxies_hold() {
    // The backup predates the rollout (an empty state directory): the restored analyzer serves nothing for it.
    let (live, backup, envoy) = (TempDir::new(), TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let lost = engine(&live, vec![envoy.url()], Arc::clone(&clock));
    lost.register(policy("checkout", ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    lost.override_rollout("checkout", &OverrideAction::Promote, &alice(), "fine", T0 + 1_000).await.unwrap();
    let held = lost.config("checkout").unwrap();
    drop(lost);
    let restored = engine(&backup, vec![envoy.url()], clock);
    assert!(restored.config("checkout").is_none());
    // Registered again on a host whose clock is an hour behind: its generation starts below theirs...
    let behind = T0 - 3_600_000;
    wall.store(behind, Ordering::SeqCst);
    restored.register(policy("checkout", ""), Actor::human("ci").unwrap(), behind).await.unwrap();
    assert!(!applies(&held, &restored.config("checkout").unwrap()));
    // ...and its first check, seeing the proxies, goes above it.
    envoy.serve_counts_and_gauges("checkout", 0, 0, held.generation, held.share_bp);
    wall.store(behind + 1_000, Ordering::SeqCst);
    restored.check_now("checkout").await.unwrap();
    let served = restored.config("checkout").unwrap();
    assert!(applies(&held, &served) && served.share_bp == 100, "{served:?} over {held:?}");
}

#[tokio::test]
async fn a_finished_rollout_is_not_served_over_a_later_one_but_the_next_starts_above_it() {
    // Restored: the rollout ended rolled back. The proxies hold a later rollout the restored
    // analyzer never saw (25 %): it is not forced back, and the next registration goes above it.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(policy("checkout", ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    engine.override_rollout("checkout", &OverrideAction::Rollback, &alice(), "bad", T0 + 1_000).await.unwrap();
    let ended = engine.config("checkout").unwrap();
    let later = ended.generation + 5_000_000;
    envoy.serve_counts_and_gauges("checkout", 0, 0, later, 2_500);
    wall.store(T0 + 2_000, Ordering::SeqCst);
    engine.check_now("checkout").await.unwrap();
    assert_eq!(engine.config("checkout").unwrap(), ended, "nothing re-served");
    assert_eq!(engine.audit("checkout").unwrap().len(), 2);
    let status = engine.status("checkout", T0 + 2_000).await.unwrap();
    assert_eq!(status.fleet.and_then(|fleet| fleet.ahead()), Some(later));
    let again = engine.register(policy("checkout", ""), Actor::human("ci").unwrap(), T0 + 3_000).await.unwrap();
    assert!(again.config.generation > later, "{} <= {later}", again.config.generation);
}

#[tokio::test]
async fn a_generation_no_analyzer_could_have_served_is_not_followed() {
    // A garbage gauge (u64::MAX) must not lift the served generation to where it can grow no more.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(policy("checkout", ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    envoy.serve_counts_and_gauges("checkout", 0, 0, u64::MAX, 100);
    wall.store(T0 + 1_000, Ordering::SeqCst);
    engine.check_now("checkout").await.unwrap();
    assert_eq!(engine.config("checkout").unwrap().generation, T0);
    engine.override_rollout("checkout", &OverrideAction::Rollback, &alice(), "bad", T0 + 2_000).await.unwrap();
    assert_eq!(engine.config("checkout").unwrap().generation, T0 + 1, "decisions still move it");
}
