//! The checker: an oracle outside the system, over the history of client
//! operations and the replicas' final state.
//!
//! Rules (README "Testing"):
//! - (a) For every key, the final quorum read and every replica's copy come
//!   from a write that no acknowledged write of the key follows in real
//!   time: an acknowledged write is never lost, nor overwritten by a write
//!   that completed before it began. A write the client gave up on may land
//!   until its deadline (the client's total deadline after its invocation),
//!   never later.
//! - (b) A deleted key does not come back without a later put (the same
//!   rule with deletes as writes).
//! - Reads return only values some put wrote, and never one invoked after
//!   the read ended.
//! - (c) After healing every sector has N copies and they agree.
//! - (d) Every join and leave finished and the final reads succeeded.
//! - Expiry (`ttl`): a put of V with an expiry is the write of V followed,
//!   at its expiry (a window of true time), by a virtual delete of V in
//!   V's own place in last-writer-wins order. A read never returns V once
//!   it certainly expired; no value, or no copy, is allowed as soon as V
//!   possibly expired (the same rule (b) absence as after a delete); an
//!   older value V overwrote stays overwritten (rule (a) is unchanged).
//! - A read begun in a settled cluster returns no version older than its
//!   floor (see `floor`).

use std::collections::BTreeMap;

use super::client::op_deadline;
use super::history::{History, Kind, Op, Outcome};
use super::host::Time;
use super::ttl;

/// Where a final copy of a key came from, as far as can be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Copy {
    /// This value (a put's).
    Value(Vec<u8>),
    /// A tombstone or nothing at all.
    Absent,
}

/// The latest time `op` may take effect: its acknowledgement, or for a
/// write its client gave up on, its deadline.
pub(crate) fn effect_end(op: &Op) -> Time {
    match (&op.outcome, op.end) {
        (Outcome::Acked, Some(end)) => end,
        _ => op.invoke + op_deadline(),
    }
}

/// True if `op` is a put whose value may have expired by true time `at`:
/// it may then read as absent, as if deleted.
fn may_have_expired(op: &Op, at: Time) -> bool {
    op.kind == Kind::Put && ttl::window(op, effect_end(op)).is_some_and(|(first, _)| first <= at)
}

/// True if `op` is a put whose value expired on every clock by `at`.
fn surely_expired(op: &Op, at: Time) -> bool {
    op.kind == Kind::Put && ttl::window(op, effect_end(op)).is_some_and(|(_, last)| last <= at)
}

/// Checks one key's final copy (`what` names where it was seen), judged
/// after every expiry. Returns a description of the violation, if any.
pub fn check_copy(history: &History, key: &[u8], copy: &Copy, what: &str) -> Option<String> {
    check_copy_at(history, key, copy, what, Time::MAX)
}

/// Checks one key's copy as seen at true time `at` (an expiry possibly
/// past by then allows an absence). Returns the violation, if any.
pub fn check_copy_at(history: &History, key: &[u8], copy: &Copy, what: &str, at: Time) -> Option<String> {
    let writes: Vec<&Op> = history.ops.iter().filter(|o| o.is_write() && o.key == key).collect();
    let acked_after = |end: Time| writes.iter().find(|w| w.acked() && w.invoke > end).copied();
    match copy {
        Copy::Value(v) => {
            let Some(src) = writes.iter().find(|w| w.kind == Kind::Put && w.value.as_deref() == Some(v)) else {
                return Some(format!("{what}: value {} was never written", show(v)));
            };
            let later = acked_after(effect_end(src))?;
            Some(format!(
                "{what}: {} (put by client {} at {}) survives, but {} acknowledged at {} began after it ended at {}",
                show(v),
                src.client,
                ms(src.invoke),
                describe(later),
                ms(later.end.unwrap_or(0)),
                ms(effect_end(src))
            ))
        }
        Copy::Absent => {
            // Deletes, and puts whose values may have expired (their virtual deletes).
            let absent_after = |w: &&&Op| w.kind == Kind::Del || may_have_expired(w, at);
            let last_delete = writes.iter().filter(absent_after).map(|w| effect_end(w)).max().unwrap_or(0);
            let lost = writes.iter().find(|w| w.kind == Kind::Put && w.acked() && w.invoke > last_delete)?;
            Some(format!(
                "{what}: no value, but {} was acknowledged at {} after every delete or expiry could have landed",
                describe(lost),
                ms(lost.end.unwrap_or(0))
            ))
        }
    }
}

/// Reads return only values that were written before they ended, and
/// never one that expired on every clock before they began.
pub fn check_reads(history: &History) -> Vec<String> {
    let mut puts: BTreeMap<(&[u8], &[u8]), &Op> = BTreeMap::new();
    for op in history.ops.iter().filter(|o| o.kind == Kind::Put) {
        if let Some(v) = &op.value {
            puts.insert((op.key.as_slice(), v.as_slice()), op);
        }
    }
    let mut bad = Vec::new();
    for op in history.ops.iter().filter(|o| o.kind == Kind::Get) {
        if let (Outcome::Value(v), Some(end)) = (&op.outcome, op.end) {
            match puts.get(&(op.key.as_slice(), v.as_slice())) {
                Some(put) if surely_expired(put, op.invoke) => bad.push(format!(
                    "{}: read a value that expired by every clock before the read began ({} with {:?})",
                    describe(op),
                    describe(put),
                    put.expiry
                )),
                Some(put) if put.invoke <= end => {}
                Some(_) => bad.push(format!("{}: read a value written after the read ended", describe(op))),
                None => bad.push(format!("{}: read {} that no put wrote", describe(op), show(v))),
            }
        }
    }
    bad
}

/// One operation for a report.
pub fn describe(op: &Op) -> String {
    let what = match op.kind {
        Kind::Put => {
            let expiry = match op.expiry {
                crate::net::codec::Expiry::Never => String::new(),
                e => format!(" ({e:?})"),
            };
            format!("put {}={}{expiry}", show(&op.key), show(op.value.as_deref().unwrap_or_default()))
        }
        Kind::Del => format!("del {}", show(&op.key)),
        Kind::Get => format!("get {}", show(&op.key)),
    };
    let end = op.end.map_or("-".to_string(), ms);
    format!("client {} {what} [{} .. {end}] {:?} via server{}", op.client, ms(op.invoke), op.outcome, op.node)
}

/// Bytes for people.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A simulated time in milliseconds, for reports.
pub fn ms(t: Time) -> String {
    format!("{}.{:03}s", t / 1_000_000, (t / 1000) % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(h: &mut History, client: usize, v: &str, invoke: Time, end: Time, acked: bool) {
        let id = h.invoke(client, Kind::Put, b"k".to_vec(), Some(v.as_bytes().to_vec()), invoke);
        let outcome = if acked { Outcome::Acked } else { Outcome::Failed("timeout".into()) };
        h.complete(id, outcome, 1, end);
    }

    #[test]
    fn a_write_overwritten_by_an_older_one_is_caught() {
        let mut h = History::default();
        put(&mut h, 0, "v1", 0, 400_000, true);
        put(&mut h, 1, "v2", 2_400_000, 2_500_000, true);
        assert!(check_copy(&h, b"k", &Copy::Value(b"v2".to_vec()), "read").is_none());
        assert!(check_copy(&h, b"k", &Copy::Value(b"v1".to_vec()), "read").is_some(), "v2 was lost");
        assert!(check_copy(&h, b"k", &Copy::Absent, "read").is_some(), "both were lost");
        assert!(check_copy(&h, b"k", &Copy::Value(b"v9".to_vec()), "read").is_some(), "never written");
    }

    #[test]
    fn a_write_given_up_on_may_land_until_its_deadline_only() {
        let mut h = History::default();
        put(&mut h, 0, "v1", 0, 300_000, false);
        put(&mut h, 1, "v2", 1_000_000, 1_100_000, true);
        assert!(check_copy(&h, b"k", &Copy::Value(b"v1".to_vec()), "read").is_none(), "within its deadline");
        put(&mut h, 1, "v3", op_deadline() + 1, op_deadline() + 100_000, true);
        assert!(check_copy(&h, b"k", &Copy::Value(b"v1".to_vec()), "read").is_some(), "past its deadline");
    }

    fn expiring(h: &mut History, v: &str, invoke: Time, end: Time, expiry: crate::net::codec::Expiry) {
        put(h, 0, v, invoke, end, true);
        h.set_expiry(h.ops.len() - 1, expiry);
    }

    #[test]
    fn an_expired_value_may_be_absent_but_not_what_it_overwrote() {
        use crate::net::codec::Expiry;
        let mut h = History::default();
        put(&mut h, 0, "v1", 0, 100_000, true);
        expiring(&mut h, "v2", 200_000, 300_000, Expiry::After(1_000));
        let (before, after) = (1_000_000, 1_500_000);
        assert!(check_copy_at(&h, b"k", &Copy::Absent, "read", before).is_some(), "not expired yet");
        assert!(check_copy_at(&h, b"k", &Copy::Absent, "read", after).is_none(), "may have expired");
        assert!(check_copy_at(&h, b"k", &Copy::Value(b"v2".to_vec()), "copy", after).is_none(), "kept expired");
        assert!(check_copy_at(&h, b"k", &Copy::Value(b"v1".to_vec()), "read", after).is_some(), "resurrected");
        // A later put without an expiry is not excused by the earlier expiry.
        put(&mut h, 1, "v3", 2_000_000, 2_100_000, true);
        assert!(check_copy_at(&h, b"k", &Copy::Absent, "read", 9_000_000).is_some(), "v3 was lost");
    }

    #[test]
    fn a_read_of_a_value_surely_expired_is_caught() {
        use crate::net::codec::Expiry;
        let mut h = History::default();
        let at = super::ttl::wall_ms(2_000_000);
        expiring(&mut h, "v1", 0, 100_000, Expiry::At(at));
        let read = |h: &mut History, invoke: Time| {
            let id = h.invoke(1, Kind::Get, b"k".to_vec(), None, invoke);
            h.complete(id, Outcome::Value(b"v1".to_vec()), 1, invoke + 10_000);
        };
        read(&mut h, 1_990_000);
        assert!(check_reads(&h).is_empty(), "within the skew of its expiry");
        read(&mut h, 2_100_000);
        assert_eq!(check_reads(&h).len(), 1, "past it on every clock");
    }

    #[test]
    fn a_delete_that_comes_back_is_caught() {
        let mut h = History::default();
        put(&mut h, 0, "v1", 0, 100_000, true);
        let d = h.invoke(1, Kind::Del, b"k".to_vec(), None, 200_000);
        h.complete(d, Outcome::Acked, 1, 300_000);
        assert!(check_copy(&h, b"k", &Copy::Absent, "read").is_none());
        assert!(check_copy(&h, b"k", &Copy::Value(b"v1".to_vec()), "read").is_some());
    }
}
