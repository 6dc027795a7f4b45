//! The shipped manifests (istio/, envoy/, examples/ci/): every YAML parses; every
//! plugin configuration in them is accepted by the filter's own parser; every Envoy
//! config by `envoy --mode validate`; the Istio documents validate against Istio
//! 1.30.3's own CRD schemas (`canary_e2e::istio_api`, vendored in tests/schemas/) and
//! the Kubernetes ones strictly against Kubernetes' schemas (`canary_e2e::kubernetes_api`);
//! the policy parses with the analyzer's parser; and the pieces agree with each other
//! (cluster names, headers, subsets, metric tags).

use canary_analyzer::policy::RolloutPolicy;
use canary_core::FilterConfig;
use canary_e2e::envoy::{EnvoyConfig, envoy_binary, wasm_path};
use canary_e2e::istio_api::{ISTIO_SCHEMAS, IstioSchemas, is_istio};
use canary_e2e::kubernetes_api::{KUBERNETES_VERSIONS, Named, metadata_as_config_map, validate_strictly};
use canary_e2e::manifests::{
    Document, assert_stats_config_matches_the_code, is_envoy_config, istio_struct_json, parse_documents,
    shipped_documents, wasm_filter_configs, yaml_files,
};
use canary_e2e::repo_root;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use std::process::Command;

fn documents_of(file: &str) -> Vec<Document> {
    shipped_documents().into_iter().filter(|d| d.file == file).collect()
}

fn the(kind: &str, name: &str) -> Document {
    let mut found: Vec<Document> =
        shipped_documents().into_iter().filter(|d| d.kind() == kind && d.name() == name).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name} shipped");
    found.remove(0)
}

/// The one `kind` named `name` among the documents of files directly in `dir` (e.g. `istio/mesh`):
/// the examples beside each other may each define an object of that name.
fn the_in(dir: &str, kind: &str, name: &str) -> Document {
    let mut found: Vec<Document> = shipped_documents()
        .into_iter()
        .filter(|d| d.file.rsplit_once('/').is_some_and(|(parent, _)| parent == dir))
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name} in {dir}/");
    found.remove(0)
}

fn the_wasm_plugin() -> Document {
    the("WasmPlugin", "wasm-canary")
}

/// The filter configuration of an Envoy document's wasm filter, as the filter receives it.
fn envoy_plugin_configurations(document: &Document) -> Vec<String> {
    wasm_filter_configs(&document.value)
        .into_iter()
        .map(|config| {
            config["configuration"]["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: wasm filter without a configuration string", document.origin()))
                .to_string()
        })
        .collect()
}

#[test]
fn every_shipped_yaml_file_parses() {
    let mut files = 0;
    for dir in canary_e2e::manifests::SHIPPED_DIRS {
        for path in yaml_files(dir) {
            let text = std::fs::read_to_string(&path).unwrap();
            let documents = parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!documents.is_empty(), "{} holds no document", path.display());
            files += 1;
        }
    }
    let documents = shipped_documents();
    println!("{files} files, {} documents", documents.len());
    assert!(files >= 12 && documents.len() >= 20, "{files} files, {} documents", documents.len());
}

#[test]
fn every_plugin_configuration_is_accepted_by_the_filter_parser() {
    let mut checked = Vec::new();
    for document in shipped_documents() {
        if document.kind() == "WasmPlugin" {
            let json = istio_struct_json(&document.value["spec"]["pluginConfig"]).to_string();
            FilterConfig::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{}: pluginConfig: {e}", document.origin()));
            checked.push(document.origin());
        }
        if is_envoy_config(&document) {
            for text in envoy_plugin_configurations(&document) {
                FilterConfig::parse(text.as_bytes())
                    .unwrap_or_else(|e| panic!("{}: wasm filter configuration: {e}", document.origin()));
                checked.push(document.origin());
            }
        }
    }
    println!("plugin configurations accepted: {checked:?}");
    // envoy.yaml, envoy.compose.yaml, gateway.yaml, per-route.yaml, the gateway's and the mesh's
    // WasmPlugins (the mesh's in the list form).
    assert_eq!(checked.len(), 6, "{checked:?}");
}

#[test]
fn a_misspelt_plugin_configuration_is_refused() {
    let plugin = the_wasm_plugin();
    let mut config = plugin.value["spec"]["pluginConfig"].clone();
    let analyzer = config["analyzer"].as_mapping_mut().unwrap();
    let interval = analyzer.remove("poll_interval_ms").unwrap();
    analyzer.insert(Yaml::from("poll_intervall_ms"), interval);
    let json = istio_struct_json(&config).to_string();
    let error = FilterConfig::parse(json.as_bytes()).unwrap_err();
    assert_eq!(error.field, "poll_intervall_ms", "{error}");
}

#[test]
fn envoy_validates_every_shipped_envoy_config() {
    wasm_path();
    let mut validated = Vec::new();
    for document in shipped_documents().iter().filter(|d| d.file.starts_with("envoy/") && is_envoy_config(d)) {
        assert_eq!(document.index, 0, "{}: an Envoy config is a file of its own", document.origin());
        validate_with_envoy(&document.file);
        validated.push(document.file.clone());
    }
    assert_eq!(
        validated,
        ["envoy/envoy.compose.yaml", "envoy/envoy.yaml", "envoy/gateway.yaml", "envoy/per-route.yaml"]
    );
}

/// The per-route example is envoy.yaml with the wasm filter `disabled: true` and turned on by
/// the `checkout` virtual host only (an empty `FilterConfig` under the filter's name), with no
/// early header mutation: the same stats settings, filter configuration and clusters.
#[test]
fn the_per_route_config_is_envoy_yaml_with_the_filter_enabled_per_virtual_host() {
    let envoy = documents_of("envoy/envoy.yaml").remove(0).value;
    let per_route = documents_of("envoy/per-route.yaml").remove(0).value;
    for key in ["admin", "stats_config"] {
        assert_eq!(per_route[key], envoy[key], "{key}");
    }
    assert_eq!(per_route["static_resources"]["clusters"], envoy["static_resources"]["clusters"]);
    let manager = |yaml: &Yaml| {
        yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"].clone()
    };
    let (envoy_manager, per_route_manager) = (manager(&envoy), manager(&per_route));
    let mut filters = per_route_manager["http_filters"].as_sequence().unwrap().clone();
    let wasm = filters[0].as_mapping_mut().unwrap();
    assert_eq!(wasm.remove("disabled"), Some(Yaml::Bool(true)), "the filter is off unless a route turns it on");
    assert_eq!(
        filters,
        envoy_manager["http_filters"].as_sequence().unwrap().clone(),
        "the same filters, the same configuration"
    );
    assert!(per_route_manager["early_header_mutation_extensions"].is_null(), "no strip on every route");

    let filter_name = envoy_manager["http_filters"][0]["name"].clone();
    let enabling: Yaml =
        serde_yaml_ng::from_str(r#"{"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {}}"#)
            .unwrap();
    let hosts = per_route_manager["route_config"]["virtual_hosts"].as_sequence().unwrap();
    let enabled: Vec<&str> = hosts
        .iter()
        .filter(|host| !host["typed_per_filter_config"].is_null())
        .map(|host| {
            let per_filter = host["typed_per_filter_config"].as_mapping().unwrap();
            assert_eq!(per_filter.len(), 1, "{host:?}");
            assert_eq!(per_filter.get(&filter_name), Some(&enabling), "keyed by the filter's name, an empty config");
            host["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(enabled, ["checkout"]);
    assert!(
        hosts.iter().flat_map(|h| h["routes"].as_sequence().unwrap()).all(|r| r["typed_per_filter_config"].is_null())
    );
}

/// `envoy --mode validate -c FILE` from the repository root (the configs name the
/// module by its path from there).
fn validate_with_envoy(file: &str) {
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "-c", file])
        .current_dir(repo_root())
        .output()
        .expect("run envoy --mode validate");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK"), "envoy --mode validate {file} failed:\n{text}");
}

/// envoy.compose.yaml is envoy.yaml with the compose network's addresses: listeners on
/// all interfaces, clusters by service name through DNS. Nothing else differs.
#[test]
fn the_compose_config_is_envoy_yaml_with_other_addresses() {
    let mut expected = documents_of("envoy/envoy.yaml").remove(0).value;
    let compose = documents_of("envoy/envoy.compose.yaml").remove(0).value;
    expected["admin"]["address"]["socket_address"]["address"] = Yaml::from("0.0.0.0");
    for listener in expected["static_resources"]["listeners"].as_sequence_mut().unwrap() {
        listener["address"]["socket_address"]["address"] = Yaml::from("0.0.0.0");
    }
    let hosts = [("stable", "stable"), ("canary", "canary"), ("canary_analyzer", "analyzer")];
    let clusters = expected["static_resources"]["clusters"].as_sequence_mut().unwrap();
    assert_eq!(clusters.len(), hosts.len());
    for cluster in clusters {
        let name = cluster["name"].as_str().unwrap().to_string();
        let host = hosts.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("cluster {name}")).1;
        cluster["type"] = Yaml::from("STRICT_DNS");
        for endpoints in cluster["load_assignment"]["endpoints"].as_sequence_mut().unwrap() {
            for endpoint in endpoints["lb_endpoints"].as_sequence_mut().unwrap() {
                endpoint["endpoint"]["address"]["socket_address"]["address"] = Yaml::from(host);
            }
        }
    }
    assert!(expected == compose, "envoy.compose.yaml differs from envoy.yaml in more than addresses");
    // Said explicitly: the filter configuration is the same text.
    let envoy = envoy_plugin_configurations(&documents_of("envoy/envoy.yaml")[0]);
    let compose = envoy_plugin_configurations(&documents_of("envoy/envoy.compose.yaml")[0]);
    assert_eq!(envoy, compose);
}

/// A compose value as compose reads it with none of its variables set: each
/// `${NAME:-default}` replaced by its default.
fn with_compose_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).unwrap_or_else(|| panic!("unclosed ${{ in {text}"));
        let expression = &rest[start + 2..end];
        let (_, default) = expression.split_once(":-").unwrap_or_else(|| panic!("{expression}: no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out + rest
}

#[test]
fn docker_compose_runs_the_compose_config_and_matching_services() {
    let compose = documents_of("envoy/docker-compose.yaml").remove(0).value;
    let services = &compose["services"];
    // Without variables, users get the official Envoy image and the public demo app;
    // the tests swap in local stand-ins (tests/tests/containers_compose.rs).
    let image = |service: &str| with_compose_defaults(services[service]["image"].as_str().unwrap());
    assert_eq!(image("envoy"), "envoyproxy/envoy:v1.40.0");
    assert_eq!(
        (image("stable"), image("canary")),
        ("hashicorp/http-echo:1.0".into(), "hashicorp/http-echo:1.0".into())
    );
    assert_eq!(image("analyzer"), "wasm-canary/canary-analyzer:dev", "the Makefile's ANALYZER_IMAGE");
    // Every published port is on the host's loopback only.
    for (name, service) in services.as_mapping().unwrap() {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = with_compose_defaults(port.as_str().unwrap());
            assert!(port.starts_with("127.0.0.1:"), "{name:?} publishes {port} beyond loopback");
        }
    }
    let command: Vec<&str> =
        services["envoy"]["command"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(command[..2], ["-c", "envoy/envoy.compose.yaml"]);
    let mounts: Vec<&str> =
        services["envoy"]["volumes"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    let workdir = services["envoy"]["working_dir"].as_str().unwrap();
    let config = documents_of("envoy/envoy.compose.yaml").remove(0).value;
    let wasm = wasm_filter_configs(&config)[0]["vm_config"]["code"]["local"]["filename"].as_str().unwrap().to_string();
    for (host, container) in [("./envoy.compose.yaml", "envoy/envoy.compose.yaml"), ("../target/", wasm.as_str())] {
        let target = format!("{workdir}/{container}");
        assert!(
            mounts.iter().any(|m| m.starts_with(host) && m.contains(&format!(":{target}"))),
            "{target} is mounted from {host}: {mounts:?}"
        );
    }
    // The demo services listen where the clusters point.
    for (service, cluster) in [("stable", "stable"), ("canary", "canary")] {
        let port = config["static_resources"]["clusters"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str() == Some(cluster))
            .map(|c| c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"].as_u64().unwrap())
            .unwrap();
        let args = serde_yaml_ng::to_string(&services[service]["command"]).unwrap();
        assert!(args.contains(&format!("-listen=:{port}")), "{service} listens on {port}: {args}");
    }
    // The analyzer's policy is for the deployment the filter is configured with.
    let filter =
        FilterConfig::parse(envoy_plugin_configurations(&documents_of("envoy/envoy.yaml")[0])[0].as_bytes()).unwrap();
    let policy_mount = with_compose_defaults(services["analyzer"]["volumes"][0].as_str().unwrap());
    let policy_file = policy_mount.split(':').next().unwrap().trim_start_matches("../");
    let policy = RolloutPolicy::from_yaml(&std::fs::read_to_string(repo_root().join(policy_file)).unwrap()).unwrap();
    assert_eq!(policy.deployment, filter.deployments[0].deployment);
}

/// What the Istio schemas leave free-form in the shipped manifests, and the test that
/// checks each some other way: `origin kind name: path` → test.
const FREE_FORM_CHECKED_ELSEWHERE: [(&str, &str); 5] = [
    (
        "istio/mesh/wasmplugin.yaml#0 WasmPlugin wasm-canary-orders-callers: spec.pluginConfig",
        "every_plugin_configuration_is_accepted_by_the_filter_parser (the filter's own parser) and the_mesh_pieces_agree_with_each_other_and_the_code",
    ),
    (
        "istio/per-host/envoyfilter.yaml#0 EnvoyFilter wasm-canary-per-host: spec.configPatches[0].patch.value",
        "istio_per_route.rs (applied to the listener in the real Envoy)",
    ),
    (
        "istio/per-host/envoyfilter.yaml#0 EnvoyFilter wasm-canary-per-host: spec.configPatches[1].patch.value",
        "istio_per_route.rs (applied to the listener in the real Envoy)",
    ),
    (
        "istio/strip-cohort-header.yaml#0 EnvoyFilter strip-canary-cohort-header: spec.configPatches[0].patch.value",
        "envoy_validates_the_header_strip_patch (envoy --mode validate)",
    ),
    (
        "istio/wasmplugin.yaml#0 WasmPlugin wasm-canary: spec.pluginConfig",
        "every_plugin_configuration_is_accepted_by_the_filter_parser (the filter's own parser)",
    ),
];

/// Every Istio document validates against Istio 1.30.3's own schema for the kind and
/// version it names; what the schema leaves free-form is exactly what other tests check.
#[test]
fn every_istio_document_validates_against_istio_1_30_3s_schemas() {
    let schemas = IstioSchemas::load();
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    let mut free_form = Vec::new();
    let mut rules = Vec::new();
    for document in shipped_documents().iter().filter(|d| is_istio(&d.value)) {
        let label = format!("{} {} {}", document.origin(), document.kind(), document.name());
        let found = schemas.validate(&document.value);
        problems.extend(found.errors.iter().map(|e| format!("{label}: {e}")));
        free_form.extend(found.free_form.iter().map(|p| format!("{label}: {p}")));
        rules.extend(found.unevaluated_rules.iter().map(|r| format!("{label}: {r}")));
        checked.push(label);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!("{} Istio documents valid against {ISTIO_SCHEMAS}: {checked:#?}", checked.len());
    // istio/: 6; istio/mesh/: the WasmPlugin, the DestinationRule, the VirtualService;
    // istio/per-host/: the EnvoyFilter; istio-gateway-many/: the DestinationRule and two
    // VirtualServices (its patched WasmPlugin and Gateway: the_gateway_many_pieces_agree_…).
    assert_eq!(checked.len(), 13, "{checked:#?}");
    let expected: Vec<&str> = FREE_FORM_CHECKED_ELSEWHERE.iter().map(|(path, _)| *path).collect();
    assert_eq!(free_form, expected, "free-form values, each needing a check of its own");
    println!("CEL rules on these paths, not evaluated (no CEL interpreter here): {rules:#?}");
}

/// Every Kubernetes document, and the metadata of every Istio document, validates
/// strictly (no unknown field) against Kubernetes' own schemas, for the oldest and
/// newest Kubernetes checked. The kustomization is kustomize's, not Kubernetes' API:
/// kubernetes-validate has no schema for it (the kustomization test builds it where
/// kubectl is installed).
#[test]
fn every_kubernetes_document_validates_strictly_against_kubernetes_schemas() {
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    let kubernetes_dirs = ["istio/", "istio-gateway-many/"];
    for document in shipped_documents().iter().filter(|d| kubernetes_dirs.iter().any(|dir| d.file.starts_with(dir))) {
        let origin = format!("{} {} {}", document.origin(), document.kind(), document.name());
        if document.kind() == "Kustomization" {
            continue;
        }
        if is_istio(&document.value) {
            documents
                .push(Named { origin: format!("{origin} (metadata)"), value: metadata_as_config_map(&document.value) });
            continue;
        }
        // Nothing is namespaced by kustomize here: each namespaced object names its own.
        if document.kind() != "Namespace" && document.value["metadata"]["namespace"].as_str().is_none() {
            problems.push(format!("{origin}: metadata.namespace: missing"));
        }
        documents.push(Named { origin, value: document.value.clone() });
    }
    for version in KUBERNETES_VERSIONS {
        for (origin, result) in validate_strictly(&documents, version) {
            if let Err(e) = result {
                problems.push(format!("Kubernetes {version}: {origin}: {e}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let kinds: Vec<&str> = documents.iter().map(|d| d.origin.as_str()).collect();
    println!("valid against Kubernetes {KUBERNETES_VERSIONS:?}, strictly: {kinds:#?}");
    // 12 Kubernetes documents and the metadata of 6 Istio ones under istio/; 5 and 3 under
    // istio/mesh/; the metadata of the EnvoyFilter under istio/per-host/; 4 and 3 under
    // istio-gateway-many/.
    assert_eq!(documents.len(), 34, "{kinds:#?}");
}

fn rename(map: &mut Yaml, from: &str, to: &str) {
    let map = map.as_mapping_mut().unwrap();
    let value = map.remove(from).unwrap_or_else(|| panic!("no field {from}"));
    map.insert(Yaml::from(to), value);
}

/// A typo or a wrong type anywhere in a shipped Istio manifest fails: misspell fields,
/// change types and values at several depths of parsed copies, and the schema check
/// names each path.
#[test]
fn the_istio_schema_check_catches_misspelt_fields_and_wrong_types() {
    let schemas = IstioSchemas::load();
    let plugin = the_wasm_plugin().value;
    let service = the("VirtualService", "checkout").value;
    let rule = the("DestinationRule", "checkout").value;
    let filter = the("EnvoyFilter", "strip-canary-cohort-header").value;
    assert!([&plugin, &service, &rule, &filter].iter().all(|d| schemas.validate(d).errors.is_empty()));

    let mut cases: Vec<(Yaml, &str)> = Vec::new();
    // Misspelt fields.
    let mut typo = plugin.clone();
    rename(&mut typo["spec"], "failStrategy", "failStrategey");
    cases.push((typo, "spec.failStrategey: unknown field"));
    let mut typo = plugin.clone();
    rename(&mut typo["spec"]["selector"], "matchLabels", "matchLabel");
    cases.push((typo, "spec.selector.matchLabel: unknown field"));
    let mut typo = service.clone();
    rename(&mut typo["spec"]["http"][0]["route"][0]["destination"], "subset", "subsett");
    cases.push((typo, "spec.http[0].route[0].destination.subsett: unknown field"));
    let mut typo = service.clone();
    rename(&mut typo["spec"]["http"][0]["match"][0]["headers"]["x-canary-cohort"], "exact", "exakt");
    cases.push((typo, "spec.http[0].match[0].headers.x-canary-cohort.exakt: unknown field"));
    let mut typo = rule.clone();
    rename(&mut typo["spec"]["subsets"][1], "labels", "label");
    cases.push((typo, "spec.subsets[1].label: unknown field"));
    let mut typo = filter.clone();
    rename(&mut typo["spec"]["configPatches"][0]["match"]["listener"]["filterChain"], "filter", "filters");
    cases.push((typo, "spec.configPatches[0].match.listener.filterChain.filters: unknown field"));
    let mut typo = service.clone();
    rename(&mut typo, "spec", "sepc");
    cases.push((typo, "sepc: unknown field"));
    // Wrong types and values.
    let mut wrong = service.clone();
    wrong["spec"]["hosts"] = Yaml::from("checkout.example.com");
    cases.push((wrong, "spec.hosts: expected array, found string"));
    let mut wrong = plugin.clone();
    wrong["spec"]["priority"] = Yaml::from("high");
    cases.push((wrong, "spec.priority: expected integer, found string \"high\""));
    let mut wrong = service.clone();
    wrong["spec"]["http"][0]["route"][0]["destination"]["port"]["number"] = Yaml::from(4_294_967_296_u64);
    cases.push((wrong, "spec.http[0].route[0].destination.port.number: 4294967296 is above the maximum 4294967295"));
    let mut wrong = the("WasmPlugin", "wasm-canary-orders-callers").value;
    wrong["spec"]["match"][0]["mode"] = Yaml::from("OUTBOUND");
    cases.push((wrong, "spec.match[0].mode: \"OUTBOUND\" is not one of"));
    let mut wrong = plugin.clone();
    wrong["spec"]["phase"] = Yaml::from("AUTHZZ");
    cases.push((wrong, "spec.phase: \"AUTHZZ\" is not one of"));
    let mut wrong = plugin.clone();
    wrong["spec"]["match"][0]["ports"] = serde_yaml_ng::from_str("[{number: 0}]").unwrap();
    cases.push((wrong, "spec.match[0].ports[0].number: 0 is below the minimum 1"));
    let mut wrong = service.clone();
    wrong["spec"]["http"][0]["match"][0]["headers"]["x-canary-cohort"]["prefix"] = Yaml::from("can");
    cases.push((wrong, "spec.http[0].match[0].headers.x-canary-cohort: matches 2 of oneOf's 4 alternatives"));
    let mut wrong = rule.clone();
    wrong["spec"]["subsets"][0].as_mapping_mut().unwrap().remove("name");
    cases.push((wrong, "spec.subsets[0].name: required field missing"));

    for (document, expected) in cases {
        let errors = schemas.validate(&document).errors;
        assert!(errors.iter().any(|e| e.starts_with(expected)), "expected `{expected}…`, got {errors:?}");
    }
    let mut unknown_version = service;
    unknown_version["apiVersion"] = Yaml::from("networking.istio.io/v1beta2");
    let errors = schemas.validate(&unknown_version).errors;
    assert!(errors[0].contains("is not a kind of Istio 1.30.3's API"), "{errors:?}");
    assert!(errors[0].contains("networking.istio.io/v1/VirtualService"), "names the served versions: {errors:?}");
}

/// The same for Kubernetes' schemas: a misspelt field, a wrong type and a misspelt
/// metadata field of an Istio document each fail kubernetes-validate's strict mode.
#[test]
fn the_kubernetes_schema_check_catches_misspelt_fields_and_wrong_types() {
    let deployment = the("Deployment", "canary-analyzer").value;
    let service = the("Service", "canary-analyzer").value;
    let mut cases: Vec<(Named, &str)> = Vec::new();
    let mut typo = deployment.clone();
    rename(&mut typo["spec"]["template"]["spec"]["securityContext"], "runAsNonRoot", "runAsNonroot");
    cases.push((Named { origin: "misspelt".into(), value: typo }, "'runAsNonroot' was unexpected"));
    let mut wrong = deployment.clone();
    wrong["spec"]["replicas"] = Yaml::from("one");
    cases.push((Named { origin: "replicas as text".into(), value: wrong }, "'one' is not of type 'integer'"));
    let mut wrong = service;
    wrong["spec"]["ports"][0]["port"] = Yaml::from("eighty");
    cases.push((Named { origin: "port as text".into(), value: wrong }, "'eighty' is not of type 'integer'"));
    let mut typo = the_wasm_plugin().value;
    rename(&mut typo["metadata"], "namespace", "namespac");
    cases.push((
        Named { origin: "Istio metadata".into(), value: metadata_as_config_map(&typo) },
        "'namespac' was unexpected",
    ));
    let documents: Vec<Named> = cases.iter().map(|(named, _)| named.clone()).collect();
    let results = validate_strictly(&documents, KUBERNETES_VERSIONS[KUBERNETES_VERSIONS.len() - 1]);
    for (named, expected) in &cases {
        let result = &results[&named.origin];
        assert!(
            result.as_ref().is_err_and(|e| e.contains(expected)),
            "{}: expected `{expected}`, got {result:?}",
            named.origin
        );
    }
}

#[test]
fn the_policy_config_map_parses_with_the_analyzer_policy_parser() {
    let config_map = the("ConfigMap", "canary-policy").value;
    let text = config_map["data"]["policy.yaml"].as_str().unwrap();
    let policy = RolloutPolicy::from_yaml(text).unwrap_or_else(|e| panic!("istio/policy.yaml: {e}"));
    let plugin =
        FilterConfig::parse(istio_struct_json(&the_wasm_plugin().value["spec"]["pluginConfig"]).to_string().as_bytes())
            .unwrap();
    assert_eq!(policy.deployment, plugin.deployments[0].deployment, "the policy rolls out the filter's deployment");
    // The Deployment mounts it where docs/istio.md and the CI example read it.
    let analyzer = the("Deployment", "canary-analyzer").value;
    let pod = &analyzer["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some("canary-policy"))
        .unwrap();
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap();
    assert_eq!(mount["mountPath"].as_str(), Some("/etc/canary"));
}

/// The pieces of istio/ name each other: the filter polls the analyzer's Service, the
/// routes match the header the filter sets, the subsets select the two Deployments,
/// the gateway's stats settings are the code's, the header strip removes that header.
#[test]
fn the_istio_pieces_agree_with_each_other_and_the_code() {
    let plugin = the_wasm_plugin().value;
    let filter =
        FilterConfig::parse(istio_struct_json(&plugin["spec"]["pluginConfig"]).to_string().as_bytes()).unwrap();

    let service = the("Service", "canary-analyzer").value;
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let namespace = service["metadata"]["namespace"].as_str().unwrap();
    let host = format!("canary-analyzer.{namespace}.svc.cluster.local");
    let analyzer = filter.analyzer.clone().unwrap();
    assert_eq!(analyzer.cluster, format!("outbound|{port}||{host}"));
    assert_eq!(analyzer.authority, host);
    let deployment = the("Deployment", "canary-analyzer").value;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env = |name: &str| {
        container["env"].as_sequence().unwrap().iter().find(|e| e["name"].as_str() == Some(name)).unwrap().clone()
    };
    assert_eq!(env("CANARY_ANALYZER_LISTEN")["value"].as_str(), Some(format!("0.0.0.0:{port}").as_str()));
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(1), "one analyzer owns the state");

    // The tokens file: a whole-directory mount of the Secret (a subPath mount would never see a
    // rotation), the example's shape with placeholders only, and no `--token` beside it (refused).
    let tokens_file = env("CANARY_ANALYZER_TOKENS_FILE")["value"].as_str().unwrap().to_string();
    let (dir, key) = tokens_file.rsplit_once('/').unwrap();
    let mount = container["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["mountPath"] == dir).unwrap();
    assert!(mount["subPath"].is_null(), "{mount:?}");
    let pod = &deployment["spec"]["template"]["spec"];
    let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    let example = documents_of("istio/secret.example.yaml").remove(0).value;
    assert_eq!(volume["secret"]["secretName"], example["metadata"]["name"]);
    let lines = example["stringData"][key].as_str().unwrap();
    let table = canary_analyzer::auth::TokenTable::parse(lines).unwrap_or_else(|e| panic!("{e}"));
    assert!(table.len() >= 2, "{table:?}");
    let tokens = lines.lines().filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty());
    assert!(tokens.clone().all(|l| l.starts_with("REPLACE")), "no real token in the repository: {lines}");
    let has_env = |name: &str| container["env"].as_sequence().unwrap().iter().any(|e| e["name"] == name);
    assert!(!has_env("CANARY_ANALYZER_TOKEN"), "--token and --tokens-file together are refused");

    // Routing: the canary route matches exactly the value the filter writes.
    let gateway_routes = the("VirtualService", "checkout").value;
    let http = gateway_routes["spec"]["http"].as_sequence().unwrap();
    let header = &http[0]["match"][0]["headers"][filter.deployments[0].routing_header.as_str()];
    assert_eq!(header["exact"].as_str(), Some(canary_core::Cohort::Canary.label()), "{header:?}");
    assert_eq!(http[0]["route"][0]["destination"]["subset"].as_str(), Some("canary"));
    assert!(http[1]["match"].is_null(), "the last route takes everything else");
    assert_eq!(http[1]["route"][0]["destination"]["subset"].as_str(), Some("stable"));
    let mesh_routes = the("VirtualService", "checkout-mesh").value;
    assert!(
        mesh_routes["spec"]["http"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|r| r["route"][0]["destination"]["subset"].as_str() == Some("stable"))
    );

    // Each subset selects exactly one of the application's Deployments.
    let rule = the("DestinationRule", "checkout").value;
    let deployments: Vec<Document> =
        documents_of("istio/app.yaml").into_iter().filter(|d| d.kind() == "Deployment").collect();
    for subset in rule["spec"]["subsets"].as_sequence().unwrap() {
        let labels = subset["labels"].as_mapping().unwrap();
        let selected: Vec<&str> = deployments
            .iter()
            .filter(|d| {
                labels.iter().all(|(k, v)| d.value["spec"]["template"]["metadata"]["labels"][k.as_str().unwrap()] == *v)
            })
            .map(Document::name)
            .collect();
        assert_eq!(selected.len(), 1, "subset {:?} selects {selected:?}", subset["name"]);
    }

    // The gateway's stats tags and latency buckets are the code's.
    let stats = the("ConfigMap", "canary-gateway-stats").value;
    let bootstrap: Json = serde_json::from_str(stats["data"]["custom_bootstrap.json"].as_str().unwrap()).unwrap();
    assert_stats_config_matches_the_code(&bootstrap["stats_config"]);

    // The header strip removes the routing header, first in the gateway's chain.
    let strip = the("EnvoyFilter", "strip-canary-cohort-header").value;
    let patch = &strip["spec"]["configPatches"][0]["patch"];
    assert_eq!(patch["operation"].as_str(), Some("INSERT_FIRST"));
    let lua = patch["value"]["typed_config"]["default_source_code"]["inline_string"].as_str().unwrap();
    assert!(lua.contains(&format!("remove(\"{}\")", filter.deployments[0].routing_header)), "{lua}");
    assert_eq!(strip["spec"]["workloadSelector"]["labels"], plugin["spec"]["selector"]["matchLabels"]);
}

/// The EnvoyFilter's patch is an Envoy HTTP filter: put it first in envoy.yaml's chain,
/// in place of the early header mutation, and have Envoy validate the result.
#[test]
fn envoy_validates_the_header_strip_patch() {
    let mut config = EnvoyConfig::as_shipped();
    config.strip_with_istio_lua_filter();
    let path = config.write();
    validate_with_envoy(path.to_str().unwrap());
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// `kubectl apply -k istio/` applies every manifest there but the Secret example,
/// `kubectl apply -k istio/mesh/` every manifest of the internal-service example, and
/// `kubectl apply -k istio-gateway-many/` istio/'s and its own; `kustomize::build` (what the
/// overlay's tests read) is what kubectl's kustomize builds.
#[test]
fn the_kustomizations_list_every_manifest_but_the_secret_example() {
    for dir in ["istio", "istio/mesh", "istio-gateway-many"] {
        let kustomization = documents_of(&format!("{dir}/kustomization.yaml")).remove(0).value;
        let resources: Vec<&str> =
            kustomization["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        let (bases, files): (Vec<&str>, Vec<&str>) =
            resources.iter().partition(|r| repo_root().join(dir).join(r).is_dir());
        let mut listed: Vec<String> = files.iter().map(|r| format!("{dir}/{r}")).collect();
        listed.sort();
        let own = |file: &str| file.rsplit_once('/').is_some_and(|(parent, _)| parent == dir);
        let excluded = [format!("{dir}/kustomization.yaml"), format!("{dir}/secret.example.yaml")];
        let mut own_files: Vec<String> =
            shipped_documents().into_iter().map(|d| d.file).filter(|f| own(f) && !excluded.contains(f)).collect();
        own_files.dedup();
        assert_eq!(listed, own_files, "{dir}/kustomization.yaml");
        let own_documents = shipped_documents().iter().filter(|d| own(&d.file) && !excluded.contains(&d.file)).count();
        let base_documents: usize = bases
            .iter()
            .map(|base| {
                let path = repo_root().join(dir).join(base).canonicalize().unwrap();
                let root = repo_root().canonicalize().unwrap();
                canary_e2e::kustomize::build(&path.strip_prefix(root).unwrap().to_string_lossy()).len()
            })
            .sum();
        let built = canary_e2e::kustomize::build(dir);
        assert_eq!(built.len(), own_documents + base_documents, "{dir}");
        assert!(built.iter().all(|d| d["kind"].as_str() != Some("Secret")), "no Secret is applied");
        // Where kubectl is installed, its kustomize builds the same objects (offline; no cluster needed).
        match Command::new("kubectl").args(["kustomize", dir]).current_dir(repo_root()).output() {
            Ok(out) => {
                assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
                let by_kubectl = parse_documents(&String::from_utf8_lossy(&out.stdout)).unwrap();
                let (by_kubectl, ours) =
                    (canary_e2e::kustomize::by_identity(by_kubectl), canary_e2e::kustomize::by_identity(built.clone()));
                assert_eq!(by_kubectl.keys().collect::<Vec<_>>(), ours.keys().collect::<Vec<_>>(), "{dir}");
                for (key, object) in &by_kubectl {
                    assert_eq!(object, &ours[key], "{dir}: {key}: kubectl's build and ours");
                }
            }
            Err(_) => println!("kubectl not installed: kubectl's build of {dir} not compared"),
        }
    }
}

/// The pieces of istio/mesh/ name each other and the gateway's: the callers' plugin runs on
/// their outbound traffic with the gateway's module, matches every name of the `orders`
/// Service with its port, polls the same analyzer; the routes match the header it sets;
/// each subset selects one Deployment; the sidecars' stats settings are the code's; the
/// policy rolls out the plugin's deployment.
#[test]
fn the_mesh_pieces_agree_with_each_other_and_the_code() {
    let gateway_plugin = the_wasm_plugin().value;
    let plugin = the("WasmPlugin", "wasm-canary-orders-callers").value;
    let spec = &plugin["spec"];
    let expected_match: Yaml = serde_yaml_ng::from_str("[{mode: CLIENT}]").unwrap();
    assert_eq!(spec["match"], expected_match, "the callers' outbound traffic only");
    assert!(!spec["selector"]["matchLabels"].as_mapping().unwrap().is_empty(), "selects the callers");
    for key in ["url", "pluginName", "type", "phase", "failStrategy"] {
        assert_eq!(spec[key], gateway_plugin["spec"][key], "{key}: the gateway's");
    }
    let config = istio_struct_json(&spec["pluginConfig"]);
    let gateway_config = istio_struct_json(&gateway_plugin["spec"]["pluginConfig"]);
    assert_eq!(config["analyzer"]["cluster"], gateway_config["analyzer"]["cluster"], "the same analyzer");
    assert_eq!(config["analyzer"]["authority"], gateway_config["analyzer"]["authority"]);
    assert!(config.get("deployment").is_none(), "the list form only");

    // Every name a caller can use for the Service, with its port.
    let service = the_in("istio/mesh", "Service", "orders").value;
    let namespace = service["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(plugin["metadata"]["namespace"].as_str(), Some(namespace), "the callers live beside orders");
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let deployments = config["deployments"].as_array().unwrap();
    assert_eq!(deployments.len(), 1);
    assert_eq!(deployments[0]["id"].as_str(), Some("orders"));
    let hosts: Vec<&str> =
        deployments[0]["match"]["hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    let names = ["orders".to_string(), format!("orders.{namespace}"), format!("orders.{namespace}.svc")];
    let fqdn = format!("orders.{namespace}.svc.cluster.local");
    let expected: Vec<String> = names.iter().chain([&fqdn]).map(|name| format!("{name}:{port}")).collect();
    assert_eq!(hosts, expected);
    // The filter's own matcher sends those authorities to `orders`, and other calls nowhere.
    let filter = FilterConfig::parse(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("pluginConfig: {e}"));
    assert_eq!(filter.deployment_ids(), ["orders"]);
    let matched =
        |authority: &str| filter.deployment_for(|| Some(authority.as_bytes().to_vec()), || Some(b"/".to_vec()));
    for authority in &expected {
        assert_eq!(matched(authority), Some(0), "{authority}");
    }
    for authority in [
        "orders",
        "orders:80",
        "payments:8080",
        "orders.other:8080",
        "canary-analyzer.canary-system.svc.cluster.local:8080",
    ] {
        assert_eq!(matched(authority), None, "{authority}: untouched");
    }

    // Routing: the canary route matches exactly the value the filter writes, for in-mesh callers.
    let header = config["routing_header"].as_str().unwrap();
    let routes = the_in("istio/mesh", "VirtualService", "orders").value;
    assert_eq!(routes["spec"]["hosts"], serde_yaml_ng::to_value([&fqdn]).unwrap());
    assert_eq!(routes["spec"]["gateways"], serde_yaml_ng::to_value(["mesh"]).unwrap());
    let http = routes["spec"]["http"].as_sequence().unwrap();
    assert_eq!(http[0]["match"][0]["headers"][header]["exact"].as_str(), Some(canary_core::Cohort::Canary.label()));
    assert_eq!(http[0]["route"][0]["destination"]["subset"].as_str(), Some("canary"));
    assert!(http[1]["match"].is_null(), "the last route takes everything else");
    assert_eq!(http[1]["route"][0]["destination"]["subset"].as_str(), Some("stable"));
    for route in http {
        assert_eq!(route["route"][0]["destination"]["host"].as_str(), Some(fqdn.as_str()));
        assert_eq!(route["route"][0]["destination"]["port"]["number"].as_u64(), Some(port));
    }

    // Each subset selects exactly one Deployment of the Service, by `version`.
    let rule = the_in("istio/mesh", "DestinationRule", "orders").value;
    assert_eq!(rule["spec"]["host"].as_str(), Some(fqdn.as_str()));
    let apps: Vec<Document> =
        documents_of("istio/mesh/app.yaml").into_iter().filter(|d| d.kind() == "Deployment").collect();
    let subsets = rule["spec"]["subsets"].as_sequence().unwrap();
    assert_eq!(subsets.len(), 2);
    for subset in subsets {
        let labels = subset["labels"].as_mapping().unwrap();
        assert_eq!(labels.get("version"), Some(&subset["name"]), "subset {:?} by its version label", subset["name"]);
        let selected: Vec<&str> = apps
            .iter()
            .filter(|d| {
                let pod = &d.value["spec"]["template"]["metadata"]["labels"];
                labels.iter().all(|(k, v)| pod[k.as_str().unwrap()] == *v)
                    && service["spec"]["selector"]
                        .as_mapping()
                        .unwrap()
                        .iter()
                        .all(|(k, v)| pod[k.as_str().unwrap()] == *v)
            })
            .map(Document::name)
            .collect();
        assert_eq!(selected.len(), 1, "subset {:?} selects {selected:?}", subset["name"]);
    }

    // The sidecars' stats tags and buckets are the code's, in the callers' namespace.
    let stats = the("ConfigMap", "canary-sidecar-stats").value;
    assert_eq!(stats["metadata"]["namespace"].as_str(), Some(namespace));
    let bootstrap: Json = serde_json::from_str(stats["data"]["custom_bootstrap.json"].as_str().unwrap()).unwrap();
    assert_stats_config_matches_the_code(&bootstrap["stats_config"]);

    // The policy rolls out the plugin's deployment.
    let policy = the_in("istio/mesh", "ConfigMap", "canary-policy-orders").value;
    let policy = RolloutPolicy::from_yaml(policy["data"]["policy.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(Some(policy.deployment.as_str()), deployments[0]["id"].as_str());
}

#[test]
fn the_ci_example_registers_and_blocks_on_the_verdict() {
    let workflow = documents_of("examples/ci/canary-gate.yml").remove(0).value;
    let steps = workflow["jobs"]["canary"]["steps"].as_sequence().unwrap();
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    let position =
        |needle: &str| runs.iter().position(|r| r.contains(needle)).unwrap_or_else(|| panic!("no step runs {needle}"));
    let register = position(" register ");
    let deploy = position("set image deployment/checkout-canary");
    let wait = position(" wait ");
    assert!(register < deploy && deploy < wait, "register, then deploy the canary, then wait");
    assert!(position(" validate /policy.yaml") < register, "the policy is checked offline before registering");
    assert!(!workflow["on"].is_null() || !workflow[&Yaml::Bool(true)].is_null(), "a trigger");
}
