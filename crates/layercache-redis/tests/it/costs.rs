//! What each operation costs a Redis Cluster (3 primaries, a replica each): commands and bytes on
//! the primaries, from `INFO commandstats` and `INFO stats` before and after 1,000 operations of
//! one kind. The command counts are asserted; the bytes are printed for `docs/scaling.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use layercache_core::{Backend, Entry, EntryMeta, Key, ManualClock, Tags, Timestamp};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisCluster;
use layercache_testkit::conformance::unique_space;

const N: u64 = 1_000;

/// Commands run and bytes in and out (replication excluded) on the primaries.
#[derive(Debug, Default, Clone, PartialEq)]
struct Load {
    commands: BTreeMap<String, u64>,
    bytes_in: u64,
    bytes_out: u64,
}

fn field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn load(cluster: &RedisCluster, primaries: &[usize]) -> Load {
    let mut total = Load::default();
    for &index in primaries {
        let url = cluster.node(index).url();
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        let stats: String = redis::cmd("INFO").arg("stats").query(&mut conn).unwrap();
        total.bytes_in += field(&stats, "total_net_input_bytes");
        total.bytes_out += field(&stats, "total_net_output_bytes");
        let commands: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap();
        for line in commands.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(":calls="))
            else {
                continue;
            };
            let calls: u64 = rest.split(',').next().unwrap().parse().unwrap();
            *total.commands.entry(name.to_owned()).or_default() += calls;
        }
    }
    total
}

/// Commands on a primary that no operation of ours sends: the probes' own `INFO`, and what the
/// replicas send on their replication link (`REPLCONF ACK` every second, a resync).
const NOT_OURS: [&str; 4] = ["info", "replconf", "psync", "sync"];

/// What happened between two loads, without the commands [`NOT_OURS`] (the probes' replies, a
/// few kilobytes, add about 15 bytes out per operation); per operation.
fn per_op(before: &Load, after: &Load, what: &str) -> BTreeMap<String, f64> {
    let mut commands = BTreeMap::new();
    for (name, calls) in &after.commands {
        let delta = calls - before.commands.get(name).copied().unwrap_or(0);
        if delta > 0 && !NOT_OURS.contains(&name.as_str()) {
            commands.insert(name.clone(), delta as f64 / N as f64);
        }
    }
    println!(
        "cost {what}: {commands:?} per op; {:.0} bytes in, {:.0} bytes out per op",
        (after.bytes_in - before.bytes_in) as f64 / N as f64,
        (after.bytes_out - before.bytes_out) as f64 / N as f64,
    );
    commands
}

fn entry(tags: &[&str]) -> Entry<String> {
    let (at, far) = (
        Timestamp::from_millis(1_000),
        Timestamp::from_millis(3_600_000),
    );
    Entry::new(
        "x".repeat(100),
        EntryMeta::new(at, far, far).with_tags(tags.iter().copied().collect::<Tags>()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_operation_costs_on_a_cluster() {
    let cluster = RedisCluster::replicated();
    let redis = RedisBackend::cluster_builder(cluster.urls())
        .clock(ManualClock::new(Timestamp::from_millis(2_000)))
        .command_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let ns = unique_space().namespace("costs").unwrap();
    let keys: Vec<Key> = (0..N).map(|i| ns.key(i).unwrap()).collect();
    let primaries = cluster.primaries();
    let load = |cluster: &RedisCluster| load(cluster, &primaries);
    let one = |name: &str, calls: f64| BTreeMap::from([(name.to_owned(), calls)]);

    let before = load(&cluster);
    for key in &keys {
        redis.set(key, entry(&[])).await.unwrap();
    }
    let after = load(&cluster);
    assert_eq!(
        per_op(&before, &after, "set (100-byte value)"),
        one("set", 1.0)
    );

    let before = after;
    for key in &keys {
        redis.set_if_newer(key, entry(&[])).await.unwrap();
    }
    let after = load(&cluster);
    // A load's conditional store: one EVAL, whose script runs a GET (and a SET when newer).
    let stored = per_op(&before, &after, "set_if_newer (a load's store)");
    assert_eq!(stored.get("eval"), Some(&1.0));

    let before = after;
    for key in &keys {
        let _: Option<Entry<String>> = redis.get(key).await.unwrap();
    }
    let after = load(&cluster);
    assert_eq!(per_op(&before, &after, "get (hit)"), one("get", 1.0));

    let before = after;
    for key in &keys {
        Backend::<String>::invalidate(
            &redis,
            key,
            Timestamp::from_millis(2_000),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let after = load(&cluster);
    assert_eq!(
        per_op(&before, &after, "invalidate (tombstone)"),
        one("set", 1.0)
    );

    // 1,000 tags of 10 keys each: SADD + 2 PEXPIRE per tagged store ...
    let tagged: Vec<Key> = (0..10 * N)
        .map(|i| ns.key(format!("t{i}")).unwrap())
        .collect();
    let before = load(&cluster);
    for (i, key) in tagged.iter().enumerate() {
        let tag = format!("tag-{}", i as u64 % N);
        redis.set(key, entry(&[&tag])).await.unwrap();
    }
    let after = load(&cluster);
    let store = per_op(&before, &after, "set with one tag (per tagged store x10)");
    assert_eq!(store.get("sadd"), Some(&10.0));
    // ... and a tag invalidation: SSCAN of its set, a tombstone per key, UNLINK of the set.
    let before = after;
    for t in 0..N {
        let removed = Backend::<String>::invalidate_tag(
            &redis,
            &format!("tag-{t}"),
            Timestamp::from_millis(2_000),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(removed, 10);
    }
    let after = load(&cluster);
    let invalidated = per_op(&before, &after, "invalidate_tag (10 keys)");
    assert_eq!(invalidated.get("sscan"), Some(&1.0));
    assert_eq!(invalidated.get("set"), Some(&10.0));
    assert_eq!(invalidated.get("unlink"), Some(&1.0));
}
