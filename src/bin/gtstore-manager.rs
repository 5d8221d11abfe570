//! `gtstore-manager`: parses the command line and runs the manager daemon.

use std::time::Duration;

use gtstore::cli::{self, opt_num, Exit};
use gtstore::daemon::{self, DaemonSpec};
use gtstore::manager::{self, Config};

const PROG: &str = "gtstore-manager";

/// The most sectors a cluster may have: every table carries one owner per
/// sector, in every table message.
const MAX_SECTORS: u32 = 65_536;

fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt("", "listen", "address to listen on (default 127.0.0.1:7000)", "ADDR");
    o.optopt("", "data-dir", "state directory (default ./gtstore-manager)", "DIR");
    o.optopt("", "rep", "replicas per key (default 1)", "N");
    o.optopt("", "read-quorum", "replies a read waits for (default N/2+1)", "R");
    o.optopt("", "write-quorum", "acknowledgements a write waits for (default N/2+1)", "W");
    o.optopt("", "sectors", "sectors of the hash space for a new cluster (default 1024)", "Q");
    o.optopt("", "heartbeat-ms", "how often silent nodes are looked for (default 200)", "MS");
    o.optopt("", "dead-after-ms", "silence before a node is declared dead (default 1000)", "MS");
    o.optopt(
        "",
        "header-timeout",
        "close a connection whose header line is not complete within this long; 0: never (default 10)",
        "SECS",
    );
    daemon::key_options(&mut o, false);
    daemon::metrics_option(&mut o);
    o.optflag("", "daemon", "detach; return once listening");
    o.optopt("", "log", "log file (reopened on SIGHUP; default standard error)", "FILE");
    o.optopt("", "pidfile", "pidfile, locked while running (default DIR/gtstore-manager.pid)", "FILE");
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

fn config(m: &getopts::Matches) -> Result<Config, Exit> {
    let rep: u32 = opt_num(m, "rep")?.unwrap_or(1);
    if rep == 0 {
        return Err(Exit::usage("--rep must be at least 1"));
    }
    let majority = rep / 2 + 1;
    let read_quorum = opt_num(m, "read-quorum")?.unwrap_or(majority);
    let write_quorum = opt_num(m, "write-quorum")?.unwrap_or(majority);
    if read_quorum == 0 || write_quorum == 0 || read_quorum > rep || write_quorum > rep {
        return Err(Exit::usage(format!("R ({read_quorum}) and W ({write_quorum}) must be between 1 and N ({rep})")));
    }
    if read_quorum + write_quorum <= rep {
        return Err(Exit::usage(format!("R + W must exceed N: {read_quorum} + {write_quorum} <= {rep}")));
    }
    let sectors: u32 = opt_num(m, "sectors")?.unwrap_or(1024);
    if sectors == 0 || sectors > MAX_SECTORS {
        return Err(Exit::usage(format!("--sectors must be between 1 and {MAX_SECTORS}")));
    }
    let listen = cli::resolve_listen(&m.opt_str("listen").unwrap_or_else(|| cli::DEFAULT_MANAGER.into()))?;
    let data_dir = cli::absolute(&m.opt_str("data-dir").unwrap_or_else(|| "gtstore-manager".into()));
    let ms = |name: &str, default: u64| -> Result<Duration, Exit> {
        let v: u64 = opt_num(m, name)?.unwrap_or(default);
        if v == 0 {
            return Err(Exit::usage(format!("--{name} must be positive")));
        }
        Ok(Duration::from_millis(v))
    };
    let header_timeout: u64 = opt_num(m, "header-timeout")?.unwrap_or(10);
    if header_timeout > 86_400 {
        return Err(Exit::usage("--header-timeout must be at most 86400"));
    }
    let keys = daemon::keys(m, listen)?;
    let metrics_listen = daemon::metrics_listen(m, &keys)?;
    Ok(Config {
        keys,
        metrics_listen,
        header_timeout: Duration::from_secs(header_timeout),
        listen,
        rep,
        read_quorum,
        write_quorum,
        sectors,
        heartbeat: ms("heartbeat-ms", 200)?,
        dead_after: ms("dead-after-ms", 1000)?,
        log_file: m.opt_str("log").map(|p| cli::absolute(&p)),
        data_dir,
    })
}

fn main() {
    let spec = DaemonSpec { prog: PROG, usage: "Usage: gtstore-manager [options]\n\nThe GTStore manager: membership, the partition table, failure detection.", pidfile: "gtstore-manager.pid" };
    daemon::main(spec, options(), config, manager::run);
}
