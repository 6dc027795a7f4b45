//! Runs the real analyzer binary (`canary-analyzer serve`) as a subprocess on a loopback
//! port, with its output in a log file, and kills it when the handle is dropped. The
//! end-to-end tests need a real process: a SIGKILL mid-step must be survivable, and
//! Envoy's static `canary_analyzer` cluster must find it again on the same port after
//! a restart. Also hands out fresh per-test directories for state and logs.

use crate::{free_port, repo_root};
use canary_analyzer::audit::AuditRecord;
use canary_analyzer::engine::RolloutStatus;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long the analyzer may take to answer `/healthz` after start (a debug build on a
/// busy two-core machine reading its state can be slow; a healthy one takes well under 1 s).
const START_LIMIT: Duration = Duration::from_secs(30);

/// The analyzer binary: `$CANARY_ANALYZER_BIN`, or the debug build in the repository's target dir.
pub fn analyzer_binary() -> PathBuf {
    let path = std::env::var_os("CANARY_ANALYZER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/canary-analyzer"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p canary-analyzer` (make test does) first, or set CANARY_ANALYZER_BIN",
        path.display()
    );
    path
}

/// A fresh, empty directory for one test: unique per process and call, named after
/// `name` so a failed test's files are easy to find. Left in place for inspection.
pub fn fresh_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wasm-canary-e2e-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A rollout policy for a test: second-long checks, a short ladder, and the rest of `spec`.
pub struct TestPolicy<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    pub deployment: &'a str,
    /// Each step's share in percent and its window (`"20s"`).
    pub ladder: &'a [(f64, &'a str)],
    pub min_requests_per_cohort: u32,
    /// More `spec` fields as YAML lines indented two spaces (the metrics, a `source`).
    pub more_spec: &'a str,
}

impl TestPolicy<'_> {
    /// Writes the policy, checking every second, to `dir/file` and returns that path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let steps: String =
            self.ladder.iter().map(|(share, window)| format!("    - {{share: {share}, window: {window}}}\n")).collect();
        let text = format!(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: {}}}\nspec:\n  \
             deployment: {}\n  ladder:\n{steps}  check_interval: 1s\n  min_requests_per_cohort: {}\n{}",
            self.name, self.deployment, self.min_requests_per_cohort, self.more_spec
        );
        let path = dir.join(file);
        std::fs::write(&path, text).expect("write the policy");
        path
    }
}

/// Writes `policy.yaml` in `dir` for deployment `demo`: 5 % and 25 % for 30 s each, then
/// 100 %, checks every second, 20 requests per cohort, `alpha`; error rate and p99 (at most
/// `tolerance_ms` more) critical, the sample ratio reported. The slow-canary tests' policy.
pub fn latency_rollout_policy(dir: &Path, alpha: f64, tolerance_ms: f64) -> PathBuf {
    let text = format!(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: slow-canary}}\nspec:\n  \
         deployment: demo\n  ladder:\n    - {{share: 5, window: 30s}}\n    - {{share: 25, window: 30s}}\n    \
         - {{share: 100, window: 1s}}\n  check_interval: 1s\n  min_requests_per_cohort: 20\n  alpha: {alpha}\n  \
         metrics:\n    - {{name: error_rate, critical: true}}\n    \
         - {{name: latency_p99, max_increase_ms: {tolerance_ms}, critical: true}}\n    \
         - {{name: sample_ratio, critical: false}}\n"
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).expect("write the policy");
    path
}

/// How to run the analyzer.
#[derive(Debug, Clone, Default)]
pub struct AnalyzerOptions {
    /// `--state-dir`; created if missing. The log goes next to it (in its parent).
    pub state_dir: PathBuf,
    /// `--policy`, once per file.
    pub policies: Vec<PathBuf>,
    /// `--envoy-admin`, once per URL (e.g. `http://127.0.0.1:9901`).
    pub envoy_admin: Vec<String>,
    /// `CANARY_ANALYZER_TOKEN`, the bearer token overrides need.
    pub token: Option<String>,
    /// Appended after the other arguments.
    pub extra_args: Vec<String>,
    /// Loopback port to listen on; `None` picks a free one. Choose it up front when Envoy's
    /// `canary_analyzer` cluster must point at the analyzer before it starts.
    pub port: Option<u16>,
    /// Extra environment variables (e.g. `CANARY_ANALYZER_FAILPOINT`).
    pub env: Vec<(String, String)>,
    /// Run it in a mount namespace of its own with the state directory on a tmpfs of
    /// this many bytes (root only: `unshare` and `mount`), so a test can fill it up or
    /// make it read-only under the running analyzer. The test reaches that tmpfs through
    /// `/proc/<pid>/root/<state dir>` ([`AnalyzerProcess::state_path`]).
    pub state_on_tmpfs_bytes: Option<u64>,
    /// With `state_on_tmpfs_bytes`: mount that tmpfs read-only.
    pub state_tmpfs_read_only: bool,
}

impl AnalyzerOptions {
    /// Options with a state directory and defaults for the rest.
    pub fn new(state_dir: impl Into<PathBuf>) -> AnalyzerOptions {
        AnalyzerOptions { state_dir: state_dir.into(), ..AnalyzerOptions::default() }
    }
}

/// Why the analyzer did not come up, with its log.
#[derive(Debug)]
pub struct AnalyzerStartError {
    /// Its exit code, if it exited (`None`: still running at the time limit, now killed).
    pub exit_code: Option<i32>,
    pub log: String,
}

/// A running analyzer; killed (SIGKILL) and reaped on drop.
pub struct AnalyzerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// What it was started with (the chosen port filled in): start it again with these to
    /// resume on the same port and state.
    pub options: AnalyzerOptions,
}

impl Drop for AnalyzerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AnalyzerProcess {
    /// Starts the analyzer and waits until `GET /healthz` answers 200; panics with its log
    /// if it exits first or does not answer within 30 s.
    pub async fn start(options: AnalyzerOptions) -> AnalyzerProcess {
        match Self::try_start(options).await {
            Ok(analyzer) => analyzer,
            Err(e) => panic!("the analyzer did not start (exit {:?}):\n{}", e.exit_code, e.log),
        }
    }

    /// Like [`AnalyzerProcess::start`], but returns a failed start (e.g. a refused policy) as an error.
    pub async fn try_start(mut options: AnalyzerOptions) -> Result<AnalyzerProcess, AnalyzerStartError> {
        let port = *options.port.get_or_insert_with(free_port);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::fs::create_dir_all(&options.state_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", options.state_dir.display()));
        let log = log_path(&options.state_dir, port);
        let mut command = match options.state_on_tmpfs_bytes {
            None => Command::new(analyzer_binary()),
            Some(bytes) => {
                // `sh` mounts the tmpfs in the new namespace, then becomes the analyzer (exec).
                let mut unshare = Command::new("unshare");
                unshare.args(["--mount", "--propagation", "private", "sh", "-c"]);
                let ro = if options.state_tmpfs_read_only { ",ro" } else { "" };
                unshare.arg(format!("mount -t tmpfs -o size={bytes}{ro} tmpfs \"$0\" && exec \"$@\""));
                unshare.arg(&options.state_dir).arg(analyzer_binary());
                unshare
            }
        };
        command.args(serve_args(&options, addr));
        if let Some(token) = &options.token {
            command.env("CANARY_ANALYZER_TOKEN", token);
        }
        command.envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("analyzer log {}: {e}", log.display()));
        let err = out.try_clone().expect("analyzer log handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir(repo_root())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", analyzer_binary().display()));
        let mut analyzer = AnalyzerProcess { child, addr, log, options };
        analyzer.wait_healthy().await.map(|()| analyzer)
    }

    async fn wait_healthy(&mut self) -> Result<(), AnalyzerStartError> {
        let deadline = Instant::now() + START_LIMIT;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("reqwest client");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(AnalyzerStartError { exit_code: status.code(), log: self.log_text() });
            }
            let health = client.get(format!("{}/healthz", self.url())).send().await;
            if health.map(|r| r.status().as_u16() == 200).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill_hard();
                return Err(AnalyzerStartError { exit_code: None, log: self.log_text() });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /v1/rollouts/<deployment>`, decoded (the body is in the panic if it does not decode).
    pub async fn status(&self, deployment: &str) -> RolloutStatus {
        let url = format!("{}/v1/rollouts/{deployment}", self.url());
        let answer = reqwest::get(url).await.expect("analyzer reachable");
        let body = answer.text().await.expect("status body");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("status {body}: {e}"))
    }

    /// `GET /v1/rollouts/<deployment>/audit`: the rollout's audit records, oldest first.
    pub async fn audit(&self, deployment: &str) -> Vec<AuditRecord> {
        let url = format!("{}/v1/rollouts/{deployment}/audit", self.url());
        reqwest::get(url).await.expect("analyzer reachable").json().await.expect("audit json")
    }

    /// The same, read with a bearer token (for an analyzer with `--require-viewer`).
    pub async fn audit_with_token(&self, deployment: &str, token: &str) -> Vec<AuditRecord> {
        let url = format!("{}/v1/rollouts/{deployment}/audit", self.url());
        let answer = reqwest::Client::new().get(url).bearer_auth(token).send().await.expect("analyzer reachable");
        answer.json().await.expect("audit json")
    }

    /// Polls the status every `every` until `done`, failing after `limit` with the last
    /// status and this analyzer's log; returns that status and the shares seen on the way.
    pub async fn until(
        &self,
        deployment: &str,
        limit: Duration,
        every: Duration,
        done: impl Fn(&RolloutStatus) -> bool,
    ) -> (RolloutStatus, Vec<u32>) {
        let start = Instant::now();
        let mut shares = Vec::new();
        loop {
            let status = self.status(deployment).await;
            if shares.last() != Some(&status.state.share_bp) {
                shares.push(status.state.share_bp);
            }
            if done(&status) {
                return (status, shares);
            }
            assert!(
                start.elapsed() < limit,
                "no outcome within {limit:?}; last status {status:#?}\nanalyzer log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(every).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `relative` inside its state directory as the analyzer sees it (through its own
    /// mount namespace when the state is on a tmpfs of its own).
    pub fn state_path(&self, relative: &str) -> PathBuf {
        match self.options.state_on_tmpfs_bytes {
            None => self.options.state_dir.join(relative),
            Some(_) => {
                let inside = self.options.state_dir.strip_prefix("/").unwrap_or(&self.options.state_dir);
                PathBuf::from(format!("/proc/{}/root", self.pid())).join(inside).join(relative)
            }
        }
    }

    /// Waits up to `limit` for the process to exit on its own; its exit status, if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (no chance to flush or shut down gracefully), then reap it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it hard and starts it again with the same options: same port, state and policies.
    pub async fn restart(mut self) -> AnalyzerProcess {
        self.kill_hard();
        let options = self.options.clone();
        drop(self);
        AnalyzerProcess::start(options).await
    }
}

/// The log of a run on `port`, next to the state directory: one file per port, appended
/// to, so a restart on the same port keeps the earlier run's lines above its own.
fn log_path(state_dir: &Path, port: u16) -> PathBuf {
    let parent = state_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = state_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent.join(format!("analyzer-{name}-{port}.log"))
}

/// `serve --listen ADDR --state-dir DIR --policy FILE... --envoy-admin URL... EXTRA...`
fn serve_args(options: &AnalyzerOptions, addr: SocketAddr) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--listen".to_string(),
        addr.to_string(),
        "--state-dir".to_string(),
        options.state_dir.to_string_lossy().into_owned(),
    ];
    for policy in &options.policies {
        args.push("--policy".to_string());
        args.push(policy.to_string_lossy().into_owned());
    }
    for admin in &options.envoy_admin {
        args.push("--envoy-admin".to_string());
        args.push(admin.clone());
    }
    args.extend(options.extra_args.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_arguments_repeat_policies_and_envoys() {
        let options = AnalyzerOptions {
            policies: vec!["a.yaml".into(), "b.yaml".into()],
            envoy_admin: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            extra_args: vec!["--check-interval-ms".into(), "500".into()],
            ..AnalyzerOptions::new("/tmp/x/state")
        };
        let args = serve_args(&options, SocketAddr::from(([127, 0, 0, 1], 4242)));
        assert_eq!(
            args.join(" "),
            "serve --listen 127.0.0.1:4242 --state-dir /tmp/x/state --policy a.yaml --policy b.yaml \
             --envoy-admin http://127.0.0.1:1 --envoy-admin http://127.0.0.1:2 --check-interval-ms 500"
        );
        assert_eq!(log_path(Path::new("/tmp/x/state"), 4242), PathBuf::from("/tmp/x/analyzer-state-4242.log"));
    }

    #[test]
    fn fresh_dirs_are_distinct_and_empty() {
        let (a, b) = (fresh_dir("t"), fresh_dir("t"));
        assert_ne!(a, b);
        assert!(a.is_dir() && std::fs::read_dir(&a).expect("readable").next().is_none());
        let _ = (std::fs::remove_dir_all(a), std::fs::remove_dir_all(b));
    }
}
