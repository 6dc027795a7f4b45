//! The analyzer's own cost with [`ROLLOUTS`] rollouts in progress at once, each checked
//! every [`CHECK_INTERVAL`] (the policy default, not scaled), against a simulated fleet.
//!
//! The fleet is [`FLEET_ENVOYS`] Envoy admin endpoints served by one stub server in this
//! process (`http://127.0.0.1:PORT/envoy-N`, each an `--envoy-admin` target): each
//! answers `GET /stats?format=json&histogram_buckets=detailed&filter=…` as Envoy 1.40
//! does, reading the deployment from the `filter` regex the analyzer sends, with that
//! deployment's canary, control, forced and excluded counters per status class and its
//! four latency histograms in Envoy's own bins (`detailed_json`: a log-normal service),
//! cumulative and growing with the seconds since the fleet started. Every rollout scrapes
//! every target, as with any `--envoy-admin` list.
//!
//! The real analyzer binary runs as a child process. The rollouts are registered through
//! the API over one check interval ([`CHECK_INTERVAL`] / [`ROLLOUTS`] apart), so their
//! checks are spread as rollouts started at different times are; every rollout's first
//! check only takes the baselines. The measured span starts one interval after the last
//! registration (every rollout has its baselines) and lasts [`MEASURED_CYCLES`] intervals:
//! CPU from `/proc/<pid>/stat`, checks from the analyzer's `/metrics`, and every
//! status confirms its last check read data. Then the analyzer is restarted on the same
//! state: the resumed rollouts' first checks (their first history point) should be spread over the
//! second interval after the start, not all due in the same second.

use super::deployment_name;
use super::histogram_path::detailed_json;
use super::process_usage::{CpuMeter, open_fds, status_mib};
use canary_analyzer::engine::RolloutStatus;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, fresh_dir};
use canary_e2e::http_server;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rollouts in progress at once.
const ROLLOUTS: u32 = 1_000;
/// Envoys in the simulated fleet: the admin targets every rollout scrapes
/// (`BENCH_FLEET_ENVOYS` sets another number, to see what one more costs).
const FLEET_ENVOYS: usize = 10;
/// The policy default.
const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Check cycles measured: three, as asked of the figure.
const MEASURED_CYCLES: u32 = 3;
/// The target: under 5 % of a core.
const CPU_GOAL: f64 = 0.05;
/// After a restart, how long past two intervals the last first check may end: the
/// check's deadline (3 s) and a second for the loop's tick and the answer.
const RESTART_ALLOWANCE: Duration = Duration::from_secs(4);
const TOKEN: &str = "bench-admin-token-0123456789";

/// The deployment a `filter` parameter selects (`…deployment\.svc\-0042\.)`), as its index.
fn filtered_deployment(query: &str) -> Option<u32> {
    let filter = query.split('&').find_map(|pair| pair.strip_prefix("filter="))?;
    let decoded = percent_decode(filter);
    let (_, rest) = decoded.split_once(r"deployment\.")?;
    let (escaped, _) = rest.split_once(r"\.")?;
    escaped.replace('\\', "").strip_prefix("svc-")?.parse().ok()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last answer made for each deployment, with the second it was made in.
type AnswerCache = Mutex<HashMap<u32, (u64, Arc<String>)>>;

/// Serves the fleet's admin endpoints; answers are cached per deployment and second
/// (every Envoy of the fleet answers the same), so the stub's own CPU stays small.
async fn start_fleet() -> (String, Arc<Mutex<u64>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fleet");
    let base = format!("http://{}", listener.local_addr().expect("fleet address"));
    let started = Instant::now();
    let cache: Arc<AnswerCache> = Arc::default();
    let scrapes = Arc::new(Mutex::new(0u64));
    let counted = scrapes.clone();
    http_server::spawn(listener, move |request| {
        let (cache, counted) = (cache.clone(), counted.clone());
        async move {
            let query = request.uri().query().unwrap_or_default().to_string();
            let Some(d) = filtered_deployment(&query).filter(|d| *d < ROLLOUTS) else {
                return http_server::response(404, &[], format!("no deployment in {query}"));
            };
            let second = started.elapsed().as_secs();
            let cached = cache.lock().expect("fleet cache").get(&d).filter(|(at, _)| *at == second).cloned();
            let body = match cached {
                Some((_, body)) => body,
                None => {
                    let body = Arc::new(detailed_json(d, second));
                    cache.lock().expect("fleet cache").insert(d, (second, body.clone()));
                    body
                }
            };
            *counted.lock().expect("scrape count") += 1;
            http_server::response(200, &[("content-type", "application/json")], body.as_bytes().to_vec())
        }
    });
    (base, scrapes)
}

fn policy(d: u32) -> String {
    let name = deployment_name(d);
    format!(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: {name}}}\nspec:\n  \
         deployment: {name}\n  check_interval: {}s\n  default_window: 1h\n  metrics:\n    \
         - {{name: error_rate, critical: true}}\n    - {{name: latency_p99, max_increase_ms: 50, critical: true}}\n    \
         - {{name: latency_p50, max_increase_ms: 10, critical: false}}\n    \
         - {{name: sample_ratio, critical: false}}\n",
        CHECK_INTERVAL.as_secs()
    )
}

/// `canary_analyzer_checks_total` and `canary_analyzer_check_failures_total` from `/metrics`.
async fn check_counts(client: &reqwest::Client, base: &str) -> (u64, u64) {
    let text = client.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
    };
    (value("canary_analyzer_checks_total"), value("canary_analyzer_check_failures_total"))
}

/// Every rollout's status, from the list.
async fn list(client: &reqwest::Client, base: &str) -> Vec<RolloutStatus> {
    client.get(format!("{base}/v1/rollouts")).send().await.expect("list").json().await.expect("list json")
}

pub fn fleet_check_benchmark() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let fleet_envoys = std::env::var("BENCH_FLEET_ENVOYS").ok().and_then(|n| n.parse().ok()).unwrap_or(FLEET_ENVOYS);
    runtime.block_on(async {
        let (fleet, scrapes) = start_fleet().await;
        let mut options = AnalyzerOptions::new(fresh_dir("bench-fleet-checks"));
        options.token = Some(TOKEN.to_string());
        options.envoy_admin = (0..fleet_envoys).map(|n| format!("{fleet}/envoy-{n}")).collect();
        let analyzer = AnalyzerProcess::start(options).await;
        let (pid, base) = (analyzer.pid(), analyzer.url());
        let client = reqwest::Client::new();
        println!(
            "\n{ROLLOUTS} rollouts checked every {} s, each scraping a simulated fleet of {fleet_envoys} Envoy admin \
             endpoints (a stub in this process, {:.0} scrapes/s), real analyzer as a child process:",
            CHECK_INTERVAL.as_secs(),
            f64::from(ROLLOUTS) * fleet_envoys as f64 / CHECK_INTERVAL.as_secs_f64()
        );

        // Registrations spread over one interval, so the checks are too.
        let registering = Instant::now();
        let registration_cpu = CpuMeter::start(pid);
        for d in 0..ROLLOUTS {
            tokio::time::sleep_until((registering + CHECK_INTERVAL * d / ROLLOUTS).into()).await;
            let response = client
                .post(format!("{base}/v1/rollouts"))
                .bearer_auth(TOKEN)
                .body(policy(d))
                .send()
                .await
                .expect("register");
            assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{:?}", response.text().await);
        }
        let (registration_cpu_s, registration_s) = registration_cpu.read();

        // One more interval: every rollout has taken its baselines.
        tokio::time::sleep(CHECK_INTERVAL).await;
        let (checks_before, failures_before) = check_counts(&client, &base).await;
        let scrapes_before = *scrapes.lock().expect("scrapes");
        let meter = CpuMeter::start(pid);
        tokio::time::sleep(CHECK_INTERVAL * MEASURED_CYCLES).await;
        let (cpu_s, seconds) = meter.read();
        let (checks_after, failures_after) = check_counts(&client, &base).await;
        let scraped = *scrapes.lock().expect("scrapes") - scrapes_before;
        let (checks, failures) = (checks_after - checks_before, failures_after - failures_before);
        let (peak_mib, rss_mib, fds) = (status_mib(pid, "VmHWM"), status_mib(pid, "VmRSS"), open_fds(pid));

        let statuses = list(&client, &base).await;
        let with_data = statuses
            .iter()
            .filter(|s| s.history.last().is_some_and(|h| h.canary_requests > 0 && h.control_requests > 0))
            .count();
        let with_failed_targets = statuses.iter().filter(|s| !s.failed_targets.is_empty()).count();
        let finished = statuses.iter().filter(|s| s.state.is_finished()).count();
        let cores = cpu_s / seconds;
        println!(
            "  registration: {ROLLOUTS} rollouts over {registration_s:.1} s, {registration_cpu_s:.2} CPU s \
             ({:.2} ms each)",
            registration_cpu_s * 1e3 / f64::from(ROLLOUTS)
        );
        println!(
            "  {MEASURED_CYCLES} cycles ({seconds:.0} s): {checks} checks ({failures} failed), {scraped} scrapes; \
             analyzer CPU {:.2} % of one core (goal < {:.0} %), {:.2} CPU s per {} s cycle, {:.2} ms per check, \
             {:.0} µs per scrape",
            100.0 * cores,
            100.0 * CPU_GOAL,
            cpu_s / f64::from(MEASURED_CYCLES),
            CHECK_INTERVAL.as_secs(),
            cpu_s * 1e3 / checks as f64,
            cpu_s * 1e6 / scraped as f64,
        );
        println!("  memory: peak RSS (VmHWM) {peak_mib:.1} MiB, RSS {rss_mib:.1} MiB; {fds} open file descriptors");
        println!(
            "  after the span: {with_data} of {ROLLOUTS} rollouts had data in their last check, {with_failed_targets} \
             had a failed target, {finished} had finished"
        );
        if let Some(failed) = statuses.iter().find(|s| !s.failed_targets.is_empty()) {
            println!("  e.g. {}: {:?}", failed.deployment, failed.failed_targets);
        }
        let expected = u64::from(ROLLOUTS * MEASURED_CYCLES);
        assert!(checks.abs_diff(expected) <= u64::from(ROLLOUTS) / 10, "{checks} checks, {expected} expected");
        assert_eq!(with_data, ROLLOUTS as usize, "every rollout's last check read the fleet's counts");
        assert_eq!(finished, 0, "no rollout finished: {ROLLOUTS} in progress throughout");

        // A restart: the resumed rollouts' first checks, spread over the second interval.
        let analyzer = analyzer.restart().await;
        let (pid, base) = (analyzer.pid(), analyzer.url());
        let restarted_ms = canary_analyzer::engine::now_ms();
        let meter = CpuMeter::start(pid);
        tokio::time::sleep(CHECK_INTERVAL * 2 + RESTART_ALLOWANCE).await;
        let (cpu_s, seconds) = meter.read();
        let mut firsts: Vec<u64> =
            // History is kept in memory only: its first point after the restart is the first check.
            list(&client, &base).await.iter().filter_map(|s| s.history.first()).map(|h| h.at_ms).filter(|at| *at > restarted_ms).collect();
        firsts.sort_unstable();
        let busiest_second = firsts
            .iter()
            .map(|at| {
                firsts.partition_point(|later| *later < at + 1_000) - firsts.partition_point(|earlier| earlier < at)
            })
            .max()
            .unwrap_or(0);
        let (_, failures) = check_counts(&client, &base).await;
        let after_start = |at: Option<&u64>| at.map_or(f64::NAN, |at| (at - restarted_ms) as f64 / 1e3);
        println!(
            "  after a restart: {} rollouts first checked {:.1}-{:.1} s after the start, at most {busiest_second} \
             in one second, {failures} failed; {:.2} CPU s over {seconds:.0} s; peak RSS {:.1} MiB, {} open file \
             descriptors",
            firsts.len(),
            after_start(firsts.first()),
            after_start(firsts.last()),
            cpu_s,
            status_mib(pid, "VmHWM"),
            open_fds(pid),
        );
        assert_eq!(firsts.len(), ROLLOUTS as usize, "every resumed rollout checked within two intervals");
        drop(analyzer);
    });
}
