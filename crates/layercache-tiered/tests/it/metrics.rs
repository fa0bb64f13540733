//! The counters reach the `metrics` facade (feature `metrics`).

#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;

use layercache_core::{Key, Timestamp};
use layercache_tiered::TieredCache;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

use crate::Source;

/// Keeps the last value of every series, by `name{cache=...}`.
#[derive(Default)]
struct Capture(Arc<Mutex<BTreeMap<String, f64>>>);

struct Series(Arc<Mutex<BTreeMap<String, f64>>>, String);

impl CounterFn for Series {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.0.lock().unwrap().insert(self.1.clone(), value as f64);
    }
}

impl GaugeFn for Series {
    fn increment(&self, value: f64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

/// A histogram keeps its last value under its name and its number of records under `name#count`.
impl HistogramFn for Series {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }
    fn record_many(&self, value: f64, count: usize) {
        let mut seen = self.0.lock().unwrap();
        seen.insert(self.1.clone(), value);
        *seen.entry(format!("{}#count", self.1)).or_default() += count as f64;
    }
}

impl Capture {
    fn series(&self, key: &metrics::Key) -> Arc<Series> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Arc::new(Series(
            self.0.clone(),
            format!("{}{{{}}}", key.name(), labels.join(",")),
        ))
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.series(key))
    }
    fn register_histogram(&self, key: &metrics::Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.series(key))
    }
}

#[tokio::test]
async fn publish_metrics_exports_the_counters_with_the_cache_name() {
    let cache: TieredCache<String> = TieredCache::builder().name("products").build().unwrap();
    let source = Source::new(Duration::ZERO);
    let key = Key::new("k").unwrap();
    for _ in 0..3 {
        cache.get_or_load_from(&key, &source).await.unwrap();
    }
    let capture = Capture::default();
    metrics::with_local_recorder(&capture, || cache.publish_metrics());
    let seen = capture.0.lock().unwrap().clone();
    assert_eq!(
        seen.get("layercache_l1_hits_total{cache=products}"),
        Some(&2.0),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("layercache_l1_misses_total{cache=products}"),
        Some(&1.0)
    );
    assert_eq!(
        seen.get("layercache_loads_total{cache=products}"),
        Some(&1.0)
    );
    assert_eq!(
        seen.get("layercache_l2_circuit_state{cache=products}"),
        Some(&0.0)
    );
}

/// Every field of `TieredStats` reaches the exporter: a counter `layercache_<field>_total`, or a
/// gauge `layercache_<field>` (`circuit` as `layercache_l2_circuit_state`). The field list comes
/// from the struct's `Debug`, so a counter added without its metric fails here.
#[tokio::test]
async fn publish_metrics_exports_every_counter_of_the_stats() {
    let cache: TieredCache<String> = TieredCache::builder().name("all").build().unwrap();
    let stats = format!("{:?}", cache.stats());
    let fields: Vec<&str> = stats
        .trim_start_matches("TieredStats {")
        .trim_end_matches('}')
        .split(',')
        .filter_map(|field| field.split(':').next())
        .map(str::trim)
        .filter(|field| !field.is_empty())
        .collect();
    assert!(fields.len() > 30, "{fields:?}");
    let capture = Capture::default();
    metrics::with_local_recorder(&capture, || cache.publish_metrics());
    let seen = capture.0.lock().unwrap().clone();
    let missing: Vec<&str> = fields
        .iter()
        .copied()
        .filter(|field| {
            ![
                format!("layercache_{field}_total{{cache=all}}"),
                format!("layercache_{field}{{cache=all}}"),
                format!("layercache_l2_{field}_state{{cache=all}}"),
            ]
            .iter()
            .any(|name| seen.contains_key(name))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not published: {missing:?} (published: {:?})",
        seen.keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_invalidations_record_their_delay_and_are_counted() {
    use layercache_core::{
        Clock, Invalidation, InvalidationBatch, InvalidationTransport, MemoryTransport, SystemClock,
    };
    let transport = MemoryTransport::new();
    let cache: TieredCache<String> = TieredCache::builder()
        .name("b")
        .invalidation(transport.clone())
        .build()
        .unwrap();
    let key = Key::new("k").unwrap();
    cache.set(&key, "old".to_owned()).await.unwrap();
    // Another instance's batch, sent 50 ms ago. The memory transport delivers it while
    // `publish` runs, on this thread, where the recorder listens.
    let batch = InvalidationBatch {
        origin: 99,
        sent_at: Timestamp::from_millis(SystemClock.now().as_millis() - 50),
        items: vec![Invalidation::Key(key.clone())],
    };
    let capture = Capture::default();
    metrics::with_local_recorder(&capture, || {
        let publish = std::pin::pin!(transport.publish(&batch));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(publish.poll(&mut context).is_ready());
        cache.publish_metrics();
    });
    let seen = capture.0.lock().unwrap().clone();
    let delay = seen["layercache_invalidation_delay_seconds{cache=b,transport=memory}"];
    assert!((0.05..10.0).contains(&delay), "{delay}");
    assert_eq!(
        seen.get("layercache_invalidations_received_total{cache=b}"),
        Some(&1.0)
    );
    assert_eq!(
        cache.get(&key).await.unwrap(),
        None,
        "the invalidation applied"
    );
}

/// The histograms' records so far, by `name{labels}`.
fn counts(capture: &Capture) -> BTreeMap<String, f64> {
    capture
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(name, count)| Some((name.strip_suffix("#count")?.to_owned(), *count)))
        .collect()
}

#[tokio::test]
async fn latency_histograms_time_each_tier_by_outcome() {
    use layercache_core::{Backend, EntryOptions, Error};
    use layercache_moka::MokaBackend;

    let l2: Arc<dyn Backend<Option<String>>> = Arc::new(MokaBackend::builder().build().unwrap());
    let capture = Capture::default();
    // Handles are registered when the cache is built: the recorder must be there then, and only then.
    let cache: TieredCache<String> = metrics::with_local_recorder(&capture, || {
        TieredCache::builder()
            .name("lat")
            .l2_backend(Arc::clone(&l2))
            .build()
            .unwrap()
    });
    let (k, shared, failing) = (
        Key::new("k").unwrap(),
        Key::new("shared").unwrap(),
        Key::new("failing").unwrap(),
    );
    let entry = EntryOptions::new(Duration::from_secs(60))
        .entry(
            Some("from L2".to_owned()),
            layercache_core::Clock::now(&layercache_core::SystemClock),
            Duration::ZERO,
        )
        .unwrap();
    l2.set(&shared, entry).await.unwrap();

    // A load (L1 and L2 miss), then an L1 hit, an L2 hit and a failed load.
    let loaded = cache
        .get_or_load(&k, |_| async { Ok::<_, Error>(Some("v".to_owned())) })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref(), Some("v"));
    assert_eq!(
        cache
            .get_or_load(&k, |_| async { Ok::<_, Error>(None) })
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
    assert_eq!(
        cache
            .get_or_load(&shared, |_| async { Ok::<_, Error>(None) })
            .await
            .unwrap()
            .as_deref(),
        Some("from L2")
    );
    let failed = cache
        .get_or_load(&failing, |_| async {
            Err::<Option<String>, _>(Error::loader("the source is down"))
        })
        .await;
    assert!(failed.is_err());

    // L1 lookups are sampled one in 64 per thread, with weight 64: with 128 reads in all on this
    // thread (4 above), exactly two are sampled, wherever the thread's count stood.
    for _ in 0..124 {
        let hit = cache
            .get_or_load(&k, |_| async { Ok::<_, Error>(None) })
            .await;
        assert_eq!(hit.unwrap().as_deref(), Some("v"));
    }

    let counts = counts(&capture);
    let count = |series: &str| counts.get(series).copied().unwrap_or(0.0);
    let exact = [
        ("layercache_get_seconds{cache=lat,outcome=loaded}", 1.0),
        ("layercache_get_seconds{cache=lat,outcome=hit}", 1.0),
        ("layercache_get_seconds{cache=lat,outcome=error}", 1.0),
        ("layercache_l2_seconds{cache=lat,outcome=miss}", 2.0),
        ("layercache_l2_seconds{cache=lat,outcome=hit}", 1.0),
        ("layercache_load_seconds{cache=lat,outcome=ok}", 1.0),
        ("layercache_load_seconds{cache=lat,outcome=error}", 1.0),
    ];
    for (series, expected) in exact {
        assert_eq!(count(series), expected, "{series}: {counts:#?}");
    }
    let (l1_hits, l1_misses) = (
        count("layercache_l1_seconds{cache=lat,outcome=hit}"),
        count("layercache_l1_seconds{cache=lat,outcome=miss}"),
    );
    assert_eq!(l1_hits + l1_misses, 128.0, "{counts:#?}");
    assert!(
        l1_misses <= 64.0,
        "at most one of the 3 misses sampled: {counts:#?}"
    );
    assert_eq!(
        count("layercache_get_seconds{cache=lat,outcome=l1_hit}"),
        l1_hits,
        "{counts:#?}"
    );
    let all: f64 = counts.values().sum();
    assert_eq!(
        all,
        8.0 + 2.0 * l1_hits + l1_misses,
        "nothing else: {counts:#?}"
    );
}

#[tokio::test]
async fn latency_histograms_off_record_nothing() {
    let capture = Capture::default();
    let cache: TieredCache<String> = metrics::with_local_recorder(&capture, || {
        TieredCache::builder()
            .name("quiet")
            .latency_histograms(false)
            .build()
            .unwrap()
    });
    let source = Source::new(Duration::ZERO);
    let key = Key::new("k").unwrap();
    for _ in 0..3 {
        cache.get_or_load_from(&key, &source).await.unwrap();
    }
    assert_eq!(source.loads(), 1);
    assert!(counts(&capture).is_empty(), "{:?}", counts(&capture));
}
