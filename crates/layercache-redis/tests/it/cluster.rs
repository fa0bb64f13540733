//! The backend, the lock store and the journal on a Redis Cluster of 3 primaries with a replica
//! each: batches over every slot, `clear` on every primary, and a primary that dies.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use layercache_core::{
    Backend, Entry, EntryMeta, JournalOp, Key, LockStore, ManualClock, Timestamp, WriteJournal,
};
use layercache_redis::{RedisBackend, RedisWriteJournal};
use layercache_testkit::RedisCluster;
use layercache_testkit::conformance::unique_space;

use crate::shared_cluster;

/// A generous bound on what must end: past it the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

fn entry(value: String) -> Entry<String> {
    let far = Timestamp::from_millis(3_600_000);
    Entry::new(
        value,
        EntryMeta::new(Timestamp::from_millis(1_000), far, far),
    )
}

async fn backend(cluster: &RedisCluster) -> RedisBackend {
    RedisBackend::cluster_builder(cluster.urls())
        .clock(ManualClock::new(Timestamp::from_millis(2_000)))
        .command_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_a_thousand_keys_over_every_slot_answer_in_key_order() {
    let cluster = shared_cluster();
    let redis = backend(cluster).await;
    let ns = unique_space().namespace("bulk").unwrap();
    let keys: Vec<Key> = (0..1_000).map(|i| ns.key(i).unwrap()).collect();
    // The keys spread over every primary.
    let owners: BTreeSet<usize> = keys
        .iter()
        .take(30)
        .map(|key| cluster.primary_of_key(key.as_str()))
        .collect();
    assert_eq!(owners.len(), 3, "{owners:?}");

    let items: Vec<(Key, Entry<String>)> = keys
        .iter()
        .map(|key| (key.clone(), entry(format!("v:{key}"))))
        .collect();
    redis.set_many(items).await.unwrap();

    // Every other key asked is one never stored: the answers keep the order asked.
    let asked: Vec<Key> = keys
        .iter()
        .flat_map(|key| [key.clone(), ns.key(format!("absent-{key}")).unwrap()])
        .collect();
    let got: Vec<Option<Entry<String>>> = redis.get_many(&asked).await.unwrap();
    assert_eq!(got.len(), 2_000);
    for (key, answer) in asked.iter().zip(&got) {
        let expected = (!key.as_str().contains("absent-")).then(|| format!("v:{key}"));
        assert_eq!(answer.as_ref().map(|e| e.value.clone()), expected, "{key}");
    }

    // Conditional stores over every slot: older entries give way, each answered in order.
    let older: Vec<(Key, Entry<String>)> = keys
        .iter()
        .map(|key| {
            let at = Timestamp::from_millis(500);
            let far = Timestamp::from_millis(3_600_000);
            (
                key.clone(),
                Entry::new("old".to_owned(), EntryMeta::new(at, far, far)),
            )
        })
        .collect();
    let stored = redis.set_many_if_newer(older).await.unwrap();
    assert_eq!(stored, vec![false; 1_000]);

    assert_eq!(
        Backend::<String>::delete_many(&redis, &keys).await.unwrap(),
        1_000
    );
    let gone: Vec<Option<Entry<String>>> = redis.get_many(&keys).await.unwrap();
    assert!(gone.iter().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_a_namespace_from_every_primary_and_nothing_else() {
    let cluster = shared_cluster();
    let redis = backend(cluster).await;
    let space = unique_space();
    let (ns, other) = (
        space.namespace("cleared").unwrap(),
        space.namespace("kept").unwrap(),
    );
    let items = |ns: &layercache_core::Namespace| {
        (0..300)
            .map(|i| (ns.key(i).unwrap(), entry(i.to_string())))
            .collect::<Vec<_>>()
    };
    redis.set_many(items(&ns)).await.unwrap();
    redis.set_many(items(&other)).await.unwrap();
    assert_eq!(Backend::<String>::clear(&redis, &ns).await.unwrap(), 300);
    let keys =
        |ns: &layercache_core::Namespace| (0..300).map(|i| ns.key(i).unwrap()).collect::<Vec<_>>();
    let cleared: Vec<Option<Entry<String>>> = redis.get_many(&keys(&ns)).await.unwrap();
    assert!(cleared.iter().all(Option::is_none));
    let kept: Vec<Option<Entry<String>>> = redis.get_many(&keys(&other)).await.unwrap();
    assert!(kept.iter().all(Option::is_some));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_of_keys_in_every_slot_are_exclusive_and_token_checked() {
    let cluster = shared_cluster();
    let locks = backend(cluster).await.lock_store();
    let ns = unique_space().namespace("locks").unwrap();
    let lease = Duration::from_secs(30);
    for i in 0..60 {
        let key = ns.key(i).unwrap();
        assert!(locks.try_acquire(&key, "mine", lease).await.unwrap());
        assert!(!locks.try_acquire(&key, "theirs", lease).await.unwrap());
        assert!(!locks.extend(&key, "theirs", lease).await.unwrap());
        assert!(locks.extend(&key, "mine", lease).await.unwrap());
        assert!(!locks.release(&key, "theirs").await.unwrap());
        assert!(locks.release(&key, "mine").await.unwrap());
        assert!(locks.try_acquire(&key, "theirs", lease).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_lives_in_one_slot_and_follows_its_primary_through_a_failover() {
    let cluster = RedisCluster::replicated();
    let journal = RedisWriteJournal::cluster_builder(cluster.urls(), "wb:{journal}")
        .command_timeout(Duration::from_secs(2))
        .max_block(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let key = |i: u32| Key::new(format!("p:{i}")).unwrap();
    for i in 0..50 {
        journal
            .append(&key(i), JournalOp::Put, b"{}")
            .await
            .unwrap();
    }
    let read = journal
        .read("c1", 100, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(read.len(), 50);
    let ids: Vec<String> = read.iter().map(|r| r.id.clone()).collect();
    assert_eq!(journal.ack(&ids[..25]).await.unwrap(), 25);
    assert_eq!(journal.backlog().await.unwrap().entries, 25);
    assert_eq!(journal.pending().await.unwrap(), 25);

    // The stream's primary dies once its replica has every entry; the replica takes over.
    let owner = cluster.primary_of_key("wb:{journal}");
    cluster.wait_replicated(owner);
    cluster.crash_primary(owner);

    // Appends resume on the new primary (an append during the failover may fail, temporarily;
    // one that timed out may still have landed, so the retry can append a second copy: a
    // journal is at least once).
    let started = Instant::now();
    loop {
        match journal.append(&key(50), JournalOp::Delete, b"").await {
            Ok(_) => break,
            Err(error) => {
                assert!(error.is_temporary(), "{error}");
                assert!(started.elapsed() < BOUND, "appends never resumed: {error}");
            }
        }
    }
    let entries = journal.backlog().await.unwrap().entries;
    assert!((26..=27).contains(&entries), "{entries}");
    let claimed = journal
        .claim_stale("c2", Duration::ZERO, 100)
        .await
        .unwrap();
    let claimed: Vec<String> = claimed.into_iter().map(|r| r.id).collect();
    assert_eq!(claimed, ids[25..].to_vec(), "nothing pending was lost");
    let fresh = journal
        .read("c2", 100, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(
        fresh.len() as u64,
        entries - 25,
        "the appends after the failover"
    );
    assert!(
        fresh
            .iter()
            .all(|r| r.op == JournalOp::Delete && r.key == key(50))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_recovers_by_itself_when_a_primary_fails_over() {
    let cluster = RedisCluster::replicated();
    let redis = backend(&cluster).await;
    let ns = unique_space().namespace("failover").unwrap();
    let keys: Vec<Key> = (0..300).map(|i| ns.key(i).unwrap()).collect();
    let items = keys.iter().map(|k| (k.clone(), entry(format!("f:{k}"))));
    redis.set_many(items.collect()).await.unwrap();
    let owner = cluster.primary_of_key(keys[0].as_str());
    cluster.wait_replicated(owner);
    cluster.crash_primary(owner);
    // Only batches: redis-rs does not learn the new topology from a failed fan-out by itself.
    // Errors on the way are temporary; then every key reads back, from every shard.
    let started = Instant::now();
    loop {
        match redis.get_many(&keys).await {
            Ok(got) => {
                let got: Vec<Option<Entry<String>>> = got;
                assert!(
                    got.iter().all(Option::is_some),
                    "a replicated value was lost"
                );
                break;
            }
            Err(error) => {
                assert!(error.is_temporary(), "{error}");
                assert!(started.elapsed() < BOUND, "reads never resumed: {error}");
            }
        }
    }
    assert_eq!(Backend::<String>::clear(&redis, &ns).await.unwrap(), 300);
}
