//! Per-id tallies of requests, time, CPU and checked values.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What one id did: requests served, time and CPU spent on them, values checked.
#[derive(Default)]
pub(crate) struct Tally {
    requests: AtomicU64,
    nanos: AtomicU64,
    /// The process's CPU time over the timed chunks.
    cpu_nanos: AtomicU64,
    /// Requests the contender says its in-process cache answered.
    l1_hits: AtomicU64,
    checked: AtomicU64,
    mismatched: AtomicU64,
    /// Requests that failed, and why the first one did.
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Tally {
    /// One timed chunk of `requests` requests.
    pub(crate) fn record(&self, requests: usize, elapsed: Duration, cpu: Duration) {
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.cpu_nanos
            .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_l1_hits(&self, hits: u64) {
        self.l1_hits.fetch_add(hits, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn l1_hits(&self) -> u64 {
        self.l1_hits.load(Ordering::Relaxed)
    }

    pub(crate) fn ran(&self) -> bool {
        self.requests() > 0
    }

    /// CPU microseconds per request.
    pub(crate) fn cpu_per_request(&self) -> f64 {
        let requests = self.requests();
        if requests == 0 {
            return 0.0;
        }
        self.cpu_nanos.load(Ordering::Relaxed) as f64 / 1e3 / requests as f64
    }

    pub(crate) fn ops_per_sec(&self) -> f64 {
        let nanos = self.nanos.load(Ordering::Relaxed);
        if nanos == 0 {
            return 0.0;
        }
        self.requests() as f64 / (nanos as f64 / 1e9)
    }

    /// One checked value: whether it was the value of the key asked for.
    pub(crate) fn check(&self, ok: bool) {
        self.checked.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.mismatched.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request that failed: counted, the first reason kept.
    pub(crate) fn fail(&self, why: String) {
        if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
            let mut first = self
                .first_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert(why);
        }
    }

    /// Requests that failed, and why the first one did.
    pub(crate) fn failures(&self) -> (u64, Option<String>) {
        let first = self
            .first_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        (self.failed.load(Ordering::Relaxed), first)
    }

    /// Panics unless values were checked and all of them were right.
    pub(crate) fn assert_correct(&self, id: &str) {
        let (checked, bad) = (
            self.checked.load(Ordering::Relaxed),
            self.mismatched.load(Ordering::Relaxed),
        );
        assert!(checked > 0, "{id}: no value was checked");
        assert_eq!(bad, 0, "{id}: {bad} of {checked} checked values were wrong");
    }
}

/// `hits / reads`, 0 for no reads.
pub(crate) fn ratio(hits: u64, reads: u64) -> f64 {
    if reads == 0 {
        0.0
    } else {
        hits as f64 / reads as f64
    }
}
