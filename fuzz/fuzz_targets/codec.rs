//! The wire codec (`net::codec`): header line and payload.
//!
//! Never panics on any bytes; `check`, `decode` and `parse` agree; a
//! decoded message re-encodes to bytes that decode to the same message,
//! and that encoding is stable.
#![no_main]

use gtstore::net::codec::{self, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let checked = codec::check(data, &limits);
    match codec::decode(data, &limits) {
        Ok(None) => assert_eq!(checked, Ok(None)),
        Ok(Some((msg, n))) => {
            assert_eq!(checked, Ok(Some(n)));
            assert_eq!(codec::parse(&data[..n]).as_ref(), Ok(&msg));
            let bytes = codec::to_bytes(&msg);
            let again = codec::decode(&bytes, &limits);
            assert_eq!(again, Ok(Some((msg.clone(), bytes.len()))), "re-encoded {msg:?}");
            assert_eq!(codec::to_bytes(&msg), bytes);
        }
        Err(e) => match checked {
            Ok(Some(n)) => assert_eq!(codec::parse(&data[..n]), Err(e)),
            other => assert_eq!(other, Err(e)),
        },
    }
});
