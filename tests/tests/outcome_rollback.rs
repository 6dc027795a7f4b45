//! A data-path outcome end to end: the filter counts `cache_hit` per cohort in the real
//! Envoy, the analyzer (the real binary) compares the hit rates with the event-rate
//! test and rolls back a canary that misses the cache twice as often as stable
//! (20 % against 10 % `x-cache: MISS`), at the first or second step, with the audit
//! record naming `cache_hit`. Once on the Envoy admin source, once on the Prometheus
//! source with a real Prometheus scraping Envoy.
//!
//! Depends on the filter half of issue 12 (branch `outcomes-filter`): before that is
//! merged the filter counts no outcomes and these tests fail (the rollout holds with
//! "no proxy exports outcome(s) `cache_hit`").

use canary_analyzer::audit::AuditRecord;
use canary_analyzer::engine::RolloutStatus;
use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, TestPolicy, fresh_dir};
use canary_e2e::cache_upstream::{CacheUpstream, Misses};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::prometheus::Prometheus;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The filter's outcome rules, as the plugin configuration's `outcomes` field (README,
/// "Plugin configuration"); the shipped `envoy/envoy.yaml` tags the `outcome` segment.
const OUTCOME_RULES: &str = r#"[{ "name": "cache_hit", "response_header": "x-cache", "equals": "HIT" }]"#;

/// One request in n misses the cache: stable 1 in 10, canary 1 in 5 (twice as often).
const STABLE_MISSES: Misses = Misses { misses: 1, every: 10 };
const CANARY_MISSES: Misses = Misses { misses: 1, every: 5 };
/// The filter polls every 500 ms, as in the other e2e tests; the analyzer checks every second.
const POLL_MS: u64 = 500;
/// 200 requests per second: at 25 % about 50 canary requests a second. The test's
/// information per request is small (90 % against 80 % hits: a rate ratio of 0.89), and
/// the evidence needed for alpha 0.05 takes ~25 s of it at 50 % (see docs/benchmarks.md and docs/testing.md);
/// light enough for a busy two-core machine.
const RPS: u32 = 200;
/// 25 % for 20 s, then 50 % until the verdict: the rollback comes at one of these two.
const LADDER: [(f64, &str); 3] = [(25.0, "20s"), (50.0, "120s"), (100.0, "1s")];
/// Prometheus scrapes four times per 1 s check: `increase()` needs two samples in a window.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(250);
/// The whole rollout must end within this (expected: 20-40 s).
const LIMIT: Duration = Duration::from_secs(75);

/// The policy: the error rate and `cache_hit` (lower is worse, no tolerance) critical.
fn policy(dir: &Path) -> PathBuf {
    let more_spec = "  metrics:\n    - {name: error_rate, critical: true}\n    \
                     - {name: cache_hit, outcome: cache_hit, direction: lower_is_worse, max_relative_decrease: 0, critical: true}\n";
    TestPolicy { name: "outcome-e2e", deployment: "demo", ladder: &LADDER, min_requests_per_cohort: 50, more_spec }
        .write(dir, "policy.yaml")
}

/// Which source the analyzer reads.
enum Source {
    EnvoyAdmin,
    Prometheus,
}

struct Run {
    _upstreams: (CacheUpstream, CacheUpstream),
    _envoy: Envoy,
    _prometheus: Option<Prometheus>,
    analyzer: AnalyzerProcess,
    _load: Load,
}

impl Run {
    async fn start(name: &str, source: Source) -> Run {
        let dir = fresh_dir(name);
        let stable = CacheUpstream::start("stable", STABLE_MISSES).await;
        let canary = CacheUpstream::start("canary", CANARY_MISSES).await;
        let analyzer_port = free_port();
        let mut config =
            EnvoyConfig::shipped(stable.addr, canary.addr, SocketAddr::from(([127, 0, 0, 1], analyzer_port)));
        config.edit_plugin_config(|json| {
            json["analyzer"]["poll_interval_ms"] = POLL_MS.into();
            json["analyzer"]["timeout_ms"] = 250.into();
            json["outcomes"] = serde_json::from_str(OUTCOME_RULES).expect("OUTCOME_RULES is JSON");
        });
        let envoy = Envoy::start(&config, 2).await;
        let load = Load::start(envoy.listener, LoadOptions { rps: RPS, users: 4_000, ..LoadOptions::default() });
        let mut options = AnalyzerOptions::new(dir.join("state"));
        options.policies = vec![policy(&dir)];
        options.port = Some(analyzer_port);
        let prometheus = match source {
            Source::EnvoyAdmin => {
                options.envoy_admin = vec![format!("http://{}", envoy.admin)];
                None
            }
            Source::Prometheus => {
                let prometheus = Prometheus::start(&[envoy.admin], SCRAPE_INTERVAL).await;
                prometheus.wait_for_two_scrapes(LIMIT).await;
                options.extra_args = vec!["--prometheus".into(), prometheus.url.clone()];
                Some(prometheus)
            }
        };
        let analyzer = AnalyzerProcess::start(options).await;
        Run { _upstreams: (stable, canary), _envoy: envoy, _prometheus: prometheus, analyzer, _load: load }
    }

    /// Polls until the rollout leaves `Progressing`; the final status and the shares seen.
    async fn until_decided(&self) -> (RolloutStatus, Vec<u32>) {
        let decided = |s: &RolloutStatus| s.state.phase != RolloutPhase::Progressing;
        self.analyzer.until("demo", LIMIT, Duration::from_millis(200), decided).await
    }

    async fn audit(&self) -> Vec<AuditRecord> {
        self.analyzer.audit("demo").await
    }
}

/// The scenario on one source: rolled back at 25 % or 50 %, by `cache_hit`.
async fn a_canary_missing_the_cache_twice_as_often_is_rolled_back(name: &str, source: Source) {
    let run = Run::start(name, source).await;
    let (status, shares) = run.until_decided().await;
    assert_eq!(status.state.phase, RolloutPhase::RolledBack, "{status:#?}\n{}", run.analyzer.log_text());
    assert!(shares == [2_500, 0] || shares == [2_500, 5_000, 0], "rolled back at the first or second step: {shares:?}");
    assert!(status.missing_outcomes.is_empty(), "the filter exports cache_hit: {:?}", status.missing_outcomes);
    let audit = run.audit().await;
    let rollback = audit.last().expect("audit records");
    assert_eq!(format!("{:?}", rollback.decision.action), "Rollback", "{rollback:#?}");
    assert!(rollback.decision.reason.contains("cache_hit"), "{}", rollback.decision.reason);
    let row = rollback.decision.rows.iter().find(|r| r.metric == "cache_hit").expect("a cache_hit row");
    assert_eq!(format!("{:?}", row.verdict), "Worse", "{row:?}");
    let (canary, control) = (row.canary.expect("canary hit rate"), row.control.expect("control hit rate"));
    // 80 % and 90 % hits, give or take the requests in flight at a scrape.
    assert!((canary - 0.8).abs() < 0.03 && (control - 0.9).abs() < 0.03, "{row:?}");
    assert!(row.p_value.is_some_and(|p| p <= 0.05), "{row:?}");
    let error_rate = rollback.decision.rows.iter().find(|r| r.metric == "error_rate").expect("an error_rate row");
    assert_ne!(format!("{:?}", error_rate.verdict), "Worse", "no errors here: {error_rate:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_envoy_admin_source_a_canary_missing_the_cache_twice_as_often_is_rolled_back() {
    a_canary_missing_the_cache_twice_as_often_is_rolled_back("outcome-admin", Source::EnvoyAdmin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_prometheus_source_a_canary_missing_the_cache_twice_as_often_is_rolled_back() {
    a_canary_missing_the_cache_twice_as_often_is_rolled_back("outcome-prometheus", Source::Prometheus).await;
}
