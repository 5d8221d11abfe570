//! The seam between role logic and whatever drives it.
//!
//! A role (manager, storage node, load generator) is a state machine in the
//! manner of quinn-proto: it never touches a socket, a clock or a random
//! source itself. Each [`Handler`](super::Handler) callback is given an
//! [`Io`]: the real [`Reactor`](super::Reactor) (epoll, the monotonic and
//! wall clocks, a seeded generator) or `gtstore-sim`'s simulated cluster,
//! which implements the same trait over a simulated network and clock.
//! Everything a role does to the outside world goes through it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::codec::Message;
use super::error::Result;
use super::event_loop::ConnId;
use super::frame::Framing;
use super::timer::TimerId;

/// What a role may ask of its driver.
pub trait Io {
    /// The role's data about each connection (who is on the other end).
    type Data;
    /// The role's timers, a typed enum.
    type Timer;

    /// Queues `msg` on `id`; false if the connection is gone. It is written
    /// after this turn's [`Handler::before_sleep`](super::Handler::before_sleep)
    /// (the group commit), so an acknowledgement never leaves before its fsync.
    fn send(&mut self, id: ConnId, msg: &Message) -> bool;
    /// Queues `msg` to leave before the turn's fsync: for requests to other
    /// servers and answers that acknowledge nothing new. Output queued on the
    /// same connection with [`Io::send`] earlier in the turn holds it back.
    fn send_early(&mut self, id: ConnId, msg: &Message) -> bool;
    /// Queues `msg`, then closes `id` once it has been written.
    fn send_and_close(&mut self, id: ConnId, msg: &Message);
    /// Starts a connection to `addr`; `on_connected` or `on_closed` tells how
    /// it ended.
    fn connect(&mut self, addr: SocketAddr, data: Self::Data) -> Result<ConnId>;
    /// [`Io::connect`] for a connection that speaks `framing` (the
    /// simulator carries messages, not bytes: it ignores the framing).
    fn connect_framed(&mut self, addr: SocketAddr, data: Self::Data, _framing: Framing) -> Result<ConnId> {
        self.connect(addr, data)
    }
    /// Closes `id` at the end of the turn (`on_closed` follows).
    fn close(&mut self, id: ConnId);
    /// The role's data for an open connection.
    fn data(&self, id: ConnId) -> Option<&Self::Data>;
    /// The role's data for an open connection, to change.
    fn data_mut(&mut self, id: ConnId) -> Option<&mut Self::Data>;
    /// True while `id` is open.
    fn is_open(&self, id: ConnId) -> bool {
        self.data(id).is_some()
    }
    /// Bytes queued on `id` and not written yet (0 if the driver does not
    /// say): a role producing a long stream waits while it is large.
    fn pending_output(&self, _id: ConnId) -> usize {
        0
    }
    /// The durations of the loop's turns since it started, if the driver
    /// times them (the real loop with `Reactor::turns` set).
    fn loop_turns(&self) -> Option<&crate::metrics::Histogram> {
        None
    }
    /// Arms `timer` to fire after `delay`.
    fn add_timer(&mut self, delay: Duration, timer: Self::Timer) -> TimerId;
    /// Disarms a timer; harmless if it already fired.
    fn cancel_timer(&mut self, id: TimerId);
    /// The monotonic clock.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch (versions are made of it).
    fn wall_ms(&self) -> u64;
    /// A random number from the driver's seeded generator.
    fn random(&mut self) -> u64;
    /// Fills `buf` with bytes nobody can predict, for the nonces of
    /// [`super::auth`]: the kernel's generator in the real driver (it
    /// aborts the process if that fails), the seeded one in the simulator.
    fn secure_random(&mut self, buf: &mut [u8]);
    /// Ends the loop after this turn.
    fn stop(&mut self);
    /// The process cannot go on safely (a failed fsync): it ends now, before
    /// any queued output of this turn is written. The real driver exits with
    /// `code`; the simulator treats it as a crash. The caller returns at once.
    fn abort(&mut self, code: i32, why: &str);
}

/// A small seeded generator (SplitMix64): enough for jitter and nonces in
/// roles, and what the simulator derives its streams from.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `per_million` / 1,000,000.
    pub fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_spread() {
        let (mut a, mut b) = (SplitMix::new(7), SplitMix::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = SplitMix::new(1);
        let below: Vec<u64> = (0..1000).map(|_| c.below(10)).collect();
        assert!((0..10).all(|d| below.contains(&d)));
        assert!(below.iter().all(|&d| d < 10));
    }
}
