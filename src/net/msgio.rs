//! Whole-message reads for the slow paths (login, SET sync, reset, admin). The relay does
//! not use this: it streams frames without splitting them off.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::frame::{peek_header, FrameError};

/// One received message: tag and body (without the 5-byte header).
#[derive(Debug)]
pub struct Msg {
    pub tag: u8,
    pub body: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("unexpected EOF")]
    Eof,
}

/// Reads one message, leaving any bytes after it in `buf` for the next call.
pub async fn read_msg<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    max_len: u32,
) -> Result<Msg, ReadError> {
    loop {
        if let Some(h) = peek_header(buf, max_len)? {
            if buf.len() >= h.frame_len() {
                let mut frame = buf.split_to(h.frame_len());
                frame.advance(5);
                return Ok(Msg {
                    tag: h.tag,
                    body: frame,
                });
            }
            buf.reserve(h.frame_len() - buf.len());
        } else if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(ReadError::Eof);
        }
    }
}
