//! A load that keeps every request: when it was sent, as which user, what answered.
//!
//! [`crate::load::Load`] counts; a test of a live change needs more: which share each
//! request saw, and so whether any request in the seconds around the change was routed
//! with a share below the analyzer's. Each record is checked afterwards against the
//! filter's own decision (`canary_core::decide`, the code the wasm runs) under the
//! configuration in force, and grouped into a timeline of short windows around the change.
//! Alongside, [`GaugeSampler`] reads Envoy's `canary_applied_share_bp` gauge every 50 ms.

use canary_core::{FilterConfig, RequestView, Share, decide};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

/// One request and its outcome.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was sent.
    pub sent: Instant,
    pub user: String,
    /// `None`: no response at all (connection failure or timeout).
    pub status: Option<u16>,
    /// `x-version` of the upstream that answered.
    pub version: Option<String>,
}

impl Record {
    /// A 5xx or no response at all.
    pub fn failed(&self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }
}

/// Requests at a fixed rate, as users picked round-robin from a pool, every one recorded.
pub struct RecordedLoad {
    records: Arc<Mutex<Vec<Record>>>,
    stopping: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for RecordedLoad {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response's headers take well under 100 ms on loopback; 5 s means Envoy hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl RecordedLoad {
    /// Starts `rps` requests per second through Envoy's `listener`.
    pub fn start(listener: SocketAddr, rps: u32, users: Vec<String>) -> RecordedLoad {
        let records = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("reqwest client");
        let url = format!("http://{listener}/");
        let sink = Arc::clone(&records);
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            // Owned here so that aborting the load aborts the requests in flight.
            let mut requests = JoinSet::new();
            for user in users.iter().cycle() {
                ticks.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                while requests.try_join_next().is_some() {}
                let (http, url, user, sink) = (http.clone(), url.clone(), user.clone(), Arc::clone(&sink));
                requests.spawn(async move {
                    let sent = Instant::now();
                    let response = http.get(url).header("x-user-id", &user).send().await;
                    let (status, version) = match response {
                        Ok(r) => {
                            let version = r.headers().get("x-version").and_then(|v| v.to_str().ok()).map(String::from);
                            let status = r.status().as_u16();
                            // Read the body so the connection goes back to the pool.
                            let _ = r.bytes().await;
                            (Some(status), version)
                        }
                        Err(_) => (None, None),
                    };
                    sink.lock().expect("records lock").push(Record { sent, user, status, version });
                });
            }
            while requests.join_next().await.is_some() {}
        });
        RecordedLoad { records, stopping, task }
    }

    /// Stops sending, waits for the requests in flight (at most the request timeout) and
    /// returns every record, in the order they were sent.
    pub async fn finish(mut self) -> Vec<Record> {
        self.stopping.store(true, Ordering::Relaxed);
        // Every request has a timeout, so this returns; on a hang, dropping `self` aborts.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, &mut self.task).await;
        let mut records = std::mem::take(&mut *self.records.lock().expect("records lock"));
        records.sort_by_key(|r| r.sent);
        records
    }

    /// Records so far (requests still in flight are missing).
    pub fn len(&self) -> usize {
        self.records.lock().expect("records lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request as the filter sees it: the one `x-user-id` header the load sends.
struct UserOnly<'a>(&'a str);

impl RequestView for UserOnly<'_> {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        (name == "x-user-id").then(|| self.0.as_bytes().to_vec())
    }

    fn all_cookie_lines(&mut self) -> Option<Vec<u8>> {
        None
    }
}

/// Which version the filter routes `user` to, under the (first) deployment of `config` at `share_bp`.
pub fn expected_version(config: &FilterConfig, share_bp: u32, user: &str) -> &'static str {
    let share = Share::from_basis_points(share_bp).expect("share in range");
    let deployment = config.deployments.first().expect("a configuration has a deployment");
    let decision = decide(deployment, share, &mut UserOnly(user), || None);
    if decision.cohort.routes_to_canary() { "canary" } else { "stable" }
}

/// The records of one window of a timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Start of the window, milliseconds after the change (negative: before it).
    pub from_ms: i64,
    pub requests: usize,
    pub failed: usize,
    pub canary: usize,
    /// Requests that reached another version than `expected` says.
    pub misrouted: usize,
}

/// Groups `records` sent from `before` ahead of `change` to `after` past it into
/// windows of `width`, each request checked with `expected(record)`.
pub fn timeline(
    records: &[Record],
    change: Instant,
    before: Duration,
    after: Duration,
    width: Duration,
    expected: impl Fn(&Record) -> &'static str,
) -> Vec<Window> {
    let width_ms = i64::try_from(width.as_millis()).expect("small").max(1);
    let from_ms = -i64::try_from(before.as_millis()).expect("small");
    let to_ms = i64::try_from(after.as_millis()).expect("small");
    let mut windows: Vec<Window> = (0..(to_ms - from_ms) / width_ms)
        .map(|k| Window { from_ms: from_ms + k * width_ms, ..Window::default() })
        .collect();
    for record in records {
        let at_ms = if record.sent >= change {
            i64::try_from((record.sent - change).as_millis()).expect("small")
        } else {
            -i64::try_from((change - record.sent).as_millis()).expect("small")
        };
        let Some(window) =
            usize::try_from((at_ms - from_ms).div_euclid(width_ms)).ok().and_then(|k| windows.get_mut(k))
        else {
            continue;
        };
        window.requests += 1;
        window.failed += usize::from(record.failed());
        window.canary += usize::from(record.version.as_deref() == Some("canary"));
        window.misrouted += usize::from(!record.failed() && record.version.as_deref() != Some(expected(record)));
    }
    windows
}

/// The timeline as lines for a test's output (and a failure message).
pub fn describe(windows: &[Window]) -> String {
    windows
        .iter()
        .map(|w| {
            format!(
                "{:>+6} ms: {:>3} requests, {:>3} canary, {} misrouted, {} failed",
                w.from_ms, w.requests, w.canary, w.misrouted, w.failed
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Samples one gauge from Envoy's admin `/stats` every 50 ms until dropped.
pub struct GaugeSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    task: JoinHandle<()>,
}

impl Drop for GaugeSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Twice per tick at the tests' 500 ms poll interval (ticks every 125 ms).
const GAUGE_PERIOD: Duration = Duration::from_millis(50);

impl GaugeSampler {
    /// Samples the stat named exactly `stat` (its untagged name, e.g.
    /// `wasmcustom.canary.deployment.checkout.applied_share_bp`).
    pub fn start(admin: SocketAddr, stat: String) -> GaugeSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let url = format!("http://{admin}/stats?filter=^{}$", stat.replace('.', "\\."));
            let mut ticks = tokio::time::interval(GAUGE_PERIOD);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                let at = Instant::now();
                let Ok(response) = http.get(&url).send().await else { continue };
                let Ok(text) = response.text().await else { continue };
                let value = text.lines().find_map(|l| l.strip_prefix(&format!("{stat}: "))?.trim().parse().ok());
                if let Some(value) = value {
                    sink.lock().expect("samples lock").push((at, value));
                }
            }
        });
        GaugeSampler { samples, task }
    }

    /// The samples taken in `[from, to]`.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<u64> {
        let samples = self.samples.lock().expect("samples lock");
        samples.iter().filter(|(at, _)| *at >= from && *at <= to).map(|(_, v)| *v).collect()
    }
}
