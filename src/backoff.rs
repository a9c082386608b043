//! Attempt → delay: exponential backoff with full jitter.
//!
//! `delay = random(0, min(max, initial * multiplier^(attempt-1)))`, raised (never
//! lowered) to a server's `Retry-After`, which is itself capped. Full jitter spreads a
//! fleet of clients whose server restarted at the same moment evenly over the window
//! instead of having them return in waves. The random source is injected so the
//! machine stays deterministic under test.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A server may ask us to wait, but not for longer than this.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(500),
            multiplier: 2.0,
            max: Duration::from_secs(30),
        }
    }
}

impl BackoffPolicy {
    /// The upper end of the jitter window before retry number `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let scaled = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        if !scaled.is_finite() || scaled >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(scaled.max(0.0))
        }
    }
}

/// The source of jitter. Seeded in tests, from the OS in production; either way the seed
/// is kept, so a session's delays can be reproduced from it.
///
/// Clones share one source: supervisors cloned from one template (port-forward's
/// tunnels) draw their delays from the same stream, so their retries do not fall in step.
#[derive(Clone)]
pub struct Jitter {
    source: Arc<Mutex<JitterSource>>,
    seed: Option<u64>,
}

enum JitterSource {
    Seeded(fastrand::Rng),
    Custom(Box<dyn FnMut() -> u64 + Send>),
}

impl Jitter {
    /// A source seeded from the OS's randomness.
    pub fn from_entropy() -> Self {
        Jitter::seeded(fastrand::Rng::new().u64(..))
    }

    pub fn seeded(seed: u64) -> Self {
        Jitter {
            source: Arc::new(Mutex::new(JitterSource::Seeded(fastrand::Rng::with_seed(
                seed,
            )))),
            seed: Some(seed),
        }
    }

    /// Any source of 64 random bits at all, e.g. one that always returns the ceiling.
    pub fn from_fn(next_u64: impl FnMut() -> u64 + Send + 'static) -> Self {
        Jitter {
            source: Arc::new(Mutex::new(JitterSource::Custom(Box::new(next_u64)))),
            seed: None,
        }
    }

    /// The seed this source started from (`None` for a [`Jitter::from_fn`] source).
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    fn next_u64(&mut self) -> u64 {
        // A custom source that panicked leaves the lock poisoned; its state is still a
        // source of bits.
        let mut source = self.source.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *source {
            JitterSource::Seeded(rng) => rng.u64(..),
            JitterSource::Custom(next) => next(),
        }
    }

    /// A uniformly random duration in `[0, ceiling]`.
    fn below(&mut self, ceiling: Duration) -> Duration {
        // 53 random bits as a fraction of [0, 1] inclusive, so the ceiling is reachable.
        let unit = (self.next_u64() >> 11) as f64 / ((1u64 << 53) - 1) as f64;
        ceiling.mul_f64(unit)
    }
}

impl fmt::Debug for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Jitter")
    }
}

/// A policy plus its random source: everything the machine needs to pick a delay.
#[derive(Debug)]
pub struct Backoff {
    pub policy: BackoffPolicy,
    jitter: Jitter,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy, jitter: Jitter) -> Self {
        Backoff { policy, jitter }
    }

    /// The delay before retry number `attempt` (1-based), at least `retry_after`
    /// (capped at [`RETRY_AFTER_CAP`]) when the server sent one.
    pub fn delay(&mut self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = self.jitter.below(self.policy.ceiling(attempt));
        match retry_after {
            Some(floor) => jittered.max(floor.min(RETRY_AFTER_CAP)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_of_a_jitter_draw_from_one_stream() {
        let mut template = Jitter::seeded(7);
        let mut tunnel = template.clone();
        let mut alone = Jitter::seeded(7);
        // Two tunnels cloned from one template do not retry in step: the clone's draw is
        // the template's next one, not a repeat of its last.
        assert_eq!(template.next_u64(), alone.next_u64());
        assert_eq!(tunnel.next_u64(), alone.next_u64());
        assert_eq!(tunnel.seed(), Some(7));
    }

    #[test]
    fn ceiling_grows_exponentially_then_caps() {
        let p = BackoffPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(500));
        assert_eq!(p.ceiling(2), Duration::from_millis(1000));
        assert_eq!(p.ceiling(3), Duration::from_millis(2000));
        assert_eq!(p.ceiling(7), Duration::from_secs(30));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delays_stay_within_the_window() {
        let mut b = Backoff::new(BackoffPolicy::default(), Jitter::seeded(7));
        for attempt in 1..40 {
            let ceiling = b.policy.ceiling(attempt);
            for _ in 0..50 {
                assert!(b.delay(attempt, None) <= ceiling);
            }
        }
    }

    #[test]
    fn jitter_is_spread_not_constant() {
        let mut b = Backoff::new(BackoffPolicy::default(), Jitter::seeded(1));
        let delays: Vec<_> = (0..200).map(|_| b.delay(5, None)).collect();
        let ceiling = b.policy.ceiling(5);
        let low = delays.iter().filter(|d| **d < ceiling / 2).count();
        // Full jitter: about half below the midpoint. Bounds wide enough that a correct
        // uniform source never fails, narrow enough that a constant one always does.
        assert!((60..=140).contains(&low), "{low} of 200 below the midpoint");
    }

    #[test]
    fn same_seed_same_delays() {
        let mut a = Backoff::new(BackoffPolicy::default(), Jitter::seeded(42));
        let mut b = Backoff::new(BackoffPolicy::default(), Jitter::seeded(42));
        for attempt in 1..20 {
            assert_eq!(a.delay(attempt, None), b.delay(attempt, None));
        }
    }

    #[test]
    fn retry_after_raises_but_never_lowers() {
        let mut b = Backoff::new(BackoffPolicy::default(), Jitter::seeded(3));
        for _ in 0..50 {
            assert!(b.delay(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
        // A tiny Retry-After does not cut a long window short: the result is still a
        // draw from the window, at least the floor.
        let policy = BackoffPolicy {
            initial: Duration::from_secs(10),
            ..BackoffPolicy::default()
        };
        let mut b = Backoff::new(policy, Jitter::from_fn(|| u64::MAX));
        assert_eq!(
            b.delay(1, Some(Duration::from_millis(1))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn retry_after_is_capped_at_five_minutes() {
        let mut b = Backoff::new(BackoffPolicy::default(), Jitter::seeded(3));
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(86_400))),
            RETRY_AFTER_CAP
        );
    }
}
