//! `make demo`: a canary rollout, live, on loopback. The shipped `envoy/envoy.yaml` as
//! is (listener :10000, admin :9901) with the filter; a stable and a canary version; the
//! real analyzer on :8080 with `analyzer/examples/demo-policy.yaml`; and a load generator
//! with 3 000 users (10 % anonymous) at 200 requests/s. Prints the rollout as it goes.
//!
//! `FAULT=errors` makes the canary fail 5 % of requests, `FAULT=latency` adds 80 ms to
//! each: the analyzer rolls it back and shows why. Ctrl-C stops everything it started.
//! `DEMO_POLICY=FILE` runs another policy for deployment `demo` (the tests use one with
//! second-long windows); `DEMO_EXIT=1` exits when the rollout ends instead of serving on.

use canary_analyzer::cli::report_table;
use canary_analyzer::engine::RolloutStatus;
use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::repo_root;
use canary_e2e::upstream::{Behaviour, Upstream};
use std::time::Duration;

/// Token the demo's analyzer accepts for overrides (printed, so you can try one).
const TOKEN: &str = "demo-token";

fn percent(bp: u32) -> String {
    format!("{}.{:02} %", bp / 100, bp % 100)
}

async fn status(http: &reqwest::Client, analyzer: &AnalyzerProcess) -> Option<RolloutStatus> {
    let response = http.get(format!("{}/v1/rollouts/demo", analyzer.url())).send().await.ok()?;
    response.json().await.ok()
}

/// Prints progress every 2 s until the rollout ends; returns the final status.
async fn watch(analyzer: &AnalyzerProcess, load: &Load) -> Option<RolloutStatus> {
    let http = reqwest::Client::new();
    let mut last_phase_line = String::new();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(s) = status(&http, analyzer).await else { continue };
        let stats = load.stats();
        let step = format!("step {}/{} at {}", s.state.step + 1, s.ladder_bp.len(), percent(s.state.share_bp));
        if step != last_phase_line {
            println!("\n== {step} (generation {})", s.state.generation);
            last_phase_line = step;
        }
        let key: Vec<String> = s
            .rows
            .iter()
            .filter(|r| ["error_rate", "latency_p99_us", "sample_ratio"].contains(&r.metric.as_str()))
            .map(|r| format!("{} {:?}", r.metric, r.verdict).to_lowercase())
            .collect();
        let next = s
            .window_remaining_s
            .map_or(String::new(), |w| format!(", next step in {}", canary_analyzer::present::duration_text(w)));
        println!(
            "   answered: stable {:>6}, canary {:>5} (errors {:>3}) | {}{next}",
            stats.stable,
            stats.canary,
            stats.errors,
            key.join(", ")
        );
        if matches!(s.state.phase, RolloutPhase::Promoted | RolloutPhase::RolledBack) {
            return Some(s);
        }
    }
}

#[tokio::main]
async fn main() {
    let fault = std::env::var("FAULT").unwrap_or_default();
    let config = EnvoyConfig::as_shipped();
    let stable = Upstream::start_on("stable", config.cluster_port("stable")).await;
    let canary = Upstream::start_on("canary", config.cluster_port("canary")).await;
    match fault.as_str() {
        "errors" => canary.set_behaviour(Behaviour { fail_fraction: 0.05, ..Behaviour::default() }),
        "latency" => {
            canary.set_behaviour(Behaviour { extra_latency: Duration::from_millis(80), ..Behaviour::default() })
        }
        "" => {}
        other => eprintln!("FAULT={other:?} is not known (errors, latency): running a healthy canary"),
    }
    let envoy = Envoy::start(&config, 2).await;
    let dir = fresh_dir("demo");
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.port = Some(config.cluster_port("canary_analyzer"));
    let policy = std::env::var_os("DEMO_POLICY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("analyzer/examples/demo-policy.yaml"));
    options.policies = vec![policy];
    options.envoy_admin = vec![format!("http://{}", envoy.admin)];
    options.token = Some(TOKEN.to_string());
    let analyzer = AnalyzerProcess::start(options).await;
    let load = Load::start(
        envoy.listener,
        LoadOptions { rps: 200, users: 3_000, anonymous_fraction: 0.1, ..LoadOptions::default() },
    );
    println!("Envoy + wasm canary filter on http://{} (admin http://{})", envoy.listener, envoy.admin);
    println!("stable on {}, canary on {}", stable.addr, canary.addr);
    println!(
        "analyzer on {} (state in {}), canary fault: {}",
        analyzer.url(),
        dir.display(),
        if fault.is_empty() { "none" } else { &fault }
    );
    println!("processes: envoy pid {}, analyzer pid {}", envoy.pid(), analyzer.pid());
    println!("dashboard: {}/rollouts/demo (overrides take the token {TOKEN:?})", analyzer.url());
    println!("in a terminal: CANARY_ANALYZER_URL={} target/debug/canary-analyzer status --watch demo", analyzer.url());
    tokio::select! {
        end = watch(&analyzer, &load) => {
            if let Some(s) = end {
                println!("\n== {:?} at {}\n{}", s.state.phase, percent(s.state.share_bp), report_table(&s.rows, &s.row_rules));
                if let Ok(audit) = std::fs::read_to_string(dir.join("state/audit.jsonl")) {
                    println!("audit log: {} records in {}", audit.lines().count(), dir.join("state/audit.jsonl").display());
                }
            }
            if std::env::var("DEMO_EXIT").is_err() {
                println!("\nStill serving. Try: curl -si -H 'x-user-id: alice' http://{}/ | grep x-version", envoy.listener);
                println!("Ctrl-C stops Envoy, the analyzer, the servers and the load.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(load);
    println!("stopping");
    drop(analyzer);
    drop(envoy);
    // The demo's state (the analyzer's state directory and audit log) goes with it, unless
    // DEMO_KEEP_STATE is set.
    if std::env::var_os("DEMO_KEEP_STATE").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
        println!("stopped; removed {} (DEMO_KEEP_STATE=1 keeps it)", dir.display());
    } else {
        println!("stopped; state kept in {}", dir.display());
    }
}
