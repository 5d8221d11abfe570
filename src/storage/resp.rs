//! The RESP2 front end (`--resp-listen`): Redis clients, `redis-cli` and
//! `redis-benchmark` against any node.
//!
//! [`RespFront`] owns each RESP connection's state: the commands in the
//! order they arrived, each waiting for the native requests it was cut
//! into, and whether the connection proved the client key (`AUTH`). A
//! command becomes requests to this node's own coordinator — `GET` one
//! native GET, `MGET` one per key, `DEL` a GET then a DEL per key (for the
//! count Redis returns), `SET ... KEEPTTL`, `EXPIRE` and `PERSIST` a GET
//! then a PUT of the value read with the new expiry (a versioned rewrite,
//! like any write), `DBSIZE` a STATS to every member — sent through
//! [`Node::handle_client`] exactly as a native client's would be, so they
//! are coordinated here or forwarded, with the same limits, quorums and
//! deadlines. Their replies come back through [`Node::answer_to`], which
//! hands those of RESP connections to [`Node::resp_reply`]; replies are
//! written in command order (RESP has no request ids) once a command's
//! last answer is in: after the turn's fsync if an answer acknowledges a write of
//! this turn, as a native reply would, else before it.
//!
//! Last-writer-wins cannot give compare-and-set, so SET NX/XX, INCR and the
//! other read-modify-write commands are refused with a reason.
//!
//! The requests of one connection about one key go one at a time, in
//! command order: a request waits (`RespConn::keys`) until the one before
//! it about the same key is answered, while requests about other keys go
//! at once. So a request that fails in a way the native client would retry
//! (a quorum not reached in time, a table moving) can be sent again, as the
//! native client does, for up to [`RETRY_BUDGET_MS`] after its command
//! arrived, without a later command about its key overtaking it: a disk or
//! replica that stalls for a second delays a command instead of failing
//! it. A write whose failed attempt may still apply is sent again only once
//! that attempt's deadline is past, so that the versions made after it are
//! newer. Past the budget the failure is `-TRYAGAIN`. The commands that read
//! before they write (DEL, KEEPTTL, EXPIRE, PERSIST) hold the commands
//! after them on the connection until they are done, so those see their
//! effect; a write to the same key by another client between the read and
//! the write is overwritten, as last-writer-wins orders the two.

use std::collections::{HashMap, VecDeque};

use super::{Link, Node, NodeIo};
use crate::client::{leaves_nothing, retry_policy, Retry};
use crate::hlc::MAX_SKEW_MS;
use crate::idmap::IdMap;
use crate::net::codec::{Body, ErrorCode, Expiry, Header, Message, Stats};
use crate::net::resp::Value;
use crate::net::ConnId;

/// Native requests in flight on one RESP connection at most; a command
/// past it is refused (a client that pipelines without reading).
const MAX_IN_FLIGHT: usize = 16 * 1024;
/// The deadline of each native request a command is cut into.
const REQUEST_MS: u64 = 1_000;
/// How long after a command's arrival its failed requests are sent again:
/// the native client's default deadline (`gtstore --deadline`).
pub(super) const RETRY_BUDGET_MS: u64 = 5_000;
/// The pause before a failed request is sent again.
const RETRY_PAUSE_MS: u64 = 100;

/// Every RESP connection's state.
#[derive(Debug, Default)]
pub(super) struct RespFront {
    conns: IdMap<ConnId, RespConn>,
    /// Failed requests to send again, each once its time (wall ms) comes.
    retries: Vec<Resend>,
}

/// A failed request to send again at `due` (wall ms).
#[derive(Debug)]
struct Resend {
    due: u64,
    conn: ConnId,
    request: Request,
}

/// One native request of a command: part `part` of command `seq`.
#[derive(Debug, Clone)]
struct Request {
    seq: u64,
    part: usize,
    body: Body,
}

/// A request in flight, and its deadline (wall ms).
#[derive(Debug)]
struct Sent {
    request: Request,
    deadline: u64,
}

/// One RESP connection.
#[derive(Debug, Default)]
struct RespConn {
    /// Commands not answered yet, oldest first; `first_seq` numbers the front.
    queue: VecDeque<Command>,
    first_seq: u64,
    /// Native request id → the request in flight.
    parts: IdMap<u64, Sent>,
    /// The keys with a request in flight (or waiting to be sent again),
    /// each with the later requests about it, which wait their turn.
    keys: HashMap<Vec<u8>, VecDeque<Request>>,
    /// Requests waiting in `keys`.
    waiting: usize,
    next_req: u64,
    /// The client key was proved with AUTH (or none is set).
    authed: bool,
    /// `CLIENT SETNAME`.
    name: Option<Vec<u8>>,
    /// QUIT: close once the queue is written.
    quit: bool,
    /// The protocol `HELLO` chose: 2 (the default) or 3.
    proto: u8,
    /// A DEL is between its reads and its deletes: the commands after it
    /// wait here, so that they see its effect as Redis's would.
    held: VecDeque<Vec<Vec<u8>>>,
    barrier: bool,
}

/// One command and the answers of the requests it was cut into.
#[derive(Debug)]
struct Command {
    kind: Kind,
    /// The keys (or members, for DBSIZE) its parts are about.
    keys: Vec<Vec<u8>>,
    /// Each part's answer, once in.
    answers: Vec<Option<Body>>,
    left: usize,
    /// The reply, once known.
    reply: Option<Value>,
    /// Some answer it got acknowledges what this turn's fsync makes
    /// durable: its reply waits for that fsync (`Io::send`), as the native
    /// reply would; otherwise it may leave before it (`Io::send_early`).
    after_fsync: bool,
    /// DEL: how many of its keys had a value when read; EXPIRE and
    /// PERSIST: the integer to answer once the rewrite is done.
    found: i64,
    /// SET: the expiry of its write; EXPIRE: the new expiry.
    expiry: Expiry,
    /// EXPIRE with a time already past: delete the key instead.
    delete: bool,
    /// SET ... KEEPTTL: the value to write once the key is read.
    value: Vec<u8>,
    /// When it arrived (wall ms): its failed requests are sent again until
    /// `RETRY_BUDGET_MS` after it.
    arrived: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Answered at once (the reply is set).
    Ready,
    Get,
    MGet,
    Exists,
    /// Writes: SET (one part) and MSET (one per pair).
    Set,
    /// DEL and UNLINK: reading each key, then deleting it.
    DelRead,
    DelWrite,
    DbSize,
    /// TTL, PTTL, EXPIRETIME, PEXPIRETIME: one read.
    Ttl,
    PTtl,
    ExpireTime,
    PExpireTime,
    /// SET ... KEEPTTL: reading the key's expiry, then writing (`SetKept`).
    SetKeepRead,
    SetKept,
    /// EXPIRE and its kin, PERSIST: reading the key, then rewriting its
    /// value with the new expiry (or deleting it), `Rewrite`.
    ExpireRead,
    PersistRead,
    Rewrite,
}

impl Kind {
    /// A command that reads before it writes: it and its second stage
    /// hold the commands behind it on the connection.
    fn holds(self) -> bool {
        matches!(
            self,
            Kind::DelRead
                | Kind::DelWrite
                | Kind::SetKeepRead
                | Kind::SetKept
                | Kind::ExpireRead
                | Kind::PersistRead
                | Kind::Rewrite
        )
    }

    /// The first stage of such a command (its keys are needed again).
    fn reads_first(self) -> bool {
        matches!(self, Kind::DelRead | Kind::SetKeepRead | Kind::ExpireRead | Kind::PersistRead)
    }
}

impl Command {
    fn ready(reply: Value) -> Command {
        Command::new(Kind::Ready, Vec::new(), 0, Some(reply))
    }

    /// A command of `parts` native requests about `keys`.
    fn new(kind: Kind, keys: Vec<Vec<u8>>, parts: usize, reply: Option<Value>) -> Command {
        Command {
            kind,
            keys,
            answers: vec![None; parts],
            left: parts,
            reply,
            found: 0,
            expiry: Expiry::Never,
            delete: false,
            value: Vec::new(),
            after_fsync: false,
            arrived: 0,
        }
    }
}

/// Seconds or milliseconds to ms, as an expiry option gives them.
fn to_ms(n: i64, seconds: bool) -> Option<i64> {
    if seconds {
        n.checked_mul(1000)
    } else {
        Some(n)
    }
}

impl RespConn {
    fn command(&mut self, seq: u64) -> Option<&mut Command> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.queue.get_mut(i)
    }

    /// When to send `sent` again, if `answer` is a failure the native
    /// client would retry and its command's retry budget is not spent.
    fn retry_at(&mut self, sent: &Sent, answer: &Body, now: u64) -> Option<u64> {
        let Body::Error { code, .. } = answer else { return None };
        let arrived = self.command(sent.request.seq)?.arrived;
        if retry_policy(code) == Retry::Fail || now >= arrived + RETRY_BUDGET_MS {
            return None;
        }
        // A write that may still apply (with a version made before its
        // deadline) is sent again once it cannot: the versions made after
        // are then newer, whichever node's clock makes them.
        let write = matches!(sent.request.body, Body::Put { .. } | Body::Del { .. });
        let settled = if write && !leaves_nothing(code) { sent.deadline + 2 * MAX_SKEW_MS } else { 0 };
        Some((now + RETRY_PAUSE_MS).max(settled))
    }

    /// Requests sent and not answered, or waiting their turn.
    fn in_flight(&self) -> usize {
        self.parts.len() + self.waiting
    }

    /// Takes `request` in its key's turn: it is given back if it may go
    /// now, or kept until the one before it about that key is answered.
    fn take_turn(&mut self, request: Request) -> Option<Request> {
        match self.keys.get_mut(key_of(&request.body)) {
            Some(queue) => {
                queue.push_back(request);
                self.waiting += 1;
                None
            }
            None => {
                self.keys.insert(key_of(&request.body).to_vec(), VecDeque::new());
                Some(request)
            }
        }
    }

    /// The request about `key` answered for good: the next one waiting
    /// for it, which now goes (the key stays taken), if any.
    fn end_turn(&mut self, key: &[u8]) -> Option<Request> {
        let queue = self.keys.get_mut(key)?;
        match queue.pop_front() {
            Some(next) => {
                self.waiting -= 1;
                Some(next)
            }
            None => {
                self.keys.remove(key);
                None
            }
        }
    }
}

/// The first word of a command, upper-cased, for matching.
fn name_of(args: &[Vec<u8>]) -> String {
    args.first().map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default()
}

fn wrong_args(name: &str) -> Value {
    Value::error(format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
}

/// A native error reply as Redis clients expect it: the quorum and
/// availability failures are `TRYAGAIN`, which they retry.
fn native_error(code: &ErrorCode, reason: &str) -> Value {
    match code {
        ErrorCode::TooLarge => Value::error(format!("ERR {reason}")),
        ErrorCode::Auth => Value::error(format!("NOAUTH {reason}")),
        ErrorCode::BadRequest | ErrorCode::Malformed => Value::error(format!("ERR {reason}")),
        _ => Value::error(format!("TRYAGAIN {reason}")),
    }
}

/// Commands that need the value they change, which last-writer-wins cannot give.
const READ_MODIFY_WRITE: [&str; 22] = [
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
    "APPEND",
    "SETNX",
    "GETSET",
    "GETDEL",
    "GETEX",
    "SETRANGE",
    "MSETNX",
    "RENAME",
    "RENAMENX",
    "SETBIT",
    "LPUSH",
    "RPUSH",
    "SADD",
    "HSET",
    "ZADD",
    "WATCH",
    "MULTI",
];

impl Node {
    /// A RESP connection was accepted.
    pub(super) fn resp_opened(&mut self, conn: ConnId) {
        let authed = self.cfg.keys.client.is_none();
        self.resp.conns.insert(conn, RespConn { authed, proto: 2, ..RespConn::default() });
    }

    /// A RESP connection closed: its commands' late answers are dropped.
    pub(super) fn resp_closed(&mut self, conn: ConnId) {
        self.resp.conns.remove(&conn);
    }

    /// A command on a RESP connection.
    pub(super) fn handle_resp(&mut self, rx: &mut impl NodeIo, conn: ConnId, request: Value) {
        if !self.resp.conns.contains_key(&conn) {
            self.resp_opened(conn);
        }
        let args: Vec<Vec<u8>> = match request {
            Value::Array(items) => items.into_iter().filter_map(|v| v.as_bytes().map(<[u8]>::to_vec)).collect(),
            _ => {
                return self.resp_push(rx, conn, Command::ready(Value::error("ERR Protocol error: expected an array")))
            }
        };
        if args.is_empty() {
            return; // A blank inline line: Redis ignores it.
        }
        if let Some(c) = self.resp.conns.get_mut(&conn).filter(|c| c.barrier) {
            // Counted against the in-flight cap like the requests it will make.
            if c.held.len() + c.in_flight() < MAX_IN_FLIGHT {
                c.held.push_back(args);
                return;
            }
            let reply = Value::error(format!("BUSY more than {MAX_IN_FLIGHT} requests in flight on this connection"));
            return self.resp_push(rx, conn, Command::ready(reply));
        }
        self.resp_run(rx, conn, args);
    }

    /// Runs one command of `conn`, in arrival order.
    fn resp_run(&mut self, rx: &mut impl NodeIo, conn: ConnId, args: Vec<Vec<u8>>) {
        let name = name_of(&args);
        let authed = self.resp.conns.get(&conn).is_some_and(|c| c.authed);
        if !authed && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") {
            return self.resp_push(rx, conn, Command::ready(Value::error("NOAUTH Authentication required.")));
        }
        let in_flight = self.resp.conns.get(&conn).map_or(0, RespConn::in_flight);
        if in_flight + args.len() > MAX_IN_FLIGHT {
            let reply = Value::error(format!("BUSY more than {MAX_IN_FLIGHT} requests in flight on this connection"));
            return self.resp_push(rx, conn, Command::ready(reply));
        }
        let command = self.resp_command(rx, conn, &name, args);
        if command.kind.reads_first() {
            if let Some(c) = self.resp.conns.get_mut(&conn) {
                c.barrier = true;
            }
        }
        self.resp_push(rx, conn, command);
    }

    /// A DEL finished: the commands held behind it run, up to the next DEL.
    fn resp_release(&mut self, rx: &mut impl NodeIo, conn: ConnId) {
        loop {
            let Some(c) = self.resp.conns.get_mut(&conn) else { return };
            c.barrier = false;
            let Some(args) = c.held.pop_front() else { return };
            self.resp_run(rx, conn, args);
            if self.resp.conns.get(&conn).is_none_or(|c| c.barrier) {
                return;
            }
        }
    }

    /// What a command is: answered at once, or the requests to make.
    fn resp_command(&mut self, rx: &mut impl NodeIo, conn: ConnId, name: &str, mut args: Vec<Vec<u8>>) -> Command {
        let argc = args.len();
        let keyed = |kind: Kind, keys: Vec<Vec<u8>>| {
            let n = keys.len();
            Command::new(kind, keys, n, None)
        };
        match name {
            "PING" if argc <= 2 => {
                Command::ready(args.pop().filter(|_| argc == 2).map_or(Value::Simple("PONG".into()), Value::Bulk))
            }
            "ECHO" if argc == 2 => Command::ready(Value::Bulk(args.swap_remove(1))),
            "GET" if argc == 2 => keyed(Kind::Get, vec![args.swap_remove(1)]),
            "MGET" if argc >= 2 => keyed(Kind::MGet, args.split_off(1)),
            "EXISTS" if argc >= 2 => keyed(Kind::Exists, args.split_off(1)),
            "DEL" | "UNLINK" if argc >= 2 => keyed(Kind::DelRead, args.split_off(1)),
            "TTL" if argc == 2 => keyed(Kind::Ttl, vec![args.swap_remove(1)]),
            "PTTL" if argc == 2 => keyed(Kind::PTtl, vec![args.swap_remove(1)]),
            "EXPIRETIME" if argc == 2 => keyed(Kind::ExpireTime, vec![args.swap_remove(1)]),
            "PEXPIRETIME" if argc == 2 => keyed(Kind::PExpireTime, vec![args.swap_remove(1)]),
            "PERSIST" if argc == 2 => keyed(Kind::PersistRead, vec![args.swap_remove(1)]),
            "SET" if argc >= 3 => resp_set(args),
            "MSET" if argc >= 3 && argc % 2 == 1 => Command::new(Kind::Set, args[1..].to_vec(), (argc - 1) / 2, None),
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" if argc == 3 => resp_expire(rx.wall_ms(), name, args),
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" if argc > 3 => Command::ready(Value::error(format!(
                "ERR {name} NX/XX/GT/LT compare the current expiry, which last-writer-wins replication cannot give"
            ))),
            "DBSIZE" if argc == 1 => {
                let members: Vec<Vec<u8>> = self.table.as_ref().map_or_else(Vec::new, |t| {
                    t.members
                        .iter()
                        .filter(|m| m.state == crate::table::NodeState::Up)
                        .map(|m| m.id.to_be_bytes().to_vec())
                        .collect()
                });
                if members.is_empty() {
                    return Command::ready(Value::error("TRYAGAIN this node has no table yet"));
                }
                keyed(Kind::DbSize, members)
            }
            "SELECT" if argc == 2 => Command::ready(match args[1].as_slice() {
                b"0" => Value::ok(),
                _ => Value::error("ERR DB index is out of range"),
            }),
            "AUTH" if argc == 2 || argc == 3 => Command::ready(self.resp_auth(conn, None, &args[argc - 1])),
            "HELLO" => Command::ready(self.resp_hello(conn, &args)),
            "QUIT" => {
                if let Some(c) = self.resp.conns.get_mut(&conn) {
                    c.quit = true;
                }
                Command::ready(Value::ok())
            }
            "CLIENT" if argc >= 2 => Command::ready(self.resp_client(conn, &args)),
            "CONFIG" if argc >= 3 && args[1].eq_ignore_ascii_case(b"GET") => Command::ready(config_get(&args[2..])),
            "CONFIG" if argc == 2 && args[1].eq_ignore_ascii_case(b"RESETSTAT") => Command::ready(Value::ok()),
            "CONFIG" if argc >= 2 => Command::ready(Value::error(
                "ERR only CONFIG GET is served: a node is configured by its command line (gtstore-storage(8))",
            )),
            "COMMAND" => Command::ready(match args.get(1).map(|a| a.to_ascii_uppercase()) {
                Some(sub) if sub == b"COUNT" => Value::Integer(0),
                _ => Value::Array(Vec::new()),
            }),
            "INFO" => Command::ready(Value::Bulk(self.resp_info(rx, args.get(1)))),
            n if READ_MODIFY_WRITE.contains(&n) => Command::ready(Value::error(format!(
                "ERR {n} needs the value it changes, which last-writer-wins replication cannot give"
            ))),
            "PING" | "ECHO" | "GET" | "MGET" | "EXISTS" | "DEL" | "UNLINK" | "TTL" | "PTTL" | "PERSIST" | "SET"
            | "MSET" | "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "EXPIRETIME" | "PEXPIRETIME" | "DBSIZE"
            | "SELECT" | "AUTH" | "CLIENT" | "CONFIG" => Command::ready(wrong_args(name)),
            _ => Command::ready(unknown_command(&args)),
        }
    }

    /// AUTH [user] password: the client key's bytes (a trailing newline of
    /// the key file aside), compared in constant time.
    fn resp_auth(&mut self, conn: ConnId, _user: Option<&[u8]>, password: &[u8]) -> Value {
        let Some(key) = &self.cfg.keys.client else {
            return Value::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure \
                 your configuration is correct?",
            );
        };
        if !key.matches_password(password) {
            return Value::error("WRONGPASS invalid username-password pair or user is disabled.");
        }
        if let Some(c) = self.resp.conns.get_mut(&conn) {
            c.authed = true;
        }
        Value::ok()
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 or RESP3.
    fn resp_hello(&mut self, conn: ConnId, args: &[Vec<u8>]) -> Value {
        let mut proto = None;
        let mut i = 1;
        if let Some(v) = args.get(1) {
            proto = match v.as_slice() {
                b"2" => Some(2),
                b"3" => Some(3),
                _ if v.iter().all(u8::is_ascii_digit) => {
                    return Value::error("NOPROTO sorry, this protocol version is not supported")
                }
                _ => return Value::error("ERR Protocol version is not an integer or out of range"),
            };
            i = 2;
        }
        while i < args.len() {
            let opt = args[i].to_ascii_uppercase();
            if opt == b"AUTH" && i + 2 < args.len() {
                let reply = self.resp_auth(conn, Some(&args[i + 1]), &args[i + 2]);
                if matches!(reply, Value::Error(_)) {
                    return reply;
                }
                i += 3;
            } else if opt == b"SETNAME" && i + 1 < args.len() {
                if let Some(c) = self.resp.conns.get_mut(&conn) {
                    c.name = Some(args[i + 1].clone());
                }
                i += 2;
            } else {
                return Value::error("ERR syntax error in HELLO option");
            }
        }
        let Some(c) = self.resp.conns.get_mut(&conn).filter(|c| c.authed) else {
            return Value::error("NOAUTH HELLO must be called with the client authentication of this server.");
        };
        if let Some(p) = proto {
            c.proto = p;
        }
        let pair = |k: &str, v: Value| (Value::bulk(k), v);
        Value::Map(vec![
            pair("server", Value::bulk("gtstore")),
            pair("version", Value::bulk(env!("CARGO_PKG_VERSION"))),
            pair("proto", Value::Integer(i64::from(c.proto))),
            pair("id", Value::Integer(i64::from(self.cfg.id))),
            pair("mode", Value::bulk("cluster")),
            pair("role", Value::bulk("master")),
            pair("modules", Value::Array(Vec::new())),
        ])
    }

    /// CLIENT SETNAME / GETNAME / SETINFO / ID.
    fn resp_client(&mut self, conn: ConnId, args: &[Vec<u8>]) -> Value {
        let sub = args[1].to_ascii_uppercase();
        let Some(c) = self.resp.conns.get_mut(&conn) else { return Value::ok() };
        match (sub.as_slice(), args.len()) {
            (b"SETNAME", 3) => {
                if args[2].iter().any(|&b| b <= b' ' || b >= 0x7f) {
                    return Value::error("ERR Client names cannot contain spaces, newlines or special characters.");
                }
                c.name = Some(args[2].clone()).filter(|n| !n.is_empty());
                Value::ok()
            }
            (b"GETNAME", 2) => c.name.clone().map_or(Value::Nil, Value::Bulk),
            (b"SETINFO", 4) => Value::ok(),
            (b"ID", 2) => Value::Integer(i64::from(conn.parts().0 as u32)),
            _ => Value::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }

    /// INFO [section]: this node's view (keys and sectors are its own copy).
    fn resp_info(&self, rx: &impl NodeIo, section: Option<&Vec<u8>>) -> Vec<u8> {
        let want = section.map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        let all = want.as_deref().is_none_or(|s| matches!(s, "all" | "everything" | "default"));
        let mut out = String::new();
        let mut add = |name: &str, lines: Vec<String>| {
            if all || want.as_deref() == Some(name) {
                let title = format!("{}{}", name[..1].to_ascii_uppercase(), &name[1..]);
                out.push_str(&format!("# {title}\r\n"));
                for l in lines {
                    out.push_str(&l);
                    out.push_str("\r\n");
                }
                out.push_str("\r\n");
            }
        };
        let (epoch, members, up, rep) = self.table.as_ref().map_or((0, 0, 0, 0), |t| {
            let up = t.members.iter().filter(|m| m.state == crate::table::NodeState::Up).count();
            (t.epoch, t.members.len(), up, t.rep)
        });
        add(
            "server",
            vec![
                "redis_version:7.0.0".into(),
                format!("gtstore_version:{}", env!("CARGO_PKG_VERSION")),
                "redis_mode:cluster".into(),
                format!("process_id:{}", std::process::id()),
                format!("tcp_port:{}", self.cfg.resp_listen.map_or(0, |a| a.port())),
                format!("node_id:{}", self.cfg.id),
            ],
        );
        add("clients", vec![format!("connected_clients:{}", self.resp.conns.len())]);
        add("stats", vec![format!("wall_ms:{}", rx.wall_ms())]);
        add(
            "persistence",
            vec!["loading:0".into(), format!("aof_enabled:1"), format!("gtstore_fsync:{}", self.cfg.fsync)],
        );
        // Redis counts keys with a value not expired yet, and those of them with an expiry.
        let expired = self.store.total_expired_keys(rx.wall_ms());
        let keys = self.store.total_live_keys().saturating_sub(expired);
        let expiring = self.store.total_expiring_keys().saturating_sub(expired);
        add("keyspace", vec![format!("db0:keys={keys},expires={expiring},avg_ttl=0")]);
        add(
            "cluster",
            vec![
                "cluster_enabled:0".into(),
                format!("gtstore_members:{members}"),
                format!("gtstore_members_up:{up}"),
                format!("gtstore_replicas:{rep}"),
                format!("gtstore_epoch:{epoch}"),
                format!("gtstore_sectors_here:{}", self.table.as_ref().map_or(0, |t| t.owned_by(self.cfg.id))),
                format!("gtstore_under_replicated_here:{}", self.missing_sectors()),
            ],
        );
        out.into_bytes()
    }

    /// Queues `command` and makes its requests; answers what is ready.
    fn resp_push(&mut self, rx: &mut impl NodeIo, conn: ConnId, command: Command) {
        let Some(c) = self.resp.conns.get_mut(&conn) else { return };
        let seq = c.first_seq + c.queue.len() as u64;
        let mut command = command;
        // The keys go into the requests; only the commands that read
        // before they write need them again.
        let keys = match command.kind.reads_first() {
            true => command.keys.clone(),
            false => std::mem::take(&mut command.keys),
        };
        let (kind, expiry) = (command.kind, command.expiry);
        command.arrived = rx.wall_ms();
        c.queue.push_back(command);
        match kind {
            Kind::Ready => {}
            Kind::Set => {
                let mut pairs = keys.into_iter();
                let mut part = 0;
                while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
                    self.resp_request(rx, conn, seq, part, Body::Put { key, value, expiry });
                    part += 1;
                }
            }
            Kind::DbSize => {
                for (part, member) in keys.iter().enumerate() {
                    let id = member.as_slice().try_into().map_or(0, u32::from_be_bytes);
                    self.resp_stats(rx, conn, seq, part, id);
                }
            }
            _ => {
                for (part, key) in keys.into_iter().enumerate() {
                    self.resp_request(rx, conn, seq, part, Body::Get { key });
                }
            }
        }
        self.resp_flush(rx, conn);
    }

    /// The header of part `part` of command `seq`: a fresh request id,
    /// noted so that its answer finds the command.
    fn resp_header(&mut self, rx: &impl NodeIo, conn: ConnId, request: Request) -> Option<Header> {
        let c = self.resp.conns.get_mut(&conn)?;
        c.next_req += 1;
        let req = c.next_req;
        let deadline = rx.wall_ms() + REQUEST_MS;
        c.parts.insert(req, Sent { request, deadline });
        Some(Header { req, deadline, ..Header::default() })
    }

    /// Sends part `part` of command `seq` to this node's coordinator path,
    /// once the requests before it about the same key are answered.
    fn resp_request(&mut self, rx: &mut impl NodeIo, conn: ConnId, seq: u64, part: usize, body: Body) {
        let Some(c) = self.resp.conns.get_mut(&conn) else { return };
        if let Some(now) = c.take_turn(Request { seq, part, body }) {
            self.resp_send(rx, conn, now);
        }
    }

    /// Sends `request` now (its key's turn is taken).
    fn resp_send(&mut self, rx: &mut impl NodeIo, conn: ConnId, request: Request) {
        let body = request.body.clone();
        let Some(header) = self.resp_header(rx, conn, request) else { return };
        self.handle_client(rx, conn, Message { header, body });
    }

    /// Asks member `id` (this node included) for its figures, for DBSIZE.
    fn resp_stats(&mut self, rx: &mut impl NodeIo, conn: ConnId, seq: u64, part: usize, id: u32) {
        let request = Request { seq, part, body: Body::StatsReq };
        let Some(header) = self.resp_header(rx, conn, request) else { return };
        if id == self.cfg.id {
            self.handle_stats(rx, conn, header);
        } else {
            self.forward(rx, conn, header, id, Body::StatsReq);
        }
    }

    /// A native answer for a RESP connection (see `answer_to`).
    pub(super) fn resp_reply(&mut self, rx: &mut impl NodeIo, conn: ConnId, msg: Message, early: bool) {
        let now = rx.wall_ms();
        let Some(c) = self.resp.conns.get_mut(&conn) else { return };
        let Some(sent) = c.parts.remove(&msg.header.req) else { return };
        let (seq, part) = (sent.request.seq, sent.request.part);
        if !matches!(sent.request.body, Body::StatsReq) {
            let Some(due) = c.retry_at(&sent, &msg.body, now) else {
                // Answered for good: the next request about its key goes.
                if let Some(next) = c.end_turn(key_of(&sent.request.body)) {
                    self.resp_send(rx, conn, next);
                }
                return self.resp_answered(rx, conn, seq, part, msg.body, early);
            };
            // The key's turn stays taken until it is sent again.
            self.resp.retries.push(Resend { due, conn, request: sent.request });
            return;
        }
        self.resp_answered(rx, conn, seq, part, msg.body, early);
    }

    /// Sends again the failed requests whose time has come (every op sweep).
    pub(super) fn resp_resend_due(&mut self, rx: &mut impl NodeIo) {
        if self.resp.retries.is_empty() {
            return;
        }
        let now = rx.wall_ms();
        let (due, later): (Vec<Resend>, Vec<Resend>) =
            std::mem::take(&mut self.resp.retries).into_iter().partition(|r| r.due <= now);
        self.resp.retries = later;
        for r in due {
            self.resp_send(rx, r.conn, r.request);
        }
    }

    /// The answer of part `part` of command `seq`.
    fn resp_answered(&mut self, rx: &mut impl NodeIo, conn: ConnId, seq: u64, part: usize, body: Body, early: bool) {
        let Some(c) = self.resp.conns.get_mut(&conn) else { return };
        let Some(cmd) = c.command(seq) else { return };
        cmd.after_fsync |= !early;
        if let Some(slot) = cmd.answers.get_mut(part).filter(|s| s.is_none()) {
            *slot = Some(body);
            cmd.left = cmd.left.saturating_sub(1);
        }
        if cmd.left == 0 {
            self.resp_complete(rx, conn, seq);
        }
        // A DEL that ended (deleted, or failed) lets the commands behind it run.
        let ended_del = self
            .resp
            .conns
            .get_mut(&conn)
            .and_then(|c| c.command(seq))
            .is_some_and(|cmd| cmd.kind.holds() && cmd.reply.is_some());
        if ended_del {
            self.resp_release(rx, conn);
        }
        self.resp_flush(rx, conn);
    }

    /// Every part of command `seq` answered: its reply, or (DEL) its next step.
    fn resp_complete(&mut self, rx: &mut impl NodeIo, conn: ConnId, seq: u64) {
        let rep = self.table.as_ref().map_or(1, |t| u64::from(t.rep.max(1)));
        let Some(cmd) = self.resp.conns.get_mut(&conn).and_then(|c| c.command(seq)) else { return };
        let answers: Vec<Body> = cmd.answers.iter_mut().map(|a| a.take().unwrap_or(Body::Ok)).collect();
        let failed = answers.iter().find_map(|b| match b {
            Body::Error { code, reason } => Some(native_error(code, reason)),
            _ => None,
        });
        let found = |b: &Body| matches!(b, Body::Value { .. });
        if let (Kind::SetKeepRead | Kind::ExpireRead | Kind::PersistRead, None) = (cmd.kind, &failed) {
            // The key was read; now it is written with the expiry it keeps
            // or gets (the coordinator answers an expired key as not found).
            let key = std::mem::take(&mut cmd.keys).into_iter().next().unwrap_or_default();
            let current = match answers.into_iter().next() {
                Some(Body::Value { value, expires, .. }) => Some((value, expires)),
                _ => None,
            };
            let body = match (cmd.kind, current) {
                (Kind::SetKeepRead, current) => {
                    cmd.kind = Kind::SetKept;
                    let expiry = match current {
                        Some((_, at)) if at != 0 => Expiry::At(at),
                        _ => Expiry::Never,
                    };
                    Body::Put { key, value: std::mem::take(&mut cmd.value), expiry }
                }
                (Kind::ExpireRead, Some(_)) if cmd.delete => Body::Del { key },
                (Kind::ExpireRead, Some((value, _))) => Body::Put { key, value, expiry: cmd.expiry },
                (Kind::PersistRead, Some((value, at))) if at != 0 => Body::Put { key, value, expiry: Expiry::Never },
                _ => {
                    cmd.reply = Some(Value::Integer(0));
                    return;
                }
            };
            if cmd.kind != Kind::SetKept {
                cmd.kind = Kind::Rewrite;
                cmd.found = 1;
            }
            cmd.answers = vec![None];
            cmd.left = 1;
            self.resp_request(rx, conn, seq, 0, body);
            return;
        }
        if let (Kind::DelRead, None) = (cmd.kind, &failed) {
            // Each key was read; now each is deleted. The count is of the
            // keys that had a value.
            cmd.found = answers.iter().filter(|b| found(b)).count() as i64;
            cmd.kind = Kind::DelWrite;
            let keys = std::mem::take(&mut cmd.keys);
            cmd.answers = vec![None; keys.len()];
            cmd.left = keys.len();
            for (part, key) in keys.into_iter().enumerate() {
                self.resp_request(rx, conn, seq, part, Body::Del { key });
            }
            return;
        }
        let bulk = |b: Body| match b {
            Body::Value { value, .. } => Value::Bulk(value),
            _ => Value::Nil,
        };
        let now = rx.wall_ms();
        // TTL and its kin: what the read found, by this node's clock.
        let expiry_of = |b: Option<&Body>| match b {
            Some(Body::Value { expires: 0, .. }) => Err(-1),
            Some(Body::Value { expires, .. }) if *expires > now => Ok(*expires),
            _ => Err(-2),
        };
        let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        cmd.reply = Some(match (cmd.kind, failed) {
            (_, Some(error)) => error,
            (Kind::Ttl, None) => {
                expiry_of(answers.first()).map_or_else(Value::Integer, |at| int((at - now + 500) / 1000))
            }
            (Kind::PTtl, None) => expiry_of(answers.first()).map_or_else(Value::Integer, |at| int(at - now)),
            (Kind::ExpireTime, None) => expiry_of(answers.first()).map_or_else(Value::Integer, |at| int(at / 1000)),
            (Kind::PExpireTime, None) => expiry_of(answers.first()).map_or_else(Value::Integer, int),
            (Kind::Get, None) => answers.into_iter().next().map_or(Value::Nil, bulk),
            (Kind::MGet, None) => Value::Array(answers.into_iter().map(bulk).collect()),
            (Kind::Exists, None) => Value::Integer(answers.iter().filter(|b| found(b)).count() as i64),
            (Kind::Set | Kind::SetKept | Kind::SetKeepRead, None) => Value::ok(),
            (Kind::DelWrite | Kind::DelRead | Kind::Rewrite | Kind::ExpireRead | Kind::PersistRead, None) => {
                Value::Integer(cmd.found)
            }
            (Kind::DbSize, None) => {
                let copies: u64 = answers
                    .iter()
                    .map(|b| match b {
                        Body::StatsReply(Stats { keys, .. }) => *keys,
                        _ => 0,
                    })
                    .sum();
                // Every key has `rep` copies once the cluster is healthy.
                Value::Integer(i64::try_from(copies.div_ceil(rep)).unwrap_or(i64::MAX))
            }
            (Kind::Ready, None) => return,
        });
    }

    /// Writes the replies at the front of `conn`'s queue that are known.
    fn resp_flush(&mut self, rx: &mut impl NodeIo, conn: ConnId) {
        let Some(c) = self.resp.conns.get_mut(&conn) else { return };
        let mut out = Vec::new();
        while c.queue.front().is_some_and(|cmd| cmd.reply.is_some()) {
            if let Some((Some(reply), after_fsync)) = c.queue.pop_front().map(|cmd| (cmd.reply, cmd.after_fsync)) {
                out.push((reply, after_fsync));
            }
            c.first_seq += 1;
        }
        let quit = c.quit && c.queue.is_empty();
        let last = out.len();
        let resp3 = c.proto == 3;
        for (i, (reply, after_fsync)) in out.into_iter().enumerate() {
            let reply = if resp3 { reply.into_resp3() } else { reply.into_resp2() };
            let msg = Message { header: Header::default(), body: Body::Resp(reply) };
            // Output sent plainly earlier in the turn holds an early one
            // back, so the replies keep their order.
            if quit && i + 1 == last {
                rx.send_and_close(conn, &msg);
            } else if after_fsync {
                rx.send(conn, &msg);
            } else {
                rx.send_early(conn, &msg);
            }
        }
    }

    /// An answer to a client request: a native client's goes out as it
    /// is (`early`: before the turn's fsync, see `Io::send_early`); a RESP
    /// connection's goes to its command.
    pub(super) fn answer_to(&mut self, rx: &mut impl NodeIo, conn: ConnId, msg: Message, early: bool) {
        if matches!(rx.data(conn), Some(Link::Resp)) {
            self.resp_reply(rx, conn, msg, early);
        } else if early {
            rx.send_early(conn, &msg);
        } else {
            rx.send(conn, &msg);
        }
    }
}

/// The key a native request is about (none for STATS).
fn key_of(body: &Body) -> &[u8] {
    match body {
        Body::Put { key, .. } | Body::Get { key } | Body::Del { key } => key,
        _ => &[],
    }
}

/// SET key value [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]: NX, XX and
/// GET are refused (they need a compare-and-set).
fn resp_set(mut args: Vec<Vec<u8>>) -> Command {
    let mut expiry = None;
    let mut keep = false;
    let mut i = 3;
    while let Some(opt) = args.get(i) {
        let opt = String::from_utf8_lossy(opt).to_ascii_uppercase();
        let timed = matches!(opt.as_str(), "EX" | "PX" | "EXAT" | "PXAT");
        if timed && (expiry.is_some() || keep) || opt == "KEEPTTL" && (expiry.is_some() || keep) {
            return Command::ready(Value::error("ERR syntax error"));
        }
        match opt.as_str() {
            "NX" | "XX" | "GET" => {
                return Command::ready(Value::error(format!(
                    "ERR SET {opt} needs a compare-and-set, which last-writer-wins replication cannot give"
                )))
            }
            "KEEPTTL" => keep = true,
            _ if timed => {
                let Some(n) = args.get(i + 1) else { return Command::ready(Value::error("ERR syntax error")) };
                let Some(n) = std::str::from_utf8(n).ok().and_then(|s| s.parse::<i64>().ok()) else {
                    return Command::ready(Value::error("ERR value is not an integer or out of range"));
                };
                let ms = to_ms(n, opt == "EX" || opt == "EXAT").filter(|&ms| ms > 0);
                let Some(ms) = ms.and_then(|ms| u64::try_from(ms).ok()) else {
                    return Command::ready(Value::error("ERR invalid expire time in 'set' command"));
                };
                expiry = Some(if opt.ends_with("AT") { Expiry::At(ms) } else { Expiry::After(ms) });
                i += 1;
            }
            _ => return Command::ready(Value::error("ERR syntax error")),
        }
        i += 1;
    }
    args.truncate(3);
    if keep {
        let value = args.pop().unwrap_or_default();
        let mut c = Command::new(Kind::SetKeepRead, args.split_off(1), 1, None);
        c.value = value;
        return c;
    }
    let mut c = Command::new(Kind::Set, args.split_off(1), 1, None);
    c.expiry = expiry.unwrap_or(Expiry::Never);
    c
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT key time, at wall time `now` (ms):
/// a read, then a rewrite of the value with the new expiry; a time not in
/// the future deletes the key, as Redis does.
fn resp_expire(now: u64, name: &str, mut args: Vec<Vec<u8>>) -> Command {
    let Some(n) = args.get(2).and_then(|n| std::str::from_utf8(n).ok()).and_then(|s| s.parse::<i64>().ok()) else {
        return Command::ready(Value::error("ERR value is not an integer or out of range"));
    };
    let Some(ms) = to_ms(n, !name.starts_with('P')) else {
        return Command::ready(Value::error(format!("ERR invalid expire time in '{}' command", name.to_lowercase())));
    };
    let absolute = name.ends_with("AT");
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let (expiry, delete) = match (absolute, u64::try_from(ms)) {
        (false, Ok(ms)) if ms > 0 => (Expiry::After(ms), false),
        (true, Ok(at)) if ms > now => (Expiry::At(at), false),
        _ => (Expiry::Never, true),
    };
    args.truncate(2);
    let mut c = Command::new(Kind::ExpireRead, args.split_off(1), 1, None);
    c.expiry = expiry;
    c.delete = delete;
    c
}

/// CONFIG GET param...: the answers clients and redis-benchmark ask for
/// (a map: a flat array on RESP2).
fn config_get(params: &[Vec<u8>]) -> Value {
    let known: [(&str, &str); 6] = [
        ("save", ""),
        ("appendonly", "yes"),
        ("databases", "1"),
        ("maxmemory", "0"),
        ("timeout", "0"),
        ("appendfsync", "always"),
    ];
    let mut out = Vec::new();
    for p in params {
        let p = String::from_utf8_lossy(p).to_ascii_lowercase();
        for (name, value) in known {
            if p == name || p == "*" {
                out.push((Value::bulk(name), Value::bulk(value)));
            }
        }
    }
    Value::Map(out)
}

/// Redis's reply to a command it does not know.
fn unknown_command(args: &[Vec<u8>]) -> Value {
    let show = |a: &[u8]| String::from_utf8_lossy(&a[..a.len().min(128)]).into_owned();
    let rest: String = args[1..].iter().take(8).map(|a| format!("'{}' ", show(a))).collect();
    Value::error(format!("ERR unknown command '{}', with args beginning with: {rest}", show(&args[0])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(seq: u64, key: &str) -> Request {
        Request { seq, part: 0, body: Body::Get { key: key.as_bytes().to_vec() } }
    }

    #[test]
    fn requests_about_one_key_take_turns_and_others_go_at_once() {
        let mut c = RespConn::default();
        assert!(c.take_turn(get(1, "x")).is_some(), "the first about x goes");
        assert!(c.take_turn(get(2, "y")).is_some(), "another key goes at once");
        assert!(c.take_turn(get(3, "x")).is_none(), "the second about x waits");
        assert!(c.take_turn(get(4, "x")).is_none());
        assert_eq!(c.in_flight(), 2, "the waiting ones count against the cap");
        assert_eq!(c.end_turn(b"x").map(|r| r.seq), Some(3), "in command order");
        assert_eq!(c.end_turn(b"x").map(|r| r.seq), Some(4));
        assert!(c.end_turn(b"x").is_none(), "the last one frees the key");
        assert!(c.end_turn(b"y").is_none());
        assert!(c.keys.is_empty() && c.waiting == 0);
        assert!(c.take_turn(get(5, "x")).is_some(), "a freed key goes at once again");
    }

    #[test]
    fn failures_a_retry_may_cure_are_sent_again_within_the_budget_and_writes_once_settled() {
        let mut c = RespConn::default();
        let mut cmd = Command::new(Kind::Set, Vec::new(), 1, None);
        cmd.arrived = 10_000;
        c.queue.push_back(cmd);
        let put = Request {
            seq: 0,
            part: 0,
            body: Body::Put { key: b"k".to_vec(), value: Vec::new(), expiry: Expiry::Never },
        };
        let sent = Sent { request: put, deadline: 11_000 };
        let timed_out = Body::error(ErrorCode::Retry, "timed out");
        // A timed-out write may still apply: sent again once its deadline and the skew margin pass.
        assert_eq!(c.retry_at(&sent, &timed_out, 11_010), Some(11_000 + 2 * MAX_SKEW_MS));
        // A refusal that left nothing is sent again after the pause.
        let refused = Body::error(ErrorCode::NoTable, "no table");
        assert_eq!(c.retry_at(&sent, &refused, 10_100), Some(10_100 + RETRY_PAUSE_MS));
        // A read is never settled.
        let read = Sent { request: get(0, "k"), deadline: 11_000 };
        assert_eq!(c.retry_at(&read, &timed_out, 11_010), Some(11_010 + RETRY_PAUSE_MS));
        // Past the budget, a final refusal, or a success: not sent again.
        assert_eq!(c.retry_at(&sent, &timed_out, 10_000 + RETRY_BUDGET_MS), None);
        assert_eq!(c.retry_at(&sent, &Body::error(ErrorCode::TooLarge, "big"), 10_100), None);
        assert_eq!(c.retry_at(&sent, &Body::Ok, 10_100), None);
    }
}
