//! A policy's PromQL counter pair against a real Prometheus (`tests/src/prometheus.rs`)
//! scraping Envoy with the filter: known traffic's counts come back whole from the four
//! templates and become the metric's report row with rates, interval and p-value.
//!
//! The pair counts the filter's own 5xx among its requests, so it needs no other exporter:
//! numerator `canary_requests_total{class="5xx"}`, denominator every class.

use canary_analyzer::outcome_metric::{CounterPairCounts, RateMetricTests};
use canary_analyzer::policy::RolloutPolicy;
use canary_analyzer::source::{EnvoyAdminSource, PrometheusSource};
use canary_analyzer::stats::{CohortCounts, IntervalCounts};
use canary_e2e::prometheus::Prometheus;
use canary_e2e::rig::{DEPLOYMENT, Rig, RigOptions};
use canary_e2e::traffic::user_ids;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Generous bound for anything to show up; only a guard against hanging.
const PATIENCE: Duration = Duration::from_secs(60);
/// Prometheus scrapes Envoy every 250 ms.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(250);
const NUMERATOR: &str = "sum(increase(canary_requests_total{deployment=\"{{deployment}}\",cohort=\"{{cohort}}\",class=\"5xx\"}[{{window}}]))";
const DENOMINATOR: &str =
    "sum(increase(canary_requests_total{deployment=\"{{deployment}}\",cohort=\"{{cohort}}\"}[{{window}}]))";

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis()).expect("ms")
}

/// Total requests once Envoy's counters are final (every answered request counted).
async fn settled_total(envoy: &EnvoyAdminSource, admin_url: &str, expected: Option<u64>) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let snapshot = envoy.scrape_one(admin_url).await.expect("envoy admin scrape");
        let total: u64 = snapshot.cohorts.iter().map(|(_, cohort)| cohort.requests.total()).sum();
        if expected.is_none_or(|expected| total == expected) {
            return total;
        }
        assert!(Instant::now() < deadline, "envoy counted {total} requests, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a scrape taken after `after_ms` that saw `total` requests; its timestamp (ms).
async fn scrape_after(prometheus: &Prometheus, after_ms: u64, total: u64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let selector = format!("canary_requests_total{{deployment=\"{DEPLOYMENT}\"}}");
    loop {
        let at = prometheus.query(&format!("max(timestamp({selector}))")).await;
        let seen = prometheus.query(&format!("sum({selector})")).await;
        let value = |result: &[serde_json::Value]| result.first()?["value"][1].as_str()?.parse::<f64>().ok();
        if let (Some(at), Some(seen)) = (value(&at), value(&seen)) {
            let at_ms = (at * 1_000.0).round() as u64;
            if at_ms > after_ms && seen as u64 == total {
                return at_ms;
            }
        }
        assert!(Instant::now() < deadline, "prometheus never scraped {total} requests:\n{}", prometheus.log());
        tokio::time::sleep(SCRAPE_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_pairs_counts_arrive_whole_in_its_row() {
    let rig = Rig::start(5_000, RigOptions::default()).await;
    let admin_url = format!("http://{}", rig.envoy.admin);
    let prometheus = Prometheus::start(&[rig.envoy.admin], SCRAPE_INTERVAL).await;
    let envoy = EnvoyAdminSource::new([admin_url.clone()], DEPLOYMENT, Duration::from_secs(2)).expect("source");
    let before_total = settled_total(&envoy, &admin_url, None).await;
    let start_ms = scrape_after(&prometheus, now_ms(), before_total).await;

    // Per cohort: 60 x 200 and 15 x 503, so 15 of 75 requests are 5xx (20 %).
    let (canary, control): (Vec<String>, Vec<String>) =
        user_ids(44, 400).into_iter().partition(|id| Rig::expected_version(id, 5_000) == "canary");
    for users in [&canary, &control] {
        for (path, n, expected) in [("/", 60, 200), ("/status/503", 15, 503)] {
            let batch: Vec<String> = users.iter().cycle().take(n).cloned().collect();
            let statuses = rig.client.statuses_for(path, &batch).await;
            assert!(statuses.iter().all(|s| *s == expected), "{path}: {statuses:?}");
        }
    }
    let after_total = settled_total(&envoy, &admin_url, Some(before_total + 150)).await;
    // The window's edges on the two scrapes around the traffic: increase() has (almost)
    // nothing to extrapolate; the extra millisecond keeps the first scrape inside.
    let end_ms = scrape_after(&prometheus, now_ms(), after_total).await;
    let window = Duration::from_millis(end_ms - start_ms + 1);
    let at = UNIX_EPOCH + Duration::from_millis(end_ms);
    let source = PrometheusSource::new(prometheus.url.clone(), Duration::from_secs(5)).expect("source");
    let counts = source.counter_pair(NUMERATOR, DENOMINATOR, DEPLOYMENT, window, Some(at)).await.expect("pair");
    let expected = CohortCounts { requests: 75, errors: 15 };
    assert_eq!(counts, Some(IntervalCounts { canary: expected, control: expected }));

    // Those counts are the row of a policy's counter-pair metric.
    let policy = RolloutPolicy::from_yaml(&format!(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: pair}}\nspec:\n  \
         deployment: {DEPLOYMENT}\n  min_requests_per_cohort: 50\n  metrics:\n    - name: server_errors\n      \
         direction: higher_is_worse\n      numerator: '{NUMERATOR}'\n      denominator: '{DENOMINATOR}'\n"
    ))
    .expect("policy");
    let mut tests = RateMetricTests::new(&policy).expect("tests");
    tests.observe_counter_pairs(&[CounterPairCounts { name: "server_errors".into(), counts }]);
    let rows = tests.rows(policy.alpha, policy.min_requests_per_cohort).expect("rows");
    let [row] = rows.as_slice() else { panic!("one row: {rows:?}") };
    assert_eq!((row.metric.as_str(), row.canary, row.control), ("server_errors", Some(0.2), Some(0.2)));
    assert_eq!(format!("{:?}", row.verdict), "NoDifference", "{row:?}");
    assert!(row.p_value.is_some() && row.interval.is_some(), "{row:?}");

    // A template whose answer is no data leaves the pair without counts.
    let nobody = DENOMINATOR.replace("{{deployment}}", "nobody");
    let none = source.counter_pair(NUMERATOR, &nobody, DEPLOYMENT, window, Some(at)).await.expect("empty pair");
    assert_eq!(none, None);
}
