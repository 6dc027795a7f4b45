//! `GET /v1/rollouts/{deployment}/audit?limit=&before=`: a page of one
//! deployment's audit records, oldest first.
//!
//! The log grows for the analyzer's whole life, so a read is always a bounded
//! page: the newest [`DEFAULT_PAGE`] records unless `limit` says otherwise (at most
//! [`MAX_PAGE`]), and `before=N` pages back to the records with sequence numbers
//! below N (pass the first record's sequence of the page you have; an empty page
//! means there is nothing older). The records are read by their offsets on the
//! blocking pool ([`crate::engine::Engine::audit_page`]), never parsed whole on the
//! runtime that answers the filters' polls.

use super::{ApiError, AppState};
use crate::audit::AuditPage;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

/// Records a page holds without `limit`: a rollout makes a handful to a few dozen
/// records, so this shows the latest several rollouts of a deployment (~300 kB).
pub(super) const DEFAULT_PAGE: usize = 100;
/// The most a page may hold: about 3 MB of JSON, parsed in tens of milliseconds
/// off the runtime; more is a bulk export, which the log file itself serves.
pub(super) const MAX_PAGE: usize = 1_000;

pub(super) async fn audit(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_read(&headers, "audit log")?;
    let page = parse_page(&query).map_err(ApiError::BadRequest)?;
    let json = state.engine.audit_page_json(&deployment, page).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// `limit` (1..=[`MAX_PAGE`], default [`DEFAULT_PAGE`]) and `before` (a sequence number, at least 1).
fn parse_page(query: &BTreeMap<String, String>) -> Result<AuditPage, String> {
    if let Some(unknown) = query.keys().find(|k| !matches!(k.as_str(), "limit" | "before")) {
        return Err(format!("query parameter `{unknown}`: expected `limit` or `before`"));
    }
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(text) => text.parse::<usize>().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| {
            format!("query parameter `limit` = {text:?}: expected a whole number of records from 1 to {MAX_PAGE}")
        })?,
    };
    let before =
        match query.get("before") {
            None => None,
            Some(text) => Some(text.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                format!("query parameter `before` = {text:?}: expected a sequence number (1 or more)")
            })?),
        };
    Ok(AuditPage { limit, before })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::app;
    use crate::api::tests::{POLICY, call, state_in, temp_dir};
    use crate::audit::AuditRecord;
    use axum::http::StatusCode;

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn page_parameters_are_checked_and_named() {
        assert_eq!(parse_page(&query(&[])), Ok(AuditPage { limit: DEFAULT_PAGE, before: None }));
        assert_eq!(parse_page(&query(&[("limit", "5"), ("before", "9")])), Ok(AuditPage { limit: 5, before: Some(9) }));
        for (key, value) in [("limit", "0"), ("limit", "1001"), ("limit", "-1"), ("limit", "ten"), ("before", "0")] {
            let error = parse_page(&query(&[(key, value)])).unwrap_err();
            assert!(error.contains(&format!("`{key}` = {value:?}")) && error.contains("expected"), "{error}");
        }
        let error = parse_page(&query(&[("offset", "3")])).unwrap_err();
        assert_eq!(error, "query parameter `offset`: expected `limit` or `before`");
    }

    #[tokio::test]
    async fn the_audit_log_is_read_in_pages_newest_first_oldest_first_within() {
        let dir = temp_dir();
        let app = app(state_in(&dir, Some("t")));
        assert_eq!(call(&app, "POST", "/v1/rollouts", Some("t"), POLICY).await.0, StatusCode::CREATED);
        for (i, action) in ["hold", "resume", "hold", "resume", "hold"].iter().enumerate() {
            let body = format!(r#"{{"action":"{action}","reason":"r{i}"}}"#);
            assert_eq!(call(&app, "POST", "/v1/rollouts/checkout/override", Some("t"), &body).await.0, StatusCode::OK);
        }
        let sequences = |body: &str| -> Vec<u64> {
            serde_json::from_str::<Vec<AuditRecord>>(body).unwrap().iter().map(|r| r.sequence).collect()
        };
        let (status, body) = call(&app, "GET", "/v1/rollouts/checkout/audit", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sequences(&body), [1, 2, 3, 4, 5, 6], "everything fits the default page");
        let (_, body) = call(&app, "GET", "/v1/rollouts/checkout/audit?limit=2", None, "").await;
        assert_eq!(sequences(&body), [5, 6]);
        let (_, body) = call(&app, "GET", "/v1/rollouts/checkout/audit?limit=2&before=5", None, "").await;
        assert_eq!(sequences(&body), [3, 4]);
        let (_, body) = call(&app, "GET", "/v1/rollouts/checkout/audit?limit=2&before=1", None, "").await;
        assert_eq!(sequences(&body), Vec::<u64>::new(), "nothing older");
        let (_, body) = call(&app, "GET", "/v1/rollouts/unknown/audit", None, "").await;
        assert_eq!(sequences(&body), Vec::<u64>::new());
        let (status, body) = call(&app, "GET", "/v1/rollouts/checkout/audit?limit=0", None, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("`limit` = \\\"0\\\""), "{body}");
    }
}
