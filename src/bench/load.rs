//! The load generator: many clients, one thread, one [`Reactor`].
//!
//! Each simulated client keeps up to `pipeline` requests in flight, over one
//! connection per storage node that it opens the first time it needs it. A
//! request goes straight to its key's coordinator — the first node of the
//! key's preference list that is up in the table fetched at start — exactly
//! as the client library routes it, and a reply is matched to its request by
//! the header's request id.
//!
//! Closed loop (no rate): a client sends its next request as soon as one of
//! its replies arrives; latency runs from the send to the reply. Open loop
//! (`--rate R`): operation `i` is due at `start + i/R`; due operations go to
//! clients with a free pipeline slot, and latency runs from the due time, so
//! a stall of the cluster (operations waiting for a slot) shows in full in
//! the percentiles instead of being hidden (coordinated omission).
//!
//! With `--resp` ([`Target::Resp`]) every client has one connection to one
//! RESP2 server instead (client `c` to server `c mod N`, whatever the key),
//! and sends `GET key` and `SET key value` (each SET
//! followed by the wait command, if any); replies are matched to requests
//! in order, per connection, by [`Outstanding`].
//!
//! Failures count as errors, never as latencies: an `ERROR` reply (`-...`
//! in RESP), a request unanswered after the timeout, a refused or broken
//! connection. A node whose connection broke is avoided (the next replica
//! of the preference list is used) for a short while, and a client that
//! lost a connection waits a little before sending again, so a dead node
//! costs a bounded error rate, not a busy loop. A RESP command cannot be
//! taken back: a connection with one unanswered past the timeout is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::signal::Signal;

use super::resp::{Answer, Outstanding, RespTarget};
use crate::net::auth::{Key, KeyKind, Keys};
use crate::net::codec::{Body, Header, Limits, Message};
use crate::net::resp::{self, Value};
use crate::net::{ConnId, Framing, Gate, Guarded, Handler, Io, Reactor};
use crate::table::{NodeState, Table};

/// The load generator's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Housekeeping (timeouts, progress), every `TICK`.
    Tick,
    /// The next open-loop operation is due.
    Rate,
    /// Simulated client `c` may send again.
    Client(usize),
}
/// The driver the load generator runs on.
pub trait BenchIo: Io<Data = Link, Timer = Timer> {}

impl<X: Io<Data = Link, Timer = Timer>> BenchIo for X {}

/// How often timeouts are checked and progress is considered.
const TICK: Duration = Duration::from_millis(100);
/// How long a node whose connection failed is avoided.
const NODE_BACKOFF: Duration = Duration::from_millis(200);
/// How long a client that lost a connection waits before sending again.
const CLIENT_BACKOFF: Duration = Duration::from_millis(100);
/// Highest latency the histogram records exactly (longer ones saturate), in µs.
const HIST_MAX_US: u64 = 3_600_000_000;

/// How keys are chosen.
#[derive(Clone, Debug)]
pub enum KeyChoice {
    /// Uniformly over `0..keys`.
    Uniform,
    /// Zipf over `0..keys`: the cumulative distribution, key 0 most popular.
    Zipf(Vec<f64>),
    /// Operation `i` uses key `i` (every one a write): N distinct inserts in order.
    Sequential,
}

impl KeyChoice {
    /// The cumulative distribution of a Zipf law of exponent `s` over `n` keys.
    pub fn zipf(n: u64, s: f64) -> KeyChoice {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += (k as f64).powf(-s);
            cdf.push(sum);
        }
        for c in cdf.iter_mut() {
            *c /= sum;
        }
        KeyChoice::Zipf(cdf)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Operations in all.
    pub ops: u64,
    /// Fraction of the operations that are reads.
    pub read_ratio: f64,
    /// Size of the key space.
    pub keys: u64,
    /// How keys are chosen.
    pub choice: KeyChoice,
    /// Bytes per value written.
    pub value_size: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Requests in flight per client at most.
    pub pipeline: usize,
    /// Open loop at this many operations per second in total.
    pub rate: Option<f64>,
    /// A request unanswered for this long is an error.
    pub timeout: Duration,
    /// Print a progress line on stderr about once a second.
    pub progress: bool,
    /// The word the progress lines start with (`run`, `preload`).
    pub phase: &'static str,
    /// The client key, proved on every connection (`--key-file`).
    pub key: Option<Key>,
}

/// How a run went.
#[derive(Debug)]
pub struct Outcome {
    /// Operations finished (succeeded or failed).
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Reads that found no value (counted as successes).
    pub not_found: u64,
    /// From the first send to the last reply.
    pub elapsed: Duration,
    /// Latencies of the successful operations, in microseconds.
    pub hist: Histogram<u64>,
    /// The first failure seen, for the error message.
    pub first_error: Option<String>,
    /// The run was cut short by a signal.
    pub interrupted: bool,
    /// Why the run stopped before its end, with no operation able to
    /// succeed (the RESP server refused AUTH).
    pub refused: Option<String>,
}

/// What the load is sent to.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A GTStore cluster over the native protocol: each request goes to
    /// its key's coordinator; `client_id` goes in every header.
    Native { router: &'a Router, client_id: u64 },
    /// One RESP2 server.
    Resp(&'a RespTarget),
}

/// Where each key's requests go: the nodes that are up, and for each sector
/// its preference list (indexes into `nodes`) with the up nodes first.
#[derive(Debug)]
pub struct Router {
    /// Up nodes: (id, address).
    pub nodes: Vec<(u32, SocketAddr)>,
    /// Per sector, candidate node indexes, coordinator first.
    sectors: Vec<Vec<usize>>,
    table: Table,
}

impl Router {
    /// Routes by `table`; an error if no node of it is up with a usable address.
    pub fn new(table: &Table) -> Result<Router, String> {
        let mut nodes = Vec::new();
        for m in table.members.iter().filter(|m| m.state == NodeState::Up) {
            match m.addr.parse::<SocketAddr>() {
                Ok(a) => nodes.push((m.id, a)),
                Err(_) => return Err(format!("server{} has an unusable address '{}'", m.id, m.addr)),
            }
        }
        if nodes.is_empty() {
            return Err("the cluster has no storage node up".into());
        }
        let index: HashMap<u32, usize> = nodes.iter().enumerate().map(|(i, &(id, _))| (id, i)).collect();
        let sectors = (0..table.sectors())
            .map(|s| table.preference(s).iter().filter_map(|id| index.get(id).copied()).collect::<Vec<usize>>())
            .collect();
        Ok(Router { nodes, sectors, table: table.clone() })
    }

    /// The candidate nodes (indexes) of `key`, coordinator first.
    fn candidates(&self, key: &[u8]) -> &[usize] {
        let s = self.table.sector_of(key) as usize;
        self.sectors.get(s).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The per-connection data: which client, which node, and on a RESP
/// connection the commands awaiting their replies.
#[derive(Debug)]
pub struct Link {
    client: usize,
    node: usize,
    replies: Outstanding,
}

impl Link {
    fn new(client: usize, node: usize) -> Link {
        Link { client, node, replies: Outstanding::default() }
    }
}

/// One simulated client.
#[derive(Debug)]
struct Sim {
    /// Connection per node index, opened lazily.
    conns: Vec<Option<ConnId>>,
    inflight: usize,
    /// Waiting out a backoff: sends nothing until its timer fires.
    paused: bool,
}

/// One request in flight.
#[derive(Debug)]
struct Pending {
    client: usize,
    conn: ConnId,
    /// Latency is measured from here (send time, or due time in open loop).
    t0: Instant,
    /// When it was sent, for the timeout.
    sent: Instant,
}

/// A small, fast, seeded generator (SplitMix64): benchmark draws need no more.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n.max(1) as u128) >> 64) as u64
    }
}

struct Engine<'a> {
    w: &'a Workload,
    target: Target<'a>,
    sims: Vec<Sim>,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    /// Operations handed to a client (or failed before that).
    issued: u64,
    /// Operations finished.
    done: u64,
    errors: u64,
    not_found: u64,
    hist: Histogram<u64>,
    rng: Rng,
    value: Vec<u8>,
    started: Instant,
    last_done_at: Instant,
    node_down_until: Vec<Option<Instant>>,
    /// Open loop: the client to try first for the next operation.
    next_client: usize,
    rate_timer_armed: bool,
    last_progress: Instant,
    last_progress_done: u64,
    first_error: Option<String>,
    interrupted: bool,
    refused: Option<String>,
}

impl Engine<'_> {
    /// The address of node index `node` (a RESP server's index in `--resp`).
    fn addr(&self, node: usize) -> Option<SocketAddr> {
        match self.target {
            Target::Native { router, .. } => router.nodes.get(node).map(|&(_, a)| a),
            Target::Resp(t) => t.addrs.get(node).copied(),
        }
    }

    /// Node index `node` for messages: `server3 at 127.0.0.1:7003`.
    fn peer_name(&self, node: usize) -> String {
        match self.target {
            Target::Native { router, .. } => match router.nodes.get(node) {
                Some((id, addr)) => format!("server{id} at {addr}"),
                None => format!("node index {node}"),
            },
            Target::Resp(t) => t.addrs.get(node).map_or_else(|| format!("server index {node}"), |a| a.to_string()),
        }
    }

    /// The deadline of a request sent now: when the timeout gives it up.
    fn wall_deadline(&self, rx: &impl BenchIo) -> u64 {
        rx.wall_ms() + self.w.timeout.as_millis() as u64
    }

    fn error(&mut self, why: impl FnOnce() -> String) {
        self.errors += 1;
        self.done += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    fn finished(&self) -> bool {
        self.done >= self.w.ops
    }

    /// The next operation (number `issued`): (key, is_read).
    fn next_op(&mut self) -> (Vec<u8>, bool) {
        let i = self.issued;
        let (k, read) = match &self.w.choice {
            KeyChoice::Sequential => (i, false),
            KeyChoice::Uniform => (self.rng.below(self.w.keys), self.rng.unit() < self.w.read_ratio),
            KeyChoice::Zipf(cdf) => {
                let u = self.rng.unit();
                let k = cdf.partition_point(|&c| c < u).min(cdf.len().saturating_sub(1));
                (k as u64, self.rng.unit() < self.w.read_ratio)
            }
        };
        (format!("key{k}").into_bytes(), read)
    }

    /// The node (index) client `c`'s request for `key` goes to now.
    fn route(&self, c: usize, key: &[u8], now: Instant) -> Option<usize> {
        let cands = match self.target {
            Target::Native { router, .. } => router.candidates(key),
            Target::Resp(t) => return Some(c % t.addrs.len().max(1)),
        };
        let avoid = |n: usize| self.node_down_until[n].is_some_and(|t| t > now);
        cands.iter().copied().find(|&n| !avoid(n)).or_else(|| cands.first().copied())
    }

    /// Sends one operation from client `c`, latency measured from `t0`.
    fn issue(&mut self, rx: &mut impl BenchIo, c: usize, t0: Instant) {
        let (key, read) = self.next_op();
        self.issued += 1;
        let now = Instant::now();
        let Some(node) = self.route(c, &key, now) else {
            let k = String::from_utf8_lossy(&key).into_owned();
            self.error(|| format!("no node holds {k} in the table"));
            return;
        };
        let conn = match self.sims[c].conns[node].filter(|&id| rx.is_open(id)) {
            Some(id) => id,
            None => match self.open(rx, c, node) {
                Ok(id) => {
                    self.sims[c].conns[node] = Some(id);
                    id
                }
                Err(e) => {
                    let peer = self.peer_name(node);
                    self.node_down_until[node] = Some(now + NODE_BACKOFF);
                    self.error(|| format!("cannot connect to {peer}: {e}"));
                    self.pause(rx, c);
                    return;
                }
            },
        };
        self.next_req += 1;
        let sent = match self.target {
            Target::Native { client_id, .. } => {
                let body = if read {
                    Body::Get { key }
                } else {
                    Body::Put { key, value: self.value.clone(), expiry: Default::default() }
                };
                let deadline = self.wall_deadline(rx);
                let header = Header { client: client_id, req: self.next_req, deadline, ..Header::default() };
                rx.send(conn, &Message { header, body })
            }
            Target::Resp(t) => self.send_resp(rx, conn, t, key, read),
        };
        if !sent {
            self.sims[c].conns[node] = None;
            self.error(|| "connection closed before the request could be sent".into());
            return;
        }
        self.sims[c].inflight += 1;
        self.pending.insert(self.next_req, Pending { client: c, conn, t0, sent: now });
    }

    /// Opens client `c`'s connection to node index `node`; a RESP one
    /// starts with AUTH when there is a password.
    fn open(&self, rx: &mut impl BenchIo, c: usize, node: usize) -> crate::net::Result<ConnId> {
        let addr = self
            .addr(node)
            .ok_or_else(|| crate::net::Error::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "no such node")))?;
        let Target::Resp(t) = self.target else {
            return rx.connect(addr, Link::new(c, node));
        };
        let id = rx.connect_framed(addr, Link::new(c, node), Framing::RespClient)?;
        if let Some(auth) = &t.auth {
            if rx.send(id, &resp_message(auth.clone())) {
                if let Some(link) = rx.data_mut(id) {
                    link.replies.auth();
                }
            }
        }
        Ok(id)
    }

    /// Sends operation `next_req` as `GET key` or `SET key value` (and
    /// the wait command) on RESP connection `conn`; false if it is gone.
    fn send_resp(&self, rx: &mut impl BenchIo, conn: ConnId, t: &RespTarget, key: Vec<u8>, read: bool) -> bool {
        let cmd = match read {
            true => resp::command([b"GET".to_vec(), key]),
            false => resp::command([b"SET".to_vec(), key, self.value.clone()]),
        };
        if !rx.send(conn, &resp_message(cmd)) {
            return false;
        }
        let wait = t.wait.as_ref().filter(|_| !read);
        if let Some(w) = wait {
            rx.send(conn, &resp_message(w.clone()));
        }
        let Some(link) = rx.data_mut(conn) else { return false };
        match read {
            true => link.replies.get(self.next_req),
            false => link.replies.set(self.next_req, wait.is_some()),
        }
        debug_assert!(link.replies.len() <= 2 * self.w.pipeline + 1, "more commands in flight than the pipeline");
        true
    }

    /// A reply on RESP connection `id`: the oldest command it has awaiting one is answered.
    fn on_resp_reply(&mut self, rx: &mut impl BenchIo, id: ConnId, body: Body) {
        let (answer, node) = match (body, rx.data_mut(id)) {
            (Body::Resp(v), Some(link)) => (link.replies.on_reply(v), link.node),
            (_, None) => return,
            // The RESP framing yields nothing else; were it to, the connection is out of step.
            (_, Some(link)) => (Answer::Unasked, link.node),
        };
        match answer {
            Answer::Done { req, result } => {
                if result == Ok(false) {
                    self.not_found += 1;
                }
                self.complete(rx, req, result.map(|_| ()));
            }
            Answer::Partial | Answer::Authed => {}
            Answer::AuthRefused(why) => {
                let peer = self.peer_name(node);
                self.refused = Some(format!("{peer} refused AUTH: {why}"));
                rx.stop();
            }
            Answer::Unasked => {
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{}: a reply to no command; closing", self.peer_name(node)));
                }
                self.forget_conn(rx, id);
            }
        }
    }

    /// Closes `id` and stops using it at once (its requests fail when it
    /// has closed, in `on_closed`).
    fn forget_conn(&mut self, rx: &mut impl BenchIo, id: ConnId) {
        if let Some(&Link { client, node, .. }) = rx.data(id) {
            if let Some(slot) = self.sims.get_mut(client).and_then(|s| s.conns.get_mut(node)) {
                *slot = None;
            }
        }
        rx.close(id);
    }

    /// Makes client `c` wait [`CLIENT_BACKOFF`] before it sends again.
    fn pause(&mut self, rx: &mut impl BenchIo, c: usize) {
        if !self.sims[c].paused {
            self.sims[c].paused = true;
            rx.add_timer(CLIENT_BACKOFF, Timer::Client(c));
        }
    }

    /// Closed loop: lets client `c` fill its pipeline.
    fn refill(&mut self, rx: &mut impl BenchIo, c: usize) {
        if self.w.rate.is_some() {
            return;
        }
        while !self.sims[c].paused && self.sims[c].inflight < self.w.pipeline && self.issued < self.w.ops {
            self.issue(rx, c, Instant::now());
        }
    }

    /// When open-loop operation `i` is due.
    fn due(&self, i: u64, rate: f64) -> Instant {
        self.started + Duration::from_secs_f64(i as f64 / rate)
    }

    /// Open loop: sends every due operation a client has room for, and arms
    /// a timer for the next one.
    fn schedule(&mut self, rx: &mut impl BenchIo) {
        let Some(rate) = self.w.rate else { return };
        let now = Instant::now();
        let n = self.sims.len();
        while self.issued < self.w.ops {
            let due = self.due(self.issued, rate);
            if due > now {
                if !self.rate_timer_armed {
                    self.rate_timer_armed = true;
                    rx.add_timer(due - now, Timer::Rate);
                }
                return;
            }
            let free = (0..n)
                .map(|k| (self.next_client + k) % n)
                .find(|&c| !self.sims[c].paused && self.sims[c].inflight < self.w.pipeline);
            let Some(c) = free else {
                // Every slot is busy: the operation waits, its clock running.
                return;
            };
            self.next_client = (c + 1) % n;
            self.issue(rx, c, due);
        }
    }

    /// A reply or failure for request `req`.
    fn complete(&mut self, rx: &mut impl BenchIo, req: u64, result: Result<(), String>) {
        let Some(p) = self.pending.remove(&req) else {
            return; // Timed out earlier, or not ours.
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
                self.done += 1;
                let us = now.saturating_duration_since(p.t0).as_micros().clamp(1, HIST_MAX_US as u128) as u64;
                self.hist.saturating_record(us);
            }
            Err(why) => self.error(|| why),
        }
        self.last_done_at = now;
        self.sims[p.client].inflight -= 1;
        if self.finished() {
            rx.stop();
        } else {
            self.refill(rx, p.client);
        }
    }

    fn tick(&mut self, rx: &mut impl BenchIo) {
        let now = Instant::now();
        let timeout = self.w.timeout;
        let late: Vec<(u64, ConnId)> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) >= timeout)
            .map(|(&r, p)| (r, p.conn))
            .collect();
        for (req, conn) in late {
            if matches!(self.target, Target::Resp(_)) {
                // RESP cannot cancel a command, and its reply would still
                // come first: the connection is given up.
                self.forget_conn(rx, conn);
            }
            self.complete(rx, req, Err(format!("no reply within {timeout:?}")));
        }
        if self.w.progress && now.duration_since(self.last_progress) >= Duration::from_secs(1) {
            let secs = now.duration_since(self.last_progress).as_secs_f64();
            let rate = (self.done - self.last_progress_done) as f64 / secs;
            eprintln!(
                "gtstore-bench: {}: {}/{} ops, {:.0} ops/s, {} errors",
                self.w.phase, self.done, self.w.ops, rate, self.errors
            );
            self.last_progress = now;
            self.last_progress_done = self.done;
        }
        if !self.finished() {
            rx.add_timer(TICK, Timer::Tick);
        }
    }
}

impl Handler for Engine<'_> {
    type Data = Link;
    type Timer = Timer;

    fn accepted(&mut self, _peer: Option<SocketAddr>, _framing: crate::net::Framing) -> Link {
        // The bench has no listener; this is never called.
        Link::new(usize::MAX, usize::MAX)
    }

    fn on_message<X: BenchIo>(&mut self, rx: &mut X, id: ConnId, msg: Message) {
        if matches!(self.target, Target::Resp(_)) {
            return self.on_resp_reply(rx, id, msg.body);
        }
        let result = match msg.body {
            Body::Ok | Body::Value { .. } => Ok(()),
            Body::NotFound { .. } => {
                self.not_found += 1;
                Ok(())
            }
            Body::Error { reason, .. } => Err(format!("server{}: {reason}", msg.header.node)),
            other => Err(format!("unexpected {} reply", other.verb())),
        };
        self.complete(rx, msg.header.req, result);
    }

    fn on_timer<X: BenchIo>(&mut self, rx: &mut X, timer: Timer) {
        match timer {
            Timer::Tick => self.tick(rx),
            Timer::Rate => self.rate_timer_armed = false,
            Timer::Client(c) => {
                if let Some(s) = self.sims.get_mut(c) {
                    s.paused = false;
                    self.refill(rx, c);
                }
            }
        }
    }

    fn on_signal<X: BenchIo>(&mut self, rx: &mut X, sig: Signal) {
        eprintln!("gtstore-bench: {sig}: stopping; the report covers the operations done so far");
        self.interrupted = true;
        rx.stop();
    }

    fn on_closed<X: BenchIo>(&mut self, rx: &mut X, id: ConnId, link: Link) {
        let Some(sim) = self.sims.get_mut(link.client) else {
            return;
        };
        if sim.conns.get(link.node).copied().flatten() == Some(id) {
            sim.conns[link.node] = None;
        }
        let lost: Vec<u64> = self.pending.iter().filter(|(_, p)| p.conn == id).map(|(&r, _)| r).collect();
        if lost.is_empty() || self.finished() {
            return;
        }
        let peer = self.peer_name(link.node);
        if let Some(t) = self.node_down_until.get_mut(link.node) {
            *t = Some(Instant::now() + NODE_BACKOFF);
        }
        // Pause first, so that completing the lost requests does not resend at once.
        self.pause(rx, link.client);
        for req in lost {
            self.complete(rx, req, Err(format!("connection to {peer} failed or closed")));
        }
    }

    fn before_sleep<X: BenchIo>(&mut self, rx: &mut X) {
        if self.finished() {
            rx.stop();
        } else if !self.interrupted {
            self.schedule(rx);
        }
    }
}

/// A RESP command as a message of the loop.
fn resp_message(cmd: Value) -> Message {
    Message { header: Header::default(), body: Body::Resp(cmd) }
}

/// Runs `w` against `target`.
pub fn run(w: &Workload, target: Target<'_>) -> Result<Outcome, String> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| e.to_string())?;
    hist.auto(false);
    let mut rx: Reactor<Guarded<Link>, Timer> =
        Reactor::new(Limits::default()).map_err(|e| format!("cannot create epoll: {e}"))?;
    rx.max_conns = usize::MAX;
    rx.catch_signals().map_err(|e| format!("cannot set up signal handling: {e}"))?;
    let now = Instant::now();
    let n = match target {
        Target::Native { router, .. } => router.nodes.len(),
        Target::Resp(t) => t.addrs.len(),
    };
    let engine = Engine {
        w,
        target,
        sims: (0..w.clients.max(1)).map(|_| Sim { conns: vec![None; n], inflight: 0, paused: false }).collect(),
        pending: HashMap::new(),
        next_req: 0,
        issued: 0,
        done: 0,
        errors: 0,
        not_found: 0,
        hist,
        rng: Rng(0x6774_7374_6f72_6521 ^ w.ops),
        value: (0..w.value_size).map(|i| b'a' + (i % 26) as u8).collect(),
        started: now,
        last_done_at: now,
        node_down_until: vec![None; n],
        next_client: 0,
        rate_timer_armed: false,
        last_progress: now,
        last_progress_done: 0,
        first_error: None,
        interrupted: false,
        refused: None,
    };
    let keys = Keys { outbound: w.key.clone().map(|k| (KeyKind::Client, k)), ..Keys::default() };
    let mut gate = Gate::new(engine, keys);
    if w.ops > 0 {
        rx.add_timer(TICK, Timer::Tick);
        gate.drive(&mut rx, |e, io| {
            for c in 0..e.sims.len() {
                e.refill(io, c);
            }
            e.schedule(io);
        });
        if !gate.role.finished() {
            crate::net::run(&mut rx, &mut gate).map_err(|err| format!("event loop failed: {err}"))?;
        }
    }
    let e = gate.role;
    let elapsed = e.last_done_at.saturating_duration_since(e.started);
    Ok(Outcome {
        ops: e.done,
        errors: e.errors,
        not_found: e.not_found,
        elapsed,
        hist: e.hist,
        first_error: e.first_error,
        interrupted: e.interrupted,
        refused: e.refused,
    })
}
