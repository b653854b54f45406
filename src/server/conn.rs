//! `ServerConn`: one logged-in PostgreSQL connection and what pgsluice knows about it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;

use crate::net::Stream;

/// Where a server is: a TCP address or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp(a) => write!(f, "{}:{}", a.ip(), a.port()),
            ServerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parameters the server reported with ParameterStatus, in arrival order. A handful of
/// entries: a Vec beats a map here.
#[derive(Debug, Clone, Default)]
pub struct ServerParams(pub Vec<(String, String)>, u64);

impl PartialEq for ServerParams {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ServerParams {}

impl ServerParams {
    /// Counts changes made through [`ServerParams::set`]: equal versions of one server's
    /// parameters have equal values.
    pub fn version(&self) -> u64 {
        self.1
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        // Tracked names are kept in the server's own spelling, so the exact match almost
        // always hits; the case-insensitive scan is the fallback.
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .or_else(|| self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(e) = self
            .0
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            if e.1 != value {
                e.1.clear();
                e.1.push_str(value);
                self.1 += 1;
            }
        } else {
            self.0.push((name.to_string(), value.to_string()));
            self.1 += 1;
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Unique, increasing id for every connection (client or server), as PgBouncer's `id`.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A server connection as the pool and a leasing client hold it: boxed, so handing it
/// from the pool to a client, through the waiters' channel and back moves one pointer,
/// not the whole struct (callgrind: the moves cost more than a tenth of the pooler's
/// user-space instructions per transaction before it was boxed).
pub type ServerConn = Box<Backend>;

/// One logged-in PostgreSQL connection (see [`ServerConn`]).
#[derive(Debug)]
pub struct Backend {
    pub stream: Stream,
    /// Bytes already read from the server but not yet consumed (normally empty between
    /// transactions).
    pub rbuf: BytesMut,
    pub params: ServerParams,
    /// The server's own BackendKeyData (pid, secret): never shown to clients.
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// Where the server is and how its connection was opened (TLS included): a
    /// CancelRequest for it goes the same way, on a new connection.
    pub route: std::sync::Arc<super::dial::ServerRoute>,
    pub id: u64,
    pub created: Instant,
    pub last_used: Instant,
    /// The pool's configuration generation when this server logged in; a server from an
    /// older generation is closed on release (RELOAD with changed connection settings).
    pub generation: u64,
    /// What SHOW SERVERS shows about this connection.
    pub info: std::sync::Arc<crate::stats::ServerInfo>,
    /// Which entry of the `host=` list this server came from (load_balance_hosts=disable
    /// stays on it).
    pub host_index: usize,
    /// This server's share of server_lifetime, in [1 - LIFETIME_JITTER, 1]: servers opened
    /// together (a burst, min_pool_size at startup, recovery after an outage) must not all
    /// expire in the same janitor tick and reopen in one thundering herd.
    pub lifetime_factor: f64,
    /// `created + server_lifetime × lifetime_factor`, for the server_lifetime it was
    /// worked out for: a release compares two instants instead of scaling a duration.
    pub lifetime_end: std::cell::Cell<Option<(std::time::Duration, Instant)>>,
    /// server_fast_close applies to this lease (session mode): once the server is marked
    /// close_needed, the relay ends the session at the next transaction boundary.
    pub fast_close: bool,
    /// Protocol-level prepared statements this server has (transaction/statement mode
    /// with max_prepared_statements > 0; empty otherwise).
    pub prepared: crate::session::prepared::ServerStatements,
    /// (client parameter set number, `params.version()`) when this server's tracked
    /// parameters were last found equal to that set: a lease by a client with the same
    /// set, while the version is unchanged, needs no comparison.
    pub params_synced: Option<(u64, u64)>,
}

/// Up to this fraction of server_lifetime is taken off each server's lifetime, at random.
/// Subtracted, never added: server_lifetime stays an upper bound, as operators rely on
/// it for credential rotation and failover.
pub const LIFETIME_JITTER: f64 = 0.2;

/// A random lifetime factor for a new server.
pub fn lifetime_jitter() -> f64 {
    1.0 - rand::random::<f64>() * LIFETIME_JITTER
}

impl Backend {
    /// Older than its share of `lifetime`. Zero = use once (PgBouncer): always expired.
    pub fn lifetime_over(&self, lifetime: std::time::Duration, now: Instant) -> bool {
        if lifetime.is_zero() {
            return true;
        }
        let end = match self.lifetime_end.get() {
            Some((l, end)) if l == lifetime => end,
            _ => {
                // An absurdly large setting overflows Instant: such a server never expires.
                let Some(end) = self
                    .created
                    .checked_add(lifetime.mul_f64(self.lifetime_factor))
                else {
                    return false;
                };
                self.lifetime_end.set(Some((lifetime, end)));
                end
            }
        };
        now >= end
    }

    /// An idle server must have no unread bytes: EOF means it died (backend terminated,
    /// server restarted), data means it sent something while idle (an admin shutdown's
    /// ErrorResponse). Either way it is not reused.
    ///
    /// The reactor's cached readiness answers without a syscall: `try_io` returns
    /// WouldBlock at once for a socket epoll has not reported readable. Only one that was
    /// reported is peeked; if the peek finds nothing after all, the readiness is cleared,
    /// so the next check is free again.
    pub fn is_clean(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // For TLS the raw socket is peeked: an idle server sends nothing, so any record
        // (data or a close_notify alert) means it is not clean.
        let r = match &self.stream {
            Stream::Unix(u) => u.try_io(tokio::io::Interest::READABLE, || {
                socket2::SockRef::from(u).peek(&mut probe)
            }),
            s => match s.tcp_socket() {
                Some(t) => t.try_io(tokio::io::Interest::READABLE, || {
                    socket2::SockRef::from(t).peek(&mut probe)
                }),
                None => return false,
            },
        };
        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}
