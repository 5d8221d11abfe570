//! One connection's state machine: socket, input and output buffers, state.
//!
//! Input is read in large chunks into `inbuf`; complete messages are cut
//! from the front with the codec and the consumed prefix is drained once per
//! read. Output is appended to `outbuf` and written from `out_pos`, keeping
//! partial writes. The event loop owns every `Conn` in a slab.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::codec::{Limits, Message};
use super::error::{Error, Result};
use super::frame::{self, Framing};

/// Bytes asked for per `read` call.
pub const READ_CHUNK: usize = 64 * 1024;
/// Written output beyond this is dropped from the front of the buffer
/// while more remains queued.
const COMPACT_OUTPUT: usize = 1 << 20;
/// Bytes written per connection per loop turn at most, for fairness.
pub const MAX_WRITE_PER_TURN: usize = 1024 * 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// An outbound connect has been started and has not completed.
    Connecting,
    /// Reading requests and writing replies.
    Open,
    /// Send what is queued (an error reply), then close; read nothing more.
    CloseAfterFlush,
    /// Flagged for removal at the end of this loop turn.
    Closed,
}

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Bytes arrived (or none yet); the connection stays.
    Open,
    /// The peer closed cleanly between messages.
    Eof,
}

/// One connection and its buffers; `D` is the role's data about it.
#[derive(Debug)]
pub struct Conn<D> {
    /// The nonblocking socket.
    pub sock: TcpStream,
    /// The peer's address, for logs.
    pub peer: Option<SocketAddr>,
    /// Where the connection is in its life.
    pub state: ConnState,
    /// The role's data (who is on the other end, requests in flight).
    pub data: D,
    inbuf: Vec<u8>,
    in_pos: usize,
    outbuf: Vec<u8>,
    out_pos: usize,
    /// The interest registered with epoll: (readable, writable).
    pub registered: (bool, bool),
    /// On the loop's list of connections to flush this turn.
    pub queued: bool,
    /// Output before this offset may be written before the turn's fsync.
    early_end: usize,
    /// Since when the input has held the start of a header line without
    /// its end (see [`Conn::header_started`]).
    header_since: Option<std::time::Instant>,
    /// Too much output is queued: the connection is not read (see
    /// `Reactor::max_output`) until it drains below half the cap.
    pub throttled: bool,
    /// While throttled: when output last made progress.
    pub progress_at: Option<std::time::Instant>,
    /// When bytes were last read from or written to the socket.
    pub active_at: std::time::Instant,
    /// Accepted past `max_conns`: closed at this time unless it has shown
    /// itself a peer (see `Reactor::reserved_conns`).
    pub probation_until: Option<std::time::Instant>,
    /// This side connected: what it reads are replies to its own requests,
    /// so it is never throttled (the role bounds what it asks instead).
    pub outbound: bool,
    /// The protocol it speaks (its listener's, or its role's choice).
    pub framing: Framing,
}

impl<D> Conn<D> {
    /// Wraps a nonblocking socket.
    pub fn new(sock: TcpStream, state: ConnState, data: D) -> Conn<D> {
        let peer = sock.peer_addr().ok();
        Conn {
            sock,
            peer,
            state,
            data,
            inbuf: Vec::new(),
            in_pos: 0,
            outbuf: Vec::new(),
            out_pos: 0,
            registered: (false, false),
            queued: false,
            early_end: 0,
            header_since: None,
            throttled: false,
            progress_at: None,
            outbound: false,
            probation_until: None,
            active_at: std::time::Instant::now(),
            framing: Framing::Native,
        }
    }

    /// The interest this connection needs now: readable unless it is only
    /// flushing; writable while output is pending or a connect is in flight.
    pub fn wanted_interest(&self) -> (bool, bool) {
        match self.state {
            ConnState::Connecting => (false, true),
            ConnState::Open => (!self.throttled, self.has_output()),
            ConnState::CloseAfterFlush => (false, self.has_output()),
            ConnState::Closed => (false, false),
        }
    }

    /// True while queued output has not all been written.
    pub fn has_output(&self) -> bool {
        self.out_pos < self.outbuf.len()
    }

    /// Bytes queued and not yet written.
    pub fn pending_output(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    /// Sets [`Conn::throttled`] from the output queued: on past `cap`, off
    /// below half of it. Returns true if it just went off.
    pub fn update_throttle(&mut self, cap: usize) -> bool {
        if self.outbound {
            return false;
        }
        let pending = self.pending_output();
        if !self.throttled && pending > cap {
            self.throttled = true;
            self.progress_at = Some(std::time::Instant::now());
        } else if self.throttled && pending < cap / 2 {
            self.throttled = false;
            self.progress_at = None;
            return true;
        }
        false
    }

    /// Queues `msg` for sending.
    pub fn queue(&mut self, msg: &Message) {
        frame::encode(self.framing, msg, &mut self.outbuf);
    }

    /// Queues raw, already encoded bytes.
    pub fn queue_bytes(&mut self, bytes: &[u8]) {
        self.outbuf.extend_from_slice(bytes);
    }

    /// Reads what the socket has, up to a few chunks, through the loop's
    /// shared `scratch` buffer (so idle connections hold no buffer);
    /// `max_inbuf` caps the unparsed input a peer may leave buffered.
    pub fn read_some(&mut self, scratch: &mut [u8], max_inbuf: usize) -> Result<ReadOutcome> {
        for _ in 0..4 {
            if self.inbuf.len() - self.in_pos > max_inbuf {
                return Err(Error::BufferLimit);
            }
            match self.sock.read(scratch) {
                Ok(0) => {
                    return if self.in_pos == self.inbuf.len() { Ok(ReadOutcome::Eof) } else { Err(Error::PeerReset) };
                }
                Ok(n) => {
                    self.active_at = std::time::Instant::now();
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    if n < scratch.len() {
                        return Ok(ReadOutcome::Open);
                    }
                }
                Err(e) => {
                    return match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(ReadOutcome::Open),
                        _ => Err(Error::Io(e)),
                    };
                }
            }
        }
        Ok(ReadOutcome::Open)
    }

    /// Cuts the next complete message from the input, if there is one.
    pub fn next_message(&mut self, limits: &Limits) -> Result<Option<Message>> {
        match frame::decode(self.framing, &self.inbuf[self.in_pos..], limits)? {
            None => Ok(None),
            Some((msg, len)) => {
                self.in_pos += len;
                Ok(Some(msg))
            }
        }
    }

    /// Since when the unconsumed input has been a header line without its
    /// newline (a slow or stuck sender: slowloris), if it is one; updated
    /// after each read with `now`. A body being received is not counted.
    pub fn header_started(&mut self, now: std::time::Instant) -> Option<std::time::Instant> {
        let rest = &self.inbuf[self.in_pos..];
        self.header_since = match rest.is_empty() || rest.contains(&b'\n') {
            true => None,
            false => Some(self.header_since.unwrap_or(now)),
        };
        self.header_since
    }

    /// When the current partial header line began, if there is one.
    pub fn header_since(&self) -> Option<std::time::Instant> {
        self.header_since
    }

    /// Drops the consumed input prefix, once per read.
    pub fn compact_input(&mut self) {
        if self.in_pos == self.inbuf.len() {
            self.inbuf = Vec::new();
            self.in_pos = 0;
        } else if self.in_pos > 0 {
            self.inbuf.drain(..self.in_pos);
            self.in_pos = 0;
        }
    }

    /// Writes queued output until it is drained, the socket is full, or the
    /// per-turn budget is spent.
    pub fn write_some(&mut self) -> Result<()> {
        self.write_upto(self.outbuf.len())
    }

    /// Writes only the output queued with [`Conn::queue_early`] (nothing
    /// queued after a plain [`Conn::queue`] of the same turn).
    pub fn write_early(&mut self) -> Result<()> {
        self.write_upto(self.early_end)
    }

    /// Queues `msg` as output that may be written before the turn's fsync,
    /// if everything queued before it may be too; returns whether it may.
    pub fn queue_early(&mut self, msg: &Message) -> bool {
        let early = self.early_end == self.outbuf.len();
        frame::encode(self.framing, msg, &mut self.outbuf);
        if early {
            self.early_end = self.outbuf.len();
        }
        early
    }

    fn write_upto(&mut self, limit: usize) -> Result<()> {
        let mut budget = MAX_WRITE_PER_TURN;
        let start = self.out_pos;
        let limit = limit.min(self.outbuf.len());
        while self.out_pos < limit && budget > 0 {
            let end = limit.min(self.out_pos + budget);
            match self.sock.write(&self.outbuf[self.out_pos..end]) {
                Ok(0) => return Err(Error::PeerReset),
                Ok(n) => {
                    self.out_pos += n;
                    budget -= n.min(budget);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Io(e)),
            }
        }
        if self.out_pos > start {
            self.active_at = std::time::Instant::now();
            if self.throttled {
                self.progress_at = Some(self.active_at);
            }
        }
        if !self.has_output() {
            self.outbuf.clear();
            self.out_pos = 0;
            self.early_end = 0;
            if self.outbuf.capacity() > 4 * READ_CHUNK {
                self.outbuf.shrink_to(READ_CHUNK);
            }
        } else if self.out_pos >= COMPACT_OUTPUT && self.out_pos * 2 >= self.outbuf.len() {
            // A reader that keeps up only partly never empties the buffer:
            // the written prefix is dropped so it does not grow for ever.
            self.outbuf.drain(..self.out_pos);
            self.early_end = self.early_end.saturating_sub(self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::codec::{Body, Header};
    use std::net::TcpListener;

    fn pair() -> (Conn<()>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        (Conn::new(server, ConnState::Open, ()), client)
    }

    fn msg(req: u64) -> Message {
        Message { header: Header { req, ..Header::default() }, body: Body::Ok }
    }

    fn received(mut peer: &TcpStream) -> Vec<u64> {
        let mut buf = vec![0u8; 4096];
        let n = peer.read(&mut buf).unwrap_or(0);
        let mut reqs = Vec::new();
        let mut at = 0;
        while let Ok(Some((msg, len))) = crate::net::codec::decode(&buf[at..n], &Limits::default()) {
            reqs.push(msg.header.req);
            at += len;
        }
        reqs
    }

    #[test]
    fn early_output_never_overtakes_or_drags_plain_output() {
        let (mut c, peer) = pair();
        assert!(c.queue_early(&msg(1)));
        c.queue(&msg(2));
        assert!(!c.queue_early(&msg(3)), "behind plain output, early output waits");
        c.write_early().unwrap();
        assert_eq!(received(&peer), vec![1], "only what was queued early before any plain output");
        c.write_some().unwrap();
        assert_eq!(received(&peer), vec![2, 3]);
        assert!(!c.has_output());
        assert!(c.queue_early(&msg(4)), "an empty buffer takes early output again");
    }
}
