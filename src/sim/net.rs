//! The simulated network: links between processes, the event queue, and
//! the network's faults.
//!
//! A link is a TCP connection: each direction is FIFO (an arrival is never
//! before the previous one on the same link), while different links have
//! independent latencies, so messages on different connections reorder.
//! A partition holds a direction's messages (TCP retransmits) until it
//! heals, and then until the sender's next retransmission: its timeout
//! doubles from about 200 ms while the partition lasts, so a link cut off
//! for seconds stays silent for up to as long again after the heal, and
//! what is sent on it meanwhile waits behind (see `Net::heal`). A connect
//! across a partition fails after a connect timeout. A reset drops
//! what is in flight and tells both ends. Everything is decided by the
//! network's seeded generator, and events at equal times run in the order
//! they were scheduled, so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;

use super::host::Time;
use crate::net::codec::Message;
use crate::net::{ConnId, SplitMix};

/// A process of the simulated cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proc {
    /// The manager.
    Manager,
    /// Storage node `id`.
    Node(u32),
    /// Client `i`.
    Client(usize),
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proc::Manager => write!(f, "manager"),
            Proc::Node(i) => write!(f, "node{i}"),
            Proc::Client(i) => write!(f, "client{i}"),
        }
    }
}

/// Something that happens at a simulated time.
#[derive(Debug)]
pub enum Event {
    /// A connect's SYN reaches the listener of `to`.
    ConnectArrive { link: u64, to: Proc, peer: SocketAddr },
    /// The connect on `link` completed at its initiator.
    ConnectDone { link: u64 },
    /// A connect failed (refused or timed out).
    Refused { to: Proc, conn: ConnId },
    /// A message reaches the end of `link` that did not send it (`dir` 0:
    /// from end 0 to end 1).
    Arrive { link: u64, dir: usize, msg: Message },
    /// A close or reset reaches `to`'s end `conn`.
    CloseArrive { to: Proc, conn: ConnId, link: u64 },
    /// A process may have work: input or a due timer.
    Wake(Proc),
    /// A fault or healing step of the plan (index into it).
    Fault(usize),
    /// A client's timer (its token tells which).
    ClientTimer { client: usize, token: u64 },
}

/// One TCP connection.
#[derive(Debug)]
pub struct Link {
    /// The two ends; end 1's connection id is known once it accepted.
    pub ends: [(Proc, Option<ConnId>); 2],
    /// The latest arrival scheduled per direction (FIFO).
    last: [Time; 2],
    /// Messages held by a partition, per direction.
    held: [Vec<Message>; 2],
    /// When the first held message of each direction was sent: its
    /// retransmission timer started then.
    held_since: [Time; 2],
    /// Closed by one side: nothing more is sent on it.
    closing: bool,
}

/// Latency and timeouts of one run's network.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Smallest one-way latency (µs).
    pub min_latency: Time,
    /// Largest extra jitter on top of it (µs).
    pub jitter: Time,
    /// How long a connect across a partition takes to fail (µs).
    pub connect_timeout: Time,
}

/// Links, listeners, partitions and the event queue.
pub struct Net {
    /// The current simulated time.
    pub now: Time,
    cfg: NetConfig,
    rng: SplitMix,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: BTreeMap<u64, Event>,
    seq: u64,
    /// The links, by id.
    pub links: BTreeMap<u64, Link>,
    next_link: u64,
    /// Who listens where.
    pub listeners: BTreeMap<SocketAddr, Proc>,
    /// Directed pairs that cannot reach each other.
    pub blocked: BTreeSet<(Proc, Proc)>,
    /// Events run so far.
    pub steps: u64,
    /// Draws the retransmission timeouts, apart from `rng` so that seeds
    /// without held messages at a heal keep their schedules.
    rto_rng: SplitMix,
}

/// Linux's smallest retransmission timeout (µs), about what a loopback or
/// LAN link has; each seed's links draw theirs up to `RTO_SPREAD` above.
const RTO_MIN: Time = 200_000;
const RTO_SPREAD: Time = 100_000;
/// Linux's largest retransmission timeout (µs).
const RTO_MAX: Time = 120_000_000;

impl Net {
    /// An empty network.
    pub fn new(cfg: NetConfig, seed: u64) -> Net {
        Net {
            now: 0,
            cfg,
            rng: SplitMix::new(seed),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            links: BTreeMap::new(),
            next_link: 1,
            listeners: BTreeMap::new(),
            blocked: BTreeSet::new(),
            steps: 0,
            rto_rng: SplitMix::new(seed ^ 0x5254_4f5f_4241_434b),
        }
    }

    /// Schedules `ev` at `at` (not before now).
    pub fn at(&mut self, at: Time, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq)));
        self.events.insert(self.seq, ev);
    }

    /// The next event, with the clock moved to its time.
    pub fn pop(&mut self) -> Option<Event> {
        let Reverse((t, seq)) = self.queue.pop()?;
        debug_assert!(t >= self.now, "time never goes back");
        self.now = t;
        self.steps += 1;
        self.events.remove(&seq)
    }

    /// When the next event is due.
    pub fn peek_time(&self) -> Option<Time> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// One latency draw.
    pub fn latency(&mut self) -> Time {
        self.cfg.min_latency + self.rng.below(self.cfg.jitter + 1)
    }

    /// A random number from the network's generator.
    pub fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn reachable(&self, from: Proc, to: Proc) -> bool {
        !self.blocked.contains(&(from, to))
    }

    /// Starts `from`'s connect (its connection `conn`) to `addr`; returns the link.
    pub fn connect(&mut self, from: Proc, conn: ConnId, from_addr: SocketAddr, addr: SocketAddr) -> u64 {
        let link = self.next_link;
        self.next_link += 1;
        let lat = self.latency();
        match self.listeners.get(&addr).copied() {
            Some(to) if self.reachable(from, to) && self.reachable(to, from) => {
                self.links.insert(
                    link,
                    Link {
                        ends: [(from, Some(conn)), (to, None)],
                        last: [0; 2],
                        held: Default::default(),
                        held_since: [0; 2],
                        closing: false,
                    },
                );
                self.at(self.now + lat, Event::ConnectArrive { link, to, peer: from_addr });
            }
            Some(_) => {
                let t = self.now + self.cfg.connect_timeout;
                self.at(t, Event::Refused { to: from, conn });
            }
            None => self.at(self.now + lat, Event::Refused { to: from, conn }),
        }
        link
    }

    /// The listener accepted `link` as its connection `conn`; the initiator
    /// hears of it one latency later.
    pub fn accepted(&mut self, link: u64, conn: ConnId) {
        let lat = self.latency();
        if let Some(l) = self.links.get_mut(&link) {
            l.ends[1].1 = Some(conn);
            let t = self.now + lat;
            l.last = [t, t];
            self.at(t, Event::ConnectDone { link });
        }
    }

    /// The direction of `link` that `from` sends on.
    fn dir(l: &Link, from: Proc, conn: ConnId) -> usize {
        if l.ends[0] == (from, Some(conn)) {
            0
        } else {
            1
        }
    }

    /// `from` sends `msg` on its connection `conn` of `link`.
    pub fn send(&mut self, from: Proc, conn: ConnId, link: u64, msg: Message) {
        let lat = self.latency();
        let now = self.now;
        let Some(l) = self.links.get_mut(&link) else { return };
        if l.closing {
            return;
        }
        let dir = Self::dir(l, from, conn);
        let to = l.ends[1 - dir].0;
        if self.blocked.contains(&(from, to)) {
            if l.held[dir].is_empty() {
                l.held_since[dir] = now;
            }
            l.held[dir].push(msg);
            return;
        }
        let t = (now + lat).max(l.last[dir]);
        l.last[dir] = t;
        self.at(t, Event::Arrive { link, dir, msg });
    }

    /// `from` closes its end `conn` of `link`: the other end hears it after
    /// what was sent before.
    pub fn close(&mut self, from: Proc, conn: ConnId, link: u64) {
        let lat = self.latency();
        let now = self.now;
        let Some(l) = self.links.get_mut(&link) else { return };
        if l.closing {
            return;
        }
        l.closing = true;
        let dir = Self::dir(l, from, conn);
        let (to, to_conn) = l.ends[1 - dir];
        let t = (now + lat).max(l.last[dir]);
        match to_conn {
            Some(c) => self.at(t, Event::CloseArrive { to, conn: c, link }),
            None => {
                self.links.remove(&link);
            }
        }
    }

    /// Resets `link`: what is in flight is lost and both ends hear of it.
    pub fn reset(&mut self, link: u64) {
        let Some(l) = self.links.remove(&link) else { return };
        for (proc, conn) in l.ends {
            let lat = self.latency();
            if let Some(conn) = conn {
                self.at(self.now + lat, Event::CloseArrive { to: proc, conn, link });
            }
        }
    }

    /// Resets every link with an end at `proc` (it crashed).
    pub fn reset_all_of(&mut self, proc: Proc) {
        let ids: Vec<u64> =
            self.links.iter().filter(|(_, l)| l.ends.iter().any(|(p, _)| *p == proc)).map(|(id, _)| *id).collect();
        for id in ids {
            self.reset(id);
        }
    }

    /// The other end of an arriving message, if the link still exists.
    pub fn arrival_end(&self, link: u64, dir: usize) -> Option<(Proc, ConnId)> {
        let l = self.links.get(&link)?;
        let (p, c) = l.ends[1 - dir];
        Some((p, c?))
    }

    /// The initiator's end of `link`.
    pub fn initiator(&self, link: u64) -> Option<(Proc, ConnId)> {
        let (p, c) = self.links.get(&link)?.ends[0];
        Some((p, c?))
    }

    /// The link is gone after its close reached an end.
    pub fn forget(&mut self, link: u64) {
        self.links.remove(&link);
    }

    /// Blocks `from` → `to`.
    pub fn block(&mut self, from: Proc, to: Proc) {
        self.blocked.insert((from, to));
    }

    /// Ends every partition and releases the held messages, in order, at
    /// the sender's next retransmission (see `next_retransmission`); what
    /// is sent on the link before then arrives after them (FIFO).
    pub fn heal(&mut self) {
        self.blocked.clear();
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            for dir in 0..2 {
                let lat = self.latency();
                let rto = RTO_MIN + self.rto_rng.below(RTO_SPREAD + 1);
                let now = self.now;
                let Some(l) = self.links.get_mut(&id) else { continue };
                let held = std::mem::take(&mut l.held[dir]);
                let resend = if held.is_empty() { now } else { next_retransmission(l.held_since[dir], rto, now) };
                let mut t = (resend + lat).max(l.last[dir]);
                let mut due = Vec::new();
                for msg in held {
                    due.push((t, msg));
                    t += 1;
                }
                l.last[dir] = t;
                for (t, msg) in due {
                    self.at(t, Event::Arrive { link: id, dir, msg });
                }
            }
        }
    }

    /// A random open link, to reset.
    pub fn random_link(&mut self) -> Option<u64> {
        if self.links.is_empty() {
            return None;
        }
        let n = self.rng.below(self.links.len() as u64) as usize;
        self.links.keys().nth(n).copied()
    }
}

/// When a sender whose segment went unacknowledged from `since` (its first
/// timeout `rto`, doubling up to `RTO_MAX`) next retransmits, at `now` or
/// later.
fn next_retransmission(since: Time, rto: Time, now: Time) -> Time {
    let (mut at, mut rto) = (since + rto, rto);
    while at < now {
        rto = (rto * 2).min(RTO_MAX);
        at += rto;
    }
    at
}
