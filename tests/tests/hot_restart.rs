//! Envoy's hot restart (`--restart-epoch`), for real, and what the analyzer's delta logic
//! makes of it.
//!
//! What happens (measured here): the new epoch takes the listeners over; `server.uptime`
//! carries on; the filter's counters in the new process start again, from what the old
//! one counted since its last stats flush (Envoy hands those increments over), not from
//! the old totals. When the new epoch's counters all pass the old epoch's last scraped
//! values before the next scrape, no counter goes down and uptime does not either: only
//! `server.hot_restart_epoch` tells. Without it the deltas subtract the old epoch's totals
//! from the new one's: the 2xx are under-counted and a rare class (5xx, zero before)
//! is not, so the 5xx rate is inflated.

use canary_analyzer::source::{DeltaTracker, EnvoyAdminSource, TargetScrape, parse_exposition};
use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{Envoy, EnvoyConfig, HotRestart};
use canary_e2e::traffic::{Client, user_ids};
use canary_e2e::upstream::Upstream;
use std::time::{Duration, Instant};

const DEPLOYMENT: &str = "demo";

/// One scrape of `envoy` as the analyzer reads it, in both forms: the exposition
/// (`/stats/prometheus`, as Prometheus gets it) and the admin JSON (the embedded default).
async fn scrape(envoy: &Envoy) -> [TargetScrape; 2] {
    let text = envoy.prometheus().await;
    let exposition = parse_exposition(&text, DEPLOYMENT).expect("exposition parses");
    let admin = format!("http://{}", envoy.admin);
    let source = EnvoyAdminSource::new([admin.clone()], DEPLOYMENT, Duration::from_secs(2)).expect("admin source");
    let json = source.scrape_one(&admin).await.expect("admin JSON scrape");
    [
        TargetScrape { target: "exposition".into(), result: Ok(exposition) },
        TargetScrape { target: "admin json".into(), result: Ok(json) },
    ]
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix("{} ")?.parse().ok())
}

/// Waits until the admin port answers as epoch `epoch`.
async fn wait_for_epoch(envoy: &Envoy, epoch: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(format!("http://{}/stats/prometheus", envoy.admin)).await.ok();
        let text = match text {
            Some(response) => response.text().await.unwrap_or_default(),
            None => String::new(),
        };
        if gauge(&text, "envoy_server_hot_restart_epoch") == Some(epoch) {
            return;
        }
        assert!(Instant::now() < deadline, "epoch {epoch} did not take over within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_restart_whose_counters_pass_the_old_values_is_a_restart_for_the_deltas() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let config_server = ConfigServer::start(Answer::share(DEPLOYMENT, 1, 0)).await;
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, config_server.addr);
    // Envoy latches counters on each stats flush (5 s by default) and hands the old epoch's
    // increments since its last flush to the new one. A 0.1 s flush only makes the test
    // quicker: the old epoch's 200 requests are flushed before the restart, as they would
    // be after 5 s.
    config.yaml["stats_flush_interval"] = serde_yaml_ng::Value::from("0.1s");
    let base_id = u32::from(config.admin_port);
    config.hot_restart = Some(HotRestart { base_id, epoch: 0 });
    let old = Envoy::start(&config, 1).await;
    let users = user_ids(0x4e57, 200);
    let statuses = Client::new(old.listener).statuses_for("/", &users).await;
    assert!(statuses.iter().all(|s| *s == 200));

    // One tracker per form, each with one target.
    let (mut from_exposition, mut from_json) = (DeltaTracker::new(), DeltaTracker::new());
    let [exposition, json] = scrape(&old).await;
    assert_eq!(from_exposition.advance(vec![exposition]).baseline_targets, vec!["exposition"]);
    assert_eq!(from_json.advance(vec![json]).baseline_targets, vec!["admin json"]);
    let old_text = old.prometheus().await;
    tokio::time::sleep(Duration::from_millis(500)).await; // five flushes of the old epoch

    config.hot_restart = Some(HotRestart { base_id, epoch: 1 });
    let new = Envoy::start(&config, 1).await;
    wait_for_epoch(&new, 1.0).await;
    let control_2xx = |text: &str| parse_exposition(text, DEPLOYMENT).unwrap().cohorts.control.requests.success;
    let taken_over = control_2xx(&new.prometheus().await);
    println!("hot restart: control 2xx {} in epoch 0, {taken_over} in epoch 1 at takeover", control_2xx(&old_text));
    assert!(taken_over < 200, "the filter's counters start again in the new process");
    // Fresh connections: the new epoch serves them. 300 answers, then 5 errors.
    let more = user_ids(0x4e58, 300);
    let client = Client::new(new.listener);
    assert!(client.statuses_for("/", &more).await.iter().all(|s| *s == 200));
    assert!(client.statuses_for("/status/503", &more[..5]).await.iter().all(|s| *s == 503));
    let new_text = new.prometheus().await;
    let (old_uptime, new_uptime) =
        (gauge(&old_text, "envoy_server_uptime").unwrap(), gauge(&new_text, "envoy_server_uptime").unwrap());
    println!("hot restart: uptime {old_uptime} -> {new_uptime} s");
    assert!(new_uptime >= old_uptime, "uptime carries on across a hot restart");

    let [exposition, json] = scrape(&new).await;
    for interval in [from_exposition.advance(vec![exposition]), from_json.advance(vec![json])] {
        let control = &interval.cohorts.control.requests;
        println!(
            "hot restart: interval 2xx {} 5xx {}, restarted targets {:?}",
            control.success, control.server_error, interval.restarted_targets
        );
        assert_eq!(
            interval.restarted_targets, interval.contributing_targets,
            "the hot restart must count as a restart"
        );
        // Every answer of the new epoch is in the interval (plus, at most, the old epoch's
        // unflushed increments): 300 2xx and 5 5xx, not 300 − 200 2xx against 5 5xx.
        assert!((300..=500).contains(&control.success), "2xx in the interval: {}", control.success);
        assert_eq!(control.server_error, 5);
    }
}
