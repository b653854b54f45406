//! `ServerConn`: one logged-in PostgreSQL connection and what pgsluice knows about it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;

use crate::net::Stream;

/// Where a server is, so a CancelRequest can be sent on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerParams(pub Vec<(String, String)>);

impl ServerParams {
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
            }
        } else {
            self.0.push((name.to_string(), value.to_string()));
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Unique, increasing id for every connection (client or server), as PgBouncer's `id`.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug)]
pub struct ServerConn {
    pub stream: Stream,
    /// Bytes already read from the server but not yet consumed (normally empty between
    /// transactions).
    pub rbuf: BytesMut,
    pub params: ServerParams,
    /// The server's own BackendKeyData (pid, secret): never shown to clients.
    pub backend_pid: i32,
    pub backend_secret: i32,
    pub addr: ServerAddr,
    pub id: u64,
    pub created: Instant,
    pub last_used: Instant,
    /// The pool's configuration generation when this server logged in; a server from an
    /// older generation is closed on release (RELOAD with changed connection settings).
    pub generation: u64,
    /// What SHOW SERVERS shows about this connection.
    pub info: std::sync::Arc<crate::stats::ServerInfo>,
}
