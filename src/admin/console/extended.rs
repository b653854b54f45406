//! The extended query protocol on the console, which PgBouncer lacks: Parse, Bind,
//! Describe, Execute (with row limits and PortalSuspended), Close, Sync, with PostgreSQL's
//! error-until-Sync behaviour and SQLSTATEs for unknown statements and portals. Commands
//! take no parameters. Describe of a SHOW computes the result (SHOW has no side effects)
//! and a portal keeps it for Execute; control commands only ever run at Execute.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use super::{execute, parse_query, show_target, wire, Command, MAX_PREPARED};
use crate::admin::{console_error, AdminUser, Reply};
use crate::control::App;
use crate::net::msgio::Msg;
use crate::proto::backend::{self, message};
use crate::proto::error::notice;
use crate::proto::frame::read_cstr;
use crate::proto::PgError;

/// A prepared console command.
struct Statement {
    text: String,
    /// `None` for an empty query (answered with EmptyQueryResponse, as PostgreSQL).
    cmd: Option<Command>,
}

/// A result being sent: computed at Describe (SHOW only) or at the first Execute, then
/// sent in Execute-sized pieces.
struct Pending {
    columns: Option<Vec<(String, u32)>>,
    rows: VecDeque<Vec<Option<String>>>,
    notice: Option<(String, Option<String>)>,
    tag: String,
}

impl From<Reply> for Pending {
    fn from(r: Reply) -> Self {
        match r {
            Reply::Rows { columns, rows, tag } => Pending {
                columns: Some(columns),
                rows: rows.into(),
                notice: None,
                tag,
            },
            Reply::Done(tag) => Pending {
                columns: None,
                rows: VecDeque::new(),
                notice: None,
                tag,
            },
            Reply::NoticeDone {
                notice,
                detail,
                tag,
            } => Pending {
                columns: None,
                rows: VecDeque::new(),
                notice: Some((notice, detail)),
                tag,
            },
        }
    }
}

struct Portal {
    stmt: Arc<Statement>,
    /// Result format codes from Bind.
    formats: Vec<i16>,
    result: Option<Pending>,
}

#[derive(Default)]
pub(super) struct Extended {
    statements: HashMap<String, Arc<Statement>>,
    portals: HashMap<String, Portal>,
    /// An error happened: drop messages until Sync.
    pub(super) skipping: bool,
}

/// Reads the fields of an extended-protocol message.
struct Fields<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Fields { b, pos: 0, what }
    }

    fn broken(&self) -> PgError {
        console_error(format!("broken {} packet", self.what))
    }

    fn cstr(&mut self) -> Result<&'a str, PgError> {
        read_cstr(self.b, &mut self.pos).ok_or_else(|| self.broken())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.broken())?;
        let s = self.b.get(self.pos..end).ok_or_else(|| self.broken())?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PgError> {
        Ok(self.bytes(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, PgError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, PgError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative count.
    fn count(&mut self) -> Result<usize, PgError> {
        usize::try_from(self.i16()?).map_err(|_| self.broken())
    }
}

fn no_parameters() -> PgError {
    console_error("the admin console does not take parameters")
}

fn pg_error(code: &str, text: String) -> PgError {
    PgError::error(code, text)
}

impl Extended {
    pub(super) fn parse(&mut self, msg: &Msg, out: &mut BytesMut) -> Result<(), PgError> {
        let mut f = Fields::new(&msg.body, "Parse");
        let name = f.cstr()?;
        let text = f.cstr()?;
        if f.count()? != 0 {
            return Err(no_parameters());
        }
        let cmd = if text.trim_matches([' ', '\t', '\n', '\r', ';']).is_empty() {
            None
        } else {
            Some(parse_query(text)?)
        };
        if !name.is_empty() {
            if self.statements.contains_key(name) {
                return Err(pg_error(
                    "42P05",
                    format!("prepared statement \"{name}\" already exists"),
                ));
            }
            if self.statements.len() >= MAX_PREPARED {
                return Err(console_error("too many prepared statements"));
            }
        }
        self.statements.insert(
            name.to_string(),
            Arc::new(Statement {
                text: text.to_string(),
                cmd,
            }),
        );
        backend::parse_complete(out);
        Ok(())
    }

    pub(super) fn bind(&mut self, msg: &Msg, out: &mut BytesMut) -> Result<(), PgError> {
        let mut f = Fields::new(&msg.body, "Bind");
        let portal = f.cstr()?;
        let stmt = f.cstr()?;
        let nfmt = f.count()?;
        f.bytes(nfmt * 2)?;
        if f.count()? != 0 {
            return Err(no_parameters());
        }
        let nres = f.count()?;
        let mut formats = Vec::with_capacity(nres);
        for _ in 0..nres {
            match f.i16()? {
                c @ (0 | 1) => formats.push(c),
                c => return Err(pg_error("22023", format!("unsupported format code: {c}"))),
            }
        }
        let stmt = self.statements.get(stmt).cloned().ok_or_else(|| {
            pg_error(
                "26000",
                format!("prepared statement \"{stmt}\" does not exist"),
            )
        })?;
        if !portal.is_empty() {
            if self.portals.contains_key(portal) {
                return Err(pg_error(
                    "42P03",
                    format!("portal \"{portal}\" already exists"),
                ));
            }
            if self.portals.len() >= MAX_PREPARED {
                return Err(console_error("too many portals"));
            }
        }
        self.portals.insert(
            portal.to_string(),
            Portal {
                stmt,
                formats,
                result: None,
            },
        );
        message(out, b'2', |_| {}); // BindComplete
        Ok(())
    }

    pub(super) async fn describe(
        &mut self,
        app: &Arc<App>,
        user: &AdminUser,
        msg: &Msg,
        out: &mut BytesMut,
    ) -> Result<(), PgError> {
        let mut f = Fields::new(&msg.body, "Describe");
        let kind = f.u8()?;
        let name = f.cstr()?;
        match kind {
            b'S' => {
                let stmt = self.statements.get(name).cloned().ok_or_else(|| {
                    pg_error(
                        "26000",
                        format!("prepared statement \"{name}\" does not exist"),
                    )
                })?;
                let described = describe(app, user, &stmt).await?;
                // ParameterDescription: no parameters, ever.
                message(out, b't', |b| b.extend_from_slice(&0i16.to_be_bytes()));
                write_description(out, described.as_ref(), &[]);
                Ok(())
            }
            b'P' => {
                let portal = self.portals.get_mut(name).ok_or_else(|| {
                    pg_error("34000", format!("portal \"{name}\" does not exist"))
                })?;
                if portal.result.is_none() {
                    portal.result = describe(app, user, &portal.stmt).await?;
                }
                write_description(out, portal.result.as_ref(), &portal.formats);
                Ok(())
            }
            _ => Err(f.broken()),
        }
    }

    pub(super) async fn execute(
        &mut self,
        app: &Arc<App>,
        user: &AdminUser,
        msg: &Msg,
        out: &mut BytesMut,
    ) -> Result<(), PgError> {
        let mut f = Fields::new(&msg.body, "Execute");
        let name = f.cstr()?;
        let max_rows = f.i32()?;
        let portal = self
            .portals
            .get_mut(name)
            .ok_or_else(|| pg_error("34000", format!("portal \"{name}\" does not exist")))?;
        let Some(cmd) = &portal.stmt.cmd else {
            message(out, b'I', |_| {}); // EmptyQueryResponse
            return Ok(());
        };
        if portal.result.is_none() {
            let reply = execute(app, user, &portal.stmt.text, cmd).await?;
            portal.result = Some(reply.into());
        }
        let Some(p) = portal.result.as_mut() else {
            return Ok(());
        };
        let ncols = p.columns.as_ref().map_or(0, Vec::len);
        if portal.formats.len() > 1 && portal.formats.len() != ncols {
            return Err(console_error(format!(
                "bind message has {} result formats but query has {ncols} columns",
                portal.formats.len()
            )));
        }
        if let Some((text, detail)) = p.notice.take() {
            notice(out, &text, detail.as_deref());
        }
        let cols = p.columns.as_deref().unwrap_or_default();
        let mut budget = usize::try_from(max_rows)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(usize::MAX);
        while budget > 0 {
            let Some(r) = p.rows.pop_front() else { break };
            wire::data_row(out, cols, &r, &portal.formats);
            budget -= 1;
        }
        if p.rows.is_empty() {
            backend::command_complete(out, &p.tag);
        } else {
            message(out, b's', |_| {}); // PortalSuspended
        }
        Ok(())
    }

    pub(super) fn close(&mut self, msg: &Msg, out: &mut BytesMut) -> Result<(), PgError> {
        let mut f = Fields::new(&msg.body, "Close");
        let kind = f.u8()?;
        let name = f.cstr()?;
        match kind {
            b'S' => {
                self.statements.remove(name);
            }
            b'P' => {
                self.portals.remove(name);
            }
            _ => return Err(f.broken()),
        }
        backend::close_complete(out);
        Ok(())
    }

    /// A simple Query ends the unnamed statement and portal, as in PostgreSQL.
    pub(super) fn drop_unnamed(&mut self) {
        self.statements.remove("");
        self.portals.remove("");
    }

    /// Sync ends the (implicit) transaction: portals go, as in PostgreSQL.
    pub(super) fn sync(&mut self) {
        self.skipping = false;
        self.portals.clear();
    }
}

/// What Describe reports for a statement: the result of a SHOW (computed now: SHOW has no
/// side effects), or `None` (NoData) for everything else — control commands only run at
/// Execute.
async fn describe(
    app: &Arc<App>,
    user: &AdminUser,
    stmt: &Statement,
) -> Result<Option<Pending>, PgError> {
    match &stmt.cmd {
        Some(cmd) if show_target(cmd).is_some() => {
            Ok(Some(execute(app, user, &stmt.text, cmd).await?.into()))
        }
        _ => Ok(None),
    }
}

fn write_description(out: &mut BytesMut, p: Option<&Pending>, formats: &[i16]) {
    match p.and_then(|p| p.columns.as_ref()) {
        Some(cols) => wire::row_description(out, cols, formats),
        None => message(out, b'n', |_| {}), // NoData
    }
}
