//! The layercache example service: an axum service over SQLite or PostgreSQL with the two-tier
//! cache in front of it, what every caching guide shows beside a cache — a Redis rate limiter,
//! sessions in the cache, health, statistics and Prometheus metrics — and graceful shutdown.
//!
//! Run it with `cargo run -p layercache-example-service` (see its README): with no environment
//! at all it starts a private `redis-server` and a SQLite file in a temporary directory.
//!
//! # Routes
//!
//! | route | what it does |
//! |---|---|
//! | `GET /products/{id}` | a product through `get_or_load` (404 JSON when absent; the absence is cached briefly and replaced on create) |
//! | `GET /products?category=&page=` | a page of 20, cached per query, tagged `lists:all` or `lists:category:<c>` |
//! | `POST /products`, `PUT /products/{id}`, `DELETE /products/{id}` | the database first, then the item written through and the lists it was or is in invalidated by tag |
//! | `POST /login`, `GET /me`, `POST /logout` | sessions in `TieredSessionStore`, 24 h sliding expiry |
//! | `GET /health` | database, Redis `PING`, each cache's circuit: `ok`, `degraded` (200) or `down` (503) |
//! | `GET /cache/stats` | the caches' counters, the database's query counts, the rate limiter's |
//! | `GET /metrics` | Prometheus text |
//!
//! `/products*` and `/me` are rate limited per client (`x-api-key`, else the IP address). A bad
//! request gets a 4xx with `{"error": "..."}` and never reaches the cache.
//!
//! # In a test
//!
//! ```no_run
//! use layercache_example_service::{CacheMode, Config, Service};
//!
//! # async fn run() -> Result<(), layercache_example_service::Error> {
//! let mut config = Config::ephemeral(); // port 0
//! config.redis_url = Some("redis://127.0.0.1:6380/".to_owned());
//! config.cache_mode = CacheMode::RedisOnly;
//! let running = Service::start(config).await?;
//! let base = running.url(); // http://127.0.0.1:<port>
//! # let _ = base;
//! println!("{:?}", running.db_stats());
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

mod api;
mod catalog;
mod config;
mod db;
mod error;
mod ops;
mod service;

pub use api::{BODY_LIMIT, MAX_PAGE, SESSION_COOKIE};
pub use config::{
    CacheMode, Config, DEFAULT_L2_TIMEOUT, DEFAULT_LISTEN, DEFAULT_RATE_LIMIT_PER_SECOND,
    DEFAULT_SEED_PRODUCTS, DEFAULT_SESSION_TTL, DEFAULT_WARM_UP, DatabaseKind, RateLimitConfig,
};
pub use db::{DEMO_USER, DbStats, NewProduct, PAGE_SIZE, Product, ProductPage};
pub use error::Error;
pub use ops::prometheus_builder;
pub use service::{RunningService, Service};

/// The rate limiter's settings, re-exported for [`RateLimitConfig`].
pub use layercache_tower::rate_limit::{Algorithm, OnRedisError, RateLimitStats};
