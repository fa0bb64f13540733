//! The per-key version table: the one owner of "which write of a key is newest" in a cache.
//!
//! Every path that puts a value into a tier asks this table first: a load (or an L2→L1 refill)
//! takes a [`Ticket`] before it reads, and stores only through [`Ticket::commit`], which runs the
//! store under the key's lock and only if no write, delete or clear of the key began since the
//! ticket was taken and none is still landing. A write holds a [`WriteTicket`] from before it
//! touches any tier until its slowest tier (L2) has it; a clear holds a [`ClearTicket`] for its
//! namespace. So once a write, delete or clear returns, no load that started before it can put an
//! older value anywhere.
//!
//! The table holds a slot only for keys with tickets alive (loads in flight, writes landing): it is
//! empty when the cache is idle, and its memory is bounded by the work in flight, not by the
//! key space. Slots are exact (no striping), so a write never spoils the store of an unrelated key.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_utils::CachePadded;

use crate::key::{Key, Namespace};

const SHARDS: usize = 64;

#[derive(Debug, Default)]
struct Slot {
    /// Bumped by every write, delete or clear that begins or lands.
    version: u64,
    /// Tickets alive for the key (loads and writes).
    holders: u32,
    /// Writes of the key that began and have not landed in every tier yet.
    writing: u32,
}

type Shard = HashMap<Key, Slot, foldhash::fast::RandomState>;

/// The per-key version table of one cache: the one owner of "which write of a key is newest".
///
/// ```
/// use std::sync::Arc;
/// use layercache_core::{Key, Versions};
///
/// let versions = Arc::new(Versions::new());
/// let key = Key::new("user:1")?;
/// let load = versions.begin(&key);          // a load starts
/// let write = versions.begin_write(&key);   // a write of the same key begins ...
/// write.finish(|| ());                       // ... and lands
/// assert_eq!(load.commit(|| "stored"), None); // the older load may not store
/// drop(load);
/// assert_eq!(versions.tracked(), 0);         // nothing kept once the work is done
/// # Ok::<(), layercache_core::KeyError>(())
/// ```
pub struct Versions {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Clears in progress, by namespace; checked by commits only when `clearing` is non-zero.
    clears: Mutex<Vec<(u64, Namespace)>>,
    clearing: AtomicUsize,
    next_clear: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Versions")
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl Default for Versions {
    fn default() -> Self {
        Self::new()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few map operations and the caller's short, non-panicking
    // closure; a poisoned lock is used as it is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Versions {
    /// An empty table.
    pub fn new() -> Self {
        Versions {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(HashMap::default())))
                .collect(),
            clears: Mutex::new(Vec::new()),
            clearing: AtomicUsize::new(0),
            next_clear: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        let index = (key.hash_value() as usize) % self.shards.len();
        &self.shards[index]
    }

    /// A ticket for a load (or refill) of `key` that is about to read: its store will go through
    /// [`Ticket::commit`].
    pub fn begin(self: &Arc<Self>, key: &Key) -> Ticket {
        let mut shard = locked(self.shard(key));
        let slot = shard.entry(key.clone()).or_default();
        slot.holders += 1;
        Ticket {
            versions: Arc::clone(self),
            key: key.clone(),
            version: slot.version,
            released: false,
        }
    }

    /// Begins a write (a set or a delete) of `key`: loads that began before may no longer store,
    /// and no load may store until the write [finishes](WriteTicket::finish). `apply` runs under
    /// the key's lock, after the version moved, with the write's ticket: write the in-process tier
    /// and queue the shared tier's write there (handing it the ticket to finish once it landed), so
    /// writes of one key are ordered as they began.
    ///
    /// `apply` must not drop the ticket (finishing takes the key's lock, held during `apply`):
    /// store it or return it.
    pub fn begin_write_with<R>(
        self: &Arc<Self>,
        key: &Key,
        apply: impl FnOnce(WriteTicket) -> R,
    ) -> R {
        let mut shard = locked(self.shard(key));
        let slot = shard.entry(key.clone()).or_default();
        slot.version += 1;
        slot.holders += 1;
        slot.writing += 1;
        apply(self.write_ticket(key))
    }

    fn write_ticket(self: &Arc<Self>, key: &Key) -> WriteTicket {
        WriteTicket {
            versions: Arc::clone(self),
            key: key.clone(),
            finished: false,
        }
    }

    /// [`begin_write_with`](Self::begin_write_with) with nothing to apply.
    pub fn begin_write(self: &Arc<Self>, key: &Key) -> WriteTicket {
        self.begin_write_with(key, |ticket| ticket)
    }

    /// Begins a write of `key` that is conditional on `ticket`: `apply` learns whether no other
    /// write of the key began since `ticket` was taken (`true`: store the value) or one did
    /// (`false`: the two writes raced and their order at the source is unknown, so remove the key
    /// instead). Write-through uses this: take a ticket, write the source, then write the cache.
    /// The same rule as [`begin_write_with`](Self::begin_write_with) holds for the ticket `apply`
    /// receives.
    pub fn begin_write_after<R>(
        self: &Arc<Self>,
        ticket: &Ticket,
        apply: impl FnOnce(bool, WriteTicket) -> R,
    ) -> R {
        let key = &ticket.key;
        let mut shard = locked(self.shard(key));
        let slot = shard.entry(key.clone()).or_default();
        let current = slot.version == ticket.version && slot.writing == 0;
        slot.version += 1;
        slot.holders += 1;
        slot.writing += 1;
        apply(current, self.write_ticket(key))
    }

    /// Begins a clear of `namespace`: like a write of every key in it. `apply` runs with every
    /// shard locked (remove the in-process tier's keys of the namespace there).
    pub fn begin_clear(
        self: &Arc<Self>,
        namespace: &Namespace,
        apply: impl FnOnce(),
    ) -> ClearTicket {
        let id = self.next_clear.fetch_add(1, Ordering::Relaxed);
        let mut shards: Vec<MutexGuard<'_, Shard>> =
            self.shards.iter().map(|shard| locked(shard)).collect();
        for shard in &mut shards {
            bump_namespace(shard, namespace);
        }
        locked(&self.clears).push((id, namespace.clone()));
        self.clearing.fetch_add(1, Ordering::AcqRel);
        apply();
        drop(shards);
        ClearTicket {
            versions: Arc::clone(self),
            namespace: namespace.clone(),
            id,
            finished: false,
        }
    }

    /// An invalidation made elsewhere (another instance, the server): loads of `key` under way may
    /// no longer store. `apply` runs under the key's lock (remove the key from the in-process
    /// tier there). Unlike a write, nothing stays pending.
    pub fn invalidate_with<R>(&self, key: &Key, apply: impl FnOnce() -> R) -> R {
        let mut shard = locked(self.shard(key));
        if let Some(slot) = shard.get_mut(key) {
            slot.version += 1;
        }
        apply()
    }

    /// [`invalidate_with`](Self::invalidate_with) of every key that `covers` (a namespace, or
    /// everything): `apply` runs with every shard locked.
    pub fn invalidate_where<R>(
        &self,
        covers: impl Fn(&Key) -> bool,
        apply: impl FnOnce() -> R,
    ) -> R {
        let mut shards: Vec<MutexGuard<'_, Shard>> =
            self.shards.iter().map(|shard| locked(shard)).collect();
        for shard in &mut shards {
            for (key, slot) in shard.iter_mut() {
                if covers(key) {
                    slot.version += 1;
                }
            }
        }
        apply()
    }

    /// Keys with tickets alive: the in-flight bookkeeping, zero when the cache is idle.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| locked(s).len()).sum()
    }

    fn clearing(&self, key: &Key) -> bool {
        self.clearing.load(Ordering::Acquire) > 0
            && locked(&self.clears).iter().any(|(_, ns)| ns.contains(key))
    }

    fn release(&self, key: &Key, finish_write: bool, apply: impl FnOnce()) {
        release_in(&mut locked(self.shard(key)), key, finish_write, apply);
    }
}

/// [`Versions::release`] under the shard's lock, held by the caller.
fn release_in(shard: &mut Shard, key: &Key, finish_write: bool, apply: impl FnOnce()) {
    let remove = match shard.get_mut(key) {
        Some(slot) => {
            if finish_write {
                slot.writing = slot.writing.saturating_sub(1);
                slot.version += 1;
                apply();
            }
            slot.holders = slot.holders.saturating_sub(1);
            slot.holders == 0
        }
        None => false,
    };
    if remove {
        shard.remove(key);
    }
}

fn bump_namespace(shard: &mut Shard, namespace: &Namespace) {
    for (key, slot) in shard.iter_mut() {
        if namespace.contains(key) {
            slot.version += 1;
        }
    }
}

/// The right of a load of one key to store what it read; see [`Versions::begin`]. Dropping it
/// releases the key's slot.
pub struct Ticket {
    versions: Arc<Versions>,
    key: Key,
    version: u64,
    /// Set by [`Ticket::commit_last`], which releases the slot itself.
    released: bool,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.key)
            .field("version", &self.version)
            .finish()
    }
}

impl Ticket {
    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Runs `store` under the key's lock if no write, delete or clear of the key began since the
    /// ticket was taken (and none is landing); `None` when one did (the value must not be stored).
    pub fn commit<R>(&self, store: impl FnOnce() -> R) -> Option<R> {
        let shard = locked(self.versions.shard(&self.key));
        let out = self.is_current_in(&shard).then(store);
        drop(shard);
        out
    }

    /// [`commit`](Self::commit) and release the ticket under the same lock: for the last store a
    /// load makes (one lock instead of two).
    pub fn commit_last<R>(mut self, store: impl FnOnce() -> R) -> Option<R> {
        self.released = true;
        let mut shard = locked(self.versions.shard(&self.key));
        let out = self.is_current_in(&shard).then(store);
        release_in(&mut shard, &self.key, false, || ());
        out
    }

    /// Whether a store may happen now, under the shard's lock held by the caller.
    fn is_current_in(&self, shard: &Shard) -> bool {
        shard
            .get(&self.key)
            .is_some_and(|slot| slot.version == self.version && slot.writing == 0)
            && !self.versions.clearing(&self.key)
    }

    /// Whether a [`commit`](Self::commit) would store now.
    pub fn is_current(&self) -> bool {
        self.commit(|| ()).is_some()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.released {
            self.versions.release(&self.key, false, || ());
        }
    }
}

/// A write of one key in progress; see [`Versions::begin_write_with`]. Loads of the key cannot
/// store until it [finishes](Self::finish) (dropping it finishes it too, so a cancelled write never
/// blocks its key).
pub struct WriteTicket {
    versions: Arc<Versions>,
    key: Key,
    finished: bool,
}

impl fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTicket")
            .field("key", &self.key)
            .finish()
    }
}

impl WriteTicket {
    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The write reached every tier: loads may store again, except those that began while it was
    /// landing (they may have read the value it replaced). `apply` runs under the key's lock.
    pub fn finish(mut self, apply: impl FnOnce()) {
        self.finished = true;
        self.versions.release(&self.key, true, apply);
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        if !self.finished {
            self.versions.release(&self.key, true, || ());
        }
    }
}

/// A clear of one namespace in progress; see [`Versions::begin_clear`].
pub struct ClearTicket {
    versions: Arc<Versions>,
    namespace: Namespace,
    id: u64,
    finished: bool,
}

impl fmt::Debug for ClearTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClearTicket")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl ClearTicket {
    /// The clear reached every tier; `apply` runs with every shard locked.
    pub fn finish(mut self, apply: impl FnOnce()) {
        self.finished = true;
        self.end(apply);
    }

    fn end(&self, apply: impl FnOnce()) {
        let versions = &self.versions;
        let mut shards: Vec<MutexGuard<'_, Shard>> =
            versions.shards.iter().map(|shard| locked(shard)).collect();
        for shard in &mut shards {
            bump_namespace(shard, &self.namespace);
        }
        locked(&versions.clears).retain(|(id, _)| *id != self.id);
        versions.clearing.fetch_sub(1, Ordering::AcqRel);
        apply();
    }
}

impl Drop for ClearTicket {
    fn drop(&mut self) {
        if !self.finished {
            self.end(|| ());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::KeySpace;

    fn key(id: &str) -> Key {
        Key::new(id).unwrap()
    }

    #[test]
    fn commit_last_stores_once_and_releases_the_slot() {
        let v = Arc::new(Versions::new());
        let (a, b) = (key("a"), key("b"));
        // Alone: it stores, and the table is empty afterwards.
        assert_eq!(v.begin(&a).commit_last(|| 1), Some(1));
        assert_eq!(v.tracked(), 0);
        // Beside another load of the key: it stores, the other's slot stays.
        let other = v.begin(&b);
        assert_eq!(v.begin(&b).commit_last(|| 2), Some(2));
        assert_eq!(v.tracked(), 1);
        drop(other);
        assert_eq!(v.tracked(), 0);
        // After a write began: no store, and still released.
        let load = v.begin(&a);
        v.begin_write(&a).finish(|| ());
        assert_eq!(load.commit_last(|| 3), None);
        assert_eq!(v.tracked(), 0);
    }

    #[test]
    fn a_write_that_began_after_a_load_wins() {
        let v = Arc::new(Versions::new());
        let load = v.begin(&key("a"));
        assert!(load.is_current());
        let write = v.begin_write(&key("a"));
        assert!(!load.is_current());
        write.finish(|| ());
        assert_eq!(load.commit(|| 1), None);
    }

    #[test]
    fn loads_that_began_while_a_write_was_landing_may_not_store() {
        let v = Arc::new(Versions::new());
        let write = v.begin_write(&key("a"));
        let during = v.begin(&key("a"));
        assert!(!during.is_current(), "no store while the write lands");
        write.finish(|| ());
        assert!(!during.is_current(), "it may have read the replaced value");
        let after = v.begin(&key("a"));
        assert_eq!(after.commit(|| 7), Some(7));
    }

    #[test]
    fn other_keys_are_not_disturbed() {
        let v = Arc::new(Versions::new());
        let load = v.begin(&key("b"));
        v.begin_write(&key("a")).finish(|| ());
        assert!(load.is_current());
    }

    #[test]
    fn conditional_writes_lose_to_writes_that_began_since() {
        let v = Arc::new(Versions::new());
        let first = v.begin(&key("a"));
        let second = v.begin(&key("a"));
        let (w1, stored1) = v.begin_write_after(&first, |current, w| (w, current));
        w1.finish(|| ());
        let (w2, stored2) = v.begin_write_after(&second, |current, w| (w, current));
        w2.finish(|| ());
        assert!(stored1);
        assert!(!stored2, "the second must remove, not store");
    }

    #[test]
    fn clears_stop_loads_of_their_namespace_only() {
        let v = Arc::new(Versions::new());
        let ns = KeySpace::new("app").unwrap().namespace("users").unwrap();
        let other = KeySpace::new("app").unwrap().namespace("orders").unwrap();
        let inside = v.begin(&ns.key("1").unwrap());
        let outside = v.begin(&other.key("1").unwrap());
        let clear = v.begin_clear(&ns, || ());
        let during = v.begin(&ns.key("2").unwrap());
        assert!(!inside.is_current());
        assert!(!during.is_current());
        assert!(outside.is_current());
        clear.finish(|| ());
        assert!(!during.is_current());
        assert!(v.begin(&ns.key("3").unwrap()).is_current());
    }

    #[test]
    fn the_table_is_empty_once_tickets_are_gone() {
        let v = Arc::new(Versions::new());
        let tickets: Vec<Ticket> = (0..100).map(|i| v.begin(&key(&i.to_string()))).collect();
        let write = v.begin_write(&key("5"));
        assert_eq!(v.tracked(), 100);
        drop(tickets);
        assert_eq!(v.tracked(), 1);
        drop(write);
        assert_eq!(v.tracked(), 0);
    }
}
