//! Failure handling on multi-node clusters (SPEC §4, §5, §9 sequences 3 and 4): kill -9 of one
//! and of two nodes, re-replication, kill -9 of the whole cluster, a graceful leave on SIGTERM,
//! the manager killed under load, and `make stop` / `make start`.
//!
//! Ports: 25000–25990, one BASE_PORT per test in steps of 10.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use gtstore::client::{Client, Config, Error};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long re-replication after a death may take (SPEC §5: 1 s to detect, then streaming).
const REREPLICATION_LIMIT: Duration = Duration::from_secs(10);

fn client(c: &Cluster) -> Client {
    Client::connect(Config { manager: c.manager_addr(), ..Default::default() }).expect("connect to the cluster")
}

/// `gtstore --put KEY --val VALUE`; returns the coordinator from `OK, server<i>`.
#[track_caller]
fn cli_put(c: &Cluster, key: &str, val: &str) -> u16 {
    let out = c.cli(&["--put", key, "--val", val]);
    assert_ok(&out);
    let text = stdout(&out);
    text.strip_prefix("OK, server")
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("put {key}: unexpected output {text:?}"))
}

/// `gtstore --get KEY`; asserts the output is exactly `KEY, VALUE, server<j>` and returns j.
#[track_caller]
fn cli_get(c: &Cluster, key: &str, val: &str) -> u16 {
    let out = c.cli(&["--get", key]);
    assert_ok(&out);
    let text = stdout(&out);
    let prefix = format!("{key}, {val}, server");
    text.strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("get {key}: expected {prefix}<j>, got {text:?} (stderr {:?})", stderr(&out)))
}

fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

fn value(prefix: &str, i: usize, gen: u32) -> String {
    format!("{prefix}-value-{i}-{gen}-{:x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Key → expected value (`None`: deleted).
type Expected = BTreeMap<String, Option<String>>;

/// Puts keys `0..n` of `prefix` with `threads` library clients; every put must succeed.
fn put_all(c: &Cluster, prefix: &str, n: usize, threads: usize) -> Expected {
    let out = Mutex::new(Expected::new());
    thread::scope(|s| {
        for t in 0..threads {
            let out = &out;
            s.spawn(move || {
                let mut cl = client(c);
                let mut mine = Vec::new();
                for i in (t..n).step_by(threads) {
                    let (k, v) = (key(prefix, i), value(prefix, i, 0));
                    if let Err(e) = cl.put(k.as_bytes(), v.as_bytes()) {
                        panic!("put {k}: {e:?}");
                    }
                    mine.push((k, Some(v)));
                }
                out.lock().unwrap().extend(mine);
            });
        }
    });
    out.into_inner().unwrap()
}

/// Reads every key of `expected` back with `threads` library clients; panics listing the keys
/// that are missing or wrong.
fn check_all(c: &Cluster, expected: &Expected, threads: usize) {
    let items: Vec<(&String, &Option<String>)> = expected.iter().collect();
    let bad = Mutex::new(Vec::new());
    let t0 = Instant::now();
    thread::scope(|s| {
        for t in 0..threads {
            let (items, bad) = (&items, &bad);
            s.spawn(move || {
                let mut cl = client(c);
                let mut mine = Vec::new();
                for (k, want) in items.iter().skip(t).step_by(threads) {
                    let got = cl.get(k.as_bytes());
                    let ok = match (&got, want) {
                        (Ok((v, _)), Some(w)) => v == w.as_bytes(),
                        (Err(Error::NotFound { .. }), None) => true,
                        _ => false,
                    };
                    if !ok {
                        let got = got.map(|(v, n)| (String::from_utf8_lossy(&v).into_owned(), n));
                        mine.push(format!("{k}: want {want:?}, got {got:?}"));
                    }
                }
                bad.lock().unwrap().extend(mine);
            });
        }
    });
    let bad = bad.into_inner().unwrap();
    println!("checked {} keys in {:?}: {} wrong or missing", expected.len(), t0.elapsed(), bad.len());
    assert!(
        bad.is_empty(),
        "{} of {} keys lost or wrong, e.g.:\n{}",
        bad.len(),
        expected.len(),
        bad[..bad.len().min(10)].join("\n")
    );
}

/// Waits until node `dead` is listed down, every other node in `up` is up and answered, and
/// nothing is under-replicated; prints and returns the time it took.
#[track_caller]
fn wait_rereplicated(c: &Cluster, dead: &[u16], up: &[u16]) -> Duration {
    let res = c.wait_status(REREPLICATION_LIMIT, |s| {
        dead.iter().all(|&d| s.node(d).is_some_and(|n| n.state == "down"))
            && up.iter().all(|&u| s.node(u).is_some_and(|n| n.state == "up" && n.keys.is_some()))
            && s.under_replicated == 0
    });
    match res {
        Ok((s, took)) => {
            let keys: u64 = s.nodes.iter().filter(|n| n.state == "up").filter_map(|n| n.keys).sum();
            println!("after killing {dead:?}: down and re-replicated in {took:?}; keys on live nodes {keys}\n{}", s.text);
            took
        }
        Err(last) => panic!(
            "within {REREPLICATION_LIMIT:?} status never showed {dead:?} down, {up:?} up and under-replicated 0; last:\n{}",
            last.map(|s| s.text).unwrap_or_else(|| "(no status)".into())
        ),
    }
}

#[test]
fn spec9_sequence3_one_failure_three_nodes_rep2() {
    let c = Cluster::start(25000, 3, 2);

    // key1, then overwritten; then more keys until one server coordinated three of them.
    let mut latest: Vec<(String, String)> = Vec::new();
    let mut by_server: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let mut record = |k: &str, v: &str, server: u16, latest: &mut Vec<(String, String)>| {
        match latest.iter_mut().find(|(lk, _)| lk == k) {
            Some(e) => e.1 = v.to_string(),
            None => latest.push((k.to_string(), v.to_string())),
        }
        let keys = by_server.entry(server).or_default();
        if !keys.iter().any(|x| x == k) {
            keys.push(k.to_string());
        }
        by_server.iter().find(|(_, ks)| ks.len() >= 3).map(|(&s, _)| s)
    };
    let s = cli_put(&c, "key1", "value1");
    record("key1", "value1", s, &mut latest);
    let s = cli_put(&c, "key1", "value2");
    let mut victim = record("key1", "value2", s, &mut latest);
    let mut i = 2;
    while victim.is_none() {
        assert!(i < 100, "no server coordinated three of {i} keys: {by_server:?}");
        let (k, v) = (format!("key{i}"), format!("value{}", i + 1));
        let s = cli_put(&c, &k, &v);
        victim = record(&k, &v, s, &mut latest);
        i += 1;
    }
    let x = victim.unwrap();
    println!("{} keys written; server{x} coordinated {:?}; coordinators {by_server:?}", latest.len(), by_server[&x]);

    // Everything reads back before the failure.
    for (k, v) in &latest {
        cli_get(&c, k, v);
    }

    let pid = c.node_pid(x).expect("serverX running");
    c.kill_node(x);
    assert!(!alive(pid, "gtstore-"), "server{x} survived make kill");

    let t0 = Instant::now();
    for (k, v) in &latest {
        let j = cli_get(&c, k, v);
        assert_ne!(j, x, "{k} was answered by the killed server{x}");
    }
    println!("all {} keys read back from other servers in {:?}", latest.len(), t0.elapsed());
}

#[test]
fn spec9_sequence4_two_failures_seven_nodes_rep3() {
    let c = Cluster::start(25010, 7, 3);

    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    let mut coord: BTreeMap<String, u16> = BTreeMap::new();
    for i in 1..=20 {
        let (k, v) = (format!("key{i}"), format!("value{i}"));
        coord.insert(k.clone(), cli_put(&c, &k, &v));
        latest.insert(k, v);
    }
    for i in [1, 5, 9, 13, 17] {
        let (k, v) = (format!("key{i}"), format!("value{i}-overwritten"));
        coord.insert(k.clone(), cli_put(&c, &k, &v));
        latest.insert(k, v);
    }
    let mut count: BTreeMap<u16, usize> = BTreeMap::new();
    for s in coord.values() {
        *count.entry(*s).or_default() += 1;
    }
    println!("keys per coordinator: {count:?}");
    assert!(count.len() >= 4, "20 keys landed on only {} servers: {count:?}", count.len());

    // Kill the two busiest coordinators, one after the other.
    let mut busiest: Vec<(usize, u16)> = count.iter().map(|(&s, &n)| (n, s)).collect();
    busiest.sort_by(|a, b| b.cmp(a));
    let killed: Vec<u16> = busiest.iter().take(2).map(|&(_, s)| s).collect();
    for &k in &killed {
        c.kill_node(k);
    }
    println!("killed servers {killed:?}");

    let t0 = Instant::now();
    for (k, v) in &latest {
        let j = cli_get(&c, k, v);
        assert!(!killed.contains(&j), "{k} was answered by a killed server{j}");
    }
    println!("all {} keys read back in {:?}", latest.len(), t0.elapsed());
}

#[test]
fn rereplication_after_one_then_two_deaths_20000_keys() {
    let c = Cluster::start(25020, 7, 3);
    let n = 20_000;
    let t0 = Instant::now();
    let expected = put_all(&c, "rerep", n, 4);
    println!("{n} puts in {:?}", t0.elapsed());
    let s = c.status_report().expect("status");
    println!("before:\n{}", s.text);
    assert_eq!(s.under_replicated, 0);

    c.kill_node(3);
    let first = wait_rereplicated(&c, &[3], &[1, 2, 4, 5, 6, 7]);
    c.kill_node(6);
    let second = wait_rereplicated(&c, &[3, 6], &[1, 2, 4, 5, 7]);
    println!("re-replication: first death {first:?}, second death {second:?}");

    check_all(&c, &expected, 4);
}

#[test]
fn kill_9_of_every_process_then_make_start_keeps_acked_writes() {
    let c = Cluster::start(25030, 5, 3);
    let mut expected = put_all(&c, "whole", 3000, 4);
    let mut cl = client(&c);
    for i in (0..3000).step_by(7) {
        let (k, v) = (key("whole", i), value("whole", i, 1));
        cl.put(k.as_bytes(), v.as_bytes()).unwrap_or_else(|e| panic!("overwrite {k}: {e:?}"));
        expected.insert(k, Some(v));
    }
    for i in (3..3000).step_by(11) {
        let k = key("whole", i);
        cl.delete(k.as_bytes()).unwrap_or_else(|e| panic!("delete {k}: {e:?}"));
        expected.insert(k, None);
    }
    drop(cl);

    let mut pids: Vec<i32> = (1..=5).map(|i| c.node_pid(i).expect("node running")).collect();
    pids.push(c.manager_pid().expect("manager running"));
    for &p in &pids {
        kill(Pid::from_raw(p), Signal::SIGKILL).expect("kill -9");
    }
    for &p in &pids {
        assert!(wait_gone(p, Duration::from_secs(10)), "pid {p} survived kill -9");
    }
    println!("killed {pids:?}");

    let t0 = Instant::now();
    assert_ok(&c.make("start", &[("NODES", "5"), ("REP", "3")]));
    println!("make start again took {:?}", t0.elapsed());
    let (s, _) = c
        .wait_status(Duration::from_secs(10), |s| s.nodes.len() == 5 && s.nodes.iter().all(|n| n.state == "up"))
        .unwrap_or_else(|last| panic!("not every node up after make start: {last:?}"));
    println!("{}", s.text);
    check_all(&c, &expected, 4);
}

#[test]
fn sigterm_leaves_gracefully_exits_and_keys_survive() {
    let c = Cluster::start(25040, 5, 3);
    let expected = put_all(&c, "leave", 2000, 4);
    let before = c.status_report().expect("status");
    println!("before:\n{}", before.text);

    let pid = c.node_pid(2).expect("node 2 running");
    let t0 = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    assert!(wait_gone(pid, Duration::from_secs(30)), "node 2 (pid {pid}) still running 30 s after SIGTERM");
    println!("node 2 left and exited in {:?}", t0.elapsed());
    // Not our child, so no exit status: the log must say it left (and did not give up).
    let log = tail(&c.node_log(2), 15);
    assert!(log.contains("left the cluster"), "storage.log of node 2 does not say it left:\n{log}");
    assert!(!log.contains("leave not finished"), "node 2 gave up its leave:\n{log}");

    let (s, _) = c
        .wait_status(Duration::from_secs(10), |s| s.nodes.len() == 4 && s.under_replicated == 0)
        .unwrap_or_else(|last| panic!("status does not list 4 members: {last:?}"));
    println!("after:\n{}", s.text);
    assert!(s.node(2).is_none(), "server2 still listed:\n{}", s.text);
    assert!(s.nodes.iter().all(|n| n.state == "up"), "{}", s.text);
    assert!(s.epoch > before.epoch, "epoch did not move: {} -> {}", before.epoch, s.epoch);
    check_all(&c, &expected, 4);
}

#[test]
fn manager_kill_9_under_load_then_restart_keeps_table() {
    let c = Cluster::start(25050, 5, 3);
    let expected = put_all(&c, "mgr", 500, 2);
    let before = c.status_report().expect("status");
    println!("before:\n{}", before.text);

    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let fails = Mutex::new(Vec::<String>::new());
    let mut cl = client(&c);
    thread::scope(|s| {
        let (stop, ops, fails) = (&stop, &ops, &fails);
        s.spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (key("mgr-load", i % 300), value("mgr-load", i, 0));
                match cl.put(k.as_bytes(), v.as_bytes()) {
                    Ok(_) => match cl.get(k.as_bytes()) {
                        Ok((got, _)) if got == v.as_bytes() => {}
                        other => fails.lock().unwrap().push(format!("get {k}: {other:?}")),
                    },
                    Err(e) => fails.lock().unwrap().push(format!("put {k}: {e:?}")),
                }
                ops.fetch_add(2, Ordering::Relaxed);
                i += 1;
            }
        });
        // Whatever happens below, the load thread must end so the scope can.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(stop);

        thread::sleep(Duration::from_millis(500));
        let pid = c.manager_pid().expect("manager running");
        c.kill_manager();
        assert!(!alive(pid, "gtstore-"), "manager survived make kill-manager");
        let at_kill = ops.load(Ordering::Relaxed);
        thread::sleep(Duration::from_secs(3));
        let during = ops.load(Ordering::Relaxed) - at_kill;
        println!("operations while the manager was down (3 s): {during}");
        assert!(during > 0, "no operation completed while the manager was down");
        assert!(fails.lock().unwrap().is_empty(), "failures without the manager: {:?}", fails.lock().unwrap());

        c.restart_manager();
        let t0 = Instant::now();
        let after = c.status_report().expect("status after restart-manager");
        println!("after restart-manager ({:?}):\n{}", t0.elapsed(), after.text);
        assert_eq!(after.epoch, before.epoch, "epoch changed across the manager restart");
        assert_eq!(after.sectors(), before.sectors(), "per-node sectors changed across the manager restart");
        // Past the dead-after interval: the nodes re-registered; no one was declared down.
        thread::sleep(Duration::from_millis(2500));
        let later = c.status_report().expect("status");
        println!("2.5 s later:\n{}", later.text);
        assert_eq!(later.epoch, before.epoch, "epoch changed after the manager restart");
        assert_eq!(later.sectors(), before.sectors(), "per-node sectors changed after the manager restart");
        assert!(later.nodes.iter().all(|n| n.state == "up"), "{}", later.text);
        stop.store(true, Ordering::Relaxed);
    });
    let fails = fails.into_inner().unwrap();
    println!("load: {} operations, {} failed", ops.load(Ordering::Relaxed), fails.len());
    assert!(fails.is_empty(), "failed operations: {fails:?}");
    check_all(&c, &expected, 2);
}

#[test]
fn make_stop_leaves_no_process_and_make_start_brings_keys_back() {
    let c = Cluster::start(25060, 5, 3);
    let mut expected = put_all(&c, "stop", 2000, 4);
    let mut cl = client(&c);
    for i in (0..2000).step_by(13) {
        let k = key("stop", i);
        cl.delete(k.as_bytes()).unwrap_or_else(|e| panic!("delete {k}: {e:?}"));
        expected.insert(k, None);
    }
    drop(cl);

    let mut pids: Vec<i32> = (1..=5).map(|i| c.node_pid(i).expect("node running")).collect();
    pids.push(c.manager_pid().expect("manager running"));
    let t0 = Instant::now();
    let out = c.stop();
    println!("make stop took {:?}", t0.elapsed());
    assert_ok(&out);
    let left: Vec<i32> = pids.iter().copied().filter(|&p| !wait_gone(p, Duration::from_millis(500))).collect();
    assert!(left.is_empty(), "still running after make stop: {left:?}");
    for i in 1..=5 {
        assert_eq!(c.node_pid(i), None, "node {i} pidfile names a live process");
        let log = tail(&c.node_log(i), 10);
        assert!(!log.contains("leave not finished"), "node {i} gave up its leave:\n{log}");
    }
    assert_eq!(c.manager_pid(), None);

    let t0 = Instant::now();
    assert_ok(&c.make("start", &[("NODES", "5"), ("REP", "3")]));
    println!("make start again took {:?}", t0.elapsed());
    let (s, _) = c
        .wait_status(Duration::from_secs(10), |s| s.nodes.len() == 5 && s.nodes.iter().all(|n| n.state == "up"))
        .unwrap_or_else(|last| panic!("not every node up after make start: {last:?}"));
    println!("{}", s.text);
    check_all(&c, &expected, 4);
}
