//! `GET /v1/source`: which kind of metric source the analyzer reads (Envoy admin
//! endpoints or a Prometheus server), so `register --dry-run` can warn about policy
//! metrics that source cannot read before a rollout waits on them. Read-only, and
//! behind the same read permission as the rollouts; it names the kind, never a URL.

use super::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

/// The route's path.
pub const PATH: &str = "/v1/source";

/// Where the analyzer reads per-cohort metrics from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Envoy admin endpoints scraped directly (`--envoy-admin`): no PromQL.
    EnvoyAdmin,
    /// A Prometheus server (`--prometheus`): PromQL metrics too.
    Prometheus,
}

/// The answer: `{"kind": "envoy_admin"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceAnswer {
    pub kind: SourceKind,
}

pub(super) async fn source_kind(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SourceAnswer>, ApiError> {
    state.check_read(&headers, "read the metric source")?;
    let kind = if state.engine.reads_prometheus() { SourceKind::Prometheus } else { SourceKind::EnvoyAdmin };
    Ok(Json(SourceAnswer { kind }))
}

#[cfg(test)]
mod tests {
    use super::super::app;
    use super::*;
    use crate::auth::Authenticator;
    use crate::engine::{Engine, SourceSettings};
    use crate::notify::Notifier;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use std::sync::Arc;
    use tower::ServiceExt;

    /// `GET /v1/source` of an analyzer reading `source`, with a viewer token when `token`.
    async fn ask(source: SourceSettings, token: Option<&str>) -> (StatusCode, String) {
        let dir = std::env::temp_dir().join(format!("canary-source-kind-{}-{}", std::process::id(), rand_suffix()));
        let tokens = dir.join("tokens.csv");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&tokens, "source-viewer-token-0123456789,vera,viewer\n").unwrap();
        let auth = Authenticator::from_settings(None, Some(&tokens), true).unwrap();
        let engine = Engine::open(&dir, source, Notifier::new(Vec::new())).unwrap();
        let router = app(AppState { engine: Arc::new(engine), auth: Arc::new(auth) });
        let mut request = Request::builder().uri(PATH);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = router.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    #[tokio::test]
    async fn the_source_kind_is_a_read_that_names_no_url() {
        let max_body_bytes = crate::source::DEFAULT_MAX_BODY_BYTES;
        let token = Some("source-viewer-token-0123456789");
        let admin = SourceSettings::EnvoyAdmin { admin_urls: vec!["http://10.9.8.7:9901".into()], max_body_bytes };
        assert_eq!(ask(admin.clone(), token).await, (StatusCode::OK, r#"{"kind":"envoy_admin"}"#.to_string()));
        let prometheus = SourceSettings::Prometheus { url: "http://10.9.8.7:9090".into(), max_body_bytes };
        assert_eq!(ask(prometheus, token).await, (StatusCode::OK, r#"{"kind":"prometheus"}"#.to_string()));
        assert_eq!(ask(admin, None).await.0, StatusCode::UNAUTHORIZED, "a read like the others");
    }
}
