//! The gate in front of a role: runs the key exchange of [`super::auth`]
//! on every connection and lets through only what each peer may send.
//!
//! [`Gate`] wraps a role's [`Handler`] and is itself one, so the epoll
//! `Reactor` and the simulator drive it alike: authentication runs in every
//! simulated seed exactly as on real sockets. The role sees its own
//! connection data and an [`Io`] ([`GateIo`]) as before; the gate keeps
//! each connection's [`AuthState`] beside that data ([`Guarded`]).
//!
//! - On a connection the process opens, with an outbound key, the gate
//!   sends AUTH at once and holds what the role sends until the peer has
//!   proved the key (CHALLENGE); then it sends PROVE and the held messages,
//!   in order. A peer that cannot prove the key is closed: the role sees
//!   the connection fail.
//! - On an accepted connection it answers AUTH with CHALLENGE, checks PROVE
//!   (a bad one is answered ERROR AUTH and the connection closes), and
//!   passes a message to the role only if [`Keys::allows`] it; anything
//!   else is answered ERROR AUTH and changes nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::warn;
use nix::sys::signal::Signal;

use super::auth::VerbClass;
use super::auth::{KeyKind, Keys, Nonce, Proof, NONCE_LEN};
use super::codec::{self, error_reply, Body, ErrorCode, Header, Message};
use super::error::Result;
use super::event_loop::{ConnId, Handler, Standing};
use super::frame::Framing;
use super::io::Io;
use super::timer::TimerId;

/// The request id of the exchange's messages, which no role uses.
pub const HANDSHAKE_REQ: u64 = u64::MAX;

/// A role behind the key checks.
#[derive(Debug)]
pub struct Gate<H> {
    /// The role.
    pub role: H,
    keys: Keys,
}

/// The gate's data about a connection around the role's.
#[derive(Debug)]
pub struct Guarded<D> {
    /// The role's data.
    pub data: D,
    auth: AuthState,
    /// What the verbs let through so far show the peer to be.
    seen: Standing,
}

/// Where a connection stands in the exchange.
#[derive(Debug)]
enum AuthState {
    /// Accepted; nothing proved yet.
    Anonymous,
    /// Accepted; CHALLENGE sent, PROVE awaited.
    Challenged { kind: KeyKind, theirs: Nonce, ours: Nonce },
    /// Opened here; AUTH sent, CHALLENGE awaited. The role's messages wait.
    Asking { ours: Nonce, held: Vec<(Message, Send)>, held_bytes: usize },
    /// The key of `kind` is proved (both ways on a connection opened here).
    Proved(KeyKind),
    /// Opened here with no key to prove.
    Plain,
}

/// How a held message is to be sent once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Send {
    Normal,
    Early,
    AndClose,
}

impl AuthState {
    /// What the peer has proved, for [`Keys::allows`]. A connection this
    /// process opened carries replies and pushes from a peer it chose (and
    /// that proved the key if it had one): everything is let through.
    fn proved(&self, keys: &Keys) -> Option<KeyKind> {
        match self {
            AuthState::Anonymous | AuthState::Challenged { .. } => None,
            AuthState::Proved(kind) => Some(*kind),
            AuthState::Asking { .. } | AuthState::Plain => keys.cluster.as_ref().map(|_| KeyKind::Cluster),
        }
    }
}

impl<H: Handler> Gate<H> {
    /// `role` behind `keys`.
    pub fn new(role: H, keys: Keys) -> Gate<H> {
        Gate { role, keys }
    }

    /// The keys in force.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs `f` on the role with the gate's [`Io`] over `io`: for work a
    /// driver starts outside the callbacks (a role's `start`).
    pub fn drive<X, R>(&mut self, io: &mut X, f: impl FnOnce(&mut H, &mut GateIo<'_, X>) -> R) -> R
    where
        X: Io<Data = Guarded<H::Data>, Timer = H::Timer>,
    {
        f(&mut self.role, &mut GateIo { io, keys: &self.keys })
    }

    /// An accepted peer asks to prove `kind`: answer with our nonce and proof.
    fn challenge<X: Io<Data = Guarded<H::Data>>>(
        &mut self,
        io: &mut X,
        id: ConnId,
        req: u64,
        kind: KeyKind,
        theirs: Nonce,
    ) {
        let Some(key) = self.keys.accepted(kind) else {
            let reason = format!("this server has no {} key", kind.name());
            io.send(id, &error_reply(req, ErrorCode::Auth, &reason));
            return;
        };
        let mut ours = [0u8; NONCE_LEN];
        io.secure_random(&mut ours);
        let proof = key.responder_proof(kind, &theirs, &ours);
        if let Some(g) = io.data_mut(id) {
            g.auth = AuthState::Challenged { kind, theirs, ours };
        }
        io.send_early(
            id,
            &Message { header: Header { req, ..Header::default() }, body: Body::Challenge { nonce: ours, proof } },
        );
    }

    /// An accepted peer's proof: it holds the key, or the connection ends.
    fn check_proof<X: Io<Data = Guarded<H::Data>>>(&mut self, io: &mut X, id: ConnId, req: u64, proof: Proof) {
        let Some(g) = io.data_mut(id) else { return };
        let AuthState::Challenged { kind, theirs, ours } = g.auth else { return };
        let good = self.keys.accepted(kind).is_some_and(|k| k.check_initiator(kind, &theirs, &ours, &proof));
        if good {
            g.auth = AuthState::Proved(kind);
        } else {
            g.auth = AuthState::Anonymous;
            warn!("a peer failed to prove the {} key; closing its connection", kind.name());
            io.send_and_close(id, &error_reply(req, ErrorCode::Auth, &format!("wrong {} key", kind.name())));
        }
    }

    /// The peer of a connection opened here proved the key: prove ours and
    /// send what the role queued meanwhile.
    fn answer_challenge<X: Io<Data = Guarded<H::Data>>>(
        &mut self,
        io: &mut X,
        id: ConnId,
        theirs: Nonce,
        proof: Proof,
    ) {
        let Some((kind, key)) = self.keys.outbound.as_ref() else { return };
        let Some(g) = io.data_mut(id) else { return };
        let AuthState::Asking { ours, .. } = g.auth else { return };
        if !key.check_responder(*kind, &ours, &theirs, &proof) {
            warn!("a peer failed to prove the {} key; closing the connection to it", kind.name());
            io.close(id);
            return;
        }
        let AuthState::Asking { held, .. } = std::mem::replace(&mut g.auth, AuthState::Proved(*kind)) else {
            unreachable!("checked above")
        };
        let prove = Body::Prove { proof: key.initiator_proof(*kind, &ours, &theirs) };
        io.send_early(id, &Message { header: handshake_header(), body: prove });
        for (msg, how) in held {
            match how {
                Send::Normal => io.send(id, &msg),
                Send::Early => io.send_early(id, &msg),
                Send::AndClose => {
                    io.send_and_close(id, &msg);
                    true
                }
            };
        }
    }
}

fn handshake_header() -> Header {
    Header { req: HANDSHAKE_REQ, ..Header::default() }
}

impl<H: Handler> Handler for Gate<H> {
    type Data = Guarded<H::Data>;
    type Timer = H::Timer;

    fn accepted(&mut self, peer: Option<SocketAddr>, framing: Framing) -> Self::Data {
        Guarded { data: self.role.accepted(peer, framing), auth: AuthState::Anonymous, seen: Standing::Unknown }
    }

    fn standing(g: &Self::Data) -> Standing {
        match g.auth {
            AuthState::Proved(KeyKind::Cluster) => Standing::Peer,
            AuthState::Proved(KeyKind::Client) => Standing::Client,
            _ => g.seen,
        }
    }

    fn on_message<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X, id: ConnId, msg: Message) {
        let Message { header, body } = msg;
        let Some(g) = io.data(id) else { return };
        let asking = matches!(g.auth, AuthState::Asking { .. });
        let proved = g.auth.proved(&self.keys);
        match body {
            Body::Challenge { nonce, proof } if asking => self.answer_challenge(io, id, nonce, proof),
            Body::Error { reason, .. } if header.req == HANDSHAKE_REQ || asking => {
                warn!("a peer refused this process's key: {reason}");
                io.close(id);
            }
            _ if asking => {
                warn!("a peer sent {} before proving its key; closing", body.verb());
                io.close(id);
            }
            Body::Auth { kind, nonce } if matches!(g.auth, AuthState::Anonymous) => {
                self.challenge(io, id, header.req, kind, nonce)
            }
            Body::Prove { proof } if matches!(g.auth, AuthState::Challenged { .. }) => {
                self.check_proof(io, id, header.req, proof)
            }
            Body::Auth { .. } | Body::Prove { .. } | Body::Challenge { .. } => {
                let reason = format!("{} out of turn", body.verb());
                io.send(id, &error_reply(header.req, ErrorCode::Auth, &reason));
            }
            body if self.keys.allows(proved, &body) => {
                if let Some(g) = io.data_mut(id).filter(|g| g.seen != Standing::Peer) {
                    // Without a cluster key a daemon shows itself by its verbs.
                    g.seen = match VerbClass::of(&body) {
                        VerbClass::Internal => Standing::Peer,
                        _ => Standing::Client,
                    };
                }
                let mut gio = GateIo { io, keys: &self.keys };
                self.role.on_message(&mut gio, id, Message { header, body });
            }
            body => {
                let needs = match self.keys.client {
                    Some(_) if VerbClass::of(&body) == VerbClass::Client => "the client key (gtstore --key-file)",
                    _ => "the cluster key",
                };
                let reason = format!("{} needs {needs}", body.verb());
                io.send(id, &error_reply(header.req, ErrorCode::Auth, &reason));
            }
        }
    }

    fn on_timer<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X, timer: Self::Timer) {
        self.role.on_timer(&mut GateIo { io, keys: &self.keys }, timer)
    }

    fn on_signal<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X, sig: Signal) {
        self.role.on_signal(&mut GateIo { io, keys: &self.keys }, sig)
    }

    fn on_connected<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X, id: ConnId) {
        self.role.on_connected(&mut GateIo { io, keys: &self.keys }, id)
    }

    fn on_closed<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X, id: ConnId, data: Self::Data) {
        self.role.on_closed(&mut GateIo { io, keys: &self.keys }, id, data.data)
    }

    fn before_early_flush<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X) {
        self.role.before_early_flush(&mut GateIo { io, keys: &self.keys })
    }

    fn before_sleep<X: Io<Data = Self::Data, Timer = Self::Timer>>(&mut self, io: &mut X) {
        self.role.before_sleep(&mut GateIo { io, keys: &self.keys })
    }
}

/// The [`Io`] a role behind a [`Gate`] runs on: the driver's, with the
/// gate's data unwrapped and the output of unproved connections held.
pub struct GateIo<'a, X> {
    io: &'a mut X,
    keys: &'a Keys,
}

impl<X, D> GateIo<'_, X>
where
    X: Io<Data = Guarded<D>>,
{
    /// Queues `msg`, or holds it while the connection's key exchange runs.
    fn queue(&mut self, id: ConnId, msg: &Message, how: Send) -> bool {
        match self.io.data_mut(id) {
            None => return false,
            Some(Guarded { auth: AuthState::Asking { held, held_bytes, .. }, .. }) => {
                *held_bytes += codec::encoded_len(msg);
                held.push((msg.clone(), how));
                return true;
            }
            Some(_) => {}
        }
        match how {
            Send::Normal => self.io.send(id, msg),
            Send::Early => self.io.send_early(id, msg),
            Send::AndClose => {
                self.io.send_and_close(id, msg);
                true
            }
        }
    }
}

impl<X, D, T> Io for GateIo<'_, X>
where
    X: Io<Data = Guarded<D>, Timer = T>,
{
    type Data = D;
    type Timer = T;

    fn send(&mut self, id: ConnId, msg: &Message) -> bool {
        self.queue(id, msg, Send::Normal)
    }

    fn send_early(&mut self, id: ConnId, msg: &Message) -> bool {
        self.queue(id, msg, Send::Early)
    }

    fn send_and_close(&mut self, id: ConnId, msg: &Message) {
        self.queue(id, msg, Send::AndClose);
    }

    fn connect(&mut self, addr: SocketAddr, data: D) -> Result<ConnId> {
        let Some((kind, _)) = self.keys.outbound.as_ref() else {
            return self.io.connect(addr, Guarded { data, auth: AuthState::Plain, seen: Standing::Unknown });
        };
        let mut ours = [0u8; NONCE_LEN];
        self.io.secure_random(&mut ours);
        let auth = AuthState::Asking { ours, held: Vec::new(), held_bytes: 0 };
        let id = self.io.connect(addr, Guarded { data, auth, seen: Standing::Unknown })?;
        // Queued while the connect is in flight; it leaves first.
        self.io.send_early(id, &Message { header: handshake_header(), body: Body::Auth { kind: *kind, nonce: ours } });
        Ok(id)
    }

    fn connect_framed(&mut self, addr: SocketAddr, data: D, framing: Framing) -> Result<ConnId> {
        if framing == Framing::Native {
            return self.connect(addr, data);
        }
        // RESP and HTTP have no key exchange of ours.
        self.io.connect_framed(addr, Guarded { data, auth: AuthState::Plain, seen: Standing::Unknown }, framing)
    }

    fn close(&mut self, id: ConnId) {
        self.io.close(id)
    }

    fn data(&self, id: ConnId) -> Option<&D> {
        self.io.data(id).map(|g| &g.data)
    }

    fn data_mut(&mut self, id: ConnId) -> Option<&mut D> {
        self.io.data_mut(id).map(|g| &mut g.data)
    }

    fn pending_output(&self, id: ConnId) -> usize {
        let held = match self.io.data(id) {
            Some(Guarded { auth: AuthState::Asking { held_bytes, .. }, .. }) => *held_bytes,
            _ => 0,
        };
        self.io.pending_output(id) + held
    }

    fn loop_turns(&self) -> Option<&crate::metrics::Histogram> {
        self.io.loop_turns()
    }

    fn add_timer(&mut self, delay: Duration, timer: T) -> TimerId {
        self.io.add_timer(delay, timer)
    }

    fn cancel_timer(&mut self, id: TimerId) {
        self.io.cancel_timer(id)
    }

    fn now(&self) -> Instant {
        self.io.now()
    }

    fn wall_ms(&self) -> u64 {
        self.io.wall_ms()
    }

    fn random(&mut self) -> u64 {
        self.io.random()
    }

    fn secure_random(&mut self, buf: &mut [u8]) {
        self.io.secure_random(buf)
    }

    fn stop(&mut self) {
        self.io.stop()
    }

    fn abort(&mut self, code: i32, why: &str) {
        self.io.abort(code, why)
    }
}
