//! An upstream for outcome rules: it answers `x-version` (`stable` or `canary`, also the
//! body), `/` with `x-cache: MISS` on the first `misses` of every `every` requests to
//! `/` and `HIT` on the rest (by a counter, so any multiple of `every` requests holds
//! the exact fraction), and any path with the query's `name=value` pairs as response
//! headers: `status=N` sets the status, the value `binary` sends the bytes `\xff150`,
//! which are not UTF-8, and `hex:<digits>` ([`hex_value`]) any bytes hyper can send
//! (`/pay?x-payment-result=declined`, `/checkout?status=402`); a name may repeat.

use crate::http_server::{self, HttpResult};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running cache upstream; stopped on drop.
pub struct CacheUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for CacheUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often `/` misses: the first `misses` of every `every` requests.
#[derive(Debug, Clone, Copy)]
pub struct Misses {
    pub misses: u64,
    pub every: u64,
}

async fn answer(
    version: &'static str,
    misses: Misses,
    root_requests: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> HttpResult {
    let mut status = 200;
    let mut builder = hyper::Response::builder().header("x-version", version);
    if req.uri().path() == "/" {
        let n = root_requests.fetch_add(1, Ordering::Relaxed);
        builder = builder.header("x-cache", if n % misses.every.max(1) < misses.misses { "MISS" } else { "HIT" });
    }
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "status" {
            status = value.parse().unwrap_or(400);
        } else if value == "binary" {
            builder = builder.header(name, HeaderValue::from_bytes(b"\xff150").expect("obs-text is a header value"));
        } else if let Some(hex) = value.strip_prefix("hex:") {
            // Bytes hyper refuses (control bytes) leave the header out: tests send none.
            if let Some(value) = unhex(hex).and_then(|v| HeaderValue::from_bytes(&v).ok()) {
                builder = builder.header(name, value);
            }
        } else {
            builder = builder.header(name, value);
        }
    }
    builder
        .status(status)
        .body(http_body_util::Full::new(hyper::body::Bytes::from(version)))
        .map_err(std::io::Error::other)
}

/// A query value that makes the upstream answer these exact bytes.
pub fn hex_value(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("hex:{digits}")
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

impl CacheUpstream {
    pub async fn start(version: &'static str, misses: Misses) -> CacheUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a cache upstream");
        let addr = listener.local_addr().expect("upstream address");
        let root_requests = Arc::new(AtomicU64::new(0));
        let task = http_server::spawn(listener, move |req| answer(version, misses, Arc::clone(&root_requests), req));
        CacheUpstream { addr, task }
    }
}
