//! What a read costs beyond its round trip: its future's weight, and no clock thread.
//!
//! What a read's future weighs. `Backend::get` returns it boxed (async_trait), so it is allocated
//! and copied once per L2 read: kept under 1 KiB, it stays on the allocator's fast path (glibc's
//! per-thread cache takes blocks up to 1,032 bytes) and costs a copy of less than a kilobyte. An
//! arm of the connection layer that awaits something large (a pool's checkout, a pipeline) makes
//! every request's future that large, on every connection kind: once, a Redis GET's future was
//! 15 KB, copied several times per read.

use layercache_core::{Backend, Key};
use layercache_redis::RedisBackend;

/// The most a read's future may weigh (see the module docs).
const MOST: usize = 1024;

async fn weight_of_a_read(backend: &RedisBackend) -> usize {
    let key = Key::new("footprint").unwrap();
    let read = Backend::<Option<u64>>::get(backend, &key);
    let weight = std::mem::size_of_val(read.as_ref().get_ref());
    // It still reads (an absent key).
    assert!(read.await.unwrap().is_none());
    weight
}

/// On the shared connection and on a pool (whose checkout is the large arm, boxed).
#[tokio::test]
async fn a_read_weighs_under_a_kilobyte() {
    let url = crate::shared_server().url();
    let shared = RedisBackend::connect(url.clone()).await.unwrap();
    let pooled = RedisBackend::builder(url).pool(4).connect().await.unwrap();
    for (backend, kind) in [(&shared, "shared connection"), (&pooled, "pool")] {
        let weight = weight_of_a_read(backend).await;
        assert!(
            weight <= MOST,
            "a read's future weighs {weight} bytes on the {kind}"
        );
    }
}

/// A backend built with the defaults reads the system clock (a vDSO call): no clock thread wakes
/// the machine 1,000 times a second for the life of the process (ADR 0011).
#[tokio::test]
async fn the_default_clock_runs_no_thread() {
    let backend = RedisBackend::connect(crate::shared_server().url())
        .await
        .unwrap();
    weight_of_a_read(&backend).await;
    assert!(!layercache_core::CoarseClock::is_running());
}
