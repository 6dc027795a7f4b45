//! The HTTP API: the config the filter polls, rollout status and reports, the
//! audit log, registration and human overrides, `/healthz` and the analyzer's own
//! `/metrics`, and the dashboard's pages (`/`, `/rollouts/{deployment}` and their
//! live fragments, rendered by [`crate::dashboard`]). One error type maps to
//! status codes; 5xx bodies never carry internals (they are logged instead).
//!
//! Who may do what ([`crate::auth`]): registration and marking a held rollout's
//! canary deployed (the second half of registration) need a `pipeline` or `admin`
//! token, overrides (approving a step among them) an `operator` or `admin` one, and the audit log records that
//! token's name (a self-declared actor is kept as a note). Reads (status, report,
//! audit, dashboard) are open unless `--require-viewer`; `/v1/rollouts/{d}/config`
//! (the filter's poll carries no token), `/healthz` and `/metrics` are always open.

mod audit_pages;
mod health;
mod writes;

use crate::audit::AuditPage;
use crate::auth::{Authenticator, Identity, Permission, Refusal};
use crate::dashboard;
use crate::engine::{Engine, EngineError, now_ms};
use crate::ladder::{OverrideError, TransitionError};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

mod config_batch;
mod source_kind;
pub use source_kind::{PATH as SOURCE_PATH, SourceAnswer, SourceKind};

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Who may read, register and override ([`crate::auth`]); build it with
    /// [`Authenticator::from_settings`] (or [`Authenticator::without_tokens`]: writes refused).
    pub auth: Arc<Authenticator>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// 401 or 403, see [`crate::auth::RefusalReason::status`].
    #[error(transparent)]
    Refused(#[from] Refusal),
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
            EngineError::Override(
                OverrideError::Finished { .. }
                | OverrideError::AwaitingDeployment(_)
                | OverrideError::NotAwaitingDeployment(_)
                | OverrideError::AlreadyApproved { .. },
            ) => ApiError::Conflict(e.to_string()),
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
            ApiError::Refused(refusal) => {
                StatusCode::from_u16(refusal.reason().status()).unwrap_or(StatusCode::FORBIDDEN)
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if let ApiError::Refused(refusal) = &self
            && status == StatusCode::UNAUTHORIZED
        {
            let challenges = response.headers_mut();
            // A browser shows its login prompt for Basic: offered for reads only (see `crate::auth`).
            if refusal.permission() == Permission::Read {
                challenges.append(header::WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_CHALLENGE));
            }
            challenges.append(header::WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
        }
        response
    }
}

const BASIC_CHALLENGE: &str = "Basic realm=\"canary-analyzer\", charset=\"UTF-8\"";
const BEARER_CHALLENGE: &str = "Bearer realm=\"canary-analyzer\"";
/// The response header that names who a write was recorded as: `alice (operator)`.
pub const IDENTITY_HEADER: &str = "x-canary-identity";

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

impl AppState {
    /// Counts a 401 in the older `canary_analyzer_unauthorized_total` too (dashboards use it).
    fn refused(&self, refusal: Refusal) -> ApiError {
        if refusal.reason().status() == 401 {
            self.engine.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        ApiError::Refused(refusal)
    }

    /// The identity a write is recorded as, if its role holds `permission`.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        permission: Permission,
        request: &str,
    ) -> Result<Arc<Identity>, ApiError> {
        self.auth.authenticate(authorization(headers), permission, request).map_err(|r| self.refused(r))
    }

    /// A read: open unless `--require-viewer`.
    fn check_read(&self, headers: &HeaderMap, request: &str) -> Result<(), ApiError> {
        self.auth.check_read(authorization(headers), request).map_err(|r| self.refused(r))
    }
}

/// The router; `state` carries the engine and who may do what.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/livez", get(health::livez))
        .route("/metrics", get(health::metrics))
        .route("/v1/rollouts", get(list).post(writes::register))
        .route("/v1/rollouts/{deployment}", get(status))
        .route("/v1/rollouts/{deployment}/config", get(config))
        .route(config_batch::PATH, get(config_batch::batch_config))
        .route(source_kind::PATH, get(source_kind::source_kind))
        .route("/v1/rollouts/{deployment}/report", get(report))
        .route("/v1/rollouts/{deployment}/audit", get(audit_pages::audit))
        .route("/v1/rollouts/{deployment}/override", post(writes::override_rollout))
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

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.check_read(&headers, "list rollouts")?;
    Ok(Json(state.engine.list(now_ms()).await).into_response())
}

async fn status(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_read(&headers, "rollout status")?;
    Ok(Json(state.engine.status(&deployment, now_ms()).await?).into_response())
}

async fn report(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_read(&headers, "rollout report")?;
    Ok(Json(state.engine.status(&deployment, now_ms()).await?.rows).into_response())
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

async fn dashboard_index(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.check_read(&headers, "dashboard")?;
    Ok(html(dashboard::index_page(&state.engine.list(now_ms()).await)))
}

async fn dashboard_index_live(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.check_read(&headers, "dashboard")?;
    Ok(html(dashboard::index_fragment(&state.engine.list(now_ms()).await)))
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
    let audit = state.engine.audit_page(deployment, AuditPage::newest(dashboard::LOG_LIMIT)).await?;
    Ok(html(render(&status, &audit)))
}

async fn dashboard_rollout(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_read(&headers, "dashboard")?;
    rollout_view(&state, &deployment, dashboard::rollout_page).await
}

async fn dashboard_rollout_live(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_read(&headers, "dashboard")?;
    rollout_view(&state, &deployment, dashboard::rollout_fragment).await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::SourceSettings;
    use crate::notify::Notifier;
    use crate::policy::RolloutPolicy;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    pub(crate) const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: api-test}\n\
                          spec: {deployment: checkout}\n";

    fn state(token: Option<&str>) -> AppState {
        state_in(&temp_dir(), token)
    }

    pub(crate) fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("canary-api-{}-{}", std::process::id(), now_ms() ^ rand_suffix()))
    }

    pub(crate) fn state_in(dir: &std::path::Path, token: Option<&str>) -> AppState {
        let auth = Authenticator::from_settings(token, None, false).unwrap();
        state_with(dir, auth)
    }

    fn state_with(dir: &std::path::Path, auth: Authenticator) -> AppState {
        let source = SourceSettings::EnvoyAdmin {
            admin_urls: vec!["http://127.0.0.1:1".into()],
            max_body_bytes: crate::source::DEFAULT_MAX_BODY_BYTES,
        };
        let engine = Engine::open(dir, source, Notifier::new(Vec::new())).unwrap();
        AppState { engine: Arc::new(engine), auth: Arc::new(auth) }
    }

    /// Distinguishes temp dirs of tests running in parallel.
    fn rand_suffix() -> u64 {
        use std::sync::atomic::AtomicU64;
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed) << 48
    }

    pub(crate) async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, String) {
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
        assert!(audit.contains("manual check passed"), "{audit}");
        // `--token` is one admin named `token`; the body's `actor` is only a note.
        assert!(audit.contains(r#""actor":"token","actor_note":"alice""#), "{audit}");
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
        use crate::auth::{BlankToken, TokenTable};
        for blank in ["", " ", "\n"] {
            assert_eq!(TokenTable::single(blank).unwrap_err(), BlankToken { length: blank.len() });
            assert!(Authenticator::from_settings(Some(blank), None, false).is_err(), "{blank:?}");
        }
        let message = BlankToken { length: 1 }.to_string();
        assert!(message.contains("empty") && message.contains("expected at least one non-whitespace"), "{message}");
        // A newline from `kubectl create secret --from-file` is trimmed, not made part of the secret.
        let app = app(state(Some(" s3cret\n")));
        assert_eq!(call(&app, "POST", "/v1/rollouts", None, POLICY).await.0, StatusCode::UNAUTHORIZED);
        // `Bearer ` with nothing after it, or only spaces, is no token.
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some(" "), POLICY).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some("s3cret"), POLICY).await.0, StatusCode::CREATED);
    }

    const VIEWER: &str = "viewer-token-0123456789";
    const PIPELINE: &str = "pipeline-token-0123456789";
    const OPERATOR: &str = "operator-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";

    /// A state whose identities come from a tokens file with one of each role.
    fn state_with_roles(require_viewer: bool) -> (AppState, std::path::PathBuf) {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens.csv");
        std::fs::write(
            &file,
            format!(
                "# token,name,role\n{VIEWER},vera,viewer\n{PIPELINE},ci-deploy,pipeline\n\
                 {OPERATOR},alice,operator\n{ADMIN},root,admin\n"
            ),
        )
        .unwrap();
        let auth = Authenticator::from_settings(None, Some(&file), require_viewer).unwrap();
        (state_with(&dir, auth), file)
    }

    /// A request with `headers`; answers status, headers and body.
    pub(super) async fn call_with(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app.clone().oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn policy_for(deployment: &str) -> String {
        POLICY.replace("deployment: checkout", &format!("deployment: {deployment}"))
    }

    /// Every read that `--require-viewer` closes.
    const READS: [&str; 8] = [
        "/v1/rollouts",
        "/v1/rollouts/checkout",
        "/v1/rollouts/checkout/report",
        "/v1/rollouts/checkout/audit",
        "/",
        "/live",
        "/rollouts/checkout",
        "/rollouts/checkout/live",
    ];
    /// What the filter and the probes need: open whatever the settings.
    const ALWAYS_OPEN: [&str; 3] = ["/v1/rollouts/checkout/config", "/healthz", "/metrics"];

    #[tokio::test]
    async fn each_role_is_allowed_its_actions_and_refused_the_rest() {
        use StatusCode as S;
        let (state, _) = state_with_roles(true);
        let app = app(state.clone());
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some(ADMIN), POLICY).await.0, S::CREATED);
        let set_share = r#"{"action":"set_share","share_percent":1,"reason":"role table"}"#;
        // Who calls, and what register, override and every read must answer.
        let table = [
            ("no token", None, S::UNAUTHORIZED, S::UNAUTHORIZED, S::UNAUTHORIZED),
            ("unknown token", Some("not-a-token-0123456789"), S::UNAUTHORIZED, S::UNAUTHORIZED, S::UNAUTHORIZED),
            ("viewer", Some(VIEWER), S::FORBIDDEN, S::FORBIDDEN, S::OK),
            ("pipeline", Some(PIPELINE), S::CREATED, S::FORBIDDEN, S::OK),
            ("operator", Some(OPERATOR), S::FORBIDDEN, S::OK, S::OK),
            ("admin", Some(ADMIN), S::CREATED, S::OK, S::OK),
        ];
        for (row, (who, token, register, override_, read)) in table.into_iter().enumerate() {
            let policy = policy_for(&format!("reg-{row}"));
            let (status, body) = call(&app, "POST", "/v1/rollouts", token, &policy).await;
            assert_eq!(status, register, "{who} registers: {body}");
            let (status, body) = call(&app, "POST", "/v1/rollouts/checkout/override", token, set_share).await;
            assert_eq!(status, override_, "{who} overrides: {body}");
            if status == S::FORBIDDEN {
                assert!(body.contains("needs operator or admin"), "{who}: {body}");
            }
            for uri in READS {
                assert_eq!(call(&app, "GET", uri, token, "").await.0, read, "{who} reads {uri}");
            }
            for uri in ALWAYS_OPEN {
                assert_eq!(call(&app, "GET", uri, token, "").await.0, S::OK, "{who} reads {uri}");
            }
        }
        // Refusals counted per reason: 10 requests (2 writes, 8 reads) for each anonymous
        // caller; the viewer refused twice, the pipeline and the operator once each.
        let (_, metrics) = call(&app, "GET", "/metrics", None, "").await;
        for line in [
            "canary_analyzer_auth_refusals_total{status=\"401\",reason=\"missing_token\"} 10\n",
            "canary_analyzer_auth_refusals_total{status=\"401\",reason=\"unknown_token\"} 10\n",
            "canary_analyzer_auth_refusals_total{status=\"403\",reason=\"role\"} 4\n",
            "canary_analyzer_auth_refusals_total{status=\"403\",reason=\"disabled\"} 0\n",
            "canary_analyzer_unauthorized_total 20\n",
            "canary_analyzer_identities 4\n",
        ] {
            assert!(metrics.contains(line), "{line}{metrics}");
        }
    }

    #[tokio::test]
    async fn reads_are_open_without_require_viewer_and_writes_need_tokens_either_way() {
        let (with_roles, _) = state_with_roles(false);
        let app = app(with_roles);
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some(PIPELINE), POLICY).await.0, StatusCode::CREATED);
        for uri in READS.iter().chain(&ALWAYS_OPEN) {
            assert_eq!(call(&app, "GET", uri, None, "").await.0, StatusCode::OK, "{uri}");
        }
        assert_eq!(call(&app, "POST", "/v1/rollouts", None, POLICY).await.0, StatusCode::UNAUTHORIZED);
        // Without any token: reads open, writes off (403, reason `disabled`).
        let app = super::app(state(None));
        let (status, body) = call(&app, "POST", "/v1/rollouts", Some(ADMIN), POLICY).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("registering a rollout is disabled") && body.contains("--tokens-file"), "{body}");
        let (_, metrics) = call(&app, "GET", "/metrics", None, "").await;
        assert!(metrics.contains("{status=\"403\",reason=\"disabled\"} 1\n"), "{metrics}");
    }

    #[tokio::test]
    async fn a_browser_reads_with_basic_but_never_writes_with_it() {
        use base64::Engine as _;
        let basic = |token: &str| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("anyone:{token}")))
        };
        let (state, _) = state_with_roles(true);
        let app = app(state);
        call(&app, "POST", "/v1/rollouts", Some(ADMIN), POLICY).await;
        // A page without credentials: 401 with the Basic challenge, so the browser asks.
        let (status, headers, _) = call_with(&app, "GET", "/rollouts/checkout", &[], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let challenges: Vec<&str> =
            headers.get_all(header::WWW_AUTHENTICATE).iter().map(|v| v.to_str().unwrap()).collect();
        assert!(challenges.iter().any(|c| c.starts_with("Basic ")), "{challenges:?}");
        let viewer = basic(VIEWER);
        let (status, _, page) = call_with(&app, "GET", "/rollouts/checkout", &[("authorization", &viewer)], "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("<form id=\"override\""), "{page}");
        // An admin's Basic credentials (which a browser re-sends to any form post) change nothing.
        let admin = basic(ADMIN);
        let hold = r#"{"action":"hold","reason":"cross-site form"}"#;
        let (status, headers, body) =
            call_with(&app, "POST", "/v1/rollouts/checkout/override", &[("authorization", &admin)], hold).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let challenges: Vec<&str> =
            headers.get_all(header::WWW_AUTHENTICATE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(challenges, ["Bearer realm=\"canary-analyzer\""], "no login prompt for a write");
        let (_, audit) = call(&app, "GET", "/v1/rollouts/checkout/audit", Some(VIEWER), "").await;
        assert!(!audit.contains("cross-site form"), "{audit}");
    }

    #[tokio::test]
    async fn the_audit_log_names_the_token_and_keeps_the_declared_actor_as_a_note() {
        let (state, _) = state_with_roles(false);
        let app = app(state);
        let pipeline = format!("Bearer {PIPELINE}");
        let headers = [("authorization", pipeline.as_str()), ("x-actor", "release-bot")];
        let (status, answer, body) = call_with(&app, "POST", "/v1/rollouts", &headers, POLICY).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(answer[IDENTITY_HEADER], "ci-deploy (pipeline)");
        let operator = format!("Bearer {OPERATOR}");
        let claims = r#"{"action":"hold","reason":"looks off","actor":"mallory"}"#;
        let (status, answer, body) =
            call_with(&app, "POST", "/v1/rollouts/checkout/override", &[("authorization", &operator)], claims).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(answer[IDENTITY_HEADER], "alice (operator)");
        let plain = r#"{"action":"resume","reason":"fine"}"#;
        assert_eq!(call(&app, "POST", "/v1/rollouts/checkout/override", Some(OPERATOR), plain).await.0, StatusCode::OK);
        let (_, audit) = call(&app, "GET", "/v1/rollouts/checkout/audit", None, "").await;
        let audit: Vec<crate::audit::AuditRecord> = serde_json::from_str(&audit).unwrap();
        let who: Vec<(&str, Option<&str>)> =
            audit.iter().map(|r| (r.decision.actor.name(), r.decision.actor_note.as_deref())).collect();
        assert_eq!(who, [("ci-deploy", Some("release-bot")), ("alice", Some("mallory")), ("alice", None)]);
        let (_, page) = call(&app, "GET", "/rollouts/checkout", None, "").await;
        assert!(page.contains("alice (note: mallory)"), "{page}");
        // A note is a note: it cannot claim the analyzer, carry control characters or run long.
        let long = "x".repeat(101);
        for declared in ["analyzer", "a\u{7}b", long.as_str()] {
            let body = serde_json::json!({"action": "hold", "reason": "r", "actor": declared}).to_string();
            let (status, answer) = call(&app, "POST", "/v1/rollouts/checkout/override", Some(OPERATOR), &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{declared:?}");
            assert!(answer.contains("field `actor`") && answer.contains("expected at most 100 printable"), "{answer}");
        }
        let (_, audit) = call(&app, "GET", "/v1/rollouts/checkout/audit", None, "").await;
        assert_eq!(
            serde_json::from_str::<Vec<serde_json::Value>>(&audit).unwrap().len(),
            3,
            "nothing refused is logged"
        );
    }

    #[tokio::test]
    async fn a_rotated_tokens_file_takes_effect_on_sighup_without_a_restart() {
        use crate::auth::{ReloadTrigger, Reloaded};
        let (state, file) = state_with_roles(false);
        let app = app(state.clone());
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some(ADMIN), POLICY).await.0, StatusCode::CREATED);
        let hold = r#"{"action":"hold","reason":"r"}"#;
        let resume = r#"{"action":"resume","reason":"r"}"#;
        let rotated = "rotated-operator-token-0123456789";
        std::fs::write(&file, format!("{rotated},alice,operator\n{ADMIN},root,admin\n")).unwrap();
        // What the SIGHUP handler calls.
        assert_eq!(state.auth.reload(ReloadTrigger::Signal).unwrap(), Reloaded::Loaded { identities: 2 });
        let (status, _) = call(&app, "POST", "/v1/rollouts/checkout/override", Some(OPERATOR), hold).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the old token is refused");
        assert_eq!(call(&app, "POST", "/v1/rollouts/checkout/override", Some(rotated), hold).await.0, StatusCode::OK);
        // A broken rotation keeps the identities in force.
        std::fs::write(&file, "half-written-line-0123456789,alice\n").unwrap();
        let error = state.auth.reload(ReloadTrigger::Signal).unwrap_err().to_string();
        assert!(error.contains("line 1: 2 comma-separated field(s): expected 3"), "{error}");
        assert!(!error.contains("half-written"), "no token in the error: {error}");
        assert_eq!(call(&app, "POST", "/v1/rollouts/checkout/override", Some(rotated), resume).await.0, StatusCode::OK);
        let (_, metrics) = call(&app, "GET", "/metrics", None, "").await;
        assert!(metrics.contains("canary_analyzer_tokens_reloads_total{result=\"refused\"} 1\n"), "{metrics}");
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

    #[tokio::test]
    async fn a_held_registration_is_started_by_the_pipeline_and_a_step_approved_by_an_operator() {
        let (state, _) = state_with_roles(false);
        let app = app(state);
        let bearer = |token: &str| format!("Bearer {token}");
        let (pipeline, operator) = (bearer(PIPELINE), bearer(OPERATOR));
        let post = |uri: &'static str, token: &str, body: &str| {
            let (app, token, body) = (app.clone(), token.to_string(), body.to_string());
            async move { call_with(&app, "POST", uri, &[("authorization", token.as_str())], &body).await }
        };
        let (status, _, body) = post("/v1/rollouts?start=later", &pipeline, POLICY).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.contains("query `start` = ") && body.contains("later") && body.contains("expected held"),
            "{body}"
        );
        assert_eq!(post("/v1/rollouts?start=held", &pipeline, POLICY).await.0, StatusCode::CREATED);
        let config = call(&app, "GET", "/v1/rollouts/checkout/config", None, "").await.1;
        assert!(config.contains("\"share_bp\":0") && config.contains("\"state\":\"pending\""), "{config}");
        let promote = r#"{"action":"promote","reason":"go"}"#;
        let (status, _, body) = post("/v1/rollouts/checkout/override", &operator, promote).await;
        assert_eq!(status, StatusCode::CONFLICT, "nothing but deployed or rollback while held: {body}");
        let deployed = r#"{"action":"deployed","reason":"image v2 rolled out"}"#;
        assert_eq!(post("/v1/rollouts/checkout/override", &operator, deployed).await.0, StatusCode::FORBIDDEN);
        assert_eq!(post("/v1/rollouts/checkout/override", &pipeline, deployed).await.0, StatusCode::OK);
        let approve = r#"{"action":"approve","reason":"fine"}"#;
        assert_eq!(post("/v1/rollouts/checkout/override", &pipeline, approve).await.0, StatusCode::FORBIDDEN);
        let (status, _, body) = post("/v1/rollouts/checkout/override", &operator, approve).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "the policy asks no approval: {body}");
        assert!(body.contains("needs no approval"), "{body}");
    }
}
