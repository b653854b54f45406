//! A client connection's request loop. Between transactions the client holds no server and
//! no read buffer: it waits for its socket to become readable. The first bytes of a
//! request lease a server (pool FIFO), tracked parameters are synchronised with one SET,
//! the cancel slot is armed, and the relay runs until the release point.
//!
//! Lifecycle: accept → login (startup, auth, welcome) → [idle → lease → relay → release]*
//! → close. Session mode keeps the lease until the client leaves, then runs
//! server_reset_query before the server goes back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cancel::ServerKey;
use super::login::{login, Outcome, Session};
use super::relay::{relay, Meter, RelayEnd};
use super::tracker::Tracker;
use crate::config::PoolMode;
use crate::control::App;
use crate::net::{PeerAddr, Stream};
use crate::proto::PgError;
use crate::server::{login::simple_query, ServerConn};
use crate::stats::{ClientState, ServerState, TxStats};

/// Serves one client connection to the end.
pub async fn serve(app: Arc<App>, mut stream: Stream, peer: PeerAddr) {
    app.live_clients.fetch_add(1, Ordering::AcqRel);
    let started = Instant::now();
    let id = crate::server::conn::next_id();
    // PgBouncer's log prefix: C-0x<id>: db/user@addr:port
    let mut who = format!("C-{id:#x}: (nodb)/(nouser)@{peer}");
    let timeout = app.config.load().general.client_login_timeout;
    let res = if timeout.is_zero() {
        login(&app, &mut stream, &peer, id, &mut who).await
    } else {
        match tokio::time::timeout(timeout, login(&app, &mut stream, &peer, id, &mut who)).await {
            Ok(r) => r,
            Err(_) => Err(PgError::fatal("client_login_timeout")),
        }
    };
    match res {
        Ok(Outcome::Session(s)) => {
            let reason = run(&app, &mut stream, *s).await;
            if let Some(e) = &reason.error {
                send_error(&app, &mut stream, &who, e).await;
            }
            if app.config.load().general.log_disconnections {
                tracing::info!(
                    "{who} closing because: {} (age={}s)",
                    reason.text,
                    started.elapsed().as_secs()
                );
            }
        }
        Ok(Outcome::Admin(a)) => {
            let end = crate::admin::console::run(&app, &mut stream, *a).await;
            if let Some(e) = &end.error {
                send_error(&app, &mut stream, &who, e).await;
            }
            if app.config.load().general.log_disconnections {
                tracing::info!(
                    "{who} closing because: {} (age={}s)",
                    end.text,
                    started.elapsed().as_secs()
                );
            }
        }
        Ok(Outcome::Done) => {}
        Err(e) => send_error(&app, &mut stream, &who, &e).await,
    }
    let _ = stream.shutdown().await;
    app.live_clients.fetch_sub(1, Ordering::AcqRel);
}

async fn send_error(app: &App, stream: &mut Stream, who: &str, e: &PgError) {
    if app.config.load().general.log_pooler_errors {
        tracing::warn!("{who} pooler error: {}", e.message);
    }
    crate::stats::prometheus::client_error(e);
    let mut out = BytesMut::new();
    e.write(&mut out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&out)).await;
}

/// Why a session ended, for the log line and the client.
struct End {
    text: String,
    error: Option<PgError>,
}

impl End {
    fn quiet(text: &str) -> End {
        End {
            text: text.to_string(),
            error: None,
        }
    }
    fn fatal(e: PgError) -> End {
        End {
            text: e.message.clone(),
            error: Some(e),
        }
    }
}

async fn run(app: &App, stream: &mut Stream, mut s: Session) -> End {
    let mut tracker = Tracker::default();
    let mut cbuf = std::mem::take(&mut s.rbuf);
    let mut shutdown = app.shutdown_signal();
    let info = s.record.info.clone();
    loop {
        if info.is_killed() {
            return End::fatal(PgError::fatal(info.kill_reason.lock().clone()));
        }
        // Idle: no server, and no buffer unless bytes are pending.
        if cbuf.is_empty() {
            cbuf = BytesMut::new();
            if *shutdown.borrow() {
                return End::fatal(PgError::fatal("server shutting down"));
            }
            tokio::select! {
                r = stream.readable() => if r.is_err() { return End::quiet("client close request") },
                _ = shutdown.changed() => return End::fatal(PgError::fatal("server shutting down")),
                _ = info.kill_notify.notified() => continue,
            }
            cbuf.reserve(8192);
            match stream.read_buf(&mut cbuf).await {
                Ok(0) | Err(_) => return End::quiet("client close request"),
                Ok(_) => {}
            }
        }
        // Wait for a whole header: Terminate must not cost a lease.
        if cbuf.len() < 5 {
            match stream.read_buf(&mut cbuf).await {
                Ok(0) | Err(_) => return End::quiet("client close request"),
                Ok(_) => continue,
            }
        }
        if cbuf[0] == b'X' {
            return End::quiet("client close request");
        }

        let settings = s.pool.settings();
        // A bad header is refused before a server is looked for, as PgBouncer does: the
        // client must not queue for a server only to be told off, and no server is
        // closed because of it.
        if let Err(e) = crate::proto::frame::peek_header(&cbuf, settings.max_packet_size) {
            return End::fatal(PgError::fatal(e.to_string()));
        }
        let wait_from = Instant::now();
        info.request_time_us
            .store(crate::stats::now_us(), Ordering::Relaxed);
        info.set_state(ClientState::Waiting);
        info.wait_start_us
            .store(crate::stats::now_us(), Ordering::Relaxed);
        let leased = tokio::select! {
            r = lease(&s) => r,
            _ = info.kill_notify.notified() => Err(PgError::fatal(info.kill_reason.lock().clone())),
        };
        info.wait_start_us.store(0, Ordering::Relaxed);
        let mut server = match leased {
            Ok(c) => c,
            Err(e) => return End::fatal(e),
        };
        let mut tx = TxStats {
            server_assignment_count: 1,
            wait_time: wait_from.elapsed().as_micros() as u64,
            ..Default::default()
        };
        info.set_state(ClientState::Active);
        info.link.store(server.id, Ordering::Relaxed);
        server.info.set_state(ServerState::Active);
        server.info.link.store(info.id, Ordering::Relaxed);
        server
            .info
            .request_time_us
            .store(crate::stats::now_us(), Ordering::Relaxed);
        if let Some(sql) = s.params.sync_sql(&server.params) {
            if simple_query(&mut server, &sql, settings.max_packet_size)
                .await
                .is_err()
            {
                s.pool.discard(server);
                return End::fatal(PgError::fatal("invalid server parameter"));
            }
            s.params.adopt_canonical(&server.params);
        }
        s.cancel.slot.arm(ServerKey {
            addr: server.addr.clone(),
            pid: server.backend_pid,
            secret: server.backend_secret,
        });
        tracker.reset();
        let mut meter = Meter::new(&mut tx);
        let end = tokio::select! {
            end = relay(
                stream,
                &mut cbuf,
                &mut server,
                &mut tracker,
                &mut s.params,
                &mut meter,
                settings.mode,
                settings.max_packet_size,
            ) => end,
            _ = info.kill_notify.notified() => RelayEnd::Killed,
        };
        s.pool.stats.add(&tx);
        crate::stats::prometheus::lease_done(&s.pool, &tx);
        info.set_state(ClientState::Idle);
        info.link.store(0, Ordering::Relaxed);
        let cancels_done = s.cancel.slot.disarm().await;
        match end {
            RelayEnd::Release => {
                if !cancels_done {
                    s.pool.discard(server);
                } else if settings.server_reset_query_always
                    && !settings.server_reset_query.is_empty()
                {
                    reset_and_release(&s, server, &settings.server_reset_query).await;
                } else {
                    s.pool.release(server);
                }
            }
            RelayEnd::ClientTerminated => {
                // Session mode (or any mode with the server idle): reset, then reuse.
                let reset =
                    settings.mode == PoolMode::Session || settings.server_reset_query_always;
                if tracker.tx_status() != b'I' || !cancels_done {
                    s.pool.discard(server);
                } else if reset && !settings.server_reset_query.is_empty() {
                    reset_and_release(&s, server, &settings.server_reset_query).await;
                } else {
                    s.pool.release(server);
                }
                return End::quiet("client close request");
            }
            RelayEnd::ClientGone => {
                // Mid-transaction or mid-request: never hand this server to anyone else.
                if tracker.may_release() && cancels_done && settings.mode != PoolMode::Session {
                    s.pool.release(server);
                } else if tracker.quiet() && tracker.tx_status() == b'I' && cancels_done {
                    reset_and_release(&s, server, &settings.server_reset_query).await;
                } else {
                    s.pool.discard(server);
                }
                return End::quiet("client unexpected eof");
            }
            RelayEnd::ServerGone => {
                s.pool.discard(server);
                return End::fatal(PgError::fatal("server conn crashed?"));
            }
            RelayEnd::ClientProtocol(e) => {
                s.pool.discard(server);
                return End::fatal(PgError::fatal(e.to_string()));
            }
            RelayEnd::ServerProtocol(e) => {
                s.pool.discard(server);
                return End::fatal(PgError::fatal(format!("server sent bad packet: {e}")));
            }
            RelayEnd::Killed => {
                s.pool.discard(server);
                return End::fatal(PgError::fatal(info.kill_reason.lock().clone()));
            }
            RelayEnd::StatementViolation => {
                s.pool.discard(server);
                return End::fatal(PgError::fatal(
                    "transaction blocks not allowed in statement pooling mode",
                ));
            }
        }
        if cbuf.is_empty() {
            // Give the buffer back: an idle client holds no read buffer.
            cbuf = BytesMut::new();
        }
    }
}

/// A server from the pool that is still alive and has nothing unexpected to say.
async fn lease(s: &Session) -> Result<ServerConn, PgError> {
    loop {
        let conn = s.pool.acquire().await?;
        if server_is_clean(&conn) {
            return Ok(conn);
        }
        s.pool.discard(conn);
    }
}

/// An idle server must have no unread bytes: EOF means it died (backend terminated, server
/// restarted), data means it sent something while idle. Either way it is not reused.
///
/// The reactor's cached readiness answers without a syscall: an idle socket that epoll has
/// not reported readable has nothing to say. Only when it has (or a previous read filled
/// its buffer exactly, leaving readiness set) is the socket peeked to be sure.
fn server_is_clean(conn: &ServerConn) -> bool {
    if !conn.rbuf.is_empty() {
        return false;
    }
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let ready = match &conn.stream {
        Stream::Tcp(t) => t.poll_read_ready(&mut cx).is_ready(),
        Stream::Unix(u) => u.poll_read_ready(&mut cx).is_ready(),
    };
    if !ready {
        return true;
    }
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    let r = match &conn.stream {
        Stream::Tcp(t) => socket2::SockRef::from(t).peek(&mut probe),
        Stream::Unix(u) => socket2::SockRef::from(u).peek(&mut probe),
    };
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn reset_and_release(s: &Session, mut server: ServerConn, query: &str) {
    if query.is_empty() {
        s.pool.release(server);
        return;
    }
    let max = s.pool.settings().max_packet_size;
    match simple_query(&mut server, query, max).await {
        Ok(()) => s.pool.release(server),
        Err(_) => s.pool.discard(server),
    }
}
