//! Many storage nodes (SPEC §3, §4, §5, §9 sequence 2 and 6): partitioning and balance of
//! sectors and keys, replication to the whole preference list, read repair after a missed
//! write, a node joining under load, and concurrent writers converging on every replica.
//!
//! Ports: 24000–24990, one BASE_PORT per test in steps of 10 (a cluster of n nodes, plus any
//! added later, uses BASE_PORT..=BASE_PORT+n).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use gtstore::client::{self, Client, Config};
use gtstore::table::{sector_of, Table};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Sectors of the hash space (the manager's default).
const Q: u32 = 1024;

// ----- helpers ------------------------------------------------------------------------------

/// A library client of cluster `c` with the default timeouts and retries.
fn client(c: &Cluster) -> Client {
    let cfg = Config { manager: c.manager_addr(), ..Config::default() };
    Client::connect(cfg).unwrap_or_else(|e| panic!("cannot connect to the cluster on {}: {e}", c.manager_addr()))
}

/// The current partition table, fetched through the library.
fn table(c: &Cluster) -> Table {
    client(c).table().clone()
}

/// The preference list of `key` (coordinator first) under `t`.
fn preference(t: &Table, key: &str) -> Vec<u32> {
    t.preference(sector_of(key.as_bytes(), t.sectors()))
}

/// Parses `server<i>` into i.
#[track_caller]
fn server_id(word: &str) -> u32 {
    word.strip_prefix("server")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected server<i>, got {word:?}"))
}

/// `gtstore --put KEY --val VALUE`: asserts the `OK, server<i>` line; returns i.
#[track_caller]
fn cli_put(c: &Cluster, key: &str, val: &str) -> u32 {
    let out = c.cli(&["--put", key, "--val", val]);
    assert_ok(&out);
    let text = stdout(&out);
    let line = text.strip_suffix('\n').unwrap_or_else(|| panic!("put {key}: no newline in {text:?}"));
    let server =
        line.strip_prefix("OK, ").unwrap_or_else(|| panic!("put {key}: expected `OK, server<i>`, got {line:?}"));
    server_id(server)
}

/// `gtstore --get KEY`: asserts the line is exactly `KEY, VALUE, server<i>`; returns i.
#[track_caller]
fn cli_get(c: &Cluster, key: &str, val: &str) -> u32 {
    let out = c.cli(&["--get", key]);
    assert_ok(&out);
    let text = stdout(&out);
    let prefix = format!("{key}, {val}, ");
    let server = text
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("get {key}: expected `{prefix}server<i>`, got {text:?}"));
    server_id(server)
}

/// `gtstore inspect --node I KEY`: the value node I holds locally, or None if it has none.
fn cli_inspect(c: &Cluster, node: u32, key: &str) -> Option<String> {
    let out = c.cli(&["inspect", "--node", &node.to_string(), key]);
    if out.status.code() == Some(1) {
        return None;
    }
    assert_ok(&out);
    let text = stdout(&out);
    let rest = text
        .strip_suffix(&format!(", server{node}\n"))
        .and_then(|l| l.strip_prefix(&format!("{key}, ")))
        .unwrap_or_else(|| panic!("inspect {key} on server{node}: unexpected line {text:?}"));
    // "VALUE, version=..." (test values contain no ", version=").
    let (value, version) = rest.rsplit_once(", ").unwrap_or_else(|| panic!("inspect: no version in {text:?}"));
    assert!(version.starts_with("version="), "inspect: unexpected line {text:?}");
    Some(value.to_string())
}

/// One node line of `gtstore status`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: u32,
    state: String,
    sectors: u32,
    /// None when the node did not answer (`keys=?`).
    keys: Option<u64>,
}

/// `gtstore status`, parsed: the node lines and the under-replicated count.
#[derive(Debug, Clone)]
struct StatusOut {
    epoch: u64,
    nodes: Vec<NodeLine>,
    under_replicated: u64,
    text: String,
}

impl StatusOut {
    fn node(&self, id: u32) -> Option<&NodeLine> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[track_caller]
fn status(c: &Cluster) -> StatusOut {
    let out = c.cli(&["status"]);
    assert_ok(&out);
    let text = stdout(&out);
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert!(
        head.len() == 10 && head[0] == "epoch" && head[2] == "sectors" && head[4] == "replicas",
        "status: unexpected first line in\n{text}"
    );
    assert_eq!(head[3], Q.to_string(), "status: sectors of the hash space\n{text}");
    let epoch = head[1].parse().unwrap_or_else(|_| panic!("status: bad epoch in\n{text}"));
    let mut nodes = Vec::new();
    let mut under_replicated = None;
    for line in lines {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let Some(u) = line.strip_prefix("under-replicated ") {
            let n = u.split_whitespace().next().unwrap_or_default();
            under_replicated = Some(n.parse().unwrap_or_else(|_| panic!("status: bad line {line:?}")));
            continue;
        }
        assert_eq!(w.len(), 5, "status: unexpected node line {line:?}\n{text}");
        let field = |name: &str, word: &str| -> String {
            word.strip_prefix(name).unwrap_or_else(|| panic!("status: expected {name}.. in {line:?}")).to_string()
        };
        nodes.push(NodeLine {
            id: server_id(w[0]),
            state: w[2].to_string(),
            sectors: field("sectors=", w[3]).parse().unwrap_or_else(|_| panic!("status: bad sectors in {line:?}")),
            keys: field("keys=", w[4]).parse().ok(),
        });
    }
    let under_replicated = under_replicated.unwrap_or_else(|| panic!("status: no under-replicated line\n{text}"));
    StatusOut { epoch, nodes, under_replicated, text }
}

/// Polls `status` until `done` holds (or `timeout` passes); returns the last status.
fn status_until(c: &Cluster, timeout: Duration, done: impl Fn(&StatusOut) -> bool) -> StatusOut {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(c);
        if done(&s) || Instant::now() >= deadline {
            return s;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `inspect` of `key` on `node` until it shows `want` (or `timeout` passes); the last
/// value seen.
fn inspect_until(c: &Cluster, node: u32, key: &str, want: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = cli_inspect(c, node, key);
        if v.as_deref() == Some(want) || Instant::now() >= deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `op(client, i)` for i in 0..n over `threads` threads, each with its own client;
/// returns the first few failures `op` reported (up to 20).
fn parallel_keys(
    c: &Cluster,
    n: u64,
    threads: u64,
    op: impl Fn(&mut Client, u64) -> Option<String> + Send + Sync + 'static,
) -> Vec<String> {
    let op = Arc::new(op);
    let bad = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (op, bad, mut cl) = (Arc::clone(&op), Arc::clone(&bad), client(c));
            thread::spawn(move || {
                for i in (t..n).step_by(threads as usize) {
                    if let Some(e) = op(&mut cl, i) {
                        let mut b = bad.lock().unwrap();
                        if b.len() < 20 {
                            b.push(e);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let bad = bad.lock().unwrap().clone();
    bad
}

/// Sends `sig` to storage node `i` (SIGSTOP / SIGCONT).
fn signal_node(c: &Cluster, i: u16, sig: Signal) {
    let pid = c.node_pid(i).unwrap_or_else(|| panic!("node {i} is not running"));
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// Resumes a stopped node when dropped, so a failing assertion never leaves it stopped (the
/// cluster's own drop SIGKILLs it either way).
struct Stopped<'a> {
    c: &'a Cluster,
    node: u16,
    active: bool,
}

impl<'a> Stopped<'a> {
    fn new(c: &'a Cluster, node: u16) -> Stopped<'a> {
        signal_node(c, node, Signal::SIGSTOP);
        Stopped { c, node, active: true }
    }

    fn forget(mut self) {
        self.active = false;
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if self.active {
            if let Some(pid) = self.c.node_pid(self.node) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            }
        }
    }
}

// ----- §9 sequence 2 ------------------------------------------------------------------------

#[test]
fn spec9_sequence2_five_servers_three_replicas_self_consistent_ids() {
    let started = Instant::now();
    let c = Cluster::start(24000, 5, 3);
    let t = table(&c);
    assert_eq!(t.rep, 3);
    let in_pref = |key: &str, server: u32| {
        let pref = preference(&t, key);
        assert_eq!(pref.len(), 3, "{key}: preference list {pref:?}");
        assert!(pref.contains(&server), "{key}: server{server} is not in its preference list {pref:?}");
        pref
    };

    let s = cli_put(&c, "key1", "value1");
    in_pref("key1", s);
    let g = cli_get(&c, "key1", "value1");
    assert_eq!(g, s, "key1: put said server{s}, get said server{g}");

    let mut coord = BTreeMap::new();
    for (key, val) in [("key1", "value2"), ("key2", "value3"), ("key3", "value4")] {
        let s = cli_put(&c, key, val);
        in_pref(key, s);
        coord.insert(key.to_string(), s);
    }
    for (key, val) in [("key1", "value2"), ("key2", "value3"), ("key3", "value4")] {
        let g = cli_get(&c, key, val);
        assert_eq!(g, coord[key], "{key}: put said server{}, get said server{g}", coord[key]);
    }

    // About 20 keys: each coordinated by a member of its preference list, the same server for
    // its put and its get, and the keys spread over several servers.
    for i in 4..=20 {
        let (key, val) = (format!("key{i}"), format!("value{}", i + 1));
        let s = cli_put(&c, &key, &val);
        let pref = in_pref(&key, s);
        // With every node up, the coordinator is the first node of the preference list.
        assert_eq!(s, pref[0], "{key}: coordinated by server{s}, preference list {pref:?}");
        coord.insert(key, s);
    }
    for i in 4..=20 {
        let (key, val) = (format!("key{i}"), format!("value{}", i + 1));
        let g = cli_get(&c, &key, &val);
        assert_eq!(g, coord[&key], "{key}: put said server{}, get said server{g}", coord[&key]);
    }
    let mut per_server: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for (k, s) in &coord {
        per_server.entry(*s).or_default().push(k);
    }
    println!("coordinators of {} keys: {per_server:?}", coord.len());
    assert!(per_server.len() >= 3, "20 keys landed on only {} server(s): {per_server:?}", per_server.len());
    println!("sequence 2 took {:?}", started.elapsed());
}

// ----- balance --------------------------------------------------------------------------------

#[test]
fn seven_nodes_sector_counts_differ_by_at_most_one() {
    let c = Cluster::start(24010, 7, 3);
    let s = status(&c);
    println!("{}", s.text);
    assert_eq!(s.nodes.len(), 7, "status lists every node\n{}", s.text);
    let counts: Vec<u32> = s.nodes.iter().map(|n| n.sectors).collect();
    println!("sectors per node: {counts:?}");
    assert!(s.nodes.iter().all(|n| n.state == "up"), "every node up\n{}", s.text);
    assert_eq!(counts.iter().sum::<u32>(), Q, "sectors sum to Q\n{}", s.text);
    let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(hi - lo <= 1, "sector counts differ by {}: {counts:?}", hi - lo);
    assert_eq!(s.under_replicated, 0, "{}", s.text);
}

#[test]
fn spec9_sequence6_100k_keys_on_seven_nodes_balance_within_5_percent() {
    const KEYS: u64 = 100_000;
    const THREADS: u64 = 8;
    // Balance does not depend on durability; fsync=never keeps 100,000 writes fast.
    let c = Cluster::start_with(24020, 7, 1, &[("FSYNC", "never")]);
    let started = Instant::now();
    let failures = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let mut cl = client(&c);
            let failures = Arc::clone(&failures);
            thread::spawn(move || {
                let mut i = t;
                while i < KEYS {
                    let key = format!("user{i:06}");
                    if let Err(e) = cl.put(key.as_bytes(), b"v") {
                        if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("put {key}: {e}");
                        }
                    }
                    i += THREADS;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let took = started.elapsed();
    println!("{KEYS} puts from {THREADS} threads in {took:?} ({:.0} puts/s)", KEYS as f64 / took.as_secs_f64());
    assert_eq!(failures.load(Ordering::Relaxed), 0, "puts failed");

    let s = status(&c);
    println!("{}", s.text);
    let keys: Vec<u64> = s
        .nodes
        .iter()
        .map(|n| n.keys.unwrap_or_else(|| panic!("server{} did not report its keys\n{}", n.id, s.text)))
        .collect();
    let total: u64 = keys.iter().sum();
    let mean = total as f64 / keys.len() as f64;
    let max = *keys.iter().max().unwrap();
    let min = *keys.iter().min().unwrap();
    println!(
        "keys per node: {keys:?}; mean {mean:.0}, busiest {max} ({:.3} x mean), least {min} ({:.3} x mean)",
        max as f64 / mean,
        min as f64 / mean
    );
    assert_eq!(keys.len(), 7);
    assert_eq!(total, KEYS, "with one replica every key is held exactly once");
    assert!(max as f64 <= 1.05 * mean, "busiest node holds {max} keys, over 1.05 x mean {mean:.0}: {keys:?}");
}

// ----- replication and read repair ----------------------------------------------------------

#[test]
fn three_replicas_hold_each_write_and_a_missed_write_is_repaired() {
    // The manager must not declare the stopped / killed node dead during the test.
    let c = Cluster::start_with(24030, 5, 3, &[("MANAGER_FLAGS", "--dead-after-ms 30000")]);
    let t = table(&c);
    let key = "repair-me";
    let pref = preference(&t, key);
    println!("{key}: preference list {pref:?}");
    assert_eq!(pref.len(), 3);

    // With every node up, the value reaches all three (W=2: the third may lag a moment).
    let s = cli_put(&c, key, "v1");
    assert_eq!(s, pref[0], "coordinated by the first of {pref:?}");
    for &n in &pref {
        let v = inspect_until(&c, n, key, "v1", Duration::from_secs(3));
        assert_eq!(v.as_deref(), Some("v1"), "server{n} (of {pref:?}) holds the value");
    }
    // A node outside the preference list does not hold it.
    if let Some(other) = t.members.iter().map(|m| m.id).find(|id| !pref.contains(id)) {
        assert_eq!(cli_inspect(&c, other, key), None, "server{other} is not a replica of {key}");
    }

    // Node x, a replica that is not the coordinator, is stopped while v2 is written (W=2 of 3
    // answer without it). Resumed 3 s later, it refuses the write queued in its socket as too
    // late; the coordinator kept a hint for it when the write's op ended without its
    // acknowledgement, and delivers it: x gets v2 with no read to repair it.
    let x = pref[2];
    let coord = pref[0];
    let stopped = Stopped::new(&c, x as u16);
    let s = cli_put(&c, key, "v2");
    assert_eq!(s, coord, "v2 is coordinated by server{coord} with W=2 of 3 while server{x} is stopped");
    thread::sleep(Duration::from_secs(3));
    drop(stopped);
    let v = inspect_until(&c, x, key, "v2", Duration::from_secs(3));
    assert_eq!(v.as_deref(), Some("v2"), "the coordinator's hint brought v2 to server{x}");

    // Read repair: x is stopped while v3 is written, and the coordinator is killed at once,
    // before its op ends, so no hint is kept for x. x, resumed past the 2 s a replica write
    // may take, refuses v3 as late and still holds v2 after the coordinator's restart, until a
    // quorum read returns v3 and repairs it.
    let stopped = Stopped::new(&c, x as u16);
    assert_eq!(cli_put(&c, key, "v3"), coord);
    c.kill_node(coord as u16);
    thread::sleep(Duration::from_secs(3));
    drop(stopped);
    c.restart_node(coord as u16);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(cli_inspect(&c, x, key).as_deref(), Some("v2"), "server{x} missed v3 while stopped");
    assert_eq!(cli_get(&c, key, "v3"), coord);
    let v = inspect_until(&c, x, key, "v3", Duration::from_secs(3));
    assert_eq!(v.as_deref(), Some("v3"), "read repair brought v3 to server{x}");
    for &n in &pref {
        assert_eq!(cli_inspect(&c, n, key).as_deref(), Some("v3"), "server{n} holds v3");
    }

    // The same for a replica that was killed during a write: restarted, it catches up by
    // itself before its reads count.
    let stopped = Stopped::new(&c, x as u16);
    assert_eq!(cli_put(&c, key, "v4"), pref[0]);
    c.kill_node(x as u16);
    stopped.forget();
    c.restart_node(x as u16);
    let v = inspect_until(&c, x, key, "v4", Duration::from_secs(5));
    assert_eq!(v.as_deref(), Some("v4"), "server{x} caught up after its restart");
}

// ----- join under load -----------------------------------------------------------------------

/// What the load threads of the join test observed.
#[derive(Default)]
struct Load {
    /// Key → the sequence number of its last acknowledged write (the value is that number).
    acked: Mutex<HashMap<String, u64>>,
    /// Keys in the order they were first acknowledged (for the reader to pick from).
    keys: Mutex<Vec<String>>,
    writes: AtomicU64,
    reads: AtomicU64,
    failures: AtomicU64,
    stale: AtomicU64,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Load {
    fn error(&self, what: String) {
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(what);
        }
    }
}

#[test]
fn node_joins_under_load_without_failed_or_lost_operations() {
    const KEYSPACE: u64 = 400;
    const BULK: u64 = 6_000;
    let c = Cluster::start(24040, 7, 3);
    // Data already in the cluster, so the sectors the new node takes carry keys while it
    // receives them.
    let t0 = Instant::now();
    let bad = parallel_keys(&c, BULK, 8, |cl, i| {
        let key = format!("bulk{i}");
        cl.put(key.as_bytes(), format!("b{i}").as_bytes()).err().map(|e| format!("put {key}: {e}"))
    });
    assert!(bad.is_empty(), "preload failed: {bad:?}");
    println!("preloaded {BULK} keys in {:?}", t0.elapsed());
    let load = Arc::new(Load::default());

    let writer = {
        let load = Arc::clone(&load);
        let mut cl = client(&c);
        thread::spawn(move || {
            let mut i = 0u64;
            while !load.stop.load(Ordering::Relaxed) {
                let key = format!("load{}", i % KEYSPACE);
                match cl.put(key.as_bytes(), i.to_string().as_bytes()) {
                    Ok(_) => {
                        load.writes.fetch_add(1, Ordering::Relaxed);
                        if load.acked.lock().unwrap().insert(key.clone(), i).is_none() {
                            load.keys.lock().unwrap().push(key);
                        }
                    }
                    Err(e) => {
                        load.failures.fetch_add(1, Ordering::Relaxed);
                        load.error(format!("put {key}={i}: {e}"));
                    }
                }
                i += 1;
            }
        })
    };
    let reader = {
        let load = Arc::clone(&load);
        let mut cl = client(&c);
        thread::spawn(move || {
            let mut n = 0usize;
            while !load.stop.load(Ordering::Relaxed) {
                let key = {
                    let keys = load.keys.lock().unwrap();
                    if keys.is_empty() {
                        None
                    } else {
                        Some(keys[n.wrapping_mul(7919) % keys.len()].clone())
                    }
                };
                n += 1;
                let Some(key) = key else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let floor = load.acked.lock().unwrap()[&key];
                match cl.get(key.as_bytes()) {
                    Ok((v, _)) => {
                        load.reads.fetch_add(1, Ordering::Relaxed);
                        let seen = String::from_utf8_lossy(&v).parse::<u64>().ok();
                        if seen.is_none_or(|s| s < floor) {
                            load.stale.fetch_add(1, Ordering::Relaxed);
                            load.error(format!("get {key}: {seen:?}, but {floor} was acknowledged before"));
                        }
                    }
                    Err(client::Error::NotFound { node }) => {
                        load.stale.fetch_add(1, Ordering::Relaxed);
                        load.error(format!("get {key}: not found (server{node}), {floor} was acknowledged"));
                    }
                    Err(e) => {
                        load.failures.fetch_add(1, Ordering::Relaxed);
                        load.error(format!("get {key}: {e}"));
                    }
                }
            }
        })
    };

    let epoch_before = status(&c).epoch;
    thread::sleep(Duration::from_secs(3));
    let (w0, r0) = (load.writes.load(Ordering::Relaxed), load.reads.load(Ordering::Relaxed));
    let join_started = Instant::now();
    c.add_node(8);
    let join_took = join_started.elapsed();
    let (w1, r1) = (load.writes.load(Ordering::Relaxed), load.reads.load(Ordering::Relaxed));
    thread::sleep(Duration::from_secs(3));
    load.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    reader.join().unwrap();
    let (writes, reads) = (load.writes.load(Ordering::Relaxed), load.reads.load(Ordering::Relaxed));
    println!(
        "make add NODE=8 took {join_took:?}; writes/reads before the join {w0}/{r0}, during {}/{}, after {}/{}",
        w1 - w0,
        r1 - r0,
        writes - w1,
        reads - r1
    );
    let failures = load.failures.load(Ordering::Relaxed);
    let stale = load.stale.load(Ordering::Relaxed);
    println!("failed operations {failures}, stale or missing reads {stale}");
    for e in load.errors.lock().unwrap().iter() {
        println!("  {e}");
    }
    assert!(w0 > 0 && r0 > 0, "the load ran before the join");
    assert!(writes > w1 && reads > r1, "the load ran after the join");

    // The new node is switched in with its share of sectors.
    let s = status_until(&c, Duration::from_secs(10), |s| {
        s.node(8).is_some_and(|n| n.sectors > 0 && n.state == "up") && s.under_replicated == 0
    });
    println!("{}", s.text);
    assert!(s.epoch > epoch_before, "the join published a new epoch (was {epoch_before})\n{}", s.text);
    let n8 = s.node(8).unwrap_or_else(|| panic!("server8 is not in the status\n{}", s.text));
    let share = Q as f64 / 8.0;
    println!("server8 owns {} sectors (Q/8 = {share})", n8.sectors);
    assert!(n8.sectors > 0, "server8 owns sectors after the join\n{}", s.text);
    assert!(n8.sectors as f64 <= 1.1 * share, "server8 owns {} sectors, over 1.1 x {share}\n{}", n8.sectors, s.text);
    assert_eq!(s.nodes.iter().map(|n| n.sectors).sum::<u32>(), Q, "{}", s.text);
    assert_eq!(s.under_replicated, 0, "{}", s.text);

    assert_eq!(failures, 0, "operations failed after the client's retries: {:?}", load.errors.lock().unwrap());
    assert_eq!(stale, 0, "reads missed an acknowledged write: {:?}", load.errors.lock().unwrap());

    // Every acknowledged write reads back with its latest value.
    let acked = load.acked.lock().unwrap().clone();
    let mut cl = client(&c);
    let mut wrong = Vec::new();
    for (key, &seq) in &acked {
        match cl.get(key.as_bytes()) {
            Ok((v, _)) if v == seq.to_string().as_bytes() => {}
            other => wrong.push(format!("{key}: expected {seq}, got {other:?}")),
        }
    }
    println!("{} acknowledged keys read back, {} wrong", acked.len(), wrong.len());
    assert!(wrong.is_empty(), "acknowledged writes lost or stale after the join: {wrong:?}");
    let bad = parallel_keys(&c, BULK, 8, |cl, i| {
        let key = format!("bulk{i}");
        match cl.get(key.as_bytes()) {
            Ok((v, _)) if v == format!("b{i}").as_bytes() => None,
            other => Some(format!("{key}: got {other:?}")),
        }
    });
    println!("{BULK} preloaded keys read back, {} wrong", bad.len());
    assert!(bad.is_empty(), "preloaded keys lost or wrong after the join: {bad:?}");
}

// ----- concurrency ----------------------------------------------------------------------------

#[test]
fn concurrent_writers_leave_replicas_agreeing_after_read_repair() {
    const THREADS: usize = 8;
    const KEYS: usize = 100;
    const ROUNDS: usize = 2;
    let c = Cluster::start(24050, 5, 3);
    let started = Instant::now();
    let failures = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let mut cl = client(&c);
            let failures = Arc::clone(&failures);
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    for k in 0..KEYS {
                        // Each thread starts at a different key so the threads collide on
                        // every key from different directions.
                        let key = format!("shared{}", (k + t * 13) % KEYS);
                        let val = format!("t{t}-r{round}");
                        if let Err(e) = cl.put(key.as_bytes(), val.as_bytes()) {
                            failures.fetch_add(1, Ordering::Relaxed);
                            eprintln!("put {key}={val}: {e}");
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    println!("{} concurrent puts in {:?}", THREADS * KEYS * ROUNDS, started.elapsed());
    assert_eq!(failures.load(Ordering::Relaxed), 0, "puts failed");

    // A quorum read of every key (which repairs any stale replica).
    let mut cl = client(&c);
    let t = cl.table().clone();
    let mut got = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("shared{k}");
        let (v, _) = cl.get(key.as_bytes()).unwrap_or_else(|e| panic!("get {key}: {e}"));
        let v = String::from_utf8(v).unwrap();
        assert!(v.starts_with('t') && v.contains("-r"), "get {key}: {v:?} is not a written value");
        got.insert(key, v);
    }
    thread::sleep(Duration::from_secs(1));

    let mut disagree = Vec::new();
    let mut winners: BTreeMap<String, usize> = BTreeMap::new();
    for (key, v) in &got {
        *winners.entry(v.clone()).or_default() += 1;
        let pref = preference(&t, key);
        assert_eq!(pref.len(), 3);
        let held: Vec<Option<String>> = pref
            .iter()
            .map(|&n| match cl.inspect(n, key.as_bytes()) {
                Ok(local) => local.and_then(|l| l.value).map(|b| String::from_utf8_lossy(&b).into_owned()),
                Err(e) => panic!("inspect {key} on server{n}: {e}"),
            })
            .collect();
        if held.iter().any(|h| h.as_deref() != Some(v.as_str())) {
            disagree.push(format!("{key}: get {v:?}, replicas {pref:?} hold {held:?}"));
        }
    }
    println!("winning values: {winners:?}");
    println!("{} of {KEYS} keys with replicas disagreeing", disagree.len());
    assert!(disagree.is_empty(), "replicas disagree after read repair: {disagree:#?}");
    let distinct: HashSet<&String> = got.values().collect();
    println!("{} distinct final values over {KEYS} keys", distinct.len());
}
