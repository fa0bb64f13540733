//! Starting and stopping an instance: [`Service::start`] and [`RunningService`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use layercache::redis::RedisPubSub;
use layercache::tiered::CircuitState;
use layercache::{EntryOptions, KeySpace, TieredCache, TieredStats};
use layercache_testkit::RedisServer;
use layercache_tower::rate_limit::{RateLimitStats, RateLimiter};
use layercache_tower::session::{SessionCache, TieredSessionStore};
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::catalog::{Catalog, ProductCaches};
use crate::config::{CacheMode, Config, redact};
use crate::db::{Db, DbStats};
use crate::ops::{Metrics, redis_pinger};
use crate::{Error, api};

/// How long a pub/sub transport may take to connect at start before the instance starts
/// without it (its L1 entries are then capped at one second until it connects).
const TRANSPORT_CONNECT: Duration = Duration::from_secs(5);
/// How long a graceful shutdown waits for requests in flight.
const DRAIN_REQUESTS: Duration = Duration::from_secs(30);

/// What the handlers share.
pub(crate) type AppState = Arc<Shared>;

pub(crate) struct Shared {
    pub(crate) catalog: Catalog,
    pub(crate) sessions: TieredSessionStore,
    pub(crate) limiter: Option<RateLimiter>,
    pub(crate) metrics: Metrics,
    pub(crate) redis_pinger: ConnectionManager,
    pub(crate) mode: CacheMode,
    pub(crate) secure_cookies: bool,
    pub(crate) session_ttl: Duration,
}

impl Shared {
    /// Each cache's name and L2 circuit.
    pub(crate) fn circuits(&self) -> Vec<(&'static str, CircuitState)> {
        let mut circuits = Vec::with_capacity(3);
        if let Some(caches) = &self.catalog.caches {
            circuits.push(("products", caches.items.circuit()));
            circuits.push(("product_lists", caches.lists.circuit()));
        }
        circuits.push(("sessions", self.sessions.cache().circuit()));
        circuits
    }

    /// Publishes every cache's counters through the `metrics` facade.
    pub(crate) fn publish_cache_metrics(&self) {
        if let Some(caches) = &self.catalog.caches {
            caches.items.publish_metrics();
            caches.lists.publish_metrics();
        }
        self.sessions.cache().publish_metrics();
    }
}

/// The example service. [`Service::start`] starts an instance and returns its handle.
#[derive(Debug)]
#[non_exhaustive]
pub struct Service;

impl Service {
    /// Starts an instance: the private `redis-server` (if `config.redis_url` is `None`), the
    /// database (schema and seed), the caches, the session store, the rate limiter, the warm-up
    /// of the first [`Config::warm_up`] products, then the HTTP listener. When this returns the
    /// instance accepts requests at [`RunningService::addr`].
    pub async fn start(config: Config) -> Result<RunningService, Error> {
        let keys = KeySpace::new(&config.key_prefix)
            .map_err(|error| Error::Config(format!("key_prefix: {error}")))?;

        let (redis_url, private_redis) = match &config.redis_url {
            Some(url) => (url.clone(), None),
            None => {
                let server = start_private_redis().await?;
                (server.url(), Some(server))
            }
        };

        let (database_url, temp_dir) = match &config.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let dir = OwnedDir::create()?;
                let url = format!("sqlite://{}?mode=rwc", dir.0.join("shop.db").display());
                (url, Some(dir))
            }
        };
        let db = Db::open(&database_url, config.seed_products).await?;
        tracing::info!(database = %redact(&database_url), redis = %redact(&redis_url), mode = %config.cache_mode, "starting");

        // Before the caches: they register their latency histograms with it when built.
        let metrics = Metrics::new(config.prometheus.clone());
        let mut transports = Vec::new();
        let caches = match config.cache_mode {
            CacheMode::None => None,
            CacheMode::RedisOnly | CacheMode::Tiered => {
                let items = cache::<Arc<crate::db::Product>>(
                    "products",
                    &redis_url,
                    &config,
                    config.product_ttl,
                    &metrics,
                    &mut transports,
                )?;
                let lists = cache::<Arc<crate::db::ProductPage>>(
                    "product_lists",
                    &redis_url,
                    &config,
                    config.list_ttl,
                    &metrics,
                    &mut transports,
                )?;
                Some(ProductCaches {
                    items,
                    lists,
                    item_keys: namespace(&keys, "product")?,
                    list_keys: namespace(&keys, "list")?,
                })
            }
        };
        // Sessions always have both tiers: a logout reaches every instance through pub/sub.
        let session_config = Config {
            cache_mode: CacheMode::Tiered,
            ..config.clone()
        };
        let session_cache: SessionCache = cache(
            "sessions",
            &redis_url,
            &session_config,
            config.session_ttl,
            &metrics,
            &mut transports,
        )?;
        let sessions = TieredSessionStore::new(session_cache, namespace(&keys, "session")?);
        for transport in &transports {
            if !transport.wait_connected(TRANSPORT_CONNECT).await {
                tracing::warn!(
                    "an invalidation transport is not connected yet; L1 entries are capped until it is"
                );
            }
        }

        let limiter = match &config.rate_limit {
            None => None,
            Some(limit) => Some(
                RateLimiter::builder(limit.algorithm, limit.limit, limit.window)
                    .key_prefix(format!("{}:ratelimit:", config.key_prefix))
                    .timeout(limit.timeout)
                    .on_redis_error(limit.on_redis_error)
                    .connect(&redis_url)
                    .await?,
            ),
        };

        let catalog = Catalog { db, caches };
        if let Err(error) = catalog.warm_up(config.warm_up).await {
            tracing::warn!(%error, "warm-up failed; starting cold");
        }

        let state: AppState = Arc::new(Shared {
            catalog,
            sessions,
            limiter,
            metrics,
            redis_pinger: redis_pinger(&redis_url).map_err(|error| {
                Error::Config(format!("REDIS_URL {}: {error}", redact(&redis_url)))
            })?,
            mode: config.cache_mode,
            secure_cookies: config.secure_cookies,
            session_ttl: config.session_ttl,
        });

        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let app = api::router(Arc::clone(&state));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
        });
        tracing::info!(%addr, "listening");
        Ok(RunningService {
            addr,
            state,
            stop: Some(stop),
            server: Some(server),
            private_redis,
            temp_dir,
            redis_url,
            database_url,
        })
    }
}

/// Builds one of the service's caches over Redis: both tiers and a pub/sub transport of its own
/// in [`CacheMode::Tiered`], Redis alone in [`CacheMode::RedisOnly`].
fn cache<V>(
    name: &str,
    redis_url: &str,
    config: &Config,
    ttl: Duration,
    metrics: &Metrics,
    transports: &mut Vec<RedisPubSub>,
) -> Result<TieredCache<V>, Error>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let builder = TieredCache::builder()
        .name(name)
        .redis_url(redis_url)
        .l2_timeout(config.l2_timeout)
        .options(EntryOptions::new(ttl));
    let builder = match config.cache_mode {
        CacheMode::Tiered => {
            let transport = RedisPubSub::builder(redis_url)
                .channel(format!("{}:invalidations:{name}", config.key_prefix))
                .build()?;
            transports.push(transport.clone());
            builder.invalidation(transport)
        }
        _ => builder.without_l1(),
    };
    Ok(metrics.registering(|| builder.build())?)
}

async fn start_private_redis() -> Result<RedisServer, Error> {
    tracing::info!("REDIS_URL is not set: starting a private redis-server");
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .map_err(|error| {
            let message = match error.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "it panicked".to_owned()),
                Err(error) => error.to_string(),
            };
            Error::RedisServer(message)
        })
}

/// The directory of the SQLite file of an instance without `DATABASE_URL`: fresh, and removed
/// when dropped (at shutdown, or when the start fails).
#[derive(Debug)]
struct OwnedDir(PathBuf);

impl OwnedDir {
    fn create() -> Result<Self, Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "layercache-example-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(OwnedDir(dir))
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(%error, dir = %self.0.display(), "removing the temporary directory failed");
        }
    }
}

/// A running instance. [`shutdown`](Self::shutdown) stops it gracefully; dropping it stops the
/// listener without waiting (and kills its private Redis, if it has one).
pub struct RunningService {
    addr: SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    private_redis: Option<RedisServer>,
    temp_dir: Option<OwnedDir>,
    redis_url: String,
    database_url: String,
}

impl std::fmt::Debug for RunningService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningService")
            .field("addr", &self.addr)
            .field("mode", &self.state.mode)
            .field("redis_url", &redact(&self.redis_url))
            .field("database_url", &redact(&self.database_url))
            .finish_non_exhaustive()
    }
}

impl RunningService {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base of every route.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Redis it uses (its private one's when `REDIS_URL` was unset).
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// The database it uses (its temporary SQLite file's when `DATABASE_URL` was unset).
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The caches in front of products and lists.
    pub fn cache_mode(&self) -> CacheMode {
        self.state.mode
    }

    /// The database queries sent so far (reads and writes).
    pub fn db_stats(&self) -> DbStats {
        self.state.catalog.db.stats()
    }

    /// The products cache's counters (`None` in [`CacheMode::None`]).
    pub fn product_cache_stats(&self) -> Option<TieredStats> {
        self.state.catalog.stats().map(|(items, _)| items)
    }

    /// The product lists cache's counters (`None` in [`CacheMode::None`]).
    pub fn list_cache_stats(&self) -> Option<TieredStats> {
        self.state.catalog.stats().map(|(_, lists)| lists)
    }

    /// The session cache's counters.
    pub fn session_cache_stats(&self) -> TieredStats {
        self.state.sessions.cache().stats()
    }

    /// The rate limiter's counters (`None` without a limit).
    pub fn rate_limit_stats(&self) -> Option<RateLimitStats> {
        self.state.limiter.as_ref().map(RateLimiter::stats)
    }

    /// Stops gracefully: no new connections, requests in flight finish (at most 30 s), then
    /// every cache drains its pending work (L2 writes, invalidations to publish), the database
    /// pool closes, and the private Redis and temporary SQLite directory (if any) go. Returns the
    /// first error met; every step runs regardless.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let mut first_error: Option<Error> = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(DRAIN_REQUESTS, server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    first_error.get_or_insert(Error::Io(error));
                }
                Ok(Err(joined)) => {
                    first_error.get_or_insert(Error::Io(std::io::Error::other(joined)));
                }
                Err(_) => {
                    tracing::warn!("requests still in flight after {DRAIN_REQUESTS:?}");
                }
            }
        }
        let state = &self.state;
        let mut drains = Vec::new();
        if let Some(caches) = &state.catalog.caches {
            drains.push(caches.items.shutdown().await);
            drains.push(caches.lists.shutdown().await);
        }
        drains.push(state.sessions.cache().shutdown().await);
        for drained in drains {
            if let Err(error) = drained {
                tracing::warn!(%error, "a cache did not drain");
                first_error.get_or_insert(Error::Cache(error));
            }
        }
        state.catalog.db.close().await;
        let (addr, private_redis, temp_dir) =
            (self.addr, self.private_redis.take(), self.temp_dir.take());
        // The caches and their transports go before the private Redis they are connected to.
        drop(self);
        if let Some(server) = private_redis {
            // Stopping the process waits for it: off the async threads.
            let _ = tokio::task::spawn_blocking(move || drop(server)).await;
        }
        drop(temp_dir);
        tracing::info!(%addr, "stopped");
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn namespace(keys: &KeySpace, name: &str) -> Result<layercache::Namespace, Error> {
    keys.namespace(name)
        .map_err(|error| Error::Config(format!("key_prefix: {error}")))
}
