//! [`Catalog`]: the products, read through the caches and written through to them.
//!
//! - An item is read with `get_or_load` (a missing product is cached as an absence for the
//!   cache's negative TTL; creating it overwrites that).
//! - A page of a list is read with `get_or_load_with`, keyed by the query (category, page) and
//!   tagged `lists:all` (no category) or `lists:category:<c>`.
//! - A write goes to the database first and to the caches after its commit: the item with a
//!   write-through (`begin_write` before the database write, `set_after` after its commit, so a
//!   load that read the old row cannot store it afterwards), and the lists it appears in by tag
//!   (`lists:all` and every category it left or entered). `invalidate_tag` returns once no tier
//!   of this instance serves a list made before, and no load that began before stores one; other
//!   instances drop theirs when the invalidation reaches them over pub/sub.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use layercache::tiered::WarmOutcome;
use layercache::{Key, Loader, Namespace, TieredCache, TieredStats};

use crate::db::{Db, NewProduct, Product, ProductPage};

/// The tag of every cached page of the unfiltered list.
const TAG_ALL: &str = "lists:all";

/// The tag of the cached pages of `category`'s list.
fn category_tag(category: &str) -> String {
    format!("lists:category:{category}")
}

/// The caches of products and lists (absent in [`CacheMode::None`](crate::CacheMode::None)).
#[derive(Clone, Debug)]
pub(crate) struct ProductCaches {
    pub(crate) items: TieredCache<Arc<Product>>,
    pub(crate) lists: TieredCache<Arc<ProductPage>>,
    pub(crate) item_keys: Namespace,
    pub(crate) list_keys: Namespace,
}

/// What a write through the catalog did to the database.
#[derive(Debug)]
pub(crate) enum Written<T> {
    Done(T),
    NotFound,
}

/// Products: the database and, unless caching is off, the caches in front of it.
#[derive(Clone, Debug)]
pub(crate) struct Catalog {
    pub(crate) db: Db,
    pub(crate) caches: Option<ProductCaches>,
}

impl Catalog {
    /// Product `id`: from the caches, else the database.
    pub(crate) async fn product(&self, id: i64) -> Result<Option<Arc<Product>>, Failure> {
        let Some(caches) = &self.caches else {
            return Ok(self.db.product(id).await?.map(Arc::new));
        };
        let key = caches.item_keys.key(id).map_err(layercache::Error::from)?;
        let db = self.db.clone();
        let loaded = caches
            .items
            .get_or_load(&key, move |_| async move {
                db.product(id).await.map(|found| found.map(Arc::new))
            })
            .await?;
        Ok(loaded)
    }

    /// Page `page` of the list of `category` (or all products).
    pub(crate) async fn page(
        &self,
        category: Option<String>,
        page: u32,
    ) -> Result<Arc<ProductPage>, Failure> {
        let Some(caches) = &self.caches else {
            return Ok(Arc::new(self.db.page(category.as_deref(), page).await?));
        };
        let (id, tag) = match &category {
            Some(category) => (
                format!("category/{category}/page/{page}"),
                category_tag(category),
            ),
            None => (format!("all/page/{page}"), TAG_ALL.to_owned()),
        };
        let key = caches.list_keys.key(id).map_err(layercache::Error::from)?;
        let options = caches.lists.options().clone().with_tags([tag]);
        let (db, filter) = (self.db.clone(), category.clone());
        let loaded = caches
            .lists
            .get_or_load_with(&key, &options, move |_| async move {
                db.page(filter.as_deref(), page)
                    .await
                    .map(|page| Some(Arc::new(page)))
            })
            .await?;
        // The loader never returns `None`, so neither does the cache; an empty page if it did.
        Ok(loaded.unwrap_or_else(|| {
            Arc::new(ProductPage {
                category,
                page,
                page_size: crate::db::PAGE_SIZE,
                items: Vec::new(),
            })
        }))
    }

    /// Creates a product; the caches have it (and no list of its category is stale) once this
    /// returns.
    pub(crate) async fn create(&self, new: &NewProduct) -> Result<Product, Failure> {
        let product = self.db.insert(new).await?;
        if let Some(caches) = &self.caches {
            // The id may hold a cached absence (someone asked for it before): `set` replaces it,
            // and no load that began earlier stores over it.
            let key = caches
                .item_keys
                .key(product.id)
                .map_err(layercache::Error::from)?;
            if let Err(error) = caches.items.set(&key, Arc::new(product.clone())).await {
                caches.forget_item(&key, &error).await;
            }
            caches.invalidate_lists([product.category.as_str()]).await;
        }
        Ok(product)
    }

    /// Replaces product `id`.
    pub(crate) async fn update(
        &self,
        id: i64,
        new: &NewProduct,
    ) -> Result<Written<Product>, Failure> {
        let Some(caches) = &self.caches else {
            return Ok(match self.db.update(id, new).await? {
                Some((_, product)) => Written::Done(product),
                None => Written::NotFound,
            });
        };
        let key = caches.item_keys.key(id).map_err(layercache::Error::from)?;
        // Claimed before the database write: a load that reads the row before the commit and
        // would store it after `set_after` is refused.
        let intent = caches.items.begin_write(&key);
        let Some((old_category, product)) = self.db.update(id, new).await? else {
            return Ok(Written::NotFound);
        };
        if let Err(error) = caches
            .items
            .set_after(intent, Some(Arc::new(product.clone())))
            .await
        {
            caches.forget_item(&key, &error).await;
        }
        caches
            .invalidate_lists([old_category.as_str(), product.category.as_str()])
            .await;
        Ok(Written::Done(product))
    }

    /// Deletes product `id`; its absence is cached once this returns.
    pub(crate) async fn delete(&self, id: i64) -> Result<Written<()>, Failure> {
        let Some(caches) = &self.caches else {
            return Ok(match self.db.delete(id).await? {
                Some(_) => Written::Done(()),
                None => Written::NotFound,
            });
        };
        let key = caches.item_keys.key(id).map_err(layercache::Error::from)?;
        let intent = caches.items.begin_write(&key);
        let Some(category) = self.db.delete(id).await? else {
            return Ok(Written::NotFound);
        };
        if let Err(error) = caches.items.set_after(intent, None).await {
            caches.forget_item(&key, &error).await;
        }
        caches.invalidate_lists([category.as_str()]).await;
        Ok(Written::Done(()))
    }

    /// Loads the first `count` products into the caches, one database query per 100, and logs
    /// what happened to each.
    pub(crate) async fn warm_up(&self, count: usize) -> Result<(), Failure> {
        let Some(caches) = &self.caches else {
            return Ok(());
        };
        if count == 0 {
            return Ok(());
        }
        let ids = self.db.first_ids(count).await?;
        let keys = ids
            .iter()
            .map(|id| caches.item_keys.key(id))
            .collect::<Result<Vec<Key>, _>>()
            .map_err(layercache::Error::from)?;
        let loader = Arc::new(ProductLoader {
            db: self.db.clone(),
            keys: caches.item_keys.clone(),
        });
        let report = caches.items.warm(&keys, &loader).await;
        for (key, outcome) in &report.items {
            match outcome {
                WarmOutcome::Loaded => tracing::info!(%key, "warm-up: loaded"),
                WarmOutcome::Absent => tracing::info!(%key, "warm-up: absent at the source"),
                WarmOutcome::Failed(error) => tracing::warn!(%key, %error, "warm-up: failed"),
                _ => tracing::info!(%key, ?outcome, "warm-up"),
            }
        }
        tracing::info!(
            keys = keys.len(),
            loaded = report.loaded(),
            absent = report.absent(),
            failed = report.failed().count(),
            "warm-up done"
        );
        Ok(())
    }

    /// The caches' counters (`None` without caches).
    pub(crate) fn stats(&self) -> Option<(TieredStats, TieredStats)> {
        self.caches
            .as_ref()
            .map(|caches| (caches.items.stats(), caches.lists.stats()))
    }
}

impl ProductCaches {
    /// Invalidates every cached page of the lists of `categories` and of the unfiltered list.
    ///
    /// An error (Redis unreachable) is logged, not returned: the database write it follows has
    /// committed, and this instance already records the tag's invalidation time (no tier of it
    /// serves an older list), so the request succeeded.
    async fn invalidate_lists<'c>(&self, categories: impl IntoIterator<Item = &'c str>) {
        let mut tags = vec![TAG_ALL.to_owned()];
        for category in categories {
            let tag = category_tag(category);
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        for tag in tags {
            if let Err(error) = self.lists.invalidate_tag(&tag).await {
                tracing::warn!(%tag, %error, "invalidating lists failed in Redis");
            }
        }
    }

    /// After a failed cache write of an item: removes it (a failed delete is retried in the
    /// background until it lands), so that no tier keeps the value from before the write.
    async fn forget_item(&self, key: &Key, error: &layercache::Error) {
        tracing::warn!(%key, %error, "writing the product to the cache failed; removing it");
        if let Err(error) = self.items.delete(key).await {
            tracing::warn!(%key, %error, "removing the product failed; retried in the background");
        }
    }
}

/// Loads products by key for the warm-up, a batch of keys in one query.
#[derive(Debug)]
struct ProductLoader {
    db: Db,
    keys: Namespace,
}

impl ProductLoader {
    fn id(&self, key: &Key) -> layercache::Result<i64> {
        self.keys
            .id_of(key)
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| layercache::Error::loader(format!("{key} is not a product key")))
    }
}

#[async_trait]
impl Loader<Arc<Product>> for ProductLoader {
    async fn load(&self, key: &Key) -> layercache::Result<Option<Arc<Product>>> {
        let id = self.id(key)?;
        let found = self
            .db
            .product(id)
            .await
            .map_err(layercache::Error::from_loader)?;
        Ok(found.map(Arc::new))
    }

    async fn load_many(&self, keys: &[Key]) -> layercache::Result<Vec<Option<Arc<Product>>>> {
        let ids = keys
            .iter()
            .map(|key| self.id(key))
            .collect::<layercache::Result<Vec<i64>>>()?;
        let found = self
            .db
            .products(&ids)
            .await
            .map_err(layercache::Error::from_loader)?;
        let mut by_id: HashMap<i64, Product> = found.into_iter().map(|p| (p.id, p)).collect();
        Ok(ids
            .iter()
            .map(|id| by_id.remove(id).map(Arc::new))
            .collect())
    }
}

/// Why a catalog operation failed: the database (answered without the cache), or a read
/// through the cache (its loader wraps the database's error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Cache(#[from] layercache::Error),
}
