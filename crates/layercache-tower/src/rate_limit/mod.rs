//! A rate limiter as a tower `Layer`, backed by Redis.
//!
//! Each request costs one atomic round trip: an `EVALSHA` of the algorithm's Lua script (loaded
//! again when the server answers `NOSCRIPT`) on one key, `<prefix><algorithm>:<key>`,
//! so it works on Redis Cluster without `CROSSSLOT`. Time is the server's (`TIME` inside the
//! script, or the key's TTL), so every instance agrees.
//!
//! ```no_run
//! use std::time::Duration;
//! use http::{Request, Response};
//! use layercache_tower::rate_limit::{Algorithm, RateLimiter};
//! use tower::{Layer, Service};
//!
//! # async fn demo() -> layercache_core::Result<()> {
//! // 100 requests per second per API key; requests without a key are not limited.
//! let limiter = RateLimiter::builder(Algorithm::Gcra, 100, Duration::from_secs(1))
//!     .key_prefix("app:ratelimit:")
//!     .connect("redis://127.0.0.1:6379")
//!     .await?;
//! let layer = limiter.layer(|req: &Request<String>| {
//!     let key = req.headers().get("x-api-key")?.to_str().ok()?;
//!     Some(key.to_owned())
//! });
//! let service = layer.layer(tower::service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//! }));
//! # let _ = service; Ok(()) }
//! ```
//!
//! # Algorithms and their bounds
//!
//! - [`Algorithm::FixedWindow`]: `INCR` + `PEXPIRE`. Exact: at most `limit` requests per window.
//!   A window starts at a key's first request and ends when Redis expires the counter. Across a
//!   window boundary a client can get up to `2 × limit` within one window's length.
//! - [`Algorithm::SlidingWindow`]: the weighted two-window counter, one hash per key. It admits a
//!   request while `previous × (time left in the window) / window + current + 1 <= limit`
//!   (windows aligned on the server's clock). At most `limit` per aligned window; a burst of
//!   length `d` from an idle key admits at most `limit + ⌈limit × d / window⌉`; in the worst case
//!   (the previous window's requests all at its end) a span of one window can see up to
//!   `2 × limit`, but traffic spread over the previous window is limited almost exactly.
//! - [`Algorithm::Gcra`]: the generic cell rate algorithm (a token bucket in one key holding the
//!   theoretical arrival time). A burst of at most `limit`, then one request per emission
//!   interval `window / limit` (rounded down to the microsecond): over any span `d`, at most
//!   `limit + ⌊d / interval⌋ + 1` requests.
//!
//! # Headers
//!
//! Allowed responses carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! (seconds, rounded up); denied requests get `429 Too Many Requests` with the same headers and
//! `Retry-After` (seconds, rounded up, at least 1), and never reach the inner service.
//!
//! # When Redis is down or slow
//!
//! Every Redis call is bounded by [`timeout`](RateLimiterBuilder::timeout) (default
//! [`DEFAULT_TIMEOUT`], 50 ms): no request waits longer for the limiter. After a failure the
//! limiter decides without Redis for [`retry_redis_after`](RateLimiterBuilder::retry_redis_after)
//! (default 1 s), then tries Redis again. What it decides is [`OnRedisError`]:
//! [`Local`](OnRedisError::Local) (the default: fail open, bounded by an in-process fixed window
//! per key), [`Allow`](OnRedisError::Allow) (fail open, unlimited) or [`Deny`](OnRedisError::Deny)
//! (fail closed with `503 Service Unavailable`). Every such decision counts in
//! [`RateLimitStats::fallback_decisions`], every failed call in [`RateLimitStats::redis_errors`].
//!
//! # Permissions
//!
//! A restricted Redis user needs `EVALSHA` and `SCRIPT LOAD` on `~<prefix>*`, and what the
//! scripts call: `INCR`, `PTTL`, `PEXPIRE`, `HMGET`, `HSET`, `GET`, `SET` (in `@read`/`@write`)
//! and `TIME` (sliding window and GCRA; in neither category: grant `+time`). See
//! `docs/redis-permissions.md`.

mod fallback;
mod layer;
mod scripts;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use layercache_core::{Error, Result};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;

use fallback::LocalLimiter;
pub use layer::{RateLimitLayer, RateLimitService, ResponseFuture};
use scripts::Invocation;

/// The key prefix of every limiter key unless [`RateLimiterBuilder::key_prefix`] says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "layercache:ratelimit:";
/// How long one Redis call may take before the limiter decides without it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// How long connecting may take at [`RateLimiterBuilder::connect`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the limiter decides without Redis after a failed call before it tries Redis again.
pub const DEFAULT_RETRY_REDIS_AFTER: Duration = Duration::from_secs(1);
/// How many keys the in-process fallback limiter tracks at most.
pub const DEFAULT_FALLBACK_MAX_KEYS: usize = 10_000;

/// The longest window accepted: a year keeps every script's arithmetic exact.
const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// How requests are counted. See the [module docs](self) for each algorithm's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// `limit` requests per window, counted by `INCR` on a key that expires with the window.
    FixedWindow,
    /// A weighted count of the current and the previous window.
    SlidingWindow,
    /// The generic cell rate algorithm: a burst of `limit`, then an even `limit` per window.
    Gcra,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed",
            Algorithm::SlidingWindow => "sliding",
            Algorithm::Gcra => "gcra",
        }
    }

    /// The algorithm's Lua script, the one [`RateLimiter::script`] hands out.
    fn script(self) -> &'static Script {
        match self {
            Algorithm::FixedWindow => &scripts::FIXED_WINDOW,
            Algorithm::SlidingWindow => &scripts::SLIDING_WINDOW,
            Algorithm::Gcra => &scripts::GCRA,
        }
    }
}

/// What the limiter decides while Redis cannot answer (an error or a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OnRedisError {
    /// Fail open, bounded: an in-process fixed window per key with the same limit and window
    /// decides (per instance, so `n` instances admit up to `n × limit`). The default.
    #[default]
    Local,
    /// Fail open: every request is allowed (and counted in `fallback_decisions`); no
    /// `RateLimit-*` headers, since no count is known.
    Allow,
    /// Fail closed: every request is refused with `503 Service Unavailable` and `Retry-After`
    /// (not 429: the client did not exceed its limit, the limiter could not tell).
    Deny,
}

/// Who made a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecisionSource {
    /// Redis, shared by every instance.
    Redis,
    /// The in-process fallback limiter ([`OnRedisError::Local`]).
    Local,
    /// Nobody: Redis failed and [`OnRedisError::Allow`] or [`OnRedisError::Deny`] applied.
    Unavailable,
}

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The configured limit.
    pub limit: u64,
    /// Requests left before the limit (0 when denied).
    pub remaining: u64,
    /// Time until the quota is back in full (fixed window: the window's end).
    pub reset: Duration,
    /// When denied: how long to wait before a request can be admitted.
    pub retry_after: Option<Duration>,
    /// Who decided.
    pub source: DecisionSource,
}

/// The limiter's counters, since it was built (shared by every clone and layer of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Requests allowed (by Redis or a fallback).
    pub allowed: u64,
    /// Requests refused (429 over the limit, or 503 when failing closed).
    pub denied: u64,
    /// Redis calls that failed or timed out.
    pub redis_errors: u64,
    /// Decisions made without Redis (the fallback limiter, fail open or fail closed).
    pub fallback_decisions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    denied: AtomicU64,
    redis_errors: AtomicU64,
    fallback_decisions: AtomicU64,
}

/// How the script reaches Redis.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn eval(
        &self,
        invocation: &Invocation,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Single(manager) => invocation.run(&mut manager.clone(), cmd).await,
            Conn::Cluster(cluster) => invocation.run(&mut cluster.clone(), cmd).await,
        }
    }
}

/// Builds a [`RateLimiter`]; every setting has a documented default and is checked at
/// [`connect`](Self::connect).
#[derive(Debug, Clone)]
pub struct RateLimiterBuilder {
    algorithm: Algorithm,
    limit: u64,
    window: Duration,
    key_prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    on_redis_error: OnRedisError,
    retry_redis_after: Duration,
    fallback_max_keys: usize,
}

impl RateLimiterBuilder {
    /// The prefix of every key (default [`DEFAULT_KEY_PREFIX`]); a key is
    /// `<prefix><algorithm>:<key>`, with the algorithm `fixed`, `sliding` or `gcra`. Give
    /// limiters with different limits different prefixes (or keys).
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The bound of each Redis call (default [`DEFAULT_TIMEOUT`]); must not be zero.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bound of connecting at [`connect`](Self::connect) (default [`DEFAULT_CONNECT_TIMEOUT`]).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// What to decide while Redis cannot answer (default [`OnRedisError::Local`]).
    #[must_use]
    pub fn on_redis_error(mut self, on_error: OnRedisError) -> Self {
        self.on_redis_error = on_error;
        self
    }

    /// How long to decide without Redis after a failed call (default
    /// [`DEFAULT_RETRY_REDIS_AFTER`]); zero tries Redis on every request.
    #[must_use]
    pub fn retry_redis_after(mut self, after: Duration) -> Self {
        self.retry_redis_after = after;
        self
    }

    /// How many keys the in-process fallback limiter tracks at most (default
    /// [`DEFAULT_FALLBACK_MAX_KEYS`]); must not be zero.
    #[must_use]
    pub fn fallback_max_keys(mut self, max_keys: usize) -> Self {
        self.fallback_max_keys = max_keys;
        self
    }

    /// Checks every setting: a `Config` error names the first that is wrong.
    pub fn check(&self) -> Result<()> {
        if self.limit == 0 {
            return Err(Error::config("rate limit: the limit must be at least 1"));
        }
        if self.limit > u64::from(u32::MAX) {
            return Err(Error::config(
                "rate limit: the limit must be at most 4294967295",
            ));
        }
        if self.window < Duration::from_millis(1) {
            return Err(Error::config(
                "rate limit: the window must be at least 1 ms",
            ));
        }
        if self.window > MAX_WINDOW {
            return Err(Error::config(
                "rate limit: the window must be at most 366 days",
            ));
        }
        if self.algorithm == Algorithm::Gcra && self.emission_interval_us() == 0 {
            return Err(Error::config(
                "rate limit: GCRA needs at least 1 µs per request (window / limit)",
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("rate limit: the timeout must not be zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config(
                "rate limit: the connect timeout must not be zero",
            ));
        }
        if self.fallback_max_keys == 0 {
            return Err(Error::config(
                "rate limit: the fallback limiter needs room for at least 1 key",
            ));
        }
        Ok(())
    }

    fn emission_interval_us(&self) -> u64 {
        let window_us = u64::try_from(self.window.as_micros()).unwrap_or(u64::MAX);
        window_us / self.limit.max(1)
    }

    /// Checks the settings and connects to one Redis server (a `ConnectionManager`, which
    /// reconnects by itself). Fails with `Config` for a bad setting or URL, `Unavailable` or
    /// `Timeout` when Redis cannot be reached.
    pub async fn connect(self, url: &str) -> Result<RateLimiter> {
        self.check()?;
        let client = redis::Client::open(url)
            .map_err(|e| Error::config("rate limit: invalid redis url").with_source(e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let connecting = ConnectionManager::new_with_config(client, config);
        let manager = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| Error::timeout("rate limit: connecting to redis timed out"))?
            .map_err(|e| {
                Error::unavailable("rate limit: cannot connect to redis").with_source(e)
            })?;
        Ok(self.finish(Conn::Single(manager)))
    }

    /// Checks the settings and connects to a Redis Cluster through any of its nodes.
    pub async fn connect_cluster(self, nodes: &[String]) -> Result<RateLimiter> {
        self.check()?;
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.timeout)
            .build()
            .map_err(|e| Error::config("rate limit: invalid cluster nodes").with_source(e))?;
        let cluster = tokio::time::timeout(self.connect_timeout, client.get_async_connection())
            .await
            .map_err(|_| Error::timeout("rate limit: connecting to the cluster timed out"))?
            .map_err(|e| {
                Error::unavailable("rate limit: cannot connect to the cluster").with_source(e)
            })?;
        Ok(self.finish(Conn::Cluster(cluster)))
    }

    fn finish(self, conn: Conn) -> RateLimiter {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let second_arg = match self.algorithm {
            Algorithm::Gcra => self.emission_interval_us(),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => window_ms,
        };
        let key_prefix = format!("{}{}:", self.key_prefix, self.algorithm.name());
        RateLimiter {
            inner: Arc::new(Inner {
                fallback: LocalLimiter::new(self.limit, self.window, self.fallback_max_keys),
                invocation: Invocation::new(
                    self.algorithm.script(),
                    key_prefix,
                    self.limit,
                    second_arg,
                ),
                second_arg,
                limit_header: layer::number(self.limit),
                conn,
                counters: Counters::default(),
                started: Instant::now(),
                redis_after_ms: AtomicU64::new(0),
                settings: self,
            }),
        }
    }
}

/// A rate limiter on Redis: cheap to clone (one reference count), shared by every layer made
/// from it. Build it with [`RateLimiter::builder`]; put it in front of a service with
/// [`RateLimiter::layer`], or ask it directly with [`RateLimiter::check`].
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RateLimiterBuilder,
    /// The script, the key prefix and the arguments, formatted once.
    invocation: Invocation,
    /// The script's second argument: the window (ms), or GCRA's emission interval (µs).
    second_arg: u64,
    /// `RateLimit-Limit`, the same on every response: cloned, not formatted, per response.
    limit_header: HeaderValue,
    conn: Conn,
    fallback: LocalLimiter,
    counters: Counters,
    started: Instant,
    /// Milliseconds after `started` before which Redis is not asked (after a failure).
    redis_after_ms: AtomicU64,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cluster = matches!(self.inner.conn, Conn::Cluster(_));
        f.debug_struct("RateLimiter")
            .field("settings", &self.inner.settings)
            .field("cluster", &cluster)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A builder of a limiter admitting `limit` requests per `window` per key with `algorithm`.
    /// Defaults: key prefix [`DEFAULT_KEY_PREFIX`], timeout [`DEFAULT_TIMEOUT`], connect timeout
    /// [`DEFAULT_CONNECT_TIMEOUT`], [`OnRedisError::Local`], retry Redis after
    /// [`DEFAULT_RETRY_REDIS_AFTER`], [`DEFAULT_FALLBACK_MAX_KEYS`] fallback keys.
    pub fn builder(algorithm: Algorithm, limit: u64, window: Duration) -> RateLimiterBuilder {
        RateLimiterBuilder {
            algorithm,
            limit,
            window,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            on_redis_error: OnRedisError::Local,
            retry_redis_after: DEFAULT_RETRY_REDIS_AFTER,
            fallback_max_keys: DEFAULT_FALLBACK_MAX_KEYS,
        }
    }

    /// A layer limiting the requests `key` maps to a key; `None` leaves a request unlimited.
    pub fn layer<F>(&self, key: F) -> RateLimitLayer<F> {
        RateLimitLayer::new(self.clone(), key)
    }

    /// The algorithm's Lua script, for callers that run it themselves (the benchmark's
    /// baseline): `KEYS[1]` the full key, `ARGV` see [`script_args`](Self::script_args).
    pub fn script(&self) -> &'static Script {
        self.inner.settings.algorithm.script()
    }

    /// The script's full key for `key` and its two arguments (the limit, and the window in ms or
    /// GCRA's emission interval in µs).
    pub fn script_args(&self, key: &str) -> (String, u64, u64) {
        (
            self.full_key(key),
            self.inner.settings.limit,
            self.inner.second_arg,
        )
    }

    fn full_key(&self, key: &str) -> String {
        let prefix = self.inner.invocation.key_prefix();
        let mut full = String::with_capacity(prefix.len() + key.len());
        full.push_str(prefix);
        full.push_str(key);
        full
    }

    /// The `RateLimit-Limit` header value.
    fn limit_header(&self) -> &HeaderValue {
        &self.inner.limit_header
    }

    /// Counts one request of `key` and decides. Never fails and never waits longer than the
    /// timeout: when Redis cannot answer, [`OnRedisError`] decides.
    pub async fn check(&self, key: &str) -> Decision {
        let inner = &*self.inner;
        let decision = if self.redis_skipped() {
            self.fallback(key)
        } else {
            match self.ask_redis(key).await {
                Ok(decision) => decision,
                Err(error) => {
                    inner.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                    self.skip_redis(&error);
                    self.fallback(key)
                }
            }
        };
        let counter = if decision.allowed {
            &inner.counters.allowed
        } else {
            &inner.counters.denied
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decision
    }

    async fn ask_redis(&self, key: &str) -> Result<Decision> {
        let inner = &*self.inner;
        let cmd = inner
            .invocation
            .command(key)
            .map_err(|e| Error::codec("rate limit: cannot write the command").with_source(e))?;
        // Our own bound, not redis-rs's response timeout: that one covers the round trip only,
        // while a `ConnectionManager` that is reconnecting keeps a request waiting before it.
        let eval = inner.conn.eval(&inner.invocation, &cmd);
        let answer = tokio::time::timeout(inner.settings.timeout, eval)
            .await
            .map_err(|_| Error::timeout("rate limit: redis did not answer in time"))?
            .map_err(|e| Error::unavailable("rate limit: redis call failed").with_source(e))?;
        let Some([allowed, remaining, reset_ms, retry_ms]) = scripts::answer(&answer) else {
            return Err(Error::codec("rate limit: unexpected script answer"));
        };
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        let allowed = allowed == 1;
        Ok(Decision {
            allowed,
            limit: inner.settings.limit,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: ms(reset_ms),
            retry_after: (!allowed).then(|| ms(retry_ms)),
            source: DecisionSource::Redis,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn redis_skipped(&self) -> bool {
        // Zero until the first failure: a healthy limiter never reads the clock.
        let until = self.inner.redis_after_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    fn skip_redis(&self, error: &Error) {
        let retry = &self.inner.settings.retry_redis_after;
        if retry.is_zero() {
            tracing::debug!(%error, "rate limit: redis failed; deciding without it");
            return;
        }
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(retry.as_millis()).unwrap_or(u64::MAX));
        self.inner.redis_after_ms.store(until, Ordering::Relaxed);
        tracing::warn!(%error, ?retry, "rate limit: redis failed; deciding without it for a while");
    }

    fn fallback(&self, key: &str) -> Decision {
        let inner = &*self.inner;
        inner
            .counters
            .fallback_decisions
            .fetch_add(1, Ordering::Relaxed);
        let limit = inner.settings.limit;
        match inner.settings.on_redis_error {
            OnRedisError::Local => {
                let local = inner.fallback.check(key, Instant::now());
                Decision {
                    allowed: local.allowed,
                    limit,
                    remaining: local.remaining,
                    reset: local.reset,
                    retry_after: (!local.allowed).then_some(local.reset),
                    source: DecisionSource::Local,
                }
            }
            OnRedisError::Allow | OnRedisError::Deny => {
                let allowed = inner.settings.on_redis_error == OnRedisError::Allow;
                let retry = inner.settings.retry_redis_after;
                Decision {
                    allowed,
                    limit,
                    remaining: 0,
                    reset: retry,
                    retry_after: (!allowed).then_some(retry),
                    source: DecisionSource::Unavailable,
                }
            }
        }
    }

    /// The counters since the limiter was built.
    pub fn stats(&self) -> RateLimitStats {
        let c = &self.inner.counters;
        RateLimitStats {
            allowed: c.allowed.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            redis_errors: c.redis_errors.load(Ordering::Relaxed),
            fallback_decisions: c.fallback_decisions.load(Ordering::Relaxed),
        }
    }
}
