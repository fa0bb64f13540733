use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::entry::{Entry, Timestamp};
use crate::error::Result;
use crate::key::{Key, Namespace};

/// A cache tier: the one seam every tier, guard, strategy and test goes through.
///
/// The trait is dyn-compatible, so tiers compose as `Arc<dyn Backend<V>>`.
///
/// # Contract
///
/// - A miss is `Ok(None)`, never an error. Errors mean the tier could not answer (unreachable,
///   timed out); bytes a tier cannot decode are a miss (and a counted metric), not an error.
/// - An entry past its [`stale_until`](crate::EntryMeta::stale_until), by the backend's clock, is
///   never returned. Stale entries (past `fresh_until`) are returned: the caller decides.
/// - `set` of an entry that is already expired removes the key.
/// - The batch forms answer in the order of their input. Their default implementations loop over
///   the single forms; network backends override them with one round trip.
/// - [`clear`](Backend::clear) removes the keys of one [`Namespace`] and nothing else.
/// - A shared tier keeps order across processes: [`invalidate`](Backend::invalidate) leaves a
///   tombstone, and [`set_if_newer`](Backend::set_if_newer) refuses an entry created at or before
///   the tombstone or entry it would replace. An in-process tier needs neither (the
///   cache's version table orders its own process) and keeps the defaults.
///
/// The `layercache-testkit` crate's conformance suite checks this contract for any backend.
#[async_trait]
pub trait Backend<V>: Send + Sync + Debug
where
    V: Send + Sync + 'static,
{
    /// The entry under `key`, or `None`.
    async fn get(&self, key: &Key) -> Result<Option<Entry<V>>>;

    /// Stores `entry` under `key`, replacing what was there, until the entry's `stale_until`.
    async fn set(&self, key: &Key, entry: Entry<V>) -> Result<()>;

    /// Removes `key`; `true` when it was present.
    async fn delete(&self, key: &Key) -> Result<bool>;

    /// The entries under `keys`, in the same order.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry<V>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Stores every `(key, entry)` pair.
    async fn set_many(&self, items: Vec<(Key, Entry<V>)>) -> Result<()> {
        for (key, entry) in items {
            self.set(&key, entry).await?;
        }
        Ok(())
    }

    /// Removes `keys`; returns how many were present.
    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        let mut removed = 0;
        for key in keys {
            removed += u64::from(self.delete(key).await?);
        }
        Ok(removed)
    }

    /// Stores `entry` — produced by a load whose source read began at its `created_at` — unless
    /// the tier holds an entry or a tombstone ([`invalidate`](Self::invalidate)) created at or
    /// after that moment (on a tie the load gives way: it only costs a later L2 hit). `true`
    /// when it stored. The default stores unconditionally.
    async fn set_if_newer(&self, key: &Key, entry: Entry<V>) -> Result<bool> {
        self.set(key, entry).await.map(|()| true)
    }

    /// [`set_if_newer`](Self::set_if_newer) of every pair; one answer per pair, in order.
    async fn set_many_if_newer(&self, items: Vec<(Key, Entry<V>)>) -> Result<Vec<bool>> {
        let mut stored = Vec::with_capacity(items.len());
        for (key, entry) in items {
            stored.push(self.set_if_newer(&key, entry).await?);
        }
        Ok(stored)
    }

    /// Removes `key` as an invalidation at `at`: for `window`, a tombstone refuses
    /// [`set_if_newer`](Self::set_if_newer) of anything created at or before `at` (a slow load
    /// in any process cannot put an older value back). `true` when a value was present. The
    /// default is [`delete`](Self::delete).
    async fn invalidate(&self, key: &Key, at: Timestamp, window: Duration) -> Result<bool> {
        let _ = (at, window);
        self.delete(key).await
    }

    /// Removes the entries that carry `tag`, as invalidations at `at` (see
    /// [`invalidate`](Self::invalidate)), when the tier keeps an index of its tags; returns how
    /// many it removed. The default keeps no index and removes nothing: the cache above checks
    /// entries against the tag's invalidation time on read.
    async fn invalidate_tag(&self, tag: &str, at: Timestamp, window: Duration) -> Result<u64> {
        let _ = (tag, at, window);
        Ok(0)
    }

    /// Removes every key of `namespace`; returns how many were removed.
    async fn clear(&self, namespace: &Namespace) -> Result<u64>;

    /// Whether the tier would take `entry`: a [`TooLarge`](crate::ErrorKind::TooLarge) error
    /// when it is over the tier's maximum value size (its `set` would refuse it, writing
    /// nothing). A cache checks before it writes any tier, so an oversized value lands nowhere.
    /// The default has no limit.
    fn check_size(&self, entry: &Entry<V>) -> Result<()> {
        let _ = entry;
        Ok(())
    }

    /// A short name for the backend, for messages and metrics (`"moka"`, `"redis"`).
    fn name(&self) -> &'static str;
}
