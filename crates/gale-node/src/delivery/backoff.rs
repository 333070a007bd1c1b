//! How long a failed attempt waits before the next: the trigger's backoff
//! (`min(max, initial × multiplier^(attempt−1))`) times a random factor,
//! so events that failed together do not all come back at once.

use std::time::Duration;

/// `delay` scaled by a random factor in [0.5, 1].
pub fn jitter(delay: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or(u32::MAX) as f64 / u32::MAX as f64;
    delay.mul_f64(0.5 + r / 2.0)
}
