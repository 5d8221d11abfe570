//! One simulated process: a role (manager or storage node) and the [`Io`]
//! it runs on.
//!
//! [`HostIo`] is the simulator's stand-in for the `Reactor`: it keeps the
//! process's connections (each the end of a simulated link), its timers,
//! its clock (simulated time plus the process's clock skew) and its seeded
//! generator. What the role sends is queued per connection exactly as the
//! real loop queues it: early output may leave before the turn's fsync,
//! the rest only after [`Handler::before_sleep`]. The world runs a turn
//! with [`Host::turn_inputs`] and [`Host::turn_sleep`] and moves the output onto the network afterwards.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::net::codec::Message;
use crate::net::timer::{TimerId, Timers};
use crate::net::{ConnId, Handler, Io, SplitMix};

/// Simulated time in microseconds since the run began.
pub type Time = u64;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Connect started, not finished.
    Connecting,
    /// Open both ways.
    Open,
    /// Closed by this side or the other; freed at the end of the turn.
    Closed,
}

/// One end of a simulated link, owned by a host.
#[derive(Debug)]
pub struct HostConn<D> {
    /// The role's data about the connection.
    pub data: D,
    /// The link this connection is an end of.
    pub link: u64,
    /// Where it is in its life.
    pub state: ConnState,
    /// Messages queued and not yet handed to the network; `true` = early.
    pub out: VecDeque<(Message, bool)>,
    /// Close once the queued output has gone.
    pub close_after_flush: bool,
    /// Bytes handed to the network on this connection that the other end
    /// has not handled yet (in flight, held by a partition, or waiting in a
    /// stalled peer's inbox): the socket buffers of a real connection,
    /// which `Io::pending_output` reports with the queued output.
    pub unread: usize,
}

/// What arrives at a host from the network, in arrival order.
#[derive(Debug)]
pub enum Input {
    /// A peer connected to this host's listener over `link`.
    Accept { conn: ConnId, link: u64, peer: SocketAddr },
    /// An outbound connect finished.
    Connected(ConnId),
    /// A message on a connection.
    Msg(ConnId, Message),
    /// The other side closed, reset or refused the connection.
    Closed(ConnId),
    /// A signal (SIGTERM for a graceful leave).
    Signal(Signal),
}

/// The simulated driver of one role.
#[derive(Debug)]
pub struct HostIo<D, T> {
    /// The connections, by slot key.
    pub conns: BTreeMap<usize, (u32, HostConn<D>)>,
    next_key: usize,
    next_gen: u32,
    /// The role's timers.
    pub timers: Timers<T>,
    /// Simulated time of the current turn.
    pub now: Time,
    /// The instant simulated time 0 maps to.
    pub base: Instant,
    /// Milliseconds this host's wall clock is ahead (negative: behind).
    pub skew_ms: i64,
    /// The wall clock at simulated time 0.
    pub wall_base_ms: u64,
    rng: SplitMix,
    /// Connects started this turn: (connection, address).
    pub connects: Vec<(ConnId, SocketAddr)>,
    /// Connections closed this turn, to free after it.
    pub to_close: Vec<ConnId>,
    /// Connections with output queued this turn.
    pub dirty: Vec<ConnId>,
    /// The role asked to stop (it left the cluster or gave up).
    pub stopped: bool,
    /// The role aborted (a failed fsync): the process dies now.
    pub aborted: Option<String>,
    /// Bytes of messages handled this turn, by link: the world takes them
    /// off the sender's `HostConn::unread`.
    pub consumed: Vec<(u64, usize)>,
}

impl<D, T> HostIo<D, T> {
    /// A driver whose clock starts at `now`, skewed by `skew_ms`.
    pub fn new(base: Instant, wall_base_ms: u64, now: Time, skew_ms: i64, seed: u64) -> HostIo<D, T> {
        HostIo {
            conns: BTreeMap::new(),
            next_key: 0,
            next_gen: 0,
            timers: Timers::new(),
            now,
            base,
            skew_ms,
            wall_base_ms,
            rng: SplitMix::new(seed),
            connects: Vec::new(),
            to_close: Vec::new(),
            dirty: Vec::new(),
            stopped: false,
            aborted: None,
            consumed: Vec::new(),
        }
    }

    /// A fresh connection id (slots are never reused within a run).
    pub fn reserve(&mut self) -> ConnId {
        let key = self.next_key;
        self.next_key += 1;
        self.next_gen = self.next_gen.wrapping_add(1);
        ConnId::new(key, self.next_gen)
    }

    /// A new connection slot holding `data`.
    pub fn insert(&mut self, data: D, link: u64, state: ConnState) -> ConnId {
        let id = self.reserve();
        let (key, gen) = id.parts();
        let conn = HostConn { data, link, state, out: VecDeque::new(), close_after_flush: false, unread: 0 };
        self.conns.insert(key, (gen, conn));
        id
    }

    /// The connection `id`, if it is still held.
    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut HostConn<D>> {
        let key = self.key_of(id)?;
        self.conns.get_mut(&key).map(|(_, c)| c)
    }

    fn key_of(&self, id: ConnId) -> Option<usize> {
        let (key, gen) = id.parts();
        self.conns.get(&key).filter(|(g, _)| *g == gen).map(|_| key)
    }

    fn queue(&mut self, id: ConnId, msg: &Message, early: bool) -> bool {
        let Some(c) = self.conn_mut(id) else { return false };
        if c.state == ConnState::Closed {
            return false;
        }
        c.out.push_back((msg.clone(), early));
        if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
        true
    }

    /// Takes the messages of `id` that may leave now: with `early_only`,
    /// the leading early messages (plain output holds the rest back).
    pub fn take_output(&mut self, id: ConnId, early_only: bool) -> Vec<Message> {
        let Some(c) = self.conn_mut(id) else { return Vec::new() };
        if c.state != ConnState::Open {
            return Vec::new();
        }
        let mut out = Vec::new();
        while let Some((_, early)) = c.out.front() {
            if early_only && !*early {
                break;
            }
            if let Some((m, _)) = c.out.pop_front() {
                out.push(m);
            }
        }
        out
    }
}

impl<D, T> Io for HostIo<D, T> {
    type Data = D;
    type Timer = T;

    fn send(&mut self, id: ConnId, msg: &Message) -> bool {
        self.queue(id, msg, false)
    }

    fn send_early(&mut self, id: ConnId, msg: &Message) -> bool {
        self.queue(id, msg, true)
    }

    fn send_and_close(&mut self, id: ConnId, msg: &Message) {
        if self.queue(id, msg, false) {
            if let Some(c) = self.conn_mut(id) {
                c.close_after_flush = true;
            }
        }
    }

    fn connect(&mut self, addr: SocketAddr, data: D) -> crate::net::Result<ConnId> {
        let id = self.insert(data, 0, ConnState::Connecting);
        self.connects.push((id, addr));
        Ok(id)
    }

    fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if c.state != ConnState::Closed {
                c.state = ConnState::Closed;
                self.to_close.push(id);
            }
        }
    }

    fn data(&self, id: ConnId) -> Option<&D> {
        let (key, gen) = id.parts();
        self.conns.get(&key).filter(|(g, c)| *g == gen && c.state != ConnState::Closed).map(|(_, c)| &c.data)
    }

    fn data_mut(&mut self, id: ConnId) -> Option<&mut D> {
        let c = self.conn_mut(id)?;
        (c.state != ConnState::Closed).then_some(&mut c.data)
    }

    fn add_timer(&mut self, delay: Duration, timer: T) -> TimerId {
        let now = self.now();
        self.timers.add(now, delay, timer)
    }

    fn cancel_timer(&mut self, id: TimerId) {
        self.timers.cancel(id)
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    fn wall_ms(&self) -> u64 {
        (self.wall_base_ms + self.now / 1000).saturating_add_signed(self.skew_ms)
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn pending_output(&self, id: ConnId) -> usize {
        let (key, gen) = id.parts();
        self.conns
            .get(&key)
            .filter(|(g, _)| *g == gen)
            .map_or(0, |(_, c)| c.unread + c.out.iter().map(|(m, _)| crate::net::codec::encoded_len(m)).sum::<usize>())
    }

    fn secure_random(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    fn stop(&mut self) {
        self.stopped = true;
    }

    fn abort(&mut self, _code: i32, why: &str) {
        log::error!("{why}; the process dies before this turn's replies are written");
        self.aborted = Some(why.to_string());
    }
}

/// A simulated process: its role (None while it is down) and its driver.
pub struct Host<H: Handler> {
    /// The role; `None` while crashed or exited.
    pub role: Option<H>,
    /// The driver of the current incarnation.
    pub io: HostIo<H::Data, H::Timer>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Input that arrived and has not been handled yet.
    pub inbox: VecDeque<Input>,
    /// Runs nothing before this time (a stall, as under SIGSTOP).
    pub stalled_until: Time,
    /// Wake-ups scheduled and not yet run (one per time at most).
    pub wakes: std::collections::BTreeSet<Time>,
}

impl<H: Handler> Host<crate::net::Gate<H>> {
    /// The role behind its gate, unless crashed or exited.
    pub fn running(&self) -> Option<&H> {
        self.role.as_ref().map(|g| &g.role)
    }
}

impl<H: Handler> Host<H> {
    /// Runs one loop turn at `now` in the real loop's order: every input,
    /// due timers, `before_early_flush`, (early output may leave),
    /// `before_sleep`. Returns false if the role aborted. The caller then
    /// hands the output to the network and frees closed connections.
    pub fn turn_inputs(&mut self, now: Time) -> bool {
        let Some(role) = self.role.as_mut() else { return true };
        let io = &mut self.io;
        io.now = now;
        while let Some(input) = self.inbox.pop_front() {
            match input {
                Input::Accept { conn, link, peer } => {
                    let data = role.accepted(Some(peer), crate::net::Framing::Native);
                    let (key, gen) = conn.parts();
                    let c = HostConn {
                        data,
                        link,
                        state: ConnState::Open,
                        out: VecDeque::new(),
                        close_after_flush: false,
                        unread: 0,
                    };
                    io.conns.insert(key, (gen, c));
                }
                Input::Connected(id) => {
                    if let Some(c) = io.conn_mut(id) {
                        if c.state == ConnState::Connecting {
                            c.state = ConnState::Open;
                            if !io.dirty.contains(&id) {
                                io.dirty.push(id);
                            }
                            role.on_connected(io, id);
                        }
                    }
                }
                Input::Msg(id, msg) => {
                    if let Some(link) = io.conn_mut(id).map(|c| c.link) {
                        io.consumed.push((link, crate::net::codec::encoded_len(&msg)));
                    }
                    if io.conn_mut(id).is_some_and(|c| c.state == ConnState::Open) {
                        if log::log_enabled!(log::Level::Debug) {
                            let mut body = format!("{:?}", msg.body);
                            body.truncate(160);
                            log::debug!("<- req {} node {} on {id:?}: {body}", msg.header.req, msg.header.node);
                        }
                        role.on_message(io, id, msg);
                    }
                }
                Input::Closed(id) => io.close(id),
                Input::Signal(sig) => role.on_signal(io, sig),
            }
            if io.aborted.is_some() {
                return false;
            }
        }
        let t = io.now();
        for timer in io.timers.expired(t) {
            role.on_timer(io, timer);
            if io.aborted.is_some() {
                return false;
            }
        }
        role.before_early_flush(io);
        io.aborted.is_none()
    }

    /// The second half of a turn: `before_sleep` (the group commit).
    pub fn turn_sleep(&mut self) -> bool {
        let Some(role) = self.role.as_mut() else { return true };
        role.before_sleep(&mut self.io);
        self.io.aborted.is_none()
    }

    /// Frees the connections closed during the turn (`on_closed` for each);
    /// returns their links and ids.
    pub fn reap(&mut self) -> Vec<(u64, ConnId)> {
        let mut links = Vec::new();
        while !self.io.to_close.is_empty() {
            let ids: Vec<ConnId> = std::mem::take(&mut self.io.to_close);
            for id in ids {
                let (key, gen) = id.parts();
                let held = self.io.conns.get(&key).is_some_and(|(g, _)| *g == gen);
                if !held {
                    continue;
                }
                let Some((_, c)) = self.io.conns.remove(&key) else { continue };
                links.push((c.link, id));
                if let Some(role) = self.role.as_mut() {
                    role.on_closed(&mut self.io, id, c.data);
                }
            }
        }
        links
    }

    /// True while the process is up.
    pub fn is_up(&self) -> bool {
        self.role.is_some()
    }
}
