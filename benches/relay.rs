//! The transaction-mode relay over a local socket pair, without PostgreSQL.
//!
//! Client and server sides are `UnixStream::pair()`s wrapped in `Stream::Unix`. A fake
//! server task answers every Query with RowDescription, DataRow(s), CommandComplete and
//! ReadyForQuery. Each iteration does what the request loop does for one transaction:
//! the client writes a Query, the pooler reads it into its client buffer, and
//! `relay()` runs until the release point while the client reads the whole answer.
//!
//! - `relay/round_trip`: one small row per query; round trips per second.
//! - `relay/large_rows`: 1 MiB of 8 KiB DataRows per query; bytes/s through the relay.
//!
//! Run with `cargo bench --bench relay`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use pgsluice::config::PoolMode;
use pgsluice::net::Stream;
use pgsluice::server::{Backend, ServerAddr, ServerConn, ServerParams, ServerRoute};
use pgsluice::session::params::ClientParams;
use pgsluice::session::relay::{relay, Meter, RelayEnd};
use pgsluice::session::tracker::Tracker;
use pgsluice::stats::{ServerInfo, TxStats};

const MAX_PACKET: u32 = 2_147_483_647;

fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// The fake server's answer to every Query: `rows` DataRows of one `row_bytes` text value.
fn answer(rows: usize, row_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rd = Vec::new();
    rd.extend_from_slice(&1u16.to_be_bytes());
    rd.extend_from_slice(b"abalance\0");
    rd.extend_from_slice(&0u32.to_be_bytes());
    rd.extend_from_slice(&0u16.to_be_bytes());
    rd.extend_from_slice(&25u32.to_be_bytes()); // text
    rd.extend_from_slice(&(-1i16).to_be_bytes());
    rd.extend_from_slice(&(-1i32).to_be_bytes());
    rd.extend_from_slice(&0u16.to_be_bytes());
    msg(&mut out, b'T', &rd);
    let mut dr = Vec::with_capacity(row_bytes + 6);
    dr.extend_from_slice(&1u16.to_be_bytes());
    dr.extend_from_slice(&(row_bytes as i32).to_be_bytes());
    dr.resize(dr.len() + row_bytes, b'x');
    for _ in 0..rows {
        msg(&mut out, b'D', &dr);
    }
    msg(&mut out, b'C', format!("SELECT {rows}\0").as_bytes());
    msg(&mut out, b'Z', b"I");
    out
}

/// Answers each Query in what it reads with `reply`; ends at Terminate or EOF.
async fn fake_server(mut sock: UnixStream, reply: Vec<u8>) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match sock.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut pos = 0;
        while buf.len() - pos >= 5 {
            let tag = buf[pos];
            let len = u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
            let frame = len as usize + 1;
            if buf.len() - pos < frame {
                break;
            }
            pos += frame;
            if tag == b'X' || (tag == b'Q' && sock.write_all(&reply).await.is_err()) {
                return;
            }
        }
        let _ = buf.split_to(pos);
    }
}

/// The pooler's view of one client and its leased server, plus the client's own socket.
struct Rig {
    /// The application's end of the client connection.
    app: UnixStream,
    /// The pooler's end of the client connection.
    client: Stream,
    server: ServerConn,
    tracker: Tracker,
    params: ClientParams,
    stats: TxStats,
    cbuf: BytesMut,
    query: Vec<u8>,
    reply_len: usize,
    /// The application's read buffer.
    sink: Vec<u8>,
}

impl Rig {
    /// Must be called inside the runtime: spawns the fake server.
    fn new(rows: usize, row_bytes: usize) -> Rig {
        let (app, pooler_client) = UnixStream::pair().expect("client socket pair");
        let (pooler_server, fake) = UnixStream::pair().expect("server socket pair");
        let reply = answer(rows, row_bytes);
        let reply_len = reply.len();
        tokio::spawn(fake_server(fake, reply));
        let server: ServerConn = Box::new(Backend {
            stream: Stream::Unix(pooler_server),
            rbuf: BytesMut::new(),
            params: ServerParams::default(),
            backend_pid: 4242,
            backend_secret: 0x5eed,
            route: Arc::new(ServerRoute::plain(ServerAddr::Unix(PathBuf::from(
                "/nonexistent/.s.PGSQL.5432",
            )))),
            id: 1,
            created: Instant::now(),
            last_used: Instant::now(),
            generation: 0,
            info: Arc::new(ServerInfo::new(
                1,
                "unix".to_owned(),
                5432,
                "unix".to_owned(),
                0,
                4242,
                String::new(),
            )),
            host_index: 0,
            lifetime_factor: 1.0,
            lifetime_end: std::cell::Cell::new(None),
            fast_close: false,
            prepared: Default::default(),
            params_synced: None,
        });
        let mut query = Vec::new();
        msg(
            &mut query,
            b'Q',
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;\0",
        );
        Rig {
            app,
            client: Stream::Unix(pooler_client),
            server,
            tracker: Tracker::default(),
            params: ClientParams::default(),
            stats: TxStats::default(),
            cbuf: BytesMut::new(),
            query,
            reply_len,
            sink: vec![0; 64 * 1024],
        }
    }

    /// One transaction: request, lease-time read, relay to the release point, reply read.
    async fn transaction(&mut self) {
        let Rig {
            app,
            client,
            server,
            tracker,
            params,
            stats,
            cbuf,
            query,
            reply_len,
            sink,
        } = self;
        app.write_all(query).await.expect("client write");
        // What the request loop does before it leases a server.
        client.readable().await.expect("client readable");
        cbuf.reserve(8192);
        client.read_buf(cbuf).await.expect("pooler read");
        tracker.reset();
        let mut meter = Meter::new(stats);
        let relay = relay(
            client,
            cbuf,
            server,
            tracker,
            params,
            &mut meter,
            PoolMode::Transaction,
            MAX_PACKET,
        );
        let read_reply = async {
            let mut got = 0;
            while got < *reply_len {
                let n = app.read(sink).await.expect("client read");
                assert!(n > 0, "client side closed");
                got += n;
            }
            assert_eq!(got, *reply_len, "the client got more than one reply");
        };
        let (end, ()) = tokio::join!(relay, read_reply);
        assert_eq!(end, RelayEnd::Release);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench_case(c: &mut Criterion, name: &str, rows: usize, row_bytes: usize, bytes: bool) {
    let rt = runtime();
    let mut rig = rt.block_on(async { Rig::new(rows, row_bytes) });
    // One transaction outside the measurement: checks the rig and warms the buffers.
    rt.block_on(rig.transaction());
    let mut group = c.benchmark_group("relay");
    if bytes {
        group.throughput(Throughput::Bytes(rig.reply_len as u64));
    } else {
        group.throughput(Throughput::Elements(1));
    }
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    rig.transaction().await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn relay_benches(c: &mut Criterion) {
    // One small row: the cost of a round trip through the relay (elements/s = round trips/s).
    bench_case(c, "round_trip", 1, 4, false);
    // 128 rows of 8 KiB: streaming throughput (bytes/s of server output).
    bench_case(c, "large_rows", 128, 8192, true);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = relay_benches
}
criterion_main!(benches);
