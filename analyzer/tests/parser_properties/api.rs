//! The register and override bodies, through the HTTP API as a client sends them
//! (`app()` + `oneshot`, no sockets): every answer is a 2xx or a 4xx with a one-line
//! JSON error, never a 5xx or a panic, and a policy the parser accepts is registered.

use crate::policy::{as_text, document};
use crate::support::{self, bounded, is_one_line, text};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use canary_analyzer::api::{AppState, app};
use canary_analyzer::auth::{Authenticator, TokenTable};
use canary_analyzer::engine::{Engine, SourceSettings};
use canary_analyzer::notify::Notifier;
use canary_analyzer::policy::RolloutPolicy;
use canary_analyzer::source::DEFAULT_MAX_BODY_BYTES;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceExt;

const TOKEN: &str = "property-test-token";

/// A valid policy for `checkout`, registered before each override case.
const CHECKOUT: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: props}\n\
                        spec: {deployment: checkout}\n";

/// A fresh analyzer in its own state directory, removed on drop: cases never share state.
struct Analyzer {
    dir: PathBuf,
    app: Router,
}

impl Analyzer {
    fn new() -> Analyzer {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "canary-api-props-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // Loopback port 1: nothing is scraped in these tests, and nothing could answer there.
        let source = SourceSettings::EnvoyAdmin {
            admin_urls: vec!["http://127.0.0.1:1".into()],
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        };
        let engine = Engine::open(&dir, source, Notifier::new(Vec::new())).unwrap();
        // The one place that builds the API's state: the roles work changes how tokens are held.
        let auth = Authenticator::fixed(TokenTable::single(TOKEN).unwrap());
        let app = app(AppState { engine: Arc::new(engine), auth: Arc::new(auth) });
        Analyzer { dir, app }
    }

    /// `(status, body)` of one request with the token.
    async fn call(&self, method: &str, uri: &str, actor: Option<HeaderValue>, body: Vec<u8>) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {TOKEN}"));
        if let Some(actor) = actor {
            request = request.header("x-actor", actor);
        }
        let response = self.app.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Drop for Analyzer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// A 4xx answer: `{"error": "<one line>"}`. A body that is not UTF-8 is refused by axum's
/// `String` extractor before the handler runs, with a one-line plain-text 400.
fn check_refusal(status: StatusCode, body: &str) -> Result<String, TestCaseError> {
    prop_assert!(status.is_client_error(), "expected a 4xx, got {status}: {body}");
    if status == StatusCode::BAD_REQUEST && body.starts_with("Request body didn't contain valid UTF-8") {
        prop_assert!(is_one_line(body), "{body:?}");
        return Ok("field `(body)`: not UTF-8".to_string());
    }
    let answer: Value = serde_json::from_str(body).map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
    let error = answer["error"].as_str().unwrap_or_default().to_string();
    prop_assert!(!error.is_empty() && is_one_line(&error), "error is empty or not one line: {body}");
    Ok(error)
}

/// What a pipeline may put in `x-actor`: a name, the reserved one, blanks, non-ASCII bytes.
fn actor_header() -> impl Strategy<Value = Option<HeaderValue>> {
    proptest::option::of(prop_oneof![
        4 => "[a-z][a-z0-9-]{0,12}".prop_map(|a| HeaderValue::from_str(&a).unwrap()),
        1 => Just(HeaderValue::from_static("analyzer")),
        1 => Just(HeaderValue::from_static(" ")),
        1 => Just(HeaderValue::from_bytes(b"b\xc3\xb6b\xff").unwrap()),
    ])
}

/// A policy document without `notify` (a registered rollout would announce to its webhook).
fn register_body() -> impl Strategy<Value = (Value, bool)> {
    (document(), any::<bool>()).prop_map(|(mut document, yaml)| {
        if let Some(spec) = document.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("notify");
        }
        (document, yaml)
    })
}

/// Registers `body` and checks the answer against what the parser says of it.
async fn register(analyzer: &Analyzer, body: &str, actor: Option<HeaderValue>) -> Result<(), TestCaseError> {
    let parsed = RolloutPolicy::from_yaml(body);
    let (status, answer) = analyzer.call("POST", "/v1/rollouts", actor, body.as_bytes().to_vec()).await;
    match parsed {
        // Only the caller's `x-actor` may still be refused (who may act is the auth layer's rule).
        Ok(_) if status == StatusCode::BAD_REQUEST => {
            let error = check_refusal(status, &answer)?;
            prop_assert!(error.contains("actor"), "an accepted policy was refused: {}", error);
        }
        Ok(policy) => {
            prop_assert_eq!(status, StatusCode::CREATED, "an accepted policy was not registered: {}", answer);
            let d = &policy.deployment;
            for uri in [
                format!("/v1/rollouts/{d}/config"),
                format!("/v1/rollouts/{d}"),
                format!("/rollouts/{d}"),
                format!("/v1/rollouts/{d}/audit"),
            ] {
                let (status, page) = analyzer.call("GET", &uri, None, Vec::new()).await;
                prop_assert_eq!(status, StatusCode::OK, "{} answered {}", uri, page);
            }
        }
        _ => {
            let error = check_refusal(status, &answer)?;
            prop_assert!(error.contains("field `") || error.contains("x-actor"), "names no field: {}", error);
        }
    }
    Ok(())
}

/// An override body: the documented fields with valid and odd values, sometimes an unknown one.
fn override_body() -> impl Strategy<Value = Value> {
    (
        proptest::option::weighted(
            0.95,
            prop_oneof![
                6 => prop::sample::select(vec!["promote", "rollback", "hold", "pause", "resume", "set_share"])
                    .prop_map(Value::from),
                1 => text().prop_map(Value::from),
                1 => Just(json!(1)),
            ],
        ),
        proptest::option::weighted(0.9, prop_oneof![4 => "[a-z ]{1,20}".prop_map(Value::from), 1 => text().prop_map(Value::from)]),
        proptest::option::of(prop_oneof![4 => "[a-z]{1,10}".prop_map(Value::from), 1 => text().prop_map(Value::from), 1 => Just(json!("analyzer"))]),
        proptest::option::of(prop_oneof![
            4 => (0.0f64..=100.0).prop_map(Value::from),
            1 => prop::sample::select(vec![json!(-1), json!(100.5), json!(1e308), json!(0.004), json!("5"), Value::Null]),
        ]),
        proptest::option::weighted(0.05, text()),
    )
        .prop_map(|(action, reason, actor, share, unknown)| {
            let mut body = Map::new();
            for (key, value) in [("action", action), ("reason", reason), ("actor", actor), ("share_percent", share)] {
                if let Some(value) = value {
                    body.insert(key.to_string(), value);
                }
            }
            if let Some(key) = unknown.filter(|k| !body.contains_key(k)) {
                body.insert(key, json!(true));
            }
            Value::Object(body)
        })
}

async fn override_rollout(analyzer: &Analyzer, body: Vec<u8>) -> Result<(), TestCaseError> {
    let (status, answer) = analyzer.call("POST", "/v1/rollouts/checkout/override", None, body).await;
    if status == StatusCode::OK {
        let state: Value = serde_json::from_str(&answer).map_err(|e| TestCaseError::fail(format!("{e}: {answer}")))?;
        prop_assert_eq!(&state["deployment"], "checkout");
        let (status, _) = analyzer.call("GET", "/v1/rollouts/checkout/config", None, Vec::new()).await;
        prop_assert_eq!(status, StatusCode::OK);
    } else {
        let error = check_refusal(status, &answer)?;
        let named = ["field `", "override request: ", "reason", "actor", "paused", "ended", "share_bp"];
        prop_assert!(named.iter().any(|w| error.contains(w)), "names neither a field nor the state: {}", error);
    }
    Ok(())
}

proptest! {
    // Each case opens a fresh analyzer (a state directory, an audit log): ~5 ms.
    #![proptest_config(support::config(96))]

    #[test]
    fn register_bodies_are_registered_exactly_when_the_policy_parses(
        (document, yaml) in register_body(),
        actor in actor_header(),
    ) {
        let body = as_text(&document, yaml);
        block_on(async { register(&Analyzer::new(), &body, actor).await })?;
    }

    #[test]
    fn mutated_register_bodies_get_a_clear_answer(
        (document, yaml) in register_body(),
        edits in support::edits(6),
    ) {
        let mutated = support::mutate(as_text(&document, yaml).into_bytes(), &edits);
        let body = String::from_utf8_lossy(&mutated).into_owned();
        bounded("register", || block_on(async { register(&Analyzer::new(), &body, None).await }))?;
    }

    #[test]
    fn override_bodies_are_applied_or_refused_by_field(bodies in prop::collection::vec(override_body(), 1..4)) {
        block_on(async {
            let analyzer = Analyzer::new();
            let (status, answer) = analyzer.call("POST", "/v1/rollouts", None, CHECKOUT.as_bytes().to_vec()).await;
            prop_assert_eq!(status, StatusCode::CREATED, "{}", answer);
            for body in bodies {
                override_rollout(&analyzer, serde_json::to_vec(&body).unwrap()).await?;
            }
            Ok(())
        })?;
    }

    #[test]
    fn mutated_and_arbitrary_override_bodies_get_a_clear_answer(
        body in override_body(),
        edits in support::edits(4),
        arbitrary in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        block_on(async {
            let analyzer = Analyzer::new();
            let (status, answer) = analyzer.call("POST", "/v1/rollouts", None, CHECKOUT.as_bytes().to_vec()).await;
            prop_assert_eq!(status, StatusCode::CREATED, "{}", answer);
            override_rollout(&analyzer, support::mutate(serde_json::to_vec(&body).unwrap(), &edits)).await?;
            override_rollout(&analyzer, arbitrary).await
        })?;
    }
}

/// Found by `override_bodies_are_applied_or_refused_by_field`: serde quotes an unknown
/// key as sent, so `{"\u001b": true}` put an escape character into the error (the CLI
/// prints it to a terminal) and a line break split it.
#[test]
fn regression_an_override_body_with_a_control_character_key_is_refused_on_one_line() {
    block_on(async {
        let analyzer = Analyzer::new();
        let (status, _) = analyzer.call("POST", "/v1/rollouts", None, CHECKOUT.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::CREATED);
        for body in [r#"{"\u001b":true}"#, r#"{"action":"rollback","reason":"r","a\nb":1}"#] {
            let (status, answer) = analyzer.call("POST", "/v1/rollouts/checkout/override", None, body.into()).await;
            let answer: Value = serde_json::from_str(&answer).unwrap();
            let error = answer["error"].as_str().unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(error.starts_with("override request: unknown field") && is_one_line(error), "{error:?}");
        }
    });
}

/// Found by `register_bodies_are_registered_exactly_when_the_policy_parses`: a check
/// interval of `u64::MAX` seconds parsed, then registering it panicked the handler
/// ("overflow when adding duration to instant"). Now refused with a 400 naming the field.
#[test]
fn regression_a_check_interval_that_overflows_the_clock_is_refused_not_a_panic() {
    block_on(async {
        let analyzer = Analyzer::new();
        let body = CHECKOUT
            .replace("spec: {deployment: checkout}", "spec: {deployment: checkout, check_interval: 5124095576030431h}");
        let (status, answer) = analyzer.call("POST", "/v1/rollouts", None, body.into_bytes()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer.contains("field `spec.check_interval`"), "{answer}");
    });
}
