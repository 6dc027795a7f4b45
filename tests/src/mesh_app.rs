//! A service in the middle of a call chain, as an application in a mesh is: it
//! answers each request by calling another service through its own sidecar (an
//! Envoy on loopback), and propagates the caller's headers the way an application
//! that forwards everything does: `x-user-id` (what the mesh recipe asks of it) and
//! also any `x-canary-cohort` it received, which the sidecar's filter must replace.
//!
//! The path picks the callee: `/<host>` calls `http://<host>/` through the sidecar.
//! The answer carries the callee's `x-version` and the cohort header the callee saw.

use crate::http_server::{self, HttpResult, response};
use hyper::Request;
use hyper::body::Incoming;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The headers the app copies from its request to its outbound call.
const PROPAGATED: [&str; 2] = ["x-user-id", "x-canary-cohort"];

pub struct MeshApp {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MeshApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(http: reqwest::Client, sidecar: SocketAddr, req: Request<Incoming>) -> HttpResult {
    let callee = req.uri().path().trim_start_matches('/').to_string();
    let mut call = http.get(format!("http://{sidecar}/")).header("host", &callee);
    for name in PROPAGATED {
        if let Some(value) = req.headers().get(name) {
            call = call.header(name, value.as_bytes());
        }
    }
    match call.send().await {
        Ok(answer) => {
            let header =
                |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let (version, seen) = (header("x-version"), header("x-seen-cohort-header"));
            let status = answer.status().as_u16();
            response(status, &[("x-version", &version), ("x-seen-cohort-header", &seen)], version.clone())
        }
        Err(e) => response(502, &[], format!("call to {callee} through the sidecar failed: {e}")),
    }
}

impl MeshApp {
    /// Starts on a free loopback port, calling out through `sidecar` (its listener).
    pub async fn start(sidecar: SocketAddr) -> MeshApp {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the mesh app");
        let addr = listener.local_addr().expect("mesh app address");
        let http = reqwest::Client::new();
        let task = http_server::spawn(listener, move |req| forward(http.clone(), sidecar, req));
        MeshApp { addr, task }
    }
}
