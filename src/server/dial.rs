//! Opening a socket to one server address: TCP or a Unix socket, then on TCP the
//! SSLRequest and TLS handshake that server_tls_sslmode (or the database's `sslmode=`)
//! asks for. A server connection keeps the [`ServerRoute`] it was opened with, so a
//! CancelRequest for it goes the same way: PostgreSQL reads a CancelRequest sent inside
//! TLS after an SSLRequest, as libpq 17 sends it, and a cancel in plaintext would carry
//! the backend's key in the clear where the operator asked for TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::conn::ServerAddr;
use super::login::{Host, LoginError, ServerTls};
use crate::net::tcp::TcpOptions;
use crate::net::tls::SslMode;
use crate::net::Stream;
use crate::proto::ErrorFields;

/// Longest ErrorResponse accepted in answer to an SSLRequest.
const MAX_SSL_ERROR_LEN: usize = 65_536;

/// One server address and how a connection to it is opened: the TLS mode and rustls
/// configuration in force when the server connection was made (a RELOAD does not change
/// how an existing server is reached), and the `host=` entry the address came from.
#[derive(Debug)]
pub struct ServerRoute {
    pub addr: ServerAddr,
    tls_mode: SslMode,
    /// `Ok(None)` for disable; `Err` says why the mode cannot be used (verify-* without
    /// a CA), reported when a connection is attempted.
    tls_config: Result<Option<Arc<rustls::ClientConfig>>, String>,
    /// The `host=` entry when it is a name or an IP written out: sent as SNI when it is
    /// a name and checked by verify-full. `None`: the address itself is checked.
    host: Option<String>,
}

impl std::fmt::Display for ServerRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.addr, f)
    }
}

impl ServerRoute {
    /// `addr`, reached as `tls` says; `host` is the `host=` entry it came from.
    pub fn new(addr: ServerAddr, tls: &ServerTls, host: Option<&Host>) -> ServerRoute {
        ServerRoute {
            addr,
            tls_mode: tls.mode,
            tls_config: tls.config.clone(),
            host: match host {
                Some(Host::Tcp(h)) => Some(h.clone()),
                _ => None,
            },
        }
    }

    /// `addr` without TLS (for connections made outside a pool, e.g. benchmarks).
    pub fn plain(addr: ServerAddr) -> ServerRoute {
        ServerRoute {
            addr,
            tls_mode: SslMode::Disable,
            tls_config: Ok(None),
            host: None,
        }
    }

    /// Connects and negotiates TLS as the route says (Unix sockets never use TLS, as
    /// with PostgreSQL). `tcp`: the socket options to apply; a cancel's connection
    /// lives for one packet and needs none. The caller bounds the time.
    pub async fn open(&self, tcp: Option<&TcpOptions>) -> Result<Stream, LoginError> {
        match &self.addr {
            ServerAddr::Tcp(a) => {
                let s = TcpStream::connect(a)
                    .await
                    .map_err(|e| LoginError::Connect(format!("{a}: {e}")))?;
                if let Some(o) = tcp {
                    o.apply_or_log(&s, format_args!("server {a}"));
                }
                let _ = s.set_nodelay(true);
                self.negotiate_tls(s, a).await
            }
            ServerAddr::Unix(p) => {
                Ok(Stream::Unix(UnixStream::connect(p).await.map_err(|e| {
                    LoginError::Connect(format!("{}: {e}", p.display()))
                })?))
            }
        }
    }

    /// The SSLRequest and TLS handshake on a new TCP connection. `allow` behaves like
    /// `prefer`, as in PgBouncer: TLS is asked for and used when offered; `N` is accepted
    /// below `require`. SNI is sent whenever the `host=` entry is a name, whatever the
    /// mode: managed services route on it (PgBouncer sends it only with verify-full; its
    /// PR #1485 is still open).
    async fn negotiate_tls(
        &self,
        mut s: TcpStream,
        addr: &SocketAddr,
    ) -> Result<Stream, LoginError> {
        let config = match &self.tls_config {
            Ok(None) => return Ok(Stream::Tcp(s)),
            Ok(Some(c)) => c.clone(),
            Err(e) => return Err(LoginError::Tls(e.clone())),
        };
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&8u32.to_be_bytes());
        req[4..].copy_from_slice(&crate::proto::startup::SSL_REQUEST.to_be_bytes());
        s.write_all(&req)
            .await
            .map_err(|e| LoginError::Connect(format!("{addr}: {e}")))?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer)
            .await
            .map_err(|e| LoginError::Protocol(format!("no answer to SSLRequest: {e}")))?;
        match answer[0] {
            b'S' => {}
            b'N' if self.tls_mode >= SslMode::Require => {
                return Err(LoginError::Tls("server refused SSL".into()));
            }
            b'N' => return Ok(Stream::Tcp(s)),
            // A server that cannot serve at all (starting up, too many clients) may
            // answer with an ErrorResponse instead: reported like any login error.
            b'E' => {
                let mut len = [0u8; 4];
                s.read_exact(&mut len)
                    .await
                    .map_err(|e| LoginError::Protocol(format!("short error response: {e}")))?;
                let len = u32::from_be_bytes(len) as usize;
                if !(4..=MAX_SSL_ERROR_LEN).contains(&len) {
                    return Err(LoginError::Protocol(
                        "bad error response to SSLRequest".into(),
                    ));
                }
                let mut body = vec![0u8; len - 4];
                s.read_exact(&mut body)
                    .await
                    .map_err(|e| LoginError::Protocol(format!("short error response: {e}")))?;
                return Err(LoginError::Server(ErrorFields::parse(&body)));
            }
            other => {
                return Err(LoginError::Protocol(format!(
                    "bad answer to SSLRequest: {:?}",
                    other as char
                )))
            }
        }
        let name = match &self.host {
            Some(h) => crate::net::tls::server_name(h).map_err(LoginError::Tls)?,
            None => rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, s)
            .await
            .map_err(|e| LoginError::Tls(format!("TLS handshake failed: {e}")))?;
        Ok(Stream::TlsToServer(Box::new(tls)))
    }
}
