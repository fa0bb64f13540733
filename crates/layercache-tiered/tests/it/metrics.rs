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

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
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
