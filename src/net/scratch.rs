//! Reads through one scratch buffer per thread: a client waiting for its socket, or
//! queued with a short request, holds a buffer the size of what it sent instead of a
//! read-sized one, and the bytes the kernel copies land in memory that is hot in cache.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

/// The most one read through the scratch buffer returns.
pub const SCRATCH_LEN: usize = 8 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Reads what `r` has (at most [`SCRATCH_LEN`] bytes) and appends it to `buf`, which
/// grows by the bytes read and no more. `Ready(Ok(0))` = end of stream.
pub fn poll_read_into<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|cell| {
        // A reader never reads through the scratch buffer from inside its own poll_read,
        // so the buffer is free; should that ever change, read in place instead.
        let Ok(mut scratch) = cell.try_borrow_mut() else {
            buf.reserve(SCRATCH_LEN);
            return tokio_util::io::poll_read_buf(Pin::new(r), cx, buf);
        };
        let mut rb = ReadBuf::new(&mut scratch[..]);
        match Pin::new(r).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let got = rb.filled();
                buf.extend_from_slice(got);
                Poll::Ready(Ok(got.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_exactly_what_was_read() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"hello")
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let n = std::future::poll_fn(|cx| poll_read_into(&mut b, cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(&buf[..], b"hello");
        assert!(buf.capacity() < SCRATCH_LEN);

        // More than the scratch buffer holds: one read returns SCRATCH_LEN bytes.
        tokio::io::AsyncWriteExt::write_all(&mut a, &vec![7u8; SCRATCH_LEN + 10])
            .await
            .unwrap();
        let n = std::future::poll_fn(|cx| poll_read_into(&mut b, cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(n, SCRATCH_LEN);
        assert_eq!(buf.len(), 5 + SCRATCH_LEN);

        drop(a);
        let mut rest = BytesMut::new();
        let n = std::future::poll_fn(|cx| poll_read_into(&mut b, cx, &mut rest))
            .await
            .unwrap();
        assert_eq!(n, 10);
        let n = std::future::poll_fn(|cx| poll_read_into(&mut b, cx, &mut rest))
            .await
            .unwrap();
        assert_eq!(n, 0, "end of stream");
    }
}
