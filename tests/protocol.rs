//! The wire protocol (SPEC §6) over raw sockets against the storage node of a one-node cluster:
//! framing across writes, pipelining, malformed input, unknown verbs, and a node that keeps
//! serving everyone else while some connections idle or stall.
//!
//! Ports: 22000–22990, one BASE_PORT per test in steps of 10.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use gtstore::client::{Client, Config};
use gtstore::net::codec::{to_bytes, Body, ErrorCode, Header, Message};

/// Asserts the node closes the connection: the next read sees EOF (a reset also counts as
/// closed), not more data and not a timeout.
#[track_caller]
fn expect_closed(s: &mut TcpStream, what: &str) {
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{what}: expected EOF after the ERROR reply, got {:?}", String::from_utf8_lossy(&b[..n])),
        Err(e) => panic!("{what}: expected EOF after the ERROR reply, got {e}"),
    }
}

fn msg(req: u64, body: Body) -> Message {
    Message { header: Header { req, ..Header::default() }, body }
}

fn put(req: u64, key: &str, value: &str) -> Message {
    msg(req, Body::Put { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), expiry: Default::default() })
}

fn get(req: u64, key: &str) -> Message {
    msg(req, Body::Get { key: key.as_bytes().to_vec() })
}

fn client(c: &Cluster) -> Client {
    Client::connect(Config { manager: c.manager_addr(), ..Default::default() }).expect("connect to the cluster")
}

/// Asserts `m` is a VALUE reply carrying `value` for request `req`.
#[track_caller]
fn assert_value(m: &Message, req: u64, value: &str) {
    assert_eq!(m.header.req, req, "reply REQ_ID in {m:?}");
    match &m.body {
        Body::Value { value: v, .. } => assert_eq!(v, value.as_bytes()),
        other => panic!("expected VALUE {value:?} for request {req}, got {other:?}"),
    }
}

#[track_caller]
fn assert_ok_reply(m: &Message, req: u64) {
    assert_eq!(m.header.req, req, "reply REQ_ID in {m:?}");
    assert_eq!(m.body, Body::Ok, "expected OK for request {req}, got {m:?}");
    assert_eq!(m.header.node, 1, "the coordinator is server1: {m:?}");
}

#[test]
fn idle_and_stalled_connections_do_not_delay_other_clients() {
    let c = Cluster::start(22000, 1, 1);
    let addr = c.node_addr(1);

    let mut idle: Vec<TcpStream> = (0..1000).map(|_| connect(&addr)).collect();
    let mut stalled = connect(&addr);
    stalled.write_all(b"PUT 0 0 1").unwrap(); // half a header, then nothing

    let started = Instant::now();
    let mut cl = client(&c);
    assert_eq!(cl.put(b"busy-key", b"busy-value"), Ok(1));
    assert_eq!(cl.get(b"busy-key"), Ok((b"busy-value".to_vec(), 1)));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "connect+put+get took {took:?} with 1,000 idle connections and a stalled one"
    );

    // The idle connections were accepted, not left in the backlog: the last one opened and
    // the first can still be used.
    let last = idle.len() - 1;
    for (i, req) in [(last, 901u64), (0, 902)] {
        let s = &mut idle[i];
        s.write_all(&to_bytes(&get(req, "busy-key"))).unwrap();
        let mut buf = Vec::new();
        let m = read_msg(s, &mut buf);
        assert_value(&m, req, "busy-value");
    }

    // The stalled connection's request completes once the rest arrives.
    let full = to_bytes(&put(7, "x", "y"));
    assert!(full.starts_with(b"PUT 0 0 1"));
    stalled.write_all(&full[b"PUT 0 0 1".len()..]).unwrap();
    let mut buf = Vec::new();
    let m = read_msg(&mut stalled, &mut buf);
    assert_ok_reply(&m, 7);
}

/// Opens a connection, sends `bytes`, and checks for an ERROR reply with `want` followed by
/// EOF; then checks the node still serves the library client and still holds `before`.
fn check_rejected(
    c: &Cluster,
    cl: &mut Client,
    bytes: &[u8],
    want: ErrorCode,
    what: &str,
    before: &[(String, String)],
) {
    let mut s = connect(&c.node_addr(1));
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let m = read_msg(&mut s, &mut buf);
    match &m.body {
        Body::Error { code, reason } => {
            assert_eq!(code, &want, "{what}: the ERROR's code");
            assert!(!reason.is_empty(), "{what}: ERROR with a reason");
        }
        other => panic!("{what}: expected an ERROR reply, got {other:?}"),
    }
    assert!(buf.is_empty(), "{what}: only one reply, got extra {:?}", String::from_utf8_lossy(&buf));
    expect_closed(&mut s, what);

    let k = format!("after-{what}");
    assert_eq!(cl.put(k.as_bytes(), b"still serving"), Ok(1), "put after {what}");
    assert_eq!(cl.get(k.as_bytes()), Ok((b"still serving".to_vec(), 1)), "get after {what}");
    for (k, v) in before {
        assert_eq!(cl.get(k.as_bytes()), Ok((v.as_bytes().to_vec(), 1)), "key {k} written before {what}");
    }
}

#[test]
fn malformed_requests_get_error_then_eof_and_node_keeps_serving() {
    let c = Cluster::start(22010, 1, 1);
    let mut cl = client(&c);
    let before: Vec<(String, String)> = (0..20).map(|i| (format!("pre-{i}"), format!("val-{i}"))).collect();
    for (k, v) in &before {
        assert_eq!(cl.put(k.as_bytes(), v.as_bytes()), Ok(1));
    }

    // A bystander connection in the middle of its own session must not notice.
    let mut bystander = connect(&c.node_addr(1));
    let mut bbuf = Vec::new();
    bystander.write_all(&to_bytes(&get(1, "pre-0"))).unwrap();
    assert_value(&read_msg(&mut bystander, &mut bbuf), 1, "val-0");

    check_rejected(&c, &mut cl, b"\x00\xff\xfe garbage \x01\x02\r\n\x7f", ErrorCode::Malformed, "garbage", &before);
    check_rejected(&c, &mut cl, b"GET x 0 5 1\n", ErrorCode::Malformed, "non-numeric header", &before);
    check_rejected(&c, &mut cl, b"PUT 0 0 999999999 1\n", ErrorCode::TooLarge, "length over the limit", &before);

    bystander.write_all(&to_bytes(&get(2, "pre-19"))).unwrap();
    assert_value(&read_msg(&mut bystander, &mut bbuf), 2, "val-19");
}

#[test]
fn request_split_across_writes_gets_its_reply() {
    let c = Cluster::start(22020, 1, 1);
    let mut s = connect(&c.node_addr(1));
    let mut buf = Vec::new();

    // Split inside the header line.
    let bytes = to_bytes(&put(41, "split-key", "split-value"));
    s.write_all(&bytes[..5]).unwrap();
    thread::sleep(Duration::from_millis(300));
    s.write_all(&bytes[5..]).unwrap();
    assert_ok_reply(&read_msg(&mut s, &mut buf), 41);

    // Split inside the payload.
    let bytes = to_bytes(&get(42, "split-key"));
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
    s.write_all(&bytes[..nl + 3]).unwrap();
    thread::sleep(Duration::from_millis(300));
    s.write_all(&bytes[nl + 3..]).unwrap();
    assert_value(&read_msg(&mut s, &mut buf), 42, "split-value");

    // Split right after the header's newline.
    let bytes = to_bytes(&put(43, "split-key", "second"));
    s.write_all(&bytes[..nl + 1]).unwrap();
    thread::sleep(Duration::from_millis(300));
    s.write_all(&bytes[nl + 1..]).unwrap();
    assert_ok_reply(&read_msg(&mut s, &mut buf), 43);
    assert!(buf.is_empty());

    let mut cl = client(&c);
    assert_eq!(cl.get(b"split-key"), Ok((b"second".to_vec(), 1)));
}

#[test]
fn pipelined_requests_get_replies_in_order() {
    let c = Cluster::start(22030, 1, 1);
    let mut s = connect(&c.node_addr(1));
    let mut buf = Vec::new();

    let mut bytes = to_bytes(&put(11, "pipe-key", "pipe-value"));
    bytes.extend(to_bytes(&get(12, "pipe-key")));
    s.write_all(&bytes).unwrap();
    assert_ok_reply(&read_msg(&mut s, &mut buf), 11);
    assert_value(&read_msg(&mut s, &mut buf), 12, "pipe-value");

    // A longer pipeline: five puts, five gets, one write.
    let mut bytes = Vec::new();
    for i in 0..5u64 {
        bytes.extend(to_bytes(&put(100 + i, &format!("p{i}"), &format!("v{i}"))));
    }
    for i in 0..5u64 {
        bytes.extend(to_bytes(&get(200 + i, &format!("p{i}"))));
    }
    s.write_all(&bytes).unwrap();
    for i in 0..5u64 {
        assert_ok_reply(&read_msg(&mut s, &mut buf), 100 + i);
    }
    for i in 0..5u64 {
        assert_value(&read_msg(&mut s, &mut buf), 200 + i, &format!("v{i}"));
    }
}

#[test]
fn unknown_verb_gets_error_and_connection_stays_usable() {
    let c = Cluster::start(22040, 1, 1);
    let mut s = connect(&c.node_addr(1));
    let mut buf = Vec::new();

    s.write_all(b"FROB 0 0 0 7\n").unwrap();
    let m = read_msg(&mut s, &mut buf);
    assert_eq!(m.header.req, 7, "the ERROR answers request 7: {m:?}");
    assert!(
        matches!(&m.body, Body::Error { code: ErrorCode::BadRequest, reason } if !reason.is_empty()),
        "expected an ERROR reply to FROB, got {m:?}"
    );

    // The same connection still works.
    s.write_all(&to_bytes(&put(8, "after-frob", "ok"))).unwrap();
    assert_ok_reply(&read_msg(&mut s, &mut buf), 8);
    s.write_all(&to_bytes(&get(9, "after-frob"))).unwrap();
    assert_value(&read_msg(&mut s, &mut buf), 9, "ok");

    // An unknown verb with a payload is skipped whole, too.
    let mut bytes = b"FROB 0 0 4 10\nabcd".to_vec();
    bytes.extend(to_bytes(&get(11, "after-frob")));
    s.write_all(&bytes).unwrap();
    let m = read_msg(&mut s, &mut buf);
    assert_eq!(m.header.req, 10);
    assert!(matches!(m.body, Body::Error { code: ErrorCode::BadRequest, .. }), "{m:?}");
    assert_value(&read_msg(&mut s, &mut buf), 11, "ok");
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Issue #10 item 1: a request whose deadline has passed (its client gave up, as when the node was
/// stopped while the request waited in its socket) is not started: EXPIRED, and nothing changes.
#[test]
fn a_request_past_its_deadline_is_expired_and_changes_nothing() {
    let c = Cluster::start(22050, 1, 1);
    let mut s = connect(&c.node_addr(1));
    let mut buf = Vec::new();
    s.write_all(&to_bytes(&put(1, "dl-key", "before"))).unwrap();
    assert_ok_reply(&read_msg(&mut s, &mut buf), 1);

    for (req, deadline) in [(2, wall_ms() - 1_000), (3, wall_ms() + 50)] {
        let mut late = put(req, "dl-key", "given-up");
        late.header.deadline = deadline;
        s.write_all(&to_bytes(&late)).unwrap();
        let m = read_msg(&mut s, &mut buf);
        assert_eq!(m.header.req, req);
        assert!(matches!(m.body, Body::Error { code: ErrorCode::Expired, .. }), "deadline {deadline}: {m:?}");
    }
    // A deadline far enough ahead is served.
    let mut timely = put(4, "dl-key", "timely");
    timely.header.deadline = wall_ms() + 5_000;
    s.write_all(&to_bytes(&timely)).unwrap();
    assert_ok_reply(&read_msg(&mut s, &mut buf), 4);
    let out = c.cli(&["--get", "dl-key"]);
    assert_ok(&out);
    assert!(stdout(&out).starts_with("dl-key, timely, "), "{}", stdout(&out));
}

/// Issue #10 item 4: a replica write versioned ten years ahead is refused with FUTURE; before,
/// it won over every later write for good.
#[test]
fn a_replica_write_from_the_future_is_refused() {
    use gtstore::hlc::Version;
    use gtstore::net::codec::Entry;
    let c = Cluster::start(22060, 1, 1);
    assert_ok(&c.cli(&["--put", "fut-key", "--val", "now"]));
    let mut s = c.connect_as_daemon(&c.node_addr(1));
    let mut buf = Vec::new();
    let ten_years = 10 * 365 * 24 * 3600 * 1000;
    let entry = Entry {
        key: b"fut-key".to_vec(),
        version: Version { ms: wall_ms() + ten_years, counter: 0, node: 9 },
        value: Some(b"from-the-future".to_vec()),
        expires: 0,
    };
    for (req, repair) in [(1, false), (2, true)] {
        let forged = Message {
            header: Header { node: 9, req, ..Header::default() },
            body: Body::Store { entry: entry.clone(), hint_for: 0, repair },
        };
        s.write_all(&to_bytes(&forged)).unwrap();
        let m = read_msg(&mut s, &mut buf);
        assert!(matches!(m.body, Body::Error { code: ErrorCode::Future, .. }), "repair {repair}: {m:?}");
    }
    let out = c.cli(&["--get", "fut-key"]);
    assert_ok(&out);
    assert!(stdout(&out).starts_with("fut-key, now, "), "{}", stdout(&out));
    assert_ok(&c.cli(&["--put", "fut-key", "--val", "later"]));
    let out = c.cli(&["--get", "fut-key"]);
    assert!(stdout(&out).starts_with("fut-key, later, "), "a later write wins: {}", stdout(&out));
}
