//! Distributed locks in Redis: `SET key token NX PX lease`, extended and released by Lua scripts
//! that compare the token first (sent as EVALSHA, loaded again on NOSCRIPT).

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use layercache_core::{Error, Key, LockStore, Result, async_trait};
use redis::Script;

use crate::connection::{Connection, Idempotent, Request};

/// The default prefix of lock keys.
pub const DEFAULT_LOCK_PREFIX: &str = "layercache:lock:";

static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

/// A [`LockStore`] in Redis, sharing its connection with the [`RedisBackend`](crate::RedisBackend)
/// it came from ([`RedisBackend::lock_store`](crate::RedisBackend::lock_store)).
///
/// The lock of key `k` lives under `prefix + k` (prefix default [`DEFAULT_LOCK_PREFIX`]).
#[derive(Clone)]
pub struct RedisLockStore {
    conn: Connection,
    prefix: Arc<str>,
}

impl fmt::Debug for RedisLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockStore")
            .field("prefix", &self.prefix)
            .field("connection", &self.conn)
            .finish()
    }
}

fn lease_millis(lease: Duration) -> Result<u64> {
    let millis = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return Err(Error::config("a lock lease must be at least 1 ms"));
    }
    Ok(millis)
}

impl RedisLockStore {
    pub(crate) fn new(conn: Connection) -> Self {
        RedisLockStore {
            conn,
            prefix: DEFAULT_LOCK_PREFIX.into(),
        }
    }

    /// Uses `prefix` in front of lock keys instead of [`DEFAULT_LOCK_PREFIX`].
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn lock_key(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }
}

#[async_trait]
impl LockStore for RedisLockStore {
    async fn try_acquire(&self, key: &Key, token: &str, lease: Duration) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.lock_key(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(lease_millis(lease)?);
        // Not retried: a first attempt that reached Redis would make the retry see our own lock.
        let reply: Option<String> = self.conn.query(Request::Cmd(&cmd), Idempotent::No).await?;
        Ok(reply.is_some())
    }

    async fn extend(&self, key: &Key, token: &str, lease: Duration) -> Result<bool> {
        let mut invocation = EXTEND.prepare_invoke();
        invocation
            .key(self.lock_key(key))
            .arg(token)
            .arg(lease_millis(lease)?);
        let extended: i64 = self
            .conn
            .query(Request::Script(&invocation), Idempotent::Yes)
            .await?;
        Ok(extended == 1)
    }

    async fn release(&self, key: &Key, token: &str) -> Result<bool> {
        let mut invocation = RELEASE.prepare_invoke();
        invocation.key(self.lock_key(key)).arg(token);
        let released: i64 = self
            .conn
            .query(Request::Script(&invocation), Idempotent::Yes)
            .await?;
        Ok(released == 1)
    }
}
