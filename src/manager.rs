//! The manager daemon: membership, the partition table, client ids,
//! failure detection by heartbeats, and the persisted cluster state.
//!
//! The manager owns the [`Table`]. Every change (a node joins, leaves, dies
//! or comes back) bumps the epoch, is written to `manager.state` in the
//! data directory (write, fsync, rename, fsync the directory) and is pushed
//! to every registered node. Clients get an id, the table and a
//! round-robin contact node on `HELLO`. A restarted manager reloads the
//! state, so nodes that re-register keep their sectors and no data moves.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
/// The longest node address a REGISTER may carry.
pub const MAX_ADDR_LEN: usize = 64;

/// Checks a node's advertised address: a socket address (`IP:PORT`), at
/// most [`MAX_ADDR_LEN`] bytes, not unspecified (0.0.0.0 or ::) and not
/// port 0, since every client and peer dials it.
pub fn check_node_addr(addr: &str) -> Result<std::net::SocketAddr, String> {
    if addr.len() > MAX_ADDR_LEN {
        return Err(format!("address of {} bytes (at most {MAX_ADDR_LEN})", addr.len()));
    }
    let parsed: std::net::SocketAddr =
        addr.parse().map_err(|_| format!("address {:?} is not IP:PORT", addr.escape_debug().to_string()))?;
    if parsed.ip().is_unspecified() || parsed.port() == 0 {
        return Err(format!("address {parsed} cannot be dialled (unspecified address or port 0)"));
    }
    Ok(parsed)
}

#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{info, warn};
use nix::sys::signal::Signal;

use crate::daemon::{reopen_log, Readiness};
use crate::net::codec::{self, error_reply, Body, ErrorCode, Header, Limits, Message};
use crate::net::{self, ConnId, Gate, Guarded, Handler, Io, Reactor};
use crate::store::disk::{self, Disk, OsDisk};
use crate::table::{NodeState, Table};

/// The state file inside the data directory.
pub const STATE_FILE: &str = "manager.state";
/// The manager's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Check heartbeats (every heartbeat interval).
    Heartbeats,
}

/// How the manager was started.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the state file and pidfile live.
    pub data_dir: PathBuf,
    /// Replicas per key (N).
    pub rep: u32,
    /// R.
    pub read_quorum: u32,
    /// W.
    pub write_quorum: u32,
    /// Q, for a new cluster.
    pub sectors: u32,
    /// Heartbeat interval for nodes.
    pub heartbeat: Duration,
    /// Silence after which a node is declared dead.
    pub dead_after: Duration,
    /// Where logs go after SIGHUP (None: stderr).
    pub log_file: Option<PathBuf>,
    /// A connection whose header line stays incomplete this long is closed
    /// (zero: never).
    pub header_timeout: Duration,
    /// The keys its connections are checked against (`net::auth`).
    pub keys: crate::net::auth::Keys,
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

/// What the manager knows about a connection.
#[derive(Debug, Default)]
pub struct Peer {
    /// The node id, once the peer has registered.
    node: Option<u32>,
    /// A scrape of the metrics port (`--metrics-listen`).
    metrics: bool,
}

/// The manager's state.
pub struct Manager {
    cfg: Config,
    /// Where the state file is kept.
    disk: Rc<dyn Disk>,
    /// The table clients and coordinators route by.
    table: Table,
    /// The table the cluster is moving to, while gainers receive sectors.
    pending: Option<Table>,
    /// Gainers of `pending` that have not reported SYNCED yet.
    waiting: BTreeSet<u32>,
    /// When the pending table was last published (to nudge stuck moves).
    pending_since: Instant,
    next_client: u64,
    next_contact: usize,
    /// The registration connection of each live node.
    node_conns: BTreeMap<u32, ConnId>,
    /// When each node was last heard from.
    last_heard: BTreeMap<u32, Instant>,
    /// Nodes heard from since this manager started (not just given the
    /// restart grace).
    heard: BTreeSet<u32>,
    /// Accepted connections open: on the native port, on the metrics port.
    open_conns: [u64; 2],
}

/// The largest node id (versions store it in 16 bits).
pub const MAX_NODE_ID: u32 = 65535;
/// Client ids handed out between two saves of the state.
const CLIENT_ID_BATCH: u64 = 64;
/// After a manager restart, how long known members have to re-register
/// before they can be declared down.
const RESTART_GRACE: Duration = Duration::from_secs(10);
/// How long a move may wait for SYNCED before the pending table is pushed again.
const MOVE_NUDGE: Duration = Duration::from_secs(10);

impl Manager {
    /// Loads the state from `cfg.data_dir` or starts a new cluster; `now`
    /// is the monotonic time of the start.
    pub fn open(cfg: Config, now: Instant) -> Result<Manager, String> {
        Manager::open_on(Rc::new(OsDisk), cfg, now)
    }

    /// Like [`Manager::open`], with the state file on `disk`.
    pub fn open_on(disk: Rc<dyn Disk>, cfg: Config, now: Instant) -> Result<Manager, String> {
        disk.create_dir_all(&cfg.data_dir).map_err(|e| format!("{}: {e}", cfg.data_dir.display()))?;
        let path = cfg.data_dir.join(STATE_FILE);
        let (table, pending, next_client) = match disk::read_file(&*disk, &path) {
            Ok(Some(bytes)) => load_state(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            Ok(None) => (Table::new(cfg.sectors, cfg.rep, cfg.read_quorum, cfg.write_quorum), None, 1),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if table.rep != cfg.rep || table.sectors() != cfg.sectors {
            warn!("this cluster has {} sectors and {} replicas; --sectors/--rep ignored", table.sectors(), table.rep);
        }
        info!(
            "cluster of {} sectors, {} replicas (R={} W={}), epoch {}, {} members",
            table.sectors(),
            table.rep,
            table.read_quorum,
            table.write_quorum,
            table.epoch,
            table.members.len()
        );
        let waiting = pending.as_ref().map(|p| table.gainers(p).into_iter().collect()).unwrap_or_default();
        // Ids are saved every CLIENT_ID_BATCH; skip past any handed out since.
        let next_client = next_client.saturating_add(CLIENT_ID_BATCH);
        Ok(Manager {
            cfg,
            disk,
            table,
            pending,
            waiting,
            pending_since: now,
            next_client,
            next_contact: 0,
            node_conns: BTreeMap::new(),
            last_heard: BTreeMap::new(),
            heard: BTreeSet::new(),
            open_conns: [0; 2],
        })
    }

    /// The current table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The table the cluster is moving to, while a move runs.
    pub fn pending(&self) -> Option<&Table> {
        self.pending.as_ref()
    }

    /// Arms the first timers. Members get a grace period to re-register
    /// after a restart, so a whole cluster started again one node at a time
    /// does not reshuffle.
    pub fn start(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>) {
        let members: Vec<u32> = self.newest().members.iter().map(|m| m.id).collect();
        let grace = rx.now() + RESTART_GRACE.saturating_sub(self.cfg.dead_after);
        for id in members {
            self.last_heard.insert(id, grace);
        }
        rx.add_timer(self.cfg.heartbeat, Timer::Heartbeats);
    }

    /// Makes the tables and the client-id watermark durable.
    fn save(&self) -> std::io::Result<()> {
        save_state(&*self.disk, &self.cfg.data_dir, &self.table, self.pending.as_ref(), self.next_client)
    }

    /// Saves the state, or ends the process (as a storage node does on a
    /// failed fsync) before anything that depends on it is sent: a table or
    /// client id handed out unsaved could be handed out again, older or
    /// different, after a restart. Keeping the old table and retrying would
    /// need every caller to undo its change; a restart reloads the last
    /// saved state, which is all any node has seen. Returns false if it aborted.
    fn save_or_abort(&self, rx: &mut impl Io<Data = Peer, Timer = Timer>) -> bool {
        match self.save() {
            Ok(()) => true,
            Err(e) => {
                rx.abort(crate::cli::EX_OSERR, &format!("cannot save the cluster state: {e}"));
                false
            }
        }
    }

    /// An epoch newer than every table's, current or pending.
    fn next_epoch(&self) -> u64 {
        self.table.epoch.max(self.newest().epoch) + 1
    }

    fn table_msg(&self, header: Header, contact: u32) -> Message {
        let body = Body::TableMsg { table: self.table.clone(), pending: self.pending.clone(), contact };
        Message { header, body }
    }

    /// The newest table: the pending one while a move runs.
    fn newest(&self) -> &Table {
        self.pending.as_ref().unwrap_or(&self.table)
    }

    /// The next up member for a client to contact, round robin.
    fn contact(&mut self) -> u32 {
        let up: Vec<u32> = self.table.members.iter().filter(|m| m.state == NodeState::Up).map(|m| m.id).collect();
        if up.is_empty() {
            return 0;
        }
        self.next_contact = (self.next_contact + 1) % up.len();
        up[self.next_contact]
    }

    /// Applies a membership change to the newest table. If some node gains
    /// sectors, the result becomes the pending table until every gainer
    /// reports SYNCED; otherwise it becomes current at once. Returns false
    /// if the process aborted (see [`Manager::publish`]).
    fn change(
        &mut self,
        rx: &mut impl Io<Data = Peer, Timer = Timer>,
        what: &str,
        apply: impl FnOnce(&mut Table),
    ) -> bool {
        let mut next = self.newest().clone();
        apply(&mut next);
        next.epoch = self.next_epoch();
        let gainers = self.table.gainers(&next);
        info!("{what}: epoch {}, {} node(s) to receive sectors", next.epoch, gainers.len());
        if gainers.is_empty() {
            self.table = next;
            self.pending = None;
            self.waiting.clear();
        } else {
            self.pending = Some(next);
            self.waiting = gainers.into_iter().collect();
            self.pending_since = rx.now();
        }
        self.publish(rx)
    }

    /// Makes the pending table current once every gainer has synced.
    fn maybe_switch(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>) {
        if !self.waiting.is_empty() {
            return;
        }
        if let Some(mut next) = self.pending.take() {
            next.epoch = next.epoch.max(self.table.epoch) + 1;
            info!("move done: epoch {} is current", next.epoch);
            self.table = next;
            self.publish(rx);
        }
    }

    /// Saves the tables and pushes them to every registered node; if they
    /// cannot be saved, aborts without pushing them and returns false.
    fn publish(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>) -> bool {
        let table_epoch = self.table.epoch;
        crate::invariant::check(self.pending.as_ref().is_none_or(|p| p.epoch > table_epoch), || {
            format!("pending epoch {:?} not after the table's {table_epoch}", self.pending.as_ref().map(|p| p.epoch))
        });
        crate::invariant::check(
            self.waiting.iter().all(|n| self.pending.as_ref().is_some_and(|p| p.member(*n).is_some())),
            || format!("waiting for {:?}, who are not members of the pending table", self.waiting),
        );
        // A scan of every preference list: only where invariants are recorded.
        let tables = std::iter::once(&self.table).chain(self.pending.as_ref());
        for t in tables.filter(|_| crate::invariant::enabled()) {
            for s in 0..t.sectors() {
                let pref = t.preference(s);
                let distinct = pref.iter().collect::<BTreeSet<_>>().len() == pref.len();
                crate::invariant::check(distinct, || {
                    format!("epoch {}: sector {s} lists a node twice: {pref:?}", t.epoch)
                });
            }
        }
        if !self.save_or_abort(rx) {
            return false;
        }
        let msg = self.table_msg(Header::default(), 0);
        let conns: Vec<ConnId> = self.node_conns.values().copied().collect();
        for id in conns {
            rx.send(id, &msg);
        }
        true
    }

    fn handle_hello(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>, id: ConnId, req: u64) {
        let client = self.next_client;
        self.next_client += 1;
        if client.is_multiple_of(CLIENT_ID_BATCH) && !self.save_or_abort(rx) {
            return;
        }
        let contact = self.contact();
        rx.send(id, &self.table_msg(Header { client, req, ..Header::default() }, contact));
    }

    fn handle_register(
        &mut self,
        rx: &mut impl Io<Data = Peer, Timer = Timer>,
        id: ConnId,
        req: u64,
        node: u32,
        addr: String,
    ) {
        if node == 0 || node > MAX_NODE_ID {
            rx.send(id, &error_reply(req, ErrorCode::BadRequest, &format!("node ids are 1 to {MAX_NODE_ID}")));
            return;
        }
        if let Err(reason) = check_node_addr(&addr) {
            warn!("refusing REGISTER of node {node}: {reason}");
            rx.send(id, &error_reply(req, ErrorCode::BadRequest, &reason));
            return;
        }
        if let Some(d) = rx.data_mut(id) {
            d.node = Some(node);
        }
        if let Some(old) = self.node_conns.insert(node, id) {
            if old != id {
                rx.close(old);
            }
        }
        self.last_heard.insert(node, rx.now());
        self.heard.insert(node);
        info!("node {node} registered from {addr}");
        let known = self.newest().member(node).is_some_and(|m| m.addr == addr && m.state == NodeState::Up);
        if known {
            rx.send(id, &self.table_msg(Header { req, ..Header::default() }, 0));
        } else {
            self.change(rx, &format!("node {node} joins"), |t| t.assign_join(node, &addr));
        }
    }

    fn handle_leave(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>, id: ConnId, req: u64) {
        let Some(node) = rx.data_mut(id).and_then(|d| d.node) else {
            rx.send(id, &error_reply(req, ErrorCode::BadRequest, "LEAVE before REGISTER"));
            return;
        };
        self.waiting.remove(&node);
        if self.change(rx, &format!("node {node} leaves"), |t| t.assign_leave(node)) {
            self.maybe_switch(rx);
        }
    }

    fn handle_synced(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>, id: ConnId, epoch: u64) {
        let Some(node) = rx.data_mut(id).and_then(|d| d.node) else { return };
        if self.pending.as_ref().is_some_and(|p| p.epoch == epoch) && self.waiting.remove(&node) {
            info!("node {node} has its sectors for epoch {epoch}; {} to go", self.waiting.len());
            self.maybe_switch(rx);
        }
    }

    fn handle_heartbeat(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>, id: ConnId, req: u64, epoch: u64) {
        let Some(node) = rx.data_mut(id).and_then(|d| d.node) else { return };
        self.last_heard.insert(node, rx.now());
        self.heard.insert(node);
        if self.newest().member(node).is_some_and(|m| m.state == NodeState::Down) {
            let addr = self.newest().member(node).map(|m| m.addr.clone()).unwrap_or_default();
            self.change(rx, &format!("node {node} is back"), |t| t.assign_join(node, &addr));
        } else if epoch < self.newest().epoch {
            rx.send(id, &self.table_msg(Header { req, ..Header::default() }, 0));
        }
    }

    fn check_heartbeats(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>) {
        let now = rx.now();
        let dead: Vec<u32> = self
            .newest()
            .members
            .iter()
            .filter(|m| m.state == NodeState::Up)
            .filter(|m| self.last_heard.get(&m.id).is_none_or(|t| now.duration_since(*t) > self.cfg.dead_after))
            .map(|m| m.id)
            .collect();
        let up = self.newest().members.iter().filter(|m| m.state == NodeState::Up).count();
        // Members heard from since this manager started that fell silent
        // (the others have not come back since a restart yet).
        let sudden: Vec<u32> = dead.iter().copied().filter(|n| self.heard.contains(n)).collect();
        if sudden.len() > 1 && sudden.len() * 2 > up {
            // Most of the cluster fell silent at once: far likelier this
            // manager is cut off than that they all died. Declaring them down
            // would hand every sector to whoever is heard first (with no
            // data); the silent get a fresh dead-after instead.
            warn!("{} of {up} members silent at once: this manager may be cut off; declaring none down", sudden.len());
            for node in sudden {
                self.last_heard.insert(node, now);
            }
            return self.check_leavers(rx, now);
        }
        for node in dead {
            warn!("node {node} silent for over {:?}: declared down", self.cfg.dead_after);
            self.waiting.remove(&node);
            if let Some(conn) = self.node_conns.remove(&node) {
                rx.close(conn);
            }
            // Routing and pulls skip it at once, so the current table marks
            // it down too, under an epoch of its own (nodes tell tables apart
            // by epoch); its sectors move in the new pending table.
            let epoch = self.next_epoch();
            if let Some(m) = self.table.members.iter_mut().find(|m| m.id == node && m.state == NodeState::Up) {
                m.state = NodeState::Down;
                self.table.epoch = epoch;
            }
            if !self.change(rx, &format!("node {node} is down"), |t| t.mark_down(node)) {
                return;
            }
            self.maybe_switch(rx);
        }
        self.check_leavers(rx, now);
        if self.pending.is_some() && now.saturating_duration_since(self.pending_since) > MOVE_NUDGE {
            warn!("move to epoch {} still waits for {:?}; publishing it again", self.newest().epoch, self.waiting);
            self.pending_since = now;
            self.publish(rx);
        }
    }
}

impl Manager {
    /// A leaver (up in the current table, gone from the pending one) that
    /// falls silent mid-leave is marked down in the current table, under a
    /// new epoch (and the pending table under a newer one): the gainers then
    /// pull its sectors from the other holders instead of waiting for it.
    fn check_leavers(&mut self, rx: &mut impl Io<Data = Peer, Timer = Timer>, now: std::time::Instant) {
        let Some(pending) = &self.pending else { return };
        let silent: Vec<u32> = self
            .table
            .members
            .iter()
            .filter(|m| m.state == NodeState::Up && pending.member(m.id).is_none())
            .filter(|m| self.last_heard.get(&m.id).is_none_or(|t| now.duration_since(*t) > self.cfg.dead_after))
            .map(|m| m.id)
            .collect();
        if silent.is_empty() {
            return;
        }
        for &node in &silent {
            warn!("leaving node {node} silent for over {:?}: declared down", self.cfg.dead_after);
            if let Some(conn) = self.node_conns.remove(&node) {
                rx.close(conn);
            }
            if let Some(m) = self.table.members.iter_mut().find(|m| m.id == node) {
                m.state = NodeState::Down;
            }
        }
        self.table.epoch = self.next_epoch();
        let epoch = self.next_epoch();
        if let Some(p) = self.pending.as_mut() {
            p.epoch = epoch;
        }
        self.publish(rx);
    }
}

impl Handler for Manager {
    type Data = Peer;
    type Timer = Timer;

    fn accepted(&mut self, _peer: Option<SocketAddr>, framing: crate::net::Framing) -> Peer {
        let metrics = framing == crate::net::Framing::Http;
        self.open_conns[usize::from(metrics)] += 1;
        Peer { node: None, metrics }
    }

    fn on_message<X: Io<Data = Peer, Timer = Timer>>(&mut self, rx: &mut X, id: ConnId, msg: Message) {
        let req = msg.header.req;
        match msg.body {
            Body::Hello => self.handle_hello(rx, id, req),
            Body::GetTable => {
                let contact = self.contact();
                rx.send(id, &self.table_msg(Header { req, ..Header::default() }, contact));
            }
            Body::Register { id: node, addr } => self.handle_register(rx, id, req, node, addr),
            Body::Heartbeat { epoch } => self.handle_heartbeat(rx, id, req, epoch),
            Body::Leave => self.handle_leave(rx, id, req),
            Body::Synced { epoch } => self.handle_synced(rx, id, epoch),
            Body::Http(req) if rx.data(id).is_some_and(|p| p.metrics) => {
                let reply = crate::metrics::serve(&req, || self.render_metrics());
                rx.send_and_close(id, &Message { header: Header::default(), body: Body::Raw(reply) });
            }
            Body::Http(_) | Body::Resp(_) => rx.close(id),
            Body::Ok => {}
            other => {
                let reason = format!("{} is not a manager request", other.verb());
                rx.send(id, &error_reply(req, ErrorCode::BadRequest, &reason));
            }
        }
    }

    fn on_timer<X: Io<Data = Peer, Timer = Timer>>(&mut self, rx: &mut X, timer: Timer) {
        match timer {
            Timer::Heartbeats => {
                self.check_heartbeats(rx);
                rx.add_timer(self.cfg.heartbeat, Timer::Heartbeats);
            }
        }
    }

    fn on_signal<X: Io<Data = Peer, Timer = Timer>>(&mut self, rx: &mut X, sig: Signal) {
        match sig {
            Signal::SIGHUP => reopen_log(&self.cfg.log_file),
            _ => {
                info!("{sig}: saving state and exiting");
                // Every table sent was saved when it was published; this
                // save only adds the client-id watermark.
                if let Err(e) = self.save() {
                    warn!("cannot save state: {e}");
                }
                rx.stop();
            }
        }
    }

    fn on_closed<X: Io<Data = Peer, Timer = Timer>>(&mut self, _rx: &mut X, id: ConnId, data: Peer) {
        let kind = usize::from(data.metrics);
        self.open_conns[kind] = self.open_conns[kind].saturating_sub(1);
        if let Some(node) = data.node {
            if self.node_conns.get(&node) == Some(&id) {
                self.node_conns.remove(&node);
            }
        }
    }
}

impl Manager {
    /// The text exposition of the manager's metrics (gtstore-manager(8), METRICS).
    fn render_metrics(&self) -> String {
        use crate::metrics::{Exposition, Kind};
        let mut e = Exposition::new();
        e.family(
            "gtstore_manager_members",
            Kind::Gauge,
            "Members of the current partition table, by state (up, down).",
        );
        for state in [NodeState::Up, NodeState::Down] {
            let n = self.table.members.iter().filter(|m| m.state == state).count();
            e.sample("gtstore_manager_members", &[("state", state.name())], n as u64);
        }
        e.single("gtstore_manager_epoch", Kind::Gauge, "Epoch of the current partition table.", self.table.epoch);
        e.single(
            "gtstore_manager_pending_epoch",
            Kind::Gauge,
            "Epoch of the table the cluster is moving to (0: no move).",
            self.pending.as_ref().map_or(0, |p| p.epoch),
        );
        e.single(
            "gtstore_manager_move_pending",
            Kind::Gauge,
            "1 while a pending table waits for its gainers to receive their sectors, else 0.",
            u64::from(self.pending.is_some()),
        );
        e.single(
            "gtstore_manager_move_gainers_left",
            Kind::Gauge,
            "Nodes of the pending table that have not reported SYNCED yet.",
            self.waiting.len() as u64,
        );
        e.single("gtstore_manager_sectors", Kind::Gauge, "Sectors of the hash space.", u64::from(self.table.sectors()));
        let nodes = self.node_conns.len() as u64;
        e.family(
            "gtstore_connections",
            Kind::Gauge,
            "Open connections by kind: registered nodes, other clients of the native port, metrics scrapes.",
        );
        for (kind, n) in
            [("node", nodes), ("client", self.open_conns[0].saturating_sub(nodes)), ("metrics", self.open_conns[1])]
        {
            e.sample("gtstore_connections", &[("kind", kind)], n);
        }
        e.finish()
    }
}

/// Writes the state file durably.
fn save_state(
    disk: &dyn Disk,
    dir: &std::path::Path,
    table: &Table,
    pending: Option<&Table>,
    next_client: u64,
) -> std::io::Result<()> {
    disk::write_file_durably(disk, dir, STATE_FILE, &encode_state(table, pending, next_client))
}

/// The bytes of a state file: a TABLE message whose client field is the next client id.
pub fn encode_state(table: &Table, pending: Option<&Table>, next_client: u64) -> Vec<u8> {
    let header = Header { client: next_client, ..Header::default() };
    let body = Body::TableMsg { table: table.clone(), pending: pending.cloned(), contact: 0 };
    codec::to_bytes(&Message { header, body })
}

/// A loaded state file: the current table, the pending one, the next client id.
pub type State = (Table, Option<Table>, u64);

/// Decodes the bytes of a state file (as [`Manager::open`] does, and the
/// fuzz target `manager_state`): exactly one TABLE message, nothing after it.
pub fn load_state(bytes: &[u8]) -> Result<State, String> {
    let limits = Limits { max_header: 128, max_body: bytes.len() };
    match codec::check(bytes, &limits) {
        Ok(Some(n)) if n == bytes.len() => {}
        _ => return Err("state file is damaged".into()),
    }
    match codec::parse(bytes).map_err(|e| e.to_string())? {
        Message { header, body: Body::TableMsg { table, pending, .. } } => Ok((table, pending, header.client.max(1))),
        _ => Err("state file does not hold a table".into()),
    }
}

/// Runs the manager until SIGTERM or SIGINT.
pub fn run(cfg: Config, ready: Readiness) -> Result<(), crate::cli::Exit> {
    use crate::cli::{Exit, EX_OSERR};
    let mgr = match Manager::open(cfg.clone(), Instant::now()) {
        Ok(m) => m,
        Err(e) => {
            ready.fail(EX_OSERR, &e);
            return Err(Exit::new(EX_OSERR, e));
        }
    };
    let started = (|| -> net::Result<(Reactor<Guarded<Peer>, Timer>, SocketAddr)> {
        let mut rx = Reactor::new(Limits { max_header: 128, max_body: 1 << 20 })?;
        rx.header_timeout = Some(cfg.header_timeout).filter(|t| !t.is_zero());
        let bound = rx.listen(cfg.listen)?;
        rx.catch_signals()?;
        Ok((rx, bound))
    })();
    let (mut rx, bound) = match started {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("cannot listen on {}: {e}", cfg.listen);
            ready.fail(EX_OSERR, &msg);
            return Err(Exit::new(EX_OSERR, msg));
        }
    };
    if let Some(addr) = cfg.metrics_listen {
        match rx.listen_framed(addr, crate::net::Framing::Http) {
            Ok(at) => info!("metrics at http://{at}{}", crate::metrics::PATH),
            Err(e) => {
                let msg = format!("cannot listen on {addr} for metrics: {e}");
                ready.fail(EX_OSERR, &msg);
                return Err(Exit::new(EX_OSERR, msg));
            }
        }
    }
    let mut gate = Gate::new(mgr, cfg.keys.clone());
    gate.drive(&mut rx, |mgr, io| mgr.start(io));
    println!("listening on {bound}");
    let _ = std::io::stdout().flush();
    info!("listening on {bound}");
    ready.ready();
    net::run(&mut rx, &mut gate).map_err(|e| Exit::new(EX_OSERR, format!("event loop: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::host::{ConnState, HostIo};
    use crate::store::disk::SimDisk;

    type TestIo = HostIo<Peer, Timer>;

    fn cfg() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            data_dir: PathBuf::from("/manager"),
            rep: 2,
            read_quorum: 1,
            write_quorum: 2,
            sectors: 8,
            heartbeat: Duration::from_millis(200),
            dead_after: Duration::from_secs(1),
            log_file: None,
            header_timeout: Duration::from_secs(10),
            keys: Default::default(),
            metrics_listen: None,
        }
    }

    /// A manager on a simulated disk and driver, with the nodes' connections
    /// and every table it published or holds, by epoch.
    struct World {
        mgr: Manager,
        io: TestIo,
        disk: SimDisk,
        conns: BTreeMap<u32, ConnId>,
        seen: BTreeMap<u64, Table>,
    }

    impl World {
        fn new() -> World {
            let disk = SimDisk::new();
            let _ = disk.create_dir_all(Path::new("/manager"));
            let _ = disk.sync_dir(Path::new("/"));
            let mut io = TestIo::new(Instant::now(), 0, 0, 0, 1);
            let mut mgr = Manager::open_on(Rc::new(disk.clone()), cfg(), io.now()).unwrap();
            mgr.start(&mut io);
            World { mgr, io, disk, conns: BTreeMap::new(), seen: BTreeMap::new() }
        }

        fn from(&mut self, node: u32, body: Body) {
            let conn = self.conns[&node];
            self.mgr.on_message(&mut self.io, conn, Message { header: Header::default(), body });
            self.collect();
        }

        fn register(&mut self, node: u32) {
            let conn = self.io.insert(Peer::default(), 0, ConnState::Open);
            self.conns.insert(node, conn);
            self.from(node, Body::Register { id: node, addr: format!("127.0.0.1:{}", 7000 + node) });
            self.settle();
        }

        /// Every node reports SYNCED until no move is pending.
        fn settle(&mut self) {
            for _ in 0..10 {
                let Some(epoch) = self.mgr.pending().map(|p| p.epoch) else { return };
                for node in self.conns.keys().copied().collect::<Vec<_>>() {
                    self.from(node, Body::Synced { epoch });
                }
            }
            panic!("the move never ends");
        }

        /// Takes the published tables (and the manager's own): one epoch
        /// must always mean one table.
        fn collect(&mut self) {
            let mut tables = vec![self.mgr.table().clone()];
            tables.extend(self.mgr.pending().cloned());
            for conn in self.conns.values() {
                for m in self.io.take_output(*conn, false) {
                    if let Body::TableMsg { table, pending, .. } = m.body {
                        tables.push(table);
                        tables.extend(pending);
                    }
                }
            }
            for t in tables {
                let first = self.seen.entry(t.epoch).or_insert_with(|| t.clone());
                assert_eq!(*first, t, "two different tables with epoch {}", t.epoch);
            }
        }

        /// The newest epoch published to a node.
        fn published(&self) -> u64 {
            self.seen.keys().copied().max().unwrap_or(0)
        }
    }

    #[test]
    fn a_register_with_an_address_nobody_can_dial_is_refused_and_changes_nothing() {
        // Issue #11 item 4: any string became a member's address.
        let mut w = World::new();
        w.register(1);
        let epoch = w.mgr.table().epoch;
        let long = format!("127.0.0.1:{}", "1".repeat(60));
        for addr in ["0.0.0.0:7002", "[::]:7002", "127.0.0.1:0", "server42", "127.0.0.1:7002\n", long.as_str(), ""] {
            let conn = w.io.insert(Peer::default(), 0, ConnState::Open);
            let msg = Message {
                header: Header { req: 5, ..Header::default() },
                body: Body::Register { id: 42, addr: addr.into() },
            };
            w.mgr.on_message(&mut w.io, conn, msg);
            let out = w.io.take_output(conn, false);
            assert!(
                matches!(out.as_slice(), [Message { body: Body::Error { code: ErrorCode::BadRequest, .. }, .. }]),
                "{addr:?}: {out:?}"
            );
            assert_eq!(w.mgr.table().epoch, epoch, "{addr:?} changed the table");
            assert!(w.mgr.table().member(42).is_none() && w.mgr.pending().is_none(), "{addr:?} made a member");
        }
        assert!(check_node_addr("127.0.0.1:7002").is_ok() && check_node_addr("[::1]:7002").is_ok());
    }

    #[test]
    fn a_table_that_cannot_be_saved_is_not_published() {
        // Issue #10 item 7: the manager warned and pushed the table anyway,
        // so after a crash it came back with an older epoch than the nodes.
        let mut w = World::new();
        w.register(1);
        let before = w.published();
        w.disk.fail_next_fsync();
        let conn = w.io.insert(Peer::default(), 0, ConnState::Open);
        w.conns.insert(2, conn);
        w.mgr.on_message(
            &mut w.io,
            conn,
            Message { header: Header::default(), body: Body::Register { id: 2, addr: "127.0.0.1:7002".into() } },
        );
        for conn in w.conns.values() {
            let sent = w.io.take_output(*conn, false);
            assert!(
                !sent.iter().any(|m| matches!(&m.body, Body::TableMsg { table, pending, .. }
                    if table.epoch > before || pending.as_ref().is_some_and(|p| p.epoch > before))),
                "a table newer than epoch {before} went out unsaved"
            );
        }
        assert!(w.io.aborted.is_some(), "the manager stops");
        // A restart finds an epoch at least as new as any a node has seen.
        w.disk.crash(1);
        let again = Manager::open_on(Rc::new(w.disk.clone()), cfg(), w.io.now()).unwrap();
        assert!(again.newest().epoch >= before);
    }

    #[test]
    fn marking_a_node_down_is_a_new_epoch() {
        // Issue #10 item 7: the current table was changed in place, so two
        // tables with the same epoch differed.
        let mut w = World::new();
        for node in 1..=3 {
            w.register(node);
        }
        let before = w.mgr.table().epoch;
        w.io.now = 2_000_000;
        for node in [1, 2] {
            let epoch = w.published();
            w.from(node, Body::Heartbeat { epoch });
        }
        w.mgr.on_timer(&mut w.io, Timer::Heartbeats);
        w.collect(); // panics if an epoch was reused
        let current = w.mgr.table();
        assert!(current.epoch > before);
        assert_eq!(current.member(3).map(|m| m.state), Some(NodeState::Down), "routing skips node 3 at once");
        assert!(w.mgr.pending().is_none_or(|p| p.epoch > current.epoch));
        w.settle();
        assert!(w.mgr.table().member(3).is_some_and(|m| m.state == NodeState::Down));
        assert!(w.mgr.table().preference(0).iter().all(|&n| n != 3));
    }
}
