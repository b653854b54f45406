//! The untagged startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest and
//! CancelRequest, all `len:u32, code:u32, …`.

/// PostgreSQL refuses longer startup packets (MAX_STARTUP_PACKET_LENGTH); so do we.
pub const MAX_STARTUP_LEN: u32 = 10_000;

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// A decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    Startup {
        major: u16,
        minor: u16,
        /// Parameters in the order sent (names as sent, case preserved).
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Layout,
    #[error("unsupported frontend protocol {0}.{1}")]
    Protocol(u16, u16),
    #[error("old V2 protocol not supported")]
    V2,
}

/// Checks the 4-byte length prefix of a startup packet; returns the body length.
pub fn body_len(len_prefix: [u8; 4]) -> Result<usize, StartupError> {
    let len = u32::from_be_bytes(len_prefix);
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(StartupError::BadLength);
    }
    Ok(len as usize - 4)
}

/// Decodes the body (everything after the length prefix) of a startup-phase packet.
pub fn parse(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::BadLength);
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST if rest.is_empty() => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST => {
            // PostgreSQL 18 (protocol 3.2) allows longer keys; clients negotiated down to
            // 3.0 by us always send 4 bytes.
            if rest.len() != 8 {
                return Err(StartupError::BadLength);
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(StartupPacket::Cancel { pid, secret })
        }
        SSL_REQUEST | GSSENC_REQUEST => Err(StartupError::BadLength),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major < 3 {
                return Err(StartupError::V2);
            }
            if major > 3 {
                return Err(StartupError::Protocol(major, minor));
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params: parse_params(rest)?,
            })
        }
    }
}

/// `name\0value\0 … \0`: the list ends with an empty name, which must be the last byte.
fn parse_params(buf: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    if buf.last() != Some(&0) {
        return Err(StartupError::Layout);
    }
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let name = super::frame::read_cstr(buf, &mut pos).ok_or(StartupError::Layout)?;
        if name.is_empty() {
            if pos != buf.len() {
                return Err(StartupError::Layout);
            }
            return Ok(out);
        }
        let value = super::frame::read_cstr(buf, &mut pos).ok_or(StartupError::Layout)?;
        out.push((name.to_string(), value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn startup_params() {
        let b = body(196608, b"user\0bob\0database\0app\0\0");
        let p = parse(&b).unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "bob".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
    }

    #[test]
    fn bad_layouts() {
        assert_eq!(
            parse(&body(196608, b"user\0bob\0")),
            Err(StartupError::Layout)
        );
        assert_eq!(
            parse(&body(196608, b"user\0bob")),
            Err(StartupError::Layout)
        );
        assert_eq!(
            parse(&body(196608, b"user\0\0x\0")),
            Err(StartupError::Layout)
        );
        assert_eq!(parse(&body(0x0002_0000, b"\0")), Err(StartupError::V2));
        assert_eq!(parse(&[1, 2]), Err(StartupError::BadLength));
        assert_eq!(body_len([0, 0, 0, 3]), Err(StartupError::BadLength));
        assert_eq!(body_len([0, 1, 0, 0]), Err(StartupError::BadLength));
    }

    #[test]
    fn special_requests() {
        assert_eq!(parse(&body(SSL_REQUEST, b"")), Ok(StartupPacket::Ssl));
        assert_eq!(parse(&body(GSSENC_REQUEST, b"")), Ok(StartupPacket::GssEnc));
        let c = parse(&body(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9])).unwrap();
        assert_eq!(c, StartupPacket::Cancel { pid: 7, secret: 9 });
    }
}
