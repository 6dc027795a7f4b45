//! The harness's own moving parts, through the real Envoy: the upstream whose failures
//! and latency a test controls, and the background load generator. (The analyzer
//! process runner needs the analyzer binary and is exercised by the rollout tests.)

use canary_e2e::load::{Load, LoadOptions, pick_user};
use canary_e2e::rig::{Rig, RigOptions};
use canary_e2e::traffic::user_ids;
use canary_e2e::upstream::Behaviour;
use std::time::{Duration, Instant};

/// Half the users on canary: both upstreams get traffic.
const HALF: u32 = 5_000;

/// Users of `ids` that `share_bp` routes to `version`.
fn users_on(ids: Vec<String>, version: &str, share_bp: u32) -> Vec<String> {
    ids.into_iter().filter(|id| Rig::expected_version(id, share_bp) == version).collect()
}

/// `n` requests to `path`, cycling through `users`: (status, version, duration) each.
async fn send(rig: &Rig, users: &[String], n: usize, path: &'static str) -> Vec<(u16, String, Duration)> {
    let batch: Vec<String> = users.iter().cycle().take(n).cloned().collect();
    rig.client
        .map_parallel(&batch, move |client, id| async move {
            let start = Instant::now();
            let reply = client.get(path, &[("x-user-id", &id)]).await;
            (reply.status, reply.version.unwrap_or_default(), start.elapsed())
        })
        .await
}

fn count_status(replies: &[(u16, String, Duration)], status: u16) -> usize {
    replies.iter().filter(|r| r.0 == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_upstream_fails_the_fraction_it_is_told_and_adds_latency_while_stable_is_unaffected() {
    let rig = Rig::start(HALF, RigOptions::default()).await;
    let canary_users = users_on(user_ids(31, 400), "canary", HALF);
    let stable_users = users_on(user_ids(32, 400), "stable", HALF);

    // 20 % failures on canary only.
    rig.canary.set_behaviour(Behaviour { fail_fraction: 0.2, ..Behaviour::default() });
    let failed_before = rig.canary.failed_requests();
    let canary = send(&rig, &canary_users, 500, "/").await;
    let stable = send(&rig, &stable_users, 500, "/").await;
    assert!(canary.iter().all(|r| r.1 == "canary") && stable.iter().all(|r| r.1 == "stable"), "routing by user");
    let canary_503 = count_status(&canary, 503);
    // Failures are spread evenly over the upstream's requests: 500 in a row hold exactly
    // 100; the margin only covers stray requests to the canary from elsewhere.
    assert!((90..=110).contains(&canary_503), "{canary_503} of 500 canary requests failed, expected ~100");
    assert_eq!(canary_503 + count_status(&canary, 200), 500, "only 200s and 503s");
    assert_eq!(canary_503 as u64, rig.canary.failed_requests() - failed_before, "client saw what upstream did");
    assert_eq!(count_status(&stable, 200), 500, "stable unaffected");
    assert_eq!(rig.stable.failed_requests(), 0);

    // Another failure status; the diagnostic paths keep their meaning whatever the behaviour.
    rig.canary.set_behaviour(Behaviour { fail_fraction: 1.0, status_on_failure: 500, ..Behaviour::default() });
    let all_failing = send(&rig, &canary_users, 20, "/").await;
    assert_eq!(count_status(&all_failing, 500), 20);
    let diagnostic = send(&rig, &canary_users, 5, "/status/200").await;
    assert_eq!(count_status(&diagnostic, 200), 5, "/status/N is not an ordinary request");

    // Added latency on canary: every canary request takes at least that long; stable does not.
    let extra = Duration::from_millis(150);
    rig.canary.set_behaviour(Behaviour { extra_latency: extra, ..Behaviour::default() });
    let slow = send(&rig, &canary_users, 20, "/").await;
    let fast = send(&rig, &stable_users, 20, "/").await;
    assert_eq!(count_status(&slow, 200), 20, "healthy again, just slow");
    assert!(slow.iter().all(|r| r.2 >= extra), "canary faster than its added latency: {slow:?}");
    let fastest_stable = fast.iter().map(|r| r.2).min().expect("stable replies");
    assert!(fastest_stable < extra, "stable slowed down too: fastest {fastest_stable:?}");
    assert_eq!(rig.canary.behaviour().extra_latency, extra);

    // Every request was counted, the rig's readiness probes included.
    assert!(rig.canary.requests() >= 545, "canary upstream counted {}", rig.canary.requests());
    assert!(rig.stable.requests() >= 520, "stable upstream counted {}", rig.stable.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_sends_at_its_rate_as_pooled_users_and_its_counters_add_up() {
    let rig = Rig::start(HALF, RigOptions::default()).await;
    // Canary fails half its requests: the load's error counts must match the upstream's.
    rig.canary.set_behaviour(Behaviour { fail_fraction: 0.5, ..Behaviour::default() });
    let upstream_before = rig.stable.requests() + rig.canary.requests();
    let failed_before = rig.canary.failed_requests();

    let options =
        LoadOptions { rps: 100, users: 50, anonymous_fraction: 0.1, path: "/".to_string(), ..LoadOptions::default() };
    let started = Instant::now();
    let load = Load::start(rig.envoy.listener, options.clone());
    let users = load.user_ids().to_vec();
    assert_eq!(users.len(), 50);
    // About 2 s at 100 rps; bounded in case the machine is very busy.
    let (_, reached) = load.wait_until(Duration::from_secs(20), |s| s.sent >= 200).await;
    assert!(reached, "200 requests not sent within 20 s: {:?}", load.stats());
    let stats = load.finish(Duration::from_secs(10)).await;
    let elapsed = started.elapsed();

    // Never faster than asked: the first tick is immediate, then one per 10 ms.
    let most = elapsed.as_secs_f64() * f64::from(options.rps) + 2.0;
    assert!((stats.sent as f64) <= most, "{} sent in {elapsed:?} at 100 rps", stats.sent);
    assert_eq!(stats.sent, stats.completed, "finish waits for requests in flight: {stats:?}");
    assert_eq!(stats.stable + stats.canary + stats.unversioned + stats.transport_errors, stats.completed, "{stats:?}");
    assert_eq!((stats.unversioned, stats.transport_errors, stats.skipped), (0, 0, 0), "{stats:?}");
    assert_eq!(stats.answered("stable"), stats.stable);

    // Errors: exactly the canary's deliberate failures.
    assert_eq!(stats.stable_errors, 0, "{stats:?}");
    assert_eq!(stats.canary_errors, rig.canary.failed_requests() - failed_before, "{stats:?}");
    assert_eq!(stats.errors, stats.canary_errors, "{stats:?}");
    assert!(stats.canary_errors * 2 >= stats.canary.saturating_sub(1), "half the canary failed: {stats:?}");
    assert_eq!(rig.stable.requests() + rig.canary.requests() - upstream_before, stats.sent, "upstreams saw them all");

    // Users are reused and stick to their cohort: identified requests land exactly where the
    // native hash says; anonymous ones (fresh ids each time) may land on either side.
    let picks: Vec<Option<&str>> = (0..stats.sent).map(|n| pick_user(n, &users, options.anonymous_fraction)).collect();
    let anonymous = picks.iter().filter(|p| p.is_none()).count() as u64;
    let identified_canary =
        picks.iter().flatten().filter(|id| Rig::expected_version(id, HALF) == "canary").count() as u64;
    let distinct: std::collections::HashSet<&str> = picks.iter().flatten().copied().collect();
    assert!(distinct.len() < picks.len() / 2, "users reused: {} distinct in {}", distinct.len(), picks.len());
    assert!(anonymous > 0, "some anonymous requests at 10 %");
    assert!(
        (identified_canary..=identified_canary + anonymous).contains(&stats.canary),
        "canary answered {} but {identified_canary} identified + up to {anonymous} anonymous went there",
        stats.canary
    );
    assert!(stats.stable > 0 && stats.canary > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_stops_when_dropped_and_counts_transport_errors() {
    let rig = Rig::start(HALF, RigOptions::default()).await;
    let load = Load::start(rig.envoy.listener, LoadOptions { rps: 200, ..LoadOptions::default() });
    let (stats, reached) = load.wait_until(Duration::from_secs(20), |s| s.completed >= 50).await;
    assert!(reached, "50 requests not answered within 20 s: {stats:?}");
    drop(load);
    // Whatever was in flight at the drop settles, then nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = rig.stable.requests() + rig.canary.requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.stable.requests() + rig.canary.requests(), settled, "requests after the load was dropped");

    // Nothing listening: every request is a transport error.
    let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], canary_e2e::free_port()));
    let load = Load::start(nowhere, LoadOptions { rps: 50, ..LoadOptions::default() });
    let (stats, reached) = load.wait_until(Duration::from_secs(20), |s| s.completed >= 10).await;
    assert!(reached, "10 requests not finished within 20 s: {stats:?}");
    let stats = load.finish(Duration::from_secs(10)).await;
    assert_eq!(stats.transport_errors, stats.completed, "{stats:?}");
    assert_eq!(stats.errors, stats.completed, "{stats:?}");
    assert_eq!(stats.stable + stats.canary + stats.unversioned, 0, "{stats:?}");
}
