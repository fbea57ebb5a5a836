//! Time as a component: [`Clock`] is what code that decides by time asks, so tests can
//! control it. [`SystemClock`] reads the machine's clocks; [`ManualClock`] stands still
//! until a test advances it.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time (for timestamps that outlive the process, such as object
/// keys and lease expiry) and monotonic time (for intervals and deadlines).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The wall-clock time.
    fn now(&self) -> SystemTime;

    /// A monotonic instant, for measuring intervals.
    fn instant(&self) -> Instant;

    /// Milliseconds since the Unix epoch (Kafka's timestamp unit); 0 before the epoch.
    fn now_ms(&self) -> i64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock for tests: both times start where it was created (or at a given wall time) and
/// move only by [`ManualClock::advance`].
#[derive(Debug)]
pub struct ManualClock {
    start_wall: SystemTime,
    start_instant: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock whose wall time starts at `ms` milliseconds since the Unix epoch.
    pub fn at_ms(ms: u64) -> Self {
        ManualClock {
            start_wall: UNIX_EPOCH + Duration::from_millis(ms),
            start_instant: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves both times forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut elapsed = self.elapsed.lock().unwrap_or_else(|e| e.into_inner());
        *elapsed += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ManualClock {
    /// A clock starting at the current wall time.
    fn default() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        ManualClock::at_ms(u64::try_from(now.as_millis()).unwrap_or(0))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.start_wall + self.elapsed()
    }

    fn instant(&self) -> Instant {
        self.start_instant + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::at_ms(1_000);
        let (t0, i0) = (clock.now_ms(), clock.instant());
        assert_eq!(t0, 1_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(clock.instant(), i0);
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        assert_eq!(clock.instant() - i0, Duration::from_millis(250));
    }

    #[test]
    fn system_clock_agrees_with_now_ms() {
        let a = SystemClock.now_ms();
        let b = crate::now_ms();
        assert!((b - a).abs() < 1_000, "{a} vs {b}");
    }
}
