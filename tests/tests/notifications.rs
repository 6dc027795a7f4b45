//! The lifecycle and the notifications against the real Envoy and the real analyzer
//! binary: a rollout registered held keeps Envoy at 0 % until the pipeline marks the
//! canary deployed, and a rollback reaches a Teams-format and a generic-format webhook
//! (local receivers) with its reason, while a target that did not ask for it gets nothing.

use canary_analyzer::engine::RolloutStatus;
use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, analyzer_binary, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::rig::Rig;
use canary_e2e::upstream::{Behaviour, Upstream};
use canary_e2e::webhook::WebhookReceiver;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: &str = "e2e-token";

struct Rollout {
    stable: Upstream,
    canary: Upstream,
    envoy: Envoy,
    analyzer: AnalyzerProcess,
    policy: PathBuf,
    _load: Load,
}

/// The shipped deployment `demo`: 25 % for 120 s, then 100 %; error_rate critical with no tolerance.
fn policy(dir: &Path) -> PathBuf {
    let text = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: e2e}\nspec:\n  \
                deployment: demo\n  ladder:\n    - {share: 25, window: 120s}\n    - {share: 100, window: 1s}\n  \
                check_interval: 1s\n  min_requests_per_cohort: 20\n  metrics:\n    \
                - {name: error_rate, max_relative_increase: 0, critical: true}\n";
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Rollout {
    /// Envoy, the analyzer with `webhooks` (`--webhook` values) and load; the policy
    /// registered at start unless `registered_by_test`.
    async fn start(name: &str, webhooks: &[String], registered_by_test: bool) -> Rollout {
        let dir = fresh_dir(name);
        let policy = policy(&dir);
        let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
        let analyzer_port = free_port();
        let mut config =
            EnvoyConfig::shipped(stable.addr, canary.addr, SocketAddr::from(([127, 0, 0, 1], analyzer_port)));
        config.edit_plugin_config(|json| {
            json["analyzer"]["poll_interval_ms"] = 500.into();
            json["analyzer"]["timeout_ms"] = 250.into();
        });
        let envoy = Envoy::start(&config, 2).await;
        let mut options = AnalyzerOptions::new(dir.join("state"));
        options.extra_args = webhooks.iter().flat_map(|w| ["--webhook".to_string(), w.clone()]).collect();
        options.extra_args.extend(["--public-url".to_string(), "https://canary.example.com".to_string()]);
        if !registered_by_test {
            options.policies = vec![policy.clone()];
        }
        options.envoy_admin = vec![format!("http://{}", envoy.admin)];
        options.token = Some(TOKEN.into());
        options.port = Some(analyzer_port);
        let analyzer = AnalyzerProcess::start(options).await;
        let load = Load::start(envoy.listener, LoadOptions { rps: 150, users: 4_000, ..LoadOptions::default() });
        Rollout { stable, canary, envoy, analyzer, policy, _load: load }
    }

    async fn until(&self, limit: Duration, done: impl Fn(&RolloutStatus) -> bool) -> RolloutStatus {
        self.analyzer.until("demo", limit, Duration::from_millis(100), done).await.0
    }

    /// Envoy routes probe users exactly as the native function says at `share_bp`.
    async fn envoy_routes_at(&self, share_bp: u32) -> bool {
        Rig::envoy_routes_at(self.envoy.listener, share_bp).await
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(analyzer_binary())
            .args(args)
            .env("CANARY_ANALYZER_URL", self.analyzer.url())
            .env("CANARY_ANALYZER_TOKEN", TOKEN)
            .output()
            .expect("run canary-analyzer")
    }
}

/// Waits until `receiver` has a body that `matches`, and returns it.
async fn posted(
    receiver: &WebhookReceiver,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(body) = receiver.received().into_iter().find(|body| matches(body)) {
            return body;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no {what}: {:#?}", receiver.received());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_registered_held_keeps_envoy_at_0_until_the_canary_is_marked_deployed() {
    let rollout = Rollout::start("held", &[], true).await;
    let policy = rollout.policy.to_str().unwrap().to_string();
    let register = rollout.cli(&["register", &policy, "--start-held"]);
    assert!(register.status.success(), "{}", String::from_utf8_lossy(&register.stderr));
    let status = rollout.until(Duration::from_secs(5), |s| s.last_check_ms.is_some()).await;
    assert_eq!((status.state.phase, status.state.share_bp), (RolloutPhase::Pending, 0));
    // Every probe user, the 25 % step's canary users included, is on stable while it is held.
    let start = Instant::now();
    while !rollout.envoy_routes_at(0).await {
        assert!(start.elapsed() < Duration::from_secs(5), "Envoy never routed everyone to stable");
    }
    // Two more checks ran: nothing started the ladder.
    let first_check = status.last_check_ms.unwrap_or_default();
    let later = rollout.until(Duration::from_secs(5), |s| s.last_check_ms >= Some(first_check + 2_000)).await;
    assert_eq!((later.state.phase, later.state.share_bp), (RolloutPhase::Pending, 0));
    assert!(rollout.envoy_routes_at(0).await, "still 0 % two checks later");
    let watch = rollout.cli(&["status", "demo"]);
    let text = String::from_utf8_lossy(&watch.stdout);
    assert!(text.contains("pending at 0.00 %"), "{text}");
    assert!(text.contains("held: held at 0 % until the pipeline deploys the canary and marks it deployed"), "{text}");
    assert!(text.contains("`canary-analyzer deployed demo`"), "{text}");

    let deployed = rollout.cli(&["deployed", "demo"]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let status = rollout.until(Duration::from_secs(5), |s| s.state.share_bp == 2_500).await;
    assert_eq!(status.state.phase, RolloutPhase::Progressing);
    let start = Instant::now();
    while !rollout.envoy_routes_at(2_500).await {
        assert!(start.elapsed() < Duration::from_secs(5), "Envoy never followed the 25 % step");
    }
    drop((rollout.stable, rollout.canary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_reaches_a_teams_and_a_generic_webhook_with_its_reason() {
    let (teams, generic, discord) =
        (WebhookReceiver::start().await, WebhookReceiver::start().await, WebhookReceiver::start().await);
    let webhooks = [
        format!("teams:rollback:{}", teams.url()),
        format!("json:all:{}", generic.url()),
        format!("discord:promotion:{}", discord.url()),
    ];
    let rollout = Rollout::start("notified", &webhooks, false).await;
    rollout.canary.set_behaviour(Behaviour { fail_fraction: 0.05, ..Behaviour::default() });
    let status = rollout.until(Duration::from_secs(90), |s| s.state.phase != RolloutPhase::Progressing).await;
    assert_eq!(status.state.phase, RolloutPhase::RolledBack, "{status:#?}");
    let reason = rollout.analyzer.audit("demo").await.last().unwrap().decision.reason.clone();
    assert!(reason.contains("error_rate"), "{reason}");

    let card = posted(&teams, "Teams card", |b| b["type"] == "message").await;
    assert_eq!(card["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
    let content = &card["attachments"][0]["content"];
    assert_eq!(content["type"], "AdaptiveCard");
    assert_eq!(content["body"][0]["text"], "wasm canary · demo: rollback → 0.00 %");
    assert_eq!(content["body"][1]["text"], reason.as_str());
    assert_eq!(content["actions"][0]["url"], "https://canary.example.com/rollouts/demo");
    assert_eq!(teams.received().len(), 1, "the Teams target asked for rollbacks only: {:#?}", teams.received());

    let event = posted(&generic, "generic rollback", |b| b["event"] == "rollback").await;
    assert_eq!(event["schema"], "canary.wasm.dev/notification/v1");
    assert_eq!((event["deployment"].as_str(), event["phase"].as_str()), (Some("demo"), Some("rolled_back")));
    assert_eq!((event["share_bp"].as_u64(), event["step"].as_u64()), (Some(0), Some(1)));
    assert_eq!(event["reason"], reason.as_str());
    let error_rate = event["rows"].as_array().unwrap().iter().find(|r| r["metric"] == "error_rate").expect("rows");
    assert_eq!((error_rate["verdict"].as_str(), error_rate["critical"].as_bool()), (Some("worse"), Some(true)));
    assert!(generic.received().iter().any(|b| b["event"] == "step"), "the start went to `all` too");
    assert!(discord.received().is_empty(), "no promotion, no post: {:#?}", discord.received());
    drop((rollout.stable, rollout.canary));
}
