//! The hint store: a `Store` (under `<data>/hints`, one sector per target
//! node) opened on a simulated disk whose files hold the input, so the
//! segment replay, tail cutting and WAL replay all run on fuzzed bytes.
//!
//! Input: `len u16 | segment 1 | len u16 | segment 2 | WAL`, each length
//! big-endian and clamped to what is left; a missing or empty segment is
//! not written. Never panics; an I/O error never comes out of damaged
//! bytes; a store that opens holds the same contents when opened again.
#![no_main]

use std::path::Path;

use gtstore::store::disk::{Disk, OpenMode, SimDisk};
use gtstore::store::{Error, FsyncPolicy, Item, Store};
use libfuzzer_sys::fuzz_target;

/// The hinted node whose sector the segments belong to.
const TARGET: u32 = 7;

/// Splits a `len u16 | bytes` part off the front of `data`.
fn part(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return (&[], &[]) };
    rest.split_at((u16::from_be_bytes(*len) as usize).min(rest.len()))
}

fn write(disk: &SimDisk, path: &Path, bytes: &[u8]) {
    disk.create_dir_all(path.parent().unwrap()).unwrap();
    disk.open(path, OpenMode::Create).unwrap().write_at(bytes, 0).unwrap();
}

type Contents = Vec<(u32, Vec<(Vec<u8>, Item)>)>;

fn contents(store: &Store) -> Contents {
    store.sector_ids().into_iter().map(|id| (id, store.scan(id).unwrap())).collect()
}

fuzz_target!(|data: &[u8]| {
    let (seg1, rest) = part(data);
    let (seg2, wal) = part(rest);
    let disk = SimDisk::new();
    let dir = Path::new("/node1/hints");
    let sector = dir.join("sectors").join(TARGET.to_string());
    for (gen, seg) in [(1, seg1), (2, seg2)] {
        if !seg.is_empty() {
            write(&disk, &sector.join(format!("{gen:010}.log")), seg);
        }
    }
    write(&disk, &dir.join("wal-0.log"), wal);
    let store = match Store::open_on(std::rc::Rc::new(disk.clone()), dir, FsyncPolicy::Batch) {
        Ok(store) => store,
        Err(Error::Io(e)) => panic!("I/O error from damaged bytes: {e}"),
        Err(_) => return,
    };
    let first = contents(&store);
    drop(store);
    let store =
        Store::open_on(std::rc::Rc::new(disk), dir, FsyncPolicy::Batch).expect("a store that opened opens again");
    assert_eq!(contents(&store), first);
});
