//! A background load generator: requests through Envoy at about a fixed rate, as users
//! drawn from a fixed pool (so per-user stickiness matters) plus a fraction of
//! anonymous requests, counting what answered. It runs until its handle is dropped.
//! HTTP requests by default; any other protocol through a [`Sender`] (gRPC calls:
//! `crate::grpc_client::start_grpc_load`).
//!
//! Kept light for a two-core machine that also runs Envoy and the analyzer: one timer
//! task, one spawned task per request, one pooled `reqwest` client, and a cap on the
//! requests in flight. A tick that finds the cap reached skips its request and counts
//! it, so a slow upstream shows up as `skipped` instead of a silent drop in rate.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Requests per second (at least 1).
    pub rps: u32,
    /// Distinct user ids in the pool (UUID-shaped, from [`crate::traffic::user_ids`]).
    pub users: u32,
    /// Fraction of requests sent without `x-user-id` (0.0..=1.0).
    pub anonymous_fraction: f64,
    /// Request path, e.g. `/`.
    pub path: String,
    /// Prefix of the user ids (the first id segment): different prefixes, different users.
    pub user_prefix: u32,
    /// Requests in flight at most.
    pub max_in_flight: u32,
    /// Per-request timeout; a request that takes longer counts as a transport error.
    pub timeout: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            rps: 100,
            users: 1_000,
            anonymous_fraction: 0.0,
            path: "/".to_string(),
            user_prefix: 0x10ad,
            // 200 rps at 250 ms of upstream latency is 50 in flight: room for slow canaries
            // without letting a stalled Envoy pile up thousands of tasks.
            max_in_flight: 64,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Counters, as a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Requests started.
    pub sent: u64,
    /// Requests finished, with a response or a transport error.
    pub completed: u64,
    /// Responses with `x-version: stable`.
    pub stable: u64,
    /// Responses with `x-version: canary`.
    pub canary: u64,
    /// Responses without a known `x-version` (e.g. Envoy's own 503 after a reset).
    pub unversioned: u64,
    /// Failed responses (HTTP: status >= 500; gRPC: any status but OK) plus transport errors.
    pub errors: u64,
    /// Of `errors`: failed responses from stable.
    pub stable_errors: u64,
    /// Of `errors`: failed responses from canary.
    pub canary_errors: u64,
    /// Of `errors`: no response at all (connection failure, timeout).
    pub transport_errors: u64,
    /// Ticks that sent nothing because `max_in_flight` requests were pending.
    pub skipped: u64,
}

impl LoadStats {
    /// Responses a version answered, by its `x-version` value (`stable` or `canary`).
    pub fn answered(&self, version: &str) -> u64 {
        match version {
            "stable" => self.stable,
            "canary" => self.canary,
            _ => 0,
        }
    }

    /// Requests still in flight when the snapshot was taken.
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.completed)
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    completed: AtomicU64,
    stable: AtomicU64,
    canary: AtomicU64,
    unversioned: AtomicU64,
    errors: AtomicU64,
    stable_errors: AtomicU64,
    canary_errors: AtomicU64,
    transport_errors: AtomicU64,
    skipped: AtomicU64,
    /// Set by [`Load::finish`]: send nothing more, let the requests in flight complete.
    stopping: AtomicBool,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> LoadStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // `completed` first (pairing with the release in `record`): every request it counts
        // is already in `sent` and in the breakdown, so `sent >= completed` in any snapshot.
        let completed = self.completed.load(Ordering::Acquire);
        LoadStats {
            sent: get(&self.sent),
            completed,
            stable: get(&self.stable),
            canary: get(&self.canary),
            unversioned: get(&self.unversioned),
            errors: get(&self.errors),
            stable_errors: get(&self.stable_errors),
            canary_errors: get(&self.canary_errors),
            transport_errors: get(&self.transport_errors),
            skipped: get(&self.skipped),
        }
    }

    /// Records one finished request. The breakdown goes first and `completed` last, so a
    /// snapshot's `completed` never counts a request its breakdown lacks.
    fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Answered { version, failed } => {
                match version.as_deref() {
                    Some("stable") => {
                        bump(&self.stable);
                        if failed {
                            bump(&self.stable_errors);
                        }
                    }
                    Some("canary") => {
                        bump(&self.canary);
                        if failed {
                            bump(&self.canary_errors);
                        }
                    }
                    _ => bump(&self.unversioned),
                }
                if failed {
                    bump(&self.errors);
                }
            }
            Outcome::NoAnswer => {
                bump(&self.transport_errors);
                bump(&self.errors);
            }
        }
        self.completed.fetch_add(1, Ordering::Release);
    }
}

/// What one request came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response: the version that answered (`x-version`), and whether it failed.
    Answered { version: Option<String>, failed: bool },
    /// No response at all (connection failure, timeout).
    NoAnswer,
}

/// Sends one request as a user (`None`: anonymous) and says how it ended.
pub type Sender = Arc<dyn Fn(Option<String>) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// SplitMix64: a seeded, well-mixed hash of the request counter, to pick users and
/// anonymous requests reproducibly without a random number crate.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Which user of `users` sends the `n`-th request (from 0) of a load with this anonymous
/// fraction: `None` for an anonymous request. Deterministic, so a test can work out
/// exactly who sent what.
pub fn pick_user(n: u64, users: &[String], anonymous_fraction: f64) -> Option<&str> {
    // Both draws in 1/10 000ths, from independent streams of the counter.
    let anonymous_bp = (anonymous_fraction.clamp(0.0, 1.0) * 10_000.0).round() as u64;
    if mix(n.wrapping_mul(2)) % 10_000 < anonymous_bp || users.is_empty() {
        return None;
    }
    let index = usize::try_from(mix(n.wrapping_mul(2) + 1) % users.len() as u64).unwrap_or(0);
    users.get(index).map(String::as_str)
}

/// A running load; stops (in-flight requests are abandoned) when dropped.
pub struct Load {
    counters: Arc<Counters>,
    users: Arc<Vec<String>>,
    task: JoinHandle<()>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Load {
    /// Starts sending HTTP `GET`s of `options.path` to Envoy's `listener` at once. Needs a
    /// running Tokio runtime.
    pub fn start(listener: SocketAddr, options: LoadOptions) -> Load {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .pool_max_idle_per_host(options.max_in_flight as usize)
            .build()
            .expect("reqwest client");
        let url = format!("http://{listener}{}", options.path);
        let send: Sender = Arc::new(move |user| Box::pin(http_get(http.clone(), url.clone(), user)));
        Load::start_with(send, options)
    }

    /// Starts sending with `send` at once (`options.path` and `timeout` are the sender's
    /// business). Needs a running Tokio runtime.
    pub fn start_with(send: Sender, options: LoadOptions) -> Load {
        let counters = Arc::new(Counters::default());
        let users = Arc::new(crate::traffic::user_ids(options.user_prefix, options.users));
        let task = tokio::spawn(generate(send, options, Arc::clone(&users), Arc::clone(&counters)));
        Load { counters, users, task }
    }

    /// The counters now.
    pub fn stats(&self) -> LoadStats {
        self.counters.snapshot()
    }

    /// Stops sending, waits (at most `limit`) for the requests in flight to complete, and
    /// returns the final counters: then `sent == completed` unless the limit was hit.
    pub async fn finish(mut self, limit: Duration) -> LoadStats {
        self.counters.stopping.store(true, Ordering::Relaxed);
        // On timeout, dropping `self` aborts the rest.
        let _ = tokio::time::timeout(limit, &mut self.task).await;
        self.stats()
    }

    /// The user pool requests are drawn from.
    pub fn user_ids(&self) -> &[String] {
        &self.users
    }

    /// Waits until `done(stats)` holds, checking every 50 ms, for at most `limit`.
    /// Returns the last stats and whether the condition held.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&LoadStats) -> bool) -> (LoadStats, bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let stats = self.stats();
            if done(&stats) {
                return (stats, true);
            }
            if tokio::time::Instant::now() >= deadline {
                return (stats, false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One `GET url` as `user`: the `x-version` that answered and whether the status was >= 500.
async fn http_get(http: reqwest::Client, url: String, user: Option<String>) -> Outcome {
    let mut request = http.get(&url);
    if let Some(id) = user {
        request = request.header("x-user-id", id);
    }
    let answer = async {
        let response = request.send().await?;
        let failed = response.status().as_u16() >= 500;
        let version = response.headers().get("x-version").and_then(|v| v.to_str().ok()).map(str::to_string);
        // Read the body so the connection goes back to the pool.
        response.bytes().await?;
        Ok::<_, reqwest::Error>(Outcome::Answered { version, failed })
    };
    answer.await.unwrap_or(Outcome::NoAnswer)
}

async fn generate(send: Sender, options: LoadOptions, users: Arc<Vec<String>>, counters: Arc<Counters>) {
    let permits = Arc::new(Semaphore::new(options.max_in_flight.max(1) as usize));
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / options.rps.max(1));
    // Behind schedule (a busy machine), send at the next tick instead of a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // Owned here so that aborting this task aborts every request in flight too.
    let mut requests = JoinSet::new();
    loop {
        ticks.tick().await;
        if counters.stopping.load(Ordering::Relaxed) {
            break;
        }
        while requests.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            bump(&counters.skipped);
            continue;
        };
        // The n-th request sent (skipped ticks not counted) goes as `pick_user(n, ..)`.
        let n = counters.sent.fetch_add(1, Ordering::Relaxed);
        let request = send(pick_user(n, &users, options.anonymous_fraction).map(str::to_string));
        let counters = Arc::clone(&counters);
        requests.spawn(async move {
            counters.record(request.await);
            drop(permit);
        });
    }
    while requests.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::pick_user;

    #[test]
    fn picks_reuse_the_pool_and_respect_the_anonymous_fraction() {
        let users = crate::traffic::user_ids(1, 50);
        let picks: Vec<Option<&str>> = (0..10_000).map(|n| pick_user(n, &users, 0.1)).collect();
        let anonymous = picks.iter().filter(|p| p.is_none()).count();
        // 10 % of 10 000 draws: a binomial sd of 30, so 850..1150 is five sd each side.
        assert!((850..=1_150).contains(&anonymous), "{anonymous} anonymous of 10 000");
        let distinct: std::collections::HashSet<&str> = picks.iter().flatten().copied().collect();
        assert_eq!(distinct.len(), 50, "every user of the pool is used, and only those");
        assert!((0..1_000).all(|n| pick_user(n, &users, 0.0).is_some()));
        assert!((0..1_000).all(|n| pick_user(n, &users, 1.0).is_none()));
        assert_eq!(pick_user(7, &users, 0.1), pick_user(7, &users, 0.1), "reproducible");
    }
}
