//! [`Config`]: what an instance of the service runs with, from the environment or set by a test.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use layercache_tower::rate_limit::{Algorithm, OnRedisError};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Error;

/// The address the binary listens on unless `LISTEN` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// Requests per second per client unless `RATE_LIMIT_PER_SECOND` says otherwise: generous, so
/// that a test or a load run is not throttled unless it asks to be.
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u64 = 1000;
/// How many products are seeded into an empty database.
pub const DEFAULT_SEED_PRODUCTS: usize = 50;
/// How many products are warmed into the cache at start (the first ids).
pub const DEFAULT_WARM_UP: usize = 20;
/// The session inactivity timeout: a session unused for this long ends.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long an L2 (Redis) command of the service's caches may take.
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(250);

/// Which caches sit in front of the database for products and product lists (sessions always
/// use L1 + Redis). The load run compares the three.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheMode {
    /// Every read goes to the database.
    None,
    /// Redis only: no in-process tier, every read is a Redis round trip.
    RedisOnly,
    /// moka in process (L1) over Redis (L2), instances kept coherent by Redis pub/sub.
    #[default]
    Tiered,
}

impl CacheMode {
    /// The mode's name, as `CACHE_MODE` spells it: `none`, `redis` or `tiered`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::RedisOnly => "redis",
            CacheMode::Tiered => "tiered",
        }
    }

    fn parse(text: &str) -> Result<Self, Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(CacheMode::None),
            "redis" | "redis-only" | "l2" => Ok(CacheMode::RedisOnly),
            "tiered" | "l1+l2" | "both" => Ok(CacheMode::Tiered),
            other => Err(Error::Config(format!(
                "CACHE_MODE: {other:?} is not one of none, redis, tiered"
            ))),
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rate limit of the API routes (`/products*`, `/me`), per client: the `x-api-key` header
/// when a request has one, else the client's IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// How requests are counted (default GCRA: a burst of `limit`, then an even rate).
    pub algorithm: Algorithm,
    /// Requests per window.
    pub limit: u64,
    /// The window (default 1 s).
    pub window: Duration,
    /// The bound of each Redis call of the limiter (default 50 ms).
    pub timeout: Duration,
    /// What the limiter decides while Redis cannot answer (default: an in-process limit).
    pub on_redis_error: OnRedisError,
}

impl RateLimitConfig {
    /// `limit` requests per `window` with `algorithm`, the other settings at their defaults.
    pub fn new(algorithm: Algorithm, limit: u64, window: Duration) -> Self {
        RateLimitConfig {
            algorithm,
            limit,
            window,
            timeout: layercache_tower::rate_limit::DEFAULT_TIMEOUT,
            on_redis_error: OnRedisError::Local,
        }
    }

    /// `per_second` requests per second (GCRA).
    pub fn per_second(per_second: u64) -> Self {
        Self::new(Algorithm::Gcra, per_second, Duration::from_secs(1))
    }
}

/// What an instance runs with. [`Config::default`] is the zero-setup configuration (a SQLite
/// file in a temporary directory, a private `redis-server`, port 3000); [`Config::from_env`]
/// reads the environment over it. Fields are public: a test sets what it needs.
///
/// `Debug` leaves out the passwords of the URLs.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// `sqlite:...` or `postgres://...`; `None`: a SQLite file in a temporary directory of this
    /// instance, removed at shutdown (`DATABASE_URL`).
    pub database_url: Option<String>,
    /// The Redis of the caches, sessions and rate limiter; `None`: start a private
    /// `redis-server` on a free loopback port for this instance (`REDIS_URL`).
    pub redis_url: Option<String>,
    /// Where to listen; port 0 picks a free port (`LISTEN`).
    pub listen: SocketAddr,
    /// The caches in front of products and lists (`CACHE_MODE`).
    pub cache_mode: CacheMode,
    /// The API routes' rate limit; `None`: no limit (`RATE_LIMIT_PER_SECOND`, 0 for none).
    pub rate_limit: Option<RateLimitConfig>,
    /// The prefix of every Redis key and channel of the service; instances sharing data share it.
    pub key_prefix: String,
    /// How many products to warm at start (`WARM_UP`).
    pub warm_up: usize,
    /// How many products to seed into an empty database.
    pub seed_products: usize,
    /// The timeout of each L2 command of the caches.
    pub l2_timeout: Duration,
    /// How long products stay fresh in the cache.
    pub product_ttl: Duration,
    /// How long product lists stay fresh in the cache.
    pub list_ttl: Duration,
    /// The session inactivity timeout (sliding: every request extends it).
    pub session_ttl: Duration,
    /// Whether the session cookie is `Secure` (only sent over HTTPS); off for the plain-HTTP demo
    /// (`COOKIE_SECURE`).
    pub secure_cookies: bool,
    /// The Prometheus recorder installed as the global `metrics` recorder, if the caller installed
    /// one (the binary does). `None`: the instance keeps a recorder of its own and publishes into
    /// it only while rendering `/metrics`, so several instances coexist in one process; metrics
    /// the library records outside that (latency histograms) then go to the global recorder.
    pub prometheus: Option<PrometheusHandle>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: None,
            redis_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            cache_mode: CacheMode::Tiered,
            rate_limit: Some(RateLimitConfig::per_second(DEFAULT_RATE_LIMIT_PER_SECOND)),
            key_prefix: "shop".to_owned(),
            warm_up: DEFAULT_WARM_UP,
            seed_products: DEFAULT_SEED_PRODUCTS,
            l2_timeout: DEFAULT_L2_TIMEOUT,
            product_ttl: Duration::from_secs(300),
            list_ttl: Duration::from_secs(60),
            session_ttl: DEFAULT_SESSION_TTL,
            secure_cookies: false,
            prometheus: None,
        }
    }
}

impl Config {
    /// The default configuration for tests: a free port on loopback, the rest as
    /// [`Config::default`].
    pub fn ephemeral() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        }
    }

    /// [`Config::default`] with what the environment sets: `DATABASE_URL`, `REDIS_URL`,
    /// `LISTEN`, `CACHE_MODE`, `RATE_LIMIT_PER_SECOND`, `WARM_UP`, `COOKIE_SECURE`. Empty
    /// variables count as unset.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables (a test's map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let mut config = Config::default();
        if let Some(url) = var("DATABASE_URL") {
            DatabaseKind::of(&url)?;
            config.database_url = Some(url);
        }
        config.redis_url = var("REDIS_URL");
        if let Some(listen) = var("LISTEN") {
            config.listen = listen.trim().parse().map_err(|error| {
                Error::Config(format!("LISTEN: {listen:?} is not an address: {error}"))
            })?;
        }
        if let Some(mode) = var("CACHE_MODE") {
            config.cache_mode = CacheMode::parse(&mode)?;
        }
        if let Some(limit) = var("RATE_LIMIT_PER_SECOND") {
            let limit: u64 = parse_number("RATE_LIMIT_PER_SECOND", &limit)?;
            config.rate_limit = (limit > 0).then(|| RateLimitConfig::per_second(limit));
        }
        if let Some(warm) = var("WARM_UP") {
            config.warm_up = parse_number("WARM_UP", &warm)?;
        }
        if let Some(secure) = var("COOKIE_SECURE") {
            config.secure_cookies = matches!(secure.trim(), "1" | "true" | "yes" | "on");
        }
        Ok(config)
    }
}

fn parse_number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, Error>
where
    T::Err: fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|error| Error::Config(format!("{name}: {text:?} is not a number: {error}")))
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &self.database_url.as_deref().map(redact))
            .field("redis_url", &self.redis_url.as_deref().map(redact))
            .field("listen", &self.listen)
            .field("cache_mode", &self.cache_mode)
            .field("rate_limit", &self.rate_limit)
            .field("key_prefix", &self.key_prefix)
            .field("warm_up", &self.warm_up)
            .field("seed_products", &self.seed_products)
            .field("l2_timeout", &self.l2_timeout)
            .field("product_ttl", &self.product_ttl)
            .field("list_ttl", &self.list_ttl)
            .field("session_ttl", &self.session_ttl)
            .field("secure_cookies", &self.secure_cookies)
            .field("prometheus", &self.prometheus.is_some())
            .finish()
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DatabaseKind {
    /// SQLite (`sqlite:`).
    Sqlite,
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
}

impl DatabaseKind {
    /// The kind of database `url` names; a `Config` error for any other scheme.
    pub fn of(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            Ok(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseKind::Postgres)
        } else {
            Err(Error::Config(format!(
                "DATABASE_URL: {} is neither sqlite: nor postgres://",
                redact(url)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn an_empty_environment_is_the_zero_setup_default() {
        let config = from(&[]).map_err(|e| e.to_string());
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        assert_eq!(config.database_url, None);
        assert_eq!(config.redis_url, None);
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.cache_mode, CacheMode::Tiered);
        assert_eq!(
            config.rate_limit.map(|r| r.limit),
            Some(DEFAULT_RATE_LIMIT_PER_SECOND)
        );
    }

    #[test]
    fn variables_override_the_defaults() {
        let Ok(config) = from(&[
            ("DATABASE_URL", "postgres://app:secret@db:5432/shop"),
            ("REDIS_URL", "redis://cache:6379/"),
            ("LISTEN", "0.0.0.0:8080"),
            ("CACHE_MODE", "redis"),
            ("RATE_LIMIT_PER_SECOND", "0"),
            ("WARM_UP", "5"),
            ("REDIS_PASSWORD", ""),
        ]) else {
            panic!("a valid environment");
        };
        assert_eq!(config.cache_mode, CacheMode::RedisOnly);
        assert_eq!(config.rate_limit, None, "0 turns the limit off");
        assert_eq!(config.warm_up, 5);
        assert_eq!(config.listen.port(), 8080);
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("postgres://app:***@db:5432/shop"), "{debug}");
    }

    #[test]
    fn bad_values_are_config_errors() {
        for vars in [
            [("DATABASE_URL", "mysql://x")],
            [("LISTEN", "not an address")],
            [("CACHE_MODE", "sometimes")],
            [("RATE_LIMIT_PER_SECOND", "many")],
        ] {
            assert!(
                matches!(from(&vars), Err(Error::Config(_))),
                "{vars:?} is refused"
            );
        }
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            redact("redis://user:pw@host:1/0"),
            "redis://user:***@host:1/0"
        );
        assert_eq!(redact("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
    }
}
