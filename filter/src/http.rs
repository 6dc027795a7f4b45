//! Per-request work: find the request's deployment (list form: by `:authority` and,
//! if needed, `:path`; a request of no deployment is left untouched and uncounted),
//! decide the cohort, set the routing header (replacing any value the client sent)
//! and ask the host to re-pick the route, add the sticky cookie, count the request and
//! its outcomes in `on_log` (a gRPC deployment's by `grpc-status`).
//!
//! Host calls per request: in the list form one read of `:authority` (and of `:path`
//! where a host has path prefixes); the header reads the decision needs (usually
//! one), one header write, one `clear_route_cache` call and a clock read; one header read for `:status`; in `on_log` a clock
//! read and two metric updates. `get_property` is avoided on the common path: in
//! `make bench` one call costs 2.3-2.4 µs, more than a header or clock read, so the
//! status comes from the response headers and the duration from two clock reads;
//! `response.code_details` is read only for 5xx, to tell resets from answers. The
//! exception is cookies: every `cookie` line in one property read (~2 500 Envoy
//! instructions more than a header read, which sees the first line only).
//!
//! A routing-only deployment (`"metrics": "none"`) stops after the header write and
//! the route-cache call: no clock, `:status` or metric call (`make bench`'s
//! `routing-only` part measures it against the no-op filter).
//!
//! Outcome rules add host calls only when configured: one read each of `:path` and
//! `:method` if a rule restricts by them; per response, one read per distinct header
//! that a rule applying to the request uses; in `on_log`, per applying rule, one
//! counter increment and one more if it matched.

use crate::runtime::{RouteCacheClearing, Runtime};
use canary_core::cohort::{ROUTE_CANARY, ROUTE_STABLE};
use canary_core::decision::{RequestView, decide};
use canary_core::grpc::grpc_status_class;
use canary_core::metrics::{StatusClass, status_code};
use canary_core::outcome::RuleSet;
use canary_core::user_id::sticky_id_from_bytes;
use canary_core::{Cohort, Protocol};
use log::info;
use proxy_wasm::hostcalls::{call_foreign_function, get_property, increment_metric, record_metric};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Status};
use std::rc::Rc;
use std::time::SystemTime;

pub struct CanaryHttp {
    runtime: Rc<Runtime>,
    /// The request's deployment (its position) and cohort; `None`: not ours, untouched.
    assigned: Option<(usize, Cohort)>,
    /// Whether the request is counted: false for a routing-only deployment
    /// (`"metrics": "none"`), whose requests cost no read or metric call past routing.
    counted: bool,
    set_cookie: Option<String>,
    /// When the filter saw the request headers.
    started: Option<SystemTime>,
    /// The `:status` of the response headers, if any were sent.
    status: Option<u32>,
    /// A gRPC deployment's call class, from `grpc-status` in the response headers
    /// (trailers-only) or trailers.
    grpc_class: Option<StatusClass>,
    /// The outcome rules that apply to this request (their denominators).
    outcomes_applicable: RuleSet,
    /// Those among them that the response matched (their numerators).
    outcomes_matched: RuleSet,
}

impl CanaryHttp {
    pub fn new(runtime: Rc<Runtime>) -> Self {
        Self {
            runtime,
            assigned: None,
            counted: false,
            set_cookie: None,
            started: None,
            status: None,
            grpc_class: None,
            outcomes_applicable: RuleSet::EMPTY,
            outcomes_matched: RuleSet::EMPTY,
        }
    }

    fn is_grpc(&self) -> bool {
        self.assigned
            .and_then(|(d, _)| self.runtime.config.deployments.get(d))
            .is_some_and(|d| d.protocol == Protocol::Grpc)
    }

    /// Asks the host to re-pick the route after the routing header changed. Envoy 1.33
    /// and later offer `clear_route_cache` and, for newer ABI versions, no longer clear
    /// the cache when Wasm sets a header; older hosts lack the function and clear it
    /// themselves. The first `NotFound` is remembered, so they pay for one call only.
    fn clear_route_cache(&self) {
        let state = &self.runtime.route_cache;
        if state.get() == RouteCacheClearing::Absent {
            return;
        }
        let now = match call_foreign_function("clear_route_cache", None) {
            Ok(_) => RouteCacheClearing::Offered,
            Err(Status::NotFound) => RouteCacheClearing::Absent,
            Err(_) => return,
        };
        if state.replace(now) == RouteCacheClearing::Untried {
            info!(
                "wasm canary: the host's clear_route_cache is {now:?}: routes are re-picked after the cohort header is set"
            );
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
        let found = runtime.config.deployment_for(
            || self.get_http_request_header_bytes(":authority"),
            || self.get_http_request_header_bytes(":path"),
        );
        let (Some(index), Some(deployment), Some(state)) = (
            found,
            found.and_then(|i| runtime.config.deployments.get(i)),
            found.and_then(|i| runtime.deployments.get(i)),
        ) else {
            return Action::Continue; // not a deployment of this filter: untouched
        };
        let decision = decide(deployment, state.share.get(), &mut HostHeaders(self), new_sticky_id);
        let route = if decision.cohort.routes_to_canary() { ROUTE_CANARY } else { ROUTE_STABLE };
        // Replace, not add: a client-supplied value is dropped, so only this filter routes.
        self.set_http_request_header(&deployment.routing_header, Some(route));
        self.clear_route_cache();
        self.assigned = Some((index, decision.cohort));
        self.set_cookie = decision.set_cookie;
        self.counted = deployment.metrics.counts_requests();
        if !self.counted {
            return Action::Continue;
        }
        // Reads `:path` / `:method` only if a rule restricts by them; no rules, no reads.
        self.outcomes_applicable = deployment.outcomes.applicable(
            || self.get_http_request_header_bytes(":path"),
            || self.get_http_request_header_bytes(":method"),
        );
        self.started = Some(self.get_current_time());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some((index, _)) = self.assigned else { return Action::Continue };
        if !self.counted {
            if let Some(cookie) = self.set_cookie.take() {
                self.add_http_response_header("set-cookie", &cookie);
            }
            return Action::Continue;
        }
        // Local replies (e.g. Envoy's 503 for an upstream reset) pass here too.
        // Bytes, not a `String`: no UTF-8 check, no `str::parse`.
        self.status = self.get_http_response_header_bytes(":status").and_then(|s| status_code(&s));
        if self.is_grpc() {
            // A trailers-only response carries `grpc-status` here.
            self.grpc_class = self.get_http_response_header_bytes("grpc-status").map(|v| grpc_status_class(&v));
        }
        if !self.outcomes_applicable.is_empty() {
            // Each header an applying rule uses, read once; only the verdict is kept.
            let runtime = Rc::clone(&self.runtime);
            if let Some(deployment) = runtime.config.deployments.get(index) {
                let matched = deployment
                    .outcomes
                    .matched(self.outcomes_applicable, self.status, |name| self.get_http_response_header_bytes(name));
                self.outcomes_matched = matched;
            }
        }
        if let Some(cookie) = self.set_cookie.take() {
            self.add_http_response_header("set-cookie", &cookie);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        if self.counted && self.grpc_class.is_none() && self.is_grpc() {
            self.grpc_class = self.get_http_response_trailer_bytes("grpc-status").map(|v| grpc_status_class(&v));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some((index, cohort)) = self.assigned else { return };
        if !self.counted {
            return;
        }
        let Some(state) = self.runtime.deployments.get(index) else { return };
        // No response headers: the stream ended before any response (a reset).
        // Through the hostcall: the SDK's `get_property` unwraps a serialization or internal
        // failure of the host, which would abort the VM; here it is no detail.
        let details =
            || get_property(vec!["response", "code_details"]).ok().flatten().and_then(|b| String::from_utf8(b).ok());
        let class = match (self.is_grpc(), self.status, self.grpc_class) {
            // A gRPC answer: its call status decides. Without one (the trailers never
            // came) it failed: a reset if Envoy says so, else a server error.
            (true, Some(200), Some(class)) => class,
            (true, Some(200), None) => StatusClass::classify(500, details),
            _ => StatusClass::classify(self.status.unwrap_or(0), details),
        };
        let metrics = &state.metrics;
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
