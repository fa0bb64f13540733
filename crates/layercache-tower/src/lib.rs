//! layercache for HTTP services built on tower: what a service puts beside its cache.
//!
//! - [`rate_limit`]: a rate limiter as a tower `Layer`, backed by Redis (one atomic round trip per
//!   request), with fixed-window, sliding-window and GCRA algorithms.
//! - [`session`]: a `tower_sessions::SessionStore` over the two-tier cache.

pub mod rate_limit;
pub mod session;
