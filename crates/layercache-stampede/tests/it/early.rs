//! XFetch early expiry: the refresh rate follows the formula. (How `TieredCache` refreshes in the
//! background with it is tested in `layercache-tiered`.)

use std::time::Duration;

use layercache_core::{EntryMeta, Timestamp};
use layercache_stampede::{DEFAULT_BETA, EarlyExpiry, SeededRandom};

/// At a time `g` before expiry, with load cost `delta` and `beta = 1`, XFetch refreshes with
/// probability `exp(-g / delta)`. With 20,000 draws per point, the observed rate must be within
/// five standard deviations (`5 * sqrt(p (1 - p) / n)`, at most 0.018) of it; a correct
/// implementation fails this with probability below 1e-6 per point, and the seed makes it repeatable.
#[test]
fn early_refresh_rate_matches_the_formula() {
    const DRAWS: u32 = 20_000;
    let early = EarlyExpiry::default().with_random(SeededRandom::new(2026));
    let delta = Duration::from_millis(100);
    let t0 = Timestamp::from_millis(1_000_000);
    let fresh_until = t0 + Duration::from_secs(10);
    let meta = EntryMeta::new(t0, fresh_until, fresh_until + Duration::from_secs(10))
        .with_load_cost(delta);
    for gap_ms in [10u64, 50, 100, 200, 400, 800] {
        let now = fresh_until - Duration::from_millis(gap_ms);
        let expected = (-(gap_ms as f64) / 100.0).exp();
        assert!((early.probability(&meta, now) - expected).abs() < 1e-9);
        let refreshed = (0..DRAWS)
            .filter(|_| early.should_refresh(&meta, now))
            .count();
        let observed = f64::from(refreshed as u32) / f64::from(DRAWS);
        let tolerance = 5.0 * (expected * (1.0 - expected) / f64::from(DRAWS)).sqrt() + 1e-4;
        assert!(
            (observed - expected).abs() <= tolerance,
            "gap {gap_ms} ms: observed {observed:.4}, expected {expected:.4} ± {tolerance:.4}"
        );
    }
    // Far from expiry, past expiry, and without a measured cost: never.
    assert!(!early.should_refresh(&meta, t0));
    assert!(!early.should_refresh(&meta, fresh_until));
    let free = EntryMeta::new(t0, fresh_until, fresh_until);
    assert!(!early.should_refresh(&free, fresh_until - Duration::from_millis(1)));
}

#[test]
fn a_larger_beta_refreshes_earlier() {
    let t0 = Timestamp::from_millis(0);
    let fresh_until = t0 + Duration::from_secs(10);
    let meta =
        EntryMeta::new(t0, fresh_until, fresh_until).with_load_cost(Duration::from_millis(100));
    let now = fresh_until - Duration::from_millis(300);
    let p1 = EarlyExpiry::new(1.0).unwrap().probability(&meta, now);
    let p3 = EarlyExpiry::new(3.0).unwrap().probability(&meta, now);
    assert!(p3 > p1 * 5.0, "{p1} {p3}");
}

#[test]
fn a_seeded_source_makes_the_decisions_repeatable() {
    let t0 = Timestamp::from_millis(0);
    let fresh_until = t0 + Duration::from_secs(10);
    let meta =
        EntryMeta::new(t0, fresh_until, fresh_until).with_load_cost(Duration::from_millis(100));
    let now = fresh_until - Duration::from_millis(70);
    let draws = |seed| {
        let early = EarlyExpiry::default().with_random(SeededRandom::new(seed));
        (0..1_000)
            .map(|_| early.should_refresh(&meta, now))
            .collect::<Vec<_>>()
    };
    let first = draws(42);
    assert_eq!(first, draws(42));
    assert!(first.iter().any(|r| *r) && first.iter().any(|r| !*r));
    assert_eq!(EarlyExpiry::default().beta(), DEFAULT_BETA);
    assert_eq!(EarlyExpiry::new(2.5).unwrap().beta(), 2.5);
}
