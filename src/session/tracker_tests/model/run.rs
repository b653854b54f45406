//! One property-test case: the client sends the script, the simulated backend answers and
//! the tracker sees both, interleaved by a random schedule, and must agree with the model
//! after every step.

use super::script::{Msg, Seen, Unit};
use super::Backend;
use crate::session::tracker::{ClientAction, Outcome, ServerAction, Synth, Tracker};
use proptest::prelude::*;
use std::collections::VecDeque;

struct Tracked;
impl Tracked {
    /// Messages that push an entry and may carry an effect (pgsluice never puts one
    /// on a Sync: copy-in mode may eat it).
    fn may_have_effect(m: Msg) -> bool {
        !matches!(
            m,
            Msg::Sync | Msg::Flush | Msg::CopyData | Msg::CopyDone | Msg::CopyFail
        )
    }
}

/// Expands the script into client messages; `Wait` = the client waits for the
/// CopyInResponse before going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Send(Msg),
    Wait,
}

fn expand(units: &[Unit]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut open = false;
    for u in units {
        match u {
            Unit::Ext(msgs, end) => {
                for &m in msgs {
                    steps.push(Step::Send(m));
                    open = true;
                }
                match end {
                    0 => {
                        steps.push(Step::Send(Msg::Sync));
                        open = false;
                    }
                    1 => {
                        steps.push(Step::Send(Msg::Flush));
                        steps.push(Step::Send(Msg::Sync));
                        open = false;
                    }
                    2 => steps.push(Step::Send(Msg::Flush)),
                    _ => {}
                }
            }
            Unit::Simple(m) => steps.push(Step::Send(*m)),
            Unit::CopyIn { ext, data, fail } => {
                // A COPY must reach a server that is not skipping.
                if open {
                    steps.push(Step::Send(Msg::Sync));
                    open = false;
                }
                if *ext {
                    steps.push(Step::Send(Msg::Bind { fail: false }));
                    steps.push(Step::Send(Msg::ExecCopyIn));
                    steps.push(Step::Send(Msg::Sync));
                } else {
                    steps.push(Step::Send(Msg::QueryCopyIn));
                }
                steps.push(Step::Wait);
                for _ in 0..*data {
                    steps.push(Step::Send(Msg::CopyData));
                }
                steps.push(Step::Send(if *fail {
                    Msg::CopyFail
                } else {
                    Msg::CopyDone
                }));
                if *ext {
                    steps.push(Step::Send(Msg::Sync));
                }
            }
        }
    }
    steps
}

/// Runs the script with the scheduling `choices`; panics (fails) on a difference.
pub fn check(units: &[Unit], effects: &[bool], choices: &[u8]) -> Result<(), TestCaseError> {
    let steps = expand(units);
    let mut t = Tracker::default();
    let mut b = Backend {
        tx: b'I',
        ..Default::default()
    };
    // Sent, not yet processed by the backend: (message, effect).
    let mut c2s: VecDeque<(Msg, bool)> = VecDeque::new();
    // Backend output not yet seen by the tracker: tags (ReadyForQuery + status).
    let mut s2c: VecDeque<u8> = VecDeque::new();
    let mut seen: Vec<Seen> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut next = 0usize;
    let mut effect_i = 0usize;
    let mut saw_g = false;
    // Client side: extended messages sent since the last Sync.
    let mut ext_open = false;
    let mut last_z = b'I';
    let mut choice = choices.iter();

    let drain = |t: &mut Tracker, seen: &mut Vec<Seen>, outcomes: &mut Vec<Outcome>| {
        while let Some(s) = t.take_synth() {
            seen.push(Seen::Synth(match s {
                Synth::ParseComplete => b'1',
                Synth::CloseComplete => b'3',
            }));
        }
        while let Some(o) = t.take_outcome() {
            outcomes.push(o);
        }
    };

    loop {
        if next < steps.len() && steps[next] == Step::Wait && saw_g {
            next += 1;
            saw_g = false;
        }
        let can_send = next < steps.len() && steps[next] != Step::Wait;
        let can_process = !c2s.is_empty();
        let can_deliver = !s2c.is_empty();
        if !(can_send || can_process || can_deliver) {
            break;
        }
        let mut options = Vec::with_capacity(3);
        if can_deliver {
            options.push(0);
        }
        if can_process {
            options.push(1);
        }
        if can_send {
            options.push(2);
        }
        let pick = match choice.next() {
            Some(&c) => options[c as usize % options.len()],
            None => options[0],
        };
        match pick {
            0 => {
                let tag = s2c.pop_front().unwrap_or(0);
                let first = if tag == b'Z' {
                    s2c.pop_front().unwrap_or(b'I')
                } else {
                    0
                };
                if tag == b'G' {
                    saw_g = true;
                }
                if tag == b'Z' {
                    last_z = first;
                }
                drain(&mut t, &mut seen, &mut outcomes);
                match t.server_msg(tag, first) {
                    ServerAction::Forward => seen.push(Seen::Server(tag)),
                    ServerAction::Swallow => {}
                }
                drain(&mut t, &mut seen, &mut outcomes);
            }
            1 => {
                let (m, effect) = c2s.pop_front().unwrap_or((Msg::Flush, false));
                b.process(m, effect, &mut s2c);
            }
            _ => {
                let Step::Send(m) = steps[next] else {
                    unreachable!()
                };
                next += 1;
                let effect = Tracked::may_have_effect(m) && {
                    effect_i += 1;
                    effects.get(effect_i % effects.len().max(1)).copied() == Some(true)
                };
                match m.tag() {
                    b'P' | b'B' | b'D' | b'E' | b'C' => ext_open = true,
                    b'S' => ext_open = false,
                    _ => {}
                }
                assert_eq!(t.client_msg(b'X'), ClientAction::Terminate);
                t.client_msg_as(m.tag(), m.disp(), effect);
                c2s.push_back((m, effect));
                drain(&mut t, &mut seen, &mut outcomes);
            }
        }
        let copy = b.copy_in.is_some() || saw_g;
        // A Flush in flight owes nothing.
        let model = c2s.iter().all(|(m, _)| *m == Msg::Flush)
            && s2c.is_empty()
            && !ext_open
            && !copy
            && !b.need_sync
            && !b.skip
            && last_z == b'I';
        prop_assert_eq!(
            t.may_release(),
            model,
            "may_release differs after {:?}; seen {:?}",
            pick,
            seen
        );
        prop_assert!(!t.may_release() || t.quiet());
    }
    prop_assert!(!t.desync(), "desync with a well-behaved backend");
    prop_assert_eq!(&seen, &b.expected);
    prop_assert_eq!(&outcomes, &b.outcomes);
    Ok(())
}
