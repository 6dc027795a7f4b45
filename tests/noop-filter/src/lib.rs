//! A proxy-wasm HTTP filter with an HTTP context and no work, built like the real
//! filter (same SDK, same release profile). `make bench` loads it in the same Envoy
//! setup to separate what any wasm filter costs from what the canary filter adds.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

struct NoopRoot;
struct NoopHttp;

impl Context for NoopRoot {}
impl Context for NoopHttp {}
impl HttpContext for NoopHttp {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopHttp))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(NoopRoot));
}}
