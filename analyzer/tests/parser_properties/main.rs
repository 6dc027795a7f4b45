//! Property tests of every analyzer parser that reads outside input: the rollout policy
//! (YAML or JSON, from files and `POST /v1/rollouts`), Envoy's Prometheus exposition
//! text, and the override and register bodies through the HTTP API (`app()` +
//! `oneshot`, no sockets). The Prometheus query API's JSON is read by crate-private
//! functions and is tested inside the crate (`src/source/prometheus/api_props.rs`).
//!
//! Each parser must not panic, must refuse bad input with an error naming the field
//! (or line) on one line, and must finish in time proportional to its input. Inputs are
//! generated (structured near-valid documents, arbitrary text) and mutated (byte edits
//! of valid documents). `PROPTEST_CASES` raises every case count locally. Inputs that
//! found bugs are kept as named `#[test]`s (`regression_*`).

// Test code: what clippy.toml allows in `#[cfg(test)]` modules, which a `tests/` crate's
// helper functions are not marked as.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod api;
mod exposition;
mod policy;
// One copy for both crates' property tests (it needs only std, proptest and, on unix, rustix).
#[path = "../../../core/tests/parser_properties/support.rs"]
mod support;
