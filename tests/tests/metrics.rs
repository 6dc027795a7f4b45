//! Per-cohort metrics in Envoy's `/stats/prometheus`, counted against the traffic sent.

use canary_e2e::rig::{DEPLOYMENT, Rig, RigOptions};
use canary_e2e::traffic::user_ids;
use prometheus_parse::{Sample, Scrape, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Envoy's exposition parses")
}

fn label<'a>(s: &'a Sample, name: &str) -> &'a str {
    s.labels.get(name).unwrap_or("")
}

/// canary_requests_total by (cohort, class) for the demo deployment.
fn request_counts(scrape: &Scrape) -> HashMap<(String, String), u64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "canary_requests_total" && label(s, "deployment") == DEPLOYMENT)
        .filter_map(|s| match s.value {
            Value::Counter(v) if v > 0.0 => Some(((label(s, "cohort").into(), label(s, "class").into()), v as u64)),
            _ => None,
        })
        .collect()
}

/// (count, cumulative count at or below `le_us`) of the latency histogram of a cohort.
/// Bucket edge between the plan's fast requests and its 300 ms ones (a bound of
/// `LATENCY_BUCKETS_US`; `f64::NAN as u64` would read a missing one as 0).
const SLOW_EDGE_US: f64 = 200_000.0;

fn latency(scrape: &Scrape, cohort: &str, le_us: f64) -> (u64, u64) {
    let sample = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "canary_latency_us" && label(s, "cohort") == cohort && label(s, "deployment") == DEPLOYMENT
        })
        .unwrap_or_else(|| panic!("no latency histogram for {cohort}"));
    let Value::Histogram(buckets) = &sample.value else { panic!("canary_latency_us is not a histogram") };
    let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max) as u64;
    let below = buckets.iter().find(|b| b.less_than == le_us).map(|b| b.count).unwrap_or(f64::NAN) as u64;
    (total, below)
}

struct Baseline {
    requests: HashMap<(String, String), u64>,
    canary: (u64, u64),
    control: (u64, u64),
}

fn minus(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0 - b.0, a.1 - b.1)
}

/// Counts once histograms agree with counters (histograms lag until the next stats flush).
async fn settled(rig: &Rig) -> Baseline {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = scrape(&rig.envoy.prometheus().await);
        let requests = request_counts(&scrape);
        let total = |cohort: &str| requests.iter().filter(|((c, _), _)| c == cohort).map(|(_, n)| n).sum::<u64>();
        let (canary, control) = (latency(&scrape, "canary", SLOW_EDGE_US), latency(&scrape, "control", SLOW_EDGE_US));
        if canary.0 == total("canary") && control.0 == total("control") {
            return Baseline { requests, canary, control };
        }
        assert!(Instant::now() < deadline, "histograms never caught up with counters");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_cohort_series_count_the_traffic_sent_including_5xx_and_resets() {
    let rig = Rig::start(5_000, RigOptions::default()).await;
    // The rig's readiness probes were counted too: measure from a settled baseline.
    let baseline = settled(&rig).await;
    let ids = user_ids(21, 400);
    let (canary, control): (Vec<String>, Vec<String>) =
        ids.into_iter().partition(|id| Rig::expected_version(id, 5_000) == "canary");
    // Per cohort: 100 x 200, 20 x 503, 10 x 404, 5 resets, 30 slow (300 ms). The slow ones lie
    // far above the 200 ms bucket edge and a loaded CI machine does not push a fast one past it.
    let plan: [(&str, usize); 5] =
        [("/", 100), ("/status/503", 20), ("/status/404", 10), ("/reset", 5), ("/delay/300", 30)];
    for users in [&canary, &control] {
        for (path, n) in plan {
            let batch: Vec<String> = users.iter().cycle().take(n).cloned().collect();
            let statuses = rig.client.statuses_for(path, &batch).await;
            let expected = match path {
                "/status/503" | "/reset" => 503,
                "/status/404" => 404,
                _ => 200,
            };
            assert!(statuses.iter().all(|s| *s == expected), "{path}: {statuses:?}");
        }
    }
    let anonymous = rig.client.get("/", &[("x-user-id", "do-not-canary")]).await;
    assert_eq!(anonymous.version.as_deref(), Some("stable"));

    let expected: HashMap<(String, String), u64> = [
        ("canary", "2xx", 130),
        ("canary", "5xx", 20),
        ("canary", "4xx", 10),
        ("canary", "reset", 5),
        ("control", "2xx", 130),
        ("control", "5xx", 20),
        ("control", "4xx", 10),
        ("control", "reset", 5),
        ("excluded", "2xx", 1),
    ]
    .into_iter()
    .map(|(c, k, n)| ((c.to_string(), k.to_string()), n))
    .collect();
    // Counters are exact at once; histograms are merged from the workers on stats flush.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = scrape(&rig.envoy.prometheus().await);
        let mut counts = request_counts(&scrape);
        for (key, before) in &baseline.requests {
            if let Some(now) = counts.get_mut(key) {
                *now -= before;
            }
        }
        counts.retain(|_, n| *n > 0);
        let (canary_total, canary_fast) = minus(latency(&scrape, "canary", SLOW_EDGE_US), baseline.canary);
        let (control_total, control_fast) = minus(latency(&scrape, "control", SLOW_EDGE_US), baseline.control);
        let histograms_ok = canary_total == 165 && control_total == 165;
        if counts == expected && histograms_ok {
            assert_eq!(canary_total - canary_fast, 30, "slow canary requests above 200 ms");
            assert_eq!(control_total - control_fast, 30, "slow control requests above 200 ms");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counts {counts:?} != {expected:?} or histogram counts {canary_total}/{control_total} != 165"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
