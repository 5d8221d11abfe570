//! The manager's state file decoder (`manager::load_state`).
//!
//! Never panics; a state that loads is saved (`encode_state`) to bytes
//! that load back to the same state, and that encoding is stable.
#![no_main]

use gtstore::manager::{encode_state, load_state};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((table, pending, next_client)) = load_state(data) else { return };
    assert!(next_client >= 1);
    let bytes = encode_state(&table, pending.as_ref(), next_client);
    let back = load_state(&bytes).expect("a saved state loads");
    assert_eq!(back, (table.clone(), pending.clone(), next_client));
    assert_eq!(encode_state(&back.0, back.1.as_ref(), back.2), bytes);
});
