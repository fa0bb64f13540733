//! Integration tests of the two-tier cache against real `redis-server` processes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod api;
mod bulk;
mod cluster;
mod coherence;
mod configurations;
mod faults;
mod large;
mod latency;
mod linearizable;
mod lock;
mod memory;
mod metrics;
mod processes;
mod shape;
mod symptoms;
#[cfg(feature = "tls")]
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{Error, Key, Loader, Result, async_trait};

/// A loader that counts single and batched calls, takes `delay` per call, and fails for ids
/// listed in `failing` (a batch fails when one of its ids does).
#[derive(Debug, Default)]
pub(crate) struct Source {
    pub(crate) loads: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) delay: Duration,
    pub(crate) failing: Vec<String>,
}

impl Source {
    pub(crate) fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Source {
            delay,
            ..Source::default()
        })
    }

    pub(crate) fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Loader<String> for Source {
    async fn load(&self, key: &Key) -> Result<Option<String>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self
            .failing
            .iter()
            .any(|f| key.as_str().ends_with(f.as_str()))
        {
            return Err(Error::loader(format!("source refused {key}")));
        }
        Ok(Some(format!("value of {key}")))
    }

    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Option<String>>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(key) = keys.iter().find(|key| {
            self.failing
                .iter()
                .any(|f| key.as_str().ends_with(f.as_str()))
        }) {
            return Err(Error::loader(format!(
                "source refused the batch with {key}"
            )));
        }
        Ok(keys.iter().map(|k| Some(format!("value of {k}"))).collect())
    }
}

/// The number of times Redis ran `command`, from INFO commandstats.
pub(crate) async fn command_calls(url: &str, command: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A plain redis-rs connection to `url` (what another program would use).
pub(crate) async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The raw bytes Redis holds under `key`.
pub(crate) async fn raw_get(url: &str, key: &Key) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut redis_conn(url).await)
        .await
        .unwrap()
}
