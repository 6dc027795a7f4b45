//! The API's writes: registering a rollout (`POST /v1/rollouts`, held for deployment
//! with `?start=held`) and overriding one (`POST /v1/rollouts/{deployment}/override`,
//! the pipeline's `deployed` and an operator's `approve` among the actions). Each is
//! authenticated for its permission, recorded as the token's identity with what the
//! caller declared as a note, and answered with [`IDENTITY_HEADER`].

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, IDENTITY_HEADER};
use crate::auth::{Identity, Permission};
use crate::engine::{Start, now_ms};
use crate::ladder::{ActedBy, Actor, OverrideAction};
use crate::policy::RolloutPolicy;

/// Longest self-declared actor kept as a note: a name or an e-mail address, not a story.
const MAX_NOTE_CHARS: usize = 100;

/// Who a write is recorded as: the authenticated name, with what the caller
/// declared about itself (`field`) as a note. A note is optional, at most
/// [`MAX_NOTE_CHARS`] printable characters, and never `analyzer`.
fn acted_by(identity: &Identity, declared: Option<&str>, field: &str) -> Result<ActedBy, ApiError> {
    let actor = Actor::human(&identity.name).map_err(|e| ApiError::Internal(format!("identity name: {e}")))?;
    let note = declared.map(str::trim).filter(|n| !n.is_empty());
    if let Some(note) = note
        && (note.chars().count() > MAX_NOTE_CHARS || note.chars().any(char::is_control) || Actor::human(note).is_err())
    {
        return Err(ApiError::BadRequest(format!(
            "{field} = {note:?}: expected at most {MAX_NOTE_CHARS} printable characters, not \"analyzer\" \
             (kept as a note; the audit log names the token's identity)"
        )));
    }
    Ok(ActedBy { actor, note: note.map(str::to_string) })
}

/// `answer` with the [`IDENTITY_HEADER`] of `identity`.
fn with_identity(identity: &Identity, answer: impl IntoResponse) -> Response {
    let mut response = answer.into_response();
    let shown = format!("{} ({})", identity.name, identity.role);
    if let Ok(value) = HeaderValue::from_str(&shown) {
        response.headers_mut().insert(IDENTITY_HEADER, value);
    }
    response
}

/// The query of `POST /v1/rollouts`: `?start=held` registers the rollout held at
/// share 0 until the pipeline marks the canary deployed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterQuery {
    start: Option<String>,
}

/// Body: the policy document (YAML or JSON). Recorded as the token's identity; the
/// optional header `x-actor` is kept as a note.
pub(super) async fn register(
    State(state): State<AppState>,
    query: Result<Query<RegisterQuery>, QueryRejection>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let identity = state.authenticate(&headers, Permission::Register, "register rollout")?;
    let declared = match headers.get("x-actor") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::BadRequest("header `x-actor`: expected visible ASCII characters (kept as a note)".into())
        })?),
    };
    let by = acted_by(&identity, declared, "header `x-actor`")?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))?;
    let start = match query.start.as_deref() {
        None | Some("running") => Start::Running,
        Some("held") => Start::HeldForDeployment,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "query `start` = {other:?}: expected held (share 0 until marked deployed) or running"
            )));
        }
    };
    let policy = RolloutPolicy::from_yaml(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let status = state.engine.register_with(policy, by, start, now_ms()).await?;
    Ok(with_identity(&identity, (StatusCode::CREATED, Json(status))))
}

/// The override action that starts a rollout registered held.
const DEPLOYED: &str = "deployed";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OverrideRequest {
    /// promote | rollback | hold (or pause) | resume | set_share | approve | deployed
    action: String,
    reason: Option<String>,
    /// Who the caller says it is: kept as a note beside the token's identity.
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
        "approve" => OverrideAction::Approve,
        DEPLOYED => OverrideAction::Deployed,
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
                "field `action` = {other:?}: expected promote, rollback, hold, resume, set_share, approve or deployed"
            )));
        }
    })
}

pub(super) async fn override_rollout(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let request = serde_json::from_str::<OverrideRequest>(&body);
    // Marking the canary deployed is the pipeline's, the second half of registering;
    // every other override (an approval too) is an operator's.
    let permission = match &request {
        Ok(request) if request.action == DEPLOYED => Permission::Register,
        _ => Permission::Override,
    };
    let identity = state.authenticate(&headers, permission, "override")?;
    let request =
        request.map_err(|e| ApiError::BadRequest(crate::policy::one_line(&format!("override request: {e}"))))?;
    let action = parse_action(&request)?;
    let reason = request.reason.as_deref().unwrap_or("");
    let by = acted_by(&identity, request.actor.as_deref(), "field `actor`")?;
    let status = state.engine.override_rollout(&deployment, &action, &by, reason, now_ms()).await?;
    Ok(with_identity(&identity, Json(status)))
}
