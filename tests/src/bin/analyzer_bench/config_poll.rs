//! The fleet's config polls: what the batch endpoint (`GET /v1/config`) costs the
//! analyzer against polling `/v1/rollouts/{deployment}/config` once per deployment.
//!
//! The real HTTP API (`api::run`) serves on a loopback port from one thread of its own
//! (a current-thread runtime), so that thread's CPU time (`/proc/self/task/<tid>/schedstat`)
//! is what the polls cost the analyzer, whatever else runs on the machine. [`ROLLOUTS`]
//! rollouts are registered; [`CONNECTIONS`] keep-alive clients, each standing in for
//! proxies in turn, poll for [`ROW_SECONDS`] per row:
//! - the per-deployment endpoint, one deployment per request (the baseline: a proxy
//!   with [`ROLLOUTS`] deployments makes [`ROLLOUTS`] of these per interval);
//! - the batch endpoint naming all [`ROLLOUTS`] deployments with the current `ETag`
//!   (every answer `304`), with one request in [`STALE_ONE_IN`] carrying a stale one
//!   (`200`, the answer after a share change), and with no `ETag` (every answer `200`).
//!
//! Each row gives polls/s, the analyzer's CPU µs per poll and CPU seconds per round of
//! [`FLEET_PROXIES`] proxies, each polling for all [`ROLLOUTS`] deployments (one batch
//! poll, or [`ROLLOUTS`] single ones), and that as a ratio to the per-deployment baseline.
//! Every answer's status is checked: a `200` where a `304` was due fails the bench.

use canary_analyzer::api::{self, AppState};
use canary_analyzer::auth::Authenticator;
use canary_analyzer::engine::{Engine, SourceSettings};
use canary_analyzer::notify::Notifier;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Rollouts registered, and deployments named in each batch poll: the 100 per proxy.
const ROLLOUTS: usize = 100;
/// The fleet the figures are scaled to.
const FLEET_PROXIES: f64 = 10_000.0;
/// The filter's default poll interval, to turn a fleet round into cores.
const POLL_INTERVAL_S: f64 = 5.0;
/// Concurrent keep-alive connections: enough to keep the analyzer's thread busy.
const CONNECTIONS: usize = 32;
/// Length of each row's run: long enough for tens of thousands of polls.
const ROW_SECONDS: u64 = 3;
/// In the mixed row, one batch poll in this many carries a stale `ETag` (5 %).
const STALE_ONE_IN: u64 = 20;
const TOKEN: &str = "bench-admin-token-0123456789";

/// Nanoseconds the thread `task` (`/proc/self/task/<tid>`) has run on a CPU.
fn thread_cpu_ns(task: &str) -> u64 {
    let schedstat = std::fs::read_to_string(format!("{task}/schedstat")).expect("read the server thread's schedstat");
    schedstat.split_whitespace().next().and_then(|ns| ns.parse().ok()).expect("schedstat starts with CPU ns")
}

/// The analyzer's API on one thread of its own: its address and its `/proc` task directory.
fn start_analyzer() -> (SocketAddr, String, tokio::sync::oneshot::Sender<()>) {
    let dir = std::env::temp_dir().join(format!("canary-bench-config-poll-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench state dir");
    let source = SourceSettings::EnvoyAdmin {
        admin_urls: vec!["http://127.0.0.1:1".into()],
        max_body_bytes: canary_analyzer::source::DEFAULT_MAX_BODY_BYTES,
    };
    let engine = Engine::open(&dir, source, Notifier::new(Vec::new())).expect("open the bench engine");
    let auth = Authenticator::from_settings(Some(TOKEN), None, false).expect("bench token");
    let state = AppState { engine: Arc::new(engine), auth: Arc::new(auth) };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new().name("analyzer-api".into());
    server
        .spawn(move || {
            let task = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
                let address = listener.local_addr().expect("bound address");
                ready_tx.send((address, format!("/proc/{}", task.display()))).expect("bench waits");
                api::run(listener, state, async move {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
            });
        })
        .expect("start the analyzer's thread");
    let (address, task) = ready_rx.recv().expect("the analyzer thread started");
    (address, task, stop_tx)
}

pub(super) fn deployment(index: usize) -> String {
    format!("svc-{index:03}")
}

/// What one row's clients send.
#[derive(Clone, Copy)]
enum Poll {
    /// `/v1/rollouts/{deployment}/config`, cycling through the deployments.
    PerDeployment,
    /// `/v1/config` for all deployments; one in `stale_one_in` without the current tag
    /// (`0`: never, `1`: always).
    Batch { stale_one_in: u64 },
}

struct Row {
    polls: u64,
    seconds: f64,
    cpu_ns: u64,
}

impl Row {
    fn cpu_us_per_poll(&self) -> f64 {
        self.cpu_ns as f64 / 1e3 / self.polls as f64
    }
}

/// Runs one row: [`CONNECTIONS`] clients polling for [`ROW_SECONDS`]; every status checked.
async fn run_row(address: SocketAddr, task: &str, poll: Poll, etag: &str) -> Row {
    let client = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().expect("client");
    let batch_uri = format!(
        "http://{address}/v1/config?deployments={}",
        (0..ROLLOUTS).map(deployment).collect::<Vec<_>>().join(",")
    );
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(ROW_SECONDS);
    let cpu_before = thread_cpu_ns(task);
    let start = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, next, batch_uri, etag) = (client.clone(), next.clone(), batch_uri.clone(), etag.to_string());
            tokio::spawn(async move {
                let mut polls = 0u64;
                while Instant::now() < deadline {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let (request, expected) = match poll {
                        Poll::PerDeployment => {
                            let uri =
                                format!("http://{address}/v1/rollouts/{}/config", deployment(k as usize % ROLLOUTS));
                            (client.get(uri), reqwest::StatusCode::OK)
                        }
                        Poll::Batch { stale_one_in } if stale_one_in != 0 && k % stale_one_in == 0 => {
                            (client.get(&batch_uri).header("if-none-match", "\"stale\""), reqwest::StatusCode::OK)
                        }
                        Poll::Batch { .. } => {
                            (client.get(&batch_uri).header("if-none-match", &etag), reqwest::StatusCode::NOT_MODIFIED)
                        }
                    };
                    let response = request.send().await.expect("poll the analyzer");
                    let status = response.status();
                    let body = response.bytes().await.expect("read the answer");
                    assert_eq!(status, expected, "{}", String::from_utf8_lossy(&body));
                    polls += 1;
                }
                polls
            })
        })
        .collect();
    let mut polls = 0;
    for client in clients {
        polls += client.await.expect("client task");
    }
    Row { polls, seconds: start.elapsed().as_secs_f64(), cpu_ns: thread_cpu_ns(task) - cpu_before }
}

pub fn config_poll_benchmark() {
    let (address, task, stop) = start_analyzer();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for i in 0..ROLLOUTS {
            let name = deployment(i);
            let policy = format!(
                "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: {name}}}\nspec: {{deployment: {name}}}\n"
            );
            let response = client
                .post(format!("http://{address}/v1/rollouts"))
                .bearer_auth(TOKEN)
                .body(policy)
                .send()
                .await
                .expect("register a rollout");
            assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{:?}", response.text().await);
        }
        let all = (0..ROLLOUTS).map(deployment).collect::<Vec<_>>().join(",");
        let first = client.get(format!("http://{address}/v1/config?deployments={all}")).send().await.expect("batch poll");
        let etag = first.headers()["etag"].to_str().expect("ascii ETag").to_string();
        let size = first.bytes().await.expect("batch answer").len();
        println!(
            "\nconfig polls: {ROLLOUTS} rollouts, analyzer API on one thread, {CONNECTIONS} keep-alive clients, \
             {ROW_SECONDS} s per row; a fleet round is {FLEET_PROXIES} proxies each polling for all \
             {ROLLOUTS} deployments (batch answer {size} B):"
        );
        println!(
            "  {:44} {:>9} {:>14} {:>20} {:>14} {:>12}",
            "", "polls/s", "CPU µs/poll", "CPU s/fleet round", "cores at 5 s", "vs baseline"
        );
        let rows = [
            (format!("per deployment, {ROLLOUTS} polls/proxy (baseline)"), Poll::PerDeployment, ROLLOUTS as f64),
            ("batch, every answer 304".to_string(), Poll::Batch { stale_one_in: 0 }, 1.0),
            (format!("batch, 1 in {STALE_ONE_IN} stale (200), rest 304"), Poll::Batch { stale_one_in: STALE_ONE_IN }, 1.0),
            ("batch, every answer 200".to_string(), Poll::Batch { stale_one_in: 1 }, 1.0),
        ];
        let mut baseline = None;
        for (what, poll, polls_per_proxy) in rows {
            let row = run_row(address, &task, poll, &etag).await;
            let round_s = row.cpu_us_per_poll() * 1e-6 * polls_per_proxy * FLEET_PROXIES;
            let baseline_s = *baseline.get_or_insert(round_s);
            println!(
                "  {what:44} {:>9.0} {:>14.1} {:>20.3} {:>14.3} {:>11.1}x",
                row.polls as f64 / row.seconds,
                row.cpu_us_per_poll(),
                round_s,
                round_s / POLL_INTERVAL_S,
                baseline_s / round_s
            );
        }
    });
    let _ = stop.send(());
}
