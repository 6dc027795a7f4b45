//! Test harness for the end-to-end tests: the real Envoy (from the shipped
//! `envoy/envoy.yaml`, only ports and paths changed), test upstreams that say
//! which version answered, and a rollout config server the filter polls.
//! Every process and server started here stops when its handle is dropped.

pub mod analyzer;
pub mod analyzer_rig;
pub mod browser;
pub mod cache_upstream;
pub mod config_server;
pub mod containers;
pub mod ecds;
pub mod envoy;
pub mod grpc_client;
pub mod grpc_upstream;
pub mod http_server;
pub mod istio_api;
pub mod istio_bootstrap;
pub mod kubernetes_api;
pub mod kustomize;
pub mod load;
pub mod manifests;
pub mod mesh_app;
pub mod per_route;
pub mod prometheus;
pub mod raw_http;
pub mod request_log;
pub mod rig;
pub mod soak;
pub mod tcp_gate;
pub mod traffic;
pub mod upstream;
pub mod webhook;

use std::net::TcpListener;
use std::path::PathBuf;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A loopback port that was free a moment ago (for processes that bind it themselves).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free loopback port")
}
