//! XFetch early expiry: the refresh rate follows the formula, and steady traffic never waits.

use std::sync::Arc;
use std::time::Duration;

use layercache_core::{
    Backend, Clock, Entry, EntryMeta, EntryOptions, Key, ManualClock, Namespace, Result, Timestamp,
    async_trait,
};
use layercache_moka::MokaBackend;
use layercache_stampede::{EarlyExpiry, GuardedCache, SeededRandom};
use tokio::sync::mpsc;

use crate::CountingLoader;

/// At a time `g` before expiry, with load cost `delta` and `beta = 1`, XFetch refreshes with
/// probability `exp(-g / delta)`. With 20,000 draws per point, the observed rate must be within
/// five standard deviations (`5 * sqrt(p (1 - p) / n)`, at most 0.018) of it; a correct
/// implementation fails this with probability below 1e-6 per point, and the seed makes it repeatable.
#[test]
fn early_refresh_rate_matches_the_formula() {
    const DRAWS: u32 = 20_000;
    let early = EarlyExpiry::default().with_random(SeededRandom::new(2026));
    let delta = Duration::from_millis(100);
    let t0 = Timestamp::from_millis(1_000_000);
    let fresh_until = t0 + Duration::from_secs(10);
    let meta = EntryMeta::new(t0, fresh_until, fresh_until + Duration::from_secs(10))
        .with_load_cost(delta);
    for gap_ms in [10u64, 50, 100, 200, 400, 800] {
        let now = fresh_until - Duration::from_millis(gap_ms);
        let expected = (-(gap_ms as f64) / 100.0).exp();
        assert!((early.probability(&meta, now) - expected).abs() < 1e-9);
        let refreshed = (0..DRAWS)
            .filter(|_| early.should_refresh(&meta, now))
            .count();
        let observed = f64::from(refreshed as u32) / f64::from(DRAWS);
        let tolerance = 5.0 * (expected * (1.0 - expected) / f64::from(DRAWS)).sqrt() + 1e-4;
        assert!(
            (observed - expected).abs() <= tolerance,
            "gap {gap_ms} ms: observed {observed:.4}, expected {expected:.4} ± {tolerance:.4}"
        );
    }
    // Far from expiry, past expiry, and without a measured cost: never.
    assert!(!early.should_refresh(&meta, t0));
    assert!(!early.should_refresh(&meta, fresh_until));
    let free = EntryMeta::new(t0, fresh_until, fresh_until);
    assert!(!early.should_refresh(&free, fresh_until - Duration::from_millis(1)));
}

#[test]
fn a_larger_beta_refreshes_earlier() {
    let t0 = Timestamp::from_millis(0);
    let fresh_until = t0 + Duration::from_secs(10);
    let meta =
        EntryMeta::new(t0, fresh_until, fresh_until).with_load_cost(Duration::from_millis(100));
    let now = fresh_until - Duration::from_millis(300);
    let p1 = EarlyExpiry::new(1.0).unwrap().probability(&meta, now);
    let p3 = EarlyExpiry::new(3.0).unwrap().probability(&meta, now);
    assert!(p3 > p1 * 5.0, "{p1} {p3}");
}

/// A backend that reports every `set`, so the test can wait for a background refresh to land.
#[derive(Debug)]
struct Signalling {
    inner: MokaBackend<String>,
    sets: mpsc::UnboundedSender<Key>,
}

#[async_trait]
impl Backend<String> for Signalling {
    async fn get(&self, key: &Key) -> Result<Option<Entry<String>>> {
        self.inner.get(key).await
    }
    async fn set(&self, key: &Key, entry: Entry<String>) -> Result<()> {
        self.inner.set(key, entry).await?;
        let _ = self.sets.send(key.clone());
        Ok(())
    }
    async fn delete(&self, key: &Key) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        self.inner.clear(namespace).await
    }
    fn name(&self) -> &'static str {
        "signalling"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_across_an_expiry_boundary_never_waits_on_a_miss() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000_000));
    let (sets_tx, mut sets) = mpsc::unbounded_channel();
    let backend = Signalling {
        inner: MokaBackend::builder().clock(clock.clone()).build().unwrap(),
        sets: sets_tx,
    };
    let ttl = Duration::from_secs(10);
    let cache = GuardedCache::builder(Arc::new(backend))
        .clock(clock.clone())
        .options(EntryOptions::new(ttl))
        .early_expiry(EarlyExpiry::default().with_random(SeededRandom::new(7)))
        .build()
        .unwrap();
    // A 20 ms load: XFetch's delta.
    let loader = CountingLoader::new(Duration::from_millis(20));
    let key = Key::new("hot").unwrap();

    assert_eq!(
        cache.get_or_load(&key, &loader).await.unwrap().as_deref(),
        Some("hot#1")
    );
    sets.recv().await.unwrap();
    let first_expiry = clock.now() + ttl;

    // Reads every 2 ms of (manual) time, from 1 s before the first expiry to 1 s after it.
    clock.advance(ttl - Duration::from_secs(1));
    let mut values = std::collections::BTreeSet::new();
    for _ in 0..1_000 {
        clock.advance(Duration::from_millis(2));
        let before = cache.stats().early_refreshes;
        let value = cache.get_or_load(&key, &loader).await.unwrap().unwrap();
        values.insert(value);
        if cache.stats().early_refreshes > before {
            // Let the background refresh land before time moves on, as steady traffic would.
            sets.recv().await.unwrap();
        }
    }
    assert!(clock.now() > first_expiry + Duration::from_millis(900));
    // The last refresh's flight ends just after its store.
    while cache.is_loading(&key) {
        tokio::task::yield_now().await;
    }
    let stats = cache.stats();
    assert_eq!(
        stats.misses, 1,
        "only the cold start waited on a load: {stats:?}"
    );
    assert!(stats.early_refreshes >= 1, "{stats:?}");
    assert_eq!(stats.refreshes_completed, stats.early_refreshes);
    assert_eq!(loader.calls(), 1 + stats.early_refreshes);
    assert!(values.len() >= 2, "the value was refreshed: {values:?}");
}
