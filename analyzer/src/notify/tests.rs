//! The bodies of every format (their shape and their services' limits), routing by
//! event, delivery (retries, the URL never logged) and the policy's own webhook.

use super::*;
use crate::policy::WebhookUrl;
use serde_json::json;

pub(crate) fn update() -> StatusUpdate {
    StatusUpdate {
        event: NotifyEvent::Step,
        deployment: "checkout".into(),
        decision: "promote".into(),
        reason: "window of 5 % passed with no regression".into(),
        actor: "analyzer".into(),
        phase: RolloutPhase::Progressing,
        share_bp: 2_500,
        step: 3,
        steps: 5,
        next_step_in_s: Some(300),
        key_metrics: vec!["error_rate: canary 0.48 % vs control 0.51 %, no difference".into()],
        rows: vec![NotifiedRow {
            metric: "error_rate".into(),
            canary: "0.48 %".into(),
            control: "0.51 %".into(),
            verdict: "no difference".into(),
            critical: true,
        }],
        fleet: Some("3 of 3 proxies on generation 17".into()),
        holds: Vec::new(),
        dashboard_url: Some("https://canary.example.com/rollouts/checkout".into()),
        at_ms: 1_765_000_000_000,
    }
}

fn rollback() -> StatusUpdate {
    StatusUpdate {
        event: NotifyEvent::Rollback,
        decision: "rollback".into(),
        reason: "critical metric worse than control beyond tolerance: error_rate (canary 4.8 %, control 0.5 %)".into(),
        phase: RolloutPhase::RolledBack,
        share_bp: 0,
        next_step_in_s: None,
        ..update()
    }
}

/// An update far beyond every service's limits: 2 000 rows, 400 metrics lines, a 50 KB reason.
fn huge() -> StatusUpdate {
    let row = update().rows[0].clone();
    StatusUpdate {
        reason: "r".repeat(50_000),
        key_metrics: (0..400).map(|i| format!("metric_{i}: canary 1 vs control 2, worse ").repeat(3)).collect(),
        rows: (0..2_000).map(|i| NotifiedRow { metric: format!("metric_{i}"), ..row.clone() }).collect(),
        holds: vec![HoldReason::Paused; 50],
        ..update()
    }
}

fn size(body: &Value) -> usize {
    serde_json::to_vec(body).unwrap().len()
}

#[test]
fn a_held_rollout_posts_its_hold_reasons_in_the_shared_wording() {
    let reason =
        HoldReason::RequestsMissing { cohort: "canary".into(), served: 160, needed: 500, rate_per_s: Some(8.5) };
    let body =
        serde_json::to_string(&StatusUpdate { holds: vec![reason.clone()], ..update() }.to_slack_json()).unwrap();
    assert!(body.contains(&format!("*Held*\\n{}", crate::present::hold_text(&reason))), "{body}");
    assert!(!serde_json::to_string(&update().to_slack_json()).unwrap().contains("*Held*"));
}

#[test]
fn slack_message_carries_share_next_step_reason_and_metrics() {
    let json = update().to_slack_json();
    let text = json["text"].as_str().unwrap();
    assert!(
        text.contains("checkout") && text.contains("25.00 %") && text.contains("next step in 5 min 00 s"),
        "{text}"
    );
    let blocks = json["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let body = serde_json::to_string(&json).unwrap();
    assert!(body.contains("error_rate: canary 0.48 %") && body.contains("window of 5 % passed"));
    assert!(body.contains("*Fleet*\\n3 of 3 proxies on generation 17"), "{body}");
    assert!(body.contains("<https://canary.example.com/rollouts/checkout|Open the dashboard>"), "{body}");
}

#[test]
fn teams_gets_an_adaptive_card_in_the_workflows_envelope() {
    let json = rollback().body(WebhookFormat::Teams);
    assert_eq!(json["type"], "message");
    let attachment = &json["attachments"][0];
    assert_eq!(attachment["contentType"], "application/vnd.microsoft.card.adaptive");
    let card = &attachment["content"];
    assert_eq!((card["type"].as_str(), card["version"].as_str()), (Some("AdaptiveCard"), Some("1.4")));
    assert_eq!(card["body"][0]["text"], "wasm canary · checkout: rollback → 0.00 %");
    assert_eq!(card["body"][0]["color"], "attention", "a rollback is red");
    assert_eq!(card["body"][1]["text"], rollback().reason);
    let facts = card["body"][2]["facts"].as_array().unwrap();
    assert!(facts.contains(&json!({"title": "Step", "value": "3 of 5"})), "{facts:?}");
    assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
    assert_eq!(card["actions"][0]["url"], "https://canary.example.com/rollouts/checkout");
}

#[test]
fn discord_gets_content_and_one_embed_without_mentions() {
    let json = StatusUpdate { reason: "@everyone look".into(), ..rollback() }.body(WebhookFormat::Discord);
    assert!(json["content"].as_str().unwrap().starts_with("wasm canary · checkout: rollback → 0.00 %: @everyone"));
    assert_eq!(json["allowed_mentions"], json!({"parse": []}), "a quoted @everyone pings nobody");
    let embed = &json["embeds"][0];
    assert_eq!(embed["color"], 0xd32f2f);
    assert_eq!(embed["url"], "https://canary.example.com/rollouts/checkout");
    let fields = embed["fields"].as_array().unwrap();
    assert!(fields.iter().any(|f| f["name"] == "Metrics" && f["value"].as_str().unwrap().contains("error_rate")));
}

#[test]
fn google_chat_gets_text_and_a_card() {
    let json =
        StatusUpdate { key_metrics: vec!["p99 <b>85 ms</b>".into()], ..update() }.body(WebhookFormat::GoogleChat);
    assert!(json["text"].as_str().unwrap().contains("checkout: promote → 25.00 %"));
    let card = &json["cardsV2"][0];
    assert_eq!(card["cardId"], "canary-checkout");
    assert_eq!(card["card"]["header"]["title"], "wasm canary · checkout: promote → 25.00 %");
    let widgets = serde_json::to_string(&card["card"]["sections"][0]["widgets"]).unwrap();
    assert!(widgets.contains("&lt;b&gt;85 ms&lt;/b&gt;"), "metrics are escaped: {widgets}");
    assert!(widgets.contains("\"openLink\":{\"url\":\"https://canary.example.com/rollouts/checkout\"}"), "{widgets}");
}

#[test]
fn the_generic_body_follows_its_documented_schema() {
    let reason =
        HoldReason::RequestsMissing { cohort: "canary".into(), served: 160, needed: 500, rate_per_s: Some(8.5) };
    let json = StatusUpdate { holds: vec![reason.clone()], ..rollback() }.body(WebhookFormat::Json);
    assert_eq!(json["schema"], "canary.wasm.dev/notification/v1");
    assert_eq!((json["event"].as_str(), json["phase"].as_str()), (Some("rollback"), Some("rolled_back")));
    assert_eq!((json["share_bp"].as_u64(), json["share_percent"].as_f64()), (Some(0), Some(0.0)));
    assert_eq!((json["step"].as_u64(), json["steps"].as_u64()), (Some(3), Some(5)));
    assert_eq!(json["reason"], rollback().reason);
    assert_eq!(json["next_step_in_s"], Value::Null);
    assert_eq!(
        json["rows"][0],
        json!({"metric": "error_rate", "canary": "0.48 %", "control": "0.51 %", "verdict": "no difference",
               "critical": true})
    );
    assert_eq!(json["holds"][0]["kind"], "requests_missing");
    assert_eq!(json["holds"][0]["text"], crate::present::hold_text(&reason));
    assert_eq!(json["links"]["dashboard"], "https://canary.example.com/rollouts/checkout");
    assert_eq!(json["at_ms"], 1_765_000_000_000_u64);
}

#[test]
fn every_field_of_the_generic_body_is_documented() {
    let readme = include_str!("../../../docs/notifications.md");
    let start = readme.find("## The generic schema").expect("docs/notifications.md documents the schema");
    let section = &readme[start..start + readme[start..].find("## Manual approval").expect("its end")];
    let json = rollback().body(WebhookFormat::Json);
    for key in json.as_object().unwrap().keys() {
        assert!(section.contains(&format!("`{key}`")), "field {key} is not in the schema table");
    }
    assert!(section.contains(generic::SCHEMA));
    for event in NotifyEvent::ALL {
        assert!(section.contains(&format!("`{}`", event.name())), "event {} undocumented", event.name());
    }
}

#[test]
fn every_body_stays_within_its_services_limits() {
    let huge = huge();
    assert!(size(&huge.body(WebhookFormat::Teams)) <= 27_000);
    assert!(size(&huge.body(WebhookFormat::GoogleChat)) <= 30_000);
    assert!(size(&huge.body(WebhookFormat::Slack)) <= 40_000);
    let generic = huge.body(WebhookFormat::Json);
    assert!(
        size(&generic) <= 256 * 1024 && !generic["rows"].as_array().unwrap().is_empty(),
        "rows are kept as room allows"
    );
    let discord = huge.body(WebhookFormat::Discord);
    assert!(discord["content"].as_str().unwrap().chars().count() <= 2_000);
    let embed = &discord["embeds"][0];
    assert!(discord::embed_chars(embed) <= discord::EMBED_TOTAL_CHARS, "{}", discord::embed_chars(embed));
    for field in embed["fields"].as_array().unwrap() {
        assert!(field["value"].as_str().unwrap().chars().count() <= 1_024);
    }
    // What is cut says so, and a small update is not cut at all.
    assert!(embed["description"].as_str().unwrap().ends_with('…'));
    assert_eq!(fit(&update(), generic::body, generic::MAX_BODY_BYTES), generic::body(&update()));
}

/// Log lines written while `run` runs on this thread (the test runtime is single-threaded,
/// so spawned tasks log here too).
async fn captured_logs(run: impl std::future::Future<Output = ()>) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    run.await;
    String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
}

fn delivery(url: &WebhookUrl) -> Delivery {
    Delivery { url: url.clone(), deployment: "checkout".into(), event: NotifyEvent::Rollback }
}

#[tokio::test]
async fn a_failed_delivery_is_tried_again_then_logged_without_the_url() {
    // A port nothing listens on: every post fails at once with "connection refused".
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/services/T000/B000/SECRETSECRET")).unwrap();
    let body = update().to_slack_json();
    let logs = captured_logs(deliver(reqwest::Client::new(), delivery(&url), body, Duration::from_millis(1))).await;
    assert!(logs.contains("status update not delivered") && logs.contains("attempts=3"), "{logs}");
    assert!(logs.contains(url.redacted()), "the redacted form identifies the URL: {logs}");
    assert!(!logs.contains("SECRETSECRET") && !logs.contains("/services/"), "{logs}");
}

/// A receiver answering `statuses` in turn (then 200), counting the posts it gets.
async fn answering(statuses: Vec<u16>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let posts = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let counter = std::sync::Arc::clone(&posts);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            async move { axum::http::StatusCode::from_u16(status).unwrap() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, posts)
}

#[tokio::test]
async fn a_5xx_or_429_is_tried_again_and_a_4xx_is_not() {
    use std::sync::atomic::Ordering;
    let (url, posts) = answering(vec![503, 429]).await;
    let url = WebhookUrl::parse(&url).unwrap();
    let logs =
        captured_logs(deliver(reqwest::Client::new(), delivery(&url), json!({}), Duration::from_millis(1))).await;
    assert_eq!(posts.load(Ordering::SeqCst), 3, "503, 429, then delivered: {logs}");
    assert!(!logs.contains("not delivered"), "{logs}");
    let (url, posts) = answering(vec![400]).await;
    let url = WebhookUrl::parse(&url).unwrap();
    let logs =
        captured_logs(deliver(reqwest::Client::new(), delivery(&url), json!({}), Duration::from_millis(1))).await;
    assert_eq!(posts.load(Ordering::SeqCst), 1, "a refused body is refused again: {logs}");
    assert!(logs.contains("not delivered") && logs.contains("attempts=1"), "{logs}");
}

#[tokio::test]
async fn each_target_gets_only_the_events_it_asked_for_in_its_format() {
    use std::sync::atomic::Ordering;
    let (teams_url, teams_posts) = answering(Vec::new()).await;
    let (json_url, json_posts) = answering(Vec::new()).await;
    let notifier = Notifier::new(vec![
        WebhookTarget::parse(&format!("teams:rollback:{teams_url}"), "--webhook").unwrap(),
        WebhookTarget::parse(&format!("json:all:{json_url}"), "--webhook").unwrap(),
    ]);
    notifier.send(update());
    notifier.send(StatusUpdate { event: NotifyEvent::Hold, ..update() });
    notifier.send(rollback());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while json_posts.load(Ordering::SeqCst) < 3 || teams_posts.load(Ordering::SeqCst) < 1 {
        assert!(std::time::Instant::now() < deadline, "posts not received");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(teams_posts.load(Ordering::SeqCst), 1, "teams asked for rollbacks only");
}

#[test]
fn a_policy_url_known_only_redacted_falls_back_to_the_default() {
    let yaml = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: n}\nspec:\n  \
                deployment: checkout\n  notify: {webhook_url: 'https://hooks.example.com/policy/SECRET', \
                format: teams, events: [rollback, approval]}\n";
    let policy = RolloutPolicy::from_yaml(yaml).unwrap();
    let default_url = WebhookUrl::parse("https://hooks.example.com/default/SECRET").unwrap();
    let default = Notifier::new(vec![WebhookTarget::slack(default_url)]);
    let first =
        |n: Notifier| n.targets.first().map(|t| (t.url.secret().map(str::to_string), t.format, t.events.to_string()));
    assert_eq!(
        first(Notifier::for_policy(&policy, &default)),
        Some((
            Some("https://hooks.example.com/policy/SECRET".into()),
            WebhookFormat::Teams,
            "rollback,approval".into()
        ))
    );
    let recovered = policy.redacted();
    assert_eq!(
        first(Notifier::for_policy(&recovered, &default)).and_then(|t| t.0).as_deref(),
        Some("https://hooks.example.com/default/SECRET")
    );
    assert_eq!(first(Notifier::for_policy(&recovered, &Notifier::new(Vec::new()))), None);
}

#[test]
fn the_last_step_says_so() {
    let mut last = update();
    last.next_step_in_s = None;
    assert!(last.to_slack_json()["text"].as_str().unwrap().contains("no further step"));
}
