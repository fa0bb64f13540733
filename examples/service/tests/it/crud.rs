//! CRUD over real HTTP, on SQLite and on PostgreSQL: two instances over one database and one
//! Redis (their L1s kept coherent by pub/sub), readers hammering both all along, and after every
//! write through either instance, items and lists on both match the database read directly.
//!
//! The writer must match at once (its caches are updated before it answers). The other instance
//! learns of the write through pub/sub, asynchronously: the test waits (bounded by [`BOUND`])
//! until the writer has published its invalidations and the other has applied every one of them
//! (the library counts an invalidation once applied), then the other must match at once too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use layercache_example_service::{CacheMode, RunningService};
use layercache_testkit::RedisServer;
use layercache_testkit::postgres::PostgresServer;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{BOUND, Client, TempDir, Truth, config, eventually, serves, start};

/// Invalidations of the products and the lists caches: published by an instance, or applied
/// by one (received from the other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    items: u64,
    lists: u64,
}

fn sent(service: &RunningService) -> Sent {
    Sent {
        items: service.product_cache_stats().unwrap().invalidations_sent,
        lists: service.list_cache_stats().unwrap().invalidations_sent,
    }
}

fn received(service: &RunningService) -> Sent {
    Sent {
        items: service
            .product_cache_stats()
            .unwrap()
            .invalidations_received,
        lists: service.list_cache_stats().unwrap().invalidations_received,
    }
}

/// Reads items and lists on both instances until told to stop; counts 5xx answers (there must
/// be none) and reads.
fn hammer(
    clients: Vec<Client>,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let paths = [
            "/products/1",
            "/products/2",
            "/products/3",
            "/products/51",
            "/products/52",
            "/products?page=1",
            "/products?page=3",
            "/products?category=books",
            "/products?category=garden",
            "/products?category=toys",
        ];
        let mut reads = 0;
        while !stop.load(Ordering::Relaxed) {
            for client in &clients {
                for path in paths {
                    let answer = client.get(path).await;
                    reads += 1;
                    if answer.status.is_server_error() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        reads
    })
}

/// The scenario on `database_url`: both instances primed (every item and list cached in both),
/// then creates, updates (in place and across categories), deletes, and a create over a cached
/// absence, alternating between the instances.
async fn crud_on(database_url: String) {
    let redis = RedisServer::start();
    // Started at once on a fresh database: they create the schema and seed it once.
    let (a, b) = tokio::join!(
        start(config(&redis, Some(database_url.clone()))),
        start(config(&redis, Some(database_url.clone())))
    );
    assert_eq!(a.cache_mode(), CacheMode::Tiered);
    let truth = Truth::connect(&database_url).await;
    let (ca, cb) = (Client::new(&a), Client::new(&b));
    let instances: [(&RunningService, &Client); 2] = [(&a, &ca), (&b, &cb)];

    let seeded = truth.products().await;
    assert_eq!(
        seeded.len(),
        50,
        "seeded once, though two instances started"
    );
    let categories = ["books", "games", "music", "tools", "garden", "toys"];
    let mut ids: Vec<i64> = vec![1, 2, 3, 50];
    for (_, client) in instances {
        serves(client, &seeded, &ids, &categories).await.unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let readers = hammer(
        vec![ca.clone(), cb.clone()],
        Arc::clone(&stop),
        Arc::clone(&errors),
    );

    // After each write through `writer` (its invalidations counted before it in `before`, the
    // write publishing one for the item and one per list tag): the writer matches the database
    // at once; the other instance, once it has applied every invalidation the writer published
    // (the only wait, bounded), matches it too.
    let check = |writer: usize, before: Sent, tags: u64, ids: Vec<i64>| {
        let truth = &truth;
        async move {
            let now = truth.products().await;
            let (w, other) = (instances[writer], instances[1 - writer]);
            if let Err(stale) = serves(w.1, &now, &ids, &categories).await {
                panic!("the writer served a stale answer after its write returned: {stale}");
            }
            let expected = Sent {
                items: before.items + 1,
                lists: before.lists + tags,
            };
            eventually(|| async {
                let (sent, applied) = (sent(w.0), received(other.0));
                if sent == expected && applied == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "published {sent:?}, applied by the other {applied:?}, expected {expected:?}"
                    ))
                }
            })
            .await
            .unwrap_or_else(|late| panic!("the invalidations did not arrive: {late}"));
            if let Err(stale) = serves(other.1, &now, &ids, &categories).await {
                panic!(
                    "the other instance served a stale answer after applying the write's invalidations: {stale}"
                );
            }
        }
    };

    // Create through A: the item, the unfiltered list and its category's.
    let before = sent(&a);
    let created = ca
        .post(
            "/products",
            &json!({"name": "kettle", "category": "books", "price_cents": 1250}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let new_id = created.body["id"].as_i64().unwrap();
    ids.push(new_id);
    check(0, before, 2, ids.clone()).await;

    // Rename through B (same category).
    let before = sent(&b);
    let renamed = cb
        .put(
            &format!("/products/{new_id}"),
            &json!({"name": "kettle v2", "category": "books", "price_cents": 1300}),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    assert_eq!(renamed.body["name"], "kettle v2");
    check(1, before, 2, ids.clone()).await;

    // Move it to another category through A: the lists of both categories change.
    let before = sent(&a);
    let moved = ca
        .put(
            &format!("/products/{new_id}"),
            &json!({"name": "kettle v2", "category": "garden", "price_cents": 1300}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{:?}", moved.body);
    check(0, before, 3, ids.clone()).await;

    // Move a seeded product into a category nobody had, through B.
    let before = sent(&b);
    let first = cb
        .put(
            "/products/1",
            &json!({"name": "toy train", "category": "toys", "price_cents": 999}),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    check(1, before, 3, ids.clone()).await;

    // Delete through A and through B; deleting or updating again is a 404 (and no write).
    let before = sent(&a);
    let deleted = ca.delete(&format!("/products/{new_id}")).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    check(0, before, 2, ids.clone()).await;
    let before = sent(&b);
    assert_eq!(
        cb.delete("/products/2").await.status,
        StatusCode::NO_CONTENT
    );
    check(1, before, 2, ids.clone()).await;
    let gone = json!({"name": "x", "category": "books", "price_cents": 1});
    assert_eq!(ca.delete("/products/2").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        cb.put("/products/2", &gone).await.status,
        StatusCode::NOT_FOUND
    );

    // A create over a cached absence: both instances have cached that the next id does not
    // exist (ids are never reused, so the next is one past the last); B creates it.
    let next_id = new_id + 1;
    ids.push(next_id);
    for (_, client) in instances {
        for _ in 0..2 {
            let answer = client.get(&format!("/products/{next_id}")).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND);
        }
    }
    let before = sent(&b);
    let again = cb
        .post(
            "/products",
            &json!({"name": "lamp", "category": "music", "price_cents": 4200}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    assert_eq!(
        again.body["id"].as_i64(),
        Some(next_id),
        "the next id, as predicted"
    );
    check(1, before, 2, ids.clone()).await;

    // A price change through A.
    let before = sent(&a);
    let priced = ca
        .put(
            "/products/3",
            &json!({"name": "music item 3", "category": "music", "price_cents": 1}),
        )
        .await;
    assert_eq!(priced.status, StatusCode::OK, "{:?}", priced.body);
    check(0, before, 2, ids.clone()).await;

    stop.store(true, Ordering::Relaxed);
    let reads = tokio::time::timeout(BOUND, readers).await.unwrap().unwrap();
    assert!(reads > 0);
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no 5xx while reading during the writes"
    );

    // The caches did their work: reads were served without the database.
    let stats = a.product_cache_stats().unwrap();
    assert!(
        stats.hits > 0 && stats.invalidations_received > 0,
        "{stats:?}"
    );
    assert!(b.list_cache_stats().unwrap().tags_invalidated > 0);

    truth.close().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_on_sqlite_two_instances_never_serve_a_stale_item_or_list() {
    let dir = TempDir::new();
    crud_on(dir.sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_on_postgres_two_instances_never_serve_a_stale_item_or_list() {
    let postgres = PostgresServer::start();
    crud_on(postgres.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_in_every_cache_mode_serves_what_the_database_has() {
    // One instance per mode over one database: the writes of each are checked on it at once.
    let redis = RedisServer::start();
    let dir = TempDir::new();
    let truth_url = dir.sqlite_url();
    for mode in [CacheMode::None, CacheMode::RedisOnly, CacheMode::Tiered] {
        let mut cfg = config(&redis, Some(truth_url.clone()));
        cfg.cache_mode = mode;
        cfg.key_prefix = format!("mode-{mode}");
        let service = start(cfg).await;
        let client = Client::new(&service);
        let truth = Truth::connect(&truth_url).await;
        let categories = ["books", "garden"];
        let before = truth.products().await;
        serves(&client, &before, &[4, 5], &categories)
            .await
            .unwrap();
        let created = client
            .post(
                "/products",
                &json!({"name": format!("{mode} thing"), "category": "garden", "price_cents": 7}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
        let id = created.body["id"].as_i64().unwrap();
        let moved = client
            .put(
                "/products/4",
                &json!({"name": format!("{mode} moved"), "category": "books", "price_cents": 8}),
            )
            .await;
        assert_eq!(moved.status, StatusCode::OK);
        let after = truth.products().await;
        serves(&client, &after, &[4, 5, id], &categories)
            .await
            .unwrap_or_else(|stale| panic!("{mode}: {stale}"));
        assert_eq!(
            service.product_cache_stats().is_some(),
            mode != CacheMode::None
        );
        assert!(service.db_stats().reads > 0 && service.db_stats().writes == 2);
        truth.close().await;
        service.shutdown().await.unwrap();
    }
}
