//! Every feature as a Redis user restricted to `~app:*`, created from the very ACL line
//! `docs/redis-permissions.md` gives (issue 11): the two-tier cache, namespace clear, tags, the
//! distributed lock, durable write-behind, pub/sub and client tracking. Nothing is refused (the
//! server's ACL log stays empty), every key lands under the prefix, and with one permission
//! taken away the start-up check names the feature and the command.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use layercache_core::{EntryOptions, ErrorKind, Key, KeySpace, Result, Writer, async_trait};
use layercache_redis::{
    PermissionDenied, RedisBackend, RedisFeature, RedisPubSub, RedisTracking, RedisWriteJournal,
};
use layercache_stampede::LockOptions;
use layercache_strategy::WriteBehind;
use layercache_testkit::RedisServer;
use layercache_tiered::TieredCache;

const PREFIX: &str = "app:";
const BOUND: Duration = Duration::from_secs(10);

/// The `ACL SETUSER` line of docs/redis-permissions.md, split into arguments.
fn documented_acl() -> Vec<String> {
    let doc = include_str!("../../../../docs/redis-permissions.md");
    let block = doc
        .split("<!-- acl:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- acl:end -->").next())
        .expect("docs/redis-permissions.md has an acl:begin/acl:end block");
    let line = block
        .lines()
        .find(|line| line.starts_with("ACL SETUSER"))
        .expect("the block holds an ACL SETUSER line");
    line.split_whitespace().map(str::to_owned).collect()
}

async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn acl(admin: &mut redis::aio::MultiplexedConnection, args: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("app").arg(args);
    let _: () = cmd.query_async(admin).await.unwrap();
}

fn app_url(server: &RedisServer) -> String {
    format!("redis://app:app-secret@{}:{}", server.host(), server.port())
}

/// A server with user `app` made from the documented ACL line; its admin connection and the
/// user's URL.
async fn restricted_server() -> (RedisServer, redis::aio::MultiplexedConnection, String) {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    // `ACL SETUSER app …`: the admin sends the rest as it is written.
    let mut cmd = redis::cmd("ACL");
    cmd.arg(&documented_acl()[1..]);
    let _: () = cmd.query_async(&mut admin).await.unwrap();
    let url = app_url(&server);
    (server, admin, url)
}

/// The source of truth of the write-behind part.
#[derive(Default)]
struct Table(Mutex<HashMap<String, String>>);

#[async_trait]
impl Writer<String> for Table {
    async fn write(&self, key: &Key, value: &String) -> Result<()> {
        self.0
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), value.clone());
        Ok(())
    }
    async fn remove(&self, key: &Key) -> Result<()> {
        self.0.lock().unwrap().remove(key.as_str());
        Ok(())
    }
}

async fn backend(url: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .key_prefix(PREFIX)
        .command_timeout(Duration::from_secs(5))
        .check_permissions(&RedisFeature::ALL)
        .connect()
        .await
        .unwrap()
}

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < BOUND {
        if check().await {
            return true;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_works_as_a_user_restricted_to_its_prefix() {
    let (_server, mut admin, url) = restricted_server().await;

    // Two instances joined by pub/sub, a third by client tracking; A and B take the lock.
    let pubsub = || {
        RedisPubSub::builder(&url)
            .channel("app:invalidations")
            .build()
            .unwrap()
    };
    let (pa, pb) = (pubsub(), pubsub());
    let tracking = RedisTracking::builder(&url)
        .key_prefix(PREFIX)
        .build()
        .unwrap();
    let lock = LockOptions::default().max_wait(BOUND);
    let a = TieredCache::<String>::builder()
        .name("a")
        .redis(backend(&url).await)
        .l2_timeout(Duration::from_secs(5))
        .distributed_lock(lock.clone())
        .invalidation(pa.clone())
        .build()
        .unwrap();
    let b = TieredCache::<String>::builder()
        .name("b")
        .redis(backend(&url).await)
        .l2_timeout(Duration::from_secs(5))
        .distributed_lock(lock)
        .invalidation(pb.clone())
        .build()
        .unwrap();
    let c = TieredCache::<String>::builder()
        .name("c")
        .redis(backend(&url).await)
        .l2_timeout(Duration::from_secs(5))
        .invalidation(tracking.clone())
        .build()
        .unwrap();
    assert!(pa.wait_connected(BOUND).await && pb.wait_connected(BOUND).await);
    assert!(tracking.wait_connected(BOUND).await);

    let ns = KeySpace::new("shop").unwrap().namespace("items").unwrap();
    let key = ns.key("1").unwrap();

    // Loads under the lock, conditional stores, reads from another instance.
    let loaded = a
        .get_or_load(&key, |_| async {
            Ok::<_, std::io::Error>(Some("v1".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref(), Some("v1"));
    // A loaded value reaches L2 in the background (the caller does not wait for it).
    assert!(
        eventually(async || c.get(&key).await.unwrap().as_deref() == Some("v1")).await,
        "C reads A's load from L2"
    );
    assert!(eventually(async || b.get(&key).await.unwrap().as_deref() == Some("v1")).await);

    // Writes reach every instance: B by pub/sub, C by tracking.
    a.set(&key, "v2".to_owned()).await.unwrap();
    assert!(eventually(async || b.get(&key).await.unwrap().as_deref() == Some("v2")).await);
    assert!(eventually(async || c.get(&key).await.unwrap().as_deref() == Some("v2")).await);

    // Tags and deletes.
    let tagged = ns.key("tagged").unwrap();
    a.set_with(
        &tagged,
        "t1".to_owned(),
        &EntryOptions::default().with_tags(["promo"]),
    )
    .await
    .unwrap();
    assert_eq!(a.invalidate_tag("promo").await.unwrap(), 1);
    assert!(eventually(async || b.get(&tagged).await.unwrap().is_none()).await);
    assert!(a.delete(&key).await.unwrap());
    assert!(eventually(async || c.get(&key).await.unwrap().is_none()).await);

    // Namespace clear.
    for i in 0..20 {
        a.set(&ns.key(i).unwrap(), format!("n{i}")).await.unwrap();
    }
    assert!(a.clear(&ns).await.unwrap() >= 20);
    assert!(eventually(async || b.get(&ns.key(3).unwrap()).await.unwrap().is_none()).await);

    // Durable write-behind, its stream under the prefix.
    let journal = RedisWriteJournal::builder(&url, "app:journal")
        .command_timeout(Duration::from_secs(5))
        .max_block(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let table = Arc::new(Table::default());
    let wb = WriteBehind::builder(Arc::new(a.as_backend()), table.clone())
        .max_delay(Duration::from_millis(5))
        .durable(Arc::new(journal))
        .read_block(Duration::from_millis(50))
        .build()
        .unwrap();
    for i in 0..100 {
        wb.put(&ns.key(format!("wb{i}")).unwrap(), format!("w{i}"))
            .await
            .unwrap();
    }
    wb.flush().await.unwrap();
    assert_eq!(table.0.lock().unwrap().len(), 100);
    let stats = wb.stats();
    assert_eq!(stats.journal_errors, 0, "{stats:?}");
    wb.shutdown().await.unwrap();

    for cache in [&a, &b, &c] {
        let stats = cache.stats();
        assert_eq!(stats.l2_errors, 0, "{}: {stats:?}", cache.name());
        assert_eq!(stats.lock_errors, 0, "{}: {stats:?}", cache.name());
        assert_eq!(stats.l2_write_failures, 0, "{}: {stats:?}", cache.name());
    }

    // Nothing was refused, and everything written is under the prefix.
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(log.is_empty(), "the server refused something: {log:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.starts_with(PREFIX), "{key} is outside the prefix");
    }
    for cache in [a, b, c] {
        cache.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_check_names_what_a_restricted_user_lacks() {
    let (server, mut admin, url) = restricted_server().await;
    let redis = backend(&url).await;
    redis.check_permissions(&RedisFeature::ALL).await.unwrap();

    let cases = [
        ("eval", RedisFeature::Cache, "EVAL"),
        ("scan", RedisFeature::Clear, "SCAN"),
        ("sadd", RedisFeature::Tags, "SADD"),
        ("script|load", RedisFeature::Lock, "SCRIPT LOAD"),
        ("xautoclaim", RedisFeature::WriteBehind, "XAUTOCLAIM"),
        ("publish", RedisFeature::PubSub, "PUBLISH"),
        ("client|tracking", RedisFeature::Tracking, "CLIENT TRACKING"),
    ];
    for (command, feature, name) in cases {
        acl(&mut admin, &[&format!("-{command}")]).await;
        let error = redis
            .check_permissions(&RedisFeature::ALL)
            .await
            .expect_err(command);
        assert_eq!(error.kind(), ErrorKind::Permission, "{error}");
        assert!(!error.is_temporary());
        let denied = error.source_as::<PermissionDenied>().expect("the detail");
        assert_eq!((denied.feature, denied.command), (feature, name), "{error}");
        assert!(error.to_string().contains(name), "{error}");
        acl(&mut admin, &[&format!("+{command}")]).await;
    }
    redis.check_permissions(&RedisFeature::ALL).await.unwrap();

    // At connect, through the builder; and a refused command at run time is a Permission error.
    acl(&mut admin, &["-eval"]).await;
    let refused = RedisBackend::builder(&url)
        .key_prefix(PREFIX)
        .check_permissions(&[RedisFeature::Cache])
        .connect()
        .await
        .expect_err("EVAL is refused");
    assert_eq!(refused.kind(), ErrorKind::Permission);
    let store = layercache_core::Backend::<String>::set_if_newer(
        &redis,
        &Key::new("k").unwrap(),
        EntryOptions::default()
            .entry(
                "v".to_owned(),
                layercache_core::Clock::now(&layercache_core::SystemClock),
                Duration::ZERO,
            )
            .unwrap(),
    )
    .await
    .expect_err("EVAL is refused");
    assert_eq!(store.kind(), ErrorKind::Permission, "{store}");

    // A wrong password is a Permission error too, not "unavailable".
    let wrong = RedisBackend::builder(format!(
        "redis://app:wrong@{}:{}",
        server.host(),
        server.port()
    ))
    .connect()
    .await
    .expect_err("wrong password");
    assert_eq!(wrong.kind(), ErrorKind::Permission, "{wrong}");
    assert!(!wrong.to_string().contains("wrong@"), "{wrong}");
}
