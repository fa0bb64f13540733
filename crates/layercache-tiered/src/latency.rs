//! Latency histograms through the `metrics` facade (feature `metrics`): how long L1 lookups, L2
//! reads, loads and whole reads take, labelled `cache` (the cache's name) and `outcome`.
//!
//! | histogram (seconds)             | outcomes                                              |
//! |---------------------------------|-------------------------------------------------------|
//! | `layercache_get_seconds`        | `l1_hit`, `hit` (L2 or another flight), `loaded`, `coalesced`, `stale`, `error` |
//! | `layercache_l1_seconds`         | `hit`, `miss`                                         |
//! | `layercache_l2_seconds`         | `hit`, `miss`, `error`                                |
//! | `layercache_load_seconds`       | `ok`, `error`, `timeout`                              |
//!
//! Every handle is registered once, when the cache is built (so install the recorder — a
//! Prometheus or OpenTelemetry exporter — before building caches): recording is a clock read and
//! a call into the recorder, with no allocation and no label formatting per request. Without the
//! feature, or with [`TieredCacheBuilder::latency_histograms(false)`](crate::TieredCacheBuilder::latency_histograms),
//! nothing is timed: [`Latency::start`] is `None` and every record is a no-op.
//!
//! **L1 lookups are sampled**: two clock reads cost about 40 ns, a quarter of an L1 hit, so one
//! read in [`L1_SAMPLE`] per thread is timed from its start and recorded with weight
//! [`L1_SAMPLE`] (`record_many`): counts and sums stay right, the hit path pays a thread-local
//! increment. Everything slower than L1 (L2 reads, loads, reads that missed L1) is timed every
//! time; a read that missed L1 unsampled is timed from the miss (its L1 lookup, a fraction of a
//! microsecond, left out).

use std::cell::Cell;
use std::time::Instant;

/// One L1 lookup in this many (per thread) is timed, and recorded with this weight.
pub(crate) const L1_SAMPLE: u32 = 64;

thread_local! {
    static L1_TICK: Cell<u32> = const { Cell::new(0) };
}

/// What a whole read ended with.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GetOutcome {
    #[cfg_attr(
        not(feature = "metrics"),
        expect(dead_code, reason = "only the histograms record it")
    )]
    L1Hit,
    Hit,
    Loaded,
    Coalesced,
    Stale,
    Error,
}

/// What an L2 read found.
#[derive(Clone, Copy, Debug)]
pub(crate) enum L2Outcome {
    Hit,
    Miss,
    Error,
}

/// How a load ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LoadOutcome {
    Ok,
    Error,
    Timeout,
}

#[cfg(feature = "metrics")]
mod handles {
    use metrics::Histogram;

    use super::{GetOutcome, L2Outcome, LoadOutcome};

    /// The registered histograms of one cache, one handle per (histogram, outcome).
    pub(crate) struct Handles {
        get: [Histogram; 6],
        l1: [Histogram; 2],
        l2: [Histogram; 3],
        load: [Histogram; 3],
    }

    fn register<const N: usize>(
        metric: &'static str,
        name: &str,
        outcomes: [&'static str; N],
    ) -> [Histogram; N] {
        outcomes.map(
            |outcome| metrics::histogram!(metric, "cache" => name.to_owned(), "outcome" => outcome),
        )
    }

    impl Handles {
        pub(crate) fn register(name: &str) -> Self {
            Handles {
                get: register(
                    "layercache_get_seconds",
                    name,
                    ["l1_hit", "hit", "loaded", "coalesced", "stale", "error"],
                ),
                l1: register("layercache_l1_seconds", name, ["hit", "miss"]),
                l2: register("layercache_l2_seconds", name, ["hit", "miss", "error"]),
                load: register("layercache_load_seconds", name, ["ok", "error", "timeout"]),
            }
        }

        pub(crate) fn get(&self, outcome: GetOutcome) -> &Histogram {
            &self.get[outcome as usize]
        }

        pub(crate) fn l1(&self, hit: bool) -> &Histogram {
            &self.l1[usize::from(!hit)]
        }

        pub(crate) fn l2(&self, outcome: L2Outcome) -> &Histogram {
            &self.l2[outcome as usize]
        }

        pub(crate) fn load(&self, outcome: LoadOutcome) -> &Histogram {
            &self.load[outcome as usize]
        }
    }
}

/// A cache's latency histograms, or nothing (disabled, or no `metrics` feature).
#[derive(Default)]
pub(crate) struct Latency {
    #[cfg(feature = "metrics")]
    handles: Option<Box<handles::Handles>>,
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl Latency {
    /// The histograms of the cache called `name`, registered now; nothing when `enabled` is false
    /// or the `metrics` feature is off.
    pub(crate) fn new(name: &str, enabled: bool) -> Self {
        #[cfg(feature = "metrics")]
        {
            Latency {
                handles: enabled.then(|| Box::new(handles::Handles::register(name))),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, enabled);
            Latency {}
        }
    }

    #[inline]
    fn enabled(&self) -> bool {
        #[cfg(feature = "metrics")]
        {
            self.handles.is_some()
        }
        #[cfg(not(feature = "metrics"))]
        {
            false
        }
    }

    /// When a timed span starts: `None` when nothing is recorded (no clock read).
    #[inline]
    pub(crate) fn start(&self) -> Option<Instant> {
        self.enabled().then(Instant::now)
    }

    /// When a read starts, if this one is sampled (see the module docs): `None` for the others.
    #[inline]
    pub(crate) fn start_read(&self) -> Option<Instant> {
        if !self.enabled() {
            return None;
        }
        let sampled = L1_TICK.with(|tick| {
            let next = tick.get().wrapping_add(1);
            tick.set(next);
            next % L1_SAMPLE == 0
        });
        sampled.then(Instant::now)
    }

    /// A sampled read served from L1 at once: one clock read for both the L1 and the whole-read
    /// histograms.
    #[inline]
    pub(crate) fn l1_hit(&self, started: Option<Instant>) {
        #[cfg(feature = "metrics")]
        if let (Some(handles), Some(started)) = (&self.handles, started) {
            let seconds = started.elapsed().as_secs_f64();
            handles.l1(true).record_many(seconds, L1_SAMPLE as usize);
            handles
                .get(GetOutcome::L1Hit)
                .record_many(seconds, L1_SAMPLE as usize);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = started;
    }

    /// A read that found nothing fresh in L1 (`looked`: the cache has an L1): records the lookup
    /// if it was sampled, and returns when the whole read started (the miss, if not sampled).
    #[inline]
    pub(crate) fn l1_miss(&self, started: Option<Instant>, looked: bool) -> Option<Instant> {
        #[cfg(feature = "metrics")]
        if let (Some(handles), Some(started), true) = (&self.handles, started, looked) {
            handles
                .l1(false)
                .record_many(started.elapsed().as_secs_f64(), L1_SAMPLE as usize);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = looked;
        started.or_else(|| self.start())
    }

    /// A whole read that missed L1 (hits go through [`l1_hit`](Self::l1_hit)).
    #[inline]
    pub(crate) fn get(&self, started: Option<Instant>, outcome: GetOutcome) {
        #[cfg(feature = "metrics")]
        if let (Some(handles), Some(started)) = (&self.handles, started) {
            handles.get(outcome).record(started.elapsed().as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (started, outcome);
    }

    /// One L2 read.
    #[inline]
    pub(crate) fn l2(&self, started: Option<Instant>, outcome: L2Outcome) {
        #[cfg(feature = "metrics")]
        if let (Some(handles), Some(started)) = (&self.handles, started) {
            handles.l2(outcome).record(started.elapsed().as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (started, outcome);
    }

    /// One load (`get_or_load`'s loader, or a bulk `load_many`) that began at `started` (the
    /// load's own clock read, taken for XFetch anyway).
    #[inline]
    pub(crate) fn load(&self, started: Instant, outcome: LoadOutcome) {
        #[cfg(feature = "metrics")]
        if let Some(handles) = &self.handles {
            handles
                .load(outcome)
                .record(started.elapsed().as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (started, outcome);
    }

    /// How a load ended, from its result.
    pub(crate) fn load_result<T>(&self, started: Instant, result: &layercache_core::Result<T>) {
        let outcome = match result {
            Ok(_) => LoadOutcome::Ok,
            Err(error) if error.kind() == layercache_core::ErrorKind::Timeout => {
                LoadOutcome::Timeout
            }
            Err(_) => LoadOutcome::Error,
        };
        self.load(started, outcome);
    }
}
