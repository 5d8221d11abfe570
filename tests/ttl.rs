//! Key expiry (issue #12 item 2) end to end on real processes: `gtstore --put --ttl` and RESP
//! `SET ... EX` are readable at once and gone after their time on every node (`gtstore inspect
//! --node I` on each replica, `--get`, RESP GET/EXISTS/TTL); TTL, PTTL, EXPIRE and its kin,
//! PERSIST and KEEPTTL through RESP over raw sockets; a key rewritten without a TTL stays.
//! Clusters on base ports 32000-32090 (RESP on BASE_PORT+100+i).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use gtstore::net::resp::{self, RespLimits, Value};

/// One RESP connection: a command at a time, or a pipeline.
struct Resp {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    fn connect(c: &Cluster, node: u16) -> Resp {
        let s = TcpStream::connect(("127.0.0.1", c.base_port + 100 + node)).expect("connect to the RESP port");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Resp { s, buf: Vec::new() }
    }

    fn pipeline(&mut self, cmds: &[&[&str]]) -> Vec<Value> {
        let mut out = Vec::new();
        for c in cmds {
            resp::encode(&resp::command(c.iter().map(|a| a.as_bytes().to_vec())), &mut out);
        }
        self.s.write_all(&out).unwrap();
        let limits = RespLimits::client(1 << 20);
        let mut got = Vec::new();
        let mut chunk = [0u8; 65536];
        while got.len() < cmds.len() {
            match resp::decode(&self.buf, &limits).expect("replies are RESP2") {
                Some((v, used)) => {
                    got.push(v);
                    self.buf.drain(..used);
                }
                None => {
                    let k = self.s.read(&mut chunk).expect("read replies");
                    assert!(k > 0, "connection closed after {} replies", got.len());
                    self.buf.extend_from_slice(&chunk[..k]);
                }
            }
        }
        got
    }

    fn cmd(&mut self, args: &[&str]) -> Value {
        self.pipeline(&[args]).remove(0)
    }

    fn int(&mut self, args: &[&str]) -> i64 {
        match self.cmd(args) {
            Value::Integer(n) => n,
            other => panic!("{args:?}: expected an integer, got {other:?}"),
        }
    }
}

fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

fn ok() -> Value {
    Value::Simple("OK".into())
}

fn is_error(v: &Value, starts: &str) -> bool {
    matches!(v, Value::Error(e) if e.starts_with(starts))
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `gtstore inspect --node I KEY` on every node: each has a copy (3 nodes, 3 replicas).
fn inspect_all(c: &Cluster, key: &str) -> Vec<std::process::Output> {
    (1..=c.nodes).map(|i| c.cli(&["inspect", "--node", &i.to_string(), key])).collect()
}

/// Gauge `name` of node `node`'s `/metrics` (BASE_PORT+200+i), read over a plain socket.
fn gauge(c: &Cluster, node: u16, name: &str) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", c.base_port + 200 + node)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read /metrics");
    let line = text.lines().find(|l| l.split(' ').next() == Some(name));
    line.and_then(|l| l.split(' ').nth(1)?.parse().ok()).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Every node's INFO keyspace line has `line`, DBSIZE through every node is `keys`, and every
/// node's gauges count `keys` live and `expired` expired keys (every node holds every key).
fn keyspace_is(c: &Cluster, line: &str, keys: i64, expired: i64) {
    for node in 1..=c.nodes {
        assert_eq!(gauge(c, node, "gtstore_keys"), keys as f64, "node {node}: gtstore_keys");
        assert_eq!(gauge(c, node, "gtstore_expired_keys"), expired as f64, "node {node}");
        let mut r = Resp::connect(c, node);
        let info = match r.cmd(&["INFO", "keyspace"]) {
            Value::Bulk(b) => String::from_utf8(b).unwrap(),
            other => panic!("INFO: {other:?}"),
        };
        assert!(info.contains(line), "node {node}: {info}");
        assert_eq!(r.int(&["DBSIZE"]), keys, "DBSIZE through node {node}");
    }
}

#[test]
fn a_ttl_from_the_cli_or_set_ex_is_readable_at_once_and_gone_after_it_on_every_node() {
    let c = Cluster::start(32000, 3, 3);
    assert_ok(&c.cli(&["--put", "cli-ttl", "--val", "soon gone", "--ttl", "1"]));
    let mut r2 = Resp::connect(&c, 2);
    assert_eq!(r2.cmd(&["SET", "resp-ttl", "also soon gone", "EX", "1"]), ok());
    // Written with a TTL, then again without: the rewrite stays.
    assert_ok(&c.cli(&["--put", "rewritten", "--val", "first", "--ttl", "1"]));
    let mut r3 = Resp::connect(&c, 3);
    assert_eq!(r3.cmd(&["SET", "rewritten", "kept"]), ok());
    assert_ok(&c.cli(&["--put", "plain", "--val", "no ttl"]));

    let get = c.cli(&["--get", "cli-ttl"]);
    assert_ok(&get);
    assert!(stdout(&get).starts_with("cli-ttl, soon gone, server"), "{}", stdout(&get));
    assert_eq!(r3.cmd(&["GET", "resp-ttl"]), bulk("also soon gone"), "another node reads it at once");
    assert_eq!(r3.cmd(&["GET", "cli-ttl"]), bulk("soon gone"));
    assert_eq!(r2.int(&["TTL", "resp-ttl"]), 1);
    let pttl = r2.int(&["PTTL", "cli-ttl"]);
    assert!((1..=1000).contains(&pttl), "PTTL {pttl}");
    for key in ["cli-ttl", "resp-ttl"] {
        for (i, out) in inspect_all(&c, key).iter().enumerate() {
            assert_ok(out);
            assert!(stdout(out).contains(", expires="), "node {}: {}", i + 1, stdout(out));
        }
    }

    keyspace_is(&c, "db0:keys=4,expires=2,", 4, 0);

    thread::sleep(Duration::from_millis(1500));
    for key in ["cli-ttl", "resp-ttl"] {
        assert_exit(&c.cli(&["--get", key]), 1);
        for (i, out) in inspect_all(&c, key).iter().enumerate() {
            assert_exit(out, 1);
            assert!(
                stderr(out).contains("not found") && stderr(out).contains("expired"),
                "node {}: {}",
                i + 1,
                stderr(out)
            );
        }
        for node in 1..=c.nodes {
            let mut r = Resp::connect(&c, node);
            assert_eq!(r.cmd(&["GET", key]), Value::Nil, "node {node}: {key}");
            assert_eq!(r.int(&["EXISTS", key]), 0, "node {node}: {key}");
            assert_eq!(r.int(&["TTL", key]), -2, "node {node}: {key}");
        }
    }
    assert_eq!(
        r2.cmd(&["MGET", "cli-ttl", "rewritten", "resp-ttl"]),
        Value::Array(vec![Value::Nil, bulk("kept"), Value::Nil])
    );
    let kept = c.cli(&["--get", "rewritten"]);
    assert_ok(&kept);
    assert!(stdout(&kept).starts_with("rewritten, kept, server"));
    for out in inspect_all(&c, "rewritten") {
        assert_ok(&out);
        assert!(!stdout(&out).contains("expires="), "{}", stdout(&out));
    }
    assert_eq!(r2.int(&["TTL", "rewritten"]), -1);
    assert_eq!(r2.int(&["TTL", "plain"]), -1);

    // INFO's keyspace counts this node's copies and DBSIZE the cluster's keys, both without
    // the expired ones (not reclaimed yet, but read as not found).
    keyspace_is(&c, "db0:keys=2,expires=0,", 2, 2);

    // A new write after expiry brings the key back, as any newer version would.
    assert_ok(&c.cli(&["--put", "cli-ttl", "--val", "again"]));
    assert_eq!(r3.cmd(&["GET", "cli-ttl"]), bulk("again"));

    // Bad --ttl values are usage errors, and --ttl goes with --put only.
    for bad in ["0", "-1", "x", "1.5"] {
        assert_exit(&c.cli(&["--put", "k", "--val", "v", "--ttl", bad]), 64);
    }
    assert_exit(&c.cli(&["--get", "k", "--ttl", "5"]), 64);
}

#[test]
fn expire_persist_keepttl_and_ttl_through_resp() {
    let c = Cluster::start(32010, 3, 2);
    let mut r = Resp::connect(&c, 1);
    assert_eq!(r.cmd(&["SET", "a", "1"]), ok());
    assert_eq!(r.int(&["TTL", "a"]), -1, "no expiry");
    assert_eq!(r.int(&["EXPIRE", "a", "100"]), 1, "the key exists");
    assert!((99..=100).contains(&r.int(&["TTL", "a"])));
    let pttl = r.int(&["PTTL", "a"]);
    assert!((98_000..=100_000).contains(&pttl), "PTTL {pttl}");
    let at = r.int(&["EXPIRETIME", "a"]);
    assert!((now_s() as i64 + 98..=now_s() as i64 + 101).contains(&at), "EXPIRETIME {at}");
    assert_eq!(r.cmd(&["GET", "a"]), bulk("1"), "EXPIRE keeps the value");
    assert_eq!(r.int(&["PERSIST", "a"]), 1, "it had an expiry");
    assert_eq!(r.int(&["TTL", "a"]), -1);
    assert_eq!(r.int(&["PERSIST", "a"]), 0, "no expiry to remove");
    assert_eq!(r.int(&["PERSIST", "missing"]), 0);
    assert_eq!(r.int(&["EXPIRE", "missing", "10"]), 0, "no such key");
    assert_eq!(r.int(&["TTL", "missing"]), -2);

    // EXPIRE then reads in one pipeline: the reads see the new expiry.
    let replies = r.pipeline(&[&["PEXPIRE", "a", "400"], &["PTTL", "a"], &["GET", "a"]]);
    assert_eq!(replies[0], Value::Integer(1));
    assert!(matches!(replies[1], Value::Integer(n) if (1..=400).contains(&n)), "{replies:?}");
    assert_eq!(replies[2], bulk("1"));
    thread::sleep(Duration::from_millis(700));
    assert_eq!(r.cmd(&["GET", "a"]), Value::Nil, "expired");
    assert_eq!(r.int(&["EXISTS", "a"]), 0);
    assert_eq!(r.int(&["EXPIRE", "a", "100"]), 0, "an expired key does not exist");
    let mut other = Resp::connect(&c, 3);
    assert_eq!(other.cmd(&["GET", "a"]), Value::Nil, "expired on another node's read too");

    // KEEPTTL keeps the expiry of the value it replaces; a plain SET drops it.
    assert_eq!(r.cmd(&["SET", "b", "1", "EX", "100"]), ok());
    assert_eq!(r.cmd(&["SET", "b", "2", "KEEPTTL"]), ok());
    assert_eq!(r.cmd(&["GET", "b"]), bulk("2"));
    assert!((99..=100).contains(&r.int(&["TTL", "b"])), "KEEPTTL kept it");
    assert_eq!(r.cmd(&["SET", "fresh", "x", "KEEPTTL"]), ok());
    assert_eq!(r.int(&["TTL", "fresh"]), -1, "nothing to keep");
    assert_eq!(r.cmd(&["SET", "b", "3"]), ok());
    assert_eq!(r.int(&["TTL", "b"]), -1);

    // Absolute forms, and times not in the future, which delete.
    let later = (now_s() + 1000).to_string();
    assert_eq!(r.cmd(&["SET", "c", "1", "EXAT", &later]), ok());
    assert!((998..=1000).contains(&r.int(&["TTL", "c"])));
    assert_eq!(r.int(&["PEXPIREAT", "c", &format!("{later}500")]), 1);
    let pttl = r.int(&["PTTL", "c"]);
    assert!((998_000..=1_000_500).contains(&pttl), "PEXPIREAT set it: {pttl}");
    assert_eq!(r.int(&["EXPIREAT", "c", "1000"]), 1, "a time in the past deletes the key");
    assert_eq!(r.cmd(&["GET", "c"]), Value::Nil);
    assert_eq!(r.int(&["EXPIRE", "b", "0"]), 1);
    assert_eq!(r.int(&["EXISTS", "b"]), 0, "EXPIRE 0 deletes");
    assert_eq!(r.cmd(&["SET", "d", "1", "PXAT", "1000"]), ok());
    assert_eq!(r.cmd(&["GET", "d"]), Value::Nil, "set already expired");
    assert_eq!(r.cmd(&["SET", "e", "1", "PX", "100000"]), ok());
    assert!(r.int(&["PTTL", "e"]) > 99_000);
    let native = c.cli(&["inspect", "--node", "1", "e"]);
    // Node 1 may not hold a copy of e (3 nodes, 2 replicas); if it does, the expiry shows.
    if native.status.success() {
        assert!(stdout(&native).contains("expires="), "{}", stdout(&native));
    }

    // Bad options get Redis's errors and write nothing.
    assert!(is_error(&r.cmd(&["SET", "x", "1", "EX", "0"]), "ERR invalid expire time"));
    assert!(is_error(&r.cmd(&["SET", "x", "1", "EX", "-5"]), "ERR invalid expire time"));
    assert!(is_error(&r.cmd(&["SET", "x", "1", "EX", "soon"]), "ERR value is not an integer"));
    assert!(is_error(&r.cmd(&["SET", "x", "1", "EX", "1", "PX", "1"]), "ERR syntax error"));
    assert!(is_error(&r.cmd(&["SET", "x", "1", "EX", "1", "KEEPTTL"]), "ERR syntax error"));
    assert!(is_error(&r.cmd(&["SET", "x", "1", "EX"]), "ERR syntax error"));
    assert!(is_error(&r.cmd(&["EXPIRE", "x", "ten"]), "ERR value is not an integer"));
    assert!(is_error(&r.cmd(&["EXPIRE", "x", "10", "NX"]), "ERR EXPIRE NX/XX/GT/LT"));
    assert!(is_error(&r.cmd(&["TTL"]), "ERR wrong number of arguments"));
    assert_eq!(r.cmd(&["GET", "x"]), Value::Nil);
}

/// One node's copy of a key, as `gtstore inspect` shows it.
#[derive(Debug, PartialEq, Eq)]
enum Copy {
    Value(String),
    Deleted,
    Expired,
    Missing,
}

fn copy_on(c: &Cluster, node: u16, key: &str) -> Copy {
    let out = c.cli(&["inspect", "--node", &node.to_string(), key]);
    match out.status.code() {
        Some(0) if stdout(&out).contains(", (deleted), ") => Copy::Deleted,
        Some(0) => Copy::Value(stdout(&out)),
        Some(1) if stderr(&out).contains("expired") => Copy::Expired,
        Some(1) => Copy::Missing,
        _ => panic!("inspect --node {node} {key}: {}", stderr(&out)),
    }
}

/// Issue #12 item 2 with reclamation (`--tombstone-grace 2`): keys put on 3 nodes (REP=3) without
/// a TTL; node 3 stopped with SIGSTOP (still an up member, so it misses the next writes and
/// refuses them as late when it resumes); the keys written again with `--ttl 1`, acknowledged by
/// nodes 1 and 2. Once node 3 is back with its older live values, every read says not found the
/// whole time (the expired newest version wins), and within 60 s every copy is forgotten
/// (inspect finds no entry on any node: the reaper put a tombstone of the expired version over
/// node 3's older value, then forgot both). They stay gone after node 3 is killed and
/// restarted on its data.
#[test]
fn values_expired_past_the_grace_are_reclaimed_and_older_values_do_not_come_back() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let grace = ("NODE_FLAGS", "--tombstone-grace 2");
    let c = Cluster::start_with(32020, 3, 3, &[grace, ("MANAGER_FLAGS", "--dead-after-ms 30000")]);
    let keys: Vec<String> = (0..4).map(|i| format!("reclaim{i}")).collect();
    for k in &keys {
        assert_ok(&c.cli(&["--put", k, "--val", "older", "--deadline-ms", "20000"]));
    }
    thread::sleep(Duration::from_millis(500));
    for k in &keys {
        for n in 1..=3 {
            assert!(matches!(copy_on(&c, n, k), Copy::Value(v) if v.contains(", older, ")), "{k} on node {n}");
        }
    }
    let pid = c.node_pid(3).expect("node 3 runs");
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    for k in &keys {
        let out = c.cli(&["--put", k, "--val", "short-lived", "--ttl", "1", "--deadline-ms", "20000"]);
        if !out.status.success() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            panic!("put {k} --ttl 1 with node 3 stopped: {}", stderr(&out));
        }
    }
    // Past the expiry and the grace, and long enough for node 3 to refuse the writes as late.
    thread::sleep(Duration::from_secs(4));
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();

    let started = std::time::Instant::now();
    let mut bad = Vec::new();
    let reclaimed = loop {
        let mut all_missing = true;
        for k in &keys {
            let read = c.cli(&["--get", k]);
            if read.status.code() != Some(1) {
                bad.push(format!("{k} after {:?}: read {}", started.elapsed(), stdout(&read)));
            }
            let copies: Vec<Copy> = (1..=3).map(|n| copy_on(&c, n, k)).collect();
            if copies.iter().any(|cp| matches!(cp, Copy::Value(_))) && started.elapsed() > Duration::from_secs(20) {
                bad.push(format!("{k}: a live copy 20 s after node 3 came back: {copies:?}"));
            }
            all_missing &= copies.iter().all(|cp| *cp == Copy::Missing);
        }
        if !bad.is_empty() || all_missing {
            break bad.is_empty();
        }
        if started.elapsed() > Duration::from_secs(60) {
            let seen: Vec<Vec<Copy>> = keys.iter().map(|k| (1..=3).map(|n| copy_on(&c, n, k)).collect()).collect();
            println!("not reclaimed within 60 s: {seen:?}");
            break false;
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert!(bad.is_empty(), "expired keys came back: {bad:#?}");
    assert!(reclaimed, "the expired values were not reclaimed on every node within 60 s");
    println!("every expired value reclaimed {:?} after node 3 came back", started.elapsed());

    c.kill_node(3);
    assert_ok(&c.make("restart", &[("NODE", "3"), grace]));
    thread::sleep(Duration::from_secs(2));
    for k in &keys {
        assert_eq!(c.cli(&["--get", k]).status.code(), Some(1), "{k} after node 3 restarted");
        for n in 1..=3 {
            let cp = copy_on(&c, n, k);
            assert!(matches!(cp, Copy::Missing | Copy::Expired | Copy::Deleted), "{k} on node {n}: {cp:?}");
        }
    }
}
