//! ErrorResponse / NoticeResponse builders and parsing, with the SQLSTATEs PgBouncer uses:
//! errors pgsluice originates are `FATAL 08P01` and close the connection; server login
//! errors are forwarded with the server's own fields.

use bytes::{BufMut, BytesMut};

use super::backend::{message, put_cstr};

/// SQLSTATE protocol_violation: PgBouncer's code for every error it originates.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE cannot_connect_now ("the database system is starting up").
pub const CANNOT_CONNECT_NOW: &str = "57P03";

/// An error (or notice) as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: &'static str,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

impl PgError {
    /// `FATAL 08P01 <text>`: a PgBouncer-originated disconnect reason.
    pub fn fatal(message: impl Into<String>) -> Self {
        PgError {
            severity: "FATAL",
            code: PROTOCOL_VIOLATION.into(),
            message: message.into(),
            detail: None,
        }
    }

    /// `ERROR <code> <text>`: the session continues.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        PgError {
            severity: "ERROR",
            code: code.into(),
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = code.into();
        self
    }

    /// Appends the ErrorResponse.
    pub fn write(&self, buf: &mut BytesMut) {
        write_fields(
            buf,
            b'E',
            self.severity,
            &self.code,
            &self.message,
            self.detail.as_deref(),
        );
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Appends a NoticeResponse (severity NOTICE, SQLSTATE 00000).
pub fn notice(buf: &mut BytesMut, message: &str, detail: Option<&str>) {
    write_fields(buf, b'N', "NOTICE", "00000", message, detail);
}

fn write_fields(
    buf: &mut BytesMut,
    tag: u8,
    sev: &str,
    code: &str,
    msg: &str,
    detail: Option<&str>,
) {
    message(buf, tag, |b| {
        b.put_u8(b'S');
        put_cstr(b, sev);
        b.put_u8(b'V');
        put_cstr(b, sev);
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, msg);
        if let Some(d) = detail {
            b.put_u8(b'D');
            put_cstr(b, d);
        }
        b.put_u8(0);
    });
}

/// The fields of a received ErrorResponse/NoticeResponse body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    /// Parses an ErrorResponse body (after the 5-byte header). Unknown fields are skipped.
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut out = ErrorFields::default();
        let mut pos = 0;
        while pos < body.len() && body[pos] != 0 {
            let field = body[pos];
            pos += 1;
            let Some(v) = super::frame::read_cstr(body, &mut pos) else {
                break;
            };
            match field {
                b'S' => out.severity = v.to_string(),
                b'C' => out.code = v.to_string(),
                b'M' => out.message = v.to_string(),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut b = BytesMut::new();
        PgError::fatal("no more connections allowed (max_client_conn)").write(&mut b);
        assert_eq!(b[0], b'E');
        let f = ErrorFields::parse(&b[5..]);
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "08P01");
        assert_eq!(f.message, "no more connections allowed (max_client_conn)");
    }
}
