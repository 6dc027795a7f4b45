//! The batch config endpoint under a whole fleet's polls: [`PROXIES`] proxies, each
//! polling `GET /v1/config` for [`DEPLOYMENTS`] deployments every [`POLL_INTERVAL`]
//! (the filter's default), i.e. [`PROXIES`] / 5 s = 2 000 polls/s offered to the real
//! analyzer binary (a child process, release build under `make bench`).
//!
//! The load is open-loop: poll `k` is due at `k` × 5 s / [`PROXIES`] and goes to proxy
//! `k mod PROXIES`, over [`CONNECTIONS`] keep-alive connections from a tokio client in
//! this process (each connection carries the polls of 1 / [`CONNECTIONS`] of the
//! proxies, one at a time). Every proxy holds the `ETag` of its last answer, seeded
//! with the current one (a fleet that has been polling for a while), so answers are
//! `304` until a rollout's share changes: then each proxy gets one `200` with the new
//! tag on its next poll. Every answer is checked: a `200` must carry a tag other than
//! the one sent. The client shares the machine's cores with the analyzer.
//!
//! Phases, each measured on its own from `/proc/<pid>/stat` of the analyzer:
//! 1. saturation: the connections poll back to back (current tags: `304`) for
//!    [`SATURATION_SECONDS`]: the polls/s the analyzer sustains here;
//! 2. the fleet at 2 000 polls/s for [`FLEET_SECONDS`], with a `set_share` override on
//!    one rollout [`FIRST_CHANGE_AFTER`] in and every [`SHARE_CHANGE_EVERY`] after
//!    (a change every 30 s: ten rollouts in flight with five-minute steps): CPU, p50/p99;
//! 3. the same offered rate of per-deployment polls (`/v1/rollouts/{d}/config`), from
//!    which the per-deployment fleet (100 × the requests, 200 000/s: more than this
//!    machine serves) is derived as CPU per poll × its rate;
//! 4. the same offered rate of batch polls without a tag (every answer `200`).

use super::config_poll::deployment;
use super::process_usage::{CpuMeter, cpu_seconds};
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, analyzer_binary, fresh_dir};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The simulated fleet.
const PROXIES: u64 = 10_000;
/// Deployments each proxy serves, named in every batch poll; one rollout each.
const DEPLOYMENTS: usize = 100;
/// The filter's default poll interval.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Keep-alive connections carrying the fleet's polls: 40 polls/s each at 2 000/s
/// offered, 25 ms apart, far more than a `304` takes.
const CONNECTIONS: u64 = 50;
/// Length of the back-to-back phase: tens of thousands of polls.
const SATURATION_SECONDS: u64 = 5;
/// Length of the fleet phase: six fleet rounds, one share change among them.
const FLEET_SECONDS: u64 = 30;
/// Length of each comparison phase at the same offered rate.
const COMPARISON_SECONDS: u64 = 8;
/// When the first share change of the fleet phase goes out.
const FIRST_CHANGE_AFTER: Duration = Duration::from_secs(2);
/// One rollout among a proxy's deployments changes share this often.
const SHARE_CHANGE_EVERY: Duration = Duration::from_secs(30);
const TOKEN: &str = "bench-admin-token-0123456789";

/// What the connections send.
#[derive(Clone, Copy, PartialEq)]
enum Poll {
    /// The batch with the proxy's last tag.
    Conditional,
    /// The batch without a tag (every answer `200`).
    Unconditional,
    /// `/v1/rollouts/{deployment}/config`, cycling through the deployments.
    PerDeployment,
}

/// How the polls are paced.
#[derive(Clone, Copy)]
enum Pace {
    /// Each poll at its due time: [`PROXIES`] per [`POLL_INTERVAL`].
    Fleet,
    /// Back to back.
    Saturate,
}

/// Where the polls go: the analyzer's base URL and the batch poll's URI.
struct Target {
    base: String,
    batch_uri: String,
}

/// One phase: what is sent, how it is paced, for how long, with share changes or not.
#[derive(Clone, Copy)]
struct PhasePlan {
    poll: Poll,
    pace: Pace,
    seconds: u64,
    changes: bool,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    polls: u64,
    changed: u64,
    latencies_us: Vec<u32>,
}

struct Phase {
    tally: Tally,
    seconds: f64,
    analyzer_cpu_s: f64,
    client_cpu_s: f64,
}

impl Phase {
    fn polls_per_second(&self) -> f64 {
        self.tally.polls as f64 / self.seconds
    }

    fn cores(&self) -> f64 {
        self.analyzer_cpu_s / self.seconds
    }

    fn cpu_us_per_poll(&self) -> f64 {
        self.analyzer_cpu_s * 1e6 / self.tally.polls as f64
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.tally.latencies_us.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
        sorted.get(index).map_or(f64::NAN, |us| f64::from(*us) / 1e3)
    }
}

/// One connection's polls until `deadline`: proxies `connection`, `connection + CONNECTIONS`, ….
async fn connection(
    target: Arc<Target>,
    index: u64,
    plan: PhasePlan,
    tags: Vec<String>,
    start: Instant,
    deadline: Instant,
) -> (Tally, Vec<String>) {
    let (poll, pace) = (plan.poll, plan.pace);
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
    let mut tags = tags;
    let mut tally = Tally::default();
    let step = POLL_INTERVAL / PROXIES as u32;
    for j in 0u64.. {
        let k = index + j * CONNECTIONS;
        if let Pace::Fleet = pace {
            tokio::time::sleep_until((start + step * k as u32).into()).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let proxy = (j as usize) % tags.len();
        let request = match poll {
            Poll::Conditional => client.get(&target.batch_uri).header("if-none-match", &tags[proxy]),
            Poll::Unconditional => client.get(&target.batch_uri),
            Poll::PerDeployment => {
                client.get(format!("{}/v1/rollouts/{}/config", target.base, deployment(k as usize % DEPLOYMENTS)))
            }
        };
        let sent = Instant::now();
        let response = request.send().await.expect("poll the analyzer");
        let status = response.status().as_u16();
        let tag = response.headers().get("etag").and_then(|t| t.to_str().ok()).map(str::to_string);
        let body = response.bytes().await.expect("read the answer");
        tally.latencies_us.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        tally.polls += 1;
        match (poll, status) {
            (Poll::Conditional, 304) => {}
            (Poll::Conditional, 200) => {
                let tag = tag.expect("a 200 carries an ETag");
                assert_ne!(tag, tags[proxy], "a 200 answered the current tag");
                tags[proxy] = tag;
                tally.changed += 1;
            }
            (Poll::Unconditional | Poll::PerDeployment, 200) => tally.changed += 1,
            (_, status) => panic!("poll answered {status}: {}", String::from_utf8_lossy(&body)),
        }
    }
    (tally, tags)
}

/// Registers the rollouts, one ladder step an hour so nothing moves on its own.
async fn register(client: &reqwest::Client, base: &str) {
    for i in 0..DEPLOYMENTS {
        let name = deployment(i);
        let policy = format!(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: {name}}}\n\
             spec: {{deployment: {name}, default_window: 1h}}\n"
        );
        let response =
            client.post(format!("{base}/v1/rollouts")).bearer_auth(TOKEN).body(policy).send().await.expect("register");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{:?}", response.text().await);
    }
}

/// Sets rollout `index`'s share to `percent`: every proxy's next batch answer is a `200`.
async fn change_share(client: &reqwest::Client, base: &str, index: usize, percent: f64) {
    let body = serde_json::json!({"action": "set_share", "share_percent": percent, "reason": "bench share change"});
    let response = client
        .post(format!("{base}/v1/rollouts/{}/override", deployment(index)))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("override");
    assert!(response.status().is_success(), "set_share: {:?}", response.text().await);
}

/// Runs one phase over all connections; the proxies' tags carry over to the next.
async fn run_phase(pid: u32, target: &Arc<Target>, tags: &mut Vec<Vec<String>>, plan: PhasePlan) -> Phase {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(plan.seconds);
    let meter = CpuMeter::start(pid);
    let client_cpu = cpu_seconds(std::process::id());
    let tasks: Vec<_> = std::mem::take(tags)
        .into_iter()
        .enumerate()
        .map(|(index, tags)| tokio::spawn(connection(target.clone(), index as u64, plan, tags, start, deadline)))
        .collect();
    if plan.changes {
        let client = reqwest::Client::new();
        let mut at = start + FIRST_CHANGE_AFTER;
        let mut n = 0;
        while at < deadline {
            tokio::time::sleep_until(at.into()).await;
            change_share(&client, &target.base, n % DEPLOYMENTS, [2.0, 3.0][n % 2]).await;
            n += 1;
            at += SHARE_CHANGE_EVERY;
        }
    }
    let mut tally = Tally::default();
    for task in tasks {
        let (part, connection_tags) = task.await.expect("connection task");
        tally.polls += part.polls;
        tally.changed += part.changed;
        tally.latencies_us.extend(part.latencies_us);
        tags.push(connection_tags);
    }
    let (analyzer_cpu_s, seconds) = meter.read();
    Phase { tally, seconds, analyzer_cpu_s, client_cpu_s: cpu_seconds(std::process::id()) - client_cpu }
}

pub fn fleet_poll_benchmark() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut options = AnalyzerOptions::new(fresh_dir("bench-fleet-polls"));
        options.token = Some(TOKEN.to_string());
        // No Envoy: each rollout's check every 30 s finds nothing (a refused connection).
        options.envoy_admin = vec!["http://127.0.0.1:1".to_string()];
        let analyzer = AnalyzerProcess::start(options).await;
        let (pid, base) = (analyzer.pid(), analyzer.url());
        let client = reqwest::Client::new();
        register(&client, &base).await;
        let names = (0..DEPLOYMENTS).map(deployment).collect::<Vec<_>>().join(",");
        let target = Arc::new(Target { batch_uri: format!("{base}/v1/config?deployments={names}"), base });
        let first = client.get(&target.batch_uri).send().await.expect("batch poll");
        let tag = first.headers()["etag"].to_str().expect("ascii ETag").to_string();
        let size = first.bytes().await.expect("batch answer").len();
        let per_connection = (PROXIES / CONNECTIONS) as usize;
        let mut tags = vec![vec![tag; per_connection]; CONNECTIONS as usize];

        let offered = PROXIES as f64 / POLL_INTERVAL.as_secs_f64();
        println!(
            "\nfleet config polls: {PROXIES} proxies x {DEPLOYMENTS} deployments, one batch poll each every {} s \
             ({offered:.0} polls/s offered), real analyzer ({}) as a child process, {CONNECTIONS} keep-alive \
             connections from a tokio client in this process (both on this machine's {} cores); batch answer {size} B:",
            POLL_INTERVAL.as_secs(),
            analyzer_binary().display(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        let plan = |poll, pace, seconds, changes| PhasePlan { poll, pace, seconds, changes };
        let saturation =
            run_phase(pid, &target, &mut tags, plan(Poll::Conditional, Pace::Saturate, SATURATION_SECONDS, false))
                .await;
        assert_eq!(saturation.tally.changed, 0, "no share changed: every answer 304");
        let fleet = run_phase(pid, &target, &mut tags, plan(Poll::Conditional, Pace::Fleet, FLEET_SECONDS, true)).await;
        let per_deployment =
            run_phase(pid, &target, &mut tags, plan(Poll::PerDeployment, Pace::Fleet, COMPARISON_SECONDS, false)).await;
        let unconditional =
            run_phase(pid, &target, &mut tags, plan(Poll::Unconditional, Pace::Fleet, COMPARISON_SECONDS, false)).await;

        println!(
            "  {:58} {:>9} {:>8} {:>11} {:>9} {:>9} {:>7} {:>10}",
            "", "polls/s", "200s", "analyzer", "CPU µs", "p50 ms", "p99 ms", "client"
        );
        let row = |what: &str, phase: &Phase| {
            println!(
                "  {what:58} {:>9.0} {:>7.1}% {:>6.3} core {:>9.1} {:>9.2} {:>7.2} {:>5.2} core",
                phase.polls_per_second(),
                100.0 * phase.tally.changed as f64 / phase.tally.polls as f64,
                phase.cores(),
                phase.cpu_us_per_poll(),
                phase.percentile_ms(0.5),
                phase.percentile_ms(0.99),
                phase.client_cpu_s / phase.seconds,
            );
        };
        row(&format!("batch, back to back ({SATURATION_SECONDS} s, all 304): sustained"), &saturation);
        row(
            &format!(
                "batch, fleet at {offered:.0}/s ({FLEET_SECONDS} s, share change every {} s)",
                SHARE_CHANGE_EVERY.as_secs()
            ),
            &fleet,
        );
        row(&format!("per deployment at {offered:.0}/s ({COMPARISON_SECONDS} s)"), &per_deployment);
        row(&format!("batch without ETag at {offered:.0}/s ({COMPARISON_SECONDS} s, all 200)"), &unconditional);
        let per_deployment_fleet = per_deployment.cpu_us_per_poll() * 1e-6 * offered * DEPLOYMENTS as f64;
        println!(
            "  the fleet at {offered:.0} batch polls/s costs the analyzer {:.3} of a core; polling per deployment \
             ({:.0}/s, derived from CPU per poll) would cost {per_deployment_fleet:.2} cores: {:.0}x; every batch \
             answered 200: {:.3} core, {:.1}x",
            fleet.cores(),
            offered * DEPLOYMENTS as f64,
            per_deployment_fleet / fleet.cores(),
            unconditional.cores(),
            unconditional.cores() / fleet.cores(),
        );
        assert!(
            fleet.polls_per_second() > 0.95 * offered,
            "the client fell behind: {:.0} polls/s of {offered:.0}",
            fleet.polls_per_second()
        );
        drop(analyzer);
    });
}
