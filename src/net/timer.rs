//! Timers for the event loop: a min-heap of deadlines with lazy cancellation.
//!
//! A timer carries a payload of the role's timer type (a typed enum: a
//! heartbeat tick, a retry). Time is passed in, never read here, so the
//! simulator can drive the same timers with its own clock. Cancelling
//! removes the payload from a map; the heap entry stays until it surfaces
//! and is then skipped, so cancelling is O(log n)-free.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Identifies one armed timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

/// The armed timers of one loop.
#[derive(Debug)]
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    /// Payloads of timers still armed; a missing entry means cancelled or fired.
    armed: HashMap<TimerId, T>,
    next: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Timers<T> {
        Timers { heap: BinaryHeap::new(), armed: HashMap::new(), next: 0 }
    }
}

impl<T> Timers<T> {
    /// No timers.
    pub fn new() -> Timers<T> {
        Timers::default()
    }

    /// Arms a timer that fires `delay` after `now` with `payload`. Timers due
    /// at the same instant fire in the order they were armed.
    pub fn add(&mut self, now: Instant, delay: Duration, payload: T) -> TimerId {
        self.next += 1;
        let id = TimerId(self.next);
        self.heap.push(Reverse((now + delay, id)));
        self.armed.insert(id, payload);
        id
    }

    /// Disarms a timer; harmless if it already fired.
    pub fn cancel(&mut self, id: TimerId) {
        self.armed.remove(&id);
    }

    /// How long the loop may sleep before the earliest armed timer is due.
    pub fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        self.next_deadline().map(|at| at.saturating_duration_since(now))
    }

    /// When the earliest armed timer is due.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.armed.contains_key(&id) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns the payloads of every timer due by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<T> {
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
        let now = Instant::now();
        t.add(now, Duration::from_millis(20), 2);
        let c = t.add(now, Duration::from_millis(5), 99);
        t.add(now, Duration::from_millis(1), 1);
        t.cancel(c);
        assert_eq!(t.next_timeout(now), Some(Duration::from_millis(1)));
        assert!(t.expired(now).is_empty());
        let later = now + Duration::from_millis(50);
        assert_eq!(t.expired(later), vec![1, 2]);
        assert!(t.is_empty());
        assert_eq!(t.next_timeout(now), None);
    }
}
