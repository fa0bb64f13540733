//! The call a user writes: closure loaders with their own error type, per-call options, adaptive
//! options chosen by the loader, and what joined callers see.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{EntryOptions, ErrorKind, Key, ManualClock};
use layercache_tiered::{Loaded, TieredCache};
use tokio::sync::Notify;

/// A caller's own error type.
#[derive(Debug, PartialEq, Eq)]
struct DbError(&'static str);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "db error: {}", self.0)
    }
}

impl std::error::Error for DbError {}

fn cache(clock: &ManualClock) -> TieredCache<String> {
    TieredCache::builder()
        .clock(clock.clone())
        .options(EntryOptions::new(Duration::from_secs(60)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_loader_error_comes_back_as_the_callers_own_type() {
    let clock = ManualClock::starting_now();
    let cache = cache(&clock);
    let key = Key::new("user:1").unwrap();
    let err = cache
        .get_or_load(&key, |_key| async {
            Err::<Option<String>, _>(DbError("down"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert_eq!(err.source_as::<DbError>(), Some(&DbError("down")));
    // Errors are not cached: the next call loads again.
    let value = cache
        .get_or_load(&key, |_key| async {
            Ok::<_, DbError>(Some("Ada".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("Ada"));
}

// One thread: the order of the steps below is the scheduler's FIFO order, not timing.
#[tokio::test(flavor = "current_thread")]
async fn a_caller_that_joined_a_failing_load_gets_the_same_error() {
    let clock = ManualClock::starting_now();
    let cache = cache(&clock);
    let key = Key::new("user:2").unwrap();
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let leader = {
        let (cache, key, started, release) =
            (cache.clone(), key.clone(), started.clone(), release.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(&key, move |_key| async move {
                    started.notify_one();
                    release.notified().await;
                    Err::<Option<String>, _>(DbError("timeout"))
                })
                .await
        })
    };
    started.notified().await;
    let calls = Arc::new(AtomicU64::new(0));
    let follower = {
        let (cache, key, calls) = (cache.clone(), key.clone(), calls.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(&key, move |_key| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, DbError>(Some("never".to_owned()))
                })
                .await
        })
    };
    // Let the follower run up to its wait on the leader's flight, then let the leader fail.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    let (a, b) = (leader.await.unwrap(), follower.await.unwrap());
    assert_eq!(
        a.unwrap_err().source_as::<DbError>(),
        Some(&DbError("timeout"))
    );
    assert_eq!(
        b.unwrap_err().source_as::<DbError>(),
        Some(&DbError("timeout"))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the follower's loader never ran"
    );
}

#[tokio::test]
async fn a_loader_chooses_the_ttl_of_what_it_returns() {
    let clock = ManualClock::starting_now();
    let cache = cache(&clock);
    let loads = Arc::new(AtomicU64::new(0));
    let load = |volatile: bool| {
        let loads = loads.clone();
        move |key: Key| async move {
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            let loaded = Loaded::from(Some(format!("{key} v{n}")));
            Ok::<_, DbError>(if volatile {
                loaded.with_options(EntryOptions::new(Duration::from_secs(1)))
            } else {
                loaded
            })
        }
    };
    let (volatile, steady) = (Key::new("price").unwrap(), Key::new("name").unwrap());
    cache.get_or_load(&volatile, load(true)).await.unwrap();
    cache.get_or_load(&steady, load(false)).await.unwrap();
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    clock.advance(Duration::from_secs(2));
    // The volatile row (1 s) is reloaded; the other keeps the cache's 60 s.
    let price = cache.get_or_load(&volatile, load(true)).await.unwrap();
    let name = cache.get_or_load(&steady, load(false)).await.unwrap();
    assert_eq!(price.as_deref(), Some("price v3"));
    assert_eq!(name.as_deref(), Some("name v2"));
    assert_eq!(loads.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn per_call_options_override_the_cache_defaults_and_are_validated() {
    let clock = ManualClock::starting_now();
    let cache = cache(&clock);
    let key = Key::new("session").unwrap();
    let short = EntryOptions::new(Duration::from_secs(5));
    let loads = Arc::new(AtomicU64::new(0));
    let load = || {
        let loads = loads.clone();
        move |_key: Key| async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, DbError>(Some("s".to_owned()))
        }
    };
    cache.get_or_load_with(&key, &short, load()).await.unwrap();
    clock.advance(Duration::from_secs(6));
    cache.get_or_load_with(&key, &short, load()).await.unwrap();
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "the call's 5 s TTL applied"
    );

    let invalid = EntryOptions::new(Duration::from_secs(5)).with_fail_safe(Duration::from_secs(1));
    let err = cache
        .get_or_load_with(&key, &invalid, load())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "an invalid call loads nothing"
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<TieredCache<String>>();
    is_send_sync::<layercache_tiered::TieredCacheBuilder<String>>();
    is_send_sync::<layercache_tiered::TieredStats>();
    is_send_sync::<layercache_tiered::WriteIntent>();
    is_send_sync::<layercache_tiered::TieredBackend<String>>();
    is_send_sync::<Loaded<String>>();
    is_send_sync::<layercache_core::Versions>();
    is_send_sync::<layercache_core::Ticket>();
}
