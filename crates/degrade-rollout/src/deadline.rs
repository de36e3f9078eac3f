//! Instants computed from configured durations, which may be as large as `Duration::MAX`.

use std::time::Duration;
use tokio::time::Instant;

/// `now + d`, saturated to (a second before) the last representable instant when the sum
/// does not fit: a configured "forever" never comes, however long the process runs.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    if let Some(t) = now.checked_add(d) {
        return t;
    }
    // The largest whole number of seconds that still fits, by bisection (64 steps at most,
    // and only for durations that overflow).
    let (mut fits, mut overflows) = (0u64, d.as_secs());
    while overflows - fits > 1 {
        let mid = fits + (overflows - fits) / 2;
        if now.checked_add(Duration::from_secs(mid)).is_some() {
            fits = mid;
        } else {
            overflows = mid;
        }
    }
    // A second short of the end: tokio rounds a timer's deadline up by almost a
    // millisecond, which must not overflow either.
    now + Duration::from_secs(fits.saturating_sub(1))
}

/// Whether `d` has passed since `since` (exact for every `d`, no addition involved).
pub(crate) fn elapsed(since: Instant, now: Instant, d: Duration) -> bool {
    now.saturating_duration_since(since) >= d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_too_large_for_an_instant_saturates_to_the_far_future() {
        let now = Instant::now();
        let far = Duration::from_secs(1_000_000 * 365 * 24 * 3600);
        assert!(after(now, Duration::MAX) >= now + far);
        assert!(
            after(now, Duration::MAX)
                .checked_add(Duration::from_secs(2))
                .is_none()
        );
        assert!(
            after(now, Duration::MAX)
                .checked_add(Duration::from_millis(999))
                .is_some()
        );
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(!elapsed(now, now + far, Duration::MAX));
        assert!(elapsed(now, now, Duration::ZERO));
    }
}
