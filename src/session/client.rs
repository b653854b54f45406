//! A client connection's request loop. Between transactions the client holds no server and
//! no read buffer: it waits for its socket to become readable. The first bytes of a
//! request lease a server (pool FIFO), tracked parameters are synchronised with one SET,
//! the cancel slot is armed, and the relay runs until the release point.
//!
//! Lifecycle: accept → login (startup, auth, welcome) → [idle → lease → relay → release]*
//! → close. Session mode keeps the lease until the client leaves, then runs
//! server_reset_query before the server goes back.
//!
//! Every wait has a bound: login (client_login_timeout), idle without a server
//! (client_idle_timeout), queued for a server (query_wait_timeout / query_timeout in
//! `Pool::acquire`, with the query_wait_notify NOTICE from here), and holding one
//! (query_timeout, idle_transaction_timeout, transaction_timeout in the relay).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cancel::ServerKey;
use super::login::{login, Outcome, Session};
use super::prepared::ClientStatements;
use super::relay::{relay_with, Meter, RelayEnd, Timeouts};
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
    let mut who = crate::net::stream::Who::new(id, peer.clone());
    let timeout = app.config.load().general.client_login_timeout;
    // Set by login once the client has authenticated and waits for the pool's first
    // server login (the welcome needs its parameters).
    let mut awaiting_server = false;
    // The login and console futures are boxed: inline, the largest of them would set the
    // size of every client's task for its whole life, idle or not (issue 7: memory per
    // idle client).
    let res = if timeout.is_zero() {
        Box::pin(login(
            &app,
            &mut stream,
            &peer,
            id,
            &mut who,
            &mut awaiting_server,
        ))
        .await
    } else {
        let attempt = Box::pin(login(
            &app,
            &mut stream,
            &peer,
            id,
            &mut who,
            &mut awaiting_server,
        ));
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            // PgBouncer tells the two apart: the client did its part, the server did not.
            Err(_) if awaiting_server => Err(PgError::fatal("client_login_timeout (server down)")),
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
            let end = Box::pin(crate::admin::console::run(&app, &mut stream, *a)).await;
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
    // TLS: close_notify. A plain socket needs no shutdown before the close (the drop
    // below): close sends the FIN itself, and the extra syscall showed in login storms.
    if stream.is_tls() {
        let _ = stream.shutdown().await;
    }
    app.live_clients.fetch_sub(1, Ordering::AcqRel);
}

async fn send_error(app: &App, stream: &mut Stream, who: &crate::net::stream::Who, e: &PgError) {
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

/// Largest rewritten-request buffer (prepared statements on) an idle client keeps.
const KEEP_OUT_BUF: usize = 1024;

async fn run(app: &App, stream: &mut Stream, mut s: Session) -> End {
    let mut tracker = Tracker::default();
    // Protocol-level prepared statements (transaction/statement mode): this client's
    // names, and the buffer its rewritten requests go through.
    let mut stmts = ClientStatements::default();
    let mut stmts_out = BytesMut::new();
    let mut cbuf = std::mem::take(&mut s.rbuf);
    let mut shutdown = app.shutdown_signal();
    let info = s.record.info.clone();
    // client_idle_timeout: when the client, holding no server, must have sent its next
    // request by. Set each time it becomes idle (login, release).
    let mut idle_until = idle_deadline(&s.pool.settings());
    loop {
        if info.is_killed() {
            return End::fatal(PgError::fatal(info.kill_reason.lock().clone()));
        }
        // Idle: no server, and no buffer unless bytes are pending (an emptied one is
        // given back here, after every transaction).
        if cbuf.is_empty() {
            cbuf = BytesMut::new();
            if *shutdown.borrow() {
                return End::fatal(PgError::fatal("server shutting down"));
            }
            tokio::select! {
                biased;
                r = stream.readable() => if r.is_err() { return End::quiet("client close request") },
                _ = shutdown.changed() => return End::fatal(PgError::fatal("server shutting down")),
                _ = info.killed() => continue,
                _ = expire(idle_until), if idle_until.is_some() => {
                    return End::fatal(PgError::fatal("client_idle_timeout"));
                }
            }
            // `readable` can be stale (the readiness left over from the login's reads, or
            // a spurious wake-up), so the read is tried once without waiting. It goes
            // through the thread's scratch buffer: the request is kept in a buffer of its
            // own size, which is all a queued client holds. Nothing there = the readiness
            // is now cleared; back to waiting.
            let read = std::future::poll_fn(|cx| {
                match crate::net::scratch::poll_read_into(&mut *stream, cx, &mut cbuf) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending => Poll::Ready(None),
                }
            })
            .await;
            match read {
                None => continue,
                Some(Ok(0) | Err(_)) => return End::quiet("client close request"),
                Some(Ok(_)) => {}
            }
        }
        // Wait for a whole header: Terminate must not cost a lease. A client that stops
        // part-way through one is still idle.
        if cbuf.len() < 5 {
            let r = tokio::select! {
                r = stream.read_buf(&mut cbuf) => r,
                _ = expire(idle_until), if idle_until.is_some() => {
                    return End::fatal(PgError::fatal("client_idle_timeout"));
                }
            };
            match r {
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
        // Only request messages may start a lease. Anything else would be forwarded,
        // owe no ReadyForQuery and release the server at once, leaving the client waiting
        // for an answer that never comes (PostgreSQL closes that server with an error).
        if !b"QFPBDESHCdcf".contains(&cbuf[0]) {
            return End::fatal(PgError::fatal("unknown pkt"));
        }
        // Parse + Sync of a statement this pool knows: answered without a server.
        if cbuf[0] == b'P'
            && settings.mode != PoolMode::Session
            && (settings.max_prepared_statements > 0 || !stmts.is_empty())
        {
            let mut reply = BytesMut::new();
            if let Some(n) = stmts.answer_without_server(
                &cbuf,
                Arc::as_ptr(&s.pool) as usize,
                tracker.pushed(),
                settings.max_packet_size,
                &mut reply,
            ) {
                s.pool.stats.add(&TxStats {
                    client_parse_count: 1,
                    prepared_cache_hits: 1,
                    ..Default::default()
                });
                info.prepared_statements
                    .store(stmts.len() as u64, Ordering::Relaxed);
                if stream.write_all(&reply).await.is_err() {
                    return End::quiet("client unexpected eof");
                }
                let _ = cbuf.split_to(n);
                continue;
            }
        }
        let settled = Box::pin(transaction(
            stream,
            &mut s,
            &mut cbuf,
            &mut tracker,
            &mut stmts,
            &mut stmts_out,
            &info,
            &settings,
        ))
        .await;
        if let Err(end) = settled {
            return end;
        }
        // The rewritten-request buffer is kept while it is small (a few requests' worth,
        // reused by the next lease); one grown by a large request or COPY is given back.
        if stmts_out.capacity() > KEEP_OUT_BUF {
            stmts_out = BytesMut::new();
        }
        idle_until = idle_deadline(&settings);
    }
}

/// One lease: a server for the request in `cbuf`, parameters synchronised, the relay to
/// the release point, the server returned. `Ok` = the client is idle again.
///
/// A function of its own, boxed by the caller, because what it keeps across its awaits
/// (settings, the server, meters, the relay) would otherwise stay reserved in every
/// client's task while it is idle: the box lives only as long as the transaction.
#[allow(clippy::too_many_arguments)]
async fn transaction(
    stream: &mut Stream,
    s: &mut Session,
    cbuf: &mut BytesMut,
    tracker: &mut Tracker,
    stmts: &mut ClientStatements,
    stmts_out: &mut BytesMut,
    info: &crate::stats::ClientInfo,
    settings: &crate::pool::PoolSettings,
) -> Result<(), End> {
    // Clock reads are counted here: a lease that finds an idle server reads the clock
    // once for the SHOW columns and once for the meter, and a queued one twice more.
    let wait_from = Instant::now();
    let request_us = crate::stats::now_us();
    info.request_time_us.store(request_us, Ordering::Relaxed);
    info.set_state(ClientState::Waiting);
    info.wait_start_us.store(request_us, Ordering::Relaxed);
    // Most requests find an idle server at once: no future, no select, no timer. The
    // others get a boxed lease, so what a wait needs (the queue slot, its timers) is not
    // part of every transaction's future.
    let (leased, waited) = match lease_now(s, settings, wait_from) {
        Ok(conn) => (Ok(conn), false),
        Err(to_check) => {
            let mut leasing = Box::pin(lease(s, settings, to_check));
            match std::future::poll_fn(|cx| Poll::Ready(leasing.as_mut().poll(cx))).await {
                Poll::Ready(r) => (r.map_err(End::fatal), false),
                Poll::Pending => (queued(stream, leasing.as_mut(), info).await, true),
            }
        }
    };
    info.wait_start_us.store(0, Ordering::Relaxed);
    let mut server = match leased {
        Ok(c) => c,
        Err(end) => return Err(end),
    };
    let (leased_at, leased_us, wait_time) = if waited {
        let t = Instant::now();
        let waited_us = t.saturating_duration_since(wait_from).as_micros() as u64;
        (t, crate::stats::now_us(), waited_us)
    } else {
        (wait_from, request_us, 0)
    };
    let mut tx = TxStats {
        server_assignment_count: 1,
        wait_time,
        ..Default::default()
    };
    info.set_state(ClientState::Active);
    info.link.store(server.id, Ordering::Relaxed);
    server.info.set_state(ServerState::Active);
    server.info.link.store(info.id, Ordering::Relaxed);
    server
        .info
        .request_time_us
        .store(leased_us, Ordering::Relaxed);
    let set_id = s.params.set_id();
    let known_equal =
        set_id.is_some_and(|id| server.params_synced == Some((id, server.params.version())));
    if !known_equal {
        if let Some(sql) = s.params.sync_sql(&server.params) {
            if simple_query(&mut server, &sql, settings.max_packet_size)
                .await
                .is_err()
            {
                s.pool.discard(server);
                return Err(End::fatal(PgError::fatal("invalid server parameter")));
            }
            s.params.adopt_canonical(&server.params);
        }
        server.params_synced = s.params.set_id().map(|id| (id, server.params.version()));
    }
    s.cancel.slot.arm(ServerKey {
        route: server.route.clone(),
        pid: server.backend_pid,
        secret: server.backend_secret,
    });
    tracker.reset();
    let mut meter = Meter::new(&mut tx)
        .starting_at(leased_at)
        .with_timeouts(Timeouts {
            query: settings.query_timeout,
            idle_transaction: settings.idle_transaction_timeout,
            transaction: settings.transaction_timeout,
        });
    // max_prepared_statements > 0 outside session mode: named statements are
    // rewritten. A client that already has statements keeps that even if a RELOAD
    // set the limit to 0, or its names would stop working.
    let max_prepared = settings.max_prepared_statements as usize;
    let prepared = if settings.mode != PoolMode::Session && (max_prepared > 0 || !stmts.is_empty())
    {
        stmts.new_lease(max_prepared.max(1), Arc::as_ptr(&s.pool) as usize);
        server.prepared.new_lease();
        Some((&mut *stmts, &mut *stmts_out))
    } else {
        None
    };
    let end = tokio::select! {
        biased;
        end = relay_with(
            stream,
            cbuf,
            &mut server,
            tracker,
            &mut s.params,
            &mut meter,
            settings.mode,
            settings.max_packet_size,
            prepared,
        ) => end,
        _ = info.killed() => RelayEnd::Killed,
    };
    let idle_since = meter.last_ready.unwrap_or_else(Instant::now);
    info.prepared_statements
        .store(stmts.len() as u64, Ordering::Relaxed);
    server
        .info
        .prepared_statements
        .store(server.prepared.len() as u64, Ordering::Relaxed);
    let cache = std::mem::take(&mut stmts.counters);
    tx.prepared_cache_hits += cache.hits;
    tx.prepared_cache_misses += cache.misses;
    tx.prepared_cache_evictions += cache.evictions;
    s.pool.stats.add(&tx);
    crate::stats::prometheus::lease_done(&s.pool, &tx);
    info.set_state(ClientState::Idle);
    info.link.store(0, Ordering::Relaxed);
    let cancels_done = s.cancel.slot.disarm().await;
    match end {
        RelayEnd::Release => {
            if !cancels_done {
                s.pool.discard(server);
            } else if settings.server_reset_query_always && !settings.server_reset_query.is_empty()
            {
                reset_and_release(s, server, &settings.server_reset_query).await;
            } else {
                s.pool.release_at(server, settings, idle_since);
            }
        }
        RelayEnd::ClientTerminated => {
            // Session mode (or any mode with the server idle): reset, then reuse.
            let reset = settings.mode == PoolMode::Session || settings.server_reset_query_always;
            if tracker.tx_status() != b'I' || !cancels_done {
                s.pool.discard(server);
            } else if reset && !settings.server_reset_query.is_empty() {
                reset_and_release(s, server, &settings.server_reset_query).await;
            } else {
                s.pool.release(server);
            }
            return Err(End::quiet("client close request"));
        }
        RelayEnd::ClientGone => {
            // Mid-transaction or mid-request: never hand this server to anyone else.
            if tracker.may_release() && cancels_done && settings.mode != PoolMode::Session {
                s.pool.release(server);
            } else if tracker.quiet() && tracker.tx_status() == b'I' && cancels_done {
                reset_and_release(s, server, &settings.server_reset_query).await;
            } else {
                s.pool.discard(server);
            }
            return Err(End::quiet("client unexpected eof"));
        }
        RelayEnd::ServerGone => {
            s.pool.discard(server);
            return Err(End::fatal(PgError::fatal("server conn crashed?")));
        }
        RelayEnd::ClientProtocol(e) => {
            s.pool.discard(server);
            return Err(End::fatal(PgError::fatal(e.to_string())));
        }
        RelayEnd::ServerProtocol(e) => {
            s.pool.discard(server);
            return Err(End::fatal(PgError::fatal(format!(
                "server sent bad packet: {e}"
            ))));
        }
        RelayEnd::Killed => {
            s.pool.discard(server);
            return Err(End::fatal(PgError::fatal(info.kill_reason.lock().clone())));
        }
        RelayEnd::ServerOutOfStep => {
            s.pool.discard(server);
            return Err(End::fatal(PgError::fatal(
                "server sent an unexpected message",
            )));
        }
        RelayEnd::FastClose => {
            // Idle and owing nothing: release closes it (close_needed) cleanly.
            s.pool.release(server);
            return Err(End::fatal(PgError::fatal("database configuration changed")));
        }
        RelayEnd::StatementViolation => {
            s.pool.discard(server);
            return Err(End::fatal(PgError::fatal(
                "transaction blocks not allowed in statement pooling mode",
            )));
        }
        RelayEnd::Timeout { what, in_sync } => {
            // Closed, not rolled back and reused: closing needs no round trip and
            // leaves nothing to prove clean (PgBouncer closes it too). A backend
            // idle in a transaction sees EOF and aborts at once; a busy one would
            // finish its query first, so it is cancelled as well.
            if !tracker.quiet() {
                cancel_running(&server);
            }
            s.pool.discard(server);
            if !in_sync {
                // An ErrorResponse after half a message would be read as part of
                // it; a plain close is the clearer end.
                return Err(End::quiet(what.message()));
            }
            return Err(End::fatal(PgError::fatal(what.message())));
        }
    }
    Ok(())
}

/// When an idle client is dropped with "client_idle_timeout"; `None` = never. Session mode
/// is exempt: PgBouncer links a session-mode client to its server at login, and
/// client_idle_timeout only applies to clients without one.
fn idle_deadline(settings: &crate::pool::PoolSettings) -> Option<tokio::time::Instant> {
    if settings.client_idle_timeout.is_zero() || settings.mode == PoolMode::Session {
        return None;
    }
    tokio::time::Instant::now().checked_add(settings.client_idle_timeout)
}

/// Resolves at `at`; never when `None`. Builds no timer until first polled, so a disabled
/// `select!` branch costs nothing.
async fn expire(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// PgBouncer 1.25's NOTICE to a client queued longer than query_wait_notify.
const QUEUED_NOTICE: &str =
    "No server connection available in postgres backend, client being queued";

/// Waits out a lease that did not complete at once. KILL ends the wait; after
/// query_wait_notify the client gets the NOTICE once (the pool's expiry task says when)
/// and goes on waiting. The wait itself is bounded by the pool (query_wait_timeout,
/// query_timeout).
async fn queued<F>(
    stream: &mut Stream,
    mut leasing: Pin<&mut F>,
    info: &crate::stats::ClientInfo,
) -> Result<ServerConn, End>
where
    F: Future<Output = Result<ServerConn, PgError>>,
{
    info.clear_queue_notice();
    // A client that goes away while it waits (EOF, or a Terminate after its request)
    // leaves the queue: its request must not run on a server later. Once it has sent
    // anything else (a pipelined request), the socket is not watched any more.
    let mut watch = true;
    loop {
        tokio::select! {
            biased;
            r = leasing.as_mut() => return r.map_err(End::fatal),
            _ = info.killed() => {
                return Err(End::fatal(PgError::fatal(info.kill_reason.lock().clone())));
            }
            gone = stream.peer_gone(), if watch => {
                if gone {
                    return Err(End::quiet("client unexpected eof"));
                }
                watch = false;
            }
            _ = info.queue_notice() => {
                let mut out = BytesMut::new();
                crate::proto::error::notice(&mut out, QUEUED_NOTICE, None);
                // The client is waiting for an answer, so its socket has room for a
                // hundred bytes; one that still cannot take them in a second is not
                // reading at all. A half-written notice would garble what follows, so
                // such a client is dropped.
                let sent = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out));
                if !matches!(sent.await, Ok(Ok(()))) {
                    return Err(End::quiet("client unexpected eof"));
                }
            }
        }
    }
}

/// Cancels whatever a timed-out server is running, on a connection of its own, so the
/// backend stops now instead of when its query ends. Fire and forget: the server is
/// closed either way, and the cancel is bounded like a client's.
fn cancel_running(server: &ServerConn) {
    let key = ServerKey {
        route: server.route.clone(),
        pid: server.backend_pid,
        secret: server.backend_secret,
    };
    tokio::spawn(async move {
        let sent =
            tokio::time::timeout(Duration::from_secs(10), super::cancel::send_cancel(&key)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!("cancel request to {} after a timeout failed", key.route);
        }
    });
}

/// A server from the pool that is still alive and has nothing unexpected to say; one idle
/// longer than server_check_delay must pass server_check_query first. A server that fails
/// either test is closed and the next one taken, so the client never sees it.
///
/// `first`: an idle server [`lease_now`] took that must pass server_check_query first.
async fn lease(
    s: &Session,
    settings: &crate::pool::PoolSettings,
    mut first: Option<ServerConn>,
) -> Result<ServerConn, PgError> {
    loop {
        let conn = match first.take() {
            Some(c) => c,
            None => s.pool.acquire_with(settings, Some(&s.record.info)).await?,
        };
        if !server_is_clean(&conn) {
            s.pool.discard(conn);
            continue;
        }
        if let Some(mut conn) = s.pool.check_server(conn).await {
            conn.fast_close = settings.mode == PoolMode::Session && s.pool.target().fast_close;
            return Ok(conn);
        }
    }
}

/// [`lease`] without waiting: an idle server that is clean and needs no check query.
/// `Err(Some(server))`: an idle server that must be checked first; `Err(None)`: none idle
/// (or the pool is paused).
fn lease_now(
    s: &Session,
    settings: &crate::pool::PoolSettings,
    now: Instant,
) -> Result<ServerConn, Option<ServerConn>> {
    loop {
        let conn = s.pool.try_idle(settings).ok_or(None)?;
        if !server_is_clean(&conn) {
            s.pool.discard(conn);
            continue;
        }
        if s.pool.needs_check_at(&conn, now) {
            return Err(Some(conn));
        }
        let mut conn = conn;
        conn.fast_close = settings.mode == PoolMode::Session && s.pool.target().fast_close;
        return Ok(conn);
    }
}

/// No unread bytes, no EOF: see [`ServerConn::is_clean`]. Free in the common case (no
/// syscall unless epoll saw the idle socket readable).
fn server_is_clean(conn: &ServerConn) -> bool {
    conn.is_clean()
}

async fn reset_and_release(s: &Session, mut server: ServerConn, query: &str) {
    if query.is_empty() {
        s.pool.release(server);
        return;
    }
    let max = s.pool.settings().max_packet_size;
    if simple_query(&mut server, query, max).await.is_err() {
        s.pool.discard(server);
        return;
    }
    // A reset query that drops prepared statements (DISCARD ALL, DEALLOCATE …) leaves the
    // server's statement cache unknown: make it empty for sure.
    if !server.prepared.is_empty() {
        let q = query.to_ascii_uppercase();
        if q.contains("DISCARD") || q.contains("DEALLOCATE") {
            if simple_query(&mut server, "DEALLOCATE ALL", max)
                .await
                .is_err()
            {
                s.pool.discard(server);
                return;
            }
            server.prepared.clear();
            server.info.prepared_statements.store(0, Ordering::Relaxed);
        }
    }
    s.pool.release(server);
}
