//! The data path under hostile bytes, through the real Envoy: thousands of requests with
//! random bytes (UTF-8 or not, empty, very long, repeated lines) in every header the
//! filter reads (the user-id header and cookie, several cookie lines, the population
//! rules' header and cookies, the sticky cookie) and in the response headers its outcome
//! rules read, which the upstream echoes back. Every answer must be the upstream's (or
//! Envoy's own refusal of a malformed request, counted and printed), no VM may fail,
//! and known users must keep the cohort `canary_core` gives them, before, between and
//! after the hostile batches. Run with the shipped failure policy and with fail-closed,
//! under which a failed VM answers 503.
//!
//! The seed is printed; `CANARY_FUZZ_SEED=<n>` replays a run.

use canary_analyzer::simulation::random::SeededRng;
use canary_core::FilterConfig;
use canary_e2e::cache_upstream::{CacheUpstream, Misses, hex_value};
use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::raw_http::{get_request, send};
use canary_e2e::request_log::expected_version;
use canary_e2e::traffic::{Client, user_ids};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Hostile requests per run, in batches with known users checked between them.
const HOSTILE_REQUESTS: usize = 4_000;
const BATCH: usize = 500;
/// Requests in flight: enough to keep both workers busy.
const PARALLEL: usize = 16;
/// Half the users in canary: both cohorts are checked.
const SHARE_BP: u32 = 5_000;

/// Every request header the filter reads in this configuration: `x-user-id`, cookie
/// `session_user`, the sticky cookie `canary_uid`, the population rules' `x-tier` and
/// cookies `beta` and `region`; and the response headers of the outcome rules.
const PLUGIN: &str = r#"{
    "deployment": "demo",
    "user_id": { "sources": [{ "header": "x-user-id" }, { "cookie": "session_user" }], "anonymous": "sticky_cookie" },
    "routing_header": "x-canary-cohort",
    "population": {
        "all": [{ "cookie": "region", "present": false }],
        "any": [{ "header": "x-tier", "prefix": "gold" }, { "cookie": "beta", "equals": "1" }, { "header": "x-tier", "present": false }],
        "deny": ["do-not-canary"]
    },
    "analyzer": { "cluster": "canary_analyzer", "authority": "analyzer", "poll_interval_ms": 500, "timeout_ms": 250,
                  "stale_after_ms": 60000, "when_stale": "keep" },
    "outcomes": [
        { "name": "cache_hit", "response_header": "x-cache", "equals": "HIT" },
        { "name": "slow_queue", "response_header": "x-queue-ms", "above": 100 }
    ]
}"#;

/// One random header value of a kind a hostile or broken client sends.
fn value(rng: &mut SeededRng) -> Vec<u8> {
    let len = |rng: &mut SeededRng, max: u64| (rng.next_u64() % max) as usize;
    // Out of 16: control bytes (which Envoy refuses with a 400) rarely, so most requests reach the filter.
    match rng.next_u64() % 16 {
        0 | 1 => Vec::new(),
        // A plausible id or token.
        2..=4 => (0..1 + len(rng, 40)).map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789-_"[len(rng, 38)]).collect(),
        // UTF-8 beyond ASCII.
        5 | 6 => (0..1 + len(rng, 20))
            .map(|_| ['é', 'ß', '日', '🦀', 'a', ' ', '='][len(rng, 7)])
            .collect::<String>()
            .into_bytes(),
        // obs-text: bytes 0x80-0xFF among visible ASCII, mostly not UTF-8.
        7..=10 => (0..1 + len(rng, 40))
            .map(|_| if rng.next_u64() % 2 == 0 { 0x80 | rng.next_u64() as u8 } else { b'a' })
            .collect(),
        // Any byte but CR and LF (which would end the line): control bytes get a 400 from Envoy.
        11 => (0..1 + len(rng, 40))
            .map(|_| rng.next_u64() as u8)
            .map(|b| if b == b'\r' || b == b'\n' { b'x' } else { b })
            .collect(),
        // Very long: 2-12 KiB of obs-text and ASCII.
        12 => (0..2_048 + len(rng, 10_240)).map(|i| if i % 3 == 0 { 0xe9 } else { b'u' }).collect(),
        // A known shape with a hostile tail: `é` cut in half.
        13 => b"gold\xc3".to_vec(),
        _ => b"\xe9t\xe9".to_vec(),
    }
}

/// A `cookie` line: a few pairs, named like the cookies the filter reads or not.
fn cookie_line(rng: &mut SeededRng) -> Vec<u8> {
    let names: [&[u8]; 7] = [b"session_user", b"canary_uid", b"beta", b"region", b"theme", b"", b"session_user "];
    let mut line = Vec::new();
    for i in 0..rng.next_u64() % 4 {
        if i > 0 {
            line.extend_from_slice(if rng.next_u64() % 2 == 0 { b"; " } else { b";" });
        }
        line.extend_from_slice(names[(rng.next_u64() % names.len() as u64) as usize]);
        line.push(b'=');
        line.extend(value(rng));
    }
    if rng.next_u64() % 5 == 0 {
        line = value(rng);
    }
    line
}

/// A hostile request: 0-2 `x-user-id` lines, 0-4 `cookie` lines, 0-2 `x-tier` lines, a
/// client cohort header, sometimes a header name that is not a token, and response
/// headers for the upstream to echo.
fn hostile_request(rng: &mut SeededRng) -> Vec<u8> {
    let mut lines: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (name, most) in [("x-user-id", 3), ("cookie", 5), ("x-tier", 3), ("x-canary-cohort", 2)] {
        for _ in 0..rng.next_u64() % most {
            let v = if name == "cookie" { cookie_line(rng) } else { value(rng) };
            lines.push((name.as_bytes().to_vec(), v));
        }
    }
    if rng.next_u64() % 10 == 0 {
        lines.push((b"x-\xe9t\xe9".to_vec(), value(rng)));
    }
    // Shuffle so that repeated names are not always adjacent.
    for i in (1..lines.len()).rev() {
        lines.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    // Not `/`, where the upstream adds an `x-cache` of its own.
    let mut target = String::from("/fuzz?");
    for name in ["x-cache", "x-queue-ms"] {
        for _ in 0..rng.next_u64() % 3 {
            // What hyper can send in a response header: tab, visible ASCII, obs-text.
            let bytes: Vec<u8> = value(rng).into_iter().filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)).collect();
            target.push_str(&format!("{name}={}&", hex_value(&bytes)));
        }
    }
    let statuses = [200, 200, 200, 201, 404, 500, 503];
    target.push_str(&format!("status={}", statuses[(rng.next_u64() % statuses.len() as u64) as usize]));
    let headers: Vec<(&[u8], &[u8])> = lines.iter().map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
    get_request(&target, &headers)
}

/// What came back for the hostile requests.
#[derive(Debug, Default)]
struct Tally {
    /// Answered by an upstream (`x-version` present), by status.
    upstream: BTreeMap<u16, usize>,
    /// Refused by Envoy before any filter (its local reply), by status.
    refused_by_envoy: BTreeMap<u16, usize>,
    /// Anything else: a local 503 of a failed VM, a reset, a timeout.
    failures: Vec<String>,
}

async fn send_batch(envoy: SocketAddr, requests: Vec<Vec<u8>>, tally: &mut Tally) {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = JoinSet::new();
    for request in requests {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("semaphore open");
        tasks.spawn(async move {
            let reply = send(envoy, &request).await;
            drop(permit);
            (request, reply)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (request, reply) = joined.expect("request task");
        match reply {
            Ok(r) if r.header("x-version").is_some() => *tally.upstream.entry(r.status).or_default() += 1,
            // Envoy's codec refuses bad header bytes (400) and oversized heads (431).
            Ok(r) if r.status == 400 || r.status == 431 => *tally.refused_by_envoy.entry(r.status).or_default() += 1,
            Ok(r) => tally.failures.push(format!("{} for {:?}", r.status, String::from_utf8_lossy(&request))),
            Err(e) => tally.failures.push(format!("{e} for {:?}", String::from_utf8_lossy(&request))),
        }
    }
}

/// Known users, half expected on each version: each must get the version `canary_core` gives.
async fn known_users_keep_their_cohort(envoy: SocketAddr, config: &FilterConfig, ids: &[String], when: &str) {
    // Fresh connections, so both workers serve some.
    let versions = Client::new(envoy).versions_for(ids).await;
    let wrong: Vec<String> = ids
        .iter()
        .zip(&versions)
        .filter(|(id, v)| v.as_str() != expected_version(config, SHARE_BP, id))
        .map(|(id, v)| format!("{id} got {v:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{when}: {} of {} known users routed wrongly, e.g. {:?}",
        wrong.len(),
        ids.len(),
        &wrong[..wrong.len().min(5)]
    );
}

fn seed() -> u64 {
    std::env::var("CANARY_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    })
}

async fn fuzz(failure_policy: Option<&str>) {
    let seed = seed();
    let no_misses = Misses { misses: 0, every: 1 };
    let stable = CacheUpstream::start("stable", no_misses).await;
    let canary = CacheUpstream::start("canary", no_misses).await;
    let config_server = ConfigServer::start(Answer::share("demo", 1, SHARE_BP)).await;
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, config_server.addr);
    config.set_plugin_config_text(PLUGIN);
    if let Some(policy) = failure_policy {
        config.set_failure_policy(policy);
    }
    let policy = config.failure_policy();
    println!("data-path fuzz: seed {seed} (CANARY_FUZZ_SEED={seed} replays it), failure_policy {policy}");
    let filter_config = FilterConfig::parse(PLUGIN.as_bytes()).expect("the fuzz configuration parses");
    let envoy = Envoy::start(&config, 2).await;
    let known = user_ids(0xf022, 200);
    assert!(known.iter().any(|id| expected_version(&filter_config, SHARE_BP, id) == "canary"));
    // The share arrives with the first poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Client::new(envoy.listener)
        .versions_for(&known)
        .await
        .iter()
        .zip(&known)
        .any(|(v, id)| v != expected_version(&filter_config, SHARE_BP, id))
    {
        assert!(std::time::Instant::now() < deadline, "Envoy did not route at {SHARE_BP} bp within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let mut rng = SeededRng::new(seed);
    let mut tally = Tally::default();
    for batch in 0..HOSTILE_REQUESTS / BATCH {
        let requests = (0..BATCH).map(|_| hostile_request(&mut rng)).collect();
        send_batch(envoy.listener, requests, &mut tally).await;
        known_users_keep_their_cohort(envoy.listener, &filter_config, &known, &format!("after batch {}", batch + 1))
            .await;
    }
    let answered: usize = tally.upstream.values().sum();
    let refused: usize = tally.refused_by_envoy.values().sum();
    println!(
        "data-path fuzz ({policy}): {HOSTILE_REQUESTS} hostile requests: {answered} answered by the upstream {:?}, \
         {refused} refused by Envoy before the filter {:?}, {} failed",
        tally.upstream,
        tally.refused_by_envoy,
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{} requests not answered by the upstream, e.g. {:?}",
        tally.failures.len(),
        &tally.failures[..tally.failures.len().min(3)]
    );
    assert!(answered > HOSTILE_REQUESTS / 2, "most hostile requests must reach the filter and the upstream");

    // No VM failed: Envoy logs each failure, and under FAIL_RELOAD counts each reload.
    let log = envoy.log_text();
    for sign in ["panicked", "Uncaught RuntimeError", "Wasm VM failed"] {
        assert!(
            !log.contains(sign),
            "a VM failed ({sign}):\n{}",
            log.lines().filter(|l| l.contains(sign)).take(5).collect::<Vec<_>>().join("\n")
        );
    }
    let stats = envoy.prometheus().await;
    for line in stats.lines().filter(|l| l.contains("vm_reload") && !l.starts_with('#')) {
        assert!(line.ends_with(" 0"), "a VM was reloaded: {line}");
    }
    // The filter counted every request it saw: both cohorts of the known users are there.
    assert!(stats.contains("cohort=\"canary\"") && stats.contains("cohort=\"control\""), "per-cohort counters missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_bytes_never_fail_the_filter_under_the_shipped_policy() {
    fuzz(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_bytes_never_fail_the_filter_under_fail_closed() {
    fuzz(Some("FAIL_CLOSED")).await;
}
