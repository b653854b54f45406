//! COPY IN and COPY OUT, started by a simple Query or by Execute, ended by CopyDone or
//! CopyFail.

use super::*;

#[test]
fn simple_copy_in() {
    let mut t = Tracker::default();
    run(&mut t, b"Q", &[(b'G', 0)]);
    assert!(!t.may_release());
    run(&mut t, b"dddc", &[(b'C', 0), (b'Z', b'I')]);
    assert!(t.may_release());
}

#[test]
fn extended_copy_in_swallowed_sync() {
    // libpq: P B D E S, then CopyData…, CopyDone, Sync.
    let mut t = Tracker::default();
    run(
        &mut t,
        b"PBDES",
        &[(b'1', 0), (b'2', 0), (b'n', 0), (b'G', 0)],
    );
    run(&mut t, b"ddc", &[]);
    assert!(!t.may_release());
    run(&mut t, b"S", &[(b'C', 0), (b'Z', b'I')]);
    assert!(t.may_release());
    assert!(!t.desync());
}

#[test]
fn extended_copy_in_failed() {
    let mut t = Tracker::default();
    run(&mut t, b"BES", &[(b'2', 0), (b'G', 0)]);
    run(&mut t, b"df", &[(b'E', 0)]);
    assert!(!t.may_release());
    run(&mut t, b"S", &[(b'Z', b'I')]);
    assert!(t.may_release());
}

#[test]
fn copy_fail() {
    let mut t = Tracker::default();
    run(&mut t, b"Q", &[(b'G', 0)]);
    run(&mut t, b"f", &[(b'E', 0), (b'Z', b'I')]);
    assert!(t.may_release());
}

#[test]
fn copy_out() {
    let mut t = Tracker::default();
    run(&mut t, b"Q", &[(b'H', 0), (b'd', 0)]);
    assert!(!t.may_release());
    run(&mut t, b"", &[(b'c', 0), (b'C', 0), (b'Z', b'I')]);
    assert!(t.may_release());
}
