//! Bad input, foreign bytes and a misbehaving server: a miss, a typed error or a bounded wait,
//! never a panic.

use std::time::{Duration, Instant};

use layercache_core::{
    Backend, Clock, EntryOptions, ErrorKind, Key, KeyError, KeySpace, ManualClock, envelope,
};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::{Sample, unique_space};
use redis::AsyncCommands;

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn entry(id: u64) -> layercache_core::Entry<Sample> {
    EntryOptions::new(Duration::from_secs(60))
        .entry(
            Sample::new(id),
            layercache_core::SystemClock.now(),
            Duration::ZERO,
        )
        .unwrap()
}

#[tokio::test]
async fn random_bytes_written_by_another_client_read_as_counted_misses() {
    let server = crate::shared_server();
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let mut raw = raw(&server.url()).await;
    let ns = unique_space().namespace("garbage").unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    let mut keys = Vec::new();
    for i in 0..1_000 {
        let len = rng.usize(0..200);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        // A quarter start like a real envelope, so the decoder goes past the magic.
        if i % 4 == 0 && bytes.len() >= 6 {
            bytes[..3].copy_from_slice(&envelope::MAGIC);
            bytes[3] = envelope::FORMAT_VERSION;
            bytes[4] = 1;
            bytes[5] = 0;
        }
        let key = ns.key(i).unwrap();
        let _: () = raw.set(key.as_str(), bytes).await.unwrap();
        keys.push(key);
    }
    for key in &keys[..500] {
        assert_eq!(Backend::<Sample>::get(&backend, key).await.unwrap(), None);
    }
    let many: Vec<Option<_>> = Backend::<Sample>::get_many(&backend, &keys[500..])
        .await
        .unwrap();
    assert!(many.iter().all(Option::is_none));
    let stats = backend.stats();
    assert_eq!(stats.decode_failures, 1_000, "{stats:?}");
    assert_eq!(stats.misses, 1_000);
    assert_eq!(stats.hits, 0);
}

#[tokio::test]
async fn a_value_of_another_codec_or_format_is_a_counted_miss() {
    let server = crate::shared_server();
    let backend = RedisBackend::connect(server.url()).await.unwrap();
    let mut raw = raw(&server.url()).await;
    let ns = unique_space().namespace("foreign").unwrap();
    let good = envelope::encode(&layercache_core::JsonCodec, &entry(1)).unwrap();
    let mut other_codec = good.clone();
    other_codec[4] = 200;
    let mut next_version = good.clone();
    next_version[3] = envelope::FORMAT_VERSION + 1;
    let cases: [(&str, Vec<u8>); 4] = [
        ("good", good),
        ("codec", other_codec),
        ("version", next_version),
        (
            "json",
            br#"{"id":1,"name":"x","labels":[],"body":""}"#.to_vec(),
        ),
    ];
    for (id, bytes) in &cases {
        let _: () = raw
            .set(ns.key(id).unwrap().as_str(), bytes.as_slice())
            .await
            .unwrap();
    }
    let got = Backend::<Sample>::get(&backend, &ns.key("good").unwrap())
        .await
        .unwrap();
    assert_eq!(got.unwrap().value, Sample::new(1));
    for id in ["codec", "version", "json"] {
        assert_eq!(
            Backend::<Sample>::get(&backend, &ns.key(id).unwrap())
                .await
                .unwrap(),
            None,
            "{id}"
        );
    }
    assert_eq!(backend.stats().decode_failures, 3);
}

#[tokio::test]
async fn redis_expiry_is_the_entrys_stale_until() {
    let server = crate::shared_server();
    let clock = ManualClock::starting_now();
    let backend = RedisBackend::builder(server.url())
        .clock(clock.clone())
        .connect()
        .await
        .unwrap();
    let key = unique_space().namespace("px").unwrap().key("k").unwrap();
    let e = EntryOptions::new(Duration::from_secs(30))
        .with_stale_ttl(Duration::from_secs(90))
        .entry(Sample::new(1), clock.now(), Duration::ZERO)
        .unwrap();
    backend.set(&key, e).await.unwrap();
    let pttl: i64 = raw(&server.url()).await.pttl(key.as_str()).await.unwrap();
    assert!(
        (118_000..=120_000).contains(&pttl),
        "PTTL {pttl} should be about 120 s"
    );
}

#[test]
fn empty_and_overlong_keys_are_typed_errors_at_the_call() {
    assert_eq!(Key::new(""), Err(KeyError::Empty));
    let ns = KeySpace::new("app").unwrap().namespace("users").unwrap();
    assert_eq!(ns.key(""), Err(KeyError::Empty));
    let long = "x".repeat(2_000);
    assert!(matches!(
        ns.key(&long),
        Err(KeyError::TooLong { max: 1024, .. })
    ));
    let err: layercache_core::Error = ns.key(&long).unwrap_err().into();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
}

#[tokio::test]
async fn a_paused_server_gives_a_timeout_within_the_bound() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(200);
    let backend = RedisBackend::builder(server.url())
        .command_timeout(timeout)
        .connect()
        .await
        .unwrap();
    let key = unique_space().namespace("pause").unwrap().key("k").unwrap();
    backend.set(&key, entry(1)).await.unwrap();

    server.pause();
    let started = Instant::now();
    let err = Backend::<Sample>::get(&backend, &key).await.unwrap_err();
    let waited = started.elapsed();
    server.resume();

    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_temporary());
    // The bound is the command timeout; the slack covers a loaded 2-core machine.
    assert!(
        waited < timeout + Duration::from_millis(300),
        "waited {waited:?}"
    );
    assert!(backend.stats().timeouts >= 1);
    // After resume the same backend answers again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Backend::<Sample>::get(&backend, &key).await {
            Ok(got) => {
                assert_eq!(got.unwrap().value, Sample::new(1));
                break;
            }
            Err(e) if Instant::now() < deadline => drop(e),
            Err(e) => panic!("backend did not recover after resume: {e}"),
        }
    }
}

#[tokio::test]
async fn a_stopped_server_is_unavailable_and_the_backend_recovers_after_restart() {
    let server = RedisServer::start();
    let backend = RedisBackend::builder(server.url())
        .command_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let key = unique_space()
        .namespace("restart")
        .unwrap()
        .key("k")
        .unwrap();
    backend.set(&key, entry(1)).await.unwrap();

    server.stop();
    let err = Backend::<Sample>::get(&backend, &key).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );
    assert!(err.is_temporary(), "{err:?}");

    server.restart();
    // The restarted server is empty (no persistence); reads must work again, as misses.
    let deadline = Instant::now() + Duration::from_secs(5);
    let recovered_in = Instant::now();
    loop {
        match Backend::<Sample>::get(&backend, &key).await {
            Ok(got) => {
                assert_eq!(got, None);
                break;
            }
            Err(e) if Instant::now() < deadline => drop(e),
            Err(e) => panic!("backend did not recover after restart: {e}"),
        }
    }
    assert!(recovered_in.elapsed() < Duration::from_secs(5));
    backend.set(&key, entry(2)).await.unwrap();
    assert_eq!(
        Backend::<Sample>::get(&backend, &key)
            .await
            .unwrap()
            .unwrap()
            .value,
        Sample::new(2)
    );
}

#[tokio::test]
async fn nothing_listening_fails_connect_but_a_lazy_backend_starts() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let err = RedisBackend::builder(url.as_str())
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );

    let lazy = RedisBackend::builder(url.as_str())
        .command_timeout(Duration::from_millis(300))
        .connect_lazy()
        .unwrap();
    let key = Key::new("k").unwrap();
    let err = Backend::<Sample>::get(&lazy, &key).await.unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
}

#[tokio::test]
async fn a_password_in_the_url_is_used_and_never_shown() {
    let server = RedisServer::builder()
        .config("requirepass", "s3cret-pw")
        .start();
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}/", server.port());
    let backend = RedisBackend::connect(url.as_str()).await.unwrap();
    backend.ping().await.unwrap();
    let shown = format!("{backend:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(shown.contains("***"), "{shown}");

    let wrong = RedisBackend::connect(format!("redis://:wrong@127.0.0.1:{}/", server.port())).await;
    assert!(wrong.is_err());
    let unauthenticated = RedisBackend::connect(server.url()).await;
    assert!(
        unauthenticated.is_err(),
        "PING without the password must fail"
    );
}

#[test]
fn invalid_options_are_config_errors() {
    let err = RedisBackend::builder("redis://127.0.0.1:1/")
        .command_timeout(Duration::ZERO)
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = RedisBackend::builder("not-a-url")
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    // Outside a tokio runtime a lazy connection cannot spawn its task: a typed error, no panic.
    let err = RedisBackend::builder("redis://127.0.0.1:1/")
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("tokio runtime"), "{err}");
}

#[test]
fn public_types_are_send_and_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<RedisBackend>();
    is_send_sync::<layercache_redis::RedisBackendBuilder>();
    is_send_sync::<layercache_redis::RedisStats>();
}

/// Redis out of memory (`maxmemory` reached, `noeviction`) refuses writes with `OOM`: a temporary
/// `Unavailable` error — memory frees as keys expire or are deleted — while reads go on.
#[tokio::test]
async fn a_full_redis_is_a_temporary_error() {
    let server = RedisServer::builder()
        .config("maxmemory", "2mb")
        .config("maxmemory-policy", "noeviction")
        .start();
    let backend = RedisBackend::builder(server.url())
        .max_value_size(1024 * 1024)
        .connect()
        .await
        .unwrap();
    let ns = unique_space().namespace("full").unwrap();
    let big = |i: u64| {
        EntryOptions::new(Duration::from_secs(60))
            .entry(
                Sample::large(i, 512 * 1024),
                layercache_core::SystemClock.now(),
                Duration::ZERO,
            )
            .unwrap()
    };
    let mut refused = None;
    for i in 0..64 {
        if let Err(error) = backend.set(&ns.key(i).unwrap(), big(i)).await {
            refused = Some(error);
            break;
        }
    }
    let error = refused.expect("a 2 MB Redis refuses 32 MB of values");
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.is_temporary(), "{error}");
    assert!(format!("{error:?}").contains("OOM"), "{error:?}");
    let read: layercache_core::Result<Option<layercache_core::Entry<Sample>>> =
        backend.get(&ns.key(0).unwrap()).await;
    assert!(read.is_ok(), "reads go on: {read:?}");
}

/// No builder shows the password of its URL (they are printed in logs and panics).
#[test]
fn builders_keep_passwords_out_of_debug() {
    let url = "redis://app:s3cr3t-pass@127.0.0.1:1";
    let shown = [
        format!("{:?}", RedisBackend::builder(url)),
        format!("{:?}", layercache_redis::RedisPubSub::builder(url)),
        format!("{:?}", layercache_redis::RedisTracking::builder(url)),
        format!(
            "{:?}",
            layercache_redis::RedisWriteJournal::builder(url, "s")
        ),
    ];
    for text in shown {
        assert!(!text.contains("s3cr3t-pass"), "{text}");
        assert!(text.contains("127.0.0.1"), "{text}");
    }
}
