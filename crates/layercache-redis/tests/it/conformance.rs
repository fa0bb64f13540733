//! The shared backend conformance suite, over the shared connection and over a pool.

mod manager {
    use std::sync::Arc;

    use layercache_redis::RedisBackend;
    use layercache_testkit::ManualClock;
    use layercache_testkit::conformance::Subject;

    async fn setup() -> Subject {
        let clock = ManualClock::starting_now();
        let backend = RedisBackend::builder(crate::shared_server().url())
            .clock(clock.clone())
            .connect()
            .await
            .unwrap();
        Subject::new(Arc::new(backend), clock)
    }

    layercache_testkit::backend_conformance!(setup);
}

mod pool {
    use std::sync::Arc;

    use layercache_redis::RedisBackend;
    use layercache_testkit::ManualClock;
    use layercache_testkit::conformance::Subject;

    async fn setup() -> Subject {
        let clock = ManualClock::starting_now();
        let backend = RedisBackend::builder(crate::shared_server().url())
            .clock(clock.clone())
            .pool(4)
            .connect()
            .await
            .unwrap();
        Subject::new(Arc::new(backend), clock)
    }

    layercache_testkit::backend_conformance!(setup);
}

mod cluster {
    use std::sync::Arc;

    use layercache_redis::RedisBackend;
    use layercache_testkit::ManualClock;
    use layercache_testkit::conformance::Subject;

    use crate::shared_cluster;

    async fn setup() -> Subject {
        let clock = ManualClock::starting_now();
        let backend = RedisBackend::cluster_builder(shared_cluster().urls())
            .clock(clock.clone())
            .command_timeout(std::time::Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        Subject::new(Arc::new(backend), clock)
    }

    layercache_testkit::backend_conformance!(setup);
}
