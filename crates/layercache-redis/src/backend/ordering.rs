//! Order across processes (ADR 0012): stores of loaded values that give way to anything as new
//! or newer, and tombstones that deletes and tag invalidations leave.

use std::time::Duration;

use layercache_core::{Codec, Entry, Error, Key, Result, Timestamp, envelope};
use serde::Serialize;

use super::RedisBackend;
use crate::connection::{Idempotent, Request};
use crate::keyspace::RedisKey;

/// Stores an envelope unless the key holds one (an entry or a tombstone) created at or after it
/// (ADR 0012): on a tie, in the same millisecond, the load's store gives way. KEYS[1]; ARGV: the envelope, its PX, its `created_at` in
/// ms. Foreign bytes are replaced. Answers 1 when it stored.
const SET_IF_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.len(cur) >= 14 and string.sub(cur, 1, 3) == '\202LC' then
  local stamp = 0
  for i = 14, 7, -1 do stamp = stamp * 256 + string.byte(cur, i) end
  local new = tonumber(ARGV[3])
  if stamp >= new then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

impl<C: Codec> RedisBackend<C> {
    /// Adds the script that stores `entry` unless the key holds something newer; returns the
    /// bytes of value it carries, 0 when there is nothing to store (the entry already expired).
    fn push_set_if_newer<V: Serialize>(
        &self,
        pipe: &mut redis::Pipeline,
        key: &Key,
        entry: &Entry<V>,
        now: Timestamp,
    ) -> Result<usize> {
        let Some((bytes, px)) = self.stored_form(entry, now)? else {
            return Ok(0);
        };
        let len = bytes.len();
        // EVAL, not EVALSHA: a pipeline cannot reload a script a restarted server forgot, and
        // Redis compiles a script once and keeps it by its hash.
        pipe.cmd("EVAL")
            .arg(SET_IF_NEWER)
            .arg(1)
            .arg(self.keys.key(key.as_str()))
            .arg(bytes)
            .arg(px)
            .arg(entry.meta.created_at.as_millis());
        Ok(len)
    }

    /// Sends one conditional store per pipeline (one slot each on a cluster); answers in order.
    pub(super) async fn send_if_newer<V: Serialize>(
        &self,
        items: &[(Key, Entry<V>)],
        now: Timestamp,
    ) -> Result<Vec<bool>> {
        let mut stored = vec![false; items.len()];
        if self.conn.is_cluster() {
            let mut pipes = Vec::with_capacity(items.len());
            for (index, (key, entry)) in items.iter().enumerate() {
                let mut pipe = redis::pipe();
                let bytes = self.push_set_if_newer(&mut pipe, key, entry, now)?;
                if bytes > 0 {
                    pipes.push((index, pipe, bytes));
                }
            }
            // Every value checked before any is sent.
            let mut tasks = tokio::task::JoinSet::new();
            for (index, pipe, bytes) in pipes {
                let conn = self.conn.clone();
                tasks.spawn(async move {
                    let answer: Result<(i64,)> = conn
                        .query_sized(Request::Pipe(&pipe), Idempotent::Yes, bytes)
                        .await;
                    (index, answer)
                });
            }
            while let Some(done) = tasks.join_next().await {
                let (index, answer) = done
                    .map_err(|e| Error::unavailable("a redis write task failed").with_source(e))?;
                stored[index] = answer?.0 == 1;
            }
            let groups = self.tag_groups(
                items
                    .iter()
                    .zip(&stored)
                    .filter(|(_, s)| **s)
                    .map(|((k, e), _)| (k, e)),
                now,
            );
            self.index_tags(&mut redis::pipe(), groups).await?;
            return Ok(stored);
        }
        let mut pipe = redis::pipe();
        let mut sent = Vec::with_capacity(items.len());
        let mut bytes = 0;
        for (index, (key, entry)) in items.iter().enumerate() {
            let len = self.push_set_if_newer(&mut pipe, key, entry, now)?;
            if len > 0 {
                sent.push(index);
                bytes += len;
            }
        }
        if sent.is_empty() {
            return Ok(stored);
        }
        // Indexed whether or not the script stores: a refused entry leaves an orphan the tag's
        // set names until it expires, which an invalidation removes harmlessly.
        let groups = self.tag_groups(items.iter().map(|(k, e)| (k, e)), now);
        self.index_tags(&mut pipe, groups).await?;
        // The script's check and store happen at once, so sending it twice is harmless.
        let answers: Vec<i64> = self
            .conn
            .query_sized(Request::Pipe(&pipe), Idempotent::Yes, bytes)
            .await?;
        for (index, answer) in sent.into_iter().zip(answers) {
            stored[index] = answer == 1;
        }
        Ok(stored)
    }

    /// Replaces `key` with a tombstone at `at`, kept for `window`; `true` when it held a value.
    pub(super) async fn tombstone(
        &self,
        key: &Key,
        at: Timestamp,
        window: Duration,
    ) -> Result<bool> {
        let present = self
            .tombstone_all(&[self.keys.key(key.as_str())], at, window)
            .await?;
        Ok(present > 0)
    }

    /// Tombstones every key the tag's index names, then drops the index; returns how many held a
    /// value.
    pub(super) async fn tombstone_tagged(
        &self,
        tag: &str,
        at: Timestamp,
        window: Duration,
    ) -> Result<u64> {
        if self.tag_prefix.is_none() {
            return Ok(0);
        }
        let tag_key = self.tag_key(tag);
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let mut scan = redis::cmd("SSCAN");
            scan.arg(&tag_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(self.scan_batch);
            let (next, members): (u64, Vec<String>) = self
                .conn
                .query(Request::Cmd(&scan), Idempotent::Yes)
                .await?;
            // Members are Redis keys, the key prefix included.
            let keys: Vec<RedisKey<'_>> = members.iter().map(|m| RedisKey::raw(m)).collect();
            removed += self.tombstone_all(&keys, at, window).await?;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(&tag_key);
        self.conn
            .query::<u64>(Request::Cmd(&unlink), Idempotent::No)
            .await?;
        Ok(removed)
    }

    /// Replaces each of `keys` with a tombstone at `at` (one pipeline; one command per key on a
    /// cluster); returns how many held a value.
    async fn tombstone_all(
        &self,
        keys: &[RedisKey<'_>],
        at: Timestamp,
        window: Duration,
    ) -> Result<u64> {
        let px = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let tombstone = envelope::tombstone(at, at + window);
        let command = |pipe: &mut redis::Pipeline, key: &RedisKey<'_>| {
            pipe.cmd("SET")
                .arg(key)
                .arg(tombstone.as_slice())
                .arg("PX")
                .arg(px)
                .arg("GET");
        };
        let present = |old: &Option<Vec<u8>>| {
            u64::from(
                old.as_deref()
                    .is_some_and(|old| !envelope::is_tombstone(old)),
            )
        };
        if keys.is_empty() {
            return Ok(0);
        }
        if self.plain {
            return self.unlink_all(keys).await;
        }
        if !self.conn.is_cluster() {
            let mut pipe = redis::pipe();
            for key in keys {
                command(&mut pipe, key);
            }
            let olds: Vec<Option<Vec<u8>>> = self
                .conn
                .query(Request::Pipe(&pipe), Idempotent::No)
                .await?;
            return Ok(olds.iter().map(present).sum());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for key in keys {
            let mut pipe = redis::pipe();
            command(&mut pipe, key);
            let conn = self.conn.clone();
            tasks.spawn(async move {
                conn.query::<(Option<Vec<u8>>,)>(Request::Pipe(&pipe), Idempotent::No)
                    .await
            });
        }
        let mut removed = 0;
        while let Some(done) = tasks.join_next().await {
            let (old,) = done.map_err(|e| {
                Error::unavailable("a redis invalidation task failed").with_source(e)
            })??;
            removed += present(&old);
        }
        Ok(removed)
    }
}
