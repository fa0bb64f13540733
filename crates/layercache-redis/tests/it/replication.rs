//! The journal's bound on what a failover loses (`RedisWriteJournalBuilder::wait_for_replicas`),
//! on a Redis Cluster of 3 primaries with a replica each and on one server with a replica: an
//! append waits for the replica (`WAIT` in its round trip), fails while no replica acknowledges
//! it, and an acknowledged append survives its primary's SIGKILL.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use layercache_core::{ErrorKind, JournalOp, Key, WriteJournal};
use layercache_redis::RedisWriteJournal;
use layercache_testkit::{RedisCluster, RedisServer};

const STREAM: &str = "wb:replicated";
/// A generous bound on what must end: past it the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(60);

async fn journal(cluster: &RedisCluster, wait: Option<Duration>) -> RedisWriteJournal {
    journal_bounded(cluster, Duration::from_secs(2), wait).await
}

async fn journal_bounded(
    cluster: &RedisCluster,
    command_timeout: Duration,
    wait: Option<Duration>,
) -> RedisWriteJournal {
    let builder = RedisWriteJournal::cluster_builder(cluster.urls(), STREAM)
        .command_timeout(command_timeout)
        .max_block(Duration::from_millis(200));
    let builder = match wait {
        Some(timeout) => builder.wait_for_replicas(1, timeout),
        None => builder,
    };
    builder.connect().await.unwrap()
}

/// The number in `INFO section` of node `index` after `prefix`, up to a comma.
fn info_number(cluster: &RedisCluster, index: usize, section: &str, prefix: &str) -> u64 {
    let mut conn = redis::Client::open(cluster.node(index).url())
        .unwrap()
        .get_connection()
        .unwrap();
    let info: String = redis::cmd("INFO").arg(section).query(&mut conn).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// How many `WAIT`s node `index` ran.
fn waits(cluster: &RedisCluster, index: usize) -> u64 {
    info_number(cluster, index, "commandstats", "cmdstat_wait:calls=")
}

fn key(i: u64) -> Key {
    Key::new(format!("p:{i}")).unwrap()
}

/// An append that no replica acknowledges: a temporary `Unavailable` error saying so.
async fn refused_for_want_of_a_replica(journal: &RedisWriteJournal) {
    let err = journal
        .append(&key(0), JournalOp::Put, b"{}")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary(), "{err}");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
}

#[test]
fn waiting_for_no_replica_or_for_no_time_is_a_config_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (replicas, timeout) in [(0, Duration::from_secs(1)), (1, Duration::ZERO)] {
        let err = runtime
            .block_on(
                RedisWriteJournal::builder("redis://127.0.0.1:1/", STREAM)
                    .wait_for_replicas(replicas, timeout)
                    .connect(),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_acknowledged_by_a_replica_survive_their_primary_s_sigkill() {
    let cluster = RedisCluster::replicated();
    // Generous for a busy machine: a healthy replica acknowledges within milliseconds.
    let waiting = journal(&cluster, Some(Duration::from_secs(2))).await;
    // Where no replica can answer, a short wait keeps the test short.
    let impatient = journal(&cluster, Some(Duration::from_millis(300))).await;
    let plain = journal(&cluster, None).await;
    // Commands bounded by 1 s, appends that may wait 10 s for a replica.
    let patient = journal_bounded(&cluster, Duration::from_secs(1), Some(BOUND / 6)).await;
    let owner = cluster.primary_of_key(STREAM);
    let replica = cluster.replicas_of(owner)[0];

    // Each append carries its WAIT, to the stream's primary.
    let before = waits(&cluster, owner);
    for i in 0..10 {
        waiting
            .append(&key(i), JournalOp::Put, b"{}")
            .await
            .unwrap();
    }
    assert_eq!(waits(&cluster, owner), before + 10);
    plain.append(&key(10), JournalOp::Put, b"{}").await.unwrap();
    assert_eq!(waits(&cluster, owner), before + 10, "off by default");

    // A replica that does not answer: the append is not acknowledged (the plain one is).
    cluster.node(replica).pause();
    refused_for_want_of_a_replica(&impatient).await;
    plain.append(&key(11), JournalOp::Put, b"{}").await.unwrap();
    // Redis blocks a client in WAIT: the journal's other commands (the worker's
    // acknowledgments, claims, backlog) must not queue behind it.
    let waiting_append = tokio::spawn({
        let patient = patient.clone();
        async move { patient.append(&key(12), JournalOp::Put, b"{}").await }
    });
    let started = Instant::now();
    while info_number(&cluster, owner, "clients", "blocked_clients:") == 0 {
        assert!(started.elapsed() < BOUND, "the append never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let backlog = patient.backlog().await.unwrap();
    assert!(backlog.entries >= 12, "{backlog:?}");
    // Once the replica answers again, the waiting append is acknowledged.
    cluster.node(replica).resume();
    waiting_append.await.unwrap().unwrap();
    cluster.wait_healthy();

    // 4 tasks append without pause; the primary is SIGKILLed among them. Every append that
    // returned Ok is in the stream the replica serves afterwards.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (journal, acknowledged, stop) = (
                waiting.clone(),
                Arc::clone(&acknowledged),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut failed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match journal.append(&key(13), JournalOp::Put, b"{}").await {
                        Ok(id) => {
                            acknowledged.lock().unwrap().insert(id);
                        }
                        Err(error) => {
                            assert!(error.is_temporary(), "{error}");
                            failed += 1;
                            // While the shard fails over: no busy loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                failed
            })
        })
        .collect();
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(started.elapsed() < BOUND, "too few appends acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failover = {
        let cluster = &cluster;
        tokio::task::block_in_place(|| cluster.crash_primary(owner))
    };
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for task in tasks {
        failed += task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "{} appends acknowledged, {failed} failed around the SIGKILL; the replica took over after {:?}",
        acknowledged.len(),
        failover.took
    );

    // The shard has no replica now: appends that wait for one fail, the others go through.
    refused_for_want_of_a_replica(&impatient).await;
    let started = Instant::now();
    while let Err(error) = plain.append(&key(14), JournalOp::Put, b"{}").await {
        assert!(error.is_temporary(), "{error}");
        assert!(started.elapsed() < BOUND, "appends never resumed: {error}");
    }
    let in_stream: BTreeSet<String> = plain
        .unacked("+", 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&in_stream).collect();
    assert!(lost.is_empty(), "acknowledged appends lost: {lost:?}");

    // The old primary comes back as the new one's replica: waiting appends go through again.
    cluster.node(failover.old_primary).restart();
    cluster.wait_healthy();
    waiting
        .append(&key(14), JournalOp::Put, b"{}")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_server_appends_wait_for_its_replica() {
    let (primary, replica) = (RedisServer::start(), RedisServer::start());
    // The first sync starts at once, not after the default 5 s wait for more replicas.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync-delay")
        .arg(0)
        .query(
            &mut redis::Client::open(primary.url())
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
    let mut admin = redis::Client::open(replica.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg(primary.host())
        .arg(primary.port())
        .query(&mut admin)
        .unwrap();
    let started = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut admin)
            .unwrap();
        if info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0") {
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "the replica never synced: {info}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let journal = |timeout| {
        RedisWriteJournal::builder(primary.url(), STREAM)
            .command_timeout(Duration::from_secs(2))
            .wait_for_replicas(1, timeout)
            .connect()
    };
    let (waiting, impatient) = (
        journal(Duration::from_secs(2)).await.unwrap(),
        journal(Duration::from_millis(300)).await.unwrap(),
    );
    let id = waiting
        .append(&key(0), JournalOp::Put, b"{}")
        .await
        .unwrap();
    let on_replica: Vec<String> = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query::<redis::streams::StreamRangeReply>(&mut admin)
        .unwrap()
        .ids
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(on_replica, vec![id], "acknowledged: on the replica already");
    replica.pause();
    refused_for_want_of_a_replica(&impatient).await;
    replica.resume();
}
