//! Order across processes (ADR 0012): conditional stores, tombstones, the tag index, and the
//! pub/sub backplane's handling of foreign messages.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use layercache_core::{
    Backend, Entry, EntryMeta, Invalidation, InvalidationBatch, InvalidationSink,
    InvalidationTransport, Key, Tags, Timestamp,
};
use layercache_redis::{RedisBackend, RedisPubSub};
use layercache_testkit::conformance::unique_space;

use crate::shared_server;

fn entry(value: &str, created_ms: u64, tags: &[&str]) -> Entry<String> {
    let created = Timestamp::from_millis(created_ms);
    let far = Timestamp::from_millis(created_ms + 3_600_000);
    let meta = EntryMeta::new(created, far, far).with_tags(tags.iter().copied().collect::<Tags>());
    Entry::new(value.to_owned(), meta)
}

/// The entries' times are near the epoch's start; a clock there keeps them alive.
fn early_clock() -> layercache_core::ManualClock {
    layercache_core::ManualClock::new(Timestamp::from_millis(1_000))
}

async fn standalone() -> RedisBackend {
    RedisBackend::builder(shared_server().url())
        .clock(early_clock())
        .connect()
        .await
        .unwrap()
}

/// No script or pipeline touches keys of two slots: no `CROSSSLOT` reaches the caller.
async fn cluster() -> RedisBackend {
    RedisBackend::cluster_builder(crate::shared_cluster().urls())
        .clock(early_clock())
        .command_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_conditional_store_gives_way_to_anything_as_new_or_newer() {
    conditional_stores(standalone().await, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_conditional_store_gives_way_to_anything_as_new_or_newer() {
    conditional_stores(cluster().await, true).await;
}

#[tokio::test]
async fn a_tag_invalidation_tombstones_every_key_its_index_names() {
    tag_invalidation(standalone().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_tag_invalidation_tombstones_every_key_its_index_names() {
    tag_invalidation(cluster().await).await;
}

/// `cluster`: whether `backend` is the shared cluster's (foreign bytes are written there).
async fn conditional_stores(backend: RedisBackend, cluster: bool) {
    let redis: &dyn Backend<String> = &backend;
    let ns = unique_space().namespace("ordering").unwrap();
    let key = ns.key("k").unwrap();
    // Nothing there: it stores.
    assert!(
        redis
            .set_if_newer(&key, entry("a", 2_000, &[]))
            .await
            .unwrap()
    );
    // An older load, and one of the same millisecond, give way; a newer one stores.
    assert!(
        !redis
            .set_if_newer(&key, entry("older", 1_500, &[]))
            .await
            .unwrap()
    );
    assert!(
        !redis
            .set_if_newer(&key, entry("tie", 2_000, &[]))
            .await
            .unwrap()
    );
    assert!(
        redis
            .set_if_newer(&key, entry("newer", 2_500, &[]))
            .await
            .unwrap()
    );
    let got = redis.get(&key).await.unwrap();
    assert_eq!(got.unwrap().value, "newer");

    // A delete leaves a tombstone: loads that began at or before it give way, later ones store.
    assert!(
        redis
            .invalidate(&key, Timestamp::from_millis(3_000), Duration::from_secs(60))
            .await
            .unwrap()
    );
    let got = redis.get(&key).await.unwrap();
    assert!(got.is_none(), "a tombstone reads as a miss");
    assert_eq!(
        backend.stats().decode_failures,
        0,
        "and is no decode failure"
    );
    assert!(
        !redis
            .set_if_newer(&key, entry("before", 3_000, &[]))
            .await
            .unwrap()
    );
    assert!(
        redis
            .set_if_newer(&key, entry("after", 3_001, &[]))
            .await
            .unwrap()
    );
    // A second delete of a tombstone finds nothing present.
    let deleted = redis
        .invalidate(&key, Timestamp::from_millis(4_000), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(deleted);
    let again = redis
        .invalidate(&key, Timestamp::from_millis(4_001), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!again);

    // Foreign bytes are replaced.
    let foreign = ns.key("foreign").unwrap();
    let mut set = redis::cmd("SET");
    set.arg(foreign.as_str()).arg("{\"not\":\"ours\"}");
    if cluster {
        let client = redis::cluster::ClusterClient::new(crate::shared_cluster().urls()).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        let () = set.query_async(&mut conn).await.unwrap();
    } else {
        let client = redis::Client::open(shared_server().url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let () = set.query_async(&mut conn).await.unwrap();
    }
    assert!(
        redis
            .set_if_newer(&foreign, entry("ours", 1_000, &[]))
            .await
            .unwrap()
    );

    // A batch answers per item, in order.
    let (k1, k2) = (ns.key("b1").unwrap(), ns.key("b2").unwrap());
    redis.set(&k1, entry("newer", 9_000, &[])).await.unwrap();
    let stored = redis
        .set_many_if_newer(vec![
            (k1, entry("old", 8_000, &[])),
            (k2, entry("new", 8_000, &[])),
        ])
        .await
        .unwrap();
    assert_eq!(stored, vec![false, true]);
}

async fn tag_invalidation(backend: RedisBackend) {
    let redis: &dyn Backend<String> = &backend;
    let ns = unique_space().namespace("tag-index").unwrap();
    let tag = format!("t-{}", ns.scope());
    let keys: Vec<Key> = (0..50).map(|i| ns.key(i).unwrap()).collect();
    for (i, key) in keys.iter().enumerate() {
        let tags: &[&str] = if i % 2 == 0 { &[&tag] } else { &[] };
        redis.set(key, entry("v", 2_000, tags)).await.unwrap();
    }
    let removed = redis
        .invalidate_tag(&tag, Timestamp::from_millis(3_000), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(removed, 25);
    for (i, key) in keys.iter().enumerate() {
        let got = redis.get(key).await.unwrap();
        assert_eq!(got.is_none(), i % 2 == 0, "key {i}");
    }
    // The index is gone with it: a second invalidation names nothing.
    let again = redis
        .invalidate_tag(&tag, Timestamp::from_millis(3_001), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again, 0);
}

/// Collects what a transport delivers.
#[derive(Default)]
struct Collect {
    batches: Mutex<Vec<InvalidationBatch>>,
}

impl InvalidationSink for Collect {
    fn receive(&self, batch: InvalidationBatch) {
        self.batches.lock().unwrap().push(batch);
    }
    fn disconnected(&self) {}
    fn reconnected(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_skips_its_own_batches_and_foreign_messages() {
    let url = shared_server().url();
    let channel = format!("ordering:{}", unique_space().prefix());
    let (one, two) = (
        RedisPubSub::builder(&url)
            .channel(&channel)
            .build()
            .unwrap(),
        RedisPubSub::builder(&url)
            .channel(&channel)
            .build()
            .unwrap(),
    );
    let (heard_one, heard_two) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
    one.attach(1, Arc::downgrade(&heard_one) as Weak<dyn InvalidationSink>)
        .unwrap();
    two.attach(2, Arc::downgrade(&heard_two) as Weak<dyn InvalidationSink>)
        .unwrap();
    assert!(one.wait_connected(Duration::from_secs(10)).await);
    assert!(two.wait_connected(Duration::from_secs(10)).await);
    assert!(
        one.attach(1, Arc::downgrade(&heard_one) as Weak<dyn InvalidationSink>)
            .is_err()
    );

    // Garbage on the channel is counted and ignored.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("not a batch")
        .query_async(&mut conn)
        .await
        .unwrap();
    let batch = InvalidationBatch {
        origin: 1,
        sent_at: Timestamp::from_millis(5),
        items: vec![Invalidation::Key(Key::new("x").unwrap())],
    };
    one.publish(&batch).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while heard_two.batches.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(heard_two.batches.lock().unwrap()[0], batch);
    // The garbage was published first, so it has been read by now.
    assert_eq!(two.stats().decode_failures, 1);
    assert!(
        heard_one.batches.lock().unwrap().is_empty(),
        "its own batch"
    );
}
