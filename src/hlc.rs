//! Versions and the hybrid logical clock that makes them.
//!
//! Every write gets a [`Version`] from its coordinator: wall-clock
//! milliseconds, a counter that orders writes within one millisecond (or
//! while the wall clock lags behind a version already seen), and the
//! coordinator's node id as the final tie-breaker. Versions compare in that
//! field order, so the newest write wins everywhere (last-writer-wins).

use std::time::{SystemTime, UNIX_EPOCH};

/// The version of one write; the derived order is last-writer-wins order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Milliseconds since the Unix epoch, never behind any version seen.
    pub ms: u64,
    /// Orders writes that share `ms`; a clock keeps it at most
    /// [`MAX_COUNTER`] (the store packs it into 16 bits).
    pub counter: u32,
    /// The coordinator that made the version: breaks exact ties.
    pub node: u32,
}

impl Version {
    /// The encoded size in bytes (ms, counter, node; big-endian).
    pub const WIRE_LEN: usize = 16;

    /// Appends the 16-byte big-endian encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ms.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.node.to_be_bytes());
    }

    /// Decodes 16 bytes written by [`Version::encode`]; `None` if short.
    pub fn decode(bytes: &[u8]) -> Option<Version> {
        let ms = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
        let counter = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
        let node = u32::from_be_bytes(bytes.get(12..16)?.try_into().ok()?);
        Some(Version { ms, counter, node })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.ms, self.counter, self.node)
    }
}

/// The most two hosts' wall clocks may disagree, in milliseconds: what
/// last-writer-wins assumes of the cluster's clock synchronisation (NTP
/// keeps hosts within a few). Deadlines keep this margin (a coordinator
/// does not make a version this close to its request's deadline), and a
/// version further ahead of the receiver's clock is refused as FUTURE.
pub const MAX_SKEW_MS: u64 = 100;

/// The largest counter a clock makes: past it the clock moves to the next
/// millisecond instead.
pub const MAX_COUNTER: u32 = u16::MAX as u32;

/// A hybrid logical clock owned by one node.
#[derive(Debug)]
pub struct Clock {
    node: u32,
    last: Version,
}

impl Clock {
    /// A clock for node `node`, starting at the current wall time.
    pub fn new(node: u32) -> Clock {
        Clock { node, last: Version::default() }
    }

    /// A fresh version newer than every version made or observed so far;
    /// `now` is the wall clock in milliseconds (passed in by the role's driver).
    pub fn tick(&mut self, now: u64) -> Version {
        let before = self.last;
        self.last = if now > self.last.ms {
            Version { ms: now, counter: 0, node: self.node }
        } else if self.last.counter >= MAX_COUNTER {
            Version { ms: self.last.ms.saturating_add(1), counter: 0, node: self.node }
        } else {
            Version { ms: self.last.ms, counter: self.last.counter + 1, node: self.node }
        };
        crate::invariant::check(self.last > before, || format!("clock went from {before} to {}", self.last));
        self.last
    }

    /// Moves the clock past a version seen from elsewhere (a replica's data).
    pub fn observe(&mut self, seen: Version) {
        if (seen.ms, seen.counter) > (self.last.ms, self.last.counter) {
            self.last = Version { node: self.node, ..seen };
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing() {
        let mut c = Clock::new(3);
        let mut prev = c.tick(wall_ms());
        for _ in 0..10_000 {
            let v = c.tick(wall_ms());
            assert!(v > prev);
            prev = v;
        }
    }

    #[test]
    fn observe_moves_past_a_future_version() {
        let mut c = Clock::new(1);
        let future = Version { ms: wall_ms() + 60_000, counter: 7, node: 9 };
        c.observe(future);
        assert!(c.tick(wall_ms()) > future);
    }

    #[test]
    fn the_counter_stays_within_16_bits() {
        let mut c = Clock::new(1);
        c.observe(Version { ms: wall_ms() + 60_000, counter: MAX_COUNTER - 2, node: 2 });
        let mut prev = c.tick(wall_ms());
        for _ in 0..10 {
            let v = c.tick(wall_ms());
            assert!(v > prev && v.counter <= MAX_COUNTER, "{v}");
            prev = v;
        }
    }

    #[test]
    fn a_clock_at_the_end_of_time_does_not_wrap_to_zero() {
        let mut c = Clock::new(1);
        c.observe(Version { ms: u64::MAX, counter: MAX_COUNTER, node: 2 });
        assert_eq!(c.tick(wall_ms()).ms, u64::MAX);
    }

    #[test]
    fn node_id_breaks_ties() {
        let a = Version { ms: 5, counter: 1, node: 1 };
        let b = Version { ms: 5, counter: 1, node: 2 };
        assert!(b > a);
        let mut buf = Vec::new();
        b.encode(&mut buf);
        assert_eq!(Version::decode(&buf), Some(b));
        assert_eq!(Version::decode(&buf[..15]), None);
    }
}
