//! The simple query protocol: Query and FunctionCall, transaction status, Terminate.

use super::*;

#[test]
fn simple_query_cycle() {
    let mut t = Tracker::default();
    assert!(t.may_release());
    t.client_msg(b'Q');
    assert!(!t.may_release());
    run(
        &mut t,
        b"",
        &[(b'T', 0), (b'D', 0), (b'C', 0), (b'Z', b'I')],
    );
    assert!(t.may_release());
    assert!(!t.desync());
}

#[test]
fn transaction_block_holds_server() {
    let mut t = Tracker::default();
    run(&mut t, b"Q", &[(b'C', 0), (b'Z', b'T')]);
    assert!(!t.may_release());
    assert!(t.quiet());
    run(&mut t, b"Q", &[(b'C', 0), (b'Z', b'I')]);
    assert!(t.may_release());
}

#[test]
fn function_call() {
    let mut t = Tracker::default();
    run(&mut t, b"F", &[(b'V', 0)]);
    assert!(!t.may_release());
    run(&mut t, b"", &[(b'Z', b'I')]);
    assert!(t.may_release());
}

#[test]
fn failed_transaction_is_not_idle() {
    let mut t = Tracker::default();
    run(&mut t, b"Q", &[(b'E', 0), (b'Z', b'E')]);
    assert!(!t.may_release());
    assert_eq!(t.tx_status(), b'E');
}

#[test]
fn terminate_is_not_forwarded() {
    let mut t = Tracker::default();
    assert_eq!(t.client_msg(b'X'), ClientAction::Terminate);
    assert_eq!(t.client_msg(b'Q'), ClientAction::Forward);
}
