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
//! The node's work is split over three files: this one (state, the
//! manager link, peers, the event dispatch), `coord` (client requests,
//! quorums, replica writes and reads) and `sync` (moves, catch-up, hints,
//! orphans, leaving).

use std::collections::{BTreeSet, VecDeque};

mod coord;
mod sync;

use coord::Op;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use sync::{Batch, Pull};

use log::{error, info, warn};
use nix::sys::signal::Signal;

use crate::bugs::{self, Bug};
use crate::cli::{Exit, EX_OSERR, EX_UNAVAILABLE};
use crate::daemon::{reopen_log, Readiness};
use crate::hlc::Clock;
use crate::idmap::{IdMap, IdSet};
use crate::net::codec::{error_reply, Body, ErrorCode, Header, Limits, Message};
use crate::net::{self, ConnId, Handler, Io, Reactor};
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

impl crate::daemon::DaemonPaths for Config {
    fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    fn log_file(&self) -> Option<&std::path::Path> {
        self.log_file.as_deref()
    }
}

/// The first wait before reconnecting to a peer whose connection failed.
const PEER_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait before reconnecting to a peer.
const PEER_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A peer not to reconnect to before `until`.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    /// The wait that set `until`; the next failure doubles it.
    delay: Duration,
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

/// The driver a storage node runs on: the real loop or the simulator.
pub trait NodeIo: Io<Data = Link, Timer = Timer> {}

impl<X: Io<Data = Link, Timer = Timer>> NodeIo for X {}

/// The storage node's state.
pub struct Node {
    cfg: Config,
    store: Store,
    clock: Clock,
    /// The table requests are routed by.
    table: Option<Table>,
    /// The table the cluster is moving to, if a move runs.
    pending: Option<Table>,
    /// Sectors whose copy here is complete for the newest table.
    synced: IdSet<u32>,
    /// Complete but empty sectors whose files are still to be created.
    to_create: BTreeSet<u32>,
    /// Sectors being pulled, and those waiting their turn or a retry.
    pulls: IdMap<u32, Pull>,
    pull_queue: VecDeque<u32>,
    pull_retry: Vec<u32>,
    /// Pull request id → (sector, source node).
    pull_reqs: IdMap<u64, (u32, u32)>,
    /// Pullers of each sector served here: later writes are relayed to them.
    relays: IdMap<u32, Vec<u32>>,
    /// Sectors streamed to a puller since the last switch (safe to drop).
    served: IdSet<u32>,
    /// The epoch whose SYNCED was last sent.
    reported_epoch: u64,
    /// Writes held for unreachable nodes; the sector id is the target node.
    hints: Store,
    /// Groups of sends awaiting acknowledgement (orphans, hint delivery).
    batches: IdMap<u64, Batch>,
    /// Batch request id → (batch id, node).
    batch_reqs: IdMap<u64, (u64, u32)>,
    /// SIGTERM arrived: leaving the cluster.
    leaving: bool,
    /// Loop turns completed; everything applied in an earlier turn is on disk.
    turn: u64,
    /// Why the loop was stopped, if it was a failure.
    failed: Option<Exit>,
    advertise: String,
    manager: Option<ConnId>,
    peers: IdMap<u32, ConnId>,
    /// Peers whose connection failed, not to be retried yet.
    backoff: IdMap<u32, Backoff>,
    ops: IdMap<u64, Op>,
    /// Peer request id → (op id, peer node).
    inflight: IdMap<u64, (u64, u32)>,
    next_id: u64,
    ready: Option<Readiness>,
}

impl Node {
    /// A node over its opened stores, advertising `advertise` to the
    /// manager; `ready` is told once the node serves (None: nobody waits).
    pub fn new(cfg: Config, store: Store, hints: Store, advertise: String, ready: Option<Readiness>) -> Node {
        Node {
            clock: Clock::new(cfg.id),
            store,
            hints,
            table: None,
            pending: None,
            synced: IdSet::default(),
            to_create: BTreeSet::new(),
            pulls: IdMap::default(),
            pull_queue: VecDeque::new(),
            pull_retry: Vec::new(),
            pull_reqs: IdMap::default(),
            relays: IdMap::default(),
            served: IdSet::default(),
            reported_epoch: 0,
            batches: IdMap::default(),
            batch_reqs: IdMap::default(),
            leaving: false,
            turn: 0,
            failed: None,
            advertise,
            manager: None,
            peers: IdMap::default(),
            backoff: IdMap::default(),
            ops: IdMap::default(),
            inflight: IdMap::default(),
            next_id: 0,
            ready,
            cfg,
        }
    }

    /// Connects to the manager and arms the first timers.
    pub fn start(&mut self, rx: &mut impl NodeIo) {
        self.connect_manager(rx);
        rx.add_timer(self.cfg.heartbeat, Timer::Heartbeat);
        rx.add_timer(START_LIMIT, Timer::StartLimit);
        rx.add_timer(sync::HINT_PERIOD, Timer::Hints);
        rx.add_timer(OP_SWEEP, Timer::OpSweep);
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
        &self.hints
    }

    /// The table requests are routed by, and the pending one.
    pub fn tables(&self) -> (Option<&Table>, Option<&Table>) {
        (self.table.as_ref(), self.pending.as_ref())
    }

    /// True if this node's copy of `sector` is complete for the newest table.
    pub fn holds_synced(&self, sector: u32) -> bool {
        self.synced.contains(&sector)
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
            Ok(id) => self.manager = Some(id),
            Err(e) => {
                warn!("cannot reach manager {}: {e}", self.cfg.manager);
                rx.add_timer(Duration::from_millis(300), Timer::Manager);
            }
        }
    }

    /// Registers on a new manager connection; a leaving node that lost
    /// its connection announces the leave again right after.
    fn register(&mut self, rx: &mut impl NodeIo) {
        let Some(m) = self.manager else { return };
        let header = Header { node: self.cfg.id, req: self.next_id(), ..Header::default() };
        rx.send(m, &Message { header, body: Body::Register { id: self.cfg.id, addr: self.advertise.clone() } });
        if self.leaving {
            let header = Header { node: self.cfg.id, req: self.next_id(), ..Header::default() };
            rx.send(m, &Message { header, body: Body::Leave });
        }
    }

    // ----- peers --------------------------------------------------------

    /// The persistent connection to peer `node`, opened if needed; `None`
    /// while a reconnect backoff to it runs.
    fn peer(&mut self, rx: &mut impl NodeIo, node: u32) -> Option<ConnId> {
        if let Some(&id) = self.peers.get(&node) {
            if rx.is_open(id) {
                return Some(id);
            }
        }
        if self.backoff.get(&node).is_some_and(|b| b.until > rx.now()) {
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
    fn ask_peer(&mut self, rx: &mut impl NodeIo, node: u32, op: u64, body: Body) -> bool {
        let Some(conn) = self.peer(rx, node) else {
            return false;
        };
        let req = self.next_id();
        let msg = Message { header: Header { node: self.cfg.id, req, client: 0 }, body };
        if !rx.send_early(conn, &msg) {
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
        t.preference(sector).into_iter().filter(|&n| t.member(n).is_some_and(|m| m.state == NodeState::Up)).collect()
    }
}

impl Node {
    /// A request from a client or a peer that connected to us.
    fn handle_inbound(&mut self, rx: &mut impl NodeIo, conn: ConnId, msg: Message) {
        let h = msg.header;
        match msg.body {
            Body::Put { .. } | Body::Get { .. } | Body::Del { .. } => self.handle_client(rx, conn, msg),
            Body::Store { entry, hint_for, repair } => self.handle_store(rx, conn, h, entry, hint_for, repair),
            Body::Fetch { key } => self.handle_fetch(rx, conn, h, key, true),
            Body::Inspect { key } => self.handle_fetch(rx, conn, h, key, false),
            Body::Pull { sector, digest } => self.handle_pull(rx, conn, h, sector, digest),
            Body::StatsReq => self.handle_stats(rx, conn, h),
            other => {
                let reason = format!("{} is not a storage node request", other.verb());
                rx.send(conn, &error_reply(h.req, ErrorCode::BadRequest, &reason));
            }
        }
    }

    /// A reply on one of our peer connections.
    fn handle_from_peer(&mut self, rx: &mut impl NodeIo, msg: Message) {
        let req = msg.header.req;
        if self.is_pull_req(req) {
            match msg.body {
                Body::Chunk { entries, last, .. } => self.on_chunk(rx, req, entries, last),
                _ => self.pull_ended(rx, req, false),
            }
        } else if self.is_batch_req(req) {
            self.batch_ack(req, matches!(msg.body, Body::Ok));
        } else {
            self.handle_peer_reply(rx, msg);
        }
    }

    fn heartbeat(&mut self, rx: &mut impl NodeIo) {
        if let Some(m) = self.manager {
            let epoch = self.newest().map_or(0, |t| t.epoch);
            let header = Header { node: self.cfg.id, ..Header::default() };
            rx.send(m, &Message { header, body: Body::Heartbeat { epoch } });
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

impl Handler for Node {
    type Data = Link;
    type Timer = Timer;

    fn accepted(&mut self, _peer: Option<SocketAddr>) -> Link {
        Link::Inbound
    }

    fn on_message<X: NodeIo>(&mut self, rx: &mut X, conn: ConnId, msg: Message) {
        let link = rx.data(conn).copied().unwrap_or_default();
        match (link, msg.body) {
            (Link::Manager, Body::TableMsg { table, pending, .. }) => self.on_tables(rx, table, pending),
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
        }
    }

    fn on_timer<X: NodeIo>(&mut self, rx: &mut X, timer: Timer) {
        match timer {
            Timer::Heartbeat => self.heartbeat(rx),
            Timer::Manager if self.manager.is_none() => self.connect_manager(rx),
            Timer::Manager => {}
            Timer::StartLimit => self.give_up_starting(rx),
            Timer::PullRetry => self.on_pull_retry(rx),
            Timer::Hints => self.deliver_hints(rx),
            Timer::Create => self.create_some(rx),
            Timer::LeaveLimit => {
                warn!("leave not finished within {LEAVE_LIMIT:?}; exiting with the data on disk");
                rx.stop();
            }
            Timer::OpSweep => {
                self.sweep_ops(rx);
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
        if Some(conn) == self.manager {
            self.register(rx);
        }
        if let Some(&Link::Peer(node)) = rx.data(conn) {
            self.backoff.remove(&node);
        }
    }

    fn on_closed<X: NodeIo>(&mut self, rx: &mut X, conn: ConnId, link: Link) {
        match link {
            Link::Manager => {
                if self.manager == Some(conn) {
                    self.manager = None;
                    rx.add_timer(Duration::from_millis(300), Timer::Manager);
                }
            }
            Link::Peer(node) => {
                if self.peers.get(&node) == Some(&conn) {
                    self.peers.remove(&node);
                }
                // Reconnect with backoff: 50 ms, doubling to 2 s while it fails.
                let delay = self.backoff.get(&node).map_or(PEER_BACKOFF_MIN, |b| (b.delay * 2).min(PEER_BACKOFF_MAX));
                self.backoff.insert(node, Backoff { until: rx.now() + delay, delay });
                self.ops_lost(rx, node);
                self.pulls_lost(rx, node);
                self.batches_lost(node);
            }
            Link::Inbound => {}
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
            self.turn += 1;
            return;
        }
        let synced = self.store.sync_dirty().and_then(|_| self.hints.sync_dirty());
        if let Err(e) = synced {
            // Acknowledging a write that is not on disk would break the
            // contract; stop before any reply of this turn is written.
            rx.abort(EX_OSERR, &format!("fsync failed: {e}"));
            return;
        }
        // Everything applied up to now is durable.
        self.turn += 1;
    }
}

/// Runs a storage node until it has left the cluster (SIGTERM or SIGINT).
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
    let started = (|| -> net::Result<(Reactor<Link, Timer>, SocketAddr)> {
        let mut rx = Reactor::new(limits)?;
        rx.max_conns = cfg.max_conns;
        rx.drain_rounds = DRAIN_ROUNDS;
        rx.drain_budget = DRAIN_BUDGET;
        let bound = rx.listen(cfg.listen)?;
        rx.catch_signals()?;
        Ok((rx, bound))
    })();
    let (mut rx, bound) = match started {
        Ok(v) => v,
        Err(e) => return Err(fail(ready, EX_OSERR, format!("cannot listen on {}: {e}", cfg.listen))),
    };
    println!("listening on {bound}");
    let _ = std::io::stdout().flush();
    info!("node {} listening on {bound}", cfg.id);
    let mut node = Node::new(cfg, store, hints, bound.to_string(), Some(ready));
    node.start(&mut rx);
    let started_at = Instant::now();
    net::run(&mut rx, &mut node).map_err(|e| Exit::new(EX_OSERR, format!("event loop: {e}")))?;
    if let Err(e) = node.store.sync_dirty() {
        error!("final sync failed: {e}");
    }
    info!("node {} stopped after {:?}", node.cfg.id, started_at.elapsed());
    match node.failed.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
