//! Key expiry in the simulation: which puts carry an expiry (drawn from a
//! stream of its own, so seeds without TTLs run as they did before), and
//! when an expiring value may, and must, read as expired.
//!
//! The checker models an acknowledged put of V with absolute expiry E as
//! the write of V followed by a virtual delete of the key at E, in V's own
//! place in last-writer-wins order (the reaper reclaims an expired value as
//! a tombstone of its version). E is a wall-clock time, and every node's
//! clock is off true time by up to [`MAX_SKEW_MS`]; an [`Expiry::After`] is
//! stamped by the coordinator's clock somewhere inside the put's interval.
//! So the expiry takes effect, in true time, somewhere inside a window.

use super::history::Op;
use super::host::Time;
use super::plan::MAX_SKEW_MS;
use super::WALL_BASE_MS;
use crate::net::codec::Expiry;
use crate::net::SplitMix;

/// µs per ms.
const MS: Time = 1000;
/// The skew bound in µs.
const SKEW: Time = MAX_SKEW_MS as Time * MS;

/// What one client draws for the expiry of its puts.
#[derive(Debug)]
pub struct TtlDraw {
    /// A put carries an expiry one time in this many (0: never).
    one_in: u64,
    /// The client's own stream for expiries.
    rng: SplitMix,
}

impl TtlDraw {
    /// A client's drawer: `one_in` from the plan, `seed` the client's.
    pub fn new(one_in: u64, seed: u64) -> TtlDraw {
        TtlDraw { one_in, rng: SplitMix::new(seed ^ 0x5454_4c5f_6472_6177) }
    }

    /// The expiry of a put invoked at `now`. Draws nothing when the seed
    /// has no TTLs. Half 0.2 to 3.2 s (the key expires during the run and may
    /// be reclaimed), a quarter 1 to 100 ms (it expires while the write is
    /// still being copied), a quarter 5 to 65 s (some outlive the run).
    pub fn draw(&mut self, now: Time) -> Expiry {
        if self.one_in == 0 || self.rng.below(self.one_in) != 0 {
            return Expiry::Never;
        }
        let ms = match self.rng.below(8) {
            0 | 1 => 5_000 + self.rng.below(60_000),
            // Racing the write's own replication and its first reads.
            2 | 3 => 1 + self.rng.below(100),
            _ => 200 + self.rng.below(3_000),
        };
        match self.rng.below(2) {
            0 => Expiry::After(ms),
            _ => Expiry::At(wall_ms(now) + ms),
        }
    }
}

/// The true wall clock at simulated time `t` (ms since the epoch).
pub fn wall_ms(t: Time) -> u64 {
    WALL_BASE_MS + t / MS
}

/// The simulated time at which the true wall clock reads `ms`.
fn time_of_wall(ms: u64) -> Time {
    ms.saturating_sub(WALL_BASE_MS).saturating_mul(MS)
}

/// The window of true time in which put `op`'s value expires: from the
/// first instant some node's clock may judge it expired to the instant
/// after which every node's does. None for a put without an expiry.
/// `effect_end` is the latest time the put may take effect.
pub fn window(op: &Op, effect_end: Time) -> Option<(Time, Time)> {
    match op.expiry {
        Expiry::Never => None,
        // A node with clock skew s judges it expired from true time at - s.
        Expiry::At(at) => {
            let t = time_of_wall(at.max(1));
            Some((t.saturating_sub(SKEW), t.saturating_add(SKEW)))
        }
        // Stamped by the coordinator's clock (skew s1, ms rounded down)
        // while the put runs, judged by another's (s2): twice the skew.
        Expiry::After(ms) => {
            let d = ms.saturating_mul(MS);
            let first = op.invoke.saturating_sub(MS).saturating_add(d).saturating_sub(2 * SKEW);
            Some((first, effect_end.saturating_add(d).saturating_add(2 * SKEW)))
        }
    }
}

/// True if a record with absolute expiry `expires` (0: never) reads as
/// expired on every node's clock at true time `t`.
pub fn certainly_expired(expires: u64, t: Time) -> bool {
    expires != 0 && time_of_wall(expires).saturating_add(SKEW) <= t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::history::{History, Kind, Outcome};

    fn put(expiry: Expiry, invoke: Time, end: Time) -> Op {
        let mut h = History::default();
        let id = h.invoke(0, Kind::Put, b"k".to_vec(), Some(b"v".to_vec()), invoke);
        h.set_expiry(id, expiry);
        h.complete(id, Outcome::Acked, 1, end);
        h.ops.remove(id)
    }

    #[test]
    fn windows_cover_the_skew_and_the_stamping() {
        assert_eq!(window(&put(Expiry::Never, 0, 10), 10), None);
        let at = put(Expiry::At(wall_ms(5 * 1_000_000)), 0, 10);
        assert_eq!(window(&at, 10), Some((5_000_000 - SKEW, 5_000_000 + SKEW)));
        let after = put(Expiry::After(1_000), 2_000_000, 2_500_000);
        assert_eq!(window(&after, 2_500_000), Some((2_999_000 - 2 * SKEW, 3_500_000 + 2 * SKEW)));
    }

    #[test]
    fn seeds_without_ttls_draw_nothing() {
        let mut d = TtlDraw::new(0, 7);
        let before = d.rng.clone().next_u64();
        assert_eq!(d.draw(0), Expiry::Never);
        assert_eq!(d.rng.next_u64(), before);
    }
}
