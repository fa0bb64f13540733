//! The backend conformance suite: one set of behaviour tests every
//! [`Backend`] must pass, so tiers are interchangeable.
//!
//! Each case is a public async function taking the backend under test and the [`ManualClock`] it
//! was built with. The [`backend_conformance!`](crate::backend_conformance) macro generates one
//! `#[tokio::test]` per case from a setup function, so a third-party backend runs the whole suite
//! with a few lines:
//!
//! ```text
//! async fn setup() -> layercache_testkit::conformance::Subject {
//!     let clock = layercache_testkit::ManualClock::starting_now();
//!     let backend = MyBackend::new(clock.clone());
//!     layercache_testkit::conformance::Subject::new(std::sync::Arc::new(backend), clock)
//! }
//! layercache_testkit::backend_conformance!(setup);
//! ```
//!
//! Cases use a key space of their own (a unique prefix), so they can share one server.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{
    Backend, Clock, Entry, EntryOptions, ErrorKind, Key, KeySpace, ManualClock, Namespace,
};
use serde::{Deserialize, Serialize};

/// The value type the suite stores: a small struct with a string body of any size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// A number.
    pub id: u64,
    /// A short string.
    pub name: String,
    /// A list.
    pub labels: Vec<String>,
    /// A body of any size.
    pub body: String,
}

impl Sample {
    /// A small sample.
    pub fn new(id: u64) -> Self {
        Sample {
            id,
            name: format!("sample-{id}"),
            labels: vec!["a".into(), "ü".into()],
            body: String::new(),
        }
    }

    /// A sample whose body is `bytes` long.
    pub fn large(id: u64, bytes: usize) -> Self {
        let body: String = (0..bytes)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        Sample {
            body,
            ..Sample::new(id)
        }
    }
}

/// A backend under test, the clock it was built with, and whatever must live as long as the test
/// (a server handle).
pub struct Subject {
    /// The backend under test.
    pub backend: Arc<dyn Backend<Sample>>,
    /// The clock the backend decides expiry with.
    pub clock: ManualClock,
    guard: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Subject {
    /// A subject from a backend and its clock.
    pub fn new(backend: Arc<dyn Backend<Sample>>, clock: ManualClock) -> Self {
        Subject {
            backend,
            clock,
            guard: None,
        }
    }

    /// Keeps `guard` alive as long as the subject (a server, a temporary directory).
    #[must_use]
    pub fn with_guard(mut self, guard: impl Any + Send) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }
}

static NEXT_SPACE: AtomicU64 = AtomicU64::new(0);

/// A key space no other case (in this or another process) uses.
pub fn unique_space() -> KeySpace {
    let n = NEXT_SPACE.fetch_add(1, Ordering::Relaxed);
    KeySpace::new(&format!("conf{}x{n}", std::process::id())).unwrap()
}

fn namespace(name: &str) -> Namespace {
    unique_space().namespace(name).unwrap()
}

fn entry(value: Sample, clock: &ManualClock, fresh: Duration, stale: Duration) -> Entry<Sample> {
    EntryOptions::new(fresh)
        .with_stale_ttl(stale)
        .with_tags(["conformance", "tag:ü"])
        .entry(value, clock.now(), Duration::from_micros(1_234))
        .unwrap()
}

fn minute(value: Sample, clock: &ManualClock) -> Entry<Sample> {
    entry(
        value,
        clock,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
}

/// A value and its meta (times, load cost, tags) come back as they were stored.
pub async fn round_trip(backend: &dyn Backend<Sample>, clock: &ManualClock) {
    let ns = namespace("round");
    let key = ns.key("1").unwrap();
    let stored = minute(Sample::new(1), clock);
    backend.set(&key, stored.clone()).await.unwrap();
    let got = backend
        .get(&key)
        .await
        .unwrap()
        .expect("a stored entry reads back");
    assert_eq!(got.value, stored.value);
    assert_eq!(got.meta, stored.meta, "meta must travel with the value");
}

/// An absent key is `Ok(None)`; deleting it reports `false`.
pub async fn miss(backend: &dyn Backend<Sample>, _clock: &ManualClock) {
    let key = namespace("miss").key("absent").unwrap();
    assert_eq!(backend.get(&key).await.unwrap(), None);
    assert!(!backend.delete(&key).await.unwrap());
}

/// A second `set` replaces the first.
pub async fn overwrite(backend: &dyn Backend<Sample>, clock: &ManualClock) {
    let key = namespace("over").key("k").unwrap();
    backend
        .set(&key, minute(Sample::new(1), clock))
        .await
        .unwrap();
    backend
        .set(&key, minute(Sample::new(2), clock))
        .await
        .unwrap();
    assert_eq!(
        backend.get(&key).await.unwrap().unwrap().value,
        Sample::new(2)
    );
}

/// `delete` removes the key and reports that it was there.
pub async fn delete(backend: &dyn Backend<Sample>, clock: &ManualClock) {
    let key = namespace("del").key("k").unwrap();
    backend
        .set(&key, minute(Sample::new(1), clock))
        .await
        .unwrap();
    assert!(backend.delete(&key).await.unwrap());
    assert_eq!(backend.get(&key).await.unwrap(), None);
    assert!(!backend.delete(&key).await.unwrap());
}

/// An entry is returned while fresh and while stale, and never after its `stale_until`;
/// storing an already expired entry removes the key.
pub async fn fresh_stale_expiry(backend: &dyn Backend<Sample>, clock: &ManualClock) {
    let ns = namespace("expiry");
    let key = ns.key("k").unwrap();
    backend
        .set(
            &key,
            entry(
                Sample::new(1),
                clock,
                Duration::from_secs(10),
                Duration::from_secs(10),
            ),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let fresh = backend.get(&key).await.unwrap().expect("fresh entry");
    assert!(fresh.meta.is_fresh(clock.now()));
    clock.advance(Duration::from_secs(10));
    let stale = backend
        .get(&key)
        .await
        .unwrap()
        .expect("stale entries are still returned");
    assert!(stale.meta.is_stale(clock.now()));
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        backend.get(&key).await.unwrap(),
        None,
        "expired entries are never returned"
    );

    let key2 = ns.key("k2").unwrap();
    backend
        .set(&key2, minute(Sample::new(2), clock))
        .await
        .unwrap();
    let mut expired = minute(Sample::new(3), clock);
    expired.meta.fresh_until = clock.now();
    expired.meta.stale_until = clock.now();
    backend.set(&key2, expired).await.unwrap();
    assert_eq!(
        backend.get(&key2).await.unwrap(),
        None,
        "an expired entry replaces and removes"
    );
}

/// Batch forms answer in input order and agree with the single forms.
pub async fn batch(backend: &dyn Backend<Sample>, clock: &ManualClock) {
    let ns = namespace("batch");
    let keys: Vec<Key> = (0..60).map(|i| ns.key(format!("k{i}")).unwrap()).collect();
    let items = keys[..50]
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), minute(Sample::new(i as u64), clock)))
        .collect();
    backend.set_many(items).await.unwrap();
    let got = backend.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), 60);
    for (i, entry) in got.iter().enumerate() {
        match entry {
            Some(e) => assert_eq!(e.value, Sample::new(i as u64), "position {i}"),
            None => assert!(i >= 50, "position {i} should be present"),
        }
    }
    assert_eq!(backend.delete_many(&keys[..20]).await.unwrap(), 20);
    assert_eq!(backend.delete_many(&keys[..20]).await.unwrap(), 0);
    let got = backend.get_many(&keys).await.unwrap();
    let present: Vec<bool> = got.iter().map(Option::is_some).collect();
    assert_eq!(
        present,
        (0..60).map(|i| (20..50).contains(&i)).collect::<Vec<_>>()
    );
    assert!(backend.get(&keys[30]).await.unwrap().is_some());
}

/// Batch forms accept empty input.
pub async fn batch_empty(backend: &dyn Backend<Sample>, _clock: &ManualClock) {
    assert!(backend.get_many(&[]).await.unwrap().is_empty());
    backend.set_many(Vec::new()).await.unwrap();
    assert_eq!(backend.delete_many(&[]).await.unwrap(), 0);
}

/// `clear` removes its namespace's keys and nothing else — not even a namespace whose name
/// starts with the same letters.
pub async fn clear_is_scoped(backend: &dyn Backend<Sample>, clock: &ManualClock) {
    let space = unique_space();
    let target = space.namespace("users").unwrap();
    let sibling = space.namespace("users2").unwrap();
    let other_version = space.clone().with_version(2).namespace("users").unwrap();
    for i in 0..1_200 {
        backend
            .set(&target.key(i).unwrap(), minute(Sample::new(i), clock))
            .await
            .unwrap();
    }
    for ns in [&sibling, &other_version] {
        for i in 0..10 {
            backend
                .set(&ns.key(i).unwrap(), minute(Sample::new(i), clock))
                .await
                .unwrap();
        }
    }
    assert_eq!(backend.clear(&target).await.unwrap(), 1_200);
    assert_eq!(backend.get(&target.key("7").unwrap()).await.unwrap(), None);
    for ns in [&sibling, &other_version] {
        for i in 0..10 {
            assert!(backend.get(&ns.key(i).unwrap()).await.unwrap().is_some());
        }
    }
    assert_eq!(backend.clear(&target).await.unwrap(), 0);
}

/// Values up to 512 KiB round-trip intact; larger ones (1 and 4 MiB) either round-trip or, over
/// the backend's maximum value size, are refused with a `TooLarge` error — by `check_size` as by
/// `set` — that writes nothing.
pub async fn large_values(backend: &dyn Backend<Sample>, clock: &ManualClock) {
    let ns = namespace("large");
    for (i, size) in [0usize, 1, 1 << 10, 512 << 10, 1 << 20, 4 << 20]
        .into_iter()
        .enumerate()
    {
        let key = ns.key(format!("k{i}")).unwrap();
        let value = Sample::large(i as u64, size);
        let entry = minute(value.clone(), clock);
        let checked = backend.check_size(&entry);
        match backend.set(&key, entry).await {
            Ok(()) => {
                assert!(checked.is_ok(), "check_size refused what set took");
                let got = backend
                    .get(&key)
                    .await
                    .unwrap()
                    .expect("large value present");
                assert_eq!(got.value.body.len(), size);
                assert_eq!(got.value, value);
            }
            Err(error) => {
                assert!(
                    size > 512 << 10,
                    "a value of {size} bytes was refused: {error}"
                );
                assert_eq!(error.kind(), ErrorKind::TooLarge, "{error}");
                assert_eq!(checked.map_err(|e| e.kind()), Err(ErrorKind::TooLarge));
                assert!(
                    backend.get(&key).await.unwrap().is_none(),
                    "nothing written"
                );
            }
        }
    }
}

/// Keys with unicode, spaces, separators and pattern characters in their id are distinct and
/// round-trip.
pub async fn unicode_keys(backend: &dyn Backend<Sample>, clock: &ManualClock) {
    let ns = namespace("unicode");
    let ids = [
        "Zürich",
        "東京",
        "🦀 crab",
        "a:b:c",
        "*",
        "[x]?",
        "tab\tand\nnewline",
        "Zurich",
    ];
    for (i, id) in ids.iter().enumerate() {
        backend
            .set(&ns.key(id).unwrap(), minute(Sample::new(i as u64), clock))
            .await
            .unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let got = backend
            .get(&ns.key(id).unwrap())
            .await
            .unwrap()
            .expect("present");
        assert_eq!(got.value.id, i as u64, "id {id:?}");
    }
    assert_eq!(backend.clear(&ns).await.unwrap(), ids.len() as u64);
}

/// Concurrent writers never corrupt a value: a contended key holds one of the written values,
/// and every writer's own keys hold its last write.
pub async fn concurrent_writers(backend: Arc<dyn Backend<Sample>>, clock: ManualClock) {
    const WRITERS: u64 = 16;
    const ROUNDS: u64 = 50;
    let ns = namespace("concurrent");
    let shared = ns.key("shared").unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (backend, clock, ns, shared) =
            (backend.clone(), clock.clone(), ns.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let id = w * 1_000 + r;
                backend
                    .set(&shared, minute(Sample::large(id, 64), &clock))
                    .await
                    .unwrap();
                backend
                    .set(
                        &ns.key(format!("own{w}")).unwrap(),
                        minute(Sample::new(id), &clock),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let written: HashSet<u64> = (0..WRITERS)
        .flat_map(|w| (0..ROUNDS).map(move |r| w * 1_000 + r))
        .collect();
    let got = backend
        .get(&shared)
        .await
        .unwrap()
        .expect("shared key present");
    assert!(written.contains(&got.value.id));
    assert_eq!(got.value, Sample::large(got.value.id, 64));
    for w in 0..WRITERS {
        let own = backend
            .get(&ns.key(format!("own{w}")).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(own.value.id, w * 1_000 + ROUNDS - 1);
    }
}

/// Generates one `#[tokio::test]` per conformance case from `setup`, an async function returning
/// a [`Subject`].
#[macro_export]
macro_rules! backend_conformance {
    ($setup:path) => {
        $crate::backend_conformance!(@case $setup, round_trip);
        $crate::backend_conformance!(@case $setup, miss);
        $crate::backend_conformance!(@case $setup, overwrite);
        $crate::backend_conformance!(@case $setup, delete);
        $crate::backend_conformance!(@case $setup, fresh_stale_expiry);
        $crate::backend_conformance!(@case $setup, batch);
        $crate::backend_conformance!(@case $setup, batch_empty);
        $crate::backend_conformance!(@case $setup, clear_is_scoped);
        $crate::backend_conformance!(@case $setup, large_values);
        $crate::backend_conformance!(@case $setup, unicode_keys);

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_concurrent_writers() {
            let subject = $setup().await;
            $crate::conformance::concurrent_writers(subject.backend.clone(), subject.clock.clone()).await;
        }
    };
    (@case $setup:path, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let subject = $setup().await;
            $crate::conformance::$case(&*subject.backend, &subject.clock).await;
        }
    };
}
