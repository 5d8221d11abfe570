//! Daemon plumbing shared by `gtstore-manager` and `gtstore-storage`, after APUE chapter 13.
//!
//! A daemon's `main` uses these helpers in this order:
//!
//! 1. resolve every path it will use (`--data-dir`, `--log`, `--pidfile`): [`daemonize`] does
//!    *not* `chdir("/")`, so relative paths keep working, but resolving them first (for example
//!    with [`std::path::absolute`]) keeps log lines and pidfiles unambiguous;
//! 2. [`init_logging`], then, with `--daemon`, [`daemonize`] (before any socket, thread or
//!    pidfile exists), otherwise [`Readiness::none`];
//! 3. [`redirect_stderr_to`] the `--log` file (after `daemonize`, so the waiting parent still
//!    prints errors to the operator's terminal); a daemon without `--log` should redirect to
//!    `/dev/null` so it does not hold its starter's stderr pipe open;
//! 4. [`lock_pidfile`] (after `daemonize`, so the recorded pid is the daemon's), [`raise_fd_limit`],
//!    bind, register, recover ... and finally [`Readiness::ready`], which lets the parent exit 0.
//!    Any error on the way goes to [`Readiness::fail`] with a sysexits code, so the parent exits
//!    with that code and the message on its stderr.
//!
//! [`main`] is that sequence for both daemons, given their options, configuration and role.
//! This module uses [`crate::cli`] (exit statuses, argument parsing), never the other way.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::LevelFilter;

use crate::net::auth::{Key, Keys};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{dup2, fork, getpid, pipe2, setsid, ForkResult};

use crate::cli::{die, parse_args, Exit, EX_OSERR, EX_SOFTWARE, EX_TEMPFAIL};

/// Environment variable holding the log level (`error`, `warn`, `info`, `debug`, `trace`).
pub const LOG_ENV: &str = "GTSTORE_LOG";

/// Errors of the daemon helpers.
#[derive(Debug)]
pub enum DaemonError {
    /// A file operation failed; the message names the file.
    Io(io::Error),
    /// A system call made through `nix` failed.
    Sys(Errno),
    /// The pidfile is locked by another live process (whose pid it names, if readable).
    InUse {
        /// The pidfile that is locked.
        path: PathBuf,
        /// The pid written in the pidfile, if it could be read and parsed.
        pid: Option<u32>,
    },
}

impl DaemonError {
    /// The sysexits status a daemon should exit with: 75 (EX_TEMPFAIL) when the pidfile is in
    /// use, 71 (EX_OSERR) otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::InUse { .. } => EX_TEMPFAIL,
            DaemonError::Io(_) | DaemonError::Sys(_) => EX_OSERR,
        }
    }
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Io(e) => write!(f, "{e}"),
            DaemonError::Sys(e) => write!(f, "{}", e.desc()),
            DaemonError::InUse { path, pid: Some(pid) } => write!(f, "{} is in use by pid {pid}", path.display()),
            DaemonError::InUse { path, pid: None } => {
                write!(f, "{} is in use by another process", path.display())
            }
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::Io(e) => Some(e),
            DaemonError::Sys(e) => Some(e),
            DaemonError::InUse { .. } => None,
        }
    }
}

impl From<io::Error> for DaemonError {
    fn from(e: io::Error) -> Self {
        DaemonError::Io(e)
    }
}

impl From<Errno> for DaemonError {
    fn from(e: Errno) -> Self {
        DaemonError::Sys(e)
    }
}

/// Wraps an I/O error with the operation and the path it concerned.
fn io_ctx(op: &str, path: &Path, e: io::Error) -> DaemonError {
    DaemonError::Io(io::Error::new(e.kind(), format!("{op} {}: {e}", path.display())))
}

/// Wraps an errno with the system call that returned it.
fn sys_ctx(call: &str, e: Errno) -> DaemonError {
    DaemonError::Io(io::Error::new(io::Error::from(e).kind(), format!("{call}: {}", e.desc())))
}

/// A locked pidfile. The `flock` lasts as long as this value (keep it for the life of the
/// process); the kernel drops it when the process dies, however it dies.
///
/// The file is not removed on drop: removing it would let a process that opened the old file
/// just before the unlink lock an orphaned inode while a third one creates and locks a new file.
/// A stale pidfile is harmless because the lock, not the file's existence, is what counts.
#[derive(Debug)]
pub struct PidFile {
    /// The open, locked file; its descriptor is close-on-exec (std opens files with O_CLOEXEC).
    _lock: Flock<File>,
    /// Where the pidfile lives, for messages.
    path: PathBuf,
}

impl PidFile {
    /// The pidfile's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens (creating it, mode 0644; never through a symbolic link, which could
/// make the daemon write its pid over another file) and locks the pidfile at
/// `path` with `flock(LOCK_EX|LOCK_NB)`, then replaces its contents with our
/// pid and a newline.
///
/// If another open file description holds the lock (another process, or another open of the
/// same file in this one), returns [`DaemonError::InUse`] with the pid found in the file.
/// Call it after [`daemonize`], so the pid written is the daemon's.
pub fn lock_pidfile(path: &Path) -> Result<PidFile, DaemonError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io_ctx("open", path, e))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let pid = match file.read_to_string(&mut text) {
                Ok(_) => text.trim().parse::<u32>().ok(),
                Err(_) => None,
            };
            return Err(DaemonError::InUse { path: path.to_path_buf(), pid });
        }
        Err((_, e)) => return Err(sys_ctx(&format!("flock {}", path.display()), e)),
    };
    lock.set_len(0).map_err(|e| io_ctx("truncate", path, e))?;
    let line = format!("{}\n", getpid());
    // The file offset is 0 (fresh open, nothing read), so this writes at the start.
    lock.write_all(line.as_bytes()).map_err(|e| io_ctx("write", path, e))?;
    Ok(PidFile { _lock: lock, path: path.to_path_buf() })
}

/// The daemon's end of the readiness pipe: how a detached daemon tells the process that
/// started it (still waiting in [`daemonize`]) whether start-up succeeded.
///
/// Dropping it without calling [`ready`](Readiness::ready) or [`fail`](Readiness::fail) closes
/// the pipe: the parent then reports "daemon exited before it was ready" and exits 70.
#[derive(Debug)]
pub struct Readiness {
    /// Write end of the pipe; `None` in foreground mode.
    pipe: Option<OwnedFd>,
}

impl Readiness {
    /// A readiness handle for foreground mode: `ready` and `fail` do nothing.
    pub fn none() -> Readiness {
        Readiness { pipe: None }
    }

    /// Whether this process is a detached daemon with a parent waiting on it.
    pub fn is_daemon(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reports success: the waiting parent exits 0.
    pub fn ready(self) {
        self.send("ok\n");
    }

    /// Reports failure: the waiting parent prints `msg` on its stderr and exits with `code`.
    /// Newlines in `msg` become spaces (the protocol is one line).
    pub fn fail(self, code: i32, msg: &str) {
        let msg = msg.replace(['\n', '\r'], " ");
        self.send(&format!("err {code} {msg}\n"));
    }

    /// Writes one line to the parent, ignoring errors: if the parent is gone nobody is waiting
    /// (SIGPIPE is ignored by Rust programs, so a closed pipe is just EPIPE).
    fn send(self, line: &str) {
        if let Some(fd) = self.pipe {
            let mut f = File::from(fd);
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Detaches from the terminal and the starting process (APUE 13.3): fork, `setsid`, fork
/// again, `umask(022)`, stdin and stdout to `/dev/null`.
///
/// Returns, in the daemon (the grandchild), the [`Readiness`] handle. The original process
/// never returns: it blocks until the daemon calls [`Readiness::ready`] (exit 0) or
/// [`Readiness::fail`] (its message on stderr, exit with its code), or exits without either
/// ("daemon exited before it was ready", exit 70).
///
/// Call it before opening sockets, pidfiles or threads. It does not `chdir("/")`: relative
/// paths given on the command line keep their meaning (resolve them first if the log should
/// show absolute ones). stderr is left alone so early errors stay visible; the caller then
/// moves it with [`redirect_stderr_to`]. Other inherited descriptors are not closed, because
/// Rust objects may own them.
pub fn daemonize() -> Result<Readiness, DaemonError> {
    // Unflushed output would otherwise be written by both processes.
    let _ = io::stdout().flush();
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| sys_ctx("pipe2", e))?;
    // SAFETY: called before the process starts threads (documented precondition); the child
    // only makes async-signal-safe calls plus allocations, which are safe in a one-thread
    // process.
    match unsafe { fork() }.map_err(|e| sys_ctx("fork", e))? {
        ForkResult::Parent { .. } => {
            drop(wr);
            wait_for_daemon(rd)
        }
        ForkResult::Child => {
            drop(rd);
            let ready = Readiness { pipe: Some(wr) };
            match detach() {
                Ok(()) => Ok(ready),
                Err(e) => {
                    // Nobody else would tell the waiting parent why: report, then vanish.
                    ready.fail(e.exit_code(), &format!("{}: daemonize: {e}", program_name()));
                    // SAFETY: _exit is always safe to call; it does not return.
                    unsafe { libc::_exit(e.exit_code()) }
                }
            }
        }
    }
}

/// The first child's part of [`daemonize`]: new session, second fork, umask, stdio.
/// Returns only in the grandchild.
fn detach() -> Result<(), DaemonError> {
    setsid().map_err(|e| sys_ctx("setsid", e))?;
    // SAFETY: the process is still single-threaded (precondition of `daemonize`).
    match unsafe { fork() }.map_err(|e| sys_ctx("fork", e))? {
        // The session leader exits at once, so the daemon can never reacquire a controlling
        // terminal. _exit: no destructors or stdio flushing in this copy of the process.
        // SAFETY: _exit is always safe to call; it does not return.
        ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        ForkResult::Child => {}
    }
    umask(Mode::from_bits_truncate(0o022));
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io_ctx("open", Path::new("/dev/null"), e))?;
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        dup2(null.as_raw_fd(), fd).map_err(|e| sys_ctx("dup2", e))?;
    }
    Ok(())
}

/// The basename of argv[0], for messages printed on the daemon's behalf.
fn program_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gtstore".to_string())
}

/// The starting process's side of [`daemonize`]: waits for the daemon's verdict and exits.
fn wait_for_daemon(rd: OwnedFd) -> ! {
    let mut text = String::new();
    let mut f = File::from(rd);
    // Read to EOF: the daemon closes its end right after its one line (or by exiting).
    let _ = f.read_to_string(&mut text);
    let line = text.lines().next().unwrap_or("");
    if line.starts_with("ok") {
        std::process::exit(0);
    }
    if let Some(rest) = line.strip_prefix("err ") {
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        let code = code.parse::<i32>().unwrap_or(EX_SOFTWARE);
        eprintln!("{msg}");
        std::process::exit(code);
    }
    eprintln!("daemon exited before it was ready");
    std::process::exit(EX_SOFTWARE);
}

/// Points fd 2 at `path`, opened `O_APPEND|O_CREAT` with mode 0644, so everything the logger
/// writes to stderr lands in the log file. Call it again on SIGHUP to reopen the file after
/// log rotation.
pub fn redirect_stderr_to(path: &Path) -> Result<(), DaemonError> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_ctx("open", path, e))?;
    // dup2 leaves FD_CLOEXEC clear on fd 2, as stderr should be; `file` closes on drop.
    dup2(file.as_raw_fd(), libc::STDERR_FILENO).map_err(|e| sys_ctx("dup2", e))?;
    Ok(())
}

/// Reopens the `--log` file, if there is one, after SIGHUP (log rotation);
/// a failure is logged to the old file and the daemon goes on.
pub fn reopen_log(file: &Option<PathBuf>) {
    if let Some(path) = file {
        match redirect_stderr_to(path) {
            Ok(()) => log::info!("log reopened"),
            Err(e) => log::warn!("cannot reopen {}: {e}", path.display()),
        }
    }
}

/// Parses a `GTSTORE_LOG` value.
fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// Installs `simple_logger` with UTC timestamps (local time could fail to resolve and panic
/// inside the logger). The level comes from `$GTSTORE_LOG` (`error|warn|info|debug|trace`,
/// or `off`), else `default`. Returns the level in effect. Never panics: a logger that is
/// already installed (for example by an earlier test) is kept.
///
/// simple_logger writes to stderr only when its `stderr` cargo feature is enabled (without it,
/// to stdout); [`redirect_stderr_to`] then sends the log to the `--log` file.
pub fn init_logging(default: LevelFilter) -> LevelFilter {
    let env = std::env::var(LOG_ENV).ok();
    let level = env.as_deref().and_then(parse_level).unwrap_or(default);
    let _ = simple_logger::SimpleLogger::new().with_level(level).with_utc_timestamps().init();
    if let Some(bad) = env.filter(|v| parse_level(v).is_none()) {
        log::warn!("{LOG_ENV}={bad:?} is not a log level; using {level}");
    }
    level
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at 1 << 20 when the hard limit is
/// unlimited), so a daemon can hold many connections. Returns the soft limit now in effect.
pub fn raise_fd_limit() -> Result<u64, DaemonError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    Errno::result(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }).map_err(|e| sys_ctx("getrlimit", e))?;
    let target = if lim.rlim_max == libc::RLIM_INFINITY { 1 << 20 } else { lim.rlim_max };
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < target {
        let want = libc::rlimit { rlim_cur: target, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit only reads the struct we pass.
        Errno::result(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) }).map_err(|e| sys_ctx("setrlimit", e))?;
        lim.rlim_cur = target;
    }
    Ok(lim.rlim_cur)
}

/// The start-up steps both daemons share, in the order the module doc
/// gives: detach (with `--daemon`), send stderr to the log file, lock the
/// pidfile, raise the descriptor limit. `dir` names the data directory in
/// the "in use" message. On failure the waiting parent gets the message.
pub fn start(detach: bool, log: Option<&Path>, pidfile: &Path, dir: &Path) -> Result<(Readiness, PidFile), Exit> {
    let ready =
        if detach { daemonize().map_err(|e| Exit::new(e.exit_code(), e.to_string()))? } else { Readiness::none() };
    let redirect = match log {
        Some(path) => redirect_stderr_to(path),
        None if detach => redirect_stderr_to(Path::new("/dev/null")),
        None => Ok(()),
    };
    if let Err(e) = redirect {
        let exit = Exit::new(e.exit_code(), e.to_string());
        ready.fail(exit.code, &exit.message);
        return Err(exit);
    }
    let pid = match lock_pidfile(pidfile) {
        Ok(p) => p,
        Err(DaemonError::InUse { pid, .. }) => {
            let who = pid.map_or("another process".to_string(), |p| format!("pid {p}"));
            let exit = Exit::new(EX_TEMPFAIL, format!("data directory {} is in use by {who}", dir.display()));
            ready.fail(exit.code, &exit.message);
            return Err(exit);
        }
        Err(e) => {
            let exit = Exit::new(e.exit_code(), e.to_string());
            ready.fail(exit.code, &exit.message);
            return Err(exit);
        }
    };
    if let Err(e) = raise_fd_limit() {
        log::warn!("cannot raise the descriptor limit: {e}");
    }
    Ok((ready, pid))
}

/// What a daemon binary tells [`main`] about itself.
pub struct DaemonSpec {
    /// The program name, for messages.
    pub prog: &'static str,
    /// The usage line and a one-line description, for `--help`.
    pub usage: &'static str,
    /// The pidfile's name inside the data directory (unless `--pidfile`).
    pub pidfile: &'static str,
}

/// Adds `--cluster-key` to a daemon's options, and `--client-key` with
/// `client_key` (storage nodes; the manager's answers to clients only say
/// who the members are).
pub fn key_options(o: &mut getopts::Options, client_key: bool) {
    o.optopt("", "cluster-key", "key file every daemon of the cluster shares (required off loopback)", "FILE");
    if client_key {
        o.optopt("", "client-key", "key file clients must prove before any request (optional)", "FILE");
    }
}

/// Reads the daemon's key files. Without a cluster key it may listen only
/// on a loopback address: anyone who can reach the port could otherwise
/// register a node or rewrite data (`gtstore-storage(8)`, SECURITY).
pub fn keys(m: &getopts::Matches, listen: std::net::SocketAddr) -> Result<Keys, Exit> {
    let load = |name: &str| -> Result<Option<Key>, Exit> {
        match m.opt_defined(name).then(|| m.opt_str(name)).flatten() {
            Some(p) => Key::load(Path::new(&p)).map(Some).map_err(|e| Exit::usage(format!("--{name}: {e}"))),
            None => Ok(None),
        }
    };
    let cluster = load("cluster-key")?;
    if cluster.is_none() && !listen.ip().is_loopback() {
        return Err(Exit::usage(format!(
            "--listen {listen} is not a loopback address, and without --cluster-key anyone who reaches it could \
             join or rewrite the cluster; give every daemon --cluster-key FILE"
        )));
    }
    Ok(Keys::daemon(cluster, load("client-key")?))
}

/// Adds `--metrics-listen` to a daemon's options.
pub fn metrics_option(o: &mut getopts::Options) {
    o.optopt("", "metrics-listen", "serve Prometheus metrics at http://ADDR/metrics (default: off)", "ADDR");
}

/// The `--metrics-listen` address, if given (the metrics tell who the
/// members are and how the node is loaded); see [`extra_listen`].
pub fn metrics_listen(m: &getopts::Matches, keys: &Keys) -> Result<Option<std::net::SocketAddr>, Exit> {
    extra_listen(m, "metrics-listen", keys)
}

/// The address of a second listener (`--resp-listen`, `--metrics-listen`),
/// if given: as for `--listen`, one that can be dialled, and without a
/// cluster key a loopback one.
pub fn extra_listen(m: &getopts::Matches, name: &str, keys: &Keys) -> Result<Option<std::net::SocketAddr>, Exit> {
    let Some(given) = m.opt_str(name) else { return Ok(None) };
    let addr = crate::cli::resolve(&given)?;
    if addr.ip().is_unspecified() {
        return Err(Exit::usage(format!(
            "--{name} {given}: an unspecified address is refused; give this host's own address"
        )));
    }
    if keys.cluster.is_none() && !addr.ip().is_loopback() {
        return Err(Exit::usage(format!(
            "--{name} {addr} is not a loopback address, and without --cluster-key the daemon listens only \
             on loopback; give every daemon --cluster-key FILE"
        )));
    }
    Ok(Some(addr))
}

/// The paths every daemon configuration has.
pub trait DaemonPaths {
    /// The data directory (created if missing; it holds the pidfile).
    fn data_dir(&self) -> &Path;
    /// The `--log` file, if any.
    fn log_file(&self) -> Option<&Path>;
}

/// The `main` both daemons share: parse the arguments, answer `--help` and
/// `--version`, build the configuration, start logging, detach with
/// `--daemon`, lock the pidfile, then run; any failure is a message and a
/// sysexits status.
pub fn main<C: DaemonPaths>(
    spec: DaemonSpec,
    opts: getopts::Options,
    config: impl FnOnce(&getopts::Matches) -> Result<C, Exit>,
    run: impl FnOnce(C, Readiness) -> Result<(), Exit>,
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
    init_logging(LevelFilter::Info);
    let dir = cfg.data_dir().to_path_buf();
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
        die(prog, Exit::new(EX_OSERR, format!("{}: {e}", dir.display())));
    }
    let pidfile = m.opt_str("pidfile").map(PathBuf::from).unwrap_or_else(|| dir.join(spec.pidfile));
    let started = start(m.opt_present("daemon"), cfg.log_file(), &pidfile, &dir);
    let (ready, _pid) = started.unwrap_or_else(|e| die(prog, e));
    if let Err(e) = run(cfg, ready) {
        log::error!("{}", e.message);
        die(prog, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("gtstore-daemon-{}-{name}", std::process::id()))
    }

    #[test]
    fn second_lock_on_same_pidfile_is_in_use_and_names_our_pid() {
        let path = temp_path("lock.pid");
        let _ = std::fs::remove_file(&path);
        let first = lock_pidfile(&path).unwrap();
        assert_eq!(first.path(), path.as_path());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        match lock_pidfile(&path) {
            Err(e @ DaemonError::InUse { .. }) => {
                assert_eq!(e.exit_code(), 75);
                let DaemonError::InUse { path: p, pid } = &e else { unreachable!() };
                assert_eq!(p, &path);
                assert_eq!(*pid, Some(std::process::id()));
                assert!(e.to_string().contains("in use by pid"));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        // Released with the first handle: locking again succeeds and rewrites the pid.
        let again = lock_pidfile(&path).unwrap();
        drop(again);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn stale_pidfile_contents_are_replaced() {
        let path = temp_path("stale.pid");
        std::fs::write(&path, "999999999 leftover junk\n").unwrap();
        let lock = lock_pidfile(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(lock);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_directory_is_an_os_error() {
        let path = temp_path("no/such/dir.pid");
        let e = lock_pidfile(&path).unwrap_err();
        assert_eq!(e.exit_code(), 71);
        assert!(e.to_string().contains("no/such/dir.pid"), "{e}");
    }

    #[test]
    fn log_levels_parse() {
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::Debug));
        assert_eq!(parse_level(" warn "), Some(LevelFilter::Warn));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn fd_limit_is_at_least_what_it_was() {
        let n = raise_fd_limit().unwrap();
        assert!(n >= 64);
    }

    #[test]
    fn foreground_readiness_is_a_no_op() {
        let r = Readiness::none();
        assert!(!r.is_daemon());
        r.fail(71, "ignored");
        Readiness::none().ready();
    }
}
