//! A real source of truth for strategy tests and examples: a `products` table in a SQLite file,
//! through sqlx, implementing [`Loader<Product>`] and [`Writer<Product>`].
//!
//! ```text
//! products(id TEXT PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL, version INTEGER NOT NULL)
//! ```
//!
//! - **Key → row id**: the key's id part. With [`Products::with_namespace`] it is
//!   [`Namespace::id_of`] (ids may then hold `:`); without, it is the text after the key's last
//!   `:` (the whole key when it has none). A key outside the namespace is an `InvalidKey` error.
//!   The row id always comes from the key: a [`Product`]'s own `id` field is not used to write, and
//!   is filled from the row when read.
//! - `load` is one `SELECT`, `load_many` one `SELECT ... WHERE id IN (...)` (per 500 keys),
//!   `write` one upsert, `write_many` one transaction of upserts, `remove` one `DELETE`.
//! - Every call, failed ones included, is counted ([`Products::stats`]), so tests can say how often
//!   the source was reached. The helpers `insert`, `get_direct`, `count` and `all` are not counted.
//! - The database is a file (WAL mode), so several processes can share it: [`Products::create`]
//!   makes one in a fresh temporary directory removed when the last clone is dropped;
//!   [`Products::open`] opens (or creates) one at a path and leaves it in place.
//! - [`Products::make_read_only`] turns on `PRAGMA query_only` on every connection of this handle
//!   (a file mode would not stop a process running as root): writes then fail with a temporary
//!   `Loader` error until [`Products::make_writable`].
//!
//! Errors are `Loader` errors, temporary except for constraint violations.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use layercache_core::{Error, Key, KeyError, Loader, Namespace, Result, Writer, async_trait};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection as _, Executor as _, Row as _};

/// Connections in a [`Products`] pool.
const POOL_SIZE: u32 = 4;
/// Keys per `SELECT ... IN (...)` of `load_many`.
const LOAD_CHUNK: usize = 500;

/// A row of the `products` table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Product {
    /// The row id (the key's id part).
    pub id: String,
    /// A name.
    pub name: String,
    /// A price in cents.
    pub price_cents: i64,
    /// A version number, free for the caller to use.
    pub version: i64,
}

impl Product {
    /// A product at version 1.
    pub fn new(id: impl Into<String>, name: impl Into<String>, price_cents: i64) -> Self {
        Product {
            id: id.into(),
            name: name.into(),
            price_cents,
            version: 1,
        }
    }

    /// The same product with `version`.
    #[must_use]
    pub fn with_version(mut self, version: i64) -> Self {
        self.version = version;
        self
    }
}

/// How often a [`Products`] source was called; see [`Products::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProductsStats {
    /// `Loader::load` calls.
    pub loads: u64,
    /// `Loader::load_many` calls.
    pub load_many_calls: u64,
    /// `Writer::write` calls.
    pub writes: u64,
    /// `Writer::write_many` calls.
    pub write_many_calls: u64,
    /// Rows upserted by successful `write` and `write_many` calls.
    pub rows_written: u64,
    /// `Writer::remove` calls.
    pub removes: u64,
}

impl ProductsStats {
    /// Calls that read the source: `load` + `load_many`.
    pub fn reads(&self) -> u64 {
        self.loads + self.load_many_calls
    }

    /// Calls that wrote the source: `write` + `write_many` + `remove`.
    pub fn write_calls(&self) -> u64 {
        self.writes + self.write_many_calls + self.removes
    }
}

#[derive(Debug, Default)]
struct Counters {
    loads: AtomicU64,
    load_many_calls: AtomicU64,
    writes: AtomicU64,
    write_many_calls: AtomicU64,
    rows_written: AtomicU64,
    removes: AtomicU64,
}

/// A temporary directory removed when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> Result<TempDir> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "layercache-products-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::config(format!("cannot create {}", dir.display())).with_source(e))?;
    Ok(TempDir(dir))
}

fn db_error(context: &'static str, e: sqlx::Error) -> Error {
    let permanent = matches!(&e, sqlx::Error::Database(db) if matches!(
        db.kind(),
        sqlx::error::ErrorKind::UniqueViolation
            | sqlx::error::ErrorKind::ForeignKeyViolation
            | sqlx::error::ErrorKind::NotNullViolation
            | sqlx::error::ErrorKind::CheckViolation
    ));
    Error::loader(format!("sqlite: {context}"))
        .with_source(e)
        .set_temporary(!permanent)
}

const CREATE: &str = "CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    version INTEGER NOT NULL
)";

const UPSERT: &str = "INSERT INTO products (id, name, price_cents, version) VALUES (?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,
    version = excluded.version";

fn product(row: &SqliteRow) -> Result<Product> {
    let get = |e| db_error("reading a row", e);
    Ok(Product {
        id: row.try_get("id").map_err(get)?,
        name: row.try_get("name").map_err(get)?,
        price_cents: row.try_get("price_cents").map_err(get)?,
        version: row.try_get("version").map_err(get)?,
    })
}

/// The `products` table in a SQLite file: a [`Loader<Product>`] and [`Writer<Product>`].
///
/// See the [module documentation](self) for the key mapping, the counters and the fault controls.
/// Cloning is cheap: clones share the pool, the counters and the read-only switch.
#[derive(Clone)]
pub struct Products {
    pool: SqlitePool,
    path: PathBuf,
    namespace: Option<Namespace>,
    read_only: Arc<AtomicBool>,
    counters: Arc<Counters>,
    _dir: Option<Arc<TempDir>>,
}

impl fmt::Debug for Products {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Products")
            .field("path", &self.path)
            .field("namespace", &self.namespace)
            .field("read_only", &self.read_only.load(Ordering::Relaxed))
            .finish()
    }
}

impl Products {
    /// A new, empty database in a fresh temporary directory, removed when the last clone is
    /// dropped.
    pub async fn create() -> Result<Self> {
        let dir = temp_dir()?;
        let mut products = Self::open(dir.0.join("products.db")).await?;
        products._dir = Some(Arc::new(dir));
        Ok(products)
    }

    /// Opens the database at `path`, creating the file and the table if missing. The file stays
    /// when the handle is dropped.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| db_error("options", e))?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let read_only = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&read_only);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .after_connect(move |conn, _meta| {
                let on = flag.load(Ordering::SeqCst);
                Box::pin(async move {
                    conn.execute(if on {
                        "PRAGMA query_only = ON"
                    } else {
                        "PRAGMA query_only = OFF"
                    })
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| db_error("opening the database", e))?;
        pool.execute(CREATE)
            .await
            .map_err(|e| db_error("creating the table", e))?;
        Ok(Products {
            pool,
            path,
            namespace: None,
            read_only,
            counters: Arc::default(),
            _dir: None,
        })
    }

    /// Maps keys to row ids with [`Namespace::id_of`]; keys outside `namespace` are refused.
    #[must_use]
    pub fn with_namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = Some(namespace);
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The row id of `key`; see the [module documentation](self).
    pub fn id_of<'k>(&self, key: &'k Key) -> Result<&'k str> {
        match &self.namespace {
            Some(ns) => ns.id_of(key).ok_or_else(|| {
                Error::from(KeyError::InvalidSegment {
                    segment: "namespace",
                    value: key.as_str().to_owned(),
                    reason: "the key is not in the products namespace",
                })
            }),
            None => Ok(key
                .as_str()
                .rsplit_once(':')
                .map_or(key.as_str(), |(_, id)| id)),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ProductsStats {
        let c = &self.counters;
        ProductsStats {
            loads: c.loads.load(Ordering::SeqCst),
            load_many_calls: c.load_many_calls.load(Ordering::SeqCst),
            writes: c.writes.load(Ordering::SeqCst),
            write_many_calls: c.write_many_calls.load(Ordering::SeqCst),
            rows_written: c.rows_written.load(Ordering::SeqCst),
            removes: c.removes.load(Ordering::SeqCst),
        }
    }

    /// Sets every counter back to zero.
    pub fn reset_stats(&self) {
        let c = &self.counters;
        for counter in [
            &c.loads,
            &c.load_many_calls,
            &c.writes,
            &c.write_many_calls,
            &c.rows_written,
            &c.removes,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
    }

    async fn set_query_only(&self, on: bool) -> Result<()> {
        self.read_only.store(on, Ordering::SeqCst);
        let sql = if on {
            "PRAGMA query_only = ON"
        } else {
            "PRAGMA query_only = OFF"
        };
        // Holding every connection at once reaches each open one; new ones get the flag from
        // the after-connect hook.
        let mut held = Vec::new();
        for _ in 0..POOL_SIZE {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| db_error("switching query_only", e))?;
            conn.execute(sql)
                .await
                .map_err(|e| db_error("switching query_only", e))?;
            held.push(conn);
        }
        Ok(())
    }

    /// Makes every write through this handle fail (`PRAGMA query_only = ON`), as a read-only
    /// database would; reads still work.
    pub async fn make_read_only(&self) -> Result<()> {
        self.set_query_only(true).await
    }

    /// Undoes [`make_read_only`](Self::make_read_only).
    pub async fn make_writable(&self) -> Result<()> {
        self.set_query_only(false).await
    }

    /// Whether [`make_read_only`](Self::make_read_only) is in force.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// Upserts `product` under its own `id`, bypassing the counters (to seed a test).
    pub async fn insert(&self, product: &Product) -> Result<()> {
        upsert(&self.pool, &product.id, product).await
    }

    /// The row `id`, read directly (not counted).
    pub async fn get_direct(&self, id: &str) -> Result<Option<Product>> {
        let row = sqlx::query("SELECT id, name, price_cents, version FROM products WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("select", e))?;
        row.as_ref().map(product).transpose()
    }

    /// Every row, by id (not counted).
    pub async fn all(&self) -> Result<Vec<Product>> {
        let rows = sqlx::query("SELECT id, name, price_cents, version FROM products ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("select", e))?;
        rows.iter().map(product).collect()
    }

    /// The number of rows (not counted).
    pub async fn count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("count", e))?;
        Ok(u64::try_from(n).unwrap_or_default())
    }
}

async fn upsert<'e, E>(executor: E, id: &str, product: &Product) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(UPSERT)
        .bind(id)
        .bind(&product.name)
        .bind(product.price_cents)
        .bind(product.version)
        .execute(executor)
        .await
        .map_err(|e| db_error("upsert", e))?;
    Ok(())
}

#[async_trait]
impl Loader<Product> for Products {
    async fn load(&self, key: &Key) -> Result<Option<Product>> {
        self.counters.loads.fetch_add(1, Ordering::SeqCst);
        let id = self.id_of(key)?;
        self.get_direct(id).await
    }

    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Option<Product>>> {
        self.counters.load_many_calls.fetch_add(1, Ordering::SeqCst);
        let ids = keys
            .iter()
            .map(|k| self.id_of(k))
            .collect::<Result<Vec<_>>>()?;
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(LOAD_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT id, name, price_cents, version FROM products WHERE id IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("select many", e))?;
            for row in &rows {
                let p = product(row)?;
                found.insert(p.id.clone(), p);
            }
        }
        Ok(ids.iter().map(|id| found.get(*id).cloned()).collect())
    }
}

#[async_trait]
impl Writer<Product> for Products {
    async fn write(&self, key: &Key, value: &Product) -> Result<()> {
        self.counters.writes.fetch_add(1, Ordering::SeqCst);
        upsert(&self.pool, self.id_of(key)?, value).await?;
        self.counters.rows_written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn remove(&self, key: &Key) -> Result<()> {
        self.counters.removes.fetch_add(1, Ordering::SeqCst);
        sqlx::query("DELETE FROM products WHERE id = ?")
            .bind(self.id_of(key)?)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("delete", e))?;
        Ok(())
    }

    async fn write_many(&self, items: &[(Key, Product)]) -> Result<()> {
        self.counters
            .write_many_calls
            .fetch_add(1, Ordering::SeqCst);
        let ids = items
            .iter()
            .map(|(k, _)| self.id_of(k))
            .collect::<Result<Vec<_>>>()?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("acquire", e))?;
        let mut tx = conn.begin().await.map_err(|e| db_error("begin", e))?;
        for (id, (_, value)) in ids.iter().zip(items) {
            upsert(&mut *tx, id, value).await?;
        }
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        self.counters
            .rows_written
            .fetch_add(items.len() as u64, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use layercache_core::KeySpace;

    #[tokio::test]
    async fn loads_writes_and_counts() {
        let products = Products::create().await.unwrap();
        let path = products.path().to_path_buf();
        assert!(path.exists());
        let ns = KeySpace::new("t").unwrap().namespace("products").unwrap();
        let products = products.with_namespace(ns.clone());
        let (a, b) = (ns.key("a:1").unwrap(), ns.key("b").unwrap());
        assert_eq!(products.load(&a).await.unwrap(), None);
        products
            .write(&a, &Product::new("ignored", "A", 100))
            .await
            .unwrap();
        products
            .write_many(&[
                (b.clone(), Product::new("b", "B", 200)),
                (a.clone(), Product::new("a:1", "A2", 150).with_version(2)),
            ])
            .await
            .unwrap();
        let many = products
            .load_many(&[b.clone(), ns.key("zz").unwrap(), a.clone()])
            .await
            .unwrap();
        assert_eq!(many[0].as_ref().unwrap().name, "B");
        assert_eq!(many[1], None);
        assert_eq!(
            many[2],
            Some(Product::new("a:1", "A2", 150).with_version(2))
        );
        assert_eq!(products.count().await.unwrap(), 2);
        products.remove(&b).await.unwrap();
        assert_eq!(products.get_direct("b").await.unwrap(), None);
        let stats = products.stats();
        assert_eq!(
            (stats.reads(), stats.write_calls(), stats.rows_written),
            (2, 3, 3)
        );
        let outside = Key::new("other:x").unwrap();
        assert!(products.load(&outside).await.is_err());

        products.make_read_only().await.unwrap();
        let err = products
            .write(&a, &Product::new("a", "A3", 1))
            .await
            .unwrap_err();
        assert!(err.is_temporary(), "{err}");
        assert_eq!(products.load(&a).await.unwrap().unwrap().name, "A2");
        products.make_writable().await.unwrap();
        products
            .write(&a, &Product::new("a", "A3", 1))
            .await
            .unwrap();
        drop(products);
        assert!(!path.exists(), "the temporary directory is removed");
    }

    #[tokio::test]
    async fn ids_default_to_the_text_after_the_last_colon() {
        let products = Products::create().await.unwrap();
        let key = Key::new("app:v1:products:42").unwrap();
        assert_eq!(products.id_of(&key).unwrap(), "42");
        assert_eq!(
            products.id_of(&Key::new("plain").unwrap()).unwrap(),
            "plain"
        );
    }
}
