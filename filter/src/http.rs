//! Per-request work: decide the cohort, set the routing header (replacing any
//! value the client sent), add the sticky cookie, count the request in `on_log`.
//!
//! Host calls per request: the header reads the decision needs (usually one),
//! one header write, and in `on_log` two property reads plus two metric updates.

use crate::runtime::Runtime;
use canary_core::Cohort;
use canary_core::cohort::{ROUTE_CANARY, ROUTE_STABLE};
use canary_core::decision::{RequestView, decide};
use canary_core::metrics::StatusClass;
use canary_core::user_id::sticky_id_from_bytes;
use proxy_wasm::hostcalls::{increment_metric, record_metric};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct CanaryHttp {
    runtime: Rc<Runtime>,
    cohort: Option<Cohort>,
    set_cookie: Option<String>,
}

impl CanaryHttp {
    pub fn new(runtime: Rc<Runtime>) -> Self {
        Self { runtime, cohort: None, set_cookie: None }
    }
}

/// Request headers, read through the host.
struct HostHeaders<'a>(&'a CanaryHttp);

impl RequestView for HostHeaders<'_> {
    fn header(&mut self, name: &str) -> Option<String> {
        self.0.get_http_request_header(name)
    }
}

/// 16 bytes from WASI `random_get`; `None` if the host cannot provide them.
fn new_sticky_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(sticky_id_from_bytes(bytes))
}

/// Property values are little-endian 8-byte integers (`response.code`, `request.duration` in ns).
fn u64_property(bytes: Option<Vec<u8>>) -> Option<u64> {
    bytes.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map(u64::from_le_bytes)
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
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(cookie) = self.set_cookie.take() {
            self.add_http_response_header("set-cookie", &cookie);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(cohort) = self.cohort else { return };
        let code = u64_property(self.get_property(vec!["response", "code"])).unwrap_or(0);
        let class = StatusClass::classify(u32::try_from(code).unwrap_or(0), || {
            self.get_property(vec!["response", "code_details"]).and_then(|b| String::from_utf8(b).ok())
        });
        let metrics = &self.runtime.metrics;
        if let Some(id) = metrics.requests(cohort, class) {
            let _ = increment_metric(id, 1);
        }
        if let (Some(id), Some(ns)) =
            (metrics.latency(cohort), u64_property(self.get_property(vec!["request", "duration"])))
        {
            let _ = record_metric(id, ns / 1_000);
        }
    }
}
