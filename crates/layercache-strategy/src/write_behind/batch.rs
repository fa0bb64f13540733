//! Writing one batch to the source: one `write_many` for the puts and one `remove` per delete,
//! retried with backoff, then each write on its own, then the dead-letter hook. Every writer call
//! runs in a task of its own, bounded by the write timeout, so a panic or a hang is a failure and
//! not the end of the worker.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use layercache_core::{Error, Key, Result, Writer};

use super::{DeadLetter, Op, Shared, add};

/// One coalesced write of a batch, with what the queue needs to know about it afterwards.
pub(super) struct Item<V, T> {
    pub(super) key: Key,
    pub(super) op: Op<V>,
    pub(super) tag: T,
}

/// What became of a batch's items: the tags of those written, and of those dead-lettered.
pub(super) struct Outcome<T> {
    pub(super) written: Vec<T>,
    pub(super) failed: Vec<(Key, T)>,
}

/// The pause before retry number `retry` (1-based): doubling from the initial backoff, capped, with
/// up to half taken off at random.
fn backoff(initial: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(20));
    let full = initial.saturating_mul(factor).min(max);
    full.mul_f64(1.0 - fastrand::f64() * 0.5)
}

/// Runs one writer call in a task of its own, bounded by the write timeout.
async fn call<V, F, Fut>(shared: &Shared<V>, f: F) -> Result<()>
where
    V: Send + Sync + 'static,
    F: FnOnce(Arc<dyn Writer<V>>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    add(&shared.counters.source_calls, 1);
    let task = tokio::spawn(f(Arc::clone(&shared.writer)));
    let abort = task.abort_handle();
    let timeout = shared.settings.write_timeout;
    let result = match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_panic() => {
            tracing::error!("write-behind: the writer panicked");
            Err(Error::loader("the writer panicked").set_temporary(false))
        }
        Ok(Err(_)) => Err(Error::loader("the writer's task was cancelled").set_temporary(true)),
        Err(_) => {
            abort.abort();
            Err(Error::timeout(format!(
                "the writer did not answer within {timeout:?}"
            )))
        }
    };
    if result.is_err() {
        add(&shared.counters.failures, 1);
    }
    result
}

/// Writes `items` (one per key) to the source; see the module docs.
pub(super) async fn write<V, T>(shared: &Shared<V>, items: Vec<Item<V, T>>) -> Outcome<T>
where
    V: Send + Sync + 'static,
{
    let c = &shared.counters;
    let s = &shared.settings;
    let n = items.len() as u64;
    add(&c.batches, 1);
    add(&c.batched, n);
    c.max_batch.fetch_max(n, Ordering::Relaxed);

    let mut puts: Vec<(Key, V)> = Vec::new();
    let mut put_tags: Vec<T> = Vec::new();
    let mut deletes: Vec<(Key, T)> = Vec::new();
    for item in items {
        match item.op {
            Op::Put(value) => {
                puts.push((item.key, value));
                put_tags.push(item.tag);
            }
            Op::Delete => deletes.push((item.key, item.tag)),
        }
    }
    let puts = Arc::new(puts);
    let mut puts_done = puts.is_empty();
    let mut written: Vec<T> = Vec::with_capacity(put_tags.len() + deletes.len());
    let mut attempts = 0u32;
    let mut last_error = None;
    loop {
        attempts += 1;
        let mut error = None;
        if !puts_done {
            let batch = Arc::clone(&puts);
            match call(shared, |w| async move { w.write_many(&batch).await }).await {
                Ok(()) => puts_done = true,
                Err(e) => error = Some(e),
            }
        }
        let mut still = Vec::new();
        for (key, tag) in deletes {
            let k = key.clone();
            match call(shared, |w| async move { w.remove(&k).await }).await {
                Ok(()) => {
                    add(&c.written, 1);
                    written.push(tag);
                }
                Err(e) => {
                    error = Some(e);
                    still.push((key, tag));
                }
            }
        }
        deletes = still;
        let Some(error) = error else { break };
        let give_up = attempts > s.max_retries || !error.is_temporary();
        last_error = Some(error);
        if give_up {
            break;
        }
        add(&c.retries, 1);
        tokio::time::sleep(backoff(s.initial_backoff, s.max_backoff, attempts)).await;
    }
    if puts_done {
        add(&c.written, put_tags.len() as u64);
        written.extend(put_tags);
        return Outcome {
            written,
            failed: finish_deletes(shared, deletes, last_error.as_ref(), attempts),
        };
    }

    // The batch as a whole kept failing: try each put once on its own, so one bad write does not
    // sink the others.
    let mut failed = Vec::new();
    let alone = puts.len() > 1;
    for (i, tag) in put_tags.into_iter().enumerate() {
        let error = if alone {
            let (batch, index) = (Arc::clone(&puts), i);
            match call(shared, |w| async move {
                match batch.get(index) {
                    Some((key, value)) => w.write(key, value).await,
                    None => Ok(()),
                }
            })
            .await
            {
                Ok(()) => {
                    add(&c.written, 1);
                    written.push(tag);
                    continue;
                }
                Err(e) => e,
            }
        } else {
            last_error
                .clone()
                .unwrap_or_else(|| Error::loader("the write failed"))
        };
        if let Some((key, value)) = puts.get(i) {
            dead_letter(
                shared,
                key,
                Some(value),
                &error,
                attempts + u32::from(alone),
            );
            failed.push((key.clone(), tag));
        }
    }
    failed.extend(finish_deletes(
        shared,
        deletes,
        last_error.as_ref(),
        attempts,
    ));
    Outcome { written, failed }
}

fn finish_deletes<V, T>(
    shared: &Shared<V>,
    deletes: Vec<(Key, T)>,
    error: Option<&Error>,
    attempts: u32,
) -> Vec<(Key, T)>
where
    V: Send + Sync + 'static,
{
    let fallback = Error::loader("the delete failed");
    let error = error.unwrap_or(&fallback);
    for (key, _) in &deletes {
        dead_letter(shared, key, None, error, attempts);
    }
    deletes
}

/// Hands one write to the dead-letter hook (a panic in it is caught) or the log.
fn dead_letter<V>(shared: &Shared<V>, key: &Key, value: Option<&V>, error: &Error, attempts: u32)
where
    V: Send + Sync + 'static,
{
    add(&shared.counters.dead_letters, 1);
    match &shared.dead_letter {
        Some(hook) => {
            let letter = DeadLetter {
                key,
                value,
                error,
                attempts,
            };
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(letter))).is_err() {
                tracing::error!(%key, "write-behind: the dead-letter hook panicked");
            }
        }
        None => {
            tracing::error!(%key, %error, attempts, delete = value.is_none(), "write-behind: write dead-lettered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let first = backoff(initial, max, 1);
            assert!(first >= Duration::from_millis(50) && first <= initial);
            let third = backoff(initial, max, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(initial, max, 40) <= max);
        }
    }
}
