//! The wire codec: the text header protocol of `gtstore-protocol(5)`.
//!
//! Every message is one header line, `VERB CLIENT_ID NODE_ID LENGTH REQ_ID\n`,
//! followed by exactly LENGTH payload bytes. The payload is a sequence of
//! fields: byte strings carry a 4-byte big-endian length prefix, numbers
//! are fixed-width big-endian integers, so keys and values are binary safe.
//!
//! Decoding has two phases (mini-redis): [`check`] finds the length of one
//! complete message without allocating, rejecting a header that is
//! malformed or over the limits before its terminator or payload arrives;
//! [`parse`] then builds a [`Message`] from exactly that slice. Neither can
//! panic on any input. [`encode`] appends a message to an output buffer.
//!
//! Each verb's payload layout is written once, in `write_body`, against a
//! sink that either counts bytes (for LENGTH in the header) or stores them;
//! `parse_body`, next to it, reads the same fields back in the same order.

use super::auth::{KeyKind, Nonce, Proof};
use crate::hlc::Version;
use crate::table::{Member, NodeState, Table};

/// The limits a receiver enforces on incoming messages.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest header line, newline included.
    pub max_header: usize,
    /// Largest payload.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_header: 128, max_body: 1024 * 1024 + 64 * 1024 }
    }
}

/// Why bytes could not be decoded. Incomplete input is `Ok(None)`, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The header line has no newline within the limit.
    HeaderTooLong { limit: usize },
    /// LENGTH is over the payload limit.
    BodyTooLarge { len: u64, limit: usize },
    /// The header does not have exactly five space-separated fields.
    FieldCount(usize),
    /// A numeric header field is not a plain decimal in range.
    BadNumber(&'static str),
    /// The verb is empty or not upper-case ASCII letters and underscores.
    BadVerb,
    /// The payload does not match its verb.
    BadPayload(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::HeaderTooLong { limit } => {
                write!(f, "header line longer than {limit} bytes")
            }
            DecodeError::BodyTooLarge { len, limit } => {
                write!(f, "payload of {len} bytes is over the limit of {limit}")
            }
            DecodeError::FieldCount(n) => write!(f, "header has {n} fields, expected 5"),
            DecodeError::BadNumber(what) => write!(f, "header field {what} is not a valid number"),
            DecodeError::BadVerb => write!(f, "header verb is not a word of capitals"),
            DecodeError::BadPayload(what) => write!(f, "malformed payload: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// The code of the ERROR reply sent before closing the connection.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::BodyTooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

/// What an ERROR reply reports, for programs: a stable upper-case word on
/// the wire (Redis's `-ERR`, `-TRYAGAIN`, ...). Clients branch on the
/// code, never on the reason, which is for people. `gtstore-protocol(5)`
/// says what each code means and whether a client should retry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `RETRY`: the request may succeed if sent again, here or to another
    /// replica (quorum not reached, timed out waiting for replicas, the
    /// coordinator it was forwarded to is unreachable).
    Retry,
    /// `EXPIRED`: the request's deadline passed before it could start.
    Expired,
    /// `LATE`: a replica write arrived too late to be applied (stale).
    Late,
    /// `FUTURE`: a version too far ahead of the receiver's clock.
    Future,
    /// `TOO_LARGE`: a key, value or message over the receiver's limit.
    TooLarge,
    /// `NO_TABLE`: the node has no partition table yet.
    NoTable,
    /// `CATCHING_UP`: the key's sector is still being received.
    CatchingUp,
    /// `NO_REPLICA`: no live replica holds this key.
    NoReplica,
    /// `AUTH`: the sender is not allowed to make this request.
    Auth,
    /// `STORAGE`: the node's disk failed.
    Storage,
    /// `MALFORMED`: the bytes are not a valid message (the connection closes).
    Malformed,
    /// `BAD_REQUEST`: a verb or argument not accepted by this daemon.
    BadRequest,
    /// A code word this build does not know (from a newer peer), as received.
    Other(String),
}

impl ErrorCode {
    /// Every code this build knows, in the order `gtstore-protocol(5)` lists them.
    pub const KNOWN: [ErrorCode; 12] = [
        ErrorCode::Retry,
        ErrorCode::Expired,
        ErrorCode::Late,
        ErrorCode::Future,
        ErrorCode::TooLarge,
        ErrorCode::NoTable,
        ErrorCode::CatchingUp,
        ErrorCode::NoReplica,
        ErrorCode::Auth,
        ErrorCode::Storage,
        ErrorCode::Malformed,
        ErrorCode::BadRequest,
    ];

    /// The word on the wire.
    pub fn word(&self) -> &str {
        match self {
            ErrorCode::Other(w) => w,
            known => known.known_word().unwrap_or_default(),
        }
    }

    /// The word of a code this version knows (`None` for `Other`), as a
    /// `'static` string (for metric labels).
    pub fn known_word(&self) -> Option<&'static str> {
        Some(match self {
            ErrorCode::Retry => "RETRY",
            ErrorCode::Expired => "EXPIRED",
            ErrorCode::Late => "LATE",
            ErrorCode::Future => "FUTURE",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::NoTable => "NO_TABLE",
            ErrorCode::CatchingUp => "CATCHING_UP",
            ErrorCode::NoReplica => "NO_REPLICA",
            ErrorCode::Auth => "AUTH",
            ErrorCode::Storage => "STORAGE",
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Other(_) => return None,
        })
    }

    /// The code for a wire word; a word this build does not know is
    /// [`ErrorCode::Other`], not an error.
    pub fn from_word(word: &str) -> ErrorCode {
        ErrorCode::KNOWN.into_iter().find(|c| c.word() == word).unwrap_or_else(|| ErrorCode::Other(word.to_string()))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// Longest code word a receiver accepts.
const MAX_CODE_WORD: usize = 32;

/// The header fields every message carries besides its verb.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The client the manager gave this client (0 for daemons).
    pub client: u64,
    /// In a request: the sender's node id (0 for clients). In a reply: the
    /// node that coordinated the operation (`server<i>`).
    pub node: u32,
    /// Matches a reply to its request on one connection.
    pub req: u64,
    /// When the sender stops waiting for the reply: wall-clock milliseconds
    /// since the Unix epoch by the sender's clock; 0 for none (the optional
    /// sixth header field). A node never starts a request past it.
    pub deadline: u64,
}

/// One entry of a sector stream or a read result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Vec<u8>,
    /// The version of the newest write.
    pub version: Version,
    /// The value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// When the value expires, wall-clock ms since the epoch; 0 = never
    /// (always 0 for a tombstone). A copy carries it unchanged.
    pub expires: u64,
}

/// When the value of a PUT expires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expiry {
    /// Never.
    #[default]
    Never,
    /// This many ms (at least 1) after the coordinator stamps the write,
    /// by the coordinator's wall clock.
    After(u64),
    /// At this wall-clock time, ms since the Unix epoch (at least 1).
    At(u64),
}

impl Expiry {
    /// The absolute expiry to store for a write stamped at wall time
    /// `now_ms`: wall ms since the epoch, 0 for never.
    pub fn absolute(self, now_ms: u64) -> u64 {
        match self {
            Expiry::Never => 0,
            Expiry::After(ms) => now_ms.saturating_add(ms).max(1),
            Expiry::At(at) => at.max(1),
        }
    }

    /// The wire form: a kind byte (0 never, 1 after, 2 at) and a u64.
    fn wire(self) -> (u8, u64) {
        match self {
            Expiry::Never => (0, 0),
            Expiry::After(ms) => (1, ms),
            Expiry::At(at) => (2, at),
        }
    }

    fn from_wire(kind: u8, n: u64) -> Result<Expiry, DecodeError> {
        match (kind, n) {
            (0, 0) => Ok(Expiry::Never),
            (1 | 2, 0) => Err(DecodeError::BadPayload("expiry of 0")),
            (1, ms) => Ok(Expiry::After(ms)),
            (2, at) => Ok(Expiry::At(at)),
            _ => Err(DecodeError::BadPayload("expiry kind")),
        }
    }
}

/// Per-node figures for `gtstore status` and `gtstore stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sectors the node holds on disk.
    pub sectors: u32,
    /// Live keys over all the sectors it holds.
    pub keys: u64,
    /// Sectors it should hold but has not received yet.
    pub missing: u32,
    /// The rest of its figures, after the three above on the wire; absent
    /// from the replies of nodes older than them. Boxed: every message
    /// would carry its size otherwise.
    pub figures: Option<Box<Figures>>,
}

/// The verbs [`Figures`] counts, in their order there.
pub const FIGURE_VERBS: [&str; 5] = ["PUT", "GET", "DEL", "INSPECT", "STATS"];

/// A node's figures for people (`gtstore stats`), since it started; a
/// fixed layout of 180 bytes on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Sectors of its preference lists whose copy on the node is complete.
    pub held: u32,
    /// Keys whose newest entry here is a tombstone.
    pub tombstones: u64,
    /// Writes held here for other nodes (hinted handoff).
    pub hints: u64,
    /// Sector pulls in flight.
    pub pulls: u32,
    /// Client operations this node coordinates or forwards now.
    pub ops: u32,
    /// Requests received, per verb of [`FIGURE_VERBS`].
    pub requests: [u64; 5],
    /// ERROR replies sent to clients, per verb of [`FIGURE_VERBS`].
    pub errors: [u64; 5],
    /// For PUT, GET and DEL: answers timed, and the median and 99th
    /// percentile of their latency in microseconds (estimated from the
    /// buckets of the latency histogram).
    pub latency: [[u64; 3]; 3],
}

/// The payload of a message, one variant per verb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    // Client requests to a storage node.
    /// Store `value` under `key`, expiring as `expiry` says.
    Put { key: Vec<u8>, value: Vec<u8>, expiry: Expiry },
    /// Read `key`.
    Get { key: Vec<u8> },
    /// Delete `key`.
    Del { key: Vec<u8> },
    /// Report what this node holds for `key`, without quorum.
    Inspect { key: Vec<u8> },
    /// Report sector and key counts.
    StatsReq,
    // Replies.
    /// Success.
    Ok,
    /// A read's value, its version and its expiry (wall ms since the
    /// epoch, 0 = never). A replica's answer to FETCH may be expired: the
    /// coordinator judges, after picking the newest version.
    Value { value: Vec<u8>, version: Version, expires: u64 },
    /// No live value; `version` is the tombstone's, if there is one.
    NotFound { version: Option<Version> },
    /// An error: a code for programs and a reason for people.
    Error { code: ErrorCode, reason: String },
    /// Figures for status.
    StatsReply(Stats),
    // Manager requests.
    /// A client asks for an id and the table.
    Hello,
    /// A node or client asks for the current table.
    GetTable,
    /// Node `id` listening at `addr` joins or rejoins.
    Register { id: u32, addr: String },
    /// A node is alive; `epoch` is the newest table it has.
    Heartbeat { epoch: u64 },
    /// A node announces a graceful leave.
    Leave,
    /// The partition table; `pending` is the table the cluster is moving to
    /// while sectors stream to their new holders; `contact` is a
    /// round-robin contact node.
    TableMsg { table: Table, pending: Option<Table>, contact: u32 },
    // Node to node.
    /// A write for a replica: a coordinator's fresh write, a write held for
    /// node `hint_for` (when not 0), or with `repair` set a copy of an older
    /// write (read repair, relays during moves, hint and orphan delivery).
    Store { entry: Entry, hint_for: u32, repair: bool },
    /// A replica read of `key`.
    Fetch { key: Vec<u8> },
    /// Ask for every entry of `sector`, unless the sender's digest of it
    /// (see `gtstore-protocol(5)`) already matches.
    Pull { sector: u32, digest: u64 },
    /// Part of a sector stream; `last` marks the end.
    Chunk { sector: u32, entries: Vec<Entry>, last: bool },
    /// A node has received every sector it needs for `epoch`.
    Synced { epoch: u64 },
    /// A node about to reap these tombstones of `sector` (older than the
    /// tombstone grace) asks every member, under table `epoch`, to put
    /// them over any older value of their keys it holds (its copy of the
    /// sector, hints): answered REAPED once that is durable, or an error.
    Reap { epoch: u64, sector: u32, entries: Vec<Entry> },
    /// The answer to REAP: how many older values were overwritten.
    Reaped { overwritten: u32 },
    // Authentication (`auth`): the first messages on a connection.
    /// The initiator asks to prove it holds the key of `kind`; its nonce.
    Auth { kind: KeyKind, nonce: Nonce },
    /// The responder's nonce and its proof that it holds the key.
    Challenge { nonce: Nonce, proof: Proof },
    /// The initiator's proof; no reply when it checks, ERROR AUTH if not.
    Prove { proof: Proof },
    /// A verb this build does not know; answered with an error.
    Unknown(String),
    // The other framings (see `frame`): never on the native wire.
    /// A RESP2 request or reply (the `--resp-listen` port, `gtstore-bench --resp`).
    Resp(super::resp::Value),
    /// An HTTP request head (the `--metrics-listen` port).
    Http(super::http::Request),
    /// Bytes written as they are (an HTTP reply).
    Raw(Vec<u8>),
}

/// A whole message: header fields and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Client id, node id, request id.
    pub header: Header,
    /// The verb and its fields.
    pub body: Body,
}

impl Body {
    /// An ERROR body with `code` and `reason`.
    pub fn error(code: ErrorCode, reason: impl Into<String>) -> Body {
        Body::Error { code, reason: reason.into() }
    }

    /// The verb on the wire.
    pub fn verb(&self) -> &str {
        match self {
            Body::Put { .. } => "PUT",
            Body::Get { .. } => "GET",
            Body::Del { .. } => "DEL",
            Body::Inspect { .. } => "INSPECT",
            Body::StatsReq => "STATS",
            Body::Ok => "OK",
            Body::Value { .. } => "VALUE",
            Body::NotFound { .. } => "NOT_FOUND",
            Body::Error { .. } => "ERROR",
            Body::StatsReply(_) => "STATS_REPLY",
            Body::Hello => "HELLO",
            Body::GetTable => "GET_TABLE",
            Body::Register { .. } => "REGISTER",
            Body::Heartbeat { .. } => "HEARTBEAT",
            Body::Leave => "LEAVE",
            Body::TableMsg { .. } => "TABLE",
            Body::Store { .. } => "STORE",
            Body::Fetch { .. } => "FETCH",
            Body::Pull { .. } => "PULL",
            Body::Chunk { .. } => "CHUNK",
            Body::Synced { .. } => "SYNCED",
            Body::Reap { .. } => "REAP",
            Body::Reaped { .. } => "REAPED",
            Body::Auth { .. } => "AUTH",
            Body::Challenge { .. } => "CHALLENGE",
            Body::Prove { .. } => "PROVE",
            Body::Unknown(v) => v,
            Body::Resp(_) => "RESP",
            Body::Http(_) => "HTTP",
            Body::Raw(_) => "RAW",
        }
    }
}

/// Finds one complete message at the start of `buf`.
///
/// Returns `Ok(Some(n))` with its total length, `Ok(None)` if more bytes
/// are needed, or an error as soon as the header is known to be bad.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Option<usize>, DecodeError> {
    Ok(check_header(buf, limits)?.map(|(nl, fields)| nl + 1 + fields.len as usize).filter(|&total| buf.len() >= total))
}

/// [`check`]'s work: the header line's end and fields once the line is
/// complete and the body length within the limit.
fn check_header<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<(usize, HeaderFields<'a>)>, DecodeError> {
    let scan = &buf[..buf.len().min(limits.max_header)];
    let Some(nl) = scan.iter().position(|&b| b == b'\n') else {
        if buf.len() >= limits.max_header {
            return Err(DecodeError::HeaderTooLong { limit: limits.max_header });
        }
        check_partial_header(buf)?;
        return Ok(None);
    };
    let fields = header_fields(&buf[..nl])?;
    if fields.len > limits.max_body as u64 {
        return Err(DecodeError::BodyTooLarge { len: fields.len, limit: limits.max_body });
    }
    Ok(Some((nl, fields)))
}

/// Parses exactly one message from `buf` (a slice [`check`] accepted).
pub fn parse(buf: &[u8]) -> Result<Message, DecodeError> {
    let nl = buf.iter().position(|&b| b == b'\n').ok_or(DecodeError::BadPayload("no header line"))?;
    let h = header_fields(&buf[..nl])?;
    let payload = buf.get(nl + 1..).ok_or(DecodeError::BadPayload("short"))?;
    parse_payload(h, payload)
}

/// [`check`] and [`parse`] in one pass over the header: the first message
/// of `buf` and its length, or `None` while it is incomplete.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some((nl, h)) = check_header(buf, limits)? else { return Ok(None) };
    let total = nl + 1 + h.len as usize;
    let Some(payload) = buf.get(nl + 1..total) else { return Ok(None) };
    Ok(Some((parse_payload(h, payload)?, total)))
}

fn parse_payload(h: HeaderFields<'_>, payload: &[u8]) -> Result<Message, DecodeError> {
    if payload.len() as u64 != h.len {
        return Err(DecodeError::BadPayload("length does not match"));
    }
    let mut r = Reader { buf: payload, pos: 0 };
    let body = parse_body(h.verb, &mut r)?;
    r.finish()?;
    let header = Header { client: h.client, node: h.node, req: h.req, deadline: h.deadline };
    Ok(Message { header, body })
}

/// Appends the wire form of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let h = &msg.header;
    let len = payload_len(&msg.body);
    out.reserve(len + 64);
    out.extend_from_slice(msg.body.verb().as_bytes());
    for n in [h.client, u64::from(h.node), len as u64, h.req] {
        out.push(b' ');
        put_decimal(out, n);
    }
    if h.deadline != 0 {
        out.push(b' ');
        put_decimal(out, h.deadline);
    }
    out.push(b'\n');
    write_body(&msg.body, out);
}

/// Appends `n` in decimal.
fn put_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The payload size [`write_body`] writes for `body` (it writes to a
/// counter), so the header can be written first and the payload after it.
fn payload_len(body: &Body) -> usize {
    let mut n = Counter(0);
    write_body(body, &mut n);
    n.0
}

/// Bytes `msg` takes on the wire, about (the header's numbers are counted
/// at their longest): for accounting of output held back.
pub fn encoded_len(msg: &Message) -> usize {
    msg.body.verb().len() + 5 * 21 + payload_len(&msg.body)
}

/// An ERROR reply to request `req`.
pub fn error_reply(req: u64, code: ErrorCode, reason: &str) -> Message {
    Message { header: Header { req, ..Header::default() }, body: Body::error(code, reason) }
}

/// Encodes `msg` into a fresh buffer.
pub fn to_bytes(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(msg, &mut out);
    out
}

/// The decoded header line.
struct HeaderFields<'a> {
    verb: &'a str,
    client: u64,
    node: u32,
    len: u64,
    req: u64,
    deadline: u64,
}

fn header_fields(line: &[u8]) -> Result<HeaderFields<'_>, DecodeError> {
    let mut parts: [&[u8]; 6] = [&[]; 6];
    let mut count = 0;
    for part in line.split(|&b| b == b' ') {
        if let Some(slot) = parts.get_mut(count) {
            *slot = part;
        }
        count += 1;
    }
    // Five fields, or six with a deadline.
    if count != 5 && count != 6 {
        return Err(DecodeError::FieldCount(count));
    }
    let [verb, client, node, len, req, deadline] = parts;
    let verb = std::str::from_utf8(verb).ok().filter(|v| is_verb(v)).ok_or(DecodeError::BadVerb)?;
    Ok(HeaderFields {
        verb,
        client: decimal(client, "CLIENT_ID")?,
        node: u32::try_from(decimal(node, "NODE_ID")?).map_err(|_| DecodeError::BadNumber("NODE_ID"))?,
        len: decimal(len, "LENGTH")?,
        req: decimal(req, "REQ_ID")?,
        deadline: if count == 6 { decimal(deadline, "DEADLINE")? } else { 0 },
    })
}

/// Rejects an unterminated header early when what has arrived is already wrong.
fn check_partial_header(buf: &[u8]) -> Result<(), DecodeError> {
    let verb_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
    let verb_ok = buf[..verb_end].iter().all(|&b| b.is_ascii_uppercase() || b == b'_');
    if !verb_ok || (verb_end < buf.len() && verb_end == 0) {
        return Err(DecodeError::BadVerb);
    }
    let rest = buf.get(verb_end..).unwrap_or(&[]);
    if rest.iter().any(|&b| !(b.is_ascii_digit() || b == b' ')) {
        return Err(DecodeError::BadNumber("header"));
    }
    Ok(())
}

fn is_verb(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// A plain decimal: digits only, no sign, at most 20 digits, fits in u64.
fn decimal(s: &[u8], what: &'static str) -> Result<u64, DecodeError> {
    if s.is_empty() || s.len() > 20 {
        return Err(DecodeError::BadNumber(what));
    }
    s.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9).ok_or(DecodeError::BadNumber(what))?;
        n.checked_mul(10).and_then(|n| n.checked_add(u64::from(digit))).ok_or(DecodeError::BadNumber(what))
    })
}

/// A cursor over a payload; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::BadPayload("length overflow"))?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::BadPayload("field runs past the end"))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A fixed-size field (a nonce, a proof): its bytes, no length prefix.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    /// An error code word: 1 to [`MAX_CODE_WORD`] capitals, digits or
    /// underscores. A known word allocates nothing; an unknown one becomes
    /// [`ErrorCode::Other`].
    fn code(&mut self) -> Result<ErrorCode, DecodeError> {
        let n = self.u32()? as usize;
        let w = self.take(n)?;
        let is_word = (1..=MAX_CODE_WORD).contains(&w.len())
            && w.iter().all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        match std::str::from_utf8(w) {
            Ok(w) if is_word => Ok(ErrorCode::from_word(w)),
            _ => Err(DecodeError::BadPayload("error code is not a word of capitals")),
        }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?).map_err(|_| DecodeError::BadPayload("text is not UTF-8"))
    }

    fn version(&mut self) -> Result<Version, DecodeError> {
        Version::decode(self.take(Version::WIRE_LEN)?).ok_or(DecodeError::BadPayload("version"))
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadPayload("flag is not 0 or 1")),
        }
    }

    /// A count of items that each take at least `min_size` bytes, checked
    /// against the bytes left so no allocation is sized by a lie.
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(min_size.max(1)) > left {
            return Err(DecodeError::BadPayload("count larger than the payload"));
        }
        Ok(n)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError::BadPayload("trailing bytes"))
        }
    }
}

/// Where a payload is written: a [`Counter`] that only adds up its size
/// or a `Vec<u8>` that stores the bytes. Each layout below is written
/// once against this trait, so the size in the header and the bytes after
/// it cannot disagree. The methods mirror [`Reader`]'s.
trait Sink {
    /// Raw bytes, no length prefix.
    fn raw(&mut self, b: &[u8]);

    fn u8(&mut self, v: u8) {
        self.raw(&[v]);
    }

    fn u32(&mut self, v: u32) {
        self.raw(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.raw(&v.to_be_bytes());
    }

    /// A byte string with its 4-byte length prefix.
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.raw(b);
    }

    fn flag(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// The 16 bytes of [`Version::encode`].
    fn version(&mut self, v: &Version) {
        self.u64(v.ms);
        self.u32(v.counter);
        self.u32(v.node);
    }
}

/// A sink that counts bytes.
struct Counter(usize);

impl Sink for Counter {
    fn raw(&mut self, b: &[u8]) {
        self.0 += b.len();
    }
}

impl Sink for Vec<u8> {
    fn raw(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

// ----- payload layouts: each writer next to its reader ------------------

/// Entry: key bytes, version, a kind byte (0 a tombstone, 1 a value, 2 a
/// value with an expiry), the expiry u64 if the kind is 2, then the value
/// bytes unless the kind is 0.
fn write_entry<S: Sink>(s: &mut S, e: &Entry) {
    s.bytes(&e.key);
    s.version(&e.version);
    match &e.value {
        None => s.u8(ENTRY_TOMBSTONE),
        Some(v) if e.expires != 0 => {
            s.u8(ENTRY_EXPIRING);
            s.u64(e.expires);
            s.bytes(v);
        }
        Some(v) => {
            s.u8(ENTRY_VALUE);
            s.bytes(v);
        }
    }
}

/// The kind bytes of an entry (see [`write_entry`]).
const ENTRY_TOMBSTONE: u8 = 0;
const ENTRY_VALUE: u8 = 1;
const ENTRY_EXPIRING: u8 = 2;

/// A count, then that many entries (CHUNK, REAP).
fn write_entries<S: Sink>(s: &mut S, entries: &[Entry]) {
    s.u32(entries.len() as u32);
    entries.iter().for_each(|e| write_entry(s, e));
}

/// The twin of [`write_entries`]; the count is checked against the bytes left.
fn read_entries(r: &mut Reader<'_>) -> Result<Vec<Entry>, DecodeError> {
    let n = r.count(MIN_ENTRY)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(read_entry(r)?);
    }
    Ok(entries)
}

fn read_entry(r: &mut Reader<'_>) -> Result<Entry, DecodeError> {
    let key = r.bytes()?;
    let version = r.version()?;
    let (value, expires) = match r.u8()? {
        ENTRY_TOMBSTONE => (None, 0),
        ENTRY_VALUE => (Some(r.bytes()?), 0),
        ENTRY_EXPIRING => match r.u64()? {
            0 => return Err(DecodeError::BadPayload("expiry of 0")),
            at => (Some(r.bytes()?), at),
        },
        _ => return Err(DecodeError::BadPayload("entry kind")),
    };
    Ok(Entry { key, version, value, expires })
}

/// The smallest encoded entry (empty key, tombstone).
const MIN_ENTRY: usize = 4 + Version::WIRE_LEN + 1;

/// Table: epoch u64, rep, R, W u32, a counted list of members (id u32,
/// address bytes, state u8), a counted list of sector owners (u32 each).
fn write_table<S: Sink>(s: &mut S, t: &Table) {
    s.u64(t.epoch);
    s.u32(t.rep);
    s.u32(t.read_quorum);
    s.u32(t.write_quorum);
    s.u32(t.members.len() as u32);
    for m in &t.members {
        s.u32(m.id);
        s.bytes(m.addr.as_bytes());
        s.u8(m.state.code());
    }
    s.u32(t.owners.len() as u32);
    for &o in &t.owners {
        s.u32(o);
    }
}

fn read_table(r: &mut Reader<'_>) -> Result<Table, DecodeError> {
    let epoch = r.u64()?;
    let (rep, read_quorum, write_quorum) = (r.u32()?, r.u32()?, r.u32()?);
    let n = r.count(9)?;
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.u32()?;
        let addr = r.string()?;
        let state = NodeState::from_code(r.u8()?).ok_or(DecodeError::BadPayload("node state"))?;
        members.push(Member { id, addr, state });
    }
    let q = r.count(4)?;
    if q == 0 {
        return Err(DecodeError::BadPayload("table with no sectors"));
    }
    let mut owners = Vec::with_capacity(q);
    for _ in 0..q {
        owners.push(r.u32()?);
    }
    Ok(Table { epoch, rep, read_quorum, write_quorum, members, owners })
}

/// The figures block of STATS_REPLY: fixed fields, no lengths.
fn write_figures<S: Sink>(s: &mut S, f: &Figures) {
    s.u32(f.held);
    s.u64(f.tombstones);
    s.u64(f.hints);
    s.u32(f.pulls);
    s.u32(f.ops);
    for v in f.requests.iter().chain(&f.errors).chain(f.latency.iter().flatten()) {
        s.u64(*v);
    }
}

/// Reads what [`write_figures`] wrote.
fn read_figures(r: &mut Reader<'_>) -> Result<Figures, DecodeError> {
    let mut f =
        Figures { held: r.u32()?, tombstones: r.u64()?, hints: r.u64()?, pulls: r.u32()?, ..Figures::default() };
    f.ops = r.u32()?;
    for v in f.requests.iter_mut().chain(&mut f.errors).chain(f.latency.iter_mut().flatten()) {
        *v = r.u64()?;
    }
    Ok(f)
}

/// Every verb's payload, in field order (`gtstore-protocol(5)` has the
/// same list); [`parse_body`] below reads the same fields back.
fn write_body<S: Sink>(body: &Body, s: &mut S) {
    match body {
        Body::Put { key, value, expiry } => {
            s.bytes(key);
            s.bytes(value);
            let (kind, n) = expiry.wire();
            s.u8(kind);
            s.u64(n);
        }
        Body::Get { key } | Body::Del { key } | Body::Inspect { key } | Body::Fetch { key } => s.bytes(key),
        Body::StatsReq | Body::Ok | Body::Hello | Body::GetTable | Body::Leave | Body::Unknown(_) => {}
        // Written by their own framing (`frame::encode`), never natively.
        Body::Resp(_) | Body::Http(_) | Body::Raw(_) => {}
        Body::Value { value, version, expires } => {
            s.version(version);
            s.u64(*expires);
            s.bytes(value);
        }
        Body::NotFound { version } => {
            s.flag(version.is_some());
            if let Some(v) = version {
                s.version(v);
            }
        }
        Body::Error { code, reason } => {
            s.bytes(code.word().as_bytes());
            s.bytes(reason.as_bytes());
        }
        Body::StatsReply(st) => {
            s.u32(st.sectors);
            s.u64(st.keys);
            s.u32(st.missing);
            if let Some(f) = &st.figures {
                write_figures(s, f);
            }
        }
        Body::Register { id, addr } => {
            s.u32(*id);
            s.bytes(addr.as_bytes());
        }
        Body::Heartbeat { epoch } | Body::Synced { epoch } => s.u64(*epoch),
        Body::TableMsg { table, pending, contact } => {
            s.u32(*contact);
            write_table(s, table);
            s.flag(pending.is_some());
            if let Some(p) = pending {
                write_table(s, p);
            }
        }
        Body::Store { entry, hint_for, repair } => {
            s.u32(*hint_for);
            s.flag(*repair);
            write_entry(s, entry);
        }
        Body::Pull { sector, digest } => {
            s.u32(*sector);
            s.u64(*digest);
        }
        Body::Chunk { sector, entries, last } => {
            s.u32(*sector);
            s.flag(*last);
            write_entries(s, entries);
        }
        Body::Reaped { overwritten } => s.u32(*overwritten),
        Body::Reap { epoch, sector, entries } => {
            s.u64(*epoch);
            s.u32(*sector);
            write_entries(s, entries);
        }
        Body::Auth { kind, nonce } => {
            s.u8(kind.wire());
            s.raw(nonce);
        }
        Body::Challenge { nonce, proof } => {
            s.raw(nonce);
            s.raw(proof);
        }
        Body::Prove { proof } => s.raw(proof),
    }
}

/// Reads the payload of `verb`; the twin of [`write_body`], arm for arm.
fn parse_body(verb: &str, r: &mut Reader<'_>) -> Result<Body, DecodeError> {
    Ok(match verb {
        "PUT" => {
            let (key, value) = (r.bytes()?, r.bytes()?);
            let kind = r.u8()?;
            Body::Put { key, value, expiry: Expiry::from_wire(kind, r.u64()?)? }
        }
        "GET" => Body::Get { key: r.bytes()? },
        "DEL" => Body::Del { key: r.bytes()? },
        "INSPECT" => Body::Inspect { key: r.bytes()? },
        "FETCH" => Body::Fetch { key: r.bytes()? },
        "STATS" => Body::StatsReq,
        "OK" => Body::Ok,
        "HELLO" => Body::Hello,
        "GET_TABLE" => Body::GetTable,
        "LEAVE" => Body::Leave,
        "VALUE" => {
            let version = r.version()?;
            let expires = r.u64()?;
            Body::Value { version, expires, value: r.bytes()? }
        }
        "NOT_FOUND" => Body::NotFound { version: if r.flag()? { Some(r.version()?) } else { None } },
        "ERROR" => Body::Error { code: r.code()?, reason: r.string()? },
        "STATS_REPLY" => {
            let (sectors, keys, missing) = (r.u32()?, r.u64()?, r.u32()?);
            let figures = if r.pos < r.buf.len() { Some(Box::new(read_figures(r)?)) } else { None };
            Body::StatsReply(Stats { sectors, keys, missing, figures })
        }
        "REGISTER" => Body::Register { id: r.u32()?, addr: r.string()? },
        "HEARTBEAT" => Body::Heartbeat { epoch: r.u64()? },
        "SYNCED" => Body::Synced { epoch: r.u64()? },
        "TABLE" => {
            let contact = r.u32()?;
            let table = read_table(r)?;
            let pending = if r.flag()? { Some(read_table(r)?) } else { None };
            Body::TableMsg { table, pending, contact }
        }
        "STORE" => {
            let hint_for = r.u32()?;
            let repair = r.flag()?;
            Body::Store { hint_for, repair, entry: read_entry(r)? }
        }
        "PULL" => Body::Pull { sector: r.u32()?, digest: r.u64()? },
        "CHUNK" => {
            let sector = r.u32()?;
            let last = r.flag()?;
            let entries = read_entries(r)?;
            Body::Chunk { sector, entries, last }
        }
        "REAPED" => Body::Reaped { overwritten: r.u32()? },
        "REAP" => {
            let epoch = r.u64()?;
            let sector = r.u32()?;
            let entries = read_entries(r)?;
            Body::Reap { epoch, sector, entries }
        }
        "AUTH" => {
            let kind = KeyKind::from_wire(r.u8()?).ok_or(DecodeError::BadPayload("key kind"))?;
            Body::Auth { kind, nonce: r.array()? }
        }
        "CHALLENGE" => Body::Challenge { nonce: r.array()?, proof: r.array()? },
        "PROVE" => Body::Prove { proof: r.array()? },
        other => {
            r.pos = r.buf.len();
            Body::Unknown(other.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: Body) -> Message {
        Message { header: Header { client: 7, node: 3, req: 42, deadline: 0 }, body }
    }

    fn every_variant() -> Vec<Message> {
        let v = Version { ms: 1_700_000_000_000, counter: 2, node: 3 };
        let entry = Entry { key: b"k\xff\x00".to_vec(), version: v, value: Some(b"v\n".to_vec()), expires: 0 };
        let expiring =
            Entry { key: b"soon".to_vec(), version: v, value: Some(b"v".to_vec()), expires: 1_800_000_000_000 };
        let tomb = Entry { key: b"gone".to_vec(), version: v, value: None, expires: 0 };
        let mut table = Table::new(8, 3, 2, 2);
        table.assign_join(1, "127.0.0.1:7001");
        table.assign_join(2, "127.0.0.1:7002");
        vec![
            Body::Put { key: b"key1".to_vec(), value: b"value1".to_vec(), expiry: Expiry::Never },
            Body::Put { key: b"k".to_vec(), value: vec![], expiry: Expiry::After(1_500) },
            Body::Put { key: b"k".to_vec(), value: b"v".to_vec(), expiry: Expiry::At(u64::MAX) },
            Body::Get { key: b"key1".to_vec() },
            Body::Del { key: vec![] },
            Body::Inspect { key: b"x".to_vec() },
            Body::StatsReq,
            Body::Ok,
            Body::Value { value: vec![0, 1, 2], version: v, expires: 0 },
            Body::Value { value: vec![], version: v, expires: 1_800_000_000_000 },
            Body::NotFound { version: None },
            Body::NotFound { version: Some(v) },
            Body::Error { code: ErrorCode::Retry, reason: "no quorum".into() },
            Body::Error { code: ErrorCode::Other("NEWER_CODE_2".into()), reason: String::new() },
            Body::StatsReply(Stats { sectors: 3, keys: 99, missing: 1, figures: None }),
            Body::StatsReply(Stats {
                sectors: 3,
                keys: 99,
                missing: 1,
                figures: Some(Box::new(Figures {
                    held: 4,
                    tombstones: 5,
                    hints: 6,
                    pulls: 7,
                    ops: 8,
                    requests: [9, 10, 11, 12, 13],
                    errors: [14, 15, 16, 17, 18],
                    latency: [[19, 20, 21], [22, 23, 24], [25, 26, 27]],
                })),
            }),
            Body::Hello,
            Body::GetTable,
            Body::Register { id: 4, addr: "127.0.0.1:7004".into() },
            Body::Heartbeat { epoch: 9 },
            Body::Leave,
            Body::TableMsg { table: table.clone(), pending: None, contact: 2 },
            Body::TableMsg { table: table.clone(), pending: Some(table), contact: 0 },
            Body::Store { entry: entry.clone(), hint_for: 0, repair: false },
            Body::Store { entry: tomb.clone(), hint_for: 5, repair: true },
            Body::Store { entry: expiring.clone(), hint_for: 0, repair: true },
            Body::Fetch { key: b"k".to_vec() },
            Body::Pull { sector: 17, digest: u64::MAX },
            Body::Chunk { sector: 17, entries: vec![entry, expiring, tomb], last: true },
            Body::Chunk { sector: 1, entries: vec![], last: false },
            Body::Synced { epoch: 12 },
            Body::Reaped { overwritten: 2 },
            Body::Reap {
                epoch: 3,
                sector: 9,
                entries: vec![Entry { key: b"x".to_vec(), version: v, value: None, expires: 0 }],
            },
            Body::Auth { kind: KeyKind::Client, nonce: [3; 32] },
            Body::Challenge { nonce: [4; 32], proof: [5; 32] },
            Body::Prove { proof: [6; 32] },
        ]
        .into_iter()
        .map(msg)
        .collect()
    }

    #[test]
    fn every_variant_round_trips() {
        for m in every_variant() {
            let wire = to_bytes(&m);
            assert_eq!(check(&wire, &Limits::default()), Ok(Some(wire.len())), "{m:?}");
            assert_eq!(parse(&wire).as_ref(), Ok(&m));
        }
    }

    #[test]
    fn golden_put_wire_form() {
        let m = Message {
            header: Header { client: 1, node: 0, req: 5, deadline: 1_796_083_200_300 },
            body: Body::Put { key: b"a".to_vec(), value: b"bc".to_vec(), expiry: Expiry::After(1000) },
        };
        let wire = b"PUT 1 0 20 5 1796083200300\n\x00\x00\x00\x01a\x00\x00\x00\x02bc\x01\0\0\0\0\0\0\x03\xe8";
        assert_eq!(to_bytes(&m), wire);
        assert_eq!(parse(wire), Ok(m));
    }

    #[test]
    fn the_protocol_page_examples_are_what_the_codec_writes() {
        let put = Message {
            header: Header { client: 3, node: 0, req: 1, deadline: 0 },
            body: Body::Put { key: b"key1".to_vec(), value: b"value1".to_vec(), expiry: Expiry::Never },
        };
        let wire = to_bytes(&put);
        assert!(wire.starts_with(b"PUT 3 0 27 1\n"));
        assert_eq!(wire.len(), 40);
        let value = Message {
            header: Header { client: 3, node: 2, req: 2, deadline: 0 },
            body: Body::Value {
                value: b"value1".to_vec(),
                version: Version { ms: 1_795_564_800_000, counter: 0, node: 2 },
                expires: 0,
            },
        };
        let wire = to_bytes(&value);
        assert!(wire.starts_with(b"VALUE 3 2 34 2\n"));
        assert_eq!(&wire[15..23], &[0, 0, 1, 0xa2, 0x10, 0, 0x88, 0]);
    }

    #[test]
    fn bad_expiries_are_malformed() {
        // PUT "a" "" with each (kind, n); only (0, 0), (1, n>0), (2, n>0) parse.
        for (kind, n, ok) in
            [(0u8, 0u64, true), (0, 5, false), (1, 0, false), (2, 0, false), (3, 1, false), (2, 9, true)]
        {
            let mut payload = b"\x00\x00\x00\x01a\x00\x00\x00\x00".to_vec();
            payload.push(kind);
            payload.extend_from_slice(&n.to_be_bytes());
            let mut wire = format!("PUT 0 0 {} 1\n", payload.len()).into_bytes();
            wire.extend_from_slice(&payload);
            assert_eq!(parse(&wire).is_ok(), ok, "kind {kind} n {n}");
        }
        // A STORE entry of kind 2 with a zero expiry, and of an unknown kind.
        for (kind, expiry) in [(2u8, 0u64), (3, 1)] {
            let mut payload = vec![0, 0, 0, 0, 1];
            payload.extend_from_slice(b"\x00\x00\x00\x01k");
            payload.extend_from_slice(&[0; 16]);
            payload.push(kind);
            payload.extend_from_slice(&expiry.to_be_bytes());
            payload.extend_from_slice(b"\x00\x00\x00\x01v");
            let mut wire = format!("STORE 0 0 {} 1\n", payload.len()).into_bytes();
            wire.extend_from_slice(&payload);
            assert!(matches!(parse(&wire), Err(DecodeError::BadPayload(_))), "kind {kind}");
        }
    }

    #[test]
    fn golden_error_wire_form() {
        let m = Message {
            header: Header { client: 0, node: 2, req: 9, deadline: 0 },
            body: Body::Error { code: ErrorCode::TooLarge, reason: "big".into() },
        };
        let wire = b"ERROR 0 2 20 9\n\x00\x00\x00\x09TOO_LARGE\x00\x00\x00\x03big";
        assert_eq!(to_bytes(&m), wire);
        assert_eq!(parse(wire), Ok(m));
    }

    #[test]
    fn an_unknown_error_code_still_decodes() {
        let wire = b"ERROR 0 0 18 4\n\x00\x00\x00\x07SLOW_UP\x00\x00\x00\x03try";
        let want = Body::Error { code: ErrorCode::Other("SLOW_UP".into()), reason: "try".into() };
        assert_eq!(check(wire, &Limits::default()), Ok(Some(wire.len())));
        assert_eq!(decode(wire, &Limits::default()).map(|m| m.map(|(m, _)| m.body)), Ok(Some(want)));
    }

    #[test]
    fn error_code_words_round_trip_and_garbage_is_malformed() {
        for code in ErrorCode::KNOWN {
            assert_eq!(ErrorCode::from_word(code.word()), code);
            let m = msg(Body::Error { code: code.clone(), reason: format!("about {code}") });
            assert_eq!(parse(&to_bytes(&m)), Ok(m));
        }
        for bad in [&b""[..], b"retry", b"NO TABLE", b"\xff", &[b'A'; MAX_CODE_WORD + 1]] {
            let mut payload = (bad.len() as u32).to_be_bytes().to_vec();
            payload.extend_from_slice(bad);
            payload.extend_from_slice(&[0, 0, 0, 0]);
            let mut wire = format!("ERROR 0 0 {} 1\n", payload.len()).into_bytes();
            wire.extend_from_slice(&payload);
            assert!(matches!(parse(&wire), Err(DecodeError::BadPayload(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_protocol_page_describes_every_error_code() {
        let page = include_str!("../../man/gtstore-protocol.5");
        for code in ErrorCode::KNOWN {
            assert!(page.contains(&format!("\n.It Cm {code}\n")), "gtstore-protocol(5) does not describe {code}");
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for m in every_variant() {
            let wire = to_bytes(&m);
            for i in 0..wire.len() {
                assert_eq!(check(&wire[..i], &Limits::default()), Ok(None), "{m:?} at {i}");
                assert_eq!(decode(&wire[..i], &Limits::default()), Ok(None), "{m:?} at {i}");
            }
        }
    }

    #[test]
    fn pipelined_messages_split_cleanly() {
        let all: Vec<u8> = every_variant().iter().flat_map(to_bytes).collect();
        let mut pos = 0;
        let mut n = 0;
        let want = every_variant();
        while let Some((msg, len)) = decode(&all[pos..], &Limits::default()).unwrap() {
            assert_eq!(check(&all[pos..], &Limits::default()), Ok(Some(len)));
            assert_eq!(msg, want[n]);
            pos += len;
            n += 1;
        }
        assert_eq!((n, pos), (every_variant().len(), all.len()));
    }

    #[test]
    fn malformed_headers_have_distinct_errors() {
        let l = Limits { max_header: 64, max_body: 100 };
        let cases: Vec<(&[u8], DecodeError)> = vec![
            (b"GET x 0 0 1\n", DecodeError::BadNumber("CLIENT_ID")),
            (b"GET 1 0 -5 1\n", DecodeError::BadNumber("LENGTH")),
            (b"GET 1 0 5\n", DecodeError::FieldCount(4)),
            (b"GET 1 0 5 1 9 9\n", DecodeError::FieldCount(7)),
            (b"GET 1 0 5 1 99999999999999999999999\n", DecodeError::BadNumber("DEADLINE")),
            (b"get 1 0 5 1\n", DecodeError::BadVerb),
            (b" 1 0 5 1\n", DecodeError::BadVerb),
            (b"GET 1 0 101 1\n", DecodeError::BodyTooLarge { len: 101, limit: 100 }),
            (b"GET 1 0 99999999999999999999999 1\n", DecodeError::BadNumber("LENGTH")),
            (b"GET 1 99999999999 0 1\n", DecodeError::BadNumber("NODE_ID")),
            (&[b'A'; 64], DecodeError::HeaderTooLong { limit: 64 }),
            (b"\x00\x01garbage", DecodeError::BadVerb),
            (b"GET 1 x", DecodeError::BadNumber("header")),
        ];
        for (input, want) in cases {
            assert_eq!(check(input, &l), Err(want.clone()), "{:?}", String::from_utf8_lossy(input));
            assert_eq!(decode(input, &l), Err(want), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_the_payload_arrives() {
        let l = Limits::default();
        let r = check(b"PUT 0 0 18446744073709551615 1\n", &l);
        assert!(matches!(r, Err(DecodeError::BodyTooLarge { .. })));
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        for wire in [
            &b"PUT 0 0 3 1\n\x00\x00\x09"[..],
            b"CHUNK 0 0 9 1\n\x00\x00\x00\x01\x01\xff\xff\xff\xff",
            b"OK 0 0 1 1\nx",
        ] {
            assert!(matches!(parse(wire), Err(DecodeError::BadPayload(_))), "{wire:?}");
        }
    }

    #[test]
    fn a_stats_reply_has_its_figures_whole_or_not_at_all() {
        let old = b"STATS_REPLY 0 1 16 1\n\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x63\x00\x00\x00\x01";
        let want = Stats { sectors: 3, keys: 99, missing: 1, figures: None };
        assert_eq!(parse(old).map(|m| m.body), Ok(Body::StatsReply(want.clone())), "a reply of an older node");
        let full = to_bytes(&msg(Body::StatsReply(Stats { figures: Some(Box::default()), ..want })));
        let body_at = full.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(full.len() - body_at, 16 + 180);
        // A figures block cut anywhere (with a header that says so) is malformed.
        for cut in 1..180 {
            let mut wire = format!("STATS_REPLY 0 1 {} 1\n", 16 + cut).into_bytes();
            wire.extend_from_slice(&full[body_at..body_at + 16 + cut]);
            assert!(matches!(parse(&wire), Err(DecodeError::BadPayload(_))), "cut at {cut}");
        }
    }

    #[test]
    fn unknown_verbs_parse_for_an_error_reply() {
        let m = parse(b"FROB 0 0 2 1\nhi").unwrap();
        assert_eq!(m.body, Body::Unknown("FROB".into()));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let l = Limits::default();
        let samples: Vec<Vec<u8>> = every_variant().iter().map(to_bytes).collect();
        for i in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut buf = samples[i % samples.len()].clone();
            let flips = (seed % 4) as usize + 1;
            for f in 0..flips {
                let at = ((seed >> (8 * f)) as usize) % buf.len();
                buf[at] = (seed >> (3 * f)) as u8;
            }
            buf.truncate(((seed >> 40) as usize) % (buf.len() + 1));
            // One pass or two, the same verdict.
            let two_pass = check(&buf, &l).map(|n| n.map(|n| (parse(&buf[..n]), n)));
            match (two_pass, decode(&buf, &l)) {
                (Ok(None), Ok(None)) => {}
                (Ok(Some((Ok(a), n))), Ok(Some((b, m)))) => assert_eq!((a, n), (b, m)),
                (Ok(Some((Err(a), _))), Err(b)) | (Err(a), Err(b)) => assert_eq!(a, b),
                (two, one) => panic!("check+parse {two:?} but decode {one:?}"),
            }
        }
    }
}
