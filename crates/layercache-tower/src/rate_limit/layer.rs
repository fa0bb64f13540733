//! The tower side: [`RateLimitLayer`] and the [`RateLimitService`] it wraps a service in.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use super::{Decision, DecisionSource, RateLimiter};

/// The future of [`RateLimitService`]: the limiter's decision, then the inner service's response
/// (or the limiter's refusal).
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send + 'static>>;

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Limits the requests of the services it wraps with a [`RateLimiter`], keyed by a function of
/// the request (`Fn(&http::Request<B>) -> Option<String>`; `None`: not limited).
///
/// Every layer made from one limiter shares its counters and its Redis connection. Put it
/// outside the work it protects (before authentication, routing to handlers, the cache), and
/// inside whatever must see every request (access logs, metrics), which then see the 429s too.
pub struct RateLimitLayer<F> {
    limiter: RateLimiter,
    key: Arc<F>,
}

impl<F> RateLimitLayer<F> {
    /// A layer limiting with `limiter` the requests `key` maps to a key.
    pub fn new(limiter: RateLimiter, key: F) -> Self {
        RateLimitLayer {
            limiter,
            key: Arc::new(key),
        }
    }

    /// The limiter behind the layer (its [`stats`](RateLimiter::stats), for one).
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<F> Clone for RateLimitLayer<F> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            key: Arc::clone(&self.key),
        }
    }
}

impl<F> fmt::Debug for RateLimitLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, F> Layer<S> for RateLimitLayer<F> {
    type Service = RateLimitService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            key: Arc::clone(&self.key),
        }
    }
}

/// A service behind a [`RateLimitLayer`]: asks the limiter, then calls the inner service or
/// answers `429 Too Many Requests` (`503 Service Unavailable` when failing closed) itself.
pub struct RateLimitService<S, F> {
    inner: S,
    limiter: RateLimiter,
    key: Arc<F>,
}

impl<S: Clone, F> Clone for RateLimitService<S, F> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            key: Arc::clone(&self.key),
        }
    }
}

impl<S: fmt::Debug, F> fmt::Debug for RateLimitService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, F, B, ResBody> Service<Request<B>> for RateLimitService<S, F>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    F: Fn(&Request<B>) -> Option<String>,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service that was polled ready is the one to call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(key) = (self.key)(&req) else {
            return Box::pin(inner.call(req));
        };
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let decision = limiter.check(&key).await;
            if !decision.allowed {
                return Ok(refusal(&limiter, &decision));
            }
            let mut response = inner.call(req).await?;
            if decision.source != DecisionSource::Unavailable {
                quota_headers(response.headers_mut(), &limiter, &decision);
            }
            Ok(response)
        })
    }
}

/// Whole seconds, rounded up: a client that waits this long is not early.
fn seconds(duration: Duration) -> u64 {
    let whole = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    }
}

/// How many numbers [`number`] serves from [`DIGITS`]: remaining counts, resets and retries of
/// usual limits (100 per second, 1,000 per hour) are below it.
const SMALL: usize = 1000;
const DIGITS_LEN: usize = 10 + 90 * 2 + 900 * 3;

/// `"0123456789101112…999"`: the decimal digits of every number below [`SMALL`], in order,
/// written at compile time.
static DIGITS: [u8; DIGITS_LEN] = small_numbers();

/// Where `n`'s digits start in [`DIGITS`], and how many there are (`n < SMALL`).
const fn digits_of(n: usize) -> (usize, usize) {
    match n {
        0..=9 => (n, 1),
        10..=99 => (10 + (n - 10) * 2, 2),
        _ => (190 + (n - 100) * 3, 3),
    }
}

const fn small_numbers() -> [u8; DIGITS_LEN] {
    let mut digits = [0; DIGITS_LEN];
    let mut n = 0;
    while n < SMALL {
        let (start, len) = digits_of(n);
        let (mut rest, mut i) = (n, len);
        while i > 0 {
            i -= 1;
            digits[start + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        n += 1;
    }
    digits
}

/// A header value for `n`: static below [`SMALL`] (no allocation, nothing to free), formatted
/// above (`HeaderValue::from` allocates its buffer).
pub(super) fn number(n: u64) -> HeaderValue {
    let small = usize::try_from(n)
        .ok()
        .filter(|&n| n < SMALL)
        .and_then(|n| {
            let (start, len) = digits_of(n);
            let digits = DIGITS.get(start..start + len)?;
            std::str::from_utf8(digits).ok()
        });
    match small {
        Some(digits) => HeaderValue::from_static(digits),
        None => HeaderValue::from(n),
    }
}

fn quota_headers(headers: &mut HeaderMap, limiter: &RateLimiter, decision: &Decision) {
    headers.insert(RATELIMIT_LIMIT.clone(), limiter.limit_header().clone());
    headers.insert(RATELIMIT_REMAINING.clone(), number(decision.remaining));
    headers.insert(RATELIMIT_RESET.clone(), number(seconds(decision.reset)));
}

/// The limiter's answer to a refused request: 429 over the limit, 503 when Redis could not say
/// and the limiter fails closed.
fn refusal<ResBody: Default>(limiter: &RateLimiter, decision: &Decision) -> Response<ResBody> {
    let mut response = Response::new(ResBody::default());
    let retry = decision.retry_after.unwrap_or(decision.reset);
    if decision.source == DecisionSource::Unavailable {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    } else {
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        quota_headers(response.headers_mut(), limiter, decision);
    }
    let retry = number(seconds(retry).max(1));
    response.headers_mut().insert(RETRY_AFTER, retry);
    response
}

#[cfg(test)]
mod tests {
    use super::{HeaderValue, SMALL, number, seconds};
    use std::time::Duration;

    #[test]
    fn numbers_are_their_decimal_digits() {
        for n in (0..SMALL as u64 + 20).chain([u64::from(u32::MAX), u64::MAX]) {
            assert_eq!(number(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_secs(2)), 2);
        assert_eq!(seconds(Duration::from_millis(2001)), 3);
    }
}
