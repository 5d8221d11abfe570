//! Timers for the event loop: a min-heap of deadlines with lazy cancellation.
//!
//! A timer carries a `u64` that the role gives meaning to (a request id, a
//! heartbeat tick). Cancelling removes the payload from a map; the heap entry
//! stays until it surfaces and is then skipped, so cancelling is O(log n)-free.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Identifies one armed timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

/// The armed timers of one loop.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    /// Payloads of timers still armed; a missing entry means cancelled or fired.
    armed: HashMap<TimerId, u64>,
    next: u64,
}

impl Timers {
    /// No timers.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Arms a timer that fires after `delay` with `payload`.
    pub fn add(&mut self, delay: Duration, payload: u64) -> TimerId {
        self.next += 1;
        let id = TimerId(self.next);
        self.heap.push(Reverse((Instant::now() + delay, id)));
        self.armed.insert(id, payload);
        id
    }

    /// Disarms a timer; harmless if it already fired.
    pub fn cancel(&mut self, id: TimerId) {
        self.armed.remove(&id);
    }

    /// How long the loop may sleep before the earliest armed timer is due.
    pub fn next_timeout(&mut self) -> Option<Duration> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.armed.contains_key(&id) {
                return Some(at.saturating_duration_since(Instant::now()));
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns the payloads of every timer due by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(payload) = self.armed.remove(&id) {
                due.push(payload);
            }
        }
        due
    }

    /// How many timers are armed.
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_deadline_order_and_cancelled_ones_never() {
        let mut t = Timers::new();
        t.add(Duration::from_millis(20), 2);
        let c = t.add(Duration::from_millis(5), 99);
        t.add(Duration::from_millis(1), 1);
        t.cancel(c);
        assert!(t.next_timeout().unwrap() <= Duration::from_millis(1));
        let later = Instant::now() + Duration::from_millis(50);
        assert_eq!(t.expired(later), vec![1, 2]);
        assert!(t.is_empty());
        assert_eq!(t.next_timeout(), None);
    }
}
