//! gRPC through the real Envoy: a tonic client calls `canary.test.Greeter/SayHello` as
//! many users through Envoy (HTTP/2 without TLS), which routes on the filter's cohort
//! header to a stable and a canary tonic server (`canary_e2e::grpc_upstream`).
//!
//! A gRPC call fails with HTTP 200 and a `grpc-status`, so only a deployment declared
//! `"protocol": "grpc"` in the plugin configuration is classified by that status (README,
//! "Plugin configuration"): then a canary failing 5 % of its calls with UNAVAILABLE is
//! counted in the 5xx class and rolled back by the real analyzer at the first or second
//! step, and a healthy one is promoted. Without `protocol` the filter classifies by the
//! HTTP status (every call 2xx), which the plumbing test checks too.
//!
//! Failures are spread evenly by a call counter in the upstream (5 % fails 5 of every 100
//! calls), so the counts the tests expect are exact, not sampled.

use canary_analyzer::engine::RolloutStatus;
use canary_analyzer::stats::Verdict;
use canary_core::metrics::{StatusClass, requests_stat};
use canary_core::{Cohort, RolloutPhase};
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, TestPolicy, fresh_dir};
use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::grpc_client::{Call, GreeterClient, say_hello_on_the_wire, start_grpc_load};
use canary_e2e::grpc_upstream::{FailureShape, GrpcBehaviour, GrpcUpstream};
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::rig::{DEPLOYMENT, POLL_INTERVAL, Rig};
use canary_e2e::traffic::user_ids;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

/// Per-call timeout of the test clients: a loopback call takes milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The canary's failures: 5 % of its calls UNAVAILABLE (a server error: 5xx class).
const FIVE_PERCENT_UNAVAILABLE: GrpcBehaviour =
    GrpcBehaviour { fail_fraction: 0.05, code: Code::Unavailable, shape: FailureShape::TrailersOnly };
/// The share the direct checks route at: half the users each way.
const HALF_BP: u32 = 5_000;

/// The plugin configuration's field that declares a deployment's protocol.
fn declare_grpc(json: &mut serde_json::Value) {
    json["protocol"] = "grpc".into();
}

/// Envoy on the shipped config made to serve gRPC, in front of `stable` and `canary`,
/// polling `analyzer` every 500 ms; `plugin` edits the plugin configuration.
async fn grpc_envoy(
    stable: &GrpcUpstream,
    canary: &GrpcUpstream,
    analyzer: SocketAddr,
    plugin: impl FnOnce(&mut serde_json::Value),
) -> Envoy {
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, analyzer);
    config.for_grpc_upstreams();
    config.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = u64::try_from(POLL_INTERVAL.as_millis()).expect("small").into();
        json["analyzer"]["timeout_ms"] = 250.into();
        plugin(json);
    });
    Envoy::start(&config, 2).await
}

/// Stable and canary upstreams, a config server answering `HALF_BP`, and Envoy routing
/// at it (probe users answered by the version the native function names).
struct DirectRig {
    stable: GrpcUpstream,
    canary: GrpcUpstream,
    _config_server: ConfigServer,
    envoy: Envoy,
    client: GreeterClient,
}

impl DirectRig {
    async fn start(plugin: impl FnOnce(&mut serde_json::Value)) -> DirectRig {
        let (stable, canary) = (GrpcUpstream::start("stable").await, GrpcUpstream::start("canary").await);
        let config_server = ConfigServer::start(Answer::share(DEPLOYMENT, 1, HALF_BP)).await;
        let envoy = grpc_envoy(&stable, &canary, config_server.addr, plugin).await;
        let client = GreeterClient::new(envoy.listener, CALL_TIMEOUT);
        let rig = DirectRig { stable, canary, _config_server: config_server, envoy, client };
        rig.wait_for_share().await;
        rig
    }

    async fn wait_for_share(&self) {
        let probes = user_ids(0xfeed, 32);
        let start = Instant::now();
        loop {
            let calls = self.client.calls_for(&probes).await;
            let routed = probes.iter().zip(&calls).all(|(id, call)| {
                call.version.as_deref() == Some(Rig::expected_version(id, HALF_BP)) && call.code == Code::Ok
            });
            if routed {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "envoy never routed gRPC at {HALF_BP} bp: {calls:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The filter's request counters of deployment `demo`, by (cohort, class), from
    /// Envoy's admin `/stats` (untagged names, as docs/metrics.md lists them).
    async fn request_counts(&self) -> HashMap<(Cohort, StatusClass), u64> {
        let url =
            format!("http://{}/stats?filter=^wasmcustom\\.canary\\.deployment\\.{DEPLOYMENT}\\.", self.envoy.admin);
        let text = reqwest::get(url).await.expect("admin reachable").text().await.expect("stats text");
        let values: HashMap<&str, u64> = text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name, value.trim().parse().ok()?))
            })
            .collect();
        let mut counts = HashMap::new();
        for cohort in [Cohort::Canary, Cohort::Control] {
            for class in StatusClass::ALL {
                let name = format!("wasmcustom.{}", requests_stat(DEPLOYMENT, cohort, class));
                counts.insert((cohort, class), values.get(name.as_str()).copied().unwrap_or(0));
            }
        }
        counts
    }

    /// Polls until the counters have grown from `before` by exactly `expected` (the
    /// classes not named there by 0), failing with what they show after 10 s.
    async fn wait_for_counts(
        &self,
        before: &HashMap<(Cohort, StatusClass), u64>,
        expected: &[(Cohort, StatusClass, u64)],
    ) {
        let start = Instant::now();
        loop {
            let now = self.request_counts().await;
            let grown: HashMap<(Cohort, StatusClass), u64> =
                now.iter().map(|(key, n)| (*key, n - before.get(key).copied().unwrap_or(0))).collect();
            let wanted = |key: &(Cohort, StatusClass)| {
                expected.iter().find(|(c, k, _)| (*c, *k) == *key).map(|(_, _, n)| *n).unwrap_or(0)
            };
            if grown.iter().all(|(key, n)| *n == wanted(key)) {
                return;
            }
            let mut shown: Vec<String> = grown
                .iter()
                .filter(|(key, n)| **n > 0 || wanted(key) > 0)
                .map(|((c, k), n)| format!("{}/{}: {n} (expected {})", c.label(), k.label(), wanted(&(*c, *k))))
                .collect();
            shown.sort();
            assert!(start.elapsed() < Duration::from_secs(10), "the filter's counters grew by:\n{}", shown.join("\n"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn count(calls: &[Call], version: &str, code: Code) -> usize {
    calls.iter().filter(|c| c.version.as_deref() == Some(version) && c.code == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_upstream_fails_its_fraction_of_calls_with_its_code_in_either_shape() {
    let upstream = GrpcUpstream::start("canary").await;
    let client = GreeterClient::new(upstream.addr, CALL_TIMEOUT);
    let ids = user_ids(0x9c, 200);
    upstream.set_behaviour(FIVE_PERCENT_UNAVAILABLE);
    let calls = client.calls_for(&ids).await;
    assert_eq!(count(&calls, "canary", Code::Unavailable), 10, "5 % of 200: {calls:?}");
    assert_eq!(count(&calls, "canary", Code::Ok), 190, "{calls:?}");
    assert!(calls.iter().all(|c| !c.transport_error));
    let after_message = GrpcBehaviour { fail_fraction: 0.1, code: Code::NotFound, shape: FailureShape::AfterMessage };
    upstream.set_behaviour(after_message);
    let calls = client.calls_for(&ids).await;
    assert_eq!(count(&calls, "canary", Code::NotFound), 20, "10 % of 200: {calls:?}");
    assert_eq!(count(&calls, "canary", Code::Ok), 180, "{calls:?}");
    assert_eq!((upstream.calls(), upstream.failed_calls()), (400, 30));

    // On the wire: a trailers-only failure carries grpc-status in its headers, no body;
    // the other a message, then grpc-status in the trailers; a reply grpc-status 0 there.
    upstream.set_behaviour(GrpcBehaviour { fail_fraction: 1.0, ..FIVE_PERCENT_UNAVAILABLE });
    let trailers_only = say_hello_on_the_wire(upstream.addr, "u1").await;
    assert_eq!(trailers_only.http_status, 200, "{trailers_only:?}");
    assert_eq!(trailers_only.status_in_headers.as_deref(), Some("14"), "{trailers_only:?}");
    assert_eq!((trailers_only.body_bytes, trailers_only.status_in_trailers.as_deref()), (0, None));
    upstream.set_behaviour(GrpcBehaviour { fail_fraction: 1.0, shape: FailureShape::AfterMessage, ..after_message });
    let late = say_hello_on_the_wire(upstream.addr, "u1").await;
    assert_eq!((late.http_status, late.status_in_headers.as_deref()), (200, None), "{late:?}");
    assert!(late.body_bytes > 5, "a message before the status: {late:?}");
    assert_eq!(late.status_in_trailers.as_deref(), Some("5"), "{late:?}");
    upstream.set_behaviour(GrpcBehaviour::default());
    let ok = say_hello_on_the_wire(upstream.addr, "u1").await;
    assert_eq!((ok.status_in_headers.as_deref(), ok.status_in_trailers.as_deref()), (None, Some("0")), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_without_protocol_grpc_calls_route_by_cohort_and_count_by_http_status() {
    let rig = DirectRig::start(|_| {}).await;
    rig.canary.set_behaviour(FIVE_PERCENT_UNAVAILABLE);
    let before = rig.request_counts().await;
    let (canary_before, stable_before) = (rig.canary.calls(), rig.stable.calls());
    let ids = user_ids(0x51, 400);
    let calls = rig.client.calls_for(&ids).await;
    for (id, call) in ids.iter().zip(&calls) {
        assert_eq!(call.version.as_deref(), Some(Rig::expected_version(id, HALF_BP)), "{id}: {call:?}");
    }
    let canary_calls = usize::try_from(rig.canary.calls() - canary_before).expect("small");
    let stable_calls = usize::try_from(rig.stable.calls() - stable_before).expect("small");
    assert_eq!(canary_calls + stable_calls, 400);
    // Every 20th canary call failed with UNAVAILABLE (to within one), through Envoy.
    let unavailable = count(&calls, "canary", Code::Unavailable);
    assert!(unavailable.abs_diff(canary_calls / 20) <= 1, "{unavailable} of {canary_calls}: {calls:?}");
    assert_eq!(count(&calls, "stable", Code::Ok), stable_calls);
    // Classified by the HTTP status: every call answered 200.
    rig.wait_for_counts(
        &before,
        &[
            (Cohort::Canary, StatusClass::Success, canary_calls as u64),
            (Cohort::Control, StatusClass::Success, stable_calls as u64),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_protocol_grpc_failed_calls_count_by_their_grpc_status_in_either_shape() {
    let rig = DirectRig::start(declare_grpc).await;
    let ids = user_ids(0x52, 400);
    for shape in [FailureShape::TrailersOnly, FailureShape::AfterMessage] {
        rig.canary.set_behaviour(GrpcBehaviour { shape, ..FIVE_PERCENT_UNAVAILABLE });
        rig.stable.set_behaviour(GrpcBehaviour { fail_fraction: 0.1, code: Code::NotFound, shape });
        let before = rig.request_counts().await;
        let canary = (rig.canary.calls(), rig.canary.failed_calls());
        let stable = (rig.stable.calls(), rig.stable.failed_calls());
        let calls = rig.client.calls_for(&ids).await;
        let canary_failed = rig.canary.failed_calls() - canary.1;
        let canary_ok = rig.canary.calls() - canary.0 - canary_failed;
        let stable_failed = rig.stable.failed_calls() - stable.1;
        let stable_ok = rig.stable.calls() - stable.0 - stable_failed;
        assert_eq!(count(&calls, "canary", Code::Unavailable) as u64, canary_failed, "{shape:?}: {calls:?}");
        assert_eq!(count(&calls, "stable", Code::NotFound) as u64, stable_failed, "{shape:?}: {calls:?}");
        assert!(canary_failed > 0 && stable_failed > 0, "{shape:?}: {canary_failed} and {stable_failed} failures");
        eprintln!(
            "{shape:?}: canary {canary_ok} OK + {canary_failed} UNAVAILABLE, stable {stable_ok} OK + {stable_failed} NOT_FOUND"
        );
        rig.wait_for_counts(
            &before,
            &[
                (Cohort::Canary, StatusClass::Success, canary_ok),
                (Cohort::Canary, StatusClass::ServerError, canary_failed),
                (Cohort::Control, StatusClass::Success, stable_ok),
                (Cohort::Control, StatusClass::ClientError, stable_failed),
            ],
        )
        .await;
    }
}

/// A policy for deployment `demo`: checks every second, 20 calls per cohort before a
/// verdict, the error rate critical with no tolerance.
fn policy(dir: &Path, ladder: &[(f64, &str)]) -> PathBuf {
    let more_spec = "  metrics:\n    - {name: error_rate, max_relative_increase: 0, critical: true}\n    \
                     - {name: sample_ratio, critical: false}\n";
    TestPolicy { name: "grpc-e2e", deployment: DEPLOYMENT, ladder, min_requests_per_cohort: 20, more_spec }
        .write(dir, "policy.yaml")
}

/// The real analyzer deciding a gRPC rollout, with a load of calls through Envoy.
struct AnalyzedRollout {
    _upstreams: (GrpcUpstream, GrpcUpstream),
    _envoy: Envoy,
    analyzer: AnalyzerProcess,
    load: Load,
}

impl AnalyzedRollout {
    async fn start(name: &str, ladder: &[(f64, &str)], canary: GrpcBehaviour) -> AnalyzedRollout {
        let dir = fresh_dir(name);
        let (stable, canary_upstream) = (GrpcUpstream::start("stable").await, GrpcUpstream::start("canary").await);
        canary_upstream.set_behaviour(canary);
        let analyzer_port = free_port();
        let envoy =
            grpc_envoy(&stable, &canary_upstream, SocketAddr::from(([127, 0, 0, 1], analyzer_port)), declare_grpc)
                .await;
        let mut options = AnalyzerOptions::new(dir.join("state"));
        options.policies = vec![policy(&dir, ladder)];
        options.envoy_admin = vec![format!("http://{}", envoy.admin)];
        options.port = Some(analyzer_port);
        let analyzer = AnalyzerProcess::start(options).await;
        // 150 calls a second over 4 000 users, as the HTTP loop's tests: at 25 % about 37
        // canary calls a second, two of them failing.
        let load = start_grpc_load(envoy.listener, LoadOptions { rps: 150, users: 4_000, ..LoadOptions::default() });
        AnalyzedRollout { _upstreams: (stable, canary_upstream), _envoy: envoy, analyzer, load }
    }

    /// Polls until the rollout leaves `Progressing` (at most `limit`); the status and the shares seen.
    async fn until_decided(&self, limit: Duration) -> (RolloutStatus, Vec<u32>) {
        let decided = |s: &RolloutStatus| s.state.phase != RolloutPhase::Progressing;
        self.analyzer.until(DEPLOYMENT, limit, Duration::from_millis(200), decided).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_5_percent_of_grpc_calls_with_unavailable_is_rolled_back_at_the_first_or_second_step() {
    // 25 % for 20 s, then 50 % until the verdict: the rollback comes at one of these two.
    let ladder = [(25.0, "20s"), (50.0, "120s"), (100.0, "1s")];
    let rollout = AnalyzedRollout::start("grpc-failing", &ladder, FIVE_PERCENT_UNAVAILABLE).await;
    let (status, shares) = rollout.until_decided(Duration::from_secs(90)).await;
    let stats = rollout.load.stats();
    assert_eq!(status.state.phase, RolloutPhase::RolledBack, "{status:#?}\nload {stats:?}");
    assert!(shares == [2_500, 0] || shares == [2_500, 5_000, 0], "rolled back at the first or second step: {shares:?}");
    let audit = rollout.analyzer.audit(DEPLOYMENT).await;
    let rollback = audit.last().expect("audit records");
    assert_eq!(format!("{:?}", rollback.decision.action), "Rollback", "{rollback:#?}");
    let row = rollback.decision.rows.iter().find(|r| r.metric == "error_rate").expect("an error_rate row");
    assert_eq!(row.verdict, Verdict::Worse, "{row:?}");
    let (canary, control) = (row.canary.expect("canary error rate"), row.control.expect("control error rate"));
    // 5 % of the canary's calls, none of stable's.
    assert!((canary - 0.05).abs() < 0.02 && control == 0.0, "{row:?}");
    assert!(stats.canary_errors > 0 && stats.stable_errors == 0 && stats.transport_errors == 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_grpc_canary_is_promoted_through_every_step() {
    let ladder = [(25.0, "4s"), (50.0, "4s"), (100.0, "4s")];
    let rollout = AnalyzedRollout::start("grpc-healthy", &ladder, GrpcBehaviour::default()).await;
    let (status, shares) = rollout.until_decided(Duration::from_secs(90)).await;
    let stats = rollout.load.stats();
    assert_eq!(status.state.phase, RolloutPhase::Promoted, "{status:#?}\nload {stats:?}");
    assert_eq!(shares, [2_500, 5_000, 10_000], "every step, in order");
    let row = status.rows.iter().find(|r| r.metric == "error_rate").expect("an error_rate row");
    assert_eq!((row.canary, row.control), (Some(0.0), Some(0.0)), "{row:?}");
    assert!(stats.canary > 0 && stats.stable > 0 && stats.errors == 0, "{stats:?}");
}
