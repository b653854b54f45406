//! The serving loop: listeners, the accept loops, the janitor, and signals (SIGHUP reload,
//! SIGTERM wait-for-clients shutdown, SIGINT wait-for-servers, SIGQUIT immediate; a second
//! SIGTERM/SIGINT means immediate).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::control::App;
use crate::net::listener::{bind_all, Listener};

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
    let mut accept_tasks = Vec::new();
    for l in listeners {
        let app = app.clone();
        accept_tasks.push(tokio::spawn(async move { accept_loop(app, l).await }));
    }
    tokio::spawn(crate::pool::janitor::run(app.clone()));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("got SIGHUP, re-reading config");
                if let Err(e) = app.reload() {
                    tracing::error!("RELOAD failed: {e}");
                }
            }
            _ = term.recv() => {
                if stopping { tracing::info!("got second SIGTERM, shutting down immediately"); break; }
                tracing::info!("got SIGTERM, shutting down, waiting for all clients disconnect");
                stopping = true;
                app.begin_shutdown(false);
                for t in &accept_tasks { t.abort(); }
            }
            _ = int.recv() => {
                if stopping { tracing::info!("got second SIGINT, shutting down immediately"); break; }
                tracing::info!("got SIGINT, shutting down, waiting for all servers to be released");
                stopping = true;
                app.begin_shutdown(true);
                for t in &accept_tasks { t.abort(); }
            }
            _ = quit.recv() => {
                tracing::info!("got SIGQUIT, fast exit");
                break;
            }
            _ = app.exit.notified() => {
                tracing::info!("shutdown requested, exiting");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if stopping => {
                if app.live_clients.load(Ordering::Acquire) == 0 {
                    tracing::info!("all clients gone, exiting");
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
