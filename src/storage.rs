//! The storage node daemon: replica, coordinator and forwarder.
//!
//! A node keeps the sectors of its preference lists in a [`Store`]. A
//! client request for a key whose preference list includes this node is
//! coordinated here: a write gets a fresh HLC version, is applied locally
//! and sent to the other replicas, and is answered after W
//! acknowledgements; a read asks the replicas, answers with the newest of
//! R replies and repairs stale replicas afterwards. A request for another
//! node's key is forwarded to that key's coordinator. Group commit: writes
//! of a loop turn are fsynced in `before_sleep`, before the loop writes
//! that turn's replies.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::sys::signal::Signal;

use crate::cli::{Exit, EX_OSERR, EX_UNAVAILABLE};
use crate::daemon::Readiness;
use crate::hlc::{Clock, Version};
use crate::manager::{error_reply, reopen_log};
use crate::net::codec::{Body, Entry, Header, Limits, Message, Stats};
use crate::net::{self, ConnId, Handler, Reactor};
use crate::store::{FsyncPolicy, Store};
use crate::table::{NodeState, Table};

/// Timer payload: send a heartbeat to the manager.
const TIMER_HEARTBEAT: u64 = 1;
/// Timer payload: reconnect to the manager.
const TIMER_MANAGER: u64 = 2;
/// Timer payload: give up waiting to register at start.
const TIMER_START_LIMIT: u64 = 3;
/// Timer payloads at or above this are operation deadlines (op id + base).
const TIMER_OP_BASE: u64 = 1 << 32;
/// How long a coordinated operation waits for its quorum.
const OP_DEADLINE: Duration = Duration::from_millis(1000);
/// How long a starting node waits to register before it gives up.
const START_LIMIT: Duration = Duration::from_secs(15);

/// How the node was started.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node id.
    pub id: u32,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The manager's address.
    pub manager: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Largest key accepted.
    pub max_key: usize,
    /// Largest value accepted.
    pub max_value: usize,
    /// Longest header line accepted.
    pub max_header: usize,
    /// Most simultaneous connections.
    pub max_conns: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Where logs go after SIGHUP (None: stderr).
    pub log_file: Option<PathBuf>,
}

/// Who is on the other end of a connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A client or a peer that connected to us.
    #[default]
    Inbound,
    /// Our connection to peer node `id`.
    Peer(u32),
    /// Our connection to the manager.
    Manager,
}

/// What an operation in flight is waiting for.
#[derive(Debug)]
enum OpKind {
    /// A PUT or DEL: count acknowledgements.
    Write,
    /// A GET: keep the newest reply.
    Read,
    /// A request relayed to its coordinator: pass the reply back.
    Forward,
}

/// A client request this node coordinates or forwards.
#[derive(Debug)]
struct Op {
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
    timer: crate::net::timer::TimerId,
}

/// The storage node's state.
pub struct Node {
    cfg: Config,
    store: Store,
    clock: Clock,
    table: Option<Table>,
    advertise: String,
    manager: Option<ConnId>,
    peers: HashMap<u32, ConnId>,
    ops: HashMap<u64, Op>,
    /// Peer request id → (op id, peer node).
    inflight: HashMap<u64, (u64, u32)>,
    next_id: u64,
    ready: Option<Readiness>,
}

impl Node {
    fn limits(&self) -> (usize, usize) {
        (self.cfg.max_key, self.cfg.max_value)
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ----- manager link -------------------------------------------------

    fn connect_manager(&mut self, rx: &mut Reactor<Link>) {
        match rx.connect(self.cfg.manager, Link::Manager) {
            Ok(id) => self.manager = Some(id),
            Err(e) => {
                warn!("cannot reach manager {}: {e}", self.cfg.manager);
                rx.add_timer(Duration::from_millis(300), TIMER_MANAGER);
            }
        }
    }

    fn register(&mut self, rx: &mut Reactor<Link>) {
        let msg = Message {
            header: Header {
                node: self.cfg.id,
                req: self.next_id(),
                ..Header::default()
            },
            body: Body::Register {
                id: self.cfg.id,
                addr: self.advertise.clone(),
            },
        };
        if let Some(m) = self.manager {
            rx.send(m, &msg);
        }
    }

    fn on_table(&mut self, table: Table) {
        if self.table.as_ref().is_some_and(|t| t.epoch > table.epoch) {
            return;
        }
        if self.table.as_ref().map(|t| t.epoch) != Some(table.epoch) {
            info!(
                "table epoch {}: {} members, {} sectors here",
                table.epoch,
                table.members.len(),
                table.sectors_held_by(self.cfg.id).len()
            );
        }
        self.table = Some(table);
        if let Some(r) = self.ready.take() {
            info!("registered with the manager; serving");
            r.ready();
        }
    }

    // ----- peers --------------------------------------------------------

    fn peer(&mut self, rx: &mut Reactor<Link>, node: u32) -> Option<ConnId> {
        if let Some(&id) = self.peers.get(&node) {
            if rx.conn(id).is_some() {
                return Some(id);
            }
        }
        let addr = self
            .table
            .as_ref()?
            .member(node)?
            .addr
            .parse::<SocketAddr>()
            .ok()?;
        match rx.connect(addr, Link::Peer(node)) {
            Ok(id) => {
                self.peers.insert(node, id);
                Some(id)
            }
            Err(e) => {
                warn!("cannot connect to node {node} at {addr}: {e}");
                None
            }
        }
    }

    /// Sends `body` to peer `node` on behalf of op `op`; false if unreachable.
    fn ask_peer(&mut self, rx: &mut Reactor<Link>, node: u32, op: u64, body: Body) -> bool {
        let Some(conn) = self.peer(rx, node) else {
            return false;
        };
        let req = self.next_id();
        let msg = Message {
            header: Header {
                node: self.cfg.id,
                req,
                client: 0,
            },
            body,
        };
        if !rx.send(conn, &msg) {
            return false;
        }
        self.inflight.insert(req, (op, node));
        true
    }

    /// The live replicas of `sector`: its preference list without down nodes.
    fn replicas(&self, sector: u32) -> Vec<u32> {
        let Some(t) = &self.table else {
            return Vec::new();
        };
        t.preference(sector)
            .into_iter()
            .filter(|&n| t.member(n).is_some_and(|m| m.state == NodeState::Up))
            .collect()
    }

    // ----- client requests ----------------------------------------------

    fn reply(&self, rx: &mut Reactor<Link>, conn: ConnId, header: Header, body: Body) {
        let header = Header {
            node: self.cfg.id,
            ..header
        };
        rx.send(conn, &Message { header, body });
    }

    fn handle_client(&mut self, rx: &mut Reactor<Link>, conn: ConnId, msg: Message) {
        let h = msg.header;
        let (key, value) = match msg.body {
            Body::Put { key, value } => (key, Some(value)),
            Body::Del { key } => (key, None),
            Body::Get { key } => return self.start_read(rx, conn, h, key),
            _ => return,
        };
        let (max_key, max_value) = self.limits();
        if key.len() > max_key || value.as_ref().is_some_and(|v| v.len() > max_value) {
            let reason = format!("key or value over the limit ({max_key} / {max_value} bytes)");
            return self.reply(rx, conn, h, Body::Error { reason });
        }
        self.start_write(rx, conn, h, key, value);
    }

    /// Routes a client request: coordinate it here or forward it. Returns
    /// the sector and replicas when this node coordinates.
    fn route(
        &mut self,
        rx: &mut Reactor<Link>,
        conn: ConnId,
        h: Header,
        key: &[u8],
        body: impl FnOnce() -> Body,
    ) -> Option<(u32, Vec<u32>)> {
        let Some(table) = &self.table else {
            self.reply(
                rx,
                conn,
                h,
                Body::Error {
                    reason: "node has no partition table yet".into(),
                },
            );
            return None;
        };
        let sector = table.sector_of(key);
        let replicas = self.replicas(sector);
        if replicas.contains(&self.cfg.id) {
            return Some((sector, replicas));
        }
        match replicas.first() {
            Some(&coord) => self.forward(rx, conn, h, coord, body()),
            None => self.reply(
                rx,
                conn,
                h,
                Body::Error {
                    reason: "no live replica for this key".into(),
                },
            ),
        }
        None
    }

    fn forward(&mut self, rx: &mut Reactor<Link>, conn: ConnId, h: Header, coord: u32, body: Body) {
        let op = self.new_op(rx, OpKind::Forward, conn, h, 0, Vec::new(), 1, 1);
        if !self.ask_peer(rx, coord, op, body) {
            self.finish_op(
                rx,
                op,
                Some(Body::Error {
                    reason: format!("coordinator server{coord} unreachable"),
                }),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_op(
        &mut self,
        rx: &mut Reactor<Link>,
        kind: OpKind,
        client: ConnId,
        header: Header,
        sector: u32,
        key: Vec<u8>,
        need: usize,
        asked: usize,
    ) -> u64 {
        let id = self.next_id();
        let timer = rx.add_timer(OP_DEADLINE, TIMER_OP_BASE + id);
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
            timer,
        };
        self.ops.insert(id, op);
        id
    }

    fn start_write(
        &mut self,
        rx: &mut Reactor<Link>,
        conn: ConnId,
        h: Header,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) {
        let fwd_key = key.clone();
        let fwd_value = value.clone();
        let body = move || match fwd_value {
            Some(value) => Body::Put {
                key: fwd_key,
                value,
            },
            None => Body::Del { key: fwd_key },
        };
        let Some((sector, replicas)) = self.route(rx, conn, h, &key, body) else {
            return;
        };
        let version = self.clock.tick();
        if let Err(e) = self.store.apply(sector, &key, version, value.as_deref()) {
            error!("write to sector {sector} failed: {e}");
            return self.reply(
                rx,
                conn,
                h,
                Body::Error {
                    reason: format!("storage error: {e}"),
                },
            );
        }
        let need = self.write_quorum().min(replicas.len()).max(1);
        let op = self.new_op(
            rx,
            OpKind::Write,
            conn,
            h,
            sector,
            key.clone(),
            need,
            replicas.len(),
        );
        let entry = Entry {
            key,
            version,
            value,
        };
        self.count_answer(rx, op, self.cfg.id, Some(version), None);
        let me = self.cfg.id;
        for node in replicas.into_iter().filter(|&n| n != me) {
            let body = Body::Store {
                entry: entry.clone(),
                hint_for: 0,
            };
            if !self.ask_peer(rx, node, op, body) {
                self.count_failure(rx, op);
            }
        }
    }

    fn start_read(&mut self, rx: &mut Reactor<Link>, conn: ConnId, h: Header, key: Vec<u8>) {
        let fwd_key = key.clone();
        let Some((sector, replicas)) = self.route(rx, conn, h, &key, || Body::Get { key: fwd_key })
        else {
            return;
        };
        let need = self.read_quorum().min(replicas.len()).max(1);
        let op = self.new_op(
            rx,
            OpKind::Read,
            conn,
            h,
            sector,
            key.clone(),
            need,
            replicas.len(),
        );
        let local = match self.store.get(sector, &key) {
            Ok(item) => item.map(|i| Entry {
                key: key.clone(),
                version: i.version,
                value: i.value,
            }),
            Err(e) => {
                error!("read from sector {sector} failed: {e}");
                self.count_failure(rx, op);
                None
            }
        };
        let version = local.as_ref().map(|e| e.version);
        self.count_answer(rx, op, self.cfg.id, version, local);
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
        rx: &mut Reactor<Link>,
        op_id: u64,
        node: u32,
        version: Option<Version>,
        entry: Option<Entry>,
    ) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.ok += 1;
        op.answers.push((node, version));
        if let Some(e) = entry {
            if op.newest.as_ref().is_none_or(|n| e.version > n.version) {
                op.newest = Some(e);
            }
        }
        if !op.replied && op.ok >= op.need {
            let body = match op.kind {
                OpKind::Write => Body::Ok,
                _ => match &op.newest {
                    Some(Entry {
                        value: Some(v),
                        version,
                        ..
                    }) => Body::Value {
                        value: v.clone(),
                        version: *version,
                    },
                    _ => Body::NotFound { version: None },
                },
            };
            self.answer_client(rx, op_id, body);
        }
        self.maybe_retire(rx, op_id);
    }

    /// Records a replica that could not be asked or did not answer.
    fn count_failure(&mut self, rx: &mut Reactor<Link>, op_id: u64) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.failed += 1;
        if !op.replied && op.asked - op.failed < op.need {
            let reason = format!(
                "quorum not reached: {} of {} replicas answered",
                op.ok, op.need
            );
            self.answer_client(rx, op_id, Body::Error { reason });
        }
        self.maybe_retire(rx, op_id);
    }

    fn answer_client(&mut self, rx: &mut Reactor<Link>, op_id: u64, body: Body) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.replied = true;
        let (client, header) = (op.client, op.header);
        self.reply(rx, client, header, body);
    }

    /// Drops an op once every replica answered (after repairing stale ones).
    fn maybe_retire(&mut self, rx: &mut Reactor<Link>, op_id: u64) {
        let done = self
            .ops
            .get(&op_id)
            .is_some_and(|op| op.ok + op.failed >= op.asked);
        if done {
            self.finish_op(rx, op_id, None);
        }
    }

    /// Ends an op: answers the client with `fallback` if nobody has yet,
    /// repairs stale replicas of a read, and forgets it.
    fn finish_op(&mut self, rx: &mut Reactor<Link>, op_id: u64, fallback: Option<Body>) {
        if let Some(body) = fallback {
            if self.ops.get(&op_id).is_some_and(|op| !op.replied) {
                self.answer_client(rx, op_id, body);
            }
        }
        let Some(op) = self.ops.remove(&op_id) else {
            return;
        };
        rx.timers.cancel(op.timer);
        if let (OpKind::Read, Some(newest)) = (&op.kind, &op.newest) {
            self.read_repair(rx, &op, newest.clone());
        }
    }

    fn read_repair(&mut self, rx: &mut Reactor<Link>, op: &Op, newest: Entry) {
        for &(node, version) in &op.answers {
            if version.is_some_and(|v| v >= newest.version) {
                continue;
            }
            if node == self.cfg.id {
                let _ =
                    self.store
                        .apply(op.sector, &op.key, newest.version, newest.value.as_deref());
                continue;
            }
            if let Some(conn) = self.peer(rx, node) {
                info!(
                    "read repair of node {node} for a key in sector {}",
                    op.sector
                );
                let msg = Message {
                    header: Header {
                        node: self.cfg.id,
                        ..Header::default()
                    },
                    body: Body::Store {
                        entry: newest.clone(),
                        hint_for: 0,
                    },
                };
                rx.send(conn, &msg);
            }
        }
    }

    fn on_op_deadline(&mut self, rx: &mut Reactor<Link>, op_id: u64) {
        let Some(op) = self.ops.get(&op_id) else {
            return;
        };
        let reason = format!("timed out: {} of {} replicas answered", op.ok, op.need);
        self.inflight.retain(|_, (o, _)| *o != op_id);
        self.finish_op(rx, op_id, Some(Body::Error { reason }));
    }

    // ----- replies from peers -------------------------------------------

    fn handle_peer_reply(&mut self, rx: &mut Reactor<Link>, msg: Message) {
        let Some((op_id, node)) = self.inflight.remove(&msg.header.req) else {
            return;
        };
        let Some(op) = self.ops.get(&op_id) else {
            return;
        };
        if let OpKind::Forward = op.kind {
            let (client, header) = (op.client, op.header);
            let coord = msg.header.node;
            rx.send(
                client,
                &Message {
                    header: Header {
                        node: coord,
                        ..header
                    },
                    body: msg.body,
                },
            );
            if let Some(op) = self.ops.get_mut(&op_id) {
                op.replied = true;
            }
            return self.finish_op(rx, op_id, None);
        }
        match msg.body {
            Body::Ok => self.count_answer(rx, op_id, node, None, None),
            Body::Value { value, version } => {
                let entry = Entry {
                    key: op.key.clone(),
                    version,
                    value: Some(value),
                };
                self.count_answer(rx, op_id, node, Some(version), Some(entry));
            }
            Body::NotFound { version } => {
                let entry = version.map(|v| Entry {
                    key: op.key.clone(),
                    version: v,
                    value: None,
                });
                self.count_answer(rx, op_id, node, version, entry);
            }
            _ => self.count_failure(rx, op_id),
        }
    }

    // ----- requests from peers ------------------------------------------

    fn handle_store(&mut self, rx: &mut Reactor<Link>, conn: ConnId, h: Header, entry: Entry) {
        let Some(table) = &self.table else {
            return self.reply(
                rx,
                conn,
                h,
                Body::Error {
                    reason: "no table yet".into(),
                },
            );
        };
        let sector = table.sector_of(&entry.key);
        self.clock.observe(entry.version);
        match self
            .store
            .apply(sector, &entry.key, entry.version, entry.value.as_deref())
        {
            Ok(_) => self.reply(rx, conn, h, Body::Ok),
            Err(e) => {
                error!("replica write to sector {sector} failed: {e}");
                self.reply(
                    rx,
                    conn,
                    h,
                    Body::Error {
                        reason: format!("storage error: {e}"),
                    },
                );
            }
        }
    }

    fn handle_fetch(&mut self, rx: &mut Reactor<Link>, conn: ConnId, h: Header, key: Vec<u8>) {
        let Some(table) = &self.table else {
            return self.reply(
                rx,
                conn,
                h,
                Body::Error {
                    reason: "no table yet".into(),
                },
            );
        };
        let sector = table.sector_of(&key);
        let body = match self.store.get(sector, &key) {
            Ok(Some(item)) => match item.value {
                Some(value) => Body::Value {
                    value,
                    version: item.version,
                },
                None => Body::NotFound {
                    version: Some(item.version),
                },
            },
            Ok(None) => Body::NotFound { version: None },
            Err(e) => Body::Error {
                reason: format!("storage error: {e}"),
            },
        };
        self.reply(rx, conn, h, body);
    }

    fn handle_stats(&mut self, rx: &mut Reactor<Link>, conn: ConnId, h: Header) {
        let held = self
            .table
            .as_ref()
            .map_or(0, |t| t.sectors_held_by(self.cfg.id).len());
        let stats = Stats {
            sectors: held as u32,
            keys: self.store.total_live_keys() as u64,
            missing: 0,
        };
        self.reply(rx, conn, h, Body::StatsReply(stats));
    }
}

impl Handler for Node {
    type Data = Link;

    fn accepted(&mut self, _peer: Option<SocketAddr>) -> Link {
        Link::Inbound
    }

    fn on_message(&mut self, rx: &mut Reactor<Link>, conn: ConnId, msg: Message) {
        let link = rx.conn(conn).map(|c| c.data).unwrap_or_default();
        match (link, msg.body) {
            (Link::Manager, Body::TableMsg { table, .. }) => self.on_table(table),
            (Link::Manager, Body::Error { reason }) => {
                error!("manager refused us: {reason}");
                if let Some(r) = self.ready.take() {
                    r.fail(
                        EX_UNAVAILABLE,
                        &format!("manager refused registration: {reason}"),
                    );
                }
                rx.stop();
            }
            (Link::Manager, _) => {}
            (Link::Peer(_), body) => self.handle_peer_reply(
                rx,
                Message {
                    header: msg.header,
                    body,
                },
            ),
            (Link::Inbound, body) => {
                let h = msg.header;
                match body {
                    Body::Put { .. } | Body::Get { .. } | Body::Del { .. } => {
                        self.handle_client(rx, conn, Message { header: h, body })
                    }
                    Body::Store { entry, .. } => self.handle_store(rx, conn, h, entry),
                    Body::Fetch { key } | Body::Inspect { key } => {
                        self.handle_fetch(rx, conn, h, key)
                    }
                    Body::StatsReq => self.handle_stats(rx, conn, h),
                    Body::TableMsg { table, .. } => self.on_table(table),
                    other => {
                        let reason = format!("{} is not a storage node request", other.verb());
                        rx.send(conn, &error_reply(h.req, &reason));
                    }
                }
            }
        }
    }

    fn on_timer(&mut self, rx: &mut Reactor<Link>, payload: u64) {
        match payload {
            TIMER_HEARTBEAT => {
                if let Some(m) = self.manager {
                    let epoch = self.table.as_ref().map_or(0, |t| t.epoch);
                    let msg = Message {
                        header: Header {
                            node: self.cfg.id,
                            ..Header::default()
                        },
                        body: Body::Heartbeat { epoch },
                    };
                    rx.send(m, &msg);
                }
                rx.add_timer(self.cfg.heartbeat, TIMER_HEARTBEAT);
            }
            TIMER_MANAGER => {
                if self.manager.is_none() {
                    self.connect_manager(rx);
                }
            }
            TIMER_START_LIMIT => {
                if let Some(r) = self.ready.take() {
                    let msg = format!(
                        "could not register with the manager at {} within {:?}",
                        self.cfg.manager, START_LIMIT
                    );
                    error!("{msg}");
                    r.fail(EX_UNAVAILABLE, &msg);
                    rx.stop();
                }
            }
            p if p >= TIMER_OP_BASE => self.on_op_deadline(rx, p - TIMER_OP_BASE),
            _ => {}
        }
    }

    fn on_signal(&mut self, rx: &mut Reactor<Link>, sig: Signal) {
        match sig {
            Signal::SIGHUP => reopen_log(&self.cfg.log_file),
            _ => {
                info!("{sig}: syncing and exiting");
                if let Err(e) = self.store.sync_dirty() {
                    error!("final sync failed: {e}");
                }
                rx.stop();
            }
        }
    }

    fn on_connected(&mut self, rx: &mut Reactor<Link>, conn: ConnId) {
        if Some(conn) == self.manager {
            self.register(rx);
        }
    }

    fn on_closed(&mut self, rx: &mut Reactor<Link>, conn: ConnId, link: Link) {
        match link {
            Link::Manager => {
                if self.manager == Some(conn) {
                    self.manager = None;
                    rx.add_timer(Duration::from_millis(300), TIMER_MANAGER);
                }
            }
            Link::Peer(node) => {
                if self.peers.get(&node) == Some(&conn) {
                    self.peers.remove(&node);
                }
                let lost: Vec<u64> = self
                    .inflight
                    .iter()
                    .filter(|(_, (_, n))| *n == node)
                    .map(|(r, _)| *r)
                    .collect();
                for req in lost {
                    if let Some((op, _)) = self.inflight.remove(&req) {
                        self.count_failure(rx, op);
                    }
                }
            }
            Link::Inbound => {}
        }
    }

    fn before_sleep(&mut self, _rx: &mut Reactor<Link>) {
        if let Err(e) = self.store.sync_dirty() {
            // Acknowledging a write that is not on disk would break the
            // contract; stop before any reply of this turn is written.
            error!("fsync failed: {e}; exiting so no unsynced write is acknowledged");
            std::process::exit(EX_OSERR);
        }
    }
}

/// Runs a storage node until SIGTERM or SIGINT.
pub fn run(cfg: Config, ready: Readiness) -> Result<(), Exit> {
    let fail = |ready: Readiness, code: i32, msg: String| {
        ready.fail(code, &msg);
        Exit::new(code, msg)
    };
    let store = match Store::open(&cfg.data_dir, cfg.fsync) {
        Ok(s) => s,
        Err(e) => {
            return Err(fail(
                ready,
                EX_OSERR,
                format!("{}: {e}", cfg.data_dir.display()),
            ))
        }
    };
    info!(
        "node {}: {} sectors and {} live keys recovered from {}",
        cfg.id,
        store.sector_ids().len(),
        store.total_live_keys(),
        cfg.data_dir.display()
    );
    let limits = Limits {
        max_header: cfg.max_header,
        max_body: cfg.max_key + cfg.max_value + 256,
    };
    let started = (|| -> net::Result<(Reactor<Link>, SocketAddr)> {
        let mut rx = Reactor::new(limits)?;
        rx.max_conns = cfg.max_conns;
        let bound = rx.listen(cfg.listen)?;
        rx.catch_signals()?;
        Ok((rx, bound))
    })();
    let (mut rx, bound) = match started {
        Ok(v) => v,
        Err(e) => {
            return Err(fail(
                ready,
                EX_OSERR,
                format!("cannot listen on {}: {e}", cfg.listen),
            ))
        }
    };
    println!("listening on {bound}");
    let _ = std::io::stdout().flush();
    info!("node {} listening on {bound}", cfg.id);
    let mut node = Node {
        clock: Clock::new(cfg.id),
        store,
        table: None,
        advertise: bound.to_string(),
        manager: None,
        peers: HashMap::new(),
        ops: HashMap::new(),
        inflight: HashMap::new(),
        next_id: 0,
        ready: Some(ready),
        cfg,
    };
    node.connect_manager(&mut rx);
    rx.add_timer(node.cfg.heartbeat, TIMER_HEARTBEAT);
    rx.add_timer(START_LIMIT, TIMER_START_LIMIT);
    let started_at = Instant::now();
    net::run(&mut rx, &mut node).map_err(|e| Exit::new(EX_OSERR, format!("event loop: {e}")))?;
    info!(
        "node {} stopped after {:?}",
        node.cfg.id,
        started_at.elapsed()
    );
    if node.ready.is_some() {
        return Err(Exit::new(EX_UNAVAILABLE, "stopped before registering"));
    }
    Ok(())
}
