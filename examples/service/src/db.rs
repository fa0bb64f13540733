//! The source of truth: [`Db`], SQLite or PostgreSQL through `sqlx::any`, with one SQL text for
//! both (`$n` placeholders, `RETURNING`), its schema and seed, and a count of its queries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::config::DatabaseKind;

/// Products per page of `GET /products`.
pub const PAGE_SIZE: u32 = 20;

/// The categories the seed spreads products over.
const SEED_CATEGORIES: [&str; 5] = ["books", "games", "music", "tools", "garden"];

/// The demo user, seeded at start: `POST /login` with `{"user": "demo", "password": "demo"}`.
pub const DEMO_USER: (&str, &str) = ("demo", "demo");

const COLUMNS: &str = "id, name, category, price_cents, updated_ms";

/// A product, as stored and as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The id the database gave it.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its category (letters, digits, `-` and `_`).
    pub category: String,
    /// Its price in cents.
    pub price_cents: i64,
    /// When it was last written, in milliseconds since the Unix epoch.
    pub updated_ms: i64,
}

/// One page of `GET /products`, as cached and as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductPage {
    /// The category filter, if any.
    pub category: Option<String>,
    /// The page number, from 1.
    pub page: u32,
    /// The page size.
    pub page_size: u32,
    /// The products of the page, by id.
    pub items: Vec<Product>,
}

/// What `POST /products` and `PUT /products/{id}` carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// Its name (1 to 200 characters).
    pub name: String,
    /// Its category (1 to 40 letters, digits, `-` or `_`).
    pub category: String,
    /// Its price in cents (0 or more).
    pub price_cents: i64,
}

/// How many queries the service sent to the database, since start. The cache's saving is
/// what the reads would have been without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DbStats {
    /// Read queries (a product, a batch of products, a page, a login).
    pub reads: u64,
    /// Write transactions (create, update, delete).
    pub writes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
}

/// The database, cheap to clone (a pool and a counter, shared).
#[derive(Clone, Debug)]
pub(crate) struct Db {
    pool: AnyPool,
    kind: DatabaseKind,
    counters: Arc<Counters>,
}

impl Db {
    /// Connects to `url` and makes sure the schema and seed are there.
    pub(crate) async fn open(url: &str, seed_products: usize) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let kind = DatabaseKind::of(url)
            .map_err(|error| sqlx::Error::Configuration(error.to_string().into()))?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        let db = Db {
            pool,
            kind,
            counters: Arc::default(),
        };
        db.prepare(seed_products).await?;
        Ok(db)
    }

    pub(crate) fn kind(&self) -> DatabaseKind {
        self.kind
    }

    pub(crate) fn stats(&self) -> DbStats {
        DbStats {
            reads: self.counters.reads.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    fn read(&self) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database answers a trivial query.
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Creates the schema and seeds `count` products into an empty table, and the demo user.
    /// Instances starting at once on one database do this one at a time: it is one transaction
    /// that first takes SQLite's write lock (`BEGIN IMMEDIATE`) or a PostgreSQL advisory lock
    /// (two concurrent `CREATE TABLE IF NOT EXISTS` can fail there), so they seed once.
    async fn prepare(&self, count: usize) -> Result<(), sqlx::Error> {
        let products = match self.kind {
            DatabaseKind::Sqlite => {
                // WAL lets readers go on while one instance writes (outside any transaction:
                // SQLite refuses to change the journal mode inside one). AUTOINCREMENT below
                // never reuses the id of a deleted product, whose absence may still be cached.
                // Best effort: two instances starting at once on a fresh file may race for the
                // switch (it cannot wait for the lock); the one that wins switches the file.
                if let Err(error) = sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&self.pool)
                    .await
                {
                    tracing::debug!(%error, "switching SQLite to WAL failed");
                }
                "CREATE TABLE IF NOT EXISTS products (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    name TEXT NOT NULL,
                    category TEXT NOT NULL,
                    price_cents BIGINT NOT NULL,
                    updated_ms BIGINT NOT NULL)"
            }
            DatabaseKind::Postgres => {
                "CREATE TABLE IF NOT EXISTS products (
                    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    name TEXT NOT NULL,
                    category TEXT NOT NULL,
                    price_cents BIGINT NOT NULL,
                    updated_ms BIGINT NOT NULL)"
            }
        };
        let mut tx = match self.kind {
            DatabaseKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            DatabaseKind::Postgres => {
                let mut tx = self.pool.begin().await?;
                // Any fixed number: the lock of this service's schema, released at commit.
                sqlx::query("SELECT pg_advisory_xact_lock(1201)")
                    .execute(&mut *tx)
                    .await?;
                tx
            }
        };
        for statement in [
            products,
            "CREATE INDEX IF NOT EXISTS products_by_category ON products (category, id)",
            "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, password TEXT NOT NULL)",
        ] {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        let existing: i64 = sqlx::query("SELECT COUNT(*) AS n FROM products")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if existing == 0 {
            let now = now_ms();
            for n in 0..count {
                let category = SEED_CATEGORIES[n % SEED_CATEGORIES.len()];
                let price = 199 + i64::try_from(n).unwrap_or(0) * 100;
                sqlx::query(
                    "INSERT INTO products (name, category, price_cents, updated_ms)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(format!("{category} item {}", n + 1))
                .bind(category)
                .bind(price)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tracing::info!(count, "seeded the products table");
        }
        sqlx::query(
            "INSERT INTO users (name, password) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(DEMO_USER.0)
        .bind(DEMO_USER.1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The product `id`, if there is one.
    pub(crate) async fn product(&self, id: i64) -> Result<Option<Product>, sqlx::Error> {
        self.read();
        let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| product(&row))
            .transpose()
    }

    /// The products of `ids` that exist (one query), in no particular order.
    pub(crate) async fn products(&self, ids: &[i64]) -> Result<Vec<Product>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.read();
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM products WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(product).collect()
    }

    /// The first `count` product ids (the warm-up's stand-in for the hottest ones).
    pub(crate) async fn first_ids(&self, count: usize) -> Result<Vec<i64>, sqlx::Error> {
        self.read();
        let rows = sqlx::query("SELECT id FROM products ORDER BY id LIMIT $1")
            .bind(i64::try_from(count).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| row.try_get("id")).collect()
    }

    /// Page `page` (from 1) of the products, of `category` or all, by id.
    pub(crate) async fn page(
        &self,
        category: Option<&str>,
        page: u32,
    ) -> Result<ProductPage, sqlx::Error> {
        self.read();
        let offset = i64::from(page.saturating_sub(1)) * i64::from(PAGE_SIZE);
        let rows = match category {
            Some(category) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM products WHERE category = $1 ORDER BY id LIMIT $2 OFFSET $3"
                );
                sqlx::query(&sql)
                    .bind(category)
                    .bind(i64::from(PAGE_SIZE))
                    .bind(offset)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT {COLUMNS} FROM products ORDER BY id LIMIT $1 OFFSET $2");
                sqlx::query(&sql)
                    .bind(i64::from(PAGE_SIZE))
                    .bind(offset)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(ProductPage {
            category: category.map(str::to_owned),
            page,
            page_size: PAGE_SIZE,
            items: rows.iter().map(product).collect::<Result<_, _>>()?,
        })
    }

    /// Inserts a product; returns it as stored (committed when this returns).
    pub(crate) async fn insert(&self, new: &NewProduct) -> Result<Product, sqlx::Error> {
        self.write();
        let sql = format!(
            "INSERT INTO products (name, category, price_cents, updated_ms)
             VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&new.name)
            .bind(&new.category)
            .bind(new.price_cents)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?;
        product(&row)
    }

    /// Replaces product `id`; returns its category before and the product after (committed
    /// when this returns), or `None` when there is no such product.
    ///
    /// The old category is read under the row's write lock (PostgreSQL's `FOR UPDATE`, SQLite's
    /// `BEGIN IMMEDIATE`), so two concurrent updates each see the category the other left: the
    /// lists of every category the product passed through get invalidated.
    pub(crate) async fn update(
        &self,
        id: i64,
        new: &NewProduct,
    ) -> Result<Option<(String, Product)>, sqlx::Error> {
        self.write();
        let (mut tx, select) = match self.kind {
            DatabaseKind::Sqlite => (
                self.pool.begin_with("BEGIN IMMEDIATE").await?,
                "SELECT category FROM products WHERE id = $1",
            ),
            DatabaseKind::Postgres => (
                self.pool.begin().await?,
                "SELECT category FROM products WHERE id = $1 FOR UPDATE",
            ),
        };
        let Some(row) = sqlx::query(select)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        let old_category: String = row.try_get("category")?;
        let sql = format!(
            "UPDATE products SET name = $2, category = $3, price_cents = $4, updated_ms = $5
             WHERE id = $1 RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(&new.name)
            .bind(&new.category)
            .bind(new.price_cents)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
        let updated = product(&row)?;
        tx.commit().await?;
        Ok(Some((old_category, updated)))
    }

    /// Deletes product `id`; returns the category it had (committed when this returns), or
    /// `None` when there was no such product.
    pub(crate) async fn delete(&self, id: i64) -> Result<Option<String>, sqlx::Error> {
        self.write();
        sqlx::query("DELETE FROM products WHERE id = $1 RETURNING category")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get("category"))
            .transpose()
    }

    /// The password of `user`, if there is such a user.
    pub(crate) async fn password(&self, user: &str) -> Result<Option<String>, sqlx::Error> {
        self.read();
        sqlx::query("SELECT password FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get("password"))
            .transpose()
    }
}

fn product(row: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        category: row.try_get("category")?,
        price_cents: row.try_get("price_cents")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
