//! A single-node cluster driven through the Makefile and the `gtstore` binary (SPEC §8, §9
//! sequence 1), plus the command-line contract of every binary and the daemons' signal and
//! data-directory behaviour.
//!
//! Ports: 21000–21990, one BASE_PORT per test in steps of 10.

mod common;

use std::fs;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use gtstore::client::{Client, Config};
use nix::sys::signal::Signal;

/// Asserts a CLI call printed exactly `expected` (plus a newline) and exited 0.
#[track_caller]
fn assert_prints(out: &std::process::Output, expected: &str) {
    assert_ok(out);
    assert_eq!(stdout(out), format!("{expected}\n"), "stderr: {}", stderr(out));
}

#[test]
fn spec9_sequence1_single_server_then_make_stop() {
    let c = Cluster::start(21000, 1, 1);

    assert_prints(&c.cli(&["--put", "key1", "--val", "value1"]), "OK, server1");
    assert_prints(&c.cli(&["--get", "key1"]), "key1, value1, server1");

    assert_prints(&c.cli(&["--put", "key1", "--val", "value2"]), "OK, server1");
    assert_prints(&c.cli(&["--put", "key2", "--val", "value3"]), "OK, server1");
    assert_prints(&c.cli(&["--put", "key3", "--val", "value4"]), "OK, server1");

    assert_prints(&c.cli(&["--get", "key1"]), "key1, value2, server1");
    assert_prints(&c.cli(&["--get", "key2"]), "key2, value3, server1");
    assert_prints(&c.cli(&["--get", "key3"]), "key3, value4, server1");

    let node = c.node_pid(1).expect("node 1 running before make stop");
    let manager = c.manager_pid().expect("manager running before make stop");
    let out = c.stop();
    assert_ok(&out);
    // `make stop` waits for the daemons, so they must already be gone (a short grace covers
    // the kernel finishing the exit).
    assert!(wait_gone(node, Duration::from_millis(500)), "storage node pid {node} still alive after make stop");
    assert!(wait_gone(manager, Duration::from_millis(500)), "manager pid {manager} still alive after make stop");
    assert_eq!(c.node_pid(1), None);
    assert_eq!(c.manager_pid(), None);
}

#[test]
fn del_then_get_is_not_found_exit_1() {
    let c = Cluster::start(21010, 1, 1);
    assert_prints(&c.cli(&["--put", "gone", "--val", "soon"]), "OK, server1");
    assert_prints(&c.cli(&["--get", "gone"]), "gone, soon, server1");
    assert_prints(&c.cli(&["--del", "gone"]), "OK, server1");

    let out = c.cli(&["--get", "gone"]);
    assert_exit(&out, 1);
    assert_eq!(stderr(&out), "gtstore: gone: not found\n");
    assert_eq!(stdout(&out), "");

    // A key that never existed reads the same way.
    let out = c.cli(&["--get", "never-written"]);
    assert_exit(&out, 1);
    assert_eq!(stderr(&out), "gtstore: never-written: not found\n");
}

#[test]
fn value_from_stdin_512k_round_trips_byte_for_byte() {
    let c = Cluster::start(21020, 1, 1);
    // Every byte value, newlines and invalid UTF-8 included, in a non-repeating pattern.
    let mut x: u32 = 0x1234_5678;
    let value: Vec<u8> = (0..512 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let out = c.cli_stdin(&["--put", "big", "--val", "-"], &value);
    assert_prints(&out, "OK, server1");

    let out = c.cli(&["--get", "big"]);
    assert_ok(&out);
    let mut expected = b"big, ".to_vec();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b", server1\n");
    assert_eq!(out.stdout.len(), expected.len(), "length of the get output");
    assert!(
        out.stdout == expected,
        "the 512 KiB value did not come back byte for byte (first difference at {:?})",
        out.stdout.iter().zip(&expected).position(|(a, b)| a != b)
    );
}

#[test]
fn non_ascii_key_round_trips() {
    let c = Cluster::start(21030, 1, 1);
    let key = "clé-ключ-鍵";
    let val = "valeur-значение-値";
    assert_prints(&c.cli(&["--put", key, "--val", val]), "OK, server1");
    assert_prints(&c.cli(&["--get", key]), &format!("{key}, {val}, server1"));
    // The bytes are the key: its ASCII look-alike is a different key.
    let out = c.cli(&["--get", "cle-kljuch-ken"]);
    assert_exit(&out, 1);
    assert_prints(&c.cli(&["--del", key]), "OK, server1");
    let out = c.cli(&["--get", key]);
    assert_exit(&out, 1);
    assert_eq!(stderr(&out), format!("gtstore: {key}: not found\n"));
}

#[test]
fn usage_errors_exit_64() {
    // Nothing listens here: a usage error must be reported before any connection attempt.
    let manager = "127.0.0.1:21040";
    let cases: &[&[&str]] = &[
        &[],
        &["--put", "k"],
        &["--put", "k", "--val", "v", "--get", "k"],
        &["--get", "k", "--del", "k"],
        &["--no-such-flag"],
        &["--get"],
    ];
    for args in cases {
        let mut all = vec!["--manager", manager];
        all.extend_from_slice(args);
        let out = run_bin("gtstore", &all);
        assert!(
            out.status.code() == Some(64),
            "gtstore {args:?}: expected exit 64, got {}\n--- stderr ---\n{}",
            describe_status(&out.status),
            stderr(&out)
        );
        assert!(!stderr(&out).trim().is_empty(), "gtstore {args:?}: a usage error says why on stderr");
        assert_eq!(stdout(&out), "", "gtstore {args:?}: nothing on stdout");
    }
    for daemon in ["gtstore-manager", "gtstore-storage"] {
        let out = run_bin(daemon, &["--no-such-flag"]);
        assert_exit(&out, 64);
    }
    // The storage node's --id is required.
    let out = run_bin("gtstore-storage", &["--listen", "127.0.0.1:21041"]);
    assert_exit(&out, 64);
    // Issue #11 item 4: a daemon does not listen on an address nobody can dial (it would also
    // advertise it to the manager as its own).
    let dir = TempDir::new("listen-any");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    for addr in ["0.0.0.0:21042", "[::]:21042", "0.0.0.0:0"] {
        for (daemon, args) in [
            ("gtstore-manager", vec!["--listen", addr, "--data-dir", data]),
            ("gtstore-storage", vec!["--id", "1", "--listen", addr, "--data-dir", data]),
        ] {
            let out = run_bin(daemon, &args);
            assert_exit(&out, 64);
            assert!(stderr(&out).contains("unspecified address"), "{daemon} --listen {addr}: {}", stderr(&out));
        }
    }
}

#[test]
fn help_and_version_exit_0_for_every_binary() {
    for name in ["gtstore", "gtstore-manager", "gtstore-storage"] {
        for flag in ["--help", "-h"] {
            let out = run_bin(name, &[flag]);
            assert_ok(&out);
            assert!(stdout(&out).contains("--help"), "{name} {flag} prints usage mentioning --help:\n{}", stdout(&out));
        }
        for flag in ["--version", "-V"] {
            let out = run_bin(name, &[flag]);
            assert_ok(&out);
            let text = stdout(&out);
            assert!(
                text.starts_with(name) && text.contains(env!("CARGO_PKG_VERSION")),
                "{name} {flag} prints its name and version, got {text:?}"
            );
        }
    }
}

#[test]
fn no_cluster_reachable_exits_69_with_one_line() {
    // Hold the port with a listener that is dropped, so nothing listens on it.
    let port = {
        let l = TcpListener::bind("127.0.0.1:21050").expect("bind 21050");
        l.local_addr().unwrap().port()
    };
    let manager = format!("127.0.0.1:{port}");
    for args in [vec!["--get", "key1"], vec!["--put", "key1", "--val", "value1"], vec!["--del", "key1"], vec!["status"]]
    {
        let mut all = vec!["--manager", manager.as_str(), "--deadline-ms", "1000"];
        all.extend_from_slice(&args);
        let started = std::time::Instant::now();
        let out = run_bin("gtstore", &all);
        assert_exit(&out, 69);
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "gtstore {args:?}: exactly one line on stderr, got {err:?}");
        assert!(err.starts_with("gtstore: "), "{err:?}");
        assert_eq!(stdout(&out), "");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gtstore {args:?} took {:?} with --deadline-ms 1000",
            started.elapsed()
        );
    }
}

/// Parses `make status` / `gtstore status` output: the epoch line, then node lines.
fn check_status(text: &str, node_addr: &str, keys: u64) {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("epoch "), "status begins with an epoch line, got {text:?}");
    let node_lines: Vec<&str> = lines.filter(|l| l.starts_with("server")).collect();
    assert_eq!(node_lines, vec![format!("server1 {node_addr} up sectors=1024 keys={keys}")], "status output:\n{text}");
}

#[test]
fn status_shows_epoch_and_key_count() {
    let c = Cluster::start(21060, 1, 1);
    let out = c.cli(&["status"]);
    assert_ok(&out);
    check_status(&stdout(&out), &c.node_addr(1), 0);

    for i in 0..7 {
        let k = format!("status-key-{i}");
        assert_prints(&c.cli(&["--put", &k, "--val", "v"]), "OK, server1");
    }
    // An overwrite and a delete: 7 written, 1 overwritten, 1 deleted -> 6 live keys.
    assert_prints(&c.cli(&["--put", "status-key-0", "--val", "again"]), "OK, server1");
    assert_prints(&c.cli(&["--del", "status-key-6"]), "OK, server1");

    let out = c.cli(&["status"]);
    assert_ok(&out);
    check_status(&stdout(&out), &c.node_addr(1), 6);

    let out = c.status();
    assert_ok(&out);
    check_status(&stdout(&out), &c.node_addr(1), 6);
}

/// A manager and a storage node spawned in the foreground on ephemeral ports.
fn spawn_pair(dir: &TempDir) -> (Daemon, Daemon) {
    let mdir = dir.join("manager");
    let ndir = dir.join("node1");
    fs::create_dir_all(&mdir).unwrap();
    fs::create_dir_all(&ndir).unwrap();
    let manager =
        Daemon::spawn(&bin("gtstore-manager"), &["--listen", "127.0.0.1:0", "--data-dir", mdir.to_str().unwrap()]);
    let node = Daemon::spawn(
        &bin("gtstore-storage"),
        &["--id", "1", "--listen", "127.0.0.1:0", "--manager", manager.addr(), "--data-dir", ndir.to_str().unwrap()],
    );
    wait_registered(&manager, &node);
    (manager, node)
}

/// Waits until the node serves requests: a put through the client library succeeds only once
/// the node has registered and holds the table (it prints `listening on` before registering).
fn wait_registered(manager: &Daemon, _node: &Daemon) {
    let mut client = Client::connect(Config {
        manager: manager.addr().to_string(),
        deadline: Duration::from_secs(10),
        ..Default::default()
    })
    .expect("connect to the manager");
    let node = client.put(b"ready-probe", b"1").expect("the node serves a put within 10 s");
    assert_eq!(node, 1);
}

#[test]
fn sigterm_makes_each_daemon_exit_0() {
    let dir = TempDir::new("single-sigterm");
    let (mut manager, mut node) = spawn_pair(&dir);

    node.signal(Signal::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(10)).expect("storage node still running 10 s after SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "storage node after SIGTERM: {}\n{}",
        describe_status(&status),
        node.stderr_text()
    );

    manager.signal(Signal::SIGTERM);
    let status = manager.wait_exit(Duration::from_secs(10)).expect("manager still running 10 s after SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "manager after SIGTERM: {}\n{}",
        describe_status(&status),
        manager.stderr_text()
    );
}

#[test]
fn second_storage_on_same_data_dir_exits_75() {
    let dir = TempDir::new("single-lock");
    let (manager, node) = spawn_pair(&dir);
    let ndir = dir.join("node1");
    let ndir_s = ndir.to_str().unwrap();

    let out = run_bin(
        "gtstore-storage",
        &["--id", "1", "--listen", "127.0.0.1:0", "--manager", manager.addr(), "--data-dir", ndir_s],
    );
    assert_exit(&out, 75);
    let err = stderr(&out);
    assert!(
        err.contains(ndir_s) && err.contains("in use"),
        "the refusal names the data directory {ndir_s} and says it is in use: {err:?}"
    );
    assert!(err.contains(&node.pid().to_string()), "the refusal names the holder's pid {}: {err:?}", node.pid());
    // The first node is unharmed.
    assert!(alive(node.pid(), "gtstore-"), "the first node died");
}

#[test]
fn sighup_reopens_the_log_file_after_rotation() {
    let dir = TempDir::new("single-sighup");
    let mdir = dir.join("manager");
    fs::create_dir_all(&mdir).unwrap();
    let log = dir.join("manager.log");
    let rotated = dir.join("manager.log.1");
    let mut manager = Daemon::spawn(
        &bin("gtstore-manager"),
        &["--listen", "127.0.0.1:0", "--data-dir", mdir.to_str().unwrap(), "--log", log.to_str().unwrap()],
    );
    // The daemon prints its address on stdout before it logs it, so give the log a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&log).unwrap_or_default().contains("listening on") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(fs::read_to_string(&log).unwrap().contains("listening on"), "the manager logs to --log");

    // logrotate's way: rename the file, then SIGHUP; the daemon writes to a new file.
    fs::rename(&log, &rotated).unwrap();
    manager.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&log).unwrap_or_default().contains("log reopened") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(fs::read_to_string(&log).unwrap_or_default().contains("log reopened"), "a new log file after SIGHUP");
    manager.signal(Signal::SIGTERM);
    let status = manager.wait_exit(Duration::from_secs(10)).expect("manager exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(fs::read_to_string(&log).unwrap().contains("exiting"), "later lines go to the new file");
    assert!(!fs::read_to_string(&rotated).unwrap().contains("exiting"), "nothing more in the rotated file");
}
