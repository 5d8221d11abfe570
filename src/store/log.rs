//! Segments: the append-only files that hold a sector's records.
//!
//! A segment is `<sector_dir>/<gen:010>.log`; a larger generation is newer.
//! [`SegmentWriter`] appends records and tracks its own end position, so a
//! record's [`Loc`] is known without a `seek`; `sync` is `sync_data`.
//! [`SegmentIter`] reads a segment front to back for replay, and
//! [`read_at`] fetches one record by its `Loc` with a positioned read,
//! checking its CRC again. Every file access goes through the store's
//! [`Disk`].

use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::disk::{Disk, DiskFile, OpenMode, SeqReader};
use super::record::{self, Decoded, Record, HEADER_LEN, MAX_RECORD};
use super::{Error, Result};
use crate::hlc::Version;

/// The file name extension of segment files.
pub const SEGMENT_EXT: &str = "log";

/// Where one record lives: segment generation, byte offset and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    /// The generation of the segment file.
    pub gen: u64,
    /// Byte offset of the record in that file.
    pub pos: u64,
    /// Encoded length of the record in bytes.
    pub len: u32,
}

impl Loc {
    /// The offset just past the record.
    pub fn end(&self) -> u64 {
        self.pos.saturating_add(u64::from(self.len))
    }
}

/// The path of segment `gen` in `dir`.
pub fn segment_path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("{gen:010}.{SEGMENT_EXT}"))
}

/// The generation named by a segment file name, if it is one.
pub fn parse_generation(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The generations of all segments in `dir`, oldest first.
pub fn list_generations(disk: &dyn Disk, dir: &Path) -> Result<Vec<u64>> {
    let mut gens = Vec::new();
    for entry in disk.read_dir(dir)? {
        if let Some(gen) = entry.name.to_str().and_then(parse_generation) {
            gens.push(gen);
        }
    }
    gens.sort_unstable();
    Ok(gens)
}

/// Appended bytes held in memory before one positioned write.
pub const WRITE_BUFFER: usize = 4 * 1024;

/// The append end of one segment; it also serves reads from its own file.
///
/// Appends collect in a buffer that reaches the file in one `pwrite` when it
/// fills or on [`SegmentWriter::sync`]; the write-ahead log makes them
/// durable meanwhile. Reads of buffered records are served from memory.
#[derive(Debug)]
pub struct SegmentWriter {
    sector: u32,
    gen: u64,
    file: Box<dyn DiskFile>,
    /// The logical end: file bytes plus buffered bytes.
    pos: u64,
    /// Bytes already written to the file.
    flushed: u64,
    buf: Vec<u8>,
    /// Where the last appended record starts in `buf`.
    last_start: usize,
}

impl SegmentWriter {
    /// Creates (or empties) segment `gen` in `dir`.
    pub fn create(disk: &dyn Disk, dir: &Path, sector: u32, gen: u64) -> Result<SegmentWriter> {
        let file = disk.open(&segment_path(dir, gen), OpenMode::Truncate)?;
        Ok(SegmentWriter { sector, gen, file, pos: 0, flushed: 0, buf: Vec::new(), last_start: 0 })
    }

    /// Opens existing segment `gen` to append at `pos`, its recovered end.
    pub fn open_at(disk: &dyn Disk, dir: &Path, sector: u32, gen: u64, pos: u64) -> Result<SegmentWriter> {
        let file = disk.open(&segment_path(dir, gen), OpenMode::Write)?;
        Ok(SegmentWriter { sector, gen, file, pos, flushed: pos, buf: Vec::new(), last_start: 0 })
    }

    /// The generation this writer appends to.
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// The offset the next record will be written at (the file's length).
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Appends `rec`, returning where it was written.
    pub fn append(&mut self, rec: &Record) -> Result<Loc> {
        self.append_parts(&rec.key, rec.value.as_deref(), rec.expires, rec.version)
    }

    /// Appends a record given by its parts (`value` `None` = tombstone;
    /// `expires` in wall ms, 0 = never).
    ///
    /// On an error nothing changed: no position was handed out, and the
    /// records buffered before stay buffered (and readable) for the next
    /// flush, so every location given out matches the file.
    pub fn append_parts(&mut self, key: &[u8], value: Option<&[u8]>, expires: u64, version: Version) -> Result<Loc> {
        let loc = self.next_loc(key, value, expires)?;
        // Write out what came before this record first: if that fails, the
        // new record was never added. The new one stays buffered for
        // `last_record`.
        if self.buf.len() >= WRITE_BUFFER {
            self.flushed_write()?;
        }
        self.last_start = self.buf.len();
        record::encode_parts(key, value, expires, version, &mut self.buf);
        debug_assert_eq!(self.buf.len() - self.last_start, loc.len as usize);
        self.pos = loc.end();
        Ok(loc)
    }

    /// Where a record with this key, value and expiry would be appended,
    /// without appending it; an error if it may not be stored.
    pub fn next_loc(&self, key: &[u8], value: Option<&[u8]>, expires: u64) -> Result<Loc> {
        record::check_lengths(key.len(), record::value_section_len(value, expires))?;
        let encoded = record::encoded_len(key.len(), value, expires);
        let len = u32::try_from(encoded).map_err(|_| too_large("record", encoded))?;
        if self.pos.checked_add(u64::from(len)).is_none() {
            return Err(too_large("segment", encoded));
        }
        Ok(Loc { gen: self.gen, pos: self.pos, len })
    }

    /// Takes back the record just appended at `loc` (it is still
    /// buffered); false, changing nothing, if `loc` is not the last record.
    pub fn unappend(&mut self, loc: Loc) -> bool {
        let Some(from) = loc.pos.checked_sub(self.flushed).and_then(|f| usize::try_from(f).ok()) else {
            return false;
        };
        if loc.gen != self.gen || loc.end() != self.pos || from.saturating_add(loc.len as usize) != self.buf.len() {
            return false;
        }
        self.buf.truncate(from);
        self.pos = loc.pos;
        self.last_start = self.buf.len();
        true
    }

    /// The encoded bytes of the record most recently appended, if it is
    /// still buffered (it always is right after `append_parts`, since the
    /// buffer is flushed before it fills past `WRITE_BUFFER`).
    pub fn last_record(&self) -> &[u8] {
        self.buf.get(self.last_start..).unwrap_or_default()
    }

    /// Writes the buffered records to the file (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        self.flushed_write()?;
        // One buffer per sector: give a large one back rather than keep it.
        self.buf = Vec::new();
        self.last_start = 0;
        Ok(())
    }

    /// Writes the whole buffer at the file's end and clears it.
    fn flushed_write(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_at(&self.buf, self.flushed) {
            // Drop a partial write so the file still ends at a record boundary.
            let _ = self.file.set_len(self.flushed);
            return Err(e.into());
        }
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Makes every appended record durable (`pwrite` of the buffer, then `sync_data`).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync_data()?;
        Ok(())
    }

    /// Reads the record at `loc`, which must be in this writer's segment.
    pub fn read(&self, loc: Loc) -> Result<Record> {
        if loc.pos < self.flushed {
            return read_at(self.file.as_ref(), self.sector, loc);
        }
        let corrupt = Error::Corrupt { sector: self.sector, gen: loc.gen, offset: loc.pos };
        let from = usize::try_from(loc.pos - self.flushed).map_err(|_| corrupt)?;
        let bytes = from.checked_add(loc.len as usize).and_then(|to| self.buf.get(from..to)).ok_or(Error::Corrupt {
            sector: self.sector,
            gen: loc.gen,
            offset: loc.pos,
        })?;
        match record::decode(bytes) {
            Decoded::Record { record, len } if len == loc.len => Ok(record),
            _ => Err(Error::Corrupt { sector: self.sector, gen: loc.gen, offset: loc.pos }),
        }
    }
}

impl SegmentWriter {
    /// The whole segment: the file's bytes, then the buffered ones.
    pub fn contents(&self) -> Result<Vec<u8>> {
        let on_disk = usize::try_from(self.flushed).map_err(|_| too_large("segment", usize::MAX))?;
        let mut all = vec![0u8; on_disk];
        if self.file.read_at(&mut all, 0)? < on_disk {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        all.extend_from_slice(&self.buf);
        Ok(all)
    }
}

impl Drop for SegmentWriter {
    /// A clean shutdown leaves every record in the file (best effort; after
    /// a crash the write-ahead log has them).
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn too_large(what: &'static str, len: usize) -> Error {
    Error::TooLarge { what, len: len as u64, limit: u64::from(u32::MAX) }
}

/// Reads and verifies the record at `loc` from `file` (a positioned read).
pub fn read_at(file: &dyn DiskFile, sector: u32, loc: Loc) -> Result<Record> {
    let corrupt = Error::Corrupt { sector, gen: loc.gen, offset: loc.pos };
    let len = loc.len as usize;
    if !(HEADER_LEN..=MAX_RECORD).contains(&len) {
        return Err(corrupt);
    }
    let mut buf = vec![0u8; len];
    if file.read_at(&mut buf, loc.pos)? < len {
        return Err(corrupt);
    }
    match record::decode(&buf) {
        Decoded::Record { record, len } if len == loc.len => Ok(record),
        _ => Err(corrupt),
    }
}

/// Reads the record at `loc` from a segment that has no open writer; the
/// file is opened only for this read.
pub fn read_loc(disk: &dyn Disk, dir: &Path, sector: u32, loc: Loc) -> Result<Record> {
    let file = disk.open(&segment_path(dir, loc.gen), OpenMode::Read)?;
    read_at(file.as_ref(), sector, loc)
}

/// Bytes read per `pread` while a segment is replayed.
pub const READ_BUFFER: usize = 64 * 1024;

/// Reads a segment front to back, for replay.
#[derive(Debug)]
pub struct SegmentIter {
    reader: BufReader<SeqReader>,
    sector: u32,
    gen: u64,
    pos: u64,
}

impl SegmentIter {
    /// Opens segment `gen` in `dir` at its start.
    pub fn open(disk: &dyn Disk, dir: &Path, sector: u32, gen: u64) -> Result<SegmentIter> {
        let file = disk.open(&segment_path(dir, gen), OpenMode::Read)?;
        Ok(SegmentIter { reader: BufReader::with_capacity(READ_BUFFER, SeqReader::new(file)), sector, gen, pos: 0 })
    }

    /// The offset just past the last record returned: the good length.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The next record and its location; `None` at the clean end. A torn or
    /// corrupt record is `Error::Corrupt` at its offset, and the iterator
    /// stays there.
    pub fn next_record(&mut self) -> Result<Option<(Loc, Record)>> {
        match record::read_record(&mut self.reader)? {
            Decoded::End => Ok(None),
            Decoded::Record { record, len } => {
                let loc = Loc { gen: self.gen, pos: self.pos, len };
                self.pos = loc.end();
                Ok(Some((loc, record)))
            }
            Decoded::Torn | Decoded::Corrupt(_) => {
                Err(Error::Corrupt { sector: self.sector, gen: self.gen, offset: self.pos })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::OsDisk;
    use crate::store::test_dir::TestDir;
    use std::fs;

    fn v(ms: u64) -> Version {
        Version { ms, counter: 0, node: 1 }
    }

    #[test]
    fn segment_names_round_trip() {
        let p = segment_path(Path::new("/x"), 42);
        assert_eq!(p, Path::new("/x/0000000042.log"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_generation(name), Some(42));
        for bad in ["42.tmp", ".log", "x1.log", "1.log.bak", "-1.log", "+1.log"] {
            assert_eq!(parse_generation(bad), None, "{bad}");
        }
    }

    #[test]
    fn locations_are_contiguous_and_readable() -> Result<()> {
        let dir = TestDir::new("log-loc");
        let mut w = SegmentWriter::create(&OsDisk, dir.path(), 0, 1)?;
        let a = Record::put(b"a", b"first", v(1));
        let b = Record::tombstone(b"b", v(2));
        let la = w.append(&a)?;
        let lb = w.append(&b)?;
        assert_eq!(la.pos, 0);
        assert_eq!(lb.pos, u64::from(la.len));
        assert_eq!(w.pos(), lb.end());
        w.sync()?;
        assert_eq!(w.read(lb)?, b);
        assert_eq!(read_loc(&OsDisk, dir.path(), 0, la)?, a);
        Ok(())
    }

    #[test]
    fn iterator_replays_in_order() -> Result<()> {
        let dir = TestDir::new("log-iter");
        let mut w = SegmentWriter::create(&OsDisk, dir.path(), 3, 7)?;
        let recs: Vec<Record> =
            (0..50u64).map(|i| Record::put(format!("k{i}").as_bytes(), &vec![i as u8; i as usize], v(i))).collect();
        let locs: Vec<Loc> = recs.iter().map(|r| w.append(r).unwrap()).collect();
        assert_eq!(w.read(locs[49])?, recs[49], "a buffered record reads back");
        w.flush()?;
        let mut it = SegmentIter::open(&OsDisk, dir.path(), 3, 7)?;
        for (rec, loc) in recs.iter().zip(&locs) {
            assert_eq!(it.next_record()?, Some((*loc, rec.clone())));
        }
        assert_eq!(it.next_record()?, None);
        assert_eq!(it.pos(), w.pos());
        Ok(())
    }

    #[test]
    fn read_at_rejects_a_wrong_location() -> Result<()> {
        let dir = TestDir::new("log-badloc");
        let mut w = SegmentWriter::create(&OsDisk, dir.path(), 5, 1)?;
        let loc = w.append(&Record::put(b"key", b"value", v(1)))?;
        let shifted = Loc { pos: 1, len: loc.len - 1, ..loc };
        assert!(matches!(w.read(shifted), Err(Error::Corrupt { sector: 5, gen: 1, offset: 1 })));
        let past_end = Loc { pos: 100, ..loc };
        assert!(matches!(w.read(past_end), Err(Error::Corrupt { .. })));
        let huge = Loc { len: u32::MAX, ..loc };
        assert!(matches!(w.read(huge), Err(Error::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn oversized_appends_write_nothing() -> Result<()> {
        let dir = TestDir::new("log-big");
        let mut w = SegmentWriter::create(&OsDisk, dir.path(), 0, 1)?;
        let key = vec![0u8; record::MAX_KEY + 1];
        assert!(matches!(w.append_parts(&key, None, 0, v(1)), Err(Error::TooLarge { what: "key", .. })));
        assert_eq!(w.pos(), 0);
        assert_eq!(fs::metadata(segment_path(dir.path(), 1))?.len(), 0);
        Ok(())
    }

    #[test]
    fn generations_are_listed_oldest_first() -> Result<()> {
        let dir = TestDir::new("log-list");
        for gen in [10, 2, 7] {
            SegmentWriter::create(&OsDisk, dir.path(), 0, gen)?;
        }
        fs::write(dir.path().join("notes.txt"), b"ignored")?;
        assert_eq!(list_generations(&OsDisk, dir.path())?, vec![2, 7, 10]);
        Ok(())
    }

    #[test]
    fn a_failed_flush_hands_out_no_wrong_location() -> Result<()> {
        // Issue #10 item 7: the append whose flush failed had already moved
        // the write position, so every later record was indexed at the
        // wrong offset and could not be read back.
        use crate::store::disk::SimDisk;
        let disk = SimDisk::new();
        let dir = Path::new("/sector");
        disk.create_dir_all(dir)?;
        let mut w = SegmentWriter::create(&disk, dir, 4, 1)?;
        let value = vec![b'v'; 900];
        let mut kept = Vec::new();
        let mut i = 0u64;
        while w.pos() < WRITE_BUFFER as u64 {
            let rec = Record::put(format!("k{i}").as_bytes(), &value, v(i));
            kept.push((w.append(&rec)?, rec));
            i += 1;
        }
        // The next append flushes the buffer first: make that write fail.
        let before = w.pos();
        disk.fail_next_write();
        let lost = Record::put(b"lost", &value, v(1000));
        assert!(matches!(w.append(&lost), Err(Error::Io(_))));
        assert_eq!(w.pos(), before, "a failed append hands out no position");
        for j in 0..20u64 {
            let rec = Record::put(format!("after{j}").as_bytes(), &value, v(2000 + j));
            kept.push((w.append(&rec)?, rec));
        }
        for (loc, rec) in &kept {
            assert_eq!(&w.read(*loc)?, rec, "buffered or written, each record reads back at its location");
        }
        w.sync()?;
        for (loc, rec) in &kept {
            assert_eq!(&w.read(*loc)?, rec);
        }
        // A replay finds exactly the same records at the same places.
        let mut it = SegmentIter::open(&disk, dir, 4, 1)?;
        for (loc, rec) in &kept {
            assert_eq!(it.next_record()?, Some((*loc, rec.clone())));
        }
        assert_eq!(it.next_record()?, None);
        Ok(())
    }
}
