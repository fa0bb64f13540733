//! layercache for HTTP services built on tower: what a service puts beside its cache.
//!
//! - [`session`]: a `tower_sessions::SessionStore` over the two-tier cache.

pub mod session;
