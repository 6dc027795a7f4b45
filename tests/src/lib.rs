//! Test harness: processes and servers for the end-to-end tests.
