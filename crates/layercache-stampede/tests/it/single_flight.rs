//! Single-flight: coalescing, cancellation, panics, bounded waits, and no flight kept once landed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{Error, ErrorKind, Key};
use layercache_stampede::SingleFlight;
use tokio::sync::{oneshot, watch};

/// A gate that work waits on, counting how many times the work ran.
#[derive(Clone)]
struct Gate {
    open: watch::Sender<bool>,
    runs: Arc<AtomicU64>,
    started: Arc<tokio::sync::Notify>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            open: watch::channel(false).0,
            runs: Arc::new(AtomicU64::new(0)),
            started: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Work that counts itself, says it started, waits for the gate, then returns `value`.
    fn work(&self, value: &str) -> impl Future<Output = layercache_core::Result<String>> + use<> {
        let (mut open, runs, started) = (
            self.open.subscribe(),
            Arc::clone(&self.runs),
            Arc::clone(&self.started),
        );
        let value = value.to_owned();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            started.notify_one();
            let _ = open.wait_for(|open| *open).await;
            Ok(value)
        }
    }

    fn release(&self) {
        self.open.send_replace(true);
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

/// Waits (without a clock) until `n` callers have joined flights of `flights`.
async fn until_coalesced<T: Clone + Send + Sync + 'static>(flights: &SingleFlight<T>, n: u64) {
    while flights.stats().coalesced < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_callers_on_a_cold_key_make_one_load() {
    const CALLERS: u64 = 10_000;
    let flights = SingleFlight::<String>::new();
    let gate = Gate::new();
    let key = Key::new("cold").unwrap();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (flights, key, work) = (flights.clone(), key.clone(), gate.work("cold#1"));
            tokio::spawn(async move { flights.run(&key, work).await })
        })
        .collect();
    // The load is held until every caller is in it, so that a caller scheduled late on a busy
    // machine cannot find the key free again (a landed flight is forgotten at once).
    until_coalesced(&flights, CALLERS - 1).await;
    gate.release();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "cold#1");
    }
    assert_eq!(gate.runs(), 1, "one load for all the callers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landed_flight_is_forgotten_at_once() {
    let flights = SingleFlight::<u64>::new();
    let key = Key::new("k").unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let work = |runs: &Arc<AtomicU64>| {
        let runs = Arc::clone(runs);
        async move { Ok(runs.fetch_add(1, Ordering::SeqCst) + 1) }
    };

    assert_eq!(flights.run(&key, work(&runs)).await.unwrap(), 1);
    // Nothing lingers once `run` returned: no flight, no cached outcome.
    assert_eq!(flights.stats().in_flight, 0);
    assert!(!flights.is_in_flight(&key));
    // So the next call runs its own work.
    assert_eq!(flights.run(&key, work(&runs)).await.unwrap(), 2);
    assert_eq!(flights.stats().in_flight, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // The same for an error, a lazily made work, and a background flight.
    let err = flights
        .run(&key, async { Err(Error::loader("db down")) })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "db down");
    assert_eq!(flights.stats().in_flight, 0);
    let (led, value) = flights.run_lazy(&key, || work(&runs)).await;
    assert!(led);
    assert_eq!(value.unwrap(), 3);
    assert_eq!(flights.stats().in_flight, 0);

    let (done_tx, done_rx) = oneshot::channel();
    let gate = Gate::new();
    let background = gate.work("background");
    assert!(flights.spawn_if_idle(&key, move || async move {
        let value = background.await;
        let _ = done_tx.send(());
        value.map(|_| 0)
    }));
    gate.started.notified().await;
    assert!(flights.is_in_flight(&key));
    assert!(
        !flights.spawn_if_idle(&key, || async { Ok(99) }),
        "one flight per key at a time"
    );
    gate.release();
    done_rx.await.unwrap();
    // The outcome is sent as the flight is removed, so it is gone by the time anyone can see it
    // landed; poll without a clock until the background task got there.
    while flights.is_in_flight(&key) {
        tokio::task::yield_now().await;
    }
    assert_eq!(flights.stats().in_flight, 0);
    assert_eq!(flights.run(&key, work(&runs)).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_the_value_when_the_leader_is_dropped_mid_load() {
    let flights = SingleFlight::<String>::new();
    let gate = Gate::new();
    let key = Key::new("k").unwrap();

    let leader = {
        let (flights, key, work) = (flights.clone(), key.clone(), gate.work("loaded"));
        tokio::spawn(async move { flights.run(&key, work).await })
    };
    gate.started.notified().await;
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let (flights, key, work) = (flights.clone(), key.clone(), gate.work("never runs"));
            tokio::spawn(async move { flights.run(&key, work).await })
        })
        .collect();
    // Wait until every follower has joined the flight, then drop the leader's caller.
    until_coalesced(&flights, 10).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    gate.release();

    for follower in followers {
        assert_eq!(follower.await.unwrap().unwrap(), "loaded");
    }
    assert_eq!(gate.runs(), 1);
    assert_eq!(flights.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_work_errors_every_waiter_and_does_not_poison_the_key() {
    let flights = SingleFlight::<String>::new();
    let key = Key::new("k").unwrap();
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let first = {
        let (flights, key) = (flights.clone(), key.clone());
        tokio::spawn(async move {
            flights
                .run(&key, async move {
                    let _ = gate_rx.await;
                    panic!("the source exploded");
                })
                .await
        })
    };
    while !flights.is_in_flight(&key) {
        tokio::task::yield_now().await;
    }
    let waiters: Vec<_> = (0..49)
        .map(|_| {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move { flights.run(&key, async { Ok("joined".to_owned()) }).await })
        })
        .collect();
    until_coalesced(&flights, 49).await;
    gate_tx.send(()).unwrap();
    for waiter in std::iter::once(first).chain(waiters) {
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Loader, "{err}");
    }
    assert!(!flights.is_in_flight(&key));
    assert_eq!(
        flights
            .run(&key, async { Ok("second time lucky".to_owned()) })
            .await
            .unwrap(),
        "second time lucky"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_reaches_every_waiter_and_is_not_cached() {
    let flights = SingleFlight::<u32>::new();
    let key = Key::new("k").unwrap();
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let first = {
        let (flights, key) = (flights.clone(), key.clone());
        tokio::spawn(async move {
            flights
                .run(&key, async move {
                    let _ = gate_rx.await;
                    Err(Error::loader("db down"))
                })
                .await
        })
    };
    while !flights.is_in_flight(&key) {
        tokio::task::yield_now().await;
    }
    let second = {
        let (flights, key) = (flights.clone(), key.clone());
        tokio::spawn(async move { flights.run(&key, async { Ok(1) }).await })
    };
    until_coalesced(&flights, 1).await;
    gate_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap_err().message(), "db down");
    assert_eq!(second.await.unwrap().unwrap_err().message(), "db down");
    assert_eq!(flights.run(&key, async { Ok(2) }).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_bounded_and_the_work_still_lands() {
    let flights = SingleFlight::<String>::new().with_max_wait(Duration::from_millis(100));
    let gate = Gate::new();
    let key = Key::new("slow").unwrap();
    let err = flights.run(&key, gate.work("loaded")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(flights.is_in_flight(&key), "the work goes on");

    // A caller that waits without bound (same group) joins the running work and gets its value.
    let patient = flights.clone().with_max_wait(Duration::MAX);
    let follower = {
        let (patient, key, work) = (patient.clone(), key.clone(), gate.work("never runs"));
        tokio::spawn(async move { patient.run(&key, work).await })
    };
    until_coalesced(&flights, 1).await;
    gate.release();
    assert_eq!(follower.await.unwrap().unwrap(), "loaded");
    assert_eq!(gate.runs(), 1);
    assert!(!flights.is_in_flight(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_flight_runs_on_but_new_callers_start_anew() {
    let flights = SingleFlight::<String>::new();
    let old = Gate::new();
    let key = Key::new("k").unwrap();
    let early = {
        let (flights, key, work) = (flights.clone(), key.clone(), old.work("old"));
        tokio::spawn(async move { flights.run(&key, work).await })
    };
    old.started.notified().await;

    // A write made the running work's value outdated: detach it.
    flights.forget(&key);
    assert!(!flights.is_in_flight(&key));
    assert_eq!(
        flights
            .run(&key, async { Ok("new".to_owned()) })
            .await
            .unwrap(),
        "new",
        "a caller from now on does not join the old flight"
    );

    old.release();
    assert_eq!(early.await.unwrap().unwrap(), "old");
    assert_eq!(old.runs(), 1);
    assert_eq!(flights.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_many_leads_the_free_keys_and_joins_the_running_ones() {
    let flights = SingleFlight::<String>::new();
    let gate = Gate::new();
    let [a, b, c] = ["a", "b", "c"].map(|k| Key::new(k).unwrap());
    let running = {
        let (flights, b, work) = (
            flights.clone(),
            b.clone(),
            gate.work("b from its own flight"),
        );
        tokio::spawn(async move { flights.run(&b, work).await })
    };
    gate.started.notified().await;

    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let outcomes = {
        let (flights, keys, batches) = (
            flights.clone(),
            vec![a.clone(), b.clone(), c.clone(), a.clone()],
            Arc::clone(&batches),
        );
        tokio::spawn(async move {
            flights
                .run_many(&keys, move |led: Vec<Key>| {
                    batches.lock().unwrap().push(led.clone());
                    async move {
                        led.iter()
                            .map(|key| match key.as_str() {
                                "c" => Err(Error::loader("no c")),
                                key => Ok(format!("{key} from the batch")),
                            })
                            .collect()
                    }
                })
                .await
        })
    };
    // The batch lands on its own; key b waits for its flight.
    until_coalesced(&flights, 1).await;
    gate.release();
    let outcomes = outcomes.await.unwrap();
    assert_eq!(outcomes.len(), 4);
    assert_eq!(outcomes[0].as_deref().unwrap(), "a from the batch");
    assert_eq!(outcomes[1].as_deref().unwrap(), "b from its own flight");
    assert_eq!(outcomes[2].as_ref().unwrap_err().message(), "no c");
    assert_eq!(outcomes[3].as_deref().unwrap(), "a from the batch");
    assert_eq!(
        *batches.lock().unwrap(),
        vec![vec![a.clone(), c.clone()]],
        "one batch, of the keys nobody was loading, without duplicates"
    );
    assert_eq!(running.await.unwrap().unwrap(), "b from its own flight");
    assert_eq!(flights.stats().in_flight, 0);

    // A batch that returns the wrong number of outcomes fails each of its keys.
    let outcomes = flights
        .run_many(&[a.clone(), c.clone()], |_led| async {
            vec![Ok("only one".to_owned())]
        })
        .await;
    assert!(
        outcomes
            .iter()
            .all(|o| o.as_ref().unwrap_err().kind() == ErrorKind::Loader)
    );
    assert_eq!(flights.stats().in_flight, 0);
}

#[test]
fn invalid_early_expiry_is_a_config_error() {
    for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = layercache_stampede::EarlyExpiry::new(beta).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "beta {beta}");
    }
}

#[test]
fn public_types_are_send_and_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<SingleFlight<String>>();
    is_send_sync::<layercache_stampede::Waiter<String>>();
    is_send_sync::<layercache_stampede::DistributedLock>();
    is_send_sync::<layercache_stampede::LockGuard>();
    is_send_sync::<layercache_stampede::Backoff>();
    is_send_sync::<layercache_stampede::EarlyExpiry>();
}
