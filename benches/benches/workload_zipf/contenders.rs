//! What serves the requests: one [`Contender`] per id, all driven by the same [`run_chunk`].
//!
//! Every id gets the request's number (a `u64`) and makes the key its API takes from it, as a
//! service makes a key from its request: the prototype keys moka by the number itself and writes
//! its Redis key on the stack on a miss ([`KeyText`]); `tiered` makes a [`Key`] with
//! `Namespace::key`. None reads a table of pre-built keys: a table of 100,000 keys is megabytes,
//! and reading it would cost a cache miss per request that no service pays.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Payload;
use layercache_core::{EntryOptions, Key, Namespace};
use layercache_tiered::TieredCache;
use redis::aio::ConnectionManager;
use tokio::task::JoinSet;

use crate::fixture::{CHECK_EVERY, CHUNK, Fixture, L1_MAX_ENTRIES, L2_TIMEOUT, TASKS, TTL};
use crate::tally::{Tally, ratio};

/// The answer to one request.
pub(crate) struct Served {
    /// The `id` field of the value served (checked against the key's number).
    pub(crate) id: u64,
    /// Whether the contender's in-process cache answered, when it can tell per request.
    pub(crate) l1_hit: bool,
}

/// A way to serve the trace's requests. Each task gets its own clone.
pub(crate) trait Contender: Clone + Send + Sync + 'static {
    /// The value of key number `id` (every key is in Redis beforehand), or why the request
    /// failed (counted; ours and the baseline must never fail).
    fn get(&mut self, id: u64) -> impl Future<Output = Result<Served, String>> + Send;

    /// Checks the contender's own account of the run (after the criterion pass) and returns its
    /// in-process hit ratio over the `tally`'s requests, `None` without an in-process tier.
    fn finish(&self, id: &str, tally: &Tally) -> Option<f64>;
}

/// A [`Contender`] behind a trait object, so the ids can sit in one list.
pub(crate) trait Runner: Send + Sync {
    /// Serves `CHUNK` requests of `trace` from `start` with `TASKS` tasks; returns the elapsed
    /// time.
    fn run_chunk<'a>(
        &'a self,
        trace: &'a Arc<Vec<u32>>,
        start: usize,
        tally: &'a Arc<Tally>,
    ) -> Pin<Box<dyn Future<Output = Duration> + Send + 'a>>;

    /// [`Contender::finish`].
    fn finish(&self, id: &str, tally: &Tally) -> Option<f64>;
}

impl<C: Contender> Runner for C {
    fn run_chunk<'a>(
        &'a self,
        trace: &'a Arc<Vec<u32>>,
        start: usize,
        tally: &'a Arc<Tally>,
    ) -> Pin<Box<dyn Future<Output = Duration> + Send + 'a>> {
        Box::pin(run_chunk(self, trace, start, tally))
    }

    fn finish(&self, id: &str, tally: &Tally) -> Option<f64> {
        Contender::finish(self, id, tally)
    }
}

/// Task `t` takes requests `start + t`, `start + t + TASKS`, ... of the chunk; every
/// `CHECK_EVERY`th request of the trace checks its value.
async fn run_chunk<C: Contender>(
    contender: &C,
    trace: &Arc<Vec<u32>>,
    start: usize,
    tally: &Arc<Tally>,
) -> Duration {
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let (mut contender, trace, tally) =
            (contender.clone(), Arc::clone(trace), Arc::clone(tally));
        tasks.spawn(async move {
            let mut hits = 0_u64;
            for i in (start + t..start + CHUNK).step_by(TASKS) {
                let id = u64::from(trace[i]);
                match contender.get(id).await {
                    Ok(served) => {
                        hits += u64::from(served.l1_hit);
                        if i.is_multiple_of(CHECK_EVERY) {
                            tally.check(served.id == id);
                        }
                    }
                    Err(why) => tally.fail(why),
                }
            }
            tally.add_l1_hits(hits);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    began.elapsed()
}

/// `raw_prototype`, the hand-written cache-aside (no code of ours): `moka::future::Cache<u64,
/// Arc<Payload>>` in front of one redis-rs `ConnectionManager`; on a miss, GET the plain JSON,
/// `serde_json::from_slice`, insert.
#[derive(Clone)]
pub(crate) struct RawPrototype {
    l1: moka::future::Cache<u64, Arc<Payload>>,
    redis: RedisAlone,
}

impl RawPrototype {
    pub(crate) async fn new(url: &str, fx: &Fixture) -> Self {
        RawPrototype {
            l1: moka::future::Cache::builder()
                .max_capacity(L1_MAX_ENTRIES)
                .build(),
            redis: RedisAlone::new(url, fx).await,
        }
    }
}

impl Contender for RawPrototype {
    async fn get(&mut self, id: u64) -> Result<Served, String> {
        if let Some(hit) = self.l1.get(&id).await {
            return Ok(Served {
                id: black_box(hit).id,
                l1_hit: true,
            });
        }
        let value = Arc::new(self.redis.fetch(id).await?);
        self.l1.insert(id, Arc::clone(&value)).await;
        Ok(Served {
            id: black_box(value).id,
            l1_hit: false,
        })
    }

    fn finish(&self, _id: &str, tally: &Tally) -> Option<f64> {
        Some(ratio(tally.l1_hits(), tally.requests()))
    }
}

/// `redis_rs_alone`: the same hand-written cache-aside without moka: a GET of the plain JSON and
/// `serde_json::from_slice` on every request.
#[derive(Clone)]
pub(crate) struct RedisAlone {
    redis: ConnectionManager,
    keys: KeyText,
}

impl RedisAlone {
    pub(crate) async fn new(url: &str, fx: &Fixture) -> Self {
        let client = redis::Client::open(url).expect("redis url");
        // The same bound on a Redis reply as `tiered`'s L2 timeout (redis-rs's default is
        // shorter, and a busy machine then fails the hand-written GETs first).
        let config =
            redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(L2_TIMEOUT));
        RedisAlone {
            redis: ConnectionManager::new_with_config(client, config)
                .await
                .expect("redis connection"),
            keys: KeyText::new(fx.raw_ns.scope()),
        }
    }

    async fn fetch(&mut self, id: u64) -> Result<Payload, String> {
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.of(id).as_str())
            .query_async(&mut self.redis)
            .await
            .map_err(|e| format!("redis-rs GET: {e}"))?;
        let bytes = bytes.ok_or("a key that is in Redis read as a miss")?;
        serde_json::from_slice::<Payload>(&bytes).map_err(|e| format!("serde_json: {e}"))
    }
}

impl Contender for RedisAlone {
    async fn get(&mut self, id: u64) -> Result<Served, String> {
        let value = self.fetch(id).await?;
        Ok(Served {
            id: black_box(value).id,
            l1_hit: false,
        })
    }

    fn finish(&self, _id: &str, _tally: &Tally) -> Option<f64> {
        None
    }
}

/// `tiered` and `l2_only`: `TieredCache::<Arc<Payload>>` built as the README recommends (a value
/// costly to clone behind an `Arc`; `.redis_url(..)`, `.l1_max_entries(L1_MAX_ENTRIES)`,
/// `.options(EntryOptions::new(1 h))`, `.l2_timeout(1 s)`; `.without_l1()` for `l2_only`), read
/// with `get_or_load` whose loader never runs (every key is in Redis; checked in `finish`).
#[derive(Clone)]
pub(crate) struct Tiered {
    cache: Arc<TieredCache<Arc<Payload>>>,
    namespace: Namespace,
    l1: bool,
}

impl Tiered {
    pub(crate) fn new(rt: &tokio::runtime::Runtime, url: &str, fx: &Fixture, l1: bool) -> Self {
        // `redis_url` connects lazily, which spawns onto the runtime: build inside it.
        let _runtime_context = rt.enter();
        let builder = TieredCache::<Arc<Payload>>::builder()
            .redis_url(url)
            .l1_max_entries(L1_MAX_ENTRIES)
            .options(EntryOptions::new(TTL))
            .l2_timeout(L2_TIMEOUT);
        let builder = if l1 { builder } else { builder.without_l1() };
        Tiered {
            cache: Arc::new(builder.build().expect("tiered cache")),
            namespace: fx.ns.clone(),
            l1,
        }
    }
}

impl Contender for Tiered {
    async fn get(&mut self, id: u64) -> Result<Served, String> {
        let key: Key = self.namespace.key(id).map_err(|e| format!("key: {e}"))?;
        let value = self
            .cache
            .get_or_load(&key, |_key| async { Ok::<_, layercache_core::Error>(None) })
            .await
            .map_err(|e| format!("get_or_load: {e}"))?
            .ok_or("a key that is in Redis read as absent")?;
        Ok(Served {
            id: black_box(value).id,
            l1_hit: false,
        })
    }

    fn finish(&self, id: &str, tally: &Tally) -> Option<f64> {
        let stats = self.cache.stats();
        assert_eq!(stats.loads, 0, "{id}: the loader ran: {stats:?}");
        assert_eq!(stats.l2_misses, 0, "{id}: an L2 miss: {stats:?}");
        assert_eq!(stats.l2_errors, 0, "{id}: an L2 error: {stats:?}");
        eprintln!(
            "  {id}: l1_hits {}, l1_misses {}, l2_hits {}, coalesced {}",
            stats.l1_hits, stats.l1_misses, stats.l2_hits, stats.coalesced
        );
        self.l1.then(|| ratio(stats.l1_hits, tally.requests()))
    }
}

/// The longest key [`KeyText`] writes.
const KEY_TEXT_MAX: usize = 64;

/// A key as a string made from a request's number on the stack (`prefix` then the number in
/// decimal), without an allocation: how the hand-written ids and the peers whose API takes a
/// `&str` make their keys.
#[derive(Clone)]
pub(crate) struct KeyText {
    prefix: Arc<str>,
}

/// One key written by [`KeyText::of`].
pub(crate) struct KeyBuf {
    bytes: [u8; KEY_TEXT_MAX],
    len: usize,
}

impl KeyText {
    pub(crate) fn new(prefix: &str) -> Self {
        assert!(
            prefix.len() + 20 <= KEY_TEXT_MAX,
            "a key prefix too long: {prefix}"
        );
        KeyText {
            prefix: prefix.into(),
        }
    }

    /// `prefix` then `id`.
    pub(crate) fn of(&self, id: u64) -> KeyBuf {
        use std::io::Write as _;
        let mut bytes = [0_u8; KEY_TEXT_MAX];
        let mut rest = &mut bytes[..];
        // Room checked in `new`: a u64 has at most 20 digits.
        write!(rest, "{}{id}", self.prefix).expect("a key fits its buffer");
        let len = KEY_TEXT_MAX - rest.len();
        KeyBuf { bytes, len }
    }
}

impl KeyBuf {
    pub(crate) fn as_str(&self) -> &str {
        // Written from a `str` and decimal digits.
        std::str::from_utf8(&self.bytes[..self.len]).expect("a key is UTF-8")
    }
}
