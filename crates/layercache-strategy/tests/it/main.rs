//! Integration tests of the strategies, against real Redis and SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod cache_aside;
mod restricted;
mod write_behind;
mod write_through;
