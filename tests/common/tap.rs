//! A TCP tap on 127.0.0.1 in front of the test cluster: pgsluice's `[databases]` entry
//! points at the tap, which forwards each connection to PostgreSQL and records the
//! startup-phase packets it opened with (SSLRequest, CancelRequest, StartupMessage).
//! That shows how pgsluice reached the server, which PostgreSQL itself does not say for
//! a cancel (it reads a CancelRequest before authentication, so neither pg_hba nor
//! pg_stat_ssl sees one). The tap can also misbehave on purpose, as a server that never
//! finishes a cancel or that refuses TLS on later connections would.
//!
//! Only the first packet (and, after a refused SSLRequest, the next one) is read by the
//! tap; after that bytes pass through untouched, TLS included.
//!
//! The tap's tasks run on the test's runtime: a test that also calls blocking helpers
//! (such as `Pooler::wait_for_log`) needs a multi-thread runtime, or the tap stalls.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::cluster::{cluster, PG_HOST};

const SSL_REQUEST_CODE: i32 = 80_877_103;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Longer startup-phase packets are not expected from pgsluice.
const MAX_OPENING: usize = 10_000;

/// What the tap does besides forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    /// Forward every connection.
    Nothing,
    /// A connection that opens with a CancelRequest is accepted, recorded and then
    /// neither answered nor closed: a server that does not finish the cancel.
    HoldCancels,
    /// Connections after the first `n` that open with an SSLRequest get `N` from the tap
    /// (SSL refused); the packet the client sends next, if any, is recorded and then
    /// forwarded to PostgreSQL in plaintext.
    RefuseSslAfter(usize),
}

/// A startup-phase packet a connection sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    Ssl,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A StartupMessage or anything else: its bytes (length word included).
    Other(Vec<u8>),
}

impl Opening {
    fn parse(packet: &[u8]) -> Opening {
        let word = |at: usize| {
            packet
                .get(at..at + 4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match (packet.len(), word(4)) {
            (8, Some(SSL_REQUEST_CODE)) => Opening::Ssl,
            (16, Some(CANCEL_REQUEST_CODE)) => Opening::Cancel {
                pid: word(8).unwrap_or(0),
                secret: word(12).unwrap_or(0),
            },
            _ => Opening::Other(packet.to_vec()),
        }
    }
}

/// The running tap; its tasks (and every connection, held ones included) end on drop.
pub struct Tap {
    /// The tap's port on 127.0.0.1: put it in the `[databases]` entry.
    pub port: u16,
    task: JoinHandle<()>,
    /// Per accepted connection, in accept order: the packets the tap read from it.
    seen: Arc<Mutex<Vec<Vec<Opening>>>>,
}

impl Tap {
    /// Starts a tap to the test cluster on a free port of 127.0.0.1.
    pub async fn start(misbehave: Misbehave) -> Tap {
        let listener = TcpListener::bind((PG_HOST, 0))
            .await
            .expect("bind the tap on 127.0.0.1");
        let port = listener.local_addr().expect("tap address").port();
        let target = (PG_HOST, cluster().port());
        let seen: Arc<Mutex<Vec<Vec<Opening>>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            // The per-connection tasks live in here, so aborting this task (on drop)
            // drops them all, held connections included.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (mut client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => return,
                    },
                    // Reap finished connections as they go.
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                let index = {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.push(Vec::new());
                    log.len() - 1
                };
                let log = log.clone();
                let record = move |o: Opening| {
                    log.lock().unwrap_or_else(|p| p.into_inner())[index].push(o);
                };
                conns.spawn(async move {
                    let Some(first) = read_packet(&mut client).await else {
                        return;
                    };
                    let opening = Opening::parse(&first);
                    record(opening.clone());
                    let mut to_send = first;
                    match (misbehave, &opening) {
                        (Misbehave::HoldCancels, Opening::Cancel { .. }) => {
                            // Never answer, never close: only the client can end it.
                            std::future::pending::<()>().await;
                        }
                        (Misbehave::RefuseSslAfter(n), Opening::Ssl) if index >= n => {
                            if client.write_all(b"N").await.is_err() {
                                return;
                            }
                            let Some(next) = read_packet(&mut client).await else {
                                return;
                            };
                            record(Opening::parse(&next));
                            to_send = next;
                        }
                        _ => {}
                    }
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    if server.write_all(&to_send).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Tap { port, task, seen }
    }

    /// Per connection so far, in accept order: the packets the tap read from it.
    pub fn connections(&self) -> Vec<Vec<Opening>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every CancelRequest the tap has read, in order.
    pub fn cancels(&self) -> Vec<(i32, i32)> {
        self.connections()
            .into_iter()
            .flatten()
            .filter_map(|o| match o {
                Opening::Cancel { pid, secret } => Some((pid, secret)),
                _ => None,
            })
            .collect()
    }

    /// Waits until `pred` holds for [`Tap::connections`]; panics with them after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Vec<Opening>]) -> bool,
    ) -> Vec<Vec<Opening>> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.connections();
            if pred(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "tap: {what} not seen within {timeout:?}; connections: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One length-prefixed startup-phase packet (length word included); `None` on EOF, an
/// error or an implausible length.
async fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let n = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_OPENING).contains(&n) {
        return None;
    }
    let mut packet = vec![0u8; n];
    packet[..4].copy_from_slice(&len);
    s.read_exact(&mut packet[4..]).await.ok()?;
    Some(packet)
}
