//! Integration tests of the stampede building blocks: single-flight, the distributed lock (against
//! real `redis-server`s) and XFetch early expiry. How `TieredCache` composes them is tested in
//! `layercache-tiered`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod early;
mod lock;
mod single_flight;
