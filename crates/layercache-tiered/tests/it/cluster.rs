//! The two-tier cache on a Redis Cluster of 3 primaries with a replica each (issue 14): the same
//! API as on one server, only the connection settings change. Loads, writes, tags and clears over
//! every slot; both invalidation transports; and a primary SIGKILLed under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use layercache_core::{EntryOptions, Key};
use layercache_redis::{RedisBackend, RedisPubSub, RedisTracking};
use layercache_testkit::RedisCluster;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::{TieredCache, TieredCacheBuilder};

use crate::Source;
use crate::shape::shared_cluster;

/// A generous bound on what must end: past it the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(60);

async fn backend(cluster: &RedisCluster) -> RedisBackend {
    RedisBackend::cluster_builder(cluster.urls())
        .command_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap()
}

async fn builder(cluster: &RedisCluster, name: &str) -> TieredCacheBuilder<String> {
    TieredCache::builder()
        .name(name)
        .redis(backend(cluster).await)
        .l1_max_entries(20_000)
        // A busy CI machine must not turn a slow round trip into a failed write.
        .l2_timeout(Duration::from_secs(5))
}

/// Polls `condition` until it holds, at most [`BOUND`].
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_writes_tags_and_clears_reach_every_slot() {
    let cluster = shared_cluster();
    let cache = builder(cluster, "one").await.build().unwrap();
    let ns = unique_space().namespace("cluster").unwrap();
    let keys: Vec<Key> = (0..1_000).map(|i| ns.key(i).unwrap()).collect();
    let source = Source::new(Duration::ZERO);

    // get_many of 1,000 keys over every slot: every value, in key order, loaded once.
    let values = cache.get_many(&keys, &source).await.unwrap();
    let expected: Vec<Option<String>> =
        keys.iter().map(|k| Some(format!("value of {k}"))).collect();
    assert_eq!(values, expected);
    assert_eq!(
        source.loads() + source.batches(),
        1,
        "one batch loaded everything"
    );

    // A second instance finds them all in L2 (the loads' stores are in the background).
    let probe = backend(cluster).await;
    eventually("the loaded values reach L2", async || {
        let got: layercache_core::Result<Vec<Option<layercache_core::Entry<Option<String>>>>> =
            layercache_core::Backend::get_many(&probe, &keys).await;
        got.is_ok_and(|got| got.iter().all(Option::is_some))
    })
    .await;
    let other = builder(cluster, "two").await.build().unwrap();
    let none = Source::new(Duration::ZERO);
    assert_eq!(other.get_many(&keys, &none).await.unwrap(), expected);
    assert_eq!(none.loads() + none.batches(), 0, "L2 answered every key");

    // get_or_load, set and delete of single keys.
    let key = ns.key("single").unwrap();
    let got = cache
        .get_or_load(&key, |_| async {
            Ok::<_, std::io::Error>(Some("loaded".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("loaded"));
    cache.set(&key, "written".to_owned()).await.unwrap();
    assert_eq!(other.get(&key).await.unwrap().as_deref(), Some("written"));
    assert!(cache.delete(&key).await.unwrap());
    assert_eq!(cache.get(&key).await.unwrap(), None);
    // No transport joins these instances: a third one, with nothing in L1, reads L2.
    let third = builder(cluster, "three").await.build().unwrap();
    assert_eq!(third.get(&key).await.unwrap(), None);

    // Tags: entries of one tag live in every slot; its invalidation removes them all from L2.
    let tagged: Vec<Key> = (0..300).map(|i| ns.key(format!("t{i}")).unwrap()).collect();
    let options = EntryOptions::default().with_tags(["t"]);
    for key in &tagged {
        cache
            .set_with(key, format!("{key}"), &options)
            .await
            .unwrap();
    }
    assert_eq!(cache.invalidate_tag("t").await.unwrap(), 300);
    let fresh = Source::new(Duration::ZERO);
    let after = cache.get_many(&tagged, &fresh).await.unwrap();
    assert!(
        after
            .iter()
            .all(|v| v.as_deref().is_some_and(|v| v.starts_with("value of")))
    );
    assert_eq!(fresh.batches(), 1, "every tagged key was loaded again");

    // clear reaches every primary.
    let cleared = cache.clear(&ns).await.unwrap();
    assert!(cleared >= 1_000, "cleared {cleared}");
    let after_clear = Source::new(Duration::ZERO);
    other.clear(&ns).await.unwrap();
    other.get_many(&keys, &after_clear).await.unwrap();
    assert_eq!(after_clear.batches(), 1, "nothing was left in L2");
}

/// A writes keys of every slot that B holds in L1; B serves each new value within the bound.
async fn writes_reach_the_other_instance(a: &TieredCache<String>, b: &TieredCache<String>) {
    let ns = unique_space().namespace("coherent").unwrap();
    let keys: Vec<Key> = (0..60).map(|i| ns.key(i).unwrap()).collect();
    for key in &keys {
        a.set(key, "v0".to_owned()).await.unwrap();
        assert_eq!(b.get(key).await.unwrap().as_deref(), Some("v0"));
    }
    for key in &keys {
        a.set(key, "v1".to_owned()).await.unwrap();
    }
    for key in &keys {
        eventually("B serves the new value", async || {
            b.get(key).await.unwrap().as_deref() == Some("v1")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pubsub_backplane_keeps_two_instances_coherent_on_a_cluster() {
    let cluster = shared_cluster();
    let channel = format!(
        "cluster:{}",
        unique_space().namespace("ch").unwrap().scope()
    );
    let transport = || {
        RedisPubSub::cluster_builder(cluster.urls())
            .channel(channel.clone())
            .ping_interval(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let (ta, tb) = (transport(), transport());
    let a = builder(cluster, "a")
        .await
        .invalidation(ta.clone())
        .build()
        .unwrap();
    let b = builder(cluster, "b")
        .await
        .invalidation(tb.clone())
        .build()
        .unwrap();
    assert!(ta.wait_connected(BOUND).await && tb.wait_connected(BOUND).await);
    writes_reach_the_other_instance(&a, &b).await;
    assert!(tb.stats().received > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_runs_on_every_primary_and_follows_a_failover() {
    let cluster = RedisCluster::replicated();
    let transport = || {
        RedisTracking::cluster_builder(cluster.urls())
            .ping_interval(Duration::from_millis(200))
            .max_reconnect_delay(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let (ta, tb) = (transport(), transport());
    let a = builder(&cluster, "a")
        .await
        .invalidation(ta.clone())
        .build()
        .unwrap();
    let b = builder(&cluster, "b")
        .await
        .invalidation(tb.clone())
        .build()
        .unwrap();
    assert!(ta.wait_connected(BOUND).await && tb.wait_connected(BOUND).await);
    // Keys of every slot: the server of each reports its own keys.
    writes_reach_the_other_instance(&a, &b).await;
    assert!(tb.stats().keys_invalidated >= 60);

    // A primary dies; its replica takes over; tracking starts again on the new primaries.
    let key = unique_space().namespace("after").unwrap().key("k").unwrap();
    let owner = cluster.primary_of_key(key.as_str());
    let sessions = tb.stats().sessions;
    let failover = tokio::task::block_in_place(|| cluster.crash_primary(owner));
    println!("tracking: failover took {:?}", failover.took);
    eventually("tracking starts again on the new primaries", async || {
        tb.stats().sessions > sessions && tb.is_connected()
    })
    .await;
    // A write to the failed-over shard reaches B's L1.
    eventually("A can write again", async || {
        a.set(&key, "before".to_owned()).await.is_ok()
    })
    .await;
    eventually("B holds the value", async || {
        b.get(&key).await.ok().flatten().as_deref() == Some("before")
    })
    .await;
    a.set(&key, "after".to_owned()).await.unwrap();
    eventually("B serves the write made on the new primary", async || {
        b.get(&key).await.unwrap().as_deref() == Some("after")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_costs_callers_nothing_and_l2_hits_resume() {
    let cluster = RedisCluster::replicated();
    let redis = RedisBackend::cluster_builder(cluster.urls())
        .command_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let cache = TieredCache::builder()
        .name("failover")
        .redis(redis)
        // A small L1, so that most reads ask L2.
        .l1_max_entries(64)
        .l2_timeout(Duration::from_secs(1))
        .options(
            EntryOptions::new(Duration::from_secs(300))
                .with_stale_ttl(Duration::from_secs(600))
                .with_fail_safe(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let ns = unique_space().namespace("load").unwrap();
    let keys: Arc<Vec<Key>> = Arc::new((0..2_000).map(|i| ns.key(i).unwrap()).collect());
    let source = Source::new(Duration::ZERO);
    cache.get_many(&keys, &source).await.unwrap();
    eventually("the values reach L2", async || {
        cache.stats().l2_pending_writes == 0
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (reads, read_errors, writes, write_errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..32u64 {
        let (cache, keys, source, stop) =
            (cache.clone(), keys.clone(), source.clone(), stop.clone());
        let (reads, read_errors, writes, write_errors) = (
            reads.clone(),
            read_errors.clone(),
            writes.clone(),
            write_errors.clone(),
        );
        tasks.spawn(async move {
            let mut n = task;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = &keys[(n >> 33) as usize % keys.len()];
                // One task in eight writes; the others read.
                if task % 8 == 0 {
                    writes.fetch_add(1, Ordering::Relaxed);
                    if let Err(error) = cache.set(key, format!("value of {key}")).await {
                        assert!(error.is_temporary(), "{error}");
                        write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    reads.fetch_add(1, Ordering::Relaxed);
                    match cache.get_or_load_from(key, &source).await {
                        Ok(Some(_)) => {}
                        other => {
                            // The first few only: the test's output is kept in memory.
                            if read_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("read error: {other:?}");
                            }
                        }
                    }
                }
                // A read served from L1 (or failing fast) completes without waiting: yield, so
                // that the other tasks, the sampler and a cancellation get their turn.
                tokio::task::yield_now().await;
            }
        });
    }
    // The gap: the longest time without a new L2 hit, sampled every 5 ms.
    let sampler = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut last_hits, mut last_change) = (cache.stats().l2_hits, Instant::now());
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let hits = cache.stats().l2_hits;
                if hits > last_hits {
                    longest = longest.max(last_change.elapsed());
                    (last_hits, last_change) = (hits, Instant::now());
                }
            }
            longest
        })
    };
    eventually("L2 hits under load", async || cache.stats().l2_hits > 1_000).await;

    let victim = cluster.primaries()[0];
    let failover = tokio::task::block_in_place(|| cluster.crash_primary(victim));
    // L2 hits resume for the keys of the failed-over shard too: read them past L1.
    let shard_keys: Vec<Key> = keys
        .iter()
        .filter(|k| cluster.primary_of_key(k.as_str()) == failover.new_primary)
        .take(50)
        .cloned()
        .collect();
    assert!(!shard_keys.is_empty());
    let probe = RedisBackend::cluster_builder(cluster.urls())
        .connect()
        .await
        .unwrap();
    eventually("the new primary answers L2 reads", async || {
        let got: layercache_core::Result<Vec<Option<layercache_core::Entry<Option<String>>>>> =
            layercache_core::Backend::get_many(&probe, &shard_keys).await;
        got.is_ok_and(|got| got.iter().all(Option::is_some))
    })
    .await;
    let hits = cache.stats().l2_hits;
    eventually("the cache's L2 hits resume", async || {
        cache.stats().l2_hits > hits + 1_000
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let gap = sampler.await.unwrap();
    let stats = cache.stats();
    println!(
        "failover under load: replica took over {:?} after the kill; longest time without an L2 \
         hit {gap:?}; {} reads, {} read errors; {} writes, {} write errors (temporary); circuit \
         opened {} times; {} L2 errors",
        failover.took,
        reads.load(Ordering::Relaxed),
        read_errors.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        write_errors.load(Ordering::Relaxed),
        stats.circuit_opened,
        stats.l2_errors,
    );
    assert_eq!(read_errors.load(Ordering::Relaxed), 0, "a read failed");
    assert!(reads.load(Ordering::Relaxed) > 0 && writes.load(Ordering::Relaxed) > 0);
}
