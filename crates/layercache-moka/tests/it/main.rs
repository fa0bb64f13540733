//! Integration tests of the moka backend: the shared conformance suite, and what is moka's own.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod conformance {
    use std::sync::Arc;

    use layercache_moka::MokaBackend;
    use layercache_testkit::ManualClock;
    use layercache_testkit::conformance::{Sample, Subject};

    async fn setup() -> Subject {
        let clock = ManualClock::starting_now();
        let backend: MokaBackend<Sample> = MokaBackend::builder()
            .max_entries(100_000)
            .clock(clock.clone())
            .build()
            .unwrap();
        Subject::new(Arc::new(backend), clock)
    }

    layercache_testkit::backend_conformance!(setup);
}

mod policy;

mod send_sync {
    fn is_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        is_send_sync::<layercache_moka::MokaBackend<String>>();
        is_send_sync::<layercache_moka::MokaBackendBuilder<String>>();
        is_send_sync::<layercache_moka::MokaStats>();
        is_send_sync::<layercache_moka::L1Policy>();
    }
}
