//! The real analyzer's usual setup: stable and canary upstreams, Envoy on the shipped
//! config polling the analyzer's port every 500 ms, and the analyzer's options (the
//! policy, Envoy's admin, a token, that port) ready for the test to start it, once or
//! several times, with whatever it adds (a failpoint, a restored state directory).

use crate::analyzer::{AnalyzerOptions, fresh_dir};
use crate::envoy::{Envoy, EnvoyConfig};
use crate::free_port;
use crate::upstream::Upstream;
use std::net::SocketAddr;

pub struct AnalyzerRig {
    pub stable: Upstream,
    pub canary: Upstream,
    pub envoy: Envoy,
    pub options: AnalyzerOptions,
}

impl AnalyzerRig {
    /// `policy` (YAML) is written to a fresh directory named `name`, whose `state` is
    /// the analyzer's state directory; Envoy runs `concurrency` workers.
    pub async fn start(name: &str, policy: &str, token: &str, concurrency: u32) -> AnalyzerRig {
        let dir = fresh_dir(name);
        let policy_file = dir.join("policy.yaml");
        std::fs::write(&policy_file, policy).unwrap();
        let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
        let analyzer_port = free_port();
        let analyzer = SocketAddr::from(([127, 0, 0, 1], analyzer_port));
        let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, analyzer);
        config.edit_plugin_config(|json| {
            json["analyzer"]["poll_interval_ms"] = 500.into();
            json["analyzer"]["timeout_ms"] = 250.into();
        });
        let envoy = Envoy::start(&config, concurrency).await;
        let mut options = AnalyzerOptions::new(dir.join("state"));
        options.policies = vec![policy_file];
        options.envoy_admin = vec![format!("http://{}", envoy.admin)];
        options.token = Some(token.into());
        options.port = Some(analyzer_port);
        AnalyzerRig { stable, canary, envoy, options }
    }
}
