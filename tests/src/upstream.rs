//! A small upstream that answers which version it is (`x-version` header and body),
//! and on request answers a status code, waits, or resets the connection:
//! `/status/503`, `/delay/20` (milliseconds), `/reset`.
//!
//! Every other path is an *ordinary* request, shaped by a [`Behaviour`] the test can
//! change while traffic flows: fail a fraction of requests with a given status, add
//! latency. Failures are spread evenly and deterministically over the ordinary
//! requests (no randomness), so a fail fraction of 5 % fails 5 of every 100 requests
//! to within one, and a test's expectations do not depend on a seed.

use crate::http_server::{self, HttpResult, response};
use hyper::Request;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How ordinary requests (any path but `/status/N`, `/delay/MS`, `/reset`) are answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Fraction of ordinary requests answered with `status_on_failure` (0.0..=1.0).
    pub fail_fraction: f64,
    /// The status of a failed request.
    pub status_on_failure: u16,
    /// Added to every ordinary request, failed or not.
    pub extra_latency: Duration,
}

impl Default for Behaviour {
    /// Healthy: no failures, no added latency (503 if failures are switched on).
    fn default() -> Self {
        Behaviour { fail_fraction: 0.0, status_on_failure: 503, extra_latency: Duration::ZERO }
    }
}

impl Behaviour {
    fn fails(&self, n: u64) -> bool {
        spread_failure(self.fail_fraction, n)
    }
}

/// Whether the `n`-th request (counting from 0) of a sequence failing `fail_fraction` of
/// its requests fails: request `n` fails when `floor((n + 1) * f)` passes an integer, so
/// any run of `k` consecutive requests holds `floor(k * f)` or `ceil(k * f)` failures.
/// Out-of-range fractions are clamped to 0..=1.
pub fn spread_failure(fail_fraction: f64, n: u64) -> bool {
    // In integer parts per million, so the spread is exact (no float rounding at the
    // edges); a millionth is finer than any fraction a test asks for.
    const PARTS: u64 = 1_000_000;
    let parts = (fail_fraction.clamp(0.0, 1.0) * PARTS as f64).round() as u64;
    (n + 1) * parts / PARTS > n * parts / PARTS
}

/// State shared by the server task and the test's handle.
#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    /// Every request answered or reset, whatever its path.
    requests: AtomicU64,
    /// Ordinary requests seen: the index that decides whether one fails.
    ordinary: AtomicU64,
    /// Ordinary requests answered with the failure status.
    failed: AtomicU64,
}

pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(version: &'static str, shared: Arc<Shared>, req: Request<Incoming>) -> HttpResult {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    let mut status = 200;
    if path == "/reset" {
        return Err(std::io::Error::other("reset requested"));
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(400);
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    } else {
        let behaviour = shared.behaviour.lock().expect("upstream behaviour lock").clone();
        let n = shared.ordinary.fetch_add(1, Ordering::Relaxed);
        if behaviour.fails(n) {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            status = behaviour.status_on_failure;
        }
        if !behaviour.extra_latency.is_zero() {
            tokio::time::sleep(behaviour.extra_latency).await;
        }
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
        let shared = Arc::new(Shared::default());
        let for_server = Arc::clone(&shared);
        let task = http_server::spawn(listener, move |req| answer(version, Arc::clone(&for_server), req));
        Upstream { addr, shared, task }
    }

    /// Changes how ordinary requests are answered, from the next request on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().expect("upstream behaviour lock") = behaviour;
    }

    /// How ordinary requests are answered now.
    pub fn behaviour(&self) -> Behaviour {
        self.shared.behaviour.lock().expect("upstream behaviour lock").clone()
    }

    /// Requests received so far, whatever their path (resets included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Ordinary requests received so far.
    pub fn ordinary_requests(&self) -> u64 {
        self.shared.ordinary.load(Ordering::Relaxed)
    }

    /// Ordinary requests failed on purpose so far.
    pub fn failed_requests(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::Behaviour;

    fn failures(fraction: f64, from: u64, count: u64) -> u64 {
        let behaviour = Behaviour { fail_fraction: fraction, ..Behaviour::default() };
        (from..from + count).filter(|n| behaviour.fails(*n)).count() as u64
    }

    #[test]
    fn failures_are_spread_evenly_at_the_fraction() {
        assert_eq!(failures(0.0, 0, 1_000), 0);
        assert_eq!(failures(1.0, 0, 1_000), 1_000);
        assert_eq!(failures(0.05, 0, 1_000), 50);
        assert_eq!(failures(0.2, 0, 500), 100);
        // Any window holds floor or ceil of its share, wherever it starts.
        for from in [1, 7, 13, 999, 123_457] {
            assert_eq!(failures(0.05, from, 100), 5, "0.05 over 100 from {from}");
            assert_eq!(failures(0.3, from, 10), 3, "0.3 over 10 from {from}");
            let n = failures(0.013, from, 100);
            assert!(n == 1 || n == 2, "0.013 over 100 from {from}: {n}");
        }
        // Out-of-range fractions are clamped, never panic.
        assert_eq!(failures(-1.0, 0, 10), 0);
        assert_eq!(failures(2.0, 0, 10), 10);
    }
}
