//! Bulk reads and warm-up through the same pipeline as single reads: the hit layer per key, one L2
//! MGET for the L1 misses, then one `load_many` for the keys still missing, each key a flight of
//! its own (joinable by single reads), under the hard timeout, with fail-safe per key, stored
//! through the version table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use layercache_core::{EntryOptions, Error, Key, Loader, Result, Ticket};

use crate::loaded::from_loader;
use crate::pipeline::{Runtime, Served, bounded};
use crate::tiers::Stored;

/// The default number of keys per batch of [`TieredCache::warm`](crate::TieredCache::warm).
pub const DEFAULT_WARM_BATCH: usize = 100;
/// The default number of batches [`TieredCache::warm`](crate::TieredCache::warm) runs at once.
pub const DEFAULT_WARM_CONCURRENCY: usize = 4;

/// What warming one key did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum WarmOutcome {
    /// The key holds a value now (loaded, or already cached and fresh).
    Loaded,
    /// The source has no value for the key.
    Absent,
    /// The load failed.
    Failed(Error),
}

/// The per-item report of [`TieredCache::warm`](crate::TieredCache::warm), in the order the keys
/// were given.
#[derive(Clone, Debug)]
pub struct WarmReport {
    /// Each key with what happened to it.
    pub items: Vec<(Key, WarmOutcome)>,
}

impl WarmReport {
    /// How many keys hold a value now.
    pub fn loaded(&self) -> usize {
        self.count(|o| matches!(o, WarmOutcome::Loaded))
    }

    /// How many keys the source does not have.
    pub fn absent(&self) -> usize {
        self.count(|o| matches!(o, WarmOutcome::Absent))
    }

    /// The keys that failed, with their errors.
    pub fn failed(&self) -> impl Iterator<Item = (&Key, &Error)> {
        self.items
            .iter()
            .filter_map(|(key, outcome)| match outcome {
                WarmOutcome::Failed(error) => Some((key, error)),
                _ => None,
            })
    }

    fn count(&self, f: impl Fn(&WarmOutcome) -> bool) -> usize {
        self.items.iter().filter(|(_, o)| f(o)).count()
    }
}

impl<V: Clone + Send + Sync + 'static> Runtime<V> {
    /// Each key's value or error, in order.
    pub(crate) async fn get_many_each<L>(
        self: &Arc<Self>,
        keys: &[Key],
        options: &EntryOptions,
        loader: &Arc<L>,
    ) -> Vec<Result<Option<V>>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let counters = &self.tiers.counters;
        let mut out: Vec<Option<Result<Option<V>>>> = keys.iter().map(|_| None).collect();
        let mut previous: HashMap<Key, Stored<V>> = HashMap::new();
        let mut missing: Vec<usize> = Vec::new();
        let now = self.now();
        for (i, key) in keys.iter().enumerate() {
            match self.tiers.l1_entry_at(key, now) {
                Some(entry) if entry.meta.is_fresh(now) => {
                    counters.bump_l1_hits();
                    self.on_hit(key, &entry, options, now, || {
                        from_loader(Arc::clone(loader))
                    });
                    out[i] = Some(Ok(entry.value));
                }
                found => {
                    if self.tiers.l1.is_some() {
                        counters.bump_l1_misses();
                    }
                    if let Some(stale) = found {
                        previous.insert(key.clone(), stale);
                    }
                    missing.push(i);
                }
            }
        }
        if !missing.is_empty() {
            let missing_keys: Vec<Key> = missing.iter().map(|&i| keys[i].clone()).collect();
            let results = self
                .miss_many(&missing_keys, options, previous, loader)
                .await;
            for (i, result) in missing.into_iter().zip(results) {
                out[i] = Some(result);
            }
        }
        out.into_iter()
            .map(|slot| slot.unwrap_or_else(|| Err(Error::loader("a bulk read lost a key"))))
            .collect()
    }

    /// The keys L1 could not answer: one L2 read, then one batched load of the rest.
    async fn miss_many<L>(
        self: &Arc<Self>,
        keys: &[Key],
        options: &EntryOptions,
        mut previous: HashMap<Key, Stored<V>>,
        loader: &Arc<L>,
    ) -> Vec<Result<Option<V>>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let counters = &self.tiers.counters;
        let mut tickets: HashMap<Key, Ticket> = keys
            .iter()
            .map(|key| (key.clone(), self.tiers.versions.begin(key)))
            .collect();
        let found = self.tiers.l2_entries(keys).await;
        let now = self.now();
        let mut out: Vec<Option<Result<Option<V>>>> = keys.iter().map(|_| None).collect();
        let mut to_load: Vec<Key> = Vec::new();
        for (i, (key, entry)) in keys.iter().zip(found).enumerate() {
            let seen_created = previous.get(key).map(|p| p.meta.created_at);
            match entry {
                Some(entry)
                    if entry.meta.is_fresh(now)
                        && seen_created.is_none_or(|seen| entry.meta.created_at > seen) =>
                {
                    if let Some(ticket) = tickets.get(key) {
                        self.tiers.refill(ticket, &entry, now);
                    }
                    counters.bump_hits();
                    out[i] = Some(Ok(entry.value));
                }
                Some(entry) if !entry.meta.is_expired(now) => {
                    if seen_created.is_none_or(|seen| entry.meta.created_at > seen) {
                        previous.insert(key.clone(), entry);
                    }
                    to_load.push(key.clone());
                }
                _ => to_load.push(key.clone()),
            }
        }
        if !to_load.is_empty() {
            let batch_previous: HashMap<Key, Stored<V>> = to_load
                .iter()
                .filter_map(|key| previous.remove(key).map(|p| (key.clone(), p)))
                .collect();
            let batch_tickets: HashMap<Key, Ticket> = to_load
                .iter()
                .filter_map(|key| tickets.remove(key).map(|t| (key.clone(), t)))
                .collect();
            let runtime = Arc::clone(self);
            let (options_owned, loader) = (options.clone(), Arc::clone(loader));
            let led_counts = Arc::new(std::sync::Mutex::new(Vec::new()));
            let led_record = Arc::clone(&led_counts);
            let outcomes = self
                .flights
                .run_many(&to_load, move |led| {
                    if let Ok(mut record) = led_record.lock() {
                        record.clone_from(&led);
                    }
                    runtime.load_batch(led, options_owned, batch_previous, batch_tickets, loader)
                })
                .await;
            let led: Vec<Key> = led_counts.lock().map(|l| l.clone()).unwrap_or_default();
            let mut by_key: HashMap<&Key, Result<Served<V>>> = HashMap::new();
            for (key, outcome) in to_load.iter().zip(outcomes) {
                by_key.insert(key, outcome);
            }
            for (i, key) in keys.iter().enumerate() {
                if out[i].is_some() {
                    continue;
                }
                let outcome = match by_key.get(key) {
                    Some(outcome) => outcome.clone(),
                    None => Err(Error::loader("a bulk read lost a key")),
                };
                out[i] = Some(outcome.map(|served| {
                    served.count(led.contains(key), counters);
                    served.value
                }));
            }
        }
        out.into_iter()
            .map(|slot| slot.unwrap_or_else(|| Err(Error::loader("a bulk read lost a key"))))
            .collect()
    }

    /// The leader's work of a bulk read: one `load_many` under the hard timeout, stored through
    /// each key's ticket; on failure, fail-safe per key.
    async fn load_batch<L>(
        self: Arc<Self>,
        keys: Vec<Key>,
        options: EntryOptions,
        previous: HashMap<Key, Stored<V>>,
        tickets: HashMap<Key, Ticket>,
        loader: Arc<L>,
    ) -> Vec<Result<Served<V>>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let counters = &self.tiers.counters;
        counters.bump_loads();
        let began = (self.now(), Instant::now());
        let loaded = bounded(options.hard_timeout(), loader.load_many(&keys), || {
            format!("loading a batch of {} keys", keys.len())
        })
        .await;
        self.tiers.latency.load_result(began.1, &loaded);
        let loaded = loaded.and_then(|values| {
            if values.len() == keys.len() {
                Ok(values)
            } else {
                Err(Error::loader(format!(
                    "load_many of {} keys returned {} values",
                    keys.len(),
                    values.len()
                )))
            }
        });
        let mut out = Vec::with_capacity(keys.len());
        match loaded {
            Ok(values) => {
                for (key, value) in keys.iter().zip(values) {
                    let ticket = tickets.get(key);
                    if let (Some(ticket), Some(entry)) = (
                        ticket,
                        self.entry_for(key, value.clone(), None, &options, began),
                    ) {
                        self.tiers.store(ticket, entry).await;
                    }
                    out.push(Ok(Served::loaded(value)));
                }
            }
            Err(error) => {
                counters.bump_load_errors();
                for key in &keys {
                    let fail_safe = self.fail_safe_entry(&options, previous.get(key));
                    let outcome = match (fail_safe, tickets.get(key)) {
                        (Some(entry), Some(ticket)) => {
                            let value = entry.value.clone();
                            self.tiers.store(ticket, entry).await;
                            Ok(Served::stale(value))
                        }
                        _ => Err(error.clone()),
                    };
                    out.push(outcome);
                }
            }
        }
        out
    }
}
