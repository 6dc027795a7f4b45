//! A whole test setup: stable and canary upstreams, a config server and Envoy on
//! the shipped config, with a short poll interval so tests run in seconds.

use crate::config_server::{Answer, ConfigServer};
use crate::envoy::{Envoy, EnvoyConfig};
use crate::traffic::Client;
use crate::upstream::Upstream;
use canary_core::{Share, bucket};
use std::time::Duration;

/// The deployment id in the shipped `envoy/envoy.yaml`.
pub const DEPLOYMENT: &str = "demo";
/// Poll interval used by the tests: short enough for second-long tests, well above the 100 ms floor.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

pub struct Rig {
    pub stable: Upstream,
    pub canary: Upstream,
    pub config_server: ConfigServer,
    pub envoy: Envoy,
    pub client: Client,
}

pub struct RigOptions {
    pub concurrency: u32,
    /// Changes to the plugin configuration JSON.
    pub plugin: Box<dyn FnOnce(&mut serde_json::Value) + Send>,
    /// Other changes to the Envoy config.
    pub envoy: Box<dyn FnOnce(&mut EnvoyConfig) + Send>,
    /// The shipped Envoy config to start from (a path from the repository root).
    pub config_file: &'static str,
    /// The `Host` header of the rig's requests, probes included (default: the listener's address).
    pub host: Option<&'static str>,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            concurrency: 2,
            plugin: Box::new(|_| {}),
            envoy: Box::new(|_| {}),
            config_file: crate::envoy::DEFAULT_CONFIG,
            host: None,
        }
    }
}

impl Rig {
    /// Starts everything, the config server answering `share_bp` at generation 1, and
    /// waits until Envoy routes with that share.
    pub async fn start(share_bp: u32, options: RigOptions) -> Rig {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let config_server = ConfigServer::start(Answer::share(DEPLOYMENT, 1, share_bp)).await;
        let mut config = EnvoyConfig::shipped_file(options.config_file, stable.addr, canary.addr, config_server.addr);
        config.edit_plugin_config(|json| {
            json["analyzer"]["poll_interval_ms"] = u64::try_from(POLL_INTERVAL.as_millis()).expect("small").into();
            json["analyzer"]["timeout_ms"] = 250.into();
            json["analyzer"]["stale_after_ms"] = 2_000.into();
            (options.plugin)(json);
        });
        (options.envoy)(&mut config);
        let envoy = Envoy::start(&config, options.concurrency).await;
        let client = match options.host {
            Some(host) => Client::for_host(envoy.listener, host),
            None => Client::new(envoy.listener),
        };
        let rig = Rig { stable, canary, config_server, envoy, client };
        rig.wait_for_share(share_bp, Duration::from_secs(10)).await;
        rig
    }

    /// What the filter must answer for `id` at `share_bp`, computed natively.
    pub fn expected_version(id: &str, share_bp: u32) -> &'static str {
        let share = Share::from_basis_points(share_bp).expect("share in range");
        if share.includes(bucket(DEPLOYMENT, id)) { "canary" } else { "stable" }
    }

    /// Probe users whose routing flips between 0 and `share_bp`: when all of them
    /// route as the native function says, every worker has the share.
    fn probes(share_bp: u32) -> Vec<String> {
        Self::probe_users(share_bp, (0xfeed, 0xbeef), 8)
    }

    /// `per_side` users in canary at `share_bp` (any users at 0) drawn from the first
    /// seed, and `per_side` in stable drawn from the second.
    fn probe_users(share_bp: u32, (canary_seed, stable_seed): (u32, u32), per_side: usize) -> Vec<String> {
        crate::traffic::user_ids(canary_seed, 4_000)
            .into_iter()
            .filter(|id| share_bp == 0 || Self::expected_version(id, share_bp) == "canary")
            .take(per_side)
            .chain(
                crate::traffic::user_ids(stable_seed, 4_000)
                    .into_iter()
                    .filter(|id| Self::expected_version(id, share_bp) == "stable")
                    .take(per_side),
            )
            .collect()
    }

    /// Polls Envoy until probe users route as `share_bp` predicts (on every worker:
    /// each probe is sent several times over fresh connections). Returns the time it took.
    pub async fn wait_for_share(&self, share_bp: u32, limit: Duration) -> Duration {
        let start = std::time::Instant::now();
        let probes = Self::probes(share_bp);
        loop {
            if self.routes_as(&probes, share_bp).await {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "envoy did not route at share {share_bp} bp within {limit:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether the Envoy listening on `listener` routes 12 probe users in canary at
    /// `share_bp` (any 12 at 0) and 12 in stable as the native function says, in one pass.
    pub async fn envoy_routes_at(listener: std::net::SocketAddr, share_bp: u32) -> bool {
        let probes = Self::probe_users(share_bp, (0xa11, 0xb22), 12);
        let versions = Client::new(listener).versions_for(&probes).await;
        probes.iter().zip(&versions).all(|(id, v)| v == Self::expected_version(id, share_bp))
    }

    /// Whether each of `ids` routes as `share_bp` predicts, over several fresh connections.
    pub async fn routes_as(&self, ids: &[String], share_bp: u32) -> bool {
        for _ in 0..3 {
            let fresh = self.client.fresh();
            let versions = fresh.versions_for(ids).await;
            if ids.iter().zip(&versions).any(|(id, v)| v != Self::expected_version(id, share_bp)) {
                return false;
            }
        }
        true
    }
}
