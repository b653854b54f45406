//! Tracker tests: message sequences by hand, then a property test against a reference
//! model (a small simulation of a PostgreSQL backend).

use super::*;

fn run(t: &mut Tracker, client: &[u8], server: &[(u8, u8)]) {
    for &c in client {
        t.client_msg(c);
    }
    for &(s, b) in server {
        t.server_msg(s, b);
    }
}

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
fn function_call() {
    let mut t = Tracker::default();
    run(&mut t, b"F", &[(b'V', 0)]);
    assert!(!t.may_release());
    run(&mut t, b"", &[(b'Z', b'I')]);
    assert!(t.may_release());
}

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

#[test]
fn stray_answer_is_a_desync() {
    let mut t = Tracker::default();
    t.client_msg(b'B');
    t.server_msg(b'1', 0);
    assert!(t.desync());
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

// ------------------------------------------------------------------ the property test

mod model {
    //! A reference model: a simulated PostgreSQL backend that knows which client message
    //! each of its answers belongs to, and what the client must therefore see.

    use super::super::{ClientAction, Disp, Outcome, ServerAction, Synth, Tracker};
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Exec {
        Rows(u8),
        Empty,
        Suspend(u8),
        Fail(u8),
        CopyOut(u8),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Query {
        Rows(u8),
        Fail,
        Begin,
        Commit,
        CopyOut(u8),
    }

    /// One client message of the script, with how the server will take it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Msg {
        Parse {
            disp: Disp,
            fail: bool,
        },
        Bind {
            fail: bool,
        },
        DescS {
            fail: bool,
            rows: bool,
        },
        DescP {
            fail: bool,
            rows: bool,
        },
        Execute(Exec),
        /// Execute starting a COPY IN.
        ExecCopyIn,
        Close {
            disp: Disp,
        },
        Sync,
        Flush,
        Query(Query),
        QueryCopyIn,
        Func {
            fail: bool,
        },
        CopyData,
        CopyDone,
        CopyFail,
    }

    impl Msg {
        pub fn tag(self) -> u8 {
            match self {
                Msg::Parse { .. } => b'P',
                Msg::Bind { .. } => b'B',
                Msg::DescS { .. } | Msg::DescP { .. } => b'D',
                Msg::Execute(_) | Msg::ExecCopyIn => b'E',
                Msg::Close { .. } => b'C',
                Msg::Sync => b'S',
                Msg::Flush => b'H',
                Msg::Query(_) | Msg::QueryCopyIn => b'Q',
                Msg::Func { .. } => b'F',
                Msg::CopyData => b'd',
                Msg::CopyDone => b'c',
                Msg::CopyFail => b'f',
            }
        }
        fn disp(self) -> Disp {
            match self {
                Msg::Parse { disp, .. } | Msg::Close { disp } => disp,
                _ => Disp::Forward,
            }
        }
    }

    /// A unit of the client script.
    #[derive(Debug, Clone)]
    pub enum Unit {
        /// Extended-protocol messages, then Sync, Flush + Sync, Flush, or nothing.
        Ext(Vec<Msg>, u8),
        Simple(Msg),
        /// COPY IN: `ext` = started by Execute (libpq: Bind, Execute, Sync first);
        /// `data` CopyData messages, then CopyDone or CopyFail.
        CopyIn {
            ext: bool,
            data: u8,
            fail: bool,
        },
    }

    fn disp() -> impl Strategy<Value = Disp> {
        prop_oneof![Just(Disp::Forward), Just(Disp::Swallow), Just(Disp::Synth)]
    }

    fn ext_msg() -> impl Strategy<Value = Msg> {
        let fail = prop::bool::weighted(0.15);
        prop_oneof![
            (disp(), fail).prop_map(|(disp, fail)| Msg::Parse { disp, fail }),
            fail.prop_map(|fail| Msg::Bind { fail }),
            (fail, any::<bool>()).prop_map(|(fail, rows)| Msg::DescS { fail, rows }),
            (fail, any::<bool>()).prop_map(|(fail, rows)| Msg::DescP { fail, rows }),
            prop_oneof![
                (0u8..3).prop_map(Exec::Rows),
                Just(Exec::Empty),
                (0u8..3).prop_map(Exec::Suspend),
                (0u8..2).prop_map(Exec::Fail),
                (0u8..3).prop_map(Exec::CopyOut),
            ]
            .prop_map(Msg::Execute),
            disp().prop_map(|disp| Msg::Close { disp }),
        ]
    }

    pub fn unit() -> impl Strategy<Value = Unit> {
        prop_oneof![
            4 => (prop::collection::vec(ext_msg(), 0..6), 0u8..4)
                .prop_map(|(m, end)| Unit::Ext(m, end)),
            2 => prop_oneof![
                (0u8..3).prop_map(|n| Msg::Query(Query::Rows(n))),
                Just(Msg::Query(Query::Fail)),
                Just(Msg::Query(Query::Begin)),
                Just(Msg::Query(Query::Commit)),
                (0u8..3).prop_map(|n| Msg::Query(Query::CopyOut(n))),
                any::<bool>().prop_map(|fail| Msg::Func { fail }),
            ]
            .prop_map(Unit::Simple),
            1 => (any::<bool>(), 0u8..3, prop::bool::weighted(0.3))
                .prop_map(|(ext, data, fail)| Unit::CopyIn { ext, data, fail }),
        ]
    }

    /// What the client sees.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Seen {
        Server(u8),
        Synth(u8),
    }

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
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    #[test]
    fn tracker_matches_a_simulated_backend(
        units in proptest::collection::vec(model::unit(), 0..8),
        effects in proptest::collection::vec(proptest::prelude::any::<bool>(), 1..16),
        choices in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
    ) {
        model::check(&units, &effects, &choices)?;
    }
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
