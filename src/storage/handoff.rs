//! Hand-off: writes held for unreachable nodes (hints) and the batches of
//! sends that deliver hints and orphaned sectors to their holders.

use log::{info, warn};

use super::{Awaited, Node, NodeIo, Timer};
use crate::idmap::IdMap;
use crate::net::codec::{Body, Entry, Header, Message};
use crate::store::Store;
use crate::table::NodeState;

/// How often hints are offered for delivery.
pub(super) const HINT_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

/// What to do once every send of a batch is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BatchDone {
    /// An orphaned sector reached its holders: drop it here.
    DropSector(u32),
    /// Hints for a node were delivered: forget them.
    DropHints(u32),
    /// A leaving node's sector reached its holders: nothing is dropped
    /// (the data stays on disk, as a last copy if the whole cluster stops).
    HandOver(u32),
    /// The writes this node made since the wall ms given, in a sector it
    /// holds, reached the other holders (see `Node::queue_spread`).
    Spread(u32, u64),
}

/// Sends waiting for acknowledgements before a [`BatchDone`] step.
#[derive(Debug)]
pub(super) struct Batch {
    left: usize,
    failed: bool,
    done: BatchDone,
    /// The digest of the sector (or hint set) sent: what arrives during
    /// the delivery changes it, and then nothing is dropped.
    sent: u64,
    /// Some entry had no holder to go to (no live member holds its key):
    /// nothing is dropped.
    unrouted: bool,
}

/// Hinted handoff and orphan hand-over.
#[derive(Debug)]
pub(super) struct Handoff {
    /// Writes held for unreachable nodes; the sector id is the target node.
    pub(super) hints: Store,
    /// Groups of sends awaiting acknowledgement (orphans, hint delivery).
    pub(super) batches: IdMap<u64, Batch>,
    /// Orphaned sectors whose hand-over did not finish: tried again with
    /// the hints.
    pub(super) orphan_retry: crate::idmap::IdSet<u32>,
    /// Spreads (`BatchDone::Spread`) a holder did not acknowledge: tried
    /// again with the hints.
    pub(super) spread_retry: IdMap<u32, u64>,
    /// A leaver's sectors and hint sets handed over (or with nobody to
    /// take them): done with.
    pub(super) handed: crate::idmap::IdSet<u32>,
    pub(super) hints_handed: crate::idmap::IdSet<u32>,
}

impl Handoff {
    /// Hand-off over the hint store `hints`.
    pub(super) fn new(hints: Store) -> Handoff {
        Handoff {
            hints,
            batches: IdMap::default(),
            orphan_retry: Default::default(),
            spread_retry: Default::default(),
            handed: Default::default(),
            hints_handed: Default::default(),
        }
    }

    /// True while a batch that ends in `done` is in flight.
    pub(super) fn busy(&self, done: BatchDone) -> bool {
        self.batches.values().any(|b| b.done == done)
    }
}

impl Node {
    /// Sends the records of a sector this node no longer holds to its
    /// current holders and drops it once every holder acknowledged.
    pub(super) fn push_orphan(&mut self, rx: &mut impl NodeIo, s: u32) {
        info!("sector {s} moved away without this node; handing its records to the holders");
        self.push_sector(rx, s, BatchDone::DropSector(s));
    }

    /// A leaver sends sector `s` to its holders, and keeps it.
    pub(super) fn push_hand_over(&mut self, rx: &mut impl NodeIo, s: u32) {
        info!("leaving: handing sector {s} to its holders");
        self.push_sector(rx, s, BatchDone::HandOver(s));
    }

    fn push_sector(&mut self, rx: &mut impl NodeIo, s: u32, done: BatchDone) {
        let entries = match self.store.scan(s) {
            Ok(items) => items.into_iter().map(|(key, i)| super::entry_of(key, i)).collect(),
            Err(e) => {
                warn!("cannot read sector {s} to hand it over: {e}");
                return;
            }
        };
        self.send_batch(rx, entries, done);
    }

    /// Delivers hints whose target is back (or gone for good) to the
    /// current holders of each key.
    pub(super) fn deliver_hints(&mut self, rx: &mut impl NodeIo) {
        rx.add_timer(HINT_PERIOD, Timer::Hints);
        let Some(t) = self.table.clone() else { return };
        for target in self.handoff.hints.sector_ids() {
            let back = t.member(target).is_none_or(|m| m.state == NodeState::Up);
            let busy = self.handoff.busy(BatchDone::DropHints(target));
            if back && !busy {
                self.send_hints(rx, target);
            }
        }
        for s in std::mem::take(&mut self.handoff.orphan_retry) {
            if self.store.has_sector(s) && !self.holds(s) && !self.handoff.busy(BatchDone::DropSector(s)) {
                self.push_orphan(rx, s);
            }
        }
        for (s, from) in std::mem::take(&mut self.handoff.spread_retry) {
            self.queue_spread(rx, s, from);
        }
    }

    /// Sends the hints held for `target` to the live holders of each key.
    pub(super) fn send_hints(&mut self, rx: &mut impl NodeIo, target: u32) {
        let entries: Vec<Entry> = match self.handoff.hints.scan(target) {
            Ok(items) => items.into_iter().map(|(key, i)| super::entry_of(key, i)).collect(),
            Err(e) => {
                warn!("cannot read hints for node {target}: {e}");
                return;
            }
        };
        info!("delivering {} hinted write(s) for node {target}", entries.len());
        self.send_batch(rx, entries, BatchDone::DropHints(target));
    }

    /// The digest of what `done` would drop.
    fn digest_of(&self, done: BatchDone) -> u64 {
        match done {
            BatchDone::DropSector(s) | BatchDone::HandOver(s) => super::sync::digest(&self.store.keys_with_versions(s)),
            BatchDone::DropHints(n) => super::sync::digest(&self.handoff.hints.keys_with_versions(n)),
            // Nothing is dropped after a spread: writes arriving meanwhile do not matter.
            BatchDone::Spread(..) => 0,
        }
    }

    /// Sends each entry to the live holders of its key (applying it here
    /// if this node is one) and runs `done` once all are acknowledged.
    pub(super) fn send_batch(&mut self, rx: &mut impl NodeIo, entries: Vec<Entry>, done: BatchDone) {
        let Some(t) = self.table.clone() else { return };
        let id = self.next_id();
        let sent = self.digest_of(done);
        let mut batch = Batch { left: 0, failed: false, done, sent, unrouted: false };
        for e in entries {
            let s = t.sector_of(&e.key);
            let holders = self.replicas(s);
            batch.unrouted |= holders.is_empty();
            for node in holders {
                if node == self.cfg.id {
                    if super::apply_entry(&mut self.store, s, &e).is_err() {
                        batch.failed = true;
                    }
                    continue;
                }
                let Some(conn) = self.peer(rx, node) else {
                    batch.failed = true;
                    continue;
                };
                let req = self.next_id();
                let deadline = rx.wall_ms() + super::reap::TRANSFER_MS;
                let msg = Message {
                    header: Header { node: self.cfg.id, req, deadline, ..Header::default() },
                    body: Body::Store { entry: e.clone(), hint_for: 0, repair: true },
                };
                if rx.send_early(conn, &msg) {
                    self.awaiting.insert(req, Awaited::Batch { batch: id, node });
                    batch.left += 1;
                } else {
                    batch.failed = true;
                }
            }
        }
        self.handoff.batches.insert(id, batch);
        self.batch_step(rx, id, None);
    }

    /// One send of batch `id` was acknowledged (`Some(true)`), refused or
    /// lost (`Some(false)`); `None` only checks whether the batch is done.
    pub(super) fn batch_step(&mut self, rx: &mut impl NodeIo, id: u64, ack: Option<bool>) {
        let Some(b) = self.handoff.batches.get_mut(&id) else { return };
        if let Some(ok) = ack {
            b.left = b.left.saturating_sub(1);
            b.failed |= !ok;
        }
        if b.left > 0 {
            return;
        }
        let (failed, done, sent, unrouted) = (b.failed, b.done, b.sent, b.unrouted);
        self.handoff.batches.remove(&id);
        let changed = self.digest_of(done) != sent;
        if failed || changed {
            if failed {
                warn!("{done:?} not done: a holder did not acknowledge; will try again later");
            } else {
                // Writes came in during the delivery and may have counted
                // towards W: drop nothing; the next round sends them too.
                info!("{done:?} not done: new writes arrived during the delivery; will deliver again");
            }
            match done {
                BatchDone::DropSector(s) => {
                    self.handoff.orphan_retry.insert(s);
                }
                BatchDone::Spread(s, from) => {
                    self.handoff.spread_retry.insert(s, from);
                }
                _ => {}
            }
            return;
        }
        if unrouted {
            // No member holds some of these keys (the whole cluster is
            // leaving): this may be the last copy, so it stays.
            info!("{done:?}: no live holder for some records; keeping them here");
        }
        let dropped = match done {
            BatchDone::Spread(..) => Ok(()),
            BatchDone::HandOver(s) => {
                self.handoff.handed.insert(s);
                Ok(())
            }
            BatchDone::DropHints(n) if unrouted => {
                self.handoff.hints_handed.insert(n);
                Ok(())
            }
            _ if unrouted => Ok(()),
            BatchDone::DropSector(s) => self.store.drop_sector(s),
            BatchDone::DropHints(n) => self.handoff.hints.drop_sector(n),
        };
        if let Err(e) = dropped {
            warn!("{done:?}: {e}");
        }
        self.exit_if_handed_over(rx);
    }
}
