//! The client scripts of the property test: messages, how the server will take each, and
//! the proptest strategies that generate them.

use crate::session::tracker::Disp;
use proptest::prelude::*;

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
    pub(super) fn disp(self) -> Disp {
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
