//! Moving data: table changes, sector streaming, catch-up and the
//! graceful leave ([`Mover`] owns the state; hints and orphans are in
//! `handoff`).
//!
//! When a table arrives, the node works out which sectors it must hold
//! under the newest table (the pending one while a move runs) and pulls
//! every one it has not synced yet from all live holders under the current
//! table (`PULL` → `CHUNK`s, merged last-writer-wins). A source that served
//! a pull relays later writes of that sector to the puller, so nothing
//! written during the stream is missed. Once all its sectors are in, the
//! node reports `SYNCED` and the manager switches tables when every gainer
//! has. A restarted node pulls the same way (digests skip sectors that are
//! already equal), so it catches up before its reads count. After a switch,
//! a sector the node no longer holds is dropped if the node streamed it to
//! a puller; otherwise (the node was away while it moved) it is handed to
//! the holders first (see `handoff`).

use crate::bugs::{self, Bug};
use crate::idmap::{IdMap, IdSet};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::handoff::BatchDone;
use super::{Awaited, Node, NodeIo, Timer};
use crate::net::codec::{Body, Entry, Header, Message};
use crate::net::ConnId;
use crate::table::{hash_key, NodeState, Table};

/// Sectors pulled at once.
const MAX_PULLS: usize = 64;
/// Delay before a failed pull is tried again.
pub(super) const PULL_RETRY: Duration = Duration::from_millis(300);
/// A sector whose holders are all marked down and none of which streamed it
/// in this long is taken as complete without them: they are gone for good
/// (the loss is logged), and the move must end. A stalled or cut-off holder
/// comes back well within it.
const FALLBACK_GIVE_UP: Duration = Duration::from_secs(30);
/// Writes made this long before the last table from the manager count as
/// possibly unseen by the holders that took over while this node was
/// declared down (the manager waits `--dead-after-ms`, 1 s by default,
/// before it moves anything; the margin covers that, skew and slow turns).
const SPREAD_MARGIN_MS: u64 = 5_000;
/// A pull whose sources sent nothing for this long is given up and retried.
const PULL_STALL: Duration = Duration::from_secs(5);
/// Loop time spent creating empty sectors per turn (see `create_some`).
const CREATE_BUDGET: Duration = Duration::from_millis(5);
/// The pause between two rounds of sector creation.
const CREATE_PAUSE: Duration = Duration::from_millis(1);

/// Sector moves: which copies are complete, what is being pulled from
/// whom, what was served to pullers and what they must still be relayed.
#[derive(Debug, Default)]
pub(super) struct Mover {
    /// Sectors whose copy here is complete for the newest table.
    pub(super) synced: IdSet<u32>,
    /// Complete but empty sectors whose files are still to be created.
    pub(super) to_create: BTreeSet<u32>,
    /// Sectors being pulled, and those waiting their turn or a retry.
    pub(super) pulls: IdMap<u32, Pull>,
    pub(super) pull_queue: VecDeque<u32>,
    pub(super) pull_retry: Vec<u32>,
    /// Pullers of each sector served here: later writes are relayed to them.
    pub(super) relays: IdMap<u32, Vec<u32>>,
    /// Sectors streamed to a puller since the last switch (safe to drop
    /// once every write relayed to the pullers is acknowledged).
    pub(super) served: IdSet<u32>,
    /// Relayed writes of each sector not acknowledged yet.
    pub(super) relaying: IdMap<u32, usize>,
    /// Sectors with a relayed write that was refused or lost: handed over
    /// whole (`push_orphan`) instead of dropped.
    pub(super) relay_failed: IdSet<u32>,
    /// Unheld sectors to drop once their relays are acknowledged.
    pub(super) drop_when_relayed: IdSet<u32>,
    /// The epoch whose SYNCED was last sent.
    pub(super) reported_epoch: u64,
    /// The current table marked this node down.
    pub(super) was_down: bool,
    /// Wall ms of the last table from the manager (`heard_from_manager`).
    pub(super) manager_heard_ms: u64,
    /// Set when this node finds itself declared down: writes it made
    /// since then (wall ms) must reach its sectors' holders once it is up
    /// again (see `spread_own_writes`).
    pub(super) spread_from: Option<u64>,
    /// Sectors pulled from holders all marked down, since when (see
    /// `FALLBACK_GIVE_UP`).
    pub(super) fallback_since: IdMap<u32, Instant>,
}

/// One sector being pulled.
#[derive(Debug)]
pub(super) struct Pull {
    /// Sources whose stream has not ended.
    left: usize,
    /// Some source failed: pull the sector again.
    failed: bool,
    /// When a source last sent a CHUNK (or the pull began).
    progress: Instant,
    /// The sources are holders marked down (no live one is left): one
    /// whole stream is enough, the others need not answer.
    fallback: bool,
    /// Sources whose stream ended whole.
    complete: usize,
}

/// A digest of a sector's contents: XOR of a hash of each key and version.
pub fn digest(entries: &[(Vec<u8>, crate::hlc::Version)]) -> u64 {
    entries.iter().fold(0u64, |acc, (key, v)| {
        let mut bytes = key.clone();
        v.encode(&mut bytes);
        acc ^ hash_key(&bytes)
    })
}

impl Node {
    /// The newest table: the pending one while a move runs.
    pub(super) fn newest(&self) -> Option<&Table> {
        self.pending.as_ref().or(self.table.as_ref())
    }

    fn is_up_in(&self, t: &Table) -> bool {
        t.member(self.cfg.id).is_some_and(|m| m.state == NodeState::Up)
    }

    /// The sectors this node must hold: its preference lists in the newest table.
    fn wanted(&self) -> Vec<u32> {
        match self.newest() {
            Some(t) if self.is_up_in(t) => t.sectors_held_by(self.cfg.id),
            _ => Vec::new(),
        }
    }

    /// Sectors this node must hold and has not received yet.
    pub(super) fn missing_sectors(&self) -> usize {
        self.wanted().iter().filter(|s| !self.mover.synced.contains(s)).count()
    }

    /// True if this node's copy of `sector` can answer reads.
    pub(super) fn is_synced(&self, sector: u32) -> bool {
        self.mover.synced.contains(&sector)
    }

    /// A new table (and pending table) from the manager.
    pub(super) fn on_tables(&mut self, rx: &mut impl NodeIo, table: Table, pending: Option<Table>) {
        let newest = pending.as_ref().map_or(table.epoch, |p| p.epoch);
        if self.newest().is_some_and(|t| t.epoch > newest) {
            return;
        }
        let first = self.table.is_none();
        let old = self.table.replace(table);
        self.pending = pending;
        let Some(table) = self.table.clone() else { return };
        if old.as_ref().map(|t| t.epoch) != Some(table.epoch) || first {
            info!(
                "table epoch {}{}: {} members, {} sectors here",
                table.epoch,
                self.pending.as_ref().map_or(String::new(), |p| format!(" (moving to {})", p.epoch)),
                table.members.len(),
                self.wanted().len()
            );
        }
        if self.leaving && table.member(self.cfg.id).is_none() {
            if !self.left {
                self.left = true;
                info!("left the cluster; handing over what only this node may hold");
                self.hand_over(rx);
            }
            return;
        }
        let down = table.member(self.cfg.id).is_some_and(|m| m.state == NodeState::Down);
        if down && !self.mover.was_down && !self.mover.synced.is_empty() {
            // Declared down (stalled or cut off, maybe without knowing it):
            // writes went elsewhere meanwhile, so no copy here is complete
            // any more; each is pulled again (digests skip equal ones). Once
            // per time down: what is pulled after this is complete.
            info!("declared down in table epoch {}: {} copies must catch up", table.epoch, self.mover.synced.len());
            self.mover.synced.clear();
        }
        if down && self.mover.spread_from.is_none() {
            // The writes this node coordinated with its stale table, while the
            // manager could not hear it, went to the old holders only; the
            // sectors' new holders had already pulled (the catch-up above
            // only brings data here). Kept until it is up again.
            let from = self.mover.manager_heard_ms.saturating_sub(SPREAD_MARGIN_MS);
            self.mover.spread_from = Some(from);
        }
        self.mover.was_down = down;
        let switched = self.pending.is_none() && old.is_some_and(|o| o.epoch != table.epoch);
        if first || switched {
            self.settle_unheld(rx);
        }
        if !down && self.pending.is_none() && self.is_up_in(&table) {
            if let Some(from) = self.mover.spread_from.take() {
                self.spread_own_writes(rx, &table, from);
            }
        }
        if bugs::planted(Bug::DropBeforeSynced) && self.pending.is_some() {
            let keep: IdSet<u32> = self.wanted().into_iter().collect();
            for s in self.store.sector_ids().into_iter().filter(|s| !keep.contains(s)) {
                let _ = self.store.drop_sector(s);
            }
        }
        self.repeat_synced(rx);
        self.start_pulls(rx);
        self.after_progress(rx);
    }

    /// Back up after being declared down: queues every sector this node
    /// holds so that the writes it made since `from` (wall ms) are sent to
    /// the sector's other holders (`Spread` batches, a few per turn).
    fn spread_own_writes(&mut self, rx: &mut impl NodeIo, table: &Table, from: u64) {
        let sectors = table.sectors_held_by(self.cfg.id);
        info!("up again: sending the writes made here since {from} to the other holders of {} sectors", sectors.len());
        for s in sectors {
            self.queue_spread(rx, s, from);
        }
    }

    /// Sectors on disk that this node holds under neither table: those it
    /// streamed to their new holders during the move are dropped; the rest
    /// (it was away while they moved) are handed to the holders first.
    fn settle_unheld(&mut self, rx: &mut impl NodeIo) {
        let mut keep: IdSet<u32> = self.wanted().into_iter().collect();
        if let Some(t) = &self.table {
            keep.extend(t.sectors_held_by(self.cfg.id));
        }
        let served = std::mem::take(&mut self.mover.served);
        self.mover.relays.clear();
        for s in self.store.sector_ids() {
            if keep.contains(&s) || self.handoff.busy(BatchDone::DropSector(s)) {
                continue;
            }
            self.mover.synced.remove(&s);
            if !served.contains(&s) || self.mover.relay_failed.contains(&s) {
                self.mover.relay_failed.remove(&s);
                self.queue_orphan(rx, s);
            } else if self.mover.relaying.get(&s).is_some_and(|&n| n > 0) {
                // A copy acknowledged here may be only in flight to its new
                // holder: keep it until the relay is acknowledged.
                self.mover.drop_when_relayed.insert(s);
            } else {
                self.drop_served(s);
            }
        }
    }

    fn drop_served(&mut self, s: u32) {
        log::debug!("sector {s} was streamed to its new holders: dropping it");
        if let Err(e) = self.store.drop_sector(s) {
            warn!("cannot drop sector {s}: {e}");
        }
    }

    /// True if this node holds `sector` under its current or pending table.
    pub(super) fn holds(&self, sector: u32) -> bool {
        let held_in = |t: &Table| self.is_up_in(t) && t.preference(sector).contains(&self.cfg.id);
        self.table.as_ref().is_some_and(held_in) || self.pending.as_ref().is_some_and(held_in)
    }

    /// A relayed write of `sector` was acknowledged (`ok`) or refused or
    /// lost; a sector waiting for its relays is dropped or handed over.
    pub(super) fn relay_done(&mut self, rx: &mut impl NodeIo, sector: u32, ok: bool) {
        let left = self.mover.relaying.get_mut(&sector).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if !ok {
            self.mover.relay_failed.insert(sector);
        }
        if left.unwrap_or(0) > 0 {
            return;
        }
        self.mover.relaying.remove(&sector);
        if !self.mover.drop_when_relayed.remove(&sector) || self.holds(sector) {
            return;
        }
        if self.mover.relay_failed.remove(&sector) {
            self.push_orphan(rx, sector);
        } else {
            self.drop_served(sector);
        }
        self.exit_if_handed_over(rx);
    }

    /// Queues a pull of every wanted sector that is not synced yet.
    fn start_pulls(&mut self, rx: &mut impl NodeIo) {
        let wanted = self.wanted();
        let wanted_set: IdSet<u32> = wanted.iter().copied().collect();
        self.mover.synced.retain(|s| wanted_set.contains(s));
        self.mover.to_create.retain(|s| wanted_set.contains(s));
        for s in wanted {
            if !self.mover.synced.contains(&s)
                && !self.mover.pulls.contains_key(&s)
                && !self.mover.pull_queue.contains(&s)
            {
                self.mover.pull_queue.push_back(s);
            }
        }
        self.pump_pulls(rx);
    }

    /// Where to pull `sector` from: its holders under the current table,
    /// this node aside, that are up there or back (up in the pending
    /// table); if none is, all of them, as a fallback (`true`): holders
    /// marked down may still be reachable (cut off from the manager only, or
    /// leaving). Empty only for a sector nobody held.
    fn sources(&self, sector: u32) -> (Vec<u32>, bool) {
        let Some(t) = &self.table else { return (Vec::new(), false) };
        let up = |n: u32| {
            let up_in = |t: &Table| t.member(n).is_some_and(|m| m.state == NodeState::Up);
            up_in(t) || self.pending.as_ref().is_some_and(up_in)
        };
        let holders: Vec<u32> = t.preference(sector).into_iter().filter(|&n| n != self.cfg.id).collect();
        let live: Vec<u32> = holders.iter().copied().filter(|&n| up(n)).collect();
        if live.is_empty() {
            (holders, true)
        } else {
            (live, false)
        }
    }

    fn pump_pulls(&mut self, rx: &mut impl NodeIo) {
        while self.mover.pulls.len() < MAX_PULLS {
            let Some(s) = self.mover.pull_queue.pop_front() else { break };
            let (sources, fallback) = self.sources(s);
            if sources.is_empty() {
                self.mark_synced(rx, s);
                continue;
            }
            let digest = digest(&self.store.keys_with_versions(s));
            // A holder under the current table has a copy of its own on disk:
            // with no live holder left, it is as good as any stream.
            let own_copy = self.table.as_ref().is_some_and(|t| t.preference(s).contains(&self.cfg.id));
            let complete = usize::from(fallback && own_copy);
            let mut pull = Pull { left: 0, failed: false, progress: rx.now(), fallback, complete };
            for src in sources {
                let Some(conn) = self.peer(rx, src) else {
                    pull.failed |= !fallback;
                    continue;
                };
                let req = self.next_id();
                let msg = Message {
                    header: Header { node: self.cfg.id, req, ..Header::default() },
                    body: Body::Pull { sector: s, digest },
                };
                if rx.send_early(conn, &msg) {
                    self.awaiting.insert(req, Awaited::Pull { sector: s, node: src });
                    pull.left += 1;
                } else {
                    pull.failed = true;
                }
            }
            if pull.left == 0 {
                self.retry_pull(rx, s);
            } else {
                self.mover.pulls.insert(s, pull);
            }
        }
    }

    fn retry_pull(&mut self, rx: &mut impl NodeIo, sector: u32) {
        if self.mover.pull_retry.is_empty() {
            rx.add_timer(PULL_RETRY, Timer::PullRetry);
        }
        self.mover.pull_retry.push(sector);
    }

    /// The retry timer: queue the failed sectors again.
    pub(super) fn on_pull_retry(&mut self, rx: &mut impl NodeIo) {
        for s in std::mem::take(&mut self.mover.pull_retry) {
            if !self.mover.pull_queue.contains(&s) {
                self.mover.pull_queue.push_back(s);
            }
        }
        self.pump_pulls(rx);
        self.after_progress(rx);
    }

    /// A CHUNK of a sector this node is pulling.
    pub(super) fn on_chunk(&mut self, rx: &mut impl NodeIo, req: u64, deadline: u64, entries: Vec<Entry>, last: bool) {
        let Some(&Awaited::Pull { sector, .. }) = self.awaiting.get(&req) else { return };
        if deadline <= rx.wall_ms() {
            // Sent too long ago: a tombstone of one of its keys may have been
            // reaped since (see `reap`). The sector is pulled again.
            info!("a CHUNK of sector {sector} arrived past its deadline; pulling again");
            self.pull_ended(rx, req, false);
            return;
        }
        let bad = entries.iter().find_map(|e| {
            let wrong_sector = self.table.as_ref().is_some_and(|t| t.sector_of(&e.key) != sector);
            let section = crate::store::record::value_section_len(e.value.as_deref(), e.expires);
            let lengths = crate::store::record::check_lengths(e.key.len(), section);
            match (wrong_sector, lengths) {
                (true, _) => Some("a key of another sector".to_string()),
                (false, Err(err)) => Some(err.to_string()),
                (false, Ok(())) => None,
            }
        });
        if let Some(why) = bad {
            error!("a CHUNK of sector {sector} holds a record this node cannot take ({why}); pulling again");
            self.pull_ended(rx, req, false);
            return;
        }
        if let Some(p) = self.mover.pulls.get_mut(&sector) {
            p.progress = rx.now();
        }
        for e in entries {
            self.clock.observe(e.version);
            if let Err(err) = super::apply_entry(&mut self.store, sector, &e) {
                error!("cannot store a streamed record of sector {sector}: {err}");
                self.pull_ended(rx, req, false);
                return;
            }
        }
        if last {
            self.pull_ended(rx, req, true);
        }
    }

    /// Fails the streams of pulls that made no progress for `PULL_STALL`
    /// (a source stopped, or cut off without a reset): the sector is pulled
    /// again from the holders the table then names, instead of waiting for
    /// ever. Run with the op sweep.
    pub(super) fn sweep_pulls(&mut self, rx: &mut impl NodeIo) {
        let now = rx.now();
        let stalled: IdSet<u32> = self
            .mover
            .pulls
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.progress) > PULL_STALL)
            .map(|(&s, _)| s)
            .collect();
        if stalled.is_empty() {
            return;
        }
        let mut reqs: Vec<u64> = self
            .awaiting
            .iter()
            .filter(|(_, a)| matches!(a, Awaited::Pull { sector, .. } if stalled.contains(sector)))
            .map(|(&r, _)| r)
            .collect();
        reqs.sort_unstable();
        for req in reqs {
            if let Some(&Awaited::Pull { sector, node }) = self.awaiting.get(&req) {
                warn!("pull of sector {sector} from node {node}: nothing for {PULL_STALL:?}; giving up on it");
            }
            self.pull_ended(rx, req, false);
        }
    }

    /// One source's stream ended (`ok`) or broke.
    pub(super) fn pull_ended(&mut self, rx: &mut impl NodeIo, req: u64, ok: bool) {
        let Some(Awaited::Pull { sector, node: src }) = self.awaiting.remove(&req) else { return };
        let Some(pull) = self.mover.pulls.get_mut(&sector) else { return };
        pull.left = pull.left.saturating_sub(1);
        pull.failed |= !ok && !pull.fallback;
        pull.complete += usize::from(ok);
        // A fallback pull needs one whole stream: a holder that did not
        // answer may be stalled, not dead, and hold the only copy.
        let none_whole = pull.left == 0 && pull.fallback && pull.complete == 0;
        if none_whole {
            let now = rx.now();
            let since = *self.mover.fallback_since.entry(sector).or_insert(now);
            let give_up = now.saturating_duration_since(since) > FALLBACK_GIVE_UP;
            pull.failed |= !give_up;
            if give_up {
                error!(
                    "sector {sector}: no holder reachable for {FALLBACK_GIVE_UP:?}; taking it as complete without \
                     them (their data is lost unless one comes back)"
                );
            }
        }
        if !ok {
            warn!("pull of sector {sector} from node {src} failed; will retry");
        }
        if pull.left == 0 {
            let failed = pull.failed;
            self.mover.pulls.remove(&sector);
            if failed {
                self.retry_pull(rx, sector);
            } else {
                self.mark_synced(rx, sector);
            }
        }
        self.pump_pulls(rx);
        self.after_progress(rx);
    }

    /// `sector` is complete here. If it is still empty, its directory and
    /// segment are queued for [`Node::create_some`], so that its first
    /// write, on a client's path, seldom has to create them.
    fn mark_synced(&mut self, rx: &mut impl NodeIo, sector: u32) {
        self.mover.synced.insert(sector);
        self.mover.fallback_since.remove(&sector);
        if !self.store.has_sector(sector) {
            if self.mover.to_create.is_empty() {
                rx.add_timer(Duration::ZERO, Timer::Create);
            }
            self.mover.to_create.insert(sector);
        }
    }

    /// Creates queued empty sectors for at most `CREATE_BUDGET` per turn,
    /// in the background: a join's thousand creations neither stall the
    /// loop nor delay the join, and most first writes find their files.
    pub(super) fn create_some(&mut self, rx: &mut impl NodeIo) {
        let started = rx.now();
        while rx.now().saturating_duration_since(started) < CREATE_BUDGET {
            let Some(sector) = self.mover.to_create.pop_first() else { break };
            if let Err(e) = self.store.ensure_sector(sector) {
                warn!("cannot create sector {sector}: {e}; its first write will try again");
            }
        }
        if !self.mover.to_create.is_empty() {
            rx.add_timer(CREATE_PAUSE, Timer::Create);
        }
    }

    /// Reports SYNCED and readiness once every wanted sector is in.
    /// Sends SYNCED again for a pending table already reported: the first
    /// one may have been lost with the manager or its connection, and the
    /// move waits for it. Called on every table message and heartbeat.
    pub(super) fn repeat_synced(&mut self, rx: &mut impl NodeIo) {
        let all_in = self.wanted().iter().all(|s| self.mover.synced.contains(s));
        if let (Some(p), Some(m), true) = (&self.pending, self.links.manager, all_in) {
            if self.is_up_in(p) && self.mover.reported_epoch == p.epoch {
                let msg = Message {
                    header: Header { node: self.cfg.id, ..Header::default() },
                    body: Body::Synced { epoch: p.epoch },
                };
                rx.send(m, &msg);
            }
        }
    }

    fn after_progress(&mut self, rx: &mut impl NodeIo) {
        let all_in = self.wanted().iter().all(|s| self.mover.synced.contains(s));
        if !all_in {
            return;
        }
        if let (Some(p), Some(m)) = (&self.pending, self.links.manager) {
            if self.is_up_in(p) && self.mover.reported_epoch != p.epoch {
                self.mover.reported_epoch = p.epoch;
                info!("all {} sectors in for epoch {}", self.mover.synced.len(), p.epoch);
                let msg = Message {
                    header: Header { node: self.cfg.id, ..Header::default() },
                    body: Body::Synced { epoch: p.epoch },
                };
                rx.send(m, &msg);
            }
        }
        let serving = self.table.as_ref().is_some_and(|t| self.is_up_in(t));
        if serving {
            if let Some(r) = self.ready.take() {
                info!("joined the cluster with {} sectors; serving", self.mover.synced.len());
                r.ready();
            }
        }
    }

    // ----- the source side --------------------------------------------

    /// Streams `sector` to the puller unless its digest already matches
    /// (in budgeted steps: see `stream`), and relays the sector's later
    /// writes to it until the move ends.
    pub(super) fn handle_pull(&mut self, rx: &mut impl NodeIo, conn: ConnId, h: Header, sector: u32, their: u64) {
        let puller = h.node;
        self.mover.served.insert(sector);
        if puller != 0 {
            let r = self.mover.relays.entry(sector).or_default();
            if !r.contains(&puller) {
                r.push(puller);
            }
        }
        let header = Header { node: self.cfg.id, deadline: rx.wall_ms() + super::reap::TRANSFER_MS, ..h };
        if digest(&self.store.keys_with_versions(sector)) == their {
            rx.send(conn, &Message { header, body: Body::Chunk { sector, entries: Vec::new(), last: true } });
            return;
        }
        self.start_stream(rx, conn, header, sector);
    }

    /// Copies a write of `sector` to the nodes moving in: pullers that
    /// registered here and holders under the pending table; `skip` already
    /// have it. Each copy is a request: until all are acknowledged the
    /// sector is not dropped here, and a lost one makes the sector be
    /// handed over whole (see `settle_unheld`).
    pub(super) fn relay(&mut self, rx: &mut impl NodeIo, sector: u32, entry: &Entry, skip: &[u32]) {
        let mut targets: Vec<u32> = self.mover.relays.get(&sector).cloned().unwrap_or_default();
        if let Some(p) = &self.pending {
            targets.extend(p.preference(sector));
        }
        targets.sort_unstable();
        targets.dedup();
        for node in targets {
            if node == self.cfg.id || skip.contains(&node) {
                continue;
            }
            let Some(conn) = self.peer(rx, node) else {
                self.mover.relay_failed.insert(sector);
                continue;
            };
            let req = self.next_id();
            let deadline = rx.wall_ms() + super::reap::TRANSFER_MS;
            let msg = Message {
                header: Header { node: self.cfg.id, req, deadline, ..Header::default() },
                body: Body::Store { entry: entry.clone(), hint_for: 0, repair: true },
            };
            if rx.send_early(conn, &msg) {
                self.awaiting.insert(req, Awaited::Relay { sector, node });
                *self.mover.relaying.entry(sector).or_default() += 1;
            } else {
                self.mover.relay_failed.insert(sector);
            }
        }
    }

    // ----- leaving ----------------------------------------------------

    /// SIGTERM or SIGINT: announce the leave; the node keeps serving as a
    /// source until the manager's table no longer lists it.
    pub(super) fn start_leave(&mut self, rx: &mut impl NodeIo) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        if self.table.is_none() {
            info!("not registered; exiting");
            rx.stop();
            return;
        }
        rx.add_timer(super::LEAVE_LIMIT, Timer::LeaveLimit);
        let Some(m) = self.links.manager else {
            // `register` announces the leave once the manager is back.
            info!("leaving once the manager is reachable");
            return;
        };
        info!("leaving: handing sectors over");
        let msg = Message {
            header: Header { node: self.cfg.id, req: self.next_id(), ..Header::default() },
            body: Body::Leave,
        };
        rx.send(m, &msg);
    }

    /// The last step of a leave, once no table lists this node: sectors
    /// the new holders did not pull, and every hint, go to their holders;
    /// relays in flight are awaited; then the node exits. Its data stays on
    /// disk (it may be the last copy, when the whole cluster stops). Run
    /// again after each acknowledgement, and on a timer while a hand-over
    /// failed.
    pub(super) fn hand_over(&mut self, rx: &mut impl NodeIo) {
        for s in self.store.sector_ids() {
            if self.needs_hand_over(s) && !self.handoff.busy(BatchDone::HandOver(s)) {
                self.queue_orphan(rx, s);
            }
        }
        for target in self.handoff.hints.sector_ids() {
            if !self.handoff.hints_handed.contains(&target) && !self.handoff.busy(BatchDone::DropHints(target)) {
                self.send_hints(rx, target);
            }
        }
        self.exit_if_handed_over(rx);
        if self.left && !self.handed_over() {
            rx.add_timer(PULL_RETRY, Timer::HandOver);
        }
    }

    /// A leaver's sector that its new holders did not pull whole (or that
    /// lost a relayed write) and that it has not handed over yet.
    pub(super) fn needs_hand_over(&self, s: u32) -> bool {
        let pulled = self.mover.served.contains(&s) && !self.mover.relay_failed.contains(&s);
        !pulled && !self.handoff.handed.contains(&s)
    }

    fn handed_over(&self) -> bool {
        self.orphans.is_empty()
            && self.store.sector_ids().into_iter().all(|s| !self.needs_hand_over(s))
            && self.handoff.hints.sector_ids().into_iter().all(|t| self.handoff.hints_handed.contains(&t))
            && self.handoff.batches.is_empty()
            && self.mover.relaying.is_empty()
    }

    /// Exits once a leave has handed everything over.
    pub(super) fn exit_if_handed_over(&mut self, rx: &mut impl NodeIo) {
        if self.left && self.handed_over() {
            info!("left the cluster; exiting");
            rx.stop();
        }
    }
}
