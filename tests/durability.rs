//! Durability of acknowledged writes on a one-node cluster (SPEC §7): kill -9 and restart of
//! the node, a torn record at the tail of a sector log, and kill -9 of the whole cluster.
//!
//! Ports: 23000–23990, one BASE_PORT per test in steps of 10.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use gtstore::client::{Client, Config, Error};
use gtstore::table::sector_of;

/// Bytes of a record header on disk: crc u32, flags u8, key_len u32, val_len u32, version 16 B.
const RECORD_HEADER: usize = 4 + 1 + 4 + 4 + 16;

fn client(c: &Cluster) -> Client {
    Client::connect(Config { manager: c.manager_addr(), ..Default::default() }).expect("connect to the cluster")
}

fn key(i: usize) -> String {
    format!("durable-key-{i:05}")
}

fn value(i: usize) -> String {
    format!("value-{i}-{:x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Puts keys `0..n` with `threads` clients in parallel; every put must be acknowledged by
/// server1.
fn put_all(c: &Cluster, n: usize, threads: usize) {
    thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut cl = client(c);
                for i in (t..n).step_by(threads) {
                    assert_eq!(cl.put(key(i).as_bytes(), value(i).as_bytes()), Ok(1), "put {}", key(i));
                }
            });
        }
    });
}

/// Reads keys `0..n` back (in parallel) and asserts each has its value.
fn check_all(c: &Cluster, n: usize, threads: usize) {
    thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut cl = client(c);
                let mut missing = Vec::new();
                for i in (t..n).step_by(threads) {
                    match cl.get(key(i).as_bytes()) {
                        Ok((v, 1)) if v == value(i).as_bytes() => {}
                        other => missing.push(format!("{}: {other:?}", key(i))),
                    }
                }
                assert!(
                    missing.is_empty(),
                    "{} acknowledged keys lost or wrong, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                );
            });
        }
    });
}

#[test]
fn ten_thousand_acked_puts_survive_kill_9_and_restart() {
    let c = Cluster::start(23000, 1, 1);
    let n = 10_000;
    let t0 = Instant::now();
    put_all(&c, n, 4);
    eprintln!("10,000 puts took {:?}", t0.elapsed());

    let pid = c.node_pid(1).expect("node 1 running");
    c.kill_node(1);
    assert!(!alive(pid, "gtstore-"), "node 1 survived make kill");
    c.restart_node(1);
    assert!(c.node_pid(1).is_some(), "node 1 running after make restart");

    check_all(&c, n, 4);
    let out = c.cli(&["status"]);
    assert_ok(&out);
    assert!(stdout(&out).contains(&format!("up sectors=1024 keys={n}")), "status after restart:\n{}", stdout(&out));
}

/// The start offset and length of every whole record in a segment file.
fn records(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + RECORD_HEADER <= seg.len() {
        let be = |at: usize| u32::from_be_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
        let len = RECORD_HEADER + be(pos + 5) + be(pos + 9);
        if pos + len > seg.len() {
            break;
        }
        out.push((pos, len));
        pos += len;
    }
    assert_eq!(pos, seg.len(), "the segment parses into whole records");
    out
}

/// The newest segment (`<gen>.log`, highest generation) of a sector directory.
fn newest_segment(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter_map(|p| {
            let gen = p.file_stem()?.to_str()?.parse::<u64>().ok()?;
            Some((gen, p))
        })
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("no segment in {}", dir.display()))
}

#[test]
fn torn_tail_record_is_cut_reported_and_other_keys_survive() {
    let c = Cluster::start(23010, 1, 1);
    let mut cl = client(&c);

    // Keys spread over many sectors, plus six that share one sector, written last there.
    let n = 200;
    put_all(&c, n, 2);
    let sector = sector_of(b"torn-0", 1024);
    let same: Vec<String> =
        (0..).map(|i| format!("torn-{i}")).filter(|k| sector_of(k.as_bytes(), 1024) == sector).take(6).collect();
    for (i, k) in same.iter().enumerate() {
        assert_eq!(cl.put(k.as_bytes(), format!("same-{i}").as_bytes()), Ok(1));
    }
    drop(cl);

    // A clean stop leaves every record in its sector file (and the
    // write-ahead log empty but for its sequence frame); then the disk
    // loses half the last record.
    let pid = c.node_pid(1).expect("node 1 runs");
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    assert!(wait_gone(pid, Duration::from_secs(10)), "node 1 exits after SIGTERM");

    let sdir = c.node_dir(1).join("sectors").join(sector.to_string());
    let seg = newest_segment(&sdir);
    let bytes = fs::read(&seg).unwrap();
    let recs = records(&bytes);
    assert!(recs.len() >= 2, "sector {sector} holds {} records", recs.len());
    let (start, len) = *recs.last().unwrap();
    let last_key = &bytes[start + RECORD_HEADER..start + RECORD_HEADER + same[5].len()];
    assert_eq!(last_key, same[5].as_bytes(), "the newest record is the last put");
    let cut_at = start + len / 2;
    fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut_at as u64).unwrap();
    for name in ["wal-0.log", "wal-1.log"] {
        let wal = fs::metadata(c.node_dir(1).join(name)).map(|m| m.len()).unwrap_or(0);
        let empty = gtstore::store::wal::seq_frame_len();
        assert!(wal <= empty, "a clean stop empties the write-ahead log {name}: {wal} bytes, not {empty}");
    }

    let log_before = fs::metadata(c.node_log(1)).map(|m| m.len()).unwrap_or(0);
    c.restart_node(1);
    assert!(c.node_pid(1).is_some(), "node 1 runs after the torn tail");

    // The torn record is cut back to the last whole one, and the log says so.
    assert_eq!(fs::metadata(&seg).unwrap().len(), start as u64, "{} cut at the last good record", seg.display());
    let log = fs::read(c.node_log(1)).unwrap();
    let new_log = String::from_utf8_lossy(&log[log_before as usize..]);
    let seg_path = seg.display().to_string();
    assert!(
        new_log.lines().any(|l| l.contains(&seg_path) && ["torn", "corrupt", "cut"].iter().any(|w| l.contains(w))),
        "storage.log reports the cut in {}:\n{new_log}",
        seg.display()
    );

    check_all(&c, n, 2);
    let mut cl = client(&c);
    for (i, k) in same.iter().enumerate().take(5) {
        assert_eq!(cl.get(k.as_bytes()), Ok((format!("same-{i}").into_bytes(), 1)), "{k} in the damaged sector");
    }
    // The half-written record is gone, not returned as garbage.
    assert_eq!(cl.get(same[5].as_bytes()), Err(Error::NotFound { node: 1 }));
    // And the sector takes new writes after the cut.
    assert_eq!(cl.put(same[5].as_bytes(), b"rewritten"), Ok(1));
    assert_eq!(cl.get(same[5].as_bytes()), Ok((b"rewritten".to_vec(), 1)));
}

#[test]
fn kill_9_of_whole_cluster_then_make_start_keeps_acked_writes() {
    let c = Cluster::start(23020, 1, 1);
    let n = 1000;
    put_all(&c, n, 2);
    let mut cl = client(&c);
    // Overwrites and deletes must survive too.
    assert_eq!(cl.put(key(3).as_bytes(), b"overwritten"), Ok(1));
    assert_eq!(cl.delete(key(4).as_bytes()), Ok(1));
    drop(cl);

    let node = c.node_pid(1).expect("node running");
    let manager = c.manager_pid().expect("manager running");
    c.kill_node(1);
    c.kill_manager();
    assert!(wait_gone(node, Duration::from_secs(5)));
    assert!(wait_gone(manager, Duration::from_secs(5)));

    let out = c.make("start", &[("NODES", "1"), ("REP", "1")]);
    assert_ok(&out);

    let mut cl = client(&c);
    for i in 0..n {
        let got = cl.get(key(i).as_bytes());
        match i {
            3 => assert_eq!(got, Ok((b"overwritten".to_vec(), 1)), "{}", key(i)),
            4 => assert_eq!(got, Err(Error::NotFound { node: 1 }), "{}", key(i)),
            _ => assert_eq!(got, Ok((value(i).into_bytes(), 1)), "{}", key(i)),
        }
    }
    let out = c.cli(&["--get", &key(7)]);
    assert_eq!(stdout(&out), format!("{}, {}, server1\n", key(7), value(7)));
}
