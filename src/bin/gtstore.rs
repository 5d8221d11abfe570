//! `gtstore`: the command-line client (SPEC section 8).

use std::io::{Read, Write};
use std::time::Duration;

use gtstore::cli::{self, opt_num, Exit, EX_DATAERR, EX_NOPERM, EX_NOT_FOUND, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE};
use gtstore::client::{self, Client, Expiry};
use gtstore::net::codec::{ErrorCode, FIGURE_VERBS};

const PROG: &str = "gtstore";
/// The largest value read from standard input with `--val -`.
const MAX_STDIN_VALUE: u64 = 16 << 20;
/// The longest `--ttl`, in seconds: about 100 years.
const MAX_TTL_S: u64 = 100 * 366 * 24 * 3600;

fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt("", "put", "store a value under KEY (with --val)", "KEY");
    o.optopt("", "val", "the value to store; - reads it from standard input", "VALUE");
    o.optopt("", "ttl", "with --put: the key expires SECONDS after the write (by the coordinator's clock)", "SECONDS");
    o.optopt("", "get", "print the value of KEY", "KEY");
    o.optopt("", "del", "delete KEY", "KEY");
    o.optopt("", "node", "with inspect and stats: the node to ask", "I");
    o.optopt(
        "",
        "manager",
        "cluster manager, then storage nodes to ask for the table if it is down (default $GTSTORE_MANAGER, else \
         127.0.0.1:7000)",
        "ADDR[,ADDR...]",
    );
    o.optopt("", "key-file", "client key for nodes started with --client-key (default $GTSTORE_KEY_FILE)", "FILE");
    o.optopt("", "timeout-ms", "per-attempt timeout (default 300)", "MS");
    o.optopt("", "deadline-ms", "total time for retries (default 5000)", "MS");
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

const USAGE: &str = "Usage: gtstore [options] --put KEY --val VALUE [--ttl SECONDS]
       gtstore [options] --get KEY
       gtstore [options] --del KEY
       gtstore [options] status
       gtstore [options] stats --node I
       gtstore [options] inspect --node I KEY";

/// One CLI invocation's work.
enum Command {
    Put(Vec<u8>, Option<Vec<u8>>, Expiry),
    Get(Vec<u8>),
    Del(Vec<u8>),
    Status,
    Stats(u32),
    Inspect(u32, Vec<u8>),
}

fn command(m: &getopts::Matches) -> Result<Command, Exit> {
    let picked = ["put", "get", "del"].iter().filter(|o| m.opt_present(o)).count() + usize::from(!m.free.is_empty());
    if picked != 1 {
        return Err(Exit::usage("give exactly one of --put, --get, --del, status, stats, inspect (see --help)"));
    }
    if let Some(key) = m.opt_str("put") {
        let val =
            m.opt_str("val").ok_or_else(|| Exit::usage("--put needs --val VALUE (or --val - for standard input)"))?;
        let value = if val == "-" { None } else { Some(val.into_bytes()) };
        let expiry = match opt_num::<u64>(m, "ttl")? {
            None => Expiry::Never,
            Some(s) if (1..=MAX_TTL_S).contains(&s) => Expiry::After(s * 1000),
            Some(_) => return Err(Exit::usage(format!("--ttl: give whole seconds from 1 to {MAX_TTL_S}"))),
        };
        return Ok(Command::Put(key.into_bytes(), value, expiry));
    }
    if m.opt_present("val") || m.opt_present("ttl") {
        return Err(Exit::usage("--val and --ttl go with --put"));
    }
    if let Some(key) = m.opt_str("get") {
        return Ok(Command::Get(key.into_bytes()));
    }
    if let Some(key) = m.opt_str("del") {
        return Ok(Command::Del(key.into_bytes()));
    }
    match m.free.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["status"] => Ok(Command::Status),
        ["stats"] => Ok(Command::Stats(opt_num(m, "node")?.ok_or_else(|| Exit::usage("stats needs --node I"))?)),
        ["inspect", key] => {
            let node = opt_num(m, "node")?.ok_or_else(|| Exit::usage("inspect needs --node I"))?;
            Ok(Command::Inspect(node, key.as_bytes().to_vec()))
        }
        _ => Err(Exit::usage(format!("unknown command '{}' (see --help)", m.free.join(" ")))),
    }
}

fn read_stdin_value() -> Result<Vec<u8>, Exit> {
    let mut value = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN_VALUE + 1)
        .read_to_end(&mut value)
        .map_err(|e| Exit::new(EX_DATAERR, format!("cannot read the value from standard input: {e}")))?;
    if value.len() as u64 > MAX_STDIN_VALUE {
        return Err(Exit::new(EX_DATAERR, format!("value on standard input is over {MAX_STDIN_VALUE} bytes")));
    }
    Ok(value)
}

fn fail(e: client::Error, key: &[u8]) -> Exit {
    match e {
        client::Error::NotFound { .. } => {
            Exit::new(EX_NOT_FOUND, format!("{}: not found", String::from_utf8_lossy(key)))
        }
        client::Error::Unavailable(why) => Exit::new(EX_UNAVAILABLE, why),
        client::Error::Refused { code: ErrorCode::Auth, reason } => Exit::new(EX_NOPERM, reason),
        client::Error::Refused { reason, .. } => Exit::new(EX_DATAERR, reason),
    }
}

fn print_line(out: &mut impl Write, parts: &[&[u8]]) -> Result<(), Exit> {
    let mut line = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            line.extend_from_slice(b", ");
        }
        line.extend_from_slice(p);
    }
    line.push(b'\n');
    out.write_all(&line).map_err(|e| Exit::new(EX_SOFTWARE, format!("cannot write output: {e}")))
}

/// `gtstore status`: the epoch, one line per node, then how many sectors
/// still lack a copy (nodes that must receive sectors and have not yet);
/// if the manager did not answer, a last line saying so and which node's
/// copy of the table this is (the exit status stays 0: the cluster serves).
fn status(c: &mut Client, manager: &str, out: &mut impl Write) -> Result<(), Exit> {
    c.refresh_table();
    let table = c.table().clone();
    let io = |e: std::io::Error| Exit::new(EX_SOFTWARE, format!("cannot write output: {e}"));
    let t = &table;
    writeln!(
        out,
        "epoch {} sectors {} replicas {} R {} W {}",
        t.epoch,
        t.sectors(),
        t.rep,
        t.read_quorum,
        t.write_quorum
    )
    .map_err(io)?;
    let mut missing = 0u64;
    let mut unknown = 0;
    for m in &table.members {
        let (sectors, keys) = match c.stats(m.id) {
            Ok(s) => {
                missing += u64::from(s.missing);
                (s.sectors.to_string(), s.keys.to_string())
            }
            Err(_) => {
                unknown += 1;
                (table.owned_by(m.id).to_string(), "?".into())
            }
        };
        let addr = gtstore::cli::printable(&m.addr);
        writeln!(out, "server{} {addr} {} sectors={} keys={}", m.id, m.state.name(), sectors, keys).map_err(io)?;
    }
    let short = (0..t.sectors()).filter(|&s| (t.preference(s).len() as u32) < t.rep).count();
    let note = if unknown > 0 { format!(" ({unknown} node(s) did not answer)") } else { String::new() };
    writeln!(out, "under-replicated {}{note}", missing + short as u64).map_err(io)?;
    if let Some(why) = c.manager_down() {
        let from = c.table_from();
        let addr = gtstore::cli::printable(t.member(from).map_or("", |m| m.addr.as_str()));
        let why = gtstore::cli::printable(why);
        writeln!(out, "manager {manager} down ({why}); table from server{from} at {addr}").map_err(io)?;
    }
    Ok(())
}

/// `gtstore stats --node I`: node I's figures, a few lines for people.
fn stats(c: &mut Client, node: u32, out: &mut impl Write) -> Result<(), Exit> {
    let member = c.table().member(node).map(|m| (gtstore::cli::printable(&m.addr), m.state.name()));
    let Some((addr, state)) = member else {
        return Err(Exit::new(EX_UNAVAILABLE, format!("server{node} is not a member of the cluster")));
    };
    let s = c.stats(node).map_err(|e| match e {
        client::Error::Refused { code: ErrorCode::Auth, reason } => Exit::new(EX_NOPERM, reason),
        client::Error::Refused { reason, .. } => Exit::new(EX_DATAERR, format!("server{node}: {reason}")),
        e => Exit::new(EX_UNAVAILABLE, format!("server{node}: {e}")),
    })?;
    let mut text = format!("server{node} {addr} {state}\nkeys {}\n", s.keys);
    let Some(f) = s.figures else {
        text += &format!(
            "sectors owned {}, under-replicated {}\n(an older node: no other figures)\n",
            s.sectors, s.missing
        );
        return out.write_all(text.as_bytes()).map_err(|e| Exit::new(EX_SOFTWARE, format!("cannot write output: {e}")));
    };
    let per_verb = |v: &[u64; 5]| -> String {
        let items: Vec<String> = FIGURE_VERBS.iter().zip(v).map(|(verb, n)| format!("{verb} {n}")).collect();
        items.join(", ")
    };
    text += &format!("tombstones {}\n", f.tombstones);
    text += &format!("sectors held {}, owned {}, under-replicated {}\n", f.held, s.sectors, s.missing);
    text += &format!("hints pending {}\npulls in flight {}\noperations in flight {}\n", f.hints, f.pulls, f.ops);
    text += &format!("requests {}\nerrors {}\n", per_verb(&f.requests), per_verb(&f.errors));
    for (verb, [n, p50, p99]) in FIGURE_VERBS.iter().zip(f.latency) {
        text += &match n {
            0 => format!("latency {verb} none yet\n"),
            n => format!("latency {verb} p50 {}, p99 {} ({n} answers)\n", duration(p50), duration(p99)),
        };
    }
    out.write_all(text.as_bytes()).map_err(|e| Exit::new(EX_SOFTWARE, format!("cannot write output: {e}")))
}

/// Microseconds for people: `850 us`, `1.25 ms`, `2.50 s`.
fn duration(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} us"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn run(cmd: Command, cfg: client::Config) -> Result<(), Exit> {
    let manager = cfg.manager.clone();
    let mut c = Client::connect(cfg).map_err(|e| Exit::new(EX_UNAVAILABLE, e.to_string()))?;
    let mut out = std::io::stdout().lock();
    match cmd {
        Command::Put(key, value, expiry) => {
            let value = match value {
                Some(v) => v,
                None => read_stdin_value()?,
            };
            let node = c.put_expiring(&key, &value, expiry).map_err(|e| fail(e, &key))?;
            print_line(&mut out, &[b"OK", format!("server{node}").as_bytes()])
        }
        Command::Get(key) => {
            let (value, node) = c.get(&key).map_err(|e| fail(e, &key))?;
            print_line(&mut out, &[&key, &value, format!("server{node}").as_bytes()])
        }
        Command::Del(key) => {
            let node = c.delete(&key).map_err(|e| fail(e, &key))?;
            print_line(&mut out, &[b"OK", format!("server{node}").as_bytes()])
        }
        Command::Status => status(&mut c, &manager, &mut out),
        Command::Stats(node) => stats(&mut c, node, &mut out),
        Command::Inspect(node, key) => match c.inspect(node, &key).map_err(|e| fail(e, &key))? {
            // Judged by this client's clock: the node shows its copy as it is.
            Some(l) if l.expired_at(client::wall_ms_after(Duration::ZERO)) => Err(Exit::new(
                EX_NOT_FOUND,
                format!(
                    "{}: not found on server{node} (expired at {} ms, version={})",
                    String::from_utf8_lossy(&key),
                    l.expires,
                    l.version
                ),
            )),
            Some(l) => {
                let expires = (l.expires != 0).then(|| format!("expires={}", l.expires));
                let value = l.value.unwrap_or_else(|| b"(deleted)".to_vec());
                let version = format!("version={}", l.version);
                let server = format!("server{node}");
                let mut parts: Vec<&[u8]> = vec![&key, &value, version.as_bytes()];
                parts.extend(expires.as_ref().map(String::as_bytes));
                parts.push(server.as_bytes());
                print_line(&mut out, &parts)
            }
            None => {
                Err(Exit::new(EX_NOT_FOUND, format!("{}: not found on server{node}", String::from_utf8_lossy(&key))))
            }
        },
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = options();
    let m = cli::parse_args(&opts, &args).unwrap_or_else(|e| cli::die(PROG, e));
    if m.opt_present("help") {
        print!("{}", opts.usage(USAGE));
        return;
    }
    if m.opt_present("version") {
        println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let cmd = command(&m).unwrap_or_else(|e| cli::die(PROG, e));
    let ms = |name: &str, default: u64| -> Duration {
        match opt_num::<u64>(&m, name) {
            Ok(Some(v)) if v > 0 => Duration::from_millis(v),
            Ok(None) => Duration::from_millis(default),
            _ => cli::die(PROG, Exit::new(EX_USAGE, format!("--{name} must be a positive number of milliseconds"))),
        }
    };
    let (attempt_timeout, deadline) = (ms("timeout-ms", 300), ms("deadline-ms", 5000));
    let (manager, nodes) =
        cli::bootstrap_list(&cli::manager_addr(m.opt_str("manager"))).unwrap_or_else(|e| cli::die(PROG, e));
    let key = client::key_file(m.opt_str("key-file")).unwrap_or_else(|e| cli::die(PROG, Exit::usage(e)));
    let cfg = client::Config { manager, nodes, attempt_timeout, deadline, key };
    if let Err(e) = run(cmd, cfg) {
        cli::die(PROG, e);
    }
}
