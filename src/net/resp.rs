//! RESP2, the Redis serialization protocol, as a second framing of the
//! event loop (see `frame`): what a node's `--resp-listen` port reads and
//! writes, and what `gtstore-bench --resp` speaks to Redis, Valkey or a node.
//!
//! A request is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`)
//! or, as typed into `redis-cli` or telnet, an inline command: one line of
//! words separated by blanks, with `"..."` and `'...'` quoting as Redis
//! reads it. Replies are simple strings, errors, integers, bulk strings,
//! nil, arrays and the nil array.
//!
//! A connection that says `HELLO 3` is answered in RESP3 where that differs
//! for the commands a node serves: the null `_` and maps (`Value::Null`,
//! `Value::Map`); clients such as redis-py 8 speak RESP3 by default and do
//! not fall back. Requests are the same in both.
//!
//! [`decode`] finds and parses one value at the start of a buffer, or says
//! more bytes are needed; it never panics and never allocates from a length
//! it has not checked against [`RespLimits`]: a bulk string's length is
//! checked before anything is reserved, and an array grows as its elements
//! arrive. [`encode`] appends a value's wire form.

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`: a status line (no CR or LF inside).
    Simple(String),
    /// `-ERR reason`: an error line, its first word a code.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`: binary safe.
    Bulk(Vec<u8>),
    /// `$-1`: no value.
    Nil,
    /// `*2\r\n...`.
    Array(Vec<Value>),
    /// `*-1`: no array.
    NilArray,
    /// RESP3's `_`: the null of a connection that said `HELLO 3`.
    Null,
    /// RESP3's `%2\r\n...`: pairs of keys and values.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// This value as a RESP3 connection is answered: nils become `_`.
    pub fn into_resp3(self) -> Value {
        match self {
            Value::Nil | Value::NilArray => Value::Null,
            Value::Array(items) => Value::Array(items.into_iter().map(Value::into_resp3).collect()),
            Value::Map(pairs) => Value::Map(pairs.into_iter().map(|(k, v)| (k.into_resp3(), v.into_resp3())).collect()),
            other => other,
        }
    }

    /// This value as a RESP2 connection is answered: a map becomes a flat array.
    pub fn into_resp2(self) -> Value {
        match self {
            Value::Null => Value::Nil,
            Value::Map(pairs) => Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v.into_resp2()]).collect()),
            Value::Array(items) => Value::Array(items.into_iter().map(Value::into_resp2).collect()),
            other => other,
        }
    }

    /// A bulk string of `bytes`.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Value {
        Value::Bulk(bytes.into())
    }

    /// An error reply `-{text}` (line breaks are replaced by blanks).
    pub fn error(text: impl Into<String>) -> Value {
        Value::Error(one_line(text.into()))
    }

    /// `+OK`.
    pub fn ok() -> Value {
        Value::Simple("OK".into())
    }

    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

fn one_line(s: String) -> String {
    if s.contains(['\r', '\n']) {
        s.replace(['\r', '\n'], " ")
    } else {
        s
    }
}

/// What a receiver accepts.
#[derive(Clone, Copy, Debug)]
pub struct RespLimits {
    /// Largest bulk string.
    pub max_bulk: usize,
    /// Most elements in one array.
    pub max_elements: usize,
    /// Longest inline command or type line, CRLF included.
    pub max_line: usize,
    /// Deepest nesting of arrays (requests are flat; replies nest little).
    pub max_depth: usize,
    /// Whether a line not starting with a type byte is an inline command
    /// (a server's input), or an error (a client reading replies).
    pub inline: bool,
}

impl RespLimits {
    /// A server's limits: bulk strings up to `max_bulk`, inline commands.
    pub fn server(max_bulk: usize) -> RespLimits {
        RespLimits { max_bulk, max_elements: 1 << 20, max_line: 64 * 1024, max_depth: 1, inline: true }
    }

    /// A client's limits, for replies.
    pub fn client(max_bulk: usize) -> RespLimits {
        RespLimits { max_bulk, max_elements: 1 << 20, max_line: 64 * 1024, max_depth: 8, inline: false }
    }
}

/// Why input is not RESP; the connection is answered `-ERR Protocol error: ...` and closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespError {
    /// A line has no CRLF within the limit.
    LineTooLong,
    /// A length or integer that is not a decimal in range.
    BadNumber(&'static str),
    /// A bulk string over the limit.
    BulkTooLarge(i64),
    /// An array with too many elements.
    TooManyElements(i64),
    /// Arrays nested too deep, or a request that is not flat.
    TooDeep,
    /// A type byte RESP2 does not have (replies), or bad framing.
    Unexpected(&'static str),
    /// An inline command with an unbalanced quote.
    Unbalanced,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::LineTooLong => write!(f, "too big inline request"),
            RespError::BadNumber(what) => write!(f, "invalid {what}"),
            RespError::BulkTooLarge(n) => write!(f, "invalid bulk length {n}"),
            RespError::TooManyElements(n) => write!(f, "invalid multibulk length {n}"),
            RespError::TooDeep => write!(f, "nested arrays are not a command"),
            RespError::Unexpected(what) => write!(f, "{what}"),
            RespError::Unbalanced => write!(f, "unbalanced quotes in request"),
        }
    }
}

impl std::error::Error for RespError {}

/// The first value of `buf` and the bytes it takes, or `None` while it is
/// incomplete. An inline command comes back as an array of bulk strings
/// (empty for a blank line, which Redis ignores).
pub fn decode(buf: &[u8], limits: &RespLimits) -> Result<Option<(Value, usize)>, RespError> {
    let mut r = Cursor { buf, pos: 0, limits };
    match r.value(0)? {
        Some(v) => Ok(Some((v, r.pos))),
        None => Ok(None),
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a RespLimits,
}

impl<'a> Cursor<'a> {
    /// The next line without its CRLF (a bare LF ends an inline line too).
    fn line(&mut self) -> Result<Option<&'a [u8]>, RespError> {
        let buf: &'a [u8] = self.buf;
        let rest = &buf[self.pos..];
        let scan = &rest[..rest.len().min(self.limits.max_line)];
        let Some(lf) = scan.iter().position(|&b| b == b'\n') else {
            if rest.len() >= self.limits.max_line {
                return Err(RespError::LineTooLong);
            }
            return Ok(None);
        };
        let end = if lf > 0 && rest[lf - 1] == b'\r' { lf - 1 } else { lf };
        self.pos += lf + 1;
        Ok(Some(&rest[..end]))
    }

    fn value(&mut self, depth: usize) -> Result<Option<Value>, RespError> {
        let Some(&first) = self.buf.get(self.pos) else { return Ok(None) };
        let resp3 = !self.limits.inline && matches!(first, b'_' | b'%');
        if !matches!(first, b'*' | b'$' | b'+' | b'-' | b':') && !resp3 {
            if depth > 0 || !self.limits.inline {
                return Err(RespError::Unexpected("expected a RESP type byte"));
            }
            let Some(line) = self.line()? else { return Ok(None) };
            return inline_words(line).map(|w| Some(Value::Array(w.into_iter().map(Value::Bulk).collect())));
        }
        let Some(line) = self.line()? else { return Ok(None) };
        let text = &line[1..];
        match first {
            b'+' => Ok(Some(Value::Simple(String::from_utf8_lossy(text).into_owned()))),
            b'-' => Ok(Some(Value::Error(String::from_utf8_lossy(text).into_owned()))),
            b':' => Ok(Some(Value::Integer(number(text, "integer")?))),
            b'$' => self.bulk(number(text, "bulk length")?),
            b'_' => Ok(Some(Value::Null)),
            b'%' => self.map(number(text, "map length")?, depth),
            _ => self.array(number(text, "multibulk length")?, depth),
        }
    }

    fn bulk(&mut self, len: i64) -> Result<Option<Value>, RespError> {
        if len == -1 {
            return Ok(Some(Value::Nil));
        }
        let n = usize::try_from(len).map_err(|_| RespError::BulkTooLarge(len))?;
        if n > self.limits.max_bulk {
            return Err(RespError::BulkTooLarge(len));
        }
        let Some(body) = self.buf.get(self.pos..self.pos + n + 2) else { return Ok(None) };
        if &body[n..] != b"\r\n" {
            return Err(RespError::Unexpected("bulk string not followed by CRLF"));
        }
        self.pos += n + 2;
        Ok(Some(Value::Bulk(body[..n].to_vec())))
    }

    fn array(&mut self, len: i64, depth: usize) -> Result<Option<Value>, RespError> {
        if len == -1 {
            return Ok(Some(Value::NilArray));
        }
        let n = usize::try_from(len).map_err(|_| RespError::TooManyElements(len))?;
        if n > self.limits.max_elements {
            return Err(RespError::TooManyElements(len));
        }
        let mut items = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            if self.limits.inline {
                // A request: every element is a bulk string.
                match self.buf.get(self.pos) {
                    None => return Ok(None),
                    Some(b'$') => {}
                    Some(_) => return Err(RespError::Unexpected("expected '$' in a request")),
                }
            } else if depth + 1 > self.limits.max_depth {
                return Err(RespError::TooDeep);
            }
            match self.value(depth + 1)? {
                Some(v) => items.push(v),
                None => return Ok(None),
            }
        }
        Ok(Some(Value::Array(items)))
    }
}

impl Cursor<'_> {
    /// A RESP3 map's pairs (replies only).
    fn map(&mut self, len: i64, depth: usize) -> Result<Option<Value>, RespError> {
        let n = usize::try_from(len).map_err(|_| RespError::TooManyElements(len))?;
        if n > self.limits.max_elements / 2 {
            return Err(RespError::TooManyElements(len));
        }
        if depth + 1 > self.limits.max_depth {
            return Err(RespError::TooDeep);
        }
        let mut pairs = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let Some(k) = self.value(depth + 1)? else { return Ok(None) };
            let Some(v) = self.value(depth + 1)? else { return Ok(None) };
            pairs.push((k, v));
        }
        Ok(Some(Value::Map(pairs)))
    }
}

/// A decimal as Redis writes lengths and integers (an optional minus sign).
fn number(text: &[u8], what: &'static str) -> Result<i64, RespError> {
    let (neg, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::BadNumber(what));
    }
    let mut n: i64 = 0;
    for &d in digits {
        n = n.checked_mul(10).and_then(|n| n.checked_add(i64::from(d - b'0'))).ok_or(RespError::BadNumber(what))?;
    }
    Ok(if neg { -n } else { n })
}

/// Splits an inline command into words as redis-cli and Redis do: blanks
/// separate, `"..."` takes `\n`, `\t`, `\"`, `\\` and `\xHH` escapes,
/// `'...'` takes `\'`, and a closing quote must be followed by a blank.
fn inline_words(line: &[u8]) -> Result<Vec<Vec<u8>>, RespError> {
    let mut words = Vec::new();
    let mut i = 0;
    let blank = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c);
    while i < line.len() {
        while i < line.len() && blank(line[i]) {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut word = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(&b) = line.get(i) else { return Err(RespError::Unbalanced) };
                    match b {
                        b'\\'
                            if i + 3 < line.len()
                                && line[i + 1] == b'x'
                                && line[i + 2].is_ascii_hexdigit()
                                && line[i + 3].is_ascii_hexdigit() =>
                        {
                            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                            word.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                            i += 4;
                        }
                        b'\\' if i + 1 < line.len() => {
                            word.push(match line[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => other,
                            });
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            if line.get(i).is_some_and(|&c| !blank(c)) {
                                return Err(RespError::Unbalanced);
                            }
                            break;
                        }
                        _ => {
                            word.push(b);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let Some(&b) = line.get(i) else { return Err(RespError::Unbalanced) };
                    match b {
                        b'\\' if line.get(i + 1) == Some(&b'\'') => {
                            word.push(b'\'');
                            i += 2;
                        }
                        b'\'' => {
                            i += 1;
                            if line.get(i).is_some_and(|&c| !blank(c)) {
                                return Err(RespError::Unbalanced);
                            }
                            break;
                        }
                        _ => {
                            word.push(b);
                            i += 1;
                        }
                    }
                }
            }
            _ => {
                while i < line.len() && !blank(line[i]) {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// Appends the wire form of `v` to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Simple(s) => line(out, b'+', s.as_bytes()),
        Value::Error(s) => line(out, b'-', s.as_bytes()),
        Value::Integer(n) => line(out, b':', n.to_string().as_bytes()),
        Value::Bulk(b) => {
            line(out, b'$', b.len().to_string().as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::Array(items) => {
            line(out, b'*', items.len().to_string().as_bytes());
            for item in items {
                encode(item, out);
            }
        }
        Value::NilArray => out.extend_from_slice(b"*-1\r\n"),
        Value::Null => out.extend_from_slice(b"_\r\n"),
        Value::Map(pairs) => {
            line(out, b'%', pairs.len().to_string().as_bytes());
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

/// Bytes [`encode`] writes for `v`.
pub fn encoded_len(v: &Value) -> usize {
    let digits = |n: usize| n.to_string().len();
    match v {
        Value::Simple(s) | Value::Error(s) => s.len() + 3,
        Value::Integer(n) => n.to_string().len() + 3,
        Value::Bulk(b) => digits(b.len()) + b.len() + 5,
        Value::Nil | Value::NilArray => 5,
        Value::Null => 3,
        Value::Map(pairs) => {
            digits(pairs.len()) + 3 + pairs.iter().map(|(k, v)| encoded_len(k) + encoded_len(v)).sum::<usize>()
        }
        Value::Array(items) => digits(items.len()) + 3 + items.iter().map(encoded_len).sum::<usize>(),
    }
}

/// A command as an array of bulk strings, as a client sends it.
pub fn command<I, A>(args: I) -> Value
where
    I: IntoIterator<Item = A>,
    A: Into<Vec<u8>>,
{
    Value::Array(args.into_iter().map(|a| Value::Bulk(a.into())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> RespLimits {
        RespLimits::server(1024)
    }

    fn words(v: &Value) -> Vec<String> {
        match v {
            Value::Array(items) => {
                items.iter().map(|i| String::from_utf8_lossy(i.as_bytes().unwrap_or(b"?")).into_owned()).collect()
            }
            _ => panic!("not an array: {v:?}"),
        }
    }

    #[test]
    fn a_request_decodes_whole_and_not_before() {
        let wire = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut], &server()), Ok(None), "cut at {cut}");
        }
        let (v, n) = decode(wire, &server()).unwrap().unwrap();
        assert_eq!(n, wire.len());
        assert_eq!(words(&v), ["SET", "k", "hello"]);
        let mut out = Vec::new();
        encode(&v, &mut out);
        assert_eq!(out, wire);
        assert_eq!(encoded_len(&v), wire.len());
    }

    #[test]
    fn inline_commands_split_as_redis_does() {
        let (v, n) = decode(b"set k \"a b\\n\\x41\" 'it\\'s'\r\nGET", &server()).unwrap().unwrap();
        assert_eq!(words(&v), ["set", "k", "a b\nA", "it's"]);
        assert_eq!(n, 27);
        assert_eq!(words(&decode(b"PING\n", &server()).unwrap().unwrap().0), ["PING"]);
        assert_eq!(decode(b"\r\n", &server()).unwrap().unwrap().0, Value::Array(Vec::new()));
        assert_eq!(decode(b"get \"k\r\n", &server()), Err(RespError::Unbalanced));
        assert_eq!(decode(b"get \"k\"x\r\n", &server()), Err(RespError::Unbalanced));
    }

    #[test]
    fn lengths_are_checked_before_anything_is_kept() {
        assert_eq!(decode(b"$2000\r\n", &server()), Err(RespError::BulkTooLarge(2000)));
        assert_eq!(decode(b"*-2\r\n", &server()), Err(RespError::TooManyElements(-2)));
        assert_eq!(decode(b"*9999999999\r\n", &server()), Err(RespError::TooManyElements(9_999_999_999)));
        assert_eq!(decode(b"*1\r\n$x\r\n", &server()), Err(RespError::BadNumber("bulk length")));
        assert_eq!(decode(b"*1\r\n:1\r\n", &server()), Err(RespError::Unexpected("expected '$' in a request")));
        assert_eq!(
            decode(b"*1\r\n$1\r\nab\r\n", &server()),
            Err(RespError::Unexpected("bulk string not followed by CRLF"))
        );
        assert_eq!(decode(&[b'a'; 70_000], &server()), Err(RespError::LineTooLong));
        assert_eq!(decode(b":99999999999999999999\r\n", &server()), Err(RespError::BadNumber("integer")));
        // A million-element header allocates nothing up front and waits.
        assert_eq!(decode(b"*1000000\r\n", &server()), Ok(None));
    }

    #[test]
    fn replies_decode_on_the_client_side() {
        let c = RespLimits::client(1024);
        let wire = b"*4\r\n+OK\r\n-ERR no\r\n:-7\r\n*2\r\n$-1\r\n*-1\r\n";
        let (v, n) = decode(wire, &c).unwrap().unwrap();
        assert_eq!(n, wire.len());
        let want = Value::Array(vec![
            Value::ok(),
            Value::Error("ERR no".into()),
            Value::Integer(-7),
            Value::Array(vec![Value::Nil, Value::NilArray]),
        ]);
        assert_eq!(v, want);
        let mut out = Vec::new();
        encode(&want, &mut out);
        assert_eq!(out, wire);
        assert_eq!(decode(b"hello\r\n", &c), Err(RespError::Unexpected("expected a RESP type byte")));
        let deep = "*1\r\n".repeat(9) + ":1\r\n";
        assert_eq!(decode(deep.as_bytes(), &c), Err(RespError::TooDeep));
    }

    #[test]
    fn resp3_nulls_and_maps_round_trip_on_the_client_side() {
        let v =
            Value::Map(vec![(Value::bulk("proto"), Value::Integer(3)), (Value::bulk("x"), Value::Nil)]).into_resp3();
        let mut out = Vec::new();
        encode(&v, &mut out);
        assert_eq!(out, b"%2\r\n$5\r\nproto\r\n:3\r\n$1\r\nx\r\n_\r\n");
        assert_eq!(encoded_len(&v), out.len());
        assert_eq!(decode(&out, &RespLimits::client(64)).unwrap().unwrap().0, v);
        assert_eq!(
            v.into_resp2(),
            Value::Array(vec![Value::bulk("proto"), Value::Integer(3), Value::bulk("x"), Value::Nil])
        );
        // A server reads `_` as an inline command, not as RESP3.
        assert_eq!(decode(b"_\r\n", &server()).unwrap().unwrap().0, Value::Array(vec![Value::bulk("_")]));
    }

    #[test]
    fn errors_stay_on_one_line() {
        let mut out = Vec::new();
        encode(&Value::error("ERR two\r\nlines"), &mut out);
        assert_eq!(out, b"-ERR two  lines\r\n");
    }
}
