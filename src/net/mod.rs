//! Networking: the one-thread epoll event loop, connection state machines,
//! timers, the wire codec shared by every GTStore process, and the [`Io`]
//! seam through which role logic reaches its driver.

pub mod auth;
pub mod codec;
pub mod conn;
pub mod error;
pub mod event_loop;
pub mod gate;
pub mod io;
pub mod timer;
pub mod turns;

pub use error::{Error, Result};
pub use event_loop::{run, ConnId, Handler, Reactor, Standing, DEFAULT_MAX_OUTPUT};
pub use gate::{Gate, Guarded};
pub use io::{Io, SplitMix};
pub use turns::TurnWatch;
