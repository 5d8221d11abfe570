//! `gtstore-storage`: parses the command line and runs a storage node.

use std::path::PathBuf;
use std::time::Duration;

use gtstore::cli::{self, opt_num, Exit, EX_USAGE};
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
        Some(a) => cli::resolve(&a)?,
        None => cli::resolve(&format!("127.0.0.1:{}", 7000 + id))?,
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
    let data_dir = PathBuf::from(m.opt_str("data-dir").unwrap_or_else(|| format!("gtstore-node{id}")));
    let heartbeat: u64 = opt_num(m, "heartbeat-ms")?.unwrap_or(200);
    Ok(Config {
        id,
        listen,
        manager,
        fsync,
        max_key: max("max-key", 4096, 64 * 1024)?,
        max_value: max("max-value", 1 << 20, 16 << 20)?,
        max_header: max("max-header", 128, 4096)?.max(64),
        max_conns: max("max-conns", 4096, 1 << 20)?,
        heartbeat: Duration::from_millis(heartbeat.max(1)),
        log_file: m.opt_str("log").map(|p| std::path::absolute(&p).unwrap_or_else(|_| PathBuf::from(p))),
        data_dir: std::path::absolute(&data_dir).unwrap_or(data_dir),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = options();
    let m = cli::parse_args(&opts, &args).unwrap_or_else(|e| cli::die(PROG, e));
    if m.opt_present("help") {
        print!(
            "{}",
            opts.usage(&format!(
                "Usage: {PROG} --id I [options]\n\nA GTStore storage node: sectors on disk, coordinator and replica."
            ))
        );
        return;
    }
    if m.opt_present("version") {
        println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if !m.free.is_empty() {
        cli::die(PROG, Exit::new(EX_USAGE, format!("unexpected argument '{}'", m.free[0])));
    }
    let cfg = config(&m).unwrap_or_else(|e| cli::die(PROG, e));
    gtstore::daemon::init_logging(log::LevelFilter::Info);
    if let Err(e) = std::fs::create_dir_all(&cfg.data_dir) {
        cli::die(PROG, Exit::new(cli::EX_OSERR, format!("{}: {e}", cfg.data_dir.display())));
    }
    let pidfile = m.opt_str("pidfile").map(PathBuf::from).unwrap_or_else(|| cfg.data_dir.join("gtstore-storage.pid"));
    let started = gtstore::daemon::start(m.opt_present("daemon"), cfg.log_file.as_deref(), &pidfile, &cfg.data_dir);
    let (ready, _pid) = started.unwrap_or_else(|e| cli::die(PROG, e));
    if let Err(e) = storage::run(cfg, ready) {
        log::error!("{}", e.message);
        cli::die(PROG, e);
    }
}
