//! Shared pieces of the fuzz targets in `fuzz_targets/`.
//!
//! Linking this crate installs an allocator that refuses any single allocation larger than
//! [`ALLOC_LIMIT`]: every target feeds lengths from the input to pgsluice, and none of them
//! may make pgsluice allocate more than `max_packet_size` (here [`MAX_PACKET`]) allows, so
//! an oversized allocation is a bug. A refused allocation ends in Rust's "memory allocation
//! of N bytes failed" abort, which libFuzzer reports as a crash with the input saved. This
//! works without a sanitizer (`-s none`), where libFuzzer's own `-malloc_limit_mb` does not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// `max_packet_size` the frame targets run with: 1 MiB, so that a length field of up to
/// 1 MiB is legal and anything bigger must be refused before it is allocated for.
pub const MAX_PACKET: u32 = 1 << 20;

/// Largest single allocation allowed: a buffer holding one maximal frame may round its
/// capacity up (BytesMut doubles), so a few times [`MAX_PACKET`]; inputs are far smaller.
pub const ALLOC_LIMIT: usize = 4 * MAX_PACKET as usize + 64 * 1024;

struct Bounded;

// SAFETY: forwards to the system allocator, only refusing (null) requests over the limit,
// which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// Runs a future that must never wait: pgsluice's readers over an in-memory `&[u8]` are
/// always ready, so a `Pending` here would mean the code waits for input it already has.
pub fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("future over in-memory input returned Pending"),
    }
}

/// `input` as text the way pgsluice reads config files (`read_lossy`): invalid UTF-8
/// becomes U+FFFD.
pub fn lossy(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}

/// Checks that `quoted` is `E'…'` whose escapes (`''`, `\\`) decode back to exactly
/// `original`: a SQL literal pgsluice builds from client or server text cannot end early.
pub fn assert_literal_roundtrip(quoted: &str, original: &str) {
    let inner = quoted
        .strip_prefix("E'")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("not an E'' literal: {quoted:?}"));
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '\\' => {
                assert_eq!(chars.next(), Some(c), "lone {c:?} in literal {quoted:?}");
                out.push(c);
            }
            c => out.push(c),
        }
    }
    assert_eq!(
        out, original,
        "literal {quoted:?} does not decode to its value"
    );
}
