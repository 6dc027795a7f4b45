//! The HTTP API: the config the filter polls, rollout status and reports, the
//! audit log, registration and human overrides (bearer token), `/healthz` and
//! the analyzer's own `/metrics`, and the dashboard's pages (`/`, `/rollouts/{deployment}`
//! and their live fragments, rendered by [`crate::dashboard`]). One error type maps to
//! status codes; 5xx bodies never carry internals (they are logged instead).

use crate::dashboard;
use crate::engine::{Engine, EngineError, now_ms};
use crate::ladder::{Actor, OverrideAction, OverrideError, TransitionError};
use crate::policy::RolloutPolicy;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Bearer token for registration and overrides; `None` disables them. Build it
    /// with [`bearer_token`]: an empty one is refused there, and by `authorize` too.
    pub token: Option<Arc<str>>,
}

/// A configured bearer token that is empty or only whitespace: it would let a
/// request without `Authorization` through, so it is refused, not taken as "no token".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the bearer token is empty or only whitespace ({length} bytes): expected at least one non-whitespace \
     character, or no token at all to disable registration and overrides"
)]
pub struct BlankToken {
    pub length: usize,
}

/// The token `AppState` should hold, from the configured one (`--token`,
/// `CANARY_ANALYZER_TOKEN`). Leading and trailing whitespace is trimmed, with a
/// warning: a Secret made with `kubectl create secret --from-file` usually ends in a
/// newline, which no `Authorization` header can carry. Empty after trimming: refused.
pub fn bearer_token(configured: Option<&str>) -> Result<Option<Arc<str>>, BlankToken> {
    let Some(configured) = configured else { return Ok(None) };
    let trimmed = configured.trim();
    if trimmed.is_empty() {
        return Err(BlankToken { length: configured.len() });
    }
    if trimmed.len() != configured.len() {
        tracing::warn!(
            trimmed_bytes = configured.len() - trimmed.len(),
            "the bearer token had leading or trailing whitespace (a trailing newline?); using it without"
        );
    }
    Ok(Some(Arc::from(trimmed)))
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("overrides are disabled: the analyzer was started without a token (CANARY_ANALYZER_TOKEN)")]
    Disabled,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(String),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(_) => ApiError::NotFound(e.to_string()),
            EngineError::InProgress(_) => ApiError::Conflict(e.to_string()),
            EngineError::InvalidPolicy(_) => ApiError::BadRequest(e.to_string()),
            EngineError::Override(OverrideError::Finished { .. }) => ApiError::Conflict(e.to_string()),
            EngineError::Override(_) => ApiError::BadRequest(e.to_string()),
            EngineError::Transition(TransitionError::Stale { .. }) => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Disabled => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Compares without an early exit, so response time does not reveal a prefix.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AppState {
    fn authorize(&self, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
        // A blank token (an `AppState` built without `bearer_token`) would match a missing header.
        let Some(token) = self.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(ApiError::Disabled);
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same_secret(given.as_bytes(), token.as_bytes()) {
            return Ok(());
        }
        self.engine.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(request = %what, "unauthorized request refused");
        Err(ApiError::Unauthorized)
    }
}

/// The router; `state` carries the engine and the token.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/rollouts", get(list).post(register))
        .route("/v1/rollouts/{deployment}", get(status))
        .route("/v1/rollouts/{deployment}/config", get(config))
        .route("/v1/rollouts/{deployment}/report", get(report))
        .route("/v1/rollouts/{deployment}/audit", get(audit))
        .route("/v1/rollouts/{deployment}/override", post(override_rollout))
        .route("/", get(dashboard_index))
        .route("/live", get(dashboard_index_live))
        .route("/rollouts/{deployment}", get(dashboard_rollout))
        .route("/rollouts/{deployment}/live", get(dashboard_rollout_live))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}

async fn config(State(state): State<AppState>, Path(deployment): Path<String>) -> Result<Response, ApiError> {
    let config = state
        .engine
        .config(&deployment)
        .ok_or_else(|| ApiError::NotFound(format!("no rollout for deployment {deployment:?}")))?;
    Ok(Json(config).into_response())
}

async fn list(State(state): State<AppState>) -> Response {
    Json(state.engine.list(now_ms()).await).into_response()
}

async fn status(State(state): State<AppState>, Path(deployment): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.engine.status(&deployment, now_ms()).await?).into_response())
}

async fn report(State(state): State<AppState>, Path(deployment): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.engine.status(&deployment, now_ms()).await?.rows).into_response())
}

async fn audit(State(state): State<AppState>, Path(deployment): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.engine.audit(&deployment)?).into_response())
}

/// Body: the policy document (YAML or JSON). Header `x-actor` names who registers.
async fn register(State(state): State<AppState>, headers: HeaderMap, body: String) -> Result<Response, ApiError> {
    state.authorize(&headers, "register rollout")?;
    let policy = RolloutPolicy::from_yaml(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let actor = headers.get("x-actor").and_then(|v| v.to_str().ok()).unwrap_or("pipeline").to_string();
    // A caller may name itself but never claim to be the analyzer.
    let actor = Actor::human(&actor).map_err(|e| ApiError::BadRequest(format!("header `x-actor`: {e}")))?;
    let status = state.engine.register(policy, actor, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideRequest {
    /// promote | rollback | hold (or pause) | resume | set_share
    action: String,
    reason: Option<String>,
    actor: Option<String>,
    /// For `set_share`: percent, e.g. 12.5.
    share_percent: Option<f64>,
}

fn parse_action(request: &OverrideRequest) -> Result<OverrideAction, ApiError> {
    Ok(match request.action.as_str() {
        "promote" => OverrideAction::Promote,
        "rollback" => OverrideAction::Rollback,
        "hold" | "pause" => OverrideAction::Pause,
        "resume" => OverrideAction::Resume,
        "set_share" => {
            let percent = request.share_percent.ok_or_else(|| {
                ApiError::BadRequest("field `share_percent` = (missing): expected a percentage for set_share".into())
            })?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(ApiError::BadRequest(format!(
                    "field `share_percent` = {percent}: expected a percentage from 0 to 100"
                )));
            }
            // Percent to basis points, rounded to the nearest point.
            OverrideAction::SetShare { share_bp: (percent * 100.0).round() as u32 }
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "field `action` = {other:?}: expected promote, rollback, hold, resume or set_share"
            )));
        }
    })
}

async fn override_rollout(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    state.authorize(&headers, "override")?;
    let request: OverrideRequest = serde_json::from_str(&body)
        .map_err(|e| ApiError::BadRequest(crate::policy::one_line(&format!("override request: {e}"))))?;
    let action = parse_action(&request)?;
    let reason = request.reason.as_deref().unwrap_or("");
    let actor = request.actor.as_deref().unwrap_or("operator");
    let status = state.engine.override_rollout(&deployment, &action, actor, reason, now_ms()).await?;
    Ok(Json(status).into_response())
}

/// An HTML answer that is never cached (the pages change with every check).
fn html(body: String) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

/// A dashboard page for a deployment the analyzer does not know.
fn html_not_found(deployment: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>not found</title><p>no rollout for deployment \
         <b>{}</b>. <a href=\"/\">all rollouts</a></p>",
        dashboard::escape(deployment)
    );
    (StatusCode::NOT_FOUND, Html(body)).into_response()
}

async fn dashboard_index(State(state): State<AppState>) -> Response {
    html(dashboard::index_page(&state.engine.list(now_ms()).await))
}

async fn dashboard_index_live(State(state): State<AppState>) -> Response {
    html(dashboard::index_fragment(&state.engine.list(now_ms()).await))
}

/// One rollout's status and audit records, or the page's answer when there is none.
async fn rollout_view(
    state: &AppState,
    deployment: &str,
    render: fn(&crate::engine::RolloutStatus, &[crate::audit::AuditRecord]) -> String,
) -> Result<Response, ApiError> {
    let status = match state.engine.status(deployment, now_ms()).await {
        Ok(status) => status,
        Err(EngineError::NotFound(_)) => return Ok(html_not_found(deployment)),
        Err(e) => return Err(e.into()),
    };
    let audit = state.engine.audit(deployment)?;
    Ok(html(render(&status, &audit)))
}

async fn dashboard_rollout(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
) -> Result<Response, ApiError> {
    rollout_view(&state, &deployment, dashboard::rollout_page).await
}

async fn dashboard_rollout_live(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
) -> Result<Response, ApiError> {
    rollout_view(&state, &deployment, dashboard::rollout_fragment).await
}

/// Liveness for Kubernetes and humans: 503 `unhealthy` when decisions can no longer
/// be recorded (every rollback would be refused: restart, or page a human); else
/// `ok`, or `degraded` (200, with the reasons) when a rollout could not be rebuilt
/// at start: restarting would not fix that.
async fn healthz(State(state): State<AppState>) -> Response {
    if let Some(failure) = state.engine.recording_failure() {
        tracing::error!(error = %failure, "health check: decisions cannot be recorded");
        let body = format!("unhealthy\ncannot record decisions: {failure}\n");
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let broken = state.engine.broken_rollouts();
    if broken.is_empty() {
        return "ok\n".into_response();
    }
    let mut body = String::from("degraded\n");
    for line in &broken {
        let _ = writeln!(body, "rollout {line}");
    }
    body.into_response()
}

/// The analyzer's own metrics, Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let c = &state.engine.counters;
    let mut out = String::new();
    for (name, help, value) in [
        ("canary_analyzer_checks_total", "Checks run.", c.checks.load(Ordering::Relaxed)),
        (
            "canary_analyzer_check_failures_total",
            "Checks that failed (scrape, statistics).",
            c.check_failures.load(Ordering::Relaxed),
        ),
        ("canary_analyzer_decisions_total", "Decisions that changed a rollout.", c.decisions.load(Ordering::Relaxed)),
        ("canary_analyzer_overrides_total", "Human overrides applied.", c.overrides.load(Ordering::Relaxed)),
        (
            "canary_analyzer_unauthorized_total",
            "Requests refused for a missing or wrong token.",
            c.unauthorized.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let recording = u8::from(state.engine.recording_failure().is_none());
    let broken = state.engine.broken_rollouts().len();
    let _ = writeln!(
        out,
        "# HELP canary_analyzer_audit_recording 1 while decisions can be appended to the audit log, 0 once it failed.\n\
         # TYPE canary_analyzer_audit_recording gauge\ncanary_analyzer_audit_recording {recording}\n\
         # HELP canary_analyzer_broken_rollouts Rollouts that could not be rebuilt at start (served, not checked).\n\
         # TYPE canary_analyzer_broken_rollouts gauge\ncanary_analyzer_broken_rollouts {broken}"
    );
    let _ = writeln!(
        out,
        "# HELP canary_analyzer_share_bp Canary share served, basis points.\n# TYPE canary_analyzer_share_bp gauge"
    );
    let configs = state.engine.configs();
    for config in &configs {
        let _ = writeln!(out, "canary_analyzer_share_bp{{deployment=\"{}\"}} {}", config.deployment, config.share_bp);
    }
    let _ = writeln!(
        out,
        "# HELP canary_analyzer_generation Config generation served.\n# TYPE canary_analyzer_generation gauge"
    );
    for config in &configs {
        let _ =
            writeln!(out, "canary_analyzer_generation{{deployment=\"{}\"}} {}", config.deployment, config.generation);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SourceSettings;
    use crate::notify::Notifier;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: api-test}\n\
                          spec: {deployment: checkout}\n";

    fn state(token: Option<&str>) -> AppState {
        state_in(&temp_dir(), token)
    }

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("canary-api-{}-{}", std::process::id(), now_ms() ^ rand_suffix()))
    }

    fn state_in(dir: &std::path::Path, token: Option<&str>) -> AppState {
        let source = SourceSettings::EnvoyAdmin {
            admin_urls: vec!["http://127.0.0.1:1".into()],
            max_body_bytes: crate::source::DEFAULT_MAX_BODY_BYTES,
        };
        let engine = Engine::open(dir, source, Notifier::new(None)).unwrap();
        AppState { engine: Arc::new(engine), token: token.map(Arc::from) }
    }

    /// Distinguishes temp dirs of tests running in parallel.
    fn rand_suffix() -> u64 {
        use std::sync::atomic::AtomicU64;
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed) << 48
    }

    async fn call(app: &Router, method: &str, uri: &str, token: Option<&str>, body: &str) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = app.clone().oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn register_needs_the_token_and_then_serves_the_filter_config() {
        let app = app(state(Some("s3cret")));
        assert_eq!(call(&app, "POST", "/v1/rollouts", None, POLICY).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some("wrong"), POLICY).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "GET", "/v1/rollouts/checkout/config", None, "").await.0, StatusCode::NOT_FOUND);
        let (status, body) = call(&app, "POST", "/v1/rollouts", Some("s3cret"), POLICY).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = call(&app, "GET", "/v1/rollouts/checkout/config", None, "").await;
        assert_eq!(status, StatusCode::OK);
        let config: canary_core::RolloutConfig = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (config.deployment.as_str(), config.share_bp),
            ("checkout", 100),
            "first step of the default ladder"
        );
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some("s3cret"), POLICY).await.0, StatusCode::CONFLICT);
        let (_, metrics) = call(&app, "GET", "/metrics", None, "").await;
        assert!(metrics.contains("canary_analyzer_unauthorized_total 2"), "{metrics}");
        assert!(metrics.contains("canary_analyzer_share_bp{deployment=\"checkout\"} 100"), "{metrics}");
    }

    #[tokio::test]
    async fn overrides_need_token_and_reason_and_are_audited() {
        let app = app(state(Some("t")));
        call(&app, "POST", "/v1/rollouts", Some("t"), POLICY).await;
        let promote = r#"{"action":"promote","reason":"manual check passed","actor":"alice"}"#;
        assert_eq!(
            call(&app, "POST", "/v1/rollouts/checkout/override", None, promote).await.0,
            StatusCode::UNAUTHORIZED
        );
        let no_reason = r#"{"action":"promote","actor":"alice"}"#;
        let (status, body) = call(&app, "POST", "/v1/rollouts/checkout/override", Some("t"), no_reason).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let bad = r#"{"action":"explode","reason":"x"}"#;
        let (status, body) = call(&app, "POST", "/v1/rollouts/checkout/override", Some("t"), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("field `action`") && body.contains("explode"), "{body}");
        let (status, body) = call(&app, "POST", "/v1/rollouts/checkout/override", Some("t"), promote).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, config) = call(&app, "GET", "/v1/rollouts/checkout/config", None, "").await;
        assert!(config.contains("\"share_bp\":500"), "{config}");
        let (_, audit) = call(&app, "GET", "/v1/rollouts/checkout/audit", None, "").await;
        assert!(audit.contains("manual check passed") && audit.contains("alice"), "{audit}");
        let set = r#"{"action":"set_share","share_percent":150,"reason":"x","actor":"alice"}"#;
        let (status, body) = call(&app, "POST", "/v1/rollouts/checkout/override", Some("t"), set).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("share_percent") && body.contains("150"), "{body}");
    }

    #[tokio::test]
    async fn the_dashboard_serves_pages_and_live_fragments() {
        let app = app(state(Some("t")));
        let (status, body) = call(&app, "GET", "/", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("no rollouts") && body.contains("data-src=\"/live\""), "{body}");
        call(&app, "POST", "/v1/rollouts", Some("t"), POLICY).await;
        let (_, body) = call(&app, "GET", "/live", None, "").await;
        assert!(body.contains("<a href=\"/rollouts/checkout\">checkout</a>") && !body.contains("<html"), "{body}");
        let (status, page) = call(&app, "GET", "/rollouts/checkout", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("<ol class=\"ladder\"") && page.contains("<form id=\"override\""), "{page}");
        assert!(page.contains("registered with policy"), "the decision log has the registration: {page}");
        let (status, live) = call(&app, "GET", "/rollouts/checkout/live", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(live.contains("id=\"decision-log\"") && !live.contains("<form"), "{live}");
        let (status, body) = call(&app, "GET", "/rollouts/%3Cnope%3E", None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("&lt;nope&gt;") && !body.contains("<nope>"), "{body}");
    }

    #[tokio::test]
    async fn a_caller_cannot_register_as_the_analyzer() {
        let app = app(state(Some("t")));
        let request = Request::builder()
            .method("POST")
            .uri("/v1/rollouts")
            .header("authorization", "Bearer t")
            .header("x-actor", "analyzer")
            .body(Body::from(POLICY))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "GET", "/v1/rollouts/checkout/config", None, "").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn health_fails_and_a_metric_drops_when_decisions_cannot_be_recorded() {
        let state = state(Some("t"));
        let app = app(state.clone());
        assert_eq!(call(&app, "GET", "/healthz", None, "").await, (StatusCode::OK, "ok\n".to_string()));
        let (_, metrics) = call(&app, "GET", "/metrics", None, "").await;
        assert!(metrics.contains("canary_analyzer_audit_recording 1\n"), "{metrics}");
        state.engine.store_health().fail_for_test("append failed: No space left on device; cut back failed too");
        let (status, body) = call(&app, "GET", "/healthz", None, "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("unhealthy\n") && body.contains("No space left on device"), "{body}");
        let (_, metrics) = call(&app, "GET", "/metrics", None, "").await;
        assert!(metrics.contains("canary_analyzer_audit_recording 0\n"), "{metrics}");
    }

    #[tokio::test]
    async fn without_a_token_overrides_are_disabled() {
        let app = app(state(None));
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some("any"), POLICY).await.0, StatusCode::FORBIDDEN);
        assert_eq!(call(&app, "GET", "/healthz", None, "").await, (StatusCode::OK, "ok\n".to_string()));
    }

    #[tokio::test]
    async fn a_blank_token_lets_no_one_in() {
        for blank in ["", " ", "\n"] {
            assert_eq!(bearer_token(Some(blank)), Err(BlankToken { length: blank.len() }));
            // Built by hand, as a library user could: `authorize` refuses it as well.
            let app = app(state(Some(blank)));
            assert_eq!(call(&app, "POST", "/v1/rollouts", None, POLICY).await.0, StatusCode::FORBIDDEN, "{blank:?}");
            if !blank.contains('\n') {
                // `Bearer ` with the blank token after it (a newline cannot be sent in a header).
                let (status, _) = call(&app, "POST", "/v1/rollouts", Some(blank), POLICY).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{blank:?}");
            }
            assert_eq!(call(&app, "GET", "/v1/rollouts/checkout/config", None, "").await.0, StatusCode::NOT_FOUND);
        }
        let message = BlankToken { length: 1 }.to_string();
        assert!(message.contains("empty") && message.contains("expected at least one non-whitespace"), "{message}");
        assert_eq!(bearer_token(None), Ok(None));
        // A newline from `kubectl create secret --from-file` is trimmed, not made part of the secret.
        let token = bearer_token(Some(" s3cret\n")).unwrap();
        assert_eq!(token.as_deref(), Some("s3cret"));
        let app = app(AppState { token, ..state(None) });
        assert_eq!(call(&app, "POST", "/v1/rollouts", None, POLICY).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some("s3cret"), POLICY).await.0, StatusCode::CREATED);
    }

    const SECRET_PATH: &str = "/services/T000/B000/SECRETSECRET";

    fn policy_with_webhook() -> String {
        format!("{POLICY}  notify: {{webhook_url: 'https://hooks.slack.com{SECRET_PATH}'}}\n")
            .replace("spec: {deployment: checkout}", "spec:\n  deployment: checkout")
    }

    #[tokio::test]
    async fn the_webhook_url_is_served_and_audited_only_redacted() {
        let dir = temp_dir();
        let app = app(state_in(&dir, Some("t")));
        let (status, registered) = call(&app, "POST", "/v1/rollouts", Some("t"), &policy_with_webhook()).await;
        assert_eq!(status, StatusCode::CREATED, "{registered}");
        let pause = r#"{"action":"hold","reason":"look","actor":"alice"}"#;
        assert_eq!(call(&app, "POST", "/v1/rollouts/checkout/override", Some("t"), pause).await.0, StatusCode::OK);
        let mut served = vec![registered];
        for uri in [
            "/v1/rollouts",
            "/v1/rollouts/checkout",
            "/v1/rollouts/checkout/report",
            "/v1/rollouts/checkout/audit",
            "/",
            "/live",
            "/rollouts/checkout",
            "/rollouts/checkout/live",
        ] {
            let (status, body) = call(&app, "GET", uri, None, "").await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert!(!body.contains("SECRETSECRET") && !body.contains("/services/"), "{uri} serves the secret: {body}");
            served.push(body);
        }
        let audit: Vec<crate::audit::AuditRecord> = serde_json::from_str(&served[4]).unwrap();
        assert_eq!(audit.len(), 2);
        let real = RolloutPolicy::from_yaml(&policy_with_webhook()).unwrap();
        for record in &audit {
            let url = &record.policy.notify.as_ref().unwrap().webhook_url;
            assert!(url.secret().is_none() && url.redacted().starts_with("https://hooks.slack.com/…#xxh3:"), "{url}");
            // The hash is the real policy's, and the redacted copy reproduces it.
            assert_eq!(record.policy_hash, real.fingerprint());
            assert_eq!(record.policy.fingerprint(), record.policy_hash);
        }
        // On disk: the audit log redacted, the state file (what a restart rebuilds the notifier from) whole.
        let log = std::fs::read_to_string(dir.join(crate::audit::AUDIT_FILE)).unwrap();
        assert!(!log.contains("SECRETSECRET") && log.contains("hooks.slack.com/…#xxh3:"), "{log}");
        let state_file = dir.join(crate::audit::STATE_DIR).join("checkout.json");
        assert!(std::fs::read_to_string(&state_file).unwrap().contains(SECRET_PATH));
    }

    #[tokio::test]
    async fn a_restart_one_record_behind_takes_the_webhook_url_from_the_state_file() {
        let dir = temp_dir();
        let state_file = dir.join(crate::audit::STATE_DIR).join("checkout.json");
        {
            let router = app(state_in(&dir, Some("t")));
            assert_eq!(
                call(&router, "POST", "/v1/rollouts", Some("t"), &policy_with_webhook()).await.0,
                StatusCode::CREATED
            );
            let registered = std::fs::read(&state_file).unwrap();
            let pause = r#"{"action":"hold","reason":"look","actor":"alice"}"#;
            call(&router, "POST", "/v1/rollouts/checkout/override", Some("t"), pause).await;
            // A crash between appending the hold to the log and replacing the state file.
            std::fs::write(&state_file, registered).unwrap();
        }
        let router = app(state_in(&dir, Some("t")));
        let (_, status) = call(&router, "GET", "/v1/rollouts/checkout", None, "").await;
        assert!(status.contains("\"phase\":\"paused\""), "the hold was recovered from the log: {status}");
        let caught_up = std::fs::read_to_string(&state_file).unwrap();
        assert!(caught_up.contains(SECRET_PATH), "the URL came from the old state file: {caught_up}");
        // Without any state file the URL is lost (only its redacted form is logged): still no secret anywhere.
        drop(router);
        std::fs::remove_file(&state_file).unwrap();
        let router = app(state_in(&dir, Some("t")));
        let (_, status) = call(&router, "GET", "/v1/rollouts/checkout", None, "").await;
        assert!(status.contains("\"phase\":\"paused\""), "{status}");
        let rebuilt = std::fs::read_to_string(&state_file).unwrap();
        assert!(!rebuilt.contains("SECRETSECRET") && rebuilt.contains("hooks.slack.com/…#xxh3:"), "{rebuilt}");
    }
}
