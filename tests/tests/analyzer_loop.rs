//! The whole loop against the real Envoy: the filter routes and counts, the analyzer
//! (the real binary) scrapes Envoy's admin endpoint, compares, decides, writes the
//! audit log and serves the share the filter polls.

use canary_analyzer::audit::AuditRecord;
use canary_analyzer::engine::RolloutStatus;
use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, TestPolicy, analyzer_binary, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::rig::Rig;
use canary_e2e::upstream::{Behaviour, Upstream};
use canary_e2e::webhook::WebhookReceiver;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "e2e-token";
/// The filter polls every 500 ms in these tests; the analyzer checks every second.
const POLL_MS: u64 = 500;

struct Loop {
    webhook: WebhookReceiver,
    stable: Upstream,
    canary: Upstream,
    envoy: Envoy,
    analyzer: AnalyzerProcess,
    load: Load,
}

/// A policy for the shipped deployment `demo` with second-long windows.
fn policy(dir: &std::path::Path, ladder: &[(f64, &str)], min_requests: u32) -> PathBuf {
    let more_spec = "  metrics:\n    - {name: error_rate, max_relative_increase: 0, critical: true}\n    \
                     - {name: latency_p99, max_increase_ms: 50, critical: true}\n    \
                     - {name: sample_ratio, critical: false}\n";
    TestPolicy { name: "e2e", deployment: "demo", ladder, min_requests_per_cohort: min_requests, more_spec }
        .write(dir, "policy.yaml")
}

impl Loop {
    async fn start(name: &str, ladder: &[(f64, &str)], min_requests: u32, rps: u32) -> Loop {
        let dir = fresh_dir(name);
        let policy = policy(&dir, ladder, min_requests);
        let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
        let analyzer_port = free_port();
        let mut config =
            EnvoyConfig::shipped(stable.addr, canary.addr, SocketAddr::from(([127, 0, 0, 1], analyzer_port)));
        config.edit_plugin_config(|json| {
            json["analyzer"]["poll_interval_ms"] = POLL_MS.into();
            json["analyzer"]["timeout_ms"] = 250.into();
        });
        let envoy = Envoy::start(&config, 2).await;
        let webhook = WebhookReceiver::start().await;
        let mut options = AnalyzerOptions::new(dir.join("state"));
        options.extra_args = vec!["--webhook".into(), webhook.url()];
        options.policies = vec![policy];
        options.envoy_admin = vec![format!("http://{}", envoy.admin)];
        options.token = Some(TOKEN.into());
        options.port = Some(analyzer_port);
        let analyzer = AnalyzerProcess::start(options).await;
        let load = Load::start(envoy.listener, LoadOptions { rps, users: 4_000, ..LoadOptions::default() });
        Loop { webhook, stable, canary, envoy, analyzer, load }
    }

    async fn status(&self) -> RolloutStatus {
        self.analyzer.status("demo").await
    }

    async fn audit(&self) -> Vec<AuditRecord> {
        self.analyzer.audit("demo").await
    }

    /// Polls the status until `done`, returning the shares seen on the way.
    async fn until(&self, limit: Duration, done: impl Fn(&RolloutStatus) -> bool) -> (RolloutStatus, Vec<u32>) {
        self.analyzer.until("demo", limit, Duration::from_millis(100), done).await
    }

    /// Envoy routes probe users exactly as the native function says at `share_bp`.
    async fn envoy_routes_at(&self, share_bp: u32) -> bool {
        Rig::envoy_routes_at(self.envoy.listener, share_bp).await
    }

    async fn wait_for_envoy(&self, share_bp: u32) {
        let start = Instant::now();
        while !self.envoy_routes_at(share_bp).await {
            assert!(start.elapsed() < Duration::from_secs(5), "Envoy never followed the share {share_bp}");
        }
    }

    fn cli(&self, args: &[&str], token: Option<&str>) -> std::process::Output {
        let mut command = std::process::Command::new(analyzer_binary());
        command.args(args).env("CANARY_ANALYZER_URL", self.analyzer.url()).env_remove("CANARY_ANALYZER_TOKEN");
        if let Some(token) = token {
            command.env("CANARY_ANALYZER_TOKEN", token);
        }
        command.output().expect("run canary-analyzer")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_every_step_and_envoy_follows() {
    let lp = Loop::start("healthy", &[(5.0, "4s"), (25.0, "4s"), (50.0, "4s"), (100.0, "4s")], 20, 150).await;
    let wait = tokio::task::spawn_blocking({
        let (bin, url) = (analyzer_binary(), lp.analyzer.url());
        move || std::process::Command::new(bin).args(["wait", "demo", "--timeout", "120", "--server", &url]).output()
    });
    let mut seen = Vec::new();
    let start = Instant::now();
    loop {
        let status = lp.status().await;
        let share = status.state.share_bp;
        if seen.last() != Some(&share) {
            // Each step: Envoy routes at the analyzer's share within a few poll intervals.
            lp.wait_for_envoy(share).await;
            seen.push(share);
        }
        if status.state.phase == RolloutPhase::Promoted {
            break;
        }
        assert_ne!(status.state.phase, RolloutPhase::RolledBack, "healthy canary rolled back: {:#?}", status.rows);
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not promoted in 120 s: {status:#?}\n{}",
            lp.analyzer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, [500, 2_500, 5_000, 10_000], "every step, in order");
    let output = wait.await.unwrap().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "wait exits 0 when promoted: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let actions: Vec<String> = lp.audit().await.iter().map(|r| format!("{:?}", r.decision.action)).collect();
    assert_eq!(actions.len(), 4, "start + three promotions: {actions:?}");
    // One Slack-compatible status update per step: start, then each promotion.
    let posted = Instant::now();
    while lp.webhook.received().len() < 4 && posted.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let updates = lp.webhook.received();
    let texts: Vec<&str> = updates.iter().filter_map(|u| u["text"].as_str()).collect();
    assert_eq!(texts.len(), 4, "{updates:#?}");
    for share in ["5.00 %", "25.00 %", "50.00 %", "100.00 %"] {
        assert!(texts.iter().any(|t| t.contains("demo") && t.contains(share)), "no update at {share}: {texts:#?}");
    }
    assert!(updates.iter().all(|u| u["blocks"].is_array()), "Slack blocks");
    let stats = lp.load.stats();
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert!(stats.canary > 0 && stats.stable > 0, "{stats:?}");
    drop((lp.stable, lp.canary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_5_percent_is_rolled_back_and_envoy_goes_to_0() {
    let lp = Loop::start("failing", &[(25.0, "120s"), (100.0, "1s")], 20, 150).await;
    lp.canary.set_behaviour(Behaviour { fail_fraction: 0.05, ..Behaviour::default() });
    let (status, shares) = lp.until(Duration::from_secs(90), |s| s.state.phase != RolloutPhase::Progressing).await;
    assert_eq!(status.state.phase, RolloutPhase::RolledBack, "{status:#?}");
    assert_eq!(shares, [2_500, 0]);
    let audit = lp.audit().await;
    let rollback = audit.last().unwrap();
    assert_eq!(format!("{:?}", rollback.decision.action), "Rollback");
    let error_row = rollback.decision.rows.iter().find(|r| r.metric == "error_rate").expect("rows in the audit record");
    assert_eq!(format!("{:?}", error_row.verdict), "Worse", "{error_row:?}");
    assert!(error_row.canary.unwrap() > error_row.control.unwrap());
    // Envoy at 0 % within one check interval (1 s) of the decision.
    let decided = rollback.at_ms;
    loop {
        if lp.envoy_routes_at(0).await {
            break;
        }
        let now = canary_analyzer::engine::now_ms();
        assert!(now - decided <= 1_000, "Envoy still routes to canary {} ms after the rollback", now - decided);
    }
    let elapsed = canary_analyzer::engine::now_ms() - decided;
    assert!(elapsed <= 1_000, "Envoy reached 0 % {elapsed} ms after the decision");
    let wait = lp.cli(&["wait", "demo", "--timeout", "10"], None);
    assert_eq!(wait.status.code(), Some(1), "wait exits 1 when rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_analyzer_resumes_the_same_step_without_losing_or_repeating_audit_lines() {
    let mut lp = Loop::start("restart", &[(5.0, "3s"), (25.0, "600s"), (100.0, "1s")], 20, 150).await;
    let (before, _) = lp.until(Duration::from_secs(60), |s| s.state.share_bp == 2_500).await;
    lp.wait_for_envoy(2_500).await;
    let audit_before = lp.audit().await;
    lp.analyzer.kill_hard();
    assert!(!lp.analyzer.is_running());
    // The filter keeps the last good share while the analyzer is down.
    tokio::time::sleep(Duration::from_millis(3 * POLL_MS)).await;
    assert!(lp.envoy_routes_at(2_500).await, "share kept while the analyzer is down");
    let options = lp.analyzer.options.clone();
    lp.analyzer = AnalyzerProcess::start(options).await;
    let after = lp.status().await;
    assert_eq!(
        (after.state.step, after.state.share_bp, after.state.generation),
        (before.state.step, 2_500, before.state.generation)
    );
    assert_eq!(after.state.step_started_at_ms, before.state.step_started_at_ms, "the same step, not a new one");
    // The evidence measured before the kill is back before any new check has data.
    let error_rate = after.rows.iter().find(|r| r.metric == "error_rate").expect("evidence restored");
    assert_ne!(format!("{:?}", error_rate.verdict), "NotEnoughData", "{error_rate:?}");
    let audit_after = lp.audit().await;
    assert_eq!(audit_after, audit_before, "no audit line lost or duplicated");
    let sequences: Vec<u64> = audit_after.iter().map(|r| r.sequence).collect();
    assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1), "{sequences:?}");
    // It goes on deciding: an override after the restart gets the next sequence number.
    let out = lp.cli(&["override", "demo", "promote", "--reason", "resume check", "--actor", "carol"], Some(TOKEN));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = lp.audit().await.last().cloned().unwrap();
    assert_eq!(last.sequence, sequences.last().unwrap() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_need_the_token_and_a_reason_and_are_logged() {
    let lp = Loop::start("override", &[(5.0, "600s"), (25.0, "600s"), (100.0, "1s")], 20, 50).await;
    let refused = lp.cli(&["override", "demo", "promote", "--reason", "ship it"], None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{}", String::from_utf8_lossy(&refused.stderr));
    let wrong = lp.cli(&["override", "demo", "promote", "--reason", "ship it"], Some("guess"));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    assert!(lp.analyzer.log_text().contains("unauthorized"), "refusals are logged");
    let empty = lp.cli(&["override", "demo", "promote", "--reason", "  "], Some(TOKEN));
    assert!(!empty.status.success(), "an empty reason is refused");
    let ok = lp.cli(
        &["override", "demo", "set-share", "--share", "12.5", "--reason", "more data", "--actor", "dana"],
        Some(TOKEN),
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let (status, _) = lp.until(Duration::from_secs(5), |s| s.state.share_bp == 1_250).await;
    assert_eq!(status.config.share_bp, 1_250);
    lp.wait_for_envoy(1_250).await;
    let last = lp.audit().await.last().cloned().unwrap();
    // `--token` is one admin named `token`; `--actor` is kept as a note, never as the identity.
    assert_eq!((last.decision.reason.as_str(), last.decision.actor.name()), ("more data", "token"));
    assert_eq!(last.decision.actor_note.as_deref(), Some("dana"));
    assert_eq!(lp.audit().await.len(), 2, "start + the one accepted override");
}
