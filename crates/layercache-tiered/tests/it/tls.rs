//! The two-tier cache over `rediss://` (feature `tls`): L2, the distributed lock and both
//! invalidation transports against a real TLS server whose certificate a test CA issued.

use std::time::{Duration, Instant};

use layercache_redis::{RedisBackend, RedisPubSub, RedisTracking};
use layercache_stampede::LockOptions;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::TieredCache;

const BOUND: Duration = Duration::from_secs(10);

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < BOUND {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_tls_load_write_and_see_each_other() {
    let server = RedisServer::builder().tls(true).start();
    let (url, ca) = (server.tls_url(), server.tls_ca_pem());
    let backend = async || {
        RedisBackend::builder(&url)
            .tls_root_ca(ca)
            .command_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    };
    let pubsub = RedisPubSub::builder(&url).tls_root_ca(ca).build().unwrap();
    let tracking = RedisTracking::builder(&url)
        .tls_root_ca(ca)
        .build()
        .unwrap();
    let publisher = RedisPubSub::builder(&url).tls_root_ca(ca).build().unwrap();
    let a = TieredCache::<String>::builder()
        .name("a")
        .redis(backend().await)
        .distributed_lock(LockOptions::default().max_wait(BOUND))
        .invalidation(publisher.clone())
        .build()
        .unwrap();
    let b = TieredCache::<String>::builder()
        .name("b")
        .redis(backend().await)
        .invalidation(pubsub.clone())
        .build()
        .unwrap();
    let c = TieredCache::<String>::builder()
        .name("c")
        .redis(backend().await)
        .invalidation(tracking.clone())
        .build()
        .unwrap();
    assert!(publisher.wait_connected(BOUND).await && pubsub.wait_connected(BOUND).await);
    assert!(tracking.wait_connected(BOUND).await);

    let key = unique_space().namespace("tls").unwrap().key("1").unwrap();
    let loaded = a
        .get_or_load(&key, |_| async {
            Ok::<_, std::io::Error>(Some("v1".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref(), Some("v1"));
    // A loaded value reaches L2 in the background (the caller does not wait for it).
    assert!(eventually(async || b.get(&key).await.unwrap().as_deref() == Some("v1")).await);
    assert!(eventually(async || c.get(&key).await.unwrap().as_deref() == Some("v1")).await);
    a.set(&key, "v2".to_owned()).await.unwrap();
    assert!(eventually(async || b.get(&key).await.unwrap().as_deref() == Some("v2")).await);
    assert!(eventually(async || c.get(&key).await.unwrap().as_deref() == Some("v2")).await);
    a.delete(&key).await.unwrap();
    assert!(eventually(async || b.get(&key).await.unwrap().is_none()).await);
    assert!(eventually(async || c.get(&key).await.unwrap().is_none()).await);
    for cache in [&a, &b, &c] {
        let stats = cache.stats();
        assert_eq!((stats.l2_errors, stats.lock_errors), (0, 0), "{stats:?}");
    }
}
