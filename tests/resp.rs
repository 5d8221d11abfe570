//! The RESP2 front end (issue #12 items 1 and 5) driven by real Redis clients: `redis-cli` and
//! `redis-benchmark` (Debian's redis-tools; each test says so and passes where they are missing),
//! redis-py in a virtual environment the test creates (skipped with a message when it cannot be
//! installed), and raw sockets for pipelining, protocol errors and AUTH. The clusters come from
//! `make start`, which gives node i a RESP port on BASE_PORT+100+i.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use gtstore::net::resp::{self, RespLimits, Value};

fn resp_port(c: &Cluster, node: u16) -> u16 {
    c.base_port + 100 + node
}

/// True if `tool` runs here; prints why the test is skipped if not.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipped: {tool} is not installed (apt-get install redis-tools)");
    }
    ok
}

fn redis_cli(port: u16, args: &[&str]) -> Output {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("-p").arg(port.to_string()).args(args);
    run_timeout(cmd, None, Duration::from_secs(20))
}

/// redis-cli's output for one command, without the trailing newline.
fn cli_out(port: u16, args: &[&str]) -> String {
    let out = redis_cli(port, args);
    stdout(&out).trim_end_matches('\n').to_string()
}

/// Writes `wire` to a fresh connection and reads `n` replies.
fn exchange(port: u16, wire: &[u8], n: usize) -> (TcpStream, Vec<Value>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the RESP port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(wire).unwrap();
    let replies = read_replies(&mut s, n);
    (s, replies)
}

fn read_replies(s: &mut TcpStream, n: usize) -> Vec<Value> {
    let limits = RespLimits::client(1 << 20);
    let (mut buf, mut got) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 65536];
    while got.len() < n {
        match resp::decode(&buf, &limits).expect("replies are RESP2") {
            Some((v, used)) => {
                got.push(v);
                buf.drain(..used);
            }
            None => {
                let k = s.read(&mut chunk).expect("read replies");
                assert!(k > 0, "connection closed after {} of {n} replies", got.len());
                buf.extend_from_slice(&chunk[..k]);
            }
        }
    }
    got
}

fn wire(cmds: &[&[&str]]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in cmds {
        resp::encode(&resp::command(c.iter().map(|a| a.as_bytes().to_vec())), &mut out);
    }
    out
}

#[test]
fn redis_cli_sets_gets_and_deletes_through_any_node_and_the_native_client_agrees() {
    if !have("redis-cli") {
        return;
    }
    let c = Cluster::start(31000, 3, 3);
    let (p1, p2, p3) = (resp_port(&c, 1), resp_port(&c, 2), resp_port(&c, 3));
    assert_eq!(cli_out(p1, &["PING"]), "PONG");
    assert_eq!(cli_out(p1, &["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli_out(p2, &["GET", "greeting"]), "hello world", "any node serves any key");
    assert_eq!(cli_out(p3, &["GET", "greeting"]), "hello world");
    let native = c.cli(&["--get", "greeting"]);
    assert_ok(&native);
    assert!(stdout(&native).starts_with("greeting, hello world, server"), "the native client reads what RESP wrote");
    assert_ok(&c.cli(&["--put", "native", "--val", "from the CLI"]));
    assert_eq!(cli_out(p3, &["GET", "native"]), "from the CLI", "RESP reads what the native client wrote");

    // Binary-safe values: redis-cli -x sends standard input as the last argument.
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &p1.to_string(), "-x", "SET", "binary"]);
    let bytes = b"a\r\nb\0c\xff";
    assert_eq!(stdout(&run_timeout(cmd, Some(bytes), Duration::from_secs(20))).trim_end(), "OK");
    let native = c.cli(&["--get", "binary"]);
    assert_ok(&native);
    assert!(native.stdout.windows(bytes.len()).any(|w| w == bytes), "the value is kept byte for byte");

    assert_eq!(cli_out(p2, &["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(cli_out(p1, &["MGET", "a", "b", "missing"]), "1\n2", "the missing key is an empty line");
    assert_eq!(cli_out(p3, &["EXISTS", "a", "b", "missing", "a"]), "3", "EXISTS counts each key it is given");
    assert_eq!(cli_out(p1, &["DEL", "a", "missing"]), "1", "DEL counts the keys that had a value");
    assert_eq!(cli_out(p2, &["GET", "a"]), "", "a deleted key reads as nil");
    let native = c.cli(&["--get", "a"]);
    assert_exit(&native, 1);
    assert_eq!(cli_out(p1, &["UNLINK", "b"]), "1");
    assert_eq!(cli_out(p1, &["TTL", "greeting"]), "-1", "a key without expiry");
    assert_eq!(cli_out(p1, &["TTL", "b"]), "-2", "a key that does not exist");
    // greeting, native and binary are live; every node counts them once.
    for p in [p1, p2, p3] {
        assert_eq!(cli_out(p, &["DBSIZE"]), "3", "DBSIZE on port {p} counts live keys cluster-wide");
    }

    let info = cli_out(p2, &["INFO"]);
    for want in ["# Server", "# Clients", "# Persistence", "# Keyspace", "# Cluster", "gtstore_members_up:3"] {
        assert!(info.contains(want), "INFO lacks {want:?}:\n{info}");
    }
    assert!(cli_out(p1, &["INFO", "cluster"]).starts_with("# Cluster"), "INFO takes a section");
    assert!(cli_out(p1, &["INCR", "counter"]).contains("last-writer-wins"), "INCR is refused with the reason");
    assert!(cli_out(p1, &["SET", "x", "y", "NX"]).contains("compare-and-set"), "SET NX is refused");
    assert_eq!(cli_out(p1, &["GET", "x"]), "", "a refused SET NX wrote nothing");
    assert_eq!(
        cli_out(p1, &["FROB", "1", "2"]),
        "ERR unknown command 'FROB', with args beginning with: '1' '2' ",
        "unknown commands get Redis's text"
    );
    assert!(cli_out(p1, &["GET"]).contains("wrong number of arguments"));
    assert_eq!(cli_out(p1, &["SELECT", "0"]), "OK");
    assert!(cli_out(p1, &["SELECT", "1"]).contains("out of range"));
    assert!(cli_out(p1, &["HELLO", "4"]).starts_with("NOPROTO"), "only RESP2 and RESP3");
    assert_eq!(cli_out(p1, &["CLIENT", "SETNAME", "tester"]), "OK");
    assert_eq!(cli_out(p1, &["CONFIG", "GET", "appendonly"]), "appendonly\nyes");
}

#[test]
fn redis_benchmark_runs_set_get_and_mset_with_no_errors() {
    if !have("redis-benchmark") || !have("redis-cli") {
        return;
    }
    let c = Cluster::start(31010, 1, 1);
    let port = resp_port(&c, 1).to_string();
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-p", &port, "-t", "set,get,mset", "-n", "5000", "-c", "10", "-r", "1000", "--csv"]);
    let out = run_timeout(cmd, None, Duration::from_secs(120));
    assert_ok(&out);
    let (text, errors) = (stdout(&out), stderr(&out));
    println!("{text}");
    assert!(!errors.contains("rror"), "redis-benchmark reported errors:\n{errors}");
    for test in ["\"SET\"", "\"GET\"", "\"MSET (10 keys)\""] {
        let line = text.lines().find(|l| l.starts_with(test)).unwrap_or_else(|| panic!("no {test} row:\n{text}"));
        let rps: f64 = line.split(',').nth(1).and_then(|f| f.trim_matches('"').parse().ok()).unwrap_or(0.0);
        assert!(rps > 0.0, "{test}: {line}");
    }
    let keys: u64 = cli_out(resp_port(&c, 1), &["DBSIZE"]).parse().expect("DBSIZE is an integer");
    assert!((1..=1000).contains(&keys), "redis-benchmark -r 1000 wrote {keys} keys");
}

#[test]
fn a_pipeline_of_mixed_and_inline_commands_is_answered_in_order() {
    let c = Cluster::start(31020, 3, 2);
    let port = resp_port(&c, 2);
    let mut wire_bytes = Vec::new();
    for i in 0..200 {
        let (k, v) = (format!("pipe-{i}"), format!("value-{i}"));
        wire_bytes.extend(wire(&[&["SET", &k, &v]]));
        if i % 10 == 0 {
            wire_bytes.extend(format!("GET pipe-{i}\r\n").into_bytes()); // an inline command
        } else {
            wire_bytes.extend(wire(&[&["GET", &k]]));
        }
    }
    wire_bytes.extend(wire(&[&["MGET", "pipe-0", "nope", "pipe-199"], &["ECHO", "done"]]));
    // What follows a DEL in the pipeline sees its effect.
    wire_bytes.extend(wire(&[&["DEL", "pipe-5", "nope"], &["GET", "pipe-5"], &["EXISTS", "pipe-5", "pipe-6"]]));
    let (mut s, replies) = exchange(port, &wire_bytes, 405);
    for i in 0..200 {
        assert_eq!(replies[2 * i], Value::ok(), "reply {} (SET pipe-{i})", 2 * i);
        assert_eq!(replies[2 * i + 1], Value::bulk(format!("value-{i}")), "reply {} (GET pipe-{i})", 2 * i + 1);
    }
    assert_eq!(
        replies[400],
        Value::Array(vec![Value::bulk("value-0"), Value::Nil, Value::bulk("value-199")]),
        "MGET answers in key order"
    );
    assert_eq!(replies[401], Value::bulk("done"));
    assert_eq!(replies[402..], [Value::Integer(1), Value::Nil, Value::Integer(1)], "the DEL took effect in order");

    // A protocol error is answered and closes that connection only.
    s.write_all(b"*1\r\n$x\r\n").unwrap();
    let error = read_replies(&mut s, 1);
    assert!(matches!(&error[0], Value::Error(e) if e.starts_with("ERR Protocol error")), "{error:?}");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0, "the connection closed after the protocol error");
    let (_, again) = exchange(port, &wire(&[&["GET", "pipe-7"]]), 1);
    assert_eq!(again[0], Value::bulk("value-7"), "other connections go on");
    // RESP3 after HELLO 3: nulls are `_` and HELLO's answer a map (redis-py 8 speaks RESP3).
    let (_, r3) = exchange(port, &wire(&[&["HELLO", "3"], &["GET", "nope"], &["MGET", "pipe-1", "nope"]]), 3);
    assert!(matches!(&r3[0], Value::Map(m) if m.contains(&(Value::bulk("proto"), Value::Integer(3)))), "{r3:?}");
    assert_eq!(r3[1], Value::Null);
    assert_eq!(r3[2], Value::Array(vec![Value::bulk("value-1"), Value::Null]));
    let (_, too_big) = exchange(port, b"*1\r\n$99999999\r\n", 1);
    assert!(matches!(&too_big[0], Value::Error(e) if e.contains("invalid bulk length")), "{too_big:?}");
}

#[test]
fn with_a_client_key_resp_clients_must_authenticate_first() {
    let dir = TempDir::new("resp-key");
    let key = dir.join("client.key");
    let password = "correct-horse-battery-staple-0123456789";
    std::fs::write(&key, format!("{password}\n")).unwrap();
    let mut perms = std::fs::metadata(&key).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&key, perms).unwrap();
    let key_s = key.to_str().unwrap();
    let c = Cluster::start_with(31030, 2, 2, &[("CLIENT_KEY", key_s)]);
    let port = resp_port(&c, 1);
    let (_, r) = exchange(port, &wire(&[&["SET", "k", "v"], &["GET", "k"], &["PING"]]), 3);
    for v in &r {
        assert!(matches!(v, Value::Error(e) if e.starts_with("NOAUTH")), "before AUTH: {r:?}");
    }
    let (_, r) = exchange(port, &wire(&[&["AUTH", "wrong"], &["GET", "k"]]), 2);
    assert!(matches!(&r[0], Value::Error(e) if e.starts_with("WRONGPASS")), "{r:?}");
    assert!(matches!(&r[1], Value::Error(e) if e.starts_with("NOAUTH")), "{r:?}");
    let (_, r) = exchange(port, &wire(&[&["AUTH", password], &["SET", "k", "v"], &["GET", "k"]]), 3);
    assert_eq!(r, vec![Value::ok(), Value::ok(), Value::bulk("v")]);
    let (_, r) = exchange(port, &wire(&[&["HELLO", "2", "AUTH", "default", password], &["GET", "k"]]), 2);
    assert!(matches!(&r[0], Value::Array(_)), "HELLO 2 with AUTH: {r:?}");
    assert_eq!(r[1], Value::bulk("v"));
    if have("redis-cli") {
        assert_eq!(cli_out(port, &["--no-auth-warning", "-a", password, "GET", "k"]), "v");
    }
}

#[test]
fn redis_py_pipelines_against_a_node_and_reads_its_results() {
    let dir = TempDir::new("resp-py");
    let venv = dir.join("venv");
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        println!("skipped: cannot make a Python virtual environment ({made:?})");
        return;
    }
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check", "redis"]);
    let installed = run_timeout(pip, None, Duration::from_secs(300));
    if !installed.status.success() {
        println!("skipped: cannot install redis-py:\n{}", stderr(&installed));
        return;
    }
    let c = Cluster::start(31040, 3, 3);
    let script = format!(
        r#"
import redis
r = redis.Redis(host="127.0.0.1", port={port})
p = r.pipeline(transaction=False)
for i in range(100):
    p.set(f"py-{{i}}", f"v{{i}}")
p.get("py-42")
p.mget("py-1", "nope", "py-99")
p.delete("py-1", "nope")
p.exists("py-1", "py-2")
res = p.execute()
assert all(x is True for x in res[:100]), res[:100]
print(res[100].decode())
print([x.decode() if x else None for x in res[101]])
print(res[102], res[103])
print(r.ping(), r.dbsize())
r2 = redis.Redis(host="127.0.0.1", port={port}, protocol=2)
print(r2.get("nope"), r2.get("py-42").decode())
"#,
        port = resp_port(&c, 3)
    );
    let mut py = Command::new(venv.join("bin/python"));
    py.args(["-c", &script]);
    let out = run_timeout(py, None, Duration::from_secs(60));
    assert_ok(&out);
    assert_eq!(stdout(&out), "v42\n['v1', None, 'v99']\n1 1\nTrue 99\nNone v42\n");
}

/// Freezes node `i` with SIGSTOP for `d`, in a thread that sends SIGCONT after it.
fn freeze(c: &Cluster, i: u16, d: Duration) -> std::thread::JoinHandle<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(c.node_pid(i).expect("the node runs"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = kill(pid, Signal::SIGCONT);
    })
}

#[test]
fn a_replica_stalled_for_a_second_and_a_half_delays_commands_instead_of_failing_them() {
    // Two nodes, two copies of each key: every write and read needs both. The manager is told
    // not to declare a silent node down, so the stalled one stays in the preference lists.
    let c = Cluster::start_with(31050, 2, 2, &[("MANAGER_FLAGS", "--dead-after-ms 30000")]);
    let port = resp_port(&c, 1);
    let (_, r) = exchange(port, &wire(&[&["SET", "before", "1"]]), 1);
    assert_eq!(r, [Value::ok()]);

    // Longer than a request's 1 s deadline, shorter than the 5 s a command is retried.
    let thaw = freeze(&c, 2, Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let (_, r) = exchange(
        port,
        &wire(&[&["SET", "a", "1"], &["MSET", "b", "2", "c", "3"], &["GET", "before"], &["EXISTS", "d"]]),
        4,
    );
    let waited = started.elapsed();
    thaw.join().unwrap();
    assert_eq!(r, [Value::ok(), Value::ok(), Value::bulk("1"), Value::Integer(0)], "after {waited:?}");
    assert!(waited >= Duration::from_millis(1400), "the answers waited for the stalled replica: {waited:?}");

    // Two writes of one key and a read of it in one pipeline: the requests about one key go one
    // at a time, in order, so the first write's retry cannot land after the second, and the
    // read sees the second.
    let thaw = freeze(&c, 2, Duration::from_millis(1500));
    let (_, r) = exchange(port, &wire(&[&["SET", "x", "first"], &["SET", "x", "second"], &["GET", "x"]]), 3);
    thaw.join().unwrap();
    assert_eq!(r, [Value::ok(), Value::ok(), Value::bulk("second")]);
    let (_, read) = exchange(resp_port(&c, 2), &wire(&[&["GET", "x"]]), 1);
    assert_eq!(read, [Value::bulk("second")], "the later write wins on every node");

    // A stall longer than the retry budget ends in TRYAGAIN: a command is retried for 5 s, and
    // its last try ends within a request deadline (1 s) and the settling margin after that.
    let thaw = freeze(&c, 2, Duration::from_millis(8000));
    let started = std::time::Instant::now();
    let (_, r) = exchange(port, &wire(&[&["SET", "late", "1"]]), 1);
    let waited = started.elapsed();
    thaw.join().unwrap();
    assert!(matches!(&r[0], Value::Error(e) if e.starts_with("TRYAGAIN")), "{r:?}");
    assert!(waited >= Duration::from_millis(4500) && waited < Duration::from_millis(7500), "{waited:?}");
    let (_, r) = exchange(port, &wire(&[&["SET", "after", "1"], &["GET", "a"]]), 2);
    assert_eq!(r, [Value::ok(), Value::bulk("1")], "served again once the replica is back");
}
