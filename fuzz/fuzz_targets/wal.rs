//! The write-ahead log's frame decoder (`store::wal`), through `Wal::open`
//! on a simulated disk whose WAL file holds the input.
//!
//! Never panics. Either the open succeeds, having cut the file to its
//! whole frames, which re-encode to exactly the bytes kept and come back
//! the same on a second open; or it refuses with `CorruptWal` at an
//! offset inside the file and leaves the file as it was.
#![no_main]

use std::path::Path;

use gtstore::store::disk::{Disk, OpenMode, SimDisk};
use gtstore::store::wal::{Wal, WAL_FILES};
use gtstore::store::Error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let disk = SimDisk::new();
    let dir = Path::new("/wal");
    let path = dir.join(WAL_FILES[0]);
    disk.create_dir_all(dir).unwrap();
    disk.open(&path, OpenMode::Create).unwrap().write_at(data, 0).unwrap();
    match Wal::open(&disk, dir, WAL_FILES[0]) {
        Ok((wal, frames)) => {
            let kept = disk.contents(&path).unwrap();
            assert_eq!(kept.len() as u64, wal.len());
            assert_eq!(kept, data[..kept.len()]);
            drop(wal);
            // The frames re-encode to exactly the bytes kept.
            let (mut copy, none) = Wal::open(&disk, dir, WAL_FILES[1]).unwrap();
            assert!(none.is_empty());
            for (sector, rec) in &frames {
                copy.append(*sector, &rec.key, rec.value.as_deref(), rec.expires, rec.version);
            }
            copy.commit().unwrap();
            assert_eq!(disk.contents(&dir.join(WAL_FILES[1])).unwrap(), kept);
            // A second open finds the same frames and cuts nothing.
            let (again, frames_again) = Wal::open(&disk, dir, WAL_FILES[0]).unwrap();
            assert_eq!(frames_again, frames);
            assert_eq!(again.len(), kept.len() as u64);
        }
        Err(Error::CorruptWal { offset, .. }) => {
            assert!(offset < data.len() as u64);
            assert_eq!(disk.contents(&path).unwrap(), data, "a refused WAL is left as it was");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
});
