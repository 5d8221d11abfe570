//! Integration-test harness: clusters started through the Makefile, the `gtstore` CLI, and
//! single daemons spawned directly.
//!
//! Each test file does `mod common;` and uses the subset it needs. Every external command runs
//! with a time limit, so a hang fails the test instead of stalling CI.
//!
//! **Ports.** Tests run in parallel, so each test file picks its own block of 100 ports
//! (for example `cluster.rs` 20000–20099, `recovery.rs` 20100–20199, ...) and each test within it
//! a distinct `BASE_PORT` in that block, leaving room for the manager (BASE_PORT) and nodes
//! (BASE_PORT+1..=BASE_PORT+NODES, plus any added later). Single daemons spawned with
//! [`Daemon::spawn`] should listen on `127.0.0.1:0` and use the address they print.
//!
//! **Debugging.** Set `GTSTORE_KEEP_RUN=1` to keep each cluster's run directory (its path is
//! printed); when a test fails, the tail of every daemon log is printed.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Longest a `make` invocation (start, restart, stop...) may take.
pub const MAKE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest one CLI invocation may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a spawned daemon may take to print its `listening on` line.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest to wait for a SIGKILLed daemon to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// The repository root (where the Makefile is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path cargo gave a binary of this package, when it built it for these tests.
fn cargo_bin_exe(name: &str) -> Option<&'static str> {
    match name {
        "gtstore" => option_env!("CARGO_BIN_EXE_gtstore"),
        "gtstore-manager" => option_env!("CARGO_BIN_EXE_gtstore-manager"),
        "gtstore-storage" => option_env!("CARGO_BIN_EXE_gtstore-storage"),
        "gtstore-bench" => option_env!("CARGO_BIN_EXE_gtstore-bench"),
        _ => None,
    }
}

/// The directory holding the binaries under test: where cargo built them for this test run
/// (`target/release` under `cargo test --release`), else `<repo>/target/release`.
pub fn bin_dir() -> PathBuf {
    cargo_bin_exe("gtstore-storage")
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| repo_root().join("target").join("release"))
}

/// Path of the binary `name` (`gtstore`, `gtstore-manager`, `gtstore-storage`, `gtstore-bench`).
pub fn bin(name: &str) -> PathBuf {
    match cargo_bin_exe(name) {
        Some(p) => PathBuf::from(p),
        None => bin_dir().join(name),
    }
}

/// Standard output as (lossy) UTF-8.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error as (lossy) UTF-8.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A readable description of an exit status: `exit 3` or `signal 9`.
pub fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{status:?}"),
    }
}

/// Panics, showing the command's output, unless it exited with `code`.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}, got {}\n--- stdout ---\n{}--- stderr ---\n{}",
        describe_status(&out.status),
        stdout(out),
        stderr(out)
    );
}

/// Panics, showing the command's output, unless it exited 0.
#[track_caller]
pub fn assert_ok(out: &Output) {
    assert_exit(out, 0);
}

/// Output collected from a pipe by a background thread: partial output stays available even if
/// a grandchild (a daemon) keeps the pipe open.
struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    fn start<R: Read + Send + 'static>(mut r: R) -> Drain {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let b = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
            let _ = tx.send(());
        });
        Drain { buf, done }
    }

    /// Waits up to `grace` for EOF, then returns what was read.
    fn finish(self, grace: Duration) -> Vec<u8> {
        let _ = self.done.recv_timeout(grace);
        let data = self.buf.lock().unwrap().clone();
        data
    }
}

/// Runs `cmd` with `input` on stdin (or /dev/null), capturing stdout and stderr. Panics with the
/// partial output if it runs longer than `timeout` (its whole process group is killed first).
pub fn run_timeout(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out = Drain::start(child.stdout.take().unwrap());
    let err = Drain::start(child.stderr.take().unwrap());
    if let Some(data) = input {
        let mut sin = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = sin.write_all(&data);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            let o = out.finish(Duration::from_millis(200));
            let e = err.finish(Duration::from_millis(200));
            panic!(
                "{cmd:?} still running after {timeout:?}; killed\n--- stdout ---\n{}--- stderr ---\n{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    // A daemon started by the command may hold the pipes a little longer (until it moves its
    // stderr to its log); do not wait for it indefinitely.
    let grace = Duration::from_secs(2);
    Output { status, stdout: out.finish(grace), stderr: err.finish(grace) }
}

/// Runs the binary `name` with `args` (time limit [`CLI_TIMEOUT`]).
pub fn run_bin(name: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin(name));
    cmd.args(args);
    run_timeout(cmd, None, CLI_TIMEOUT)
}

/// Whether `pid` is a live (not zombie) process whose name starts with `comm_prefix`.
pub fn alive(pid: i32, comm_prefix: &str) -> bool {
    let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
        return false;
    };
    if !comm.trim_end().starts_with(comm_prefix) {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised comm, which may itself contain spaces.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("X");
    state != "Z" && state != "X"
}

/// The pid in `pidfile`, if the file holds one and that process is a live `gtstore-*` daemon.
pub fn live_pid(pidfile: &Path) -> Option<i32> {
    let text = fs::read_to_string(pidfile).ok()?;
    let pid = text.trim().parse::<i32>().ok()?;
    alive(pid, "gtstore-").then_some(pid)
}

/// Waits until `pid` is no longer a live `gtstore-*` process; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid, "gtstore-") {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The last `n` lines of a file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// A temporary directory removed on drop (kept if `GTSTORE_KEEP_RUN` is set).
pub struct TempDir {
    /// The directory's path.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty `<tmp>/gtstore-<tag>-<pid>` directory.
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("gtstore-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    /// `path/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("GTSTORE_KEEP_RUN").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A local cluster started with `make start` in a private run directory; dropping it SIGKILLs
/// every daemon it recorded a pidfile for and removes the directory.
pub struct Cluster {
    /// The manager's port; node i listens on `base_port + i`.
    pub base_port: u16,
    /// `RUN_DIR`: `manager/` and `node<i>/` live here.
    pub run_dir: PathBuf,
    /// Nodes started by `start` (node ids 1..=nodes).
    pub nodes: u16,
    /// Replicas per key.
    pub rep: u16,
}

impl Cluster {
    /// `make start NODES=nodes REP=rep` on `base_port`; panics (with make's output) on failure.
    pub fn start(base_port: u16, nodes: u16, rep: u16) -> Cluster {
        Cluster::start_with(base_port, nodes, rep, &[])
    }

    /// Like [`Cluster::start`], with extra make variables such as `("R", "1")`, `("FSYNC",
    /// "never")` or `("NODE_FLAGS", "--max-conns 16")`.
    pub fn start_with(base_port: u16, nodes: u16, rep: u16, extra_make_vars: &[(&str, &str)]) -> Cluster {
        let run_dir = std::env::temp_dir().join(format!("gtstore-test-{base_port}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run_dir);
        // Built before `make` runs, so a failed start still cleans up whatever did start.
        let cluster = Cluster { base_port, run_dir, nodes, rep };
        let nodes_s = nodes.to_string();
        let rep_s = rep.to_string();
        let mut vars: Vec<(&str, &str)> = vec![("NODES", &nodes_s), ("REP", &rep_s)];
        vars.extend_from_slice(extra_make_vars);
        let out = cluster.make("start", &vars);
        assert_ok(&out);
        cluster
    }

    /// Runs `make -s TARGET` in the repository with BASE_PORT, RUN_DIR, BIN (the binaries
    /// under test) and NOBUILD=1 set, plus `vars`. Does not check the exit status.
    pub fn make(&self, target: &str, vars: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("make");
        cmd.arg("-s")
            .arg("-C")
            .arg(repo_root())
            .arg(target)
            .arg(format!("BASE_PORT={}", self.base_port))
            .arg(format!("RUN_DIR={}", self.run_dir.display()))
            .arg(format!("BIN={}", bin_dir().display()))
            .arg("NOBUILD=1");
        for (k, v) in vars {
            cmd.arg(format!("{k}={v}"));
        }
        run_timeout(cmd, None, MAKE_TIMEOUT)
    }

    /// `make TARGET NODE=i`, asserting success.
    fn make_node(&self, target: &str, i: u16) {
        let n = i.to_string();
        assert_ok(&self.make(target, &[("NODE", &n)]));
    }

    /// `target/release/gtstore --manager 127.0.0.1:<base_port> ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_timeout(self.cli_command(args), None, CLI_TIMEOUT)
    }

    /// Like [`Cluster::cli`], with `input` on standard input (for `--val -`).
    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        run_timeout(self.cli_command(args), Some(input), CLI_TIMEOUT)
    }

    /// The `gtstore` command [`Cluster::cli`] runs, to add environment or input to.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("gtstore"));
        cmd.arg("--manager").arg(self.manager_addr()).args(args);
        cmd
    }

    /// `make kill NODE=i`: SIGKILL node i and wait until it is gone.
    pub fn kill_node(&self, i: u16) {
        self.make_node("kill", i);
    }

    /// `make restart NODE=i`: start node i again on its data directory (returns once ready).
    pub fn restart_node(&self, i: u16) {
        self.make_node("restart", i);
    }

    /// `make add NODE=i`: start a new node i that joins the running cluster.
    pub fn add_node(&self, i: u16) {
        self.make_node("add", i);
    }

    /// `make kill-manager`.
    pub fn kill_manager(&self) {
        assert_ok(&self.make("kill-manager", &[]));
    }

    /// `make restart-manager`.
    pub fn restart_manager(&self) {
        let rep = self.rep.to_string();
        assert_ok(&self.make("restart-manager", &[("REP", &rep)]));
    }

    /// `make stop`: graceful shutdown of every daemon (output returned, not checked).
    pub fn stop(&self) -> Output {
        self.make("stop", &[])
    }

    /// `make status` output.
    pub fn status(&self) -> Output {
        self.make("status", &[])
    }

    /// Node i's data directory.
    pub fn node_dir(&self, i: u16) -> PathBuf {
        self.run_dir.join(format!("node{i}"))
    }

    /// The manager's state directory.
    pub fn manager_dir(&self) -> PathBuf {
        self.run_dir.join("manager")
    }

    /// Node i's log file.
    pub fn node_log(&self, i: u16) -> PathBuf {
        self.node_dir(i).join("storage.log")
    }

    /// The manager's log file.
    pub fn manager_log(&self) -> PathBuf {
        self.manager_dir().join("manager.log")
    }

    /// Pid of node i if it is running.
    pub fn node_pid(&self, i: u16) -> Option<i32> {
        live_pid(&self.node_dir(i).join("gtstore-storage.pid"))
    }

    /// Pid of the manager if it is running.
    pub fn manager_pid(&self) -> Option<i32> {
        live_pid(&self.manager_dir().join("gtstore-manager.pid"))
    }

    /// `127.0.0.1:<base_port>`.
    pub fn manager_addr(&self) -> String {
        format!("127.0.0.1:{}", self.base_port)
    }

    /// `127.0.0.1:<base_port + i>`.
    pub fn node_addr(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base_port + i)
    }

    /// Every pidfile and log under the run directory: manager first, then nodes by id.
    fn daemon_files(&self) -> Vec<(PathBuf, PathBuf)> {
        let mut files = vec![(self.manager_dir().join("gtstore-manager.pid"), self.manager_log())];
        let mut nodes: Vec<(u32, PathBuf)> = fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix("node")?.parse::<u32>().ok()?;
                Some((id, e.path()))
            })
            .collect();
        nodes.sort();
        for (_, dir) in nodes {
            files.push((dir.join("gtstore-storage.pid"), dir.join("storage.log")));
        }
        files
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let files = self.daemon_files();
        let mut killed = Vec::new();
        for (pidfile, _) in &files {
            if let Some(pid) = live_pid(pidfile) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                killed.push(pid);
            }
        }
        for pid in killed {
            if !wait_gone(pid, KILL_WAIT) {
                eprintln!("pid {pid} survived SIGKILL for {KILL_WAIT:?}");
            }
        }
        if thread::panicking() {
            eprintln!("cluster on port {} failed; run dir {}", self.base_port, self.run_dir.display());
            for (_, log) in &files {
                if log.exists() {
                    eprintln!("--- tail of {} ---", log.display());
                    eprintln!("{}", tail(log, LOG_TAIL_LINES));
                }
            }
        }
        if std::env::var_os("GTSTORE_KEEP_RUN").is_some() {
            eprintln!("keeping {}", self.run_dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// One daemon spawned directly (not through make), in the foreground. It is SIGKILLed and
/// reaped on drop; on a test failure its stderr tail is printed.
pub struct Daemon {
    child: Child,
    /// The address from its `listening on ADDR` line.
    pub addr: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Copies a pipe into `buf` until EOF; lines are also sent on `lines`, if given.
fn collect(r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>, lines: Option<mpsc::Sender<String>>) {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    buf.lock().unwrap().extend_from_slice(&line);
                    if let Some(tx) = &lines {
                        let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
                    }
                }
            }
        }
    });
}

impl Daemon {
    /// Spawns `bin ARGS...` and waits (up to [`LISTEN_TIMEOUT`]) for its `listening on ADDR`
    /// line on stdout. Panics, with its stderr, if it exits or stays silent.
    pub fn spawn(bin: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn_env(bin, args, &[])
    }

    /// Like [`Daemon::spawn`], with extra environment variables (e.g. `GTSTORE_LOG=debug`).
    pub fn spawn_env(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(bin);
        cmd.args(args).envs(envs.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        collect(child.stdout.take().unwrap(), Arc::clone(&stdout), Some(tx));
        collect(child.stderr.take().unwrap(), Arc::clone(&stderr), None);
        let mut daemon = Daemon { child, addr: String::new(), stdout, stderr };
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        daemon.addr = addr.trim().to_string();
                        return daemon;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = daemon.wait_exit(Duration::from_secs(2));
                    panic!(
                        "{cmd:?} closed stdout before `listening on` ({})\n--- stderr ---\n{}",
                        status.map(|s| describe_status(&s)).unwrap_or_default(),
                        daemon.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{cmd:?} printed no `listening on` line within {LISTEN_TIMEOUT:?}\n--- stderr ---\n{}",
                    daemon.stderr_text()
                ),
            }
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The address it listens on (from its `listening on` line).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `sig` (e.g. `Signal::SIGTERM`, `Signal::SIGHUP`).
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }

    /// Waits up to `timeout` for the daemon to exit; its status, or None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything written to stdout so far (after and including `listening on`).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Everything written to stderr (its log, unless it was given `--log`) so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let text = self.stderr_text();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!("--- stderr tail of pid {} ({}) ---\n{}", self.pid(), self.addr, lines[start..].join("\n"));
        }
    }
}

/// One node line of `gtstore status`: `server<i> HOST:PORT up|down sectors=S keys=K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Node id.
    pub id: u16,
    /// `HOST:PORT`.
    pub addr: String,
    /// `up` or `down` (or whatever state name the manager reports).
    pub state: String,
    /// Sectors the node holds (or owns, when it did not answer).
    pub sectors: u64,
    /// Keys it holds; `None` when it did not answer (`keys=?`).
    pub keys: Option<u64>,
}

/// `gtstore status`, parsed.
#[derive(Debug, Clone)]
pub struct StatusReport {
    /// The table's epoch.
    pub epoch: u64,
    /// Node lines, in the order printed.
    pub nodes: Vec<NodeStatus>,
    /// The number on the `under-replicated` line.
    pub under_replicated: u64,
    /// The whole output.
    pub text: String,
}

impl StatusReport {
    /// The line of node `id`, if it is listed.
    pub fn node(&self, id: u16) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// `(id, sectors)` of every node, in the order printed.
    pub fn sectors(&self) -> Vec<(u16, u64)> {
        self.nodes.iter().map(|n| (n.id, n.sectors)).collect()
    }
}

/// Parses the output of `gtstore status`; `None` if it does not have the documented shape.
pub fn parse_status(text: &str) -> Option<StatusReport> {
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next()?.split_whitespace().collect();
    if first.first() != Some(&"epoch") {
        return None;
    }
    let epoch = first.get(1)?.parse().ok()?;
    let mut nodes = Vec::new();
    let mut under = None;
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"under-replicated") {
            under = Some(f.get(1)?.parse().ok()?);
        } else if let Some(id) = f.first().and_then(|w| w.strip_prefix("server")) {
            let field = |name: &str| f.iter().find_map(|w| w.strip_prefix(name));
            nodes.push(NodeStatus {
                id: id.parse().ok()?,
                addr: f.get(1)?.to_string(),
                state: f.get(2)?.to_string(),
                sectors: field("sectors=")?.parse().ok()?,
                keys: field("keys=")?.parse().ok(),
            });
        }
    }
    Some(StatusReport { epoch, nodes, under_replicated: under?, text: text.to_string() })
}

impl Cluster {
    /// `gtstore status`, parsed; `None` if the command failed or printed something else.
    pub fn status_report(&self) -> Option<StatusReport> {
        let out = self.cli(&["status"]);
        if !out.status.success() {
            return None;
        }
        parse_status(&stdout(&out))
    }

    /// Polls `gtstore status` every 200 ms until `pred` holds; returns the report and the time
    /// it took, or (on timeout) the last report seen.
    pub fn wait_status(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&StatusReport) -> bool,
    ) -> Result<(StatusReport, Duration), Option<StatusReport>> {
        let started = Instant::now();
        let mut last = None;
        loop {
            if let Some(s) = self.status_report() {
                if pred(&s) {
                    return Ok((s, started.elapsed()));
                }
                last = Some(s);
            }
            if started.elapsed() >= timeout {
                return Err(last);
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// xorshift64: a small deterministic generator for test schedules (no extra crates).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a writer knows about one key: a read must give its last acknowledged value, or the
/// value of a put that failed after it (it may or may not have landed).
#[derive(Default, Clone, Debug)]
pub struct KeyState {
    /// The last acknowledged value.
    pub acked: Option<String>,
    /// Values of puts that failed after that acknowledgement: they may or may not have landed.
    pub maybe: Vec<String>,
}

impl KeyState {
    /// Whether `got` (None: not found) is an acceptable read.
    pub fn accepts(&self, got: Option<&[u8]>) -> bool {
        match got {
            None => self.acked.is_none(),
            Some(v) => {
                self.acked.as_deref().map(str::as_bytes) == Some(v) || self.maybe.iter().any(|m| m.as_bytes() == v)
            }
        }
    }
}

// ----- raw protocol connections ---------------------------------------------------------------

/// Read and write timeout of every raw socket: a hang fails the test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A raw connection with timeouts set.
pub fn connect(addr: &str) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.set_nodelay(true);
    s
}

/// Reads one whole message, keeping any bytes after it in `buf`.
pub fn read_msg(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> gtstore::net::codec::Message {
    let limits = gtstore::net::codec::Limits { max_header: 128, max_body: 64 << 20 };
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if let Some(n) = gtstore::net::codec::check(buf, &limits).expect("the node's reply is well formed") {
            let m = gtstore::net::codec::parse(&buf[..n]).expect("the node's reply parses");
            buf.drain(..n);
            return m;
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!("connection closed before a whole reply; got {:?}", String::from_utf8_lossy(buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("no reply within {IO_TIMEOUT:?} ({e}); got {:?}", String::from_utf8_lossy(buf)),
        }
    }
}

impl Cluster {
    /// The cluster key `make start` made in RUN_DIR.
    pub fn cluster_key(&self) -> gtstore::net::auth::Key {
        gtstore::net::auth::Key::load(&self.run_dir.join("cluster.key")).expect("make start made RUN_DIR/cluster.key")
    }

    /// A raw connection to `addr` that has proved the cluster key, as a daemon's does: it may
    /// send internal verbs.
    pub fn connect_as_daemon(&self, addr: &str) -> std::net::TcpStream {
        let s = connect(addr);
        let kind = gtstore::net::auth::KeyKind::Cluster;
        gtstore::client::authenticate(&s, kind, &self.cluster_key(), IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("proving the cluster key to {addr}: {e}"));
        s
    }
}
