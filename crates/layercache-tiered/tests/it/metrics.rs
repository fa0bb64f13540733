//! The counters reach the `metrics` facade (feature `metrics`).

#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use layercache_core::Key;
use layercache_tiered::TieredCache;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, KeyName, Metadata, Recorder, SharedString, Unit,
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
    fn register_histogram(&self, _: &metrics::Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
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
