//! The proxy-wasm glue of the wasm canary filter: a thin layer over `canary-core`.
//!
//! - [`root`]: configuration, metric definitions, the per-VM tick that elects one
//!   poller per Envoy and reads the share every VM routes with.
//! - [`http`]: the per-request decision, the routing header, the sticky cookie,
//!   and per-cohort counting in `on_log`.
//! - [`runtime`]: what one VM's root context shares with its HTTP contexts.
//!
//! `set_log_level` also installs the SDK's panic hook, which logs the panic at
//! critical level before the VM aborts; Envoy's `failure_policy` then applies.

mod http;
mod root;
mod runtime;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::CanaryRoot::default()));
}}
