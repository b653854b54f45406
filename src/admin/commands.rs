//! The console's process-control commands (PgBouncer §2.4): PAUSE, RESUME, SUSPEND,
//! DISABLE, ENABLE, RECONNECT, KILL, KILL_CLIENT, SHUTDOWN, WAIT_CLOSE, RELOAD and SET,
//! with PgBouncer's replies and error texts. The signal handlers in `run.rs` use the same
//! functions (SIGHUP → [`reload`], SIGUSR1 → [`pause_all_in_background`], SIGUSR2 →
//! [`resume_all`], SIGTERM/SIGINT → `App::begin_shutdown`), so a signal and the console
//! command always do the same thing.
//!
//! PAUSE and RESUME. PAUSE closes a gate (process-wide, or the database's), closes idle
//! servers, and answers once every server of the affected pools has been released and
//! closed. Each gate counts its resumes; a PAUSE still waiting when a RESUME opens its
//! gate ends at once with the error `pause was cancelled by RESUME`, so the caller knows
//! the pause is not in force. PgBouncer leaves such a PAUSE hanging (#715).
//!
//! Known gaps against PgBouncer:
//! - SUSPEND is a PAUSE with SUSPEND's checks and reply. It waits for transactions to end
//!   instead of freezing sockets mid-transaction, there is no `suspend_timeout`, and it
//!   is not undone when the console session that issued it disconnects. Online restart
//!   (`-R`) is not supported, so nothing needs more.
//! - A CancelRequest for the console session turns a pending PAUSE or SUSPEND into a
//!   RESUME, as in PgBouncer (`console::resume_on_cancel`).

use std::sync::Arc;
use std::time::Duration;

use crate::admin::{console_error, AdminUser, Reply};
use crate::config::{general, keys};
use crate::control::App;
use crate::pool::Gate;
use crate::proto::PgError;

/// The console's own database: it cannot be paused, killed, disabled or waited on.
const ADMIN_DB: &str = "pgbouncer";

/// How often PAUSE and WAIT_CLOSE look at the pools while they wait.
const POLL: Duration = Duration::from_millis(20);

/// Disconnect reason for clients dropped by KILL (PgBouncer's `kill_pool`).
const KILL_REASON: &str = "database removed";

/// Disconnect reason for KILL_CLIENT.
const KILL_CLIENT_REASON: &str = "admin forced disconnect";

/// Parameters drivers like to SET; PgBouncer answers them with NOTICE "SET ignored".
const FAKE_PARAMS: &[&str] = &[
    "client_encoding",
    "default_transaction_isolation",
    "standard_conforming_strings",
    "datestyle",
    "timezone",
    "extra_float_digits",
];

/// SET and RELOAD each read, change and store the whole configuration; this keeps two of
/// them from losing each other's change. Never held across an await.
static CONFIG_WRITE: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Runs one process-control command. `command` is the upper-cased keyword; `arg` the
/// argument (for SHUTDOWN the mode word). An unknown keyword, or an argument the command
/// does not take, gives `unknown command`, which the console turns into PgBouncer's
/// "invalid command '<query>', use SHOW HELP;".
pub async fn execute(
    app: &Arc<App>,
    user: &AdminUser,
    command: &str,
    arg: Option<&str>,
) -> Result<Reply, PgError> {
    let arg = arg.map(str::trim).filter(|a| !a.is_empty());
    // PgBouncer rejects these argument mistakes as syntax errors, before the rights check.
    let syntax_ok = match command {
        "PAUSE" | "RESUME" | "DISABLE" | "ENABLE" | "RECONNECT" | "KILL" | "KILL_CLIENT"
        | "WAIT_CLOSE" => true,
        "RELOAD" | "SUSPEND" => arg.is_none(),
        "SHUTDOWN" => arg.is_none_or(|m| {
            m.eq_ignore_ascii_case("WAIT_FOR_CLIENTS") || m.eq_ignore_ascii_case("WAIT_FOR_SERVERS")
        }),
        _ => false,
    };
    if !syntax_ok {
        return Err(console_error("unknown command"));
    }
    if !user.admin {
        return Err(console_error("admin access needed"));
    }
    match command {
        "PAUSE" => pause(app, arg).await,
        "RESUME" => resume(app, arg),
        "SUSPEND" => suspend(app).await,
        "DISABLE" => disable(app, arg, true),
        "ENABLE" => disable(app, arg, false),
        "RECONNECT" => reconnect(app, arg),
        "KILL" => kill(app, arg),
        "KILL_CLIENT" => kill_client(app, arg),
        "WAIT_CLOSE" => wait_close(app, arg).await,
        "RELOAD" => {
            tracing::info!("RELOAD command issued");
            reload(app).map(|tls_applied| {
                if tls_applied {
                    done("RELOAD")
                } else {
                    Reply::NoticeDone {
                        notice: App::TLS_NOT_APPLIED.into(),
                        detail: None,
                        tag: "RELOAD".into(),
                    }
                }
            })
        }
        _ => shutdown(app, arg).await,
    }
}

/// `SET key = value` for a `[pgbouncer]` key. Keys PgBouncer does not reload are accepted
/// and ignored, as PgBouncer does; an unknown key or a bad value gives `SET failed`.
pub async fn set(
    app: &Arc<App>,
    user: &AdminUser,
    key: &str,
    value: &str,
) -> Result<Reply, PgError> {
    // Answered for everyone, before the rights check, as PgBouncer's fake_set.
    if FAKE_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(key)) {
        return Ok(Reply::NoticeDone {
            notice: "SET ignored".into(),
            detail: None,
            tag: "SET".into(),
        });
    }
    if !user.admin {
        return Err(console_error("admin access needed"));
    }
    let failed = |why: String| {
        tracing::error!("SET {key} failed: {why}");
        console_error("SET failed")
    };
    let Some(info) = keys::lookup(key) else {
        return Err(failed(format!("unknown parameter: pgbouncer/{key}")));
    };
    let reply = done(&format!("SET {key}={value}"));
    if !info.reloadable {
        tracing::info!("SET {key}: not changeable while running, ignored");
        return Ok(reply);
    }
    let _w = CONFIG_WRITE.lock();
    let mut cfg = (*app.config.load_full()).clone();
    cfg.warnings.clear();
    general::set_general(&mut cfg, key, value).map_err(failed)?;
    cfg.validate().map_err(|e| failed(e.to_string()))?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    // A new auth_file is read now, so the SET fails rather than leave logins broken.
    let users = if key == "auth_file" {
        Arc::new(App::load_userlist(&cfg).map_err(|e| failed(e.to_string()))?)
    } else {
        app.userlist.load_full()
    };
    // A TLS key is applied only if its files load; otherwise the SET fails.
    let tls = if key.contains("_tls") {
        Arc::new(
            crate::net::tls::TlsContexts::build(&cfg.general)
                .map_err(|e| failed(format!("TLS setup failed: {e}")))?,
        )
    } else {
        app.tls.load_full()
    };
    let cfg = Arc::new(cfg);
    app.config.store(cfg.clone());
    app.userlist.store(users.clone());
    app.tls.store(tls.clone());
    app.registry.reconfigure_all(&cfg, &tls, &users);
    tracing::info!("SET {key} = {value}");
    Ok(reply)
}

/// RELOAD and SIGHUP: re-read the config and auth file; on failure keep the old ones and
/// answer with PgBouncer's F0000 error (the reason goes to the log).
/// `Ok(false)`: applied, but the TLS files did not load and the old TLS configuration
/// stays (see [`App::reload`]).
pub fn reload(app: &App) -> Result<bool, PgError> {
    let _w = CONFIG_WRITE.lock();
    let tls_applied = app.reload().map_err(|e| {
        tracing::error!("RELOAD failed: {e}");
        PgError::error("F0000", "RELOAD failed, see logs for additional details")
    })?;
    // Log rotation: the file is reopened by name on every reload.
    if let Err(e) = crate::logging::reopen(&app.config.load().general.logfile) {
        tracing::error!("cannot reopen logfile: {e}");
    }
    Ok(tls_applied)
}

/// SIGUSR1: PAUSE everything without anyone waiting for the answer; idle servers are
/// closed now and busy ones as they are released.
pub fn pause_all_in_background(app: &Arc<App>) {
    let gate = &app.registry.global;
    let seen = gate.resumes();
    if !gate.try_pause() {
        tracing::info!("got SIGUSR1, but already paused/suspended");
        return;
    }
    tracing::info!("got SIGUSR1, pausing all activity");
    let app = app.clone();
    tokio::spawn(async move {
        if drain(&app, None, &app.registry.global, seen).await.is_ok() {
            tracing::info!("all servers released, pooler is paused");
        }
    });
}

/// RESUME without a database, and SIGUSR2. `Err` carries PgBouncer's console error text.
pub fn resume_all(app: &App) -> Result<(), &'static str> {
    if app.is_shutting_down() {
        return Err("pooler is shutting down");
    }
    if !app.registry.global.try_resume() {
        return Err("pooler is not paused/suspended");
    }
    // Clients that queued while paused get servers again.
    for p in app.registry.all() {
        p.grow();
    }
    Ok(())
}

fn done(tag: &str) -> Reply {
    Reply::Done(tag.to_string())
}

/// A database the console may name: configured (including through the `*` entry), or
/// known from earlier use, or the console's own.
fn known_db(app: &App, name: &str) -> bool {
    name == ADMIN_DB
        || app.config.load().database(name).is_some()
        || app.registry.db_shared_if_exists(name).is_some()
}

/// The checks PgBouncer makes on a database argument, in its order.
fn check_db(app: &App, name: &str, verb: &str) -> Result<(), PgError> {
    if !known_db(app, name) {
        return Err(console_error(format!("no such database: {name}")));
    }
    if name == ADMIN_DB {
        return Err(console_error(format!("cannot {verb} admin db: {name}")));
    }
    Ok(())
}

async fn pause(app: &Arc<App>, db: Option<&str>) -> Result<Reply, PgError> {
    let already = || console_error("already suspended/paused");
    let global = &app.registry.global;
    if global.is_paused() {
        return Err(already());
    }
    match db {
        None => {
            let seen = global.resumes();
            if !global.try_pause() {
                return Err(already());
            }
            tracing::info!("PAUSE command issued");
            drain(app, None, global, seen).await?;
        }
        Some(name) => {
            check_db(app, name, "pause")?;
            tracing::info!("PAUSE '{name}' command issued");
            let shared = app.registry.db_shared(name);
            let seen = shared.gate.resumes();
            shared.gate.pause();
            drain(app, Some(name), &shared.gate, seen).await?;
        }
    }
    Ok(done("PAUSE"))
}

/// Waits until the pools of `db` (or all pools) have no server left: idle ones are closed
/// here, released ones close themselves because `gate` is paused, and none are opened.
/// Ends with an error as soon as `gate` is resumed (its resume count moves past `seen`).
async fn drain(app: &App, db: Option<&str>, gate: &Gate, seen: u64) -> Result<(), PgError> {
    loop {
        if gate.resumes() != seen {
            tracing::info!("PAUSE cancelled by RESUME");
            return Err(console_error("pause was cancelled by RESUME"));
        }
        // Listed afresh each time: pools created while waiting count too. A server can
        // land on the idle stack from a release that raced with the pause, hence the
        // repeated close.
        let mut servers = 0;
        for p in app.registry.pools_of(db) {
            p.close_idle();
            servers += p.counts().total;
        }
        if servers == 0 {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn resume(app: &App, db: Option<&str>) -> Result<Reply, PgError> {
    match db {
        None => {
            tracing::info!("RESUME command issued");
            resume_all(app).map_err(console_error)?;
        }
        Some(name) => {
            tracing::info!("RESUME '{name}' command issued");
            if !known_db(app, name) {
                return Err(console_error(format!("no such database: {name}")));
            }
            let resumed = app
                .registry
                .db_shared_if_exists(name)
                .is_some_and(|s| s.gate.try_resume());
            if !resumed {
                return Err(console_error(format!("database {name} is not paused")));
            }
            for p in app.registry.pools_of(Some(name)) {
                p.grow();
            }
        }
    }
    Ok(done("RESUME"))
}

async fn suspend(app: &Arc<App>) -> Result<Reply, PgError> {
    let global = &app.registry.global;
    if global.is_paused() {
        return Err(console_error("already suspended/paused"));
    }
    if app
        .registry
        .databases()
        .iter()
        .any(|(_, s)| s.gate.is_paused())
    {
        return Err(console_error("cannot suspend with paused databases"));
    }
    let seen = global.resumes();
    if !global.try_pause() {
        return Err(console_error("already suspended/paused"));
    }
    tracing::info!("SUSPEND command issued");
    drain(app, None, global, seen).await?;
    Ok(done("SUSPEND"))
}

/// DISABLE (`on`) / ENABLE (`!on`) db.
fn disable(app: &App, db: Option<&str>, on: bool) -> Result<Reply, PgError> {
    let (verb, tag) = if on {
        ("disable", "DISABLE")
    } else {
        ("enable", "ENABLE")
    };
    let Some(name) = db else {
        return Err(console_error("a database is required"));
    };
    tracing::info!("{tag} '{name}' command issued");
    check_db(app, name, verb)?;
    app.registry
        .db_shared(name)
        .disabled
        .store(on, std::sync::atomic::Ordering::Release);
    Ok(done(tag))
}

fn reconnect(app: &App, db: Option<&str>) -> Result<Reply, PgError> {
    match db {
        None => tracing::info!("RECONNECT command issued"),
        Some(name) => {
            tracing::info!("RECONNECT '{name}' command issued");
            check_db(app, name, "reconnect")?;
        }
    }
    for p in app.registry.pools_of(db) {
        p.reconnect();
    }
    Ok(done("RECONNECT"))
}

/// KILL [db]: drop the clients and servers of the database (or of every database) at
/// once and leave it paused, so new clients wait for RESUME. As in PgBouncer, KILL
/// without a database pauses each database, not the process: RESUME each by name.
fn kill(app: &App, db: Option<&str>) -> Result<Reply, PgError> {
    if app.registry.global.is_paused() {
        return Err(console_error("already suspended/paused"));
    }
    let names: Vec<String> = match db {
        Some(name) => {
            tracing::info!("KILL '{name}' command issued");
            check_db(app, name, "kill")?;
            vec![name.to_string()]
        }
        None => {
            tracing::info!("KILL command issued");
            let mut v: Vec<String> = app
                .registry
                .all()
                .iter()
                .map(|p| p.db_name.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        }
    };
    // Pause first, so a killed client's server is closed rather than handed on.
    for name in &names {
        app.registry.db_shared(name).gate.pause();
    }
    for e in app.client_records.iter() {
        let c = e.value();
        let hit = match db {
            Some(name) => c.database == name,
            None => c.database != ADMIN_DB,
        };
        if hit {
            c.kill(KILL_REASON);
        }
    }
    for name in &names {
        for p in app.registry.pools_of(Some(name)) {
            p.close_idle();
        }
    }
    Ok(done("KILL"))
}

fn kill_client(app: &App, arg: Option<&str>) -> Result<Reply, PgError> {
    let Some(id) = arg.and_then(parse_client_id) else {
        return Err(console_error("invalid client pointer supplied"));
    };
    let Some(client) = app.client_records.get(&id).map(|e| e.value().clone()) else {
        return Err(console_error("client not found"));
    };
    tracing::info!("KILL_CLIENT {id} command issued");
    client.kill(KILL_CLIENT_REASON);
    Ok(done("KILL_CLIENT"))
}

/// The client id as PgBouncer's `sscanf("%llu")` reads it: optional leading blanks and
/// `+`, then the leading digits (anything after them is ignored).
fn parse_client_id(s: &str) -> Option<u64> {
    let s = s.trim_start();
    let s = s.strip_prefix('+').unwrap_or(s);
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.get(..end)?.parse().ok()
}

/// WAIT_CLOSE [db]: answers once no server of the database (or of any) is still marked
/// to close on release by RECONNECT or a changed connection setting.
async fn wait_close(app: &App, db: Option<&str>) -> Result<Reply, PgError> {
    match db {
        None => tracing::info!("WAIT_CLOSE command issued"),
        Some(name) => {
            tracing::info!("WAIT_CLOSE '{name}' command issued");
            if !known_db(app, name) {
                return Err(console_error(format!("no such database: {name}")));
            }
            if name == ADMIN_DB {
                return Err(console_error(format!("cannot wait in admin db: {name}")));
            }
        }
    }
    while app
        .registry
        .pools_of(db)
        .iter()
        .any(|p| p.close_needed_count() > 0)
    {
        tokio::time::sleep(POLL).await;
    }
    Ok(done("WAIT_CLOSE"))
}

async fn shutdown(app: &Arc<App>, mode: Option<&str>) -> Result<Reply, PgError> {
    match mode {
        Some(m) if m.eq_ignore_ascii_case("WAIT_FOR_SERVERS") => {
            tracing::info!("SHUTDOWN WAIT_FOR_SERVERS command issued");
            app.begin_shutdown(true);
            Ok(done("SHUTDOWN"))
        }
        Some(_) => {
            tracing::info!("SHUTDOWN WAIT_FOR_CLIENTS command issued");
            app.begin_shutdown(false);
            Ok(done("SHUTDOWN"))
        }
        None => {
            tracing::info!("SHUTDOWN command issued");
            app.request_exit();
            // PgBouncer sends no reply: the session stays open until the process is gone.
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_parse_like_sscanf() {
        assert_eq!(parse_client_id("42"), Some(42));
        assert_eq!(parse_client_id("  +7"), Some(7));
        assert_eq!(parse_client_id("12abc"), Some(12));
        assert_eq!(parse_client_id("abc"), None);
        assert_eq!(parse_client_id(""), None);
        assert_eq!(parse_client_id("-1"), None);
        assert_eq!(parse_client_id("99999999999999999999999"), None);
    }
}
