//! The write-ahead log: group commit for every sector with one fsync.
//!
//! Each write goes to its sector's log (page cache only) and is also
//! appended to an in-memory WAL buffer. Once per loop turn
//! [`Wal::commit`] writes the buffer to the WAL file with one `pwrite` at
//! its end and one `fdatasync`, so a turn's acknowledgements cost one fsync however many
//! sectors they touch. At a checkpoint the store fsyncs the sectors written
//! since the last one and empties the WAL (two files alternate, so
//! retiring a full one never stalls the loop; see `Store`). After a crash the sector logs
//! are replayed first, then the WAL's records are applied again
//! (last-writer-wins makes that idempotent).
//!
//! A frame is `sector u32 | !sector u32 | record` (big-endian); the record
//! carries its own CRC (see [`super::record`]). A torn or corrupt tail is
//! cut at the last whole frame.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::hlc::Version;

use super::disk::{Disk, DiskFile, OpenMode, SeqReader};
use super::record::{self, Decoded, Record};
use super::Result;

/// The two WAL files inside the store directory: one takes writes while
/// the other, full, is retired by syncing its sectors a few at a time.
pub const WAL_FILES: [&str; 2] = ["wal-0.log", "wal-1.log"];

/// The end of a WAL at one moment (see [`Wal::mark`]).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    /// Bytes in the file.
    len: u64,
    /// Bytes buffered.
    buffered: usize,
}

/// The write-ahead log of one store.
#[derive(Debug)]
pub struct Wal {
    file: Box<dyn DiskFile>,
    path: PathBuf,
    /// Frames appended since the last commit.
    buf: Vec<u8>,
    /// Frames written to the file and not synced yet.
    unsynced: bool,
    /// Bytes on disk.
    len: u64,
    /// The file was created by this open: its directory entry is not
    /// durable until the directory is synced.
    created: bool,
}

impl Wal {
    /// Opens (or creates) `<dir>/<name>` and returns it with the records
    /// it holds, in order, for replay. A torn or corrupt tail is cut.
    pub fn open(disk: &dyn Disk, dir: &Path, name: &str) -> Result<(Wal, Vec<(u32, Record)>)> {
        let path = dir.join(name);
        let (file, created) = match disk.open(&path, OpenMode::Write) {
            Ok(file) => (file, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (disk.open(&path, OpenMode::Create)?, true),
            Err(e) => return Err(e.into()),
        };
        let mut r = BufReader::new(SeqReader::new(file));
        let (frames, good) = read_frames(&mut r)?;
        let file = r.into_inner().into_inner();
        let on_disk = file.len()?;
        if good < on_disk {
            ::log::warn!("{}: cut {} bytes of torn or corrupt tail at offset {good}", path.display(), on_disk - good);
            file.set_len(good)?;
            file.sync_data()?;
        }
        Ok((Wal { file, path, buf: Vec::new(), unsynced: false, len: good, created }, frames))
    }

    /// Appends one write to the buffer (nothing reaches the disk yet).
    pub fn append(&mut self, sector: u32, key: &[u8], value: Option<&[u8]>, version: Version) {
        self.buf.extend_from_slice(&sector.to_be_bytes());
        self.buf.extend_from_slice(&(!sector).to_be_bytes());
        record::encode_parts(key, value, version, &mut self.buf);
    }

    /// Appends one write already encoded as a record (see [`super::record`]).
    pub fn append_encoded(&mut self, sector: u32, record: &[u8]) {
        self.buf.extend_from_slice(&sector.to_be_bytes());
        self.buf.extend_from_slice(&(!sector).to_be_bytes());
        self.buf.extend_from_slice(record);
    }

    /// Where the log ends now, to [`Wal::discard`] what is appended after.
    pub fn mark(&self) -> Mark {
        Mark { len: self.len, buffered: self.buf.len() }
    }

    /// Takes back every frame appended after `mark` whose commit failed:
    /// from the buffer, or, if the failed commit had written them, from
    /// the file (the cut is synced by the next commit).
    pub fn discard(&mut self, mark: Mark) -> Result<()> {
        if self.len == mark.len {
            self.buf.truncate(mark.buffered);
            return Ok(());
        }
        // The frames buffered before the mark went out with the failed
        // write; they stay, waiting for a sync.
        let keep = mark.len.saturating_add(mark.buffered as u64);
        self.buf.clear();
        self.file.set_len(keep)?;
        self.len = keep;
        self.unsynced = true;
        Ok(())
    }

    /// Writes the buffered frames and syncs them; false if there were none.
    pub fn commit(&mut self) -> Result<bool> {
        self.write_out()?;
        if !self.unsynced {
            return Ok(false);
        }
        self.file.sync_data()?;
        self.unsynced = false;
        Ok(true)
    }

    /// Writes the buffered frames to the file without syncing them: they
    /// then survive a crash of the process, not yet one of the machine.
    pub fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // Frames are appended at `len`, which is always the file's end.
        if let Err(e) = self.file.write_at(&self.buf, self.len) {
            // Cut a partial write so the file still ends at a frame boundary.
            let _ = self.file.set_len(self.len);
            return Err(e.into());
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
        Ok(())
    }

    /// Bytes committed to disk since the last reset.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing is committed since the last reset.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the log once its records are safe in their sectors.
    pub fn reset(&mut self) -> Result<()> {
        self.commit()?;
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
        Ok(())
    }

    /// Whether this open created the file (its directory must be synced
    /// before a commit to it is durable).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads whole frames from the start; returns them and the offset after
/// the last good one.
fn read_frames(r: &mut impl Read) -> Result<(Vec<(u32, Record)>, u64)> {
    let mut frames = Vec::new();
    let mut good = 0u64;
    loop {
        let mut head = [0u8; 8];
        match read_full(r, &mut head)? {
            0 => break,
            n if n < head.len() => break,
            _ => {}
        }
        let sector = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let check = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if check != !sector {
            break;
        }
        match record::read_record(r)? {
            Decoded::Record { record, len } => {
                frames.push((sector, record));
                good += 8 + u64::from(len);
            }
            Decoded::End | Decoded::Torn | Decoded::Corrupt(_) => break,
        }
    }
    Ok((frames, good))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::disk::OsDisk;
    use super::super::test_dir::TestDir;
    use super::*;

    fn v(ms: u64) -> Version {
        Version { ms, counter: 0, node: 1 }
    }

    #[test]
    fn committed_frames_come_back_and_a_torn_tail_is_cut() -> Result<()> {
        let dir = TestDir::new("wal");
        let (mut wal, frames) = Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?;
        assert!(frames.is_empty());
        wal.append(3, b"a", Some(b"1"), v(1));
        wal.append(700, b"b", None, v(2));
        assert!(wal.commit()?);
        assert!(!wal.commit()?);
        let full = wal.len();
        wal.append(4, b"c", Some(b"33"), v(3));
        wal.commit()?;
        drop(wal);
        // Cut the last frame at every offset: the first two always survive.
        let path = dir.path().join(WAL_FILES[0]);
        let bytes = std::fs::read(&path)?;
        for cut in full as usize..bytes.len() {
            std::fs::write(&path, &bytes[..cut])?;
            let (wal, frames) = Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?;
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[1].0, 700);
            assert_eq!(frames[1].1.value, None);
            assert_eq!(wal.len(), full);
        }
        std::fs::write(&path, &bytes)?;
        let (mut wal, frames) = Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?;
        assert_eq!(frames.len(), 3);
        wal.reset()?;
        assert!(wal.is_empty());
        assert!(Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?.1.is_empty());
        Ok(())
    }

    #[test]
    fn a_damaged_sector_id_ends_the_log() -> Result<()> {
        let dir = TestDir::new("wal-bad");
        let (mut wal, _) = Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?;
        wal.append(1, b"a", Some(b"1"), v(1));
        wal.append(2, b"b", Some(b"2"), v(2));
        wal.commit()?;
        drop(wal);
        let path = dir.path().join(WAL_FILES[0]);
        let mut bytes = std::fs::read(&path)?;
        let second = bytes.len() / 2;
        bytes[second] ^= 0xff;
        std::fs::write(&path, &bytes)?;
        let (_, frames) = Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?;
        assert!(frames.len() <= 1);
        Ok(())
    }
}
