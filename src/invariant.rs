//! Invariants asserted inside the roles (TigerBeetle's TIGER_STYLE: assert
//! what must hold, so a silent corruption becomes a loud failure at the
//! seed that caused it).
//!
//! In the daemons a check costs a thread-local flag test and nothing is
//! recorded: an invariant that fails in production is logged by the role
//! as the error it causes, and the daemon goes on. The simulator turns the
//! checks on for its thread and reports every broken invariant as a
//! failure of the seed, with the time and process it broke in.

use std::cell::{Cell, RefCell};

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static BROKEN: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Turns recording on or off for this thread (the simulator's).
pub fn enable(on: bool) {
    ON.with(|o| o.set(on));
}

/// True when checks are recorded: guards an invariant whose test itself
/// costs work (a scan), so the daemons never pay for it.
#[inline]
pub fn enabled() -> bool {
    ON.with(Cell::get)
}

/// Records `what` if `ok` is false and checks are on.
#[inline]
pub fn check(ok: bool, what: impl FnOnce() -> String) {
    if !ok && ON.with(Cell::get) {
        let line = what();
        BROKEN.with(|b| b.borrow_mut().push(line));
    }
}

/// The invariants broken since the last call.
pub fn take() -> Vec<String> {
    BROKEN.with(|b| std::mem::take(&mut *b.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_enabled_thread_records() {
        check(false, || "off".into());
        assert!(take().is_empty());
        enable(true);
        check(true, || "holds".into());
        check(false, || "broken".into());
        assert_eq!(take(), vec!["broken".to_string()]);
        enable(false);
    }
}
