//! A filter enabled on some virtual hosts only (`envoy/per-route.yaml`; the same under ECDS, as an
//! Istio gateway would carry it after an `EnvoyFilter` patch): the example's virtual hosts, what
//! requests for a host without the filter saw, and the filter's request counters.

use crate::envoy::EnvoyConfig;
use crate::traffic::{Client, Reply, user_ids};
use serde_yaml_ng::Value as Yaml;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The shipped example.
pub const CONFIG: &str = "envoy/per-route.yaml";
/// The host whose virtual host turns the filter on, as the example ships it.
pub const ROLLOUT_HOST: &str = "checkout.example.com";
/// A host no virtual host of the example turns the filter on for.
pub const OTHER_HOST: &str = "catalog.example.com";
/// The example's virtual hosts without the entries that enable the filter (for a test that
/// enables it another way).
pub fn virtual_hosts_without_enabling() -> Vec<Yaml> {
    let mut example = EnvoyConfig::load(CONFIG);
    let mut hosts = example.virtual_hosts().clone();
    for host in &mut hosts {
        if let Some(host) = host.as_mapping_mut() {
            host.remove("typed_per_filter_config");
        }
    }
    hosts
}

/// Waits (5 s at most) until the filter has counted `at_least` requests; returns the count.
pub async fn wait_for_count(admin: SocketAddr, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counted = crate::envoy::requests_counted(admin).await;
        if counted >= at_least || Instant::now() > deadline {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What requests for `OTHER_HOST` saw: users with a forged `x-canary-cohort: canary`, then
/// anonymous users.
pub struct OtherHost {
    pub users: Vec<String>,
    pub identified: Vec<Reply>,
    pub anonymous: Vec<Reply>,
}

impl OtherHost {
    /// Requests for the host without the filter: 20 identified users forging the canary
    /// header, 10 anonymous ones.
    pub async fn send(listener: SocketAddr) -> OtherHost {
        let other = Client::for_host(listener, OTHER_HOST);
        let users = user_ids(0x07e2, 20);
        let mut identified = Vec::new();
        for id in &users {
            identified.push(other.get("/", &[("x-user-id", id), ("x-canary-cohort", "canary")]).await);
        }
        let mut anonymous = Vec::new();
        for _ in 0..10 {
            anonymous.push(other.get("/", &[]).await);
        }
        OtherHost { users, identified, anonymous }
    }

    pub fn requests(&self) -> u64 {
        (self.identified.len() + self.anonymous.len()) as u64
    }

    /// Asserts that the filter did not run on them: stable answered (the host's one route), the
    /// upstream saw the forged header as sent, no sticky cookie.
    pub fn assert_untouched(&self) {
        for reply in &self.identified {
            assert_eq!(reply.status, 200);
            assert_eq!(reply.version.as_deref(), Some("stable"), "the other host has one route, to stable");
            assert_eq!(
                reply.seen_cohort_header.as_deref(),
                Some("canary"),
                "the forged header reaches the upstream as sent: the filter did not run"
            );
        }
        assert!(self.anonymous.iter().all(|r| r.set_cookie.is_none()), "no sticky cookie without the filter");
    }
}
