//! Planted bugs, for `make sim-selftest` only: proof that the simulator's
//! checker has teeth (mutation testing of the test, STYLE.md section 5).
//!
//! Without the `planted-bugs` cargo feature, [`planted`] is a constant
//! `false` and every planted branch compiles away. With it, `gtstore-sim
//! --selftest` turns on one bug at a time and requires some seed to fail.

use std::sync::atomic::{AtomicU8, Ordering};

/// The planted bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A storage node acknowledges writes without ever syncing its WAL.
    AckBeforeFsync = 1,
    /// A read takes the coordinator's own copy as the newest, and read
    /// repair writes it with a fresh version over newer copies.
    RepairOverwritesNewer = 2,
    /// A coordinator counts its own acknowledgement twice toward W.
    DoubleCountedAck = 3,
    /// A node drops the sectors it is losing as soon as a move starts,
    /// before the gainers have reported SYNCED.
    DropBeforeSynced = 4,
    /// A node reaps its tombstones once they are older than the grace,
    /// without asking the other members for older values first.
    ReapUnasked = 5,
    /// The gate lets internal verbs through without the cluster key.
    GateOpen = 6,
    /// A read coordinator drops expired copies before it chooses the
    /// newest, so an older live copy on another replica, which the expired
    /// value overwrote, is returned (and repaired) again.
    ExpiryBeforeNewest = 7,
}

/// Every planted bug, in selftest order.
pub const ALL: [Bug; 7] = [
    Bug::AckBeforeFsync,
    Bug::RepairOverwritesNewer,
    Bug::DoubleCountedAck,
    Bug::DropBeforeSynced,
    Bug::ReapUnasked,
    Bug::GateOpen,
    Bug::ExpiryBeforeNewest,
];

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// Turns `bug` on (None: all off). Has no effect without the feature.
pub fn plant(bug: Option<Bug>) {
    ACTIVE.store(bug.map_or(0, |b| b as u8), Ordering::Relaxed);
}

/// True if `bug` is planted in this run.
#[inline]
pub fn planted(bug: Bug) -> bool {
    cfg!(feature = "planted-bugs") && ACTIVE.load(Ordering::Relaxed) == bug as u8
}
