//! The coordinator: client PUT/GET/DEL, quorum bookkeeping, forwarding,
//! read repair, sloppy quorum with hinted handoff, and the replica side of
//! STORE and FETCH.

use log::{error, info, warn};

use std::time::Instant;

use super::reap::TRANSFER_MS;
use super::{apply_entry, entry_of, Node, NodeIo, OP_DEADLINE};
use crate::bugs::{self, Bug};
use crate::hlc::{Version, MAX_SKEW_MS};
use crate::idmap::IdMap;
use crate::net::codec::{Body, Entry, ErrorCode, Expiry, Header, Message, Stats};
use crate::net::ConnId;
use crate::store::record;

/// What an operation in flight is waiting for.
#[derive(Debug)]
pub(super) enum OpKind {
    /// A PUT or DEL: count acknowledgements.
    Write,
    /// A GET: keep the newest reply.
    Read,
    /// A request relayed to its coordinator: pass the reply back.
    Forward,
}

/// A client request this node coordinates or forwards.
#[derive(Debug)]
pub(super) struct Op {
    kind: OpKind,
    client: ConnId,
    header: Header,
    sector: u32,
    key: Vec<u8>,
    /// Replies needed before answering (W or R).
    need: usize,
    /// Replicas asked, this node included.
    asked: usize,
    ok: usize,
    failed: usize,
    replied: bool,
    /// The newest entry seen (reads) and who answered with what.
    newest: Option<Entry>,
    answers: Vec<(u32, Option<Version>)>,
    /// A write's record, kept to hand it to a stand-in replica.
    entry: Option<Entry>,
    /// Nodes asked so far (the preference list, then stand-ins).
    tried: Vec<u32>,
    /// Each stand-in asked, and the replica of the preference list it
    /// holds the write for.
    stood_in: Vec<(u32, u32)>,
    /// The request ids sent to peers for this op (to forget at its end).
    pub(super) reqs: Vec<u64>,
    /// When the op gives up waiting (swept every `OP_SWEEP`).
    deadline: Instant,
    /// The loop turn the op began in (see `Node::turn`).
    turn: u64,
    /// The client's verb and when its request arrived (metrics).
    verb: Option<super::metrics::Verb>,
    began: Instant,
}

/// Client operations this node coordinates or forwards.
#[derive(Debug, Default)]
pub(super) struct Coordinator {
    /// Ops in flight, by op id.
    pub(super) ops: IdMap<u64, Op>,
    /// Loop turns completed; everything applied in an earlier turn is on disk.
    pub(super) turn: u64,
    /// Ops timed out since the last line about them, and when it was logged.
    timeouts: u64,
    timeout_logged: Option<Instant>,
}

/// Timed-out ops are logged at most this often.
const TIMEOUT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A coordinator's write older than this (milliseconds) when it reaches a
/// replica is refused: twice the coordinator's own deadline.
const STALE_WRITE_MS: u64 = 2 * OP_DEADLINE.as_millis() as u64;

impl Coordinator {
    /// The deadline of op `op`'s client request (0: none).
    pub(super) fn deadline_of(&self, op: u64) -> u64 {
        self.ops.get(&op).map_or(0, |o| o.header.deadline)
    }
}

impl Node {
    // ----- client requests ----------------------------------------------

    pub(super) fn reply(&mut self, rx: &mut impl NodeIo, conn: ConnId, header: Header, body: Body) {
        self.metrics.answered_now(&body);
        let header = Header { node: self.cfg.id, ..header };
        self.answer_to(rx, conn, Message { header, body }, false);
    }

    /// A client's PUT, GET or DEL: refused, forwarded to the key's
    /// coordinator, or coordinated here.
    pub(super) fn handle_client(&mut self, rx: &mut impl NodeIo, conn: ConnId, msg: Message) {
        let h = msg.header;
        let (key, value_len) = match &msg.body {
            Body::Put { key, value, .. } => (key, value.len()),
            Body::Get { key } | Body::Del { key } => (key, 0),
            _ => return,
        };
        if h.deadline != 0 && rx.wall_ms() >= h.deadline {
            // The client gave up on this attempt (this node was stalled, or
            // the request was slow to arrive): starting it now could apply a
            // write after the client went on to newer ones.
            let reason = format!("deadline passed {} ms ago", rx.wall_ms() - h.deadline);
            return self.reply(rx, conn, h, Body::error(ErrorCode::Expired, reason));
        }
        let (max_key, max_value) = self.limits();
        if key.len() > max_key || value_len > max_value {
            let reason = format!("key or value over the limit ({max_key} / {max_value} bytes)");
            return self.reply(rx, conn, h, Body::error(ErrorCode::TooLarge, reason));
        }
        let (sector, replicas) = match self.place(key) {
            Ok(Some(here)) => here,
            Ok(None) if h.node != 0 => {
                // Forwarded here by a node whose table says this node
                // coordinates the key, while this node's table says not: one
                // hop at most, or two tables that disagree bounce it for ever.
                let epoch = self.table.as_ref().map_or(0, |t| t.epoch);
                let reason = format!("not a replica of this key under table epoch {epoch}");
                return self.reply(rx, conn, h, Body::error(ErrorCode::Retry, reason));
            }
            Ok(None) => {
                let coord = self.replicas(self.table.as_ref().map_or(0, |t| t.sector_of(key)));
                return match coord.first() {
                    Some(&c) => self.forward(rx, conn, h, c, msg.body),
                    None => self.reply(rx, conn, h, Body::error(ErrorCode::NoReplica, "no live replica for this key")),
                };
            }
            Err(reason) => return self.reply(rx, conn, h, Body::error(ErrorCode::NoTable, reason)),
        };
        if self.leaving && !matches!(msg.body, Body::Get { .. }) {
            return self.reply(rx, conn, h, Body::error(ErrorCode::Retry, "node is leaving the cluster"));
        }
        match msg.body {
            Body::Put { key, value, expiry } => {
                self.start_write(rx, conn, h, sector, replicas, key, Some(value), expiry)
            }
            Body::Del { key } => self.start_write(rx, conn, h, sector, replicas, key, None, Expiry::Never),
            Body::Get { key } => self.start_read(rx, conn, h, sector, replicas, key),
            _ => {}
        }
    }

    /// Where `key` is served: `Some((sector, live replicas))` if this node
    /// is one of the replicas, `None` if another node coordinates it.
    fn place(&self, key: &[u8]) -> Result<Option<(u32, Vec<u32>)>, String> {
        let Some(table) = &self.table else { return Err("node has no partition table yet".into()) };
        let sector = table.sector_of(key);
        let replicas = self.replicas(sector);
        Ok(replicas.contains(&self.cfg.id).then_some((sector, replicas)))
    }

    pub(super) fn forward(&mut self, rx: &mut impl NodeIo, conn: ConnId, h: Header, coord: u32, body: Body) {
        let op = self.new_op(rx.now(), OpKind::Forward, conn, h, 0, Vec::new(), 1, 1);
        if !self.ask_peer(rx, coord, op, body) {
            let reason = format!("coordinator server{coord} unreachable");
            self.finish_op(rx, op, Some(Body::error(ErrorCode::Retry, reason)));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_op(
        &mut self,
        now: Instant,
        kind: OpKind,
        client: ConnId,
        header: Header,
        sector: u32,
        key: Vec<u8>,
        need: usize,
        asked: usize,
    ) -> u64 {
        let id = self.next_id();
        let deadline = now + OP_DEADLINE;
        let (verb, began) = self.metrics.take_current(now);
        let op = Op {
            kind,
            client,
            header,
            sector,
            key,
            need,
            asked,
            ok: 0,
            failed: 0,
            replied: false,
            newest: None,
            answers: Vec::new(),
            entry: None,
            tried: Vec::new(),
            stood_in: Vec::new(),
            reqs: Vec::new(),
            deadline,
            turn: self.coord.turn,
            verb,
            began,
        };
        self.coord.ops.insert(id, op);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn start_write(
        &mut self,
        rx: &mut impl NodeIo,
        conn: ConnId,
        h: Header,
        sector: u32,
        replicas: Vec<u32>,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        expiry: Expiry,
    ) {
        // The whole preference list is asked: a member marked down is
        // replaced by a stand-in with a hint, so W copies always means W
        // (sloppy quorum, SPEC §4), never W cut down to the live replicas.
        let preference = self.table.as_ref().map_or_else(Vec::new, |t| t.preference(sector));
        let need = self.write_quorum().max(1);
        if preference.len() < need {
            let reason = format!("quorum not reached: {} of {need} replicas are members", preference.len());
            return self.reply(rx, conn, h, Body::error(ErrorCode::Retry, reason));
        }
        // The new version must be newer than the copy here, whatever this
        // node's clock says (a faster clock made it, or it came by a path
        // that did not move the clock).
        if let Some(here) = self.store.version_of(sector, &key) {
            self.clock.observe(here);
        }
        let version = self.clock.tick(rx.wall_ms());
        if h.deadline != 0 && version.ms + MAX_SKEW_MS >= h.deadline {
            // A write begun after the client gives up may get a version from
            // a clock up to MAX_SKEW_MS behind this one: this version must
            // be older than any such write's, so it is not made this late.
            let reason = format!("version {version} too close to the deadline {}", h.deadline);
            return self.reply(rx, conn, h, Body::error(ErrorCode::Expired, reason));
        }
        log::debug!("coordinating a write of sector {sector} at {version}; preference {preference:?}");
        // A relative expiry counts from now by this clock; the stored
        // expiry is absolute, and every copy carries it unchanged.
        let expires = if value.is_some() { expiry.absolute(rx.wall_ms()) } else { 0 };
        let fresh = match self.store.apply_expiring(sector, &key, version, value.as_deref(), expires) {
            Ok(fresh) => fresh,
            Err(e) => {
                error!("write to sector {sector} failed: {e}");
                return self.reply(rx, conn, h, Body::error(ErrorCode::Storage, format!("storage error: {e}")));
            }
        };
        // A coordinator's new version must win here (issue #10: a version
        // older than the local copy is acknowledged and then lost).
        crate::invariant::check(fresh, || {
            let here = self.store.version_of(sector, &key).map_or("none".into(), |v| v.to_string());
            format!("a coordinator's fresh write {version} in sector {sector} is older than the copy here ({here})")
        });
        if preference.len() == 1 && self.pending.is_none() && !self.mover.relays.contains_key(&sector) {
            // The only replica: the reply waits for this turn's fsync, nothing else.
            return self.reply(rx, conn, h, Body::Ok);
        }
        let op = self.new_op(rx.now(), OpKind::Write, conn, h, sector, key.clone(), need, preference.len());
        let entry = Entry { key, version, value, expires };
        self.count_answer(rx, op, self.cfg.id, Some(version), None);
        if bugs::planted(Bug::DoubleCountedAck) {
            self.count_answer(rx, op, self.cfg.id, Some(version), None);
        }
        self.relay(rx, sector, &entry, &replicas);
        if let Some(o) = self.coord.ops.get_mut(&op) {
            o.entry = Some(entry.clone());
            o.tried = preference.clone();
        }
        let me = self.cfg.id;
        for node in preference.into_iter().filter(|&n| n != me) {
            let body = Body::Store { entry: entry.clone(), hint_for: 0, repair: false };
            if !replicas.contains(&node) || !self.ask_peer(rx, node, op, body) {
                self.hand_to_stand_in(rx, op, node);
            }
        }
    }

    /// Sloppy quorum: a replica `down` could not take a write, so the next
    /// live node in ring order outside the preference list takes it with a
    /// hint naming `down`; its acknowledgement counts towards W. A stand-in
    /// that fails is replaced by the next one, for the same replica.
    fn hand_to_stand_in(&mut self, rx: &mut impl NodeIo, op_id: u64, down: u32) {
        let (stand_in, down) = match (self.coord.ops.get(&op_id), &self.table) {
            (Some(op), Some(t)) => (
                t.ring_from(op.sector).into_iter().find(|n| {
                    !op.tried.contains(n) && t.member(*n).is_some_and(|m| m.state == crate::table::NodeState::Up)
                }),
                op.stood_in.iter().find(|&&(s, _)| s == down).map_or(down, |&(_, replica)| replica),
            ),
            _ => (None, down),
        };
        let entry = self.coord.ops.get(&op_id).and_then(|op| op.entry.clone());
        let (Some(node), Some(entry)) = (stand_in, entry) else {
            return self.count_failure(rx, op_id);
        };
        if let Some(op) = self.coord.ops.get_mut(&op_id) {
            op.tried.push(node);
            op.stood_in.push((node, down));
        }
        info!("node {down} unreachable: node {node} holds the write with a hint");
        if !self.ask_peer(rx, node, op_id, Body::Store { entry, hint_for: down, repair: false }) {
            self.hand_to_stand_in(rx, op_id, node);
        }
    }

    /// A write that ends with replicas that did not acknowledge it, neither
    /// themselves nor through a stand-in (the op timed out, or a refusal
    /// found no stand-in), leaves a hint here for each: a STORE that reaches
    /// one after the op is over is refused as late (see `handle_store`),
    /// and the hint is delivered once the replica is up (`deliver_hints`).
    /// Only while this write is still the copy here: a newer one brings its
    /// own copies, and a tombstone reaped since must not come back.
    fn hint_unacknowledged(&mut self, op: &Op) {
        let Some(entry) = &op.entry else { return };
        let acked = |n: u32| op.answers.iter().any(|&(a, _)| a == n);
        let covered = |n: u32| acked(n) || op.stood_in.iter().any(|&(s, replica)| replica == n && acked(s));
        let preference = &op.tried[..op.asked.min(op.tried.len())];
        let missing: Vec<u32> = preference.iter().copied().filter(|&n| n != self.cfg.id && !covered(n)).collect();
        if missing.is_empty() || self.store.version_of(op.sector, &entry.key) != Some(entry.version) {
            return;
        }
        for n in missing {
            log::debug!("node {n} did not acknowledge a write of sector {}: a hint is kept here", op.sector);
            if let Err(e) = apply_entry(&mut self.handoff.hints, n, entry) {
                warn!("cannot keep a hint for node {n}: {e}");
            }
        }
    }

    /// The connection to `node` closed: its answer for `op` will not come.
    pub(super) fn op_peer_lost(&mut self, rx: &mut impl NodeIo, op: u64, node: u32) {
        let is_write = self.coord.ops.get(&op).is_some_and(|o| o.entry.is_some());
        if is_write {
            self.hand_to_stand_in(rx, op, node);
        } else {
            self.count_failure(rx, op);
        }
    }

    fn start_read(
        &mut self,
        rx: &mut impl NodeIo,
        conn: ConnId,
        h: Header,
        sector: u32,
        replicas: Vec<u32>,
        key: Vec<u8>,
    ) {
        let need = self.read_quorum().max(1);
        if need == 1 && replicas == [self.cfg.id] && self.is_synced(sector) {
            let body = match self.store.get(sector, &key) {
                Ok(Some(item)) if item.live_value(rx.wall_ms()).is_some() => match item.value {
                    Some(value) => Body::Value { value, version: item.version, expires: item.expires },
                    None => Body::NotFound { version: None },
                },
                Ok(_) => Body::NotFound { version: None },
                Err(e) => Body::error(ErrorCode::Storage, format!("storage error: {e}")),
            };
            return self.reply(rx, conn, h, body);
        }
        // R answers from the preference list, however many of it are up:
        // fewer could all miss a write acknowledged by W (R + W > N).
        if replicas.len() < need {
            let reason = format!("quorum not reached: {} of {need} replicas are up", replicas.len());
            return self.reply(rx, conn, h, Body::error(ErrorCode::Retry, reason));
        }
        let op = self.new_op(rx.now(), OpKind::Read, conn, h, sector, key.clone(), need, replicas.len());
        match self.store.get(sector, &key) {
            // A copy still catching up does not count towards R.
            _ if !self.is_synced(sector) => self.count_failure(rx, op),
            Ok(item) => {
                let local = item.map(|i| entry_of(key.clone(), i));
                self.count_answer(rx, op, self.cfg.id, local.as_ref().map(|e| e.version), local);
            }
            Err(e) => {
                error!("read from sector {sector} failed: {e}");
                self.count_failure(rx, op);
            }
        }
        let me = self.cfg.id;
        for node in replicas.into_iter().filter(|&n| n != me) {
            if !self.ask_peer(rx, node, op, Body::Fetch { key: key.clone() }) {
                self.count_failure(rx, op);
            }
        }
    }

    fn write_quorum(&self) -> usize {
        self.table.as_ref().map_or(1, |t| t.write_quorum as usize)
    }

    fn read_quorum(&self) -> usize {
        self.table.as_ref().map_or(1, |t| t.read_quorum as usize)
    }

    // ----- operation bookkeeping ----------------------------------------

    /// Records one replica's answer; answers the client once the quorum is met.
    fn count_answer(
        &mut self,
        rx: &mut impl NodeIo,
        op_id: u64,
        node: u32,
        version: Option<Version>,
        entry: Option<Entry>,
    ) {
        let Some(op) = self.coord.ops.get_mut(&op_id) else {
            return;
        };
        op.ok += 1;
        op.answers.push((node, version));
        // Planted: an expired copy is judged before the newest is chosen.
        let expired = |e: &Entry| e.value.is_some() && crate::store::Item::is_expired_at(e.expires, rx.wall_ms());
        let entry = entry.filter(|e| !(bugs::planted(Bug::ExpiryBeforeNewest) && expired(e)));
        if let Some(e) = entry {
            let first_wins = bugs::planted(Bug::RepairOverwritesNewer) && op.newest.is_some();
            if !first_wins && op.newest.as_ref().is_none_or(|n| e.version > n.version) {
                op.newest = Some(e);
            }
        }
        if !op.replied && op.ok >= op.need {
            // The newest version wins first; then its expiry is judged by
            // this node's clock: an expired newest value is not found, even
            // if an older replica answered with a live older value.
            let now = rx.wall_ms();
            let body = match op.kind {
                OpKind::Write => Body::Ok,
                _ => match &op.newest {
                    Some(Entry { value: Some(v), version, expires, .. })
                        if !crate::store::Item::is_expired_at(*expires, now) =>
                    {
                        Body::Value { value: v.clone(), version: *version, expires: *expires }
                    }
                    _ => Body::NotFound { version: None },
                },
            };
            self.answer_client(rx, op_id, body);
        }
        self.maybe_retire(rx, op_id);
    }

    /// Records a replica that could not be asked or did not answer.
    fn count_failure(&mut self, rx: &mut impl NodeIo, op_id: u64) {
        let Some(op) = self.coord.ops.get_mut(&op_id) else {
            return;
        };
        op.failed += 1;
        if !op.replied && op.asked - op.failed < op.need {
            let reason = format!("quorum not reached: {} of {} replicas answered", op.ok, op.need);
            self.answer_client(rx, op_id, Body::error(ErrorCode::Retry, reason));
        }
        self.maybe_retire(rx, op_id);
    }

    /// Answers the op's client. An op begun in an earlier turn read and
    /// wrote only what that turn's fsync made durable, so its answer need
    /// not wait for this turn's fsync.
    fn answer_client(&mut self, rx: &mut impl NodeIo, op_id: u64, body: Body) {
        let Some(op) = self.coord.ops.get_mut(&op_id) else {
            return;
        };
        crate::invariant::check(!op.replied, || format!("op {op_id} answered twice"));
        op.replied = true;
        let (client, header, durable) = (op.client, op.header, op.turn < self.coord.turn);
        self.metrics.answered(op.verb, op.began, &body, durable.then(|| rx.now()));
        let msg = Message { header: Header { node: self.cfg.id, ..header }, body };
        self.answer_to(rx, client, msg, durable);
    }

    /// Drops an op once every replica answered (after repairing stale ones).
    fn maybe_retire(&mut self, rx: &mut impl NodeIo, op_id: u64) {
        let done = self.coord.ops.get(&op_id).is_some_and(|op| op.ok + op.failed >= op.asked);
        if done {
            self.finish_op(rx, op_id, None);
        }
    }

    /// Ends an op: answers the client with `fallback` if nobody has yet,
    /// repairs stale replicas of a read, and forgets it.
    fn finish_op(&mut self, rx: &mut impl NodeIo, op_id: u64, fallback: Option<Body>) {
        if let Some(body) = fallback {
            if self.coord.ops.get(&op_id).is_some_and(|op| !op.replied) {
                self.answer_client(rx, op_id, body);
            }
        }
        let Some(op) = self.coord.ops.remove(&op_id) else {
            return;
        };
        match (&op.kind, &op.newest) {
            (OpKind::Read, Some(newest)) => self.read_repair(rx, &op, newest.clone()),
            (OpKind::Write, _) => self.hint_unacknowledged(&op),
            _ => {}
        }
    }

    fn read_repair(&mut self, rx: &mut impl NodeIo, op: &Op, mut newest: Entry) {
        let overwrite = bugs::planted(Bug::RepairOverwritesNewer);
        if overwrite {
            newest.version = self.clock.tick(rx.wall_ms());
        }
        // A tombstone past the grace (or a value expired past it) may be
        // reaped any time: a replica that has no entry for the key has
        // reaped it or never had the key, and copying it back would only
        // undo the reaping (the reaping rounds put a tombstone of its
        // version over every older value; see `reap`).
        let grace_ms = u64::try_from(self.cfg.tombstone_grace.as_millis()).unwrap_or(u64::MAX);
        let past_grace = |ms: u64| ms.saturating_add(grace_ms) < rx.wall_ms();
        let reapable = !self.cfg.tombstone_grace.is_zero()
            && past_grace(newest.version.ms)
            && (newest.value.is_none() || newest.expires != 0 && past_grace(newest.expires));
        for &(node, version) in &op.answers {
            if version.is_some_and(|v| v >= newest.version) || (reapable && version.is_none()) {
                continue;
            }
            if node == self.cfg.id {
                let _ = apply_entry(&mut self.store, op.sector, &newest);
                continue;
            }
            if let Some(conn) = self.peer(rx, node) {
                info!("read repair of node {node} for a key in sector {}", op.sector);
                let deadline = rx.wall_ms() + TRANSFER_MS;
                let msg = Message {
                    header: Header { node: self.cfg.id, deadline, ..Header::default() },
                    body: Body::Store { entry: newest.clone(), hint_for: 0, repair: true },
                };
                rx.send_early(conn, &msg);
            }
        }
    }

    /// Ends every op past its deadline (a periodic sweep instead of one
    /// timer per request).
    pub(super) fn sweep_ops(&mut self, rx: &mut impl NodeIo) {
        let now = rx.now();
        let late: Vec<u64> = self.coord.ops.iter().filter(|(_, op)| op.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            self.on_op_deadline(rx, id);
        }
    }

    fn on_op_deadline(&mut self, rx: &mut impl NodeIo, op_id: u64) {
        let Some(op) = self.coord.ops.get(&op_id) else {
            return;
        };
        let reason = format!("timed out: {} of {} replicas answered", op.ok, op.need);
        let now = rx.now();
        self.coord.timeouts += 1;
        if self.coord.timeout_logged.is_none_or(|t| now.duration_since(t) >= TIMEOUT_LOG_EVERY) {
            // One line a second at most: a stalled peer times out every op that waits on it.
            let n = std::mem::take(&mut self.coord.timeouts);
            let silent: Vec<u32> = op.reqs.iter().filter_map(|r| self.awaiting.get(r).map(|a| a.node())).collect();
            let (kind, sector) = (&op.kind, op.sector);
            warn!("{n} op(s) timed out; latest: {kind:?} of sector {sector}, {reason}, none from {silent:?}");
            self.coord.timeout_logged = Some(now);
        }
        for req in op.reqs.clone() {
            self.awaiting.remove(&req);
        }
        self.finish_op(rx, op_id, Some(Body::error(ErrorCode::Retry, reason)));
    }

    // ----- replies from peers -------------------------------------------

    /// A peer's reply to a request made for op `op_id`.
    pub(super) fn handle_peer_reply(&mut self, rx: &mut impl NodeIo, op_id: u64, node: u32, msg: Message) {
        let Some(op) = self.coord.ops.get(&op_id) else {
            return;
        };
        if let OpKind::Forward = op.kind {
            let (client, header) = (op.client, op.header);
            let coord = msg.header.node;
            self.metrics.answered(op.verb, op.began, &msg.body, Some(rx.now()));
            // The coordinator answered after its own fsync: relay it at once.
            self.answer_to(rx, client, Message { header: Header { node: coord, ..header }, body: msg.body }, true);
            if let Some(op) = self.coord.ops.get_mut(&op_id) {
                op.replied = true;
            }
            return self.finish_op(rx, op_id, None);
        }
        match msg.body {
            Body::Ok => self.count_answer(rx, op_id, node, None, None),
            Body::Value { value, version, expires } => {
                let entry = Entry { key: op.key.clone(), version, value: Some(value), expires };
                self.count_answer(rx, op_id, node, Some(version), Some(entry));
            }
            Body::NotFound { version } => {
                let entry = version.map(|v| Entry { key: op.key.clone(), version: v, value: None, expires: 0 });
                self.count_answer(rx, op_id, node, version, entry);
            }
            // A refused write goes to a stand-in, as an unreachable replica's.
            _ => self.op_peer_lost(rx, op_id, node),
        }
    }

    // ----- requests from peers ------------------------------------------

    /// A replica write, a repair, a relayed write, or (with `hint_for`) a
    /// write held for an unreachable node. A coordinator's write that
    /// arrives long after it was made (this node was stalled) is refused:
    /// the coordinator has settled the request already, and the copy comes
    /// back by read repair, hints or a move instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_store(
        &mut self,
        rx: &mut impl NodeIo,
        conn: ConnId,
        h: Header,
        entry: Entry,
        hint_for: u32,
        repair: bool,
    ) {
        let Some(table) = &self.table else {
            return self.reply(rx, conn, h, Body::error(ErrorCode::NoTable, "no table yet"));
        };
        let sector = table.sector_of(&entry.key);
        let section = record::value_section_len(entry.value.as_deref(), entry.expires);
        if let Err(e) = record::check_lengths(entry.key.len(), section) {
            // Checked before anything else, so the reason is the real one.
            return self.reply(rx, conn, h, Body::error(ErrorCode::TooLarge, e.to_string()));
        }
        if self.leaving && !repair {
            // A copy here would leave with this node: the coordinator must
            // count another (a stand-in) towards W.
            return self.reply(rx, conn, h, Body::error(ErrorCode::Retry, "node is leaving the cluster"));
        }
        let ahead = entry.version.ms.saturating_sub(rx.wall_ms());
        if ahead > MAX_SKEW_MS {
            // A version from the future would win over every later write
            // and drag every clock forward.
            info!("refusing a write of sector {sector} versioned {ahead} ms ahead of this clock");
            let reason = format!("version {} is {ahead} ms ahead of this node's clock", entry.version);
            return self.reply(rx, conn, h, Body::error(ErrorCode::Future, reason));
        }
        if repair && (h.deadline <= rx.wall_ms() || h.deadline > rx.wall_ms() + TRANSFER_MS + 2 * MAX_SKEW_MS) {
            // A copy sent before a tombstone of its key was reaped must not
            // arrive after it (see `reap`): a repair is valid only until its
            // deadline, at most TRANSFER_MS after it was sent.
            info!("refusing a repair of sector {sector} past or without a valid deadline");
            let reason = format!("repair deadline {} not within {TRANSFER_MS} ms from now", h.deadline);
            return self.reply(rx, conn, h, Body::error(ErrorCode::Expired, reason));
        }
        let age = rx.wall_ms().saturating_sub(entry.version.ms);
        if !repair && age > STALE_WRITE_MS {
            info!("refusing a replica write of sector {sector} made {age} ms ago");
            let reason = format!("replica write arrived {age} ms late");
            return self.reply(rx, conn, h, Body::error(ErrorCode::Late, reason));
        }
        self.clock.observe(entry.version);
        let hinted = hint_for != 0 && hint_for != self.cfg.id;
        let applied = if hinted {
            apply_entry(&mut self.handoff.hints, hint_for, &entry)
        } else {
            apply_entry(&mut self.store, sector, &entry)
        };
        match applied {
            Ok(fresh) => {
                // Relaying only writes that were new here ends relay chains.
                if fresh && !hinted {
                    self.relay(rx, sector, &entry, &[h.node]);
                }
                self.reply(rx, conn, h, Body::Ok)
            }
            Err(e) => {
                error!("replica write to sector {sector} failed: {e}");
                self.reply(rx, conn, h, Body::error(ErrorCode::Storage, format!("storage error: {e}")));
            }
        }
    }

    /// FETCH (a coordinator's replica read; refused while the sector is
    /// catching up) or INSPECT (an operator's look at the local copy). An
    /// expired value is answered as it is, with its expiry: the coordinator
    /// judges expiry after picking the newest version, and `gtstore
    /// inspect` says an expired copy is not found.
    pub(super) fn handle_fetch(
        &mut self,
        rx: &mut impl NodeIo,
        conn: ConnId,
        h: Header,
        key: Vec<u8>,
        quorum_read: bool,
    ) {
        let Some(table) = &self.table else {
            return self.reply(rx, conn, h, Body::error(ErrorCode::NoTable, "no table yet"));
        };
        let sector = table.sector_of(&key);
        if quorum_read && !self.is_synced(sector) {
            let reason = format!("sector {sector} is catching up");
            return self.reply(rx, conn, h, Body::error(ErrorCode::CatchingUp, reason));
        }
        let body = match self.store.get(sector, &key) {
            Ok(Some(item)) => match item.value {
                Some(value) => Body::Value { value, version: item.version, expires: item.expires },
                None => Body::NotFound { version: Some(item.version) },
            },
            Ok(None) => Body::NotFound { version: None },
            Err(e) => Body::error(ErrorCode::Storage, format!("storage error: {e}")),
        };
        // A read acknowledges nothing: it goes before the turn's fsync (what
        // it may show is already written to the log, see before_early_flush).
        let msg = Message { header: Header { node: self.cfg.id, ..h }, body };
        rx.send_early(conn, &msg);
    }

    pub(super) fn handle_stats(&mut self, rx: &mut impl NodeIo, conn: ConnId, h: Header) {
        let owned = self.table.as_ref().map_or(0, |t| t.owned_by(self.cfg.id));
        let missing = self.missing_sectors();
        let stats = Stats {
            sectors: owned as u32,
            // Live: neither deleted nor expired by this node's clock.
            keys: self.store.total_unexpired_keys(rx.wall_ms()) as u64,
            missing: missing as u32,
            figures: Some(Box::new(self.figures())),
        };
        self.reply(rx, conn, h, Body::StatsReply(stats));
    }
}
