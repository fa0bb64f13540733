use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::Key;

/// Where distributed locks live: the seam between the lock guard (which knows no Redis) and a
/// store such as `layercache-redis`'s `RedisLockStore`.
///
/// A lock is held under a key by whoever knows its `token`, for a `lease`, after which the store
/// forgets it (so a holder that dies cannot block others for longer than the lease). Only the
/// holder's token can extend or release it.
#[async_trait]
pub trait LockStore: Send + Sync + Debug {
    /// Takes the lock of `key` for `lease` if nobody holds it; `true` when taken.
    async fn try_acquire(&self, key: &Key, token: &str, lease: Duration) -> Result<bool>;

    /// Extends the lease to `lease` from now if `token` still holds the lock; `true` when extended.
    async fn extend(&self, key: &Key, token: &str, lease: Duration) -> Result<bool>;

    /// Releases the lock if `token` still holds it; `true` when released.
    async fn release(&self, key: &Key, token: &str) -> Result<bool>;
}
