//! The shipped manifests (istio/, envoy/, examples/ci/): every YAML parses; every
//! plugin configuration in them is accepted by the filter's own parser; every Envoy
//! config by `envoy --mode validate`; the Istio manifests use only fields Istio 1.24's
//! API defines (`canary_e2e::istio_api`); the policy parses with the analyzer's parser;
//! and the pieces agree with each other (cluster names, headers, subsets, metric tags).

use canary_analyzer::policy::RolloutPolicy;
use canary_core::FilterConfig;
use canary_e2e::envoy::{EnvoyConfig, envoy_binary, wasm_path};
use canary_e2e::istio_api::{check_istio_document, check_kubernetes_document, is_istio};
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
    assert_eq!(found.len(), 1, "exactly one {kind} {name} under istio/");
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
    // envoy.yaml, envoy.compose.yaml, the WasmPlugin.
    assert_eq!(checked.len(), 3, "{checked:?}");
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
    assert_eq!(validated, ["envoy/envoy.compose.yaml", "envoy/envoy.yaml"]);
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

#[test]
fn docker_compose_runs_the_compose_config_and_matching_services() {
    let compose = documents_of("envoy/docker-compose.yaml").remove(0).value;
    let services = &compose["services"];
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
    let policy_mount = services["analyzer"]["volumes"][0].as_str().unwrap();
    let policy_file = policy_mount.split(':').next().unwrap().trim_start_matches("../");
    let policy = RolloutPolicy::from_yaml(&std::fs::read_to_string(repo_root().join(policy_file)).unwrap()).unwrap();
    assert_eq!(policy.deployment, filter.deployment);
}

#[test]
fn istio_manifests_use_only_fields_of_istio_1_24s_api() {
    let mut istio = 0;
    let mut kubernetes = 0;
    let mut problems = Vec::new();
    for document in shipped_documents().iter().filter(|d| d.file.starts_with("istio/")) {
        let errors = if is_istio(&document.value) {
            istio += 1;
            check_istio_document(&document.value)
        } else if document.kind() == "Kustomization" {
            continue;
        } else {
            kubernetes += 1;
            let mut errors = check_kubernetes_document(&document.value);
            // Nothing is namespaced by kustomize here: each namespaced object names its own.
            if document.kind() != "Namespace" && document.value["metadata"]["namespace"].as_str().is_none() {
                errors.push("metadata.namespace: missing".to_string());
            }
            errors
        };
        problems.extend(
            errors.into_iter().map(|e| format!("{}: {} {}: {e}", document.origin(), document.kind(), document.name())),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!("{istio} Istio documents checked field by field, {kubernetes} Kubernetes documents minimally");
    assert_eq!((istio, kubernetes), (6, 12));
}

/// A typo anywhere in a shipped Istio manifest fails the build: misspell fields and
/// values at several depths of parsed copies and the checker names each path.
#[test]
fn the_istio_checker_catches_misspelt_fields_and_values() {
    fn rename(map: &mut Yaml, from: &str, to: &str) {
        let map = map.as_mapping_mut().unwrap();
        let value = map.remove(from).unwrap_or_else(|| panic!("no field {from}"));
        map.insert(Yaml::from(to), value);
    }
    let plugin = the_wasm_plugin().value;
    let service = the("VirtualService", "checkout").value;
    let rule = the("DestinationRule", "checkout").value;
    let filter = the("EnvoyFilter", "strip-canary-cohort-header").value;
    assert!([&plugin, &service, &rule, &filter].iter().all(|d| check_istio_document(d).is_empty()));

    let mut cases: Vec<(Yaml, &str)> = Vec::new();
    let mut typo = plugin.clone();
    rename(&mut typo["spec"], "failStrategy", "failStrategey");
    cases.push((typo, "spec.failStrategey: unknown field"));
    let mut typo = plugin.clone();
    typo["spec"]["phase"] = Yaml::from("AUTHZZ");
    cases.push((typo, "spec.phase: AUTHZZ is not one of"));
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
    let mut typo = service.clone();
    typo["spec"]["hosts"] = Yaml::from("checkout.example.com");
    cases.push((typo, "spec.hosts: expected a list"));

    for (document, expected) in cases {
        let errors = check_istio_document(&document);
        assert!(errors.iter().any(|e| e.starts_with(expected)), "expected `{expected}…`, got {errors:?}");
    }
    let mut unknown_kind = service;
    unknown_kind["apiVersion"] = Yaml::from("networking.istio.io/v1beta2");
    assert!(check_istio_document(&unknown_kind)[0].contains("not a kind"));
}

#[test]
fn the_policy_config_map_parses_with_the_analyzer_policy_parser() {
    let config_map = the("ConfigMap", "canary-policy").value;
    let text = config_map["data"]["policy.yaml"].as_str().unwrap();
    let policy = RolloutPolicy::from_yaml(text).unwrap_or_else(|e| panic!("istio/policy.yaml: {e}"));
    let plugin =
        FilterConfig::parse(istio_struct_json(&the_wasm_plugin().value["spec"]["pluginConfig"]).to_string().as_bytes())
            .unwrap();
    assert_eq!(policy.deployment, plugin.deployment, "the policy rolls out the filter's deployment");
    // The Deployment mounts it where the README and the CI example read it.
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
    let header = &http[0]["match"][0]["headers"][filter.routing_header.as_str()];
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
    assert!(lua.contains(&format!("remove(\"{}\")", filter.routing_header)), "{lua}");
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

/// `kubectl apply -k istio/` applies every manifest but the Secret example.
#[test]
fn the_kustomization_lists_every_manifest_but_the_secret_example() {
    let kustomization = documents_of("istio/kustomization.yaml").remove(0).value;
    let mut listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| format!("istio/{}", r.as_str().unwrap()))
        .collect();
    listed.sort();
    let mut files: Vec<String> = yaml_files("istio")
        .iter()
        .map(|p| format!("istio/{}", p.file_name().unwrap().to_string_lossy()))
        .filter(|f| f != "istio/kustomization.yaml" && f != "istio/secret.example.yaml")
        .collect();
    files.sort();
    assert_eq!(listed, files);
    // Where kubectl is installed, its kustomize builds the set (offline; no cluster needed).
    match Command::new("kubectl").args(["kustomize", "istio"]).current_dir(repo_root()).output() {
        Ok(out) => {
            assert!(out.status.success(), "kubectl kustomize istio: {}", String::from_utf8_lossy(&out.stderr));
            let built = parse_documents(&String::from_utf8_lossy(&out.stdout)).unwrap();
            assert!(built.iter().all(|d| d["kind"].as_str() != Some("Secret")), "no Secret is applied");
            let shipped = shipped_documents().iter().filter(|d| d.file.starts_with("istio/")).count();
            // Everything but the kustomization itself and the Secret example.
            assert_eq!(built.len(), shipped - 2);
        }
        Err(_) => println!("kubectl not installed: kustomize build not checked"),
    }
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
    assert!(!workflow["on"].is_null() || !workflow[&Yaml::Bool(true)].is_null(), "a trigger");
}
