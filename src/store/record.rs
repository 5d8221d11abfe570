//! The on-disk record: one write (a put or a tombstone) in a segment file.
//!
//! Layout, integers big-endian:
//!
//! ```text
//! crc32 u32 | flags u8 | key_len u32 | val_len u32 | version 16 B | key | [expires u64] value
//! ```
//!
//! The CRC covers every byte after the CRC field, the rest of the header
//! included, so a damaged length is caught as surely as a damaged value.
//! Bit 0 of `flags` marks a tombstone, whose `val_len` must be 0. Bit 1
//! marks a value with an expiry: the value section (counted by `val_len`)
//! then starts with the absolute expiry, wall-clock ms since the epoch,
//! which is never 0; a tombstone never has one, and records without the
//! bit (every record written before expiry existed) have none. Lengths
//! are checked against [`MAX_KEY`] and [`MAX_VALUE`] before anything is
//! allocated, because the bytes on disk are untrusted. The decoder tells a
//! clean end of data from a torn (short) record and from a corrupt one.

use std::io::{self, Read};

use byteorder::{BigEndian, ByteOrder, ReadBytesExt};

use super::{Error, Result};
use crate::hlc::Version;

/// Header size in bytes: crc, flags, key_len, val_len, version.
pub const HEADER_LEN: usize = 4 + 1 + 4 + 4 + Version::WIRE_LEN;
/// The largest key a record may hold, in bytes.
pub const MAX_KEY: usize = 64 * 1024;
/// The largest value a record may hold, in bytes.
pub const MAX_VALUE: usize = 16 * 1024 * 1024;
/// The largest encoded record, in bytes.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_KEY + MAX_VALUE;
/// Flag bit: the record is a tombstone (a versioned delete).
pub const FLAG_TOMBSTONE: u8 = 1;
/// Flag bit: the value section starts with an 8-byte expiry.
pub const FLAG_EXPIRES: u8 = 2;
/// Bytes of the expiry in the value section of a record that has one.
pub const EXPIRY_LEN: usize = 8;

/// One write as stored on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: Vec<u8>,
    /// The value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The write's version (last-writer-wins order).
    pub version: Version,
    /// When the value expires, wall-clock ms since the epoch; 0 = never
    /// (always 0 for a tombstone).
    pub expires: u64,
}

/// What the decoder found at the current position.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole record whose CRC matched, and its encoded length.
    Record {
        /// The decoded record.
        record: Record,
        /// Its encoded length in bytes.
        len: u32,
    },
    /// No bytes at all: the clean end of the data.
    End,
    /// The data ends inside a record (a write cut short by a crash).
    Torn,
    /// A whole record that fails its CRC or has impossible header fields.
    Corrupt(&'static str),
}

impl Record {
    /// A put of `value` under `key`.
    pub fn put(key: &[u8], value: &[u8], version: Version) -> Record {
        Record { key: key.to_vec(), value: Some(value.to_vec()), version, expires: 0 }
    }

    /// A put of `value` under `key` that expires at `expires` (wall ms; 0 = never).
    pub fn put_expiring(key: &[u8], value: &[u8], version: Version, expires: u64) -> Record {
        Record { key: key.to_vec(), value: Some(value.to_vec()), version, expires }
    }

    /// A tombstone (versioned delete) for `key`.
    pub fn tombstone(key: &[u8], version: Version) -> Record {
        Record { key: key.to_vec(), value: None, version, expires: 0 }
    }

    /// The encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.key.len(), self.value.as_deref(), self.expires)
    }

    /// Appends the encoding to `out`. Callers check the sizes first with
    /// [`check_lengths`]; an oversized record would not decode.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_parts(&self.key, self.value.as_deref(), self.expires, self.version, out);
    }
}

/// The length of the value section of a record: the value, and the
/// expiry if it has one (a tombstone has neither).
pub fn value_section_len(value: Option<&[u8]>, expires: u64) -> usize {
    match value {
        None => 0,
        Some(v) if expires != 0 => v.len().saturating_add(EXPIRY_LEN),
        Some(v) => v.len(),
    }
}

/// Fails with `TooLarge` unless a record with these lengths may be stored
/// (`val_len` is the value section's, see [`value_section_len`]).
pub fn check_lengths(key_len: usize, val_len: usize) -> Result<()> {
    check_one("key", key_len, MAX_KEY)?;
    check_one("value", val_len, MAX_VALUE)
}

fn check_one(what: &'static str, len: usize, limit: usize) -> Result<()> {
    if len > limit {
        return Err(Error::TooLarge { what, len: len as u64, limit: limit as u64 });
    }
    Ok(())
}

/// The encoded length of a record with this key length, value and expiry.
pub fn encoded_len(key_len: usize, value: Option<&[u8]>, expires: u64) -> usize {
    HEADER_LEN.saturating_add(key_len).saturating_add(value_section_len(value, expires))
}

/// Appends the encoding of a record given by its parts, without copying
/// them into a [`Record`] first. `expires` (wall ms, 0 = never) is
/// ignored for a tombstone.
pub fn encode_parts(key: &[u8], value: Option<&[u8]>, expires: u64, version: Version, out: &mut Vec<u8>) {
    let val = value.unwrap_or(&[]);
    let expiry = (value.is_some() && expires != 0).then(|| expires.to_be_bytes());
    let flags = match (value.is_none(), expiry.is_some()) {
        (true, _) => FLAG_TOMBSTONE,
        (false, true) => FLAG_EXPIRES,
        (false, false) => 0,
    };
    let section = value_section_len(value, expires);
    let mut head = Vec::with_capacity(HEADER_LEN - 4);
    head.push(flags);
    put_u32(&mut head, len_u32(key.len()));
    put_u32(&mut head, len_u32(section));
    version.encode(&mut head);

    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(key);
    if let Some(e) = &expiry {
        crc.update(e);
    }
    crc.update(val);

    out.reserve(encoded_len(key.len(), value, expires));
    put_u32(out, crc.finalize());
    out.extend_from_slice(&head);
    out.extend_from_slice(key);
    if let Some(e) = &expiry {
        out.extend_from_slice(e);
    }
    out.extend_from_slice(val);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    let mut b = [0u8; 4];
    BigEndian::write_u32(&mut b, v);
    out.extend_from_slice(&b);
}

/// A length as written to disk; saturates so an unchecked oversized record
/// fails to decode instead of wrapping into a valid-looking one.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The parsed fixed-size header of a record.
struct Header {
    crc: u32,
    tombstone: bool,
    expires: bool,
    key_len: usize,
    val_len: usize,
    version: Version,
}

impl Header {
    /// Parses and checks a header; lengths are capped before any allocation.
    fn parse(raw: &[u8; HEADER_LEN]) -> std::result::Result<Header, &'static str> {
        let mut r: &[u8] = raw;
        let short = |_| "short header";
        let crc = r.read_u32::<BigEndian>().map_err(short)?;
        let flags = r.read_u8().map_err(short)?;
        let key_len = r.read_u32::<BigEndian>().map_err(short)? as usize;
        let val_len = r.read_u32::<BigEndian>().map_err(short)? as usize;
        let version = Version::decode(r).ok_or("short header")?;
        if flags & !(FLAG_TOMBSTONE | FLAG_EXPIRES) != 0 {
            return Err("unknown flag bits");
        }
        if key_len > MAX_KEY {
            return Err("key length over the limit");
        }
        if val_len > MAX_VALUE {
            return Err("value length over the limit");
        }
        let tombstone = flags & FLAG_TOMBSTONE != 0;
        if tombstone && val_len != 0 {
            return Err("tombstone with a value");
        }
        let expires = flags & FLAG_EXPIRES != 0;
        if expires && tombstone {
            return Err("tombstone with an expiry");
        }
        if expires && val_len < EXPIRY_LEN {
            return Err("expiry cut short");
        }
        Ok(Header { crc, tombstone, expires, key_len, val_len, version })
    }

    /// The length of key plus value (both capped by `parse`).
    fn body_len(&self) -> usize {
        self.key_len.saturating_add(self.val_len)
    }

    /// Checks the CRC over the header and `body`, then splits the body.
    fn finish(self, raw: &[u8; HEADER_LEN], mut body: Vec<u8>) -> Decoded {
        let mut crc = crc32fast::Hasher::new();
        crc.update(raw.get(4..).unwrap_or(&[]));
        crc.update(&body);
        if crc.finalize() != self.crc {
            return Decoded::Corrupt("CRC mismatch");
        }
        if body.len() != self.body_len() {
            return Decoded::Corrupt("body length");
        }
        let Ok(len) = u32::try_from(HEADER_LEN.saturating_add(body.len())) else {
            return Decoded::Corrupt("record length");
        };
        let mut value = body.split_off(self.key_len);
        let mut expires = 0;
        if self.expires {
            // `parse` made sure the section holds the expiry.
            expires = value.get(..EXPIRY_LEN).map_or(0, BigEndian::read_u64);
            if expires == 0 {
                return Decoded::Corrupt("zero expiry");
            }
            value.drain(..EXPIRY_LEN);
        }
        let value = if self.tombstone { None } else { Some(value) };
        let record = Record { key: body, value, version: self.version, expires };
        Decoded::Record { record, len }
    }
}

/// The body buffer allocated before any of the body is read; a longer
/// body grows it as it arrives.
const BODY_PRESIZE: usize = 64 * 1024;

/// Reads one record from `r`. I/O errors other than a short read are
/// returned; a short read is `Torn` (or `End` if nothing was read).
pub fn read_record<R: Read>(r: &mut R) -> io::Result<Decoded> {
    let mut raw = [0u8; HEADER_LEN];
    match read_full(r, &mut raw)? {
        0 => return Ok(Decoded::End),
        n if n < HEADER_LEN => return Ok(Decoded::Torn),
        _ => {}
    }
    let header = match Header::parse(&raw) {
        Ok(h) => h,
        Err(why) => return Ok(Decoded::Corrupt(why)),
    };
    // Both lengths are capped by `parse`, and the body grows only as bytes
    // arrive: a header that claims more than the data holds (a torn record,
    // or a damaged WAL scanned for a good frame at every offset) costs what
    // the data holds, not a zeroed buffer of the claimed length.
    let want = header.body_len();
    let mut body = Vec::with_capacity(want.min(BODY_PRESIZE));
    r.take(want as u64).read_to_end(&mut body)?;
    if body.len() < want {
        return Ok(Decoded::Torn);
    }
    Ok(header.finish(&raw, body))
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded {
    let mut r = buf;
    // Reading from a slice cannot fail; treat the impossible as torn.
    read_record(&mut r).unwrap_or(Decoded::Torn)
}

/// Reads until `buf` is full or the reader is exhausted; returns the count.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n = n.saturating_add(k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n.min(buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: u64) -> Version {
        Version { ms, counter: 2, node: 9 }
    }

    fn encoded(rec: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        rec.encode(&mut out);
        out
    }

    /// A header with the given flags and lengths and a CRC that matches it.
    fn raw_header(flags: u8, key_len: u32, val_len: u32) -> Vec<u8> {
        let mut head = vec![flags];
        head.extend_from_slice(&key_len.to_be_bytes());
        head.extend_from_slice(&val_len.to_be_bytes());
        v(1).encode(&mut head);
        let mut out = crc32fast::hash(&head).to_be_bytes().to_vec();
        out.extend_from_slice(&head);
        out
    }

    #[test]
    fn put_round_trips() {
        let rec = Record::put(b"key", b"some value", v(5));
        let bytes = encoded(&rec);
        assert_eq!(bytes.len(), rec.encoded_len());
        assert_eq!(bytes.len(), HEADER_LEN + 3 + 10);
        let len = bytes.len() as u32;
        assert_eq!(decode(&bytes), Decoded::Record { record: rec, len });
    }

    #[test]
    fn tombstone_and_empty_parts_round_trip() {
        for rec in [
            Record::tombstone(b"gone", v(7)),
            Record::put(b"", b"", v(0)),
            Record::put(b"k", &[0xff; 1000], v(u64::MAX)),
        ] {
            let bytes = encoded(&rec);
            let len = bytes.len() as u32;
            assert_eq!(decode(&bytes), Decoded::Record { record: rec, len });
        }
    }

    #[test]
    fn an_expiring_put_round_trips_and_old_records_have_no_expiry() {
        let rec = Record::put_expiring(b"key", b"value", v(5), 1_800_000_000_000);
        let bytes = encoded(&rec);
        assert_eq!(bytes.len(), HEADER_LEN + 3 + EXPIRY_LEN + 5);
        assert_eq!(bytes[4], FLAG_EXPIRES);
        assert_eq!(&bytes[9..13], &((EXPIRY_LEN + 5) as u32).to_be_bytes(), "val_len counts the expiry");
        let len = bytes.len() as u32;
        assert_eq!(decode(&bytes), Decoded::Record { record: rec.clone(), len });
        // An empty value with an expiry, and a tombstone given an expiry (dropped).
        let empty = Record::put_expiring(b"k", b"", v(6), 1);
        let len = encoded(&empty).len() as u32;
        assert_eq!(decode(&encoded(&empty)), Decoded::Record { record: empty, len });
        let mut tomb = Record::tombstone(b"k", v(7));
        tomb.expires = 99;
        let bytes = encoded(&tomb);
        tomb.expires = 0;
        assert_eq!(decode(&bytes), Decoded::Record { record: tomb, len: bytes.len() as u32 });
        // A record without the flag (as every build before expiry wrote it) reads with none.
        let plain = encoded(&Record::put(b"key", b"value", v(5)));
        assert!(matches!(decode(&plain), Decoded::Record { record, .. } if record.expires == 0));
    }

    #[test]
    fn damaged_expiring_records_are_caught() {
        let bytes = encoded(&Record::put_expiring(b"key", b"value", v(3), 1_800_000_000_000));
        for cut in 1..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Decoded::Torn, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let got = decode(&bad);
                assert!(matches!(got, Decoded::Corrupt(_) | Decoded::Torn), "byte {i} bit {bit}: {got:?}");
            }
        }
        // Headers whose CRC matches but whose fields cannot be.
        assert_eq!(decode(&raw_header(FLAG_EXPIRES, 1, 7)), Decoded::Corrupt("expiry cut short"));
        assert_eq!(
            decode(&raw_header(FLAG_EXPIRES | FLAG_TOMBSTONE, 1, 0)),
            Decoded::Corrupt("tombstone with an expiry")
        );
        let mut zero = raw_header(FLAG_EXPIRES, 1, 9);
        let mut body = b"k".to_vec();
        body.extend_from_slice(&0u64.to_be_bytes());
        body.push(b'v');
        let mut crc = crc32fast::Hasher::new();
        crc.update(&zero[4..]);
        crc.update(&body);
        zero[..4].copy_from_slice(&crc.finalize().to_be_bytes());
        zero.extend_from_slice(&body);
        assert_eq!(decode(&zero), Decoded::Corrupt("zero expiry"));
    }

    #[test]
    fn two_records_decode_in_sequence() {
        let a = Record::put(b"a", b"1", v(1));
        let b = Record::tombstone(b"b", v(2));
        let mut bytes = encoded(&a);
        b.encode(&mut bytes);
        let mut r: &[u8] = &bytes;
        assert!(matches!(read_record(&mut r).unwrap(), Decoded::Record { record, .. } if record == a));
        assert!(matches!(read_record(&mut r).unwrap(), Decoded::Record { record, .. } if record == b));
        assert_eq!(read_record(&mut r).unwrap(), Decoded::End);
    }

    #[test]
    fn empty_input_is_end_and_short_input_is_torn() {
        assert_eq!(decode(&[]), Decoded::End);
        let bytes = encoded(&Record::put(b"key", b"value", v(3)));
        for cut in 1..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Decoded::Torn, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encoded(&Record::put(b"key", b"value", v(3)));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let got = decode(&bad);
                assert!(matches!(got, Decoded::Corrupt(_) | Decoded::Torn), "byte {i} bit {bit}: {got:?}");
            }
        }
    }

    #[test]
    fn oversized_lengths_are_rejected_before_allocating() {
        // Only the header is present: if the decoder trusted the lengths it
        // would try to allocate gigabytes or report a torn record.
        assert_eq!(decode(&raw_header(0, u32::MAX, 0)), Decoded::Corrupt("key length over the limit"));
        assert_eq!(decode(&raw_header(0, 1, u32::MAX)), Decoded::Corrupt("value length over the limit"));
        assert_eq!(decode(&raw_header(0, MAX_KEY as u32 + 1, 0)), Decoded::Corrupt("key length over the limit"));
        assert_eq!(decode(&raw_header(0, 0, MAX_VALUE as u32 + 1)), Decoded::Corrupt("value length over the limit"));
    }

    #[test]
    fn a_header_claiming_more_than_the_data_holds_is_torn() {
        // Found by the record fuzz target: the body was a zeroed buffer of
        // the claimed length (up to 16 MiB per candidate frame in a WAL
        // scan); now it holds only the bytes that exist.
        let mut bytes = raw_header(0, 1, MAX_VALUE as u32);
        bytes.extend_from_slice(b"abc");
        assert_eq!(decode(&bytes), Decoded::Torn);
    }

    #[test]
    fn impossible_flags_are_corrupt() {
        assert_eq!(decode(&raw_header(0x80, 1, 0)), Decoded::Corrupt("unknown flag bits"));
        assert_eq!(decode(&raw_header(FLAG_TOMBSTONE, 1, 4)), Decoded::Corrupt("tombstone with a value"));
    }

    #[test]
    fn check_lengths_enforces_the_caps() {
        assert!(check_lengths(MAX_KEY, MAX_VALUE).is_ok());
        assert!(matches!(check_lengths(MAX_KEY + 1, 0), Err(Error::TooLarge { what: "key", .. })));
        assert!(matches!(check_lengths(0, MAX_VALUE + 1), Err(Error::TooLarge { what: "value", .. })));
    }
}
