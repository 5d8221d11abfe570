//! Networking: the one-thread epoll event loop, connection state machines,
//! timers, the wire codec shared by every GTStore process, the other
//! framings a connection may speak (RESP2, HTTP for metrics), and the [`Io`]
//! seam through which role logic reaches its driver.

pub mod auth;
pub mod codec;
pub mod conn;
pub mod error;
pub mod event_loop;
pub mod frame;
pub mod gate;
pub mod http;
pub mod io;
pub mod resp;
pub mod timer;
pub mod turns;

pub use error::{Error, Result};
pub use event_loop::{run, ConnId, Handler, Reactor, Standing, DEFAULT_MAX_OUTPUT};
pub use frame::Framing;
pub use gate::{Gate, Guarded};
pub use io::{Io, SplitMix};
pub use turns::TurnWatch;
