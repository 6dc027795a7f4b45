//! What keeps a thousand rollouts cheap: every rollout's scrapes go out on the engine's
//! one client (one pool of keep-alive connections, not one pool with its buffers and
//! sockets each), and resumed rollouts are not all checked in the same second.

use super::*;

/// An admin endpoint that keeps connections alive and counts the ones it accepted;
/// every answer is `body` (exposition text).
async fn keep_alive_target(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while let Ok(read) = socket.read(&mut buffer).await {
                    if read == 0 {
                        return;
                    }
                    head.extend_from_slice(&buffer[..read]);
                    // GET requests have no body: each head ends one request.
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), accepted)
}

#[tokio::test]
async fn rollouts_scraping_one_envoy_in_turn_share_one_connection() {
    // Each rollout built its own client: two rollouts, two pools, two connections
    // (a thousand rollouts on ten Envoys: 10 000 sockets and ~0.9 GB).
    let deployments = ["checkout", "orders", "payments"];
    let mut body = String::from("# TYPE canary_requests_total counter\n");
    for deployment in deployments {
        for cohort in ["canary", "control"] {
            body.push_str(&format!(
                "canary_requests_total{{deployment=\"{deployment}\",cohort=\"{cohort}\",class=\"2xx\"}} 10\n"
            ));
        }
    }
    let (target, accepted) = keep_alive_target(body).await;
    let dir = TempDir::new();
    let (clock, _) = stepped_clock(T0);
    let engine = engine(&dir, vec![target], clock);
    for deployment in deployments {
        engine.register(policy(deployment, ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    }
    for _ in 0..2 {
        for deployment in deployments {
            engine.check_now(deployment).await.unwrap();
            let status = engine.status(deployment, T0).await.unwrap();
            assert!(status.failed_targets.is_empty(), "{deployment}: {:?}", status.failed_targets);
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "six scrapes by three rollouts, one after another");
}

#[tokio::test]
async fn rollouts_resumed_together_are_first_checked_spread_over_an_interval() {
    // Every resumed rollout's first check fell one interval after the start, so all
    // of them (and all their scrapes) came at once, and kept coming at once.
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let deployments: Vec<String> = (0..8).map(|i| format!("service-{i}")).collect();
    let counts: Vec<(&str, u64, u64)> = deployments.iter().map(|d| (d.as_str(), 10, 990)).collect();
    envoy.serve_counts(&counts);
    let (clock, _) = stepped_clock(T0);
    let first = engine(&dir, vec![envoy.url()], clock.clone());
    for deployment in &deployments {
        first.register(policy(deployment, ""), Actor::human("ci").unwrap(), T0).await.unwrap();
    }
    drop(first);
    let opened = Instant::now();
    let engine = engine(&dir, vec![envoy.url()], clock);
    // The policy checks every second: none is due before it, all are by two (opening
    // took some ms after `opened`, hence a fifth look, before the first ones are due again).
    assert!(engine.start_due_checks(opened + Duration::from_millis(990)).await.is_empty());
    let mut due = Vec::new();
    for at_ms in [1_190, 1_440, 1_690, 1_940, 2_100] {
        let checks = engine.start_due_checks(opened + Duration::from_millis(at_ms)).await;
        due.push(checks.len());
        for check in checks {
            check.await.unwrap();
        }
    }
    assert_eq!(due.iter().sum::<usize>(), 8, "{due:?}");
    assert!(due.iter().all(|n| *n <= 3), "eight first checks spread over the second interval: {due:?}");
}
