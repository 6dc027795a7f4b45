//! `GET /v1/config?deployments=a,b,…`: every requested deployment's rollout config in
//! one conditional poll, so a proxy serving many deployments polls once per interval.
//!
//! The answer is [`canary_core::BatchAnswer`]: each entry of `rollouts` is what
//! `/v1/rollouts/{deployment}/config` serves, and deployments without a rollout are
//! listed under `unknown` (the filter keeps its initial share for them), not refused.
//! Its revision is a strong `ETag`: a hash of everything the answer says, so it changes
//! exactly when a requested deployment's generation, share or state changes or it
//! becomes known or unknown, is the same for the same answer on every analyzer replica
//! and across restarts, and does not depend on deployments not asked for. A request
//! whose `If-None-Match` holds it (or `*`) gets `304` with no body: the lookups and the
//! hash, nothing cloned or serialised. Like the per-deployment config, it is open
//! whatever the settings: the filter's poll carries no token.

use super::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canary_core::config::is_valid_deployment_id;
use canary_core::rollout_batch::{DEPLOYMENTS_PARAMETER, MAX_BATCH_DEPLOYMENTS};
use canary_core::{BatchAnswer, RolloutConfig};
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_128;

/// The route.
pub const PATH: &str = "/v1/config";

/// Longest piece of a refused value quoted back in an error: enough to recognise it.
const MAX_QUOTED_CHARS: usize = 80;

/// Answers the batch poll; see the module doc.
pub async fn batch_config(
    State(state): State<AppState>,
    Query(parameters): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let requested = requested_deployments(&parameters)?;
    let outcome = state
        .engine
        .read_configs(|configs| {
            let tag = EntityTag::of(revision(configs, &requested));
            if if_none_match_holds(&headers, tag.opaque()) {
                return Outcome::NotModified(tag);
            }
            let mut answer =
                BatchAnswer { revision: tag.opaque().to_string(), rollouts: Vec::new(), unknown: Vec::new() };
            for deployment in &requested {
                match configs.get(*deployment) {
                    Some(config) => answer.rollouts.push(config.clone()),
                    None => answer.unknown.push((*deployment).to_string()),
                }
            }
            Outcome::Changed(tag, answer)
        })
        .ok_or_else(|| ApiError::Internal("rollout configs lock poisoned".into()))?;
    // Serialised after the lock is released.
    let (tag, mut response) = match outcome {
        Outcome::NotModified(tag) => (tag, StatusCode::NOT_MODIFIED.into_response()),
        Outcome::Changed(tag, answer) => (tag, Json(answer).into_response()),
    };
    let response_headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_bytes(tag.quoted()) {
        response_headers.insert(header::ETAG, etag);
    }
    // Caches in between must ask again every time: the share can change at any check.
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// What a poll gets: `304` and the tag it holds, or the answer, built under the lock.
enum Outcome {
    NotModified(EntityTag),
    Changed(EntityTag, BatchAnswer),
}

/// What the `deployments` parameter must hold, for refusals.
fn expected_list() -> String {
    format!("1 to {MAX_BATCH_DEPLOYMENTS} distinct deployment ids separated by commas")
}

/// The deployments a request names, in order: one `deployments` parameter holding 1 to
/// [`MAX_BATCH_DEPLOYMENTS`] distinct deployment ids separated by commas.
fn requested_deployments(parameters: &[(String, String)]) -> Result<Vec<&str>, ApiError> {
    let mut list = None;
    for (name, value) in parameters {
        if name != DEPLOYMENTS_PARAMETER {
            return Err(ApiError::BadRequest(format!(
                "query parameter {} = {}: expected only `{DEPLOYMENTS_PARAMETER}`",
                quoted(name),
                quoted(value)
            )));
        }
        if list.replace(value.as_str()).is_some() {
            return Err(ApiError::BadRequest(format!(
                "query parameter `{DEPLOYMENTS_PARAMETER}` given twice: expected one parameter holding {}",
                expected_list()
            )));
        }
    }
    let list = list.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "query parameter `{DEPLOYMENTS_PARAMETER}` = (missing): expected {}",
            expected_list()
        ))
    })?;
    let count = list.split(',').count();
    if count > MAX_BATCH_DEPLOYMENTS {
        return Err(ApiError::BadRequest(format!(
            "query parameter `{DEPLOYMENTS_PARAMETER}` names {count} deployments: expected {}",
            expected_list()
        )));
    }
    let mut requested = Vec::with_capacity(count);
    for (index, id) in list.split(',').enumerate() {
        if !is_valid_deployment_id(id) {
            return Err(ApiError::BadRequest(format!(
                "query parameter `{DEPLOYMENTS_PARAMETER}[{index}]` = {}: expected a deployment id, 1 to 63 \
                 characters from [A-Za-z0-9_-]",
                quoted(id)
            )));
        }
        requested.push(id);
    }
    if let Some((index, id)) = first_repeat(&requested) {
        return Err(ApiError::BadRequest(format!(
            "query parameter `{DEPLOYMENTS_PARAMETER}[{index}]` = {}: expected {} (it is named earlier in the list)",
            quoted(id),
            expected_list()
        )));
    }
    Ok(requested)
}

/// The first id named a second time, and where: found by sorting a copy, since
/// comparing each id with every earlier one was most of a `304`'s cost at 100 ids.
fn first_repeat<'a>(ids: &[&'a str]) -> Option<(usize, &'a str)> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|pair| matches!(pair, [a, b] if a == b)).then(|| {
        let mut seen = Vec::with_capacity(ids.len());
        ids.iter().enumerate().find_map(|(index, id)| {
            if seen.contains(id) {
                return Some((index, *id));
            }
            seen.push(*id);
            None
        })
    })?
}

/// `value` in quotes, escaped to one line and cut to [`MAX_QUOTED_CHARS`].
fn quoted(value: &str) -> String {
    let kept: String = value.chars().take(MAX_QUOTED_CHARS).collect();
    let cut = if kept.len() < value.len() { "…" } else { "" };
    format!("{kept:?}{cut}")
}

/// Bumped when what [`revision`] hashes changes, so no old tag matches a new answer.
const REVISION_FORMAT: u8 = 1;

/// The answer's revision: xxh3-128 of every requested deployment, in order, with its
/// generation, share and state if known. 128 bits, so two different answers sharing a
/// tag (and a proxy keeping a stale config) is a 2⁻¹²⁸ event, not a fleet-size one.
fn revision(configs: &BTreeMap<String, RolloutConfig>, requested: &[&str]) -> u128 {
    // Everything hashed goes into one buffer, hashed once: a streaming hasher fed six
    // small pieces per deployment cost more than the rest of a `304`.
    let mut hashed = Vec::with_capacity(1 + requested.iter().map(|d| d.len() + PER_DEPLOYMENT_BYTES).sum::<usize>());
    hashed.push(REVISION_FORMAT);
    for deployment in requested {
        // Ids are [A-Za-z0-9_-]: a 0 byte ends one unambiguously.
        hashed.extend_from_slice(deployment.as_bytes());
        hashed.push(0);
        match configs.get(*deployment) {
            // Spelled out so a field added to the served config cannot be left out of the tag.
            Some(RolloutConfig { deployment: _, generation, share_bp, state }) => {
                hashed.push(1);
                hashed.extend_from_slice(&generation.to_le_bytes());
                hashed.extend_from_slice(&share_bp.to_le_bytes());
                // The variant's index: reordering the enum changes every tag once, harmlessly.
                hashed.push(*state as u8);
            }
            None => hashed.push(0),
        }
    }
    xxh3_128(&hashed)
}

/// Bytes [`revision`] hashes for a known deployment besides its id: the id's end, the
/// known mark, the generation (8), the share (4) and the state.
const PER_DEPLOYMENT_BYTES: usize = 1 + 1 + 8 + 4 + 1;

/// A revision as an entity tag: 32 lowercase hex digits between double quotes,
/// formatted on the stack.
struct EntityTag([u8; 34]);

impl EntityTag {
    fn of(revision: u128) -> EntityTag {
        let mut tag = [b'"'; 34];
        let nibbles = revision.to_be_bytes().into_iter().flat_map(|byte| [byte >> 4, byte & 0x0f]);
        for (digit, nibble) in tag.iter_mut().skip(1).zip(nibbles) {
            *digit = char::from_digit(u32::from(nibble), 16).map_or(b'0', |c| c as u8);
        }
        EntityTag(tag)
    }

    /// With the quotes: the `ETag` header's value.
    fn quoted(&self) -> &[u8] {
        &self.0
    }

    /// Without the quotes: the answer's `revision`.
    fn opaque(&self) -> &str {
        // Only hex digits were written between the quotes.
        self.0.get(1..33).and_then(|digits| std::str::from_utf8(digits).ok()).unwrap_or_default()
    }
}

/// Whether `If-None-Match` (every field line of it) holds `opaque`, by RFC 9110's weak
/// comparison (`W/"x"` matches `"x"`), or is `*` (this answer always exists).
fn if_none_match_holds(headers: &HeaderMap, opaque: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|list| list_holds(list, opaque))
}

/// Whether one `If-None-Match` field value (`*` or a comma-separated list of entity
/// tags) matches `opaque`. A list that stops parsing matches nothing after that point:
/// the full answer is the safe reply to a garbled condition.
fn list_holds(list: &str, opaque: &str) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let unweakened = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(open) = unweakened.strip_prefix('"') else {
            return false;
        };
        let Some((tag, after)) = open.split_once('"') else {
            return false;
        };
        if tag == opaque {
            return true;
        }
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::app;
    use crate::auth::Authenticator;
    use crate::engine::{Engine, SourceSettings};
    use crate::notify::Notifier;
    use axum::Router;
    use std::sync::Arc;

    const ADMIN: &str = "admin-token-0123456789";
    const VIEWER: &str = "viewer-token-0123456789";

    /// An analyzer with `--require-viewer` and rollouts of `deployments` registered.
    async fn analyzer_with(deployments: &[&str]) -> Router {
        let dir = std::env::temp_dir().join(format!(
            "canary-batch-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("tokens.csv");
        std::fs::write(&tokens, format!("{ADMIN},root,admin\n{VIEWER},vera,viewer\n")).unwrap();
        let auth = Authenticator::from_settings(None, Some(&tokens), true).unwrap();
        let source = SourceSettings::EnvoyAdmin {
            admin_urls: vec!["http://127.0.0.1:1".into()],
            max_body_bytes: crate::source::DEFAULT_MAX_BODY_BYTES,
        };
        let engine = Engine::open(&dir, source, Notifier::new(Vec::new())).unwrap();
        let router = app(AppState { engine: Arc::new(engine), auth: Arc::new(auth) });
        for deployment in deployments {
            let policy = format!(
                "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: {deployment}}}\n\
                 spec: {{deployment: {deployment}}}\n"
            );
            let (status, _, body) = send(&router, "POST", "/v1/rollouts", &[("authorization", ADMIN)], &policy).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        router
    }

    /// One request; `authorization` is sent as a bearer token. Answers status, headers, body.
    async fn send(
        router: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let values: Vec<String> = headers
            .iter()
            .map(|(name, value)| if *name == "authorization" { format!("Bearer {value}") } else { value.to_string() })
            .collect();
        let headers: Vec<(&str, &str)> =
            headers.iter().zip(&values).map(|((name, _), value)| (*name, value.as_str())).collect();
        crate::api::tests::call_with(router, method, uri, &headers, body).await
    }

    async fn poll(router: &Router, uri: &str, if_none_match: Option<&str>) -> (StatusCode, String, String) {
        let headers: Vec<(&str, &str)> = if_none_match.map(|tag| ("if-none-match", tag)).into_iter().collect();
        let (status, headers, body) = send(router, "GET", uri, &headers, "").await;
        let etag = headers.get(header::ETAG).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, etag, body)
    }

    async fn set_share(router: &Router, deployment: &str, percent: u32) {
        let body = format!(r#"{{"action":"set_share","share_percent":{percent},"reason":"test"}}"#);
        let uri = format!("/v1/rollouts/{deployment}/override");
        let (status, _, answer) = send(router, "POST", &uri, &[("authorization", ADMIN)], &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    /// A refused request's status and its error message.
    async fn refusal(router: &Router, uri: &str) -> (StatusCode, String) {
        let (status, _, body) = send(router, "GET", uri, &[], "").await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        (status, body["error"].as_str().unwrap().to_string())
    }

    const BOTH: &str = "/v1/config?deployments=checkout,orders";

    #[tokio::test]
    async fn the_answer_lists_each_known_config_as_served_alone_and_the_unknown_by_name() {
        let router = analyzer_with(&["checkout", "search"]).await;
        let (status, etag, body) = poll(&router, "/v1/config?deployments=orders,checkout,billing", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: BatchAnswer = serde_json::from_str(&body).unwrap();
        let (_, _, alone) = send(&router, "GET", "/v1/rollouts/checkout/config", &[], "").await;
        assert_eq!(answer.rollouts, [serde_json::from_str::<RolloutConfig>(&alone).unwrap()]);
        assert_eq!(answer.unknown, ["orders", "billing"], "in the order asked, not an error");
        assert_eq!(etag, format!("\"{}\"", answer.revision));
        assert!(canary_core::rollout_batch::is_valid_revision(&answer.revision), "{}", answer.revision);
        // What the filter will run on it.
        let parsed = canary_core::parse_batch_answer(body.as_bytes(), &["orders", "checkout", "billing"]).unwrap();
        assert_eq!((parsed.rollouts.len(), parsed.unknown.len(), parsed.problems.len()), (1, 2, 0));
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_304_without_a_body() {
        let router = analyzer_with(&["checkout", "orders"]).await;
        let (status, etag, _) = poll(&router, BOTH, None).await;
        assert_eq!(status, StatusCode::OK);
        let weak = format!("W/{etag}");
        let listed = format!("\"other\", {etag}");
        for condition in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let (status, again, body) = poll(&router, BOTH, Some(condition)).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "If-None-Match: {condition}");
            assert_eq!((again.as_str(), body.as_str()), (etag.as_str(), ""), "If-None-Match: {condition}");
        }
        let unquoted = etag.trim_matches('"');
        for stale in ["\"0123\"", unquoted, "W/", "\"", ""] {
            let (status, again, body) = poll(&router, BOTH, Some(stale)).await;
            assert_eq!((status, again.as_str()), (StatusCode::OK, etag.as_str()), "If-None-Match: {stale}");
            assert!(body.contains("\"rollouts\""), "{body}");
        }
    }

    #[tokio::test]
    async fn a_share_change_or_a_new_rollout_gives_a_new_etag_and_others_do_not() {
        let router = analyzer_with(&["checkout", "search"]).await;
        let (_, first, _) = poll(&router, BOTH, None).await;
        // A deployment not asked for changes: the answer, and so the tag, stay.
        set_share(&router, "search", 40).await;
        let (status, same, _) = poll(&router, BOTH, Some(&first)).await;
        assert_eq!((status, same.as_str()), (StatusCode::NOT_MODIFIED, first.as_str()));
        set_share(&router, "checkout", 30).await;
        let (status, second, body) = poll(&router, BOTH, Some(&first)).await;
        assert_eq!(status, StatusCode::OK, "a share change is news");
        assert_ne!(second, first);
        assert!(body.contains("\"share_bp\":3000"), "{body}");
        // `orders` becomes known.
        let policy = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: o}\n\
                      spec: {deployment: orders}\n";
        let (status, _, body) = send(&router, "POST", "/v1/rollouts", &[("authorization", ADMIN)], policy).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, third, body) = poll(&router, BOTH, Some(&second)).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(third, second);
        let answer: BatchAnswer = serde_json::from_str(&body).unwrap();
        assert_eq!((answer.rollouts.len(), answer.unknown.len()), (2, 0));
        // The same answer in another order is another representation.
        let (_, reversed, _) = poll(&router, "/v1/config?deployments=orders,checkout", None).await;
        assert_ne!(reversed, third);
    }

    #[tokio::test]
    async fn a_pause_alone_changes_the_etag() {
        let router = analyzer_with(&["checkout"]).await;
        let uri = "/v1/config?deployments=checkout";
        let (_, before, _) = poll(&router, uri, None).await;
        let hold = r#"{"action":"hold","reason":"look"}"#;
        let (status, _, body) =
            send(&router, "POST", "/v1/rollouts/checkout/override", &[("authorization", ADMIN)], hold).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, after, body) = poll(&router, uri, Some(&before)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_ne!(after, before);
        assert!(body.contains("\"state\":\"paused\""), "{body}");
    }

    #[tokio::test]
    async fn bad_parameters_are_refused_by_name() {
        let router = analyzer_with(&[]).await;
        let too_many: Vec<String> = (0..=MAX_BATCH_DEPLOYMENTS).map(|i| format!("d{i}")).collect();
        let too_many = format!("/v1/config?deployments={}", too_many.join(","));
        let long = "x".repeat(64);
        let long = format!("/v1/config?deployments=a,{long}");
        for (uri, expected) in [
            ("/v1/config", "query parameter `deployments` = (missing): expected 1 to 500 distinct deployment ids"),
            ("/v1/config?deployments=", "`deployments[0]` = \"\": expected a deployment id, 1 to 63 characters"),
            ("/v1/config?deployments=a,,b", "`deployments[1]` = \"\": expected a deployment id"),
            ("/v1/config?deployments=a,b%20c", "`deployments[1]` = \"b c\": expected a deployment id"),
            ("/v1/config?deployments=a.b", "`deployments[0]` = \"a.b\": expected a deployment id"),
            ("/v1/config?deployments=a,b,a", "`deployments[2]` = \"a\": expected 1 to 500 distinct"),
            ("/v1/config?deployments=a&deployments=b", "`deployments` given twice: expected one parameter"),
            ("/v1/config?deployment=a", "query parameter \"deployment\" = \"a\": expected only `deployments`"),
            (&too_many, "`deployments` names 501 deployments: expected 1 to 500"),
            (&long, "`deployments[1]` = \"xxxxxxxx"),
        ] {
            let (status, error) = refusal(&router, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(error.contains(expected), "{uri}: {error}");
        }
        // A value quoted back is cut short and kept on one line.
        let huge = format!("/v1/config?deployments=%0A{}", "y".repeat(5_000));
        let (_, error) = refusal(&router, &huge).await;
        assert!(
            error.len() < 200
                && error.contains("\"\\nyyyy")
                && error.ends_with("…: expected a deployment id, 1 to 63 characters from [A-Za-z0-9_-]"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_poll_is_open_even_when_reads_need_a_viewer_token() {
        let router = analyzer_with(&["checkout"]).await;
        assert_eq!(send(&router, "GET", "/v1/rollouts", &[], "").await.0, StatusCode::UNAUTHORIZED, "reads closed");
        let (status, etag, _) = poll(&router, "/v1/config?deployments=checkout", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(poll(&router, "/v1/config?deployments=checkout", Some(&etag)).await.0, StatusCode::NOT_MODIFIED);
        // A wrong token is no reason to refuse the poll either.
        let (status, _, _) =
            send(&router, "GET", "/v1/config?deployments=checkout", &[("authorization", "not-a-token")], "").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn if_none_match_lists_are_compared_weakly() {
        let tag = "abc";
        for holds in ["\"abc\"", "W/\"abc\"", "\"x\", \"abc\"", "\"x\",W/\"abc\"", " * ", "\"a,b\", \"abc\""] {
            assert!(list_holds(holds, tag), "{holds}");
        }
        for misses in ["\"abcd\"", "abc", "\"ab\"", "W/abc", "\"x\" junk \"abc\"", "*, \"x\"", "\"abc", ""] {
            assert!(!list_holds(misses, tag), "{misses}");
        }
    }

    /// The engine gives every share or state change a new generation; the tag does not
    /// lean on that, so a config restored or edited without one still changes it.
    #[test]
    fn each_served_field_alone_changes_the_revision_and_others_deployments_do_not() {
        use canary_core::RolloutPhase;
        let config =
            |generation, share_bp, state| RolloutConfig { deployment: "checkout".into(), generation, share_bp, state };
        let served = |checkout: Option<RolloutConfig>, search_share: u32| {
            let mut configs = BTreeMap::new();
            if let Some(checkout) = checkout {
                configs.insert("checkout".to_string(), checkout);
            }
            let search = RolloutConfig { deployment: "search".into(), ..config(1, search_share, RolloutPhase::Paused) };
            configs.insert("search".to_string(), search);
            revision(&configs, &["checkout", "orders"])
        };
        let base = served(Some(config(4, 500, RolloutPhase::Progressing)), 100);
        assert_eq!(base, served(Some(config(4, 500, RolloutPhase::Progressing)), 9_000), "search was not asked for");
        for (what, changed) in [
            ("generation", served(Some(config(5, 500, RolloutPhase::Progressing)), 100)),
            ("share", served(Some(config(4, 501, RolloutPhase::Progressing)), 100)),
            ("state", served(Some(config(4, 500, RolloutPhase::Paused)), 100)),
            ("unknown", served(None, 100)),
        ] {
            assert_ne!(changed, base, "{what}");
        }
        let mut configs = BTreeMap::new();
        configs.insert("checkout".to_string(), config(4, 500, RolloutPhase::Progressing));
        assert_ne!(revision(&configs, &["checkout"]), revision(&configs, &["checkout", "orders"]), "the list itself");
    }

    #[test]
    fn the_entity_tag_is_the_revision_in_quotes() {
        let tag = EntityTag::of(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(tag.opaque(), "0123456789abcdef0011223344556677");
        assert_eq!(tag.quoted(), b"\"0123456789abcdef0011223344556677\"");
    }
}
