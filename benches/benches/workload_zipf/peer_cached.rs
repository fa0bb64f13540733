//! `peer_cached`: the `cached` crate's async Redis store, `AsyncRedisCache<u64, Payload>`, built
//! the way its `redis-async-tokio` example builds one (`AsyncRedisCache::builder(prefix)`,
//! `.ttl(..)`, `.connection_string(..)`), over the auto-reconnecting `ConnectionManager`
//! (`.connection_manager(true)`, the `redis_connection_manager` feature), and read with
//! `async_cache_get` on every request. It has no in-process tier: every request is one round
//! trip to Redis and a MessagePack decode of the value.

use std::hint::black_box;
use std::sync::Arc;

use benches::Payload;
use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use tokio::task::JoinSet;

use crate::contenders::{Contender, Served};
use crate::fixture::{KEYS, TASKS, TTL};
use crate::tally::Tally;

/// The key prefix of the store (its keys are `cached-redis-store:workload_zipf:{id}`).
const PREFIX: &str = "workload_zipf";

#[derive(Clone)]
pub(crate) struct PeerCached {
    cache: Arc<AsyncRedisCache<u64, Payload>>,
}

impl PeerCached {
    /// Connects to `url` and writes every key through the store's own `async_cache_set`, from
    /// `TASKS` concurrent writers, so that every request of the trace is a hit in Redis.
    pub(crate) async fn new(url: &str) -> Self {
        let cache = AsyncRedisCache::<u64, Payload>::builder(PREFIX)
            .ttl(TTL)
            .connection_string(url)
            .connection_manager(true)
            .build()
            .await
            .expect("cached: AsyncRedisCache");
        let cache = Arc::new(cache);
        let mut writers = JoinSet::new();
        for first in 0..TASKS {
            let cache = Arc::clone(&cache);
            writers.spawn(async move {
                for id in (first..KEYS).step_by(TASKS) {
                    let id = id as u64;
                    let previous = cache
                        .async_cache_set(id, Payload::new(id))
                        .await
                        .expect("cached: async_cache_set");
                    assert!(previous.is_none(), "cached: key {id} was already set");
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.expect("cached: writer");
        }
        PeerCached { cache }
    }
}

impl Contender for PeerCached {
    async fn get(&mut self, id: u64) -> Result<Served, String> {
        // A miss here would mean the cache-aside's loader runs: every key is in Redis, so none
        // may happen; it is a failed request.
        let value = self
            .cache
            .async_cache_get(&id)
            .await
            .map_err(|e| format!("cached: async_cache_get: {e}"))?
            .ok_or("cached: a key that is in Redis read as a miss")?;
        Ok(Served {
            id: black_box(value).id,
            l1_hit: false,
        })
    }

    /// The store keeps no statistics and has no in-process tier; `get` already fails on a miss.
    fn finish(&self, _id: &str, _tally: &Tally) -> Option<f64> {
        None
    }
}
