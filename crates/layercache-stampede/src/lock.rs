//! The distributed lock guard: across processes, one loads and the others wait for its value.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use layercache_core::{Error, Key, LockStore, Result};
use tokio::task::JoinHandle;

/// The default lease of a lock (5 s); extended while the holder's load runs.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// The default bound on waiting for another process's load (5 s).
pub const DEFAULT_LOCK_MAX_WAIT: Duration = Duration::from_secs(5);
/// The default first pause between polls of the cache while waiting (10 ms); it doubles up to
/// [`DEFAULT_POLL_MAX`], with jitter.
pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_millis(10);
/// The default longest pause between polls (200 ms).
pub const DEFAULT_POLL_MAX: Duration = Duration::from_millis(200);

/// What a caller does when the distributed lock cannot help: another process's load has not
/// filled the cache within `max_wait` ([`LockOptions::on_timeout`]), or the lock store failed —
/// Redis down, or a user without the permission ([`LockOptions::on_error`]). Both are counted in
/// the cache's stats (`lock_timeouts`, `lock_errors`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLockTimeout {
    /// Load from the source itself (the default: the source of truth has the last word).
    #[default]
    Load,
    /// Serve the stale value read before waiting; with none, load.
    ServeStale,
    /// Return a `Lock` error; with a stale value at hand, serve it instead.
    Fail,
}

/// Settings of a [`DistributedLock`]. Every wait has a bound; defaults are the `DEFAULT_*`
/// constants of this module.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockOptions {
    /// How long the lock is held without being extended; a holder that dies frees it after this.
    pub lease: Duration,
    /// How long a waiter waits for the holder's value.
    pub max_wait: Duration,
    /// The first pause between polls.
    pub poll_initial: Duration,
    /// The longest pause between polls.
    pub poll_max: Duration,
    /// What a waiter does after `max_wait`.
    pub on_timeout: OnLockTimeout,
    /// What a caller does when the lock store fails (default [`OnLockTimeout::Load`]: load
    /// without the lock).
    pub on_error: OnLockTimeout,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            lease: DEFAULT_LEASE,
            max_wait: DEFAULT_LOCK_MAX_WAIT,
            poll_initial: DEFAULT_POLL_INITIAL,
            poll_max: DEFAULT_POLL_MAX,
            on_timeout: OnLockTimeout::Load,
            on_error: OnLockTimeout::Load,
        }
    }
}

impl LockOptions {
    /// Sets the lease.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the bound on waiting.
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Sets the poll pauses.
    #[must_use]
    pub fn poll(mut self, initial: Duration, max: Duration) -> Self {
        self.poll_initial = initial;
        self.poll_max = max;
        self
    }

    /// Sets what happens after `max_wait`.
    #[must_use]
    pub fn on_timeout(mut self, on_timeout: OnLockTimeout) -> Self {
        self.on_timeout = on_timeout;
        self
    }

    /// Sets what happens when the lock store fails.
    #[must_use]
    pub fn on_error(mut self, on_error: OnLockTimeout) -> Self {
        self.on_error = on_error;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.lease < Duration::from_millis(30) {
            return Err(Error::config("lock lease must be at least 30 ms"));
        }
        // The lease is what frees the lock of a holder that died: it must be a real bound.
        if self.lease > Duration::from_secs(24 * 3600) {
            return Err(Error::config(
                "lock lease must be at most 24 h (it frees the lock of a holder that died)",
            ));
        }
        if self.poll_initial.is_zero() || self.poll_max < self.poll_initial {
            return Err(Error::config(
                "lock polls need 0 < poll_initial <= poll_max",
            ));
        }
        Ok(())
    }
}

/// A lock per key in a [`LockStore`], held with a random token and a lease that a watchdog
/// extends while the holder works, released on every path (success, error, panic, cancellation).
#[derive(Clone)]
pub struct DistributedLock {
    store: Arc<dyn LockStore>,
    options: LockOptions,
}

impl fmt::Debug for DistributedLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedLock")
            .field("store", &self.store)
            .field("options", &self.options)
            .finish()
    }
}

impl DistributedLock {
    /// A lock guard over `store`; invalid options are a config error.
    pub fn new(store: impl LockStore + 'static, options: LockOptions) -> Result<Self> {
        Self::from_arc(Arc::new(store), options)
    }

    /// A lock guard over a shared store.
    pub fn from_arc(store: Arc<dyn LockStore>, options: LockOptions) -> Result<Self> {
        options.validate()?;
        Ok(DistributedLock { store, options })
    }

    /// The options in force.
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// Tries once to take the lock of `key`; `None` when another holder has it.
    pub async fn try_lock(&self, key: &Key) -> Result<Option<LockGuard>> {
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        if !self
            .store
            .try_acquire(key, &token, self.options.lease)
            .await?
        {
            return Ok(None);
        }
        let watchdog = tokio::spawn(watchdog(
            Arc::clone(&self.store),
            key.clone(),
            token.clone(),
            self.options.lease,
        ));
        Ok(Some(LockGuard {
            store: Arc::clone(&self.store),
            key: key.clone(),
            token,
            watchdog: Some(watchdog),
        }))
    }

    /// Pauses between polls: doubling from `poll_initial` to `poll_max`, each with ±50% jitter.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            next: self.options.poll_initial,
            max: self.options.poll_max,
        }
    }
}

/// Pauses between polls of a lock waiter; see [`DistributedLock::backoff`].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// The next pause.
    pub fn next_pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.5 + fastrand::f64())
    }
}

/// Extends the lease every third of it while the holder works.
async fn watchdog(store: Arc<dyn LockStore>, key: Key, token: String, lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match store.extend(&key, &token, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%key, "lock lease lost before the load finished");
                return;
            }
            Err(error) => tracing::warn!(%key, %error, "could not extend a lock lease; retrying"),
        }
    }
}

/// A held lock. [`release`](LockGuard::release) it when done; if it is dropped instead (an error
/// path, a panic, a cancelled caller) it is released in the background.
pub struct LockGuard {
    store: Arc<dyn LockStore>,
    key: Key,
    token: String,
    watchdog: Option<JoinHandle<()>>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").field("key", &self.key).finish()
    }
}

impl LockGuard {
    /// Releases the lock now; `true` when it was still ours.
    pub async fn release(mut self) -> Result<bool> {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        self.store.release(&self.key, &self.token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(watchdog) = self.watchdog.take() else {
            return;
        };
        watchdog.abort();
        let (store, key, token) = (
            Arc::clone(&self.store),
            self.key.clone(),
            std::mem::take(&mut self.token),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = store.release(&key, &token).await {
                        tracing::warn!(%key, %error, "could not release a lock; it expires with its lease");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(key = %self.key, "no runtime to release a lock; it expires with its lease")
            }
        }
    }
}
