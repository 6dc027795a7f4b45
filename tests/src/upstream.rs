//! A small upstream that answers which version it is (`x-version` header and body),
//! and on request answers a status code, waits, or resets the connection:
//! `/status/503`, `/delay/20` (milliseconds), `/reset`.

use crate::http_server::{self, HttpResult, response};
use hyper::Request;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Upstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(version: &'static str, req: Request<Incoming>) -> HttpResult {
    let path = req.uri().path();
    let mut status = 200;
    if path == "/reset" {
        return Err(std::io::Error::other("reset requested"));
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(400);
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let cohort = req.headers().get("x-canary-cohort").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = format!(r#"{{"version":"{version}","cohort_header":"{cohort}"}}"#);
    response(status, &[("x-version", version), ("x-seen-cohort-header", &cohort)], body)
}

impl Upstream {
    /// Starts an upstream on a free loopback port.
    pub async fn start(version: &'static str) -> Upstream {
        Self::start_on(version, 0).await
    }

    /// Starts an upstream on a given loopback port (0: any free one).
    pub async fn start_on(version: &'static str, port: u16) -> Upstream {
        let listener =
            TcpListener::bind(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().expect("upstream address");
        let task = http_server::spawn(listener, move |req| answer(version, req));
        Upstream { addr, task }
    }
}
