//! The real analyzer binary with no Envoy: `wait` gives up on time against an
//! analyzer that accepts connections and never answers.

use canary_e2e::analyzer::analyzer_binary;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test]
async fn wait_gives_up_on_time_against_an_analyzer_that_never_answers() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = format!("http://{}", silent.local_addr().expect("address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let start = Instant::now();
    let mut wait = tokio::process::Command::new(analyzer_binary())
        .args(["wait", "demo", "--timeout", "2", "--server", &server])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the analyzer");
    // The unfixed binary waits forever: bound it so a failing run ends.
    let status = tokio::time::timeout(Duration::from_secs(20), wait.wait()).await;
    let took = start.elapsed();
    let status = status.unwrap_or_else(|_| panic!("`wait --timeout 2` still running after {took:?}")).expect("wait");
    assert_eq!(status.code(), Some(2), "exit code 2: no verdict");
    // 2 s of `--timeout`, plus start-up of a debug build on a busy machine.
    assert!(took < Duration::from_secs(8), "took {took:?}");
}
