//! Command-line helpers shared by the binaries: exit statuses (sysexits),
//! option parsing with clear usage errors, and address resolution.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Success.
pub const EX_OK: i32 = 0;
/// The key was not found (client only).
pub const EX_NOT_FOUND: i32 = 1;
/// Bad usage.
pub const EX_USAGE: i32 = 64;
/// Bad input data (a value that cannot be read or is over the limit).
pub const EX_DATAERR: i32 = 65;
/// No cluster, node or manager could be reached.
pub const EX_UNAVAILABLE: i32 = 69;
/// An internal error.
pub const EX_SOFTWARE: i32 = 70;
/// A system call failed (bind, epoll).
pub const EX_OSERR: i32 = 71;
/// The data directory is locked by another live process.
pub const EX_TEMPFAIL: i32 = 75;

/// The default manager address.
pub const DEFAULT_MANAGER: &str = "127.0.0.1:7000";

/// An error that ends a binary with a message and an exit status.
#[derive(Debug)]
pub struct Exit {
    /// The sysexits status.
    pub code: i32,
    /// The one-line message (without the program name).
    pub message: String,
}

impl Exit {
    /// An exit with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Exit {
        Exit { code, message: message.into() }
    }

    /// A usage error (exit 64).
    pub fn usage(message: impl Into<String>) -> Exit {
        Exit::new(EX_USAGE, message)
    }
}

/// The manager address: the flag, else `$GTSTORE_MANAGER`, else the default.
pub fn manager_addr(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("GTSTORE_MANAGER").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_MANAGER.to_string())
}

/// Resolves `HOST:PORT` to its first socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, Exit> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Exit::usage(format!("{addr}: not a valid HOST:PORT address")))
}

/// Parses option `name` if given, with a usage error naming it otherwise.
pub fn opt_num<T: FromStr>(m: &getopts::Matches, name: &str) -> Result<Option<T>, Exit> {
    match m.opt_str(name) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| Exit::usage(format!("--{name}: '{s}' is not a valid number"))),
    }
}

/// Parses the arguments with `opts`, mapping errors to usage errors.
pub fn parse_args(opts: &getopts::Options, args: &[String]) -> Result<getopts::Matches, Exit> {
    let m = opts.parse(args).map_err(|e| Exit::usage(e.to_string()))?;
    Ok(m)
}

/// What a daemon binary tells [`daemon_main`] about itself.
pub struct DaemonSpec {
    /// The program name, for messages.
    pub prog: &'static str,
    /// The usage line and a one-line description, for `--help`.
    pub usage: &'static str,
    /// The pidfile's name inside the data directory (unless `--pidfile`).
    pub pidfile: &'static str,
}

/// The paths every daemon configuration has.
pub trait DaemonPaths {
    /// The data directory (created if missing; it holds the pidfile).
    fn data_dir(&self) -> &std::path::Path;
    /// The `--log` file, if any.
    fn log_file(&self) -> Option<&std::path::Path>;
}

/// The `main` both daemons share: parse the arguments, answer `--help` and
/// `--version`, build the configuration, start logging, detach with
/// `--daemon`, lock the pidfile, then run; any failure is a message and a
/// sysexits status.
pub fn daemon_main<C: DaemonPaths>(
    spec: DaemonSpec,
    opts: getopts::Options,
    config: impl FnOnce(&getopts::Matches) -> Result<C, Exit>,
    run: impl FnOnce(C, crate::daemon::Readiness) -> Result<(), Exit>,
) {
    let prog = spec.prog;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let m = parse_args(&opts, &args).unwrap_or_else(|e| die(prog, e));
    if m.opt_present("help") {
        print!("{}", opts.usage(spec.usage));
        return;
    }
    if m.opt_present("version") {
        println!("{prog} {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if let Some(extra) = m.free.first() {
        die(prog, Exit::usage(format!("unexpected argument '{extra}'")));
    }
    let cfg = config(&m).unwrap_or_else(|e| die(prog, e));
    crate::daemon::init_logging(log::LevelFilter::Info);
    let dir = cfg.data_dir().to_path_buf();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        die(prog, Exit::new(EX_OSERR, format!("{}: {e}", dir.display())));
    }
    let pidfile = m.opt_str("pidfile").map(std::path::PathBuf::from).unwrap_or_else(|| dir.join(spec.pidfile));
    let started = crate::daemon::start(m.opt_present("daemon"), cfg.log_file(), &pidfile, &dir);
    let (ready, _pid) = started.unwrap_or_else(|e| die(prog, e));
    if let Err(e) = run(cfg, ready) {
        log::error!("{}", e.message);
        die(prog, e);
    }
}

/// An absolute form of a path from the command line (relative to the
/// working directory at start; the daemons keep theirs, see `daemon`).
pub fn absolute(path: &str) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| std::path::PathBuf::from(path))
}

/// Prints `prog: message` on stderr and exits with the status.
pub fn die(prog: &str, e: Exit) -> ! {
    eprintln!("{prog}: {}", e.message);
    std::process::exit(e.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_accepts_names_and_literals() {
        assert!(resolve("127.0.0.1:7000").is_ok());
        assert!(resolve("localhost:7000").is_ok());
        assert_eq!(resolve("nonsense").unwrap_err().code, EX_USAGE);
    }
}
