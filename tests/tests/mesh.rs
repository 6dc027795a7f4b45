//! Canaries of internal services, routed by their callers' sidecars, on real Envoys
//! chained as in a mesh: an edge Envoy (`envoy/envoy.yaml`, deployment `demo`) in
//! front of app A, which calls service B through its own sidecar, an outbound Envoy
//! whose list-form filter serves B's two deployments (`orders` and `payments`, as
//! `istio/mesh/` sets them up for Istio). App A forwards `x-user-id`, and also the
//! `x-canary-cohort` the edge set for `demo`, as an app forwarding every header would;
//! the sidecar runs without the early header strip, as Istio's do.
//!
//! - Every user is in the same cohort for B on every request, through the chain and
//!   straight at the sidecar, the one `orders`' own hash gives at its share.
//! - The edge's cohort header for `demo`, forwarded by A, does not route B: users whose
//!   `demo` and `orders` cohorts differ get B's version by `orders`' cohort.
//! - `payments`, on the same sidecar at the same share, gets an independent slice.
//! - `inventory`, which the analyzer answers as unknown, keeps its initial share (all canary)
//!   while the others apply.

use canary_core::{FilterConfig, RolloutConfig, RolloutPhase};
use canary_e2e::config_server::{Answer, ConfigServer};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::mesh_app::MeshApp;
use canary_e2e::request_log::deployment_version;
use canary_e2e::traffic::{Client, user_ids};
use canary_e2e::upstream::Upstream;
use std::time::{Duration, Instant};

/// Every deployment at half: both cohorts are large among 200 users.
const SHARE_BP: u32 = 5_000;

/// The sidecar's plugin configuration: B's two deployments by host (with and without a port).
const SIDECAR_PLUGIN: &str = r#"{
    "defaults": {"user_id": {"sources": [{"header": "x-user-id"}], "anonymous": "control"}},
    "deployments": [
        {"id": "payments", "match": {"hosts": ["payments", "payments:8080"]}},
        {"id": "orders", "match": {"hosts": ["orders", "orders:8080"]}},
        {"id": "inventory", "match": {"hosts": ["inventory"]}, "initial_share_bp": 10000}
    ],
    "analyzer": {"cluster": "canary_analyzer", "poll_interval_ms": 500, "timeout_ms": 250}
}"#;

fn progressing(deployment: &str) -> RolloutConfig {
    RolloutConfig { deployment: deployment.into(), generation: 1, share_bp: SHARE_BP, state: RolloutPhase::Progressing }
}

/// B's version each user gets for `GET path` through `client`, in order.
async fn versions(client: &Client, path: &'static str, ids: &[String]) -> Vec<String> {
    client
        .map_parallel(
            ids,
            move |c, id| async move { c.get(path, &[("x-user-id", &id)]).await.version.unwrap_or_default() },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_cohort_for_an_internal_service_is_the_same_at_every_hop_and_per_deployment() {
    // Service B: each deployment's stable and canary.
    let orders = (Upstream::start("stable").await, Upstream::start("canary").await);
    let payments = (Upstream::start("stable").await, Upstream::start("canary").await);
    let sidecar_config_server =
        ConfigServer::start(Answer::Batch(vec![progressing("orders"), progressing("payments")])).await;

    // A's outbound sidecar: gateway.yaml's layout, its hosts renamed to B's.
    let mut sidecar_config = EnvoyConfig::load_on_free_ports("envoy/gateway.yaml");
    for (cluster, upstream) in [
        ("checkout_stable", &payments.0),
        ("checkout_canary", &payments.1),
        ("orders_stable", &orders.0),
        ("orders_canary", &orders.1),
        ("catalog", &orders.0),
    ] {
        sidecar_config.point_cluster(cluster, upstream.addr.port());
    }
    sidecar_config.point_cluster("canary_analyzer", sidecar_config_server.addr.port());
    let hosts = sidecar_config.virtual_hosts();
    hosts[0]["domains"] = serde_yaml_ng::from_str(r#"["payments", "payments:*"]"#).unwrap();
    hosts[1]["domains"] = serde_yaml_ng::from_str(r#"["orders", "orders:*"]"#).unwrap();
    sidecar_config.without_header_stripping();
    sidecar_config.set_plugin_config_text(SIDECAR_PLUGIN);
    let sidecar = Envoy::start(&sidecar_config, 2).await;
    let sidecar_plugin = FilterConfig::parse(SIDECAR_PLUGIN.as_bytes()).unwrap();
    let (payments_config, orders_config) = (&sidecar_plugin.deployments[0], &sidecar_plugin.deployments[1]);

    // App A behind the edge Envoy, whose filter puts users in `demo`'s cohorts.
    let app = MeshApp::start(sidecar.listener).await;
    let edge_config_server = ConfigServer::start(Answer::share("demo", 1, SHARE_BP)).await;
    let mut edge_config = EnvoyConfig::shipped(app.addr, app.addr, edge_config_server.addr);
    edge_config.edit_plugin_config(|json| {
        json["analyzer"]["poll_interval_ms"] = 500.into();
        json["analyzer"]["timeout_ms"] = 250.into();
    });
    let edge_plugin = FilterConfig::parse(edge_config.plugin_config().to_string().as_bytes()).unwrap();
    let edge = Envoy::start(&edge_config, 2).await;

    let ids = user_ids(0x3e54, 200);
    let expected: Vec<&str> = ids.iter().map(|id| deployment_version(orders_config, SHARE_BP, id)).collect();
    let (through_edge, at_sidecar) = (Client::new(edge.listener), Client::for_host(sidecar.listener, "orders:8080"));
    // Both proxies route with their polled shares within a few polls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while versions(&through_edge, "/orders", &ids).await != expected {
        assert!(Instant::now() < deadline, "B's versions through the chain never matched orders' hash at 50 %");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for round in 0..3 {
        assert_eq!(versions(&through_edge, "/orders", &ids).await, expected, "through the chain, round {round}");
        assert_eq!(versions(&at_sidecar, "/", &ids).await, expected, "straight at the sidecar, round {round}");
    }

    // The edge's `demo` cohort header reached the sidecar and did not route: a user who
    // is canary for `demo` and stable for `orders` (or the other way) got orders' cohort.
    let demo = &edge_plugin.deployments[0];
    let crossed: Vec<&String> = ids
        .iter()
        .filter(|id| deployment_version(demo, SHARE_BP, id) != deployment_version(orders_config, SHARE_BP, id))
        .collect();
    assert!(crossed.len() > 40, "only {} users with different cohorts for demo and orders", crossed.len());
    for id in crossed.iter().take(20) {
        let reply = through_edge.get("/orders", &[("x-user-id", id)]).await;
        let orders_cohort = deployment_version(orders_config, SHARE_BP, id);
        assert_eq!(reply.version.as_deref(), Some(orders_cohort), "user {id}");
        assert_eq!(reply.seen_cohort_header.as_deref(), Some(orders_cohort), "user {id}: B saw another cohort header");
    }
    // A cohort header forged by A itself is replaced the same way.
    let stable_user = ids.iter().zip(&expected).find(|(_, v)| **v == "stable").map(|(id, _)| id).unwrap();
    let forged = at_sidecar.get("/", &[("x-user-id", stable_user), ("x-canary-cohort", "canary")]).await;
    assert_eq!(forged.version.as_deref(), Some("stable"));

    // `payments` on the same sidecar: its own slice at the same share.
    let payments_expected: Vec<&str> = ids.iter().map(|id| deployment_version(payments_config, SHARE_BP, id)).collect();
    assert_eq!(versions(&through_edge, "/payments", &ids).await, payments_expected);
    let differ = expected.iter().zip(&payments_expected).filter(|(a, b)| a != b).count();
    assert!(differ > 40, "orders and payments put only {differ} of 200 users in different cohorts");
    // `inventory`: unknown to the config server, so at its initial 100 % (its requests take
    // the sidecar's default route, whose upstream shows the cohort header it got).
    let inventory = Client::for_host(sidecar.listener, "inventory");
    let seen = inventory
        .map_parallel(&ids[..40], |c, id| async move { c.get("/", &[("x-user-id", &id)]).await.seen_cohort_header })
        .await;
    assert!(seen.iter().all(|h| h.as_deref() == Some("canary")), "{seen:?}");
    println!("{} of 200 users crossed between demo and orders, {differ} between orders and payments", crossed.len());
}
