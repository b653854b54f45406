//! Message framing: every regular message is `tag:u8, len:u32 (incl. itself), body`.
//! The relay only ever looks at the 5-byte header to find boundaries, so a frame is
//! described by its header and never copied to be inspected.

/// Bytes in a regular message header (tag + length).
pub const HEADER_LEN: usize = 5;

/// A parsed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length field as sent: counts itself (4) and the body, not the tag.
    pub len: u32,
}

impl Header {
    /// Whole frame size in bytes (tag + length field + body).
    #[inline]
    pub fn frame_len(self) -> usize {
        self.len as usize + 1
    }

    /// Body size in bytes.
    #[inline]
    pub fn body_len(self) -> usize {
        self.len as usize - 4
    }
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad packet header: length {0} is less than 4")]
    TooShort(u32),
    #[error("bad packet header: length {0} exceeds max_packet_size")]
    TooLong(u32),
}

/// Peek at the header at the start of `buf`. `Ok(None)` = fewer than 5 bytes buffered.
/// The length is checked against `max_len` before anyone allocates for the body.
#[inline]
pub fn peek_header(buf: &[u8], max_len: u32) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::TooShort(len));
    }
    if len > max_len {
        return Err(FrameError::TooLong(len));
    }
    Ok(Some(Header { tag, len }))
}

/// Reads a NUL-terminated string starting at `buf[*pos]`, advancing `pos` past the NUL.
pub fn read_cstr<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    let rest = buf.get(*pos..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    *pos += end + 1;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Z\0\0\0", 100), Ok(None));
        let h = peek_header(b"Z\0\0\0\x05I", 100).unwrap().unwrap();
        assert_eq!(h.tag, b'Z');
        assert_eq!(h.frame_len(), 6);
        assert_eq!(h.body_len(), 1);
    }

    #[test]
    fn header_lengths_are_bounded() {
        assert_eq!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(FrameError::TooShort(3))
        );
        assert_eq!(
            peek_header(b"Q\0\0\x01\0", 100),
            Err(FrameError::TooLong(256))
        );
    }

    #[test]
    fn cstr() {
        let b = b"abc\0de\0";
        let mut p = 0;
        assert_eq!(read_cstr(b, &mut p), Some("abc"));
        assert_eq!(read_cstr(b, &mut p), Some("de"));
        assert_eq!(read_cstr(b, &mut p), None);
    }
}
