//! A reference model: a simulated PostgreSQL backend that knows which client message
//! each of its answers belongs to, and what the client must therefore see.
//!
//! The client scripts it is driven by are in `script.rs`; `run.rs` runs one through the
//! tracker and this backend and compares what the client sees.

use super::super::{Disp, Outcome};
use std::collections::VecDeque;

mod run;
mod script;

pub use run::check;
pub use script::unit;
use script::{Exec, Msg, Query, Seen};

/// The simulated backend.
#[derive(Default)]
struct Backend {
    skip: bool,
    /// In COPY IN; `Some(true)` = started by Execute.
    copy_in: Option<bool>,
    /// An extended COPY ended: the server waits for the Sync its copy-in mode ate.
    need_sync: bool,
    /// The Execute that started the running COPY IN carries an effect: its outcome
    /// is known when the COPY ends.
    copy_effect: bool,
    tx: u8,
    /// What the client must see, in order.
    expected: Vec<Seen>,
    /// Outcomes of messages sent with an effect.
    outcomes: Vec<Outcome>,
}

impl Backend {
    fn fail_tx(&mut self) {
        if self.tx == b'T' {
            self.tx = b'E';
        }
    }

    /// Processes one client message: its answers go to `out`.
    fn process(&mut self, m: Msg, effect: bool, out: &mut VecDeque<u8>) {
        let mut answers: Vec<u8> = Vec::new();
        let mut outcome = Outcome::Done;
        if let Some(ext) = self.copy_in {
            match m {
                Msg::CopyData | Msg::Sync | Msg::Flush => {}
                Msg::CopyDone => {
                    if std::mem::take(&mut self.copy_effect) {
                        self.outcomes.push(Outcome::Done);
                    }
                    answers.push(b'C');
                    self.copy_in = None;
                    if ext {
                        self.need_sync = true;
                    } else {
                        answers.push(b'Z');
                        answers.push(self.tx);
                    }
                }
                Msg::CopyFail => {
                    if std::mem::take(&mut self.copy_effect) {
                        self.outcomes.push(Outcome::Failed);
                    }
                    answers.push(b'E');
                    self.copy_in = None;
                    self.fail_tx();
                    if ext {
                        self.skip = true;
                    } else {
                        answers.push(b'Z');
                        answers.push(self.tx);
                    }
                }
                _ => unreachable!("the script sends only copy messages in COPY IN"),
            }
            self.emit(m, effect, outcome, &answers, out);
            return;
        }
        if self.skip && m != Msg::Sync {
            if effect {
                self.outcomes.push(Outcome::Skipped);
            }
            return;
        }
        if m.disp() == Disp::Synth {
            if effect {
                self.outcomes.push(Outcome::Done);
            }
            self.expected
                .push(Seen::Synth(if m.tag() == b'P' { b'1' } else { b'3' }));
            return;
        }
        let mut fail = |a: &mut Vec<u8>, s: &mut Backend| {
            a.push(b'E');
            s.skip = true;
            s.fail_tx();
            outcome = Outcome::Failed;
        };
        match m {
            Msg::Parse { fail: true, .. }
            | Msg::Bind { fail: true }
            | Msg::DescS { fail: true, .. }
            | Msg::DescP { fail: true, .. } => fail(&mut answers, self),
            Msg::Parse { .. } => answers.push(b'1'),
            Msg::Bind { .. } => answers.push(b'2'),
            Msg::DescS { rows, .. } => answers.extend([b't', if rows { b'T' } else { b'n' }]),
            Msg::DescP { rows, .. } => answers.push(if rows { b'T' } else { b'n' }),
            Msg::Close { .. } => answers.push(b'3'),
            Msg::Execute(e) => match e {
                Exec::Rows(n) => {
                    answers.extend(std::iter::repeat_n(b'D', n as usize));
                    answers.push(b'C');
                }
                Exec::Empty => answers.push(b'I'),
                Exec::Suspend(n) => {
                    answers.extend(std::iter::repeat_n(b'D', n as usize));
                    answers.push(b's');
                }
                Exec::Fail(n) => {
                    answers.extend(std::iter::repeat_n(b'D', n as usize));
                    fail(&mut answers, self);
                }
                Exec::CopyOut(n) => {
                    answers.push(b'H');
                    answers.extend(std::iter::repeat_n(b'd', n as usize));
                    answers.extend([b'c', b'C']);
                }
            },
            Msg::ExecCopyIn => {
                answers.push(b'G');
                self.copy_in = Some(true);
                self.copy_effect = effect;
                self.emit(m, false, outcome, &answers, out);
                return;
            }
            Msg::QueryCopyIn => {
                answers.push(b'G');
                self.copy_in = Some(false);
            }
            Msg::Sync => {
                self.skip = false;
                self.need_sync = false;
                if self.tx == b'E' || self.tx == b'T' {
                    // Inside a block: Sync does not end it.
                }
                answers.extend([b'Z', self.tx]);
            }
            Msg::Flush | Msg::CopyData | Msg::CopyDone | Msg::CopyFail => {}
            Msg::Query(q) => {
                match q {
                    Query::Rows(n) => {
                        if self.tx == b'E' {
                            answers.push(b'E');
                        } else {
                            answers.push(b'T');
                            answers.extend(std::iter::repeat_n(b'D', n as usize));
                            answers.push(b'C');
                        }
                    }
                    Query::Fail => {
                        answers.push(b'E');
                        self.fail_tx();
                    }
                    Query::Begin => {
                        answers.push(b'C');
                        if self.tx == b'I' {
                            self.tx = b'T';
                        }
                    }
                    Query::Commit => {
                        answers.push(b'C');
                        self.tx = b'I';
                    }
                    Query::CopyOut(n) => {
                        answers.push(b'H');
                        answers.extend(std::iter::repeat_n(b'd', n as usize));
                        answers.extend([b'c', b'C']);
                    }
                }
                answers.extend([b'Z', self.tx]);
            }
            Msg::Func { fail: f } => {
                if f {
                    answers.push(b'E');
                    self.fail_tx();
                } else {
                    answers.push(b'V');
                }
                answers.extend([b'Z', self.tx]);
            }
        }
        self.emit(m, effect, outcome, &answers, out);
    }

    /// Queues `answers` on the wire and records what the client must see of them.
    fn emit(
        &mut self,
        m: Msg,
        effect: bool,
        outcome: Outcome,
        answers: &[u8],
        out: &mut VecDeque<u8>,
    ) {
        if effect {
            self.outcomes.push(outcome);
        }
        let mut i = 0;
        while i < answers.len() {
            let tag = answers[i];
            out.push_back(tag);
            if tag == b'Z' {
                i += 1;
                out.push_back(answers[i]);
            }
            let visible = m.disp() != Disp::Swallow || tag == b'E';
            if visible {
                self.expected.push(Seen::Server(tag));
            }
            i += 1;
        }
    }
}
