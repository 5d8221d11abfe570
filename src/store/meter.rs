//! What a store writes and how long its WAL syncs take, for the node's
//! metrics: a [`Disk`] that passes every call through to another and
//! counts on the way ([`Metered`]), and the figures it keeps
//! ([`StoreMeter`]), which the [`Store`](super::Store) shares with it.
//!
//! The write-ahead log's files are told from segment files by name
//! ([`wal::WAL_FILES`]) when they are opened; every other file the store
//! writes is a sector's. Counting costs an addition per write and two
//! clock reads per WAL fsync; nothing is allocated.

use std::cell::{Cell, RefCell};
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use super::disk::{DirEntry, Disk, DiskFile, OpenMode};
use super::wal;
use crate::metrics::Histogram;

/// A store's figures since it was opened.
#[derive(Debug)]
pub struct StoreMeter {
    /// Bytes written to the write-ahead log's files.
    pub wal_bytes: Cell<u64>,
    /// Bytes written to sector segments (appends and compaction).
    pub segment_bytes: Cell<u64>,
    /// How long each `fdatasync` of a WAL file took.
    pub wal_syncs: RefCell<Histogram>,
    /// Writes made durable by each group commit (one WAL sync).
    pub batches: RefCell<Histogram>,
}

impl Default for StoreMeter {
    fn default() -> StoreMeter {
        StoreMeter {
            wal_bytes: Cell::new(0),
            segment_bytes: Cell::new(0),
            wal_syncs: RefCell::new(Histogram::durations()),
            batches: RefCell::new(Histogram::counts()),
        }
    }
}

impl StoreMeter {
    /// A group commit made `writes` writes durable.
    pub fn committed(&self, writes: u64) {
        self.batches.borrow_mut().observe(writes);
    }
}

/// A disk that counts what goes through it into a [`StoreMeter`].
#[derive(Debug)]
pub struct Metered {
    inner: Rc<dyn Disk>,
    meter: Rc<StoreMeter>,
}

impl Metered {
    /// `inner`, counted into `meter`.
    pub fn new(inner: Rc<dyn Disk>, meter: Rc<StoreMeter>) -> Metered {
        Metered { inner, meter }
    }
}

impl Disk for Metered {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>> {
        let file = self.inner.open(path, mode)?;
        if mode == OpenMode::Read {
            return Ok(file);
        }
        let is_wal = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| wal::WAL_FILES.contains(&n));
        Ok(Box::new(MeteredFile { inner: file, meter: self.meter.clone(), is_wal }))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.inner.read_dir(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
}

/// A file opened for writing through [`Metered`].
#[derive(Debug)]
struct MeteredFile {
    inner: Box<dyn DiskFile>,
    meter: Rc<StoreMeter>,
    /// One of the write-ahead log's files.
    is_wal: bool,
}

impl DiskFile for MeteredFile {
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let written = self.inner.write_at(buf, pos);
        // A failed write may have written part of `buf`; it is counted
        // only when whole.
        if written.is_ok() {
            let c = if self.is_wal { &self.meter.wal_bytes } else { &self.meter.segment_bytes };
            c.set(c.get().saturating_add(buf.len() as u64));
        }
        written
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        if !self.is_wal {
            return self.inner.sync_data();
        }
        let started = Instant::now();
        let synced = self.inner.sync_data();
        self.meter.wal_syncs.borrow_mut().observe_duration(started.elapsed());
        synced
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}
