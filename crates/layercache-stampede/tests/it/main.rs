//! Integration tests of the stampede guards; the lock tests run against real `redis-server`s.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod early;
mod lock;
mod single_flight;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{Backend, Key, Loader, Result, async_trait};
use layercache_moka::MokaBackend;

/// A loader that counts its calls and takes `delay` per load.
#[derive(Debug, Default)]
pub(crate) struct CountingLoader {
    pub(crate) calls: AtomicU64,
    pub(crate) delay: Duration,
}

impl CountingLoader {
    pub(crate) fn new(delay: Duration) -> Arc<Self> {
        Arc::new(CountingLoader {
            calls: AtomicU64::new(0),
            delay,
        })
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Loader<String> for CountingLoader {
    async fn load(&self, key: &Key) -> Result<Option<String>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        Ok(Some(format!("{key}#{n}")))
    }
}

pub(crate) fn moka() -> Arc<dyn Backend<String>> {
    Arc::new(MokaBackend::<String>::builder().build().unwrap())
}
