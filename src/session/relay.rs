//! The hot loop: bytes between a client and its leased server until the release point.
//!
//! One hand-written future polls both directions: read what is there, find frame
//! boundaries from the 5-byte headers, let the tracker see each tag, and forward whole
//! read batches with one write. Only ReadyForQuery and ParameterStatus bodies are
//! inspected; every other message is streamed through, even before it has fully
//! arrived, so a large row or COPY costs no more memory than the read buffer. Both
//! directions progress independently, so a client streaming COPY data while the server
//! streams notices cannot deadlock the pair.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::params::ClientParams;
use super::tracker::{ClientAction, Tracker};
use crate::config::PoolMode;
use crate::net::Stream;
use crate::proto::frame::{peek_header, read_cstr, FrameError};
use crate::server::{ServerConn, ServerParams};

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
}

/// One direction's buffer: `buf[..fwd]` is scanned and ready to write; `skip` bytes of
/// the current message are still to come and need no inspection.
struct Side<'a> {
    buf: &'a mut BytesMut,
    fwd: usize,
    skip: usize,
    /// A message we must see whole is this long; read until it is buffered.
    want: usize,
    eof: bool,
}

impl<'a> Side<'a> {
    fn new(buf: &'a mut BytesMut) -> Self {
        Side {
            buf,
            fwd: 0,
            skip: 0,
            want: 0,
            eof: false,
        }
    }

    fn wants_read(&self) -> bool {
        !self.eof && (self.buf.len() < HIGH_WATER || self.buf.len() < self.fwd + self.want)
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, s: &mut Stream) -> Poll<std::io::Result<usize>> {
        let need = READ_CHUNK.max(self.want.saturating_sub(self.buf.len() - self.fwd));
        if self.buf.capacity() - self.buf.len() < need / 2 {
            self.buf.reserve(need);
        }
        poll_read_buf(Pin::new(s), cx, self.buf)
    }

    /// Writes what is ready. `Ready(Ok(true))` = made progress.
    fn poll_write(&mut self, cx: &mut Context<'_>, s: &mut Stream) -> Poll<std::io::Result<bool>> {
        if self.fwd == 0 {
            return Poll::Ready(Ok(false));
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

/// Counters and clocks of one lease: bytes each way, queries (ReadyForQuery), transactions
/// (ReadyForQuery back to idle), and their times.
pub struct Meter<'a> {
    pub stats: &'a mut crate::stats::TxStats,
    /// When the oldest unanswered request was sent.
    query_start: Option<Instant>,
    /// When the current transaction's first request was sent.
    xact_start: Option<Instant>,
}

impl<'a> Meter<'a> {
    pub fn new(stats: &'a mut crate::stats::TxStats) -> Self {
        Meter {
            stats,
            query_start: None,
            xact_start: None,
        }
    }

    #[inline]
    fn request(&mut self, now: &mut Option<Instant>) {
        let t = *now.get_or_insert_with(Instant::now);
        self.query_start.get_or_insert(t);
        self.xact_start.get_or_insert(t);
    }

    #[inline]
    fn ready(&mut self, status: u8, still_owed: bool) {
        let now = Instant::now();
        self.stats.query_count += 1;
        if let Some(t) = self.query_start.take() {
            self.stats.query_time += now.duration_since(t).as_micros() as u64;
        }
        if still_owed {
            self.query_start = Some(now);
        }
        if status == b'I' {
            self.stats.xact_count += 1;
            if let Some(t) = self.xact_start.take() {
                self.stats.xact_time += now.duration_since(t).as_micros() as u64;
            }
        }
    }
}

/// What one scan of newly read bytes found that ends the relay.
enum Stop {
    Terminate,
    Statement,
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
                let body = &side.buf[side.fwd + 5..side.fwd + h.frame_len()];
                if h.tag == b'Z' {
                    let status = body.first().copied().unwrap_or(b'I');
                    tracker.server_msg(b'Z', status);
                    meter.ready(status, tracker.owed() > 0);
                    if mode == PoolMode::Statement && status != b'I' {
                        side.buf.truncate(side.fwd);
                        return Ok(Some(Stop::Statement));
                    }
                } else {
                    let mut pos = 0;
                    if let (Some(k), Some(v)) =
                        (read_cstr(body, &mut pos), read_cstr(body, &mut pos))
                    {
                        server_params.set(k, v);
                        if client_params.get(k).is_some() {
                            client_params.set(k, v);
                        }
                    }
                }
                side.fwd += h.frame_len();
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
    let ServerConn {
        stream: sstream,
        rbuf,
        params: sparams,
        ..
    } = server;
    let mut c = Side::new(cbuf);
    let mut s = Side::new(rbuf);
    let mut terminating = false;

    // Bytes already buffered (the request that triggered the lease) are scanned first.
    meter.stats.bytes_received += c.buf.len() as u64;
    meter.stats.bytes_sent += s.buf.len() as u64;
    match scan_client(&mut c, tracker, meter, max_packet) {
        Err(e) => return RelayEnd::ClientProtocol(e),
        Ok(Some(Stop::Terminate)) => terminating = true,
        _ => {}
    }
    match scan_server(&mut s, tracker, sparams, params, meter, mode, max_packet) {
        Err(e) => return RelayEnd::ServerProtocol(e),
        Ok(Some(Stop::Statement)) => return RelayEnd::StatementViolation,
        _ => {}
    }

    poll_fn(|cx| loop {
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

        if terminating && c.fwd == 0 {
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
            && c.fwd == 0
            && c.skip == 0
        {
            return Poll::Ready(RelayEnd::Release);
        }

        if s.wants_read() {
            match s.poll_read(cx, sstream) {
                Poll::Ready(Ok(0)) => return Poll::Ready(RelayEnd::ServerGone),
                Poll::Ready(Ok(n)) => {
                    progress = true;
                    meter.stats.bytes_sent += n as u64;
                    match scan_server(&mut s, tracker, sparams, params, meter, mode, max_packet) {
                        Err(e) => return Poll::Ready(RelayEnd::ServerProtocol(e)),
                        Ok(Some(Stop::Statement)) => {
                            return Poll::Ready(RelayEnd::StatementViolation);
                        }
                        _ => {}
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ServerGone),
                Poll::Pending => {}
            }
        }
        if !terminating && c.wants_read() {
            match c.poll_read(cx, client) {
                Poll::Ready(Ok(0)) => return Poll::Ready(RelayEnd::ClientGone),
                Poll::Ready(Ok(n)) => {
                    progress = true;
                    meter.stats.bytes_received += n as u64;
                    match scan_client(&mut c, tracker, meter, max_packet) {
                        Err(e) => return Poll::Ready(RelayEnd::ClientProtocol(e)),
                        Ok(Some(Stop::Terminate)) => terminating = true,
                        Ok(None) => {}
                        Ok(Some(Stop::Statement)) => {}
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ClientGone),
                Poll::Pending => {}
            }
        }
        if !progress {
            return Poll::Pending;
        }
    })
    .await
}
