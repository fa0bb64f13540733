//! The session store over a real Redis: round trips, id collisions, two instances kept coherent
//! by pub/sub, expiry, and sliding expiry without a write per request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use layercache_redis::RedisPubSub;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::TieredCache;
use layercache_tower::session::{SessionCache, TieredSessionStore};
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::{Expiry, Session, SessionStore};

/// A generous bound on waits that must end: past it the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(10);

const HOUR: Duration = Duration::from_secs(3600);

fn cache(url: &str, name: &str) -> SessionCache {
    TieredCache::builder()
        .name(name)
        .redis_url(url)
        // A busy CI machine must not turn a slow round trip into a failed write.
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// One store over the Redis at `url`, no transport.
fn store(url: &str) -> TieredSessionStore {
    let namespace = unique_space().namespace("session").unwrap();
    TieredSessionStore::new(cache(url, "sessions"), namespace)
}

/// Two instances over the Redis at `url`, each with its own pub/sub transport (connected before
/// this returns), sharing one namespace.
async fn two_instances(url: &str) -> (TieredSessionStore, TieredSessionStore) {
    let namespace = unique_space().namespace("session").unwrap();
    let mut stores = Vec::new();
    for name in ["a", "b"] {
        let transport = RedisPubSub::builder(url)
            .channel(format!("{}invalidations", namespace.scope()))
            .ping_interval(Duration::from_millis(200))
            .build()
            .unwrap();
        let cache = TieredCache::builder()
            .name(name)
            .redis_url(url)
            .l2_timeout(Duration::from_secs(5))
            .invalidation(transport.clone())
            .build()
            .unwrap();
        assert!(
            transport.wait_connected(BOUND).await,
            "the transport connected"
        );
        stores.push(TieredSessionStore::new(cache, namespace.clone()));
    }
    let b = stores.pop().unwrap();
    let a = stores.pop().unwrap();
    (a, b)
}

fn record(expires_in: Duration) -> Record {
    let mut record = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: (SystemTime::now() + expires_in).into(),
    };
    record.data.insert("user".to_owned(), 42.into());
    record
}

/// Polls `load` of `id` on `store` until it returns `None`, at most [`BOUND`]; `true` if it did.
async fn gone_within_bound(store: &TieredSessionStore, id: &Id) -> bool {
    let started = Instant::now();
    while started.elapsed() < BOUND {
        if store.load(id).await.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn l2_writes(store: &TieredSessionStore) -> u64 {
    store.cache().stats().l2_writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_create_then_load_round_trips_through_redis() {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis.url()).await;
    let mut created = record(HOUR);
    let id = created.id;
    a.create(&mut created).await.unwrap();
    assert_eq!(created.id, id, "a free id is kept");

    assert_eq!(a.load(&id).await.unwrap(), Some(created.clone()), "from L1");
    // B has never seen it: its L1 is empty, so this is Redis and the codec.
    assert_eq!(b.load(&id).await.unwrap(), Some(created));
    assert_eq!(a.load(&Id::default()).await.unwrap(), None, "unknown id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_create_never_overwrites_an_existing_id() {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis.url()).await;
    let mut first = record(HOUR);
    a.create(&mut first).await.unwrap();

    // The same id again, on the instance that holds it in L1 and on one that only finds it in
    // Redis: each gets a new id, and the first record is untouched.
    for store in [&a, &b] {
        let mut second = record(HOUR);
        second.id = first.id;
        second.data.insert("user".to_owned(), 7.into());
        store.create(&mut second).await.unwrap();
        assert_ne!(second.id, first.id, "a taken id is replaced");
        assert_eq!(store.load(&first.id).await.unwrap(), Some(first.clone()));
        assert_eq!(store.load(&second.id).await.unwrap(), Some(second));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_created_on_one_instance_loads_on_another_and_a_delete_reaches_both() {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis.url()).await;
    let mut created = record(HOUR);
    a.create(&mut created).await.unwrap();
    let id = created.id;

    // B loads it (from Redis, into its L1), and serves it from L1 after that.
    assert_eq!(b.load(&id).await.unwrap(), Some(created.clone()));
    assert_eq!(b.load(&id).await.unwrap(), Some(created));

    // A logout on A: B's L1 holds the session for up to a minute (the L1 cap) unless the
    // invalidation reaches it.
    a.delete(&id).await.unwrap();
    assert_eq!(a.load(&id).await.unwrap(), None, "gone on A at once");
    assert!(gone_within_bound(&b, &id).await, "B saw the delete");

    // A save on B after the delete does not bring it back.
    let mut stale = record(HOUR);
    stale.id = id;
    b.save(&stale).await.unwrap();
    assert_eq!(b.load(&id).await.unwrap(), None);
    assert_eq!(a.load(&id).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_past_its_expiry_loads_as_none() {
    let redis = RedisServer::start();
    let store = store(&redis.url());

    let mut short = record(Duration::from_millis(1500));
    store.create(&mut short).await.unwrap();
    assert!(
        store.load(&short.id).await.unwrap().is_some(),
        "alive first"
    );
    assert!(gone_within_bound(&store, &short.id).await, "expired");

    // Born expired: not stored, never loads.
    let mut past = record(Duration::ZERO);
    past.expiry_date = (SystemTime::now() - Duration::from_secs(5)).into();
    store.create(&mut past).await.unwrap();
    assert_eq!(store.load(&past.id).await.unwrap(), None);

    // Saved with an expiry in the past: deleted.
    let mut ended = record(HOUR);
    store.create(&mut ended).await.unwrap();
    ended.expiry_date = (SystemTime::now() - Duration::from_secs(1)).into();
    store.save(&ended).await.unwrap();
    assert_eq!(store.load(&ended.id).await.unwrap(), None);
    let fresh = store_over_same_redis(&store, &redis);
    assert_eq!(
        fresh.load(&ended.id).await.unwrap(),
        None,
        "gone from Redis too"
    );
}

/// A second store over the same Redis and namespace, with an empty L1.
fn store_over_same_redis(store: &TieredSessionStore, redis: &RedisServer) -> TieredSessionStore {
    TieredSessionStore::new(cache(&redis.url(), "other"), store.namespace().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_sliding_expiry_writes_only_past_half_the_ttl() {
    let redis = RedisServer::start();
    let store = store(&redis.url());
    let mut session = record(2 * HOUR);
    store.create(&mut session).await.unwrap();
    let created = session.expiry_date;
    let before = l2_writes(&store);

    // Twenty requests each push the expiry a little further (by less than half the TTL): no
    // write.
    for minute in 1..=20 {
        session.expiry_date = created + Duration::from_secs(60 * minute);
        store.save(&session).await.unwrap();
    }
    assert_eq!(
        l2_writes(&store),
        before,
        "no write while half the TTL is left"
    );
    // Redis still has the record as created, and its TTL.
    let other = store_over_same_redis(&store, &redis);
    let in_redis = other.load(&session.id).await.unwrap().unwrap();
    assert_eq!(in_redis.expiry_date, created);

    // Past the half-way point (the stored record has 2 h left of a new 4 h 1 min TTL): one write.
    session.expiry_date = created + 2 * HOUR + Duration::from_secs(60);
    store.save(&session).await.unwrap();
    assert_eq!(l2_writes(&store), before + 1);
    let other = store_over_same_redis(&store, &redis);
    let in_redis = other.load(&session.id).await.unwrap().unwrap();
    assert_eq!(in_redis.expiry_date, session.expiry_date);

    // Changed data writes, whatever the expiry.
    session.data.insert("cart".to_owned(), 3.into());
    store.save(&session).await.unwrap();
    assert_eq!(l2_writes(&store), before + 2);
    assert_eq!(store.load(&session.id).await.unwrap(), Some(session));
}

/// What `SessionManagerLayer` does per request, with `Expiry::OnInactivity` and
/// `with_always_save(true)`: a `Session` from the cookie's id, the handler's work, then `save`.
async fn request(
    store: &Arc<TieredSessionStore>,
    id: Option<Id>,
    handler: impl AsyncFnOnce(&Session),
) -> Option<Id> {
    let inactivity = Expiry::OnInactivity(HOUR.try_into().unwrap());
    let session = Session::new(id, Arc::clone(store), Some(inactivity));
    handler(&session).await;
    if !session.is_empty().await {
        session.save().await.unwrap();
    }
    session.id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_survives_across_requests_and_always_save_does_not_write_each_time() {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis.url()).await;
    let (a, b) = (Arc::new(a), Arc::new(b));

    // Log in on A.
    let id = request(&a, None, async |session| {
        session.insert("user", 42).await.unwrap();
    })
    .await
    .expect("a session id for the cookie");
    let after_login = (l2_writes(&a), l2_writes(&b));

    // Ten requests alternate between the instances; each reads the user and saves.
    for n in 0..10 {
        let instance = if n % 2 == 0 { &a } else { &b };
        let same = request(instance, Some(id), async |session| {
            assert_eq!(session.get::<u32>("user").await.unwrap(), Some(42));
        })
        .await;
        assert_eq!(same, Some(id), "the same session");
    }
    assert_eq!(
        (l2_writes(&a), l2_writes(&b)),
        after_login,
        "reads with a fresh expiry write nothing"
    );

    // Log out on B: the next request on A has no session.
    request(&b, Some(id), async |session| session.flush().await.unwrap()).await;
    assert!(gone_within_bound(&a, &id).await);
    let user = request(&a, Some(id), async |session| {
        assert_eq!(session.get::<u32>("user").await.unwrap(), None);
    })
    .await;
    assert_eq!(user, None, "no session after the logout");
}
