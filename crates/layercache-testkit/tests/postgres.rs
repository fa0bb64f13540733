//! Integration tests for `layercache_testkit::postgres`: real PostgreSQL servers.
//!
//! These tests need the PostgreSQL server binaries (`cargo xtask postgres` installs them); they
//! never skip. They never touch a server on port 5432.

#![cfg(all(feature = "postgres", unix))]

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use layercache_testkit::postgres::PostgresServer;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

/// How long a client waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(server: &PostgresServer) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect(&server.url())
        .await
}

#[tokio::test]
async fn postgres_serves_sql_on_a_fresh_loopback_port() {
    let server = PostgresServer::start();
    assert_ne!(server.port(), 5432, "never the system server's port");
    assert_eq!(
        server.url(),
        format!("postgres://postgres@127.0.0.1:{}/layercache", server.port())
    );
    let pool = connect(&server).await.unwrap();

    sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO items (id, name) VALUES ($1, $2), ($3, $4)")
        .bind(1_i32)
        .bind("one")
        .bind(2_i32)
        .bind("two")
        .execute(&pool)
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = sqlx::query_as("SELECT id, name FROM items ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, [(1, "one".to_owned()), (2, "two".to_owned())]);

    let (database, user, port): (String, String, i32) = sqlx::query_as(
        "SELECT current_database()::text, current_user::text, current_setting('port')::int",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (database.as_str(), user.as_str()),
        (server.database(), "postgres")
    );
    assert_eq!(port, i32::from(server.port()));
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(fsync, "off", "the fast test settings are in force");
    pool.close().await;
}

#[tokio::test]
async fn postgres_two_servers_get_different_ports_and_separate_data() {
    let first = PostgresServer::start();
    let second = PostgresServer::start();
    assert_ne!(first.port(), second.port());
    assert_ne!(first.dir(), second.dir());

    let (a, b) = (
        connect(&first).await.unwrap(),
        connect(&second).await.unwrap(),
    );
    sqlx::query("CREATE TABLE only_in_first (id INTEGER)")
        .execute(&a)
        .await
        .unwrap();
    let tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_first'";
    let in_first: i64 = sqlx::query_scalar(tables).fetch_one(&a).await.unwrap();
    let in_second: i64 = sqlx::query_scalar(tables).fetch_one(&b).await.unwrap();
    assert_eq!((in_first, in_second), (1, 0));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn postgres_after_stop_connections_fail_and_drop_removes_the_directory() {
    let server = PostgresServer::start();
    let mut conn = PgConnection::connect(&server.url()).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert!(server.is_running());

    // Stopping with a client connected: a fast shutdown does not wait for it.
    server.stop();
    assert!(!server.is_running());
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, server.port())).is_err(),
        "nothing listens on the port after stop"
    );
    // One attempt, unlike a pool, which retries until its acquire timeout.
    assert!(PgConnection::connect(&server.url()).await.is_err());
    assert!(sqlx::query("SELECT 1").execute(&mut conn).await.is_err());
    server.stop(); // idempotent

    let dir = server.dir().to_path_buf();
    assert!(dir.join("data").is_dir());
    drop(server);
    assert!(!dir.exists(), "the temporary directory is removed");
}

#[test]
fn postgres_dropping_a_running_server_stops_it() {
    let server = PostgresServer::start();
    let (port, dir) = (server.port(), server.dir().to_path_buf());
    drop(server);
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    assert!(!dir.exists());
}
