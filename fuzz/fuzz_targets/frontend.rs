//! Regular protocol messages and the transaction tracker, as the relay sees them.
//!
//! The input is a sequence of `dir:u8, frame`: the low bit of `dir` says who sends the
//! frame (0 = client, 1 = server), the frame is `tag:u8, len:u32, body` and is found with
//! `peek_header` (max_packet_size = 1 MiB) as `session::relay` finds it; a frame cut short
//! by the end of the input is forwarded as far as it goes, like a partial read. Each tag
//! goes to the `Tracker` (`client_msg` / `server_msg`, ReadyForQuery with its status byte).
//!
//! Invariants: a header that passes is within bounds; `may_release()` implies `quiet()`;
//! right after a Query, FunctionCall or extended-protocol message the server is not quiet;
//! only Terminate is not forwarded; and however the stream went, the client ending any
//! COPY and sending Sync, answered by enough ReadyForQuery('I'), releases the server.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsluice::proto::frame::{peek_header, FrameError, HEADER_LEN};
use pgsluice::session::tracker::{ClientAction, Tracker};
use pgsluice_fuzz::MAX_PACKET;

fn check(t: &Tracker) {
    assert!(
        !t.may_release() || t.quiet(),
        "may_release() without quiet()"
    );
}

fn client(t: &mut Tracker, tag: u8) {
    let action = t.client_msg(tag);
    assert_eq!(
        action == ClientAction::Terminate,
        tag == b'X',
        "tag {tag:#x}"
    );
    if matches!(tag, b'Q' | b'F' | b'P' | b'B' | b'E' | b'D' | b'C') {
        assert!(
            !t.quiet(),
            "quiet right after client message {:?}",
            tag as char
        );
        assert!(!t.may_release());
    }
    check(t);
}

fn server(t: &mut Tracker, tag: u8, first: u8) {
    t.server_msg(tag, first);
    check(t);
}

fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::default();
    assert!(
        t.may_release() && t.quiet(),
        "a fresh tracker holds its server"
    );
    let mut rest = data;
    // Every message the client sent: a bound on the ReadyForQuery owed.
    let mut client_msgs = 0usize;
    while let Some((&dir, after)) = rest.split_first() {
        let h = match peek_header(after, MAX_PACKET) {
            Ok(Some(h)) => h,
            Ok(None) => break, // fewer than 5 bytes: wait for more
            Err(FrameError::TooShort(len)) => {
                assert!(len < 4);
                break; // the relay drops the connection
            }
            Err(FrameError::TooLong(len)) => {
                assert!(len > MAX_PACKET);
                break;
            }
        };
        assert!(h.len >= 4 && h.len <= MAX_PACKET);
        assert_eq!(h.frame_len(), h.len as usize + 1);
        assert_eq!(h.body_len() + HEADER_LEN, h.frame_len());
        assert_eq!(h.tag, after[0]);
        let avail = h.frame_len().min(after.len());
        let body = &after[HEADER_LEN.min(avail)..avail];
        if dir & 1 == 0 {
            client_msgs += 1;
            client(&mut t, h.tag);
        } else {
            // The relay reads ReadyForQuery whole and passes its status; 'I' if empty.
            let first = if h.tag == b'Z' {
                body.first().copied().unwrap_or(b'I')
            } else {
                0
            };
            server(&mut t, h.tag, first);
        }
        rest = &after[avail..];
    }

    // Drain: end any COPY IN, close any extended batch, then answer everything.
    client(&mut t, b'c');
    client(&mut t, b'S');
    for _ in 0..client_msgs + 3 {
        if t.may_release() {
            return;
        }
        server(&mut t, b'Z', b'I');
    }
    assert!(
        t.may_release(),
        "server never released after the client finished and all was answered: {t:?}"
    );
});
