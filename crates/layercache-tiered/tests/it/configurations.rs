//! L1 alone, L2 alone and both are valid; the L2 tier fills L1; writes reach both; the L1 eviction
//! policy takes effect.

use std::sync::Arc;
use std::time::Duration;

use layercache_core::{Backend, EntryOptions, ErrorKind, Key};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::{CircuitState, TieredCache};

use crate::Source;

#[tokio::test]
async fn l1_alone_works_without_any_server() {
    let cache: TieredCache<String> = TieredCache::builder().build().unwrap();
    let source = Source::new(Duration::ZERO);
    let key = Key::new("k").unwrap();
    for _ in 0..5 {
        assert!(
            cache
                .get_or_load_from(&key, &source)
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(source.loads(), 1);
    let stats = cache.stats();
    assert_eq!((stats.l1_hits, stats.l1_misses, stats.l2_hits), (4, 1, 0));
    assert_eq!(stats.circuit, CircuitState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_alone_shares_values_between_instances() {
    let server = RedisServer::start();
    let build = || {
        TieredCache::<String>::builder()
            .without_l1()
            .redis_url(server.url())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let source = Source::new(Duration::ZERO);
    let key = unique_space().namespace("l2").unwrap().key("k").unwrap();
    let value = a.get_or_load_from(&key, &source).await.unwrap();
    assert_eq!(b.get_or_load_from(&key, &source).await.unwrap(), value);
    assert_eq!(source.loads(), 1, "b read a's value from Redis");
    assert_eq!(b.stats().l2_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_hit_fills_l1_and_set_and_delete_reach_both_tiers() {
    let server = RedisServer::start();
    let build = || {
        TieredCache::<String>::builder()
            .redis_url(server.url())
            .options(EntryOptions::new(Duration::from_secs(60)))
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let key = unique_space().namespace("both").unwrap().key("k").unwrap();
    a.set(&key, "from a".to_owned()).await.unwrap();
    let source = Source::new(Duration::ZERO);
    assert_eq!(
        b.get_or_load_from(&key, &source).await.unwrap().as_deref(),
        Some("from a")
    );
    assert_eq!(
        b.get_or_load_from(&key, &source).await.unwrap().as_deref(),
        Some("from a")
    );
    let stats = b.stats();
    assert_eq!(
        (stats.l2_hits, stats.l1_hits),
        (1, 1),
        "the L2 hit filled L1: {stats:?}"
    );
    assert_eq!(source.loads(), 0);

    assert!(a.delete(&key).await.unwrap());
    let l2 = RedisBackend::connect(server.url()).await.unwrap();
    assert!(
        Backend::<Option<String>>::get(&l2, &key)
            .await
            .unwrap()
            .is_none(),
        "gone from L2"
    );
    assert_eq!(a.get(&key).await.unwrap(), None, "gone from a's L1");
}

#[tokio::test]
async fn absent_rows_are_cached_negatively() {
    struct Nothing(std::sync::atomic::AtomicU64);
    #[layercache_core::async_trait]
    impl layercache_core::Loader<String> for Nothing {
        async fn load(&self, _key: &Key) -> layercache_core::Result<Option<String>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(None)
        }
    }
    let cache: TieredCache<String> = TieredCache::builder()
        .negative_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let source = Arc::new(Nothing(Default::default()));
    let key = Key::new("missing").unwrap();
    for _ in 0..10 {
        assert_eq!(cache.get_or_load_from(&key, &source).await.unwrap(), None);
    }
    assert_eq!(source.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn invalid_configurations_are_config_errors() {
    let no_tier = TieredCache::<String>::builder()
        .without_l1()
        .build()
        .unwrap_err();
    assert_eq!(no_tier.kind(), ErrorKind::Config);
    let lock_without_redis = TieredCache::<String>::builder()
        .distributed_lock(Default::default())
        .build()
        .unwrap_err();
    assert_eq!(lock_without_redis.kind(), ErrorKind::Config);
    let bad_fraction = TieredCache::<String>::builder()
        .options(EntryOptions::new(Duration::from_secs(60)).with_eager_refresh(1.5))
        .build()
        .unwrap_err();
    assert_eq!(bad_fraction.kind(), ErrorKind::Config);
    let bad_timeouts = TieredCache::<String>::builder()
        .options(
            EntryOptions::new(Duration::from_secs(60))
                .with_stale_ttl(Duration::from_secs(600))
                .with_soft_timeout(Duration::from_secs(2))
                .with_hard_timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap_err();
    assert_eq!(bad_timeouts.kind(), ErrorKind::Config);
}

#[test]
fn public_types_are_send_and_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<TieredCache<String>>();
    is_send_sync::<layercache_tiered::TieredBackend<String>>();
    is_send_sync::<layercache_tiered::TieredStats>();
    is_send_sync::<layercache_tiered::WarmReport>();
}

/// The whole cache (L1 over a real Redis L2) as one [`Backend`]: it passes the conformance suite
/// every tier passes.
mod conformance {
    use std::sync::Arc;

    use layercache_core::ManualClock;
    use layercache_testkit::RedisServer;
    use layercache_testkit::conformance::{Sample, Subject};
    use layercache_tiered::TieredCache;

    async fn setup() -> Subject {
        let server = RedisServer::start();
        let clock = ManualClock::starting_now();
        let cache: TieredCache<Sample> = TieredCache::builder()
            .redis_url(server.url())
            // The suite's writes must land: a generous L2 timeout, as on a busy 2-core machine
            // the default 100 ms can pass (a set then rightly returns the L2 error).
            .l2_timeout(std::time::Duration::from_secs(2))
            .clock(clock.clone())
            .build()
            .unwrap();
        Subject::new(Arc::new(cache.as_backend()), clock).with_guard(server)
    }

    layercache_testkit::backend_conformance!(setup);
}

mod eviction {
    //! `l1_eviction_policy` takes effect: a hot working set read often, then a scan of keys read once.
    //! TinyLFU (the default) keeps the hot set out of reach of the scan; LRU lets the scan flush it,
    //! and reading the hot keys again loads them from the source.

    use std::sync::Arc;
    use std::time::Duration;

    use layercache_core::Key;
    use layercache_tiered::{L1Policy, TieredCache};

    use crate::Source;

    const CAPACITY: u64 = 100;
    const HOT: u64 = 50;
    /// A scan a few times the capacity: TinyLFU's sketch halves every count after about ten
    /// accesses per entry of capacity (it forgets), so a scan long enough would, rightly, see the hot
    /// set as cold again.
    const SCAN: u64 = 300;

    /// How many hot keys had to be loaded again after the scan.
    async fn hot_reloads_after_scan(policy: Option<L1Policy>) -> u64 {
        let mut builder = TieredCache::<String>::builder().l1_max_entries(CAPACITY);
        if let Some(policy) = policy {
            builder = builder.l1_eviction_policy(policy);
        }
        let cache = builder.build().unwrap();
        let source: Arc<Source> = Source::new(Duration::ZERO);
        let read = |i: u64| {
            let cache = &cache;
            let source = &source;
            async move {
                let key = Key::new(format!("k{i}")).unwrap();
                assert!(
                    cache
                        .get_or_load_from(&key, source)
                        .await
                        .unwrap()
                        .is_some()
                );
            }
        };
        for _round in 0..10 {
            for i in 0..HOT {
                read(i).await;
            }
        }
        for i in 0..SCAN {
            read(1_000_000 + i).await;
        }
        let before = source.loads();
        for i in 0..HOT {
            read(i).await;
        }
        source.loads() - before
    }

    #[tokio::test]
    async fn lru_lets_a_scan_flush_the_hot_set_and_tiny_lfu_does_not() {
        let default = hot_reloads_after_scan(None).await;
        let tiny_lfu = hot_reloads_after_scan(Some(L1Policy::TinyLfu)).await;
        let lru = hot_reloads_after_scan(Some(L1Policy::Lru)).await;
        eprintln!(
            "hot keys loaded again: default {default}, TinyLFU {tiny_lfu}, LRU {lru} of {HOT}"
        );
        assert!(tiny_lfu <= HOT / 10, "TinyLFU reloaded {tiny_lfu} of {HOT}");
        assert!(
            default <= HOT / 10,
            "the default reloaded {default} of {HOT}"
        );
        assert!(lru >= HOT * 9 / 10, "LRU reloaded {lru} of {HOT}");
    }
}
