//! Answers pgsluice writes itself (`Disp::Synth`) or swallows (`Disp::Swallow`) for the
//! messages it adds or answers on the client's behalf (prepared statements).

use super::*;

#[test]
fn synthesised_answers_come_in_order() {
    let mut t = Tracker::default();
    t.client_msg(b'B');
    t.client_msg_as(b'P', Disp::Synth, false);
    t.client_msg(b'E');
    t.client_msg_as(b'C', Disp::Synth, false);
    t.client_msg(b'S');
    assert_eq!(t.take_synth(), None, "Bind is answered first");
    assert_eq!(t.server_msg(b'2', 0), ServerAction::Forward);
    assert_eq!(t.take_synth(), Some(Synth::ParseComplete));
    assert_eq!(t.take_synth(), None);
    t.server_msg(b'D', 0);
    assert_eq!(t.server_msg(b'C', 0), ServerAction::Forward);
    assert_eq!(t.take_synth(), Some(Synth::CloseComplete));
    t.server_msg(b'Z', b'I');
    assert!(t.may_release());
    assert!(!t.desync());
}

#[test]
fn synthesised_answer_after_error_is_never_written() {
    let mut t = Tracker::default();
    t.client_msg(b'B');
    t.client_msg_as(b'P', Disp::Synth, true);
    t.client_msg(b'S');
    t.server_msg(b'E', 0);
    assert_eq!(t.take_synth(), None);
    assert_eq!(t.take_outcome(), Some(Outcome::Skipped));
    t.server_msg(b'Z', b'I');
    assert!(t.may_release());
}

#[test]
fn injected_parse_answer_is_swallowed_but_its_error_is_not() {
    let mut t = Tracker::default();
    t.client_msg_as(b'P', Disp::Swallow, true);
    t.client_msg(b'B');
    t.client_msg(b'S');
    assert_eq!(t.server_msg(b'1', 0), ServerAction::Swallow);
    assert_eq!(t.take_outcome(), Some(Outcome::Done));
    assert_eq!(t.server_msg(b'2', 0), ServerAction::Forward);
    t.server_msg(b'Z', b'I');
    t.client_msg_as(b'P', Disp::Swallow, true);
    t.client_msg_as(b'B', Disp::Forward, true);
    t.client_msg(b'S');
    assert_eq!(t.server_msg(b'E', 0), ServerAction::Forward);
    assert_eq!(t.take_outcome(), Some(Outcome::Failed));
    assert_eq!(t.take_outcome(), Some(Outcome::Skipped));
    t.server_msg(b'Z', b'I');
    assert!(t.may_release());
}
