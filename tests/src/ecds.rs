//! Istio without a cluster: the filter delivered to Envoy the way istiod and
//! istio-agent deliver a `WasmPlugin`, through ECDS, here from a file.
//!
//! What istiod does (istio/istio 1.30+, `pilot/pkg/model/extensions.go`,
//! `pilot/pkg/networking/core/extension/extensionfilter.go`, read, not copied):
//! - a `WasmPlugin` becomes a synthetic TrafficExtension named `<name>~istio-translated-wasmplugin`;
//! - the listener gets an HTTP filter named `extensions.istio.io/trafficextension/<ns>.<name>`
//!   whose `config_discovery` points at ADS with `initial_fetch_timeout: 0s` (the listener
//!   waits for the filter) and accepts the Wasm and the RBAC filter types; `phase` picks
//!   where it goes (AUTHZ: after the authentication filters, before RBAC), `priority`
//!   orders plugins of one phase (highest first);
//! - the ECDS resource of that name is a Wasm filter: `name` `<ns>.<name>`, `root_id` the
//!   `pluginName`, `configuration` a `google.protobuf.StringValue` holding `pluginConfig`
//!   as JSON, `failure_policy` from `failStrategy`, no `vm_id`, runtime V8, the module as a
//!   remote source (`url`, `sha256`, cluster `_`), and the pull policy and the plugin's
//!   resource version as `ISTIO_META_*` VM environment variables.
//!
//! What istio-agent does with it (`pkg/wasm/convert.go`): fetches the module into its cache
//! (`<dir>/<sha256 of the url>/<sha256 of the module>.wasm`, checked against `sha256` if
//! set), strips every `ISTIO_META_*` variable and rewrites the code to that local file;
//! if the fetch fails, it sends an RBAC filter of the same name instead: allow-all under
//! FAIL_OPEN, deny-all otherwise.
//!
//! Releases 1.21 to 1.29 name the filter `extensions.istio.io/wasmplugin/<ns>.<name>`
//! and the plugin `<ns>.<name>`; nothing else here differs.

use crate::analyzer::fresh_dir;
use crate::config_server::{Answer, ConfigServer};
use crate::envoy::{Envoy, EnvoyConfig, wasm_path};
use crate::manifests::{istio_struct_json, shipped_documents};
use crate::upstream::Upstream;
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value as Yaml;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub const RBAC_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const EXTENSION_CONFIG_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// istiod's suffix for the TrafficExtension it makes of a WasmPlugin.
const TRANSLATED_SUFFIX: &str = "~istio-translated-wasmplugin";
/// The prefix of a TrafficExtension's ECDS resource (and HTTP filter) name.
const RESOURCE_PREFIX: &str = "extensions.istio.io/trafficextension/";

/// The shipped `istio/wasmplugin.yaml`, with its `pluginConfig` editable as a user
/// would edit the object (each edit bumps the resource version, as the API server does).
#[derive(Debug, Clone)]
pub struct WasmPlugin {
    pub namespace: String,
    pub name: String,
    pub spec: Yaml,
    /// `pluginConfig` as istiod hands it on: the protobuf `Struct`'s JSON.
    pub plugin_config: Json,
    pub resource_version: u64,
}

/// Where the Wasm filter's module comes from, in the resource Envoy gets.
#[derive(Debug, Clone)]
pub enum ModuleSource {
    /// A file (what istio-agent rewrites a fetched module to).
    Local(PathBuf),
    /// Envoy fetches it itself over HTTP through `cluster` and checks `sha256`.
    Remote { uri: String, cluster: String, sha256: String },
}

impl WasmPlugin {
    pub fn shipped() -> WasmPlugin {
        let documents = shipped_documents();
        let document = documents
            .iter()
            .find(|d| d.kind() == "WasmPlugin" && d.name() == "wasm-canary")
            .expect("istio/wasmplugin.yaml holds the WasmPlugin wasm-canary");
        let value = &document.value;
        let plugin_config = istio_struct_json(&value["spec"]["pluginConfig"]);
        WasmPlugin {
            namespace: value["metadata"]["namespace"].as_str().expect("metadata.namespace").to_string(),
            name: document.name().to_string(),
            spec: value["spec"].clone(),
            plugin_config,
            resource_version: 1,
        }
    }

    /// Edits `pluginConfig` (a `kubectl edit`).
    pub fn edit_plugin_config(&mut self, edit: impl FnOnce(&mut Json)) {
        edit(&mut self.plugin_config);
        self.resource_version += 1;
    }

    /// The deployment id in `pluginConfig`.
    pub fn deployment(&self) -> String {
        self.plugin_config["deployment"].as_str().expect("pluginConfig.deployment").to_string()
    }

    /// The analyzer cluster `pluginConfig` names (Istio's name for the analyzer's Service).
    pub fn analyzer_cluster(&self) -> String {
        self.plugin_config["analyzer"]["cluster"].as_str().expect("pluginConfig.analyzer.cluster").to_string()
    }

    /// The filter configuration as the filter parses it (for native expectations).
    pub fn filter_config(&self) -> canary_core::FilterConfig {
        canary_core::FilterConfig::parse(self.plugin_config.to_string().as_bytes()).expect("pluginConfig parses")
    }

    fn translated_name(&self) -> String {
        format!("{}.{}{TRANSLATED_SUFFIX}", self.namespace, self.name)
    }

    /// The ECDS resource name, which is also the listener's HTTP filter name.
    pub fn resource_name(&self) -> String {
        format!("{RESOURCE_PREFIX}{}", self.translated_name())
    }

    /// istiod's Wasm filter config (`typed_config` of the ECDS resource), code from `source`.
    pub fn wasm_filter(&self, source: &ModuleSource) -> Json {
        let fail_policy = match self.spec["failStrategy"].as_str() {
            Some("FAIL_OPEN") => "FAIL_OPEN",
            Some("FAIL_RELOAD") => "FAIL_RELOAD",
            // FAIL_CLOSE and unset.
            _ => "FAIL_CLOSED",
        };
        let code = match source {
            ModuleSource::Local(path) => json!({"local": {"filename": path.to_string_lossy()}}),
            ModuleSource::Remote { uri, cluster, sha256 } => json!({"remote": {
                "http_uri": {"uri": uri, "cluster": cluster, "timeout": "30s"},
                "sha256": sha256,
            }}),
        };
        let mut config = json!({
            "name": self.translated_name(),
            "root_id": self.spec["pluginName"].as_str().expect("spec.pluginName"),
            "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": code},
            "failure_policy": fail_policy,
        });
        // istiod leaves `configuration` an empty Any when pluginConfig is empty.
        if self.plugin_config.as_object().is_some_and(|o| !o.is_empty()) {
            config["configuration"] = json!({
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": self.plugin_config.to_string(),
            });
        }
        json!({"@type": WASM_FILTER_TYPE, "config": config})
    }

    /// What istio-agent sends in place of the Wasm filter when it cannot fetch the module:
    /// an RBAC filter of the same name, allow-all under FAIL_OPEN, deny-all otherwise.
    pub fn fetch_failed_fallback(&self) -> Json {
        let rbac = if self.spec["failStrategy"].as_str() == Some("FAIL_OPEN") {
            json!({"@type": RBAC_FILTER_TYPE, "rules_stat_prefix": "wasm-default-allow"})
        } else {
            json!({"@type": RBAC_FILTER_TYPE, "rules": {}, "rules_stat_prefix": "wasm-default-deny"})
        };
        json!({"@type": EXTENSION_CONFIG_TYPE, "name": self.resource_name(), "typed_config": rbac})
    }

    /// The ECDS resource: a TypedExtensionConfig, as istio-agent passes it to Envoy when
    /// `source` is the local file it fetched the module to.
    pub fn extension_config(&self, source: &ModuleSource) -> Json {
        json!({"@type": EXTENSION_CONFIG_TYPE, "name": self.resource_name(), "typed_config": self.wasm_filter(source)})
    }
}

/// The file Envoy reads ECDS from, in a directory it watches. Each publication replaces
/// the file atomically (a complete temporary file renamed over it), so Envoy never
/// reads half a file.
pub struct EcdsFile {
    pub dir: PathBuf,
    pub path: PathBuf,
    version: u64,
}

impl EcdsFile {
    /// A fresh directory for the file (not written yet).
    pub fn new(dir: PathBuf) -> EcdsFile {
        std::fs::create_dir_all(&dir).expect("ecds dir");
        let path = dir.join("extension_config.json");
        EcdsFile { dir, path, version: 0 }
    }

    /// The `config_source` of a `config_discovery` reading this file.
    pub fn config_source(&self) -> Json {
        json!({
            "path_config_source": {"path": self.path, "watched_directory": {"path": self.dir}},
            "resource_api_version": "V3",
            // As istiod: the listener waits for the filter's first config.
            "initial_fetch_timeout": "0s",
        })
    }

    /// Writes a `DiscoveryResponse` holding `resource` (a TypedExtensionConfig with `@type`).
    pub fn publish(&mut self, resource: &Json) {
        self.version += 1;
        let response = json!({
            "version_info": self.version.to_string(),
            "type_url": EXTENSION_CONFIG_TYPE,
            "resources": [resource],
        });
        let temporary = self.dir.join(format!(".extension_config.{}.tmp", self.version));
        std::fs::write(&temporary, serde_json::to_vec_pretty(&response).expect("json")).expect("write ecds file");
        std::fs::rename(&temporary, &self.path).expect("rename ecds file into place");
    }
}

/// The HTTP filter istiod puts in the listener, reading ECDS from `file`.
pub fn config_discovery_filter(plugin: &WasmPlugin, file: &EcdsFile) -> Yaml {
    let filter = json!({
        "name": plugin.resource_name(),
        "config_discovery": {
            "config_source": file.config_source(),
            "type_urls": [WASM_FILTER_TYPE, RBAC_FILTER_TYPE],
        },
    });
    serde_yaml_ng::to_value(filter).expect("filter as yaml")
}

/// The shipped Envoy config as an Istio gateway would carry the plugin: the wasm filter
/// replaced by the `config_discovery` one, the analyzer cluster under the name Istio gives
/// it (the one `pluginConfig` names). The header strip stays (Istio's is
/// `istio/strip-cohort-header.yaml`).
pub fn gateway_config(
    plugin: &WasmPlugin,
    file: &EcdsFile,
    stable: SocketAddr,
    canary: SocketAddr,
    analyzer: SocketAddr,
) -> EnvoyConfig {
    let mut config = EnvoyConfig::shipped(stable, canary, analyzer);
    let manager =
        &mut config.yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = manager["http_filters"].as_sequence_mut().expect("envoy.yaml: http_filters is a list");
    let wasm = filters
        .iter()
        .position(|f| f["name"].as_str() == Some("envoy.filters.http.wasm"))
        .expect("envoy.yaml: the wasm filter");
    filters[wasm] = config_discovery_filter(plugin, file);
    let clusters = config.yaml["static_resources"]["clusters"].as_sequence_mut().expect("envoy.yaml: clusters");
    let cluster = clusters
        .iter_mut()
        .find(|c| c["name"].as_str() == Some("canary_analyzer"))
        .expect("envoy.yaml: the analyzer cluster");
    let name = Yaml::from(plugin.analyzer_cluster());
    cluster["name"] = name.clone();
    cluster["load_assignment"]["cluster_name"] = name;
    // An xDS subscription (ECDS from a file too) needs the node's identity; Istio's
    // bootstrap names a gateway pod so (`router~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    let node = json!({
        "id": format!("router~127.0.0.1~istio-ingressgateway-0.{0}~{0}.svc.cluster.local", plugin.namespace),
        "cluster": format!("istio-ingressgateway.{}", plugin.namespace),
    });
    config.yaml["node"] = serde_yaml_ng::to_value(node).expect("node as yaml");
    config
}

/// An Envoy set up as an Istio gateway carrying `plugin` through ECDS from a file, with
/// stable and canary upstreams and a config server standing in for the analyzer.
pub struct IstioGateway {
    pub plugin: WasmPlugin,
    pub file: EcdsFile,
    /// The module as istio-agent cached it (`<sha256>.wasm` in `module_dir`).
    pub module: PathBuf,
    pub module_dir: PathBuf,
    pub envoy: Envoy,
    pub config_server: ConfigServer,
    pub stable: Upstream,
    pub canary: Upstream,
}

impl IstioGateway {
    /// Starts it with the config server answering `share_bp` (generation 1); `envoy`
    /// edits the bootstrap before start. Returns once Envoy's listener is up (with
    /// `initial_fetch_timeout: 0s`, that is once the filter's first config is loaded).
    pub async fn start(plugin: WasmPlugin, share_bp: u32, envoy: impl FnOnce(&mut EnvoyConfig)) -> IstioGateway {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let config_server = ConfigServer::start(Answer::share(&plugin.deployment(), 1, share_bp)).await;
        let dir = fresh_dir("istio-gateway");
        let module_dir = dir.join("wasm-cache");
        let module = cache_module(&std::fs::read(wasm_path()).expect("read the filter"), &module_dir);
        let mut file = EcdsFile::new(dir.join("ecds"));
        file.publish(&plugin.extension_config(&ModuleSource::Local(module.clone())));
        let mut config = gateway_config(&plugin, &file, stable.addr, canary.addr, config_server.addr);
        envoy(&mut config);
        let envoy = Envoy::start(&config, 2).await;
        IstioGateway { plugin, file, module, module_dir, envoy, config_server, stable, canary }
    }

    /// Publishes the plugin with its module from `source` and waits (at most 10 s) until
    /// Envoy reports it applied. Returns when the file was replaced and when Envoy had
    /// applied it.
    pub async fn publish(&mut self, source: &ModuleSource) -> (Instant, Instant) {
        let resource = self.plugin.extension_config(source);
        self.publish_expecting(&resource, Outcome::Applied).await
    }

    /// Publishes istio-agent's stand-in for a module it could not fetch and waits until
    /// Envoy applied it.
    pub async fn publish_fetch_failed(&mut self) -> (Instant, Instant) {
        let resource = self.plugin.fetch_failed_fallback();
        self.publish_expecting(&resource, Outcome::Applied).await
    }

    /// Publishes the plugin with its module from `source` and waits (at most 10 s) until
    /// Envoy reports it refused. Returns when the file was replaced and when Envoy had refused it.
    pub async fn publish_refused(&mut self, source: &ModuleSource) -> (Instant, Instant) {
        let resource = self.plugin.extension_config(source);
        self.publish_expecting(&resource, Outcome::Refused).await
    }

    async fn publish_expecting(&mut self, resource: &Json, outcome: Outcome) -> (Instant, Instant) {
        let before = extension_config_updates(self.envoy.admin).await;
        let published = Instant::now();
        self.file.publish(resource);
        loop {
            let now = extension_config_updates(self.envoy.admin).await;
            let (wanted, unwanted) = match outcome {
                Outcome::Applied => ((now.0, before.0), Some((now.1, before.1))),
                Outcome::Refused => ((now.1, before.1), None),
            };
            if let Some((now, before)) = unwanted {
                assert_eq!(now, before, "Envoy did not do {outcome:?}:\n{}", self.envoy.log_text());
            }
            if wanted.0 > wanted.1 {
                return (published, Instant::now());
            }
            assert!(
                published.elapsed() < Duration::from_secs(10),
                "not {outcome:?} in 10 s:\n{}",
                self.envoy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Serves one module over HTTP (any path), as a plain-Envoy user would host it for a
/// `remote` code source, after an optional delay; counts the fetches.
pub struct ModuleServer {
    pub addr: SocketAddr,
    fetches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModuleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ModuleServer {
    pub async fn start(module: Vec<u8>, delay: Duration) -> ModuleServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind module server");
        let addr = listener.local_addr().expect("module server address");
        let fetches = Arc::new(AtomicU64::new(0));
        let (count, module) = (Arc::clone(&fetches), hyper::body::Bytes::from(module));
        let task = crate::http_server::spawn(listener, move |_| {
            let (count, module) = (Arc::clone(&count), module.clone());
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                crate::http_server::response(200, &[("content-type", "application/wasm")], module)
            }
        });
        ModuleServer { addr, fetches, task }
    }

    /// Requests received so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    pub fn uri(&self) -> String {
        format!("http://{}/canary_filter.wasm", self.addr)
    }
}

/// The shipped Envoy config with the filter's module fetched from `server` through a
/// static cluster `wasm_modules` and checked against `sha256` (Envoy's `remote` source).
pub fn remote_module_config(mut config: EnvoyConfig, server: &ModuleServer, sha256: &str) -> EnvoyConfig {
    let manager =
        &mut config.yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = manager["http_filters"].as_sequence_mut().expect("envoy.yaml: http_filters is a list");
    let wasm = filters
        .iter_mut()
        .find(|f| f["name"].as_str() == Some("envoy.filters.http.wasm"))
        .expect("envoy.yaml: the wasm filter");
    let code = json!({"remote": {
        "http_uri": {"uri": server.uri(), "cluster": "wasm_modules", "timeout": "10s"},
        "sha256": sha256,
    }});
    wasm["typed_config"]["config"]["vm_config"]["code"] = serde_yaml_ng::to_value(code).expect("code as yaml");
    let cluster = json!({
        "name": "wasm_modules",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "wasm_modules", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": server.addr.port()}}
        }}]}]},
    });
    config.yaml["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("envoy.yaml: clusters")
        .push(serde_yaml_ng::to_value(cluster).expect("cluster as yaml"));
    config
}

/// What Envoy does with a published extension config.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Applied,
    Refused,
}

/// ECDS counters of Envoy's admin `/stats`: (configs applied, configs refused), summed
/// over every `extension_config_discovery` subscription.
pub async fn extension_config_updates(admin: SocketAddr) -> (u64, u64) {
    let text = reqwest::get(format!("http://{admin}/stats?filter=^extension_config_discovery\\."))
        .await
        .expect("admin reachable")
        .text()
        .await
        .expect("stats text");
    let sum = |suffix: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(name, _)| name.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    };
    (sum(".config_reload"), sum(".config_fail"))
}

/// One counter or gauge from Envoy's admin `/stats` by exact name (0 if absent).
pub async fn admin_stat(admin: SocketAddr, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{admin}/stats?filter=^{}$", name.replace('.', "\\.")))
        .await
        .expect("admin reachable")
        .text()
        .await
        .expect("stats text");
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok()).unwrap_or(0)
}

/// The module's sha256, lower-case hex (as `sha256sum` prints it and Envoy compares it).
pub fn sha256_hex(path: &Path) -> String {
    let output = std::process::Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(output.status.success(), "sha256sum {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().expect("sha256sum output").to_string()
}

/// `n` as an unsigned LEB128 (how wasm writes section and name lengths).
fn leb128(mut n: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(low);
            return bytes;
        }
        bytes.push(low | 0x80);
    }
}

/// "A new build": the module at `original` with a custom section `wasm-canary-build`
/// holding `label` appended. Other bytes, another sha256, the same code; Envoy sees a
/// different module. Written into `dir` as istio-agent names cached modules,
/// `<sha256>.wasm`; returns that path.
pub fn rebuilt_module(original: &Path, label: &str, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(original).expect("read module");
    const CUSTOM_SECTION: u8 = 0;
    let name = b"wasm-canary-build";
    let mut payload = leb128(name.len());
    payload.extend_from_slice(name);
    payload.extend_from_slice(label.as_bytes());
    bytes.push(CUSTOM_SECTION);
    bytes.extend(leb128(payload.len()));
    bytes.extend(payload);
    cache_module(&bytes, dir)
}

/// Writes module bytes into `dir` as `<sha256>.wasm` (istio-agent's cache naming).
pub fn cache_module(bytes: &[u8], dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("module cache dir");
    let temporary = dir.join("module.tmp");
    std::fs::write(&temporary, bytes).expect("write module");
    let path = dir.join(format!("{}.wasm", sha256_hex(&temporary)));
    std::fs::rename(&temporary, &path).expect("name module by checksum");
    path
}

#[cfg(test)]
mod tests {
    use super::leb128;

    #[test]
    fn leb128_encodes_as_wasm_does() {
        assert_eq!(leb128(0), [0]);
        assert_eq!(leb128(127), [0x7f]);
        assert_eq!(leb128(128), [0x80, 0x01]);
        assert_eq!(leb128(624_485), [0xe5, 0x8e, 0x26]);
    }
}
