//! Networking: the one-thread epoll event loop, connection state machines,
//! timers and the wire codec shared by every GTStore process.

pub mod codec;
pub mod conn;
pub mod error;
pub mod event_loop;
pub mod timer;

pub use error::{Error, Result};
pub use event_loop::{run, ConnId, Handler, Reactor};
