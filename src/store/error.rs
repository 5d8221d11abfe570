//! The storage layer's error type.
//!
//! Everything under `store` returns [`Result`]. I/O failures are passed
//! through; bytes on disk that do not decode as a record are `Corrupt` with
//! their exact place (a damaged write-ahead log frame followed by good ones
//! is `CorruptWal`); writes past the size caps are `TooLarge` and never
//! reach the disk.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// An error from the storage layer.
#[derive(Debug)]
pub enum Error {
    /// A file system call failed.
    Io(io::Error),
    /// A record on disk failed its CRC or has impossible lengths (corrupt log
    /// or bug). `offset` is where the bad record starts in segment `gen`.
    Corrupt {
        /// The sector whose log is damaged.
        sector: u32,
        /// The generation of the damaged segment file.
        gen: u64,
        /// Byte offset of the first bad record in that file.
        offset: u64,
    },
    /// A write-ahead log frame is damaged and good frames follow it: not a
    /// torn tail but damage to acknowledged writes, so the store refuses
    /// to open rather than cut them off.
    CorruptWal {
        /// The WAL file.
        path: PathBuf,
        /// Byte offset of the damaged frame.
        offset: u64,
    },
    /// A key, value or file is larger than the store accepts.
    TooLarge {
        /// What was too large ("key", "value", ...).
        what: &'static str,
        /// Its length in bytes.
        len: u64,
        /// The largest length accepted.
        limit: u64,
    },
    /// The node does not hold this sector.
    NoSuchSector(u32),
}

/// The storage layer's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Corrupt { sector, gen, offset } => {
                write!(f, "corrupt record in sector {sector}, segment {gen}, at offset {offset}")
            }
            Error::CorruptWal { path, offset } => write!(
                f,
                "{}: damaged frame at offset {offset} before good frames; refusing to cut acknowledged \
                 writes (keep the file for inspection; moving it aside starts the node without them)",
                path.display()
            ),
            Error::TooLarge { what, len, limit } => {
                write!(f, "{what} of {len} bytes exceeds the limit of {limit} bytes")
            }
            Error::NoSuchSector(id) => write!(f, "no such sector: {id}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_place_of_corruption() {
        let e = Error::Corrupt { sector: 7, gen: 3, offset: 120 };
        assert_eq!(e.to_string(), "corrupt record in sector 7, segment 3, at offset 120");
    }

    #[test]
    fn io_errors_convert_and_keep_their_source() {
        let e: Error = io::Error::other("disk on fire").into();
        assert!(matches!(e, Error::Io(_)));
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.to_string().contains("disk on fire"));
    }

    #[test]
    fn too_large_display() {
        let e = Error::TooLarge { what: "key", len: 70_000, limit: 65_536 };
        assert_eq!(e.to_string(), "key of 70000 bytes exceeds the limit of 65536 bytes");
    }
}
