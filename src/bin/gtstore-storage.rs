//! `gtstore-storage`: parses the command line and runs a storage node.

use std::time::Duration;

use gtstore::cli::{self, opt_num, Exit};
use gtstore::daemon::{self, DaemonSpec};
use gtstore::storage::{self, Config};
use gtstore::store::FsyncPolicy;

const PROG: &str = "gtstore-storage";

fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt("", "id", "node id, 1..=65535 (required)", "I");
    o.optopt("", "listen", "address to listen on (default 127.0.0.1:(7000+I))", "ADDR");
    o.optopt("", "manager", "manager address (default $GTSTORE_MANAGER, else 127.0.0.1:7000)", "ADDR");
    o.optopt("", "data-dir", "data directory (default ./gtstore-node<I>)", "DIR");
    o.optopt("", "fsync", "always | batch | never (default batch: one fsync per loop turn)", "MODE");
    o.optopt("", "max-key", "largest key accepted (default 4096)", "BYTES");
    o.optopt("", "max-value", "largest value accepted (default 1048576)", "BYTES");
    o.optopt("", "max-header", "longest header line accepted (default 128)", "BYTES");
    o.optopt("", "max-conns", "simultaneous connections (default 4096)", "N");
    o.optopt("", "heartbeat-ms", "heartbeat interval (default 200)", "MS");
    o.optopt(
        "",
        "tombstone-grace",
        "keep a tombstone at least this long before it may be reaped; 0: for ever (default 86400)",
        "SECS",
    );
    o.optopt(
        "",
        "header-timeout",
        "close a connection whose header line is not complete within this long; 0: never (default 10)",
        "SECS",
    );
    o.optopt(
        "",
        "max-output",
        "replies queued on a connection past which it is not read until they drain (default 8388608)",
        "BYTES",
    );
    o.optopt("", "idle-timeout", "close a client connection idle this long; 0: never (default 0)", "SECS");
    o.optopt("", "resp-listen", "also serve RESP2 (Redis clients) on this address (default: off)", "ADDR");
    daemon::key_options(&mut o, true);
    daemon::metrics_option(&mut o);
    o.optflag("", "daemon", "detach; return once the node has joined and received its sectors");
    o.optopt("", "log", "log file (reopened on SIGHUP; default standard error)", "FILE");
    o.optopt("", "pidfile", "pidfile, locked while running (default DIR/gtstore-storage.pid)", "FILE");
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

fn config(m: &getopts::Matches) -> Result<Config, Exit> {
    let id: u32 = opt_num(m, "id")?.ok_or_else(|| Exit::usage("--id is required"))?;
    if !(1..=65535).contains(&id) {
        return Err(Exit::usage("--id must be between 1 and 65535"));
    }
    let listen = match m.opt_str("listen") {
        Some(a) => cli::resolve_listen(&a)?,
        None => cli::resolve_listen(&format!("127.0.0.1:{}", 7000 + id))?,
    };
    let manager = cli::resolve(&cli::manager_addr(m.opt_str("manager")))?;
    let fsync = match m.opt_str("fsync") {
        Some(s) => s
            .parse::<FsyncPolicy>()
            .map_err(|_| Exit::usage(format!("--fsync: '{s}' is not always, batch or never")))?,
        None => FsyncPolicy::Batch,
    };
    let max = |name: &str, default: usize, limit: usize| -> Result<usize, Exit> {
        let v: usize = opt_num(m, name)?.unwrap_or(default);
        if v == 0 || v > limit {
            return Err(Exit::usage(format!("--{name} must be between 1 and {limit}")));
        }
        Ok(v)
    };
    let data_dir = cli::absolute(&m.opt_str("data-dir").unwrap_or_else(|| format!("gtstore-node{id}")));
    let heartbeat: u64 = opt_num(m, "heartbeat-ms")?.unwrap_or(200);
    let grace: u64 = opt_num(m, "tombstone-grace")?.unwrap_or(86_400);
    if grace > 100 * 365 * 86_400 {
        return Err(Exit::usage("--tombstone-grace must be at most 100 years"));
    }
    let header_timeout: u64 = opt_num(m, "header-timeout")?.unwrap_or(10);
    if header_timeout > 86_400 {
        return Err(Exit::usage("--header-timeout must be at most 86400"));
    }
    let keys = daemon::keys(m, listen)?;
    let resp_listen = daemon::extra_listen(m, "resp-listen", &keys)?;
    let metrics_listen = daemon::metrics_listen(m, &keys)?;
    Ok(Config {
        keys,
        resp_listen,
        metrics_listen,
        header_timeout: Duration::from_secs(header_timeout),
        idle_timeout: Duration::from_secs(opt_num::<u64>(m, "idle-timeout")?.unwrap_or(0).min(365 * 86_400)),
        max_output: max("max-output", gtstore::net::DEFAULT_MAX_OUTPUT, 1 << 30)?.max(64 * 1024),
        id,
        listen,
        manager,
        fsync,
        max_key: max("max-key", 4096, 64 * 1024)?,
        max_value: max("max-value", 1 << 20, 16 << 20)?,
        max_header: max("max-header", 128, 4096)?.max(64),
        max_conns: max("max-conns", 4096, 1 << 20)?,
        heartbeat: Duration::from_millis(heartbeat.max(1)),
        log_file: m.opt_str("log").map(|p| cli::absolute(&p)),
        tombstone_grace: Duration::from_secs(grace),
        data_dir,
    })
}

fn main() {
    let spec = DaemonSpec { prog: PROG, usage: "Usage: gtstore-storage --id I [options]\n\nA GTStore storage node: sectors on disk, coordinator and replica.", pidfile: "gtstore-storage.pid" };
    daemon::main(spec, options(), config, storage::run);
}
