//! `envoy/per-route.yaml` on the real Envoy: the filter listed with `disabled: true` runs only
//! on the virtual host that turns it on (`typed_per_filter_config`). A request there is
//! assigned, routed and counted; a request for any other host passes as if the filter were
//! not installed: a forged cohort header reaches the upstream as sent, no sticky cookie,
//! nothing counted. The same observation on the config with the filter enabled everywhere
//! must see the filter, so the checks can tell the two apart.

use canary_e2e::per_route::{CONFIG, OtherHost, ROLLOUT_HOST, wait_for_count};
use canary_e2e::rig::{Rig, RigOptions};
use canary_e2e::traffic::user_ids;
use serde_yaml_ng::Value as Yaml;

/// Half the users on canary: both cohorts appear among a few dozen users.
const SHARE_BP: u32 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_runs_only_on_the_virtual_host_that_enables_it() {
    let options = RigOptions { config_file: CONFIG, host: Some(ROLLOUT_HOST), ..Default::default() };
    // Returns once users on ROLLOUT_HOST route as the native cohort function says at 50 %.
    let rig = Rig::start(SHARE_BP, options).await;
    let before = canary_e2e::envoy::requests_counted(rig.envoy.admin).await;
    assert!(before > 0, "the probes on {ROLLOUT_HOST} were counted");

    let other = OtherHost::send(rig.envoy.listener).await;
    other.assert_untouched();

    // Then requests on the rollout host: assigned (the filter's header replaces the forged
    // one, routed as the native function says), anonymous users get a sticky id.
    let ids = user_ids(0x07e3, 40);
    for id in &ids {
        let reply = rig.client.get("/", &[("x-user-id", id), ("x-canary-cohort", "canary")]).await;
        let expected = Rig::expected_version(id, SHARE_BP);
        assert_eq!(reply.version.as_deref(), Some(expected), "user {id} on {ROLLOUT_HOST}");
        assert_eq!(reply.seen_cohort_header.as_deref(), Some(expected), "the filter's value, not the client's");
    }
    let versions: std::collections::HashSet<&str> = ids.iter().map(|id| Rig::expected_version(id, SHARE_BP)).collect();
    assert_eq!(versions.len(), 2, "both cohorts among the users, so a filter writing one value would fail");
    let anonymous = rig.client.get("/", &[]).await;
    assert!(anonymous.set_cookie.is_some_and(|c| c.starts_with("canary_uid=")), "a sticky id on {ROLLOUT_HOST}");

    // Counted: exactly the rollout host's 41 requests, none of the other host's 30 (sent
    // first, so their counts would have landed before these).
    let rollout_requests = ids.len() as u64 + 1;
    let counted = wait_for_count(rig.envoy.admin, before + rollout_requests).await - before;
    assert_eq!(counted, rollout_requests, "counted only the requests on {ROLLOUT_HOST}");
}

/// The filter enabled everywhere (the example without `disabled: true`): the same requests
/// for the other host are assigned, get a sticky id and are counted, so each check above
/// fails when the filter runs where it should not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_see_the_filter_where_it_is_enabled_everywhere() {
    let options = RigOptions {
        config_file: CONFIG,
        host: Some(ROLLOUT_HOST),
        envoy: Box::new(|config| {
            let filters = config.yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["http_filters"]
                .as_sequence_mut()
                .expect("http_filters");
            let wasm = filters
                .iter_mut()
                .find(|f| f["name"].as_str() == Some("envoy.filters.http.wasm"))
                .and_then(Yaml::as_mapping_mut)
                .expect("the wasm filter");
            assert_eq!(wasm.remove("disabled"), Some(Yaml::Bool(true)), "{CONFIG} ships the filter disabled");
        }),
        ..Default::default()
    };
    let rig = Rig::start(SHARE_BP, options).await;
    let before = canary_e2e::envoy::requests_counted(rig.envoy.admin).await;
    let other = OtherHost::send(rig.envoy.listener).await;
    let forged_reached = other.identified.iter().filter(|r| r.seen_cohort_header.as_deref() == Some("canary"));
    let canary_users = other.users.iter().filter(|id| Rig::expected_version(id, SHARE_BP) == "canary").count();
    assert_eq!(forged_reached.count(), canary_users, "the filter replaced the forged header of every stable user");
    assert!(canary_users < other.users.len());
    assert!(other.anonymous.iter().all(|r| r.set_cookie.is_some()), "sticky ids on the other host");
    let sent = other.requests();
    assert_eq!(
        wait_for_count(rig.envoy.admin, before + sent).await - before,
        sent,
        "the other host's requests counted"
    );
}
