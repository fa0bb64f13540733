//! A `tower_sessions::SessionStore` over the two-tier cache: [`TieredSessionStore`].
//!
//! Session records live in a [`TieredCache`] ([`SessionCache`]): in Redis (L2) with a TTL equal to
//! the session's expiry, and the hot ones in each instance's L1, so a request whose session this
//! instance served recently reads it with no Redis call.
//!
//! # Setting it up
//!
//! Give the cache Redis as L2 and an **invalidation transport** (`RedisPubSub` from
//! `layercache-redis`, or `RedisTracking`): every write and delete of a session is then published
//! and dropped from the L1 of every other instance at once, so a logout on one instance ends the
//! session on all of them. Without a transport, another instance may serve a deleted (or changed)
//! session from its L1 for as long as the cache's `l1_ttl_cap` (60 s by default): keep that cap
//! short if you run several instances without one.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use layercache_core::KeySpace;
//! use layercache_redis::RedisPubSub;
//! use layercache_tiered::TieredCache;
//! use layercache_tower::session::TieredSessionStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "redis://127.0.0.1:6379";
//! let transport = RedisPubSub::builder(url).channel("app:sessions").build()?;
//! let cache = TieredCache::builder()
//!     .name("sessions")
//!     .redis_url(url)
//!     .invalidation(transport)
//!     .build()?;
//! let store = TieredSessionStore::new(cache, KeySpace::new("app")?.namespace("session")?);
//! // tower_sessions::SessionManagerLayer::new(store)
//! //     .with_expiry(Expiry::OnInactivity(time::Duration::hours(24)))
//! //     .with_always_save(true)
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! # What each operation does
//!
//! - **`create`** stores the record only under an id that no tier holds: it reads the id (L1, then
//!   Redis) and, if a record is there, draws a new [`Id`] and tries again (at most
//!   [`MAX_CREATE_ATTEMPTS`] times, then a `Backend` error). The check and the write are two steps:
//!   two instances creating the *same* fresh 128-bit random id in the same few milliseconds would
//!   both write it. We accept that race: its odds are those of a 128-bit collision.
//! - **`load`** returns the record if a tier holds it and its expiry has not passed (by this
//!   process's clock), else `None`.
//! - **`save`** writes only when it must (see below), and never brings back a session that no tier
//!   holds any more: one deleted (a logout, perhaps on another instance) or expired since this
//!   request loaded it stays gone, as with the `SET .. XX` of a plain Redis store. The check and the
//!   write are again two steps: a delete that lands between them is undone by the write (a window
//!   of one Redis round trip).
//! - **`delete`** removes the record from L1 and Redis (where a tombstone keeps loads that began
//!   earlier from storing it again) and, with a transport, from every instance's L1.
//!
//! # Sliding expiry without a write per request
//!
//! With `Expiry::OnInactivity(ttl)`, tower-sessions computes the expiry as *now + ttl* each time it
//! saves, and with `with_always_save(true)` it saves on every request: a plain store would write
//! Redis on every request. This store compares the record to save with the one the cache holds
//! (normally an L1 hit) and **writes only if**
//! - the data changed, or
//! - the new expiry is earlier than the stored one (a shortened session), or
//! - the stored record has less than half of the new TTL left, that is
//!   `stored.expiry - now < (new.expiry - now) / 2`.
//!
//! Otherwise `save` returns `Ok` without any Redis call. So a session used at least once every
//! `ttl / 2` is written about once per `ttl / 2`, and a session is guaranteed to live at least
//! `ttl / 2` (and at most `ttl`) after its last request, whereas its cookie may say `ttl`. Set the
//! inactivity TTL to twice the shortest lifetime you promise.
//!
//! Each written record's Redis TTL (and the entry's lifetime in every tier) is its expiry minus
//! now, capped at 10 years; the cache's own entry options are not used. Saving a record whose
//! expiry has passed deletes it.
//!
//! # Errors
//!
//! The trait's error type holds only a message, so a layercache [`Error`](layercache_core::Error)
//! becomes `session_store::Error::Backend` with the operation and the error's whole text (kind,
//! message and source). Redis that cannot be reached for a read reads as a miss (the cache's
//! rule): `load` then returns `None` and the user gets a new session; writes and deletes return the
//! error.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use layercache_core::{EntryOptions, Key, Namespace, envelope::MAX_TTL};
use layercache_tiered::TieredCache;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

/// The cache a [`TieredSessionStore`] keeps its records in: one `Arc` per record, so an L1 hit
/// clones a reference count, not the session's data.
pub type SessionCache = TieredCache<Arc<Record>>;

/// How many ids `create` tries before it gives up with an error (8): each one taken is a 128-bit
/// random collision, so a second attempt already means something else is wrong.
pub const MAX_CREATE_ATTEMPTS: usize = 8;

/// A `tower_sessions::SessionStore` over a [`SessionCache`]; see the [module docs](self) for what
/// each operation does, the sliding-expiry rule and how instances stay coherent.
///
/// Cloning is cheap and shares the cache.
#[derive(Clone, Debug)]
pub struct TieredSessionStore {
    cache: SessionCache,
    namespace: Namespace,
}

impl TieredSessionStore {
    /// A store of records in `cache`, under the keys of `namespace` (`prefix:vN:namespace:<id>`,
    /// the id in tower-sessions' base64 form). Clearing the namespace on the cache ends every
    /// session.
    pub fn new(cache: SessionCache, namespace: Namespace) -> Self {
        TieredSessionStore { cache, namespace }
    }

    /// The cache the records live in (for its stats, or to shut it down).
    pub fn cache(&self) -> &SessionCache {
        &self.cache
    }

    /// The namespace of the records' keys.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    fn key(&self, id: &Id) -> session_store::Result<Key> {
        self.namespace
            .key(id)
            .map_err(|error| backend_error("making the key", error))
    }

    /// The record the cache holds for `key`, unexpired or not (the cache drops it at its expiry by
    /// the cache's clock).
    async fn stored(&self, key: &Key, what: &str) -> session_store::Result<Option<Arc<Record>>> {
        self.cache
            .get(key)
            .await
            .map_err(|error| backend_error(what, error))
    }

    /// Writes `record` under `key` with its time left as the TTL; deletes the key when its expiry
    /// has passed.
    async fn write(
        &self,
        key: &Key,
        record: &Record,
        now: SystemTime,
    ) -> session_store::Result<()> {
        let Some(ttl) = time_left(record, now) else {
            return self.remove(key).await;
        };
        self.cache
            .set_with(key, Arc::new(record.clone()), &EntryOptions::new(ttl))
            .await
            .map_err(|error| backend_error("storing the session", error))
    }

    async fn remove(&self, key: &Key) -> session_store::Result<()> {
        self.cache
            .delete(key)
            .await
            .map(|_| ())
            .map_err(|error| backend_error("deleting the session", error))
    }
}

#[async_trait]
impl SessionStore for TieredSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        for _ in 0..MAX_CREATE_ATTEMPTS {
            let key = self.key(&record.id)?;
            if self.stored(&key, "checking a new id").await?.is_none() {
                let now = SystemTime::now();
                // A record born expired is not stored: a load would return `None` anyway.
                if time_left(record, now).is_none() {
                    return Ok(());
                }
                return self.write(&key, record, now).await;
            }
            tracing::warn!("session id collision; drawing a new id");
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(format!(
            "layercache session store: no free session id after {MAX_CREATE_ATTEMPTS} attempts"
        )))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let key = self.key(&record.id)?;
        let Some(stored) = self.stored(&key, "reading the session to save").await? else {
            // Deleted or expired since it was loaded: it stays gone (module docs).
            return Ok(());
        };
        let now = SystemTime::now();
        if needs_write(&stored, record, now) {
            self.write(&key, record, now).await
        } else {
            Ok(())
        }
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let key = self.key(session_id)?;
        let now = SystemTime::now();
        Ok(self
            .stored(&key, "loading the session")
            .await?
            .filter(|record| time_left(record, now).is_some())
            .map(Arc::unwrap_or_clone))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        let key = self.key(session_id)?;
        self.remove(&key).await
    }
}

/// Whether saving `new` over `stored` must write: changed data, an earlier expiry, or less than
/// half of the new TTL left on the stored record (module docs).
fn needs_write(stored: &Record, new: &Record, now: SystemTime) -> bool {
    if stored.data != new.data {
        return true;
    }
    let now = unix_nanos(now);
    let stored_left = stored.expiry_date.unix_timestamp_nanos() - now;
    let new_left = new.expiry_date.unix_timestamp_nanos() - now;
    new_left < stored_left || stored_left < new_left / 2
}

/// The time from `now` to the record's expiry, capped at [`MAX_TTL`]; `None` once less than 1 ms
/// (the shortest TTL an entry can have) is left.
fn time_left(record: &Record, now: SystemTime) -> Option<Duration> {
    let left = record.expiry_date.unix_timestamp_nanos() - unix_nanos(now);
    let max = i128::try_from(MAX_TTL.as_nanos()).unwrap_or(i128::MAX);
    let left = u64::try_from(left.min(max)).ok()?;
    Some(Duration::from_nanos(left)).filter(|left| *left >= Duration::from_millis(1))
}

fn unix_nanos(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i128::try_from(since.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

fn backend_error(what: &str, error: impl Into<layercache_core::Error>) -> session_store::Error {
    let error = error.into();
    session_store::Error::Backend(format!("layercache session store: {what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expiry_in: Duration, now: SystemTime) -> Record {
        Record {
            id: Id::default(),
            data: Default::default(),
            expiry_date: (now + expiry_in).into(),
        }
    }

    #[test]
    fn writes_only_past_half_the_ttl_or_on_change() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let stored = record(hour, now);
        let mut new = stored.clone();
        new.expiry_date = (now + hour * 2).into();
        // 1 h left of a new 2 h TTL: exactly half, no write.
        assert!(!needs_write(&stored, &new, now));
        new.expiry_date = (now + hour * 2 + Duration::from_secs(1)).into();
        assert!(needs_write(&stored, &new, now), "less than half left");
        // The same expiry, or a changed one that is still within the rule.
        assert!(!needs_write(&stored, &stored, now));
        new.expiry_date = (now + hour + Duration::from_secs(60)).into();
        assert!(!needs_write(&stored, &new, now));
        // Shortened, or changed data: always.
        new.expiry_date = (now + hour / 2).into();
        assert!(needs_write(&stored, &new, now));
        let mut changed = stored.clone();
        changed.data.insert("k".into(), 1.into());
        assert!(needs_write(&stored, &changed, now));
    }

    #[test]
    fn time_left_is_none_once_expired_and_capped() {
        let now = SystemTime::now();
        let past = Record {
            expiry_date: (now - Duration::from_secs(1)).into(),
            ..record(Duration::ZERO, now)
        };
        assert_eq!(time_left(&past, now), None);
        assert_eq!(time_left(&record(Duration::ZERO, now), now), None);
        let far = record(MAX_TTL * 3, now);
        assert_eq!(time_left(&far, now), Some(MAX_TTL));
        let hour = record(Duration::from_secs(3600), now);
        assert_eq!(time_left(&hour, now), Some(Duration::from_secs(3600)));
    }
}
