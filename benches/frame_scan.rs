//! The frame scanner: `peek_header` walking a buffer of many typical messages, the way the
//! relay finds message boundaries. Reported as bytes/s, so a slower scanner shows up
//! without a PostgreSQL server.
//!
//! Run with `cargo bench --bench frame_scan`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgsluice::proto::frame::peek_header;

/// The relay's default `max_packet_size` (PgBouncer's 2 GiB - 1 is as good: only the
/// comparison matters).
const MAX_PACKET: u32 = 2_147_483_647;

/// Appends one regular message: tag, length (counting itself), body.
fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// RowDescription with one int4 column called `name`.
fn row_description(out: &mut Vec<u8>, name: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(&16_384u32.to_be_bytes()); // table oid
    body.extend_from_slice(&3u16.to_be_bytes()); // column number
    body.extend_from_slice(&23u32.to_be_bytes()); // int4
    body.extend_from_slice(&4i16.to_be_bytes());
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    msg(out, b'T', &body);
}

/// DataRow with one text value.
fn data_row(out: &mut Vec<u8>, value: &[u8]) {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
    body.extend_from_slice(value);
    msg(out, b'D', &body);
}

/// What PostgreSQL answers to pgbench's select-only transaction, simple and extended
/// protocol alternating: the message mix the relay scans most.
fn server_replies(target: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(target + 256);
    let mut i = 0u32;
    while out.len() < target {
        if !i.is_multiple_of(2) {
            msg(&mut out, b'1', b""); // ParseComplete
            msg(&mut out, b'2', b""); // BindComplete
        }
        row_description(&mut out, "abalance");
        data_row(&mut out, (i % 10_000).to_string().as_bytes());
        msg(&mut out, b'C', b"SELECT 1\0");
        msg(&mut out, b'Z', b"I");
        i += 1;
    }
    out
}

/// What pgbench sends: simple Query, and Parse/Bind/Describe/Execute/Sync.
fn client_requests(target: usize) -> Vec<u8> {
    let sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0";
    let mut out = Vec::with_capacity(target + 256);
    let mut i = 0u32;
    while out.len() < target {
        if i.is_multiple_of(2) {
            let q = format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};\0",
                1 + i
            );
            msg(&mut out, b'Q', q.as_bytes());
        } else {
            let mut parse = vec![0u8]; // unnamed statement
            parse.extend_from_slice(sql);
            parse.extend_from_slice(&0u16.to_be_bytes());
            msg(&mut out, b'P', &parse);
            let param = (1 + i).to_string();
            let mut bind = vec![0u8, 0u8]; // unnamed portal, unnamed statement
            bind.extend_from_slice(&0u16.to_be_bytes());
            bind.extend_from_slice(&1u16.to_be_bytes());
            bind.extend_from_slice(&(param.len() as i32).to_be_bytes());
            bind.extend_from_slice(param.as_bytes());
            bind.extend_from_slice(&0u16.to_be_bytes());
            msg(&mut out, b'B', &bind);
            msg(&mut out, b'D', b"P\0");
            msg(&mut out, b'E', b"\0\0\0\0\0");
            msg(&mut out, b'S', b"");
        }
        i += 1;
    }
    out
}

/// Walks `buf` frame by frame as the relay does; returns a checksum of the tags so the
/// work cannot be optimised away.
#[inline(never)]
fn scan(buf: &[u8]) -> (usize, u32) {
    let mut pos = 0;
    let mut frames = 0;
    let mut tags = 0u32;
    while let Ok(Some(h)) = peek_header(&buf[pos..], MAX_PACKET) {
        tags = tags.wrapping_add(h.tag as u32);
        frames += 1;
        pos += h.frame_len();
    }
    assert_eq!(pos, buf.len(), "the scan must end on a frame boundary");
    (frames, tags)
}

fn frame_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_scan");
    for (name, buf) in [
        ("server_replies_64k", server_replies(64 * 1024)),
        ("client_requests_64k", client_requests(64 * 1024)),
    ] {
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_function(name, |b| b.iter(|| scan(black_box(&buf))));
    }
    group.finish();
}

criterion_group!(benches, frame_scan);
criterion_main!(benches);
