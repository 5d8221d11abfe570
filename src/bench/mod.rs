//! `gtstore-bench`: the benchmark tool (SPEC section 10, `gtstore-bench(1)`).
//!
//! The blocking client library is used once, to say hello to the manager and
//! fetch the partition table (and at the end for each node's `STATS`); the
//! load itself runs on the project's own one-thread epoll [`Reactor`]
//! (`load`), with every simulated client's connections as outbound
//! connections of that loop.
//!
//! With `--resp HOST:PORT` there is no cluster: the same load goes to one
//! RESP2 server (Redis, Valkey, a node's RESP port) as GET and SET.
//!
//! - [`load`]: the load generator (closed and open loop).
//! - [`resp`]: the RESP mode's commands and its matching of replies.
//! - [`report`]: the report lines, CSV rows, key counts and resident memory.
//! - [`chart`]: `gtstore-bench chart`: SVG bar charts from the CSV files.
//!
//! [`Reactor`]: crate::net::Reactor

pub mod chart;
pub mod load;
pub mod report;
pub mod resp;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{self, opt_num, Exit, EX_NOPERM, EX_OSERR, EX_SOFTWARE, EX_UNAVAILABLE};
use crate::client::{Client, Config};
use load::{KeyChoice, Outcome, Router, Target, Workload};
use report::{NodeFigures, PidSource, Summary};
use resp::RespTarget;

const USAGE: &str = "Usage: gtstore-bench [options]
       gtstore-bench --resp HOST:PORT[,...] [--wait-cmd CMD] [--resp-password-file FILE] [options]
       gtstore-bench chart throughput|balance|peers IN.csv OUT.svg";

/// The options that only a GTStore cluster has, refused with `--resp`.
const CLUSTER_ONLY: [&str; 6] = ["manager", "key-file", "node-stats", "node-csv", "pidfile", "run-dir"];

/// How long `--resp` waits for its server to accept a first connection.
const RESP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt("", "manager", "cluster manager (default $GTSTORE_MANAGER, else 127.0.0.1:7000)", "ADDR");
    o.optopt("", "resp", "no cluster: GET and SET to RESP2 servers, client i to the (i mod N)th", "HOST:PORT[,...]");
    o.optopt("", "wait-cmd", "with --resp: send CMD after each SET; its reply ends the write", "CMD");
    o.optopt("", "resp-password-file", "with --resp: first send AUTH with the password in FILE (optional)", "FILE");
    o.optopt("", "ops", "operations in all (default 200000)", "N");
    o.optopt("", "read-ratio", "fraction of reads, 0 to 1 (default 0.5)", "F");
    o.optopt("", "clients", "concurrent clients (default 50)", "N");
    o.optopt("", "keys", "size of the key space key0..key<N-1> (default 100000)", "N");
    o.optopt("", "value-size", "bytes per value (default 16)", "BYTES");
    o.optopt("", "pipeline", "requests in flight per client (default 1)", "P");
    o.optopt("", "zipf", "draw keys from a Zipf law of exponent S > 0", "S");
    o.optopt("", "rate", "open loop at R operations per second in total", "R");
    o.optopt("", "timeout-ms", "a request unanswered this long is an error (default 5000)", "MS");
    o.optopt("", "key-file", "client key for nodes started with --client-key (default $GTSTORE_KEY_FILE)", "FILE");
    o.optflag("", "preload", "first write every key once, unmeasured");
    o.optflag("", "sequential", "operation i writes key<i>: --ops distinct inserts in order");
    o.optopt("", "csv", "append the result row to FILE (header if new)", "FILE");
    o.optopt("", "label", "the label column of the CSV row (default NODESxREPLICAS, or resp)", "TEXT");
    o.optflag("", "node-stats", "print each node's key count after the run");
    o.optopt("", "node-csv", "append each node's figures to FILE (implies --node-stats)", "FILE");
    o.optmulti("", "pidfile", "a storage node's pidfile, for its resident memory (repeatable)", "FILE");
    o.optopt("", "run-dir", "every node<ID>/gtstore-storage.pid under DIR, for resident memory", "DIR");
    o.optflag("", "progress", "a progress line on stderr each second (default if stderr is a terminal)");
    o.optflag("", "quiet", "no progress line");
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

/// The parsed command line of a run.
struct Args {
    manager: String,
    /// `--resp`: the RESP server, instead of the cluster of `manager`.
    resp: Option<RespTarget>,
    w: Workload,
    preload: bool,
    csv: Option<PathBuf>,
    label: Option<String>,
    node_stats: bool,
    node_csv: Option<PathBuf>,
    pids: Vec<PidSource>,
}

fn parse(m: &getopts::Matches) -> Result<Args, Exit> {
    if !m.free.is_empty() {
        return Err(Exit::usage(format!("unexpected argument '{}' (see --help)", m.free[0])));
    }
    let ops: u64 = opt_num(m, "ops")?.unwrap_or(200_000);
    let read_ratio: f64 = opt_num(m, "read-ratio")?.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&read_ratio) {
        return Err(Exit::usage("--read-ratio must be between 0 and 1"));
    }
    let clients: usize = opt_num(m, "clients")?.unwrap_or(50);
    if clients == 0 || clients > 10_000 {
        return Err(Exit::usage("--clients must be from 1 to 10000"));
    }
    let keys: u64 = opt_num(m, "keys")?.unwrap_or(100_000);
    if keys == 0 {
        return Err(Exit::usage("--keys must be at least 1"));
    }
    let value_size: usize = opt_num(m, "value-size")?.unwrap_or(16);
    if value_size > 1 << 20 {
        return Err(Exit::usage("--value-size must be at most 1048576 (the largest value)"));
    }
    let pipeline: usize = opt_num(m, "pipeline")?.unwrap_or(1);
    if pipeline == 0 || pipeline > 100_000 {
        return Err(Exit::usage("--pipeline must be from 1 to 100000"));
    }
    let rate: Option<f64> = opt_num(m, "rate")?;
    if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(Exit::usage("--rate must be a positive number of operations per second"));
    }
    let timeout_ms: u64 = opt_num(m, "timeout-ms")?.unwrap_or(5000);
    if timeout_ms == 0 {
        return Err(Exit::usage("--timeout-ms must be at least 1"));
    }
    let zipf: Option<f64> = opt_num(m, "zipf")?;
    let choice = match (zipf, m.opt_present("sequential")) {
        (Some(_), true) => return Err(Exit::usage("--zipf and --sequential exclude each other")),
        (Some(s), false) if !(s > 0.0 && s.is_finite()) => return Err(Exit::usage("--zipf must be greater than 0")),
        (Some(s), false) => KeyChoice::zipf(keys, s),
        (None, true) if m.opt_present("read-ratio") && read_ratio > 0.0 => {
            return Err(Exit::usage("--sequential writes only; it excludes a --read-ratio above 0"))
        }
        (None, true) => KeyChoice::Sequential,
        (None, false) => KeyChoice::Uniform,
    };
    if m.opt_present("progress") && m.opt_present("quiet") {
        return Err(Exit::usage("--progress and --quiet exclude each other"));
    }
    let progress = m.opt_present("progress") || (!m.opt_present("quiet") && std::io::stderr().is_terminal());
    let label = m.opt_str("label");
    if label.as_deref().is_some_and(|l| l.contains([',', '\n', '\r', '"'])) {
        return Err(Exit::usage("--label may not contain commas, quotes or newlines"));
    }
    let mut pids: Vec<PidSource> =
        m.opt_strs("pidfile").iter().map(|p| PidSource::from_pidfile(Path::new(p))).collect();
    if let Some(dir) = m.opt_str("run-dir") {
        let found = PidSource::from_run_dir(Path::new(&dir)).map_err(|e| Exit::usage(format!("--run-dir: {e}")))?;
        if found.is_empty() {
            return Err(Exit::usage(format!("--run-dir: no node<ID>/gtstore-storage.pid under {dir}")));
        }
        pids.extend(found);
    }
    let node_csv = m.opt_str("node-csv").map(PathBuf::from);
    let resp = resp_target(m)?;
    let key = match resp {
        Some(_) => None,
        None => crate::client::key_file(m.opt_str("key-file")).map_err(Exit::usage)?,
    };
    Ok(Args {
        manager: cli::manager_addr(m.opt_str("manager")),
        resp,
        w: Workload {
            ops,
            read_ratio,
            keys,
            choice,
            value_size,
            clients,
            pipeline,
            rate,
            timeout: Duration::from_millis(timeout_ms),
            progress,
            phase: "run",
            key,
        },
        preload: m.opt_present("preload"),
        csv: m.opt_str("csv").map(PathBuf::from),
        label,
        node_stats: m.opt_present("node-stats") || node_csv.is_some() || !pids.is_empty(),
        node_csv,
        pids,
    })
}

/// `--resp` and the options that go with it.
fn resp_target(m: &getopts::Matches) -> Result<Option<RespTarget>, Exit> {
    let Some(addr) = m.opt_str("resp") else {
        if let Some(flag) = ["wait-cmd", "resp-password-file"].into_iter().find(|f| m.opt_present(f)) {
            return Err(Exit::usage(format!("--{flag} needs --resp")));
        }
        return Ok(None);
    };
    if let Some(flag) = CLUSTER_ONLY.into_iter().find(|f| m.opt_present(f)) {
        return Err(Exit::usage(format!("--{flag} is for a GTStore cluster; it excludes --resp")));
    }
    let addrs = addr.split(',').map(|a| cli::resolve(a.trim())).collect::<Result<Vec<_>, Exit>>()?;
    if addrs.len() > 1024 {
        return Err(Exit::usage("--resp: at most 1024 servers"));
    }
    let wait = m.opt_str("wait-cmd").map(|c| resp::wait_command(&c)).transpose().map_err(Exit::usage)?;
    let auth = m.opt_str("resp-password-file");
    let auth = auth.map(|p| resp::auth_command(Path::new(&p))).transpose().map_err(Exit::usage)?;
    Ok(Some(RespTarget { addrs, auth, wait }))
}

/// Runs `gtstore-bench ARGS` (without the program name); returns the exit status.
pub fn main(args: &[String]) -> Result<i32, Exit> {
    if args.first().map(String::as_str) == Some("chart") {
        return chart::main(&args[1..]);
    }
    let opts = options();
    let m = cli::parse_args(&opts, args)?;
    if m.opt_present("help") {
        print!("{}", opts.usage(USAGE));
        return Ok(0);
    }
    if m.opt_present("version") {
        println!("gtstore-bench {}", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    let mut a = parse(&m)?;
    if let Some(t) = a.resp.clone() {
        return run_resp(&a, &t);
    }
    cli::resolve(&a.manager)?;

    let cfg = Config { manager: a.manager.clone(), key: a.w.key.clone(), ..Config::default() };
    let mut client = Client::connect(cfg).map_err(|e| Exit::new(EX_UNAVAILABLE, e.to_string()))?;
    let table = client.table().clone();
    let router = Router::new(&table).map_err(|e| Exit::new(EX_UNAVAILABLE, e))?;
    let nodes = router.nodes.len();
    let label = a.label.clone().unwrap_or_else(|| format!("{nodes}x{}", table.rep));
    for p in a.pids.iter_mut().filter(|p| p.node.is_none()) {
        // A pidfile outside a node<ID> directory can only belong to a lone node.
        match router.nodes[..] {
            [(id, _)] => p.node = Some(id),
            _ => {
                return Err(Exit::usage(format!(
                    "--pidfile {}: not in a node<ID> directory, so its node is unknown",
                    p.pidfile.display()
                )))
            }
        }
    }

    let mut figures: Vec<NodeFigures> = Vec::new();
    if a.node_stats {
        figures = router.nodes.iter().map(|&(id, _)| NodeFigures { node: id, ..NodeFigures::default() }).collect();
        for f in figures.iter_mut() {
            f.keys_before = client.stats(f.node).ok().map(|s| s.keys);
            f.rss_before_kb = a.pids.iter().find(|p| p.node == Some(f.node)).and_then(PidSource::rss_kb);
        }
    }

    let target = Target::Native { router: &router, client_id: client.id() };
    let who = format!("nodes={nodes} replicas={}", table.rep);
    let o = measure(&a, target, &label, &who, Some((nodes, table.rep)))?;

    if a.node_stats {
        for f in figures.iter_mut() {
            match client.stats(f.node) {
                Ok(st) => {
                    f.keys = Some(st.keys);
                    f.sectors = Some(st.sectors);
                }
                Err(e) => eprintln!("gtstore-bench: server{}: no stats: {e}", f.node),
            }
            f.rss_kb = a.pids.iter().find(|p| p.node == Some(f.node)).and_then(PidSource::rss_kb);
            println!("{}", f.line());
        }
        if let Some(path) = &a.node_csv {
            let rows: Vec<String> = figures.iter().map(|f| f.csv_row(&label)).collect();
            report::append_csv(path, report::NODE_CSV_HEADER, &rows).map_err(|e| Exit::new(EX_OSERR, e))?;
        }
    }
    Ok(status(&o))
}

/// `--resp`: the run against one RESP2 server.
fn run_resp(a: &Args, t: &RespTarget) -> Result<i32, Exit> {
    // A server that is not there fails here, once, not as every operation.
    for addr in &t.addrs {
        std::net::TcpStream::connect_timeout(addr, RESP_CONNECT_TIMEOUT)
            .map_err(|e| Exit::new(EX_UNAVAILABLE, format!("cannot connect to {addr}: {e}")))?;
    }
    let label = a.label.clone().unwrap_or_else(|| "resp".into());
    let wait = match &t.wait {
        Some(crate::net::resp::Value::Array(words)) => words
            .first()
            .and_then(|w| w.as_bytes())
            .map_or("-".into(), |w| cli::printable(&String::from_utf8_lossy(w)).replace(' ', "_")),
        _ => "-".into(),
    };
    let addrs: Vec<String> = t.addrs.iter().map(SocketAddr::to_string).collect();
    let who = format!("resp={} wait={wait}", addrs.join(","));
    let o = measure(a, Target::Resp(t), &label, &who, None)?;
    Ok(status(&o))
}

/// The exit status of a run that went to its end or was interrupted.
fn status(o: &Outcome) -> i32 {
    match o.interrupted {
        true => 128 + nix::sys::signal::Signal::SIGINT as i32,
        false => 0,
    }
}

/// The preload, if asked for, then the measured run, its report lines
/// (the workload's starting with `label=LABEL WHO`) and CSV row. `shape`:
/// the nodes and replicas, when known.
fn measure(a: &Args, target: Target<'_>, label: &str, who: &str, shape: Option<(usize, u32)>) -> Result<Outcome, Exit> {
    if a.preload {
        let w = Workload {
            ops: a.w.keys,
            read_ratio: 0.0,
            choice: KeyChoice::Sequential,
            rate: None,
            phase: "preload",
            ..a.w.clone()
        };
        eprintln!("gtstore-bench: preloading {} keys (not measured)", w.ops);
        let o = load::run(&w, target).map_err(|e| Exit::new(EX_OSERR, e))?;
        if let Some(why) = o.refused {
            return Err(Exit::new(EX_NOPERM, why));
        }
        if o.interrupted {
            return Err(Exit::new(EX_SOFTWARE, "interrupted during the preload"));
        }
        if o.errors > 0 {
            eprintln!(
                "gtstore-bench: preload: {} of {} writes failed; first: {}",
                o.errors,
                o.ops,
                o.first_error.as_deref().unwrap_or("?")
            );
        }
    }

    let mode = match a.w.rate {
        Some(r) => format!("open rate={r}"),
        None => "closed".into(),
    };
    let keys = match &a.w.choice {
        KeyChoice::Uniform => format!("keys={} choice=uniform", a.w.keys),
        KeyChoice::Zipf(_) => format!("keys={} choice=zipf", a.w.keys),
        KeyChoice::Sequential => format!("keys={} choice=sequential", a.w.ops),
    };
    let read_ratio = if matches!(a.w.choice, KeyChoice::Sequential) { 0.0 } else { a.w.read_ratio };
    println!(
        "label={label} {who} clients={} pipeline={} read_ratio={read_ratio:.2} value_size={} {keys} loop={mode}",
        a.w.clients, a.w.pipeline, a.w.value_size
    );
    let o = load::run(&a.w, target).map_err(|e| Exit::new(EX_OSERR, e))?;
    if let Some(why) = o.refused {
        return Err(Exit::new(EX_NOPERM, why));
    }
    let s = Summary::new(label, shape, a.w.clients, a.w.pipeline, &o);
    println!("{}", s.line());
    if o.errors > 0 {
        eprintln!("gtstore-bench: {} operations failed; first: {}", o.errors, o.first_error.as_deref().unwrap_or("?"));
    }
    if let Some(path) = &a.csv {
        report::append_csv(path, report::RUN_CSV_HEADER, &[s.csv_row()]).map_err(|e| Exit::new(EX_OSERR, e))?;
    }

    Ok(o)
}
