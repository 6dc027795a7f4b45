//! Property tests of every parser in the core that reads outside input: the plugin
//! configuration (operator-written JSON), the analyzer's rollout answer (HTTP body),
//! request cookie headers and user-id sources, and the records other VMs leave in
//! shared data. Each must not panic (on wasm32 a panic is a trap), must refuse bad
//! input with an error that names the field on one line, and must finish in time
//! proportional to its input.
//!
//! Inputs are generated (structured near-valid documents, arbitrary bytes) and
//! mutated (byte edits of valid documents). Case counts are kept small so the suite
//! stays fast in debug builds; `PROPTEST_CASES=10000` raises them all locally.
//! The same binary runs on wasm32-wasip1 under Node (`make test-wasm`), where a panic
//! traps the module. Inputs that found bugs are kept as named `#[test]`s in each module.

// Test code: what clippy.toml allows in `#[cfg(test)]` modules, which a `tests/` crate's
// helper functions are not marked as.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod config;
mod cookies;
mod rollout;
mod shared_data;
mod support;
