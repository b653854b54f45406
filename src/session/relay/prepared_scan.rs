//! The relay's scans with protocol-level prepared statements on: client messages are
//! taken off the read buffer and rewritten into an output buffer (`prepared::client`);
//! server answers to injected messages are dropped, synthesised answers inserted in order,
//! and ErrorResponses put in the client's terms.

use bytes::{Buf, BytesMut};

use super::{whole_z_or_s, Meter, Side, Stop, HIGH_WATER};
use crate::config::PoolMode;
use crate::proto::frame::{peek_header, FrameError};
use crate::server::ServerParams;
use crate::session::params::ClientParams;
use crate::session::prepared::{self, ClientStatements, ServerStatements, Step};
use crate::session::tracker::{ServerAction, Synth, Tracker};

/// Replaces `buf[at..at + remove]` by `insert`, moving what follows.
fn splice(buf: &mut BytesMut, at: usize, remove: usize, insert: &[u8]) {
    let old = buf.len();
    let tail = at + remove;
    if insert.len() <= remove {
        buf[at..at + insert.len()].copy_from_slice(insert);
        buf.copy_within(tail..old, at + insert.len());
        buf.truncate(old - (remove - insert.len()));
    } else {
        let extra = insert.len() - remove;
        buf.resize(old + extra, 0);
        buf.copy_within(tail..old, tail + extra);
        buf[at..at + insert.len()].copy_from_slice(insert);
    }
}

/// Prepared statements on: scans client bytes off the front of the buffer into `out`,
/// rewriting named Parse/Bind/Describe/Close; other messages are copied as they arrive.
pub(super) fn scan_client_prepared(
    side: &mut Side<'_>,
    cs: &mut ClientStatements,
    sp: &mut ServerStatements,
    tracker: &mut Tracker,
    meter: &mut Meter<'_>,
    max: u32,
) -> Result<Option<Stop>, FrameError> {
    let mut now = None;
    side.want = 0;
    let Some(out) = side.out.as_deref_mut() else {
        return Ok(None);
    };
    loop {
        if out.len() >= HIGH_WATER {
            return Ok(None);
        }
        let avail = side.buf.len();
        if avail == 0 {
            return Ok(None);
        }
        if side.skip > 0 {
            let n = side.skip.min(avail);
            out.extend_from_slice(&side.buf[..n]);
            side.buf.advance(n);
            side.skip -= n;
            continue;
        }
        let Some(h) = peek_header(&side.buf[..], max)? else {
            return Ok(None);
        };
        if h.tag == b'X' {
            side.buf.clear();
            return Ok(Some(Stop::Terminate));
        }
        let (consumed, skip) =
            match cs.client_step(out, &side.buf[..], h.tag, h.frame_len(), tracker, sp) {
                Some(Step::Need(n)) => {
                    side.want = n;
                    return Ok(None);
                }
                Some(Step::Stall) => return Ok(None),
                Some(Step::Done { consumed, skip }) => (consumed, skip),
                None => {
                    tracker.client_msg(h.tag);
                    let n = h.frame_len().min(avail);
                    out.extend_from_slice(&side.buf[..n]);
                    (n, h.frame_len() - n)
                }
            };
        side.buf.advance(consumed);
        side.skip = skip;
        match h.tag {
            b'Q' | b'F' | b'S' | b'P' | b'B' | b'E' => meter.request(&mut now),
            _ => {}
        }
        match h.tag {
            b'P' => meter.stats.client_parse_count += 1,
            b'B' => meter.stats.bind_count += 1,
            _ => {}
        }
        if tracker.has_outcomes() {
            cs.settle(tracker, sp);
        }
    }
}

/// Writes the synthesised answers at the head of the queue into the server-to-client
/// stream at the scan position (a message boundary).
pub(super) fn emit_synths(
    side: &mut Side<'_>,
    tracker: &mut Tracker,
    cs: &mut ClientStatements,
    sp: &mut ServerStatements,
) {
    while let Some(sy) = tracker.take_synth() {
        let tag = match sy {
            Synth::ParseComplete => b'1',
            Synth::CloseComplete => b'3',
        };
        splice(side.buf, side.fwd, 0, &[tag, 0, 0, 0, 4]);
        side.fwd += 5;
    }
    if tracker.has_outcomes() {
        cs.settle(tracker, sp);
    }
}

/// Prepared statements on: as `scan_server`, and ParseComplete/CloseComplete of injected
/// messages are dropped, synthesised answers inserted in order, ErrorResponses put in the
/// client's terms, and DEALLOCATE ALL / DISCARD ALL noticed.
#[allow(clippy::too_many_arguments)]
pub(super) fn scan_server_prepared(
    side: &mut Side<'_>,
    tracker: &mut Tracker,
    cs: &mut ClientStatements,
    sp: &mut ServerStatements,
    server_params: &mut ServerParams,
    client_params: &mut ClientParams,
    meter: &mut Meter<'_>,
    mode: PoolMode,
    max: u32,
) -> Result<Option<Stop>, FrameError> {
    side.want = 0;
    loop {
        if side.skip == 0 && tracker.synth_ready() {
            emit_synths(side, tracker, cs, sp);
        }
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
        let len = h.frame_len();
        match h.tag {
            b'Z' | b'S' | b'1' | b'3' | b'E' | b'C' => {
                if avail < len {
                    side.want = len;
                    return Ok(None);
                }
                let at = side.fwd;
                match h.tag {
                    b'Z' | b'S' => {
                        if let Some(stop) = whole_z_or_s(
                            side,
                            h,
                            tracker,
                            server_params,
                            client_params,
                            meter,
                            mode,
                        ) {
                            return Ok(Some(stop));
                        }
                        if h.tag == b'Z' && tracker.tx_status() == b'I' {
                            sp.transaction_ended(tracker.ready_seq());
                        }
                    }
                    b'E' => {
                        let msg = &side.buf[at..at + len];
                        let instead = match cs.replacement(tracker) {
                            Some(r) => Some(r.to_vec()),
                            None => cs.on_error(msg, tracker, sp),
                        };
                        tracker.server_msg(b'E', 0);
                        match instead {
                            Some(r) => {
                                splice(side.buf, at, len, &r);
                                side.fwd += r.len();
                            }
                            None => side.fwd += len,
                        }
                    }
                    b'C' => {
                        if prepared::clears_all(&side.buf[at..at + len]) {
                            if let Some(seq) = tracker.head_seq() {
                                cs.deallocated_all(seq, sp);
                            }
                        }
                        tracker.server_msg(b'C', 0);
                        side.fwd += len;
                    }
                    tag => {
                        if tag == b'1' {
                            meter.stats.server_parse_count += 1;
                        }
                        match tracker.server_msg(tag, 0) {
                            ServerAction::Swallow => splice(side.buf, at, len, &[]),
                            ServerAction::Forward => side.fwd += len,
                        }
                    }
                }
                cs.settle(tracker, sp);
            }
            tag => {
                tracker.server_msg(tag, 0);
                let n = len.min(avail);
                side.fwd += n;
                side.skip = len - n;
            }
        }
        if tracker.desync() {
            return Ok(Some(Stop::OutOfStep));
        }
    }
}
