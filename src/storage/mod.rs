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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

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

use crate::cli::{Exit, EX_OSERR, EX_UNAVAILABLE};
use crate::daemon::{reopen_log, Readiness};
use crate::hlc::Clock;
use crate::idmap::IdMap;
use crate::net::codec::{error_reply, Body, ErrorCode, Header, Limits, Message};
use crate::net::{self, ConnId, Handler, Reactor};
use crate::store::{FsyncPolicy, Store};
use crate::table::{NodeState, Table};

/// Timer payload: send a heartbeat to the manager.
const TIMER_HEARTBEAT: u64 = 1;
/// Timer payload: reconnect to the manager.
const TIMER_MANAGER: u64 = 2;
/// Timer payload: give up waiting to register at start.
const TIMER_START_LIMIT: u64 = 3;
/// Timer payload: retry failed sector pulls.
const TIMER_PULL_RETRY: u64 = 4;
/// Timer payload: offer hints for delivery.
const TIMER_HINTS: u64 = 5;
/// Timer payload: a leave took too long.
const TIMER_LEAVE_LIMIT: u64 = 6;
/// How long a leaving node waits for its sectors to be taken over.
const LEAVE_LIMIT: Duration = Duration::from_secs(120);
/// Timer payload: end operations past their deadline.
const TIMER_OP_SWEEP: u64 = 7;
/// How often operations are checked against their deadline.
const OP_SWEEP: Duration = Duration::from_millis(50);
/// Timer payload: create a few queued empty sectors.
const TIMER_CREATE: u64 = 8;
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
    synced: HashSet<u32>,
    /// Complete but empty sectors whose files are still to be created.
    to_create: BTreeSet<u32>,
    /// Sectors being pulled, and those waiting their turn or a retry.
    pulls: HashMap<u32, Pull>,
    pull_queue: VecDeque<u32>,
    pull_retry: Vec<u32>,
    /// Pull request id → (sector, source node).
    pull_reqs: HashMap<u64, (u32, u32)>,
    /// Pullers of each sector served here: later writes are relayed to them.
    relays: HashMap<u32, Vec<u32>>,
    /// Sectors streamed to a puller since the last switch (safe to drop).
    served: HashSet<u32>,
    /// The epoch whose SYNCED was last sent.
    reported_epoch: u64,
    /// Writes held for unreachable nodes; the sector id is the target node.
    hints: Store,
    /// Groups of sends awaiting acknowledgement (orphans, hint delivery).
    batches: HashMap<u64, Batch>,
    /// Batch request id → (batch id, node).
    batch_reqs: HashMap<u64, (u64, u32)>,
    /// SIGTERM arrived: leaving the cluster.
    leaving: bool,
    /// Loop turns completed; everything applied in an earlier turn is on disk.
    turn: u64,
    /// Why the loop was stopped, if it was a failure.
    failed: Option<Exit>,
    advertise: String,
    manager: Option<ConnId>,
    peers: HashMap<u32, ConnId>,
    /// Peers whose connection failed, not to be retried yet.
    backoff: HashMap<u32, Backoff>,
    ops: IdMap<u64, Op>,
    /// Peer request id → (op id, peer node).
    inflight: IdMap<u64, (u64, u32)>,
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

    /// Registers on a new manager connection; a leaving node that lost
    /// its connection announces the leave again right after.
    fn register(&mut self, rx: &mut Reactor<Link>) {
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
    fn peer(&mut self, rx: &mut Reactor<Link>, node: u32) -> Option<ConnId> {
        if let Some(&id) = self.peers.get(&node) {
            if rx.conn(id).is_some() {
                return Some(id);
            }
        }
        if self.backoff.get(&node).is_some_and(|b| b.until > Instant::now()) {
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
    fn ask_peer(&mut self, rx: &mut Reactor<Link>, node: u32, op: u64, body: Body) -> bool {
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
    fn handle_inbound(&mut self, rx: &mut Reactor<Link>, conn: ConnId, msg: Message) {
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
    fn handle_from_peer(&mut self, rx: &mut Reactor<Link>, msg: Message) {
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

    fn heartbeat(&mut self, rx: &mut Reactor<Link>) {
        if let Some(m) = self.manager {
            let epoch = self.newest().map_or(0, |t| t.epoch);
            let header = Header { node: self.cfg.id, ..Header::default() };
            rx.send(m, &Message { header, body: Body::Heartbeat { epoch } });
        }
        rx.add_timer(self.cfg.heartbeat, TIMER_HEARTBEAT);
    }

    /// The start limit: a node that has not even got a table from the
    /// manager gives up; one that is receiving its sectors keeps going.
    fn give_up_starting(&mut self, rx: &mut Reactor<Link>) {
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

    fn accepted(&mut self, _peer: Option<SocketAddr>) -> Link {
        Link::Inbound
    }

    fn on_message(&mut self, rx: &mut Reactor<Link>, conn: ConnId, msg: Message) {
        let link = rx.conn(conn).map(|c| c.data).unwrap_or_default();
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

    fn on_timer(&mut self, rx: &mut Reactor<Link>, payload: u64) {
        match payload {
            TIMER_HEARTBEAT => self.heartbeat(rx),
            TIMER_MANAGER if self.manager.is_none() => self.connect_manager(rx),
            TIMER_START_LIMIT => self.give_up_starting(rx),
            TIMER_PULL_RETRY => self.on_pull_retry(rx),
            TIMER_HINTS => self.deliver_hints(rx),
            TIMER_CREATE => self.create_some(rx),
            TIMER_LEAVE_LIMIT => {
                warn!("leave not finished within {LEAVE_LIMIT:?}; exiting with the data on disk");
                rx.stop();
            }
            TIMER_OP_SWEEP => {
                self.sweep_ops(rx);
                rx.add_timer(OP_SWEEP, TIMER_OP_SWEEP);
            }
            _ => {}
        }
    }

    fn on_signal(&mut self, rx: &mut Reactor<Link>, sig: Signal) {
        match sig {
            Signal::SIGHUP => reopen_log(&self.cfg.log_file),
            _ => {
                info!("{sig}: leaving the cluster");
                self.start_leave(rx);
            }
        }
    }

    fn on_connected(&mut self, rx: &mut Reactor<Link>, conn: ConnId) {
        if Some(conn) == self.manager {
            self.register(rx);
        }
        if let Some(Link::Peer(node)) = rx.conn(conn).map(|c| c.data) {
            self.backoff.remove(&node);
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
                // Reconnect with backoff: 50 ms, doubling to 2 s while it fails.
                let delay = self.backoff.get(&node).map_or(PEER_BACKOFF_MIN, |b| (b.delay * 2).min(PEER_BACKOFF_MAX));
                self.backoff.insert(node, Backoff { until: Instant::now() + delay, delay });
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
    fn before_early_flush(&mut self, _rx: &mut Reactor<Link>) {
        if let Err(e) = self.store.write_out() {
            error!("write-ahead log write failed: {e}; exiting so no unsynced write is acknowledged");
            std::process::exit(EX_OSERR);
        }
    }

    fn before_sleep(&mut self, _rx: &mut Reactor<Link>) {
        let synced = self.store.sync_dirty().and_then(|_| self.hints.sync_dirty());
        if let Err(e) = synced {
            // Acknowledging a write that is not on disk would break the
            // contract; stop before any reply of this turn is written.
            error!("fsync failed: {e}; exiting so no unsynced write is acknowledged");
            std::process::exit(EX_OSERR);
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
    let started = (|| -> net::Result<(Reactor<Link>, SocketAddr)> {
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
    let mut node = Node {
        clock: Clock::new(cfg.id),
        store,
        hints,
        table: None,
        pending: None,
        synced: HashSet::new(),
        to_create: BTreeSet::new(),
        pulls: HashMap::new(),
        pull_queue: VecDeque::new(),
        pull_retry: Vec::new(),
        pull_reqs: HashMap::new(),
        relays: HashMap::new(),
        served: HashSet::new(),
        reported_epoch: 0,
        batches: HashMap::new(),
        batch_reqs: HashMap::new(),
        leaving: false,
        turn: 0,
        failed: None,
        advertise: bound.to_string(),
        manager: None,
        peers: HashMap::new(),
        backoff: HashMap::new(),
        ops: IdMap::default(),
        inflight: IdMap::default(),
        next_id: 0,
        ready: Some(ready),
        cfg,
    };
    node.connect_manager(&mut rx);
    rx.add_timer(node.cfg.heartbeat, TIMER_HEARTBEAT);
    rx.add_timer(START_LIMIT, TIMER_START_LIMIT);
    rx.add_timer(sync::HINT_PERIOD, TIMER_HINTS);
    rx.add_timer(OP_SWEEP, TIMER_OP_SWEEP);
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
