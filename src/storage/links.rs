//! The node's connections to the manager and to its peers, with the
//! reconnect backoff of peers whose connection failed.

use std::time::{Duration, Instant};

use crate::idmap::IdMap;
use crate::net::ConnId;

/// The first wait before reconnecting to a peer whose connection failed.
const PEER_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait before reconnecting to a peer.
const PEER_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A peer not to reconnect to before `until`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    until: Instant,
    /// The wait that set `until`; the next failure doubles it.
    delay: Duration,
}

/// Connections to the manager and the peers.
#[derive(Debug)]
pub(super) struct Links {
    /// The address this node registers with.
    pub(super) advertise: String,
    /// The connection to the manager, while there is one.
    pub(super) manager: Option<ConnId>,
    /// The persistent connection to each peer.
    pub(super) peers: IdMap<u32, ConnId>,
    /// Peers whose connection failed, not to be retried yet.
    pub(super) backoff: IdMap<u32, Backoff>,
}

impl Links {
    /// No connections yet; the node registers as `advertise`.
    pub(super) fn new(advertise: String) -> Links {
        Links { advertise, manager: None, peers: IdMap::default(), backoff: IdMap::default() }
    }

    /// True while a reconnect to `node` must wait.
    pub(super) fn backing_off(&self, node: u32, now: Instant) -> bool {
        self.backoff.get(&node).is_some_and(|b| b.until > now)
    }

    /// The connection to `node` failed or closed: wait 50 ms before the
    /// next connect, doubling to 2 s while it keeps failing.
    pub(super) fn failed(&mut self, node: u32, conn: ConnId, now: Instant) {
        if self.peers.get(&node) == Some(&conn) {
            self.peers.remove(&node);
        }
        let delay = self.backoff.get(&node).map_or(PEER_BACKOFF_MIN, |b| (b.delay * 2).min(PEER_BACKOFF_MAX));
        self.backoff.insert(node, Backoff { until: now + delay, delay });
    }

    /// The connection to `node` is up: no more backoff.
    pub(super) fn connected(&mut self, node: u32) {
        self.backoff.remove(&node);
    }
}
