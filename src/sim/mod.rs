//! `gtstore-sim`: deterministic simulation of whole clusters.
//!
//! One process, one thread, no sockets, no real time. A [`World`] runs the
//! production role code — [`Manager`] and storage [`Node`]s, through the
//! same [`crate::net::Handler`] callbacks the epoll loop calls — on
//! simulated processes ([`host`]), a simulated network ([`net`]) and
//! simulated disks, with clients ([`client`]) that follow the client
//! library's routing and retries. One `u64` seed decides everything: the
//! cluster's shape, the mix of fault kinds (swarm testing), every latency,
//! every fault's time. After the faults stop and the cluster heals, the
//! [`checker`] judges the history and the replicas' final state.
//!
//! Layout: `host` (a process and its `Io`), `net` (links, partitions, the
//! event queue), `client` (simulated clients), `history`, `checker`, `floor`
//! (what a read must at least see),
//! `plan` (what a seed draws), `ttl` (key expiry: what puts carry and
//! when it takes effect), this file (the world and a run).

pub mod checker;
pub mod client;
pub mod floor;
pub mod history;
pub mod host;
pub mod net;
pub mod plan;
pub mod ttl;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use checker::Copy;
use client::SimClient;
use history::{History, Outcome};
use host::{ConnState, Host, HostIo, Input, Time};
use net::{Event, Net, NetConfig, Proc};
use plan::{Fault, Plan};

use crate::manager::{self, Manager};
use crate::net::auth::{Key, Keys};
use crate::net::{ConnId, Gate, Handler, SplitMix};
use crate::storage::{self, Node};
use crate::store::disk::{Disk, SimDisk};
use crate::store::{FsyncPolicy, Store};
use crate::table::NodeState;
use std::rc::Rc;

/// µs per ms.
const MS: Time = 1000;
/// µs per second.
const SEC: Time = 1_000_000;
/// The wall clock at simulated time 0 (2026-12-01).
pub(crate) const WALL_BASE_MS: u64 = 1_796_083_200_000;
/// How long after healing the cluster must have settled (liveness bound).
pub const SETTLE: Time = 40 * SEC;

thread_local! {
    /// The trace of the current run: log lines with time and process.
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// The simulated time and process the next log line belongs to.
    static CURRENT: RefCell<(Time, String)> = const { RefCell::new((0, String::new())) };
}

/// A `log` logger that writes into the run's trace.
struct TraceLogger;

impl log::Log for TraceLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let (t, who) = CURRENT.with(|c| c.borrow().clone());
            let line = format!("{} {who}: {}", checker::ms(t), r.args());
            TRACE.with(|tr| tr.borrow_mut().push(line));
        }
    }

    fn flush(&self) {}
}

static LOGGER: TraceLogger = TraceLogger;

/// Routes the roles' log lines into the trace (once per process).
pub fn install_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        // GTSTORE_SIM_DEBUG=1 adds the roles' debug lines and every message received.
        let debug = std::env::var_os("GTSTORE_SIM_DEBUG").is_some_and(|v| v == "1");
        log::set_max_level(if debug { log::LevelFilter::Debug } else { log::LevelFilter::Info });
    }
}

fn set_current(t: Time, who: Proc) {
    CURRENT.with(|c| *c.borrow_mut() = (t, who.to_string()));
}

/// Adds a line of the simulator's own to the trace.
fn note(t: Time, line: String) {
    TRACE.with(|tr| tr.borrow_mut().push(format!("{} sim: {line}", checker::ms(t))));
}

/// What one seed's run found.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// What the seed drew, in one line.
    pub summary: String,
    /// Every violation found (empty: the seed passed).
    pub failures: Vec<String>,
    /// The trace (roles' log lines and the simulator's notes).
    pub trace: Vec<String>,
    /// Faults injected.
    pub faults: usize,
    /// Client operations run.
    pub ops: usize,
    /// Simulated events run.
    pub steps: u64,
}

/// A simulated cluster.
pub struct World {
    plan: Plan,
    net: Net,
    base: Instant,
    root: PathBuf,
    manager: Host<Gate<Manager>>,
    nodes: BTreeMap<u32, Host<Gate<Node>>>,
    clients: Vec<SimClient>,
    history: History,
    rng: SplitMix,
    /// Nodes asked to leave (SIGTERM sent).
    leavers: Vec<u32>,
    /// Nodes crashed and not restarted.
    crashed: Vec<u32>,
    faults: usize,
    /// The world has been cut short (a role hit a bug).
    aborted: Vec<String>,
    /// Each process's disk; a crash loses what it had not synced.
    disks: BTreeMap<Proc, SimDisk>,
    /// Acknowledged puts and the version found for each at the ack.
    acked: Vec<(usize, crate::hlc::Version)>,
    /// The least version each read begun in a settled cluster may return.
    floors: floor::Floors,
}

/// One copy of a key as the W-copies rule sees it: its version, whether it
/// is the put's own value, whether it is a put allowed to win over it.
type Held = (crate::hlc::Version, bool, bool);

fn manager_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000))
}

fn node_addr(id: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16))
}

impl World {
    /// A world for `plan`, with its disks under `root`.
    pub fn new(plan: Plan, root: PathBuf) -> World {
        let base = Instant::now();
        let net_cfg =
            NetConfig { min_latency: plan.min_latency, jitter: plan.jitter, connect_timeout: plan.connect_timeout };
        let mut rng = SplitMix::new(plan.seed ^ 0xA5A5);
        let net = Net::new(net_cfg, rng.next_u64());
        let manager = Host {
            role: None,
            io: HostIo::new(base, WALL_BASE_MS, 0, 0, rng.next_u64()),
            addr: manager_addr(),
            inbox: Default::default(),
            stalled_until: 0,
            wakes: Default::default(),
        };
        World {
            plan,
            net,
            base,
            root,
            manager,
            nodes: BTreeMap::new(),
            clients: Vec::new(),
            history: History::default(),
            rng,
            leavers: Vec::new(),
            crashed: Vec::new(),
            faults: 0,
            aborted: Vec::new(),
            acked: Vec::new(),
            floors: Default::default(),
            disks: BTreeMap::new(),
        }
    }

    fn manager_cfg(&self) -> manager::Config {
        manager::Config {
            listen: manager_addr(),
            data_dir: self.root.join("manager"),
            rep: self.plan.rep,
            read_quorum: self.plan.rep / 2 + 1,
            write_quorum: self.plan.rep / 2 + 1,
            sectors: self.plan.sectors,
            heartbeat: Duration::from_millis(200),
            dead_after: Duration::from_secs(1),
            log_file: None,
            header_timeout: Duration::from_secs(10),
            keys: self.keys(),
            metrics_listen: None,
        }
    }

    fn node_cfg(&self, id: u32) -> storage::Config {
        storage::Config {
            id,
            listen: node_addr(id),
            manager: manager_addr(),
            data_dir: self.root.join(format!("node{id}")),
            fsync: FsyncPolicy::Batch,
            max_key: 1024,
            max_value: 64 * 1024,
            max_header: 128,
            max_conns: 4096,
            heartbeat: Duration::from_millis(200),
            log_file: None,
            tombstone_grace: Duration::from_micros(self.plan.tombstone_grace),
            header_timeout: Duration::from_secs(10),
            // Small on half the seeds (a sixteenth of the daemons' floor): the seeds'
            // light load leaves at most about 8 KB unread on a connection to a stalled
            // peer (measured over 20 seeds), so that some pass it and the node treats
            // the peer as unreachable. Never reached on the others (see Plan).
            max_output: self.plan.max_output,
            idle_timeout: Duration::ZERO,
            resp_listen: None,
            keys: self.keys(),
            metrics_listen: None,
        }
    }

    /// Every daemon shares one cluster key, made from the seed (no draw
    /// from the schedule's generator): the key exchange runs on every
    /// simulated connection as on real ones.
    fn keys(&self) -> Keys {
        let key = Key::from_bytes(&self.plan.seed.to_le_bytes().repeat(4)).unwrap_or_else(|e| unreachable!("{e}"));
        Keys::daemon(Some(key), None)
    }

    /// The disk of `p`, with its data directory made as an operator makes
    /// it before the first start (`mkdir -p`, long since on disk).
    fn disk_of(&mut self, p: Proc, dir: &std::path::Path) -> SimDisk {
        if let Some(d) = self.disks.get(&p) {
            return d.clone();
        }
        let disk = SimDisk::new();
        let _ = disk.create_dir_all(dir);
        for a in dir.ancestors() {
            let _ = disk.sync_dir(a);
        }
        self.disks.insert(p, disk.clone());
        disk
    }

    fn start_manager(&mut self) {
        let now = self.net.now;
        set_current(now, Proc::Manager);
        let io = HostIo::new(self.base, WALL_BASE_MS, now, 0, self.rng.next_u64());
        self.manager.io = io;
        let cfg = self.manager_cfg();
        let disk = Rc::new(self.disk_of(Proc::Manager, &cfg.data_dir));
        match Manager::open_on(disk, cfg, self.manager.io_now()) {
            Ok(m) => {
                let mut gate = Gate::new(m, self.keys());
                gate.drive(&mut self.manager.io, |m, io| m.start(io));
                self.manager.role = Some(gate);
                self.net.listeners.insert(manager_addr(), Proc::Manager);
                self.schedule_wake(Proc::Manager);
            }
            Err(e) => self.aborted.push(format!("manager cannot start: {e}")),
        }
    }

    fn start_node(&mut self, id: u32) {
        let now = self.net.now;
        set_current(now, Proc::Node(id));
        let cfg = self.node_cfg(id);
        let disk = self.disk_of(Proc::Node(id), &cfg.data_dir);
        let opened = Store::open_on(Rc::new(disk.clone()), &cfg.data_dir, cfg.fsync)
            .and_then(|s| Ok((s, Store::open_on(Rc::new(disk), &cfg.data_dir.join("hints"), cfg.fsync)?)));
        let (store, hints) = match opened {
            Ok(v) => v,
            Err(e) => {
                // The daemon would exit at start; it is tried again at healing.
                note(now, format!("node{id} cannot open its store: {e}; it stays down"));
                if !self.crashed.contains(&id) {
                    self.crashed.push(id);
                }
                return;
            }
        };
        let skew = self.plan.skew_ms.get(&id).copied().unwrap_or(0);
        let mut io = HostIo::new(self.base, WALL_BASE_MS, now, skew, self.rng.next_u64());
        let mut gate = Gate::new(Node::new(cfg, store, hints, node_addr(id).to_string(), None), self.keys());
        gate.drive(&mut io, |node, io| node.start(io));
        let host = Host {
            role: Some(gate),
            io,
            addr: node_addr(id),
            inbox: Default::default(),
            stalled_until: 0,
            wakes: Default::default(),
        };
        self.nodes.insert(id, host);
        self.net.listeners.insert(node_addr(id), Proc::Node(id));
        self.schedule_wake(Proc::Node(id));
    }

    fn schedule_wake(&mut self, p: Proc) {
        self.schedule_wake_at(p, self.net.now);
    }

    /// Schedules a turn of `p` at `t` (once per time; see [`wake_at`]).
    fn schedule_wake_at(&mut self, p: Proc, t: Time) {
        match p {
            Proc::Manager => wake_at(&mut self.manager.wakes, &mut self.net, p, t),
            Proc::Node(id) => {
                if let Some(h) = self.nodes.get_mut(&id) {
                    wake_at(&mut h.wakes, &mut self.net, p, t);
                }
            }
            Proc::Client(_) => {}
        }
    }

    /// A wake-up of `p` at the current time was taken off the queue.
    fn woken(&mut self, p: Proc) {
        let now = self.net.now;
        match p {
            Proc::Manager => self.manager.wakes.retain(|&t| t > now),
            Proc::Node(id) => {
                if let Some(h) = self.nodes.get_mut(&id) {
                    h.wakes.retain(|&t| t > now);
                }
            }
            Proc::Client(_) => {}
        }
    }

    /// Crashes `p`: the role is gone without a goodbye, what its disk had
    /// not synced is lost, and every connection of it resets.
    fn crash(&mut self, p: Proc) {
        note(self.net.now, format!("crash {p}"));
        set_current(self.net.now, p);
        // The power cut comes first: it kills the role's file handles, so
        // dropping the role below writes nothing more to the disk.
        let seed = self.rng.next_u64();
        if let Some(d) = self.disks.get(&p) {
            d.crash(seed);
        }
        match p {
            Proc::Manager => {
                drop(self.manager.role.take());
                self.manager.inbox.clear();
                self.net.listeners.remove(&manager_addr());
            }
            Proc::Node(id) => {
                if let Some(h) = self.nodes.get_mut(&id) {
                    drop(h.role.take());
                    h.inbox.clear();
                }
                self.net.listeners.remove(&node_addr(id));
            }
            Proc::Client(_) => {}
        }
        self.net.reset_all_of(p);
        self.floors.crashed();
    }

    /// Delivers `input` to process `to`.
    fn deliver(&mut self, to: Proc, input: Input) {
        match to {
            Proc::Manager => {
                if self.manager.is_up() {
                    self.manager.inbox.push_back(input);
                    self.schedule_wake(to);
                }
            }
            Proc::Node(id) => {
                if let Some(h) = self.nodes.get_mut(&id).filter(|h| h.is_up()) {
                    h.inbox.push_back(input);
                    self.schedule_wake(to);
                }
            }
            Proc::Client(i) => {
                let (net, hist) = (&mut self.net, &mut self.history);
                let Some(c) = self.clients.get_mut(i) else { return };
                match input {
                    Input::Connected(id) => c.on_connected(net, id),
                    Input::Msg(id, msg) => c.on_message(net, hist, id, msg),
                    Input::Closed(id) => c.on_closed(net, id),
                    Input::Accept { .. } | Input::Signal(_) => {}
                }
                self.after_client();
            }
        }
    }

    /// Looks at what a client just did: acknowledged writes (W copies),
    /// reads begun (their floors) and reads that found a value.
    fn after_client(&mut self) {
        for op in std::mem::take(&mut self.history.just_acked) {
            self.check_ack(op);
        }
        for op in std::mem::take(&mut self.history.just_invoked) {
            self.floors.begin(op, &self.history, &self.manager, &self.nodes);
        }
        for op in std::mem::take(&mut self.history.just_read) {
            if let Some(bad) = self.floors.end(op, &self.history, &self.manager, &self.nodes) {
                self.aborted.push(bad);
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::ConnectArrive { link, to, peer } => self.connect_arrive(link, to, peer),
            Event::ConnectDone { link } => {
                if let Some((p, c)) = self.net.initiator(link) {
                    self.deliver(p, Input::Connected(c));
                }
            }
            Event::Refused { to, conn } => self.deliver(to, Input::Closed(conn)),
            Event::Arrive { link, dir, msg } => {
                if let Some((p, c)) = self.net.arrival_end(link, dir) {
                    self.deliver(p, Input::Msg(c, msg));
                }
            }
            Event::CloseArrive { to, conn, link } => {
                self.net.forget(link);
                self.deliver(to, Input::Closed(conn));
            }
            Event::Wake(p) => self.wake(p),
            Event::Fault(i) => self.fault(i),
            Event::ClientTimer { client, token } => {
                let (net, hist) = (&mut self.net, &mut self.history);
                if let Some(c) = self.clients.get_mut(client) {
                    c.on_timer(net, hist, token);
                }
                // A held answer is reported on a timer (see SimClient::finish).
                self.after_client();
            }
        }
    }

    fn connect_arrive(&mut self, link: u64, to: Proc, peer: SocketAddr) {
        let conn = match to {
            Proc::Manager if self.manager.is_up() => Some(self.manager.io.reserve()),
            Proc::Node(id) => self.nodes.get_mut(&id).filter(|h| h.is_up()).map(|h| h.io.reserve()),
            _ => None,
        };
        match conn {
            Some(conn) => {
                self.net.accepted(link, conn);
                self.deliver(to, Input::Accept { conn, link, peer });
            }
            None => {
                if let Some((p, c)) = self.net.initiator(link) {
                    self.net.forget(link);
                    let lat = self.net.latency();
                    self.net.at(self.net.now + lat, Event::Refused { to: p, conn: c });
                }
            }
        }
    }

    /// What `p` handled this turn no longer counts as unread output of
    /// the other end of its links (see `HostConn::unread`).
    fn credit_senders(&mut self, p: Proc) {
        let consumed = match p {
            Proc::Manager => std::mem::take(&mut self.manager.io.consumed),
            Proc::Node(id) => self.nodes.get_mut(&id).map(|h| std::mem::take(&mut h.io.consumed)).unwrap_or_default(),
            Proc::Client(_) => Vec::new(),
        };
        for (link, n) in consumed {
            let Some(l) = self.net.links.get(&link) else { continue };
            let Some(&(sender, Some(conn))) = l.ends.iter().find(|(q, _)| *q != p) else { continue };
            let unread = match sender {
                Proc::Manager => self.manager.io.conn_mut(conn).map(|c| &mut c.unread),
                Proc::Node(id) => self.nodes.get_mut(&id).and_then(|h| h.io.conn_mut(conn)).map(|c| &mut c.unread),
                Proc::Client(_) => None,
            };
            if let Some(unread) = unread {
                *unread = unread.saturating_sub(n);
            }
        }
    }

    fn wake(&mut self, p: Proc) {
        let now = self.net.now;
        set_current(now, p);
        let ended = match p {
            Proc::Manager => run_turn(&mut self.manager, p, &mut self.net, self.base),
            Proc::Node(id) => match self.nodes.get_mut(&id) {
                Some(h) => run_turn(h, p, &mut self.net, self.base),
                None => TurnEnd::Idle,
            },
            Proc::Client(_) => TurnEnd::Idle,
        };
        self.credit_senders(p);
        for broken in crate::invariant::take() {
            self.aborted.push(format!("invariant broken in {p} at {}: {broken}", checker::ms(now)));
        }
        match ended {
            TurnEnd::Idle => {}
            TurnEnd::Stopped => {
                note(now, format!("{p} exited"));
                self.exit(p);
            }
            TurnEnd::Aborted(why) => {
                note(now, format!("{p} aborted: {why}"));
                self.crash(p);
                if let Proc::Node(id) = p {
                    self.crashed.push(id);
                }
            }
        }
    }

    /// `p` exited by itself (a finished leave): its connections close.
    fn exit(&mut self, p: Proc) {
        if let Proc::Node(id) = p {
            if let Some(h) = self.nodes.get_mut(&id) {
                drop(h.role.take());
                h.inbox.clear();
            }
            self.net.listeners.remove(&node_addr(id));
        }
        self.net.reset_all_of(p);
    }

    fn fault(&mut self, i: usize) {
        let Some(f) = self.plan.faults.get(i).map(|(_, f)| f.clone()) else { return };
        self.faults += 1;
        let now = self.net.now;
        note(now, format!("fault: {f:?}"));
        match f {
            Fault::Crash(id) => {
                if self.nodes.get(&id).is_some_and(|h| h.is_up()) {
                    self.crash(Proc::Node(id));
                    self.crashed.push(id);
                }
            }
            Fault::Restart(id) => self.restart(id),
            Fault::Stall(id, dur) => {
                if let Some(h) = self.nodes.get_mut(&id) {
                    h.stalled_until = now + dur;
                }
            }
            Fault::StallManager(dur) => self.manager.stalled_until = now + dur,
            Fault::Isolate(procs) => {
                let all = self.all_procs();
                for a in &procs {
                    for b in all.iter().filter(|b| !procs.contains(b)) {
                        self.net.block(*a, *b);
                        self.net.block(*b, *a);
                    }
                }
            }
            Fault::OneWay(from, to) => self.net.block(from, to),
            Fault::Reset => {
                if let Some(l) = self.net.random_link() {
                    self.net.reset(l);
                }
            }
            Fault::Join(id) => {
                if !self.nodes.contains_key(&id) {
                    self.start_node(id);
                }
            }
            Fault::Leave(id) => {
                if self.nodes.get(&id).is_some_and(|h| h.is_up()) && !self.leavers.contains(&id) {
                    self.leavers.push(id);
                    self.deliver(Proc::Node(id), Input::Signal(Signal::SIGTERM));
                }
            }
            Fault::CrashManager => {
                if self.manager.is_up() {
                    self.crash(Proc::Manager);
                }
            }
            Fault::RestartManager => {
                if !self.manager.is_up() {
                    self.start_manager();
                }
            }
            Fault::DiskFaults(id, writes, fsyncs) => {
                let seed = self.rng.next_u64();
                if let Some(d) = self.disks.get(&Proc::Node(id)) {
                    d.set_faults(writes, fsyncs, seed);
                }
            }
            Fault::Heal => self.heal(),
        }
    }

    fn restart(&mut self, id: u32) {
        if self.nodes.get(&id).is_none_or(|h| !h.is_up()) && self.crashed.contains(&id) {
            self.crashed.retain(|&c| c != id);
            if self.leavers.contains(&id) {
                // An operator does not restart a node that was leaving.
                return;
            }
            note(self.net.now, format!("restart node{id}"));
            self.start_node(id);
        }
    }

    /// Ends every fault: partitions heal, stalls end, crashed processes
    /// come back.
    fn heal(&mut self) {
        self.net.heal();
        for d in self.disks.values() {
            d.set_faults(0, 0, 0);
        }
        let now = self.net.now;
        for h in self.nodes.values_mut() {
            h.stalled_until = h.stalled_until.min(now);
        }
        self.manager.stalled_until = self.manager.stalled_until.min(now);
        for id in self.crashed.clone() {
            self.restart(id);
        }
        if !self.manager.is_up() {
            self.start_manager();
        }
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for id in ids {
            self.schedule_wake(Proc::Node(id));
        }
        self.schedule_wake(Proc::Manager);
    }

    fn all_procs(&self) -> Vec<Proc> {
        let mut v = vec![Proc::Manager];
        v.extend(self.nodes.keys().map(|&id| Proc::Node(id)));
        v.extend((0..self.clients.len()).map(Proc::Client));
        v
    }

    /// Runs events until `until`.
    fn run_until(&mut self, until: Time) {
        while let Some(t) = self.net.peek_time() {
            if t > until || !self.aborted.is_empty() {
                break;
            }
            let Some(ev) = self.net.pop() else { break };
            // A stalled process runs nothing: its wake-ups wait for the stall's end.
            if let Event::Wake(p) = ev {
                self.woken(p);
                let until = self.stalled_until(p);
                if until > self.net.now {
                    self.schedule_wake_at(p, until);
                    continue;
                }
            }
            self.handle(ev);
        }
        self.net.now = self.net.now.max(until);
    }

    fn stalled_until(&self, p: Proc) -> Time {
        match p {
            Proc::Manager => self.manager.stalled_until,
            Proc::Node(id) => self.nodes.get(&id).map_or(0, |h| h.stalled_until),
            Proc::Client(_) => 0,
        }
    }
}

/// How a turn ended.
enum TurnEnd {
    Idle,
    Stopped,
    Aborted(String),
}

/// Runs one loop turn of `host` (process `me`) and moves its output onto
/// the network: the real loop's order, see `net::event_loop`.
fn run_turn<H: Handler>(host: &mut Host<H>, me: Proc, net: &mut Net, base: Instant) -> TurnEnd {
    if !host.is_up() {
        return TurnEnd::Idle;
    }
    if !host.turn_inputs(net.now) {
        return TurnEnd::Aborted(host.io.aborted.take().unwrap_or_default());
    }
    flush(host, me, net, true);
    if !host.turn_sleep() {
        return TurnEnd::Aborted(host.io.aborted.take().unwrap_or_default());
    }
    flush(host, me, net, false);
    for (link, conn) in host.reap() {
        net.close(me, conn, link);
    }
    let my_addr = host.addr;
    for (conn, addr) in std::mem::take(&mut host.io.connects) {
        let link = net.connect(me, conn, my_addr, addr);
        if let Some(c) = host.io.conn_mut(conn) {
            c.link = link;
        }
    }
    if host.io.stopped {
        return TurnEnd::Stopped;
    }
    if let Some(at) = host.io.timers.next_deadline() {
        // Rounded up: a wake-up before the deadline would find nothing due
        // and schedule itself again at the same instant, for ever.
        let t = at.saturating_duration_since(base).as_nanos().div_ceil(1000) as Time;
        wake_at(&mut host.wakes, net, me, t.max(net.now));
    }
    TurnEnd::Idle
}

/// Schedules a wake-up of `p` at `t` unless one at or before `t` is already
/// scheduled (that turn schedules the next one itself).
fn wake_at(wakes: &mut std::collections::BTreeSet<Time>, net: &mut Net, p: Proc, t: Time) {
    if wakes.first().is_some_and(|&first| first <= t) {
        return;
    }
    wakes.insert(t);
    net.at(t, Event::Wake(p));
}

/// Hands a host's queued output to the network: with `early_only`, what may
/// leave before the turn's fsync.
fn flush<H: Handler>(host: &mut Host<H>, me: Proc, net: &mut Net, early_only: bool) {
    let ids: Vec<ConnId> = if early_only { host.io.dirty.clone() } else { std::mem::take(&mut host.io.dirty) };
    for id in ids {
        let msgs = host.io.take_output(id, early_only);
        let Some(c) = host.io.conn_mut(id) else { continue };
        let link = c.link;
        for m in msgs {
            c.unread += crate::net::codec::encoded_len(&m);
            net.send(me, id, link, m);
        }
        if !early_only && c.close_after_flush && c.out.is_empty() && c.state == ConnState::Open {
            use crate::net::Io;
            host.io.close(id);
        } else if !early_only && !c.out.is_empty() {
            host.io.dirty.push(id);
        }
    }
}

impl<H: Handler> Host<H> {
    fn io_now(&self) -> Instant {
        use crate::net::Io;
        self.io.now()
    }
}

/// Runs one seed: builds the cluster the seed draws, runs clients and
/// faults, heals, and checks. Every disk is a `SimDisk` under the virtual
/// directory `/sim/seed-<seed>`: nothing touches the real file system, and
/// no path of the host (a pid, a temp dir) reaches the trace.
pub fn run_seed(seed: u64) -> Report {
    run_plan(seed, Plan::draw(seed))
}

/// Like [`run_seed`], with the seed's plan changed first (the regression
/// test replays its seeds without key expiry too, as they were found).
pub fn run_seed_with(seed: u64, change: impl FnOnce(&mut Plan)) -> Report {
    let mut plan = Plan::draw(seed);
    change(&mut plan);
    run_plan(seed, plan)
}

fn run_plan(seed: u64, plan: Plan) -> Report {
    install_logger();
    TRACE.with(|t| t.borrow_mut().clear());
    crate::invariant::enable(true);
    crate::invariant::take();
    let summary = plan.summary();
    let dir = PathBuf::from("/sim").join(format!("seed-{seed}"));
    let mut w = World::new(plan, dir);
    let failures = w.run();
    let report = Report {
        seed,
        summary,
        failures,
        trace: TRACE.with(|t| std::mem::take(&mut *t.borrow_mut())),
        faults: w.faults,
        ops: w.history.ops.len(),
        steps: w.net.steps,
    };
    drop(w);
    report
}

impl World {
    /// The whole run; returns the violations found.
    fn run(&mut self) -> Vec<String> {
        self.start_manager();
        for id in self.plan.initial_nodes() {
            self.start_node(id);
        }
        for (i, (at, _)) in self.plan.faults.clone().into_iter().enumerate() {
            self.net.at(at, Event::Fault(i));
        }
        let active_until = self.plan.clients_until;
        for i in 0..self.plan.clients {
            let seed = self.rng.next_u64();
            let p = &self.plan;
            self.clients.push(SimClient::new(i, manager_addr(), p.keys, p.think, p.ttl_one_in, active_until, seed));
        }
        self.run_until(self.plan.clients_start);
        for c in &mut self.clients {
            c.start(&mut self.net);
        }
        let settle_at = self.plan.heal_at + SETTLE;
        self.run_until(settle_at);
        let mut failures = self.aborted.clone();
        if !failures.is_empty() {
            return failures;
        }
        failures.extend(self.check_membership());
        failures.extend(self.check_still_held());
        failures.extend(self.check_every_replica());
        failures.extend(self.final_reads(settle_at));
        failures.extend(checker::check_reads(&self.history));
        failures.extend(self.check_replicas());
        failures
    }

    /// An acknowledged PUT is held by at least W replicas when its client
    /// hears the acknowledgement (SPEC §4: W acknowledgements, so that no
    /// acknowledged write is lost while fewer than W replicas are). A copy
    /// is the put's version or a newer one of the key, in a node's store or
    /// its hints; a crashed node is given the benefit of the doubt. A put
    /// whose value no running node holds any more (overwritten everywhere)
    /// cannot be judged.
    fn check_ack(&mut self, id: usize) {
        let Some(op) = self.history.ops.get(id) else { return };
        let (Some(value), Some(m)) = (op.value.clone(), self.manager.running()) else { return };
        let (key, w) = (op.key.clone(), m.table().write_quorum as usize);
        let sector = m.table().sector_of(&key);
        // A put that may legitimately win over this one: any not over
        // before this one was invoked (rule (a)).
        let invoked = op.invoke;
        let may_supersede = |v: &[u8]| {
            self.history.ops.iter().any(|o| {
                o.kind == history::Kind::Put && o.value.as_deref() == Some(v) && checker::effect_end(o) >= invoked
            })
        };
        // Each copy: its version, whether it is this put's value, and
        // whether it is a put that may supersede this one.
        let copies = |node: &Node| -> Vec<Held> {
            let mut items: Vec<crate::store::Item> = Vec::new();
            items.extend(node.store().get(sector, &key).ok().flatten());
            for target in node.hints().sector_ids() {
                items.extend(node.hints().get(target, &key).ok().flatten());
            }
            items
                .into_iter()
                .map(|i| {
                    let ours = i.value.as_deref() == Some(&value[..]);
                    (i.version, ours, !ours && i.value.as_deref().is_some_and(may_supersede))
                })
                .collect()
        };
        let running: Vec<(u32, Vec<Held>)> =
            self.nodes.iter().filter_map(|(id, h)| Some((*id, copies(h.running()?)))).collect();
        // A retried put may have been coordinated twice, under two versions
        // of the same value; the acknowledgement came from one of them, and
        // the put is durable once W nodes hold the older one or newer, or a
        // put allowed to win over it (a copy of ours it overwrote counted).
        let Some(version) = running.iter().flat_map(|(_, c)| c).filter(|c| c.1).map(|c| c.0).min() else {
            return;
        };
        let held = running.iter().filter(|(_, c)| c.iter().any(|&(v, _, later)| v >= version || later)).count();
        self.acked.push((id, version));
        let crashed = self.crashed.len();
        if held + crashed < w {
            let what = checker::describe(op);
            let holders: Vec<String> = running
                .iter()
                .filter(|(_, c)| !c.is_empty())
                .map(|(id, c)| {
                    format!("node{id} {}", c.iter().map(|(v, ..)| v.to_string()).collect::<Vec<_>>().join("/"))
                })
                .collect();
            self.aborted.push(format!(
                "{what}: acknowledged with {held} copies on running nodes ({crashed} crashed), W={w}; \
                 version {version}, copies: {}",
                holders.join(", ")
            ));
        }
    }

    /// After healing (before the final reads, whose repairs could hide a
    /// loss), every acknowledged put is still held by W running nodes: its
    /// version or a newer one, in a store or in hints. Moves, hand-overs
    /// and hint deliveries only add copies before they drop one.
    fn check_still_held(&self) -> Vec<String> {
        let Some(m) = self.manager.running() else { return Vec::new() };
        let (t, w) = (m.table(), m.table().write_quorum as usize);
        let mut bad = Vec::new();
        for &(id, version) in &self.acked {
            let Some(op) = self.history.ops.get(id) else { continue };
            let sector = t.sector_of(&op.key);
            let holds = |node: &Node| {
                let newer = |item: Option<crate::store::Item>| item.is_some_and(|i| i.version >= version);
                newer(node.store().get(sector, &op.key).ok().flatten())
                    || node.hints().sector_ids().into_iter().any(|h| newer(node.hints().get(h, &op.key).ok().flatten()))
            };
            let held = self.nodes.values().filter_map(|h| h.running()).filter(|n| holds(n)).count();
            // A delete after the put, whose tombstone was reaped, leaves
            // nothing behind: that is the put superseded, not lost, if no
            // node holds a live newer value and rule (b) allows the absence.
            // A value expired on every clock reads as absent: it may be
            // reclaimed as a tombstone of its version, then forgotten.
            let now = self.net.now;
            let live = |node: &Node| {
                node.store().get(sector, &op.key).ok().flatten().is_some_and(|i| {
                    i.value.is_some() && !ttl::certainly_expired(i.expires, now) && i.version >= version
                })
            };
            let reaped = !self.nodes.values().filter_map(|h| h.running()).any(live)
                && checker::check_copy_at(&self.history, &op.key, &checker::Copy::Absent, "reaped", now).is_none();
            if held < w && !reaped {
                bad.push(format!(
                    "{}: version {version} (or newer) held by {held} running nodes after healing, W={w}",
                    checker::describe(op)
                ));
            }
        }
        bad.truncate(5);
        bad
    }

    /// (e) After healing (before the final reads, whose repairs would hide
    /// it), every replica of an acknowledged put holds its version or a
    /// newer one: hints, moves and spreads leave no replica short of it.
    fn check_every_replica(&self) -> Vec<String> {
        let Some(m) = self.manager.running() else { return Vec::new() };
        let t = m.table();
        let mut bad = Vec::new();
        for &(id, version) in &self.acked {
            let Some(op) = self.history.ops.get(id) else { continue };
            let sector = t.sector_of(&op.key);
            let now = self.net.now;
            let copy_of = |node: &Node| node.store().get(sector, &op.key).ok().flatten();
            let running: Vec<(u32, Option<crate::store::Item>)> = t
                .preference(sector)
                .into_iter()
                .filter_map(|n| Some((n, copy_of(self.nodes.get(&n)?.running()?))))
                .collect();
            // A delete after the put whose tombstone was reaped leaves no
            // copy anywhere (see check_still_held); a value of the put's
            // version or newer, expired on every clock, may have been
            // reclaimed on some replicas and not yet on others.
            let gone = |i: &Option<crate::store::Item>| {
                i.as_ref()
                    .is_none_or(|i| i.value.is_some() && i.version >= version && ttl::certainly_expired(i.expires, now))
            };
            let reaped = running.iter().all(|(_, i)| gone(i))
                && checker::check_copy_at(&self.history, &op.key, &checker::Copy::Absent, "reaped", now).is_none();
            let short: Vec<String> = running
                .iter()
                .map(|(n, i)| (n, i.as_ref().map(|i| i.version)))
                .filter(|(_, v)| v.is_none_or(|v| v < version))
                .map(|(n, v)| format!("node{n} {}", v.map_or("none".into(), |v| v.to_string())))
                .collect();
            if !short.is_empty() && !reaped {
                bad.push(format!(
                    "{}: version {version} missing after healing on {} (replicas {:?})",
                    checker::describe(op),
                    short.join(", "),
                    t.preference(sector)
                ));
            }
        }
        bad.truncate(5);
        bad
    }

    /// (d) Every join and leave finished: no move pending, every running
    /// node an up member, every leaver gone.
    fn check_membership(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let Some(m) = self.manager.running() else {
            return vec!["the manager is not up after healing".into()];
        };
        if let Some(p) = m.pending() {
            bad.push(format!("a move to epoch {} has not finished {} after healing", p.epoch, checker::ms(SETTLE)));
        }
        let t = m.table();
        for (id, h) in &self.nodes {
            let member = t.member(*id);
            if self.leavers.contains(id) {
                if h.is_up() || member.is_some_and(|m| m.state == NodeState::Up) {
                    bad.push(format!("node {id} was asked to leave and has not left"));
                }
            } else if h.is_up() && member.is_none_or(|m| m.state != NodeState::Up) {
                bad.push(format!("node {id} runs but is not an up member"));
            }
        }
        bad
    }

    /// Reads every key through a fresh client after the cluster settled;
    /// each must succeed, and its value obeys (a) and (b).
    fn final_reads(&mut self, from: Time) -> Vec<String> {
        let ix = self.clients.len();
        let mut c = SimClient::new(ix, manager_addr(), self.plan.keys, MS, 0, 0, self.rng.next_u64());
        c.script = (0..self.plan.keys).rev().map(|k| format!("k{k}").into_bytes()).collect();
        c.start(&mut self.net);
        self.clients.push(c);
        let first = self.history.ops.len();
        self.run_until(from + (self.plan.keys + 2) * client::op_deadline());
        // Read repair runs after the reads; give it time.
        let t = self.net.now + 3 * SEC;
        self.run_until(t);
        let mut bad = Vec::new();
        let reads: Vec<_> = self.history.ops[first..].iter().filter(|o| o.client == ix).cloned().collect();
        if reads.len() < self.plan.keys as usize {
            bad.push(format!("only {} of {} final reads were run", reads.len(), self.plan.keys));
        }
        for op in &reads {
            let copy = match &op.outcome {
                Outcome::Value(v) => Copy::Value(v.clone()),
                Outcome::NotFound => Copy::Absent,
                other => {
                    bad.push(format!("final read of {} failed after healing: {other:?}", checker::show(&op.key)));
                    continue;
                }
            };
            let at = op.end.unwrap_or(self.net.now);
            bad.extend(checker::check_copy_at(&self.history, &op.key, &copy, "final quorum read", at));
        }
        bad
    }

    /// (c) and (a) on every replica: every sector has N synced copies that
    /// agree, and each key's copy obeys the rules.
    fn check_replicas(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let Some(m) = self.manager.running() else { return bad };
        let t = m.table().clone();
        for s in 0..t.sectors() {
            let pref = t.preference(s);
            if pref.len() < (t.rep as usize).min(t.members.iter().filter(|m| m.state == NodeState::Up).count()) {
                bad.push(format!("sector {s} has {} holders, want {}", pref.len(), t.rep));
            }
            let mut copies = Vec::new();
            for &n in &pref {
                match self.nodes.get(&n).and_then(|h| h.running()) {
                    Some(node) if node.holds_synced(s) => copies.push((n, node.store().keys_with_versions(s))),
                    Some(_) => bad.push(format!("sector {s}: node {n} holds no complete copy")),
                    None => bad.push(format!("sector {s}: holder node {n} is not running")),
                }
            }
            if let Some((n0, first)) = copies.first() {
                for (n, c) in &copies[1..] {
                    if c != first {
                        bad.push(format!("sector {s}: the copies of node {n0} and node {n} differ"));
                    }
                }
            }
        }
        for k in 0..self.plan.keys {
            let key = format!("k{k}").into_bytes();
            let s = t.sector_of(&key);
            for n in t.preference(s) {
                let Some(node) = self.nodes.get(&n).and_then(|h| h.running()) else { continue };
                let copy = match node.store().get(s, &key) {
                    Ok(Some(item)) => item.value.map_or(Copy::Absent, Copy::Value),
                    Ok(None) => Copy::Absent,
                    Err(e) => {
                        bad.push(format!("node {n}: cannot read {}: {e}", checker::show(&key)));
                        continue;
                    }
                };
                let what = format!("node {n}'s copy");
                bad.extend(checker::check_copy_at(&self.history, &key, &copy, &what, self.net.now));
            }
        }
        bad
    }
}

/// The trace lines that concern a failure: those naming its key or sector,
/// and the simulator's own notes.
pub fn relevant_trace(report: &Report) -> Vec<&str> {
    let mut words: Vec<String> = Vec::new();
    for f in &report.failures {
        for w in f.split(|c: char| !c.is_alphanumeric()) {
            if (w.starts_with('k') && w[1..].chars().all(|c| c.is_ascii_digit()) && w.len() > 1)
                || w.starts_with("sector")
            {
                words.push(w.to_string());
            }
        }
    }
    report
        .trace
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains(" sim: ") || words.iter().any(|w| l.contains(w.as_str())))
        .collect()
}
