//! The on-disk record decoder (`store::record`).
//!
//! Never panics; a decoded record re-encodes to exactly the bytes it was
//! decoded from (the format is canonical), and reading a buffer record by
//! record (as a segment is replayed) agrees with decoding each in turn.
#![no_main]

use gtstore::store::record::{self, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut reader = data;
    loop {
        let got = record::decode(rest);
        let read = record::read_record(&mut reader).expect("a slice cannot fail to read");
        assert_eq!(got, read);
        let Decoded::Record { record, len } = got else { break };
        let len = len as usize;
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        assert_eq!(bytes.len(), record.encoded_len());
        assert_eq!(bytes, rest[..len], "{record:?}");
        let section = record::value_section_len(record.value.as_deref(), record.expires);
        assert!(record::check_lengths(record.key.len(), section).is_ok());
        rest = &rest[len..];
    }
});
