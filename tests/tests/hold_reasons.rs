//! Why a rollout is held, against the real Envoy and the real analyzer binary: a
//! policy registered for a deployment no filter serves is flagged within the first
//! checks, naming the deployments the proxies do export, in the status (API and CLI),
//! the log and the webhook.

use canary_analyzer::engine::RolloutStatus;
use canary_analyzer::hold::HoldReason;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, analyzer_binary, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::upstream::Upstream;
use canary_e2e::webhook::WebhookReceiver;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A policy for `deployment`, checked every second, with `window` on its first step.
fn policy(dir: &std::path::Path, deployment: &str, window: &str, min_requests: u32) -> std::path::PathBuf {
    let text = format!(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: e2e}}\nspec:\n  \
         deployment: {deployment}\n  ladder:\n    - {{share: 10, window: {window}}}\n    - {{share: 100, window: 5m}}\n  \
         check_interval: 1s\n  min_requests_per_cohort: {min_requests}\n"
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The real Envoy with the filter serving `served`, the analyzer (posting to a webhook
/// receiver) running `policy_path` against its admin address, and steady load.
struct Setup {
    analyzer: AnalyzerProcess,
    webhook: WebhookReceiver,
    _load: Load,
    _envoy: Envoy,
    _upstreams: (Upstream, Upstream),
}

impl Setup {
    async fn start(dir: &std::path::Path, served: &str, policy_path: std::path::PathBuf, rps: u32) -> Setup {
        let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
        let analyzer_port = free_port();
        let analyzer_addr = SocketAddr::from(([127, 0, 0, 1], analyzer_port));
        let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, analyzer_addr);
        config.edit_plugin_config(|json| {
            json["deployment"] = served.into();
            json["analyzer"]["poll_interval_ms"] = 500.into();
            json["analyzer"]["timeout_ms"] = 250.into();
        });
        let envoy = Envoy::start(&config, 2).await;
        let webhook = WebhookReceiver::start().await;
        let mut options = AnalyzerOptions::new(dir.join("state"));
        options.extra_args = vec!["--webhook".into(), webhook.url()];
        options.policies = vec![policy_path];
        options.envoy_admin = vec![format!("http://{}", envoy.admin)];
        options.port = Some(analyzer_port);
        let analyzer = AnalyzerProcess::start(options).await;
        let load = Load::start(envoy.listener, LoadOptions { rps, users: 2_000, ..LoadOptions::default() });
        Setup { analyzer, webhook, _load: load, _envoy: envoy, _upstreams: (stable, canary) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_for_a_deployment_no_envoy_serves_is_held_naming_the_one_it_serves() {
    let dir = fresh_dir("hold-not-served");
    let Setup { analyzer, webhook, .. } = &Setup::start(&dir, "checkout", policy(&dir, "orders", "5m", 50), 50).await;

    let expected =
        HoldReason::NotServed { deployment: "orders".into(), proxies: 1, other_deployments: vec!["checkout".into()] };
    let (status, _) = analyzer
        .until("orders", Duration::from_secs(20), Duration::from_millis(100), |s| s.holds.contains(&expected))
        .await;
    assert!(
        status.history.len() <= 2,
        "flagged within the first two checks, not after {} checks: {status:#?}",
        status.history.len()
    );

    let wording = "no proxy serves deployment orders: the 1 proxy scraped export only checkout";
    let cli = std::process::Command::new(analyzer_binary())
        .args(["status", "orders"])
        .env("CANARY_ANALYZER_URL", analyzer.url())
        .output()
        .expect("run canary-analyzer status");
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(printed.contains(&format!("held: {wording}")), "status prints the hold reason:\n{printed}");

    let start = Instant::now();
    loop {
        let posts = webhook.received();
        let held = posts.iter().any(|post| post["text"].as_str().is_some_and(|t| t.contains(wording)));
        let logged = analyzer.log_text().contains(wording);
        if held && logged {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "webhook posted it: {held}, log has it: {logged}; posts {posts:#?}\nlog:\n{}",
            analyzer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posts = webhook.received();
    let announcements = posts.iter().filter(|p| p["text"].as_str().is_some_and(|t| t.contains(wording))).count();
    assert_eq!(announcements, 1, "said once, not at every check: {posts:#?}");
}

/// Waits for the canary's missing requests to be reported with a rate.
fn canary_missing_with_a_rate(status: &RolloutStatus) -> bool {
    status.window_remaining_s == Some(0)
        && status.holds.iter().any(|hold| {
            matches!(hold, HoldReason::RequestsMissing { cohort, rate_per_s: Some(rate), .. }
                if cohort == "canary" && *rate > 0.0)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_short_of_requests_says_how_many_the_canary_still_needs_and_when() {
    let dir = fresh_dir("hold-requests");
    // A 2 s window and far more requests per cohort than the load brings in the test.
    let policy_path = policy(&dir, "demo", "2s", 1_000_000);
    let Setup { analyzer, .. } = &Setup::start(&dir, "demo", policy_path, 100).await;

    let (status, _) =
        analyzer.until("demo", Duration::from_secs(30), Duration::from_millis(100), canary_missing_with_a_rate).await;
    assert_eq!(status.state.share_bp, 1_000, "held at the first step: {status:#?}");

    let cli = std::process::Command::new(analyzer_binary())
        .args(["status", "demo"])
        .env("CANARY_ANALYZER_URL", analyzer.url())
        .output()
        .expect("run canary-analyzer status");
    let printed = String::from_utf8_lossy(&cli.stdout);
    let line = printed.lines().find(|line| line.starts_with("held: canary needs ")).unwrap_or_else(|| {
        panic!("status names the canary's missing requests:\n{printed}");
    });
    assert!(line.contains("more requests (min_requests_per_cohort 1000000), ~") && line.contains("req/s"), "{line}");
}
