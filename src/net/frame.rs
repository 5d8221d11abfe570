//! Which protocol a connection speaks, and its decoding and encoding: the
//! native header protocol (`codec`), RESP2 (`resp`) or HTTP/1.x for metrics
//! (`http`). A listener gives its framing to every connection it accepts;
//! an outbound connection is given one by its role. Every framing yields
//! and takes [`Message`]s, so the loop and the roles handle one type: RESP
//! and HTTP requests arrive as `Body::Resp` and `Body::Http` (header all
//! zero), and replies go out as `Body::Resp` and `Body::Raw`.

use super::codec::{self, Body, Limits, Message};
use super::error::{Error, Result};
use super::{http, resp};

/// A connection's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// The text header protocol of gtstore-protocol(5).
    #[default]
    Native,
    /// RESP2 requests in, replies out (a node's `--resp-listen` port).
    RespServer,
    /// RESP2 requests out, replies in (`gtstore-bench --resp`).
    RespClient,
    /// HTTP/1.x requests in, one reply out (a `--metrics-listen` port).
    Http,
}

impl Framing {
    /// The RESP limits of this framing, from the loop's `limits`.
    fn resp_limits(self, limits: &Limits) -> resp::RespLimits {
        match self {
            Framing::RespClient => resp::RespLimits::client(limits.max_body),
            _ => resp::RespLimits::server(limits.max_body),
        }
    }
}

/// The first whole message of `buf` and its length, or `None` while it is incomplete.
pub fn decode(framing: Framing, buf: &[u8], limits: &Limits) -> Result<Option<(Message, usize)>> {
    let wrap = |body: Body| Message { header: Default::default(), body };
    match framing {
        Framing::Native => Ok(codec::decode(buf, limits)?),
        Framing::RespServer | Framing::RespClient => {
            let got = resp::decode(buf, &framing.resp_limits(limits)).map_err(Error::Resp)?;
            Ok(got.map(|(v, n)| (wrap(Body::Resp(v)), n)))
        }
        Framing::Http => Ok(http::decode(buf).map_err(Error::Http)?.map(|(r, n)| (wrap(Body::Http(r)), n))),
    }
}

/// Appends `msg`'s wire form in `framing` to `out`. A native ERROR (the
/// loop's answer to bad input) becomes `-ERR ...` or `400 Bad Request`;
/// anything else the framing cannot carry is dropped, with a debug assertion.
pub fn encode(framing: Framing, msg: &Message, out: &mut Vec<u8>) {
    match (framing, &msg.body) {
        (_, Body::Raw(bytes)) => out.extend_from_slice(bytes),
        (Framing::Native, _) => codec::encode(msg, out),
        (Framing::RespServer | Framing::RespClient, Body::Resp(v)) => resp::encode(v, out),
        (Framing::RespServer | Framing::RespClient, Body::Error { reason, .. }) => {
            resp::encode(&resp::Value::error(format!("ERR {reason}")), out)
        }
        (Framing::Http, Body::Error { reason, .. }) => {
            out.extend_from_slice(&http::reply(400, "Bad Request", "text/plain", format!("{reason}\n").as_bytes()))
        }
        (f, b) => debug_assert!(false, "a {} message on a {f:?} connection", b.verb()),
    }
}

/// Bytes `msg` takes in `framing`, about (see `codec::encoded_len`).
pub fn encoded_len(framing: Framing, msg: &Message) -> usize {
    match (framing, &msg.body) {
        (_, Body::Raw(bytes)) => bytes.len(),
        (Framing::Native, _) => codec::encoded_len(msg),
        (_, Body::Resp(v)) => resp::encoded_len(v),
        _ => 64,
    }
}
