//! The admin console: the virtual database `pgbouncer`. Same login path as any client up to
//! the startup packet, then its own authentication (admin_users / stats_users / same-uid
//! `pgbouncer` over the Unix socket), its own welcome, and a command loop that answers
//! PgBouncer's SHOW and control commands over the simple and the extended query protocol.

pub mod commands;
pub mod console;
pub mod show;

use crate::proto::PgError;

/// Who is on the console.
#[derive(Debug, Clone)]
pub struct AdminUser {
    pub name: String,
    /// `admin_users` (every command) vs `stats_users` (SHOW only).
    pub admin: bool,
    /// Console client id (SHOW CLIENTS id; CancelRequest target).
    pub id: u64,
}

/// Column type OIDs used by PgBouncer's result sets.
pub mod oid {
    pub const TEXT: u32 = 25;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const NUMERIC: u32 = 1700;
    pub const BYTEA: u32 = 17;
}

/// What a console command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// RowDescription, DataRows, then CommandComplete `tag` (normally `SHOW`).
    Rows {
        columns: Vec<(String, u32)>,
        rows: Vec<Vec<Option<String>>>,
        tag: String,
    },
    /// CommandComplete only (`PAUSE`, `RESUME`, `RELOAD`, `SET key=value`, …).
    Done(String),
    /// A NoticeResponse, then CommandComplete `tag`.
    NoticeDone {
        notice: String,
        detail: Option<String>,
        tag: String,
    },
}

/// Console errors are `ERROR 08P01 <text>` and the session continues (PgBouncer), except
/// where a command says otherwise (RELOAD failure uses F0000).
pub fn console_error(text: impl Into<String>) -> PgError {
    PgError::error(crate::proto::error::PROTOCOL_VIOLATION, text)
}
