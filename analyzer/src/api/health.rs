//! What the analyzer says about itself: `/healthz` (is it recording decisions, are
//! all rollouts rebuilt), `/livez` (is it serving: what Kubernetes probes) and its
//! own `/metrics`.
//!
//! `/livez` and `/healthz` differ on purpose. While the audit log cannot take
//! writes, a rollback still takes effect and the filters must keep polling its 0 %
//! share, so the analyzer must stay in its Service and must not be restarted (a
//! restart would drop the records that wait for the disk); `/healthz` answers 503
//! for alerts and people instead.

use super::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// Liveness and readiness: `ok` whenever the API answers (the state directory was
/// opened at start, so the filters' config is being served).
pub(super) async fn livez() -> &'static str {
    "ok\n"
}

/// Health for alerts and humans: 503 `unhealthy` while decisions are not being
/// recorded (the latest append failed, or rollbacks in effect wait for their
/// records); else `ok`, or `degraded` (200, with the reasons) when a rollout could
/// not be rebuilt at start: restarting would not fix that.
pub(super) async fn healthz(State(state): State<AppState>) -> Response {
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
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
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
            "Requests refused for a missing or wrong token (401; by reason in canary_analyzer_auth_refusals_total).",
            c.unauthorized.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let recording = u8::from(state.engine.recording_failure().is_none());
    let unrecorded = state.engine.unrecorded_decisions();
    let broken = state.engine.broken_rollouts().len();
    let _ = writeln!(
        out,
        "# HELP canary_analyzer_audit_recording 1 while decisions are appended to the audit log, 0 from a failed \
         append until one succeeds with no decision left unrecorded.\n\
         # TYPE canary_analyzer_audit_recording gauge\ncanary_analyzer_audit_recording {recording}\n\
         # HELP canary_analyzer_unrecorded_decisions Rollbacks in effect whose audit records wait for the log to take \
         writes again.\n\
         # TYPE canary_analyzer_unrecorded_decisions gauge\ncanary_analyzer_unrecorded_decisions {unrecorded}\n\
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
    out.push_str(&state.auth.metrics_text());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use crate::api::app;
    use crate::api::tests::{call, state_in, temp_dir};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn livez_stays_ok_while_healthz_says_decisions_are_not_recorded() {
        let state = state_in(&temp_dir(), Some("t"));
        let app = app(state.clone());
        let (_, metrics) = call(&app, "GET", "/metrics", None, "").await;
        assert!(metrics.contains("\ncanary_analyzer_unrecorded_decisions 0\n"), "{metrics}");
        state.engine.store_health().fail_for_test("an append to audit log x failed (No space left on device)");
        assert_eq!(call(&app, "GET", "/healthz", None, "").await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(call(&app, "GET", "/livez", None, "").await, (StatusCode::OK, "ok\n".to_string()));
    }

    #[tokio::test]
    async fn a_state_file_that_does_not_read_back_leaves_the_rest_served_and_health_degraded() {
        let dir = temp_dir();
        let app = crate::api::app(state_in(&dir, Some("t")));
        for deployment in ["checkout", "search"] {
            let policy = crate::api::tests::POLICY.replace("checkout", deployment);
            assert_eq!(call(&app, "POST", "/v1/rollouts", Some("t"), &policy).await.0, StatusCode::CREATED);
        }
        drop(app);
        let path = dir.join(crate::audit::STATE_DIR).join("checkout.json");
        let text = std::fs::read_to_string(&path).unwrap().replacen("\"spec\": {", "\"spec\": {\"newer_field\": 1,", 1);
        std::fs::write(&path, text).unwrap();
        // Recovered from its audit record: both served, healthy.
        let app = crate::api::app(state_in(&dir, Some("t")));
        assert_eq!(call(&app, "GET", "/healthz", None, "").await, (StatusCode::OK, "ok\n".to_string()));
        assert_eq!(call(&app, "GET", "/v1/rollouts/checkout/config", None, "").await.0, StatusCode::OK);
        drop(app);
        // Again, with the audit log gone (rotated away): checkout cannot be recovered, search still is served.
        let text = std::fs::read_to_string(&path).unwrap().replacen("\"spec\": {", "\"spec\": {\"newer_field\": 1,", 1);
        std::fs::write(&path, text).unwrap();
        std::fs::remove_file(dir.join(crate::audit::AUDIT_FILE)).unwrap();
        let app = crate::api::app(state_in(&dir, Some("t")));
        let (status, body) = call(&app, "GET", "/healthz", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("degraded\nrollout checkout: state file ") && body.contains("newer_field"), "{body}");
        assert_eq!(call(&app, "GET", "/v1/rollouts/search/config", None, "").await.0, StatusCode::OK);
        assert_eq!(call(&app, "GET", "/v1/rollouts/checkout/config", None, "").await.0, StatusCode::NOT_FOUND);
        let (_, metrics) = call(&app, "GET", "/metrics", None, "").await;
        assert!(metrics.contains("\ncanary_analyzer_broken_rollouts 1\n"), "{metrics}");
        // Registering it again serves it and clears the report.
        assert_eq!(
            call(&app, "POST", "/v1/rollouts", Some("t"), crate::api::tests::POLICY).await.0,
            StatusCode::CREATED
        );
        assert_eq!(call(&app, "GET", "/healthz", None, "").await, (StatusCode::OK, "ok\n".to_string()));
    }
}
