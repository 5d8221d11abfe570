//! The event loop: one thread, one nix epoll, a slab of connections.
//!
//! In the spirit of Redis `ae.c`: the [`Reactor`] owns the epoll fd, the
//! listener, the signalfd, the timers and every connection; a role (manager,
//! storage node, benchmark) implements [`Handler`] and gets called with each
//! complete message, each due timer and each signal. Epoll is level
//! triggered. Every turn runs in a fixed order:
//!
//! 1. wait for events (until the earliest timer);
//! 2. accept, read and dispatch every complete message (pipelining); then,
//!    up to [`Reactor::drain_rounds`] times and within
//!    [`Reactor::drain_budget`], take the events that arrived meanwhile
//!    without waiting, so that they share this turn's fsync;
//! 3. run due timers;
//! 4. write the output queued with [`Reactor::send_early`]: requests to
//!    other servers, which acknowledge nothing, so the replicas start on a
//!    write while this node syncs it;
//! 5. [`Handler::before_sleep`] — where the storage node fsyncs (group commit);
//! 6. write every connection's queued output;
//! 7. free the connections closed during the turn.
//!
//! Replies are never written before step 5, so a write acknowledged in a
//! turn has been synced by that turn's fsync.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use slab::Slab;

use super::codec::{Limits, Message};
use super::conn::{Conn, ConnState, ReadOutcome, READ_CHUNK};
use super::error::{Error, Result};
use super::frame::Framing;
use super::io::{Io, SplitMix};
use super::timer::{TimerId, Timers};
use super::turns::TurnWatch;

/// Epoll token of the signalfd.
const SIGNALS: u64 = 1;
/// Epoll tokens of the listening sockets: this one plus their index.
const FIRST_LISTENER: u64 = 2;
/// Most listeners a loop has (native, RESP, metrics, and room to spare).
const MAX_LISTENERS: usize = 8;
/// Connection tokens start here (slab key + FIRST_CONN in the low 32 bits).
const FIRST_CONN: u64 = 16;
/// The default of [`Reactor::reserved_conns`].
pub const RESERVED_CONNS: usize = 64;
/// How long a connection accepted past `max_conns` has to show it is a peer.
pub const PROBATION: Duration = Duration::from_secs(2);
/// Connections the kernel may queue before they are accepted.
const LISTEN_BACKLOG: i32 = 4096;
/// Events taken from epoll per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// The default of [`Reactor::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The default of [`Reactor::max_output`].
pub const DEFAULT_MAX_OUTPUT: usize = 8 << 20;
/// The default of [`Reactor::output_timeout`].
pub const DEFAULT_OUTPUT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the listener rests after accept ran out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often connections are checked against the header timeout.
const HEADER_CHECK: Duration = Duration::from_secs(1);

/// A connection's handle: slab key plus a generation, so an id kept after
/// its connection closed never reaches a newer connection in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    key: usize,
    gen: u32,
}

impl ConnId {
    /// An id for slot `key` in its `gen`-th use: for other drivers of the
    /// roles (the simulator), which number their connections themselves.
    pub fn new(key: usize, gen: u32) -> ConnId {
        ConnId { key, gen }
    }

    /// The slot key and generation [`ConnId::new`] was given.
    pub fn parts(self) -> (usize, u32) {
        (self.key, self.gen)
    }

    fn token(self) -> u64 {
        ((self.gen as u64) << 32) | (self.key as u64 + FIRST_CONN)
    }

    fn from_token(token: u64) -> Option<ConnId> {
        let low = token & 0xffff_ffff;
        let key = low.checked_sub(FIRST_CONN)? as usize;
        Some(ConnId { key, gen: (token >> 32) as u32 })
    }
}

/// What a role does with the loop's events. Every callback gets the
/// driver as an [`Io`]: the real [`Reactor`] here, the simulated cluster in
/// `gtstore-sim`. Callbacks are generic over it, so the same role code runs
/// in both, monomorphised (no dynamic dispatch on the request path).
pub trait Handler {
    /// The role's data about each connection.
    type Data;
    /// The role's timer type.
    type Timer;

    /// Data for a connection accepted on a listener of `framing`.
    fn accepted(&mut self, peer: Option<SocketAddr>, framing: Framing) -> Self::Data;
    /// One complete message arrived on `id`.
    fn on_message<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X, id: ConnId, msg: Message);
    /// A timer is due.
    fn on_timer<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X, timer: Self::Timer);
    /// A signal arrived (SIGTERM, SIGINT or SIGHUP).
    fn on_signal<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X, sig: Signal);
    /// An outbound connection finished connecting.
    fn on_connected<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, _io: &mut X, _id: ConnId) {}
    /// A connection was closed (by either side or by an error); its data.
    fn on_closed<X: Io<Data = Self::Data, Timer = Self::Timer>>(
        &mut self,
        _io: &mut X,
        _id: ConnId,
        _data: Self::Data,
    ) {
    }
    /// Called once per turn before the output queued with
    /// [`Io::send_early`] is written.
    fn before_early_flush<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, _io: &mut X) {}
    /// Called once per turn before queued output is written.
    fn before_sleep<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, _io: &mut X) {}
    /// Who is on the other end of an accepted connection, as far as its
    /// messages tell: the loop keeps slots past `max_conns` for peers.
    fn standing(_data: &Self::Data) -> Standing {
        Standing::Unknown
    }
}

/// What an accepted connection has shown itself to be (see
/// [`Reactor::reserved_conns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Nothing yet.
    Unknown,
    /// A client: it counts against `max_conns`.
    Client,
    /// Another daemon of the cluster (it proved the cluster key).
    Peer,
}

/// The loop's state: epoll, listener, signals, timers and connections.
pub struct Reactor<D, T = u64> {
    epoll: Epoll,
    /// The listening sockets, each with the framing its connections speak.
    listeners: Vec<(TcpListener, Framing)>,
    signals: Option<SignalFd>,
    conns: Slab<Conn<D>>,
    /// Generation of each slab key, bumped when the key is reused.
    gens: Vec<u32>,
    /// Connections with output queued this turn (each once: `Conn::queued`).
    dirty: Vec<ConnId>,
    /// Connections whose output may go out before the turn's fsync.
    early: Vec<ConnId>,
    /// Connections to free at the end of the turn.
    to_close: Vec<ConnId>,
    scratch: Vec<u8>,
    /// Limits on incoming messages.
    pub limits: Limits,
    /// Most connections accepted at once, but for `reserved_conns` more
    /// kept for peers.
    pub max_conns: usize,
    /// Connections accepted past `max_conns`, each on probation: it must
    /// show itself a peer ([`Handler::standing`]) within [`PROBATION`], and
    /// is closed as soon as it shows itself a client. So clients that fill
    /// `max_conns` do not lock the manager and the other nodes out.
    pub reserved_conns: usize,
    /// Some connection is on probation.
    probation: bool,
    /// The role's timers.
    pub timers: Timers<T>,
    /// The seeded generator behind [`Io::random`].
    rng: SplitMix,
    /// Extra rounds of events a turn takes without waiting, while events
    /// keep arriving (default 0). The storage node sets a few: requests
    /// that arrive while it works join the turn's group commit instead of
    /// waiting for the next fsync, so batches grow and fsyncs drop.
    pub drain_rounds: usize,
    /// No extra round starts once the turn has run this long, so a slow
    /// turn does not hold its replies back longer still.
    pub drain_budget: Duration,
    /// Times every turn when set (the storage node sets it): the longest
    /// turns are what can make the manager declare a live node dead.
    pub turns: Option<TurnWatch>,
    /// A connection whose header line has been incomplete for this long is
    /// closed (a sender too slow or stuck to finish one: slowloris); None
    /// never. The daemons' `--header-timeout`, default 10 s.
    pub header_timeout: Option<Duration>,
    /// Some connection had a partial header line at the last look.
    partial_headers: bool,
    /// When connections are next checked against `header_timeout`.
    next_header_check: Instant,
    /// The listeners are out of epoll until then (descriptors ran out).
    listener_paused_until: Option<Instant>,
    /// Output queued on one connection past which it is no longer read
    /// (backpressure: a client that sends requests but does not read the
    /// replies), until it drains below half. The daemons' `--max-output`.
    pub max_output: usize,
    /// A connection over `max_output` whose output makes no progress for
    /// this long is closed.
    pub output_timeout: Duration,
    /// Some connection was throttled at the last look.
    throttled: bool,
    /// An accepted connection with nothing read or written for this long
    /// is closed (None: never, the default, as Redis). `--idle-timeout`.
    pub idle_timeout: Option<Duration>,
    /// Connections no longer throttled whose buffered input waits.
    resumed: Vec<ConnId>,
    stopped: bool,
}

impl<D, T> Reactor<D, T> {
    /// A loop with no listener and no signal handling yet.
    pub fn new(limits: Limits) -> Result<Reactor<D, T>> {
        Ok(Reactor {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            listeners: Vec::new(),
            signals: None,
            conns: Slab::new(),
            gens: Vec::new(),
            dirty: Vec::new(),
            early: Vec::new(),
            to_close: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            limits,
            max_conns: 4096,
            reserved_conns: RESERVED_CONNS,
            probation: false,
            timers: Timers::new(),
            rng: SplitMix::new(seed_from_os()),
            drain_rounds: 0,
            drain_budget: Duration::ZERO,
            turns: None,
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            partial_headers: false,
            next_header_check: Instant::now(),
            listener_paused_until: None,
            max_output: DEFAULT_MAX_OUTPUT,
            output_timeout: DEFAULT_OUTPUT_TIMEOUT,
            throttled: false,
            idle_timeout: None,
            resumed: Vec::new(),
            stopped: false,
        })
    }

    /// Binds `addr` and accepts connections of the native protocol on it;
    /// returns the bound address.
    pub fn listen(&mut self, addr: SocketAddr) -> Result<SocketAddr> {
        self.listen_framed(addr, Framing::Native)
    }

    /// Binds `addr` and accepts connections that speak `framing` on it
    /// (RESP, HTTP); returns the bound address.
    pub fn listen_framed(&mut self, addr: SocketAddr, framing: Framing) -> Result<SocketAddr> {
        if self.listeners.len() >= MAX_LISTENERS {
            return Err(Error::Io(std::io::Error::other("too many listeners")));
        }
        let l = TcpListener::bind(addr)?;
        // std listens with a backlog of 128: a burst of connects past it
        // loses SYNs, and each waits a second for its retransmission.
        // Listening again raises it (the kernel caps it at somaxconn).
        // SAFETY: listen(2) on the listener's own descriptor; no memory is passed.
        if unsafe { libc::listen(l.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(Error::Sys(Errno::last()));
        }
        l.set_nonblocking(true)?;
        let token = FIRST_LISTENER + self.listeners.len() as u64;
        self.epoll.add(l.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        let bound = l.local_addr()?;
        self.listeners.push((l, framing));
        Ok(bound)
    }

    /// Delivers SIGTERM, SIGINT and SIGHUP through a signalfd and ignores SIGPIPE.
    pub fn catch_signals(&mut self) -> Result<()> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(s);
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        // SAFETY: SIG_IGN installs no Rust code as a handler.
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) }?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        self.epoll.add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))?;
        self.signals = Some(fd);
        Ok(())
    }

    /// Ends [`run`] after the current turn.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Starts a nonblocking connect to `addr`; `Handler::on_connected` or
    /// `Handler::on_closed` reports how it ended.
    pub fn connect(&mut self, addr: SocketAddr, data: D) -> Result<ConnId> {
        self.connect_framed(addr, data, Framing::Native)
    }

    /// [`Reactor::connect`] for a connection that speaks `framing`.
    pub fn connect_framed(&mut self, addr: SocketAddr, data: D, framing: Framing) -> Result<ConnId> {
        let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd: OwnedFd = socket::socket(family, SockType::Stream, flags, None)?;
        let _ = socket::setsockopt(&fd, sockopt::TcpNoDelay, &true);
        match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(e) => return Err(Error::Sys(e)),
        }
        let sock = TcpStream::from(fd);
        let mut conn = Conn::new(sock, ConnState::Connecting, data);
        conn.peer = Some(addr);
        conn.outbound = true;
        conn.framing = framing;
        self.insert(conn)
    }

    /// Queues `msg` on connection `id`; false if the connection is gone.
    pub fn send(&mut self, id: ConnId, msg: &Message) -> bool {
        match self.conn_mut(id) {
            Some(c) if c.state != ConnState::Closed => c.queue(msg),
            _ => return false,
        }
        self.mark_dirty(id);
        true
    }

    /// Queues `msg` and writes it before [`Handler::before_sleep`] (the
    /// fsync), not after: for requests to other servers, which acknowledge
    /// nothing, so they need not wait for this turn's writes to be durable.
    ///
    /// Output queued on the same connection with [`Reactor::send`] earlier
    /// in the turn holds it back: a connection's bytes keep their order.
    pub fn send_early(&mut self, id: ConnId, msg: &Message) -> bool {
        let early = match self.conn_mut(id) {
            Some(c) if c.state != ConnState::Closed => c.queue_early(msg),
            _ => return false,
        };
        self.mark_dirty(id);
        if early && !self.early.contains(&id) {
            self.early.push(id);
        }
        true
    }

    /// Queues `msg`, then closes `id` once it has been written.
    pub fn send_and_close(&mut self, id: ConnId, msg: &Message) {
        if self.send(id, msg) {
            if let Some(c) = self.conn_mut(id) {
                c.state = ConnState::CloseAfterFlush;
            }
        }
    }

    /// Flags `id` for closing at the end of this turn.
    pub fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if c.state != ConnState::Closed {
                c.state = ConnState::Closed;
                self.to_close.push(id);
            }
        }
    }

    /// The role's data for `id`.
    pub fn data_mut(&mut self, id: ConnId) -> Option<&mut D> {
        self.conn_mut(id).map(|c| &mut c.data)
    }

    /// The connection `id`, if it is still open.
    pub fn conn(&self, id: ConnId) -> Option<&Conn<D>> {
        let c = self.conns.get(id.key)?;
        (self.gens.get(id.key) == Some(&id.gen)).then_some(c)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn<D>> {
        if self.gens.get(id.key) != Some(&id.gen) {
            return None;
        }
        self.conns.get_mut(id.key)
    }

    /// How many connections are open.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Puts `id` on this turn's flush list, once.
    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if !c.queued {
                c.queued = true;
                self.dirty.push(id);
            }
        }
    }

    fn insert(&mut self, conn: Conn<D>) -> Result<ConnId> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self.gens.len() <= key {
            self.gens.resize(key + 1, 0);
        }
        self.gens[key] = self.gens[key].wrapping_add(1);
        let id = ConnId { key, gen: self.gens[key] };
        let want = conn.wanted_interest();
        self.epoll.add(conn.sock.as_fd(), EpollEvent::new(flags(want), id.token()))?;
        let c = entry.insert(conn);
        c.registered = want;
        Ok(id)
    }

    fn accept_all<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H, index: usize) {
        loop {
            let Some((l, framing)) = self.listeners.get(index) else {
                return;
            };
            let framing = *framing;
            match l.accept() {
                Ok((sock, peer)) => self.admit(h, sock, peer, framing),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    // Out of descriptors or memory: the listener stays
                    // readable, so a level-triggered loop would spin on it.
                    // The listeners are taken out of epoll for a while instead.
                    warn!("accept failed: {e}; not accepting for {ACCEPT_PAUSE:?}");
                    self.pause_listeners();
                    return;
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Sets every listener's epoll interest to `flags`.
    fn watch_listeners(&mut self, flags: EpollFlags) -> Result<()> {
        for (i, (l, _)) in self.listeners.iter().enumerate() {
            self.epoll.modify(l.as_fd(), &mut EpollEvent::new(flags, FIRST_LISTENER + i as u64))?;
        }
        Ok(())
    }

    /// Stops watching the listeners until `ACCEPT_PAUSE` from now.
    fn pause_listeners(&mut self) {
        if let Err(e) = self.watch_listeners(EpollFlags::empty()) {
            warn!("cannot pause the listeners: {e}");
            return;
        }
        self.listener_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
    }

    /// Watches the listeners again once their pause is over.
    fn resume_listeners(&mut self) {
        if self.listener_paused_until.is_none_or(|until| Instant::now() < until) {
            return;
        }
        match self.watch_listeners(EpollFlags::EPOLLIN) {
            Ok(()) => self.listener_paused_until = None,
            Err(e) => warn!("cannot resume the listeners: {e}"),
        }
    }

    fn admit<H: Handler<Data = D, Timer = T>>(
        &mut self,
        h: &mut H,
        sock: TcpStream,
        peer: SocketAddr,
        framing: Framing,
    ) {
        let open = self.conns.len();
        if open >= self.max_conns.saturating_add(self.reserved_conns) {
            warn!("refusing {peer}: {open} connections open");
            return;
        }
        let probation = (open >= self.max_conns).then(|| Instant::now() + PROBATION);
        if sock.set_nonblocking(true).is_err() {
            return;
        }
        let _ = sock.set_nodelay(true);
        let data = h.accepted(Some(peer), framing);
        let mut conn = Conn::new(sock, ConnState::Open, data);
        conn.framing = framing;
        conn.probation_until = probation;
        self.probation |= probation.is_some();
        if let Err(e) = self.insert(conn) {
            warn!("cannot register {peer}: {e}");
        }
    }

    fn on_signal_event<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H) {
        loop {
            let got = match self.signals.as_ref() {
                Some(fd) => fd.read_signal(),
                None => return,
            };
            match got {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(sig) => h.on_signal(self, sig),
                    Err(_) => continue,
                },
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn on_conn_event<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H, id: ConnId, ev: EpollFlags) {
        let Some(state) = self.conn(id).map(|c| c.state) else {
            return;
        };
        if state == ConnState::Connecting {
            self.finish_connect(h, id);
            return;
        }
        let broken = ev.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
        if broken && state != ConnState::Open {
            self.close(id);
            return;
        }
        if broken || ev.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP) {
            self.on_readable(h, id);
        }
        if ev.contains(EpollFlags::EPOLLOUT) {
            // Written in the flush step, after before_sleep's fsync.
            self.mark_dirty(id);
        }
    }

    fn finish_connect<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        match socket::getsockopt(&c.sock, sockopt::SocketError) {
            Ok(0) => {
                c.state = ConnState::Open;
                self.mark_dirty(id);
                h.on_connected(self, id);
            }
            Ok(err) => {
                debug!("connect to {:?} failed: {}", c.peer, Errno::from_raw(err));
                self.close(id);
            }
            Err(e) => {
                debug!("connect to {:?} failed: {e}", c.peer);
                self.close(id);
            }
        }
    }

    fn on_readable<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H, id: ConnId) {
        let max_inbuf = self.limits.max_header + self.limits.max_body;
        let Some(c) = self.conns.get_mut(id.key) else {
            return;
        };
        if c.state != ConnState::Open || c.throttled {
            return;
        }
        let outcome = c.read_some(&mut self.scratch, max_inbuf);
        let now = Instant::now();
        if !self.handle_input(h, id) {
            return;
        }
        if let Some(c) = self.conn_mut(id) {
            c.compact_input();
            if c.header_started(now).is_some() {
                self.partial_headers = true;
            }
        }
        match outcome {
            Ok(ReadOutcome::Open) => {}
            Ok(ReadOutcome::Eof) => {
                // The peer will send no more; deliver what is queued, then close.
                if let Some(c) = self.conn_mut(id) {
                    c.state = ConnState::CloseAfterFlush;
                }
                self.mark_dirty(id);
            }
            Err(e) => {
                debug!("connection {:?}: {e}", self.conn(id).and_then(|c| c.peer));
                self.close(id);
            }
        }
    }

    /// Handles the whole messages in `id`'s input, until it is throttled;
    /// false if the connection was closed for a malformed message.
    fn handle_input<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H, id: ConnId) -> bool {
        let limits = self.limits;
        let cap = self.max_output;
        loop {
            let Some(c) = self.conn_mut(id) else { return true };
            if c.state != ConnState::Open {
                return true;
            }
            c.update_throttle(cap);
            if c.throttled {
                self.throttled = true;
                self.update_interest(id);
                return true;
            }
            match c.next_message(&limits) {
                Ok(Some(msg)) => {
                    h.on_message(self, id, msg);
                    if !self.judge_probation::<H>(id) {
                        return true;
                    }
                }
                Ok(None) => return true,
                Err(e) => {
                    self.protocol_error(id, &e);
                    return false;
                }
            }
        }
    }

    /// Ends the probation of a connection accepted past `max_conns` once
    /// it has shown what it is: a peer stays, a client is told and closed.
    /// False if it is being closed.
    fn judge_probation<H: Handler<Data = D, Timer = T>>(&mut self, id: ConnId) -> bool {
        let max = self.max_conns;
        let Some(c) = self.conn_mut(id).filter(|c| c.probation_until.is_some()) else { return true };
        match H::standing(&c.data) {
            Standing::Unknown => true,
            Standing::Peer => {
                c.probation_until = None;
                true
            }
            Standing::Client => {
                warn!("closing client {:?}: {max} connections (--max-conns) are open", c.peer);
                let reason = format!("too many connections: {max} are open (--max-conns)");
                self.send_and_close(id, &super::codec::error_reply(0, super::codec::ErrorCode::Retry, &reason));
                false
            }
        }
    }

    /// Handles the input buffered on connections whose output drained
    /// below half the cap since they were throttled.
    fn resume_input<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H) {
        for id in std::mem::take(&mut self.resumed) {
            if self.handle_input(h, id) {
                if let Some(c) = self.conn_mut(id) {
                    c.compact_input();
                }
                self.update_interest(id);
            }
        }
    }

    /// Closes the connections whose header line has been incomplete for
    /// longer than `header_timeout`; looks at most once a second, and only
    /// while some connection has a partial header.
    fn close_slow_headers<H: Handler<Data = D, Timer = T>>(&mut self) {
        let now = Instant::now();
        let headers = self.header_timeout.filter(|_| self.partial_headers);
        let idle = self.idle_timeout.is_some();
        if (headers.is_none() && !self.throttled && !idle && !self.probation) || now < self.next_header_check {
            return;
        }
        self.next_header_check = now + HEADER_CHECK;
        let mut slow = Vec::new();
        let (mut partial, mut throttled, mut probation) = (false, false, false);
        let out_limit = self.output_timeout;
        for (key, c) in self.conns.iter_mut() {
            if let Some(until) = c.probation_until {
                match H::standing(&c.data) {
                    Standing::Peer => c.probation_until = None,
                    _ if now >= until => {
                        slow.push((
                            key,
                            c.peer,
                            format!("not shown to be a peer within {PROBATION:?}, past --max-conns"),
                        ));
                        continue;
                    }
                    _ => probation = true,
                }
            }
            match (c.header_since(), headers) {
                (Some(t), Some(limit)) if now.saturating_duration_since(t) > limit => {
                    slow.push((key, c.peer, format!("no whole header line within {limit:?}")));
                    continue;
                }
                (Some(_), _) => partial = true,
                (None, _) => {}
            }
            if let Some(idle) = self.idle_timeout.filter(|_| !c.outbound) {
                if now.saturating_duration_since(c.active_at) > idle {
                    slow.push((key, c.peer, format!("idle for {idle:?}")));
                    continue;
                }
            }
            match c.progress_at.filter(|_| c.throttled) {
                Some(t) if now.saturating_duration_since(t) > out_limit => {
                    let why = format!("{} bytes of replies not read for {out_limit:?}", c.pending_output());
                    slow.push((key, c.peer, why));
                }
                Some(_) => throttled = true,
                None => {}
            }
        }
        self.partial_headers = partial;
        self.throttled = throttled;
        self.probation = probation;
        for (key, peer, why) in slow {
            warn!("closing {peer:?}: {why}");
            let gen = self.gens.get(key).copied().unwrap_or(0);
            self.close(ConnId::new(key, gen));
        }
    }

    /// A malformed message: an error reply, then the connection closes.
    fn protocol_error(&mut self, id: ConnId, e: &Error) {
        let peer = self.conn(id).and_then(|c| c.peer);
        warn!("closing {peer:?}: {e}");
        let reply = Message { header: Default::default(), body: super::codec::Body::error(e.code(), e.to_string()) };
        self.send_and_close(id, &reply);
    }

    /// Handles one batch of epoll events.
    fn dispatch<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H, events: &[EpollEvent]) {
        for ev in events {
            match ev.data() {
                SIGNALS => self.on_signal_event(h),
                token if (FIRST_LISTENER..FIRST_LISTENER + MAX_LISTENERS as u64).contains(&token) => {
                    self.accept_all(h, (token - FIRST_LISTENER) as usize)
                }
                token => {
                    if let Some(id) = ConnId::from_token(token) {
                        self.on_conn_event(h, id, ev.events());
                    }
                }
            }
        }
    }

    /// Writes the connections marked by [`Reactor::send_early`].
    fn flush_early(&mut self) {
        let ids: Vec<ConnId> = std::mem::take(&mut self.early);
        for id in ids {
            let Some(c) = self.conn_mut(id) else { continue };
            if matches!(c.state, ConnState::Closed | ConnState::Connecting) {
                continue;
            }
            if let Err(e) = c.write_early() {
                debug!("write to {:?}: {e}", c.peer);
                self.close(id);
            }
        }
    }

    fn flush(&mut self) {
        let ids: Vec<ConnId> = std::mem::take(&mut self.dirty);
        for &id in &ids {
            if let Some(c) = self.conn_mut(id) {
                c.queued = false;
            }
        }
        self.write_out(ids);
    }

    fn write_out(&mut self, ids: Vec<ConnId>) {
        let cap = self.max_output;
        for id in ids {
            let Some(c) = self.conn_mut(id) else { continue };
            if matches!(c.state, ConnState::Closed | ConnState::Connecting) {
                continue;
            }
            if let Err(e) = c.write_some() {
                debug!("write to {:?}: {e}", c.peer);
                self.close(id);
                continue;
            }
            if c.state == ConnState::CloseAfterFlush && !c.has_output() {
                self.close(id);
                continue;
            }
            if c.throttled && c.update_throttle(cap) {
                self.resumed.push(id);
            }
            self.update_interest(id);
        }
    }

    fn update_interest(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id.key) else {
            return;
        };
        let want = c.wanted_interest();
        if want != c.registered {
            let mut ev = EpollEvent::new(flags(want), id.token());
            if self.epoll.modify(c.sock.as_fd(), &mut ev).is_ok() {
                c.registered = want;
            }
        }
    }

    fn reap<H: Handler<Data = D, Timer = T>>(&mut self, h: &mut H) {
        while !self.to_close.is_empty() {
            let ids: Vec<ConnId> = std::mem::take(&mut self.to_close);
            for id in ids {
                if self.gens.get(id.key) != Some(&id.gen) || !self.conns.contains(id.key) {
                    continue;
                }
                let c = self.conns.remove(id.key);
                let _ = self.epoll.delete(c.sock.as_fd());
                h.on_closed(self, id, c.data);
            }
        }
    }
}

impl<D, T> Io for Reactor<D, T> {
    type Data = D;
    type Timer = T;

    fn send(&mut self, id: ConnId, msg: &Message) -> bool {
        Reactor::send(self, id, msg)
    }

    fn send_early(&mut self, id: ConnId, msg: &Message) -> bool {
        Reactor::send_early(self, id, msg)
    }

    fn send_and_close(&mut self, id: ConnId, msg: &Message) {
        Reactor::send_and_close(self, id, msg)
    }

    fn connect(&mut self, addr: SocketAddr, data: D) -> Result<ConnId> {
        Reactor::connect(self, addr, data)
    }

    fn connect_framed(&mut self, addr: SocketAddr, data: D, framing: Framing) -> Result<ConnId> {
        Reactor::connect_framed(self, addr, data, framing)
    }

    fn close(&mut self, id: ConnId) {
        Reactor::close(self, id)
    }

    fn data(&self, id: ConnId) -> Option<&D> {
        self.conn(id).map(|c| &c.data)
    }

    fn data_mut(&mut self, id: ConnId) -> Option<&mut D> {
        Reactor::data_mut(self, id)
    }

    fn pending_output(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, Conn::pending_output)
    }

    fn loop_turns(&self) -> Option<&crate::metrics::Histogram> {
        self.turns.as_ref().map(TurnWatch::histogram)
    }

    fn add_timer(&mut self, delay: Duration, timer: T) -> TimerId {
        self.timers.add(Instant::now(), delay, timer)
    }

    fn cancel_timer(&mut self, id: TimerId) {
        self.timers.cancel(id)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_ms(&self) -> u64 {
        crate::hlc::wall_ms()
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn secure_random(&mut self, buf: &mut [u8]) {
        if let Err(e) = super::auth::os_random(buf) {
            log::error!("getrandom failed: {e}");
            std::process::exit(crate::cli::EX_OSERR);
        }
    }

    fn stop(&mut self) {
        Reactor::stop(self)
    }

    fn abort(&mut self, code: i32, why: &str) {
        log::error!("{why}; exiting before this turn's replies are written");
        std::process::exit(code);
    }
}

/// A seed for the real loop's generator: the time and the process id.
fn seed_from_os() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

fn flags((read, write): (bool, bool)) -> EpollFlags {
    let mut f = EpollFlags::empty();
    if read {
        f |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
    }
    if write {
        f |= EpollFlags::EPOLLOUT;
    }
    f
}

/// Converts a timeout to whole milliseconds, rounding up and clamping.
fn epoll_timeout(t: Option<Duration>) -> EpollTimeout {
    match t {
        None => EpollTimeout::NONE,
        Some(d) => {
            let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::NONE)
        }
    }
}

/// Runs turns until the handler calls [`Reactor::stop`]. Only a failure of
/// the epoll fd itself ends the loop with an error.
pub fn run<H: Handler>(rx: &mut Reactor<H::Data, H::Timer>, h: &mut H) -> Result<()> {
    let mut events = vec![EpollEvent::empty(); EVENTS_PER_WAIT];
    while !rx.stopped {
        let timeout = if rx.dirty.is_empty() && rx.to_close.is_empty() {
            let now = Instant::now();
            let mut t = rx.timers.next_timeout(now);
            if (rx.partial_headers && rx.header_timeout.is_some())
                || rx.throttled
                || rx.idle_timeout.is_some()
                || rx.probation
            {
                t = Some(t.map_or(HEADER_CHECK, |t| t.min(HEADER_CHECK)));
            }
            if let Some(until) = rx.listener_paused_until {
                let left = until.saturating_duration_since(now);
                t = Some(t.map_or(left, |t| t.min(left)));
            }
            t
        } else {
            Some(Duration::ZERO)
        };
        let mut n = match rx.epoll.wait(&mut events, epoll_timeout(timeout)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(Error::Sys(e)),
        };
        let (mut rounds, started) = (0, Instant::now());
        let cpu = rx.turns.is_some().then(super::turns::thread_cpu);
        while n > 0 {
            rx.dispatch(h, &events[..n]);
            if rounds == rx.drain_rounds || started.elapsed() >= rx.drain_budget {
                break;
            }
            rounds += 1;
            n = rx.epoll.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0);
        }
        rx.close_slow_headers::<H>();
        rx.resume_listeners();
        let handled = Instant::now();
        for timer in rx.timers.expired(handled) {
            h.on_timer(rx, timer);
        }
        let timed = rx.turns.is_some().then(Instant::now);
        h.before_early_flush(rx);
        rx.flush_early();
        let early = rx.turns.is_some().then(Instant::now);
        h.before_sleep(rx);
        let slept = rx.turns.is_some().then(Instant::now);
        rx.flush();
        rx.resume_input(h);
        rx.reap(h);
        if let (Some(w), Some(timed), Some(early), Some(slept), Some(cpu)) =
            (rx.turns.as_mut(), timed, early, slept, cpu)
        {
            w.record(
                [started, handled, timed, early, slept, Instant::now()],
                super::turns::thread_cpu().saturating_sub(cpu),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::codec::{self, Body, Header};
    use std::io::Write;

    /// Records, for each message, how many turns had ended when it arrived;
    /// on message 1 it sends message 2 from the client side, so message 2
    /// is readable before the turn could end.
    struct Recorder {
        client: TcpStream,
        turns_ended: usize,
        seen: Vec<(u64, usize)>,
    }

    fn encoded(req: u64) -> Vec<u8> {
        let mut out = Vec::new();
        codec::encode(&Message { header: Header { req, ..Header::default() }, body: Body::Ok }, &mut out);
        out
    }

    impl Handler for Recorder {
        type Data = ();
        type Timer = u64;
        fn accepted(&mut self, _peer: Option<SocketAddr>, _framing: Framing) {}
        fn on_message<X: Io<Data = (), Timer = u64>>(&mut self, rx: &mut X, _id: ConnId, msg: Message) {
            self.seen.push((msg.header.req, self.turns_ended));
            match msg.header.req {
                1 => self.client.write_all(&encoded(2)).unwrap(),
                _ => rx.stop(),
            }
        }
        fn on_timer<X: Io<Data = (), Timer = u64>>(&mut self, _rx: &mut X, _timer: u64) {}
        fn on_signal<X: Io<Data = (), Timer = u64>>(&mut self, _rx: &mut X, _sig: Signal) {}
        fn before_sleep<X: Io<Data = (), Timer = u64>>(&mut self, _rx: &mut X) {
            self.turns_ended += 1;
        }
    }

    /// The turns that had ended when messages 1 and 2 arrived.
    fn turns_of_two_messages(drain_rounds: usize, drain_budget: Duration) -> (usize, usize) {
        let mut rx: Reactor<(), u64> = Reactor::new(Limits::default()).unwrap();
        rx.drain_rounds = drain_rounds;
        rx.drain_budget = drain_budget;
        let addr = rx.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let mut h = Recorder { client: client.try_clone().unwrap(), turns_ended: 0, seen: Vec::new() };
        client.write_all(&encoded(1)).unwrap();
        run(&mut rx, &mut h).unwrap();
        assert_eq!(h.seen.iter().map(|&(req, _)| req).collect::<Vec<_>>(), vec![1, 2]);
        (h.seen[0].1, h.seen[1].1)
    }

    #[test]
    fn requests_arriving_during_a_turn_join_it_when_draining() {
        let second_s = Duration::from_secs(1);
        let (first, second) = turns_of_two_messages(8, second_s);
        assert_eq!(first, second, "with drain rounds the second message shares the first one's turn");
        let (first, second) = turns_of_two_messages(0, second_s);
        assert_eq!(first + 1, second, "without, it waits for the next turn");
        let (first, second) = turns_of_two_messages(8, Duration::ZERO);
        assert_eq!(first + 1, second, "a spent budget starts no extra round");
    }
}
