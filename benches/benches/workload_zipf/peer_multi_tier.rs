//! `peer_multi_tier_cache`: `multi-tier-cache`'s default two tiers, its moka L1 (`MokaCache`)
//! over its Redis L2 (`RedisCache`), built with `CacheSystemBuilder` as its README's
//! "Moka L1 Configuration" does (`.with_moka_config(..)`), with the L2 connected to the test
//! server by `L2Cache::with_url` (the README's alternative to the `REDIS_URL` environment
//! variable, which would be read by every `RedisCache` of the process), and read with
//! `get_or_compute_typed`, the README's "type-safe caching" call for a compute-on-miss.
//!
//! Its L1 holds the JSON bytes (`bytes::Bytes`), so every hit, L1 or L2, decodes the value with
//! its serializer (`serde_json`); an L2 read is a pipelined GET + PTTL, and an L2 hit is copied
//! into the L1 with the remaining TTL Redis reports.

use std::hint::black_box;
use std::sync::Arc;

use benches::Payload;
use multi_tier_cache::{
    CacheBackend, CacheError, CacheManager, CacheSerializer, CacheStrategy, CacheSystemBuilder,
    L2Cache, MokaCacheConfig,
};
use tokio::task::JoinSet;

use crate::contenders::{Contender, KeyText, Served};
use crate::fixture::{KEYS, L1_MAX_ENTRIES, TASKS, TTL};
use crate::tally::{Tally, ratio};

#[derive(Clone)]
pub(crate) struct PeerMultiTier {
    cache: Arc<CacheManager>,
    /// The key of `Payload::new(i)`: `bench:mtc:{i}`.
    keys: KeyText,
}

impl PeerMultiTier {
    /// Connects to `url` and writes every key to Redis (not to the L1, which starts empty like
    /// every other id's) through the cache's own L2 backend and serializer, from `TASKS`
    /// concurrent writers.
    pub(crate) async fn new(url: &str) -> Self {
        let l2 = Arc::new(
            L2Cache::with_url(url)
                .await
                .expect("multi-tier-cache: RedisCache"),
        );
        // Bounded like every other L1. The TTL and time-to-idle are those of every other id
        // (`TTL`: nothing expires during the run); its defaults (1 h and 2 min) would drop
        // entries idle for 2 min between the criterion pass and the interleaved rounds.
        let moka = MokaCacheConfig {
            max_capacity: L1_MAX_ENTRIES,
            time_to_live: TTL,
            time_to_idle: TTL,
        };
        let system = CacheSystemBuilder::new()
            .with_moka_config(moka)
            .with_l2(Arc::clone(&l2) as _)
            .build()
            .await
            .expect("multi-tier-cache: CacheSystem");
        let keys = KeyText::new("bench:mtc:");

        let mut writers = JoinSet::new();
        for first in 0..TASKS {
            let (l2, keys) = (Arc::clone(&l2), keys.clone());
            writers.spawn(async move {
                // The serializer `CacheManager` reads with (JSON, its default).
                let serializer = CacheSerializer::default();
                for id in (first..KEYS).step_by(TASKS) {
                    let bytes = serializer
                        .serialize(&Payload::new(id as u64))
                        .expect("multi-tier-cache: serialize");
                    l2.set_with_ttl(keys.of(id as u64).as_str(), bytes, TTL)
                        .await
                        .expect("multi-tier-cache: L2 set_with_ttl");
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.expect("multi-tier-cache: writer");
        }
        PeerMultiTier {
            cache: Arc::clone(system.cache_manager()),
            keys,
        }
    }
}

impl Contender for PeerMultiTier {
    async fn get(&mut self, id: u64) -> Result<Served, String> {
        // The compute-on-miss never runs: every key is in Redis. A Redis read that fails is a
        // miss to this crate (and a caller that waited on such a read computes too), so it would
        // run too, and fail the request here.
        let value: Payload = self
            .cache
            .get_or_compute_typed(
                self.keys.of(id).as_str(),
                CacheStrategy::Custom(TTL),
                || async { Err(CacheError::NotFound) },
            )
            .await
            .map_err(|e| format!("multi-tier-cache: the compute-on-miss ran or failed: {e}"))?;
        Ok(Served {
            id: black_box(value).id,
            l1_hit: false,
        })
    }

    /// Its statistics: no more misses than failed requests, a request count equal to the
    /// tally's (both count the criterion pass, warm-up included); the L1 hit ratio is
    /// `l1_hits / requests` (requests that waited on another's L2 read count as neither L1 nor
    /// L2 hits).
    fn finish(&self, id: &str, tally: &Tally) -> Option<f64> {
        let stats = self.cache.get_stats();
        // A miss ran the compute-on-miss, which fails the request: counted by the harness.
        assert!(
            stats.misses <= tally.failures().0,
            "{id}: more misses than failed requests: {stats:?}"
        );
        assert_eq!(
            stats.total_requests,
            tally.requests(),
            "{id}: requests: {stats:?}"
        );
        let coalesced = stats.total_requests - stats.l1_hits - stats.l2_hits;
        eprintln!(
            "  {id}: l1_hits {}, l2_hits {}, coalesced {coalesced}, promotions {}",
            stats.l1_hits, stats.l2_hits, stats.promotions
        );
        Some(ratio(stats.l1_hits, tally.requests()))
    }
}
