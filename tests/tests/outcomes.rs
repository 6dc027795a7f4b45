//! Outcome rules counted by the filter in the real Envoy: exact per-cohort counts in
//! the admin JSON, the contract's Prometheus names and labels, and requests a rule does
//! not apply to counted in neither of its counters.
//!
//! The upstreams (`canary_e2e::cache_upstream`) answer `/` with `x-cache: MISS` on a
//! fixed fraction of requests (canary 2 in 5, stable 1 in 5, by a counter, so any
//! multiple of 5 requests holds the exact fraction), and set any other response header
//! or the status from the query string (`/pay?x-payment-result=declined`,
//! `/checkout?status=402`), so every other count follows from the requests sent.

use canary_core::metrics::{OUTCOME_EVENTS, OUTCOME_REQUESTS, REQUESTS};
use canary_core::{Share, bucket};
use canary_e2e::cache_upstream::{CacheUpstream, Misses};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::traffic::user_ids;
use prometheus_parse::{Scrape, Value as PromValue};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The deployment id of the shipped configuration.
const DEPLOYMENT: &str = "demo";
/// Half the users in each cohort, so both get traffic without a config server.
const SHARE_BP: u32 = 5_000;

/// The issue's four kinds of rule.
fn rules() -> Value {
    json!([
        {"name": "cache_hit", "response_header": "x-cache", "equals": "HIT"},
        {"name": "declined", "response_header": "x-payment-result", "equals": "declined", "path_prefix": "/pay"},
        {"name": "slow_db", "response_header": "x-db-time-ms", "above": 100},
        {"name": "payment_required", "status": 402, "path_prefix": "/checkout", "methods": ["POST"]}
    ])
}

/// One kind of request of the plan: method, path with query, how many per cohort.
struct Step {
    method: &'static str,
    path: &'static str,
    canary: usize,
    control: usize,
}

const fn step(method: &'static str, path: &'static str, canary: usize, control: usize) -> Step {
    Step { method, path, canary, control }
}

/// The traffic per cohort. `/` x 100: canary 40 MISS / 60 HIT, control 20 / 80.
const PLAN: [Step; 13] = [
    step("GET", "/", 100, 100),
    step("GET", "/pay?x-payment-result=declined", 20, 10),
    step("GET", "/pay?x-payment-result=approved", 30, 30),
    step("GET", "/db?x-db-time-ms=150", 15, 5),
    step("GET", "/db?x-db-time-ms=100", 5, 5),
    step("GET", "/db?x-db-time-ms=abc", 5, 5),
    step("GET", "/db?x-db-time-ms=inf", 5, 5),
    step("GET", "/db?x-db-time-ms=binary", 5, 5),
    step("POST", "/checkout?status=402", 10, 4),
    step("POST", "/checkout/cart?status=200", 6, 6),
    // Neither counter of payment_required: the wrong method, then the wrong path.
    step("GET", "/checkout?status=402", 5, 5),
    step("POST", "/shop?status=402", 5, 5),
    // Neither counter of declined: the path is not under /pay.
    step("GET", "/refund?x-payment-result=declined", 5, 5),
];

/// (cohort, outcome) -> (requests, events) that the plan must produce.
fn expected() -> BTreeMap<(String, String), (u64, u64)> {
    let total = |canary: bool| PLAN.iter().map(|s| if canary { s.canary } else { s.control } as u64).sum::<u64>();
    let mut counts = BTreeMap::new();
    for (cohort, is_canary) in [("canary", true), ("control", false)] {
        let n = |path: &str| {
            let s = PLAN.iter().find(|s| s.path == path).expect("a step of the plan");
            (if is_canary { s.canary } else { s.control }) as u64
        };
        let hits = if is_canary { 60 } else { 80 };
        let declined = n("/pay?x-payment-result=declined");
        let paid = n("/pay?x-payment-result=approved");
        let slow = n("/db?x-db-time-ms=150");
        let required = n("/checkout?status=402");
        let other_posts = n("/checkout/cart?status=200");
        for (outcome, requests, events) in [
            ("cache_hit", total(is_canary), hits),
            ("declined", declined + paid, declined),
            ("slow_db", total(is_canary), slow),
            ("payment_required", required + other_posts, required),
        ] {
            counts.insert((cohort.to_string(), outcome.to_string()), (requests, events));
        }
    }
    // One excluded user (the shipped deny list) with one declined payment.
    for (outcome, requests, events) in [("cache_hit", 1, 0), ("declined", 1, 1), ("slow_db", 1, 0)] {
        counts.insert(("excluded".to_string(), outcome.to_string()), (requests, events));
    }
    counts
}

/// The user ids of one cohort at [`SHARE_BP`], as the filter hashes them.
fn users(canary: bool) -> Vec<String> {
    let share = Share::from_basis_points(SHARE_BP).expect("share in range");
    user_ids(0x0c0e, 400).into_iter().filter(|id| share.includes(bucket(DEPLOYMENT, id)) == canary).take(50).collect()
}

async fn send(http: &reqwest::Client, envoy: &Envoy, method: &str, path: &str, user: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let response = http
        .request(method, format!("http://{}{path}", envoy.listener))
        .header("x-user-id", user)
        .send()
        .await
        .expect("request through envoy");
    let version = response.headers().get("x-version").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (response.status().as_u16(), version)
}

/// (cohort, outcome) -> (requests, events) from the admin JSON's untagged names.
async fn admin_counts(http: &reqwest::Client, envoy: &Envoy) -> BTreeMap<(String, String), (u64, u64)> {
    let stats: Value = http
        .get(format!("http://{}/stats?format=json", envoy.admin))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let prefix = format!("wasmcustom.canary.deployment.{DEPLOYMENT}.cohort.");
    let mut counts: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for stat in stats["stats"].as_array().expect("a stats list") {
        let (Some(name), Some(value)) = (stat["name"].as_str(), stat["value"].as_u64()) else { continue };
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let Some((cohort, rest)) = rest.split_once(".outcome.") else { continue };
        let Some((outcome, counter)) = rest.split_once('.') else { continue };
        let entry = counts.entry((cohort.to_string(), outcome.to_string())).or_default();
        match counter {
            "outcome_requests_total" => entry.0 = value,
            "outcome_events_total" => entry.1 = value,
            other => panic!("unexpected outcome stat {name} ({other})"),
        }
    }
    counts.retain(|_, (requests, events)| *requests > 0 || *events > 0);
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_counted_per_cohort_with_the_contract_names() {
    let stable = CacheUpstream::start("stable", Misses { misses: 1, every: 5 }).await;
    let canary = CacheUpstream::start("canary", Misses { misses: 2, every: 5 }).await;
    // No analyzer: the share is the initial one, so no config server and no polling.
    let nowhere: SocketAddr = "127.0.0.1:1".parse().expect("address");
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, nowhere);
    config.edit_plugin_config(|json| {
        let object = json.as_object_mut().expect("plugin configuration object");
        object.remove("analyzer");
        object.insert("initial_share_bp".into(), SHARE_BP.into());
        object.insert("outcomes".into(), rules());
    });
    let envoy = Envoy::start(&config, 2).await;
    let http = reqwest::Client::new();

    for (is_canary, version) in [(true, "canary"), (false, "stable")] {
        let users = users(is_canary);
        let mut sent = 0;
        for s in &PLAN {
            let expected_status = s.path.split_once("status=").map_or(200, |(_, code)| code.parse().expect("status"));
            for _ in 0..if is_canary { s.canary } else { s.control } {
                let user = &users[sent % users.len()];
                sent += 1;
                let (status, answered) = send(&http, &envoy, s.method, s.path, user).await;
                assert_eq!((status, answered.as_str()), (expected_status, version), "{} {}", s.method, s.path);
            }
        }
    }
    let (status, answered) = send(&http, &envoy, "GET", "/pay?x-payment-result=declined", "do-not-canary").await;
    assert_eq!((status, answered.as_str()), (200, "stable"));

    // Envoy counts in on_log, as the stream ends: just after the client has its answer.
    let expected = expected();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = admin_counts(&http, &envoy).await;
        if counts == expected {
            break;
        }
        assert!(Instant::now() < deadline, "admin JSON outcome counts\n{counts:#?}\n!= expected\n{expected:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let text = envoy.prometheus().await;
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Envoy's exposition parses");
    let mut prometheus: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut requests_per_cohort: HashMap<String, u64> = HashMap::new();
    for sample in &scrape.samples {
        let labels: BTreeSet<&str> = sample.labels.keys().map(|k| k.as_str()).collect();
        let PromValue::Counter(value) = sample.value else { continue };
        let label = |name: &str| sample.labels.get(name).unwrap_or("").to_string();
        if sample.metric == OUTCOME_REQUESTS || sample.metric == OUTCOME_EVENTS {
            assert_eq!(labels, BTreeSet::from(["deployment", "cohort", "outcome"]), "{sample:?}");
            let entry = prometheus.entry((label("cohort"), label("outcome"))).or_default();
            if sample.metric == OUTCOME_REQUESTS { entry.0 = value as u64 } else { entry.1 = value as u64 }
        } else if sample.metric == REQUESTS {
            assert_eq!(labels, BTreeSet::from(["deployment", "cohort", "class"]), "no outcome stat among {sample:?}");
            *requests_per_cohort.entry(label("cohort")).or_default() += value as u64;
        } else {
            assert!(!sample.metric.contains("outcome"), "an outcome stat under another name: {sample:?}");
        }
    }
    prometheus.retain(|_, (requests, events)| *requests > 0 || *events > 0);
    assert_eq!(prometheus, expected, "canary_outcome_*_total{{deployment,cohort,outcome}} in /stats/prometheus");
    for line in [
        r#"canary_outcome_requests_total{deployment="demo",cohort="canary",outcome="cache_hit"} 216"#,
        r#"canary_outcome_events_total{deployment="demo",cohort="control",outcome="cache_hit"} 80"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line} in:\n{text}");
    }
    // The request counters are untouched by outcome stats: one per request sent.
    let total = |canary: bool| PLAN.iter().map(|s| if canary { s.canary } else { s.control } as u64).sum::<u64>();
    assert_eq!(requests_per_cohort.get("canary"), Some(&total(true)));
    assert_eq!(requests_per_cohort.get("control"), Some(&total(false)));
    assert_eq!(requests_per_cohort.get("excluded"), Some(&1));
}
