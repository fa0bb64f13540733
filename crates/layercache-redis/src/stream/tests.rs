use super::*;
use layercache_testkit::RedisServer;

async fn journal(url: &str, stream: &str) -> RedisWriteJournal {
    RedisWriteJournal::builder(url, stream)
        .command_timeout(Duration::from_secs(2))
        .max_block(Duration::from_millis(500))
        .connect()
        .await
        .unwrap()
}

fn key(id: &str) -> Key {
    Key::new(format!("p:{id}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_reads_acks_and_takes_over_stale_entries() {
    let server = RedisServer::start();
    let j = journal(&server.url(), "wb:basics").await;
    // Connecting twice keeps the existing group (BUSYGROUP is not an error).
    let other = journal(&server.url(), "wb:basics").await;
    assert_eq!(j.backlog().await.unwrap(), JournalBacklog::default());

    let a = j
        .append(&key("a"), JournalOp::Put, b"{\"v\":1}")
        .await
        .unwrap();
    let b = j.append(&key("b"), JournalOp::Delete, b"").await.unwrap();
    let backlog = j.backlog().await.unwrap();
    assert_eq!(backlog.entries, 2);
    assert_eq!(backlog.last_id.as_deref(), Some(b.as_str()));
    assert!(backlog.oldest.is_some());

    let read = j.read("c1", 10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(
        read[0],
        JournalRecord::new(a.clone(), key("a"), JournalOp::Put, b"{\"v\":1}".to_vec())
    );
    assert_eq!((read[1].op, read[1].payload.len()), (JournalOp::Delete, 0));
    assert_eq!(j.pending().await.unwrap(), 2);
    // Nothing new: the read blocks, then answers empty.
    let started = std::time::Instant::now();
    assert!(
        other
            .read("c2", 10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    // c1 "dies"; c2 takes over its entries once they are idle long enough.
    assert!(
        other
            .claim_stale("c2", Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let claimed = loop {
        let claimed = other
            .claim_stale("c2", Duration::from_millis(50), 10)
            .await
            .unwrap();
        if !claimed.is_empty() || std::time::Instant::now() > deadline {
            break claimed;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(claimed.iter().map(|r| &r.id).collect::<Vec<_>>(), [&a, &b]);

    assert_eq!(j.unacked(&a, 10).await.unwrap(), std::slice::from_ref(&a));
    assert_eq!(other.ack(std::slice::from_ref(&a)).await.unwrap(), 1);
    assert!(j.unacked(&a, 10).await.unwrap().is_empty());
    assert_eq!(j.backlog().await.unwrap().entries, 1);
    assert_eq!(other.ack(std::slice::from_ref(&b)).await.unwrap(), 1);
    assert_eq!(j.backlog().await.unwrap().entries, 0);
    assert_eq!(j.pending().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_deleted_stream_and_drops_foreign_entries() {
    let server = RedisServer::start();
    let j = journal(&server.url(), "wb:foreign").await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg("wb:foreign")
        .arg("*")
        .arg("something")
        .arg("else")
        .query_async(&mut raw)
        .await
        .unwrap();
    let id = j.append(&key("a"), JournalOp::Put, b"1").await.unwrap();
    let read = j.read("c", 10, Duration::ZERO).await.unwrap();
    assert_eq!(read.iter().map(|r| &r.id).collect::<Vec<_>>(), [&id]);
    assert_eq!(j.malformed(), 1);
    assert_eq!(
        j.backlog().await.unwrap().entries,
        1,
        "the foreign entry is gone"
    );

    // The stream (and its group) disappear: the journal makes them again.
    let _: u64 = redis::cmd("DEL")
        .arg("wb:foreign")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(j.read("c", 10, Duration::ZERO).await.unwrap().is_empty());
    let id = j.append(&key("b"), JournalOp::Put, b"2").await.unwrap();
    assert_eq!(j.read("c", 10, Duration::ZERO).await.unwrap()[0].id, id);
    assert!(
        j.claim_stale("c", Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_within_their_bound_when_redis_is_paused() {
    let server = RedisServer::start();
    let j = RedisWriteJournal::builder(server.url(), "wb:paused")
        .command_timeout(Duration::from_millis(200))
        .max_block(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    j.append(&key("a"), JournalOp::Put, b"1").await.unwrap();
    server.pause();
    let started = std::time::Instant::now();
    assert!(j.append(&key("b"), JournalOp::Put, b"2").await.is_err());
    assert!(j.read("c", 10, Duration::from_millis(100)).await.is_err());
    assert!(j.backlog().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    server.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let read = loop {
        match j.read("c", 10, Duration::from_millis(50)).await {
            Ok(read) if !read.is_empty() => break read,
            _ => assert!(std::time::Instant::now() < deadline, "no recovery"),
        }
    };
    assert_eq!(read[0].key, key("a"));
}

#[test]
fn stream_ids_carry_their_time() {
    assert_eq!(
        id_time("1700000000123-7"),
        Some(Timestamp::from_millis(1_700_000_000_123))
    );
    assert_eq!(id_time("nope"), None);
}
