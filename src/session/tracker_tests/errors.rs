//! Errors: skipping to the next Sync after an ErrorResponse, and answers the protocol does
//! not allow (desync).

use super::*;

#[test]
fn error_mid_pipeline_skips_to_sync() {
    let mut t = Tracker::default();
    run(&mut t, b"PBESPBES", &[(b'E', 0)]);
    // Parse failed: Bind and Execute of that batch are skipped, its Sync is next.
    assert_eq!(t.head(), Some(Expect::Sync));
    run(
        &mut t,
        b"",
        &[(b'Z', b'I'), (b'1', 0), (b'2', 0), (b'C', 0)],
    );
    assert!(!t.may_release());
    run(&mut t, b"", &[(b'Z', b'I')]);
    assert!(t.may_release());
    assert!(!t.desync());
}

#[test]
fn error_without_sync_skips_later_messages_until_sync() {
    let mut t = Tracker::default();
    t.client_msg_as(b'P', Disp::Forward, true);
    t.client_msg(b'H');
    t.server_msg(b'E', 0);
    assert_eq!(t.take_outcome(), Some(Outcome::Failed));
    assert!(t.skipping());
    // Sent after the error, before the Sync: discarded by the server.
    t.client_msg_as(b'P', Disp::Synth, true);
    t.client_msg(b'B');
    t.client_msg(b'Q');
    assert_eq!(t.take_outcome(), Some(Outcome::Skipped));
    assert_eq!(t.take_synth(), None);
    assert_eq!(t.queued(), 0);
    t.client_msg(b'S');
    assert!(!t.skipping());
    assert!(!t.may_release());
    t.server_msg(b'Z', b'I');
    assert!(t.may_release());
}

#[test]
fn stray_answer_is_a_desync() {
    let mut t = Tracker::default();
    t.client_msg(b'B');
    t.server_msg(b'1', 0);
    assert!(t.desync());
}

/// Found by the `frontend` fuzz target: an ErrorResponse during COPY IN answered an
/// Execute the client had sent in copy mode (its Sync ignored by the server). The server
/// then skips to a Sync that was never queued: until the client sends one, the server is
/// not quiet and a simple Query is discarded, so it must not be released.
#[test]
fn error_leaving_the_server_skipping_to_an_unsent_sync_is_not_quiet() {
    let mut t = Tracker::default();
    t.server_msg(b'G', 0); // CopyInResponse
    t.client_msg(b'E'); // Execute in copy mode
    t.client_msg(b'S'); // ignored by the server during COPY IN
    t.server_msg(b'E', 0); // the COPY fails
    assert!(t.skipping());
    assert!(!t.quiet() && !t.may_release());
    t.client_msg(b'Q'); // discarded by the server while skipping
    assert!(!t.quiet() && !t.may_release());
    t.client_msg(b'S');
    assert!(!t.quiet());
    t.server_msg(b'Z', b'I');
    assert!(t.quiet() && t.may_release());
}
