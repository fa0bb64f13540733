//! The durable queue: a [`WriteJournal`] read by this worker as one consumer of a group.
//!
//! `put` appends before it returns. The worker takes over stale entries (at start, then every
//! claim interval), reads new ones in batches, writes them, and acknowledges only written (or,
//! with `keep_failed(false)`, dead-lettered) entries. Entries it dead-letters stay pending and come
//! back through a claim, unless a newer write of the same key, read after them, was written first:
//! then they are acknowledged as superseded, so a retried old value never overwrites a newer one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use layercache_core::{
    Error, JournalOp, JournalRecord, Key, PayloadCodec, Result, Timestamp, WriteJournal,
};
use tokio::time::Instant;

use super::batch::{self, Item};
use super::{
    AsyncCheck, DEFAULT_CLAIM_IDLE, DEFAULT_CLAIM_INTERVAL, DEFAULT_READ_BLOCK, Op, QueueFull,
    Shared, WhenFull, add, lock,
};

/// How often a full durable queue, or a flush, looks at the journal again.
const POLL: Duration = Duration::from_millis(20);
/// The longest pause after a failed journal call of the worker.
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(2);
/// The depth before the journal was first looked at: the first write looks.
const UNKNOWN: u64 = u64::MAX;
/// Attempts to acknowledge a batch before leaving it to a later claim.
const ACK_ATTEMPTS: u32 = 3;

/// The durable-only settings of a builder, kept whether or not a journal is set yet.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) consumer: String,
    pub(super) claim_idle: Duration,
    pub(super) claim_interval: Duration,
    pub(super) read_block: Duration,
    pub(super) keep_failed: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            consumer: format!("wb-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            claim_idle: DEFAULT_CLAIM_IDLE,
            claim_interval: DEFAULT_CLAIM_INTERVAL,
            read_block: DEFAULT_READ_BLOCK,
            keep_failed: true,
        }
    }
}

impl Settings {
    pub(super) fn check(&self) -> Result<()> {
        if self.consumer.is_empty() {
            return Err(Error::config(
                "the write-behind consumer name must not be empty",
            ));
        }
        if self.claim_idle.is_zero() || self.claim_interval.is_zero() {
            return Err(Error::config(
                "write-behind claim idle and claim interval must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// The journal, its codec and the durable settings.
pub(super) struct Config<V> {
    journal: Arc<dyn WriteJournal>,
    codec: Arc<dyn PayloadCodec<V>>,
    consumer: String,
    claim_idle: Duration,
    claim_interval: Duration,
    read_block: Duration,
    keep_failed: bool,
}

impl<V> Config<V> {
    pub(super) fn new(
        journal: Arc<dyn WriteJournal>,
        codec: Arc<dyn PayloadCodec<V>>,
        settings: Settings,
    ) -> Self {
        Config {
            journal,
            codec,
            consumer: settings.consumer,
            claim_idle: settings.claim_idle,
            claim_interval: settings.claim_interval,
            read_block: settings.read_block,
            keep_failed: settings.keep_failed,
        }
    }
}

/// Entries this worker dead-lettered and keeps pending.
#[derive(Default)]
struct DeadSet {
    ids: HashMap<String, Key>,
    by_key: HashMap<Key, Vec<String>>,
}

impl DeadSet {
    fn insert(&mut self, key: Key, ids: Vec<String>) {
        for id in &ids {
            self.ids.insert(id.clone(), key.clone());
        }
        self.by_key.entry(key).or_default().extend(ids);
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn remove_ids(&mut self, ids: &[String]) {
        for id in ids {
            let Some(key) = self.ids.remove(id) else {
                continue;
            };
            if let Some(of_key) = self.by_key.get_mut(&key) {
                of_key.retain(|i| i != id);
                if of_key.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// The dead entries of `key`, forgotten.
    fn take_key(&mut self, key: &Key) -> Vec<String> {
        let ids = self.by_key.remove(key).unwrap_or_default();
        for id in &ids {
            self.ids.remove(id);
        }
        ids
    }
}

/// See the module docs.
pub(super) struct Durable<V> {
    config: Config<V>,
    /// Entries not yet acknowledged: as of the last look at the journal, plus those appended
    /// since; `UNKNOWN` until the first look.
    depth: AtomicU64,
    /// When the oldest of them was appended, as of the worker's last look.
    oldest: Mutex<Option<Timestamp>>,
    dead: Mutex<DeadSet>,
}

fn now_millis() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    Timestamp::from_millis(ms)
}

impl<V> Durable<V>
where
    V: Send + Sync + 'static,
{
    pub(super) fn new(config: Config<V>) -> Self {
        Durable {
            config,
            depth: AtomicU64::new(UNKNOWN),
            oldest: Mutex::new(None),
            dead: Mutex::new(DeadSet::default()),
        }
    }

    async fn refresh(&self) -> Result<layercache_core::JournalBacklog> {
        let backlog = self.config.journal.backlog().await?;
        self.depth.store(backlog.entries, Ordering::Relaxed);
        *lock(&self.oldest) = backlog.oldest;
        Ok(backlog)
    }

    /// Appends `op` for `key` to the journal, after waiting for space or refusing as configured.
    /// `accepted` is set before the append: once it is sent, it may have landed.
    pub(super) async fn accept(
        &self,
        shared: &Shared<V>,
        key: &Key,
        op: Op<V>,
        accepted: &mut bool,
    ) -> Result<()> {
        let capacity = shared.settings.capacity as u64;
        if self.depth.load(Ordering::Relaxed) >= capacity {
            self.wait_for_space(shared, capacity).await?;
        }
        let (op, payload) = match op {
            Op::Put(value) => (JournalOp::Put, self.config.codec.encode_payload(&value)?),
            Op::Delete => (JournalOp::Delete, Vec::new()),
        };
        *accepted = true;
        self.config.journal.append(key, op, &payload).await?;
        let _ = self
            .depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_add(1))
            });
        Ok(())
    }

    async fn wait_for_space(&self, shared: &Shared<V>, capacity: u64) -> Result<()> {
        let full = QueueFull {
            capacity: shared.settings.capacity,
        };
        let deadline = match shared.settings.when_full {
            WhenFull::Wait { max: Some(max) } => Instant::now().checked_add(max),
            _ => None,
        };
        loop {
            if self.refresh().await?.entries < capacity {
                return Ok(());
            }
            match (shared.settings.when_full, deadline) {
                (WhenFull::Reject, _) => {
                    add(&shared.counters.rejected, 1);
                    return Err(Error::unavailable(full.to_string())
                        .with_source(full)
                        .set_temporary(true));
                }
                (_, Some(deadline)) if Instant::now() >= deadline => {
                    add(&shared.counters.rejected, 1);
                    return Err(Error::timeout(full.to_string()).with_source(full));
                }
                _ => {
                    let progress = shared.progress.notified();
                    let _ = tokio::time::timeout(POLL, progress).await;
                }
            }
        }
    }

    /// Waits until every entry in the journal at the call is acknowledged, or dead-lettered by
    /// this worker and kept pending.
    pub(super) async fn flush(&self, shared: &Shared<V>) -> Result<()> {
        let Some(upto) = self.refresh().await?.last_id else {
            return Ok(());
        };
        struct Settled<'a, V> {
            durable: &'a Durable<V>,
            upto: String,
        }
        impl<V: Send + Sync + 'static> AsyncCheck for Settled<'_, V> {
            async fn check(&mut self) -> Result<bool> {
                let limit = lock(&self.durable.dead).len() + 1;
                let ids = self
                    .durable
                    .config
                    .journal
                    .unacked(&self.upto, limit)
                    .await?;
                let dead = lock(&self.durable.dead);
                Ok(ids.iter().all(|id| dead.contains(id)))
            }
        }
        shared
            .wait_for(
                Some(POLL),
                Settled {
                    durable: self,
                    upto,
                },
            )
            .await
    }

    pub(super) fn depth_and_lag(&self, _shared: &Shared<V>) -> (u64, Duration) {
        let depth = match self.depth.load(Ordering::Relaxed) {
            UNKNOWN => 0,
            depth => depth,
        };
        let lag = match *lock(&self.oldest) {
            Some(oldest) if depth > 0 => now_millis().saturating_since(oldest),
            _ => Duration::ZERO,
        };
        (depth, lag)
    }

    fn journal_error(&self, shared: &Shared<V>, what: &str, error: &Error) {
        add(&shared.counters.journal_errors, 1);
        tracing::warn!(%error, consumer = %self.config.consumer, "write-behind: journal {what} failed");
    }

    pub(super) async fn run(&self, shared: &Arc<Shared<V>>) {
        let s = &shared.settings;
        let c = &self.config;
        let mut buffer: Vec<JournalRecord> = Vec::new();
        let mut buffer_since: Option<Instant> = None;
        let mut next_claim = Instant::now();
        let mut pause = Duration::ZERO;
        loop {
            if shared.closing.load(Ordering::SeqCst) {
                if !buffer.is_empty() {
                    self.process(shared, std::mem::take(&mut buffer), true)
                        .await;
                }
                return;
            }
            if !pause.is_zero() {
                let wake = shared.wake.notified();
                let _ = tokio::time::timeout(pause, wake).await;
            }
            let now = Instant::now();
            if buffer.is_empty() && now >= next_claim {
                match c
                    .journal
                    .claim_stale(&c.consumer, c.claim_idle, s.batch_size)
                    .await
                {
                    Ok(records) => {
                        pause = Duration::ZERO;
                        let more = records.len() >= s.batch_size;
                        if !more {
                            next_claim = now + c.claim_interval;
                        }
                        if !records.is_empty() {
                            add(&shared.counters.claimed, records.len() as u64);
                            tracing::info!(consumer = %c.consumer, entries = records.len(), "write-behind: took over stale journal entries");
                            self.process(shared, records, false).await;
                        }
                    }
                    Err(error) => {
                        self.journal_error(shared, "claim", &error);
                        next_claim = now + c.claim_interval;
                        pause = (pause * 2).clamp(POLL, MAX_ERROR_PAUSE);
                    }
                }
                continue;
            }
            let block = match buffer_since {
                Some(since) => (since + s.max_delay).saturating_duration_since(now),
                None => c
                    .read_block
                    .min(next_claim.saturating_duration_since(now))
                    .max(Duration::from_millis(1)),
            };
            let want = s.batch_size.saturating_sub(buffer.len());
            match c.journal.read(&c.consumer, want, block).await {
                Ok(records) => {
                    pause = Duration::ZERO;
                    if !records.is_empty() && buffer.is_empty() {
                        buffer_since = Some(Instant::now());
                    }
                    buffer.extend(records);
                }
                Err(error) => {
                    self.journal_error(shared, "read", &error);
                    pause = (pause * 2).clamp(POLL, MAX_ERROR_PAUSE);
                }
            }
            let due = buffer_since.is_some_and(|since| since.elapsed() >= s.max_delay);
            if buffer.len() >= s.batch_size || (due && !buffer.is_empty()) {
                buffer_since = None;
                self.process(shared, std::mem::take(&mut buffer), true)
                    .await;
            }
        }
    }

    /// Writes `records` (coalesced per key, the last one wins) and acknowledges what is done.
    /// `fresh`: read as new entries (not taken over), so newer than every entry read before.
    async fn process(&self, shared: &Arc<Shared<V>>, records: Vec<JournalRecord>, fresh: bool) {
        let c = &self.config;
        let mut done: Vec<String> = Vec::new();
        let mut index: HashMap<Key, usize> = HashMap::new();
        let mut items: Vec<Item<V, Vec<String>>> = Vec::new();
        for record in records {
            let op = match record.op {
                JournalOp::Put => match c.codec.decode_payload(&record.payload) {
                    Ok(value) => Op::Put(value),
                    Err(error) => {
                        add(&shared.counters.undecodable, 1);
                        tracing::error!(key = %record.key, id = %record.id, %error, "write-behind: journal entry does not decode; dropped");
                        done.push(record.id);
                        continue;
                    }
                },
                JournalOp::Delete => Op::Delete,
                _ => {
                    add(&shared.counters.undecodable, 1);
                    tracing::error!(key = %record.key, id = %record.id, "write-behind: unknown journal op; dropped");
                    done.push(record.id);
                    continue;
                }
            };
            match index.get(&record.key) {
                Some(&i) => {
                    add(&shared.counters.coalesced, 1);
                    items[i].op = op;
                    items[i].tag.push(record.id);
                }
                None => {
                    index.insert(record.key.clone(), items.len());
                    items.push(Item {
                        key: record.key,
                        op,
                        tag: vec![record.id],
                    });
                }
            }
        }
        let fresh_keys: Vec<Key> = if fresh {
            items.iter().map(|i| i.key.clone()).collect()
        } else {
            Vec::new()
        };
        let outcome = batch::write(shared, items).await;
        {
            let mut dead = lock(&self.dead);
            let failed_keys: HashSet<&Key> = outcome.failed.iter().map(|(k, _)| k).collect();
            // Older dead entries of a key just written with a newer value are superseded.
            for key in fresh_keys.iter().filter(|k| !failed_keys.contains(k)) {
                done.extend(dead.take_key(key));
            }
            for ids in outcome.written {
                dead.remove_ids(&ids);
                done.extend(ids);
            }
            for (key, ids) in outcome.failed {
                if c.keep_failed {
                    dead.insert(key, ids);
                } else {
                    done.extend(ids);
                }
            }
        }
        self.ack(shared, &done).await;
        if let Err(error) = self.refresh().await {
            self.journal_error(shared, "backlog", &error);
        }
        shared.progress.notify_waiters();
    }

    async fn ack(&self, shared: &Shared<V>, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        for attempt in 1..=ACK_ATTEMPTS {
            match self.config.journal.ack(ids).await {
                Ok(_) => return,
                Err(error) => {
                    self.journal_error(shared, "ack", &error);
                    if attempt < ACK_ATTEMPTS {
                        tokio::time::sleep(POLL * attempt).await;
                    }
                }
            }
        }
        tracing::warn!(
            entries = ids.len(),
            "write-behind: entries written but not acknowledged; a later claim writes them again"
        );
    }
}
