//! End-to-end tests of the example service over real HTTP, against real `redis-server`
//! processes, SQLite files and PostgreSQL servers started by the testkit (never mocked, never
//! skipped). No test waits for time to pass: where another instance must catch up, it polls
//! with a bounded deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod bad_requests;
mod crud;
mod observability;
mod rate_limit;
mod sessions;
mod support;
