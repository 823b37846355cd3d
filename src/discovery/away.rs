//! Whether this node was away: its host suspended, its process stopped,
//! or its wall clock set. mdns-sd keeps the cache's clock on the wall
//! clock, so on the node's return every record whose end the wall clock
//! passed meanwhile runs out at once, and mdns-sd asks the link about them
//! with the cache's other records as known answers: its PTR records (75
//! minutes to live) keep the nodes quiet. A provider whose last refresh
//! went out before the suspend was gone from the table until its next
//! refresh, up to 80 s (62 s for one of a node's two peers in a suspend
//! emulated in the lab: its process stopped, then its wall clock moved
//! ten minutes ahead), and a backward step left the records to live for
//! as long as the step. The browse is made afresh instead (see
//! `mdns::browse`), and seals do not expire while it relearns the cache:
//! by the wall clock every one is past its time.
//!
//! The monotonic clock stops while the host is suspended and the wall
//! clock does not, so the two are compared: a suspend or a step shows as
//! their difference, a stopped process (or a paused VM) as a gap in both.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How often the clocks are looked at when nothing else looks: a node is
/// back within this of a resume it did not otherwise notice.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The least time away that counts. A record lives 120 s and is
/// refreshed every 60-80 s: a shorter absence, or a step of the wall
/// clock by less, makes no record run out that would not have otherwise
/// (an NTP slew never comes near it).
pub const AWAY_LEAST: Duration = Duration::from_secs(20);

/// How this node was away, and for how long by the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Away {
    /// Neither clock moved for the process: stopped, or its host paused.
    Stopped(Duration),
    /// The wall clock moved ahead of the monotonic one: the host was
    /// suspended, or its clock was set forward.
    Ahead(Duration),
    /// The wall clock was set back.
    Back(Duration),
}

/// The two clocks when last looked at.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    wall: SystemTime,
    mono: Instant,
}

impl Clocks {
    /// The clocks at `wall` and `mono`.
    pub fn new(wall: SystemTime, mono: Instant) -> Clocks {
        Clocks { wall, mono }
    }

    /// The clocks read now.
    pub fn now() -> Clocks {
        Clocks::new(SystemTime::now(), Instant::now())
    }

    /// Looks at the clocks at `now`: whether this node was away since they
    /// were last looked at, expected to be at most [`CHECK_EVERY`] ago.
    pub fn check(&mut self, now: Clocks) -> Option<Away> {
        let mono = now.mono.saturating_duration_since(self.mono);
        let wall = now.wall.duration_since(self.wall);
        *self = now;
        match wall {
            Ok(wall) if wall > mono + AWAY_LEAST => Some(Away::Ahead(wall - mono)),
            Ok(wall) if mono > CHECK_EVERY + AWAY_LEAST => Some(Away::Stopped(wall)),
            Ok(_) => None,
            Err(back) => {
                let back = back.duration() + mono;
                (back > AWAY_LEAST).then_some(Away::Back(back))
            }
        }
    }
}

impl Away {
    /// How long, by the wall clock, for the log.
    pub fn for_how_long(self) -> Duration {
        match self {
            Away::Stopped(d) | Away::Ahead(d) | Away::Back(d) => d,
        }
    }

    /// What it was, for the log.
    pub fn what(self) -> &'static str {
        match self {
            Away::Stopped(_) => "this process did not run (stopped, or its host paused)",
            Away::Ahead(_) => {
                "the wall clock moved ahead of the monotonic one (a suspend, or the clock set)"
            }
            Away::Back(_) => "the wall clock was set back",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(clocks: Clocks, wall: u64, mono: u64) -> Clocks {
        Clocks::new(
            clocks.wall + Duration::from_secs(wall),
            clocks.mono + Duration::from_secs(mono),
        )
    }

    #[test]
    fn the_clocks_moving_together_are_no_absence() {
        let start = Clocks::now();
        let mut c = start;
        for s in 1..100 {
            assert_eq!(c.check(at(start, 2 * s, 2 * s)), None);
        }
        // A check late by less than the least absence that counts.
        assert_eq!(c.check(at(start, 200 + 19, 200 + 19)), None);
    }

    #[test]
    fn a_suspend_shows_as_the_wall_clock_ahead() {
        let start = Clocks::now();
        let mut c = start;
        let away = c.check(at(start, 600, 1));
        assert_eq!(away, Some(Away::Ahead(Duration::from_secs(599))));
        // Counted from the return, not again.
        assert_eq!(c.check(at(start, 602, 3)), None);
    }

    #[test]
    fn a_stopped_process_shows_as_a_gap_in_both_clocks() {
        let start = Clocks::now();
        let mut c = start;
        let away = c.check(at(start, 45, 45));
        assert_eq!(away, Some(Away::Stopped(Duration::from_secs(45))));
    }

    #[test]
    fn a_wall_clock_set_back_is_noticed() {
        let start = Clocks::now();
        let mut c = at(start, 3600, 0);
        // Set back by an hour, two seconds after the last look.
        let away = c.check(at(start, 2, 2));
        assert_eq!(away, Some(Away::Back(Duration::from_secs(3600))));
        let mut c = at(start, 10, 0);
        assert_eq!(c.check(at(start, 2, 2)), None, "a small step back");
    }
}
