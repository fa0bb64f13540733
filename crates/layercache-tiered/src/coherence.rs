//! Coherence across instances (ADR 0012): what this cache tells the other instances, what it does
//! with what they tell it, and when tags were invalidated.
//!
//! - **Sending**: a write, delete, clear or tag invalidation queues an [`Invalidation`] once L2
//!   has it; one publisher task sends what is queued as one batch (no waiting to fill a batch:
//!   under load, batches grow by themselves).
//! - **Receiving** (the [`InvalidationSink`] of [`Runtime`]): another instance's key or namespace
//!   is invalidated like a local write (the version table refuses older loads' stores; the flight
//!   is detached; L1 drops it), a tag or namespace is recorded in [`Epochs`], and `All` flushes L1.
//! - **Disconnected**: L1 is flushed and new entries are capped at the disconnected TTL; on
//!   reconnect L1 is flushed again (messages may have been missed) and the cap lifted.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use layercache_core::{
    EntryMeta, Invalidation, InvalidationBatch, InvalidationSink, InvalidationTransport, Key,
    Namespace, SharedClock, Timestamp,
};
use tokio::sync::mpsc;

use crate::pipeline::Runtime;
use crate::stats::Counters;

/// The most tag invalidation times kept; past it the oldest tenth is forgotten.
pub const MAX_TAG_EPOCHS: usize = 100_000;
/// The most namespace clear times kept; past it the oldest is forgotten.
pub const MAX_NAMESPACE_EPOCHS: usize = 1_024;
/// The most invalidations queued for the publisher; a write waits for room past it.
pub(crate) const OUTBOX: usize = 10_000;
/// The most invalidations in one published batch.
const BATCH: usize = 512;

/// When tags and namespaces were invalidated. An entry created at or before the invalidation of
/// one of its tags, or of its namespace, is dead in L2: reads skip it and a load's store of it is
/// dropped. (L1 needs no check: an invalidation removes what L1 holds, under the version table's
/// locks, so no store slips in behind it.)
#[derive(Debug, Default)]
pub(crate) struct Epochs {
    /// Set once anything was invalidated: until then reads do not look further.
    any: AtomicBool,
    tags: RwLock<HashMap<Arc<str>, Timestamp>>,
    namespaces: RwLock<Vec<(Namespace, Timestamp)>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Epochs {
    /// Whether `entry` of `key` was created at or before an invalidation of one of its tags or
    /// of its namespace.
    pub(crate) fn invalidate(&self, key: &Key, meta: &EntryMeta) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let by_tag = !meta.tags.is_empty() && {
            let tags = read(&self.tags);
            meta.tags.as_slice().iter().any(|tag| {
                tags.get(tag.as_str())
                    .is_some_and(|at| meta.created_at <= *at)
            })
        };
        by_tag
            || read(&self.namespaces)
                .iter()
                .any(|(namespace, at)| meta.created_at <= *at && namespace.contains(key))
    }

    /// Records that `tag` was invalidated at `at` (a later time wins).
    pub(crate) fn tag(&self, tag: Arc<str>, at: Timestamp) {
        let mut tags = write(&self.tags);
        if tags.len() >= MAX_TAG_EPOCHS && !tags.contains_key(&tag) {
            let mut times: Vec<Timestamp> = tags.values().copied().collect();
            times.sort_unstable();
            let cutoff = times[times.len() / 10];
            tags.retain(|_, t| *t > cutoff);
        }
        let slot = tags.entry(tag).or_insert(at);
        *slot = (*slot).max(at);
        self.any.store(true, Ordering::Release);
    }

    /// Records that `namespace` was cleared at `at` (a later time wins).
    pub(crate) fn namespace(&self, namespace: &Namespace, at: Timestamp) {
        let mut namespaces = write(&self.namespaces);
        match namespaces.iter_mut().find(|(ns, _)| ns == namespace) {
            Some((_, when)) => *when = (*when).max(at),
            None => {
                if namespaces.len() >= MAX_NAMESPACE_EPOCHS {
                    namespaces.sort_unstable_by_key(|(_, at)| std::cmp::Reverse(*at));
                    namespaces.truncate(MAX_NAMESPACE_EPOCHS - 1);
                }
                namespaces.push((namespace.clone(), at));
            }
        }
        self.any.store(true, Ordering::Release);
    }
}

/// A cache's side of its invalidation transport.
pub(crate) struct Coherence {
    pub(crate) transport: Arc<dyn InvalidationTransport>,
    pub(crate) origin: u64,
    /// The publisher's queue (`None`: the transport needs no publishing).
    outbox: Option<mpsc::Sender<Invalidation>>,
    /// Invalidations queued and not yet published (or given up), and a signal when none are.
    pending: Arc<Pending>,
    /// The cap on L1 entries while the transport is disconnected.
    pub(crate) disconnected_ttl: Duration,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) name: Arc<str>,
}

impl std::fmt::Debug for Coherence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coherence")
            .field("transport", &self.transport)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A random instance id.
fn instance_id() -> u64 {
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl Coherence {
    /// Starts the publisher task (within a tokio runtime).
    pub(crate) fn start(
        transport: Arc<dyn InvalidationTransport>,
        disconnected_ttl: Duration,
        name: Arc<str>,
        clock: SharedClock,
        counters: Arc<Counters>,
    ) -> Self {
        let origin = instance_id();
        let pending = Arc::new(Pending::default());
        let outbox = transport.publishes().then(|| {
            let (outbox, inbox) = mpsc::channel(OUTBOX);
            tokio::spawn(publish_loop(
                Arc::clone(&transport),
                origin,
                inbox,
                clock,
                counters,
                Arc::clone(&pending),
            ));
            outbox
        });
        Coherence {
            transport,
            origin,
            outbox,
            pending,
            disconnected_ttl,
            name,
        }
    }

    /// Waits until every queued invalidation was published (or given up), at most `timeout`;
    /// returns how many are still queued.
    pub(crate) async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let idle = self.pending.idle.notified();
            let left = self.pending.count.load(Ordering::Acquire);
            if left == 0 {
                return 0;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, idle).await.is_err() {
                        return self.pending.count.load(Ordering::Acquire);
                    }
                }
                None => idle.await,
            }
        }
    }

    /// Queues `item` for the other instances (waits only while the queue is full).
    pub(crate) async fn publish(&self, item: Invalidation) {
        let Some(outbox) = &self.outbox else { return };
        self.pending.count.fetch_add(1, Ordering::AcqRel);
        if outbox.send(item).await.is_err() {
            self.pending.done(1);
            tracing::warn!("the invalidation publisher is gone; other instances are not told");
        }
    }
}

/// Invalidations queued and not yet published.
#[derive(Debug, Default)]
struct Pending {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Pending {
    fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }
}

/// Sends what is queued, one batch at a time, until the cache is gone.
async fn publish_loop(
    transport: Arc<dyn InvalidationTransport>,
    origin: u64,
    mut inbox: mpsc::Receiver<Invalidation>,
    clock: SharedClock,
    counters: Arc<Counters>,
    pending: Arc<Pending>,
) {
    let mut items = Vec::with_capacity(BATCH);
    while inbox.recv_many(&mut items, BATCH).await > 0 {
        let batch = InvalidationBatch {
            origin,
            sent_at: clock.now(),
            items: std::mem::take(&mut items),
        };
        let mut result = transport.publish(&batch).await;
        if let Err(error) = &result {
            // One retry: a connection that just dropped is usually back.
            tracing::debug!(%error, "publishing invalidations failed; retrying once");
            result = transport.publish(&batch).await;
        }
        match result {
            Ok(()) => {
                for _ in &batch.items {
                    counters.bump_invalidations_sent();
                }
            }
            Err(error) => {
                counters.bump_invalidation_publish_failures();
                tracing::warn!(%error, items = batch.items.len(), transport = transport.name(),
                    "invalidations could not be published; other instances keep them up to their L1 cap");
            }
        }
        pending.done(batch.items.len());
    }
}

impl<V: Clone + Send + Sync + 'static> Runtime<V> {
    /// Returns once the clock has passed `at` (a millisecond at most on a real clock; a clock
    /// that does not move, in tests, is waited for a few ticks only): what is written after an
    /// invalidation returns is then newer than it, to every instance.
    pub(crate) async fn pass(&self, at: Timestamp) {
        for _ in 0..5 {
            if self.now() > at {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Drops everything L1 holds; loads under way may no longer store.
    pub(crate) fn flush_l1(&self) {
        self.flights.forget_where(|_| true);
        self.tiers.versions.invalidate_where(
            |_| true,
            || {
                if let Some(l1) = &self.tiers.l1 {
                    l1.remove_all();
                }
            },
        );
        self.tiers.counters.bump_l1_flushes();
    }

    /// Applies one invalidation made elsewhere (another instance, or this cache's tag
    /// invalidation on its own L1).
    pub(crate) fn invalidate_here(&self, item: &Invalidation) {
        let l1 = self.tiers.l1.as_ref();
        match item {
            Invalidation::Key(key) => {
                self.flights.forget(key);
                self.tiers.versions.invalidate_with(key, || {
                    l1.map(|l1| l1.remove_entry(key));
                });
                self.flights.forget(key);
            }
            Invalidation::Namespace { namespace, at } => {
                self.tiers.epochs.namespace(namespace, *at);
                self.flights.forget_where(|key| namespace.contains(key));
                self.tiers.versions.invalidate_where(
                    |key| namespace.contains(key),
                    || l1.map(|l1| l1.remove_namespace(namespace)),
                );
                self.flights.forget_where(|key| namespace.contains(key));
            }
            Invalidation::Tag { tag, at } => {
                let epochs = &self.tiers.epochs;
                epochs.tag(Arc::clone(tag), *at);
                // Any flight's value may carry the tag: callers from now on start their own, and
                // loads under way may not store in L1 (their L2 stores meet the epoch). Under
                // every lock of the version table, so no store slips in behind the scan.
                self.flights.forget_where(|_| true);
                self.tiers.versions.invalidate_where(
                    |_| true,
                    || {
                        l1.map(|l1| {
                            l1.remove_where(|key, entry| epochs.invalidate(key, &entry.meta))
                        })
                    },
                );
            }
            Invalidation::All => self.flush_l1(),
            _ => self.flush_l1(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> InvalidationSink for Runtime<V> {
    fn receive(&self, batch: InvalidationBatch) {
        #[cfg(feature = "metrics")]
        if let Some(coherence) = &self.coherence {
            let delay = self.now().saturating_since(batch.sent_at);
            metrics::histogram!("layercache_invalidation_delay_seconds",
                "cache" => coherence.name.to_string(), "transport" => coherence.transport.name())
            .record(delay.as_secs_f64());
        }
        for item in &batch.items {
            self.invalidate_here(item);
            // Counted once applied: a caller that sees the count sees the effect.
            self.tiers.counters.bump_invalidations_received();
        }
    }

    fn disconnected(&self) {
        if let (Some(l1), Some(coherence)) = (&self.tiers.l1, &self.coherence) {
            l1.cap_time_to_live(Some(coherence.disconnected_ttl));
        }
        self.flush_l1();
        tracing::warn!("the invalidation transport disconnected: L1 flushed and capped");
    }

    fn reconnected(&self) {
        self.flush_l1();
        if let Some(l1) = &self.tiers.l1 {
            l1.cap_time_to_live(None);
        }
        tracing::info!("the invalidation transport reconnected: L1 flushed");
    }
}
