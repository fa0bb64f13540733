//! Integration tests of layercache-tower against real `redis-server` processes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod session;

mod rate_limit;
