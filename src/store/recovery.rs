//! Recovery: rebuilding a sector's index by replaying its segments.
//!
//! [`replay`] lists a sector directory's `*.log` files, sorts them by
//! generation and replays each into a fresh index, later records winning.
//! A torn or corrupt tail in the newest segment is what a crash in the
//! middle of an append leaves behind: it is cut off at the last good record
//! (`set_len`, then `sync_data`) and reported with `log::warn!`. The same
//! damage in an older, sealed segment cannot come from a crash, so it is
//! `Error::Corrupt`. Records before the damage are never lost.

use std::path::Path;

use super::disk::{Disk, OpenMode};
use super::index::{Entry, Expiries, Index, IndexKey};
use super::log::{self, Loc, SegmentIter};
use super::record::Record;
use super::{Error, Result};

/// What a replay found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Segment files replayed.
    pub segments: usize,
    /// Good records read.
    pub records: u64,
    /// Bytes of records that are the newest for their key.
    pub live_bytes: u64,
    /// Bytes of records superseded by a newer one.
    pub dead_bytes: u64,
    /// Bytes cut off the tail of the newest segment.
    pub bytes_cut: u64,
}

/// A replayed sector: its index, its segments and where to append next.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The newest entry of every key, tombstones included.
    pub index: Index,
    /// The expiry of every key whose newest entry is a value with one.
    pub expiries: Expiries,
    /// Counts gathered during the replay.
    pub stats: Stats,
    /// Generations found, oldest first.
    pub generations: Vec<u64>,
    /// The good length of the newest segment (0 if there is none).
    pub tail: u64,
}

/// Replays every segment of the sector in `dir` (sector id `sector`).
pub fn replay(disk: &dyn Disk, dir: &Path, sector: u32) -> Result<Replayed> {
    let mut out = Replayed { generations: log::list_generations(disk, dir)?, ..Replayed::default() };
    let newest = out.generations.last().copied();
    for gen in out.generations.clone() {
        out.tail = replay_segment(disk, dir, sector, gen, Some(gen) == newest, &mut out)?;
        out.stats.segments = out.stats.segments.saturating_add(1);
    }
    Ok(out)
}

/// Replays one segment into `out`; returns its good length.
fn replay_segment(disk: &dyn Disk, dir: &Path, sector: u32, gen: u64, newest: bool, out: &mut Replayed) -> Result<u64> {
    let mut it = SegmentIter::open(disk, dir, sector, gen)?;
    loop {
        match it.next_record() {
            Ok(Some((loc, rec))) => insert(out, loc, rec),
            Ok(None) => return Ok(it.pos()),
            Err(Error::Corrupt { offset, .. }) if newest => {
                let cut = cut_tail(disk, dir, gen, offset)?;
                out.stats.bytes_cut = out.stats.bytes_cut.saturating_add(cut);
                return Ok(offset);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Adds one replayed record. Replay order is write order, so a record
/// replaces an entry of an equal version too (a compaction's copy).
fn insert(out: &mut Replayed, loc: Loc, rec: Record) {
    let stats = &mut out.stats;
    stats.records = stats.records.saturating_add(1);
    let len = u64::from(loc.len);
    let entry = match Entry::new(loc, rec.version, rec.value.is_none()) {
        Ok(e) => e,
        Err(e) => {
            ::log::warn!("record at offset {} not indexed: {e}", loc.pos);
            return;
        }
    };
    match out.index.get_mut(&rec.key[..]) {
        Some(old) if rec.version < old.version() => {
            stats.dead_bytes = stats.dead_bytes.saturating_add(len);
        }
        Some(old) => {
            let old_len = u64::from(old.loc().len);
            stats.live_bytes = stats.live_bytes.saturating_sub(old_len).saturating_add(len);
            stats.dead_bytes = stats.dead_bytes.saturating_add(old_len);
            *old = entry;
            set_expiry(&mut out.expiries, &rec);
        }
        None => {
            stats.live_bytes = stats.live_bytes.saturating_add(len);
            out.index.insert(IndexKey::new(&rec.key), entry);
            set_expiry(&mut out.expiries, &rec);
        }
    }
}

/// Keeps `rec`'s expiry, the newest entry of its key, in `expiries`.
fn set_expiry(expiries: &mut Expiries, rec: &Record) {
    match (rec.value.is_some(), rec.expires) {
        (true, at) if at != 0 => {
            expiries.insert(rec.key.clone(), at);
        }
        _ => {
            expiries.remove(&rec.key);
        }
    }
}

/// Cuts segment `gen` down to `good` bytes and reports it; returns the
/// number of bytes cut.
fn cut_tail(disk: &dyn Disk, dir: &Path, gen: u64, good: u64) -> Result<u64> {
    let path = log::segment_path(dir, gen);
    let file = disk.open(&path, OpenMode::Write)?;
    let len = file.len()?;
    let cut = len.saturating_sub(good);
    file.set_len(good)?;
    file.sync_data()?;
    ::log::warn!("{}: torn or corrupt record at offset {good}; cut {cut} bytes off the tail", path.display());
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Version;
    use crate::store::disk::OsDisk;
    use crate::store::log::SegmentWriter;
    use crate::store::test_dir::TestDir;
    use std::fs;
    use std::io::Write;

    fn v(ms: u64) -> Version {
        Version { ms, counter: 0, node: 1 }
    }

    fn records(n: u64) -> Vec<Record> {
        (0..n).map(|i| Record::put(format!("key{i}").as_bytes(), format!("value {i}").as_bytes(), v(i + 1))).collect()
    }

    /// Writes `recs` as segment `gen`; returns their locations.
    fn write_segment(dir: &Path, gen: u64, recs: &[Record]) -> Vec<Loc> {
        let mut w = SegmentWriter::create(&OsDisk, dir, 0, gen).unwrap();
        let locs = recs.iter().map(|r| w.append(r).unwrap()).collect();
        w.sync().unwrap();
        locs
    }

    fn assert_holds(got: &Replayed, recs: &[Record]) {
        assert_eq!(got.index.len(), recs.len());
        for r in recs {
            assert_eq!(got.index[&r.key[..]].version(), r.version);
        }
    }

    #[test]
    fn empty_directory_replays_to_nothing() -> Result<()> {
        let dir = TestDir::new("rec-empty");
        let got = replay(&OsDisk, dir.path(), 0)?;
        assert!(got.index.is_empty());
        assert_eq!(got.stats, Stats::default());
        assert_eq!(got.tail, 0);
        Ok(())
    }

    #[test]
    fn every_torn_tail_is_cut_to_the_last_good_record() -> Result<()> {
        let src = TestDir::new("rec-torn-src");
        let recs = records(5);
        let locs = write_segment(src.path(), 1, &recs);
        let bytes = fs::read(log::segment_path(src.path(), 1))?;
        let last = *locs.last().unwrap();
        for cut in last.pos..last.end() {
            let dir = TestDir::new("rec-torn");
            let path = log::segment_path(dir.path(), 1);
            fs::write(&path, &bytes[..cut as usize])?;
            let got = replay(&OsDisk, dir.path(), 0)?;
            assert_holds(&got, &recs[..4]);
            assert_eq!(got.tail, last.pos, "cut at {cut}");
            assert_eq!(got.stats.bytes_cut, cut - last.pos);
            assert_eq!(fs::metadata(&path)?.len(), last.pos);
        }
        Ok(())
    }

    #[test]
    fn garbage_after_the_last_record_is_cut() -> Result<()> {
        let dir = TestDir::new("rec-garbage");
        let recs = records(3);
        let locs = write_segment(dir.path(), 1, &recs);
        let path = log::segment_path(dir.path(), 1);
        let good = locs.last().unwrap().end();
        for garbage in [vec![0u8; 4096], b"not a record at all, just noise".to_vec()] {
            fs::OpenOptions::new().append(true).open(&path)?.write_all(&garbage)?;
            let got = replay(&OsDisk, dir.path(), 0)?;
            assert_holds(&got, &recs);
            assert_eq!(got.stats.bytes_cut, garbage.len() as u64);
            assert_eq!(fs::metadata(&path)?.len(), good);
        }
        Ok(())
    }

    #[test]
    fn a_bad_crc_in_a_sealed_segment_is_corrupt() -> Result<()> {
        let dir = TestDir::new("rec-sealed");
        let locs = write_segment(dir.path(), 1, &records(3));
        write_segment(dir.path(), 2, &records(2));
        let path = log::segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path)?;
        let victim = locs[1];
        bytes[victim.end() as usize - 1] ^= 0x40;
        fs::write(&path, &bytes)?;
        match replay(&OsDisk, dir.path(), 7) {
            Err(Error::Corrupt { sector: 7, gen: 1, offset }) => assert_eq!(offset, victim.pos),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Nothing was cut from the sealed segment.
        assert_eq!(fs::read(&path)?, bytes);
        Ok(())
    }

    #[test]
    fn a_bad_crc_in_the_newest_segment_keeps_what_came_before() -> Result<()> {
        let dir = TestDir::new("rec-newest");
        let recs = records(4);
        let locs = write_segment(dir.path(), 3, &recs);
        let path = log::segment_path(dir.path(), 3);
        let mut bytes = fs::read(&path)?;
        bytes[locs[2].pos as usize + 20] ^= 1;
        fs::write(&path, &bytes)?;
        let got = replay(&OsDisk, dir.path(), 0)?;
        assert_holds(&got, &recs[..2]);
        assert_eq!(fs::metadata(&path)?.len(), locs[2].pos);
        Ok(())
    }

    #[test]
    fn later_records_win_and_dead_bytes_are_counted() -> Result<()> {
        let dir = TestDir::new("rec-lww");
        let old = Record::put(b"k", b"old", v(1));
        let new = Record::put(b"k", b"new", v(2));
        let gone = Record::tombstone(b"k", v(3));
        let locs = write_segment(dir.path(), 1, &[old, new, gone.clone()]);
        let got = replay(&OsDisk, dir.path(), 0)?;
        let e = got.index[&b"k"[..]];
        assert!(e.tombstone());
        assert_eq!(e.version(), gone.version);
        assert_eq!(e.loc(), locs[2]);
        assert_eq!(got.stats.records, 3);
        assert_eq!(got.stats.live_bytes, u64::from(locs[2].len));
        assert_eq!(got.stats.dead_bytes, u64::from(locs[0].len + locs[1].len));
        Ok(())
    }

    #[test]
    fn a_compaction_copy_in_a_newer_segment_takes_over() -> Result<()> {
        let dir = TestDir::new("rec-copy");
        let recs = records(3);
        write_segment(dir.path(), 1, &recs);
        let copies = write_segment(dir.path(), 2, &recs);
        let got = replay(&OsDisk, dir.path(), 0)?;
        assert_eq!(got.generations, vec![1, 2]);
        for (r, loc) in recs.iter().zip(&copies) {
            assert_eq!(got.index[&r.key[..]].loc(), *loc);
        }
        assert_eq!(got.tail, copies.last().unwrap().end());
        Ok(())
    }
}
