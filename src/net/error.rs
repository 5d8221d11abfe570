//! `net::Error`: what can go wrong on a connection or in the loop itself.

use super::codec::{DecodeError, ErrorCode};

/// A network-layer error.
#[derive(Debug)]
pub enum Error {
    /// An I/O error from the standard library.
    Io(std::io::Error),
    /// A system call made through nix failed.
    Sys(nix::errno::Errno),
    /// The peer sent bytes that are not a valid message.
    Decode(DecodeError),
    /// The peer closed the connection in the middle of a message.
    PeerReset,
    /// The peer sent more than a connection may buffer.
    BufferLimit,
    /// A RESP connection's peer sent something that is not RESP2.
    Resp(super::resp::RespError),
    /// A metrics connection's peer sent something that is not HTTP/1.x.
    Http(super::http::HttpError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Sys(e) => write!(f, "{e}"),
            Error::Decode(e) => write!(f, "protocol error: {e}"),
            Error::PeerReset => write!(f, "connection reset by peer"),
            Error::BufferLimit => write!(f, "input buffer limit exceeded"),
            Error::Resp(e) => write!(f, "Protocol error: {e}"),
            Error::Http(e) => write!(f, "bad HTTP request: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The code of the ERROR reply a protocol error gets before its
    /// connection closes.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Decode(e) => e.code(),
            Error::BufferLimit => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<nix::errno::Errno> for Error {
    fn from(e: nix::errno::Errno) -> Error {
        Error::Sys(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Error {
        Error::Decode(e)
    }
}

/// A `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
