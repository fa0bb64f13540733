//! Coherence across instances (issue 10, ADR 0012): three caches over one Redis, each with its own
//! L1, kept coherent by an invalidation transport; tags; and L2 writes a slow load cannot undo.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use layercache_core::{EntryOptions, InvalidationTransport, Key, MemoryTransport, envelope};
use layercache_redis::{RedisPubSub, RedisTracking, TRACKING_CLIENT_NAME};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::{TieredCache, TieredCacheBuilder};
use tokio::sync::Notify;

use crate::{raw_get, redis_conn};

/// A generous bound on waits that must end: past it the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(10);

fn builder(url: &str, name: &str) -> TieredCacheBuilder<String> {
    TieredCache::builder()
        .name(name)
        .redis_url(url)
        .l1_max_entries(20_000)
        // A busy CI machine must not turn a slow round trip into a failed write.
        .l2_timeout(Duration::from_secs(5))
}

/// Three instances over the Redis at `url`, joined by in-memory invalidation.
fn memory_trio(url: &str) -> Vec<TieredCache<String>> {
    let transport = MemoryTransport::new();
    ["a", "b", "c"]
        .iter()
        .map(|name| {
            builder(url, name)
                .invalidation(transport.clone())
                .build()
                .unwrap()
        })
        .collect()
}

/// Three instances over the Redis at `url`, each with a transport of its own from `make`,
/// connected before this returns.
async fn trio<T>(
    url: &str,
    make: impl Fn() -> T,
    connected: impl AsyncFn(&T) -> bool,
) -> (Vec<TieredCache<String>>, Vec<T>)
where
    T: InvalidationTransport + Clone + 'static,
{
    let mut caches = Vec::new();
    let mut transports = Vec::new();
    for name in ["a", "b", "c"] {
        let transport = make();
        caches.push(
            builder(url, name)
                .invalidation(transport.clone())
                .build()
                .unwrap(),
        );
        transports.push(transport);
    }
    for transport in &transports {
        assert!(connected(transport).await, "the transport connected");
    }
    (caches, transports)
}

/// Three instances, each with its own pub/sub backplane on `channel`.
async fn pubsub_trio(url: &str, channel: &str) -> (Vec<TieredCache<String>>, Vec<RedisPubSub>) {
    let make = || {
        RedisPubSub::builder(url)
            .channel(channel)
            .ping_interval(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    trio(url, make, async |t: &RedisPubSub| {
        t.wait_connected(BOUND).await
    })
    .await
}

/// Three instances, each with client tracking on.
async fn tracking_trio(url: &str) -> (Vec<TieredCache<String>>, Vec<RedisTracking>) {
    let make = || {
        RedisTracking::builder(url)
            .ping_interval(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    trio(url, make, async |t: &RedisTracking| {
        t.wait_connected(BOUND).await
    })
    .await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// 1,000 writes on A over 10 keys that B and C hold in L1: after each write returns, B and C are
/// polled until they serve the new value. Returns the delays (both readers) sorted.
async fn writes_reach_the_other_instances(caches: &[TieredCache<String>], what: &str) {
    let ns = unique_space().namespace("coherence").unwrap();
    let keys: Vec<Key> = (0..10).map(|i| ns.key(i).unwrap()).collect();
    let (a, others) = (&caches[0], &caches[1..]);
    for key in &keys {
        a.set(key, "v0".to_owned()).await.unwrap();
    }
    let mut delays = Vec::new();
    for round in 1..=100 {
        for key in &keys {
            // B and C hold the current value in L1.
            for other in others {
                let held = other.get(key).await.unwrap();
                assert!(held.is_some(), "{what}: the key is cached");
            }
            let value = format!("v{round}");
            a.set(key, value.clone()).await.unwrap();
            let written = Instant::now();
            for other in others {
                loop {
                    let seen = other.get(key).await.unwrap();
                    if seen.as_deref() == Some(value.as_str()) {
                        delays.push(written.elapsed());
                        break;
                    }
                    assert!(
                        written.elapsed() < BOUND,
                        "{what}: instance {} still serves {seen:?} {BOUND:?} after the write",
                        other.name()
                    );
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    delays.sort();
    let (p50, p99, max) = (
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1],
    );
    eprintln!(
        "coherence ({what}): 1000 writes on A seen by B and C after p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    for other in others {
        let stats = other.stats();
        assert!(stats.invalidations_received >= 1_000, "{stats:?}");
    }
    // Client tracking needs no publishing: the server tells every instance.
    if what != "tracking" {
        assert!(a.stats().invalidations_sent >= 1_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_the_memory_transport_see_every_write() {
    let server = RedisServer::start();
    let caches = memory_trio(&server.url());
    writes_reach_the_other_instances(&caches, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_the_pubsub_backplane_see_every_write() {
    let server = RedisServer::start();
    let (caches, transports) = pubsub_trio(&server.url(), "coherence:writes").await;
    writes_reach_the_other_instances(&caches, "pubsub").await;
    assert!(transports[1].stats().received > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_client_tracking_see_every_write() {
    let server = RedisServer::start();
    let (caches, transports) = tracking_trio(&server.url()).await;
    writes_reach_the_other_instances(&caches, "tracking").await;
    assert!(transports[1].stats().keys_invalidated >= 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_by_a_plain_redis_client_leaves_the_l1_of_a_tracking_instance() {
    let server = RedisServer::start();
    let url = server.url();
    let (caches, _transports) = tracking_trio(&url).await;
    let (a, b) = (&caches[0], &caches[1]);
    let mut plain = redis_conn(&url).await;
    let ns = unique_space().namespace("plain").unwrap();
    let mut delays = Vec::new();
    for i in 0..100 {
        let key = ns.key(i).unwrap();
        a.set(&key, "cached".to_owned()).await.unwrap();
        // B holds it in L1 (after A's own invalidation message went by).
        wait_for_value(b, &key, "cached").await;
        // Another program, which knows nothing of envelopes, overwrites or deletes the key.
        let changed = if i % 2 == 0 {
            let _: () = redis::cmd("SET")
                .arg(key.as_str())
                .arg("{\"written\":\"by python\"}")
                .query_async(&mut plain)
                .await
                .unwrap();
            Instant::now()
        } else {
            let _: u64 = redis::cmd("DEL")
                .arg(key.as_str())
                .query_async(&mut plain)
                .await
                .unwrap();
            Instant::now()
        };
        loop {
            // Foreign bytes read as a miss: B serves nothing once it learned of the change.
            if b.get(&key).await.unwrap().is_none() {
                delays.push(changed.elapsed());
                break;
            }
            assert!(changed.elapsed() < BOUND, "B still serves the old value");
            tokio::task::yield_now().await;
        }
    }
    delays.sort();
    eprintln!(
        "coherence (tracking, plain client): 100 changes left B's L1 after p50 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_the_database_flushes_the_l1_of_a_tracking_instance() {
    let server = RedisServer::start();
    let url = server.url();
    let (caches, transports) = tracking_trio(&url).await;
    let key = unique_space().namespace("flush").unwrap().key(1).unwrap();
    caches[0].set(&key, "v".to_owned()).await.unwrap();
    wait_for_value(&caches[1], &key, "v").await;
    let flushes = caches[1].stats().l1_flushes;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis_conn(&url).await)
        .await
        .unwrap();
    wait_for(|| caches[1].stats().l1_flushes > flushes).await;
    assert_eq!(caches[1].get(&key).await.unwrap(), None);
    assert!(transports[1].stats().flushes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_transport_another_instance_keeps_its_l1_copy() {
    // The control for the tests above: what the transport fixes.
    let server = RedisServer::start();
    let (a, b) = (
        builder(&server.url(), "a").build().unwrap(),
        builder(&server.url(), "b").build().unwrap(),
    );
    let key = unique_space().namespace("control").unwrap().key(1).unwrap();
    a.set(&key, "old".to_owned()).await.unwrap();
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some("old"));
    a.set(&key, "new".to_owned()).await.unwrap();
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some("old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_clears_reach_the_other_instances() {
    let server = RedisServer::start();
    let (caches, _transports) = pubsub_trio(&server.url(), "coherence:deletes").await;
    let ns = unique_space().namespace("deletes").unwrap();
    let (k1, k2) = (ns.key(1).unwrap(), ns.key(2).unwrap());
    for key in [&k1, &k2] {
        caches[0].set(key, "v".to_owned()).await.unwrap();
        assert!(caches[1].get(key).await.unwrap().is_some());
    }
    // Waits until "a" has sent `n` invalidations (one per set, delete or clear) and "b" and "c"
    // have received them all: a set's own invalidation arriving late would otherwise satisfy a
    // wait meant for the delete's.
    let delivered = async |n: u64| {
        wait_for(|| {
            let sent = caches[0].stats().invalidations_sent;
            sent >= n
                && caches[1..]
                    .iter()
                    .all(|c| c.stats().invalidations_received >= sent)
        })
        .await;
    };
    delivered(2).await;
    caches[0].delete(&k1).await.unwrap();
    delivered(3).await;
    assert_eq!(caches[1].get(&k1).await.unwrap(), None);
    assert!(caches[1].get(&k2).await.unwrap().is_some());

    caches[0].clear(&ns).await.unwrap();
    delivered(4).await;
    assert_eq!(caches[2].get(&k2).await.unwrap(), None);
}

/// Waits (yielding, bounded) until `condition` holds: a signal, not a sleep standing in for one.
async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Kills the transports' connections: every pub/sub client, or every tracking connection.
async fn kill(admin: &mut redis::aio::MultiplexedConnection, tracking: bool) {
    if !tracking {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(admin)
            .await
            .unwrap();
        return;
    }
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    for line in clients.lines() {
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if field("name").as_deref() == Some(TRACKING_CLIENT_NAME)
            && let Some(id) = field("id")
        {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(admin)
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backplane_connection_flushes_and_caps_l1_and_invalidation_works_after() {
    let server = RedisServer::start();
    let (caches, transports) = pubsub_trio(&server.url(), "coherence:kill").await;
    let stats = |i: usize| {
        (
            transports[i].stats().subscriptions,
            transports[i].stats().disconnects,
        )
    };
    let before = stats(1);
    kills_flush_and_cap_l1(&server.url(), &caches, false).await;
    assert!(transports[1].wait_connected(BOUND).await);
    let after = stats(1);
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "{before:?} -> {after:?}"
    );
    after_the_kills_invalidation_works(&caches).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_flushes_and_caps_l1_and_invalidation_works_after() {
    let server = RedisServer::start();
    let (caches, transports) = tracking_trio(&server.url()).await;
    let before = transports[1].stats();
    kills_flush_and_cap_l1(&server.url(), &caches, true).await;
    assert!(transports[1].wait_connected(BOUND).await);
    let after = transports[1].stats();
    assert!(after.sessions > before.sessions && after.disconnects > before.disconnects);
    after_the_kills_invalidation_works(&caches).await;
}

async fn after_the_kills_invalidation_works(caches: &[TieredCache<String>]) {
    let (a, b) = (&caches[0], &caches[1]);
    let key = unique_space()
        .namespace("after-kill")
        .unwrap()
        .key(1)
        .unwrap();
    a.set(&key, "after".to_owned()).await.unwrap();
    wait_for_value(b, &key, "after").await;
    // Cached in B's L1 (from L2), then replaced through A: B must learn it by message.
    a.set(&key, "after-2".to_owned()).await.unwrap();
    wait_for_value(b, &key, "after-2").await;
}

async fn kills_flush_and_cap_l1(url: &str, caches: &[TieredCache<String>], tracking: bool) {
    let (a, b) = (&caches[0], &caches[1]);
    let key = unique_space().namespace("kill").unwrap().key(1).unwrap();
    a.set(&key, "w0".to_owned()).await.unwrap();
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some("w0"));
    let flushes = b.stats().l1_flushes;

    // Kill the transports' connections again and again for 1.5 s while A writes and B reads: B
    // may serve a value A replaced only within the disconnected cap (1 s) plus its reconnection.
    let mut admin = redis_conn(url).await;
    let cap = layercache_tiered::DEFAULT_DISCONNECTED_L1_TTL;
    let started = Instant::now();
    let mut written: Vec<(String, Instant)> = Vec::new();
    let mut round = 0;
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(1_500) {
        if round % 10 == 0 {
            kill(&mut admin, tracking).await;
        }
        round += 1;
        let value = format!("w{round}");
        a.set(&key, value.clone()).await.unwrap();
        written.push((value, Instant::now()));
        let seen = b.get(&key).await.unwrap().unwrap();
        // How long ago was `seen` replaced by a newer write that had returned?
        let position = written.iter().position(|(v, _)| *v == seen);
        let replaced_at = match position {
            Some(i) => written.get(i + 1).map(|(_, at)| *at),
            None => written.first().map(|(_, at)| *at),
        };
        if let Some(replaced_at) = replaced_at {
            worst = worst.max(replaced_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "coherence (kill, tracking: {tracking}): {round} writes, longest stale read {worst:?} (cap {cap:?}), B flushed L1 {} times",
        b.stats().l1_flushes - flushes
    );
    assert!(
        worst < cap + Duration::from_secs(2),
        "a stale read lasted {worst:?}, past the cap {cap:?}"
    );
    assert!(b.stats().l1_flushes > flushes, "L1 was flushed");
}

async fn wait_for_value(cache: &TieredCache<String>, key: &Key, value: &str) {
    let deadline = Instant::now() + BOUND;
    while cache.get(key).await.unwrap().as_deref() != Some(value) {
        assert!(
            Instant::now() < deadline,
            "{} never served {value}",
            cache.name()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_ten_thousand_entries_over_a_hundred_tags_on_three_instances() {
    let server = RedisServer::start();
    let (caches, _transports) = pubsub_trio(&server.url(), "coherence:tags").await;
    let ns = unique_space().namespace("tags").unwrap();
    let keys: Vec<Key> = (0..10_000).map(|i| ns.key(i).unwrap()).collect();
    let tag_of = |i: usize| format!("tag-{}", i % 100);
    let loads = Arc::new(AtomicU64::new(0));
    let read_all = |cache: &TieredCache<String>| {
        let (cache, keys, loads) = (cache.clone(), keys.clone(), Arc::clone(&loads));
        async move {
            let mut values = Vec::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                let options = EntryOptions::default().with_tags([tag_of(i)]);
                let loads = Arc::clone(&loads);
                let value = cache
                    .get_or_load_with(key, &options, move |key: Key| async move {
                        loads.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, layercache_core::Error>(Some(format!("{key} reloaded")))
                    })
                    .await
                    .unwrap();
                values.push(value);
            }
            values
        }
    };
    // Each instance loads a third; then every instance reads everything (L2, then L1).
    for (n, cache) in caches.iter().enumerate() {
        for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 3 == n) {
            let options = EntryOptions::default().with_tags([tag_of(i)]);
            cache
                .set_with(key, format!("{key}"), &options)
                .await
                .unwrap();
        }
    }
    for cache in &caches {
        read_all(cache).await;
    }
    assert_eq!(loads.load(Ordering::Relaxed), 0, "everything was cached");

    let received: Vec<u64> = caches
        .iter()
        .map(|c| c.stats().invalidations_received)
        .collect();
    let mut removed = 0;
    for t in 0..10 {
        removed += caches[t % 3]
            .invalidate_tag(&format!("tag-{t}"))
            .await
            .unwrap();
    }
    assert_eq!(removed, 1_000, "the tag index named every tagged key");
    // Each instance learns the tags the other two invalidated.
    for (cache, before) in caches.iter().zip(&received) {
        wait_for(|| cache.stats().invalidations_received >= before + 6).await;
    }
    for cache in &caches {
        // The loads of the instance before stored in L2 (through its lanes): wait for them.
        for other in &caches {
            wait_for(|| other.in_flight().2 == 0).await;
        }
        for (i, key) in keys.iter().enumerate() {
            let cached = cache.get(key).await.unwrap();
            // No instance serves an invalidated entry: the first finds nothing, the next ones what
            // the first loaded again. The rest is served as it was.
            let expected = match (i % 100 < 10, cache.name()) {
                (false, _) => Some(format!("{key}")),
                (true, "a") => None,
                (true, _) => Some(format!("{key} reloaded")),
            };
            assert_eq!(
                cached,
                expected,
                "{}: key {i} (tag {})",
                cache.name(),
                tag_of(i)
            );
        }
        let before = cache.stats().l1_hits;
        read_all(cache).await;
        // The other 9,000 entries are still L1 hits (and the 1,000 reloaded ones too, on the
        // instances whose `get` above copied them from L2).
        let hits = if cache.name() == "a" { 9_000 } else { 10_000 };
        assert_eq!(cache.stats().l1_hits - before, hits, "{}", cache.name());
    }
    // The 1,000 invalidated entries were loaded again once (by the first instance to read them).
    assert_eq!(loads.load(Ordering::Relaxed), 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_wins_over_a_load_that_began_before_it() {
    let server = RedisServer::start();
    let caches = memory_trio(&server.url());
    let key = unique_space()
        .namespace("tag-race")
        .unwrap()
        .key(1)
        .unwrap();
    let options = EntryOptions::default().with_tags(["t"]);
    let (loading, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = tokio::spawn({
        let (cache, key, options) = (caches[1].clone(), key.clone(), options.clone());
        let (loading, release) = (Arc::clone(&loading), Arc::clone(&release));
        async move {
            cache
                .get_or_load_with(&key, &options, move |_key: Key| async move {
                    loading.notify_one();
                    release.notified().await;
                    Ok::<_, layercache_core::Error>(Some("before".to_owned()))
                })
                .await
        }
    });
    loading.notified().await;
    caches[0].invalidate_tag("t").await.unwrap();
    release.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().as_deref(), Some("before"));
    // Neither B's L1 nor L2 serves what the load read before the invalidation.
    for cache in &caches {
        wait_for(|| cache.stats().invalidations_received >= u64::from(cache.name() != "a")).await;
        assert_eq!(cache.get(&key).await.unwrap(), None, "{}", cache.name());
    }
    // A value set after the invalidation returned is served.
    caches[2]
        .set_with(&key, "after".to_owned(), &options)
        .await
        .unwrap();
    for cache in &caches {
        wait_for_value(cache, &key, "after").await;
    }
}

/// Another instance, no transport: a load that began before a delete (or a write) of its key in
/// another instance cannot store its value in L2 after it (the conditional store and the
/// tombstone, ADR 0012).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_in_another_instance_cannot_overwrite_a_newer_write_or_delete_in_l2() {
    let server = RedisServer::start();
    let url = server.url();
    let (slow, writer) = (
        builder(&url, "slow").build().unwrap(),
        builder(&url, "writer").build().unwrap(),
    );
    let ns = unique_space().namespace("l2-race").unwrap();
    for (case, key) in [
        ("delete", ns.key("d").unwrap()),
        ("set", ns.key("s").unwrap()),
    ] {
        let (loading, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let load = tokio::spawn({
            let (cache, key) = (slow.clone(), key.clone());
            let (loading, release) = (Arc::clone(&loading), Arc::clone(&release));
            async move {
                cache
                    .get_or_load(&key, move |_key: Key| async move {
                        loading.notify_one();
                        release.notified().await;
                        Ok::<_, layercache_core::Error>(Some("stale".to_owned()))
                    })
                    .await
            }
        });
        loading.notified().await;
        match case {
            "delete" => {
                writer.delete(&key).await.unwrap();
            }
            _ => writer.set(&key, "newer".to_owned()).await.unwrap(),
        }
        let refused = slow.stats().l2_stores_refused;
        release.notify_one();
        load.await.unwrap().unwrap();
        let deadline = Instant::now() + BOUND;
        while slow.stats().l2_stores_refused == refused {
            assert!(
                Instant::now() < deadline,
                "{case}: L2 refused nothing: {:?}, raw {:?}",
                slow.stats(),
                raw_get(&url, &key).await
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let raw = raw_get(&url, &key).await;
        match case {
            "delete" => assert!(
                raw.as_deref().is_some_and(envelope::is_tombstone),
                "the tombstone is still there"
            ),
            _ => assert_eq!(
                writer.get(&key).await.unwrap().as_deref(),
                Some("newer"),
                "L2 keeps the newer write"
            ),
        }
        // A third instance reads L2: not the stale value.
        let reader = builder(&url, "reader").build().unwrap();
        assert_ne!(reader.get(&key).await.unwrap().as_deref(), Some("stale"));
    }
}
