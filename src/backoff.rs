//! Exponential backoff with jitter, shared by MQTT reconnects and
//! Elasticsearch retries.

use std::time::Duration;

use rand::Rng;

/// Delay before retry number `attempt` (0-based): `initial * 2^attempt`
/// capped at `max`, with jitter taking it down to half that (so many
/// clients that failed together do not come back together).
pub fn delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let base = initial.saturating_mul(factor).min(max);
    let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
    if nanos < 2 {
        return base;
    }
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
}

/// [`delay`] with the attempt count kept: `next_delay` after each failure,
/// `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.initial, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(500) && d[0] <= Duration::from_secs(1));
        assert!(d[3] >= Duration::from_secs(4) && d[3] <= Duration::from_secs(8));
        assert!(d[5] <= Duration::from_secs(8));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
