//! The extended query protocol: pipelines of Syncs, Flush without Sync, Describe,
//! suspended portals, batch and sequence numbers.

use super::*;

#[test]
fn pipeline_of_syncs() {
    let mut t = Tracker::default();
    run(
        &mut t,
        b"PBESPBESPBES",
        &[(b'1', 0), (b'2', 0), (b'C', 0), (b'Z', b'I')],
    );
    assert!(!t.may_release());
    assert_eq!(t.owed(), 2);
    run(
        &mut t,
        b"",
        &[(b'1', 0), (b'2', 0), (b'C', 0), (b'Z', b'I')],
    );
    assert!(!t.may_release());
    run(
        &mut t,
        b"",
        &[(b'1', 0), (b'2', 0), (b'C', 0), (b'Z', b'I')],
    );
    assert!(t.may_release());
    assert!(!t.desync());
}

#[test]
fn extended_without_sync_holds_server() {
    let mut t = Tracker::default();
    run(&mut t, b"PBEH", &[(b'1', 0), (b'2', 0), (b'C', 0)]);
    assert!(!t.may_release());
    assert_eq!(t.queued(), 0);
    run(&mut t, b"S", &[(b'Z', b'I')]);
    assert!(t.may_release());
}

#[test]
fn describe_statement_and_portal() {
    let mut t = Tracker::default();
    run(
        &mut t,
        b"PDS",
        &[(b'1', 0), (b't', 0), (b'T', 0), (b'Z', b'I')],
    );
    run(
        &mut t,
        b"PDS",
        &[(b'1', 0), (b't', 0), (b'n', 0), (b'Z', b'I')],
    );
    run(
        &mut t,
        b"BDES",
        &[(b'2', 0), (b'T', 0), (b'D', 0), (b'C', 0)],
    );
    assert!(!t.may_release());
    run(&mut t, b"", &[(b'Z', b'I')]);
    assert!(t.may_release());
    assert!(!t.desync());
}

#[test]
fn portal_suspended_and_empty_query() {
    let mut t = Tracker::default();
    run(
        &mut t,
        b"BEEBES",
        &[
            (b'2', 0),
            (b'D', 0),
            (b's', 0),
            (b'C', 0),
            (b'2', 0),
            (b'I', 0),
        ],
    );
    assert_eq!(t.head(), Some(Expect::Sync));
    run(&mut t, b"", &[(b'Z', b'I')]);
    assert!(t.may_release());
    assert!(!t.desync());
}

#[test]
fn batches_and_sequence_numbers() {
    let mut t = Tracker::default();
    assert_eq!((t.pushed(), t.batch()), (0, 0));
    t.client_msg(b'P');
    t.client_msg(b'H');
    t.client_msg(b'S');
    assert_eq!((t.pushed(), t.batch()), (2, 1));
    assert_eq!(t.head_seq(), Some(0));
}
