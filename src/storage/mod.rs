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
//! that turn's acknowledgements (requests to peers, replica reads and
//! answers to requests begun in an earlier turn go out before it).
//!
//! Each concern is a part that owns its state, in its own file:
//! `coord` (`Coordinator`: client requests, quorums, replica
//! writes and reads), `sync` (`Mover`: moves, catch-up, leaving),
//! `handoff` (`Handoff`: hints and orphaned sectors) and `links`
//! (`Links`: the manager and peer connections, reconnect
//! backoff). This file holds the node itself, the tables, and the event
//! dispatch. Every request to a peer is recorded in one map,
//! `Node::awaiting` (request id → `Awaited`), so routing a peer's reply
//! and failing what a lost peer was asked are one `match` each. The node
//! runs on any [`Io`]: the epoll `Reactor` or the simulator.

mod coord;
mod handoff;
mod links;
mod metrics;
mod orphans;
mod reap;
mod resp;
mod stream;
mod sync;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::sys::signal::Signal;

use crate::bugs::{self, Bug};
use crate::cli::{Exit, EX_OSERR, EX_UNAVAILABLE};
use crate::daemon::{reopen_log, Readiness};
use crate::hlc::Clock;
use crate::idmap::IdMap;
use crate::net::codec::{error_reply, Body, ErrorCode, Header, Limits, Message};
use crate::net::{self, ConnId, Gate, Guarded, Handler, Io, Reactor};
use crate::store::{FsyncPolicy, Store};
use crate::table::{NodeState, Table};

/// The storage node's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Send a heartbeat to the manager.
    Heartbeat,
    /// Reconnect to the manager.
    Manager,
    /// Give up waiting to register at start.
    StartLimit,
    /// Retry failed sector pulls.
    PullRetry,
    /// Offer hints for delivery.
    Hints,
    /// A leave took too long.
    LeaveLimit,
    /// End operations past their deadline.
    OpSweep,
    /// Create a few queued empty sectors.
    Create,
    /// Retry a leaver's hand-over of sectors and hints.
    HandOver,
    /// A step of compaction (see `Node::compact_some`).
    Compact,
    /// Build the next CHUNKs of the PULLs being answered.
    Stream,
    /// Look for tombstones to reap (see `reap`).
    Reap,
    /// Hand a few queued orphaned sectors over.
    Orphans,
}

/// How long a leaving node waits for its sectors to be taken over.
const LEAVE_LIMIT: Duration = Duration::from_secs(120);
/// How often operations are checked against their deadline.
const OP_SWEEP: Duration = Duration::from_millis(50);
/// Rounds of events a loop turn takes without waiting before its group
/// commit (see `Reactor::drain_rounds`). Measured on 1 node, 50 clients
/// (`gtstore-bench --preload`): 0 rounds 73k-80k ops/s, 8 rounds 92k-93k.
const DRAIN_ROUNDS: usize = 8;
/// A loop turn starts no extra round of events after this long.
const DRAIN_BUDGET: Duration = Duration::from_millis(2);
/// Loop turns are summarised over windows of this length...
const TURN_WINDOW: Duration = Duration::from_secs(10);
/// ...and a window is logged if its longest turn took longer than this: a
/// twentieth of the manager's default dead-after limit (1 s).
const TURN_LOG_OVER: Duration = Duration::from_millis(50);
/// Bytes of old segments a compaction step scans (one step per loop turn).
const COMPACT_BUDGET: u64 = 256 * 1024;
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
    /// How long a tombstone is kept at least before it may be reaped
    /// (zero: for ever). See `reap`.
    pub tombstone_grace: Duration,
    /// A connection whose header line stays incomplete this long is closed
    /// (zero: never).
    pub header_timeout: Duration,
    /// The keys its connections are checked against (`net::auth`).
    pub keys: crate::net::auth::Keys,
    /// Replies queued on a connection past which it is not read until they
    /// drain below half (a peer past it counts as unreachable).
    pub max_output: usize,
    /// An accepted connection idle this long is closed (zero: never).
    pub idle_timeout: Duration,
    /// Where the RESP2 front end listens (`--resp-listen`), if anywhere.
    pub resp_listen: Option<SocketAddr>,
    /// Where to serve Prometheus metrics (`--metrics-listen`; None: nowhere).
    pub metrics_listen: Option<SocketAddr>,
}

impl crate::daemon::DaemonPaths for Config {
    fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    fn log_file(&self) -> Option<&std::path::Path> {
        self.log_file.as_deref()
    }
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
    /// A client of the RESP2 port (`--resp-listen`).
    Resp,
    /// A scrape of the metrics port (`--metrics-listen`).
    Metrics,
}

/// The driver a storage node runs on: the real loop or the simulator.
pub trait NodeIo: Io<Data = Link, Timer = Timer> {}

impl<X: Io<Data = Link, Timer = Timer>> NodeIo for X {}

/// The storage node's state: the data it holds, the tables it routes by,
/// and one part per concern, each owning its state. Replies from peers are
/// routed by one map, `awaiting`.
pub struct Node {
    cfg: Config,
    store: Store,
    clock: Clock,
    /// The table requests are routed by.
    table: Option<Table>,
    /// The table the cluster is moving to, if a move runs.
    pending: Option<Table>,
    /// Client operations coordinated or forwarded here.
    coord: coord::Coordinator,
    /// Sector moves: what is synced, pulled, served and relayed.
    mover: sync::Mover,
    /// Hinted handoff and orphaned sectors.
    handoff: handoff::Handoff,
    /// Connections to the manager and the peers.
    links: links::Links,
    /// Peer request id → what awaits its reply.
    awaiting: IdMap<u64, Awaited>,
    /// SIGTERM arrived: leaving the cluster.
    leaving: bool,
    /// No table lists this node any more: it hands over what it holds, then exits.
    left: bool,
    /// Why the loop was stopped, if it was a failure.
    failed: Option<Exit>,
    next_id: u64,
    ready: Option<Readiness>,
    /// A `Timer::Compact` is armed.
    compact_armed: bool,
    /// PULLs being answered, a few CHUNKs per turn.
    streams: stream::Streams,
    /// Orphaned sectors to hand over, a few per turn.
    orphans: orphans::Orphans,
    /// The RESP2 front end's connections.
    resp: resp::RespFront,
    /// Tombstones older than the grace being reaped.
    reaper: reap::Reaper,
    /// Requests, errors, latencies and connections counted (`--metrics-listen`).
    metrics: metrics::NodeMetrics,
}

/// What a request sent to a peer is waiting for; the reply (or the loss of
/// the peer) is routed by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    /// A replica's answer for a coordinated or forwarded op.
    Op { op: u64, node: u32 },
    /// The CHUNKs of a sector pulled from `node`.
    Pull { sector: u32, node: u32 },
    /// An acknowledgement of one send of a hand-off batch.
    Batch { batch: u64, node: u32 },
    /// An acknowledgement of a write of `sector` relayed to a new holder.
    Relay { sector: u32, node: u32 },
    /// A member's answer to reaping round `round`.
    Reap { round: u64, node: u32 },
}

impl Awaited {
    /// The peer the request went to.
    fn node(self) -> u32 {
        match self {
            Awaited::Op { node, .. }
            | Awaited::Pull { node, .. }
            | Awaited::Batch { node, .. }
            | Awaited::Relay { node, .. }
            | Awaited::Reap { node, .. } => node,
        }
    }
}

impl Node {
    /// A node over its opened stores, advertising `advertise` to the
    /// manager; `ready` is told once the node serves (None: nobody waits).
    pub fn new(cfg: Config, store: Store, hints: Store, advertise: String, ready: Option<Readiness>) -> Node {
        // A restarted node's clock starts after every version it stores, so
        // its next write wins over its own earlier ones even if the wall
        // clock stepped back while it was down.
        let mut clock = Clock::new(cfg.id);
        for s in [&store, &hints] {
            for sector in s.sector_ids() {
                s.keys_with_versions(sector).into_iter().for_each(|(_, v)| clock.observe(v));
            }
        }
        Node {
            clock,
            store,
            table: None,
            pending: None,
            coord: coord::Coordinator::default(),
            mover: sync::Mover::default(),
            handoff: handoff::Handoff::new(hints),
            links: links::Links::new(advertise),
            awaiting: IdMap::default(),
            leaving: false,
            left: false,
            failed: None,
            next_id: 0,
            ready,
            compact_armed: false,
            streams: stream::Streams::default(),
            orphans: orphans::Orphans::default(),
            resp: resp::RespFront::default(),
            reaper: reap::Reaper::default(),
            metrics: metrics::NodeMetrics::default(),
            cfg,
        }
    }

    /// Connects to the manager and arms the first timers.
    pub fn start(&mut self, rx: &mut impl NodeIo) {
        self.connect_manager(rx);
        rx.add_timer(self.cfg.heartbeat, Timer::Heartbeat);
        rx.add_timer(START_LIMIT, Timer::StartLimit);
        rx.add_timer(handoff::HINT_PERIOD, Timer::Hints);
        rx.add_timer(OP_SWEEP, Timer::OpSweep);
        if !self.cfg.tombstone_grace.is_zero() {
            rx.add_timer(reap::sweep_period(self.cfg.tombstone_grace), Timer::Reap);
        }
    }

    /// The node's id.
    pub fn id(&self) -> u32 {
        self.cfg.id
    }

    /// The node's sectors (for the simulator's checker).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's hint store.
    pub fn hints(&self) -> &Store {
        &self.handoff.hints
    }

    /// The table requests are routed by, and the pending one.
    pub fn tables(&self) -> (Option<&Table>, Option<&Table>) {
        (self.table.as_ref(), self.pending.as_ref())
    }

    /// True if this node's copy of `sector` is complete for the newest table.
    pub fn holds_synced(&self, sector: u32) -> bool {
        self.mover.synced.contains(&sector)
    }

    /// Why the node stopped, if it failed.
    pub fn failure(&self) -> Option<&Exit> {
        self.failed.as_ref()
    }

    fn limits(&self) -> (usize, usize) {
        (self.cfg.max_key, self.cfg.max_value)
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ----- manager link -------------------------------------------------

    fn connect_manager(&mut self, rx: &mut impl NodeIo) {
        match rx.connect(self.cfg.manager, Link::Manager) {
            Ok(id) => self.links.manager = Some(id),
            Err(e) => {
                warn!("cannot reach manager {}: {e}", self.cfg.manager);
                rx.add_timer(Duration::from_millis(300), Timer::Manager);
            }
        }
    }

    /// Registers on a new manager connection; a leaving node that lost
    /// its connection announces the leave again right after.
    fn register(&mut self, rx: &mut impl NodeIo) {
        let Some(m) = self.links.manager else { return };
        let header = Header { node: self.cfg.id, req: self.next_id(), ..Header::default() };
        rx.send(m, &Message { header, body: Body::Register { id: self.cfg.id, addr: self.links.advertise.clone() } });
        if self.leaving {
            let header = Header { node: self.cfg.id, req: self.next_id(), ..Header::default() };
            rx.send(m, &Message { header, body: Body::Leave });
        }
    }

    // ----- peers --------------------------------------------------------

    /// The persistent connection to peer `node`, opened if needed; `None`
    /// while a reconnect backoff to it runs.
    fn peer(&mut self, rx: &mut impl NodeIo, node: u32) -> Option<ConnId> {
        if let Some(&id) = self.links.peers.get(&node) {
            if rx.is_open(id) {
                // A peer that does not read what it is sent is treated as
                // unreachable for new requests until it catches up.
                let backlog = rx.pending_output(id);
                if backlog > self.cfg.max_output {
                    log::debug!("peer {node}: {backlog} bytes not read; unreachable until it catches up");
                    return None;
                }
                return Some(id);
            }
        }
        if self.links.backing_off(node, rx.now()) {
            return None;
        }
        let addr = self
            .newest()?
            .member(node)
            .or_else(|| self.table.as_ref()?.member(node))?
            .addr
            .parse::<SocketAddr>()
            .ok()?;
        match rx.connect(addr, Link::Peer(node)) {
            Ok(id) => {
                self.links.peers.insert(node, id);
                Some(id)
            }
            Err(e) => {
                warn!("cannot connect to node {node} at {addr}: {e}");
                None
            }
        }
    }

    /// Sends `body` to peer `node` on behalf of op `op`; false if unreachable.
    fn ask_peer(&mut self, rx: &mut impl NodeIo, node: u32, op: u64, body: Body) -> bool {
        let Some(conn) = self.peer(rx, node) else {
            return false;
        };
        let req = self.next_id();
        // A forwarded request keeps its client's deadline.
        let deadline = self.coord.deadline_of(op);
        let msg = Message { header: Header { node: self.cfg.id, req, deadline, ..Header::default() }, body };
        if !rx.send_early(conn, &msg) {
            return false;
        }
        self.awaiting.insert(req, Awaited::Op { op, node });
        if let Some(o) = self.coord.ops.get_mut(&op) {
            o.reqs.push(req);
        }
        true
    }

    /// The live replicas of `sector`: its preference list without down nodes.
    fn replicas(&self, sector: u32) -> Vec<u32> {
        let Some(t) = &self.table else {
            return Vec::new();
        };
        t.preference(sector).into_iter().filter(|&n| t.member(n).is_some_and(|m| m.state == NodeState::Up)).collect()
    }
}

impl Node {
    /// A request from a client or a peer that connected to us.
    fn handle_inbound(&mut self, rx: &mut impl NodeIo, conn: ConnId, msg: Message) {
        let h = msg.header;
        self.metrics.received(conn, &msg.body, || rx.now());
        match msg.body {
            Body::Put { .. } | Body::Get { .. } | Body::Del { .. } => self.handle_client(rx, conn, msg),
            Body::Store { entry, hint_for, repair } => self.handle_store(rx, conn, h, entry, hint_for, repair),
            Body::Fetch { key } => self.handle_fetch(rx, conn, h, key, true),
            Body::Inspect { key } => self.handle_fetch(rx, conn, h, key, false),
            Body::Pull { sector, digest } => self.handle_pull(rx, conn, h, sector, digest),
            Body::Reap { epoch, sector, entries } => self.handle_reap(rx, conn, h, epoch, sector, entries),
            Body::StatsReq => self.handle_stats(rx, conn, h),
            Body::Hello | Body::GetTable => self.handle_table_request(rx, conn, h),
            other => {
                let reason = format!("{} is not a storage node request", other.verb());
                rx.send(conn, &error_reply(h.req, ErrorCode::BadRequest, &reason));
            }
        }
        self.metrics.handled();
    }

    /// HELLO or GET_TABLE from a client that could not reach the manager:
    /// this node's cached tables, itself as the contact node. A node issues
    /// no client ids: the reply's CLIENT_ID is 0 (see gtstore-protocol(5)).
    fn handle_table_request(&mut self, rx: &mut impl NodeIo, conn: ConnId, h: Header) {
        let Some(table) = self.table.clone() else {
            rx.send(conn, &error_reply(h.req, ErrorCode::NoTable, "this node has no table yet"));
            return;
        };
        let header = Header { client: 0, node: self.cfg.id, req: h.req, deadline: 0 };
        let body = Body::TableMsg { table, pending: self.pending.clone(), contact: self.cfg.id };
        rx.send(conn, &Message { header, body });
    }

    /// A reply on one of our peer connections, routed by what awaits it.
    fn handle_from_peer(&mut self, rx: &mut impl NodeIo, msg: Message) {
        let req = msg.header.req;
        match self.awaiting.get(&req).copied() {
            Some(Awaited::Pull { .. }) => match msg.body {
                Body::Chunk { entries, last, .. } => self.on_chunk(rx, req, msg.header.deadline, entries, last),
                _ => self.pull_ended(rx, req, false),
            },
            Some(Awaited::Batch { batch, .. }) => {
                self.awaiting.remove(&req);
                self.batch_step(rx, batch, Some(matches!(msg.body, Body::Ok)));
            }
            Some(Awaited::Op { op, node }) => {
                self.awaiting.remove(&req);
                self.handle_peer_reply(rx, op, node, msg);
            }
            Some(Awaited::Relay { sector, .. }) => {
                self.awaiting.remove(&req);
                self.relay_done(rx, sector, matches!(msg.body, Body::Ok));
            }
            Some(Awaited::Reap { round, node }) => {
                self.awaiting.remove(&req);
                let overwritten = match msg.body {
                    Body::Reaped { overwritten } => Some(overwritten),
                    _ => None,
                };
                self.reap_answered(rx, round, node, overwritten);
            }
            None => {}
        }
    }

    /// The connection to peer `node` closed: nothing it was asked will be
    /// answered. Each request is failed in the order it was sent.
    fn peer_lost(&mut self, rx: &mut impl NodeIo, node: u32) {
        let mut lost: Vec<(u64, Awaited)> =
            self.awaiting.iter().filter(|(_, a)| a.node() == node).map(|(&r, &a)| (r, a)).collect();
        lost.sort_unstable_by_key(|&(req, _)| req);
        for (req, awaited) in lost {
            match awaited {
                Awaited::Op { op, .. } => {
                    self.awaiting.remove(&req);
                    self.op_peer_lost(rx, op, node);
                }
                Awaited::Pull { .. } => self.pull_ended(rx, req, false),
                Awaited::Batch { batch, .. } => {
                    self.awaiting.remove(&req);
                    self.batch_step(rx, batch, Some(false));
                }
                Awaited::Relay { sector, .. } => {
                    self.awaiting.remove(&req);
                    self.relay_done(rx, sector, false);
                }
                Awaited::Reap { round, node } => {
                    self.awaiting.remove(&req);
                    self.reap_answered(rx, round, node, None);
                }
            }
        }
    }

    fn heartbeat(&mut self, rx: &mut impl NodeIo) {
        if let Some(m) = self.links.manager {
            let epoch = self.newest().map_or(0, |t| t.epoch);
            let header = Header { node: self.cfg.id, ..Header::default() };
            rx.send(m, &Message { header, body: Body::Heartbeat { epoch } });
            self.repeat_synced(rx);
        }
        rx.add_timer(self.cfg.heartbeat, Timer::Heartbeat);
    }

    /// The start limit: a node that has not even got a table from the
    /// manager gives up; one that is receiving its sectors keeps going.
    fn give_up_starting(&mut self, rx: &mut impl NodeIo) {
        if self.table.is_some() {
            return;
        }
        if let Some(r) = self.ready.take() {
            let msg = format!("could not register with the manager at {} within {:?}", self.cfg.manager, START_LIMIT);
            error!("{msg}");
            r.fail(EX_UNAVAILABLE, &msg);
            self.failed = Some(Exit::new(EX_UNAVAILABLE, msg));
            rx.stop();
        }
    }
}

impl Node {
    /// One budgeted step of compaction, in a loop turn of its own: a write
    /// that leaves a sector mostly dead only queues it (`Store::apply`), and
    /// `before_sleep` arms the next step while any is due, so a big sector
    /// is rewritten over many turns instead of holding one.
    fn compact_some(&mut self) {
        self.compact_armed = false;
        if self.store.compaction_pending() {
            self.store.compact_step(COMPACT_BUDGET);
        } else {
            self.handoff.hints.compact_step(COMPACT_BUDGET);
        }
    }
}

impl Handler for Node {
    type Data = Link;
    type Timer = Timer;

    fn accepted(&mut self, _peer: Option<SocketAddr>, framing: crate::net::Framing) -> Link {
        let link = match framing {
            crate::net::Framing::RespServer => Link::Resp,
            crate::net::Framing::Http => Link::Metrics,
            _ => Link::Inbound,
        };
        self.metrics.opened(link);
        link
    }

    fn on_message<X: NodeIo>(&mut self, rx: &mut X, conn: ConnId, msg: Message) {
        let link = rx.data(conn).copied().unwrap_or_default();
        match (link, msg.body) {
            (Link::Manager, Body::TableMsg { table, pending, .. }) => {
                self.on_tables(rx, table, pending);
                self.mover.manager_heard_ms = rx.wall_ms();
            }
            (Link::Manager, Body::Error { reason, .. }) => match self.ready.take() {
                Some(r) => {
                    let msg = format!("manager refused registration: {reason}");
                    error!("{msg}");
                    r.fail(EX_UNAVAILABLE, &msg);
                    self.failed = Some(Exit::new(EX_UNAVAILABLE, msg));
                    rx.stop();
                }
                None => warn!("manager: {reason}"),
            },
            (Link::Manager, _) => {}
            (Link::Peer(_), body) => self.handle_from_peer(rx, Message { header: msg.header, body }),
            (Link::Inbound, body) => self.handle_inbound(rx, conn, Message { header: msg.header, body }),
            (Link::Resp, Body::Resp(request)) => self.handle_resp(rx, conn, request),
            (Link::Metrics, Body::Http(req)) => self.serve_metrics(rx, conn, &req),
            (Link::Resp | Link::Metrics, _) => rx.close(conn),
        }
    }

    fn on_timer<X: NodeIo>(&mut self, rx: &mut X, timer: Timer) {
        match timer {
            Timer::Heartbeat => self.heartbeat(rx),
            Timer::Manager if self.links.manager.is_none() => self.connect_manager(rx),
            Timer::Manager => {}
            Timer::StartLimit => self.give_up_starting(rx),
            Timer::PullRetry => self.on_pull_retry(rx),
            Timer::Hints => self.deliver_hints(rx),
            Timer::Create => self.create_some(rx),
            Timer::HandOver => self.hand_over(rx),
            Timer::Compact => self.compact_some(),
            Timer::Stream => self.stream_some(rx),
            Timer::Orphans => self.push_some_orphans(rx),
            Timer::Reap => self.reap_sweep(rx),
            Timer::LeaveLimit => {
                warn!("leave not finished within {LEAVE_LIMIT:?}; exiting with the data on disk");
                rx.stop();
            }
            Timer::OpSweep => {
                self.sweep_ops(rx);
                self.sweep_pulls(rx);
                self.resp_resend_due(rx);
                rx.add_timer(OP_SWEEP, Timer::OpSweep);
            }
        }
    }

    fn on_signal<X: NodeIo>(&mut self, rx: &mut X, sig: Signal) {
        match sig {
            Signal::SIGHUP => reopen_log(&self.cfg.log_file),
            _ => {
                info!("{sig}: leaving the cluster");
                self.start_leave(rx);
            }
        }
    }

    fn on_connected<X: NodeIo>(&mut self, rx: &mut X, conn: ConnId) {
        if Some(conn) == self.links.manager {
            self.register(rx);
        }
        if let Some(&Link::Peer(node)) = rx.data(conn) {
            self.links.connected(node);
        }
    }

    fn on_closed<X: NodeIo>(&mut self, rx: &mut X, conn: ConnId, link: Link) {
        self.metrics.closed(conn, link);
        match link {
            Link::Manager => {
                if self.links.manager == Some(conn) {
                    self.links.manager = None;
                    rx.add_timer(Duration::from_millis(300), Timer::Manager);
                }
            }
            Link::Peer(node) => {
                self.links.failed(node, conn, rx.now());
                self.peer_lost(rx, node);
            }
            Link::Resp => self.resp_closed(conn),
            Link::Inbound | Link::Metrics => {}
        }
    }

    /// Replica reads leave before the fsync; what they may show must at
    /// least survive a crash of this process, so the turn's WAL frames are
    /// written (not yet synced) first.
    fn before_early_flush<X: NodeIo>(&mut self, rx: &mut X) {
        if let Err(e) = self.store.write_out() {
            rx.abort(EX_OSERR, &format!("write-ahead log write failed: {e}"));
        }
    }

    fn before_sleep<X: NodeIo>(&mut self, rx: &mut X) {
        if bugs::planted(Bug::AckBeforeFsync) {
            self.coord.turn += 1;
            self.metrics.sent(rx.now());
            return;
        }
        let synced = self.store.sync_dirty().and_then(|_| self.handoff.hints.sync_dirty());
        if let Err(e) = synced {
            // Acknowledging a write that is not on disk would break the
            // contract; stop before any reply of this turn is written.
            rx.abort(EX_OSERR, &format!("fsync failed: {e}"));
            return;
        }
        // Everything applied up to now is durable.
        self.coord.turn += 1;
        self.metrics.sent(rx.now());
        if !self.compact_armed && (self.store.compaction_pending() || self.handoff.hints.compaction_pending()) {
            self.compact_armed = true;
            rx.add_timer(Duration::ZERO, Timer::Compact);
        }
    }
}

/// Runs a storage node until it has left the cluster (SIGTERM or SIGINT).
/// The wire entry of a stored item: every copy of it (replication, moves,
/// hints, hand-overs) carries its expiry.
pub(super) fn entry_of(key: Vec<u8>, item: crate::store::Item) -> net::codec::Entry {
    net::codec::Entry { key, version: item.version, value: item.value, expires: item.expires }
}

/// Applies a copy of entry `e` to `store` (sector `sector`), its expiry
/// included; see [`Store::apply_expiring`].
pub(super) fn apply_entry(store: &mut Store, sector: u32, e: &net::codec::Entry) -> crate::store::Result<bool> {
    store.apply_expiring(sector, &e.key, e.version, e.value.as_deref(), e.expires)
}

pub fn run(cfg: Config, ready: Readiness) -> Result<(), Exit> {
    let fail = |ready: Readiness, code: i32, msg: String| {
        ready.fail(code, &msg);
        Exit::new(code, msg)
    };
    let opened = Store::open(&cfg.data_dir, cfg.fsync)
        .and_then(|s| Ok((s, Store::open(&cfg.data_dir.join("hints"), cfg.fsync)?)));
    let (store, hints) = match opened {
        Ok(v) => v,
        Err(e) => return Err(fail(ready, EX_OSERR, format!("{}: {e}", cfg.data_dir.display()))),
    };
    info!(
        "node {}: {} sectors, {} live keys and hints for {} node(s) recovered from {}",
        cfg.id,
        store.sector_ids().len(),
        store.total_live_keys(),
        hints.sector_ids().len(),
        cfg.data_dir.display()
    );
    let limits = Limits { max_header: cfg.max_header, max_body: cfg.max_key + cfg.max_value + 256 };
    let started = (|| -> net::Result<(Reactor<Guarded<Link>, Timer>, SocketAddr)> {
        let mut rx = Reactor::new(limits)?;
        rx.max_conns = cfg.max_conns;
        rx.header_timeout = Some(cfg.header_timeout).filter(|t| !t.is_zero());
        rx.max_output = cfg.max_output;
        rx.idle_timeout = Some(cfg.idle_timeout).filter(|t| !t.is_zero());
        rx.drain_rounds = DRAIN_ROUNDS;
        rx.drain_budget = DRAIN_BUDGET;
        rx.turns = Some(net::TurnWatch::new(TURN_WINDOW, TURN_LOG_OVER));
        let bound = rx.listen(cfg.listen)?;
        if let Some(addr) = cfg.resp_listen {
            let resp = rx.listen_framed(addr, net::Framing::RespServer)?;
            info!("RESP2 front end listening on {resp}");
        }
        rx.catch_signals()?;
        Ok((rx, bound))
    })();
    let (mut rx, bound) = match started {
        Ok(v) => v,
        Err(e) => return Err(fail(ready, EX_OSERR, format!("cannot listen on {}: {e}", cfg.listen))),
    };
    if let Some(addr) = cfg.metrics_listen {
        match rx.listen_framed(addr, net::Framing::Http) {
            Ok(at) => info!("node {}: metrics at http://{at}{}", cfg.id, crate::metrics::PATH),
            Err(e) => return Err(fail(ready, EX_OSERR, format!("cannot listen on {addr} for metrics: {e}"))),
        }
    }
    println!("listening on {bound}");
    let _ = std::io::stdout().flush();
    info!("node {} listening on {bound}", cfg.id);
    let keys = cfg.keys.clone();
    let mut gate = Gate::new(Node::new(cfg, store, hints, bound.to_string(), Some(ready)), keys);
    gate.drive(&mut rx, |node, io| node.start(io));
    let started_at = Instant::now();
    net::run(&mut rx, &mut gate).map_err(|e| Exit::new(EX_OSERR, format!("event loop: {e}")))?;
    let node = &mut gate.role;
    if let Err(e) = node.store.sync_dirty() {
        error!("final sync failed: {e}");
    }
    let longest = rx.turns.as_ref().map_or(Duration::ZERO, net::TurnWatch::longest_ever);
    let cpu = rx.turns.as_ref().map_or(Duration::ZERO, net::TurnWatch::cpu_ever);
    info!(
        "node {} stopped after {:?}; longest loop turn {longest:?}, most CPU in a turn {cpu:?}",
        node.cfg.id,
        started_at.elapsed()
    );
    match node.failed.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
