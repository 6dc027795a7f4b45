//! Routing through the real Envoy: the share, stickiness, the client's header, anonymous users.

use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::raw_http::{RawReply, get_request, send};
use canary_e2e::rig::{Rig, RigOptions};
use canary_e2e::traffic::user_ids;
use canary_e2e::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_of_10k_users_reach_canary_and_stay_there() {
    let rig = Rig::start(500, RigOptions::default()).await;
    let ids = user_ids(1, 10_000);
    let first = rig.client.versions_for(&ids).await;
    let canary = first.iter().filter(|v| *v == "canary").count();
    let fraction = canary as f64 / ids.len() as f64;
    assert!((fraction - 0.05).abs() <= 0.006, "canary fraction {fraction:.4} outside 5 % ± 0.6 points");
    let mismatches = ids.iter().zip(&first).filter(|(id, v)| *v != Rig::expected_version(id, 500)).count();
    assert_eq!(mismatches, 0, "Envoy's routing must equal the native cohort function for every user");
    let second = rig.client.versions_for(&ids).await;
    assert_eq!(first, second, "every user lands on the same version on a second pass");
}

async fn client_header_is_ignored(rig: &Rig) {
    let stable_users: Vec<String> =
        user_ids(2, 2_000).into_iter().filter(|id| Rig::expected_version(id, 500) == "stable").take(200).collect();
    for id in &stable_users {
        let reply = rig.client.get("/", &[("x-user-id", id), ("x-canary-cohort", "canary")]).await;
        assert_eq!(reply.version.as_deref(), Some("stable"), "user {id} chose canary by header");
        assert_eq!(reply.seen_cohort_header.as_deref(), Some("stable"), "upstream sees the filter's value only");
    }
    let canary_user = user_ids(3, 2_000).into_iter().find(|id| Rig::expected_version(id, 500) == "canary").unwrap();
    let reply = rig.client.get("/", &[("x-user-id", &canary_user), ("x-canary-cohort", "stable")]).await;
    assert_eq!(reply.version.as_deref(), Some("canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_supplied_cohort_header_does_not_route() {
    let rig = Rig::start(500, RigOptions::default()).await;
    client_header_is_ignored(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_alone_replaces_a_client_supplied_cohort_header() {
    // As under Istio: no header-mutation filter in front, the wasm filter must replace it.
    let options =
        RigOptions { envoy: Box::new(|c: &mut EnvoyConfig| c.without_header_stripping()), ..Default::default() };
    let rig = Rig::start(500, options).await;
    client_header_is_ignored(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_users_get_a_sticky_cookie_that_keeps_their_cohort() {
    let rig = Rig::start(5_000, RigOptions::default()).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let first = rig.client.get("/", &[]).await;
        let set_cookie = first.set_cookie.expect("an anonymous request gets a sticky id");
        let pair = set_cookie.split(';').next().unwrap().to_string();
        let id = pair.strip_prefix("canary_uid=").expect("cookie name").to_string();
        assert_eq!(id.len(), 32, "generated ids are 32 hex digits: {set_cookie}");
        assert!(set_cookie.contains("Max-Age=31536000") && set_cookie.contains("HttpOnly"), "{set_cookie}");
        assert_eq!(first.version.as_deref(), Some(Rig::expected_version(&id, 5_000)));
        for _ in 0..3 {
            let next = rig.client.get("/", &[("cookie", &format!("theme=dark; {pair}"))]).await;
            assert_eq!(next.version, first.version, "the sticky cookie keeps the cohort");
            assert_eq!(next.set_cookie, None, "a known id is not re-issued");
        }
        seen.insert(first.version.unwrap());
    }
    assert_eq!(seen.len(), 2, "at 50 % both versions appear among 40 anonymous users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_users_go_to_stable_when_configured_so() {
    let options =
        RigOptions { plugin: Box::new(|json| json["user_id"]["anonymous"] = "control".into()), ..Default::default() };
    let rig = Rig::start(10_000, options).await;
    for _ in 0..50 {
        let reply = rig.client.get("/", &[]).await;
        assert_eq!(reply.version.as_deref(), Some("stable"));
        assert_eq!(reply.set_cookie, None);
    }
    assert_eq!(rig.client.version_for("anyone").await, "canary", "identified users follow the 100 % share");
    assert_eq!(rig.client.version_for("do-not-canary").await, "stable", "the shipped deny list holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_plugin_configuration_is_refused_with_one_line_naming_the_field() {
    let (stable, canary, analyzer) =
        (Upstream::start("stable").await, Upstream::start("canary").await, Upstream::start("x").await);
    let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, analyzer.addr);
    config.edit_plugin_config(|json| json["analyzer"]["when_stale"] = "explode".into());
    let error = match Envoy::try_start(&config, 1).await {
        Ok(_) => panic!("Envoy accepted a plugin configuration with when_stale = \"explode\""),
        Err(e) => e,
    };
    let line = error
        .log
        .lines()
        .find(|l| l.contains("invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no refusal line in:\n{}", error.log));
    assert!(line.contains("analyzer.when_stale") && line.contains("explode") && line.contains("\"keep\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_on_separate_lines_count_as_on_one() {
    // HTTP/1.1 clients may send several `cookie` lines; Envoy joins them only for HTTP/2.
    let options = RigOptions {
        plugin: Box::new(|json| {
            json["population"] = serde_json::json!({"any": [{"header": "x-user-id", "present": true}, {"cookie": "beta", "equals": "1"}]})
        }),
        ..Default::default()
    };
    let rig = Rig::start(5_000, options).await;
    let version =
        |reply: &RawReply| String::from_utf8_lossy(reply.header("x-version").unwrap_or_default()).into_owned();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        // `beta=1` makes anonymous users eligible (the population rule above).
        let first = send(rig.envoy.listener, &get_request("/", &[(b"cookie", b"beta=1")])).await.unwrap();
        let set_cookie = first.header("set-cookie").expect("an anonymous request gets a sticky id").to_vec();
        let pair = set_cookie.split(|&b| b == b';').next().unwrap().to_vec();
        for lines in [[&b"theme=dark"[..], &pair, b"beta=1"], [&pair, b"beta=1", b"theme=dark"]] {
            let request = get_request("/", &lines.map(|line| (&b"cookie"[..], line)));
            let next = send(rig.envoy.listener, &request).await.unwrap();
            assert_eq!(version(&next), version(&first), "the sticky id on any line keeps the cohort");
            assert_eq!(next.header("set-cookie"), None, "a known id is not re-issued");
        }
        seen.insert(version(&first));
    }
    assert_eq!(seen.len(), 2, "at 50 % both versions appear among 20 anonymous users");
    // An id source cookie and a population rule's cookie on separate lines, in either order.
    let canary_user = user_ids(5, 2_000).into_iter().find(|id| Rig::expected_version(id, 5_000) == "canary").unwrap();
    let session = format!("session_user={canary_user}");
    for lines in [[session.as_bytes(), b"beta=1"], [b"beta=1", session.as_bytes()]] {
        let request = get_request("/", &[(b"cookie", lines[0]), (b"cookie", lines[1])]);
        let reply = send(rig.envoy.listener, &request).await.unwrap();
        assert_eq!(version(&reply), "canary", "lines {:?}", lines.map(String::from_utf8_lossy));
        assert_eq!(reply.header("set-cookie"), None);
    }
}
