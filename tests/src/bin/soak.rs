//! `make soak`: the filter, Envoy and the analyzer under sustained load for `SOAK_SECONDS`
//! (default 600), with the canary share stepping up and back all the while. Not in CI.
//!
//! Runs the real analyzer binary (Envoy admin source, `check_interval: 5s`), the real
//! Envoy on the shipped config (`--concurrency 2`, the filter polling every 5 s) and two
//! upstreams that never fail, and saturates Envoy with wrk (`-t2 -c32`, a Lua script
//! sending 100 000 user ids by header, 1 request in 20 anonymous and 1 in 20 by cookie)
//! in back-to-back runs of 30 s. Meanwhile a driver keeps the share moving: the ladder
//! (1, 5, 25, 50, 100 %, 10 s windows) promotes on its own; the first time Envoy applies
//! 50 % the driver sets the share back to 5 %, the second time it rolls back (odd
//! rollouts) or lets the ladder promote to 100 % (even ones), and once a rollout has
//! ended it registers the next. The driver acts only once Envoy has applied the share
//! the analyzer serves for two samples 1 s apart, so Envoy sees and counts every step.
//!
//! Fails (exit 1) on any non-2xx answer or socket error seen by wrk (the upstreams never
//! fail, so each is the filter's or Envoy's); a 4xx or 5xx in Envoy's counters; fewer
//! requests counted by the filter than Envoy received (a VM that failed open); more
//! resets than wrk cuts off ending its runs; a wasm VM reload; a critical or panic line
//! in Envoy's log; Envoy's or the analyzer's RSS growing beyond
//! [`canary_e2e::soak::RSS_GROWTH_LIMIT`] after the 30 s warm-up; the filter's polls
//! outside 0.5-1.5x one per poll interval; a process dying; or no share change applied.
//! Prints a line every 10 s (RSS, share, req/s, polls) and a summary table at the end.
//!
//! `CANARY_ANALYZER_BIN` picks the analyzer build (`make soak` uses the release one).

use canary_analyzer::engine::RolloutStatus;
use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, analyzer_binary, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::soak::{
    PollVerdict, RSS_GROWTH_FLOOR_KIB, RSS_GROWTH_LIMIT, RssVerdict, SETTLED_SAMPLES, WrkTotals, envoy_stat,
    parse_seconds, poll_verdict, prometheus_sum, rss_verdict, share_changes, vm_rss_kib,
};
use canary_e2e::upstream::Upstream;
use canary_e2e::{free_port, rig::DEPLOYMENT};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Envoy worker threads: two, one per core of the machines this runs on.
const CONCURRENCY: u32 = 2;
/// Load before the first RSS sample that counts: V8 compiles the module, every worker
/// creates its VM, and the connection pools, stats and the analyzer's first evidence fill in.
const WARM_UP: Duration = Duration::from_secs(30);
/// RSS (and the progress line) every 10 s.
const RSS_EVERY: Duration = Duration::from_secs(10);
/// The share gauge and the rollout status every second: a step lasts at least 10 s.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// One wrk run; runs follow each other until `SOAK_SECONDS` is used up. 30 s keeps the
/// reconnects rare (each run opens its connections anew) and shows wrk's rate per run.
const SEGMENT_SECONDS: u64 = 30;
/// wrk threads and connections: two threads to keep Envoy's two workers busy; 32
/// connections, `make bench`'s number for saturating one worker, 16 per worker here.
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 32;
/// A request not answered within this counts as a timeout error. 10 s, well above any
/// queueing on a busy shared machine, so a timeout means a stuck request.
const WRK_TIMEOUT_SECONDS: u32 = 10;
/// Distinct user ids the wrk script sends (each sticks to its cohort).
const USERS: u32 = 100_000;
/// Ladder step the driver steps back from (50 %) and to (5 %), in basis points.
const TOP_BP: u32 = 5_000;
const STEP_BACK_BP: u32 = 500;
/// The bearer token the soak's analyzer accepts for registrations and overrides.
const TOKEN: &str = "soak-token";

/// The rollout the driver registers again and again: error rate critical (the upstreams
/// never fail, so no rollback is expected); latency and the split reported only: the
/// soak tests the plumbing under load, and a p99 verdict on a saturated shared machine
/// would judge the machine, not the canary.
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: soak
spec:
  deployment: demo
  ladder:
    - share: 1
    - share: 5
    - share: 25
    - share: 50
    - share: 100
  default_window: 10s
  check_interval: 5s
  # At 1 % of the 4 000-9 000 req/s this machine gives, the canary sees 400-900 requests per window.
  min_requests_per_cohort: 50
  metrics:
    - name: error_rate
      max_relative_increase: 0
      critical: true
    - name: latency_p99
      max_increase_ms: 50
      critical: false
    - name: sample_ratio
      critical: false
";

/// The wrk script: user ids by header (18 in 20 requests), by the `session_user` cookie
/// (1 in 20) or none (1 in 20: the filter's sticky-cookie path); `done()` prints the
/// totals as `soak ...` lines (`canary_e2e::soak::WrkTotals::parse` reads them).
fn wrk_script(dir: &Path) -> PathBuf {
    let text = format!(
        r#"local threads = {{}}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  counter = 0
  statuses = {{}}
  versions = {{}}
end
function request()
  counter = counter + 1
  local user = (counter * 7919 + id * 50021) % {USERS}
  local kind = counter % 20
  if kind == 0 then
    return wrk.format("GET", "/", {{}})
  end
  local uid = string.format("%08x-0000-4000-8000-%012x", user, user)
  if kind == 10 then
    return wrk.format("GET", "/", {{["cookie"] = "session_user=" .. uid}})
  end
  return wrk.format("GET", "/", {{["x-user-id"] = uid}})
end
function response(status, headers, body)
  local s = tostring(status)
  statuses[s] = (statuses[s] or 0) + 1
  local v = headers["x-version"] or "none"
  versions[v] = (versions[v] or 0) + 1
end
function done(summary, latency, requests)
  local s, v = {{}}, {{}}
  for _, t in ipairs(threads) do
    for k, n in pairs(t:get("statuses")) do s[k] = (s[k] or 0) + n end
    for k, n in pairs(t:get("versions")) do v[k] = (v[k] or 0) + n end
  end
  io.write(string.format("soak requests %d\nsoak duration_us %d\n", summary.requests, summary.duration))
  for k, n in pairs(s) do io.write(string.format("soak status %s %d\n", k, n)) end
  for k, n in pairs(v) do io.write(string.format("soak version %s %d\n", k, n)) end
  local e = summary.errors
  io.write(string.format("soak errors connect %d read %d write %d timeout %d\n", e.connect, e.read, e.write, e.timeout))
end
"#
    );
    let path = dir.join("soak.lua");
    std::fs::write(&path, text).expect("write the wrk script");
    path
}

/// One wrk run of `seconds`, killed if it overruns by 30 s.
async fn wrk(script: &Path, listener: SocketAddr, seconds: u64) -> Result<WrkTotals, String> {
    let run = tokio::process::Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{seconds}s"))
        .arg(format!("--timeout={WRK_TIMEOUT_SECONDS}s"))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{listener}/"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(seconds + 30), run)
        .await
        .map_err(|_| format!("wrk did not finish a {seconds} s run within {} s", seconds + 30))?
        .map_err(|e| format!("cannot run wrk ({e}): `apt-get install wrk` (make soak does)"))?;
    if !output.status.success() {
        return Err(format!("wrk exited with {}: {}", output.status, String::from_utf8_lossy(&output.stderr)));
    }
    WrkTotals::parse(&String::from_utf8_lossy(&output.stdout))
}

/// A process's RSS now, KiB; `None` once it has exited (a zombie has no `VmRSS`).
fn rss_kib(pid: u32) -> Option<u64> {
    vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

async fn get_text(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(url).send().await.ok()?.error_for_status().ok()?.text().await.ok()
}

/// Envoy admin `path` (`stats` or `stats/prometheus`) for the stats whose Envoy name
/// matches the regex `filter`.
async fn envoy_admin_stats(http: &reqwest::Client, admin: SocketAddr, path: &str, filter: &str) -> Option<String> {
    let answer = http.get(format!("http://{admin}/{path}")).query(&[("filter", filter)]).send().await.ok()?;
    answer.error_for_status().ok()?.text().await.ok()
}

/// Envoy admin `/stats` lines (`name: value`) matching `filter`.
async fn envoy_stats(http: &reqwest::Client, admin: SocketAddr, filter: &str) -> Option<String> {
    envoy_admin_stats(http, admin, "stats", filter).await
}

/// The share the filter applies now (`canary_applied_share_bp`), basis points.
async fn applied_share(http: &reqwest::Client, admin: SocketAddr) -> Option<u64> {
    let text = envoy_admin_stats(http, admin, "stats/prometheus", "applied_share_bp$").await?;
    Some(prometheus_sum(&text, "canary_applied_share_bp") as u64)
}

/// Requests the filter sent to the analyzer cluster: its config polls.
const POLLS_STAT: &str = "cluster.canary_analyzer.upstream_rq_total";
/// Requests Envoy's listener answered.
const REQUESTS_STAT: &str = "http.ingress.downstream_rq_total";

async fn polls(http: &reqwest::Client, admin: SocketAddr) -> Option<u64> {
    envoy_stat(&envoy_stats(http, admin, &format!("^{POLLS_STAT}$")).await?, POLLS_STAT)
}

async fn requests(http: &reqwest::Client, admin: SocketAddr) -> Option<u64> {
    envoy_stat(&envoy_stats(http, admin, &format!("^{REQUESTS_STAT}$")).await?, REQUESTS_STAT)
}

/// Both processes' RSS at one moment.
struct RssSample {
    /// Seconds since the load started.
    at_s: f64,
    /// KiB; `None`: the process is gone.
    envoy_kib: Option<u64>,
    analyzer_kib: Option<u64>,
}

/// What the sampler and the driver record while the load runs.
#[derive(Default)]
struct Record {
    /// `canary_applied_share_bp` once a second.
    applied: Vec<u64>,
    /// The share the analyzer serves, once a second.
    served: Vec<u64>,
    /// Every 10 s.
    rss: Vec<RssSample>,
    registrations: u64,
    set_shares: u64,
    rollbacks_by_driver: u64,
    /// Rollouts that ended rolled back without the driver asking: a false verdict here.
    automatic_rollbacks: u64,
    promotions_to_full: u64,
    /// Overrides or registrations the analyzer refused, with its answer.
    refused: Vec<String>,
    /// Status reads that failed (analyzer busy or gone).
    status_failures: u64,
}

/// Keeps the share moving (see the module doc) until `stop` is set.
async fn drive(analyzer_url: String, applied_now: Arc<AtomicU64>, record: Arc<Mutex<Record>>, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
    let status_url = format!("{analyzer_url}/v1/rollouts/{DEPLOYMENT}");
    let mut rollouts = 1u64;
    let mut stepped_back = false;
    let mut rolled_back = false;
    // Ticks in a row on which Envoy applied the share the analyzer serves.
    let mut agreeing = 0;
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let status: Option<RolloutStatus> = async { http.get(&status_url).send().await.ok()?.json().await.ok() }.await;
        let Some(status) = status else {
            record.lock().expect("record").status_failures += 1;
            continue;
        };
        let served = u64::from(status.state.share_bp);
        record.lock().expect("record").served.push(served);
        // Act only once Envoy has routed with what the analyzer serves for as many samples
        // as a change needs to count (`SETTLED_SAMPLES`), so every step is seen and counted.
        agreeing = if applied_now.load(Ordering::Relaxed) == served { agreeing + 1 } else { 0 };
        if agreeing < SETTLED_SAMPLES {
            continue;
        }
        let (action, body): (&str, Option<serde_json::Value>) = match status.state.phase {
            RolloutPhase::Promoted | RolloutPhase::RolledBack => ("register", None),
            _ if served == u64::from(TOP_BP) && !stepped_back => (
                "set_share",
                Some(serde_json::json!({"action": "set_share", "share_percent": f64::from(STEP_BACK_BP) / 100.0,
                    "reason": "soak: step back from the top", "actor": "soak"})),
            ),
            _ if served == u64::from(TOP_BP) && rollouts % 2 == 1 && !rolled_back => (
                "rollback",
                Some(serde_json::json!({"action": "rollback", "reason": "soak: back to stable", "actor": "soak"})),
            ),
            _ => continue,
        };
        let request = match &body {
            None => http.post(format!("{analyzer_url}/v1/rollouts")).body(POLICY),
            Some(body) => http.post(format!("{status_url}/override")).json(body),
        };
        agreeing = 0;
        let refusal = match request.bearer_auth(TOKEN).send().await {
            Ok(answer) if answer.status().is_success() => None,
            Ok(answer) => Some(format!("{} {}", answer.status(), answer.text().await.unwrap_or_default())),
            Err(e) => Some(e.to_string()),
        };
        let mut r = record.lock().expect("record");
        if let Some(why) = refusal {
            r.refused.push(format!("{action}: {why}"));
            continue;
        }
        match action {
            "register" => {
                // How the rollout now replaced ended, counted once it is replaced.
                match status.state.phase {
                    RolloutPhase::Promoted => r.promotions_to_full += 1,
                    _ if rolled_back => {}
                    _ => r.automatic_rollbacks += 1,
                }
                r.registrations += 1;
                rollouts += 1;
                stepped_back = false;
                rolled_back = false;
            }
            "set_share" => {
                r.set_shares += 1;
                stepped_back = true;
            }
            _ => {
                r.rollbacks_by_driver += 1;
                rolled_back = true;
            }
        }
    }
}

/// Samples the share gauge every second and RSS every 10 s (printing a progress line)
/// until `stop` is set.
#[allow(clippy::too_many_arguments)]
async fn sample(
    envoy: (u32, SocketAddr),
    analyzer_pid: u32,
    started: Instant,
    polls_at_start: u64,
    applied_now: Arc<AtomicU64>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    let (envoy_pid, admin) = envoy;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    let mut next_rss = Duration::ZERO;
    let mut last_requests: Option<(Instant, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        if let Some(share) = applied_share(&http, admin).await {
            applied_now.store(share, Ordering::Relaxed);
            record.lock().expect("record").applied.push(share);
        }
        let elapsed = started.elapsed();
        if elapsed < next_rss {
            continue;
        }
        next_rss += RSS_EVERY;
        let (envoy_kib, analyzer_kib) = (rss_kib(envoy_pid), rss_kib(analyzer_pid));
        record.lock().expect("record").rss.push(RssSample { at_s: elapsed.as_secs_f64(), envoy_kib, analyzer_kib });
        let now_requests = requests(&http, admin).await;
        let rate = match (last_requests, now_requests) {
            (Some((at, before)), Some(now)) => format!("{:6.0}", (now - before) as f64 / at.elapsed().as_secs_f64()),
            _ => "     -".to_string(),
        };
        last_requests = now_requests.map(|n| (Instant::now(), n));
        let poll_count = polls(&http, admin).await.map_or("-".to_string(), |p| (p - polls_at_start).to_string());
        println!(
            "  {:5.0} s  envoy {:>8}  analyzer {:>8}  share {:>7}  {rate} req/s  polls {poll_count}",
            elapsed.as_secs_f64(),
            mib(envoy_kib),
            mib(analyzer_kib),
            percent(applied_now.load(Ordering::Relaxed)),
        );
    }
}

/// Envoy's own counters at the end of the run.
#[derive(Debug, Default)]
struct EnvoyCounts {
    /// Requests Envoy's listener received (`http.ingress.downstream_rq_total`).
    downstream: u64,
    downstream_4xx: u64,
    downstream_5xx: u64,
    /// Requests the filter counted in `on_log`, every cohort and class.
    filter_counted: u64,
    filter_resets: u64,
    filter_5xx: u64,
    vms_created: u64,
    /// VM reloads after a failure, and failed reloads.
    vm_failures: u64,
}

/// Reads [`EnvoyCounts`] once every request Envoy received has been logged (up to 5 s:
/// the requests wrk cut off finish as resets when their connections close).
async fn envoy_counts(http: &reqwest::Client, admin: SocketAddr) -> EnvoyCounts {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = envoy_stats(http, admin, "^(http\\.ingress\\.downstream_rq_|wasm\\.)").await.unwrap_or_default();
        let filter = envoy_admin_stats(http, admin, "stats/prometheus", "requests_total$").await.unwrap_or_default();
        let class = |class: &str| {
            filter
                .lines()
                .filter(|l| l.starts_with("canary_requests_total{") && l.contains(&format!("class=\"{class}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        let stat = |name: &str| envoy_stat(&stats, name).unwrap_or(0);
        let counts = EnvoyCounts {
            downstream: stat(REQUESTS_STAT),
            downstream_4xx: stat("http.ingress.downstream_rq_4xx"),
            downstream_5xx: stat("http.ingress.downstream_rq_5xx"),
            filter_counted: prometheus_sum(&filter, "canary_requests_total") as u64,
            filter_resets: class("reset"),
            filter_5xx: class("5xx"),
            vms_created: stat("wasm.envoy.wasm.runtime.v8.created"),
            vm_failures: stat("wasm.wasm_canary.vm_reload") + stat("wasm.wasm_canary.vm_reload_failure"),
        };
        if counts.filter_counted == counts.downstream || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The machine's 1-minute load average (`/proc/loadavg`): how busy the shared CPUs were.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_string()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("gone".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn percent(bp: u64) -> String {
    format!("{}.{:02} %", bp / 100, bp % 100)
}

/// `1234567` as `1 234 567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn rss_line(name: &str, verdict: Option<&RssVerdict>, failures: &mut Vec<String>) -> String {
    let Some(v) = verdict else {
        failures.push(format!("{name}: too few RSS samples after warm-up (or the process died)"));
        return format!("  RSS {name:9} not measured");
    };
    if !v.flat {
        failures.push(format!(
            "{name} RSS grew {:+.1} % ({:.1} -> {:.1} MiB) after warm-up: beyond {:.0} % and {} MiB",
            100.0 * v.growth,
            v.start_kib as f64 / 1024.0,
            v.end_kib as f64 / 1024.0,
            100.0 * RSS_GROWTH_LIMIT,
            RSS_GROWTH_FLOOR_KIB / 1024
        ));
    }
    format!(
        "  RSS {name:9} start {:.1} MiB, end {:.1} MiB, max {:.1} MiB ({:+.1} %, later-half slope {:+.0} KiB/min): {}",
        v.start_kib as f64 / 1024.0,
        v.end_kib as f64 / 1024.0,
        v.max_kib as f64 / 1024.0,
        100.0 * v.growth,
        v.slope_kib_per_minute,
        if v.flat { "flat" } else { "GROWING" }
    )
}

async fn run(seconds: u64) -> bool {
    let dir = fresh_dir("soak");
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let analyzer_port = free_port();
    let config = EnvoyConfig::shipped(stable.addr, canary.addr, SocketAddr::from(([127, 0, 0, 1], analyzer_port)));
    let poll_interval_ms = {
        let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, stable.addr);
        config.plugin_config()["analyzer"]["poll_interval_ms"].as_u64().expect("shipped poll_interval_ms")
    };
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, POLICY).expect("write the policy");
    let mut options = AnalyzerOptions::new(dir.join("state"));
    options.port = Some(analyzer_port);
    options.policies = vec![policy_path];
    options.envoy_admin = vec![format!("http://127.0.0.1:{}", config.admin_port)];
    options.token = Some(TOKEN.to_string());
    let mut analyzer = AnalyzerProcess::start(options).await;
    let envoy = Envoy::start(&config, CONCURRENCY).await;
    let envoy_comm = std::fs::read_to_string(format!("/proc/{}/comm", envoy.pid())).unwrap_or_default();
    println!(
        "soak: {seconds} s of load ({} s warm-up), wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} in {SEGMENT_SECONDS} s \
         runs, {USERS} users",
        WARM_UP.as_secs()
    );
    println!(
        "  envoy pid {} ({}) --concurrency {CONCURRENCY}, filter polls every {poll_interval_ms} ms, log {}",
        envoy.pid(),
        envoy_comm.trim(),
        envoy.log.display()
    );
    println!(
        "  analyzer pid {} ({}), check every 5 s, log {}",
        analyzer.pid(),
        analyzer_binary().display(),
        analyzer.log.display()
    );
    println!("  upstreams: stable {}, canary {}; state in {}", stable.addr, canary.addr, dir.display());

    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
    let load_at_start = load_average();
    let polls_at_start = polls(&http, envoy.admin).await.expect("Envoy admin answers the poll count");
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let applied_now = Arc::new(AtomicU64::new(u64::MAX));
    let record = Arc::new(Mutex::new(Record::default()));
    let sampler = tokio::spawn(sample(
        (envoy.pid(), envoy.admin),
        analyzer.pid(),
        started,
        polls_at_start,
        Arc::clone(&applied_now),
        Arc::clone(&record),
        Arc::clone(&stop),
    ));
    let driver = tokio::spawn(drive(analyzer.url(), Arc::clone(&applied_now), Arc::clone(&record), Arc::clone(&stop)));

    let script = wrk_script(&dir);
    let mut totals = WrkTotals::default();
    let mut failures: Vec<String> = Vec::new();
    while started.elapsed().as_secs() + 1 < seconds {
        let left = seconds.saturating_sub(started.elapsed().as_secs());
        match wrk(&script, envoy.listener, left.min(SEGMENT_SECONDS)).await {
            Ok(run) => totals.add(&run),
            Err(e) => {
                failures.push(e);
                break;
            }
        }
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let polls_at_end = polls(&http, envoy.admin).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let _ = driver.await;

    let analyzer_metrics = get_text(&http, &format!("{}/metrics", analyzer.url())).await.unwrap_or_default();
    let counts = envoy_counts(&http, envoy.admin).await;
    let record = std::mem::take(&mut *record.lock().expect("record"));
    let envoy_alive = rss_kib(envoy.pid()).is_some();
    let analyzer_alive = analyzer.is_running();
    let envoy_log = envoy.log_text();
    let envoy_errors = envoy_log.lines().filter(|l| l.contains("[critical]") || l.contains("panicked")).count();
    // The poller logs each share it applies once per Envoy: `share 5.00% -> 25.00%`.
    let logged_changes = envoy_log.lines().filter(|l| l.contains("wasm canary demo: share ")).count();
    drop(envoy);
    drop(analyzer);

    // The series, then the verdicts.
    let series = |pick: fn(&RssSample) -> Option<u64>| -> Vec<(f64, u64)> {
        let after_warm_up = record.rss.iter().filter(|s| s.at_s >= WARM_UP.as_secs_f64());
        after_warm_up.filter_map(|s| Some((s.at_s, pick(s)?))).collect()
    };
    let envoy_rss = series(|s| s.envoy_kib);
    let analyzer_rss = series(|s| s.analyzer_kib);
    for (name, values) in [("envoy", &envoy_rss), ("analyzer", &analyzer_rss)] {
        let text: Vec<String> = values.iter().map(|(_, k)| format!("{:.1}", *k as f64 / 1024.0)).collect();
        println!("RSS {name} MiB after warm-up, every 10 s: {}", text.join(" "));
    }
    if !envoy_alive {
        failures.push("Envoy exited during the soak".to_string());
    }
    if !analyzer_alive {
        failures.push("the analyzer exited during the soak".to_string());
    }
    if envoy_errors > 0 {
        failures.push(format!("{envoy_errors} critical or panic lines in Envoy's log"));
    }
    let mut table = vec![format!(
        "soak summary (Envoy --concurrency {CONCURRENCY}, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {} shared CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )];
    table.push(format!(
        "  duration  {load_seconds:.0} s of load, {} s of it warm-up; load average {load_at_start} at the start, \
         {} at the end",
        WARM_UP.as_secs(),
        load_average()
    ));
    let rate = totals.requests as f64 / load_seconds;
    let version = |v: &str| grouped(totals.versions.get(v).copied().unwrap_or(0));
    table.push(format!(
        "  requests  {} ({rate:.0} req/s): stable {}, canary {}, no x-version {}",
        grouped(totals.requests),
        version("stable"),
        version("canary"),
        version("none")
    ));
    let wrong = totals.failures();
    if wrong.is_empty() {
        table.push("  non-2xx   none (and no socket errors)".to_string());
    } else {
        let text: Vec<String> = wrong.iter().map(|(kind, n)| format!("{kind}: {}", grouped(*n))).collect();
        table.push(format!("  non-2xx   {}", text.join(", ")));
        failures.push(format!("non-2xx answers or socket errors: {}", text.join(", ")));
    }
    if totals.versions.get("none").copied().unwrap_or(0) > 0 {
        failures.push(format!("{} answers carried no x-version (not from an upstream)", version("none")));
    }
    // From the first share the analyzer served on: before its first poll Envoy routes with
    // `initial_share_bp`, a change the analyzer never served.
    let first_served = record.served.first().copied();
    let applied: Vec<u64> =
        record.applied.iter().copied().skip_while(|v| first_served.is_some_and(|f| f != *v)).collect();
    let (applied_changes, applied_raw) = share_changes(&applied);
    let (served_changes, _) = share_changes(&record.served);
    table.push(format!(
        "  shares    {applied_changes} changes applied by Envoy ({applied_raw} raw gauge changes, {logged_changes} \
         logged by the filter, its first answer included), {served_changes} served by the analyzer; \
         {} registrations, {} set_share, {} rollbacks by the driver, {} promoted to 100 %, {} automatic rollbacks",
        record.registrations,
        record.set_shares,
        record.rollbacks_by_driver,
        record.promotions_to_full,
        record.automatic_rollbacks
    ));
    table.push(format!(
        "  envoy     answered {} requests (wrk saw {}: the rest were cut off when a wrk run ended), \
         the filter counted {} ({} reset, {} 5xx); 4xx {}, 5xx {}; wasm VMs created {}, failed {}",
        grouped(counts.downstream),
        grouped(totals.requests),
        grouped(counts.filter_counted),
        grouped(counts.filter_resets),
        grouped(counts.filter_5xx),
        grouped(counts.downstream_4xx),
        grouped(counts.downstream_5xx),
        counts.vms_created,
        counts.vm_failures
    ));
    if counts.downstream_4xx + counts.downstream_5xx + counts.filter_5xx > 0 {
        failures.push("Envoy answered 4xx or 5xx".to_string());
    }
    if counts.filter_counted != counts.downstream {
        failures.push(format!(
            "the filter counted {} requests of the {} Envoy answered: requests passed a failed VM (fail-open)",
            counts.filter_counted, counts.downstream
        ));
    }
    // Each wrk run ends with at most one request in flight per connection, which Envoy
    // logs as a reset (the client went away); more than that is a reset of Envoy's own.
    let runs = (load_seconds / SEGMENT_SECONDS as f64).ceil() as u64;
    if counts.filter_resets > runs * u64::from(WRK_CONNECTIONS) {
        failures.push(format!(
            "{} resets counted by the filter, more than the {} requests wrk cuts off ending {runs} runs",
            counts.filter_resets,
            runs * u64::from(WRK_CONNECTIONS)
        ));
    }
    if counts.vm_failures > 0 {
        failures.push(format!("{} wasm VM failures or reloads", counts.vm_failures));
    }
    if applied_changes == 0 {
        failures.push("Envoy applied no share change".to_string());
    }
    if !record.refused.is_empty() {
        table.push(format!("  refused   {}", record.refused.join("; ")));
    }
    let PollVerdict { polls, expected, per_vm, within_bounds } = match polls_at_end {
        Some(end) => poll_verdict(end - polls_at_start, load_seconds, poll_interval_ms as f64 / 1e3, CONCURRENCY),
        None => poll_verdict(0, load_seconds, poll_interval_ms as f64 / 1e3, CONCURRENCY),
    };
    table.push(format!(
        "  polls     {polls} (expected {expected:.0} = {load_seconds:.0} s / {} s for one poller per Envoy; \
         bounds {:.0}-{:.0}; one per VM would be {per_vm:.0})",
        poll_interval_ms / 1000,
        expected * canary_e2e::soak::POLL_FLOOR_FACTOR,
        expected * canary_e2e::soak::POLL_LIMIT_FACTOR
    ));
    if !within_bounds {
        failures.push(format!("{polls} polls of the analyzer against {expected:.0} expected"));
    }
    table.push(format!(
        "  analyzer  {} checks ({} failed), {} decisions, {} overrides; {} status reads failed",
        prometheus_sum(&analyzer_metrics, "canary_analyzer_checks_total"),
        prometheus_sum(&analyzer_metrics, "canary_analyzer_check_failures_total"),
        prometheus_sum(&analyzer_metrics, "canary_analyzer_decisions_total"),
        prometheus_sum(&analyzer_metrics, "canary_analyzer_overrides_total"),
        record.status_failures
    ));
    table.push(rss_line("envoy", rss_verdict(&envoy_rss).as_ref(), &mut failures));
    table.push(rss_line("analyzer", rss_verdict(&analyzer_rss).as_ref(), &mut failures));
    println!("\n{}", table.join("\n"));
    if failures.is_empty() {
        println!("soak: PASS");
        true
    } else {
        println!("soak: FAIL\n  - {}", failures.join("\n  - "));
        false
    }
}

#[tokio::main]
async fn main() {
    let seconds = match parse_seconds(std::env::var("SOAK_SECONDS").ok().as_deref()) {
        Ok(seconds) => seconds,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let passed = run(seconds).await;
    std::process::exit(if passed { 0 } else { 1 });
}
