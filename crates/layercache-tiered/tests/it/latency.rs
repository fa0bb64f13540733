//! No latency cliff at expiry: with stale-while-revalidate, hot keys whose TTL runs out keep being
//! served (the stale value, while one background refresh per key reloads it), so readers never
//! queue behind the loader. Asserted on outcomes — loads per key per TTL period, the age of every
//! value served — with the latency figures printed, not asserted (CI machines are busy).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use layercache_core::{Clock, EntryOptions, Key, SystemClock};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::TieredCache;

const TASKS: usize = 64;
const KEYS: usize = 1_000;
const ZIPF_EXPONENT: f64 = 1.1;
const TTL: Duration = Duration::from_secs(1);
const STALE_TTL: Duration = Duration::from_secs(10);
const LOAD: Duration = Duration::from_millis(20);
const WINDOW: Duration = Duration::from_millis(100);
const WARM_UP: Duration = Duration::from_secs(2);
/// How long the readers run, warm-up included.
#[cfg(not(debug_assertions))]
const RUN: Duration = Duration::from_secs(20);
#[cfg(debug_assertions)]
const RUN: Duration = Duration::from_secs(5);

/// A small seeded PRNG (SplitMix64): the test needs no randomness crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf over ranks `0..n`: rank `r` with probability proportional to `1 / (r + 1)^s`.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=n)
            .map(|rank| {
                total += (rank as f64).powf(-s);
                total
            })
            .collect();
        for c in &mut cumulative {
            *c /= total;
        }
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }
}

/// One read: when it started (since the run began) and how long it took, in microseconds.
#[derive(Clone, Copy)]
struct Sample {
    start_us: u64,
    latency_us: u64,
}

/// The `q` quantile of sorted `values`.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_expiring_under_stale_while_revalidate_load_once_per_ttl_and_serve_no_expired_value()
 {
    let server = RedisServer::start();
    let cache: TieredCache<u64> = TieredCache::builder()
        .name("latency")
        .redis_url(server.url())
        .options(
            EntryOptions::new(TTL)
                .with_stale_ttl(STALE_TTL)
                .with_stale_while_revalidate(),
        )
        .build()
        .unwrap();
    let namespace = unique_space().namespace("latency").unwrap();
    let keys: Arc<Vec<Key>> = Arc::new((0..KEYS).map(|i| namespace.key(i).unwrap()).collect());
    let loads: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let zipf = Arc::new(Zipf::new(KEYS, ZIPF_EXPONENT));

    let began = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (cache, keys, loads, zipf) = (
                cache.clone(),
                Arc::clone(&keys),
                Arc::clone(&loads),
                Arc::clone(&zipf),
            );
            tokio::spawn(async move {
                let mut rng = Rng(0x2100_0000 + t as u64);
                let mut samples = Vec::new();
                // The oldest value served, by the age of the value when the read began (ms).
                let mut oldest_ms = 0;
                while began.elapsed() < RUN {
                    let index = zipf.sample(&mut rng);
                    let loads = Arc::clone(&loads);
                    let read_at = SystemClock.now();
                    let start = Instant::now();
                    let value = cache
                        .get_or_load(&keys[index], move |_key: Key| async move {
                            loads[index].fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(LOAD).await;
                            // The value is the time it was loaded: the cache's entry is created
                            // right after this (same clock, no await in between).
                            Ok::<_, layercache_core::Error>(Some(SystemClock.now().as_millis()))
                        })
                        .await
                        .unwrap()
                        .expect("the loader always has a value");
                    samples.push(Sample {
                        start_us: start.duration_since(began).as_micros() as u64,
                        latency_us: start.elapsed().as_micros() as u64,
                    });
                    oldest_ms = oldest_ms.max(read_at.as_millis().saturating_sub(value));
                    // Pace each reader at about 1,000 reads/s, so the run does not starve the
                    // other tests that share the machine.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (samples, oldest_ms)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut oldest_ms = 0;
    for task in tasks {
        let (s, o) = task.await.unwrap();
        samples.extend(s);
        oldest_ms = oldest_ms.max(o);
    }
    let ran = began.elapsed();

    // Latency: the p99 of each 100 ms window after the warm-up (printed, not asserted).
    let windows = (ran.as_micros() / WINDOW.as_micros()) as usize;
    let mut per_window: Vec<Vec<u64>> = vec![Vec::new(); windows + 1];
    for sample in &samples {
        per_window[(sample.start_us / WINDOW.as_micros() as u64) as usize].push(sample.latency_us);
    }
    let first = (WARM_UP.as_micros() / WINDOW.as_micros()) as usize;
    let mut p99s: Vec<u64> = per_window[first..windows]
        .iter_mut()
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.sort_unstable();
            quantile(w, 0.99)
        })
        .collect();
    p99s.sort_unstable();
    let mut measured: Vec<u64> = samples
        .iter()
        .filter(|s| s.start_us >= WARM_UP.as_micros() as u64)
        .map(|s| s.latency_us)
        .collect();
    measured.sort_unstable();
    // Reads that waited for a load (a loader call takes 20 ms).
    let waited = measured
        .iter()
        .filter(|&&l| l >= LOAD.as_micros() as u64)
        .count();

    // Loads: each load's value is fresh for a TTL, and only a read after that refreshes it, so a
    // key loads at most once per TTL period (plus its first load).
    let periods = ran.as_secs_f64() / TTL.as_secs_f64();
    let per_key: Vec<u64> = loads.iter().map(|l| l.load(Ordering::Relaxed)).collect();
    let total: u64 = per_key.iter().sum();
    let hottest: u64 = per_key[..10].iter().sum();
    let stats = cache.stats();
    eprintln!(
        "latency: {} reads in {ran:?} from {TASKS} tasks, Zipf({ZIPF_EXPONENT}) over {KEYS} keys; \
         after the {WARM_UP:?} warm-up: {} windows of {WINDOW:?}, p99 per window median {} us, \
         max {} us; overall p50 {} us, p99 {} us, p99.9 {} us, max {} us; {waited} reads took \
         >= {LOAD:?}",
        samples.len(),
        p99s.len(),
        quantile(&p99s, 0.5),
        p99s.last().unwrap(),
        quantile(&measured, 0.5),
        quantile(&measured, 0.99),
        quantile(&measured, 0.999),
        measured.last().unwrap(),
    );
    eprintln!(
        "latency: {total} loads over {periods:.1} TTL periods: {:.3} loads per key per period \
         (the 10 hottest keys: {:.3}; max of a key {}); {} stale served, {} refreshes; oldest \
         value served {oldest_ms} ms old (TTL + stale TTL = {:?})",
        total as f64 / KEYS as f64 / periods,
        hottest as f64 / 10.0 / periods,
        per_key.iter().max().unwrap(),
        stats.stale_served,
        stats.refreshes,
        TTL + STALE_TTL,
    );

    let allowed = (periods * 1.1).floor() as u64 + 1;
    for (index, &count) in per_key.iter().enumerate() {
        assert!(
            count <= allowed,
            "key {index} loaded {count} times in {periods:.1} TTL periods (at most {allowed})"
        );
    }
    assert!(
        total as f64 / KEYS as f64 / periods <= 1.1,
        "{total} loads of {KEYS} keys in {periods:.1} TTL periods"
    );
    // Every value served was within its stale period (the value's time is taken right before the
    // cache creates its entry, in the same millisecond clock: 1 ms of rounding).
    assert!(
        u128::from(oldest_ms) <= (TTL + STALE_TTL).as_millis() + 1,
        "a value {oldest_ms} ms old was served"
    );
    // The expiries did happen under the readers: the hottest key was reloaded.
    assert!(
        per_key[0] >= 2,
        "the hottest key loaded {} time(s)",
        per_key[0]
    );
}
