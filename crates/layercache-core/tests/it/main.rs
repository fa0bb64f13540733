//! layercache-core's integration tests: one binary, a module per concern.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod envelope_doc;
mod properties;
