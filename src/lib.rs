//! GTStore: a Dynamo-style distributed key-value store.
//!
//! One manager keeps membership and the partition table; storage nodes keep
//! replicated sectors on disk; clients route each request to its key's
//! coordinator. Every daemon is one thread running one epoll loop.
//!
//! # Layout
//! - [`net`]: the event loop, connection state machines, timers, the wire codec.
//! - [`store`]: sector logs on disk, their in-memory indexes, recovery,
//!   compaction, and the write-ahead log behind group commit.
//! - [`table`]: the partition table, key hashing and preference lists.
//! - [`hlc`]: versions and the hybrid logical clock that makes them.
//! - [`invariant`]: invariants asserted inside the roles, recorded in simulation.
//! - [`idmap`]: hash maps keyed by the daemons' own integer ids.
//! - [`manager`]: the manager daemon's state and handlers.
//! - [`storage`]: the storage node daemon: coordinator, replica, mover.
//! - [`client`]: the client library used by the CLI and the benchmark.
//! - [`daemon`]: APUE daemon helpers (detaching, pidfile locks, log files) and the daemons' `main`.
//! - [`cli`]: shared command-line helpers (addresses, exit codes, argument parsing).
//! - [`sim`]: `gtstore-sim`, deterministic simulation of whole clusters and its checker.
//! - [`bugs`]: planted bugs for the simulator's selftest (feature `planted-bugs`).
//! - [`bench`]: the load generator behind `gtstore-bench` and its charts.
//! - [`metrics`]: counters, fixed-bucket histograms and the Prometheus text
//!   exposition the daemons serve on `--metrics-listen`.

pub mod bench;
pub mod bugs;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod hlc;
pub mod idmap;
pub mod invariant;
pub mod manager;
pub mod metrics;
pub mod net;
pub mod sim;
pub mod storage;
pub mod store;
pub mod table;
