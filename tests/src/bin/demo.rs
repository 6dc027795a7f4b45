//! `make demo`: the shipped `envoy/envoy.yaml` as is (listener :10000, admin :9901),
//! a stable and a canary version, and a rollout config server walking the default
//! ladder (1, 5, 25, 50, 100 %) while simulated users send traffic. Prints, per step,
//! how many users each version served and what the filter counted per cohort.
//! Stays up afterwards for you to try `curl`; Ctrl-C stops everything it started.
//!
//! `DEMO_STEP_SECONDS` sets the time per step (default 8).

use canary_core::{RolloutConfig, RolloutPhase};
use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::traffic::{Client, user_ids};
use canary_e2e::upstream::Upstream;
use std::time::Duration;

const LADDER_BP: [u32; 5] = [100, 500, 2_500, 5_000, 10_000];
/// Distinct simulated users; each step sends one request per user.
const USERS: u32 = 2_000;

fn counted(prometheus: &str) -> String {
    prometheus
        .lines()
        .filter(|l| l.starts_with("canary_requests_total{") && !l.ends_with(" 0"))
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn walk_ladder(envoy: &Envoy, config_server: &ConfigServer, step: Duration) {
    let client = Client::new(envoy.listener);
    let users = user_ids(0xdead, USERS);
    for (generation, share_bp) in (1u64..).zip(LADDER_BP) {
        let state = if share_bp == 10_000 { RolloutPhase::Promoted } else { RolloutPhase::Progressing };
        config_server.set(Answer::Config(RolloutConfig { deployment: "demo".into(), generation, share_bp, state }));
        println!(
            "\n== step {generation}: analyzer says {}.{:02} % (generation {generation})",
            share_bp / 100,
            share_bp % 100
        );
        // The filter polls every 5 s (shipped config): give it one interval and a tick.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let versions = client.versions_for(&users).await;
        let canary = versions.iter().filter(|v| *v == "canary").count();
        println!("   {USERS} users -> canary {canary}, stable {}", versions.len() - canary);
        println!("   filter's per-cohort counters so far:\n{}", counted(&envoy.prometheus().await));
        tokio::time::sleep(step.saturating_sub(Duration::from_secs(6))).await;
    }
}

#[tokio::main]
async fn main() {
    let step = Duration::from_secs(std::env::var("DEMO_STEP_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8));
    let config = EnvoyConfig::as_shipped();
    let stable = Upstream::start_on("stable", config.cluster_port("stable")).await;
    let canary = Upstream::start_on("canary", config.cluster_port("canary")).await;
    let config_server =
        ConfigServer::start_on(Answer::share("demo", 0, 0), config.cluster_port("canary_analyzer")).await;
    let envoy = Envoy::start(&config, 2).await;
    println!("Envoy with the wasm canary filter on http://{} (admin http://{})", envoy.listener, envoy.admin);
    println!("stable on {}, canary on {}, rollout config on {}", stable.addr, canary.addr, config_server.addr);
    tokio::select! {
        _ = walk_ladder(&envoy, &config_server, step) => {
            println!("\nPromoted to 100 %. Try it yourself:");
            println!("  curl -si -H 'x-user-id: alice' http://{}/ | grep x-version", envoy.listener);
            println!("  curl -si http://{}/ | grep -i set-cookie      # anonymous: sticky id", envoy.listener);
            println!("  curl -s http://{}/stats/prometheus | grep ^canary_", envoy.admin);
            println!("Ctrl-C stops Envoy and the servers.");
            let _ = tokio::signal::ctrl_c().await;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("stopping");
}
