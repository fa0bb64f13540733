//! Write generations: how a write beats the loads that started before it.
//!
//! Keys hash onto a fixed set of stripes; each stripe has a generation counter and an async
//! mutex. A load notes its stripe's generation when it starts and stores its value only if the
//! generation is unchanged, checking under the stripe's mutex. A write holds the mutex across its
//! source write, bumps the generation and writes the cache. So once a write returns, no load that
//! started before it can put an older value back, and writes of one key reach the source and the
//! cache in the same order. Striping keeps memory bounded; the price is that a write can make an
//! unrelated load of the same stripe skip its store (the value is still returned, just not cached).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use layercache_core::Key;
use tokio::sync::{Mutex, MutexGuard};

/// The number of stripes: enough that false conflicts are rare, small enough to be cheap.
pub(crate) const STRIPES: usize = 1024;

struct Stripe {
    generation: AtomicU64,
    lock: Mutex<()>,
}

pub(crate) struct Generations {
    stripes: Box<[Stripe]>,
    hasher: RandomState,
}

impl Generations {
    pub(crate) fn new() -> Self {
        Generations {
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    generation: AtomicU64::new(0),
                    lock: Mutex::new(()),
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn index(&self, key: &Key) -> usize {
        (self.hasher.hash_one(key.as_str()) as usize) % self.stripes.len()
    }

    fn stripe(&self, key: &Key) -> &Stripe {
        &self.stripes[self.index(key)]
    }

    /// Locks the stripes of all `keys`, in ascending order so concurrent callers cannot deadlock.
    pub(crate) async fn lock_many(&self, keys: &[Key]) -> Vec<MutexGuard<'_, ()>> {
        let mut indices: Vec<usize> = keys.iter().map(|k| self.index(k)).collect();
        indices.sort_unstable();
        indices.dedup();
        let mut guards = Vec::with_capacity(indices.len());
        for index in indices {
            guards.push(self.stripes[index].lock.lock().await);
        }
        guards
    }

    /// The generation of `key`'s stripe now.
    pub(crate) fn current(&self, key: &Key) -> u64 {
        self.stripe(key).generation.load(Ordering::Acquire)
    }

    /// Locks `key`'s stripe.
    pub(crate) async fn lock(&self, key: &Key) -> MutexGuard<'_, ()> {
        self.stripe(key).lock.lock().await
    }

    /// Bumps `key`'s stripe generation; call with the stripe locked.
    pub(crate) fn bump(&self, key: &Key) {
        self.stripe(key).generation.fetch_add(1, Ordering::AcqRel);
    }
}
