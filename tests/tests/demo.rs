//! `make demo` itself, short: the demo binary with a policy of second-long windows and
//! `DEMO_EXIT=1` walks the ladder on live load, prints its progress, reaches a verdict
//! and exits 0, and leaves nothing running: its Envoy and analyzer processes are gone
//! and its ports are free again.
//!
//! The demo listens on the shipped fixed ports (Envoy 10000 and admin 9901, analyzer
//! 8080, stable 8081, canary 8082). The other tests cannot take them: they bind port 0,
//! which Linux serves from the ephemeral range (checked below to lie above these), and
//! this is the only test in its binary. A demo started by hand at the same time would
//! collide; the test says so instead of failing obscurely.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

/// The ports `envoy/envoy.yaml` ships with, which the demo uses as they are.
const DEMO_PORTS: [u16; 5] = [10_000, 9_901, 8_080, 8_081, 8_082];
/// A healthy run of the policy below takes 10-20 s; allow for a busy machine.
const LIMIT: Duration = Duration::from_secs(120);

/// Three steps, 2-second windows, checks every second: a verdict in seconds.
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: demo-fast}\n\
spec:\n  deployment: demo\n  ladder:\n    - {share: 5, window: 2s}\n    - {share: 50, window: 2s}\n    \
- {share: 100, window: 1s}\n  check_interval: 1s\n  min_requests_per_cohort: 10\n";

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `processes: envoy pid 123, analyzer pid 456` → (123, 456).
fn pids(stdout: &str) -> Option<(u32, u32)> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("processes: envoy pid "))?;
    let (envoy, analyzer) = line.split_once(", analyzer pid ")?;
    Some((envoy.trim().parse().ok()?, analyzer.trim().parse().ok()?))
}

#[test]
fn free_ports_never_come_from_the_demo_range() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    assert!(DEMO_PORTS.iter().all(|&p| p < low), "ephemeral ports start at {low}: {DEMO_PORTS:?} could be handed out");
    assert_eq!(pids("x\nprocesses: envoy pid 12, analyzer pid 34\n"), Some((12, 34)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_demo_reaches_a_verdict_and_leaves_nothing_running() {
    let busy: Vec<u16> = DEMO_PORTS.into_iter().filter(|&p| !port_is_free(p)).collect();
    assert!(busy.is_empty(), "the demo's ports {busy:?} are in use: is `make demo` running? stop it and run again");
    let dir = canary_e2e::analyzer::fresh_dir("demo-test");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .env("DEMO_EXIT", "1")
        .env("DEMO_POLICY", &policy)
        .env_remove("FAULT")
        .current_dir(canary_e2e::repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the demo binary");
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the demo did not finish within {LIMIT:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "demo failed:\n{stdout}\n{stderr}");

    // Progress on the way, then the verdict and its evidence.
    for expected in ["== step 1/3 at 5.00 %", "answered: stable", "== Promoted at 100.00 %", "verdict", "stopping"] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert!(stdout.contains("/rollouts/demo"), "the dashboard's address is printed:\n{stdout}");

    // Nothing left: Envoy and the analyzer were stopped and reaped, their ports are free.
    let (envoy, analyzer) = pids(&stdout).unwrap_or_else(|| panic!("no pids in:\n{stdout}"));
    assert!(!process_exists(envoy), "envoy (pid {envoy}) still running");
    assert!(!process_exists(analyzer), "analyzer (pid {analyzer}) still running");
    let busy: Vec<u16> = DEMO_PORTS.into_iter().filter(|&p| !port_is_free(p)).collect();
    assert!(busy.is_empty(), "ports still bound after the demo: {busy:?}");
    // Nor its state: the directory it printed is gone.
    let state = stdout
        .split("(state in ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no state directory in:\n{stdout}"));
    assert!(!std::path::Path::new(state).exists(), "the demo left its state in {state}");
}
