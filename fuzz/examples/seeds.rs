//! Writes the seed corpora, `fuzz/corpus/<target>/<name>`: a few small,
//! real inputs per target, made with the crate's own encoders.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (from the
//! repository root). Rerun it when a format changes; the files are committed.

use std::fs;
use std::path::Path;

use gtstore::hlc::Version;
use gtstore::manager::encode_state;
use gtstore::net::codec::{self, Body, Entry, ErrorCode, Expiry, Figures, Header, Message, Stats};
use gtstore::store::record;
use gtstore::table::Table;

const V: Version = Version { ms: 1_700_000_000_000, counter: 2, node: 3 };

fn table(q: u32, members: u32) -> Table {
    let mut t = Table::new(q, 3, 2, 2);
    for id in 1..=members {
        t.assign_join(id, &format!("127.0.0.1:{}", 7000 + id));
    }
    t
}

fn msg(body: Body) -> Vec<u8> {
    codec::to_bytes(&Message { header: Header { client: 7, node: 3, req: 42, deadline: 0 }, body })
}

fn rec(key: &[u8], value: Option<&[u8]>, ms: u64) -> Vec<u8> {
    rec_expiring(key, value, 0, ms)
}

fn rec_expiring(key: &[u8], value: Option<&[u8]>, expires: u64, ms: u64) -> Vec<u8> {
    let mut out = Vec::new();
    record::encode_parts(key, value, expires, Version { ms, ..V }, &mut out);
    out
}

/// A WAL frame: `sector | !sector | record`.
fn frame(sector: u32, key: &[u8], value: Option<&[u8]>, ms: u64) -> Vec<u8> {
    let mut out = sector.to_be_bytes().to_vec();
    out.extend_from_slice(&(!sector).to_be_bytes());
    out.extend(rec(key, value, ms));
    out
}

/// A hints input: `len u16 | segment 1 | len u16 | segment 2 | WAL`.
fn hints(seg1: &[u8], seg2: &[u8], wal: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for seg in [seg1, seg2] {
        out.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        out.extend_from_slice(seg);
    }
    out.extend_from_slice(wal);
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let entry = Entry { key: b"k\xff\x00".to_vec(), version: V, value: Some(b"v\n".to_vec()), expires: 0 };
    let expiring = Entry { key: b"soon".to_vec(), version: V, value: Some(b"v".to_vec()), expires: 1_800_000_000_000 };
    let tomb = Entry { key: b"gone".to_vec(), version: V, value: None, expires: 0 };
    let t = table(8, 2);
    let mut moving = t.clone();
    moving.assign_join(3, "127.0.0.1:7003");

    write("codec", "put", &msg(Body::Put { key: b"key1".to_vec(), value: b"value1".to_vec(), expiry: Expiry::Never }));
    let put_ttl = Body::Put { key: b"key1".to_vec(), value: b"value1".to_vec(), expiry: Expiry::After(1_000) };
    write("codec", "put_ttl", &msg(put_ttl));
    write("codec", "get", &msg(Body::Get { key: b"key1".to_vec() }));
    let deadline =
        Message { header: Header { client: 1, node: 0, req: 5, deadline: 1_796_083_200_300 }, body: Body::Ok };
    write("codec", "ok_deadline", &codec::to_bytes(&deadline));
    write("codec", "value", &msg(Body::Value { value: vec![0, 1, 2], version: V, expires: 1_800_000_000_000 }));
    write("codec", "not_found", &msg(Body::NotFound { version: Some(V) }));
    write("codec", "error", &msg(Body::error(ErrorCode::Retry, "no quorum")));
    write("codec", "table", &msg(Body::TableMsg { table: t.clone(), pending: Some(moving.clone()), contact: 2 }));
    write("codec", "store", &msg(Body::Store { entry: entry.clone(), hint_for: 5, repair: true }));
    write(
        "codec",
        "chunk",
        &msg(Body::Chunk { sector: 17, entries: vec![entry.clone(), expiring, tomb.clone()], last: true }),
    );
    write("codec", "reap", &msg(Body::Reap { epoch: 3, sector: 9, entries: vec![tomb] }));
    write("codec", "register", &msg(Body::Register { id: 4, addr: "127.0.0.1:7004".into() }));
    let figures = Figures {
        held: 3,
        tombstones: 1,
        requests: [5, 4, 1, 0, 2],
        latency: [[5, 900, 2400]; 3],
        ..Figures::default()
    };
    let stats = Stats { sectors: 3, keys: 99, missing: 0, figures: Some(Box::new(figures)) };
    write("codec", "stats_reply", &msg(Body::StatsReply(stats)));
    let mut two = msg(Body::Heartbeat { epoch: 9 });
    two.extend(msg(Body::Pull { sector: 17, digest: u64::MAX }));
    write("codec", "two_messages", &two);

    write("record", "put", &rec(b"key", Some(b"some value"), 5));
    write("record", "tombstone", &rec(b"gone", None, 7));
    write("record", "empty", &rec(b"", Some(b""), 0));
    write("record", "expiring", &rec_expiring(b"key", Some(b"v"), 1_800_000_000_000, 5));
    let mut seq = rec(b"a", Some(b"1"), 1);
    seq.extend(rec(b"b", None, 2));
    seq.extend(rec(b"a", Some(b"22"), 3));
    write("record", "sequence", &seq);

    let mut wal = frame(3, b"a", Some(b"1"), 1);
    wal.extend(frame(700, b"b", None, 2));
    wal.extend(frame(3, b"c", Some(b"33"), 3));
    write("wal", "three_frames", &wal);
    write("wal", "one_frame", &frame(0, b"key", Some(b"value"), 9));
    let mut torn = frame(1, b"a", Some(b"1"), 1);
    torn.extend(&frame(2, b"b", Some(b"2"), 2)[..20]);
    write("wal", "torn_tail", &torn);

    let mut old = rec(b"a", Some(b"1"), 1);
    old.extend(rec(b"b", Some(b"2"), 2));
    let mut new = rec(b"a", Some(b"11"), 3);
    new.extend(rec(b"b", None, 4));
    write("hints", "one_segment", &hints(&old, &[], &[]));
    write("hints", "two_segments", &hints(&old, &new, &[]));
    write("hints", "segment_and_wal", &hints(&old, &[], &frame(7, b"c", Some(b"3"), 5)));
    let mut torn = new.clone();
    torn.extend(&rec(b"d", Some(b"4"), 6)[..10]);
    write("hints", "torn_segment", &hints(&old, &torn, &frame(9, b"e", None, 7)));

    write("manager_state", "new_cluster", &encode_state(&Table::new(16, 1, 1, 1), None, 1));
    write("manager_state", "three_nodes", &encode_state(&table(16, 3), None, 1025));
    write("manager_state", "moving", &encode_state(&t, Some(&moving), 2049));
}
