//! Serving a PULL in budgeted steps.
//!
//! `handle_pull` (in `sync`) registers the puller for relays and, unless
//! the digests match, hands the stream to [`Streams`]: the sector's keys are
//! listed at once (the index only, no values), and CHUNKs are then built
//! on demand, a few per loop turn (`STREAM_BYTES` and `STREAM_TIME`
//! between all the streams), reading each key's current entry when its
//! chunk is built. A stream whose connection still has `MAX_BACKLOG` bytes
//! unwritten waits (the loop pauses `STREAM_PAUSE`), so a slow puller
//! holds neither the loop nor unbounded memory. A key written after the
//! PULL is relayed to the puller (see `Mover::relays`); whether its chunk
//! then carries the older or the newer version, last-writer-wins merges
//! them. The puller's side (`on_chunk`) is unchanged: CHUNKs with the
//! request's id, the last one flagged.

use std::collections::VecDeque;
use std::time::Duration;

use log::error;

use super::{Node, NodeIo, Timer};
use crate::net::codec::{Body, Entry, ErrorCode, Header, Message};
use crate::net::ConnId;

/// Payload bytes per CHUNK, roughly.
const CHUNK_BYTES: usize = 256 * 1024;
/// Payload bytes built per loop turn over all streams.
const STREAM_BYTES: usize = 2 * CHUNK_BYTES;
/// Loop time spent building chunks per turn (checked between entries).
const STREAM_TIME: Duration = Duration::from_millis(4);
/// Entries built between two looks at the clock.
const CLOCK_EVERY: usize = 64;
/// A stream waits while its connection has this much output unwritten.
const MAX_BACKLOG: usize = 4 * CHUNK_BYTES;
/// The pause before trying again when every stream waits for its puller.
const STREAM_PAUSE: Duration = Duration::from_millis(2);

/// The streams being served, in turn.
#[derive(Debug, Default)]
pub(super) struct Streams {
    active: VecDeque<Stream>,
    /// A `Timer::Stream` is armed.
    armed: bool,
}

/// One PULL being answered.
#[derive(Debug)]
struct Stream {
    conn: ConnId,
    /// The PULL's header with this node's id: every CHUNK carries it.
    header: Header,
    sector: u32,
    /// The sector's keys when the PULL arrived, sorted, and the next one to send.
    keys: Vec<Vec<u8>>,
    next: usize,
    /// Whether the sector was on disk when the PULL arrived.
    held: bool,
}

impl Node {
    /// Answers a PULL of `sector` on `conn` with its entries, in CHUNKs
    /// built over the next loop turns.
    pub(super) fn start_stream(&mut self, rx: &mut impl NodeIo, conn: ConnId, header: Header, sector: u32) {
        let held = self.store.has_sector(sector);
        let keys = self.store.keys_with_versions(sector).into_iter().map(|(k, _)| k).collect();
        self.streams.active.push_back(Stream { conn, header, sector, keys, next: 0, held });
        self.arm_streams(rx, Duration::ZERO);
    }

    fn arm_streams(&mut self, rx: &mut impl NodeIo, delay: Duration) {
        if !self.streams.armed && !self.streams.active.is_empty() {
            self.streams.armed = true;
            rx.add_timer(delay, Timer::Stream);
        }
    }

    /// The stream timer: a chunk for each stream in turn, within the
    /// turn's budget.
    pub(super) fn stream_some(&mut self, rx: &mut impl NodeIo) {
        self.streams.armed = false;
        let started = rx.now();
        let (mut bytes, mut sent) = (0, false);
        for _ in 0..self.streams.active.len() {
            if bytes >= STREAM_BYTES || rx.now().saturating_duration_since(started) >= STREAM_TIME {
                break;
            }
            let Some(mut st) = self.streams.active.pop_front() else { break };
            if !rx.is_open(st.conn) {
                continue;
            }
            if rx.pending_output(st.conn) >= MAX_BACKLOG {
                self.streams.active.push_back(st);
                continue;
            }
            let deadline = started + STREAM_TIME;
            match self.next_chunk(rx, &mut st, deadline) {
                Ok((entries, size, last)) => {
                    bytes += size;
                    sent = true;
                    let (sector, mut header) = (st.sector, st.header);
                    // Valid for TRANSFER_MS from now (see `reap`).
                    header.deadline = rx.wall_ms() + super::reap::TRANSFER_MS;
                    rx.send(st.conn, &Message { header, body: Body::Chunk { sector, entries, last } });
                    if !last {
                        self.streams.active.push_back(st);
                    }
                }
                Err(reason) => {
                    error!("cannot read sector {} for node {}: {reason}", st.sector, st.header.node);
                    let body = Body::error(ErrorCode::Storage, format!("cannot read sector: {reason}"));
                    rx.send(st.conn, &Message { header: st.header, body });
                }
            }
        }
        // Every stream waiting for its puller: look again a little later.
        let delay = if sent { Duration::ZERO } else { STREAM_PAUSE };
        self.arm_streams(rx, delay);
    }

    /// The next CHUNK's entries of `st`, their size, and whether it is the
    /// last; cut at `CHUNK_BYTES` (before an entry that would take it past,
    /// so a chunk is never larger than one maximal record plus framing) or
    /// once `deadline` has passed.
    fn next_chunk(
        &self,
        rx: &impl NodeIo,
        st: &mut Stream,
        deadline: std::time::Instant,
    ) -> Result<(Vec<Entry>, usize, bool), String> {
        if st.held && !self.store.has_sector(st.sector) {
            return Err("the sector was dropped while it was streamed".to_string());
        }
        let (mut entries, mut bytes) = (Vec::new(), 0);
        while let Some(key) = st.keys.get(st.next) {
            if entries.len() % CLOCK_EVERY == CLOCK_EVERY - 1 && rx.now() >= deadline {
                break;
            }
            let item = match self.store.get(st.sector, key) {
                Ok(Some(item)) => item,
                Ok(None) => {
                    st.next += 1;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            let size = key.len() + item.value.as_ref().map_or(0, Vec::len) + 32;
            if bytes + size > CHUNK_BYTES && !entries.is_empty() {
                break;
            }
            bytes += size;
            entries.push(super::entry_of(key.clone(), item));
            st.next += 1;
        }
        let last = st.next >= st.keys.len();
        if last {
            st.keys = Vec::new();
        }
        Ok((entries, bytes, last))
    }
}
