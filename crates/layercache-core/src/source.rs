use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::Key;

/// The source of truth on a miss: a database, an API.
///
/// `Ok(None)` means the source has no value for the key (which strategies may cache negatively);
/// an error means it could not answer.
#[async_trait]
pub trait Loader<V>: Send + Sync
where
    V: Send + 'static,
{
    /// Loads the value of `key`.
    async fn load(&self, key: &Key) -> Result<Option<V>>;

    /// Loads the values of `keys`, in the same order. The default loops over [`load`](Loader::load);
    /// override it with one batched query where the source allows.
    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Option<V>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.load(key).await?);
        }
        Ok(out)
    }
}

/// Where writes go: the source of truth, for write-through and write-behind.
#[async_trait]
pub trait Writer<V>: Send + Sync
where
    V: Send + Sync + 'static,
{
    /// Writes `value` under `key`.
    async fn write(&self, key: &Key, value: &V) -> Result<()>;

    /// Removes `key`.
    async fn remove(&self, key: &Key) -> Result<()>;

    /// Writes every pair. The default loops over [`write`](Writer::write); override it with one
    /// batched statement where the source allows.
    async fn write_many(&self, items: &[(Key, V)]) -> Result<()> {
        for (key, value) in items {
            self.write(key, value).await?;
        }
        Ok(())
    }
}

/// A [`Loader`] from an async function of the key; see [`loader_fn`].
pub struct LoaderFn<F>(F);

impl<F> fmt::Debug for LoaderFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoaderFn")
    }
}

/// A [`Loader`] from an async function or closure taking the key.
///
/// ```
/// use layercache_core::{Key, Loader, loader_fn};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let loader = loader_fn(|key: Key| async move { Ok(Some(key.as_str().len())) });
/// assert_eq!(loader.load(&Key::new("abc")?).await?, Some(3));
/// # Ok::<(), layercache_core::Error>(())
/// # }).unwrap();
/// ```
pub fn loader_fn<F, Fut, V>(f: F) -> LoaderFn<F>
where
    F: Fn(Key) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Option<V>>> + Send,
    V: Send + 'static,
{
    LoaderFn(f)
}

#[async_trait]
impl<F, Fut, V> Loader<V> for LoaderFn<F>
where
    F: Fn(Key) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Option<V>>> + Send,
    V: Send + 'static,
{
    async fn load(&self, key: &Key) -> Result<Option<V>> {
        (self.0)(key.clone()).await
    }
}
