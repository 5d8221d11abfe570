//! The in-memory index of a sector: key -> location and version of its
//! newest record.
//!
//! This module owns the packed index types: [`Entry`] (24 bytes per key:
//! segment generation, offset, length, tombstone flag and version) and
//! [`IndexKey`] (16 bytes, short keys inline), and the [`Index`] map built
//! from them. Recovery builds an index by replaying segments; a sector
//! keeps one up to date as it appends. It does no I/O.

use std::collections::HashMap;

use super::log::Loc;
use super::{Error, Result};
use crate::hlc::Version;

/// The index entry of one key: its newest record. Packed into 24 bytes,
/// since there is one per key in memory: the segment generation and offset
/// as u32, the tombstone flag in the length's top bit, and the version with
/// a 16-bit counter and node id (the clock keeps counters below 2^16 and
/// node ids are at most 65535).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    ms: u64,
    counter: u16,
    node: u16,
    gen: u32,
    pos: u32,
    len_and_flag: u32,
}

/// The tombstone bit of `Entry::len_and_flag`.
const TOMBSTONE_BIT: u32 = 1 << 31;

impl Entry {
    /// The entry of a record at `loc`; an error if the segment is past
    /// 4 GiB or the version does not fit the packed form.
    pub fn new(loc: Loc, version: Version, tombstone: bool) -> Result<Entry> {
        let too_large = |what, len| Error::TooLarge { what, len, limit: u64::from(u32::MAX >> 1) };
        let gen = u32::try_from(loc.gen).map_err(|_| too_large("segment generation", loc.gen))?;
        let pos = u32::try_from(loc.pos).map_err(|_| too_large("segment offset", loc.pos))?;
        if loc.len & TOMBSTONE_BIT != 0 {
            return Err(too_large("record", u64::from(loc.len)));
        }
        let counter =
            u16::try_from(version.counter).map_err(|_| too_large("version counter", version.counter.into()))?;
        let node = u16::try_from(version.node).map_err(|_| too_large("version node id", version.node.into()))?;
        let flag = if tombstone { TOMBSTONE_BIT } else { 0 };
        Ok(Entry { ms: version.ms, counter, node, gen, pos, len_and_flag: loc.len | flag })
    }

    /// Where the record is.
    pub fn loc(&self) -> Loc {
        Loc { gen: u64::from(self.gen), pos: u64::from(self.pos), len: self.len_and_flag & !TOMBSTONE_BIT }
    }

    /// The record's version.
    pub fn version(&self) -> Version {
        Version { ms: self.ms, counter: u32::from(self.counter), node: u32::from(self.node) }
    }

    /// The record is a tombstone (the key is deleted).
    pub fn tombstone(&self) -> bool {
        self.len_and_flag & TOMBSTONE_BIT != 0
    }
}

/// Keys up to this many bytes are stored inside the index slot.
pub const INLINE_KEY: usize = 14;

/// A key as the index stores it, in 16 bytes: short keys in place (no
/// allocation of their own), longer ones behind a thin pointer. Hashes and
/// compares as its bytes.
#[derive(Clone)]
pub enum IndexKey {
    /// A key of at most `INLINE_KEY` bytes.
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    /// A longer key.
    #[allow(clippy::box_collection)] // a thin pointer keeps the slot at 16 bytes
    Boxed(Box<Vec<u8>>),
}

impl IndexKey {
    /// The index form of `key`.
    pub fn new(key: &[u8]) -> IndexKey {
        match key.len() {
            n if n <= INLINE_KEY => {
                let mut bytes = [0u8; INLINE_KEY];
                bytes[..n].copy_from_slice(key);
                IndexKey::Inline { len: n as u8, bytes }
            }
            _ => IndexKey::Boxed(Box::new(key.to_vec())),
        }
    }

    /// The key's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            IndexKey::Boxed(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::hash::Hash for IndexKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &IndexKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &IndexKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &IndexKey) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

/// A sector's index: key → newest entry.
pub type Index = HashMap<IndexKey, Entry>;

/// The expiry (wall ms) of each key whose newest entry is a value with one:
/// kept beside the index, so the packed entries of the keys without one
/// stay 24 bytes, and so the reaper finds expired values without reading
/// their records.
pub type Expiries = HashMap<Vec<u8>, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: u64) -> Version {
        Version { ms, counter: 0, node: 1 }
    }

    #[test]
    fn index_slots_stay_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<IndexKey>(), 16);
        let short = IndexKey::new(b"key12345");
        let long = IndexKey::new(&[7u8; 40]);
        assert!(matches!(short, IndexKey::Inline { .. }) && matches!(long, IndexKey::Boxed(_)));
        let mut index = Index::new();
        index.insert(short, Entry::new(Loc { gen: 1, pos: 0, len: 40 }, v(1), false).unwrap());
        assert!(index.contains_key(&b"key12345"[..]) && !index.contains_key(&b"key1234"[..]));
        let big = Version { ms: 1, counter: 70_000, node: 1 };
        assert!(Entry::new(Loc { gen: 1, pos: 0, len: 40 }, big, false).is_err());
    }
}
