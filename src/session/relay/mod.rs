//! The hot loop: bytes between a client and its leased server until the release point.
//!
//! One hand-written future polls both directions: read what is there, find frame
//! boundaries from the 5-byte headers, let the tracker see each tag, and forward whole
//! read batches with one write. Only ReadyForQuery and ParameterStatus bodies are
//! inspected; every other message is streamed through, even before it has fully
//! arrived, so a large row or COPY costs no more memory than the read buffer. Both
//! directions progress independently, so a client streaming COPY data while the server
//! streams notices cannot deadlock the pair.
//!
//! Timeouts (query_timeout, idle_transaction_timeout, transaction_timeout) cost one branch
//! per wake-up when none is set. When some are, the relay keeps one `Sleep` per lease,
//! created when first needed and reset only when the deadline moves: the deadline is
//! worked out from the meter's clocks each time the future is about to sleep, never per
//! message.
//!
//! `meter.rs` keeps the lease's counters, clocks and timeouts; `prepared_scan.rs` the
//! scans used when protocol-level prepared statements are rewritten.

mod meter;
mod prepared_scan;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::params::ClientParams;
use super::prepared::ClientStatements;
use super::tracker::{ClientAction, Tracker};
use crate::config::PoolMode;
use crate::net::Stream;
use crate::proto::frame::{peek_header, read_cstr, FrameError};
use crate::server::{ServerConn, ServerParams};

pub use meter::{Expired, Meter, Timeouts};
use prepared_scan::{emit_synths, scan_client_prepared, scan_server_prepared};
/// Stop reading a side once this much of its output is waiting to be written.
const HIGH_WATER: usize = 64 * 1024;
/// Read in chunks of at least this much spare capacity.
const READ_CHUNK: usize = 8 * 1024;

/// Why the relay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Release point: the server is idle, owes nothing, and all its output was delivered.
    Release,
    /// The client sent Terminate while its server owed nothing.
    ClientTerminated,
    /// The client went away (EOF, error, or Terminate with requests in progress).
    ClientGone,
    /// The server connection failed ("server conn crashed?").
    ServerGone,
    ClientProtocol(FrameError),
    ServerProtocol(FrameError),
    /// Statement mode: the server reported a transaction block.
    StatementViolation,
    /// KILL_CLIENT / KILL: the client is to be dropped now.
    Killed,
    /// The server answered something its requests do not call for while pgsluice was
    /// rewriting prepared statements: the stream can no longer be trusted.
    ServerOutOfStep,
    /// server_fast_close (session mode): the server was marked close_needed (RECONNECT,
    /// RELOAD, a DNS change) and is between transactions; it is closed and the client
    /// told "database configuration changed".
    FastClose,
    /// A client-side timeout ran out; the server is in an unknown state. `in_sync`: what
    /// the client has been sent ends at a message boundary, so an ErrorResponse may
    /// follow (not so while a large result is half-way through to a slow client).
    Timeout {
        what: Expired,
        in_sync: bool,
    },
}

/// One direction's buffer: `buf[..fwd]` is scanned and ready to write; `skip` bytes of
/// the current message are still to come and need no inspection.
///
/// With prepared statements on, the client side has an `out` buffer instead: messages are
/// taken off the front of `buf` as they are scanned, rewritten or copied into `out`, and
/// `out` is what is written (`fwd` stays 0).
struct Side<'a> {
    buf: &'a mut BytesMut,
    fwd: usize,
    skip: usize,
    /// A message we must see whole is this long; read until it is buffered.
    want: usize,
    eof: bool,
    out: Option<&'a mut BytesMut>,
    /// Short reads go through the thread's scratch buffer (the client side: its buffer
    /// is per client and lives through queue waits; a server's is kept and reused).
    scratch: bool,
}

/// Nothing left to write: TLS output rustls still holds is pushed out (a TLS write may
/// be accepted before it reaches the socket). Plain sockets answer at once.
#[inline]
fn flush(cx: &mut Context<'_>, s: &mut Stream) -> Poll<std::io::Result<bool>> {
    if !s.is_tls() {
        return Poll::Ready(Ok(false));
    }
    match Pin::new(s).poll_flush(cx) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(false)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

impl<'a> Side<'a> {
    fn new(buf: &'a mut BytesMut) -> Self {
        Side {
            buf,
            fwd: 0,
            skip: 0,
            want: 0,
            eof: false,
            out: None,
            scratch: false,
        }
    }

    fn wants_read(&self) -> bool {
        match &self.out {
            None => {
                !self.eof && (self.buf.len() < HIGH_WATER || self.buf.len() < self.fwd + self.want)
            }
            Some(out) => {
                !self.eof
                    && out.len() < HIGH_WATER
                    && (self.buf.len() < HIGH_WATER || self.buf.len() < self.want)
            }
        }
    }

    /// Everything scanned has been written. With an `out` buffer, also no message has
    /// begun in `buf`: one held back until it is whole (a Parse, a Bind's names) belongs
    /// to this lease, or the request loop would lease again at once for the same bytes.
    fn flushed(&self) -> bool {
        match &self.out {
            None => self.fwd == 0,
            Some(out) => out.is_empty() && self.buf.len() < crate::proto::HEADER_LEN,
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, s: &mut Stream) -> Poll<std::io::Result<usize>> {
        let need = READ_CHUNK.max(self.want.saturating_sub(self.buf.len() - self.fwd));
        let room = self.buf.capacity() - self.buf.len() >= need / 2;
        if self.scratch && !room && need == READ_CHUNK {
            // Most reads find a short request or nothing at all (then no buffer was
            // grown for it). A read that fills the scratch buffer is bulk data (COPY,
            // a large row): from then on the buffer grows and is read into directly.
            let r = crate::net::scratch::poll_read_into(s, cx, self.buf);
            if matches!(r, Poll::Ready(Ok(n)) if n == crate::net::scratch::SCRATCH_LEN) {
                self.buf.reserve(READ_CHUNK);
            }
            return r;
        }
        if !room {
            self.buf.reserve(need);
        }
        poll_read_buf(Pin::new(s), cx, self.buf)
    }

    /// Writes what is ready. `Ready(Ok(true))` = made progress.
    fn poll_write(&mut self, cx: &mut Context<'_>, s: &mut Stream) -> Poll<std::io::Result<bool>> {
        if let Some(out) = self.out.as_deref_mut() {
            if out.is_empty() {
                return flush(cx, s);
            }
            return match Pin::new(s).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    out.advance(n);
                    Poll::Ready(Ok(true))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        if self.fwd == 0 {
            return flush(cx, s);
        }
        match Pin::new(s).poll_write(cx, &self.buf[..self.fwd]) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                self.buf.advance(n);
                self.fwd -= n;
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn drained(&self) -> bool {
        self.buf.is_empty()
    }
}

/// What one scan of newly read bytes found that ends the relay.
enum Stop {
    Terminate,
    Statement,
    OutOfStep,
}

/// A whole ReadyForQuery or ParameterStatus at the scan position: reads it and moves past.
fn whole_z_or_s(
    side: &mut Side<'_>,
    h: crate::proto::Header,
    tracker: &mut Tracker,
    server_params: &mut ServerParams,
    client_params: &mut ClientParams,
    meter: &mut Meter<'_>,
    mode: PoolMode,
) -> Option<Stop> {
    let body = &side.buf[side.fwd + 5..side.fwd + h.frame_len()];
    if h.tag == b'Z' {
        let status = body.first().copied().unwrap_or(b'I');
        tracker.server_msg(b'Z', status);
        meter.ready(status, !tracker.quiet());
        if mode == PoolMode::Statement && status != b'I' {
            side.buf.truncate(side.fwd);
            return Some(Stop::Statement);
        }
    } else {
        let mut pos = 0;
        if let (Some(k), Some(v)) = (read_cstr(body, &mut pos), read_cstr(body, &mut pos)) {
            server_params.set(k, v);
            if client_params.get(k).is_some() {
                client_params.set(k, v);
            }
        }
    }
    side.fwd += h.frame_len();
    None
}

/// Scans client bytes: every message's tag goes to the tracker; Terminate is kept back.
fn scan_client(
    side: &mut Side<'_>,
    tracker: &mut Tracker,
    meter: &mut Meter<'_>,
    max: u32,
) -> Result<Option<Stop>, FrameError> {
    let mut now = None;
    loop {
        let avail = side.buf.len() - side.fwd;
        if avail == 0 {
            return Ok(None);
        }
        if side.skip > 0 {
            let n = side.skip.min(avail);
            side.fwd += n;
            side.skip -= n;
            continue;
        }
        let Some(h) = peek_header(&side.buf[side.fwd..], max)? else {
            return Ok(None);
        };
        if tracker.client_msg(h.tag) == ClientAction::Terminate {
            side.buf.truncate(side.fwd);
            return Ok(Some(Stop::Terminate));
        }
        match h.tag {
            b'Q' | b'F' | b'S' | b'P' | b'B' | b'E' => meter.request(&mut now),
            _ => {}
        }
        match h.tag {
            b'P' => meter.stats.client_parse_count += 1,
            b'B' => meter.stats.bind_count += 1,
            _ => {}
        }
        let n = h.frame_len().min(avail);
        side.fwd += n;
        side.skip = h.frame_len() - n;
    }
}

/// Scans server bytes: ReadyForQuery and ParameterStatus are read whole; everything
/// else streams through by tag.
fn scan_server(
    side: &mut Side<'_>,
    tracker: &mut Tracker,
    server_params: &mut ServerParams,
    client_params: &mut ClientParams,
    meter: &mut Meter<'_>,
    mode: PoolMode,
    max: u32,
) -> Result<Option<Stop>, FrameError> {
    side.want = 0;
    loop {
        let avail = side.buf.len() - side.fwd;
        if avail == 0 {
            return Ok(None);
        }
        if side.skip > 0 {
            let n = side.skip.min(avail);
            side.fwd += n;
            side.skip -= n;
            continue;
        }
        let Some(h) = peek_header(&side.buf[side.fwd..], max)? else {
            return Ok(None);
        };
        match h.tag {
            b'Z' | b'S' => {
                if avail < h.frame_len() {
                    side.want = h.frame_len();
                    return Ok(None);
                }
                if let Some(stop) =
                    whole_z_or_s(side, h, tracker, server_params, client_params, meter, mode)
                {
                    return Ok(Some(stop));
                }
            }
            tag => {
                if tag == b'1' {
                    meter.stats.server_parse_count += 1;
                }
                tracker.server_msg(tag, 0);
                let n = h.frame_len().min(avail);
                side.fwd += n;
                side.skip = h.frame_len() - n;
            }
        }
    }
}

/// Relays between `client` and `server` until a release point (transaction and statement
/// mode) or until either side ends. `cbuf` holds client bytes already read.
// The arguments are the pieces of one session the relay needs mutably at once; bundling
// them into a struct would only move the borrow-splitting elsewhere.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    client: &mut Stream,
    cbuf: &mut BytesMut,
    server: &mut ServerConn,
    tracker: &mut Tracker,
    params: &mut ClientParams,
    meter: &mut Meter<'_>,
    mode: PoolMode,
    max_packet: u32,
) -> RelayEnd {
    relay_with(
        client, cbuf, server, tracker, params, meter, mode, max_packet, None,
    )
    .await
}

/// [`relay`], with protocol-level prepared statements rewritten when `prepared` is given:
/// the client's statements and the buffer its rewritten bytes go through.
#[allow(clippy::too_many_arguments)]
pub async fn relay_with(
    client: &mut Stream,
    cbuf: &mut BytesMut,
    server: &mut ServerConn,
    tracker: &mut Tracker,
    params: &mut ClientParams,
    meter: &mut Meter<'_>,
    mode: PoolMode,
    max_packet: u32,
    prepared: Option<(&mut ClientStatements, &mut BytesMut)>,
) -> RelayEnd {
    let crate::server::Backend {
        stream: sstream,
        rbuf,
        prepared: sprep,
        params: sparams,
        info: sinfo,
        fast_close,
        ..
    } = &mut **server;
    let mut c = Side::new(cbuf);
    c.scratch = true;
    let mut s = Side::new(rbuf);
    let mut cs = match prepared {
        Some((cs, out)) => {
            out.clear();
            c.out = Some(out);
            Some(cs)
        }
        None => None,
    };
    let mut terminating = false;
    // The lease's one timer, created the first time a deadline exists.
    let timed = meter.limits.any();
    let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
    let mut armed: Option<Instant> = None;

    // Bytes already buffered (the request that triggered the lease) are scanned first.
    meter.stats.bytes_received += c.buf.len() as u64;
    meter.stats.bytes_sent += s.buf.len() as u64;
    let scanned = match cs.as_deref_mut() {
        None => scan_client(&mut c, tracker, meter, max_packet),
        Some(cs) => scan_client_prepared(&mut c, cs, sprep, tracker, meter, max_packet),
    };
    // Later requests are timed when they are read.
    meter.lease_start = None;
    match scanned {
        Err(e) => return RelayEnd::ClientProtocol(e),
        Ok(Some(Stop::Terminate)) => terminating = true,
        _ => {}
    }
    let scanned = match cs.as_deref_mut() {
        None => scan_server(&mut s, tracker, sparams, params, meter, mode, max_packet),
        Some(cs) => scan_server_prepared(
            &mut s, tracker, cs, sprep, sparams, params, meter, mode, max_packet,
        ),
    };
    match scanned {
        Err(e) => return RelayEnd::ServerProtocol(e),
        Ok(Some(Stop::Statement)) => return RelayEnd::StatementViolation,
        Ok(Some(Stop::OutOfStep)) => return RelayEnd::ServerOutOfStep,
        _ => {}
    }

    poll_fn(|cx| {
        // A side whose read returned Pending in this wake-up has its waker registered and
        // cannot have become readable before we yield: it is not read again until then
        // (each such read costs a readiness check and a waker registration).
        let mut s_parked = false;
        let mut c_parked = false;
        loop {
            let mut progress = false;

            // Server output to the client first: it is what frees the server.
            match s.poll_write(cx, client) {
                Poll::Ready(Ok(p)) => progress |= p,
                Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ClientGone),
                Poll::Pending => {}
            }
            match c.poll_write(cx, sstream) {
                Poll::Ready(Ok(p)) => progress |= p,
                Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ServerGone),
                Poll::Pending => {}
            }

            if terminating && c.flushed() {
                if tracker.quiet() && s.drained() {
                    return Poll::Ready(RelayEnd::ClientTerminated);
                }
                if !tracker.quiet() {
                    return Poll::Ready(RelayEnd::ClientGone);
                }
            }
            if mode != PoolMode::Session
                && tracker.may_release()
                && s.drained()
                && c.flushed()
                && c.skip == 0
            {
                return Poll::Ready(RelayEnd::Release);
            }
            // Checked before the client's next request is read: an idle session is ended
            // when it next speaks, a busy one at the end of its transaction.
            if *fast_close
                && tracker.may_release()
                && s.drained()
                && c.flushed()
                && c.skip == 0
                && sinfo
                    .close_needed
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Poll::Ready(RelayEnd::FastClose);
            }

            if !s_parked && s.wants_read() {
                match s.poll_read(cx, sstream) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(RelayEnd::ServerGone),
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        meter.stats.bytes_sent += n as u64;
                        let scanned = match cs.as_deref_mut() {
                            None => scan_server(
                                &mut s, tracker, sparams, params, meter, mode, max_packet,
                            ),
                            Some(cs) => scan_server_prepared(
                                &mut s, tracker, cs, sprep, sparams, params, meter, mode,
                                max_packet,
                            ),
                        };
                        match scanned {
                            Err(e) => return Poll::Ready(RelayEnd::ServerProtocol(e)),
                            Ok(Some(Stop::Statement)) => {
                                return Poll::Ready(RelayEnd::StatementViolation);
                            }
                            Ok(Some(Stop::OutOfStep)) => {
                                return Poll::Ready(RelayEnd::ServerOutOfStep);
                            }
                            _ => {}
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ServerGone),
                    Poll::Pending => s_parked = true,
                }
            }
            if !c_parked && !terminating && c.wants_read() {
                match c.poll_read(cx, client) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(RelayEnd::ClientGone),
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        meter.stats.bytes_received += n as u64;
                        let scanned = match cs.as_deref_mut() {
                            None => scan_client(&mut c, tracker, meter, max_packet),
                            Some(cs) => {
                                scan_client_prepared(&mut c, cs, sprep, tracker, meter, max_packet)
                            }
                        };
                        match scanned {
                            Err(e) => return Poll::Ready(RelayEnd::ClientProtocol(e)),
                            Ok(Some(Stop::Terminate)) => terminating = true,
                            Ok(_) => {}
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ClientGone),
                    Poll::Pending => c_parked = true,
                }
            }
            if let Some(cs) = cs.as_deref_mut() {
                // Client bytes that waited (a stall on earlier batches, now maybe settled),
                // and answers pgsluice synthesises, which need no server bytes to go out.
                if !terminating && !c.buf.is_empty() && c.want <= c.buf.len() {
                    let before = c.buf.len();
                    match scan_client_prepared(&mut c, cs, sprep, tracker, meter, max_packet) {
                        Err(e) => return Poll::Ready(RelayEnd::ClientProtocol(e)),
                        Ok(Some(Stop::Terminate)) => terminating = true,
                        Ok(_) => {}
                    }
                    progress |= c.buf.len() != before || terminating;
                }
                if s.skip == 0 && tracker.synth_ready() {
                    emit_synths(&mut s, tracker, cs, sprep);
                    progress = true;
                }
                if tracker.desync() {
                    return Poll::Ready(RelayEnd::ServerOutOfStep);
                }
            }
            if !progress {
                if timed {
                    if let Some(what) =
                        poll_deadline(cx, meter, tracker, timer.as_mut(), &mut armed)
                    {
                        let in_sync = s.drained() && s.skip == 0;
                        return Poll::Ready(RelayEnd::Timeout { what, in_sync });
                    }
                }
                return Poll::Pending;
            }
        }
    })
    .await
}

/// Points the lease's timer at the current deadline (moving it only when the deadline
/// moved) and polls it, so the relay is woken when it passes. `Some` = it has passed.
fn poll_deadline(
    cx: &mut Context<'_>,
    meter: &mut Meter<'_>,
    tracker: &Tracker,
    mut timer: Pin<&mut Option<tokio::time::Sleep>>,
    armed: &mut Option<Instant>,
) -> Option<Expired> {
    // No deadline: a timer left from an earlier one may still wake the relay once;
    // that wake-up finds no progress and goes back to sleep.
    let (at, what) = meter.deadline(tracker)?;
    if *armed != Some(at) {
        *armed = Some(at);
        let when = tokio::time::Instant::from_std(at);
        match timer.as_mut().as_pin_mut() {
            Some(t) => t.reset(when),
            None => timer.set(Some(tokio::time::sleep_until(when))),
        }
    }
    let t = timer.as_pin_mut()?;
    t.poll(cx).is_ready().then_some(what)
}
