//! istio-gateway-many/, as `kubectl apply -k` applies it (istio/ with the overlay's objects
//! and patches, built by `canary_e2e::kustomize`): the patched WasmPlugin and Gateway
//! validate against Istio's schemas, the plugin's list form is accepted by the filter's own
//! parser and its matcher sends each external host the gateway serves to the deployment
//! whose routes, subsets and policy the overlay ships, and any other host to none.

use canary_analyzer::policy::RolloutPolicy;
use canary_core::{Cohort, FilterConfig};
use canary_e2e::istio_api::{IstioSchemas, is_istio};
use canary_e2e::kustomize::{build, by_identity};
use canary_e2e::manifests::istio_struct_json;
use serde_yaml_ng::Value as Yaml;
use std::collections::BTreeMap;

const OVERLAY: &str = "istio-gateway-many";

/// The one object of `kind` named `name` in a build.
fn the<'a>(objects: &'a BTreeMap<String, Yaml>, kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = objects.values().filter(|o| o["kind"] == kind && o["metadata"]["name"] == name).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name} in {OVERLAY}");
    found[0]
}

fn of_kind<'a>(objects: &'a BTreeMap<String, Yaml>, kind: &'a str) -> impl Iterator<Item = &'a Yaml> + 'a {
    objects.values().filter(move |o| o["kind"] == kind)
}

/// The overlay changes istio/'s objects only where its patches say: the WasmPlugin's
/// `pluginConfig` (the list form, with the base's analyzer settings and nothing of the
/// single form) and the Gateway's hosts; both validate against Istio's schemas.
#[test]
fn the_overlay_patches_only_the_plugin_configuration_and_the_gateway_hosts() {
    let base = by_identity(build("istio"));
    let built = by_identity(build(OVERLAY));
    let schemas = IstioSchemas::load();
    let mut changed = Vec::new();
    for (key, object) in &base {
        if built[key] != *object {
            if is_istio(&built[key]) {
                let errors = schemas.validate(&built[key]).errors;
                assert!(errors.is_empty(), "{key}: {errors:?}");
            }
            changed.push(key.as_str());
        }
    }
    assert_eq!(
        changed,
        [
            "extensions.istio.io/v1alpha1 WasmPlugin istio-system/wasm-canary",
            "networking.istio.io/v1 Gateway shop/shop-gateway"
        ]
    );

    let (plugin, base_plugin) = (the(&built, "WasmPlugin", "wasm-canary"), the(&base, "WasmPlugin", "wasm-canary"));
    let mut spec = plugin["spec"].clone();
    spec.as_mapping_mut().unwrap().remove("pluginConfig");
    let mut base_spec = base_plugin["spec"].clone();
    base_spec.as_mapping_mut().unwrap().remove("pluginConfig");
    assert_eq!(spec, base_spec, "the same module, phase, failure policy and workloads as istio/");
    let config = istio_struct_json(&plugin["spec"]["pluginConfig"]);
    let base_config = istio_struct_json(&base_plugin["spec"]["pluginConfig"]);
    assert!(config.get("deployment").is_none(), "the list form only: {config}");
    assert_eq!(config["analyzer"], base_config["analyzer"], "the same analyzer as istio/");
    FilterConfig::parse(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{OVERLAY}: pluginConfig: {e}"));

    let (gateway, base_gateway) = (the(&built, "Gateway", "shop-gateway"), the(&base, "Gateway", "shop-gateway"));
    let mut servers = gateway["spec"]["servers"].clone();
    let hosts = servers[0]["hosts"].as_sequence_mut().unwrap();
    assert_eq!(hosts.pop(), Some(Yaml::from("orders.example.com")), "one host added");
    assert_eq!(servers, base_gateway["spec"]["servers"]);
}

/// Each external host of the gateway is a deployment of the plugin, with and without the
/// gateway's port (a client may send either in `:authority`): its VirtualService routes
/// the plugin's header and value to the canary subset and everything else to stable, its
/// DestinationRule has both subsets, each selecting one Deployment of the Service, and a
/// policy rolls out that deployment. A host that is no deployment matches nothing.
#[test]
fn each_gateway_host_is_one_deployment_with_its_routes_subsets_and_policy() {
    let built = by_identity(build(OVERLAY));
    let config = istio_struct_json(&the(&built, "WasmPlugin", "wasm-canary")["spec"]["pluginConfig"]);
    let filter = FilterConfig::parse(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("pluginConfig: {e}"));
    let matched =
        |authority: &str| filter.deployment_for(|| Some(authority.as_bytes().to_vec()), || Some(b"/".to_vec()));

    let gateway = the(&built, "Gateway", "shop-gateway");
    let gateway_name = format!("{}/shop-gateway", gateway["metadata"]["namespace"].as_str().unwrap());
    let server = &gateway["spec"]["servers"][0];
    let port = server["port"]["number"].as_u64().unwrap();
    let gateway_hosts: Vec<&str> = server["hosts"].as_sequence().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    let policies: Vec<String> = of_kind(&built, "ConfigMap")
        .filter_map(|map| map["data"]["policy.yaml"].as_str())
        .map(|text| RolloutPolicy::from_yaml(text).unwrap_or_else(|e| panic!("policy: {e}")).deployment)
        .collect();

    let mut deployments_served = Vec::new();
    for host in &gateway_hosts {
        let index = matched(host).unwrap_or_else(|| panic!("{host}: a host of the gateway matches no deployment"));
        assert_eq!(matched(&format!("{host}:{port}")), Some(index), "{host}:{port}: the same deployment");
        let deployment = &filter.deployments[index];
        let id = deployment.deployment.as_str();
        assert_eq!(policies.iter().filter(|p| *p == id).count(), 1, "{host}: one policy rolls out {id}: {policies:?}");
        deployments_served.push(id);

        // Its VirtualService on this gateway routes the header the filter writes.
        let routes: Vec<&Yaml> = of_kind(&built, "VirtualService")
            .filter(|vs| vs["spec"]["gateways"].as_sequence().unwrap().iter().any(|g| g == gateway_name.as_str()))
            .filter(|vs| vs["spec"]["hosts"].as_sequence().unwrap().iter().any(|h| h == *host))
            .collect();
        assert_eq!(routes.len(), 1, "{host}: one VirtualService on {gateway_name}");
        let http = routes[0]["spec"]["http"].as_sequence().unwrap();
        let header = &http[0]["match"][0]["headers"][deployment.routing_header.as_str()];
        assert_eq!(header["exact"].as_str(), Some(Cohort::Canary.label()), "{host}: {:?}", http[0]["match"]);
        assert_eq!(http[0]["route"][0]["destination"]["subset"].as_str(), Some("canary"), "{host}");
        assert!(http[1]["match"].is_null(), "{host}: the last route takes everything else");
        assert_eq!(http[1]["route"][0]["destination"]["subset"].as_str(), Some("stable"), "{host}");
        for route in http {
            assert_subset_selects_one_deployment(&built, &route["route"][0]["destination"]);
        }
    }
    deployments_served.sort_unstable();
    let mut ids = filter.deployment_ids();
    ids.sort_unstable();
    assert_eq!(deployments_served, ids, "every deployment is a host of the gateway");
    let mut policies = policies;
    policies.sort_unstable();
    assert_eq!(policies, ids, "a policy per deployment, and no other");

    // Any other host the gateway might serve passes untouched.
    for authority in [
        "shop.example.com",
        "shop.example.com:80",
        "example.com",
        "www.checkout.example.com",
        "orders.example.org",
        "checkout.example.com.attacker.test",
        "canary-analyzer.canary-system.svc.cluster.local:8080",
    ] {
        assert_eq!(matched(authority), None, "{authority}: untouched");
    }

    // In-mesh callers pass no filter: every mesh route of a deployment's Service goes to stable.
    for routes in of_kind(&built, "VirtualService").filter(|vs| vs["spec"]["gateways"][0] == "mesh") {
        for route in routes["spec"]["http"].as_sequence().unwrap() {
            assert_eq!(route["route"][0]["destination"]["subset"].as_str(), Some("stable"), "{routes:?}");
            assert_subset_selects_one_deployment(&built, &route["route"][0]["destination"]);
        }
    }
}

/// A route's `destination` (host, subset, port) exists: the DestinationRule of that host has
/// the subset, the Service has the port, and the subset's labels with the Service's selector
/// select exactly one Deployment.
fn assert_subset_selects_one_deployment(built: &BTreeMap<String, Yaml>, destination: &Yaml) {
    let host = destination["host"].as_str().unwrap();
    let subset_name = destination["subset"].as_str().unwrap();
    let rules: Vec<&Yaml> = of_kind(built, "DestinationRule").filter(|r| r["spec"]["host"] == host).collect();
    assert_eq!(rules.len(), 1, "one DestinationRule for {host}");
    let subset = rules[0]["spec"]["subsets"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["name"] == subset_name)
        .unwrap_or_else(|| panic!("{host}: no subset {subset_name}"));
    let (name, rest) = host.split_once('.').unwrap();
    let namespace = rest.split('.').next().unwrap();
    let service = of_kind(built, "Service")
        .find(|s| s["metadata"]["name"] == name && s["metadata"]["namespace"] == namespace)
        .unwrap_or_else(|| panic!("{host}: no Service"));
    let ports = service["spec"]["ports"].as_sequence().unwrap();
    assert!(ports.iter().any(|p| p["port"] == destination["port"]["number"]), "{host}: port {destination:?}");
    let selected: Vec<&str> = of_kind(built, "Deployment")
        .filter(|d| d["metadata"]["namespace"] == namespace)
        .filter(|d| {
            let pod = &d["spec"]["template"]["metadata"]["labels"];
            let selector = service["spec"]["selector"].as_mapping().unwrap();
            let labels = subset["labels"].as_mapping().unwrap();
            selector.iter().chain(labels).all(|(k, v)| pod[k.as_str().unwrap()] == *v)
        })
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(selected.len(), 1, "{host} subset {subset_name} selects {selected:?}");
}
