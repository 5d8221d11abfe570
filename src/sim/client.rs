//! Simulated clients: the client library's routing, timeouts and retry
//! policy as an event-driven state machine.
//!
//! A client says HELLO to the manager, keeps the table, and runs one
//! operation at a time over a small key space. Each attempt goes to the
//! key's candidates in [`client::candidates`] order; an attempt that times
//! out (the library's per-attempt timeout) or loses its connection
//! refreshes the table and moves on; an error reply is retried or not as
//! [`client::retry_policy`] says for its code; past the library's total deadline the
//! operation fails. Every invocation and outcome goes into the history.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::history::{History, Kind, Outcome};
use super::host::Time;
use super::net::{Event, Net, Proc};
use super::ttl::TtlDraw;
use crate::client;
use crate::net::codec::{Body, Entry, Expiry, Header, Message};
use crate::net::{ConnId, SplitMix};
use crate::table::Table;

/// µs per ms.
const MS: Time = 1000;
/// The library's per-attempt timeout (`client::Config::default()`).
pub fn attempt_timeout() -> Time {
    client::Config::default().attempt_timeout.as_micros() as Time
}

/// The library's total deadline for one operation (`client::Config::default()`).
pub fn op_deadline() -> Time {
    client::Config::default().deadline.as_micros() as Time
}

/// The library's pause after trying every candidate once.
fn round_pause() -> Time {
    client::ROUND_PAUSE.as_micros() as Time
}

/// A client connection.
#[derive(Debug)]
struct Conn {
    id: ConnId,
    link: u64,
    open: bool,
    /// Messages waiting for the connect to finish.
    waiting: Vec<Message>,
}

/// The operation a client is running.
#[derive(Debug)]
struct Running {
    hist: usize,
    key: Vec<u8>,
    body: Body,
    deadline: Time,
    round: usize,
    /// The node and request id of the attempt in flight.
    attempt: Option<(u32, u64)>,
    /// When the attempt in flight was sent.
    sent_at: Time,
    /// The deadline of the latest failed attempt that may still apply (as
    /// the library's `settle`), and an answer held until it passes.
    unsettled: Time,
    held: Option<(Outcome, u32)>,
    last_error: String,
}

/// What a client does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Think,
    Attempt(u64),
    Retry,
    /// An earlier attempt's deadline passed: report the held answer.
    Settled,
}

/// One simulated client.
#[derive(Debug)]
pub struct SimClient {
    /// Its index (`Proc::Client(ix)`).
    pub ix: usize,
    addr: SocketAddr,
    manager: SocketAddr,
    client_id: u64,
    /// The cached table.
    pub table: Option<Table>,
    conns: BTreeMap<Option<u32>, Conn>,
    next_conn: usize,
    next_req: u64,
    running: Option<Running>,
    rng: SplitMix,
    keys: u64,
    /// No new operation starts after this time.
    pub active_until: Time,
    /// Mean think time between operations (µs).
    think: Time,
    puts: u64,
    tokens: BTreeMap<u64, Token>,
    next_token: u64,
    /// Scripted reads (the checker's final reads) instead of random ops.
    pub script: Vec<Vec<u8>>,
    /// Draws when this client also plays an intruder (a stream of its own,
    /// so the operations drawn are those of a seed without one).
    intruder: SplitMix,
    /// Draws the expiries of its puts (a stream of its own too).
    ttl: TtlDraw,
}

/// One attempt in this many is preceded by a forged STORE on the same
/// connection, which has proved no key.
const FORGE_ONE_IN: u64 = 16;

impl SimClient {
    /// A client of the cluster whose manager is at `manager`; one put in
    /// `ttl_one_in` carries an expiry (0: none does).
    pub fn new(
        ix: usize,
        manager: SocketAddr,
        keys: u64,
        think: Time,
        ttl_one_in: u64,
        active_until: Time,
        seed: u64,
    ) -> SimClient {
        SimClient {
            ix,
            addr: SocketAddr::from(([127, 0, 1, (ix % 250) as u8], 40000)),
            manager,
            client_id: 0,
            table: None,
            conns: BTreeMap::new(),
            next_conn: 0,
            next_req: 0,
            running: None,
            rng: SplitMix::new(seed),
            keys,
            active_until,
            think,
            puts: 0,
            tokens: BTreeMap::new(),
            next_token: 0,
            script: Vec::new(),
            intruder: SplitMix::new(seed ^ 0x696e_7472_7564_6572),
            ttl: TtlDraw::new(ttl_one_in, seed),
        }
    }

    /// Sends, as an intruder would, a STORE of `key` on the client's
    /// connection to `node`: a repair copy of a value no client wrote,
    /// versioned just ahead (so only the missing key stops it). The node
    /// must answer ERROR AUTH, which the client ignores (it answers no
    /// attempt); a node that took it would hold a value never written,
    /// which the checker reports.
    fn forge_store(&mut self, net: &mut Net, node: u32, key: &[u8]) {
        let ms = super::WALL_BASE_MS + net.now / MS + 20;
        let entry = Entry {
            key: key.to_vec(),
            version: crate::hlc::Version { ms, counter: 0, node },
            value: Some(format!("forged-by-client{}", self.ix).into_bytes()),
            expires: 0,
        };
        self.send_to(net, Some(node), Body::Store { entry, hint_for: 0, repair: true });
    }

    fn me(&self) -> Proc {
        Proc::Client(self.ix)
    }

    /// True while an operation runs.
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    fn timer(&mut self, net: &mut Net, after: Time, token: Token) {
        self.next_token += 1;
        self.tokens.insert(self.next_token, token);
        let at = net.now + after;
        net.at(at, Event::ClientTimer { client: self.ix, token: self.next_token });
    }

    /// Says hello to the manager.
    pub fn start(&mut self, net: &mut Net) {
        self.send_to(net, None, Body::Hello);
        let wait = 100 * MS + self.rng.below(100 * MS);
        self.timer(net, wait, Token::Think);
    }

    fn send_to(&mut self, net: &mut Net, node: Option<u32>, body: Body) -> Option<u64> {
        let addr = match node {
            None => self.manager,
            Some(n) => self.table.as_ref()?.member(n)?.addr.parse().ok()?,
        };
        self.next_req += 1;
        // The client's clock is true time; it waits an attempt's timeout.
        let deadline = super::WALL_BASE_MS + (net.now + attempt_timeout()) / MS;
        let header = Header { client: self.client_id, req: self.next_req, deadline, ..Header::default() };
        let msg = Message { header, body };
        if !self.conns.contains_key(&node) {
            self.next_conn += 1;
            let id = ConnId::new(self.next_conn, 1);
            let link = net.connect(self.me(), id, self.addr, addr);
            self.conns.insert(node, Conn { id, link, open: false, waiting: Vec::new() });
        }
        let c = self.conns.get_mut(&node)?;
        if c.open {
            net.send(Proc::Client(self.ix), c.id, c.link, msg);
        } else {
            c.waiting.push(msg);
        }
        Some(self.next_req)
    }

    /// A connect finished.
    pub fn on_connected(&mut self, net: &mut Net, conn: ConnId) {
        let me = self.me();
        if let Some(c) = self.conns.values_mut().find(|c| c.id == conn) {
            c.open = true;
            for m in std::mem::take(&mut c.waiting) {
                net.send(me, c.id, c.link, m);
            }
        }
    }

    /// A connection closed or was refused.
    pub fn on_closed(&mut self, net: &mut Net, conn: ConnId) {
        let Some(node) = self.conns.iter().find(|(_, c)| c.id == conn).map(|(n, _)| *n) else { return };
        self.conns.remove(&node);
        let lost = self.running.as_ref().and_then(|r| r.attempt).is_some_and(|(n, _)| Some(n) == node);
        if lost {
            self.may_have_applied();
            self.attempt_failed(net, format!("connection to server{} closed", node.unwrap_or(0)), true);
        }
    }

    /// A message from the manager or a node.
    pub fn on_message(&mut self, net: &mut Net, hist: &mut History, conn: ConnId, msg: Message) {
        let from = self.conns.iter().find(|(_, c)| c.id == conn).map(|(n, _)| *n);
        match (from, msg.body) {
            (Some(None), Body::TableMsg { table, .. }) => {
                if msg.header.client != 0 && self.client_id == 0 {
                    self.client_id = msg.header.client;
                }
                if self.table.as_ref().is_none_or(|t| table.epoch >= t.epoch) {
                    self.table = Some(table);
                }
            }
            (Some(Some(node)), body) => self.on_reply(net, hist, node, msg.header, body),
            _ => {}
        }
    }

    fn on_reply(&mut self, net: &mut Net, hist: &mut History, node: u32, h: Header, body: Body) {
        let Some(r) = self.running.as_ref() else { return };
        if r.attempt != Some((node, h.req)) {
            return; // an answer to an attempt given up on
        }
        let outcome = match body {
            Body::Ok => Outcome::Acked,
            Body::Value { value, version, .. } => {
                hist.set_seen(r.hist, version);
                Outcome::Value(value)
            }
            Body::NotFound { .. } => Outcome::NotFound,
            Body::Error { code, reason } => match client::retry_policy(&code) {
                client::Retry::Next { refresh_table } => {
                    if !client::leaves_nothing(&code) {
                        self.may_have_applied();
                    }
                    return self.attempt_failed(net, format!("server{node}: {code} {reason}"), refresh_table);
                }
                client::Retry::Fail => Outcome::Failed(format!("refused: {code} {reason}")),
            },
            other => Outcome::Failed(format!("unexpected {} reply", other.verb())),
        };
        self.finish(net, hist, outcome, h.node);
    }

    /// The attempt in flight failed after it was sent: a write may still
    /// take effect until its deadline.
    fn may_have_applied(&mut self) {
        if let Some(r) = self.running.as_mut() {
            if matches!(r.body, Body::Put { .. } | Body::Del { .. }) {
                r.unsettled = r.unsettled.max(r.sent_at + attempt_timeout());
            }
        }
    }

    fn finish(&mut self, net: &mut Net, hist: &mut History, outcome: Outcome, node: u32) {
        let wait = self.running.as_ref().map_or(0, |r| r.unsettled.saturating_sub(net.now));
        if wait > 0 && outcome == Outcome::Acked {
            // As the library: the answer waits for an earlier attempt's deadline.
            if let Some(r) = self.running.as_mut() {
                r.attempt = None;
                r.held = Some((outcome, node));
            }
            return self.timer(net, wait, Token::Settled);
        }
        if let Some(r) = self.running.take() {
            hist.complete(r.hist, outcome, node, net.now);
        }
        let pause = 1 + self.rng.below(2 * self.think + 1);
        self.timer(net, pause, Token::Think);
    }

    fn attempt_failed(&mut self, net: &mut Net, why: String, refresh_table: bool) {
        let Some(r) = self.running.as_mut() else { return };
        r.attempt = None;
        r.last_error = why;
        r.round += 1;
        let candidates = self.table.as_ref().map_or(1, |t| client::candidates(t, &r.key).len().max(1));
        let pause = if r.round.is_multiple_of(candidates) { round_pause() } else { 0 };
        if refresh_table {
            self.send_to(net, None, Body::GetTable);
        }
        self.timer(net, pause, Token::Retry);
    }

    /// A client timer fired.
    pub fn on_timer(&mut self, net: &mut Net, hist: &mut History, token: u64) {
        match self.tokens.remove(&token) {
            Some(Token::Think) => self.next_op(net, hist),
            Some(Token::Retry) => self.attempt(net, hist),
            Some(Token::Settled) => {
                if let Some((outcome, node)) = self.running.as_mut().and_then(|r| r.held.take()) {
                    if let Some(r) = self.running.as_mut() {
                        r.unsettled = 0;
                    }
                    self.finish(net, hist, outcome, node);
                }
            }
            Some(Token::Attempt(req)) => {
                let timed_out = self.running.as_ref().and_then(|r| r.attempt).is_some_and(|(_, q)| q == req);
                if timed_out {
                    let node = self.running.as_ref().and_then(|r| r.attempt).map_or(0, |(n, _)| n);
                    // The library drops a connection whose attempt timed out.
                    if let Some(c) = self.conns.remove(&Some(node)) {
                        net.close(self.me(), c.id, c.link);
                    }
                    self.attempt_failed(net, format!("server{node}: timed out"), true);
                }
            }
            None => {}
        }
    }

    fn next_op(&mut self, net: &mut Net, hist: &mut History) {
        if self.running.is_some() {
            return;
        }
        if self.table.is_none() {
            self.send_to(net, None, Body::Hello);
            self.timer(net, 100 * MS, Token::Think);
            return;
        }
        let (kind, key) = if let Some(key) = self.script.pop() {
            (Kind::Get, key)
        } else if net.now < self.active_until {
            let key = format!("k{}", self.rng.below(self.keys)).into_bytes();
            let kind = match self.rng.below(10) {
                0..=4 => Kind::Put,
                5..=8 => Kind::Get,
                _ => Kind::Del,
            };
            (kind, key)
        } else {
            return;
        };
        let (body, value, expiry) = match kind {
            Kind::Put => {
                self.puts += 1;
                let v = format!("c{}-{}", self.ix, self.puts).into_bytes();
                let expiry = self.ttl.draw(net.now);
                (Body::Put { key: key.clone(), value: v.clone(), expiry }, Some(v), expiry)
            }
            Kind::Get => (Body::Get { key: key.clone() }, None, Expiry::Never),
            Kind::Del => (Body::Del { key: key.clone() }, None, Expiry::Never),
        };
        let id = hist.invoke(self.ix, kind, key.clone(), value, net.now);
        hist.set_expiry(id, expiry);
        self.running = Some(Running {
            hist: id,
            key,
            body,
            deadline: net.now + op_deadline(),
            round: 0,
            attempt: None,
            sent_at: net.now,
            unsettled: 0,
            held: None,
            last_error: String::new(),
        });
        self.attempt(net, hist);
    }

    fn attempt(&mut self, net: &mut Net, hist: &mut History) {
        let Some(r) = self.running.as_ref() else { return };
        if net.now >= r.deadline {
            let why = format!("no replica answered within the deadline: {}", r.last_error);
            return self.finish(net, hist, Outcome::Failed(why), 0);
        }
        let cands = self.table.as_ref().map(|t| client::candidates(t, &r.key)).unwrap_or_default();
        let Some(&node) = cands.get(r.round % cands.len().max(1)) else {
            let why = "no node holds this key".to_string();
            return self.attempt_failed(net, why, true);
        };
        let (body, key) = (r.body.clone(), r.key.clone());
        if self.intruder.below(FORGE_ONE_IN) == 0 {
            self.forge_store(net, node, &key);
        }
        let Some(req) = self.send_to(net, Some(node), body) else {
            return self.attempt_failed(net, format!("server{node} is not in the table"), true);
        };
        if let Some(r) = self.running.as_mut() {
            r.attempt = Some((node, req));
            r.sent_at = net.now;
        }
        self.timer(net, attempt_timeout(), Token::Attempt(req));
    }
}
