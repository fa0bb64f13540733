//! What a loader returns, and the one shape every loader takes inside the pipeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use layercache_core::{EntryOptions, Error, Key, Loader, Result};

/// What a loader produced: the value (`None`: the source has no such row) and, optionally, the
/// entry options to cache it with, chosen from the value itself (adaptive caching: a short TTL for
/// a volatile row, a long one for an archived one).
///
/// A loader closure may return `Option<V>` (the cache's options apply) or a `Loaded<V>`:
///
/// ```
/// use std::time::Duration;
/// use layercache_core::EntryOptions;
/// use layercache_tiered::Loaded;
///
/// let volatile = Loaded::from(Some("price: 12.30")).with_options(EntryOptions::new(Duration::from_secs(5)));
/// assert_eq!(volatile.value(), Some(&"price: 12.30"));
/// ```
#[derive(Clone, Debug)]
pub struct Loaded<V> {
    value: Option<V>,
    options: Option<EntryOptions>,
}

impl<V> Loaded<V> {
    /// A loaded value (`None`: absent at the source), cached with the call's options.
    pub fn new(value: Option<V>) -> Self {
        Loaded {
            value,
            options: None,
        }
    }

    /// Caches this value with `options` instead of the call's (its TTL, stale period, jitter,
    /// tags; the load settings in it are ignored, the load being done).
    #[must_use]
    pub fn with_options(mut self, options: EntryOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// The value.
    pub fn value(&self) -> Option<&V> {
        self.value.as_ref()
    }

    pub(crate) fn into_parts(self) -> (Option<V>, Option<EntryOptions>) {
        (self.value, self.options)
    }
}

impl<V> From<Option<V>> for Loaded<V> {
    fn from(value: Option<V>) -> Self {
        Loaded::new(value)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A loader of one key as the pipeline runs it: made only on a miss or a refresh.
pub(crate) type LoadFn<V> = Box<dyn FnOnce(Key) -> BoxFuture<Result<Loaded<V>>> + Send>;

/// A [`LoadFn`] from a caller's closure.
pub(crate) fn from_closure<V, F, Fut, T, E>(load: F) -> LoadFn<V>
where
    V: Send + 'static,
    F: FnOnce(Key) -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
    T: Into<Loaded<V>>,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    Box::new(move |key| {
        Box::pin(async move {
            match load(key).await {
                Ok(loaded) => Ok(loaded.into()),
                Err(error) => Err(Error::from_loader(error)),
            }
        })
    })
}

/// A [`LoadFn`] from a reusable [`Loader`].
pub(crate) fn from_loader<V, L>(loader: Arc<L>) -> LoadFn<V>
where
    V: Send + 'static,
    L: Loader<V> + ?Sized + 'static,
{
    Box::new(move |key| Box::pin(async move { loader.load(&key).await.map(Loaded::new) }))
}
