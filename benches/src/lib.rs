//! Benches crate.
