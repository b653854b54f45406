//! The console session: login of the virtual database `pgbouncer`, then the command loop.
//!
//! Login (called from `session::login` after the startup packet, still under
//! client_login_timeout): user `pgbouncer` over the Unix socket from our own uid is admin
//! without a password; with `auth_type = any` everyone is admin; otherwise the user
//! authenticates exactly like a normal client and must be in `admin_users` (every
//! command) or `stats_users` (SHOW only), else FATAL `not allowed`. Console sessions do
//! not count against max_client_conn or the per-database/user client caps, and are
//! allowed during shutdown.
//!
//! The loop runs outside the login timeout. Simple Query carries one command (PgBouncer's
//! grammar, `grammar.rs`); errors are `ERROR 08P01` followed by ReadyForQuery and the
//! session continues. Beyond PgBouncer, the extended query protocol is served too
//! (Parse/Bind/Describe/Execute/Close/Flush/Sync, no parameters) so drivers that only
//! speak it (psycopg 3, Npgsql, pgjdbc, tokio-postgres) can read SHOW output.

mod extended;
mod grammar;
mod wire;

use extended::Extended;
pub use grammar::{parse, Command, ParseError};

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::show::{self, ADMIN_DB};
use super::{commands, console_error, AdminUser, Reply};
use crate::config::AuthType;
use crate::control::App;
use crate::net::msgio::{read_msg, Msg, ReadError};
use crate::net::{PeerAddr, Stream};
use crate::proto::backend;
use crate::proto::error::notice;
use crate::proto::frame::{peek_header, read_cstr};
use crate::proto::PgError;
use crate::session::cancel::CancelGuard;
use crate::session::login::{authenticate, ClientRecord};
use crate::session::params::ClientParams;
use crate::stats::{ClientInfo, ClientState};

/// Largest message the console reads. Commands are at most a few hundred bytes; this only
/// bounds what a client can make us buffer.
const MAX_MSG: u32 = 65_536;
/// Output is written once this much is pending, even mid-pipeline.
const FLUSH_AT: usize = 65_536;
/// Prepared statements / portals one session may hold.
const MAX_PREPARED: usize = 256;

/// Control commands (run by `commands::execute`), PgBouncer's `cmd_list` minus SHOW.
const CONTROL: &[&str] = &[
    "DISABLE",
    "ENABLE",
    "KILL",
    "KILL_CLIENT",
    "PAUSE",
    "RECONNECT",
    "RELOAD",
    "RESUME",
    "SHUTDOWN",
    "SUSPEND",
    "WAIT_CLOSE",
];

/// A logged-in console session, ready for [`run`].
pub struct AdminSession {
    pub user: AdminUser,
    /// Lists the session in SHOW CLIENTS (database `pgbouncer`) while it lives.
    pub record: ClientRecord,
    /// The BackendKeyData sent at login; kept registered for the session's lifetime.
    pub cancel: CancelGuard,
    /// Client bytes read past the login messages.
    pub rbuf: BytesMut,
}

/// Why a console session ended: the log text, and a FATAL for the client if any.
pub struct ConsoleEnd {
    pub text: String,
    pub error: Option<PgError>,
}

impl ConsoleEnd {
    fn quiet(text: &str) -> Self {
        ConsoleEnd {
            text: text.into(),
            error: None,
        }
    }

    fn fatal(e: PgError) -> Self {
        ConsoleEnd {
            text: e.message.clone(),
            error: Some(e),
        }
    }
}

// ---------------------------------------------------------------- login

/// True if `stream` is a Unix socket whose peer runs as our effective uid.
fn same_uid_unix(stream: &Stream) -> bool {
    match stream {
        Stream::Unix(u) => u
            .peer_cred()
            // SAFETY: geteuid has no preconditions and cannot fail.
            .is_ok_and(|c| c.uid() == unsafe { libc::geteuid() }),
        _ => false,
    }
}

/// Logs `user` into the console and sends the welcome. `out` may already hold messages
/// for the client (NegotiateProtocolVersion); it is written together with the welcome.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn login(
    app: &Arc<App>,
    stream: &mut Stream,
    out: &mut BytesMut,
    peer: &PeerAddr,
    id: u64,
    user: &str,
    params: &ClientParams,
    who: &crate::net::stream::Who,
) -> Result<AdminSession, PgError> {
    let cfg = app.config.load_full();
    let g = &cfg.general;
    let admin = if user == ADMIN_DB && same_uid_unix(stream) {
        if g.log_connections {
            tracing::info!("{who} pgbouncer access from unix socket");
        }
        true
    } else if g.auth_type == AuthType::Any {
        // PgBouncer's documented rule: with auth_type=any any user name is admitted as
        // admin (there is no password to tell users apart).
        true
    } else {
        let users = app.userlist.load_full();
        authenticate(
            stream,
            out,
            g.auth_type,
            user,
            users.users.get(user),
            false,
            g.scram_iterations,
        )
        .await?;
        // Checked after authentication, as PgBouncer does: a wrong password never
        // reveals whether the name is on a list.
        if g.admin_users.iter().any(|u| u == user) {
            true
        } else if g.stats_users.iter().any(|u| u == user) {
            false
        } else {
            return Err(PgError::fatal("not allowed"));
        }
    };

    backend::auth_ok(out);
    let version = format!("{}/bouncer", env!("CARGO_PKG_VERSION"));
    for (k, v) in [
        ("server_version", version.as_str()),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
    ] {
        backend::parameter_status(out, k, v);
    }
    let cancel = app.cancels.register();
    cancel.slot.set_console();
    backend::backend_key_data(out, cancel.pid, cancel.secret);
    backend::ready_for_query(out, b'I');
    stream
        .write_all(out)
        .await
        .map_err(|_| PgError::fatal("client write failed"))?;
    out.clear();

    let (laddr, lport) = stream.local_host();
    let info = Arc::new(ClientInfo::new(
        id,
        peer.host(),
        peer.port(),
        laddr,
        lport,
        ADMIN_DB.to_string(),
        user.to_string(),
        params.get("application_name").unwrap_or("").to_string(),
        stream.tls_description(),
    ));
    info.cancel_pid
        .store(cancel.pid as u32, std::sync::atomic::Ordering::Relaxed);
    // A console client never has a server: PgBouncer lists it as `idle`.
    info.set_state(ClientState::Idle);
    let record = ClientRecord::new(app, info);
    Ok(AdminSession {
        user: AdminUser {
            name: user.to_string(),
            admin,
            id,
        },
        record,
        cancel,
        rbuf: BytesMut::new(),
    })
}

// ---------------------------------------------------------------- commands

fn invalid_command(query: &str) -> PgError {
    console_error(format!("invalid command '{query}', use SHOW HELP;"))
}

fn parse_query(query: &str) -> Result<Command, PgError> {
    parse(query).map_err(|e| match e {
        ParseError::Invalid => invalid_command(query),
        ParseError::BadArguments => console_error("bad arguments"),
    })
}

/// The SHOW subcommand of a command, if it is one (`SHOW x` or `SELECT x`).
fn show_target(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Cmd { word, arg } if is_show_word(word) => arg.as_deref(),
        _ => None,
    }
}

fn is_show_word(word: &str) -> bool {
    word.eq_ignore_ascii_case("SHOW") || word.eq_ignore_ascii_case("SELECT")
}

/// Runs one parsed command. `query` is the text as received, for error messages.
pub async fn execute(
    app: &Arc<App>,
    user: &AdminUser,
    query: &str,
    cmd: &Command,
) -> Result<Reply, PgError> {
    match cmd {
        Command::Cmd { word, arg } => {
            if is_show_word(word) {
                let name = arg.as_deref().ok_or_else(|| invalid_command(query))?;
                return show::show(app, user, name).unwrap_or_else(|| Err(invalid_command(query)));
            }
            let upper = word.to_ascii_uppercase();
            let Some(w) = CONTROL.iter().find(|c| **c == upper) else {
                return Err(invalid_command(query));
            };
            // PgBouncer rejects a stray argument before it checks the user's rights.
            let bad_arg = match *w {
                "RELOAD" | "SUSPEND" => arg.is_some(),
                "SHUTDOWN" => arg.as_deref().is_some_and(|a| {
                    !a.eq_ignore_ascii_case("WAIT_FOR_CLIENTS")
                        && !a.eq_ignore_ascii_case("WAIT_FOR_SERVERS")
                }),
                _ => false,
            };
            if bad_arg {
                return Err(invalid_command(query));
            }
            if !user.admin {
                return Err(console_error("admin access needed"));
            }
            commands::execute(app, user, w, arg.as_deref())
                .await
                // `commands` reports argument mistakes as "unknown command"; the console
                // words them as PgBouncer does, with the query text.
                .map_err(|e| {
                    if e.message == "unknown command" {
                        invalid_command(query)
                    } else {
                        e
                    }
                })
        }
        Command::Set { key, value } => {
            // Drivers set these on connect; any console user may, and nothing changes.
            if show::is_fake_param(key) {
                return Ok(Reply::NoticeDone {
                    notice: "SET ignored".into(),
                    detail: None,
                    tag: "SET".into(),
                });
            }
            if !user.admin {
                return Err(console_error("admin access needed"));
            }
            commands::set(app, user, key, value).await
        }
    }
}

/// Parses and runs one query text.
pub async fn execute_query(
    app: &Arc<App>,
    user: &AdminUser,
    query: &str,
) -> Result<Reply, PgError> {
    let cmd = parse_query(query)?;
    execute(app, user, query, &cmd).await
}

fn write_reply(out: &mut BytesMut, reply: &Reply) {
    match reply {
        Reply::Rows { columns, rows, tag } => {
            wire::row_description(out, columns, &[]);
            for r in rows {
                wire::data_row(out, columns, r, &[]);
            }
            backend::command_complete(out, tag);
        }
        Reply::Done(tag) => backend::command_complete(out, tag),
        Reply::NoticeDone {
            notice: text,
            detail,
            tag,
        } => {
            notice(out, text, detail.as_deref());
            backend::command_complete(out, tag);
        }
    }
}

// ---------------------------------------------------------------- the loop

async fn write_out(stream: &mut Stream, out: &mut BytesMut) -> bool {
    let ok = stream.write_all(out).await.is_ok();
    out.clear();
    ok
}

/// True if `buf` starts with a whole message (so the next read will not block).
fn whole_message_buffered(buf: &[u8]) -> bool {
    matches!(peek_header(buf, MAX_MSG), Ok(Some(h)) if buf.len() >= h.frame_len())
}

/// Runs a console command; a CancelRequest for this console session while it runs turns
/// a pending PAUSE or SUSPEND into a RESUME, as in PgBouncer (the command then ends with
/// its "cancelled by RESUME" answer).
async fn resume_on_cancel<T>(
    app: &Arc<App>,
    cancel: &CancelGuard,
    cmd: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(cmd);
    tokio::select! {
        r = &mut cmd => r,
        _ = cancel.slot.console_cancel.notified() => {
            if let Err(why) = crate::admin::commands::resume_all(app) {
                tracing::info!("cancel on console: {why}");
            }
            for (_, d) in app.registry.databases() {
                d.gate.try_resume();
            }
            for p in app.registry.all() {
                p.grow();
            }
            cmd.await
        }
    }
}

/// Serves console commands until the client leaves.
pub async fn run(app: &Arc<App>, stream: &mut Stream, s: AdminSession) -> ConsoleEnd {
    let AdminSession {
        user,
        record,
        cancel,
        mut rbuf,
    } = s;
    let info = record.info.clone();
    let mut out = BytesMut::new();
    let mut ext = Extended::default();
    loop {
        if info.is_killed() {
            let _ = write_out(stream, &mut out).await;
            return ConsoleEnd::fatal(PgError::fatal(info.kill_reason.lock().clone()));
        }
        // Replies go out in batches, but always before we could block on a read.
        let flush = out.len() >= FLUSH_AT || !whole_message_buffered(&rbuf);
        if !out.is_empty() && flush && !write_out(stream, &mut out).await {
            return ConsoleEnd::quiet("client unexpected eof");
        }
        let msg = tokio::select! {
            r = read_msg(stream, &mut rbuf, MAX_MSG) => r,
            _ = info.killed() => continue,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(ReadError::Frame(e)) => return ConsoleEnd::fatal(PgError::fatal(e.to_string())),
            Err(ReadError::Eof | ReadError::Io(_)) => {
                return ConsoleEnd::quiet("client unexpected eof")
            }
        };
        if msg.tag == b'X' {
            return ConsoleEnd::quiet("client close request");
        }
        // After an error in an extended-protocol batch everything up to Sync is dropped,
        // as PostgreSQL does.
        if ext.skipping && msg.tag != b'S' {
            continue;
        }
        if matches!(msg.tag, b'Q' | b'E') {
            info.request_time_us
                .store(crate::stats::now_us(), std::sync::atomic::Ordering::Relaxed);
        }
        // A command may wait (PAUSE, WAIT_CLOSE): earlier replies go out first.
        if matches!(msg.tag, b'Q' | b'E') && !out.is_empty() && !write_out(stream, &mut out).await {
            return ConsoleEnd::quiet("client unexpected eof");
        }
        let res = match msg.tag {
            b'Q' => {
                let cmd = simple_query(app, &user, &mut ext, &msg, &mut out);
                resume_on_cancel(app, &cancel, cmd).await
            }
            b'P' => ext.parse(&msg, &mut out),
            b'B' => ext.bind(&msg, &mut out),
            b'D' => ext.describe(app, &user, &msg, &mut out).await,
            b'E' => {
                let cmd = ext.execute(app, &user, &msg, &mut out);
                resume_on_cancel(app, &cancel, cmd).await
            }
            b'C' => ext.close(&msg, &mut out),
            b'H' => {
                if !write_out(stream, &mut out).await {
                    return ConsoleEnd::quiet("client unexpected eof");
                }
                Ok(())
            }
            b'S' => {
                ext.sync();
                backend::ready_for_query(&mut out, b'I');
                Ok(())
            }
            t => {
                console_error(format!("unsupported packet type for admin console: {t}"))
                    .write(&mut out);
                let _ = write_out(stream, &mut out).await;
                return ConsoleEnd::fatal(PgError::fatal("bad packet"));
            }
        };
        if let Err(e) = res {
            e.write(&mut out);
            if e.severity == "FATAL" {
                let _ = write_out(stream, &mut out).await;
                return ConsoleEnd::quiet(&e.message);
            }
            if msg.tag != b'Q' {
                ext.skipping = true;
            }
        }
    }
}

async fn simple_query(
    app: &Arc<App>,
    user: &AdminUser,
    ext: &mut Extended,
    msg: &Msg,
    out: &mut BytesMut,
) -> Result<(), PgError> {
    ext.drop_unnamed();
    let mut pos = 0;
    let res = match read_cstr(&msg.body, &mut pos) {
        Some(q) => execute_query(app, user, q).await,
        None => Err(console_error("invalid query message")),
    };
    match res {
        Ok(reply) => write_reply(out, &reply),
        Err(e) if e.severity == "FATAL" => return Err(e),
        Err(e) => e.write(out),
    }
    backend::ready_for_query(out, b'I');
    Ok(())
}
