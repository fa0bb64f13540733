//! The peers: the crates a user would otherwise pick, each configured as its documentation
//! recommends and checked for correct values like every id.

use crate::contenders::RedisAlone;
use crate::fixture::Fixture;
use crate::{Entry, Role};

/// Every peer, set up (its data written to Redis in its own format) and ready.
pub(crate) fn peers(rt: &tokio::runtime::Runtime, url: &str, fx: &Fixture) -> Vec<Entry> {
    vec![Entry::new(
        "peer_redis_rs",
        Role::Peer,
        "redis-rs alone, a hand-written cache-aside without an in-process tier: GET + serde_json per request",
        rt.block_on(RedisAlone::new(url, fx)),
    )]
}
