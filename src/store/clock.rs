//! The process clock: wall time read once at start, advanced by the monotonic
//! clock. Why not `SystemTime::now()` each time: an NTP step would make time
//! run backwards mid-turn and charge a participant a negative (or huge) turn.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::engine::Micros;

#[derive(Clone, Debug)]
pub struct Clock {
    base_wall: Micros,
    base_mono: Instant,
    /// Added to every reading; lets tests give a replica a skewed clock.
    offset: Micros,
}

impl Clock {
    pub fn new() -> Self {
        Self::with_offset(0)
    }

    pub fn with_offset(offset: Micros) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as Micros)
            .unwrap_or(0);
        Self {
            base_wall: wall,
            base_mono: Instant::now(),
            offset,
        }
    }

    pub fn now(&self) -> Micros {
        self.base_wall + self.base_mono.elapsed().as_micros() as Micros + self.offset
    }

    /// The monotonic instant at which this clock reads `at` (for sleeping until a deadline).
    pub fn instant_at(&self, at: Micros) -> Instant {
        let from_base = at - self.base_wall - self.offset;
        if from_base <= 0 {
            return self.base_mono;
        }
        self.base_mono + std::time::Duration::from_micros(from_base as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_runs_backwards_and_maps_back_to_instants() {
        let c = Clock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        let at = c.instant_at(a + 5_000);
        let d = at.duration_since(c.base_mono).as_micros() as i64;
        assert_eq!(c.base_wall + d, a + 5_000);
    }
}
