//! Retry delays (pure): capped exponential backoff with "equal jitter". Time and randomness are
//! parameters, so the schedule is tested without clocks. Must not sleep or read the clock.

use std::time::Duration;

/// The delay before attempt `attempt + 1`, after `attempt` failures (1 = the first failure):
/// `d = min(base * 2^(attempt - 1), max)`, then `d/2 + jitter * d/2` with `jitter` in `[0, 1)`
/// (values outside are clamped). Never below `base / 2` nor above `max`, never zero (1 ms at
/// least, so a retry is never due in the instant it failed).
#[must_use]
pub fn delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let max = max.max(base);
    let exp = attempt.saturating_sub(1).min(63);
    let factor = 1u128 << exp;
    let raw = base.as_millis().saturating_mul(factor);
    let capped = raw.min(max.as_millis());
    let capped = u64::try_from(capped).unwrap_or(u64::MAX);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = capped / 2;
    // The jittered half is at most `capped - half`, computed in f64 only over that range.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let extra = ((capped - half) as f64 * jitter) as u64;
    Duration::from_millis(half.saturating_add(extra).min(capped).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn grows_exponentially_without_jitter_at_the_top() {
        let top: Vec<u128> = (1..=5)
            .map(|a| delay(a, BASE, MAX, 0.999_999).as_millis())
            .collect();
        assert_eq!(top, [499, 999, 1999, 3999, 7999]);
    }

    #[test]
    fn jitter_zero_is_half_the_step() {
        assert_eq!(delay(1, BASE, MAX, 0.0), Duration::from_millis(250));
        assert_eq!(delay(3, BASE, MAX, 0.0), Duration::from_millis(1000));
    }

    #[test]
    fn capped_at_max_for_huge_attempts() {
        for a in [20, 63, 64, 1000, u32::MAX] {
            let d = delay(a, BASE, MAX, 0.5);
            assert!(d <= MAX && d >= MAX / 2, "{a}: {d:?}");
        }
    }

    #[test]
    fn hostile_jitter_and_zero_attempt_stay_in_range() {
        for j in [f64::NAN, f64::INFINITY, -1.0, 7.0] {
            let d = delay(2, BASE, MAX, j);
            assert!(d >= BASE / 2 && d <= BASE * 2, "{j}: {d:?}");
        }
        assert_eq!(delay(0, BASE, MAX, 0.0), Duration::from_millis(250));
    }

    #[test]
    fn never_zero_even_with_zero_base() {
        assert_eq!(
            delay(1, Duration::ZERO, Duration::ZERO, 0.0),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn max_below_base_uses_base() {
        assert_eq!(
            delay(9, BASE, Duration::from_millis(1), 0.0),
            Duration::from_millis(250)
        );
    }
}
