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
//! carries its own CRC (see [`super::record`]). Two kinds of frame are not
//! writes ([`Frame`]): each reset starts the file with a *sequence frame*
//! (sector `u32::MAX`), so that a replay takes the two files oldest first;
//! and dropping a sector appends a *drop frame* (an empty key, version
//! zero, no value: no write has version zero), so that a replay after a
//! crash drops the sector again instead of bringing its records back. A torn or corrupt tail (a
//! bad frame with no good frame after it) is cut at the last whole frame
//! and reported; a bad frame with good frames after it cannot be a torn
//! tail, so the log is not cut there and opening fails with
//! `Error::CorruptWal` naming the file and offset.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::hlc::Version;

use super::disk::{Disk, DiskFile, OpenMode, SeqReader};
use super::record::{self, Decoded, Record};
use super::{Error, Result};

/// The two WAL files inside the store directory: one takes writes while
/// the other, full, is retired by syncing its sectors a few at a time.
pub const WAL_FILES: [&str; 2] = ["wal-0.log", "wal-1.log"];

/// The sector id of a sequence frame (sectors are numbered below 65,536).
pub const SEQ_SECTOR: u32 = u32::MAX;

/// Bytes of a sequence frame: what a WAL holds right after a reset.
pub fn seq_frame_len() -> u64 {
    (8 + record::encoded_len(0, None, 0)) as u64
}

/// What a frame means to a replay.
#[derive(Debug)]
pub enum Frame {
    /// The file's sequence number since its last reset: the higher was reset later.
    Seq(u64),
    /// The sector was dropped: its earlier records are not to be replayed.
    Drop(u32),
    /// A write to a sector.
    Write(u32, Record),
}

impl Frame {
    /// The meaning of a frame read back.
    pub fn of(sector: u32, rec: Record) -> Frame {
        if let Some(seq) = seq_in(sector, &rec) {
            return Frame::Seq(seq);
        }
        if rec.key.is_empty() && rec.value.is_none() && rec.version == Version::default() {
            return Frame::Drop(sector);
        }
        Frame::Write(sector, rec)
    }
}

/// The sequence number a frame carries, if it is a sequence frame.
fn seq_in(sector: u32, rec: &Record) -> Option<u64> {
    let v = rec.version;
    let marker = sector == SEQ_SECTOR && rec.key.is_empty() && rec.value.is_none();
    (marker && v.counter == 0 && v.node == 0).then_some(v.ms)
}

/// The sequence number of a WAL's frames (0 if it starts with none: empty,
/// or written by a build before sequence frames).
pub fn seq_of(frames: &[(u32, Record)]) -> u64 {
    frames.first().and_then(|(sector, rec)| seq_in(*sector, rec)).unwrap_or(0)
}

/// Appends one frame: the sector twice (plain, then inverted) and the record.
fn push_frame(out: &mut Vec<u8>, sector: u32, key: &[u8], value: Option<&[u8]>, expires: u64, version: Version) {
    out.extend_from_slice(&sector.to_be_bytes());
    out.extend_from_slice(&(!sector).to_be_bytes());
    record::encode_parts(key, value, expires, version, out);
}

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
    /// Bytes of the sequence frame the file starts with (0 if none).
    base: u64,
}

impl Wal {
    /// Opens (or creates) `<dir>/<name>` and returns it with the records
    /// it holds, in order, for replay. A torn or corrupt tail is cut; damage
    /// with good frames after it is `Error::CorruptWal`, the file untouched.
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
            // A crash tears only the last batch, and nothing is written
            // after a torn frame; a good frame after the damage means the
            // damage hit frames that were synced and acknowledged.
            let mut rest = vec![
                0u8;
                usize::try_from(on_disk - good)
                    .map_err(|_| Error::CorruptWal { path: path.clone(), offset: good })?
            ];
            let n = file.read_at(&mut rest, good)?;
            rest.truncate(n);
            if let Some(at) = good_frame_after_start(&rest) {
                ::log::error!("{}: damaged frame at offset {good}, good frame at {}", path.display(), good + at as u64);
                return Err(Error::CorruptWal { path, offset: good });
            }
            ::log::warn!("{}: cut {} bytes of torn or corrupt tail at offset {good}", path.display(), on_disk - good);
            file.set_len(good)?;
            file.sync_data()?;
        }
        let base = if seq_of(&frames) > 0 { seq_frame_len() } else { 0 };
        Ok((Wal { file, path, buf: Vec::new(), unsynced: false, len: good, created, base: base.min(good) }, frames))
    }

    /// Appends one write to the buffer (nothing reaches the disk yet).
    pub fn append(&mut self, sector: u32, key: &[u8], value: Option<&[u8]>, expires: u64, version: Version) {
        push_frame(&mut self.buf, sector, key, value, expires, version);
    }

    /// Appends a drop frame for `sector` (see [`Frame::Drop`]).
    pub fn append_drop(&mut self, sector: u32) {
        self.append(sector, b"", None, 0, Version::default());
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
        self.len == self.base
    }

    /// Empties the log once its records are safe in their sectors, and
    /// starts it again with the sequence frame `seq` (higher than any
    /// before: see [`Frame::Seq`]).
    pub fn reset(&mut self, seq: u64) -> Result<()> {
        self.commit()?;
        let mut frame = Vec::new();
        push_frame(&mut frame, SEQ_SECTOR, b"", None, 0, Version { ms: seq, counter: 0, node: 0 });
        self.file.set_len(0)?;
        self.file.write_at(&frame, 0)?;
        self.file.sync_data()?;
        self.len = frame.len() as u64;
        self.base = self.len;
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

/// The first offset after the start of `bytes` where a whole, good frame
/// begins (its sector id checks and its record's CRC matches), if any.
fn good_frame_after_start(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len()).find(|&at| {
        let Some(head) = bytes.get(at..at.saturating_add(8)) else { return false };
        let sector = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let check = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        check == !sector && matches!(record::decode(bytes.get(at + 8..).unwrap_or_default()), Decoded::Record { .. })
    })
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
        wal.append(3, b"a", Some(b"1"), 0, v(1));
        wal.append(700, b"b", None, 0, v(2));
        assert!(wal.commit()?);
        assert!(!wal.commit()?);
        let full = wal.len();
        wal.append(4, b"c", Some(b"33"), 1_000, v(3));
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
        assert_eq!(frames[2].1.expires, 1_000, "the expiry comes back with the frame");
        wal.reset(7)?;
        assert!(wal.is_empty());
        let (_, frames) = Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?;
        assert_eq!(frames.len(), 1, "only the sequence frame");
        assert_eq!(seq_of(&frames), 7);
        Ok(())
    }

    /// Writes frames for keys `a`, `b`, `c` (one commit each); returns the
    /// file's bytes and where each frame starts.
    fn three_frames(dir: &Path) -> Result<(Vec<u8>, [u64; 3])> {
        let (mut wal, _) = Wal::open(&OsDisk, dir, WAL_FILES[0])?;
        let mut starts = [0u64; 3];
        for (i, key) in [b"a", b"b", b"c"].iter().enumerate() {
            starts[i] = wal.len();
            wal.append(i as u32 + 1, *key, Some(b"value"), 0, v(i as u64 + 1));
            wal.commit()?;
        }
        drop(wal);
        Ok((std::fs::read(dir.join(WAL_FILES[0]))?, starts))
    }

    #[test]
    fn damage_before_good_frames_refuses_to_open() -> Result<()> {
        // Issue #10 item 7: a bad frame in the middle cut off every later,
        // acknowledged frame. Damage to the sector id, the lengths, the
        // version or the value of the first or second frame: open refuses,
        // naming the file and the offset, and leaves the file as it was.
        let dir = TestDir::new("wal-middle");
        let (bytes, starts) = three_frames(dir.path())?;
        let path = dir.path().join(WAL_FILES[0]);
        for (frame, start) in starts.iter().take(2).enumerate() {
            let end = starts[frame + 1];
            for at in [*start, start + 3, start + 8, start + 13, start + 20, end - 1] {
                let mut bad = bytes.clone();
                bad[at as usize] ^= 0x10;
                std::fs::write(&path, &bad)?;
                match Wal::open(&OsDisk, dir.path(), WAL_FILES[0]) {
                    Err(Error::CorruptWal { path: p, offset }) => {
                        assert_eq!((p.as_path(), offset), (path.as_path(), *start), "flip at {at}");
                    }
                    other => panic!("flip at {at}: expected CorruptWal, got {:?}", other.map(|(_, f)| f.len())),
                }
                assert_eq!(std::fs::read(&path)?, bad, "nothing is cut");
            }
        }
        Ok(())
    }

    #[test]
    fn damage_in_the_last_frame_is_cut() -> Result<()> {
        let dir = TestDir::new("wal-last");
        let (bytes, starts) = three_frames(dir.path())?;
        let path = dir.path().join(WAL_FILES[0]);
        for at in [starts[2], starts[2] + 9, bytes.len() as u64 - 1] {
            let mut bad = bytes.clone();
            bad[at as usize] ^= 0x01;
            std::fs::write(&path, &bad)?;
            let (wal, frames) = Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?;
            assert_eq!(frames.len(), 2, "flip at {at}");
            assert_eq!(wal.len(), starts[2]);
            assert_eq!(std::fs::metadata(&path)?.len(), starts[2]);
        }
        // Zeros after the last frame (a file extended, its data not yet
        // written) are a torn tail too.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0u8; 700]);
        std::fs::write(&path, &zeros)?;
        let (wal, frames) = Wal::open(&OsDisk, dir.path(), WAL_FILES[0])?;
        assert_eq!((frames.len(), wal.len()), (3, bytes.len() as u64));
        Ok(())
    }
}
