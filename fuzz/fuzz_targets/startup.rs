//! Startup-phase packets as a client sends them before login: `len:u32, body` each, read
//! the way `session::login::read_startup` reads them (length checked by `body_len` before
//! the body is allocated, SSL/GSSENC requests answered and the loop going on), then the
//! `options` parameter through `parse_options` and every value through `quote_literal`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsluice::proto::startup::{self, StartupPacket, MAX_STARTUP_LEN};
use pgsluice::session::params::{parse_options, quote_literal};
use pgsluice_fuzz::assert_literal_roundtrip;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let (mut ssl_done, mut gss_done) = (false, false);
    while let Some((len, after)) = rest.split_first_chunk::<4>() {
        let Ok(n) = startup::body_len(*len) else {
            let len = u32::from_be_bytes(*len);
            assert!(
                !(8..=MAX_STARTUP_LEN).contains(&len),
                "refused length {len}"
            );
            return;
        };
        assert!(
            (4..=MAX_STARTUP_LEN as usize - 4).contains(&n),
            "body length {n}"
        );
        let Some(body) = after.get(..n) else {
            return; // read_exact would hit EOF
        };
        rest = &after[n..];
        // As read_startup does: the body buffer is allocated from the checked length.
        let mut buf = vec![0u8; n];
        buf.copy_from_slice(body);
        match startup::parse(&buf) {
            Ok(StartupPacket::Ssl) if !ssl_done => {
                assert_eq!(n, 4);
                ssl_done = true;
            }
            Ok(StartupPacket::GssEnc) if !gss_done => {
                assert_eq!(n, 4);
                gss_done = true;
            }
            Ok(StartupPacket::Ssl | StartupPacket::GssEnc) => return, // re-sent: refused
            Ok(StartupPacket::Cancel { pid, secret }) => {
                assert_eq!(n, 12);
                assert_eq!(&buf[4..8], pid.to_be_bytes());
                assert_eq!(&buf[8..12], secret.to_be_bytes());
                return;
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
            }) => {
                assert_eq!(major, 3);
                // The parameters are exactly the body: re-encoding them gives it back.
                let mut enc = (u32::from(major) << 16 | u32::from(minor))
                    .to_be_bytes()
                    .to_vec();
                for (k, v) in &params {
                    assert!(!k.is_empty(), "empty parameter name");
                    assert!(!k.contains('\0') && !v.contains('\0'));
                    enc.extend_from_slice(k.as_bytes());
                    enc.push(0);
                    enc.extend_from_slice(v.as_bytes());
                    enc.push(0);
                }
                enc.push(0);
                assert_eq!(enc, buf, "startup parameters do not re-encode to the body");
                for (k, v) in &params {
                    assert_literal_roundtrip(&quote_literal(v), v);
                    if k == "options" {
                        if let Ok(opts) = parse_options(v) {
                            for (name, value) in &opts {
                                assert!(!name.contains('-'), "option name {name:?}");
                                assert!(value.len() <= v.len());
                                assert_literal_roundtrip(&quote_literal(value), value);
                            }
                        }
                    }
                }
                return;
            }
            Err(_) => return,
        }
    }
});
