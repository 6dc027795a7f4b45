//! The filter's polling of its rollout config, against the real Envoy.

use canary_e2e::config_server::Answer;
use canary_e2e::rig::{DEPLOYMENT, POLL_INTERVAL, Rig, RigOptions};
use canary_e2e::traffic::user_ids;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_envoy_with_four_workers_polls_about_once_per_interval() {
    let rig = Rig::start(500, RigOptions { concurrency: 4, ..Default::default() }).await;
    let window = POLL_INTERVAL * 12;
    let since = Instant::now();
    tokio::time::sleep(window).await;
    let polls = rig.config_server.polls_since(since);
    // 12 intervals: one poller per interval gives ~12; per-VM polling would give 5 x 12 = 60.
    assert!((10..=14).contains(&polls.len()), "{} polls in 12 intervals with 4 workers", polls.len());
    assert!(polls.iter().all(|p| p == &format!("/v1/rollouts/{DEPLOYMENT}/config")), "{polls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_share_reaches_every_worker_within_two_intervals_and_keeps_canary_users() {
    let rig = Rig::start(500, RigOptions { concurrency: 4, ..Default::default() }).await;
    let ids = user_ids(11, 4_000);
    let before = rig.client.versions_for(&ids).await;
    rig.config_server.set(Answer::share(DEPLOYMENT, 2, 2_500));
    let took = rig.wait_for_share(2_500, Duration::from_secs(5)).await;
    assert!(took <= POLL_INTERVAL * 2, "new share took {took:?} to reach every worker");
    let after = rig.client.versions_for(&ids).await;
    for ((id, b), a) in ids.iter().zip(&before).zip(&after) {
        assert!(b != "canary" || a == "canary", "user {id} was canary at 5 % and left at 25 %");
        assert_eq!(a, Rig::expected_version(id, 2_500), "user {id}");
    }
    let canary = after.iter().filter(|v| *v == "canary").count() as f64 / ids.len() as f64;
    assert!((canary - 0.25).abs() < 0.03, "canary fraction {canary}");
    let log = rig.envoy.log_text();
    let changes = log.lines().filter(|l| l.contains("share 5.00% -> 25.00%")).count();
    assert_eq!(changes, 1, "the change is logged once, not per worker:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_share_survives_outages_garbage_and_older_generations() {
    let mut rig = Rig::start(2_500, RigOptions::default()).await;
    let ids = user_ids(12, 400);
    rig.config_server.stop();
    // Past the rig's 2 s staleness limit; the shipped `when_stale` is "keep".
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rig.routes_as(&ids, 2_500).await, "server stopped: share changed");

    rig.config_server.restart().await;
    for (what, answer) in [
        ("garbage body", Answer::Garbage("<html>oops</html>".into())),
        (
            "wrong types",
            Answer::Garbage(r#"{"deployment":"demo","generation":"x","share_bp":0,"state":"progressing"}"#.into()),
        ),
        (
            "share out of range",
            Answer::Garbage(r#"{"deployment":"demo","generation":9,"share_bp":20000,"state":"progressing"}"#.into()),
        ),
        ("another deployment", Answer::share("search", 9, 0)),
        ("HTTP 500", Answer::Status(500)),
        ("older generation", Answer::share(DEPLOYMENT, 0, 0)),
        ("same generation, other share", Answer::share(DEPLOYMENT, 1, 0)),
    ] {
        let since = Instant::now();
        rig.config_server.set(answer);
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert!(!rig.config_server.polls_since(since).is_empty(), "{what}: the filter kept polling");
        assert!(rig.routes_as(&ids, 2_500).await, "{what}: share changed");
    }
    rig.config_server.set(Answer::share(DEPLOYMENT, 3, 0));
    rig.wait_for_share(0, POLL_INTERVAL * 4).await;
    let log = rig.envoy.log_text();
    for needle in [
        "expected 200",
        "not a rollout config",
        "expected \\\"demo\\\"",
        "share_bp = 20000",
        "ignoring analyzer answer of generation 0",
    ] {
        assert!(log.contains(needle) || log.contains(&needle.replace("\\\"", "\"")), "log lacks {needle:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_staleness_limit_control_sends_everybody_to_stable() {
    let options = RigOptions {
        plugin: Box::new(|json| {
            json["analyzer"]["stale_after_ms"] = 1_000.into();
            json["analyzer"]["when_stale"] = "control".into();
        }),
        ..Default::default()
    };
    let mut rig = Rig::start(5_000, options).await;
    rig.config_server.stop();
    let stopped = Instant::now();
    rig.wait_for_share(0, Duration::from_secs(5)).await;
    // The last good answer came at most one interval before the stop, so the
    // 1 s limit passes no earlier than 1 s - 500 ms after it.
    assert!(stopped.elapsed() >= Duration::from_millis(450), "fell back before the staleness limit");
    rig.config_server.restart().await;
    rig.wait_for_share(5_000, Duration::from_secs(5)).await;
}
