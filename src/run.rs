//! The serving loop: listeners, the accept loops, the janitor, the stats period, the
//! auth_file watcher, and signals (SIGHUP reload, SIGTERM wait-for-clients shutdown, SIGINT
//! wait-for-servers, SIGQUIT immediate, a second SIGTERM/SIGINT immediate, SIGUSR1 PAUSE,
//! SIGUSR2 RESUME). Signals run the console commands' code (`admin::commands`).

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::control::{App, ShutdownMode};
use crate::net::listener::{bind_all, Listener};
use crate::stats::ClientState;

/// Binds the configured listeners. Separate from `serve` so the caller can drop privileges
/// (`-u`) between binding and serving.
pub fn bind(app: &App) -> std::io::Result<Vec<Listener>> {
    let cfg = app.config.load();
    let ls = bind_all(&cfg.general)?;
    if ls.is_empty() {
        return Err(std::io::Error::other(
            "nothing to listen on: set listen_addr or unix_socket_dir",
        ));
    }
    for l in &ls {
        tracing::info!("listening on {}", l.describe());
    }
    Ok(ls)
}

/// Serves until shutdown completes.
pub async fn serve(app: Arc<App>, listeners: Vec<Listener>) -> std::io::Result<()> {
    // TCP listeners close when shutdown begins; Unix sockets keep accepting so the console
    // stays reachable during shutdown (PgBouncer 1.25: ordinary logins there are refused
    // with "pooler is shutting down").
    let mut accept_tasks = Vec::new();
    for l in listeners {
        let app = app.clone();
        let unix = matches!(l, Listener::Unix(..));
        let task = tokio::spawn(async move { accept_loop(app, l).await });
        if !unix {
            accept_tasks.push(task);
        }
    }
    tokio::spawn(crate::pool::janitor::run(app.clone()));
    crate::stats::metrics_http::start(&app);

    tokio::spawn(crate::stats::period::run(app.clone()));
    tokio::spawn(watch_auth_file(app.clone()));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut stopping = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("got SIGHUP, re-reading config");
                // The error is logged by `reload`.
                let _ = crate::admin::commands::reload(&app);
            }
            _ = usr1.recv() => crate::admin::commands::pause_all_in_background(&app),
            _ = usr2.recv() => match crate::admin::commands::resume_all(&app) {
                Ok(()) => tracing::info!("got SIGUSR2, continuing from PAUSE"),
                Err(why) => tracing::info!("got SIGUSR2, ignored: {why}"),
            },
            _ = term.recv() => {
                if stopping { tracing::info!("got second SIGTERM, shutting down immediately"); break; }
                tracing::info!("got SIGTERM, shutting down, waiting for all clients disconnect");
                app.begin_shutdown(false);
                stop_accepting(&mut stopping, &accept_tasks);
            }
            _ = int.recv() => {
                if stopping { tracing::info!("got second SIGINT, shutting down immediately"); break; }
                tracing::info!("got SIGINT, shutting down, waiting for all servers to be released");
                app.begin_shutdown(true);
                stop_accepting(&mut stopping, &accept_tasks);
            }
            _ = quit.recv() => {
                tracing::info!("got SIGQUIT, fast exit");
                break;
            }
            _ = app.exit.notified() => {
                tracing::info!("shutdown requested, exiting");
                break;
            }
            // SHUTDOWN WAIT_FOR_CLIENTS / WAIT_FOR_SERVERS from the console.
            _ = app.shutdown_begun.notified(), if !stopping => {
                stop_accepting(&mut stopping, &accept_tasks);
            }
            _ = tick.tick(), if stopping => {
                if shutdown_done(&app) {
                    break;
                }
            }
        }
    }
    for p in app.registry.all() {
        p.close_idle();
    }
    // Let the Terminate messages of closing servers go out.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// First shutdown request: stop accepting (the listening sockets close with their tasks).
fn stop_accepting(stopping: &mut bool, accept_tasks: &[tokio::task::JoinHandle<()>]) {
    *stopping = true;
    for t in accept_tasks {
        t.abort();
    }
}

/// Whether a shutdown in progress may end now: WAIT_FOR_CLIENTS when the last client is
/// gone; WAIT_FOR_SERVERS when every server has been released and closed. Clients still
/// queued for a server in WAIT_FOR_SERVERS are told `server shutting down`.
fn shutdown_done(app: &App) -> bool {
    if app.shutdown_mode() == ShutdownMode::WaitForServers {
        for e in app.client_records.iter() {
            if e.value().state() == ClientState::Waiting {
                e.value().kill("server shutting down");
            }
        }
        let mut servers = 0;
        for p in app.registry.all() {
            p.close_idle();
            servers += p.counts().total;
        }
        if servers == 0 {
            tracing::info!("server connections dropped, exiting");
            return true;
        }
    }
    // Console sessions do not hold the process: an operator's psql that issued SHUTDOWN
    // WAIT_FOR_CLIENTS must not keep it alive.
    if app.clients.get() == 0 {
        tracing::info!("client connections dropped, exiting");
        return true;
    }
    false
}

/// Re-reads auth_file when its modification time (or size) changes, checked about three
/// times a second as PgBouncer does. A file that cannot be read or parsed leaves the
/// current list in force; the error is logged once per change.
async fn watch_auth_file(app: Arc<App>) {
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let current = |app: &App| {
        let path = app.config.load().general.auth_file.clone();
        path.map(|p| {
            let st = stamp(&p);
            (p, st)
        })
    };
    let mut seen = current(&app);
    let mut tick = tokio::time::interval(Duration::from_millis(333));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = current(&app);
        if now == seen {
            continue;
        }
        seen = now;
        let Some((path, st)) = &seen else { continue };
        if st.is_none() {
            tracing::error!(
                "could not open auth_file {}: keeping the old user list",
                path.display()
            );
            continue;
        }
        let cfg = app.config.load_full();
        match App::load_userlist(&cfg) {
            Ok(users) => {
                tracing::info!("auth_file {} changed, reloaded", path.display());
                let users = Arc::new(users);
                app.userlist.store(users.clone());
                app.registry.reconfigure_all(&cfg, &app.tls.load(), &users);
            }
            Err(e) => tracing::error!("auth_file {} not reloaded: {e}", path.display()),
        }
    }
}

async fn accept_loop(app: Arc<App>, l: Listener) {
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                let app = app.clone();
                tokio::spawn(crate::session::client::serve(app, stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
