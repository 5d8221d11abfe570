//! The storage node's metrics: what it counts on the request path
//! ([`NodeMetrics`]), the text a scrape of `--metrics-listen` gets
//! (`Node::render_metrics`), and the figures of STATS (`Node::figures`).
//!
//! A client request is counted when it arrives (`received`) and timed
//! from then until its answer is written: an answer queued behind the
//! turn's group commit (`Io::send`) is timed once that commit is done
//! (`sent`, from `before_sleep`), one that leaves at once when it is
//! queued. The other figures (keys, sectors, hints, ...) are read from the
//! node's state when a scrape asks; gtstore-storage(8) lists them all.

use std::time::Instant;

use super::{Link, Node, NodeIo};
use crate::idmap::IdSet;
use crate::metrics::{self, Exposition, Histogram, Kind};
use crate::net::auth::VerbClass;
use crate::net::codec::{Body, ErrorCode, Figures, Header, Message, FIGURE_VERBS};
use crate::net::{http, ConnId};

/// A client verb, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verb {
    Put,
    Get,
    Del,
    Inspect,
    Stats,
}

impl Verb {
    const ALL: [Verb; 5] = [Verb::Put, Verb::Get, Verb::Del, Verb::Inspect, Verb::Stats];

    /// The client verb of a request, if it is one.
    fn of(body: &Body) -> Option<Verb> {
        match body {
            Body::Put { .. } => Some(Verb::Put),
            Body::Get { .. } => Some(Verb::Get),
            Body::Del { .. } => Some(Verb::Del),
            Body::Inspect { .. } => Some(Verb::Inspect),
            Body::StatsReq => Some(Verb::Stats),
            _ => None,
        }
    }

    /// Its index in the arrays below (and in [`FIGURE_VERBS`]).
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        FIGURE_VERBS.get(self.index()).copied().unwrap_or("?")
    }

    /// The index of its latency histogram: only coordinated verbs have one.
    fn timed(self) -> Option<usize> {
        (self.index() < TIMED).then_some(self.index())
    }
}

/// PUT, GET and DEL are timed (the first verbs of [`Verb::ALL`]).
const TIMED: usize = 3;
/// Error codes counted: the known ones, then every other as one.
const CODES: usize = ErrorCode::KNOWN.len() + 1;
/// The most answers waiting for a turn's commit to be timed; past it they
/// are counted but not timed (a turn holds far fewer).
const MAX_PARKED: usize = 1 << 16;

fn code_index(code: &ErrorCode) -> usize {
    ErrorCode::KNOWN.iter().position(|c| c == code).unwrap_or(CODES - 1)
}

/// The code word of index `i` (a label value, so `'static`).
fn code_word(i: usize) -> &'static str {
    ErrorCode::KNOWN.get(i).and_then(ErrorCode::known_word).unwrap_or("OTHER")
}

/// What the node counts as it serves.
#[derive(Debug)]
pub(super) struct NodeMetrics {
    /// Requests received, by verb.
    requests: [u64; 5],
    /// ERROR replies sent to clients, by verb and code.
    errors: [[u64; CODES]; 5],
    /// Latency of PUT, GET and DEL, from arrival to the answer's leaving.
    latency: [Histogram; TIMED],
    /// The client request being handled now, until it is answered or an
    /// operation takes it over (`take_current`).
    current: Option<(Verb, Instant)>,
    /// Answers queued this turn behind its commit, with their arrival.
    parked: Vec<(Verb, Instant)>,
    /// Connections accepted and open: native, RESP, metrics.
    accepted: [u64; 3],
    /// Accepted native connections that showed themselves peers (they
    /// sent an internal verb); the others are clients.
    peers_in: IdSet<ConnId>,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        NodeMetrics {
            requests: [0; 5],
            errors: [[0; CODES]; 5],
            latency: std::array::from_fn(|_| Histogram::durations()),
            current: None,
            parked: Vec::new(),
            accepted: [0; 3],
            peers_in: IdSet::default(),
        }
    }
}

impl NodeMetrics {
    /// A request arrived on an accepted native connection: a client verb
    /// is counted and becomes the current request, arrived `now()`; an
    /// internal verb shows the connection to be a peer's (and reads no clock).
    pub(super) fn received(&mut self, conn: ConnId, body: &Body, now: impl FnOnce() -> Instant) {
        match Verb::of(body) {
            Some(v) => {
                self.requests[v.index()] += 1;
                self.current = Some((v, now()));
            }
            None if VerbClass::of(body) == VerbClass::Internal => {
                self.peers_in.insert(conn);
            }
            None => {}
        }
    }

    /// The request that arrived last is handled (answered or not).
    pub(super) fn handled(&mut self) {
        self.current = None;
    }

    /// The current request's verb and arrival, for the operation that
    /// takes it over (`None` and `now` if there is none).
    pub(super) fn take_current(&mut self, now: Instant) -> (Option<Verb>, Instant) {
        match self.current.take() {
            Some((v, at)) => (Some(v), at),
            None => (None, now),
        }
    }

    /// The current request is answered with `body` behind this turn's commit.
    pub(super) fn answered_now(&mut self, body: &Body) {
        if let Some((v, at)) = self.current.take() {
            self.answered(Some(v), at, body, None);
        }
    }

    /// A request of `verb` that arrived `at` is answered with `body`: at
    /// once (`sent` is when) or behind this turn's commit (`None`).
    pub(super) fn answered(&mut self, verb: Option<Verb>, at: Instant, body: &Body, sent: Option<Instant>) {
        let Some(v) = verb else { return };
        if let Body::Error { code, .. } = body {
            if let Some(n) = self.errors.get_mut(v.index()).and_then(|e| e.get_mut(code_index(code))) {
                *n += 1;
            }
        }
        let Some(t) = v.timed() else { return };
        match sent {
            Some(now) => self.latency[t].observe_duration(now.saturating_duration_since(at)),
            None if self.parked.len() < MAX_PARKED => self.parked.push((v, at)),
            None => {}
        }
    }

    /// This turn's commit is done: the answers behind it leave now.
    pub(super) fn sent(&mut self, now: Instant) {
        for (v, at) in self.parked.drain(..) {
            if let Some(t) = v.timed() {
                self.latency[t].observe_duration(now.saturating_duration_since(at));
            }
        }
    }

    /// A connection of `link` was accepted.
    pub(super) fn opened(&mut self, link: Link) {
        if let Some(i) = accepted_index(link) {
            self.accepted[i] += 1;
        }
    }

    /// Connection `conn` of `link` closed.
    pub(super) fn closed(&mut self, conn: ConnId, link: Link) {
        if let Some(i) = accepted_index(link) {
            self.accepted[i] = self.accepted[i].saturating_sub(1);
        }
        if link == Link::Inbound {
            self.peers_in.remove(&conn);
        }
    }
}

fn accepted_index(link: Link) -> Option<usize> {
    match link {
        Link::Inbound => Some(0),
        Link::Resp => Some(1),
        Link::Metrics => Some(2),
        Link::Peer(_) | Link::Manager => None,
    }
}

impl Node {
    /// A request on the metrics port: the exposition, or an HTTP error; the
    /// connection closes after the reply.
    pub(super) fn serve_metrics(&mut self, rx: &mut impl NodeIo, conn: ConnId, req: &http::Request) {
        let reply = metrics::serve(req, || self.render_metrics(rx));
        rx.send_and_close(conn, &Message { header: Header::default(), body: Body::Raw(reply) });
    }

    /// The node's figures for STATS (`gtstore stats`).
    pub(super) fn figures(&self) -> Figures {
        let m = &self.metrics;
        let mut latency = [[0u64; 3]; 3];
        for (out, h) in latency.iter_mut().zip(&m.latency) {
            *out = [h.count(), h.quantile(0.5).unwrap_or(0), h.quantile(0.99).unwrap_or(0)];
        }
        Figures {
            held: u32::try_from(self.mover.synced.len()).unwrap_or(u32::MAX),
            tombstones: self.store.key_counts().1 as u64,
            hints: self.handoff.hints.total_entries() as u64,
            pulls: u32::try_from(self.mover.pulls.len()).unwrap_or(u32::MAX),
            ops: u32::try_from(self.coord.ops.len()).unwrap_or(u32::MAX),
            requests: m.requests,
            errors: m.errors.map(|by_code| by_code.iter().sum()),
            latency,
        }
    }

    /// The text exposition of every metric (gtstore-storage(8), METRICS).
    fn render_metrics(&self, rx: &impl NodeIo) -> String {
        let m = &self.metrics;
        let mut e = Exposition::new();
        e.family(
            "gtstore_requests_total",
            Kind::Counter,
            "Client requests received by this node, by verb (requests forwarded here by other nodes included).",
        );
        for v in Verb::ALL {
            e.sample("gtstore_requests_total", &[("verb", v.name())], m.requests[v.index()]);
        }
        e.family(
            "gtstore_errors_total",
            Kind::Counter,
            "ERROR replies this node sent to clients, by the verb of the request and the error code.",
        );
        for v in Verb::ALL {
            for (i, n) in m.errors[v.index()].iter().enumerate() {
                e.sample("gtstore_errors_total", &[("verb", v.name()), ("code", code_word(i))], *n);
            }
        }
        e.family(
            "gtstore_request_duration_seconds",
            Kind::Histogram,
            "Time from a PUT, GET or DEL's arrival to its answer's leaving (after the group commit it waits for), \
             coordinated or forwarded.",
        );
        for v in &Verb::ALL[..TIMED] {
            e.histogram("gtstore_request_duration_seconds", &[("verb", v.name())], &m.latency[v.index()]);
        }
        e.single(
            "gtstore_ops_in_flight",
            Kind::Gauge,
            "Client operations this node coordinates or forwards, waiting for replicas.",
            self.coord.ops.len() as u64,
        );
        self.render_store(&mut e, rx.wall_ms());
        self.render_cluster(&mut e);
        self.render_connections(&mut e, rx);
        if let Some(turns) = rx.loop_turns() {
            e.family(
                "gtstore_loop_turn_duration_seconds",
                Kind::Histogram,
                "Time the event loop spent on each turn (from epoll's wake-up to the next wait).",
            );
            e.histogram("gtstore_loop_turn_duration_seconds", &[], turns);
        }
        e.finish()
    }

    /// The disk's figures, over the sector store and the hint store.
    fn render_store(&self, e: &mut Exposition, now_ms: u64) {
        let (ours, hints) = (self.store.meter(), self.handoff.hints.meter());
        let mut syncs = ours.wal_syncs.borrow().clone();
        syncs.merge(&hints.wal_syncs.borrow());
        let mut batches = ours.batches.borrow().clone();
        batches.merge(&hints.batches.borrow());
        e.family(
            "gtstore_wal_fsync_duration_seconds",
            Kind::Histogram,
            "Duration of each fdatasync of a write-ahead log file (sector store and hint store).",
        );
        e.histogram("gtstore_wal_fsync_duration_seconds", &[], &syncs);
        e.family(
            "gtstore_group_commit_writes",
            Kind::Histogram,
            "Writes (WAL frames) made durable by each group commit.",
        );
        e.histogram("gtstore_group_commit_writes", &[], &batches);
        e.single(
            "gtstore_wal_written_bytes_total",
            Kind::Counter,
            "Bytes written to the write-ahead log files.",
            ours.wal_bytes.get().saturating_add(hints.wal_bytes.get()),
        );
        e.single(
            "gtstore_segment_written_bytes_total",
            Kind::Counter,
            "Bytes written to sector and hint segment files (appends and compaction).",
            ours.segment_bytes.get().saturating_add(hints.segment_bytes.get()),
        );
        let (live, tombstones) = self.store.key_counts();
        let expired = self.store.total_expired_keys(now_ms);
        let help = "Live keys (neither deleted nor expired) in the sectors this node holds.";
        e.single("gtstore_keys", Kind::Gauge, help, live.saturating_sub(expired) as u64);
        e.single(
            "gtstore_expired_keys",
            Kind::Gauge,
            "Keys whose value has expired, read as not found, not yet reclaimed by the reaper.",
            expired as u64,
        );
        e.single(
            "gtstore_tombstones",
            Kind::Gauge,
            "Keys whose newest entry in this node's sectors is a tombstone.",
            tombstones as u64,
        );
        e.single(
            "gtstore_hints_pending",
            Kind::Gauge,
            "Writes held here for other nodes, waiting for delivery (hinted handoff).",
            self.handoff.hints.total_entries() as u64,
        );
    }

    /// Sectors, moves and the table.
    fn render_cluster(&self, e: &mut Exposition) {
        e.single(
            "gtstore_sectors_held",
            Kind::Gauge,
            "Sectors of the newest table's preference lists of this node whose copy here is complete.",
            self.mover.synced.len() as u64,
        );
        e.single(
            "gtstore_sectors_on_disk",
            Kind::Gauge,
            "Sectors with files on this node's disk (empty ones are created a few at a time; sectors being \
             received or handed over count too).",
            self.store.sector_ids().len() as u64,
        );
        e.single(
            "gtstore_sectors_owned",
            Kind::Gauge,
            "Sectors whose owner (first of the preference list) is this node under the current table.",
            self.table.as_ref().map_or(0, |t| t.owned_by(self.cfg.id)) as u64,
        );
        e.single(
            "gtstore_sectors_under_replicated",
            Kind::Gauge,
            "Sectors this node must hold under the newest table and has not received yet.",
            self.missing_sectors() as u64,
        );
        e.single(
            "gtstore_pulls_in_flight",
            Kind::Gauge,
            "Sector pulls running (sectors being received from other nodes).",
            self.mover.pulls.len() as u64,
        );
        e.single(
            "gtstore_pulls_queued",
            Kind::Gauge,
            "Sector pulls waiting for their turn or a retry.",
            (self.mover.pull_queue.len() + self.mover.pull_retry.len()) as u64,
        );
        e.single(
            "gtstore_table_epoch",
            Kind::Gauge,
            "Epoch of the partition table this node routes by (0: none yet).",
            self.table.as_ref().map_or(0, |t| t.epoch),
        );
    }

    /// Open connections by kind.
    fn render_connections(&self, e: &mut Exposition, rx: &impl NodeIo) {
        let m = &self.metrics;
        let peers_in = m.peers_in.len() as u64;
        let peers_out = self.links.peers.values().filter(|&&id| rx.is_open(id)).count() as u64;
        let manager = self.links.manager.is_some_and(|id| rx.is_open(id));
        e.family(
            "gtstore_connections",
            Kind::Gauge,
            "Open connections by kind: clients of the native port, peers (either way), the manager, RESP2 clients, \
             metrics scrapes.",
        );
        for (kind, n) in [
            ("client", m.accepted[0].saturating_sub(peers_in)),
            ("peer", peers_in + peers_out),
            ("manager", u64::from(manager)),
            ("resp", m.accepted[1]),
            ("metrics", m.accepted[2]),
        ] {
            e.sample("gtstore_connections", &[("kind", kind)], n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_error_code_has_its_own_series_and_unknown_ones_share_one() {
        for (i, c) in ErrorCode::KNOWN.iter().enumerate() {
            assert_eq!(code_index(c), i);
            assert_eq!(code_word(i), c.word());
        }
        assert_eq!(code_index(&ErrorCode::Other("NEWER".into())), CODES - 1);
        assert_eq!(code_word(CODES - 1), "OTHER");
    }

    #[test]
    fn answers_are_timed_when_they_leave() {
        let mut m = NodeMetrics::default();
        let t = Instant::now();
        let conn = ConnId::new(1, 1);
        m.received(conn, &Body::Put { key: vec![], value: vec![], expiry: Default::default() }, || t);
        let (verb, at) = m.take_current(t + Duration::from_secs(9));
        assert_eq!((verb, at), (Some(Verb::Put), t), "an operation takes the request over");
        m.answered(verb, at, &Body::Ok, Some(t + Duration::from_millis(3)));
        m.received(conn, &Body::Get { key: vec![] }, || t);
        m.answered_now(&Body::error(ErrorCode::NoTable, "none"));
        m.handled();
        m.sent(t + Duration::from_millis(20));
        m.received(conn, &Body::StatsReq, || t);
        m.answered_now(&Body::Ok);
        m.sent(t + Duration::from_secs(1));
        assert_eq!(m.requests, [1, 1, 0, 0, 1]);
        assert_eq!(m.errors[Verb::Get.index()][code_index(&ErrorCode::NoTable)], 1);
        assert_eq!((m.latency[0].count(), m.latency[0].sum()), (1, 3_000));
        assert_eq!((m.latency[1].count(), m.latency[1].sum()), (1, 20_000), "timed after the turn's commit");
        assert!(m.parked.is_empty());
        m.received(conn, &Body::Fetch { key: vec![] }, || panic!("no clock for a peer's verb"));
        assert!(m.peers_in.contains(&conn) && m.current.is_none(), "a FETCH shows a peer");
        m.closed(conn, Link::Inbound);
        assert!(m.peers_in.is_empty());
    }
}
