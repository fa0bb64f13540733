//! Plain values ([`RedisBackendBuilder::plain_values`](super::RedisBackendBuilder::plain_values)):
//! the codec's bytes alone, no envelope, for values other programs read with a plain `GET`.
//!
//! The value's lifetime is the key's Redis TTL; a read asks for it beside the value (`GET` +
//! `PTTL` in one pipeline) and makes the entry fresh until then. What the envelope carried is
//! gone: no stale window (fail-safe has nothing past the TTL), no load cost (XFetch refreshes
//! on its fixed margin only), no creation time (a read counts the value as made when read, so a
//! load that began before a delete or tag invalidation in another process can store its older
//! value after it), and deletes remove the key instead of leaving a tombstone another program
//! could not read. docs/envelope.md weighs the trade-off.

use std::sync::atomic::Ordering;
use std::time::Duration;

use layercache_core::{Codec, Entry, EntryMeta, Key, Result, Timestamp, envelope};
use serde::de::DeserializeOwned;

use super::RedisBackend;
use crate::connection::{Idempotent, Request};
use crate::keyspace::RedisKey;

impl<C: Codec> RedisBackend<C> {
    /// `GET` + `PTTL` of each key, in one pipeline: the values with their remaining lifetimes.
    pub(super) async fn get_plain<V: DeserializeOwned>(
        &self,
        keys: &[Key],
    ) -> Result<Vec<Option<Entry<V>>>> {
        let mut pipe = redis::pipe();
        for key in keys {
            let redis_key = self.keys.key(key.as_str());
            pipe.cmd("GET").arg(redis_key).cmd("PTTL").arg(redis_key);
        }
        let answers: Vec<(Option<Vec<u8>>, i64)> = {
            let flat: Vec<redis::Value> = self
                .conn
                .query(Request::Pipe(&pipe), Idempotent::Yes)
                .await?;
            flat.chunks(2)
                .map(|pair| match pair {
                    [value, ttl] => (
                        redis::from_redis_value::<Option<Vec<u8>>>(value.clone()).unwrap_or(None),
                        redis::from_redis_value::<i64>(ttl.clone()).unwrap_or(-2),
                    ),
                    _ => (None, -2),
                })
                .collect()
        };
        let now = self.clock.now();
        Ok(keys
            .iter()
            .zip(answers)
            .map(|(key, (bytes, ttl))| self.decode_plain(key, bytes, ttl, now))
            .collect())
    }

    /// A plain value read at `now` with `ttl` ms left (`-1`: no expiry).
    fn decode_plain<V: DeserializeOwned>(
        &self,
        key: &Key,
        bytes: Option<Vec<u8>>,
        ttl: i64,
        now: Timestamp,
    ) -> Option<Entry<V>> {
        let counters = &self.counters;
        let Some(bytes) = bytes else {
            counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let left = match u64::try_from(ttl) {
            Ok(ms) => Duration::from_millis(ms),
            // No expiry: written by another program; as long as any entry may live.
            Err(_) if ttl == -1 => envelope::MAX_TTL,
            Err(_) => {
                counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match self.codec.decode::<V>(&bytes) {
            Ok(value) => {
                counters.hits.fetch_add(1, Ordering::Relaxed);
                let until = now + left;
                Some(Entry::new(value, EntryMeta::new(now, until, until)))
            }
            Err(error) => {
                counters.decode_failures.fetch_add(1, Ordering::Relaxed);
                counters.misses.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%key, %error, "plain value in redis does not decode; read as a miss");
                None
            }
        }
    }

    /// Deletes `keys` (plain values leave no tombstone); returns how many existed.
    pub(super) async fn unlink_all(&self, keys: &[RedisKey<'_>]) -> Result<u64> {
        if self.conn.is_cluster() {
            let mut removed = 0;
            for key in keys {
                let mut cmd = redis::cmd("UNLINK");
                cmd.arg(key);
                removed += self
                    .conn
                    .query::<u64>(Request::Cmd(&cmd), Idempotent::No)
                    .await?;
            }
            return Ok(removed);
        }
        let mut cmd = redis::cmd("UNLINK");
        for key in keys {
            cmd.arg(key);
        }
        self.conn.query(Request::Cmd(&cmd), Idempotent::No).await
    }
}
