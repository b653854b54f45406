//! The few frontend messages pgsluice writes for the server, and small byte helpers.

use bytes::{BufMut, BytesMut};

use super::cache::Stmt;

pub(super) fn does_not_exist(name: &[u8]) -> String {
    format!(
        "prepared statement \"{}\" does not exist",
        String::from_utf8_lossy(name)
    )
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Appends `tag, len, body`.
pub(super) fn put_msg(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    f(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(super) fn put_parse(out: &mut BytesMut, stmt: &Stmt) {
    put_msg(out, b'P', |o| {
        o.put_slice(&stmt.name);
        o.put_u8(0);
        o.put_slice(&stmt.payload);
    });
}

pub(super) fn put_describe(out: &mut BytesMut, name: &[u8]) {
    put_msg(out, b'D', |o| {
        o.put_u8(b'S');
        o.put_slice(name);
        o.put_u8(0);
    });
}

pub(super) fn put_close(out: &mut BytesMut, name: &[u8]) {
    put_msg(out, b'C', |o| {
        o.put_u8(b'S');
        o.put_slice(name);
        o.put_u8(0);
    });
}

/// The command tag of a whole CommandComplete message clears statements.
pub fn clears_all(msg: &[u8]) -> bool {
    let tag = msg.get(5..).unwrap_or_default();
    let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
    tag == b"DEALLOCATE ALL" || tag == b"DISCARD ALL"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags() {
        let mut m = BytesMut::new();
        crate::proto::backend::command_complete(&mut m, "DEALLOCATE ALL");
        assert!(clears_all(&m));
        m.clear();
        crate::proto::backend::command_complete(&mut m, "DEALLOCATE");
        assert!(!clears_all(&m));
    }
}
