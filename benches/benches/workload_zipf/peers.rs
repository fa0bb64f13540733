//! The peers: the crates a user would otherwise pick, each configured as its documentation
//! recommends and checked for correct values like every id.

#[path = "peer_cached.rs"]
mod peer_cached;
#[path = "peer_multi_tier.rs"]
mod peer_multi_tier;

use std::time::Instant;

use crate::contenders::RedisAlone;
use crate::fixture::{Fixture, KEYS};
use crate::{Entry, Role};

use self::peer_cached::PeerCached;
use self::peer_multi_tier::PeerMultiTier;

/// Every peer, set up (its data written to Redis in its own format) and ready.
pub(crate) fn peers(rt: &tokio::runtime::Runtime, url: &str, fx: &Fixture) -> Vec<Entry> {
    let started = Instant::now();
    let cached = rt.block_on(PeerCached::new(url));
    let multi_tier = rt.block_on(PeerMultiTier::new(url));
    eprintln!(
        "workload_zipf: {KEYS} keys written through each peer in {:.1?}",
        started.elapsed()
    );
    vec![
        Entry::new(
            "peer_redis_rs",
            Role::Peer,
            "redis-rs alone, a hand-written cache-aside without an in-process tier: GET + serde_json per request",
            rt.block_on(RedisAlone::new(url, fx)),
        ),
        Entry::new(
            "peer_cached",
            Role::Peer,
            "cached 4.1 AsyncRedisCache<u64, Payload> (TTL 1 h, ConnectionManager; no in-process tier): async_cache_get (GET + MessagePack) per request",
            cached,
        ),
        Entry::new(
            "peer_multi_tier_cache",
            Role::Peer,
            "multi-tier-cache 0.6 moka L1 (10,000 entries) + Redis L2, get_or_compute_typed::<Payload> (serde_json on every hit, L1 included)",
            multi_tier,
        ),
    ]
}
