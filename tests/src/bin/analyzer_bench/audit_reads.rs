//! 3. **`/config` latency under audit reads.** The filters poll `GET …/config` with a
//!    1 s timeout, from the same API that serves `GET …/audit` to people, the dashboard
//!    and `status --watch`. On a [`RECORDS`]-record audit log (one deployment, records
//!    of ~2.9 kB like a real rollback's: the policy and [`ROWS`] comparison rows, ~8.6 MB),
//!    one client times back-to-back `/config` requests for [`PHASE`] alone (the baseline),
//!    then again while [`READERS`] clients read `/audit` in a loop (default page), in the
//!    same run. The analyzer is the library's API on a 2-worker runtime, as the binary
//!    runs on a 2-core machine; it sees only HTTP, so this file also runs against an
//!    older build's library for a before/after figure.

use canary_analyzer::api::{self, AppState};
use canary_analyzer::audit::RolloutStore;
use canary_analyzer::auth::Authenticator;
use canary_analyzer::engine::{Engine, SourceSettings};
use canary_analyzer::ladder::{Actor, Decision, OverrideAction, RolloutState, human_override};
use canary_analyzer::notify::Notifier;
use canary_analyzer::policy::RolloutPolicy;
use canary_analyzer::stats::{ComparisonRow, DifferenceScale, Interval, RowOrigin, ValueUnit, Verdict};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The log: 3001 records, 8.6 MB.
const RECORDS: u64 = 3_001;
/// Comparison rows per record: a real report's (error rate, non-success, sample ratio, four latencies, one outcome).
const ROWS: usize = 8;
/// Clients reading `/audit` in a loop, as in the issue.
const READERS: usize = 6;
/// How long each phase polls `/config` back to back at least: thousands of samples (a
/// p99 with tens above it), and hundreds of `/audit` answers overlapping the loaded one.
const PHASE: Duration = Duration::from_secs(3);
/// Polls per phase at least, however slow they are: a p99 with two samples above it.
const MIN_POLLS: usize = 200;
/// The analyzer binary's runtime on the 2-core machine the figures come from.
const SERVER_WORKERS: usize = 2;
const T0: u64 = 1_700_000_000_000;

fn policy() -> RolloutPolicy {
    let text = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: bench}\nspec:\n  \
                deployment: checkout\n  metrics:\n    - {name: error_rate, critical: true}\n    \
                - {name: latency_p99, max_increase_ms: 50}\n";
    RolloutPolicy::from_yaml(text).unwrap_or_else(|e| panic!("bench policy: {e}"))
}

fn rows() -> Vec<ComparisonRow> {
    (0..ROWS)
        .map(|i| ComparisonRow {
            metric: format!("latency_p{}_us", 50 + i),
            canary: Some(123_456.789 + i as f64),
            control: Some(120_001.5),
            absolute_difference: Some(3_455.289),
            relative_difference: Some(0.028_793_1),
            interval: Some(Interval { lo: Some(-0.012_345_678), hi: Some(0.071_234_567) }),
            interval_scale: DifferenceScale::Relative,
            p_value: Some(0.412_345_678),
            verdict: Verdict::NoDifference,
            unit: ValueUnit::Microseconds,
            origin: RowOrigin::BuiltIn,
        })
        .collect()
}

/// Writes the log through the store: a registration, then pauses and resumes.
fn build_log(dir: &std::path::Path) -> u64 {
    let (mut store, _) = RolloutStore::open(dir).unwrap_or_else(|e| panic!("store: {e}"));
    let policy = policy();
    let mut state = RolloutState::start(&policy, 0, T0);
    let start = Decision::start(&state, Actor::Analyzer, "bench");
    store.commit(T0, &policy, &start, None, &state).unwrap_or_else(|e| panic!("commit: {e}"));
    let by = Actor::human("bench").unwrap_or_else(|e| panic!("actor: {e}")).into();
    for i in 1..RECORDS {
        let action = if i % 2 == 1 { OverrideAction::Pause } else { OverrideAction::Resume };
        let decision = human_override(&policy, &state, &action, &by, "bench: a reason of ordinary length", rows())
            .unwrap_or_else(|e| panic!("override: {e}"));
        let after = state.next(&decision, T0 + i).unwrap_or_else(|e| panic!("next: {e}"));
        store.commit(T0 + i, &policy, &decision, Some(&state), &after).unwrap_or_else(|e| panic!("commit: {e}"));
        state = after;
    }
    std::fs::metadata(store.audit_path()).map(|m| m.len()).unwrap_or(0)
}

/// Times sequential `/config` requests for `phase` and [`MIN_POLLS`] at least; sorted, in microseconds.
async fn time_polls(client: &reqwest::Client, url: &str, phase: Duration) -> Vec<u64> {
    let mut took = Vec::new();
    let end = Instant::now() + phase;
    while Instant::now() < end || took.len() < MIN_POLLS {
        let start = Instant::now();
        let answer = client.get(url).send().await.and_then(|r| r.error_for_status());
        let body = match answer {
            Ok(answer) => answer.bytes().await,
            Err(e) => panic!("GET {url}: {e}"),
        };
        assert!(body.is_ok_and(|b| !b.is_empty()), "GET {url}: empty answer");
        took.push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    took.sort_unstable();
    took
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(0)
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1_000.0)
}

pub fn audit_read_benchmark() {
    let dir = std::env::temp_dir().join(format!("canary-bench-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let bytes = build_log(&dir);
    println!(
        "\n/config latency under audit reads: {RECORDS} records, {:.1} MB in audit.jsonl (written in {:.1} s), \
         {READERS} readers of /audit, {} s of polls per phase, server on {SERVER_WORKERS} workers",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        PHASE.as_secs()
    );
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVER_WORKERS)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("server runtime: {e}"));
    let source = SourceSettings::EnvoyAdmin {
        admin_urls: vec!["http://127.0.0.1:1".into()],
        max_body_bytes: canary_analyzer::source::DEFAULT_MAX_BODY_BYTES,
    };
    let engine = Engine::open(&dir, source, Notifier::new(Vec::new())).unwrap_or_else(|e| panic!("engine: {e}"));
    let state = AppState { engine: Arc::new(engine), auth: Arc::new(Authenticator::without_tokens()) };
    let listener =
        server.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap_or_else(|e| panic!("bind: {e}"));
    let base = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("address: {e}")));
    server.spawn(api::run(listener, state, std::future::pending()));

    let clients = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("client runtime: {e}"));
    let (config_url, audit_url) =
        (format!("{base}/v1/rollouts/checkout/config"), format!("{base}/v1/rollouts/checkout/audit"));
    let (baseline, loaded, reads, audit_bytes, read_s) = clients.block_on(async {
        let poller = reqwest::Client::new();
        time_polls(&poller, &config_url, PHASE / 10).await; // warm-up: connections, caches
        let baseline = time_polls(&poller, &config_url, PHASE).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (reads, audit_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (stop, reads, audit_bytes, url) =
                    (Arc::clone(&stop), Arc::clone(&reads), Arc::clone(&audit_bytes), audit_url.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(answer) = client.get(&url).send().await
                            && let Ok(body) = answer.bytes().await
                        {
                            reads.fetch_add(1, Ordering::Relaxed);
                            audit_bytes.store(body.len() as u64, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        // Let every reader get a request in flight before timing.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (reads_before, loaded_start) = (reads.load(Ordering::Relaxed), Instant::now());
        let loaded = time_polls(&poller, &config_url, PHASE).await;
        let read_s = loaded_start.elapsed().as_secs_f64();
        let reads_done = reads.load(Ordering::Relaxed).saturating_sub(reads_before);
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            let _ = reader.await;
        }
        (baseline, loaded, reads_done, audit_bytes.load(Ordering::Relaxed), read_s)
    });
    println!(
        "  /audit answers {:.0} kB; the readers got {reads} answers in {read_s:.1} s ({:.0}/s)",
        audit_bytes as f64 / 1e3,
        reads as f64 / read_s
    );
    println!("  {:<28} {:>8} {:>10} {:>10} {:>10}", "/config latency", "polls", "median", "p99", "max");
    for (name, sorted) in [("alone (baseline)", &baseline), ("with 6 readers of /audit", &loaded)] {
        println!(
            "  {name:<28} {:>8} {:>10} {:>10} {:>10}",
            sorted.len(),
            ms(quantile(sorted, 0.5)),
            ms(quantile(sorted, 0.99)),
            ms(sorted.last().copied().unwrap_or(0))
        );
    }
    let ratio = |q: f64| quantile(&loaded, q) as f64 / quantile(&baseline, q).max(1) as f64;
    println!(
        "  ratio loaded / baseline: median {:.1}x, p99 {:.1}x, max {:.1}x",
        ratio(0.5),
        ratio(0.99),
        loaded.last().copied().unwrap_or(0) as f64 / baseline.last().copied().unwrap_or(1).max(1) as f64
    );
    drop(clients);
    server.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}
