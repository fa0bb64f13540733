use std::fmt;
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::FORMAT_VERSION;
use crate::error::Error;

/// A point in wall-clock time: milliseconds since the Unix epoch.
///
/// Wall-clock (not monotonic) time, because entry meta travels through a shared tier and is
/// compared by other processes. Arithmetic saturates instead of overflowing.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest representable time.
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_millis(rhs)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_millis(rhs)))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

/// The tags of an entry, for tag invalidation. Cloning is free when empty and a reference count otherwise.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Tags(Option<Arc<[String]>>);

impl Tags {
    /// No tags.
    pub const fn empty() -> Self {
        Tags(None)
    }

    /// The tags as a slice.
    pub fn as_slice(&self) -> &[String] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Whether `tag` is among them.
    pub fn contains(&self, tag: &str) -> bool {
        self.as_slice().iter().any(|t| t == tag)
    }
}

impl<S: Into<String>> FromIterator<S> for Tags {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let tags: Vec<String> = iter.into_iter().map(Into::into).collect();
        if tags.is_empty() {
            Tags(None)
        } else {
            Tags(Some(tags.into()))
        }
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// What the guards need to know about a cached value; it travels with the value through every tier.
///
/// An entry is *fresh* until `fresh_until`, then *stale* until `stale_until` (it may still be served
/// for fail-safe or stale-while-revalidate), then *expired*: backends never return expired entries.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryMeta {
    /// When the value was produced.
    pub created_at: Timestamp,
    /// Soft expiry: after this the value should be refreshed.
    pub fresh_until: Timestamp,
    /// Hard expiry: after this the value must not be served. Never before `fresh_until`.
    pub stale_until: Timestamp,
    /// How long producing the value took (the `delta` of XFetch early expiry).
    pub load_cost: Duration,
    /// Tags for invalidation.
    pub tags: Tags,
    /// The envelope format version the entry was written with.
    pub format_version: u8,
}

impl EntryMeta {
    /// Meta for a value created at `created_at`, fresh until `fresh_until` and servable as stale
    /// until `stale_until` (raised to `fresh_until` if earlier).
    pub fn new(created_at: Timestamp, fresh_until: Timestamp, stale_until: Timestamp) -> Self {
        EntryMeta {
            created_at,
            fresh_until,
            stale_until: stale_until.max(fresh_until),
            load_cost: Duration::ZERO,
            tags: Tags::empty(),
            format_version: FORMAT_VERSION,
        }
    }

    /// Sets the measured load cost.
    #[must_use]
    pub fn with_load_cost(mut self, load_cost: Duration) -> Self {
        self.load_cost = load_cost;
        self
    }

    /// Sets the tags.
    #[must_use]
    pub fn with_tags(mut self, tags: Tags) -> Self {
        self.tags = tags;
        self
    }

    /// Whether the value is fresh at `now`.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now < self.fresh_until
    }

    /// Whether the value is past its soft expiry but still servable at `now`.
    pub fn is_stale(&self, now: Timestamp) -> bool {
        now >= self.fresh_until && now < self.stale_until
    }

    /// Whether the value is past its hard expiry at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.stale_until
    }

    /// Time left until hard expiry (zero when expired): the TTL a shared tier stores the entry with.
    pub fn time_to_live(&self, now: Timestamp) -> Duration {
        self.stale_until.saturating_since(now)
    }

    /// Time left until soft expiry (zero when not fresh).
    pub fn time_to_refresh(&self, now: Timestamp) -> Duration {
        self.fresh_until.saturating_since(now)
    }
}

/// A cached value with its [`EntryMeta`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<V> {
    /// The value.
    pub value: V,
    /// Its meta.
    pub meta: EntryMeta,
}

impl<V> Entry<V> {
    /// An entry from a value and its meta.
    pub fn new(value: V, meta: EntryMeta) -> Self {
        Entry { value, meta }
    }

    /// The same meta with another value.
    pub fn map<U>(self, f: impl FnOnce(V) -> U) -> Entry<U> {
        Entry {
            value: f(self.value),
            meta: self.meta,
        }
    }
}

/// The longest TTL [`EntryOptions`] accepts (10 years): longer is a unit mistake.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long a kind of data is cached: a TTL, an optional stale period after it, jitter, tags.
///
/// They also say how loads of that data behave, per call if need be (FusionCache's "entry
/// options"): a hard timeout (default [`DEFAULT_HARD_TIMEOUT`]), a soft timeout, fail-safe,
/// eager refresh and stale-while-revalidate. Fail-safe, soft timeouts and stale-while-revalidate
/// serve *stale* values, so they need a stale period ([`with_stale_ttl`](Self::with_stale_ttl)):
/// without one, [`validate`](Self::validate) refuses them.
///
/// Defaults: TTL 5 minutes, no stale period, no jitter, no tags, hard timeout 10 s, nothing else.
///
/// ```
/// use std::time::Duration;
/// use layercache_core::{EntryOptions, ErrorKind, Timestamp};
///
/// let opts = EntryOptions::new(Duration::from_secs(60))
///     .with_stale_ttl(Duration::from_secs(600))
///     .with_jitter(Duration::from_secs(6))
///     .with_tags(["user:42"]);
/// let meta = opts.meta(Timestamp::from_millis(0), Duration::from_millis(30))?;
/// assert!(meta.fresh_until >= Timestamp::from_millis(54_000));
/// assert!(meta.tags.contains("user:42"));
///
/// // A zero TTL is refused at the call, with a typed error.
/// let err = EntryOptions::new(Duration::ZERO).validate().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Config);
/// # Ok::<(), layercache_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EntryOptions {
    ttl: Duration,
    stale_ttl: Duration,
    jitter: Duration,
    tags: Tags,
    hard_timeout: Duration,
    soft_timeout: Option<Duration>,
    fail_safe: Option<Duration>,
    eager_refresh: Option<f64>,
    stale_while_revalidate: bool,
}

/// The default hard timeout of a load (10 s): a load that takes longer fails with a `Timeout`
/// error (and fail-safe may serve a stale value), so a loader that never returns cannot block its
/// key. `Duration::MAX` means no bound.
pub const DEFAULT_HARD_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for EntryOptions {
    fn default() -> Self {
        EntryOptions::new(Duration::from_secs(300))
    }
}

impl EntryOptions {
    /// Options with a fresh TTL of `ttl`.
    pub fn new(ttl: Duration) -> Self {
        EntryOptions {
            ttl,
            stale_ttl: Duration::ZERO,
            jitter: Duration::ZERO,
            tags: Tags::empty(),
            hard_timeout: DEFAULT_HARD_TIMEOUT,
            soft_timeout: None,
            fail_safe: None,
            eager_refresh: None,
            stale_while_revalidate: false,
        }
    }

    /// Sets the fresh TTL.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Hard timeout: a load that takes longer fails with a `Timeout` error (then fail-safe may
    /// serve a stale value). Default [`DEFAULT_HARD_TIMEOUT`]; `Duration::MAX` means no bound.
    #[must_use]
    pub fn with_hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = timeout;
        self
    }

    /// Soft timeout: a caller holding a stale value waits this long for a load, then gets the
    /// stale value while the load goes on and fills the cache. Needs a stale period.
    #[must_use]
    pub fn with_soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Fail-safe: when a load fails or times out and a stale value exists, serve it, and keep it
    /// as fresh for `throttle` so the source is asked again no more often than that. Needs a
    /// stale period (the longest a value is served past its TTL).
    #[must_use]
    pub fn with_fail_safe(mut self, throttle: Duration) -> Self {
        self.fail_safe = Some(throttle);
        self
    }

    /// Eager refresh: once `fraction` (in `(0, 1)`) of a value's TTL has passed, a read starts one
    /// background refresh and still gets the current value.
    #[must_use]
    pub fn with_eager_refresh(mut self, fraction: f64) -> Self {
        self.eager_refresh = Some(fraction);
        self
    }

    /// Stale-while-revalidate: a read that finds a stale value gets it at once while one
    /// background refresh runs. Needs a stale period.
    #[must_use]
    pub fn with_stale_while_revalidate(mut self) -> Self {
        self.stale_while_revalidate = true;
        self
    }

    /// The hard timeout of loads (`Duration::MAX`: none).
    pub fn hard_timeout(&self) -> Duration {
        self.hard_timeout
    }

    /// The soft timeout of loads, if any.
    pub fn soft_timeout(&self) -> Option<Duration> {
        self.soft_timeout
    }

    /// The fail-safe throttle, if fail-safe is on.
    pub fn fail_safe(&self) -> Option<Duration> {
        self.fail_safe
    }

    /// The eager-refresh fraction, if on.
    pub fn eager_refresh(&self) -> Option<f64> {
        self.eager_refresh
    }

    /// Whether stale values are served while a background refresh runs.
    pub fn stale_while_revalidate(&self) -> bool {
        self.stale_while_revalidate
    }

    /// How long after the TTL the value may still be served stale (fail-safe, stale-while-revalidate).
    #[must_use]
    pub fn with_stale_ttl(mut self, stale_ttl: Duration) -> Self {
        self.stale_ttl = stale_ttl;
        self
    }

    /// Up to this much is taken at random off each entry's TTL, so entries written together do not
    /// expire together. Must be less than the TTL.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Tags given to every entry written with these options.
    #[must_use]
    pub fn with_tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags = tags.into_iter().collect();
        self
    }

    /// The fresh TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The stale period after the TTL.
    pub fn stale_ttl(&self) -> Duration {
        self.stale_ttl
    }

    /// The jitter bound.
    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// The tags.
    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// Checks the options: a TTL of at least 1 ms and at most 10 years, a stale period of at most
    /// 10 years, jitter less than the TTL, timeouts and throttles above zero, a soft timeout below
    /// the hard one, an eager-refresh fraction in `(0, 1)`, and a stale period for whatever serves
    /// stale values (fail-safe, soft timeout, stale-while-revalidate).
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_ttl()?;
        let zero = |d: Option<Duration>| d.is_some_and(|d| d.is_zero());
        if self.hard_timeout.is_zero() || zero(self.soft_timeout) || zero(self.fail_safe) {
            return Err(Error::config(
                "load timeouts and the fail-safe throttle must be greater than zero",
            ));
        }
        if let Some(soft) = self.soft_timeout
            && soft >= self.hard_timeout
        {
            return Err(Error::config(format!(
                "the soft timeout ({soft:?}) must be shorter than the hard timeout ({:?})",
                self.hard_timeout
            )));
        }
        if let Some(fraction) = self.eager_refresh
            && !(fraction > 0.0 && fraction < 1.0)
        {
            return Err(Error::config(format!(
                "the eager refresh fraction must be in (0, 1), got {fraction}"
            )));
        }
        let serves_stale = [
            (self.fail_safe.is_some(), "fail-safe"),
            (self.soft_timeout.is_some(), "a soft timeout"),
            (self.stale_while_revalidate, "stale-while-revalidate"),
        ];
        if self.stale_ttl.is_zero()
            && let Some((_, what)) = serves_stale.iter().find(|(on, _)| *on)
        {
            return Err(Error::config(format!(
                "{what} serves stale values, so it needs a stale period: add with_stale_ttl(..)"
            )));
        }
        Ok(())
    }

    fn validate_ttl(&self) -> Result<(), Error> {
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::config(format!(
                "ttl must be at least 1 ms, got {:?}",
                self.ttl
            )));
        }
        if self.ttl > MAX_TTL || self.stale_ttl > MAX_TTL {
            return Err(Error::config("ttl and stale ttl must be at most 10 years"));
        }
        if self.jitter >= self.ttl {
            return Err(Error::config(format!(
                "jitter ({:?}) must be less than the ttl ({:?})",
                self.jitter, self.ttl
            )));
        }
        Ok(())
    }

    /// Meta for a value produced at `now` in `load_cost`, with random jitter.
    pub fn meta(&self, now: Timestamp, load_cost: Duration) -> Result<EntryMeta, Error> {
        let sample = if self.jitter.is_zero() {
            0.0
        } else {
            fastrand::f64()
        };
        self.meta_with_jitter_sample(now, load_cost, sample)
    }

    /// Meta as [`meta`](Self::meta), with the jitter drawn from `sample` in `[0, 1)` (for tests).
    pub fn meta_with_jitter_sample(
        &self,
        now: Timestamp,
        load_cost: Duration,
        sample: f64,
    ) -> Result<EntryMeta, Error> {
        self.validate_ttl()?;
        let jitter = self.jitter.mul_f64(sample.clamp(0.0, 1.0));
        let fresh_until = now + self.ttl.saturating_sub(jitter);
        Ok(
            EntryMeta::new(now, fresh_until, fresh_until + self.stale_ttl)
                .with_load_cost(load_cost)
                .with_tags(self.tags.clone()),
        )
    }

    /// An entry of `value` produced at `now` in `load_cost`.
    pub fn entry<V>(
        &self,
        value: V,
        now: Timestamp,
        load_cost: Duration,
    ) -> Result<Entry<V>, Error> {
        Ok(Entry::new(value, self.meta(now, load_cost)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn fresh_stale_expired() {
        let t0 = Timestamp::from_millis(10_000);
        let meta = EntryOptions::new(Duration::from_secs(10))
            .with_stale_ttl(Duration::from_secs(5))
            .meta(t0, Duration::ZERO)
            .unwrap();
        assert!(meta.is_fresh(t0 + Duration::from_millis(9_999)));
        assert!(meta.is_stale(t0 + Duration::from_secs(10)));
        assert!(meta.is_stale(t0 + Duration::from_millis(14_999)));
        assert!(meta.is_expired(t0 + Duration::from_secs(15)));
        assert_eq!(meta.time_to_live(t0), Duration::from_secs(15));
        assert_eq!(
            meta.time_to_live(t0 + Duration::from_secs(20)),
            Duration::ZERO
        );
    }

    #[test]
    fn jitter_shortens_within_bound() {
        let t0 = Timestamp::from_millis(0);
        let opts = EntryOptions::new(Duration::from_secs(100)).with_jitter(Duration::from_secs(10));
        let full = opts
            .meta_with_jitter_sample(t0, Duration::ZERO, 0.0)
            .unwrap();
        let half = opts
            .meta_with_jitter_sample(t0, Duration::ZERO, 0.5)
            .unwrap();
        assert_eq!(full.fresh_until, Timestamp::from_millis(100_000));
        assert_eq!(half.fresh_until, Timestamp::from_millis(95_000));
        for _ in 0..1000 {
            let m = opts.meta(t0, Duration::ZERO).unwrap();
            assert!(
                m.fresh_until >= Timestamp::from_millis(90_000)
                    && m.fresh_until <= Timestamp::from_millis(100_000)
            );
        }
    }

    #[test]
    fn invalid_options_are_config_errors() {
        for opts in [
            EntryOptions::new(Duration::ZERO),
            EntryOptions::new(Duration::from_secs(1)).with_jitter(Duration::from_secs(1)),
            EntryOptions::new(Duration::from_secs(u64::MAX / 4)),
        ] {
            assert_eq!(
                opts.validate().unwrap_err().kind(),
                ErrorKind::Config,
                "{opts:?}"
            );
        }
    }

    #[test]
    fn timestamps_saturate() {
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(Timestamp::EPOCH - Duration::from_secs(1), Timestamp::EPOCH);
        assert_eq!(
            Timestamp::EPOCH.saturating_since(Timestamp::from_millis(5)),
            Duration::ZERO
        );
    }
}
