//! A proxy-wasm HTTP filter that does nothing but repeat the host calls its plugin
//! configuration names, built like the real filter (same SDK, same release profile).
//!
//! `make bench` loads it twice over: with an empty configuration it is the no-op
//! baseline that separates what any wasm filter costs from what the canary filter
//! adds; with e.g. `read_request_header=10` it measures one kind of host call, so
//! the benchmark can say what costs what instead of guessing.
//!
//! `panic_on_request=1` makes it panic on every request instead: the end-to-end test
//! of the shipped `failure_policy` runs a real VM failure through Envoy with it.
//! `panic_on_header=1` panics only on a request carrying `x-probe-panic`, so a test
//! can kill the VM once and watch what Envoy does with the requests after.
//!
//! Configuration: comma-separated `call=count` pairs; unknown names are refused at
//! load so a typo in the benchmark cannot silently measure nothing.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};

/// How often each host call is repeated per request, in the callback where the
/// canary filter makes it.
#[derive(Clone, Copy, Default)]
struct Calls {
    read_request_header: u32,
    write_request_header: u32,
    read_clock: u32,
    read_response_status: u32,
    increment_counter: u32,
    record_histogram: u32,
    read_code_property: u32,
    read_duration_property: u32,
    panic_on_request: u32,
    panic_on_header: u32,
}

impl Calls {
    /// Names accepted in the plugin configuration; the bench uses the same ones.
    fn parse(text: &str) -> Result<Calls, String> {
        let mut calls = Calls::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, count) = pair.split_once('=').ok_or_else(|| format!("'{pair}': expected call=count"))?;
            let count: u32 = count.parse().map_err(|_| format!("'{pair}': count is not a whole number"))?;
            let slot = match name {
                "read_request_header" => &mut calls.read_request_header,
                "write_request_header" => &mut calls.write_request_header,
                "read_clock" => &mut calls.read_clock,
                "read_response_status" => &mut calls.read_response_status,
                "increment_counter" => &mut calls.increment_counter,
                "record_histogram" => &mut calls.record_histogram,
                "read_code_property" => &mut calls.read_code_property,
                "read_duration_property" => &mut calls.read_duration_property,
                "panic_on_request" => &mut calls.panic_on_request,
                "panic_on_header" => &mut calls.panic_on_header,
                other => return Err(format!("unknown host call '{other}'")),
            };
            *slot = count;
        }
        Ok(calls)
    }
}

#[derive(Clone, Copy, Default)]
struct Probe {
    calls: Calls,
    counter: u32,
    histogram: u32,
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.calls.panic_on_request > 0 {
            panic!("probe filter: panic_on_request is set");
        }
        if self.calls.panic_on_header > 0 && self.get_http_request_header_bytes("x-probe-panic").is_some() {
            panic!("probe filter: x-probe-panic received");
        }
        for _ in 0..self.calls.read_request_header {
            let _ = self.get_http_request_header("x-user-id");
        }
        for _ in 0..self.calls.write_request_header {
            self.set_http_request_header("x-probe", Some("stable"));
        }
        for _ in 0..self.calls.read_clock {
            let _ = self.get_current_time();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for _ in 0..self.calls.read_response_status {
            let _ = self.get_http_response_header(":status");
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        for _ in 0..self.calls.increment_counter {
            let _ = hostcalls::increment_metric(self.counter, 1);
        }
        for _ in 0..self.calls.record_histogram {
            let _ = hostcalls::record_metric(self.histogram, 1_234);
        }
        for _ in 0..self.calls.read_code_property {
            let _ = self.get_property(vec!["response", "code"]);
        }
        for _ in 0..self.calls.read_duration_property {
            let _ = self.get_property(vec!["request", "duration"]);
        }
    }
}

struct ProbeRoot(Probe);

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let calls = match std::str::from_utf8(&bytes).map_err(|e| e.to_string()).and_then(Calls::parse) {
            Ok(calls) => calls,
            Err(why) => {
                let _ = hostcalls::log(proxy_wasm::types::LogLevel::Error, &format!("probe filter: {why}"));
                return false;
            }
        };
        let counter = hostcalls::define_metric(MetricType::Counter, "probe_requests");
        let histogram = hostcalls::define_metric(MetricType::Histogram, "probe_latency_us");
        let (Ok(counter), Ok(histogram)) = (counter, histogram) else { return false };
        self.0 = Probe { calls, counter, histogram };
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.0))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(ProbeRoot(Probe::default())));
}}
