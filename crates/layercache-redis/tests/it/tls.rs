//! TLS (`rediss://`) against a real TLS server from the testkit, and credentials kept out of
//! `Debug`, `Display` and errors. Built with the `tls` feature (`cargo xtask test` has it).

use std::sync::OnceLock;

use layercache_core::{Error, ErrorKind};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use layercache_testkit::server::TestCa;

/// One TLS server shared by the cases that need no fault of their own.
fn tls_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::builder().tls(true).start())
}

/// The error's `Display` and `Debug`, lowercased, for the assertions on what it says.
fn shown(error: &Error) -> String {
    format!("{error} {error:?}").to_ascii_lowercase()
}

/// Whether the message tells a TLS/certificate problem (not a bare timeout).
fn says_tls(error: &Error) -> bool {
    let text = shown(error);
    text.contains("certificate") || text.contains("tls")
}

mod conformance_manager {
    use std::sync::Arc;

    use layercache_redis::RedisBackend;
    use layercache_testkit::ManualClock;
    use layercache_testkit::conformance::Subject;

    async fn setup() -> Subject {
        let server = super::tls_server();
        let clock = ManualClock::starting_now();
        let backend = RedisBackend::builder(server.tls_url())
            .tls_root_ca(server.tls_ca_pem())
            .clock(clock.clone())
            .connect()
            .await
            .unwrap();
        Subject::new(Arc::new(backend), clock)
    }

    layercache_testkit::backend_conformance!(setup);
}

mod conformance_pool {
    use std::sync::Arc;

    use layercache_redis::RedisBackend;
    use layercache_testkit::ManualClock;
    use layercache_testkit::conformance::Subject;

    async fn setup() -> Subject {
        let server = super::tls_server();
        let clock = ManualClock::starting_now();
        let backend = RedisBackend::builder(server.tls_url())
            .tls_root_ca(server.tls_ca_pem().as_bytes().to_vec())
            .clock(clock.clone())
            .pool(4)
            .connect()
            .await
            .unwrap();
        Subject::new(Arc::new(backend), clock)
    }

    layercache_testkit::backend_conformance!(setup);
}

#[tokio::test]
async fn a_lazy_backend_reaches_the_tls_server_by_name_too() {
    let server = tls_server();
    let backend = RedisBackend::builder(server.tls_url_with_host("localhost"))
        .tls_root_ca(server.tls_ca_pem())
        .connect_lazy()
        .unwrap();
    backend.ping().await.unwrap();
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_fails_the_connect_with_a_certificate_error() {
    let server = tls_server();
    let other = TestCa::new();
    for pool in [None, Some(2)] {
        let mut builder = RedisBackend::builder(server.tls_url()).tls_root_ca(other.cert_pem());
        if let Some(size) = pool {
            builder = builder.pool(size);
        }
        let error = builder.connect().await.expect_err("a CA we do not trust");
        assert!(says_tls(&error), "pool {pool:?}: {error} / {error:?}");
        assert!(
            shown(&error).contains("unknownissuer"),
            "pool {pool:?}: {error}"
        );
        if pool.is_none() {
            assert!(
                !error.is_temporary(),
                "a refused certificate stays refused: {error}"
            );
        }
    }
}

#[tokio::test]
async fn without_the_custom_ca_the_default_roots_refuse_a_private_ca() {
    let error = RedisBackend::builder(tls_server().tls_url())
        .connect()
        .await
        .expect_err("the webpki roots do not hold the test CA");
    assert!(says_tls(&error), "{error} / {error:?}");
}

#[tokio::test]
async fn a_host_the_certificate_does_not_name_fails_the_connect() {
    let server = RedisServer::builder().tls_names(["localhost"]).start();
    let by_name = RedisBackend::builder(server.tls_url_with_host("localhost"))
        .tls_root_ca(server.tls_ca_pem())
        .connect()
        .await
        .expect("the certificate names localhost");
    by_name.ping().await.unwrap();

    let error = RedisBackend::builder(server.tls_url())
        .tls_root_ca(server.tls_ca_pem())
        .connect()
        .await
        .expect_err("the certificate does not name 127.0.0.1");
    assert!(says_tls(&error), "{error} / {error:?}");
    assert!(shown(&error).contains("not valid for name"), "{error}");
}

#[tokio::test]
async fn a_custom_ca_needs_rediss_urls_and_a_certificate() {
    let server = tls_server();
    let error = RedisBackend::builder(server.url())
        .tls_root_ca(server.tls_ca_pem())
        .connect()
        .await
        .expect_err("a plain URL with a custom CA");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(shown(&error).contains("rediss://"), "{error}");

    for pem in [&b""[..], b"not a certificate"] {
        let error = RedisBackend::builder(server.tls_url())
            .tls_root_ca(pem)
            .connect_lazy()
            .expect_err("no certificate in the PEM");
        assert_eq!(error.kind(), ErrorKind::Config, "{error}");
        assert!(shown(&error).contains("certificate"), "{error}");
    }

    let error = RedisBackend::cluster_builder([server.tls_url(), server.url()])
        .tls_root_ca(server.tls_ca_pem())
        .connect()
        .await
        .expect_err("one plain node with a custom CA");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
}

mod credentials {
    use layercache_redis::RedisBackend;
    use layercache_testkit::RedisServer;

    const PASSWORD: &str = "s3cr3t-pass";
    const WRONG: &str = "wr0ng-pass";

    fn assert_hidden(what: &str, text: &str) {
        for secret in [PASSWORD, WRONG] {
            assert!(!text.contains(secret), "{what} shows a password: {text}");
        }
    }

    fn server() -> RedisServer {
        RedisServer::builder()
            .tls(true)
            .config("requirepass", PASSWORD)
            .start()
    }

    #[tokio::test]
    async fn a_password_is_in_no_debug_output() {
        let server = server();
        let urls = [
            format!("redis://:{PASSWORD}@127.0.0.1:{}", server.port()),
            format!("redis://default:{PASSWORD}@127.0.0.1:{}/0", server.port()),
            format!(
                "rediss://:{PASSWORD}@127.0.0.1:{}",
                server.tls_port().unwrap()
            ),
        ];
        for url in urls {
            for pool in [None, Some(2)] {
                let mut builder = RedisBackend::builder(url.as_str());
                if url.starts_with("rediss") {
                    builder = builder.tls_root_ca(server.tls_ca_pem());
                }
                if let Some(size) = pool {
                    builder = builder.pool(size);
                }
                assert_hidden("the builder's Debug", &format!("{builder:?}"));
                let backend = builder.connect().await.unwrap();
                backend.ping().await.unwrap();
                assert_hidden("the backend's Debug", &format!("{backend:?}"));
                assert_hidden("the backend's pretty Debug", &format!("{backend:#?}"));
            }
        }
        let cluster = RedisBackend::cluster_builder([
            format!("redis://:{PASSWORD}@127.0.0.1:1"),
            format!("redis://:{WRONG}@127.0.0.1:2"),
        ]);
        assert_hidden("the cluster builder's Debug", &format!("{cluster:?}"));
    }

    #[tokio::test]
    async fn a_wrong_password_fails_without_showing_either_password() {
        let server = server();
        let urls = [
            format!("redis://:{WRONG}@127.0.0.1:{}", server.port()),
            format!("redis://default:{WRONG}@127.0.0.1:{}", server.port()),
            format!("rediss://:{WRONG}@127.0.0.1:{}", server.tls_port().unwrap()),
        ];
        for url in urls {
            for pool in [None, Some(2)] {
                let mut builder = RedisBackend::builder(url.as_str());
                if url.starts_with("rediss") {
                    builder = builder.tls_root_ca(server.tls_ca_pem());
                }
                if let Some(size) = pool {
                    builder = builder.pool(size);
                }
                assert_hidden("the builder's Debug", &format!("{builder:?}"));
                let error = builder.connect().await.expect_err("a wrong password");
                assert_hidden("the error's Display", &error.to_string());
                assert_hidden("the error's Debug", &format!("{error:?}"));
                assert_hidden("the error's pretty Debug", &format!("{error:#?}"));
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    assert_hidden("a cause's Display", &cause.to_string());
                    assert_hidden("a cause's Debug", &format!("{cause:?}"));
                    source = cause.source();
                }
            }
        }
    }

    #[tokio::test]
    async fn a_missing_password_fails_without_showing_the_password() {
        let server = server();
        let error = RedisBackend::builder(server.url())
            .connect()
            .await
            .expect_err("no password");
        assert_hidden("the error", &format!("{error} {error:?}"));
    }
}
