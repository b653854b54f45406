//! Messages from a PostgreSQL server, read the way login, `simple_query` and the reset
//! path read them: whole messages with `net::msgio::read_msg` (max_packet_size = 1 MiB,
//! the body allocated only after the header passed), then by tag: ErrorResponse and
//! NoticeResponse through `ErrorFields::parse`, ParameterStatus as two C strings into
//! `ServerParams`, BackendKeyData, the authentication requests, and every tag into a
//! `Tracker` that had sent a Query.
//!
//! Invariants: a message is never longer than max_packet_size; the error fields rebuilt
//! into an ErrorResponse parse back to the same fields; parameter values quote into SQL
//! literals that decode back to them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsluice::net::msgio::{read_msg, ReadError};
use pgsluice::proto::frame::{peek_header, read_cstr, HEADER_LEN};
use pgsluice::proto::{ErrorFields, PgError};
use pgsluice::server::ServerParams;
use pgsluice::session::params::quote_literal;
use pgsluice::session::tracker::Tracker;
use pgsluice_fuzz::{assert_literal_roundtrip, ready, MAX_PACKET};

fn error_fields(body: &[u8]) {
    let f = ErrorFields::parse(body);
    for v in [&f.severity, &f.code, &f.message] {
        assert!(!v.contains('\0'));
        assert!(v.len() < body.len().max(1));
    }
    // What pgsluice forwards or builds from these fields must read back the same.
    let mut out = bytes::BytesMut::new();
    PgError::error(&f.code, f.message.clone()).write(&mut out);
    let h = peek_header(&out, u32::MAX)
        .unwrap()
        .expect("a whole header");
    assert_eq!(h.tag, b'E');
    assert_eq!(h.frame_len(), out.len());
    let back = ErrorFields::parse(&out[HEADER_LEN..]);
    assert_eq!(back.severity, "ERROR");
    assert_eq!(back.code, f.code);
    assert_eq!(back.message, f.message);
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let mut buf = bytes::BytesMut::new();
    let mut params = ServerParams::default();
    let mut tracker = Tracker::default();
    tracker.client_msg(b'Q');
    loop {
        let msg = match ready(read_msg(&mut input, &mut buf, MAX_PACKET)) {
            Ok(m) => m,
            Err(ReadError::Eof | ReadError::Frame(_)) => break,
            Err(ReadError::Io(e)) => panic!("in-memory read failed: {e}"),
        };
        assert!(msg.body.len() + 4 <= MAX_PACKET as usize);
        let body = &msg.body[..];
        match msg.tag {
            b'E' | b'N' => error_fields(body),
            b'S' => {
                let mut pos = 0;
                if let (Some(k), Some(v)) = (read_cstr(body, &mut pos), read_cstr(body, &mut pos)) {
                    assert!(pos <= body.len());
                    params.set(k, v);
                    assert_eq!(params.get(k), Some(v));
                    assert_literal_roundtrip(&quote_literal(v), v);
                }
            }
            b'K' if body.len() >= 8 => {
                let _pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            }
            b'R' if body.len() >= 4 => {
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if code == 10 {
                    // AuthenticationSASL: mechanism names until an empty one.
                    let mut pos = 4;
                    while let Some(m) = read_cstr(body, &mut pos) {
                        if m.is_empty() {
                            break;
                        }
                    }
                    assert!(pos <= body.len());
                }
            }
            _ => {}
        }
        let first = body.first().copied().unwrap_or(b'I');
        tracker.server_msg(msg.tag, if msg.tag == b'Z' { first } else { 0 });
        assert!(!tracker.may_release() || tracker.quiet());
    }
});
