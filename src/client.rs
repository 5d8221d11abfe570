//! The client library: `connect`, `put`, `get`, `delete`, `finalize`.
//!
//! A [`Client`] says `HELLO` to the manager, which gives it a client id, the
//! partition table and a round-robin contact node. If the manager does not
//! answer, the client says `HELLO` to the storage nodes of
//! [`Config::nodes`] in turn: any node answers with its cached table (and no
//! client id; the client then picks its own, see [`local_client_id`]). The
//! table is fetched again the same way, the nodes of the cached table asked
//! as well, so a client keeps working while the manager is down. Each request then goes
//! straight to its key's coordinator (the first live node of the key's
//! preference list) over a cached blocking connection. A refused connection
//! or a per-attempt timeout makes the client refresh the table and try the
//! next replica; an ERROR reply is handled as [`retry_policy`] says for its
//! code. Retries go on until the total deadline passes; then the request
//! fails with [`Error::Unavailable`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::hlc::Version;
use crate::net::auth::{self, Key, KeyKind, NONCE_LEN};
pub use crate::net::codec::Expiry;
use crate::net::codec::{self, Body, ErrorCode, Header, Limits, Message, Stats};
use crate::net::gate::HANDSHAKE_REQ;
use crate::table::{NodeState, Table};

/// The pause after every candidate of a key was tried once.
pub const ROUND_PAUSE: Duration = Duration::from_millis(50);

/// Client settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The manager, `HOST:PORT`.
    pub manager: String,
    /// Storage nodes, `HOST:PORT`, asked in turn for the table when the
    /// manager does not answer (after the nodes of the cached table, if any).
    pub nodes: Vec<String>,
    /// How long one attempt may take.
    pub attempt_timeout: Duration,
    /// How long a request may take over all its retries.
    pub deadline: Duration,
    /// The client key, for nodes started with `--client-key`: proved on
    /// every connection to a node (`--key-file`, `GTSTORE_KEY_FILE`).
    pub key: Option<Key>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            manager: crate::cli::DEFAULT_MANAGER.to_string(),
            nodes: Vec::new(),
            attempt_timeout: Duration::from_millis(300),
            deadline: Duration::from_secs(5),
            key: None,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The key has no live value (the coordinator is given).
    NotFound { node: u32 },
    /// No node or manager answered within the deadline.
    Unavailable(String),
    /// The request itself was refused (for example, a value over the limit),
    /// or the reply made no sense for the request (code `MALFORMED`).
    Refused {
        /// The ERROR's code, which [`retry_policy`] says not to retry.
        code: ErrorCode,
        /// The ERROR's reason, for people.
        reason: String,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound { .. } => write!(f, "not found"),
            Error::Unavailable(why) => write!(f, "{why}"),
            Error::Refused { reason, .. } => write!(f, "refused: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// A `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What one node holds locally for a key (`gtstore inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Its version.
    pub version: Version,
    /// When the value expires, wall-clock ms since the epoch; 0 = never.
    /// The node answers an expired copy as it is: [`Local::expired_at`]
    /// judges it.
    pub expires: u64,
}

impl Local {
    /// Whether the value has expired by wall time `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expires != 0 && self.expires <= now_ms
    }
}

/// A connected client.
#[derive(Debug)]
pub struct Client {
    cfg: Config,
    table: Table,
    id: u64,
    contact: u32,
    conns: HashMap<u32, TcpStream>,
    next_req: u64,
    /// Where the cached table came from: 0 the manager, else a node's id.
    table_from: u32,
    /// Why the manager did not answer the latest table request, if it did not.
    manager_down: Option<String>,
    /// Which node to ask first for the table when the manager is down; moves
    /// on past a node that did not answer, so a stalled one is not asked
    /// first every time.
    rotate: usize,
}

/// A table and where it came from.
struct Fetched {
    table: Table,
    /// The client id in the reply (0 from a node).
    client: u64,
    contact: u32,
    /// 0 if the manager answered, else the answering node's id.
    from: u32,
    /// Why the manager did not answer, when a node did.
    manager_down: Option<String>,
}

/// How one attempt ended.
enum Attempt {
    /// A reply to hand back.
    Reply(Message),
    /// Try another node; `sent` if the request may have reached it.
    Retry { why: String, sent: bool },
}

impl Client {
    /// Says hello to the manager (or, if it does not answer, to the nodes
    /// of [`Config::nodes`] in turn) and fetches the table, retrying every
    /// 100 ms until the deadline.
    pub fn connect(cfg: Config) -> Result<Client> {
        let started = Instant::now();
        let mut last = String::new();
        let mut rotate = 0;
        while started.elapsed() < cfg.deadline {
            match fetch(&cfg, Body::Hello, &cfg.nodes, 0, &mut rotate) {
                Ok(f) => {
                    let id = if f.client == 0 { local_client_id() } else { f.client };
                    return Ok(Client {
                        cfg,
                        table: f.table,
                        id,
                        contact: f.contact,
                        conns: HashMap::new(),
                        next_req: 0,
                        table_from: f.from,
                        manager_down: f.manager_down,
                        rotate,
                    });
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let why = if cfg.nodes.is_empty() {
            format!("cannot reach the manager at {}: {last}", cfg.manager)
        } else {
            format!("cannot reach the manager at {} or any of {} node(s): {last}", cfg.manager, cfg.nodes.len())
        };
        Err(Error::Unavailable(why))
    }

    /// The cached table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The id the manager gave this client, or, if a node gave the first
    /// table, the one the client picked ([`local_client_id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The contact node the manager (or the answering node: itself) suggested.
    pub fn contact(&self) -> u32 {
        self.contact
    }

    /// Where the cached table came from: 0 for the manager, else the id of
    /// the node whose cached copy it is.
    pub fn table_from(&self) -> u32 {
        self.table_from
    }

    /// Why the manager did not answer the latest table request; `None` if
    /// it answered (or no request has failed since).
    pub fn manager_down(&self) -> Option<&str> {
        self.manager_down.as_deref()
    }

    /// Fetches the table again: from the manager, or, if it does not
    /// answer, from a node (those of the cached table, then
    /// [`Config::nodes`]). Keeps the cached table, and returns false, if
    /// nobody answers with a table at least as new.
    pub fn refresh_table(&mut self) -> bool {
        let mut nodes: Vec<String> = Vec::new();
        let members = self.table.members.iter();
        for addr in members.filter(|m| m.state == NodeState::Up).map(|m| &m.addr).chain(&self.cfg.nodes) {
            if !nodes.contains(addr) {
                nodes.push(addr.clone());
            }
        }
        match fetch(&self.cfg, Body::GetTable, &nodes, self.table.epoch, &mut self.rotate) {
            Ok(f) => {
                self.table = f.table;
                self.table_from = f.from;
                self.manager_down = f.manager_down;
                true
            }
            Err(_) => false,
        }
    }

    /// Stores `value` under `key`; returns the coordinating node.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u32> {
        self.put_expiring(key, value, Expiry::Never)
    }

    /// Stores `value` under `key`, expiring as `expiry` says; returns the
    /// coordinating node. [`Expiry::After`] counts from when the
    /// coordinator stamps the write, by its clock, which turns it into the
    /// absolute expiry every replica stores.
    pub fn put_expiring(&mut self, key: &[u8], value: &[u8], expiry: Expiry) -> Result<u32> {
        let body = Body::Put { key: key.to_vec(), value: value.to_vec(), expiry };
        let m = self.request(key, body)?;
        expect_ok(m)
    }

    /// Deletes `key`; returns the coordinating node.
    pub fn delete(&mut self, key: &[u8]) -> Result<u32> {
        let m = self.request(key, Body::Del { key: key.to_vec() })?;
        expect_ok(m)
    }

    /// Reads `key`; returns the value and the coordinating node.
    pub fn get(&mut self, key: &[u8]) -> Result<(Vec<u8>, u32)> {
        let m = self.request(key, Body::Get { key: key.to_vec() })?;
        match m.body {
            Body::Value { value, .. } => Ok((value, m.header.node)),
            Body::NotFound { .. } => Err(Error::NotFound { node: m.header.node }),
            other => Err(unexpected(&other)),
        }
    }

    /// What node `node` holds locally for `key`, without quorum.
    pub fn inspect(&mut self, node: u32, key: &[u8]) -> Result<Option<Local>> {
        let m = self.ask_node(node, Body::Inspect { key: key.to_vec() })?;
        match m.body {
            Body::Value { value, version, expires } => Ok(Some(Local { value: Some(value), version, expires })),
            Body::NotFound { version: Some(version) } => Ok(Some(Local { value: None, version, expires: 0 })),
            Body::NotFound { version: None } => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Sector and key counts of node `node`, and (from a node of this
    /// version or newer) the rest of its figures.
    pub fn stats(&mut self, node: u32) -> Result<Stats> {
        let m = self.ask_node(node, Body::StatsReq)?;
        match m.body {
            Body::StatsReply(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Closes every connection.
    pub fn finalize(self) {}

    /// Sends one request to a given node, once, within the attempt timeout.
    fn ask_node(&mut self, node: u32, body: Body) -> Result<Message> {
        match self.attempt(node, &body) {
            Attempt::Reply(m) => match m.body {
                Body::Error { code, reason } => Err(Error::Refused { code, reason }),
                _ => Ok(m),
            },
            Attempt::Retry { why, .. } => Err(Error::Unavailable(why)),
        }
    }

    /// Sends a key's request to its coordinator, retrying other replicas.
    fn request(&mut self, key: &[u8], body: Body) -> Result<Message> {
        let started = Instant::now();
        let mut last = String::from("no live node holds this key");
        let mut round = 0usize;
        let is_write = matches!(body, Body::Put { .. } | Body::Del { .. });
        // The end of the latest failed write attempt that may still apply.
        let mut unsettled: Option<Instant> = None;
        while started.elapsed() < self.cfg.deadline {
            let candidates = self.candidates(key);
            let node = match candidates.get(round % candidates.len().max(1)) {
                Some(&n) => n,
                None => self.contact,
            };
            let attempt_end = Instant::now() + self.cfg.attempt_timeout;
            let mut maybe_applied = |sent: bool| {
                if is_write && sent {
                    unsettled = Some(attempt_end);
                }
            };
            match self.attempt(node, &body) {
                Attempt::Reply(m) => match m.body {
                    Body::Error { code, reason } => match retry_policy(&code) {
                        Retry::Next { refresh_table } => {
                            maybe_applied(!leaves_nothing(&code));
                            last = format!("server{node}: {reason}");
                            if refresh_table {
                                self.refresh_table();
                            }
                        }
                        Retry::Fail => return Err(Error::Refused { code, reason }),
                    },
                    body => {
                        settle(unsettled);
                        return Ok(Message { header: m.header, body });
                    }
                },
                Attempt::Retry { why, sent } => {
                    maybe_applied(sent);
                    last = why;
                    self.refresh_table();
                }
            }
            round += 1;
            if round.is_multiple_of(candidates.len().max(1)) {
                std::thread::sleep(ROUND_PAUSE);
            }
        }
        Err(Error::Unavailable(format!("no replica answered within {:?}: {last}", self.cfg.deadline)))
    }

    /// The key's live preference list, coordinator first.
    fn candidates(&self, key: &[u8]) -> Vec<u32> {
        candidates(&self.table, key)
    }

    fn attempt(&mut self, node: u32, body: &Body) -> Attempt {
        let Some(addr) = self.table.member(node).and_then(|m| m.addr.parse::<SocketAddr>().ok()) else {
            return Attempt::Retry { why: format!("server{node} is not in the table"), sent: false };
        };
        self.next_req += 1;
        let timeout = self.cfg.attempt_timeout;
        // The attempt is given up after `timeout`; no node may start it after that.
        let deadline = wall_ms_after(timeout);
        let header = Header { client: self.id, req: self.next_req, deadline, ..Header::default() };
        let msg = Message { header, body: body.clone() };
        let conn = match self.conns.remove(&node) {
            Some(c) => c,
            None => match open(&addr, self.cfg.key.as_ref(), timeout) {
                Ok(c) => c,
                Err(Handshake::Refused(why)) => {
                    let why = format!("server{node} at {addr}: {why}");
                    return Attempt::Reply(codec::error_reply(self.next_req, ErrorCode::Auth, &why));
                }
                Err(Handshake::Failed(e)) => {
                    return Attempt::Retry { why: format!("server{node} at {addr}: {e}"), sent: false }
                }
            },
        };
        match exchange(&conn, &msg, timeout) {
            Ok(reply) => {
                self.conns.insert(node, conn);
                Attempt::Reply(reply)
            }
            Err(e) => Attempt::Retry { why: format!("server{node} at {addr}: {e}"), sent: true },
        }
    }
}

/// The nodes a request for `key` is tried on, in order: the key's live
/// preference list, coordinator first (the whole list if none is up).
/// Shared with `gtstore-sim`'s clients.
pub fn candidates(t: &Table, key: &[u8]) -> Vec<u32> {
    let pref = t.preference(t.sector_of(key));
    let up: Vec<u32> =
        pref.iter().copied().filter(|&n| t.member(n).is_some_and(|m| m.state == NodeState::Up)).collect();
    if up.is_empty() {
        pref
    } else {
        up
    }
}

/// What a client does after an ERROR reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Send the request to the next node of the key's preference list,
    /// fetching the table from the manager first if `refresh_table`.
    Next {
        /// The error suggests the cached membership is out of date.
        refresh_table: bool,
    },
    /// Give up: the request fails with [`Error::Refused`].
    Fail,
}

/// The retry policy for an ERROR's code, as `gtstore-protocol(5)` gives it
/// under "Error codes". Public so every driver of the protocol (the client
/// library, a simulator) retries the same way. A code this build does not
/// know fails: retrying what we cannot judge could repeat a bad request.
pub fn retry_policy(code: &ErrorCode) -> Retry {
    match code {
        ErrorCode::Retry | ErrorCode::NoReplica => Retry::Next { refresh_table: true },
        ErrorCode::NoTable | ErrorCode::CatchingUp | ErrorCode::Late | ErrorCode::Storage | ErrorCode::Expired => {
            Retry::Next { refresh_table: false }
        }
        ErrorCode::Future
        | ErrorCode::TooLarge
        | ErrorCode::Auth
        | ErrorCode::Malformed
        | ErrorCode::BadRequest
        | ErrorCode::Other(_) => Retry::Fail,
    }
}

/// True if an ERROR with `code` says the node did nothing (so the attempt
/// cannot take effect later): the others may leave a partial write, with a
/// version made before the attempt's deadline.
pub fn leaves_nothing(code: &ErrorCode) -> bool {
    !matches!(code, ErrorCode::Retry | ErrorCode::Storage | ErrorCode::Other(_))
}

/// Waits out the deadline of an earlier failed attempt of a write before
/// its success is reported. That attempt may still take effect, with a
/// version made before its deadline (less the skew margin): a write begun
/// after the success is reported is then sure to get a newer version,
/// whichever node's clock makes it. Only writes retried after an attempt
/// of unknown outcome wait, at most one attempt timeout.
fn settle(unsettled: Option<Instant>) {
    if let Some(until) = unsettled {
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
}

/// A reply whose verb does not answer the request.
fn unexpected(body: &Body) -> Error {
    Error::Refused { code: ErrorCode::Malformed, reason: format!("unexpected {} reply", body.verb()) }
}

fn expect_ok(m: Message) -> Result<u32> {
    match m.body {
        Body::Ok => Ok(m.header.node),
        other => Err(unexpected(&other)),
    }
}

/// Asks the manager for the table (`HELLO` or `GET_TABLE`); if it does not
/// answer with a table of epoch `min_epoch` or newer, asks the nodes at
/// `nodes` in turn, starting at `*rotate` (which moves past every node that
/// does not answer). The error is the last failure's.
fn fetch(
    cfg: &Config,
    body: Body,
    nodes: &[String],
    min_epoch: u64,
    rotate: &mut usize,
) -> std::result::Result<Fetched, String> {
    let manager_err = match hello(cfg, &cfg.manager, body.clone(), min_epoch) {
        Ok((table, client, contact, _)) => {
            return Ok(Fetched { table, client, contact, from: 0, manager_down: None });
        }
        Err(e) => e,
    };
    let mut last = manager_err.clone();
    for i in 0..nodes.len() {
        let addr = &nodes[(*rotate + i) % nodes.len()];
        if *addr == cfg.manager {
            continue;
        }
        match hello(cfg, addr, body.clone(), min_epoch) {
            Ok((table, client, contact, from)) => {
                *rotate = (*rotate + i) % nodes.len();
                let manager_down = Some(manager_err);
                return Ok(Fetched { table, client, contact, from, manager_down });
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    *rotate = rotate.wrapping_add(1);
    Err(last)
}

/// Asks the manager or a node at `addr` for the table (`HELLO` or
/// `GET_TABLE`); the table, the client id, the contact node and the id of
/// the node that answered (0: the manager), if the table's epoch is at
/// least `min_epoch`.
fn hello(cfg: &Config, addr: &str, body: Body, min_epoch: u64) -> std::result::Result<(Table, u64, u32, u32), String> {
    let key = cfg.key.as_ref().filter(|_| addr != cfg.manager);
    let addr = crate::cli::resolve(addr).map_err(|e| e.message)?;
    let conn = open(&addr, key, cfg.attempt_timeout).map_err(|e| e.to_string())?;
    let msg = Message { header: Header::default(), body };
    let reply = exchange(&conn, &msg, cfg.attempt_timeout.max(Duration::from_secs(1)))?;
    match reply.body {
        Body::TableMsg { table, .. } if table.epoch < min_epoch => {
            Err(format!("its table (epoch {}) is older than the cached one (epoch {min_epoch})", table.epoch))
        }
        Body::TableMsg { table, contact, .. } => Ok((table, reply.header.client, contact, reply.header.node)),
        Body::Error { reason, .. } => Err(reason),
        other => Err(format!("unexpected {} reply", other.verb())),
    }
}

/// A client id for a client no manager gave one to (its first table came
/// from a node): bit 63 set, which the manager's ids (counting up from 1)
/// never reach, and the other bits from the process id and the clock, so
/// two such clients are unlikely to share one. Nodes only copy client ids
/// into their replies; nothing relies on them being unique.
pub fn local_client_id() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mixed = (u64::from(std::process::id()) << 32) ^ (now.as_nanos() as u64);
    (1 << 63) | (mixed & ((1 << 63) - 1))
}

/// The client key of `--key-file FILE`, else of `$GTSTORE_KEY_FILE`, if
/// either names one; an unreadable or unsafe file is an error.
pub fn key_file(flag: Option<String>) -> std::result::Result<Option<Key>, String> {
    let path = flag.or_else(|| std::env::var("GTSTORE_KEY_FILE").ok().filter(|s| !s.is_empty()));
    path.map(|p| Key::load(std::path::Path::new(&p))).transpose()
}

/// Connects to a node and, with a client key, proves it (the manager
/// takes no client key: its answers only say who the members are).
fn open(addr: &SocketAddr, key: Option<&Key>, timeout: Duration) -> std::result::Result<TcpStream, Handshake> {
    let conn = TcpStream::connect_timeout(addr, timeout).map_err(|e| Handshake::Failed(e.to_string()))?;
    let _ = conn.set_nodelay(true);
    if let Some(key) = key {
        authenticate(&conn, KeyKind::Client, key, timeout)?;
    }
    Ok(conn)
}

/// Why a key exchange did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The server has no such key or a different one: retrying cannot help.
    Refused(String),
    /// The connection failed or timed out.
    Failed(String),
}

impl std::fmt::Display for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handshake::Refused(why) | Handshake::Failed(why) => f.write_str(why),
        }
    }
}

/// Runs the key exchange of `net::auth` as the initiator on a blocking
/// connection: AUTH, check the server's CHALLENGE, send PROVE. A server
/// that cannot prove the key is refused; a wrong key of ours shows as
/// ERROR AUTH on the next request.
pub fn authenticate(
    conn: &TcpStream,
    kind: KeyKind,
    key: &Key,
    timeout: Duration,
) -> std::result::Result<(), Handshake> {
    let mut ours = [0u8; NONCE_LEN];
    auth::os_random(&mut ours).map_err(|e| Handshake::Failed(format!("getrandom: {e}")))?;
    let header = Header { req: HANDSHAKE_REQ, ..Header::default() };
    let ask = Message { header, body: Body::Auth { kind, nonce: ours } };
    let name = kind.name();
    let prove = match exchange(conn, &ask, timeout).map_err(Handshake::Failed)?.body {
        Body::Challenge { nonce, proof } if key.check_responder(kind, &ours, &nonce, &proof) => {
            Body::Prove { proof: key.initiator_proof(kind, &ours, &nonce) }
        }
        Body::Challenge { .. } => return Err(Handshake::Refused(format!("it holds another {name} key"))),
        Body::Error { reason, .. } => return Err(Handshake::Refused(format!("it refused the {name} key: {reason}"))),
        other => return Err(Handshake::Refused(format!("unexpected {} reply to AUTH", other.verb()))),
    };
    let mut w = conn;
    w.write_all(&codec::to_bytes(&Message { header, body: prove })).map_err(|e| Handshake::Failed(e.to_string()))
}

/// Writes `msg` and reads one reply, each within `timeout`.
pub fn exchange(mut conn: &TcpStream, msg: &Message, timeout: Duration) -> std::result::Result<Message, String> {
    let deadline = Instant::now() + timeout;
    conn.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    conn.write_all(&codec::to_bytes(msg)).map_err(|e| e.to_string())?;
    let limits = Limits { max_header: 128, max_body: 64 << 20 };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some((reply, n)) = codec::decode(&buf, &limits).map_err(|e| e.to_string())? {
            // A protocol error is answered with REQ_ID 0 before the node closes.
            let protocol_error = reply.header.req == 0 && matches!(reply.body, Body::Error { .. });
            if reply.header.req == msg.header.req || msg.header.req == 0 || protocol_error {
                return Ok(reply);
            }
            buf.drain(..n);
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        conn.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match conn.read(&mut chunk) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err("timed out".into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// This host's wall clock `after` from now, in milliseconds since the Unix
/// epoch: a request's deadline.
pub fn wall_ms_after(after: Duration) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now + after).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_follows_the_protocol_page() {
        let refresh = Retry::Next { refresh_table: true };
        let next = Retry::Next { refresh_table: false };
        let want = [
            (ErrorCode::Retry, refresh),
            (ErrorCode::Expired, next),
            (ErrorCode::Late, next),
            (ErrorCode::Future, Retry::Fail),
            (ErrorCode::TooLarge, Retry::Fail),
            (ErrorCode::NoTable, next),
            (ErrorCode::CatchingUp, next),
            (ErrorCode::NoReplica, refresh),
            (ErrorCode::Auth, Retry::Fail),
            (ErrorCode::Storage, next),
            (ErrorCode::Malformed, Retry::Fail),
            (ErrorCode::BadRequest, Retry::Fail),
        ];
        assert_eq!(want.len(), ErrorCode::KNOWN.len(), "every known code has a row");
        for (code, policy) in want {
            assert_eq!(retry_policy(&code), policy, "{code}");
        }
        assert_eq!(retry_policy(&ErrorCode::from_word("SOMETHING_NEW")), Retry::Fail);
    }

    #[test]
    fn a_refusal_shows_its_reason() {
        let e = Error::Refused { code: ErrorCode::TooLarge, reason: "key or value over the limit".into() };
        assert_eq!(e.to_string(), "refused: key or value over the limit");
    }
}
