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
