//! The daemon's two clocks, as one seam: the wall clock (RFC 3339 times:
//! a grant's `expires_at`, a command's freshness, audit record times) and
//! the monotonic clock (a grant's deadline, which a wall clock set back
//! cannot extend).
//!
//! [`Clock::default`] is the system's clocks, unchanged: `Utc::now()` and
//! `Instant::now()`. A test makes a [`Clock::stepped`] one and moves it:
//! [`Clock::set_wall_by`] is the device's clock being set (forward or
//! back, the monotonic clock unmoved), [`Clock::pass`] is time passing
//! (both move). Only the decision path reads it (the gate's `now`, the
//! grant's two deadlines, the denial windows, the start, the records'
//! times); timers (a task's timeout, the denial window's close) stay on
//! tokio's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

/// The wall and monotonic clocks, the system's unless [`Clock::stepped`].
///
/// # Defaults
/// The system's clocks, with no offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offsets: Option<Arc<Offsets>>,
}

/// How far a stepped clock is from the system's: milliseconds.
#[derive(Debug, Default)]
struct Offsets {
    wall_ms: AtomicI64,
    mono_ms: AtomicU64,
}

impl Clock {
    /// A clock that starts at the system's time and moves only when told
    /// to move on top of it (tests).
    pub fn stepped() -> Clock {
        Clock { offsets: Some(Arc::default()) }
    }

    /// The wall clock now.
    pub fn wall(&self) -> DateTime<Utc> {
        let now = Utc::now();
        match &self.offsets {
            None => now,
            Some(o) => now + TimeDelta::milliseconds(o.wall_ms.load(Ordering::SeqCst)),
        }
    }

    /// The monotonic clock now.
    pub fn mono(&self) -> Instant {
        let now = Instant::now();
        match &self.offsets {
            None => now,
            Some(o) => now + Duration::from_millis(o.mono_ms.load(Ordering::SeqCst)),
        }
    }

    /// Sets the wall clock forward (`by` > 0) or back (`by` < 0), whole
    /// milliseconds; the monotonic clock does not move. No effect on the
    /// system's clock.
    pub fn set_wall_by(&self, by: TimeDelta) {
        if let Some(o) = &self.offsets {
            o.wall_ms.fetch_add(by.num_milliseconds(), Ordering::SeqCst);
        }
    }

    /// Lets `by` pass on both clocks (whole milliseconds). No effect on the
    /// system's clock.
    pub fn pass(&self, by: Duration) {
        if let Some(o) = &self.offsets {
            let ms = by.as_millis().min(i64::MAX as u128) as i64;
            o.wall_ms.fetch_add(ms, Ordering::SeqCst);
            o.mono_ms.fetch_add(ms as u64, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stepped_clock_moves_its_wall_alone_or_both() {
        let clock = Clock::stepped();
        let (wall, mono) = (clock.wall(), clock.mono());
        clock.set_wall_by(TimeDelta::seconds(-600));
        assert!(clock.wall() < wall - TimeDelta::seconds(599));
        assert!(clock.mono() >= mono && clock.mono() < mono + Duration::from_secs(60));
        clock.pass(Duration::from_secs(3600));
        assert!(clock.wall() > wall + TimeDelta::seconds(2999));
        assert!(clock.mono() >= mono + Duration::from_secs(3600));
        // The system's clock is not a stepped one: telling it to move does nothing.
        let real = Clock::default();
        real.pass(Duration::from_secs(3600));
        assert!(real.wall() < Utc::now() + TimeDelta::seconds(60));
    }
}
