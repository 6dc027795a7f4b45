//! The lifecycle's gates, through the engine: a rollout registered held serves share 0
//! until the pipeline marks it deployed, and a step with `approval: required` waits
//! after its window for an operator, announced once as "approval needed".

use super::*;
use crate::engine::Start;
use crate::hold::HoldReason;
use crate::ladder::Action;
use crate::notify::WebhookTarget;
use canary_core::RolloutPhase;

/// A receiver keeping every JSON body posted to it.
async fn receiver() -> (String, Arc<StdMutex<Vec<serde_json::Value>>>) {
    let received = Arc::new(StdMutex::new(Vec::new()));
    let store = Arc::clone(&received);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            store.lock().unwrap().push(body);
            async { "ok" }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// 1 % then 100 %, the 1 % step waiting for approval.
fn gated_policy() -> RolloutPolicy {
    RolloutPolicy::from_yaml(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: t}\nspec:\n  \
         deployment: checkout\n  ladder:\n    - {share: 1, window: 10s, approval: required}\n    \
         - {share: 100, window: 10s}\n  check_interval: 1s\n  min_requests_per_cohort: 20\n  metrics:\n    \
         - {name: error_rate}\n",
    )
    .unwrap()
}

/// Healthy traffic (1 000 requests a second, none failing) for `seconds` more seconds, checked each second.
async fn healthy_seconds(engine: &Engine, envoy: &StubEnvoy, wall: &AtomicU64, seconds: std::ops::RangeInclusive<u64>) {
    for second in seconds {
        let share_bp = u64::from(engine.config("checkout").unwrap().share_bp);
        let canary = second * 10 * share_bp / 100;
        envoy.serve_counts(&[("checkout", canary, second * 1_000 - canary)]);
        wall.store(T0 + second * 1_000, Ordering::SeqCst);
        engine.check_now("checkout").await.unwrap();
    }
}

#[tokio::test]
async fn a_held_registration_serves_0_until_deployed_and_an_approval_gate_waits_for_an_operator() {
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (url, received) = receiver().await;
    let (clock, wall) = stepped_clock(T0);
    let source = SourceSettings::EnvoyAdmin {
        admin_urls: vec![envoy.url()],
        max_body_bytes: crate::source::DEFAULT_MAX_BODY_BYTES,
    };
    let target = WebhookTarget::parse(&format!("json:approval,promotion:{url}"), "--webhook").unwrap();
    let engine = Arc::new(Engine::open(&dir.0, source, Notifier::new(vec![target])).unwrap().with_wall_clock(clock));
    let pipeline = ActedBy::from(Actor::human("ci").unwrap());

    engine.register_with(gated_policy(), pipeline.clone(), Start::HeldForDeployment, T0).await.unwrap();
    let config = engine.config("checkout").unwrap();
    assert_eq!((config.share_bp, config.state), (0, RolloutPhase::Pending));
    healthy_seconds(&engine, &envoy, &wall, 1..=30).await;
    let status = engine.status("checkout", T0 + 30_000).await.unwrap();
    assert_eq!(status.config.share_bp, 0, "30 healthy seconds later, still nothing of the canary served");
    assert_eq!(status.holds, [HoldReason::AwaitingDeployment { deployment: "checkout".into() }]);

    engine.override_rollout("checkout", &OverrideAction::Deployed, &pipeline, "image v2", T0 + 30_000).await.unwrap();
    assert_eq!(engine.config("checkout").unwrap().share_bp, 100);
    healthy_seconds(&engine, &envoy, &wall, 31..=120).await;
    let status = engine.status("checkout", T0 + 120_000).await.unwrap();
    assert_eq!(status.config.share_bp, 100, "held at 1 % for 80 s past the window: {:?}", status.holds);
    let needed = HoldReason::ApprovalNeeded { deployment: "checkout".into(), step: 1, window_passed: true };
    assert_eq!(status.holds, [needed]);
    let actions: Vec<Action> = engine.audit("checkout").unwrap().iter().map(|r| r.decision.action).collect();
    assert_eq!(actions, [Action::Start, Action::Deployed { share_bp: 100 }, Action::AwaitApproval { step: 0 }]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no approval notification");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = received.lock().unwrap()[0].clone();
    assert_eq!((first["event"].as_str(), first["decision"].as_str()), (Some("approval"), Some("approval needed")));
    assert!(first["reason"].as_str().unwrap().contains("canary-analyzer approve checkout"), "{first}");

    engine
        .override_rollout("checkout", &OverrideAction::Approve, &alice(), "dashboards fine", T0 + 120_500)
        .await
        .unwrap();
    healthy_seconds(&engine, &envoy, &wall, 121..=121).await;
    assert_eq!(engine.config("checkout").unwrap().state, RolloutPhase::Promoted, "the next clean check promotes");
    while received.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no promotion notification");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bodies = received.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2, "one approval needed, one promotion; steps not asked for: {bodies:?}");
    assert_eq!(bodies[1]["event"], "promotion");
}

#[tokio::test]
async fn a_registration_supersedes_one_held_for_deployment_but_not_one_under_way() {
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, _) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    let pipeline = ActedBy::from(Actor::human("ci").unwrap());
    engine.register_with(gated_policy(), pipeline.clone(), Start::HeldForDeployment, T0).await.unwrap();
    let first = engine.config("checkout").unwrap().generation;
    // The run that registered stopped before `deployed`: the next run registers again.
    engine.register_with(gated_policy(), pipeline.clone(), Start::HeldForDeployment, T0 + 1).await.unwrap();
    let config = engine.config("checkout").unwrap();
    assert!(config.generation > first && config.share_bp == 0, "{config:?}");
    engine.override_rollout("checkout", &OverrideAction::Deployed, &pipeline, "v2", T0 + 2).await.unwrap();
    let under_way = engine.register_with(gated_policy(), pipeline, Start::HeldForDeployment, T0 + 3).await;
    assert!(matches!(under_way, Err(EngineError::InProgress(_))), "{under_way:?}");
    assert_eq!(engine.audit("checkout").unwrap().len(), 3, "start, start again, deployed");
}

#[tokio::test]
async fn a_restarted_analyzer_keeps_a_rollout_held_and_its_approval_state() {
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let pipeline = ActedBy::from(Actor::human("ci").unwrap());
    {
        let (clock, _) = stepped_clock(T0);
        let analyzer = engine(&dir, vec![envoy.url()], clock);
        analyzer.register_with(gated_policy(), pipeline.clone(), Start::HeldForDeployment, T0).await.unwrap();
    }
    let (clock, wall) = stepped_clock(T0);
    let analyzer = engine(&dir, vec![envoy.url()], clock);
    let config = analyzer.config("checkout").unwrap();
    assert_eq!((config.share_bp, config.state), (0, RolloutPhase::Pending), "still held after a restart");
    analyzer.override_rollout("checkout", &OverrideAction::Deployed, &pipeline, "v2", T0).await.unwrap();
    healthy_seconds(&analyzer, &envoy, &wall, 1..=30).await;
    assert!(analyzer.status("checkout", T0 + 30_000).await.unwrap().state.awaiting_approval);
    drop(analyzer);
    let (clock, wall) = stepped_clock(T0 + 30_000);
    let analyzer = engine(&dir, vec![envoy.url()], clock);
    healthy_seconds(&analyzer, &envoy, &wall, 31..=40).await;
    let status = analyzer.status("checkout", T0 + 40_000).await.unwrap();
    assert!(status.state.awaiting_approval && status.config.share_bp == 100, "{:?}", status.state);
    let awaits = analyzer
        .audit("checkout")
        .unwrap()
        .iter()
        .filter(|r| matches!(r.decision.action, Action::AwaitApproval { .. }))
        .count();
    assert_eq!(awaits, 1, "recorded and announced once, across the restart");
}
