//! Handing orphaned sectors over a few per loop turn.
//!
//! `settle_unheld` (in `sync`) can find hundreds of sectors to hand over
//! at once (a node back after its sectors moved, or a leaver's hand-over), and
//! each hand-over reads the whole sector and queues a STORE per record and
//! holder. Done in one turn that held the loop for seconds (3.7 s measured
//! for 800 sectors); so the sectors are queued here and handed over within
//! `ORPHAN_BUDGET` per turn, each checked again when its turn comes.

use std::collections::BTreeSet;
use std::time::Duration;

use log::warn;

use super::handoff::BatchDone;
use super::{Node, NodeIo, Timer};
use crate::idmap::IdMap;
use crate::net::codec::Entry;

/// Loop time spent handing orphaned sectors over per turn.
const ORPHAN_BUDGET: Duration = Duration::from_millis(5);
/// At most this many sectors per turn (the simulator's clock stands still
/// within a turn).
const ORPHANS_PER_TURN: usize = 8;

/// Orphaned sectors waiting to be handed over.
#[derive(Debug, Default)]
pub(super) struct Orphans {
    queue: BTreeSet<u32>,
    /// Held sectors whose writes made here since the given wall ms go to
    /// the other holders (`Node::queue_spread`).
    spread: IdMap<u32, u64>,
    /// A `Timer::Orphans` is armed.
    armed: bool,
}

impl Orphans {
    /// True while sectors wait their turn.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.spread.is_empty()
    }
}

impl Node {
    /// Queues `sector` to be handed to its holders (`push_orphan`) in the
    /// next turns.
    pub(super) fn queue_orphan(&mut self, rx: &mut impl NodeIo, sector: u32) {
        self.orphans.queue.insert(sector);
        if !self.orphans.armed {
            self.orphans.armed = true;
            rx.add_timer(Duration::ZERO, Timer::Orphans);
        }
    }

    /// Queues held sector `s`: the writes this node made since `from`
    /// (wall ms) go to its other holders in the next turns.
    pub(super) fn queue_spread(&mut self, rx: &mut impl NodeIo, s: u32, from: u64) {
        let at = self.orphans.spread.entry(s).or_insert(from);
        *at = (*at).min(from);
        if !self.orphans.armed {
            self.orphans.armed = true;
            rx.add_timer(Duration::ZERO, Timer::Orphans);
        }
    }

    /// Sends the writes of held sector `s` made here since `from` to the
    /// sector's live holders; a batch not acknowledged by all is queued again.
    fn spread_sector(&mut self, rx: &mut impl NodeIo, s: u32, from: u64) {
        if !self.holds(s) || self.handoff.busy(BatchDone::Spread(s, from)) {
            return;
        }
        let me = self.cfg.id;
        let entries: Vec<Entry> = match self.store.scan(s) {
            Ok(items) => items
                .into_iter()
                .filter(|(_, i)| i.version.node == me && i.version.ms >= from)
                .map(|(key, i)| super::entry_of(key, i))
                .collect(),
            Err(e) => {
                warn!("cannot read sector {s} to send its recent writes to its holders: {e}");
                return;
            }
        };
        if !entries.is_empty() {
            log::debug!("sector {s}: {} writes made here since {from} go to its other holders", entries.len());
            self.send_batch(rx, entries, BatchDone::Spread(s, from));
        }
    }

    /// The orphan timer: hands a few queued sectors over, each only if it
    /// is still here, still not held and not being handed over already;
    /// then sends the recent writes of a few spread sectors.
    pub(super) fn push_some_orphans(&mut self, rx: &mut impl NodeIo) {
        self.orphans.armed = false;
        let started = rx.now();
        for _ in 0..ORPHANS_PER_TURN {
            if rx.now().saturating_duration_since(started) >= ORPHAN_BUDGET {
                break;
            }
            let Some(s) = self.orphans.spread.keys().next().copied() else { break };
            if let Some(from) = self.orphans.spread.remove(&s) {
                self.spread_sector(rx, s, from);
            }
        }
        for _ in 0..ORPHANS_PER_TURN {
            if rx.now().saturating_duration_since(started) >= ORPHAN_BUDGET {
                break;
            }
            let Some(s) = self.orphans.queue.pop_first() else { break };
            if self.left {
                // A leaver's hand-over (see `hand_over`): it keeps its data.
                if self.needs_hand_over(s) && !self.handoff.busy(BatchDone::HandOver(s)) {
                    self.push_hand_over(rx, s);
                }
            } else if self.store.has_sector(s) && !self.holds(s) && !self.handoff.busy(BatchDone::DropSector(s)) {
                self.push_orphan(rx, s);
            }
        }
        if !self.orphans.is_empty() {
            self.orphans.armed = true;
            rx.add_timer(Duration::ZERO, Timer::Orphans);
        }
        self.exit_if_handed_over(rx);
    }
}
