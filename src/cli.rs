//! Command-line helpers shared by the binaries: exit statuses (sysexits),
//! option parsing with clear usage errors, and address resolution. It
//! depends on no other module of the crate; the daemons' shared `main` is
//! in [`crate::daemon`].

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
/// Permission denied: a key was missing or wrong (client only).
pub const EX_NOPERM: i32 = 77;
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

/// Splits a `--manager` value, `ADDR[,ADDR...]`: the manager, then storage
/// nodes a client asks for the table when the manager does not answer.
/// Every address must resolve; a single address is checked as before.
pub fn bootstrap_list(list: &str) -> Result<(String, Vec<String>), Exit> {
    let mut addrs = Vec::new();
    for addr in list.split(',') {
        let addr = addr.trim();
        if addr.is_empty() {
            return Err(Exit::usage(format!("{list}: an empty address in the list")));
        }
        resolve(addr)?;
        addrs.push(addr.to_string());
    }
    let manager = addrs.remove(0);
    Ok((manager, addrs))
}

/// Resolves `HOST:PORT` to its first socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, Exit> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Exit::usage(format!("{addr}: not a valid HOST:PORT address")))
}

/// Resolves a daemon's `--listen` address: like [`resolve`], but an
/// unspecified address (0.0.0.0, ::) is refused, since the address a
/// daemon listens on is the one clients and peers dial (port 0 is fine:
/// the daemon prints and advertises the port it was given).
pub fn resolve_listen(addr: &str) -> Result<SocketAddr, Exit> {
    let a = resolve(addr)?;
    if a.ip().is_unspecified() {
        return Err(Exit::usage(format!(
            "--listen {addr}: an unspecified address is refused; give this host's own address \
             (it is the one clients and other daemons dial)"
        )));
    }
    Ok(a)
}

/// `text` for a terminal: control characters (escape sequences, newlines,
/// NUL) and backslashes written as Rust escapes, the rest as is. For
/// addresses and other text from the network that `gtstore status` prints.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() || c == '\\' {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
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
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("127.0.0.1:7001"), "127.0.0.1:7001");
        assert_eq!(printable("a\x1b[2Jb\nc\0"), "a\\u{1b}[2Jb\\nc\\u{0}");
        assert_eq!(printable("é\\"), "é\\\\");
    }

    #[test]
    fn resolve_accepts_names_and_literals() {
        assert!(resolve("127.0.0.1:7000").is_ok());
        assert!(resolve("localhost:7000").is_ok());
        assert_eq!(resolve("nonsense").unwrap_err().code, EX_USAGE);
    }

    #[test]
    fn bootstrap_list_is_the_manager_then_nodes() {
        assert_eq!(bootstrap_list("127.0.0.1:7000").unwrap(), ("127.0.0.1:7000".to_string(), vec![]));
        let (m, nodes) = bootstrap_list("127.0.0.1:7000, 127.0.0.1:7001,localhost:7002").unwrap();
        assert_eq!(m, "127.0.0.1:7000");
        assert_eq!(nodes, vec!["127.0.0.1:7001".to_string(), "localhost:7002".to_string()]);
        let e = bootstrap_list("nonsense").unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (EX_USAGE, "nonsense: not a valid HOST:PORT address"));
        assert_eq!(bootstrap_list("127.0.0.1:7000,,127.0.0.1:7001").unwrap_err().code, EX_USAGE);
        assert_eq!(bootstrap_list("127.0.0.1:7000,bad").unwrap_err().code, EX_USAGE);
        assert_eq!(bootstrap_list("").unwrap_err().code, EX_USAGE);
    }
}
