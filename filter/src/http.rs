//! Per-request work: decide the cohort, set the routing header (replacing any
//! value the client sent), add the sticky cookie, count the request and its
//! outcomes in `on_log`.
//!
//! Host calls per request: the header reads the decision needs (usually one), one
//! header write and a clock read; one header read for `:status`; in `on_log` a clock
//! read and two metric updates. `get_property` is avoided on the common path: in
//! `make bench` one call costs 2.3-2.4 µs, more than a header or clock read, so the
//! status comes from the response headers and the duration from two clock reads;
//! `response.code_details` is read only for 5xx, to tell resets from answers. The
//! exception is cookies: every `cookie` line in one property read (~2 500 Envoy
//! instructions more than a header read, which sees the first line only).
//!
//! Outcome rules add host calls only when configured: one read each of `:path` and
//! `:method` if a rule restricts by them; per response, one read per distinct header
//! that a rule applying to the request uses; in `on_log`, per applying rule, one
//! counter increment and one more if it matched.

use crate::runtime::Runtime;
use canary_core::Cohort;
use canary_core::cohort::{ROUTE_CANARY, ROUTE_STABLE};
use canary_core::decision::{RequestView, decide};
use canary_core::metrics::{StatusClass, status_code};
use canary_core::outcome::RuleSet;
use canary_core::user_id::sticky_id_from_bytes;
use proxy_wasm::hostcalls::{get_property, increment_metric, record_metric};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use std::time::SystemTime;

pub struct CanaryHttp {
    runtime: Rc<Runtime>,
    cohort: Option<Cohort>,
    set_cookie: Option<String>,
    /// When the filter saw the request headers.
    started: Option<SystemTime>,
    /// The `:status` of the response headers, if any were sent.
    status: Option<u32>,
    /// The outcome rules that apply to this request (their denominators).
    outcomes_applicable: RuleSet,
    /// Those among them that the response matched (their numerators).
    outcomes_matched: RuleSet,
}

impl CanaryHttp {
    pub fn new(runtime: Rc<Runtime>) -> Self {
        Self {
            runtime,
            cohort: None,
            set_cookie: None,
            started: None,
            status: None,
            outcomes_applicable: RuleSet::EMPTY,
            outcomes_matched: RuleSet::EMPTY,
        }
    }
}

/// Request headers, read through the host as bytes: the SDK's `String` readers
/// unwrap `String::from_utf8` and would abort the VM on a client's obs-text byte.
struct HostHeaders<'a>(&'a CanaryHttp);

impl RequestView for HostHeaders<'_> {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.0.get_http_request_header_bytes(name)
    }

    /// Every `cookie` line in one host call: Envoy's `request.headers` property joins a
    /// repeated header with `,` (the first line alone would miss an HTTP/1.1 client's
    /// second line; the whole header map costs more than the rest of the filter, `make
    /// bench`). The SDK's `get_property` would abort the VM on a host failure: read
    /// through the hostcall.
    fn all_cookie_lines(&mut self) -> Option<Vec<u8>> {
        get_property(vec!["request", "headers", "cookie"]).ok().flatten()
    }
}

/// 16 bytes from WASI `random_get`; `None` if the host cannot provide them.
fn new_sticky_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(sticky_id_from_bytes(bytes))
}

impl Context for CanaryHttp {}

impl HttpContext for CanaryHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let runtime = Rc::clone(&self.runtime);
        let decision = decide(&runtime.config, runtime.share.get(), &mut HostHeaders(self), new_sticky_id);
        let route = if decision.cohort.routes_to_canary() { ROUTE_CANARY } else { ROUTE_STABLE };
        // Replace, not add: a client-supplied value is dropped, so only this filter routes.
        self.set_http_request_header(&runtime.config.routing_header, Some(route));
        self.cohort = Some(decision.cohort);
        self.set_cookie = decision.set_cookie;
        // Reads `:path` / `:method` only if a rule restricts by them; no rules, no reads.
        self.outcomes_applicable = runtime.config.outcomes.applicable(
            || self.get_http_request_header_bytes(":path"),
            || self.get_http_request_header_bytes(":method"),
        );
        self.started = Some(self.get_current_time());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // Local replies (e.g. Envoy's 503 for an upstream reset) pass here too.
        // Bytes, not a `String`: no UTF-8 check, no `str::parse`.
        self.status = self.get_http_response_header_bytes(":status").and_then(|s| status_code(&s));
        if !self.outcomes_applicable.is_empty() {
            // Each header an applying rule uses, read once; only the verdict is kept.
            let outcomes = &self.runtime.config.outcomes;
            let matched = outcomes
                .matched(self.outcomes_applicable, self.status, |name| self.get_http_response_header_bytes(name));
            self.outcomes_matched = matched;
        }
        if let Some(cookie) = self.set_cookie.take() {
            self.add_http_response_header("set-cookie", &cookie);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(cohort) = self.cohort else { return };
        // No response headers: the stream ended before any response (a reset).
        // Through the hostcall: the SDK's `get_property` unwraps a serialization or internal
        // failure of the host, which would abort the VM; here it is no detail.
        let class = StatusClass::classify(self.status.unwrap_or(0), || {
            get_property(vec!["response", "code_details"]).ok().flatten().and_then(|b| String::from_utf8(b).ok())
        });
        let metrics = &self.runtime.metrics;
        if let Some(id) = metrics.requests(cohort, class) {
            let _ = increment_metric(id, 1);
        }
        // Two wall-clock reads: if the clock stepped back in between, `duration_since`
        // is an error and the sample is skipped (a step forward lengthens this one sample).
        let elapsed = self.started.and_then(|start| self.get_current_time().duration_since(start).ok());
        if let (Some(id), Some(elapsed)) = (metrics.latency(cohort), elapsed) {
            // In u64: `as_micros()` is a u128, whose division is a library call in wasm32.
            let micros = elapsed.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(elapsed.subsec_micros()));
            let _ = record_metric(id, micros);
        }
        for rule in self.outcomes_applicable.iter() {
            if let Some(ids) = metrics.outcome(rule, cohort) {
                let _ = increment_metric(ids.requests, 1);
                if self.outcomes_matched.contains(rule) {
                    let _ = increment_metric(ids.events, 1);
                }
            }
        }
    }
}
