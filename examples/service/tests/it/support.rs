//! What the end-to-end tests share: configurations over a test's own Redis, temporary SQLite
//! files, an HTTP client, the database read directly, and bounded polling.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use layercache_example_service::{Config, PAGE_SIZE, Product, RunningService, Service};
use layercache_testkit::RedisServer;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// A generous bound on waits that must end (another instance seeing a write, Redis coming
/// back): past it the test fails instead of hanging. No test waits for it to pass.
pub(crate) const BOUND: Duration = Duration::from_secs(15);

/// A configuration over `redis` and `database_url` (`None`: the instance's own SQLite file),
/// on a free port, patient with Redis (a busy 2-core machine must not turn a slow round trip
/// into an open circuit), without a rate limit unless the test sets one.
pub(crate) fn config(redis: &RedisServer, database_url: Option<String>) -> Config {
    let mut config = Config::ephemeral();
    config.redis_url = Some(redis.url());
    config.database_url = database_url;
    config.l2_timeout = Duration::from_secs(5);
    config.rate_limit = None;
    config
}

pub(crate) async fn start(config: Config) -> RunningService {
    Service::start(config).await.expect("the service starts")
}

/// A directory of its own for a test's SQLite file, removed at drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "layercache-example-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// The URL of a SQLite file in the directory (created on first connect).
    pub(crate) fn sqlite_url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.0.join("shop.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP client of one instance.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
}

/// A response: its status, headers and body (JSON, or `Value::Null` when empty or not JSON).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error` message of a JSON error body.
    pub(crate) fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }
}

impl Client {
    pub(crate) fn new(service: &RunningService) -> Self {
        Client {
            http: reqwest::Client::builder()
                .no_proxy()
                // Bounds every request: a hang fails the test.
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: service.url(),
        }
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the service answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a whole body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(self.request(reqwest::Method::PUT, path).json(body))
            .await
    }

    pub(crate) async fn delete(&self, path: &str) -> Answer {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }
}

/// The database, read directly (not through any instance).
pub(crate) struct Truth {
    pool: AnyPool,
}

impl Truth {
    pub(crate) async fn connect(url: &str) -> Self {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .unwrap();
        Truth { pool }
    }

    /// Every product, by id.
    pub(crate) async fn products(&self) -> Vec<Product> {
        let rows = sqlx::query(
            "SELECT id, name, category, price_cents, updated_ms FROM products ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.iter()
            .map(|row| Product {
                id: row.get("id"),
                name: row.get("name"),
                category: row.get("category"),
                price_cents: row.get("price_cents"),
                updated_ms: row.get("updated_ms"),
            })
            .collect()
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether what `client` serves matches `truth` (the database's products, by id): every
/// product of `ids` (404 for those not in `truth`), and every page (plus one past the end) of
/// the unfiltered list and of each of `categories`. The first difference, described, if not.
pub(crate) async fn serves(
    client: &Client,
    truth: &[Product],
    ids: &[i64],
    categories: &[&str],
) -> Result<(), String> {
    for &id in ids {
        let answer = client.get(&format!("/products/{id}")).await;
        match truth.iter().find(|p| p.id == id) {
            Some(product) => {
                let served: Option<Product> = serde_json::from_value(answer.body.clone()).ok();
                if answer.status != StatusCode::OK || served.as_ref() != Some(product) {
                    return Err(format!(
                        "product {id}: served {} {}, the database has {product:?}",
                        answer.status, answer.body
                    ));
                }
            }
            None if answer.status != StatusCode::NOT_FOUND => {
                return Err(format!(
                    "product {id}: served {} {}, the database has none",
                    answer.status, answer.body
                ));
            }
            None => {}
        }
    }
    let mut lists: Vec<(Option<&str>, Vec<&Product>)> = vec![(None, truth.iter().collect())];
    for &category in categories {
        let members = truth.iter().filter(|p| p.category == category).collect();
        lists.push((Some(category), members));
    }
    for (category, members) in lists {
        let pages = members.len().div_ceil(PAGE_SIZE as usize) + 1;
        for page in 1..=pages {
            let path = match category {
                Some(category) => format!("/products?category={category}&page={page}"),
                None => format!("/products?page={page}"),
            };
            let answer = client.get(&path).await;
            let expected: Vec<&Product> = members
                .iter()
                .skip((page - 1) * PAGE_SIZE as usize)
                .take(PAGE_SIZE as usize)
                .copied()
                .collect();
            let served: Option<Vec<Product>> = answer
                .body
                .get("items")
                .and_then(|items| serde_json::from_value(items.clone()).ok());
            let same = served
                .as_ref()
                .is_some_and(|served| served.iter().eq(expected.iter().copied()));
            if answer.status != StatusCode::OK || !same {
                return Err(format!(
                    "{path}: served {} {:?}, the database has ids {:?}",
                    answer.status,
                    served.map(|s| s.iter().map(|p| (p.id, p.name.clone())).collect::<Vec<_>>()),
                    expected
                        .iter()
                        .map(|p| (p.id, p.name.clone()))
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    Ok(())
}

/// Polls `check` until it returns `Ok`, at most [`BOUND`]; the last error if it never does.
pub(crate) async fn eventually<F, Fut>(mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if started.elapsed() > BOUND {
            return Err(format!("still after {BOUND:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
