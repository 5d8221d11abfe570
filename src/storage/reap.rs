//! Tombstone reaping: a deleted key's tombstone is kept for the tombstone
//! grace (`--tombstone-grace`), then forgotten once every member holds it.
//!
//! A tombstone exists so that an older value of its key, still held by a
//! replica that missed the delete, a hint, an orphaned sector or a copy in
//! flight, can never win again. Forgetting it is safe only once no such
//! older value exists anywhere and none can arrive. So a node forgets its
//! own tombstones older than the grace, of a few sectors at a time, in
//! two rounds:
//!
//! 1. Only under a settled cluster: a table with every member up and no
//!    move pending. A member marked down may hold anything, so while one
//!    is, nothing is reaped (a dead node holds reaping back until it is
//!    back or has left).
//! 2. First round: REAP with the tombstones goes to every other member.
//!    Each puts them over any older value of their keys it holds, in its
//!    copy of the sector and in its hints (a key it does not hold stays
//!    absent), and answers REAPED with how many it overwrote, once that is
//!    durable. The node's own hints are overwritten too.
//! 3. It waits `SETTLE_MS`. Every copy of a record sent between nodes
//!    (repairs, relays, hint and orphan deliveries, CHUNKs) carries a
//!    deadline at most `TRANSFER_MS` after it was sent and is refused past
//!    it, and a read repair follows its read within the op deadline; so by
//!    then every copy of an older value made before the first round has
//!    landed or been refused.
//! 4. Second round, the same REAP. After the first round an older value can
//!    only exist where such a copy landed, and a copy is never deleted but
//!    by a newer write; so if every member answers that it overwrote
//!    nothing, no older value exists anywhere and none is on its way. If
//!    the table is still the same, the node forgets each tombstone that is
//!    still the key's newest entry; compaction then leaves its record
//!    behind. Otherwise (something was overwritten, a member is
//!    unreachable or refuses, the table changed) the tombstones stay and
//!    are tried again later.
//!
//! Every node reaps its own tombstones; a member that has forgotten one
//! answers a later round for it like one that never saw the key.
//!
//! A value that expired (see `--ttl`, RESP `EXPIRE`) reads like a
//! tombstone of its version, and is reclaimed like one: once it was made
//! and expired before the grace, the rounds carry a tombstone of its
//! version, which members put over any older value of the key (a member
//! holding the same expired version leaves it to its own reaper), and the
//! node then forgets the value. Compaction never drops an expired record
//! on its own: another replica may hold an older value of the key, which
//! would then win again.

use std::collections::BTreeMap;
use std::time::Duration;

use log::{debug, info, warn};

use super::{Awaited, Node, NodeIo, Timer, OP_DEADLINE};
use crate::bugs::{self, Bug};
use crate::hlc::{Version, MAX_SKEW_MS};
use crate::net::codec::{Body, Entry, ErrorCode, Header, Message};
use crate::net::ConnId;
use crate::table::NodeState;

/// How long a copy of a record sent from node to node stays valid: its
/// header's deadline is this far after it is sent, and a receiver refuses
/// it later (EXPIRED for a STORE; a CHUNK ends its pull, which is retried).
pub(super) const TRANSFER_MS: u64 = 5_000;

/// How long after every member answered the first round the second one
/// starts: every copy sent before the first is refused by then (a read
/// repair may follow its read by up to the op deadline).
const SETTLE_MS: u64 = TRANSFER_MS + OP_DEADLINE.as_millis() as u64 + 2 * MAX_SKEW_MS;

/// A round not answered by every member within this long is dropped.
const ROUND_LIMIT_MS: u64 = 10_000;

/// Tombstones one round carries at most (over all its sectors).
const ROUND_ENTRIES: usize = 512;

/// Index entries one sweep looks through at most while it looks for
/// sectors with tombstones to reap (a loop turn stays short).
const SWEEP_ENTRIES: usize = 100_000;

/// The longest and the shortest time between two sweeps.
const SWEEP_MAX: Duration = Duration::from_secs(1);
const SWEEP_MIN: Duration = Duration::from_millis(50);

/// The reaper's state: the round under way and where the next sweep looks.
#[derive(Debug, Default)]
pub(super) struct Reaper {
    /// The round under way.
    round: Option<Round>,
    /// Rounds started so far: a round's id, so late answers to a dropped
    /// round are told apart.
    rounds: u64,
    /// The sector the next sweep starts at (round robin).
    next_sector: u32,
}

/// One round: the tombstones of a few sectors, and who has not answered.
#[derive(Debug)]
struct Round {
    id: u64,
    epoch: u64,
    /// Tombstones by sector; one REAP per sector and member.
    batches: Vec<(u32, Tombstones)>,
    /// Members that have not answered, with how many REAPs each.
    waiting: BTreeMap<u32, usize>,
    started_ms: u64,
    /// When the last member answered the first round.
    answered_ms: Option<u64>,
    /// The second round is under way.
    second: bool,
    /// Older values overwritten by members in the second round.
    overwritten: u64,
}

/// Tombstones by key, with their versions.
type Tombstones = Vec<(Vec<u8>, Version)>;

/// The time between sweeps for a grace period.
pub(super) fn sweep_period(grace: Duration) -> Duration {
    (grace / 8).clamp(SWEEP_MIN, SWEEP_MAX)
}

impl Node {
    /// The table's epoch if the cluster is settled enough to reap: this
    /// node is an up member of a table with every member up and no move
    /// pending, and it is not leaving.
    fn settled_epoch(&self) -> Option<u64> {
        let t = self.table.as_ref()?;
        let settled = self.pending.is_none()
            && !self.leaving
            && !self.left
            && t.member(self.cfg.id).is_some()
            && t.members.iter().all(|m| m.state == NodeState::Up);
        settled.then_some(t.epoch)
    }

    /// `Timer::Reap`: starts a round, the second round once the first has
    /// settled, or drops a round not answered in time; and re-arms.
    pub(super) fn reap_sweep(&mut self, rx: &mut impl NodeIo) {
        if self.cfg.tombstone_grace.is_zero() {
            return;
        }
        rx.add_timer(sweep_period(self.cfg.tombstone_grace), Timer::Reap);
        let now = rx.wall_ms();
        match self.reaper.round.as_ref().map(|r| (r.second, r.answered_ms, r.started_ms)) {
            None => self.start_round(rx),
            Some((false, Some(answered), ..)) => {
                if now >= answered + SETTLE_MS {
                    self.second_round(rx);
                }
            }
            Some((_, _, started)) => {
                if now >= started + ROUND_LIMIT_MS {
                    debug!("reaping: not every member answered; dropped");
                    self.reaper.round = None;
                }
            }
        }
    }

    /// Looks for sectors of this node's with tombstones older than the
    /// grace and starts the first round for them.
    fn start_round(&mut self, rx: &mut impl NodeIo) {
        let Some(epoch) = self.settled_epoch() else { return };
        let batches = self.find_old_tombstones(rx);
        if batches.is_empty() {
            return;
        }
        if bugs::planted(Bug::ReapUnasked) {
            for (sector, tombstones) in &batches {
                for (key, version) in tombstones {
                    self.store.reap(*sector, key, *version);
                }
            }
            return;
        }
        for (key, version) in batches.iter().flat_map(|(_, t)| t) {
            if let Err(e) = self.tombstone_hints(key, *version) {
                warn!("reaping: cannot overwrite a hint with a tombstone: {e}");
                return;
            }
        }
        self.reaper.rounds += 1;
        let round = Round {
            id: self.reaper.rounds,
            epoch,
            batches,
            waiting: BTreeMap::new(),
            started_ms: rx.wall_ms(),
            answered_ms: None,
            second: false,
            overwritten: 0,
        };
        debug!("reaping: first round for {} sectors", round.batches.len());
        self.reaper.round = Some(round);
        self.send_round(rx);
    }

    /// The next sectors (round robin) this node holds synced and owns with
    /// tombstones older than the grace, and up to `ROUND_ENTRIES` of them
    /// in all; it looks through about `SWEEP_ENTRIES` index entries at most.
    fn find_old_tombstones(&mut self, rx: &impl NodeIo) -> Vec<(u32, Tombstones)> {
        let mut found = Vec::new();
        let Some(table) = self.table.as_ref() else { return found };
        let grace_ms = u64::try_from(self.cfg.tombstone_grace.as_millis()).unwrap_or(u64::MAX);
        let before_ms = rx.wall_ms().saturating_sub(grace_ms);
        let ids = self.store.sector_ids();
        let start = ids.iter().position(|&s| s >= self.reaper.next_sector).unwrap_or(0);
        let (mut looked, mut taken) = (0, 0);
        for &sector in ids[start..].iter().chain(&ids[..start]) {
            if looked >= SWEEP_ENTRIES || taken >= ROUND_ENTRIES {
                self.reaper.next_sector = sector;
                break;
            }
            self.reaper.next_sector = sector.wrapping_add(1);
            if !table.preference(sector).contains(&self.cfg.id) || !self.mover.synced.contains(&sector) {
                continue;
            }
            looked += self.store.len_of(sector);
            let tombstones = self.store.old_tombstones(sector, before_ms, ROUND_ENTRIES - taken);
            if !tombstones.is_empty() {
                taken += tombstones.len();
                found.push((sector, tombstones));
            }
        }
        found
    }

    /// The second round: the same REAP again, after the first settled.
    fn second_round(&mut self, rx: &mut impl NodeIo) {
        let settled = self.settled_epoch();
        let Some(r) = self.reaper.round.as_mut() else { return };
        r.second = true;
        r.started_ms = rx.wall_ms();
        if settled != Some(r.epoch) {
            debug!("reaping: the table changed; dropped");
            self.reaper.round = None;
            return;
        }
        self.send_round(rx);
    }

    /// Sends the round's REAP to every other member of its table.
    fn send_round(&mut self, rx: &mut impl NodeIo) {
        let Some(table) = self.table.clone() else { return };
        let Some(r) = self.reaper.round.as_ref() else { return };
        let (id, epoch) = (r.id, r.epoch);
        let bodies: Vec<Body> = r
            .batches
            .iter()
            .map(|(sector, tombstones)| {
                let entries = tombstones.iter().map(|(key, version)| Entry {
                    key: key.clone(),
                    version: *version,
                    value: None,
                    expires: 0,
                });
                Body::Reap { epoch, sector: *sector, entries: entries.collect() }
            })
            .collect();
        let mut waiting = BTreeMap::new();
        let me = self.cfg.id;
        for node in table.members.iter().map(|m| m.id).filter(|&n| n != me) {
            let Some(conn) = self.peer(rx, node) else {
                debug!("reaping: node {node} unreachable; dropped");
                self.reaper.round = None;
                return;
            };
            for body in &bodies {
                let req = self.next_id();
                let header =
                    Header { node: self.cfg.id, req, deadline: rx.wall_ms() + TRANSFER_MS, ..Header::default() };
                if !rx.send_early(conn, &Message { header, body: body.clone() }) {
                    self.reaper.round = None;
                    return;
                }
                self.awaiting.insert(req, Awaited::Reap { round: id, node });
                *waiting.entry(node).or_insert(0) += 1;
            }
        }
        if let Some(r) = self.reaper.round.as_mut() {
            r.waiting = waiting;
        }
        self.round_answered(rx);
    }

    /// A member answered REAP: `Some(n)` older values it overwrote, `None`
    /// it refused or was lost.
    pub(super) fn reap_answered(&mut self, rx: &mut impl NodeIo, round: u64, node: u32, overwritten: Option<u32>) {
        let Some(r) = self.reaper.round.as_mut().filter(|r| r.id == round && r.waiting.contains_key(&node)) else {
            return;
        };
        let Some(n) = overwritten else {
            debug!("reaping: node {node} refused or was lost; dropped");
            self.reaper.round = None;
            return;
        };
        if let Some(left) = r.waiting.get_mut(&node) {
            *left -= 1;
            if *left == 0 {
                r.waiting.remove(&node);
            }
        }
        if r.second {
            r.overwritten += u64::from(n);
        }
        self.round_answered(rx);
    }

    /// If every member has answered: the first round starts to settle, the
    /// second one ends.
    fn round_answered(&mut self, rx: &mut impl NodeIo) {
        let Some(r) = self.reaper.round.as_mut().filter(|r| r.waiting.is_empty()) else { return };
        if !r.second {
            r.answered_ms = Some(rx.wall_ms());
            return;
        }
        self.finish_round();
    }

    /// Forgets the round's tombstones if the second round found no older
    /// value anywhere and the table is still the one of the first round.
    fn finish_round(&mut self) {
        let Some(r) = self.reaper.round.take() else { return };
        if r.overwritten > 0 {
            debug!("reaping: {} older values were still around; kept", r.overwritten);
            return;
        }
        if self.settled_epoch() != Some(r.epoch) {
            debug!("reaping: the table changed; dropped");
            return;
        }
        let mut reaped = 0;
        for (sector, tombstones) in &r.batches {
            reaped += tombstones.iter().filter(|(key, version)| self.store.reap(*sector, key, *version)).count();
        }
        info!("{reaped} tombstones older than the grace reaped in {} sectors", r.batches.len());
    }

    /// REAP from a member: the tombstones are put over any older value of
    /// their keys held here, in this node's copy of the sector and in its
    /// hints (absent keys stay absent); the answer, REAPED with how many
    /// were overwritten, goes out after this turn's fsync, like a
    /// replica's acknowledgement.
    pub(super) fn handle_reap(
        &mut self,
        rx: &mut impl NodeIo,
        conn: ConnId,
        h: Header,
        epoch: u64,
        sector: u32,
        entries: Vec<Entry>,
    ) {
        let Some(table) = &self.table else {
            return self.reply(rx, conn, h, Body::error(ErrorCode::NoTable, "no table yet"));
        };
        if table.epoch != epoch || self.pending.is_some() {
            let reason = format!("table epoch {} (a move pending: {})", table.epoch, self.pending.is_some());
            return self.reply(rx, conn, h, Body::error(ErrorCode::Retry, reason));
        }
        let now = rx.wall_ms();
        let bad =
            |e: &Entry| e.value.is_some() || e.version.ms > now + MAX_SKEW_MS || table.sector_of(&e.key) != sector;
        if entries.iter().any(bad) {
            return self.reply(rx, conn, h, Body::error(ErrorCode::BadRequest, "not a tombstone of this sector"));
        }
        let mut overwritten = 0u32;
        for e in entries {
            self.clock.observe(e.version);
            let older = self.store.version_of(sector, &e.key).is_some_and(|v| v < e.version);
            let done = match older {
                true => self.store.apply(sector, &e.key, e.version, None).map(|_| 1),
                false => Ok(0),
            };
            let done = done.and_then(|n| Ok(n + self.tombstone_hints(&e.key, e.version)?));
            match done {
                Ok(n) => overwritten = overwritten.saturating_add(n),
                Err(err) => {
                    warn!("cannot put a tombstone of sector {sector} over an older value: {err}");
                    let reason = format!("storage error: {err}");
                    return self.reply(rx, conn, h, Body::error(ErrorCode::Storage, reason));
                }
            }
        }
        self.reply(rx, conn, h, Body::Reaped { overwritten });
    }

    /// Puts the tombstone `version` over every older hint held for `key`;
    /// returns how many it overwrote.
    fn tombstone_hints(&mut self, key: &[u8], version: Version) -> Result<u32, crate::store::Error> {
        let mut overwritten = 0;
        for target in self.handoff.hints.sector_ids() {
            if self.handoff.hints.version_of(target, key).is_some_and(|v| v < version) {
                self.handoff.hints.apply(target, key, version, None)?;
                overwritten += 1;
            }
        }
        Ok(overwritten)
    }
}
