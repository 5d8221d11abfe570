//! One sector: its in-memory index, its active segment and its compaction.
//!
//! A sector lives in its own directory of segments. The index maps every
//! key the sector has seen to the location and version of its newest record;
//! values stay on disk. Writes follow last-writer-wins: a record is appended
//! only if its version is newer than the indexed one. Tombstones stay in the
//! index (and survive compaction) so that a stale replica's older value can
//! never come back. When superseded records outweigh live ones, compaction
//! starts a new generation, which new writes go to from then on, and copies
//! the live records of the older generations into it a budget at a time
//! ([`Sector::compact_step`], so a big sector never holds the loop); once
//! all are copied it makes the new generation durable (file and directory)
//! and only then deletes the older ones. A crash in between leaves several
//! generations whose replay (newest version wins) gives the same index;
//! they are merged at the next open. A sector keeps one file open for
//! writing, its active segment, and while it compacts one for reading.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::disk::Disk;
use super::index::{Entry, Expiries, Index, IndexKey};
use super::log::{self, Loc, SegmentIter, SegmentWriter};
use super::record::{self, Record};
use super::recovery::{self, Stats};
use super::{Error, Item, Result};
use crate::hlc::Version;

/// Compaction waits until at least this many bytes are dead.
pub const COMPACT_MIN_DEAD_BYTES: u64 = 1024 * 1024;

/// The generation of a new sector's first segment.
const FIRST_GEN: u64 = 1;

/// What taking back the last applied write restores: the key's entry
/// before it, the byte counts and where its record was appended.
#[derive(Clone, Copy, Debug)]
pub struct Undo {
    prev: Option<Entry>,
    /// The key's expiry before the write (0: none).
    prev_expires: u64,
    loc: Loc,
    live_bytes: u64,
    dead_bytes: u64,
    dirty: bool,
}

/// One sector's index and active segment.
#[derive(Debug)]
pub struct Sector {
    id: u32,
    disk: Rc<dyn Disk>,
    dir: PathBuf,
    index: Index,
    /// The expiries of the keys whose newest entry is a value with one.
    expiries: Expiries,
    writer: SegmentWriter,
    live_bytes: u64,
    dead_bytes: u64,
    dirty: bool,
    /// Created by this process: its directory entries (the sector's in
    /// `sectors/`, the segment's in the sector's) are synced with its
    /// first [`Sector::sync`], not at creation, so a first write costs no
    /// directory fsyncs; until then its records are safe in the WAL.
    new_dirs: bool,
    /// A compaction under way.
    compaction: Option<Compaction>,
}

/// A compaction under way: the live records of the generations older than
/// the active one are being copied into it.
#[derive(Debug)]
struct Compaction {
    /// The generations being replaced not scanned yet, oldest first.
    todo: VecDeque<u64>,
    /// The generation being scanned.
    scan: Option<SegmentIter>,
    /// Bytes of the old generations: dead once they are deleted.
    old_bytes: u64,
    /// Every live record is copied.
    copied: bool,
    /// The copies are durable: the old generations may go.
    synced: bool,
}

impl Sector {
    /// Opens sector `id` stored in `dir`, creating the directory if needed,
    /// and replays its segments. Leftovers of an interrupted compaction
    /// (more than one segment) are compacted into one if possible.
    pub fn open(disk: Rc<dyn Disk>, dir: &Path, id: u32) -> Result<Sector> {
        let mut new_dirs = false;
        if !disk.is_dir(dir) {
            disk.create_dir_all(dir)?;
            new_dirs = true;
        }
        let replayed = recovery::replay(&*disk, dir, id)?;
        report(dir, &replayed.stats);
        let writer = match replayed.generations.last() {
            Some(&gen) => SegmentWriter::open_at(&*disk, dir, id, gen, replayed.tail)?,
            None => {
                new_dirs = true;
                SegmentWriter::create(&*disk, dir, id, FIRST_GEN)?
            }
        };
        let mut sector = Sector {
            id,
            disk,
            dir: dir.to_path_buf(),
            index: replayed.index,
            expiries: replayed.expiries,
            writer,
            live_bytes: replayed.stats.live_bytes,
            dead_bytes: replayed.stats.dead_bytes,
            dirty: false,
            new_dirs,
            compaction: None,
        };
        if replayed.generations.len() > 1 {
            // Reads still work across segments, so a failed merge is not fatal.
            if let Err(e) = sector.compact() {
                ::log::warn!("sector {id}: merging leftover segments failed: {e}");
            }
        }
        Ok(sector)
    }

    /// The sector's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Applies a write if `version` is newer than the key's current one
    /// (`value` `None` = tombstone). Returns whether it was applied; an
    /// older or equal version writes nothing.
    pub fn apply(&mut self, key: &[u8], version: Version, value: Option<&[u8]>) -> Result<bool> {
        self.apply_expiring(key, version, value, 0)
    }

    /// [`Sector::apply`] of a value that expires at `expires` (wall ms; 0 = never).
    pub fn apply_expiring(&mut self, key: &[u8], version: Version, value: Option<&[u8]>, expires: u64) -> Result<bool> {
        Ok(self.apply_undoable(key, version, value, expires)?.is_some())
    }

    /// [`Sector::apply_expiring`], returning what [`Sector::undo`] needs to
    /// take the write back (`None`: not applied).
    pub fn apply_undoable(
        &mut self,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
        expires: u64,
    ) -> Result<Option<Undo>> {
        let prev = self.index.get(key).copied();
        if prev.is_some_and(|e| version <= e.version()) {
            return Ok(None);
        }
        let (live_bytes, dead_bytes, dirty) = (self.live_bytes, self.dead_bytes, self.dirty);
        // The entry is checked before anything is appended, so a write that
        // cannot be indexed leaves no record behind.
        let entry = Entry::new(self.writer.next_loc(key, value, expires)?, version, value.is_none())?;
        let loc = self.writer.append_parts(key, value, expires, version)?;
        // An overwrite updates the entry in place: no new key allocation.
        match self.index.get_mut(key) {
            Some(old) => {
                let old_len = u64::from(old.loc().len);
                self.live_bytes = self.live_bytes.saturating_sub(old_len);
                self.dead_bytes = self.dead_bytes.saturating_add(old_len);
                *old = entry;
            }
            None => {
                self.index.insert(IndexKey::new(key), entry);
            }
        }
        self.live_bytes = self.live_bytes.saturating_add(u64::from(loc.len));
        self.dirty = true;
        let prev_expires = self.set_expiry(key, if value.is_some() { expires } else { 0 });
        Ok(Some(Undo { prev, prev_expires, loc, live_bytes, dead_bytes, dirty }))
    }

    /// Records `key`'s expiry (0: none); returns the one it had.
    fn set_expiry(&mut self, key: &[u8], expires: u64) -> u64 {
        let prev = match expires {
            0 => self.expiries.remove(key),
            at => self.expiries.insert(key.to_vec(), at),
        };
        prev.unwrap_or(0)
    }

    /// Takes back the write to `key` that [`Sector::apply_undoable`] just
    /// applied (nothing may be appended in between): its record leaves the
    /// segment buffer and the key's entry is what it was.
    pub fn undo(&mut self, key: &[u8], undo: Undo) -> Result<()> {
        if !self.writer.unappend(undo.loc) {
            return Err(Error::Corrupt { sector: self.id, gen: undo.loc.gen, offset: undo.loc.pos });
        }
        match undo.prev {
            Some(prev) => {
                if let Some(e) = self.index.get_mut(key) {
                    *e = prev;
                }
            }
            None => {
                self.index.remove(key);
            }
        }
        self.set_expiry(key, undo.prev_expires);
        self.live_bytes = undo.live_bytes;
        self.dead_bytes = undo.dead_bytes;
        self.dirty = undo.dirty;
        Ok(())
    }

    /// The bytes of the record most recently appended (for the WAL to copy
    /// instead of encoding the record again).
    pub fn last_record(&self) -> &[u8] {
        self.writer.last_record()
    }

    /// The index entry of `key`, if the sector has seen it.
    pub fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.index.get(key)
    }

    /// The newest version and value of `key`; a tombstone has no value.
    pub fn get(&self, key: &[u8]) -> Result<Option<Item>> {
        match self.index.get(key) {
            None => Ok(None),
            Some(e) => self.item(key, e).map(Some),
        }
    }

    /// Every entry, tombstones included, sorted by key, values read from disk.
    pub fn scan(&self) -> Result<Vec<(Vec<u8>, Item)>> {
        let mut keys: Vec<&IndexKey> = self.index.keys().collect();
        keys.sort_unstable();
        // One read of the active segment instead of one per record.
        let segment = self.writer.contents()?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(e) = self.index.get(key) else { continue };
            let item = match e.loc().gen == self.writer.gen() && !e.tombstone() {
                true => self.item_from(&segment, key.as_slice(), e)?,
                false => self.item(key.as_slice(), e)?,
            };
            out.push((key.as_slice().to_vec(), item));
        }
        Ok(out)
    }

    /// The item of entry `e`, decoded from the active segment's bytes.
    fn item_from(&self, segment: &[u8], key: &[u8], e: &Entry) -> Result<Item> {
        let corrupt = Error::Corrupt { sector: self.id, gen: e.loc().gen, offset: e.loc().pos };
        let start = usize::try_from(e.loc().pos).map_err(|_| corrupt)?;
        let bytes = segment.get(start..start.saturating_add(e.loc().len as usize)).ok_or(Error::Corrupt {
            sector: self.id,
            gen: e.loc().gen,
            offset: e.loc().pos,
        })?;
        match record::decode(bytes) {
            record::Decoded::Record { record, .. } if record.key == key && record.version == e.version() => {
                Ok(Item { version: e.version(), value: record.value, expires: record.expires })
            }
            _ => Err(Error::Corrupt { sector: self.id, gen: e.loc().gen, offset: e.loc().pos }),
        }
    }

    /// Every key with its newest version, tombstones included, sorted by key.
    pub fn keys_with_versions(&self) -> Vec<(Vec<u8>, Version)> {
        let mut out: Vec<(Vec<u8>, Version)> =
            self.index.iter().map(|(k, e)| (k.as_slice().to_vec(), e.version())).collect();
        out.sort_unstable();
        out
    }

    /// Up to `limit` keys whose newest entry is a tombstone made before
    /// `before_ms` (wall ms), or a value made and expired before it, with
    /// their versions, sorted by key: the candidates for reaping (see
    /// `Store::reap`), an expired value as a tombstone of its version.
    pub fn old_tombstones(&self, before_ms: u64, limit: usize) -> Vec<(Vec<u8>, Version)> {
        let mut out: Vec<(Vec<u8>, Version)> = self
            .index
            .iter()
            .filter(|(_, e)| e.tombstone() && e.version().ms < before_ms)
            .map(|(k, e)| (k.as_slice().to_vec(), e.version()))
            .collect();
        for key in self.expiries.iter().filter(|(_, &at)| at < before_ms).map(|(k, _)| k) {
            match self.index.get(&key[..]) {
                Some(e) if !e.tombstone() && e.version().ms < before_ms => out.push((key.clone(), e.version())),
                _ => {}
            }
        }
        out.sort_unstable();
        out.truncate(limit);
        out
    }

    /// Forgets `key` if its newest entry is the tombstone `version`, or a
    /// value of that version with an expiry (the reaper only offers one
    /// expired past the grace): the record becomes dead bytes, which
    /// compaction leaves behind. Nothing is written: after a restart the
    /// record, still in its segment until compaction, brings it back,
    /// which is harmless. Returns whether it was forgotten.
    pub fn reap(&mut self, key: &[u8], version: Version) -> bool {
        let Some(e) = self.index.get(key) else { return false };
        let expiring = !e.tombstone() && self.expiries.contains_key(key);
        if !(e.tombstone() || expiring) || e.version() != version {
            return false;
        }
        let len = u64::from(e.loc().len);
        self.index.remove(key);
        self.expiries.remove(key);
        self.live_bytes = self.live_bytes.saturating_sub(len);
        self.dead_bytes = self.dead_bytes.saturating_add(len);
        true
    }

    /// Keys whose newest entry is not a tombstone.
    pub fn live_keys(&self) -> usize {
        self.index.values().filter(|e| !e.tombstone()).count()
    }

    /// Keys whose newest entry is a value with an expiry (passed or not).
    pub fn expiring_keys(&self) -> usize {
        self.expiries.len()
    }

    /// Keys whose newest entry is a value expired at wall time `now_ms`
    /// (kept until reclaimed, but read as not found).
    pub fn expired_keys(&self, now_ms: u64) -> usize {
        self.expiries.values().filter(|&&at| Item::is_expired_at(at, now_ms)).count()
    }

    /// Keys in the index, tombstones included.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of records that are the newest for their key.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Bytes of superseded records still on disk.
    pub fn dead_bytes(&self) -> u64 {
        self.dead_bytes
    }

    /// Whether writes were appended since the last sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Whether [`Sector::sync`] has anything to make durable: appended
    /// writes, or the directory entries of a new sector or segment.
    pub fn needs_sync(&self) -> bool {
        self.dirty || self.new_dirs
    }

    /// Makes every appended record durable (`sync_data`), and the
    /// directory entries of a sector created since it was opened.
    pub fn sync(&mut self) -> Result<()> {
        self.writer.sync()?;
        if self.new_dirs {
            self.disk.sync_dir(&self.dir)?;
            if let Some(parent) = self.dir.parent() {
                self.disk.sync_dir(parent)?;
            }
            self.new_dirs = false;
        }
        self.dirty = false;
        Ok(())
    }

    /// Whether enough bytes are dead to make compaction worth it (and
    /// none is under way).
    pub fn needs_compaction(&self) -> bool {
        self.compaction.is_none() && self.dead_bytes > self.live_bytes && self.dead_bytes >= COMPACT_MIN_DEAD_BYTES
    }

    /// Whether a compaction is under way.
    pub fn compacting(&self) -> bool {
        self.compaction.is_some()
    }

    /// Compacts if [`Sector::needs_compaction`]; returns whether it did.
    pub fn maybe_compact(&mut self) -> Result<bool> {
        if !self.needs_compaction() {
            return Ok(false);
        }
        self.compact()?;
        Ok(true)
    }

    /// Compacts at once: [`Sector::start_compaction`] (unless one is under
    /// way) and steps until it is done. For the merge at open and tests; the
    /// node compacts in steps.
    pub fn compact(&mut self) -> Result<()> {
        if self.compaction.is_none() {
            self.start_compaction()?;
        }
        while !self.compact_step(u64::MAX)? {}
        Ok(())
    }

    /// Starts a compaction: the active segment is synced (the copies are
    /// made from it) and a new generation becomes the active one. Its
    /// directory entry is synced with the next [`Sector::sync`], before any
    /// write in it leaves the WAL.
    pub fn start_compaction(&mut self) -> Result<()> {
        if self.compaction.is_some() {
            return Ok(());
        }
        let gen = self.writer.gen().checked_add(1).ok_or(Error::TooLarge {
            what: "segment generation",
            len: self.writer.gen(),
            limit: u64::MAX - 1,
        })?;
        let old = log::list_generations(&*self.disk, &self.dir)?;
        self.writer.sync()?;
        let next = SegmentWriter::create(&*self.disk, &self.dir, self.id, gen)?;
        self.writer = next;
        self.new_dirs = true;
        let old_bytes = self.live_bytes.saturating_add(self.dead_bytes);
        let todo = old.into_iter().filter(|&g| g < gen).collect();
        self.compaction = Some(Compaction { todo, scan: None, old_bytes, copied: false, synced: false });
        Ok(())
    }

    /// One step of the compaction under way: copies the live records found
    /// in at most about `budget` bytes of the old generations (or, once all
    /// are copied, syncs the copies; then deletes the old generations).
    /// Returns true once the compaction is done (or none was under way). On
    /// an error the compaction is abandoned: the old generations stay and
    /// reads work across them; the next compaction replaces them too.
    pub fn compact_step(&mut self, budget: u64) -> Result<bool> {
        let stepped = self.compact_step_inner(budget);
        if stepped.is_err() {
            self.compaction = None;
        }
        stepped
    }

    fn compact_step_inner(&mut self, budget: u64) -> Result<bool> {
        let Some(c) = self.compaction.as_mut() else { return Ok(true) };
        if c.synced {
            let old_bytes = c.old_bytes;
            let gen = self.writer.gen();
            self.remove_older(gen)?;
            let before = old_bytes.saturating_add(self.writer.pos());
            self.dead_bytes = self.dead_bytes.saturating_sub(old_bytes);
            self.compaction = None;
            ::log::info!("sector {}: compacted {before} bytes into {} (segment {gen})", self.id, self.writer.pos());
            return Ok(true);
        }
        if c.copied {
            // Copies must be durable before their originals are deleted.
            self.writer.sync()?;
            self.disk.sync_dir(&self.dir)?;
            c.synced = true;
            return Ok(false);
        }
        let Sector { disk, dir, id, index, writer, dead_bytes, .. } = self;
        let mut scanned = 0u64;
        while scanned < budget {
            let it = match c.scan.as_mut() {
                Some(it) => it,
                None => match c.todo.pop_front() {
                    Some(g) => c.scan.insert(SegmentIter::open(&**disk, dir, *id, g)?),
                    None => {
                        c.copied = true;
                        break;
                    }
                },
            };
            let Some((loc, rec)) = it.next_record()? else {
                c.scan = None;
                continue;
            };
            scanned = scanned.saturating_add(u64::from(loc.len));
            // Only the record the index points to is live; a write since the
            // compaction started is in the new generation already.
            let Some(e) = index.get_mut(&rec.key[..]) else { continue };
            if e.loc() != loc {
                continue;
            }
            let to = writer.next_loc(&rec.key, rec.value.as_deref(), rec.expires)?;
            let moved = Entry::new(to, e.version(), e.tombstone())?;
            writer.append(&rec)?;
            *e = moved;
            *dead_bytes = dead_bytes.saturating_add(u64::from(loc.len));
        }
        Ok(false)
    }

    /// Deletes every segment older than `gen`.
    ///
    /// Oldest first, the directory synced after each: a crash in between
    /// must never leave an older generation without the newer ones, or a
    /// value whose tombstone was reaped (see [`Sector::reap`]) and whose
    /// newer tombstone record sat in a later generation would come back.
    fn remove_older(&self, gen: u64) -> Result<()> {
        let mut old: Vec<u64> =
            log::list_generations(&*self.disk, &self.dir)?.into_iter().filter(|&g| g < gen).collect();
        old.sort_unstable();
        for g in old {
            self.disk.remove_file(&log::segment_path(&self.dir, g))?;
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes the sector's files and directory (not fsynced; see
    /// `Store::drop_sector`).
    pub fn destroy(self) -> Result<()> {
        let Sector { disk, dir, writer, .. } = self;
        drop(writer);
        disk.remove_dir_all(&dir)?;
        Ok(())
    }

    /// The item for index entry `e` of `key`.
    fn item(&self, key: &[u8], e: &Entry) -> Result<Item> {
        if e.tombstone() {
            return Ok(Item { version: e.version(), value: None, expires: 0 });
        }
        let rec = self.read(key, e)?;
        Ok(Item { version: e.version(), value: rec.value, expires: rec.expires })
    }

    /// Reads the record of entry `e` and checks it is the one indexed.
    fn read(&self, key: &[u8], e: &Entry) -> Result<Record> {
        let rec = if e.loc().gen == self.writer.gen() {
            self.writer.read(e.loc())?
        } else {
            log::read_loc(&*self.disk, &self.dir, self.id, e.loc())?
        };
        if rec.key != key || rec.version != e.version() || rec.value.is_none() != e.tombstone() {
            return Err(Error::Corrupt { sector: self.id, gen: e.loc().gen, offset: e.loc().pos });
        }
        Ok(rec)
    }
}

/// Logs what a replay found, if anything.
fn report(dir: &Path, stats: &Stats) {
    if stats.records > 0 || stats.bytes_cut > 0 {
        ::log::debug!(
            "{}: replayed {} records from {} segments ({} live bytes, {} dead, {} cut)",
            dir.display(),
            stats.records,
            stats.segments,
            stats.live_bytes,
            stats.dead_bytes,
            stats.bytes_cut
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::disk::OsDisk;
    use crate::store::test_dir::TestDir;
    use std::fs;

    fn os() -> Rc<dyn Disk> {
        Rc::new(OsDisk)
    }

    fn v(ms: u64) -> Version {
        Version { ms, counter: 0, node: 1 }
    }

    fn value_of(s: &Sector, key: &[u8]) -> Option<Vec<u8>> {
        s.get(key).unwrap().and_then(|i| i.value)
    }

    fn dir_size(dir: &Path) -> u64 {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    #[test]
    fn last_writer_wins() -> Result<()> {
        let dir = TestDir::new("sector-lww");
        let mut s = Sector::open(os(), &dir.path().join("0"), 0)?;
        assert!(s.apply(b"k", v(5), Some(b"five"))?);
        assert!(!s.apply(b"k", v(4), Some(b"four"))?, "older version ignored");
        assert!(!s.apply(b"k", v(5), Some(b"other"))?, "equal version ignored");
        assert_eq!(value_of(&s, b"k"), Some(b"five".to_vec()));

        assert!(s.apply(b"k", v(6), None)?, "tombstone beats older put");
        assert!(!s.apply(b"k", v(5), Some(b"stale"))?, "stale put stays deleted");
        let item = s.get(b"k")?.unwrap();
        assert_eq!(item, Item { version: v(6), value: None, expires: 0 });
        assert_eq!(s.live_keys(), 0);
        assert_eq!(s.len(), 1);

        assert!(s.apply(b"k", v(7), Some(b"back"))?, "newer put after tombstone");
        assert_eq!(value_of(&s, b"k"), Some(b"back".to_vec()));
        assert_eq!(s.live_keys(), 1);
        Ok(())
    }

    #[test]
    fn ignored_writes_append_nothing() -> Result<()> {
        let dir = TestDir::new("sector-nowrite");
        let mut s = Sector::open(os(), &dir.path().join("1"), 1)?;
        s.apply(b"k", v(5), Some(b"five"))?;
        let size = dir_size(&dir.path().join("1"));
        s.apply(b"k", v(5), Some(b"five"))?;
        s.apply(b"k", v(1), None)?;
        assert_eq!(dir_size(&dir.path().join("1")), size);
        Ok(())
    }

    #[test]
    fn reopen_keeps_values_and_tombstones() -> Result<()> {
        let dir = TestDir::new("sector-reopen");
        let path = dir.path().join("3");
        let mut s = Sector::open(os(), &path, 3)?;
        s.apply(b"a", v(1), Some(b"alpha"))?;
        s.apply(b"b", v(2), Some(b"beta"))?;
        s.apply(b"b", v(3), None)?;
        s.sync()?;
        drop(s);
        let s = Sector::open(os(), &path, 3)?;
        assert_eq!(value_of(&s, b"a"), Some(b"alpha".to_vec()));
        assert_eq!(s.get(b"b")?, Some(Item { version: v(3), value: None, expires: 0 }));
        assert_eq!(s.get(b"c")?, None);
        assert_eq!(s.keys_with_versions(), vec![(b"a".to_vec(), v(1)), (b"b".to_vec(), v(3))]);
        Ok(())
    }

    #[test]
    fn scan_returns_tombstones_too() -> Result<()> {
        let dir = TestDir::new("sector-scan");
        let mut s = Sector::open(os(), &dir.path().join("0"), 0)?;
        s.apply(b"x", v(1), Some(b"1"))?;
        s.apply(b"y", v(2), None)?;
        let got = s.scan()?;
        assert_eq!(
            got,
            vec![
                (b"x".to_vec(), Item { version: v(1), value: Some(b"1".to_vec()), expires: 0 }),
                (b"y".to_vec(), Item { version: v(2), value: None, expires: 0 }),
            ]
        );
        Ok(())
    }

    #[test]
    fn a_reaped_tombstone_is_gone_after_compaction_and_reopen_and_the_old_value_stays_gone() -> Result<()> {
        let dir = TestDir::new("sector-reap");
        let path = dir.path().join("4");
        let mut s = Sector::open(os(), &path, 4)?;
        s.apply(b"gone", v(1), Some(b"old"))?;
        s.apply(b"gone", v(2), None)?;
        s.apply(b"live", v(3), Some(b"here"))?;
        s.apply(b"newer", v(4), None)?;
        assert_eq!(s.old_tombstones(4, 10), vec![(b"gone".to_vec(), v(2))], "only tombstones made before 4 ms");
        assert!(!s.reap(b"gone", v(1)), "not the tombstone's version");
        assert!(!s.reap(b"live", v(3)), "a live value is never reaped");
        assert!(s.reap(b"gone", v(2)));
        assert_eq!(s.get(b"gone")?, None, "forgotten");
        assert!(s.old_tombstones(u64::MAX, 10).iter().all(|(k, _)| k != b"gone"));
        // Before compaction a restart brings the tombstone back (harmless),
        // never the value it deleted.
        drop(s);
        let mut s = Sector::open(os(), &path, 4)?;
        assert_eq!(s.get(b"gone")?, Some(Item { version: v(2), value: None, expires: 0 }));
        assert!(s.reap(b"gone", v(2)));
        s.compact()?;
        drop(s);
        let s = Sector::open(os(), &path, 4)?;
        assert_eq!(s.get(b"gone")?, None, "compaction left both records behind");
        assert_eq!(value_of(&s, b"live"), Some(b"here".to_vec()));
        assert_eq!(s.get(b"newer")?, Some(Item { version: v(4), value: None, expires: 0 }));
        Ok(())
    }

    #[test]
    fn a_value_expired_past_the_grace_is_reaped_like_a_tombstone_and_stays_gone() -> Result<()> {
        let dir = TestDir::new("sector-reap-expired");
        let path = dir.path().join("5");
        let mut s = Sector::open(os(), &path, 5)?;
        s.apply(b"ttl", v(1), Some(b"old"))?;
        s.apply_expiring(b"ttl", v(2), Some(b"short"), 10)?;
        s.apply_expiring(b"later", v(3), Some(b"long"), 1_000)?;
        s.apply_expiring(b"rewritten", v(4), Some(b"was short"), 10)?;
        s.apply(b"rewritten", v(5), Some(b"no ttl"))?;
        s.apply(b"plain", v(6), Some(b"kept"))?;
        assert_eq!(s.old_tombstones(10, 10), vec![], "not expired before 10 ms");
        assert_eq!(s.old_tombstones(11, 10), vec![(b"ttl".to_vec(), v(2))], "only the value expired before 11 ms");
        for _ in 0..2 {
            // Replay rebuilds the expiries: the same candidates after a reopen.
            drop(s);
            s = Sector::open(os(), &path, 5)?;
            assert_eq!(s.old_tombstones(11, 10), vec![(b"ttl".to_vec(), v(2))]);
        }
        assert!(!s.reap(b"ttl", v(1)), "not the newest version");
        assert!(!s.reap(b"plain", v(6)), "a value without an expiry is never reaped");
        assert!(!s.reap(b"rewritten", v(5)), "nor one rewritten without its expiry");
        assert!(s.reap(b"ttl", v(2)));
        assert_eq!(s.get(b"ttl")?, None, "forgotten");
        assert!(s.old_tombstones(u64::MAX, 10).iter().all(|(k, _)| k != b"ttl"));
        assert_eq!(s.old_tombstones(u64::MAX, 10), vec![(b"later".to_vec(), v(3))]);
        assert_eq!(s.expiring_keys(), 1, "only later still has an expiry");
        s.compact()?;
        drop(s);
        let s = Sector::open(os(), &path, 5)?;
        assert_eq!(s.get(b"ttl")?, None, "compaction left the expired value and the one before it behind");
        assert_eq!(s.get(b"later")?.map(|i| i.expires), Some(1_000));
        assert_eq!(value_of(&s, b"rewritten"), Some(b"no ttl".to_vec()));
        Ok(())
    }

    #[test]
    fn an_undone_write_gives_the_key_its_expiry_back() -> Result<()> {
        let dir = TestDir::new("sector-undo-expiry");
        let mut s = Sector::open(os(), &dir.path().join("6"), 6)?;
        s.apply_expiring(b"k", v(1), Some(b"v"), 10)?;
        let undo = s.apply_undoable(b"k", v(2), Some(b"w"), 0)?.unwrap();
        assert_eq!(s.old_tombstones(u64::MAX, 10), vec![]);
        s.undo(b"k", undo)?;
        assert_eq!(s.old_tombstones(u64::MAX, 10), vec![(b"k".to_vec(), v(1))]);
        let undo = s.apply_undoable(b"new", v(3), Some(b"x"), 5)?.unwrap();
        s.undo(b"new", undo)?;
        assert_eq!(s.old_tombstones(u64::MAX, 10), vec![(b"k".to_vec(), v(1))]);
        Ok(())
    }

    #[test]
    fn compaction_shrinks_and_keeps_live_values_and_tombstones() -> Result<()> {
        let dir = TestDir::new("sector-compact");
        let path = dir.path().join("9");
        let mut s = Sector::open(os(), &path, 9)?;
        let big = vec![7u8; 4096];
        let mut ms = 1;
        // Overwrite ten keys until compaction triggers on its own.
        let mut compacted = false;
        let mut peak = 0;
        while !compacted {
            for k in 0..10u8 {
                ms += 1;
                s.apply(&[k], v(ms), Some(&big))?;
            }
            peak = peak.max(dir_size(&path));
            compacted = s.maybe_compact()?;
        }
        assert!(ms > 250, "needs at least 1 MiB dead first");
        s.apply(b"dead", v(ms + 1), None)?;
        s.apply(b"last", v(ms + 2), Some(b"final"))?;
        s.compact()?;
        let after = dir_size(&path);
        assert!(after < peak / 10, "{after} vs {peak}");
        assert_eq!(s.dead_bytes(), 0);
        assert_eq!(log::list_generations(&OsDisk, &path)?.len(), 1);
        drop(s);

        let mut s = Sector::open(os(), &path, 9)?;
        for k in 0..10u8 {
            assert_eq!(value_of(&s, &[k]), Some(big.clone()));
        }
        assert_eq!(s.get(b"dead")?, Some(Item { version: v(ms + 1), value: None, expires: 0 }));
        assert_eq!(value_of(&s, b"last"), Some(b"final".to_vec()));
        assert_eq!(dir_size(&path), after);
        assert!(!s.apply(b"dead", v(ms), Some(b"zombie"))?);
        Ok(())
    }

    #[test]
    fn leftover_segments_are_merged_at_open() -> Result<()> {
        let dir = TestDir::new("sector-leftover");
        let path = dir.path().join("2");
        let mut s = Sector::open(os(), &path, 2)?;
        s.apply(b"a", v(1), Some(b"one"))?;
        s.sync()?;
        drop(s);
        // A crash after a compaction wrote its copy but before it deleted
        // the old segment leaves two generations with the same records.
        fs::copy(log::segment_path(&path, 1), log::segment_path(&path, 2))?;
        let s = Sector::open(os(), &path, 2)?;
        assert_eq!(log::list_generations(&OsDisk, &path)?, vec![3]);
        assert_eq!(value_of(&s, b"a"), Some(b"one".to_vec()));
        Ok(())
    }

    #[test]
    fn oversized_writes_are_refused() -> Result<()> {
        let dir = TestDir::new("sector-big");
        let mut s = Sector::open(os(), &dir.path().join("0"), 0)?;
        let key = vec![1u8; crate::store::record::MAX_KEY + 1];
        assert!(matches!(s.apply(&key, v(1), None), Err(Error::TooLarge { .. })));
        assert_eq!(s.len(), 0);
        Ok(())
    }
}
