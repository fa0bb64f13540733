//! What a loader returns, and the one shape every loader takes inside the pipeline.

use std::future::Future;
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

/// A loader of one key as the pipeline runs it, made only on a miss or a refresh: a caller's
/// closure ([`from_closure`]) or a reusable [`Loader`] ([`from_loader`]). Generic, not boxed: the
/// flight that runs it is boxed once, with the loader inside.
pub(crate) trait LoadFn<V>: Send + 'static {
    /// Loads `key`.
    fn load(self, key: Key) -> impl Future<Output = Result<Loaded<V>>> + Send;
}

/// A caller's closure as a [`LoadFn`].
pub(crate) struct FromClosure<F>(F);

impl<V, F, Fut, T, E> LoadFn<V> for FromClosure<F>
where
    V: Send + 'static,
    F: FnOnce(Key) -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
    T: Into<Loaded<V>>,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    async fn load(self, key: Key) -> Result<Loaded<V>> {
        match (self.0)(key).await {
            Ok(loaded) => Ok(loaded.into()),
            Err(error) => Err(Error::from_loader(error)),
        }
    }
}

/// A reusable [`Loader`] as a [`LoadFn`].
pub(crate) struct FromLoader<L: ?Sized>(Arc<L>);

impl<V, L> LoadFn<V> for FromLoader<L>
where
    V: Send + 'static,
    L: Loader<V> + ?Sized + 'static,
{
    async fn load(self, key: Key) -> Result<Loaded<V>> {
        self.0.load(&key).await.map(Loaded::new)
    }
}

/// A [`LoadFn`] from a caller's closure.
pub(crate) fn from_closure<F>(load: F) -> FromClosure<F> {
    FromClosure(load)
}

/// A [`LoadFn`] from a reusable [`Loader`].
pub(crate) fn from_loader<L: ?Sized>(loader: Arc<L>) -> FromLoader<L> {
    FromLoader(loader)
}
